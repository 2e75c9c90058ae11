//! Writing a run's outputs in two places: `site/` (the OMOP cohort table, the person-level
//! dataset and exact counts, as Parquet and CSV: they stay at the site) and `release/` (the
//! counts under disclosure control, as CSV, and optionally an exported dataset: what may leave),
//! each with the study text and a `run.json` tying them to the study and the data. Everything
//! is written to a temporary sibling directory renamed into place at the end, so a failed or
//! interrupted run leaves no partial outputs; the same inputs give the same bytes.

use super::{Attrition, Execution};
use crate::disclosure::control::{CountRow, Table};
use crate::disclosure::Policy;
use crate::hash::hex;
use crate::repo::write::hidden_sibling;
use crate::results::{self, EndpointCount};
use crate::site::Site;
use crate::study::Study;
use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray, StringBuilder,
};
use datafusion::arrow::compute::{cast, concat_batches};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What a run was, for `run.json`.
pub struct RunInfo<'a> {
    pub study: &'a Study,
    pub study_path: &'a Path,
    pub study_text: &'a str,
    pub study_hash: &'a str,
    /// Whether `--cohort-id` replaced the study's cohort id (`study.output.cohort_id` is the
    /// one in force either way).
    pub cohort_id_from_command_line: bool,
    /// How `run.json` names the repository: its directory's name (a full path would publish a
    /// site's directory layout).
    pub repository: &'a str,
    pub data_fingerprint: &'a str,
    /// Data-quality problems found in the tables the study read.
    pub data_warnings: &'a [String],
    /// Time spent reading, parsing and checking the study.
    pub check_time: std::time::Duration,
    /// The disclosure policy in force: the site's, tightened by the study.
    pub policy: &'a Policy,
    /// Where the site's policy was set, in words.
    pub site_source: &'a str,
    /// The site's configuration: the secret keying pseudonyms.
    pub site: &'a Site,
    /// `--export-dataset`: `Some(exact dates)` to write `release/dataset.csv`.
    pub export: Option<bool>,
    /// What ran the stages.
    pub engine: &'a EngineRecord,
}

/// What ran a study's stages, as `site/run.json` records it (a release names no machine).
#[derive(Clone, Debug)]
pub enum EngineRecord {
    /// DataFusion in this process.
    Embedded,
    /// The database holding the repository.
    Database,
    /// An Apache Ballista cluster: its scheduler and the executors that produced the stages'
    /// results (`id (host:port)`).
    Cluster {
        scheduler: String,
        executors: Vec<String>,
    },
}

impl EngineRecord {
    fn json(&self) -> serde_json::Value {
        match self {
            EngineRecord::Embedded => json!({ "kind": "embedded" }),
            EngineRecord::Database => json!({ "kind": "database" }),
            EngineRecord::Cluster {
                scheduler,
                executors,
            } => json!({ "kind": "ballista", "scheduler": scheduler, "executors": executors }),
        }
    }
}

/// A path as `run.json` may publish it: as given when relative and inside the working
/// directory, otherwise only its file name.
pub fn shareable_path(path: &Path) -> String {
    let inside = path.is_relative()
        && path.components().all(|c| {
            matches!(
                c,
                std::path::Component::Normal(_) | std::path::Component::CurDir
            )
        });
    if inside {
        path.display().to_string()
    } else {
        path.file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    }
}

/// What a run wrote: rows of the site's person-level outputs, and the counts it released.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    pub cohort: usize,
    pub dataset: usize,
    /// Every released count, as `release/` holds it (withheld where `None`).
    pub released: Vec<CountRow>,
    /// Whether `release/dataset.csv` was written.
    pub exported: bool,
}

impl Written {
    /// The released attrition table's rows.
    pub fn attrition(&self) -> Vec<&CountRow> {
        self.released
            .iter()
            .filter(|r| r.table == Table::Attrition)
            .collect()
    }

    /// The released count of persons in the final cohort.
    pub fn persons(&self) -> Option<u64> {
        self.attrition().last().and_then(|r| r.counts[0])
    }
}

/// A count as the screen shows a released one: the number, or `—` where it is withheld. One
/// mark for every withheld count, below the threshold or withheld to protect one, as in the
/// released files: telling them apart would say which counts are small.
pub fn shown_released(count: Option<u64>) -> String {
    count.map_or_else(|| WITHHELD.to_string(), |n| n.to_string())
}

pub use crate::disclosure::WITHHELD;

/// The attrition as a table for the screen, its counts as released.
pub fn attrition_table(rows: &[&CountRow]) -> String {
    use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, CellAlignment, Table};
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_header(["step", "rule", "persons", "entries"]);
    for (i, a) in rows.iter().enumerate() {
        t.add_row(vec![
            Cell::new(i).set_alignment(CellAlignment::Right),
            Cell::new(crate::printable::escaped(&a.rule)),
            Cell::new(shown_released(a.counts[0])).set_alignment(CellAlignment::Right),
            Cell::new(shown_released(a.counts[1])).set_alignment(CellAlignment::Right),
        ]);
    }
    t.to_string()
}

/// The attrition as a table for an interactive session: each count withheld as the policy
/// says and rounded to its live rounding, so that successive tables cannot be differenced.
pub fn live_attrition_table(rows: &[Attrition], policy: &Policy) -> String {
    use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, CellAlignment, Table};
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_header(["step", "rule", "persons", "entries"]);
    for (i, a) in rows.iter().enumerate() {
        t.add_row(vec![
            Cell::new(i).set_alignment(CellAlignment::Right),
            Cell::new(crate::printable::escaped(&a.rule)),
            Cell::new(policy.shown_live(a.persons)).set_alignment(CellAlignment::Right),
            Cell::new(policy.shown_live(a.entries)).set_alignment(CellAlignment::Right),
        ]);
    }
    t.to_string()
}

/// sha256 of a file's bytes, as `run.json` records those it releases.
pub fn file_sha256(path: &Path) -> Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(hex(&Sha256::digest(&bytes)))
}

