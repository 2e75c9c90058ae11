//! The canonical layout of a study: syntax tree (and its comments) back to text.
//!
//! One statement per line, sections in a fixed order, keywords in lower case, definition names
//! aligned within a section, and every comment kept next to the statement it was written with.

use crate::syntax::ast::*;
use crate::syntax::source::Comment;
use std::fmt::Write;

/// Formats a whole study file.
pub fn format_study(file: &StudyFile, comments: &[Comment]) -> String {
    let lines = layout(file);
    attach_and_render(lines, comments)
}

/// `require …` / `exclude …` as one line of text.
pub fn step_text(step: &Step) -> String {
    match &step.kind {
        StepKind::Require(c) => format!("require {}", criterion_text(c)),
        StepKind::Exclude(c) => format!("exclude {}", criterion_text(c)),
        StepKind::Keep(Occurrence::Last) => "keep last entry".to_string(),
        StepKind::Keep(_) => "keep first entry".to_string(),
    }
}

/// One output line, with the source span its comments are attached by.
struct Line {
    indent: usize,
    text: String,
    span: Span,
    blank_before: bool,
}

fn section_order(kind: &SectionKind) -> usize {
    match kind {
        SectionKind::Concepts(_) => 0,
        SectionKind::Population(_) => 1,
        SectionKind::Arms(_) => 2,
        SectionKind::FollowUp(_) => 3,
        SectionKind::Covariates(_) => 4,
        SectionKind::Endpoints { .. } => 5,
        SectionKind::Output(_) => 6,
        SectionKind::Consent(_) => 7,
    }
}

