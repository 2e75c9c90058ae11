//! From syntax tree to `Study`: resolves names, normalises windows, checks types, and returns
//! every error and warning at once.

mod concepts;
mod events;

pub use concepts::{MAX_CONCEPT_ID, VOCABULARIES};
use events::{alt_has_values, alt_has_visit};
pub use events::{has_end_date, has_values, has_visit, MAX_DAYS, MODALITIES};

use crate::diag::{Code, Diagnostic};
use crate::fmt;
use crate::study::*;
use crate::syntax::ast::{self, SectionKind, Span, Spanned};
use events::{Place, Scope};
use std::collections::HashMap;

/// What checking a study gives: the model when there are no errors, and every diagnostic.
#[derive(Debug)]
pub struct Checked {
    pub study: Option<Study>,
    pub diagnostics: Vec<Diagnostic>,
}

impl Checked {
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| d.is_error())
    }
}

/// Checks a parsed study and builds its model.
pub fn check_study(file: &ast::StudyFile) -> Checked {
    let mut checker = Checker {
        diagnostics: Vec::new(),
        set_index: HashMap::new(),
        set_defs: Vec::new(),
        suggestions_left: 100,
        any_observation_span: None,
        acknowledgements: Vec::new(),
    };
    let study = checker.study(file);
    let mut diagnostics = checker.diagnostics;
    // Acknowledged warnings are not shown; an acknowledgement with nothing to acknowledge is.
    for (code, span) in &checker.acknowledgements {
        let before = diagnostics.len();
        diagnostics.retain(|d| d.is_error() || d.code.id() != code);
        if diagnostics.len() == before {
            diagnostics.push(
                Diagnostic::new(
                    Code::NoEffect,
                    format!("the study raises no {code} to acknowledge"),
                )
                .at(*span)
                .label("nothing to acknowledge")
                .help("remove the line, or check the warning's code in docs/errors.md"),
            );
        }
    }
    diagnostics.sort_by_key(|d| (d.span.map_or(0, |s| s.start), d.severity));
    let has_errors = diagnostics.iter().any(Diagnostic::is_error);
    Checked {
        study: if has_errors { None } else { Some(study) },
        diagnostics,
    }
}

/// How many `require`/`exclude` lines, exposure arms, covariates or endpoints a study may have.
pub const MAX_STATEMENTS: usize = 1000;

/// The largest `cohort id`: OMOP's `cohort_definition_id` is a 32-bit integer.
pub const MAX_COHORT_ID: i64 = i32::MAX as i64;

/// Column names the dataset uses itself, which covariates and endpoints may not take.
const RESERVED_COLUMNS: &[&str] = &[
    "person_id",
    "subject_id",
    "index_date",
    "arm",
    "follow_up_start",
    "follow_up_end",
    "cohort_start_date",
    "cohort_end_date",
];

pub(crate) struct Checker<'a> {
    diagnostics: Vec<Diagnostic>,
    set_index: HashMap<String, usize>,
    set_defs: Vec<&'a ast::ConceptDef>,
    /// "Did you mean" compares a name with every definition; it is offered a bounded number of
    /// times so a file with thousands of unknown names still checks quickly.
    suggestions_left: usize,
    /// Where the index definition says `with or without observation`, for a warning about
    /// follow-up.
    any_observation_span: Option<Span>,
    /// The warning codes the study acknowledges, with where.
    acknowledgements: Vec<(String, Span)>,
}

impl<'a> Checker<'a> {
    fn push(&mut self, d: Diagnostic) {
        self.diagnostics.push(d);
    }

