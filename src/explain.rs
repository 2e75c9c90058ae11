//! Plain English for a checked study: what an ethics committee reads to know what it approves.
//!
//! Every window is spelled out as an inclusive range of days around its named anchor, and every
//! concept set is listed with its codes.

use crate::disclosure::{Export, SiteRules};
use crate::printable::{escaped, escaped_keeping_lines};
use crate::study::*;
use std::fmt::Write;

/// The whole explanation, as text with one blank line between parts.
/// Study text is shown escaped (see `printable`): what a reviewer reads is what the file says.
pub fn explain_study(study: &Study) -> String {
    explain_under(study, &SiteRules::default())
}

/// The explanation of a study run under a site's rules: its output section states the policy
/// in force.
pub fn explain_under(study: &Study, site: &SiteRules) -> String {
    let x = Explainer { study };
    let mut out = String::new();
    write!(out, "Study: {}", escaped(&study.title)).unwrap();
    if let Some(v) = &study.version {
        write!(out, " (version {})", escaped(v)).unwrap();
    }
    out.push('\n');
    if let Some(q) = &study.question {
        writeln!(out, "Question: {}", escaped(q)).unwrap();
    }
    if let Some(d) = &study.description {
        writeln!(out, "Description: {}", escaped(d)).unwrap();
    }
    if !study.authors.is_empty() {
        writeln!(out, "Authors: {}", escaped(&study.authors.join(", "))).unwrap();
    }

    if !study.acknowledged.is_empty() {
        out.push_str("Acknowledged warnings (not shown by `check`):\n");
        for a in &study.acknowledged {
            let summary = crate::diag::Code::ALL
                .iter()
                .find(|c| c.id() == a.code)
                .map_or("", |c| c.title());
            writeln!(out, "  {} ({summary}): {}", a.code, escaped(&a.reason)).unwrap();
        }
    }

    out.push_str("\nConcept sets\n");
    if study.concept_sets.is_empty() {
        out.push_str("  (none: events are selected by domain only)\n");
    }
    for set in &study.concept_sets {
        let domain = set
            .domain
            .map_or(String::new(), |d| format!(" ({})", d.keyword()));
        writeln!(out, "  {}{domain}: {}.", set.name, x.concepts(&set.expr)).unwrap();
    }

    out.push_str("\nTime zero (index date)\n");
    out.push_str(&indent(&x.index(&study.index)));

    out.push_str("\nPopulation: attrition steps, applied in this order\n");
    if study.steps.is_empty() {
        out.push_str("  (none: everyone with an index date is included)\n");
    }
    for (i, step) in study.steps.iter().enumerate() {
        writeln!(out, "  {}. `{}`", i + 1, step.rule).unwrap();
        writeln!(out, "     {}", x.step(step)).unwrap();
    }

    if !study.steps.is_empty() {
        out.push_str("  Beside this sequence, the inclusion-rule report counts the qualifying index entries that pass each step on its own, and those of each combination of steps passed (as OHDSI's Circe does).\n");
    }

    if !study.arms.is_empty() {
        out.push_str("\nExposure arms\n");
        out.push_str("  Each person joins the first arm, in this order, whose rule holds; persons in no arm leave the study (a final attrition step). Every attrition step is also reported split by the arm each entry's index assigns.\n");
        for arm in &study.arms {
            writeln!(out, "  {}: {}.", arm.name, x.criterion(&arm.criterion)).unwrap();
        }
    }

    out.push_str("\nFollow-up\n");
    out.push_str(&indent(&x.follow_up(&study.follow_up)));

    if !study.covariates.is_empty() {
        out.push_str("\nCovariates (one column each)\n");
        for c in &study.covariates {
            writeln!(
                out,
                "  {}: {}.{}",
                c.name,
                x.covariate(&c.value),
                if c.confounder {
                    " A confounder: the adjusted Cox model of each time-to-event endpoint adjusts for it."
                } else {
                    ""
                }
            )
            .unwrap();
        }
    }

    if !study.endpoints.is_empty() {
        out.push_str("\nEndpoints\n");
        for e in &study.endpoints {
            let what = format!(
                "{} starting {}",
                x.query(&e.query, true),
                x.window(&e.window)
            );
            match e.kind {
                EndpointKind::TimeToEvent => writeln!(
                    out,
                    "  {0} (time to event): the first {what}. Columns `{0}` (1 if it happens, else 0) and `{0}_days` (days from follow-up start to the event, or to the end of follow-up when there is none; follow-up start is day 0).",
                    e.name
                )
                .unwrap(),
                EndpointKind::Binary => {
                    writeln!(out, "  {} (binary): 1 if there is at least one {what}, else 0.", e.name).unwrap()
                }
            }
        }
    }

    out.push_str("\nOutput and privacy\n");
    output_and_privacy(&mut out, study, site);
    writeln!(
        out,
        "  The OMOP cohort table's cohort_definition_id is {}{}.",
        study.output.cohort_id,
        if study.output.cohort_id == DEFAULT_COHORT_ID {
            " (the default)"
        } else {
            ""
        }
    )
    .unwrap();

    out.push_str("\nConsent\n");
    match &study.consent {
        Consent::NotDeclared => out.push_str("  The study declares no consent rule: all records are used.\n"),
        Consent::NotRequired => out.push_str("  The study declares that no consent is required: all records are used.\n"),
        Consent::RequiredBy { query, from: None } => writeln!(
            out,
            "  Only persons with at least one {} (at any time) are studied; records of other persons are not used.",
            x.query(query, false)
        )
        .unwrap(),
        Consent::RequiredBy { query, from: Some(d) } => writeln!(
            out,
            "  Records dated on or after {d} (prospectively collected) are used only for persons with at least one {}; earlier records are used for everyone.",
            x.query(query, false)
        )
        .unwrap(),
    }
    escaped_keeping_lines(&out).into_owned()
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

/// The plain-English phrases of one study, for `explain` and for the review report's tables.
/// Study text inside them is not yet escaped: callers escape what they show.
pub struct Explainer<'a> {
    study: &'a Study,
}

