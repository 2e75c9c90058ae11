//! The study's design as a diagram (Schneeweiss et al., Ann Intern Med 2019): day 0 as an
//! arrow labelled with the entry event, one box per window in the order the criteria are
//! applied, each labelled with its kind, its construct and its exact days, and follow-up last.
//! The windows are read from the `Study` model, so the diagram says what runs.

use super::svg::{esc, Canvas};
use crate::study::*;
use serde::Serialize;

/// One window of the design: which construct looks where, in days around its anchor, both
/// ends included; `None` is unbounded.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DesignWindow {
    /// `inclusion`, `exclusion`, `exposure`, `covariate` or `outcome`.
    pub kind: &'static str,
    /// The attrition rule as written, or the arm's, covariate's or endpoint's name.
    pub construct: String,
    /// `index`, `follow-up start`, `follow-up end`, or `follow-up` (from its start to its end).
    pub anchor: &'static str,
    pub start: Option<i64>,
    pub end: Option<i64>,
    /// What the window looks for: `condition records`, `observation`.
    pub looks_for: String,
}

impl DesignWindow {
    /// `days [-365, -1]`, `days [-∞, -1]`, `during follow-up`; with the anchor when it is not
    /// index.
    pub fn days(&self) -> String {
        if self.anchor == "follow-up" {
            return "during follow-up".to_string();
        }
        let bound = |b: Option<i64>, inf: &str| b.map_or(inf.to_string(), |d| d.to_string());
        let days = format!(
            "days [{}, {}]",
            bound(self.start, "-∞"),
            bound(self.end, "∞")
        );
        if self.anchor == "index" {
            days
        } else {
            format!("{days} of {}", self.anchor)
        }
    }

    /// `exclusion (exclude condition in gi_bleed any time before index) days [-∞, -1]`.
    pub fn label(&self) -> String {
        format!("{} ({}) {}", self.kind, self.construct, self.days())
    }
}

fn anchor_word(a: Anchor) -> &'static str {
    match a {
        Anchor::Index => "index",
        Anchor::FollowUpStart => "follow-up start",
        Anchor::FollowUpEnd => "follow-up end",
        Anchor::Event => "the event",
        Anchor::IndexEnd => "index end",
        Anchor::EventEnd => "the event's end",
    }
}

fn looks_for(query: &EventQuery) -> String {
    query
        .domains()
        .map(|d| d.keyword().replace('_', " "))
        .collect::<Vec<_>>()
        .join(" | ")
}

/// The windows of a criterion, outermost first. Windows inside `where ( … )` are about the
/// event, not the person's timeline, and are not drawn.
fn criterion_windows(c: &Criterion, out: &mut Vec<(Window, String)>) {
    match c {
        Criterion::All(parts) | Criterion::Any(parts) => {
            for p in parts {
                criterion_windows(p, out);
            }
        }
        Criterion::Not(inner) => criterion_windows(inner, out),
        Criterion::Events {
            query,
            window,
            more,
            ..
        } => {
            if !window.is_any_time() || more.is_empty() {
                out.push((*window, looks_for(query)));
            }
            for m in more {
                let day = match m.edge {
                    Edge::Start => "start",
                    Edge::End => "end",
                };
                out.push((m.window, format!("{} ({day})", looks_for(query))));
            }
        }
        Criterion::Observation { anchor, start, end } => out.push((
            Window::Days {
                anchor: *anchor,
                start: Some(*start),
                end: Some(*end),
                observed: false,
            },
            "observation".to_string(),
        )),
        Criterion::Sex(_) | Criterion::Compare { .. } => {}
    }
}

fn design_window(kind: &'static str, construct: &str, w: Window, what: String) -> DesignWindow {
    let (anchor, start, end) = match w {
        Window::FollowUp => ("follow-up", None, None),
        Window::Days {
            anchor, start, end, ..
        } => (anchor_word(anchor), start, end),
    };
    DesignWindow {
        kind,
        construct: construct.to_string(),
        anchor,
        start,
        end,
        looks_for: what,
    }
}

/// Every window of the study in the order its criteria are applied: the attrition steps, the
/// arms, the covariates, then the endpoints.
pub fn windows(study: &Study) -> Vec<DesignWindow> {
    let mut out = Vec::new();
    let mut add = |kind, construct: &str, ws: Vec<(Window, String)>| {
        for (w, what) in ws {
            out.push(design_window(kind, construct, w, what));
        }
    };
    for step in &study.steps {
        let mut ws = Vec::new();
        criterion_windows(&step.criterion, &mut ws);
        let kind = if step.exclude {
            "exclusion"
        } else {
            "inclusion"
        };
        add(kind, &step.rule, ws);
    }
    for arm in &study.arms {
        let mut ws = Vec::new();
        criterion_windows(&arm.criterion, &mut ws);
        add("exposure", &arm.name, ws);
    }
    for c in &study.covariates {
        let mut ws = Vec::new();
        match &c.value {
            CovariateValue::Count { query, window, .. }
            | CovariateValue::Aggregate { query, window, .. }
            | CovariateValue::DaysSince { query, window, .. } => {
                ws.push((*window, looks_for(query)))
            }
            CovariateValue::Flag(criterion) => criterion_windows(criterion, &mut ws),
            CovariateValue::Sex | CovariateValue::Quantity(_) | CovariateValue::Interaction(_) => {}
        }
        add("covariate", &c.name, ws);
    }
    for e in &study.endpoints {
        add("outcome", &e.name, vec![(e.window, looks_for(&e.query))]);
    }
    out
}

