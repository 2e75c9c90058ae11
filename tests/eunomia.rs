//! The four OHDSI test cohorts re-expressed in studies/eunomia/, evaluated by the reference
//! evaluator on Eunomia GiBleed and compared with the same cohorts written by hand as SQL, run
//! from the command line to OHDSI's Circe counts, and run as SQL on PostgreSQL.

mod common;

use cohortql::compile::compile_text;
use cohortql::reference::evaluate_study;
use cohortql::reference::rows::load_rows;
use cohortql::repo::Repository;
use cohortql::study::Domain;
use datafusion::arrow::array::{Array, Int64Array};
use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The first celecoxib drug era in an observation period, per person, with that period.
const FIRST_ERA: &str = "WITH eras AS (
    SELECT e.person_id, e.drug_era_start_date AS start, o.observation_period_end_date AS op_end,
           row_number() OVER (PARTITION BY e.person_id ORDER BY e.drug_era_start_date, e.drug_era_id) AS n
    FROM drug_era e JOIN observation_period o ON e.person_id = o.person_id
     AND e.drug_era_start_date >= o.observation_period_start_date
     AND e.drug_era_start_date <= o.observation_period_end_date
    WHERE e.drug_concept_id = 1118084)
  SELECT count(*) FROM eras JOIN person p ON eras.person_id = p.person_id WHERE n = 1";

#[test]
fn eunomia_cohorts_agree_with_hand_written_sql() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let repo = Repository::open(&root().join("tests/data/eunomia-gibleed")).unwrap();
    let (data, sql_counts) = rt.block_on(async {
        let ctx = repo.session().await.unwrap();
        let data = load_rows(&ctx).await.unwrap();
        let mut counts = Vec::new();
        for extra in [
            "",
            " AND extract(year FROM start) - p.year_of_birth > 40",
            " AND extract(year FROM start) - p.year_of_birth > 40 AND p.gender_concept_id = 8507",
            " AND op_end >= DATE '2000-01-01'",
        ] {
            let batches = ctx
                .sql(&format!("{FIRST_ERA}{extra}"))
                .await
                .unwrap()
                .collect()
                .await
                .unwrap();
            let c = batches[0]
                .column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap();
            assert_eq!(c.len(), 1);
            counts.push(c.value(0) as usize);
        }
        (data, counts)
    });
    assert_eq!(data.persons.len(), 2_694);
    let studies = [
        "celecoxib",
        "celecoxib_age40",
        "celecoxib_age40_male",
        "celecoxib_censored",
    ];
    for (name, expected) in studies.iter().zip(sql_counts) {
        let text =
            std::fs::read_to_string(root().join(format!("studies/eunomia/{name}.study"))).unwrap();
        let study = compile_text(text).study.unwrap();
        let evaluation = evaluate_study(&study, &data);
        let persons = evaluation.attrition.last().unwrap().persons;
        println!(
            "{name}: {persons} persons; attrition {:?}",
            evaluation
                .attrition
                .iter()
                .map(|r| (r.rule.as_str(), r.persons))
                .collect::<Vec<_>>()
        );
        assert_eq!(persons, expected, "{name}");
        assert_eq!(
            evaluation.rows.len(),
            expected,
            "{name}: one entry per person"
        );
        assert!(expected > 100, "{name}: only {expected} persons");
    }
}

fn cohortql(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_cohortql"))
        .env("COHORTQL_SITE", common::site_file())
        .args(args)
        .current_dir(root())
        .output()
        .unwrap()
}

