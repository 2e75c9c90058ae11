//! Writing a run's outputs: the OMOP cohort table, the analysis dataset and the attrition table
//! as Parquet and CSV, the study text, and `run.json` tying them to the study and the data.
//! Everything is written to a temporary sibling directory renamed into place at the end, so a
//! failed or interrupted run leaves no partial outputs; the same inputs give the same bytes.

use super::{ArmAttrition, Attrition, Execution, RuleCount};
use crate::repo::write::hidden_sibling;
use crate::repo::Repository;
use crate::study::{OutputPolicy, Study};
use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray, StringBuilder,
};
use datafusion::arrow::compute::{cast, concat_batches};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What a run was, for `run.json`.
pub struct RunInfo<'a> {
    pub study: &'a Study,
    pub study_path: &'a Path,
    pub study_text: &'a str,
    pub study_hash: &'a str,
    /// Whether `--cohort-id` replaced the study's cohort id (`study.output.cohort_id` is the
    /// one in force either way).
    pub cohort_id_from_command_line: bool,
    /// How `run.json` names the repository: its directory's name (a full path would publish a
    /// site's directory layout).
    pub repository: &'a str,
    pub data_fingerprint: &'a str,
    /// Data-quality problems found in the tables the study read.
    pub data_warnings: &'a [String],
    /// Time spent reading, parsing and checking the study.
    pub check_time: std::time::Duration,
}

/// A path as `run.json` may publish it: as given when relative and inside the working
/// directory, otherwise only its file name.
fn shareable_path(path: &Path) -> String {
    let inside = path.is_relative()
        && path.components().all(|c| {
            matches!(
                c,
                std::path::Component::Normal(_) | std::path::Component::CurDir
            )
        });
    if inside {
        path.display().to_string()
    } else {
        path.file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    }
}

/// Rows written per output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    pub cohort: usize,
    pub dataset: usize,
    pub attrition: usize,
    pub attrition_by_arm: usize,
    pub inclusion_rules: usize,
}

/// A count as it may be published: `None` when it is below the minimum cell count (and not 0).
pub fn publishable(count: u64, policy: &OutputPolicy) -> Option<u64> {
    (count == 0 || count >= policy.min_cell_count).then_some(count)
}

/// A count as it may be shown: `<5` (the minimum cell count) when it may not be published.
pub fn shown(count: u64, policy: &OutputPolicy) -> String {
    publishable(count, policy).map_or(format!("<{}", policy.min_cell_count), |n| n.to_string())
}

/// The attrition as a table for the screen, counts withheld as the policy says.
pub fn attrition_table(rows: &[Attrition], policy: &OutputPolicy) -> String {
    use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, CellAlignment, Table};
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_header(["step", "rule", "persons", "entries"]);
    for (i, a) in rows.iter().enumerate() {
        t.add_row(vec![
            Cell::new(i).set_alignment(CellAlignment::Right),
            Cell::new(crate::printable::escaped(&a.rule)),
            Cell::new(shown(a.persons, policy)).set_alignment(CellAlignment::Right),
            Cell::new(shown(a.entries, policy)).set_alignment(CellAlignment::Right),
        ]);
    }
    t.to_string()
}