/// Where a window lies relative to index, for drawing: follow-up anchors are placed at
/// follow-up start (`start_offset`); a window about follow-up end, or follow-up itself, runs
/// to the right edge.
fn placed(w: &DesignWindow, start_offset: i64) -> (Option<i64>, Option<i64>) {
    match w.anchor {
        "index" => (w.start, w.end),
        "follow-up start" => (
            w.start.map(|d| d + start_offset),
            w.end.map(|d| d + start_offset),
        ),
        "follow-up" => (Some(start_offset), None),
        // Follow-up end has no fixed day: drawn from the middle of follow-up on.
        _ => (Some(start_offset.max(0) + 1), None),
    }
}

/// The day scale: symmetric logarithmic, so a day and a year both show.
struct Scale {
    left: f64,
    right: f64,
    x0: f64,
    x1: f64,
}

impl Scale {
    fn warp(d: f64) -> f64 {
        d.signum() * (1.0 + d.abs()).ln()
    }

    fn x(&self, day: Option<i64>, unbounded: f64) -> f64 {
        match day {
            None => unbounded,
            Some(d) => {
                let t = (Scale::warp(d as f64) - self.left) / (self.right - self.left);
                self.x0 + t.clamp(0.0, 1.0) * (self.x1 - self.x0)
            }
        }
    }
}

/// Splits a label into lines of at most `width` characters, at spaces.
pub fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    let mut line = String::new();
    for word in text.split(' ') {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

/// The fill of each kind of window: a pattern as well as a shade, so the diagram reads
/// without colour.
fn fill(kind: &str) -> &'static str {
    match kind {
        "inclusion" => "url(#fill-inclusion)",
        "exclusion" => "url(#fill-exclusion)",
        "exposure" => "url(#fill-exposure)",
        "covariate" => "url(#fill-covariate)",
        _ => "url(#fill-outcome)",
    }
}

/// The patterns of the design diagram's boxes: plain, hatched, cross-hatched, dotted, striped.
const PATTERNS: &str = r##"<defs>
<pattern id="fill-inclusion" width="8" height="8" patternUnits="userSpaceOnUse"><rect width="8" height="8" fill="#dbe9f6"/></pattern>
<pattern id="fill-exclusion" width="8" height="8" patternUnits="userSpaceOnUse"><rect width="8" height="8" fill="#f6dcdc"/><path d="M0,8 L8,0" stroke="#7a2e2e" stroke-width="1"/></pattern>
<pattern id="fill-exposure" width="8" height="8" patternUnits="userSpaceOnUse"><rect width="8" height="8" fill="#e3f1dc"/><path d="M0,8 L8,0 M0,0 L8,8" stroke="#2f5d22" stroke-width="0.8"/></pattern>
<pattern id="fill-covariate" width="6" height="6" patternUnits="userSpaceOnUse"><rect width="6" height="6" fill="#f3ecd9"/><circle cx="3" cy="3" r="1" fill="#6b5520"/></pattern>
<pattern id="fill-outcome" width="8" height="8" patternUnits="userSpaceOnUse"><rect width="8" height="8" fill="#ece0f3"/><path d="M0,4 L8,4" stroke="#4f2a66" stroke-width="1"/></pattern>
<marker id="arrow" viewBox="0 0 10 10" refX="5" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#222"/></marker>
</defs>"##;

