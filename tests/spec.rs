//! Spec tests: the semantics of the language, one construct per file in tests/spec/, as tiny
//! input tables, a study, and what it must give: entries, attrition, follow-up, covariates and
//! endpoints. Every engine runs them: the reference evaluator, the DataFusion plans, and the
//! SQL written for PostgreSQL on a real PostgreSQL server, run as a script and through a
//! database repository.

mod common;

use cohortql::reference::data::Data;
use cohortql::study::Study;
use common::spec::{data, specs, Spec};
use common::{by_datafusion, by_postgres, by_reference, checked, Got};
use serde_json::Value;

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

/// A PostgreSQL repository (`--repo postgresql://…`): the stages run inside the database, the
/// results come back through the same `Execution`, and every spec holds.
#[test]
fn a_database_repository_meets_every_spec() {
    common::with_big_stack(|| {
        let server = common::postgres::Postgres::start();
        for (name, spec) in specs() {
            check_spec(&name, &spec, &data(&spec), &|study, data| {
                common::by_database(&server, study, data)
            });
        }
    });
}
