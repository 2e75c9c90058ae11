//! The stages of a study as plans: entries, population (with attrition), follow-up, cohort and
//! dataset. Each stage reads the previous one's table, whose columns are named here.

use super::criteria::Ctx;
use super::days::{days_add, days_between};
use super::records::date_lit;
use super::{aggregate, c, filter, join_on, keep, names, project, union, with_window, Planner};
use crate::study::*;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Result, ScalarValue};
use datafusion::functions::expr_fn::{coalesce, greatest, least};
use datafusion::functions_aggregate::expr_fn::{count, count_distinct, max, min, sum};
use datafusion::functions_aggregate::min_max::max_udaf;
use datafusion::functions_aggregate::sum::sum_udaf;
use datafusion::logical_expr::expr::WindowFunction;
use datafusion::logical_expr::{
    cast, lit, when, Expr, ExprFunctionExt, JoinType, LogicalPlan, LogicalPlanBuilder, SortExpr,
    WindowFrame, WindowFrameBound, WindowFrameUnits, WindowFunctionDefinition,
};

/// The columns of the entries stage; later stages add theirs after these.
pub const PERSON: &str = "person_id";
pub const INDEX_RECORD: &str = "index_record_id";
pub const INDEX_DATE: &str = "index_date";
pub const INDEX_VISIT: &str = "index_visit_id";
/// The index record's end date, a missing one filled in (`Planner::record_end`).
pub const INDEX_END: &str = "index_end_date";
/// Which alternative of a union index event (`condition in x | observation in x`) the index
/// record comes from, 0 for the first: with the record id, it identifies the record.
pub const INDEX_SOURCE: &str = "index_source";
pub const PERIOD_START: &str = "period_start";
pub const PERIOD_END: &str = "period_end";
pub const GENDER: &str = "gender_concept_id";
pub const YEAR_OF_BIRTH: &str = "year_of_birth";
pub const MONTH_OF_BIRTH: &str = "month_of_birth";
pub const DAY_OF_BIRTH: &str = "day_of_birth";
/// The exposure arm (population stage on).
pub const ARM: &str = "arm";
pub const FOLLOW_UP_START: &str = "follow_up_start";
pub const FOLLOW_UP_END: &str = "follow_up_end";
/// In the `GROUPS` stage: the number of the entry's group of entries to merge.
const COLLAPSE_GROUP: &str = "collapse_group";
/// The dataset's person-time column: days from follow-up start to end, both included.
pub const FOLLOW_UP_DAYS: &str = "follow_up_days";

const ENTRY_COLUMNS: [&str; 12] = [
    PERSON,
    INDEX_RECORD,
    INDEX_SOURCE,
    INDEX_DATE,
    INDEX_VISIT,
    INDEX_END,
    PERIOD_START,
    PERIOD_END,
    GENDER,
    YEAR_OF_BIRTH,
    MONTH_OF_BIRTH,
    DAY_OF_BIRTH,
];

/// The name of the population stage's flag for step `i` (0-based): true when the entry passes.
pub fn step_column(i: usize) -> String {
    format!("step_{}", i + 1)
}

/// The columns of the attrition plans: the attrition row (0 for the index event's records),
/// and the persons and entries remaining after it.
pub const ATTRITION_STEP: &str = "step";
pub const ATTRITION_PERSONS: &str = "persons";
pub const ATTRITION_ENTRIES: &str = "entries";

/// The inclusion-rule plan's columns for step `i` (0-based).
pub fn inclusion_columns(i: usize) -> (String, String) {
    (format!("rule_persons_{i}"), format!("rule_entries_{i}"))
}

/// The attrition plan's columns for row `i`.
pub fn attrition_columns(i: usize) -> (String, String) {
    (format!("persons_{i}"), format!("entries_{i}"))
}

fn strings(columns: &[&str]) -> Vec<String> {
    columns.iter().map(|s| s.to_string()).collect()
}

/// A record's end date as exits read it: a missing end is the start plus the days supplied
/// (drugs with a supply) or else the start plus 1 day, as OHDSI's Circe fills it; an end before
/// the start is the start.
pub(super) fn record_end(rec: &super::records::Rec) -> Result<Expr> {
    let supplied =
        when(c(&rec.days_supply).gt(lit(0i64)), c(&rec.days_supply)).otherwise(lit(1i64))?;
    Ok(greatest(vec![
        coalesce(vec![c(&rec.end), days_add(c(&rec.start), supplied)]),
        c(&rec.start),
    ]))
}

pub(super) fn asc(name: &str) -> SortExpr {
    c(name).sort(true, false)
}

/// The index event's records as a plan, with the names of their columns; `persons` names the
/// person columns joined to them (`None`: the records alone, `chooses_from_records`).
#[derive(Clone)]
pub(super) struct KeptRecords {
    pub plan: LogicalPlan,
    pub rec: super::records::Rec,
    pub persons: Option<super::records::PersonCols>,
}

/// An aggregate over all rows in `order`, from the first row to `last`.
fn running(
    function: WindowFunctionDefinition,
    arg: Expr,
    order: Vec<SortExpr>,
    last: WindowFrameBound,
) -> Result<Expr> {
    let frame = WindowFrame::new_bounds(
        WindowFrameUnits::Rows,
        WindowFrameBound::Preceding(ScalarValue::UInt64(None)),
        last,
    );
    Expr::from(WindowFunction::new(function, vec![arg]))
        .order_by(order)
        .window_frame(frame)
        .build()
}

/// Days since 1970-01-01 plus this, to make every date's day number positive and below
/// `DAY_SPAN` (dates within some 1,400 years of 1970).
const DAY_OFFSET: i64 = 1 << 19;
/// Day numbers of one island fit below this; islands are numbered above it.
const DAY_SPAN: i64 = 1 << 20;

