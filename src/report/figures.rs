//! The results figures of the review report, drawn from released numbers only: the attrition
//! flow (CONSORT-style boxes with the exclusions between them) and the Kaplan–Meier curves.
//! Groups are told apart by dash patterns and labels, not by colour alone.

use super::design::wrap;
use super::released::{ArmCount, Curve, FlowStep};
use super::svg::{esc, Canvas};
use crate::disclosure::WITHHELD;

fn persons_text(n: Option<u64>) -> String {
    n.map_or(format!("{WITHHELD} persons (withheld)"), |n| {
        format!("{n} persons")
    })
}

fn data(n: Option<u64>) -> String {
    n.map_or("withheld".to_string(), |n| n.to_string())
}

/// The attrition flow: one box per attrition row, the persons excluded between two boxes
/// beside the arrow joining them, and the exposure arms side by side at the end.
pub fn attrition_flow(steps: &[FlowStep], arms: &[ArmCount]) -> String {
    let width = 900.0;
    let (bx, bw) = (60.0, 470.0);
    let line = 15.0;
    let mut parts = Vec::new();
    let mut y = 10.0;
    for (i, s) in steps.iter().enumerate() {
        let mut lines = wrap(&s.rule, 64);
        lines.push(persons_text(s.persons));
        let h = lines.len() as f64 * line + 12.0;
        let mut g = format!(
            r##"<g class="flow-step" data-step="{}" data-persons="{}"><rect x="{bx}" y="{y:.1}" width="{bw}" height="{h:.1}" fill="#fff" stroke="#222" stroke-width="1.2"/>"##,
            s.step,
            data(s.persons)
        );
        for (k, l) in lines.iter().enumerate() {
            let weight = if k + 1 == lines.len() {
                r#" font-weight="bold""#
            } else {
                ""
            };
            g.push_str(&format!(
                r#"<text x="{:.1}" y="{:.1}"{weight}>{}</text>"#,
                bx + 10.0,
                y + 18.0 + k as f64 * line,
                esc(l)
            ));
        }
        g.push_str("</g>");
        parts.push(g);
        y += h;
        if i + 1 < steps.len() {
            let next = &steps[i + 1];
            let gap = 44.0;
            let ax = bx + bw / 2.0;
            parts.push(format!(
                r##"<line x1="{ax:.1}" y1="{y:.1}" x2="{ax:.1}" y2="{:.1}" stroke="#222" stroke-width="1.2" marker-end="url(#flow-arrow)"/>"##,
                y + gap - 2.0
            ));
            let excluded = next
                .excluded
                .map_or(format!("excluded: {WITHHELD} (withheld)"), |n| {
                    format!("excluded: {n} persons")
                });
            parts.push(format!(
                r##"<g class="flow-exclusion" data-step="{}" data-excluded="{}"><line x1="{ax:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#222" stroke-dasharray="4 3"/><rect x="{:.1}" y="{:.1}" width="300" height="26" fill="#f4f4f4" stroke="#222"/><text x="{:.1}" y="{:.1}">{}</text></g>"##,
                next.step,
                data(next.excluded),
                y + gap / 2.0,
                bx + bw + 40.0,
                y + gap / 2.0,
                bx + bw + 40.0,
                y + gap / 2.0 - 13.0,
                bx + bw + 50.0,
                y + gap / 2.0 + 4.0,
                esc(&excluded)
            ));
            y += gap;
        }
    }
    if !arms.is_empty() {
        let gap = 40.0;
        let ax = bx + bw / 2.0;
        let aw = ((width - 20.0) / arms.len() as f64 - 12.0).min(260.0);
        parts.push(format!(
            r##"<line x1="{ax:.1}" y1="{y:.1}" x2="{ax:.1}" y2="{:.1}" stroke="#222" stroke-width="1.2"/>"##,
            y + gap / 2.0
        ));
        let centres: Vec<f64> = (0..arms.len())
            .map(|k| 10.0 + aw / 2.0 + k as f64 * (aw + 12.0))
            .collect();
        parts.push(format!(
            r##"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#222" stroke-width="1.2"/>"##,
            centres[0].min(ax),
            y + gap / 2.0,
            centres[centres.len() - 1].max(ax),
            y + gap / 2.0
        ));
        for (arm, cx) in arms.iter().zip(&centres) {
            parts.push(format!(
                r##"<line x1="{cx:.1}" y1="{:.1}" x2="{cx:.1}" y2="{:.1}" stroke="#222" stroke-width="1.2" marker-end="url(#flow-arrow)"/><g class="flow-arm" data-arm="{}" data-persons="{}"><rect x="{:.1}" y="{:.1}" width="{aw:.1}" height="44" fill="#fff" stroke="#222" stroke-width="1.2"/><text x="{cx:.1}" y="{:.1}" text-anchor="middle">arm {}</text><text x="{cx:.1}" y="{:.1}" text-anchor="middle" font-weight="bold">{}</text></g>"##,
                y + gap / 2.0,
                y + gap - 2.0,
                esc(&arm.arm),
                data(arm.persons),
                cx - aw / 2.0,
                y + gap,
                y + gap + 18.0,
                esc(&arm.arm),
                y + gap + 34.0,
                esc(&persons_text(arm.persons)),
            ));
        }
        y += gap + 44.0;
    }
    let mut c = Canvas::new(
        width,
        y + 10.0,
        "attrition-flow",
        "Attrition flow: persons after each step, as released",
    );
    c.raw(r##"<defs><marker id="flow-arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#222"/></marker></defs>"##);
    for p in parts {
        c.raw(&p);
    }
    c.finish()
}

/// Dash patterns for the groups of a figure, in order.
const DASHES: [&str; 5] = ["none", "8 4", "2 3", "10 3 2 3", "4 4"];

/// A tick step that gives about five ticks over `span`.
fn tick_step(span: f64) -> f64 {
    let raw = span / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude)
}

