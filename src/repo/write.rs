//! Writing OMOP tables as Parquet or CSV, a bounded batch at a time, byte-for-byte
//! deterministic: the synthetic generator and (later) study outputs write through here.

use super::schema::{Kind, Table};
use datafusion::arrow::array::{
    ArrayRef, Date32Builder, Float64Builder, Int64Builder, StringBuilder,
};
use datafusion::arrow::csv::WriterBuilder as CsvWriterBuilder;
use datafusion::arrow::datatypes::Schema;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A hidden path beside `path`, unique to this process (`.name.what-pid`): where a file or
/// directory is written before it is renamed into place, or where the one it replaces waits.
pub fn hidden_sibling(path: &Path, what: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".to_string());
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    parent.join(format!(".{name}.{what}-{}", std::process::id()))
}

/// Rows are written out once this many are buffered.
const BATCH_ROWS: usize = 65_536;

/// One value of a row, in the column's kind.
#[derive(Clone, Debug, PartialEq)]
pub enum Cell {
    Null,
    Int(i64),
    Float(f64),
    Str(&'static str),
    Text(String),
    /// Days since 1970-01-01.
    Date(i32),
}

/// The output format of written tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    Parquet,
    Csv,
}

impl OutputFormat {
    pub fn extension(self) -> &'static str {
        match self {
            OutputFormat::Parquet => "parquet",
            OutputFormat::Csv => "csv",
        }
    }
}

enum Sink {
    Parquet(ArrowWriter<BufWriter<File>>),
    Csv(datafusion::arrow::csv::Writer<BufWriter<File>>),
}

enum ColumnBuilder {
    Int(Int64Builder),
    Float(Float64Builder),
    Text(StringBuilder),
    Date(Date32Builder),
}

/// Writes one table, row by row.
pub struct TableWriter {
    table: &'static Table,
    schema: Arc<Schema>,
    builders: Vec<ColumnBuilder>,
    buffered: usize,
    rows: u64,
    sink: Sink,
    path: PathBuf,
    scratch: Vec<Cell>,
}

/// Column positions for `TableWriter::push_named`.
#[derive(Clone, Debug)]
pub struct Layout {
    indexes: Vec<usize>,
}

/// A writing error, with the file it concerns.
#[derive(Debug)]
pub struct WriteError(pub String);

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WriteError {}

impl TableWriter {
    /// Creates `<dir>/<table>.<format>`. Datetime columns are written as text.
    pub fn create(
        dir: &Path,
        table: &'static Table,
        format: OutputFormat,
    ) -> Result<TableWriter, WriteError> {
        let path = dir.join(format!("{}.{}", table.name, format.extension()));
        let fail =
            |e: &dyn std::fmt::Display| WriteError(format!("cannot write {}: {e}", path.display()));
        let schema = Arc::new(Schema::new(
            table
                .columns
                .iter()
                .map(|c| {
                    let t = if c.kind == Kind::Datetime {
                        Kind::Text.arrow()
                    } else {
                        c.kind.arrow()
                    };
                    datafusion::arrow::datatypes::Field::new(c.name, t, true)
                })
                .collect::<Vec<_>>(),
        ));
        let file = BufWriter::new(File::create(&path).map_err(|e| fail(&e))?);
        let sink = match format {
            OutputFormat::Parquet => {
                let props = WriterProperties::builder()
                    .set_compression(Compression::ZSTD(
                        ZstdLevel::try_new(3).expect("valid level"),
                    ))
                    .set_max_row_group_row_count(Some(1 << 20))
                    .set_created_by("cohortql".to_string())
                    .build();
                Sink::Parquet(
                    ArrowWriter::try_new(file, schema.clone(), Some(props))
                        .map_err(|e| fail(&e))?,
                )
            }
            OutputFormat::Csv => Sink::Csv(CsvWriterBuilder::new().with_header(true).build(file)),
        };
        let builders = table.columns.iter().map(|c| new_builder(c.kind)).collect();
        Ok(TableWriter {
            table,
            schema,
            builders,
            buffered: 0,
            rows: 0,
            sink,
            path,
            scratch: Vec::new(),
        })
    }

    /// Appends one row; `cells` follow the table's columns, in order.
    pub fn push(&mut self, cells: &[Cell]) -> Result<(), WriteError> {
        debug_assert_eq!(
            cells.len(),
            self.builders.len(),
            "row width of {}",
            self.table.name
        );
        for (builder, cell) in self.builders.iter_mut().zip(cells) {
            append(builder, cell);
        }
        self.buffered += 1;
        self.rows += 1;
        if self.buffered >= BATCH_ROWS {
            self.flush()?;
        }
        Ok(())
    }