fn layout(file: &StudyFile) -> Vec<Line> {
    let mut lines = vec![Line {
        indent: 0,
        text: format!("study {}", quote(&file.title.node)),
        span: file.title.span,
        blank_before: false,
    }];
    for field in &file.fields {
        let key = match field.key.node {
            HeaderKey::Version => "version",
            HeaderKey::Question => "question",
            HeaderKey::Description => "description",
            HeaderKey::Author => "author",
            HeaderKey::Acknowledge => "acknowledge",
        };
        let code = field.code.as_ref().map_or(String::new(), |c| {
            format!(" {}", c.node.to_ascii_uppercase())
        });
        lines.push(Line {
            indent: 1,
            text: format!("{key}{code} {}", quote(&field.value.node)),
            span: field.key.span.to(field.value.span),
            blank_before: false,
        });
    }
    let mut sections: Vec<&Section> = file.sections.iter().collect();
    sections.sort_by_key(|s| section_order(&s.kind));
    let mut endpoints_written = false;
    for section in sections {
        let header = |text: &str| Line {
            indent: 0,
            text: text.to_string(),
            span: section.span,
            blank_before: true,
        };
        match &section.kind {
            SectionKind::Concepts(defs) => {
                lines.push(header("concepts"));
                let width = name_width(defs.iter().map(|d| &d.name));
                for d in defs {
                    let domain = d
                        .domain
                        .as_ref()
                        .map_or(String::new(), |d| format!("{} ", d.node.keyword()));
                    let head = format!("{:w$} = {domain}", d.name.node, w = width);
                    let one_line = format!("{head}{}", concept_expr_text(&d.expr));
                    let text = if fits(&one_line) {
                        one_line
                    } else {
                        // One term a line, each operator under the `=`.
                        let under = " ".repeat(width + 1);
                        let mut t = format!("{head}{}", concept_term_text(&d.expr.first));
                        for (op, term) in &d.expr.rest {
                            let op = if *op == SetOp::Union { "|" } else { "-" };
                            write!(t, "\n{under}{op} {}", concept_term_text(term)).unwrap();
                        }
                        t
                    };
                    lines.push(item(text, d.span));
                }
            }
            SectionKind::Population(p) => {
                lines.push(header("population"));
                if let Some(index) = &p.index {
                    lines.push(item(index_text(index), index.span));
                }
                for step in &p.steps {
                    lines.push(item(step_text(step), step.span));
                }
            }
            SectionKind::Arms(arms) => {
                lines.push(header("exposure arms"));
                let width = name_width(arms.iter().map(|a| &a.name));
                for a in arms {
                    lines.push(item(
                        format!(
                            "{:w$} = {}",
                            a.name.node,
                            criterion_text(&a.criterion),
                            w = width
                        ),
                        a.span,
                    ));
                }
            }
            SectionKind::FollowUp(items) => {
                lines.push(header("follow-up"));
                for i in items {
                    lines.push(item(follow_up_text(i), i.span));
                }
            }
            SectionKind::Covariates(defs) => {
                lines.push(header("covariates"));
                let width = name_width(defs.iter().map(|d| &d.name));
                for d in defs {
                    lines.push(item(
                        format!(
                            "{:w$} = {}{}",
                            d.name.node,
                            covariate_text(&d.value),
                            if d.confounder.is_some() {
                                " as confounder"
                            } else {
                                ""
                            },
                            w = width
                        ),
                        d.span,
                    ));
                }
            }
            SectionKind::Endpoints { .. } => {
                if endpoints_written {
                    continue;
                }
                endpoints_written = true;
                lines.push(header("endpoints"));
                let all: Vec<&EndpointDef> = file
                    .sections
                    .iter()
                    .filter_map(|s| match &s.kind {
                        SectionKind::Endpoints { defs, .. } => Some(defs.iter()),
                        _ => None,
                    })
                    .flatten()
                    .collect();
                let width = name_width(all.iter().map(|d| &d.name));
                for d in all {
                    lines.push(item(
                        format!("{:w$} = {}", d.name.node, endpoint_text(d), w = width),
                        d.span,
                    ));
                }
            }
            SectionKind::Output(items) => {
                lines.push(header("output"));
                for i in items {
                    let text = match &i.kind {
                        OutputKind::MinCellCount(n) => format!("min cell count {}", n.node),
                        OutputKind::CohortId(n) => format!("cohort id {}", n.node),
                        OutputKind::Disclosure(n) => {
                            format!("disclosure policy {}", n.node.to_ascii_lowercase())
                        }
                        OutputKind::ExportedDates { exact: true } => {
                            "exported dates exact".to_string()
                        }
                        OutputKind::ExportedDates { exact: false } => {
                            "exported dates relative".to_string()
                        }
                        OutputKind::PersonIds {
                            pseudonymised: true,
                        } => "person ids pseudonymised".to_string(),
                        OutputKind::PersonIds {
                            pseudonymised: false,
                        } => "person ids original".to_string(),
                    };
                    lines.push(item(text, i.span));
                }
            }
            SectionKind::Consent(rule) => {
                lines.push(header("consent"));
                let text = match &rule.kind {
                    ConsentKind::NotRequired => "not required".to_string(),
                    ConsentKind::RequiredBy { query, from } => {
                        let mut t = format!("required by {}", event_query_text(query));
                        if let Some(d) = from {
                            write!(t, " for data from {}", d.node).unwrap();
                        }
                        t
                    }
                };
                lines.push(item(text, rule.span));
            }
        }
    }
    lines
}

/// Statements longer than this are broken over several lines where the language allows.
const MAX_LINE: usize = 100;

fn fits(text: &str) -> bool {
    2 + text.chars().count() <= MAX_LINE
}

fn item(text: String, span: Span) -> Line {
    Line {
        indent: 1,
        text,
        span,
        blank_before: false,
    }
}

/// Names are padded to the longest in their section, up to a limit, so `=` lines up.
fn name_width<'a>(names: impl Iterator<Item = &'a Name>) -> usize {
    names
        .map(|n| n.node.chars().count())
        .filter(|&w| w <= 24)
        .max()
        .unwrap_or(0)
}

fn last_line_width(text: &str) -> usize {
    text.rsplit('\n').next().unwrap_or("").chars().count()
}

/// End-of-line comments are aligned up to this column.
const MAX_COMMENT_COLUMN: usize = 64;