/// sha256 over the files of the repository's tables (names and contents), in table order: the
/// data snapshot a run read.
pub fn data_fingerprint(repo: &Repository) -> Result<String, String> {
    let mut files: Vec<&crate::repo::files::TableFile> = repo.files.iter().collect();
    files.sort_by_key(|f| f.table.name);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    for f in files {
        hasher.update(f.table.name.as_bytes());
        hasher.update([0]);
        let mut file = std::fs::File::open(&f.path)
            .map_err(|e| format!("cannot read {}: {e}", f.path.display()))?;
        loop {
            let n = file
                .read(&mut buf)
                .map_err(|e| format!("cannot read {}: {e}", f.path.display()))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A person's pseudonym in a study's outputs: keyed by the study, so the same person cannot be
/// linked across studies from the outputs alone; reversing it needs the repository.
fn pseudonym(study_hash: &str, person: i64) -> String {
    let mut h = Sha256::new();
    h.update(study_hash.as_bytes());
    h.update(b":");
    h.update(person.to_string().as_bytes());
    hex(&h.finalize()[..8])
}

/// The dataset as published: with pseudonymous ids, person ids become pseudonyms and the index
/// record id (an internal id of the repository) is left out.
fn published_dataset(
    schema: &SchemaRef,
    batches: &[RecordBatch],
    policy: &OutputPolicy,
    study_hash: &str,
) -> Result<RecordBatch, String> {
    let all = concat_batches(schema, batches).map_err(|e| e.to_string())?;
    if !policy.pseudonymise_ids {
        return Ok(all);
    }
    let mut fields: Vec<Field> = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for (field, column) in schema.fields().iter().zip(all.columns()) {
        match field.name().as_str() {
            "person_id" => {
                let ids = cast(column, &DataType::Int64).map_err(|e| e.to_string())?;
                let ids = ids.as_any().downcast_ref::<Int64Array>().expect("int64");
                let mut b = StringBuilder::new();
                for i in 0..ids.len() {
                    b.append_value(pseudonym(study_hash, ids.value(i)));
                }
                fields.push(Field::new("person", DataType::Utf8, false));
                columns.push(Arc::new(b.finish()));
            }
            "index_record_id" => {}
            _ => {
                fields.push(field.as_ref().clone());
                columns.push(column.clone());
            }
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(|e| e.to_string())
}

fn attrition_batch(rows: &[Attrition], policy: &OutputPolicy) -> RecordBatch {
    let (persons, entries, suppressed) = counts(
        &rows
            .iter()
            .map(|r| (r.persons, r.entries))
            .collect::<Vec<_>>(),
        policy,
    );
    let schema = Schema::new(vec![
        Field::new("step", DataType::Int64, false),
        Field::new("rule", DataType::Utf8, false),
        Field::new("persons", DataType::Int64, true),
        Field::new("entries", DataType::Int64, true),
        Field::new("suppressed", DataType::Boolean, false),
    ]);
    RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(Int64Array::from_iter_values(0..rows.len() as i64)),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.rule.as_str()),
            )),
            Arc::new(Int64Array::from(persons)),
            Arc::new(Int64Array::from(entries)),
            Arc::new(BooleanArray::from(suppressed)),
        ],
    )
    .expect("columns of equal length")
}

/// Persons and entries as published, and whether either is withheld.
fn counts(
    rows: &[(u64, u64)],
    policy: &OutputPolicy,
) -> (Vec<Option<i64>>, Vec<Option<i64>>, Vec<bool>) {
    let persons: Vec<Option<i64>> = rows
        .iter()
        .map(|r| publishable(r.0, policy).map(|x| x as i64))
        .collect();
    let entries: Vec<Option<i64>> = rows
        .iter()
        .map(|r| publishable(r.1, policy).map(|x| x as i64))
        .collect();
    let suppressed = persons
        .iter()
        .zip(&entries)
        .map(|(p, e)| p.is_none() || e.is_none())
        .collect();
    (persons, entries, suppressed)
}

/// The attrition by arm: `step` as in the attrition table, `rule`, `arm` (empty for entries
/// in no arm), `persons`, `entries`, `suppressed`.
fn arm_attrition_batch(rows: &[ArmAttrition], policy: &OutputPolicy) -> RecordBatch {
    let (persons, entries, suppressed) = counts(
        &rows
            .iter()
            .map(|r| (r.persons, r.entries))
            .collect::<Vec<_>>(),
        policy,
    );
    let schema = Schema::new(vec![
        Field::new("step", DataType::Int64, false),
        Field::new("rule", DataType::Utf8, false),
        Field::new("arm", DataType::Utf8, true),
        Field::new("persons", DataType::Int64, true),
        Field::new("entries", DataType::Int64, true),
        Field::new("suppressed", DataType::Boolean, false),
    ]);
    // Rows come rule by rule, one per arm and last one for no arm; the attrition table's step
    // 0 (the index event's records, which have no arm) is not among them.
    let rules = rows.iter().filter(|r| r.arm.is_none()).count().max(1);
    let per_rule_rows = (rows.len() / rules).max(1);
    RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(Int64Array::from_iter_values(
                (0..rows.len()).map(|i| (i / per_rule_rows) as i64 + 1),
            )),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.rule.as_str()),
            )),
            Arc::new(StringArray::from_iter(
                rows.iter().map(|r| r.arm.as_deref()),
            )),
            Arc::new(Int64Array::from(persons)),
            Arc::new(Int64Array::from(entries)),
            Arc::new(BooleanArray::from(suppressed)),
        ],
    )
    .expect("columns of equal length")
}

