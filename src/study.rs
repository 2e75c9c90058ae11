//! The typed study model: the one vocabulary every stage after checking speaks.
//!
//! A `Study` is resolved (names point at definitions), normalised (every window is an inclusive
//! day range around a named anchor) and free of source positions, so two files that mean the
//! same thing build equal models and hash alike. Later stages (explain, hash, lowering to query
//! plans, the reference evaluator) need nothing else.

use chrono::NaiveDate;
use serde::Serialize;

pub use crate::syntax::ast::{
    Aggregate, Anchor, CmpOp, CountOp, Distinct, Domain, Edge, Occurrence,
};

/// A whole study.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Study {
    pub title: String,
    pub version: Option<String>,
    pub question: Option<String>,
    pub description: Option<String>,
    pub authors: Vec<String>,
    /// Warnings the study acknowledges, with the reason it gives: `check` no longer shows them
    /// and `explain` lists them. Left out of the hash's form when empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub acknowledged: Vec<Acknowledgement>,
    /// Named concept sets, in the order they are declared.
    pub concept_sets: Vec<ConceptSet>,
    /// Time zero: the event that defines each person's index date.
    pub index: IndexEvent,
    /// `require` and `exclude` lines, in file order: the attrition steps.
    pub steps: Vec<Step>,
    /// Exposure arms; a person is assigned to the first arm whose criterion holds.
    pub arms: Vec<Arm>,
    pub follow_up: FollowUp,
    pub covariates: Vec<Covariate>,
    pub endpoints: Vec<Endpoint>,
    pub output: OutputPolicy,
    pub consent: Consent,
}

/// `acknowledge W0001 "why"`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Acknowledgement {
    /// The warning's code, e.g. `W0001`.
    pub code: String,
    pub reason: String,
}

/// `celecoxib = drug 1118084 "celecoxib" + descendants`: a named set of concepts.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ConceptSet {
    pub name: String,
    /// The domain the set was declared for, if any.
    pub domain: Option<Domain>,
    pub expr: ConceptExpr,
}

/// How a set of concept ids is obtained from the vocabulary.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum ConceptExpr {
    /// One concept id; the label is the concept name as written, checked against the vocabulary.
    Concept {
        id: i64,
        label: Option<String>,
    },
    /// The concepts of a source vocabulary whose codes match any of the patterns.
    SourceCodes {
        vocabulary: String,
        codes: Vec<CodePattern>,
    },
    /// The concepts whose name is exactly this text (case-insensitive).
    Named(String),
    /// The named concept set with this position in `Study::concept_sets`.
    Set(usize),
    /// The concepts and all their descendants (`concept_ancestor`).
    WithDescendants(Box<ConceptExpr>),
    /// The standard concepts these concepts map to (`concept_relationship` "Maps to").
    Mapped(Box<ConceptExpr>),
    /// The concepts and every concept that maps to one of them ("Maps to" read backwards: the
    /// source codes of standard concepts, as OHDSI's Circe `includeMapped`).
    WithSources(Box<ConceptExpr>),
    Union(Vec<ConceptExpr>),
    /// The concepts of the left side that are not in the right side.
    Minus(Box<ConceptExpr>, Box<ConceptExpr>),
}

/// A source code as written: exact (`K92.2`), prefix (`K92*`) or range (`M15..M19`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum CodePattern {
    Exact(String),
    Prefix(String),
    /// Codes from `low` to `high` inclusive, where `high` also covers its sub-codes.
    Range(String, String),
}

impl CodePattern {
    /// Whether a source code matches the pattern (case-insensitive, dots kept).
    pub fn matches(&self, code: &str) -> bool {
        let code = code.to_ascii_uppercase();
        match self {
            CodePattern::Exact(c) => code == c.to_ascii_uppercase(),
            CodePattern::Prefix(p) => code.starts_with(&p.to_ascii_uppercase()),
            CodePattern::Range(low, high) => {
                let (low, high) = (low.to_ascii_uppercase(), high.to_ascii_uppercase());
                let head: String = code.chars().take(high.chars().count()).collect();
                code >= low && head <= high
            }
        }
    }
}

