//! `cohortql run`, `plan` and `sql` from the command line: outputs, the default demo
//! repository, and every way a run can fail leaving nothing half-written behind.

mod common;

use common::{all_text, eunomia_copy};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_cohortql");

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn cohortql(args: &[&str], cache: &Path) -> Output {
    Command::new(BIN)
        .env("COHORTQL_SITE", common::site_file())
        .args(args)
        .current_dir(root())
        .env("COHORTQL_CACHE_DIR", cache)
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

#[test]
fn run_on_the_demo_repository_prints_attrition_and_writes_every_output() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let o = cohortql(
        &[
            "run",
            "studies/lung_ct_radiomics_os.study",
            "--out",
            out.to_str().unwrap(),
        ],
        &dir.path().join("cache"),
    );
    let text = all_text(&o);
    assert_eq!(o.status.code(), Some(0), "{text}");
    assert!(text.contains("qualifying index event"), "{text}");
    assert!(text.contains("follow-up of at least one day"), "{text}");
    for f in [
        "site/cohort.parquet",
        "site/cohort.csv",
        "site/dataset.parquet",
        "site/dataset.csv",
        "site/attrition.parquet",
        "site/attrition.csv",
        "site/run.json",
        "site/study.study",
        "release/attrition.csv",
        "release/attrition_by_arm.csv",
        "release/inclusion_rules.csv",
        "release/run.json",
        "release/study.study",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    // Nothing person-level is released, and nothing but text.
    for f in std::fs::read_dir(out.join("release")).unwrap() {
        let name = f.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            !name.starts_with("cohort") && !name.starts_with("dataset"),
            "{name}"
        );
        assert!(!name.ends_with(".parquet"), "{name}");
    }
    let cohort = std::fs::read_to_string(out.join("site/cohort.csv")).unwrap();
    assert!(
        cohort.starts_with("cohort_definition_id,subject_id,cohort_start_date,cohort_end_date\n")
    );
    let run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("site/run.json")).unwrap()).unwrap();
    for key in [
        "study_hash",
        "data_fingerprint",
        "tool_version",
        "persons",
        "attrition",
        "rows",
        "timings",
    ] {
        assert!(!run[key].is_null(), "run.json lacks {key}: {run}");
    }
    let persons = run["persons"].as_u64().unwrap();
    assert!(persons > 20, "{run}");
    assert_eq!(run["rows"]["dataset"].as_u64().unwrap(), persons);
    // The hash is the one `cohortql hash` gives for the study.
    let hash = cohortql(
        &["hash", "studies/lung_ct_radiomics_os.study"],
        &dir.path().join("cache"),
    );
    assert!(String::from_utf8_lossy(&hash.stdout).starts_with(run["study_hash"].as_str().unwrap()));
    // The study text is kept as it was run.
    assert_eq!(
        std::fs::read(out.join("site/study.study")).unwrap(),
        std::fs::read(root().join("studies/lung_ct_radiomics_os.study")).unwrap()
    );
    // Endpoints and covariates are columns of the dataset.
    let dataset = std::fs::read_to_string(out.join("site/dataset.csv")).unwrap();
    let header = dataset.lines().next().unwrap();
    assert!(
        header.starts_with("person,index_date,follow_up_start,follow_up_end"),
        "{header}"
    );
    assert!(header.contains(",os,os_days,"), "{header}");
}

#[test]
fn small_counts_are_suppressed_in_aggregate_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let study = dir.path().join("tiny.study");
    std::fs::write(
        &study,
        "study \"tiny\"\nconcepts\n  celecoxib = drug 1118084 \"celecoxib\"\npopulation\n  index = first drug era in celecoxib\n  require year of index = 1959\noutput\n  min cell count 10\n  person ids original\nconsent\n  not required\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    let o = cohortql(
        &[
            "run",
            study.to_str().unwrap(),
            "--repo",
            "tests/data/eunomia-gibleed",
            "--out",
            out.to_str().unwrap(),
        ],
        &dir.path().join("cache"),
    );
    let text = all_text(&o);
    assert_eq!(o.status.code(), Some(0), "{text}");
    let attrition = std::fs::read_to_string(out.join("release/attrition.csv")).unwrap();
    let rows: Vec<&str> = attrition.lines().collect();
    assert_eq!(rows[0], "step,rule,persons,entries,suppressed");
    assert_eq!(rows[1], "0,records of the index event,1844,1844,false");
    assert_eq!(rows[2], "1,qualifying index event,1800,1800,false");
    // Fewer than 10 persons started celecoxib in 1959: the count is withheld everywhere.
    assert!(rows[3].ends_with(",,,true"), "{attrition}");
    let run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("release/run.json")).unwrap())
            .unwrap();
    assert!(run["persons"].is_null(), "{run}");
    assert_eq!(run["disclosure"]["threshold"], 10);
    // The rows of the cohort and the dataset are entries: as small; they stay at the site
    // (they were once published beside `<10 persons`).
    assert!(run.get("rows").is_none(), "{run}");
    let site: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("site/run.json")).unwrap()).unwrap();
    let exact = site["persons"].as_u64().unwrap();
    assert!(exact > 0 && exact < 10, "{site}");
    assert!(text.contains("— persons"), "{text}");
    assert!(
        !text.contains("cohort entries") && !text.contains("dataset rows"),
        "{text}"
    );
    for line in text.lines().filter(|l| l.contains("1959")) {
        assert!(line.contains('—'), "{line}");
    }
    // Row-level outputs stay within the site and are complete.
    let cohort = std::fs::read_to_string(out.join("site/cohort.csv")).unwrap();
    let n = cohort.lines().count() - 1;
    assert!(n > 0 && n < 10, "{cohort}");
}

#[test]
fn a_study_with_errors_runs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let study = dir.path().join("bad.study");
    std::fs::write(
        &study,
        "study \"x\"\npopulation\n  index = first drug in nothing\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    let o = cohortql(
        &[
            "run",
            study.to_str().unwrap(),
            "--repo",
            "tests/data/eunomia-gibleed",
            "--out",
            out.to_str().unwrap(),
        ],
        &dir.path().join("cache"),
    );
    assert_eq!(o.status.code(), Some(1), "{}", all_text(&o));
    assert!(all_text(&o).contains("E0"), "{}", all_text(&o));
    assert!(!out.exists());
}

