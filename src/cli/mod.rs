//! The `cohortql` command line: argument parsing, reading files, printing results and
//! diagnostics, and exit codes (0 ok, 1 errors in a study, 2 usage or I/O errors).

mod ballista;
mod data;
mod import;
mod repl;
mod report;
mod run;
mod site;

pub use crate::render::{render, render_all};

use crate::compile::{compile_bytes, Compiled};
use crate::syntax::source;
use anstream::{eprint, print};
use clap::{Parser, Subcommand};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// How many diagnostics are printed per file before the rest are only counted.
const MAX_SHOWN: usize = 50;

#[derive(Parser, Debug)]
#[command(
    name = "cohortql",
    version,
    about = "Readable, exact cohort studies over OMOP CDM data"
)]
#[command(propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// The site's configuration file (disclosure policy, export rules, pseudonym secret);
    /// default: $COHORTQL_SITE, else cohortql.toml in the working directory.
    #[arg(long, global = true, value_name = "FILE")]
    site: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check study files and report every error and warning.
    Check {
        /// Study files (`-` reads standard input).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Print diagnostics as JSON lines instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print study files in canonical layout.
    Fmt {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Rewrite the files in place.
        #[arg(long, conflicts_with = "check")]
        write: bool,
        /// Print nothing; exit 1 when a file is not in canonical layout.
        #[arg(long)]
        check: bool,
    },
    /// Explain a study in plain English: population, windows, concept sets, endpoints.
    Explain { file: PathBuf },
    /// Print the sha256 of a study's meaning: layout and comments do not change it.
    Hash {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the syntax tree of a study as JSON.
    Parse { file: PathBuf },
    /// Generate a synthetic OMOP CDM repository (oncology and imaging), deterministically.
    Synth {
        /// How many persons.
        #[arg(long, default_value_t = 10_000)]
        persons: u64,
        /// The random seed: the same arguments give byte-identical files.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// The directory to create (it must not exist, or be empty).
        #[arg(long)]
        out: PathBuf,
        #[arg(long, value_enum, default_value_t = FormatArg::Parquet)]
        format: FormatArg,
        /// Grow the vocabulary to N concepts with filler concepts, synonyms and ancestors (a
        /// full OHDSI vocabulary has about 5,000,000), to measure vocabulary search at size.
        #[arg(long, value_name = "N")]
        full_vocabulary: Option<u64>,
    },
    /// Run a study on a repository: writes the cohort, the dataset and the attrition table.
    Run {
        /// Study files; several run one after another, each into its own directory.
        #[arg(required = true)]
        studies: Vec<PathBuf>,
        /// The repository: a directory, or a PostgreSQL URL (postgresql://user@host/db?schema=cdm);
        /// without it, the built-in demo repository.
        #[arg(long)]
        repo: Option<PathBuf>,
        /// Where to write the outputs: for one study, its directory (default
        /// output/<study name>); for several, the directory that holds one per study (default
        /// output). A previous run's outputs there are replaced.
        #[arg(long)]
        out: Option<PathBuf>,
        /// The cohort table's cohort_definition_id for this run, instead of the study's
        /// `cohort id` (default 1); run.json records which was used.
        #[arg(long, value_parser = clap::value_parser!(i64).range(1..=crate::check::MAX_COHORT_ID))]
        cohort_id: Option<i64>,
        /// A disclosure policy for this run, at least as strict as the site's.
        #[arg(long, value_enum)]
        policy: Option<PolicyArg>,
        /// Also write the dataset under release/ for a trusted third party, as the site's
        /// configuration allows: pseudonyms, and days relative to index instead of dates.
        #[arg(long)]
        export_dataset: bool,
        /// With a PostgreSQL repository: also write the cohort into this OHDSI cohort table
        /// (SCHEMA.TABLE, created if missing), replacing only the rows of its cohort id, as
        /// ATLAS and the HADES packages read it.
        #[arg(long, value_name = "SCHEMA.TABLE")]
        write_cohort: Option<String>,
        /// With a PostgreSQL repository: the schema of the CDM's tables (instead of the URL's
        /// `schema=`; default public).
        #[arg(long)]
        repo_schema: Option<String>,
        /// With a PostgreSQL repository: the schema of the vocabulary tables, when apart.
        #[arg(long)]
        vocab_schema: Option<String>,
        /// Run the stages on an Apache Ballista cluster, given by its scheduler
        /// (ballista://HOST:PORT), instead of in this process; the repository directory must
        /// be at the same path on every executor. See docs/scale.md.
        #[arg(long, value_name = "ballista://HOST:PORT")]
        engine: Option<String>,
        /// With --engine: where each run keeps its stages while it runs, a directory every
        /// executor reads at the same path (default: the output directory's parent).
        #[arg(long, requires = "engine")]
        stage_dir: Option<PathBuf>,
    },
    /// Print each stage's logical, optimised and physical query plan.
    Plan {
        study: PathBuf,
        /// Plan against this repository's files (default: empty OMOP tables; with --analyze,
        /// the demo repository); with a PostgreSQL URL, PostgreSQL's plan of each stage's SQL.
        #[arg(long)]
        repo: Option<PathBuf>,
        /// Run the study and show each stage's plan with the rows and time of every operator.
        #[arg(long)]
        analyze: bool,
        /// With --analyze: run the stages on this Apache Ballista cluster
        /// (ballista://HOST:PORT) and show the plan each ran, stage by stage of the cluster.
        #[arg(long, value_name = "ballista://HOST:PORT", requires = "analyze")]
        engine: Option<String>,
        /// With --engine: where the stages are kept while they run (default: the working
        /// directory).
        #[arg(long, requires = "engine")]
        stage_dir: Option<PathBuf>,
    },
    /// Serve an Apache Ballista cluster that runs cohortql's plans: `ballista scheduler` and
    /// `ballista executor` (this same program, which knows cohortql's functions). See
    /// docs/scale.md.
    Ballista {
        #[command(subcommand)]
        command: BallistaCommand,
    },
    /// Write a study as a SQL script for a database holding the OMOP tables.
    Sql {
        study: PathBuf,
        #[arg(long, value_enum, default_value_t = DialectArg::Postgres)]
        dialect: DialectArg,
    },
    /// Explore a repository and build a study line by line, with the attrition after each step.
    Repl {
        /// A study to start from.
        study: Option<PathBuf>,
        /// The repository: a directory, or a PostgreSQL URL; without it, the built-in demo
        /// repository.
        #[arg(long)]
        repo: Option<PathBuf>,
    },
    /// Bring cohort definitions from other tools: `import atlas FILE.json` writes an ATLAS /
    /// Circe definition as a study file with exactly its meaning, or names what it cannot say.
    Import {
        #[command(subcommand)]
        command: ImportCommand,
    },
    /// Take studies to other tools: `export atlas STUDY` writes the study's cohort as an ATLAS /
    /// Circe cohort expression (JSON), or names what Circe cannot say.
    Export {
        #[command(subcommand)]
        command: ExportCommand,
    },
    /// Work with OMOP repositories.
    Repo {
        #[command(subcommand)]
        command: RepoCommand,
    },
    /// The site's configuration: its disclosure policy and pseudonym secret.
    Site {
        #[command(subcommand)]
        command: SiteCommand,
    },
    /// Print the endpoint results of a run (its release/, as released).
    Results {
        /// A run's output directory, or its release/.
        dir: PathBuf,
    },
    /// Write the review report of a study: its protocol (from the study file alone) or, with
    /// --run, the protocol and the run's released results; one self-contained HTML file, and
    /// its content as JSON beside it.
    Report {
        /// The study file (with --run, the run's own study.study when left out).
        study: Option<PathBuf>,
        /// Look up concept names, codes and vocabularies, and the data source's description,
        /// in this repository.
        #[arg(long)]
        repo: Option<PathBuf>,
        /// A run's output directory (or its release/): add its released results.
        #[arg(long)]
        run: Option<PathBuf>,
        /// The HTML file to write; the JSON goes beside it (report.html → report.json).
        #[arg(long)]
        out: PathBuf,
    },
    /// Check what a run would release.
    Release {
        #[command(subcommand)]
        command: ReleaseCommand,
    },
}

#[derive(Subcommand, Debug)]
enum BallistaCommand {
    /// Run a scheduler until stopped: clients give it as `--engine ballista://HOST:PORT`.
    Scheduler {
        /// The address to listen on (0.0.0.0 for every interface).
        #[arg(long, default_value = "127.0.0.1")]
        bind: String,
        #[arg(long, default_value_t = crate::run::cluster::DEFAULT_PORT)]
        port: u16,
        /// The host name executors reach the scheduler by (default: --bind).
        #[arg(long)]
        external_host: Option<String>,
        /// The least severe of Ballista's log records printed on standard error (error, warn,
        /// info, debug, trace).
        #[arg(long, default_value = "warn")]
        log_level: String,
    },
    /// Run an executor until stopped, registered with a scheduler.
    Executor {
        /// The scheduler: ballista://HOST:PORT.
        #[arg(long, default_value = "ballista://127.0.0.1:50050")]
        scheduler: String,
        /// The address to listen on (0.0.0.0 for every interface).
        #[arg(long, default_value = "127.0.0.1")]
        bind: String,
        /// The host name the scheduler and other executors reach this one by (default: --bind).
        #[arg(long)]
        external_host: Option<String>,
        /// The Arrow Flight port (results and shuffles).
        #[arg(long, default_value_t = 50051)]
        port: u16,
        /// The port tasks are sent to.
        #[arg(long, default_value_t = 50052)]
        grpc_port: u16,
        /// Where shuffle files go (default: a temporary directory).
        #[arg(long)]
        work_dir: Option<PathBuf>,
        /// Tasks run at once (default: the machine's cores).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=4096))]
        concurrent_tasks: Option<u64>,
        /// The least severe of Ballista's log records printed on standard error (error, warn,
        /// info, debug, trace).
        #[arg(long, default_value = "warn")]
        log_level: String,
    },
}

#[derive(Subcommand, Debug)]
enum SiteCommand {
    /// Create the site's configuration with a new random secret (readable by its owner only).
    Init {
        #[arg(long, value_enum, default_value_t = PolicyArg::Ohdsi)]
        policy: PolicyArg,
        /// What `run --export-dataset` may write.
        #[arg(long, value_enum, default_value_t = ExportArg::Never)]
        dataset_export: ExportArg,
    },
    /// Print the site's policy and export rules (never its secret).
    Show,
}

#[derive(Subcommand, Debug)]
enum ReleaseCommand {
    /// Report every count, difference, column, date or file in a release/ directory that the
    /// site's policy does not allow; exit 1 when there is any.
    Check {
        /// A run's release/ directory (or the run's output directory holding it).
        dir: PathBuf,
    },
}

/// The disclosure policies a site or a run may name.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub(crate) enum PolicyArg {
    Ohdsi,
    Opensafely,
    Strict,
}

