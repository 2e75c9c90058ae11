//! A Ballista cluster on this machine for a test: `cohortql ballista scheduler` and two
//! `cohortql ballista executor` processes on free ports of 127.0.0.1, stopped when dropped
//! (a failing test stops them too).

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct LocalCluster {
    pub port: u16,
    scheduler: Child,
    pub executors: Vec<Child>,
    /// Where the processes' standard error goes, for a failing test to show.
    pub logs: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16, what: &str) {
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{what} did not listen on port {port} within 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn spawn(args: &[&str], log: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_cohortql"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

impl LocalCluster {
    /// A scheduler and `executors` executors, each running at most two tasks at once.
    pub fn start(executors: usize) -> LocalCluster {
        let logs = tempfile::tempdir().unwrap();
        let port = free_port();
        let scheduler = spawn(
            &["ballista", "scheduler", "--port", &port.to_string()],
            &logs.path().join("scheduler.log"),
        );
        let mut cluster = LocalCluster {
            port,
            scheduler,
            executors: Vec::new(),
            logs,
        };
        wait_for_port(port, "the scheduler");
        for i in 0..executors {
            let (flight, grpc) = (free_port(), free_port());
            let child = spawn(
                &[
                    "ballista",
                    "executor",
                    "--scheduler",
                    &format!("ballista://127.0.0.1:{port}"),
                    "--port",
                    &flight.to_string(),
                    "--grpc-port",
                    &grpc.to_string(),
                    "--concurrent-tasks",
                    "2",
                ],
                &cluster.logs.path().join(format!("executor{i}.log")),
            );
            cluster.executors.push(child);
            wait_for_port(flight, "an executor");
        }
        // Executors register with the scheduler as they start; give the last one a moment.
        std::thread::sleep(Duration::from_millis(500));
        cluster
    }

    /// `ballista://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("ballista://127.0.0.1:{}", self.port)
    }

    pub fn engine(&self) -> cohortql::run::cluster::Cluster {
        cohortql::run::cluster::Cluster::parse(&self.url()).unwrap()
    }

    /// What the processes printed, for a failing assertion.
    pub fn log_text(&self) -> String {
        let mut text = String::new();
        for entry in std::fs::read_dir(self.logs.path()).unwrap() {
            let path = entry.unwrap().path();
            text.push_str(&format!(
                "== {}\n{}\n",
                path.display(),
                std::fs::read_to_string(&path).unwrap_or_default()
            ));
        }
        text
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for child in self.executors.iter_mut().chain([&mut self.scheduler]) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