    fn study(&mut self, file: &'a ast::StudyFile) -> Study {
        let mut version = None;
        let mut question = None;
        let mut description = None;
        let mut authors = Vec::new();
        let mut acknowledged: Vec<Acknowledgement> = Vec::new();
        for field in &file.fields {
            let slot = match field.key.node {
                ast::HeaderKey::Acknowledge => {
                    let code = field.code.as_ref().expect("the grammar requires a code");
                    let id = code.node.to_ascii_uppercase();
                    let known = Code::ALL
                        .iter()
                        .any(|c| c.id() == id && c.severity() == crate::diag::Severity::Warning);
                    if !known {
                        self.push(
                            Diagnostic::new(
                                Code::NoEffect,
                                format!("{id} is not a warning cohortql gives"),
                            )
                            .at(code.span)
                            .label("no such warning")
                            .help("docs/errors.md lists the warnings, W0001 to W0005"),
                        );
                    } else if let Some((_, first)) =
                        self.acknowledgements.iter().find(|(c, _)| *c == id)
                    {
                        let first = *first;
                        self.push(duplicate_setting(
                            "an acknowledgement of this warning",
                            code.span,
                            first,
                        ));
                    } else {
                        self.acknowledgements.push((id.clone(), code.span));
                        acknowledged.push(Acknowledgement {
                            code: id,
                            reason: field.value.node.clone(),
                        });
                    }
                    continue;
                }
                ast::HeaderKey::Version => &mut version,
                ast::HeaderKey::Question => &mut question,
                ast::HeaderKey::Description => &mut description,
                ast::HeaderKey::Author => {
                    authors.push(field.value.node.clone());
                    continue;
                }
            };
            if let Some((_, first)) = slot {
                let first: Span = *first;
                self.diagnostics.push(duplicate_setting(
                    "this header field",
                    field.key.span,
                    first,
                ));
            } else {
                *slot = Some((field.value.node.clone(), field.key.span));
            }
        }

        // Sections, each at most once (`endpoint` lines gather into one list).
        let mut seen: HashMap<&'static str, Span> = HashMap::new();
        let mut concept_defs: Vec<&ast::ConceptDef> = Vec::new();
        let mut population = None;
        let mut arm_defs: &[ast::ArmDef] = &[];
        let mut follow_up_items: &[ast::FollowUpItem] = &[];
        let mut covariate_defs: &[ast::CovariateDef] = &[];
        let mut endpoint_defs: Vec<&ast::EndpointDef> = Vec::new();
        let mut output_items: &[ast::OutputItem] = &[];
        let mut consent_rule = None;
        for section in &file.sections {
            let name = match &section.kind {
                SectionKind::Concepts(defs) => {
                    concept_defs.extend(defs.iter());
                    "concepts"
                }
                // A repeated section is reported below; the first one is the one checked.
                SectionKind::Population(p) => {
                    population = population.or(Some((p, section.span)));
                    "population"
                }
                SectionKind::Arms(a) => {
                    if !seen.contains_key("exposure arms") {
                        arm_defs = a;
                    }
                    "exposure arms"
                }
                SectionKind::FollowUp(f) => {
                    if !seen.contains_key("follow-up") {
                        follow_up_items = f;
                    }
                    "follow-up"
                }
                SectionKind::Covariates(c) => {
                    if !seen.contains_key("covariates") {
                        covariate_defs = c;
                    }
                    "covariates"
                }
                SectionKind::Endpoints { defs, single } => {
                    endpoint_defs.extend(defs.iter());
                    if *single {
                        continue;
                    }
                    "endpoints"
                }
                SectionKind::Output(o) => {
                    if !seen.contains_key("output") {
                        output_items = o;
                    }
                    "output"
                }
                SectionKind::Consent(c) => {
                    consent_rule = consent_rule.or(Some(c));
                    "consent"
                }
            };
            if let Some(first) = seen.get(name) {
                self.push(
                    Diagnostic::new(
                        Code::DuplicateSection,
                        format!("the `{name}` section is written twice"),
                    )
                    .at(section.span)
                    .label("second time")
                    .also(*first, "first here")
                    .help(format!("move everything into the first `{name}` section")),
                );
            } else {
                seen.insert(name, section.span);
            }
        }

        // Every step, arm, covariate and endpoint adds a join to the study's plans: their
        // number is bounded, so that no study can make planning run away.
        let counted: [(&str, Vec<Span>); 4] = [
            (
                "`require` and `exclude` lines",
                population
                    .map(|(p, _)| p.steps.iter().map(|s| s.span).collect())
                    .unwrap_or_default(),
            ),
            ("exposure arms", arm_defs.iter().map(|a| a.span).collect()),
            (
                "covariates",
                covariate_defs.iter().map(|c| c.span).collect(),
            ),
            ("endpoints", endpoint_defs.iter().map(|e| e.span).collect()),
        ];
        for (what, spans) in counted {
            if let Some(&span) = spans.get(MAX_STATEMENTS) {
                self.push(
                    Diagnostic::new(
                        Code::TooLarge,
                        format!(
                            "the study has {} {what}; at most {MAX_STATEMENTS} are allowed",
                            spans.len()
                        ),
                    )
                    .at(span)
                    .label("one too many")
                    .help("a study this large is better split into several studies"),
                );
            }
        }

        self.declare_concept_sets(&concept_defs);
        self.check_concept_cycles();
        let defs = self.set_defs.clone();
        let concept_sets = defs
            .iter()
            .map(|def| ConceptSet {
                name: def.name.node.clone(),
                domain: def.domain.as_ref().map(|d| d.node),
                expr: self.concept_expr(&def.expr, def.domain.as_ref().map(|d| d.node)),
            })
            .collect();

        let (index, steps) = self.population(population, file.title.span);
        let arms = self.arms(arm_defs);
        let follow_up = self.follow_up(follow_up_items, &index);
        let mut columns: HashMap<String, Span> = HashMap::new();
        let covariates = self.covariates(covariate_defs, &mut columns);
        let endpoints = self.endpoints(&endpoint_defs, follow_up.start_offset, &mut columns);
        let output = self.output(output_items);
        let consent = match consent_rule {
            None => Consent::NotDeclared,
            Some(rule) => match &rule.kind {
                ast::ConsentKind::NotRequired => Consent::NotRequired,
                ast::ConsentKind::RequiredBy { query, from } => Consent::RequiredBy {
                    query: self.event_query(query, Scope::at(Place::FollowUp)),
                    from: from.as_ref().map(|d| self.date(d)),
                },
            },
        };

        Study {
            title: file.title.node.clone(),
            version: version.map(|v| v.0),
            question: question.map(|v| v.0),
            description: description.map(|v| v.0),
            authors,
            acknowledged,
            concept_sets,
            index,
            steps,
            arms,
            follow_up,
            covariates,
            endpoints,
            output,
            consent,
        }
    }

