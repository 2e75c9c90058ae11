//! Results at the site: the intervals agree with an independent implementation (SciPy, values in
//! tests/data/intervals.json), and the endpoint table of a run agrees with the dataset it comes
//! from, at the site and as released.

mod common;

use cohortql::results::stats::{poisson_exact, wilson};
use common::all_text;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * b.abs().max(1.0)
}

#[test]
fn intervals_agree_with_scipy() {
    let fixture: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/data/intervals.json")).unwrap(),
    )
    .unwrap();
    for case in fixture["poisson"].as_array().unwrap() {
        let k = case[0].as_u64().unwrap();
        let (lo, hi) = poisson_exact(k);
        assert!(close(lo, case[1].as_f64().unwrap()), "k {k}: {lo}");
        assert!(close(hi, case[2].as_f64().unwrap()), "k {k}: {hi}");
    }
    for case in fixture["wilson"].as_array().unwrap() {
        let (k, n) = (case[0].as_u64().unwrap(), case[1].as_u64().unwrap());
        let (lo, hi) = wilson(k, n).unwrap();
        assert!(close(lo, case[2].as_f64().unwrap()), "{k}/{n}: {lo}");
        assert!(close(hi, case[3].as_f64().unwrap()), "{k}/{n}: {hi}");
    }
}

fn csv_rows(path: &Path) -> Vec<HashMap<String, String>> {
    let mut reader = csv::Reader::from_path(path).unwrap();
    let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    reader
        .records()
        .map(|r| {
            header
                .iter()
                .cloned()
                .zip(r.unwrap().iter().map(String::from))
                .collect()
        })
        .collect()
}

/// The GI bleed study on Eunomia: per arm, the events and person-time of the endpoint table are
/// the dataset's (summed here from `site/dataset.csv`: events, and `gi_bleed_days + 1` per
/// entry), the rate is events per 1,000 person-years of 365.25 days, the ratio compares each
/// arm with the first; the release holds the same numbers, since none is small, and passes
/// `release check`.
#[test]
fn endpoint_results_are_the_datasets() {
    let dir = tempfile::tempdir().unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_cohortql"))
        .env("COHORTQL_SITE", common::site_file())
        .args([
            "run",
            "studies/eunomia/gi_bleed_new_users.study",
            "--repo",
            "tests/data/eunomia-gibleed",
            "--out",
        ])
        .arg(dir.path().join("out"))
        .current_dir(root())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", all_text(&o));
    let dataset = csv_rows(&dir.path().join("out/site/dataset.csv"));
    let site = csv_rows(&dir.path().join("out/site/endpoints.csv"));
    let release = csv_rows(&dir.path().join("out/release/endpoints.csv"));
    assert_eq!(site.len(), 3);
    let mut rates = HashMap::new();
    for row in &site {
        let group = row["group"].as_str();
        let members: Vec<&HashMap<String, String>> = dataset
            .iter()
            .filter(|d| group == "all" || d["arm"] == group)
            .collect();
        let events: u64 = members
            .iter()
            .map(|d| d["gi_bleed"].parse::<u64>().unwrap())
            .sum();
        let days: f64 = members
            .iter()
            .map(|d| d["gi_bleed_days"].parse::<f64>().unwrap() + 1.0)
            .sum();
        assert_eq!(row["events"].parse::<u64>().unwrap(), events, "{group}");
        let years = days / 365.25;
        assert!(
            close(row["person_years"].parse().unwrap(), years),
            "{group}"
        );
        let rate: f64 = row["rate_per_1000_py"].parse().unwrap();
        assert!(close(rate, events as f64 / years * 1000.0), "{group}");
        let (lo, hi) = poisson_exact(events);
        assert!(close(
            row["rate_lower"].parse().unwrap(),
            lo / years * 1000.0
        ));
        assert!(close(
            row["rate_upper"].parse().unwrap(),
            hi / years * 1000.0
        ));
        rates.insert(group.to_string(), (events as f64, years));
    }
    // Diclofenac against celecoxib, the first arm: the rate ratio, its log-scale interval.
    let (a, ta) = rates["diclofenac"];
    let (b, tb) = rates["celecoxib"];
    let ratio = (a / ta) / (b / tb);
    let se = (1.0 / a + 1.0 / b).sqrt();
    let diclofenac = site.iter().find(|r| r["group"] == "diclofenac").unwrap();
    assert!(close(diclofenac["ratio"].parse().unwrap(), ratio));
    assert!(close(
        diclofenac["ratio_lower"].parse().unwrap(),
        (ratio.ln() - 1.959963984540054 * se).exp()
    ));
    assert!(close(
        diclofenac["ratio_upper"].parse().unwrap(),
        (ratio.ln() + 1.959963984540054 * se).exp()
    ));
    assert_eq!(site, release);
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_cohortql"))
        .env("COHORTQL_SITE", common::site_file())
        .args(["release", "check"])
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(0), "{}", all_text(&check));
}
