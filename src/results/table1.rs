//! Table 1: each covariate summarised per exposure arm and for all entries, by its kind —
//! numbers by mean, standard deviation, median and quartiles; flags and categories by count and
//! percentage; dates not at all — with the standardised mean difference of each arm against the
//! first, the usual measure of balance.

use super::groups;
use crate::disclosure::control::{CountRow, Table};
use crate::study::{Study, ValueKind};

/// One Table 1 column's values, one per entry, kept by column: a run's dataset can have
/// millions of entries, and a value per entry and column as its own object cost gigabytes.
#[derive(Clone, Debug, PartialEq)]
pub enum Column {
    /// Numbers and flags (a flag is 0 or 1); `None` where the entry has no value.
    Numbers(Vec<Option<f64>>),
    /// Categories: each entry's level as a position in `levels` (sorted, each once), `None`
    /// where the entry has no value.
    Categories {
        levels: Vec<String>,
        of: Vec<Option<u32>>,
    },
    /// Dates, which Table 1 leaves out.
    Dates,
}

impl Column {
    /// A category column from each entry's label (`None`: no value), levels sorted.
    pub fn categories<'a>(labels: impl Iterator<Item = Option<&'a str>>) -> Column {
        let mut found: std::collections::HashMap<&str, u32> = std::collections::HashMap::new();
        let of: Vec<Option<u32>> = labels
            .map(|l| {
                l.map(|l| {
                    let next = found.len() as u32;
                    *found.entry(l).or_insert(next)
                })
            })
            .collect();
        let mut seen: Vec<(&str, u32)> = found.into_iter().collect();
        seen.sort();
        let mut position = vec![0u32; seen.len()];
        for (sorted, (_, first)) in seen.iter().enumerate() {
            position[*first as usize] = sorted as u32;
        }
        Column::Categories {
            levels: seen.iter().map(|(l, _)| l.to_string()).collect(),
            of: of
                .into_iter()
                .map(|k| k.map(|k| position[k as usize]))
                .collect(),
        }
    }

    /// Whether entry `i` has no value.
    fn missing(&self, i: usize) -> bool {
        match self {
            Column::Numbers(v) => v[i].is_none(),
            Column::Categories { of, .. } => of[i].is_none(),
            Column::Dates => true,
        }
    }
}

/// One row of Table 1, exact.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub covariate: String,
    /// The category or, for a flag, `1`; empty for a number.
    pub level: String,
    pub kind: ValueKind,
    pub group: String,
    /// Entries with the level (flags, categories; `(missing)`: without a value) or with a value
    /// (numbers).
    pub n: u64,
    /// For a flag or category, the share of entries with a value that have the level.
    pub mean: Option<f64>,
    pub sd: Option<f64>,
    pub median: Option<f64>,
    pub q1: Option<f64>,
    pub q3: Option<f64>,
    /// Against the first arm.
    pub smd: Option<f64>,
}

/// How Table 1 summarises a covariate: as `check::value_kind` says, except that an interaction
/// (a product of numbers) is a number.
pub fn kind_of(value: &crate::study::CovariateValue) -> ValueKind {
    match value {
        crate::study::CovariateValue::Interaction(_) => ValueKind::Number,
        v => crate::check::value_kind(v),
    }
}

/// The level of the row counting a covariate's missing values.
pub const MISSING: &str = "(missing)";

/// A quantile by linear interpolation between order statistics (type 7, as R and NumPy do by
/// default).
fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let h = (sorted.len() - 1) as f64 * q;
    let lo = h.floor() as usize;
    let hi = h.ceil() as usize;
    Some(sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo]))
}

