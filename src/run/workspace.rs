//! A repository opened once for an interactive session: every question the REPL asks of the
//! data, answered where the data is: one DataFusion session over files, or a PostgreSQL
//! database (its questions as queries there, its runs as `run_in_database`).

use super::cluster::Cluster;
use super::fingerprint::data_fingerprint;
use super::output::{EngineRecord, OutputDir, RunInfo, Written};
use super::{execute, explain_plan, sql_script, stage_plans, Attrition, Dialect, Execution};
use crate::hash::study_hash;
use crate::repo::browse::{
    concept_name, concepts_starting, search_concepts, table_counts, ConceptHit, TableCount,
};
use crate::repo::quality::run_warnings;
use crate::repo::vocabulary_index::{self, VocabularyIndex};
use crate::repo::Repository;
use crate::study::Study;
use datafusion::prelude::SessionContext;
use std::path::{Path, PathBuf};

/// An error as it may be shown: messages of the engine quote the data, which may hold anything.
fn visible(e: impl ToString) -> String {
    crate::printable::escaped_keeping_lines(&e.to_string()).into_owned()
}

/// A repository and its session.
pub struct Workspace {
    source: Source,
    /// A directory repository's vocabulary index (`index_vocabulary`).
    vocabulary: std::sync::Mutex<IndexState>,
}

/// Where a directory repository's vocabulary index stands. Until it is ready, and if it cannot
/// be built, the vocabulary is asked with queries over its tables, as a database's is.
enum IndexState {
    NotAsked,
    Building(tokio::task::JoinHandle<Result<VocabularyIndex, crate::repo::RepoError>>),
    Ready(std::sync::Arc<VocabularyIndex>),
    /// Why it could not be built, until told (`vocabulary_problem`).
    Failed(Option<String>),
}

/// What `index_vocabulary` found.
#[derive(Debug, PartialEq, Eq)]
pub enum Indexing {
    /// The index was in the cache, built from the data as it is now.
    Cached,
    /// The index is being built in the background, once for this data.
    Building,
    /// A database answers questions of its vocabulary itself.
    NotNeeded,
}

enum Source {
    Files {
        repo: Repository,
        ctx: SessionContext,
        /// The cluster `run_to` runs the stages on, instead of this process.
        cluster: Option<OnCluster>,
    },
    Database(super::database::Connected),
}

/// A cluster the stages run on, and the directory (on a file system every executor reads at
/// the same path) where each run keeps its stages: by default the output directory's parent.
struct OnCluster {
    cluster: Cluster,
    stages: Option<PathBuf>,
}

/// The disclosure rules of one run.
pub struct Disclosure<'a> {
    /// The site's policy tightened by the study.
    pub policy: &'a crate::disclosure::Policy,
    /// Where the site's policy was set, in words.
    pub source: &'a str,
    pub site: &'a crate::site::Site,
    /// `--export-dataset`: `Some(exact dates)`.
    pub export: Option<bool>,
}

/// Claims `out` for a run, telling `note` of leftovers of interrupted runs it removed.
fn claim(out: &Path, note: &dyn Fn(&str)) -> Result<OutputDir, String> {
    let claimed = OutputDir::claim(out)?;
    for leftover in &claimed.removed_leftovers {
        note(&format!(
            "removed {}, left by an interrupted run into {}",
            leftover.display(),
            out.display()
        ));
    }
    Ok(claimed)
}

/// The study with the command line's `--cohort-id`, if any.
fn with_cohort_id(study: &Study, cohort_id: Option<i64>) -> Study {
    let mut effective = study.clone();
    if let Some(id) = cohort_id {
        effective.output.cohort_id = id;
    }
    effective
}

