//! The rows that start a group in a sorted stream, as one vectorised pass instead of a window.
//!
//! `Planner::first_rows` keeps each group's first row by sorting all rows by the group's keys
//! and then its order, computing `lag(key)` over that order, and keeping the rows whose
//! previous key is NULL or differs. That is portable SQL, which every engine and dialect runs
//! alike; but DataFusion evaluates `lag` one row at a time (a value object per row, a tenth of
//! the NSAID study's entries stage). [`GroupStarts`], a physical optimizer rule of cohortql's
//! own sessions, recognises the window and its filter and replaces them with
//! [`GroupStartsExec`]: the same rows, chosen by comparing each key column with itself
//! shifted by one row. It also drops, in each sorted partition before they are merged, the
//! rows that cannot start a group, so that the merge, which runs on one core, handles fewer;
//! and before the sort, with one key, [`FirstCandidatesExec`] drops the rows whose first order
//! value is beaten by a row of the same key just before them, so that the sort handles fewer.
//! Plans that do not have this exact shape are left alone. An inner join of those rows, one
//! per key, with a table on that key (the entries with `person`) then builds its hash table
//! from them rather than from the table, which DataFusion's estimates, made while the window
//! was there, would have chosen. The rule runs before the joins make their dynamic filters.

use datafusion::arrow::array::{
    new_null_array, Array, ArrayRef, AsArray, BooleanArray, BooleanBufferBuilder,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::compute::kernels::cmp::neq;
use datafusion::arrow::compute::{concat, filter_record_batch, is_null, or_kleene};
use datafusion::arrow::datatypes::{DataType, Int64Type, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::JoinType;
use datafusion::common::{Result, ScalarValue};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::Operator;
use datafusion::physical_expr::expressions::{BinaryExpr, Column, IsNullExpr, Literal};
use datafusion::physical_expr::window::StandardWindowExpr;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::PhysicalSortExpr;
use datafusion::physical_optimizer::sanity_checker::SanityCheckPlan;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::windows::{BoundedWindowAggExec, WindowUDFExpr};
use datafusion::physical_plan::{
    replace_children_if_necessary, DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties,
    SendableRecordBatchStream,
};
use futures::StreamExt;
use std::sync::Arc;

/// A filter of each partition's stream that decides from the rows before it too (`Keeper`):
/// both operators of this module. The input's partitioning, order and equivalences hold for
/// what it keeps.
#[derive(Debug)]
pub struct KeptRowsExec<K> {
    input: Arc<dyn ExecutionPlan>,
    /// The state a partition's stream starts from.
    keeper: K,
    metrics: ExecutionPlanMetricsSet,
}

/// Keeps the rows of a stream sorted by `keys` that start a group of equal keys ([`Starts`]).
pub type GroupStartsExec = KeptRowsExec<Starts>;

/// Keeps the rows that can come first in their key's group once sorted ([`Best`]).
pub type FirstCandidatesExec = KeptRowsExec<Best>;

/// What a filter of one partition's stream keeps of each batch, knowing the batches before it,
/// and how its operator is shown.
pub trait Keeper: Clone + std::fmt::Debug + Send + Sync + 'static {
    /// The operator's name.
    const NAME: &'static str;
    /// The operator's settings, as `plan` shows them after its name.
    fn settings(&self, schema: &Schema) -> String;
    fn keep(&mut self, batch: RecordBatch) -> Result<RecordBatch>;
}

impl<K: Keeper> KeptRowsExec<K> {
    fn with(input: Arc<dyn ExecutionPlan>, keeper: K) -> Self {
        KeptRowsExec {
            input,
            keeper,
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }
}

impl<K: Keeper> DisplayAs for KeptRowsExec<K> {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let settings = self.keeper.settings(&self.input.schema());
        write!(f, "{}: {settings}", K::NAME)
    }
}

impl<K: Keeper> ExecutionPlan for KeptRowsExec<K> {
    fn name(&self) -> &str {
        K::NAME
    }

    /// A filter: the input's partitioning, order and equivalences hold for what it keeps.
    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    /// It evaluates no expression: it compares columns.
    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    #[allow(deprecated)]
    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let [input] = <[_; 1]>::try_from(children).map_err(|_| {
            datafusion::common::DataFusionError::Internal(format!("{} has one input", K::NAME))
        })?;
        Ok(Arc::new(KeptRowsExec::with(input, self.keeper.clone())))
    }

    /// One partition of the input with only the rows a fresh keeper keeps, its time and rows
    /// counted in the metrics.
    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let schema = self.input.schema();
        let rows = self.input.execute(partition, context)?;
        let metrics = BaselineMetrics::new(&self.metrics, partition);
        let mut keeper = self.keeper.clone();
        let stream = rows.map(move |batch| {
            let timer = metrics.elapsed_compute().timer();
            let kept = keeper.keep(batch?);
            timer.done();
            if let Ok(kept) = &kept {
                metrics.record_output(kept.num_rows());
            }
            kept
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

impl GroupStartsExec {
    pub fn new(input: Arc<dyn ExecutionPlan>, keys: Vec<usize>, exact: bool) -> Self {
        KeptRowsExec::with(
            input,
            Starts {
                keys,
                exact,
                last: None,
            },
        )
    }
}

/// Keeps the rows of a stream sorted by `keys` (first, in any direction) that start a group
/// of equal keys. `exact`: the meaning of `Planner::first_rows`'s filter over the whole
/// stream — a row is kept when, for some key, the previous row's value is NULL or differs
/// (the first row's previous is NULL; a NULL compared with a value keeps nothing). Otherwise
/// a pre-filter of one sorted partition: a row is dropped only when every key and the
/// previous row's are non-NULL and equal, which never drops a row the exact filter keeps after
/// the partitions are merged, nor changes its decision for any row it keeps. The state of one
/// partition's stream: the keys of the last row seen.
#[derive(Debug, Clone)]
pub struct Starts {
    keys: Vec<usize>,
    exact: bool,
    last: Option<Vec<ArrayRef>>,
}

impl Keeper for Starts {
    const NAME: &'static str = "GroupStartsExec";

    fn settings(&self, schema: &Schema) -> String {
        let keys: Vec<String> = self
            .keys
            .iter()
            .map(|&k| format!("{}@{k}", schema.field(k).name()))
            .collect();
        let scope = if self.exact {
            ""
        } else {
            ", in each partition"
        };
        format!("keys=[{}]{scope}", keys.join(", "))
    }

    fn keep(&mut self, batch: RecordBatch) -> Result<RecordBatch> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(batch);
        }
        let mut keep: Option<BooleanArray> = None;
        let mut last = Vec::with_capacity(self.keys.len());
        for (i, &k) in self.keys.iter().enumerate() {
            let column = batch.column(k);
            let before = match &self.last {
                Some(last) => Arc::clone(&last[i]),
                None => new_null_array(column.data_type(), 1),
            };
            let previous = concat(&[before.as_ref(), column.slice(0, n - 1).as_ref()])?;
            let differs = or_kleene(&is_null(&previous)?, &neq(&previous, column)?)?;
            let starts = if self.exact {
                differs
            } else {
                or_kleene(&differs, &is_null(column)?)?
            };
            keep = Some(match keep {
                Some(so_far) => or_kleene(&so_far, &starts)?,
                None => starts,
            });
            last.push(column.slice(n - 1, 1));
        }
        self.last = Some(last);
        match keep {
            Some(keep) => Ok(filter_record_batch(&batch, &keep)?),
            None => Ok(batch),
        }
    }
}

/// The optimizer rule that puts [`GroupStartsExec`] where `Planner::first_rows`'s window and
/// filter were.
#[derive(Debug, Default)]
pub struct GroupStarts;

impl PhysicalOptimizerRule for GroupStarts {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let plan = plan
            .transform_down(|node| match rewrite(&node)? {
                Some(new) => Ok(Transformed::yes(new)),
                None => Ok(Transformed::no(node)),
            })?
            .data;
        let swapped =
            Arc::clone(&plan).transform_up(|node| match build_from_group_starts(&node)? {
                Some(new) => Ok(Transformed::yes(new)),
                None => Ok(Transformed::no(node)),
            })?;
        // A join that builds from the other side no longer keeps that side's order: should an
        // operator above have relied on it, the plan keeps its joins as they were.
        if swapped.transformed
            && SanityCheckPlan::new()
                .optimize(Arc::clone(&swapped.data), config)
                .is_ok()
        {
            Ok(swapped.data)
        } else {
            Ok(plan)
        }
    }

    fn name(&self) -> &str {
        "group_starts"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// An inner join that builds its table from one row per person (the persons table, say) and
/// probes it with the rows [`GroupStartsExec`] keeps, one per value of the join's key, built
/// from those rows instead, the persons probing it. DataFusion chose the sides from estimates
/// made while the window was there, which know nothing of there being one row per key: at
/// 10,000,000 persons, the NSAID study's entries built a table of every person (1.3 s, on one
/// core) to join 2.8 million entries.
fn build_from_group_starts(
    node: &Arc<dyn ExecutionPlan>,
) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    let Some(join) = node.downcast_ref::<HashJoinExec>() else {
        return Ok(None);
    };
    if *join.partition_mode() != PartitionMode::CollectLeft
        || *join.join_type() != JoinType::Inner
        || join.null_aware
        || !join.dynamic_expressions_produced().is_empty()
        || join.on().len() != 1
    {
        return Ok(None);
    }
    let Some(collected) = join.left().downcast_ref::<CoalescePartitionsExec>() else {
        return Ok(None);
    };
    let Some(key) = join.on()[0].1.downcast_ref::<Column>().map(Column::index) else {
        return Ok(None);
    };
    if !one_row_per_key(join.right(), key) {
        return Ok(None);
    }
    let (build, probe) = (
        Arc::new(CoalescePartitionsExec::new(Arc::clone(join.right()))) as Arc<dyn ExecutionPlan>,
        Arc::clone(collected.input()),
    );
    let swapped = join.swap_inputs(PartitionMode::CollectLeft)?;
    // `swap_inputs` puts the collected side second, and may put a projection over the join to
    // restore the column order; the probe side is to be read in partitions.
    let (wrapper, inner) = match swapped.downcast_ref::<HashJoinExec>() {
        Some(_) => (None, Arc::clone(&swapped)),
        None => match swapped.children().first() {
            Some(&inner) => (Some(Arc::clone(&swapped)), Arc::clone(inner)),
            None => return Ok(None),
        },
    };
    let Some(new_join) = inner.downcast_ref::<HashJoinExec>() else {
        return Ok(None);
    };
    let rebuilt: Arc<dyn ExecutionPlan> = Arc::new(
        new_join
            .builder()
            .with_new_children(vec![build, probe])?
            .recompute_properties()
            .build()?,
    );
    let swapped = match wrapper {
        Some(wrapper) => replace_children_if_necessary(wrapper, vec![rebuilt])?,
        None => rebuilt,
    };
    if swapped.schema().fields() != node.schema().fields() {
        return Ok(None);
    }
    Ok(Some(swapped))
}

/// Whether a plan's rows have one value of column `key` each: they come from an exact
/// [`GroupStartsExec`] on that column alone, through projections of columns and repartitions.
fn one_row_per_key(plan: &Arc<dyn ExecutionPlan>, key: usize) -> bool {
    under_moves(plan).is_some_and(|(_, map, below)| {
        below
            .downcast_ref::<GroupStartsExec>()
            .is_some_and(|starts| starts.keeper.exact && starts.keeper.keys == [map[key]])
    })
}

/// The first operator under `plan` that neither moves rows between partitions nor projects
/// columns, with the repartitions passed on the way (top first) and, for each column of
/// `plan`, the column of that operator's output it is. `None` when a projection computes.
#[allow(clippy::type_complexity)]
fn under_moves(
    plan: &Arc<dyn ExecutionPlan>,
) -> Option<(
    Vec<Arc<dyn ExecutionPlan>>,
    Vec<usize>,
    Arc<dyn ExecutionPlan>,
)> {
    let mut between = Vec::new();
    let mut map: Vec<usize> = (0..plan.schema().fields().len()).collect();
    let mut below = Arc::clone(plan);
    loop {
        if below.downcast_ref::<RepartitionExec>().is_some() {
            let next = Arc::clone(below.children()[0]);
            between.push(below);
            below = next;
        } else if let Some(projection) = below.downcast_ref::<ProjectionExec>() {
            let sources: Vec<usize> = projection
                .expr()
                .iter()
                .map(|e| e.expr.downcast_ref::<Column>().map(Column::index))
                .collect::<Option<_>>()?;
            for m in map.iter_mut() {
                *m = sources[*m];
            }
            below = Arc::clone(projection.input());
        } else {
            return Some((between, map, below));
        }
    }
}

/// The replacement of a `FilterExec` that keeps the rows starting a group after a window of
/// `lag`s, when the plan has exactly that shape.
fn rewrite(node: &Arc<dyn ExecutionPlan>) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    let Some(filter) = node.downcast_ref::<FilterExec>() else {
        return Ok(None);
    };
    if filter.fetch().is_some() {
        return Ok(None);
    }
    // Between the filter and the window: operators that move rows between partitions, kept,
    // and projections of columns, which `map` follows.
    let Some((between, map, below)) = under_moves(filter.input()) else {
        return Ok(None);
    };
    let Some(window) = below.downcast_ref::<BoundedWindowAggExec>() else {
        return Ok(None);
    };
    let width = window.input().schema().fields().len();
    let Some(keys) = lag_keys(window) else {
        return Ok(None);
    };
    let lags: Vec<(usize, usize)> = keys
        .iter()
        .enumerate()
        .map(|(j, &k)| (width + j, k))
        .collect();
    if !starts_a_group(filter.predicate(), &lags, &map) {
        return Ok(None);
    }
    let projection: Vec<usize> = match filter.projection() {
        Some(p) => p.iter().map(|&i| map[i]).collect(),
        None => map.clone(),
    };
    if projection.iter().any(|&i| i >= width) {
        return Ok(None);
    }
    // Drop rows in each sorted partition before the merge, then choose exactly after it.
    let mut sorted = Arc::clone(window.input());
    if let Some(merge) = sorted.downcast_ref::<SortPreservingMergeExec>() {
        if merge.fetch().is_none() {
            let partitions = Arc::new(GroupStartsExec::new(
                with_first_candidates(merge.input(), &keys)?,
                keys.clone(),
                false,
            ));
            sorted = replace_children_if_necessary(Arc::clone(&sorted), vec![partitions])?;
        }
    }
    let mut plan: Arc<dyn ExecutionPlan> = Arc::new(GroupStartsExec::new(sorted, keys, true));
    for node in between.into_iter().rev() {
        plan = replace_children_if_necessary(node, vec![plan])?;
    }
    let (schema, wanted) = (plan.schema(), node.schema());
    let columns: Vec<(Arc<dyn PhysicalExpr>, String)> = projection
        .iter()
        .zip(wanted.fields())
        .map(|(&i, field)| {
            let column = Column::new(schema.field(i).name(), i);
            (
                Arc::new(column) as Arc<dyn PhysicalExpr>,
                field.name().to_string(),
            )
        })
        .collect();
    let plan: Arc<dyn ExecutionPlan> = Arc::new(ProjectionExec::try_new(columns, plan)?);
    // The replacement must give the filter's rows in the filter's columns, or it is not one.
    if plan.schema().fields() != node.schema().fields() {
        return Ok(None);
    }
    Ok(Some(plan))
}

