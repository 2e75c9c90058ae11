//! The review report an ethics committee reads: a protocol in the order of the HARPER template
//! (ISPE/ISPOR 2022), generated from the `Study` model, and with a run, its released results.
//! One `Report` value holds everything shown; it is written as `report.json` and rendered as
//! one self-contained HTML file, so the two cannot disagree, and neither with what runs.

pub mod design;
pub mod figures;
pub mod html;
pub mod released;
pub mod svg;
pub mod vocabulary;

use crate::disclosure::SiteRules;
use crate::explain::{explain_under, Explainer};
use crate::study::*;
use design::DesignWindow;
use released::Released;
use serde::Serialize;
use vocabulary::{CodeRow, DataSource, Lookups};

/// The format of `report.json`, for tools that read it.
pub const FORMAT: &str = "cohortql-report 1";

/// The title page.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TitlePage {
    pub title: String,
    pub version: Option<String>,
    pub authors: Vec<String>,
    pub question: Option<String>,
    pub description: Option<String>,
    pub study_file: String,
    pub study_hash: String,
    pub cohortql_version: String,
    /// The day the report was made (UTC).
    pub date: String,
}

/// One row of a table of constructs: what it is, its exact days, what it means.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ConstructRow {
    /// The order it is applied in (attrition steps, arms), else its position.
    pub order: usize,
    pub name: String,
    /// Its windows, each an inclusive range of days: `days [-365, -1]`.
    pub days: String,
    pub meaning: String,
}

/// A table of constructs of one kind.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ConstructTable {
    /// The section's anchor in the HTML.
    pub id: String,
    pub title: String,
    /// What the table's order means, or why it is empty.
    pub note: String,
    pub rows: Vec<ConstructRow>,
}

/// Everything the report shows.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    pub format: &'static str,
    /// `protocol`, or `results` when made from a run.
    pub mode: &'static str,
    pub title_page: TitlePage,
    /// Population, exposure, comparator, outcome, time and measure, each in words.
    pub objectives: Vec<(String, String)>,
    /// The design in a few sentences.
    pub design: Vec<String>,
    /// The entry event, as the design diagram's day-0 arrow names it.
    pub entry: String,
    /// The design diagram's windows, in the order criteria are applied.
    pub windows: Vec<DesignWindow>,
    /// The diagram's footnote: how follow-up starts and what ends or censors it.
    pub follow_up_note: Vec<String>,
    pub tables: Vec<ConstructTable>,
    pub code_list: Vec<CodeRow>,
    /// Whether the code list's names, codes and vocabularies were looked up in a repository.
    pub code_list_looked_up: bool,
    pub output_policy: Vec<String>,
    pub consent: Vec<String>,
    pub explanation: String,
    pub study_text: Vec<String>,
    pub data_source: Option<DataSource>,
    pub results: Option<Released>,
}

/// Where the study comes from.
pub struct Source<'a> {
    pub study: &'a Study,
    pub text: &'a str,
    /// As the title page names it.
    pub file: &'a str,
    pub hash: &'a str,
}

/// The lines of one section of `explain`'s text (`Consent`, `Output and privacy`), unindented.
fn explained_section(explanation: &str, heading: &str) -> Vec<String> {
    explanation
        .lines()
        .skip_while(|l| *l != heading)
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .map(|l| l.trim().to_string())
        .collect()
}

/// The first sentence of a text.
fn first_sentence(text: &str) -> String {
    match text.find(". ") {
        Some(i) => text[..=i].to_string(),
        None => text.trim_end().to_string(),
    }
}

fn days_of(windows: &[DesignWindow], kind: &str, construct: &str) -> String {
    let days: Vec<String> = windows
        .iter()
        .filter(|w| w.kind == kind && w.construct == construct)
        .map(DesignWindow::days)
        .collect();
    if days.is_empty() {
        "day 0 (at index)".to_string()
    } else {
        days.join("; ")
    }
}

