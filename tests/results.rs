//! Results at the site: the intervals agree with an independent implementation (SciPy, values in
//! tests/data/intervals.json), survival and Cox models with lifelines, the endpoint table of a
//! run agrees with the dataset it comes from, at the site and as released, and the per-arm
//! counts with the reference evaluator on the spec repositories and random studies.

mod common;

use cohortql::disclosure::Export;
use cohortql::reference::data::Data;
use cohortql::reference::rows::{load_rows, write_rows};
use cohortql::reference::{evaluate_study, Outcome};
use cohortql::repo::write::OutputFormat;
use cohortql::repo::Repository;
use cohortql::results::stats::{poisson_exact, wilson};
use cohortql::site::Site;
use cohortql::study::{EndpointKind, Study};
use cohortql::synth::{generate, SynthOptions};
use common::random::{random_data, random_study};
use common::{all_text, csv_rows, study_files};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
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
    // Numbers at risk every 90 days (the longest follow-up is over a year): the entries with
    // more days at risk than the day, exact at the site and rounded to 5 as released.
    let at_site = csv_rows(&dir.path().join("out/site/at_risk.csv"));
    let released = csv_rows(&dir.path().join("out/release/at_risk.csv"));
    assert_eq!(at_site.len(), released.len());
    assert!(at_site.iter().any(|r| r["day"] == "90"));
    for (s, r) in at_site.iter().zip(&released) {
        let day: i64 = s["day"].parse().unwrap();
        let expected = dataset
            .iter()
            .filter(|d| s["group"] == "all" || d["arm"] == s["group"])
            .filter(|d| d["gi_bleed_days"].parse::<i64>().unwrap() + 1 > day)
            .count() as u64;
        assert_eq!(s["at_risk"].parse::<u64>().unwrap(), expected, "{s:?}");
        if expected >= 5 {
            assert_eq!(
                r["at_risk"].parse::<u64>().unwrap(),
                (expected + 2) / 5 * 5,
                "{r:?}"
            );
        } else {
            assert_eq!(r["at_risk"], "", "{r:?}");
        }
    }
    // The hazard ratio of diclofenac against celecoxib is the Cox model of the dataset's arms.
    let (mut times, mut events, mut x) = (Vec::new(), Vec::new(), Vec::new());
    for d in &dataset {
        times.push(d["gi_bleed_days"].parse::<i64>().unwrap() + 1);
        events.push(d["gi_bleed"] == "1");
        x.push(vec![if d["arm"] == "diclofenac" { 1.0 } else { 0.0 }]);
    }
    let fitted = cohortql::results::cox::fit(&times, &events, &x).unwrap();
    let cox = csv_rows(&dir.path().join("out/release/cox.csv"));
    assert_eq!(cox.len(), 1);
    assert_eq!(cox[0]["term"], "diclofenac vs celecoxib");
    assert!(close(
        cox[0]["hazard_ratio"].parse().unwrap(),
        fitted.terms[0].hazard_ratio
    ));
    assert!(close(cox[0]["p"].parse().unwrap(), fitted.terms[0].p));
    let shown = std::process::Command::new(env!("CARGO_BIN_EXE_cohortql"))
        .args(["results"])
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(text.contains("240.6 (216.2–266.9)"), "{text}");
    assert!(
        text.contains("Cox hazard ratio, diclofenac vs celecoxib (unadjusted): 0.74 (0.61–0.91)"),
        "{text}"
    );
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_cohortql"))
        .env("COHORTQL_SITE", common::site_file())
        .args(["release", "check"])
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(0), "{}", all_text(&check));
}

