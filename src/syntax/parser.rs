//! Turns study text into the syntax tree, with pest doing the recognising; pest stays in here.

use super::ast::*;
use crate::diag::{Code, Diagnostic};
use pest::error::{ErrorVariant, InputLocation};
use pest::iterators::Pair;
use pest::Parser;

#[derive(pest_derive::Parser)]
#[grammar = "../grammar/study.pest"]
struct StudyParser;

/// How deep parentheses may nest. Deeper input is refused before pest sees it, so recursion in
/// the parser, the checker and in dropping the tree stays shallow.
pub const MAX_NESTING: usize = 64;

/// Parses a study; on failure returns the one syntax error found (pest stops at the first).
pub fn parse_study(text: &str) -> Result<StudyFile, Diagnostic> {
    if text.trim().is_empty() || only_comments(text) {
        return Err(Diagnostic::new(Code::EmptyFile, "the study file is empty")
            .help("a study starts with its title, e.g. `study \"Statins and myopathy\"`"));
    }
    check_nesting(text)?;
    let mut pairs = StudyParser::parse(Rule::file, text).map_err(|e| syntax_error(e, text))?;
    let file = pairs.next().expect("the file rule always yields one pair");
    Ok(build_file(file))
}

/// The names of the grammar's rules that appear in the syntax tree of `text` (a whole study),
/// or `None` when it does not parse. For the test that docs/language.md shows every rule.
pub fn rules_used(text: &str) -> Option<std::collections::BTreeSet<String>> {
    let pairs = StudyParser::parse(Rule::file, text).ok()?;
    Some(
        pairs
            .flatten()
            .map(|p| format!("{:?}", p.as_rule()))
            .collect(),
    )
}

/// The names of every rule of the grammar that can appear in a syntax tree.
pub fn all_rules() -> Vec<String> {
    Rule::all_rules().iter().map(|r| format!("{r:?}")).collect()
}

fn only_comments(text: &str) -> bool {
    text.lines().all(|l| {
        let t = l.trim();
        t.is_empty() || t.starts_with("--")
    })
}

/// Refuses parentheses nested deeper than `MAX_NESTING`, and reports a `not` chain of that length.
fn check_nesting(text: &str) -> Result<(), Diagnostic> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut nots = 0usize;
    let mut i = 0;
    let mut in_string = false;
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            match b {
                b'\\' => i += 1,
                b'"' | b'\n' => in_string = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => in_string = true,
                b'-' if bytes.get(i + 1) == Some(&b'-') => {
                    while i < bytes.len() && bytes[i] != b'\n' {
                        i += 1;
                    }
                    continue;
                }
                b'(' => {
                    depth += 1;
                    if depth > MAX_NESTING {
                        return Err(Diagnostic::new(
                            Code::TooDeep,
                            format!("parentheses are nested more than {MAX_NESTING} deep"),
                        )
                        .at(Span::new(i, i + 1))
                        .label("too deep here")
                        .help("split the criterion into several `require` or `exclude` lines"));
                    }
                }
                b')' => depth = depth.saturating_sub(1),
                b if b.is_ascii_alphanumeric() || b == b'_' => {
                    let start = i;
                    while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_')
                    {
                        i += 1;
                    }
                    if text[start..i].eq_ignore_ascii_case("not") {
                        nots += 1;
                        if nots > MAX_NESTING {
                            return Err(Diagnostic::new(
                                Code::TooDeep,
                                format!("more than {MAX_NESTING} `not` in a row"),
                            )
                            .at(Span::new(start, i))
                            .label("too many here")
                            .help("two `not` cancel out: keep one or none"));
                        }
                    } else {
                        nots = 0;
                    }
                    continue;
                }
                b if b.is_ascii_whitespace() => {}
                _ => nots = 0,
            }
        }
        i += 1;
    }
    Ok(())
}

fn syntax_error(error: pest::error::Error<Rule>, text: &str) -> Diagnostic {
    let at = match error.location {
        InputLocation::Pos(p) => p,
        InputLocation::Span((s, _)) => s,
    };
    let (expected, help) = match &error.variant {
        ErrorVariant::ParsingError { positives, .. } => describe_expected(positives),
        ErrorVariant::CustomError { message } => (message.clone(), None),
    };
    let (found, len) = token_at(text, at);
    let word = text[at.min(text.len())..at.min(text.len()) + len].to_ascii_lowercase();
    let positives: &[Rule] = match &error.variant {
        ErrorVariant::ParsingError { positives, .. } => positives,
        ErrorVariant::CustomError { .. } => &[],
    };
    let rest_of_line = text[at.min(text.len())..].split('\n').next().unwrap_or("");
    if rest_of_line.starts_with('"') && !closes_string(&rest_of_line[1..]) {
        return Diagnostic::new(Code::Syntax, "this quoted text is not closed on its line")
            .at(Span::new(at, at + 1))
            .label("opened here")
            .help("close it with `\"` on the same line; quoted text cannot span lines");
    }
    let help = if word == "-"
        && positives
            .iter()
            .any(|r| matches!(r, Rule::concept_expr | Rule::concept_term))
    {
        Some(
            "concept ids are never negative; to remove concepts from a set, write `set - 4123`"
                .to_string(),
        )
    } else if super::KEYWORDS.contains(&word.as_str())
        && positives.iter().any(|r| {
            matches!(
                r,
                Rule::concept_ref | Rule::vocabulary_name | Rule::concept_expr | Rule::concept_term
            )
        })
    {
        Some(format!(
            "`{word}` is a keyword, so it cannot name a concept set; rename the set, e.g. `{word}_codes`"
        ))
    } else if word.eq_ignore_ascii_case("where") && {
        let line_start = text[..at.min(text.len())].rfind('\n').map_or(0, |n| n + 1);
        text[line_start..at.min(text.len())]
            .to_ascii_lowercase()
            .contains(" with ")
    } {
        Some("`where ( … )` filters the event itself, so it comes before `with continuous observation …`, e.g. `index = first drug in x where (…) with continuous observation [-365, 0] days`".to_string())
    } else if WINDOW_WORDS.contains(&word.as_str()) && !positives.contains(&Rule::window) {
        Some("no window can stand here: the index event is the event itself (limit it with `between`, `from`, `until` or `with continuous observation`), and elsewhere a window comes after the event and its filters".to_string())
    } else {
        help
    };
    let mut d = Diagnostic::new(Code::Syntax, format!("expected {expected}, found {found}"))
        .at(Span::new(at, at + len))
        .label("unexpected here");
    if let Some(h) = help {
        d = d.help(h);
    }
    d
}

