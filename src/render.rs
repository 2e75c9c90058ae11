//! Renders diagnostics as `file:line:column`, the source line, a caret under the span, and help:
//! the one place diagnostics become text, for the command line and the REPL.
//!
//! Written here rather than with a diagnostics crate because study files may hold lines of
//! megabytes: only a window of a long line around the span is shown.

use crate::diag::{Diagnostic, Severity};
use crate::printable::{escaped, is_unsafe};
use crate::syntax::ast::Span;
use crate::syntax::source::{floor_char_boundary, line_col};
use anstyle::{AnsiColor, Style};
use std::fmt::Write;

/// How many characters of a source line are shown around a span.
const SHOWN_CHARS: usize = 120;

const ERROR: Style = AnsiColor::Red.on_default().bold();
const WARNING: Style = AnsiColor::Yellow.on_default().bold();
const NOTE: Style = AnsiColor::Blue.on_default().bold();
const BOLD: Style = Style::new().bold();

/// One diagnostic as text with ANSI styles (stripped by `anstream` where colour is off).
pub fn render(d: &Diagnostic, path: &str, text: &str) -> String {
    let path = escaped(path);
    let (kind, style) = match d.severity {
        Severity::Error => ("error", ERROR),
        Severity::Warning => ("warning", WARNING),
    };
    let mut out = String::new();
    writeln!(
        out,
        "{style}{kind}[{}]{style:#}{BOLD}: {}{BOLD:#}",
        d.code.id(),
        escaped(&d.message)
    )
    .unwrap();
    let Some(span) = d.span else {
        writeln!(out, "  {NOTE}-->{NOTE:#} {path}").unwrap();
        if let Some(h) = &d.help {
            writeln!(out, "  {NOTE}={NOTE:#} {BOLD}help{BOLD:#}: {}", escaped(h)).unwrap();
        }
        return out;
    };
    let mut snippets = vec![(span, d.label.clone().unwrap_or_default(), '^', style)];
    snippets.extend(
        d.others
            .iter()
            .map(|l| (l.span, l.message.clone(), '-', NOTE)),
    );
    let width = snippets
        .iter()
        .map(|(s, ..)| line_col(text, s.start).0.to_string().len())
        .max()
        .unwrap_or(1);
    let pad = " ".repeat(width);
    let (line, col) = line_col(text, span.start);
    writeln!(out, "{pad}{NOTE}-->{NOTE:#} {path}:{line}:{col}").unwrap();
    for (i, (s, label, mark, mark_style)) in snippets.iter().enumerate() {
        let (line, col) = line_col(text, s.start);
        if i > 0 {
            writeln!(out, "{pad}{NOTE}:::{NOTE:#} {path}:{line}:{col}").unwrap();
        }
        let (shown, caret_at, caret_len) = excerpt(text, *s);
        writeln!(out, "{pad} {NOTE}|{NOTE:#}").unwrap();
        writeln!(out, "{NOTE}{line:>width$} |{NOTE:#} {shown}").unwrap();
        let marks = mark.to_string().repeat(caret_len.max(1));
        let label = if label.is_empty() {
            String::new()
        } else {
            format!(" {}", escaped(label))
        };
        writeln!(
            out,
            "{pad} {NOTE}|{NOTE:#} {}{mark_style}{marks}{label}{mark_style:#}",
            " ".repeat(caret_at)
        )
        .unwrap();
    }
    if let Some(h) = &d.help {
        writeln!(
            out,
            "{pad} {NOTE}={NOTE:#} {BOLD}help{BOLD:#}: {}",
            escaped(h)
        )
        .unwrap();
    }
    out
}

/// The part of the span's first line to show, where the caret starts in it, and its length.
fn excerpt(text: &str, span: Span) -> (String, usize, usize) {
    let start = floor_char_boundary(text, span.start.min(text.len()));
    let line_start = text[..start].rfind('\n').map_or(0, |n| n + 1);
    let line_end = text[start..].find('\n').map_or(text.len(), |n| start + n);
    let end = floor_char_boundary(text, span.end.clamp(start, line_end));
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| if c == '\t' || is_unsafe(c) { ' ' } else { c })
            .collect()
    };
    let before: Vec<char> = clean(&text[line_start..start]).chars().collect();
    let inside = text[start..end].chars().count();
    let after: Vec<char> = clean(&text[end..line_end]).chars().collect();
    let inside_text: Vec<char> = clean(&text[start..end]).chars().collect();

    if before.len() + inside_text.len() + after.len() <= SHOWN_CHARS {
        let shown: String = before.iter().chain(&inside_text).chain(&after).collect();
        return (shown, before.len(), inside.max(1));
    }
    // Keep up to SHOWN_CHARS characters: some context before the span, the span, some after.
    let lead = before.len().min(SHOWN_CHARS / 3);
    let span_shown = inside_text.len().min(SHOWN_CHARS / 2);
    let tail = after
        .len()
        .min(SHOWN_CHARS.saturating_sub(lead + span_shown));
    let mut shown = String::new();
    let mut caret_at = 0;
    if lead < before.len() {
        shown.push('…');
        caret_at += 1;
    }
    shown.extend(&before[before.len() - lead..]);
    caret_at += lead;
    shown.extend(&inside_text[..span_shown]);
    if span_shown < inside_text.len() {
        shown.push('…');
    }
    shown.extend(&after[..tail]);
    if tail < after.len() {
        shown.push('…');
    }
    let caret_len = if inside == 0 {
        1
    } else {
        span_shown + usize::from(span_shown < inside_text.len())
    };
    (shown, caret_at, caret_len)
}

/// Several diagnostics rendered one after another, each followed by a blank line.
pub fn render_all(diagnostics: &[Diagnostic], path: &str, text: &str) -> String {
    diagnostics
        .iter()
        .map(|d| render(d, path, text) + "\n")
        .collect()
}
