//! One `Diagnostic` type for every problem a user can cause: code, severity, span, message, help.
//!
//! Stages return diagnostics; only the command line and the REPL render them (see `render`).

use serde::Serialize;

/// A byte range in the study text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Span {
        Span { start, end }
    }
    pub fn to(self, other: Span) -> Span {
        Span::new(self.start.min(other.start), self.end.max(other.end))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Severity {
    Error,
    Warning,
}

/// Every diagnostic code, with a one-line summary. `docs/errors.md` documents each one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Code {
    InvalidUtf8,
    BinaryFile,
    EmptyFile,
    TooDeep,
    TooLarge,
    UnsafeCharacter,
    Syntax,
    UnknownConceptSet,
    DuplicateName,
    CyclicConceptSet,
    ReservedName,
    UnknownVocabulary,
    InvalidConceptId,
    DomainMismatch,
    InvalidCode,
    WindowReversed,
    MissingWindow,
    AnchorUnavailable,
    InvalidNumber,
    InvalidDate,
    UnboundedObservation,
    DaysWithOn,
    ObservationNotForWindow,
    ValueOnDomainWithoutValues,
    TypeMismatch,
    FilterNotForDomain,
    BetweenReversed,
    UnknownModality,
    NonNumericInteraction,
    UnknownCovariate,
    ConfounderKind,
    MissingIndex,
    DuplicateSection,
    DuplicateSetting,
    EndpointNeedsFollowUp,
    InvalidExit,
    OptionNotForIndex,
    UnknownPolicy,
    LooserThanSite,
    LookAhead,
    EndpointBeforeFollowUp,
    EmptyConceptSet,
    NoEffect,
    UnendedFollowUp,
}

impl Code {
    pub const ALL: [Code; 44] = [
        Code::InvalidUtf8,
        Code::BinaryFile,
        Code::EmptyFile,
        Code::TooDeep,
        Code::TooLarge,
        Code::UnsafeCharacter,
        Code::Syntax,
        Code::UnknownConceptSet,
        Code::DuplicateName,
        Code::CyclicConceptSet,
        Code::ReservedName,
        Code::UnknownVocabulary,
        Code::InvalidConceptId,
        Code::DomainMismatch,
        Code::InvalidCode,
        Code::WindowReversed,
        Code::MissingWindow,
        Code::AnchorUnavailable,
        Code::InvalidNumber,
        Code::InvalidDate,
        Code::UnboundedObservation,
        Code::DaysWithOn,
        Code::ObservationNotForWindow,
        Code::ValueOnDomainWithoutValues,
        Code::TypeMismatch,
        Code::FilterNotForDomain,
        Code::BetweenReversed,
        Code::UnknownModality,
        Code::NonNumericInteraction,
        Code::UnknownCovariate,
        Code::ConfounderKind,
        Code::MissingIndex,
        Code::DuplicateSection,
        Code::DuplicateSetting,
        Code::EndpointNeedsFollowUp,
        Code::InvalidExit,
        Code::OptionNotForIndex,
        Code::UnknownPolicy,
        Code::LooserThanSite,
        Code::LookAhead,
        Code::EndpointBeforeFollowUp,
        Code::EmptyConceptSet,
        Code::NoEffect,
        Code::UnendedFollowUp,
    ];

