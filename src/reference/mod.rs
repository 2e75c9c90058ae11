//! The reference evaluator: the meaning of a `Study`, computed over plain vectors of rows with
//! loops and sets, written to be obviously correct rather than fast. Tests use it as the oracle
//! that the query engine must agree with.
//!
//! `evaluate_population` gives time zero, the attrition steps and the exposure arms;
//! `evaluate_study` adds consent, follow-up and the dataset of covariates and endpoints.

pub mod data;
pub mod rows;

use crate::study::*;
use chrono::{Datelike, Duration, NaiveDate};
use data::{Data, Period, Person, Record};
use std::collections::{BTreeMap, BTreeSet};

/// One entry into the study: a person and the index event that is their time zero.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub person: i64,
    pub index: NaiveDate,
    pub record: i64,
    pub visit: Option<i64>,
    /// The index record's end date, a missing one filled in (see `record_end`).
    pub record_end: NaiveDate,
    /// The observation period that contains the index date; `None` for an entry outside
    /// observation (`with or without observation`).
    pub period: Option<(NaiveDate, NaiveDate)>,
    /// The exposure arm, when the study has arms.
    pub arm: Option<String>,
    /// Follow-up start and end, both included, once follow-up is decided.
    pub follow_up: Option<(NaiveDate, NaiveDate)>,
}

/// One row of the attrition table: persons remaining after the step.
#[derive(Clone, Debug, PartialEq)]
pub struct AttritionRow {
    pub rule: String,
    pub persons: usize,
    pub entries: usize,
}

/// The population of a study: its entries and how each step narrowed it.
#[derive(Clone, Debug, PartialEq)]
pub struct Population {
    pub entries: Vec<Entry>,
    pub attrition: Vec<AttritionRow>,
    /// With arms: each attrition row from `qualifying index event` on, per arm in the study's
    /// order and then for entries in no arm (`arm` is `None`).
    pub by_arm: Vec<(AttritionRow, Option<String>)>,
    /// Circe's inclusion-rule report: each step on its own among the qualifying entries.
    pub rules: Vec<AttritionRow>,
    /// Each combination of steps passed (`1, 3` or `none`) that some qualifying entry has, in
    /// the order of its pattern of passes (`101`).
    pub combinations: Vec<AttritionRow>,
}

/// Evaluates time zero, the steps and the arms of a study.
pub fn evaluate_population(study: &Study, data: &Data) -> Population {
    let ev = Evaluator::new(study, data);
    let mut attrition = vec![ev.index_records()];
    let mut entries = ev.index_entries();
    // Each qualifying entry's arm (the first whose criterion holds at its index) and the steps
    // it passes on its own.
    for e in &mut entries {
        let at = ev.at_index(e);
        e.arm = study
            .arms
            .iter()
            .find(|a| ev.holds(&a.criterion, &at))
            .map(|a| a.name.clone());
    }
    let mut passes: Vec<Vec<bool>> = entries
        .iter()
        .map(|e| {
            let at = ev.at_index(e);
            study
                .steps
                .iter()
                .map(|s| s.keep.is_some() || ev.holds(&s.criterion, &at) != s.exclude)
                .collect()
        })
        .collect();
    // `keep first|last entry`: each person's first or last entry among those that pass every
    // earlier step (entries are in index order per person).
    for (i, step) in study.steps.iter().enumerate() {
        let Some(which) = step.keep else { continue };
        let mut chosen: BTreeMap<i64, usize> = BTreeMap::new();
        for (k, e) in entries.iter().enumerate() {
            if passes[k][..i].iter().all(|p| *p) {
                match which {
                    Occurrence::Last => {
                        chosen.insert(e.person, k);
                    }
                    _ => {
                        chosen.entry(e.person).or_insert(k);
                    }
                }
            }
        }
        for (k, e) in entries.iter().enumerate() {
            passes[k][i] = chosen.get(&e.person) == Some(&k);
        }
    }
    let rules = study
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let passing: Vec<Entry> = entries
                .iter()
                .zip(&passes)
                .filter(|(_, p)| p[i])
                .map(|(e, _)| e.clone())
                .collect();
            row(&s.rule, &passing)
        })
        .collect();
    let mut patterns: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
    if !study.steps.is_empty() {
        for (e, p) in entries.iter().zip(&passes) {
            let pattern: String = p.iter().map(|&b| if b { '1' } else { '0' }).collect();
            patterns.entry(pattern).or_default().push(e.clone());
        }
    }
    let combinations = patterns
        .iter()
        .map(|(pattern, es)| row(&steps_passed(pattern), es))
        .collect();
    // Sequential attrition, with the arm rows beside it.
    let mut by_arm = Vec::new();
    let split =
        |rule: &str, entries: &[Entry], by_arm: &mut Vec<(AttritionRow, Option<String>)>| {
            by_arm.extend(split_by_arm(study, rule, entries))
        };
    attrition.push(row("qualifying index event", &entries));
    split("qualifying index event", &entries, &mut by_arm);
    let mut remaining: Vec<(Entry, Vec<bool>)> = entries.into_iter().zip(passes).collect();
    for (i, step) in study.steps.iter().enumerate() {
        remaining.retain(|(_, p)| p[i]);
        let now: Vec<Entry> = remaining.iter().map(|(e, _)| e.clone()).collect();
        attrition.push(row(&step.rule, &now));
        split(&step.rule, &now, &mut by_arm);
    }
    let mut entries: Vec<Entry> = remaining.into_iter().map(|(e, _)| e).collect();
    if !study.arms.is_empty() {
        entries.retain(|e| e.arm.is_some());
        attrition.push(row("assigned to an exposure arm", &entries));
        split("assigned to an exposure arm", &entries, &mut by_arm);
    }
    Population {
        entries,
        attrition,
        by_arm,
        rules,
        combinations,
    }
}