/// Builds the report of a study, with the results of a run where given.
pub fn build(
    source: &Source<'_>,
    site: &SiteRules,
    lookups: Option<&Lookups>,
    results: Option<Released>,
    date: &str,
) -> Report {
    let study = source.study;
    let x = Explainer::new(study);
    let windows = design::windows(study);
    let explanation = explain_under(study, site);
    let index_words = x.index(&study.index);
    let entry = first_sentence(index_words.lines().next().unwrap_or_default());
    let follow_up_words = x.follow_up(&study.follow_up);

    let inclusions = study
        .steps
        .iter()
        .filter(|s| !s.exclude && s.keep.is_none())
        .count();
    let exclusions = study.steps.iter().filter(|s| s.exclude).count();
    let mut objectives = vec![(
        "Population".to_string(),
        format!(
            "{entry} Then {inclusions} inclusion and {exclusions} exclusion criteria{}, applied in the order of the attrition table.",
            if study.steps.iter().any(|s| s.keep.is_some()) {
                " and a choice of one entry per person"
            } else {
                ""
            }
        ),
    )];
    match study.arms.split_first() {
        Some((first, rest)) => {
            objectives.push((
                "Exposure".into(),
                format!("{}: {}.", first.name, x.criterion(&first.criterion)),
            ));
            objectives.push((
                "Comparator".into(),
                if rest.is_empty() {
                    "none: one exposure arm".to_string()
                } else {
                    rest.iter()
                        .map(|a| format!("{}: {}.", a.name, x.criterion(&a.criterion)))
                        .collect::<Vec<_>>()
                        .join(" ")
                },
            ));
        }
        None => {
            objectives.push((
                "Exposure".into(),
                "no exposure arms: one cohort is described".into(),
            ));
            objectives.push(("Comparator".into(), "none".into()));
        }
    }
    objectives.push((
        "Outcome".into(),
        if study.endpoints.is_empty() {
            "no endpoints".to_string()
        } else {
            study
                .endpoints
                .iter()
                .map(|e| {
                    format!(
                        "{} ({})",
                        e.name,
                        match e.kind {
                            EndpointKind::TimeToEvent => "time to event",
                            EndpointKind::Binary => "binary",
                        }
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        },
    ));
    objectives.push((
        "Time".into(),
        follow_up_words
            .lines()
            .take(2)
            .collect::<Vec<_>>()
            .join(" "),
    ));
    let tte = study
        .endpoints
        .iter()
        .any(|e| e.kind == EndpointKind::TimeToEvent);
    let binary = study
        .endpoints
        .iter()
        .any(|e| e.kind == EndpointKind::Binary);
    let mut measures = Vec::new();
    if tte {
        measures.push("incidence rates per 1,000 person-years with exact Poisson 95% CIs, Kaplan–Meier survival, the log-rank test and Cox hazard ratios (Efron ties; unadjusted and adjusted for the declared confounders)");
    }
    if binary {
        measures.push("risks with Wilson 95% CIs");
    }
    if study.arms.len() > 1 {
        measures.push("each arm against the first: rate or risk ratios and differences");
    }
    measures.push("Table 1 with standardised mean differences");
    objectives.push(("Measure".into(), measures.join("; ")));

    let mut design_text = vec![format!(
        "A retrospective cohort study over data in the OMOP Common Data Model. {entry}"
    )];
    design_text.push(format!(
        "{} applied in order; {}.",
        match study.steps.len() {
            0 => "No attrition steps are".to_string(),
            1 => "1 attrition step is".to_string(),
            n => format!("{n} attrition steps are"),
        },
        match study.arms.len() {
            0 => "there are no exposure arms".to_string(),
            1 => "one exposure arm is defined".to_string(),
            n => format!(
                "{n} exposure arms are compared, each entry in the first arm whose rule holds at index"
            ),
        }
    ));
    let count =
        |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    design_text.push(format!(
        "{} and {} are measured; person-level data stay at the site, and only aggregates under disclosure control leave it.",
        count(study.covariates.len(), "covariate", "covariates"),
        count(study.endpoints.len(), "endpoint", "endpoints")
    ));

    let mut follow_up_note: Vec<String> = follow_up_words.lines().map(str::to_string).collect();
    follow_up_note.retain(|l| !l.contains("follow_up_days"));

    let step_rows = |exclude: bool| -> Vec<ConstructRow> {
        study
            .steps
            .iter()
            .enumerate()
            .filter(|(_, s)| s.exclude == exclude)
            .map(|(i, s)| ConstructRow {
                order: i + 1,
                name: s.rule.clone(),
                days: days_of(
                    &windows,
                    if exclude { "exclusion" } else { "inclusion" },
                    &s.rule,
                ),
                meaning: x.step(s),
            })
            .collect()
    };
    let order_note = "The number is the step's place in the order of application (the attrition table's step, counted after the qualifying index events).";
    let tables = vec![
        ConstructTable {
            id: "time-zero".into(),
            title: "Time zero (index date)".into(),
            note: "Day 0 of every window.".into(),
            rows: vec![ConstructRow {
                order: 1,
                name: "index".into(),
                days: "day 0".into(),
                meaning: index_words.lines().collect::<Vec<_>>().join(" "),
            }],
        },
        ConstructTable {
            id: "inclusion".into(),
            title: "Inclusion criteria".into(),
            note: order_note.into(),
            rows: step_rows(false),
        },
        ConstructTable {
            id: "exclusion".into(),
            title: "Exclusion criteria".into(),
            note: order_note.into(),
            rows: step_rows(true),
        },
        ConstructTable {
            id: "exposure".into(),
            title: "Exposure arms".into(),
            note: "Each entry joins the first arm, in this order, whose rule holds at index; entries in no arm leave the study.".into(),
            rows: study
                .arms
                .iter()
                .enumerate()
                .map(|(i, a)| ConstructRow {
                    order: i + 1,
                    name: a.name.clone(),
                    days: days_of(&windows, "exposure", &a.name),
                    meaning: format!("{}.", x.criterion(&a.criterion)),
                })
                .collect(),
        },
        ConstructTable {
            id: "outcome".into(),
            title: "Outcomes (endpoints)".into(),
            note: "Time-to-event endpoints count days from follow-up start (day 0 of follow-up) to the event or to the end of follow-up.".into(),
            rows: study
                .endpoints
                .iter()
                .enumerate()
                .map(|(i, e)| ConstructRow {
                    order: i + 1,
                    name: e.name.clone(),
                    days: days_of(&windows, "outcome", &e.name),
                    meaning: format!(
                        "{}: {} starting {}.",
                        match e.kind {
                            EndpointKind::TimeToEvent => "time to the first",
                            EndpointKind::Binary => "whether there is at least one",
                        },
                        x.query(&e.query, e.kind == EndpointKind::Binary),
                        x.window(&e.window)
                    ),
                })
                .collect(),
        },
        ConstructTable {
            id: "follow-up".into(),
            title: "Follow-up".into(),
            note: "Follow-up ends at the earliest exit; its end day is included.".into(),
            rows: std::iter::once(ConstructRow {
                order: 1,
                name: "start".into(),
                days: format!("day {}", study.follow_up.start_offset),
                meaning: follow_up_words.lines().next().unwrap_or_default().to_string(),
            })
            .chain(
                study
                    .follow_up
                    .exits
                    .iter()
                    .enumerate()
                    .map(|(i, e)| ConstructRow {
                        order: i + 2,
                        name: "exit".into(),
                        days: match e {
                            Exit::Offset { anchor, days } => format!(
                                "day {days} of {}",
                                anchor.words()
                            ),
                            Exit::Date(d) => d.to_string(),
                            _ => "on or after follow-up start".into(),
                        },
                        meaning: format!("{}.", x.exit(e)),
                    }),
            )
            .collect(),
        },
        ConstructTable {
            id: "covariates".into(),
            title: "Covariates and confounders".into(),
            note: "Each covariate is one column of the dataset, measured at index; those marked as confounders are adjusted for in the Cox models.".into(),
            rows: study
                .covariates
                .iter()
                .enumerate()
                .map(|(i, c)| ConstructRow {
                    order: i + 1,
                    name: if c.confounder {
                        format!("{} (confounder)", c.name)
                    } else {
                        c.name.clone()
                    },
                    days: days_of(&windows, "covariate", &c.name),
                    meaning: format!("{}.", x.covariate(&c.value)),
                })
                .collect(),
        },
    ];

    Report {
        format: FORMAT,
        mode: if results.is_some() {
            "results"
        } else {
            "protocol"
        },
        title_page: TitlePage {
            title: study.title.clone(),
            version: study.version.clone(),
            authors: study.authors.clone(),
            question: study.question.clone(),
            description: study.description.clone(),
            study_file: source.file.to_string(),
            study_hash: source.hash.to_string(),
            cohortql_version: env!("CARGO_PKG_VERSION").to_string(),
            date: date.to_string(),
        },
        objectives,
        design: design_text,
        entry,
        windows,
        follow_up_note,
        tables,
        code_list: vocabulary::code_list(study, lookups),
        code_list_looked_up: lookups.is_some(),
        output_policy: explained_section(&explanation, "Output and privacy"),
        consent: explained_section(&explanation, "Consent"),
        explanation,
        study_text: source.text.lines().map(str::to_string).collect(),
        data_source: lookups.and_then(|l| l.data_source.clone()),
        results,
    }
}
