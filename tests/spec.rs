//! Spec tests: the semantics of the language, one construct per file in tests/spec/, as tiny
//! input tables, a study, and what it must give: entries, attrition, follow-up, covariates and
//! endpoints. Every engine runs them; here, the reference evaluator.

use chrono::NaiveDate;
use cohortql::compile::compile_text;
use cohortql::reference::data::{Concept, Data, Period, Person, Record};
use cohortql::reference::{evaluate_study, Cell, Evaluation};
use cohortql::study::Domain;
use serde::Deserialize;
use serde_json::Value;

/// Per row, per endpoint: (event, days).
type Outcomes = Vec<Vec<(u8, Option<i64>)>>;

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
            .map(|(p, s, e)| Period {
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

/// Runs a study on the data and compares entries (person, index date, and where given the
/// index record and the arm).
fn run(name: &str, study_text: &str, data: &Data, expected: &[Vec<Value>]) -> Evaluation {
    let compiled = compile_text(study_text.to_string());
    let study = compiled.study.unwrap_or_else(|| {
        panic!(
            "{name}: the study does not check: {:?}",
            compiled.diagnostics
        )
    });
    let evaluation = evaluate_study(&study, data);
    let got: Vec<Vec<Value>> = evaluation
        .rows
        .iter()
        .map(|r| &r.entry)
        .zip(expected.iter().chain(std::iter::repeat(&Vec::new())))
        .map(|(e, want)| {
            let mut row = vec![Value::from(e.person), Value::from(e.index.to_string())];
            if want.len() > 2 {
                row.push(Value::from(e.record));
            }
            if want.len() > 3 {
                row.push(e.arm.clone().map_or(Value::Null, Value::from));
            }
            row
        })
        .collect();
    assert_eq!(got, expected, "{name}: entries");
    evaluation
}

fn cell(c: &Cell) -> Value {
    match c {
        Cell::Number(x) => serde_json::json!(x),
        Cell::Date(d) => Value::from(d.to_string()),
        Cell::Empty => Value::Null,
    }
}

fn numbers_equal(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => (x - y).abs() < 1e-9,
        _ => a == b,
    }
}

#[test]
fn the_reference_evaluator_meets_every_spec() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/spec");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 12, "spec files are missing");
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let spec: Spec = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!spec.description.is_empty());
        let data = data(&spec);
        let evaluation = run(&name, &spec.study, &data, &spec.entries);
        let persons: Vec<usize> = evaluation.attrition.iter().map(|r| r.persons).collect();
        let (last, steps) = persons.split_last().unwrap();
        assert_eq!(
            steps,
            spec.attrition.as_slice(),
            "{name}: persons after each step"
        );
        assert_eq!(*last, spec.followed, "{name}: persons with follow-up");
        if let Some(want) = &spec.follow_up {
            let got: Vec<(String, String)> = evaluation
                .rows
                .iter()
                .map(|r| {
                    let (s, e) = r.entry.follow_up.unwrap();
                    (s.to_string(), e.to_string())
                })
                .collect();
            assert_eq!(&got, want, "{name}: follow-up");
        }
        if let Some(want) = &spec.covariates {
            assert_eq!(evaluation.rows.len(), want.len(), "{name}: rows");
            for (row, want) in evaluation.rows.iter().zip(want) {
                let got: Vec<Value> = row.covariates.iter().map(cell).collect();
                assert!(
                    got.len() == want.len()
                        && got.iter().zip(want).all(|(a, b)| numbers_equal(a, b)),
                    "{name}: covariates of person {}: got {got:?}, want {want:?}",
                    row.entry.person
                );
            }
        }
        if let Some(want) = &spec.endpoints {
            let got: Outcomes = evaluation
                .rows
                .iter()
                .map(|r| r.endpoints.iter().map(|o| (o.event, o.days)).collect())
                .collect();
            assert_eq!(&got, want, "{name}: endpoints");
        }
        for (i, v) in spec.variants.iter().enumerate() {
            run(&format!("{name} variant {i}"), &v.study, &data, &v.entries);
        }
    }
}
