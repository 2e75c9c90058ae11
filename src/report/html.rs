//! The review report as one self-contained HTML file: the template (report.html beside this
//! file) fills in the `Report` and the figures; inline CSS and SVG, no script, nothing fetched.
//! Text is escaped by the template engine; the SVG, written by this crate, escapes its own.

use super::figures::{attrition_flow, km_figure};
use super::Report;
use minijinja::value::Serde;
use minijinja::{context, Environment};
use serde::Serialize;

const TEMPLATE: &str = include_str!("report.html");

/// A Kaplan–Meier figure of one endpoint.
#[derive(Serialize)]
struct KmFigure {
    endpoint: String,
    svg: String,
}

/// The figures, drawn from the report's content.
#[derive(Serialize)]
struct Figures {
    design: String,
    flow: String,
    km: Vec<KmFigure>,
}

fn figures(report: &Report, study: &crate::study::Study) -> Figures {
    let design = super::design::diagram(study, &report.entry);
    let (flow, km) = match &report.results {
        None => (String::new(), Vec::new()),
        Some(res) => {
            let flow = attrition_flow(&res.attrition, &res.arms);
            let mut endpoints: Vec<&str> = Vec::new();
            for c in &res.curves {
                if !endpoints.contains(&c.endpoint.as_str()) {
                    endpoints.push(&c.endpoint);
                }
            }
            let km = endpoints
                .into_iter()
                .map(|endpoint| {
                    let all: Vec<_> = res
                        .curves
                        .iter()
                        .filter(|c| c.endpoint == endpoint)
                        .collect();
                    // With arms, the arms' curves; without, the curve of all entries.
                    let arms: Vec<_> = all
                        .iter()
                        .copied()
                        .filter(|c| c.group != crate::results::ALL)
                        .collect();
                    let shown = if arms.is_empty() { all } else { arms };
                    KmFigure {
                        endpoint: endpoint.to_string(),
                        svg: km_figure(endpoint, &shown),
                    }
                })
                .collect();
            (flow, km)
        }
    };
    Figures { design, flow, km }
}

/// The report as HTML.
pub fn render(report: &Report, study: &crate::study::Study) -> Result<String, String> {
    let mut env = Environment::new();
    env.add_template("report.html", TEMPLATE)
        .map_err(|e| format!("the report template does not parse: {e}"))?;
    let template = env.get_template("report.html").map_err(|e| e.to_string())?;
    template
        .render(context! {
            r => Serde(report),
            figures => Serde(figures(report, study)),
        })
        .map_err(|e| format!("the report could not be written: {e}"))
}
