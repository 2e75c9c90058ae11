//! Results computed at the site from the analysis dataset: for each endpoint and each exposure
//! arm (and for all entries), the persons with an event and the events, the person-time at
//! risk, incidence rates and risks with 95% confidence intervals, and each arm against the
//! first. The counts are released under disclosure control like every other count; the
//! statistics are computed from the counts as released, so they never say more than those do.

pub mod cox;
pub mod report;
pub mod stats;
pub mod survival;
pub mod table1;

use crate::disclosure::control::{CountRow, Table};
use crate::study::{EndpointKind, Study};

/// The group of entries a result row is about: an arm by name, or `all` entries.
pub use crate::disclosure::control::ALL;

/// Days in a year of person-time.
pub const DAYS_PER_YEAR: f64 = 365.25;

/// One endpoint in one group, exact.
#[derive(Clone, Debug, PartialEq)]
pub struct EndpointCount {
    pub endpoint: String,
    pub kind: EndpointKind,
    /// An arm's name, or `all`.
    pub group: String,
    pub persons_with_event: u64,
    pub events: u64,
    /// Days at risk: for each entry, from follow-up start to its event or to the end of
    /// follow-up, both days counted (`<endpoint>_days + 1`). Time-to-event endpoints only.
    pub person_days: Option<u64>,
}

/// One entry of the dataset, as the results need it.
pub struct Entry<'a> {
    pub person: i64,
    pub arm: Option<&'a str>,
    /// Per endpoint, in the study's order: whether it happens, and its days.
    pub outcomes: Vec<(bool, Option<i64>)>,
}

/// The groups results are given for: each arm in the study's order, then all entries.
pub fn groups(study: &Study) -> Vec<String> {
    study
        .arms
        .iter()
        .map(|a| a.name.clone())
        .chain([ALL.to_string()])
        .collect()
}

/// Counts per endpoint and group, from the dataset's entries.
pub fn endpoint_counts(study: &Study, entries: &[Entry]) -> Vec<EndpointCount> {
    let mut out = Vec::new();
    for (e, endpoint) in study.endpoints.iter().enumerate() {
        for group in groups(study) {
            let members = entries
                .iter()
                .filter(|x| group == ALL || x.arm == Some(group.as_str()));
            let mut persons = std::collections::BTreeSet::new();
            let (mut events, mut days) = (0u64, 0u64);
            for x in members {
                let (event, d) = x.outcomes[e];
                if event {
                    events += 1;
                    persons.insert(x.person);
                }
                days += d.map_or(0, |d| (d + 1).max(0) as u64);
            }
            out.push(EndpointCount {
                endpoint: endpoint.name.clone(),
                kind: endpoint.kind,
                group,
                persons_with_event: persons.len() as u64,
                events,
                person_days: (endpoint.kind == EndpointKind::TimeToEvent).then_some(days),
            });
        }
    }
    out
}

/// The counts as rows of the endpoint table, for disclosure control: persons with an event and
/// events, by endpoint (`rule`) and group (`arm`), lines numbered as the file has them.
pub fn count_rows(counts: &[EndpointCount]) -> Vec<CountRow> {
    counts
        .iter()
        .enumerate()
        .map(|(i, c)| CountRow {
            table: Table::Endpoint,
            step: None,
            rule: c.endpoint.clone(),
            arm: Some(c.group.clone()),
            counts: [Some(c.persons_with_event), Some(c.events)],
            line: i + 2,
        })
        .collect()
}

/// The statistics of one row, from counts as they may be published: all `None` where a count
/// they need is withheld.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Statistics {
    pub person_years: Option<f64>,
    /// Per 1,000 person-years, with its exact Poisson interval.
    pub rate: Option<stats::Estimate>,
    /// Events over entries, with its Wilson interval.
    pub risk: Option<stats::Estimate>,
    /// Against the first arm: the rate ratio (time to event) or the risk ratio (binary).
    pub ratio: Option<stats::Estimate>,
    /// Against the first arm: the rate difference per 1,000 person-years, or the risk
    /// difference.
    pub difference: Option<stats::Estimate>,
    /// For all entries of a time-to-event endpoint with arms: the log-rank test between the
    /// arms (chi-square, degrees of freedom, p).
    pub log_rank: Option<(f64, usize, f64)>,
}

