//! `cohortql import atlas`: OHDSI's four Eunomia test definitions import and run to OHDSI's
//! published counts and to the hand-written studies' cohorts; every definition of the OHDSI
//! Phenotype Library either imports into a study that checks clean, formats and hashes stably,
//! or is refused with the JSON path of each construct it holds that the language cannot say;
//! docs/atlas.md's coverage table is this test's measurement.

mod common;

use cohortql::atlas::import;
use cohortql::compile::compile_text;
use cohortql::hash::study_hash;
use common::{all_text, site_file};
use std::collections::BTreeMap;
use std::io::Read;
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
        .env("COHORTQL_SITE", site_file())
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

fn persons_after_each_step(out: &Path) -> Vec<u64> {
    common::csv_rows(&out.join("site/attrition.csv"))
        .iter()
        .map(|r| r["persons"].parse().unwrap())
        .collect()
}

#[test]
fn eunomias_definitions_import_and_run_to_ohdsis_counts() {
    let dir = tempfile::tempdir().unwrap();
    let repo = root().join("tests/data/eunomia-gibleed");
    for (json, hand_written, persons) in [
        ("celecoxib", "celecoxib", 1800),
        ("celecoxibAge40", "celecoxib_age40", 569),
        ("celecoxibAge40Male", "celecoxib_age40_male", 266),
        ("celecoxibCensored", "celecoxib_censored", 1750),
    ] {
        let study = dir.path().join(format!("{json}.study"));
        let o = cohortql(
            &[
                "import",
                "atlas",
                repo.join(format!("cohorts/{json}.json")).to_str().unwrap(),
                "--out",
                study.to_str().unwrap(),
            ],
            dir.path(),
        );
        assert_eq!(o.status.code(), Some(0), "{json}: {}", all_text(&o));
        let text = std::fs::read_to_string(&study).unwrap();
        // In canonical layout: `fmt --check` accepts it.
        let o = cohortql(&["fmt", "--check", study.to_str().unwrap()], dir.path());
        assert_eq!(o.status.code(), Some(0), "{json}: not canonical:\n{text}");
        let run = |study: &Path, name: &str| -> PathBuf {
            let out = dir.path().join(name);
            let o = cohortql(
                &[
                    "run",
                    study.to_str().unwrap(),
                    "--repo",
                    repo.to_str().unwrap(),
                    "--out",
                    out.to_str().unwrap(),
                ],
                dir.path(),
            );
            assert_eq!(o.status.code(), Some(0), "{name}: {}\n{text}", all_text(&o));
            out
        };
        let imported = run(&study, &format!("{json}-imported"));
        let by_hand = run(
            &root().join(format!("studies/eunomia/{hand_written}.study")),
            &format!("{json}-by-hand"),
        );
        let steps = persons_after_each_step(&imported);
        assert_eq!(
            *steps.last().unwrap(),
            persons,
            "{json}: OHDSI's count\n{text}"
        );
        if json == "celecoxibAge40Male" {
            // Circe's attrition: 1,800 qualifying, 569 over 40, 266 of them men.
            assert!(steps.windows(3).any(|w| w == [1800, 569, 266]), "{steps:?}");
        }
        if json == "celecoxibCensored" {
            assert_eq!(persons_after_each_step(&by_hand).last(), Some(&1750));
        }
        assert_eq!(
            std::fs::read_to_string(imported.join("site/cohort.csv")).unwrap(),
            std::fs::read_to_string(by_hand.join("site/cohort.csv")).unwrap(),
            "{json}: the imported study's cohort differs from the hand-written study's"
        );
        // The hand-written study exported to Circe and read back gives the same cohort.
        let exported = dir.path().join(format!("{hand_written}.json"));
        let o = cohortql(
            &[
                "export",
                "atlas",
                root()
                    .join(format!("studies/eunomia/{hand_written}.study"))
                    .to_str()
                    .unwrap(),
                "--out",
                exported.to_str().unwrap(),
            ],
            dir.path(),
        );
        assert_eq!(o.status.code(), Some(0), "{hand_written}: {}", all_text(&o));
        let back = dir.path().join(format!("{hand_written}-back.study"));
        let o = cohortql(
            &[
                "import",
                "atlas",
                exported.to_str().unwrap(),
                "--out",
                back.to_str().unwrap(),
            ],
            dir.path(),
        );
        assert_eq!(o.status.code(), Some(0), "{hand_written}: {}", all_text(&o));
        let round_trip = run(&back, &format!("{json}-round-trip"));
        assert_eq!(
            std::fs::read_to_string(round_trip.join("site/cohort.csv")).unwrap(),
            std::fs::read_to_string(by_hand.join("site/cohort.csv")).unwrap(),
            "{json}: the hand-written study exported and imported back gives another cohort"
        );
    }
}