/// The dataset's rows at the site. With pseudonymous ids, `person` is the site-keyed pseudonym,
/// the index record id (an internal id of the repository) is left out, and rows are sorted by
/// pseudonym, so that their order says nothing of the person ids either; with original ids,
/// `person_id` and `index_record_id` stay, in the order of person ids.
fn person_level(
    all: &RecordBatch,
    pseudonymise: bool,
    site: &Site,
    study_hash: &str,
) -> Result<RecordBatch, String> {
    let schema = all.schema();
    // The columns a run adds for Table 1 are not the study's: no dataset carries them.
    let keep: Vec<usize> = (0..schema.fields().len())
        .filter(|&i| {
            let name = schema.field(i).name();
            name != results::table1::SEX_COLUMN && name != results::table1::AGE_COLUMN
        })
        .collect();
    let all = all.project(&keep).map_err(|e| e.to_string())?;
    let schema = &all.schema();
    if !pseudonymise {
        return Ok(all);
    }
    // Sorted by pseudonym (as a number, which sorts as its digits do), then index date, then
    // the order of the rows.
    use datafusion::arrow::array::UInt64Array;
    use datafusion::arrow::compute::{lexsort_to_indices, take, SortColumn};
    let ids = all
        .column_by_name("person_id")
        .ok_or("the dataset has no person ids")?;
    let ids = cast(ids, &DataType::Int64).map_err(|e| e.to_string())?;
    let ids = ids.as_any().downcast_ref::<Int64Array>().expect("int64");
    let pseudonyms = site.pseudonyms(study_hash);
    let numbers: ArrayRef = Arc::new(UInt64Array::from_iter_values(
        ids.values().iter().map(|&id| pseudonyms.number(id)),
    ));
    let mut keys = vec![SortColumn {
        values: numbers.clone(),
        options: None,
    }];
    if let Some(index) = all.column_by_name("index_date") {
        keys.push(SortColumn {
            values: index.clone(),
            options: None,
        });
    }
    keys.push(SortColumn {
        values: Arc::new(datafusion::arrow::array::UInt32Array::from_iter_values(
            0..all.num_rows() as u32,
        )),
        options: None,
    });
    let order = lexsort_to_indices(&keys, None).map_err(|e| e.to_string())?;
    let numbers = take(&numbers, &order, None).map_err(|e| e.to_string())?;
    let numbers = numbers.as_any().downcast_ref::<UInt64Array>().expect("u64");
    let mut fields: Vec<Field> = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for (field, column) in schema.fields().iter().zip(all.columns()) {
        match field.name().as_str() {
            "person_id" => {
                let mut b = StringBuilder::with_capacity(numbers.len(), numbers.len() * 16);
                let mut text = String::with_capacity(16);
                for n in numbers.values() {
                    use std::fmt::Write;
                    text.clear();
                    write!(text, "{n:016x}").expect("writing to a string");
                    b.append_value(&text);
                }
                fields.push(Field::new("person", DataType::Utf8, false));
                columns.push(Arc::new(b.finish()));
            }
            "index_record_id" => {}
            _ => {
                fields.push(field.as_ref().clone());
                columns.push(take(column, &order, None).map_err(|e| e.to_string())?);
            }
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(|e| e.to_string())
}

/// The dataset as exported for a trusted third party: pseudonyms always; with relative dates,
/// `index_date` becomes `index_year` and every other date column `<name>_day`, the days from
/// the index date (0 on it, negative before it).
fn exported_dataset(pseudonymised: &RecordBatch, exact_dates: bool) -> Result<RecordBatch, String> {
    if exact_dates {
        return Ok(pseudonymised.clone());
    }
    use datafusion::arrow::array::{Date32Array, Int32Array};
    let schema = pseudonymised.schema();
    let index = pseudonymised
        .column_by_name("index_date")
        .and_then(|c| c.as_any().downcast_ref::<Date32Array>())
        .ok_or("the dataset has no index date")?
        .clone();
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).expect("a date");
    let mut fields = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for (field, column) in schema.fields().iter().zip(pseudonymised.columns()) {
        if field.name() == "index_date" {
            use chrono::Datelike;
            fields.push(Field::new("index_year", DataType::Int32, false));
            columns.push(Arc::new(Int32Array::from_iter_values(index.iter().map(
                |d| (epoch + chrono::Duration::days(d.unwrap_or(0) as i64)).year(),
            ))));
        } else if field.data_type() == &DataType::Date32 {
            let dates = column
                .as_any()
                .downcast_ref::<Date32Array>()
                .expect("a date column");
            fields.push(Field::new(
                format!("{}_day", field.name()),
                DataType::Int32,
                true,
            ));
            columns.push(Arc::new(Int32Array::from_iter(
                dates.iter().zip(index.iter()).map(|(d, i)| Some(d? - i?)),
            )));
        } else if matches!(
            field.data_type(),
            DataType::Timestamp(..) | DataType::Date64
        ) {
            return Err(format!(
                "the dataset's column `{}` holds times, which an export with relative dates cannot carry",
                field.name()
            ));
        } else {
            fields.push(field.as_ref().clone());
            columns.push(column.clone());
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(|e| e.to_string())
}

/// Every count a run releases, exact: the attrition tables' (`count_rows`), the endpoint
/// table's and Table 1's.
pub fn every_count(study: &Study, run: &Execution) -> Result<Vec<CountRow>, String> {
    let all = concat_batches(&run.dataset_schema, &run.dataset).map_err(|e| e.to_string())?;
    let site = site_results(study, &all)?;
    let mut rows = count_rows(run);
    rows.extend(results::count_rows(&site.endpoint_counts));
    rows.extend(results::table1::count_rows(&site.table1));
    Ok(rows)
}

/// What the results are computed from and their exact counts, read once from the dataset.
struct SiteResults<'s> {
    entries: Vec<results::Entry<'s>>,
    /// Each Table 1 column's values (the demographic columns first).
    values: Vec<results::table1::Column>,
    endpoint_counts: Vec<EndpointCount>,
    table1: Vec<results::table1::Row>,
}

/// The site's results from the dataset, its batches as one.
fn site_results<'s>(study: &'s Study, all: &RecordBatch) -> Result<SiteResults<'s>, String> {
    let entries = result_entries(study, all)?;
    let (columns, values) = covariate_values(study, all)?;
    let endpoint_counts = results::endpoint_counts(study, &entries);
    let arms: Vec<Option<usize>> = entries
        .iter()
        .map(|e| {
            e.arm
                .and_then(|a| study.arms.iter().position(|s| s.name == a))
        })
        .collect();
    let table1 = results::table1::table1(study, &columns, &arms, &values);
    Ok(SiteResults {
        entries,
        values,
        endpoint_counts,
        table1,
    })
}

/// The entries (of the attrition by arm's last step, or for `all` the attrition table's) of a
/// group, as `rows` give them.
fn group_entries(rows: &[CountRow], group: &str) -> Option<u64> {
    let last_step = rows
        .iter()
        .filter(|r| r.table == Table::Attrition)
        .filter_map(|r| r.step)
        .max();
    rows.iter()
        .find(|r| {
            r.step == last_step
                && if group == results::ALL {
                    r.table == Table::Attrition
                } else {
                    r.table == Table::ByArm && r.arm.as_deref() == Some(group)
                }
        })
        .and_then(|r| r.counts[1])
}

/// The attrition tables' counts of a run, exact, in the rows of the tables it releases.
pub fn count_rows(run: &Execution) -> Vec<CountRow> {
    let mut rows = Vec::new();
    for (i, a) in run.attrition.iter().enumerate() {
        rows.push(CountRow {
            table: Table::Attrition,
            step: Some(i as i64),
            rule: a.rule.clone(),
            arm: None,
            counts: [Some(a.persons), Some(a.entries)],
            line: i + 2,
        });
    }
    // Rows come rule by rule, one per arm and last one for no arm, from step 1 on.
    let per_step = run
        .attrition_by_arm
        .iter()
        .position(|r| r.arm.is_none())
        .map_or(1, |p| p + 1);
    for (i, a) in run.attrition_by_arm.iter().enumerate() {
        rows.push(CountRow {
            table: Table::ByArm,
            step: Some((i / per_step) as i64 + 1),
            rule: a.rule.clone(),
            arm: a.arm.clone(),
            counts: [Some(a.persons), Some(a.entries)],
            line: i + 2,
        });
    }
    for (i, r) in run.inclusion_rules.iter().enumerate() {
        rows.push(CountRow {
            table: Table::Rule,
            step: Some(i as i64 + 1),
            rule: r.rule.clone(),
            arm: None,
            counts: [Some(r.persons), Some(r.entries)],
            line: i + 2,
        });
    }
    let after = run.inclusion_rules.len();
    for (i, r) in run.rule_combinations.iter().enumerate() {
        rows.push(CountRow {
            table: Table::Combination,
            step: None,
            rule: r.rule.clone(),
            arm: None,
            counts: [Some(r.persons), Some(r.entries)],
            line: after + i + 2,
        });
    }
    rows
}

fn count_columns(rows: &[&CountRow]) -> (Vec<Option<i64>>, Vec<Option<i64>>, Vec<bool>) {
    (
        rows.iter().map(|r| r.counts[0].map(|c| c as i64)).collect(),
        rows.iter().map(|r| r.counts[1].map(|c| c as i64)).collect(),
        rows.iter()
            .map(|r| r.counts.iter().any(Option::is_none))
            .collect(),
    )
}

