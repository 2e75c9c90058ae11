//! A PostgreSQL OMOP CDM as a repository: the study's stages run inside the database as the
//! SQL `cohortql sql --dialect postgres` writes, each kept in a temporary table, all in one
//! transaction that is rolled back at the end, so nothing is left behind. Only the results come
//! back, as text cast to the types of the plans that made them, into the same `Execution` as a
//! file repository gives. This module is the `Materialiser` of the seam for databases.

use super::{engine, register, to_sql, Dialect, Execution, Materialiser};
use crate::study::Study;
use datafusion::arrow::array::{ArrayRef, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use std::sync::Arc;
use tokio_postgres::{Client, Config, SimpleQueryMessage};

/// Where a PostgreSQL repository is: the connection, and the schemas of the CDM tables and of
/// the vocabulary.
#[derive(Clone, Debug)]
pub struct Database {
    config: Config,
    /// How the connection is encrypted and the server authenticated (`sslmode`).
    tls: Tls,
    /// The schema of the clinical tables (`?schema=`, `--repo-schema`).
    pub schema: String,
    /// The schema of the vocabulary tables, when not the same.
    pub vocab_schema: Option<String>,
}

/// Whether a `--repo` names a database rather than a directory.
pub fn is_database(repo: &str) -> bool {
    repo.starts_with("postgresql://") || repo.starts_with("postgres://")
}

/// A name as SQL may use it unquoted: lower-case letters, digits and underscores, not first a
/// digit. Schema names are spliced into `SET search_path`, so nothing else is accepted.
fn plain_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= 63
}

impl Database {
    /// Parses `postgresql://user@host:port/db?schema=cdm&vocab_schema=vocab` (libpq's URL
    /// form; `host=/socket/dir` for a Unix socket). The password comes from the URL, else
    /// `PGPASSWORD`, else `~/.pgpass`; it is never shown.
    pub fn parse(url: &str) -> Result<Database, String> {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut schema = None;
        let mut vocab_schema = None;
        let mut kept = Vec::new();
        let (mut sslmode, mut sslrootcert) = (None, None);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("schema", v)) => schema = Some(v.to_string()),
                Some(("vocab_schema", v)) => vocab_schema = Some(v.to_string()),
                Some(("sslmode", v)) => sslmode = Some(v.to_string()),
                Some(("sslrootcert", v)) => sslrootcert = Some(v.to_string()),
                _ => kept.push(pair),
            }
        }
        let sslmode = sslmode.or_else(|| std::env::var("PGSSLMODE").ok());
        let sslrootcert = sslrootcert.or_else(|| std::env::var("PGSSLROOTCERT").ok());
        let tls = Tls::from_parameters(sslmode.as_deref(), sslrootcert.as_deref())
            .map_err(|e| format!("--repo {}: {e}", redacted(url)))?;
        let rest = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        let mut config: Config = rest.parse().map_err(|e| {
            format!(
                "--repo {}: not a PostgreSQL connection URL: {e}",
                redacted(url)
            )
        })?;
        if config.get_password().is_none() {
            if let Some(p) = std::env::var_os("PGPASSWORD") {
                config.password(p.to_string_lossy().as_bytes());
            } else if let Some(p) = pgpass(&config) {
                config.password(p.as_bytes());
            }
        }
        if config.get_user().is_none() {
            if let Ok(user) = std::env::var("PGUSER").or_else(|_| std::env::var("USER")) {
                config.user(&user);
            }
        }
        let schema = schema.unwrap_or_else(|| "public".to_string());
        for s in std::iter::once(&schema).chain(vocab_schema.as_ref()) {
            if !plain_identifier(s) {
                return Err(format!(
                    "--repo {}: schema `{s}` is not a plain SQL name (lower-case letters, digits and underscores)",
                    redacted(url)
                ));
            }
        }
        config.ssl_mode(tls.mode());
        // So that a DBA sees what a session is in pg_stat_activity.
        if config.get_application_name().is_none() {
            config.application_name("cohortql");
        }
        Ok(Database {
            config,
            tls,
            schema,
            vocab_schema,
        })
    }

    /// The schemas the command line names (`--repo-schema`, `--vocab-schema`), over the URL's.
    pub fn with_schemas(
        mut self,
        schema: Option<&str>,
        vocab_schema: Option<&str>,
    ) -> Result<Database, String> {
        for s in schema.iter().chain(vocab_schema.iter()) {
            if !plain_identifier(s) {
                return Err(format!(
                    "schema `{s}` is not a plain SQL name (lower-case letters, digits and underscores)"
                ));
            }
        }
        if let Some(s) = schema {
            self.schema = s.to_string();
        }
        if let Some(v) = vocab_schema {
            self.vocab_schema = Some(v.to_string());
        }
        Ok(self)
    }

    /// `host:port/db schema cdm`, for messages and `run.json`: never the password.
    pub fn describe(&self) -> String {
        let host = self
            .config
            .get_hosts()
            .first()
            .map(|h| match h {
                tokio_postgres::config::Host::Tcp(name) => name.clone(),
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            })
            .unwrap_or_else(|| "localhost".into());
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        format!(
            "postgresql {host}:{port}/{} schema {}",
            self.config.get_dbname().unwrap_or("postgres"),
            self.schema
        )
    }

    /// `postgresql database cdm schema cdm`: the data named without where the server is, for
    /// text that leaves the site (the review report).
    pub fn name(&self) -> String {
        format!(
            "postgresql database {} schema {}",
            self.config.get_dbname().unwrap_or("postgres"),
            self.schema
        )
    }

    /// Opens a connection; its driver runs on the current runtime until the client is dropped.
    pub async fn connect(&self) -> Result<Client, String> {
        let (client, connection) = self
            .config
            .connect(self.tls.connector()?)
            .await
            .map_err(|e| format!("cannot connect to {}: {}", self.describe(), reason(&e)))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }
}