fn plural(n: i64, word: &str) -> String {
    if n.abs() == 1 {
        format!("{} {word}", n.abs())
    } else {
        format!("{} {word}s", n.abs())
    }
}

fn anchor_name(a: Anchor) -> &'static str {
    match a {
        Anchor::Index => "index",
        Anchor::FollowUpStart => "follow-up start",
        Anchor::FollowUpEnd => "follow-up end",
        Anchor::Event => "the event",
        Anchor::IndexEnd => "the end of the index record",
        Anchor::EventEnd => "the end of the event",
    }
}

/// `365 days before index`, `index`, `30 days after the event`.
fn offset_words(d: i64, a: Anchor) -> String {
    match d {
        0 => format!("the day of {}", anchor_name(a)),
        d if d < 0 => format!("{} before {}", plural(d, "day"), anchor_name(a)),
        d => format!("{} after {}", plural(d, "day"), anchor_name(a)),
    }
}

fn domain_noun(d: Domain, many: bool) -> String {
    let (one, more) = match d {
        Domain::Condition => ("condition record", "condition records"),
        Domain::Drug => ("drug exposure", "drug exposures"),
        Domain::Procedure => ("procedure", "procedures"),
        Domain::Measurement => ("measurement", "measurements"),
        Domain::Observation => ("observation record", "observation records"),
        Domain::Visit => ("visit", "visits"),
        Domain::Death => ("death record", "death records"),
        Domain::Device => ("device exposure", "device exposures"),
        Domain::Specimen => ("specimen", "specimens"),
        Domain::ObservationPeriod => ("observation period", "observation periods"),
        Domain::DrugEra => ("drug era", "drug eras"),
        Domain::ConditionEra => ("condition era", "condition eras"),
        Domain::Episode => ("episode", "episodes"),
        Domain::ImageOccurrence => ("imaging study", "imaging studies"),
        Domain::ImageFeature => ("image feature", "image features"),
    };
    if many { more } else { one }.to_string()
}

fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

fn compare_words(op: CmpOp) -> &'static str {
    match op {
        CmpOp::Lt => "is less than",
        CmpOp::Le => "is at most",
        CmpOp::Eq => "is",
        CmpOp::Ne => "is not",
        CmpOp::Ge => "is at least",
        CmpOp::Gt => "is more than",
    }
}

