//! Commands that run or compile a study: `run`, `plan`, `sql`.

use super::data::{demo_repository, runtime};
use super::{checked, Status};
use crate::repo::{empty_session, Repository};
use crate::run::output::{attrition_table, shown};
use crate::run::workspace::Workspace;
use crate::run::{execute_analysed, explain_plan, sql_script, stage_plans, Dialect};
use anstream::{eprintln, println};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The repository in `dir`, or the built-in demo repository.
pub(super) fn open(dir: Option<&Path>) -> Result<Repository, String> {
    let dir = match dir {
        Some(d) => d.to_path_buf(),
        None => demo_repository()?,
    };
    Repository::open(&dir).map_err(|problems| {
        problems
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    })
}

/// A study's name for its output directory: the file name without extension and without
/// leading dots, so that no study name (`...study`, `.study`) leads out of the output directory
/// or hides its outputs.
fn stem(study: &Path) -> String {
    let stem = study
        .file_stem()
        .map(|s| s.to_string_lossy().trim_start_matches('.').to_string())
        .unwrap_or_default();
    if stem.is_empty() {
        "study".to_string()
    } else {
        stem
    }
}

fn warning(text: &str) -> String {
    let style = anstyle::AnsiColor::Yellow.on_default().bold();
    format!("{style}warning{style:#}: {text}")
}

/// Where a study's outputs go by default: `output/<study name>`.
fn default_out(study: &Path) -> PathBuf {
    PathBuf::from("output").join(stem(study))
}

/// Runs several studies one after another, each into `<out>/<study name>`.
pub(super) fn run_all(
    studies: &[PathBuf],
    repo: Option<&Path>,
    out: Option<&Path>,
    cohort_id: Option<i64>,
) -> Result<Status, String> {
    if let [study] = studies {
        return run(study, repo, out, cohort_id);
    }
    if cohort_id.is_some() {
        return Err(
            "--cohort-id names the cohort of one study: run the studies one at a time, or set `cohort id` in each study's output section"
                .to_string(),
        );
    }
    let mut names = std::collections::BTreeMap::new();
    for s in studies {
        if let Some(other) = names.insert(stem(s), s) {
            return Err(format!(
                "{} and {} would write to the same output directory: run them separately",
                other.display(),
                s.display()
            ));
        }
    }
    let parent = out.unwrap_or(Path::new("output"));
    let mut status = Status::Ok;
    for s in studies {
        if let Status::StudyErrors = run(s, repo, Some(&parent.join(stem(s))), None)? {
            status = Status::StudyErrors;
        }
        println!();
    }
    Ok(status)
}

pub(super) fn run(
    study_path: &Path,
    repo: Option<&Path>,
    out: Option<&Path>,
    cohort_id: Option<i64>,
) -> Result<Status, String> {
    let started = Instant::now();
    let checked = checked(study_path)?;
    let check_time = started.elapsed();
    let Ok((compiled, study)) = checked else {
        return Ok(Status::StudyErrors);
    };
    let repo = open(repo)?;
    let out = out.map_or_else(|| default_out(study_path), Path::to_path_buf);
    let started = Instant::now();
    let spinner = ProgressBar::new_spinner();
    spinner.set_style(
        ProgressStyle::with_template("{spinner} {msg} ({elapsed})").expect("a valid template"),
    );
    spinner.enable_steady_tick(std::time::Duration::from_millis(120));
    let result = runtime()?.block_on(async {
        let workspace = Workspace::open(repo).await?;
        let progress = |stage: &str| spinner.set_message(stage.to_string());
        let note = |text: &str| {
            spinner.suspend(|| eprintln!("{}", warning(&crate::printable::escaped(text))))
        };
        workspace
            .run_to(
                &study,
                study_path,
                &compiled.text,
                check_time,
                cohort_id,
                &out,
                &progress,
                &note,
            )
            .await
    });
    spinner.finish_and_clear();
    let (execution, written) = result?;
    let policy = &study.output;
    let t = attrition_table(&execution.attrition, policy);
    println!("{}", crate::printable::escaped(&study.title));
    println!("{t}");
    println!(
        "{} persons, {} cohort entries, {} dataset rows in {:.1} s",
        shown(execution.persons(), policy),
        shown(written.cohort as u64, policy),
        shown(written.dataset as u64, policy),
        started.elapsed().as_secs_f64()
    );
    println!(
        "Outputs: {} (cohort, dataset, attrition, attrition by arm and inclusion rules as Parquet and CSV; run.json)",
        out.display()
    );
    Ok(Status::Ok)
}

pub(super) fn plan(
    study_path: &Path,
    repo: Option<&Path>,
    analyze: bool,
) -> Result<Status, String> {
    let Ok((_, study)) = checked(study_path)? else {
        return Ok(Status::StudyErrors);
    };
    if analyze {
        let repo = open(repo)?;
        let stages = runtime()?.block_on(async {
            let ctx = repo.session().await.map_err(|e| e.to_string())?;
            execute_analysed(&study, &ctx, &|_| {}).await
        })?;
        for (name, text) in stages.1 {
            print!("== {name} ==\n{text}\n");
        }
        return Ok(Status::Ok);
    }
    let repo = match repo {
        Some(d) => Some(open(Some(d))?),
        None => None,
    };
    let text = runtime()?.block_on(async {
        let ctx = match &repo {
            Some(r) => r.session().await,
            None => empty_session(),
        }
        .map_err(|e| e.to_string())?;
        let mut text = String::new();
        for (name, plan) in stage_plans(&study, &ctx).await? {
            let (logical, optimised, physical) = explain_plan(&ctx, &plan).await?;
            text.push_str(&format!(
                "== {name} ==\n-- logical plan\n{logical}\n-- optimised logical plan\n{optimised}\n-- physical plan\n{physical}\n"
            ));
        }
        Ok::<_, String>(text)
    })?;
    print!("{text}");
    Ok(Status::Ok)
}

pub(super) fn sql(study_path: &Path, dialect: Dialect) -> Result<Status, String> {
    let Ok((_, study)) = checked(study_path)? else {
        return Ok(Status::StudyErrors);
    };
    let script = runtime()?.block_on(async {
        let ctx = empty_session().map_err(|e| e.to_string())?;
        sql_script(&study, &ctx, dialect).await
    })?;
    print!("{script}");
    if script.is_empty() {
        eprintln!("no SQL was produced");
    }
    Ok(Status::Ok)
}
