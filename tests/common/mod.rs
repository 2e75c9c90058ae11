//! What the spec and engine-agreement tests share: running a study on the reference evaluator
//! or on DataFusion, and reading either result in one shape.
#![allow(dead_code)]

pub mod cluster;
pub mod postgres;
pub mod random;
pub mod spec;

use cohortql::compile::compile_text;
use cohortql::reference::data::Data;
use cohortql::reference::rows::write_rows;
use cohortql::reference::{evaluate_study, Cell};
use cohortql::repo::write::OutputFormat;
use cohortql::repo::Repository;
use cohortql::run::{execute_keeping, sql_script, Dialect, Keeping};
use cohortql::study::{EndpointKind, Study};
use datafusion::arrow::array::{Array, RecordBatch, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use serde_json::Value;

/// Per row, per endpoint: (event, days).
pub type Outcomes = Vec<Vec<(u8, Option<i64>)>>;

/// What an engine gives for a study, in the shape the specs state it.
#[derive(Debug, PartialEq)]
pub struct Got {
    /// Per row: person, index date, index record, arm.
    pub entries: Vec<(i64, String, i64, Option<String>)>,
    /// Persons after each attrition row, the follow-up row last.
    pub attrition: Vec<usize>,
    /// The index event's records counted in attrition row 0.
    pub index_records: usize,
    pub follow_up: Vec<(String, String)>,
    pub covariates: Vec<Vec<Value>>,
    pub endpoints: Outcomes,
    /// With arms: persons after each attrition row from `qualifying index event` on, per arm
    /// in the study's order and then in no arm (the follow-up row last).
    pub by_arm: Vec<(String, Option<String>, usize)>,
    /// Circe's inclusion-rule report: persons passing each step on its own.
    pub rules: Vec<usize>,
    /// Persons per combination of steps passed (`1, 3`, `none`).
    pub combinations: Vec<(String, usize)>,
}

/// The rules of the attrition by arm, in order.
fn arm_rules(study: &Study) -> Vec<String> {
    let mut rules = vec!["qualifying index event".to_string()];
    rules.extend(study.steps.iter().map(|s| s.rule.clone()));
    rules.push("assigned to an exposure arm".to_string());
    rules.push("follow-up of at least one day".to_string());
    rules
}

fn arms_and_none(study: &Study) -> Vec<Option<String>> {
    study
        .arms
        .iter()
        .map(|a| Some(a.name.clone()))
        .chain([None])
        .collect()
}

/// The site configuration every command run by the tests uses (`COHORTQL_SITE`), made once,
/// outside the directories the tests look into.
pub fn site_file() -> std::path::PathBuf {
    let path = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cohortql-site.toml");
    cohortql::site::Site::load_or_create(&path).unwrap();
    path
}

/// The study files of studies/ and studies/eunomia/, sorted.
pub fn study_files() -> Vec<std::path::PathBuf> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("studies");
    let mut files = Vec::new();
    for dir in [root.clone(), root.join("eunomia")] {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "study") {
                files.push(p);
            }
        }
    }
    files.sort();
    assert!(files.len() >= 9, "study files are missing");
    files
}

/// The rows of a CSV file as maps from column to value (the outputs quote as CSV does).
pub fn csv_rows(path: &std::path::Path) -> Vec<std::collections::HashMap<String, String>> {
    let mut reader = csv::Reader::from_path(path).unwrap();
    let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    reader
        .records()
        .map(|r| {
            header
                .iter()
                .cloned()
                .zip(r.unwrap().iter().map(String::from))
                .collect()
        })
        .collect()
}

/// Standard output and standard error of a command, as text.
pub fn all_text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A copy of Eunomia's person, observation_period, drug_era and concept tables in `dir/repo`,
/// for breaking.
pub fn eunomia_copy(dir: &std::path::Path) -> std::path::PathBuf {
    let repo = dir.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    for table in ["person", "observation_period", "drug_era", "concept"] {
        std::fs::copy(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(format!("tests/data/eunomia-gibleed/{table}.csv.gz")),
            repo.join(format!("{table}.csv.gz")),
        )
        .unwrap();
    }
    repo
}

/// Runs `work` on a thread with the stack the command line gives its work: planning and
/// writing SQL recurse once per level of a plan.
pub fn with_big_stack(work: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(work)
        .unwrap()
        .join()
        .unwrap();
}