/// Runs a study on Eunomia with the command line; returns its output directory.
fn run_on_eunomia(study: &str, out: &std::path::Path) {
    let output = cohortql(&[
        "run",
        &format!("studies/eunomia/{study}.study"),
        "--repo",
        "tests/data/eunomia-gibleed",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        output.status.success(),
        "{study}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A column of a Parquet output, each value as text (empty for NULL).
fn parquet_column(path: &std::path::Path, column: &str) -> Vec<String> {
    use datafusion::arrow::array::StringArray;
    use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let file = std::fs::File::open(path).unwrap();
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        let a = batch.column_by_name(column).unwrap();
        let text =
            datafusion::arrow::compute::cast(a, &datafusion::arrow::datatypes::DataType::Utf8)
                .unwrap();
        let text = text.as_any().downcast_ref::<StringArray>().unwrap();
        out.extend((0..text.len()).map(|i| {
            if text.is_null(i) {
                String::new()
            } else {
                text.value(i).to_string()
            }
        }));
    }
    out
}

fn csv_column(path: &std::path::Path, column: &str) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let i = header.iter().position(|h| *h == column).unwrap();
    lines
        .map(|l| l.split(',').nth(i).unwrap().to_string())
        .collect()
}

/// The cohort table holds each entry's follow-up: where the study period clips follow-up, the
/// cohort starts on the clipped day, as Circe writes it (842 of the 1,750 Eunomia entries of
/// `celecoxib_censored` start before 2000 and are clipped to 2000-01-01).
#[test]
fn the_cohort_table_holds_each_entrys_follow_up() {
    let dir = tempfile::tempdir().unwrap();
    let output = cohortql(&[
        "run",
        "studies/eunomia/celecoxib_censored.study",
        "--repo",
        "tests/data/eunomia-gibleed",
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let cohort = dir.path().join("site/cohort.csv");
    let dataset = dir.path().join("site/dataset.csv");
    let pairs = |a: Vec<String>, b: Vec<String>| {
        let mut p: Vec<(String, String)> = a.into_iter().zip(b).collect();
        p.sort();
        p
    };
    let rows = |path: &std::path::Path, columns: [&str; 2]| {
        pairs(csv_column(path, columns[0]), csv_column(path, columns[1]))
    };
    let in_cohort = pairs(
        csv_column(&cohort, "subject_id"),
        csv_column(&cohort, "cohort_start_date"),
    );
    let followed = pairs(
        csv_column(&dataset, "person_id"),
        csv_column(&dataset, "follow_up_start"),
    );
    assert_eq!(in_cohort, followed);
    assert_eq!(
        rows(&cohort, ["cohort_start_date", "cohort_end_date"]),
        rows(&dataset, ["follow_up_start", "follow_up_end"])
    );
    let clipped = csv_column(&dataset, "index_date")
        .iter()
        .zip(csv_column(&dataset, "follow_up_start"))
        .filter(|(index, start)| **index != *start)
        .count();
    assert_eq!(clipped, 842);
    assert!(csv_column(&cohort, "cohort_start_date")
        .iter()
        .all(|d| d.as_str() >= "2000-01-01"));
}

/// Persons after each attrition row, from run.json.
fn attrition_persons(out: &std::path::Path) -> Vec<u64> {
    let run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("site/run.json")).unwrap()).unwrap();
    run["attrition"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["persons"].as_u64().unwrap())
        .collect()
}

/// OHDSI's results for its four test cohorts on Eunomia GiBleed, generated from the Circe JSON
/// in tests/data/eunomia-gibleed/cohorts by CohortGenerator (as published in the HadesExtras
/// vignette "Using CohortTableHandler"): entries and subjects per cohort, and how many subjects
/// lie in each combination of cohorts.
const CIRCE_COUNTS: [(&str, usize); 4] = [
    ("celecoxib", 1800),
    ("celecoxib_age40", 569),
    ("celecoxib_age40_male", 266),
    ("celecoxib_censored", 1750),
];
const CIRCE_OVERLAP: [(&str, usize); 6] = [
    ("1", 35),
    ("1-2", 7),
    ("1-2-3", 8),
    ("1-2-3-4", 258),
    ("1-2-4", 296),
    ("1-4", 1196),
];

#[test]
fn running_the_eunomia_studies_reproduces_ohdsi_circe_results() {
    let dir = tempfile::tempdir().unwrap();
    let mut cohorts_of: std::collections::BTreeMap<String, Vec<usize>> = Default::default();
    // One command for the four, as a user would run them.
    let mut args = vec!["run".to_string()];
    args.extend(
        CIRCE_COUNTS
            .iter()
            .map(|(study, _)| format!("studies/eunomia/{study}.study")),
    );
    args.extend([
        "--repo".into(),
        "tests/data/eunomia-gibleed".into(),
        "--out".into(),
        dir.path().to_str().unwrap().into(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = cohortql(&args);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for (k, (study, expected)) in CIRCE_COUNTS.iter().enumerate() {
        let out = dir.path().join(study);
        let subjects = csv_column(&out.join("site/cohort.csv"), "subject_id");
        assert_eq!(subjects.len(), *expected, "{study}: cohort entries");
        let distinct: std::collections::BTreeSet<&String> = subjects.iter().collect();
        assert_eq!(distinct.len(), *expected, "{study}: cohort subjects");
        for s in distinct {
            cohorts_of.entry(s.clone()).or_default().push(k + 1);
        }
        // Row 0: the persons with any celecoxib record (44 of them have none in observation,
        // which Circe drops without a row); then Circe's inclusion-rule attrition: everyone,
        // then each rule in turn.
        let want: &[u64] = match *study {
            "celecoxib_age40" => &[1844, 1800, 569, 569],
            "celecoxib_age40_male" => &[1844, 1800, 569, 266, 266],
            "celecoxib_censored" => &[1844, 1800, 1750],
            _ => &[1844, 1800, 1800],
        };
        assert_eq!(attrition_persons(&out), want, "{study}: attrition");
        let run: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("site/run.json")).unwrap())
                .unwrap();
        assert_eq!(run["persons"], *expected, "{study}: run.json persons");
        assert_eq!(run["rows"]["cohort"], *expected);
        assert_eq!(run["study_hash"].as_str().unwrap().len(), 64);
        assert_eq!(run["data_fingerprint"].as_str().unwrap().len(), 64);
    }
    let mut overlap: std::collections::BTreeMap<String, usize> = Default::default();
    for ids in cohorts_of.values() {
        let key: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
        *overlap.entry(key.join("-")).or_default() += 1;
    }
    let want: std::collections::BTreeMap<String, usize> = CIRCE_OVERLAP
        .iter()
        .map(|(k, n)| (k.to_string(), *n))
        .collect();
    assert_eq!(overlap, want, "subjects per combination of cohorts");
}

#[test]
fn the_gi_bleed_new_user_study_on_eunomia() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("gi");
    run_on_eunomia("gi_bleed_new_users", &out);
    // Every NSAID user (2,694, OHDSI's count), of whom 2,630 start in observation.
    let persons = attrition_persons(&out);
    assert_eq!(persons[0], 2694);
    assert_eq!(persons[1..], [2630; 7]);
    let arms = csv_column(&out.join("site/dataset.csv"), "arm");
    let events = csv_column(&out.join("site/dataset.csv"), "gi_bleed");
    let count = |arm: &str, event: &str| {
        arms.iter()
            .zip(&events)
            .filter(|(a, e)| *a == arm && *e == event)
            .count()
    };
    assert_eq!(
        [count("celecoxib", "1"), count("celecoxib", "0")],
        [355, 1445]
    );
    assert_eq!(
        [count("diclofenac", "1"), count("diclofenac", "0")],
        [124, 706]
    );
    // Pseudonymised: no person ids, no record ids.
    let header = std::fs::read_to_string(out.join("site/dataset.csv")).unwrap();
    let header = header.lines().next().unwrap();
    assert!(header.starts_with("person,index_date,"), "{header}");
    assert!(!header.contains("record"), "{header}");
    // The attrition by arm: each step's arms add up to the attrition table's row, and every
    // kept entry is in the arm its index assigns (1,800 celecoxib, 830 diclofenac, none in no
    // arm); the follow-up row is split too.
    let steps = parquet_column(&out.join("site/attrition.parquet"), "entries");
    let by_step = parquet_column(&out.join("site/attrition_by_arm.parquet"), "step");
    let by_arm = parquet_column(&out.join("site/attrition_by_arm.parquet"), "arm");
    let by_entries = parquet_column(&out.join("site/attrition_by_arm.parquet"), "entries");
    for (step, total) in steps.iter().enumerate().skip(1) {
        let sum: u64 = by_step
            .iter()
            .zip(&by_entries)
            .filter(|(s, _)| s.parse::<usize>().unwrap() == step)
            .map(|(_, e)| e.parse::<u64>().unwrap())
            .sum();
        assert_eq!(sum.to_string(), *total, "step {step}");
    }
    let last: Vec<(&String, &String)> = by_step
        .iter()
        .zip(by_arm.iter().zip(&by_entries))
        .filter(|(s, _)| s.parse::<usize>().unwrap() == steps.len() - 1)
        .map(|(_, a)| a)
        .collect();
    assert_eq!(
        last,
        [
            (&"celecoxib".to_string(), &"1800".to_string()),
            (&"diclofenac".to_string(), &"830".to_string()),
            (&String::new(), &"0".to_string())
        ]
    );
    // Circe's inclusion-rule report: every rule keeps all 2,630 on its own, so the one
    // combination is every rule passed.
    let kinds = parquet_column(&out.join("site/inclusion_rules.parquet"), "kind");
    let rules = parquet_column(&out.join("site/inclusion_rules.parquet"), "rule");
    let persons = parquet_column(&out.join("site/inclusion_rules.parquet"), "persons");
    assert_eq!(kinds.iter().filter(|k| *k == "rule").count(), 4);
    assert!(persons.iter().all(|p| p == "2630"), "{persons:?}");
    assert_eq!(rules.last().unwrap(), "1, 2, 3, 4");
}

#[test]
fn two_runs_give_byte_identical_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    run_on_eunomia("celecoxib_age40_male", &a);
    run_on_eunomia("celecoxib_age40_male", &b);
    for name in [
        "site/cohort.parquet",
        "site/cohort.csv",
        "site/dataset.parquet",
        "site/dataset.csv",
        "site/attrition.parquet",
        "site/attrition.csv",
        "site/study.study",
        "release/attrition.csv",
        "release/attrition_by_arm.csv",
        "release/inclusion_rules.csv",
    ] {
        let (x, y) = (
            std::fs::read(a.join(name)).unwrap(),
            std::fs::read(b.join(name)).unwrap(),
        );
        assert!(!x.is_empty(), "{name} is empty");
        assert!(x == y, "{name} differs between two runs");
    }
    // A second run into the same directory replaces the first one's outputs.
    run_on_eunomia("celecoxib", &a);
    assert_eq!(
        csv_column(&a.join("site/cohort.csv"), "subject_id").len(),
        1800
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 2, "{leftovers:?}");
}

