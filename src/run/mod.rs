//! Running a study on a repository: each stage's plan executed in turn and kept in memory as the
//! table the next stage reads, then the outputs written (`output`).

mod dialect;
pub mod output;
pub mod workspace;

use crate::plan::{self, Planner};
use crate::repo::clean_engine_message;
use crate::study::Study;
use datafusion::arrow::array::{Array, Int64Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::Result as DfResult;
use datafusion::datasource::MemTable;
use datafusion::error::DataFusionError;
use datafusion::functions_aggregate::expr_fn::{count, count_distinct};
use datafusion::logical_expr::{col, lit, LogicalPlan, LogicalPlanBuilder};
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

/// What running a study gives.
#[derive(Clone, Debug)]
pub struct Execution {
    pub attrition: Vec<Attrition>,
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
}

impl Execution {
    /// Persons in the final cohort.
    pub fn persons(&self) -> u64 {
        self.attrition.last().map_or(0, |a| a.persons)
    }
}

fn engine(e: DataFusionError) -> String {
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

async fn collect(
    ctx: &SessionContext,
    analysis: &Analysis,
    name: &str,
    plan: LogicalPlan,
) -> DfResult<(SchemaRef, Vec<RecordBatch>)> {
    let wanted = analysis.lock().expect("not poisoned").is_some();
    if wanted {
        let explained = ctx
            .execute_logical_plan(plan.clone())
            .await?
            .explain(false, true)?
            .collect()
            .await?;
        let text = datafusion::arrow::util::pretty::pretty_format_batches(&explained)?.to_string();
        if let Some(a) = analysis.lock().expect("not poisoned").as_mut() {
            a.push((name.to_string(), text));
        }
    }
    let frame = ctx.execute_logical_plan(plan).await?;
    let schema: SchemaRef = Arc::new(frame.schema().as_arrow().clone());
    let batches = frame.collect().await?;
    let schema = batches.first().map_or(schema, |b| b.schema());
    Ok((schema, batches))
}

/// Executes a stage and keeps its result as the named table; returns a scan of it.
async fn materialise(
    ctx: &SessionContext,
    analysis: &Analysis,
    name: &str,
    plan: LogicalPlan,
) -> DfResult<LogicalPlan> {
    let (schema, batches) = collect(ctx, analysis, name, plan).await?;
    register(ctx, name, schema, batches)
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
    run_stages(study, ctx, progress, &Analysis::new(None)).await
}

/// Runs a study as `execute` does, and gives each stage's plan as `EXPLAIN ANALYZE` shows it:
/// with the rows and time of every operator.
pub async fn execute_analysed(
    study: &Study,
    ctx: &SessionContext,
    progress: &dyn Fn(&str),
) -> Result<(Execution, Vec<(String, String)>), String> {
    let analysis = Analysis::new(Some(Vec::new()));
    let run = run_stages(study, ctx, progress, &analysis).await?;
    let stages = analysis
        .into_inner()
        .expect("not poisoned")
        .unwrap_or_default();
    Ok((run, stages))
}

async fn run_stages(
    study: &Study,
    ctx: &SessionContext,
    progress: &dyn Fn(&str),
    analysis: &Analysis,
) -> Result<Execution, String> {
    let mut timings = Vec::new();
    let mut clock = Instant::now();
    let mut lap = |name: &'static str, timings: &mut Vec<(&'static str, Duration)>| {
        timings.push((name, clock.elapsed()));
        clock = Instant::now();
    };
    // Time spent building plans, as opposed to running them.
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
    let setup = started.elapsed();
    progress("index events");
    let entries = planned!(planner.entries());
    let entries = materialise(ctx, analysis, plan::ENTRIES, entries)
        .await
        .map_err(engine)?;
    lap("entries", &mut timings);
    progress("attrition steps");
    let population = planned!(planner.population(entries));
    let population = materialise(ctx, analysis, plan::POPULATION, population)
        .await
        .map_err(engine)?;
    let counts = planned!(planner.attrition(population.clone()));
    let (_, counts) = collect(ctx, analysis, "attrition", counts)
        .await
        .map_err(engine)?;
    let mut attrition: Vec<Attrition> = planner
        .attrition_rules()
        .into_iter()
        .enumerate()
        .map(|(i, rule)| {
            let (persons, entries) = plan::attrition_columns(i);
            Attrition {
                rule,
                persons: int_at(&counts, &persons),
                entries: int_at(&counts, &entries),
            }
        })
        .collect();
    lap("population", &mut timings);
    progress("follow-up");
    let survivors = planned!(planner.survivors(population));
    let follow_up = planned!(planner.follow_up(survivors));
    let follow_up = materialise(ctx, analysis, plan::FOLLOW_UP, follow_up)
        .await
        .map_err(engine)?;
    let followed = LogicalPlanBuilder::from(follow_up.clone())
        .aggregate(
            Vec::<datafusion::logical_expr::Expr>::new(),
            vec![
                count_distinct(col(plan::PERSON)).alias("persons"),
                count(lit(1i64)).alias("entries"),
            ],
        )
        .and_then(|b| b.build())
        .map_err(engine)?;
    let (_, followed) = collect(ctx, analysis, "followed", followed)
        .await
        .map_err(engine)?;
    attrition.push(Attrition {
        rule: "follow-up of at least one day".to_string(),
        persons: int_at(&followed, "persons"),
        entries: int_at(&followed, "entries"),
    });
    let cohort = planned!(planner.cohort(follow_up));
    let cohort = materialise(ctx, analysis, plan::COHORT, cohort)
        .await
        .map_err(engine)?;
    lap("follow_up", &mut timings);
    progress("covariates and endpoints");
    let table = planned!(planner.cohort_table(cohort.clone()));
    let (cohort_schema, cohort_rows) = collect(ctx, analysis, "cohort", table)
        .await
        .map_err(engine)?;
    let dataset = planned!(planner.dataset(cohort));
    let (dataset_schema, dataset_rows) = collect(ctx, analysis, "dataset", dataset)
        .await
        .map_err(engine)?;
    lap("dataset", &mut timings);
    timings.insert(0, ("plan", setup + planning));
    let tables_read = planner.tables_read();
    Ok(Execution {
        tables_read,
        attrition,
        cohort: cohort_rows,
        cohort_schema,
        dataset: dataset_rows,
        dataset_schema,
        timings,
    })
}

/// The plans of every stage, without running them: each stage reads an empty table with the
/// previous stage's columns. For `plan` and `sql`.
pub async fn stage_plans(
    study: &Study,
    ctx: &SessionContext,
) -> Result<Vec<(&'static str, LogicalPlan)>, String> {
    let mut planner = Planner::new(study, ctx).await.map_err(engine)?;
    let empty = |name: &str, plan: &LogicalPlan| -> DfResult<LogicalPlan> {
        register(
            ctx,
            name,
            Arc::new(plan.schema().as_arrow().clone()),
            vec![],
        )
    };
    let mut build = || -> DfResult<Vec<(&'static str, LogicalPlan)>> {
        let mut out = Vec::new();
        let entries = planner.entries()?;
        let entries_scan = empty(plan::ENTRIES, &entries)?;
        out.push((plan::ENTRIES, entries));
        let population = planner.population(entries_scan)?;
        let population_scan = empty(plan::POPULATION, &population)?;
        out.push((plan::POPULATION, population));
        out.push(("attrition", planner.attrition(population_scan.clone())?));
        let survivors = planner.survivors(population_scan)?;
        let follow_up = planner.follow_up(survivors)?;
        let follow_up_scan = empty(plan::FOLLOW_UP, &follow_up)?;
        out.push((plan::FOLLOW_UP, follow_up));
        let cohort = planner.cohort(follow_up_scan)?;
        let cohort_scan = empty(plan::COHORT, &cohort)?;
        out.push((plan::COHORT, cohort));
        out.push(("cohort", planner.cohort_table(cohort_scan.clone())?));
        out.push(("dataset", planner.dataset(cohort_scan)?));
        Ok(out)
    };
    build().map_err(engine)
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

/// A study as a SQL script: one `CREATE TEMPORARY TABLE … AS SELECT` per stage, then the
/// attrition, cohort and dataset queries. Each statement is unparsed from the stage's plan.
pub async fn sql_script(
    study: &Study,
    ctx: &SessionContext,
    dialect: Dialect,
) -> Result<String, String> {
    use datafusion::sql::unparser::dialect as d;
    use datafusion::sql::unparser::Unparser;
    let stages = stage_plans(study, ctx).await?;
    let inner: Box<dyn d::Dialect> = match dialect {
        Dialect::Postgres => Box::new(d::PostgreSqlDialect {}),
        Dialect::Mysql => Box::new(d::MySqlDialect {}),
        Dialect::Sqlite => Box::new(d::SqliteDialect {}),
        Dialect::Duckdb => Box::new(d::DuckDBDialect::new()),
        Dialect::Bigquery => Box::new(d::BigQueryDialect {}),
    };
    let portable = dialect::Portable {
        inner: inner.as_ref(),
        kind: dialect,
    };
    // Not `with_pretty`: it drops parentheses around day arithmetic that SQL needs.
    let unparser = Unparser::new(&portable);
    let mut script = format!(
        "-- {}\n-- Generated by cohortql {} ({:?} dialect). Stages are kept in temporary tables.\n\n",
        crate::printable::escaped(&study.title),
        env!("CARGO_PKG_VERSION"),
        dialect
    );
    for (name, plan) in stages {
        let mut statement = unparser.plan_to_sql(&plan).map_err(engine)?;
        let _ = datafusion::sql::sqlparser::ast::VisitMut::visit(
            &mut statement,
            &mut dialect::Unqualify,
        );
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
