//! `cohortql repl` driven through piped standard input, as a script would: a study built line by
//! line on Eunomia, the attrition after each step, every command, errors that do not end the
//! session, and a saved study that `check` accepts and `run` takes to the same counts.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn repl(input: &str, extra: &[&str]) -> Output {
    repl_in(input, extra, None)
}

/// The REPL on Eunomia, with its cache in `cache` if given (else the user's).
fn repl_in(input: &str, extra: &[&str], cache: Option<&std::path::Path>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cohortql"));
    if let Some(cache) = cache {
        command.env("COHORTQL_CACHE_DIR", cache);
    }
    let mut child = command
        .env("COHORTQL_SITE", common::site_file())
        .args(["repl", "--repo", "tests/data/eunomia-gibleed"])
        .args(extra)
        .current_dir(root())
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn a_study_built_line_by_line_shows_its_attrition_and_saves_to_a_runnable_file() {
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("built.study");
    let script = format!(
        "study \"Celecoxib, men over 40\"\n\
         concepts\n\
         celecoxib = drug 1118084 \"celecoxib\"\n\
         index = first drug era in celecoxib\n\
         require calendar age at index > 40\n\
         require sex is\n  male\n\
         :count\n\
         :save {}\n\
         :quit\n\
         require never reached\n",
        saved.display()
    );
    let o = repl(&script, &[]);
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    assert!(err.is_empty(), "{err}");
    assert!(
        !out.contains("cohortql>"),
        "no prompt without a terminal: {out}"
    );
    assert!(
        !out.contains('\u{1b}'),
        "no escape codes without a terminal"
    );
    // After each population step, the attrition rounded to 5: 1,800, then 569 as 570, then
    // 266 as 265.
    let tables: Vec<&str> = out.split("qualifying index event").skip(1).collect();
    assert_eq!(tables.len(), 4, "{out}");
    assert!(tables[1].contains("570"), "{out}");
    assert!(
        tables[2].contains("265") && tables[3].contains("265"),
        "{out}"
    );
    // The saved study checks and runs to the same counts.
    let check = Command::new(env!("CARGO_BIN_EXE_cohortql"))
        .env("COHORTQL_SITE", common::site_file())
        .args(["check", saved.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(0));
    let run_dir = dir.path().join("run");
    let run = Command::new(env!("CARGO_BIN_EXE_cohortql"))
        .env("COHORTQL_SITE", common::site_file())
        .args([
            "run",
            saved.to_str().unwrap(),
            "--repo",
            "tests/data/eunomia-gibleed",
            "--out",
            run_dir.to_str().unwrap(),
        ])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("site/run.json")).unwrap())
            .unwrap();
    assert_eq!(json["persons"], 266);
    let text = std::fs::read_to_string(&saved).unwrap();
    assert!(
        text.starts_with("study \"Celecoxib, men over 40\"\n"),
        "{text}"
    );
    assert!(text.contains("  require sex is male\n"), "{text}");
}

#[test]
fn errors_use_the_checker_diagnostics_and_never_end_the_session() {
    let o = repl(
        "concepts\n\
         celecoxib = drug 1118084 \"celecoxib\"\n\
         index = first drug era in celecoxb\n\
         require bogus\n\
         stray line before nothing\n\
         :frobnicate\n\
         :explain\n\
         index = first drug era in celecoxib\n\
         :undo\n\
         :undo\n\
         :show\n",
        &[],
    );
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    assert!(err.contains("error[E0200]"), "{err}");
    assert!(err.contains("did you mean `celecoxib`"), "{err}");
    assert!(err.contains("<repl>:"), "{err}");
    assert!(err.contains("^"), "{err}");
    assert!(err.contains("unknown command `:frobnicate`"), "{err}");
    assert!(err.contains("no index event yet"), "{err}");
    assert!(out.contains("Took back the last change."), "{out}");
    // Two undos: the index, then the concept set.
    assert!(out.contains("study \"REPL session\""), "{out}");
    assert!(!out.contains("celecoxib ="), "{out}");
}