#[test]
fn a_broken_repository_is_reported_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let repo = eunomia_copy(dir.path());
    std::fs::remove_file(repo.join("person.csv.gz")).unwrap();
    let out = dir.path().join("out");
    let study = "studies/eunomia/celecoxib.study";
    let o = cohortql(
        &[
            "run",
            study,
            "--repo",
            repo.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        &dir.path().join("cache"),
    );
    assert_eq!(o.status.code(), Some(2), "{}", all_text(&o));
    assert!(
        all_text(&o).contains("no `person` table"),
        "{}",
        all_text(&o)
    );
    assert!(!out.exists());

    // Bad values are found while the study runs: the error names the file and the column.
    let repo = eunomia_copy(&dir.path().join("second"));
    let text = "drug_era_id,person_id,drug_concept_id,drug_era_start_date,drug_era_end_date\n1,6,1118084,2001-02-30,2002-01-01\n";
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, text.as_bytes()).unwrap();
    std::fs::write(repo.join("drug_era.csv.gz"), gz.finish().unwrap()).unwrap();
    let o = cohortql(
        &[
            "run",
            study,
            "--repo",
            repo.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        &dir.path().join("cache"),
    );
    let text = all_text(&o);
    assert_eq!(o.status.code(), Some(2), "{text}");
    assert!(text.contains("2001-02-30"), "{text}");
    assert!(!text.contains("panicked"), "{text}");
    assert!(!out.exists());
    let siblings: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        siblings
            .iter()
            .all(|n| !n.to_string_lossy().starts_with('.')),
        "{siblings:?}"
    );
}

#[test]
fn outputs_never_overwrite_a_directory_that_is_not_a_run() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("precious");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("notes.txt"), "keep me").unwrap();
    let o = cohortql(
        &[
            "run",
            "studies/eunomia/celecoxib.study",
            "--repo",
            "tests/data/eunomia-gibleed",
            "--out",
            out.to_str().unwrap(),
        ],
        &dir.path().join("cache"),
    );
    assert_eq!(o.status.code(), Some(2), "{}", all_text(&o));
    assert!(all_text(&o).contains("does not hold a previous run"));
    assert_eq!(
        std::fs::read_to_string(out.join("notes.txt")).unwrap(),
        "keep me"
    );
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 1);
}

#[test]
fn plan_prints_every_stage_and_sql_every_dialect() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let o = cohortql(&["plan", "studies/prostate_mri_pirads.study"], &cache);
    let text = all_text(&o);
    assert_eq!(o.status.code(), Some(0), "{text}");
    for stage in [
        "cohortql_entries",
        "cohortql_population",
        "attrition",
        "cohortql_follow_up",
        "cohortql_cohort",
        "cohort",
        "dataset",
    ] {
        assert!(text.contains(&format!("== {stage} ==")), "{stage}");
    }
    assert!(text.contains("-- physical plan"));
    assert!(text.contains("TableScan: procedure_occurrence"), "{text}");
    let o = cohortql(
        &[
            "sql",
            "studies/prostate_mri_pirads.study",
            "--dialect",
            "oracle",
        ],
        &cache,
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(all_text(&o).contains("postgres"));
}

/// Two `all` entries of one person on one day have the same follow-up: one row of the cohort
/// table (OMOP's has no duplicate rows), two of the dataset.
#[test]
fn the_cohort_table_has_no_duplicate_rows() {
    use cohortql::reference::data::{Data, Period, Person, Record};
    use cohortql::study::Domain;
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir(&repo).unwrap();
    let day = |s: &str| chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
    let data = Data {
        persons: vec![Person {
            id: 1,
            gender: 8507,
            year_of_birth: 1970,
            month_of_birth: None,
            day_of_birth: None,
        }],
        periods: vec![Period {
            id: 1,
            person: 1,
            start: day("2000-01-01"),
            end: day("2020-12-31"),
        }],
        records: [(1, "2010-01-01"), (2, "2010-01-01"), (3, "2011-01-01")]
            .into_iter()
            .map(|(id, start)| Record::new(Domain::Condition, id, 1, Some(10), day(start)))
            .collect(),
        ..Data::default()
    };
    cohortql::reference::rows::write_rows(
        &data,
        &repo,
        cohortql::repo::write::OutputFormat::Parquet,
    )
    .unwrap();
    let study = dir.path().join("all.study");
    std::fs::write(
        &study,
        "study \"All\"\npopulation\n  index = all condition\nfollow-up\n  until index + 30 days\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    let o = cohortql(
        &[
            "run",
            study.to_str().unwrap(),
            "--repo",
            repo.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        &dir.path().join("cache"),
    );
    assert_eq!(o.status.code(), Some(0), "{}", all_text(&o));
    let lines = |f: &str| {
        std::fs::read_to_string(out.join(f))
            .unwrap()
            .lines()
            .count()
            - 1
    };
    assert_eq!(lines("site/cohort.csv"), 2);
    assert_eq!(lines("site/dataset.csv"), 3);
}

/// OHDSI's simple Eunomia cohorts (`createCohorts`) do not look at observation: every celecoxib
/// drug era is a cohort row (1,844), ending with the era. The study's `cohort id` is the cohort
/// table's `cohort_definition_id`; `--cohort-id` replaces it for one run and the study hash
/// stays the file's.
#[test]
fn cohorts_outside_observation_with_their_record_end_and_cohort_id() {
    let dir = tempfile::tempdir().unwrap();
    let study = dir.path().join("eras.study");
    std::fs::write(
        &study,
        "study \"eras\"\nconcepts\n  celecoxib = drug 1118084\npopulation\n  index = all drug era in celecoxib with or without observation\nfollow-up\n  until end of index record\noutput\n  cohort id 4\n",
    )
    .unwrap();
    let run = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "run",
            study.to_str().unwrap(),
            "--repo",
            "tests/data/eunomia-gibleed",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend(extra);
        let o = cohortql(&args, &dir.path().join("cache"));
        assert_eq!(o.status.code(), Some(0), "{}", all_text(&o));
        let cohort = std::fs::read_to_string(out.join("site/cohort.csv")).unwrap();
        let run: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("site/run.json")).unwrap())
                .unwrap();
        (cohort, run)
    };
    let (cohort, json) = run(&dir.path().join("a"), &[]);
    let rows: Vec<&str> = cohort.lines().skip(1).collect();
    assert_eq!(rows.len(), 1844);
    assert!(rows.iter().all(|r| r.starts_with("4,")), "{}", rows[0]);
    assert_eq!(json["cohort_definition_id"], 4);
    assert_eq!(json["cohort_id_from"], "study");
    // Each row ends with its era: the eras as stored.
    let repo =
        cohortql::repo::Repository::open(&root().join("tests/data/eunomia-gibleed")).unwrap();
    let data = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(async {
            let ctx = repo.session().await.unwrap();
            cohortql::reference::rows::load_rows(&ctx).await.unwrap()
        });
    let mut want: Vec<String> = data
        .records
        .iter()
        .filter(|r| r.domain == cohortql::study::Domain::DrugEra && r.concept == Some(1118084))
        .map(|r| format!("4,{},{},{}", r.person, r.start, r.end.unwrap()))
        .collect();
    let mut got: Vec<String> = rows.iter().map(|r| r.to_string()).collect();
    want.sort();
    got.sort();
    assert_eq!(got, want);
    // Attrition row 0 counts every era; all of them are cohort rows here.
    assert_eq!(json["attrition"][0]["rule"], "records of the index event");
    assert_eq!(json["attrition"][0]["entries"], 1844);

    let (cohort, json2) = run(&dir.path().join("b"), &["--cohort-id", "77"]);
    assert!(cohort.lines().skip(1).all(|r| r.starts_with("77,")));
    assert_eq!(json2["cohort_definition_id"], 77);
    assert_eq!(json2["cohort_id_from"], "--cohort-id");
    assert_eq!(json2["study_hash"], json["study_hash"]);

    let refused = cohortql(
        &["run", study.to_str().unwrap(), "--cohort-id", "0"],
        &dir.path().join("cache"),
    );
    assert_eq!(refused.status.code(), Some(2), "{}", all_text(&refused));
    let two = cohortql(
        &[
            "run",
            study.to_str().unwrap(),
            "studies/nsaid_gi_bleed.study",
            "--cohort-id",
            "5",
            "--out",
            dir.path().join("c").to_str().unwrap(),
        ],
        &dir.path().join("cache"),
    );
    assert_eq!(two.status.code(), Some(2), "{}", all_text(&two));
    assert!(all_text(&two).contains("one at a time"));
    assert!(!dir.path().join("c").exists());
}

