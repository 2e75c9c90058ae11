//! cohortql: a language and compiler for retrospective real-world-data cohort studies.
//!
//! ```text
//!  study text ─parse─▶ StudyFile (syntax tree, spans) ─check─▶ Study (typed, resolved)
//!                          │                                      │
//!                          └─fmt─▶ canonical text                 ├─explain─▶ plain English
//!                                                                 └─hash────▶ sha256 of meaning
//! ```
//!
//! Each stage is a function of its input alone; diagnostics are values, rendered only by `cli`.

pub mod check;
pub mod cli;
pub mod compile;
pub mod diag;
pub mod explain;
pub mod fmt;
pub mod hash;
pub mod study;
pub mod syntax;
