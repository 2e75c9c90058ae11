//! Random small repositories and random studies over them, for the tests that compare engines
//! and check disclosure control on whatever a study may count.

use chrono::{Duration, NaiveDate};
use cohortql::reference::data::{Concept, Data, Period, Person, Record};
use cohortql::study::*;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

const CONCEPTS: [i64; 6] = [1, 2, 3, 4, 5, 6];
const DOMAINS: [Domain; 6] = [
    Domain::Condition,
    Domain::Drug,
    Domain::Measurement,
    Domain::Procedure,
    Domain::Visit,
    Domain::Observation,
];

pub fn day(rng: &mut ChaCha8Rng) -> NaiveDate {
    NaiveDate::from_ymd_opt(2019, 12, 20).unwrap() + Duration::days(rng.random_range(0..60))
}

pub fn random_data(rng: &mut ChaCha8Rng) -> Data {
    let mut data = Data::default();
    let persons = rng.random_range(1..=8);
    for id in 1..=persons {
        data.persons.push(Person {
            id,
            gender: if rng.random_bool(0.5) { MALE } else { FEMALE },
            year_of_birth: rng.random_range(1950..2005),
            month_of_birth: rng.random_bool(0.8).then(|| rng.random_range(1..=12)),
            day_of_birth: rng.random_bool(0.8).then(|| rng.random_range(1..=28)),
        });
        let mut start = day(rng) - Duration::days(rng.random_range(0..40));
        for _ in 0..rng.random_range(1..=2) {
            let end = start + Duration::days(rng.random_range(0..70));
            data.periods.push(Period {
                id: data.periods.len() as i64 + 1,
                person: id,
                start,
                end,
            });
            start = end + Duration::days(rng.random_range(1..20));
        }
    }
    let mut next_id = 1;
    for _ in 0..rng.random_range(10..120) {
        let domain = DOMAINS[rng.random_range(0..DOMAINS.len())];
        let person = rng.random_range(1..=persons);
        let start = day(rng);
        let mut r = Record::new(
            domain,
            next_id,
            person,
            rng.random_bool(0.95)
                .then(|| CONCEPTS[rng.random_range(0..CONCEPTS.len())]),
            start,
        );
        next_id += 1;
        if domain != Domain::Measurement && domain != Domain::Observation && rng.random_bool(0.6) {
            r.end = Some(start + Duration::days(rng.random_range(0..10)));
        }
        r.visit = if domain == Domain::Visit {
            Some(r.id)
        } else {
            rng.random_bool(0.7).then(|| 1000 + rng.random_range(0..4))
        };
        if domain == Domain::Measurement || domain == Domain::Observation {
            r.number = rng
                .random_bool(0.8)
                .then(|| rng.random_range(0..20) as f64 / 2.0);
            r.value_concept = rng
                .random_bool(0.5)
                .then(|| CONCEPTS[rng.random_range(0..6)]);
        }
        if domain == Domain::Measurement {
            r.range_low = rng.random_bool(0.5).then_some(2.0);
            r.range_high = rng.random_bool(0.5).then_some(7.0);
        }
        if domain == Domain::Drug {
            r.days_supply = rng.random_bool(0.5).then(|| rng.random_range(0..8));
        }
        if cohortql::repo::domains::records(domain)
            .column(cohortql::repo::domains::Field::SourceConcept)
            .is_some()
        {
            r.source_concept = rng
                .random_bool(0.6)
                .then(|| CONCEPTS[rng.random_range(0..6)]);
        }
        data.records.push(r);
    }
    for id in CONCEPTS {
        data.concepts.push(Concept {
            id,
            name: format!("Concept {id}"),
            vocabulary: "Test".into(),
            code: format!("C{id}"),
        });
    }
    data.concepts.push(Concept {
        id: 10,
        name: "Source ten".into(),
        vocabulary: "ICD10".into(),
        code: "A10.1".into(),
    });
    data.ancestors = vec![(1, 2), (1, 3), (4, 5)];
    data.maps_to = vec![(10, 4)];
    data
}