    fn population(
        &mut self,
        population: Option<(&ast::Population, Span)>,
        title: Span,
    ) -> (IndexEvent, Vec<Step>) {
        let placeholder = IndexEvent {
            occurrence: Occurrence::First,
            query: EventQuery::of(Domain::Condition),
            from: None,
            until: None,
            observation: (0, 0),
            any_observation: false,
            at_date: None,
        };
        let Some((population, section_span)) = population else {
            self.push(
                Diagnostic::new(
                    Code::MissingIndex,
                    "the study has no `population` section, so no index date",
                )
                .at(title)
                .help("add `population` with `index = first …`, the event that is time zero"),
            );
            return (placeholder, Vec::new());
        };
        let index = match &population.index {
            None => {
                self.push(
                    Diagnostic::new(Code::MissingIndex, "the population has no index date")
                        .at(section_span)
                        .label("no `index = …` here")
                        .help("start the population with `index = first <event>`, e.g. `index = first drug in statins`"),
                );
                placeholder
            }
            Some(def) => self.index_event(def),
        };
        let mut steps = Vec::new();
        for step in &population.steps {
            let rule = fmt::step_text(step);
            let (exclude, criterion, keep) = match &step.kind {
                ast::StepKind::Require(c) | ast::StepKind::Exclude(c) => (
                    matches!(step.kind, ast::StepKind::Exclude(_)),
                    self.criterion(c, Scope::at(Place::Baseline)),
                    None,
                ),
                ast::StepKind::Keep(which) => {
                    if index.occurrence != Occurrence::All {
                        self.push(
                            Diagnostic::new(
                                Code::NoEffect,
                                "every person has one entry already: the index is each person's first or last event",
                            )
                            .at(step.span)
                            .label("keeps every entry")
                            .help("to choose among all events after the steps, write `index = all …` and end with `keep first entry`"),
                        );
                    }
                    (false, Criterion::All(Vec::new()), Some(*which))
                }
            };
            steps.push(Step {
                exclude,
                criterion,
                keep,
                rule,
            });
        }
        (index, steps)
    }

