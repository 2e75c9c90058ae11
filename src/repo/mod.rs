//! The OMOP repository: a directory with one Parquet, CSV or gzipped CSV file per table,
//! validated and registered as tables of a DataFusion session.

pub mod browse;
pub mod domains;
pub mod files;
pub mod group_starts;
pub mod key_filters;
pub mod logical_rules;
pub mod quality;
pub mod query;
pub mod schema;
pub mod shared_scans;
pub mod split_scans;
pub mod vocabulary_index;
pub mod write;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Column as DfColumn, ScalarValue};
use datafusion::datasource::MemTable;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{cast, lit, Expr};
use datafusion::prelude::{CsvReadOptions, ParquetReadOptions, SessionConfig, SessionContext};
use files::{Format, Source, TableFile};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A problem with a repository that stops it from being used.
#[derive(Debug, Clone)]
pub enum RepoError {
    Io {
        path: PathBuf,
        message: String,
    },
    NotADirectory(PathBuf),
    MissingTable {
        table: &'static str,
        dir: PathBuf,
    },
    AmbiguousTable {
        table: &'static str,
        paths: Vec<PathBuf>,
    },
    MissingColumns {
        path: PathBuf,
        table: &'static str,
        columns: Vec<&'static str>,
    },
    WrongTypes {
        path: PathBuf,
        problems: Vec<String>,
    },
    Unreadable {
        path: PathBuf,
        message: String,
    },
    /// Data that cannot be read as its column's type: garbage dates, ragged rows, bad bytes.
    BadData {
        path: PathBuf,
        column: Option<String>,
        message: String,
    },
    Engine(String),
}

