//! A repository opened once for an interactive session: every question the REPL asks of the
//! data, answered in the same DataFusion session.

use super::output::{data_fingerprint, write_outputs, RunInfo, Written};
use super::{execute, explain_plan, sql_script, stage_plans, Attrition, Dialect};
use crate::repo::browse::{search_concepts, table_counts, ConceptHit, TableCount};
use crate::repo::Repository;
use crate::study::Study;
use datafusion::prelude::SessionContext;
use std::path::Path;

/// A repository and its session.
pub struct Workspace {
    pub repo: Repository,
    ctx: SessionContext,
}

impl Workspace {
    pub async fn open(repo: Repository) -> Result<Workspace, String> {
        let ctx = repo.session().await.map_err(|e| e.to_string())?;
        Ok(Workspace { repo, ctx })
    }

    /// The attrition of a study on this repository.
    pub async fn attrition(&self, study: &Study) -> Result<Vec<Attrition>, String> {
        Ok(execute(study, &self.ctx, &|_| {}).await?.attrition)
    }

    /// Runs a study and writes its outputs to `out`.
    pub async fn run_to(
        &self,
        study: &Study,
        text: &str,
        hash: &str,
        out: &Path,
    ) -> Result<(Vec<Attrition>, Written), String> {
        let run = execute(study, &self.ctx, &|_| {}).await?;
        let fingerprint = data_fingerprint(&self.repo)?;
        let info = RunInfo {
            study,
            study_path: Path::new("<repl>"),
            study_text: text,
            study_hash: hash,
            repository: &self.repo.dir,
            data_fingerprint: &fingerprint,
            check_time: std::time::Duration::ZERO,
        };
        let written = write_outputs(out, &info, &run)?;
        Ok((run.attrition, written))
    }

    /// Each stage's logical plan, as text.
    pub async fn plans(&self, study: &Study) -> Result<String, String> {
        let mut text = String::new();
        for (name, plan) in stage_plans(study, &self.ctx).await? {
            let (logical, _, _) = explain_plan(&self.ctx, &plan).await?;
            text.push_str(&format!("== {name} ==\n{logical}\n"));
        }
        Ok(text)
    }

    pub async fn sql(&self, study: &Study, dialect: Dialect) -> Result<String, String> {
        sql_script(study, &self.ctx, dialect).await
    }

    pub async fn tables(&self) -> Result<Vec<TableCount>, String> {
        table_counts(&self.ctx).await.map_err(|e| e.to_string())
    }

    pub async fn concepts(&self, text: &str) -> Result<Vec<ConceptHit>, String> {
        search_concepts(&self.ctx, text, 20)
            .await
            .map_err(|e| e.to_string())
    }
}
