//! A physical rule of the sessions `run` executes in: a Parquet file that DataFusion divides
//! among a scan's partitions is divided by rows, not by bytes. DataFusion gives each partition a
//! byte range of the file and each row group to the range its middle falls in, so a file of one
//! row group (every table under 1,048,576 rows as arrow writes them: at 1,000,000 persons
//! `person`, `observation_period`, `drug_era`) is one share of work and the other is empty: the
//! scan, and what runs above it, uses one core. Here the shares are the whole file with a row
//! selection each, contiguous rows in equal numbers; the decoder skips the pages outside a
//! share without decompressing them. A file the rule cannot open by its path is left as
//! DataFusion divides it.

use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::config::ConfigOptions;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::parquet::ParquetRowSelection;
use datafusion::datasource::physical_plan::{
    FileGroup, FileScanConfig, FileScanConfigBuilder, ParquetSource,
};
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::Result;
use datafusion::parquet::arrow::arrow_reader::{RowSelection, RowSelector};
use datafusion::parquet::file::metadata::ParquetMetaDataReader;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// The rule, with the row counts of the row groups of each file it has read (a footer is read
/// once per file and session, keyed by path, size and modification time).
#[derive(Debug, Default)]
pub struct SplitScans {
    row_groups: Mutex<HashMap<(PathBuf, u64, i64), Vec<i64>>>,
}