    fn index_event(&mut self, def: &ast::IndexDef) -> IndexEvent {
        // `each person at start of observation` is each person's first observation period;
        // `each person at DATE`, the period that contains the date, entered on the date.
        let at_date = match def.each_person.as_ref().map(|e| &e.node) {
            Some(ast::EachPerson::Date(d)) => Some(self.date(d)),
            _ => None,
        };
        if at_date.is_some() {
            for option in &def.options {
                if matches!(option.kind, ast::EntryOptionKind::Observation(_)) {
                    continue;
                }
                self.push(
                    Diagnostic::new(
                        Code::OptionNotForIndex,
                        "this option does nothing for an index on a fixed date",
                    )
                    .at(option.span)
                    .label("does not apply")
                    .help("every entry is dated on that day, inside an observation period; only `with continuous observation` applies"),
                );
            }
        }
        let occurrence = match &def.occurrence {
            Some(o) => o.node,
            None if def.each_person.is_some() => Occurrence::First,
            None => {
                self.push(
                    Diagnostic::new(Code::MissingIndex, "which qualifying event is time zero?")
                        .at(def.query.domain.span)
                        .label("say `first`, `last` or `all` before the event")
                        .help(format!(
                            "e.g. `index = first {}`",
                            fmt::event_query_text(&def.query)
                        )),
                );
                Occurrence::First
            }
        };
        let query = self.event_query(&def.query, Scope::at(Place::Entry));
        let mut from = None;
        let mut until = None;
        let mut observation: Option<((i64, i64), Span)> = None;
        let mut any_observation = false;
        let set_date = |this: &mut Self,
                        slot: &mut Option<(chrono::NaiveDate, Span)>,
                        d: &Spanned<String>,
                        at: Span| {
            let date = this.date(d);
            if let Some((_, first)) = slot {
                let first = *first;
                this.push(duplicate_setting(
                    "a calendar limit for the index event",
                    at,
                    first,
                ));
            } else {
                *slot = Some((date, at));
            }
        };
        // The one observation requirement of the index: whether this one is it.
        let set_observation = |this: &mut Self,
                               slot: &mut Option<((i64, i64), Span)>,
                               bounds: (i64, i64),
                               at: Span| {
            if let Some((_, first)) = slot {
                let first = *first;
                this.push(duplicate_setting(
                    "an observation requirement for the index event",
                    at,
                    first,
                ));
                false
            } else {
                *slot = Some((bounds, at));
                true
            }
        };
        for option in &def.options {
            match &option.kind {
                ast::EntryOptionKind::Between(a, b) => {
                    set_date(self, &mut from, a, option.span);
                    set_date(self, &mut until, b, option.span);
                }
                ast::EntryOptionKind::From(a) => set_date(self, &mut from, a, option.span),
                ast::EntryOptionKind::Until(b) => set_date(self, &mut until, b, option.span),
                ast::EntryOptionKind::AnyObservation => {
                    if set_observation(self, &mut observation, (0, 0), option.span) {
                        any_observation = true;
                        self.any_observation_span = Some(option.span);
                    }
                }
                ast::EntryOptionKind::Observation(w) => {
                    self.no_observation_in(Some(w));
                    let scope = Scope {
                        in_where: true,
                        ..Scope::at(Place::Entry)
                    };
                    let window = self.window(w, scope);
                    let bounds = match window {
                        Window::Days {
                            start: Some(s),
                            end: Some(e),
                            ..
                        } if s <= 0 && e >= 0 => (s, e),
                        Window::Days {
                            start: Some(_),
                            end: Some(_),
                            ..
                        } => {
                            self.push(
                                Diagnostic::new(Code::WindowReversed, "the observation window must contain the event's day")
                                    .at(w.span)
                                    .help("write days before as a negative start and days after as a positive end, e.g. `[-365, 0] days`"),
                            );
                            (0, 0)
                        }
                        _ => {
                            self.push(
                                Diagnostic::new(
                                    Code::UnboundedObservation,
                                    "continuous observation needs a window with two bounds",
                                )
                                .at(w.span)
                                .help("e.g. `with continuous observation [-365, 0] days`"),
                            );
                            (0, 0)
                        }
                    };
                    set_observation(self, &mut observation, bounds, option.span);
                }
            }
        }
        if let (Some((f, fs)), Some((u, _))) = (from, until) {
            if f > u {
                self.push(
                    Diagnostic::new(
                        Code::BetweenReversed,
                        format!("no day is both on or after {f} and on or before {u}"),
                    )
                    .at(fs)
                    .help("write the earlier date first"),
                );
            }
        }
        IndexEvent {
            occurrence,
            query,
            from: from.map(|f| f.0),
            until: until.map(|u| u.0),
            observation: observation.map_or((0, 0), |o| o.0),
            any_observation: any_observation && at_date.is_none(),
            at_date,
        }
    }

    fn arms(&mut self, defs: &[ast::ArmDef]) -> Vec<Arm> {
        let mut names: HashMap<String, Span> = HashMap::new();
        defs.iter()
            .map(|def| {
                self.unique_name(&mut names, &def.name, "exposure arm");
                Arm {
                    name: def.name.node.clone(),
                    criterion: self.criterion(&def.criterion, Scope::at(Place::Baseline)),
                }
            })
            .collect()
    }