fn closes_string(rest: &str) -> bool {
    let mut escaped = false;
    for c in rest.chars() {
        match c {
            '\\' if !escaped => escaped = true,
            '"' if !escaped => return true,
            _ => escaped = false,
        }
    }
    false
}

/// Words that start a window.
const WINDOW_WORDS: &[&str] = &["on", "before", "after", "[", "within", "during", "any"];

/// A short description of the token starting at `at`, and its length in bytes.
fn token_at(text: &str, at: usize) -> (String, usize) {
    let rest = &text[at.min(text.len())..];
    let Some(first) = rest.chars().next() else {
        return ("the end of the file".to_string(), 0);
    };
    let len = if first.is_alphanumeric() || first == '_' {
        rest.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '-' || c == '.'))
            .unwrap_or(rest.len())
    } else {
        first.len_utf8()
    };
    let token: String = rest[..len].chars().take(40).collect();
    let shown = if token.chars().count() < rest[..len].chars().count() {
        format!("{token}…")
    } else {
        token
    };
    (format!("`{}`", shown.escape_debug()), len)
}

/// The words a user would recognise for what the parser wanted next.
fn describe_expected(rules: &[Rule]) -> (String, Option<String>) {
    let mut words: Vec<String> = Vec::new();
    for rule in rules {
        let w = rule_words(*rule);
        if !words.contains(&w) {
            words.push(w);
        }
    }
    // Section keywords are always possible after a statement; name them last, as one item.
    let sections = [
        "`concepts`",
        "`population`",
        "`exposure`",
        "`follow-up`",
        "`covariates`",
        "`endpoints`",
        "`endpoint`",
        "`output`",
        "`consent`",
    ];
    let had_sections = words.iter().any(|w| sections.contains(&w.as_str()));
    words.retain(|w| !sections.contains(&w.as_str()));
    words.sort();
    if had_sections {
        words.push("a new section".to_string());
    }
    let help = if rules
        .iter()
        .any(|r| matches!(r, Rule::window | Rule::bracket_window))
    {
        Some("a window says when, e.g. `[-365, -1] days`, `on index`, `before index` or `during follow-up`".to_string())
    } else if rules.contains(&Rule::EOI) {
        Some("a study has the sections `concepts`, `population`, `exposure arms`, `follow-up`, `covariates`, `endpoints`, `output` and `consent`".to_string())
    } else if rules.contains(&Rule::domain) {
        Some("event domains are condition, drug, procedure, measurement, observation, visit, death, device, specimen, observation period, drug era, condition era, episode, image occurrence and image feature".to_string())
    } else {
        None
    };
    let text = match words.len() {
        0 => "something else".to_string(),
        1 => words[0].clone(),
        n if n <= 8 => format!("one of {}", words.join(", ")),
        _ => format!("one of {}, …", words[..8].join(", ")),
    };
    (text, help)
}

fn rule_words(rule: Rule) -> String {
    let name = format!("{rule:?}");
    if let Some(kw) = name.strip_prefix("kw_") {
        return format!("`{}`", kw.replace('_', "-"));
    }
    let words = match rule {
        Rule::EOI => "the end of the file",
        Rule::concept_modifier | Rule::descendants_mod => "`+ descendants` or `mapped`",
        Rule::name | Rule::name_chars => "a name",
        Rule::concept_ref | Rule::vocabulary_name => "a concept set name",
        Rule::string => "a quoted text",
        Rule::integer => "a whole number",
        Rule::number => "a number",
        Rule::date => "a date (YYYY-MM-DD)",
        Rule::bound => "a number of days",
        Rule::domain => "an event domain (`drug`, `condition`, …)",
        Rule::window | Rule::bracket_window => "a window",
        Rule::anchor => "an anchor (`index`, `follow-up start`, …)",
        Rule::cmp_op => "a comparison (`>=`, `<`, `=`, …)",
        Rule::concept_expr | Rule::concept_term => "a concept set",
        Rule::criterion | Rule::conjunction | Rule::negation => "a criterion",
        Rule::set_op => "`|` or `-`",
        Rule::occurrence => "`first`, `last` or `all`",
        Rule::header_key => "`version`, `question`, `description` or `author`",
        Rule::sex_value => "`male`, `female`, `unknown` or a concept id",
        Rule::quantity => "`age at`, `calendar age at`, `year of` or `date of`",
        _ => return name.replace('_', " "),
    };
    words.to_string()
}

// -------------------------------------------------------------------------------------------------
// Building the tree. The grammar guarantees each pair's shape, so the walkers index children by
// position; a mismatch is a bug in this file, never a user error.

/// The pair's span without the white space and comments pest counts at the end of rules that
/// end in a repetition.
fn span(pair: &Pair<Rule>) -> Span {
    let s = pair.as_span();
    let text = s.as_str();
    let mut end = text.len();
    loop {
        end = text[..end].trim_end().len();
        let line_start = text[..end].rfind('\n').map_or(0, |n| n + 1);
        match comment_start(&text[line_start..end]) {
            Some(at) => end = line_start + at,
            None => break,
        }
    }
    Span::new(s.start(), s.start() + end)
}