pub fn checked(name: &str, study_text: &str) -> Study {
    let compiled = compile_text(study_text.to_string());
    compiled.study.unwrap_or_else(|| {
        panic!(
            "{name}: the study does not check: {:?}",
            compiled.diagnostics
        )
    })
}

pub fn by_reference(study: &Study, data: &Data) -> Got {
    let evaluation = evaluate_study(study, data);
    Got {
        entries: evaluation
            .rows
            .iter()
            .map(|r| {
                let e = &r.entry;
                (e.person, e.index.to_string(), e.record, e.arm.clone())
            })
            .collect(),
        attrition: evaluation.attrition.iter().map(|r| r.persons).collect(),
        index_records: evaluation.attrition[0].entries,
        follow_up: evaluation
            .rows
            .iter()
            .map(|r| {
                let (s, e) = r.entry.follow_up.unwrap();
                (s.to_string(), e.to_string())
            })
            .collect(),
        covariates: evaluation
            .rows
            .iter()
            .map(|r| r.covariates.iter().map(cell).collect())
            .collect(),
        endpoints: evaluation
            .rows
            .iter()
            .map(|r| r.endpoints.iter().map(|o| (o.event, o.days)).collect())
            .collect(),
        by_arm: evaluation
            .by_arm
            .iter()
            .map(|(r, arm)| (r.rule.clone(), arm.clone(), r.persons))
            .collect(),
        rules: evaluation.rules.iter().map(|r| r.persons).collect(),
        combinations: evaluation
            .combinations
            .iter()
            .map(|r| (r.rule.clone(), r.persons))
            .collect(),
    }
}

/// Every value of a column as JSON: numbers, dates as text, or null.
pub fn values(batches: &[RecordBatch], column: usize) -> Vec<Value> {
    let mut out = Vec::new();
    for b in batches {
        let a = b.column(column);
        let numeric = a.data_type().is_numeric();
        let text = cast(a, &DataType::Utf8).unwrap();
        let text = text.as_any().downcast_ref::<StringArray>().unwrap();
        for i in 0..text.len() {
            out.push(if text.is_null(i) {
                Value::Null
            } else if numeric {
                serde_json::json!(text.value(i).parse::<f64>().unwrap())
            } else {
                Value::from(text.value(i))
            });
        }
    }
    out
}

/// Writes the rows as a repository and runs the study there with DataFusion.
pub fn by_datafusion(study: &Study, data: &Data) -> Got {
    let dir = tempfile::tempdir().unwrap();
    write_rows(data, dir.path(), OutputFormat::Parquet).unwrap();
    on_repository(study, dir.path())
}

/// Runs the study with DataFusion, every domain it reads by concept sets alone read once and
/// kept for every stage (`plan::kept`), whatever a sample of the rows would say.
pub fn by_datafusion_keeping_every_domain(study: &Study, data: &Data) -> Got {
    let dir = tempfile::tempdir().unwrap();
    write_rows(data, dir.path(), OutputFormat::Parquet).unwrap();
    keeping(study, dir.path(), Keeping::Every)
}

/// Runs the study with DataFusion on a repository.
pub fn on_repository(study: &Study, dir: &std::path::Path) -> Got {
    keeping(study, dir, Keeping::Sampled)
}

/// Runs the study with DataFusion on a repository, keeping the domains `keeping` says.
pub fn keeping(study: &Study, dir: &std::path::Path, keeping: Keeping) -> Got {
    let repo = Repository::open(dir).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let run = runtime.block_on(async {
        let ctx = repo.session().await.unwrap();
        execute_keeping(study, &ctx, keeping, &|_| {}).await
    });
    let run = run.unwrap_or_else(|e| panic!("the study does not run: {e}"));
    got_from_execution(study, &run)
}

/// Runs the study inside PostgreSQL through a database repository (`--repo postgresql://…`)
/// on the rows, loaded into a schema of their own.
pub fn by_database(server: &postgres::Postgres, study: &Study, data: &Data) -> Got {
    let dir = tempfile::tempdir().unwrap();
    write_rows(data, dir.path(), OutputFormat::Parquet).unwrap();
    let schema = server.load(&Repository::open(dir.path()).unwrap());
    in_database(server, &schema, study)
}

/// Runs the study inside PostgreSQL on the repository loaded into `schema`.
pub fn in_database(server: &postgres::Postgres, schema: &str, study: &Study) -> Got {
    let db = cohortql::run::database::Database::parse(&server.url(schema)).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let run = runtime
        .block_on(cohortql::run::database::execute_in(&db, study, &|_| {}))
        .unwrap_or_else(|e| panic!("the study does not run in the database: {e}"));
    got_from_execution(study, &run)
}