/// `run` looks the concept sets up in the vocabulary once, before the stages, and finds the
/// consenting persons once, as a stage: after those two, no stage reads the vocabulary, and
/// observations are read only by the study's own criterion on them. `plan` runs nothing, so its
/// plans keep the lookups.
#[test]
fn the_vocabulary_and_the_consenting_persons_are_read_once_per_run() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let repo = small_synthetic(dir.path(), &cache);
    let study = "studies/breast_neoadjuvant_pcr.study";
    let o = cohortql(
        &["plan", study, "--repo", repo.to_str().unwrap(), "--analyze"],
        &cache,
    );
    let text = all_text(&o);
    assert!(o.status.success(), "{text}");
    let sections = sections(&text);
    let names: Vec<&str> = sections.iter().map(|(n, _)| *n).collect();
    // Names and codes in one reading of `concept`, then the ICD-10 codes' mappings and the
    // descendants of the cancer and the drugs: one reading of each relation.
    let lookups_run = names.iter().take_while(|n| **n == "concept_sets").count();
    assert_eq!(lookups_run, 2, "{text}");
    // (Between them, the domains read by several stages that `run` keeps: `plan::kept`.)
    let names: Vec<&str> = names
        .into_iter()
        .filter(|n| *n != "kept_sample" && !n.starts_with("cohortql_kept_"))
        .collect();
    assert_eq!(
        &names[2..5],
        [
            "cohortql_consenting",
            "cohortql_index_records",
            "cohortql_entries"
        ],
        "{text}"
    );
    // (A modality is the code of an image's concept: that join with `concept` stays.)
    let lookups = |body: &str| {
        body.lines()
            .filter(|l| l.contains("/concept.parquet") && l.contains("upper("))
            .count()
    };
    assert_eq!(lookups(sections[0].1), 1, "{text}");
    assert_eq!(
        parquet_reads(sections[1].1, "concept_relationship"),
        1,
        "{text}"
    );
    assert_eq!(
        parquet_reads(sections[1].1, "concept_ancestor"),
        1,
        "{text}"
    );
    let sections = &sections[lookups_run..];
    for (name, body) in sections {
        assert_eq!(lookups(body), 0, "{name} looks up a set: {body}");
        for table in ["concept_ancestor", "concept_relationship"] {
            assert_eq!(
                parquet_reads(body, table),
                0,
                "{name} reads {table}: {body}"
            );
        }
    }
    // The consent records (found beside the domains kept, and started first), then the
    // `pcr_at_surgery` endpoint's: nothing else reads them but the sample that finds them too
    // many of the observations to keep for both (`plan::kept`; 65,536 rows at most).
    let observations: Vec<&str> = sections
        .iter()
        .filter(|(_, body)| parquet_reads(body, "observation") > 0)
        .map(|(name, _)| *name)
        .collect();
    assert_eq!(
        observations,
        ["cohortql_consenting", "kept_sample", "dataset"],
        "{text}"
    );
    assert!(sections
        .iter()
        .all(|(_, body)| parquet_reads(body, "observation") <= 1));
    // Without running, the stages look the sets up themselves.
    let o = cohortql(&["plan", study, "--repo", repo.to_str().unwrap()], &cache);
    let text = all_text(&o);
    assert!(o.status.success(), "{text}");
    assert!(!text.contains("== concept_sets =="), "{text}");
    assert!(text.contains("== cohortql_consenting =="), "{text}");
    assert!(text.contains("concept_ancestor"), "{text}");
}

/// A study that collapses entries numbers each follow-up entry's group once, as a stage of its
/// own: the merge reads the groups twice (first entries, latest ends), and as a subquery the
/// groups' windows were computed twice. A study whose index is a first event (one entry per
/// person, each its own group) has nothing to collapse and no such stage.
#[test]
fn collapsing_entries_numbers_the_groups_once() {
    let dir = tempfile::tempdir().unwrap();
    let o = cohortql(
        &[
            "plan",
            "tests/constructs/entry.study",
            "--repo",
            "tests/data/eunomia-gibleed",
        ],
        dir.path(),
    );
    let text = all_text(&o);
    assert!(o.status.success(), "{text}");
    let sections = sections(&text);
    let section = |name: &str| {
        sections
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, body)| *body)
            .unwrap_or_else(|| panic!("no stage {name}: {text}"))
    };
    assert!(section("cohortql_groups").contains("cohortql_follow_up"));
    let cohort = section("cohortql_cohort");
    assert!(!cohort.contains("cohortql_follow_up"), "{cohort}");
    assert!(cohort.contains("cohortql_groups"), "{cohort}");
    // Without collapsing, or with one entry per person, there is no such stage.
    for study in [
        "studies/nsaid_gi_bleed.study",
        "studies/eunomia/celecoxib.study",
    ] {
        let o = cohortql(
            &["plan", study, "--repo", "tests/data/eunomia-gibleed"],
            dir.path(),
        );
        assert!(o.status.success(), "{}", all_text(&o));
        assert!(!all_text(&o).contains("cohortql_groups"), "{study}");
    }
}

