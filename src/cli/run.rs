//! Commands that run or compile a study: `run`, `plan`, `sql`.

use super::data::{demo_repository, runtime};
use super::{checked, Status};
use crate::disclosure::{Export, Policy};
use crate::repo::{empty_session, Repository};
use crate::run::cluster::Cluster;
use crate::run::database::{is_database, CohortTable, Database};
use crate::run::output::{attrition_table, shown_released};
use crate::run::workspace::{run_in_database, Disclosure, Workspace};
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

/// How `run` applies the site's rules.
pub(super) struct Options<'a> {
    /// `--site`.
    pub site: Option<&'a Path>,
    /// `--policy`: a preset at least as strict as the site's.
    pub policy: Option<&'a str>,
    pub export_dataset: bool,
    /// `--write-cohort SCHEMA.TABLE`.
    pub write_cohort: Option<&'a str>,
    /// `--repo-schema`, `--vocab-schema`.
    pub repo_schema: Option<&'a str>,
    pub vocab_schema: Option<&'a str>,
    /// `--engine ballista://HOST:PORT`.
    pub engine: Option<&'a str>,
    /// `--stage-dir`.
    pub stage_dir: Option<&'a Path>,
}

/// Where `run` reads the data: a repository directory (its stages run here or on a cluster),
/// or a PostgreSQL database.
enum Source {
    Files(Repository, Option<Cluster>),
    Database(Database),
}