fn attach_and_render(lines: Vec<Line>, comments: &[Comment]) -> String {
    // Comments are attached by source position: own-line comments lead the next statement,
    // end-of-line comments trail the statement they follow.
    let mut by_start: Vec<usize> = (0..lines.len()).collect();
    by_start.sort_by_key(|&i| lines[i].span.start);
    let mut leading: Vec<Vec<&str>> = vec![Vec::new(); lines.len()];
    let mut trailing: Vec<Vec<&str>> = vec![Vec::new(); lines.len()];
    let mut at_end: Vec<&str> = Vec::new();
    for c in comments {
        let before = by_start.partition_point(|&i| lines[i].span.start <= c.span.start);
        if !c.own_line && before > 0 {
            let owner = by_start[before - 1];
            if c.span.start >= lines[owner].span.end {
                trailing[owner].push(&c.text);
            } else {
                leading[owner].push(&c.text);
            }
        } else if before < by_start.len() {
            leading[by_start[before]].push(&c.text);
        } else {
            at_end.push(&c.text);
        }
    }
    // End-of-line comments line up within a section, unless a line is too long to wait for.
    let mut comment_column = vec![0usize; lines.len()];
    let mut group_start = 0;
    for i in 0..=lines.len() {
        if i == lines.len() || (i > 0 && lines[i].blank_before) {
            let width = (group_start..i)
                .filter(|&j| !trailing[j].is_empty())
                .map(|j| 2 * lines[j].indent + last_line_width(&lines[j].text))
                .filter(|&w| w <= MAX_COMMENT_COLUMN)
                .max()
                .unwrap_or(0);
            comment_column[group_start..i].fill(width);
            group_start = i;
        }
    }
    let mut out = String::new();
    for (i, line) in lines.iter().enumerate() {
        if line.blank_before {
            out.push('\n');
        }
        let pad = "  ".repeat(line.indent);
        for c in &leading[i] {
            writeln!(out, "{pad}--{c}").unwrap();
        }
        out.push_str(&pad);
        out.push_str(&line.text.replace('\n', &format!("\n{pad}")));
        if !trailing[i].is_empty() {
            let joined: Vec<String> = trailing[i].iter().map(|c| format!("--{c}")).collect();
            let used = 2 * line.indent + last_line_width(&line.text);
            let gap = comment_column[i].saturating_sub(used) + 2;
            write!(out, "{}{}", " ".repeat(gap), joined.join(" ")).unwrap();
        }
        out.push('\n');
    }
    if !at_end.is_empty() {
        out.push('\n');
        for c in at_end {
            writeln!(out, "--{c}").unwrap();
        }
    }
    out
}

pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

pub fn concept_expr_text(e: &ConceptExpr) -> String {
    let mut out = concept_term_text(&e.first);
    for (op, t) in &e.rest {
        let op = if *op == SetOp::Union { "|" } else { "-" };
        write!(out, " {op} {}", concept_term_text(t)).unwrap();
    }
    out
}

fn concept_term_text(t: &ConceptTerm) -> String {
    let mut out = match &t.atom {
        ConceptAtom::Id { id, label } => match label {
            Some(l) => format!("{} {}", id.node, quote(&l.node)),
            None => id.node.clone(),
        },
        ConceptAtom::SourceCodes { vocabulary, codes } => {
            let codes: Vec<String> = codes.iter().map(|c| quote(&c.node)).collect();
            format!(
                "{} {}",
                vocabulary.node.to_ascii_lowercase(),
                codes.join(", ")
            )
        }
        ConceptAtom::ByName(n) => quote(&n.node),
        ConceptAtom::Group(inner) => format!("({})", concept_expr_text(inner)),
        ConceptAtom::Ref(n) => n.node.clone(),
    };
    if t.mapped {
        out.push_str(" mapped");
    }
    if t.descendants {
        out.push_str(" + descendants");
    }
    if t.sources {
        out.push_str(" + sources");
    }
    out
}

pub fn event_query_text(q: &EventQuery) -> String {
    let alternatives: Vec<String> = q.alternatives().map(event_alt_text).collect();
    alternatives.join(" | ")
}

fn event_alt_text(q: &EventQuery) -> String {
    let mut out = q.domain.node.keyword().to_string();
    if let Some(c) = &q.concepts {
        write!(out, " in {}", concept_expr_text(c)).unwrap();
    }
    for f in &q.filters {
        out.push(' ');
        out.push_str(&filter_text(f));
    }
    if let Some(era) = &q.era {
        out = format!(
            "era of {out} gap {} {}",
            era.gap.node,
            days_word(&era.gap.node)
        );
        if let Some(d) = &era.duration {
            out.push(' ');
            out.push_str(&filter_text(d));
        }
    }
    out
}