/// Kaplan–Meier with Greenwood's variance and log(−log) intervals, and the log-rank test,
/// agree with lifelines on the aml data (tests/data/aml_survival.json).
#[test]
fn survival_agrees_with_lifelines() {
    use cohortql::results::survival::{kaplan_meier, log_rank};
    let fixture: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/data/aml_survival.json")).unwrap(),
    )
    .unwrap();
    let mut groups = Vec::new();
    for group in ["Maintained", "Nonmaintained"] {
        let data = &fixture["data"][group];
        let observations: Vec<(i64, bool)> = data["time"]
            .as_array()
            .unwrap()
            .iter()
            .zip(data["status"].as_array().unwrap())
            .map(|(t, s)| (t.as_i64().unwrap(), s.as_i64().unwrap() == 1))
            .collect();
        let steps = kaplan_meier(&observations);
        let expected = fixture["km"][group].as_array().unwrap();
        assert_eq!(steps.len(), expected.len(), "{group}");
        for (s, e) in steps.iter().zip(expected) {
            assert_eq!(s.time, e["time"].as_i64().unwrap());
            assert_eq!(s.at_risk, e["at_risk"].as_u64().unwrap());
            assert_eq!(s.events, e["events"].as_u64().unwrap());
            assert_eq!(s.censored, e["censored"].as_u64().unwrap());
            assert!(
                close(s.survival, e["survival"].as_f64().unwrap()),
                "{group} {s:?}"
            );
            assert!(
                close(s.lower, e["lower"].as_f64().unwrap()),
                "{group} {s:?}"
            );
            assert!(
                close(s.upper, e["upper"].as_f64().unwrap()),
                "{group} {s:?}"
            );
        }
        groups.push(observations);
    }
    let (chisq, df, p) = log_rank(&groups).unwrap();
    assert!(
        close(chisq, fixture["logrank"]["chisq"].as_f64().unwrap()),
        "{chisq}"
    );
    assert_eq!(df, 1);
    assert!(close(p, fixture["logrank"]["p"].as_f64().unwrap()), "{p}");
}

/// The curve that may leave a site: every count a multiple of the rounding, never fewer at
/// risk than the threshold, each step's number at risk its predecessor's less those who left,
/// and the estimates those of the rounded counts; a group smaller than the threshold gives none.
#[test]
fn the_released_curve_is_made_of_rounded_counts() {
    use cohortql::results::survival::{coarsened, curve, kaplan_meier};
    let observations: Vec<(i64, bool)> = (0..437)
        .map(|i| (1 + (i * 7919 % 365), i % 3 == 0))
        .collect();
    let exact = kaplan_meier(&observations);
    for (base, threshold) in [(5, 5), (5, 8), (10, 10)] {
        let released = coarsened(&exact, base, threshold);
        assert!(!released.is_empty());
        for w in released.windows(2) {
            assert_eq!(w[1].at_risk, w[0].at_risk - w[0].events - w[0].censored);
            assert!(w[1].time > w[0].time);
        }
        for s in &released {
            for c in [s.at_risk, s.events, s.censored] {
                assert_eq!(c % base, 0, "{s:?}");
            }
            assert!(s.at_risk >= threshold);
        }
        let tallies: Vec<(i64, u64, u64)> = released
            .iter()
            .map(|s| (s.time, s.events, s.censored))
            .collect();
        let again = curve(released[0].at_risk, &tallies);
        assert_eq!(&again[..released.len()], &released[..]);
        // The estimate stays within what moving `base` persons would change: rounding
        // shifts the cumulative counts by at most half the base each.
        for s in released.iter().filter(|s| s.at_risk >= 100) {
            let at = exact.iter().rfind(|e| e.time <= s.time).unwrap();
            let bound = 1.5 * base as f64 / s.at_risk as f64;
            assert!((s.survival - at.survival).abs() <= bound, "{s:?} {at:?}");
        }
    }
    assert!(coarsened(&kaplan_meier(&observations[..4]), 5, 5).is_empty());
}

/// The Cox model (Efron ties) agrees with lifelines on the Rossi recidivism data
/// (tests/data/rossi_cox.json): with one term and with all seven.
#[test]
fn cox_agrees_with_lifelines() {
    use cohortql::results::cox::fit;
    let fixture: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/data/rossi_cox.json")).unwrap(),
    )
    .unwrap();
    let names: Vec<&str> = fixture["covariates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let times: Vec<i64> = fixture["week"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    let events: Vec<bool> = fixture["arrest"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap() == 1)
        .collect();
    let all: Vec<Vec<f64>> = fixture["x"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect()
        })
        .collect();
    for model in fixture["models"].as_array().unwrap() {
        let terms: Vec<usize> = model["terms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                names
                    .iter()
                    .position(|n| *n == t.as_str().unwrap())
                    .unwrap()
            })
            .collect();
        let x: Vec<Vec<f64>> = all
            .iter()
            .map(|r| terms.iter().map(|&j| r[j]).collect())
            .collect();
        let fitted = fit(&times, &events, &x).unwrap();
        assert!(
            close(
                fitted.log_likelihood,
                model["log_likelihood"].as_f64().unwrap()
            ),
            "{}",
            fitted.log_likelihood
        );
        for (j, term) in fitted.terms.iter().enumerate() {
            let expect = |key: &str| model[key][j].as_f64().unwrap();
            assert!(close(term.coefficient, expect("coef")), "{term:?}");
            assert!(close(term.std_err, expect("se")), "{term:?}");
            assert!(close(term.p, expect("p")), "{term:?}");
            assert!(close(term.lower, expect("lower")), "{term:?}");
            assert!(close(term.upper, expect("upper")), "{term:?}");
        }
    }
}