    /// The stable identifier printed in brackets, e.g. `E0201`.
    pub fn id(self) -> &'static str {
        match self {
            Code::InvalidUtf8 => "E0001",
            Code::BinaryFile => "E0002",
            Code::EmptyFile => "E0003",
            Code::TooDeep => "E0004",
            Code::TooLarge => "E0005",
            Code::UnsafeCharacter => "E0006",
            Code::Syntax => "E0100",
            Code::UnknownConceptSet => "E0200",
            Code::DuplicateName => "E0201",
            Code::CyclicConceptSet => "E0202",
            Code::ReservedName => "E0203",
            Code::UnknownVocabulary => "E0204",
            Code::InvalidConceptId => "E0205",
            Code::DomainMismatch => "E0206",
            Code::InvalidCode => "E0207",
            Code::WindowReversed => "E0300",
            Code::MissingWindow => "E0301",
            Code::AnchorUnavailable => "E0302",
            Code::InvalidNumber => "E0303",
            Code::InvalidDate => "E0304",
            Code::UnboundedObservation => "E0305",
            Code::DaysWithOn => "E0306",
            Code::ObservationNotForWindow => "E0307",
            Code::ValueOnDomainWithoutValues => "E0400",
            Code::TypeMismatch => "E0401",
            Code::FilterNotForDomain => "E0402",
            Code::BetweenReversed => "E0403",
            Code::UnknownModality => "E0404",
            Code::NonNumericInteraction => "E0405",
            Code::UnknownCovariate => "E0406",
            Code::ConfounderKind => "E0407",
            Code::MissingIndex => "E0500",
            Code::DuplicateSection => "E0501",
            Code::DuplicateSetting => "E0502",
            Code::EndpointNeedsFollowUp => "E0503",
            Code::InvalidExit => "E0504",
            Code::OptionNotForIndex => "E0505",
            Code::UnknownPolicy => "E0506",
            Code::LooserThanSite => "E0507",
            Code::LookAhead => "W0001",
            Code::EndpointBeforeFollowUp => "W0002",
            Code::EmptyConceptSet => "W0003",
            Code::NoEffect => "W0004",
            Code::UnendedFollowUp => "W0005",
        }
    }

    pub fn severity(self) -> Severity {
        if self.id().starts_with('W') {
            Severity::Warning
        } else {
            Severity::Error
        }
    }

    /// A short title for the code, used in `docs/errors.md`.
    pub fn title(self) -> &'static str {
        match self {
            Code::InvalidUtf8 => "the file is not valid UTF-8 text",
            Code::BinaryFile => "the file contains NUL bytes",
            Code::EmptyFile => "the file is empty",
            Code::TooDeep => "nested too deeply",
            Code::TooLarge => "the study is too large",
            Code::UnsafeCharacter => "a control or bidirectional-text character",
            Code::Syntax => "syntax error",
            Code::UnknownConceptSet => "unknown concept set",
            Code::DuplicateName => "a name is defined twice",
            Code::CyclicConceptSet => "concept sets defined in terms of each other",
            Code::ReservedName => "a keyword used as a concept set name",
            Code::UnknownVocabulary => "unknown source vocabulary",
            Code::InvalidConceptId => "invalid concept id",
            Code::DomainMismatch => "concept set declared for another domain",
            Code::InvalidCode => "invalid source code pattern",
            Code::WindowReversed => "window end before its start",
            Code::MissingWindow => "an event criterion without a window",
            Code::AnchorUnavailable => "an anchor that does not exist here",
            Code::InvalidNumber => "a number out of range",
            Code::InvalidDate => "not a calendar date",
            Code::UnboundedObservation => "continuous observation over an unbounded window",
            Code::DaysWithOn => "a number of days with `on`",
            Code::ObservationNotForWindow => "`during observation` where it means nothing",
            Code::ValueOnDomainWithoutValues => "a value filter on a domain without values",
            Code::TypeMismatch => "a comparison of different kinds of value",
            Code::FilterNotForDomain => "a filter that does not apply to the domain",
            Code::BetweenReversed => "`between` bounds in the wrong order",
            Code::UnknownModality => "unknown imaging modality",
            Code::NonNumericInteraction => "an interaction with a category",
            Code::UnknownCovariate => "unknown covariate in an interaction",
            Code::ConfounderKind => "a confounder that is not a number, a flag or sex",
            Code::MissingIndex => "no index date",
            Code::DuplicateSection => "a section written twice",
            Code::DuplicateSetting => "a setting written twice",
            Code::EndpointNeedsFollowUp => "a time-to-event endpoint outside follow-up",
            Code::InvalidExit => "an exit that cannot end follow-up",
            Code::OptionNotForIndex => "an index option that does not apply",
            Code::UnknownPolicy => "unknown disclosure policy",
            Code::LooserThanSite => "an output setting looser than the site's policy",
            Code::LookAhead => "a covariate window that reaches past index (look-ahead bias)",
            Code::EndpointBeforeFollowUp => "an endpoint that can occur before follow-up starts",
            Code::EmptyConceptSet => "a concept set that is always empty",
            Code::NoEffect => "a statement that changes nothing",
            Code::UnendedFollowUp => "follow-up without an end for entries outside observation",
        }
    }
}

/// A secondary span with its own short message.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Label {
    pub span: Span,
    pub message: String,
}

/// A problem found in a study, pointing at the text that causes it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Diagnostic {
    pub code: Code,
    pub severity: Severity,
    pub message: String,
    /// Where the problem is. `None` only for problems with the file as a whole.
    pub span: Option<Span>,
    /// A short note printed beside the caret.
    pub label: Option<String>,
    pub others: Vec<Label>,
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn new(code: Code, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            code,
            severity: code.severity(),
            message: message.into(),
            span: None,
            label: None,
            others: Vec::new(),
            help: None,
        }
    }

    pub fn at(mut self, span: Span) -> Diagnostic {
        self.span = Some(span);
        self
    }

    pub fn label(mut self, label: impl Into<String>) -> Diagnostic {
        self.label = Some(label.into());
        self
    }

    pub fn also(mut self, span: Span, message: impl Into<String>) -> Diagnostic {
        self.others.push(Label {
            span,
            message: message.into(),
        });
        self
    }

    pub fn help(mut self, help: impl Into<String>) -> Diagnostic {
        self.help = Some(help.into());
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// The closest of `candidates` to `name`, if it is close enough to be what was meant.
pub fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let lower = name.to_lowercase();
    let mut best: Option<(f64, &str)> = None;
    for candidate in candidates {
        let score = strsim::jaro_winkler(&lower, &candidate.to_lowercase());
        if score >= 0.8 && best.is_none_or(|(s, _)| score > s) {
            best = Some((score, candidate));
        }
    }
    best.map(|(_, c)| c)
}
