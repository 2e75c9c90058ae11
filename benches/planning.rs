//! Planning time against study size: parse, check and build every stage's plans (no data) for
//! studies with many covariates, attrition steps, concept ids and nested `where`, printing
//! milliseconds and plan nodes per size, and the ratio of time to the smallest size's.
//!
//! Run with `cargo bench --bench planning` (a release build). Planning should grow about
//! linearly with the number of statements; docs/performance.md records the results.

use cohortql::compile::compile_text;

/// The command line's allocator, so that planning is measured as a user meets it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use datafusion::common::tree_node::TreeNodeRecursion;
use std::time::{Duration, Instant};

const HEAD: &str = "study \"P\"\nconcepts\n  a = drug 1118084\n  c = condition 192671\npopulation\n  index = first drug in a\n";

fn covariates(n: usize) -> String {
    let mut text = format!("{HEAD}covariates\n");
    for i in 0..n {
        text.push_str(&format!(
            "  c{i} = count condition in c [-{}, -1] days\n",
            i + 1
        ));
    }
    text
}

fn steps(n: usize) -> String {
    let mut text = HEAD.to_string();
    for i in 0..n {
        text.push_str(&format!("  require condition in c [-{}, 0] days\n", i + 1));
    }
    text
}

fn ids(n: usize) -> String {
    let ids: Vec<String> = (0..n).map(|i| (1_000_000 + i).to_string()).collect();
    format!(
        "study \"U\"\nconcepts\n  a = drug {}\npopulation\n  index = first drug in a\n",
        ids.join(" | ")
    )
}

fn nested(depth: usize) -> String {
    let mut c = String::from("condition in c [-1, 0] days of event");
    for d in 1..depth {
        c = format!("condition in c where ({c}) [-{d}, 0] days of event");
    }
    format!("{HEAD}  require condition in c where ({c}) [-1, 0] days\n")
}

/// The best of three: parse and check, then plan; and the plans' node count.
fn measure(text: &str) -> (Duration, Duration, usize) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut best = (Duration::MAX, Duration::MAX, 0);
    for _ in 0..3 {
        let started = Instant::now();
        let study = compile_text(text.to_string())
            .study
            .expect("the study checks");
        let checked = started.elapsed();
        let started = Instant::now();
        let plans = runtime
            .block_on(async {
                let ctx = cohortql::repo::empty_session().unwrap();
                cohortql::run::stage_plans(&study, &ctx, Default::default()).await
            })
            .unwrap();
        let planned = started.elapsed();
        let mut nodes = 0;
        for (_, plan) in &plans {
            plan.apply_with_subqueries(|_| {
                nodes += 1;
                Ok(TreeNodeRecursion::Continue)
            })
            .unwrap();
        }
        best = (best.0.min(checked), best.1.min(planned), nodes);
    }
    best
}

fn main() {
    // Planning recurses once per plan level, as the command line does on its big stack.
    std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(|| {
            println!("| study | size | check ms | plan ms | plan nodes | plan time / smallest |");
            println!("|---|---:|---:|---:|---:|---:|");
            let series: [(&str, fn(usize) -> String, &[usize]); 4] = [
                ("covariates", covariates, &[125, 200, 250, 500, 1000]),
                ("require lines", steps, &[125, 200, 250, 500, 1000]),
                ("concept ids", ids, &[1_000, 10_000, 100_000]),
                ("nested where", nested, &[2, 5, 10]),
            ];
            for (name, make, sizes) in series {
                let mut first = None;
                for &n in sizes {
                    let (check, plan, nodes) = measure(&make(n));
                    let base = *first.get_or_insert(plan);
                    println!(
                        "| {name} | {n} | {:.1} | {:.1} | {nodes} | {:.1} |",
                        check.as_secs_f64() * 1e3,
                        plan.as_secs_f64() * 1e3,
                        plan.as_secs_f64() / base.as_secs_f64()
                    );
                }
            }
        })
        .unwrap()
        .join()
        .unwrap();
}
