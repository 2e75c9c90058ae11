//! Vocabulary search at the size of a full OHDSI vocabulary: the REPL's questions (`:concept`,
//! completion of names, the name of an id) answered by the vocabulary index and, for
//! comparison, by the queries over the tables that answer them without it.
//!
//! `benches/vocabulary.sh` makes the repository (`cohortql synth --full-vocabulary 5000000`)
//! and runs this with `COHORTQL_BENCH_REPO` set to it: milliseconds per question (best of
//! three), the index's build time, and the process's peak memory after the index's questions
//! and after the tables'.

use cohortql::repo::browse::{concepts_starting, search_concepts};
use cohortql::repo::vocabulary_index::{index_dir, VocabularyIndex};
use cohortql::repo::Repository;
use std::path::PathBuf;
use std::time::Instant;

const SEARCHES: [&str; 10] = [
    "cardi",
    "tablet",
    "a",
    "bacarlo77 acute",
    "oral tablet",
    "tablet 200",
    "F00001234",
    "1000004321",
    "-",
    "hemorrhage",
];
const PREFIXES: [(&str, Option<&str>); 5] = [
    ("ac", None),
    ("car", None),
    ("tab", Some("Drug")),
    ("bacar", Some("Condition")),
    ("gastro", None),
];

/// Peak resident memory of this process so far, in MiB (Linux).
fn peak_mib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// Best of three, in milliseconds.
fn best(mut f: impl FnMut()) -> f64 {
    (0..3)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1000.0
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let Some(dir) = std::env::var_os("COHORTQL_BENCH_REPO").map(PathBuf::from) else {
        eprintln!("set COHORTQL_BENCH_REPO to a repository (see benches/vocabulary.sh)");
        return;
    };
    let cache = std::env::var_os("COHORTQL_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let repo = Repository::open(&dir).expect("a repository");
    let ctx = runtime.block_on(repo.session()).expect("a session");
    let at = index_dir(&cache, &dir);
    let started = Instant::now();
    let cached = VocabularyIndex::open_cached(&repo, &at)
        .expect("readable")
        .is_some();
    let index = runtime
        .block_on(VocabularyIndex::open_or_build(&ctx, &repo, &at))
        .expect("an index");
    let open_ms = started.elapsed().as_secs_f64() * 1000.0;
    println!(
        "{} concepts; index {} in {open_ms:.0} ms",
        index.len(),
        if cached { "opened" } else { "built" }
    );
    println!("\n| question | index ms | tables ms |\n|---|---:|---:|");
    let mut table_rows = Vec::new();
    for text in SEARCHES {
        let ms = best(|| {
            index.search(text, 20).expect("searched");
        });
        table_rows.push((format!("`:concept {text}`"), ms, text));
    }
    for (prefix, domain) in PREFIXES {
        let ms = best(|| {
            index.starting(prefix, domain, 40).expect("completed");
        });
        let what = match domain {
            Some(d) => format!("complete `{prefix}` ({d})"),
            None => format!("complete `{prefix}`"),
        };
        println!("| {what} | {ms:.1} | |");
    }
    let ms = best(|| {
        index.name_of(1_000_004_321).expect("named");
    });
    println!("| name of an id | {ms:.2} | |");
    let index_peak = peak_mib();
    // The tables' answers: one search and one completion (each reads `concept` in full).
    for (what, ms, text) in &table_rows {
        let tables = if *text == "cardi" {
            let t = Instant::now();
            runtime
                .block_on(search_concepts(&ctx, text, 20))
                .expect("searched");
            format!("{:.0}", t.elapsed().as_secs_f64() * 1000.0)
        } else {
            String::new()
        };
        println!("| {what} | {ms:.1} | {tables} |");
    }
    let t = Instant::now();
    runtime
        .block_on(concepts_starting(&ctx, "car", None, 40))
        .expect("completed");
    println!(
        "| complete `car` by the tables | | {:.0} |",
        t.elapsed().as_secs_f64() * 1000.0
    );
    println!(
        "\npeak memory: {} MiB after the index's questions{}, {} MiB after the tables'",
        index_peak.map_or("?".into(), |m| m.to_string()),
        if cached { "" } else { " (and its build)" },
        peak_mib().map_or("?".into(), |m| m.to_string())
    );
}