fn concept_expr(rng: &mut ChaCha8Rng) -> ConceptExpr {
    let one = |rng: &mut ChaCha8Rng| ConceptExpr::Concept {
        id: CONCEPTS[rng.random_range(0..CONCEPTS.len())],
        label: None,
    };
    match rng.random_range(0..7) {
        0 | 1 => one(rng),
        2 => ConceptExpr::WithDescendants(Box::new(one(rng))),
        3 => ConceptExpr::Union(vec![one(rng), one(rng)]),
        4 => ConceptExpr::Minus(
            Box::new(ConceptExpr::WithDescendants(Box::new(one(rng)))),
            Box::new(one(rng)),
        ),
        5 => ConceptExpr::Mapped(Box::new(ConceptExpr::SourceCodes {
            vocabulary: "ICD10".into(),
            codes: vec![CodePattern::Prefix("A10".into())],
        })),
        _ => ConceptExpr::Named("concept 3".into()),
    }
}

/// A random event query; now and then a union of two (`condition in x | drug in y`).
fn query(rng: &mut ChaCha8Rng, depth: u32) -> EventQuery {
    let mut q = alternative(rng, depth);
    if rng.random_bool(0.15) {
        q.also.push(alternative(rng, depth));
    }
    q
}

fn alternative(rng: &mut ChaCha8Rng, depth: u32) -> EventQuery {
    let domain = DOMAINS[rng.random_range(0..DOMAINS.len())];
    let mut filters = Vec::new();
    if rng.random_bool(0.3) {
        filters.push(match rng.random_range(0..8) {
            6 => EventFilter::FirstEver,
            7 if rng.random_bool(0.5) => EventFilter::SourceIn(concept_expr(rng)),
            0 => EventFilter::Value(NumberTest::Compare(CmpOp::Ge, 4.0)),
            1 => EventFilter::Value(NumberTest::Between(2.0, 6.5)),
            2 => EventFilter::Duration(NumberTest::Compare(CmpOp::Gt, 2.0)),
            3 => EventFilter::AboveNormal,
            4 => EventFilter::ValueIn(concept_expr(rng)),
            5 => EventFilter::SameVisit,
            _ if depth < 1 => EventFilter::Where(Box::new(Criterion::Events {
                count: Count::EXISTS,
                query: query(rng, depth + 1),
                window: Window::Days {
                    anchor: Anchor::Event,
                    start: Some(-3),
                    end: Some(rng.random_range(0..5)),
                    observed: rng.random_bool(0.3),
                },
                more: more_windows(rng, [Anchor::Event, Anchor::EventEnd]),
            })),
            _ => EventFilter::BelowNormal,
        });
    }
    // Now and then eras of the records (whose records take no filters that need an anchor).
    let era = rng.random_bool(0.1).then(|| {
        filters.retain(|f| !matches!(f, EventFilter::SameVisit | EventFilter::Where(_)));
        Era {
            gap: rng.random_range(0..10),
            duration: rng
                .random_bool(0.3)
                .then(|| NumberTest::Compare(CmpOp::Ge, rng.random_range(1..6) as f64)),
        }
    });
    EventQuery {
        domain,
        concepts: rng.random_bool(0.85).then(|| concept_expr(rng)),
        filters,
        also: vec![],
        era,
    }
}

fn window(rng: &mut ChaCha8Rng, anchor: Anchor) -> Window {
    let start = rng.random_bool(0.8).then(|| rng.random_range(-30..5));
    let end = rng
        .random_bool(0.8)
        .then(|| start.unwrap_or(-30) + rng.random_range(0..30));
    Window::Days {
        anchor,
        start,
        end,
        observed: rng.random_bool(0.3),
    }
}

/// Now and then a window on the record's end or a second one on its start, about the anchor
/// or the end of its record.
fn more_windows(rng: &mut ChaCha8Rng, anchors: [Anchor; 2]) -> Vec<EdgeWindow> {
    if !rng.random_bool(0.25) {
        return Vec::new();
    }
    let edge = [Edge::End, Edge::Start][rng.random_range(0..2)];
    let anchor = anchors[rng.random_range(0..2)];
    vec![EdgeWindow {
        edge,
        window: window(rng, anchor),
    }]
}

