//! A PostgreSQL OMOP CDM as a repository, from the command line: Eunomia loaded into the
//! throwaway server gives OHDSI's counts and the same outputs as from files; the fingerprint
//! is stable and names no password; nothing is left in the database; and each fault (no
//! server, no schema, a bad URL) gives a clear message, exit 2 and no output.

mod common;

use cohortql::repo::Repository;
use common::postgres::Postgres;
use common::{all_text, site_file};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_cohortql");

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn cohortql(args: &[&str], dir: &Path) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env("COHORTQL_SITE", site_file())
        .env("NO_COLOR", "1")
        .env_remove("PGPASSWORD")
        .output()
        .unwrap()
}

fn run(study: &str, repo: &str, out: &Path) -> Output {
    let study = root().join(format!("studies/eunomia/{study}.study"));
    cohortql(
        &[
            "run",
            study.to_str().unwrap(),
            "--repo",
            repo,
            "--out",
            out.to_str().unwrap(),
        ],
        out.parent().unwrap(),
    )
}

/// A `run` in the background, its output piped.
fn spawn_run(study: &Path, repo: &str, out: &Path) -> std::process::Child {
    Command::new(BIN)
        .args(["run", study.to_str().unwrap(), "--repo", repo, "--out"])
        .arg(out)
        .current_dir(out.parent().unwrap())
        .env("COHORTQL_SITE", site_file())
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// A session holding an exclusive lock on the schema's `drug_era` for a minute, so that a
/// run's statements wait in the database.
fn hold_a_lock(server: &Postgres, schema: &str) -> std::process::Child {
    server
        .psql_command()
        .args([
            "-c",
            &format!(
                "BEGIN; LOCK TABLE {schema}.drug_era IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(60); COMMIT;"
            ),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// OHDSI's Circe counts of the Eunomia cohorts, and the GI-bleed study's.
const COUNTS: [(&str, u64); 5] = [
    ("celecoxib", 1800),
    ("celecoxib_age40", 569),
    ("celecoxib_age40_male", 266),
    ("celecoxib_censored", 1750),
    ("gi_bleed_new_users", 2630),
];

fn persons(out: &Path) -> u64 {
    let run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("site/run.json")).unwrap()).unwrap();
    run["persons"].as_u64().unwrap()
}

#[test]
fn eunomia_in_postgresql_gives_the_outputs_of_its_files() {
    common::with_big_stack(eunomia_in_postgresql);
}

fn eunomia_in_postgresql() {
    let files = root().join("tests/data/eunomia-gibleed");
    let server = Postgres::start();
    let schema = server.load(&Repository::open(&files).unwrap());
    let url = server.url(&schema);
    let dir = tempfile::tempdir().unwrap();
    for (study, expected) in COUNTS {
        let (db, fs) = (
            dir.path().join(format!("{study}-db")),
            dir.path().join(format!("{study}-files")),
        );
        let o = run(study, &url, &db);
        assert_eq!(o.status.code(), Some(0), "{study}: {}", all_text(&o));
        let o = run(study, files.to_str().unwrap(), &fs);
        assert_eq!(o.status.code(), Some(0), "{study}: {}", all_text(&o));
        assert_eq!(persons(&db), expected, "{study}: OHDSI's count");
        for file in [
            "site/cohort.csv",
            "site/dataset.csv",
            "site/attrition.csv",
            "site/attrition_by_arm.csv",
            "site/inclusion_rules.csv",
            "site/endpoints.csv",
            "site/table1.csv",
            "release/attrition.csv",
            "release/endpoints.csv",
            "release/table1.csv",
        ] {
            let (a, b) = (
                std::fs::read_to_string(db.join(file)).unwrap(),
                std::fs::read_to_string(fs.join(file)).unwrap(),
            );
            assert!(
                a == b,
                "{study}: {file} differs between the database and the files"
            );
        }
        let run_json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(db.join("release/run.json")).unwrap())
                .unwrap();
        let repository = run_json["repository"].as_str().unwrap();
        assert!(
            repository.starts_with("postgresql ")
                && repository.ends_with(&format!("schema {schema}")),
            "{repository}"
        );
    }
    // The fingerprint is the database's, stable over reruns, and changes with the data.
    let fingerprint = |out: &Path| -> String {
        let run: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("site/run.json")).unwrap())
                .unwrap();
        run["data_fingerprint"].as_str().unwrap().to_string()
    };
    let again = dir.path().join("again");
    let o = run("celecoxib", &url, &again);
    assert_eq!(o.status.code(), Some(0), "{}", all_text(&o));
    let before = fingerprint(&again);
    assert_eq!(before, fingerprint(&dir.path().join("celecoxib-db")));
    assert_eq!(before.len(), 64);
    server.psql(&format!(
        "DELETE FROM {schema}.person WHERE person_id = (SELECT min(person_id) FROM {schema}.person);"
    ));
    let o = run("celecoxib", &url, &again);
    assert_eq!(o.status.code(), Some(0), "{}", all_text(&o));
    assert_ne!(
        fingerprint(&again),
        before,
        "the fingerprint ignores a deleted row"
    );
    // Nothing of a run is left in the database.
    let left = server.psql("SELECT count(*) FROM pg_class WHERE relname LIKE 'cohortql%';");
    assert!(left.lines().any(|l| l.trim() == "0"), "{left}");

    // Faults: each names the database, never a password, exits 2 and writes nothing.
    let socket = url
        .split("host=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .to_string();
    let cases = [
        (
            format!("postgresql://postgres:s3cret@/postgres?host=/nonexistent-socket-dir&schema={schema}"),
            "cannot connect to postgresql /nonexistent-socket-dir:5432/postgres",
        ),
        (
            format!("postgresql://postgres@/postgres?host={socket}&schema=no_such_schema"),
            "the database has no schema `no_such_schema`",
        ),
        (
            format!("postgresql://postgres@/postgres?host={socket}&schema=Bad;Schema"),
            "not a plain SQL name",
        ),
        (
            format!("postgresql://postgres@/postgres?host={socket}&schema={schema}&nonsense=1"),
            "not a PostgreSQL connection URL",
        ),
    ];
    for (url, says) in cases {
        let out = dir.path().join("fault");
        let o = run("celecoxib", &url, &out);
        let text = all_text(&o);
        assert_eq!(o.status.code(), Some(2), "{url}: {text}");
        assert!(text.contains(says), "{url}: {text}");
        assert!(
            !text.contains("s3cret"),
            "{url}: the password is shown: {text}"
        );
        assert!(!out.exists(), "{url}: an output was written");
    }
    // Write-back: into the CDM's own cohort table (it exists) and into a new one, replacing
    // only the rows of the cohort id, as ATLAS does.
    let table_rows = |table: &str, id: i64| -> usize {
        let out = server.psql(&format!(
            "SELECT count(*) FROM {table} WHERE cohort_definition_id = {id};"
        ));
        out.lines()
            .filter_map(|l| l.trim().parse().ok())
            .next()
            .unwrap()
    };
    // An existing cohort table holding another cohort.
    server.psql(&format!(
        "CREATE TABLE {schema}.cohort (cohort_definition_id BIGINT NOT NULL, subject_id BIGINT NOT NULL, \
         cohort_start_date DATE NOT NULL, cohort_end_date DATE NOT NULL); \
         INSERT INTO {schema}.cohort VALUES (1, 10, '2001-01-01', '2001-02-01'), (1, 11, '2002-01-01', '2002-02-01');"
    ));
    let others = table_rows(&format!("{schema}.cohort"), 1);
    assert_eq!(others, 2);
    for table in [
        format!("{schema}.cohort"),
        format!("{schema}.cohortql_written"),
    ] {
        for _ in 0..2 {
            let out = dir.path().join("written");
            let study = root().join("studies/eunomia/celecoxib.study");
            let o = cohortql(
                &[
                    "run",
                    study.to_str().unwrap(),
                    "--repo",
                    &url,
                    "--out",
                    out.to_str().unwrap(),
                    "--cohort-id",
                    "7",
                    "--write-cohort",
                    &table,
                ],
                dir.path(),
            );
            assert_eq!(o.status.code(), Some(0), "{table}: {}", all_text(&o));
            assert!(
                all_text(&o).contains("cohort_definition_id 7"),
                "{}",
                all_text(&o)
            );
            let written = std::fs::read_to_string(out.join("site/cohort.csv")).unwrap();
            assert_eq!(
                table_rows(&table, 7),
                written.lines().count() - 1,
                "{table}"
            );
        }
    }
    assert_eq!(
        table_rows(&format!("{schema}.cohort"), 1),
        others,
        "another cohort changed"
    );
    let listed = server.psql(&format!(
        "SELECT subject_id, cohort_start_date, cohort_end_date FROM {schema}.cohortql_written \
         WHERE cohort_definition_id = 7 ORDER BY 1, 2;"
    ));
    let site = std::fs::read_to_string(dir.path().join("written/site/cohort.csv")).unwrap();
    let mut expected: Vec<String> = site
        .lines()
        .skip(1)
        .map(|l| l.splitn(2, ',').nth(1).unwrap().to_string())
        .collect();
    expected.sort_by_key(|l| {
        let id: i64 = l.split(',').next().unwrap().parse().unwrap();
        (id, l.clone())
    });
    let got: Vec<String> = listed
        .lines()
        .filter(|l| l.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .map(String::from)
        .collect();
    assert_eq!(got, expected);
    for (args, says) in [
        (
            vec![
                "--repo",
                files.to_str().unwrap(),
                "--write-cohort",
                "results.cohort",
            ],
            "give --repo postgresql://",
        ),
        (
            vec![
                "--repo",
                url.as_str(),
                "--write-cohort",
                "cohort; DROP TABLE person",
            ],
            "give SCHEMA.TABLE",
        ),
    ] {
        let study = root().join("studies/eunomia/celecoxib.study");
        let mut all = vec!["run", study.to_str().unwrap(), "--out", "refused"];
        all.extend(args);
        let o = cohortql(&all, dir.path());
        assert_eq!(o.status.code(), Some(2), "{}", all_text(&o));
        assert!(all_text(&o).contains(says), "{}", all_text(&o));
        assert!(!dir.path().join("refused").exists());
    }
    // A statement timeout set by the server (here through the URL's `options`) and a column
    // of the wrong type: a message from the database, exit 2, nothing written.
    let timeout = format!(
        "postgresql://postgres@/postgres?host={socket}&schema={schema}&options=-c%20statement_timeout%3D1"
    );
    let broken = server.load(&Repository::open(&files).unwrap());
    server.psql(&format!(
        "ALTER TABLE {broken}.drug_era ALTER COLUMN drug_era_start_date TYPE text;"
    ));
    for (url, says) in [
        (timeout, "statement timeout"),
        (
            server.url(&broken),
            "`drug_era.drug_era_start_date` is text; the CDM and cohortql read it as date",
        ),
    ] {
        let out = dir.path().join("fault");
        let o = run("celecoxib", &url, &out);
        let text = all_text(&o);
        assert_eq!(o.status.code(), Some(2), "{url}: {text}");
        assert!(text.contains(says), "{url}: {text}");
        assert!(!out.exists(), "{url}: an output was written");
    }
    // Ctrl-C while a statement waits in the database (here on a lock another session holds):
    // the statement is cancelled on the server, the run exits 2 and writes nothing.
    let mut holder = hold_a_lock(&server, &schema);
    // The run's statements, waiting on a lock (their text is cut at 1 kB in pg_stat_activity).
    let waiting = |what: &str| -> usize {
        let out = server.psql(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '{what}%';"
        ));
        out.lines()
            .filter_map(|l| l.trim().parse().ok())
            .next()
            .unwrap()
    };
    std::thread::sleep(std::time::Duration::from_millis(500));
    let out = dir.path().join("interrupted");
    let study = root().join("studies/eunomia/celecoxib.study");
    let child = spawn_run(&study, &url, &out);
    let started = std::time::Instant::now();
    while waiting("CREATE TEMPORARY TABLE cohortql") == 0 {
        assert!(
            started.elapsed().as_secs() < 30,
            "the run never waited on the lock: {}",
            server.psql(
                "SELECT pid, state, wait_event_type, left(query, 120) FROM pg_stat_activity;"
            )
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let o = child.wait_with_output().unwrap();
    let text = all_text(&o);
    assert_eq!(o.status.code(), Some(2), "{text}");
    assert!(text.contains("interrupted"), "{text}");
    assert!(!out.exists(), "an interrupted run wrote outputs");
    // The server no longer runs the cancelled statement.
    let started = std::time::Instant::now();
    while waiting("CREATE TEMPORARY TABLE cohortql") > 0 {
        assert!(
            started.elapsed().as_secs() < 10,
            "the statement still waits on the server"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = holder.kill();
    let _ = holder.wait();
    // A connection lost mid-run (here its server process terminated while a statement waits
    // on a lock): exit 2, the database named, nothing written, nothing left in the database.
    let mut holder = hold_a_lock(&server, &schema);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let out = dir.path().join("lost");
    let child = spawn_run(&study, &url, &out);
    let started = std::time::Instant::now();
    while waiting("CREATE TEMPORARY TABLE cohortql") == 0 {
        assert!(
            started.elapsed().as_secs() < 30,
            "the run never waited on the lock"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    server.psql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'cohortql';",
    );
    let o = child.wait_with_output().unwrap();
    let text = all_text(&o);
    assert_eq!(o.status.code(), Some(2), "{text}");
    assert!(
        text.contains("postgresql ") && text.contains(&format!("schema {schema}")),
        "{text}"
    );
    assert!(
        !out.exists(),
        "a run that lost its connection wrote outputs"
    );
    let _ = holder.kill();
    let _ = holder.wait();
    // The terminated server process removes its temporary tables as it exits.
    let started = std::time::Instant::now();
    loop {
        let left = server.psql(
            "SELECT string_agg(relname || ' ' || relpersistence::text, ', ') FROM pg_class WHERE relname LIKE 'cohortql%' AND relpersistence = 't';",
        );
        if left.lines().nth(1).is_none_or(|l| l.trim().is_empty()) {
            break;
        }
        assert!(
            started.elapsed().as_secs() < 20,
            "left in the database: {left}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // The schemas from the command line: the CDM's, and the vocabulary in a schema of its own.
    let split = server.load(&Repository::open(&files).unwrap());
    let mut moves = format!("CREATE SCHEMA {split}_vocab;");
    for table in ["concept", "concept_ancestor", "concept_relationship"] {
        moves.push_str(&format!(
            " ALTER TABLE {split}.{table} SET SCHEMA {split}_vocab;"
        ));
    }
    server.psql(&moves);
    let bare = format!("postgresql://postgres@/postgres?host={socket}");
    let out = dir.path().join("split");
    let study = root().join("studies/eunomia/gi_bleed_new_users.study");
    let vocab = format!("{split}_vocab");
    let o = cohortql(
        &[
            "run",
            study.to_str().unwrap(),
            "--repo",
            &bare,
            "--repo-schema",
            &split,
            "--vocab-schema",
            &vocab,
            "--out",
            out.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(0), "{}", all_text(&o));
    assert_eq!(persons(&out), 2630);
    let o = cohortql(
        &[
            "run",
            study.to_str().unwrap(),
            "--repo",
            files.to_str().unwrap(),
            "--repo-schema",
            "cdm",
            "--out",
            "refused",
        ],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(2), "{}", all_text(&o));
    assert!(
        all_text(&o).contains("name schemas of a database"),
        "{}",
        all_text(&o)
    );
}

/// The commands that ask about the data rather than run a study read a database as they read
/// files: `repo check` runs its checks as queries in the database and finds what it finds in
/// the files.
#[test]
fn questions_about_the_data_are_answered_in_the_database() {
    common::with_big_stack(questions_in_postgresql);
}

fn questions_in_postgresql() {
    let files = root().join("tests/data/eunomia-gibleed");
    let server = Postgres::start();
    let schema = server.load(&Repository::open(&files).unwrap());
    let url = server.url(&schema);
    let dir = tempfile::tempdir().unwrap();

    // repo check: the same tables, counts and check results as from the files.
    let check = |repo: &str| -> serde_json::Value {
        let o = cohortql(&["repo", "check", "--json", repo], dir.path());
        assert_eq!(o.status.code(), Some(0), "{repo}: {}", all_text(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let (db, fs) = (check(&url), check(files.to_str().unwrap()));
    let tables = |r: &serde_json::Value| -> Vec<(String, u64, Option<u64>)> {
        r["tables"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["rows"].as_u64().unwrap() > 0)
            .map(|t| {
                (
                    t["table"].as_str().unwrap().to_string(),
                    t["rows"].as_u64().unwrap(),
                    t["persons"].as_u64(),
                )
            })
            .collect()
    };
    assert_eq!(tables(&db), tables(&fs));
    let checks = |r: &serde_json::Value| -> Vec<(String, String, String, u64)> {
        r["checks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["check"].as_str().unwrap().to_string(),
                    c["table"].as_str().unwrap().to_string(),
                    c["description"].as_str().unwrap().to_string(),
                    c["failing"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    assert!(checks(&fs).len() > 20);
    assert_eq!(checks(&db), checks(&fs));
    assert_eq!(db["persons"].as_u64(), Some(2694));
    assert!(db["repository"]
        .as_str()
        .unwrap()
        .ends_with(&format!("schema {schema}")));
    let person = db["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "person")
        .unwrap();
    assert_eq!(person["file"], format!("{schema}.person"));
    // The text form names the database.
    let o = cohortql(&["repo", "check", &url], dir.path());
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.starts_with("Repository postgresql "), "{text}");

    // The REPL: a study's attrition, concepts and tables, asked in the database.
    let study = root().join("studies/eunomia/celecoxib_age40.study");
    let input = format!(
        ":load {}\n:concept celecoxib\n:tables\n:quit\n",
        study.display()
    );
    let (in_db, in_files) = (
        repl_on(&url, &input, dir.path()),
        repl_on(files.to_str().unwrap(), &input, dir.path()),
    );
    // A file repository lists its absent tables as empty; a database lists the tables it has.
    let present = |text: &str| -> String {
        text.lines()
            .filter(|l| !l.split('│').nth(2).is_some_and(|rows| rows.trim() == "0"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(present(&in_db), present(&in_files));
    assert!(in_db.contains("celecoxib"), "{in_db}");

    // plan: the plans PostgreSQL makes of each stage, and with --analyze how they ran.
    let o = cohortql(
        &["plan", study.to_str().unwrap(), "--repo", &url],
        dir.path(),
    );
    let text = all_text(&o);
    assert_eq!(o.status.code(), Some(0), "{text}");
    assert!(
        text.contains("== cohortql_entries ==") && text.contains("Seq Scan on drug_era"),
        "{text}"
    );
    assert!(!text.contains("actual time"), "{text}");
    let o = cohortql(
        &["plan", study.to_str().unwrap(), "--repo", &url, "--analyze"],
        dir.path(),
    );
    let text = all_text(&o);
    assert_eq!(o.status.code(), Some(0), "{text}");
    assert!(text.contains("actual time"), "{text}");

    // report --repo: the code list looked up in the database's vocabulary.
    let report = |repo: &str, name: &str| -> serde_json::Value {
        let out = dir.path().join(name);
        let o = cohortql(
            &[
                "report",
                study.to_str().unwrap(),
                "--repo",
                repo,
                "--out",
                out.to_str().unwrap(),
            ],
            dir.path(),
        );
        assert_eq!(o.status.code(), Some(0), "{}", all_text(&o));
        serde_json::from_str(&std::fs::read_to_string(out.with_extension("json")).unwrap()).unwrap()
    };
    let (db, fs) = (
        report(&url, "db.html"),
        report(files.to_str().unwrap(), "fs.html"),
    );
    assert_eq!(db["code_list"], fs["code_list"]);
    assert_eq!(db["code_list_looked_up"], true);
    let source = db.to_string();
    assert!(
        source.contains(&format!("postgresql database postgres schema {schema}"))
            && !source.contains("cohortql-pg"),
        "the report names the database without its host"
    );
    // Nothing of these questions is left in the database.
    let left = server.psql("SELECT count(*) FROM pg_class WHERE relname LIKE 'cohortql%';");
    assert!(left.lines().any(|l| l.trim() == "0"), "{left}");
}

/// What the REPL, `plan` and `report --repo` show of a study on Eunomia in the database and in
/// its files.
fn repl_on(repo: &str, input: &str, dir: &Path) -> String {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .args(["repl", "--repo", repo])
        .current_dir(dir)
        .env("COHORTQL_SITE", site_file())
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{repo}: {}", all_text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// TLS as libpq's `sslmode` and `sslrootcert` say, and passwords: on a server that accepts
/// TCP connections only over TLS, `require` connects, `verify-full` connects with the CA that
/// signed the server's certificate and is refused with another, `verify-ca` does not check
/// the host name, `disable` is refused by the server; a wrong password is refused and never
/// shown. Each refusal exits 2 and writes nothing.
#[test]
fn tls_and_passwords() {
    common::with_big_stack(tls_in_postgresql);
}

fn tls_in_postgresql() {
    use common::postgres::TlsPostgres;
    let files = root().join("tests/data/eunomia-gibleed");
    let tls = TlsPostgres::start();
    let schema = tls.server.load(&Repository::open(&files).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let study = root().join("studies/eunomia/celecoxib.study");
    let attempt = |url: &str, password: Option<&str>| -> (Output, PathBuf) {
        let out = dir.path().join("out");
        let _ = std::fs::remove_dir_all(&out);
        let mut command = Command::new(BIN);
        command
            .args(["run", study.to_str().unwrap(), "--repo", url, "--out"])
            .arg(&out)
            .current_dir(dir.path())
            .env("COHORTQL_SITE", site_file())
            .env("NO_COLOR", "1")
            .env("HOME", &home)
            .env_remove("PGPASSWORD")
            .env_remove("PGSSLMODE")
            .env_remove("PGSSLROOTCERT");
        if let Some(p) = password {
            command.env("PGPASSWORD", p);
        }
        (command.output().unwrap(), out)
    };
    let at = |user: &str, host: &str, params: &str| {
        format!(
            "postgresql://{user}@{host}:{}/postgres?schema={schema}{params}",
            tls.port
        )
    };
    let (ca, other) = (tls.ca.display(), tls.other_ca.display());
    let works = [
        at("postgres", "127.0.0.1", "&sslmode=require"),
        at(
            "postgres",
            "localhost",
            &format!("&sslmode=verify-full&sslrootcert={ca}"),
        ),
        at(
            "postgres",
            "127.0.0.1",
            &format!("&sslmode=verify-ca&sslrootcert={ca}"),
        ),
        // The default, as libpq's: encrypted if the server can.
        at("postgres", "127.0.0.1", ""),
    ];
    for url in works {
        let (o, out) = attempt(&url, None);
        assert_eq!(o.status.code(), Some(0), "{url}: {}", all_text(&o));
        assert_eq!(persons(&out), 1800, "{url}");
    }
    let refused = [
        (
            at("postgres", "127.0.0.1", "&sslmode=disable"),
            "no encryption",
        ),
        (
            at(
                "postgres",
                "localhost",
                &format!("&sslmode=verify-full&sslrootcert={other}"),
            ),
            "certificate",
        ),
        // The certificate names localhost, not the address.
        (
            at(
                "postgres",
                "127.0.0.1",
                &format!("&sslmode=verify-full&sslrootcert={ca}"),
            ),
            "certificate",
        ),
        (
            at("postgres", "localhost", "&sslmode=verify-full"),
            "needs the root certificate",
        ),
        (
            at("postgres", "localhost", "&sslmode=allow"),
            "sslmode=allow is not supported",
        ),
        (
            at("postgres", "localhost", "&sslmode=sometimes"),
            "is not a mode",
        ),
        (
            at("reader:wrong-secret", "127.0.0.1", "&sslmode=require"),
            "password authentication failed for user \"reader\"",
        ),
    ];
    for (url, says) in refused {
        let (o, out) = attempt(&url, None);
        let text = all_text(&o);
        assert_eq!(o.status.code(), Some(2), "{url}: {text}");
        assert!(text.contains(says), "{url}: {text}");
        assert!(
            text.contains("postgres"),
            "{url}: the database is not named: {text}"
        );
        assert!(
            !text.contains("wrong-secret"),
            "{url}: the password is shown: {text}"
        );
        assert!(!out.exists(), "{url}: an output was written");
    }
    // The password from PGPASSWORD: wrong, then right.
    let reader = at("reader", "127.0.0.1", "&sslmode=require");
    let (o, out) = attempt(&reader, Some("not-it"));
    let text = all_text(&o);
    assert_eq!(o.status.code(), Some(2), "{text}");
    assert!(
        text.contains("password authentication failed") && !text.contains("not-it"),
        "{text}"
    );
    assert!(!out.exists());
    let (o, out) = attempt(&reader, Some(tls.reader_password));
    assert_eq!(o.status.code(), Some(0), "{}", all_text(&o));
    assert_eq!(persons(&out), 1800);
    let run_json = std::fs::read_to_string(out.join("site/run.json")).unwrap();
    assert!(!run_json.contains(tls.reader_password));
}
