//! Running a study's stages on an Apache Ballista cluster (`--engine ballista://HOST:PORT`):
//! the session whose plans the cluster runs, the materialiser that keeps each stage as a
//! Parquet file every executor reads, and the scheduler and executor processes that know
//! cohortql's functions (`cohortql ballista scheduler|executor`).
//!
//! Built with the `ballista` cargo feature; without it, every entry point says so.

use super::Execution;

/// Whether this build has the Ballista engine (the `ballista` cargo feature).
pub const AVAILABLE: bool = cfg!(feature = "ballista");

/// What a build without the engine says when asked for it.
pub const NOT_BUILT: &str = "this cohortql was built without the Ballista engine: build it with `cargo build --release --features ballista`";

/// The scheduler port Ballista listens on unless told otherwise.
pub const DEFAULT_PORT: u16 = 50050;

/// A cluster, named by its scheduler: `ballista://HOST:PORT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cluster {
    pub host: String,
    pub port: u16,
}

impl Cluster {
    /// `ballista://HOST[:PORT]` (port 50050 when left out).
    pub fn parse(engine: &str) -> Result<Cluster, String> {
        let hint = "give the scheduler as ballista://HOST:PORT, e.g. ballista://127.0.0.1:50050";
        let Some(rest) = engine.strip_prefix("ballista://") else {
            return Err(format!("--engine {engine}: not a cluster; {hint}"));
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) => {
                let port =
                    port.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
                        format!("--engine {engine}: `{port}` is not a port; {hint}")
                    })?;
                (host, port)
            }
            None => (rest, DEFAULT_PORT),
        };
        let valid = !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
        if !valid {
            return Err(format!(
                "--engine {engine}: `{host}` is not a host name; {hint}"
            ));
        }
        Ok(Cluster {
            host: host.to_string(),
            port,
        })
    }

    /// As `run.json` and messages name it.
    pub fn describe(&self) -> String {
        format!("ballista://{}:{}", self.host, self.port)
    }
}

/// What a run on a cluster gives besides the run: the executors that produced the stages'
/// results, as `id (host:port)`, sorted.
pub struct ClusterRun {
    pub run: Execution,
    pub executors: Vec<String>,
}

#[cfg(feature = "ballista")]
pub use engine::{execute, explain_analysed, serve_executor, serve_scheduler};

#[cfg(not(feature = "ballista"))]
pub use without::{execute, explain_analysed, serve_executor, serve_scheduler};

/// The executors' settings a command line gives.
#[derive(Clone, Debug)]
pub struct ExecutorOptions {
    /// The scheduler to register with.
    pub scheduler: Cluster,
    /// The address to listen on.
    pub bind: String,
    /// The host name the scheduler and other executors reach this one by (default: `bind`).
    pub external_host: Option<String>,
    /// Arrow Flight (results and shuffles) and gRPC (tasks) ports.
    pub port: u16,
    pub grpc_port: u16,
    /// Where shuffle files go (default: a temporary directory).
    pub work_dir: Option<std::path::PathBuf>,
    /// Tasks run at once (default: the machine's cores).
    pub concurrent_tasks: Option<usize>,
    /// The least severe of Ballista's log records printed.
    pub log_level: String,
}

/// The scheduler's settings a command line gives.
#[derive(Clone, Debug)]
pub struct SchedulerOptions {
    /// The address to listen on.
    pub bind: String,
    pub port: u16,
    /// The host name executors and clients reach this scheduler by (default: `bind`).
    pub external_host: Option<String>,
    /// The least severe of Ballista's log records printed.
    pub log_level: String,
}

