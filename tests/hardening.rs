//! Hostile studies and broken repositories: each attack or fault that once worked is replayed
//! here and shown refused or handled — SQL and shell injection through study text, terminal
//! control sequences, unreadable tables read as empty, `--out` replacing user files, leftovers
//! of killed runs, data errors that named nothing, unbounded cost, and what `run.json`
//! publishes.

mod common;

use chrono::NaiveDate;
use cohortql::printable::is_unsafe;
use cohortql::reference::data::{Concept, Data, Period, Person, Record};
use cohortql::reference::rows::write_rows;
use cohortql::repo::write::OutputFormat;
use cohortql::repo::Repository;
use cohortql::run::{sql_script, Dialect};
use cohortql::study::{CodePattern, ConceptExpr, Domain, Study};
use common::{all_text, eunomia_copy, site_file};
use datafusion::sql::sqlparser::ast::{self, Visit, Visitor};
use datafusion::sql::sqlparser::dialect as sqld;
use datafusion::sql::sqlparser::parser::Parser;
use proptest::test_runner::Config as ProptestConfig;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_cohortql");

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn cohortql(args: &[&str], dir: &Path) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env("COHORTQL_CACHE_DIR", dir.join("cache"))
        .env("COHORTQL_SITE", site_file())
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

fn date(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
}

// ---------------------------------------------------------------------------------------------
// 1. Study text in SQL scripts is data, never code.

/// A study that names one concept by name and one by source code: both become SQL literals.
const LITERAL_STUDY: &str = "study \"T\"
concepts
  named = condition \"placeholder\"
  coded = condition icd10 \"K50\"
population
  index = first condition in named | coded
";

/// The study with hostile text put straight into its model, past the checker that would refuse
/// most of it: what the SQL writer itself must withstand.
fn hostile_study(title: &str, name: &str, code: &str) -> Study {
    let mut study = common::checked("literals", LITERAL_STUDY);
    study.title = title.to_string();
    for set in &mut study.concept_sets {
        set.expr = match &set.expr {
            ConceptExpr::Named(_) => ConceptExpr::Named(name.to_string()),
            ConceptExpr::SourceCodes { vocabulary, .. } => ConceptExpr::SourceCodes {
                vocabulary: vocabulary.clone(),
                codes: vec![CodePattern::Exact(code.to_string())],
            },
            other => panic!("unexpected {other:?}"),
        };
    }
    study
}

fn script(study: &Study, dialect: Dialect) -> String {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime
        .block_on(async {
            let ctx = cohortql::repo::empty_session().unwrap();
            sql_script(study, &ctx, dialect).await
        })
        .unwrap()
}

const DIALECTS: [Dialect; 5] = [
    Dialect::Postgres,
    Dialect::Mysql,
    Dialect::Sqlite,
    Dialect::Duckdb,
    Dialect::Bigquery,
];

fn parse(dialect: Dialect, sql: &str) -> Vec<ast::Statement> {
    let result = match dialect {
        Dialect::Postgres => Parser::parse_sql(&sqld::PostgreSqlDialect {}, sql),
        Dialect::Mysql => Parser::parse_sql(&sqld::MySqlDialect {}, sql),
        Dialect::Sqlite => Parser::parse_sql(&sqld::SQLiteDialect {}, sql),
        Dialect::Duckdb => Parser::parse_sql(&sqld::DuckDbDialect {}, sql),
        Dialect::Bigquery => Parser::parse_sql(&sqld::BigQueryDialect {}, sql),
    };
    result.unwrap_or_else(|e| panic!("{dialect:?} does not parse: {e}\n{sql}"))
}

/// Every string literal of the statements, as the database reads it; MySQL's
/// `CONCAT('a', CONVERT(CHAR(92) USING utf8mb4), 'b')` counts as the one text `a\b`.
fn literals(statements: &[ast::Statement]) -> Vec<String> {
    struct Found(Vec<String>);
    fn text(e: &ast::Expr) -> Option<String> {
        match e {
            ast::Expr::Value(v) => match &v.value {
                ast::Value::SingleQuotedString(s) | ast::Value::EscapedStringLiteral(s) => {
                    Some(s.clone())
                }
                _ => None,
            },
            ast::Expr::Convert { .. } => Some("\\".to_string()),
            ast::Expr::Function(f) if f.name.to_string().eq_ignore_ascii_case("concat") => {
                let ast::FunctionArguments::List(list) = &f.args else {
                    return None;
                };
                list.args
                    .iter()
                    .map(|a| match a {
                        ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(e)) => text(e),
                        _ => None,
                    })
                    .collect()
            }
            _ => None,
        }
    }
    impl Visitor for Found {
        type Break = ();
        fn pre_visit_expr(&mut self, e: &ast::Expr) -> ControlFlow<()> {
            if let Some(t) = text(e) {
                self.0.push(t);
            }
            ControlFlow::Continue(())
        }
    }
    let mut found = Found(Vec::new());
    for s in statements {
        let _ = s.visit(&mut found);
    }
    found.0
}

