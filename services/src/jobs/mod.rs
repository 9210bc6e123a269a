//! Batch predictions: a batch is answered in the request when it is small, and becomes a job when it is
//! not. A job's input is kept under `--data-dir/batches/{id}/` as CSV, cut into chunks at submit; this
//! node's runner takes its jobs from the store (queued, or running when a restart cut them short), runs each
//! chunk through its model's queue in the background lane (price requests through the price model, raw
//! feature rows through the model they name; on background sessions at idle priority), and commits chunk
//! by chunk: the chunk's results file renamed into place, then one store update. A job restarted after a
//! crash resumes at its first uncommitted chunk, so no row is lost or answered twice.
//!
//! - `intake.rs`: one pipeline for every body: spool → index → [`Intake::Prices`] / [`Intake::Raw`]
//!   answered inline, or [`Intake::Job`].
//! - `input.rs`: what a batch may hold, turned into the CSV on disk, indexed into chunks.
//! - `runner.rs`: the runner, one job's run, its chunks computed on the preparing threads (`prep.rs`).
//! - `progress.rs`: a job's progress, published on a watch per job.
//! - `janitor.rs`: expired results deleted; `disk.rs`: free space.
//! - `results.rs`: the chunk files, and the results rendered from them as CSV, JSON or Parquet.

mod disk;
mod error;
pub mod input;
mod intake;
mod janitor;
mod prep;
mod progress;
pub mod results;
mod runner;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mercator_engine::Repository;
use mercator_store::{BatchJob, BatchState, ListParams, Listed, Store};
use tokio::sync::Notify;

pub use error::BatchError;
pub use intake::{BodyFault, Intake, Kind, RawAnswers, RawBatch, Submission, Upload};
pub use progress::Progress;

use crate::predict::Predictions;

/// The limits and sizes of batch jobs, each set by its flag.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Rows per chunk: the unit of durability (--batch-chunk-rows).
    pub chunk_rows: usize,
    /// Most rows in one job (--batch-max-rows).
    pub max_rows: u64,
    /// Largest CSV or Parquet upload (--batch-max-body-bytes).
    pub max_body_bytes: usize,
    /// Jobs one node runs at once (--batch-max-running-jobs).
    pub max_running: usize,
    /// Queued and running jobs an organization may have (--batch-max-active-jobs).
    pub max_active_per_org: u64,
    /// How long an ended job's results are kept (--batch-retention-secs).
    pub retention: Duration,
    /// Free space a job needs, in multiples of its upload (--batch-disk-factor).
    pub disk_factor: f64,
    /// Disk an organization's jobs may hold: uploads times `disk_factor`, until results expire
    /// (--batch-max-disk-bytes-per-org).
    pub max_disk_bytes_per_org: u64,
    /// Length caps on a CSV upload's cells and records (--csv-max-field-bytes, --csv-max-record-bytes).
    pub csv: crate::input::csv_body::Caps,
    /// Most rows in one row group of a Parquet upload: what is in memory at once while it is read
    /// (--batch-parquet-max-group-rows).
    pub parquet_max_group_rows: u64,
}

/// What a batch answered in the request may be.
#[derive(Debug, Clone, Copy)]
pub struct Inline {
    /// Most rows (--batch-inline-max-rows).
    pub max_rows: usize,
    /// Most bytes, and the limit of a JSON batch body (--max-bulk-body-bytes).
    pub max_bytes: usize,
}

impl Inline {
    /// The intake's decision: a batch of `rows` whose input is `bytes` long is answered in the request,
    /// unless the client asked for a job.
    pub fn answers(&self, rows: u64, bytes: u64, respond_async: bool) -> bool {
        !respond_async && rows <= self.max_rows as u64 && bytes <= self.max_bytes as u64
    }
}

/// What the jobs service runs on, shared with the rest of the server.
pub struct Deps {
    pub store: Store,
    pub repository: Arc<Repository>,
    pub predictions: Arc<Predictions>,
    /// Set when the server starts shutting down: the runner and janitor stop, a run stops at its next
    /// commit and the job resumes at the next start.
    pub draining: Arc<AtomicBool>,
}

pub struct Jobs {
    dir: PathBuf,
    /// This node's id (kept in the data directory): which jobs are this node's to run.
    pub node: String,
    pub settings: Settings,
    pub inline: Inline,
    store: Store,
    repository: Arc<Repository>,
    predictions: Arc<Predictions>,
    draining: Arc<AtomicBool>,
    /// Cancel flags of the jobs running here.
    running: Mutex<HashMap<String, Arc<AtomicBool>>>,
    /// Progress of jobs, for listeners.
    watches: progress::Watches,
    wake: Notify,
    prep: prep::Prep,
}