fn criterion(rng: &mut ChaCha8Rng, depth: u32) -> Criterion {
    match rng.random_range(0..if depth < 2 { 9 } else { 6 }) {
        0..=2 => {
            let op = [CountOp::AtLeast, CountOp::AtMost, CountOp::Exactly][rng.random_range(0..3)];
            let distinct = [
                None,
                None,
                Some(Distinct::Concepts),
                Some(Distinct::Days),
                Some(Distinct::Visits),
            ][rng.random_range(0..5)];
            Criterion::Events {
                count: Count {
                    op,
                    n: rng.random_range(0..3),
                    distinct,
                },
                query: query(rng, 0),
                window: window(rng, Anchor::Index),
                more: more_windows(rng, [Anchor::Index, Anchor::IndexEnd]),
            }
        }
        3 => Criterion::Observation {
            anchor: Anchor::Index,
            start: -rng.random_range(0..20),
            end: rng.random_range(0..20),
        },
        4 => Criterion::Sex(vec![MALE]),
        5 => Criterion::Compare {
            quantity: [
                Quantity::Age(Anchor::Index),
                Quantity::CalendarAge(Anchor::Index),
                Quantity::Year(Anchor::Index),
            ][rng.random_range(0..3)],
            test: ValueTest::Compare(
                [CmpOp::Ge, CmpOp::Lt, CmpOp::Eq][rng.random_range(0..3)],
                cohortql::study::Value::Number([20.0, 40.0, 2020.0][rng.random_range(0..3)]),
            ),
        },
        6 => Criterion::All(vec![criterion(rng, depth + 1), criterion(rng, depth + 1)]),
        7 => Criterion::Any(vec![criterion(rng, depth + 1), criterion(rng, depth + 1)]),
        _ => Criterion::Not(Box::new(criterion(rng, depth + 1))),
    }
}

fn covariate(rng: &mut ChaCha8Rng, i: usize) -> Covariate {
    let value = match rng.random_range(0..8) {
        0 => CovariateValue::Sex,
        1 => {
            let at =
                [Anchor::Index, Anchor::FollowUpStart, Anchor::FollowUpEnd][rng.random_range(0..3)];
            CovariateValue::Quantity(
                [
                    Quantity::Age(at),
                    Quantity::CalendarAge(at),
                    Quantity::Year(at),
                ][rng.random_range(0..3)],
            )
        }
        2 => CovariateValue::Count {
            distinct: [None, Some(Distinct::Days)][rng.random_range(0..2)],
            query: query(rng, 0),
            window: window(rng, Anchor::Index),
        },
        3 | 4 => CovariateValue::Aggregate {
            aggregate: [
                Aggregate::First,
                Aggregate::Last,
                Aggregate::Min,
                Aggregate::Max,
                Aggregate::Mean,
            ][rng.random_range(0..5)],
            concept: rng.random_bool(0.3),
            query: EventQuery {
                domain: Domain::Measurement,
                concepts: rng.random_bool(0.5).then(|| concept_expr(rng)),
                filters: vec![],
                also: vec![],
                era: None,
            },
            window: window(rng, Anchor::Index),
        },
        5 => CovariateValue::DaysSince {
            last: rng.random_bool(0.5),
            query: query(rng, 0),
            window: window(rng, Anchor::Index),
        },
        6 if i > 0 => CovariateValue::Interaction(vec![0, i - 1]),
        _ => CovariateValue::Flag(criterion(rng, 1)),
    };
    Covariate {
        name: format!("c{i}"),
        value,
        confounder: false,
    }
}