/// What every dialect's script must show for hostile text: the title on one comment line
/// escaped, exactly the statements of a harmless study, and the name and code as literals
/// that read back as they were.
fn check_scripts(title: &str, name: &str, code: &str) {
    let harmless = hostile_study("T", "placeholder", "K50");
    let hostile = hostile_study(title, name, code);
    for dialect in DIALECTS {
        let sql = script(&hostile, dialect);
        let first = sql.lines().next().unwrap();
        assert_eq!(
            first,
            format!("-- {}", cohortql::printable::escaped(title)),
            "{dialect:?}"
        );
        assert!(
            sql.lines()
                .nth(1)
                .unwrap()
                .starts_with("-- Generated by cohortql"),
            "{dialect:?}: the title comment spans lines:\n{sql}"
        );
        let statements = parse(dialect, &sql);
        assert_eq!(
            statements.len(),
            parse(dialect, &script(&harmless, dialect)).len(),
            "{dialect:?}: hostile text changed the statements:\n{sql}"
        );
        let found = literals(&statements);
        for wanted in [name.to_uppercase(), code.to_ascii_uppercase()] {
            assert!(
                found.contains(&wanted),
                "{dialect:?}: {wanted:?} is not read back from the script; literals: {found:?}"
            );
        }
    }
}

#[test]
fn known_injections_stay_text_in_every_dialect() {
    common::with_big_stack(known_injections);
}

fn known_injections() {
    let cases = [
        ("NSAIDs\r\\! touch pwned", "x", "K50"),
        ("a\rCREATE TABLE injected (x int); --", "y", "K50"),
        ("line\nbreak\u{2028}sep\u{85}nel", "z", "K50"),
        ("*/ DROP TABLE person; /*", "a\\' OR 1=1; --", "K5\\'0"),
        ("t", "Crohn's disease", "K50'); DROP TABLE person; --"),
        ("t", "back\\slash\\", "\\"),
        ("t", "$$ dollar $$", "`tick`"),
        ("t", "\"double\" quotes", "''"),
    ];
    for (title, name, code) in cases {
        check_scripts(title, name, code);
    }
}

#[test]
fn random_hostile_text_stays_text_in_every_dialect() {
    common::with_big_stack(|| {
        let texts = (
            "[a-z'\"\\\\;\\-/*\r\n\u{1b}\u{202e}\u{2028}$ ]{0,16}",
            "[a-z'\"\\\\;\\-/*\r\n\u{1b}$ ]{1,16}",
            "[A-Z0-9'\"\\\\;\\-/*$ ]{1,10}",
        );
        proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(48))
            .run(&texts, |(title, name, code)| {
                check_scripts(&title, &name, &code);
                Ok(())
            })
            .unwrap();
    });
}

/// Persons 1 and 3 have a condition whose concept is named `name`; person 2's concept is coded
/// `code` in ICD10. Person 4's condition is neither.
fn literal_data(name: &str, code: &str) -> Data {
    let persons = (1..=4)
        .map(|id| Person {
            id,
            gender: 8507,
            year_of_birth: 1970,
            month_of_birth: None,
            day_of_birth: None,
        })
        .collect();
    let periods = (1..=4)
        .map(|person| Period {
            id: person,
            person,
            start: date("2000-01-01"),
            end: date("2020-12-31"),
        })
        .collect();
    let records = [(1, 1, 10), (2, 2, 20), (3, 3, 10), (4, 4, 30)]
        .into_iter()
        .map(|(id, person, concept)| {
            Record::new(
                Domain::Condition,
                id,
                person,
                Some(concept),
                date("2010-01-01"),
            )
        })
        .collect();
    let concept = |id, name: &str, vocabulary: &str, code: &str| Concept {
        id,
        name: name.to_string(),
        vocabulary: vocabulary.to_string(),
        code: code.to_string(),
    };
    Data {
        persons,
        periods,
        records,
        concepts: vec![
            concept(10, name, "SNOMED", "S10"),
            concept(20, "source", "ICD10", code),
            concept(30, "other", "SNOMED", "S30"),
        ],
        ancestors: vec![],
        maps_to: vec![(20, 10)],
    }
}

