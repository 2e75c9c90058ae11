//! The results part of the review report, read from a run's `release/` only: what may leave
//! the site is all the report shows, so the report may leave too. Nothing here recomputes a
//! count; the exclusions between attrition steps are differences of two released counts.

use crate::results::report::{endpoint_grid, number, rows_of, table1_grid, Grid};
use serde::Serialize;
use std::collections::HashMap;
use std::path::Path;

/// One box of the attrition flow.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FlowStep {
    pub step: i64,
    pub rule: String,
    /// `None` where withheld.
    pub persons: Option<u64>,
    pub entries: Option<u64>,
    /// Persons leaving at this step: the step before's persons less this one's, where both
    /// are released.
    pub excluded: Option<u64>,
}

/// The persons of an exposure arm at the end of the attrition.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ArmCount {
    pub arm: String,
    pub persons: Option<u64>,
}

/// One published step of a Kaplan–Meier curve.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CurvePoint {
    /// Days at risk up to and including the day of leaving.
    pub time: i64,
    pub survival: f64,
    pub lower: Option<f64>,
    pub upper: Option<f64>,
}

/// A Kaplan–Meier curve of one endpoint in one group, as released.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Curve {
    pub endpoint: String,
    pub group: String,
    pub points: Vec<CurvePoint>,
}

/// Numbers at risk of one endpoint: the days, and per group the numbers (`None` withheld).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AtRisk {
    pub endpoint: String,
    pub days: Vec<i64>,
    pub groups: Vec<(String, Vec<Option<u64>>)>,
}

/// Where the results come from.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Provenance {
    pub study_hash: String,
    pub data_fingerprint: String,
    pub repository: String,
    pub tool_version: String,
    pub cohort_definition_id: Option<i64>,
    /// The disclosure rule in force, in words.
    pub policy: String,
    pub policy_set_by: String,
}

/// Everything the results part shows.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Released {
    pub provenance: Provenance,
    pub attrition: Vec<FlowStep>,
    pub arms: Vec<ArmCount>,
    pub table1: Option<Grid>,
    pub endpoints: Option<Grid>,
    pub curves: Vec<Curve>,
    pub at_risk: Vec<AtRisk>,
}

fn count(row: &HashMap<String, String>, column: &str) -> Option<u64> {
    row.get(column).and_then(|v| v.parse().ok())
}

fn text(json: &serde_json::Value, key: &str) -> String {
    json[key].as_str().unwrap_or_default().to_string()
}

/// Reads the results of the release in `release`.
pub fn read(release: &Path) -> Result<Released, String> {
    let run_path = release.join("run.json");
    let run: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&run_path)
            .map_err(|e| format!("cannot read {}: {e}", run_path.display()))?,
    )
    .map_err(|e| format!("{} is not JSON: {e}", run_path.display()))?;
    let provenance = Provenance {
        study_hash: text(&run, "study_hash"),
        data_fingerprint: text(&run, "data_fingerprint"),
        repository: text(&run, "repository"),
        tool_version: text(&run, "tool_version"),
        cohort_definition_id: run["cohort_definition_id"].as_i64(),
        policy: text(&run["disclosure"], "rule"),
        policy_set_by: text(&run["disclosure"], "set_by"),
    };
    let mut attrition: Vec<FlowStep> = Vec::new();
    for r in rows_of(&release.join("attrition.csv"))? {
        let persons = count(&r, "persons");
        let excluded = match (attrition.last().and_then(|s| s.persons), persons) {
            (Some(before), Some(after)) => before.checked_sub(after),
            _ => None,
        };
        attrition.push(FlowStep {
            step: r["step"].parse().unwrap_or_default(),
            rule: r["rule"].clone(),
            persons,
            entries: count(&r, "entries"),
            excluded,
        });
    }
    let by_arm = rows_of(&release.join("attrition_by_arm.csv"))?;
    let last = by_arm
        .iter()
        .filter_map(|r| r["step"].parse::<i64>().ok())
        .max();
    let arms = by_arm
        .iter()
        .filter(|r| r["step"].parse::<i64>().ok() == last && !r["arm"].is_empty())
        .map(|r| ArmCount {
            arm: r["arm"].clone(),
            persons: count(r, "persons"),
        })
        .collect();
    let mut curves: Vec<Curve> = Vec::new();
    let km = release.join("km.csv");
    if km.exists() {
        for r in rows_of(&km)? {
            let (Some(time), Some(survival)) = (count(&r, "time"), number(&r, "survival")) else {
                continue;
            };
            let point = CurvePoint {
                time: time as i64,
                survival,
                lower: number(&r, "lower"),
                upper: number(&r, "upper"),
            };
            match curves
                .iter_mut()
                .find(|c| c.endpoint == r["endpoint"] && c.group == r["group"])
            {
                Some(c) => c.points.push(point),
                None => curves.push(Curve {
                    endpoint: r["endpoint"].clone(),
                    group: r["group"].clone(),
                    points: vec![point],
                }),
            }
        }
    }
    let mut at_risk: Vec<AtRisk> = Vec::new();
    let path = release.join("at_risk.csv");
    if path.exists() {
        for r in rows_of(&path)? {
            let Ok(day) = r["day"].parse::<i64>() else {
                continue;
            };
            let n = count(&r, "at_risk");
            let table = match at_risk.iter_mut().find(|t| t.endpoint == r["endpoint"]) {
                Some(t) => t,
                None => {
                    at_risk.push(AtRisk {
                        endpoint: r["endpoint"].clone(),
                        days: Vec::new(),
                        groups: Vec::new(),
                    });
                    at_risk.last_mut().expect("just pushed")
                }
            };
            if !table.days.contains(&day) {
                table.days.push(day);
            }
            let column = table.days.iter().position(|&d| d == day).expect("added");
            let group = match table.groups.iter_mut().find(|(g, _)| *g == r["group"]) {
                Some(g) => g,
                None => {
                    table.groups.push((r["group"].clone(), Vec::new()));
                    table.groups.last_mut().expect("just pushed")
                }
            };
            group.1.resize(column, None);
            group.1.push(n);
        }
        for t in &mut at_risk {
            let width = t.days.len();
            for (_, counts) in &mut t.groups {
                counts.resize(width, None);
            }
        }
    }
    Ok(Released {
        provenance,
        attrition,
        arms,
        table1: table1_grid(release)?,
        endpoints: endpoint_grid(release)?,
        curves,
        at_risk,
    })
}
