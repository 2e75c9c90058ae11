//! The engines agree: the reference evaluator, the DataFusion plans, the PostgreSQL SQL run
//! on a PostgreSQL server and a PostgreSQL repository (the stages run in the database) give the
//! same entries, attrition, follow-up, covariates and endpoints
//! for every study in studies/ on a synthetic repository, and for random studies on random
//! small repositories.

mod common;

use cohortql::reference::rows::load_rows;
use cohortql::repo::write::OutputFormat;
use cohortql::repo::Repository;
use cohortql::run::Keeping;
use cohortql::synth::{generate, SynthOptions};
use common::postgres::Postgres;
use common::random::{random_data, random_study};
use common::{
    by_database, by_datafusion, by_datafusion_keeping_every_domain, by_postgres, by_reference,
    checked, in_database, keeping, on_postgres, on_repository, study_files, with_big_stack, Got,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

fn numbers_equal(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => (x - y).abs() <= 1e-9 * x.abs().max(1.0),
        _ => a == b,
    }
}

/// Runs `work` on a thread with the stack the command line gives: writing a study as SQL
/// recurses once per level of its plan.
fn assert_agree(what: &str, reference: &Got, datafusion: &Got) {
    assert_eq!(
        reference.attrition, datafusion.attrition,
        "{what}: attrition"
    );
    assert_eq!(reference.entries, datafusion.entries, "{what}: entries");
    assert_eq!(
        reference.by_arm, datafusion.by_arm,
        "{what}: attrition by arm"
    );
    assert_eq!(reference.rules, datafusion.rules, "{what}: inclusion rules");
    assert_eq!(
        reference.combinations, datafusion.combinations,
        "{what}: rule combinations"
    );
    assert_eq!(
        reference.follow_up, datafusion.follow_up,
        "{what}: follow-up"
    );
    assert_eq!(
        reference.endpoints, datafusion.endpoints,
        "{what}: endpoints"
    );
    for (i, (a, b)) in reference
        .covariates
        .iter()
        .zip(&datafusion.covariates)
        .enumerate()
    {
        assert!(
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| numbers_equal(x, y)),
            "{what}: covariates of row {i} ({:?}): reference {a:?}, other engine {b:?}",
            reference.entries[i]
        );
    }
}

#[test]
fn engines_agree_on_every_study_over_a_synthetic_repository() {
    with_big_stack(every_study_over_a_synthetic_repository);
}

fn every_study_over_a_synthetic_repository() {
    let server = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let repo_dir = dir.path().join("repo");
    let options = SynthOptions {
        persons: 1_500,
        seed: 11,
        format: OutputFormat::Parquet,
        full_vocabulary: 0,
    };
    generate(&options, &repo_dir, &|_| {}).unwrap();
    let repo = Repository::open(&repo_dir).unwrap();
    let data = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async { load_rows(&repo.session().await.unwrap()).await.unwrap() });
    let schema = server.load(&repo);
    let files = study_files();
    assert!(files.len() >= 9);
    let mut non_empty = 0;
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let study = checked(&name, &std::fs::read_to_string(&path).unwrap());
        let reference = by_reference(&study, &data);
        let datafusion = on_repository(&study, &repo_dir);
        assert_agree(&name, &reference, &datafusion);
        let kept = keeping(&study, &repo_dir, Keeping::Every);
        assert_agree(&format!("{name}, every domain kept"), &reference, &kept);
        let postgres = on_postgres(&server, &schema, &study);
        assert_agree(&format!("{name} on PostgreSQL"), &reference, &postgres);
        let database = in_database(&server, &schema, &study);
        assert_agree(
            &format!("{name} in a PostgreSQL repository"),
            &reference,
            &database,
        );
        non_empty += usize::from(!reference.entries.is_empty());
    }
    assert!(
        non_empty >= 4,
        "the synthetic repository should populate the example studies"
    );
}

// ---- random repositories and random studies ----

#[test]
fn engines_agree_on_random_studies_over_random_repositories() {
    with_big_stack(random_studies_over_random_repositories);
}

