//! The syntax tree of a study file, as written: every node carries the span of its text.
//!
//! The tree keeps the surface form (which friendly window phrase, which spelling of a section) so
//! that `fmt` can print it back; meaning is decided later by the checker.

use serde::Serialize;

pub use crate::diag::Span;

/// A value and the span it was written at.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Spanned<T> {
    pub node: T,
    pub span: Span,
}

impl<T> Spanned<T> {
    pub fn new(node: T, span: Span) -> Self {
        Spanned { node, span }
    }
}

pub type Name = Spanned<String>;

/// A whole study file.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StudyFile {
    pub title: Spanned<String>,
    pub fields: Vec<HeaderField>,
    pub sections: Vec<Section>,
}

/// `version "1.0.0"`, `question "..."`, `description "..."`, `author "..."`, or
/// `acknowledge W0001 "why"`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HeaderField {
    pub key: Spanned<HeaderKey>,
    /// The warning code of `acknowledge`.
    pub code: Option<Spanned<String>>,
    pub value: Spanned<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum HeaderKey {
    Version,
    Question,
    Description,
    Author,
    Acknowledge,
}

/// One top-level section; `span` covers its keyword.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Section {
    pub kind: SectionKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum SectionKind {
    Concepts(Vec<ConceptDef>),
    Population(Population),
    Arms(Vec<ArmDef>),
    FollowUp(Vec<FollowUpItem>),
    Covariates(Vec<CovariateDef>),
    /// An `endpoints` section, or one `endpoint name = …` line (`single` is true).
    Endpoints {
        defs: Vec<EndpointDef>,
        single: bool,
    },
    Output(Vec<OutputItem>),
    Consent(ConsentRule),
}

/// `celecoxib = drug 1118084 "celecoxib" + descendants`
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ConceptDef {
    pub name: Name,
    pub domain: Option<Spanned<Domain>>,
    pub expr: ConceptExpr,
    pub span: Span,
}

/// A concept-set expression: terms joined by `|` (union) and `-` (exclusion), left to right.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ConceptExpr {
    pub first: ConceptTerm,
    pub rest: Vec<(SetOp, ConceptTerm)>,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum SetOp {
    Union,
    Minus,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ConceptTerm {
    pub atom: ConceptAtom,
    pub descendants: bool,
    pub mapped: bool,
    /// `+ sources`: also every concept that maps to one of these.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub sources: bool,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum ConceptAtom {
    /// `1118084 "celecoxib"`: a concept id, with the concept name as a checked label.
    Id {
        id: Spanned<String>,
        label: Option<Spanned<String>>,
    },
    /// `icd10cm "M15-M19", "K92.2"`: codes of a source vocabulary.
    SourceCodes {
        vocabulary: Name,
        codes: Vec<Spanned<String>>,
    },
    /// `"original_firstorder_Entropy"`: a concept by its exact name.
    ByName(Spanned<String>),
    /// `( … )`
    Group(Box<ConceptExpr>),
    /// A concept set defined in `concepts`.
    Ref(Name),
}

/// The OMOP event domains a study can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Domain {
    Condition,
    Drug,
    Procedure,
    Measurement,
    Observation,
    Visit,
    Death,
    Device,
    Specimen,
    ObservationPeriod,
    DrugEra,
    ConditionEra,
    Episode,
    ImageOccurrence,
    ImageFeature,
}

impl Domain {
    pub const ALL: [Domain; 15] = [
        Domain::Condition,
        Domain::Drug,
        Domain::Procedure,
        Domain::Measurement,
        Domain::Observation,
        Domain::Visit,
        Domain::Death,
        Domain::Device,
        Domain::Specimen,
        Domain::ObservationPeriod,
        Domain::DrugEra,
        Domain::ConditionEra,
        Domain::Episode,
        Domain::ImageOccurrence,
        Domain::ImageFeature,
    ];

