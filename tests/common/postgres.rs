//! A throwaway PostgreSQL server for the tests that run the generated SQL on a real database:
//! a fresh cluster in a temporary directory, reached only through its Unix socket, stopped when
//! dropped. Needs PostgreSQL's server programs (Debian's `postgresql` package; `.ci/run`
//! installs it) and `psql`.

use cohortql::repo::schema::TABLES;
use cohortql::repo::Repository;
use datafusion::arrow::datatypes::DataType;
use serde_json::Value;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

pub struct Postgres {
    /// Data directory and socket directory.
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// initdb and the server refuse to run as root: as root they run as `postgres`.
    as_postgres: bool,
    schemas: std::cell::Cell<u32>,
    /// The port, which also names the Unix socket.
    port: u16,
}

/// One result of a script: its name (the comment above the query), header and rows, each cell
/// `None` for SQL NULL.
pub struct Output {
    pub name: String,
    pub header: Vec<String>,
    pub rows: Vec<Vec<Option<String>>>,
}

fn server_programs() -> PathBuf {
    if let Some(dir) = std::env::var_os("COHORTQL_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    versions.retain(|p| p.join("initdb").is_file());
    versions.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok())
            .unwrap_or(0)
    });
    versions.pop().unwrap_or_else(|| {
        panic!(
            "PostgreSQL's server programs were not found in /usr/lib/postgresql/*/bin \
             (install Debian's `postgresql` package, as .ci/run does, or set COHORTQL_PG_BIN)"
        )
    })
}

/// A server that also listens on TCP at 127.0.0.1, TLS only there, its certificate signed by
/// a test CA and naming `localhost`; the role `reader` logs in there with a password.
pub struct TlsPostgres {
    pub server: Postgres,
    pub port: u16,
    /// The CA that signed the server's certificate, and one that did not.
    pub ca: PathBuf,
    pub other_ca: PathBuf,
    pub reader_password: &'static str,
}

impl TlsPostgres {
    pub fn start() -> TlsPostgres {
        let certs = tempfile::tempdir().unwrap().keep();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&certs)
                .output()
                .expect("openssl (Debian's openssl package; .ci/run installs it)");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let key = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        for ca in ["ca", "other_ca"] {
            let (k, c) = (format!("{ca}.key"), format!("{ca}.crt"));
            let mut args = vec![
                "req",
                "-x509",
                "-days",
                "3650",
                "-subj",
                "/CN=cohortql test CA",
            ];
            args.extend(key);
            args.extend(["-keyout", &k, "-out", &c]);
            openssl(&args);
        }
        let mut args = vec![
            "req",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ];
        args.extend(key);
        openssl(&args);
        std::fs::write(certs.join("san.ext"), "subjectAltName=DNS:localhost\n").unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "3650",
            "-extfile",
            "san.ext",
            "-out",
            "server.crt",
        ]);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let hba = "local all all trust\n\
                   hostssl all postgres 127.0.0.1/32 trust\n\
                   hostssl all reader 127.0.0.1/32 scram-sha-256\n\
                   hostnossl all all 127.0.0.1/32 reject\n";
        let server = Postgres::start_with(
            port,
            &format!(
                "-c listen_addresses=127.0.0.1 -c ssl=on \
                 -c ssl_cert_file={0}/server.crt -c ssl_key_file={0}/server.key",
                certs.display()
            ),
            Some(hba),
            Some(&certs),
        );
        let reader_password = "right-horse-battery";
        server.psql(&format!(
            "CREATE ROLE reader LOGIN SUPERUSER PASSWORD '{reader_password}';"
        ));
        TlsPostgres {
            server,
            port,
            ca: certs.join("ca.crt"),
            other_ca: certs.join("other_ca.crt"),
            reader_password,
        }
    }
}

impl Postgres {
    pub fn start() -> Postgres {
        Postgres::start_with(5432, "-c listen_addresses=", None, None)
    }

