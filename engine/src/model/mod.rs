//! A served model version: a cheap handle (`Model`) and the worker threads that own its sessions.
//!
//! The request path is handler → `Model::infer` (validate, admit into the queue) → a worker thread (form a
//! batch, one backend call, scatter) → oneshot → handler. The queue's lock is never held across a backend
//! call; a lone small request on an idle model runs inline instead (`Model::try_inline`).
//!
//! Batch jobs' slices (`Model::enqueue_background`) run on workers and sessions of their own, made on first
//! use, whose threads the OS schedules at idle priority (`SCHED_IDLE` on Linux; ONNX Runtime's own threads
//! inherit it): an interactive request never waits for a session a job holds, and a job only gets the CPU
//! time interactive traffic leaves.
//!
//! - this file: the handle: admission, validation, the inline path, background slices, drain.
//! - `worker.rs`: the worker threads, interactive and background, and their priority.
//! - `batch.rs`: one batch run: inputs joined, one backend call, outputs split back by request.

mod batch;
mod worker;

use batch::run_batch;
use worker::{background_worker, spawn, worker};

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::backend::{Backend, BackendError};
use crate::manifest::Manifest;
use crate::metrics::{ModelMetrics, Outcome};
use crate::queue::{Batch, Entry, State};
use crate::stats::{BatchTiming, Stats};
use crate::tap::{Observed, Tap};
use crate::tensor::{Tensor, TensorData};
use crate::EngineError;

/// The answer to one request: its outputs and what it cost.
#[derive(Debug)]
pub struct InferOutput {
    pub outputs: Vec<Tensor>,
    pub timing: Timing,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Timing {
    pub queue: Duration,
    pub compute: Duration,
    /// Rows in the batch this request ran in.
    pub batch_rows: usize,
}

/// Makes one session of a model version, on the thread that will own it (so a background worker's session
/// and its threads are scheduled as that worker is).
pub type BackendFactory =
    Arc<dyn Fn(Lane) -> Result<Box<dyn Backend>, EngineError> + Send + Sync + 'static>;

/// Which lane a session serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    Interactive,
    Background,
}

struct Shared {
    manifest: Manifest,
    factory: BackendFactory,
    /// Whether the background workers were started (on the first background slice).
    background_started: AtomicBool,
    /// One backend per instance. Worker `i` locks slot `i` to run a batch; a lone small request that finds
    /// the queue empty and a slot free runs inline on the caller's thread (see `try_inline`).
    slots: Vec<Mutex<Box<dyn Backend>>>,
    /// When this model started; arrival times are kept as nanoseconds since then.
    born: Instant,
    last_arrival_ns: AtomicU64,
    /// Inline only when the previous request came longer ago than this: several single-row runs'
    /// worth (measured at warm-up). Closer arrivals mean load, and load should batch on the worker.
    inline_gap: Duration,
    state: Mutex<State>,
    /// Wakes an interactive worker; `wake_background` a background one.
    wake: Condvar,
    wake_background: Condvar,
    ready: AtomicBool,
    stats: Stats,
    metrics: ModelMetrics,
    /// Where each batch's inputs and outputs go when this version is monitored.
    tap: std::sync::OnceLock<Tap>,
    /// The manifest's name, shared with every batch sent to the monitor.
    model_name: Arc<str>,
}

