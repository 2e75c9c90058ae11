//! cohortql: a language and compiler for retrospective real-world-data cohort studies.
//!
//! ```text
//!  study text ─parse─▶ StudyFile (syntax tree, spans) ─check─▶ Study (typed, resolved)
//!                          │                                      │
//!                          └─fmt─▶ canonical text                 ├─explain─▶ plain English
//!                                                                 ├─hash────▶ sha256 of meaning
//!                                                                 ├─plan────▶ DataFusion plans ─run─▶ outputs
//!                                                                 └─reference evaluator (tests' oracle)
//! ```
//!
//! Each stage is a function of its input alone; diagnostics are values, rendered to text only by
//! `render` (for `cli` and the REPL).

// Diagnostics are large values made rarely, on the error path: boxing them buys nothing.
#![allow(clippy::result_large_err, clippy::large_enum_variant)]

pub mod atlas;
pub mod check;
pub mod cli;
pub mod compile;
pub mod demo;
pub mod diag;
pub mod disclosure;
pub mod explain;
pub mod fmt;
pub mod hash;
pub mod plan;
pub mod printable;
pub mod reference;
pub mod release;
pub mod render;
pub mod repl;
pub mod repo;
pub mod report;
pub mod results;
pub mod run;
pub mod site;
pub mod study;
pub mod syntax;
pub mod synth;