/// Where a `--` comment starts in one line of text, outside quoted text.
fn comment_start(line: &str) -> Option<usize> {
    let bytes = line.as_bytes();
    let mut in_string = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if in_string => i += 1,
            b'"' => in_string = !in_string,
            b'-' if !in_string && bytes.get(i + 1) == Some(&b'-') => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

fn text(pair: &Pair<Rule>) -> Spanned<String> {
    Spanned::new(pair.as_str().to_string(), span(pair))
}

fn string_value(pair: &Pair<Rule>) -> Spanned<String> {
    let inner = pair
        .clone()
        .into_inner()
        .next()
        .map(|p| p.as_str())
        .unwrap_or("");
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(other) => out.push(other),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    Spanned::new(out, span(pair))
}

fn build_file(pair: Pair<Rule>) -> StudyFile {
    let mut title = None;
    let mut fields = Vec::new();
    let mut sections = Vec::new();
    for p in pair.into_inner() {
        match p.as_rule() {
            Rule::header => {
                for h in p.into_inner() {
                    match h.as_rule() {
                        Rule::string => title = Some(string_value(&h)),
                        Rule::header_field => fields.push(build_header_field(h)),
                        _ => {}
                    }
                }
            }
            Rule::EOI => {}
            _ => sections.push(build_section(p)),
        }
    }
    StudyFile {
        title: title.expect("header has a title"),
        fields,
        sections,
    }
}

fn build_header_field(pair: Pair<Rule>) -> HeaderField {
    let mut inner = pair.into_inner();
    let key = inner.next().unwrap();
    let kw = match key.as_rule() {
        Rule::kw_acknowledge => key.clone(),
        _ => key.clone().into_inner().next().unwrap(),
    };
    let k = match kw.as_rule() {
        Rule::kw_version => HeaderKey::Version,
        Rule::kw_question => HeaderKey::Question,
        Rule::kw_description => HeaderKey::Description,
        Rule::kw_acknowledge => HeaderKey::Acknowledge,
        _ => HeaderKey::Author,
    };
    let mut next = inner.next().unwrap();
    let mut code = None;
    if next.as_rule() == Rule::warning_code {
        code = Some(text(&next));
        next = inner.next().unwrap();
    }
    HeaderField {
        key: Spanned::new(k, span(&key)),
        code,
        value: string_value(&next),
    }
}

fn build_section(pair: Pair<Rule>) -> Section {
    let rule = pair.as_rule();
    let mut inner = pair.into_inner().peekable();
    let keyword = inner.next().unwrap();
    let mut sp = span(&keyword);
    let kind = match rule {
        Rule::concepts_section => SectionKind::Concepts(inner.map(build_concept_def).collect()),
        Rule::population_section => {
            let mut index = None;
            let mut steps = Vec::new();
            for p in inner {
                match p.as_rule() {
                    Rule::index_def => index = Some(build_index(p)),
                    _ => steps.push(build_step(p)),
                }
            }
            SectionKind::Population(Population { index, steps })
        }
        Rule::arms_section => {
            let second = inner.next().unwrap();
            sp = sp.to(span(&second));
            SectionKind::Arms(
                inner
                    .map(|p| {
                        let s = span(&p);
                        let mut i = p.into_inner();
                        let name = text(&i.next().unwrap());
                        ArmDef {
                            name,
                            criterion: build_criterion(i.next().unwrap()),
                            span: s,
                        }
                    })
                    .collect(),
            )
        }
        Rule::follow_up_section => SectionKind::FollowUp(inner.map(build_follow_up_item).collect()),
        Rule::covariates_section => SectionKind::Covariates(inner.map(build_covariate).collect()),
        Rule::endpoints_section => SectionKind::Endpoints {
            defs: inner.map(build_endpoint).collect(),
            single: false,
        },
        Rule::endpoint_item => SectionKind::Endpoints {
            defs: vec![build_endpoint(inner.next().unwrap())],
            single: true,
        },
        Rule::output_section => SectionKind::Output(
            inner
                .map(|p| {
                    let s = span(&p);
                    let kind = match p.as_rule() {
                        Rule::min_cell_count => {
                            OutputKind::MinCellCount(text(&p.into_inner().last().unwrap()))
                        }
                        Rule::cohort_id => {
                            OutputKind::CohortId(text(&p.into_inner().last().unwrap()))
                        }
                        Rule::disclosure => {
                            OutputKind::Disclosure(text(&p.into_inner().last().unwrap()))
                        }
                        Rule::exported_dates => OutputKind::ExportedDates {
                            exact: p.into_inner().last().unwrap().as_rule() == Rule::kw_exact,
                        },
                        _ => OutputKind::PersonIds {
                            pseudonymised: p.into_inner().last().unwrap().as_rule()
                                == Rule::kw_pseudonymised,
                        },
                    };
                    OutputItem { kind, span: s }
                })
                .collect(),
        ),
        Rule::consent_section => {
            let rule_pair = inner.next().unwrap();
            let s = span(&rule_pair);
            let r = rule_pair.into_inner().next().unwrap();
            let kind = match r.as_rule() {
                Rule::not_required => ConsentKind::NotRequired,
                _ => {
                    let mut query = None;
                    let mut from = None;
                    for p in r.into_inner() {
                        match p.as_rule() {
                            Rule::event_query => query = Some(build_event_query(p)),
                            Rule::consent_from => {
                                from = Some(text(&p.into_inner().last().unwrap()))
                            }
                            _ => {}
                        }
                    }
                    ConsentKind::RequiredBy {
                        query: query.unwrap(),
                        from,
                    }
                }
            };
            SectionKind::Consent(ConsentRule { kind, span: s })
        }
        other => unreachable!("not a section: {other:?}"),
    };
    Section { kind, span: sp }
}

fn build_concept_def(pair: Pair<Rule>) -> ConceptDef {
    let s = span(&pair);
    let mut name = None;
    let mut domain = None;
    let mut expr = None;
    for p in pair.into_inner() {
        match p.as_rule() {
            Rule::name => name = Some(text(&p)),
            Rule::domain => domain = Some(build_domain(p)),
            Rule::concept_expr => expr = Some(build_concept_expr(p)),
            _ => {}
        }
    }
    ConceptDef {
        name: name.unwrap(),
        domain,
        expr: expr.unwrap(),
        span: s,
    }
}

fn build_concept_expr(pair: Pair<Rule>) -> ConceptExpr {
    let s = span(&pair);
    let mut inner = pair.into_inner();
    let first = build_concept_term(inner.next().unwrap());
    let mut rest = Vec::new();
    while let Some(op) = inner.next() {
        let op = if op.as_str() == "|" {
            SetOp::Union
        } else {
            SetOp::Minus
        };
        rest.push((op, build_concept_term(inner.next().unwrap())));
    }
    ConceptExpr {
        first,
        rest,
        span: s,
    }
}

fn build_concept_term(pair: Pair<Rule>) -> ConceptTerm {
    let s = span(&pair);
    let mut inner = pair.into_inner();
    let atom_pair = inner.next().unwrap();
    let atom = match atom_pair.as_rule() {
        Rule::concept_id_item => {
            let mut i = atom_pair.into_inner();
            let id = text(&i.next().unwrap());
            let label = i.next().map(|l| string_value(&l));
            ConceptAtom::Id { id, label }
        }
        Rule::source_codes => {
            let mut i = atom_pair.into_inner();
            let vocabulary = text(&i.next().unwrap());
            ConceptAtom::SourceCodes {
                vocabulary,
                codes: i.map(|c| string_value(&c)).collect(),
            }
        }
        Rule::concept_name_item => {
            ConceptAtom::ByName(string_value(&atom_pair.into_inner().next().unwrap()))
        }
        Rule::concept_group => ConceptAtom::Group(Box::new(build_concept_expr(
            atom_pair.into_inner().next().unwrap(),
        ))),
        _ => ConceptAtom::Ref(text(&atom_pair)),
    };
    let mut descendants = false;
    let mut mapped = false;
    let mut sources = false;
    for m in inner {
        match m.into_inner().next().unwrap().as_rule() {
            Rule::descendants_mod => descendants = true,
            Rule::sources_mod => sources = true,
            _ => mapped = true,
        }
    }
    ConceptTerm {
        atom,
        descendants,
        mapped,
        sources,
        span: s,
    }
}

fn build_domain(pair: Pair<Rule>) -> Spanned<Domain> {
    let s = span(&pair);
    let d = match pair.into_inner().next().unwrap().as_rule() {
        Rule::drug_era => Domain::DrugEra,
        Rule::condition_era => Domain::ConditionEra,
        Rule::observation_period => Domain::ObservationPeriod,
        Rule::image_occurrence => Domain::ImageOccurrence,
        Rule::image_feature => Domain::ImageFeature,
        Rule::kw_condition => Domain::Condition,
        Rule::kw_drug => Domain::Drug,
        Rule::kw_procedure => Domain::Procedure,
        Rule::kw_measurement => Domain::Measurement,
        Rule::kw_observation => Domain::Observation,
        Rule::kw_visit => Domain::Visit,
        Rule::kw_death => Domain::Death,
        Rule::kw_device => Domain::Device,
        Rule::kw_specimen => Domain::Specimen,
        _ => Domain::Episode,
    };
    Spanned::new(d, s)
}

fn build_event_query(pair: Pair<Rule>) -> EventQuery {
    let s = span(&pair);
    let mut alternatives = pair.into_inner().map(build_event_alt);
    let mut first = alternatives.next().expect("a query has one alternative");
    first.span = s;
    first.also = alternatives.collect();
    first
}

fn build_event_alt(pair: Pair<Rule>) -> EventQuery {
    let s = span(&pair);
    let mut inner = pair.into_inner().peekable();
    if inner.peek().is_some_and(|p| p.as_rule() == Rule::era_of) {
        let era = inner.next().unwrap();
        let era_span = span(&era);
        let mut records = build_event_parts(era.clone().into_inner(), era_span);
        let mut gap = None;
        let mut duration = None;
        for p in era.into_inner() {
            match p.as_rule() {
                Rule::era_gap => gap = Some(text(&p.into_inner().nth(1).unwrap())),
                Rule::duration_filter if gap.is_some() => duration = Some(build_filter(p)),
                _ => {}
            }
        }
        records.era = Some(EraSpec {
            gap: gap.expect("the grammar requires a gap"),
            duration,
            span: era_span,
        });
        records.span = s;
        return records;
    }
    build_event_parts(inner, s)
}

/// A domain, its concepts and filters, from the pairs of an event alternative (the parts of
/// `era of` after the gap left out).
fn build_event_parts<'a>(pairs: impl Iterator<Item = Pair<'a, Rule>>, s: Span) -> EventQuery {
    let mut domain = None;
    let mut concepts = None;
    let mut filters = Vec::new();
    for p in pairs {
        match p.as_rule() {
            Rule::domain => domain = Some(build_domain(p)),
            Rule::kw_in | Rule::kw_era | Rule::kw_of => {}
            Rule::era_gap => break,
            Rule::concept_expr => concepts = Some(build_concept_expr(p)),
            _ => filters.push(build_filter(p)),
        }
    }
    EventQuery {
        domain: domain.unwrap(),
        concepts,
        filters,
        span: s,
        also: Vec::new(),
        era: None,
    }
}