/// `sslmode`, as libpq reads it: whether the connection is encrypted, and whether the
/// server's certificate is checked against a root certificate (`sslrootcert`, by default
/// `~/.postgresql/root.crt`) and its host name.
#[derive(Clone, Debug)]
enum Tls {
    /// `disable`: never encrypted.
    Disable,
    /// `prefer` (the default) or `require`: encrypted (`prefer`: if the server can), the
    /// server not authenticated, unless a root certificate is given, which `require` then
    /// checks as `verify-ca` does.
    Encrypt {
        required: bool,
        roots: Option<std::path::PathBuf>,
    },
    /// `verify-ca`, `verify-full`: encrypted, the server's certificate signed by the root
    /// certificate; `verify-full` also checks that it names the host.
    Verify {
        roots: std::path::PathBuf,
        host_name: bool,
    },
}

impl Tls {
    fn from_parameters(mode: Option<&str>, root: Option<&str>) -> Result<Tls, String> {
        let default_root = || {
            std::env::var_os("HOME")
                .map(|h| std::path::Path::new(&h).join(".postgresql/root.crt"))
                .filter(|p| p.is_file())
        };
        let roots = match root {
            Some("system") => {
                return Err(
                    "sslrootcert=system is not supported: give the root certificate's file".into(),
                )
            }
            Some(path) => Some(std::path::PathBuf::from(path)),
            None => default_root(),
        };
        let verify = |host_name| {
            match &roots {
            Some(r) => Ok(Tls::Verify {
                roots: r.clone(),
                host_name,
            }),
            None => Err(format!(
                "sslmode={} needs the root certificate that signed the server's: give sslrootcert=FILE (or put it in ~/.postgresql/root.crt)",
                if host_name { "verify-full" } else { "verify-ca" }
            )),
        }
        };
        match mode.unwrap_or("prefer") {
            "disable" => Ok(Tls::Disable),
            "prefer" => Ok(Tls::Encrypt {
                required: false,
                roots,
            }),
            "require" => Ok(Tls::Encrypt {
                required: true,
                roots,
            }),
            "verify-ca" => verify(false),
            "verify-full" => verify(true),
            "allow" => {
                Err("sslmode=allow is not supported: use prefer, require or verify-full".into())
            }
            other => Err(format!(
                "sslmode={other} is not a mode (disable, prefer, require, verify-ca, verify-full)"
            )),
        }
    }

    fn mode(&self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode;
        match self {
            Tls::Disable => SslMode::Disable,
            Tls::Encrypt {
                required: false, ..
            } => SslMode::Prefer,
            _ => SslMode::Require,
        }
    }