/// Runs a study in a PostgreSQL repository and writes its outputs to `out`, as
/// `Workspace::run_to` does for a directory: the same files and `run.json`, the repository
/// named by host, database and schema (never the password), the fingerprint the database's
/// (`database::fingerprint`), the data checks of the tables read run as queries there. With
/// `write_back`, the cohort is written into that table of the database before the outputs are
/// written, so a refused write leaves no outputs.
#[allow(clippy::too_many_arguments)]
pub async fn run_in_database(
    db: &super::database::Database,
    write_back: Option<&super::database::CohortTable>,
    study: &Study,
    study_path: &Path,
    text: &str,
    check_time: std::time::Duration,
    cohort_id: Option<i64>,
    disclosure: &Disclosure<'_>,
    out: &Path,
    progress: &dyn Fn(&str),
    note: &dyn Fn(&str),
) -> Result<(Execution, Written), String> {
    let claimed = claim(out, note)?;
    let hash = study_hash(study);
    let effective = with_cohort_id(study, cohort_id);
    let study = &effective;
    let run = super::database::execute_in(
        db,
        &crate::results::table1::with_demographics(study),
        progress,
    )
    .await
    .map_err(visible)?;
    progress("checking the data read");
    let connected = db.open().await.map_err(visible)?;
    let warnings = run_warnings(&connected, &run.tables_read, None)
        .await
        .map_err(visible)?;
    for warning in &warnings {
        note(warning);
    }
    progress("fingerprinting the data");
    let fingerprint = super::database::fingerprint(db).await.map_err(visible)?;
    if let Some(table) = write_back {
        progress("writing the cohort back");
        super::database::write_cohort(db, table, study.output.cohort_id, &run)
            .await
            .map_err(visible)?;
        note(&format!(
            "wrote the cohort into {table} as cohort_definition_id {}",
            study.output.cohort_id
        ));
    }
    let info = RunInfo {
        study,
        study_path,
        study_text: text,
        study_hash: &hash,
        cohort_id_from_command_line: cohort_id.is_some(),
        repository: &db.describe(),
        data_fingerprint: &fingerprint,
        data_warnings: &warnings,
        check_time,
        policy: disclosure.policy,
        site_source: disclosure.source,
        site: disclosure.site,
        export: disclosure.export,
        engine: &EngineRecord::Database,
    };
    let written = claimed.write(&info, &run)?;
    Ok((run, written))
}

/// Asks a question of whichever source the workspace reads (`repo::query::Queries`).
macro_rules! on_source {
    ($workspace:expr, $q:ident => $question:expr) => {
        match &$workspace.source {
            Source::Files { ctx: $q, .. } => $question,
            Source::Database($q) => $question,
        }
    };
}

impl Workspace {
    pub async fn open(repo: Repository) -> Result<Workspace, String> {
        let ctx = repo.session().await.map_err(visible)?;
        Ok(Workspace {
            source: Source::Files {
                repo,
                ctx,
                cluster: None,
            },
            vocabulary: std::sync::Mutex::new(IndexState::NotAsked),
        })
    }

    /// A directory repository whose runs (`run_to`) run their stages on a Ballista cluster,
    /// keeping them under `stages` (default: beside the output directory).
    pub async fn open_on_cluster(
        repo: Repository,
        cluster: Cluster,
        stages: Option<&Path>,
    ) -> Result<Workspace, String> {
        let ctx = repo.session().await.map_err(visible)?;
        Ok(Workspace {
            source: Source::Files {
                repo,
                ctx,
                cluster: Some(OnCluster {
                    cluster,
                    stages: stages.map(Path::to_path_buf),
                }),
            },
            vocabulary: std::sync::Mutex::new(IndexState::NotAsked),
        })
    }

    /// A database as the repository: checked and connected once, read-only.
    pub async fn open_database(db: &super::database::Database) -> Result<Workspace, String> {
        Ok(Workspace {
            source: Source::Database(db.open().await.map_err(visible)?),
            vocabulary: std::sync::Mutex::new(IndexState::NotAsked),
        })
    }

    /// Where the repository is, for the REPL's greeting.
    pub fn describe(&self) -> String {
        match &self.source {
            Source::Files { repo, .. } => repo.dir.display().to_string(),
            Source::Database(c) => c.db.describe(),
        }
    }

    /// The session questions are planned on (for files, also the one they run in).
    fn ctx(&self) -> &SessionContext {
        use crate::repo::query::Queries;
        match &self.source {
            Source::Files { ctx, .. } => ctx,
            Source::Database(c) => c.session(),
        }
    }