#[cfg(feature = "ballista")]
mod engine {
    use super::{Cluster, ClusterRun, ExecutorOptions, SchedulerOptions};
    use crate::plan::days;
    use crate::repo::files::Format;
    use crate::repo::Repository;
    use crate::run::{engine as engine_message, run_stages, Execution, Materialiser};
    use crate::study::Study;
    use ballista_core::client::BallistaClient;
    use ballista_core::registry::BallistaFunctionRegistry;
    use ballista_core::serde::protobuf::{
        execute_query_params::Query, execute_query_result, job_status,
        scheduler_grpc_client::SchedulerGrpcClient, ExecuteQueryParams, GetJobMetricsParams,
        GetJobStatusParams, KeyValuePair, OperatorMetricsSet, PartitionLocation,
    };
    use ballista_core::serde::BallistaPhysicalExtensionCodec;
    use datafusion::arrow::datatypes::SchemaRef;
    use datafusion::arrow::record_batch::RecordBatch;
    use datafusion::dataframe::DataFrameWriteOptions;
    use datafusion::logical_expr::{LogicalPlan, LogicalPlanBuilder};
    use datafusion::physical_plan::ExecutionPlan;
    use datafusion::prelude::{ParquetReadOptions, SessionContext};
    use datafusion_proto::physical_plan::AsExecutionPlan;
    use datafusion_proto::protobuf::PhysicalPlanNode;
    use futures::TryStreamExt;
    use std::collections::BTreeSet;
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    /// The largest message exchanged with the scheduler and executors: a stage's plan, or a
    /// batch of its result.
    const MAX_MESSAGE: usize = 256 << 20;

    /// Runs every stage of a study on the cluster, each stage kept as the next stage's table
    /// in a directory of its own under `stage_parent` (which every executor reads at the same
    /// path), removed when the run ends, whether it succeeded or not. The plans are those of
    /// the embedded engine, planned here and run there: the outputs are the same.
    pub async fn execute(
        cluster: &Cluster,
        study: &Study,
        repo: &Repository,
        stage_parent: &Path,
        progress: &dyn Fn(&str),
    ) -> Result<ClusterRun, String> {
        let (run, ran) = run(cluster, study, repo, stage_parent, false, progress).await?;
        Ok(ClusterRun {
            run,
            executors: ran.executors.into_iter().collect(),
        })
    }

    /// Runs a study on the cluster as `execute` does, and gives each plan as the cluster ran
    /// it: its query stages, with the rows and time of every operator.
    pub async fn explain_analysed(
        cluster: &Cluster,
        study: &Study,
        repo: &Repository,
        stage_parent: &Path,
    ) -> Result<Vec<(String, String)>, String> {
        let (_, ran) = run(cluster, study, repo, stage_parent, true, &|_| {}).await?;
        Ok(ran.analysis.into_inner().expect("not poisoned"))
    }

    /// The stage pipeline on the cluster, in a stage directory made for it and removed after.
    async fn run(
        cluster: &Cluster,
        study: &Study,
        repo: &Repository,
        stage_parent: &Path,
        analyse: bool,
        progress: &dyn Fn(&str),
    ) -> Result<(Execution, Ran), String> {
        let stages = stage_dir(stage_parent);
        let ran = async {
            let on = InCluster::prepare(cluster, repo, &stages, analyse, progress).await?;
            let run = run_stages(
                study,
                &on.ctx,
                crate::plan::DataFacts::default(),
                &on,
                progress,
            )
            .await?;
            Ok((run, on.finish()))
        }
        .await;
        let _ = std::fs::remove_dir_all(&stages);
        ran.map_err(|e| explained(cluster, &stages, e))
    }

