//! `cohortql release check`: an output checker for a run's `release/` directory, in the spirit
//! of SACRO/ACRO. It re-reads what is there (not what the run meant to write), so it catches a
//! release someone edited by hand: a count the policy withholds, a derivable difference, a
//! person-level column, an exact date where none may leave, a file no release holds.

use crate::disclosure::control::{derivable, CountRow, Table, MEASURES};
use crate::disclosure::{Export, Policy, SiteRules};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;

/// One thing the policy does not allow, where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub file: String,
    /// The line in the file (the header is line 1).
    pub line: Option<usize>,
    pub column: Option<String>,
    pub message: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(column) = &self.column {
            write!(f, ": {column}")?;
        }
        write!(f, ": {}", crate::printable::escaped(&self.message))
    }
}

/// What a check found.
#[derive(Debug)]
pub struct Report {
    pub violations: Vec<Violation>,
    /// The policy the release was checked against.
    pub policy: Policy,
    /// Files and counts looked at.
    pub files: usize,
    pub counts: usize,
}

/// The count tables of a release: file, and columns before the counts.
const COUNT_FILES: [(&str, &[&str]); 5] = [
    ("attrition.csv", &["step", "rule"]),
    ("attrition_by_arm.csv", &["step", "rule", "arm"]),
    ("inclusion_rules.csv", &["kind", "step", "rule"]),
    ("endpoints.csv", &["endpoint", "kind", "group"]),
    ("table1.csv", &["covariate", "level", "kind", "group"]),
];

/// Keys `release/run.json` may hold: provenance, the policy, released counts, the manifest.
const RUN_KEYS: [&str; 13] = [
    "study",
    "study_hash",
    "repository",
    "data_fingerprint",
    "tool_version",
    "cohort_definition_id",
    "cohort_id_from",
    "place",
    "disclosure",
    "persons",
    "attrition",
    "files",
    "checksums",
];

/// Column names that identify persons or records in a repository.
const IDENTIFYING: [&str; 5] = [
    "person_id",
    "subject_id",
    "index_record_id",
    "visit_occurrence_id",
    "record_id",
];

fn at(file: &str, line: Option<usize>, column: Option<&str>, message: String) -> Violation {
    Violation {
        file: file.to_string(),
        line,
        column: column.map(str::to_string),
        message,
    }
}

/// Checks the release in `dir` against the site's rules (tightened to what its `run.json`
/// states, when that is stricter).
pub fn check_release(dir: &Path, site: &SiteRules) -> Result<Report, String> {
    let meta = std::fs::metadata(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    if !meta.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    let mut out = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for entry in
        std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?
    {
        let entry = entry.map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let file = std::fs::symlink_metadata(entry.path()).is_ok_and(|m| m.is_file());
        let allowed = COUNT_FILES.iter().any(|(f, _)| *f == name)
            || [
                "run.json",
                "study.study",
                "dataset.csv",
                "km.csv",
                "at_risk.csv",
                "cox.csv",
            ]
            .contains(&name.as_str());
        if !file {
            out.push(at(
                &name,
                None,
                None,
                "is not a regular file: a release holds files only".into(),
            ));
        } else if !allowed {
            out.push(at(
                &name,
                None,
                None,
                "is not a file a release may hold (attrition.csv, attrition_by_arm.csv, inclusion_rules.csv, endpoints.csv, km.csv, at_risk.csv, cox.csv, table1.csv, dataset.csv where the site allows an export, study.study, run.json)".into(),
            ));
        } else {
            names.push(name);
        }
    }
    names.sort();
    let run = read_run(dir, &mut out);
    let policy = policy_in_force(site, run.as_ref(), &mut out);
    if let Some(run) = &run {
        check_manifest(dir, run, &names, &mut out);
    }
    let mut rows: Vec<CountRow> = Vec::new();
    for (file, keys) in COUNT_FILES {
        if names.iter().any(|n| n == file) {
            rows.extend(read_counts(&dir.join(file), file, keys, &mut out)?);
        }
    }
    if let Some(run) = &run {
        compare_run_counts(
            run,
            &rows,
            names.iter().any(|n| n == "attrition.csv"),
            &mut out,
        );
    }
    for f in derivable(&rows, &policy) {
        let first = f.sources.iter().next().map(|&i| &rows[i]);
        out.push(at(
            first.map_or("run.json", |r| r.table.file()),
            first.map(|r| r.line),
            None,
            format!(
                "gives away a count of 1 to {}: {}",
                policy.threshold - 1,
                f.what
            ),
        ));
    }
    if names.iter().any(|n| n == "cox.csv") {
        check_cox(&dir.join("cox.csv"), &policy, &mut out)?;
    }
    if names.iter().any(|n| n == "at_risk.csv") {
        check_at_risk(&dir.join("at_risk.csv"), &policy, &mut out)?;
    }
    if names.iter().any(|n| n == "km.csv") {
        check_km(&dir.join("km.csv"), &policy, &mut out)?;
    }
    if names.iter().any(|n| n == "dataset.csv") {
        check_dataset(dir, site, run.as_ref(), &mut out)?;
    }
    let counts = rows.iter().map(|r| r.counts.iter().flatten().count()).sum();
    Ok(Report {
        violations: out,
        policy,
        files: names.len(),
        counts,
    })
}

fn read_run(dir: &Path, out: &mut Vec<Violation>) -> Option<serde_json::Value> {
    let text = match std::fs::read_to_string(dir.join("run.json")) {
        Ok(t) => t,
        Err(_) => {
            out.push(at(
                "run.json",
                None,
                None,
                "is missing: a release states its study, data and policy".into(),
            ));
            return None;
        }
    };
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(v) if v.is_object() => {
            for key in v.as_object().expect("an object").keys() {
                if !RUN_KEYS.contains(&key.as_str()) {
                    out.push(at(
                        "run.json",
                        None,
                        Some(key),
                        "is not something a release states (row counts, data warnings and timings stay in site/run.json)".into(),
                    ));
                }
            }
            Some(v)
        }
        _ => {
            out.push(at("run.json", None, None, "is not a JSON object".into()));
            None
        }
    }
}