impl fmt::Display for RepoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RepoError::Io { path, message } => write!(f, "cannot read {}: {message}", path.display()),
            RepoError::NotADirectory(p) => {
                write!(f, "{} is not a directory: a repository is a directory with one file per OMOP table", p.display())
            }
            RepoError::MissingTable { table, dir } => write!(
                f,
                "{} has no `{table}` table: expected {table}.parquet, {table}.csv or {table}.csv.gz",
                dir.display()
            ),
            RepoError::AmbiguousTable { table, paths } => {
                let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
                write!(f, "table `{table}` has several files ({}): keep one", names.join(", "))
            }
            RepoError::MissingColumns { path, table, columns } => write!(
                f,
                "{} lacks the {table} column{} {}",
                path.display(),
                if columns.len() == 1 { "" } else { "s" },
                columns.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", ")
            ),
            RepoError::WrongTypes { path, problems } => {
                write!(f, "{} has columns of the wrong type: {}", path.display(), problems.join("; "))
            }
            RepoError::Unreadable { path, message } => write!(f, "cannot read {}: {message}", path.display()),
            RepoError::BadData { path, column: Some(c), message } => {
                write!(f, "{}, column `{c}`: {message}", path.display())
            }
            RepoError::BadData { path, column: None, message } => write!(f, "{}: {message}", path.display()),
            RepoError::Engine(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for RepoError {}

/// An opened repository: which tables it has, in which files.
#[derive(Debug, Clone)]
pub struct Repository {
    pub dir: PathBuf,
    pub files: Vec<TableFile>,
}

impl Repository {
    /// Finds and validates the table files of a directory; reads headers, not data.
    pub fn open(dir: &Path) -> Result<Repository, Vec<RepoError>> {
        let (files, mut problems) = files::discover(dir).map_err(|e| vec![e])?;
        for table in schema::TABLES.iter().filter(|t| t.essential) {
            let has_file = files.iter().any(|f| f.table.name == table.name);
            let has_problem = problems
                .iter()
                .any(|p| problem_table(p) == Some(table.name));
            if !has_file && !has_problem {
                problems.push(RepoError::MissingTable {
                    table: table.name,
                    dir: dir.to_path_buf(),
                });
            }
        }
        if problems.is_empty() {
            Ok(Repository {
                dir: dir.to_path_buf(),
                files,
            })
        } else {
            Err(problems)
        }
    }

    pub fn file(&self, table: &str) -> Option<&TableFile> {
        self.files.iter().find(|f| f.table.name == table)
    }

    /// A DataFusion session with every OMOP table registered under its own name. Tables the
    /// repository lacks are registered empty, so a study that reads them finds no records.
    pub async fn session(&self) -> Result<SessionContext, RepoError> {
        self.register_in(new_context(true)).await
    }

    /// A session as `session` gives, whose physical plans hold only DataFusion's own operators
    /// and scans (none of `group_starts` or `shared_scans`, no row selections of `split_scans`): what a
    /// cluster's plan format can carry to its executors.
    pub async fn portable_session(&self) -> Result<SessionContext, RepoError> {
        self.register_in(new_context(false)).await
    }

    async fn register_in(&self, ctx: SessionContext) -> Result<SessionContext, RepoError> {
        // Text is read as plain Utf8 from every format, so tables have the same schema whether
        // they come from Parquet or CSV.
        for table in schema::TABLES {
            match self.file(table.name) {
                Some(file) => register_file(&ctx, file).await?,
                None => {
                    let empty =
                        MemTable::try_new(table.arrow_schema(), vec![vec![]]).map_err(engine)?;
                    ctx.register_table(table.name, Arc::new(empty))
                        .map_err(engine)?;
                }
            }
        }
        Ok(ctx)
    }
}

/// The name under which a cache keeps what it knows of the repository in `dir`: the first 8
/// bytes of the sha256 of its canonical path, in hex.
pub fn cache_name(dir: &Path) -> String {
    use sha2::{Digest, Sha256};
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    crate::hash::hex(&Sha256::digest(dir.to_string_lossy().as_bytes())[..8])
}

/// A session with cohortql's settings and, if `own_operators`, its physical rules
/// (`group_starts`, `split_scans`, `shared_scans`, `key_filters`).
fn new_context(own_operators: bool) -> SessionContext {
    let mut state = datafusion::execution::SessionStateBuilder::new()
        .with_config(session_config())
        .with_default_features()
        .with_optimizer_rules(logical_rules::rules());
    if own_operators {
        // Before the joins make their dynamic filters (the last rules but the checks): a join
        // whose sides `group_starts` exchanges must not have made one yet.
        let mut rules = datafusion::physical_optimizer::optimizer::PhysicalOptimizer::new().rules;
        let at = rules
            .iter()
            .position(|r| r.name() == "FilterPushdown(Post)")
            .unwrap_or(rules.len());
        rules.insert(at, Arc::new(group_starts::GroupStarts));
        // After the file scans are divided among partitions (EnforceDistribution).
        rules.insert(at + 1, Arc::new(split_scans::SplitScans::default()));
        // After the joins have made their dynamic filters and pushed them to their probe
        // sides' scans, which keep them with the filter between.
        let checks = rules
            .iter()
            .position(|r| r.name() == "SanityCheckPlan")
            .unwrap_or(rules.len());
        rules.insert(checks, Arc::new(key_filters::KeyFilters));
        // After the scans are divided, so that readings of the same shares are seen as one,
        // and after the key filters, which a shared scan tests for the readings under them.
        rules.insert(checks + 1, Arc::new(shared_scans::SharedScans::default()));
        state = state.with_physical_optimizer_rules(rules);
    }
    SessionContext::new_with_state(state.build())
}

fn session_config() -> SessionConfig {
    SessionConfig::new()
        .with_target_partitions(2)
        .with_information_schema(false)
        // One pass of the logical optimizer: a study's plans come out of it as they come out
        // of three, but for the order of a comparison's sides and the names of common
        // subexpressions (`tests/run.rs` holds every study's scans and joins to that), and
        // the passes after it ran on the thread each next stage waits on: a run at 100,000
        // persons took a tenth less without them (docs/performance.md).
        .set_usize("datafusion.optimizer.max_passes", OPTIMIZER_PASSES)
        // A file of 64 KiB or more is divided among the partitions of a scan (DataFusion's
        // floor is 1 MiB): at 100,000 persons `person`, `drug_era` and the imaging tables
        // are under 1 MiB, and each was read by one core while the other waited.
        .set_usize(
            "datafusion.optimizer.repartition_file_min_size",
            DIVIDED_FILE_MIN_BYTES,
        )
        .set_bool(
            "datafusion.execution.parquet.schema_force_view_types",
            false,
        )
        // Where a scan tests its filters as it decodes (the rare index records, `run`'s
        // `keep_rare`), the filter reading the fewest bytes goes first: the concept test, after
        // which nothing is left to decode for the others. DataFusion takes this setting from
        // the table's options, fixed when the file is registered, not from the session that
        // runs the scan: set for the session running the scan alone, the tests ran in the
        // order written, and the eras study decoded `person_id` and the start dates of every
        // drug exposure before testing the concept (docs/performance.md).
        .set_bool("datafusion.execution.parquet.reorder_filters", true)
        // Expressions such as a struct's field are moved towards the scans by two logical
        // rules that walk every plan at each pass; a study's plans have none of them, and the
        // walk cost a twentieth of the optimiser's time (docs/performance.md).
        .set_bool(
            "datafusion.optimizer.enable_leaf_expression_pushdown",
            false,
        )
        // A sort whose partition holds up to this many bytes concatenates its rows and sorts
        // them at once; above it, it sorts each batch and merges the sorted batches.
        // DataFusion's 1 MiB sent the sorts of the entries (five keys, some 5 MB a partition
        // at 1,000,000 persons) through a merge of a dozen runs: the Circe cohort's entries
        // took 105–129 ms against 93–105 sorted at once, with the same peak memory
        // (docs/performance.md). Larger sorts merge as before.
        .set_usize(
            "datafusion.execution.sort_in_place_threshold_bytes",
            SORT_IN_PLACE_BYTES,
        )
        // A hash join builds one table from its smaller side, shared by every partition of the
        // larger, up to these sizes (DataFusion's defaults: 1 MB, 128 Ki rows). Above them it
        // hashes both sides into partitions, moving every row of the larger side, which is
        // what dominated joins of entries with all their persons' records: at 1,000,000
        // persons the NSAID study's count of visits repartitioned 23 million visits to join
        // 240,000 entries (docs/performance.md).
        .set_usize(
            "datafusion.optimizer.hash_join_single_partition_threshold",
            HASH_JOIN_SHARED_BYTES,
        )
        .set_usize(
            "datafusion.optimizer.hash_join_single_partition_threshold_rows",
            HASH_JOIN_SHARED_ROWS,
        )
        // A filter is estimated to keep all its rows, not a fifth (DataFusion's default), when
        // the engine picks the side of a join to hash. The filters of these plans that keep
        // few rows read tables far larger than what they are joined with, which stays the
        // smaller side either way; those that keep most (a person and a date present, the
        // concepts of the index event over its kept records) made a side of a million rows
        // look smaller than the 280,000 entries it was joined with, and the join hash it
        // (docs/performance.md).
        .set_usize(
            "datafusion.optimizer.default_filter_selectivity",
            FILTER_SELECTIVITY_PERCENT,
        )
}

/// The passes of DataFusion's logical optimizer over each plan (see `session_config`).
const OPTIMIZER_PASSES: usize = 1;

/// The smallest file, in bytes, a scan divides among its partitions (see `session_config`).
const DIVIDED_FILE_MIN_BYTES: usize = 64 << 10;

/// The share of its input's rows, in percent, a filter is estimated to keep (see
/// `session_config`).
const FILTER_SELECTIVITY_PERCENT: usize = 100;

/// The largest partition, in bytes, a sort sorts at once rather than batch by batch and
/// merged (see `session_config`).
const SORT_IN_PLACE_BYTES: usize = 64 << 20;

/// The largest side, in bytes and in rows, a hash join builds as one table all its partitions
/// share (see `session_config`).
const HASH_JOIN_SHARED_BYTES: usize = 1 << 30;
const HASH_JOIN_SHARED_ROWS: usize = 1 << 24;

/// A session with every OMOP table registered empty: enough to plan a study, or to write it as
/// SQL, without any data.
pub fn empty_session() -> Result<SessionContext, RepoError> {
    let ctx = new_context(true);
    for table in schema::TABLES {
        let empty = MemTable::try_new(table.arrow_schema(), vec![vec![]]).map_err(engine)?;
        ctx.register_table(table.name, Arc::new(empty))
            .map_err(engine)?;
    }
    Ok(ctx)
}

fn problem_table(p: &RepoError) -> Option<&'static str> {
    match p {
        RepoError::MissingColumns { table, .. } | RepoError::AmbiguousTable { table, .. } => {
            Some(table)
        }
        RepoError::Unreadable { path, .. } | RepoError::WrongTypes { path, .. } => {
            let name = path.file_name()?.to_str()?;
            schema::TABLES
                .iter()
                .find(|t| name.split('.').next() == Some(t.name))
                .map(|t| t.name)
        }
        _ => None,
    }
}

