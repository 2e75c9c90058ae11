//! A hash join's probe side, rid of the rows whose key its build side does not have before
//! they are probed.
//!
//! A join that looks up values by id, such as the image features' values by `measurement_id`,
//! builds its hash table from the few rows it looks up (290,000 image features at 1,000,000
//! persons) and probes it with every row of the other side (8.16 million measurements), of
//! which few match. Hashing each and looking it up is most of the join's time.
//! [`KeyFilters`], a physical optimizer rule of cohortql's own sessions, gives such a join a
//! [`KeyExec`] over each side: over its build side (`KeyRecorderExec`) it records the keys it
//! passes, over its probe side (`KeyFilterExec`), once the build side has ended, it drops the rows
//! whose key is not among them: one bit tested per row, in a bitmap over the range of the
//! keys. A build side that only passes on a table in memory (a stage kept before) gives its
//! keys when the rule runs, and has no recorder: they are known before anything runs, for a
//! shared scan (`shared_scans`) under the filter to test from its first row.
//!
//! Only where that cannot change the join's result: a join with one build table
//! (`CollectLeft`), one integer key, NULL matching nothing, and a type whose output has no
//! row of the probe side without a match (inner, left, left semi, left anti, left mark and
//! right semi joins); a null-aware anti join, which a NULL on the probe side empties, is left
//! alone. A filter that keeps more than half of the first rows it sees lets the rest through
//! untested; no bitmap is made, and every row passes, when it would be too large for the keys
//! it holds, or when the keys are dense enough that DataFusion's join finds them in an array
//! (`perfect_hash_join_*`), as fast as the bitmap would.

use datafusion::arrow::array::{Array, AsArray, BooleanArray, PrimitiveArray};
use datafusion::arrow::buffer::BooleanBuffer;
use datafusion::arrow::compute::{cast, filter_record_batch};
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{JoinType, NullEquality, Result};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::TaskContext;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::metrics::{
    BaselineMetrics, Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet,
};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
    SendableRecordBatchStream,
};
use futures::StreamExt;
use std::sync::{Arc, Mutex, OnceLock};

/// The physical optimizer rule: every hash join that qualifies (see the module) gets a
/// recorder over its build side and a filter over its probe side, sharing one [`Keys`].
#[derive(Debug, Default)]
pub struct KeyFilters;

impl PhysicalOptimizerRule for KeyFilters {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(plan
            .transform_up(|node| match with_key_filter(&node, config)? {
                Some(new) => Ok(Transformed::yes(new)),
                None => Ok(Transformed::no(node)),
            })?
            .data)
    }

    fn name(&self) -> &str {
        "key_filters"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// The join with its sides wrapped, or `None` when it does not qualify.
fn with_key_filter(
    node: &Arc<dyn ExecutionPlan>,
    config: &ConfigOptions,
) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    let Some(join) = node.downcast_ref::<HashJoinExec>() else {
        return Ok(None);
    };
    let keeps_only_matched_probe_rows = matches!(
        join.join_type(),
        JoinType::Inner
            | JoinType::Left
            | JoinType::LeftSemi
            | JoinType::LeftAnti
            | JoinType::LeftMark
            | JoinType::RightSemi
    );
    let (build, probe) = (join.left(), join.right());
    if *join.partition_mode() != PartitionMode::CollectLeft
        || !keeps_only_matched_probe_rows
        || join.null_aware
        || join.null_equality() != NullEquality::NullEqualsNothing
        || join.on().len() != 1
        || build.output_partitioning().partition_count() != 1
        || build.downcast_ref::<KeyExec>().is_some()
    {
        return Ok(None);
    }
    let (build_key, probe_key) = &join.on()[0];
    let integer = |t: DataType| matches!(t, DataType::Int32 | DataType::Int64);
    if !integer(build_key.data_type(&build.schema())?)
        || !integer(probe_key.data_type(&probe.schema())?)
    {
        return Ok(None);
    }
    let keys = Arc::new(Keys {
        array_map_below_span: config.execution.perfect_hash_join_small_build_threshold as u64,
        array_map_above_density: config.execution.perfect_hash_join_min_key_density,
        ..Keys::default()
    });
    // A build side already in memory (a stage kept before) gives its keys now, so that they
    // are known before anything runs: a shared scan (`shared_scans`) that starts before this
    // join's build side has run can test them.
    let build: Arc<dyn ExecutionPlan> = match in_memory_keys(build, build_key)? {
        Some(columns) => {
            for column in columns {
                keys.record(column);
            }
            keys.end();
            Arc::clone(build)
        }
        None => Arc::new(KeyExec::new(
            Side::Build,
            Arc::clone(build),
            Arc::clone(build_key),
            Arc::clone(&keys),
        )),
    };
    let filter = KeyExec::new(Side::Probe, Arc::clone(probe), Arc::clone(probe_key), keys);
    #[allow(deprecated)]
    let join = Arc::clone(node).with_new_children(vec![build, Arc::new(filter)])?;
    Ok(Some(join))
}

