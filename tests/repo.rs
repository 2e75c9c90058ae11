//! The repository layer: loading Eunomia as it is, the synthetic generator's determinism and
//! cleanliness, schema round trips, and every kind of malformed input getting a clear message.

mod common;

use cohortql::repo::quality::check_repository;
use cohortql::repo::write::OutputFormat;
use cohortql::repo::Repository;
use cohortql::synth::{generate, SynthOptions};
use datafusion::arrow::array::{Array, Int64Array};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_cohortql");

fn eunomia() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/eunomia-gibleed")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn count(repo: &Repository, sql: &str) -> i64 {
    runtime().block_on(async {
        let ctx = repo.session().await.unwrap();
        let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        let col = datafusion::arrow::compute::cast(
            batches[0].column(0),
            &datafusion::arrow::datatypes::DataType::Int64,
        )
        .unwrap();
        col.as_any().downcast_ref::<Int64Array>().unwrap().value(0)
    })
}

fn synth(dir: &Path, persons: u64, seed: u64, format: OutputFormat) {
    generate(
        &SynthOptions {
            persons,
            seed,
            format,
        },
        dir,
        &|_| {},
    )
    .unwrap();
}

#[test]
fn eunomia_loads_as_it_is() {
    let repo = Repository::open(&eunomia()).unwrap();
    for (table, rows) in [
        ("person", 2_694),
        ("drug_exposure", 67_707),
        ("condition_occurrence", 65_332),
        ("observation_period", 5_343),
        ("concept", 444),
        ("visit_occurrence", 1_037),
        ("death", 0),
    ] {
        assert_eq!(
            count(&repo, &format!("SELECT count(*) FROM {table}")),
            rows,
            "{table}"
        );
    }
    // Typed columns: dates are dates, ids are integers, empty fields are empty.
    assert_eq!(count(&repo, "SELECT count(*) FROM drug_exposure WHERE drug_exposure_start_date >= DATE '2000-01-01'"), 22_479);
    assert_eq!(
        count(
            &repo,
            "SELECT count(*) FROM person WHERE gender_concept_id = 8507"
        ),
        1_321
    );
    assert_eq!(
        count(&repo, "SELECT count(value_as_number) FROM measurement"),
        0
    );
    // A table Eunomia lacks reads as empty, with its columns.
    assert_eq!(
        count(
            &repo,
            "SELECT count(image_occurrence_date) FROM image_occurrence"
        ),
        0
    );
}

#[test]
fn synthetic_data_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    for format in [OutputFormat::Parquet, OutputFormat::Csv] {
        let a = dir.path().join(format!("a-{}", format.extension()));
        let b = dir.path().join(format!("b-{}", format.extension()));
        let c = dir.path().join(format!("c-{}", format.extension()));
        synth(&a, 300, 42, format);
        synth(&b, 300, 42, format);
        synth(&c, 300, 43, format);
        let mut names: Vec<_> = std::fs::read_dir(&a)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert!(names.len() >= 20, "{names:?}");
        let mut differs = false;
        for name in names {
            let bytes_a = std::fs::read(a.join(&name)).unwrap();
            assert_eq!(
                bytes_a,
                std::fs::read(b.join(&name)).unwrap(),
                "{name:?} differs between two runs"
            );
            differs |= bytes_a != std::fs::read(c.join(&name)).unwrap();
        }
        assert!(differs, "another seed gave the same data");
    }
}

#[test]
fn a_person_does_not_depend_on_how_many_are_generated() {
    let dir = tempfile::tempdir().unwrap();
    synth(&dir.path().join("small"), 50, 9, OutputFormat::Csv);
    synth(&dir.path().join("large"), 120, 9, OutputFormat::Csv);
    let small = std::fs::read_to_string(dir.path().join("small/person.csv")).unwrap();
    let large = std::fs::read_to_string(dir.path().join("large/person.csv")).unwrap();
    assert!(
        large.starts_with(&small),
        "the first 50 persons changed when 120 were generated"
    );
}

#[test]
fn synthetic_data_passes_repo_check_without_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("repo");
    synth(&out, 1_500, 2024, OutputFormat::Parquet);
    let repo = Repository::open(&out).unwrap();
    let report = runtime().block_on(check_repository(&repo));
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let failing: Vec<_> = report.warnings().collect();
    assert!(failing.is_empty(), "{failing:#?}");
    assert!(
        report.checks.len() >= 80,
        "only {} checks ran",
        report.checks.len()
    );
    assert_eq!(report.persons, 1_500);
    assert_eq!(report.cdm_version.as_deref(), Some("v5.4"));
    // Every table the studies read is populated.
    for t in [
        "condition_occurrence",
        "drug_exposure",
        "measurement",
        "observation",
        "death",
        "episode",
        "image_occurrence",
        "image_feature",
        "procedure_occurrence",
        "drug_era",
        "condition_era",
        "specimen",
        "device_exposure",
    ] {
        let rows = report.tables.iter().find(|r| r.table == t).unwrap().rows;
        assert!(rows > 0, "{t} is empty");
    }
}