fn build_filter(pair: Pair<Rule>) -> EventFilter {
    let s = span(&pair);
    let rule = pair.as_rule();
    let kind = match rule {
        Rule::value_filter => {
            let p = pair.into_inner().nth(1).unwrap();
            match p.as_rule() {
                Rule::value_in => {
                    FilterKind::ValueIn(build_concept_expr(p.into_inner().nth(1).unwrap()))
                }
                Rule::above_normal => FilterKind::AboveNormal,
                Rule::below_normal => FilterKind::BelowNormal,
                _ => FilterKind::Value(build_number_test(p)),
            }
        }
        Rule::unit_filter => {
            FilterKind::UnitIn(build_concept_expr(pair.into_inner().nth(2).unwrap()))
        }
        Rule::source_filter => {
            FilterKind::SourceIn(build_concept_expr(pair.into_inner().nth(2).unwrap()))
        }
        Rule::kind_filter => {
            FilterKind::KindIn(build_concept_expr(pair.into_inner().nth(2).unwrap()))
        }
        Rule::modality_filter => FilterKind::Modality(
            pair.into_inner()
                .filter(|p| p.as_rule() == Rule::modality_code)
                .map(|p| text(&p))
                .collect(),
        ),
        Rule::duration_filter => {
            FilterKind::Duration(build_number_test(pair.into_inner().nth(1).unwrap()))
        }
        Rule::same_visit => FilterKind::SameVisit,
        Rule::first_ever => FilterKind::FirstEver,
        _ => FilterKind::Where(Box::new(build_criterion(pair.into_inner().nth(1).unwrap()))),
    };
    EventFilter { kind, span: s }
}