fn mean_sd(values: &[f64]) -> (Option<f64>, Option<f64>) {
    if values.is_empty() {
        return (None, None);
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let sd = (values.len() > 1)
        .then(|| (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt());
    (Some(mean), sd)
}

/// The standardised mean difference of means `m1`, `m0` with standard deviations `s1`, `s0`:
/// (m1 − m0) / sqrt((s1² + s0²) / 2); for proportions p, s² = p(1 − p).
pub fn smd(m1: f64, s1: f64, m0: f64, s0: f64) -> Option<f64> {
    let pooled = ((s1 * s1 + s0 * s0) / 2.0).sqrt();
    (pooled > 0.0).then(|| (m1 - m0) / pooled)
}

/// The columns every Table 1 starts with, whatever the study declares: sex, and age at index
/// in ten-year bands. Their names cannot be a covariate's.
pub const SEX: &str = "[sex]";
pub const AGE_BAND: &str = "[age band]";

/// The dataset columns a run adds for them, left out of every dataset it writes (a covariate
/// may not be named `cohortql_…`).
pub const SEX_COLUMN: &str = "cohortql_table1_sex";
pub const AGE_COLUMN: &str = "cohortql_table1_age";

/// The study as a run executes it: with the two columns above as covariates.
pub fn with_demographics(study: &Study) -> Study {
    use crate::study::{Anchor, Covariate, CovariateValue, Quantity};
    let mut run = study.clone();
    run.covariates.push(Covariate {
        name: SEX_COLUMN.to_string(),
        value: CovariateValue::Sex,
        confounder: false,
    });
    run.covariates.push(Covariate {
        name: AGE_COLUMN.to_string(),
        value: CovariateValue::Quantity(Quantity::Age(Anchor::Index)),
        confounder: false,
    });
    run
}

/// The ten-year bands of age, youngest first: `0–9`, `10–19`, …, `90 and over`.
pub fn age_bands() -> Vec<String> {
    (0..AGE_BANDS)
        .map(|b| {
            let decade = b * 10;
            if b + 1 == AGE_BANDS {
                format!("{decade} and over")
            } else {
                format!("{decade}–{}", decade + 9)
            }
        })
        .collect()
}

const AGE_BANDS: usize = 10;

/// The position in `age_bands()` of an age's band.
pub fn age_band_of(age: f64) -> usize {
    ((age.max(0.0) / 10.0).floor() as usize).min(AGE_BANDS - 1)
}

/// Table 1 from each entry's arm (its position in the study's arms) and each column's values
/// (in the order of `columns`: name and kind). Dates are left out.
pub fn table1(
    study: &Study,
    columns: &[(String, ValueKind)],
    arms: &[Option<usize>],
    values: &[Column],
) -> Vec<Row> {
    let groups = groups(study);
    // Group `g` is arm `g`, or all entries for the last one.
    let all = groups.len() - 1;
    let groups_of = |i: usize| arms[i].into_iter().chain([all]);
    let first = (!study.arms.is_empty()).then_some(0);
    let mut out = Vec::new();
    for ((name, kind), column) in columns.iter().zip(values) {
        let kind = *kind;
        let mut missing = vec![0u64; groups.len()];
        for i in (0..arms.len()).filter(|&i| column.missing(i)) {
            groups_of(i).for_each(|g| missing[g] += 1);
        }
        match (kind, column) {
            (ValueKind::Date, _) | (_, Column::Dates) => continue,
            (ValueKind::Number, Column::Numbers(numbers)) => {
                let mut of: Vec<Vec<f64>> = vec![Vec::new(); groups.len()];
                for (i, x) in numbers.iter().enumerate() {
                    if let Some(x) = x {
                        groups_of(i).for_each(|g| of[g].push(*x));
                    }
                }
                of.iter_mut().for_each(|v| v.sort_by(f64::total_cmp));
                let reference = first.map(|f| mean_sd(&of[f]));
                for (g, group) in groups.iter().enumerate() {
                    let v = &of[g];
                    let (mean, sd) = mean_sd(v);
                    let balance = match (first, reference, mean, sd) {
                        (Some(f), Some((Some(m0), Some(s0))), Some(m1), Some(s1))
                            if g != f && g != all =>
                        {
                            smd(m1, s1, m0, s0)
                        }
                        _ => None,
                    };
                    out.push(Row {
                        covariate: name.clone(),
                        level: String::new(),
                        kind,
                        group: group.clone(),
                        n: v.len() as u64,
                        mean,
                        sd,
                        median: quantile(v, 0.5),
                        q1: quantile(v, 0.25),
                        q3: quantile(v, 0.75),
                        smd: balance,
                    });
                    out.push(missing_row(name, kind, group, missing[g]));
                }
            }
            (_, column) => {
                // Each entry's level as a position in `levels`.
                let (levels, level_of): (Vec<String>, Box<dyn Fn(usize) -> Option<usize>>) =
                    match column {
                        Column::Numbers(numbers) if kind == ValueKind::Flag => (
                            vec!["0".to_string(), "1".to_string()],
                            Box::new(|i| numbers[i].map(|x| usize::from(x != 0.0))),
                        ),
                        Column::Numbers(numbers) => {
                            let labels: Vec<Option<String>> =
                                numbers.iter().map(|x| x.map(|x| format!("{x}"))).collect();
                            let Column::Categories { levels, of } =
                                Column::categories(labels.iter().map(|l| l.as_deref()))
                            else {
                                unreachable!("categories() gives categories")
                            };
                            (levels, Box::new(move |i| of[i].map(|k| k as usize)))
                        }
                        Column::Categories { levels, of } => {
                            (levels.clone(), Box::new(|i| of[i].map(|k| k as usize)))
                        }
                        Column::Dates => unreachable!("dates are left out above"),
                    };
                // Per group: entries with each level, and entries with a value.
                let mut with_level = vec![vec![0u64; levels.len()]; groups.len()];
                let mut present = vec![0u64; groups.len()];
                for i in 0..arms.len() {
                    if let Some(l) = level_of(i) {
                        for g in groups_of(i) {
                            with_level[g][l] += 1;
                            present[g] += 1;
                        }
                    }
                }
                let proportion = |g: usize, l: usize| {
                    (present[g] > 0).then(|| with_level[g][l] as f64 / present[g] as f64)
                };
                for (l, level) in levels.iter().enumerate() {
                    let reference = first.and_then(|f| proportion(f, l));
                    for (g, group) in groups.iter().enumerate() {
                        let p = proportion(g, l);
                        let balance = match (first, reference, p) {
                            (Some(f), Some(p0), Some(p1)) if g != f && g != all => {
                                smd(p1, (p1 * (1.0 - p1)).sqrt(), p0, (p0 * (1.0 - p0)).sqrt())
                            }
                            _ => None,
                        };
                        out.push(Row {
                            covariate: name.clone(),
                            level: level.clone(),
                            kind,
                            group: group.clone(),
                            n: with_level[g][l],
                            mean: p,
                            sd: None,
                            median: None,
                            q1: None,
                            q3: None,
                            smd: balance,
                        });
                    }
                }
                for (g, group) in groups.iter().enumerate() {
                    out.push(missing_row(name, kind, group, missing[g]));
                }
            }
        }
    }
    out
}

fn missing_row(covariate: &str, kind: ValueKind, group: &str, missing: u64) -> Row {
    Row {
        covariate: covariate.to_string(),
        level: MISSING.to_string(),
        kind,
        group: group.to_string(),
        n: missing,
        mean: None,
        sd: None,
        median: None,
        q1: None,
        q3: None,
        smd: None,
    }
}

/// The statistic columns of Table 1, after `covariate`, `level`, `kind`, `group`, `n` and
/// `suppressed`.
pub const STATISTIC_COLUMNS: [&str; 7] = ["percent", "mean", "sd", "median", "q1", "q3", "smd"];

/// The rule of a Table 1 row in disclosure control: the covariate, then ` = ` and its level
/// where it has one.
pub fn rule_of(covariate: &str, level: &str) -> String {
    if level.is_empty() {
        covariate.to_string()
    } else {
        format!("{covariate} = {level}")
    }
}

/// The covariate of a Table 1 row's rule.
pub use crate::disclosure::control::covariate_of;

/// Table 1's counts as rows for disclosure control: `n` by covariate and level (`rule`) and
/// group (`arm`), in both measures, since each counts entries.
pub fn count_rows(rows: &[Row]) -> Vec<CountRow> {
    rows.iter()
        .enumerate()
        .map(|(i, r)| CountRow {
            table: Table::Table1,
            step: None,
            rule: rule_of(&r.covariate, &r.level),
            arm: Some(r.group.clone()),
            counts: [Some(r.n), Some(r.n)],
            line: i + 2,
        })
        .collect()
}