    /// A directory of its own under `parent` for one run's stages.
    fn stage_dir(parent: &Path) -> PathBuf {
        parent.join(format!(
            ".cohortql-stages-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ))
    }

    /// What a finished run learned of the cluster.
    struct Ran {
        executors: BTreeSet<String>,
        analysis: Mutex<Vec<(String, String)>>,
    }

    /// A cluster's error, with what to do when it is one a user can fix.
    fn explained(cluster: &Cluster, stages: &Path, message: String) -> String {
        let lower = message.to_ascii_lowercase();
        if lower.contains("transport error")
            || lower.contains("connection refused")
            || lower.contains("dns error")
            || lower.contains("error connecting")
        {
            format!(
                "cannot reach the Ballista scheduler at {}: {message}\nhelp: start it with `cohortql ballista scheduler --port {}` and at least one `cohortql ballista executor`, or check the host and port",
                cluster.describe(),
                cluster.port
            )
        } else if lower.contains("no such file")
            || lower.contains("not found")
            || lower.contains("permission denied")
        {
            format!(
                "an executor of {} cannot read a file of the run: {message}\nhelp: the repository and the stage directory ({}) must be on a file system every executor mounts at the same path as this machine (give another with --stage-dir)",
                cluster.describe(),
                stages.display()
            )
        } else {
            message
        }
    }

    /// Each stage planned here, its physical plan sent to the scheduler as a job, its result
    /// fetched from the executors holding it; a kept stage written as a Parquet file into the
    /// stage directory and registered as the table the next stage reads.
    struct InCluster<'a> {
        ctx: SessionContext,
        cluster: &'a Cluster,
        stages: &'a Path,
        executors: Mutex<BTreeSet<String>>,
        /// Each plan as the cluster ran it, when asked for.
        analyse: bool,
        analysis: Mutex<Vec<(String, String)>>,
        jobs: AtomicUsize,
    }

    impl<'a> InCluster<'a> {
        /// The repository's tables in a session planning for the cluster. A table in CSV is
        /// first written as Parquet into the stage directory: DataFusion's plan format does not
        /// carry a CSV file's compression or its empty-field-is-NULL rule, so executors read
        /// the Parquet copy.
        async fn prepare(
            cluster: &'a Cluster,
            repo: &Repository,
            stages: &'a Path,
            analyse: bool,
            progress: &dyn Fn(&str),
        ) -> Result<InCluster<'a>, String> {
            std::fs::create_dir_all(stages)
                .map_err(|e| format!("cannot create {}: {e}", stages.display()))?;
            let ctx = repo.portable_session().await.map_err(|e| e.to_string())?;
            // What DataFusion's plan format does not carry is left out of the plans, rather
            // than lost on the way: dynamic filters (they link operators of one process, and
            // forbid the scheduler to swap a join's sides) and the read order a sort pushed
            // into a scan asks for (an optimisation; the sort stays).
            {
                let state = ctx.state_ref();
                let mut state = state.write();
                let optimizer = &mut state.config_mut().options_mut().optimizer;
                optimizer.enable_dynamic_filter_pushdown = false;
                optimizer.enable_join_dynamic_filter_pushdown = false;
                optimizer.enable_topk_dynamic_filter_pushdown = false;
                optimizer.enable_aggregate_dynamic_filter_pushdown = false;
                optimizer.enable_sort_pushdown = false;
                // A join that builds one table for all partitions of its other side builds it
                // once per process; the cluster runs each partition as a task of its own, which
                // would build it again, so the cluster keeps DataFusion's limits on such tables
                // rather than `repo::session_config`'s larger ones.
                let defaults = datafusion::config::OptimizerOptions::default();
                optimizer.hash_join_single_partition_threshold =
                    defaults.hash_join_single_partition_threshold;
                optimizer.hash_join_single_partition_threshold_rows =
                    defaults.hash_join_single_partition_threshold_rows;
            }
            for f in days::functions() {
                ctx.register_udf(f.as_ref().clone());
            }
            for file in repo.files.iter().filter(|f| f.format != Format::Parquet) {
                progress(&format!("copying {} as Parquet", file.table.name));
                let name = file.table.name;
                let path = stages.join(format!("{name}.table.parquet"));
                let location = path
                    .to_str()
                    .ok_or_else(|| format!("{} is not valid UTF-8", path.display()))?;
                ctx.table(name)
                    .await
                    .map_err(engine_message)?
                    .write_parquet(
                        location,
                        DataFrameWriteOptions::new().with_single_file_output(true),
                        None,
                    )
                    .await
                    .map_err(engine_message)?;
                register_parquet(&ctx, name, &path).await?;
            }
            Ok(InCluster {
                ctx,
                cluster,
                stages,
                executors: Mutex::new(BTreeSet::new()),
                analyse,
                analysis: Mutex::new(Vec::new()),
                jobs: AtomicUsize::new(0),
            })
        }

        fn finish(self) -> Ran {
            Ran {
                executors: self.executors.into_inner().expect("not poisoned"),
                analysis: self.analysis,
            }
        }

        fn scheduler_url(&self) -> String {
            format!("http://{}:{}", self.cluster.host, self.cluster.port)
        }

        async fn scheduler(
            &self,
        ) -> Result<SchedulerGrpcClient<tonic::transport::Channel>, String> {
            let client = SchedulerGrpcClient::connect(self.scheduler_url())
                .await
                .map_err(|e| format!("transport error: {e}"))?;
            Ok(client
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE))
        }

