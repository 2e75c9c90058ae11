//! Event queries, filters, windows and criteria: where anchors exist, what each domain records,
//! and which comparisons make sense.

use super::Checker;
use crate::diag::{Code, Diagnostic};
use crate::study::{
    Count, Criterion, EdgeWindow, EventFilter, EventQuery, NumberTest, Value, ValueTest, Window,
    FEMALE, MALE, UNKNOWN_SEX,
};
use crate::syntax::ast::{
    self, Anchor, Bound, CountOp, CriterionKind, Distinct, Domain, Edge, FilterKind, LiteralTest,
    QuantifierKind, Quantity, Relation, Side, Span, Spanned, WindowPhrase,
};
use chrono::NaiveDate;

/// The longest window bound, in days, a study may write (about 270 years).
pub const MAX_DAYS: i64 = 100_000;

/// DICOM modality codes a study may name.
pub const MODALITIES: &[&str] = &[
    "CR", "CT", "DX", "IO", "MG", "MR", "NM", "OT", "PT", "PX", "RF", "RG", "SM", "US", "XA", "XC",
];

/// How many `where ( … )` may enclose one another.
pub const MAX_WHERE_DEPTH: usize = 10;

/// Where a criterion or window stands, which decides which anchors exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// The index definition: no index exists yet.
    Entry,
    /// `require`/`exclude`, arms, covariates: index exists, follow-up does not.
    Baseline,
    /// Endpoints: index and follow-up exist.
    Outcome,
    /// Follow-up exits and the consent rule.
    FollowUp,
}

#[derive(Clone, Copy, Debug)]
pub struct Scope {
    pub place: Place,
    /// Inside `where ( … )`: the anchor `event` exists and is the default.
    pub in_where: bool,
    /// How many `where ( … )` enclose the criterion.
    pub where_depth: usize,
    /// The outer event's domain, for `same visit` inside `where`.
    pub outer_has_visit: bool,
    /// Covariates: warn when a window reaches past index.
    pub look_ahead: bool,
    /// Endpoints: the follow-up start offset, to warn when a window starts before it.
    pub endpoint_from: Option<i64>,
}

impl Scope {
    pub fn at(place: Place) -> Scope {
        Scope {
            place,
            in_where: false,
            where_depth: 0,
            outer_has_visit: true,
            look_ahead: false,
            endpoint_from: None,
        }
    }

    fn default_anchor(self) -> Anchor {
        if self.in_where {
            Anchor::Event
        } else {
            Anchor::Index
        }
    }
}

/// What the records of a domain carry.
pub fn has_values(d: Domain) -> bool {
    matches!(
        d,
        Domain::Measurement | Domain::Observation | Domain::ImageFeature
    )
}
pub fn has_units(d: Domain) -> bool {
    has_values(d)
}
pub fn has_normal_range(d: Domain) -> bool {
    matches!(d, Domain::Measurement | Domain::ImageFeature)
}
pub fn has_end_date(d: Domain) -> bool {
    matches!(
        d,
        Domain::Condition
            | Domain::Drug
            | Domain::Procedure
            | Domain::Visit
            | Domain::Device
            | Domain::ObservationPeriod
            | Domain::DrugEra
            | Domain::ConditionEra
            | Domain::Episode
    )
}
pub fn has_visit(d: Domain) -> bool {
    matches!(
        d,
        Domain::Condition
            | Domain::Drug
            | Domain::Procedure
            | Domain::Measurement
            | Domain::Observation
            | Domain::Visit
            | Domain::Device
            | Domain::ImageOccurrence
            | Domain::ImageFeature
    )
}
pub fn has_concepts(d: Domain) -> bool {
    d != Domain::ObservationPeriod
}

/// Whether the events of one alternative of a query (records, or eras of them) have visits,
/// values and end dates.
pub fn alt_has_visit(q: &ast::EventQuery) -> bool {
    q.era.is_none() && has_visit(q.domain.node)
}
pub fn alt_has_values(q: &ast::EventQuery) -> bool {
    q.era.is_none() && has_values(q.domain.node)
}