    /// The words that name the domain in a study.
    pub fn keyword(self) -> &'static str {
        match self {
            Domain::Condition => "condition",
            Domain::Drug => "drug",
            Domain::Procedure => "procedure",
            Domain::Measurement => "measurement",
            Domain::Observation => "observation",
            Domain::Visit => "visit",
            Domain::Death => "death",
            Domain::Device => "device",
            Domain::Specimen => "specimen",
            Domain::ObservationPeriod => "observation period",
            Domain::DrugEra => "drug era",
            Domain::ConditionEra => "condition era",
            Domain::Episode => "episode",
            Domain::ImageOccurrence => "image occurrence",
            Domain::ImageFeature => "image feature",
        }
    }
}

/// `drug in celecoxib value > 3 …`: records of one domain, optionally of a concept set, filtered;
/// `condition in x | observation in x`: the records of either (`also` holds the others).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EventQuery {
    pub domain: Spanned<Domain>,
    pub concepts: Option<ConceptExpr>,
    pub filters: Vec<EventFilter>,
    /// The whole query, every alternative included.
    pub span: Span,
    /// Further alternatives after `|`, each of one domain.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub also: Vec<EventQuery>,
    /// `era of … gap N days [duration …]`: the records chained into eras; `filters` select
    /// the records.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub era: Option<EraSpec>,
}

/// `gap 30 days duration >= 90 days` of `era of …`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EraSpec {
    pub gap: Spanned<String>,
    /// `duration …` after the gap: a filter on the era.
    pub duration: Option<EventFilter>,
    pub span: Span,
}

impl EventQuery {
    /// This query's alternatives: itself (without `also`) and each of `also`.
    pub fn alternatives(&self) -> impl Iterator<Item = &EventQuery> {
        std::iter::once(self).chain(self.also.iter())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EventFilter {
    pub kind: FilterKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum FilterKind {
    Value(NumberTest),
    ValueIn(ConceptExpr),
    AboveNormal,
    BelowNormal,
    UnitIn(ConceptExpr),
    SourceIn(ConceptExpr),
    Modality(Vec<Name>),
    KindIn(ConceptExpr),
    Duration(NumberTest),
    SameVisit,
    FirstEver,
    Where(Box<Criterion>),
}

/// `> 4`, `between 1 and 3`: a test on a number, written as text so nothing is lost.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum NumberTest {
    Compare {
        op: CmpOp,
        value: Spanned<String>,
    },
    Between {
        low: Spanned<String>,
        high: Spanned<String>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum CmpOp {
    Lt,
    Le,
    Eq,
    Ne,
    Ge,
    Gt,
}

impl CmpOp {
    pub fn symbol(self) -> &'static str {
        match self {
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Eq => "=",
            CmpOp::Ne => "!=",
            CmpOp::Ge => ">=",
            CmpOp::Gt => ">",
        }
    }
}

/// A window as written: one of the phrases of the language.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Window {
    pub phrase: WindowPhrase,
    pub span: Span,
    /// `during observation`, where written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub during_observation: Option<Span>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum WindowPhrase {
    /// `[-365, -1] days` or `[0, 30] days of event`
    Bracket {
        start: Spanned<Bound>,
        end: Spanned<Bound>,
        anchor: Option<Spanned<Anchor>>,
    },
    /// `during follow-up`
    DuringFollowUp,
    /// `any time`, `any time before index`, `any time after index`
    AnyTime {
        side: Option<(Side, Spanned<Anchor>)>,
    },
    /// `within 30 days of index`
    Within {
        days: Spanned<String>,
        anchor: Spanned<Anchor>,
    },
    /// `before index`, `30 days on or before index`, `on index`
    Relative {
        days: Option<Spanned<String>>,
        relation: Relation,
        anchor: Spanned<Anchor>,
    },
}

/// A bracket bound as written: a whole number of days, or unbounded.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Bound {
    Days(String),
    MinusInfinity,
    PlusInfinity,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Side {
    Before,
    After,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Relation {
    Before,
    OnOrBefore,
    On,
    OnOrAfter,
    After,
}

/// `starting [-inf, 0] days`, `ending [0, inf] days`: a window on one of a record's days.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EdgeWindow {
    /// `starting` / `ending`, where written (unwritten: the start).
    pub edge: Option<Spanned<Edge>>,
    pub window: Window,
}

/// Which day of a record a window tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Edge {
    Start,
    /// The end, dated as `end of index record` is: a missing end is filled in.
    End,
}

/// The date a window or an offset is measured from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Anchor {
    Index,
    FollowUpStart,
    FollowUpEnd,
    /// The event a nested `where ( … )` criterion is attached to.
    Event,
    /// The end of the index record (as `end of index record` dates it).
    IndexEnd,
    /// The end of the event of `where ( … )`.
    EventEnd,
}

