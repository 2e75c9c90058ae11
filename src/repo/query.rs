//! Where a repository's questions are answered: the seam between what asks (`repo check`, the
//! REPL's browsing, the report's code list) and the engine that holds the data. Questions are
//! built as DataFusion plans (or DataFusion SQL) on a session whose tables have the repository's
//! schemas; `rows` answers them where the data is: DataFusion itself over files, or a database,
//! as the SQL the plan unparses to (`run::database`).

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use std::future::Future;

pub trait Queries {
    /// A session whose tables have the repository's names and schemas: questions are
    /// planned on it.
    fn session(&self) -> &SessionContext;

    /// The rows of a plan built on `session()`, with the plan's schema.
    fn rows(&self, plan: LogicalPlan) -> impl Future<Output = Result<Vec<RecordBatch>, String>>;

    /// Whether the repository has a table; a file repository reads an absent one as empty.
    fn has_table(&self, name: &str) -> bool {
        self.session().table_exist(name).unwrap_or(false)
    }
}

/// The rows of a query in DataFusion's SQL.
pub async fn sql(q: &impl Queries, sql: &str) -> Result<Vec<RecordBatch>, String> {
    let plan = q
        .session()
        .sql(sql)
        .await
        .map_err(|e| super::clean_engine_message(&e.to_string()))?
        .into_unoptimized_plan();
    q.rows(plan).await
}

/// DataFusion over the session's own tables.
impl Queries for SessionContext {
    fn session(&self) -> &SessionContext {
        self
    }

    async fn rows(&self, plan: LogicalPlan) -> Result<Vec<RecordBatch>, String> {
        let run = async { self.execute_logical_plan(plan).await?.collect().await };
        run.await
            .map_err(|e| super::clean_engine_message(&e.to_string()))
    }
}
