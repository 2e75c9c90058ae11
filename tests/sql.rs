//! `cohortql sql` writes each study as a SQL script; DataFusion's own SQL planner must read every
//! statement back and, run over the same repository, give the same attrition, cohort and dataset
//! as `cohortql run`.

mod common;

use cohortql::compile::compile_text;
use cohortql::repo::Repository;
use cohortql::run::execute;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::util::pretty::pretty_format_batches;
use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn sql_script(study: &str, dialect: &str) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_cohortql"))
        .args(["sql", study, "--dialect", dialect])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{study}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn text(batches: &[RecordBatch]) -> String {
    pretty_format_batches(batches).unwrap().to_string()
}

/// Runs a script's statements in order; returns the results of the plain queries by name
/// (the comment line above each).
async fn run_script(
    ctx: &datafusion::prelude::SessionContext,
    script: &str,
) -> Vec<(String, Vec<RecordBatch>)> {
    let mut results = Vec::new();
    for statement in script.split(";\n\n") {
        let mut name = String::new();
        let body: Vec<&str> = statement
            .lines()
            .filter(|l| {
                if let Some(n) = l.strip_prefix("-- ") {
                    name = n.to_string();
                    false
                } else {
                    !l.trim().is_empty()
                }
            })
            .collect();
        if body.is_empty() {
            continue;
        }
        // DataFusion's tables live as long as its session: it has no TEMPORARY keyword.
        let sql = body
            .join("\n")
            .replace("CREATE TEMPORARY TABLE", "CREATE TABLE")
            .replace("CREATE TEMP TABLE", "CREATE TABLE");
        let frame = ctx
            .sql(&sql)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}\n{sql}"));
        let batches = frame
            .collect()
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        if !sql.starts_with("CREATE") {
            results.push((name, batches));
        }
    }
    results
}

/// Runs each study both ways on the repository and compares the outputs. Deep SQL recurses
/// deeply in the parser and planner: the work gets the stack the command line gives it.
fn compare_on(repo: &Repository, studies: &[(&'static str, &'static str)]) {
    let repo = repo.clone();
    let studies = studies.to_vec();
    common::with_big_stack(move || compare_on_big_stack(&repo, &studies));
}

fn compare_on_big_stack(repo: &Repository, studies: &[(&str, &str)]) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_stack_size(64 << 20)
        .enable_all()
        .build()
        .unwrap();
    for (path, dialect) in studies {
        let script = sql_script(path, dialect);
        let study = compile_text(std::fs::read_to_string(root().join(path)).unwrap())
            .study
            .unwrap();
        runtime.block_on(async {
            let ctx = repo.session().await.unwrap();
            let run = execute(&study, &ctx, &|_| {}).await.unwrap();
            let fresh = repo.session().await.unwrap();
            let results = run_script(&fresh, &script).await;
            let names: Vec<&str> = results.iter().map(|(n, _)| n.as_str()).collect();
            let arms = !study.arms.is_empty();
            let mut want = vec!["attrition"];
            want.extend(arms.then_some("attrition_by_arm"));
            want.extend(["inclusion_rules", "rule_combinations", "followed"]);
            want.extend(arms.then_some("followed_by_arm"));
            want.extend(["cohort", "dataset"]);
            assert_eq!(names, want, "{path}");
            let result = |name: &str| &results.iter().find(|(n, _)| n == name).unwrap().1;
            assert_eq!(text(result("cohort")), text(&run.cohort), "{path}: cohort");
            assert_eq!(
                text(result("dataset")),
                text(&run.dataset),
                "{path}: dataset"
            );
            // Every count of the inclusion-rule report and of the attrition by arm.
            let rules = text(result("inclusion_rules"));
            for r in &run.inclusion_rules {
                assert!(
                    rules.contains(&format!(" {} ", r.persons)),
                    "{path}: {rules}"
                );
            }
            let combinations = text(result("rule_combinations"));
            for r in &run.rule_combinations {
                assert!(
                    combinations.contains(&format!(" {} ", r.persons)),
                    "{path}: {combinations}"
                );
            }
            if arms {
                let by_arm = text(result("attrition_by_arm"));
                let followed = text(result("followed_by_arm"));
                // An arm with no entries has no row: its counts are 0.
                for r in run.attrition_by_arm.iter().filter(|r| r.persons > 0) {
                    assert!(
                        by_arm.contains(&format!(" {} ", r.persons))
                            || followed.contains(&format!(" {} ", r.persons)),
                        "{path}: {by_arm}{followed}"
                    );
                }
            }
            // The last attrition row, persons with a day of follow-up, is its own query.
            let followed = text(result("followed"));
            let last = run.attrition.last().unwrap();
            assert!(
                followed.contains(&format!(" {} ", last.persons)),
                "{path}: followed {followed} lacks {}",
                last.persons
            );
            let attrition = text(result("attrition"));
            for a in &run.attrition[..run.attrition.len() - 1] {
                assert!(
                    attrition.contains(&format!(" {} ", a.persons)),
                    "{path}: attrition {attrition} lacks {}",
                    a.persons
                );
            }
        });
    }
}