    /// The attrition of a study on this repository.
    pub async fn attrition(&self, study: &Study) -> Result<Vec<Attrition>, String> {
        let run = match &self.source {
            Source::Files { ctx, .. } => execute(study, ctx, &|_| {}).await,
            Source::Database(c) => super::database::execute_in(&c.db, study, &|_| {}).await,
        };
        Ok(run.map_err(visible)?.attrition)
    }

    /// Runs a study and writes its outputs to `out` (see `run_in_database` for a database).
    #[allow(clippy::too_many_arguments)]
    pub async fn run_to(
        &self,
        study: &Study,
        study_path: &Path,
        text: &str,
        check_time: std::time::Duration,
        cohort_id: Option<i64>,
        disclosure: &Disclosure<'_>,
        out: &Path,
        progress: &dyn Fn(&str),
        note: &dyn Fn(&str),
    ) -> Result<(Execution, Written), String> {
        let (repo, ctx, cluster) = match &self.source {
            Source::Files { repo, ctx, cluster } => (repo, ctx, cluster),
            Source::Database(c) => {
                return run_in_database(
                    &c.db, None, study, study_path, text, check_time, cohort_id, disclosure, out,
                    progress, note,
                )
                .await
            }
        };
        let claimed = claim(out, note)?;
        let hash = study_hash(study);
        let effective = with_cohort_id(study, cohort_id);
        let study = &effective;
        let repo_name = repository_name(repo);
        let copy = repo.clone();
        let fingerprint = tokio::task::spawn_blocking(move || data_fingerprint(&copy));
        // With the columns Table 1 always shows (sex, age at index); no dataset written keeps them.
        let with_demographics = crate::results::table1::with_demographics(study);
        let ran = match cluster {
            None => execute(&with_demographics, ctx, progress)
                .await
                .map(|run| (run, EngineRecord::Embedded)),
            Some(on) => {
                let parent = on.stages.clone().unwrap_or_else(|| {
                    out.parent()
                        .filter(|p| !p.as_os_str().is_empty())
                        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
                });
                super::cluster::execute(&on.cluster, &with_demographics, repo, &parent, progress)
                    .await
                    .map(|done| {
                        let engine = EngineRecord::Cluster {
                            scheduler: on.cluster.describe(),
                            executors: done.executors,
                        };
                        (done.run, engine)
                    })
            }
        };
        let fingerprint = fingerprint
            .await
            .map_err(|_| "the data fingerprint failed".to_string())??;
        let (run, engine) = match ran {
            Ok(ran) => ran,
            Err(message) => return Err(visible(located(ctx, repo, message).await)),
        };
        progress("checking the data read");
        let warnings = run_warnings(ctx, &run.tables_read, run.repeated_person_ids)
            .await
            .map_err(visible)?;
        for warning in &warnings {
            note(warning);
        }
        let info = RunInfo {
            study,
            study_path,
            study_text: text,
            study_hash: &hash,
            cohort_id_from_command_line: cohort_id.is_some(),
            repository: &repo_name,
            data_fingerprint: &fingerprint,
            data_warnings: &warnings,
            check_time,
            policy: disclosure.policy,
            site_source: disclosure.source,
            site: disclosure.site,
            export: disclosure.export,
            engine: &engine,
        };
        let written = claimed.write(&info, &run)?;
        Ok((run, written))
    }

    /// Each stage's logical plan, as text; in a database, the plan PostgreSQL makes of each
    /// stage's SQL.
    pub async fn plans(&self, study: &Study) -> Result<String, String> {
        if let Source::Database(c) = &self.source {
            return super::database::explain_in(&c.db, study, false).await;
        }
        let (facts, _) = super::data_facts(self.ctx()).await?;
        let mut text = String::new();
        for (name, plan) in stage_plans(study, self.ctx(), facts).await? {
            let (logical, _, _) = explain_plan(self.ctx(), &plan).await?;
            text.push_str(&format!("== {name} ==\n{logical}\n"));
        }
        Ok(text)
    }

    pub async fn sql(&self, study: &Study, dialect: Dialect) -> Result<String, String> {
        let empty;
        let ctx = match &self.source {
            Source::Files { ctx, .. } => ctx,
            // The stages are planned on every CDM table, as `cohortql sql` plans them.
            Source::Database(_) => {
                empty = crate::repo::empty_session().map_err(visible)?;
                &empty
            }
        };
        sql_script(study, ctx, dialect).await
    }