#[test]
fn postgres_runs_hostile_scripts_as_written_and_nothing_else() {
    common::with_big_stack(hostile_scripts_on_postgres);
}

fn hostile_scripts_on_postgres() {
    let server = common::postgres::Postgres::start();
    let name = "Crohn's \\' OR 1=1; DROP TABLE person; -- disease";
    let code = "K50\\'); DROP TABLE concept; --";
    let dir = tempfile::tempdir().unwrap();
    write_rows(&literal_data(name, code), dir.path(), OutputFormat::Parquet).unwrap();
    let schema = server.load(&Repository::open(dir.path()).unwrap());
    let tables = |server: &common::postgres::Postgres| {
        server.psql(&format!(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema NOT IN ('pg_catalog', 'information_schema') AND table_type = 'BASE TABLE';"
        ))
    };
    let before = tables(&server);
    let titles = [
        "NSAIDs\r\\! touch pwned",
        "x\rCREATE TABLE injected (x int); --",
        "y\r\\o pwned-output",
    ];
    for title in titles {
        let work = tempfile::tempdir().unwrap();
        let sql = script(&hostile_study(title, name, code), Dialect::Postgres);
        let printed = server.psql_file(&schema, &sql, work.path());
        assert!(
            std::fs::read_dir(work.path()).unwrap().next().is_none(),
            "the script ran a shell command or wrote a file: {title:?}"
        );
        // The cohort holds persons 1, 2 and 3: the name and the code matched as written.
        let cohort = printed
            .lines()
            .skip_while(|l| !l.starts_with("cohort_definition_id,subject_id"))
            .skip(1)
            .take_while(|l| l.starts_with(|c: char| c.is_ascii_digit()))
            .filter_map(|l| l.split(',').nth(1))
            .collect::<std::collections::BTreeSet<_>>();
        assert!(
            ["1", "2", "3"].iter().all(|p| cohort.contains(p)) && !cohort.contains("4"),
            "{title:?}: {printed}"
        );
    }
    assert_eq!(tables(&server), before, "a table was created or dropped");
}

// ---------------------------------------------------------------------------------------------
// 2. Control characters never reach a terminal.

#[test]
fn control_and_bidi_characters_are_refused_wherever_they_stand() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &str); 8] = [
        (
            "carriage return in the title",
            "study \"NSAIDs\r\\! touch pwned\"\n",
        ),
        (
            "escape sequence in the title",
            "study \"T\u{1b}[8mhidden\u{1b}[0m\"\n",
        ),
        (
            "OSC 52 clipboard write",
            "study \"T\u{1b}]52;c;cm0gLXJmIH4=\u{7}\"\n",
        ),
        (
            "escaped line break in the title",
            "study \"NSAIDs\\nCounts below 5 are suppressed\"\n",
        ),
        (
            "right-to-left override in a label",
            "study \"T\"\nconcepts\n  a = drug 1 \"x\u{202e}y\"\n",
        ),
        (
            "isolate in a comment",
            "study \"T\" -- \u{2066}hidden\u{2069}\n",
        ),
        (
            "C1 control in a label",
            "study \"T\"\nconcepts\n  a = drug 1 \"x\u{85}y\"\n",
        ),
        ("line separator", "study \"T\u{2028}\"\n"),
    ];
    for (what, head) in cases {
        let text = format!("{head}population\n  index = first drug\n");
        let path = dir.path().join("s.study");
        std::fs::write(&path, &text).unwrap();
        for command in ["check", "explain", "run", "sql", "fmt", "hash"] {
            let o = cohortql(&[command, path.to_str().unwrap()], dir.path());
            let shown = all_text(&o);
            assert_eq!(o.status.code(), Some(1), "{what}, {command}: {shown}");
            assert!(shown.contains("E0006"), "{what}, {command}: {shown}");
            assert!(
                !shown.chars().any(|c| c != '\n' && is_unsafe(c)),
                "{what}, {command}: an unsafe character reached the output: {shown:?}"
            );
        }
    }
    // CRLF line ends and tabs are fine.
    let path = dir.path().join("crlf.study");
    std::fs::write(
        &path,
        "study \"T\"\r\npopulation\r\n\tindex = first drug\r\n",
    )
    .unwrap();
    let o = cohortql(&["check", path.to_str().unwrap()], dir.path());
    assert_eq!(o.status.code(), Some(0), "{}", all_text(&o));
}

