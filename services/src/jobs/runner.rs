//! The runner: every replica claims chunks of any job from the store, at most --batch-max-running-chunks
//! at once, renews each claim's lease while it computes (on the preparing threads), and commits it. A
//! chunk's failure fails its job; a lost lease (another replica took the chunk) or a store that cannot be
//! reached lets the chunk go, for whoever claims it next.

use std::sync::Arc;
use std::time::Duration;

use mercator_store::{BatchJob, BatchState, Chunk, ClaimedChunk, JobError};

use super::{input, prep, results, BatchError, Jobs, Progress};
use crate::predict::Named;
use mercator_engine::Slices;

/// How often an idle runner looks for chunks another replica's submit wrote (its own submits wake it).
const POLL: Duration = Duration::from_secs(1);

impl Jobs {
    /// The runner: moves jobs from before chunks were kept in the store there, lets go of what this replica
    /// held before it started, then claims chunks while it has
    /// room, woken by each submit here, each chunk's end, and every second; until the server drains, when
    /// the chunks computing here are let go for other replicas.
    pub async fn run(self: Arc<Self>) {
        self.adopt_legacy().await;
        match self.store.release_batch_chunks(&self.node).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(chunks = n, "batch chunks held before a restart let go"),
            Err(e) => tracing::warn!(error = %e, "cannot let go of the batch chunks held before"),
        }
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            if self.is_draining() {
                break;
            }
            while tasks.len() < self.settings.max_running {
                match self
                    .store
                    .claim_batch_chunk(&self.node, self.settings.lease)
                    .await
                {
                    Ok(Some(claimed)) => {
                        let kind = if claimed.reclaimed {
                            "reclaimed"
                        } else {
                            "new"
                        };
                        metrics::counter!("mercator_batch_chunk_claims_total", "kind" => kind)
                            .increment(1);
                        self.track(&claimed.job.id, true);
                        tasks.spawn(run_chunk(self.clone(), claimed));
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot claim a batch chunk");
                        break;
                    }
                }
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
        }
        // Draining: what computes here is dropped, and its chunks let go at once rather than when their
        // leases run out.
        tasks.shutdown().await;
        if let Err(e) = self.store.release_batch_chunks(&self.node).await {
            tracing::warn!(error = %e, "cannot let go of the batch chunks held");
        }
    }

    /// Counts a chunk of `job` computing here in or out; the job's progress watch goes with the last one
    /// when nobody listens.
    fn track(&self, job: &str, start: bool) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if start {
            *running.entry(job.to_string()).or_default() += 1;
            return;
        }
        let left = running.get_mut(job).map(|n| {
            *n = n.saturating_sub(1);
            *n
        });
        if left == Some(0) {
            running.remove(job);
            drop(running);
            self.unsubscribe(job);
        }
    }
}

/// How a chunk ended here.
enum Outcome {
    Committed(Box<BatchJob>),
    /// The lease went to another replica, or the job ended: nothing of this run counts.
    Lost,
    /// Let go for another try (the store could not be reached, or the server is stopping).
    Released,
    Failed(BatchError),
}

async fn run_chunk(jobs: Arc<Jobs>, claimed: ClaimedChunk) {
    let id = claimed.job.id.clone();
    let outcome = execute(&jobs, &claimed).await;
    let outcome = match outcome {
        Outcome::Failed(e) if jobs.is_draining() && draining_error(&e) => Outcome::Released,
        Outcome::Failed(e) if e.is_transient() => {
            tracing::warn!(batch_id = %id, error = %e, "a batch chunk let go after a store failure");
            Outcome::Released
        }
        other => other,
    };
    let name = match &outcome {
        Outcome::Committed(job) => {
            jobs.watches
                .publish(&id, Progress::average(job, chrono::Utc::now()));
            if job.state.is_terminal() {
                jobs.watches.end(&id);
            }
            "committed"
        }
        Outcome::Lost => "lost",
        Outcome::Released => {
            let _ = jobs
                .store
                .release_batch_chunk(&id, claimed.index, claimed.token)
                .await;
            "released"
        }
        Outcome::Failed(e) => {
            tracing::error!(batch_id = %id, error = %e, "batch job failed");
            let code = match e.engine() {
                Some(
                    mercator_engine::EngineError::VersionNotFound { .. }
                    | mercator_engine::EngineError::ModelNotFound(_),
                ) => "model_version_unavailable",
                _ => e.code(),
            };
            let error = JobError {
                code: code.into(),
                message: e.to_string(),
            };
            if let Err(e) = jobs
                .store
                .finish_batch_job(&id, BatchState::Failed, Some(error))
                .await
            {
                tracing::warn!(batch_id = %id, error = %e, "cannot record the job's end");
            }
            jobs.watches.end(&id);
            "failed"
        }
    };
    metrics::counter!("mercator_batch_chunks_total", "outcome" => name).increment(1);
    jobs.track(&id, false);
    jobs.wake.notify_one();
}

/// Errors of a server that is stopping: the chunk is someone else's to run.
fn draining_error(e: &BatchError) -> bool {
    matches!(
        e.engine(),
        Some(
            mercator_engine::EngineError::ShuttingDown
                | mercator_engine::EngineError::NotReady { .. }
        )
    )
}