/// The sections of `plan` output (each from a line `== name ==`), as (name, text below it).
/// A synthetic repository of 300 persons (seed 1), made in `dir/repo`.
fn small_synthetic(dir: &Path, cache: &Path) -> PathBuf {
    let repo = dir.join("repo");
    let o = cohortql(
        &[
            "synth",
            "--persons",
            "300",
            "--seed",
            "1",
            "--out",
            repo.to_str().unwrap(),
        ],
        cache,
    );
    assert!(o.status.success(), "{}", all_text(&o));
    repo
}

/// Runs `work` with a session over `small_synthetic`'s repository, as `run` opens it.
fn in_small_synthetic_session<F: std::future::Future<Output = ()>>(
    work: impl FnOnce(datafusion::prelude::SessionContext) -> F,
) {
    let dir = tempfile::tempdir().unwrap();
    let repo = small_synthetic(dir.path(), &dir.path().join("cache"));
    let repo = cohortql::repo::Repository::open(&repo).unwrap();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async { work(repo.session().await.unwrap()).await });
}

/// How many times a plan's text (`plan --analyze`) reads a table's Parquet file.
fn parquet_reads(plan: &str, table: &str) -> usize {
    plan.lines()
        .filter(|l| l.contains("DataSourceExec") && l.contains(&format!("/{table}.parquet")))
        .count()
}

fn sections(text: &str) -> Vec<(&str, &str)> {
    let mut parts = text.split("\n== ");
    let first = parts.next().unwrap_or_default().strip_prefix("== ");
    first
        .into_iter()
        .chain(parts)
        .map(|s| s.split_once(" ==").expect("a section title"))
        .collect()
}

/// A run lets go of each stage once no later stage reads it: none is left in the session
/// (where, held, they would keep millions of rows in memory while the outputs are written).
#[test]
fn a_run_leaves_no_stage_in_the_session() {
    let text =
        std::fs::read_to_string(root().join("studies/breast_neoadjuvant_pcr.study")).unwrap();
    let study = cohortql::compile::compile_text(text).study.unwrap();
    in_small_synthetic_session(|ctx| async move {
        let run = cohortql::run::execute(&study, &ctx, &|_| {}).await.unwrap();
        assert!(run.persons() > 0);
        let left: Vec<String> = ctx
            .catalog_names()
            .into_iter()
            .flat_map(|c| {
                let catalog = ctx.catalog(&c).unwrap();
                catalog
                    .schema_names()
                    .into_iter()
                    .flat_map(move |s| catalog.schema(&s).unwrap().table_names())
            })
            .filter(|t| t.starts_with("cohortql_"))
            .collect();
        assert!(left.is_empty(), "stages left in the session: {left:?}");
    });
}

/// Counts of one domain's records in a stage share one reading of the domain and one join with
/// the entries: the NSAID study's two condition covariates and its endpoint (the first GI
/// bleeding during follow-up) read `condition_occurrence` once in the dataset. Its four drug
/// counts in the
/// population (the exclusion's two, the arms' two) are of the index event's concepts: they
/// read the kept index records, in one join, and `drug_exposure` not at all.
#[test]
fn counts_of_one_domain_share_one_reading() {
    let text = analyzed_on_small_synthetic("studies/nsaid_gi_bleed.study");
    let reads = |stage: &str, table: &str| stage_reads(&text, stage, table);
    assert_eq!(reads("cohortql_population", "drug_exposure"), 0, "{text}");
    let (_, population) = sections(&text)
        .into_iter()
        .find(|(n, _)| *n == "cohortql_population")
        .expect("a population stage");
    // The four counts' concept tests, each in the one join's filter: celecoxib's two ids and
    // diclofenac's, tested against the kept records' concept column.
    let joins_testing_concepts = population
        .lines()
        .filter(|l| l.contains("HashJoinExec") && l.contains("1118084") && l.contains("1124300"))
        .count();
    assert_eq!(joins_testing_concepts, 1, "{population}");
    // Conditions are read by the population (the exclusion of a prior GI bleeding) and the
    // dataset: once, for both, their records of the study's sets kept (`plan::kept`).
    assert_eq!(
        reads("cohortql_kept_condition", "condition_occurrence"),
        1,
        "{text}"
    );
    assert_eq!(
        reads("cohortql_population", "condition_occurrence"),
        0,
        "{text}"
    );
    assert_eq!(reads("dataset", "condition_occurrence"), 0, "{text}");
}

/// With a first or last event as index a person has one entry, and each criterion's aggregate
/// per entry groups by the person alone; with `all` events, by the entry (person, index record,
/// its table, index date).
#[test]
fn aggregates_per_entry_group_by_the_person_when_it_has_one_entry() {
    let dir = tempfile::tempdir().unwrap();
    let groupings = |occurrence: &str| -> Vec<String> {
        let study = dir.path().join(format!("{occurrence}.study"));
        std::fs::write(
            &study,
            format!(
                "study \"k\"\nconcepts\n  statins = drug 1539403 + descendants\npopulation\n  \
                 index = {occurrence} drug in statins\n  require condition in 192671 [-365, 0] days\n"
            ),
        )
        .unwrap();
        let o = cohortql(
            &[
                "plan",
                study.to_str().unwrap(),
                "--repo",
                "tests/data/eunomia-gibleed",
            ],
            dir.path(),
        );
        let text = all_text(&o);
        assert!(o.status.success(), "{text}");
        let population = sections(&text)
            .into_iter()
            .find(|(n, _)| *n == "cohortql_population")
            .map(|(_, body)| body.to_string())
            .expect("a population stage");
        population
            .lines()
            .filter_map(|l| l.split("Aggregate: groupBy=[[").nth(1))
            .filter_map(|rest| rest.split("]]").next())
            .map(str::to_string)
            .collect()
    };
    let first = groupings("first");
    assert!(!first.is_empty());
    assert!(first.iter().all(|g| g == "person_id"), "{first:?}");
    let all = groupings("all");
    assert!(
        all.iter()
            .any(|g| g.contains("person_id") && g.contains("index_record_id")),
        "{all:?}"
    );
}