    /// The rustls connector for this mode.
    fn connector(&self) -> Result<tokio_postgres_rustls::MakeRustlsConnect, String> {
        use rustls::client::WebPkiServerVerifier;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let roots = |path: &std::path::Path| -> Result<Arc<rustls::RootCertStore>, String> {
            use rustls::pki_types::{pem::PemObject, CertificateDer};
            let unreadable =
                |e: &dyn std::fmt::Display| format!("sslrootcert {}: {e}", path.display());
            let mut store = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| unreadable(&e))? {
                store
                    .add(cert.map_err(|e| unreadable(&e))?)
                    .map_err(|e| unreadable(&e))?;
            }
            if store.is_empty() {
                return Err(unreadable(&"holds no certificate"));
            }
            Ok(Arc::new(store))
        };
        let verifier: Arc<dyn rustls::client::danger::ServerCertVerifier> = match self {
            Tls::Verify {
                roots: path,
                host_name: true,
            } => WebPkiServerVerifier::builder_with_provider(roots(path)?, provider.clone())
                .build()
                .map_err(|e| e.to_string())?,
            Tls::Verify { roots: path, .. }
            | Tls::Encrypt {
                roots: Some(path), ..
            } => Arc::new(AnyHostName(
                WebPkiServerVerifier::builder_with_provider(roots(path)?, provider.clone())
                    .build()
                    .map_err(|e| e.to_string())?,
            )),
            Tls::Disable | Tls::Encrypt { roots: None, .. } => Arc::new(Unauthenticated(provider)),
        };
        let config = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
    }
}

/// `verify-ca`: the chain is checked, the host name is not.
#[derive(Debug)]
struct AnyHostName(Arc<rustls::client::WebPkiServerVerifier>);

/// `prefer` and `require` without a root certificate: encrypted, the server not
/// authenticated (as libpq), though its handshake signatures are checked.
#[derive(Debug)]
struct Unauthenticated(Arc<rustls::crypto::CryptoProvider>);

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

impl ServerCertVerifier for AnyHostName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        use rustls::{CertificateError, Error};
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

impl ServerCertVerifier for Unauthenticated {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A URL with its password replaced, for messages.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if at > s => {
            let credentials = &url[s + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// The server's message of an error (`password authentication failed for user "x"`), else the
/// client's.
fn reason(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text = format!("{text}: {s}");
                source = s.source();
            }
            text
        }
    }
}

/// The password `~/.pgpass` (or `PGPASSFILE`) gives for this connection: lines of
/// `host:port:database:user:password`, `*` matching anything, the first match winning.
fn pgpass(config: &Config) -> Option<String> {
    let path = std::env::var_os("PGPASSFILE")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".pgpass")))?;
    let text = std::fs::read_to_string(path).ok()?;
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(_)) | None => "localhost".to_string(),
    };
    let port = config
        .get_ports()
        .first()
        .copied()
        .unwrap_or(5432)
        .to_string();
    let db = config.get_dbname().unwrap_or("postgres").to_string();
    let user = config.get_user().unwrap_or_default().to_string();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let fields: Vec<&str> = line.splitn(5, ':').collect();
        if let [h, p, d, u, password] = fields[..] {
            let fits = |pattern: &str, value: &str| pattern == "*" || pattern == value;
            if fits(h, &host) && fits(p, &port) && fits(d, &db) && fits(u, &user) {
                return Some(password.to_string());
            }
        }
    }
    None
}

/// The stages kept in temporary tables of one transaction.
struct InDatabase<'a> {
    client: &'a Client,
    ctx: &'a SessionContext,
}

/// The rows of a statement, as text.
async fn simple_rows(
    client: &Client,
    sql: &str,
) -> Result<Vec<tokio_postgres::SimpleQueryRow>, String> {
    let messages = client
        .simple_query(sql)
        .await
        .map_err(|e| format!("the database refused a query: {}", reason(&e)))?;
    Ok(messages
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .collect())
}