    fn follow_up(&mut self, items: &[ast::FollowUpItem], index: &IndexEvent) -> FollowUp {
        let mut start: Option<(i64, Span)> = None;
        let mut exits: Option<(Vec<Exit>, Span)> = None;
        let mut collapse: Option<(i64, Span)> = None;
        let mut period: Option<(DateRange, Span)> = None;
        for item in items {
            match &item.kind {
                ast::FollowUpKind::From(point) => {
                    if point.anchor.node != ast::Anchor::Index {
                        self.push(
                            Diagnostic::new(
                                Code::AnchorUnavailable,
                                "follow-up starts relative to `index`",
                            )
                            .at(point.anchor.span)
                            .help("e.g. `from index + 1 day`"),
                        );
                    }
                    let days = point.offset.as_ref().map_or(0, |o| self.days(o));
                    if days < 0 {
                        self.push(
                            Diagnostic::new(
                                Code::InvalidExit,
                                "follow-up cannot start before index",
                            )
                            .at(point.span)
                            .label("before time zero")
                            .help(
                                "start follow-up on index or after it, e.g. `from index + 1 day`",
                            ),
                        );
                    }
                    if let Some((_, first)) = start {
                        self.push(duplicate_setting(
                            "the start of follow-up",
                            item.span,
                            first,
                        ));
                    } else {
                        start = Some((days, item.span));
                    }
                }
                ast::FollowUpKind::Until { exits: list, .. } => {
                    let built = list.iter().map(|e| self.exit(e)).collect();
                    if let Some((_, first)) = exits {
                        self.push(duplicate_setting("the end of follow-up", item.span, first));
                    } else {
                        exits = Some((built, item.span));
                    }
                }
                ast::FollowUpKind::Collapse(days) => {
                    let d = self.days(days);
                    if d < 0 {
                        self.push(
                            Diagnostic::new(
                                Code::InvalidNumber,
                                "entries cannot be collapsed within a negative number of days",
                            )
                            .at(days.span)
                            .help("write 0 to merge only overlapping or adjacent entries"),
                        );
                    }
                    if let Some((_, first)) = collapse {
                        self.push(duplicate_setting("`collapse`", item.span, first));
                    } else {
                        collapse = Some((d, item.span));
                    }
                }
                ast::FollowUpKind::StudyPeriod { from, to } => {
                    let f = from.as_ref().map(|d| self.date(d));
                    let t = to.as_ref().map(|d| self.date(d));
                    if let (Some(a), Some(b)) = (f, t) {
                        if a > b {
                            self.push(
                                Diagnostic::new(
                                    Code::BetweenReversed,
                                    format!("the study period ends ({b}) before it starts ({a})"),
                                )
                                .at(item.span)
                                .help("write the earlier date after `from`"),
                            );
                        }
                    }
                    if let Some((_, first)) = period {
                        self.push(duplicate_setting("the study period", item.span, first));
                    } else {
                        period = Some(((f, t), item.span));
                    }
                }
            }
        }
        let (period_from, period_to) = period.map_or((None, None), |p| p.0);
        // An entry outside observation has no observation end: without an exit that always
        // has a date, its follow-up has no end and it leaves the study.
        let always_dated = |e: &Exit| {
            matches!(
                e,
                Exit::Date(_)
                    | Exit::Offset { .. }
                    | Exit::RecordEnd { .. }
                    | Exit::ExposureEnd { .. }
            )
        };
        if index.any_observation
            && period_to.is_none()
            && !exits
                .as_ref()
                .is_some_and(|(e, _)| e.iter().any(always_dated))
        {
            let at = exits.as_ref().map(|e| e.1).or(self.any_observation_span);
            if let Some(at) = at {
                self.push(
                    Diagnostic::new(
                        Code::UnendedFollowUp,
                        "entries outside observation have no end of follow-up, so they leave the study",
                    )
                    .at(at)
                    .help("end follow-up at a date every entry has, e.g. `until earliest of end of observation, end of index record` or `index + 365 days`"),
                );
            }
        }
        FollowUp {
            start_offset: start.map_or(0, |s| s.0),
            exits: exits.map_or_else(|| vec![Exit::ObservationEnd], |e| e.0),
            collapse_days: collapse.map(|c| c.0),
            period_from,
            period_to,
        }
    }

    fn exit(&mut self, exit: &ast::Exit) -> Exit {
        match &exit.kind {
            ast::ExitKind::ObservationEnd => Exit::ObservationEnd,
            // A record without an end date column ends the day after its start, as Circe
            // dates it (see `reference::record_end`).
            ast::ExitKind::RecordEnd { extra } => Exit::RecordEnd {
                extra: extra.as_ref().map_or(0, |d| self.days(d)),
            },
            ast::ExitKind::ExposureEnd {
                concepts,
                gap,
                extra,
            } => {
                let non_negative = |this: &mut Self, d: &Option<Spanned<String>>| {
                    d.as_ref().map_or(0, |d| this.days(d))
                };
                Exit::ExposureEnd {
                    concepts: self.concept_expr(concepts, Some(Domain::Drug)),
                    gap: non_negative(self, gap),
                    extra: non_negative(self, extra),
                }
            }
            ast::ExitKind::Date(d) => Exit::Date(self.date(d)),
            ast::ExitKind::Offset(point) => {
                let anchor = point.anchor.node;
                if !matches!(anchor, ast::Anchor::Index | ast::Anchor::FollowUpStart) {
                    let help = if anchor == ast::Anchor::IndexEnd {
                        "write `end of index record + N days`"
                    } else {
                        "end follow-up relative to `index` or `follow-up start`, e.g. `index + 365 days`"
                    };
                    self.push(
                        Diagnostic::new(
                            Code::InvalidExit,
                            format!("follow-up cannot end relative to `{}`", anchor.words()),
                        )
                        .at(point.anchor.span)
                        .help(help),
                    );
                }
                let days = point.offset.as_ref().map_or(0, |o| self.days(o));
                if days < 0 {
                    self.push(
                        Diagnostic::new(
                            Code::InvalidExit,
                            "follow-up cannot end before the date it is measured from",
                        )
                        .at(point.span)
                        .help("use a positive number of days"),
                    );
                }
                Exit::Offset { anchor, days }
            }
            ast::ExitKind::Event { query, .. } => {
                if let Some(alt) = query
                    .alternatives()
                    .find(|a| a.domain.node == Domain::ObservationPeriod)
                {
                    self.push(
                        Diagnostic::new(
                            Code::InvalidExit,
                            "an observation period does not end follow-up by starting",
                        )
                        .at(alt.domain.span)
                        .help("write `end of observation`"),
                    );
                }
                Exit::Event(self.event_query(query, Scope::at(Place::FollowUp)))
            }
        }
    }