impl PolicyArg {
    pub(crate) fn name(self) -> &'static str {
        match self {
            PolicyArg::Ohdsi => "ohdsi",
            PolicyArg::Opensafely => "opensafely",
            PolicyArg::Strict => "strict",
        }
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum ExportArg {
    Never,
    RelativeDates,
    ExactDates,
}

#[derive(Subcommand, Debug)]
enum ImportCommand {
    /// An ATLAS / Circe cohort definition (JSON: the cohort expression, or ATLAS's export
    /// holding it as `expression`).
    Atlas {
        file: PathBuf,
        /// The study's name (default: the definition's `name`, else the file's name).
        #[arg(long)]
        name: Option<String>,
        /// Write the study here (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Leave out what cannot be said exactly, with a warning comment in the study and on
        /// standard error, instead of refusing the definition.
        #[arg(long)]
        lenient: bool,
    },
}

#[derive(Subcommand, Debug)]
enum ExportCommand {
    /// The study's cohort as an ATLAS / Circe cohort expression, which ATLAS opens and
    /// `import atlas` reads back into the same study.
    Atlas {
        study: PathBuf,
        /// Write the JSON here (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum RepoCommand {
    /// Report a repository's tables and check its data quality.
    Check {
        /// The repository: a directory, or a PostgreSQL URL; without it, the built-in demo
        /// repository.
        dir: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print where the built-in demo repository is cached, generating it if needed.
    Demo,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum DialectArg {
    Postgres,
    Mysql,
    Sqlite,
    Duckdb,
    Bigquery,
}

impl From<DialectArg> for crate::run::Dialect {
    fn from(d: DialectArg) -> Self {
        use crate::run::Dialect;
        match d {
            DialectArg::Postgres => Dialect::Postgres,
            DialectArg::Mysql => Dialect::Mysql,
            DialectArg::Sqlite => Dialect::Sqlite,
            DialectArg::Duckdb => Dialect::Duckdb,
            DialectArg::Bigquery => Dialect::Bigquery,
        }
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum FormatArg {
    Parquet,
    Csv,
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let outcome = match cli.command {
        Command::Check { files, json } => check(&files, json),
        Command::Fmt {
            files,
            write,
            check,
        } => fmt(&files, write, check),
        Command::Explain { file } => explain(&file, cli.site.as_deref()),
        Command::Hash { files } => hash(&files),
        Command::Parse { file } => parse(&file),
        Command::Synth {
            persons,
            seed,
            out,
            format,
            full_vocabulary,
        } => data::synth(persons, seed, &out, format, full_vocabulary.unwrap_or(0)),
        Command::Run {
            studies,
            repo,
            out,
            cohort_id,
            policy,
            export_dataset,
            write_cohort,
            repo_schema,
            vocab_schema,
            engine,
            stage_dir,
        } => run::run_all(
            &studies,
            repo.as_deref(),
            out.as_deref(),
            cohort_id,
            &run::Options {
                site: cli.site.as_deref(),
                policy: policy.map(PolicyArg::name),
                export_dataset,
                write_cohort: write_cohort.as_deref(),
                repo_schema: repo_schema.as_deref(),
                vocab_schema: vocab_schema.as_deref(),
                engine: engine.as_deref(),
                stage_dir: stage_dir.as_deref(),
            },
        ),
        Command::Repl { study, repo } => {
            repl::repl(repo.as_deref(), study.as_deref(), cli.site.as_deref())
        }
        Command::Plan {
            study,
            repo,
            analyze,
            engine,
            stage_dir,
        } => run::plan(
            &study,
            repo.as_deref(),
            analyze,
            engine.as_deref(),
            stage_dir.as_deref(),
        ),
        Command::Ballista {
            command:
                BallistaCommand::Scheduler {
                    bind,
                    port,
                    external_host,
                    log_level,
                },
        } => ballista::scheduler(crate::run::cluster::SchedulerOptions {
            bind,
            port,
            external_host,
            log_level,
        }),
        Command::Ballista {
            command:
                BallistaCommand::Executor {
                    scheduler,
                    bind,
                    external_host,
                    port,
                    grpc_port,
                    work_dir,
                    concurrent_tasks,
                    log_level,
                },
        } => match crate::run::cluster::Cluster::parse(&scheduler) {
            Err(e) => Err(e.replace("--engine", "--scheduler")),
            Ok(scheduler) => ballista::executor(crate::run::cluster::ExecutorOptions {
                scheduler,
                bind,
                external_host,
                port,
                grpc_port,
                work_dir,
                concurrent_tasks: concurrent_tasks.map(|n| n as usize),
                log_level,
            }),
        },
        Command::Sql { study, dialect } => run::sql(&study, dialect.into()),
        Command::Import {
            command:
                ImportCommand::Atlas {
                    file,
                    name,
                    out,
                    lenient,
                },
        } => import::atlas(&file, name.as_deref(), out.as_deref(), lenient),
        Command::Export {
            command: ExportCommand::Atlas { study, out },
        } => export_atlas(&study, out.as_deref()),
        Command::Repo {
            command: RepoCommand::Check { dir, json },
        } => data::repo_check(dir.as_deref(), json),
        Command::Repo {
            command: RepoCommand::Demo,
        } => data::demo(),
        Command::Site {
            command:
                SiteCommand::Init {
                    policy,
                    dataset_export,
                },
        } => site::init(
            cli.site.as_deref(),
            policy.name(),
            match dataset_export {
                ExportArg::Never => crate::disclosure::Export::Never,
                ExportArg::RelativeDates => crate::disclosure::Export::RelativeDates,
                ExportArg::ExactDates => crate::disclosure::Export::ExactDates,
            },
        ),
        Command::Site {
            command: SiteCommand::Show,
        } => site::show(cli.site.as_deref()),
        Command::Results { dir } => crate::results::report::report(&dir).map(|text| {
            anstream::println!("{text}");
            Status::Ok
        }),
        Command::Report {
            study,
            repo,
            run,
            out,
        } => report::report(
            study.as_deref(),
            repo.as_deref(),
            run.as_deref(),
            &out,
            cli.site.as_deref(),
        ),
        Command::Release {
            command: ReleaseCommand::Check { dir },
        } => site::release_check(&dir, cli.site.as_deref()),
    };
    match outcome {
        Ok(Status::Ok) => ExitCode::SUCCESS,
        Ok(Status::StudyErrors) => ExitCode::from(1),
        Ok(Status::DataErrors) => ExitCode::from(2),
        Err(message) => {
            eprint!(
                "{}",
                io_error(&crate::printable::escaped_keeping_lines(&message))
            );
            ExitCode::from(2)
        }
    }
}

pub(crate) enum Status {
    Ok,
    StudyErrors,
    /// Errors in the data, already reported (`repo check`).
    DataErrors,
}

fn io_error(message: &str) -> String {
    let style = anstyle::AnsiColor::Red.on_default().bold();
    format!("{style}error{style:#}: {message}\n")
}

fn display(path: &Path) -> String {
    if path == Path::new("-") {
        "<stdin>".to_string()
    } else {
        path.display().to_string()
    }
}

fn load(path: &Path) -> Result<Compiled, String> {
    Ok(compile_bytes(&source::read_study_file(path)?))
}

/// Prints a file's diagnostics to standard error; returns whether any was an error.
fn report(path: &Path, compiled: &Compiled) -> bool {
    let name = display(path);
    let mut out = String::new();
    for d in compiled.diagnostics.iter().take(MAX_SHOWN) {
        out.push_str(&render(d, &name, &compiled.text));
        out.push('\n');
    }
    let errors = compiled.diagnostics.iter().filter(|d| d.is_error()).count();
    let warnings = compiled.diagnostics.len() - errors;
    if compiled.diagnostics.len() > MAX_SHOWN {
        out.push_str(&format!(
            "… and {} more not shown\n",
            compiled.diagnostics.len() - MAX_SHOWN
        ));
    }
    if errors > 0 {
        out.push_str(&format!(
            "{name}: {} and {}\n",
            count(errors, "error"),
            count(warnings, "warning")
        ));
    }
    eprint!("{out}");
    errors > 0
}

fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

fn check(files: &[PathBuf], json: bool) -> Result<Status, String> {
    let mut failed = false;
    for path in files {
        let compiled = load(path)?;
        if json {
            let mut stdout = std::io::stdout().lock();
            for d in &compiled.diagnostics {
                let (line, column) = d
                    .span
                    .map_or((0, 0), |s| source::line_col(&compiled.text, s.start));
                let record = serde_json::json!({
                    "file": display(path),
                    "line": line,
                    "column": column,
                    "code": d.code.id(),
                    "severity": if d.is_error() { "error" } else { "warning" },
                    "message": d.message,
                    "help": d.help,
                });
                writeln!(stdout, "{record}").map_err(|e| e.to_string())?;
            }
            failed |= compiled.has_errors();
        } else {
            failed |= report(path, &compiled);
            if !compiled.has_errors() {
                let warnings = compiled.diagnostics.len();
                let acknowledged = compiled.study.as_ref().map_or(0, |s| s.acknowledged.len());
                let mut notes = Vec::new();
                if warnings > 0 {
                    notes.push(count(warnings, "warning"));
                }
                if acknowledged > 0 {
                    notes.push(format!("{} acknowledged", count(acknowledged, "warning")));
                }
                let note = if notes.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", notes.join(", "))
                };
                print!("{}: ok{note}\n", display(path));
            }
        }
    }
    Ok(if failed {
        Status::StudyErrors
    } else {
        Status::Ok
    })
}

fn fmt(files: &[PathBuf], write: bool, check_only: bool) -> Result<Status, String> {
    let mut unformatted = false;
    let mut failed = false;
    for path in files {
        let bytes = source::read_study_file(path)?;
        let compiled = compile_bytes(&bytes);
        let Some(file) = &compiled.file else {
            report(path, &compiled);
            failed = true;
            continue;
        };
        let formatted = crate::fmt::format_study(file, &source::comments(&compiled.text));
        if check_only {
            if formatted.as_bytes() != bytes.as_slice() {
                eprint!("{}: not in canonical layout\n", display(path));
                unformatted = true;
            }
        } else if write && path != Path::new("-") {
            if formatted.as_bytes() != bytes.as_slice() {
                crate::repo::write::write_atomically(path, formatted.as_bytes())?;
            }
        } else {
            print!("{formatted}");
        }
    }
    Ok(if failed || unformatted {
        Status::StudyErrors
    } else {
        Status::Ok
    })
}

pub(crate) fn checked(path: &Path) -> Result<Result<(Compiled, crate::study::Study), ()>, String> {
    let mut compiled = load(path)?;
    let failed = report(path, &compiled);
    match compiled.study.take() {
        Some(study) if !failed => Ok(Ok((compiled, study))),
        _ => Ok(Err(())),
    }
}

fn explain(path: &Path, site: Option<&Path>) -> Result<Status, String> {
    match checked(path)? {
        Ok((_, study)) => {
            let (_, rules) = site::rules(site, false)?;
            print!("{}", crate::explain::explain_under(&study, &rules));
            Ok(Status::Ok)
        }
        Err(()) => Ok(Status::StudyErrors),
    }
}

/// `export atlas`: the cohort as Circe JSON; what Circe cannot say is named and nothing written.
fn export_atlas(path: &Path, out: Option<&Path>) -> Result<Status, String> {
    let study = match checked(path)? {
        Ok((_, study)) => study,
        Err(()) => return Ok(Status::StudyErrors),
    };
    let shown = display(path);
    match crate::atlas::export::export(&study) {
        Err(unsaid) => {
            for u in &unsaid {
                anstream::eprintln!("{shown}: {}", crate::printable::escaped(&u.to_string()));
            }
            anstream::eprintln!(
                "{shown}: not exported: {} construct{} Circe cannot say",
                unsaid.len(),
                if unsaid.len() == 1 { "" } else { "s" }
            );
            Ok(Status::StudyErrors)
        }
        Ok(exported) => {
            for part in &exported.left_out {
                anstream::eprintln!(
                    "{shown}: note: {part} left out: a Circe cohort definition has none"
                );
            }
            match out {
                Some(file) => crate::repo::write::write_atomically(file, exported.json.as_bytes())?,
                None => print!("{}", exported.json),
            }
            Ok(Status::Ok)
        }
    }
}

fn hash(files: &[PathBuf]) -> Result<Status, String> {
    let mut failed = false;
    for path in files {
        match checked(path)? {
            Ok((_, study)) => print!("{}  {}\n", crate::hash::study_hash(&study), display(path)),
            Err(()) => failed = true,
        }
    }
    Ok(if failed {
        Status::StudyErrors
    } else {
        Status::Ok
    })
}

fn parse(path: &Path) -> Result<Status, String> {
    let compiled = load(path)?;
    match &compiled.file {
        Some(file) => {
            let json = serde_json::to_string_pretty(file).map_err(|e| e.to_string())?;
            print!("{json}\n");
            Ok(Status::Ok)
        }
        None => {
            report(path, &compiled);
            Ok(Status::StudyErrors)
        }
    }
}