#[test]
fn synthetic_data_has_the_structure_studies_need() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("repo");
    synth(&out, 3_000, 5, OutputFormat::Parquet);
    let repo = Repository::open(&out).unwrap();
    // Drug exposures are recorded at clinical-drug level: descendants matter.
    let celecoxib_descendants = "SELECT count(*) FROM drug_exposure d JOIN concept_ancestor a ON d.drug_concept_id = a.descendant_concept_id WHERE a.ancestor_concept_id = 1118084";
    assert!(count(&repo, celecoxib_descendants) > 0);
    assert_eq!(
        count(
            &repo,
            "SELECT count(*) FROM drug_exposure WHERE drug_concept_id = 1118084"
        ),
        0
    );
    // ICD-10 source codes map to standard concepts.
    assert!(count(&repo, "SELECT count(*) FROM concept c JOIN concept_relationship r ON c.concept_id = r.concept_id_1 AND r.relationship_id = 'Maps to' WHERE c.vocabulary_id = 'ICD10' AND c.concept_code LIKE 'C50%'") >= 2);
    // Image features point at measurement rows that hold their values.
    assert_eq!(
        count(&repo, "SELECT count(*) FROM image_feature f LEFT ANTI JOIN measurement m ON f.image_feature_event_id = m.measurement_id"),
        0
    );
    assert!(count(&repo, "SELECT count(*) FROM image_feature f JOIN measurement m ON f.image_feature_event_id = m.measurement_id WHERE m.value_as_number IS NOT NULL") > 0);
    // Deaths depend on cancer: the death rate among lung cancer patients is far higher.
    let lung_deaths = count(&repo, "SELECT count(*) FROM death d JOIN episode e ON d.person_id = e.person_id WHERE e.episode_object_concept_id IN (2000000341, 2000000342)");
    let lung = count(&repo, "SELECT count(DISTINCT person_id) FROM episode WHERE episode_object_concept_id IN (2000000341, 2000000342)");
    let deaths = count(&repo, "SELECT count(*) FROM death");
    assert!(lung > 20, "too few lung cancers: {lung}");
    assert!(
        lung_deaths * 3000 > deaths * lung * 2,
        "lung cancer deaths {lung_deaths}/{lung} vs all {deaths}/3000"
    );
    // Radiomic signal: breast patients with pCR have lower MRI entropy on average.
    let with_pcr = count(&repo, "SELECT CAST(avg(m.value_as_number) * 1000 AS BIGINT) FROM measurement m WHERE m.measurement_concept_id = 2000000231 AND m.person_id IN (SELECT person_id FROM observation WHERE observation_concept_id = 2000000701)");
    let without = count(&repo, "SELECT CAST(avg(m.value_as_number) * 1000 AS BIGINT) FROM measurement m JOIN image_feature f ON f.image_feature_event_id = m.measurement_id WHERE m.measurement_concept_id = 2000000231 AND f.anatomic_site_concept_id = 2000000211 AND m.person_id NOT IN (SELECT person_id FROM observation WHERE observation_concept_id = 2000000701)");
    assert!(
        with_pcr < without,
        "entropy with pCR {with_pcr} should be below {without}"
    );
}

#[test]
fn parquet_and_csv_hold_the_same_data() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p");
    let c = dir.path().join("c");
    synth(&p, 400, 11, OutputFormat::Parquet);
    synth(&c, 400, 11, OutputFormat::Csv);
    let (rp, rc) = (Repository::open(&p).unwrap(), Repository::open(&c).unwrap());
    for sql in [
        "SELECT count(*) FROM measurement",
        "SELECT CAST(sum(value_as_number) * 100 AS BIGINT) FROM measurement",
        "SELECT sum(CAST(drug_exposure_end_date - drug_exposure_start_date AS BIGINT)) FROM drug_exposure",
        "SELECT count(DISTINCT condition_start_date) FROM condition_occurrence",
        "SELECT count(*) FROM concept WHERE standard_concept = 'S'",
        "SELECT count(*) FROM person WHERE month_of_birth IS NULL",
    ] {
        assert_eq!(count(&rp, sql), count(&rc, sql), "{sql}");
    }
    // The registered schema is the OMOP one, whatever the file format.
    runtime().block_on(async {
        for repo in [&rp, &rc] {
            let ctx = repo.session().await.unwrap();
            for table in cohortql::repo::schema::TABLES {
                let frame = ctx.table(table.name).await.unwrap();
                let got: Vec<(String, String)> = frame
                    .schema()
                    .fields()
                    .iter()
                    .map(|f| (f.name().clone(), f.data_type().to_string()))
                    .collect();
                let want: Vec<(String, String)> = table
                    .arrow_schema()
                    .fields()
                    .iter()
                    .map(|f| (f.name().clone(), f.data_type().to_string()))
                    .collect();
                assert_eq!(got, want, "{}", table.name);
            }
        }
    });
}

