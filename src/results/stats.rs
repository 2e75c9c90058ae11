//! Confidence intervals for counts: exact (Garwood) intervals for a Poisson rate, Wilson
//! intervals for a proportion, and the usual large-sample intervals for the ratio and difference
//! of two rates or two risks. All at 95%.

use statrs::distribution::{ChiSquared, ContinuousCDF, Normal};

/// The two-sided level of every interval.
pub const LEVEL: f64 = 0.95;

fn z() -> f64 {
    Normal::new(0.0, 1.0)
        .expect("the standard normal")
        .inverse_cdf(1.0 - (1.0 - LEVEL) / 2.0)
}

fn chi2_quantile(df: f64, p: f64) -> f64 {
    ChiSquared::new(df)
        .expect("positive degrees of freedom")
        .inverse_cdf(p)
}

/// The exact (Garwood) interval of a Poisson mean with `events` observed: from the chi-square
/// quantiles with 2k and 2k + 2 degrees of freedom (the lower bound is 0 when k is 0).
pub fn poisson_exact(events: u64) -> (f64, f64) {
    let alpha = 1.0 - LEVEL;
    let k = events as f64;
    let lower = if events == 0 {
        0.0
    } else {
        chi2_quantile(2.0 * k, alpha / 2.0) / 2.0
    };
    let upper = chi2_quantile(2.0 * k + 2.0, 1.0 - alpha / 2.0) / 2.0;
    (lower, upper)
}

/// The Wilson score interval of a proportion `events / n`; `None` when n is 0.
pub fn wilson(events: u64, n: u64) -> Option<(f64, f64)> {
    if n == 0 {
        return None;
    }
    let (k, n) = (events as f64, n as f64);
    let z = z();
    let p = k / n;
    let denominator = 1.0 + z * z / n;
    let centre = (p + z * z / (2.0 * n)) / denominator;
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / denominator;
    Some(((centre - half).max(0.0), (centre + half).min(1.0)))
}

/// A ratio of two rates or risks with its interval, from the log scale: `(estimate, lower,
/// upper)`.
pub type Estimate = (f64, f64, f64);

/// The ratio of rates `a / ta` over `b / tb`, its interval from the standard error of its
/// logarithm, sqrt(1/a + 1/b); `None` without events in both or without person-time.
pub fn rate_ratio(a: u64, ta: f64, b: u64, tb: f64) -> Option<Estimate> {
    if a == 0 || b == 0 || ta <= 0.0 || tb <= 0.0 {
        return None;
    }
    let ratio = (a as f64 / ta) / (b as f64 / tb);
    let se = (1.0 / a as f64 + 1.0 / b as f64).sqrt();
    Some(on_log_scale(ratio, se))
}

/// The difference of rates `a / ta − b / tb`, with the standard error sqrt(a/ta² + b/tb²).
pub fn rate_difference(a: u64, ta: f64, b: u64, tb: f64) -> Option<Estimate> {
    if ta <= 0.0 || tb <= 0.0 {
        return None;
    }
    let d = a as f64 / ta - b as f64 / tb;
    let se = (a as f64 / (ta * ta) + b as f64 / (tb * tb)).sqrt();
    Some((d, d - z() * se, d + z() * se))
}

/// The ratio of risks `a / na` over `b / nb`, with the standard error of its logarithm
/// sqrt(1/a − 1/na + 1/b − 1/nb).
pub fn risk_ratio(a: u64, na: u64, b: u64, nb: u64) -> Option<Estimate> {
    if a == 0 || b == 0 || na == 0 || nb == 0 {
        return None;
    }
    let ratio = (a as f64 / na as f64) / (b as f64 / nb as f64);
    let se = (1.0 / a as f64 - 1.0 / na as f64 + 1.0 / b as f64 - 1.0 / nb as f64).sqrt();
    Some(on_log_scale(ratio, se))
}

/// The difference of risks `a / na − b / nb`, with the Wald standard error.
pub fn risk_difference(a: u64, na: u64, b: u64, nb: u64) -> Option<Estimate> {
    if na == 0 || nb == 0 {
        return None;
    }
    let (p, q) = (a as f64 / na as f64, b as f64 / nb as f64);
    let se = (p * (1.0 - p) / na as f64 + q * (1.0 - q) / nb as f64).sqrt();
    Some((p - q, p - q - z() * se, p - q + z() * se))
}

fn on_log_scale(ratio: f64, se: f64) -> Estimate {
    let z = z();
    (
        ratio,
        (ratio.ln() - z * se).exp(),
        (ratio.ln() + z * se).exp(),
    )
}
