//! The reference evaluator's input: a repository as plain vectors of rows, no query engine.

use crate::study::Domain;
use chrono::NaiveDate;

/// A person (`person`).
#[derive(Clone, Debug, PartialEq)]
pub struct Person {
    pub id: i64,
    pub gender: i64,
    pub year_of_birth: i32,
    pub month_of_birth: Option<u32>,
    pub day_of_birth: Option<u32>,
}

/// An observation period.
#[derive(Clone, Debug, PartialEq)]
pub struct Period {
    /// `observation_period_id`: the index record of an index on observation periods.
    pub id: i64,
    pub person: i64,
    pub start: NaiveDate,
    pub end: NaiveDate,
}

/// One record of an event domain, with the columns any criterion may look at.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub domain: Domain,
    /// The record id; deaths, which have none, use 0.
    pub id: i64,
    pub person: i64,
    /// The concept `in` matches for the domain (see docs/language.md).
    pub concept: Option<i64>,
    pub start: NaiveDate,
    pub end: Option<NaiveDate>,
    pub visit: Option<i64>,
    pub number: Option<f64>,
    pub value_concept: Option<i64>,
    pub unit: Option<i64>,
    pub range_low: Option<f64>,
    pub range_high: Option<f64>,
    /// Imaging: the modality's DICOM code (`MR`, `CT`, …).
    pub modality: Option<String>,
    /// Episodes: `episode_concept_id`.
    pub kind: Option<i64>,
    /// Drug exposures: days supplied, for a missing end date.
    pub days_supply: Option<i64>,
    /// The source concept (`condition_source_concept_id`, …).
    pub source_concept: Option<i64>,
}

impl Record {
    /// A record with only the columns every domain has.
    pub fn new(
        domain: Domain,
        id: i64,
        person: i64,
        concept: Option<i64>,
        start: NaiveDate,
    ) -> Record {
        Record {
            domain,
            id,
            person,
            concept,
            start,
            end: None,
            visit: None,
            number: None,
            value_concept: None,
            unit: None,
            range_low: None,
            range_high: None,
            modality: None,
            kind: None,
            days_supply: None,
            source_concept: None,
        }
    }
}

/// A vocabulary concept.
#[derive(Clone, Debug, PartialEq)]
pub struct Concept {
    pub id: i64,
    pub name: String,
    pub vocabulary: String,
    pub code: String,
}

/// Everything the evaluator reads.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Data {
    pub persons: Vec<Person>,
    pub periods: Vec<Period>,
    pub records: Vec<Record>,
    pub concepts: Vec<Concept>,
    /// (ancestor, descendant) pairs; a concept need not list itself.
    pub ancestors: Vec<(i64, i64)>,
    /// "Maps to" pairs (source, standard).
    pub maps_to: Vec<(i64, i64)>,
}
