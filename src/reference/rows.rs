//! Between a repository and the reference evaluator's plain rows, for tests that compare engines:
//! reading a whole (small) repository into rows, and writing rows as a repository.

use super::data::{Concept, Data, Period, Person, Record};
use crate::repo::domains::{self, Field, JoinKind};
use crate::repo::schema::Kind;
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

/// The query giving each domain's records with every field of the domain catalogue, in the
/// order of `Field::ALL`, as columns `c0`, `c1`, ….
fn domain_query(domain: Domain) -> String {
    let source = domains::records(domain);
    let fields: Vec<String> = Field::ALL
        .iter()
        .enumerate()
        .map(|(i, field)| {
            let value = match source.column(*field) {
                Some(col) => format!("{}.{}", col.table, col.column),
                None => {
                    let t = match field.kind() {
                        Kind::Integer => "BIGINT",
                        Kind::Float => "DOUBLE",
                        Kind::Text => "VARCHAR",
                        Kind::Date | Kind::Datetime => "DATE",
                    };
                    format!("CAST(NULL AS {t})")
                }
            };
            format!("{value} AS c{i}")
        })
        .collect();
    let mut sql = format!("SELECT {} FROM {}", fields.join(", "), source.table);
    for join in source.joins_for(|_| true) {
        let kind = match join.kind {
            JoinKind::Inner => "JOIN",
            JoinKind::Left => "LEFT JOIN",
        };
        sql += &format!(
            " {kind} {} AS {} ON {}.{} = {}.{}",
            join.table, join.alias, join.left.table, join.left.column, join.alias, join.right
        );
    }
    sql
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
        for b in batches(ctx, &domain_query(domain)).await? {
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
            let (modality, kind, days_supply, source_concept) =
                (texts(&b, 11), ints(&b, 12), ints(&b, 13), ints(&b, 14));
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
                r.source_concept = source_concept[k];
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
    use crate::repo::schema::TABLES;
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
        let source = domains::records(domain);
        let mut w = TableWriter::create(dir, table(source.table), format)?;
        // The fields in the domain's own table; a visit's id is also its visit, written once.
        let mut present: Vec<(Field, &str)> = Vec::new();
        for field in Field::ALL {
            if let Some(column) = source.own(field) {
                if present.iter().all(|(_, c)| *c != column) {
                    present.push((field, column));
                }
            }
        }
        let names: Vec<&str> = present.iter().map(|(_, c)| *c).collect();
        let layout = w.layout(&names);
        for r in records {
            let value = |field: Field| match field {
                Field::Id => Cell::Int(r.id),
                Field::Person => Cell::Int(r.person),
                Field::Concept => int(r.concept),
                Field::Start => date(r.start),
                Field::End => r.end.map_or(Cell::Null, date),
                Field::Visit => int(r.visit),
                Field::Number => float(r.number),
                Field::ValueConcept => int(r.value_concept),
                Field::Unit => int(r.unit),
                Field::RangeLow => float(r.range_low),
                Field::RangeHigh => float(r.range_high),
                Field::Modality => r.modality.clone().map_or(Cell::Null, Cell::Text),
                Field::Kind => int(r.kind),
                Field::DaysSupply => int(r.days_supply),
                Field::SourceConcept => int(r.source_concept),
            };
            let cells: Vec<Cell> = present.iter().map(|(f, _)| value(*f)).collect();
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