/// An execution's results in the shape the specs state them.
pub fn got_from_execution(study: &Study, run: &cohortql::run::Execution) -> Got {
    let d = &run.dataset;
    if std::env::var("SPEC_DEBUG").is_ok() {
        eprintln!(
            "{}",
            datafusion::arrow::util::pretty::pretty_format_batches(d).unwrap()
        );
    }
    let attrition = run.attrition.iter().map(|a| a.persons as usize).collect();
    Got {
        index_records: run.attrition[0].entries as usize,
        by_arm: run
            .attrition_by_arm
            .iter()
            .map(|r| (r.rule.clone(), r.arm.clone(), r.persons as usize))
            .collect(),
        rules: run
            .inclusion_rules
            .iter()
            .map(|r| r.persons as usize)
            .collect(),
        combinations: run
            .rule_combinations
            .iter()
            .map(|r| (r.rule.clone(), r.persons as usize))
            .collect(),
        ..got_from(study, &|i| values(d, i), attrition)
    }
}

/// Runs the study as SQL (`cohortql sql --dialect postgres`) on PostgreSQL: the rows are
/// written as a repository, copied into a schema of their own, and the script run there.
pub fn by_postgres(server: &postgres::Postgres, study: &Study, data: &Data) -> Got {
    let dir = tempfile::tempdir().unwrap();
    write_rows(data, dir.path(), OutputFormat::Parquet).unwrap();
    let schema = server.load(&Repository::open(dir.path()).unwrap());
    on_postgres(server, &schema, study)
}

/// Runs the study as SQL on PostgreSQL, on a repository loaded into `schema`
/// (`Postgres::load`).
pub fn on_postgres(server: &postgres::Postgres, schema: &str, study: &Study) -> Got {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let script = runtime
        .block_on(async {
            let ctx = cohortql::repo::empty_session().unwrap();
            sql_script(study, &ctx, Dialect::Postgres).await
        })
        .unwrap();
    let outputs = server.run_script(schema, &script);
    let output = |name: &str| outputs.iter().find(|o| o.name == name);
    let names: Vec<&str> = outputs.iter().map(|o| o.name.as_str()).collect();
    let mut want = vec!["attrition"];
    if !study.arms.is_empty() {
        want.push("attrition_by_arm");
    }
    want.extend(["inclusion_rules", "rule_combinations", "followed"]);
    if !study.arms.is_empty() {
        want.push("followed_by_arm");
    }
    want.extend(["cohort", "dataset"]);
    assert_eq!(names, want);
    let (attrition, dataset) = (output("attrition").unwrap(), output("dataset").unwrap());
    // A cell of a one-row result, or of the row whose `arm` is `arm`.
    let cell = |o: &postgres::Output, arm: Option<&Option<String>>, column: &str| -> usize {
        let at = o.header.iter().position(|h| h == column).unwrap();
        let arm_at = o.header.iter().position(|h| h == "arm");
        o.rows
            .iter()
            .find(|r| arm.is_none_or(|a| r[arm_at.unwrap()] == *a))
            .and_then(|r| r[at].as_deref())
            .map_or(0, |v| v.parse().unwrap())
    };
    let mut by_arm = Vec::new();
    if !study.arms.is_empty() {
        let rules = arm_rules(study);
        let last = rules.len() - 1;
        for (i, rule) in rules.iter().enumerate() {
            for arm in arms_and_none(study) {
                let persons = if i == last {
                    cell(output("followed_by_arm").unwrap(), Some(&arm), "persons")
                } else {
                    let o = output("attrition_by_arm").unwrap();
                    let at = |name: &str| o.header.iter().position(|h| h == name).unwrap();
                    let step = (i + 1).to_string();
                    o.rows
                        .iter()
                        .find(|r| r[at("arm")] == arm && r[at("step")].as_deref() == Some(&step))
                        .map_or(0, |r| r[at("persons")].as_deref().unwrap().parse().unwrap())
                };
                by_arm.push((rule.clone(), arm, persons));
            }
        }
    }
    let rules: Vec<usize> = (0..study.steps.len())
        .map(|i| {
            cell(
                output("inclusion_rules").unwrap(),
                None,
                &format!("rule_persons_{i}"),
            )
        })
        .collect();
    let combinations_output = output("rule_combinations").unwrap();
    let at = |name: &str| {
        combinations_output
            .header
            .iter()
            .position(|h| h == name)
            .unwrap()
    };
    let (pattern_at, persons_at) = (at("combination"), at("persons"));
    let combinations: Vec<(String, usize)> = combinations_output
        .rows
        .iter()
        .map(|r| {
            let pattern = r[pattern_at].clone().unwrap_or_default();
            (
                cohortql::study::steps_passed(&pattern),
                r[persons_at].as_deref().unwrap().parse().unwrap(),
            )
        })
        .collect();
    // One row per attrition row, in order.
    let persons_at = attrition
        .header
        .iter()
        .position(|h| h == "persons")
        .unwrap();
    let mut persons: Vec<usize> = attrition
        .rows
        .iter()
        .map(|r| r[persons_at].as_deref().unwrap().parse().unwrap())
        .collect();
    let distinct: std::collections::BTreeSet<&Option<String>> =
        dataset.rows.iter().map(|r| &r[0]).collect();
    persons.push(distinct.len());
    let column = |i: usize| -> Vec<Value> {
        dataset
            .rows
            .iter()
            .map(|r| postgres::value(&r[i]))
            .collect()
    };
    let entries_at = attrition
        .header
        .iter()
        .position(|h| h == "entries")
        .unwrap();
    let index_records = attrition.rows[0][entries_at]
        .as_deref()
        .unwrap()
        .parse()
        .unwrap();
    Got {
        by_arm,
        rules,
        combinations,
        index_records,
        ..got_from(study, &column, persons)
    }
}