impl PhysicalOptimizerRule for SplitScans {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(plan
            .transform_up(|node| match self.split(&node) {
                Some(new) => Ok(Transformed::yes(new)),
                None => Ok(Transformed::no(node)),
            })?
            .data)
    }

    fn name(&self) -> &str {
        "split_scans"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

impl SplitScans {
    /// The scan with as many shares as partitions, each a run of rows, or `None` when the scan
    /// is not one Parquet file divided by byte ranges among its partitions.
    fn split(&self, node: &Arc<dyn ExecutionPlan>) -> Option<Arc<dyn ExecutionPlan>> {
        let exec = node.downcast_ref::<DataSourceExec>()?;
        let (config, _) = exec.downcast_to_file_source::<ParquetSource>()?;
        let parts = config.file_groups.len();
        let files: Vec<&PartitionedFile> =
            config.file_groups.iter().flat_map(|g| g.iter()).collect();
        let first = *files.first()?;
        let divided = parts >= 2
            && config.file_groups.iter().all(|g| g.len() == 1)
            && files.iter().all(|f| {
                f.object_meta.location == first.object_meta.location
                    && f.range.is_some()
                    && f.extensions.is_empty()
            });
        if !divided {
            return None;
        }
        let total: i64 = self.row_group_rows(first)?.iter().sum();
        if total < parts as i64 {
            return None;
        }
        let groups = (0..parts as i64)
            .map(|i| {
                let (from, to) = (total * i / parts as i64, total * (i + 1) / parts as i64);
                let mut selectors = Vec::with_capacity(3);
                if from > 0 {
                    selectors.push(RowSelector::skip(from as usize));
                }
                selectors.push(RowSelector::select((to - from) as usize));
                if to < total {
                    selectors.push(RowSelector::skip((total - to) as usize));
                }
                let mut file = first.clone();
                file.range = None;
                file.statistics = None;
                let file =
                    file.with_extension(ParquetRowSelection::new(RowSelection::from(selectors)));
                FileGroup::new(vec![file])
            })
            .collect();
        let config: FileScanConfig = FileScanConfigBuilder::from(config.clone())
            .with_file_groups(groups)
            .build();
        Some(DataSourceExec::from_data_source(config))
    }

    /// The rows of each row group of a local file, from its footer.
    fn row_group_rows(&self, file: &PartitionedFile) -> Option<Vec<i64>> {
        let path = PathBuf::from("/").join(file.object_meta.location.as_ref());
        let key = (
            path.clone(),
            file.object_meta.size,
            file.object_meta.last_modified.timestamp_nanos_opt()?,
        );
        let mut known = self.row_groups.lock().ok()?;
        if let Some(rows) = known.get(&key) {
            return Some(rows.clone());
        }
        let opened = std::fs::File::open(&path).ok()?;
        let metadata = ParquetMetaDataReader::new()
            .parse_and_finish(&opened)
            .ok()?;
        let rows: Vec<i64> = metadata.row_groups().iter().map(|g| g.num_rows()).collect();
        known.insert(key, rows.clone());
        Some(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{AsArray, Int64Array, RecordBatch};
    use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema};
    use datafusion::parquet::arrow::ArrowWriter;
    use datafusion::parquet::basic::Compression;
    use datafusion::parquet::file::properties::WriterProperties;
    use datafusion::physical_plan::collect;
    use datafusion::prelude::ParquetReadOptions;
    use std::path::Path;

    /// The value of row `i` of the test files: scattered, so that nothing compresses.
    fn value(i: i64) -> i64 {
        i * 7_919 % 1_000_003
    }

    /// `rows` values in row groups of up to `group` rows, over DataFusion's 1 MiB below which
    /// it reads a file in one partition (no dictionary, no compression).
    fn write(path: &Path, rows: i64, group: usize) {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        let values = Int64Array::from_iter_values((0..rows).map(value));
        let batch = RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(values)]).unwrap();
        let properties = WriterProperties::builder()
            .set_dictionary_enabled(false)
            .set_compression(Compression::UNCOMPRESSED)
            .set_max_row_group_row_count(Some(group))
            .build();
        let file = std::fs::File::create(path).unwrap();
        let mut writer = ArrowWriter::try_new(file, schema, Some(properties)).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
    }

    /// What each partition of the scan of `SELECT v` reads (as runs of rows skipped and
    /// selected, `None` for DataFusion's byte range), and the number and sum of the rows read.
    /// Which partition reads which share is not fixed: a partition that finishes early takes
    /// the files and shares another has not started.
    fn scan_of(path: &Path, own_operators: bool) -> (Vec<Option<Vec<(bool, usize)>>>, usize, i64) {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let ctx = super::super::new_context(own_operators);
            let options = ParquetReadOptions::default();
            ctx.register_parquet("t", path.to_str().unwrap(), options)
                .await
                .unwrap();
            let plan = ctx.sql("SELECT v FROM t").await.unwrap();
            let plan = plan.create_physical_plan().await.unwrap();
            let exec = plan.downcast_ref::<DataSourceExec>().expect("a scan alone");
            let (config, _) = exec.downcast_to_file_source::<ParquetSource>().unwrap();
            let shares = config
                .file_groups
                .iter()
                .map(|g| {
                    let file = &g.files()[0];
                    let selection = file.extensions.get::<ParquetRowSelection>()?;
                    assert!(file.range.is_none());
                    let runs = selection.selection().iter().map(|r| (r.skip, r.row_count));
                    Some(runs.collect())
                })
                .collect();
            let batches = collect(plan, ctx.task_ctx()).await.unwrap();
            let rows = batches.iter().map(RecordBatch::num_rows).sum();
            let sum = batches
                .iter()
                .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
                .sum();
            (shares, rows, sum)
        })
    }

    #[test]
    fn a_file_of_one_row_group_is_shared_by_the_partitions_in_halves_of_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        let rows = 200_001;
        write(&path, rows, 1 << 22);
        let expected: i64 = (0..rows).map(value).sum();
        // DataFusion's own division: two byte ranges, the row group in the first.
        let (by_bytes, read, sum) = scan_of(&path, false);
        assert_eq!(by_bytes, vec![None, None]);
        assert_eq!((read, sum), (200_001, expected));
        let (by_rows, read, sum) = scan_of(&path, true);
        assert_eq!(
            by_rows,
            vec![
                Some(vec![(false, 100_000), (true, 100_001)]),
                Some(vec![(true, 100_000), (false, 100_001)]),
            ]
        );
        assert_eq!((read, sum), (200_001, expected), "every row read once");
    }

    #[test]
    fn row_groups_of_unequal_sizes_are_shared_by_rows_across_their_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        let rows = 210_000;
        write(&path, rows, 150_000);
        let expected: i64 = (0..rows).map(value).sum();
        let (by_rows, read, sum) = scan_of(&path, true);
        assert_eq!(
            by_rows,
            vec![
                Some(vec![(false, 105_000), (true, 105_000)]),
                Some(vec![(true, 105_000), (false, 105_000)]),
            ]
        );
        assert_eq!((read, sum), (210_000, expected), "every row read once");
    }
}
