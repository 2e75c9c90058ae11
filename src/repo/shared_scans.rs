//! A physical rule of the sessions `run` executes in: the filtered readings of one Parquet file
//! in one plan share one scan. A stage's plan reads a domain once per kind of thing it takes
//! from it (the dataset of the prostate study counts biopsy grades, takes the last PSA value
//! and looks up image-feature values: three readings of `measurement`), and DataFusion runs each
//! reading as a scan of its own, decoding the same columns again. Here the readings that filter
//! the file (a filter straight over its scan) become [`SharedReadingExec`]s of one
//! [`SharedScan`]: the first to run scans the file once, with every column any of them reads,
//! on as many tasks as the scans had partitions, and keeps for each reading, partition by
//! partition, the rows its own filter keeps. What each reading returns is what its own scan and
//! filter would have: the same rows of the same share of the file.
//!
//! What is kept is held in memory until the plan is dropped. A reading whose filter keeps more
//! than one row in [`OWN_SCAN_SHARE`] is let go early and runs its own scan when its turn
//! comes, as it would have without the rule (the readings of a plan run one after another, so
//! the rows of the later ones wait in memory: worth it for a concept's records, not for most
//! of a table). A scan under a join's key filter (`key_filters`) is a reading too, which keeps
//! the rows whose key the join's build side has; until those keys are known, its rows wait.
//! When what the readings keep and hold would take more than [`SharedScans::limit_bytes`],
//! those whose rows wait are let go, and if that is not enough the shared scan stops and every
//! reading runs its own. A shared scan starts for two readings or more; one left alone goes on
//! taking its rows from it.

use datafusion::arrow::array::{AsArray, BooleanArray};
use datafusion::arrow::compute::kernels::boolean::and;
use datafusion::arrow::compute::{filter_record_batch, BatchCoalescer};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::config::ConfigOptions;
use datafusion::common::runtime::SpawnedTask;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DataFusionError, Result};
use datafusion::datasource::physical_plan::parquet::ParquetRowSelection;
use datafusion::datasource::physical_plan::{
    FileScanConfig, FileScanConfigBuilder, FileSource, ParquetSource,
};
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::Operator;
use datafusion::physical_expr::expressions::{BinaryExpr, Column, InListExpr, Literal};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
    SendableRecordBatchStream,
};
use futures::{StreamExt, TryStreamExt};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use super::key_filters::{self, Keys, KeysState};

/// The rule, with the most a shared scan keeps in memory for its readings.
#[derive(Debug)]
pub struct SharedScans {
    pub limit_bytes: usize,
}

impl Default for SharedScans {
    /// 256 MiB: at 10,000,000 persons the imaging studies' shared readings of `measurement`
    /// keep under 50 MiB; a study whose readings keep more reads the file once per reading.
    fn default() -> Self {
        SharedScans {
            limit_bytes: 256 << 20,
        }
    }
}

impl PhysicalOptimizerRule for SharedScans {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        // The filtered readings of each file, by what they scan (file, shares, schema), in the
        // order the plan shows them.
        let tests = key_tests(&plan)?;
        let mut groups: Vec<(String, Vec<Arc<dyn ExecutionPlan>>)> = Vec::new();
        plan.apply(|node| {
            if let Some(key) = reading_key(node, &tests) {
                let seen = |g: &Vec<Arc<dyn ExecutionPlan>>| g.iter().any(|n| Arc::ptr_eq(n, node));
                match groups.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, g)) if !seen(g) => g.push(Arc::clone(node)),
                    Some(_) => {}
                    None => groups.push((key, vec![Arc::clone(node)])),
                }
            }
            Ok(TreeNodeRecursion::Continue)
        })?;
        let mut replacements: HashMap<usize, Arc<dyn ExecutionPlan>> = HashMap::new();
        for (_, readings) in groups.into_iter().filter(|(_, g)| g.len() >= 2) {
            let Some(shared) = SharedScan::new(&readings, &tests, self.limit_bytes)? else {
                continue;
            };
            let shared = Arc::new(shared);
            for (index, node) in readings.iter().enumerate() {
                let reading = SharedReadingExec {
                    shared: Arc::clone(&shared),
                    index,
                    metrics: ExecutionPlanMetricsSet::new(),
                };
                replacements.insert(address(node), Arc::new(reading));
            }
        }
        if replacements.is_empty() {
            return Ok(plan);
        }
        Ok(plan
            .transform_up(|node| match replacements.get(&address(&node)) {
                Some(new) => Ok(Transformed::yes(Arc::clone(new))),
                None => Ok(Transformed::no(node)),
            })?
            .data)
    }

    fn name(&self) -> &str {
        "shared_scans"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

fn address(node: &Arc<dyn ExecutionPlan>) -> usize {
    Arc::as_ptr(node) as *const () as usize
}

/// A reading as the rule sees it: a filter straight over a Parquet scan, or a scan under a
/// join's key filter, or both.
struct Filtered<'a> {
    filter: Option<&'a FilterExec>,
    /// Whether the filter tests a column against given values (`selective`).
    selective: bool,
    config: &'a FileScanConfig,
    source: &'a ParquetSource,
    /// The scan's columns, as indices of the table's.
    columns: Vec<usize>,
    /// The key filter above, if any: the column of the scan's rows it tests, and its keys.
    key: Option<KeyTest>,
}

/// A join's key filter (`key_filters`) over a reading, through projections of plain columns:
/// the column of the reading's rows it tests, and the keys.
type KeyTest = (usize, Arc<Keys>);