/// The key column of every batch of a build side that only passes on, unfiltered, the rows
/// of a table in memory (through projections and repartitioning), as 64-bit
/// integers; `None` for any other build side.
fn in_memory_keys(
    build: &Arc<dyn ExecutionPlan>,
    key: &Arc<dyn PhysicalExpr>,
) -> Result<Option<Vec<Arc<dyn Array>>>> {
    let Some(column) = key.downcast_ref::<Column>() else {
        return Ok(None);
    };
    let Some((node, index)) = column_below(build, column.index(), true) else {
        return Ok(None);
    };
    let Some(memory) = node
        .downcast_ref::<DataSourceExec>()
        .and_then(|scan| scan.data_source().downcast_ref::<MemorySourceConfig>())
    else {
        return Ok(None);
    };
    let column = memory.projection().as_ref().map_or(index, |p| p[index]);
    let mut columns = Vec::new();
    for batch in memory.partitions().iter().flatten() {
        columns.push(cast(batch.column(column), &DataType::Int64)?);
    }
    Ok(Some(columns))
}

/// Where a column of a plan's rows comes from: the first node below that is not a projection
/// of plain columns (nor, `through_partitioning`, a repartition or a merge of partitions),
/// and the column's index in its rows; `None` if a projection computes the column.
pub(crate) fn column_below(
    plan: &Arc<dyn ExecutionPlan>,
    mut index: usize,
    through_partitioning: bool,
) -> Option<(Arc<dyn ExecutionPlan>, usize)> {
    let mut node = Arc::clone(plan);
    loop {
        let next = if let Some(projection) = node.downcast_ref::<ProjectionExec>() {
            index = projection.expr()[index]
                .expr
                .downcast_ref::<Column>()?
                .index();
            Arc::clone(projection.input())
        } else if through_partitioning
            && (node.downcast_ref::<CoalescePartitionsExec>().is_some()
                || node.downcast_ref::<RepartitionExec>().is_some())
        {
            Arc::clone(node.children()[0])
        } else {
            return Some((node, index));
        };
        node = next;
    }
}

/// A probe side's key filter (`KeyFilterExec`) whose key is a column of its input: that
/// column's index and the keys it tests, for a shared scan under it to test as it reads.
pub(crate) fn probe_key_column(node: &Arc<dyn ExecutionPlan>) -> Option<(usize, Arc<Keys>)> {
    let filter = node.downcast_ref::<KeyExec>()?;
    let column = filter.key.downcast_ref::<Column>()?;
    (filter.side == Side::Probe).then(|| (column.index(), Arc::clone(&filter.keys)))
}

/// The keys of a join's build side: recorded while it runs, then, once it has ended, the set
/// its probe side's filter tests.
#[derive(Debug, Default)]
pub(crate) struct Keys {
    /// The build side's key columns, as 64-bit integers, with the least and greatest key and
    /// the number of rows (NULL keys included) so far.
    recorded: Mutex<Recorded>,
    /// When DataFusion's join looks its keys up in an array rather than a hash table: their
    /// span under this, or their density (rows per value of the span) over this. It then
    /// finds a key as fast as the bitmap does, and the filter would only copy what it keeps.
    array_map_below_span: u64,
    array_map_above_density: f64,
    /// `Some(None)` when no bitmap is worth testing: the filter lets every row through.
    ended: OnceLock<Option<Bitmap>>,
}

/// Where a join's keys stand for a filter that would test them ([`Keys::state`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeysState {
    /// The build side has not ended.
    Pending,
    /// Ended, with a bitmap that `Keys::found` tests.
    Testable,
    /// Ended with no bitmap worth testing: every row passes.
    Untestable,
}

#[derive(Debug, Default)]
struct Recorded {
    columns: Vec<Arc<dyn Array>>,
    least: Option<i64>,
    greatest: Option<i64>,
    rows: usize,
}

