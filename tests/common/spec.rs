//! The spec files of tests/spec/: tiny repositories, a study, and what it must give.

use chrono::NaiveDate;
use cohortql::reference::data::{Concept, Data, Period, Person, Record};
use cohortql::study::Domain;
use serde::Deserialize;
use serde_json::Value;

use super::{checked, Got, Outcomes};
use cohortql::study::Study;

#[derive(Deserialize)]
pub struct Spec {
    pub description: String,
    pub study: String,
    pub persons: Vec<Vec<i64>>,
    pub periods: Vec<(i64, String, String)>,
    pub records: Vec<RecordSpec>,
    #[serde(default)]
    pub concepts: Vec<(i64, String, String, String)>,
    #[serde(default)]
    pub ancestors: Vec<(i64, i64)>,
    #[serde(default)]
    pub maps_to: Vec<(i64, i64)>,
    pub entries: Vec<Vec<Value>>,
    /// Persons after each attrition step, before follow-up.
    pub attrition: Vec<usize>,
    /// The index event's records counted in attrition row 0, when the spec states them.
    #[serde(default)]
    pub index_records: Option<usize>,
    /// Persons left with at least one day of follow-up.
    pub followed: usize,
    pub follow_up: Option<Vec<(String, String)>>,
    pub covariates: Option<Vec<Vec<Value>>>,
    /// Per row, per endpoint: [event, days or null].
    pub endpoints: Option<Outcomes>,
    #[serde(default)]
    pub variants: Vec<Variant>,
}

#[derive(Deserialize)]
pub struct Variant {
    pub study: String,
    pub entries: Vec<Vec<Value>>,
}

#[derive(Deserialize)]
pub struct RecordSpec {
    pub domain: String,
    pub id: i64,
    pub person: i64,
    pub concept: Option<i64>,
    pub start: String,
    pub end: Option<String>,
    pub visit: Option<i64>,
    pub number: Option<f64>,
    pub value_concept: Option<i64>,
    pub modality: Option<String>,
    pub days_supply: Option<i64>,
    #[serde(default)]
    pub source_concept: Option<i64>,
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

pub fn data(spec: &Spec) -> Data {
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
                rec.source_concept = r.source_concept;
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

pub fn specs() -> Vec<(String, Spec)> {
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

pub fn check_spec(name: &str, spec: &Spec, data: &Data, engine: &dyn Fn(&Study, &Data) -> Got) {
    let got = engine(&checked(name, &spec.study), data);
    check_entries(name, &got, &spec.entries);
    let (last, steps) = got.attrition.split_last().unwrap();
    assert_eq!(
        steps,
        spec.attrition.as_slice(),
        "{name}: persons after each step"
    );
    assert_eq!(*last, spec.followed, "{name}: persons with follow-up");
    if let Some(want) = spec.index_records {
        assert_eq!(
            got.index_records, want,
            "{name}: records in attrition row 0"
        );
    }
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
