//! Running a study on a repository: each stage's plan executed in turn and kept in memory as the
//! table the next stage reads, then the outputs written (`output`).

pub mod cluster;
pub mod database;
mod dialect;
pub mod fingerprint;
pub mod output;
pub mod workspace;

use crate::plan::{self, DataFacts, Planner};
use crate::repo::clean_engine_message;
use crate::study::Study;
use datafusion::arrow::array::{Array, Int64Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::Result as DfResult;
use datafusion::datasource::MemTable;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{LogicalPlan, LogicalPlanBuilder};
use datafusion::physical_plan::displayable;
use datafusion::prelude::SessionContext;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One row of the attrition table: entries and persons remaining after a rule.
#[derive(Clone, Debug, PartialEq)]
pub struct Attrition {
    pub rule: String,
    pub persons: u64,
    pub entries: u64,
}

/// One row of the attrition by arm: entries and persons of one arm remaining after a rule.
#[derive(Clone, Debug, PartialEq)]
pub struct ArmAttrition {
    pub rule: String,
    /// The arm the entry's index assigns; `None` for entries in no arm.
    pub arm: Option<String>,
    pub persons: u64,
    pub entries: u64,
}

/// A count of OHDSI Circe's inclusion-rule report: the qualifying index entries (and their
/// persons) that pass one rule on its own, or exactly one combination of the rules.
#[derive(Clone, Debug, PartialEq)]
pub struct RuleCount {
    /// The rule as written; for a combination, the steps passed (`1, 3`, or `none`).
    pub rule: String,
    pub persons: u64,
    pub entries: u64,
}

/// What running a study gives.
#[derive(Clone, Debug)]
pub struct Execution {
    pub attrition: Vec<Attrition>,
    /// With exposure arms: each attrition row from `qualifying index event` on, per arm in the
    /// study's order, then for entries in no arm.
    pub attrition_by_arm: Vec<ArmAttrition>,
    /// Each step on its own, in order, among the qualifying index entries.
    pub inclusion_rules: Vec<RuleCount>,
    /// Each combination of steps passed that some qualifying entry has, by the steps passed.
    pub rule_combinations: Vec<RuleCount>,
    /// The OMOP cohort table rows.
    pub cohort: Vec<RecordBatch>,
    pub cohort_schema: SchemaRef,
    /// One row per cohort entry, sorted by person, index date and index record.
    pub dataset: Vec<RecordBatch>,
    pub dataset_schema: SchemaRef,
    /// How long each stage took.
    pub timings: Vec<(&'static str, Duration)>,
    /// The repository's tables the study read, by name.
    pub tables_read: Vec<String>,
    /// Rows of `person` that repeat another row's person id, when counted before the stages
    /// (`execute` does, to plan with `DataFacts`).
    pub repeated_person_ids: Option<u64>,
}

impl Execution {
    /// Persons in the final cohort.
    pub fn persons(&self) -> u64 {
        self.attrition.last().map_or(0, |a| a.persons)
    }
}

pub(crate) fn engine(e: DataFusionError) -> String {
    clean_engine_message(&e.to_string())
}

/// Registers (or replaces) a stage's table.
fn register(
    ctx: &SessionContext,
    name: &str,
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
) -> DfResult<LogicalPlan> {
    let partitions = ctx.copied_config().target_partitions().max(1);
    let mut parts: Vec<Vec<RecordBatch>> = vec![Vec::new(); partitions];
    for (i, b) in batches.into_iter().enumerate() {
        parts[i % partitions].push(b);
    }
    let table: Arc<dyn datafusion::catalog::TableProvider> =
        Arc::new(MemTable::try_new(schema, parts)?);
    ctx.deregister_table(name)?;
    ctx.register_table(name, table.clone())?;
    LogicalPlanBuilder::scan(
        name,
        datafusion::datasource::provider_as_source(table),
        None,
    )?
    .build()
}

/// Where `EXPLAIN ANALYZE` output of each executed plan goes, when asked for.
type Analysis = std::sync::Mutex<Option<Vec<(String, String)>>>;

/// The seam between the stage pipeline and an engine: how each stage's result is kept for the
/// next stage, and how a result is read back. The pipeline (`run_stages`) is written once;
/// an engine is one implementation: DataFusion in memory (`InMemory`), plans only for `plan`
/// and `sql` (`PlansOnly`). A new source or engine implements these two operations.
pub(crate) trait Materialiser {
    /// Runs `plan` and keeps its result as the table `name`; gives the plan that reads it.
    async fn keep(&self, name: &'static str, plan: LogicalPlan) -> Result<LogicalPlan, String>;
    /// Runs `plan` and gives its rows.
    async fn rows(
        &self,
        name: &'static str,
        plan: LogicalPlan,
    ) -> Result<(SchemaRef, Vec<RecordBatch>), String>;
    /// Runs plans that read nothing of one another and gives each one's rows, in their order.
    /// An engine that can run them side by side does; the default runs one after another.
    async fn rows_of(
        &self,
        plans: Vec<(&'static str, LogicalPlan)>,
    ) -> Result<Vec<(SchemaRef, Vec<RecordBatch>)>, String> {
        let mut all = Vec::with_capacity(plans.len());
        for (name, plan) in plans {
            all.push(self.rows(name, plan).await?);
        }
        Ok(all)
    }
    /// Runs `plan` for values later plans are built with (the concept sets' ids), or `None`
    /// when the engine runs nothing (plans only): the later plans then compute them.
    async fn values(
        &self,
        name: &'static str,
        plan: LogicalPlan,
    ) -> Result<Option<Vec<RecordBatch>>, String> {
        Ok(Some(self.rows(name, plan).await?.1))
    }
    /// Runs two pipelines that read nothing of one another's results and gives both results.
    /// An engine that can run them side by side does; the default runs `a`, then `b`.
    async fn beside<A: std::future::Future, B: std::future::Future>(
        &self,
        a: A,
        b: B,
    ) -> (A::Output, B::Output) {
        let a = a.await;
        (a, b.await)
    }
    /// Lets go of a kept stage no later plan reads, so that its rows need not stay in memory
    /// while later stages run and the outputs are written.
    fn release(&self, _name: &'static str) -> Result<(), String> {
        Ok(())
    }
    /// Runs `plan` and keeps its result as the table `name` if it has at most `rows` rows,
    /// giving the plan that reads it; `None` when it has more, or when the engine keeps no
    /// domain's records (the default: the stages then read the repository's tables).
    async fn keep_at_most(
        &self,
        _name: &'static str,
        _plan: LogicalPlan,
        _rows: usize,
    ) -> Result<Option<LogicalPlan>, String> {
        Ok(None)
    }
    /// Runs `plan` as `keep` does, for rows that are rare in the tables it reads: an engine
    /// that can decode the columns its filters test first, and the others only for the rows
    /// that pass, does.
    async fn keep_rare(
        &self,
        name: &'static str,
        plan: LogicalPlan,
    ) -> Result<LogicalPlan, String> {
        self.keep(name, plan).await
    }
    /// Which domains the engine keeps the records of (`keep_at_most`), if any: DataFusion in
    /// memory does, where each stage's reading decodes the whole file again; a database
    /// reads its own tables.
    fn domain_keeping(&self) -> Option<Keeping> {
        None
    }
}

/// Which domains a run keeps the records of, read once for every stage (`plan::kept`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keeping {
    /// Domains read by several stages, when a sample of their rows says the records of the
    /// study's concept sets are few: what `run` does.
    Sampled,
    /// Every domain read by concept sets alone, whatever the sample: for tests that hold
    /// the kept readings to the results of the readings of the tables.
    Every,
}

/// DataFusion: each stage collected into memory and registered as a table of the session.
struct InMemory<'a> {
    ctx: &'a SessionContext,
    analysis: &'a Analysis,
    keeping: Keeping,
}

impl Materialiser for InMemory<'_> {
    async fn keep(&self, name: &'static str, plan: LogicalPlan) -> Result<LogicalPlan, String> {
        let (schema, batches) = self.rows(name, plan).await?;
        register(self.ctx, name, schema, batches).map_err(engine)
    }

    fn release(&self, name: &'static str) -> Result<(), String> {
        self.ctx.deregister_table(name).map_err(engine).map(drop)
    }

    async fn keep_at_most(
        &self,
        name: &'static str,
        plan: LogicalPlan,
        rows: usize,
    ) -> Result<Option<LogicalPlan>, String> {
        let (schema, batches) = self.rows(name, plan).await?;
        if batches.iter().map(RecordBatch::num_rows).sum::<usize>() > rows {
            return Ok(None);
        }
        register(self.ctx, name, schema, batches)
            .map(Some)
            .map_err(engine)
    }

    fn domain_keeping(&self) -> Option<Keeping> {
        Some(self.keeping)
    }

    /// In a session whose Parquet scans evaluate their filters as they decode
    /// (`pushdown_filters`; the cheapest filter first, as every table is registered with
    /// `reorder_filters`, `repo::session_config`).
    async fn keep_rare(
        &self,
        name: &'static str,
        plan: LogicalPlan,
    ) -> Result<LogicalPlan, String> {
        let config = self
            .ctx
            .copied_config()
            .set_bool("datafusion.execution.parquet.pushdown_filters", true)
            // The session shares this one's catalogs: a default catalog made anew would replace
            // the one holding the repository's tables and the kept stages.
            .with_create_default_catalog_and_schema(false);
        let state = datafusion::execution::SessionStateBuilder::new_from_existing(self.ctx.state())
            .with_config(config)
            .build();
        let decoding = SessionContext::new_with_state(state);
        let (schema, batches) = collect(&decoding, self.analysis, name, plan)
            .await
            .map_err(engine)?;
        register(self.ctx, name, schema, batches).map_err(engine)
    }

    async fn rows(
        &self,
        name: &'static str,
        plan: LogicalPlan,
    ) -> Result<(SchemaRef, Vec<RecordBatch>), String> {
        collect(self.ctx, self.analysis, name, plan)
            .await
            .map_err(engine)
    }

    /// Side by side: while one is planned, on this thread, the other's plans run on the
    /// engine's threads.
    async fn beside<A: std::future::Future, B: std::future::Future>(
        &self,
        a: A,
        b: B,
    ) -> (A::Output, B::Output) {
        futures::future::join(a, b).await
    }

    /// Side by side: a plan's sorts, merges and final aggregates run on one core, and the
    /// other plans keep the rest busy. Each plan is optimised and planned physically on a
    /// thread of its own, beside this one, rather than one after another on this thread,
    /// where they also waited for the plans this thread makes meanwhile (`beside`):
    /// DataFusion's planning is a fifth to a third of a run at 100,000 persons
    /// (docs/performance.md). Not in the engine's worker threads, which the running plans'
    /// tasks need: planning is CPU work of milliseconds that would hold them up. A plan that
    /// fails ends the others: their futures are dropped, and with them their streams.
    async fn rows_of(
        &self,
        plans: Vec<(&'static str, LogicalPlan)>,
    ) -> Result<Vec<(SchemaRef, Vec<RecordBatch>)>, String> {
        let handle = tokio::runtime::Handle::current();
        let runs = plans.into_iter().map(|(name, plan)| {
            let slot = analysis_slot(self.analysis, name);
            let (ctx, handle) = (self.ctx.clone(), handle.clone());
            async move {
                if slot.is_some() {
                    return collect_in(&ctx, self.analysis, slot, plan)
                        .await
                        .map_err(engine);
                }
                let planned =
                    tokio::task::spawn_blocking(move || handle.block_on(physical_plan(&ctx, plan)))
                        .await
                        .map_err(|e| format!("a query stopped: {e}"))?
                        .map_err(engine)?;
                run_planned(planned).await.map_err(engine)
            }
        });
        futures::future::try_join_all(runs).await
    }
}

/// No engine: each stage's plan is recorded, and the next stage reads an empty table with its
/// columns. Gives `stage_plans`, and so `plan` and `sql`, the pipeline `run` executes.
struct PlansOnly<'a> {
    ctx: &'a SessionContext,
    plans: std::sync::Mutex<Vec<(&'static str, LogicalPlan)>>,
}

impl Materialiser for PlansOnly<'_> {
    async fn keep(&self, name: &'static str, plan: LogicalPlan) -> Result<LogicalPlan, String> {
        let schema = Arc::new(plan.schema().as_arrow().clone());
        self.plans.lock().expect("not poisoned").push((name, plan));
        register(self.ctx, name, schema, vec![]).map_err(engine)
    }

    async fn rows(
        &self,
        name: &'static str,
        plan: LogicalPlan,
    ) -> Result<(SchemaRef, Vec<RecordBatch>), String> {
        let schema = Arc::new(plan.schema().as_arrow().clone());
        self.plans.lock().expect("not poisoned").push((name, plan));
        Ok((schema, Vec::new()))
    }

    /// Nothing runs: the plans keep the vocabulary lookups that `run` does first, so `sql`
    /// writes a script that needs no earlier query.
    async fn values(
        &self,
        _name: &'static str,
        _plan: LogicalPlan,
    ) -> Result<Option<Vec<RecordBatch>>, String> {
        Ok(None)
    }
}

async fn collect(
    ctx: &SessionContext,
    analysis: &Analysis,
    name: &str,
    plan: LogicalPlan,
) -> DfResult<(SchemaRef, Vec<RecordBatch>)> {
    let slot = analysis_slot(analysis, name);
    collect_in(ctx, analysis, slot, plan).await
}

/// A plan's place in the analysis, if there is one: where it was started, as plans run side by
/// side end in any order.
fn analysis_slot(analysis: &Analysis, name: &str) -> Option<usize> {
    analysis.lock().expect("not poisoned").as_mut().map(|a| {
        a.push((name.to_string(), String::new()));
        a.len() - 1
    })
}

/// Runs `plan`, writing it with its metrics at `slot` of the analysis if there is one.
async fn collect_in(
    ctx: &SessionContext,
    analysis: &Analysis,
    slot: Option<usize>,
    plan: LogicalPlan,
) -> DfResult<(SchemaRef, Vec<RecordBatch>)> {
    if let Some(slot) = slot {
        let explained = ctx
            .execute_logical_plan(plan.clone())
            .await?
            .explain(false, true)?
            .collect()
            .await?;
        let text = datafusion::arrow::util::pretty::pretty_format_batches(&explained)?.to_string();
        if let Some(a) = analysis.lock().expect("not poisoned").as_mut() {
            a[slot].1 = text;
        }
    }
    run_planned(physical_plan(ctx, plan).await?).await
}

/// A plan optimised and planned physically: its schema, its physical plan and the context it
/// runs in.
type Planned = (
    SchemaRef,
    Arc<dyn datafusion::physical_plan::ExecutionPlan>,
    Arc<datafusion::execution::TaskContext>,
);

async fn physical_plan(ctx: &SessionContext, plan: LogicalPlan) -> DfResult<Planned> {
    let frame = ctx.execute_logical_plan(plan).await?;
    let schema: SchemaRef = Arc::new(frame.schema().as_arrow().clone());
    let task = Arc::new(frame.task_ctx());
    Ok((schema, frame.create_physical_plan().await?, task))
}

/// Runs a planned plan: its batches, with their schema (the plan's without any).
async fn run_planned((schema, physical, task): Planned) -> DfResult<(SchemaRef, Vec<RecordBatch>)> {
    let batches = datafusion::physical_plan::collect(physical, task).await?;
    let schema = batches.first().map_or(schema, |b| b.schema());
    Ok((schema, batches))
}

/// Every row of a result, each column's value as text (`None` for NULL), by column name.
fn text_rows(batches: &[RecordBatch]) -> Vec<std::collections::HashMap<String, Option<String>>> {
    let mut rows = Vec::new();
    for b in batches {
        let columns: Vec<(String, datafusion::arrow::array::ArrayRef)> = b
            .schema()
            .fields()
            .iter()
            .zip(b.columns())
            .map(|(f, c)| {
                let text = cast(c, &DataType::Utf8).expect("every column casts to text");
                (f.name().clone(), text)
            })
            .collect();
        for i in 0..b.num_rows() {
            rows.push(
                columns
                    .iter()
                    .map(|(name, a)| {
                        let a = a
                            .as_any()
                            .downcast_ref::<datafusion::arrow::array::StringArray>()
                            .expect("text");
                        (
                            name.clone(),
                            (!a.is_null(i)).then(|| a.value(i).to_string()),
                        )
                    })
                    .collect(),
            );
        }
    }
    rows
}

fn count_in(row: &std::collections::HashMap<String, Option<String>>, column: &str) -> u64 {
    row.get(column)
        .and_then(|v| v.as_deref())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn int_at(batches: &[RecordBatch], column: &str) -> u64 {
    batches
        .iter()
        .find(|b| b.num_rows() > 0)
        .and_then(|b| {
            let a = cast(b.column_by_name(column)?, &DataType::Int64).ok()?;
            let a = a.as_any().downcast_ref::<Int64Array>()?.clone();
            (!a.is_null(0)).then(|| a.value(0) as u64)
        })
        .unwrap_or(0)
}

/// Runs every stage of a study in a session with a repository registered. `progress` is told
/// the name of each stage as it starts.
pub async fn execute(
    study: &Study,
    ctx: &SessionContext,
    progress: &dyn Fn(&str),
) -> Result<Execution, String> {
    execute_keeping(study, ctx, Keeping::Sampled, progress).await
}

/// Runs a study as `execute` does, keeping the domains `keeping` says.
pub async fn execute_keeping(
    study: &Study,
    ctx: &SessionContext,
    keeping: Keeping,
    progress: &dyn Fn(&str),
) -> Result<Execution, String> {
    in_memory(study, ctx, &Analysis::new(None), keeping, progress).await
}

/// What the repository's data are known to satisfy (see `DataFacts`), checked before the
/// stages and outside their timings, with the count behind it: the rows of `person` that
/// repeat a person id, which the run's data-quality warnings report.
pub async fn data_facts(ctx: &SessionContext) -> Result<(DataFacts, u64), String> {
    let repeated = crate::repo::quality::repeated_person_ids(ctx).await?;
    let facts = DataFacts {
        person_ids_unique: repeated == 0,
    };
    Ok((facts, repeated))
}

/// Runs a study as `execute` does, and gives each stage's plan as `EXPLAIN ANALYZE` shows it:
/// with the rows and time of every operator.
pub async fn execute_analysed(
    study: &Study,
    ctx: &SessionContext,
    progress: &dyn Fn(&str),
) -> Result<(Execution, Vec<(String, String)>), String> {
    let analysis = Analysis::new(Some(Vec::new()));
    let run = in_memory(study, ctx, &analysis, Keeping::Sampled, progress).await?;
    let stages = analysis
        .into_inner()
        .expect("not poisoned")
        .unwrap_or_default();
    Ok((run, stages))
}

/// The stages run in the session, each kept in memory, planned with the data's facts.
async fn in_memory(
    study: &Study,
    ctx: &SessionContext,
    analysis: &Analysis,
    keeping: Keeping,
    progress: &dyn Fn(&str),
) -> Result<Execution, String> {
    let (facts, repeated) = data_facts(ctx).await?;
    let m = InMemory {
        ctx,
        analysis,
        keeping,
    };
    let mut run = run_stages(study, ctx, facts, &m, progress).await?;
    run.repeated_person_ids = Some(repeated);
    Ok(run)
}

/// The stage pipeline, written once: index entries, the population with its attrition,
/// follow-up, the cohort and the dataset, each stage kept by `m` for the next.
pub(crate) async fn run_stages(
    study: &Study,
    ctx: &SessionContext,
    facts: DataFacts,
    m: &impl Materialiser,
    progress: &dyn Fn(&str),
) -> Result<Execution, String> {
    // Disjoint timings that add up to the whole pipeline: `plan` is the time spent building
    // plans (the planner's setup included), each stage's the time spent running its plans.
    let mut timings: Vec<(&'static str, Duration)> = Vec::new();
    let mut planning = Duration::ZERO;
    macro_rules! planned {
        ($plan:expr) => {{
            let started = Instant::now();
            let plan = $plan.map_err(engine);
            planning += started.elapsed();
            plan?
        }};
    }
    let started = Instant::now();
    let mut planner = Planner::new(study, ctx).await.map_err(engine)?;
    planner.assume(facts);
    let setup = started.elapsed();
    let mut clock = Instant::now();
    let mut planned_before = planning;
    // A stage's time since the last lap, without the planning done in it.
    let mut lap = |name: &'static str, timings: &mut Vec<(&'static str, Duration)>, planning| {
        timings.push((
            name,
            clock.elapsed().saturating_sub(planning - planned_before),
        ));
        planned_before = planning;
        clock = Instant::now();
    };
    // The concept sets read from the vocabulary once, before any stage, in a query per level
    // (names and codes, then descendants and mappings of what they found): the stages then
    // test lists of ids, and the engine's planner sees a filter, not a join.
    while let Some(lookup) = planned!(planner.concept_sets()) {
        match m.values("concept_sets", lookup).await? {
            Some(rows) => planned!(planner.use_concept_sets(&rows)),
            None => break,
        }
    }
    lap("concepts", &mut timings, planning);
    progress("index events");
    // Consenting persons found once and kept, not once per criterion: from the tables, beside
    // the domains kept below, whose plans read nothing of them (the consent rule applies to
    // the records as they are read from a kept domain, not as they are kept).
    let consenting = planned!(planner.consenting());
    let consenting = async {
        match consenting {
            Some(plan) => m.keep(plan::CONSENTING, plan).await.map(Some),
            None => Ok(None),
        }
    };
    // A domain several stages read by concept sets alone is read once, its records of those
    // sets kept, when a sample of its rows says they are few.
    let kept = async {
        let mut kept_domains = Vec::new();
        if let Some(keeping) = m.domain_keeping() {
            let every = keeping == Keeping::Every;
            let samples = planned!(planner.kept_domain_samples(every));
            let domains: Vec<_> = samples.iter().map(|(d, _)| *d).collect();
            let plans = samples
                .into_iter()
                .map(|(_, plan)| ("kept_sample", plan))
                .collect();
            let counts = m.rows_of(plans).await?;
            for (domain, (_, rows)) in domains.into_iter().zip(counts) {
                if !every && !Planner::sample_keeps(int_at(&rows, "seen"), int_at(&rows, "kept")) {
                    continue;
                }
                let name = plan::kept::kept_name(domain);
                let plan = planned!(planner.kept_domain(domain));
                if let Some(kept) = m.keep_at_most(name, plan, plan::kept::KEPT_ROWS).await? {
                    planner.use_kept_domain(domain, kept);
                    kept_domains.push(name);
                }
            }
        }
        Ok::<_, String>(kept_domains)
    };
    let (consenting, kept_domains) = m.beside(consenting, kept).await;
    let kept_domains = kept_domains?;
    if let Some(kept) = consenting? {
        planner.use_consenting(kept);
    }
    // Index records rare in their table (the eras study's: none) are found decoding the
    // concept column first, when a sample of the table says so.
    let mut rare = false;
    if m.domain_keeping().is_some() {
        if let Some(sample) = planned!(planner.index_sample()) {
            let (_, rows) = m.rows("index_sample", sample).await?;
            rare = Planner::sample_rare(int_at(&rows, "seen"), int_at(&rows, "kept"));
        }
    }
    let records = planned!(planner.index_records_stage());
    let records = if rare {
        m.keep_rare(plan::INDEX_RECORDS, records).await?
    } else {
        m.keep(plan::INDEX_RECORDS, records).await?
    };
    planner.use_index_records(records);
    let entries = planned!(planner.entries());
    let entries = m.keep(plan::ENTRIES, entries).await?;
    lap("entries", &mut timings, planning);
    progress("attrition steps");
    // An engine that keeps domains is DataFusion in memory, where a join with an empty side
    // reads nothing of the other (`Planner::only_persons_without_entries_looked_up`).
    if m.domain_keeping().is_some() {
        planner.only_persons_without_entries_looked_up();
    }
    let population = planned!(planner.population(entries));
    let population = m.keep(plan::POPULATION, population).await?;
    m.release(plan::ENTRIES)?;
    // The attrition and the inclusion-rule report read the population, and nothing of one
    // another.
    let mut plans = vec![("attrition", planned!(planner.attrition(population.clone())))];
    if !study.arms.is_empty() {
        plans.push((
            "attrition_by_arm",
            planned!(planner.arm_attrition(population.clone())),
        ));
    }
    plans.push((
        "inclusion_rules",
        planned!(planner.inclusion_rules(population.clone())),
    ));
    plans.push((
        "rule_combinations",
        planned!(planner.rule_combinations(population.clone())),
    ));
    lap("population", &mut timings, planning);
    // The reports of the population run beside follow-up, the cohort and the dataset, which
    // read nothing of them; their time counts in the stages they ran beside.
    let reports = m.rows_of(plans);
    let rest = async {
        progress("follow-up");
        let survivors = planned!(planner.survivors(population));
        let follow_up = planned!(planner.follow_up(survivors));
        let follow_up = m.keep(plan::FOLLOW_UP, follow_up).await?;
        m.release(plan::POPULATION)?;
        let mut plans = vec![("followed", planned!(planner.followed(follow_up.clone())))];
        if !study.arms.is_empty() {
            plans.push((
                "followed_by_arm",
                planned!(planner.arm_followed(follow_up.clone())),
            ));
        }
        let mut results = m.rows_of(plans).await?.into_iter().map(|(_, rows)| rows);
        let followed = results.next().expect("a result per plan");
        let followed_by_arm = results.next().unwrap_or_default();
        let groups = match planned!(planner.collapse_groups(follow_up.clone())) {
            Some(groups) => m.keep(plan::GROUPS, groups).await?,
            None => follow_up,
        };
        let cohort = planned!(planner.cohort(groups));
        let cohort = m.keep(plan::COHORT, cohort).await?;
        m.release(plan::GROUPS)?;
        m.release(plan::FOLLOW_UP)?;
        lap("follow_up", &mut timings, planning);
        progress("covariates and endpoints");
        let plans = vec![
            ("cohort", planned!(planner.cohort_table(cohort.clone()))),
            ("dataset", planned!(planner.dataset(cohort))),
        ];
        let mut results = m.rows_of(plans).await?.into_iter();
        let cohort = results.next().expect("the cohort");
        let dataset = results.next().expect("the dataset");
        Ok::<_, String>((followed, followed_by_arm, cohort, dataset))
    };
    let (reports, rest) = m.beside(reports, rest).await;
    let mut results = reports?.into_iter().map(|(_, rows)| rows);
    let (followed, followed_by_arm, (cohort_schema, cohort_rows), (dataset_schema, dataset_rows)) =
        rest?;
    let mut next = || results.next().expect("a result per plan");
    m.release(plan::INDEX_RECORDS)?;
    let counts = text_rows(&next());
    let mut attrition: Vec<Attrition> = planner
        .attrition_rules()
        .into_iter()
        .enumerate()
        .map(|(i, rule)| {
            let row = counts
                .iter()
                .find(|r| count_in(r, plan::ATTRITION_STEP) == i as u64);
            Attrition {
                rule,
                persons: row.map_or(0, |r| count_in(r, plan::ATTRITION_PERSONS)),
                entries: row.map_or(0, |r| count_in(r, plan::ATTRITION_ENTRIES)),
            }
        })
        .collect();
    let by_arm = if study.arms.is_empty() {
        Vec::new()
    } else {
        next()
    };
    let rules = next();
    let combinations = next();
    attrition.push(Attrition {
        rule: "follow-up of at least one day".to_string(),
        persons: int_at(&followed, "persons"),
        entries: int_at(&followed, "entries"),
    });
    let attrition_by_arm = arm_rows(study, &attrition, &by_arm, &followed_by_arm);
    let (inclusion_rules, rule_combinations) = rule_counts(study, &rules, &combinations);
    m.release(plan::COHORT)?;
    m.release(plan::CONSENTING)?;
    for name in kept_domains {
        m.release(name)?;
    }
    lap("dataset", &mut timings, planning);
    timings.insert(0, ("plan", setup + planning));
    let tables_read = planner.tables_read();
    Ok(Execution {
        tables_read,
        attrition,
        attrition_by_arm,
        inclusion_rules,
        rule_combinations,
        cohort: cohort_rows,
        cohort_schema,
        dataset: dataset_rows,
        dataset_schema,
        timings,
        repeated_person_ids: None,
    })
}

/// The attrition by arm: each row of `attrition` from row 1 on (`qualifying index event`), per
/// arm in the study's order and then for entries in no arm, from the per-arm counts of the
/// population (`by_arm`) and of follow-up (`followed`).
fn arm_rows(
    study: &Study,
    attrition: &[Attrition],
    by_arm: &[RecordBatch],
    followed: &[RecordBatch],
) -> Vec<ArmAttrition> {
    if study.arms.is_empty() {
        return Vec::new();
    }
    let by_arm = text_rows(by_arm);
    let followed = text_rows(followed);
    let arm_of = |row: &std::collections::HashMap<String, Option<String>>| {
        row.get(plan::ARM).cloned().flatten()
    };
    let arms: Vec<Option<String>> = study
        .arms
        .iter()
        .map(|a| Some(a.name.clone()))
        .chain([None])
        .collect();
    let last = attrition.len() - 1;
    let mut out = Vec::new();
    for (i, row) in attrition.iter().enumerate().skip(1) {
        for arm in &arms {
            let (persons, entries) = if i == last {
                let found = followed.iter().find(|r| arm_of(r) == *arm);
                (
                    found.map_or(0, |r| count_in(r, "persons")),
                    found.map_or(0, |r| count_in(r, "entries")),
                )
            } else {
                let found = by_arm
                    .iter()
                    .find(|r| arm_of(r) == *arm && count_in(r, plan::ATTRITION_STEP) == i as u64);
                (
                    found.map_or(0, |r| count_in(r, plan::ATTRITION_PERSONS)),
                    found.map_or(0, |r| count_in(r, plan::ATTRITION_ENTRIES)),
                )
            };
            out.push(ArmAttrition {
                rule: row.rule.clone(),
                arm: arm.clone(),
                persons,
                entries,
            });
        }
    }
    out
}

/// Circe's inclusion-rule report: each step on its own, and each combination of steps passed
/// (`1, 3`, or `none`), from the plans `inclusion_rules` and `rule_combinations`.
fn rule_counts(
    study: &Study,
    rules: &[RecordBatch],
    combinations: &[RecordBatch],
) -> (Vec<RuleCount>, Vec<RuleCount>) {
    let each = study
        .steps
        .iter()
        .enumerate()
        .map(|(i, step)| {
            let (p, e) = plan::inclusion_columns(i);
            RuleCount {
                rule: step.rule.clone(),
                persons: int_at(rules, &p),
                entries: int_at(rules, &e),
            }
        })
        .collect();
    let combined = text_rows(combinations)
        .iter()
        .map(|row| {
            let pattern = row
                .get("combination")
                .cloned()
                .flatten()
                .unwrap_or_default();
            RuleCount {
                rule: crate::study::steps_passed(&pattern),
                persons: count_in(row, "persons"),
                entries: count_in(row, "entries"),
            }
        })
        .collect();
    (each, combined)
}

/// The plans of every stage, without running them: the pipeline `run` executes, each stage
/// reading an empty table with the previous stage's columns. For `plan` and `sql`; `facts`
/// as `data_facts` finds them for a repository, or none for SQL that runs anywhere.
pub async fn stage_plans(
    study: &Study,
    ctx: &SessionContext,
    facts: DataFacts,
) -> Result<Vec<(&'static str, LogicalPlan)>, String> {
    let only = PlansOnly {
        ctx,
        plans: std::sync::Mutex::new(Vec::new()),
    };
    run_stages(study, ctx, facts, &only, &|_| {}).await?;
    Ok(only.plans.into_inner().expect("not poisoned"))
}

/// The logical, optimised and physical plans of a stage, as text.
pub async fn explain_plan(
    ctx: &SessionContext,
    plan: &LogicalPlan,
) -> Result<(String, String, String), String> {
    let logical = plan.display_indent().to_string();
    let optimised = ctx.state().optimize(plan).map_err(engine)?;
    let physical = ctx
        .state()
        .create_physical_plan(plan)
        .await
        .map_err(engine)?;
    let optimised = optimised.display_indent().to_string();
    let physical = displayable(physical.as_ref()).indent(true).to_string();
    Ok((logical, optimised, physical))
}

/// SQL dialects `sql` can write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    Mysql,
    Sqlite,
    Duckdb,
    Bigquery,
}

/// One plan as a SQL statement of the dialect: unparsed from the plan, table references
/// unqualified (the script runs where the OMOP tables are on the search path).
fn to_sql(plan: &LogicalPlan, kind: Dialect) -> Result<String, String> {
    use datafusion::sql::unparser::dialect as d;
    use datafusion::sql::unparser::Unparser;
    let inner: Box<dyn d::Dialect> = match kind {
        Dialect::Postgres => Box::new(d::PostgreSqlDialect {}),
        Dialect::Mysql => Box::new(d::MySqlDialect {}),
        Dialect::Sqlite => Box::new(d::SqliteDialect {}),
        Dialect::Duckdb => Box::new(d::DuckDBDialect::new()),
        Dialect::Bigquery => Box::new(d::BigQueryDialect {}),
    };
    let portable = dialect::Portable {
        inner: inner.as_ref(),
        kind,
    };
    // Not `with_pretty`: it drops parentheses around day arithmetic that SQL needs.
    let unparser = Unparser::new(&portable);
    let mut statement = unparser.plan_to_sql(plan).map_err(engine)?;
    let _ =
        datafusion::sql::sqlparser::ast::VisitMut::visit(&mut statement, &mut dialect::Unqualify);
    Ok(statement.to_string())
}

/// A study as a SQL script: one `CREATE TEMPORARY TABLE … AS SELECT` per stage, then the
/// attrition, cohort and dataset queries. Each statement is unparsed from the stage's plan.
pub async fn sql_script(
    study: &Study,
    ctx: &SessionContext,
    dialect: Dialect,
) -> Result<String, String> {
    let stages = stage_plans(study, ctx, DataFacts::default()).await?;
    let mut script = format!(
        "-- {}\n-- Generated by cohortql {} ({:?} dialect). Stages are kept in temporary tables.\n\n",
        crate::printable::escaped(&study.title),
        env!("CARGO_PKG_VERSION"),
        dialect
    );
    for (name, plan) in stages {
        let statement = to_sql(&plan, dialect)?;
        if name.starts_with("cohortql_") {
            let create = if dialect == Dialect::Bigquery {
                "CREATE TEMP TABLE"
            } else {
                "CREATE TEMPORARY TABLE"
            };
            script.push_str(&format!("{create} {name} AS\n{statement};\n\n"));
        } else {
            script.push_str(&format!("-- {name}\n{statement};\n\n"));
        }
    }
    Ok(script)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;
    use datafusion::logical_expr::{lit, LogicalPlanBuilder};
    use datafusion::scalar::ScalarValue;

    /// One row of one column, `v`, computed from `value`.
    fn one(value: datafusion::logical_expr::Expr) -> LogicalPlan {
        LogicalPlanBuilder::empty(true)
            .project(vec![value.alias("v")])
            .unwrap()
            .build()
            .unwrap()
    }

    fn in_memory_engine<'a>(ctx: &'a SessionContext, analysis: &'a Analysis) -> InMemory<'a> {
        InMemory {
            ctx,
            analysis,
            keeping: Keeping::Sampled,
        }
    }

    fn first_value(batches: &[RecordBatch]) -> i64 {
        batches[0]
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("an Int64 column")
            .value(0)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn plans_side_by_side_give_their_rows_in_order_and_are_analysed_in_order() {
        let (ctx, analysis) = (SessionContext::new(), Analysis::new(None));
        let m = in_memory_engine(&ctx, &analysis);
        let names = ["first", "second", "third", "fourth"];
        let plans: Vec<_> = names
            .iter()
            .enumerate()
            .map(|(i, name)| (*name, one(lit(i as i64 * 10))))
            .collect();
        let rows = m.rows_of(plans.clone()).await.unwrap();
        let values: Vec<i64> = rows.iter().map(|(_, b)| first_value(b)).collect();
        assert_eq!(values, vec![0, 10, 20, 30]);
        // Analysed: each plan run as EXPLAIN ANALYZE shows it, in the order given.
        *analysis.lock().unwrap() = Some(Vec::new());
        let rows = m.rows_of(plans).await.unwrap();
        let values: Vec<i64> = rows.iter().map(|(_, b)| first_value(b)).collect();
        assert_eq!(values, vec![0, 10, 20, 30]);
        let analysed: Vec<String> = analysis
            .lock()
            .unwrap()
            .take()
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(analysed, names);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_plan_that_fails_beside_others_fails_them_all_with_its_message() {
        let (ctx, analysis) = (SessionContext::new(), Analysis::new(None));
        let m = in_memory_engine(&ctx, &analysis);
        let last_day = lit(ScalarValue::Date32(Some(i32::MAX)));
        let plans = vec![
            ("fine", one(lit(1i64))),
            (
                "too_late",
                one(crate::plan::days::days_add(last_day, lit(1i64))),
            ),
            ("also_fine", one(lit(2i64))),
        ];
        let error = m.rows_of(plans).await.unwrap_err();
        assert!(error.contains("out of range"), "{error}");
    }
}
