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
            full_vocabulary: 0,
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

/// What the vocabulary index is asked in a test, and the tables' answers to compare with.
struct VocabularyQuestions {
    searches: Vec<String>,
    prefixes: Vec<(String, Option<&'static str>)>,
    ids: Vec<i64>,
}

/// Questions from the vocabulary itself: pieces of names and synonyms (inside words, across
/// words, at their start, in other case), codes, ids, and texts no concept has.
fn vocabulary_questions(
    ctx: &datafusion::prelude::SessionContext,
    samples: usize,
    fixed: &[&str],
) -> VocabularyQuestions {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::compute::cast;
    use datafusion::arrow::datatypes::{DataType, Int64Type};
    let rt = runtime();
    // Each concept's name, and its first synonym or else its code.
    let texts: Vec<(i64, String, String)> = rt.block_on(async {
        let sql = "SELECT c.concept_id, c.concept_name, \
                     coalesce(s.concept_synonym_name, c.concept_code) \
                   FROM concept c LEFT JOIN (SELECT concept_id, \
                     min(concept_synonym_name) AS concept_synonym_name \
                     FROM concept_synonym GROUP BY concept_id) s ON s.concept_id = c.concept_id \
                   ORDER BY c.concept_id";
        let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        let mut out = Vec::new();
        for b in batches {
            let ids = cast(b.column(0), &DataType::Int64).unwrap();
            let names = cast(b.column(1), &DataType::Utf8).unwrap();
            let other = cast(b.column(2), &DataType::Utf8).unwrap();
            for k in 0..b.num_rows() {
                out.push((
                    ids.as_primitive::<Int64Type>().value(k),
                    names.as_string::<i32>().value(k).to_string(),
                    other.as_string::<i32>().value(k).to_string(),
                ));
            }
        }
        out
    });
    let mut searches: Vec<String> = fixed.iter().map(|s| s.to_string()).collect();
    let mut prefixes: Vec<(String, Option<&'static str>)> = vec![
        ("ce".into(), None),
        ("ac".into(), Some("Drug")),
        ("Gastro".into(), Some("Condition")),
        ("qq".into(), None),
        ("a".into(), Some("Nowhere")),
    ];
    let mut ids = vec![0, -1, 1118084];
    let step = (texts.len() / samples).max(1);
    for (k, (id, name, other)) in texts.iter().step_by(step).enumerate() {
        let chars: Vec<char> = name.chars().collect();
        let from = (k * 7) % chars.len().max(1);
        let to = (from + 3 + k % 9).min(chars.len());
        searches.push(chars[from..to].iter().collect::<String>().to_uppercase());
        let o: Vec<char> = other.chars().collect();
        let from = (k * 5) % o.len().max(1);
        searches.push(o[from..(from + 4 + k % 5).min(o.len())].iter().collect());
        // A whole synonym (or code): found by the synonym where the name differs.
        searches.push(other.to_lowercase());
        prefixes.push((chars[..chars.len().min(2 + k % 4)].iter().collect(), None));
        ids.push(*id);
    }
    VocabularyQuestions {
        searches,
        prefixes,
        ids,
    }
}

/// The index gives every answer the queries over the tables give, in the same order.
fn index_agrees_with_the_tables(repo_dir: &Path, samples: usize, fixed: &[&str]) {
    use cohortql::repo::browse::{concept_name, concepts_starting, search_concepts};
    use cohortql::repo::vocabulary_index::VocabularyIndex;
    let cache = tempfile::tempdir().unwrap();
    let repo = Repository::open(repo_dir).unwrap();
    let rt = runtime();
    let ctx = rt.block_on(repo.session()).unwrap();
    let dir = cache.path().join("index");
    let index = rt
        .block_on(VocabularyIndex::open_or_build(&ctx, &repo, &dir))
        .unwrap();
    let q = vocabulary_questions(&ctx, samples, fixed);
    for text in &q.searches {
        let want = rt.block_on(search_concepts(&ctx, text, 8)).unwrap();
        assert_eq!(index.search(text, 8).unwrap(), want, "searching {text:?}");
    }
    for (prefix, domain) in &q.prefixes {
        let want = rt
            .block_on(concepts_starting(&ctx, prefix, *domain, 12))
            .unwrap();
        assert_eq!(
            index.starting(prefix, *domain, 12).unwrap(),
            want,
            "completing {prefix:?} {domain:?}"
        );
    }
    for id in &q.ids {
        let want = rt.block_on(concept_name(&ctx, *id)).unwrap();
        assert_eq!(index.name_of(*id).unwrap(), want, "the name of {id}");
    }
    assert!(q.searches.len() >= 2 * samples && q.ids.len() >= samples);
}

#[test]
fn the_vocabulary_index_answers_as_the_tables_do_on_eunomia() {
    // Each search of the tables reads Eunomia's gzipped CSV files again: a few pieces only.
    let fixed = [
        "hemorrhage",
        "GASTRO",
        "k92.2",
        "1118084",
        ", unspecified",
        "(",
    ];
    index_agrees_with_the_tables(&eunomia(), 3, &fixed);
}

#[test]
fn the_vocabulary_index_answers_as_the_tables_do_on_a_grown_vocabulary() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    generate(
        &SynthOptions {
            persons: 200,
            seed: 3,
            format: OutputFormat::Parquet,
            full_vocabulary: 4_000,
        },
        &repo,
        &|_| {},
    )
    .unwrap();
    let r = Repository::open(&repo).unwrap();
    assert_eq!(count(&r, "SELECT count(*) FROM concept"), 4_000);
    assert!(count(&r, "SELECT count(*) FROM concept_synonym") > 2_000);
    index_agrees_with_the_tables(
        &repo,
        40,
        &[
            "a",
            "e",
            "-",
            "%",
            "200 mg",
            "oral tablet",
            "zzqx",
            "1118084",
            " mg ",
            "ing,",
            "F00000017",
            "f0000001",
            "tablet",
            "tablet ",
            " tablet",
            "mg oral",
            "7 mg",
            "oral tablet 20",
        ],
    );
}