impl Keys {
    /// Keeps a batch's keys (the column itself, not a copy).
    pub(crate) fn record(&self, keys: Arc<dyn Array>) {
        use datafusion::arrow::compute::{max, min};
        let values = keys.as_primitive::<Int64Type>();
        let (least, greatest) = (min(values), max(values));
        let mut r = self.recorded.lock().expect("not poisoned");
        r.rows += keys.len();
        r.least = r.least.into_iter().chain(least).min();
        r.greatest = r.greatest.into_iter().chain(greatest).max();
        r.columns.push(keys);
    }

    /// Where the keys stand: not ended, or ended with or without a bitmap to test.
    pub(crate) fn state(&self) -> KeysState {
        match self.ended.get() {
            None => KeysState::Pending,
            Some(Some(_)) => KeysState::Testable,
            Some(None) => KeysState::Untestable,
        }
    }

    /// Which of `values` are among the keys, once they have ended and a bitmap is worth
    /// testing (`None` before, or without one); NULL is among none.
    pub(crate) fn found(&self, values: &Arc<dyn Array>) -> Result<Option<BooleanArray>> {
        let Some(Some(bitmap)) = self.ended.get() else {
            return Ok(None);
        };
        let values = cast(values, &DataType::Int64)?;
        Ok(Some(bitmap.found(values.as_primitive::<Int64Type>())))
    }

    /// Ends the keys: makes the bitmap, if one is worth testing.
    pub(crate) fn end(&self) {
        let r = std::mem::take(&mut *self.recorded.lock().expect("not poisoned"));
        let bitmap = r.least.zip(r.greatest).and_then(|(least, greatest)| {
            let span = (greatest as i128 - least as i128 + 1) as u128;
            let array_map = span < self.array_map_below_span as u128
                || r.rows as f64 / span as f64 > self.array_map_above_density;
            if array_map || span > Bitmap::allowed(r.rows) as u128 {
                return None;
            }
            let mut bitmap = Bitmap::empty(least, span as u64);
            for column in &r.columns {
                for key in column.as_primitive::<Int64Type>().iter().flatten() {
                    bitmap.insert(key);
                }
            }
            Some(bitmap)
        });
        let _ = self.ended.set(bitmap);
    }
}

#[cfg(test)]
impl Keys {
    /// Keys tested in a bitmap however dense they are (`dense`: never), not yet ended.
    pub(crate) fn for_tests(dense: bool) -> Keys {
        Keys {
            array_map_above_density: if dense { 0.0 } else { 1.0 },
            ..Keys::default()
        }
    }
}

/// A set of integers as one bit per value between the least and the greatest.
#[derive(Debug)]
struct Bitmap {
    least: i64,
    /// The number of values the bits span.
    span: u64,
    words: Vec<u64>,
}

impl Bitmap {
    /// At most this many bits (32 MiB), and at most `BITS_PER_KEY` per key or `FEW_BITS`:
    /// a set whose range is wider is tested no faster than the join would probe it.
    const MAX_BITS: u64 = 1 << 28;
    const BITS_PER_KEY: u64 = 256;
    const FEW_BITS: u64 = 1 << 20;

    /// The widest span worth a bitmap for this many keys.
    fn allowed(keys: usize) -> u64 {
        (keys as u64)
            .saturating_mul(Self::BITS_PER_KEY)
            .clamp(Self::FEW_BITS, Self::MAX_BITS)
    }

    fn empty(least: i64, span: u64) -> Bitmap {
        let words = vec![0u64; span.div_ceil(64) as usize];
        Bitmap { least, span, words }
    }

    fn insert(&mut self, value: i64) {
        let at = value.wrapping_sub(self.least) as u64;
        self.words[(at / 64) as usize] |= 1 << (at % 64);
    }

    fn has(&self, value: i64) -> bool {
        let at = value.wrapping_sub(self.least) as u64;
        at < self.span && self.words[(at / 64) as usize] & (1 << (at % 64)) != 0
    }

    /// Which values are in the set, NULL in none.
    fn found(&self, values: &PrimitiveArray<Int64Type>) -> BooleanArray {
        let raw = values.values();
        let bits = BooleanBuffer::collect_bool(raw.len(), |i| self.has(raw[i]));
        let bits = match values.nulls() {
            Some(nulls) => &bits & nulls.inner(),
            None => bits,
        };
        BooleanArray::new(bits, None)
    }
}