#[test]
fn every_command_answers() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("out");
    let o = repl(
        &format!(
            ":help\n:tables\n:concept diclofenac\n:concept 1118084\n:concept cyanocobal\n\
             :plan\n:sql duckdb\n:explain\n:run {}\n:results {}\n:reset\n:show\n:undo\n:count\n:quit\n",
            run_dir.display(),
            run_dir.display()
        ),
        &["studies/eunomia/celecoxib_age40.study"],
    );
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    assert!(err.is_empty(), "{err}");
    assert!(out.contains(":concept TEXT"), "help");
    assert!(
        out.contains("drug_exposure") && out.contains("67705"),
        "tables: {out}"
    );
    assert!(
        out.contains("1124300") && out.contains("RxNorm"),
        "concept: {out}"
    );
    assert!(
        out.contains("1845"),
        "records of celecoxib, 1,844 rounded: {out}"
    );
    assert!(
        out.contains("Vitamin B 12 (synonym: cyanocobalamin)"),
        "found by its synonym: {out}"
    );
    assert!(out.contains("== cohortql_entries =="), "plan");
    assert!(
        out.contains("CREATE TEMPORARY TABLE cohortql_entries"),
        "sql"
    );
    assert!(out.contains("Time zero (index date)"), "explain: {out}");
    assert!(run_dir.join("site/run.json").is_file());
    assert!(
        out.contains("The study has no endpoints."),
        "results: {out}"
    );
    assert!(out.contains("Started again from an empty study"));
    // `:run` shows the counts as released (exact under ohdsi), `:count` rounds them.
    assert!(
        out.contains("569") && out.contains("570"),
        "run and count: {out}"
    );
}

