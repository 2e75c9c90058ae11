//! Disclosure control holds: what a run releases gives away no count of 1 to the threshold less
//! one, by itself, by difference or through the tables' margins; pseudonyms cannot be reversed
//! without the site's secret; a study cannot loosen the site's policy; `release check` finds
//! what someone edits into a release by hand. Each attack that worked before is run here
//! against the release as it is now.

mod common;

use cohortql::disclosure::control::{control, steps_of, CountRow, Table};
use cohortql::disclosure::Policy;
use common::random::{random_data, random_study};
use common::{all_text, checked, csv_rows, with_big_stack};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_cohortql");

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs the command line in `dir` under the site configuration `site`.
fn cohortql(args: &[&str], dir: &Path, site: &Path) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env("COHORTQL_SITE", site)
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

fn site_init(dir: &Path, policy: &str, export: &str) -> PathBuf {
    let site = dir.join(format!("site-{policy}-{export}.toml"));
    let o = cohortql(
        &[
            "site",
            "init",
            "--policy",
            policy,
            "--dataset-export",
            export,
        ],
        dir,
        &site,
    );
    assert_eq!(o.status.code(), Some(0), "{}", all_text(&o));
    site
}

fn eunomia() -> String {
    root()
        .join("tests/data/eunomia-gibleed")
        .to_string_lossy()
        .into_owned()
}

/// Every count in a release's attrition tables and run.json, as numbers (withheld ones left
/// out), each with the arm whose persons it counts (`None`: every arm).
fn released_numbers(release: &Path) -> Vec<(i64, Option<String>)> {
    let mut numbers = Vec::new();
    for file in [
        "attrition.csv",
        "attrition_by_arm.csv",
        "inclusion_rules.csv",
    ] {
        for row in csv_rows(&release.join(file)) {
            let arm = (file == "attrition_by_arm.csv").then(|| row["arm"].clone());
            for column in ["persons", "entries"] {
                if let Ok(n) = row[column].parse::<i64>() {
                    numbers.push((n, arm.clone()));
                }
            }
        }
    }
    let run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(release.join("run.json")).unwrap()).unwrap();
    let every_arm = |n: Option<i64>| n.map(|n| (n, None));
    numbers.extend(every_arm(run["persons"].as_i64()));
    for step in run["attrition"].as_array().unwrap() {
        numbers.extend(every_arm(step["persons"].as_i64()));
        numbers.extend(every_arm(step["entries"].as_i64()));
    }
    numbers
}

/// The attack of issue 12, first part: on the demo repository the NSAID study removes 4 persons
/// between `require age at index >= 18` (1,230) and the next step (1,226). Judged one by one,
/// both counts were published and their difference gave the 4 away. Now no two released
/// numbers that may count overlapping sets of persons (anything but two different arms, each
/// person having one entry) differ by 1 to 4.
#[test]
fn the_differencing_attack_on_attrition_steps_fails() {
    let dir = tempfile::tempdir().unwrap();
    let site = site_init(dir.path(), "ohdsi", "never");
    let study = root().join("studies/nsaid_gi_bleed.study");
    let o = cohortql(
        &["run", study.to_str().unwrap(), "--out", "out"],
        dir.path(),
        &site,
    );
    assert_eq!(o.status.code(), Some(0), "{}", all_text(&o));
    // The exact counts, at the site, hold the difference the attack used.
    let exact: Vec<i64> = csv_rows(&dir.path().join("out/site/attrition.csv"))
        .iter()
        .map(|r| r["persons"].parse().unwrap())
        .collect();
    assert!(
        exact.windows(2).any(|w| (1..5).contains(&(w[0] - w[1]))),
        "the demo no longer has a small step to attack: {exact:?}"
    );
    // Released one by one, as before, every one of them would have been published.
    let ohdsi = Policy::preset("ohdsi").unwrap();
    assert!(exact.iter().all(|&n| ohdsi.released(n as u64).is_some()));
    let numbers = released_numbers(&dir.path().join("out/release"));
    for (i, (a, arm_a)) in numbers.iter().enumerate() {
        assert!(!(1..5).contains(a), "a released count of {a}");
        for (b, arm_b) in &numbers[i + 1..] {
            let two_arms = matches!((arm_a, arm_b), (Some(x), Some(y)) if x != y);
            assert!(
                two_arms || !(1..5).contains(&(a - b).abs()),
                "released {a} and {b} differ by {}",
                (a - b).abs()
            );
        }
    }
    // The cohort's own count is kept: the step before it is withheld instead.
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("1226 persons"), "{out}");
    let o = cohortql(&["release", "check", "out"], dir.path(), &site);
    assert_eq!(o.status.code(), Some(0), "{}", all_text(&o));
    // The screen shows what the release holds, and no more.
    for line in out.lines().filter(|l| l.contains('│')) {
        assert!(!line.contains("1230"), "{line}");
    }
}