#[test]
fn explanations_of_any_model_show_no_control_characters() {
    let study = hostile_study(
        "T\u{1b}]0;owned\u{7}\r\nCounts below 5 are suppressed\u{202e}",
        "n\u{1b}[2J",
        "c\r\n",
    );
    let text = cohortql::explain::explain_study(&study);
    assert!(!text.chars().any(|c| c != '\n' && is_unsafe(c)), "{text:?}");
    assert!(
        text.starts_with("Study: T\\u{1b}]0;owned\\u{7}\\r\\nCounts below 5"),
        "{text}"
    );
}

#[test]
fn vocabulary_text_reaches_the_repl_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    write_rows(
        &literal_data("evil\u{1b}]52;c;Y2xpcA==\u{7}\u{1b}[2J name", "K50"),
        &repo,
        OutputFormat::Parquet,
    )
    .unwrap();
    let o = repl_with(
        dir.path(),
        &["--repo", repo.to_str().unwrap()],
        ":concept evil\n",
    );
    let text = all_text(&o);
    assert!(text.contains("evil\\u{1b}]52;c;Y2xpcA==\\u{7}"), "{text}");
    assert!(!text.chars().any(|c| c != '\n' && is_unsafe(c)), "{text:?}");
}

// ---------------------------------------------------------------------------------------------
// 3. A table that is there but cannot be read is an error, never an empty table.

fn celecoxib() -> String {
    root()
        .join("studies/eunomia/celecoxib.study")
        .display()
        .to_string()
}

#[test]
fn unreadable_table_files_are_errors_that_name_them() {
    type Break = fn(&Path);
    let cases: [(&str, Break, &str); 4] = [
        (
            "dangling link",
            |r| {
                std::os::unix::fs::symlink(r.join("nowhere.csv.gz"), r.join("drug_era.csv.gz"))
                    .unwrap()
            },
            "symbolic link that leads to no file",
        ),
        (
            "link loop",
            |r| {
                std::os::unix::fs::symlink(r.join("drug_era.csv.gz"), r.join("drug_era.csv.gz"))
                    .unwrap()
            },
            "symbolic link that leads to no file",
        ),
        (
            "directory",
            |r| std::fs::create_dir(r.join("drug_era.csv.gz")).unwrap(),
            "is a directory",
        ),
        (
            "fifo",
            |r| {
                let status = Command::new("mkfifo")
                    .arg(r.join("drug_era.csv.gz"))
                    .status()
                    .unwrap();
                assert!(status.success());
            },
            "not a regular file",
        ),
    ];
    for (what, break_it, message) in cases {
        let dir = tempfile::tempdir().unwrap();
        let repo = eunomia_copy(dir.path());
        std::fs::remove_file(repo.join("drug_era.csv.gz")).unwrap();
        break_it(&repo);
        let out = dir.path().join("out");
        let o = run_on(dir.path(), &celecoxib(), &repo, &out);
        let text = all_text(&o);
        assert_eq!(o.status.code(), Some(2), "{what}: {text}");
        assert!(
            text.contains("drug_era.csv.gz") && text.contains(message),
            "{what}: {text}"
        );
        assert!(!out.exists(), "{what}: outputs were written");
        let o = cohortql(&["repo", "check", repo.to_str().unwrap()], dir.path());
        assert_ne!(o.status.code(), Some(0), "{what}: {}", all_text(&o));
    }
}