/// A sort of one partition by one key and then an order (`SortExec`, no limit) with
/// [`FirstCandidatesExec`] under it when the key is an integer and the order's first column an
/// integer or a date; the sort as it is otherwise.
fn with_first_candidates(
    sorted: &Arc<dyn ExecutionPlan>,
    keys: &[usize],
) -> Result<Arc<dyn ExecutionPlan>> {
    let unchanged = Ok(Arc::clone(sorted));
    let Some(sort) = sorted.downcast_ref::<SortExec>() else {
        return unchanged;
    };
    let ([key], false) = (keys, sort.fetch().is_some()) else {
        return unchanged;
    };
    let exprs: Vec<&PhysicalSortExpr> = sort.expr().iter().collect();
    let column = |e: &PhysicalSortExpr| e.expr.downcast_ref::<Column>().map(Column::index);
    let (Some(first), Some(then)) = (exprs.first(), exprs.get(1)) else {
        return unchanged;
    };
    let (Some(k), Some(o)) = (column(first), column(then)) else {
        return unchanged;
    };
    let schema = sort.input().schema();
    let integer = |i: usize| matches!(schema.field(i).data_type(), DataType::Int64);
    let orderable = |i: usize| {
        matches!(
            schema.field(i).data_type(),
            DataType::Int64 | DataType::Date32
        )
    };
    if k != *key || !integer(k) || !orderable(o) || !sort.preserve_partitioning() {
        return unchanged;
    }
    let candidates = Arc::new(FirstCandidatesExec::new(
        Arc::clone(sort.input()),
        k,
        o,
        then.options.descending,
    ));
    replace_children_if_necessary(Arc::clone(sorted), vec![candidates])
}