/// One of the tables of counts, as written: `attrition` (`step`, `rule`), `attrition_by_arm`
/// (`step`, `rule`, `arm`: empty for entries in no arm) or `inclusion_rules` (`kind`: `rule`
/// with its `step`, or `combination` with the steps passed in `rule`); then `persons`,
/// `entries` and `suppressed` in each.
fn count_batch(rows: &[CountRow], table: Table) -> RecordBatch {
    let picked: Vec<&CountRow> = rows
        .iter()
        .filter(|r| match table {
            Table::Rule | Table::Combination => {
                matches!(r.table, Table::Rule | Table::Combination)
            }
            t => r.table == t,
        })
        .collect();
    let (persons, entries, suppressed) = count_columns(&picked);
    let mut fields = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    if matches!(table, Table::Rule | Table::Combination) {
        fields.push(Field::new("kind", DataType::Utf8, false));
        columns.push(Arc::new(StringArray::from_iter_values(picked.iter().map(
            |r| {
                if r.table == Table::Rule {
                    "rule"
                } else {
                    "combination"
                }
            },
        ))));
    }
    fields.push(Field::new(
        "step",
        DataType::Int64,
        matches!(table, Table::Rule | Table::Combination),
    ));
    columns.push(Arc::new(Int64Array::from_iter(
        picked.iter().map(|r| r.step),
    )));
    fields.push(Field::new("rule", DataType::Utf8, false));
    columns.push(Arc::new(StringArray::from_iter_values(
        picked.iter().map(|r| r.rule.as_str()),
    )));
    if table == Table::ByArm {
        fields.push(Field::new("arm", DataType::Utf8, true));
        columns.push(Arc::new(StringArray::from_iter(
            picked.iter().map(|r| r.arm.as_deref()),
        )));
    }
    fields.push(Field::new("persons", DataType::Int64, true));
    columns.push(Arc::new(Int64Array::from(persons)));
    fields.push(Field::new("entries", DataType::Int64, true));
    columns.push(Arc::new(Int64Array::from(entries)));
    fields.push(Field::new("suppressed", DataType::Boolean, false));
    columns.push(Arc::new(BooleanArray::from(suppressed)));
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).expect("columns of equal length")
}

/// A dataset entry as the results need it: person, arm, and each endpoint's outcome (whether it
/// happens, and its days).
/// The dataset's entries as the results need them, each arm named as the study names it.
fn result_entries<'s>(
    study: &'s Study,
    all: &RecordBatch,
) -> Result<Vec<results::Entry<'s>>, String> {
    let int = |name: &str| -> Result<Option<Int64Array>, String> {
        match all.column_by_name(name) {
            None => Ok(None),
            Some(c) => {
                let c = cast(c, &DataType::Int64).map_err(|e| e.to_string())?;
                Ok(Some(
                    c.as_any()
                        .downcast_ref::<Int64Array>()
                        .expect("int64")
                        .clone(),
                ))
            }
        }
    };
    let persons = int("person_id")?.ok_or("the dataset has no person ids")?;
    let arms = match all.column_by_name("arm") {
        Some(c) => Some(cast(c, &DataType::Utf8).map_err(|e| e.to_string())?),
        None => None,
    };
    let arms = arms
        .as_ref()
        .map(|a| a.as_any().downcast_ref::<StringArray>().expect("text"));
    let arm_at = |i: usize| -> Result<Option<&'s str>, String> {
        let Some(a) = arms.filter(|a| !a.is_null(i)) else {
            return Ok(None);
        };
        let name = a.value(i);
        study
            .arms
            .iter()
            .find(|s| s.name == name)
            .map(|s| Some(s.name.as_str()))
            .ok_or_else(|| format!("the dataset names an arm the study does not declare: {name}"))
    };
    let mut outcomes = Vec::new();
    for e in &study.endpoints {
        let flag =
            int(&e.name)?.ok_or_else(|| format!("the dataset has no column `{}`", e.name))?;
        let days = int(&format!("{}_days", e.name))?;
        outcomes.push((flag, days));
    }
    (0..all.num_rows())
        .map(|i| {
            Ok(results::Entry {
                person: persons.value(i),
                arm: arm_at(i)?,
                outcomes: outcomes
                    .iter()
                    .map(|(flag, days)| {
                        (
                            !flag.is_null(i) && flag.value(i) == 1,
                            days.as_ref()
                                .and_then(|d| (!d.is_null(i)).then(|| d.value(i))),
                        )
                    })
                    .collect(),
            })
        })
        .collect()
}

/// The endpoint table: each row's counts as given (exact at the site, released in `release/`)
/// and its statistics computed from them, with the entries of each group taken from the same
/// rows (the attrition by arm's last step, or the attrition table's).
fn endpoint_batch(
    study: &Study,
    rows: &[CountRow],
    counts: &[EndpointCount],
    log_ranks: &[(String, Option<results::survival::LogRank>)],
) -> RecordBatch {
    let entries_of = |group: &str| group_entries(rows, group);
    let endpoint_rows: Vec<&CountRow> =
        rows.iter().filter(|r| r.table == Table::Endpoint).collect();
    let first_arm = study.arms.first().map(|a| a.name.clone());
    let basis = |i: usize| results::Basis {
        events: endpoint_rows[i].counts[1],
        entries: entries_of(&counts[i].group),
        person_days: counts[i].person_days,
    };
    let stats: Vec<results::Statistics> = (0..counts.len())
        .map(|i| {
            let reference = match &first_arm {
                Some(first) if counts[i].group != *first && counts[i].group != results::ALL => (0
                    ..counts.len())
                    .find(|&j| {
                        counts[j].endpoint == counts[i].endpoint && counts[j].group == *first
                    })
                    .map(basis),
                _ => None,
            };
            results::statistics(counts[i].kind, basis(i), reference)
        })
        .collect();
    let refs: Vec<&CountRow> = endpoint_rows.clone();
    let (persons, events, suppressed) = count_columns(&refs);
    let mut fields = vec![
        Field::new("endpoint", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("group", DataType::Utf8, false),
        Field::new("persons", DataType::Int64, true),
        Field::new("events", DataType::Int64, true),
        Field::new("suppressed", DataType::Boolean, false),
    ];
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            counts.iter().map(|c| c.endpoint.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(counts.iter().map(
            |c| match c.kind {
                crate::study::EndpointKind::TimeToEvent => "time-to-event",
                crate::study::EndpointKind::Binary => "binary",
            },
        ))),
        Arc::new(StringArray::from_iter_values(
            counts.iter().map(|c| c.group.as_str()),
        )),
        Arc::new(Int64Array::from(persons)),
        Arc::new(Int64Array::from(events)),
        Arc::new(BooleanArray::from(suppressed)),
    ];
    let mut stats = stats;
    for (i, c) in counts.iter().enumerate() {
        if c.group == results::ALL && !study.arms.is_empty() {
            // Only when no arm's events are withheld: the test says nothing a withheld count
            // would not.
            let released = counts
                .iter()
                .enumerate()
                .all(|(j, d)| d.endpoint != c.endpoint || endpoint_rows[j].counts[1].is_some());
            stats[i].log_rank = log_ranks
                .iter()
                .find(|(name, _)| *name == c.endpoint)
                .and_then(|(_, l)| *l)
                .filter(|_| released);
        }
    }
    let values: Vec<[Option<f64>; 16]> = stats.iter().map(results::statistic_values).collect();
    for (k, name) in results::STATISTIC_COLUMNS.iter().enumerate() {
        fields.push(Field::new(*name, DataType::Float64, true));
        columns.push(Arc::new(datafusion::arrow::array::Float64Array::from(
            values.iter().map(|v| v[k]).collect::<Vec<_>>(),
        )));
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).expect("columns of equal length")
}

