//! Table 1: each covariate summarised per exposure arm and for all entries, by its kind —
//! numbers by mean, standard deviation, median and quartiles; flags and categories by count and
//! percentage; dates not at all — with the standardised mean difference of each arm against the
//! first, the usual measure of balance.

use super::{groups, ALL};
use crate::disclosure::control::{CountRow, Table};
use crate::study::{Study, ValueKind};

/// One covariate's value for one entry.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Missing,
    Number(f64),
    /// A category's label (`male`, `female`, or the value as written).
    Category(String),
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

/// An age's ten-year band: `0–9`, `10–19`, …, `90 and over`.
pub fn age_band(age: f64) -> String {
    let decade = (age.max(0.0) / 10.0).floor() as i64 * 10;
    if decade >= 90 {
        "90 and over".to_string()
    } else {
        format!("{decade}–{}", decade + 9)
    }
}

/// Table 1 from each entry's arm and its value of each column (`values[entry][column]`, in the
/// order of `columns`: name and kind). Dates are left out.
pub fn table1(
    study: &Study,
    columns: &[(String, ValueKind)],
    arms: &[Option<&str>],
    values: &[Vec<Value>],
) -> Vec<Row> {
    let groups = groups(study);
    let in_group = |g: &str, i: usize| g == ALL || arms[i] == Some(g);
    let first = study.arms.first().map(|a| a.name.clone());
    let mut out = Vec::new();
    for (c, (name, kind)) in columns.iter().enumerate() {
        let kind = *kind;
        match kind {
            ValueKind::Date => continue,
            ValueKind::Number => {
                let of = |g: &str| -> (Vec<f64>, u64) {
                    let mut v = Vec::new();
                    let mut missing = 0;
                    for i in (0..values.len()).filter(|&i| in_group(g, i)) {
                        match &values[i][c] {
                            Value::Number(x) => v.push(*x),
                            _ => missing += 1,
                        }
                    }
                    v.sort_by(f64::total_cmp);
                    (v, missing)
                };
                let reference = first.as_ref().map(|f| of(f)).map(|(v, _)| mean_sd(&v));
                for g in &groups {
                    let (v, missing) = of(g);
                    let (mean, sd) = mean_sd(&v);
                    let balance = match (&first, reference, mean, sd) {
                        (Some(f), Some((Some(m0), Some(s0))), Some(m1), Some(s1))
                            if g != f && g != ALL =>
                        {
                            smd(m1, s1, m0, s0)
                        }
                        _ => None,
                    };
                    out.push(Row {
                        covariate: name.clone(),
                        level: String::new(),
                        kind,
                        group: g.clone(),
                        n: v.len() as u64,
                        mean,
                        sd,
                        median: quantile(&v, 0.5),
                        q1: quantile(&v, 0.25),
                        q3: quantile(&v, 0.75),
                        smd: balance,
                    });
                    out.push(missing_row(name, kind, g, missing));
                }
            }
            ValueKind::Flag | ValueKind::Category => {
                let mut levels: Vec<String> = values
                    .iter()
                    .filter_map(|v| match &v[c] {
                        Value::Category(l) => Some(l.clone()),
                        Value::Number(x) if kind == ValueKind::Flag => {
                            (*x != 0.0).then(|| "1".to_string())
                        }
                        Value::Number(x) => Some(format!("{x}")),
                        Value::Missing => None,
                    })
                    .collect();
                if kind == ValueKind::Flag {
                    levels = vec!["0".to_string(), "1".to_string()];
                }
                levels.sort();
                levels.dedup();
                let label = |v: &Value| -> Option<String> {
                    match v {
                        Value::Category(l) => Some(l.clone()),
                        Value::Number(x) if kind == ValueKind::Flag => {
                            Some(if *x != 0.0 { "1".into() } else { "0".into() })
                        }
                        Value::Number(x) => Some(format!("{x}")),
                        Value::Missing => None,
                    }
                };
                for level in &levels {
                    let share = |g: &str| -> (u64, u64, u64) {
                        let (mut n, mut present, mut missing) = (0, 0, 0);
                        for i in (0..values.len()).filter(|&i| in_group(g, i)) {
                            match label(&values[i][c]) {
                                Some(l) => {
                                    present += 1;
                                    n += u64::from(l == *level);
                                }
                                None => missing += 1,
                            }
                        }
                        (n, present, missing)
                    };
                    let proportion = |(n, present, _): (u64, u64, u64)| {
                        (present > 0).then(|| n as f64 / present as f64)
                    };
                    let reference = first.as_ref().and_then(|f| proportion(share(f)));
                    for g in &groups {
                        let counts = share(g);
                        let p = proportion(counts);
                        let balance = match (&first, reference, p) {
                            (Some(f), Some(p0), Some(p1)) if g != f && g != ALL => {
                                smd(p1, (p1 * (1.0 - p1)).sqrt(), p0, (p0 * (1.0 - p0)).sqrt())
                            }
                            _ => None,
                        };
                        out.push(Row {
                            covariate: name.clone(),
                            level: level.clone(),
                            kind,
                            group: g.clone(),
                            n: counts.0,
                            mean: p,
                            sd: None,
                            median: None,
                            q1: None,
                            q3: None,
                            smd: balance,
                        });
                    }
                }
                for g in &groups {
                    let missing = (0..values.len())
                        .filter(|&i| in_group(g, i) && values[i][c] == Value::Missing)
                        .count() as u64;
                    out.push(missing_row(name, kind, g, missing));
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