/// Runs `cohortql repo check` on a directory made from Eunomia with one thing broken.
fn broken_repository(break_it: impl FnOnce(&Path)) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    for table in ["person", "observation_period", "drug_exposure", "concept"] {
        std::fs::copy(
            eunomia().join(format!("{table}.csv.gz")),
            dir.path().join(format!("{table}.csv.gz")),
        )
        .unwrap();
    }
    break_it(dir.path());
    let out = Command::new(BIN)
        .env("COHORTQL_SITE", common::site_file())
        .args(["repo", "check", dir.path().to_str().unwrap()])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("panicked"), "{text}");
    (out.status.code().unwrap_or(-1), text)
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn write_csv_gz(dir: &Path, table: &str, text: &str) {
    std::fs::write(dir.join(format!("{table}.csv.gz")), gzip(text.as_bytes())).unwrap();
}

const PERSON_HEADER: &str =
    "person_id,gender_concept_id,year_of_birth,month_of_birth,day_of_birth\n";

#[test]
fn the_intact_copy_checks_clean_of_errors() {
    let (code, text) = broken_repository(|_| {});
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("2694 persons"), "{text}");
}

#[test]
fn a_missing_table_is_named_with_the_files_expected() {
    let (code, text) =
        broken_repository(|d| std::fs::remove_file(d.join("person.csv.gz")).unwrap());
    assert_eq!(code, 2);
    assert!(
        text.contains(
            "has no `person` table: expected person.parquet, person.csv or person.csv.gz"
        ),
        "{text}"
    );
}

#[test]
fn a_missing_column_is_named_with_its_file() {
    let (code, text) = broken_repository(|d| {
        write_csv_gz(d, "person", "person_id,gender_concept_id\n1,8507\n");
    });
    assert_eq!(code, 2);
    assert!(
        text.contains("person.csv.gz lacks the person column `year_of_birth`"),
        "{text}"
    );
}

#[test]
fn a_truncated_gzip_file_is_reported() {
    let (code, text) = broken_repository(|d| {
        let path = d.join("drug_exposure.csv.gz");
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    });
    assert_eq!(code, 2);
    assert!(text.contains("drug_exposure.csv.gz"), "{text}");
    assert!(text.contains("truncated or damaged"), "{text}");
}

#[test]
fn a_file_named_gz_that_is_not_gzip_is_reported() {
    let (code, text) = broken_repository(|d| {
        std::fs::write(d.join("concept.csv.gz"), b"concept_id,concept_name\n1,x\n").unwrap()
    });
    assert_eq!(code, 2);
    assert!(text.contains("concept.csv.gz"), "{text}");
    assert!(text.contains("not gzip-compressed"), "{text}");
}

#[test]
fn ragged_rows_are_reported() {
    let (code, text) = broken_repository(|d| {
        write_csv_gz(
            d,
            "person",
            &format!("{PERSON_HEADER}1,8507,1970,1,1\n2,8532,1980\n"),
        )
    });
    assert_eq!(code, 2);
    assert!(text.contains("person.csv.gz"), "{text}");
    assert!(text.contains("as many fields as the header"), "{text}");
}

#[test]
fn garbage_dates_are_reported_with_their_column() {
    let (code, text) = broken_repository(|d| {
        write_csv_gz(d, "observation_period", "observation_period_id,person_id,observation_period_start_date,observation_period_end_date\n1,6,2001-02-30,2002-01-01\n");
    });
    assert_eq!(code, 2);
    assert!(
        text.contains("observation_period.csv.gz, column `observation_period_start_date`"),
        "{text}"
    );
    assert!(text.contains("2001-02-30"), "{text}");
}

#[test]
fn text_in_an_integer_column_is_reported_with_its_column() {
    let (code, text) = broken_repository(|d| {
        write_csv_gz(
            d,
            "person",
            &format!("{PERSON_HEADER}1,8507,nineteen-seventy,1,1\n"),
        )
    });
    assert_eq!(code, 2);
    assert!(text.contains("column `year_of_birth`"), "{text}");
}