/// The site's policy, or what `run.json` states when that is stricter (a study that tightened
/// it); a `run.json` stating a looser policy is itself a violation.
fn policy_in_force(
    site: &SiteRules,
    run: Option<&serde_json::Value>,
    out: &mut Vec<Violation>,
) -> Policy {
    let stated = run.and_then(|r| r.get("disclosure")).and_then(|d| {
        Some(Policy {
            preset: d.get("policy")?.as_str()?.to_string(),
            threshold: d.get("threshold")?.as_u64()?,
            rounding: d.get("rounding")?.as_u64().filter(|&r| r >= 1)?,
            tightened_by: Vec::new(),
        })
    });
    match stated {
        Some(s) if s.at_least_as_strict_as(&site.policy) => s,
        Some(s) => {
            out.push(at(
                "run.json",
                None,
                Some("disclosure"),
                format!(
                    "states a threshold of {} and rounding to {}, looser than {} ({})",
                    s.threshold,
                    s.rounding,
                    site.source,
                    site.policy.describe()
                ),
            ));
            site.policy.clone()
        }
        None => {
            if run.is_some() {
                out.push(at(
                    "run.json",
                    None,
                    Some("disclosure"),
                    "does not state the policy the release was made under".into(),
                ));
            }
            site.policy.clone()
        }
    }
}