/// Table 1 of the NSAID study on the demo repository is its dataset summarised: means, SDs,
/// medians and quartiles of numbers, counts and percentages of categories, and standardised
/// mean differences, recomputed here from `site/dataset.csv`; in the release, the levels of a
/// covariate and its missing values add up to the arm's entries wherever all are given.
#[test]
fn table1_is_the_dataset_summarised() {
    let dir = tempfile::tempdir().unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_cohortql"))
        .env("COHORTQL_SITE", common::site_file())
        .args(["run", "studies/nsaid_gi_bleed.study", "--out"])
        .arg(dir.path().join("out"))
        .current_dir(root())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", all_text(&o));
    let printed = String::from_utf8_lossy(&o.stdout);
    assert!(printed.contains("age, mean (SD)"), "{printed}");
    let dataset = csv_rows(&dir.path().join("out/site/dataset.csv"));
    let table = csv_rows(&dir.path().join("out/site/table1.csv"));
    let row = |covariate: &str, level: &str, group: &str| {
        table
            .iter()
            .find(|r| r["covariate"] == covariate && r["level"] == level && r["group"] == group)
            .unwrap_or_else(|| panic!("no {covariate} {level} {group}"))
    };
    let summary = |group: &str| {
        let mut ages: Vec<f64> = dataset
            .iter()
            .filter(|d| group == "all" || d["arm"] == group)
            .map(|d| d["age"].parse().unwrap())
            .collect();
        ages.sort_by(f64::total_cmp);
        let n = ages.len() as f64;
        let mean = ages.iter().sum::<f64>() / n;
        let sd = (ages.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
        let median = if ages.len() % 2 == 1 {
            ages[ages.len() / 2]
        } else {
            (ages[ages.len() / 2 - 1] + ages[ages.len() / 2]) / 2.0
        };
        (n, mean, sd, median)
    };
    for group in ["celecoxib", "diclofenac", "all"] {
        let (n, mean, sd, median) = summary(group);
        let r = row("age", "", group);
        assert_eq!(r["n"].parse::<f64>().unwrap(), n);
        assert!(close(r["mean"].parse().unwrap(), mean), "{group}");
        assert!(close(r["sd"].parse().unwrap(), sd), "{group}");
        assert!(close(r["median"].parse().unwrap(), median), "{group}");
        let females = dataset
            .iter()
            .filter(|d| (group == "all" || d["arm"] == group) && d["sex"] == "8532")
            .count() as f64;
        let f = row("sex", "female", group);
        assert_eq!(f["n"].parse::<f64>().unwrap(), females);
        assert!(close(f["percent"].parse().unwrap(), 100.0 * females / n));
    }
    // Sex and ten-year age bands come first in every Table 1, whatever the study declares; the
    // columns the run adds for them are in no dataset.
    let header = std::fs::read_to_string(dir.path().join("out/site/dataset.csv")).unwrap();
    assert!(
        !header.lines().next().unwrap().contains("cohortql_"),
        "{header}"
    );
    assert_eq!(table[0]["covariate"], "[sex]");
    for group in ["celecoxib", "all"] {
        let banded: u64 = table
            .iter()
            .filter(|r| r["covariate"] == "[age band]" && r["group"] == group)
            .map(|r| r["n"].parse::<u64>().unwrap())
            .sum();
        let entries = dataset
            .iter()
            .filter(|d| group == "all" || d["arm"] == group)
            .count();
        assert_eq!(banded as usize, entries, "{group}");
        let sixties = dataset
            .iter()
            .filter(|d| group == "all" || d["arm"] == group)
            .filter(|d| (60..70).contains(&d["age"].parse::<i64>().unwrap()))
            .count();
        assert_eq!(row("[age band]", "60–69", group)["n"], sixties.to_string());
    }
    let (_, m0, s0, _) = summary("celecoxib");
    let (_, m1, s1, _) = summary("diclofenac");
    let smd = (m1 - m0) / ((s1 * s1 + s0 * s0) / 2.0).sqrt();
    assert!(close(
        row("age", "", "diclofenac")["smd"].parse().unwrap(),
        smd
    ));
    // The released Table 1 adds up where it is given.
    let released = csv_rows(&dir.path().join("out/release/table1.csv"));
    let by_arm = csv_rows(&dir.path().join("out/release/attrition_by_arm.csv"));
    let last = by_arm
        .iter()
        .map(|r| r["step"].parse::<u64>().unwrap())
        .max()
        .unwrap();
    for arm in ["celecoxib", "diclofenac"] {
        let Some(entries) = by_arm
            .iter()
            .find(|r| r["step"].parse::<u64>().unwrap() == last && r["arm"] == arm)
            .and_then(|r| r["entries"].parse::<u64>().ok())
        else {
            continue;
        };
        let sex: Vec<Option<u64>> = released
            .iter()
            .filter(|r| r["covariate"] == "sex" && r["group"] == arm)
            .map(|r| r["n"].parse().ok())
            .collect();
        if sex.iter().all(Option::is_some) {
            assert_eq!(sex.iter().flatten().sum::<u64>(), entries, "{arm}");
        }
    }
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_cohortql"))
        .env("COHORTQL_SITE", common::site_file())
        .args(["release", "check"])
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(0), "{}", all_text(&check));
}

