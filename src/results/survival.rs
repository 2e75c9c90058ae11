//! Survival for time-to-event endpoints: Kaplan–Meier estimates with Greenwood's variance and
//! log(−log) 95% intervals, the log-rank test between groups, and the coarsened curve that may
//! leave a site (cumulative events and censorings rounded, so that no step is exact).

use statrs::distribution::{ChiSquared, ContinuousCDF, Normal};

/// One time at which entries leave the risk set.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// Days at risk up to and including the day of leaving (`<endpoint>_days + 1`).
    pub time: i64,
    /// Entries at risk just before `time`.
    pub at_risk: u64,
    pub events: u64,
    pub censored: u64,
    /// The Kaplan–Meier estimate just after `time`.
    pub survival: f64,
    /// Greenwood's standard error of `survival`.
    pub std_err: f64,
    /// The log(−log) 95% interval.
    pub lower: f64,
    pub upper: f64,
}

fn z() -> f64 {
    Normal::new(0.0, 1.0)
        .expect("the standard normal")
        .inverse_cdf(0.975)
}

/// Kaplan–Meier from `(time, event)` per entry: one step per time anyone leaves.
pub fn kaplan_meier(observations: &[(i64, bool)]) -> Vec<Step> {
    let mut times: Vec<(i64, bool)> = observations.to_vec();
    times.sort();
    let mut tallies: Vec<(i64, u64, u64)> = Vec::new();
    for (t, event) in times {
        match tallies.last_mut() {
            Some(last) if last.0 == t => {
                if event {
                    last.1 += 1
                } else {
                    last.2 += 1
                }
            }
            _ => tallies.push((t, u64::from(event), u64::from(!event))),
        }
    }
    curve(observations.len() as u64, &tallies)
}

/// The curve of tallies `(time, events, censored)` in time order, starting with `n` at risk.
pub fn curve(n: u64, tallies: &[(i64, u64, u64)]) -> Vec<Step> {
    let z = z();
    let mut at_risk = n;
    let mut survival = 1.0;
    let mut greenwood = 0.0;
    let mut out = Vec::new();
    for &(time, events, censored) in tallies {
        if at_risk == 0 {
            break;
        }
        if events > 0 {
            survival *= 1.0 - events as f64 / at_risk as f64;
            greenwood += if events < at_risk {
                events as f64 / (at_risk as f64 * (at_risk - events) as f64)
            } else {
                f64::INFINITY
            };
        }
        let (lower, upper) = if survival <= 0.0 {
            (0.0, 0.0)
        } else if greenwood == 0.0 {
            (1.0, 1.0)
        } else {
            let se = greenwood.sqrt() / survival.ln().abs();
            (
                survival.powf((z * se).exp()),
                survival.powf((-z * se).exp()),
            )
        };
        out.push(Step {
            time,
            at_risk,
            events,
            censored,
            survival,
            std_err: if greenwood.is_finite() {
                survival * greenwood.sqrt()
            } else {
                0.0
            },
            lower,
            upper,
        });
        at_risk = at_risk.saturating_sub(events + censored);
    }
    out
}

/// A log-rank test: the chi-square statistic, its degrees of freedom, and the p-value.
pub type LogRank = (f64, usize, f64);