/// Numbers at risk at regular days of follow-up (`survival::at_risk_times` of the longest time
/// at risk in the endpoint): `endpoint`, `group`, `day`, `at_risk`. With `rounding`, each is
/// rounded to its multiple and left out below `threshold` (as released).
fn at_risk_batch(
    tables: &[(String, String, Vec<(i64, bool)>)],
    rounding: Option<(u64, u64)>,
) -> RecordBatch {
    let mut endpoint = Vec::new();
    let mut group = Vec::new();
    let mut day = Vec::new();
    let mut count: Vec<Option<i64>> = Vec::new();
    for (e, g, observations) in tables {
        let longest = tables
            .iter()
            .filter(|(other, _, _)| other == e)
            .flat_map(|(_, _, o)| o.iter().map(|o| o.0))
            .max()
            .unwrap_or(0);
        for t in results::survival::at_risk_times(longest) {
            let n = results::survival::at_risk(observations, t);
            endpoint.push(e.clone());
            group.push(g.clone());
            day.push(t);
            count.push(match rounding {
                None => Some(n as i64),
                Some((base, threshold)) => {
                    (n >= threshold).then(|| ((n + base / 2) / base * base) as i64)
                }
            });
        }
    }
    let schema = Schema::new(vec![
        Field::new("endpoint", DataType::Utf8, false),
        Field::new("group", DataType::Utf8, false),
        Field::new("day", DataType::Int64, false),
        Field::new("at_risk", DataType::Int64, true),
    ]);
    RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(StringArray::from(endpoint)),
            Arc::new(StringArray::from(group)),
            Arc::new(Int64Array::from(day)),
            Arc::new(Int64Array::from(count)),
        ],
    )
    .expect("columns of equal length")
}

/// The Kaplan–Meier curves: `endpoint`, `group`, `time` (days at risk), `at_risk`, `events`,
/// `censored`, `survival`, `std_err`, `lower`, `upper`.
fn km_batch(curves: &[(String, String, Vec<results::survival::Step>)]) -> RecordBatch {
    use datafusion::arrow::array::Float64Array;
    let rows: Vec<(&str, &str, &results::survival::Step)> = curves
        .iter()
        .flat_map(|(e, g, steps)| steps.iter().map(move |s| (e.as_str(), g.as_str(), s)))
        .collect();
    let int = |f: &dyn Fn(&results::survival::Step) -> i64| -> ArrayRef {
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| f(r.2))))
    };
    let float = |f: &dyn Fn(&results::survival::Step) -> f64| -> ArrayRef {
        Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| f(r.2))))
    };
    let schema = Schema::new(vec![
        Field::new("endpoint", DataType::Utf8, false),
        Field::new("group", DataType::Utf8, false),
        Field::new("time", DataType::Int64, false),
        Field::new("at_risk", DataType::Int64, false),
        Field::new("events", DataType::Int64, false),
        Field::new("censored", DataType::Int64, false),
        Field::new("survival", DataType::Float64, false),
        Field::new("std_err", DataType::Float64, false),
        Field::new("lower", DataType::Float64, false),
        Field::new("upper", DataType::Float64, false),
    ]);
    RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
            int(&|s| s.time),
            int(&|s| s.at_risk as i64),
            int(&|s| s.events as i64),
            int(&|s| s.censored as i64),
            float(&|s| s.survival),
            float(&|s| s.std_err),
            float(&|s| s.lower),
            float(&|s| s.upper),
        ],
    )
    .expect("columns of equal length")
}

/// A Cox model of one endpoint: `unadjusted` (on the arms) or `adjusted` (on the arms and the
/// study's confounders); its terms; the fit, or why there is none; the entries it used (those
/// with every term's value) less its terms: the residual degrees of freedom.
struct CoxModel {
    endpoint: String,
    model: &'static str,
    terms: Vec<String>,
    fit: Result<results::cox::Fit, results::cox::Failure>,
    residual_df: i64,
    /// Events among the entries the model used.
    events: u64,
}

/// The least residual degrees of freedom with which a model is released.
const MIN_RESIDUAL_DF: i64 = 10;

/// The Cox models of a time-to-event endpoint: on one indicator per arm after the first, and,
/// when the study marks covariates `as confounder`, on those too (numbers and flags as they
/// are, sex as an indicator of male; entries without a value left out).
fn cox_models(
    study: &Study,
    endpoint: usize,
    entries: &[results::Entry],
    covariates: &[results::table1::Column],
) -> Vec<CoxModel> {
    use results::table1::Column;
    let arms: Vec<&str> = study.arms.iter().map(|a| a.name.as_str()).collect();
    let arm_terms: Vec<String> = arms
        .iter()
        .skip(1)
        .map(|a| format!("{a} vs {}", arms[0]))
        .collect();
    let confounders: Vec<usize> = (0..study.covariates.len())
        .filter(|&c| study.covariates[c].confounder)
        .collect();
    let mut out = Vec::new();
    for (model, adjust) in [("unadjusted", &[][..]), ("adjusted", &confounders[..])] {
        if model == "adjusted" && adjust.is_empty() {
            continue;
        }
        let (mut times, mut events, mut x) = (Vec::new(), Vec::new(), Vec::new());
        for (i, entry) in entries.iter().enumerate() {
            let (event, Some(days)) = entry.outcomes[endpoint] else {
                continue;
            };
            let Some(g) = entry.arm.and_then(|a| arms.iter().position(|n| *n == a)) else {
                continue;
            };
            let mut row: Vec<f64> = (1..arms.len())
                .map(|k| f64::from(u8::from(k == g)))
                .collect();
            let mut complete = true;
            for &c in adjust {
                let value = match &covariates[c] {
                    Column::Numbers(v) => v[i],
                    Column::Categories { levels, of } => {
                        of[i].map(|k| f64::from(u8::from(levels[k as usize] == "male")))
                    }
                    Column::Dates => None,
                };
                match value {
                    Some(v) => row.push(v),
                    None => complete = false,
                }
            }
            if complete {
                times.push(days + 1);
                events.push(event);
                x.push(row);
            }
        }
        let mut terms = arm_terms.clone();
        terms.extend(adjust.iter().map(|&c| {
            let covariate = &study.covariates[c];
            if matches!(covariate.value, crate::study::CovariateValue::Sex) {
                format!("{} (male)", covariate.name)
            } else {
                covariate.name.clone()
            }
        }));
        out.push(CoxModel {
            endpoint: study.endpoints[endpoint].name.clone(),
            model,
            residual_df: times.len() as i64 - terms.len() as i64,
            events: events.iter().filter(|&&e| e).count() as u64,
            fit: results::cox::fit(&times, &events, &x),
            terms,
        });
    }
    out
}