impl FirstCandidatesExec {
    pub fn new(input: Arc<dyn ExecutionPlan>, key: usize, order: usize, descending: bool) -> Self {
        KeptRowsExec::with(
            input,
            Best {
                key,
                order,
                descending,
                current: None,
            },
        )
    }
}

/// Keeps, of a stream, every row that can come first in its key's group once the rows are
/// sorted by the key and then by `order` (descending when `descending`), and drops others as
/// they come: a row whose order value is beaten (strictly smaller, or larger when descending)
/// by that of a row of the same key kept since the key last changed. A dropped row has a
/// kept row of its key before it in the sort, so the first rows are all kept; rows with a NULL
/// key or order value are kept. Records read in order of person and date (as OMOP tables are
/// commonly written) keep about one row per person. The state of one partition's stream: the
/// last key seen and the best order value kept for it.
#[derive(Debug, Clone)]
pub struct Best {
    key: usize,
    order: usize,
    descending: bool,
    current: Option<(i64, i64)>,
}

impl Keeper for Best {
    const NAME: &'static str = "FirstCandidatesExec";

    fn settings(&self, schema: &Schema) -> String {
        let direction = if self.descending { "DESC" } else { "ASC" };
        format!(
            "key={}@{}, order={}@{} {direction}",
            schema.field(self.key).name(),
            self.key,
            schema.field(self.order).name(),
            self.order
        )
    }

