//! Lowering a checked `Study` to DataFusion logical plans, built with `LogicalPlanBuilder` and
//! `Expr` (never SQL text).
//!
//! A study runs in stages, each a plan over the previous stage's table, so an engine can keep
//! every intermediate result once instead of recomputing it inside every criterion:
//!
//! ```text
//!  kept_<domain>  a domain's records of the study's concept sets, read once for every stage
//!              (only when an engine keeps them: `kept`)
//!  consenting  persons whose consent the study's rule asks for (only with a consent rule)
//!  index_records  the index event's records, read once for the entries and the attrition
//!  entries     index events with their observation period and the person's birth and sex
//!  population  entries with one flag per attrition step and the exposure arm
//!  follow_up   survivors with follow-up start and end (entries with no day left dropped)
//!  groups      follow-up with each entry's group of entries to merge (only when collapsing)
//!  cohort      follow-up, with entries of a person merged when the study collapses them
//!  dataset     one row per cohort entry: covariates and endpoints
//! ```
//!
//! Dates stay dates; day arithmetic is two functions (`days::days_add`, `days::days_between`)
//! that every SQL dialect writes its own way.

mod criteria;
pub mod days;
pub mod kept;
mod records;
mod stages;

use crate::study::Study;
use datafusion::common::{Column, NullEquality, Result};
use datafusion::logical_expr::{
    Aggregate, Expr, Filter, Join, JoinConstraint, JoinType, LogicalPlan, LogicalPlanBuilder,
    Projection, SubqueryAlias, Union, Window,
};
use datafusion::prelude::SessionContext;
use std::collections::BTreeMap;
use std::sync::Arc;

pub use stages::*;

/// The tables the stages write, in order, and the names later stages read them by.
pub const CONSENTING: &str = "cohortql_consenting";
pub const INDEX_RECORDS: &str = "cohortql_index_records";
pub const ENTRIES: &str = "cohortql_entries";
pub const POPULATION: &str = "cohortql_population";
pub const FOLLOW_UP: &str = "cohortql_follow_up";
pub const GROUPS: &str = "cohortql_groups";
pub const COHORT: &str = "cohortql_cohort";

/// Builds the plans of one study over the tables of one session.
pub struct Planner<'a> {
    study: &'a Study,
    tables: BTreeMap<String, LogicalPlan>,
    fresh: usize,
    /// Persons whose consent lets the study use their data, once built.
    consenting: Option<LogicalPlan>,
    /// Set while the consent records themselves are read, which the rule does not filter.
    reading_consent: bool,
    /// The repository's tables the plans built so far read.
    read: std::cell::RefCell<std::collections::BTreeSet<&'static str>>,
    /// Parts of concept sets already read from the vocabulary (see `concept_sets`), with
    /// their ids.
    known: Vec<(crate::study::ConceptExpr, records::Ids)>,
    /// The parts the last `concept_sets` plan looks up, in its order.
    looking_up: Vec<crate::study::ConceptExpr>,
    /// What the data are known to satisfy (nothing, unless told).
    facts: DataFacts,
    /// The index event's records as kept by the engine (see `index_records_stage`), with the
    /// names of their columns.
    index_records: Option<stages::KeptRecords>,
    /// Set while the population is planned: its counts may read the kept index records
    /// (`Planner::kept_index_reading`).
    index_records_shared: bool,
    /// Domains the engine keeps (`kept`): the concept sets whose records they hold, and the
    /// plan that reads them.
    kept_domains: BTreeMap<crate::study::Domain, (Vec<crate::study::ConceptExpr>, LogicalPlan)>,
    /// Attrition row 0 looks up in `person` only the persons with no entry
    /// (`only_persons_without_entries_looked_up`).
    row_zero_from_entries: bool,
}

/// What the data are known to satisfy, from checks made before planning: each lets a plan skip
/// work that only data breaking it would need. Without them (the default) plans assume nothing,
/// as the SQL `cohortql sql` writes must.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataFacts {
    /// `person` holds each person id once: a person's rows join all of that person's records
    /// or none, and never repeat them.
    pub person_ids_unique: bool,
}