impl Materialiser for InDatabase<'_> {
    async fn keep(&self, name: &'static str, plan: LogicalPlan) -> Result<LogicalPlan, String> {
        let schema = Arc::new(plan.schema().as_arrow().clone());
        let sql = to_sql(&plan, Dialect::Postgres)?;
        simple_rows(
            self.client,
            &format!("CREATE TEMPORARY TABLE {name} AS\n{sql}"),
        )
        .await?;
        register(self.ctx, name, schema, vec![]).map_err(engine)
    }

    async fn rows(
        &self,
        _name: &'static str,
        plan: LogicalPlan,
    ) -> Result<(SchemaRef, Vec<RecordBatch>), String> {
        let schema: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
        let batches = rows_of(self.client, &plan).await?;
        Ok((schema, batches))
    }
}

/// The rows of a plan, run in the database as the SQL it unparses to, cast to the plan's types.
async fn rows_of(client: &Client, plan: &LogicalPlan) -> Result<Vec<RecordBatch>, String> {
    let schema: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
    let sql = to_sql(plan, Dialect::Postgres)?;
    let rows = simple_rows(client, &sql).await?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let names: Vec<&str> = rows[0].columns().iter().map(|c| c.name()).collect();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for (i, field) in schema.fields().iter().enumerate() {
        // By name where the database kept it (it folds unquoted names to lower case), else
        // by position.
        let at = names
            .iter()
            .position(|n| *n == field.name().as_str())
            .unwrap_or(i);
        let text: StringArray = rows.iter().map(|r| r.get(at)).collect();
        let typed = cast(&text, field.data_type()).map_err(|e| {
            format!(
                "the database gave `{}` values that are not {}: {e}",
                field.name(),
                field.data_type()
            )
        })?;
        columns.push(typed);
    }
    let batch = RecordBatch::try_new(schema, columns).map_err(|e| e.to_string())?;
    Ok(vec![batch])
}

/// A read-only connection for questions about the data (`repo check`, the REPL's browsing, the
/// report's code list): its search path the CDM's schemas, its planning session holding the
/// OMOP tables the database has, with the columns it has.
pub struct Connected {
    client: Client,
    ctx: SessionContext,
    /// The columns of each table of the schemas, with their PostgreSQL types.
    columns: Columns,
    pub db: Database,
}

impl crate::repo::query::Queries for Connected {
    fn session(&self) -> &SessionContext {
        &self.ctx
    }

    async fn rows(&self, plan: LogicalPlan) -> Result<Vec<RecordBatch>, String> {
        rows_of(&self.client, &plan)
            .await
            .map_err(|e| format!("{}: {e}", self.db.describe()))
    }
}

/// `(table, column)` → PostgreSQL type, for the tables of the CDM's schemas.
type Columns = std::collections::HashMap<(String, String), String>;

async fn read_columns(db: &Database, client: &Client) -> Result<Columns, String> {
    let schemas: Vec<&str> = std::iter::once(db.schema.as_str())
        .chain(db.vocab_schema.as_deref())
        .collect();
    let rows = client
        .query(
            "SELECT table_name::text, column_name::text, data_type::text \
             FROM information_schema.columns WHERE table_schema = ANY($1)",
            &[&schemas],
        )
        .await
        .map_err(|e| format!("{}: {}", db.describe(), reason(&e)))?;
    Ok(rows
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect())
}

impl Database {
    /// Connects for questions: the schemas checked, the session read-only.
    pub async fn open(&self) -> Result<Connected, String> {
        let client = self.connect().await?;
        check_schemas(self, &client).await?;
        let columns = read_columns(self, &client).await?;
        client
            .batch_execute(&format!(
                "SET search_path TO {}; SET default_transaction_read_only = on",
                self.search_path()
            ))
            .await
            .map_err(|e| format!("{}: {}", self.describe(), reason(&e)))?;
        let ctx = SessionContext::new();
        for table in crate::repo::schema::TABLES {
            let fields: Vec<_> = table
                .columns
                .iter()
                .filter(|c| columns.contains_key(&(table.name.to_string(), c.name.to_string())))
                .map(|c| datafusion::arrow::datatypes::Field::new(c.name, c.kind.arrow(), true))
                .collect();
            if fields.is_empty() {
                continue;
            }
            let schema = Arc::new(datafusion::arrow::datatypes::Schema::new(fields));
            register(&ctx, table.name, schema, vec![]).map_err(engine)?;
        }
        Ok(Connected {
            client,
            ctx,
            columns,
            db: self.clone(),
        })
    }

