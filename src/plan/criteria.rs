//! Criteria as plans. A criterion is evaluated at the rows of a context (persons, entries, or
//! the records a `where` looks at); each test on events becomes an aggregate per context row,
//! left-joined onto the context, and the criterion a boolean expression over those columns.

use super::days::{days_add, days_between};
use super::records::{date_lit, PeriodCols, PersonCols, Rec};
use super::{aggregate, c, filter, join_on, keep, names, project, union, Planner};
use crate::study::*;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::Result;
use datafusion::functions::expr_fn::{coalesce, date_part, upper};
use datafusion::functions_aggregate::expr_fn::{avg, count, count_distinct, max, min};
use datafusion::logical_expr::{cast, lit, not, when, Expr, JoinType, LogicalPlan};

/// The rows a criterion is evaluated at, and which of their columns hold what.
#[derive(Clone, Debug)]
pub(super) struct Ctx {
    /// The rows as they were before any attachment: what aggregates are computed from, so that
    /// the plan grows linearly with the number of criteria.
    pub base: LogicalPlan,
    /// The aggregates attached by the criteria evaluated so far; `Planner::joined` gives the
    /// rows with their columns.
    pub attached: Vec<Attached>,
    /// Counts and values asked for but not yet attached: `Planner::joined` attaches them,
    /// those of one domain together.
    pub pending: Vec<Pending>,
    /// Columns that identify a row.
    pub key: Vec<String>,
    pub person: String,
    pub gender: String,
    pub year_of_birth: String,
    pub month_of_birth: String,
    pub day_of_birth: String,
    pub index: Option<String>,
    pub index_visit: Option<String>,
    /// The index record's end (`index end`).
    pub index_end: Option<String>,
    pub event: Option<String>,
    /// The event's end (`event end`).
    pub event_end: Option<String>,
    pub event_visit: Option<String>,
    pub follow_up: Option<(String, String)>,
    /// The observation period the entries chose for each row's index date (start, end
    /// columns), when that period decides `continuous observation [s, 0]` from the index
    /// alone (`Planner::entry_ctx`).
    pub index_period: Option<(String, String)>,
}

/// An aggregate per context row, to be joined to the rows by their key.
#[derive(Clone, Debug)]
pub(super) struct Attached {
    plan: LogicalPlan,
    /// (the context's key column, the aggregate's column for it)
    keys: Vec<(String, String)>,
}

/// A count of records in windows (`Planner::count_in_windows`), or a value of them (a
/// covariate's `first value of …`, `mean value of …`), whose plan is built when the context's
/// rows are joined, with every other one of the same domain: one reading of the domain,
/// filtered by all their concept sets, one join with the rows and one aggregate with a column
/// for each, instead of a reading, a join and an aggregate each.
#[derive(Clone, Debug)]
pub(super) struct Pending {
    query: EventQuery,
    windows: Vec<EdgeWindow>,
    of: Of,
    /// The column the result is attached as.
    output: String,
}

/// What a pending reading computes from the records it finds.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Of {
    /// How many records (or distinct concepts, days or visits).
    Count(Option<Distinct>),
    /// A value of the records: their value as a concept (`concept`), else their number.
    Value { aggregate: Aggregate, concept: bool },
    /// The first (or `last`) day a record starts on: an endpoint's event, `days since`.
    Day { last: bool },
}

impl Of {
    /// `First` or `Last` (whether first), for a value taken from one record in date order.
    fn ordered(self) -> Option<bool> {
        match self {
            Of::Value {
                aggregate: Aggregate::First,
                ..
            } => Some(true),
            Of::Value {
                aggregate: Aggregate::Last,
                ..
            } => Some(false),
            _ => None,
        }
    }
}

impl Pending {
    /// Whether a count or value can share its reading: a query of one domain's records tested
    /// one by one (no alternatives, eras, first-ever record, visit or nested criterion), in
    /// windows of days or follow-up (no observation period to find).
    fn shareable(query: &EventQuery, windows: &[EdgeWindow]) -> bool {
        query.also.is_empty()
            && query.era.is_none()
            && query.filters.iter().all(|f| {
                !matches!(
                    f,
                    EventFilter::FirstEver | EventFilter::SameVisit | EventFilter::Where(_)
                )
            })
            && windows.iter().all(|w| match w.window {
                Window::FollowUp => true,
                Window::Days { observed, .. } => !observed,
            })
    }

    fn modality(&self) -> bool {
        self.query
            .filters
            .iter()
            .any(|f| matches!(f, EventFilter::Modality(_)))
    }
}

/// The name given a person's columns in a context without the person's row: no column has it.
const NO_PERSON_ROW: &str = "cohortql_no_person_row";

impl Ctx {
    /// Persons, before any index date: criteria in the index event's own filters.
    pub fn of_persons(plan: LogicalPlan, cols: &PersonCols) -> Ctx {
        Ctx {
            base: plan,
            attached: Vec::new(),
            pending: Vec::new(),
            key: vec![cols.id.clone()],
            person: cols.id.clone(),
            gender: cols.gender.clone(),
            year_of_birth: cols.year.clone(),
            month_of_birth: cols.month.clone(),
            day_of_birth: cols.day.clone(),
            index: None,
            index_visit: None,
            index_end: None,
            event: None,
            event_end: None,
            event_visit: None,
            follow_up: None,
            index_period: None,
        }
    }

    /// The records of a query, before any index date: for a `where` on records found alone.
    /// The person's sex and birth are no columns here; a criterion that read them would fail
    /// to plan (`reads_only_records` keeps such criteria in a context of persons).
    pub fn of_records(plan: LogicalPlan, rec: &Rec) -> Ctx {
        let none = || NO_PERSON_ROW.to_string();
        let cols = PersonCols {
            id: rec.person.clone(),
            gender: none(),
            year: none(),
            month: none(),
            day: none(),
        };
        Ctx::of_persons(plan, &cols)
    }

    /// Starts a new context whose rows are `plan`'s (its base is the plan as it is now).
    pub fn rebased(&self, plan: LogicalPlan) -> Ctx {
        Ctx {
            base: plan,
            attached: Vec::new(),
            pending: Vec::new(),
            ..self.clone()
        }
    }