    /// The positions of these columns, for `push_named`. An unknown name is a bug in the caller.
    pub fn layout(&self, names: &[&str]) -> Layout {
        let indexes = names
            .iter()
            .map(|n| {
                self.table
                    .columns
                    .iter()
                    .position(|c| c.name == *n)
                    .unwrap_or_else(|| panic!("{} has no column {n}", self.table.name))
            })
            .collect();
        Layout { indexes }
    }

    /// Appends one row given the cells of the layout's columns; the others are empty.
    pub fn push_named(&mut self, layout: &Layout, cells: &[Cell]) -> Result<(), WriteError> {
        let mut row = std::mem::take(&mut self.scratch);
        row.clear();
        row.resize(self.builders.len(), Cell::Null);
        for (&i, cell) in layout.indexes.iter().zip(cells) {
            row[i] = cell.clone();
        }
        let result = self.push(&row);
        self.scratch = row;
        result
    }

    fn flush(&mut self) -> Result<(), WriteError> {
        if self.buffered == 0 {
            return Ok(());
        }
        let arrays: Vec<ArrayRef> = self.builders.iter_mut().map(finish).collect();
        let batch = RecordBatch::try_new(self.schema.clone(), arrays)
            .map_err(|e| WriteError(format!("cannot build a batch of {}: {e}", self.table.name)))?;
        let result = match &mut self.sink {
            Sink::Parquet(w) => w.write(&batch).map_err(|e| e.to_string()),
            Sink::Csv(w) => w.write(&batch).map_err(|e| e.to_string()),
        };
        result.map_err(|e| WriteError(format!("cannot write {}: {e}", self.path.display())))?;
        self.buffered = 0;
        Ok(())
    }

    /// Writes what is buffered and closes the file; returns the number of rows.
    pub fn finish(mut self) -> Result<u64, WriteError> {
        self.flush()?;
        let path = self.path.clone();
        match self.sink {
            Sink::Parquet(w) => {
                w.close()
                    .map_err(|e| WriteError(format!("cannot write {}: {e}", path.display())))?;
            }
            Sink::Csv(w) => {
                let mut inner = w.into_inner();
                std::io::Write::flush(&mut inner)
                    .map_err(|e| WriteError(format!("cannot write {}: {e}", path.display())))?;
            }
        }
        Ok(self.rows)
    }
}

fn new_builder(kind: Kind) -> ColumnBuilder {
    match kind {
        Kind::Integer => ColumnBuilder::Int(Int64Builder::new()),
        Kind::Float => ColumnBuilder::Float(Float64Builder::new()),
        Kind::Text | Kind::Datetime => ColumnBuilder::Text(StringBuilder::new()),
        Kind::Date => ColumnBuilder::Date(Date32Builder::new()),
    }
}

fn append(builder: &mut ColumnBuilder, cell: &Cell) {
    match (builder, cell) {
        (ColumnBuilder::Int(b), Cell::Int(v)) => b.append_value(*v),
        (ColumnBuilder::Float(b), Cell::Float(v)) => b.append_value(*v),
        (ColumnBuilder::Float(b), Cell::Int(v)) => b.append_value(*v as f64),
        (ColumnBuilder::Text(b), Cell::Str(s)) => b.append_value(s),
        (ColumnBuilder::Text(b), Cell::Text(s)) => b.append_value(s),
        (ColumnBuilder::Date(b), Cell::Date(d)) => b.append_value(*d),
        (ColumnBuilder::Int(b), _) => b.append_null(),
        (ColumnBuilder::Float(b), _) => b.append_null(),
        (ColumnBuilder::Text(b), _) => b.append_null(),
        (ColumnBuilder::Date(b), _) => b.append_null(),
    }
}

fn finish(builder: &mut ColumnBuilder) -> ArrayRef {
    match builder {
        ColumnBuilder::Int(b) => Arc::new(b.finish()),
        ColumnBuilder::Float(b) => Arc::new(b.finish()),
        ColumnBuilder::Text(b) => Arc::new(b.finish()),
        ColumnBuilder::Date(b) => Arc::new(b.finish()),
    }
}

/// Writes through a temporary file in the same directory and a rename, so a failure leaves the
/// original untouched (its permissions are kept).
pub fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), String> {
    use std::io::Write;
    let tmp = hidden_sibling(path, "partial");
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        if let Ok(meta) = std::fs::metadata(path) {
            std::fs::set_permissions(&tmp, meta.permissions())?;
        }
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        let why = match e.kind() {
            std::io::ErrorKind::NotFound => "no such file".to_string(),
            std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
            _ => e.to_string(),
        };
        format!("cannot write {}: {why}", path.display())
    })
}