pub(crate) fn engine(e: DataFusionError) -> RepoError {
    RepoError::Engine(clean_engine_message(&e.to_string()))
}

/// Engine messages carry layers of prefixes ("External error: Arrow error: …"); keep the cause.
pub fn clean_engine_message(message: &str) -> String {
    let mut m = message.trim();
    for prefix in [
        "External error: ",
        "Arrow error: ",
        "Execution error: ",
        "Parser error: ",
        "ParquetError: ",
        "Csv error: ",
        "Cast error: ",
        "Io error: ",
        "IO error: ",
        "Parquet error: ",
        "External: ",
    ] {
        while let Some(rest) = m.strip_prefix(prefix) {
            m = rest.trim();
        }
    }
    let m = m
        .split("\nThis issue was likely caused by")
        .next()
        .unwrap_or(m);
    let lower = m.to_ascii_lowercase();
    if lower.contains("invalid utf-8") || lower.contains("invalid utf8") {
        format!("{m} (the file must be UTF-8 text)")
    } else if lower.contains("unexpected end of file")
        || lower.contains("corrupt deflate stream")
        || lower.contains("incomplete deflate stream")
        || lower.contains("invalid gzip header")
    {
        format!("{m} (the compressed file is truncated or damaged)")
    } else if lower.contains("incorrect number of fields") {
        format!("{m} (every row must have as many fields as the header)")
    } else {
        m.to_string()
    }
}