impl Anchor {
    /// The anchor whose day's observation period `during observation` reads: for the end of a
    /// record, the record's start.
    pub fn period_anchor(self) -> Anchor {
        match self {
            Anchor::IndexEnd => Anchor::Index,
            Anchor::EventEnd => Anchor::Event,
            other => other,
        }
    }

    pub fn words(self) -> &'static str {
        match self {
            Anchor::Index => "index",
            Anchor::FollowUpStart => "follow-up start",
            Anchor::FollowUpEnd => "follow-up end",
            Anchor::Event => "event",
            Anchor::IndexEnd => "index end",
            Anchor::EventEnd => "event end",
        }
    }
}

/// A boolean condition on a person (or on an event, inside `where`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Criterion {
    pub kind: CriterionKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum CriterionKind {
    Or(Vec<Criterion>),
    And(Vec<Criterion>),
    Not(Box<Criterion>),
    Group(Box<Criterion>),
    /// `continuous observation [-365, 0] days`
    Observation(Option<Window>),
    /// `at least 2 distinct days of condition in x [-365, -1] days`
    Events {
        quantifier: Option<Quantifier>,
        query: EventQuery,
        /// Its windows, each on the record's start day or, after `ending`, its end day.
        windows: Vec<EdgeWindow>,
    },
    /// `sex is female`, `sex in (male, female)`
    Sex(Vec<Spanned<SexValue>>),
    /// `age at index >= 18`, `date of index between 2010-01-01 and 2019-12-31`
    Compare {
        quantity: Spanned<Quantity>,
        test: LiteralTest,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Quantifier {
    pub kind: QuantifierKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum QuantifierKind {
    Exists,
    Count {
        op: CountOp,
        n: Spanned<String>,
        distinct: Option<Distinct>,
        of: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum CountOp {
    AtLeast,
    AtMost,
    Exactly,
}

/// What `distinct` counts: different concepts, calendar days or visits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Distinct {
    Concepts,
    Days,
    Visits,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum SexValue {
    Male,
    Female,
    Unknown,
    Concept(String),
}

/// A person-level quantity measured at an anchor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Quantity {
    /// `age at index`: completed years of age on the anchor date.
    Age(Anchor),
    /// `calendar age at index`: year of the anchor date minus year of birth (OHDSI's age).
    CalendarAge(Anchor),
    /// `year of index`
    Year(Anchor),
    /// `date of index`
    Date(Anchor),
}

impl Quantity {
    /// `age at index`, `year of follow-up start`: the quantity as the language writes it.
    pub fn words(self) -> String {
        match self {
            Quantity::Age(a) => format!("age at {}", a.words()),
            Quantity::CalendarAge(a) => format!("calendar age at {}", a.words()),
            Quantity::Year(a) => format!("year of {}", a.words()),
            Quantity::Date(a) => format!("date of {}", a.words()),
        }
    }

    /// The date the quantity is measured on.
    pub fn anchor(self) -> Anchor {
        match self {
            Quantity::Age(a) | Quantity::CalendarAge(a) | Quantity::Year(a) | Quantity::Date(a) => {
                a
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum LiteralTest {
    Compare {
        op: CmpOp,
        value: Spanned<Literal>,
    },
    Between {
        low: Spanned<Literal>,
        high: Spanned<Literal>,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Literal {
    Number(String),
    Date(String),
}

/// The `population` section: time zero and the attrition steps.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Population {
    pub index: Option<IndexDef>,
    pub steps: Vec<Step>,
}

/// `index = first drug in nsaids between 2010-01-01 and 2019-12-31`
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct IndexDef {
    /// `each person at …`; `occurrence` is then `None` and `query` stands for observation
    /// periods (what each person's entry is taken from), spanning the phrase.
    pub each_person: Option<Spanned<EachPerson>>,
    pub occurrence: Option<Spanned<Occurrence>>,
    pub query: EventQuery,
    pub options: Vec<EntryOption>,
    pub span: Span,
}

/// `each person at start of observation` or `each person at 2020-01-01`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum EachPerson {
    ObservationStart,
    Date(Spanned<String>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Occurrence {
    First,
    Last,
    All,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EntryOption {
    pub kind: EntryOptionKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum EntryOptionKind {
    Between(Spanned<String>, Spanned<String>),
    From(Spanned<String>),
    Until(Spanned<String>),
    Observation(Window),
    /// `with or without observation`: records outside every observation period qualify too.
    AnyObservation,
}

/// `require …` or `exclude …`: one attrition step.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Step {
    pub kind: StepKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum StepKind {
    Require(Criterion),
    Exclude(Criterion),
    /// `keep first entry` / `keep last entry`: each person's first or last entry among those
    /// the steps before kept.
    Keep(Occurrence),
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ArmDef {
    pub name: Name,
    pub criterion: Criterion,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FollowUpItem {
    pub kind: FollowUpKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum FollowUpKind {
    From(AnchorPoint),
    /// `until a` or `until earliest of a, b, c` (`earliest` records which was written).
    Until {
        exits: Vec<Exit>,
        earliest: bool,
    },
    Collapse(Spanned<String>),
    StudyPeriod {
        from: Option<Spanned<String>>,
        to: Option<Spanned<String>>,
    },
}

/// `index + 1 day`
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AnchorPoint {
    pub anchor: Spanned<Anchor>,
    /// Signed offset in days as written (`-` included).
    pub offset: Option<Spanned<String>>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Exit {
    pub kind: ExitKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum ExitKind {
    ObservationEnd,
    ExposureEnd {
        concepts: ConceptExpr,
        gap: Option<Spanned<String>>,
        extra: Option<Spanned<String>>,
    },
    Date(Spanned<String>),
    Offset(AnchorPoint),
    /// `end of index record [+ N days]`
    RecordEnd {
        extra: Option<Spanned<String>>,
    },
    Event {
        first: bool,
        query: EventQuery,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CovariateDef {
    pub name: Name,
    pub value: CovariateValue,
    /// `as confounder`: the adjusted Cox model adjusts for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confounder: Option<Span>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum CovariateValue {
    Interaction(Vec<Name>),
    Count {
        distinct: Option<Distinct>,
        query: EventQuery,
        window: Option<Window>,
    },
    Aggregate {
        aggregate: Aggregate,
        concept: bool,
        query: EventQuery,
        window: Option<Window>,
    },
    DaysSince {
        last: bool,
        query: EventQuery,
        window: Option<Window>,
    },
    Flag(Criterion),
    Sex,
    Quantity(Spanned<Quantity>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Aggregate {
    First,
    Last,
    Min,
    Max,
    Mean,
}

impl Aggregate {
    pub fn keyword(self) -> &'static str {
        match self {
            Aggregate::First => "first",
            Aggregate::Last => "last",
            Aggregate::Min => "min",
            Aggregate::Max => "max",
            Aggregate::Mean => "mean",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EndpointDef {
    pub name: Name,
    pub kind: Option<Spanned<EndpointKind>>,
    pub query: EventQuery,
    pub window: Option<Window>,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum EndpointKind {
    /// `first …`: time to the first event.
    First,
    /// `exists …` (or `any …`): whether the event happens in the window.
    Exists,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OutputItem {
    pub kind: OutputKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum OutputKind {
    MinCellCount(Spanned<String>),
    PersonIds {
        pseudonymised: bool,
    },
    CohortId(Spanned<String>),
    /// `disclosure policy NAME`: a preset at least as strict as the site's.
    Disclosure(Spanned<String>),
    /// `exported dates exact|relative`.
    ExportedDates {
        exact: bool,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ConsentRule {
    pub kind: ConsentKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum ConsentKind {
    NotRequired,
    RequiredBy {
        query: EventQuery,
        from: Option<Spanned<String>>,
    },
}
