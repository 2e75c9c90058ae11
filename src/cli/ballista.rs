//! `cohortql ballista scheduler|executor`: the processes of a Ballista cluster that runs
//! cohortql's plans (`run::cluster`).

use super::data::runtime;
use super::Status;
use crate::run::cluster::{self, ExecutorOptions, SchedulerOptions};

pub(super) fn scheduler(options: SchedulerOptions) -> Result<Status, String> {
    runtime()?.block_on(cluster::serve_scheduler(&options))?;
    Ok(Status::Ok)
}

pub(super) fn executor(options: ExecutorOptions) -> Result<Status, String> {
    runtime()?.block_on(cluster::serve_executor(&options))?;
    Ok(Status::Ok)
}
