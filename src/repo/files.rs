//! Finding a repository's table files and reading their column names without reading data.

use super::schema::{Column, Kind, Table, TABLES};
use super::RepoError;
use datafusion::arrow::datatypes::DataType;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// How a table is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Parquet,
    Csv,
    CsvGz,
}

impl Format {
    pub const ALL: [Format; 3] = [Format::Parquet, Format::Csv, Format::CsvGz];

    pub fn extension(self) -> &'static str {
        match self {
            Format::Parquet => ".parquet",
            Format::Csv => ".csv",
            Format::CsvGz => ".csv.gz",
        }
    }
}

/// Where one of the file's columns comes from, for one OMOP column.
#[derive(Clone, Debug)]
pub enum Source {
    /// The file's column of this name (as spelled in the file), with its type in the file.
    Present {
        file_name: String,
        file_type: DataType,
    },
    /// The file has no such column; it reads as empty.
    Absent,
}

/// One table's file and how its columns map onto the OMOP schema.
#[derive(Clone, Debug)]
pub struct TableFile {
    pub table: &'static Table,
    pub path: PathBuf,
    pub format: Format,
    /// The file's columns in file order, as written (CSV files are read by position).
    pub file_columns: Vec<String>,
    /// For each OMOP column, in schema order.
    pub sources: Vec<(Column, Source)>,
    /// Columns the file has that the OMOP schema does not.
    pub extra_columns: Vec<String>,
}

/// The table files in a directory, by table; errors name every problem found.
pub fn discover(dir: &Path) -> Result<(Vec<TableFile>, Vec<RepoError>), RepoError> {
    let meta = std::fs::metadata(dir).map_err(|e| RepoError::Io {
        path: dir.to_path_buf(),
        message: io_message(&e),
    })?;
    if !meta.is_dir() {
        return Err(RepoError::NotADirectory(dir.to_path_buf()));
    }
    let mut found = Vec::new();
    let mut problems = Vec::new();
    for table in TABLES {
        // Anything at a table's path counts, even a dangling link: a table that is there but
        // cannot be read is an error, never an absent (empty) table.
        let candidates: Vec<(PathBuf, Format)> = Format::ALL
            .iter()
            .map(|f| (dir.join(format!("{}{}", table.name, f.extension())), *f))
            .filter(|(p, _)| std::fs::symlink_metadata(p).is_ok())
            .collect();
        match candidates.as_slice() {
            [] => {}
            [(path, format)] => match regular_file(path)
                .and_then(|()| read_file_columns(path, *format))
                .and_then(|cols| map_columns(table, path, *format, cols))
            {
                Ok(file) => found.push(file),
                Err(e) => problems.push(e),
            },
            several => problems.push(RepoError::AmbiguousTable {
                table: table.name,
                paths: several.iter().map(|(p, _)| p.clone()).collect(),
            }),
        }
    }
    Ok((found, problems))
}

/// Whether the path leads to a regular file, naming what it is otherwise.
fn regular_file(path: &Path) -> Result<(), RepoError> {
    let bad = |message: &str| RepoError::Unreadable {
        path: path.to_path_buf(),
        message: message.to_string(),
    };
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => Ok(()),
        Ok(meta) if meta.is_dir() => Err(bad("it is a directory, not a table file")),
        Ok(_) => Err(bad("it is not a regular file (a device, socket or pipe)")),
        Err(e) if std::fs::symlink_metadata(path).is_ok_and(|m| m.is_symlink()) => {
            Err(bad(&format!(
                "it is a symbolic link that leads to no file ({})",
                io_message(&e)
            )))
        }
        Err(e) => Err(bad(&io_message(&e))),
    }
}

fn io_message(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file or directory".to_string(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        _ => e.to_string(),
    }
}