    fn covariates(
        &mut self,
        defs: &[ast::CovariateDef],
        columns: &mut HashMap<String, Span>,
    ) -> Vec<Covariate> {
        let scope = Scope {
            look_ahead: true,
            ..Scope::at(Place::Baseline)
        };
        let mut built: Vec<Covariate> = Vec::with_capacity(defs.len());
        let mut position: HashMap<&str, usize> = HashMap::new();
        for def in defs {
            self.column_name(columns, &def.name, "covariate");
            position
                .entry(def.name.node.as_str())
                .or_insert(built.len());
            let value = match &def.value {
                ast::CovariateValue::Sex => CovariateValue::Sex,
                ast::CovariateValue::Quantity(q) => {
                    // A value covariate may be taken at follow-up start or end: the dataset is
                    // built after follow-up (criteria and flags are decided before it).
                    let values = Scope {
                        place: Place::Outcome,
                        ..scope
                    };
                    self.anchor(&Spanned::new(q.node.anchor(), q.span), values);
                    CovariateValue::Quantity(q.node)
                }
                ast::CovariateValue::Count {
                    distinct,
                    query,
                    window,
                } => {
                    let without_visit = query.alternatives().find(|a| !alt_has_visit(a));
                    if let (Some(Distinct::Visits), Some(alt)) = (distinct, without_visit) {
                        self.push(
                            Diagnostic::new(
                                Code::FilterNotForDomain,
                                format!(
                                    "{} records have no visit to count",
                                    alt.domain.node.keyword()
                                ),
                            )
                            .at(def.span)
                            .help("count `distinct days` or `distinct concepts` instead"),
                        );
                    }
                    CovariateValue::Count {
                        distinct: *distinct,
                        query: self.event_query(query, scope),
                        window: self.required_window(window.as_ref(), def.span, scope),
                    }
                }
                ast::CovariateValue::Aggregate {
                    aggregate,
                    concept,
                    query,
                    window,
                } => {
                    if let Some(alt) = query.alternatives().find(|a| !alt_has_values(a)) {
                        self.push(
                            Diagnostic::new(
                                Code::ValueOnDomainWithoutValues,
                                format!("{} records have no value to take", alt.domain.node.keyword()),
                            )
                            .at(alt.domain.span)
                            .help("values are recorded for measurement, observation and image feature; use `count`, `exists` or `days since` here"),
                        );
                    }
                    if *concept && !matches!(aggregate, Aggregate::First | Aggregate::Last) {
                        self.push(
                            Diagnostic::new(
                                Code::TypeMismatch,
                                format!("a concept value has no {}", aggregate.keyword()),
                            )
                            .at(def.span)
                            .help("take the `first value concept` or the `last value concept`"),
                        );
                    }
                    CovariateValue::Aggregate {
                        aggregate: *aggregate,
                        concept: *concept,
                        query: self.event_query(query, scope),
                        window: self.required_window(window.as_ref(), def.span, scope),
                    }
                }
                ast::CovariateValue::DaysSince {
                    last,
                    query,
                    window,
                } => CovariateValue::DaysSince {
                    last: *last,
                    query: self.event_query(query, scope),
                    window: self.required_window(window.as_ref(), def.span, scope),
                },
                ast::CovariateValue::Flag(c) => CovariateValue::Flag(self.criterion(c, scope)),
                // Resolved below, once every covariate's kind is known.
                ast::CovariateValue::Interaction(_) => CovariateValue::Interaction(Vec::new()),
            };
            if let (Some(at), ValueKind::Date | ValueKind::Category) =
                (def.confounder, value_kind(&value))
            {
                if !matches!(value, CovariateValue::Sex | CovariateValue::Interaction(_)) {
                    self.push(
                        Diagnostic::new(
                            Code::ConfounderKind,
                            format!(
                                "`{}` cannot be a confounder: a model adjusts for numbers, flags and sex",
                                def.name.node
                            ),
                        )
                        .at(at)
                        .label("not a number, a flag or sex")
                        .help("adjust for a number derived from it (days since, a count) or a flag; a date or a concept value is not a term of the model"),
                    );
                }
            }
            built.push(Covariate {
                name: def.name.node.clone(),
                value,
                confounder: def.confounder.is_some(),
            });
        }
        for (i, def) in defs.iter().enumerate() {
            let ast::CovariateValue::Interaction(names) = &def.value else {
                continue;
            };
            let mut factors = Vec::new();
            for n in names {
                match position.get(n.node.as_str()) {
                    None => {
                        let all: Vec<&str> = defs.iter().map(|d| d.name.node.as_str()).collect();
                        let mut d = Diagnostic::new(
                            Code::UnknownCovariate,
                            format!("unknown covariate `{}`", n.node),
                        )
                        .at(n.span)
                        .label("not a covariate");
                        d = match crate::diag::did_you_mean(&n.node, all) {
                            Some(s) => d.help(format!("did you mean `{s}`?")),
                            None => d.help(
                                "an interaction multiplies covariates defined in this section",
                            ),
                        };
                        self.push(d);
                    }
                    Some(&j) => {
                        match value_kind(&built[j].value) {
                            ValueKind::Number | ValueKind::Flag => {}
                            kind => {
                                let what = if kind == ValueKind::Date {
                                    "a date"
                                } else {
                                    "a category"
                                };
                                let hint = if matches!(built[j].value, CovariateValue::Sex) {
                                    format!("define a flag such as `male = sex is male` and multiply by it instead of `{}`", n.node)
                                } else if matches!(built[j].value, CovariateValue::Interaction(_)) {
                                    "multiply the original covariates directly: `a * b * c`"
                                        .to_string()
                                } else {
                                    "interactions multiply numbers and flags".to_string()
                                };
                                self.push(
                                    Diagnostic::new(
                                        Code::NonNumericInteraction,
                                        format!("`{}` is {what} and cannot be multiplied", n.node),
                                    )
                                    .at(n.span)
                                    .label(what)
                                    .help(hint),
                                );
                            }
                        }
                        factors.push(j);
                    }
                }
            }
            built[i].value = CovariateValue::Interaction(factors);
        }
        built
    }