/// OHDSI Circe's inclusion-rule report: `kind` (`rule`: one step on its own, with its `step`
/// number; `combination`: the steps passed, in `rule`, such as `1, 3` or `none`), `persons`,
/// `entries`, `suppressed`; both among the qualifying index entries.
fn inclusion_batch(
    rules: &[RuleCount],
    combinations: &[RuleCount],
    policy: &OutputPolicy,
) -> RecordBatch {
    let all: Vec<&RuleCount> = rules.iter().chain(combinations).collect();
    let (persons, entries, suppressed) = counts(
        &all.iter()
            .map(|r| (r.persons, r.entries))
            .collect::<Vec<_>>(),
        policy,
    );
    let schema = Schema::new(vec![
        Field::new("kind", DataType::Utf8, false),
        Field::new("step", DataType::Int64, true),
        Field::new("rule", DataType::Utf8, false),
        Field::new("persons", DataType::Int64, true),
        Field::new("entries", DataType::Int64, true),
        Field::new("suppressed", DataType::Boolean, false),
    ]);
    RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(StringArray::from_iter_values((0..all.len()).map(|i| {
                if i < rules.len() {
                    "rule"
                } else {
                    "combination"
                }
            }))),
            Arc::new(Int64Array::from_iter(
                (0..all.len()).map(|i| (i < rules.len()).then_some(i as i64 + 1)),
            )),
            Arc::new(StringArray::from_iter_values(
                all.iter().map(|r| r.rule.as_str()),
            )),
            Arc::new(Int64Array::from(persons)),
            Arc::new(Int64Array::from(entries)),
            Arc::new(BooleanArray::from(suppressed)),
        ],
    )
    .expect("columns of equal length")
}

fn write_parquet(path: &Path, batch: &RecordBatch) -> Result<(), String> {
    let fail = |e: &dyn std::fmt::Display| format!("cannot write {}: {e}", path.display());
    let file = BufWriter::new(std::fs::File::create(path).map_err(|e| fail(&e))?);
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(3).expect("valid level"),
        ))
        .set_created_by("cohortql".to_string())
        .build();
    let mut w = ArrowWriter::try_new(file, batch.schema(), Some(props)).map_err(|e| fail(&e))?;
    w.write(batch).map_err(|e| fail(&e))?;
    w.close().map_err(|e| fail(&e))?;
    Ok(())
}

fn write_csv(path: &Path, batch: &RecordBatch) -> Result<(), String> {
    let fail = |e: &dyn std::fmt::Display| format!("cannot write {}: {e}", path.display());
    let file = BufWriter::new(std::fs::File::create(path).map_err(|e| fail(&e))?);
    let mut w = datafusion::arrow::csv::WriterBuilder::new()
        .with_header(true)
        .build(file);
    w.write(batch).map_err(|e| fail(&e))?;
    w.into_inner().flush().map_err(|e| fail(&e))?;
    Ok(())
}

fn write_table(dir: &Path, name: &str, batch: &RecordBatch) -> Result<(), String> {
    write_parquet(&dir.join(format!("{name}.parquet")), batch)?;
    write_csv(&dir.join(format!("{name}.csv")), batch)
}

/// The `run.json` record.
fn run_record(info: &RunInfo, run: &Execution, written: &Written) -> serde_json::Value {
    let policy = &info.study.output;
    let attrition: Vec<serde_json::Value> = run
        .attrition
        .iter()
        .enumerate()
        .map(|(i, a)| {
            json!({
                "step": i,
                "rule": a.rule,
                "persons": publishable(a.persons, policy),
                "entries": publishable(a.entries, policy),
            })
        })
        .collect();
    let mut timings: serde_json::Map<String, serde_json::Value> = run
        .timings
        .iter()
        .map(|(name, d)| (format!("{name}_ms"), json!(d.as_secs_f64() * 1e3)))
        .collect();
    timings.insert(
        "check_ms".into(),
        json!(info.check_time.as_secs_f64() * 1e3),
    );
    json!({
        "study": {
            "file": shareable_path(info.study_path),
            "title": info.study.title,
            "version": info.study.version,
        },
        "study_hash": info.study_hash,
        "repository": info.repository,
        "data_fingerprint": info.data_fingerprint,
        "data_warnings": info.data_warnings,
        "tool_version": env!("CARGO_PKG_VERSION"),
        "persons": publishable(run.persons(), policy),
        "attrition": attrition,
        // The cohort's and the dataset's rows are entries, counts of persons' data like any
        // other: withheld as the policy says (the files themselves stay at the site).
        "rows": {
            "cohort": publishable(written.cohort as u64, policy),
            "dataset": publishable(written.dataset as u64, policy),
            "attrition": written.attrition,
            "attrition_by_arm": written.attrition_by_arm,
            "inclusion_rules": written.inclusion_rules,
        },
        "output_policy": {
            "min_cell_count": policy.min_cell_count,
            "pseudonymise_ids": policy.pseudonymise_ids,
        },
        "cohort_definition_id": policy.cohort_id,
        "cohort_id_from": if info.cohort_id_from_command_line { "--cohort-id" } else { "study" },
        "timings": timings,
        "files": OUTPUT_FILES,
    })
}