fn check_manifest(dir: &Path, run: &serde_json::Value, names: &[String], out: &mut Vec<Violation>) {
    let listed: Vec<&str> = run
        .get("files")
        .and_then(|f| f.as_array())
        .map(|f| f.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    for name in names {
        if !listed.contains(&name.as_str()) {
            out.push(at(
                name,
                None,
                None,
                "is not among the files run.json lists: it was added after the run".into(),
            ));
        }
    }
    for name in &listed {
        if !names.iter().any(|n| n == name) && !name.contains('/') {
            out.push(at(
                name,
                None,
                None,
                "is listed in run.json but missing".into(),
            ));
        }
    }
    let checksums = run.get("checksums").and_then(|c| c.as_object());
    for name in names.iter().filter(|n| *n != "run.json") {
        let recorded = checksums.and_then(|c| c.get(name)).and_then(|v| v.as_str());
        let actual = std::fs::read(dir.join(name)).map(|b| {
            Sha256::digest(&b)
                .iter()
                .map(|x| format!("{x:02x}"))
                .collect::<String>()
        });
        match (recorded, actual) {
            (Some(r), Ok(a)) if r == a => {}
            (None, _) => out.push(at(name, None, None, "has no checksum in run.json".into())),
            _ => out.push(at(
                name,
                None,
                None,
                "was changed after the run: its sha256 is not the one run.json records".into(),
            )),
        }
    }
}

/// The rows of one count table, checked for shape: the expected columns and nothing else (a
/// person-level column is named as such), counts that are whole numbers or empty, and
/// `suppressed` set exactly where a count is empty.
fn read_counts(
    path: &Path,
    file: &str,
    keys: &[&str],
    out: &mut Vec<Violation>,
) -> Result<Vec<CountRow>, String> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_path(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let header: Vec<String> = match reader.headers() {
        Ok(h) => h.iter().map(str::to_string).collect(),
        Err(e) => {
            out.push(at(
                file,
                Some(1),
                None,
                format!("cannot be read as CSV: {e}"),
            ));
            return Ok(Vec::new());
        }
    };
    let endpoints = file == "endpoints.csv";
    let table1 = file == "table1.csv";
    let measures = if endpoints {
        Table::Endpoint.measures()
    } else if table1 {
        Table::Table1.measures()
    } else {
        MEASURES
    };
    let statistics: &[&str] = if endpoints {
        &crate::results::STATISTIC_COLUMNS
    } else if table1 {
        &crate::results::table1::STATISTIC_COLUMNS
    } else {
        &[]
    };
    let expected: Vec<&str> = keys
        .iter()
        .copied()
        .chain(measures)
        .chain(["suppressed"])
        .chain(statistics.iter().copied())
        .collect();
    for h in &header {
        if !expected.contains(&h.as_str()) {
            out.push(at(file, Some(1), Some(h), unexpected_column(h)));
        }
    }
    let index = |name: &str| header.iter().position(|h| h == name);
    let missing: Vec<&str> = expected
        .iter()
        .copied()
        .filter(|c| index(c).is_none())
        .collect();
    if !missing.is_empty() {
        out.push(at(
            file,
            Some(1),
            None,
            format!(
                "lacks the column(s) {}, so its counts cannot be checked",
                missing.join(", ")
            ),
        ));
        return Ok(Vec::new());
    }
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                out.push(at(file, None, None, format!("cannot be read as CSV: {e}")));
                break;
            }
        };
        let line = record.position().map_or(0, |p| p.line() as usize);
        let field = |name: &str| index(name).and_then(|i| record.get(i)).unwrap_or("");
        let mut counts = [None, None];
        for (m, measure) in measures.iter().enumerate() {
            let text = field(measure).trim();
            if text.is_empty() {
                continue;
            }
            match text.parse::<u64>() {
                Ok(v) => counts[m] = Some(v),
                Err(_) => out.push(at(
                    file,
                    Some(line),
                    Some(measure),
                    format!("`{text}` is not a count"),
                )),
            }
        }
        let suppressed = field("suppressed").trim();
        let withheld = counts.iter().any(Option::is_none);
        if (suppressed == "true") != withheld {
            out.push(at(
                file,
                Some(line),
                Some("suppressed"),
                format!(
                    "is `{suppressed}` where the row {} counts",
                    if withheld {
                        "withholds"
                    } else {
                        "shows all its"
                    }
                ),
            ));
        }
        let table = match (file, field("kind")) {
            ("attrition.csv", _) => Table::Attrition,
            ("attrition_by_arm.csv", _) => Table::ByArm,
            ("endpoints.csv", _) => Table::Endpoint,
            ("table1.csv", _) => Table::Table1,
            (_, "rule") => Table::Rule,
            _ => Table::Combination,
        };
        // A group whose events are withheld has every statistic of them withheld; a Table 1
        // row with a withheld count, every statistic.
        if (endpoints && counts[1].is_none()) || (table1 && counts.iter().any(Option::is_none)) {
            for column in statistics.iter().filter(|c| **c != "person_years") {
                if !field(column).trim().is_empty() {
                    out.push(at(
                        file,
                        Some(line),
                        Some(column),
                        "is a statistic of events that are withheld".into(),
                    ));
                }
            }
        }
        let (rule, arm) = if endpoints {
            (
                field("endpoint").to_string(),
                Some(field("group").to_string()),
            )
        } else if table1 {
            (
                crate::results::table1::rule_of(field("covariate"), field("level")),
                Some(field("group").to_string()),
            )
        } else {
            let arm = field("arm");
            (
                field("rule").to_string(),
                (table == Table::ByArm && !arm.is_empty()).then(|| arm.to_string()),
            )
        };
        rows.push(CountRow {
            table,
            step: field("step").trim().parse().ok(),
            rule,
            arm,
            counts,
            line,
        });
    }
    Ok(rows)
}