fn build_number_test(pair: Pair<Rule>) -> NumberTest {
    let p = pair.into_inner().next().unwrap();
    match p.as_rule() {
        Rule::compare_number => {
            let mut i = p.into_inner();
            let op = cmp_op(i.next().unwrap().as_str());
            NumberTest::Compare {
                op,
                value: text(&i.next().unwrap()),
            }
        }
        _ => {
            let nums: Vec<_> = p
                .into_inner()
                .filter(|p| p.as_rule() == Rule::number)
                .collect();
            NumberTest::Between {
                low: text(&nums[0]),
                high: text(&nums[1]),
            }
        }
    }
}

fn cmp_op(s: &str) -> CmpOp {
    match s {
        "<" => CmpOp::Lt,
        "<=" => CmpOp::Le,
        "=" => CmpOp::Eq,
        "!=" => CmpOp::Ne,
        ">=" => CmpOp::Ge,
        _ => CmpOp::Gt,
    }
}

fn build_window(pair: Pair<Rule>) -> Window {
    let s = span(&pair);
    let mut parts = pair.into_inner();
    let p = parts.next().unwrap();
    let during_observation = parts
        .find(|c| c.as_rule() == Rule::during_observation)
        .map(|c| span(&c));
    let phrase = match p.as_rule() {
        Rule::bracket_window => {
            let mut bounds = Vec::new();
            let mut anchor = None;
            for c in p.into_inner() {
                match c.as_rule() {
                    Rule::bound => bounds.push(build_bound(&c)),
                    Rule::anchor => anchor = Some(build_anchor(c)),
                    _ => {}
                }
            }
            let end = bounds.pop().unwrap();
            let start = bounds.pop().unwrap();
            WindowPhrase::Bracket { start, end, anchor }
        }
        Rule::during_follow_up => WindowPhrase::DuringFollowUp,
        Rule::any_time => {
            let mut side = None;
            let mut anchor = None;
            for c in p.into_inner() {
                match c.as_rule() {
                    Rule::kw_before => side = Some(Side::Before),
                    Rule::kw_after => side = Some(Side::After),
                    Rule::anchor => anchor = Some(build_anchor(c)),
                    _ => {}
                }
            }
            WindowPhrase::AnyTime {
                side: side.zip(anchor),
            }
        }
        Rule::within_window => {
            let mut days = None;
            let mut anchor = None;
            for c in p.into_inner() {
                match c.as_rule() {
                    Rule::integer => days = Some(text(&c)),
                    Rule::anchor => anchor = Some(build_anchor(c)),
                    _ => {}
                }
            }
            WindowPhrase::Within {
                days: days.unwrap(),
                anchor: anchor.unwrap(),
            }
        }
        _ => {
            let mut days = None;
            let mut relation = Relation::On;
            let mut anchor = None;
            for c in p.into_inner() {
                match c.as_rule() {
                    Rule::integer => days = Some(text(&c)),
                    Rule::relation => {
                        relation = match c.into_inner().next().unwrap().as_rule() {
                            Rule::on_or_before => Relation::OnOrBefore,
                            Rule::on_or_after => Relation::OnOrAfter,
                            Rule::kw_before => Relation::Before,
                            Rule::kw_after => Relation::After,
                            _ => Relation::On,
                        }
                    }
                    Rule::anchor => anchor = Some(build_anchor(c)),
                    _ => {}
                }
            }
            WindowPhrase::Relative {
                days,
                relation,
                anchor: anchor.unwrap(),
            }
        }
    };
    Window {
        phrase,
        span: s,
        during_observation,
    }
}

fn build_bound(pair: &Pair<Rule>) -> Spanned<Bound> {
    let t = pair.as_str();
    let lower = t.to_ascii_lowercase();
    let b = match lower.as_str() {
        "-inf" => Bound::MinusInfinity,
        "inf" | "+inf" => Bound::PlusInfinity,
        _ => Bound::Days(t.trim_start_matches('+').to_string()),
    };
    Spanned::new(b, span(pair))
}

fn build_anchor(pair: Pair<Rule>) -> Spanned<Anchor> {
    let s = span(&pair);
    let a = match pair.into_inner().next().unwrap().as_rule() {
        Rule::follow_up_start => Anchor::FollowUpStart,
        Rule::follow_up_end => Anchor::FollowUpEnd,
        Rule::kw_index => Anchor::Index,
        Rule::index_end => Anchor::IndexEnd,
        Rule::event_end => Anchor::EventEnd,
        _ => Anchor::Event,
    };
    Spanned::new(a, s)
}