/// The values of a key expression over a batch as 64-bit integers, NULLs where it is NULL.
fn key_values(key: &Arc<dyn PhysicalExpr>, batch: &RecordBatch) -> Result<Arc<dyn Array>> {
    let values = key.evaluate(batch)?.into_array(batch.num_rows())?;
    Ok(cast(&values, &DataType::Int64)?)
}

/// Which side of its join a [`KeyExec`] is on, and so what it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// `KeyRecorderExec`: passes the build side's rows through, recording their keys, and
    /// marks the keys ended when its input ends.
    Build,
    /// `KeyFilterExec`: drops the probe side's rows whose key the build side does not have,
    /// once it has ended.
    Probe,
}

/// One side of a join given a key filter: its input, the join's key on that side and the keys
/// both sides share.
#[derive(Debug)]
pub struct KeyExec {
    side: Side,
    input: Arc<dyn ExecutionPlan>,
    key: Arc<dyn PhysicalExpr>,
    keys: Arc<Keys>,
    metrics: ExecutionPlanMetricsSet,
}

impl KeyExec {
    fn new(
        side: Side,
        input: Arc<dyn ExecutionPlan>,
        key: Arc<dyn PhysicalExpr>,
        keys: Arc<Keys>,
    ) -> Self {
        KeyExec {
            side,
            input,
            key,
            keys,
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }

    /// The input's rows, each batch's keys recorded, the keys ended after the last.
    fn record(
        &self,
        rows: SendableRecordBatchStream,
        metrics: BaselineMetrics,
    ) -> impl futures::Stream<Item = Result<RecordBatch>> + Send + 'static {
        let (key, keys) = (Arc::clone(&self.key), Arc::clone(&self.keys));
        let ending = Arc::clone(&self.keys);
        rows.map(move |batch| {
            let batch = batch?;
            let timer = metrics.elapsed_compute().timer();
            keys.record(key_values(&key, &batch)?);
            timer.done();
            metrics.record_output(batch.num_rows());
            Ok(batch)
        })
        .map(Some)
        .chain(futures::stream::once(async move {
            ending.end();
            None
        }))
        .filter_map(futures::future::ready)
    }

    /// The input's rows whose key is among the ended keys.
    fn filter(
        &self,
        rows: SendableRecordBatchStream,
        metrics: BaselineMetrics,
        partition: usize,
    ) -> impl futures::Stream<Item = Result<RecordBatch>> + Send + 'static {
        let passed: Count = MetricBuilder::new(&self.metrics).counter("rows_untested", partition);
        let (key, keys) = (Arc::clone(&self.key), Arc::clone(&self.keys));
        // `None` until the first batch: a hash join asks for it only once its build side has
        // ended, and so the keys have. Should they not have, every row passes untested.
        let mut ended: Option<bool> = None;
        let (mut seen, mut kept) = (0usize, 0usize);
        rows.map(move |batch| {
            let batch = batch?;
            let ended = *ended.get_or_insert_with(|| keys.ended.get().is_some());
            let judged_useless = seen >= JUDGED_AFTER_ROWS && kept * 2 > seen;
            let bitmap = keys.ended.get().and_then(Option::as_ref);
            let Some(bitmap) = bitmap.filter(|_| ended && !judged_useless) else {
                passed.add(batch.num_rows());
                metrics.record_output(batch.num_rows());
                return Ok(batch);
            };
            let timer = metrics.elapsed_compute().timer();
            let values = key_values(&key, &batch)?;
            let found = bitmap.found(values.as_primitive::<Int64Type>());
            let out = filter_record_batch(&batch, &found)?;
            timer.done();
            seen += batch.num_rows();
            kept += out.num_rows();
            metrics.record_output(out.num_rows());
            Ok(out)
        })
    }
}

/// A filter that has tested this many rows and kept more than half of them lets the rest
/// through untested.
const JUDGED_AFTER_ROWS: usize = 65_536;

impl DisplayAs for KeyExec {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "{}: key={}", self.name(), self.key)
    }
}

impl ExecutionPlan for KeyExec {
    fn name(&self) -> &str {
        match self.side {
            Side::Build => "KeyRecorderExec",
            Side::Probe => "KeyFilterExec",
        }
    }