/// The Cox models: `endpoint`, `model` (`unadjusted` or `adjusted`), `term`, `hazard_ratio`
/// with `lower` and `upper` (95%), `p` (Wald), `coefficient`, `std_err`, and `withheld` with
/// the reason: not fitted, or (where `publishable` says no) too few events or residual degrees
/// of freedom to release.
fn cox_batch(
    models: &[CoxModel],
    publishable: &dyn Fn(&str) -> bool,
    release: Option<u64>,
) -> RecordBatch {
    use datafusion::arrow::array::Float64Array;
    let mut endpoint = Vec::new();
    let mut model = Vec::new();
    let mut term = Vec::new();
    let mut values: [Vec<Option<f64>>; 6] = Default::default();
    let mut withheld: Vec<Option<String>> = Vec::new();
    let mut sizes: [Vec<Option<i64>>; 2] = Default::default();
    for m in models {
        let enough_df = release.is_none() || m.residual_df >= MIN_RESIDUAL_DF;
        let shown = publishable(&m.endpoint) && enough_df;
        // As released, the model's size is rounded like every count that is not exact.
        let size = |v: i64| match release {
            None => Some(v),
            Some(base) => (shown && m.fit.is_ok())
                .then(|| (v.max(0) as u64 + base / 2) / base * base)
                .map(|v| v as i64),
        };
        for (j, t) in m.terms.iter().enumerate() {
            sizes[0].push(size(m.events as i64));
            sizes[1].push(size(m.residual_df));
            endpoint.push(m.endpoint.clone());
            model.push(m.model);
            term.push(t.clone());
            let got = m.fit.as_ref().ok().filter(|_| shown).map(|f| &f.terms[j]);
            for (k, v) in [
                got.map(|g| g.hazard_ratio),
                got.map(|g| g.lower),
                got.map(|g| g.upper),
                got.map(|g| g.p),
                got.map(|g| g.coefficient),
                got.map(|g| g.std_err),
            ]
            .into_iter()
            .enumerate()
            {
                values[k].push(v);
            }
            withheld.push(match &m.fit {
                Err(results::cox::Failure::NoEvents) => Some("not fitted: no events".into()),
                Err(results::cox::Failure::Singular) => {
                    Some("not fitted: a term has no variation, or repeats others".into())
                }
                Err(results::cox::Failure::NotConverged) => Some(
                    "not fitted: did not converge (a term separates events from the rest)".into(),
                ),
                Ok(_) if !enough_df => Some(format!(
                    "withheld: fewer than {MIN_RESIDUAL_DF} residual degrees of freedom"
                )),
                Ok(_) if !shown => Some("withheld: an arm has too few events to release".into()),
                Ok(_) => None,
            });
        }
    }
    let mut fields = vec![
        Field::new("endpoint", DataType::Utf8, false),
        Field::new("model", DataType::Utf8, false),
        Field::new("term", DataType::Utf8, false),
    ];
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(endpoint)),
        Arc::new(StringArray::from(model)),
        Arc::new(StringArray::from(term)),
    ];
    for (k, name) in [
        "hazard_ratio",
        "lower",
        "upper",
        "p",
        "coefficient",
        "std_err",
    ]
    .iter()
    .enumerate()
    {
        fields.push(Field::new(*name, DataType::Float64, true));
        columns.push(Arc::new(Float64Array::from(values[k].clone())));
    }
    for (k, name) in ["events", "residual_df"].iter().enumerate() {
        fields.push(Field::new(*name, DataType::Int64, true));
        columns.push(Arc::new(Int64Array::from(sizes[k].clone())));
    }
    fields.push(Field::new("withheld", DataType::Utf8, true));
    columns.push(Arc::new(StringArray::from(withheld)));
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).expect("columns of equal length")
}

/// Table 1's columns (name and kind), and each one's values.
type CovariateValues = (
    Vec<(String, crate::study::ValueKind)>,
    Vec<results::table1::Column>,
);

/// Each Table 1 column's values: sex and the age band first, then the study's covariates.
fn covariate_values(study: &Study, all: &RecordBatch) -> Result<CovariateValues, String> {
    use crate::study::{CovariateValue, ValueKind};
    use datafusion::arrow::array::Float64Array;
    use results::table1::Column;
    let mut columns: Vec<(String, ValueKind, &str, bool)> = vec![
        (
            results::table1::SEX.to_string(),
            ValueKind::Category,
            results::table1::SEX_COLUMN,
            true,
        ),
        (
            results::table1::AGE_BAND.to_string(),
            ValueKind::Category,
            results::table1::AGE_COLUMN,
            false,
        ),
    ];
    for covariate in &study.covariates {
        columns.push((
            covariate.name.clone(),
            results::table1::kind_of(&covariate.value),
            covariate.name.as_str(),
            matches!(covariate.value, CovariateValue::Sex),
        ));
    }
    let numbers =
        |column: &datafusion::arrow::array::ArrayRef| -> Result<Vec<Option<f64>>, String> {
            let c = cast(column, &DataType::Float64).map_err(|e| e.to_string())?;
            let c = c.as_any().downcast_ref::<Float64Array>().expect("float");
            Ok(c.iter().collect())
        };
    let mut values = Vec::with_capacity(columns.len());
    for (name, kind, column_name, sex) in &columns {
        let Some(column) = all.column_by_name(column_name) else {
            // Run without the demographic columns (a study executed on its own): none to show.
            values.push(Column::Categories {
                levels: Vec::new(),
                of: vec![None; all.num_rows()],
            });
            continue;
        };
        values.push(match kind {
            ValueKind::Date => Column::Dates,
            ValueKind::Number | ValueKind::Flag => Column::Numbers(numbers(column)?),
            ValueKind::Category if name == results::table1::AGE_BAND => {
                let bands = results::table1::age_bands();
                let ages = numbers(column)?;
                Column::categories(
                    ages.into_iter()
                        .map(|age| age.map(|a| bands[results::table1::age_band_of(a)].as_str())),
                )
            }
            ValueKind::Category => {
                let c = cast(column, &DataType::Utf8).map_err(|e| e.to_string())?;
                let c = c.as_any().downcast_ref::<StringArray>().expect("text");
                Column::categories(c.iter().map(|text| match (*sex, text) {
                    (true, Some("8507")) => Some("male"),
                    (true, Some("8532")) => Some("female"),
                    (_, text) => text,
                }))
            }
        });
    }
    let columns = columns.into_iter().map(|(n, k, _, _)| (n, k)).collect();
    Ok((columns, values))
}

/// Table 1: `covariate`, `level` (a category; `0` or `1` for a flag; empty for a number's
/// entries with a value; `(missing)` for those without), `kind`, `group`, `n` (entries),
/// `suppressed`, then `percent` (flags and categories: of the group's entries with a value),
/// `mean`, `sd`, `median`, `q1`, `q3` (numbers) and `smd` (against the first arm). The counts
/// are given as in `rows`; the statistics of a row with a withheld count are withheld,
/// percentages are computed from the counts as given, and a balance needs both rows given.
fn table1_batch(
    rows: &[CountRow],
    table: &[results::table1::Row],
    first_arm: Option<&str>,
) -> RecordBatch {
    use datafusion::arrow::array::Float64Array;
    let given: Vec<&CountRow> = rows.iter().filter(|r| r.table == Table::Table1).collect();
    let entries_of = |group: &str| group_entries(rows, group);
    let shown = |i: usize| given[i].counts.iter().all(Option::is_some);
    let (_, n, suppressed) = count_columns(&given);
    let missing_of = |r: &results::table1::Row| -> Option<u64> {
        table
            .iter()
            .position(|o| {
                o.covariate == r.covariate
                    && o.group == r.group
                    && o.level == results::table1::MISSING
            })
            .and_then(|j| given[j].counts[1])
    };
    let mut stats: [Vec<Option<f64>>; 7] = Default::default();
    for (i, r) in table.iter().enumerate() {
        let keep = |v: Option<f64>| v.filter(|_| shown(i) && given[i].counts[0] != Some(0));
        let category = r.kind != crate::study::ValueKind::Number;
        let percent = match (given[i].counts[1], missing_of(r), entries_of(&r.group)) {
            (Some(n), Some(m), Some(e))
                if category && r.level != results::table1::MISSING && e > m =>
            {
                Some(100.0 * n as f64 / (e - m) as f64)
            }
            _ => None,
        };
        let reference = table.iter().position(|o| {
            o.covariate == r.covariate && o.level == r.level && Some(o.group.as_str()) == first_arm
        });
        let balance = r.smd.filter(|_| shown(i) && reference.is_some_and(shown));
        for (k, v) in [
            percent,
            keep(r.mean).filter(|_| r.kind == crate::study::ValueKind::Number),
            keep(r.sd),
            keep(r.median),
            keep(r.q1),
            keep(r.q3),
            balance,
        ]
        .into_iter()
        .enumerate()
        {
            stats[k].push(v);
        }
    }
    let kind = |k: crate::study::ValueKind| match k {
        crate::study::ValueKind::Number => "number",
        crate::study::ValueKind::Flag => "flag",
        _ => "category",
    };
    let mut fields = vec![
        Field::new("covariate", DataType::Utf8, false),
        Field::new("level", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("group", DataType::Utf8, false),
        Field::new("n", DataType::Int64, true),
        Field::new("suppressed", DataType::Boolean, false),
    ];
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            table.iter().map(|r| r.covariate.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            table.iter().map(|r| r.level.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            table.iter().map(|r| kind(r.kind)),
        )),
        Arc::new(StringArray::from_iter_values(
            table.iter().map(|r| r.group.as_str()),
        )),
        Arc::new(Int64Array::from(n)),
        Arc::new(BooleanArray::from(suppressed)),
    ];
    for (k, name) in results::table1::STATISTIC_COLUMNS.iter().enumerate() {
        fields.push(Field::new(*name, DataType::Float64, true));
        columns.push(Arc::new(Float64Array::from(stats[k].clone())));
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).expect("columns of equal length")
}

