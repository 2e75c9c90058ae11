//! The Cox proportional-hazards model, with Efron's handling of tied event times, fitted by
//! Newton–Raphson on the log partial likelihood; standard errors from the inverse of the
//! observed information, Wald tests and 95% intervals for the hazard ratios.

use statrs::distribution::{ContinuousCDF, Normal};

/// One term of a fitted model.
#[derive(Clone, Debug, PartialEq)]
pub struct Term {
    pub coefficient: f64,
    pub std_err: f64,
    /// exp(coefficient), with its 95% interval.
    pub hazard_ratio: f64,
    pub lower: f64,
    pub upper: f64,
    /// Two-sided Wald p-value.
    pub p: f64,
}

/// A fitted model.
#[derive(Clone, Debug, PartialEq)]
pub struct Fit {
    pub terms: Vec<Term>,
    pub log_likelihood: f64,
    pub iterations: usize,
}

/// Why a model could not be fitted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    NoEvents,
    /// The information matrix is singular: a term is constant, or collinear with others.
    Singular,
    /// Newton–Raphson did not converge (a term separates events from non-events).
    NotConverged,
}

struct Sums {
    log_likelihood: f64,
    gradient: Vec<f64>,
    information: Vec<Vec<f64>>,
}

/// The rows by time, latest first, each row's covariates side by side in one vector: the
/// sums read them in this order many times, so they are laid out in it once.
struct Sorted {
    times: Vec<i64>,
    events: Vec<bool>,
    x: Vec<f64>,
}

/// The log partial likelihood (Efron) at `beta`, its gradient and the observed information.
fn sums(rows: &Sorted, beta: &[f64]) -> Sums {
    let p = beta.len();
    let mut out = Sums {
        log_likelihood: 0.0,
        gradient: vec![0.0; p],
        information: vec![vec![0.0; p]; p],
    };
    // Running sums over the risk set (time at least the current one).
    let mut s0 = 0.0;
    let mut s1 = vec![0.0; p];
    let mut s2 = vec![vec![0.0; p]; p];
    let n = rows.times.len();
    let mut k = 0;
    while k < n {
        let t = rows.times[k];
        let mut end = k;
        while end < n && rows.times[end] == t {
            end += 1;
        }
        // Everyone leaving at t joins the risk set first.
        let mut d0 = 0.0;
        let mut d1 = vec![0.0; p];
        let mut d2 = vec![vec![0.0; p]; p];
        let mut deaths = 0usize;
        for i in k..end {
            let x = &rows.x[i * p..(i + 1) * p];
            let eta: f64 = (0..p).map(|j| beta[j] * x[j]).sum();
            let w = eta.exp();
            s0 += w;
            for a in 0..p {
                s1[a] += w * x[a];
                for b in 0..p {
                    s2[a][b] += w * x[a] * x[b];
                }
            }
            if rows.events[i] {
                deaths += 1;
                out.log_likelihood += eta;
                d0 += w;
                for a in 0..p {
                    out.gradient[a] += x[a];
                    d1[a] += w * x[a];
                    for b in 0..p {
                        d2[a][b] += w * x[a] * x[b];
                    }
                }
            }
        }
        for l in 0..deaths {
            let f = l as f64 / deaths as f64;
            let a0 = s0 - f * d0;
            out.log_likelihood -= a0.ln();
            for a in 0..p {
                let a1a = s1[a] - f * d1[a];
                out.gradient[a] -= a1a / a0;
                for b in 0..p {
                    let a1b = s1[b] - f * d1[b];
                    let a2 = s2[a][b] - f * d2[a][b];
                    out.information[a][b] += a2 / a0 - a1a * a1b / (a0 * a0);
                }
            }
        }
        k = end;
    }
    out
}

/// The inverse of a symmetric positive-definite matrix (Gauss–Jordan with pivoting); `None`
/// when it is singular.
fn inverse(m: &[Vec<f64>]) -> Option<Vec<Vec<f64>>> {
    let n = m.len();
    let mut a: Vec<Vec<f64>> = m
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let mut r = row.clone();
            r.extend((0..n).map(|j| if i == j { 1.0 } else { 0.0 }));
            r
        })
        .collect();
    let scale = m
        .iter()
        .flatten()
        .fold(0.0f64, |s, v| s.max(v.abs()))
        .max(1.0);
    for col in 0..n {
        let pivot = (col..n).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[pivot][col].abs() <= 1e-10 * scale {
            return None;
        }
        a.swap(col, pivot);
        let div = a[col][col];
        for v in a[col].iter_mut() {
            *v /= div;
        }
        for row in 0..n {
            if row != col {
                let f = a[row][col];
                if f != 0.0 {
                    for c in 0..2 * n {
                        a[row][c] -= f * a[col][c];
                    }
                }
            }
        }
    }
    Some(a.into_iter().map(|r| r[n..].to_vec()).collect())
}

/// Fits the model to rows of `(time, event, covariates)`.
pub fn fit(times: &[i64], events: &[bool], x: &[Vec<f64>]) -> Result<Fit, Failure> {
    if !events.iter().any(|&e| e) {
        return Err(Failure::NoEvents);
    }
    let p = x.first().map_or(0, Vec::len);
    let mut order: Vec<usize> = (0..times.len()).collect();
    order.sort_by(|&a, &b| times[b].cmp(&times[a]).then(a.cmp(&b)));
    let rows = Sorted {
        times: order.iter().map(|&i| times[i]).collect(),
        events: order.iter().map(|&i| events[i]).collect(),
        x: order.iter().flat_map(|&i| x[i].iter().copied()).collect(),
    };
    drop(order);
    let mut beta = vec![0.0; p];
    let mut current = sums(&rows, &beta);
    for iteration in 1..=50 {
        let inv = inverse(&current.information).ok_or(Failure::Singular)?;
        let step: Vec<f64> = (0..p)
            .map(|a| (0..p).map(|b| inv[a][b] * current.gradient[b]).sum())
            .collect();
        let mut factor = 1.0;
        let (next_beta, next) = loop {
            let candidate: Vec<f64> = (0..p).map(|a| beta[a] + factor * step[a]).collect();
            let s = sums(&rows, &candidate);
            if s.log_likelihood.is_finite() && s.log_likelihood >= current.log_likelihood - 1e-12 {
                break (candidate, s);
            }
            factor /= 2.0;
            if factor < 1e-8 {
                return Err(Failure::NotConverged);
            }
        };
        let change = (next.log_likelihood - current.log_likelihood).abs();
        beta = next_beta;
        current = next;
        if change < 1e-10 {
            return finish(beta, current, iteration);
        }
    }
    Err(Failure::NotConverged)
}

fn finish(beta: Vec<f64>, at: Sums, iterations: usize) -> Result<Fit, Failure> {
    if beta.iter().any(|b| b.abs() > 30.0) {
        return Err(Failure::NotConverged);
    }
    let inv = inverse(&at.information).ok_or(Failure::Singular)?;
    let normal = Normal::new(0.0, 1.0).expect("the standard normal");
    let z = normal.inverse_cdf(0.975);
    let terms = beta
        .iter()
        .enumerate()
        .map(|(j, &b)| {
            let se = inv[j][j].sqrt();
            Term {
                coefficient: b,
                std_err: se,
                hazard_ratio: b.exp(),
                lower: (b - z * se).exp(),
                upper: (b + z * se).exp(),
                p: 2.0 * (1.0 - normal.cdf((b / se).abs())),
            }
        })
        .collect();
    Ok(Fit {
        terms,
        log_likelihood: at.log_likelihood,
        iterations,
    })
}