fn filter_text(f: &EventFilter) -> String {
    match &f.kind {
        FilterKind::Value(t) => format!("value {}", number_test_text(t)),
        FilterKind::ValueIn(c) => format!("value in {}", concept_expr_text(c)),
        FilterKind::AboveNormal => "value above normal".to_string(),
        FilterKind::BelowNormal => "value below normal".to_string(),
        FilterKind::UnitIn(c) => format!("unit in {}", concept_expr_text(c)),
        FilterKind::SourceIn(c) => format!("source in {}", concept_expr_text(c)),
        FilterKind::Modality(codes) => {
            let codes: Vec<String> = codes.iter().map(|c| c.node.to_ascii_uppercase()).collect();
            format!("modality {}", codes.join(" | "))
        }
        FilterKind::KindIn(c) => format!("kind in {}", concept_expr_text(c)),
        FilterKind::Duration(t) => format!("duration {} days", number_test_text(t)),
        FilterKind::SameVisit => "same visit".to_string(),
        FilterKind::FirstEver => "first ever".to_string(),
        FilterKind::Where(c) => format!("where ({})", criterion_text(c)),
    }
}

fn number_test_text(t: &NumberTest) -> String {
    match t {
        NumberTest::Compare { op, value } => format!("{} {}", op.symbol(), value.node),
        NumberTest::Between { low, high } => format!("between {} and {}", low.node, high.node),
    }
}

fn days_word(n: &str) -> &'static str {
    if n.trim_start_matches(['-', '+']) == "1" {
        "day"
    } else {
        "days"
    }
}

pub fn window_text(w: &Window) -> String {
    let text = phrase_text(w);
    if w.during_observation.is_some() {
        format!("{text} during observation")
    } else {
        text
    }
}

fn phrase_text(w: &Window) -> String {
    match &w.phrase {
        WindowPhrase::Bracket { start, end, anchor } => {
            let b = |b: &Bound| match b {
                Bound::Days(d) => d.clone(),
                Bound::MinusInfinity => "-inf".to_string(),
                Bound::PlusInfinity => "inf".to_string(),
            };
            let mut out = format!("[{}, {}] days", b(&start.node), b(&end.node));
            if let Some(a) = anchor {
                write!(out, " of {}", a.node.words()).unwrap();
            }
            out
        }
        WindowPhrase::DuringFollowUp => "during follow-up".to_string(),
        WindowPhrase::AnyTime { side: None } => "any time".to_string(),
        WindowPhrase::AnyTime {
            side: Some((side, a)),
        } => {
            let s = if *side == Side::Before {
                "before"
            } else {
                "after"
            };
            format!("any time {s} {}", a.node.words())
        }
        WindowPhrase::Within { days, anchor } => {
            format!(
                "within {} {} of {}",
                days.node,
                days_word(&days.node),
                anchor.node.words()
            )
        }
        WindowPhrase::Relative {
            days,
            relation,
            anchor,
        } => {
            let rel = match relation {
                Relation::Before => "before",
                Relation::OnOrBefore => "on or before",
                Relation::On => "on",
                Relation::OnOrAfter => "on or after",
                Relation::After => "after",
            };
            match days {
                Some(d) => format!(
                    "{} {} {rel} {}",
                    d.node,
                    days_word(&d.node),
                    anchor.node.words()
                ),
                None => format!("{rel} {}", anchor.node.words()),
            }
        }
    }
}