/// The SQL written for PostgreSQL, run on a PostgreSQL server holding Eunomia, gives every
/// Eunomia study the same entries, attrition, follow-up, covariates and endpoints as DataFusion,
/// and so OHDSI's counts.
#[test]
fn the_eunomia_studies_as_sql_on_postgresql() {
    common::with_big_stack(eunomia_on_postgresql);
}

fn eunomia_on_postgresql() {
    let dir = root().join("tests/data/eunomia-gibleed");
    let server = common::postgres::Postgres::start();
    let schema = server.load(&Repository::open(&dir).unwrap());
    let studies = CIRCE_COUNTS
        .iter()
        .map(|(s, n)| (*s, *n))
        .chain([("gi_bleed_new_users", 2630)]);
    for (name, persons) in studies {
        let path = root().join(format!("studies/eunomia/{name}.study"));
        let study = common::checked(name, &std::fs::read_to_string(path).unwrap());
        let postgres = common::on_postgres(&server, &schema, &study);
        let datafusion = common::on_repository(&study, &dir);
        assert_eq!(postgres.entries.len(), persons, "{name}: entries");
        assert_eq!(
            postgres.attrition, datafusion.attrition,
            "{name}: attrition"
        );
        assert_eq!(postgres.entries, datafusion.entries, "{name}: entries");
        assert_eq!(
            postgres.follow_up, datafusion.follow_up,
            "{name}: follow-up"
        );
        assert_eq!(
            postgres.covariates, datafusion.covariates,
            "{name}: covariates"
        );
        assert_eq!(
            postgres.endpoints, datafusion.endpoints,
            "{name}: endpoints"
        );
    }
}