    /// A server with further options, its own `pg_hba.conf`, and a directory of files (keys)
    /// the server must own.
    fn start_with(
        port: u16,
        options: &str,
        hba: Option<&str>,
        owned: Option<&std::path::Path>,
    ) -> Postgres {
        let bin = server_programs();
        let dir = tempfile::Builder::new()
            .prefix("cohortql-pg")
            .tempdir()
            .unwrap();
        let as_postgres = std::fs::metadata("/proc/self").unwrap().uid() == 0;
        if as_postgres {
            let status = Command::new("chown")
                .args(["postgres:", dir.path().to_str().unwrap()])
                .status()
                .unwrap();
            assert!(status.success(), "chown to the postgres user");
        }
        let server = Postgres {
            dir,
            bin,
            as_postgres,
            schemas: std::cell::Cell::new(0),
            port,
        };
        let data = server.data_dir();
        server.server_program(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        );
        if let Some(hba) = hba {
            std::fs::write(data.join("pg_hba.conf"), hba).unwrap();
        }
        if let Some(dir) = owned {
            for f in std::fs::read_dir(dir).unwrap() {
                let path = f.unwrap().path();
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            }
            if as_postgres {
                let status = Command::new("chown")
                    .args(["-R", "postgres:", dir.to_str().unwrap()])
                    .status()
                    .unwrap();
                assert!(status.success(), "chown to the postgres user");
                // The client (this user) reads the CA certificates.
                for ca in ["ca.crt", "other_ca.crt"] {
                    use std::os::unix::fs::PermissionsExt;
                    let _ = std::fs::set_permissions(
                        dir.join(ca),
                        std::fs::Permissions::from_mode(0o644),
                    );
                }
            }
        }
        let options = format!(
            "-k {} -c port={port} {options} -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c max_stack_depth=7MB",
            server.dir.path().display()
        );
        let log = server.dir.path().join("server.log");
        server.server_program(
            "pg_ctl",
            &[
                "start",
                "-w",
                "-D",
                data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-o",
                &options,
            ],
        );
        server
    }