impl Checker<'_> {
    /// An event query with its alternatives (`condition in x | observation in x`).
    pub(super) fn event_query(&mut self, q: &ast::EventQuery, scope: Scope) -> EventQuery {
        let mut query = self.event_alt(q, scope);
        query.also = q.also.iter().map(|a| self.event_alt(a, scope)).collect();
        query
    }

    /// One alternative of an event query: a domain, its concepts and filters.
    fn event_alt(&mut self, q: &ast::EventQuery, scope: Scope) -> EventQuery {
        let domain = q.domain.node;
        let concepts = q.concepts.as_ref().map(|c| {
            if !has_concepts(domain) {
                self.push(
                    Diagnostic::new(
                        Code::FilterNotForDomain,
                        "observation periods have no concepts to select",
                    )
                    .at(c.span)
                    .help("remove `in …`, or use `continuous observation [a, b] days`"),
                );
            }
            self.concept_expr(c, Some(domain))
        });
        let inner_scope = Scope {
            in_where: true,
            where_depth: scope.where_depth + 1,
            outer_has_visit: has_visit(domain),
            ..scope
        };
        let mut filters = Vec::new();
        for f in &q.filters {
            let not_for = |what: &str, fits: &str| {
                Diagnostic::new(
                    Code::FilterNotForDomain,
                    format!("{} records have no {what}", domain.keyword()),
                )
                .at(f.span)
                .label("not recorded for this domain")
                .help(format!("{what} is recorded for {fits}"))
            };
            let filter = match &f.kind {
                FilterKind::Value(t) => {
                    if !has_values(domain) {
                        self.push(
                            Diagnostic::new(
                                Code::ValueOnDomainWithoutValues,
                                format!("{} records have no value to compare", domain.keyword()),
                            )
                            .at(f.span)
                            .label("value filter")
                            .help("values are recorded for measurement, observation and image feature"),
                        );
                    }
                    EventFilter::Value(self.number_test(t))
                }
                FilterKind::FirstEver => EventFilter::FirstEver,
                FilterKind::Duration(t) => {
                    if !has_end_date(domain) {
                        self.push(not_for("end date, so no duration", "condition, drug, procedure, visit, device, eras, observation period and episode"));
                    }
                    EventFilter::Duration(self.number_test(t))
                }
                FilterKind::ValueIn(c) => {
                    if !has_values(domain) {
                        self.push(
                            Diagnostic::new(
                                Code::ValueOnDomainWithoutValues,
                                format!("{} records have no value to compare", domain.keyword()),
                            )
                            .at(f.span)
                            .help("values are recorded for measurement, observation and image feature"),
                        );
                    }
                    EventFilter::ValueIn(self.concept_expr(c, None))
                }
                FilterKind::AboveNormal | FilterKind::BelowNormal => {
                    if !has_normal_range(domain) {
                        self.push(not_for("normal range", "measurement and image feature"));
                    }
                    if matches!(f.kind, FilterKind::AboveNormal) {
                        EventFilter::AboveNormal
                    } else {
                        EventFilter::BelowNormal
                    }
                }
                FilterKind::UnitIn(c) => {
                    if !has_units(domain) {
                        self.push(not_for(
                            "unit",
                            "measurement, observation and image feature",
                        ));
                    }
                    EventFilter::UnitIn(self.concept_expr(c, None))
                }
                FilterKind::SourceIn(c) => {
                    let records = crate::repo::domains::records(domain);
                    if records
                        .column(crate::repo::domains::Field::SourceConcept)
                        .is_none()
                    {
                        self.push(not_for(
                            "source concept",
                            "condition, drug, procedure, measurement, observation, visit, device and death",
                        ));
                    }
                    EventFilter::SourceIn(self.concept_expr(c, None))
                }
                FilterKind::Modality(codes) => {
                    if !matches!(domain, Domain::ImageOccurrence | Domain::ImageFeature) {
                        self.push(not_for("modality", "image occurrence and image feature"));
                    }
                    let mut out = Vec::new();
                    for code in codes {
                        let upper = code.node.to_ascii_uppercase();
                        if !MODALITIES.contains(&upper.as_str()) {
                            let mut d = Diagnostic::new(
                                Code::UnknownModality,
                                format!("`{}` is not a DICOM modality", code.node),
                            )
                            .at(code.span);
                            d = match crate::diag::did_you_mean(&upper, MODALITIES.iter().copied())
                            {
                                Some(s) => d.help(format!("did you mean `{s}`?")),
                                None => d.help(format!("modalities: {}", MODALITIES.join(", "))),
                            };
                            self.push(d);
                        }
                        out.push(upper);
                    }
                    EventFilter::Modality(out)
                }
                FilterKind::KindIn(c) => {
                    if domain != Domain::Episode {
                        self.push(not_for("episode kind", "episode"));
                    }
                    EventFilter::KindIn(self.concept_expr(c, None))
                }
                FilterKind::SameVisit => {
                    if !has_visit(domain) {
                        self.push(not_for("visit", "condition, drug, procedure, measurement, observation, visit, device and imaging"));
                    } else if scope.in_where && !scope.outer_has_visit {
                        self.push(
                            Diagnostic::new(Code::FilterNotForDomain, "the outer event has no visit to share")
                                .at(f.span)
                                .help("`same visit` inside `where` compares with the visit of the event it is attached to"),
                        );
                    } else if scope.place == Place::Entry && !scope.in_where {
                        self.push(
                            Diagnostic::new(
                                Code::AnchorUnavailable,
                                "`same visit` in the index definition has no visit to compare with",
                            )
                            .at(f.span)
                            .help(
                                "use `same visit` in `require`, covariates or inside `where ( … )`",
                            ),
                        );
                    }
                    EventFilter::SameVisit
                }
                FilterKind::Where(c) => {
                    // Each level joins the records of every level around it: planning grows
                    // with the cube of the depth, so the depth is bounded.
                    if inner_scope.where_depth > MAX_WHERE_DEPTH {
                        self.push(
                            Diagnostic::new(
                                Code::TooDeep,
                                format!("`where ( … )` nested more than {MAX_WHERE_DEPTH} deep"),
                            )
                            .at(f.span)
                            .label("too deep")
                            .help("state the innermost criteria as separate `require` lines"),
                        );
                    }
                    EventFilter::Where(Box::new(self.criterion(c, inner_scope)))
                }
            };
            filters.push(filter);
        }
        let era = q.era.as_ref().map(|spec| {
            for f in &q.filters {
                if matches!(f.kind, FilterKind::SameVisit | FilterKind::Where(_)) {
                    self.push(
                        Diagnostic::new(
                            Code::FilterNotForDomain,
                            "the records of an era are chained before any anchor exists",
                        )
                        .at(f.span)
                        .label("not for the records of an era")
                        .help("select an era's records by concept and by their own values; put criteria about other events in separate lines"),
                    );
                }
            }
            let gap = self.days(&spec.gap);
            if gap < 0 {
                self.push(
                    Diagnostic::new(Code::InvalidNumber, "an era's gap cannot be negative")
                        .at(spec.gap.span)
                        .help("`gap 0 days` chains records that overlap or touch"),
                );
            }
            let duration = spec.duration.as_ref().and_then(|f| match &f.kind {
                FilterKind::Duration(t) => Some(self.number_test(t)),
                _ => None,
            });
            crate::study::Era { gap, duration }
        });
        EventQuery {
            domain,
            concepts,
            filters,
            also: Vec::new(),
            era,
        }
    }

    pub(super) fn number_test(&mut self, t: &ast::NumberTest) -> NumberTest {
        match t {
            ast::NumberTest::Compare { op, value } => NumberTest::Compare(*op, self.number(value)),
            ast::NumberTest::Between { low, high } => {
                let (l, h) = (self.number(low), self.number(high));
                if l > h {
                    self.push(between_reversed(
                        &low.node,
                        &high.node,
                        low.span.to(high.span),
                    ));
                }
                NumberTest::Between(l, h)
            }
        }
    }

    fn number(&mut self, s: &Spanned<String>) -> f64 {
        match s.node.parse::<f64>() {
            Ok(v) if v.is_finite() => v,
            _ => {
                self.push(
                    Diagnostic::new(
                        Code::InvalidNumber,
                        format!("`{}` is too large a number", s.node),
                    )
                    .at(s.span)
                    .help("numbers are decimal, e.g. `4.5`"),
                );
                0.0
            }
        }
    }

    /// A whole number of days, checked against `MAX_DAYS`.
    pub(super) fn days(&mut self, s: &Spanned<String>) -> i64 {
        match s.node.parse::<i64>() {
            Ok(v) if v.abs() <= MAX_DAYS => v,
            _ => {
                self.push(
                    Diagnostic::new(Code::InvalidNumber, format!("{} days is out of range", s.node))
                        .at(s.span)
                        .label("too many days")
                        .help(format!("windows and offsets are at most {MAX_DAYS} days; use `any time` for no limit")),
                );
                0
            }
        }
    }

    pub(super) fn date(&mut self, s: &Spanned<String>) -> NaiveDate {
        match NaiveDate::parse_from_str(&s.node, "%Y-%m-%d") {
            Ok(d) => d,
            Err(_) => {
                self.push(
                    Diagnostic::new(Code::InvalidDate, format!("`{}` is not a calendar date", s.node))
                        .at(s.span)
                        .label("no such day")
                        .help("dates are written YYYY-MM-DD and must exist, e.g. 2020-02-29 but not 2021-02-29"),
                );
                NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date")
            }
        }
    }

    /// `during observation` on the window of `continuous observation`, which means nothing.
    pub(super) fn no_observation_in(&mut self, window: Option<&ast::Window>) {
        if let Some(at) = window.and_then(|w| w.during_observation) {
            self.push(
                Diagnostic::new(
                    Code::ObservationNotForWindow,
                    "continuous observation is about observation periods already",
                )
                .at(at)
                .label("adds nothing here")
                .help("remove `during observation`"),
            );
        }
    }

    /// Checks that an anchor exists where it is used.
    pub(super) fn anchor(&mut self, a: &Spanned<Anchor>, scope: Scope) -> Anchor {
        let problem = match (a.node, scope.place) {
            (Anchor::Event | Anchor::EventEnd, _) if !scope.in_where => Some((
                format!(
                    "the anchor `{}` exists only inside `where ( … )`",
                    a.node.words()
                ),
                if a.node == Anchor::EventEnd {
                    "use `index end`, or attach the criterion to an event with `where ( … )`"
                } else {
                    "use `index`, or attach the criterion to an event with `where ( … )`"
                }
                .to_string(),
            )),
            (Anchor::IndexEnd, Place::Entry) => Some((
                "the index record is not known while it is being defined".to_string(),
                "inside the index definition, windows are relative to `event` or `event end`"
                    .to_string(),
            )),
            (Anchor::Index, Place::Entry) => Some((
                "the index date is not known while it is being defined".to_string(),
                "inside the index definition, windows are relative to `event`".to_string(),
            )),
            (Anchor::FollowUpStart | Anchor::FollowUpEnd, Place::Entry | Place::Baseline) => {
                Some((
                    format!(
                        "`{}` is not known here: follow-up is decided after the population",
                        a.node.words()
                    ),
                    "windows here are relative to `index`".to_string(),
                ))
            }
            _ => None,
        };
        if let Some((message, help)) = problem {
            self.push(
                Diagnostic::new(Code::AnchorUnavailable, message)
                    .at(a.span)
                    .label("not available here")
                    .help(help),
            );
        }
        a.node
    }

    /// Normalises a window phrase to its inclusive day range.
    pub(super) fn window(&mut self, w: &ast::Window, scope: Scope) -> Window {
        let default = scope.default_anchor();
        let observed = w.during_observation.is_some();
        let (anchor, start, end) = match &w.phrase {
            WindowPhrase::DuringFollowUp => {
                if let Some(at) = w.during_observation {
                    self.push(
                        Diagnostic::new(
                            Code::ObservationNotForWindow,
                            "follow-up lies in the observation period already",
                        )
                        .at(at)
                        .label("adds nothing to `during follow-up`")
                        .help("remove `during observation`"),
                    );
                }
                if scope.place != Place::Outcome {
                    self.push(
                        Diagnostic::new(
                            Code::AnchorUnavailable,
                            "`during follow-up` is only known for endpoints",
                        )
                        .at(w.span)
                        .label("follow-up is decided after the population")
                        .help("use a window relative to `index`, e.g. `[-365, -1] days`"),
                    );
                }
                return Window::FollowUp;
            }
            WindowPhrase::Bracket { start, end, anchor } => {
                let a = anchor.as_ref().map_or(default, |a| self.anchor(a, scope));
                let s = match &start.node {
                    Bound::Days(d) => Some(self.days(&Spanned::new(d.clone(), start.span))),
                    Bound::MinusInfinity => None,
                    Bound::PlusInfinity => {
                        self.push(
                            Diagnostic::new(Code::WindowReversed, "a window cannot start at +inf")
                                .at(start.span)
                                .help("write `-inf` for no lower limit"),
                        );
                        None
                    }
                };
                let e = match &end.node {
                    Bound::Days(d) => Some(self.days(&Spanned::new(d.clone(), end.span))),
                    Bound::PlusInfinity => None,
                    Bound::MinusInfinity => {
                        self.push(
                            Diagnostic::new(Code::WindowReversed, "a window cannot end at -inf")
                                .at(end.span)
                                .help("write `inf` for no upper limit"),
                        );
                        None
                    }
                };
                (a, s, e)
            }
            WindowPhrase::AnyTime { side } => match side {
                None => (default, None, None),
                Some((Side::Before, a)) => (self.anchor(a, scope), None, Some(-1)),
                Some((Side::After, a)) => (self.anchor(a, scope), Some(1), None),
            },
            WindowPhrase::Within { days, anchor } => {
                let n = self.days(days);
                (self.anchor(anchor, scope), Some(-n), Some(n))
            }
            WindowPhrase::Relative {
                days,
                relation,
                anchor,
            } => {
                let a = self.anchor(anchor, scope);
                let n = days.as_ref().map(|d| self.days(d));
                if let (Some(d), Relation::On) = (days, relation) {
                    self.push(
                        Diagnostic::new(Code::DaysWithOn, format!("`{} days on {}` has no meaning", d.node, a.words()))
                            .at(w.span)
                            .help(format!(
                                "write `on {0}` for the day itself, or `{1} days on or before {0}` for a range",
                                a.words(),
                                d.node
                            )),
                    );
                }
                match relation {
                    Relation::Before => (a, n.map(|n| -n), Some(-1)),
                    Relation::OnOrBefore => (a, n.map(|n| -n), Some(0)),
                    Relation::On => (a, Some(0), Some(0)),
                    Relation::OnOrAfter => (a, Some(0), n),
                    Relation::After => (a, Some(1), n),
                }
            }
        };
        if let (Some(s), Some(e)) = (start, end) {
            if e < s {
                let d = Diagnostic::new(
                    Code::WindowReversed,
                    format!("window end {e} is before its start {s}"),
                )
                .at(w.span)
                .label("this window contains no day");
                let d = if matches!(w.phrase, WindowPhrase::Bracket { .. }) {
                    d.help(format!("swap the bounds: [{e}, {s}] days"))
                } else {
                    d.help("a window of `N days before` needs N of at least 1")
                };
                self.push(d);
            }
        }
        if !scope.in_where {
            self.warn_about_timing(w.span, anchor, start, end, scope);
        }
        Window::Days {
            anchor,
            start,
            end,
            observed,
        }
    }

    fn warn_about_timing(
        &mut self,
        at: Span,
        anchor: Anchor,
        start: Option<i64>,
        end: Option<i64>,
        scope: Scope,
    ) {
        // The index record's end lies on or after index: any window around it may reach past.
        let reaches_past = match anchor {
            Anchor::Index => end.is_none_or(|e| e > 0),
            Anchor::IndexEnd => end.is_none_or(|e| e >= 0),
            _ => false,
        };
        if scope.look_ahead && reaches_past {
            let reach = end.map_or("without limit".to_string(), |e| format!("to day {e}"));
            self.push(
                Diagnostic::new(Code::LookAhead, format!("this covariate window reaches past index ({reach})"))
                    .at(at)
                    .label("uses information from after time zero")
                    .help("baseline covariates should end on or before index, e.g. `[-365, 0] days`; look-ahead biases the comparison"),
            );
        }
        if let Some(from) = scope.endpoint_from {
            let starts_early = match anchor {
                Anchor::Index => start.is_none_or(|s| s < from),
                Anchor::FollowUpStart => start.is_none_or(|s| s < 0),
                _ => false,
            };
            if starts_early {
                let first = start.map_or("any day".to_string(), |s| {
                    format!("day {s} from {}", anchor.words())
                });
                self.push(
                    Diagnostic::new(Code::EndpointBeforeFollowUp, format!("this endpoint can occur before follow-up starts ({first})"))
                        .at(at)
                        .label("before follow-up")
                        .help(format!("follow-up starts on day {from} from index; count endpoints `during follow-up` or from day {from}")),
                );
            }
        }
    }

    /// A window that must be written; reports its absence at `at`.
    pub(super) fn required_window(
        &mut self,
        w: Option<&ast::Window>,
        at: Span,
        scope: Scope,
    ) -> Window {
        match w {
            Some(w) => self.window(w, scope),
            None => {
                let anchor = scope.default_anchor().words();
                self.push(
                    Diagnostic::new(Code::MissingWindow, "when must the event happen? This criterion has no window")
                        .at(at)
                        .label("no window")
                        .help(format!(
                            "add a window relative to {anchor}, e.g. `before {anchor}`, `[-365, -1] days` or `any time`"
                        )),
                );
                Window::Days {
                    anchor: scope.default_anchor(),
                    start: None,
                    end: None,
                    observed: false,
                }
            }
        }
    }

    /// A criterion's windows: the window on the record's start (any time when only its end
    /// has one) and the others.
    fn edge_windows(
        &mut self,
        windows: &[ast::EdgeWindow],
        at: Span,
        scope: Scope,
    ) -> (Window, Vec<EdgeWindow>) {
        let mut first = None;
        let mut more = Vec::new();
        for (i, w) in windows.iter().enumerate() {
            let edge = w.edge.as_ref().map_or(Edge::Start, |e| e.node);
            let window = self.window(&w.window, scope);
            if i == 0 && edge == Edge::Start {
                first = Some(window);
            } else {
                more.push(EdgeWindow { edge, window });
            }
        }
        let first = match first {
            Some(w) => w,
            None if !more.is_empty() => Window::Days {
                anchor: scope.default_anchor(),
                start: None,
                end: None,
                observed: false,
            },
            None => self.required_window(None, at, scope),
        };
        (first, more)
    }

    pub(super) fn criterion(&mut self, c: &ast::Criterion, scope: Scope) -> Criterion {
        match &c.kind {
            CriterionKind::Or(parts) => Criterion::Any(parts.iter().map(|p| self.criterion(p, scope)).collect()),
            CriterionKind::And(parts) => Criterion::All(parts.iter().map(|p| self.criterion(p, scope)).collect()),
            CriterionKind::Group(inner) => self.criterion(inner, scope),
            CriterionKind::Not(_) => {
                // Chains of `not` are walked in a loop: they may be long.
                let mut depth = 0usize;
                let mut inner = c;
                while let CriterionKind::Not(x) = &inner.kind {
                    depth += 1;
                    inner = x;
                }
                let base = self.criterion(inner, scope);
                if depth % 2 == 1 {
                    Criterion::Not(Box::new(base))
                } else {
                    base
                }
            }
            CriterionKind::Observation(window) => {
                self.no_observation_in(window.as_ref());
                let w = self.required_window(window.as_ref(), c.span, scope);
                match w {
                    Window::Days { anchor, start: Some(s), end: Some(e), .. } => Criterion::Observation { anchor, start: s, end: e },
                    Window::Days { anchor, .. } => {
                        self.push(
                            Diagnostic::new(Code::UnboundedObservation, "continuous observation needs a window with two bounds")
                                .at(window.as_ref().map_or(c.span, |w| w.span))
                                .label("unbounded")
                                .help("e.g. `continuous observation [-365, 0] days`"),
                        );
                        Criterion::Observation { anchor, start: 0, end: 0 }
                    }
                    Window::FollowUp => Criterion::Observation { anchor: Anchor::FollowUpStart, start: 0, end: 0 },
                }
            }
            CriterionKind::Events { quantifier, query, windows } => {
                let count = match quantifier.as_ref().map(|q| &q.kind) {
                    None | Some(QuantifierKind::Exists) => Count::EXISTS,
                    Some(QuantifierKind::Count { op, n, distinct, .. }) => {
                        let value = match n.node.parse::<u64>() {
                            Ok(v) if v <= u32::MAX as u64 => v,
                            _ => {
                                self.push(
                                    Diagnostic::new(Code::InvalidNumber, format!("a count of {} is out of range", n.node))
                                        .at(n.span)
                                        .help("counts are at most 4294967295"),
                                );
                                1
                            }
                        };
                        if *op == CountOp::AtLeast && value == 0 {
                            self.push(
                                Diagnostic::new(Code::NoEffect, "`at least 0` holds for everyone")
                                    .at(quantifier.as_ref().unwrap().span)
                                    .help("did you mean `at least 1`, or `exactly 0` for none?"),
                            );
                        }
                        let without_visit = query.alternatives().find(|a| !alt_has_visit(a));
                        if let (Some(Distinct::Visits), Some(alt)) = (distinct, without_visit) {
                            self.push(
                                Diagnostic::new(
                                    Code::FilterNotForDomain,
                                    format!("{} records have no visit to count", alt.domain.node.keyword()),
                                )
                                .at(quantifier.as_ref().unwrap().span)
                                .help("count `distinct days` or `distinct concepts` instead"),
                            );
                        }
                        Count { op: *op, n: value, distinct: *distinct }
                    }
                };
                let q = self.event_query(query, scope);
                let (window, more) = self.edge_windows(windows, c.span, scope);
                Criterion::Events { count, query: q, window, more }
            }
            CriterionKind::Sex(values) => Criterion::Sex(
                values
                    .iter()
                    .map(|v| match &v.node {
                        ast::SexValue::Male => MALE,
                        ast::SexValue::Female => FEMALE,
                        ast::SexValue::Unknown => UNKNOWN_SEX,
                        ast::SexValue::Concept(id) => match id.parse::<i64>() {
                            Ok(x) if x <= super::concepts::MAX_CONCEPT_ID => x,
                            _ => {
                                self.push(
                                    Diagnostic::new(Code::InvalidConceptId, format!("concept id {id} is out of range"))
                                        .at(v.span)
                                        .help("write `male`, `female`, `unknown` or a gender concept id"),
                                );
                                0
                            }
                        },
                    })
                    .collect(),
            ),
            CriterionKind::Compare { quantity, test } => {
                self.anchor(&Spanned::new(quantity.node.anchor(), quantity.span), scope);
                let test = self.value_test(quantity, test);
                Criterion::Compare { quantity: quantity.node, test }
            }
        }
    }

    fn value_test(&mut self, quantity: &Spanned<Quantity>, test: &LiteralTest) -> ValueTest {
        let wants_date = matches!(quantity.node, Quantity::Date(_));
        let value = |this: &mut Self, lit: &Spanned<ast::Literal>| -> Value {
            match (&lit.node, wants_date) {
                (ast::Literal::Date(d), true) => {
                    Value::Date(this.date(&Spanned::new(d.clone(), lit.span)))
                }
                (ast::Literal::Number(n), false) => {
                    Value::Number(this.number(&Spanned::new(n.clone(), lit.span)))
                }
                (ast::Literal::Date(d), false) => {
                    this.push(
                        Diagnostic::new(Code::TypeMismatch, format!("{} is a number, but {d} is a date", quantity.node.words()))
                            .at(lit.span)
                            .label("a date")
                            .also(quantity.span, "a number of years")
                            .help("compare ages with numbers of years (`age at index >= 18`), and dates with `date of index`"),
                    );
                    Value::Number(0.0)
                }
                (ast::Literal::Number(n), true) => {
                    this.push(
                        Diagnostic::new(
                            Code::TypeMismatch,
                            format!("{} is a date, but {n} is a number", quantity.node.words()),
                        )
                        .at(lit.span)
                        .label("a number")
                        .also(quantity.span, "a date")
                        .help("write a date as YYYY-MM-DD, or compare `year of index` with a year"),
                    );
                    Value::Date(NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date"))
                }
            }
        };
        match test {
            LiteralTest::Compare { op, value: v } => ValueTest::Compare(*op, value(self, v)),
            LiteralTest::Between { low, high } => {
                let l = value(self, low);
                let h = value(self, high);
                let reversed = match (l, h) {
                    (Value::Number(a), Value::Number(b)) => a > b,
                    (Value::Date(a), Value::Date(b)) => a > b,
                    _ => false,
                };
                if reversed {
                    self.push(between_reversed(
                        literal_text(&low.node),
                        literal_text(&high.node),
                        low.span.to(high.span),
                    ));
                }
                ValueTest::Between(l, h)
            }
        }
    }
}

fn literal_text(l: &ast::Literal) -> &str {
    match l {
        ast::Literal::Number(s) | ast::Literal::Date(s) => s,
    }
}

fn between_reversed(low: &str, high: &str, span: Span) -> Diagnostic {
    Diagnostic::new(
        Code::BetweenReversed,
        format!("`between {low} and {high}` contains nothing: {low} is above {high}"),
    )
    .at(span)
    .help(format!(
        "write the smaller bound first: `between {high} and {low}`"
    ))
}
