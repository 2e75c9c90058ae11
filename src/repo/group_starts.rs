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
//! rows that cannot start a group, so that the merge, which runs on one core, handles fewer.
//! Plans that do not have this exact shape are left alone.

use datafusion::arrow::array::{new_null_array, Array, ArrayRef, BooleanArray};
use datafusion::arrow::compute::kernels::cmp::neq;
use datafusion::arrow::compute::{concat, filter_record_batch, is_null, or_kleene};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Result, ScalarValue};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::Operator;
use datafusion::physical_expr::expressions::{BinaryExpr, Column, IsNullExpr, Literal};
use datafusion::physical_expr::window::StandardWindowExpr;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::windows::{BoundedWindowAggExec, WindowUDFExpr};
use datafusion::physical_plan::{
    replace_children_if_necessary, DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties,
    SendableRecordBatchStream,
};
use futures::StreamExt;
use std::sync::Arc;

/// Keeps the rows of a stream sorted by `keys` (first, in any direction) that start a group
/// of equal keys. `exact`: the meaning of `Planner::first_rows`'s filter over the whole
/// stream — a row is kept when, for some key, the previous row's value is NULL or differs
/// (the first row's previous is NULL; a NULL compared with a value keeps nothing). Otherwise
/// a pre-filter of one sorted partition: a row is dropped only when every key and the
/// previous row's are non-NULL and equal, which never drops a row the exact filter keeps after
/// the partitions are merged, nor changes its decision for any row it keeps.
#[derive(Debug)]
pub struct GroupStartsExec {
    input: Arc<dyn ExecutionPlan>,
    keys: Vec<usize>,
    exact: bool,
    metrics: ExecutionPlanMetricsSet,
}

impl GroupStartsExec {
    pub fn new(input: Arc<dyn ExecutionPlan>, keys: Vec<usize>, exact: bool) -> Self {
        GroupStartsExec {
            input,
            keys,
            exact,
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }
}

impl DisplayAs for GroupStartsExec {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let schema = self.input.schema();
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
        write!(f, "GroupStartsExec: keys=[{}]{scope}", keys.join(", "))
    }
}

impl ExecutionPlan for GroupStartsExec {
    fn name(&self) -> &str {
        "GroupStartsExec"
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
            datafusion::common::DataFusionError::Internal("GroupStartsExec has one input".into())
        })?;
        Ok(Arc::new(GroupStartsExec::new(
            input,
            self.keys.clone(),
            self.exact,
        )))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let metrics = BaselineMetrics::new(&self.metrics, partition);
        let mut starts = Starts {
            keys: self.keys.clone(),
            exact: self.exact,
            last: None,
        };
        let stream = input.map(move |batch| {
            let timer = metrics.elapsed_compute().timer();
            let kept = starts.keep(batch?);
            timer.done();
            if let Ok(kept) = &kept {
                metrics.record_output(kept.num_rows());
            }
            kept
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema(),
            stream,
        )))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

/// The state of one partition's stream: the keys of the last row seen.
struct Starts {
    keys: Vec<usize>,
    exact: bool,
    last: Option<Vec<ArrayRef>>,
}

impl Starts {
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
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_down(|node| match rewrite(&node)? {
            Some(new) => Ok(Transformed::yes(new)),
            None => Ok(Transformed::no(node)),
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "group_starts"
    }

    fn schema_check(&self) -> bool {
        true
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
    // and projections of columns, which `map` follows: it takes a column of the filter's input
    // to the window's output column it is.
    let mut between: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
    let mut map: Vec<usize> = (0..filter.input().schema().fields().len()).collect();
    let mut below = Arc::clone(filter.input());
    loop {
        if below.downcast_ref::<RepartitionExec>().is_some() {
            let next = Arc::clone(below.children()[0]);
            between.push(below);
            below = next;
        } else if let Some(projection) = below.downcast_ref::<ProjectionExec>() {
            let mut sources = Vec::new();
            for e in projection.expr() {
                match e.expr.downcast_ref::<Column>() {
                    Some(c) => sources.push(c.index()),
                    None => return Ok(None),
                }
            }
            for m in map.iter_mut() {
                *m = sources[*m];
            }
            below = Arc::clone(projection.input());
        } else {
            break;
        }
    }
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
                Arc::clone(merge.input()),
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
