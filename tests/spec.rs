//! Spec tests: the semantics of the language, one construct per file in tests/spec/, as tiny
//! input tables, a study, and what it must give: entries, attrition, follow-up, covariates and
//! endpoints. Every engine runs them: the reference evaluator, the DataFusion plans, and the
//! SQL written for PostgreSQL on a real PostgreSQL server.

use chrono::NaiveDate;
mod common;

use cohortql::reference::data::{Concept, Data, Period, Person, Record};
use cohortql::study::{Domain, Study};
use common::{by_datafusion, by_postgres, by_reference, checked, Got, Outcomes};
use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize)]
struct Spec {
    description: String,
    study: String,
    persons: Vec<Vec<i64>>,
    periods: Vec<(i64, String, String)>,
    records: Vec<RecordSpec>,
    #[serde(default)]
    concepts: Vec<(i64, String, String, String)>,
    #[serde(default)]
    ancestors: Vec<(i64, i64)>,
    #[serde(default)]
    maps_to: Vec<(i64, i64)>,
    entries: Vec<Vec<Value>>,
    /// Persons after each attrition step, before follow-up.
    attrition: Vec<usize>,
    /// Persons left with at least one day of follow-up.
    followed: usize,
    follow_up: Option<Vec<(String, String)>>,
    covariates: Option<Vec<Vec<Value>>>,
    /// Per row, per endpoint: [event, days or null].
    endpoints: Option<Outcomes>,
    #[serde(default)]
    variants: Vec<Variant>,
}

#[derive(Deserialize)]
struct Variant {
    study: String,
    entries: Vec<Vec<Value>>,
}

#[derive(Deserialize)]
struct RecordSpec {
    domain: String,
    id: i64,
    person: i64,
    concept: Option<i64>,
    start: String,
    end: Option<String>,
    visit: Option<i64>,
    number: Option<f64>,
    value_concept: Option<i64>,
    modality: Option<String>,
    days_supply: Option<i64>,
}

fn date(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap_or_else(|_| panic!("bad date {s}"))
}

fn domain(name: &str) -> Domain {
    *Domain::ALL
        .iter()
        .find(|d| d.keyword() == name)
        .unwrap_or_else(|| panic!("unknown domain {name}"))
}

fn data(spec: &Spec) -> Data {
    Data {
        persons: spec
            .persons
            .iter()
            .map(|p| Person {
                id: p[0],
                gender: p[1],
                year_of_birth: p[2] as i32,
                month_of_birth: p.get(3).map(|m| *m as u32),
                day_of_birth: p.get(4).map(|d| *d as u32),
            })
            .collect(),
        periods: spec
            .periods
            .iter()
            .enumerate()
            .map(|(i, (p, s, e))| Period {
                id: i as i64 + 1,
                person: *p,
                start: date(s),
                end: date(e),
            })
            .collect(),
        records: spec
            .records
            .iter()
            .map(|r| {
                let mut rec =
                    Record::new(domain(&r.domain), r.id, r.person, r.concept, date(&r.start));
                rec.end = r.end.as_deref().map(date);
                rec.visit = r.visit;
                rec.number = r.number;
                rec.value_concept = r.value_concept;
                rec.modality = r.modality.clone();
                rec.days_supply = r.days_supply;
                rec
            })
            .collect(),
        concepts: spec
            .concepts
            .iter()
            .map(|(id, name, vocabulary, code)| Concept {
                id: *id,
                name: name.clone(),
                vocabulary: vocabulary.clone(),
                code: code.clone(),
            })
            .collect(),
        ancestors: spec.ancestors.clone(),
        maps_to: spec.maps_to.clone(),
    }
}

/// Compares an engine's entries (person, index date, and where given the index record and the
/// arm) with the expected ones.
fn check_entries(name: &str, got: &Got, expected: &[Vec<Value>]) {
    let got: Vec<Vec<Value>> = got
        .entries
        .iter()
        .zip(expected.iter().chain(std::iter::repeat(&Vec::new())))
        .map(|((person, index, record, arm), want)| {
            let mut row = vec![Value::from(*person), Value::from(index.clone())];
            if want.len() > 2 {
                row.push(Value::from(*record));
            }
            if want.len() > 3 {
                row.push(arm.clone().map_or(Value::Null, Value::from));
            }
            row
        })
        .collect();
    assert_eq!(got, expected, "{name}: entries");
}

fn numbers_equal(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => (x - y).abs() < 1e-9,
        _ => a == b,
    }
}

fn check_spec(name: &str, spec: &Spec, data: &Data, engine: &dyn Fn(&Study, &Data) -> Got) {
    let got = engine(&checked(name, &spec.study), data);
    check_entries(name, &got, &spec.entries);
    let (last, steps) = got.attrition.split_last().unwrap();
    assert_eq!(
        steps,
        spec.attrition.as_slice(),
        "{name}: persons after each step"
    );
    assert_eq!(*last, spec.followed, "{name}: persons with follow-up");
    if let Some(want) = &spec.follow_up {
        assert_eq!(&got.follow_up, want, "{name}: follow-up");
    }
    if let Some(want) = &spec.covariates {
        assert_eq!(got.covariates.len(), want.len(), "{name}: rows");
        for ((got, want), entry) in got.covariates.iter().zip(want).zip(&got.entries) {
            assert!(
                got.len() == want.len() && got.iter().zip(want).all(|(a, b)| numbers_equal(a, b)),
                "{name}: covariates of person {}: got {got:?}, want {want:?}",
                entry.0
            );
        }
    }
    if let Some(want) = &spec.endpoints {
        assert_eq!(&got.endpoints, want, "{name}: endpoints");
    }
    for (i, v) in spec.variants.iter().enumerate() {
        let name = format!("{name} variant {i}");
        let got = engine(&checked(&name, &v.study), data);
        check_entries(&name, &got, &v.entries);
    }
}

fn specs() -> Vec<(String, Spec)> {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/spec");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 12, "spec files are missing");
    files
        .into_iter()
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let spec: Spec = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(!spec.description.is_empty());
            (name, spec)
        })
        .collect()
}

#[test]
fn the_reference_evaluator_meets_every_spec() {
    for (name, spec) in specs() {
        check_spec(&name, &spec, &data(&spec), &by_reference);
    }
}

#[test]
fn the_datafusion_engine_meets_every_spec() {
    for (name, spec) in specs() {
        check_spec(&name, &spec, &data(&spec), &by_datafusion);
    }
}

/// Writing a study as SQL recurses once per level of the plan: the work gets the stack the
/// command line gives it.
#[test]
fn the_postgres_sql_meets_every_spec() {
    common::with_big_stack(|| {
        let server = common::postgres::Postgres::start();
        for (name, spec) in specs() {
            check_spec(&name, &spec, &data(&spec), &|study, data| {
                by_postgres(&server, study, data)
            });
        }
    });
}