/// One covariate value: a number (flags are 0 or 1, sex its concept id), a date, or empty.
#[derive(Clone, Debug, PartialEq)]
pub enum Cell {
    Number(f64),
    Date(NaiveDate),
    Empty,
}

/// One endpoint of one entry.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// 1 when the event happens, else 0.
    pub event: u8,
    /// Time to event: days from follow-up start to the event or to the end of follow-up.
    pub days: Option<i64>,
}

/// One row of the dataset.
#[derive(Clone, Debug, PartialEq)]
pub struct DatasetRow {
    pub entry: Entry,
    pub covariates: Vec<Cell>,
    pub endpoints: Vec<Outcome>,
}

/// Everything a study gives on some data.
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluation {
    pub rows: Vec<DatasetRow>,
    pub attrition: Vec<AttritionRow>,
    /// As `Population::by_arm`, with the follow-up row per arm last.
    pub by_arm: Vec<(AttritionRow, Option<String>)>,
    pub rules: Vec<AttritionRow>,
    pub combinations: Vec<AttritionRow>,
}

/// Evaluates a whole study: consent, population, follow-up, covariates and endpoints.
pub fn evaluate_study(study: &Study, data: &Data) -> Evaluation {
    let consented = apply_consent(study, data);
    let data = &consented;
    let mut population = evaluate_population(study, data);
    let ev = Evaluator::new(study, data);
    for e in &mut population.entries {
        e.follow_up = ev.follow_up(e);
    }
    population.entries.retain(|e| e.follow_up.is_some());
    population
        .attrition
        .push(row("follow-up of at least one day", &population.entries));
    let followed = split_by_arm(study, "follow-up of at least one day", &population.entries);
    population.by_arm.extend(followed);
    let mut entries = population.entries;
    if let Some(days) = study.follow_up.collapse_days {
        entries = collapse(entries, days);
    }
    let rows = entries
        .into_iter()
        .map(|entry| {
            // Covariates see follow-up start and end: values may be taken there (the checker
            // keeps windows and criteria of covariates at baseline).
            let at = At {
                follow_up: entry.follow_up,
                ..ev.at_index(&entry)
            };
            let covariates: Vec<Cell> = {
                let mut cells: Vec<Cell> = Vec::with_capacity(study.covariates.len());
                for c in &study.covariates {
                    let cell = match &c.value {
                        CovariateValue::Interaction(factors) => {
                            let mut product = Some(1.0);
                            for &i in factors {
                                product = match (product, &cells[i]) {
                                    (Some(p), Cell::Number(x)) => Some(p * x),
                                    _ => None,
                                };
                            }
                            product.map_or(Cell::Empty, Cell::Number)
                        }
                        other => ev.covariate(other, &at),
                    };
                    cells.push(cell);
                }
                cells
            };
            let at = At {
                follow_up: entry.follow_up,
                ..at
            };
            let endpoints = study
                .endpoints
                .iter()
                .map(|e| ev.endpoint(e, &at))
                .collect();
            DatasetRow {
                entry,
                covariates,
                endpoints,
            }
        })
        .collect();
    Evaluation {
        rows,
        attrition: population.attrition,
        by_arm: population.by_arm,
        rules: population.rules,
        combinations: population.combinations,
    }
}