/// Values of one domain share a reading too: the breast study's three `last value of image
/// feature` covariates (disjoint features, one order) read `image_feature` once in the
/// dataset, not once each.
#[test]
fn last_values_of_one_domain_share_one_reading() {
    let text = analyzed_on_small_synthetic("studies/breast_neoadjuvant_pcr.study");
    assert_eq!(stage_reads(&text, "dataset", "image_feature"), 1, "{text}");
}

/// With person ids unique (the synthetic repository's), an index read from its records alone
/// is joined with its persons after each person's first entry is chosen: the entries stage's
/// join with `person` sits above the operator that chooses, and reads one row per entry.
#[test]
fn entries_meet_their_persons_after_being_chosen_when_person_ids_are_unique() {
    let text = analyzed_on_small_synthetic("studies/nsaid_gi_bleed.study");
    let (_, entries) = *sections(&text)
        .iter()
        .find(|(n, _)| *n == "cohortql_entries")
        .unwrap();
    let position = |what: &str| {
        entries
            .find(what)
            .unwrap_or_else(|| panic!("{what}: {entries}"))
    };
    assert!(
        position("HashJoinExec") < position("GroupStartsExec"),
        "{entries}"
    );
    assert_eq!(parquet_reads(entries, "person"), 1, "{entries}");
}

/// The index event's records are a stage of their own, read once for the entries and for the
/// attrition's first row; when there are none, the entries read no observation period and no
/// person (the synthetic data hold no acetaminophen). An index event with a `where` keeps its
/// records with the criterion applied: the attrition does not evaluate it again.
#[test]
fn the_index_records_are_kept_once_and_none_read_no_periods() {
    let text = analyzed_on_small_synthetic("studies/eunomia/acetaminophen_eras.study");
    let listed = sections(&text);
    let names: Vec<&str> = listed.iter().map(|(n, _)| *n).collect();
    let at = |name: &str| names.iter().position(|n| *n == name);
    assert!(
        at("cohortql_index_records").expect("an index records stage")
            < at("cohortql_entries").expect("an entries stage"),
        "{text}"
    );
    assert_eq!(
        stage_reads(&text, "cohortql_index_records", "drug_exposure"),
        1,
        "{text}"
    );
    // The entries and the attrition read the kept records, not the domain.
    read_by_neither_entries_nor_attrition(&text, &["drug_exposure"]);
    let (_, entries) = listed
        .iter()
        .find(|(n, _)| *n == "cohortql_entries")
        .unwrap();
    for table in ["observation_period", "person"] {
        let scans: Vec<&str> = entries
            .lines()
            .filter(|l| l.contains("DataSourceExec") && l.contains(&format!("/{table}.parquet")))
            .collect();
        assert!(!scans.is_empty(), "{table}: {entries}");
        for scan in scans {
            assert!(scan.contains("output_rows=0,"), "{table} read: {scan}");
        }
    }
    // The prostate study's index is an MRI `where` a raised PSA precedes it.
    let text = analyzed_on_small_synthetic("studies/prostate_mri_pirads.study");
    // Its attrition queries run side by side, and are shown in the order they started.
    let listed = sections(&text);
    let names: Vec<&str> = listed.iter().map(|(n, _)| *n).collect();
    let attrition = names.iter().position(|n| *n == "attrition").unwrap();
    assert_eq!(
        names[attrition..attrition + 4],
        [
            "attrition",
            "attrition_by_arm",
            "inclusion_rules",
            "rule_combinations"
        ],
        "{text}"
    );
    // Its measurements are kept for all stages (`plan::kept`): the index records read them
    // there, and once.
    assert_eq!(
        stage_reads(&text, "cohortql_kept_measurement", "measurement"),
        1,
        "{text}"
    );
    assert_eq!(
        stage_reads(&text, "cohortql_index_records", "measurement"),
        0,
        "{text}"
    );
    read_by_neither_entries_nor_attrition(&text, &["measurement", "image_occurrence"]);
    // The script `sql` writes keeps them as a table too.
    let dir = tempfile::tempdir().unwrap();
    let o = cohortql(
        &["sql", "studies/eunomia/acetaminophen_eras.study"],
        dir.path(),
    );
    assert!(o.status.success(), "{}", all_text(&o));
    assert!(all_text(&o).contains("CREATE TEMPORARY TABLE cohortql_index_records"));
}

/// Each person's first NSAID exposure is chosen by `GroupStartsExec` (docs/running.md): in each
/// sorted partition, then once more after the merge, with no window left in the entries, and
/// the dataset's `first value of` likewise; the entries, one per person, are the side of the
/// join with `person` that builds the table. Before the sort, a person's exposures after an
/// earlier one of the same person are dropped (the synthetic records come in order of person
/// and date): the sort receives one row per person.
#[test]
fn first_rows_are_chosen_without_a_window() {
    let text = analyzed_on_small_synthetic("studies/nsaid_gi_bleed.study");
    let listed = sections(&text);
    let (_, entries) = listed
        .iter()
        .find(|(n, _)| *n == "cohortql_entries")
        .unwrap();
    assert!(!entries.contains("WindowAggExec"), "{entries}");
    assert!(
        entries.contains("GroupStartsExec: keys=[") && entries.contains(", in each partition"),
        "{entries}"
    );
    // The join with `person` builds its table from the chosen entries (its first input,
    // shown first) and reads the persons past it.
    let (starts, persons) = (
        entries.find("GroupStartsExec").unwrap(),
        entries.find("/person.parquet").expect("person read"),
    );
    assert!(starts < persons, "{entries}");
    let rows = |line: &str| -> String {
        let from = line.find("output_rows=").expect("rows shown") + "output_rows=".len();
        line[from..].split(',').next().unwrap().to_string()
    };
    let line = |wanted: &dyn Fn(&str) -> bool| -> &str {
        entries
            .lines()
            .find(|l| wanted(l))
            .unwrap_or_else(|| panic!("{entries}"))
    };
    let candidates = line(&|l| l.contains("FirstCandidatesExec: key="));
    assert!(candidates.contains("ASC"), "{candidates}");
    let chosen = line(&|l| l.contains("GroupStartsExec") && !l.contains("in each partition"));
    assert_eq!(rows(candidates), rows(chosen), "{entries}");
    let text = analyzed_on_small_synthetic("studies/lung_ct_radiomics_os.study");
    let (_, dataset) = sections(&text)
        .into_iter()
        .find(|(n, _)| *n == "dataset")
        .unwrap();
    assert!(dataset.contains("GroupStartsExec"), "{dataset}");
    assert!(!dataset.contains("WindowAggExec"), "{dataset}");
}