impl Planner<'_> {
    /// Groups each person's spans, in `order` (after the person), into islands: a span starts a
    /// new island when it begins more than `gap` days after every earlier span of the person
    /// ended. Adds the island's number, unique over all persons.
    ///
    /// Windows run over all rows in one order rather than one window per person, whose
    /// per-partition cost dominates when persons are many and their spans few. The running
    /// maximum of earlier ends must then not reach into the previous person: each end is
    /// encoded with its person's rank above its day number, so the maximum over earlier rows
    /// belongs to this person exactly when its rank is this person's.
    pub(super) fn islands(
        &mut self,
        plan: LogicalPlan,
        person: &str,
        start: &str,
        end: &str,
        order: Vec<SortExpr>,
        gap: i64,
        island: &str,
    ) -> Result<LogicalPlan> {
        let columns = names(&plan);
        let mut sort = vec![asc(person)];
        sort.extend(order);
        let epoch = date_lit(chrono::NaiveDate::from_ymd_opt(1970, 1, 1).expect("a date"));
        let day = |date: &str| days_between(c(date), epoch.clone()) + lit(DAY_OFFSET);
        let running = |function, arg, last| running(function, arg, sort.clone(), last);
        let max = || WindowFunctionDefinition::AggregateUDF(max_udaf());
        let sum = || WindowFunctionDefinition::AggregateUDF(sum_udaf());
        let (previous_person, rank, previous, starts) = (
            self.fresh("previous_person"),
            self.fresh("person_rank"),
            self.fresh("previous_end"),
            self.fresh("starts_island"),
        );
        // Each person's rank in the order: 1, 2, 3, … (a person's rows are contiguous).
        let lag = datafusion::functions_window::expr_fn::lag(c(person), Some(1), None)
            .order_by(sort.clone())
            .build()?
            .alias(&previous_person);
        let plan = with_window(plan, vec![lag])?;
        let new_person = when(
            c(&previous_person)
                .is_null()
                .or(c(&previous_person).not_eq(c(person))),
            lit(1i64),
        )
        .otherwise(lit(0i64))?;
        let plan = with_window(
            plan,
            vec![running(sum(), new_person, WindowFrameBound::CurrentRow)?.alias(&rank)],
        )?;
        // The latest end among the person's earlier spans, as (rank, day) in one number.
        let encoded = c(&rank) * lit(DAY_SPAN) + day(end);
        let one_before = WindowFrameBound::Preceding(ScalarValue::UInt64(Some(1)));
        let plan = with_window(
            plan,
            vec![running(max(), encoded, one_before)?.alias(&previous)],
        )?;
        // Earlier ranks encode below this person's rank times the span (no division, which
        // some SQL dialects do in floating point).
        let person_base = c(&rank) * lit(DAY_SPAN);
        let other_person = c(&previous).lt(person_base.clone());
        let previous_end_day = c(&previous) - person_base;
        let new_island = when(
            c(&previous)
                .is_null()
                .or(other_person)
                .or((day(start) - previous_end_day).gt(lit(gap))),
            lit(1i64),
        )
        .otherwise(lit(0i64))?;
        let mut with_starts = columns.clone();
        with_starts.push(starts.clone());
        let mut exprs: Vec<Expr> = columns.iter().map(|n| c(n)).collect();
        exprs.push(new_island.alias(&starts));
        let plan = project(plan, exprs)?;
        let plan = with_window(
            plan,
            vec![running(sum(), c(&starts), WindowFrameBound::CurrentRow)?.alias(island)],
        )?;
        let mut keep_columns = columns;
        keep_columns.push(island.to_string());
        keep(plan, &keep_columns)
    }

    /// Whether the entries are chosen from the index event's records alone, their persons
    /// joined after: with person ids known unique (`DataFacts`) and an index event whose
    /// filters need no person's row (`criteria::reads_only_records`: the record, or a `where`
    /// that reads no sex or birth).
    fn chooses_from_records(&self) -> bool {
        self.facts.person_ids_unique && super::criteria::reads_only_records(&self.study.index.query)
    }

    /// The index event's records, for an engine to keep as the stage `INDEX_RECORDS`
    /// (`use_index_records`): the entries and the attrition's first row then read them once,
    /// and the engine plans those stages knowing how many there are (none, and it reads no
    /// observation period or person). As `read_index_records` reads them, with the columns the
    /// entries use.
    pub fn index_records_stage(&mut self) -> Result<LogicalPlan> {
        let KeptRecords {
            plan: rows,
            rec,
            persons: pc,
        } = self.read_index_records()?;
        // The columns the entries read (`record_end` included), and the concept, which the
        // population's counts of the index event's concepts read (`kept_index_reading`).
        let mut read = vec![
            rec.person.clone(),
            rec.id.clone(),
            rec.concept.clone(),
            rec.start.clone(),
            rec.end.clone(),
            rec.visit.clone(),
            rec.days_supply.clone(),
        ];
        read.extend(rec.alternative.clone());
        if let Some(pc) = &pc {
            read.extend([&pc.gender, &pc.year, &pc.month, &pc.day].map(|s| s.to_string()));
        }
        let present = names(&rows);
        read.retain(|n| present.contains(n));
        let rows = keep(rows, &read)?;
        self.index_records = Some(KeptRecords {
            plan: rows.clone(),
            rec,
            persons: pc,
        });
        Ok(rows)
    }

    /// The kept `INDEX_RECORDS` stage, read instead of the records.
    pub fn use_index_records(&mut self, kept: LogicalPlan) {
        if let Some(records) = self.index_records.as_mut() {
            records.plan = kept;
        }
    }

    /// The index event's records (with the columns of their persons unless the entries are
    /// chosen from the records alone): the kept stage when there is one.
    fn index_event_records(&mut self) -> Result<KeptRecords> {
        match &self.index_records {
            Some(kept) => Ok(kept.clone()),
            None => self.read_index_records(),
        }
    }

    /// The index event's records as read from the repository: alone when the entries are
    /// chosen from them (`chooses_from_records`); otherwise joined with their persons, a
    /// `where` applied.
    fn read_index_records(&mut self) -> Result<KeptRecords> {
        let study = self.study;
        if self.chooses_from_records() {
            let (plan, rec) = self.matching_records(&study.index.query)?;
            return Ok(KeptRecords {
                plan,
                rec,
                persons: None,
            });
        }
        let (persons, pc) = self.persons()?;
        let ctx = Ctx::of_persons(persons, &pc);
        let (plan, rec) = self.matching(&study.index.query, &ctx)?;
        Ok(KeptRecords {
            plan,
            rec,
            persons: Some(pc),
        })
    }

    /// Qualifying index events: in an observation period (with the observation the study asks
    /// for) and within the calendar limits; then each person's first, last or all of them.
    pub fn entries(&mut self) -> Result<LogicalPlan> {
        let index = self.study.index.clone();
        // With person ids known unique, an index event read from its records alone is joined
        // with its person after the entries are chosen: the join then reads one row per entry
        // instead of every record, and the same entries come out (a person joins all of its
        // records, once, or none). A repeated person id would repeat its entries there.
        let KeptRecords {
            plan: mut rows,
            rec,
            persons: joined,
        } = self.index_event_records()?;
        let (pc, persons_after) = match joined {
            Some(pc) => (pc, None),
            None => {
                let (persons, pc) = self.persons()?;
                (pc, Some(persons))
            }
        };
        if let Some(day) = index.at_date {
            // The observation periods that contain the day, each dated on it.
            rows = filter(
                rows,
                c(&rec.start)
                    .lt_eq(date_lit(day))
                    .and(c(&rec.end).gt_eq(date_lit(day))),
            )?;
            let dated: Vec<Expr> = names(&rows)
                .iter()
                .map(|n| {
                    if *n == rec.start {
                        date_lit(day).alias(n)
                    } else {
                        c(n)
                    }
                })
                .collect();
            rows = project(rows, dated)?;
        }
        if let Some(from) = index.from {
            rows = filter(rows, c(&rec.start).gt_eq(date_lit(from)))?;
        }
        if let Some(until) = index.until {
            rows = filter(rows, c(&rec.start).lt_eq(date_lit(until)))?;
        }
        let (before, after) = index.observation;
        let index_end = self.fresh("index_end");
        let mut with_end: Vec<Expr> = names(&rows).iter().map(|n| c(n)).collect();
        with_end.push(record_end(&rec)?.alias(&index_end));
        let rows = project(rows, with_end)?;
        let (mut rows, p) = if index.any_observation {
            self.containing_period(rows, &rec.person.clone(), c(&rec.start))?
        } else {
            self.covering_periods(rows, &rec.person.clone(), c(&rec.start), before, after)?
        };
        // One row per entry: each person's first or last event, or every event; with the
        // earliest period that qualifies, should periods overlap.
        let source = match &rec.alternative {
            Some(a) => a.clone(),
            None => {
                let source = self.fresh("source");
                let mut exprs: Vec<Expr> = names(&rows).iter().map(|n| c(n)).collect();
                exprs.push(lit(0i64).alias(&source));
                rows = project(rows, exprs)?;
                source
            }
        };
        let mut columns: Vec<String> = [
            &rec.person,
            &rec.id,
            &source,
            &rec.start,
            &rec.visit,
            &index_end,
            &p.start,
            &p.end,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if persons_after.is_none() {
            columns.extend([&pc.gender, &pc.year, &pc.month, &pc.day].map(|s| s.to_string()));
        }
        // NULLs last: an entry outside observation only when no period contains it.
        let periods = [(p.start.clone(), true), (p.end.clone(), true)];
        let rows = match index.occurrence {
            Occurrence::All => {
                let mut entry = vec![rec.person.clone(), rec.id.clone(), rec.start.clone()];
                entry.extend(rec.alternative.clone());
                self.first_rows(rows, &entry, &periods, &columns)?
            }
            Occurrence::First | Occurrence::Last => {
                let first = index.occurrence == Occurrence::First;
                let mut order = vec![(rec.start.clone(), first), (rec.id.clone(), first)];
                order.extend(rec.alternative.clone().map(|a| (a, first)));
                order.extend(periods);
                self.first_rows(rows, &[rec.person.clone()], &order, &columns)?
            }
        };
        let rows = match persons_after {
            Some(persons) => {
                let (left, right) = (self.aliased(rows)?, self.aliased(persons)?);
                join_on(
                    left,
                    right,
                    JoinType::Inner,
                    &[(rec.person.as_str(), pc.id.as_str())],
                )?
            }
            None => rows,
        };
        project(
            rows,
            vec![
                c(&rec.person).alias(PERSON),
                c(&rec.id).alias(INDEX_RECORD),
                c(&source).alias(INDEX_SOURCE),
                c(&rec.start).alias(INDEX_DATE),
                c(&rec.visit).alias(INDEX_VISIT),
                c(&index_end).alias(INDEX_END),
                c(&p.start).alias(PERIOD_START),
                c(&p.end).alias(PERIOD_END),
                c(&pc.gender).alias(GENDER),
                c(&pc.year).alias(YEAR_OF_BIRTH),
                c(&pc.month).alias(MONTH_OF_BIRTH),
                c(&pc.day).alias(DAY_OF_BIRTH),
            ],
        )
    }

    /// Entries with a flag per attrition step (true: the entry passes it) and the arm of the
    /// first exposure arm whose criterion holds (NULL when none does, or without arms).
    pub fn population(&mut self, entries: LogicalPlan) -> Result<LogicalPlan> {
        self.index_records_shared = true;
        let plan = self.population_of(entries);
        self.index_records_shared = false;
        plan
    }

    fn population_of(&mut self, entries: LogicalPlan) -> Result<LogicalPlan> {
        let mut ctx = self.entry_ctx(entries, false);
        let mut outputs: Vec<Expr> = ENTRY_COLUMNS.iter().map(|n| c(n)).collect();
        let mut keeps = Vec::new();
        for (i, step) in self.study.steps.iter().enumerate() {
            if let Some(which) = step.keep {
                keeps.push((i, which));
                continue;
            }
            let holds = self.condition(&step.criterion, &mut ctx)?;
            let passes = if step.exclude {
                datafusion::logical_expr::not(holds)
            } else {
                holds
            };
            outputs.push(passes.alias(step_column(i)));
        }
        let mut arms = Vec::new();
        for a in &self.study.arms {
            arms.push((self.condition(&a.criterion, &mut ctx)?, a.name.clone()));
        }
        let mut arm = cast(lit(ScalarValue::Null), DataType::Utf8);
        for (holds, name) in arms.into_iter().rev() {
            arm = when(holds, lit(name)).otherwise(arm)?;
        }
        outputs.push(arm.alias(ARM));
        let mut plan = project(self.joined(&ctx)?, outputs)?;
        for (i, which) in keeps {
            plan = self.keep_step(plan, i, which)?;
        }
        Ok(plan)
    }

    /// Adds step `i`'s flag for `keep first|last entry`: true for each person's first (last)
    /// entry among those that pass every earlier step, by index date, then index record id
    /// and the alternative it came from (as `index = first|last` orders them).
    fn keep_step(&mut self, plan: LogicalPlan, i: usize, which: Occurrence) -> Result<LogicalPlan> {
        use datafusion::functions_window::expr_fn::row_number;
        let columns = names(&plan);
        let (kept, rank) = (self.fresh("kept_so_far"), self.fresh("rank"));
        let mut exprs: Vec<Expr> = columns.iter().map(|n| c(n)).collect();
        // Entries ranked among those every earlier step kept; with no earlier step, among all
        // of the person's, so the partition is the person alone rather than a constant beside
        // it (a constant partition column the plans know only within one process).
        let prior = (0..i)
            .map(|j| c(&step_column(j)).is_true())
            .reduce(Expr::and);
        let mut partition = vec![c(PERSON)];
        if let Some(prior) = prior {
            exprs.push(prior.alias(&kept));
            partition.push(c(&kept));
        }
        let plan = project(plan, exprs)?;
        let first = which != Occurrence::Last;
        let ranked = with_window(
            plan,
            vec![row_number()
                .partition_by(partition)
                .order_by(vec![
                    c(INDEX_DATE).sort(first, false),
                    c(INDEX_RECORD).sort(first, false),
                    c(INDEX_SOURCE).sort(first, false),
                ])
                .build()?
                .alias(&rank)],
        )?;
        let mut exprs: Vec<Expr> = columns.iter().map(|n| c(n)).collect();
        let first_of_kept = if i == 0 {
            c(&rank).eq(lit(1u64))
        } else {
            c(&kept).and(c(&rank).eq(lit(1u64)))
        };
        exprs.push(first_of_kept.alias(step_column(i)));
        project(ranked, exprs)
    }

    /// The attrition table: one row per attrition row (`ATTRITION_STEP`, 0 for the index event's
    /// records), with the persons and entries remaining after it, in order.
    pub fn attrition(&mut self, population: LogicalPlan) -> Result<LogicalPlan> {
        let (passed, rows) = self.rows_passed(population.clone(), false)?;
        let remaining = self.remaining(passed, rows, None)?;
        let (persons, records) = attrition_columns(0);
        let first = project(
            self.index_records(population)?,
            vec![
                lit(0i64).alias(ATTRITION_STEP),
                c(&persons).alias(ATTRITION_PERSONS),
                c(&records).alias(ATTRITION_ENTRIES),
            ],
        )?;
        let both = union(vec![first, remaining])?;
        LogicalPlanBuilder::new_from_arc(super::sub(both)?)
            .sort(vec![c(ATTRITION_STEP).sort(true, true)])?
            .build()
    }

    /// With exposure arms, per arm (NULL: entries in no arm) and attrition row from row 1 on:
    /// the persons and entries of that arm remaining after the row, the arm being the one each
    /// entry's index would assign it. An arm left with no entry has no row.
    pub fn arm_attrition(&mut self, population: LogicalPlan) -> Result<LogicalPlan> {
        let (passed, rows) = self.rows_passed(population, true)?;
        let remaining = self.remaining(passed, rows, Some(ARM))?;
        LogicalPlanBuilder::new_from_arc(super::sub(remaining)?)
            .sort(vec![
                c(ARM).sort(true, true),
                c(ATTRITION_STEP).sort(true, true),
            ])?
            .build()
    }

    /// Attrition rows 1 to `rows + 1` (per arm, given the arm's column) from each entry's
    /// `rows_passed`: row `i` keeps the entries whose value is at least `i - 1`, and the
    /// persons with such an entry. Each entry is tallied once at its value and each person
    /// once at the best value of their entries, and each row sums the tallies at or above it:
    /// a few operators whatever the number of steps, where a pair of distinct counts per row
    /// made the plan and its execution grow with the steps.
    fn remaining(
        &mut self,
        passed: LogicalPlan,
        rows: usize,
        arm: Option<&str>,
    ) -> Result<LogicalPlan> {
        let by: Vec<Expr> = arm.iter().map(|a| c(a)).collect();
        let (value, best) = (self.fresh("passed"), self.fresh("best"));
        let (n_entries, n_persons) = (self.fresh("entries"), self.fresh("persons"));
        let with = |first: Expr, entries: Expr, persons: Expr| -> Vec<Expr> {
            let mut out = by.clone();
            out.extend([
                first.alias(&value),
                entries.alias(&n_entries),
                persons.alias(&n_persons),
            ]);
            out
        };
        let mut group = by.clone();
        group.push(c("rows_passed"));
        let entries = aggregate(
            passed.clone(),
            group,
            vec![count(lit(1i64)).alias(&n_entries)],
        )?;
        // With one entry per person, the persons are the entries.
        let tallies = if self.several_entries_per_person() {
            let entries = project(entries, with(c("rows_passed"), c(&n_entries), lit(0i64)))?;
            let mut group = vec![c(PERSON)];
            group.extend(by.clone());
            let bests = aggregate(passed, group, vec![max(c("rows_passed")).alias(&best)])?;
            let mut group = by.clone();
            group.push(c(&best));
            let persons = aggregate(bests, group, vec![count(lit(1i64)).alias(&n_persons)])?;
            let persons = project(persons, with(c(&best), lit(0i64), c(&n_persons)))?;
            union(vec![entries, persons])?
        } else {
            project(
                entries,
                with(c("rows_passed"), c(&n_entries), c(&n_entries)),
            )?
        };
        // The rows, each a one-row relation every SQL dialect can read.
        let step = self.fresh("step");
        let steps = (1..=rows + 1)
            .map(|i| {
                LogicalPlanBuilder::empty(true)
                    .project(vec![lit(i as i64).alias(&step)])?
                    .build()
            })
            .collect::<Result<Vec<_>>>()?;
        let steps = union(steps)?;
        let left = self.aliased(steps)?;
        let right = self.aliased(tallies)?;
        let joined = super::join_filtered(
            left,
            right,
            JoinType::Left,
            &[],
            c(&value).gt_eq(c(&step) - lit(1i64)),
        )?;
        let mut group = vec![c(&step)];
        group.extend(by.clone());
        let (p, e) = (self.fresh("persons"), self.fresh("entries"));
        let summed = aggregate(
            joined,
            group,
            vec![sum(c(&n_persons)).alias(&p), sum(c(&n_entries)).alias(&e)],
        )?;
        let total = |n: &str| coalesce(vec![cast(c(n), DataType::Int64), lit(0i64)]);
        let mut out = by;
        out.extend([
            c(&step).alias(ATTRITION_STEP),
            total(&p).alias(ATTRITION_PERSONS),
            total(&e).alias(ATTRITION_ENTRIES),
        ]);
        project(summed, out)
    }

    /// One row: the persons and entries with follow-up (the attrition table's last row).
    pub fn followed(&self, follow_up: LogicalPlan) -> Result<LogicalPlan> {
        aggregate(
            follow_up,
            vec![],
            vec![
                self.persons_counted().alias("persons"),
                count(lit(1i64)).alias("entries"),
            ],
        )
    }

    /// Persons and entries with follow-up, per arm, sorted by arm.
    pub fn arm_followed(&self, follow_up: LogicalPlan) -> Result<LogicalPlan> {
        let plan = aggregate(
            follow_up,
            vec![c(ARM)],
            vec![
                self.persons_counted().alias("persons"),
                count(lit(1i64)).alias("entries"),
            ],
        )?;
        LogicalPlanBuilder::new_from_arc(super::sub(plan)?)
            .sort(vec![c(ARM).sort(true, true)])?
            .build()
    }

    /// OHDSI Circe's inclusion-rule report, per rule: one row with the persons and entries
    /// among the qualifying index entries that pass step `i` on its own
    /// (`inclusion_columns(i)`).
    pub fn inclusion_rules(&self, population: LogicalPlan) -> Result<LogicalPlan> {
        let several = self.several_entries_per_person();
        let mut aggregates = vec![count(lit(1i64)).alias("qualifying")];
        let mut outputs = vec![c("qualifying")];
        for i in 0..self.study.steps.len() {
            // `= true` rather than `IS TRUE`, whose nullability DataFusion's physical planner
            // disagrees with once the expression is shared; a NULL flag fails either way.
            let passes = c(&step_column(i)).eq(lit(true));
            let (persons, entries) = inclusion_columns(i);
            if several {
                aggregates
                    .push(count_distinct(when(passes.clone(), c(PERSON)).end()?).alias(&persons));
                outputs.push(c(&persons));
            } else {
                // One entry per person: the persons are the entries.
                outputs.push(c(&entries).alias(&persons));
            }
            aggregates.push(
                cast(
                    sum(when(passes, lit(1i64)).otherwise(lit(0i64))?),
                    DataType::Int64,
                )
                .alias(&entries),
            );
            outputs.push(c(&entries));
        }
        project(aggregate(population, vec![], aggregates)?, outputs)
    }

    /// OHDSI Circe's inclusion-rule report, per combination: the steps each qualifying entry
    /// passes on its own, as a text of `1` (passes) and `0` per step in order, with the
    /// persons and entries of each combination, sorted by it. No rows without steps.
    pub fn rule_combinations(&mut self, population: LogicalPlan) -> Result<LogicalPlan> {
        let steps = self.study.steps.len();
        // Entries are grouped by whether they pass each step, and each group's pattern is
        // written after: a text per group, not per entry (at 1,000,000 persons the Circe
        // cohort's 185,700 patterns took 13 ms to write). With no step there is one constant
        // flag to group by, so that the empty input has no group rather than one total (its
        // rows are all dropped below).
        let passed: Vec<String> = (0..steps.max(1)).map(|_| self.fresh("passes")).collect();
        let flags: Vec<Expr> = passed
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let flag = if steps == 0 {
                    lit(false)
                } else {
                    when(c(&step_column(i)).eq(lit(true)), lit(true))
                        .otherwise(lit(false))
                        .expect("a CASE with one branch")
                };
                flag.alias(name)
            })
            .collect();
        let mut columns = vec![c(PERSON)];
        columns.extend(flags);
        let flagged = project(population, columns)?;
        let flagged = if steps == 0 {
            filter(flagged, lit(false))?
        } else {
            flagged
        };
        let counted = aggregate(
            flagged,
            passed.iter().map(|n| c(n)).collect(),
            vec![
                self.persons_counted().alias("persons"),
                count(lit(1i64)).alias("entries"),
            ],
        )?;
        let digits: Vec<Expr> = passed
            .iter()
            .map(|n| {
                when(c(n), lit("1"))
                    .otherwise(lit("0"))
                    .expect("a CASE with one branch")
            })
            .collect();
        let combination = match digits.len() {
            1 => digits[0].clone(),
            _ => datafusion::functions::string::expr_fn::concat(digits),
        };
        let plan = project(
            counted,
            vec![combination.alias("combination"), c("persons"), c("entries")],
        )?;
        LogicalPlanBuilder::new_from_arc(super::sub(plan)?)
            .sort(vec![c("combination").sort(true, false)])?
            .build()
    }

    /// The population with each entry's number of attrition rows passed (`rows_passed`, see
    /// `attrition`), and with `arm` the arm; and how many rows there are after row 1.
    fn rows_passed(&self, population: LogicalPlan, arm: bool) -> Result<(LogicalPlan, usize)> {
        let mut fails: Vec<Expr> = (0..self.study.steps.len())
            .map(|i| c(&step_column(i)).is_not_true())
            .collect();
        if !self.study.arms.is_empty() {
            fails.push(c(ARM).is_null());
        }
        let rows = fails.len();
        // Built whole: `CaseBuilder` copies its branches at each one added.
        let passed = if fails.is_empty() {
            lit(0i64)
        } else {
            Expr::Case(datafusion::logical_expr::expr::Case::new(
                None,
                fails
                    .into_iter()
                    .enumerate()
                    .map(|(i, fail)| (Box::new(fail), Box::new(lit(i as i64))))
                    .collect(),
                Some(Box::new(lit(rows as i64))),
            ))
        };
        let mut columns = vec![c(PERSON)];
        if arm {
            columns.push(c(ARM));
        }
        columns.push(passed.alias("rows_passed"));
        Ok((project(population, columns)?, rows))
    }

    /// One row: the persons with a record of the index event and the number of such records
    /// (consent applied), as attrition row 0; `population` holds the persons with an entry.
    fn index_records(&mut self, population: LogicalPlan) -> Result<LogicalPlan> {
        let index = self.study.index.query.clone();
        let (counted_persons, counted_records) = attrition_columns(0);
        // Records joined with their persons (an index event whose filters need the person's
        // row, or a `where` read with its persons when they are not known unique) are counted
        // as they are: only persons with a row have them.
        let joined_with_persons = self
            .index_records
            .as_ref()
            .is_some_and(|k| k.persons.is_some());
        if !super::criteria::reads_only_records(&index)
            || (super::criteria::has_where(&index) && joined_with_persons)
        {
            let KeptRecords { plan, rec, .. } = self.index_event_records()?;
            return aggregate(
                plan,
                vec![],
                vec![
                    count_distinct(c(&rec.person)).alias(counted_persons),
                    count(lit(1i64)).alias(counted_records),
                ],
            );
        }
        let (rows, rec) = match &self.index_records {
            Some(kept) if kept.persons.is_none() => (kept.plan.clone(), kept.rec.clone()),
            _ => self.matching_records(&index)?,
        };
        if !self.row_zero_from_entries {
            return self.records_in_person(rows, &rec);
        }
        // Records read alone are counted for the persons that have an entry, and for the
        // others only if they have a row in `person`. The persons with an entry have one (the
        // entries are joined with their persons), so `person` is read only for the records of
        // persons without an entry: usually none, and a join whose one side is empty reads
        // nothing of the other.
        let entered = keep(population.clone(), &[PERSON.to_string()])?;
        let semi = |planner: &mut Self, join_type: JoinType| -> Result<LogicalPlan> {
            let (left, right) = (
                planner.aliased(rows.clone())?,
                planner.aliased(entered.clone())?,
            );
            join_on(left, right, join_type, &[(rec.person.as_str(), PERSON)])
        };
        let of_entered = semi(self, JoinType::LeftSemi)?;
        let of_others = semi(self, JoinType::LeftAnti)?;
        let entered_persons = aggregate(
            population,
            vec![],
            vec![self.persons_counted().alias(&counted_persons)],
        )?;
        let entered_persons = project(
            entered_persons,
            vec![c(&counted_persons), lit(0i64).alias(&counted_records)],
        )?;
        let entered_records = aggregate(
            of_entered,
            vec![],
            vec![count(lit(1i64)).alias(&counted_records)],
        )?;
        let entered_records = project(
            entered_records,
            vec![lit(0i64).alias(&counted_persons), c(&counted_records)],
        )?;
        let others = self.records_in_person(of_others, &rec)?;
        let all = union(vec![entered_persons, entered_records, others])?;
        let total = |n: &str| coalesce(vec![cast(sum(c(n)), DataType::Int64), lit(0i64)]);
        aggregate(
            all,
            vec![],
            vec![
                total(&counted_persons).alias(&counted_persons),
                total(&counted_records).alias(&counted_records),
            ],
        )
    }

    /// Attrition row 0 from the index event's records read alone: counted per person, then
    /// the persons with a row in `person` kept (`IN`, which a repeated person id does not
    /// repeat) and counted: an aggregate the engine spreads over its partitions, where one
    /// distinct count gathers every person in one place, and a join of one row per person
    /// instead of one per record.
    fn records_in_person(
        &mut self,
        rows: LogicalPlan,
        rec: &super::records::Rec,
    ) -> Result<LogicalPlan> {
        let (counted_persons, counted_records) = attrition_columns(0);
        let (persons, pc) = self.persons()?;
        let n = self.fresh("records");
        let per_person = aggregate(rows, vec![c(&rec.person)], vec![count(lit(1i64)).alias(&n)])?;
        let ids = keep(persons, std::slice::from_ref(&pc.id))?;
        let known = filter(
            per_person,
            datafusion::logical_expr::in_subquery(c(&rec.person), std::sync::Arc::new(ids)),
        )?;
        let summed = self.fresh("records");
        let totals = aggregate(
            known,
            vec![],
            vec![
                count(lit(1i64)).alias(&counted_persons),
                sum(c(&n)).alias(&summed),
            ],
        )?;
        project(
            totals,
            vec![
                c(&counted_persons),
                coalesce(vec![c(&summed), lit(0i64)]).alias(&counted_records),
            ],
        )
    }

    /// The rules of the attrition plan's rows, in order (the follow-up row comes after them).
    pub fn attrition_rules(&self) -> Vec<String> {
        let mut rules = vec![
            INDEX_RECORDS_RULE.to_string(),
            "qualifying index event".to_string(),
        ];
        rules.extend(self.study.steps.iter().map(|s| s.rule.clone()));
        if !self.study.arms.is_empty() {
            rules.push("assigned to an exposure arm".to_string());
        }
        rules
    }

    /// Entries that pass every step and, with arms, have one.
    pub fn survivors(&self, population: LogicalPlan) -> Result<LogicalPlan> {
        let mut passes = lit(true);
        for i in 0..self.study.steps.len() {
            passes = passes.and(c(&step_column(i)));
        }
        if !self.study.arms.is_empty() {
            passes = passes.and(c(ARM).is_not_null());
        }
        let mut columns = strings(&ENTRY_COLUMNS);
        columns.push(ARM.into());
        keep(filter(population, passes)?, &columns)
    }

    /// Survivors with follow-up start and end; entries left without a day are dropped.
    pub fn follow_up(&mut self, survivors: LogicalPlan) -> Result<LogicalPlan> {
        let fu = self.study.follow_up.clone();
        let columns = names(&survivors);
        let mut ctx = self.entry_ctx(survivors, false);
        let start = days_add(c(INDEX_DATE), lit(fu.start_offset));
        // Observation bounds follow-up unless the study opted out of it for the index
        // (`with or without observation`), where only its exits end follow-up.
        let mut ends = if self.study.index.any_observation {
            Vec::new()
        } else {
            vec![c(PERIOD_END)]
        };
        for exit in &fu.exits {
            let end = match exit {
                Exit::ObservationEnd => c(PERIOD_END),
                Exit::Date(d) => date_lit(*d),
                Exit::Offset {
                    anchor: Anchor::FollowUpStart,
                    days,
                } => days_add(start.clone(), lit(*days)),
                Exit::Offset { days, .. } => days_add(c(INDEX_DATE), lit(*days)),
                Exit::RecordEnd { extra } => days_add(c(INDEX_END), lit(*extra)),
                Exit::Event(query) => {
                    let (rows, rec) = self.matching(query, &ctx)?;
                    let rows = filter(rows, c(&rec.start).gt_eq(start.clone()))?;
                    let first = self
                        .attach(&mut ctx, rows, vec![min(c(&rec.start))])?
                        .remove(0);
                    c(&first)
                }
                Exit::ExposureEnd {
                    concepts,
                    gap,
                    extra,
                } => {
                    let era_end = self.exposure_era_end(&mut ctx, concepts, *gap)?;
                    days_add(coalesce(vec![era_end, c(INDEX_DATE)]), lit(*extra))
                }
            };
            // `until end of observation` names the bound observation already sets: the least
            // of one column with itself would be computed for every entry.
            if !ends.contains(&end) {
                ends.push(end);
            }
        }
        let mut start = start;
        let mut end = match ends.len() {
            // No end at all: the entry leaves the study.
            0 => cast(lit(ScalarValue::Null), DataType::Date32),
            1 => ends.remove(0),
            _ => least(ends),
        };
        if let Some(from) = fu.period_from {
            start = greatest(vec![start, date_lit(from)]);
        }
        if let Some(to) = fu.period_to {
            end = least(vec![end, date_lit(to)]);
        }
        let mut outputs: Vec<Expr> = columns.iter().map(|n| c(n)).collect();
        outputs.push(start.alias(FOLLOW_UP_START));
        outputs.push(end.alias(FOLLOW_UP_END));
        let plan = project(self.joined(&ctx)?, outputs)?;
        filter(plan, c(FOLLOW_UP_START).lt_eq(c(FOLLOW_UP_END)))
    }

    /// The end of the continuous exposure to the drugs that contains the index date, as a
    /// column of the context (NULL without exposure on the index date). Exposures chain when
    /// the gap from one's end to the next one's start is at most `gap` days.
    fn exposure_era_end(
        &mut self,
        ctx: &mut Ctx,
        concepts: &ConceptExpr,
        gap: i64,
    ) -> Result<Expr> {
        let (records, rec) = self.records(Domain::Drug, false, Some(concepts))?;
        // Exposures chained as `era of drug in … gap N days` chains them.
        let era = Era {
            gap,
            duration: None,
        };
        let (eras, era) = self.eras(records, &rec, &era)?;
        let (era_person, era_start, era_end) = (&era.person, &era.start, &era.end);
        let left = self.aliased(ctx.base.clone())?;
        let right = self.aliased(eras)?;
        let containing = filter(
            join_on(
                left,
                right,
                JoinType::Inner,
                &[(PERSON, era_person.as_str())],
            )?,
            c(era_start)
                .lt_eq(c(INDEX_DATE))
                .and(c(INDEX_DATE).lt_eq(c(era_end))),
        )?;
        let end = self
            .attach(ctx, containing, vec![max(c(era_end))])?
            .remove(0);
        Ok(c(&end))
    }

    /// With `collapse entries`, the follow-up entries each with the number of its group of
    /// entries that overlap or lie within the gap (see `islands`), for an engine to keep as the
    /// stage `GROUPS` before `cohort` merges each group: the merge reads the groups twice (their
    /// first entries and their latest ends), and a subquery would be computed twice. `None`
    /// without collapsing: `cohort` then reads the follow-up itself.
    pub fn collapse_groups(&mut self, follow_up: LogicalPlan) -> Result<Option<LogicalPlan>> {
        let Some(days) = self.collapse_days() else {
            return Ok(None);
        };
        let grouped = self.islands(
            follow_up,
            PERSON,
            FOLLOW_UP_START,
            FOLLOW_UP_END,
            vec![
                asc(FOLLOW_UP_START),
                asc(FOLLOW_UP_END),
                asc(INDEX_DATE),
                asc(INDEX_RECORD),
                asc(INDEX_SOURCE),
            ],
            days,
            COLLAPSE_GROUP,
        )?;
        Ok(Some(grouped))
    }

    /// The collapse distance when collapsing can merge entries: a study whose index is a
    /// person's first or last event has one entry per person, each its own group, which
    /// collapsing leaves as it is.
    fn collapse_days(&self) -> Option<i64> {
        let days = self.study.follow_up.collapse_days?;
        self.several_entries_per_person().then_some(days)
    }

    /// The number of distinct persons among entries: their number, with one entry per person.
    fn persons_counted(&self) -> Expr {
        if self.several_entries_per_person() {
            count_distinct(c(PERSON))
        } else {
            count(lit(1i64))
        }
    }

    /// A context whose rows are a stage's entries, keyed by the person alone when a person has
    /// one entry at most: aggregates per entry then group and join on one number, not four
    /// columns.
    fn entry_ctx(&self, plan: LogicalPlan, follow_up: bool) -> Ctx {
        let key: &[&str] = if self.several_entries_per_person() {
            &[PERSON, INDEX_RECORD, INDEX_SOURCE, INDEX_DATE]
        } else {
            &[PERSON]
        };
        Ctx {
            base: plan,
            attached: Vec::new(),
            pending: Vec::new(),
            key: strings(key),
            person: PERSON.into(),
            gender: GENDER.into(),
            year_of_birth: YEAR_OF_BIRTH.into(),
            month_of_birth: MONTH_OF_BIRTH.into(),
            day_of_birth: DAY_OF_BIRTH.into(),
            index: Some(INDEX_DATE.into()),
            index_visit: Some(INDEX_VISIT.into()),
            index_end: Some(INDEX_END.into()),
            event: None,
            event_end: None,
            event_visit: None,
            follow_up: follow_up.then(|| (FOLLOW_UP_START.into(), FOLLOW_UP_END.into())),
            index_period: self
                .index_period_decides()
                .then(|| (PERIOD_START.into(), PERIOD_END.into())),
        }
    }

    /// Whether an entry's period decides `continuous observation [s, 0]` (s ≤ 0) on its
    /// index date without reading the periods again. A period P that covers the window
    /// contains the index date. The entries chose, of the periods that qualify, the one with
    /// the earliest start, C. When every period containing the index date qualifies (`with or
    /// without observation`, or an index observation that ends on the index date, `[b, 0]`),
    /// either P qualifies, and C starts no later, or it starts after `index + b`, where C
    /// starts at the latest. So a period covers the window exactly when C starts by
    /// `index + s` (C contains the index date); NULL when no period contains it. With days of
    /// observation required after the index, a period covering the window might not qualify
    /// and start before C; the periods are then read again.
    fn index_period_decides(&self) -> bool {
        let index = &self.study.index;
        index.any_observation || index.observation.1 == 0
    }

    /// Whether a person can have more than one entry: only with `all` events as index.
    fn several_entries_per_person(&self) -> bool {
        self.study.index.occurrence == Occurrence::All
    }

    /// Follow-up entries, with a person's entries merged when the study collapses them: those
    /// whose follow-up lies within the collapse distance of the previous one's end. The merged
    /// entry keeps the first one's index and ends at the latest end. Reads the kept
    /// `collapse_groups` stage, or without collapsing the follow-up itself.
    pub fn cohort(&mut self, grouped: LogicalPlan) -> Result<LogicalPlan> {
        if self.collapse_days().is_none() {
            return Ok(grouped);
        }
        let group = COLLAPSE_GROUP.to_string();
        let columns: Vec<String> = names(&grouped)
            .into_iter()
            .filter(|n| *n != group)
            .collect();
        // The merged entry: the group's first entry, ending at the group's latest end.
        let (group_of, group_end) = (self.fresh("group_of"), self.fresh("group_end"));
        let ends = aggregate(
            grouped.clone(),
            vec![c(&group).alias(&group_of)],
            vec![max(c(FOLLOW_UP_END)).alias(&group_end)],
        )?;
        let mut with_group = columns.clone();
        with_group.push(group.clone());
        let order: Vec<(String, bool)> = [
            FOLLOW_UP_START,
            FOLLOW_UP_END,
            INDEX_DATE,
            INDEX_RECORD,
            INDEX_SOURCE,
        ]
        .iter()
        .map(|k| (k.to_string(), true))
        .collect();
        let firsts = self.first_rows(grouped, &[group.clone()], &order, &with_group)?;
        let left = self.aliased(firsts)?;
        let right = self.aliased(ends)?;
        let joined = join_on(
            left,
            right,
            JoinType::Inner,
            &[(group.as_str(), group_of.as_str())],
        )?;
        let outputs: Vec<Expr> = columns
            .iter()
            .map(|n| {
                if n == FOLLOW_UP_END {
                    c(&group_end).alias(FOLLOW_UP_END)
                } else {
                    c(n)
                }
            })
            .collect();
        project(joined, outputs)
    }

    /// The OMOP cohort table: one row per distinct follow-up of a cohort entry (from follow-up
    /// start, which the study period may clip, to follow-up end), as OHDSI's tools and Circe
    /// read a cohort.
    pub fn cohort_table(&self, cohort: LogicalPlan) -> Result<LogicalPlan> {
        let table = project(
            cohort,
            vec![
                lit(self.study.output.cohort_id).alias("cohort_definition_id"),
                c(PERSON).alias("subject_id"),
                c(FOLLOW_UP_START).alias("cohort_start_date"),
                c(FOLLOW_UP_END).alias("cohort_end_date"),
            ],
        )?;
        // Distinct: entries of a person with the same follow-up (`all` records of one day) are
        // one row of the cohort table, as OMOP's cohort table has no duplicate rows; with one
        // entry per person, rows are distinct already. Sorted last: SQL keeps no order from
        // inside a derived table.
        let table = LogicalPlanBuilder::new_from_arc(super::sub(table)?);
        let table = if self.several_entries_per_person() {
            table.distinct()?
        } else {
            table
        };
        table
            .sort(vec![
                asc("subject_id"),
                asc("cohort_start_date"),
                asc("cohort_end_date"),
            ])?
            .build()
    }

    /// One row per cohort entry: the person, index, follow-up, arm, covariates and endpoints.
    pub fn dataset(&mut self, cohort: LogicalPlan) -> Result<LogicalPlan> {
        // Covariates see follow-up start and end: values may be taken there (the checker
        // keeps windows and criteria of covariates at baseline).
        let mut ctx = self.entry_ctx(cohort, true);
        // With a union of event kinds as index, record ids repeat across tables: which
        // alternative the record comes from is a column, and the last sort key.
        let union = !self.study.index.query.also.is_empty();
        let mut outputs: Vec<Expr> = vec![c(PERSON), c(INDEX_DATE), c(INDEX_RECORD)];
        if union {
            outputs.push(c(INDEX_SOURCE));
        }
        outputs.extend([c(FOLLOW_UP_START), c(FOLLOW_UP_END)]);
        // Person-time: the days at risk, both ends included.
        outputs.push(
            (days_between(c(FOLLOW_UP_END), c(FOLLOW_UP_START)) + lit(1i64)).alias(FOLLOW_UP_DAYS),
        );
        if !self.study.arms.is_empty() {
            outputs.push(c(ARM));
        }
        let mut values: Vec<Expr> = Vec::new();
        for covariate in &self.study.covariates {
            let value = self.covariate(&covariate.value, &values, &mut ctx)?;
            values.push(value.clone());
            outputs.push(value.alias(&covariate.name));
        }
        // Endpoints are counts and first days of their records: of one domain, they share
        // the covariates' reading of it (`Planner::joined`).
        for endpoint in &self.study.endpoints {
            let (query, window) = (&endpoint.query, &endpoint.window);
            match endpoint.kind {
                EndpointKind::Binary => {
                    let n = self.count_in_window(&mut ctx, query, window, None)?;
                    outputs.push(
                        when(n.gt(lit(0i64)), lit(1i64))
                            .otherwise(lit(0i64))?
                            .alias(&endpoint.name),
                    );
                }
                EndpointKind::TimeToEvent => {
                    let first = self.day_in_window(&mut ctx, query, window, false)?;
                    outputs.push(
                        when(first.clone().is_not_null(), lit(1i64))
                            .otherwise(lit(0i64))?
                            .alias(&endpoint.name),
                    );
                    outputs.push(
                        days_between(coalesce(vec![first, c(FOLLOW_UP_END)]), c(FOLLOW_UP_START))
                            .alias(format!("{}_days", endpoint.name)),
                    );
                }
            }
        }
        LogicalPlanBuilder::new_from_arc(super::sub(project(self.joined(&ctx)?, outputs)?)?)
            .sort(
                [PERSON, INDEX_DATE, INDEX_RECORD]
                    .into_iter()
                    .chain(union.then_some(INDEX_SOURCE))
                    .map(asc)
                    .collect::<Vec<SortExpr>>(),
            )?
            .build()
    }

    /// A covariate's value for each context row; `earlier` are the previous covariates' values.
    fn covariate(
        &mut self,
        value: &CovariateValue,
        earlier: &[Expr],
        ctx: &mut Ctx,
    ) -> Result<Expr> {
        Ok(match value {
            CovariateValue::Sex => c(&ctx.gender),
            CovariateValue::Quantity(q) => match self.quantity(*q, ctx) {
                Some(e) => e,
                None => cast(lit(ScalarValue::Null), DataType::Int64),
            },
            CovariateValue::Count {
                distinct,
                query,
                window,
            } => self.count_in_window(ctx, query, window, *distinct)?,
            CovariateValue::Aggregate {
                aggregate,
                concept,
                query,
                window,
            } => self.value_in_window(ctx, query, window, *aggregate, *concept)?,
            CovariateValue::DaysSince {
                last,
                query,
                window,
            } => days_between(
                c(INDEX_DATE),
                self.day_in_window(ctx, query, window, *last)?,
            ),
            CovariateValue::Flag(criterion) => {
                when(self.condition(criterion, ctx)?, lit(1i64)).otherwise(lit(0i64))?
            }
            CovariateValue::Interaction(factors) => factors
                .iter()
                .map(|&i| cast(earlier[i].clone(), DataType::Float64))
                .reduce(|a, b| a * b)
                .unwrap_or(lit(1.0)),
        })
    }
}