/// The tables of counts by file name.
const COUNT_TABLES: [(&str, Table); 3] = [
    ("attrition", Table::Attrition),
    ("attrition_by_arm", Table::ByArm),
    ("inclusion_rules", Table::Rule),
];

fn write_parquet(path: &Path, batch: &RecordBatch) -> Result<(), String> {
    let fail = |e: &dyn std::fmt::Display| format!("cannot write {}: {e}", path.display());
    let file = BufWriter::new(std::fs::File::create(path).map_err(|e| fail(&e))?);
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(3).expect("valid level"),
        ))
        .set_created_by("cohortql".to_string())
        .build();
    let mut w = ArrowWriter::try_new(file, batch.schema(), Some(props)).map_err(|e| fail(&e))?;
    w.write(batch).map_err(|e| fail(&e))?;
    w.close().map_err(|e| fail(&e))?;
    Ok(())
}

fn write_csv(path: &Path, batch: &RecordBatch) -> Result<(), String> {
    let fail = |e: &dyn std::fmt::Display| format!("cannot write {}: {e}", path.display());
    let file = BufWriter::new(std::fs::File::create(path).map_err(|e| fail(&e))?);
    let mut w = datafusion::arrow::csv::WriterBuilder::new()
        .with_header(true)
        .build(file);
    w.write(batch).map_err(|e| fail(&e))?;
    w.into_inner().flush().map_err(|e| fail(&e))?;
    Ok(())
}

fn write_table(dir: &Path, name: &str, batch: &RecordBatch) -> Result<(), String> {
    write_parquet(&dir.join(format!("{name}.parquet")), batch)?;
    write_csv(&dir.join(format!("{name}.csv")), batch)
}

/// What `run.json` says of the study, the data and the tool, in `site/` and `release/` alike.
fn provenance(info: &RunInfo) -> serde_json::Map<String, serde_json::Value> {
    let v = json!({
        "study": {
            "file": shareable_path(info.study_path),
            "title": info.study.title,
            "version": info.study.version,
        },
        "study_hash": info.study_hash,
        "repository": info.repository,
        "data_fingerprint": info.data_fingerprint,
        "tool_version": env!("CARGO_PKG_VERSION"),
        "cohort_definition_id": info.study.output.cohort_id,
        "cohort_id_from": if info.cohort_id_from_command_line { "--cohort-id" } else { "study" },
    });
    match v {
        serde_json::Value::Object(map) => map,
        _ => unreachable!("an object"),
    }
}

/// The disclosure control applied, exactly, as `release/run.json` states it.
fn disclosure_record(info: &RunInfo) -> serde_json::Value {
    let policy = info.policy;
    json!({
        "policy": policy.preset,
        "threshold": policy.threshold,
        "rounding": policy.rounding,
        "rule": policy.describe(),
        "set_by": info.site_source,
        "tightened_by": policy.tightened_by,
        "secondary_suppression": policy.rounding <= 1,
        "dataset_export": match info.export {
            None => "none",
            Some(true) => "exact-dates",
            Some(false) => "relative-dates",
        },
        "pseudonyms": "HMAC-SHA-256 keyed by the site's secret over the study hash and the person id, first 16 hexadecimal digits",
    })
}

fn attrition_record(rows: &[CountRow]) -> Vec<serde_json::Value> {
    rows.iter()
        .filter(|r| r.table == Table::Attrition)
        .map(|r| {
            json!({
                "step": r.step,
                "rule": r.rule,
                "persons": r.counts[0],
                "entries": r.counts[1],
            })
        })
        .collect()
}

/// `site/run.json`: exact counts, row counts, data warnings and timings, for the site.
fn site_record(
    info: &RunInfo,
    run: &Execution,
    exact: &[CountRow],
    cohort_rows: usize,
    dataset_rows: usize,
    files: &[String],
) -> serde_json::Value {
    let mut timings: serde_json::Map<String, serde_json::Value> = run
        .timings
        .iter()
        .map(|(name, d)| (format!("{name}_ms"), json!(d.as_secs_f64() * 1e3)))
        .collect();
    timings.insert(
        "check_ms".into(),
        json!(info.check_time.as_secs_f64() * 1e3),
    );
    let mut record = provenance(info);
    record.insert("place".into(), json!("site"));
    record.insert("data_warnings".into(), json!(info.data_warnings));
    record.insert("persons".into(), json!(run.persons()));
    record.insert("attrition".into(), json!(attrition_record(exact)));
    record.insert(
        "rows".into(),
        json!({ "cohort": cohort_rows, "dataset": dataset_rows }),
    );
    record.insert("disclosure".into(), disclosure_record(info));
    record.insert(
        "person_ids".into(),
        json!(if info.study.output.pseudonymise_ids {
            "pseudonymised"
        } else {
            "original"
        }),
    );
    record.insert("engine".into(), info.engine.json());
    record.insert("timings".into(), json!(timings));
    record.insert("files".into(), json!(files));
    serde_json::Value::Object(record)
}

/// `release/run.json`: what may leave the site, with the checksum of every file released.
fn release_record(
    info: &RunInfo,
    released: &[CountRow],
    files: &[String],
    checksums: &serde_json::Map<String, serde_json::Value>,
) -> serde_json::Value {
    let mut record = provenance(info);
    record.insert("place".into(), json!("release"));
    record.insert("disclosure".into(), disclosure_record(info));
    let persons = released
        .iter()
        .rfind(|r| r.table == Table::Attrition)
        .and_then(|r| r.counts[0]);
    record.insert("persons".into(), json!(persons));
    record.insert("attrition".into(), json!(attrition_record(released)));
    record.insert("files".into(), json!(files));
    record.insert(
        "checksums".into(),
        serde_json::Value::Object(checksums.clone()),
    );
    serde_json::Value::Object(record)
}

/// The files a run writes under `site/`, `run.json` last.
pub const SITE_FILES: [&str; 22] = [
    "cohort.parquet",
    "cohort.csv",
    "dataset.parquet",
    "dataset.csv",
    "attrition.parquet",
    "attrition.csv",
    "attrition_by_arm.parquet",
    "attrition_by_arm.csv",
    "inclusion_rules.parquet",
    "inclusion_rules.csv",
    "endpoints.parquet",
    "endpoints.csv",
    "km.parquet",
    "km.csv",
    "at_risk.parquet",
    "at_risk.csv",
    "cox.parquet",
    "cox.csv",
    "table1.parquet",
    "table1.csv",
    "study.study",
    "run.json",
];