    fn keep(&mut self, batch: RecordBatch) -> Result<RecordBatch> {
        let keys = batch.column(self.key).as_primitive::<Int64Type>();
        let order = cast(batch.column(self.order), &DataType::Int64)?;
        let order = order.as_primitive::<Int64Type>();
        let mut keep = BooleanBufferBuilder::new(batch.num_rows());
        for i in 0..batch.num_rows() {
            if keys.is_null(i) || order.is_null(i) {
                keep.append(true);
                continue;
            }
            let (k, v) = (keys.value(i), order.value(i));
            match &mut self.current {
                Some((key, best)) if *key == k => {
                    let beaten = if self.descending {
                        v < *best
                    } else {
                        v > *best
                    };
                    if !beaten {
                        *best = v;
                    }
                    keep.append(!beaten);
                }
                current => {
                    *current = Some((k, v));
                    keep.append(true);
                }
            }
        }
        let keep = BooleanArray::new(keep.finish(), None);
        Ok(filter_record_batch(&batch, &keep)?)
    }
}

/// The columns of a window that computes only `lag(key, 1)` of its input's columns, one per
/// key, over one order that starts with those keys and no partition: the keys, in order.
fn lag_keys(window: &BoundedWindowAggExec) -> Option<Vec<usize>> {
    let exprs = window.window_expr();
    let order = exprs.first()?.order_by();
    let mut keys = Vec::new();
    for expr in exprs {
        if !expr.partition_by().is_empty() || expr.order_by() != order {
            return None;
        }
        let standard = expr.as_any().downcast_ref::<StandardWindowExpr>()?;
        let udwf = standard
            .get_standard_func_expr()
            .as_any()
            .downcast_ref::<WindowUDFExpr>()?;
        // Neither reversed (it would be evaluated as `lead`) nor ignoring NULLs.
        let debug = format!("{udwf:?}");
        if udwf.fun().name() != "lag"
            || !debug.contains("is_reversed: false")
            || !debug.contains("ignore_nulls: false")
        {
            return None;
        }
        let args = udwf.args();
        let key = args.first()?.downcast_ref::<Column>()?.index();
        let offset_is_one = match args.get(1) {
            None => true,
            Some(a) => a
                .downcast_ref::<Literal>()
                .is_some_and(|l| matches!(l.value(), ScalarValue::Int64(Some(1)))),
        };
        let default_is_null = match args.get(2) {
            None => true,
            Some(a) => a
                .downcast_ref::<Literal>()
                .is_some_and(|l| l.value().is_null()),
        };
        if !offset_is_one || !default_is_null || args.len() > 3 {
            return None;
        }
        keys.push(key);
    }
    if order.len() < keys.len() {
        return None;
    }
    for (sort, &key) in order.iter().zip(&keys) {
        if sort.expr.downcast_ref::<Column>()?.index() != key {
            return None;
        }
    }
    Some(keys)
}

