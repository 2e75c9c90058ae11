//! Between a repository and the reference evaluator's plain rows, for tests that compare engines:
//! reading a whole (small) repository into rows, and writing rows as a repository.

use super::data::{Concept, Data, Period, Person, Record};
use crate::repo::write::{Cell, OutputFormat, TableWriter, WriteError};
use crate::repo::{clean_engine_message, RepoError};
use crate::study::Domain;
use chrono::NaiveDate;
use datafusion::arrow::array::{
    Array, ArrayRef, Date32Array, Float64Array, Int64Array, StringArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::prelude::SessionContext;
use std::path::Path;

/// The query giving each domain's records with the columns the evaluator uses, in this order:
/// id, person, concept, start, end, visit, number, value concept, unit, range low, range high,
/// modality, kind, days supply.
fn domain_query(domain: Domain) -> String {
    let simple = |table: &str, id: &str, concept: &str, start: &str, end: &str, visit: &str| {
        format!(
            "SELECT {id}, person_id, {concept}, {start}, {end}, {visit}, CAST(NULL AS DOUBLE), CAST(NULL AS BIGINT), CAST(NULL AS BIGINT), CAST(NULL AS DOUBLE), CAST(NULL AS DOUBLE), CAST(NULL AS VARCHAR), CAST(NULL AS BIGINT), CAST(NULL AS BIGINT) FROM {table}"
        )
    };
    let null_date = "CAST(NULL AS DATE)";
    let null_int = "CAST(NULL AS BIGINT)";
    match domain {
        Domain::Condition => simple("condition_occurrence", "condition_occurrence_id", "condition_concept_id", "condition_start_date", "condition_end_date", "visit_occurrence_id"),
        Domain::Procedure => simple("procedure_occurrence", "procedure_occurrence_id", "procedure_concept_id", "procedure_date", "procedure_end_date", "visit_occurrence_id"),
        Domain::Visit => simple("visit_occurrence", "visit_occurrence_id", "visit_concept_id", "visit_start_date", "visit_end_date", "visit_occurrence_id"),
        Domain::Death => simple("death", "CAST(0 AS BIGINT)", "cause_concept_id", "death_date", null_date, null_int),
        Domain::Device => simple("device_exposure", "device_exposure_id", "device_concept_id", "device_exposure_start_date", "device_exposure_end_date", "visit_occurrence_id"),
        Domain::Specimen => simple("specimen", "specimen_id", "specimen_concept_id", "specimen_date", null_date, null_int),
        Domain::DrugEra => simple("drug_era", "drug_era_id", "drug_concept_id", "drug_era_start_date", "drug_era_end_date", null_int),
        Domain::ConditionEra => simple("condition_era", "condition_era_id", "condition_concept_id", "condition_era_start_date", "condition_era_end_date", null_int),
        Domain::ObservationPeriod => unreachable!("observation periods are read as periods, not records"),
        Domain::Drug => "SELECT drug_exposure_id, person_id, drug_concept_id, drug_exposure_start_date, drug_exposure_end_date, visit_occurrence_id, CAST(NULL AS DOUBLE), CAST(NULL AS BIGINT), CAST(NULL AS BIGINT), CAST(NULL AS DOUBLE), CAST(NULL AS DOUBLE), CAST(NULL AS VARCHAR), CAST(NULL AS BIGINT), days_supply FROM drug_exposure".to_string(),
        Domain::Measurement => "SELECT measurement_id, person_id, measurement_concept_id, measurement_date, CAST(NULL AS DATE), visit_occurrence_id, value_as_number, value_as_concept_id, unit_concept_id, range_low, range_high, CAST(NULL AS VARCHAR), CAST(NULL AS BIGINT), CAST(NULL AS BIGINT) FROM measurement".to_string(),
        Domain::Observation => "SELECT observation_id, person_id, observation_concept_id, observation_date, CAST(NULL AS DATE), visit_occurrence_id, value_as_number, value_as_concept_id, unit_concept_id, CAST(NULL AS DOUBLE), CAST(NULL AS DOUBLE), CAST(NULL AS VARCHAR), CAST(NULL AS BIGINT), CAST(NULL AS BIGINT) FROM observation".to_string(),
        Domain::Episode => "SELECT episode_id, person_id, episode_object_concept_id, episode_start_date, episode_end_date, CAST(NULL AS BIGINT), CAST(NULL AS DOUBLE), CAST(NULL AS BIGINT), CAST(NULL AS BIGINT), CAST(NULL AS DOUBLE), CAST(NULL AS DOUBLE), CAST(NULL AS VARCHAR), episode_concept_id, CAST(NULL AS BIGINT) FROM episode".to_string(),
        Domain::ImageOccurrence => "SELECT i.image_occurrence_id, i.person_id, i.anatomic_site_concept_id, i.image_occurrence_date, CAST(NULL AS DATE), i.visit_occurrence_id, CAST(NULL AS DOUBLE), CAST(NULL AS BIGINT), CAST(NULL AS BIGINT), CAST(NULL AS DOUBLE), CAST(NULL AS DOUBLE), c.concept_code, CAST(NULL AS BIGINT), CAST(NULL AS BIGINT) FROM image_occurrence i LEFT JOIN concept c ON i.modality_concept_id = c.concept_id".to_string(),
        Domain::ImageFeature => "SELECT f.image_feature_id, f.person_id, f.image_feature_concept_id, i.image_occurrence_date, CAST(NULL AS DATE), i.visit_occurrence_id, m.value_as_number, m.value_as_concept_id, m.unit_concept_id, m.range_low, m.range_high, c.concept_code, CAST(NULL AS BIGINT), CAST(NULL AS BIGINT) FROM image_feature f JOIN image_occurrence i ON f.image_occurrence_id = i.image_occurrence_id LEFT JOIN measurement m ON f.image_feature_event_id = m.measurement_id LEFT JOIN concept c ON i.modality_concept_id = c.concept_id".to_string(),
    }
}

/// Gives every output column of a `SELECT a, b, … FROM …` its own name (`c0`, `c1`, …), since
/// several of them are the same typed NULL.
fn aliased(sql: &str) -> String {
    let (select, from) = sql.split_once(" FROM ").expect("a query with FROM");
    let columns = select.trim_start_matches("SELECT ");
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, ch) in columns.char_indices() {
        match ch {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(columns[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(columns[start..].trim());
    let named: Vec<String> = parts
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{p} AS c{i}"))
        .collect();
    format!("SELECT {} FROM {from}", named.join(", "))
}

async fn batches(ctx: &SessionContext, sql: &str) -> Result<Vec<RecordBatch>, RepoError> {
    let frame = ctx
        .sql(sql)
        .await
        .map_err(|e| RepoError::Engine(clean_engine_message(&e.to_string())))?;
    frame
        .collect()
        .await
        .map_err(|e| RepoError::Engine(clean_engine_message(&e.to_string())))
}

fn column(batch: &RecordBatch, i: usize, to: &DataType) -> ArrayRef {
    cast(batch.column(i), to).expect("the queries above give castable columns")
}

fn ints(batch: &RecordBatch, i: usize) -> Vec<Option<i64>> {
    let a = column(batch, i, &DataType::Int64);
    let a = a.as_any().downcast_ref::<Int64Array>().expect("int64");
    (0..a.len())
        .map(|k| (!a.is_null(k)).then(|| a.value(k)))
        .collect()
}

fn floats(batch: &RecordBatch, i: usize) -> Vec<Option<f64>> {
    let a = column(batch, i, &DataType::Float64);
    let a = a.as_any().downcast_ref::<Float64Array>().expect("float64");
    (0..a.len())
        .map(|k| (!a.is_null(k)).then(|| a.value(k)))
        .collect()
}

fn dates(batch: &RecordBatch, i: usize) -> Vec<Option<NaiveDate>> {
    let a = column(batch, i, &DataType::Date32);
    let a = a.as_any().downcast_ref::<Date32Array>().expect("date32");
    (0..a.len())
        .map(|k| {
            if a.is_null(k) {
                None
            } else {
                a.value_as_date(k)
            }
        })
        .collect()
}

fn texts(batch: &RecordBatch, i: usize) -> Vec<Option<String>> {
    let a = column(batch, i, &DataType::Utf8);
    let a = a.as_any().downcast_ref::<StringArray>().expect("utf8");
    (0..a.len())
        .map(|k| (!a.is_null(k)).then(|| a.value(k).to_string()))
        .collect()
}

/// Reads persons, observation periods, every event domain and the vocabulary.
pub async fn load_rows(ctx: &SessionContext) -> Result<Data, RepoError> {
    let mut data = Data::default();
    for b in batches(ctx, "SELECT person_id, gender_concept_id, year_of_birth, month_of_birth, day_of_birth FROM person").await? {
        let (id, gender, year, month, day) = (ints(&b, 0), ints(&b, 1), ints(&b, 2), ints(&b, 3), ints(&b, 4));
        for k in 0..b.num_rows() {
            data.persons.push(Person {
                id: id[k].unwrap_or(0),
                gender: gender[k].unwrap_or(0),
                year_of_birth: year[k].unwrap_or(0) as i32,
                month_of_birth: month[k].map(|m| m as u32),
                day_of_birth: day[k].map(|d| d as u32),
            });
        }
    }
    for b in batches(ctx, "SELECT person_id, observation_period_start_date, observation_period_end_date, observation_period_id FROM observation_period").await? {
        let (person, start, end, id) = (ints(&b, 0), dates(&b, 1), dates(&b, 2), ints(&b, 3));
        for k in 0..b.num_rows() {
            if let (Some(p), Some(s), Some(e)) = (person[k], start[k], end[k]) {
                data.periods.push(Period {
                    id: id[k].unwrap_or(0),
                    person: p,
                    start: s,
                    end: e,
                });
            }
        }
    }
    for domain in Domain::ALL
        .into_iter()
        .filter(|d| *d != Domain::ObservationPeriod)
    {
        for b in batches(ctx, &aliased(&domain_query(domain))).await? {
            let (id, person, concept, start, end, visit) = (
                ints(&b, 0),
                ints(&b, 1),
                ints(&b, 2),
                dates(&b, 3),
                dates(&b, 4),
                ints(&b, 5),
            );
            let (number, value_concept, unit, low, high) = (
                floats(&b, 6),
                ints(&b, 7),
                ints(&b, 8),
                floats(&b, 9),
                floats(&b, 10),
            );
            let (modality, kind, days_supply) = (texts(&b, 11), ints(&b, 12), ints(&b, 13));
            for k in 0..b.num_rows() {
                let (Some(p), Some(s)) = (person[k], start[k]) else {
                    continue;
                };
                let mut r = Record::new(domain, id[k].unwrap_or(0), p, concept[k], s);
                r.end = end[k];
                r.visit = visit[k];
                r.number = number[k];
                r.value_concept = value_concept[k];
                r.unit = unit[k];
                r.range_low = low[k];
                r.range_high = high[k];
                r.modality = modality[k].clone();
                r.kind = kind[k];
                r.days_supply = days_supply[k];
                data.records.push(r);
            }
        }
    }
    for b in batches(
        ctx,
        "SELECT concept_id, concept_name, vocabulary_id, concept_code FROM concept",
    )
    .await?
    {
        let (id, name, vocabulary, code) = (ints(&b, 0), texts(&b, 1), texts(&b, 2), texts(&b, 3));
        for k in 0..b.num_rows() {
            data.concepts.push(Concept {
                id: id[k].unwrap_or(0),
                name: name[k].clone().unwrap_or_default(),
                vocabulary: vocabulary[k].clone().unwrap_or_default(),
                code: code[k].clone().unwrap_or_default(),
            });
        }
    }
    for b in batches(
        ctx,
        "SELECT ancestor_concept_id, descendant_concept_id FROM concept_ancestor",
    )
    .await?
    {
        let (a, d) = (ints(&b, 0), ints(&b, 1));
        data.ancestors
            .extend((0..b.num_rows()).filter_map(|k| Some((a[k]?, d[k]?))));
    }
    for b in batches(ctx, "SELECT concept_id_1, concept_id_2 FROM concept_relationship WHERE relationship_id = 'Maps to'").await? {
        let (a, d) = (ints(&b, 0), ints(&b, 1));
        data.maps_to.extend((0..b.num_rows()).filter_map(|k| Some((a[k]?, d[k]?))));
    }
    Ok(data)
}

/// Writes plain rows as a repository: the inverse of `load_rows`, so that tests can give both
/// engines the same data. Image occurrences get a DICOM concept for each modality; image
/// features, which live in three tables, are not written.
pub fn write_rows(data: &Data, dir: &Path, format: OutputFormat) -> Result<(), WriteError> {
    use crate::repo::schema::{domain_source, TABLES};
    let table = |name: &str| {
        TABLES
            .iter()
            .find(|t| t.name == name)
            .expect("an OMOP table")
    };
    let date = |d: NaiveDate| {
        Cell::Date((d - NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch")).num_days() as i32)
    };
    let int = |v: Option<i64>| v.map_or(Cell::Null, Cell::Int);
    let float = |v: Option<f64>| v.map_or(Cell::Null, Cell::Float);

    let mut w = TableWriter::create(dir, table("person"), format)?;
    let layout = w.layout(&[
        "person_id",
        "gender_concept_id",
        "year_of_birth",
        "month_of_birth",
        "day_of_birth",
    ]);
    for p in &data.persons {
        w.push_named(
            &layout,
            &[
                Cell::Int(p.id),
                Cell::Int(p.gender),
                Cell::Int(p.year_of_birth as i64),
                int(p.month_of_birth.map(i64::from)),
                int(p.day_of_birth.map(i64::from)),
            ],
        )?;
    }
    w.finish()?;

    let mut w = TableWriter::create(dir, table("observation_period"), format)?;
    let layout = w.layout(&[
        "observation_period_id",
        "person_id",
        "observation_period_start_date",
        "observation_period_end_date",
    ]);
    for p in &data.periods {
        w.push_named(
            &layout,
            &[
                Cell::Int(p.id),
                Cell::Int(p.person),
                date(p.start),
                date(p.end),
            ],
        )?;
    }
    w.finish()?;

    let mut modalities: Vec<String> = data
        .records
        .iter()
        .filter(|r| r.domain == Domain::ImageOccurrence)
        .filter_map(|r| r.modality.clone())
        .collect();
    modalities.sort();
    modalities.dedup();
    let modality_id = |code: &str| {
        2_100_000_000 + modalities.iter().position(|m| m == code).expect("listed") as i64
    };

    for domain in Domain::ALL {
        if domain == Domain::ObservationPeriod || domain == Domain::ImageFeature {
            if domain == Domain::ImageFeature && data.records.iter().any(|r| r.domain == domain) {
                return Err(WriteError(
                    "image features cannot be written from plain rows".into(),
                ));
            }
            continue;
        }
        let records = data.records.iter().filter(|r| r.domain == domain);
        if domain == Domain::ImageOccurrence {
            let mut w = TableWriter::create(dir, table("image_occurrence"), format)?;
            let layout = w.layout(&[
                "image_occurrence_id",
                "person_id",
                "anatomic_site_concept_id",
                "image_occurrence_date",
                "visit_occurrence_id",
                "modality_concept_id",
            ]);
            for r in records {
                w.push_named(
                    &layout,
                    &[
                        Cell::Int(r.id),
                        Cell::Int(r.person),
                        int(r.concept),
                        date(r.start),
                        int(r.visit),
                        int(r.modality.as_deref().map(modality_id)),
                    ],
                )?;
            }
            w.finish()?;
            continue;
        }
        let source = domain_source(domain).expect("one table");
        let mut w = TableWriter::create(dir, table(source.table), format)?;
        // Deaths have no id column: their id is not written.
        let skip_id = domain == Domain::Death;
        let present: Vec<(usize, &str)> = source
            .columns
            .iter()
            .enumerate()
            .filter(|(i, _)| !(skip_id && *i == 0))
            .filter_map(|(i, c)| c.map(|c| (i, c)))
            .collect();
        // A visit is its own visit: its id column is written once, as the id.
        let mut present = present;
        let mut seen = std::collections::BTreeSet::new();
        present.retain(|(_, c)| seen.insert(*c));
        let names: Vec<&str> = present.iter().map(|(_, c)| *c).collect();
        let layout = w.layout(&names);
        for r in records {
            let all = [
                Cell::Int(r.id),
                Cell::Int(r.person),
                int(r.concept),
                date(r.start),
                r.end.map_or(Cell::Null, date),
                int(r.visit),
                float(r.number),
                int(r.value_concept),
                int(r.unit),
                float(r.range_low),
                float(r.range_high),
                r.modality.clone().map_or(Cell::Null, Cell::Text),
                int(r.kind),
                int(r.days_supply),
            ];
            let cells: Vec<Cell> = present.iter().map(|(i, _)| all[*i].clone()).collect();
            w.push_named(&layout, &cells)?;
        }
        w.finish()?;
    }

    let mut w = TableWriter::create(dir, table("concept"), format)?;
    let layout = w.layout(&[
        "concept_id",
        "concept_name",
        "domain_id",
        "vocabulary_id",
        "concept_code",
        "standard_concept",
    ]);
    for c in &data.concepts {
        w.push_named(
            &layout,
            &[
                Cell::Int(c.id),
                Cell::Text(c.name.clone()),
                Cell::Str(""),
                Cell::Text(c.vocabulary.clone()),
                Cell::Text(c.code.clone()),
                Cell::Str("S"),
            ],
        )?;
    }
    for m in &modalities {
        w.push_named(
            &layout,
            &[
                Cell::Int(modality_id(m)),
                Cell::Text(m.clone()),
                Cell::Str("Meas Value"),
                Cell::Str("DICOM"),
                Cell::Text(m.clone()),
                Cell::Str("S"),
            ],
        )?;
    }
    w.finish()?;
    let mut w = TableWriter::create(dir, table("concept_ancestor"), format)?;
    let layout = w.layout(&["ancestor_concept_id", "descendant_concept_id"]);
    for (a, d) in &data.ancestors {
        w.push_named(&layout, &[Cell::Int(*a), Cell::Int(*d)])?;
    }
    w.finish()?;
    let mut w = TableWriter::create(dir, table("concept_relationship"), format)?;
    let layout = w.layout(&["concept_id_1", "concept_id_2", "relationship_id"]);
    for (a, b) in &data.maps_to {
        w.push_named(
            &layout,
            &[Cell::Int(*a), Cell::Int(*b), Cell::Str("Maps to")],
        )?;
    }
    w.finish()?;
    Ok(())
}
