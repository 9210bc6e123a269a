//! Batch prediction jobs: a batch too large to answer inline becomes a job. Its input is kept under
//! `--data-dir/batches/{id}/` as CSV, cut into chunks at submit; this node's runner takes its jobs from the
//! store (queued, or running when a restart cut them short), runs each chunk through the price model's
//! queue in the background lane (behind every interactive request), and commits chunk by chunk: the
//! chunk's results file renamed into place, then one store update. A job restarted after a crash resumes at
//! its first uncommitted chunk, so no row is lost or answered twice.
//!
//! - `input.rs`: what a batch may hold, turned into the CSV on disk, indexed into chunks.
//! - `prep.rs`: the lower-priority threads that parse, assemble, wait for the model and encode.
//! - `results.rs`: the chunk files, and the results rendered from them as CSV, JSON or Parquet.

pub mod input;
mod prep;
pub mod results;

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mercator_store::{new_batch_id, BatchJob, BatchState, Chunk, JobError, NewBatchJob, Store};
use serde::Serialize;
use tokio::sync::{watch, Notify};
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::AppState;

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
}

/// A job's progress as the runner last published it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Progress {
    pub state: BatchState,
    pub processed: u64,
    pub total: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// Rows committed per second since the job (re)started.
    pub rows_per_sec: f64,
    pub eta_seconds: Option<f64>,
}

impl Progress {
    /// From the job as stored, at `rows_per_sec`.
    pub fn of(job: &BatchJob, rows_per_sec: f64) -> Progress {
        let left = job.total_rows.saturating_sub(job.processed_rows);
        Progress {
            state: job.state,
            processed: job.processed_rows,
            total: job.total_rows,
            succeeded: job.processed_rows - job.failed_rows.min(job.processed_rows),
            failed: job.failed_rows,
            rows_per_sec,
            eta_seconds: (!job.state.is_terminal() && rows_per_sec > 0.0)
                .then(|| left as f64 / rows_per_sec),
        }
    }
}

/// An input written under the spool directory, indexed, not yet a job.
pub struct Spooled {
    pub dir: PathBuf,
    pub format: &'static str,
    pub bytes: u64,
    pub chunks: Vec<Chunk>,
    pub rows: u64,
}

impl Spooled {
    pub fn input(&self) -> PathBuf {
        self.dir.join(INPUT)
    }
}

