//! Every study in the documentation is checked: plain `study` blocks must check clean, and
//! `study error=CODE` blocks in docs/errors.md must produce that code. Their diagnostics are
//! snapshotted, so a change in any message shows up in review.

mod common;

use cohortql::compile::compile_text;
use cohortql::diag::{Code, Severity};
use std::path::{Path, PathBuf};

struct Block {
    file: String,
    line: usize,
    expect: Option<String>,
    text: String,
}

fn study_blocks(path: &Path) -> Vec<Block> {
    let content = std::fs::read_to_string(path).unwrap();
    let mut blocks = Vec::new();
    let mut current: Option<Block> = None;
    for (n, line) in content.lines().enumerate() {
        if let Some(block) = current.as_mut() {
            if line.trim_start() == "```" {
                blocks.push(current.take().unwrap());
            } else {
                block.text.push_str(line);
                block.text.push('\n');
            }
        } else if let Some(info) = line.trim_start().strip_prefix("```study") {
            let expect = info.trim().strip_prefix("error=").map(str::to_string);
            current = Some(Block {
                file: path.display().to_string(),
                line: n + 1,
                expect,
                text: String::new(),
            });
        }
    }
    assert!(current.is_none(), "{}: unclosed code block", path.display());
    blocks
}

fn documents() -> Vec<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut docs = vec![root.join("README.md")];
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            docs.push(path);
        }
    }
    docs.sort();
    docs
}

fn plain(diagnostics: &[cohortql::diag::Diagnostic], text: &str) -> String {
    let rendered = cohortql::cli::render_all(diagnostics, "example.study", text);
    anstream::adapter::strip_str(&rendered).to_string()
}

#[test]
fn every_study_block_in_the_docs_checks_as_it_says() {
    let mut clean = 0;
    let mut failing = 0;
    for doc in documents() {
        for block in study_blocks(&doc) {
            let where_ = format!("{}:{}", block.file, block.line);
            let compiled = compile_text(block.text.clone());
            match &block.expect {
                None => {
                    assert!(
                        compiled.diagnostics.is_empty(),
                        "{where_}: a documented study has diagnostics:\n{}",
                        plain(&compiled.diagnostics, &block.text)
                    );
                    clean += 1;
                }
                Some(code) => {
                    assert!(
                        compiled.diagnostics.iter().any(|d| d.code.id() == code),
                        "{where_}: expected {code}, got:\n{}",
                        plain(&compiled.diagnostics, &block.text)
                    );
                    if code.starts_with('W') {
                        assert!(
                            !compiled.has_errors(),
                            "{where_}: a warning example has errors"
                        );
                    }
                    failing += 1;
                }
            }
        }
    }
    assert!(clean >= 40, "only {clean} clean study blocks found");
    assert!(failing >= 30, "only {failing} error examples found");
}

#[test]
fn every_diagnostic_code_is_documented_with_an_example() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let errors = root.join("docs/errors.md");
    let text = std::fs::read_to_string(&errors).unwrap();
    let examples: Vec<String> = study_blocks(&errors)
        .into_iter()
        .filter_map(|b| b.expect)
        .collect();
    // These concern the bytes of a file, which a Markdown block cannot hold, or a site's
    // configuration, which a study alone does not have; tests/cli.rs covers them.
    let byte_level = [
        Code::InvalidUtf8,
        Code::BinaryFile,
        Code::TooLarge,
        Code::LooserThanSite,
    ];
    for code in Code::ALL {
        assert!(
            text.contains(&format!("### {}: {}", code.id(), code.title())),
            "docs/errors.md lacks a section for {}",
            code.id()
        );
        if !byte_level.contains(&code) {
            assert!(
                examples.iter().any(|e| e == code.id()),
                "docs/errors.md has no example for {}",
                code.id()
            );
        }
        assert_eq!(
            code.severity() == Severity::Warning,
            code.id().starts_with('W')
        );
    }
    let mut ids: Vec<&str> = Code::ALL.iter().map(|c| c.id()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), Code::ALL.len(), "two codes share an id");
}