/// Records of one domain, of an optional concept set, that pass every filter.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EventQuery {
    pub domain: Domain,
    /// `None` means records of any concept.
    pub concepts: Option<ConceptExpr>,
    pub filters: Vec<EventFilter>,
    /// `… | observation in x`: the records of these queries too (each with no `also` of its
    /// own). Left out of the hash's form when empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub also: Vec<EventQuery>,
    /// `era of …`: the records chained into eras, which are then the events. Left out of the
    /// hash's form when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub era: Option<Era>,
}

/// Eras of records: a person's records chained while the gap from the latest end so far to
/// the next record's start is at most `gap` days. An era starts with its first record, ends at
/// the latest end (a missing end filled in as exits read it) and its id is the smallest id of
/// its records; it has no concept, visit or value.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Era {
    pub gap: i64,
    /// Only eras whose length, from start to end counting both days, passes this.
    pub duration: Option<NumberTest>,
}

impl EventQuery {
    /// Records of one domain, of any concept, unfiltered.
    pub fn of(domain: Domain) -> EventQuery {
        EventQuery {
            domain,
            concepts: None,
            filters: Vec::new(),
            also: Vec::new(),
            era: None,
        }
    }

    /// This query's alternatives: itself (without `also`) and each of `also`.
    pub fn alternatives(&self) -> impl Iterator<Item = &EventQuery> {
        std::iter::once(self).chain(self.also.iter())
    }

    /// The domains of its alternatives.
    pub fn domains(&self) -> impl Iterator<Item = Domain> + '_ {
        self.alternatives().map(|q| q.domain)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum EventFilter {
    /// `value > 4`: the numeric value of a measurement, observation or image feature.
    Value(NumberTest),
    /// `value in her2_positive`: the value recorded as a concept.
    ValueIn(ConceptExpr),
    /// The value lies above the record's normal range (`range_high`).
    AboveNormal,
    /// The value lies below the record's normal range (`range_low`).
    BelowNormal,
    UnitIn(ConceptExpr),
    /// `source in icd10_codes`: the record's source concept (`condition_source_concept_id`,
    /// …), the code as recorded before mapping to a standard concept.
    SourceIn(ConceptExpr),
    /// The imaging modality, as DICOM codes (`MR`, `CT`, …).
    Modality(Vec<String>),
    /// The kind of an oncology episode (`episode_concept_id`).
    KindIn(ConceptExpr),
    /// Days from the record's start to its end, inclusive of both (a one-day record lasts 1 day).
    Duration(NumberTest),
    /// The record belongs to the same visit as the anchor event.
    SameVisit,
    /// `first ever`: the person's earliest record of the domain and concept set (by start date,
    /// then record id), whatever the other filters; they then apply to that record alone.
    FirstEver,
    /// A criterion evaluated relative to this record (anchor `event`).
    Where(Box<Criterion>),
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum NumberTest {
    Compare(CmpOp, f64),
    /// Inclusive at both ends.
    Between(f64, f64),
}

impl Window {
    /// Any day, not narrowed by observation: the start window of a criterion written with only
    /// `ending …` windows.
    pub fn is_any_time(&self) -> bool {
        matches!(
            self,
            Window::Days {
                start: None,
                end: None,
                observed: false,
                ..
            }
        )
    }
}

/// A window on one day of a record: its start or its end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct EdgeWindow {
    pub edge: Edge,
    pub window: Window,
}

/// A range of days around an anchor, inclusive of both ends; `None` is unbounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Window {
    Days {
        anchor: Anchor,
        start: Option<i64>,
        end: Option<i64>,
        /// `during observation`: the record must also start in the observation period that
        /// contains the anchor (for `index end` and `event end`, the record's start day; with
        /// several periods there, from the earliest start of those to the latest end), and an
        /// unbounded side of the window stops at that period's edge.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        observed: bool,
    },
    /// From follow-up start to follow-up end, both included.
    FollowUp,
}