/// The design diagram as SVG: `entry` names the index event (the arrow at day 0), `follow_up`
/// how follow-up starts.
pub fn diagram(study: &Study, entry: &str) -> String {
    let windows = windows(study);
    let offset = study.follow_up.start_offset;
    let (label_width, width) = (430.0, 980.0);
    let (x0, x1) = (label_width + 20.0, width - 20.0);
    // The scale covers a year either side, or further where a window reaches.
    let mut low: i64 = -365;
    let mut high: i64 = 365;
    for w in &windows {
        let (s, e) = placed(w, offset);
        for d in [s, e].into_iter().flatten() {
            low = low.min(d);
            high = high.max(d);
        }
    }
    let scale = Scale {
        left: Scale::warp(low as f64),
        right: Scale::warp(high as f64),
        x0,
        x1,
    };
    let line = 15.0;
    let top = 78.0;
    let mut rows = Vec::new();
    let mut y = top;
    for w in &windows {
        let lines = wrap(&w.label(), 62);
        let h = (lines.len() as f64 * line + 10.0).max(26.0);
        rows.push((w, lines, y, h));
        y += h + 6.0;
    }
    let follow_y = y;
    let follow_h = 26.0;
    let axis_y = follow_y + follow_h + 18.0;
    let height = axis_y + 40.0;
    let mut c = Canvas::new(width, height, "design-diagram", "Study design diagram");
    c.raw(PATTERNS);
    // Day 0: the entry event.
    let zero = scale.x(Some(0), x0);
    let entry = entry
        .strip_prefix("Each person's index date is ")
        .unwrap_or(entry);
    let mut label = String::new();
    for (i, l) in wrap(&shorten(entry, 150), 75).iter().enumerate() {
        label.push_str(&format!(
            r#"<tspan x="{zero:.1}" y="{:.1}">{}</tspan>"#,
            30.0 + i as f64 * 14.0,
            esc(l)
        ));
    }
    c.raw(&format!(
        r##"<g class="day0"><line x1="{zero:.1}" y1="{:.1}" x2="{zero:.1}" y2="{:.1}" stroke="#222" stroke-width="2" marker-end="url(#arrow)"/><text x="{zero:.1}" y="14" text-anchor="middle" font-weight="bold">Day 0: index</text><text text-anchor="middle">{label}</text></g>"##,
        axis_y,
        top - 8.0,
    ));
    for (w, lines, y, h) in &rows {
        let (s, e) = placed(w, offset);
        let bx0 = scale.x(s, x0);
        let bx1 = scale.x(e, x1);
        // A window of one day is drawn a few pixels wide around its day.
        let (bx0, bx1) = if bx1 - bx0 < 6.0 {
            ((bx0 + bx1) / 2.0 - 3.0, (bx0 + bx1) / 2.0 + 3.0)
        } else {
            (bx0, bx1)
        };
        let mut text = String::new();
        for (i, l) in lines.iter().enumerate() {
            text.push_str(&format!(
                r#"<tspan x="{:.1}" y="{:.1}">{}</tspan>"#,
                label_width,
                y + 17.0 + i as f64 * line,
                esc(l)
            ));
        }
        c.raw(&format!(
            r##"<g class="window" data-kind="{}" data-construct="{}" data-anchor="{}" data-start="{}" data-end="{}"><text text-anchor="end">{text}</text><rect x="{bx0:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}" stroke="#222" stroke-width="1"/></g>"##,
            w.kind,
            esc(&w.construct),
            w.anchor,
            w.start.map_or("-inf".to_string(), |d| d.to_string()),
            w.end.map_or("inf".to_string(), |d| d.to_string()),
            y + 3.0,
            bx1 - bx0,
            h - 6.0,
            fill(w.kind),
        ));
    }
    // Follow-up: from its start to its exit, open to the right.
    let fx = scale.x(Some(offset), x0);
    c.raw(&format!(
        r##"<g class="follow-up" data-start="{offset}"><text x="{label_width:.1}" y="{:.1}" text-anchor="end">follow-up from day {offset} to exit (see note)</text><line x1="{fx:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#222" stroke-width="3" marker-end="url(#arrow)"/><line x1="{fx:.1}" y1="{:.1}" x2="{fx:.1}" y2="{:.1}" stroke="#222" stroke-width="2"/></g>"##,
        follow_y + 17.0,
        follow_y + 13.0,
        x1,
        follow_y + 13.0,
        follow_y + 5.0,
        follow_y + 21.0,
    ));
    // The axis: days relative to index.
    let mut axis = format!(
        r##"<g class="axis"><line x1="{x0:.1}" y1="{axis_y:.1}" x2="{x1:.1}" y2="{axis_y:.1}" stroke="#222"/>"##
    );
    for d in [
        -3650, -1825, -365, -180, -90, -30, -7, 0, 7, 30, 90, 180, 365, 1825, 3650,
    ] {
        if d < low || d > high {
            continue;
        }
        let x = scale.x(Some(d), x0);
        axis.push_str(&format!(
            r##"<line x1="{x:.1}" y1="{axis_y:.1}" x2="{x:.1}" y2="{:.1}" stroke="#222"/><text x="{x:.1}" y="{:.1}" text-anchor="middle" font-size="11">{d}</text>"##,
            axis_y + 5.0,
            axis_y + 18.0
        ));
    }
    axis.push_str(&format!(
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="11">days relative to index (logarithmic; an unbounded window reaches the edge)</text></g>"##,
        (x0 + x1) / 2.0,
        axis_y + 34.0
    ));
    c.raw(&axis);
    c.finish()
}

/// Text cut to `n` characters, with an ellipsis.
fn shorten(text: &str, n: usize) -> String {
    if text.chars().count() <= n {
        text.to_string()
    } else {
        text.chars().take(n - 1).collect::<String>() + "…"
    }
}