        /// Runs a physical plan as one job of the cluster and gives its rows.
        async fn run_job(
            &self,
            name: &str,
            physical: Arc<dyn ExecutionPlan>,
        ) -> Result<Vec<RecordBatch>, String> {
            let codec = BallistaPhysicalExtensionCodec::default();
            let cannot = |e: &dyn std::fmt::Display| {
                format!("the plan of {name} cannot be sent to the cluster: {e}")
            };
            let physical = stable_unions(physical).map_err(|e| cannot(&e))?;
            let node = PhysicalPlanNode::try_from_physical_plan(physical.clone(), &codec)
                .map_err(|e| cannot(&e))?;
            // The scheduler keeps the plan as it decodes it and each executor decodes its part
            // again: a plan that changes when decoded makes the two disagree on its operators,
            // which stalls the job, so it is refused here instead.
            let decoded = node
                .try_into_physical_plan(&self.ctx.task_ctx(), &codec)
                .map_err(|e| cannot(&e))?;
            let shown = |p: &Arc<dyn ExecutionPlan>| {
                datafusion::physical_plan::displayable(p.as_ref())
                    .indent(true)
                    .to_string()
            };
            let (sent, received) = (shown(&physical), shown(&decoded));
            if sent != received {
                let differs = sent
                    .lines()
                    .zip(received.lines().chain(std::iter::repeat("")))
                    .find(|(a, b)| a != b)
                    .map_or_else(String::new, |(a, b)| {
                        format!(": `{}` decodes as `{}`", a.trim(), b.trim())
                    });
                return Err(cannot(&format!(
                    "it does not decode to the same operators, a limit of DataFusion's plan format{differs}"
                )));
            }
            let mut plan = Vec::new();
            prost::Message::encode(&node, &mut plan)
                .map_err(|e| format!("the plan of {name} cannot be sent to the cluster: {e}"))?;
            let settings = self
                .ctx
                .copied_config()
                .options()
                .entries()
                .into_iter()
                .map(|e| KeyValuePair {
                    key: e.key,
                    value: e.value,
                })
                // The scheduler runs the plan as planned here, split into stages at its
                // exchanges: adaptive planning would rebuild its operators from runtime
                // statistics, and rebuilt plans do not always decode on an executor as the
                // scheduler holds them.
                .chain([KeyValuePair {
                    key: ballista_core::config::BALLISTA_ADAPTIVE_PLANNER_ENABLED.to_string(),
                    value: Some("false".to_string()),
                }])
                .collect();
            let mut scheduler = self.scheduler().await?;
            let mut request = tonic::Request::new(ExecuteQueryParams {
                session_id: self.ctx.session_id(),
                settings,
                operation_id: format!(
                    "cohortql-{}-{}",
                    std::process::id(),
                    self.jobs.fetch_add(1, Ordering::Relaxed)
                ),
                query: Some(Query::PhysicalPlan(plan)),
            });
            ballista_core::version::insert_version_header(request.metadata_mut());
            let submitted = scheduler
                .execute_query(request)
                .await
                .map_err(|e| format!("transport error: {}", e.message()))?
                .into_inner();
            let job_id = match submitted.result {
                Some(execute_query_result::Result::Success(s)) => s.job_id,
                Some(execute_query_result::Result::Failure(f)) => {
                    return Err(format!("the scheduler refused {name}: {:?}", f.failure))
                }
                None => return Err(format!("the scheduler gave no answer for {name}")),
            };
            let locations = self.wait_for(&mut scheduler, name, &job_id).await?;
            if self.analyse {
                let text = job_plan(&mut scheduler, &job_id).await?;
                self.analysis
                    .lock()
                    .expect("not poisoned")
                    .push((name.to_string(), text));
            }
            let mut batches = Vec::new();
            for location in locations {
                batches.extend(self.fetch(location).await?);
            }
            Ok(batches)
        }