impl<'a> Planner<'a> {
    /// Reads the OMOP tables' scans from a session with a repository registered.
    pub async fn new(study: &'a Study, ctx: &SessionContext) -> Result<Planner<'a>> {
        DERIVED.with(|d| d.set(0));
        let mut tables = BTreeMap::new();
        for table in crate::repo::schema::TABLES {
            let plan = ctx.table(table.name).await?.into_unoptimized_plan();
            tables.insert(table.name.to_string(), plan);
        }
        Ok(Planner {
            study,
            tables,
            fresh: 0,
            consenting: None,
            reading_consent: false,
            read: Default::default(),
            known: Vec::new(),
            looking_up: Vec::new(),
            facts: DataFacts::default(),
            index_records: None,
            index_records_shared: false,
            kept_domains: BTreeMap::new(),
            row_zero_from_entries: false,
        })
    }

    /// Attrition row 0 from here on counts the persons with an entry as they are and looks up
    /// in `person` only the others, with a semi and an anti join of the records with the
    /// population: a join with an empty side reads nothing of `person`. For DataFusion in
    /// memory; a Ballista cluster fails on a stage whose tasks report different numbers of
    /// operator metrics (a probe side left unread reports none), and a database plans the
    /// lookup itself.
    pub fn only_persons_without_entries_looked_up(&mut self) {
        self.row_zero_from_entries = true;
    }

    /// Plans from here on may rely on `facts`.
    pub fn assume(&mut self, facts: DataFacts) {
        self.facts = facts;
    }

    /// The first row of each group of `partition` in `order` (keys that are never NULL and
    /// make rows unique, with the partition's columns), with `columns`. The rows are sorted
    /// once, by the partition and then the order, and a row is kept when the one before it
    /// belongs to another group (`lag`). One window over all rows, not one per group: engines
    /// pay per window partition, and groups here are many and small.
    fn first_rows(
        &mut self,
        plan: LogicalPlan,
        partition: &[String],
        order: &[(String, bool)],
        columns: &[String],
    ) -> Result<LogicalPlan> {
        use datafusion::logical_expr::{lit, ExprFunctionExt};
        let mut sort: Vec<datafusion::logical_expr::SortExpr> =
            partition.iter().map(|p| c(p).sort(true, false)).collect();
        sort.extend(
            order
                .iter()
                .map(|(k, ascending)| c(k).sort(*ascending, false)),
        );
        let mut previous = Vec::new();
        let mut lags = Vec::new();
        for p in partition {
            let name = self.fresh("previous");
            lags.push(
                datafusion::functions_window::expr_fn::lag(c(p), Some(1), None)
                    .order_by(sort.clone())
                    .build()?
                    .alias(&name),
            );
            previous.push((p, name));
        }
        let windowed = with_window(plan, lags)?;
        let starts_group = previous
            .iter()
            .map(|(p, prev)| c(prev).is_null().or(c(prev).not_eq(c(p))))
            .reduce(Expr::or)
            .unwrap_or(lit(true));
        keep(filter(windowed, starts_group)?, columns)
    }

    /// A column name no other relation of this study uses.
    fn fresh(&mut self, base: &str) -> String {
        self.fresh += 1;
        format!("q{}_{base}", self.fresh)
    }

    /// Names a plan so that it reads as a derived table when unparsed to SQL.
    fn aliased(&mut self, plan: LogicalPlan) -> Result<LogicalPlan> {
        self.fresh += 1;
        LogicalPlanBuilder::from(plan)
            .alias(format!("t{}", self.fresh))?
            .build()
    }

    fn table(&self, name: &str) -> LogicalPlan {
        if let Some(t) = crate::repo::schema::table(name) {
            self.read.borrow_mut().insert(t.name);
        }
        self.tables[name].clone()
    }

    /// The repository's tables the plans built so far read, by name.
    pub fn tables_read(&self) -> Vec<String> {
        self.read.borrow().iter().map(|t| t.to_string()).collect()
    }
}

/// An unqualified column reference.
fn c(name: &str) -> Expr {
    Expr::Column(Column::new_unqualified(name))
}

/// The unqualified names of a plan's output columns.
fn names(plan: &LogicalPlan) -> Vec<String> {
    plan.schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect()
}

thread_local! {
    /// Numbers the derived tables of the plans being built; reset per `Planner`, so the same
    /// study always gives the same SQL.
    static DERIVED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The plan as an input for another operator: a named derived table unless it is a table, a
/// named subquery or a join (which SQL reads as they are). Operators are built over such inputs
/// so that column references resolve to a name the SQL unparser keeps, and every plan unparses
/// to valid SQL.
fn sub(plan: LogicalPlan) -> Result<Arc<LogicalPlan>> {
    match plan {
        LogicalPlan::TableScan(_)
        | LogicalPlan::SubqueryAlias(_)
        | LogicalPlan::Join(_)
        | LogicalPlan::EmptyRelation(_) => Ok(Arc::new(plan)),
        other => derived(other),
    }
}

/// The plan as a derived table of a name of its own.
fn derived(plan: LogicalPlan) -> Result<Arc<LogicalPlan>> {
    let n = DERIVED.with(|d| {
        d.set(d.get() + 1);
        d.get()
    });
    Ok(Arc::new(LogicalPlan::SubqueryAlias(
        SubqueryAlias::try_new(Arc::new(plan), format!("d{n}"))?,
    )))
}

// The operators below are built directly rather than through `LogicalPlanBuilder`, whose
// column normalisation walks the whole input plan once per expression: with plans that grow
// with every criterion, that made planning quadratic (cubic for wide projections). Every
// column here has a name unique in the study, so there is nothing to normalise.

fn project(plan: LogicalPlan, exprs: Vec<Expr>) -> Result<LogicalPlan> {
    Ok(LogicalPlan::Projection(Projection::try_new(
        exprs,
        sub(plan)?,
    )?))
}

fn filter(plan: LogicalPlan, predicate: Expr) -> Result<LogicalPlan> {
    Ok(LogicalPlan::Filter(Filter::try_new(predicate, sub(plan)?)?))
}

fn with_window(plan: LogicalPlan, exprs: Vec<Expr>) -> Result<LogicalPlan> {
    // Over a join too: DataFusion's unparser writes a window straight over a join as
    // `SELECT *, *, lag(…)`, a wildcard per side, and every column then comes twice (an index
    // event `with or without observation`, whose periods are left-joined, failed so on
    // PostgreSQL as "ambiguous").
    let input = match plan {
        LogicalPlan::Join(_) => derived(plan)?,
        other => sub(other)?,
    };
    Ok(LogicalPlan::Window(Window::try_new(exprs, input)?))
}

fn aggregate(plan: LogicalPlan, group: Vec<Expr>, aggregates: Vec<Expr>) -> Result<LogicalPlan> {
    Ok(LogicalPlan::Aggregate(Aggregate::try_new(
        sub(plan)?,
        group,
        aggregates,
    )?))
}

/// The rows of every plan, one after the other (`UNION ALL`, columns by position, types
/// widened); one plan as it is.
fn union(mut plans: Vec<LogicalPlan>) -> Result<LogicalPlan> {
    if plans.len() == 1 {
        return Ok(plans.remove(0));
    }
    Ok(LogicalPlan::Union(Union::try_new_with_loose_types(
        plans.into_iter().map(Arc::new).collect(),
    )?))
}

/// An equijoin on pairs of (left, right) column names, each resolved against its own side's
/// schema alone.
fn join_on(
    left: LogicalPlan,
    right: LogicalPlan,
    join_type: JoinType,
    keys: &[(&str, &str)],
) -> Result<LogicalPlan> {
    join(left, right, join_type, keys, None)
}

/// An equijoin with a further condition in its `ON` clause, which an outer join applies before
/// filling in NULLs (a `WHERE` after it would drop the unmatched rows).
fn join_filtered(
    left: LogicalPlan,
    right: LogicalPlan,
    join_type: JoinType,
    keys: &[(&str, &str)],
    condition: Expr,
) -> Result<LogicalPlan> {
    join(left, right, join_type, keys, Some(condition))
}

fn join(
    left: LogicalPlan,
    right: LogicalPlan,
    join_type: JoinType,
    keys: &[(&str, &str)],
    condition: Option<Expr>,
) -> Result<LogicalPlan> {
    let resolve = |name: &str, side: &LogicalPlan| -> Result<Expr> {
        Ok(Expr::Column(
            Column::from_name(name)
                .normalize_with_schemas_and_ambiguity_check(&[&[side.schema()]], &[])?,
        ))
    };
    let on = keys
        .iter()
        .map(|(l, r)| Ok((resolve(l, &left)?, resolve(r, &right)?)))
        .collect::<Result<Vec<_>>>()?;
    Ok(LogicalPlan::Join(Join::try_new(
        Arc::new(left),
        Arc::new(right),
        on,
        condition,
        join_type,
        JoinConstraint::On,
        NullEquality::NullEqualsNothing,
        false,
    )?))
}

/// Keeps only these columns of a plan.
fn keep(plan: LogicalPlan, columns: &[String]) -> Result<LogicalPlan> {
    project(plan, columns.iter().map(|n| c(n)).collect())
}
