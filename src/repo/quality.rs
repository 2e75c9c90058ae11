//! Data quality, as queries on the registered tables: `repo check`'s schema report and checks in
//! the spirit of OHDSI's Data Quality Dashboard, the warnings a run gives about the tables it
//! reads, and finding the file and column behind a data error.

use super::domains::{Field, Records, CATALOGUE};
use super::query::Queries;
use super::schema::TABLES;
use super::{clean_engine_message, RepoError, Repository};
use crate::study::Domain;
use datafusion::arrow::array::{Array, Int64Array};
use datafusion::prelude::SessionContext;
use serde::Serialize;

/// One table as found in the repository.
#[derive(Debug, Clone, Serialize)]
pub struct TableReport {
    pub table: String,
    /// Where the table is: its file, or `schema.table` in a database; `None` when the
    /// repository has no such table (it reads as empty).
    pub file: Option<String>,
    pub rows: u64,
    pub persons: Option<u64>,
    /// Columns of the table that the OMOP schema does not know (ignored).
    pub extra_columns: Vec<String>,
    /// Optional columns the table lacks (read as empty).
    pub absent_columns: Vec<String>,
}

/// One data-quality check on one table.
#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    pub check: String,
    pub table: String,
    pub description: String,
    pub failing: u64,
    pub rows: u64,
    pub percent: f64,
}

/// Everything `repo check` found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The repository's directory, or its database as `postgresql host:port/db schema cdm`.
    pub repository: String,
    pub cdm_version: Option<String>,
    pub persons: u64,
    pub tables: Vec<TableReport>,
    /// Problems that make the repository unusable: missing tables or columns, unreadable data.
    pub errors: Vec<String>,
    pub checks: Vec<CheckResult>,
}

impl Report {
    pub fn warnings(&self) -> impl Iterator<Item = &CheckResult> {
        self.checks.iter().filter(|c| c.failing > 0)
    }
}

/// Checks a repository: schema first, then data quality on every readable table.
pub async fn check_repository(repo: &Repository) -> Report {
    let mut report = Report {
        repository: repo.dir.display().to_string(),
        cdm_version: None,
        persons: 0,
        tables: Vec::new(),
        errors: Vec::new(),
        checks: Vec::new(),
    };
    let ctx = match repo.session().await {
        Ok(ctx) => ctx,
        Err(e) => {
            report.errors.push(e.to_string());
            return report;
        }
    };
    let mut readable: Vec<&str> = Vec::new();
    for table in TABLES {
        let file = repo.file(table.name);
        let has_person = table.column("person_id").is_some();
        let path = file.map(|f| f.path.clone()).unwrap_or_default();
        // Reading every column once finds any value that does not convert; CSV tables are then
        // kept in memory, since the checks below read each table many times.
        if let Err(message) = read_all(&ctx, table.name, file).await {
            let column = bad_data(&ctx, table.name, table.columns.iter().map(|c| c.name))
                .await
                .and_then(|(column, _)| column);
            report.errors.push(
                RepoError::BadData {
                    path,
                    column,
                    message,
                }
                .to_string(),
            );
            continue;
        }
        match rows_and_persons(&ctx, table.name, has_person).await {
            Ok((rows, persons)) => {
                readable.push(table.name);
                report.tables.push(TableReport {
                    table: table.name.to_string(),
                    file: file.map(|f| f.path.display().to_string()),
                    rows,
                    persons,
                    extra_columns: file.map(|f| f.extra_columns.clone()).unwrap_or_default(),
                    absent_columns: file
                        .map(|f| {
                            f.sources
                                .iter()
                                .filter(|(_, s)| matches!(s, super::files::Source::Absent))
                                .map(|(c, _)| c.name.to_string())
                                .collect()
                        })
                        .unwrap_or_default(),
                });
            }
            Err(message) => report.errors.push(
                RepoError::BadData {
                    path,
                    column: None,
                    message,
                }
                .to_string(),
            ),
        }
    }
    if let Some(person) = report.tables.iter().find(|t| t.table == "person") {
        report.persons = person.rows;
    }
    report.cdm_version = cdm_version(&ctx).await;
    if !report.errors.is_empty() {
        return report;
    }
    data_checks(&ctx, &mut report).await;
    report
}