fn unexpected_column(name: &str) -> String {
    let lower = name.to_ascii_lowercase();
    if IDENTIFYING.contains(&lower.as_str()) || lower == "person" {
        "is a person-level column: a table of counts identifies no one".to_string()
    } else if lower.ends_with("_date") {
        "is a date column: a table of counts has no dates".to_string()
    } else {
        "is not a column of this table".to_string()
    }
}

/// `run.json`'s `persons` and `attrition` must be the attrition table's released counts.
fn compare_run_counts(
    run: &serde_json::Value,
    rows: &[CountRow],
    have_table: bool,
    out: &mut Vec<Violation>,
) {
    let attrition: Vec<&CountRow> = rows
        .iter()
        .filter(|r| r.table == Table::Attrition)
        .collect();
    let listed = run
        .get("attrition")
        .and_then(|a| a.as_array())
        .cloned()
        .unwrap_or_default();
    let count_of = |v: Option<&serde_json::Value>| -> Result<Option<u64>, ()> {
        match v {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or(()),
        }
    };
    for (i, step) in listed.iter().enumerate() {
        for (m, measure) in MEASURES.iter().enumerate() {
            let Ok(value) = count_of(step.get(*measure)) else {
                out.push(at(
                    "run.json",
                    None,
                    Some(&format!("attrition[{i}].{measure}")),
                    "is not a count".into(),
                ));
                continue;
            };
            let table = attrition.get(i).map(|r| r.counts[m]);
            if have_table && table != Some(value) {
                out.push(at(
                    "run.json",
                    None,
                    Some(&format!("attrition[{i}].{measure}")),
                    format!(
                        "is {} where attrition.csv {}",
                        value.map_or("withheld".to_string(), |v| v.to_string()),
                        match table {
                            Some(Some(v)) => format!("says {v}"),
                            Some(None) => "withholds it".to_string(),
                            None => "has no such step".to_string(),
                        }
                    ),
                ));
            } else if !have_table {
                if let Some(v) = value.filter(|&v| v > 0) {
                    out.push(at(
                        "run.json",
                        None,
                        Some(&format!("attrition[{i}].{measure}")),
                        format!("is {v}, but the release has no attrition.csv to check it against"),
                    ));
                }
            }
        }
    }
    if let Ok(persons) = count_of(run.get("persons")) {
        let last = attrition.last().map(|r| r.counts[0]);
        if have_table && last != Some(persons) {
            out.push(at(
                "run.json",
                None,
                Some("persons"),
                "is not the last attrition step's persons as attrition.csv releases it".into(),
            ));
        }
    } else {
        out.push(at(
            "run.json",
            None,
            Some("persons"),
            "is not a count".into(),
        ));
    }
}

/// A person-level export: allowed only where the site allows one; never the repository's ids;
/// pseudonyms of 16 hexadecimal digits; calendar dates only where the site allows exact dates
/// and the run says it exported them.
fn check_dataset(
    dir: &Path,
    site: &SiteRules,
    run: Option<&serde_json::Value>,
    out: &mut Vec<Violation>,
) -> Result<(), String> {
    let file = "dataset.csv";
    if site.dataset_export == Export::Never {
        out.push(at(
            file,
            None,
            None,
            format!(
                "is a person-level dataset, and {} allows none to leave (dataset_export = never)",
                site.source
            ),
        ));
    }
    let declared_exact = run
        .and_then(|r| r.get("disclosure"))
        .and_then(|d| d.get("dataset_export"))
        .and_then(|v| v.as_str())
        == Some("exact-dates");
    let dates_allowed = site.dataset_export == Export::ExactDates && declared_exact;
    let path = dir.join(file);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_path(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let header: Vec<String> = match reader.headers() {
        Ok(h) => h.iter().map(str::to_string).collect(),
        Err(e) => {
            out.push(at(
                file,
                Some(1),
                None,
                format!("cannot be read as CSV: {e}"),
            ));
            return Ok(());
        }
    };
    for h in &header {
        if IDENTIFYING.contains(&h.to_ascii_lowercase().as_str()) {
            out.push(at(
                file,
                Some(1),
                Some(h),
                "holds the repository's ids: an export carries pseudonyms only".into(),
            ));
        }
    }
    // Per column: the first offending line and how many more.
    let mut dates: BTreeMap<usize, (usize, usize)> = BTreeMap::new();
    let mut bad_pseudonyms: Option<(usize, usize)> = None;
    let person = header.iter().position(|h| h == "person");
    if person.is_none() {
        out.push(at(
            file,
            Some(1),
            None,
            "has no `person` column of pseudonyms".into(),
        ));
    }
    for record in reader.records() {
        let Ok(record) = record else {
            out.push(at(file, None, None, "cannot be read as CSV".into()));
            break;
        };
        let line = record.position().map_or(0, |p| p.line() as usize);
        for (c, value) in record.iter().enumerate() {
            if !dates_allowed && looks_like_date(value) {
                dates.entry(c).and_modify(|e| e.1 += 1).or_insert((line, 0));
            }
        }
        if let Some(p) = person {
            let v = record.get(p).unwrap_or("");
            if v.len() != 16 || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
                match &mut bad_pseudonyms {
                    Some(e) => e.1 += 1,
                    None => bad_pseudonyms = Some((line, 0)),
                }
            }
        }
    }
    for (c, (line, more)) in dates {
        out.push(at(
            file,
            Some(line),
            header.get(c).map(String::as_str),
            format!(
                "is an exact date{}{}",
                if site.dataset_export == Export::ExactDates {
                    ", and run.json does not say the study asked for exact dates"
                } else {
                    ", which the site does not allow to leave"
                },
                if more > 0 {
                    format!(" (and {more} more rows)")
                } else {
                    String::new()
                }
            ),
        ));
    }
    if let Some((line, more)) = bad_pseudonyms {
        out.push(at(
            file,
            Some(line),
            Some("person"),
            format!(
                "is not a pseudonym (16 hexadecimal digits){}",
                if more > 0 {
                    format!(" (and {more} more rows)")
                } else {
                    String::new()
                }
            ),
        ));
    }
    Ok(())
}