/// What the statistics of a group are computed from: its events and entries as released, and
/// its days at risk.
#[derive(Clone, Copy, Debug)]
pub struct Basis {
    pub events: Option<u64>,
    pub entries: Option<u64>,
    pub person_days: Option<u64>,
}

/// The statistics of a group, and against `reference` (the first arm) when given.
pub fn statistics(kind: EndpointKind, group: Basis, reference: Option<Basis>) -> Statistics {
    let years = |b: Basis| {
        b.entries
            .and(b.person_days)
            .map(|d| d as f64 / DAYS_PER_YEAR)
    };
    let mut s = Statistics::default();
    match kind {
        EndpointKind::TimeToEvent => {
            s.person_years = years(group);
            if let (Some(k), Some(t)) = (group.events, s.person_years.filter(|t| *t > 0.0)) {
                let (lo, hi) = stats::poisson_exact(k);
                s.rate = Some((k as f64 / t * 1000.0, lo / t * 1000.0, hi / t * 1000.0));
            }
            if let Some(r) = reference {
                if let (Some(a), Some(ta), Some(b), Some(tb)) =
                    (group.events, s.person_years, r.events, years(r))
                {
                    s.ratio = stats::rate_ratio(a, ta, b, tb);
                    s.difference = stats::rate_difference(a, ta, b, tb)
                        .map(|(d, lo, hi)| (d * 1000.0, lo * 1000.0, hi * 1000.0));
                }
            }
        }
        EndpointKind::Binary => {
            if let (Some(k), Some(n)) = (group.events, group.entries) {
                s.risk = stats::wilson(k, n).map(|(lo, hi)| (k as f64 / n as f64, lo, hi));
            }
            if let Some(r) = reference {
                if let (Some(a), Some(na), Some(b), Some(nb)) =
                    (group.events, group.entries, r.events, r.entries)
                {
                    s.ratio = stats::risk_ratio(a, na, b, nb);
                    s.difference = stats::risk_difference(a, na, b, nb);
                }
            }
        }
    }
    s
}

/// The statistic columns of the endpoint table, after `endpoint`, `kind`, `group`, `persons`,
/// `events` and `suppressed`.
pub const STATISTIC_COLUMNS: [&str; 16] = [
    "person_years",
    "rate_per_1000_py",
    "rate_lower",
    "rate_upper",
    "risk",
    "risk_lower",
    "risk_upper",
    "ratio",
    "ratio_lower",
    "ratio_upper",
    "difference",
    "difference_lower",
    "difference_upper",
    "logrank_chisq",
    "logrank_df",
    "logrank_p",
];

/// The statistic columns' values, in `STATISTIC_COLUMNS` order.
pub fn statistic_values(s: &Statistics) -> [Option<f64>; 16] {
    let three = |e: Option<stats::Estimate>| [e.map(|e| e.0), e.map(|e| e.1), e.map(|e| e.2)];
    let [r0, r1, r2] = three(s.rate);
    let [k0, k1, k2] = three(s.risk);
    let [q0, q1, q2] = three(s.ratio);
    let [d0, d1, d2] = three(s.difference);
    [
        s.person_years,
        r0,
        r1,
        r2,
        k0,
        k1,
        k2,
        q0,
        q1,
        q2,
        d0,
        d1,
        d2,
        s.log_rank.map(|l| l.0),
        s.log_rank.map(|l| l.1 as f64),
        s.log_rank.map(|l| l.2),
    ]
}

/// Each group's `(time, event)` per entry for a time-to-event endpoint (time: days at risk,
/// `<endpoint>_days + 1`), in the order of `groups`.
pub fn observations(study: &Study, entries: &[Entry], endpoint: usize) -> Vec<Vec<(i64, bool)>> {
    groups(study)
        .iter()
        .map(|group| {
            entries
                .iter()
                .filter(|x| group == ALL || x.arm == Some(group.as_str()))
                .filter_map(|x| {
                    let (event, days) = x.outcomes[endpoint];
                    days.map(|d| (d + 1, event))
                })
                .collect()
        })
        .collect()
}