/// The files a run writes under `release/`, `run.json` last; `dataset.csv` only with
/// `--export-dataset`.
pub const RELEASE_FILES: [&str; 10] = [
    "attrition.csv",
    "attrition_by_arm.csv",
    "inclusion_rules.csv",
    "endpoints.csv",
    "km.csv",
    "at_risk.csv",
    "cox.csv",
    "table1.csv",
    "study.study",
    "run.json",
];

/// The places of a run's outputs: what stays at the site, and what may leave it.
pub const PLACES: [&str; 2] = ["site", "release"];

/// The files of a run's flat output directory before outputs were split into `site/` and
/// `release/`: such a directory is still a previous run's, and may be replaced.
const FLAT_FILES: [&str; 12] = [
    "cohort.parquet",
    "cohort.csv",
    "dataset.parquet",
    "dataset.csv",
    "attrition.parquet",
    "attrition.csv",
    "attrition_by_arm.parquet",
    "attrition_by_arm.csv",
    "inclusion_rules.parquet",
    "inclusion_rules.csv",
    "study.study",
    "run.json",
];

/// An output directory claimed for one run: checked to be empty, absent or a previous run's
/// outputs, and locked against other runs into the same place until the outputs are written.
pub struct OutputDir {
    out: PathBuf,
    lock_path: PathBuf,
    /// Held for the claim's lifetime; the operating system releases it if the process dies.
    _lock: std::fs::File,
    /// Directories of interrupted runs into the same place, removed when it was claimed.
    pub removed_leftovers: Vec<PathBuf>,
}

impl OutputDir {
    /// Claims `out`: refuses a symbolic link, a file, or a directory holding anything but a
    /// previous run's outputs; locks it; removes what interrupted runs into it left behind.
    pub fn claim(out: &Path) -> Result<OutputDir, String> {
        let name = match out.file_name() {
            Some(n)
                if out
                    .components()
                    .next_back()
                    .is_some_and(|c| matches!(c, std::path::Component::Normal(_))) =>
            {
                n.to_string_lossy().into_owned()
            }
            _ => {
                return Err(format!(
                "{} does not name a directory of its own: give --out a name such as output/study",
                out.display()
            ))
            }
        };
        let parent = out
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        let lock_path = parent.join(format!(".{name}.lock"));
        let lock = lock_file(&lock_path, out)?;
        let mut claimed = OutputDir {
            out: out.to_path_buf(),
            lock_path,
            _lock: lock,
            removed_leftovers: Vec::new(),
        };
        check_replaceable(out)?;
        // Under the lock no other run is writing here: any partial or set-aside directory of
        // this output is left by a run that was killed, and may hold person-level rows.
        let prefixes = [format!(".{name}.partial-"), format!(".{name}.previous-")];
        if let Ok(entries) = std::fs::read_dir(parent) {
            for entry in entries.flatten() {
                let file_name = entry.file_name().to_string_lossy().into_owned();
                if prefixes.iter().any(|p| file_name.starts_with(p.as_str())) {
                    let path = entry.path();
                    std::fs::remove_dir_all(&path)
                        .map_err(|e| format!("cannot remove {}: {e}", path.display()))?;
                    claimed.removed_leftovers.push(path);
                }
            }
        }
        claimed.removed_leftovers.sort();
        Ok(claimed)
    }

    /// Writes every output of a run, replacing a previous run's outputs.
    pub fn write(self, info: &RunInfo, run: &Execution) -> Result<Written, String> {
        let out = &self.out;
        // Checked again: the directory may have changed while the study ran.
        check_replaceable(out)?;
        let tmp = hidden_sibling(out, "partial");
        std::fs::create_dir_all(&tmp)
            .map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
        let written = match write_files(&tmp, info, run) {
            Ok(w) => w,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(e);
            }
        };
        let old = hidden_sibling(out, "previous");
        if std::fs::symlink_metadata(out).is_ok() {
            if let Err(e) = std::fs::rename(out, &old) {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(format!("cannot replace {}: {e}", out.display()));
            }
        }
        if let Err(e) = std::fs::rename(&tmp, out) {
            let _ = std::fs::rename(&old, out);
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(format!("cannot move the outputs to {}: {e}", out.display()));
        }
        let _ = std::fs::remove_dir_all(&old);
        Ok(written)
    }
}

impl Drop for OutputDir {
    fn drop(&mut self) {
        // Removed while still held, so that no run is left waiting on a file nobody can see.
        let _ = std::fs::remove_file(&self.lock_path);
    }
}

/// Creates and locks `.name.lock` beside the output directory. A lock file removed by the run
/// that held it (between our opening and locking it) is not the lock any more: then try again.
fn lock_file(path: &Path, out: &Path) -> Result<std::fs::File, String> {
    for _ in 0..100 {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(format!(
                "another cohortql run is writing to {} now: wait for it, or choose another --out",
                out.display()
            ))
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(format!("cannot lock {}: {e}", path.display()))
            }
        }
        if same_file(&file, path) {
            return Ok(file);
        }
    }
    Err(format!(
        "cannot lock {}: it keeps being replaced",
        path.display()
    ))
}

#[cfg(unix)]
fn same_file(file: &std::fs::File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_: &std::fs::File, path: &Path) -> bool {
    path.exists()
}

/// Whether `out` may be written: absent, an empty directory, or a previous run's outputs:
/// `site/` and `release/` each holding only the files its `run.json` lists (or, from before
/// outputs were split, those files directly in `out`). Never a symbolic link.
fn check_replaceable(out: &Path) -> Result<(), String> {
    let refuse = |why: String| {
        Err(format!(
            "{} {why}: choose another --out, or move it away",
            out.display()
        ))
    };
    let meta = match std::fs::symlink_metadata(out) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("cannot read {}: {e}", out.display())),
    };
    if meta.is_symlink() {
        return refuse("is a symbolic link; outputs are written only into a real directory".into());
    }
    if !meta.is_dir() {
        return refuse("exists and is not a directory".into());
    }
    let names = entries(out)?;
    if names.is_empty() {
        return Ok(());
    }
    let is_dir = |name: &str| {
        std::fs::symlink_metadata(out.join(name)).is_ok_and(|m| m.is_dir() && !m.is_symlink())
    };
    let places = names
        .iter()
        .any(|(n, _)| PLACES.contains(&n.as_str()) && is_dir(n));
    let mut foreign: Vec<String> = Vec::new();
    if places {
        for (place, _) in &names {
            if !PLACES.contains(&place.as_str()) || !is_dir(place) {
                foreign.push(place.clone());
                continue;
            }
            let dir = out.join(place);
            let Some(manifest) = manifest(&dir) else {
                return refuse(format!(
                    "holds a {place}/ without a run.json of cohortql's, so it is not a previous run's outputs"
                ));
            };
            foreign.extend(
                entries(&dir)?
                    .into_iter()
                    .filter(|(n, file)| !*file || !manifest.contains(n))
                    .map(|(n, _)| format!("{place}/{n}")),
            );
        }
    } else {
        let Some(manifest) = manifest(out) else {
            return refuse(
                "exists and does not hold a previous run's outputs (no run.json of cohortql's)"
                    .into(),
            );
        };
        foreign.extend(
            names
                .into_iter()
                .filter(|(n, file)| !*file || !manifest.contains(n))
                .map(|(n, _)| n),
        );
    }
    if !foreign.is_empty() {
        foreign.sort();
        let shown: Vec<String> = foreign.iter().take(5).map(|f| format!("`{f}`")).collect();
        return refuse(format!(
            "holds {} that no run wrote ({}{})",
            if foreign.len() == 1 {
                "a file"
            } else {
                "files"
            },
            shown.join(", "),
            if foreign.len() > 5 { ", …" } else { "" }
        ));
    }
    Ok(())
}