/// Covariates marked `as confounder` are adjusted for: the adjusted model of the GI bleed study
/// on Eunomia is the Cox model of the dataset's arm, age and sex, fitted here from
/// `site/dataset.csv`.
#[test]
fn the_adjusted_model_adjusts_for_the_confounders() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(root().join("studies/eunomia/gi_bleed_new_users.study"))
        .unwrap()
        .replace(
            "age      = age at index\n",
            "age      = age at index as confounder\n",
        )
        .replace(
            "male     = sex is male\n",
            "male     = sex is male as confounder\n",
        );
    assert_eq!(text.matches("as confounder").count(), 2);
    let study = dir.path().join("adjusted.study");
    std::fs::write(&study, text).unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_cohortql"))
        .env("COHORTQL_SITE", common::site_file())
        .arg("run")
        .arg(&study)
        .args(["--repo", "tests/data/eunomia-gibleed", "--out"])
        .arg(dir.path().join("out"))
        .current_dir(root())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", all_text(&o));
    let dataset = csv_rows(&dir.path().join("out/site/dataset.csv"));
    let (mut times, mut events, mut x) = (Vec::new(), Vec::new(), Vec::new());
    for d in &dataset {
        times.push(d["gi_bleed_days"].parse::<i64>().unwrap() + 1);
        events.push(d["gi_bleed"] == "1");
        x.push(vec![
            if d["arm"] == "diclofenac" { 1.0 } else { 0.0 },
            d["age"].parse().unwrap(),
            d["male"].parse().unwrap(),
        ]);
    }
    let fitted = cohortql::results::cox::fit(&times, &events, &x).unwrap();
    let cox = csv_rows(&dir.path().join("out/release/cox.csv"));
    let adjusted: Vec<&HashMap<String, String>> =
        cox.iter().filter(|r| r["model"] == "adjusted").collect();
    let terms: Vec<&str> = adjusted.iter().map(|r| r["term"].as_str()).collect();
    assert_eq!(terms, ["diclofenac vs celecoxib", "age", "male"]);
    for (r, t) in adjusted.iter().zip(&fitted.terms) {
        assert!(
            close(r["hazard_ratio"].parse().unwrap(), t.hazard_ratio),
            "{r:?}"
        );
        assert!(close(r["p"].parse().unwrap(), t.p), "{r:?}");
    }
    assert_eq!(cox.iter().filter(|r| r["model"] == "unadjusted").count(), 1);
    // The model's size: exact at the site, rounded to 5 as released.
    let at_site = csv_rows(&dir.path().join("out/site/cox.csv"));
    let events = events.iter().filter(|&&e| e).count();
    for r in at_site.iter().filter(|r| r["model"] == "adjusted") {
        assert_eq!(r["events"], events.to_string());
        assert_eq!(r["residual_df"], (dataset.len() - 3).to_string());
    }
    for r in &adjusted {
        assert_eq!(r["events"].parse::<usize>().unwrap(), (events + 2) / 5 * 5);
        assert_eq!(
            r["residual_df"].parse::<usize>().unwrap(),
            (dataset.len() - 3 + 2) / 5 * 5
        );
    }
}