/// Runs several studies one after another, each into `<out>/<study name>`.
pub(super) fn run_all(
    studies: &[PathBuf],
    repo: Option<&Path>,
    out: Option<&Path>,
    cohort_id: Option<i64>,
    options: &Options,
) -> Result<Status, String> {
    if let [study] = studies {
        return run(study, repo, out, cohort_id, options);
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
        if let Status::StudyErrors = run(s, repo, Some(&parent.join(stem(s))), None, options)? {
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
    options: &Options,
) -> Result<Status, String> {
    let started = Instant::now();
    let checked = checked(study_path)?;
    let check_time = started.elapsed();
    let Ok((compiled, study)) = checked else {
        return Ok(Status::StudyErrors);
    };
    let (site, mut rules) = super::site::rules(options.site, true)?;
    let site = site.expect("made when missing");
    if let Some(name) = options.policy {
        let asked = Policy::preset(name).expect("clap accepts only presets");
        if !asked.at_least_as_strict_as(&rules.policy) {
            return Err(format!(
                "--policy {name} is looser than {} ({}): a run may only tighten it",
                rules.source,
                rules.policy.describe()
            ));
        }
        rules.source = format!("--policy {name} (the site's is {})", rules.policy.preset);
        rules.policy = asked;
    }
    let policy = match rules.policy.for_study(&study.output) {
        Ok(p) => p,
        Err(looser) => {
            let mut d = crate::diag::Diagnostic::new(
                crate::diag::Code::LooserThanSite,
                format!(
                    "`{}` asks for less than {} allows",
                    looser.asked, rules.source
                ),
            )
            .help(format!(
                "the site's floor is its {}; a study may only tighten it: remove the line, or ask for at least that",
                looser.floor
            ));
            if let Some(span) = looser.span {
                d = d.at(span).label("looser than the site's policy");
            }
            anstream::eprint!(
                "{}",
                super::render_all(&[d], &super::display(study_path), &compiled.text)
            );
            return Ok(Status::StudyErrors);
        }
    };
    let export = if options.export_dataset {
        match (rules.dataset_export, study.output.exact_dates) {
            (Export::Never, _) => {
                return Err(format!(
                    "{} allows no person-level dataset to leave the site (dataset_export = \"never\"): run without --export-dataset, or ask the site to allow relative dates",
                    rules.source
                ))
            }
            (Export::RelativeDates, true) => {
                return Err(format!(
                    "the study asks for `exported dates exact`, and {} allows relative dates only (dataset_export = \"relative-dates\"): remove the line to export days relative to index",
                    rules.source
                ))
            }
            (Export::ExactDates, exact) => Some(exact),
            (Export::RelativeDates, false) => Some(false),
        }
    } else {
        None
    };
    let cluster = options.engine.map(Cluster::parse).transpose()?;
    if cluster.is_some() && !crate::run::cluster::AVAILABLE {
        return Err(crate::run::cluster::NOT_BUILT.to_string());
    }
    let source = match repo.and_then(Path::to_str).filter(|r| is_database(r)) {
        Some(url) => Source::Database(
            Database::parse(url)?.with_schemas(options.repo_schema, options.vocab_schema)?,
        ),
        None if options.repo_schema.is_some() || options.vocab_schema.is_some() => {
            return Err(
                "--repo-schema and --vocab-schema name schemas of a database: give --repo postgresql://…"
                    .to_string(),
            )
        }
        None => Source::Files(open(repo)?, cluster),
    };
    if let (Source::Database(_), Some(_)) = (&source, options.engine) {
        return Err(
            "--engine runs the stages of a directory repository on a cluster; a database runs its own: leave out --engine"
                .to_string(),
        );
    }
    let write_back = match (options.write_cohort, &source) {
        (None, _) => None,
        (Some(table), Source::Database(_)) => Some(CohortTable::parse(table)?),
        (Some(_), Source::Files(..)) => return Err(
            "--write-cohort writes into the database the study runs in: give --repo postgresql://…"
                .to_string(),
        ),
    };
    let out = out.map_or_else(|| default_out(study_path), Path::to_path_buf);
    let started = Instant::now();
    let spinner = ProgressBar::new_spinner();
    spinner.set_style(
        ProgressStyle::with_template("{spinner} {msg} ({elapsed})").expect("a valid template"),
    );
    spinner.enable_steady_tick(std::time::Duration::from_millis(120));
    let result = runtime()?.block_on(async {
        let progress = |stage: &str| spinner.set_message(stage.to_string());
        let note = |text: &str| {
            spinner.suspend(|| eprintln!("{}", warning(&crate::printable::escaped(text))))
        };
        let disclosure = Disclosure {
            policy: &policy,
            source: &rules.source,
            site: &site,
            export,
        };
        match source {
            Source::Database(db) => {
                run_in_database(
                    &db,
                    write_back.as_ref(),
                    &study,
                    study_path,
                    &compiled.text,
                    check_time,
                    cohort_id,
                    &disclosure,
                    &out,
                    &progress,
                    &note,
                )
                .await
            }
            Source::Files(repo, cluster) => {
                let workspace = match cluster {
                    None => Workspace::open(repo).await?,
                    Some(cluster) => {
                        Workspace::open_on_cluster(repo, cluster, options.stage_dir).await?
                    }
                };
                workspace
                    .run_to(
                        &study,
                        study_path,
                        &compiled.text,
                        check_time,
                        cohort_id,
                        &disclosure,
                        &out,
                        &progress,
                        &note,
                    )
                    .await
            }
        }
    });
    spinner.finish_and_clear();
    let (_, written) = result?;
    let t = attrition_table(&written.attrition());
    println!("{}", crate::printable::escaped(&study.title));
    println!("{t}");
    println!(
        "{} persons in {:.1} s; counts as released under the {} (— withheld: below {}, or revealing such a count)",
        shown_released(written.persons()),
        started.elapsed().as_secs_f64(),
        policy.describe(),
        policy.threshold
    );
    let table1 = crate::results::report::table1_text(&out)?;
    if !table1.is_empty() {
        println!("{table1}");
    }
    let endpoints = crate::results::report::endpoint_text(&out)?;
    if !endpoints.is_empty() {
        println!("{endpoints}");
    }
    println!(
        "Stays at the site: {} (cohort table, dataset, exact counts)",
        out.join("site").display()
    );
    println!(
        "May leave: {} (counts under disclosure control{}; check with `cohortql release check`)",
        out.join("release").display(),
        if written.exported {
            ", and the exported dataset"
        } else {
            ""
        }
    );
    Ok(Status::Ok)
}

pub(super) fn plan(
    study_path: &Path,
    repo: Option<&Path>,
    analyze: bool,
    engine: Option<&str>,
    stage_dir: Option<&Path>,
) -> Result<Status, String> {
    let Ok((_, study)) = checked(study_path)? else {
        return Ok(Status::StudyErrors);
    };
    if let Some(engine) = engine {
        let cluster = Cluster::parse(engine)?;
        if !crate::run::cluster::AVAILABLE {
            return Err(crate::run::cluster::NOT_BUILT.to_string());
        }
        if repo.and_then(Path::to_str).is_some_and(is_database) {
            return Err(
                "--engine runs the stages of a directory repository on a cluster; a database runs its own: leave out --engine"
                    .to_string(),
            );
        }
        let repo = open(repo)?;
        let stages = runtime()?.block_on(crate::run::cluster::explain_analysed(
            &cluster,
            &study,
            &repo,
            stage_dir.unwrap_or(Path::new(".")),
        ))?;
        for (name, text) in stages {
            print!("== {name} ==\n{text}\n");
        }
        return Ok(Status::Ok);
    }
    if let Some(url) = repo.and_then(Path::to_str).filter(|r| is_database(r)) {
        // The plans PostgreSQL makes of the stages' SQL: the plans that run.
        let db = Database::parse(url)?;
        let text = runtime()?.block_on(crate::run::database::explain_in(&db, &study, analyze))?;
        print!("{text}");
        return Ok(Status::Ok);
    }
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
        // With a repository, the plans a run on it makes.
        let facts = match &repo {
            Some(_) => crate::run::data_facts(&ctx).await?.0,
            None => Default::default(),
        };
        let mut text = String::new();
        for (name, plan) in stage_plans(&study, &ctx, facts).await? {
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