        /// Waits for a job to finish; gives where its result partitions are.
        async fn wait_for(
            &self,
            scheduler: &mut SchedulerGrpcClient<tonic::transport::Channel>,
            name: &str,
            job_id: &str,
        ) -> Result<Vec<PartitionLocation>, String> {
            loop {
                let status = scheduler
                    .get_job_status(GetJobStatusParams {
                        job_id: job_id.to_string(),
                    })
                    .await
                    .map_err(|e| format!("transport error: {}", e.message()))?
                    .into_inner()
                    .status
                    .and_then(|s| s.status);
                match status {
                    Some(job_status::Status::Successful(done)) => {
                        return Ok(done.partition_location)
                    }
                    Some(job_status::Status::Failed(failed)) => {
                        return Err(format!(
                            "{name} failed on {}: {}",
                            self.cluster.describe(),
                            failed.error
                        ))
                    }
                    // Queued, or running: a job waits for executors to take its tasks, as
                    // Ballista's scheduler lets executors start after it.
                    Some(job_status::Status::Running(_) | job_status::Status::Queued(_)) | None => {
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }

        /// The rows of one result partition, from the executor holding it.
        async fn fetch(&self, location: PartitionLocation) -> Result<Vec<RecordBatch>, String> {
            let layout = location.layout();
            let (Some(meta), Some(partition)) = (location.executor_meta, location.partition_id)
            else {
                return Err("the scheduler gave a result without its executor".to_string());
            };
            self.executors
                .lock()
                .expect("not poisoned")
                .insert(format!("{} ({}:{})", meta.id, meta.host, meta.port));
            let port = u16::try_from(meta.port)
                .map_err(|_| format!("executor {} gave port {}", meta.id, meta.port))?;
            let unreachable = |e: &dyn std::fmt::Display| {
                format!(
                    "cannot fetch a result from executor {} at {}:{}: {e}",
                    meta.id, meta.host, meta.port
                )
            };
            let mut client =
                BallistaClient::try_new(&meta.host, port, MAX_MESSAGE, false, None, 3, 200, 0, 0)
                    .await
                    .map_err(|e| unreachable(&e))?;
            let stream = client
                .fetch_partition(&meta.id, &partition.into(), location.file_id, layout, true)
                .await
                .map_err(|e| unreachable(&e))?;
            stream
                .try_collect::<Vec<_>>()
                .await
                .map_err(|e| unreachable(&e))
        }
    }

    impl Materialiser for InCluster<'_> {
        async fn keep(&self, name: &'static str, plan: LogicalPlan) -> Result<LogicalPlan, String> {
            let (schema, batches) = self.rows(name, plan).await?;
            let path = self.stages.join(format!("{name}.parquet"));
            write_parquet(&path, schema, &batches)?;
            register_parquet(&self.ctx, name, &path).await?;
            let table = self
                .ctx
                .table_provider(name)
                .await
                .map_err(engine_message)?;
            LogicalPlanBuilder::scan(
                name,
                datafusion::datasource::provider_as_source(table),
                None,
            )
            .and_then(|b| b.build())
            .map_err(engine_message)
        }

        async fn rows(
            &self,
            name: &'static str,
            plan: LogicalPlan,
        ) -> Result<(SchemaRef, Vec<RecordBatch>), String> {
            let schema: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
            let physical = self
                .ctx
                .state()
                .create_physical_plan(&plan)
                .await
                .map_err(engine_message)?;
            let batches = self.run_job(name, physical).await?;
            let schema = batches.first().map_or(schema, |b| b.schema());
            Ok((schema, batches))
        }
    }

    /// The plan with every input of a union as nullable as the union's columns, in a way
    /// decoding keeps. A union coerces an input whose column is NOT NULL where the union's may
    /// be NULL with a cast, but a cast's nullability is not part of DataFusion's plan format,
    /// so every decoding would add another cast. A `CASE WHEN true THEN column END` (the
    /// value itself, nullable) survives decoding as it is.
    fn stable_unions(
        plan: Arc<dyn ExecutionPlan>,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        use datafusion::common::tree_node::{Transformed, TreeNode};
        use datafusion::physical_expr::expressions::{lit, CaseExpr, Column};
        use datafusion::physical_expr::PhysicalExpr;
        use datafusion::physical_plan::placeholder_row::PlaceholderRowExec;
        use datafusion::physical_plan::projection::{ProjectionExec, ProjectionExpr};
        use datafusion::physical_plan::union::{InterleaveExec, UnionExec};
        use datafusion::physical_plan::ExecutionPlanProperties;
        use datafusion::physical_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
        plan.transform_up(|node| {
            if node.downcast_ref::<PlaceholderRowExec>().is_some()
                && node.schema().fields().is_empty()
            {
                return Ok(Transformed::yes(one_row(
                    node.output_partitioning().partition_count(),
                )?));
            }
            if node.downcast_ref::<UnionExec>().is_none()
                && node.downcast_ref::<InterleaveExec>().is_none()
            {
                return Ok(Transformed::no(node));
            }
            let schema = node.schema();
            let mut changed = false;
            let mut children = Vec::new();
            for child in node.children() {
                let child_schema = child.schema();
                // A column computed by a projection (a cast, a literal) may have its
                // nullability from the logical plan, which decoding does not restore.
                let computed = |i: usize| {
                    child.downcast_ref::<ProjectionExec>().is_some_and(|p| {
                        p.expr()
                            .get(i)
                            .is_some_and(|e| e.expr.downcast_ref::<Column>().is_none())
                    })
                };
                let loose = |i: usize, c: &datafusion::arrow::datatypes::Field| {
                    !c.is_nullable() || computed(i)
                };
                let widen = child_schema
                    .fields()
                    .iter()
                    .zip(schema.fields())
                    .enumerate()
                    .any(|(i, (c, u))| u.is_nullable() && loose(i, c));
                if !widen {
                    children.push(child.clone());
                    continue;
                }
                changed = true;
                let mut exprs = Vec::new();
                for (i, (c, u)) in child_schema
                    .fields()
                    .iter()
                    .zip(schema.fields())
                    .enumerate()
                {
                    let column: Arc<dyn PhysicalExpr> = Arc::new(Column::new(c.name(), i));
                    let expr: Arc<dyn PhysicalExpr> = if u.is_nullable() && loose(i, c) {
                        Arc::new(CaseExpr::try_new(None, vec![(lit(true), column)], None)?)
                    } else {
                        column
                    };
                    exprs.push(ProjectionExpr {
                        expr,
                        alias: c.name().clone(),
                    });
                }
                children.push(Arc::new(ProjectionExec::try_new(exprs, child.clone())?)
                    as Arc<dyn ExecutionPlan>);
            }
            if changed {
                Ok(Transformed::yes(node.replace_children(
                    children,
                    ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
                )?))
            } else {
                Ok(Transformed::no(node))
            }
        })
        .map(|t| t.data)
    }

    /// One row of no columns in each of `partitions` partitions, as a memory table: what a
    /// placeholder row gives. A placeholder row has no metrics, and an executor that empties
    /// the inputs of a union other tasks read replaces it with an empty memory table, which
    /// has: the scheduler and the executor would then count the stage's operators differently.
    fn one_row(partitions: usize) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        use datafusion::arrow::datatypes::Schema;
        use datafusion::arrow::record_batch::RecordBatchOptions;
        use datafusion::datasource::memory::MemorySourceConfig;
        let schema = Arc::new(Schema::empty());
        let row = RecordBatch::try_new_with_options(
            schema.clone(),
            vec![],
            &RecordBatchOptions::new().with_row_count(Some(1)),
        )?;
        let data = vec![vec![row]; partitions.max(1)];
        Ok(MemorySourceConfig::try_new_exec(&data, schema, None)? as Arc<dyn ExecutionPlan>)
    }