/// Runs a study as `run --out` does, on `data` written as a repository, and gives the output
/// directory (`site/` holds the exact results).
fn run_at_site(study: &Study, text: &str, data: &Data) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir(&repo).unwrap();
    write_rows(data, &repo, OutputFormat::Parquet).unwrap();
    run_on(study, text, &repo, dir)
}

/// Runs a study as `run --out` does on the repository `repo`, into `dir/out`.
fn run_on(study: &Study, text: &str, repo: &Path, dir: tempfile::TempDir) -> tempfile::TempDir {
    use cohortql::run::workspace::{Disclosure, Workspace};
    let site = Site::create(&dir.path().join("cohortql.toml"), "ohdsi", Export::Never).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime
        .block_on(async {
            let workspace = Workspace::open(Repository::open(repo).unwrap()).await?;
            let disclosure = Disclosure {
                policy: &site.policy,
                source: "the test's site",
                site: &site,
                export: None,
            };
            workspace
                .run_to(
                    study,
                    Path::new("study.study"),
                    text,
                    std::time::Duration::ZERO,
                    None,
                    &disclosure,
                    &dir.path().join("out"),
                    &|_| {},
                    &|_| {},
                )
                .await
        })
        .unwrap_or_else(|e| panic!("the study does not run: {e}"));
    dir
}

/// Checks a run's exact per-arm results against a tally of the reference evaluator's rows:
/// entries per group in Table 1, persons per arm after follow-up, and per endpoint and group
/// the persons with an event, the events and the days at risk (`days + 1` per entry), the
/// Kaplan–Meier curve's events and censorings, and the numbers at risk. Gives how many
/// (endpoint, group) results held any entry.
fn check_site_results(what: &str, study: &Study, data: &Data, out: &Path) -> usize {
    let evaluation = evaluate_study(study, data);
    let site = out.join("out/site");
    let groups: Vec<String> = cohortql::results::groups(study);
    let rows_of = |group: &str| -> Vec<&cohortql::reference::DatasetRow> {
        evaluation
            .rows
            .iter()
            .filter(|r| group == "all" || r.entry.arm.as_deref() == Some(group))
            .collect()
    };
    let table1 = csv_rows(&site.join("table1.csv"));
    for group in &groups {
        let n: usize = table1
            .iter()
            .filter(|r| r["covariate"] == "[sex]" && &r["group"] == group)
            .map(|r| r["n"].parse::<usize>().unwrap())
            .sum();
        assert_eq!(
            n,
            rows_of(group).len(),
            "{what}: Table 1's entries in {group}"
        );
    }
    for arm in &study.arms {
        let persons: std::collections::BTreeSet<i64> =
            rows_of(&arm.name).iter().map(|r| r.entry.person).collect();
        let last = csv_rows(&site.join("attrition_by_arm.csv"))
            .into_iter()
            .rfind(|r| r["arm"] == arm.name)
            .unwrap();
        assert_eq!(last["rule"], "follow-up of at least one day");
        assert_eq!(
            last["persons"].parse::<usize>().unwrap(),
            persons.len(),
            "{what}: persons followed up in {}",
            arm.name
        );
    }
    let endpoints = csv_rows(&site.join("endpoints.csv"));
    let km = csv_rows(&site.join("km.csv"));
    let at_risk = csv_rows(&site.join("at_risk.csv"));
    let mut nonempty = 0;
    for (e, endpoint) in study.endpoints.iter().enumerate() {
        for group in &groups {
            let rows = rows_of(group);
            nonempty += usize::from(!rows.is_empty());
            let outcomes: Vec<&Outcome> = rows.iter().map(|r| &r.endpoints[e]).collect();
            let events = outcomes.iter().filter(|o| o.event == 1).count();
            let persons: std::collections::BTreeSet<i64> = rows
                .iter()
                .filter(|r| r.endpoints[e].event == 1)
                .map(|r| r.entry.person)
                .collect();
            let got = endpoints
                .iter()
                .find(|r| r["endpoint"] == endpoint.name && &r["group"] == group)
                .unwrap_or_else(|| panic!("{what}: no row for {} in {group}", endpoint.name));
            let place = format!("{what}: {} in {group}", endpoint.name);
            assert_eq!(
                got["persons"].parse::<usize>().unwrap(),
                persons.len(),
                "{place}"
            );
            assert_eq!(got["events"].parse::<usize>().unwrap(), events, "{place}");
            if endpoint.kind != EndpointKind::TimeToEvent {
                assert_eq!(got["person_years"], "", "{place}");
                continue;
            }
            let days: i64 = outcomes.iter().map(|o| o.days.unwrap() + 1).sum();
            let person_years: f64 = got["person_years"].parse().unwrap();
            assert!(
                close(person_years * 365.25, days as f64),
                "{place}: {person_years} person-years for {days} days"
            );
            // The curve: every entry is an event or censored, at its time; on day `d` of the
            // numbers at risk, those with `days >= d` are.
            let curve: Vec<&HashMap<String, String>> = km
                .iter()
                .filter(|r| r["endpoint"] == endpoint.name && &r["group"] == group)
                .collect();
            for step in &curve {
                // Time is days at risk, the day of leaving included: `days + 1`.
                let t: i64 = step["time"].parse().unwrap();
                let at = |o: &&&Outcome| o.days == Some(t - 1);
                let count = |column: &str| step[column].parse::<usize>().unwrap();
                assert_eq!(
                    count("events"),
                    outcomes.iter().filter(at).filter(|o| o.event == 1).count(),
                    "{place}: events at time {t}"
                );
                assert_eq!(
                    count("censored"),
                    outcomes.iter().filter(at).filter(|o| o.event == 0).count(),
                    "{place}: censored at time {t}"
                );
                assert_eq!(
                    count("at_risk"),
                    outcomes.iter().filter(|o| o.days >= Some(t - 1)).count(),
                    "{place}: at risk at time {t}"
                );
            }
            let stepped: usize = curve
                .iter()
                .map(|s| {
                    s["events"].parse::<usize>().unwrap() + s["censored"].parse::<usize>().unwrap()
                })
                .sum();
            assert_eq!(stepped, rows.len(), "{place}: entries on the curve");
            for row in at_risk
                .iter()
                .filter(|r| r["endpoint"] == endpoint.name && &r["group"] == group)
            {
                let day: i64 = row["day"].parse().unwrap();
                assert_eq!(
                    row["at_risk"].parse::<usize>().unwrap(),
                    outcomes.iter().filter(|o| o.days >= Some(day)).count(),
                    "{place}: at risk at day {day}"
                );
            }
        }
    }
    nonempty
}

