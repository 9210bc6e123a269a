//! The runner: this node's queued (and interrupted) jobs started, at most --batch-max-running-jobs at
//! once; one job's run, chunk by chunk, each computed on the preparing threads and committed in order.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mercator_store::{BatchState, Chunk, JobError};

use super::{input, prep, results, BatchError, Jobs, Progress, INPUT};
use crate::predict::Named;
use mercator_engine::Slices;

impl Jobs {
    /// The runner: starts this node's queued (and interrupted) jobs, at most `max_running` at once, oldest
    /// first; woken by each submit and each job's end, and every few seconds; until the server drains.
    pub async fn run(self: Arc<Self>) {
        loop {
            if self.is_draining() {
                return;
            }
            match self.store.batch_jobs_to_run(&self.node).await {
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
                        tokio::spawn(run_job(self.clone(), job.id, flag));
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

async fn run_job(jobs: Arc<Jobs>, id: String, cancel: Arc<AtomicBool>) {
    let outcome = execute(&jobs, &id, &cancel).await;
    let ended = match outcome {
        Ok(Outcome::Done) => Some((BatchState::Succeeded, None)),
        Ok(Outcome::Cancelled) => Some((BatchState::Cancelled, None)),
        Ok(Outcome::Left) => None,
        Err(e)
            if jobs.is_draining()
                && matches!(
                    e.engine(),
                    Some(
                        mercator_engine::EngineError::ShuttingDown
                            | mercator_engine::EngineError::NotReady { .. }
                    )
                ) =>
        {
            None
        }
        Err(e) => {
            tracing::error!(batch_id = %id, error = %e, "batch job failed");
            let code = match e.engine() {
                Some(
                    mercator_engine::EngineError::VersionNotFound { .. }
                    | mercator_engine::EngineError::ModelNotFound(_),
                ) => "model_version_unavailable",
                _ => e.code(),
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
        match jobs.store.finish_batch_job(&id, state, error).await {
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
    jobs.watches.end(&id);
    jobs.wake.notify_one();
}

/// What every chunk of one run of a job needs.
struct Run {
    jobs: Arc<Jobs>,
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

async fn execute(jobs: &Arc<Jobs>, id: &str, cancel: &AtomicBool) -> Result<Outcome, BatchError> {
    let store = &jobs.store;
    let Some(job) = store.start_batch_job(id).await.map_err(BatchError::from)? else {
        return Ok(Outcome::Left);
    };
    jobs.watches.publish(id, Progress::of(&job, 0.0));
    let model = jobs
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
                _ => Err(BatchError::BadRequest(format!(
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
        model,
        org: job.organization_id.clone(),
        input: input.clone(),
        rows,
        chunks: job.chunks.clone(),
    });
    let started = Instant::now();
    let base = job.processed_rows;
    let mut current = job.clone();
    let mut inflight: VecDeque<tokio::task::JoinHandle<Result<Computed, BatchError>>> =
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
            .map_err(BatchError::from)?;
        if !applied {
            return Ok(Outcome::Left);
        }
        current.processed_rows += rows;
        current.failed_rows += failed;
        current.chunks_done += 1;
        let rate =
            (current.processed_rows - base) as f64 / started.elapsed().as_secs_f64().max(1e-9);
        jobs.watches.publish(id, Progress::of(&current, rate));
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
async fn compute(run: Arc<Run>, index: u64) -> Result<Computed, BatchError> {
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
            Ok::<_, BatchError>((requests, errors, named))
        })
        .await
        .map_err(prep_failed)??;
    let catalog = run.jobs.predictions.catalog(&run.org, named).await?;
    let on_prep = run.clone();
    run.jobs
        .prep
        .run(move || {
            let run = &on_prep;
            let answers = run
                .jobs
                .predictions
                .price_blocking(&run.model, &run.org, &catalog, &requests)?;
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
) -> Result<Computed, BatchError> {
    let chunk = run.chunks[index as usize];
    let parsed = input::read_chunk(&run.input, &chunk, |record| {
        record.and_then(|r| input::parse_features(r, width))
    })?;
    let mut slices = Slices::new(&run.model, width)?;
    for row in parsed.iter().flatten() {
        slices.push(row.iter().copied())?;
    }
    // Each answered row's output values, all outputs in order, one after another.
    let mut answered: Vec<f64> = Vec::with_capacity(parsed.len() * values);
    for (slice, n) in slices.wait()? {
        results::append_rows(&slice.outputs, n, &mut answered);
    }
    if answered.len() != values * parsed.iter().filter(|r| r.is_ok()).count() {
        return Err(BatchError::internal(
            "a raw batch chunk",
            "the model's outputs do not have the widths its manifest gives",
        ));
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

fn prep_failed(e: prep::PrepError) -> BatchError {
    match e {
        prep::PrepError::Panicked(message) => {
            BatchError::internal("preparing a chunk failed unexpectedly", message)
        }
        prep::PrepError::Gone => BatchError::internal("the batch preparing threads", "gone"),
    }
}

fn join(e: tokio::task::JoinError) -> BatchError {
    BatchError::internal("a batch task", e)
}
