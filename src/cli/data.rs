//! Commands that read or write repositories: `synth`, `repo check`, `repo demo`.

use super::{FormatArg, Status};
use crate::demo;
use crate::repo::quality::{check_repository, Report};
use crate::repo::write::OutputFormat;
use crate::repo::Repository;
use crate::run::database::{check_database, is_database, Database};
use crate::synth::{generate, SynthOptions};
use anstream::{eprintln, println};
use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, CellAlignment, Table};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};

pub(super) fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // Deep plans recurse deeply while they execute, as in planning (see main.rs).
        .thread_stack_size(64 << 20)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the query runtime: {e}"))
}

/// A progress bar on standard error, drawn only on a terminal.
fn progress_bar(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {pos}/{len} persons ({per_sec}, {eta} left)",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

pub(super) fn synth(
    persons: u64,
    seed: u64,
    out: &Path,
    format: FormatArg,
    full_vocabulary: u64,
) -> Result<Status, String> {
    if persons == 0 {
        return Err("--persons must be at least 1".to_string());
    }
    let own = crate::synth::vocabulary::CONCEPTS.len() as u64;
    if full_vocabulary > 0 && full_vocabulary <= own {
        return Err(format!(
            "--full-vocabulary must be more than the generator's own {own} concepts"
        ));
    }
    if full_vocabulary > 1_000_000_000 {
        return Err("--full-vocabulary can be at most 1,000,000,000 concepts".to_string());
    }
    let format = match format {
        FormatArg::Parquet => OutputFormat::Parquet,
        FormatArg::Csv => OutputFormat::Csv,
    };
    let bar = progress_bar(persons, "generating");
    let started = std::time::Instant::now();
    let summary = generate(
        &SynthOptions {
            persons,
            seed,
            format,
            full_vocabulary,
        },
        out,
        &|done| bar.set_position(done),
    )
    .map_err(|e| e.to_string())?;
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let rows: u64 = summary.rows.iter().map(|(_, r)| r).sum();
    println!(
        "{}: {persons} persons, {rows} rows in {} tables, in {seconds:.1} s ({:.0} persons/s)",
        out.display(),
        summary.rows.len(),
        persons as f64 / seconds.max(1e-9)
    );
    Ok(Status::Ok)
}

pub(super) fn demo_repository() -> Result<PathBuf, String> {
    let dir = demo::demo_dir();
    if dir.join("person.parquet").is_file() {
        return Ok(dir);
    }
    eprintln!(
        "Generating the built-in demo repository ({} synthetic persons) into {} …",
        demo::DEMO_PERSONS,
        dir.display()
    );
    let bar = progress_bar(demo::DEMO_PERSONS, "demo");
    let result = demo::ensure_demo(&|done| bar.set_position(done));
    bar.finish_and_clear();
    result
}

pub(super) fn demo() -> Result<Status, String> {
    println!("{}", demo_repository()?.display());
    Ok(Status::Ok)
}

pub(super) fn repo_check(dir: Option<&Path>, json: bool) -> Result<Status, String> {
    let database = dir.and_then(Path::to_str).filter(|d| is_database(d));
    let report = if let Some(url) = database {
        let db = Database::parse(url)?;
        runtime()?.block_on(check_database(&db))
    } else {
        check_directory(dir)?
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?
        );
    } else {
        print_report(&report);
    }
    Ok(if report.errors.is_empty() {
        Status::Ok
    } else {
        Status::DataErrors
    })
}

fn check_directory(dir: Option<&Path>) -> Result<Report, String> {
    let dir = match dir {
        Some(d) => d.to_path_buf(),
        None => demo_repository()?,
    };
    Ok(match Repository::open(&dir) {
        Ok(repo) => runtime()?.block_on(check_repository(&repo)),
        Err(problems) => Report {
            repository: dir.display().to_string(),
            cdm_version: None,
            persons: 0,
            tables: Vec::new(),
            errors: problems.iter().map(|p| p.to_string()).collect(),
            checks: Vec::new(),
        },
    })
}

fn print_report(report: &Report) {
    let version = report
        .cdm_version
        .as_deref()
        .map_or(String::new(), |v| format!(", CDM {v}"));
    println!(
        "Repository {}{version}: {} persons",
        report.repository, report.persons
    );
    if !report.tables.is_empty() {
        let mut t = Table::new();
        t.load_preset(UTF8_FULL_CONDENSED)
            .set_header(["table", "rows", "persons", "file"]);
        for r in &report.tables {
            let file = match &r.file {
                Some(f) => Path::new(f)
                    .file_name()
                    .map_or(f.clone(), |n| n.to_string_lossy().into_owned()),
                None => "(absent: read as empty)".to_string(),
            };
            t.add_row(vec![
                Cell::new(&r.table),
                Cell::new(r.rows).set_alignment(CellAlignment::Right),
                Cell::new(r.persons.map_or(String::new(), |p| p.to_string()))
                    .set_alignment(CellAlignment::Right),
                Cell::new(file),
            ]);
        }
        println!(
            "{}",
            crate::printable::escaped_keeping_lines(&t.to_string())
        );
    }
    for e in &report.errors {
        println!("error: {}", crate::printable::escaped(&e.to_string()));
    }
    if !report.checks.is_empty() {
        let mut t = Table::new();
        t.load_preset(UTF8_FULL_CONDENSED).set_header([
            "check",
            "table",
            "failing rows",
            "%",
            "what fails",
        ]);
        let mut failing = 0;
        for c in &report.checks {
            if c.failing == 0 {
                continue;
            }
            failing += 1;
            t.add_row(vec![
                Cell::new(&c.check),
                Cell::new(&c.table),
                Cell::new(c.failing).set_alignment(CellAlignment::Right),
                Cell::new(format!("{:.2}", c.percent)).set_alignment(CellAlignment::Right),
                Cell::new(&c.description),
            ]);
        }
        if failing == 0 {
            println!("Data quality: all {} checks pass.", report.checks.len());
        } else {
            println!(
                "Data quality: {failing} of {} checks find problems (warnings):",
                report.checks.len()
            );
            println!(
                "{}",
                crate::printable::escaped_keeping_lines(&t.to_string())
            );
        }
    }
}