    /// A job's query stages as the cluster ran them, each operator with its metrics.
    async fn job_plan(
        scheduler: &mut SchedulerGrpcClient<tonic::transport::Channel>,
        job_id: &str,
    ) -> Result<String, String> {
        let metrics = scheduler
            .get_job_metrics(GetJobMetricsParams {
                job_id: job_id.to_string(),
            })
            .await
            .map_err(|e| format!("transport error: {}", e.message()))?
            .into_inner();
        let mut text = String::new();
        for stage in &metrics.stages {
            text.push_str(&format!(
                "-- query stage {} ({} partitions)\n",
                stage.stage_id, stage.partitions
            ));
            for operator in &stage.operators {
                let measured: datafusion::physical_plan::metrics::MetricsSet = OperatorMetricsSet {
                    metrics: operator.metrics.clone(),
                }
                .try_into()
                .map_err(|e| format!("{e:?}"))?;
                text.push_str(&format!(
                    "{}{}, metrics=[{}]\n",
                    "  ".repeat(operator.depth as usize),
                    operator.operator_desc,
                    measured
                        .aggregate_by_name()
                        .sorted_for_display()
                        .timestamps_removed()
                ));
            }
        }
        Ok(text)
    }

    async fn register_parquet(ctx: &SessionContext, name: &str, path: &Path) -> Result<(), String> {
        let location = path
            .to_str()
            .ok_or_else(|| format!("{} is not valid UTF-8", path.display()))?;
        ctx.deregister_table(name).map_err(engine_message)?;
        ctx.register_parquet(name, location, ParquetReadOptions::default())
            .await
            .map_err(engine_message)
    }