/// The names in a directory, each with whether it is a regular file.
fn entries(dir: &Path) -> Result<Vec<(String, bool)>, String> {
    let read: Vec<std::fs::DirEntry> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    Ok(read
        .iter()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                e.file_type().is_ok_and(|t| t.is_file()),
            )
        })
        .collect())
}

/// The files a directory's `run.json` lists, when it is one of cohortql's.
fn manifest(dir: &Path) -> Option<Vec<String>> {
    std::fs::read_to_string(dir.join("run.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .filter(|v| v.get("study_hash").is_some_and(|h| h.is_string()))
        .map(|v| match v.get("files").and_then(|f| f.as_array()) {
            Some(files) => files
                .iter()
                .filter_map(|f| f.as_str().map(str::to_string))
                .collect(),
            // Written before run.json listed its files: these are the files it wrote.
            None => FLAT_FILES.iter().map(|f| f.to_string()).collect(),
        })
}

fn write_files(dir: &Path, info: &RunInfo, run: &Execution) -> Result<Written, String> {
    let site_dir = dir.join("site");
    let release_dir = dir.join("release");
    for d in [&site_dir, &release_dir] {
        std::fs::create_dir(d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
    }
    // At the site: person-level rows and exact counts.
    let cohort = concat_batches(&run.cohort_schema, &run.cohort).map_err(|e| e.to_string())?;
    write_table(&site_dir, "cohort", &cohort)?;
    // The dataset's batches as one, read for its file and for the site's results.
    let all = concat_batches(&run.dataset_schema, &run.dataset).map_err(|e| e.to_string())?;
    let dataset = person_level(
        &all,
        info.study.output.pseudonymise_ids,
        info.site,
        info.study_hash,
    )?;
    write_table(&site_dir, "dataset", &dataset)?;
    let SiteResults {
        entries,
        values,
        endpoint_counts,
        table1,
    } = site_results(info.study, &all)?;
    // An export is pseudonymised whatever the site's copy is: made now, from the same rows.
    let pseudonymised = match info.export {
        Some(_) if !info.study.output.pseudonymise_ids => {
            Some(person_level(&all, true, info.site, info.study_hash)?)
        }
        _ => None,
    };
    drop(all);
    // The study's covariates, without the demographic columns, for the models.
    let covariates = &values[2..];
    let first_arm = info.study.arms.first().map(|a| a.name.as_str());
    let mut exact = count_rows(run);
    exact.extend(results::count_rows(&endpoint_counts));
    exact.extend(results::table1::count_rows(&table1));
    for (name, table) in COUNT_TABLES {
        write_table(&site_dir, name, &count_batch(&exact, table))?;
    }
    let mut curves: Vec<(String, String, Vec<results::survival::Step>)> = Vec::new();
    let mut at_risk_tables: Vec<(String, String, Vec<(i64, bool)>)> = Vec::new();
    let mut models: Vec<CoxModel> = Vec::new();
    let mut log_ranks = Vec::new();
    for (e, endpoint) in info.study.endpoints.iter().enumerate() {
        if endpoint.kind != crate::study::EndpointKind::TimeToEvent {
            continue;
        }
        let observations = results::observations(info.study, &entries, e);
        for (group, obs) in results::groups(info.study).into_iter().zip(&observations) {
            at_risk_tables.push((endpoint.name.clone(), group.clone(), obs.clone()));
            curves.push((
                endpoint.name.clone(),
                group,
                results::survival::kaplan_meier(obs),
            ));
        }
        let arms = &observations[..observations.len() - 1];
        log_ranks.push((endpoint.name.clone(), results::survival::log_rank(arms)));
        if arms.len() >= 2 {
            models.extend(cox_models(info.study, e, &entries, covariates));
        }
    }
    write_table(
        &site_dir,
        "endpoints",
        &endpoint_batch(info.study, &exact, &endpoint_counts, &log_ranks),
    )?;
    write_table(&site_dir, "km", &km_batch(&curves))?;
    write_table(&site_dir, "at_risk", &at_risk_batch(&at_risk_tables, None))?;
    write_table(
        &site_dir,
        "table1",
        &table1_batch(&exact, &table1, first_arm),
    )?;
    write_table(&site_dir, "cox", &cox_batch(&models, &|_| true, None))?;
    std::fs::write(site_dir.join("study.study"), info.study_text)
        .map_err(|e| format!("cannot write the study copy: {e}"))?;
    let site_files: Vec<String> = SITE_FILES.iter().map(|f| f.to_string()).collect();
    let record = site_record(
        info,
        run,
        &exact,
        cohort.num_rows(),
        dataset.num_rows(),
        &site_files,
    );
    write_json(&site_dir.join("run.json"), &record)?;

    // What may leave: counts under disclosure control, as text an output checker can read.
    let released = crate::disclosure::control::control(&exact, info.policy);
    let mut files: Vec<String> = Vec::new();
    for (name, table) in COUNT_TABLES {
        let file = format!("{name}.csv");
        write_csv(&release_dir.join(&file), &count_batch(&released, table))?;
        files.push(file);
    }
    write_csv(
        &release_dir.join("endpoints.csv"),
        &endpoint_batch(info.study, &released, &endpoint_counts, &log_ranks),
    )?;
    files.push("endpoints.csv".to_string());
    let coarsened: Vec<(String, String, Vec<results::survival::Step>)> = curves
        .iter()
        .map(|(endpoint, group, steps)| {
            (
                endpoint.clone(),
                group.clone(),
                results::survival::coarsened(
                    steps,
                    info.policy.live_rounding(),
                    info.policy.threshold,
                ),
            )
        })
        .collect();
    write_csv(&release_dir.join("km.csv"), &km_batch(&coarsened))?;
    files.push("km.csv".to_string());
    write_csv(
        &release_dir.join("at_risk.csv"),
        &at_risk_batch(
            &at_risk_tables,
            Some((info.policy.live_rounding(), info.policy.threshold)),
        ),
    )?;
    files.push("at_risk.csv".to_string());
    write_csv(
        &release_dir.join("table1.csv"),
        &table1_batch(&released, &table1, first_arm),
    )?;
    files.push("table1.csv".to_string());
    // A model is released only when every arm's events are, and at least the threshold each.
    let publishable = |endpoint: &str| {
        released
            .iter()
            .filter(|r| r.table == Table::Endpoint && r.rule == endpoint)
            .all(|r| r.counts[1].is_some_and(|e| e >= info.policy.threshold))
    };
    write_csv(
        &release_dir.join("cox.csv"),
        &cox_batch(&models, &publishable, Some(info.policy.live_rounding())),
    )?;
    files.push("cox.csv".to_string());
    std::fs::write(release_dir.join("study.study"), info.study_text)
        .map_err(|e| format!("cannot write the study copy: {e}"))?;
    files.push("study.study".to_string());
    if let Some(exact_dates) = info.export {
        write_csv(
            &release_dir.join("dataset.csv"),
            &exported_dataset(pseudonymised.as_ref().unwrap_or(&dataset), exact_dates)?,
        )?;
        files.push("dataset.csv".to_string());
    }
    let mut checksums = serde_json::Map::new();
    for f in &files {
        checksums.insert(f.clone(), json!(file_sha256(&release_dir.join(f))?));
    }
    files.push("run.json".to_string());
    write_json(
        &release_dir.join("run.json"),
        &release_record(info, &released, &files, &checksums),
    )?;
    Ok(Written {
        cohort: cohort.num_rows(),
        dataset: dataset.num_rows(),
        released,
        exported: info.export.is_some(),
    })
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<(), String> {
    let text = serde_json::to_string_pretty(value).expect("a JSON value serialises");
    std::fs::write(path, text + "\n").map_err(|e| format!("cannot write {}: {e}", path.display()))
}