    fn search_path(&self) -> String {
        match &self.vocab_schema {
            Some(v) => format!("{}, {v}", self.schema),
            None => self.schema.clone(),
        }
    }
}

/// `repo check` on a database: the tables found (rows, persons, extra and absent columns),
/// the schema problems, then the data-quality checks, each a query run in the database.
pub async fn check_database(db: &Database) -> crate::repo::quality::Report {
    use crate::repo::quality::{cdm_version, data_checks, rows_and_persons, Report, TableReport};
    use crate::repo::query::Queries;
    let mut report = Report {
        repository: db.describe(),
        cdm_version: None,
        persons: 0,
        tables: Vec::new(),
        errors: Vec::new(),
        checks: Vec::new(),
    };
    let connected = match db.open().await {
        Ok(c) => c,
        Err(e) => {
            report.errors.push(e);
            return report;
        }
    };
    report.errors.extend(column_problems(&connected.columns));
    for table in crate::repo::schema::TABLES {
        if !connected.has_table(table.name) {
            continue;
        }
        let of_table: Vec<&str> = connected
            .columns
            .keys()
            .filter(|(t, _)| t == table.name)
            .map(|(_, c)| c.as_str())
            .collect();
        let has_person = of_table.contains(&"person_id");
        let (rows, persons) = match rows_and_persons(&connected, table.name, has_person).await {
            Ok(counts) => counts,
            Err(e) => {
                report.errors.push(e);
                continue;
            }
        };
        let schema = if table.name.starts_with("concept") {
            db.vocab_schema.as_deref().unwrap_or(&db.schema)
        } else {
            &db.schema
        };
        let mut extra: Vec<String> = of_table
            .iter()
            .filter(|c| table.column(c).is_none())
            .map(|c| c.to_string())
            .collect();
        extra.sort();
        report.tables.push(TableReport {
            table: table.name.to_string(),
            file: Some(format!("{schema}.{}", table.name)),
            rows,
            persons,
            extra_columns: extra,
            absent_columns: table
                .columns
                .iter()
                .filter(|c| !c.required && !of_table.contains(&c.name))
                .map(|c| c.name.to_string())
                .collect(),
        });
    }
    if let Some(person) = report.tables.iter().find(|t| t.table == "person") {
        report.persons = person.rows;
    }
    report.cdm_version = cdm_version(&connected).await;
    if report.errors.is_empty() {
        data_checks(&connected, &mut report).await;
    }
    report
}

/// Refuses a schema the database does not have, naming those it has, and a CDM schema
/// without a `person` table.
async fn check_schemas(db: &Database, client: &Client) -> Result<(), String> {
    let schemas: Vec<String> = client
        .query(
            "SELECT schema_name::text FROM information_schema.schemata \
             WHERE schema_name NOT LIKE 'pg\\_%' AND schema_name <> 'information_schema' \
             ORDER BY 1",
            &[],
        )
        .await
        .map_err(|e| format!("{}: {}", db.describe(), reason(&e)))?
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect();
    for s in std::iter::once(&db.schema).chain(db.vocab_schema.as_ref()) {
        if !schemas.contains(s) {
            return Err(format!(
                "{}: the database has no schema `{s}` (it has: {}); name the CDM's with ?schema=",
                db.describe(),
                schemas.join(", ")
            ));
        }
    }
    let person = client
        .query(
            "SELECT 1 FROM information_schema.tables WHERE table_schema = $1 AND table_name = 'person'",
            &[&db.schema],
        )
        .await
        .map_err(|e| format!("{}: {}", db.describe(), reason(&e)))?;
    if person.is_empty() {
        return Err(format!(
            "{}: schema `{}` has no OMOP `person` table: is it the CDM's schema?",
            db.describe(),
            db.schema
        ));
    }
    Ok(())
}