    /// Rows as one Parquet file (with its columns when there are no rows).
    fn write_parquet(
        path: &Path,
        schema: SchemaRef,
        batches: &[RecordBatch],
    ) -> Result<(), String> {
        use datafusion::parquet::arrow::ArrowWriter;
        let fail = |e: &dyn std::fmt::Display| format!("cannot write {}: {e}", path.display());
        let file = std::fs::File::create(path).map_err(|e| fail(&e))?;
        let mut w = ArrowWriter::try_new(file, schema, None).map_err(|e| fail(&e))?;
        for b in batches {
            w.write(b).map_err(|e| fail(&e))?;
        }
        w.close().map_err(|e| fail(&e))?;
        Ok(())
    }

    /// The functions a scheduler and an executor must know to decode cohortql's plans.
    fn function_registry() -> BallistaFunctionRegistry {
        let mut registry = BallistaFunctionRegistry::default();
        for f in days::functions() {
            registry.scalar_functions.insert(f.name().to_string(), f);
        }
        registry
    }

    /// Ballista's log records at `level` and above, one line each on standard error.
    struct StderrLog(log::LevelFilter);

    impl log::Log for StderrLog {
        fn enabled(&self, metadata: &log::Metadata) -> bool {
            metadata.level() <= self.0
        }
        fn log(&self, record: &log::Record) {
            if self.enabled(record.metadata()) {
                eprintln!(
                    "{} {} {}: {}",
                    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ"),
                    record.level(),
                    record.target(),
                    record.args()
                );
            }
        }
        fn flush(&self) {}
    }

    /// Prints Ballista's log records at `level` (error, warn, info, debug, trace) and above.
    fn start_logging(level: &str) -> Result<(), String> {
        let filter: log::LevelFilter = level
            .parse()
            .map_err(|_| format!("--log-level {level}: give error, warn, info, debug or trace"))?;
        let logger: &'static StderrLog = Box::leak(Box::new(StderrLog(filter)));
        log::set_logger(logger).map_err(|e| e.to_string())?;
        log::set_max_level(filter);
        Ok(())
    }