/// The files a run writes into its output directory, `run.json` last: `run.json` lists them, and
/// only a directory holding nothing else is ever replaced.
pub const OUTPUT_FILES: [&str; 12] = [
    "cohort.parquet",
    "cohort.csv",
    "dataset.parquet",
    "dataset.csv",
    "attrition.parquet",
    "attrition.csv",
    "attrition_by_arm.parquet",
    "attrition_by_arm.csv",
    "inclusion_rules.parquet",
    "inclusion_rules.csv",
    "study.study",
    "run.json",
];

/// An output directory claimed for one run: checked to be empty, absent or a previous run's
/// outputs, and locked against other runs into the same place until the outputs are written.
pub struct OutputDir {
    out: PathBuf,
    lock_path: PathBuf,
    /// Held for the claim's lifetime; the operating system releases it if the process dies.
    _lock: std::fs::File,
    /// Directories of interrupted runs into the same place, removed when it was claimed.
    pub removed_leftovers: Vec<PathBuf>,
}

impl OutputDir {
    /// Claims `out`: refuses a symbolic link, a file, or a directory holding anything but a
    /// previous run's outputs; locks it; removes what interrupted runs into it left behind.
    pub fn claim(out: &Path) -> Result<OutputDir, String> {
        let name = match out.file_name() {
            Some(n)
                if out
                    .components()
                    .next_back()
                    .is_some_and(|c| matches!(c, std::path::Component::Normal(_))) =>
            {
                n.to_string_lossy().into_owned()
            }
            _ => {
                return Err(format!(
                "{} does not name a directory of its own: give --out a name such as output/study",
                out.display()
            ))
            }
        };
        let parent = out
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        let lock_path = parent.join(format!(".{name}.lock"));
        let lock = lock_file(&lock_path, out)?;
        let mut claimed = OutputDir {
            out: out.to_path_buf(),
            lock_path,
            _lock: lock,
            removed_leftovers: Vec::new(),
        };
        check_replaceable(out)?;
        // Under the lock no other run is writing here: any partial or set-aside directory of
        // this output is left by a run that was killed, and may hold person-level rows.
        let prefixes = [format!(".{name}.partial-"), format!(".{name}.previous-")];
        if let Ok(entries) = std::fs::read_dir(parent) {
            for entry in entries.flatten() {
                let file_name = entry.file_name().to_string_lossy().into_owned();
                if prefixes.iter().any(|p| file_name.starts_with(p.as_str())) {
                    let path = entry.path();
                    std::fs::remove_dir_all(&path)
                        .map_err(|e| format!("cannot remove {}: {e}", path.display()))?;
                    claimed.removed_leftovers.push(path);
                }
            }
        }
        claimed.removed_leftovers.sort();
        Ok(claimed)
    }

    /// Writes every output of a run, replacing a previous run's outputs.
    pub fn write(self, info: &RunInfo, run: &Execution) -> Result<Written, String> {
        let out = &self.out;
        // Checked again: the directory may have changed while the study ran.
        check_replaceable(out)?;
        let tmp = hidden_sibling(out, "partial");
        std::fs::create_dir_all(&tmp)
            .map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
        let written = match write_files(&tmp, info, run) {
            Ok(w) => w,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(e);
            }
        };
        let old = hidden_sibling(out, "previous");
        if std::fs::symlink_metadata(out).is_ok() {
            if let Err(e) = std::fs::rename(out, &old) {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(format!("cannot replace {}: {e}", out.display()));
            }
        }
        if let Err(e) = std::fs::rename(&tmp, out) {
            let _ = std::fs::rename(&old, out);
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(format!("cannot move the outputs to {}: {e}", out.display()));
        }
        let _ = std::fs::remove_dir_all(&old);
        Ok(written)
    }
}

impl Drop for OutputDir {
    fn drop(&mut self) {
        // Removed while still held, so that no run is left waiting on a file nobody can see.
        let _ = std::fs::remove_file(&self.lock_path);
    }
}

