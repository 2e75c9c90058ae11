//! `cohortql sql` writes each study as a SQL script; DataFusion's own SQL planner must read every
//! statement back and, run over the same repository, give the same attrition, cohort and dataset
//! as `cohortql run`.

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
            .replace("CREATE TEMPORARY TABLE", "CREATE TABLE");
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

#[test]
fn emitted_sql_plans_again_and_gives_the_same_results() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let repo = Repository::open(&root().join("tests/data/eunomia-gibleed")).unwrap();
    let studies = [
        ("studies/eunomia/celecoxib_age40_male.study", "postgres"),
        ("studies/eunomia/celecoxib_censored.study", "duckdb"),
        ("studies/eunomia/gi_bleed_new_users.study", "postgres"),
    ];
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
            assert_eq!(names, ["attrition", "cohort", "dataset"], "{path}");
            assert_eq!(text(&results[1].1), text(&run.cohort), "{path}: cohort");
            assert_eq!(text(&results[2].1), text(&run.dataset), "{path}: dataset");
            let attrition = text(&results[0].1);
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
fn every_dialect_is_written() {
    for dialect in ["postgres", "mysql", "sqlite", "duckdb", "bigquery"] {
        let script = sql_script("studies/breast_neoadjuvant_pcr.study", dialect);
        assert!(script.contains("cohortql_population"), "{dialect}");
        assert!(script.contains("image_occurrence"), "{dialect}");
        assert!(script.contains("-- dataset"), "{dialect}");
    }
}