/// The key filters of a plan by the node each tests the rows of, the first below it that is
/// not a projection of plain columns (by `address`).
fn key_tests(plan: &Arc<dyn ExecutionPlan>) -> Result<HashMap<usize, KeyTest>> {
    let mut tests = HashMap::new();
    plan.apply(|node| {
        if let Some((column, keys)) = key_filters::probe_key_column(node) {
            if let Some((below, column)) =
                key_filters::column_below(node.children()[0], column, false)
            {
                tests.insert(address(&below), (column, keys));
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    Ok(tests)
}

/// The Parquet scan of a reading, when the rule can share it: its columns plain, no limit, no
/// order it promises, and a selective filter over it or a key filter above (`tests`).
fn filtered_scan<'a>(
    node: &'a Arc<dyn ExecutionPlan>,
    tests: &HashMap<usize, KeyTest>,
) -> Option<Filtered<'a>> {
    let key = tests.get(&address(node)).cloned();
    let (filter, scan) = match node.downcast_ref::<FilterExec>() {
        Some(filter) => (Some(filter), filter.input()),
        None => (None, node),
    };
    if filter.is_some_and(|f| f.fetch().is_some()) {
        return None;
    }
    let selective = filter.is_some_and(|f| selective(f.predicate()));
    if !selective && key.is_none() {
        return None;
    }
    // The key's column among the filter's input's, the scan's.
    let key = key.map(|(column, keys)| match filter {
        Some(f) => (f.projection().as_ref().map_or(column, |p| p[column]), keys),
        None => (column, keys),
    });
    let scan = scan.downcast_ref::<DataSourceExec>()?;
    let (config, source) = scan.downcast_to_file_source::<ParquetSource>()?;
    let columns = FileSource::projection(source)?
        .iter()
        .map(|e| e.expr.downcast_ref::<Column>().map(Column::index))
        .collect::<Option<Vec<usize>>>()?;
    let ordered = scan.properties().output_ordering().is_some();
    (!ordered && config.limit.is_none()).then_some(Filtered {
        filter,
        selective,
        config,
        source,
        columns,
        key,
    })
}

/// Whether a filter tests a column against given values (`=` a literal, `IN` a list), as a
/// test of concepts does: one that keeps records that are not null keeps most of a table,
/// which is not worth keeping in memory for a reading to come (`OWN_SCAN_SHARE`).
fn selective(predicate: &Arc<dyn PhysicalExpr>) -> bool {
    let mut found = false;
    let _ = predicate.apply(|e| {
        found = match (
            e.downcast_ref::<BinaryExpr>(),
            e.downcast_ref::<InListExpr>(),
        ) {
            (Some(b), _) => {
                *b.op() == Operator::Eq
                    && (b.left().downcast_ref::<Column>().is_some()
                        && b.right().downcast_ref::<Literal>().is_some()
                        || b.right().downcast_ref::<Column>().is_some()
                            && b.left().downcast_ref::<Literal>().is_some())
            }
            (None, Some(list)) => !list.negated(),
            (None, None) => false,
        };
        Ok(if found {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    });
    found
}

/// What a filtered reading scans, as a key equal for readings that scan the same rows: the
/// store, each partition's files with their byte ranges and row selections, the table's
/// schema.
fn reading_key(node: &Arc<dyn ExecutionPlan>, tests: &HashMap<usize, KeyTest>) -> Option<String> {
    let config = filtered_scan(node, tests)?.config;
    let mut key = format!(
        "{}|{:?}|",
        config.object_store_url.as_str(),
        config.file_source.table_schema().table_schema()
    );
    for group in &config.file_groups {
        key.push('[');
        for file in group.iter() {
            let selection = match file.extensions.len() {
                0 => None,
                1 => Some(file.extensions.get::<ParquetRowSelection>()?.selection()),
                _ => return None,
            };
            key.push_str(&format!(
                "({}, {:?}, {:?})",
                file.object_meta.location, file.range, selection
            ));
        }
        key.push(']');
    }
    Some(key)
}

/// One scan of a file for several filtered readings of it, and what it kept for each.
#[derive(Debug)]
pub struct SharedScan {
    /// The scan of every column any reading reads, with no filter.
    scan: Arc<dyn ExecutionPlan>,
    readings: Vec<Reading>,
    limit_bytes: usize,
    kept: tokio::sync::OnceCell<Kept>,
}

/// One reading of a shared scan: the filter it replaces, and how its rows are taken from the
/// shared scan's.
#[derive(Debug)]
struct Reading {
    /// The filter over its own scan (or the scan itself, for a reading under a key filter
    /// alone), run instead when the shared scan keeps too much.
    own: Arc<dyn ExecutionPlan>,
    /// Its scan's columns, as positions in the shared scan's rows.
    columns: Vec<usize>,
    /// Its filter's predicate (over its scan's columns; `None` without a filter), whether
    /// it is selective alone, and its projection.
    predicate: Option<Arc<dyn PhysicalExpr>>,
    selective: bool,
    projection: Option<Vec<usize>>,
    schema: SchemaRef,
    /// The key filter above it, whose keys the shared scan tests once they are known.
    key: Option<KeyTest>,
}

impl Reading {
    /// Its own Parquet scan: the scan under its filter, or `own` itself without one.
    fn scan(&self) -> &Arc<dyn ExecutionPlan> {
        match self.own.downcast_ref::<FilterExec>() {
            Some(filter) => filter.input(),
            None => &self.own,
        }
    }
}

/// What a shared scan kept: for each reading, its rows partition by partition, or `None` when
/// it scans on its own.
type Kept = Vec<Option<Vec<Vec<RecordBatch>>>>;

impl SharedScan {
    /// The shared scan of `readings` (filters over scans of the same rows).
    fn new(
        readings: &[Arc<dyn ExecutionPlan>],
        tests: &HashMap<usize, KeyTest>,
        limit_bytes: usize,
    ) -> Result<Option<Self>> {
        let Some(scanned) = readings
            .iter()
            .map(|r| filtered_scan(r, tests))
            .collect::<Option<Vec<Filtered>>>()
        else {
            return Ok(None);
        };
        let mut columns: Vec<usize> = scanned.iter().flat_map(|f| f.columns.clone()).collect();
        columns.sort_unstable();
        columns.dedup();
        let (first, source) = (scanned[0].config, scanned[0].source);
        // The readings' own filters, pushed into their scans to skip row groups, are dropped:
        // each reading's filter is applied to the shared rows in full.
        let mut bare = ParquetSource::new(FileSource::table_schema(source).clone())
            .with_table_parquet_options(source.table_parquet_options().clone());
        if let Some(factory) = source.parquet_file_reader_factory() {
            bare = bare.with_parquet_file_reader_factory(Arc::clone(factory));
        }
        let config = FileScanConfigBuilder::from(first.clone())
            .with_source(Arc::new(bare))
            .with_projection_indices(Some(columns.clone()))?
            .build();
        let scan: Arc<dyn ExecutionPlan> = DataSourceExec::from_data_source(config);
        let readings = readings
            .iter()
            .zip(scanned)
            .map(|(own, f)| Reading {
                own: Arc::clone(own),
                columns: f
                    .columns
                    .iter()
                    .map(|c| columns.binary_search(c).expect("a column of the union"))
                    .collect(),
                predicate: f.filter.map(|f| Arc::clone(f.predicate())),
                selective: f.selective,
                projection: f
                    .filter
                    .and_then(|f| f.projection().as_ref().map(|p| p.to_vec())),
                schema: f.filter.map_or_else(|| own.schema(), |f| f.schema()),
                key: f.key,
            })
            .collect();
        Ok(Some(SharedScan {
            scan,
            readings,
            limit_bytes,
            kept: tokio::sync::OnceCell::new(),
        }))
    }

    /// Scans the file once, each partition on a task of its own, keeping each reading's rows.
    /// A reading that keeps more than one row in [`OWN_SCAN_SHARE`] of those scanned (once
    /// [`JUDGED_AFTER`] rows are) is let go: it will scan on its own, since keeping its rows
    /// until it runs costs more memory than decoding them again saves. When what they keep
    /// takes more than the limit, the readings whose rows wait for their keys are let go; if
    /// it still does, every reading scans on its own. A reading left alone goes on reading
    /// from the shared scan, where it is.
    async fn read(&self, context: Arc<TaskContext>) -> Result<Kept> {
        let partitions = self.scan.output_partitioning().partition_count();
        let batch_size = context.session_config().batch_size();
        let tally = Arc::new(Tally {
            scanned: AtomicUsize::new(0),
            bytes: self.readings.iter().map(|_| AtomicUsize::new(0)).collect(),
            waiting: self.readings.iter().map(|_| AtomicUsize::new(0)).collect(),
            kept: self.readings.iter().map(|_| AtomicUsize::new(0)).collect(),
            let_go: self
                .readings
                .iter()
                .map(|_| AtomicBool::new(false))
                .collect(),
            limit_bytes: self.limit_bytes,
        });
        // A reading that only a key filter makes selective, whose keys ended with no bitmap
        // worth testing (`key_filters`), would keep every row.
        for (reading, let_go) in self.readings.iter().zip(&tally.let_go) {
            let untestable = |(_, keys): &KeyTest| keys.state() == KeysState::Untestable;
            if !reading.selective && reading.key.as_ref().is_none_or(untestable) {
                let_go.store(true, Ordering::Relaxed);
            }
        }
        if !tally.worth_sharing(2) {
            return Ok(vec![None; self.readings.len()]);
        }
        let mut tasks = Vec::with_capacity(partitions);
        for partition in 0..partitions {
            let mut rows = self.scan.execute(partition, Arc::clone(&context))?;
            let mut sieves: Vec<Option<Sieve>> = self
                .readings
                .iter()
                .map(|r| Some(Sieve::new(r, batch_size)))
                .collect();
            let tally = Arc::clone(&tally);
            tasks.push(SpawnedTask::spawn(async move {
                while let Some(batch) = rows.next().await {
                    let batch = batch?;
                    tally.scanned.fetch_add(batch.num_rows(), Ordering::Relaxed);
                    for (i, slot) in sieves.iter_mut().enumerate() {
                        if tally.let_go[i].load(Ordering::Relaxed) {
                            // What it kept is no longer wanted.
                            if let Some(sieve) = slot.take() {
                                tally.bytes[i].fetch_sub(sieve.bytes, Ordering::Relaxed);
                                tally.waiting[i].fetch_sub(sieve.held, Ordering::Relaxed);
                            }
                            continue;
                        }
                        let Some(sieve) = slot else { continue };
                        let (bytes, held) = (sieve.bytes, sieve.held);
                        let rows = sieve.push(&batch)?;
                        tally.kept[i].fetch_add(rows, Ordering::Relaxed);
                        change(&tally.bytes[i], bytes, sieve.bytes);
                        change(&tally.waiting[i], held, sieve.held);
                    }
                    if !tally.worth_sharing(1) {
                        return Ok(None);
                    }
                }
                // A reading let go keeps nothing (and is given its own scan below).
                let mut kept = Vec::with_capacity(sieves.len());
                for sieve in sieves {
                    kept.push(match sieve {
                        Some(sieve) => sieve.finish()?,
                        None => Vec::new(),
                    });
                }
                Ok::<_, DataFusionError>(Some(kept))
            }));
        }
        let mut kept: Vec<Option<Vec<Vec<RecordBatch>>>> =
            vec![Some(Vec::with_capacity(partitions)); self.readings.len()];
        for task in tasks {
            let done = task
                .join()
                .await
                .map_err(|e| DataFusionError::External(Box::new(e)))??;
            let Some(done) = done else {
                return Ok(vec![None; self.readings.len()]);
            };
            for (reading, rows) in kept.iter_mut().zip(done) {
                if let Some(reading) = reading {
                    reading.push(rows);
                }
            }
        }
        for (reading, let_go) in kept.iter_mut().zip(&tally.let_go) {
            if let_go.load(Ordering::Relaxed) {
                *reading = None;
            }
        }
        Ok(kept)
    }
}

/// A reading that keeps more than one row in this many of those scanned scans on its own.
pub const OWN_SCAN_SHARE: usize = 8;

/// The rows scanned before the readings are judged by what they keep.
pub const JUDGED_AFTER: usize = 65_536;

/// What a shared scan has read and kept so far, over all its partitions, and which readings
/// it has let go.
struct Tally {
    scanned: AtomicUsize,
    /// Each reading's bytes, kept and waiting for keys, and those waiting.
    bytes: Vec<AtomicUsize>,
    waiting: Vec<AtomicUsize>,
    kept: Vec<AtomicUsize>,
    let_go: Vec<AtomicBool>,
    limit_bytes: usize,
}

impl Tally {
    /// Lets go of the readings that keep too large a share of the rows, and, when what the
    /// others hold passes the limit, of those whose rows wait for keys; whether at least
    /// `left` readings are left and what they hold is within the limit.
    fn worth_sharing(&self, left: usize) -> bool {
        let scanned = self.scanned.load(Ordering::Relaxed);
        if scanned >= JUDGED_AFTER {
            for (kept, let_go) in self.kept.iter().zip(&self.let_go) {
                if kept.load(Ordering::Relaxed) * OWN_SCAN_SHARE > scanned {
                    let_go.store(true, Ordering::Relaxed);
                }
            }
        }
        let held = || -> usize {
            (self.bytes.iter().zip(&self.let_go))
                .filter(|(_, l)| !l.load(Ordering::Relaxed))
                .map(|(b, _)| b.load(Ordering::Relaxed))
                .sum()
        };
        if held() > self.limit_bytes {
            for (waiting, let_go) in self.waiting.iter().zip(&self.let_go) {
                if waiting.load(Ordering::Relaxed) > 0 {
                    let_go.store(true, Ordering::Relaxed);
                }
            }
        }
        let live = self
            .let_go
            .iter()
            .filter(|l| !l.load(Ordering::Relaxed))
            .count();
        live >= left && held() <= self.limit_bytes
    }
}

/// A reading's count of bytes in a tally, as a sieve's went from `was` to `is`.
fn change(count: &AtomicUsize, was: usize, is: usize) {
    if is >= was {
        count.fetch_add(is - was, Ordering::Relaxed);
    } else {
        count.fetch_sub(was - is, Ordering::Relaxed);
    }
}

/// One reading's filter over one partition of the shared scan, and the rows it kept.
struct Sieve {
    columns: Vec<usize>,
    /// The filter's predicate; `None` without a filter.
    predicate: Option<Arc<dyn PhysicalExpr>>,
    /// The key filter above the reading, tested once its keys are known, if the reading is
    /// not selective without it or they are known as it starts.
    key: Option<KeyTest>,
    /// Until the key filter's keys are known, the rows the reading's filter keeps (with its
    /// scan's columns), tested once they are: the join whose build side gives the keys may
    /// run beside the scan. A reading that waits keeps no rows yet; what waits counts in the
    /// shared scan's bytes. Keys that end with no bitmap worth testing keep every row that
    /// waited, and so the reading is let go.
    waiting: Option<Vec<RecordBatch>>,
    /// The bytes of `waiting`.
    held: usize,
    projection: Option<Vec<usize>>,
    coalescer: BatchCoalescer,
    kept: Vec<RecordBatch>,
    /// The bytes of `kept` and `waiting`.
    bytes: usize,
}

impl Sieve {
    fn new(reading: &Reading, batch_size: usize) -> Sieve {
        let state = reading.key.as_ref().map(|(_, keys)| keys.state());
        let pending = state == Some(KeysState::Pending);
        let key = reading
            .key
            .clone()
            .filter(|_| state == Some(KeysState::Testable) || pending && !reading.selective);
        Sieve {
            columns: reading.columns.clone(),
            predicate: reading.predicate.clone(),
            waiting: (key.is_some() && pending).then(Vec::new),
            held: 0,
            key,
            projection: reading.projection.clone(),
            coalescer: BatchCoalescer::new(Arc::clone(&reading.schema), batch_size),
            kept: Vec::new(),
            bytes: 0,
        }
    }

    /// Keeps (or holds until its keys are known) the rows of a batch of the shared scan that
    /// the reading's filters keep: how many it kept.
    fn push(&mut self, batch: &RecordBatch) -> Result<usize> {
        let own = batch.project(&self.columns)?;
        let test = match &self.predicate {
            Some(p) => Some(p.evaluate(&own)?.into_array(own.num_rows())?),
            None => None,
        };
        let test = test.as_ref().map(|t| t.as_boolean());
        let Some(waiting) = &mut self.waiting else {
            return self.keep(&own, test);
        };
        let own = match test {
            Some(test) => filter_record_batch(&own, test)?,
            None => own,
        };
        if self
            .key
            .as_ref()
            .is_some_and(|(_, keys)| keys.state() == KeysState::Pending)
        {
            let bytes = own.get_array_memory_size();
            self.bytes += bytes;
            self.held += bytes;
            waiting.push(own);
            return Ok(0);
        }
        let waited = std::mem::take(waiting);
        self.waiting = None;
        self.bytes -= self.held;
        self.held = 0;
        let mut rows = 0;
        for held in waited.iter().chain([&own]) {
            rows += self.keep(held, None)?;
        }
        Ok(rows)
    }

    /// Keeps the rows of a batch (the reading's scan's columns) that its filter's `test`
    /// (if any) keeps and whose key the key filter has (if it can tell).
    fn keep(&mut self, own: &RecordBatch, test: Option<&BooleanArray>) -> Result<usize> {
        let found = match &self.key {
            Some((column, keys)) => keys.found(own.column(*column))?,
            None => None,
        };
        let keep = match (test, found) {
            (Some(test), Some(found)) => Some(and(test, &found)?),
            (Some(test), None) => Some(test.clone()),
            (None, found) => found,
        };
        let own = match &self.projection {
            Some(p) => own.project(p)?,
            None => own.clone(),
        };
        let rows = match keep {
            Some(keep) => {
                self.coalescer.push_batch_with_filter(own, &keep)?;
                keep.true_count()
            }
            None => {
                let rows = own.num_rows();
                self.coalescer.push_batch(own)?;
                rows
            }
        };
        self.take_completed();
        Ok(rows)
    }

    fn take_completed(&mut self) {
        while let Some(done) = self.coalescer.next_completed_batch() {
            self.bytes += done.get_array_memory_size();
            self.kept.push(done);
        }
    }

    /// What it kept, once the scan has ended. Rows still waiting for keys never known are
    /// all kept: the key filter above tests them, as it would those of the reading's own scan.
    fn finish(mut self) -> Result<Vec<RecordBatch>> {
        if let Some(waited) = self.waiting.take() {
            for held in &waited {
                self.keep(held, None)?;
            }
        }
        self.coalescer.finish_buffered_batch()?;
        self.take_completed();
        Ok(self.kept)
    }
}

/// A filtered reading of a Parquet file whose scan is shared ([`SharedScan`]): the rows its
/// filter keeps, partition by partition, as the filter over its own scan would return them.
#[derive(Debug)]
pub struct SharedReadingExec {
    shared: Arc<SharedScan>,
    index: usize,
    metrics: ExecutionPlanMetricsSet,
}

impl SharedReadingExec {
    fn reading(&self) -> &Reading {
        &self.shared.readings[self.index]
    }

    /// The reading's own scan, when it ran it instead of taking its rows from the shared one.
    fn own_scan(&self) -> Option<&Arc<dyn ExecutionPlan>> {
        let kept = self.shared.kept.get()?;
        kept[self.index].is_none().then(|| self.reading().scan())
    }
}

/// The metrics of a scan that are not a reading's own (its rows, batches and time), which
/// would be added to the reading's.
fn scan_metrics(
    scan: &Arc<dyn ExecutionPlan>,
) -> Vec<Arc<datafusion::physical_plan::metrics::Metric>> {
    let own = [
        "output_rows",
        "output_batches",
        "output_bytes",
        "elapsed_compute",
    ];
    scan.metrics()
        .iter()
        .flat_map(|m| m.iter())
        .filter(|m| !own.contains(&m.value().name()))
        .cloned()
        .collect()
}

impl DisplayAs for SharedReadingExec {
    /// The first reading shows the shared scan (as the `DataSourceExec` it runs); the others
    /// name its file. Once run, a reading that was let go shows the scan it ran on its own.
    fn fmt_as(&self, t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        self.fmt_reading(t, f)?;
        match self
            .own_scan()
            .and_then(|s| s.downcast_ref::<DataSourceExec>())
        {
            Some(scan) => {
                write!(f, ", let go to its own scan=")?;
                scan.fmt_as(t, f)
            }
            None => Ok(()),
        }
    }
}

impl SharedReadingExec {
    fn fmt_reading(&self, t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let reading = self.reading();
        write!(
            f,
            "SharedReadingExec: reading {} of {} of one scan, predicate={}",
            self.index + 1,
            self.shared.readings.len(),
            reading
                .predicate
                .as_ref()
                .map_or_else(|| "true".to_string(), ToString::to_string)
        )?;
        if let Some((column, _)) = &reading.key {
            let schema = reading.scan().schema();
            write!(f, ", join keys tested on {}", schema.field(*column).name())?;
        }
        if self.index == 0 {
            write!(f, ", scan=")?;
            match self.shared.scan.downcast_ref::<DataSourceExec>() {
                Some(scan) => scan.fmt_as(t, f),
                None => Ok(()),
            }
        } else {
            let file = self
                .shared
                .scan
                .downcast_ref::<DataSourceExec>()
                .and_then(|s| s.downcast_to_file_source::<ParquetSource>())
                .and_then(|(c, _)| c.file_groups.first()?.iter().next().cloned());
            match file {
                Some(file) => {
                    let name = file.object_meta.location.filename().unwrap_or_default();
                    write!(f, ", file={name}")
                }
                None => Ok(()),
            }
        }
    }
}

impl ExecutionPlan for SharedReadingExec {
    fn name(&self) -> &str {
        "SharedReadingExec"
    }

    /// Those of the filter it replaces: the same rows, in the same partitions.
    fn properties(&self) -> &Arc<PlanProperties> {
        self.reading().own.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        match &self.reading().predicate {
            Some(predicate) => f(predicate),
            None => Ok(TreeNodeRecursion::Continue),
        }
    }

    #[allow(deprecated)]
    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.is_empty() {
            Ok(self)
        } else {
            Err(DataFusionError::Internal(
                "SharedReadingExec has no input".to_string(),
            ))
        }
    }

    /// The reading's rows of one partition, once the shared scan has kept them (the first
    /// reading to run starts it; the others wait for it), or from its own scan when the
    /// shared scan kept too many.
    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let shared = Arc::clone(&self.shared);
        let index = self.index;
        let schema = self.schema();
        let metrics = BaselineMetrics::new(&self.metrics, partition);
        let rows = futures::stream::once(async move {
            let kept = shared
                .kept
                .get_or_try_init(|| shared.read(Arc::clone(&context)))
                .await?;
            let rows: SendableRecordBatchStream = match &kept[index] {
                Some(kept) => {
                    let batches = kept.get(partition).cloned().unwrap_or_default();
                    Box::pin(RecordBatchStreamAdapter::new(
                        Arc::clone(&shared.readings[index].schema),
                        futures::stream::iter(batches.into_iter().map(Ok)),
                    ))
                }
                None => shared.readings[index].own.execute(partition, context)?,
            };
            Ok::<_, DataFusionError>(rows)
        })
        .try_flatten()
        .inspect_ok(move |batch| metrics.record_output(batch.num_rows()));
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, rows)))
    }

    /// The first reading's metrics hold the shared scan's too, and a reading let go its own
    /// scan's (the first, let go, both).
    fn metrics(&self) -> Option<MetricsSet> {
        let mut metrics = self.metrics.clone_inner();
        if self.index == 0 {
            for metric in scan_metrics(&self.shared.scan) {
                metrics.push(metric);
            }
        }
        if let Some(scan) = self.own_scan() {
            for metric in scan_metrics(scan) {
                metrics.push(metric);
            }
        }
        Some(metrics)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, RecordBatch};
    use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema};
    use datafusion::execution::SessionStateBuilder;
    use datafusion::parquet::arrow::ArrowWriter;
    use datafusion::parquet::basic::Compression;
    use datafusion::parquet::file::properties::WriterProperties;
    use datafusion::physical_plan::{collect, displayable};
    use datafusion::prelude::{ParquetReadOptions, SessionContext};
    use std::path::Path;

    const ROWS: i64 = 200_000;

    /// Row `i`'s kind: half the rows 1, one in a hundred 2, one in a hundred 3, the rest 4.
    fn kind(i: i64) -> i64 {
        match (i % 2, i % 100) {
            (0, _) => 1,
            (_, 1) => 2,
            (_, 3) => 3,
            _ => 4,
        }
    }

    /// Row `i`'s value: scattered, so that nothing compresses; none in one row of a thousand
    /// (of kind 2).
    fn value(i: i64) -> Option<i64> {
        (i % 1_000 != 1).then_some(i * 7_919 % 1_000_003)
    }

    /// The rows in row groups of 50,000, over the 1 MiB below which DataFusion reads a file in
    /// one partition.
    fn write(path: &Path) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, true),
            Field::new("v", DataType::Int64, true),
        ]));
        let kinds = Int64Array::from_iter_values((0..ROWS).map(kind));
        let values = Int64Array::from_iter((0..ROWS).map(value));
        let batch =
            RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(kinds), Arc::new(values)])
                .unwrap();
        let properties = WriterProperties::builder()
            .set_dictionary_enabled(false)
            .set_compression(Compression::UNCOMPRESSED)
            .set_max_row_group_row_count(Some(50_000))
            .build();
        let file = std::fs::File::create(path).unwrap();
        let mut writer = ArrowWriter::try_new(file, schema, Some(properties)).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
    }

    /// Four readings of the file: three that test its kinds, one that keeps every row.
    const QUERY: &str = "SELECT 'one' AS r, count(*) AS n, sum(v) AS s FROM t WHERE k = 1 \
        UNION ALL SELECT 'two', count(*), sum(v) FROM t WHERE k = 2 \
        UNION ALL SELECT 'three', count(*), sum(v) FROM t WHERE k IN (3, 5) \
        UNION ALL SELECT 'all', count(*), sum(v) FROM t WHERE k IS NOT NULL";

    /// What the query should give, counted here.
    fn expected() -> Vec<(String, i64, i64)> {
        let of = |name: &str, keep: &dyn Fn(i64) -> bool| {
            let rows: Vec<i64> = (0..ROWS).filter(|i| keep(kind(*i))).collect();
            let sum = rows.iter().filter_map(|i| value(*i)).sum();
            (name.to_string(), rows.len() as i64, sum)
        };
        let mut rows = vec![
            of("one", &|k| k == 1),
            of("two", &|k| k == 2),
            of("three", &|k| k == 3 || k == 5),
            of("all", &|_| true),
        ];
        rows.sort();
        rows
    }

    /// The query's rows, and the plan's shared readings after it ran: the predicate each
    /// shows, and whether it kept its rows from the shared scan (`false`: its own scan).
    fn run(ctx: SessionContext, path: &Path) -> (Vec<(String, i64, i64)>, Vec<(String, bool)>) {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let options = ParquetReadOptions::default();
            ctx.register_parquet("t", path.to_str().unwrap(), options)
                .await
                .unwrap();
            let plan = ctx.sql(QUERY).await.unwrap();
            let plan = plan.create_physical_plan().await.unwrap();
            let batches = collect(Arc::clone(&plan), ctx.task_ctx()).await.unwrap();
            let mut rows = Vec::new();
            for b in &batches {
                let names = datafusion::arrow::compute::cast(b.column(0), &DataType::Utf8).unwrap();
                for i in 0..b.num_rows() {
                    rows.push((
                        names.as_string::<i32>().value(i).to_string(),
                        b.column(1).as_primitive::<Int64Type>().value(i),
                        b.column(2).as_primitive::<Int64Type>().value(i),
                    ));
                }
            }
            rows.sort();
            let mut readings = Vec::new();
            plan.apply(|node| {
                if let Some(r) = node.downcast_ref::<SharedReadingExec>() {
                    let kept = r.shared.kept.get().expect("the shared scan ran");
                    let shared = kept[r.index].is_some();
                    // `plan --analyze` shows the scan a reading let go ran on its own.
                    let shown = displayable(node.as_ref()).one_line().to_string();
                    assert_eq!(
                        !shared,
                        shown.contains("let go to its own scan="),
                        "{shown}"
                    );
                    let predicate = r.reading().predicate.as_ref().expect("a filter");
                    readings.push((predicate.to_string(), shared));
                }
                Ok(TreeNodeRecursion::Continue)
            })
            .unwrap();
            readings.sort();
            (rows, readings)
        })
    }

    /// A session with cohortql's rules, its shared scans keeping at most `limit_bytes`.
    fn session(limit_bytes: usize) -> SessionContext {
        let state = super::super::new_context(true).state();
        let rules = state
            .physical_optimizers()
            .iter()
            .map(|r| -> Arc<dyn PhysicalOptimizerRule + Send + Sync> {
                if r.name() == "shared_scans" {
                    Arc::new(SharedScans { limit_bytes })
                } else {
                    Arc::clone(r)
                }
            })
            .collect();
        let state = SessionStateBuilder::new_from_existing(state)
            .with_physical_optimizer_rules(rules)
            .build();
        SessionContext::new_with_state(state)
    }

    #[test]
    fn readings_that_test_the_same_file_share_one_scan_and_give_what_their_own_scans_give() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        write(&path);
        let (rows, readings) = run(session(SharedScans::default().limit_bytes), &path);
        assert_eq!(rows, expected());
        assert_eq!(
            readings,
            vec![
                // Half the rows: more than one in eight, let go to scan on its own.
                ("k@0 = 1".to_string(), false),
                ("k@0 = 2".to_string(), true),
                ("k@0 = 3 OR k@0 = 5".to_string(), true),
            ],
            "the filter that keeps every row known is not shared"
        );
        // Without cohortql's rules, the same rows.
        let (plain, none) = run(super::super::new_context(false), &path);
        assert_eq!((plain, none), (expected(), vec![]));
    }

    /// The rows of `QUERY_KEYED` over the file and `b`, and the plan's shared readings: what
    /// each shows and whether it kept its rows from the shared scan.
    fn run_keyed(ctx: SessionContext, path: &Path, b: &Path) -> (Vec<i64>, Vec<(String, bool)>) {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let options = ParquetReadOptions::default();
            ctx.register_parquet("t", path.to_str().unwrap(), options.clone())
                .await
                .unwrap();
            ctx.register_parquet("b_file", b.to_str().unwrap(), options)
                .await
                .unwrap();
            // `b` in memory too: a stage kept before, whose keys are known when planning.
            let kept = ctx.table("b_file").await.unwrap().collect().await.unwrap();
            let table =
                datafusion::datasource::MemTable::try_new(kept[0].schema(), vec![kept]).unwrap();
            ctx.register_table("b", Arc::new(table)).unwrap();
            let plan = ctx.sql(QUERY_KEYED).await.unwrap();
            let plan = plan.create_physical_plan().await.unwrap();
            let batches = collect(Arc::clone(&plan), ctx.task_ctx()).await.unwrap();
            let mut rows = Vec::new();
            for b in &batches {
                for c in 0..b.num_columns() {
                    rows.push(b.column(c).as_primitive::<Int64Type>().value(0));
                }
            }
            let mut readings = Vec::new();
            plan.apply(|node| {
                if let Some(r) = node.downcast_ref::<SharedReadingExec>() {
                    let kept = r.shared.kept.get().expect("the shared scan ran");
                    let shown = displayable(node.as_ref()).one_line().to_string();
                    readings.push((shown, kept[r.index].is_some()));
                }
                Ok(TreeNodeRecursion::Continue)
            })
            .unwrap();
            (rows, readings)
        })
    }

    /// Three readings of the file: one by a concept test, two that look rows up by value in
    /// `b`, kept in memory or read from a file.
    const QUERY_KEYED: &str = "SELECT \
        (SELECT count(*) FROM t WHERE k = 2) AS two, \
        (SELECT sum(t.k) FROM b JOIN t ON b.id = t.v) AS by_kept_keys, \
        (SELECT sum(t.k) FROM b_file JOIN t ON b_file.id = t.v) AS by_read_keys";

    /// `b`'s keys: 400 values of `v`, and 100 that no row has (within a span of values the
    /// key filter's bitmap covers).
    fn write_keys(path: &Path) {
        let ids: Vec<i64> = (0..400)
            .filter_map(|i| value(i * 499))
            .chain((0..100).map(|i| 1_000_003 + i))
            .collect();
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
        let batch =
            RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(Int64Array::from(ids))])
                .unwrap();
        let file = std::fs::File::create(path).unwrap();
        let mut writer = ArrowWriter::try_new(file, schema, None).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
    }

    /// What `QUERY_KEYED` should give, counted here.
    fn expected_keyed() -> Vec<i64> {
        let keys: std::collections::HashSet<i64> =
            (0..400).filter_map(|i| value(i * 499)).collect();
        let looked_up: i64 = (0..ROWS)
            .filter(|i| value(*i).is_some_and(|v| keys.contains(&v)))
            .map(kind)
            .sum();
        let two = (0..ROWS).filter(|i| kind(*i) == 2).count() as i64;
        vec![two, looked_up, looked_up]
    }

    #[test]
    fn readings_under_a_joins_key_filter_share_the_scan_and_keep_only_the_rows_it_finds() {
        let dir = tempfile::tempdir().unwrap();
        let (path, keys) = (dir.path().join("t.parquet"), dir.path().join("b.parquet"));
        write(&path);
        write_keys(&keys);
        let (rows, readings) = run_keyed(session(SharedScans::default().limit_bytes), &path, &keys);
        assert_eq!(rows, expected_keyed());
        // The lookup by the keys in memory is shared whichever reading starts the scan (its
        // keys are known when planning); the one by keys read from a file is shared too, its
        // rows waiting for the keys if the scan starts before they are known.
        assert_eq!(readings.len(), 3, "{readings:?}");
        assert!(readings.iter().all(|(_, shared)| *shared), "{readings:?}");
        let keyed: Vec<_> = readings
            .iter()
            .filter(|(shown, _)| shown.contains("predicate=true, join keys tested on v"))
            .collect();
        assert_eq!(keyed.len(), 2, "{readings:?}");
        // Without cohortql's rules, the same rows.
        let (plain, none) = run_keyed(super::super::new_context(false), &path, &keys);
        assert_eq!((plain, none), (expected_keyed(), vec![]));
        // With a limit that the rows kept or waiting for keys soon pass, the same rows.
        let (rows, _) = run_keyed(session(1), &path, &keys);
        assert_eq!(rows, expected_keyed());
    }

    /// A reading of `k` and `v` under a key filter on `v`, and batches of its rows: `k` and
    /// `v` both `from` to `from + 99`.
    fn keyed_reading(keys: &Arc<Keys>) -> (Reading, impl Fn(i64) -> RecordBatch) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("v", DataType::Int64, true),
        ]));
        let reading = Reading {
            own: Arc::new(datafusion::physical_plan::empty::EmptyExec::new(
                Arc::clone(&schema),
            )),
            columns: vec![0, 1],
            predicate: None,
            selective: false,
            projection: None,
            schema: Arc::clone(&schema),
            key: Some((1, Arc::clone(keys))),
        };
        let batch = move |from: i64| {
            let values = || Arc::new(Int64Array::from_iter_values(from..from + 100));
            RecordBatch::try_new(Arc::clone(&schema), vec![values(), values()]).unwrap()
        };
        (reading, batch)
    }

    #[test]
    fn rows_that_wait_for_their_keys_are_tested_once_the_keys_are_known() {
        let keys = Arc::new(Keys::for_tests(false));
        let (reading, batch) = keyed_reading(&keys);
        let mut sieve = Sieve::new(&reading, 8192);
        assert_eq!(
            sieve.push(&batch(0)).unwrap(),
            0,
            "keys not known: it waits"
        );
        assert!(sieve.bytes > 0, "what waits counts");
        keys.record(Arc::new(Int64Array::from(vec![5, 150, 199, 1_000])));
        keys.end();
        // 5 of the batch that waited, 150 and 199 of this one.
        assert_eq!(sieve.push(&batch(100)).unwrap(), 3);
        assert_eq!(sieve.push(&batch(200)).unwrap(), 0);
        let kept = sieve.finish().unwrap();
        let v: Vec<i64> = kept
            .iter()
            .flat_map(|b| b.column(1).as_primitive::<Int64Type>().values().to_vec())
            .collect();
        assert_eq!(v, [5, 150, 199]);
        // Keys that end with no bitmap worth testing: every row that waited is kept (the
        // shared scan then lets the reading go).
        let dense = Arc::new(Keys::for_tests(true));
        let (reading, batch) = keyed_reading(&dense);
        let mut sieve = Sieve::new(&reading, 8192);
        assert_eq!(sieve.push(&batch(0)).unwrap(), 0);
        dense.record(Arc::new(Int64Array::from_iter_values(0..300)));
        dense.end();
        assert_eq!(sieve.push(&batch(100)).unwrap(), 200);
        // A reading that a filter of its own makes selective does not wait: its rows are kept
        // as the filter keeps them, the key filter above testing them later.
        let pending = Arc::new(Keys::for_tests(false));
        let (mut reading, batch) = keyed_reading(&pending);
        reading.selective = true;
        let mut sieve = Sieve::new(&reading, 8192);
        assert_eq!(sieve.push(&batch(0)).unwrap(), 100);
        assert!(sieve.waiting.is_none());
    }

    #[test]
    fn a_reading_left_alone_takes_its_rows_from_the_shared_scan_and_waiting_rows_go_first() {
        let tally = |bytes: [usize; 3], waiting: [usize; 3]| Tally {
            scanned: AtomicUsize::new(JUDGED_AFTER),
            bytes: Vec::from(bytes.map(AtomicUsize::new)),
            waiting: Vec::from(waiting.map(AtomicUsize::new)),
            kept: Vec::from([0, 0, JUDGED_AFTER].map(AtomicUsize::new)),
            let_go: Vec::from([false; 3].map(AtomicBool::new)),
            limit_bytes: 1_000,
        };
        let gone = |t: &Tally| {
            t.let_go
                .iter()
                .map(|l| l.load(Ordering::Relaxed))
                .collect::<Vec<_>>()
        };
        // The third keeps every row scanned: let go. Two left, within the limit.
        let t = tally([100, 200, 300], [0, 0, 0]);
        assert!(t.worth_sharing(2));
        assert_eq!(gone(&t), [false, false, true]);
        // The second's rows wait for keys and pass the limit: it is let go, the first goes on.
        let t = tally([100, 2_000, 0], [0, 1_900, 0]);
        assert!(!t.worth_sharing(2));
        assert!(t.worth_sharing(1));
        assert_eq!(gone(&t), [false, true, true]);
        // What is kept, not waiting, passes the limit: every reading scans on its own.
        let t = tally([2_000, 100, 0], [0, 100, 0]);
        assert!(!t.worth_sharing(1));
    }

    #[test]
    fn a_shared_scan_that_would_keep_more_than_its_limit_leaves_each_reading_its_own_scan() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        write(&path);
        let (rows, readings) = run(session(1), &path);
        assert_eq!(rows, expected());
        assert_eq!(readings.len(), 3, "{readings:?}");
        assert!(readings.iter().all(|(_, shared)| !shared), "{readings:?}");
    }
}