#[test]
fn implausible_data_is_warned_of_once_with_counts() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    let mut data = literal_data("n", "K50");
    data.persons.push(data.persons[0].clone());
    data.records[0].end = Some(date("2009-01-01"));
    data.records[1].start = date("0001-01-01");
    data.records[3].start = date("9999-12-31");
    data.periods[3].end = date("1999-01-01");
    write_rows(&data, &repo, OutputFormat::Parquet).unwrap();
    let study = dir.path().join("s.study");
    std::fs::write(
        &study,
        "study \"T\"\npopulation\n  index = first condition\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    let o = run_on(dir.path(), study.to_str().unwrap(), &repo, &out);
    let text = all_text(&o);
    assert_eq!(o.status.code(), Some(0), "{text}");
    let stderr = String::from_utf8_lossy(&o.stderr);
    for expected in [
        "warning: person: 1 row repeat a person_id of another row",
        "warning: condition_occurrence: 2 dates before 1850-01-01 or after 2099-12-31",
        "warning: condition_occurrence: 1 row end (condition_end_date) before they start (condition_start_date)",
        "warning: observation_period: 1 row end (observation_period_end_date) before they start (observation_period_start_date)",
    ] {
        assert_eq!(stderr.matches(expected).count(), 1, "{expected}: {stderr}");
    }
    let run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("site/run.json")).unwrap()).unwrap();
    assert_eq!(run["data_warnings"].as_array().unwrap().len(), 4, "{run}");
    // The repeated person id still gives one person its first entry once: with ids known to
    // repeat, the entries are not joined with each of its rows after being chosen.
    let cohort = std::fs::read_to_string(out.join("site/cohort.csv")).unwrap();
    let subjects: Vec<&str> = cohort
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap())
        .collect();
    assert_eq!(
        subjects.iter().filter(|s| **s == "1").count(),
        1,
        "{cohort}"
    );
}

// ---------------------------------------------------------------------------------------------
// 4. `--out` replaces only a previous run's outputs; 5. leftovers of killed runs go.

/// `cohortql run STUDY --repo REPO --out OUT` from `dir`.
fn run_on(dir: &Path, study: &str, repo: &Path, out: &Path) -> Output {
    cohortql(
        &[
            "run",
            study,
            "--repo",
            repo.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        dir,
    )
}

/// A run on Eunomia.
fn run_into(dir: &Path, study: &str, out: &Path) -> Output {
    run_on(dir, study, &root().join("tests/data/eunomia-gibleed"), out)
}

#[test]
fn out_never_replaces_what_a_run_did_not_write() {
    let dir = tempfile::tempdir().unwrap();
    // A directory with a stray run.json and the user's own script.
    let out = dir.path().join("analysis");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("run.json"), "{}").unwrap();
    std::fs::write(out.join("analysis.R"), "fit <- coxph(...)").unwrap();
    let o = run_into(dir.path(), &celecoxib(), &out);
    assert_eq!(o.status.code(), Some(2), "{}", all_text(&o));
    assert_eq!(
        std::fs::read_to_string(out.join("analysis.R")).unwrap(),
        "fit <- coxph(...)"
    );
    // A previous run's outputs are replaced; a file added beside them stops the next run.
    let out = dir.path().join("run");
    let o = run_into(dir.path(), &celecoxib(), &out);
    assert_eq!(o.status.code(), Some(0), "{}", all_text(&o));
    let o = run_into(dir.path(), &celecoxib(), &out);
    assert_eq!(o.status.code(), Some(0), "{}", all_text(&o));
    std::fs::write(out.join("release/extra.csv"), "a,b\n").unwrap();
    let o = run_into(dir.path(), &celecoxib(), &out);
    let text = all_text(&o);
    assert_eq!(o.status.code(), Some(2), "{text}");
    assert!(text.contains("`release/extra.csv`"), "{text}");
    std::fs::remove_file(out.join("release/extra.csv")).unwrap();
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    let o = run_into(dir.path(), &celecoxib(), &out);
    let text = all_text(&o);
    assert_eq!(o.status.code(), Some(2), "{text}");
    assert!(text.contains("`notes.txt`"), "{text}");
    assert_eq!(
        std::fs::read_to_string(out.join("notes.txt")).unwrap(),
        "mine"
    );
    // A symbolic link is not followed into a replacement.
    std::fs::remove_file(out.join("notes.txt")).unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&out, &link).unwrap();
    let o = run_into(dir.path(), &celecoxib(), &link);
    let text = all_text(&o);
    assert_eq!(o.status.code(), Some(2), "{text}");
    assert!(text.contains("symbolic link"), "{text}");
    assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
    assert!(out.join("site/run.json").is_file());
}

