//! `cohortql import atlas`: an ATLAS / Circe cohort definition as a study file.

use super::Status;
use anstream::eprintln;
use std::path::Path;

pub(super) fn atlas(
    file: &Path,
    name: Option<&str>,
    out: Option<&Path>,
    lenient: bool,
) -> Result<Status, String> {
    let json = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let name = match name {
        Some(n) => n.to_string(),
        None => definition_name(&json).unwrap_or_else(|| {
            file.file_stem().map_or("Imported cohort".into(), |s| {
                s.to_string_lossy().into_owned()
            })
        }),
    };
    let shown = crate::printable::escaped(&file.display().to_string()).into_owned();
    let imported = match crate::atlas::import(&json, &name, lenient) {
        Ok(i) => i,
        Err(refusals) if refusals.iter().any(|r| r.construct == "not JSON") => {
            return Err(format!("{shown}: {}", refusals[0]));
        }
        Err(refusals) => {
            for r in &refusals {
                eprintln!("{shown}: {}", crate::printable::escaped(&r.to_string()));
            }
            eprintln!(
                "{shown}: not imported: {} construct{} the language cannot say exactly (--lenient leaves them out, with a warning)",
                refusals.len(),
                if refusals.len() == 1 { "" } else { "s" }
            );
            return Ok(Status::StudyErrors);
        }
    };
    for r in &imported.dropped {
        eprintln!(
            "{shown}: warning: left out {}",
            crate::printable::escaped(&r.to_string())
        );
    }
    match out {
        Some(path) => crate::repo::write::write_atomically(path, imported.text.as_bytes())?,
        None => print!("{}", imported.text),
    }
    Ok(Status::Ok)
}

/// The `name` of an ATLAS export, when the file is one.
fn definition_name(json: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    v.get("name")?.as_str().map(str::to_string)
}
