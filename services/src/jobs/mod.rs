//! Batch predictions: a batch is answered in the request when it is small, and becomes a job when it is
//! not. A job's input is spooled to `--data-dir/batches/` as CSV, cut into chunks, and each chunk's rows
//! written to the store with the job. Every replica's runner claims chunks from the store under a lease it
//! renews while it computes (any job's, fairly across organizations), runs each through its model's queue
//! in the background lane (price requests through the price model, raw feature rows through the model they
//! name; on background sessions at idle priority), and commits it: its results and the job's counts in one
//! transaction, only while the lease is still its own. A replica that dies (or restarts) stops renewing,
//! and its chunks are claimed again, so no row is lost or answered twice, and one large job runs on every
//! replica at once.
//!
//! - `intake.rs`: one pipeline for every body: spool → index → [`Intake::Prices`] / [`Intake::Raw`]
//!   answered inline, or [`Intake::Job`].
//! - `input.rs`: what a batch may hold, turned into the CSV on disk, indexed into chunks.
//! - `runner.rs`: the runner, a claimed chunk computed on the preparing threads (`prep.rs`) and committed.
//! - `progress.rs`: a job's progress, published on a watch per job.
//! - `janitor.rs`: expired results deleted; `disk.rs`: free space; `legacy.rs`: jobs from before chunks were
//!   kept in the store, moved there at start.
//! - `results.rs`: the results rendered from the committed chunks as CSV, JSON or Parquet.

mod disk;
mod error;
pub mod input;
mod intake;
mod janitor;
mod legacy;
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
    /// Chunks one replica computes at once (--batch-max-running-chunks).
    pub max_running: usize,
    /// How long a claimed chunk is held without a renewal before another replica may take it
    /// (--batch-lease-secs); renewed every third of it.
    pub lease: Duration,
    /// Queued and running jobs an organization may have (--batch-max-active-jobs).
    pub max_active_per_org: u64,
    /// How long an ended job's results are kept (--batch-retention-secs).
    pub retention: Duration,
    /// Free space a job needs, in multiples of its upload (--batch-disk-factor).
    pub disk_factor: f64,
    /// Space an organization's jobs may hold (inputs and results in the store, spools on disk): uploads times
    /// `disk_factor`, until results expire (--batch-max-disk-bytes-per-org).
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
    /// Where uploads are spooled.
    dir: PathBuf,
    /// This replica's id (kept in the data directory): the holder of the chunks it claims, so that it lets
    /// go of them at once when it starts again.
    pub node: String,
    pub settings: Settings,
    pub inline: Inline,
    store: Store,
    repository: Arc<Repository>,
    predictions: Arc<Predictions>,
    draining: Arc<AtomicBool>,
    /// Chunks computing here, per job.
    running: Mutex<HashMap<String, usize>>,
    /// Progress of jobs, for listeners.
    watches: progress::Watches,
    wake: Notify,
    prep: prep::Prep,
}

/// A spooled input, under its spool directory.
const INPUT: &str = "input.csv";

/// Preparing threads: two, so one chunk is assembled while another waits for the model.
const PREP_THREADS: usize = 2;

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

    /// Cancels a queued or running job at once, keeping the rows committed; a chunk computing anywhere is not
    /// committed after this. An ended job is left as it is.
    pub async fn cancel(&self, org: &str, id: &str) -> Result<BatchJob, BatchError> {
        Ok(self.store.cancel_batch_job(org, id).await?)
    }

    /// The rows of an ended job that `pick` takes, rendered in `format` by a blocking task as they are read,
    /// with how many rows that is when it is known. Not before the job ends (`results_not_ready`), not once
    /// its results expired (`results_expired`). Any replica answers: the results are in the store.
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
        if self.expired(&job) {
            let at = self.expires_at(&job).unwrap_or_else(chrono::Utc::now);
            return Err(BatchError::ResultsExpired(at.to_rfc3339()));
        }
        let total = pick.rows(&job);
        let chunks = results::render(job, self.store.clone(), format, pick);
        Ok(results::Rendered { total, chunks })
    }
}