/// Neither the entries nor the attrition (`plan --analyze` output) read any of `tables`.
fn read_by_neither_entries_nor_attrition(text: &str, tables: &[&str]) {
    for stage in ["cohortql_entries", "attrition"] {
        for table in tables {
            assert_eq!(
                stage_reads(text, stage, table),
                0,
                "{stage}, {table}: {text}"
            );
        }
    }
}

/// `plan --analyze` of a study on a synthetic repository of 300 persons: what it prints.
fn analyzed_on_small_synthetic(study: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let repo = small_synthetic(dir.path(), &cache);
    analyzed(study, &repo, &cache)
}

/// `plan --analyze` of a study on a repository, which must succeed.
fn analyzed(study: &str, repo: &Path, cache: &Path) -> String {
    let o = cohortql(
        &["plan", study, "--repo", repo.to_str().unwrap(), "--analyze"],
        cache,
    );
    let text = all_text(&o);
    assert!(o.status.success(), "{text}");
    text
}

/// A metric's value as `plan --analyze` shows it (`4.84 K`, `10.29 M`, `446`), as a number.
fn shown_number(value: &str) -> f64 {
    let (number, unit) = value.split_once(' ').unwrap_or((value, ""));
    let scale = match unit {
        "" => 1.0,
        "K" => 1e3,
        "M" => 1e6,
        other => panic!("a number in {other} in {value}"),
    };
    number.parse::<f64>().unwrap() * scale
}

/// Index records rare in their table are found decoding the concept column first: the eras
/// study's acetaminophen exposures (none in the synthetic data) by a scan that tests the
/// concept as it decodes and prunes every row, once a sample of the table found them rare,
/// reading no column but the concept's (the tests of a person and a start date, which read
/// more, wait for the rows it keeps); the celecoxib cohort's drug eras (a fifth of them
/// celecoxib) are decoded and filtered after, as every other scan (`docs/running.md`).
#[test]
fn rare_index_records_are_found_decoding_the_concept_first() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let repo = small_synthetic(dir.path(), &cache);
    let plan_of = |study: &str| -> String {
        let text = analyzed(study, &repo, &cache);
        assert!(
            sections(&text).iter().any(|(n, _)| *n == "index_sample"),
            "{text}"
        );
        text
    };
    let metric = |text: &str, name: &str| -> Vec<String> {
        scan_metric(text, "cohortql_index_records", "", name)
    };
    let eras = plan_of("studies/eunomia/acetaminophen_eras.study");
    let pruned = metric(&eras, "pushdown_rows_pruned=");
    assert_eq!(pruned.len(), 1, "{pruned:?}");
    assert_ne!(pruned[0], "pushdown_rows_pruned=0", "{pruned:?}");
    let read = shown_number(&metric(&eras, "bytes_scanned=")[0]["bytes_scanned=".len()..]);
    let concept = column_bytes(&repo.join("drug_exposure.parquet"), "drug_concept_id");
    assert!(
        read <= concept as f64,
        "{read} bytes read, the concept column is {concept}"
    );
    let celecoxib = plan_of("studies/eunomia/celecoxib.study");
    assert_eq!(
        metric(&celecoxib, "pushdown_rows_pruned="),
        ["pushdown_rows_pruned=0"]
    );
}

/// The compressed bytes of one column of a Parquet file, all its row groups.
fn column_bytes(file: &Path, column: &str) -> i64 {
    use datafusion::parquet::file::reader::{FileReader, SerializedFileReader};
    let reader = SerializedFileReader::new(std::fs::File::open(file).unwrap()).unwrap();
    reader
        .metadata()
        .row_groups()
        .iter()
        .flat_map(|group| group.columns())
        .filter(|chunk| chunk.column_path().string() == column)
        .map(|chunk| chunk.compressed_size())
        .sum()
}

/// Attrition row 0 looks up in `person` only the persons with index records and no entry
/// (the persons with an entry were joined with their rows already): the celecoxib cohort's
/// every such person has an entry, and its attrition opens no `person` file; the prostate
/// study's MRIs after a raised PSA include persons with no entry, whose rows are read.
#[test]
fn attrition_reads_person_only_for_persons_with_records_and_no_entry() {
    let opened = |study: &str| -> Vec<String> {
        let text = analyzed_on_small_synthetic(study);
        scan_metric(&text, "attrition", "/person.parquet", "files_opened=")
    };
    assert_eq!(
        opened("studies/eunomia/celecoxib.study"),
        ["files_opened=0"]
    );
    assert_eq!(
        opened("studies/prostate_mri_pirads.study"),
        ["files_opened=1"]
    );
}

/// The lung study looks its image features' values up in `measurement` by id: the join's
/// probe side drops, before probing, the measurements whose id no image feature has
/// (`KeyFilterExec`, docs/running.md), every one of them tested, and the dataset is the same
/// as without it (the engines' tests).
#[test]
fn a_lookup_by_id_drops_the_rows_no_key_matches_before_probing() {
    let text = analyzed_on_small_synthetic("studies/lung_ct_radiomics_os.study");
    let (_, dataset) = sections(&text)
        .into_iter()
        .find(|(n, _)| *n == "dataset")
        .expect("a dataset stage");
    let metric = |line: &str, name: &str| -> f64 {
        let at = line
            .find(name)
            .unwrap_or_else(|| panic!("{name} in {line}"));
        shown_number(line[at + name.len()..].split([',', ']']).next().unwrap())
    };
    let lines: Vec<&str> = dataset.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.contains("KeyFilterExec: key=measurement_id"))
        .unwrap_or_else(|| panic!("a key filter over measurement ids: {dataset}"));
    let filter = lines[at];
    let scan = lines[at + 1..]
        .iter()
        .find(|l| l.contains("DataSourceExec") && l.contains("/measurement.parquet"))
        .expect("the measurement scan under it");
    assert_eq!(metric(filter, "rows_untested="), 0.0, "{filter}");
    let (kept, read) = (metric(filter, "output_rows="), metric(scan, "output_rows="));
    assert!(
        kept > 0.0 && kept * 4.0 < read,
        "{kept} of {read}: {filter}"
    );
}

