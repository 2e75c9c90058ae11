//! The results of a run as text, read from its `release/` (so a screen never shows more than
//! may leave): Table 1, the endpoint table, the log-rank tests and the hazard ratios. For
//! `cohortql results`, `run` and the REPL's `:results`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The release directory of `dir`: `dir/release` for a run's output directory, else `dir`.
pub fn release_of(dir: &Path) -> PathBuf {
    if dir.join("release").is_dir() {
        dir.join("release")
    } else {
        dir.to_path_buf()
    }
}

/// The rows of a release's CSV file as maps from column to value.
pub fn rows_of(path: &Path) -> Result<Vec<HashMap<String, String>>, String> {
    let mut reader =
        csv::Reader::from_path(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .iter()
        .map(String::from)
        .collect();
    reader
        .records()
        .map(|r| {
            r.map(|r| {
                header
                    .iter()
                    .cloned()
                    .zip(r.iter().map(String::from))
                    .collect()
            })
            .map_err(|e| format!("cannot read {}: {e}", path.display()))
        })
        .collect()
}

/// A cell as a number; `None` when empty (withheld) or not a number.
pub fn number(row: &HashMap<String, String>, column: &str) -> Option<f64> {
    row.get(column).and_then(|v| v.parse().ok())
}

/// An estimate with its interval, `240.6 (216.2–266.9)`, or `—`.
fn estimate(
    row: &HashMap<String, String>,
    column: &str,
    lower: &str,
    upper: &str,
    digits: usize,
) -> String {
    match (number(row, column), number(row, lower), number(row, upper)) {
        (Some(v), Some(lo), Some(hi)) => format!("{v:.digits$} ({lo:.digits$}–{hi:.digits$})"),
        (Some(v), _, _) => format!("{v:.digits$}"),
        _ => crate::disclosure::WITHHELD.to_string(),
    }
}

/// A table of results as it is shown, on a screen or in the review report: cells as text,
/// `—` where a count is withheld.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Grid {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
    /// Lines shown below the table: the tests and models.
    pub notes: Vec<String>,
}

impl Grid {
    /// The table as text, numbers aligned right (every column after the first `text_columns`).
    pub fn text(&self, text_columns: usize) -> String {
        use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, CellAlignment, Table};
        let mut t = Table::new();
        t.load_preset(UTF8_FULL_CONDENSED)
            .set_header(self.header.clone());
        for row in &self.rows {
            t.add_row(row.iter().enumerate().map(|(i, cell)| {
                let c = Cell::new(cell);
                if i >= text_columns {
                    c.set_alignment(CellAlignment::Right)
                } else {
                    c
                }
            }));
        }
        let mut text = t.to_string();
        for line in &self.notes {
            text.push('\n');
            text.push_str(line);
        }
        text
    }
}

/// The endpoint table of a release, with the log-rank tests and hazard ratios as notes;
/// `None` when the study has no endpoints.
pub fn endpoint_grid(dir: &Path) -> Result<Option<Grid>, String> {
    let path = release_of(dir).join("endpoints.csv");
    if !path.exists() {
        return Err(format!(
            "{} holds no endpoints.csv: give a run's output or release directory",
            release_of(dir).display()
        ));
    }
    let rows = rows_of(&path)?;
    if rows.is_empty() {
        return Ok(None);
    }
    let header = [
        "endpoint",
        "group",
        "events",
        "person-years",
        "rate per 1,000 PY (95% CI)",
        "risk (95% CI)",
        "vs first arm: ratio (95% CI)",
    ]
    .map(String::from)
    .to_vec();
    let mut cells = Vec::new();
    let mut tests = Vec::new();
    for r in &rows {
        let events = r["events"].clone();
        cells.push(vec![
            crate::printable::escaped(&r["endpoint"]).into_owned(),
            crate::printable::escaped(&r["group"]).into_owned(),
            if events.is_empty() {
                crate::disclosure::WITHHELD.to_string()
            } else {
                events
            },
            number(r, "person_years").map_or(String::new(), |v| format!("{v:.1}")),
            if r["kind"] == "time-to-event" {
                estimate(r, "rate_per_1000_py", "rate_lower", "rate_upper", 1)
            } else {
                String::new()
            },
            if r["kind"] == "binary" {
                estimate(r, "risk", "risk_lower", "risk_upper", 3)
            } else {
                String::new()
            },
            if number(r, "ratio").is_some() {
                estimate(r, "ratio", "ratio_lower", "ratio_upper", 2)
            } else {
                String::new()
            },
        ]);
        if let (Some(chisq), Some(df), Some(p)) = (
            number(r, "logrank_chisq"),
            number(r, "logrank_df"),
            number(r, "logrank_p"),
        ) {
            tests.push(format!(
                "{}: log-rank test between arms, chi-square {chisq:.2} on {df} df, p = {p:.4}",
                crate::printable::escaped(&r["endpoint"])
            ));
        }
    }
    let cox = release_of(dir).join("cox.csv");
    if cox.exists() {
        for r in rows_of(&cox)? {
            let hr = estimate(&r, "hazard_ratio", "lower", "upper", 2);
            tests.push(
                match (number(&r, "p"), r.get("withheld").filter(|w| !w.is_empty())) {
                    (Some(p), _) => format!(
                        "{}: Cox hazard ratio, {} ({}): {hr}, p = {p:.4}",
                        crate::printable::escaped(&r["endpoint"]),
                        crate::printable::escaped(&r["term"]),
                        r["model"]
                    ),
                    (None, why) => format!(
                        "{}: Cox hazard ratio, {} ({}): {}",
                        crate::printable::escaped(&r["endpoint"]),
                        crate::printable::escaped(&r["term"]),
                        r["model"],
                        why.map_or("—", |w| w.as_str())
                    ),
                },
            );
        }
    }
    Ok(Some(Grid {
        header,
        rows: cells,
        notes: tests,
    }))
}