    pub async fn tables(&self) -> Result<Vec<TableCount>, String> {
        on_source!(self, q => table_counts(q).await).map_err(visible)
    }

    /// Opens a directory repository's vocabulary index from `cache`, or starts building it
    /// there in the background (a full-size vocabulary takes a minute or so, once): questions
    /// of the vocabulary are answered from the index once it is ready.
    pub async fn index_vocabulary(&self, cache: &Path) -> Indexing {
        let Source::Files { repo, ctx, .. } = &self.source else {
            return Indexing::NotNeeded;
        };
        let dir = vocabulary_index::index_dir(cache, &repo.dir);
        let mut state = self.vocabulary.lock().expect("not poisoned");
        if let Ok(Some(index)) = VocabularyIndex::open_cached(repo, &dir) {
            *state = IndexState::Ready(std::sync::Arc::new(index));
            return Indexing::Cached;
        }
        let (repo, ctx) = (repo.clone(), ctx.clone());
        *state = IndexState::Building(tokio::spawn(async move {
            VocabularyIndex::open_or_build(&ctx, &repo, &dir).await
        }));
        Indexing::Building
    }

    /// The vocabulary index if it is ready; with `wait`, once a build under way has finished.
    async fn index(&self, wait: bool) -> Option<std::sync::Arc<VocabularyIndex>> {
        let handle = {
            let mut state = self.vocabulary.lock().expect("not poisoned");
            match &*state {
                IndexState::Ready(index) => return Some(index.clone()),
                IndexState::Building(h) if wait || h.is_finished() => {}
                _ => return None,
            }
            match std::mem::replace(&mut *state, IndexState::NotAsked) {
                IndexState::Building(h) => h,
                _ => unreachable!("matched above"),
            }
        };
        let outcome = match handle.await {
            Ok(Ok(index)) => IndexState::Ready(std::sync::Arc::new(index)),
            Ok(Err(e)) => IndexState::Failed(Some(visible(e))),
            Err(e) => IndexState::Failed(Some(visible(e))),
        };
        let mut state = self.vocabulary.lock().expect("not poisoned");
        *state = outcome;
        match &*state {
            IndexState::Ready(index) => Some(index.clone()),
            _ => None,
        }
    }

    /// Why the vocabulary index could not be built, the first time it is asked.
    pub fn vocabulary_problem(&self) -> Option<String> {
        match &mut *self.vocabulary.lock().expect("not poisoned") {
            IndexState::Failed(why) => why.take(),
            _ => None,
        }
    }

    /// Concepts matching a name, code or id (see `search_concepts`): from the index, waiting
    /// for it if it is being built.
    pub async fn concepts(&self, text: &str) -> Result<Vec<ConceptHit>, String> {
        if let Some(index) = self.index(true).await {
            return index.search(text, 20).map_err(visible);
        }
        on_source!(self, q => search_concepts(q, text, 20).await).map_err(visible)
    }

    /// Concepts whose name starts with `prefix`, for completion (see `concepts_starting`).
    pub async fn concepts_starting(
        &self,
        prefix: &str,
        domain: Option<&str>,
    ) -> Result<Vec<(i64, String)>, String> {
        if let Some(index) = self.index(false).await {
            return index.starting(prefix, domain, 40).map_err(visible);
        }
        on_source!(self, q => concepts_starting(q, prefix, domain, 40).await).map_err(visible)
    }

    pub async fn concept_name(&self, id: i64) -> Result<Option<String>, String> {
        if let Some(index) = self.index(false).await {
            return index.name_of(id).map_err(visible);
        }
        on_source!(self, q => concept_name(q, id).await).map_err(visible)
    }
}

/// The repository as `run.json` names it: the directory's name.
fn repository_name(repo: &Repository) -> String {
    repo.dir.file_name().map_or_else(
        || repo.dir.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// A failed run's message with the table file and column that caused it, when the data
/// did: the engine's own message names neither.
async fn located(ctx: &SessionContext, repo: &Repository, message: String) -> String {
    match crate::repo::quality::locate_bad_data(ctx, repo).await {
        Some(place) => format!("{place}"),
        None => message,
    }
}
