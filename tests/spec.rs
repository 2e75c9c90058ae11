//! Spec tests: the semantics of the language, one construct per file in tests/spec/, as tiny
//! input tables, a study, and what it must give: entries, attrition, follow-up, covariates and
//! endpoints. Every engine runs them: the reference evaluator, the DataFusion plans, and the
//! SQL written for PostgreSQL on a real PostgreSQL server, run as a script and through a
//! database repository.

mod common;

use common::spec::{check_spec, data, specs};
use common::{by_datafusion, by_postgres, by_reference};

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

/// Every domain a spec reads by concept sets alone read once and kept for all stages, as a
/// run keeps those several stages read when they are few of its rows: the same results.
#[test]
fn the_datafusion_engine_meets_every_spec_with_every_domain_kept() {
    for (name, spec) in specs() {
        check_spec(
            &name,
            &spec,
            &data(&spec),
            &common::by_datafusion_keeping_every_domain,
        );
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