    fn endpoints(
        &mut self,
        defs: &[&ast::EndpointDef],
        start_offset: i64,
        columns: &mut HashMap<String, Span>,
    ) -> Vec<Endpoint> {
        defs.iter()
            .map(|def| {
                let kind = match def.kind.as_ref().map(|k| k.node) {
                    Some(ast::EndpointKind::Exists) => EndpointKind::Binary,
                    _ => EndpointKind::TimeToEvent,
                };
                self.column_name(columns, &def.name, "endpoint");
                if kind == EndpointKind::TimeToEvent {
                    let days = Spanned::new(format!("{}_days", def.name.node), def.name.span);
                    self.column_name(columns, &days, "endpoint's days column");
                }
                let scope = Scope { endpoint_from: Some(start_offset), ..Scope::at(Place::Outcome) };
                let query = self.event_query(&def.query, scope);
                let window = self.required_window(def.window.as_ref(), def.span, scope);
                if kind == EndpointKind::TimeToEvent && window != Window::FollowUp {
                    self.push(
                        Diagnostic::new(Code::EndpointNeedsFollowUp, "a time-to-event endpoint is counted during follow-up")
                            .at(def.window.as_ref().map_or(def.span, |w| w.span))
                            .label("not `during follow-up`")
                            .help(format!(
                                "write `{} = first {} during follow-up`, or make it binary with `exists`",
                                def.name.node,
                                fmt::event_query_text(&def.query)
                            )),
                    );
                }
                Endpoint { name: def.name.node.clone(), kind, query, window }
            })
            .collect()
    }