fn build_criterion(pair: Pair<Rule>) -> Criterion {
    let s = span(&pair);
    match pair.as_rule() {
        Rule::criterion => {
            let mut parts: Vec<Criterion> = pair
                .into_inner()
                .filter(|p| p.as_rule() == Rule::conjunction)
                .map(build_criterion)
                .collect();
            if parts.len() == 1 {
                parts.pop().unwrap()
            } else {
                Criterion {
                    kind: CriterionKind::Or(parts),
                    span: s,
                }
            }
        }
        Rule::conjunction => {
            let mut parts: Vec<Criterion> = pair
                .into_inner()
                .filter(|p| p.as_rule() == Rule::negation)
                .map(build_criterion)
                .collect();
            if parts.len() == 1 {
                parts.pop().unwrap()
            } else {
                Criterion {
                    kind: CriterionKind::And(parts),
                    span: s,
                }
            }
        }
        Rule::negation => {
            let mut nots = Vec::new();
            let mut primary = None;
            for p in pair.into_inner() {
                if p.as_rule() == Rule::kw_not {
                    nots.push(span(&p));
                } else {
                    primary = Some(build_criterion(p));
                }
            }
            let mut c = primary.unwrap();
            // Built from the inside out so a long chain of `not` never recurses.
            for not_span in nots.into_iter().rev() {
                let sp = not_span.to(c.span);
                c = Criterion {
                    kind: CriterionKind::Not(Box::new(c)),
                    span: sp,
                };
            }
            c
        }
        Rule::criterion_group => Criterion {
            kind: CriterionKind::Group(Box::new(build_criterion(
                pair.into_inner().next().unwrap(),
            ))),
            span: s,
        },
        Rule::observation_criterion => {
            let window = pair
                .into_inner()
                .find(|p| p.as_rule() == Rule::window)
                .map(build_window);
            Criterion {
                kind: CriterionKind::Observation(window),
                span: s,
            }
        }
        Rule::event_criterion => {
            let mut quantifier = None;
            let mut query = None;
            let mut windows = Vec::new();
            for p in pair.into_inner() {
                match p.as_rule() {
                    Rule::quantifier => quantifier = Some(build_quantifier(p)),
                    Rule::event_query => query = Some(build_event_query(p)),
                    _ => {
                        let mut edge = None;
                        let mut window = None;
                        for q in p.into_inner() {
                            match q.as_rule() {
                                Rule::edge => {
                                    let e = match q.clone().into_inner().next().unwrap().as_rule() {
                                        Rule::kw_ending => Edge::End,
                                        _ => Edge::Start,
                                    };
                                    edge = Some(Spanned::new(e, span(&q)));
                                }
                                _ => window = Some(build_window(q)),
                            }
                        }
                        windows.push(EdgeWindow {
                            edge,
                            window: window.unwrap(),
                        });
                    }
                }
            }
            Criterion {
                kind: CriterionKind::Events {
                    quantifier,
                    query: query.unwrap(),
                    windows,
                },
                span: s,
            }
        }
        Rule::sex_test => {
            let values = pair
                .into_inner()
                .filter(|p| p.as_rule() == Rule::sex_value)
                .map(build_sex_value)
                .collect();
            Criterion {
                kind: CriterionKind::Sex(values),
                span: s,
            }
        }
        Rule::comparison => {
            let mut i = pair.into_inner();
            let quantity = build_quantity(i.next().unwrap());
            let test = build_literal_test(i.next().unwrap());
            Criterion {
                kind: CriterionKind::Compare { quantity, test },
                span: s,
            }
        }
        other => unreachable!("not a criterion: {other:?}"),
    }
}

fn build_sex_value(pair: Pair<Rule>) -> Spanned<SexValue> {
    let s = span(&pair);
    let p = pair.into_inner().next().unwrap();
    let v = match p.as_rule() {
        Rule::kw_male => SexValue::Male,
        Rule::kw_female => SexValue::Female,
        Rule::kw_unknown => SexValue::Unknown,
        _ => SexValue::Concept(p.as_str().to_string()),
    };
    Spanned::new(v, s)
}

fn build_quantity(pair: Pair<Rule>) -> Spanned<Quantity> {
    let s = span(&pair);
    let p = pair.into_inner().next().unwrap();
    let rule = p.as_rule();
    let anchor = p
        .into_inner()
        .find(|c| c.as_rule() == Rule::anchor)
        .map(build_anchor)
        .unwrap()
        .node;
    let q = match rule {
        Rule::age => Quantity::Age(anchor),
        Rule::calendar_age => Quantity::CalendarAge(anchor),
        Rule::year_of => Quantity::Year(anchor),
        _ => Quantity::Date(anchor),
    };
    Spanned::new(q, s)
}

fn build_literal(pair: &Pair<Rule>) -> Spanned<Literal> {
    let l = match pair.as_rule() {
        Rule::date => Literal::Date(pair.as_str().to_string()),
        _ => Literal::Number(pair.as_str().to_string()),
    };
    Spanned::new(l, span(pair))
}

fn build_literal_test(pair: Pair<Rule>) -> LiteralTest {
    match pair.as_rule() {
        Rule::compare_literal => {
            let mut i = pair.into_inner();
            let op = cmp_op(i.next().unwrap().as_str());
            LiteralTest::Compare {
                op,
                value: build_literal(&i.next().unwrap()),
            }
        }
        _ => {
            let lits: Vec<_> = pair
                .into_inner()
                .filter(|p| matches!(p.as_rule(), Rule::date | Rule::number))
                .collect();
            LiteralTest::Between {
                low: build_literal(&lits[0]),
                high: build_literal(&lits[1]),
            }
        }
    }
}

fn build_quantifier(pair: Pair<Rule>) -> Quantifier {
    let s = span(&pair);
    let p = pair.into_inner().next().unwrap();
    let kind = match p.as_rule() {
        Rule::kw_exists => QuantifierKind::Exists,
        _ => {
            let mut op = CountOp::AtLeast;
            let mut n = None;
            let mut distinct = None;
            let mut of = false;
            for c in p.into_inner() {
                match c.as_rule() {
                    Rule::count_op => {
                        op = match c.into_inner().next().unwrap().as_rule() {
                            Rule::at_least => CountOp::AtLeast,
                            Rule::at_most => CountOp::AtMost,
                            _ => CountOp::Exactly,
                        }
                    }
                    Rule::integer => n = Some(text(&c)),
                    Rule::distinct => distinct = Some(build_distinct(c)),
                    Rule::kw_of => of = true,
                    _ => {}
                }
            }
            QuantifierKind::Count {
                op,
                n: n.unwrap(),
                distinct,
                of,
            }
        }
    };
    Quantifier { kind, span: s }
}

fn build_distinct(pair: Pair<Rule>) -> Distinct {
    let unit = pair
        .into_inner()
        .nth(1)
        .unwrap()
        .into_inner()
        .next()
        .unwrap();
    match unit.as_rule() {
        Rule::kw_concepts => Distinct::Concepts,
        Rule::kw_days => Distinct::Days,
        _ => Distinct::Visits,
    }
}