#[test]
fn a_study_named_with_dots_writes_inside_the_output_directory() {
    let dir = tempfile::tempdir().unwrap();
    let study = dir.path().join("...study");
    std::fs::copy(celecoxib(), &study).unwrap();
    let parent = dir.path().join("outputs");
    let repo = root().join("tests/data/eunomia-gibleed");
    let o = cohortql(
        &[
            "run",
            study.to_str().unwrap(),
            study.to_str().unwrap(),
            "--repo",
            repo.to_str().unwrap(),
            "--out",
            parent.to_str().unwrap(),
        ],
        dir.path(),
    );
    // Two studies of the same name are refused before anything is written.
    assert_eq!(o.status.code(), Some(2), "{}", all_text(&o));
    let o = cohortql(
        &[
            "run",
            study.to_str().unwrap(),
            "--repo",
            repo.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(0), "{}", all_text(&o));
    assert!(dir.path().join("output/study/site/run.json").is_file());
    assert!(dir.path().join("output/study/release/run.json").is_file());
    let mut top: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    // Beside the outputs, only the cache directory these tests name (`COHORTQL_CACHE_DIR`),
    // where the run remembers the data's fingerprint.
    assert_eq!(top, ["...study", "cache", "output"]);
    let cached: Vec<String> = std::fs::read_dir(dir.path().join("cache"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(cached, ["fingerprints"]);
}

#[test]
fn a_second_run_into_the_same_place_is_refused_while_the_first_writes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.path().join(".out.lock"))
        .unwrap();
    lock.try_lock().unwrap();
    let o = run_into(dir.path(), &celecoxib(), &out);
    let text = all_text(&o);
    assert_eq!(o.status.code(), Some(2), "{text}");
    assert!(text.contains("another cohortql run is writing"), "{text}");
    assert!(!out.exists());
    drop(lock);
    let o = run_into(dir.path(), &celecoxib(), &out);
    assert_eq!(o.status.code(), Some(0), "{}", all_text(&o));
}

#[test]
fn leftovers_of_killed_runs_are_removed_by_the_next_run() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    // What a run killed while writing leaves: person-level rows in hidden directories.
    for leftover in [".out.partial-4000001", ".out.previous-4000002"] {
        let path = dir.path().join(leftover);
        std::fs::create_dir(&path).unwrap();
        std::fs::write(
            path.join("cohort.csv"),
            "cohort_definition_id,subject_id\n1,42\n",
        )
        .unwrap();
    }
    let other = dir.path().join(".other.partial-4000003");
    std::fs::create_dir(&other).unwrap();
    let o = run_into(dir.path(), &celecoxib(), &out);
    let text = all_text(&o);
    assert_eq!(o.status.code(), Some(0), "{text}");
    assert_eq!(
        text.matches("left by an interrupted run").count(),
        2,
        "{text}"
    );
    assert!(!dir.path().join(".out.partial-4000001").exists());
    assert!(!dir.path().join(".out.previous-4000002").exists());
    assert!(other.exists(), "another output's directory was touched");
}

// ---------------------------------------------------------------------------------------------
// 6. Data errors found mid-run name the file and the column.

fn gzip(text: &str) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(text.as_bytes()).unwrap();
    e.finish().unwrap()
}

#[test]
fn data_errors_in_a_run_name_the_file_and_column() {
    type Break = fn(&Path);
    let cases: [(&str, Break, &str, Option<&str>); 4] = [
        (
            "an escape sequence for a year",
            |r| {
                std::fs::write(
                    r.join("person.csv.gz"),
                    gzip(
                        "person_id,gender_concept_id,year_of_birth\n1,8507,\u{1b}]52;c;eA==\u{7}\n",
                    ),
                )
                .unwrap()
            },
            "person.csv.gz",
            Some("`year_of_birth`"),
        ),
        (
            "a word for a year",
            |r| {
                std::fs::write(
                    r.join("person.csv.gz"),
                    gzip("person_id,gender_concept_id,year_of_birth\n1,8507,nineteen-fifty\n"),
                )
                .unwrap()
            },
            "person.csv.gz",
            Some("`year_of_birth`"),
        ),
        (
            "a truncated gzip file",
            |r| {
                let bytes = std::fs::read(r.join("drug_era.csv.gz")).unwrap();
                std::fs::write(r.join("drug_era.csv.gz"), &bytes[..bytes.len() / 2]).unwrap();
            },
            "drug_era.csv.gz",
            None,
        ),
        (
            "an out-of-range number",
            |r| {
                std::fs::write(
                    r.join("drug_era.csv.gz"),
                    gzip("drug_era_id,person_id,drug_concept_id,drug_era_start_date,drug_era_end_date\n1,1,99999999999999999999999,2010-01-01,2010-02-01\n"),
                )
                .unwrap();
            },
            "drug_era.csv.gz",
            Some("`drug_concept_id`"),
        ),
    ];
    for (what, break_it, file, column) in cases {
        let dir = tempfile::tempdir().unwrap();
        let repo = eunomia_copy(dir.path());
        break_it(&repo);
        let out = dir.path().join("out");
        let o = run_on(dir.path(), &celecoxib(), &repo, &out);
        let text = all_text(&o);
        assert_eq!(o.status.code(), Some(2), "{what}: {text}");
        assert!(text.contains(file), "{what}: {text}");
        assert!(
            !text.chars().any(|c| c != '\n' && is_unsafe(c)),
            "{what}: {text:?}"
        );
        if let Some(column) = column {
            assert!(text.contains(column), "{what}: {text}");
        }
        assert!(!out.exists(), "{what}");
    }
}