    /// A window's first and last day for these rows, as written (`None`: an open side),
    /// before any observation period bounds it; `None` when the rows lack its anchor, so that
    /// nothing is found.
    fn window_days(&self, window: Window) -> Option<(Option<Expr>, Option<Expr>)> {
        match window {
            Window::FollowUp => self
                .follow_up
                .as_ref()
                .map(|(s, e)| (Some(c(s)), Some(c(e)))),
            Window::Days {
                anchor, start, end, ..
            } => self.anchor(anchor).map(|a| {
                (
                    start.map(|s| days_add(a.clone(), lit(s))),
                    end.map(|e| days_add(a, lit(e))),
                )
            }),
        }
    }

    /// The start column of the entry's period when it alone decides whether one observation
    /// period covers `[anchor + start, anchor + end]`: a window on the index that ends on it.
    fn period_deciding(&self, anchor: Anchor, start: i64, end: i64) -> Option<String> {
        let (period_start, period_end) = self.index_period.as_ref()?;
        let schema = self.base.schema();
        let present = schema.has_column_with_unqualified_name(period_start)
            && schema.has_column_with_unqualified_name(period_end);
        (anchor == Anchor::Index && end == 0 && start <= 0 && present).then(|| period_start.clone())
    }

    fn anchor(&self, anchor: Anchor) -> Option<Expr> {
        match anchor {
            Anchor::Index => self.index.as_deref().map(c),
            Anchor::Event => self.event.as_deref().map(c),
            Anchor::IndexEnd => self.index_end.as_deref().map(c),
            Anchor::EventEnd => self.event_end.as_deref().map(c),
            Anchor::FollowUpStart => self.follow_up.as_ref().map(|f| c(&f.0)),
            Anchor::FollowUpEnd => self.follow_up.as_ref().map(|f| c(&f.1)),
        }
    }
}

/// Whether a query's records are found without a context row: its filters read the record,
/// or (`where`) other records of its person and the person's observation, never the person's
/// sex or birth nor a visit of the context (`same visit`).
pub(super) fn reads_only_records(query: &EventQuery) -> bool {
    query.alternatives().all(|alt| {
        alt.filters.iter().all(|f| match f {
            EventFilter::SameVisit => false,
            EventFilter::Where(criterion) => !reads_person(criterion),
            _ => true,
        })
    })
}

/// Whether a query has a `where` criterion.
pub(super) fn has_where(query: &EventQuery) -> bool {
    query.alternatives().any(|alt| {
        alt.filters
            .iter()
            .any(|f| matches!(f, EventFilter::Where(_)))
    })
}

/// Whether a criterion reads the person's row (sex, birth), or a `same visit` it cannot know
/// without a context, anywhere inside it.
fn reads_person(criterion: &Criterion) -> bool {
    match criterion {
        Criterion::All(parts) | Criterion::Any(parts) => parts.iter().any(reads_person),
        Criterion::Not(inner) => reads_person(inner),
        Criterion::Events { query, .. } => !reads_only_records(query),
        Criterion::Sex(_) => true,
        Criterion::Compare { quantity, .. } => {
            matches!(quantity, Quantity::Age(_) | Quantity::CalendarAge(_))
        }
        Criterion::Observation { .. } => false,
    }
}