/// The data as the consent rule lets the study see them. Without consent (a `consent` record at
/// any time), a person is left out entirely, or, for a rule from a date on, loses the records
/// and observation from that date.
fn apply_consent(study: &Study, data: &Data) -> Data {
    let Consent::RequiredBy { query, from } = &study.consent else {
        return data.clone();
    };
    let ev = Evaluator::new(study, data);
    let consenting: BTreeSet<i64> = data
        .persons
        .iter()
        .filter(|p| {
            let at = At::of(p);
            !ev.matching(query, &at).is_empty()
        })
        .map(|p| p.id)
        .collect();
    let mut out = data.clone();
    match from {
        None => {
            out.persons.retain(|p| consenting.contains(&p.id));
            out.periods.retain(|p| consenting.contains(&p.person));
            out.records.retain(|r| consenting.contains(&r.person));
        }
        Some(day) => {
            out.records
                .retain(|r| consenting.contains(&r.person) || r.start < *day);
            for p in &mut out.periods {
                if !consenting.contains(&p.person) && p.end >= *day {
                    p.end = *day - Duration::days(1);
                }
            }
            out.periods.retain(|p| p.start <= p.end);
        }
    }
    out
}

/// One attrition row per arm, in the study's order, then for entries in no arm; none without
/// arms.
fn split_by_arm(
    study: &Study,
    rule: &str,
    entries: &[Entry],
) -> Vec<(AttritionRow, Option<String>)> {
    if study.arms.is_empty() {
        return Vec::new();
    }
    study
        .arms
        .iter()
        .map(|a| Some(a.name.clone()))
        .chain([None])
        .map(|arm| {
            let of_arm: Vec<Entry> = entries.iter().filter(|e| e.arm == arm).cloned().collect();
            (row(rule, &of_arm), arm)
        })
        .collect()
}

/// Merges entries of one person whose follow-up periods overlap or are at most `days` apart;
/// the merged entry keeps the first one's index.
fn collapse(mut entries: Vec<Entry>, days: i64) -> Vec<Entry> {
    entries.sort_by_key(|e| (e.person, e.follow_up, e.index, e.record));
    let mut out: Vec<Entry> = Vec::new();
    for e in entries {
        let (start, end) = e.follow_up.expect("follow-up is decided before collapsing");
        if let Some(last) = out.last_mut() {
            let (last_start, last_end) = last.follow_up.expect("decided");
            if last.person == e.person && (start - last_end).num_days() <= days {
                last.follow_up = Some((last_start, last_end.max(end)));
                continue;
            }
        }
        out.push(e);
    }
    out
}

fn row(rule: &str, entries: &[Entry]) -> AttritionRow {
    let persons: BTreeSet<i64> = entries.iter().map(|e| e.person).collect();
    AttritionRow {
        rule: rule.to_string(),
        persons: persons.len(),
        entries: entries.len(),
    }
}

/// Where a criterion is evaluated: the dates and records its anchors name.
#[derive(Clone, Copy)]
struct At<'a> {
    person: &'a Person,
    index: Option<NaiveDate>,
    index_visit: Option<i64>,
    /// The index record's end (`index end`).
    index_end: Option<NaiveDate>,
    event: Option<&'a Record>,
    follow_up: Option<(NaiveDate, NaiveDate)>,
}

impl<'a> At<'a> {
    /// A person alone: no index, event or follow-up yet.
    fn of(person: &'a Person) -> At<'a> {
        At {
            person,
            index: None,
            index_visit: None,
            index_end: None,
            event: None,
            follow_up: None,
        }
    }
}

struct Evaluator<'a> {
    study: &'a Study,
    data: &'a Data,
    persons: BTreeMap<i64, &'a Person>,
    records: BTreeMap<i64, Vec<&'a Record>>,
    periods: BTreeMap<i64, Vec<&'a Period>>,
    /// Observation periods as records, for the `observation period` domain.
    period_records: Vec<Record>,
}

