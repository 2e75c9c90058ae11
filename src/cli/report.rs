//! `cohortql report`: the review report of a study as one HTML file and its content as JSON,
//! from the study file alone (the protocol) or with a run's release (the results).

use super::data::runtime;
use super::{checked, site, Status};
use crate::release::check_release;
use crate::repo::Repository;
use crate::report::{build, html, released, vocabulary, Source};
use crate::run::database::{is_database, Database};
use anstream::{eprintln, println};
use std::path::{Path, PathBuf};

/// The file the report's content is written to as JSON: beside the HTML, named like it.
fn json_path(out: &Path) -> PathBuf {
    out.with_extension("json")
}

/// Writes `files` (path, content) so that either all appear or none: each is written to a
/// temporary file beside it first, then all are renamed.
fn write_all(files: &[(PathBuf, String)]) -> Result<(), String> {
    let mut written: Vec<(PathBuf, PathBuf)> = Vec::new();
    let result = (|| {
        for (path, content) in files {
            let name = path
                .file_name()
                .ok_or_else(|| format!("{} is not a file name", path.display()))?;
            let temp = path.with_file_name(format!(
                ".{}.{}.tmp",
                name.to_string_lossy(),
                std::process::id()
            ));
            std::fs::write(&temp, content)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            written.push((temp, path.clone()));
        }
        for (temp, path) in &written {
            std::fs::rename(temp, path)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
        Ok(())
    })();
    if result.is_err() {
        for (temp, _) in &written {
            let _ = std::fs::remove_file(temp);
        }
    }
    result
}

pub(super) fn report(
    study_path: Option<&Path>,
    repo: Option<&Path>,
    run: Option<&Path>,
    out: &Path,
    site_flag: Option<&Path>,
) -> Result<Status, String> {
    if out.extension().is_some_and(|e| e == "json") {
        return Err(format!(
            "--out {} ends in .json, the name of the report's JSON beside it: name the HTML file (report.html)",
            out.display()
        ));
    }
    if out.is_dir() {
        return Err(format!(
            "--out {} is a directory: name the HTML file to write (report.html)",
            out.display()
        ));
    }
    let (_, rules) = site::rules(site_flag, false)?;
    let release = run.map(crate::results::report::release_of);
    let run_json: Option<serde_json::Value> = match &release {
        None => None,
        Some(dir) => {
            let path = dir.join("run.json");
            let text = std::fs::read_to_string(&path).map_err(|e| {
                format!(
                    "cannot read {}: {e}; --run takes a run's output directory or its release/",
                    path.display()
                )
            })?;
            Some(
                serde_json::from_str(&text)
                    .map_err(|e| format!("{} is not JSON: {e}", path.display()))?,
            )
        }
    };
    // The study: the file given, or the one the run released.
    let path = match (study_path, &release) {
        (Some(p), _) => p.to_path_buf(),
        (None, Some(dir)) => dir.join("study.study"),
        (None, None) => {
            return Err(
                "give a study file (cohortql report STUDY.study --out report.html), or a run with --run DIR"
                    .into(),
            )
        }
    };
    let (compiled, study) = match checked(&path)? {
        Ok(pair) => pair,
        Err(()) => return Ok(Status::StudyErrors),
    };
    let hash = crate::hash::study_hash(&study);
    let file = match (&run_json, study_path) {
        (Some(run), None) => run["study"]["file"]
            .as_str()
            .unwrap_or("study.study")
            .to_string(),
        _ => path.display().to_string(),
    };
    let results = match (&release, &run_json) {
        (Some(dir), Some(run)) => {
            if run["study_hash"].as_str() != Some(hash.as_str()) {
                return Err(format!(
                    "{} is not the study that was run: its hash is {hash}, the run's is {}",
                    path.display(),
                    run["study_hash"].as_str().unwrap_or("missing")
                ));
            }
            // The report shows only what may leave the site: a release that fails the
            // output check gives no report.
            let check = check_release(dir, &rules)?;
            if !check.violations.is_empty() {
                for v in &check.violations {
                    eprintln!("{v}");
                }
                eprintln!(
                    "{}: {} violations of the {} policy: the report shows only what may leave the site, so it is not written (see `cohortql release check`)",
                    dir.display(),
                    check.violations.len(),
                    check.policy.preset
                );
                return Ok(Status::StudyErrors);
            }
            Some(released::read(dir)?)
        }
        _ => None,
    };
    let lookups = match repo {
        None => None,
        Some(url) if url.to_str().is_some_and(is_database) => {
            let db = Database::parse(url.to_str().unwrap_or_default())?;
            Some(runtime()?.block_on(async {
                let connected = db.open().await?;
                vocabulary::look_up(&study, &connected, &db.name()).await
            })?)
        }
        Some(dir) => {
            let repository = Repository::open(dir).map_err(|problems| {
                problems
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join("\n")
            })?;
            let name = dir
                .canonicalize()
                .ok()
                .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_else(|| dir.display().to_string());
            Some(runtime()?.block_on(async {
                let ctx = repository.session().await.map_err(|e| e.to_string())?;
                vocabulary::look_up(&study, &ctx, &name).await
            })?)
        }
    };
    let date = chrono::Utc::now().date_naive().to_string();
    let source = Source {
        study: &study,
        text: &compiled.text,
        file: &file,
        hash: &hash,
    };
    let report = build(&source, &rules, lookups.as_ref(), results, &date);
    let page = html::render(&report, &study)?;
    let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())? + "\n";
    write_all(&[(json_path(out), json), (out.to_path_buf(), page)])?;
    println!(
        "wrote {} and {}: the {} of {}",
        out.display(),
        json_path(out).display(),
        report.mode,
        crate::printable::escaped(&study.title)
    );
    Ok(Status::Ok)
}
