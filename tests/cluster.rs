//! The Ballista engine (`--engine ballista://…`, cargo feature `ballista`): on a cluster of a
//! scheduler and two executors started here, every spec and every study of studies/eunomia
//! give exactly what the embedded engine gives; a stopped executor gives the same results or a
//! clear error, never a hang; an unreachable scheduler is a clear error that leaves nothing.

mod common;

use cohortql::reference::data::Data;
use cohortql::reference::rows::write_rows;
use cohortql::repo::write::OutputFormat;
use cohortql::repo::Repository;
use cohortql::study::Study;
use common::cluster::LocalCluster;
use common::spec::{check_spec, data, specs};
use common::{got_from_execution, with_big_stack, Got};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Writes the rows as a Parquet repository and runs the study's stages on the cluster.
fn by_cluster(cluster: &LocalCluster, study: &Study, data: &Data) -> Got {
    let dir = tempfile::tempdir().unwrap();
    let repo_dir = dir.path().join("repo");
    std::fs::create_dir_all(&repo_dir).unwrap();
    write_rows(data, &repo_dir, OutputFormat::Parquet).unwrap();
    let repo = Repository::open(&repo_dir).unwrap();
    let stages = dir.path().join("stages");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let ran = runtime.block_on(cohortql::run::cluster::execute(
        &cluster.engine(),
        study,
        &repo,
        &stages,
        &|_| {},
    ));
    let ran = ran.unwrap_or_else(|e| {
        panic!(
            "the study does not run on the cluster: {e}\n{}",
            cluster.log_text()
        )
    });
    got_from_execution(study, &ran.run)
}

#[test]
fn every_spec_holds_on_a_cluster() {
    with_big_stack(|| {
        let cluster = LocalCluster::start(2);
        for (name, spec) in specs() {
            check_spec(&name, &spec, &data(&spec), &|study, data| {
                by_cluster(&cluster, study, data)
            });
        }
    });
}

/// `cohortql ARGS` from the project's root, with the tests' site configuration, stopped (and
/// the test failed) after `limit`.
fn cohortql_within(args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cohortql"))
        .env("COHORTQL_SITE", common::site_file())
        .env("NO_COLOR", "1")
        .args(args)
        .current_dir(root())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read as the command writes: a pipe left unread blocks it once its buffer is full.
    let drain = |mut from: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            from.read_to_end(&mut bytes).unwrap();
            bytes
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let started = Instant::now();
    let (status, late) = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break (status, false);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            break (child.wait().unwrap(), true);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let o = Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    };
    if late {
        panic!(
            "cohortql {args:?} did not finish within {limit:?}: {}",
            common::all_text(&o)
        );
    }
    o
}

/// Every file of an output directory's site/ and release/, by path, except site/run.json.
fn output_files(out: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    for part in ["site", "release"] {
        let mut names: Vec<_> = std::fs::read_dir(out.join(part))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for name in names {
            if part == "site" && name == "run.json" {
                continue;
            }
            let path = out.join(part).join(&name);
            files.push((format!("{part}/{name}"), std::fs::read(path).unwrap()));
        }
    }
    files
}

fn run_json(out: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("site/run.json")).unwrap()).unwrap()
}

/// The outputs of a run on the cluster are those of an embedded run, byte for byte, but for
/// site/run.json, which differs only in its timings and the engine it records.
fn assert_same_outputs(embedded: &Path, clustered: &Path, cluster: &LocalCluster) {
    let (a, b) = (output_files(embedded), output_files(clustered));
    assert_eq!(
        a.iter().map(|f| &f.0).collect::<Vec<_>>(),
        b.iter().map(|f| &f.0).collect::<Vec<_>>(),
        "the same files"
    );
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        assert!(x == y, "{name} differs on the cluster");
    }
    let (mut x, mut y) = (run_json(embedded), run_json(clustered));
    assert_eq!(x["engine"]["kind"], "embedded");
    assert_eq!(y["engine"]["kind"], "ballista", "{y}");
    assert_eq!(y["engine"]["scheduler"], cluster.url().as_str());
    assert!(
        !y["engine"]["executors"].as_array().unwrap().is_empty(),
        "{y}"
    );
    for record in [&mut x, &mut y] {
        let record = record.as_object_mut().unwrap();
        record.remove("timings");
        record.remove("engine");
    }
    assert_eq!(x, y, "site/run.json");
}

/// The directories beside the output directories: no run leaves its stages behind.
fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".cohortql-stages"))
        .collect()
}