/// A handle on a served model version; clones share the same queue and workers.
#[derive(Clone)]
pub struct Model {
    shared: Arc<Shared>,
    workers: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Model {
    /// Makes `instances.count` interactive sessions with `factory`, warms each up (a batch of one row and a
    /// full batch), then starts one worker per session. Background sessions are made when a job first needs
    /// them.
    pub fn start(manifest: Manifest, factory: BackendFactory) -> Result<Model, EngineError> {
        let capacity = manifest.batching.queue_capacity;
        let metrics = ModelMetrics::new(&manifest.name, manifest.version);
        let mut slots = Vec::with_capacity(manifest.instances.count);
        let mut single_row_costs = Vec::new();
        for _ in 0..manifest.instances.count.max(1) {
            let mut backend = factory(Lane::Interactive)?;
            // A single row, a full batch, then single rows again, timed: the fastest of those is what a
            // single-row run costs once allocations are primed.
            for (n, rows) in WARMUP
                .map(|r| r.unwrap_or(manifest.batching.max_batch_size))
                .into_iter()
                .enumerate()
            {
                let inputs = warmup_inputs(&manifest, rows);
                let started = Instant::now();
                backend.run(inputs).map_err(|e| EngineError::InvalidModel {
                    path: format!("{}/{}", manifest.name, manifest.version).into(),
                    reason: format!("warm-up inference at batch {rows} failed: {e}"),
                })?;
                if n >= 2 {
                    single_row_costs.push(started.elapsed());
                }
            }
            slots.push(Mutex::new(backend));
        }
        let single_row_cost = single_row_costs.into_iter().min().unwrap_or_default();
        tracing::info!(model = %manifest.name, version = manifest.version, single_row_us = single_row_cost.as_micros() as u64,
            inline_max_rows = manifest.batching.inline_max_rows, "warmed up");
        let model_name: Arc<str> = Arc::from(manifest.name.as_str());
        let shared = Arc::new(Shared {
            slots,
            state: Mutex::new(State::new(capacity)),
            wake: Condvar::new(),
            wake_background: Condvar::new(),
            ready: AtomicBool::new(false),
            born: Instant::now(),
            last_arrival_ns: AtomicU64::new(0),
            inline_gap: single_row_cost * INLINE_GAP_FACTOR,
            factory,
            background_started: AtomicBool::new(false),
            stats: Stats::default(),
            metrics,
            manifest,
            tap: std::sync::OnceLock::new(),
            model_name,
        });
        let mut workers = Vec::new();
        for i in 0..shared.slots.len() {
            let s = shared.clone();
            let name = format!(
                "model-{}-{}-{i}",
                shared.manifest.name, shared.manifest.version
            );
            workers.push(spawn(name, move || worker(s, i))?);
        }
        shared.ready.store(true, Ordering::Release);
        Ok(Model {
            shared,
            workers: Arc::new(Mutex::new(workers)),
        })
    }

    /// How many handles on this version exist (this one included); the workers are not counted.
    pub fn handles(&self) -> usize {
        Arc::strong_count(&self.workers)
    }

    /// Monitors this version: every batch it computes from now on is copied to `tap` (once; a second tap
    /// is ignored).
    pub fn monitor(&self, tap: Tap) {
        let _ = self.shared.tap.set(tap);
    }

    pub fn is_monitored(&self) -> bool {
        self.shared.tap.get().is_some()
    }

    pub fn manifest(&self) -> &Manifest {
        &self.shared.manifest
    }

    pub fn is_ready(&self) -> bool {
        self.shared.ready.load(Ordering::Acquire)
    }

    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// Rows waiting in the queue now.
    pub fn queue_rows(&self) -> usize {
        self.lock().rows()
    }

    /// Runs one request of any number of rows. Inputs may come in any order; each model input exactly once.
    /// A full queue is refused at once with `QueueFull`; nothing is run for it.
    pub async fn infer(
        &self,
        inputs: Vec<Tensor>,
        deadline: Option<Instant>,
    ) -> Result<InferOutput, EngineError> {
        self.run(inputs, deadline, false).await
    }

    /// Queues a slice of a batch job in the background lane: it runs on the background sessions (started
    /// by the first slice), at idle priority, never with interactive rows and never against the queue's
    /// capacity. The caller bounds how many slices it has in flight and waits for each on its own thread
    /// (`Pending::wait`), so a job's preparing thread can go on assembling the next slice while this one runs.
    pub fn enqueue_background(&self, inputs: Vec<Tensor>) -> Result<Pending, EngineError> {
        let started = Instant::now();
        self.start_background()?;
        let rx = self.submit(inputs, None, started, true)?;
        Ok(Pending {
            model: self.clone(),
            rx,
            started,
        })
    }

    /// Rows of a background slice: the model's batch size.
    pub fn background_slice_rows(&self) -> usize {
        self.shared.manifest.batching.max_batch_size.max(1)
    }

    /// Starts the background workers, once: as many as the interactive ones, each making its own session.
    fn start_background(&self) -> Result<(), EngineError> {
        let shared = &self.shared;
        if shared.background_started.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let mut workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        for i in 0..shared.slots.len() {
            let s = shared.clone();
            let name = format!(
                "model-{}-{}-bg{i}",
                shared.manifest.name, shared.manifest.version
            );
            workers.push(spawn(name, move || background_worker(s))?);
        }
        Ok(())
    }

    async fn run(
        &self,
        inputs: Vec<Tensor>,
        deadline: Option<Instant>,
        background: bool,
    ) -> Result<InferOutput, EngineError> {
        let started = Instant::now();
        let result = self.submit(inputs, deadline, started, background);
        let result = match result {
            Ok(rx) => rx.await.unwrap_or(Err(EngineError::ShuttingDown)),
            Err(e) => Err(e),
        };
        self.record(&result, started);
        result
    }

    /// Counts a request's outcome in the statistics and metrics.
    fn record(&self, result: &Result<InferOutput, EngineError>, started: Instant) {
        let s = &self.shared;
        match &result {
            Ok(_) => {
                let elapsed = started.elapsed();
                s.stats.success.record(1, elapsed);
                s.stats.latency.record(elapsed);
                s.metrics.count(Outcome::Success, 1);
            }
            Err(e) => {
                s.stats.fail.record(1, started.elapsed());
                let outcome = match e {
                    EngineError::InvalidInput { .. } | EngineError::InvalidRequest(_) => {
                        Outcome::Invalid
                    }
                    EngineError::QueueFull { .. } | EngineError::ShuttingDown => {
                        Outcome::Overloaded
                    }
                    EngineError::DeadlineExceeded => Outcome::Expired,
                    _ => Outcome::Failed,
                };
                s.metrics.count(outcome, 1);
            }
        }
    }

    fn submit(
        &self,
        inputs: Vec<Tensor>,
        deadline: Option<Instant>,
        now: Instant,
        background: bool,
    ) -> Result<oneshot::Receiver<Result<InferOutput, EngineError>>, EngineError> {
        if !self.is_ready() {
            return Err(EngineError::NotReady {
                model: self.shared.manifest.name.clone(),
            });
        }
        let (inputs, rows) = self.validate(inputs)?;
        let capacity = self.shared.manifest.batching.queue_capacity;
        if rows > capacity && !background {
            return Err(EngineError::InvalidRequest(format!(
                "{rows} rows exceed the queue capacity of model `{}` ({capacity} rows)",
                self.shared.manifest.name
            )));
        }
        let (tx, rx) = oneshot::channel();
        let entry = Entry {
            inputs,
            rows,
            reply: tx,
            enqueued: now,
            deadline,
        };
        if background {
            if self.lock().push_background(entry).is_err() {
                return Err(EngineError::ShuttingDown);
            }
            self.shared.wake_background.notify_one();
            return Ok(rx);
        }
        let entry = match self.try_inline(entry) {
            Ok(()) => return Ok(rx),
            Err(entry) => entry,
        };
        let mut state = self.lock();
        if state.closed {
            return Err(EngineError::ShuttingDown);
        }
        if state.push(entry).is_err() {
            return Err(EngineError::QueueFull {
                model: self.shared.manifest.name.clone(),
                capacity,
            });
        }
        self.shared.metrics.depth.set(state.rows() as f64);
        drop(state);
        self.shared.wake.notify_one();
        Ok(rx)
    }

    /// Runs a small request at once on the caller's thread when nothing is queued and an instance is idle:
    /// at low load this saves two thread wake-ups (to the worker and back), which cost more than the
    /// inference itself for a tabular row. A busy model queues as usual, so batches still form under load.
    /// The answer is in the entry's oneshot when this returns `Ok`.
    fn try_inline(&self, entry: Entry) -> Result<(), Entry> {
        let shared = &self.shared;
        let now = shared.born.elapsed().as_nanos() as u64;
        let previous = shared.last_arrival_ns.swap(now, Ordering::Relaxed);
        let quiet = Duration::from_nanos(now.saturating_sub(previous)) > shared.inline_gap;
        if !quiet
            || entry.rows > shared.manifest.batching.inline_max_rows
            || !self.lock().no_interactive()
        {
            return Err(entry);
        }
        for slot in &shared.slots {
            if let Ok(mut backend) = slot.try_lock() {
                let rows = entry.rows;
                run_batch(
                    shared,
                    backend.as_mut(),
                    Batch {
                        entries: vec![entry],
                        rows,
                        ..Batch::default()
                    },
                );
                return Ok(());
            }
        }
        Err(entry)
    }

    /// Puts the inputs in the manifest's order and checks names, types and shapes against it.
    fn validate(&self, mut inputs: Vec<Tensor>) -> Result<(Vec<Tensor>, usize), EngineError> {
        let specs = &self.shared.manifest.inputs;
        if let Some(extra) = inputs
            .iter()
            .find(|t| !specs.iter().any(|s| s.name == t.name))
        {
            let known: Vec<_> = specs.iter().map(|s| s.name.as_str()).collect();
            return Err(EngineError::InvalidInput {
                name: extra.name.clone(),
                reason: format!("the model has no such input; its inputs are {known:?}"),
            });
        }
        let mut ordered = Vec::with_capacity(specs.len());
        let mut rows = None;
        for spec in specs {
            let invalid = |reason: String| EngineError::InvalidInput {
                name: spec.name.clone(),
                reason,
            };
            let position = inputs
                .iter()
                .position(|t| t.name == spec.name)
                .ok_or_else(|| invalid("missing: the model needs it".into()))?;
            let tensor = inputs.swap_remove(position);
            if inputs.iter().any(|t| t.name == spec.name) {
                return Err(invalid("given more than once".into()));
            }
            if tensor.data.datatype() != spec.datatype {
                return Err(invalid(format!(
                    "datatype is {}, the model takes {}",
                    tensor.data.datatype(),
                    spec.datatype
                )));
            }
            let shape_ok = tensor.shape.len() == spec.shape.len()
                && tensor
                    .shape
                    .iter()
                    .zip(&spec.shape)
                    .skip(1)
                    .all(|(&d, &s)| s == -1 || d as i64 == s);
            if !shape_ok {
                return Err(invalid(format!(
                    "shape is {:?}, the model takes {:?}",
                    tensor.shape, spec.shape
                )));
            }
            if tensor.rows() == 0 {
                return Err(invalid("has no rows".into()));
            }
            let elements: usize = tensor.shape.iter().product();
            if tensor.data.len() != elements {
                return Err(invalid(format!(
                    "shape {:?} holds {elements} elements but {} were given",
                    tensor.shape,
                    tensor.data.len()
                )));
            }
            match rows {
                Some(r) if r != tensor.rows() => {
                    return Err(invalid(format!(
                        "has {} rows, another input has {r}",
                        tensor.rows()
                    )));
                }
                _ => rows = Some(tensor.rows()),
            }
            ordered.push(tensor);
        }
        Ok((ordered, rows.unwrap_or(0)))
    }

    /// Refuses new requests from now on and tells the workers to run what is queued without waiting for
    /// more (a `max_queue_delay_us` wait ends at once).
    pub fn close(&self) {
        self.shared.ready.store(false, Ordering::Release);
        self.lock().closed = true;
        self.shared.wake.notify_all();
        self.shared.wake_background.notify_all();
    }

    /// Refuses new requests, lets the workers finish everything queued, and waits for them up to `timeout`.
    /// Returns false when the workers did not finish in time.
    pub fn drain(&self, timeout: Duration) -> bool {
        self.close();
        // A timeout past what an instant can hold waits as long as it takes.
        let deadline = Instant::now().checked_add(timeout);
        let mut workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        while deadline.is_none_or(|d| Instant::now() < d) {
            if workers.iter().all(|w| w.is_finished()) {
                workers.drain(..).for_each(|w| drop(w.join()));
                return true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        false
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A background slice queued by `Model::enqueue_background`.
pub struct Pending {
    model: Model,
    rx: oneshot::Receiver<Result<InferOutput, EngineError>>,
    started: Instant,
}

impl Pending {
    /// Blocks the calling thread (never a runtime's) until the slice has run.
    pub fn wait(self) -> Result<InferOutput, EngineError> {
        let result = self
            .rx
            .blocking_recv()
            .unwrap_or(Err(EngineError::ShuttingDown));
        self.model.record(&result, self.started);
        result
    }
}

/// The warm-up runs of each instance, in rows (`None`: `max_batch_size`).
pub const WARMUP: [Option<usize>; 5] = [Some(1), None, Some(1), Some(1), Some(1)];

/// How many single-row runs' worth of time must separate two arrivals for the second to run inline.
const INLINE_GAP_FACTOR: u32 = 4;

fn warmup_inputs(manifest: &Manifest, rows: usize) -> Vec<Tensor> {
    manifest
        .inputs
        .iter()
        .map(|spec| {
            let mut shape = vec![rows];
            shape.extend(spec.shape[1..].iter().map(|&d| d.max(1) as usize));
            let len = shape.iter().product();
            Tensor {
                name: spec.name.clone(),
                shape,
                data: TensorData::ones(spec.datatype, len),
            }
        })
        .collect()
}