// ---------------------------------------------------------------------------------------------
// 7. Bounded cost.

#[test]
fn a_long_chain_of_concept_sets_is_refused_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::from("study \"P\"\nconcepts\n  s0 = drug 1118084\n");
    for i in 1..20_000 {
        text.push_str(&format!("  s{i} = s{}\n", i - 1));
    }
    text.push_str("population\n  index = first drug in s19999\n");
    let path = dir.path().join("chain.study");
    std::fs::write(&path, text).unwrap();
    for command in ["check", "plan", "sql"] {
        let o = cohortql(&[command, path.to_str().unwrap()], dir.path());
        let shown = all_text(&o);
        assert_eq!(o.status.code(), Some(1), "{command}: {shown}");
        assert!(
            shown.contains("E0004") && shown.contains("at most 64"),
            "{shown}"
        );
    }
    // 64 in a chain are fine.
    let mut text = String::from("study \"P\"\nconcepts\n  s0 = drug 1118084\n");
    for i in 1..64 {
        text.push_str(&format!("  s{i} = s{}\n", i - 1));
    }
    text.push_str("population\n  index = first drug in s63\n");
    std::fs::write(&path, text).unwrap();
    let o = cohortql(&["sql", path.to_str().unwrap()], dir.path());
    assert_eq!(o.status.code(), Some(0), "{}", all_text(&o));
}

#[test]
fn endless_input_is_refused_without_reading_it_all() {
    let dir = tempfile::tempdir().unwrap();
    let o = cohortql(&["check", "/dev/zero"], dir.path());
    let text = all_text(&o);
    assert_eq!(o.status.code(), Some(2), "{text}");
    assert!(text.contains("study files may have at most"), "{text}");
    let eunomia = root().join("tests/data/eunomia-gibleed");
    let o = repl_with(
        dir.path(),
        &["--repo", eunomia.to_str().unwrap()],
        ":load /dev/zero\n:show\n",
    );
    let text = all_text(&o);
    assert!(text.contains("study files may have at most"), "{text}");
}

