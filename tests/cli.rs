//! The `cohortql` command end to end: exit codes, messages, fmt, explain and hash, and inputs
//! that must never crash or hang it.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_cohortql");

/// Generous guard against a hang; not a speed requirement.
const HANG_GUARD: Duration = Duration::from_secs(120);

fn run(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(BIN)
        .env("COHORTQL_SITE", common::site_file())
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        let input = input.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
    }
    let started = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if started.elapsed() > HANG_GUARD {
            let _ = child.kill();
            panic!("cohortql {args:?} did not finish");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn cohortql(args: &[&str]) -> Output {
    run(args, None)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn study_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in ["studies", "studies/eunomia", "tests/constructs"] {
        for entry in std::fs::read_dir(root().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "study") {
                files.push(path);
            }
        }
    }
    files.sort();
    assert!(
        files.len() >= 18,
        "expected the example studies, found {files:?}"
    );
    files
}

fn write_temp(dir: &Path, name: &str, contents: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

#[test]
fn every_example_study_checks_clean_and_is_formatted() {
    for file in study_files() {
        let f = file.to_str().unwrap();
        let out = cohortql(&["check", f]);
        assert_eq!(out.status.code(), Some(0), "{f}: {}", text(&out.stderr));
        assert!(text(&out.stdout).contains(": ok"), "{f}");
        // No warnings, or only acknowledged ones.
        let stdout = text(&out.stdout);
        let verdict = stdout.trim_end().rsplit(": ").next().unwrap_or("");
        assert!(
            verdict == "ok"
                || (verdict.starts_with("ok (")
                    && verdict.ends_with("acknowledged)")
                    && !verdict.contains(',')),
            "{f} has warnings: {stdout}"
        );
        let fmt = cohortql(&["fmt", "--check", f]);
        assert_eq!(
            fmt.status.code(),
            Some(0),
            "{f} is not in canonical layout: run `cohortql fmt --write {f}`"
        );
    }
}

#[test]
fn errors_name_file_line_column_with_a_caret_and_help() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_temp(
        dir.path(),
        "typo.study",
        b"study \"t\"\nconcepts\n  celecoxib = drug 1118084\npopulation\n  index = first drug in celecoxb\n",
    );
    let out = cohortql(&["check", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("error[E0200]: unknown concept set `celecoxb`"),
        "{err}"
    );
    assert!(err.contains(&format!("{}:5:25", path.display())), "{err}");
    assert!(
        err.contains("5 |   index = first drug in celecoxb"),
        "{err}"
    );
    assert!(
        err.contains("  |                         ^^^^^^^^ not defined in `concepts`"),
        "{err}"
    );
    assert!(err.contains("help: did you mean `celecoxib`?"), "{err}");
    assert!(
        !err.contains('\u{1b}'),
        "NO_COLOR output has escape codes: {err:?}"
    );
}

#[test]
fn all_errors_of_a_file_are_reported_at_once() {
    let out = run(
        &["check", "-"],
        Some(b"study \"t\"\npopulation\n  index = first drug in a\n  require drug in b\n  require age at index >= 2020-01-01\n"),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    for code in ["E0200", "E0301", "E0401"] {
        assert!(err.contains(code), "missing {code} in {err}");
    }
    assert!(err.contains("<stdin>: 4 errors"), "{err}");
}

#[test]
fn warnings_do_not_fail_check() {
    let out = run(
        &["check", "-"],
        Some(b"study \"t\"\npopulation\n  index = first drug\ncovariates\n  later = count visit [0, 30] days\n"),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("warning[W0001]"));
    assert!(text(&out.stdout).contains("ok (1 warning)"));
}

#[test]
fn usage_and_io_errors_exit_with_2() {
    assert_eq!(cohortql(&[]).status.code(), Some(2));
    assert_eq!(cohortql(&["frobnicate"]).status.code(), Some(2));
    let missing = cohortql(&["check", "no/such/file.study"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        text(&missing.stderr).contains("no/such/file.study: no such file"),
        "{}",
        text(&missing.stderr)
    );
    let dir = tempfile::tempdir().unwrap();
    let directory = cohortql(&["check", dir.path().to_str().unwrap()]);
    assert_eq!(directory.status.code(), Some(2));
    assert!(text(&directory.stderr).contains("is a directory"));
    assert_eq!(cohortql(&["--help"]).status.code(), Some(0));
}

#[test]
fn explain_states_every_window_as_days_around_its_anchor() {
    let out = cohortql(&[
        "explain",
        root()
            .join("studies/nsaid_gi_bleed.study")
            .to_str()
            .unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    for phrase in [
        "celecoxib (drug): concept 1118084 \"celecoxib\" and all its descendants.",
        "the standard concepts that ICD10CM codes M15 to M19 (with their sub-codes) map to",
        "one observation period covers every day from 365 days before index to the day of index (days -365 to 0 relative to index, both included)",
        "starting on any day up to day -1 relative to index (up to and including 1 day before index)",
        "from day -365 to day -1 relative to index (from 365 days before index to 1 day before index, both days included)",
        "Follow-up starts 1 day after index (day 1).",
        "365 days after index (day 365 relative to index)",
        "age at index (completed years of age on that day) is at least 18",
        "Disclosure control: policy ohdsi: counts from 1 to 4 are withheld (0 is shown), other counts are exact (set by the site configuration",
        "reveals 1 to 4 persons: further rows are withheld until none does",
    ] {
        assert!(s.contains(phrase), "explain lacks {phrase:?}:\n{s}");
    }
}

#[test]
fn explain_refuses_a_study_with_errors() {
    let out = run(
        &["explain", "-"],
        Some(b"study \"t\"\npopulation\n  index = first drug in nothing\n"),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
}

#[test]
fn fmt_writes_canonical_layout_in_place_and_check_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    let messy = b"-- lead comment\nSTUDY \"m\"   VERSION \"1\"\nPopulation index = FIRST drug in 1118084 -- time zero\n   require   AGE at INDEX>=18\nconcepts a=drug 1|2\n";
    let path = write_temp(dir.path(), "messy.study", messy);
    let p = path.to_str().unwrap();
    assert_eq!(cohortql(&["fmt", "--check", p]).status.code(), Some(1));
    let printed = cohortql(&["fmt", p]);
    assert_eq!(printed.status.code(), Some(0));
    assert_eq!(
        std::fs::read(&path).unwrap(),
        messy,
        "fmt without --write must not touch the file"
    );
    assert_eq!(cohortql(&["fmt", "--write", p]).status.code(), Some(0));
    let formatted = std::fs::read_to_string(&path).unwrap();
    assert_eq!(formatted, text(&printed.stdout));
    assert_eq!(
        formatted,
        "-- lead comment\nstudy \"m\"\n  version \"1\"\n\nconcepts\n  a = drug 1 | 2\n\npopulation\n  index = first drug in 1118084  -- time zero\n  require age at index >= 18\n"
    );
    assert_eq!(cohortql(&["fmt", "--check", p]).status.code(), Some(0));
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "fmt --write left temporary files");
}

#[test]
fn fmt_refuses_text_that_does_not_parse_and_leaves_it_alone() {
    let dir = tempfile::tempdir().unwrap();
    let broken = b"study \"b\"\npopulation\n  index = first drug in (\n";
    let path = write_temp(dir.path(), "broken.study", broken);
    let out = cohortql(&["fmt", "--write", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("error[E0100]"));
    assert_eq!(std::fs::read(&path).unwrap(), broken);
}

/// The hashes of the example studies are pinned: a change to what the hash covers, or to how a
/// study's meaning is modelled, changes every hash an ethics committee has already cited, and
/// must be a deliberate one.
#[test]
fn study_hashes_are_pinned() {
    let pinned = [
        (
            "studies/nsaid_gi_bleed.study",
            "51570c8442f38cab4bdfa35c66ad967065ab2b12dbc587666aca1dd3c821e3fe",
        ),
        (
            "studies/breast_neoadjuvant_pcr.study",
            "9094f8878339937e4af846a24d444c2e4a0289bf81294094770244447bd6a68d",
        ),
        (
            "studies/eunomia/celecoxib_censored.study",
            "176a1fcbd80b87ae85197caff76e9f02dc66b884067a00ccd274375e074e5b35",
        ),
    ];
    for (study, hash) in pinned {
        let path = root().join(study);
        let o = run(&["hash", path.to_str().unwrap()], None);
        let text = String::from_utf8_lossy(&o.stdout);
        assert_eq!(text.split_whitespace().next(), Some(hash), "{study}");
    }
}

#[test]
fn hash_ignores_layout_and_comments_but_not_meaning() {
    let dir = tempfile::tempdir().unwrap();
    let base = "study \"h\"\npopulation\n  index = first drug in 1118084\n  require condition in 192671 [-365, -1] days\n";
    let relaid = "-- a comment\nstudy   \"h\"\npopulation index = FIRST drug in 1118084   -- time zero\n require condition in 192671\n   [-365, -1] days\n";
    let synonym = "study \"h\"\npopulation\n  index = first drug in 1118084\n  require condition in 192671 365 days before index\n";
    let changed = "study \"h\"\npopulation\n  index = first drug in 1118084\n  require condition in 192671 [-365, 0] days\n";
    let hash = |name: &str, contents: &str| {
        let path = write_temp(dir.path(), name, contents.as_bytes());
        let out = cohortql(&["hash", path.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let line = text(&out.stdout);
        let hex = line.split_whitespace().next().unwrap().to_string();
        assert_eq!(hex.len(), 64);
        hex
    };
    let h = hash("base.study", base);
    assert_eq!(h, hash("relaid.study", relaid));
    assert_eq!(
        h,
        hash("synonym.study", synonym),
        "a window phrase and its bracket form mean the same"
    );
    assert_ne!(h, hash("changed.study", changed));
}

#[test]
fn parse_prints_the_syntax_tree_with_spans() {
    let out = run(
        &["parse", "-"],
        Some(b"study \"p\"\npopulation\n  index = first drug\n"),
    );
    assert_eq!(out.status.code(), Some(0));
    let tree: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(tree["title"]["node"], "p");
    assert_eq!(tree["title"]["span"]["start"], 6);
}

/// Hostile or broken inputs: each gets a diagnostic and exit code 1, never a crash or a hang.
#[test]
fn hostile_inputs_get_diagnostics_not_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let mut random = Vec::with_capacity(100_000);
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for _ in 0..100_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        random.push((x >> 24) as u8);
    }
    let deep_parens = format!(
        "study \"d\"\npopulation\n  index = first drug\n  require {}sex is male{}\n",
        "(".repeat(100_000),
        ")".repeat(100_000)
    );
    let deep_nots = format!(
        "study \"d\"\npopulation\n  index = first drug\n  require {}sex is male\n",
        "not ".repeat(100_000)
    );
    let deep_concepts = format!(
        "study \"d\"\nconcepts\n  a = {}1{}\n",
        "(".repeat(100_000),
        ")".repeat(100_000)
    );
    let long_string = format!(
        "study \"{}\"\npopulation\n  index = first drug\n",
        "a".repeat(5_000_000)
    );
    let open_string = format!(
        "study \"s\"\nconcepts\n  a = drug 5 \"{}\n",
        "b".repeat(5_000_000)
    );
    let mut many = String::from("study \"many\"\nconcepts\n");
    for i in 0..200_000 {
        many.push_str(&format!("  c{i} = drug {}\n", i + 1));
    }
    many.push_str("population\n  index = first drug in c5 | c199999\n  require condition in c200000 any time\n");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", b"".to_vec(), "E0003"),
        ("comments only", b"-- nothing here\n\n".to_vec(), "E0003"),
        ("random bytes", random, "E0001"),
        ("latin-1", b"study \"caf\xe9\"\n".to_vec(), "E0001"),
        ("NUL bytes", b"study \"x\"\n\0\0population".to_vec(), "E0002"),
        ("deep parentheses", deep_parens.into_bytes(), "E0004"),
        ("deep not", deep_nots.into_bytes(), "E0004"),
        ("deep concept groups", deep_concepts.into_bytes(), "E0004"),
        ("open string of 5 MB", open_string.into_bytes(), "E0100"),
        ("200,000 definitions", many.into_bytes(), "E0200"),
        (
            "overflowing numbers",
            b"study \"o\"\nconcepts\n  a = drug 99999999999999999999999\npopulation\n  index = first drug in a\n  require condition [-99999999999999999999, 0] days\n".to_vec(),
            "E0205",
        ),
        ("negative id", b"study \"n\"\nconcepts\n  a = drug -5\n".to_vec(), "E0100"),
        ("binary garbage after a study", b"study \"g\"\npopulation\n  index = first drug\n\x01\x02\x03".to_vec(), "E0006"),
    ];
    for (name, bytes, code) in cases {
        let path = write_temp(dir.path(), "case.study", &bytes);
        let out = cohortql(&["check", path.to_str().unwrap()]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {err}");
        assert!(
            err.contains(&format!("[{code}]")),
            "{name}: expected {code} in {}",
            &err[..err.len().min(2000)]
        );
        assert!(
            err.lines().all(|l| l.chars().count() < 400),
            "{name}: a diagnostic line is too long to read"
        );
    }
    let long = write_temp(dir.path(), "long.study", long_string.as_bytes());
    assert_eq!(
        cohortql(&["check", long.to_str().unwrap()]).status.code(),
        Some(0)
    );
}

/// `where` after `with continuous observation` is explained, and the order the hint gives checks.
#[test]
fn where_after_with_says_where_it_goes() {
    let dir = tempfile::tempdir().unwrap();
    let study = |index: &str| {
        format!(
            "study \"T\"\nconcepts\n  x = drug 1\npopulation\n  index = first drug in x {index}\n"
        )
    };
    let path = dir.path().join("w.study");
    std::fs::write(
        &path,
        study("with continuous observation [-365, 0] days where (condition [-1, 0] days)"),
    )
    .unwrap();
    let o = run(&["check", path.to_str().unwrap()], None);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("comes before `with continuous observation"),
        "{}",
        text(&o.stderr)
    );
    std::fs::write(
        &path,
        study("where (condition [-1, 0] days) with continuous observation [-365, 0] days"),
    )
    .unwrap();
    let o = run(&["check", path.to_str().unwrap()], None);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
}

/// Misuses of the constructs for entries outside observation, everyone as an entry, eras,
/// follow-up starts, windows during observation, cohort ids and acknowledgements: each is an
/// error or warning with its code.
#[test]
fn new_constructs_are_refused_when_misused() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &str); 9] = [
        (
            "population\n  index = first drug with or without observation with continuous observation [-30, 0] days\nfollow-up\n  until index + 3 days\n",
            "E0502",
        ),
        ("population\n  index = each person at 2010-01-01 until 2012-01-01\n", "E0505"),
        ("population\n  index = first drug\nfollow-up\n  from index - 3 days\n", "E0504"),
        ("population\n  index = first drug\n  require continuous observation [-30, 0] days during observation\n", "E0307"),
        ("population\n  index = first drug\noutput\n  cohort id 0\n", "E0303"),
        ("population\n  index = first drug\noutput\n  cohort id 1\n  cohort id 2\n", "E0502"),
        ("population\n  index = first era of drug where (visit on event) gap 3 days\n", "E0402"),
        ("population\n  index = first drug with or without observation\n", "W0005"),
        ("  acknowledge W0009 \"none\"\npopulation\n  index = first drug\n", "W0004"),
    ];
    for (i, (body, code)) in cases.iter().enumerate() {
        let path = write_temp(
            dir.path(),
            &format!("case{i}.study"),
            format!("study \"case {i}\"\n{body}").as_bytes(),
        );
        let out = cohortql(&["check", path.to_str().unwrap()]);
        let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(all.contains(&format!("[{code}]")), "case {i}: {all}");
        let want = if code.starts_with('E') { 1 } else { 0 };
        assert_eq!(out.status.code(), Some(want), "case {i}: {all}");
    }
}

/// Columns named `cohortql_…` are the run's own (Table 1's sex and age): a covariate or an
/// endpoint may not take such a name.
#[test]
fn column_names_of_the_run_are_refused() {
    let compiled = cohortql::compile::compile_text(
        "study \"Ours\"\npopulation\n  index = first visit\ncovariates\n  cohortql_table1_age = age at index\n"
            .to_string(),
    );
    assert!(compiled.has_errors());
    assert!(
        compiled
            .diagnostics
            .iter()
            .any(|d| d.code.id() == "E0201" && d.message.contains("cohortql_table1_age")),
        "{:?}",
        compiled.diagnostics
    );
}

/// Without the `ballista` feature, the cluster's commands and `--engine` say how to get them,
/// as a usage error, and write nothing.
#[cfg(not(feature = "ballista"))]
#[test]
fn the_cluster_commands_need_the_ballista_build() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let runs = [
        vec![
            "run",
            "studies/eunomia/celecoxib.study",
            "--repo",
            "tests/data/eunomia-gibleed",
            "--out",
            out.to_str().unwrap(),
            "--engine",
            "ballista://127.0.0.1:50050",
        ],
        vec!["ballista", "scheduler", "--port", "1"],
        vec!["ballista", "executor", "--port", "1", "--grpc-port", "2"],
    ];
    for args in runs {
        let o = Command::new(BIN)
            .env("COHORTQL_SITE", common::site_file())
            .env("NO_COLOR", "1")
            .args(&args)
            .current_dir(root())
            .output()
            .unwrap();
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("--features ballista"), "{args:?}: {err}");
    }
    assert!(!out.exists());
}