/// A job's input, under its directory.
const INPUT: &str = "input.csv";

/// Preparing threads: two, so one chunk is assembled while another waits for the model.
const PREP_THREADS: usize = 2;

/// How long a cancel waits for a running job to stop before answering that it has not yet.
const CANCEL_WAIT: Duration = Duration::from_secs(2);

impl Jobs {
    /// Opens `data_dir/batches`, removing spools a crash left, and reads (or makes) this node's id.
    pub fn open(
        data_dir: &Path,
        settings: Settings,
        inline: Inline,
        deps: Deps,
    ) -> std::io::Result<Jobs> {
        let dir = data_dir.join("batches");
        std::fs::create_dir_all(&dir)?;
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".spool-"))
            {
                let _ = std::fs::remove_dir_all(path);
            }
        }
        let id_file = data_dir.join("node-id");
        let node = match std::fs::read_to_string(&id_file) {
            Ok(id) if !id.trim().is_empty() => id.trim().to_string(),
            _ => {
                let id = format!("node_{:016x}", rand::random::<u64>());
                std::fs::write(&id_file, &id)?;
                id
            }
        };
        Ok(Jobs {
            dir,
            node,
            settings,
            inline,
            store: deps.store,
            repository: deps.repository,
            predictions: deps.predictions,
            draining: deps.draining,
            running: Mutex::default(),
            watches: progress::Watches::default(),
            wake: Notify::new(),
            prep: prep::Prep::start(PREP_THREADS)?,
        })
    }

    /// Whether every thread that prepares chunks is running (readiness needs it).
    pub fn prep_is_whole(&self) -> bool {
        self.prep.is_whole()
    }

    fn job_dir(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// One of the organization's jobs.
    pub async fn job(&self, org: &str, id: &str) -> Result<BatchJob, BatchError> {
        Ok(self.store.batch_job(org, id).await?)
    }

    /// The organization's jobs, newest first, in `state` if given.
    pub async fn list(
        &self,
        org: &str,
        state: Option<BatchState>,
        page: &ListParams,
    ) -> Result<Listed<BatchJob>, BatchError> {
        Ok(self.store.batch_jobs(org, state, page).await?)
    }

    /// Cancels a job: a queued one at once; a running one stops before its next commit, keeping the rows
    /// committed. Waits up to two seconds for a running job to stop, then answers the job as it is (ended,
    /// or still running with `cancel_requested_at` set). An ended job is left as it is.
    pub async fn cancel(&self, org: &str, id: &str) -> Result<BatchJob, BatchError> {
        let job = self.store.cancel_batch_job(org, id).await?;
        if let Some(flag) = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
        {
            flag.store(true, Ordering::Release);
        }
        if job.state.is_terminal() {
            return Ok(job);
        }
        // A running job stops at its next commit, and its runner then drops the job's progress sender:
        // wait for that (up to CANCEL_WAIT) instead of polling the store, then read the end. Subscribed
        // before the second read, so an end between the two is not missed.
        let mut progress = self.subscribe(id);
        let ended = async {
            let job = self.store.batch_job(org, id).await?;
            if job.state.is_terminal() {
                return Ok(job);
            }
            let stopped = async { while progress.changed().await.is_ok() {} };
            // Timed out: still running (here, or on the replica that runs it).
            let _ = tokio::time::timeout(CANCEL_WAIT, stopped).await;
            self.store.batch_job(org, id).await
        }
        .await;
        // Unsubscribed whatever the reads answered, so no watch is left behind.
        drop(progress);
        self.unsubscribe(id);
        Ok(ended?)
    }

    /// The rows of an ended job that `pick` takes, rendered in `format` by a blocking task as they are read,
    /// with how many rows that is when it is known. Not before the job ends (`results_not_ready`), not from
    /// another node (`results_on_another_node`), not once its results expired (`results_expired`).
    pub async fn results(
        &self,
        org: &str,
        id: &str,
        format: results::Format,
        pick: results::Pick,
    ) -> Result<results::Rendered, BatchError> {
        let job = self.store.batch_job(org, id).await?;
        if !job.state.is_terminal() {
            return Err(BatchError::ResultsNotReady(job.state.as_str()));
        }
        if job.node != self.node {
            return Err(BatchError::ResultsElsewhere(job.node));
        }
        if self.expired(&job) {
            let at = self.expires_at(&job).unwrap_or_else(chrono::Utc::now);
            return Err(BatchError::ResultsExpired(at.to_rfc3339()));
        }
        let total = pick.rows(&job);
        let chunks = results::render(job, self.job_dir(id), format, pick);
        Ok(results::Rendered { total, chunks })
    }
}