/// The attack of issue 12, second part: pseudonyms were sha256(study hash ":" person id), and
/// both are public or guessable, so enumerating ids reversed every one. Now they are keyed by
/// the site's secret: enumeration with the public inputs finds none; the site, with its
/// secret, maps every id; another secret or another study gives other pseudonyms.
#[test]
fn pseudonyms_cannot_be_reversed_without_the_sites_secret() {
    let dir = tempfile::tempdir().unwrap();
    let site = site_init(dir.path(), "ohdsi", "never");
    // Celecoxib new users, with the dataset's persons pseudonymised (the default).
    let study = dir.path().join("celecoxib.study");
    let text = std::fs::read_to_string(root().join("studies/eunomia/celecoxib.study")).unwrap();
    std::fs::write(
        &study,
        text.replace("person ids original", "person ids pseudonymised"),
    )
    .unwrap();
    let run = |out: &str, site: &Path| {
        let o = cohortql(
            &[
                "run",
                study.to_str().unwrap(),
                "--repo",
                &eunomia(),
                "--out",
                out,
            ],
            dir.path(),
            site,
        );
        assert_eq!(o.status.code(), Some(0), "{}", all_text(&o));
        csv_rows(&dir.path().join(out).join("site/dataset.csv"))
            .iter()
            .map(|r| r["person"].clone())
            .collect::<std::collections::BTreeSet<String>>()
    };
    let pseudonyms = run("a", &site);
    assert_eq!(pseudonyms.len(), 1800);
    let hash = serde_json::from_str::<serde_json::Value>(
        &std::fs::read_to_string(dir.path().join("a/release/run.json")).unwrap(),
    )
    .unwrap()["study_hash"]
        .as_str()
        .unwrap()
        .to_string();
    // The old scheme, enumerated over every id Eunomia could hold.
    let old = |id: i64| {
        let mut h = Sha256::new();
        h.update(hash.as_bytes());
        h.update(b":");
        h.update(id.to_string().as_bytes());
        h.finalize()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let found = (0..100_000)
        .filter(|&id| pseudonyms.contains(&old(id)))
        .count();
    assert_eq!(found, 0, "enumeration reversed {found} pseudonyms");
    // The site can map its own subjects.
    let keyed = cohortql::site::Site::load(&site).unwrap().unwrap();
    let subjects: std::collections::BTreeSet<String> =
        csv_rows(&dir.path().join("a/site/cohort.csv"))
            .iter()
            .map(|r| keyed.pseudonym(&hash, r["subject_id"].parse().unwrap()))
            .collect();
    assert_eq!(subjects, pseudonyms);
    // The same study and secret give the same pseudonyms; another secret gives others.
    assert_eq!(run("b", &site), pseudonyms);
    let other = site_init(dir.path(), "ohdsi", "relative-dates");
    let again = run("c", &other);
    assert!(again.is_disjoint(&pseudonyms));
    // The secret is the site's own: the file is readable by its owner only, and no output
    // holds it.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&site).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let secret = std::fs::read_to_string(&site)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("secret = \""))
        .unwrap()
        .trim_end_matches('"')
        .to_string();
    for place in ["a/site", "a/release"] {
        for f in std::fs::read_dir(dir.path().join(place)).unwrap() {
            let bytes = std::fs::read(f.unwrap().path()).unwrap();
            assert!(!String::from_utf8_lossy(&bytes).contains(&secret));
        }
    }
    // A configuration others can read is refused.
    std::fs::set_permissions(&site, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = cohortql(&["site", "show"], dir.path(), &site);
    assert_eq!(o.status.code(), Some(2), "{}", all_text(&o));
    assert!(all_text(&o).contains("chmod 600"), "{}", all_text(&o));
}

/// A study may tighten the site's policy and never loosen it; `--policy` likewise. The
/// diagnostic is the one docs/errors.md shows.
#[test]
fn a_study_cannot_loosen_the_sites_policy() {
    let dir = tempfile::tempdir().unwrap();
    let site = site_init(dir.path(), "opensafely", "never");
    std::fs::copy(&site, dir.path().join("cohortql.toml")).unwrap();
    std::fs::create_dir(dir.path().join("studies")).unwrap();
    let docs = std::fs::read_to_string(root().join("docs/errors.md")).unwrap();
    let section = docs.split("### E0507").nth(1).unwrap();
    let study = section
        .split("```study\n")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap();
    let expected = section
        .split("```text\n")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap();
    std::fs::write(dir.path().join("studies/small_cells.study"), study).unwrap();
    let o = Command::new(BIN)
        .args([
            "run",
            "studies/small_cells.study",
            "--repo",
            &eunomia(),
            "--site",
            "cohortql.toml",
        ])
        .current_dir(dir.path())
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", all_text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stderr).trim(), expected.trim());
    assert!(!dir.path().join("output").exists());
    // A minimum cell count below the site's threshold is refused too; above it, it tightens.
    let write = |text: &str| std::fs::write(dir.path().join("studies/small_cells.study"), text);
    let base = "study \"Small cells\"\npopulation\n  index = first drug in x\nconcepts\n  x = drug 1118084 + descendants\noutput\n";
    write(&format!("{base}  min cell count 6\n")).unwrap();
    let o = cohortql(
        &["run", "studies/small_cells.study", "--repo", &eunomia()],
        dir.path(),
        &site,
    );
    assert_eq!(o.status.code(), Some(1), "{}", all_text(&o));
    assert!(all_text(&o).contains("E0507"), "{}", all_text(&o));
    write(&format!("{base}  min cell count 12\n")).unwrap();
    let o = cohortql(
        &[
            "run",
            "studies/small_cells.study",
            "--repo",
            &eunomia(),
            "--out",
            "tight",
        ],
        dir.path(),
        &site,
    );
    assert_eq!(o.status.code(), Some(0), "{}", all_text(&o));
    let run: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("tight/release/run.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(run["disclosure"]["threshold"], 12);
    assert_eq!(run["disclosure"]["rounding"], 5);
    assert_eq!(run["disclosure"]["policy"], "opensafely");
    // Every released count is rounded to 5 under opensafely.
    for (n, _) in released_numbers(&dir.path().join("tight/release")) {
        assert_eq!(n % 5, 0, "{n} is not rounded");
    }
    // explain states the policy in force exactly.
    let o = cohortql(&["explain", "studies/small_cells.study"], dir.path(), &site);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("policy opensafely: counts from 1 to 11 are withheld (0 is shown), every other count is rounded to the nearest multiple of 5 (halves up)"),
        "{text}"
    );
    // --policy may tighten for one run, not loosen.
    let o = cohortql(
        &[
            "run",
            "studies/small_cells.study",
            "--repo",
            &eunomia(),
            "--policy",
            "ohdsi",
        ],
        dir.path(),
        &site,
    );
    assert_eq!(o.status.code(), Some(2), "{}", all_text(&o));
    assert!(all_text(&o).contains("looser"), "{}", all_text(&o));
    let o = cohortql(
        &[
            "run",
            "studies/small_cells.study",
            "--repo",
            &eunomia(),
            "--policy",
            "strict",
            "--out",
            "strict",
        ],
        dir.path(),
        &site,
    );
    assert_eq!(o.status.code(), Some(0), "{}", all_text(&o));
    let run: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("strict/release/run.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(run["disclosure"]["rounding"], 10);
    // An unknown policy is a study error with a suggestion.
    write(&format!("{base}  disclosure policy opensafe\n")).unwrap();
    let o = cohortql(&["check", "studies/small_cells.study"], dir.path(), &site);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        all_text(&o).contains("did you mean `opensafely`"),
        "{}",
        all_text(&o)
    );
}

/// `release check` re-reads a release: untouched, it passes; each hand edit is found, with its
/// file, line and column.
#[test]
fn release_check_finds_what_was_edited_by_hand() {
    let dir = tempfile::tempdir().unwrap();
    let site = site_init(dir.path(), "ohdsi", "never");
    let study = root().join("studies/nsaid_gi_bleed.study");
    let o = cohortql(
        &["run", study.to_str().unwrap(), "--out", "out"],
        dir.path(),
        &site,
    );
    assert_eq!(o.status.code(), Some(0), "{}", all_text(&o));
    let release = dir.path().join("out/release");
    let check = || {
        let o = cohortql(&["release", "check", "out/release"], dir.path(), &site);
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    };
    assert_eq!(check().0, Some(0), "{}", check().1);
    let pristine = std::fs::read_to_string(release.join("attrition.csv")).unwrap();
    let edit = |file: &str, from: &str, to: &str| {
        let text = std::fs::read_to_string(release.join(file)).unwrap();
        assert!(text.contains(from), "{file} lacks {from:?}:\n{text}");
        std::fs::write(release.join(file), text.replacen(from, to, 1)).unwrap();
    };
    // A count lowered by hand to one the policy withholds.
    let line3: Vec<&str> = pristine.lines().nth(2).unwrap().rsplitn(4, ',').collect();
    let (entries, persons) = (line3[1], line3[2]);
    edit(
        "attrition.csv",
        &format!(",{persons},{entries},false"),
        ",3,3,false",
    );
    let (code, text) = check();
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("attrition.csv:3"), "{text}");
    assert!(text.contains("below the smallest count"), "{text}");
    assert!(text.contains("changed after the run"), "{text}");
    std::fs::write(release.join("attrition.csv"), &pristine).unwrap();
    // A person-level column.
    let by_arm = std::fs::read_to_string(release.join("attrition_by_arm.csv")).unwrap();
    let with_id: String = by_arm
        .lines()
        .enumerate()
        .map(|(i, l)| format!("{l},{}\n", if i == 0 { "person_id" } else { "42" }))
        .collect();
    std::fs::write(release.join("attrition_by_arm.csv"), with_id).unwrap();
    let (code, text) = check();
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("attrition_by_arm.csv:1: person_id: is a person-level column"),
        "{text}"
    );
    std::fs::write(release.join("attrition_by_arm.csv"), &by_arm).unwrap();
    // A file no release holds, and one with exact dates.
    std::fs::copy(
        dir.path().join("out/site/dataset.parquet"),
        release.join("dataset.parquet"),
    )
    .unwrap();
    std::fs::copy(
        dir.path().join("out/site/dataset.csv"),
        release.join("dataset.csv"),
    )
    .unwrap();
    let (code, text) = check();
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("dataset.parquet: is not a file a release may hold"),
        "{text}"
    );
    assert!(
        text.contains("dataset.csv: is a person-level dataset"),
        "{text}"
    );
    assert!(text.contains("index_date: is an exact date"), "{text}");
    for f in ["dataset.parquet", "dataset.csv"] {
        std::fs::remove_file(release.join(f)).unwrap();
    }
    assert_eq!(check().0, Some(0), "{}", check().1);
    // A withheld count filled in again from the site's exact counts: what it gives away is found.
    let exact = csv_rows(&dir.path().join("out/site/attrition.csv"));
    let released = csv_rows(&release.join("attrition.csv"));
    let (i, _) = released
        .iter()
        .enumerate()
        .find(|(_, r)| r["suppressed"] == "true")
        .expect("the demo's NSAID study withholds a step");
    let filled: String = pristine
        .lines()
        .enumerate()
        .map(|(k, l)| {
            if k == i + 1 {
                let rest = l.rsplitn(4, ',').nth(3).unwrap();
                format!(
                    "{rest},{},{},false\n",
                    exact[i]["persons"], exact[i]["entries"]
                )
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(release.join("attrition.csv"), filled).unwrap();
    let (code, text) = check();
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("gives away a count of 1 to 4"), "{text}");
}

/// `run --export-dataset` writes a person-level dataset under release/ only where the site
/// allows it, with pseudonyms and days relative to index unless exact dates are allowed and
/// asked for; `release check` holds it to the same rules.
#[test]
fn an_exported_dataset_follows_the_sites_rules() {
    let dir = tempfile::tempdir().unwrap();
    let study = root().join("studies/eunomia/celecoxib.study");
    let export = |site: &Path, study: &Path, out: &str| {
        cohortql(
            &[
                "run",
                study.to_str().unwrap(),
                "--repo",
                &eunomia(),
                "--out",
                out,
                "--export-dataset",
            ],
            dir.path(),
            site,
        )
    };
    let never = site_init(dir.path(), "ohdsi", "never");
    let o = export(&never, &study, "never");
    assert_eq!(o.status.code(), Some(2), "{}", all_text(&o));
    assert!(
        all_text(&o).contains("allows no person-level dataset"),
        "{}",
        all_text(&o)
    );
    assert!(!dir.path().join("never").exists());

    let relative = site_init(dir.path(), "ohdsi", "relative-dates");
    let o = export(&relative, &study, "relative");
    assert_eq!(o.status.code(), Some(0), "{}", all_text(&o));
    let rows = csv_rows(&dir.path().join("relative/release/dataset.csv"));
    assert_eq!(rows.len(), 1800);
    let columns: Vec<&String> = {
        let mut c: Vec<&String> = rows[0].keys().collect();
        c.sort();
        c
    };
    assert!(columns.iter().any(|c| *c == "index_year"), "{columns:?}");
    assert!(
        columns.iter().any(|c| *c == "follow_up_end_day"),
        "{columns:?}"
    );
    assert!(
        !columns
            .iter()
            .any(|c| c.ends_with("_date") || *c == "person_id"),
        "{columns:?}"
    );
    for r in &rows {
        assert_eq!(r["follow_up_start_day"], "0");
        assert!(r
            .values()
            .all(|v| !(v.len() == 10 && v.as_bytes()[4] == b'-')));
        assert_eq!(r["person"].len(), 16);
    }
    // Sorted by pseudonym, so the order says nothing of person ids.
    let persons: Vec<&String> = rows.iter().map(|r| &r["person"]).collect();
    assert!(persons.windows(2).all(|w| w[0] <= w[1]));
    let o = cohortql(&["release", "check", "relative"], dir.path(), &relative);
    assert_eq!(o.status.code(), Some(0), "{}", all_text(&o));
    // Under a site that allows no export, the same release fails its check.
    let o = cohortql(&["release", "check", "relative"], dir.path(), &never);
    assert_eq!(o.status.code(), Some(1), "{}", all_text(&o));

    // Exact dates: only where the site allows them and the study asks.
    let exact_site = site_init(dir.path(), "ohdsi", "exact-dates");
    let asking = dir.path().join("asking.study");
    std::fs::write(
        &asking,
        std::fs::read_to_string(&study).unwrap().replacen(
            "\noutput\n",
            "\noutput\n  exported dates exact\n",
            1,
        ),
    )
    .unwrap();
    let o = export(&relative, &asking, "refused");
    assert_eq!(o.status.code(), Some(2), "{}", all_text(&o));
    assert!(!dir.path().join("refused").exists());
    let o = export(&exact_site, &asking, "exact");
    assert_eq!(o.status.code(), Some(0), "{}", all_text(&o));
    let rows = csv_rows(&dir.path().join("exact/release/dataset.csv"));
    assert!(rows[0].contains_key("index_date"));
    let o = cohortql(&["release", "check", "exact"], dir.path(), &exact_site);
    assert_eq!(o.status.code(), Some(0), "{}", all_text(&o));
    let o = export(&exact_site, &study, "not_asking");
    assert_eq!(o.status.code(), Some(0), "{}", all_text(&o));
    let rows = csv_rows(&dir.path().join("not_asking/release/dataset.csv"));
    assert!(rows[0].contains_key("index_year"));
}

/// Every count a run of `study` on `data` would release, exact.
fn exact_counts(
    study: &cohortql::study::Study,
    data: &cohortql::reference::data::Data,
) -> Vec<CountRow> {
    let dir = tempfile::tempdir().unwrap();
    cohortql::reference::rows::write_rows(
        data,
        dir.path(),
        cohortql::repo::write::OutputFormat::Parquet,
    )
    .unwrap();
    let repo = cohortql::repo::Repository::open(dir.path()).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let run = runtime
        .block_on(async {
            let ctx = repo.session().await.unwrap();
            cohortql::run::execute(study, &ctx, &|_| {}).await
        })
        .unwrap();
    cohortql::run::output::every_count(study, &run).unwrap()
}

/// An independent check of released rows: every released count, every count the documented
/// margins give exactly (a single withheld cell of a sum), every sum of a margin's withheld
/// cells, and every difference of two of these that may count overlapping sets, are 0 or at
/// least the threshold. Rounded
/// releases are checked for rounding and for the smallest count they may show.
fn leaks(rows: &[CountRow], exact: &[CountRow], policy: &Policy) -> Vec<String> {
    let mut found = Vec::new();
    let t = policy.threshold as i64;
    for (r, e) in rows.iter().zip(exact) {
        for m in 0..2 {
            if let Some(v) = r.counts[m] {
                let truth = e.counts[m].unwrap();
                if v != policy.rounded(truth) {
                    found.push(format!("{r:?} is not its exact count rounded ({truth})"));
                }
                if v > 0 && (v as i64) < policy.smallest_released() as i64 {
                    found.push(format!("{r:?} releases {v}"));
                }
            }
        }
    }
    if policy.rounding > 1 {
        return found;
    }
    // The margins, as the documentation states them.
    let idx = |t: Table| (0..rows.len()).filter(move |&i| rows[i].table == t);
    let mut sums: Vec<(usize, Vec<usize>)> = Vec::new();
    for a in idx(Table::Attrition) {
        let parts: Vec<usize> = idx(Table::ByArm)
            .filter(|&b| rows[b].step == rows[a].step)
            .collect();
        if !parts.is_empty() {
            sums.push((a, parts));
        }
        if rows[a].rule == "assigned to an exposure arm" {
            let before = rows[a].step.map(|s| s - 1);
            sums.push((
                a,
                idx(Table::ByArm)
                    .filter(|&b| rows[b].step == before && rows[b].arm.is_some())
                    .collect(),
            ));
        }
    }
    // Results: each arm's counts add up to all entries', and Table 1's levels of a covariate
    // with its missing values to the group's entries at the last step.
    for table in [Table::Endpoint, Table::Table1] {
        for total in idx(table).filter(|&i| rows[i].arm.as_deref() == Some("all")) {
            let parts: Vec<usize> = idx(table)
                .filter(|&i| i != total && rows[i].rule == rows[total].rule)
                .collect();
            if !parts.is_empty() {
                sums.push((total, parts));
            }
        }
    }
    let last = idx(Table::Attrition).filter_map(|a| rows[a].step).max();
    let mut covariates: Vec<(String, String)> = idx(Table::Table1)
        .map(|i| {
            (
                rows[i].rule.split(" = ").next().unwrap().to_string(),
                rows[i].arm.clone().unwrap(),
            )
        })
        .collect();
    covariates.sort();
    covariates.dedup();
    for (covariate, group) in covariates {
        let total = if group == "all" {
            idx(Table::Attrition).find(|&a| rows[a].step == last)
        } else {
            idx(Table::ByArm)
                .find(|&b| rows[b].step == last && rows[b].arm.as_deref() == Some(&group))
        };
        if let Some(total) = total {
            sums.push((
                total,
                idx(Table::Table1)
                    .filter(|&i| {
                        rows[i].rule.split(" = ").next() == Some(covariate.as_str())
                            && rows[i].arm.as_deref() == Some(&group)
                    })
                    .collect(),
            ));
        }
    }
    let combos: Vec<usize> = idx(Table::Combination).collect();
    if !combos.is_empty() {
        if let Some(q) = idx(Table::Attrition).find(|&a| rows[a].step == Some(1)) {
            sums.push((q, combos.clone()));
        }
        for rule in idx(Table::Rule) {
            let n = rows[rule].step.unwrap();
            sums.push((
                rule,
                combos
                    .iter()
                    .copied()
                    .filter(|&c| steps_of(&rows[c].rule).contains(&n))
                    .collect(),
            ));
            if let Some(a) = idx(Table::Attrition)
                .find(|&a| rows[a].step == Some(n + 1) && rows[a].rule == rows[rule].rule)
            {
                sums.push((
                    a,
                    combos
                        .iter()
                        .copied()
                        .filter(|&c| (1..=n).all(|k| steps_of(&rows[c].rule).contains(&k)))
                        .collect(),
                ));
            }
        }
    }
    // Whom a number counts, as far as two sets that share nobody go: the one arm (by arm,
    // results rows other than `all`), Table 1's covariate and level, and whether it counts
    // entries (or events) rather than persons.
    type Whom = (Option<String>, Option<(String, String)>, bool);
    let whom = |i: usize, m: usize| -> Whom {
        let r = &rows[i];
        let arm = match r.table {
            Table::ByArm => Some(r.arm.clone().unwrap_or_else(|| "(no arm)".into())),
            Table::Endpoint | Table::Table1 => r.arm.clone().filter(|a| a != "all"),
            _ => None,
        };
        let level = (r.table == Table::Table1).then(|| {
            let covariate = r.rule.split(" = ").next().unwrap().to_string();
            (covariate, r.rule.clone())
        });
        (arm, level, m == 1 || r.table == Table::Table1)
    };
    let cohort = idx(Table::Attrition).max_by_key(|&a| rows[a].step);
    let one_entry_each = cohort
        .is_some_and(|c| rows[c].counts[0].is_some() && rows[c].counts[0] == rows[c].counts[1]);
    let share_nobody = |a: &Whom, b: &Whom| {
        let levels = matches!((&a.1, &b.1), (Some((c, l)), Some((d, k))) if c == d && l != k);
        let arms = matches!((&a.0, &b.0), (Some(x), Some(y)) if x != y)
            && (one_entry_each || (a.2 && b.2));
        levels || arms
    };
    let mut all: Vec<(i64, Whom)> = Vec::new();
    for m in 0..2 {
        let mut known: Vec<Option<i64>> =
            rows.iter().map(|r| r.counts[m].map(|v| v as i64)).collect();
        loop {
            let mut progress = false;
            for (total, parts) in &sums {
                let members: Vec<usize> = std::iter::once(*total)
                    .chain(parts.iter().copied())
                    .collect();
                let unknown: Vec<usize> = members
                    .iter()
                    .copied()
                    .filter(|&i| known[i].is_none())
                    .collect();
                if unknown.len() == 1 {
                    let sum: i64 = parts.iter().filter_map(|&p| known[p]).sum();
                    let value = if unknown[0] == *total {
                        sum
                    } else {
                        known[*total].unwrap() - sum
                    };
                    if value >= 0 {
                        known[unknown[0]] = Some(value);
                        progress = true;
                    }
                }
            }
            if !progress {
                break;
            }
        }
        let mut numbers: Vec<(i64, Whom)> = known
            .iter()
            .enumerate()
            .filter_map(|(i, k)| k.map(|v| (v, whom(i, m))))
            .collect();
        for (total, parts) in &sums {
            let withheld: Vec<usize> = parts
                .iter()
                .copied()
                .filter(|&p| known[p].is_none())
                .collect();
            if let (Some(t), true) = (known[*total], withheld.len() >= 2) {
                let arms: Vec<Option<String>> = withheld.iter().map(|&p| whom(p, m).0).collect();
                let arm = arms[0]
                    .clone()
                    .filter(|_| arms.iter().all(|a| *a == arms[0]));
                numbers.push((
                    t - parts.iter().filter_map(|&p| known[p]).sum::<i64>(),
                    (arm, None, whom(withheld[0], m).2),
                ));
            }
        }
        for (i, _) in rows.iter().enumerate() {
            if rows[i].counts[m].is_none() {
                if let Some(v) = known[i] {
                    if (1..t).contains(&v) {
                        found.push(format!("{:?} is derivable as {v}", rows[i]));
                    }
                }
            }
        }
        found.extend(
            numbers
                .iter()
                .filter(|(v, _)| (1..t).contains(v))
                .map(|(v, _)| format!("a margin gives {v}")),
        );
        // Differences are taken across both measures: persons against entries too.
        all.extend(numbers);
    }
    for (i, (a, p)) in all.iter().enumerate() {
        for (b, q) in &all[i + 1..] {
            if (1..t).contains(&(a - b).abs()) && !share_nobody(p, q) {
                found.push(format!(
                    "{a} ({p:?}) and {b} ({q:?}) differ by {}",
                    (a - b).abs()
                ));
            }
        }
    }
    found
}

/// On random repositories and random studies, under every preset and a tightened threshold,
/// the controlled release gives nothing away by the independent check above, and the checker
/// `release check` uses agrees.
#[test]
fn no_release_of_a_random_study_gives_away_a_small_count() {
    with_big_stack(random_releases);
}

fn random_releases() {
    let base = checked(
        "base",
        "study \"random\"\npopulation\n  index = first condition\n",
    );
    let policies: Vec<Policy> = ["ohdsi", "opensafely", "strict"]
        .iter()
        .map(|p| Policy::preset(p).unwrap())
        .chain([Policy {
            threshold: 3,
            ..Policy::preset("ohdsi").unwrap()
        }])
        .collect();
    let mut withheld = 0;
    for seed in 0..60 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let data = random_data(&mut rng);
        let study = random_study(&mut rng, &base);
        let exact = exact_counts(&study, &data);
        for policy in &policies {
            let released = control(&exact, policy);
            let leaks = leaks(&released, &exact, policy);
            assert!(
                leaks.is_empty(),
                "seed {seed}, {}: {leaks:#?}\nexact {exact:#?}\nreleased {released:#?}",
                policy.describe()
            );
            assert!(cohortql::disclosure::control::derivable(&released, policy).is_empty());
            withheld += released.iter().filter(|r| r.counts[0].is_none()).count();
        }
    }
    assert!(
        withheld > 100,
        "random studies withheld only {withheld} rows"
    );
}