#[test]
fn a_wrong_encoding_is_reported() {
    let (code, text) = broken_repository(|d| {
        let mut bytes = PERSON_HEADER.as_bytes().to_vec();
        bytes.extend_from_slice(b"1,8507,1970,1,1\n2,8532,1980,1,1,caf\xe9\n");
        let mut header_extra = b"person_id,gender_concept_id,year_of_birth,month_of_birth,day_of_birth,person_source_value\n".to_vec();
        header_extra.extend_from_slice(b"1,8507,1970,1,1,ok\n2,8532,1980,1,1,caf\xe9\n");
        std::fs::write(d.join("person.csv.gz"), gzip(&header_extra)).unwrap();
    });
    assert_eq!(code, 2);
    assert!(text.contains("UTF-8"), "{text}");
}

#[test]
fn two_files_for_one_table_are_refused() {
    let (code, text) =
        broken_repository(|d| std::fs::write(d.join("person.csv"), PERSON_HEADER).unwrap());
    assert_eq!(code, 2);
    assert!(text.contains("table `person` has several files"), "{text}");
}

#[test]
fn an_empty_file_and_a_damaged_parquet_file_are_reported() {
    let (code, text) = broken_repository(|d| {
        std::fs::write(d.join("visit_occurrence.csv"), b"").unwrap();
        std::fs::write(d.join("measurement.parquet"), b"PAR1 not really").unwrap();
    });
    assert_eq!(code, 2);
    assert!(
        text.contains("visit_occurrence.csv: the file is empty"),
        "{text}"
    );
    assert!(
        text.contains("measurement.parquet: not a readable Parquet file"),
        "{text}"
    );
}

#[test]
fn not_a_directory_and_missing_directories_exit_2_with_a_message() {
    let out = Command::new(BIN)
        .env("COHORTQL_SITE", common::site_file())
        .args(["repo", "check", "no/such/dir"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stdout).contains("no such file or directory"));
    let file = eunomia().join("person.csv.gz");
    let out = Command::new(BIN)
        .env("COHORTQL_SITE", common::site_file())
        .args(["repo", "check", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stdout).contains("is not a directory"));
}

#[test]
fn repo_check_json_reports_tables_and_checks() {
    let out = Command::new(BIN)
        .env("COHORTQL_SITE", common::site_file())
        .args(["repo", "check", "--json", eunomia().to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["persons"], 2694);
    assert_eq!(report["cdm_version"], "v5.3.1");
    let tables = report["tables"].as_array().unwrap();
    let obs = tables
        .iter()
        .find(|t| t["table"] == "observation_period")
        .unwrap();
    assert_eq!(obs["rows"], 5343);
    // Eunomia's observation_period was not subset with its persons: OHDSI's sample has orphans.
    let checks = report["checks"].as_array().unwrap();
    let orphans = checks
        .iter()
        .find(|c| c["check"] == "orphan_person_id" && c["table"] == "observation_period")
        .unwrap();
    assert_eq!(orphans["failing"], 2649);
}

#[test]
fn synth_and_the_demo_work_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r");
    let run = Command::new(BIN)
        .env("COHORTQL_SITE", common::site_file())
        .args([
            "synth",
            "--persons",
            "200",
            "--seed",
            "3",
            "--format",
            "csv",
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(
        run.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(out.join("person.csv").is_file());
    // Refuses to write over an existing repository.
    let again = Command::new(BIN)
        .env("COHORTQL_SITE", common::site_file())
        .args(["synth", "--persons", "10", "--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    let check = Command::new(BIN)
        .env("COHORTQL_SITE", common::site_file())
        .args(["repo", "check", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&check.stdout).contains("checks pass"),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );

    let cache = dir.path().join("cache");
    let demo = Command::new(BIN)
        .env("COHORTQL_SITE", common::site_file())
        .args(["repo", "demo"])
        .env("COHORTQL_CACHE_DIR", &cache)
        .output()
        .unwrap();
    assert_eq!(
        demo.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&demo.stderr)
    );
    let path = PathBuf::from(String::from_utf8_lossy(&demo.stdout).trim());
    assert!(path.starts_with(&cache) && path.join("person.parquet").is_file());
    let check = Command::new(BIN)
        .env("COHORTQL_SITE", common::site_file())
        .args(["repo", "check"])
        .env("COHORTQL_CACHE_DIR", &cache)
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&check.stdout).contains("5000 persons"));
}