/// The column names of a file, with their types for Parquet (CSV columns are text).
fn read_file_columns(path: &Path, format: Format) -> Result<Vec<(String, DataType)>, RepoError> {
    let bad = |message: String| RepoError::Unreadable {
        path: path.to_path_buf(),
        message,
    };
    let file = File::open(path).map_err(|e| bad(io_message(&e)))?;
    match format {
        Format::Parquet => {
            let builder = ParquetRecordBatchReaderBuilder::try_new(file)
                .map_err(|e| bad(format!("not a readable Parquet file ({e})")))?;
            Ok(builder
                .schema()
                .fields()
                .iter()
                .map(|f| (f.name().clone(), f.data_type().clone()))
                .collect())
        }
        Format::Csv | Format::CsvGz => {
            let reader: Box<dyn Read> = if format == Format::CsvGz {
                Box::new(flate2::read::MultiGzDecoder::new(file))
            } else {
                Box::new(file)
            };
            let mut line = Vec::new();
            BufReader::new(reader.take(1 << 20))
                .read_until(b'\n', &mut line)
                .map_err(|e| {
                    bad(format!(
                        "cannot read the header row: {}",
                        gzip_message(&e.to_string())
                    ))
                })?;
            if line.is_empty() {
                return Err(bad(
                    "the file is empty: a header row with the column names is expected".to_string(),
                ));
            }
            let header = String::from_utf8(line)
                .map_err(|_| bad("the header row is not UTF-8 text".to_string()))?;
            let header = header
                .trim_start_matches('\u{feff}')
                .trim_end_matches(['\n', '\r']);
            Ok(split_header(header)
                .into_iter()
                .map(|c| (c, DataType::Utf8))
                .collect())
        }
    }
}

fn gzip_message(m: &str) -> String {
    if m.contains("invalid gzip header") {
        "it is not gzip-compressed although its name ends in .gz".to_string()
    } else {
        m.to_string()
    }
}

fn split_header(header: &str) -> Vec<String> {
    header
        .split(',')
        .map(|c| c.trim().trim_matches('"').to_string())
        .collect()
}

fn map_columns(
    table: &'static Table,
    path: &Path,
    format: Format,
    file_columns: Vec<(String, DataType)>,
) -> Result<TableFile, RepoError> {
    let mut sources = Vec::new();
    let mut missing = Vec::new();
    let mut wrong_types = Vec::new();
    let mut used = vec![false; file_columns.len()];
    for column in table.columns {
        let position = file_columns
            .iter()
            .position(|(n, _)| n.eq_ignore_ascii_case(column.name))
            .or_else(|| {
                column.v53_name.and_then(|old| {
                    file_columns
                        .iter()
                        .position(|(n, _)| n.eq_ignore_ascii_case(old))
                })
            });
        match position {
            Some(i) => {
                used[i] = true;
                let (name, data_type) = &file_columns[i];
                if !convertible(data_type, column.kind) {
                    wrong_types.push(format!(
                        "{} is {data_type} but should be {}",
                        column.name,
                        column.kind.name()
                    ));
                }
                sources.push((
                    *column,
                    Source::Present {
                        file_name: name.clone(),
                        file_type: data_type.clone(),
                    },
                ));
            }
            None => {
                if column.required {
                    missing.push(column.name);
                }
                sources.push((*column, Source::Absent));
            }
        }
    }
    if !missing.is_empty() {
        return Err(RepoError::MissingColumns {
            path: path.to_path_buf(),
            table: table.name,
            columns: missing,
        });
    }
    if !wrong_types.is_empty() {
        return Err(RepoError::WrongTypes {
            path: path.to_path_buf(),
            problems: wrong_types,
        });
    }
    let extra_columns = file_columns
        .iter()
        .zip(&used)
        .filter(|(_, u)| !**u)
        .map(|((n, _), _)| n.clone())
        .collect();
    Ok(TableFile {
        table,
        path: path.to_path_buf(),
        format,
        file_columns: file_columns.into_iter().map(|(n, _)| n).collect(),
        sources,
        extra_columns,
    })
}

/// Whether a file's column type can stand for a column of this kind. Text converts at read
/// time, and values that do not convert are reported then; integers stored as floating point
/// are accepted here and checked for fractions by `repo check`.
fn convertible(from: &DataType, to: Kind) -> bool {
    use DataType::*;
    let integer = matches!(
        from,
        Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | UInt64
    );
    let float = matches!(
        from,
        Float16 | Float32 | Float64 | Decimal128(_, _) | Decimal256(_, _)
    );
    let text = matches!(from, Utf8 | LargeUtf8 | Utf8View);
    let temporal = matches!(from, Date32 | Date64 | Timestamp(_, _));
    match to {
        Kind::Integer => integer || float || text,
        Kind::Float => integer || float || text,
        Kind::Text => integer || float || text || temporal,
        Kind::Date | Kind::Datetime => temporal || text,
    }
}