impl<'a> Evaluator<'a> {
    fn new(study: &'a Study, data: &'a Data) -> Evaluator<'a> {
        let mut records: BTreeMap<i64, Vec<&Record>> = BTreeMap::new();
        for r in &data.records {
            records.entry(r.person).or_default().push(r);
        }
        let mut periods: BTreeMap<i64, Vec<&Period>> = BTreeMap::new();
        for p in &data.periods {
            periods.entry(p.person).or_default().push(p);
        }
        let period_records = data
            .periods
            .iter()
            .map(|p| {
                let mut r = Record::new(Domain::ObservationPeriod, p.id, p.person, None, p.start);
                r.end = Some(p.end);
                r
            })
            .collect();
        Evaluator {
            study,
            data,
            persons: data.persons.iter().map(|p| (p.id, p)).collect(),
            records,
            periods,
            period_records,
        }
    }

    fn at_index(&self, e: &Entry) -> At<'a> {
        At {
            person: self.persons[&e.person],
            index: Some(e.index),
            index_visit: e.visit,
            index_end: Some(e.record_end),
            event: None,
            follow_up: None,
        }
    }

    /// The concept ids a concept expression stands for.
    fn concepts(&self, expr: &ConceptExpr) -> BTreeSet<i64> {
        match expr {
            ConceptExpr::Concept { id, .. } => BTreeSet::from([*id]),
            ConceptExpr::SourceCodes { vocabulary, codes } => self
                .data
                .concepts
                .iter()
                .filter(|c| {
                    c.vocabulary.eq_ignore_ascii_case(vocabulary)
                        && codes.iter().any(|p| p.matches(&c.code))
                })
                .map(|c| c.id)
                .collect(),
            ConceptExpr::Named(name) => self
                .data
                .concepts
                .iter()
                .filter(|c| c.name.eq_ignore_ascii_case(name))
                .map(|c| c.id)
                .collect(),
            ConceptExpr::Set(i) => self.concepts(&self.study.concept_sets[*i].expr),
            ConceptExpr::WithDescendants(inner) => {
                let base = self.concepts(inner);
                let mut out = base.clone();
                out.extend(
                    self.data
                        .ancestors
                        .iter()
                        .filter(|(a, _)| base.contains(a))
                        .map(|(_, d)| *d),
                );
                out
            }
            ConceptExpr::WithSources(inner) => {
                let base = self.concepts(inner);
                let mut out = base.clone();
                out.extend(
                    self.data
                        .maps_to
                        .iter()
                        .filter(|(_, t)| base.contains(t))
                        .map(|(s, _)| *s),
                );
                out
            }
            ConceptExpr::Mapped(inner) => {
                let base = self.concepts(inner);
                self.data
                    .maps_to
                    .iter()
                    .filter(|(s, _)| base.contains(s))
                    .map(|(_, t)| *t)
                    .collect()
            }
            ConceptExpr::Union(parts) => parts.iter().flat_map(|p| self.concepts(p)).collect(),
            ConceptExpr::Minus(a, b) => {
                let remove = self.concepts(b);
                self.concepts(a)
                    .into_iter()
                    .filter(|c| !remove.contains(c))
                    .collect()
            }
        }
    }

    fn records_of(&self, person: i64, domain: Domain) -> Vec<&Record> {
        if domain == Domain::ObservationPeriod {
            return self
                .period_records
                .iter()
                .filter(|r| r.person == person)
                .collect();
        }
        self.records.get(&person).map_or(Vec::new(), |rs| {
            rs.iter().copied().filter(|r| r.domain == domain).collect()
        })
    }

    /// The records of a query for a person, before any window: those of each alternative in
    /// turn (a stable sort then orders ties by alternative).
    fn matching(&self, query: &EventQuery, at: &At<'a>) -> Vec<Record> {
        query
            .alternatives()
            .flat_map(|alt| self.matching_alt(alt, at))
            .collect()
    }

    /// The records of one alternative of a query (its `also` left aside), or its eras.
    fn matching_alt(&self, query: &EventQuery, at: &At<'a>) -> Vec<Record> {
        let concepts = query.concepts.as_ref().map(|c| self.concepts(c));
        let mut in_set: Vec<&Record> = self
            .records_of(at.person.id, query.domain)
            .into_iter()
            .filter(|r| {
                concepts
                    .as_ref()
                    .is_none_or(|set| r.concept.is_some_and(|c| set.contains(&c)))
            })
            .collect();
        if query.filters.contains(&EventFilter::FirstEver) {
            // Chosen before every other filter: they apply to the first record alone.
            in_set = in_set
                .into_iter()
                .min_by_key(|r| (r.start, r.id))
                .into_iter()
                .collect();
        }
        let records = in_set
            .into_iter()
            .filter(|r| query.filters.iter().all(|f| self.passes(f, r, at)));
        match &query.era {
            None => records.cloned().collect(),
            Some(era) => eras(records.collect(), era),
        }
    }

    fn passes(&self, filter: &EventFilter, r: &Record, at: &At<'a>) -> bool {
        match filter {
            EventFilter::Value(test) => r.number.is_some_and(|v| number_passes(test, v)),
            EventFilter::ValueIn(c) => r
                .value_concept
                .is_some_and(|v| self.concepts(c).contains(&v)),
            EventFilter::AboveNormal => {
                matches!((r.number, r.range_high), (Some(v), Some(h)) if v > h)
            }
            EventFilter::BelowNormal => {
                matches!((r.number, r.range_low), (Some(v), Some(l)) if v < l)
            }
            EventFilter::UnitIn(c) => r.unit.is_some_and(|u| self.concepts(c).contains(&u)),
            EventFilter::SourceIn(c) => r
                .source_concept
                .is_some_and(|s| self.concepts(c).contains(&s)),
            EventFilter::Modality(codes) => r
                .modality
                .as_ref()
                .is_some_and(|m| codes.iter().any(|c| c.eq_ignore_ascii_case(m))),
            EventFilter::KindIn(c) => r.kind.is_some_and(|k| self.concepts(c).contains(&k)),
            EventFilter::Duration(test) => {
                let days = (r.end.unwrap_or(r.start) - r.start).num_days() + 1;
                number_passes(test, days as f64)
            }
            EventFilter::FirstEver => true,
            EventFilter::SameVisit => {
                let anchor_visit = match at.event {
                    Some(e) => e.visit,
                    None => at.index_visit,
                };
                matches!((r.visit, anchor_visit), (Some(a), Some(b)) if a == b)
            }
            EventFilter::Where(c) => self.holds(
                c,
                &At {
                    event: Some(r),
                    ..*at
                },
            ),
        }
    }

    fn anchor_date(&self, anchor: Anchor, at: &At<'a>) -> Option<NaiveDate> {
        match anchor {
            Anchor::Index => at.index,
            Anchor::Event => at.event.map(|e| e.start),
            Anchor::IndexEnd => at.index_end,
            Anchor::EventEnd => at.event.map(record_end),
            Anchor::FollowUpStart => at.follow_up.map(|f| f.0),
            Anchor::FollowUpEnd => at.follow_up.map(|f| f.1),
        }
    }

    /// The observation period that contains `day` (with several there, from the earliest
    /// start of those to the latest end).
    fn period_bounds(&self, person: i64, day: NaiveDate) -> Option<(NaiveDate, NaiveDate)> {
        let anchor = day;
        let containing = self
            .periods
            .get(&person)
            .into_iter()
            .flatten()
            .filter(|p| p.start <= anchor && anchor <= p.end);
        containing.fold(None, |b: Option<(NaiveDate, NaiveDate)>, p| {
            Some(b.map_or((p.start, p.end), |(s, e)| (s.min(p.start), e.max(p.end))))
        })
    }

    /// Whether the record's start or end day lies in the window.
    fn in_window(&self, window: &Window, edge: Edge, r: &Record, at: &At<'a>) -> bool {
        let date = match edge {
            Edge::Start => r.start,
            Edge::End => record_end(r),
        };
        match *window {
            Window::FollowUp => at.follow_up.is_some_and(|(s, e)| date >= s && date <= e),
            Window::Days {
                anchor,
                start,
                end,
                observed,
            } => match self.anchor_date(anchor, at) {
                None => false,
                Some(a) => {
                    let offset = (date - a).num_days();
                    let in_days =
                        start.is_none_or(|s| offset >= s) && end.is_none_or(|e| offset <= e);
                    if !in_days {
                        return false;
                    }
                    if !observed {
                        return true;
                    }
                    let day = self.anchor_date(anchor.period_anchor(), at);
                    // The record starts in the period, and an open side stops at its edge.
                    let Some((ps, pe)) = day.and_then(|d| self.period_bounds(at.person.id, d))
                    else {
                        return false;
                    };
                    ps <= r.start
                        && r.start <= pe
                        && (start.is_some() || ps <= date)
                        && (end.is_some() || date <= pe)
                }
            },
        }
    }

    fn holds(&self, criterion: &Criterion, at: &At<'a>) -> bool {
        match criterion {
            Criterion::All(parts) => parts.iter().all(|p| self.holds(p, at)),
            Criterion::Any(parts) => parts.iter().any(|p| self.holds(p, at)),
            Criterion::Not(inner) => !self.holds(inner, at),
            Criterion::Events {
                count,
                query,
                window,
                more,
            } => {
                let found: Vec<Record> = self
                    .matching(query, at)
                    .into_iter()
                    .filter(|r| self.in_window(window, Edge::Start, r, at))
                    .filter(|r| {
                        more.iter()
                            .all(|m| self.in_window(&m.window, m.edge, r, at))
                    })
                    .collect();
                let n = count_records(&found, count.distinct) as u64;
                match count.op {
                    CountOp::AtLeast => n >= count.n,
                    CountOp::AtMost => n <= count.n,
                    CountOp::Exactly => n == count.n,
                }
            }
            Criterion::Observation { anchor, start, end } => match self.anchor_date(*anchor, at) {
                None => false,
                Some(a) => {
                    let (from, to) = (a + Duration::days(*start), a + Duration::days(*end));
                    self.periods
                        .get(&at.person.id)
                        .is_some_and(|ps| ps.iter().any(|p| p.start <= from && p.end >= to))
                }
            },
            Criterion::Sex(ids) => ids.contains(&at.person.gender),
            Criterion::Compare { quantity, test } => self
                .quantity_value(*quantity, at)
                .is_some_and(|v| value_passes(test, v)),
        }
    }

    /// A person's age, year or date on the quantity's anchor; `None` when the anchor has no
    /// date here.
    fn quantity_value(&self, quantity: Quantity, at: &At<'a>) -> Option<Value> {
        let date = self.anchor_date(quantity.anchor(), at)?;
        Some(match quantity {
            Quantity::Age(_) => Value::Number(age_in_years(at.person, date) as f64),
            Quantity::CalendarAge(_) => {
                Value::Number((date.year() - at.person.year_of_birth) as f64)
            }
            Quantity::Year(_) => Value::Number(date.year() as f64),
            Quantity::Date(_) => Value::Date(date),
        })
    }

    /// Follow-up start and end, or `None` when no day is left.
    fn follow_up(&self, e: &Entry) -> Option<(NaiveDate, NaiveDate)> {
        let fu = &self.study.follow_up;
        let mut start = e.index + Duration::days(fu.start_offset);
        let at = At {
            follow_up: None,
            ..self.at_index(e)
        };
        // Follow-up ends at the earliest date among the observation end (unless the index is
        // `with or without observation`) and the exits that have one; with none, it has no end.
        let mut end = if self.study.index.any_observation {
            None
        } else {
            e.period.map(|p| p.1)
        };
        for exit in &fu.exits {
            let date = match exit {
                Exit::ObservationEnd => e.period.map(|p| p.1),
                Exit::RecordEnd { extra } => Some(e.record_end + Duration::days(*extra)),
                Exit::Date(d) => Some(*d),
                Exit::Offset {
                    anchor: Anchor::FollowUpStart,
                    days,
                } => Some(start + Duration::days(*days)),
                Exit::Offset { days, .. } => Some(e.index + Duration::days(*days)),
                Exit::Event(query) => self
                    .matching(query, &at)
                    .into_iter()
                    .map(|r| r.start)
                    .filter(|d| *d >= start)
                    .min(),
                Exit::ExposureEnd {
                    concepts,
                    gap,
                    extra,
                } => Some(self.exposure_end(e, concepts, *gap) + Duration::days(*extra)),
            };
            if let Some(d) = date {
                end = Some(end.map_or(d, |e| e.min(d)));
            }
        }
        if let Some(from) = fu.period_from {
            start = start.max(from);
        }
        if let Some(to) = fu.period_to {
            end = Some(end.map_or(to, |e| e.min(to)));
        }
        let end = end?;
        (start <= end).then_some((start, end))
    }

    /// The end of the continuous exposure that contains the index date: the person's drug
    /// exposures of the set, chained while the gap from one's end to the next one's start is at
    /// most `gap` days. Without such exposure on the index date, the index date itself.
    fn exposure_end(&self, e: &Entry, concepts: &ConceptExpr, gap: i64) -> NaiveDate {
        let set = self.concepts(concepts);
        let exposures: Vec<&Record> = self
            .records_of(e.person, Domain::Drug)
            .into_iter()
            .filter(|r| r.concept.is_some_and(|c| set.contains(&c)))
            .collect();
        let era = Era {
            gap,
            duration: None,
        };
        eras(exposures, &era)
            .into_iter()
            .find(|x| x.start <= e.index && x.end.is_some_and(|end| e.index <= end))
            .and_then(|x| x.end)
            .unwrap_or(e.index)
    }

    fn covariate(&self, value: &CovariateValue, at: &At<'a>) -> Cell {
        let in_window = |query: &EventQuery, window: &Window| -> Vec<Record> {
            let mut found: Vec<Record> = self
                .matching(query, at)
                .into_iter()
                .filter(|r| self.in_window(window, Edge::Start, r, at))
                .collect();
            found.sort_by_key(|r| (r.start, r.id));
            found
        };
        match value {
            CovariateValue::Sex => Cell::Number(at.person.gender as f64),
            CovariateValue::Quantity(q) => match self.quantity_value(*q, at) {
                Some(Value::Number(n)) => Cell::Number(n),
                Some(Value::Date(d)) => Cell::Date(d),
                None => Cell::Empty,
            },
            CovariateValue::Count {
                distinct,
                query,
                window,
            } => {
                let found = in_window(query, window);
                let n = count_records(&found, *distinct);
                Cell::Number(n as f64)
            }
            CovariateValue::Aggregate {
                aggregate,
                concept,
                query,
                window,
            } => {
                let values: Vec<f64> = in_window(query, window)
                    .into_iter()
                    .filter_map(|r| {
                        if *concept {
                            r.value_concept.map(|c| c as f64)
                        } else {
                            r.number
                        }
                    })
                    .collect();
                let v = match aggregate {
                    Aggregate::First => values.first().copied(),
                    Aggregate::Last => values.last().copied(),
                    Aggregate::Min => values.iter().copied().reduce(f64::min),
                    Aggregate::Max => values.iter().copied().reduce(f64::max),
                    Aggregate::Mean => (!values.is_empty())
                        .then(|| values.iter().sum::<f64>() / values.len() as f64),
                };
                v.map_or(Cell::Empty, Cell::Number)
            }
            CovariateValue::DaysSince {
                last,
                query,
                window,
            } => {
                let found = in_window(query, window);
                let r = if *last { found.last() } else { found.first() };
                match (r, at.index) {
                    (Some(r), Some(i)) => Cell::Number((i - r.start).num_days() as f64),
                    _ => Cell::Empty,
                }
            }
            CovariateValue::Flag(c) => Cell::Number(if self.holds(c, at) { 1.0 } else { 0.0 }),
            CovariateValue::Interaction(_) => {
                unreachable!("interactions are computed from the other cells")
            }
        }
    }

    fn endpoint(&self, endpoint: &Endpoint, at: &At<'a>) -> Outcome {
        let found: Vec<NaiveDate> = self
            .matching(&endpoint.query, at)
            .into_iter()
            .filter(|r| self.in_window(&endpoint.window, Edge::Start, r, at))
            .map(|r| r.start)
            .collect();
        match endpoint.kind {
            EndpointKind::Binary => Outcome {
                event: u8::from(!found.is_empty()),
                days: None,
            },
            EndpointKind::TimeToEvent => {
                let (start, end) = at.follow_up.expect("follow-up is decided before endpoints");
                match found.into_iter().min() {
                    Some(d) => Outcome {
                        event: 1,
                        days: Some((d - start).num_days()),
                    },
                    None => Outcome {
                        event: 0,
                        days: Some((end - start).num_days()),
                    },
                }
            }
        }
    }

    /// Attrition row 0: the persons with any record of the index event, and the records.
    fn index_records(&self) -> AttritionRow {
        let mut persons = 0;
        let mut records = 0;
        for person in &self.data.persons {
            let at = At::of(person);
            let n = self.matching(&self.study.index.query, &at).len();
            persons += usize::from(n > 0);
            records += n;
        }
        AttritionRow {
            rule: INDEX_RECORDS_RULE.to_string(),
            persons,
            entries: records,
        }
    }

    /// Qualifying index events: in an observation period (with the observation the study asks
    /// for) and within the calendar limits; then the first, last or all of each person's.
    fn index_entries(&self) -> Vec<Entry> {
        let index = &self.study.index;
        let mut entries = Vec::new();
        for person in &self.data.persons {
            let at = At::of(person);
            // With `each person at DATE`, the observation periods that contain the date, each
            // dated on it.
            let records: Vec<Record> = self
                .matching(&index.query, &at)
                .into_iter()
                .filter(|r| {
                    index
                        .at_date
                        .is_none_or(|d| r.start <= d && r.end.is_some_and(|e| e >= d))
                })
                .map(|r| Record {
                    start: index.at_date.unwrap_or(r.start),
                    ..r.clone()
                })
                .collect();
            let mut qualifying: Vec<(&Record, Option<&Period>)> = records
                .iter()
                .filter(|r| {
                    index.from.is_none_or(|f| r.start >= f)
                        && index.until.is_none_or(|u| r.start <= u)
                })
                .filter_map(|r| {
                    let (before, after) = index.observation;
                    let from = r.start + Duration::days(before);
                    let to = r.start + Duration::days(after);
                    // The earliest period that qualifies, should periods overlap.
                    let period = self
                        .periods
                        .get(&person.id)
                        .into_iter()
                        .flatten()
                        .filter(|p| p.start <= from && p.end >= to)
                        .min_by_key(|p| (p.start, p.end))
                        .copied();
                    match period {
                        Some(p) => Some((r, Some(p))),
                        None if index.any_observation => Some((r, None)),
                        None => None,
                    }
                })
                .collect();
            qualifying.sort_by_key(|(r, _)| (r.start, r.id));
            let chosen: Vec<(&Record, Option<&Period>)> = match index.occurrence {
                Occurrence::First => qualifying.into_iter().take(1).collect(),
                Occurrence::Last => qualifying.into_iter().last().into_iter().collect(),
                Occurrence::All => qualifying,
            };
            for (r, p) in chosen {
                entries.push(Entry {
                    person: person.id,
                    index: r.start,
                    record: r.id,
                    visit: r.visit,
                    record_end: record_end(r),
                    period: p.map(|p| (p.start, p.end)),
                    arm: None,
                    follow_up: None,
                });
            }
        }
        entries
    }
}