/// The endpoint table of a release as text; empty when the study has no endpoints.
pub fn endpoint_text(dir: &Path) -> Result<String, String> {
    Ok(endpoint_grid(dir)?.map_or(String::new(), |g| g.text(2)))
}

/// Table 1 of a release, compact: one line per number (mean (SD)) or level (n (%)), one
/// column per group, and the standardised mean differences against the first arm; `None`
/// when there is nothing to show.
pub fn table1_grid(dir: &Path) -> Result<Option<Grid>, String> {
    let path = release_of(dir).join("table1.csv");
    if !path.exists() {
        return Ok(None);
    }
    let rows = rows_of(&path)?;
    let mut groups: Vec<String> = Vec::new();
    let mut lines: Vec<(String, String)> = Vec::new();
    for r in &rows {
        if !groups.contains(&r["group"]) {
            groups.push(r["group"].clone());
        }
        let key = (r["covariate"].clone(), r["level"].clone());
        if !lines.contains(&key) && r["level"] != crate::results::table1::MISSING {
            lines.push(key);
        }
    }
    if lines.is_empty() {
        return Ok(None);
    }
    let mut header = vec!["Table 1".to_string()];
    header.extend(
        groups
            .iter()
            .map(|g| crate::printable::escaped(g).into_owned()),
    );
    header.push("SMD".to_string());
    let mut cells = Vec::new();
    for (covariate, level) in &lines {
        let mut line = vec![crate::printable::escaped(&if level.is_empty() {
            format!("{covariate}, mean (SD)")
        } else {
            format!("{covariate} = {level}, n (%)")
        })
        .into_owned()];
        let mut smd = String::new();
        for g in &groups {
            let r = rows
                .iter()
                .find(|r| &r["covariate"] == covariate && &r["level"] == level && &r["group"] == g);
            let text = match r {
                None => String::new(),
                Some(r) if r["n"].is_empty() => crate::disclosure::WITHHELD.to_string(),
                Some(r) if level.is_empty() => match (number(r, "mean"), number(r, "sd")) {
                    (Some(m), Some(s)) => format!("{m:.1} ({s:.1})"),
                    (Some(m), None) => format!("{m:.1}"),
                    _ => crate::disclosure::WITHHELD.to_string(),
                },
                Some(r) => match number(r, "percent") {
                    Some(p) => format!("{} ({p:.1}%)", r["n"]),
                    None => r["n"].clone(),
                },
            };
            if let Some(s) = r.and_then(|r| number(r, "smd")) {
                smd = format!("{s:.3}");
            }
            line.push(text);
        }
        line.push(smd);
        cells.push(line);
    }
    Ok(Some(Grid {
        header,
        rows: cells,
        notes: Vec::new(),
    }))
}

/// Table 1 of a release as text; empty when there is nothing to show.
pub fn table1_text(dir: &Path) -> Result<String, String> {
    Ok(table1_grid(dir)?.map_or(String::new(), |g| g.text(1)))
}

/// Table 1, then the endpoint table and the tests: everything `results` prints.
pub fn report(dir: &Path) -> Result<String, String> {
    let mut text = table1_text(dir)?;
    let endpoints = endpoint_text(dir)?;
    if !text.is_empty() {
        text.push('\n');
    }
    if endpoints.is_empty() {
        text.push_str("The study has no endpoints.");
    } else {
        text.push_str(&endpoints);
    }
    Ok(text)
}