#[test]
fn the_eunomia_studies_give_the_embedded_outputs_on_a_cluster() {
    let cluster = LocalCluster::start(2);
    let dir = tempfile::tempdir().unwrap();
    let mut studies: Vec<PathBuf> = std::fs::read_dir(root().join("studies/eunomia"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    studies.sort();
    assert!(studies.len() >= 6);
    for study in &studies {
        let name = study.file_stem().unwrap().to_string_lossy().into_owned();
        let embedded = dir.path().join(format!("{name}-embedded"));
        let clustered = dir.path().join(format!("{name}-cluster"));
        let study = study.to_str().unwrap();
        for (out, engine) in [(&embedded, None), (&clustered, Some(cluster.url()))] {
            let mut args = vec![
                "run",
                study,
                "--repo",
                "tests/data/eunomia-gibleed",
                "--out",
                out.to_str().unwrap(),
            ];
            if let Some(engine) = &engine {
                args.extend(["--engine", engine.as_str()]);
            }
            let o = cohortql_within(&args, Duration::from_secs(300));
            assert!(
                o.status.success(),
                "{name} ({engine:?}): {}\n{}",
                common::all_text(&o),
                cluster.log_text()
            );
        }
        assert_same_outputs(&embedded, &clustered, &cluster);
    }
    assert_eq!(leftovers(dir.path()), Vec::<String>::new());
}

#[test]
fn plan_analyze_on_a_cluster_shows_the_query_stages_each_stage_ran() {
    let cluster = LocalCluster::start(2);
    let dir = tempfile::tempdir().unwrap();
    let o = cohortql_within(
        &[
            "plan",
            "studies/eunomia/celecoxib.study",
            "--repo",
            "tests/data/eunomia-gibleed",
            "--analyze",
            "--engine",
            &cluster.url(),
            "--stage-dir",
            dir.path().to_str().unwrap(),
        ],
        Duration::from_secs(300),
    );
    let text = common::all_text(&o);
    assert!(o.status.success(), "{text}");
    for stage in [
        "cohortql_entries",
        "cohortql_population",
        "attrition",
        "dataset",
    ] {
        assert!(text.contains(&format!("== {stage} ==")), "{stage}: {text}");
    }
    assert!(text.contains("-- query stage "), "{text}");
    assert!(text.contains("output_rows="), "{text}");
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
}

/// An executor stopped while the cluster still counts on it: the scheduler gives its tasks to
/// the other executor, and the outputs are those of an embedded run; or the run stops with a
/// message naming the cluster. Never other results, and never a hang.
#[test]
fn a_stopped_executor_gives_the_same_results_or_a_clear_error() {
    let mut cluster = LocalCluster::start(2);
    let dir = tempfile::tempdir().unwrap();
    let embedded = dir.path().join("embedded");
    let clustered = dir.path().join("cluster");
    let study = "studies/eunomia/celecoxib_censored.study";
    let args = |out: &Path| {
        vec![
            "run".to_string(),
            study.to_string(),
            "--repo".to_string(),
            "tests/data/eunomia-gibleed".to_string(),
            "--out".to_string(),
            out.to_str().unwrap().to_string(),
        ]
    };
    let o = cohortql_within(
        &args(&embedded)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        Duration::from_secs(120),
    );
    assert!(o.status.success(), "{}", common::all_text(&o));
    // Stopped without a word to the scheduler, which still assigns it tasks.
    let mut stopped = cluster.executors.remove(0);
    stopped.kill().unwrap();
    stopped.wait().unwrap();
    let mut with_engine = args(&clustered);
    with_engine.extend(["--engine".to_string(), cluster.url()]);
    let o = cohortql_within(
        &with_engine.iter().map(String::as_str).collect::<Vec<_>>(),
        Duration::from_secs(240),
    );
    if o.status.success() {
        assert_same_outputs(&embedded, &clustered, &cluster);
    } else {
        let text = common::all_text(&o);
        assert_eq!(o.status.code(), Some(2), "{text}");
        assert!(text.contains(&cluster.url()), "{text}");
        assert!(!clustered.exists());
    }
    assert_eq!(leftovers(dir.path()), Vec::<String>::new());
}

/// `run` of the celecoxib study on the Eunomia repository with `--engine engine`, into `out`.
fn celecoxib_on(engine: &str, out: &Path, limit: Duration) -> Output {
    cohortql_within(
        &[
            "run",
            "studies/eunomia/celecoxib.study",
            "--repo",
            "tests/data/eunomia-gibleed",
            "--out",
            out.to_str().unwrap(),
            "--engine",
            engine,
        ],
        limit,
    )
}

/// Every executor stopped without a word to the scheduler: it notices (20 s without a
/// heartbeat), waits 20 s for one to come back, and fails the job; the run stops with a
/// message naming the cluster and leaves nothing.
#[test]
fn with_every_executor_stopped_the_run_fails_within_a_bound() {
    let mut cluster = LocalCluster::start(2);
    for mut executor in cluster.executors.drain(..) {
        executor.kill().unwrap();
        executor.wait().unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let engine = cluster.url();
    let o = celecoxib_on(&engine, &out, Duration::from_secs(180));
    let text = common::all_text(&o);
    assert_eq!(o.status.code(), Some(2), "{text}");
    assert!(text.contains(&format!("failed on {engine}")), "{text}");
    assert!(!out.exists());
    assert_eq!(leftovers(dir.path()), Vec::<String>::new());
}

#[test]
fn an_unreachable_scheduler_is_a_clear_error_that_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = dir.path().join("out");
    let engine = format!("ballista://127.0.0.1:{port}");
    let o = celecoxib_on(&engine, &out, Duration::from_secs(60));
    let text = common::all_text(&o);
    assert_eq!(o.status.code(), Some(2), "{text}");
    assert!(
        text.contains(&format!("cannot reach the Ballista scheduler at {engine}")),
        "{text}"
    );
    assert!(text.contains("cohortql ballista scheduler"), "{text}");
    assert!(!out.exists());
    assert_eq!(leftovers(dir.path()), Vec::<String>::new());
}