/// A person's records chained into eras (see `study::Era`): an era goes on while the next
/// record starts at most `gap` days after the latest end so far; it is a record with the
/// smallest id of its records, the first start and the latest end, and nothing else.
fn eras(mut records: Vec<&Record>, era: &Era) -> Vec<Record> {
    records.sort_by_key(|r| (r.start, record_end(r)));
    let mut out: Vec<Record> = Vec::new();
    for r in records {
        let end = record_end(r);
        match out.last_mut() {
            Some(last)
                if (r.start - last.end.expect("an era has an end")).num_days() <= era.gap =>
            {
                last.id = last.id.min(r.id);
                last.end = last.end.max(Some(end));
            }
            _ => {
                let mut e = Record::new(r.domain, r.id, r.person, None, r.start);
                e.end = Some(end);
                out.push(e);
            }
        }
    }
    out.retain(|e| {
        era.duration.as_ref().is_none_or(|t| {
            let days = (e.end.expect("an era has an end") - e.start).num_days() + 1;
            number_passes(t, days as f64)
        })
    });
    out
}

/// A record's end date as exits read it: a missing end is the start plus the days supplied
/// (drugs with a supply) or else the start plus 1 day, as OHDSI's Circe fills it; an end before
/// the start is the start.
fn record_end(r: &Record) -> NaiveDate {
    let end = r.end.unwrap_or_else(|| match r.days_supply {
        Some(d) if d > 0 => r.start + Duration::days(d),
        _ => r.start + Duration::days(1),
    });
    end.max(r.start)
}

