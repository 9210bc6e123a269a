//! Batch prediction jobs: a batch too large to answer inline becomes a job. Its input is kept under
//! `--data-dir/batches/{id}/` as CSV, cut into chunks at submit; this node's runner takes its jobs from the
//! store (queued, or running when a restart cut them short), runs each chunk through its model's queue in
//! the background lane (price requests through the price model, raw feature rows through the model they
//! name; on background sessions at idle priority), and commits chunk by chunk: the
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
use crate::predict::Named;
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
    /// How long an ended job's results are kept (--batch-retention-secs).
    pub retention: Duration,
    /// Free space a job needs, in multiples of its upload (--batch-disk-factor).
    pub disk_factor: f64,
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

    /// 507 unless the data directory has `needed` bytes free.
    pub fn check_space(&self, needed: u64) -> Result<(), ApiError> {
        match free_bytes(&self.dir) {
            Some(free) if free < needed => Err(ApiError::InsufficientStorage { free, needed }),
            _ => Ok(()),
        }
    }

    /// A fresh spool directory for an upload.
    pub fn spool(&self) -> std::io::Result<PathBuf> {
        let dir = self
            .dir
            .join(format!(".spool-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// Whether every thread that prepares chunks is running (`/readyz` needs it).
    pub fn prep_is_whole(&self) -> bool {
        self.prep.is_whole()
    }

    pub fn job_dir(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// Makes a spooled input a queued job of `org` on a model version (pinned for the job's life). 429 when
    /// the organization has its most active jobs. With an idempotency key the organization has used, the
    /// job made with it (and the spool is dropped).
    pub async fn submit(
        &self,
        store: &Store,
        org: &str,
        model: &mercator_engine::Manifest,
        spooled: Spooled,
        idempotency_key: Option<String>,
    ) -> Result<BatchJob, ApiError> {
        if let Some(key) = &idempotency_key {
            if let Some(job) = store
                .batch_job_by_key(org, key)
                .await
                .map_err(ApiError::store("batch job"))?
            {
                return Ok(job);
            }
        }
        let active = store
            .active_batch_jobs(org)
            .await
            .map_err(ApiError::store("batch job"))?;
        if active >= self.settings.max_active_per_org {
            return Err(ApiError::TooManyBatchJobs {
                limit: self.settings.max_active_per_org,
            });
        }
        // Room for the rest of what the job writes: --batch-disk-factor times its upload, less the upload.
        let needed = (spooled.bytes as f64 * self.settings.disk_factor) as u64;
        self.check_space(needed.saturating_sub(spooled.bytes))?;
        let id = new_batch_id();
        let dir = self.job_dir(&id);
        std::fs::rename(&spooled.dir, &dir).map_err(input::io)?;
        std::fs::create_dir_all(dir.join("results")).map_err(input::io)?;
        let new = NewBatchJob {
            id: id.clone(),
            node: self.node.clone(),
            model: model.name.clone(),
            model_version: model.version,
            input_format: spooled.format.into(),
            input_bytes: spooled.bytes,
            chunks: spooled.chunks.clone(),
            idempotency_key,
        };
        let job = match store.create_batch_job(org, new).await {
            // Another submit with the same key made the job first.
            Ok(job) if job.id != id => {
                let _ = std::fs::remove_dir_all(&dir);
                return Ok(job);
            }
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

impl Jobs {
    /// When an ended job's results expire.
    pub fn expires_at(&self, job: &BatchJob) -> Option<chrono::DateTime<chrono::Utc>> {
        let retention = chrono::Duration::from_std(self.settings.retention).ok()?;
        job.finished_at.map(|end| end + retention)
    }

    /// Whether the job's results are gone: past their retention, or their files removed.
    pub fn expired(&self, job: &BatchJob) -> bool {
        self.expires_at(job)
            .is_some_and(|at| at <= chrono::Utc::now())
            || (job.state.is_terminal() && !self.job_dir(&job.id).exists())
    }

    /// The janitor: deletes the files of this node's jobs whose results have expired, every so often (an
    /// hour, or a quarter of the retention if that is shorter). The jobs stay; their results answer 410.
    pub async fn sweep(self: Arc<Self>, app: AppState) {
        let every = (self.settings.retention / 4)
            .clamp(Duration::from_millis(100), Duration::from_secs(3600));
        loop {
            if app.is_draining() {
                return;
            }
            let cutoff = chrono::Duration::from_std(self.settings.retention)
                .map(|r| chrono::Utc::now() - r)
                .unwrap_or_default();
            match app.store.batch_jobs_ended_before(&self.node, cutoff).await {
                Ok(ids) => {
                    let dirs: Vec<PathBuf> = ids
                        .iter()
                        .map(|id| self.job_dir(id))
                        .filter(|d| d.exists())
                        .collect();
                    if !dirs.is_empty() {
                        let removed = tokio::task::spawn_blocking(move || {
                            dirs.iter()
                                .filter(|d| std::fs::remove_dir_all(d).is_ok())
                                .count()
                        })
                        .await
                        .unwrap_or(0);
                        tracing::info!(removed, "expired batch job results deleted");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the expired batch jobs"),
            }
            tokio::time::sleep(every).await;
        }
    }
}

/// Bytes free to an unprivileged writer on the file system of `path` (None where that cannot be read).
fn free_bytes(path: &Path) -> Option<u64> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
        let mut stat = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
        // SAFETY: `c` is a NUL-terminated path and `stat` a buffer of the right type; it is read only
        // after statvfs reports success.
        let stat = unsafe {
            if libc::statvfs(c.as_ptr(), stat.as_mut_ptr()) != 0 {
                return None;
            }
            stat.assume_init()
        };
        Some(stat.f_bavail as u64 * stat.f_frsize as u64)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
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
    rows: Rows,
    chunks: Vec<Chunk>,
}

/// What a job's input rows are, as its runner reads them.
enum Rows {
    Price(input::PriceColumns),
    /// Raw feature rows: values a row, and the values of each row's answer.
    Features {
        width: usize,
        values: usize,
    },
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
    let rows = {
        let (dir, input, job) = (dir.clone(), input.clone(), job.clone());
        let manifest = model.manifest().clone();
        tokio::task::spawn_blocking(move || {
            results::remove_partial(&dir).map_err(input::io)?;
            if job.input_format != input::FEATURES {
                return input::headers(&input).map(|h| Rows::Price(input::PriceColumns::new(&h)));
            }
            let shape = results::Shape::of(&job, &dir).map_err(input::io)?;
            let width = manifest.inputs.first().and_then(|i| i.fixed_row_len());
            match (width, shape) {
                (Some(width), results::Shape::Outputs(outputs)) => Ok(Rows::Features {
                    width,
                    values: outputs.iter().map(|o| o.width).sum(),
                }),
                _ => Err(ApiError::BadRequest(format!(
                    "{} {} does not take raw feature rows",
                    manifest.name, manifest.version
                ))),
            }
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
        rows,
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

/// One chunk of price requests, on the preparing threads: read and parsed, its catalog looked up (on the
/// runtime: the store is async), priced in the model's background lane, encoded. A chunk of raw feature
/// rows goes to [`compute_features`].
async fn compute(run: Arc<Run>, index: u64) -> Result<Computed, ApiError> {
    let chunk = run.chunks[index as usize];
    let columns = match &run.rows {
        Rows::Price(columns) => columns.clone(),
        Rows::Features { width, values } => {
            let (width, values, on_prep) = (*width, *values, run.clone());
            return run
                .jobs
                .prep
                .run(move || compute_features(&on_prep, index, width, values))
                .await
                .map_err(prep_failed)?;
        }
    };
    // Everything per row happens on the preparing threads: a runtime thread busy for a chunk's 16,384 rows
    // (milliseconds) would hold up every interactive request queued on it.
    let input = run.input.clone();
    let (requests, errors, named) = run
        .jobs
        .prep
        .run(move || {
            let parsed = input::read_chunk(&input, &chunk, |record| {
                record.and_then(|r| columns.parse(r))
            })?;
            let (requests, errors) = input::split(parsed);
            let named = Named::of(&requests);
            Ok::<_, ApiError>((requests, errors, named))
        })
        .await
        .map_err(prep_failed)??;
    let app = &run.app;
    let catalog = app.predictor.catalog(&app.store, &run.org, named).await?;
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
        .map_err(prep_failed)?
}

/// A chunk of raw feature rows, on a preparing thread: read and checked, sent to the model's background
/// lane in slices as they fill, each row's output values (or its error) encoded.
fn compute_features(
    run: &Run,
    index: u64,
    width: usize,
    values: usize,
) -> Result<Computed, ApiError> {
    use mercator_engine::{Tensor, TensorData};
    let chunk = run.chunks[index as usize];
    let parsed = input::read_chunk(&run.input, &chunk, |record| {
        record.and_then(|r| input::parse_features(r, width))
    })?;
    let model = &run.model;
    let name = model.manifest().inputs[0].name.clone();
    let slice = model.background_slice_rows();
    let mut pending = Vec::new();
    let mut buffer: Vec<f32> = Vec::with_capacity(slice * width);
    let mut send = |buffer: &mut Vec<f32>| -> Result<(), ApiError> {
        let n = buffer.len() / width.max(1);
        let tensor = Tensor {
            name: name.clone(),
            shape: vec![n, width],
            data: TensorData::Fp32(std::mem::replace(buffer, Vec::with_capacity(slice * width))),
        };
        pending.push((model.enqueue_background(vec![tensor])?, n));
        Ok(())
    };
    for row in parsed.iter().flatten() {
        buffer.extend_from_slice(row);
        if buffer.len() >= slice * width {
            send(&mut buffer)?;
        }
    }
    if !buffer.is_empty() {
        send(&mut buffer)?;
    }
    // Each answered row's output values, all outputs in order, one after another.
    let mut answered: Vec<f64> = Vec::with_capacity(parsed.len() * values);
    for (slice, n) in pending {
        results::append_rows(&slice.wait()?.outputs, n, &mut answered);
    }
    if answered.len() != values * parsed.iter().filter(|r| r.is_ok()).count() {
        return Err(ApiError::Engine(mercator_engine::EngineError::Runtime(
            "the model's outputs do not have the widths its manifest gives".into(),
        )));
    }
    let mut w = csv::Writer::from_writer(Vec::with_capacity(parsed.len() * (values * 12 + 8)));
    let mut failed = 0u64;
    let mut next = answered.chunks_exact(values.max(1));
    for (i, row) in parsed.iter().enumerate() {
        let outcome = match row {
            Ok(_) => Ok(next.next().unwrap_or_default()),
            Err(e) => {
                failed += 1;
                Err(e)
            }
        };
        results::write_values(&mut w, chunk.first_row + i as u64 + 1, outcome, values)
            .map_err(|e| input::io(e.into()))?;
    }
    let bytes = w.into_inner().map_err(|e| input::io(e.into_error()))?;
    Ok((index, bytes, chunk.rows, failed))
}

fn prep_failed(e: prep::PrepError) -> ApiError {
    ApiError::Engine(mercator_engine::EngineError::Runtime(match e {
        prep::PrepError::Panicked(message) => {
            format!("preparing a chunk failed unexpectedly: {message}")
        }
        prep::PrepError::Gone => "the batch preparing threads are gone".into(),
    }))
}

fn join(e: tokio::task::JoinError) -> ApiError {
    ApiError::Engine(mercator_engine::EngineError::Runtime(format!(
        "a batch task failed: {e}"
    )))
}