fn looks_like_date(value: &str) -> bool {
    let b = value.trim().as_bytes();
    b.len() >= 10
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[5..7].iter().all(u8::is_ascii_digit)
        && b[7] == b'-'
        && b[8..10].iter().all(u8::is_ascii_digit)
}

/// The columns of a released Kaplan–Meier table.
const KM_COLUMNS: [&str; 10] = [
    "endpoint", "group", "time", "at_risk", "events", "censored", "survival", "std_err", "lower",
    "upper",
];

/// A released Kaplan–Meier table: its columns, every count a multiple of the policy's live
/// rounding, no step with fewer at risk than the threshold, and each curve's counts adding up
/// (the next step's number at risk is this one's less its events and censorings).
fn check_km(path: &Path, policy: &Policy, out: &mut Vec<Violation>) -> Result<(), String> {
    let file = "km.csv";
    let base = policy.live_rounding();
    let Some((mut reader, header)) = open_table(path, file, &KM_COLUMNS, out)? else {
        return Ok(());
    };
    if KM_COLUMNS.iter().any(|c| !header.iter().any(|h| h == c)) {
        out.push(at(
            file,
            Some(1),
            None,
            format!("lacks some of the columns {}", KM_COLUMNS.join(", ")),
        ));
        return Ok(());
    }
    let index = |name: &str| header.iter().position(|h| h == name).expect("present");
    let mut previous: Option<(String, String, u64)> = None;
    for record in reader.records() {
        let Ok(record) = record else {
            out.push(at(file, None, None, "cannot be read as CSV".into()));
            break;
        };
        let line = record.position().map_or(0, |p| p.line() as usize);
        let field = |name: &str| record.get(index(name)).unwrap_or("").trim();
        let mut counts = [0u64; 3];
        for (k, column) in ["at_risk", "events", "censored"].iter().enumerate() {
            match field(column).parse::<u64>() {
                Ok(v) if v.is_multiple_of(base) => counts[k] = v,
                Ok(v) => out.push(at(
                    file,
                    Some(line),
                    Some(column),
                    format!(
                        "is {v}, not a multiple of {base}: a curve is released from rounded counts"
                    ),
                )),
                Err(_) => out.push(at(
                    file,
                    Some(line),
                    Some(column),
                    format!("`{}` is not a count", field(column)),
                )),
            }
        }
        if counts[0] < policy.threshold {
            out.push(at(
                file,
                Some(line),
                Some("at_risk"),
                format!("is {}, fewer than {} at risk", counts[0], policy.threshold),
            ));
        }
        let key = (field("endpoint").to_string(), field("group").to_string());
        if let Some((e, g, expected)) = &previous {
            if (e, g) == (&key.0, &key.1) && counts[0] != *expected {
                out.push(at(
                    file,
                    Some(line),
                    Some("at_risk"),
                    format!(
                        "is {}, where the step before leaves {expected} at risk",
                        counts[0]
                    ),
                ));
            }
        }
        previous = Some((
            key.0,
            key.1,
            counts[0].saturating_sub(counts[1] + counts[2]),
        ));
    }
    Ok(())
}