/// The data-quality checks, run where the data is, on the tables of `report.tables`: their
/// results, or the failures of the queries, are added to the report.
pub async fn data_checks(q: &impl Queries, report: &mut Report) {
    let readable: Vec<String> = report.tables.iter().map(|t| t.table.clone()).collect();
    let readable: Vec<&str> = readable.iter().map(String::as_str).collect();
    let has_vocabulary = report
        .tables
        .iter()
        .any(|t| t.table == "concept" && t.rows > 0);
    let rows_of = |name: &str| {
        report
            .tables
            .iter()
            .find(|t| t.table == name)
            .map_or(0, |t| t.rows)
    };
    let mut checks = Vec::new();
    for ev in event_tables().filter(|e| readable.contains(&e.table) && rows_of(e.table) > 0) {
        for (check, description, sql) in event_checks(&ev, has_vocabulary) {
            checks.push((check, ev.table, description, sql, rows_of(ev.table)));
        }
    }
    if rows_of("observation_period") > 0 {
        checks.push((
            "end_before_start",
            "observation_period",
            "observation periods that end before they start".to_string(),
            "SELECT count(*) FROM observation_period WHERE observation_period_end_date < observation_period_start_date".to_string(),
            rows_of("observation_period"),
        ));
        checks.push((
            "orphan_person_id",
            "observation_period",
            "observation periods of a person_id absent from person".to_string(),
            "SELECT count(*) FROM observation_period o LEFT ANTI JOIN person p ON o.person_id = p.person_id".to_string(),
            rows_of("observation_period"),
        ));
    }
    checks.push((
        "duplicate_person_id",
        "person",
        "rows of person whose person_id is not unique".to_string(),
        "SELECT count(*) FROM person WHERE person_id IN (SELECT person_id FROM person GROUP BY person_id HAVING count(*) > 1)".to_string(),
        rows_of("person"),
    ));
    checks.push((
        "no_observation_period",
        "person",
        "persons without any observation period".to_string(),
        "SELECT count(*) FROM person p LEFT ANTI JOIN observation_period o ON p.person_id = o.person_id".to_string(),
        rows_of("person"),
    ));
    if has_vocabulary {
        checks.push((
            "unknown_concept",
            "person",
            "persons whose gender_concept_id is not in the vocabulary".to_string(),
            "SELECT count(*) FROM person p LEFT ANTI JOIN concept c ON p.gender_concept_id = c.concept_id WHERE p.gender_concept_id <> 0".to_string(),
            rows_of("person"),
        ));
    }
    for (check, table, description, sql, rows) in checks {
        match query_counts(q, &sql).await {
            Ok(counts) => {
                let failing = counts[0].unwrap_or(0);
                report.checks.push(CheckResult {
                    check: check.to_string(),
                    table: table.to_string(),
                    description,
                    failing,
                    rows,
                    percent: if rows == 0 {
                        0.0
                    } else {
                        (failing as f64) * 100.0 / rows as f64
                    },
                });
            }
            Err(message) => report
                .errors
                .push(format!("the check {check} on {table} failed: {message}")),
        }
    }
}

/// A table of events, dated in its own columns (image features take their image's date).
struct EventTable {
    table: &'static str,
    start: &'static str,
    end: Option<&'static str>,
    standard_concepts: &'static [&'static str],
}

impl EventTable {
    fn of(records: &Records) -> Option<EventTable> {
        Some(EventTable {
            table: records.table,
            start: records.own(Field::Start)?,
            end: records.own(Field::End),
            standard_concepts: records.standard_concepts,
        })
    }
}

/// The tables of events in a person's history, as the domain catalogue has them.
fn event_tables() -> impl Iterator<Item = EventTable> {
    CATALOGUE
        .iter()
        .filter(|r| r.domain != Domain::ObservationPeriod)
        .filter_map(EventTable::of)
}

fn event_checks(ev: &EventTable, has_vocabulary: bool) -> Vec<(&'static str, String, String)> {
    let t = ev.table;
    let start = ev.start;
    let mut out = vec![
        (
            "orphan_person_id",
            format!("{t} rows of a person_id absent from person"),
            format!("SELECT count(*) FROM {t} e LEFT ANTI JOIN person p ON e.person_id = p.person_id"),
        ),
        (
            "outside_observation",
            format!("{t} rows whose {start} lies in none of the person's observation periods"),
            format!(
                "SELECT count(*) FROM {t} e WHERE NOT EXISTS (SELECT 1 FROM observation_period o WHERE o.person_id = e.person_id AND e.{start} >= o.observation_period_start_date AND e.{start} <= o.observation_period_end_date)"
            ),
        ),
        (
            "before_birth",
            format!("{t} rows dated before the person's birth"),
            format!(
                "SELECT count(*) FROM {t} e JOIN person p ON e.person_id = p.person_id WHERE e.{start} < make_date(CAST(p.year_of_birth AS INT), CAST(coalesce(p.month_of_birth, 1) AS INT), CAST(coalesce(p.day_of_birth, 1) AS INT))"
            ),
        ),
    ];
    if t != "death" {
        out.push((
            "after_death",
            format!("{t} rows dated more than 60 days after the person's death"),
            format!(
                "SELECT count(*) FROM {t} e JOIN death d ON e.person_id = d.person_id WHERE e.{start} > d.death_date + INTERVAL '60 days'"
            ),
        ));
    }
    if let Some(end) = ev.end {
        out.push((
            "end_before_start",
            format!("{t} rows whose {end} is before {start}"),
            format!("SELECT count(*) FROM {t} WHERE {end} < {start}"),
        ));
    }
    if has_vocabulary {
        for column in ev.standard_concepts {
            out.push((
                "unknown_concept",
                format!("{t} rows whose {column} is not in the vocabulary"),
                format!(
                    "SELECT count(*) FROM {t} e LEFT ANTI JOIN concept c ON e.{column} = c.concept_id WHERE e.{column} IS NOT NULL AND e.{column} <> 0"
                ),
            ));
            out.push((
                "non_standard_concept",
                format!("{t} rows whose {column} is not a standard concept"),
                format!(
                    "SELECT count(*) FROM {t} e JOIN concept c ON e.{column} = c.concept_id WHERE e.{column} <> 0 AND (c.standard_concept IS NULL OR c.standard_concept <> 'S')"
                ),
            ));
        }
    }
    out
}