/// Whether a column of PostgreSQL type `pg` holds what the CDM's `kind` says: the stages'
/// SQL does date arithmetic on dates and compares ids as numbers.
fn type_fits(kind: crate::repo::schema::Kind, pg: &str) -> bool {
    use crate::repo::schema::Kind;
    match kind {
        Kind::Integer => matches!(pg, "smallint" | "integer" | "bigint" | "numeric"),
        Kind::Float => matches!(
            pg,
            "smallint" | "integer" | "bigint" | "numeric" | "real" | "double precision"
        ),
        Kind::Text => matches!(pg, "text" | "character varying" | "character"),
        Kind::Date => pg == "date",
        Kind::Datetime => pg.starts_with("timestamp") || pg == "date",
    }
}

/// Refuses, all at once, OMOP tables of the schema whose columns cohortql reads are missing
/// or of another type, naming each table and column; and a schema without an essential table.
async fn check_columns(db: &Database, client: &Client) -> Result<(), String> {
    let problems = column_problems(&read_columns(db, client).await?);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{}: the OMOP tables are not as the CDM specifies:\n  {}",
            db.describe(),
            problems.join("\n  ")
        ))
    }
}

/// The tables and columns cohortql reads that are missing or of another type, one line each.
fn column_problems(columns: &Columns) -> Vec<String> {
    let mut problems = Vec::new();
    for table in crate::repo::schema::TABLES {
        let present = columns.keys().any(|(t, _)| t == table.name);
        if !present {
            if table.essential {
                problems.push(format!("there is no table `{}`", table.name));
            }
            continue;
        }
        for c in table.columns {
            match columns.get(&(table.name.to_string(), c.name.to_string())) {
                None if c.required => problems.push(match c.v53_name {
                    Some(old) if columns.contains_key(&(table.name.to_string(), old.to_string())) => {
                        format!(
                            "`{}.{old}` is the CDM v5.3 name of `{}`: rename it, or give a view with the v5.4 names",
                            table.name, c.name
                        )
                    }
                    _ => format!("`{}.{}` is missing", table.name, c.name),
                }),
                Some(pg) if !type_fits(c.kind, pg) => problems.push(format!(
                    "`{}.{}` is {pg}; the CDM and cohortql read it as {}",
                    table.name,
                    c.name,
                    c.kind.name()
                )),
                _ => {}
            }
        }
    }
    problems
}

/// Connects, checks the schemas and columns, and opens the transaction a study's stages run
/// in, its search path the CDM's schemas and then the temporary tables'.
async fn begin(db: &Database) -> Result<Client, String> {
    let client = db.connect().await?;
    check_schemas(db, &client).await?;
    check_columns(db, &client).await?;
    client
        .batch_execute(&format!(
            "BEGIN; SET LOCAL search_path TO {}, pg_temp",
            db.search_path()
        ))
        .await
        .map_err(|e| format!("{}: {}", db.describe(), reason(&e)))?;
    Ok(client)
}

/// Runs a study in the database: one transaction, the search path set to the CDM schema (and
/// the vocabulary's), every stage a temporary table, everything rolled back at the end.
pub async fn execute_in(
    db: &Database,
    study: &Study,
    progress: &dyn Fn(&str),
) -> Result<Execution, String> {
    let client = begin(db).await?;
    let ctx = crate::repo::empty_session().map_err(|e| e.to_string())?;
    let m = InDatabase {
        client: &client,
        ctx: &ctx,
    };
    // Ctrl-C cancels the statement running on the server (a client that only dies leaves it
    // running there), then the transaction is rolled back like any failure.
    let cancel = client.cancel_token();
    let run = tokio::select! {
        run = super::run_stages(study, &ctx, crate::plan::DataFacts::default(), &m, progress) => run,
        _ = tokio::signal::ctrl_c() => {
            if let Ok(tls) = db.tls.connector() {
                let _ = cancel.cancel_query(tls).await;
            }
            Err("interrupted: the statement running in the database was cancelled, and nothing was kept".to_string())
        }
    };
    // Temporary tables go with the transaction, whatever happened.
    let _ = client.batch_execute("ROLLBACK").await;
    run.map_err(|e| format!("{}: {e}", db.describe()))
}