fn build_index(pair: Pair<Rule>) -> IndexDef {
    let s = span(&pair);
    let mut occurrence = None;
    let mut query = None;
    let mut each_person = None;
    let mut options = Vec::new();
    for p in pair.into_inner() {
        match p.as_rule() {
            Rule::each_person => {
                let sp = span(&p);
                let at = p.into_inner().last().unwrap();
                let which = match at.as_rule() {
                    Rule::date => EachPerson::Date(text(&at)),
                    _ => EachPerson::ObservationStart,
                };
                each_person = Some(Spanned::new(which, sp));
                query = Some(EventQuery {
                    domain: Spanned::new(Domain::ObservationPeriod, sp),
                    concepts: None,
                    filters: Vec::new(),
                    span: sp,
                    also: Vec::new(),
                    era: None,
                });
            }
            Rule::occurrence => {
                let sp = span(&p);
                let o = match p.into_inner().next().unwrap().as_rule() {
                    Rule::kw_first => Occurrence::First,
                    Rule::kw_last => Occurrence::Last,
                    _ => Occurrence::All,
                };
                occurrence = Some(Spanned::new(o, sp));
            }
            Rule::event_query => query = Some(build_event_query(p)),
            Rule::calendar_limit => {
                let sp = span(&p);
                let first = p.clone().into_inner().next().unwrap().as_rule();
                let dates: Vec<_> = p
                    .into_inner()
                    .filter(|c| c.as_rule() == Rule::date)
                    .map(|c| text(&c))
                    .collect();
                let mut dates = dates.into_iter();
                let kind = match first {
                    Rule::kw_between => {
                        EntryOptionKind::Between(dates.next().unwrap(), dates.next().unwrap())
                    }
                    Rule::kw_from => EntryOptionKind::From(dates.next().unwrap()),
                    _ => EntryOptionKind::Until(dates.next().unwrap()),
                };
                options.push(EntryOption { kind, span: sp });
            }
            Rule::entry_observation => {
                let sp = span(&p);
                let w = p
                    .into_inner()
                    .find(|c| c.as_rule() == Rule::window)
                    .map(build_window)
                    .unwrap();
                options.push(EntryOption {
                    kind: EntryOptionKind::Observation(w),
                    span: sp,
                });
            }
            Rule::any_observation => options.push(EntryOption {
                kind: EntryOptionKind::AnyObservation,
                span: span(&p),
            }),
            _ => {}
        }
    }
    IndexDef {
        each_person,
        occurrence,
        query: query.unwrap(),
        options,
        span: s,
    }
}

fn build_step(pair: Pair<Rule>) -> Step {
    let s = span(&pair);
    let mut inner = pair.into_inner();
    let first = inner.next().unwrap();
    let kind = if first.as_rule() == Rule::keep_step {
        let which = first.into_inner().nth(1).unwrap().as_rule();
        StepKind::Keep(if which == Rule::kw_last {
            Occurrence::Last
        } else {
            Occurrence::First
        })
    } else {
        let criterion = build_criterion(inner.next().unwrap());
        if first.into_inner().next().unwrap().as_rule() == Rule::kw_exclude {
            StepKind::Exclude(criterion)
        } else {
            StepKind::Require(criterion)
        }
    };
    Step { kind, span: s }
}

fn build_anchor_point(pair: Pair<Rule>) -> AnchorPoint {
    let s = span(&pair);
    let mut anchor = None;
    let mut sign = "+";
    let mut offset = None;
    for p in pair.into_inner() {
        match p.as_rule() {
            Rule::anchor => anchor = Some(build_anchor(p)),
            Rule::offset_sign => sign = if p.as_str() == "-" { "-" } else { "+" },
            Rule::integer => {
                let t = text(&p);
                let value = if sign == "-" {
                    format!("-{}", t.node)
                } else {
                    t.node
                };
                offset = Some(Spanned::new(value, t.span));
            }
            _ => {}
        }
    }
    AnchorPoint {
        anchor: anchor.unwrap(),
        offset,
        span: s,
    }
}

fn build_follow_up_item(pair: Pair<Rule>) -> FollowUpItem {
    let s = span(&pair);
    let kind = match pair.as_rule() {
        Rule::follow_up_from => {
            FollowUpKind::From(build_anchor_point(pair.into_inner().nth(1).unwrap()))
        }
        Rule::follow_up_until => {
            let mut earliest = false;
            let mut exits = Vec::new();
            for p in pair.into_inner() {
                match p.as_rule() {
                    Rule::kw_earliest => earliest = true,
                    Rule::exit => exits.push(build_exit(p)),
                    _ => {}
                }
            }
            FollowUpKind::Until { exits, earliest }
        }
        Rule::collapse => FollowUpKind::Collapse(text(
            &pair
                .into_inner()
                .find(|p| p.as_rule() == Rule::integer)
                .unwrap(),
        )),
        _ => {
            let mut from = None;
            let mut to = None;
            for p in pair.into_inner() {
                match p.as_rule() {
                    Rule::period_from => from = Some(text(&p.into_inner().nth(1).unwrap())),
                    Rule::period_to => to = Some(text(&p.into_inner().nth(1).unwrap())),
                    _ => {}
                }
            }
            FollowUpKind::StudyPeriod { from, to }
        }
    };
    FollowUpItem { kind, span: s }
}