/// The per-arm counts of the results (Table 1's entries, persons followed up, events, persons
/// with an event, person-time, the Kaplan–Meier steps and the numbers at risk), as a run writes
/// them at the site, equal a tally of the reference evaluator's rows on every spec repository,
/// for every study in studies/ over a synthetic repository, and on random studies over random
/// repositories.
#[test]
fn site_results_agree_with_the_reference_evaluator() {
    common::with_big_stack(|| {
        let mut nonempty = 0;
        for (name, spec) in common::spec::specs() {
            let study = common::checked(&name, &spec.study);
            let data = common::spec::data(&spec);
            let out = run_at_site(&study, &spec.study, &data);
            nonempty += check_site_results(&name, &study, &data, out.path());
        }
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        let options = SynthOptions {
            persons: 1_500,
            seed: 11,
            format: OutputFormat::Parquet,
            full_vocabulary: 0,
        };
        generate(&options, &repo, &|_| {}).unwrap();
        let data = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let ctx = Repository::open(&repo).unwrap().session().await.unwrap();
                load_rows(&ctx).await.unwrap()
            });
        for path in study_files() {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&path).unwrap();
            let study = common::checked(&name, &text);
            let out = run_on(&study, &text, &repo, tempfile::tempdir().unwrap());
            nonempty += check_site_results(&name, &study, &data, out.path());
        }
        let base = common::checked(
            "base",
            "study \"random\"\npopulation\n  index = first condition\n",
        );
        for seed in 0..20 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let data = random_data(&mut rng);
            let study = random_study(&mut rng, &base);
            let out = run_at_site(&study, "-- a random study\n", &data);
            nonempty += check_site_results(&format!("seed {seed}"), &study, &data, out.path());
        }
        assert!(nonempty >= 20, "too few results held anyone: {nonempty}");
    });
}