impl Planner<'_> {
    /// The records of a query for each context row, before any window: the context's columns
    /// and the records' (`Rec`).
    pub(super) fn matching(&mut self, query: &EventQuery, ctx: &Ctx) -> Result<(LogicalPlan, Rec)> {
        self.matching_in(query, Some(ctx))
    }

    /// The records of a query alone, no context joined: for a query whose filters read
    /// nothing but the record (`reads_only_records`).
    pub(super) fn matching_records(&mut self, query: &EventQuery) -> Result<(LogicalPlan, Rec)> {
        debug_assert!(reads_only_records(query));
        self.matching_in(query, None)
    }

    fn matching_in(&mut self, query: &EventQuery, ctx: Option<&Ctx>) -> Result<(LogicalPlan, Rec)> {
        if query.also.is_empty() {
            return self.matching_alt(query, ctx);
        }
        // A union of the alternatives' records, each under the first one's column names, with
        // the alternative's number.
        let context = ctx.map(|ctx| names(&ctx.base)).unwrap_or_default();
        let alternative = self.fresh("alternative");
        let mut plans = Vec::new();
        let mut target: Option<Rec> = None;
        for (i, alt) in query.alternatives().enumerate() {
            let (plan, rec) = self.matching_alt(alt, ctx)?;
            let target = target.get_or_insert_with(|| rec.clone());
            let mut exprs: Vec<Expr> = context.iter().map(|n| c(n)).collect();
            for (from, to) in rec.columns().into_iter().zip(target.columns()) {
                exprs.push(c(from).alias(to));
            }
            exprs.push(lit(i as i64).alias(&alternative));
            plans.push(project(plan, exprs)?);
        }
        let mut rec = target.expect("a query has one alternative");
        rec.alternative = Some(alternative);
        Ok((union(plans)?, rec))
    }

    /// The records of one alternative of a query (its `also` left aside), or its eras.
    fn matching_alt(
        &mut self,
        query: &EventQuery,
        ctx: Option<&Ctx>,
    ) -> Result<(LogicalPlan, Rec)> {
        let modality = query
            .filters
            .iter()
            .any(|f| matches!(f, EventFilter::Modality(_)));
        let (mut records, mut rec) =
            self.records(query.domain, modality, query.concepts.as_ref())?;
        if query.filters.contains(&EventFilter::FirstEver) {
            // Chosen before every other filter: they apply to the first record alone.
            let columns = names(&records);
            records = self.first_rows(
                records,
                &[rec.person.clone()],
                &[(rec.start.clone(), true), (rec.id.clone(), true)],
                &columns,
            )?;
        }
        for f in &query.filters {
            if let Some(test) = self.record_test(f, &rec)? {
                records = filter(records, test)?;
            }
        }
        if let Some(era) = &query.era {
            (records, rec) = self.eras(records, &rec, era)?;
        }
        let own;
        let (ctx, mut joined) = match ctx {
            Some(ctx) => {
                let left = self.aliased(ctx.base.clone())?;
                let right = self.aliased(records)?;
                let joined = join_on(
                    left,
                    right,
                    JoinType::Inner,
                    &[(ctx.person.as_str(), rec.person.as_str())],
                )?;
                (ctx, joined)
            }
            // Records found alone: a `where` is evaluated for each record, in a context of the
            // records themselves, which has no person's row (`reads_only_records`).
            None if has_where(query) => {
                own = Ctx::of_records(records.clone(), &rec);
                (&own, records)
            }
            None => return Ok((records, rec)),
        };
        for f in &query.filters {
            match f {
                EventFilter::SameVisit => {
                    let anchor_visit = if ctx.event.is_some() {
                        ctx.event_visit.as_deref()
                    } else {
                        ctx.index_visit.as_deref()
                    };
                    let test = match anchor_visit {
                        Some(v) => c(&rec.visit).eq(c(v)),
                        None => lit(false),
                    };
                    joined = filter(joined, test)?;
                }
                EventFilter::Where(criterion) => {
                    let columns = names(&joined);
                    // The event's end, for windows about `event end`.
                    let event_end = self.fresh("event_end");
                    let mut exprs: Vec<Expr> = columns.iter().map(|n| c(n)).collect();
                    exprs.push(super::stages::record_end(&rec)?.alias(&event_end));
                    let mut nested = ctx.rebased(project(joined, exprs)?);
                    nested.key.extend([rec.id.clone(), rec.start.clone()]);
                    nested.event = Some(rec.start.clone());
                    nested.event_end = Some(event_end);
                    nested.event_visit = Some(rec.visit.clone());
                    let holds = self.condition(criterion, &mut nested)?;
                    joined = keep(filter(self.joined(&nested)?, holds)?, &columns)?;
                }
                _ => {}
            }
        }
        Ok((joined, rec))
    }

    /// Each person's records chained into eras (see `study::Era`), as records: the smallest
    /// record id, the first start and the latest end; no concept, visit or value.
    pub(super) fn eras(
        &mut self,
        records: LogicalPlan,
        rec: &Rec,
        era: &Era,
    ) -> Result<(LogicalPlan, Rec)> {
        use datafusion::functions_aggregate::expr_fn::{max, min};
        let span_end = self.fresh("span_end");
        let spans = project(
            records,
            vec![
                c(&rec.person),
                c(&rec.id),
                c(&rec.start),
                super::stages::record_end(rec)?.alias(&span_end),
            ],
        )?;
        let island = self.fresh("era");
        let spans = self.islands(
            spans,
            &rec.person,
            &rec.start,
            &span_end,
            vec![
                super::stages::asc(&rec.start),
                super::stages::asc(&span_end),
            ],
            era.gap,
            &island,
        )?;
        let out = self.rec_names();
        let (id, start, end) = (
            self.fresh("era_id"),
            self.fresh("era_start"),
            self.fresh("era_end"),
        );
        let eras = aggregate(
            spans,
            vec![c(&rec.person), c(&island)],
            vec![
                min(c(&rec.id)).alias(&id),
                min(c(&rec.start)).alias(&start),
                max(c(&span_end)).alias(&end),
            ],
        )?;
        let null = |t: DataType| cast(lit(datafusion::common::ScalarValue::Null), t);
        let mut eras = project(
            eras,
            vec![
                c(&rec.person).alias(&out.person),
                c(&id).alias(&out.id),
                null(DataType::Int64).alias(&out.concept),
                c(&start).alias(&out.start),
                c(&end).alias(&out.end),
                null(DataType::Int64).alias(&out.visit),
                null(DataType::Float64).alias(&out.number),
                null(DataType::Int64).alias(&out.value_concept),
                null(DataType::Int64).alias(&out.unit),
                null(DataType::Float64).alias(&out.low),
                null(DataType::Float64).alias(&out.high),
                null(DataType::Utf8).alias(&out.modality),
                null(DataType::Int64).alias(&out.kind),
                null(DataType::Int64).alias(&out.days_supply),
                null(DataType::Int64).alias(&out.source_concept),
            ],
        )?;
        if let Some(test) = &era.duration {
            let days = days_between(c(&out.end), c(&out.start)) + lit(1i64);
            eras = filter(eras, number_test(test, days))?;
        }
        Ok((eras, out))
    }

    /// Whether every concept set a query tests (its own, its filters') is a list of ids.
    fn known_sets(&self, query: &EventQuery) -> bool {
        let filter_sets = query.filters.iter().filter_map(|f| match f {
            EventFilter::ValueIn(set)
            | EventFilter::SourceIn(set)
            | EventFilter::UnitIn(set)
            | EventFilter::KindIn(set) => Some(set),
            _ => None,
        });
        query
            .concepts
            .iter()
            .chain(filter_sets)
            .all(|set| self.known_ids(set).is_some())
    }

    /// A filter that looks at the record alone; `None` for those that need the context.
    fn record_test(&mut self, f: &EventFilter, rec: &Rec) -> Result<Option<Expr>> {
        let in_set = |p: &mut Self, column: &str, set: &ConceptExpr| -> Result<Expr> {
            p.in_concepts(c(column), set)
        };
        Ok(Some(match f {
            EventFilter::Value(test) => number_test(test, c(&rec.number)),
            EventFilter::ValueIn(set) => in_set(self, &rec.value_concept, set)?,
            EventFilter::SourceIn(set) => in_set(self, &rec.source_concept, set)?,
            EventFilter::AboveNormal => c(&rec.number).gt(c(&rec.high)),
            EventFilter::BelowNormal => c(&rec.number).lt(c(&rec.low)),
            EventFilter::UnitIn(set) => in_set(self, &rec.unit, set)?,
            EventFilter::Modality(codes) => upper(c(&rec.modality)).in_list(
                codes.iter().map(|m| lit(m.to_ascii_uppercase())).collect(),
                false,
            ),
            EventFilter::KindIn(set) => in_set(self, &rec.kind, set)?,
            EventFilter::Duration(test) => {
                let days = days_between(coalesce(vec![c(&rec.end), c(&rec.start)]), c(&rec.start))
                    + lit(1i64);
                number_test(test, days)
            }
            EventFilter::SameVisit | EventFilter::Where(_) | EventFilter::FirstEver => {
                return Ok(None)
            }
        }))
    }

    /// The query's records whose start or end day lies inside every window, for each context
    /// row.
    pub(super) fn found_in(
        &mut self,
        query: &EventQuery,
        windows: &[EdgeWindow],
        ctx: &Ctx,
    ) -> Result<(LogicalPlan, Rec)> {
        // Each window's first and last day are computed once per context row, so that the join
        // with the records compares dates rather than computing a difference per pair.
        // (the record's day, the bound's column, whether it is a lower bound)
        let mut tests: Vec<(Edge, String, bool)> = Vec::new();
        let mut exprs: Vec<Expr> = names(&ctx.base).iter().map(|n| c(n)).collect();
        // The observation period of each anchor day, attached once per day.
        let mut scratch = ctx.rebased(ctx.base.clone());
        let mut periods: Vec<(String, (Expr, Expr))> = Vec::new();
        for w in windows {
            let Some((lo, hi)) = ctx.window_days(w.window) else {
                return self.nothing_found(query, ctx);
            };
            let (lo, hi) = match w.window {
                Window::Days {
                    anchor,
                    observed: true,
                    ..
                } => {
                    // The period of the anchor's day (for a record's end, of its
                    // start): the earliest start and latest end of those that contain
                    // it; without one, the bounds are NULL and no record is found.
                    let Some(day) = ctx.anchor(anchor.period_anchor()) else {
                        return self.nothing_found(query, ctx);
                    };
                    let key = format!("{day}");
                    let (ps, pe) = match periods.iter().find(|(k, _)| *k == key) {
                        Some((_, bounds)) => bounds.clone(),
                        None => {
                            let person = ctx.person.clone();
                            let (covering, p) =
                                self.covering_periods(ctx.base.clone(), &person, day, 0, 0)?;
                            let bounds = self.attach(
                                &mut scratch,
                                covering,
                                vec![min(c(&p.start)), max(c(&p.end))],
                            )?;
                            let pair = (c(&bounds[0]), c(&bounds[1]));
                            periods.push((key, pair.clone()));
                            pair
                        }
                    };
                    // The record starts in the period.
                    for (bound, lower) in [(ps.clone(), true), (pe.clone(), false)] {
                        let name = self.fresh(if lower { "period_start" } else { "period_end" });
                        exprs.push(bound.alias(&name));
                        tests.push((Edge::Start, name, lower));
                    }
                    // An open side stops at the period's edge.
                    (Some(lo.unwrap_or(ps)), Some(hi.unwrap_or(pe)))
                }
                _ => (lo, hi),
            };
            if let Some(lo) = lo {
                let name = self.fresh("first_day");
                exprs.push(lo.alias(&name));
                tests.push((w.edge, name, true));
            }
            if let Some(hi) = hi {
                let name = self.fresh("last_day");
                exprs.push(hi.alias(&name));
                tests.push((w.edge, name, false));
            }
        }
        let base = if periods.is_empty() {
            ctx.base.clone()
        } else {
            self.joined(&scratch)?
        };
        let bounded = Ctx {
            base: project(base, exprs)?,
            ..ctx.clone()
        };
        let (rows, rec) = self.matching(query, &bounded)?;
        let end = super::stages::record_end(&rec)?;
        let mut test = lit(true);
        for (edge, bound, lower) in tests {
            let day = match edge {
                Edge::Start => c(&rec.start),
                Edge::End => end.clone(),
            };
            test = test.and(if lower {
                day.gt_eq(c(&bound))
            } else {
                day.lt_eq(c(&bound))
            });
        }
        Ok((filter(rows, test)?, rec))
    }

    /// The query's records for a window that has no days here: none.
    fn nothing_found(&mut self, query: &EventQuery, ctx: &Ctx) -> Result<(LogicalPlan, Rec)> {
        let (rows, rec) = self.matching(query, ctx)?;
        Ok((filter(rows, lit(false))?, rec))
    }

    /// Aggregates `rows` (which carry the context's key) per context row and left-joins the
    /// results onto the context; returns the new columns' names.
    pub(super) fn attach(
        &mut self,
        ctx: &mut Ctx,
        rows: LogicalPlan,
        aggregates: Vec<Expr>,
    ) -> Result<Vec<String>> {
        let named: Vec<(Expr, String)> = aggregates
            .into_iter()
            .map(|e| (e, self.fresh("agg")))
            .collect();
        let outputs = named.iter().map(|(_, n)| n.clone()).collect();
        let attached = self.aggregated(&ctx.key, rows, named)?;
        ctx.attached.push(attached);
        Ok(outputs)
    }

    /// `rows` aggregated per context row (`key`), each aggregate named as given, ready to be
    /// joined to the rows.
    fn aggregated(
        &mut self,
        key: &[String],
        rows: LogicalPlan,
        aggregates: Vec<(Expr, String)>,
    ) -> Result<Attached> {
        let renamed: Vec<String> = key.iter().map(|k| self.fresh(k)).collect();
        let outputs: Vec<String> = aggregates.iter().map(|(_, n)| n.clone()).collect();
        let aggregated = aggregate(
            rows,
            key.iter().map(|k| c(k)).collect(),
            aggregates.into_iter().map(|(e, n)| e.alias(n)).collect(),
        )?;
        let mut exprs: Vec<Expr> = key
            .iter()
            .zip(&renamed)
            .map(|(k, r)| c(k).alias(r))
            .collect();
        exprs.extend(outputs.iter().map(|n| c(n)));
        let aggregated = project(aggregated, exprs)?;
        let keys = key.iter().cloned().zip(renamed).collect();
        let plan = self.aliased(aggregated)?;
        Ok(Attached { plan, keys })
    }

    /// The context's rows with the columns of every attached aggregate: a chain of left joins
    /// built once, with no projection between them. (A projection per attachment would look up
    /// every column of a plan that widens with each criterion: planning grew with the cube of
    /// the number of criteria.) The pending counts and values are attached here, by domain.
    pub(super) fn joined(&mut self, ctx: &Ctx) -> Result<LogicalPlan> {
        let shared = self.shared_readings(ctx)?;
        if ctx.attached.is_empty() && shared.is_empty() {
            return Ok(ctx.base.clone());
        }
        let mut plan = self.aliased(ctx.base.clone())?;
        for a in ctx.attached.iter().chain(&shared) {
            let keys: Vec<(&str, &str)> = a
                .keys
                .iter()
                .map(|(l, r)| (l.as_str(), r.as_str()))
                .collect();
            plan = join_on(plan, a.plan.clone(), JoinType::Left, &keys)?;
        }
        Ok(plan)
    }

    /// The context's pending counts and values, one reading per domain (and need of the
    /// modality): the domain's records of any of their concept sets, joined once with the rows,
    /// each count or value taken over the joined rows that meet its own concept set, filters
    /// and windows. A first or last value is the value of one record, chosen in date order:
    /// values whose records cannot be the same (disjoint lists of concepts) and are chosen in
    /// the same order share a reading of their own, each joined row tagged with the value it
    /// belongs to; other counts and values share one aggregate.
    fn shared_readings(&mut self, ctx: &Ctx) -> Result<Vec<Attached>> {
        // A reading whose concept sets are not all lists of ids yet (plans only, which run no
        // lookup) is alone: its sets are subqueries, which an engine reads in a filter but
        // not inside a count or an `or`.
        let mut groups: Vec<((Domain, bool, Option<usize>), Vec<&Pending>)> = Vec::new();
        for (i, p) in ctx.pending.iter().enumerate() {
            let alone = (!self.known_sets(&p.query)).then_some(i);
            let at = (p.query.domain, p.modality(), alone);
            match groups.iter_mut().find(|(k, _)| *k == at) {
                Some((_, g)) => g.push(p),
                None => groups.push((at, vec![p])),
            }
        }
        let mut out = Vec::new();
        for ((domain, modality, _), pendings) in groups {
            let (ordered, aggregated): (Vec<&Pending>, Vec<&Pending>) =
                pendings.into_iter().partition(|p| p.of.ordered().is_some());
            if !aggregated.is_empty() {
                out.push(self.shared_aggregate(ctx, domain, modality, &aggregated)?);
            }
            for tagged in self.disjoint(ordered) {
                out.push(self.shared_firsts(ctx, domain, modality, &tagged)?);
            }
        }
        Ok(out)
    }

    /// First or last values in groups that can share a reading: chosen in the same order, of
    /// concept sets known as lists of ids that no other value of the group has.
    fn disjoint<'p>(&self, ordered: Vec<&'p Pending>) -> Vec<Vec<&'p Pending>> {
        // Each group with the ids its sets hold; `None` when a set is not a list of ids, and
        // then no other value joins the group.
        let mut groups: Vec<(Vec<&Pending>, Option<Vec<i64>>)> = Vec::new();
        for p in ordered {
            let mine = p
                .query
                .concepts
                .as_ref()
                .and_then(|set| self.plain_ids(set));
            let fits = |(g, taken): &(Vec<&Pending>, Option<Vec<i64>>)| {
                g[0].of.ordered() == p.of.ordered()
                    && match (taken, &mine) {
                        (Some(taken), Some(mine)) => mine.iter().all(|id| !taken.contains(id)),
                        _ => false,
                    }
            };
            match groups.iter_mut().find(|g| fits(g)) {
                Some((g, Some(taken))) => {
                    g.push(p);
                    taken.extend(mine.into_iter().flatten());
                }
                _ => groups.push((vec![p], mine)),
            }
        }
        groups.into_iter().map(|(g, _)| g).collect()
    }

    /// The domain's records of any of the pendings' concept sets joined with the context's
    /// rows (by person), with each pending's test of a joined row: its concept set, filters,
    /// windows, and for a value, that the record has one.
    fn reading(
        &mut self,
        ctx: &Ctx,
        domain: Domain,
        modality: bool,
        pendings: &[&Pending],
    ) -> Result<(LogicalPlan, Rec, Vec<Expr>)> {
        let sets: Vec<Option<&ConceptExpr>> =
            pendings.iter().map(|p| p.query.concepts.as_ref()).collect();
        let kept = self.kept_index_reading(domain, modality, pendings)?;
        // One set for all: the reading's filter is each one's concept test already. The kept
        // index records are not filtered: each count tests its concepts in the join, whose
        // engine then sees the exact number of kept records when it chooses the side to hash.
        let one_set = kept.is_none() && sets.windows(2).all(|w| w[0] == w[1]);
        // The consent rule, a test of each record alone, is applied once the records are
        // joined with the rows: to the records of the rows' persons, not to all of the sets'
        // (the breast study's BMI reading: 10,000 joined rows instead of 5 million records).
        // The kept index records had it applied when they were read.
        let (records, rec, consent_after_join) = match kept {
            Some((plan, rec)) => (plan, rec, false),
            None => {
                let (plan, rec) = self.records_of_any_before_consent(domain, modality, &sets)?;
                (plan, rec, true)
            }
        };
        let mut exprs: Vec<Expr> = names(&ctx.base).iter().map(|n| c(n)).collect();
        let mut tests: Vec<Expr> = Vec::new();
        let end = super::stages::record_end(&rec)?;
        for p in pendings {
            let mut test = match (&p.query.concepts, one_set) {
                (Some(set), false) => self.in_concepts(c(&rec.concept), set)?,
                _ => lit(true),
            };
            for f in &p.query.filters {
                if let Some(t) = self.record_test(f, &rec)? {
                    test = test.and(t);
                }
            }
            if let Of::Value { concept, .. } = p.of {
                test = test.and(c(value_column(&rec, concept)).is_not_null());
            }
            for w in &p.windows {
                let Some((lo, hi)) = ctx.window_days(w.window) else {
                    test = lit(false);
                    continue;
                };
                let day = match w.edge {
                    Edge::Start => c(&rec.start),
                    Edge::End => end.clone(),
                };
                for (bound, lower) in [(lo, true), (hi, false)] {
                    let Some(bound) = bound else { continue };
                    // Each bound computed once per row, so that the joined rows compare
                    // dates rather than computing a difference per pair.
                    let name = self.fresh(if lower { "first_day" } else { "last_day" });
                    exprs.push(bound.alias(&name));
                    test = test.and(if lower {
                        day.clone().gt_eq(c(&name))
                    } else {
                        day.clone().lt_eq(c(&name))
                    });
                }
            }
            tests.push(test);
        }
        let left = self.aliased(project(ctx.base.clone(), exprs)?)?;
        let right = self.aliased(records)?;
        let rows = join_on(
            left,
            right,
            JoinType::Inner,
            &[(ctx.person.as_str(), rec.person.as_str())],
        )?;
        let (rows, rec) = if consent_after_join {
            self.consent_records(rows, rec)?
        } else {
            (rows, rec)
        };
        Ok((rows, rec, tests))
    }

    /// The index event's kept records (`index_records_stage`), when they hold every record
    /// the pendings could count: while the population is
    /// planned (the stage is let go of after it), for counts of the index event's domain whose
    /// concepts are among the index event's, read with no filter but their concepts and
    /// windows (a duration reads the start and end the kept records have), and an index event
    /// read with no filter, alternative or era, so that it kept every record of its concepts.
    /// The population then reads no domain twice for its arms and exclusions on the index
    /// day (`drug in celecoxib on index`).
    fn kept_index_reading(
        &mut self,
        domain: Domain,
        modality: bool,
        pendings: &[&Pending],
    ) -> Result<Option<(LogicalPlan, Rec)>> {
        let Some(kept) = self
            .index_records
            .as_ref()
            .filter(|_| self.index_records_shared)
        else {
            return Ok(None);
        };
        let index = &self.study.index;
        let plain = |q: &EventQuery| q.also.is_empty() && q.era.is_none();
        if modality
            || index.at_date.is_some()
            || index.query.domain != domain
            || !plain(&index.query)
            || !index.query.filters.is_empty()
            || !names(&kept.plan).contains(&kept.rec.concept)
        {
            return Ok(None);
        }
        let reads_kept = |p: &Pending| {
            plain(&p.query)
                && matches!(p.of, Of::Count(_))
                && p.query
                    .filters
                    .iter()
                    .all(|f| matches!(f, EventFilter::Duration(_)))
        };
        if !pendings.iter().all(|p| reads_kept(p)) {
            return Ok(None);
        }
        // Every pending's concepts among the index event's, both known as lists of ids.
        if let Some(set) = &index.query.concepts {
            let Some(held) = self.known_ids(set) else {
                return Ok(None);
            };
            for p in pendings {
                let Some(wanted) = p.query.concepts.as_ref().and_then(|s| self.known_ids(s)) else {
                    return Ok(None);
                };
                let inside = wanted
                    .ids
                    .iter()
                    .all(|id| held.ids.binary_search(id).is_ok());
                if !inside || (wanted.null && !held.null) {
                    return Ok(None);
                }
            }
        }
        Ok(Some((kept.plan.clone(), kept.rec.clone())))
    }

    /// Counts, and minimum, maximum or mean values, of one reading: one aggregate per row.
    fn shared_aggregate(
        &mut self,
        ctx: &Ctx,
        domain: Domain,
        modality: bool,
        pendings: &[&Pending],
    ) -> Result<Attached> {
        let (rows, rec, mut tests) = self.reading(ctx, domain, modality, pendings)?;
        let computed = |of: Of, only: Option<Expr>| -> Result<Expr> {
            let of_rows = |e: Expr| -> Result<Expr> {
                Ok(match &only {
                    Some(t) => when(t.clone(), e).end()?,
                    None => e,
                })
            };
            Ok(match of {
                Of::Count(None) => count(of_rows(lit(1i64))?),
                Of::Count(Some(Distinct::Concepts)) => count_distinct(of_rows(c(&rec.concept))?),
                Of::Count(Some(Distinct::Days)) => count_distinct(of_rows(c(&rec.start))?),
                Of::Count(Some(Distinct::Visits)) => count_distinct(of_rows(c(&rec.visit))?),
                Of::Day { last: false } => min(of_rows(c(&rec.start))?),
                Of::Day { last: true } => max(of_rows(c(&rec.start))?),
                Of::Value { aggregate, concept } => {
                    let v = of_rows(cast(c(value_column(&rec, concept)), DataType::Float64))?;
                    match aggregate {
                        Aggregate::Min => min(v),
                        Aggregate::Max => max(v),
                        Aggregate::Mean => avg(v),
                        Aggregate::First | Aggregate::Last => {
                            unreachable!("first and last values are chosen by shared_firsts")
                        }
                    }
                }
            })
        };
        let (rows, aggregates) = if let [only] = pendings[..] {
            let rows = filter(rows, tests.remove(0))?;
            (rows, vec![(computed(only.of, None)?, only.output.clone())])
        } else {
            let any = tests
                .iter()
                .cloned()
                .reduce(|a, b| a.or(b))
                .expect("a group has a pending");
            let rows = filter(rows, any)?;
            let mut aggregates = Vec::new();
            for (p, test) in pendings.iter().zip(tests) {
                aggregates.push((computed(p.of, Some(test))?, p.output.clone()));
            }
            (rows, aggregates)
        };
        self.aggregated(&ctx.key, rows, aggregates)
    }

    /// First or last values of one reading (see `disjoint`): each joined row tagged with the
    /// value whose test it meets, the first row per context row and tag in date order (then
    /// record id) kept, and its value put in that value's column.
    fn shared_firsts(
        &mut self,
        ctx: &Ctx,
        domain: Domain,
        modality: bool,
        pendings: &[&Pending],
    ) -> Result<Attached> {
        let (rows, rec, tests) = self.reading(ctx, domain, modality, pendings)?;
        let first = pendings[0].of.ordered().expect("first or last values");
        let tag = self.fresh("tag");
        let mut tagged = when(tests[0].clone(), lit(0i64));
        for (i, test) in tests.iter().enumerate().skip(1) {
            tagged = tagged.when(test.clone(), lit(i as i64));
        }
        let mut exprs: Vec<Expr> = names(&rows).iter().map(|n| c(n)).collect();
        exprs.push(tagged.end()?.alias(&tag));
        let rows = filter(project(rows, exprs)?, c(&tag).is_not_null())?;
        let mut partition = ctx.key.clone();
        partition.push(tag.clone());
        let order = [(rec.start.clone(), first), (rec.id.clone(), first)];
        let mut columns = partition.clone();
        columns.extend([rec.number.clone(), rec.value_concept.clone()]);
        let chosen = self.first_rows(rows, &partition, &order, &columns)?;
        let mut aggregates = Vec::new();
        for (i, p) in pendings.iter().enumerate() {
            let Of::Value { concept, .. } = p.of else {
                unreachable!("first and last values")
            };
            let v = cast(c(value_column(&rec, concept)), DataType::Float64);
            let mine = when(c(&tag).eq(lit(i as i64)), v).end()?;
            aggregates.push((max(mine), p.output.clone()));
        }
        self.aggregated(&ctx.key, chosen, aggregates)
    }

    /// How many of the query's records (or distinct concepts, days or visits) lie in the
    /// window, as a column of the context (0 when none).
    pub(super) fn count_in_window(
        &mut self,
        ctx: &mut Ctx,
        query: &EventQuery,
        window: &Window,
        distinct: Option<Distinct>,
    ) -> Result<Expr> {
        self.count_in_windows(ctx, query, &on_start(window), distinct)
    }

    /// The column a count or value will be attached as, left pending in the context to share
    /// its domain's reading (`Planner::joined`); `None` when it cannot share one.
    fn pend(
        &mut self,
        ctx: &mut Ctx,
        query: &EventQuery,
        windows: &[EdgeWindow],
        of: Of,
    ) -> Option<String> {
        if !Pending::shareable(query, windows) {
            return None;
        }
        let output = self.fresh("agg");
        ctx.pending.push(Pending {
            query: query.clone(),
            windows: windows.to_vec(),
            of,
            output: output.clone(),
        });
        Some(output)
    }

    /// A value of the query's records in the window (the first or last in date order, or
    /// their minimum, maximum or mean), as a number column of the context (NULL when no
    /// record in the window has one): the value as a concept id when `concept`.
    pub(super) fn value_in_window(
        &mut self,
        ctx: &mut Ctx,
        query: &EventQuery,
        window: &Window,
        aggregate: Aggregate,
        concept: bool,
    ) -> Result<Expr> {
        let windows = on_start(window);
        if let Some(output) = self.pend(ctx, query, &windows, Of::Value { aggregate, concept }) {
            return Ok(c(&output));
        }
        let (rows, rec) = self.found_in(query, &windows, ctx)?;
        let column = value_column(&rec, concept).to_string();
        let v = cast(c(&column), DataType::Float64);
        let rows = filter(rows, c(&column).is_not_null())?;
        let (rows, aggregated) = match aggregate {
            Aggregate::First | Aggregate::Last => {
                let first = aggregate == Aggregate::First;
                let mut order = vec![(rec.start.clone(), first), (rec.id.clone(), first)];
                order.extend(rec.alternative.clone().map(|a| (a, first)));
                let mut columns = ctx.key.clone();
                columns.push(column.clone());
                let chosen = self.first_rows(rows, &ctx.key, &order, &columns)?;
                (chosen, max(v))
            }
            Aggregate::Min => (rows, min(v)),
            Aggregate::Max => (rows, max(v)),
            Aggregate::Mean => (rows, avg(v)),
        };
        let out = self.attach(ctx, rows, vec![aggregated])?.remove(0);
        Ok(c(&out))
    }

    /// The day the query's first (or `last`) record in the window starts, as a date column
    /// of the context (NULL when none).
    pub(super) fn day_in_window(
        &mut self,
        ctx: &mut Ctx,
        query: &EventQuery,
        window: &Window,
        last: bool,
    ) -> Result<Expr> {
        let windows = on_start(window);
        if let Some(output) = self.pend(ctx, query, &windows, Of::Day { last }) {
            return Ok(c(&output));
        }
        let (rows, rec) = self.found_in(query, &windows, ctx)?;
        let day = if last {
            max(c(&rec.start))
        } else {
            min(c(&rec.start))
        };
        let out = self.attach(ctx, rows, vec![day])?.remove(0);
        Ok(c(&out))
    }

    /// How many of the query's records (or distinct concepts, days or visits) meet every
    /// window, as a column of the context (0 when none).
    pub(super) fn count_in_windows(
        &mut self,
        ctx: &mut Ctx,
        query: &EventQuery,
        windows: &[EdgeWindow],
        distinct: Option<Distinct>,
    ) -> Result<Expr> {
        if let Some(output) = self.pend(ctx, query, windows, Of::Count(distinct)) {
            return Ok(coalesce(vec![c(&output), lit(0i64)]));
        }
        let (rows, rec) = self.found_in(query, windows, ctx)?;
        let counted = match distinct {
            None => count(lit(1i64)),
            Some(Distinct::Concepts) => count_distinct(c(&rec.concept)),
            Some(Distinct::Days) => count_distinct(c(&rec.start)),
            Some(Distinct::Visits) => count_distinct(c(&rec.visit)),
        };
        let n = self.attach(ctx, rows, vec![counted])?.remove(0);
        Ok(coalesce(vec![c(&n), lit(0i64)]))
    }

    /// A criterion as a boolean expression over the context's columns (never NULL), attaching
    /// what it needs to `ctx.plan`.
    pub(super) fn condition(&mut self, criterion: &Criterion, ctx: &mut Ctx) -> Result<Expr> {
        Ok(match criterion {
            Criterion::All(parts) => {
                let mut all = lit(true);
                for p in parts {
                    all = all.and(self.condition(p, ctx)?);
                }
                all
            }
            Criterion::Any(parts) => {
                let mut any = lit(false);
                for p in parts {
                    any = any.or(self.condition(p, ctx)?);
                }
                any
            }
            Criterion::Not(inner) => not(self.condition(inner, ctx)?),
            Criterion::Events {
                count,
                query,
                window,
                more,
            } => {
                if count.op == CountOp::AtLeast && count.n == 0 {
                    return Ok(lit(true));
                }
                let mut windows = on_start(window).to_vec();
                windows.extend(more.iter().copied());
                let n = self.count_in_windows(ctx, query, &windows, count.distinct)?;
                let wanted = lit(count.n as i64);
                match count.op {
                    CountOp::AtLeast => n.gt_eq(wanted),
                    CountOp::AtMost => n.lt_eq(wanted),
                    CountOp::Exactly => n.eq(wanted),
                }
            }
            Criterion::Observation { anchor, start, end } => {
                let Some(a) = ctx.anchor(*anchor) else {
                    return Ok(lit(false));
                };
                if let Some(period_start) = ctx.period_deciding(*anchor, *start, *end) {
                    // A period that covers the window contains the index date, and the entry's
                    // period starts no later than any such one.
                    return Ok(coalesce(vec![
                        c(&period_start).lt_eq(days_add(a, lit(*start))),
                        lit(false),
                    ]));
                }
                let (covering, _) =
                    self.covering_periods(ctx.base.clone(), &ctx.person.clone(), a, *start, *end)?;
                let n = self
                    .attach(ctx, covering, vec![count(lit(1i64))])?
                    .remove(0);
                coalesce(vec![c(&n), lit(0i64)]).gt_eq(lit(1i64))
            }
            Criterion::Sex(ids) => coalesce(vec![
                c(&ctx.gender).in_list(ids.iter().map(|i| lit(*i)).collect(), false),
                lit(false),
            ]),
            Criterion::Compare { quantity, test } => match self.quantity(*quantity, ctx) {
                None => lit(false),
                Some(q) => coalesce(vec![value_test(test, q), lit(false)]),
            },
        })
    }

    /// The rows joined with each observation period of their person that covers every day
    /// from `anchor + start` to `anchor + end`.
    pub(super) fn covering_periods(
        &mut self,
        rows: LogicalPlan,
        person: &str,
        anchor: Expr,
        start: i64,
        end: i64,
    ) -> Result<(LogicalPlan, PeriodCols)> {
        // As stored, without a consent rule: a period with a NULL column covers no day, and
        // without the filter the engine estimates the periods at their full count.
        let (periods, p) = if self.has_consent_rule() {
            self.periods()?
        } else {
            self.period_rows()?
        };
        // The days to cover, computed once per row rather than once per row and period.
        let (first_day, last_day) = (self.fresh("first_day"), self.fresh("last_day"));
        let mut exprs: Vec<Expr> = names(&rows).iter().map(|n| c(n)).collect();
        exprs.push(days_add(anchor.clone(), lit(start)).alias(&first_day));
        exprs.push(days_add(anchor, lit(end)).alias(&last_day));
        let left = self.aliased(project(rows, exprs)?)?;
        let right = self.aliased(periods)?;
        let covering = filter(
            join_on(left, right, JoinType::Inner, &[(person, p.person.as_str())])?,
            c(&p.start)
                .lt_eq(c(&first_day))
                .and(c(&p.end).gt_eq(c(&last_day))),
        )?;
        Ok((covering, p))
    }

    /// The rows, each with the observation period of its person that contains `date`, or with
    /// NULL period columns when none does (a left join).
    pub(super) fn containing_period(
        &mut self,
        rows: LogicalPlan,
        person: &str,
        date: Expr,
    ) -> Result<(LogicalPlan, PeriodCols)> {
        let day = self.fresh("day");
        let mut exprs: Vec<Expr> = names(&rows).iter().map(|n| c(n)).collect();
        exprs.push(date.alias(&day));
        let left = self.aliased(project(rows, exprs)?)?;
        // The SQL unparser writes filters under a join's side as the outer query's WHERE, which
        // would turn this outer join into an inner one. Without a consent rule the periods need
        // no filter (a period with a NULL column contains no day); with one, they are grouped
        // by all their columns (periods are distinct rows), as an aggregate is always its own
        // subquery.
        let (right, p) = if self.has_consent_rule() {
            let (periods, p) = self.periods()?;
            let columns: Vec<Expr> = names(&periods).iter().map(|n| c(n)).collect();
            (super::aggregate(periods, columns, vec![])?, p)
        } else {
            self.period_rows()?
        };
        let right = self.aliased(right)?;
        let contains = c(&p.start).lt_eq(c(&day)).and(c(&p.end).gt_eq(c(&day)));
        let joined = super::join_filtered(
            left,
            right,
            JoinType::Left,
            &[(person, p.person.as_str())],
            contains,
        )?;
        Ok((joined, p))
    }

    /// A person's age, year or date on the quantity's anchor, or `None` without that anchor.
    pub(super) fn quantity(&self, quantity: Quantity, ctx: &Ctx) -> Option<Expr> {
        let date = ctx.anchor(quantity.anchor())?;
        let part = |p: &str, d: Expr| cast(date_part(lit(p), d), DataType::Int64);
        Some(match quantity {
            Quantity::Age(_) => {
                // Completed years: a missing month or day of birth counts as 1.
                let month = coalesce(vec![c(&ctx.month_of_birth), lit(1i64)]);
                let day = coalesce(vec![c(&ctx.day_of_birth), lit(1i64)]);
                let (m, d) = (part("month", date.clone()), part("day", date.clone()));
                let before_birthday = m.clone().lt(month.clone()).or(m.eq(month).and(d.lt(day)));
                part("year", date)
                    - c(&ctx.year_of_birth)
                    - datafusion::logical_expr::when(before_birthday, lit(1i64))
                        .otherwise(lit(0i64))
                        .expect("a CASE with one branch")
            }
            Quantity::CalendarAge(_) => part("year", date) - c(&ctx.year_of_birth),
            Quantity::Year(_) => part("year", date),
            Quantity::Date(_) => date,
        })
    }
}