/// The REPL with `args`, `input` piped in.
fn repl_with(dir: &Path, args: &[&str], input: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .env("COHORTQL_SITE", common::site_file())
        .arg("repl")
        .args(args)
        .current_dir(dir)
        .env("COHORTQL_CACHE_DIR", dir.join("cache"))
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// The number of nodes of every stage's plan, subqueries included.
fn plan_nodes(study_text: &str) -> usize {
    use datafusion::common::tree_node::TreeNodeRecursion;
    let study = common::checked("wide", study_text);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let plans = runtime
        .block_on(async {
            let ctx = cohortql::repo::empty_session().unwrap();
            cohortql::run::stage_plans(&study, &ctx, Default::default()).await
        })
        .unwrap();
    let mut nodes = 0;
    for (_, plan) in &plans {
        plan.apply_with_subqueries(|_| {
            nodes += 1;
            Ok(TreeNodeRecursion::Continue)
        })
        .unwrap();
    }
    nodes
}

fn wide_study(covariates: usize, steps: usize) -> String {
    let mut text = String::from(
        "study \"W\"\nconcepts\n  a = drug 1118084\n  c = condition 192671\npopulation\n  index = first drug in a\n",
    );
    for i in 0..steps {
        text.push_str(&format!("  require condition in c [-{}, 0] days\n", i + 1));
    }
    text.push_str("covariates\n");
    for i in 0..covariates {
        text.push_str(&format!(
            "  c{i} = count condition in c [-{}, -1] days\n",
            i + 1
        ));
    }
    text
}

#[test]
fn plans_grow_linearly_with_covariates_and_steps() {
    common::with_big_stack(plans_grow_linearly);
}

fn plans_grow_linearly() {
    // Each covariate or step adds the same number of plan nodes, however many came before: a
    // plan that re-read earlier criteria would grow faster.
    let per_covariate = |n: usize| plan_nodes(&wide_study(n, 1));
    let per_step = |n: usize| plan_nodes(&wide_study(1, n));
    let (c50, c100, c200) = (per_covariate(50), per_covariate(100), per_covariate(200));
    assert_eq!(c200 - c100, 2 * (c100 - c50), "{c50} {c100} {c200}");
    let (s50, s100, s200) = (per_step(50), per_step(100), per_step(200));
    assert_eq!(s200 - s100, 2 * (s100 - s50), "{s50} {s100} {s200}");
}

#[test]
fn sql_grows_linearly_with_attrition_steps() {
    common::with_big_stack(|| {
        // Each step's attrition row once counted the conjunction of every earlier step.
        let length = |steps: usize| {
            script(
                &common::checked("steps", &wide_study(1, steps)),
                Dialect::Postgres,
            )
            .len()
        };
        let (l50, l100, l200) = (length(50), length(100), length(200));
        let growth = (l200 - l100) as f64 / (l100 - l50) as f64;
        assert!(
            growth < 2.5,
            "{l50} {l100} {l200}: grows by {growth:.2} when doubled"
        );
    });
}

#[test]
fn a_long_list_of_concept_ids_is_one_expression() {
    common::with_big_stack(|| {
        let study = |n: usize| {
            let ids: Vec<String> = (0..n).map(|i| (1_000_000 + i).to_string()).collect();
            format!(
                "study \"U\"\nconcepts\n  a = drug {}\npopulation\n  index = first drug in a\n",
                ids.join(" | ")
            )
        };
        assert_eq!(plan_nodes(&study(1)), plan_nodes(&study(20_000)));
        let sql = script(&common::checked("ids", &study(3)), Dialect::Postgres);
        assert!(sql.contains("IN (1000000, 1000001, 1000002)"), "{sql}");
    });
}

#[test]
fn too_many_statements_and_deep_where_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.study");
    let check = |text: String| {
        std::fs::write(&path, text).unwrap();
        let o = cohortql(&["check", path.to_str().unwrap()], dir.path());
        (o.status.code(), all_text(&o))
    };
    let (code, text) = check(wide_study(0, 1001));
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("E0005") && text.contains("1001 `require` and `exclude` lines"),
        "{text}"
    );
    let (_, text) = check(wide_study(1001, 0));
    assert!(text.contains("1001 covariates"), "{text}");
    let (code, text) = check(wide_study(1000, 1000));
    assert_eq!(code, Some(0), "{text}");

    let nested = |depth: usize| {
        let mut c = String::from("condition in c [-1, 0] days of event");
        for d in 1..depth {
            c = format!("condition in c where ({c}) [-{d}, 0] days of event");
        }
        format!(
            "study \"N\"\nconcepts\n  c = condition 192671\npopulation\n  index = first drug\n  require condition in c where ({c}) [-1, 0] days\n"
        )
    };
    let (code, text) = check(nested(10));
    assert_eq!(code, Some(0), "{text}");
    let (code, text) = check(nested(11));
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("E0004") && text.contains("more than 10 deep"),
        "{text}"
    );
}

// ---------------------------------------------------------------------------------------------
// 8. What run.json publishes; a minimum cell count that withholds nothing.

#[test]
fn run_json_names_the_repository_not_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let o = run_into(dir.path(), &celecoxib(), &out);
    assert_eq!(o.status.code(), Some(0), "{}", all_text(&o));
    let text = std::fs::read_to_string(out.join("site/run.json")).unwrap();
    let run: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(run["repository"], "eunomia-gibleed");
    assert_eq!(run["study"]["file"], "celecoxib.study");
    assert!(!text.contains(root().to_str().unwrap()), "{text}");
    assert!(!text.contains(dir.path().to_str().unwrap()), "{text}");
    let files: Vec<&str> = run["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    let mut present: Vec<String> = std::fs::read_dir(out.join("site"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    present.sort();
    let mut listed: Vec<String> = files.iter().map(|f| f.to_string()).collect();
    listed.sort();
    assert_eq!(present, listed);
}

#[test]
fn a_minimum_cell_count_of_zero_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.study");
    std::fs::write(
        &path,
        "study \"T\"\npopulation\n  index = first drug\noutput\n  min cell count 0\n",
    )
    .unwrap();
    let o = cohortql(&["check", path.to_str().unwrap()], dir.path());
    let text = all_text(&o);
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(
        text.contains("E0303") && text.contains("1 to 1000000"),
        "{text}"
    );
}