/// The plan PostgreSQL makes of each stage's SQL (`EXPLAIN`); with `analyze`, the plan as it
/// ran (`EXPLAIN ANALYZE`, which runs the stages). Each stage is kept as a temporary table for
/// the next (empty without `analyze`), and everything is rolled back.
pub async fn explain_in(db: &Database, study: &Study, analyze: bool) -> Result<String, String> {
    let client = begin(db).await?;
    let ctx = crate::repo::empty_session().map_err(|e| e.to_string())?;
    let m = Explaining {
        client: &client,
        ctx: &ctx,
        analyze,
        text: std::sync::Mutex::new(String::new()),
    };
    let run = super::run_stages(study, &ctx, crate::plan::DataFacts::default(), &m, &|_| {}).await;
    let _ = client.batch_execute("ROLLBACK").await;
    run.map_err(|e| format!("{}: {e}", db.describe()))?;
    Ok(m.text.into_inner().expect("not poisoned"))
}

/// Each stage explained by the database rather than (only) run.
struct Explaining<'a> {
    client: &'a Client,
    ctx: &'a SessionContext,
    analyze: bool,
    text: std::sync::Mutex<String>,
}

impl Explaining<'_> {
    async fn explain(&self, name: &str, statement: &str) -> Result<(), String> {
        let options = if self.analyze { "(ANALYZE) " } else { "" };
        let rows = simple_rows(self.client, &format!("EXPLAIN {options}{statement}")).await?;
        let mut text = self.text.lock().expect("not poisoned");
        text.push_str(&format!("== {name} ==\n"));
        for r in rows {
            text.push_str(r.get(0).unwrap_or_default());
            text.push('\n');
        }
        text.push('\n');
        Ok(())
    }
}

impl Materialiser for Explaining<'_> {
    async fn keep(&self, name: &'static str, plan: LogicalPlan) -> Result<LogicalPlan, String> {
        let schema = Arc::new(plan.schema().as_arrow().clone());
        let sql = to_sql(&plan, Dialect::Postgres)?;
        let create = format!("CREATE TEMPORARY TABLE {name} AS\n{sql}");
        if self.analyze {
            self.explain(name, &create).await?;
        } else {
            self.explain(name, &sql).await?;
            self.client
                .batch_execute(&format!("{create}\nWITH NO DATA"))
                .await
                .map_err(|e| format!("the database refused a query: {}", reason(&e)))?;
        }
        register(self.ctx, name, schema, vec![]).map_err(engine)
    }

    async fn rows(
        &self,
        name: &'static str,
        plan: LogicalPlan,
    ) -> Result<(SchemaRef, Vec<RecordBatch>), String> {
        let schema: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
        self.explain(name, &to_sql(&plan, Dialect::Postgres)?)
            .await?;
        Ok((schema, Vec::new()))
    }

    /// The concept sets are looked up as `run` does, unexplained: the stages explained are
    /// then those `run` executes.
    async fn values(
        &self,
        name: &'static str,
        plan: LogicalPlan,
    ) -> Result<Option<Vec<RecordBatch>>, String> {
        let runner = InDatabase {
            client: self.client,
            ctx: self.ctx,
        };
        Ok(Some(runner.rows(name, plan).await?.1))
    }
}

/// The data fingerprint of a database: sha256 over, for each OMOP table in the schema (in the
/// order of `repo::schema::TABLES`), its name, its row count and the sum the database computes
/// over its rows of a 64-bit hash of each row's text (`hashtextextended`, summed exactly as
/// numeric: independent of row order, no sort, one parallel scan). Reruns on unchanged tables
/// give the same fingerprint; a changed, added or deleted row changes it.
pub async fn fingerprint(db: &Database) -> Result<String, String> {
    use sha2::{Digest, Sha256};
    let client = db.connect().await?;
    let present: Vec<String> = client
        .query(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1",
            &[&db.schema],
        )
        .await
        .map_err(|e| format!("{}: {}", db.describe(), reason(&e)))?
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect();
    let mut hasher = Sha256::new();
    for table in crate::repo::schema::TABLES {
        if !present.iter().any(|p| p == table.name) {
            continue;
        }
        let sql = format!(
            "SELECT count(*)::text, coalesce(sum(hashtextextended(t::text, 0)::numeric), 0)::text FROM {}.{} t",
            db.schema, table.name
        );
        let rows = client
            .simple_query(&sql)
            .await
            .map_err(|e| format!("{}: {}", db.describe(), reason(&e)))?;
        for m in rows {
            if let SimpleQueryMessage::Row(r) = m {
                hasher.update(table.name.as_bytes());
                hasher.update([0]);
                hasher.update(r.get(0).unwrap_or_default().as_bytes());
                hasher.update([0]);
                hasher.update(r.get(1).unwrap_or_default().as_bytes());
                hasher.update([0]);
            }
        }
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// An OHDSI cohort table to write a cohort back into: `SCHEMA.TABLE`, both plain SQL names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CohortTable {
    pub schema: String,
    pub table: String,
}

impl CohortTable {
    pub fn parse(text: &str) -> Result<CohortTable, String> {
        match text.split_once('.') {
            Some((schema, table)) if plain_identifier(schema) && plain_identifier(table) => {
                Ok(CohortTable {
                    schema: schema.to_string(),
                    table: table.to_string(),
                })
            }
            _ => Err(format!(
                "--write-cohort {text}: give SCHEMA.TABLE, both plain SQL names (lower-case letters, digits and underscores), e.g. results.cohort"
            )),
        }
    }
}

impl std::fmt::Display for CohortTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.schema, self.table)
    }
}