/// Whether `predicate` is the disjunction, over every `(previous, key)` column pair, of
/// `previous IS NULL` and `previous != key`, and nothing else; its columns are the window's
/// through `map`.
fn starts_a_group(
    predicate: &Arc<dyn PhysicalExpr>,
    lags: &[(usize, usize)],
    map: &[usize],
) -> bool {
    let mut terms = Vec::new();
    disjuncts(predicate, &mut terms);
    let column = |e: &Arc<dyn PhysicalExpr>| {
        e.downcast_ref::<Column>()
            .and_then(|c| map.get(c.index()).copied())
    };
    let mut wanted: Vec<(bool, usize, usize)> = lags
        .iter()
        .flat_map(|&(p, k)| [(true, p, k), (false, p, k)])
        .collect();
    if terms.len() != wanted.len() {
        return false;
    }
    for term in terms {
        let found = if let Some(is_null) = term.downcast_ref::<IsNullExpr>() {
            let Some(p) = column(is_null.arg()) else {
                return false;
            };
            wanted.iter().position(|&(null, q, _)| null && q == p)
        } else if let Some(b) = term.downcast_ref::<BinaryExpr>() {
            if *b.op() != Operator::NotEq {
                return false;
            }
            let (Some(l), Some(r)) = (column(b.left()), column(b.right())) else {
                return false;
            };
            wanted
                .iter()
                .position(|&(null, p, k)| !null && ((l, r) == (p, k) || (l, r) == (k, p)))
        } else {
            None
        };
        match found {
            Some(i) => {
                wanted.swap_remove(i);
            }
            None => return false,
        }
    }
    wanted.is_empty()
}

fn disjuncts<'a>(e: &'a Arc<dyn PhysicalExpr>, out: &mut Vec<&'a Arc<dyn PhysicalExpr>>) {
    match e.downcast_ref::<BinaryExpr>() {
        Some(b) if *b.op() == Operator::Or => {
            disjuncts(b.left(), out);
            disjuncts(b.right(), out);
        }
        _ => out.push(e),
    }
}