    /// Runs a Ballista scheduler that knows cohortql's functions, until the process is stopped.
    pub async fn serve_scheduler(options: &SchedulerOptions) -> Result<(), String> {
        start_logging(&options.log_level)?;
        use ballista_scheduler::cluster::BallistaCluster;
        use ballista_scheduler::config::SchedulerConfig;
        let addr: std::net::SocketAddr = format!("{}:{}", options.bind, options.port)
            .parse()
            .map_err(|e| format!("--bind {}: {e}", options.bind))?;
        let config = SchedulerConfig {
            bind_host: options.bind.clone(),
            bind_port: options.port,
            external_host: options
                .external_host
                .clone()
                .unwrap_or_else(|| options.bind.clone()),
            // A stopped executor is noticed within seconds, not minutes: its tasks go to the
            // others (`task_max_failures` attempts each), or the run fails with the reason.
            executor_timeout_seconds: 20,
            expire_dead_executor_interval_seconds: 5,
            // With every executor gone, running jobs fail after this long rather than wait.
            no_executors_grace_period_seconds: 20,
            override_session_builder: Some(Arc::new(|config| {
                let mut state = ballista_core::utils::default_session_builder(config)?;
                for f in days::functions() {
                    datafusion::execution::FunctionRegistry::register_udf(&mut state, f)?;
                }
                Ok(state)
            })),
            ..SchedulerConfig::default()
        };
        let cluster = BallistaCluster::new_from_config(&config)
            .await
            .map_err(|e| e.to_string())?;
        eprintln!(
            "cohortql ballista scheduler listening on {addr} (clients: --engine ballista://{}:{})",
            config.external_host, options.port
        );
        ballista_scheduler::scheduler_process::start_server(cluster, addr, Arc::new(config))
            .await
            .map_err(|e| e.to_string())
    }

    /// Runs a Ballista executor that knows cohortql's functions, registered with the
    /// scheduler, until the process is stopped.
    pub async fn serve_executor(options: &ExecutorOptions) -> Result<(), String> {
        start_logging(&options.log_level)?;
        use ballista_executor::executor_process::{start_executor_process, ExecutorProcessConfig};
        let config = ExecutorProcessConfig {
            bind_host: options.bind.clone(),
            external_host: options.external_host.clone(),
            port: options.port,
            grpc_port: options.grpc_port,
            scheduler_host: options.scheduler.host.clone(),
            scheduler_port: options.scheduler.port,
            scheduler_connect_timeout_seconds: 30,
            vcores: options.concurrent_tasks.unwrap_or(0),
            work_dir: options
                .work_dir
                .as_ref()
                .map(|d| d.to_string_lossy().into_owned()),
            executor_heartbeat_interval_seconds: 5,
            print_thread_info: false,
            override_function_registry: Some(Arc::new(function_registry())),
            ..ExecutorProcessConfig::default()
        };
        eprintln!(
            "cohortql ballista executor {} on {}:{} registering with {}",
            config.executor_id,
            options.bind,
            options.port,
            options.scheduler.describe()
        );
        start_executor_process(Arc::new(config))
            .await
            .map_err(|e| e.to_string())
    }
}

#[cfg(not(feature = "ballista"))]
mod without {
    use super::{Cluster, ClusterRun, ExecutorOptions, SchedulerOptions, NOT_BUILT};
    use crate::repo::Repository;
    use crate::study::Study;
    use std::path::Path;

    pub async fn execute(
        _: &Cluster,
        _: &Study,
        _: &Repository,
        _: &Path,
        _: &dyn Fn(&str),
    ) -> Result<ClusterRun, String> {
        Err(NOT_BUILT.to_string())
    }

    pub async fn explain_analysed(
        _: &Cluster,
        _: &Study,
        _: &Repository,
        _: &Path,
    ) -> Result<Vec<(String, String)>, String> {
        Err(NOT_BUILT.to_string())
    }

    pub async fn serve_scheduler(_: &SchedulerOptions) -> Result<(), String> {
        Err(NOT_BUILT.to_string())
    }

    pub async fn serve_executor(_: &ExecutorOptions) -> Result<(), String> {
        Err(NOT_BUILT.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_urls() {
        assert_eq!(
            Cluster::parse("ballista://127.0.0.1:50050").unwrap(),
            Cluster {
                host: "127.0.0.1".into(),
                port: 50050
            }
        );
        assert_eq!(
            Cluster::parse("ballista://sched/").unwrap().port,
            DEFAULT_PORT
        );
        for bad in [
            "ballista://",
            "ballista://h:0",
            "ballista://h:x",
            "ballista://a b:1",
            "http://h:1",
        ] {
            assert!(Cluster::parse(bad).is_err(), "{bad}");
        }
    }
}