/// The columns of a released table of Cox models.
const COX_COLUMNS: [&str; 12] = [
    "endpoint",
    "model",
    "term",
    "hazard_ratio",
    "lower",
    "upper",
    "p",
    "coefficient",
    "std_err",
    "events",
    "residual_df",
    "withheld",
];

/// A released table of Cox models: its columns, nothing but the reason in a withheld row, and
/// each model's events and residual degrees of freedom rounded to the policy's live rounding.
fn check_cox(path: &Path, policy: &Policy, out: &mut Vec<Violation>) -> Result<(), String> {
    let file = "cox.csv";
    let Some((mut reader, header)) = open_table(path, file, &COX_COLUMNS, out)? else {
        return Ok(());
    };
    let Some(withheld) = header.iter().position(|h| h == "withheld") else {
        out.push(at(file, Some(1), None, "has no column `withheld`".into()));
        return Ok(());
    };
    for record in reader.records() {
        let Ok(record) = record else {
            out.push(at(file, None, None, "cannot be read as CSV".into()));
            break;
        };
        let line = record.position().map_or(0, |p| p.line() as usize);
        let base = policy.live_rounding();
        for column in ["events", "residual_df"] {
            let Some(c) = header.iter().position(|h| h == column) else {
                continue;
            };
            let text = record.get(c).unwrap_or("").trim();
            if !text.is_empty() && !text.parse::<u64>().is_ok_and(|v| v.is_multiple_of(base)) {
                out.push(at(
                    file,
                    Some(line),
                    Some(column),
                    format!("is {text}, not a count rounded to a multiple of {base}"),
                ));
            }
        }
        if record.get(withheld).is_some_and(|w| !w.trim().is_empty()) {
            for (c, h) in header.iter().enumerate() {
                let statistic = !["endpoint", "model", "term", "withheld"].contains(&h.as_str());
                if statistic && record.get(c).is_some_and(|v| !v.trim().is_empty()) {
                    out.push(at(
                        file,
                        Some(line),
                        Some(h),
                        "is given in a withheld model".into(),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Released numbers at risk: `endpoint`, `group`, `day`, `at_risk`; each empty or a multiple of
/// the policy's live rounding and at least the threshold.
fn check_at_risk(path: &Path, policy: &Policy, out: &mut Vec<Violation>) -> Result<(), String> {
    let file = "at_risk.csv";
    let base = policy.live_rounding();
    let Some((mut reader, header)) =
        open_table(path, file, &["endpoint", "group", "day", "at_risk"], out)?
    else {
        return Ok(());
    };
    let Some(column) = header.iter().position(|h| h == "at_risk") else {
        out.push(at(file, Some(1), None, "has no column `at_risk`".into()));
        return Ok(());
    };
    for record in reader.records() {
        let Ok(record) = record else {
            out.push(at(file, None, None, "cannot be read as CSV".into()));
            break;
        };
        let line = record.position().map_or(0, |p| p.line() as usize);
        let text = record.get(column).unwrap_or("").trim();
        if text.is_empty() {
            continue;
        }
        match text.parse::<u64>() {
            Ok(v) if v.is_multiple_of(base) && v >= policy.threshold => {}
            Ok(v) => out.push(at(
                file,
                Some(line),
                Some("at_risk"),
                format!(
                    "is {v}: numbers at risk are released rounded to a multiple of {base}, and not below {}",
                    policy.threshold
                ),
            )),
            Err(_) => out.push(at(file, Some(line), Some("at_risk"), format!("`{text}` is not a count"))),
        }
    }
    Ok(())
}

/// A released table opened for checking, with its header; every column not among `allowed` is
/// reported. `None` (with the violation reported) when its header cannot be read.
fn open_table(
    path: &Path,
    file: &str,
    allowed: &[&str],
    out: &mut Vec<Violation>,
) -> Result<Option<(csv::Reader<std::fs::File>, Vec<String>)>, String> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_path(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let header: Vec<String> = match reader.headers() {
        Ok(h) => h.iter().map(str::to_string).collect(),
        Err(e) => {
            out.push(at(
                file,
                Some(1),
                None,
                format!("cannot be read as CSV: {e}"),
            ));
            return Ok(None);
        }
    };
    for h in &header {
        if !allowed.contains(&h.as_str()) {
            out.push(at(file, Some(1), Some(h), unexpected_column(h)));
        }
    }
    Ok(Some((reader, header)))
}