/// The Phenotype Library's definitions: (id, name, status, JSON).
fn library() -> Vec<(i64, String, String, String)> {
    let file =
        std::fs::File::open(root().join("tests/data/phenotype-library/cohorts.jsonl.gz")).unwrap();
    let mut text = String::new();
    flate2::read::GzDecoder::new(file)
        .read_to_string(&mut text)
        .unwrap();
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["id"].as_i64().unwrap(),
                v["name"].as_str().unwrap().to_string(),
                v["status"].as_str().unwrap().to_string(),
                v["json"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn reformatted(text: &str) -> String {
    let compiled = compile_text(text.to_string());
    cohortql::fmt::format_study(
        compiled.file.as_ref().unwrap(),
        &cohortql::syntax::source::comments(&compiled.text),
    )
}

#[test]
fn the_phenotype_library_imports_exactly_or_names_what_it_refuses() {
    let definitions = library();
    assert_eq!(definitions.len(), 1100);
    let mut imported = 0;
    // Per refused construct: the definitions it occurs in.
    let mut refused: BTreeMap<String, usize> = BTreeMap::new();
    for (id, name, _, json) in &definitions {
        match import(json, name, false) {
            Ok(study) => {
                imported += 1;
                let compiled = compile_text(study.text.clone());
                assert!(
                    compiled.diagnostics.is_empty(),
                    "{id}: {:?}\n{}",
                    compiled.diagnostics,
                    study.text
                );
                assert_eq!(reformatted(&study.text), study.text, "{id}: not canonical");
                let again = import(json, name, false).unwrap();
                assert_eq!(again.text, study.text, "{id}: not deterministic");
                let hash = study_hash(compiled.study.as_ref().unwrap());
                let rehashed = study_hash(
                    compile_text(reformatted(&study.text))
                        .study
                        .as_ref()
                        .unwrap(),
                );
                assert_eq!(hash, rehashed, "{id}: the hash changes with formatting");
            }
            Err(refusals) => {
                assert!(!refusals.is_empty());
                let mut constructs: Vec<&str> = Vec::new();
                for r in &refusals {
                    assert!(
                        r.construct != "does not check",
                        "{id}: the importer wrote a study that does not check: {r}"
                    );
                    assert!(
                        r.path.starts_with("ConceptSets")
                            || r.path.starts_with("PrimaryCriteria")
                            || r.path.starts_with("AdditionalCriteria")
                            || r.path.starts_with("InclusionRules")
                            || r.path.starts_with("CensoringCriteria")
                            || r.path.starts_with("EndStrategy")
                            || r.path.starts_with("ExpressionLimit"),
                        "{id}: a refusal that names no JSON path: {r}"
                    );
                    if !constructs.contains(&r.construct.as_str()) {
                        constructs.push(&r.construct);
                    }
                }
                for c in constructs {
                    *refused.entry(c.to_string()).or_default() += 1;
                }
            }
        }
    }
    let mut table = format!(
        "Imported exactly: **{imported} of {} definitions ({:.1} %)**.\n\n\
         | construct the language cannot say yet | definitions it occurs in |\n|---|---:|\n",
        definitions.len(),
        imported as f64 * 100.0 / definitions.len() as f64
    );
    let mut rows: Vec<(&String, &usize)> = refused.iter().collect();
    rows.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    for (construct, n) in rows {
        table.push_str(&format!("| {construct} | {n} |\n"));
    }
    let doc_path = root().join("docs/atlas.md");
    let doc = std::fs::read_to_string(&doc_path).unwrap();
    let (start, end) = ("<!-- coverage:start -->\n", "<!-- coverage:end -->");
    let (a, b) = (
        doc.find(start)
            .expect("docs/atlas.md has the coverage markers")
            + start.len(),
        doc.find(end).unwrap(),
    );
    if std::env::var_os("COHORTQL_UPDATE_DOCS").is_some() {
        let updated = format!("{}{table}{}", &doc[..a], &doc[b..]);
        std::fs::write(&doc_path, updated).unwrap();
    } else {
        assert_eq!(
            &doc[a..b],
            table,
            "docs/atlas.md's coverage table is not this measurement: rerun with COHORTQL_UPDATE_DOCS=1"
        );
    }
}

/// JSON → study → JSON → study keeps the meaning: every Phenotype Library definition that
/// imports exports to a Circe expression that imports again into a study of the same hash.
#[test]
fn every_imported_definition_exports_and_imports_back_to_the_same_study() {
    let mut round_trips = 0;
    for (id, name, _, json) in &library() {
        let Ok(study) = import(json, name, false) else {
            continue;
        };
        let model = compile_text(study.text.clone()).study.unwrap();
        let exported = match cohortql::atlas::export::export(&model) {
            Ok(e) => e,
            Err(unsaid) => panic!("{id}: not exported: {unsaid:?}\n{}", study.text),
        };
        let back = import(&exported.json, name, false).unwrap_or_else(|r| {
            panic!("{id}: the export does not import: {r:?}\n{}", exported.json)
        });
        let remodel = compile_text(back.text.clone()).study.unwrap();
        assert_eq!(
            study_hash(&model),
            study_hash(&remodel),
            "{id}: the round trip changed the study\n{}\n{}",
            study.text,
            back.text
        );
        round_trips += 1;
    }
    assert!(
        round_trips > 1000,
        "only {round_trips} definitions round-tripped"
    );
}

/// `export atlas` from the command line: the JSON on standard output or in `--out`, exit 0;
/// a study Circe cannot say is refused with what and where, exit 1, and nothing written.
#[test]
fn export_atlas_writes_the_cohort_or_names_what_circe_cannot_say() {
    let dir = tempfile::tempdir().unwrap();
    let study = root().join("studies/eunomia/celecoxib_age40_male.study");
    let out = dir.path().join("c.json");
    let o = cohortql(
        &[
            "export",
            "atlas",
            study.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(0), "{}", all_text(&o));
    let json = std::fs::read_to_string(&out).unwrap();
    let back = import(&json, "Celecoxib, age 40+, male", false).unwrap();
    let model = compile_text(back.text.clone()).study.unwrap();
    assert_eq!(model.steps.len(), 2, "{}", back.text);

    let arms = dir.path().join("arms.study");
    std::fs::write(
        &arms,
        "study \"Arms\"\npopulation\n  index = first drug in 1118084\nexposure arms\n  a = drug in 1118084 any time before index\nfollow-up\n  collapse entries within 0 days\n",
    )
    .unwrap();
    let refused = dir.path().join("arms.json");
    let o = cohortql(
        &[
            "export",
            "atlas",
            arms.to_str().unwrap(),
            "--out",
            refused.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(1), "{}", all_text(&o));
    assert!(all_text(&o).contains("exposure arms"), "{}", all_text(&o));
    assert!(!refused.exists());
}

#[test]
fn what_cannot_be_said_is_refused_with_its_path_or_left_out_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let definition = r#"{
      "ConceptSets": [{"id": 0, "name": "Diabetes", "expression": {"items": [
        {"concept": {"CONCEPT_ID": 201826, "CONCEPT_NAME": "Type 2 diabetes mellitus"}, "includeDescendants": true}
      ]}}],
      "PrimaryCriteria": {"CriteriaList": [{"ConditionOccurrence": {"CodesetId": 0}}],
        "ObservationWindow": {"PriorDays": 365, "PostDays": 0},
        "PrimaryCriteriaLimit": {"Type": "First"}},
      "QualifiedLimit": {"Type": "First"}, "ExpressionLimit": {"Type": "First"},
      "InclusionRules": [{"name": "inpatient diagnosis before", "expression": {"Type": "ALL",
        "CriteriaList": [{"Criteria": {"ConditionOccurrence": {"CodesetId": 0,
          "ConditionType": [{"CONCEPT_ID": 32020}]}},
          "StartWindow": {"Start": {"Coeff": -1}, "End": {"Days": 1, "Coeff": -1}},
          "IgnoreObservationPeriod": true, "Occurrence": {"Type": 2, "Count": 1}}],
        "DemographicCriteriaList": [], "Groups": []}}],
      "CensoringCriteria": [],
      "CollapseSettings": {"CollapseType": "ERA", "EraPad": 0}, "CensorWindow": {}
    }"#;
    let file = dir.path().join("t2dm.json");
    std::fs::write(&file, definition).unwrap();
    let o = cohortql(&["import", "atlas", file.to_str().unwrap()], dir.path());
    let text = all_text(&o);
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(
        text.contains("InclusionRules[0].expression.CriteriaList[0].Criteria.ConditionOccurrence.ConditionType: ConditionType: records of listed type concepts"),
        "{text}"
    );
    assert!(o.stdout.is_empty(), "a refused definition printed a study");
    let out = dir.path().join("t2dm.study");
    let o = cohortql(
        &[
            "import",
            "atlas",
            file.to_str().unwrap(),
            "--lenient",
            "--out",
            out.to_str().unwrap(),
        ],
        dir.path(),
    );
    let text = all_text(&o);
    assert_eq!(o.status.code(), Some(0), "{text}");
    assert!(
        text.contains("warning: left out InclusionRules[0]"),
        "{text}"
    );
    let study = std::fs::read_to_string(&out).unwrap();
    assert!(
        study.contains("-- WARNING: dropped InclusionRules[0]"),
        "{study}"
    );
    assert!(
        !study.contains("require"),
        "the refused rule is left out whole: {study}"
    );
    assert!(
        study.contains("index = first condition in cs0 with continuous observation [-365, 0] days"),
        "{study}"
    );
    // Not JSON: a data error, exit 2, nothing written.
    std::fs::write(&file, "{ not json").unwrap();
    let o = cohortql(
        &[
            "import",
            "atlas",
            file.to_str().unwrap(),
            "--out",
            dir.path().join("x.study").to_str().unwrap(),
        ],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(2), "{}", all_text(&o));
    assert!(all_text(&o).contains("not JSON"));
    assert!(!dir.path().join("x.study").exists());
}

/// Concept ids written in a concept expression.
fn ids_of(e: &cohortql::study::ConceptExpr, out: &mut Vec<i64>) {
    use cohortql::study::ConceptExpr as C;
    match e {
        C::Concept { id, .. } => out.push(*id),
        C::WithDescendants(e) | C::Mapped(e) | C::WithSources(e) => ids_of(e, out),
        C::Union(es) => es.iter().for_each(|e| ids_of(e, out)),
        C::Minus(a, b) => {
            ids_of(a, out);
            ids_of(b, out);
        }
        C::SourceCodes { .. } | C::Named(_) | C::Set(_) => {}
    }
}

/// Persons with a few years of observation and records of every domain Circe has, dated
/// around 2010–2014, whose concepts are the definition's (some descendants of others), so
/// that the imported windows, counts and values find something.
fn data_for(study: &cohortql::study::Study, seed: u64) -> cohortql::reference::data::Data {
    use chrono::{Duration, NaiveDate};
    use cohortql::reference::data::{Concept, Data, Period, Person, Record};
    use cohortql::study::Domain;
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut ids = Vec::new();
    for set in &study.concept_sets {
        ids_of(&set.expr, &mut ids);
    }
    ids.sort();
    ids.dedup();
    // Descendants under the first concepts, and a concept of no set.
    let extra: Vec<i64> = (0..4).map(|i| 2_000_000_000 + i).collect();
    let mut data = Data::default();
    for (i, &id) in ids.iter().chain(&extra).enumerate() {
        data.concepts.push(Concept {
            id,
            name: format!("Concept {id}"),
            vocabulary: "Test".into(),
            code: format!("C{i}"),
        });
    }
    for (i, &e) in extra.iter().enumerate() {
        if let Some(&a) = ids.get(i) {
            data.ancestors.push((a, e));
        }
    }
    // Source codes: one mapped to each of the first concepts (`+ sources`, `source in`).
    let sources: Vec<i64> = (0..6).map(|i| 2_100_000_000 + i).collect();
    for (i, &s) in sources.iter().enumerate() {
        data.concepts.push(Concept {
            id: s,
            name: format!("Source {s}"),
            vocabulary: "ICD10".into(),
            code: format!("S{i}"),
        });
        if let Some(&target) = ids.get(i) {
            data.maps_to.push((s, target));
        }
    }
    let concepts: Vec<i64> = ids.iter().chain(&extra).copied().collect();
    let base = NaiveDate::from_ymd_opt(2010, 1, 1).unwrap();
    let persons = 40;
    for id in 1..=persons {
        data.persons.push(Person {
            id,
            gender: if rng.random_bool(0.5) { 8507 } else { 8532 },
            year_of_birth: rng.random_range(1930..2008),
            month_of_birth: Some(rng.random_range(1..=12)),
            day_of_birth: Some(rng.random_range(1..=28)),
        });
        let mut start = base - Duration::days(rng.random_range(0..700));
        for _ in 0..rng.random_range(1..=2) {
            let end = start + Duration::days(rng.random_range(200..1500));
            data.periods.push(Period {
                id: data.periods.len() as i64 + 1,
                person: id,
                start,
                end,
            });
            start = end + Duration::days(rng.random_range(1..200));
        }
    }
    // Every domain Circe has.
    let domains: Vec<Domain> = Domain::ALL
        .into_iter()
        .filter(|d| {
            !matches!(
                d,
                Domain::ObservationPeriod
                    | Domain::Episode
                    | Domain::ImageOccurrence
                    | Domain::ImageFeature
            )
        })
        .collect();
    for next in 1..=600 {
        let domain = domains[rng.random_range(0..domains.len())];
        let person = rng.random_range(1..=persons);
        let start = base + Duration::days(rng.random_range(0..1500));
        let concept = concepts[rng.random_range(0..concepts.len())];
        let mut r = Record::new(domain, next, person, Some(concept), start);
        if !matches!(
            domain,
            Domain::Measurement | Domain::Observation | Domain::Death | Domain::Specimen
        ) && rng.random_bool(0.7)
        {
            r.end = Some(start + Duration::days(rng.random_range(0..40)));
        }
        r.visit = if domain == Domain::Visit {
            Some(r.id)
        } else {
            rng.random_bool(0.6)
                .then(|| 10_000 + rng.random_range(0..30))
        };
        if matches!(domain, Domain::Measurement | Domain::Observation) {
            r.number = rng
                .random_bool(0.8)
                .then(|| rng.random_range(0..400) as f64 / 4.0);
            r.value_concept = rng
                .random_bool(0.5)
                .then(|| concepts[rng.random_range(0..concepts.len())]);
            r.unit = rng
                .random_bool(0.5)
                .then(|| concepts[rng.random_range(0..concepts.len())]);
        }
        if domain == Domain::Drug {
            r.days_supply = rng.random_bool(0.6).then(|| rng.random_range(1..60));
        }
        r.source_concept = match rng.random_range(0..3) {
            0 => Some(sources[rng.random_range(0..sources.len())]),
            1 => Some(concepts[rng.random_range(0..concepts.len())]),
            _ => None,
        };
        data.records.push(r);
    }
    data
}

/// Imported definitions mean the same on every engine: the reference evaluator, DataFusion,
/// and PostgreSQL as a repository, on data made of each definition's concepts. Every 24th
/// definition of the library, in two halves that run side by side.
#[test]
fn imported_definitions_agree_on_every_engine() {
    common::with_big_stack(|| imported_on_every_engine(0));
}

#[test]
fn imported_definitions_agree_on_every_engine_second_half() {
    common::with_big_stack(|| imported_on_every_engine(1));
}

fn imported_on_every_engine(half: usize) {
    let server = common::postgres::Postgres::start();
    let (mut compared, mut populated) = (0, 0);
    for (id, name, _, json) in library().iter().step_by(24).skip(half).step_by(2) {
        let Ok(imported) = import(json, name, false) else {
            continue;
        };
        let study = common::checked(name, &imported.text);
        let data = data_for(&study, *id as u64);
        let reference = common::by_reference(&study, &data);
        let datafusion = common::by_datafusion(&study, &data);
        assert_eq!(reference, datafusion, "{id}: DataFusion\n{}", imported.text);
        let database = common::by_database(&server, &study, &data);
        assert_eq!(reference, database, "{id}: PostgreSQL\n{}", imported.text);
        compared += 1;
        populated += usize::from(!reference.entries.is_empty());
    }
    assert!(compared >= 18, "only {compared} definitions compared");
    assert!(
        populated * 2 >= compared,
        "too few imported definitions find anyone: {populated} of {compared}"
    );
}