/// What an engine gave, from the dataset's columns (in the order `cohortql run` writes them)
/// and the persons after each attrition row.
fn got_from(study: &Study, column: &dyn Fn(usize) -> Vec<Value>, attrition: Vec<usize>) -> Got {
    let d = column;
    let number = |v: &Value| v.as_f64().unwrap() as i64;
    let text = |v: &Value| v.as_str().unwrap().to_string();
    let (person, index, record) = (d(0), d(1), d(2));
    // A union of event kinds as index adds `index_source` after the record id.
    let mut next = if study.index.query.also.is_empty() {
        3
    } else {
        4
    };
    let (start, end, days) = (d(next), d(next + 1), d(next + 2));
    next += 3;
    // Person-time is the follow-up's days, both ends included, on every engine.
    for ((s, e), n) in start.iter().zip(&end).zip(&days) {
        let day =
            |v: &Value| chrono::NaiveDate::parse_from_str(v.as_str().unwrap(), "%Y-%m-%d").unwrap();
        assert_eq!(
            n.as_f64().unwrap() as i64,
            (day(e) - day(s)).num_days() + 1,
            "follow_up_days of {s} to {e}"
        );
    }
    let arm = if study.arms.is_empty() {
        vec![Value::Null; person.len()]
    } else {
        next += 1;
        d(next - 1)
    };
    let covariates: Vec<Vec<Value>> = (0..study.covariates.len()).map(|i| d(next + i)).collect();
    next += study.covariates.len();
    let mut endpoints: Vec<Vec<(u8, Option<i64>)>> = vec![Vec::new(); person.len()];
    for e in &study.endpoints {
        let event = d(next);
        let days = if e.kind == EndpointKind::TimeToEvent {
            next += 1;
            d(next)
        } else {
            vec![Value::Null; person.len()]
        };
        next += 1;
        for (row, (ev, dy)) in endpoints.iter_mut().zip(event.iter().zip(&days)) {
            row.push((number(ev) as u8, dy.as_f64().map(|x| x as i64)));
        }
    }
    Got {
        entries: (0..person.len())
            .map(|i| {
                (
                    number(&person[i]),
                    text(&index[i]),
                    number(&record[i]),
                    arm[i].as_str().map(String::from),
                )
            })
            .collect(),
        attrition,
        index_records: 0,
        follow_up: (0..person.len())
            .map(|i| (text(&start[i]), text(&end[i])))
            .collect(),
        covariates: (0..person.len())
            .map(|row| covariates.iter().map(|c| c[row].clone()).collect())
            .collect(),
        endpoints,
        by_arm: Vec::new(),
        rules: Vec::new(),
        combinations: Vec::new(),
    }
}

pub fn cell(c: &Cell) -> Value {
    match c {
        Cell::Number(x) => serde_json::json!(x),
        Cell::Date(d) => Value::from(d.to_string()),
        Cell::Empty => Value::Null,
    }
}