    /// The URL of a schema of this server, as `--repo` takes it: its Unix socket, user and
    /// database `postgres`.
    pub fn url(&self, schema: &str) -> String {
        format!(
            "postgresql://postgres@/postgres?host={}&schema={schema}{}",
            self.dir.path().display(),
            if self.port == 5432 {
                String::new()
            } else {
                format!("&port={}", self.port)
            }
        )
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn server_program(&self, name: &str, args: &[&str]) {
        let program = self.bin.join(name);
        let mut command = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        let out = command
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
        assert!(
            out.status.success(),
            "{name} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs SQL (and psql commands) through psql, stopping at the first error; returns what
    /// psql printed, results as CSV.
    pub fn psql(&self, input: &str) -> String {
        self.run_psql(input, None, &std::env::temp_dir())
    }

    /// Runs a script file as a user would (`psql -f script.sql`) on a schema, from the
    /// directory `cwd`, stopping at the first error; returns what psql printed, results as CSV.
    pub fn psql_file(&self, schema: &str, script: &str, cwd: &std::path::Path) -> String {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), script).unwrap();
        self.run_psql(
            &format!("SET search_path TO {schema};\n"),
            Some(file.path()),
            cwd,
        )
    }

    /// psql connected to this server as `postgres`, to spawn: a session of its own that the
    /// test holds open (to keep a lock, say).
    pub fn psql_command(&self) -> Command {
        let mut command = Command::new("psql");
        command
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-U", "postgres"])
            .args(["-d", "postgres", "-p", &self.port.to_string(), "-h"])
            .arg(self.dir.path())
            .env_remove("PGPASSWORD");
        command
    }

    fn run_psql(
        &self,
        input: &str,
        file: Option<&std::path::Path>,
        cwd: &std::path::Path,
    ) -> String {
        use std::io::Write;
        let mut command = Command::new("psql");
        command
            .args([
                "-X",
                "-q",
                "--csv",
                "-v",
                "ON_ERROR_STOP=1",
                "-U",
                "postgres",
            ])
            .args(["-d", "postgres", "-p", &self.port.to_string(), "-h"])
            .arg(self.dir.path());
        if let Some(file) = file {
            // The search path first, from standard input, then the file.
            command.args(["-f", "-", "-f"]).arg(file);
        }
        let mut child = command
            .current_dir(cwd)
            .env_remove("PGPASSWORD")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("psql runs");
        let mut stdin = child.stdin.take().unwrap();
        let text = input.to_string();
        let writer = std::thread::spawn(move || stdin.write_all(text.as_bytes()));
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        assert!(
            out.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Copies every OMOP table of a repository (as cohortql reads it) into a new schema, and
    /// returns the schema's name.
    pub fn load(&self, repo: &Repository) -> String {
        let n = self.schemas.get() + 1;
        self.schemas.set(n);
        let schema = format!("repo_{n}");
        let files = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut script = format!("CREATE SCHEMA {schema};\n");
        runtime.block_on(async {
            let ctx = repo.session().await.unwrap();
            for table in TABLES {
                let frame = ctx.table(table.name).await.unwrap();
                let fields = frame.schema().fields().clone();
                let batches = frame.collect().await.unwrap();
                let columns: Vec<String> = fields
                    .iter()
                    .map(|f| format!("{} {}", f.name(), sql_type(f.data_type())))
                    .collect();
                script.push_str(&format!(
                    "CREATE TABLE {schema}.{} ({});\n",
                    table.name,
                    columns.join(", ")
                ));
                let path = files.path().join(format!("{}.csv", table.name));
                let mut writer = datafusion::arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .with_null("\\N".to_string())
                    .build(std::fs::File::create(&path).unwrap());
                for b in &batches {
                    writer.write(b).unwrap();
                }
                script.push_str(&format!(
                    "\\copy {schema}.{} FROM '{}' WITH (FORMAT csv, HEADER true, NULL '\\N')\n",
                    table.name,
                    path.display()
                ));
            }
        });
        self.psql(&script);
        schema
    }

    /// Runs a script of `cohortql sql --dialect postgres` on a schema; returns the results of
    /// its queries (attrition, cohort, dataset), named by the comment above each.
    pub fn run_script(&self, schema: &str, script: &str) -> Vec<Output> {
        let mut input = format!("SET search_path TO {schema};\n");
        for statement in script.split(";\n\n") {
            let name = statement
                .lines()
                .filter_map(|l| l.strip_prefix("-- "))
                .last()
                .unwrap_or("");
            let body: Vec<&str> = statement
                .lines()
                .filter(|l| !l.starts_with("--") && !l.trim().is_empty())
                .collect();
            if body.is_empty() {
                continue;
            }
            let body = body.join("\n");
            if !body.starts_with("CREATE") {
                input.push_str(&format!("\\echo {MARK}{name}\n"));
            }
            input.push_str(body.trim_end_matches(';'));
            input.push_str(";\n");
        }
        let printed = self.psql(&input);
        printed
            .split(MARK)
            .skip(1)
            .map(|part| {
                let (name, csv) = part.split_once('\n').unwrap();
                let mut records = parse_csv(csv).into_iter();
                let header = records
                    .next()
                    .unwrap_or_default()
                    .into_iter()
                    .map(Option::unwrap_or_default)
                    .collect();
                Output {
                    name: name.to_string(),
                    header,
                    rows: records.collect(),
                }
            })
            .collect()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.data_dir();
        self.server_program(
            "pg_ctl",
            &["stop", "-m", "immediate", "-D", data.to_str().unwrap()],
        );
    }
}

/// Marks where each query's output starts.
const MARK: &str = "@@result ";

fn sql_type(t: &DataType) -> &'static str {
    match t {
        DataType::Int8 | DataType::Int16 | DataType::Int32 => "integer",
        DataType::Int64 | DataType::UInt32 | DataType::UInt64 => "bigint",
        DataType::Float32 | DataType::Float64 => "double precision",
        DataType::Boolean => "boolean",
        DataType::Date32 | DataType::Date64 => "date",
        DataType::Timestamp(_, _) => "timestamp",
        _ => "text",
    }
}

/// psql's CSV: fields separated by commas, quoted when needed with `""` for a quote; an
/// unquoted empty field is NULL.
fn parse_csv(text: &str) -> Vec<Vec<Option<String>>> {
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut field = String::new();
    let (mut quoted, mut was_quoted) = (false, false);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            '"' => {
                quoted = !quoted;
                was_quoted = true;
            }
            ',' if !quoted => {
                record.push(take_field(&mut field, &mut was_quoted));
            }
            '\n' if !quoted => {
                record.push(take_field(&mut field, &mut was_quoted));
                records.push(std::mem::take(&mut record));
            }
            c => field.push(c),
        }
    }
    if !field.is_empty() || !record.is_empty() {
        record.push(take_field(&mut field, &mut was_quoted));
        records.push(record);
    }
    records
}

fn take_field(field: &mut String, was_quoted: &mut bool) -> Option<String> {
    let value = std::mem::take(field);
    let null = value.is_empty() && !*was_quoted;
    *was_quoted = false;
    (!null).then_some(value)
}

/// A result cell as the tests compare values: numbers as numbers, `t`/`f` as `true`/`false`,
/// anything else as text, NULL as null.
pub fn value(cell: &Option<String>) -> Value {
    match cell.as_deref() {
        None => Value::Null,
        Some("t") => Value::from("true"),
        Some("f") => Value::from("false"),
        Some(text) => match text.parse::<f64>() {
            Ok(x) if text.starts_with(|c: char| c.is_ascii_digit() || c == '-') => {
                serde_json::json!(x)
            }
            _ => Value::from(text),
        },
    }
}