    /// A filter, or no filter on the build side: the input's partitioning, order and
    /// equivalences hold for what it passes.
    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        f(&self.key)
    }

    /// The same keys, which the operator on the join's other side shares.
    #[allow(deprecated)]
    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let [input] = <[_; 1]>::try_from(children).map_err(|_| {
            datafusion::common::DataFusionError::Internal(format!("{} has one input", self.name()))
        })?;
        let (key, keys) = (Arc::clone(&self.key), Arc::clone(&self.keys));
        Ok(Arc::new(KeyExec::new(self.side, input, key, keys)))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let schema = self.input.schema();
        let rows = self.input.execute(partition, context)?;
        let metrics = BaselineMetrics::new(&self.metrics, partition);
        Ok(match self.side {
            Side::Build => Box::pin(RecordBatchStreamAdapter::new(
                schema,
                self.record(rows, metrics),
            )),
            Side::Probe => Box::pin(RecordBatchStreamAdapter::new(
                schema,
                self.filter(rows, metrics, partition),
            )),
        })
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, RecordBatch};
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::arrow::util::display::array_value_to_string;
    use datafusion::datasource::MemTable;
    use datafusion::physical_plan::collect;
    use datafusion::prelude::SessionContext;

    const PROBE_ROWS: i64 = 200_000;

    /// A table of two 64-bit integer columns, in two partitions.
    fn table(columns: [&str; 2], rows: Vec<(Option<i64>, i64)>) -> Arc<MemTable> {
        let schema = Arc::new(Schema::new(vec![
            Field::new(columns[0], DataType::Int64, true),
            Field::new(columns[1], DataType::Int64, false),
        ]));
        let half = rows.len() / 2;
        let parts = [&rows[..half], &rows[half..]].map(|part| {
            let keys = Int64Array::from_iter(part.iter().map(|r| r.0));
            let values = Int64Array::from_iter_values(part.iter().map(|r| r.1));
            let batch =
                RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(keys), Arc::new(values)])
                    .unwrap();
            vec![batch]
        });
        Arc::new(MemTable::try_new(schema, parts.to_vec()).unwrap())
    }

    /// `b`: 50 keys a thousand apart (one twice) and two NULLs, a sparse build side; `p`:
    /// every key from 0 up, one in 997 NULL; `d`: every other key of `p`'s, dense enough for
    /// DataFusion's array lookup.
    fn register(ctx: &SessionContext) {
        let mut b: Vec<(Option<i64>, i64)> = (0..50).map(|i| (Some(i * 1_000 + 7), i)).collect();
        b.extend([(Some(5_007), 50), (None, 51), (None, 52)]);
        let p = (0..PROBE_ROWS)
            .map(|i| ((i % 997 != 0).then_some(i), i * 3))
            .collect();
        let d = (0..PROBE_ROWS / 2).map(|i| (Some(i * 2), i)).collect();
        ctx.register_table("b", table(["id", "val"], b)).unwrap();
        ctx.register_table("p", table(["id", "w"], p)).unwrap();
        ctx.register_table("d", table(["id", "x"], d)).unwrap();
    }

    /// The query's rows as sorted text, and the key filters of its plan after it ran: the rows
    /// each kept and let through untested.
    fn run(ctx: &SessionContext, sql: &str) -> (Vec<String>, Vec<(usize, usize)>) {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let plan = ctx
                .sql(sql)
                .await
                .unwrap()
                .create_physical_plan()
                .await
                .unwrap();
            let batches = collect(Arc::clone(&plan), ctx.task_ctx()).await.unwrap();
            let mut rows = Vec::new();
            for b in &batches {
                for i in 0..b.num_rows() {
                    let row: Vec<String> = b
                        .columns()
                        .iter()
                        .map(|c| array_value_to_string(c, i).unwrap())
                        .collect();
                    rows.push(row.join("|"));
                }
            }
            rows.sort();
            let mut filters = Vec::new();
            plan.apply(|node| {
                if node
                    .downcast_ref::<KeyExec>()
                    .is_some_and(|e| e.side == Side::Probe)
                {
                    let m = node.metrics().unwrap();
                    let untested = m.sum_by_name("rows_untested").map_or(0, |v| v.as_usize());
                    filters.push((m.output_rows().unwrap(), untested));
                }
                Ok(TreeNodeRecursion::Continue)
            })
            .unwrap();
            (rows, filters)
        })
    }

    /// Each query gives the same rows with cohortql's rules as without them, and has
    /// `filtered` key filters that tested every row and kept only the probe side's matches.
    fn same_rows(sql: &str, filtered: usize) {
        let (ours, plain) = (
            super::super::new_context(true),
            super::super::new_context(false),
        );
        register(&ours);
        register(&plain);
        let (rows, filters) = run(&ours, sql);
        let (expected, none) = run(&plain, sql);
        assert!(none.is_empty());
        assert!(!expected.is_empty() || sql.contains("NOT IN"), "{sql}");
        assert_eq!(rows, expected, "{sql}");
        assert_eq!(filters.len(), filtered, "{sql}: {filters:?}");
        for (kept, untested) in filters {
            // The rows of `p` with one of the 50 keys of `b`, none of them NULL in `p`.
            assert_eq!((kept, untested), (50, 0), "{sql}");
        }
    }

    #[test]
    fn joins_that_keep_only_matched_probe_rows_filter_them_first_and_give_the_same_rows() {
        same_rows("SELECT b.val, p.w FROM b JOIN p ON b.id = p.id", 1);
        same_rows("SELECT b.val, p.w FROM b LEFT JOIN p ON b.id = p.id", 1);
        same_rows(
            "SELECT val FROM b WHERE EXISTS (SELECT 1 FROM p WHERE p.id = b.id)",
            1,
        );
        same_rows(
            "SELECT val FROM b WHERE NOT EXISTS (SELECT 1 FROM p WHERE p.id = b.id)",
            1,
        );
        same_rows("SELECT p.w FROM p WHERE p.id IN (SELECT id FROM b)", 1);
    }

    #[test]
    fn a_build_side_in_memory_gives_its_keys_when_the_join_is_planned() {
        let ctx = super::super::new_context(true);
        register(&ctx);
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let plan = runtime.block_on(async {
            let sql = "SELECT b.val, p.w FROM b JOIN p ON b.id = p.id";
            let frame = ctx.sql(sql).await.unwrap();
            frame.create_physical_plan().await.unwrap()
        });
        let mut sides = Vec::new();
        plan.apply(|node| {
            if let Some(e) = node.downcast_ref::<KeyExec>() {
                sides.push((e.side, e.keys.state() == KeysState::Testable));
            }
            Ok(TreeNodeRecursion::Continue)
        })
        .unwrap();
        // No recorder; the filter's 50 keys known before the plan runs.
        assert_eq!(sides, [(Side::Probe, true)]);
    }

    #[test]
    fn joins_that_keep_unmatched_probe_rows_or_fear_its_nulls_are_left_alone() {
        // Every row of `p`, matched or not.
        same_rows("SELECT b.val, p.w FROM b RIGHT JOIN p ON b.id = p.id", 0);
        same_rows("SELECT b.val, p.w FROM b FULL JOIN p ON b.id = p.id", 0);
        // NOT IN: a NULL in `p` empties the result.
        same_rows("SELECT val FROM b WHERE id NOT IN (SELECT id FROM p)", 0);
    }

    #[test]
    fn keys_the_join_finds_in_an_array_or_too_sparse_for_a_bitmap_are_not_tested() {
        let ctx = super::super::new_context(true);
        register(&ctx);
        // `d`'s 100,000 keys over 200,000 values: DataFusion's array lookup.
        let (rows, filters) = run(&ctx, "SELECT d.x, p.w FROM d JOIN p ON d.id = p.id");
        // Its even keys but the 101 multiples of 997.
        assert_eq!(rows.len(), 99_899);
        assert_eq!(filters, [(200_000, 200_000)]);
        let wide = Keys {
            array_map_above_density: 1.0,
            ..Keys::default()
        };
        wide.record(Arc::new(Int64Array::from(vec![
            Some(0),
            None,
            Some(1 << 40),
        ])));
        wide.end();
        assert!(wide.ended.get().unwrap().is_none());
        let keys = Keys {
            array_map_above_density: 0.5,
            ..Keys::default()
        };
        keys.record(Arc::new(Int64Array::from(vec![Some(200), Some(-5), None])));
        keys.record(Arc::new(Int64Array::from(vec![Some(3), Some(64)])));
        keys.end();
        let set = keys.ended.get().unwrap().as_ref().unwrap();
        let has: Vec<i64> = (-70..300).filter(|v| set.has(*v)).collect();
        assert_eq!(has, [-5, 3, 64, 200]);
        assert!(!set.has(i64::MIN) && !set.has(i64::MAX));
    }
}