fn number_test_words(t: &NumberTest) -> String {
    match t {
        NumberTest::Compare(op, v) => format!("{} {}", compare_words(*op), number(*v)),
        NumberTest::Between(a, b) => {
            format!("is from {} to {} (both included)", number(*a), number(*b))
        }
    }
}

impl<'a> Explainer<'a> {
    pub fn new(study: &'a Study) -> Explainer<'a> {
        Explainer { study }
    }

    /// A concept set's expression in words.
    pub fn concepts(&self, e: &ConceptExpr) -> String {
        match e {
            ConceptExpr::Concept { id, label: Some(l) } => {
                format!("concept {id} \"{}\"", escaped(l))
            }
            ConceptExpr::Concept { id, label: None } => format!("concept {id}"),
            ConceptExpr::SourceCodes { vocabulary, codes } => {
                let codes: Vec<String> = codes
                    .iter()
                    .map(|c| match c {
                        CodePattern::Exact(c) => c.clone(),
                        CodePattern::Prefix(p) => format!("every code starting {p}"),
                        CodePattern::Range(a, b) => format!("{a} to {b} (with their sub-codes)"),
                    })
                    .collect();
                format!("{vocabulary} codes {}", escaped(&codes.join(", ")))
            }
            ConceptExpr::Named(n) => format!("the concepts named \"{}\"", escaped(n)),
            ConceptExpr::Set(i) => format!("`{}`", self.study.concept_sets[*i].name),
            ConceptExpr::WithDescendants(inner) => {
                let whose = if matches!(**inner, ConceptExpr::Concept { .. }) {
                    "its"
                } else {
                    "their"
                };
                format!("{} and all {whose} descendants", self.concepts(inner))
            }
            ConceptExpr::WithSources(inner) => format!(
                "{} and every concept that maps to them (\"Maps to\" read backwards: their source codes)",
                self.concepts(inner)
            ),
            ConceptExpr::Mapped(inner) => {
                format!(
                    "the standard concepts that {} map to (\"Maps to\")",
                    self.concepts(inner)
                )
            }
            ConceptExpr::Union(parts) if parts.is_empty() => "no concepts".to_string(),
            ConceptExpr::Union(parts) => parts
                .iter()
                .map(|p| self.concepts(p))
                .collect::<Vec<_>>()
                .join("; or "),
            ConceptExpr::Minus(a, b) => {
                format!("{}, except {}", self.concepts(a), self.concepts(b))
            }
        }
    }

    fn concept_ref(&self, e: &ConceptExpr) -> String {
        match e {
            ConceptExpr::Set(i) => format!("`{}`", self.study.concept_sets[*i].name),
            other => format!("[{}]", self.concepts(other)),
        }
    }

    pub fn query(&self, q: &EventQuery, many: bool) -> String {
        let alternatives: Vec<String> = q.alternatives().map(|a| self.alt(a, many)).collect();
        alternatives.join(", or ")
    }

    /// One alternative of a query: its domain, concepts and filters, or eras of them.
    fn alt(&self, q: &EventQuery, many: bool) -> String {
        if let Some(era) = &q.era {
            let records = self.alt(
                &EventQuery {
                    era: None,
                    ..q.clone()
                },
                true,
            );
            let mut out = format!(
                "{} of {records} (each person's records chained while the next one starts at most {} after the latest end so far; an era runs from its first start to its latest end, a missing end filled in as for `end of index record`)",
                if many { "eras" } else { "era" },
                plural(era.gap, "day")
            );
            if let Some(t) = &era.duration {
                write!(
                    out,
                    ", whose duration (start to end, both days counted) {} days",
                    number_test_words(t)
                )
                .unwrap();
            }
            return out;
        }
        let mut out = domain_noun(q.domain, many);
        if let Some(c) = &q.concepts {
            write!(out, " in {}", self.concept_ref(c)).unwrap();
        }
        for f in &q.filters {
            let text = match f {
                EventFilter::Value(t) => format!("whose value {}", number_test_words(t)),
                EventFilter::ValueIn(c) => {
                    format!("whose value is a concept in {}", self.concept_ref(c))
                }
                EventFilter::AboveNormal => {
                    "whose value is above its normal range (range_high)".to_string()
                }
                EventFilter::BelowNormal => {
                    "whose value is below its normal range (range_low)".to_string()
                }
                EventFilter::UnitIn(c) => format!("with a unit in {}", self.concept_ref(c)),
                EventFilter::SourceIn(c) => format!(
                    "whose source concept (the code as recorded, `{}`) is in {}",
                    crate::repo::domains::records(q.domain)
                        .column(crate::repo::domains::Field::SourceConcept)
                        .map_or("none", |col| col.column),
                    self.concept_ref(c)
                ),
                EventFilter::Modality(m) => {
                    format!("of modality {}", escaped(&m.join(" or ")))
                }
                EventFilter::KindIn(c) => format!("of an episode kind in {}", self.concept_ref(c)),
                EventFilter::Duration(t) => {
                    format!(
                        "whose duration (start to end, both days counted) {} days",
                        number_test_words(t)
                    )
                }
                EventFilter::SameVisit => "in the same visit".to_string(),
                EventFilter::FirstEver => "the person's first-ever one (the earliest of all records of the domain and concept set, by date then record id; the other conditions then apply to it alone)".to_string(),
                EventFilter::Where(c) => format!("for which {}", self.criterion(c)),
            };
            out.push_str(", ");
            out.push_str(&text);
        }
        out
    }

    /// An exact inclusive range of days, in words, with its anchor.
    pub fn window(&self, w: &Window) -> String {
        match *w {
            Window::FollowUp => {
                "during follow-up (from follow-up start to follow-up end, both days included)"
                    .to_string()
            }
            Window::Days {
                anchor,
                start,
                end,
                observed,
            } => {
                let a = anchor_name(anchor);
                let days = match (start, end) {
                    (None, None) => format!("at any time (no limit relative to {a})"),
                    (Some(s), Some(e)) if s == e => {
                        format!("on day {s} relative to {a} ({})", offset_words(s, anchor))
                    }
                    (Some(s), Some(e)) => format!(
                        "from day {s} to day {e} relative to {a} (from {} to {}, both days included)",
                        offset_words(s, anchor),
                        offset_words(e, anchor)
                    ),
                    (None, Some(e)) => format!(
                        "on any day up to day {e} relative to {a} (up to and including {})",
                        offset_words(e, anchor)
                    ),
                    (Some(s), None) => format!(
                        "on any day from day {s} relative to {a} on (from {} onwards, that day included)",
                        offset_words(s, anchor)
                    ),
                };
                if !observed {
                    return days;
                }
                let within = anchor_name(anchor.period_anchor());
                format!("{days}, the record starting within the observation period that contains {within} (an open side of the window stops at that period's edge)")
            }
        }
    }

    /// What an attrition step does, as a sentence.
    pub fn step(&self, step: &Step) -> String {
        match step.keep {
            Some(which) => {
                let (which, order) = match which {
                    Occurrence::Last => (
                        "last",
                        "the latest index date, then the largest index record id",
                    ),
                    _ => (
                        "first",
                        "the earliest index date, then the smallest index record id",
                    ),
                };
                format!("Keep each person's {which} entry ({order}) among those the steps before kept; the person's other entries leave the study.")
            }
            None if step.exclude => format!(
                "Exclude persons for whom {}.",
                self.criterion(&step.criterion)
            ),
            None => format!("Keep persons for whom {}.", self.criterion(&step.criterion)),
        }
    }

    pub fn criterion(&self, c: &Criterion) -> String {
        match c {
            Criterion::All(parts) => parts.iter().map(|p| self.part(p)).collect::<Vec<_>>().join(" and "),
            Criterion::Any(parts) => parts.iter().map(|p| self.part(p)).collect::<Vec<_>>().join(" or "),
            Criterion::Not(inner) => format!("it is not true that {}", self.part(inner)),
            Criterion::Events {
                count,
                query,
                window,
                more,
            } => {
                let many = !(count.n == 1 && count.op != CountOp::Exactly);
                let n = match (count.op, count.n) {
                    (CountOp::AtLeast, 1) => "there is at least one".to_string(),
                    (CountOp::AtLeast, n) => format!("there are at least {n}"),
                    (CountOp::AtMost, 0) | (CountOp::Exactly, 0) => "there is no".to_string(),
                    (CountOp::AtMost, n) => format!("there are at most {n}"),
                    (CountOp::Exactly, n) => format!("there are exactly {n}"),
                };
                let many = many && count.n != 0;
                let distinct = match count.distinct {
                    None => String::new(),
                    Some(Distinct::Concepts) => " (counting distinct concepts)".to_string(),
                    Some(Distinct::Days) => " (counting distinct days)".to_string(),
                    Some(Distinct::Visits) => " (counting distinct visits)".to_string(),
                };
                let comma = if query.filters.is_empty() { "" } else { "," };
                let mut text = format!(
                    "{n} {}{distinct}{comma} starting {}",
                    self.query(query, many),
                    self.window(window)
                );
                for m in more {
                    let day = match m.edge {
                        Edge::Start => "and starting",
                        Edge::End => "and ending (the end date; a missing one is the start plus the days supplied, or plus 1 day; one before the start is the start)",
                    };
                    text.push_str(&format!(", {day} {}", self.window(&m.window)));
                }
                text
            }
            Criterion::Observation { anchor, start, end } => format!(
                "one observation period covers every day from {} to {} (days {start} to {end} relative to {}, both included)",
                offset_words(*start, *anchor),
                offset_words(*end, *anchor),
                anchor_name(*anchor)
            ),
            Criterion::Sex(ids) => {
                let names: Vec<String> = ids
                    .iter()
                    .map(|id| match *id {
                        MALE => "male (concept 8507)".to_string(),
                        FEMALE => "female (concept 8532)".to_string(),
                        UNKNOWN_SEX => "unknown (concept 8551)".to_string(),
                        other => format!("concept {other}"),
                    })
                    .collect();
                format!("sex is {}", names.join(" or "))
            }
            Criterion::Compare { quantity, test } => {
                let q = quantity_description(*quantity);
                let v = |v: &Value| match v {
                    Value::Number(n) => number(*n),
                    Value::Date(d) => d.to_string(),
                };
                match test {
                    ValueTest::Compare(op, value) => format!("{q} {} {}", compare_words(*op), v(value)),
                    ValueTest::Between(a, b) => format!("{q} is from {} to {} (both included)", v(a), v(b)),
                }
            }
        }
    }

    fn part(&self, c: &Criterion) -> String {
        match c {
            Criterion::All(_) | Criterion::Any(_) => format!("({})", self.criterion(c)),
            other => self.criterion(other),
        }
    }

    pub fn index(&self, index: &IndexEvent) -> String {
        let mut out = String::new();
        let q = self.query(&index.query, false);
        if let Some(day) = index.at_date {
            write!(out, "Every person with an observation period that contains {day} enters the study on that day: the index date is {day} and the period is the index record.").unwrap();
            let (before, after) = index.observation;
            if (before, after) != (0, 0) {
                write!(
                    out,
                    "\nThe same period must cover the {} before it and the {} after it.",
                    plural(before, "day"),
                    plural(after, "day")
                )
                .unwrap();
            }
            out.push_str("\nThe attrition table starts with every observation period (the persons with one, and the number of periods), then the persons in observation on that day.\n");
            return out;
        }
        match index.occurrence {
            Occurrence::First => write!(out, "Each person's index date is the start date of their first qualifying {q}.").unwrap(),
            Occurrence::Last => write!(out, "Each person's index date is the start date of their last qualifying {q}.").unwrap(),
            Occurrence::All => write!(
                out,
                "Every qualifying {q} is an entry with its start date as index date; a person may enter more than once."
            )
            .unwrap(),
        }
        if index.any_observation {
            out.push_str("\nA record qualifies whether or not it lies in an observation period");
        } else {
            out.push_str(
                "\nA record qualifies when it lies in one of the person's observation periods",
            );
        }
        let (before, after) = index.observation;
        if (before, after) != (0, 0) {
            write!(
                out,
                ", and that same period covers the {} before it and the {} after it",
                plural(before, "day"),
                plural(after, "day")
            )
            .unwrap();
        }
        match (index.from, index.until) {
            (Some(f), Some(u)) => {
                write!(out, ", and it is dated from {f} to {u} (both included)").unwrap()
            }
            (Some(f), None) => write!(out, ", and it is dated on or after {f}").unwrap(),
            (None, Some(u)) => write!(out, ", and it is dated on or before {u}").unwrap(),
            (None, None) => {}
        }
        out.push('.');
        if index.occurrence != Occurrence::All {
            out.push_str("\nRecords on the same day are ordered by record id, so the choice is deterministic.");
        }
        out.push_str("\nThe attrition table starts with every record of the index event (the persons with one, and the number of records), then the qualifying index events.");
        out.push('\n');
        out
    }

    pub fn follow_up(&self, f: &FollowUp) -> String {
        let mut out = String::new();
        match f.start_offset {
            0 => out.push_str("Follow-up starts on the index date (day 0).\n"),
            d => writeln!(
                out,
                "Follow-up starts {} (day {d}).",
                offset_words(d, Anchor::Index)
            )
            .unwrap(),
        }
        let exits: Vec<String> = f.exits.iter().map(|e| self.exit(e)).collect();
        if exits.len() == 1 {
            writeln!(out, "Follow-up ends at {}.", exits[0]).unwrap();
        } else {
            writeln!(
                out,
                "Follow-up ends at the earliest of: {}.",
                exits.join("; ")
            )
            .unwrap();
        }
        if self.study.index.any_observation {
            out.push_str("Observation does not bound follow-up (the index is taken with or without observation): it ends at the earliest exit that has a date, and an entry with none (outside observation, where the end of observation has no date) leaves the study; the end day is included.\n");
        } else {
            out.push_str("It never extends past the end of the observation period that contains the index date; the end day is included.\n");
        }
        out.push_str("The dataset's `follow_up_days` is each entry's person-time: the days of follow-up, both ends counted.\n");
        if let Some(d) = f.collapse_days {
            writeln!(
                out,
                "Entries of one person whose follow-up periods overlap or are at most {} apart are merged into one.",
                plural(d, "day")
            )
            .unwrap();
        }
        match (f.period_from, f.period_to) {
            (None, None) => {}
            (from, to) => {
                let from = from.map_or("the earliest data".to_string(), |d| d.to_string());
                let to = to.map_or("the latest data".to_string(), |d| d.to_string());
                writeln!(
                    out,
                    "Follow-up is clipped to the study period from {from} to {to} (both included); entries left with no follow-up are dropped."
                )
                .unwrap();
            }
        }
        out
    }

    pub fn exit(&self, e: &Exit) -> String {
        match e {
            Exit::ObservationEnd => "the end of the observation period that contains the index date".to_string(),
            Exit::ExposureEnd { concepts, gap, extra } => format!(
                "the end of continuous exposure to {}: drug exposures chained while the gap between one's end and the next one's start is at most {}, plus {} after the last one ends",
                self.concept_ref(concepts),
                plural(*gap, "day"),
                plural(*extra, "day")
            ),
            Exit::Date(d) => format!("{d}"),
            Exit::RecordEnd { extra } => format!(
                "the end date of the index record plus {} (a missing end date counts as the start plus the days supplied, for drugs with a supply, else the start plus 1 day; an end before the start counts as the start)",
                plural(*extra, "day")
            ),
            Exit::Offset { anchor, days } => format!("{} (day {days} relative to {})", offset_words(*days, *anchor), anchor_name(*anchor)),
            Exit::Event(q) => format!("the first {} on or after follow-up start", self.query(q, false)),
        }
    }

    pub fn covariate(&self, v: &CovariateValue) -> String {
        match v {
            CovariateValue::Sex => "sex (gender concept of the person)".to_string(),
            CovariateValue::Quantity(q) => quantity_description(*q),
            CovariateValue::Count {
                distinct,
                query,
                window,
            } => {
                let what = match distinct {
                    None => "the number of",
                    Some(Distinct::Concepts) => "the number of distinct concepts among",
                    Some(Distinct::Days) => "the number of distinct days with",
                    Some(Distinct::Visits) => "the number of distinct visits with",
                };
                format!(
                    "{what} {} starting {}",
                    self.query(query, true),
                    self.window(window)
                )
            }
            CovariateValue::Aggregate {
                aggregate,
                concept,
                query,
                window,
            } => {
                let what = match aggregate {
                    Aggregate::First => "the value of the earliest",
                    Aggregate::Last => "the value of the latest",
                    Aggregate::Min => "the smallest value among",
                    Aggregate::Max => "the largest value among",
                    Aggregate::Mean => "the mean value of",
                };
                let kind = if *concept { " (the value concept)" } else { "" };
                let many = !matches!(aggregate, Aggregate::First | Aggregate::Last);
                format!(
                    "{what} {}{kind} starting {}; empty when there is none",
                    self.query(query, many),
                    self.window(window)
                )
            }
            CovariateValue::DaysSince {
                last,
                query,
                window,
            } => format!(
                "days from the {} {} starting {} to the index date; empty when there is none",
                if *last { "latest" } else { "earliest" },
                self.query(query, false),
                self.window(window)
            ),
            CovariateValue::Flag(c) => format!("1 if {}, else 0", self.criterion(c)),
            CovariateValue::Interaction(factors) => {
                let names: Vec<&str> = factors
                    .iter()
                    .map(|&i| self.study.covariates[i].name.as_str())
                    .collect();
                format!("the product {}", names.join(" × "))
            }
        }
    }
}

fn quantity_description(q: Quantity) -> String {
    match q {
        Quantity::Age(_) => format!("{} (completed years of age on that day)", q.words()),
        Quantity::CalendarAge(_) => {
            format!(
                "{} (the year of that day minus the year of birth, as OHDSI computes age)",
                q.words()
            )
        }
        _ => q.words(),
    }
}

/// The disclosure control a run applies, as `run.json` records it: the policy in force and
/// what it does, where person-level outputs go, and what an export would carry.
fn output_and_privacy(out: &mut String, study: &Study, site: &SiteRules) {
    match site.policy.for_study(&study.output) {
        Ok(policy) => {
            let mut from = format!("set by {}", site.source);
            for t in &policy.tightened_by {
                from.push_str(&format!(", tightened by {t}"));
            }
            writeln!(out, "  Disclosure control: {} ({from}).", policy.describe()).unwrap();
            writeln!(
                out,
                "  It applies to every count that leaves the site: the released tables (attrition, attrition by arm, inclusion rules, Table 1, endpoints, Kaplan–Meier curves, numbers at risk, Cox models), run.json, the screen and the review report."
            )
            .unwrap();
            if policy.rounding > 1 {
                writeln!(
                    out,
                    "  Counts are rounded one by one, so no difference or sum of released counts is exact; a row with a withheld count has all its counts withheld."
                )
                .unwrap();
            } else {
                writeln!(
                    out,
                    "  No released count, and no difference or sum of released counts (between steps, between persons and entries, between arms and their totals, between rule combinations and their margins), reveals 1 to {} persons: further rows are withheld until none does, and a row with a withheld count has all its counts withheld.",
                    policy.threshold - 1
                )
                .unwrap();
            }
            writeln!(
                out,
                "  An interactive session rounds every count it shows to the nearest multiple of {}.",
                policy.live_rounding()
            )
            .unwrap();
        }
        Err(looser) => writeln!(
            out,
            "  The study's `{}` asks for less than {} ({}): it cannot run under it.",
            looser.asked, site.source, looser.floor
        )
        .unwrap(),
    }
    out.push_str("  Person-level outputs (the cohort table with real person ids, the dataset) are written under site/ and stay at the site; only aggregates are written under release/.\n");
    out.push_str(if study.output.pseudonymise_ids {
        "  The dataset's persons are pseudonyms: HMAC-SHA-256 keyed by the site's secret over the study hash and the person id; the repository's person and record ids are left out.\n"
    } else {
        "  The dataset at the site carries the repository's own person ids and index record ids.\n"
    });
    let export = match (site.dataset_export, study.output.exact_dates) {
        (Export::Never, _) => "the site allows none".to_string(),
        (Export::ExactDates, true) => {
            "the site allows one; it would carry pseudonyms and exact calendar dates, as the study asks (`exported dates exact`)".to_string()
        }
        (Export::RelativeDates, true) => {
            "the study asks for exact dates, which the site does not allow: an export is refused".to_string()
        }
        (_, false) => "the site allows one; it would carry pseudonyms, the year of index and days relative to index instead of dates".to_string(),
    };
    writeln!(
        out,
        "  A person-level export (`run --export-dataset`): {export}."
    )
    .unwrap();
}