/// Reads every value of a table. CSV tables are parsed again by every query, so once read
/// without error their rows are kept in memory.
async fn read_all(
    ctx: &SessionContext,
    table: &str,
    file: Option<&super::files::TableFile>,
) -> Result<(), String> {
    if file.is_none_or(|f| f.format == super::files::Format::Parquet) {
        let columns = super::schema::table(table).map_or(Vec::new(), |t| {
            t.columns
                .iter()
                .map(|c| format!("count({})", c.name))
                .collect()
        });
        return query_counts(ctx, &format!("SELECT {} FROM {table}", columns.join(", ")))
            .await
            .map(|_| ());
    }
    let frame = ctx
        .table(table)
        .await
        .map_err(|e| clean_engine_message(&e.to_string()))?;
    let schema = std::sync::Arc::new(frame.schema().as_arrow().clone());
    let batches = frame
        .collect()
        .await
        .map_err(|e| clean_engine_message(&e.to_string()))?;
    let memory = datafusion::datasource::MemTable::try_new(schema, vec![batches])
        .map_err(|e| e.to_string())?;
    ctx.deregister_table(table).map_err(|e| e.to_string())?;
    ctx.register_table(table, std::sync::Arc::new(memory))
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Runs a query returning one row of integers.
async fn query_counts(q: &impl Queries, sql: &str) -> Result<Vec<Option<u64>>, String> {
    let batches = super::query::sql(q, sql).await?;
    let batch = batches
        .into_iter()
        .find(|b| b.num_rows() > 0)
        .ok_or("the query returned no row")?;
    Ok((0..batch.num_columns())
        .map(|i| {
            let col = batch.column(i);
            let col = datafusion::arrow::compute::cast(
                col,
                &datafusion::arrow::datatypes::DataType::Int64,
            )
            .ok()?;
            let ints = col.as_any().downcast_ref::<Int64Array>()?;
            if ints.is_null(0) {
                None
            } else {
                Some(ints.value(0).max(0) as u64)
            }
        })
        .collect())
}

/// A table's rows, and its distinct persons when it has `person_id`.
pub(crate) async fn rows_and_persons(
    q: &impl Queries,
    table: &str,
    has_person: bool,
) -> Result<(u64, Option<u64>), String> {
    let persons = if has_person {
        "count(DISTINCT person_id)"
    } else {
        "CAST(NULL AS BIGINT)"
    };
    let counts = query_counts(q, &format!("SELECT count(*), {persons} FROM {table}")).await?;
    Ok((counts[0].unwrap_or(0), counts[1]))
}

/// The CDM version `cdm_source` states, if the repository has one.
pub(crate) async fn cdm_version(q: &impl Queries) -> Option<String> {
    if !q.has_table("cdm_source") {
        return None;
    }
    let rows = query_strings(q, "SELECT cdm_version FROM cdm_source LIMIT 1").await;
    rows.ok()?.into_iter().next().flatten()
}

async fn query_strings(q: &impl Queries, sql: &str) -> Result<Vec<Option<String>>, String> {
    let batches = super::query::sql(q, sql).await?;
    let mut out = Vec::new();
    for b in batches {
        let col = datafusion::arrow::compute::cast(
            b.column(0),
            &datafusion::arrow::datatypes::DataType::Utf8,
        )
        .map_err(|e| e.to_string())?;
        let strings = col
            .as_any()
            .downcast_ref::<datafusion::arrow::array::StringArray>()
            .ok_or("not text")?;
        for i in 0..strings.len() {
            out.push(if strings.is_null(i) {
                None
            } else {
                Some(strings.value(i).to_string())
            });
        }
    }
    Ok(out)
}

/// What in a table cannot be read: the whole file (no column), or the first column whose values
/// do not convert, with the engine's message.
async fn bad_data(
    ctx: &SessionContext,
    table: &str,
    columns: impl Iterator<Item = &str>,
) -> Option<(Option<String>, String)> {
    // Counting rows reads every row but converts no value: a failure there is the file's.
    if let Err(message) = query_counts(ctx, &format!("SELECT count(*) FROM {table}")).await {
        return Some((None, message));
    }
    for column in columns {
        if let Err(message) =
            query_counts(ctx, &format!("SELECT count({column}) FROM {table}")).await
        {
            return Some((Some(column.to_string()), message));
        }
    }
    None
}

/// Where a failed query's bad data lies: the first table file that cannot be read, and the
/// column whose values do not convert. Reads the tables again, so it is for the error path.
pub async fn locate_bad_data(ctx: &SessionContext, repo: &Repository) -> Option<RepoError> {
    for file in &repo.files {
        let columns = file.sources.iter().map(|(c, _)| c.name);
        if let Some((column, message)) = bad_data(ctx, file.table.name, columns).await {
            return Some(RepoError::BadData {
                path: file.path.clone(),
                column,
                message,
            });
        }
    }
    None
}

/// Dates before this or after [`LATEST_PLAUSIBLE`] are implausible in a health record; so are
/// years of birth outside their years.
pub const EARLIEST_PLAUSIBLE: &str = "1850-01-01";
pub const LATEST_PLAUSIBLE: &str = "2099-12-31";

/// The data-quality problems a run warns of, in the tables it reads: duplicate person ids,
/// records that end before they start, and dates outside any plausible range. One line per
/// kind of problem and table, with its count; none when the data are clean.
/// `repeats`: the count `repeated_person_ids` gives, when the run has it already.
pub async fn run_warnings(
    ctx: &impl Queries,
    tables: &[String],
    repeats: Option<u64>,
) -> Result<Vec<String>, String> {
    let mut warnings = Vec::new();
    let implausible = |c: &str| {
        format!(
            "sum(CASE WHEN {c} < DATE '{EARLIEST_PLAUSIBLE}' OR {c} > DATE '{LATEST_PLAUSIBLE}' THEN 1 ELSE 0 END)"
        )
    };
    if tables.iter().any(|t| t == "person") {
        let (first, last) = (&EARLIEST_PLAUSIBLE[..4], &LATEST_PLAUSIBLE[..4]);
        // The repeated ids counted in the same pass, unless the run counted them already.
        let repeated = if repeats.is_some() { "0" } else { REPEATED_IDS };
        let counts = query_counts(
            ctx,
            &format!(
                "SELECT {repeated}, \
                   sum(CASE WHEN year_of_birth < {first} OR year_of_birth > {last} THEN 1 ELSE 0 END) \
                 FROM person"
            ),
        )
        .await?;
        if let Some(n) = repeats.or(counts[0]).filter(|&n| n > 0) {
            warnings.push(format!(
                "person: {n} row{} repeat a person_id of another row",
                plural(n)
            ));
        }
        if let Some(n) = counts[1].filter(|&n| n > 0) {
            warnings.push(format!(
                "person: {n} row{} have a year_of_birth before {first} or after {last}",
                plural(n)
            ));
        }
    }
    for ev in CATALOGUE
        .iter()
        .filter_map(EventTable::of)
        .filter(|e| tables.iter().any(|t| t == e.table))
    {
        let (t, start) = (ev.table, ev.start);
        let mut sums = vec![implausible(start)];
        if let Some(end) = ev.end {
            sums.push(implausible(end));
            sums.push(format!("sum(CASE WHEN {end} < {start} THEN 1 ELSE 0 END)"));
        }
        let counts = query_counts(ctx, &format!("SELECT {} FROM {t}", sums.join(", "))).await?;
        // Implausible starts, then (with an end) implausible ends and ends before starts.
        let dated: u64 = counts.iter().take(2).flatten().sum();
        if dated > 0 {
            warnings.push(format!(
                "{t}: {dated} date{} before {EARLIEST_PLAUSIBLE} or after {LATEST_PLAUSIBLE}",
                plural(dated)
            ));
        }
        if let (Some(end), Some(Some(n))) = (ev.end, counts.get(2)) {
            if *n > 0 {
                warnings.push(format!(
                    "{t}: {n} row{} end ({end}) before they start ({start})",
                    plural(*n)
                ));
            }
        }
    }
    Ok(warnings)
}

/// The rows of `person` that repeat the person id of another row (all rows but one per id).
pub async fn repeated_person_ids(ctx: &impl Queries) -> Result<u64, String> {
    let counts = query_counts(ctx, &format!("SELECT {REPEATED_IDS} FROM person")).await?;
    Ok(counts[0].unwrap_or(0))
}

/// Over `person`: the rows that repeat the person id of another row.
const REPEATED_IDS: &str = "count(person_id) - count(DISTINCT person_id)";

fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}