/// One claimed chunk computed while its lease is renewed (a third of the lease apart), then committed.
async fn execute(jobs: &Arc<Jobs>, claimed: &ClaimedChunk) -> Outcome {
    let job = &claimed.job;
    let work = compute(jobs.clone(), claimed.clone());
    tokio::pin!(work);
    let mut renew =
        tokio::time::interval((jobs.settings.lease / 3).max(Duration::from_millis(100)));
    renew.tick().await;
    let computed = loop {
        tokio::select! {
            computed = &mut work => break computed,
            _ = renew.tick() => match jobs.store.renew_batch_chunk(
                &job.id, claimed.index, claimed.token, jobs.settings.lease).await {
                Ok(true) => {}
                Ok(false) => return Outcome::Lost,
                // The store may be back before the lease runs out; the commit decides.
                Err(e) => tracing::warn!(batch_id = %job.id, error = %e, "cannot renew a batch chunk's lease"),
            },
        }
    };
    let (bytes, rows, failed) = match computed {
        Ok(computed) => computed,
        Err(e) => return Outcome::Failed(e),
    };
    match jobs
        .store
        .commit_batch_chunk(&job.id, claimed.index, claimed.token, &bytes, rows, failed)
        .await
    {
        Ok(Some(job)) => Outcome::Committed(Box::new(job)),
        Ok(None) => Outcome::Lost,
        Err(e) => Outcome::Failed(e.into()),
    }
}

/// What a job's input rows are, as a chunk reads them.
enum Rows {
    Price(input::PriceColumns),
    /// Raw feature rows: values a row, and the values of each row's answer.
    Features {
        width: usize,
        values: usize,
    },
}

/// What computing one chunk needs.
struct Run {
    jobs: Arc<Jobs>,
    /// The job's pinned version.
    model: mercator_engine::Model,
    org: String,
    input: Vec<u8>,
    chunk: Chunk,
}

/// A computed chunk: its encoded results, its row and error counts.
type Computed = (Vec<u8>, u64, u64);

/// A claimed chunk's results: its rows read as the job's input says, answered, encoded.
async fn compute(jobs: Arc<Jobs>, claimed: ClaimedChunk) -> Result<Computed, BatchError> {
    let job = claimed.job;
    let model = jobs
        .repository
        .get(&job.model, Some(&job.model_version.to_string()))?;
    let rows = if job.input_format != input::FEATURES {
        let header = csv::StringRecord::from(job.header.clone());
        Rows::Price(input::PriceColumns::new(&header))
    } else {
        let shape = results::Shape::of(&job).map_err(input::io)?;
        let width = model
            .manifest()
            .inputs
            .first()
            .and_then(|i| i.fixed_row_len());
        match (width, shape) {
            (Some(width), results::Shape::Outputs(outputs)) => Rows::Features {
                width,
                values: outputs.iter().map(|o| o.width).sum(),
            },
            _ => {
                return Err(BatchError::BadRequest(format!(
                    "{} {} does not take raw feature rows",
                    job.model, job.model_version
                )))
            }
        }
    };
    let run = Arc::new(Run {
        jobs,
        model,
        org: job.organization_id.clone(),
        input: claimed.input,
        chunk: Chunk {
            first_row: claimed.first_row,
            rows: claimed.rows,
            byte_start: 0,
            byte_end: 0,
        },
    });
    match rows {
        Rows::Price(columns) => compute_prices(run, columns).await,
        Rows::Features { width, values } => {
            let on_prep = run.clone();
            run.jobs
                .prep
                .run(move || compute_features(&on_prep, width, values))
                .await
                .map_err(prep_failed)?
        }
    }
}

/// One chunk of price requests, on the preparing threads: parsed, its catalog looked up (on the runtime:
/// the store is async), priced in the model's background lane, encoded.
async fn compute_prices(
    run: Arc<Run>,
    columns: input::PriceColumns,
) -> Result<Computed, BatchError> {
    let chunk = run.chunk;
    // Everything per row happens on the preparing threads: a runtime thread busy for a chunk's 16,384 rows
    // (milliseconds) would hold up every interactive request queued on it.
    let on_prep = run.clone();
    let (requests, errors, named) = run
        .jobs
        .prep
        .run(move || {
            let parsed = input::parse_chunk(&on_prep.input, &chunk, |record| {
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
            Ok((bytes, chunk.rows, failed))
        })
        .await
        .map_err(prep_failed)?
}

/// A chunk of raw feature rows, on a preparing thread: read and checked, sent to the model's background
/// lane in slices as they fill, each row's output values (or its error) encoded.
fn compute_features(run: &Run, width: usize, values: usize) -> Result<Computed, BatchError> {
    let chunk = run.chunk;
    let parsed = input::parse_chunk(&run.input, &chunk, |record| {
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
    Ok((bytes, chunk.rows, failed))
}

fn prep_failed(e: prep::PrepError) -> BatchError {
    match e {
        prep::PrepError::Panicked(message) => {
            BatchError::internal("preparing a chunk failed unexpectedly", message)
        }
        prep::PrepError::Gone => BatchError::internal("the batch preparing threads", "gone"),
    }
}
