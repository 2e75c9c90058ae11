//! Properties over generated input: the front end never panics, and layout never changes
//! meaning or the hash.

use cohortql::compile::{compile_bytes, compile_text};
use cohortql::hash::study_hash;
use cohortql::syntax::{source, KEYWORDS};
use proptest::prelude::*;

const PUNCTUATION: &[&str] = &[
    "=",
    "|",
    "-",
    "+",
    "(",
    ")",
    "[",
    "]",
    ",",
    "*",
    ">=",
    "<",
    "\"x\"",
    "\"",
    "--",
    "\n",
    "  ",
    "-365",
    "0",
    "30",
    "2020-02-29",
    "2021-02-30",
    "1118084",
    "99999999999999999999",
    "-inf",
    "inf",
    "4.5",
    "a",
    "b",
    "dx",
    "é",
];

/// Text made of the language's own tokens, which reaches far deeper into the grammar than bytes.
fn token_soup() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        3 => proptest::sample::select(KEYWORDS.to_vec()).prop_map(str::to_string),
        2 => proptest::sample::select(PUNCTUATION.to_vec()).prop_map(str::to_string),
    ];
    proptest::collection::vec(token, 0..80)
        .prop_map(|tokens| format!("study \"p\"\n{}", tokens.join(" ")))
}

fn example_studies() -> Vec<String> {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    for dir in ["studies", "studies/eunomia", "tests/constructs"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let p = entry.unwrap().path();
            if p.extension().is_some_and(|e| e == "study") {
                out.push(std::fs::read_to_string(p).unwrap());
            }
        }
    }
    out.sort();
    out
}

/// Byte offsets where a space stands outside quoted text and comments.
fn free_spaces(text: &str) -> Vec<usize> {
    let mut out = Vec::new();
    let (mut in_string, mut in_comment) = (false, false);
    let bytes = text.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'\n' => {
                in_string = false;
                in_comment = false;
            }
            b'"' if !in_comment => in_string = !in_string,
            b'-' if !in_string && bytes.get(i + 1) == Some(&b'-') => in_comment = true,
            b' ' if !in_string && !in_comment => out.push(i),
            _ => {}
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = compile_bytes(&bytes);
    }

    #[test]
    fn token_soup_never_panics(text in token_soup()) {
        let compiled = compile_text(text.clone());
        if let Some(file) = &compiled.file {
            let _ = cohortql::fmt::format_study(file, &source::comments(&text));
        }
        if let Some(study) = &compiled.study {
            let _ = cohortql::explain::explain_study(study);
            let _ = study_hash(study);
        }
    }

    #[test]
    fn damaged_studies_never_panic(which in 0usize..64, at in 0usize..10_000, len in 0usize..40, insert in proptest::sample::select(PUNCTUATION.to_vec())) {
        let studies = example_studies();
        let text = &studies[which % studies.len()];
        let mut at = at % text.len().max(1);
        while !text.is_char_boundary(at) { at -= 1; }
        let mut end = (at + len).min(text.len());
        while !text.is_char_boundary(end) { end -= 1; }
        let damaged = format!("{}{}{}", &text[..at], insert, &text[end..]);
        let compiled = compile_text(damaged.clone());
        for d in &compiled.diagnostics {
            if let Some(span) = d.span {
                prop_assert!(span.start <= span.end && span.end <= damaged.len(), "span {span:?} outside the text");
            }
            let _ = cohortql::cli::render(d, "damaged.study", &damaged);
        }
    }

    /// Any layout of the same tokens, with comments anywhere, has the same model, hash and format.
    #[test]
    fn layout_and_comments_change_nothing(which in 0usize..64, choices in proptest::collection::vec(0usize..6, 200)) {
        let studies = example_studies();
        let text = &studies[which % studies.len()];
        let original = compile_text(text.clone());
        let study = original.study.clone().unwrap();
        let spaces = free_spaces(text);
        let mut relaid = String::with_capacity(text.len() * 2);
        let mut last = 0;
        for (k, &at) in spaces.iter().enumerate() {
            relaid.push_str(&text[last..at]);
            relaid.push_str(match choices[k % choices.len()] {
                0 => " ",
                1 => "   ",
                2 => "\n      ",
                3 => " -- a remark\n ",
                4 => "\t",
                _ => "\r\n ",
            });
            last = at + 1;
        }
        relaid.push_str(&text[last..]);
        let again = compile_text(relaid.clone());
        prop_assert!(again.diagnostics.is_empty(), "relaid text has diagnostics: {:?}\n{relaid}", again.diagnostics);
        let again_study = again.study.unwrap();
        prop_assert_eq!(study_hash(&again_study), study_hash(&study));
        prop_assert_eq!(again_study, study);
    }
}
