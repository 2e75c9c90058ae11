//! The reference evaluator: the meaning of a `Study`, computed over plain vectors of rows with
//! loops and sets, written to be obviously correct rather than fast. Tests use it as the oracle
//! that the query engine must agree with.
//!
//! This part evaluates concept sets, time zero, the attrition steps and the exposure arms.

pub mod data;

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
    /// The observation period that contains the index date.
    pub period: (NaiveDate, NaiveDate),
    /// The exposure arm, when the study has arms.
    pub arm: Option<String>,
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
}

/// Evaluates time zero, the steps and the arms of a study.
pub fn evaluate_population(study: &Study, data: &Data) -> Population {
    let ev = Evaluator::new(study, data);
    let mut entries = ev.index_entries();
    let mut attrition = vec![row("qualifying index event", &entries)];
    for step in &study.steps {
        entries.retain(|e| ev.holds(&step.criterion, &ev.at_index(e)) != step.exclude);
        attrition.push(row(&step.rule, &entries));
    }
    if !study.arms.is_empty() {
        for e in &mut entries {
            let at = ev.at_index(e);
            e.arm = study
                .arms
                .iter()
                .find(|a| ev.holds(&a.criterion, &at))
                .map(|a| a.name.clone());
        }
        entries.retain(|e| e.arm.is_some());
        attrition.push(row("assigned to an exposure arm", &entries));
    }
    Population { entries, attrition }
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
    event: Option<&'a Record>,
    follow_up: Option<(NaiveDate, NaiveDate)>,
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
            .enumerate()
            .map(|(i, p)| {
                let mut r = Record::new(
                    Domain::ObservationPeriod,
                    i as i64 + 1,
                    p.person,
                    None,
                    p.start,
                );
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

    /// The records of a query for a person, before any window.
    fn matching(&self, query: &EventQuery, at: &At<'a>) -> Vec<&Record> {
        let concepts = query.concepts.as_ref().map(|c| self.concepts(c));
        self.records_of(at.person.id, query.domain)
            .into_iter()
            .filter(|r| {
                concepts
                    .as_ref()
                    .is_none_or(|set| r.concept.is_some_and(|c| set.contains(&c)))
            })
            .filter(|r| query.filters.iter().all(|f| self.passes(f, r, at)))
            .collect()
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
            EventFilter::Modality(codes) => r
                .modality
                .as_ref()
                .is_some_and(|m| codes.iter().any(|c| c.eq_ignore_ascii_case(m))),
            EventFilter::KindIn(c) => r.kind.is_some_and(|k| self.concepts(c).contains(&k)),
            EventFilter::Duration(test) => {
                let days = (r.end.unwrap_or(r.start) - r.start).num_days() + 1;
                number_passes(test, days as f64)
            }
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
            Anchor::FollowUpStart => at.follow_up.map(|f| f.0),
            Anchor::FollowUpEnd => at.follow_up.map(|f| f.1),
        }
    }

    fn in_window(&self, window: &Window, date: NaiveDate, at: &At<'a>) -> bool {
        match *window {
            Window::FollowUp => at.follow_up.is_some_and(|(s, e)| date >= s && date <= e),
            Window::Days { anchor, start, end } => match self.anchor_date(anchor, at) {
                None => false,
                Some(a) => {
                    let offset = (date - a).num_days();
                    start.is_none_or(|s| offset >= s) && end.is_none_or(|e| offset <= e)
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
            } => {
                let found: Vec<&Record> = self
                    .matching(query, at)
                    .into_iter()
                    .filter(|r| self.in_window(window, r.start, at))
                    .collect();
                let n = match count.distinct {
                    None => found.len(),
                    Some(Distinct::Concepts) => found
                        .iter()
                        .filter_map(|r| r.concept)
                        .collect::<BTreeSet<_>>()
                        .len(),
                    Some(Distinct::Days) => {
                        found.iter().map(|r| r.start).collect::<BTreeSet<_>>().len()
                    }
                    Some(Distinct::Visits) => found
                        .iter()
                        .filter_map(|r| r.visit)
                        .collect::<BTreeSet<_>>()
                        .len(),
                } as u64;
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
            Criterion::Compare { quantity, test } => {
                let anchor = match quantity {
                    Quantity::Age(a)
                    | Quantity::CalendarAge(a)
                    | Quantity::Year(a)
                    | Quantity::Date(a) => *a,
                };
                let Some(date) = self.anchor_date(anchor, at) else {
                    return false;
                };
                let value = match quantity {
                    Quantity::Age(_) => Value::Number(age_in_years(at.person, date) as f64),
                    Quantity::CalendarAge(_) => {
                        Value::Number((date.year() - at.person.year_of_birth) as f64)
                    }
                    Quantity::Year(_) => Value::Number(date.year() as f64),
                    Quantity::Date(_) => Value::Date(date),
                };
                value_passes(test, value)
            }
        }
    }

    /// Qualifying index events: in an observation period (with the observation the study asks
    /// for) and within the calendar limits; then the first, last or all of each person's.
    fn index_entries(&self) -> Vec<Entry> {
        let index = &self.study.index;
        let mut entries = Vec::new();
        for person in &self.data.persons {
            let at = At {
                person,
                index: None,
                index_visit: None,
                event: None,
                follow_up: None,
            };
            let mut qualifying: Vec<(&Record, &Period)> = self
                .matching(&index.query, &at)
                .into_iter()
                .filter(|r| {
                    index.from.is_none_or(|f| r.start >= f)
                        && index.until.is_none_or(|u| r.start <= u)
                })
                .filter_map(|r| {
                    let (before, after) = index.observation;
                    let from = r.start + Duration::days(before);
                    let to = r.start + Duration::days(after);
                    let period = self
                        .periods
                        .get(&person.id)?
                        .iter()
                        .find(|p| p.start <= from && p.end >= to)?;
                    Some((r, *period))
                })
                .collect();
            qualifying.sort_by_key(|(r, _)| (r.start, r.id));
            let chosen: Vec<(&Record, &Period)> = match index.occurrence {
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
                    period: (p.start, p.end),
                    arm: None,
                });
            }
        }
        entries
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