/// The log-rank test of equal survival in `groups` (each a list of `(time, event)`): the
/// chi-square statistic over k − 1 groups, its degrees of freedom and p-value. `None` with
/// fewer than two groups holding entries, or no events.
pub fn log_rank(groups: &[Vec<(i64, bool)>]) -> Option<LogRank> {
    let groups: Vec<&Vec<(i64, bool)>> = groups.iter().filter(|g| !g.is_empty()).collect();
    let k = groups.len();
    if k < 2 {
        return None;
    }
    let mut event_times: Vec<i64> = groups
        .iter()
        .flat_map(|g| g.iter().filter(|o| o.1).map(|o| o.0))
        .collect();
    event_times.sort();
    event_times.dedup();
    if event_times.is_empty() {
        return None;
    }
    // Each group in time order (censorings before events at a time), so that those at risk
    // and the events at a time are found by binary search, not by reading every entry.
    let sorted: Vec<Vec<(i64, bool)>> = groups
        .iter()
        .map(|g| {
            let mut g = g.to_vec();
            g.sort_unstable();
            g
        })
        .collect();
    let mut observed_less_expected = vec![0.0; k];
    let mut variance = vec![vec![0.0; k]; k];
    for &t in &event_times {
        let at_risk: Vec<f64> = sorted
            .iter()
            .map(|g| (g.len() - g.partition_point(|o| o.0 < t)) as f64)
            .collect();
        let deaths: Vec<f64> = sorted
            .iter()
            .map(|g| {
                (g.partition_point(|o| o.0 <= t) - g.partition_point(|o| *o < (t, true))) as f64
            })
            .collect();
        let n: f64 = at_risk.iter().sum();
        let d: f64 = deaths.iter().sum();
        if n <= 1.0 {
            continue;
        }
        for g in 0..k {
            observed_less_expected[g] += deaths[g] - d * at_risk[g] / n;
            for h in 0..k {
                let delta = if g == h { 1.0 } else { 0.0 };
                variance[g][h] +=
                    d * (n - d) / (n - 1.0) * at_risk[g] / n * (delta - at_risk[h] / n);
            }
        }
    }
    // The first k − 1 groups determine the last: solve V x = (O − E) on them.
    let m = k - 1;
    let mut a: Vec<Vec<f64>> = (0..m)
        .map(|i| {
            let mut row = variance[i][..m].to_vec();
            row.push(observed_less_expected[i]);
            row
        })
        .collect();
    for col in 0..m {
        let pivot = (col..m).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[pivot][col].abs() < 1e-12 {
            return None;
        }
        a.swap(col, pivot);
        for row in 0..m {
            if row != col {
                let f = a[row][col] / a[col][col];
                for c in col..=m {
                    a[row][c] -= f * a[col][c];
                }
            }
        }
    }
    let chisq: f64 = (0..m)
        .map(|i| observed_less_expected[i] * a[i][m] / a[i][i])
        .sum();
    let p = 1.0 - ChiSquared::new(m as f64).ok()?.cdf(chisq);
    Some((chisq, m, p))
}

/// The curve as it may leave a site: cumulative events and censorings rounded to multiples of
/// `base`, and the group's size too; steps where neither rounded total changes are merged into
/// the next; the curve stops before the rounded number at risk falls below `threshold`, and is
/// not given at all for a group of fewer than `threshold`. Every count published is a multiple
/// of `base`, and the estimates are those of the rounded counts.
pub fn coarsened(steps: &[Step], base: u64, threshold: u64) -> Vec<Step> {
    let Some(first) = steps.first() else {
        return Vec::new();
    };
    let n = first.at_risk;
    if n < threshold {
        return Vec::new();
    }
    let round = |x: u64| (x + base / 2) / base * base;
    let (mut events, mut censored) = (0u64, 0u64);
    let (mut shown_events, mut shown_censored) = (0u64, 0u64);
    let mut tallies = Vec::new();
    for s in steps {
        events += s.events;
        censored += s.censored;
        let (e, c) = (round(events), round(censored));
        if (e, c) != (shown_events, shown_censored) && e >= shown_events && c >= shown_censored {
            tallies.push((s.time, e - shown_events, c - shown_censored));
            shown_events = e;
            shown_censored = c;
        }
    }
    let n = round(n);
    let mut out = curve(n, &tallies);
    if let Some(stop) = out.iter().position(|s| s.at_risk < threshold) {
        out.truncate(stop);
    }
    out
}

/// The days at which numbers at risk are given: every 30 days when the longest time at risk is
/// a year or less, every 90 up to three years, every 365 beyond; from day 0.
pub fn at_risk_times(longest: i64) -> Vec<i64> {
    let step = if longest <= 365 {
        30
    } else if longest <= 3 * 365 {
        90
    } else {
        365
    };
    (0..=longest.max(0) / step).map(|k| k * step).collect()
}

/// Entries still at risk on day `t` of follow-up: those whose time at risk is more than `t`
/// days (day 0 is the first day; an entry with 1 day at risk is at risk on day 0 only).
pub fn at_risk(observations: &[(i64, bool)], t: i64) -> u64 {
    observations.iter().filter(|o| o.0 > t).count() as u64
}
