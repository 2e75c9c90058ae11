//! Every construct of the language, one small study each in tests/constructs/: the syntax tree,
//! the checked model and the explanation are snapshotted, and formatting round-trips.

use cohortql::compile::compile_text;
use cohortql::syntax::{parse_study, source};

fn compile_clean(path: &std::path::Path) -> (String, cohortql::compile::Compiled) {
    let text = std::fs::read_to_string(path).unwrap();
    let compiled = compile_text(text.clone());
    assert!(
        compiled.diagnostics.is_empty(),
        "{} has diagnostics: {:?}",
        path.display(),
        compiled.diagnostics
    );
    (text, compiled)
}

/// The construct files, with their file names. (insta's `glob!` would pull in a regex feature
/// set that makes cargo build DataFusion a second time for tests.)
fn construct_files() -> Vec<(String, std::path::PathBuf)> {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/constructs");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "study"))
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), p))
        .collect();
    files.sort();
    assert!(files.len() >= 10, "construct files are missing");
    files
}

#[test]
fn syntax_trees() {
    for (name, path) in construct_files() {
        let (_, compiled) = compile_clean(&path);
        insta::assert_yaml_snapshot!(format!("ast@{name}"), compiled.file.unwrap());
    }
}

#[test]
fn study_models() {
    for (name, path) in construct_files() {
        let (_, compiled) = compile_clean(&path);
        insta::assert_yaml_snapshot!(format!("model@{name}"), compiled.study.unwrap());
    }
}

#[test]
fn explanations() {
    for (name, path) in construct_files() {
        let (_, compiled) = compile_clean(&path);
        insta::assert_snapshot!(
            format!("explain@{name}"),
            cohortql::explain::explain_study(&compiled.study.unwrap())
        );
    }
}

/// Formatting keeps the meaning (the same model) and is idempotent, for constructs and studies.
#[test]
fn formatting_round_trips() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["tests/constructs", "studies", "studies/eunomia"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let p = entry.unwrap().path();
            if p.extension().is_some_and(|e| e == "study") {
                files.push(p);
            }
        }
    }
    assert!(files.len() >= 18);
    for path in files {
        let (text, compiled) = compile_clean(&path);
        let once =
            cohortql::fmt::format_study(compiled.file.as_ref().unwrap(), &source::comments(&text));
        let again = compile_text(once.clone());
        assert!(
            again.diagnostics.is_empty(),
            "{}: formatted text has diagnostics:\n{once}",
            path.display()
        );
        assert_eq!(
            again.study,
            compiled.study,
            "{}: formatting changed the model",
            path.display()
        );
        let twice =
            cohortql::fmt::format_study(again.file.as_ref().unwrap(), &source::comments(&once));
        assert_eq!(
            once,
            twice,
            "{}: formatting is not idempotent",
            path.display()
        );
        assert_eq!(
            source::comments(&text).len(),
            source::comments(&once).len(),
            "{}: comments lost",
            path.display()
        );
    }
}

#[test]
fn keywords_are_case_insensitive() {
    let lower = "study \"k\"\nconcepts\n  dx = condition 201826\npopulation\n  index = first condition in dx with continuous observation [-365, 0] days\n  require at least 2 distinct days of visit any time before index\nfollow-up\n  until earliest of death, end of observation\n";
    let upper = "STUDY \"k\"\nConcepts\n  dx = CONDITION 201826\nPOPULATION\n  INDEX = First Condition IN dx WITH CONTINUOUS OBSERVATION [-365, 0] DAYS\n  REQUIRE AT LEAST 2 DISTINCT DAYS OF VISIT ANY TIME BEFORE INDEX\nFOLLOW-UP\n  UNTIL EARLIEST OF DEATH, END OF OBSERVATION\n";
    let a = compile_text(lower.to_string());
    let b = compile_text(upper.to_string());
    assert!(
        a.diagnostics.is_empty() && b.diagnostics.is_empty(),
        "{:?} {:?}",
        a.diagnostics,
        b.diagnostics
    );
    assert_eq!(a.study, b.study);
}

/// The keyword list the checker uses agrees with the grammar's.
#[test]
fn keyword_list_matches_the_grammar() {
    let grammar = include_str!("../grammar/study.pest");
    let mut from_grammar: Vec<String> = Vec::new();
    for line in grammar.lines().filter(|l| l.starts_with("kw_")) {
        for part in line.split("^\"").skip(1) {
            from_grammar.push(part.split('"').next().unwrap().to_string());
        }
    }
    from_grammar.sort();
    from_grammar.dedup();
    let mut ours: Vec<String> = cohortql::syntax::KEYWORDS
        .iter()
        .map(|s| s.to_string())
        .collect();
    ours.sort();
    assert_eq!(from_grammar, ours);
    for kw in cohortql::syntax::KEYWORDS {
        let text = format!(
            "study \"k\"\nconcepts\n  ok = drug 1\npopulation\n  index = first drug in {kw}\n"
        );
        assert!(
            parse_study(&text).is_err(),
            "`{kw}` was accepted as a concept set name"
        );
    }
}