pub fn criterion_text(c: &Criterion) -> String {
    match &c.kind {
        CriterionKind::Or(parts) => parts
            .iter()
            .map(criterion_text)
            .collect::<Vec<_>>()
            .join(" or "),
        CriterionKind::And(parts) => parts
            .iter()
            .map(criterion_text)
            .collect::<Vec<_>>()
            .join(" and "),
        CriterionKind::Not(_) => {
            let mut prefix = String::new();
            let mut inner = c;
            while let CriterionKind::Not(x) = &inner.kind {
                prefix.push_str("not ");
                inner = x;
            }
            format!("{prefix}{}", criterion_text(inner))
        }
        CriterionKind::Group(inner) => format!("({})", criterion_text(inner)),
        CriterionKind::Observation(w) => match w {
            Some(w) => format!("continuous observation {}", window_text(w)),
            None => "continuous observation".to_string(),
        },
        CriterionKind::Events {
            quantifier,
            query,
            windows,
        } => {
            let mut out = String::new();
            if let Some(q) = quantifier {
                out.push_str(&quantifier_text(q));
                out.push(' ');
            }
            out.push_str(&event_query_text(query));
            for (i, w) in windows.iter().enumerate() {
                // The start is the default day: `starting` is written only to tell a second
                // window on the start from the first.
                let edge = match w.edge.as_ref().map(|e| e.node) {
                    Some(Edge::End) => "ending ",
                    Some(Edge::Start) if i > 0 => "starting ",
                    _ => "",
                };
                out.push(' ');
                out.push_str(edge);
                out.push_str(&window_text(&w.window));
            }
            out
        }
        CriterionKind::Sex(values) => {
            let v: Vec<String> = values.iter().map(|v| sex_text(&v.node)).collect();
            if v.len() == 1 {
                format!("sex is {}", v[0])
            } else {
                format!("sex in ({})", v.join(", "))
            }
        }
        CriterionKind::Compare { quantity, test } => {
            format!("{} {}", quantity.node.words(), literal_test_text(test))
        }
    }
}

fn sex_text(v: &SexValue) -> String {
    match v {
        SexValue::Male => "male".to_string(),
        SexValue::Female => "female".to_string(),
        SexValue::Unknown => "unknown".to_string(),
        SexValue::Concept(id) => id.clone(),
    }
}

fn literal_text(l: &Literal) -> &str {
    match l {
        Literal::Number(s) | Literal::Date(s) => s,
    }
}

fn literal_test_text(t: &LiteralTest) -> String {
    match t {
        LiteralTest::Compare { op, value } => {
            format!("{} {}", op.symbol(), literal_text(&value.node))
        }
        LiteralTest::Between { low, high } => {
            format!(
                "between {} and {}",
                literal_text(&low.node),
                literal_text(&high.node)
            )
        }
    }
}

fn distinct_text(d: Distinct) -> &'static str {
    match d {
        Distinct::Concepts => "distinct concepts",
        Distinct::Days => "distinct days",
        Distinct::Visits => "distinct visits",
    }
}

fn quantifier_text(q: &Quantifier) -> String {
    match &q.kind {
        QuantifierKind::Exists => "exists".to_string(),
        QuantifierKind::Count {
            op,
            n,
            distinct,
            of,
        } => {
            let op = match op {
                CountOp::AtLeast => "at least",
                CountOp::AtMost => "at most",
                CountOp::Exactly => "exactly",
            };
            let mut out = format!("{op} {}", n.node);
            if let Some(d) = distinct {
                write!(out, " {}", distinct_text(*d)).unwrap();
            }
            if *of {
                out.push_str(" of");
            }
            out
        }
    }
}

fn index_text(index: &IndexDef) -> String {
    let mut out = "index = ".to_string();
    match index.each_person.as_ref().map(|e| &e.node) {
        Some(EachPerson::ObservationStart) => out.push_str("each person at start of observation"),
        Some(EachPerson::Date(d)) => write!(out, "each person at {}", d.node).unwrap(),
        None => {}
    }
    if let Some(o) = &index.occurrence {
        out.push_str(match o.node {
            Occurrence::First => "first ",
            Occurrence::Last => "last ",
            Occurrence::All => "all ",
        });
    }
    if index.each_person.is_none() {
        out.push_str(&event_query_text(&index.query));
    }
    if index.options.is_empty() {
        return out;
    }
    let options: Vec<String> = index.options.iter().map(entry_option_text).collect();
    let one_line = format!("{out} {}", options.join(" "));
    if fits(&one_line) {
        return one_line;
    }
    for option in options {
        write!(out, "\n  {option}").unwrap();
    }
    out
}

fn entry_option_text(option: &EntryOption) -> String {
    let mut out = String::new();
    {
        match &option.kind {
            EntryOptionKind::Between(a, b) => {
                write!(out, "between {} and {}", a.node, b.node).unwrap()
            }
            EntryOptionKind::From(a) => write!(out, "from {}", a.node).unwrap(),
            EntryOptionKind::Until(b) => write!(out, "until {}", b.node).unwrap(),
            EntryOptionKind::Observation(w) => {
                write!(out, "with continuous observation {}", window_text(w)).unwrap()
            }
            EntryOptionKind::AnyObservation => out.push_str("with or without observation"),
        }
    }
    out
}