/// A condition on a person, or on an event inside `where`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Criterion {
    All(Vec<Criterion>),
    Any(Vec<Criterion>),
    Not(Box<Criterion>),
    /// Enough records of `query` start inside `window` (and meet `more`).
    Events {
        count: Count,
        query: EventQuery,
        window: Window,
        /// Further windows on the record's start or end day (`ending [0, inf] days`), all of
        /// which the same record must meet.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        more: Vec<EdgeWindow>,
    },
    /// One observation period covers every day of the window.
    Observation {
        anchor: Anchor,
        start: i64,
        end: i64,
    },
    /// Sex is one of these gender concept ids.
    Sex(Vec<i64>),
    Compare {
        quantity: Quantity,
        test: ValueTest,
    },
}

/// How many matching records a criterion asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Count {
    pub op: CountOp,
    pub n: u64,
    pub distinct: Option<Distinct>,
}

impl Count {
    pub const EXISTS: Count = Count {
        op: CountOp::AtLeast,
        n: 1,
        distinct: None,
    };
}

pub use crate::syntax::ast::Quantity;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum ValueTest {
    Compare(CmpOp, Value),
    Between(Value, Value),
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub enum Value {
    Number(f64),
    Date(NaiveDate),
}

/// OMOP gender concepts.
pub const MALE: i64 = 8507;
pub const FEMALE: i64 = 8532;
pub const UNKNOWN_SEX: i64 = 8551;

/// `index = first drug in nsaids …`
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct IndexEvent {
    pub occurrence: Occurrence,
    pub query: EventQuery,
    /// Only events dated on or after this day qualify.
    pub from: Option<NaiveDate>,
    /// Only events dated on or before this day qualify.
    pub until: Option<NaiveDate>,
    /// Days of observation required before (negative) and after the event, in one period.
    /// Without `with continuous observation`, `[0, 0]`: the event lies in an observation period.
    pub observation: (i64, i64),
    /// `with or without observation`: events outside every observation period qualify too
    /// (`observation` is then `[0, 0]` and only says which period an entry belongs to).
    /// Left out of the hash's form when false, so studies without it keep their hash.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub any_observation: bool,
    /// `each person at DATE`: every person with an observation period that contains the date
    /// enters on it (`query` is then observation periods, the period being the index record).
    /// Left out of the hash's form when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at_date: Option<NaiveDate>,
}

/// The attrition table's first rule: every record of the index event, before observation,
/// calendar limits and the choice of first, last or all; its `entries` column counts records.
pub const INDEX_RECORDS_RULE: &str = "records of the index event";

/// `101` (step 1 and 3 passed, 2 failed) as `1, 3`; no step passed as `none`.
pub fn steps_passed(pattern: &str) -> String {
    let passed: Vec<String> = pattern
        .chars()
        .enumerate()
        .filter(|(_, c)| *c == '1')
        .map(|(i, _)| (i + 1).to_string())
        .collect();
    if passed.is_empty() {
        "none".to_string()
    } else {
        passed.join(", ")
    }
}

/// One attrition step.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Step {
    pub exclude: bool,
    /// Always true for a `keep` step.
    pub criterion: Criterion,
    /// `keep first entry` / `keep last entry`: the step keeps each person's first or last
    /// entry (by index date, then index record id) among those the steps before it kept.
    /// Serialised only when set: the hashes of studies without it are unchanged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep: Option<Occurrence>,
    /// The rule as the study states it, in canonical layout (the attrition table's `rule`).
    /// Not part of the hash: `[-365, -1] days` and `365 days before index` mean the same.
    #[serde(skip_serializing)]
    pub rule: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Arm {
    pub name: String,
    pub criterion: Criterion,
}

/// When each person's time at risk starts and ends.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FollowUp {
    /// Follow-up starts this many days after index (`from index + 1 day` is 1).
    pub start_offset: i64,
    /// Follow-up ends at the earliest of these, and never after the end of the observation
    /// period that contains index.
    pub exits: Vec<Exit>,
    /// Entries of one person whose follow-up periods lie within this many days are merged.
    pub collapse_days: Option<i64>,
    /// Follow-up is clipped to these dates; entries left with no follow-up are dropped.
    pub period_from: Option<NaiveDate>,
    pub period_to: Option<NaiveDate>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Exit {
    ObservationEnd,
    /// The end of continuous exposure: drug exposures of the set chained together when the gap
    /// between one's end and the next's start is at most `gap` days, plus `extra` days.
    ExposureEnd {
        concepts: ConceptExpr,
        gap: i64,
        extra: i64,
    },
    Date(NaiveDate),
    /// A fixed number of days after index or after follow-up start.
    Offset {
        anchor: Anchor,
        days: i64,
    },
    /// The first such event on or after follow-up start.
    Event(EventQuery),
    /// The end of the index record plus `extra` days; a missing end counts as described in
    /// docs/language.md (`record_end`).
    RecordEnd {
        extra: i64,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Covariate {
    pub name: String,
    pub value: CovariateValue,
    /// `as confounder`: the adjusted Cox model adjusts for it. Left out of the hash's form
    /// when false, so studies without it keep their hash.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub confounder: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum CovariateValue {
    Sex,
    Quantity(Quantity),
    Count {
        distinct: Option<Distinct>,
        query: EventQuery,
        window: Window,
    },
    /// A value of matching records; `concept` takes `value_as_concept_id` instead of the number.
    Aggregate {
        aggregate: Aggregate,
        concept: bool,
        query: EventQuery,
        window: Window,
    },
    /// Days from the first or last matching record to index.
    DaysSince {
        last: bool,
        query: EventQuery,
        window: Window,
    },
    /// 1 when the criterion holds, else 0.
    Flag(Criterion),
    /// The product of these covariates (positions in `Study::covariates`).
    Interaction(Vec<usize>),
}

/// What kind of column a covariate is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ValueKind {
    Number,
    Flag,
    Category,
    Date,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Endpoint {
    pub name: String,
    pub kind: EndpointKind,
    pub query: EventQuery,
    pub window: Window,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum EndpointKind {
    /// Event flag and days from follow-up start to the first event, or to the end of follow-up.
    TimeToEvent,
    /// Whether at least one event starts in the window.
    Binary,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OutputPolicy {
    /// Counts below this are withheld from every aggregate output: a request, raised to the
    /// site's threshold when that is higher (`spans.min_cell_count` says whether the study
    /// wrote it).
    pub min_cell_count: u64,
    pub pseudonymise_ids: bool,
    /// `cohort_definition_id` of the OMOP cohort table. Left out of the hash's form when it is
    /// the default, 1, so studies without it keep their hash.
    #[serde(skip_serializing_if = "is_default_cohort_id")]
    pub cohort_id: i64,
    /// `disclosure policy NAME`: the preset the study asks for, in lower case.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disclosure: Option<String>,
    /// `exported dates exact`: a person-level export keeps calendar dates, where the site's
    /// configuration allows it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub exact_dates: bool,
    /// Where the settings a site's policy is measured against were written.
    #[serde(skip)]
    pub spans: OutputSpans,
}

/// Where a study wrote its disclosure settings, to point at one a site's policy refuses. Not
/// part of the study's meaning: two studies differing only here are equal.
#[derive(Clone, Copy, Debug, Default)]
pub struct OutputSpans {
    pub min_cell_count: Option<crate::syntax::ast::Span>,
    pub disclosure: Option<crate::syntax::ast::Span>,
}

impl PartialEq for OutputSpans {
    fn eq(&self, _: &OutputSpans) -> bool {
        true
    }
}

/// The `cohort_definition_id` a study gets unless it names one.
pub const DEFAULT_COHORT_ID: i64 = 1;

fn is_default_cohort_id(id: &i64) -> bool {
    *id == DEFAULT_COHORT_ID
}

impl Default for OutputPolicy {
    fn default() -> Self {
        OutputPolicy {
            min_cell_count: 5,
            pseudonymise_ids: true,
            cohort_id: DEFAULT_COHORT_ID,
            disclosure: None,
            exact_dates: false,
            spans: OutputSpans::default(),
        }
    }
}

/// Which data a person's consent governs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Consent {
    /// The study declares no rule: all data are used.
    NotDeclared,
    /// The study declares that no consent is needed (e.g. retrospective use under a legal basis).
    NotRequired,
    /// Data (all, or recorded from `from` on) count only for persons with such a record.
    RequiredBy {
        query: EventQuery,
        from: Option<NaiveDate>,
    },
}