fn build_exit(pair: Pair<Rule>) -> Exit {
    let s = span(&pair);
    let p = pair.into_inner().next().unwrap();
    let kind = match p.as_rule() {
        Rule::observation_end => ExitKind::ObservationEnd,
        Rule::exposure_end => {
            let mut concepts = None;
            let mut gap = None;
            let mut extra = None;
            for c in p.into_inner() {
                match c.as_rule() {
                    Rule::concept_expr => concepts = Some(build_concept_expr(c)),
                    Rule::exposure_gap => gap = Some(text(&c.into_inner().nth(1).unwrap())),
                    Rule::exposure_extra => extra = Some(text(&c.into_inner().next().unwrap())),
                    _ => {}
                }
            }
            ExitKind::ExposureEnd {
                concepts: concepts.unwrap(),
                gap,
                extra,
            }
        }
        Rule::record_end => ExitKind::RecordEnd {
            extra: p
                .into_inner()
                .find(|c| c.as_rule() == Rule::exposure_extra)
                .map(|c| text(&c.into_inner().next().unwrap())),
        },
        Rule::exit_date => ExitKind::Date(text(&p.into_inner().next().unwrap())),
        Rule::anchor_point => ExitKind::Offset(build_anchor_point(p)),
        _ => {
            let mut first = false;
            let mut query = None;
            for c in p.into_inner() {
                match c.as_rule() {
                    Rule::kw_first => first = true,
                    _ => query = Some(build_event_query(c)),
                }
            }
            ExitKind::Event {
                first,
                query: query.unwrap(),
            }
        }
    };
    Exit { kind, span: s }
}

fn build_covariate(pair: Pair<Rule>) -> CovariateDef {
    let s = span(&pair);
    let mut inner = pair.into_inner();
    let name = text(&inner.next().unwrap());
    let v = inner.next().unwrap();
    let confounder = inner
        .next()
        .filter(|p| p.as_rule() == Rule::confounder)
        .map(|p| span(&p));
    let value = match v.as_rule() {
        Rule::interaction => {
            CovariateValue::Interaction(v.into_inner().map(|p| text(&p)).collect())
        }
        Rule::count_value => {
            let mut distinct = None;
            let mut query = None;
            let mut window = None;
            for c in v.into_inner() {
                match c.as_rule() {
                    Rule::distinct => distinct = Some(build_distinct(c)),
                    Rule::event_query => query = Some(build_event_query(c)),
                    Rule::window => window = Some(build_window(c)),
                    _ => {}
                }
            }
            CovariateValue::Count {
                distinct,
                query: query.unwrap(),
                window,
            }
        }
        Rule::value_aggregate => {
            let mut aggregate = Aggregate::Last;
            let mut concept = false;
            let mut query = None;
            let mut window = None;
            for c in v.into_inner() {
                match c.as_rule() {
                    Rule::aggregate => {
                        aggregate = match c.into_inner().next().unwrap().as_rule() {
                            Rule::kw_first => Aggregate::First,
                            Rule::kw_last => Aggregate::Last,
                            Rule::kw_min => Aggregate::Min,
                            Rule::kw_max => Aggregate::Max,
                            _ => Aggregate::Mean,
                        }
                    }
                    Rule::kw_concept => concept = true,
                    Rule::event_query => query = Some(build_event_query(c)),
                    Rule::window => window = Some(build_window(c)),
                    _ => {}
                }
            }
            CovariateValue::Aggregate {
                aggregate,
                concept,
                query: query.unwrap(),
                window,
            }
        }
        Rule::days_since => {
            let mut last = false;
            let mut query = None;
            let mut window = None;
            for c in v.into_inner() {
                match c.as_rule() {
                    Rule::kw_last => last = true,
                    Rule::event_query => query = Some(build_event_query(c)),
                    Rule::window => window = Some(build_window(c)),
                    _ => {}
                }
            }
            CovariateValue::DaysSince {
                last,
                query: query.unwrap(),
                window,
            }
        }
        Rule::criterion => CovariateValue::Flag(build_criterion(v)),
        Rule::sex_value_of => CovariateValue::Sex,
        _ => CovariateValue::Quantity(build_quantity(v)),
    };
    CovariateDef {
        name,
        value,
        confounder,
        span: s,
    }
}

fn build_endpoint(pair: Pair<Rule>) -> EndpointDef {
    let s = span(&pair);
    let mut name = None;
    let mut kind = None;
    let mut query = None;
    let mut window = None;
    for p in pair.into_inner() {
        match p.as_rule() {
            Rule::name => name = Some(text(&p)),
            Rule::endpoint_kind => {
                let sp = span(&p);
                let k = match p.into_inner().next().unwrap().as_rule() {
                    Rule::kw_first => EndpointKind::First,
                    _ => EndpointKind::Exists,
                };
                kind = Some(Spanned::new(k, sp));
            }
            Rule::event_query => query = Some(build_event_query(p)),
            Rule::window => window = Some(build_window(p)),
            _ => {}
        }
    }
    EndpointDef {
        name: name.unwrap(),
        kind,
        query: query.unwrap(),
        window,
        span: s,
    }
}

/// Whether the grammar takes all of `phrase` right after `text` (for completion): the parser,
/// given `text`, the phrase and a character no rule accepts, gets past the phrase.
pub fn accepts_after(text: &str, phrase: &str) -> bool {
    let probe = format!("{text}{phrase} \u{1}");
    match StudyParser::parse(Rule::file, &probe) {
        Ok(_) => true,
        Err(e) => {
            let at = match e.location {
                InputLocation::Pos(p) => p,
                InputLocation::Span((s, _)) => s,
            };
            at >= text.len() + phrase.len()
        }
    }
}

#[cfg(test)]
mod accepts_tests {
    use super::*;

    const HEAD: &str = "study \"s\"\nconcepts\n  x = drug 1\npopulation\n";

    #[test]
    fn takes_a_phrase_only_where_the_grammar_allows_it() {
        let index = format!("{HEAD}  index = ");
        assert!(accepts_after(&index, "first"));
        assert!(accepts_after(&index, "drug era"));
        assert!(!accepts_after(&index, "require"));
        let step = format!("{HEAD}  index = first drug\n  require ");
        assert!(accepts_after(&step, "calendar"));
        assert!(accepts_after(&step, "not"));
        assert!(!accepts_after(&step, "index"));
        let after_set = format!("{HEAD}  index = first drug\n  require drug in x ");
        assert!(accepts_after(&after_set, "on or before index"));
        assert!(accepts_after(&after_set, "during follow-up"));
        assert!(!accepts_after(&after_set, "on or during"));
        // Nothing fits after a syntax error.
        assert!(!accepts_after(&format!("{HEAD}  index = = "), "first"));
    }
}