/// The Kaplan–Meier curves of one endpoint: survival against days at risk, one step line per
/// group, each labelled at its end and in the legend, drawn with its dash pattern.
pub fn km_figure(endpoint: &str, curves: &[&Curve]) -> String {
    let (width, height) = (900.0, 450.0);
    let (x0, x1, y0, y1) = (70.0, 720.0, 20.0, 360.0);
    let t_max = curves
        .iter()
        .flat_map(|c| c.points.iter().map(|p| p.time))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let s_min = curves
        .iter()
        .flat_map(|c| c.points.iter().map(|p| p.survival))
        .fold(1.0f64, f64::min);
    // The survival axis starts at a round value below the lowest step, so small differences
    // show; it says where it starts.
    let y_step = tick_step((1.0 - s_min).max(0.01));
    let floor = ((s_min - y_step * 0.5) / y_step).floor() * y_step;
    let floor = floor.clamp(0.0, 0.99);
    let sx = |t: f64| x0 + t / t_max * (x1 - x0);
    let sy = |s: f64| y1 - (s - floor) / (1.0 - floor) * (y1 - y0);
    let mut c = Canvas::new(
        width,
        height,
        "km-figure",
        &format!("Kaplan–Meier curves of {endpoint}, as released"),
    );
    let mut axis = format!(
        r##"<g class="axis"><line x1="{x0}" y1="{y1}" x2="{x1}" y2="{y1}" stroke="#222"/><line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="#222"/>"##
    );
    let xs = tick_step(t_max);
    let mut t = 0.0;
    while t <= t_max + 1e-9 {
        axis.push_str(&format!(
            r##"<line x1="{:.1}" y1="{y1}" x2="{:.1}" y2="{:.1}" stroke="#222"/><text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="11">{t:.0}</text>"##,
            sx(t),
            sx(t),
            y1 + 5.0,
            sx(t),
            y1 + 18.0
        ));
        t += xs;
    }
    let mut s = floor;
    while s <= 1.0 + 1e-9 {
        axis.push_str(&format!(
            r##"<line x1="{:.1}" y1="{:.1}" x2="{x0}" y2="{:.1}" stroke="#222"/><text x="{:.1}" y="{:.1}" text-anchor="end" font-size="11">{s:.2}</text><line x1="{x0}" y1="{:.1}" x2="{x1}" y2="{:.1}" stroke="#ddd"/>"##,
            x0 - 5.0,
            sy(s),
            sy(s),
            x0 - 8.0,
            sy(s) + 4.0,
            sy(s),
            sy(s)
        ));
        s += y_step;
    }
    axis.push_str(&format!(
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle">days at risk</text><text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle">survival (axis from {floor:.2})</text></g>"##,
        (x0 + x1) / 2.0,
        y1 + 40.0,
        (y0 + y1) / 2.0
    ));
    c.raw(&axis);
    for (k, curve) in curves.iter().enumerate() {
        let dash = DASHES[k % DASHES.len()];
        let mut d = format!("M{:.1},{:.1}", sx(0.0), sy(1.0));
        let mut last = 1.0;
        for p in &curve.points {
            d.push_str(&format!(
                " H{:.1} V{:.1}",
                sx(p.time as f64),
                sy(p.survival)
            ));
            last = p.survival;
        }
        d.push_str(&format!(" H{:.1}", sx(t_max)));
        c.raw(&format!(
            r##"<path class="km-curve" data-group="{}" data-steps="{}" d="{d}" fill="none" stroke="#222" stroke-width="2" stroke-dasharray="{dash}"/>"##,
            esc(&curve.group),
            curve.points.len()
        ));
        // The label at the end of the curve, and the legend entry.
        c.raw(&format!(
            r##"<text x="{:.1}" y="{:.1}" font-size="11">{}</text>"##,
            x1 + 6.0,
            sy(last) + 4.0 + k as f64 * 12.0,
            esc(&curve.group)
        ));
        let (lx, ly) = (
            x0 + (k % 4) as f64 * 190.0,
            height - 26.0 + (k / 4) as f64 * 16.0,
        );
        c.raw(&format!(
            r##"<g class="legend"><line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="#222" stroke-width="2" stroke-dasharray="{dash}"/><text x="{:.1}" y="{:.1}">{}</text></g>"##,
            lx + 40.0,
            lx + 47.0,
            ly + 4.0,
            esc(&curve.group)
        ));
    }
    c.finish()
}