impl Drop for Spooled {
    /// A spool that did not become a job is removed (a job's was renamed away).
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const INPUT: &str = "input.csv";

pub struct Jobs {
    dir: PathBuf,
    /// This node's id (kept in the data directory): which jobs are this node's to run.
    pub node: String,
    pub settings: Settings,
    /// Cancel flags of the jobs running here.
    running: Mutex<HashMap<String, Arc<AtomicBool>>>,
    /// Progress of jobs, for WebSocket listeners.
    watches: Mutex<HashMap<String, watch::Sender<Option<Progress>>>>,
    wake: Notify,
    prep: prep::Prep,
}

impl Jobs {
    /// Opens `data_dir/batches`, removing spools a crash left, and reads (or makes) this node's id.
    pub fn open(data_dir: &Path, settings: Settings) -> std::io::Result<Jobs> {
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
            running: Mutex::default(),
            watches: Mutex::default(),
            wake: Notify::new(),
            prep: prep::Prep::start(PREP_THREADS)?,
        })
    }

    /// A fresh spool directory for an upload.
    pub fn spool(&self) -> std::io::Result<PathBuf> {
        let dir = self
            .dir
            .join(format!(".spool-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    pub fn job_dir(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// Makes a spooled input a queued job of `org` on the price model's active version (pinned for the
    /// job's life). 429 when the organization has its most active jobs.
    pub async fn submit(
        &self,
        store: &Store,
        org: &str,
        model_version: u64,
        spooled: Spooled,
    ) -> Result<BatchJob, ApiError> {
        let active = store
            .active_batch_jobs(org)
            .await
            .map_err(ApiError::store("batch job"))?;
        if active >= self.settings.max_active_per_org {
            return Err(ApiError::TooManyBatchJobs {
                limit: self.settings.max_active_per_org,
            });
        }
        let id = new_batch_id();
        let dir = self.job_dir(&id);
        std::fs::rename(&spooled.dir, &dir).map_err(input::io)?;
        std::fs::create_dir_all(dir.join("results")).map_err(input::io)?;
        let new = NewBatchJob {
            id: id.clone(),
            node: self.node.clone(),
            model: crate::predict::PRICE_MODEL.into(),
            model_version,
            input_format: spooled.format.into(),
            input_bytes: spooled.bytes,
            chunks: spooled.chunks.clone(),
        };
        let job = match store.create_batch_job(org, new).await {
            Ok(job) => job,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(ApiError::store("batch job")(e));
            }
        };
        self.wake.notify_one();
        Ok(job)
    }

    /// The job's progress as published here (None until its runner publishes; the sender is dropped when
    /// the job ends).
    pub fn subscribe(&self, id: &str) -> watch::Receiver<Option<Progress>> {
        let mut watches = self.watches.lock().unwrap_or_else(|e| e.into_inner());
        watches
            .entry(id.to_string())
            .or_insert_with(|| watch::channel(None).0)
            .subscribe()
    }

    /// Forgets a listener's watch when nobody listens and no runner publishes to it.
    pub fn unsubscribe(&self, id: &str) {
        let running = self.is_running(id);
        let mut watches = self.watches.lock().unwrap_or_else(|e| e.into_inner());
        if !running && watches.get(id).is_some_and(|w| w.receiver_count() == 0) {
            watches.remove(id);
        }
    }

    /// The rate the runner last published for a job running here.
    pub fn live_rate(&self, id: &str) -> Option<f64> {
        let watches = self.watches.lock().unwrap_or_else(|e| e.into_inner());
        watches
            .get(id)
            .and_then(|w| w.borrow().as_ref().map(|p| p.rows_per_sec))
    }

    fn publish(&self, id: &str, progress: Progress) {
        let mut watches = self.watches.lock().unwrap_or_else(|e| e.into_inner());
        watches
            .entry(id.to_string())
            .or_insert_with(|| watch::channel(None).0)
            .send_replace(Some(progress));
    }

    fn is_running(&self, id: &str) -> bool {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(id)
    }

    /// Tells the job's runner, if it runs here, to stop before its next commit.
    pub fn cancel(&self, id: &str) {
        if let Some(flag) = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
        {
            flag.store(true, Ordering::Release);
        }
    }

    /// The runner: starts this node's queued (and interrupted) jobs, at most `max_running` at once, oldest
    /// first; woken by each submit and each job's end, and every few seconds.
    pub async fn run(self: Arc<Self>, app: AppState) {
        loop {
            if app.is_draining() {
                return;
            }
            match app.store.batch_jobs_to_run(&self.node).await {
                Ok(jobs) => {
                    for job in jobs {
                        let flag = {
                            let mut running =
                                self.running.lock().unwrap_or_else(|e| e.into_inner());
                            if running.len() >= self.settings.max_running {
                                break;
                            }
                            if running.contains_key(&job.id) {
                                continue;
                            }
                            let flag = Arc::new(AtomicBool::new(false));
                            running.insert(job.id.clone(), flag.clone());
                            flag
                        };
                        tokio::spawn(run_job(self.clone(), app.clone(), job.id, flag));
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the batch jobs to run"),
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
    }
}

/// How a run ended.
enum Outcome {
    Done,
    Cancelled,
    /// Not this run's to finish: the server is stopping (the job resumes at the next start) or the job
    /// ended elsewhere.
    Left,
}

async fn run_job(jobs: Arc<Jobs>, app: AppState, id: String, cancel: Arc<AtomicBool>) {
    let outcome = execute(&jobs, &app, &id, &cancel).await;
    let ended = match outcome {
        Ok(Outcome::Done) => Some((BatchState::Succeeded, None)),
        Ok(Outcome::Cancelled) => Some((BatchState::Cancelled, None)),
        Ok(Outcome::Left) => None,
        Err(ApiError::Engine(
            mercator_engine::EngineError::ShuttingDown
            | mercator_engine::EngineError::NotReady { .. },
        )) if app.is_draining() => None,
        Err(e) => {
            tracing::error!(batch_id = %id, error = %e, "batch job failed");
            let code = match &e {
                ApiError::Engine(mercator_engine::EngineError::VersionNotFound { .. })
                | ApiError::Engine(mercator_engine::EngineError::ModelNotFound(_)) => {
                    "model_version_unavailable"
                }
                e => e.status_and_code().1,
            };
            Some((
                BatchState::Failed,
                Some(JobError {
                    code: code.into(),
                    message: e.to_string(),
                }),
            ))
        }
    };
    if let Some((state, error)) = ended {
        match app.store.finish_batch_job(&id, state, error).await {
            Ok(_) => {
                let _ = std::fs::remove_file(jobs.job_dir(&id).join(INPUT));
            }
            Err(e) => tracing::warn!(batch_id = %id, error = %e, "cannot record the job's end"),
        }
    }
    jobs.running
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&id);
    // Listeners see the sender go and read the end from the store.
    jobs.watches
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&id);
    jobs.wake.notify_one();
}

/// What every chunk of one run of a job needs.
struct Run {
    jobs: Arc<Jobs>,
    app: AppState,
    /// The pinned version.
    model: mercator_engine::Model,
    org: String,
    input: PathBuf,
    columns: input::PriceColumns,
    chunks: Vec<Chunk>,
}

/// A computed chunk: its index, its encoded results, its row and error counts.
type Computed = (u64, Vec<u8>, u64, u64);

/// Chunks at most this many ahead of the commit: one computing while the previous one commits.
const AHEAD: usize = 2;

/// Preparing threads: two, so one chunk is assembled while another waits for the model.
const PREP_THREADS: usize = 2;

async fn execute(
    jobs: &Arc<Jobs>,
    app: &AppState,
    id: &str,
    cancel: &AtomicBool,
) -> Result<Outcome, ApiError> {
    let store = &app.store;
    let Some(job) = store
        .start_batch_job(id)
        .await
        .map_err(ApiError::store("batch job"))?
    else {
        return Ok(Outcome::Left);
    };
    jobs.publish(id, Progress::of(&job, 0.0));
    let model = app
        .repository
        .get(&job.model, Some(&job.model_version.to_string()))?;
    let dir = jobs.job_dir(id);
    let input = dir.join(INPUT);
    let columns = {
        let (dir, input) = (dir.clone(), input.clone());
        tokio::task::spawn_blocking(move || {
            results::remove_partial(&dir).map_err(input::io)?;
            input::headers(&input).map(|h| input::PriceColumns::new(&h))
        })
        .await
        .map_err(join)??
    };
    let run = Arc::new(Run {
        jobs: jobs.clone(),
        app: app.clone(),
        model,
        org: job.organization_id.clone(),
        input: input.clone(),
        columns,
        chunks: job.chunks.clone(),
    });
    let started = Instant::now();
    let base = job.processed_rows;
    let mut current = job.clone();
    let mut inflight: VecDeque<tokio::task::JoinHandle<Result<Computed, ApiError>>> =
        VecDeque::new();
    let mut next = job.chunks_done;
    loop {
        while inflight.len() < AHEAD && next < job.chunks_total && !cancel.load(Ordering::Acquire) {
            inflight.push_back(tokio::spawn(compute(run.clone(), next)));
            next += 1;
        }
        let Some(task) = inflight.pop_front() else {
            break;
        };
        let (index, bytes, rows, failed) = task.await.map_err(join)??;
        if cancel.load(Ordering::Acquire) {
            return Ok(Outcome::Cancelled);
        }
        let d = dir.clone();
        tokio::task::spawn_blocking(move || results::commit_file(&d, index, &bytes))
            .await
            .map_err(join)?
            .map_err(input::io)?;
        let (applied, cancel_asked) = store
            .commit_batch_chunk(id, index, rows, failed)
            .await
            .map_err(ApiError::store("batch job"))?;
        if !applied {
            return Ok(Outcome::Left);
        }
        current.processed_rows += rows;
        current.failed_rows += failed;
        current.chunks_done += 1;
        let rate =
            (current.processed_rows - base) as f64 / started.elapsed().as_secs_f64().max(1e-9);
        jobs.publish(id, Progress::of(&current, rate));
        if cancel_asked {
            return Ok(Outcome::Cancelled);
        }
    }
    Ok(if cancel.load(Ordering::Acquire) {
        Outcome::Cancelled
    } else {
        Outcome::Done
    })
}

/// One chunk, on the preparing threads: read and parsed, its catalog looked up (on the runtime: the store
/// is async), priced in the model's background lane, encoded.
async fn compute(run: Arc<Run>, index: u64) -> Result<Computed, ApiError> {
    let chunk = run.chunks[index as usize];
    let (input, columns) = (run.input.clone(), run.columns.clone());
    let parsed = run
        .jobs
        .prep
        .run(move || input::read_chunk(&input, &columns, &chunk))
        .await
        .ok_or_else(prep_gone)??;
    let (requests, errors) = input::split(parsed);
    let app = &run.app;
    let catalog = app
        .predictor
        .catalog(&app.store, &run.org, &requests)
        .await?;
    let on_prep = run.clone();
    run.jobs
        .prep
        .run(move || {
            let (app, run) = (&on_prep.app, &on_prep);
            let answers = app.predictor.price_blocking(
                &run.model,
                &app.data_dir,
                &run.org,
                &catalog,
                &requests,
            )?;
            let mut w = csv::Writer::from_writer(Vec::with_capacity(errors.len() * 96));
            let mut failed = 0u64;
            for (i, outcome) in input::merge(errors, answers).into_iter().enumerate() {
                failed += u64::from(outcome.is_err());
                results::write_row(&mut w, chunk.first_row + i as u64 + 1, &outcome)
                    .map_err(|e| input::io(e.into()))?;
            }
            let bytes = w.into_inner().map_err(|e| input::io(e.into_error()))?;
            Ok((index, bytes, chunk.rows, failed))
        })
        .await
        .ok_or_else(prep_gone)?
}

fn prep_gone() -> ApiError {
    ApiError::Engine(mercator_engine::EngineError::Runtime(
        "the batch preparing threads are gone".into(),
    ))
}

fn join(e: tokio::task::JoinError) -> ApiError {
    ApiError::Engine(mercator_engine::EngineError::Runtime(format!(
        "a batch task failed: {e}"
    )))
}