/// Creates and locks `.name.lock` beside the output directory. A lock file removed by the run
/// that held it (between our opening and locking it) is not the lock any more: then try again.
fn lock_file(path: &Path, out: &Path) -> Result<std::fs::File, String> {
    for _ in 0..100 {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(format!(
                "another cohortql run is writing to {} now: wait for it, or choose another --out",
                out.display()
            ))
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(format!("cannot lock {}: {e}", path.display()))
            }
        }
        if same_file(&file, path) {
            return Ok(file);
        }
    }
    Err(format!(
        "cannot lock {}: it keeps being replaced",
        path.display()
    ))
}

#[cfg(unix)]
fn same_file(file: &std::fs::File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_: &std::fs::File, path: &Path) -> bool {
    path.exists()
}

/// Whether `out` may be written: absent, an empty directory, or a directory holding only the
/// files its `run.json` lists (a previous run's outputs). Never a symbolic link.
fn check_replaceable(out: &Path) -> Result<(), String> {
    let refuse = |why: String| {
        Err(format!(
            "{} {why}: choose another --out, or move it away",
            out.display()
        ))
    };
    let meta = match std::fs::symlink_metadata(out) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("cannot read {}: {e}", out.display())),
    };
    if meta.is_symlink() {
        return refuse("is a symbolic link; outputs are written only into a real directory".into());
    }
    if !meta.is_dir() {
        return refuse("exists and is not a directory".into());
    }
    let entries: Vec<std::fs::DirEntry> = std::fs::read_dir(out)
        .map_err(|e| format!("cannot read {}: {e}", out.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cannot read {}: {e}", out.display()))?;
    if entries.is_empty() {
        return Ok(());
    }
    let manifest: Option<Vec<String>> = std::fs::read_to_string(out.join("run.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .filter(|v| v.get("study_hash").is_some_and(|h| h.is_string()))
        .map(|v| match v.get("files").and_then(|f| f.as_array()) {
            Some(files) => files
                .iter()
                .filter_map(|f| f.as_str().map(str::to_string))
                .collect(),
            // Written before run.json listed its files: these are the files it wrote.
            None => OUTPUT_FILES.iter().map(|f| f.to_string()).collect(),
        });
    let Some(manifest) = manifest else {
        return refuse(
            "exists and does not hold a previous run's outputs (no run.json of cohortql's)".into(),
        );
    };
    let mut foreign: Vec<String> = entries
        .iter()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            !manifest.contains(&name) || !e.file_type().is_ok_and(|t| t.is_file())
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if !foreign.is_empty() {
        foreign.sort();
        let shown: Vec<String> = foreign.iter().take(5).map(|f| format!("`{f}`")).collect();
        return refuse(format!(
            "holds {} that no run wrote ({}{})",
            if foreign.len() == 1 {
                "a file"
            } else {
                "files"
            },
            shown.join(", "),
            if foreign.len() > 5 { ", …" } else { "" }
        ));
    }
    Ok(())
}

fn write_files(dir: &Path, info: &RunInfo, run: &Execution) -> Result<Written, String> {
    let cohort = concat_batches(&run.cohort_schema, &run.cohort).map_err(|e| e.to_string())?;
    write_table(dir, "cohort", &cohort)?;
    let dataset = published_dataset(
        &run.dataset_schema,
        &run.dataset,
        &info.study.output,
        info.study_hash,
    )?;
    write_table(dir, "dataset", &dataset)?;
    let attrition = attrition_batch(&run.attrition, &info.study.output);
    write_table(dir, "attrition", &attrition)?;
    let by_arm = arm_attrition_batch(&run.attrition_by_arm, &info.study.output);
    write_table(dir, "attrition_by_arm", &by_arm)?;
    let inclusion = inclusion_batch(
        &run.inclusion_rules,
        &run.rule_combinations,
        &info.study.output,
    );
    write_table(dir, "inclusion_rules", &inclusion)?;
    std::fs::write(dir.join("study.study"), info.study_text)
        .map_err(|e| format!("cannot write the study copy: {e}"))?;
    let written = Written {
        cohort: cohort.num_rows(),
        dataset: dataset.num_rows(),
        attrition: attrition.num_rows(),
        attrition_by_arm: by_arm.num_rows(),
        inclusion_rules: inclusion.num_rows(),
    };
    let record = serde_json::to_string_pretty(&run_record(info, run, &written))
        .expect("a JSON value serialises");
    std::fs::write(dir.join("run.json"), record + "\n")
        .map_err(|e| format!("cannot write run.json: {e}"))?;
    Ok(written)
}