/// Writes the run's cohort into an OHDSI cohort table, as ATLAS and CohortGenerator do: the
/// table is created if missing (OHDSI's four columns), the rows of `cohort_id` are deleted and
/// the new ones inserted, all in one transaction, so readers see the old cohort or the new one.
pub async fn write_cohort(
    db: &Database,
    table: &CohortTable,
    cohort_id: i64,
    run: &Execution,
) -> Result<(), String> {
    use datafusion::arrow::array::{Array, Date32Array, Int64Array};
    use datafusion::arrow::datatypes::DataType;
    let mut client = db.connect().await?;
    let failed =
        |e: tokio_postgres::Error| format!("{}: writing {table}: {}", db.describe(), reason(&e));
    let transaction = client.transaction().await.map_err(failed)?;
    transaction
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {table} (cohort_definition_id BIGINT NOT NULL, subject_id BIGINT NOT NULL, cohort_start_date DATE NOT NULL, cohort_end_date DATE NOT NULL)"
        ))
        .await
        .map_err(failed)?;
    transaction
        .execute(
            &format!("DELETE FROM {table} WHERE cohort_definition_id = $1"),
            &[&cohort_id],
        )
        .await
        .map_err(failed)?;
    let column = |b: &RecordBatch, name: &str, t: &DataType| -> Result<ArrayRef, String> {
        let c = b
            .column_by_name(name)
            .ok_or_else(|| format!("the cohort has no column {name}"))?;
        cast(c, t).map_err(|e| e.to_string())
    };
    for b in &run.cohort {
        let ids = column(b, "subject_id", &DataType::Int64)?;
        let starts = column(b, "cohort_start_date", &DataType::Date32)?;
        let ends = column(b, "cohort_end_date", &DataType::Date32)?;
        let ids = ids.as_any().downcast_ref::<Int64Array>().expect("cast");
        let starts = starts.as_any().downcast_ref::<Date32Array>().expect("cast");
        let ends = ends.as_any().downcast_ref::<Date32Array>().expect("cast");
        // Numbers and dates only, written by this function: nothing from the study or the data
        // is spliced in as text.
        let mut start = 0;
        while start < b.num_rows() {
            let end = (start + 1000).min(b.num_rows());
            let mut values = Vec::new();
            for i in start..end {
                if ids.is_null(i) || starts.is_null(i) || ends.is_null(i) {
                    return Err("the cohort has a row without a person or a date".into());
                }
                let date = |a: &Date32Array| {
                    a.value_as_date(i)
                        .map(|d| d.to_string())
                        .ok_or_else(|| "a cohort date out of range".to_string())
                };
                values.push(format!(
                    "({cohort_id}, {}, DATE '{}', DATE '{}')",
                    ids.value(i),
                    date(starts)?,
                    date(ends)?
                ));
            }
            transaction
                .batch_execute(&format!(
                    "INSERT INTO {table} (cohort_definition_id, subject_id, cohort_start_date, cohort_end_date) VALUES {}",
                    values.join(", ")
                ))
                .await
                .map_err(failed)?;
            start = end;
        }
    }
    transaction.commit().await.map_err(failed)
}