/// `--engine` takes a scheduler's address and nothing else.
#[test]
fn engine_takes_a_ballista_address() {
    for (engine, says) in [
        ("http://127.0.0.1:50050", "not a cluster"),
        ("ballista://127.0.0.1:0", "is not a port"),
        ("ballista://a b:1", "is not a host name"),
    ] {
        let o = cohortql(&[
            "run",
            "studies/eunomia/celecoxib.study",
            "--repo",
            "tests/data/eunomia-gibleed",
            "--engine",
            engine,
        ]);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{engine}: {err}");
        assert!(err.contains(says), "{engine}: {err}");
    }
}

/// The allocator takes no transparent huge pages (docs/performance.md): mimalloc, built with
/// `no_thp`, turns them off for the whole process, so the kernel zeroes no 2 MiB page for it
/// whatever the machine's setting.
#[cfg(target_os = "linux")]
#[test]
fn the_executable_takes_no_transparent_huge_pages() {
    let mut child = Command::new(BIN)
        .args(["repl", "--repo", "tests/data/eunomia-gibleed"])
        .current_dir(root())
        .env("COHORTQL_SITE", common::site_file())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let status = format!("/proc/{}/status", child.id());
    let started = Instant::now();
    let mut seen = String::new();
    // The process waits on its standard input; it turns huge pages off as it starts.
    while started.elapsed() < HANG_GUARD {
        let text = std::fs::read_to_string(&status).unwrap_or_default();
        seen = text
            .lines()
            .find(|l| l.starts_with("THP_enabled:"))
            .unwrap_or_default()
            .to_string();
        if seen.split_whitespace().nth(1) == Some("0") {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().ok();
    child.wait().ok();
    assert_eq!(
        seen.split_whitespace().nth(1),
        Some("0"),
        "{status} said {seen:?}"
    );
}