/// `era of drug … gap 30 days` against OMOP's own drug_era table, built by OHDSI's era script
/// on Eunomia: the same 13,860 acetaminophen eras, 13,852 of them with the same start and end.
/// In the other 8, two exposures start on the era's first day and one of them lasts longer;
/// drug_era ends the era on its first day, the latest end is the definition (and cohortql's).
#[test]
fn eras_reproduce_omop_drug_era() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("eras");
    run_on_eunomia("acetaminophen_eras", &out);
    let repo = Repository::open(&root().join("tests/data/eunomia-gibleed")).unwrap();
    let data = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(async { load_rows(&repo.session().await.unwrap()).await.unwrap() });
    let stored: std::collections::BTreeSet<(i64, String, String)> = data
        .records
        .iter()
        .filter(|r| r.domain == Domain::DrugEra && r.concept == Some(1125315))
        .map(|r| (r.person, r.start.to_string(), r.end.unwrap().to_string()))
        .collect();
    let (subjects, starts, ends) = (
        csv_column(&out.join("site/cohort.csv"), "subject_id"),
        csv_column(&out.join("site/cohort.csv"), "cohort_start_date"),
        csv_column(&out.join("site/cohort.csv"), "cohort_end_date"),
    );
    let ours: std::collections::BTreeSet<(i64, String, String)> = subjects
        .iter()
        .zip(starts.iter().zip(&ends))
        .map(|(p, (s, e))| (p.parse().unwrap(), s.clone(), e.clone()))
        .collect();
    // The cohort table is the site's: it holds the repository's person ids.
    assert_eq!(stored.len(), 13_860);
    assert_eq!(ours.len(), 13_860);
    assert_eq!(stored.intersection(&ours).count(), 13_852);
    for (person, start, end) in stored.difference(&ours) {
        assert_eq!(start, end, "drug_era's era of {person} from {start}");
        let mine = ours
            .iter()
            .find(|(p, s, _)| p == person && s == start)
            .expect("the same era starts on that day");
        assert!(mine.2 > *end);
    }
}