fn random_studies_over_random_repositories() {
    let server = Postgres::start();
    let base = checked(
        "base",
        "study \"random\"\npopulation\n  index = first condition\n",
    );
    let cases: u64 = std::env::var("COHORTQL_AGREEMENT_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    assert!(cases > 0, "COHORTQL_AGREEMENT_CASES=0 would check nothing");
    let (mut indexed, mut populated) = (0, 0);
    for seed in 0..cases {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let data = random_data(&mut rng);
        let study = random_study(&mut rng, &base);
        let reference = by_reference(&study, &data);
        let datafusion = by_datafusion(&study, &data);
        assert_agree(&format!("seed {seed}: {study:#?}"), &reference, &datafusion);
        let kept = by_datafusion_keeping_every_domain(&study, &data);
        assert_agree(
            &format!("seed {seed}, every domain kept: {study:#?}"),
            &reference,
            &kept,
        );
        let postgres = by_postgres(&server, &study, &data);
        assert_agree(
            &format!("seed {seed} on PostgreSQL: {study:#?}"),
            &reference,
            &postgres,
        );
        let database = by_database(&server, &study, &data);
        assert_agree(
            &format!("seed {seed} in a PostgreSQL repository: {study:#?}"),
            &reference,
            &database,
        );
        indexed += usize::from(reference.attrition[0] > 0);
        populated += usize::from(!reference.entries.is_empty());
    }
    // Random steps and exits drop many entries; enough must survive for the test to mean much.
    assert!(
        indexed * 2 >= cases as usize,
        "too few random studies index anyone: {indexed}"
    );
    assert!(
        populated * 6 >= cases as usize,
        "too few random studies keep anyone: {populated}"
    );
}

/// The rows that start a group, found by the `lag` window and its filter as DataFusion runs
/// them and by cohortql's `GroupStartsExec` that replaces them in its sessions, are the same:
/// with NULL keys, one key or two, batches of any size and several sorted partitions merged,
/// and with one key the rows beaten by an earlier row of their key dropped before the sort
/// (`FirstCandidatesExec`), in either order.
#[test]
fn group_starts_keep_the_rows_the_window_and_its_filter_keep() {
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::arrow::record_batch::RecordBatch;
    use datafusion::datasource::MemTable;
    use datafusion::physical_plan::displayable;
    use datafusion::prelude::{SessionConfig, SessionContext};
    use proptest::prelude::*;
    use std::sync::Arc;

    let schema = Arc::new(Schema::new(vec![
        Field::new("k1", DataType::Int64, true),
        Field::new("k2", DataType::Utf8, true),
        Field::new("o", DataType::Int64, false),
        Field::new("v", DataType::Int64, false),
    ]));
    // The shape `Planner::first_rows` builds: the window, the filter, then the columns kept.
    async fn query(
        ctx: &SessionContext,
        keys: &[(&str, bool)],
    ) -> datafusion::dataframe::DataFrame {
        use datafusion::functions_window::expr_fn::lag;
        use datafusion::logical_expr::{col, ExprFunctionExt};
        let mut order: Vec<_> = keys
            .iter()
            .map(|(k, ascending)| col(*k).sort(*ascending, false))
            .collect();
        order.extend([col("o").sort(true, false), col("v").sort(true, false)]);
        let lags = keys
            .iter()
            .map(|(k, _)| {
                lag(col(*k), Some(1), None)
                    .order_by(order.clone())
                    .build()
                    .unwrap()
                    .alias(format!("previous_{k}"))
            })
            .collect();
        let starts = keys
            .iter()
            .map(|(k, _)| {
                let previous = col(format!("previous_{k}"));
                previous.clone().is_null().or(previous.not_eq(col(*k)))
            })
            .reduce(|a, b| a.or(b))
            .unwrap();
        ctx.table("t")
            .await
            .unwrap()
            .window(lags)
            .unwrap()
            .filter(starts)
            .unwrap()
            .select(vec![col("v"), col("o")])
            .unwrap()
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let rows = prop::collection::vec(
        (
            prop::option::weighted(0.8, 0i64..6),
            prop::option::weighted(0.8, 0u8..3),
            0i64..8,
        ),
        0..300,
    );
    let mut runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
        cases: 48,
        ..Default::default()
    });
    runner
        .run(
            &(rows, 1usize..4, 1usize..70),
            |(rows, partitions, batch)| {
                // Row i goes to partition i % partitions, in batches of `batch` rows.
                let mut parts: Vec<Vec<RecordBatch>> = vec![Vec::new(); partitions];
                for (p, part) in parts.iter_mut().enumerate() {
                    let mine: Vec<(usize, &(Option<i64>, Option<u8>, i64))> = rows
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| i % partitions == p)
                        .collect();
                    for chunk in mine.chunks(batch) {
                        let k1: Int64Array = chunk.iter().map(|(_, r)| r.0).collect();
                        let k2: StringArray = chunk
                            .iter()
                            .map(|(_, r)| r.1.map(|x| format!("s{x}")))
                            .collect();
                        let o: Int64Array = chunk.iter().map(|(_, r)| Some(r.2)).collect();
                        let v: Int64Array = chunk.iter().map(|(i, _)| Some(*i as i64)).collect();
                        part.push(
                            RecordBatch::try_new(
                                schema.clone(),
                                vec![Arc::new(k1), Arc::new(k2), Arc::new(o), Arc::new(v)],
                            )
                            .unwrap(),
                        );
                    }
                }
                let table = Arc::new(MemTable::try_new(schema.clone(), parts).unwrap());
                let ours = cohortql::repo::empty_session().unwrap();
                ours.register_table("t", table.clone()).unwrap();
                let plain =
                    SessionContext::new_with_config(SessionConfig::new().with_target_partitions(2));
                plain.register_table("t", table).unwrap();
                // The same in SQL, where a projection comes between the window and the filter.
                let sql = [
                "SELECT v, o FROM (SELECT v, o, k1, lag(k1) OVER (ORDER BY k1, o, v) AS p FROM t) \
                 WHERE p IS NULL OR p <> k1",
                "SELECT v FROM (SELECT v, k1, k2, lag(k1) OVER (ORDER BY k1 DESC, k2, o, v) AS p1, \
                 lag(k2) OVER (ORDER BY k1 DESC, k2, o, v) AS p2 FROM t) \
                 WHERE k1 <> p1 OR p2 IS NULL OR p1 IS NULL OR p2 <> k2",
                "SELECT v, o FROM (SELECT v, o, k1, lag(k1) OVER (ORDER BY k1, o DESC, v) AS p FROM t) \
                 WHERE p IS NULL OR p <> k1",
            ];
                let forms = [
                    (Some(&[("k1", true)][..]), ""),
                    (Some(&[("k1", false), ("k2", true)][..]), ""),
                    (None, sql[0]),
                    (None, sql[1]),
                    (None, sql[2]),
                ];
                for (keys, sql) in forms {
                    let kept = |ctx: &SessionContext| {
                        runtime.block_on(async {
                            let frame = match keys {
                                Some(keys) => query(ctx, keys).await,
                                None => ctx.sql(sql).await.unwrap(),
                            };
                            let plan = frame.clone().create_physical_plan().await.unwrap();
                            let shown = displayable(plan.as_ref()).indent(false).to_string();
                            let mut v: Vec<i64> = Vec::new();
                            for b in frame.collect().await.unwrap() {
                                let col =
                                    b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                                v.extend(col.iter().flatten());
                            }
                            v.sort();
                            (v, shown)
                        })
                    };
                    let (expected, window) = kept(&plain);
                    let (got, replaced) = kept(&ours);
                    prop_assert!(window.contains("BoundedWindowAggExec"), "{window}");
                    prop_assert!(
                        replaced.contains("GroupStartsExec") && !replaced.contains("WindowAggExec"),
                        "the rule did not apply:\n{replaced}"
                    );
                    if rows.len() >= 2 * partitions && partitions > 1 {
                        prop_assert!(replaced.contains("in each partition"), "{replaced}");
                        // One integer key: the rows beaten by an earlier one of their key are
                        // dropped before the sort too.
                        let one_key = keys.map_or(!sql.contains("k2"), |k| k.len() == 1);
                        prop_assert_eq!(
                            replaced.contains("FirstCandidatesExec"),
                            one_key,
                            "{}",
                            replaced
                        );
                    }
                    prop_assert_eq!(got, expected, "keys {:?} {}", keys, sql);
                }
                Ok(())
            },
        )
        .unwrap();
}
