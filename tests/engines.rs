//! The engines agree: the reference evaluator, the DataFusion plans, the PostgreSQL SQL run
//! on a PostgreSQL server and a PostgreSQL repository (the stages run in the database) give the
//! same entries, attrition, follow-up, covariates and endpoints
//! for every study in studies/ on a synthetic repository, and for random studies on random
//! small repositories.

mod common;

use cohortql::reference::rows::load_rows;
use cohortql::repo::write::OutputFormat;
use cohortql::repo::Repository;
use cohortql::synth::{generate, SynthOptions};
use common::postgres::Postgres;
use common::random::{random_data, random_study};
use common::{
    by_database, by_datafusion, by_postgres, by_reference, checked, in_database, on_postgres,
    on_repository, study_files, with_big_stack, Got,
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