/// One metric (`name=` its value) of each Parquet scan of a stage in `plan --analyze` output
/// whose line contains `file` (every scan with `""`).
fn scan_metric(text: &str, stage: &str, file: &str, metric: &str) -> Vec<String> {
    let (_, body) = sections(text)
        .into_iter()
        .find(|(n, _)| *n == stage)
        .unwrap_or_else(|| panic!("a stage {stage}: {text}"));
    body.lines()
        .filter(|l| l.contains("DataSourceExec") && l.contains(file))
        .map(|l| {
            let at = l.find(metric).expect("a Parquet scan's metrics");
            l[at..].split([',', ']']).next().unwrap().to_string()
        })
        .collect()
}

/// How many times a stage's plans (in `plan` output) read a table's Parquet file.
fn stage_reads(text: &str, stage: &str, table: &str) -> usize {
    sections(text)
        .iter()
        .filter(|(n, _)| *n == stage)
        .map(|(_, body)| parquet_reads(body, table))
        .sum()
}

#[test]
fn a_rerun_on_unchanged_files_reuses_the_fingerprint_remembered_in_the_cache_directory() {
    let dir = tempfile::tempdir().unwrap();
    let repo = eunomia_copy(dir.path());
    let cache = dir.path().join("cache");
    // Files changed in the last 2 seconds are hashed but not remembered (docs/running.md).
    std::thread::sleep(std::time::Duration::from_millis(2_100));
    let fingerprint = |name: &str| -> String {
        let out = dir.path().join(name);
        let o = cohortql(
            &[
                "run",
                "studies/eunomia/celecoxib.study",
                "--repo",
                repo.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
            &cache,
        );
        assert_eq!(o.status.code(), Some(0), "{}", all_text(&o));
        let run: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("site/run.json")).unwrap())
                .unwrap();
        run["data_fingerprint"].as_str().unwrap().to_string()
    };
    let first = fingerprint("first");
    let remembered: Vec<String> = std::fs::read_dir(cache.join("fingerprints"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    assert_eq!(remembered.len(), 1, "{remembered:?}");
    assert!(remembered[0].trim_end().ends_with(&first), "{remembered:?}");
    assert_eq!(fingerprint("second"), first);
    // A table file replaced by another (a new inode) is hashed again, and remembered anew.
    let person = repo.join("person.csv.gz");
    let bytes = std::fs::read(&person).unwrap();
    std::fs::remove_file(&person).unwrap();
    std::fs::write(&person, &bytes).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2_100));
    assert_eq!(
        fingerprint("third"),
        first,
        "the same bytes, the same fingerprint"
    );
    let line = std::fs::read_to_string(
        cache.join("fingerprints").join(
            std::fs::read_dir(cache.join("fingerprints"))
                .unwrap()
                .next()
                .unwrap()
                .unwrap()
                .file_name(),
        ),
    )
    .unwrap();
    assert_ne!(line, remembered[0], "the files' identity changed: {line}");
}

#[test]
fn studies_give_the_same_outputs_from_parquet_files_shared_by_rows_as_from_csv() {
    // At 20,000 persons `visit_occurrence` and `measurement` are Parquet files of one row group
    // over 1 MiB, which the run's partitions share by rows (src/repo/split_scans.rs); the CSV
    // files of the same data are divided by DataFusion's CSV reader. The prostate study keeps
    // the measurements of its concept sets for all its stages (src/plan/kept.rs); the breast
    // study's dataset lets go of a reading that keeps most of the file, which scans on its own
    // (src/repo/shared_scans.rs). CSV files are never shared.
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    for format in ["parquet", "csv"] {
        let o = cohortql(
            &[
                "synth",
                "--persons",
                "20000",
                "--seed",
                "7",
                "--format",
                format,
                "--out",
                dir.path().join(format).to_str().unwrap(),
            ],
            &cache,
        );
        assert_eq!(o.status.code(), Some(0), "{}", all_text(&o));
    }
    for table in ["visit_occurrence", "measurement"] {
        let path = dir.path().join(format!("parquet/{table}.parquet"));
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(size > 1 << 20, "{table}.parquet has {size} bytes");
    }
    for study in [
        "nsaid_gi_bleed",
        "lung_ct_radiomics_os",
        "prostate_mri_pirads",
        "breast_neoadjuvant_pcr",
    ] {
        let outputs: Vec<PathBuf> = ["parquet", "csv"]
            .iter()
            .map(|format| {
                let out = dir.path().join(format!("{study}-{format}"));
                let o = cohortql(
                    &[
                        "run",
                        &format!("studies/{study}.study"),
                        "--repo",
                        dir.path().join(format).to_str().unwrap(),
                        "--out",
                        out.to_str().unwrap(),
                    ],
                    &cache,
                );
                assert_eq!(o.status.code(), Some(0), "{}", all_text(&o));
                out
            })
            .collect();
        for file in ["site/cohort.csv", "site/dataset.csv", "site/attrition.csv"] {
            let (a, b) = (
                std::fs::read(outputs[0].join(file)).unwrap(),
                std::fs::read(outputs[1].join(file)).unwrap(),
            );
            assert!(a.len() > 100, "{study}: {file} is nearly empty");
            assert!(a == b, "{study}: {file} differs between Parquet and CSV");
        }
    }
    let analysed = |study: &str| -> String {
        let o = cohortql(
            &[
                "plan",
                study,
                "--repo",
                dir.path().join("parquet").to_str().unwrap(),
                "--analyze",
            ],
            &cache,
        );
        let text = all_text(&o);
        assert!(o.status.success(), "{text}");
        text
    };
    // A domain several stages read by concept sets is read once and its records of those sets
    // kept: the prostate study's index event (a raised PSA), arms (PI-RADS) and dataset (the
    // last PSA, the biopsy grades) read the kept measurements, and only the image features'
    // values, looked up by id, read the file again.
    let text = analysed("studies/prostate_mri_pirads.study");
    for stage in ["cohortql_kept_measurement", "cohortql_kept_condition"] {
        assert!(
            sections(&text).iter().any(|(n, _)| *n == stage),
            "{stage}: {text}"
        );
    }
    assert_eq!(
        stage_reads(&text, "cohortql_kept_measurement", "measurement"),
        1,
        "{text}"
    );
    for stage in ["cohortql_index_records", "cohortql_population"] {
        assert_eq!(
            stage_reads(&text, stage, "measurement"),
            0,
            "{stage}: {text}"
        );
    }
    assert_eq!(stage_reads(&text, "dataset", "measurement"), 1, "{text}");
    // The breast study's sets select most of `measurement` (its BMI reading): a sample of the
    // file says so, and each stage reads the file instead of keeping most of it in memory.
    let text = analysed("studies/breast_neoadjuvant_pcr.study");
    assert!(
        !sections(&text)
            .iter()
            .any(|(n, _)| *n == "cohortql_kept_measurement"),
        "{text}"
    );
    assert!(stage_reads(&text, "dataset", "measurement") >= 1, "{text}");
    // Readings of one file that a stage's plan filters for different things share one scan: a
    // dataset that counts biopsy grades, takes the last PSA value and looks the image
    // features' values up by id (two filters of `measurement` that no other stage reads, and
    // a join's key filter) reads the file once, not three times; the first reading shows the
    // shared scan.
    // (In files of a few hundred persons, read by one partition, the filters are over a
    // repartition of the scan, which is not shared.)
    let study = dir.path().join("shared.study");
    std::fs::write(
        &study,
        "study \"shared scans\"\n\
         concepts\n\
         \x20 psa = measurement loinc \"2857-1\"\n\
         \x20 grade_group = measurement \"ISUP grade group\"\n\
         \x20 adc_entropy = image feature \"original_firstorder_Entropy\"\n\
         population\n\
         \x20 index = first image occurrence modality MR\n\
         covariates\n\
         \x20 psa = last value of measurement in psa [-180, 0] days\n\
         \x20 grades = count measurement in grade_group [0, 180] days\n\
         \x20 adc_entropy = last value of image feature in adc_entropy modality MR on index\n",
    )
    .unwrap();
    let text = analysed(study.to_str().unwrap());
    assert_eq!(stage_reads(&text, "dataset", "measurement"), 1, "{text}");
    let (_, dataset) = sections(&text)
        .into_iter()
        .find(|(n, _)| *n == "dataset")
        .unwrap();
    let readings: Vec<&str> = dataset
        .lines()
        .filter(|l| l.contains("SharedReadingExec: reading"))
        .collect();
    assert_eq!(readings.len(), 3, "{dataset}");
    assert!(readings[0].contains("reading 1 of 3"), "{dataset}");
    assert!(readings[0].contains("/measurement.parquet"), "{dataset}");
    for reading in &readings[1..] {
        assert!(reading.contains("file=measurement.parquet"), "{dataset}");
    }
    // The lookup by id: no filter of its own, the join's keys tested as the file is read.
    assert_eq!(
        readings
            .iter()
            .filter(|r| r.contains("predicate=true, join keys tested on measurement_id"))
            .count(),
        1,
        "{dataset}"
    );
    assert!(readings.iter().all(|r| !r.contains("let go")), "{dataset}");
}