    fn output(&mut self, items: &[ast::OutputItem]) -> OutputPolicy {
        let mut policy = OutputPolicy::default();
        let mut seen_min: Option<Span> = None;
        let mut seen_ids: Option<Span> = None;
        let mut seen_cohort: Option<Span> = None;
        let mut seen_disclosure: Option<Span> = None;
        let mut seen_dates: Option<Span> = None;
        for item in items {
            match &item.kind {
                ast::OutputKind::MinCellCount(n) => {
                    if let Some(first) = seen_min {
                        self.push(duplicate_setting("`min cell count`", item.span, first));
                    }
                    seen_min = Some(item.span);
                    match n.node.parse::<u64>() {
                        Ok(v) if (1..=1_000_000).contains(&v) => {
                            policy.min_cell_count = v;
                            policy.spans.min_cell_count = Some(item.span);
                        }
                        _ => self.push(
                            Diagnostic::new(
                                Code::InvalidNumber,
                                format!(
                                    "a minimum cell count of {} is out of range (1 to 1000000)",
                                    n.node
                                ),
                            )
                            .at(n.span)
                            .help("common thresholds are 5, 10 or 11; 1 withholds nothing"),
                        ),
                    }
                }
                ast::OutputKind::CohortId(n) => {
                    if let Some(first) = seen_cohort {
                        self.push(duplicate_setting("`cohort id`", item.span, first));
                    }
                    seen_cohort = Some(item.span);
                    match n.node.parse::<i64>() {
                        Ok(v) if (1..=MAX_COHORT_ID).contains(&v) => policy.cohort_id = v,
                        _ => self.push(
                            Diagnostic::new(
                                Code::InvalidNumber,
                                format!(
                                    "a cohort id of {} is out of range (1 to {MAX_COHORT_ID})",
                                    n.node
                                ),
                            )
                            .at(n.span)
                            .help("the id is the OMOP cohort table's `cohort_definition_id`, a positive 32-bit integer"),
                        ),
                    }
                }
                ast::OutputKind::Disclosure(name) => {
                    if let Some(first) = seen_disclosure {
                        self.push(duplicate_setting("`disclosure policy`", item.span, first));
                    }
                    seen_disclosure = Some(item.span);
                    let lower = name.node.to_ascii_lowercase();
                    if crate::disclosure::Policy::preset(&lower).is_some() {
                        policy.disclosure = Some(lower);
                        policy.spans.disclosure = Some(item.span);
                    } else {
                        let mut d = Diagnostic::new(
                            Code::UnknownPolicy,
                            format!("there is no disclosure policy `{}`", name.node),
                        )
                        .at(name.span)
                        .label("not a policy");
                        d = match crate::diag::did_you_mean(&lower, crate::disclosure::PRESETS) {
                            Some(s) => d.help(format!("did you mean `{s}`? The policies are ohdsi, opensafely and strict")),
                            None => d.help("the policies are ohdsi, opensafely and strict, from the loosest to the strictest"),
                        };
                        self.push(d);
                    }
                }
                ast::OutputKind::ExportedDates { exact } => {
                    if let Some(first) = seen_dates {
                        self.push(duplicate_setting("`exported dates`", item.span, first));
                    }
                    seen_dates = Some(item.span);
                    policy.exact_dates = *exact;
                }
                ast::OutputKind::PersonIds { pseudonymised } => {
                    if let Some(first) = seen_ids {
                        self.push(duplicate_setting("`person ids`", item.span, first));
                    }
                    seen_ids = Some(item.span);
                    policy.pseudonymise_ids = *pseudonymised;
                }
            }
        }
        policy
    }

    fn unique_name(&mut self, names: &mut HashMap<String, Span>, name: &ast::Name, what: &str) {
        if let Some(first) = names.get(&name.node) {
            self.push(
                Diagnostic::new(
                    Code::DuplicateName,
                    format!("{what} `{}` is defined twice", name.node),
                )
                .at(name.span)
                .label("defined again here")
                .also(*first, "first defined here")
                .help("give each a different name"),
            );
        } else {
            names.insert(name.node.clone(), name.span);
        }
    }

    /// A covariate or endpoint name becomes a dataset column: unique, and not one of ours.
    fn column_name(&mut self, columns: &mut HashMap<String, Span>, name: &ast::Name, what: &str) {
        let lower = name.node.to_ascii_lowercase();
        if RESERVED_COLUMNS.contains(&lower.as_str()) || lower.starts_with("cohortql_") {
            self.push(
                Diagnostic::new(
                    Code::DuplicateName,
                    format!(
                        "the {what} `{}` would clash with the dataset column of that name",
                        name.node
                    ),
                )
                .at(name.span)
                .help(format!("choose another name, e.g. `{}_value`", name.node)),
            );
            return;
        }
        if let Some(first) = columns.get(&lower) {
            self.push(
                Diagnostic::new(Code::DuplicateName, format!("the dataset would have two columns named `{lower}`"))
                    .at(name.span)
                    .label(format!("this {what}"))
                    .also(*first, "already a column")
                    .help("covariates and endpoints are columns of one dataset: give each a different name (names are compared without case)"),
            );
        } else {
            columns.insert(lower, name.span);
        }
    }
}

type DateRange = (Option<chrono::NaiveDate>, Option<chrono::NaiveDate>);

fn duplicate_setting(what: &str, at: Span, first: Span) -> Diagnostic {
    Diagnostic::new(Code::DuplicateSetting, format!("{what} is given twice"))
        .at(at)
        .label("second time")
        .also(first, "first here")
        .help("keep one of them")
}

/// What kind of column a covariate produces.
pub fn value_kind(v: &CovariateValue) -> ValueKind {
    match v {
        CovariateValue::Sex => ValueKind::Category,
        CovariateValue::Quantity(Quantity::Date(_)) => ValueKind::Date,
        CovariateValue::Quantity(_) => ValueKind::Number,
        CovariateValue::Count { .. } | CovariateValue::DaysSince { .. } => ValueKind::Number,
        CovariateValue::Aggregate { concept: true, .. } => ValueKind::Category,
        CovariateValue::Aggregate { .. } => ValueKind::Number,
        CovariateValue::Flag(_) => ValueKind::Flag,
        // A product of products is refused; reporting it as a category makes that message apply.
        CovariateValue::Interaction(_) => ValueKind::Category,
    }
}