pub fn random_study(rng: &mut ChaCha8Rng, base: &Study) -> Study {
    let mut study = base.clone();
    study.index = IndexEvent {
        occurrence: [Occurrence::First, Occurrence::Last, Occurrence::All][rng.random_range(0..3)],
        // Broad enough that most random studies find someone; filters are exercised by criteria.
        query: if rng.random_bool(0.7) {
            EventQuery {
                domain: DOMAINS[rng.random_range(0..3)],
                concepts: rng.random_bool(0.5).then(|| {
                    ConceptExpr::WithDescendants(Box::new(ConceptExpr::Concept {
                        id: 1,
                        label: None,
                    }))
                }),
                filters: vec![],
                also: vec![],
                era: None,
            }
        } else {
            // `same visit` has no visit to compare with in the index definition (the checker
            // rejects it, E0402), in any alternative.
            let mut q = query(rng, 0);
            q.filters.retain(|f| !matches!(f, EventFilter::SameVisit));
            for alt in &mut q.also {
                alt.filters.retain(|f| !matches!(f, EventFilter::SameVisit));
            }
            q
        },
        from: rng
            .random_bool(0.2)
            .then(|| NaiveDate::from_ymd_opt(2020, 1, 5).unwrap()),
        until: rng
            .random_bool(0.2)
            .then(|| NaiveDate::from_ymd_opt(2020, 2, 5).unwrap()),
        observation: (0, 0),
        any_observation: false,
        at_date: None,
    };
    match rng.random_range(0..5) {
        0 | 1 => {}
        2 => study.index.any_observation = true,
        3 => {
            // `each person at DATE`: observation periods, dated on the day.
            study.index.at_date = NaiveDate::from_ymd_opt(2020, 1, 20);
            study.index.query = EventQuery {
                domain: Domain::ObservationPeriod,
                concepts: None,
                filters: vec![],
                also: vec![],
                era: None,
            };
            study.index.from = None;
            study.index.until = None;
        }
        _ => study.index.observation = (-rng.random_range(0..15), rng.random_range(0..15)),
    }
    study.steps = (0..rng.random_range(0..4))
        .map(|i| {
            // Now and then `keep first|last entry` in place of a criterion.
            let keep = rng
                .random_bool(0.15)
                .then(|| [Occurrence::First, Occurrence::Last][rng.random_range(0..2)]);
            Step {
                exclude: keep.is_none() && rng.random_bool(0.4),
                criterion: match keep {
                    Some(_) => Criterion::All(vec![]),
                    None => criterion(rng, 0),
                },
                keep,
                rule: format!("step {i}"),
            }
        })
        .collect();
    study.arms = if rng.random_bool(0.3) {
        vec![
            Arm {
                name: "a".into(),
                criterion: criterion(rng, 1),
            },
            Arm {
                name: "b".into(),
                criterion: criterion(rng, 1),
            },
        ]
    } else {
        vec![]
    };
    let mut exits = Vec::new();
    for _ in 0..rng.random_range(0..3) {
        exits.push(match rng.random_range(0..7) {
            0 => Exit::ObservationEnd,
            1 => Exit::Offset {
                anchor: Anchor::Index,
                days: rng.random_range(0..30),
            },
            2 => Exit::Offset {
                anchor: Anchor::FollowUpStart,
                days: rng.random_range(0..30),
            },
            3 => Exit::Event(query(rng, 0)),
            4 => Exit::ExposureEnd {
                concepts: concept_expr(rng),
                gap: rng.random_range(0..5),
                extra: rng.random_range(0..3),
            },
            5 => Exit::RecordEnd {
                extra: rng.random_range(0..3),
            },
            _ => Exit::Date(NaiveDate::from_ymd_opt(2020, 1, 25).unwrap()),
        });
    }
    study.follow_up = FollowUp {
        start_offset: rng.random_range(0..2),
        exits,
        collapse_days: rng.random_bool(0.3).then(|| rng.random_range(0..10)),
        period_from: rng
            .random_bool(0.2)
            .then(|| NaiveDate::from_ymd_opt(2020, 1, 10).unwrap()),
        period_to: rng
            .random_bool(0.2)
            .then(|| NaiveDate::from_ymd_opt(2020, 2, 10).unwrap()),
    };
    study.covariates = (0..rng.random_range(0..4))
        .map(|i| covariate(rng, i))
        .collect();
    study.endpoints = (0..rng.random_range(0..3))
        .map(|i| Endpoint {
            name: format!("e{i}"),
            kind: if rng.random_bool(0.5) {
                EndpointKind::Binary
            } else {
                EndpointKind::TimeToEvent
            },
            query: query(rng, 0),
            window: if rng.random_bool(0.6) {
                Window::FollowUp
            } else {
                window(rng, Anchor::FollowUpStart)
            },
        })
        .collect();
    study.consent = match rng.random_range(0..6) {
        0 => Consent::RequiredBy {
            query: EventQuery {
                domain: Domain::Observation,
                concepts: Some(ConceptExpr::Concept { id: 6, label: None }),
                filters: vec![],
                also: vec![],
                era: None,
            },
            from: rng
                .random_bool(0.5)
                .then(|| NaiveDate::from_ymd_opt(2020, 1, 15).unwrap()),
        },
        _ => Consent::NotRequired,
    };
    study
}