/// Drives the REPL through a pseudo-terminal (`script` from util-linux allocates it), typing as
/// a person would: the prompt, Tab turning a concept name into its id and name from the
/// vocabulary, a statement held open over two lines by the validator, Ctrl-C dropping a
/// half-typed line, `:save`, and Ctrl-D leaving; the saved file then runs to the same counts.
#[test]
fn a_terminal_session_builds_a_study() {
    use std::io::Read;
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("built.study");
    let command = format!(
        "{} repl --repo tests/data/eunomia-gibleed",
        env!("CARGO_BIN_EXE_cohortql")
    );
    let mut child = Command::new("script")
        .args(["-qfec", &command, "/dev/null"])
        .current_dir(root())
        .env("NO_COLOR", "1")
        .env("TERM", "xterm")
        // Its own cache, so its own history: a line kept from an earlier run would be shown as
        // a hint while typing and be mistaken for the completion awaited below.
        .env("COHORTQL_CACHE_DIR", dir.path().join("cache"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script (util-linux) runs a command in a pseudo-terminal");
    let mut stdout = child.stdout.take().unwrap();
    let output = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = output.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let wait_for = |text: &str| {
        let started = Instant::now();
        while !output.lock().unwrap().contains(text) {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "no `{text}` in: {}",
                output.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let mut stdin = child.stdin.take().unwrap();
    let mut type_in = |keys: &str| {
        stdin.write_all(keys.as_bytes()).unwrap();
        stdin.flush().unwrap();
    };
    let prompts = || output.lock().unwrap().matches("cohortql>").count();
    // The line editor drops what is typed ahead of its prompt, so each line waits for it.
    let next_prompt = |before: usize| {
        let started = Instant::now();
        while prompts() <= before {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "no new prompt in: {}",
                output.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    next_prompt(0);
    let before = prompts();
    type_in("concepts\r");
    next_prompt(before);
    // Tab: the first of the vocabulary's drugs named `celecox…`, the ingredient. The prompt is
    // redrawn as keys are typed, so Enter waits for the completion itself: answered by the
    // tables while the vocabulary index is still being built, it may take a moment.
    type_in("celecoxib = drug celecox\t");
    wait_for("drug 1118084 \"celecoxib\"");
    for line in [
        "\r",
        "index = first drug era in celecoxib\r",
        "this line is dropped\x03",
    ] {
        let before = prompts();
        type_in(line);
        next_prompt(before);
    }
    wait_for("1800");
    let before = prompts();
    // Not whole yet: the validator keeps the input open for a second line.
    type_in("require calendar age at index > 40 and\r");
    std::thread::sleep(Duration::from_millis(500));
    type_in("sex is male\r");
    next_prompt(before);
    // 266 only if both lines were taken as one statement (a lone first line is an error).
    wait_for("265");
    type_in(&format!(":save {}\r", saved.display()));
    // The prompt is redrawn as keys are typed: wait for the answer, then for the next prompt.
    wait_for("Saved ");
    let before = prompts();
    std::thread::sleep(Duration::from_millis(300));
    if prompts() == before {
        next_prompt(before - 1);
    }
    type_in("\x04");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the REPL did not leave on Ctrl-D"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    reader.join().unwrap();
    assert!(status.success());
    let text = output.lock().unwrap().clone();
    assert!(
        !text.contains("dropped\r\n"),
        "Ctrl-C must drop the line: {text}"
    );
    assert!(!text.contains("error"), "{text}");
    let study = std::fs::read_to_string(&saved).expect("the study was saved");
    assert!(
        study.contains("celecoxib = drug 1118084 \"celecoxib\""),
        "{study}"
    );
    let out = dir.path().join("out");
    let run = Command::new(env!("CARGO_BIN_EXE_cohortql"))
        .env("COHORTQL_SITE", common::site_file())
        .args(["run", saved.to_str().unwrap(), "--repo"])
        .arg(root().join("tests/data/eunomia-gibleed"))
        .arg("--out")
        .arg(&out)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    for count in ["1800", "266"] {
        assert!(printed.contains(count), "{count} in: {printed}");
    }
}

/// A line only one section takes goes there from whichever section is current: `collapse`,
/// `until`, `study period` to follow-up, `min cell count`, `cohort id` to output.
#[test]
fn lines_of_another_section_go_to_it() {
    let o = repl(
        "concepts\n\
         celecoxib = drug 1118084\n\
         index = all drug era in celecoxib\n\
         collapse entries within 30 days\n\
         study period from 2000-01-01\n\
         require age at index >= 40\n\
         cohort id 9\n\
         :show\n",
        &[],
    );
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    assert!(!err.contains("error"), "{err}");
    assert!(
        out.contains(
            "follow-up\n  collapse entries within 30 days\n  study period from 2000-01-01\n"
        ),
        "{out}"
    );
    assert!(out.contains("output\n  cohort id 9\n"), "{out}");
    assert!(out.contains("require age at index >= 40"), "{out}");
}

/// Counts on the session's screen are withheld below the default minimum cell count whatever
/// the study says: `min cell count 1` once made the attrition show 1-4, and `:concept` showed a
/// concept's record count of 1.
#[test]
fn the_session_never_shows_small_counts() {
    let o = repl(
        "concepts\n\
         c = drug 1118084\n\
         min cell count 1\n\
         index = first drug era in c\n\
         require year of index = 1954\n\
         :concept 19076374\n",
        &[],
    );
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    let step = out
        .lines()
        .find(|l| l.contains("require year of index = 1954"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(step.contains("<5"), "{step}");
    let concept = out
        .lines()
        .find(|l| l.contains("19076374"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        concept.trim_end_matches(['│', ' ']).ends_with("<5"),
        "{concept}"
    );
}

/// Every number in the session's tables, from the column `column` on.
fn shown_counts(out: &str) -> Vec<u64> {
    out.lines()
        .filter(|l| l.starts_with('│'))
        .flat_map(|l| {
            let cells: Vec<&str> = l.split(['│', '┆']).map(str::trim).collect();
            // step, rule, persons, entries (the first and last pieces are empty)
            cells
                .get(3..5)
                .unwrap_or(&[])
                .iter()
                .filter_map(|c| c.parse().ok())
                .collect::<Vec<u64>>()
        })
        .collect()
}

/// The attack of issue 12 on the REPL: adding a rule and taking it back, a user learned from the
/// exact counts whether one person had a record (`exclude year of index = 1960` removes one of
/// celecoxib's 1,800 new users on Eunomia: 1,800 against 1,799). Every count the session shows
/// is now rounded to 5 under the `ohdsi` policy, so two of them never differ by 1 to 4, and
/// this rule changes nothing shown.
#[test]
fn adding_and_removing_a_rule_cannot_single_out_a_person() {
    let dir = tempfile::tempdir().unwrap();
    let study = dir.path().join("one.study");
    std::fs::write(
        &study,
        "study \"One person\"\nconcepts\n  celecoxib = drug 1118084\npopulation\n  index = first drug era in celecoxib\n  exclude year of index = 1960\n",
    )
    .unwrap();
    // At the site, the exact counts show the one person the rule removes.
    let run = Command::new(env!("CARGO_BIN_EXE_cohortql"))
        .env("COHORTQL_SITE", common::site_file())
        .args(["run", study.to_str().unwrap(), "--repo"])
        .arg(root().join("tests/data/eunomia-gibleed"))
        .arg("--out")
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let exact = std::fs::read_to_string(dir.path().join("out/site/attrition.csv")).unwrap();
    assert!(
        exact.contains("qualifying index event,1800,1800"),
        "{exact}"
    );
    assert!(
        exact.contains("exclude year of index = 1960,1799,1799"),
        "{exact}"
    );
    let o = repl(
        "concepts\n\
         celecoxib = drug 1118084\n\
         index = first drug era in celecoxib\n\
         exclude year of index = 1960\n\
         :undo\n\
         :count\n\
         exclude year of index = 1970\n\
         min cell count 1\n\
         :count\n",
        &[],
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}");
    let counts = shown_counts(&out);
    assert!(counts.len() > 10, "{out}");
    for c in &counts {
        assert_eq!(c % 5, 0, "{c} is shown unrounded:\n{out}");
    }
    assert!(!out.contains("1799"), "{out}");
    let step = out
        .lines()
        .find(|l| l.contains("exclude year of index = 1960"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(step.contains("1800"), "{step}");
    // `min cell count 1` typed in the session loosens nothing: 1,792 is still shown as 1,790.
    assert!(!out.contains("1792"), "{out}");
    assert!(out.contains("1790"), "{out}");
}

/// The REPL on Eunomia with its cache in `cache`: its output and its messages.
fn repl_with_cache(input: &str, cache: &std::path::Path) -> (String, String) {
    let o = repl_in(input, &[], Some(cache));
    assert_eq!(o.status.code(), Some(0));
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn concept_search_uses_an_index_built_once_and_the_tables_when_it_cannot_be_built() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let (out, err) = repl_with_cache(":concept cyanocobal\n", &cache);
    assert!(err.is_empty(), "{err}");
    assert!(
        out.contains("Vitamin B 12 (synonym: cyanocobalamin)"),
        "{out}"
    );
    let built: Vec<_> = std::fs::read_dir(cache.join("vocabulary"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(built.len(), 1, "one index for the repository");
    assert!(built[0].join("meta.json").is_file() && built[0].join("names.fst").is_file());
    let made = std::fs::metadata(built[0].join("meta.json"))
        .unwrap()
        .modified()
        .unwrap();
    // The next session opens it (not rebuilt) and answers the same.
    let (again, _) = repl_with_cache(":concept cyanocobal\n:concept 1118084\n", &cache);
    assert!(again.starts_with(&out), "{again}");
    assert!(
        again.contains("celecoxib") && again.contains("1845"),
        "{again}"
    );
    let kept = std::fs::metadata(built[0].join("meta.json"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(made, kept, "opened from the cache, not built again");

    // A cache that is a file: the index cannot be built; said once, and the tables answer.
    let file = dir.path().join("not-a-directory");
    std::fs::write(&file, "").unwrap();
    let (out, err) = repl_with_cache(":concept cyanocobal\n:concept cyanocobal\n", &file);
    assert!(err.is_empty(), "{err}");
    assert_eq!(
        out.matches("note: the vocabulary index could not be built")
            .count(),
        1,
        "{out}"
    );
    assert_eq!(
        out.matches("Vitamin B 12 (synonym: cyanocobalamin)")
            .count(),
        2,
        "{out}"
    );
}