#[test]
fn emitted_sql_plans_again_and_gives_the_same_results_on_eunomia() {
    let repo = Repository::open(&root().join("tests/data/eunomia-gibleed")).unwrap();
    compare_on(
        &repo,
        &[
            ("studies/eunomia/celecoxib_age40_male.study", "postgres"),
            ("studies/eunomia/celecoxib_censored.study", "duckdb"),
            ("studies/eunomia/gi_bleed_new_users.study", "postgres"),
        ],
    );
}

#[test]
fn emitted_sql_plans_again_and_gives_the_same_results_on_synthetic_data() {
    let dir = tempfile::tempdir().unwrap();
    let options = cohortql::synth::SynthOptions {
        persons: 2_000,
        seed: 5,
        format: cohortql::repo::write::OutputFormat::Parquet,
        full_vocabulary: 0,
    };
    cohortql::synth::generate(&options, dir.path(), &|_| {}).unwrap();
    let repo = Repository::open(dir.path()).unwrap();
    compare_on(
        &repo,
        &[
            ("studies/breast_neoadjuvant_pcr.study", "duckdb"),
            ("studies/prostate_mri_pirads.study", "postgres"),
            ("studies/lung_ct_radiomics_os.study", "duckdb"),
            ("studies/nsaid_gi_bleed.study", "postgres"),
        ],
    );
}

/// MySQL, SQLite and BigQuery cannot be run here: their scripts must at least be valid SQL of
/// their dialect (as sqlparser reads it), and compute with dates their way.
#[test]
fn every_dialect_is_written_in_its_own_syntax() {
    // sqlparser recurses once per level of nesting, as the planner does.
    std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(parse_every_dialect)
        .unwrap()
        .join()
        .unwrap();
}

fn parse_every_dialect() {
    use datafusion::sql::sqlparser::dialect::{
        BigQueryDialect, Dialect, DuckDbDialect, MySqlDialect, PostgreSqlDialect, SQLiteDialect,
    };
    use datafusion::sql::sqlparser::parser::Parser;
    let dialects: [(&str, &dyn Dialect, &str); 5] = [
        ("postgres", &PostgreSqlDialect {}, " - "),
        ("duckdb", &DuckDbDialect {}, " - "),
        ("mysql", &MySqlDialect {}, "DATEDIFF("),
        ("sqlite", &SQLiteDialect {}, "julianday("),
        ("bigquery", &BigQueryDialect {}, "DATE_DIFF("),
    ];
    // The breast study has a consent rule: its consenting persons are a stage of their own.
    for (study, consent) in [
        ("studies/breast_neoadjuvant_pcr.study", true),
        ("studies/nsaid_gi_bleed.study", false),
    ] {
        for (name, dialect, day_arithmetic) in dialects {
            let script = sql_script(study, name);
            assert!(script.contains("cohortql_population"), "{name}");
            assert!(script.contains("-- dataset"), "{name}");
            assert!(script.contains(day_arithmetic), "{name}: {day_arithmetic}");
            assert!(
                !script.contains("days_between") && !script.contains("QUALIFY"),
                "{name}"
            );
            let statements = Parser::parse_sql(dialect, &script)
                .unwrap_or_else(|e| panic!("{study} in {name}: {e}"));
            // Five stages (six with the consenting persons): the index records, entries,
            // population, follow-up and cohort; the attrition (with its split by arm and the
            // inclusion-rule report), the persons followed up (in all and per arm), the cohort
            // table and the dataset.
            assert_eq!(
                script.contains("CREATE TEMPORARY TABLE cohortql_consenting")
                    || script.contains("CREATE TEMP TABLE cohortql_consenting"),
                consent,
                "{study} in {name}"
            );
            assert_eq!(statements.len(), 13 + consent as usize, "{study} in {name}");
        }
    }
}