async fn register_file(ctx: &SessionContext, file: &TableFile) -> Result<(), RepoError> {
    let path = file.path.to_str().ok_or_else(|| RepoError::Unreadable {
        path: file.path.clone(),
        message: "the path is not valid UTF-8".to_string(),
    })?;
    let frame = match file.format {
        Format::Parquet => ctx.read_parquet(path, ParquetReadOptions::default().file_extension(".parquet")).await,
        Format::Csv | Format::CsvGz => {
            // Every column is read as text and converted below, so that a bad value is reported
            // with its column rather than as a failure to parse the whole row.
            let text_schema = datafusion::arrow::datatypes::Schema::new(
                file.file_columns
                    .iter()
                    .map(|c| datafusion::arrow::datatypes::Field::new(c, DataType::Utf8, true))
                    .collect::<Vec<_>>(),
            );
            let compression = if file.format == Format::CsvGz {
                datafusion::datasource::file_format::file_compression_type::FileCompressionType::GZIP
            } else {
                datafusion::datasource::file_format::file_compression_type::FileCompressionType::UNCOMPRESSED
            };
            let options = CsvReadOptions::new()
                .has_header(true)
                .schema(&text_schema)
                .file_extension(file.format.extension())
                .file_compression_type(compression)
                .null_regex(Some("^$".to_string()));
            ctx.read_csv(path, options).await
        }
    }
    .map_err(|e| RepoError::Unreadable { path: file.path.clone(), message: clean_engine_message(&e.to_string()) })?;
    let projection: Vec<Expr> = file
        .sources
        .iter()
        .map(|(column, source)| {
            let target = column.kind.arrow();
            match source {
                Source::Present {
                    file_name,
                    file_type,
                } => {
                    let e = Expr::Column(DfColumn::from_name(file_name.clone()));
                    if *file_type == target {
                        e.alias(column.name)
                    } else {
                        cast(e, target).alias(column.name)
                    }
                }
                Source::Absent => cast(lit(ScalarValue::Null), target).alias(column.name),
            }
        })
        .collect();
    let view = frame.select(projection).map_err(engine)?;
    ctx.register_table(file.table.name, view.into_view())
        .map_err(engine)?;
    Ok(())
}