#[test]
fn the_vocabulary_index_is_kept_until_the_data_changes_and_a_failed_build_leaves_nothing() {
    use cohortql::repo::vocabulary_index::VocabularyIndex;
    let tmp = tempfile::tempdir().unwrap();
    let repo_dir = common::eunomia_copy(tmp.path());
    let dir = tmp.path().join("cache/index");
    let rt = runtime();
    let open = |dir: &Path| {
        let repo = Repository::open(&repo_dir).unwrap();
        let ctx = rt.block_on(repo.session()).unwrap();
        (
            rt.block_on(VocabularyIndex::open_or_build(&ctx, &repo, dir)),
            VocabularyIndex::open_cached(&repo, dir).unwrap().is_some(),
        )
    };
    let (built, cached) = open(&dir);
    assert_eq!(
        built.unwrap().name_of(1118084).unwrap().as_deref(),
        Some("celecoxib")
    );
    assert!(cached, "kept for the next session");

    // Another concept file: the index is built again, from it.
    write_csv_gz(
        &repo_dir,
        "concept",
        "concept_id,concept_name,domain_id,vocabulary_id,concept_class_id,standard_concept,concept_code,valid_start_date,valid_end_date,invalid_reason\n\
         1118084,Celecoxib renamed,Drug,RxNorm,Ingredient,S,140587,1970-01-01,2099-12-31,\n",
    );
    let repo = Repository::open(&repo_dir).unwrap();
    assert!(
        VocabularyIndex::open_cached(&repo, &dir).unwrap().is_none(),
        "stale"
    );
    let (built, _) = open(&dir);
    let index = built.unwrap();
    assert_eq!(index.len(), 1);
    assert_eq!(index.search("renamed", 5).unwrap()[0].id, 1118084);

    // Data that cannot be read: an error, and neither an index nor a part of one is left.
    write_csv_gz(
        &repo_dir,
        "concept",
        "concept_id,concept_name,domain_id,vocabulary_id,concept_class_id,standard_concept,concept_code,valid_start_date,valid_end_date,invalid_reason\n\
         not-a-number,X,Drug,RxNorm,Ingredient,S,1,1970-01-01,2099-12-31,\n",
    );
    let fresh = tmp.path().join("cache/other");
    let (built, cached) = open(&fresh);
    assert!(built.is_err() && !cached);
    let left: Vec<_> = std::fs::read_dir(tmp.path().join("cache"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["index"], "only the good index is left");
}