/// How many records, or distinct concepts, days or visits among them (records without a
/// concept or visit count for none).
fn count_records(found: &[Record], distinct: Option<Distinct>) -> usize {
    match distinct {
        None => found.len(),
        Some(Distinct::Concepts) => found
            .iter()
            .filter_map(|r| r.concept)
            .collect::<BTreeSet<_>>()
            .len(),
        Some(Distinct::Days) => found.iter().map(|r| r.start).collect::<BTreeSet<_>>().len(),
        Some(Distinct::Visits) => found
            .iter()
            .filter_map(|r| r.visit)
            .collect::<BTreeSet<_>>()
            .len(),
    }
}

/// Age in completed years on a date. A missing month or day of birth counts as 1; for a person
/// born on 29 February, a year is completed on 1 March in common years.
pub fn age_in_years(person: &Person, on: NaiveDate) -> i32 {
    let birth = (
        person.month_of_birth.unwrap_or(1),
        person.day_of_birth.unwrap_or(1),
    );
    let before_birthday = (on.month(), on.day()) < birth;
    on.year() - person.year_of_birth - i32::from(before_birthday)
}

fn compare<T: PartialOrd>(op: CmpOp, a: T, b: T) -> bool {
    match op {
        CmpOp::Lt => a < b,
        CmpOp::Le => a <= b,
        CmpOp::Eq => a == b,
        CmpOp::Ne => a != b,
        CmpOp::Ge => a >= b,
        CmpOp::Gt => a > b,
    }
}

fn number_passes(test: &NumberTest, v: f64) -> bool {
    match *test {
        NumberTest::Compare(op, x) => compare(op, v, x),
        NumberTest::Between(low, high) => v >= low && v <= high,
    }
}

fn value_passes(test: &ValueTest, v: Value) -> bool {
    let ordered = |a: Value, b: Value| match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.partial_cmp(&y),
        (Value::Date(x), Value::Date(y)) => Some(x.cmp(&y)),
        _ => None,
    };
    match test {
        ValueTest::Compare(op, x) => {
            ordered(v, *x).is_some_and(|o| compare(*op, o, std::cmp::Ordering::Equal))
        }
        ValueTest::Between(low, high) => {
            ordered(v, *low).is_some_and(|o| o.is_ge())
                && ordered(v, *high).is_some_and(|o| o.is_le())
        }
    }
}