/// `run`'s sessions optimise each plan in one pass of DataFusion's logical optimizer, not
/// its three (`repo::session_config`): every study's plans must come out of one pass reading
/// the same tables, with the same columns and the same filters at each scan, and with the
/// same joins, aggregates and windows as out of three. (Out of one pass, a cast of a column
/// to its own type hid the concept filters from the scans: `CAST(drug_concept_id AS Int64) =
/// 1118084`.)
#[test]
fn one_optimizer_pass_plans_every_study_as_three_do() {
    common::with_big_stack(one_pass_as_three);
}

fn one_pass_as_three() {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    use datafusion::logical_expr::LogicalPlan;
    // What decides the work a plan does, in an order that does not depend on the plan's.
    let signature = |plan: &LogicalPlan| -> Vec<String> {
        let mut parts = Vec::new();
        plan.apply_with_subqueries(|node| {
            let part = match node {
                LogicalPlan::TableScan(scan) => {
                    let mut filters: Vec<String> =
                        scan.filters.iter().map(|f| f.to_string()).collect();
                    filters.sort();
                    let columns: Vec<String> = scan
                        .projected_schema
                        .fields()
                        .iter()
                        .map(|f| f.name().clone())
                        .collect();
                    format!(
                        "scan {} {columns:?} where {filters:?} fetch {:?}",
                        scan.table_name, scan.fetch
                    )
                }
                LogicalPlan::Join(join) => format!(
                    "{} join on {} keys, filter {}",
                    join.join_type,
                    join.on.len(),
                    join.filter.is_some()
                ),
                LogicalPlan::Aggregate(a) => {
                    format!("aggregate {} by {}", a.aggr_expr.len(), a.group_expr.len())
                }
                LogicalPlan::Window(w) => format!("window {}", w.window_expr.len()),
                LogicalPlan::Sort(s) => format!("sort {}", s.expr.len()),
                LogicalPlan::Union(u) => format!("union {}", u.inputs.len()),
                LogicalPlan::Limit(_) => "limit".to_string(),
                LogicalPlan::Distinct(_) => "distinct".to_string(),
                _ => return Ok(TreeNodeRecursion::Continue),
            };
            parts.push(part);
            Ok(TreeNodeRecursion::Continue)
        })
        .unwrap();
        parts.sort();
        parts
    };
    in_small_synthetic_session(|ctx| async move {
        assert_eq!(ctx.copied_config().options().optimizer.max_passes, 1);
        let config = ctx
            .copied_config()
            .set_usize("datafusion.optimizer.max_passes", 3)
            // The session shares the catalogs of `ctx`, which a new default one would replace.
            .with_create_default_catalog_and_schema(false);
        let three = datafusion::execution::SessionStateBuilder::new_from_existing(ctx.state())
            .with_config(config)
            .build();
        for path in common::study_files() {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let study = common::checked(&name, &std::fs::read_to_string(&path).unwrap());
            let plans = cohortql::run::stage_plans(&study, &ctx, Default::default())
                .await
                .unwrap();
            for (stage, plan) in plans {
                let once = ctx.state().optimize(&plan).unwrap();
                let thrice = three.optimize(&plan).unwrap();
                assert_eq!(
                    signature(&once),
                    signature(&thrice),
                    "{name}, {stage}: one pass\n{}\nthree passes\n{}",
                    once.display_indent(),
                    thrice.display_indent()
                );
            }
        }
    });
}