/// The column a value is read from: the value as a concept, or the number.
/// A window on the records' start day.
fn on_start(window: &Window) -> [EdgeWindow; 1] {
    [EdgeWindow {
        edge: Edge::Start,
        window: *window,
    }]
}

fn value_column(rec: &Rec, concept: bool) -> &str {
    if concept {
        &rec.value_concept
    } else {
        &rec.number
    }
}

fn compare(op: CmpOp, a: Expr, b: Expr) -> Expr {
    match op {
        CmpOp::Lt => a.lt(b),
        CmpOp::Le => a.lt_eq(b),
        CmpOp::Eq => a.eq(b),
        CmpOp::Ne => a.not_eq(b),
        CmpOp::Ge => a.gt_eq(b),
        CmpOp::Gt => a.gt(b),
    }
}

pub(super) fn number_test(test: &NumberTest, v: Expr) -> Expr {
    match *test {
        NumberTest::Compare(op, x) => compare(op, v, lit(x)),
        NumberTest::Between(low, high) => v.clone().gt_eq(lit(low)).and(v.lt_eq(lit(high))),
    }
}

fn value_lit(v: Value) -> Expr {
    match v {
        Value::Number(x) => lit(x),
        Value::Date(d) => date_lit(d),
    }
}

fn value_test(test: &ValueTest, v: Expr) -> Expr {
    match test {
        ValueTest::Compare(op, x) => compare(*op, v, value_lit(*x)),
        ValueTest::Between(low, high) => v
            .clone()
            .gt_eq(value_lit(*low))
            .and(v.lt_eq(value_lit(*high))),
    }
}