#[test]
fn error_examples_render_as_snapshotted() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut seen: std::collections::HashMap<String, usize> = Default::default();
    for block in study_blocks(&root.join("docs/errors.md")) {
        let Some(code) = block.expect else { continue };
        let compiled = compile_text(block.text.clone());
        // A code's further examples get their number: `diagnostic_E0504_2`.
        let n = seen.entry(code.to_string()).or_default();
        *n += 1;
        let name = match *n {
            1 => format!("diagnostic_{code}"),
            n => format!("diagnostic_{code}_{n}"),
        };
        insta::assert_snapshot!(name, plain(&compiled.diagnostics, &block.text));
    }
}

/// The README's sample outputs are what the commands print: the attrition of the main command on
/// the demo repository, and the diagnostic for a mistyped concept set.
#[test]
fn the_readme_shows_what_the_commands_print() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let text_blocks: Vec<String> = readme
        .split("```text\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap().to_string())
        .collect();
    let block = |starts: &str| {
        text_blocks
            .iter()
            .find(|b| b.starts_with(starts))
            .unwrap_or_else(|| panic!("README has no text block starting {starts:?}"))
            .clone()
    };
    let dir = tempfile::tempdir().unwrap();
    let cohortql = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_cohortql"))
            .env("COHORTQL_SITE", common::site_file())
            .args(args)
            .current_dir(dir.path())
            .env("COHORTQL_CACHE_DIR", dir.path().join("cache"))
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    };

    let study = root.join("studies/nsaid_gi_bleed.study");
    let out = cohortql(&["run", study.to_str().unwrap()]);
    let printed = String::from_utf8_lossy(&out.stdout);
    let expected = block("Celecoxib versus diclofenac");
    assert!(
        printed.starts_with(&expected),
        "README:\n{expected}\nprinted:\n{printed}"
    );

    std::fs::create_dir(dir.path().join("studies")).unwrap();
    let typo = std::fs::read_to_string(&study).unwrap().replace(
        "index = first drug in nsaids",
        "index = first drug in nsiads",
    );
    std::fs::write(dir.path().join("studies/nsaid_gi_bleed.study"), typo).unwrap();
    let out = cohortql(&["check", "studies/nsaid_gi_bleed.study"]);
    let printed = String::from_utf8_lossy(&out.stderr);
    let expected = block("error[E0200]");
    assert!(
        printed.starts_with(&expected),
        "README:\n{expected}\nprinted:\n{printed}"
    );
}

/// Every construct the grammar accepts is shown in docs/language.md: each grammar rule appears
/// in the syntax tree of some `study` block there.
#[test]
fn the_language_reference_shows_every_grammar_rule() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut shown = std::collections::BTreeSet::new();
    for block in study_blocks(&root.join("docs/language.md")) {
        if let Some(rules) = cohortql::syntax::rules_used(&block.text) {
            shown.extend(rules);
        }
    }
    // Silent rules (`= _{`) never appear in a tree, nor do the rules inside an atomic one: the
    // characters of a name, and `inf` inside a window bound (shown as `[-inf, -1] days`).
    let grammar = std::fs::read_to_string(root.join("grammar/study.pest")).unwrap();
    let silent: std::collections::BTreeSet<String> = grammar
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.split_once('=')?;
            rest.trim_start()
                .starts_with("_{")
                .then(|| name.trim().to_string())
        })
        .collect();
    let inside_atomic = ["name_chars", "kw_inf"];
    let missing: Vec<String> = cohortql::syntax::all_rules()
        .into_iter()
        .filter(|r| {
            !shown.contains(r) && !silent.contains(r) && !inside_atomic.contains(&r.as_str())
        })
        .collect();
    assert!(
        missing.is_empty(),
        "docs/language.md shows no example of these grammar rules: {missing:?}"
    );
}