fn anchor_point_text(p: &AnchorPoint) -> String {
    match &p.offset {
        None => p.anchor.node.words().to_string(),
        Some(o) => {
            let (sign, n) = match o.node.strip_prefix('-') {
                Some(n) => ("-", n),
                None => ("+", o.node.as_str()),
            };
            format!("{} {sign} {n} {}", p.anchor.node.words(), days_word(n))
        }
    }
}

fn exit_text(e: &Exit) -> String {
    match &e.kind {
        ExitKind::ObservationEnd => "end of observation".to_string(),
        ExitKind::ExposureEnd {
            concepts,
            gap,
            extra,
        } => {
            let mut out = format!("end of exposure to {}", concept_expr_text(concepts));
            if let Some(g) = gap {
                write!(out, " gap {} {}", g.node, days_word(&g.node)).unwrap();
            }
            if let Some(x) = extra {
                write!(out, " + {} {}", x.node, days_word(&x.node)).unwrap();
            }
            out
        }
        ExitKind::Date(d) => d.node.clone(),
        ExitKind::Offset(p) => anchor_point_text(p),
        ExitKind::RecordEnd { extra } => match extra {
            None => "end of index record".to_string(),
            Some(x) => format!("end of index record + {} {}", x.node, days_word(&x.node)),
        },
        ExitKind::Event { first, query } => {
            let q = event_query_text(query);
            if *first {
                format!("first {q}")
            } else {
                q
            }
        }
    }
}

fn follow_up_text(i: &FollowUpItem) -> String {
    match &i.kind {
        FollowUpKind::From(p) => format!("from {}", anchor_point_text(p)),
        FollowUpKind::Until { exits, earliest } => {
            let list: Vec<String> = exits.iter().map(exit_text).collect();
            if *earliest || list.len() > 1 {
                let one_line = format!("until earliest of {}", list.join(", "));
                if fits(&one_line) {
                    one_line
                } else {
                    format!("until earliest of {}", list.join(",\n                  "))
                }
            } else {
                format!("until {}", list.join(""))
            }
        }
        FollowUpKind::Collapse(n) => {
            format!("collapse entries within {} {}", n.node, days_word(&n.node))
        }
        FollowUpKind::StudyPeriod { from, to } => {
            let mut out = "study period".to_string();
            if let Some(f) = from {
                write!(out, " from {}", f.node).unwrap();
            }
            if let Some(t) = to {
                write!(out, " to {}", t.node).unwrap();
            }
            out
        }
    }
}

fn with_window(mut text: String, w: &Option<Window>) -> String {
    if let Some(w) = w {
        text.push(' ');
        text.push_str(&window_text(w));
    }
    text
}

fn covariate_text(v: &CovariateValue) -> String {
    match v {
        CovariateValue::Interaction(names) => names
            .iter()
            .map(|n| n.node.as_str())
            .collect::<Vec<_>>()
            .join(" * "),
        CovariateValue::Count {
            distinct,
            query,
            window,
        } => {
            let d = distinct.map_or(String::new(), |d| format!("{} of ", distinct_text(d)));
            with_window(format!("count {d}{}", event_query_text(query)), window)
        }
        CovariateValue::Aggregate {
            aggregate,
            concept,
            query,
            window,
        } => {
            let c = if *concept { " concept" } else { "" };
            with_window(
                format!(
                    "{} value{c} of {}",
                    aggregate.keyword(),
                    event_query_text(query)
                ),
                window,
            )
        }
        CovariateValue::DaysSince {
            last,
            query,
            window,
        } => {
            let which = if *last { "last" } else { "first" };
            with_window(
                format!("days since {which} {}", event_query_text(query)),
                window,
            )
        }
        CovariateValue::Flag(c) => criterion_text(c),
        CovariateValue::Sex => "sex".to_string(),
        CovariateValue::Quantity(q) => q.node.words(),
    }
}

fn endpoint_text(d: &EndpointDef) -> String {
    let kind = match d.kind.as_ref().map(|k| k.node) {
        Some(EndpointKind::First) => "first ",
        Some(EndpointKind::Exists) => "exists ",
        None => "",
    };
    with_window(format!("{kind}{}", event_query_text(&d.query)), &d.window)
}
