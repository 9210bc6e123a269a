//! One intake pipeline for every batch body: the body spooled to disk (JSON arrays and Parquet turned into
//! the CSV input as they are read), indexed into chunks, then answered in the request when it is small
//! ([`Intake::Prices`], [`Intake::Raw`]) or made a job ([`Intake::Job`]).

use std::path::{Path, PathBuf};
use std::pin::Pin;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use mercator_engine::{Manifest, Model};
use mercator_store::{new_batch_id, BatchJob, Chunk, NewBatchJob};
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use utoipa::ToSchema;

use super::input::{self, PriceColumns};
use super::{results, BatchError, Jobs, INPUT};
use crate::input::{csv_body, from_json, json_array};
use crate::predict::{ModelRef, PricePrediction, PriceRequest, PRICE_MODEL};

/// A batch as submitted.
pub struct Submission {
    pub org: String,
    pub kind: Kind,
    pub body: Upload,
    /// The client asked for a job whatever the batch's size (`Prefer: respond-async`).
    pub respond_async: bool,
    /// The client's key for retries: a second submit with it answers the first one's job.
    pub idempotency_key: Option<String>,
}

/// What the body holds.
pub enum Kind {
    /// A JSON array of price requests, or an object of raw feature rows (`{model, version?, rows}`); read
    /// whole, at most the inline byte limit.
    Json,
    /// CSV price requests.
    Csv,
    /// CSV raw feature rows for a model: a header row naming the input's values, then one value a cell.
    FeaturesCsv { model: String, version: Option<u64> },
    /// A Parquet file of price requests.
    Parquet,
}

/// A body as it arrives.
pub struct Upload {
    /// The length the client announced, if any: a body announced too large is refused before a byte is read.
    pub length: Option<u64>,
    pub chunks: Pin<Box<dyn Stream<Item = Result<Bytes, BodyFault>> + Send>>,
}

/// Why a body could not be read through.
#[derive(Debug)]
pub enum BodyFault {
    /// It stalled past the body read timeout.
    TimedOut,
    /// The connection broke.
    Broken(String),
}

/// What a batch became.
pub enum Intake {
    /// Price requests answered in the request: each row's prediction or its own error, in order.
    Prices(Vec<Result<PricePrediction, BatchError>>),
    /// Raw feature rows answered in the request.
    Raw(RawAnswers),
    /// A job: queued, or the one an earlier submit with the same idempotency key made.
    Job(Box<BatchJob>),
}

/// Raw feature rows answered: each row's output values (every output's, in order), or its own error.
pub struct RawAnswers {
    pub model: ModelRef,
    pub outputs: Vec<results::Output>,
    pub rows: Vec<Result<Vec<f64>, BatchError>>,
}

/// A batch of raw feature rows for a model with one fixed-width FP32 input.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawBatch {
    pub model: String,
    /// Default: the active version (or the traffic split's pick, once for the whole batch).
    pub version: Option<u64>,
    /// One array of the input's width per row.
    #[schema(value_type = Vec<Vec<f64>>)]
    pub rows: input::FeatureRows,
}

/// An input written under the spool directory, indexed, not yet a job.
struct Spooled {
    dir: PathBuf,
    format: &'static str,
    bytes: u64,
    chunks: Vec<Chunk>,
    rows: u64,
    /// The CSV header of a price batch.
    header: Vec<String>,
    /// The outputs of a raw batch's model.
    outputs: Option<Vec<results::Output>>,
}

impl Spooled {
    fn new(dir: PathBuf, format: &'static str) -> Spooled {
        Spooled {
            dir,
            format,
            bytes: 0,
            chunks: Vec::new(),
            rows: 0,
            header: Vec::new(),
            outputs: None,
        }
    }

    fn input(&self) -> PathBuf {
        self.dir.join(INPUT)
    }
}

impl Drop for Spooled {
    /// A spool that did not become a job is removed (a job's was renamed away).
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A model that takes raw feature rows: one fixed-width FP32 input, outputs of fixed widths.
struct RawModel {
    model: Model,
    width: usize,
    outputs: Vec<results::Output>,
}

impl Jobs {
    /// Takes a batch: answered in the request when it is small and the client did not ask for a job, else
    /// a queued job. A body that cannot be read through is refused whole, as is one with more rows or bytes
    /// than a job may have; nothing is kept of a refused batch.
    pub async fn submit(&self, s: Submission) -> Result<Intake, BatchError> {
        let Submission {
            org,
            kind,
            body,
            respond_async,
            idempotency_key: key,
        } = s;
        if let Some(key) = &key {
            // A retry of a submit that made its job: that job, without reading the body again.
            if let Some(job) = self.store.batch_job_by_key(&org, key).await? {
                return Ok(Intake::Job(Box::new(job)));
            }
        }
        let spooled = match kind {
            Kind::Json => {
                let bytes = collect(body, self.inline.max_bytes).await?;
                if bytes.trim_ascii_start().starts_with(b"{") {
                    return self.raw_json(&org, bytes, respond_async, key).await;
                }
                match self.json_rows(bytes, respond_async).await? {
                    Ok(spooled) => spooled,
                    Err(values) => {
                        let parsed = values
                            .into_iter()
                            .map(|v| {
                                serde_path_to_error::deserialize(v).map_err(|e| {
                                    let field = e.path().to_string();
                                    BatchError::invalid(&field, e.into_inner().to_string())
                                })
                            })
                            .collect();
                        return self.prices_inline(&org, parsed).await;
                    }
                }
            }
            Kind::FeaturesCsv { model, version } => {
                return self
                    .raw_csv(&org, &model, version, body, respond_async, key)
                    .await
            }
            Kind::Csv => {
                let mut spooled = Spooled::new(self.spool()?, "csv");
                spooled.bytes = self.spool_body(body, &spooled.input()).await?;
                let settings = self.settings;
                blocking(move || index(spooled, input::Layout::Price, &settings)).await?
            }
            Kind::Parquet => {
                let mut spooled = Spooled::new(self.spool()?, "parquet");
                let upload = spooled.dir.join("upload.parquet");
                spooled.bytes = self.spool_body(body, &upload).await?;
                let settings = self.settings;
                blocking(move || {
                    let converted = input::parquet_to_csv(
                        &upload,
                        &spooled.input(),
                        settings.max_rows,
                        settings.max_body_bytes as u64,
                        settings.parquet_max_group_rows,
                    );
                    let _ = std::fs::remove_file(&upload);
                    converted?;
                    index(spooled, input::Layout::Price, &settings)
                })
                .await?
            }
        };
        // Inline only what is small in bytes as well as in rows: the file is read whole.
        let csv_bytes = std::fs::metadata(spooled.input()).map_or(u64::MAX, |m| m.len());
        if self.inline.answers(spooled.rows, csv_bytes, respond_async) {
            let path = spooled.input();
            let parsed = blocking(move || {
                let bytes = std::fs::read(&path).map_err(input::io)?;
                from_csv(&bytes)
            })
            .await?;
            drop(spooled);
            return self.prices_inline(&org, parsed).await;
        }
        let model = self.repository.get(PRICE_MODEL, None)?;
        let job = self.enqueue(&org, model.manifest(), spooled, key).await?;
        Ok(Intake::Job(Box::new(job)))
    }

    /// A JSON array of price requests read element by element: up to the inline limit kept as values (the
    /// `Err` answer), beyond it written to the job's CSV as they arrive, the row limit checked as each
    /// arrives.
    async fn json_rows(
        &self,
        bytes: Bytes,
        respond_async: bool,
    ) -> Result<Result<Spooled, Vec<serde_json::Value>>, BatchError> {
        let dir = self.spool()?;
        let settings = self.settings;
        let keep = if respond_async {
            0
        } else {
            self.inline.max_rows
        };
        blocking(move || {
            let mut spooled = Spooled::new(dir, "json");
            spooled.bytes = bytes.len() as u64;
            let mut rows = input::JsonRows::new(keep, spooled.input());
            let max_rows = usize::try_from(settings.max_rows).unwrap_or(usize::MAX);
            let n = json_array::<serde_json::Value, BatchError>(
                &bytes,
                max_rows,
                || {
                    BatchError::BatchTooLarge(format!(
                        "more than {max_rows} rows (--batch-max-rows)"
                    ))
                },
                |i, value| rows.push(i, value),
            )
            .map_err(|e| match e {
                BatchError::Validation { message, details } if details.0.contains_key("body") => {
                    BatchError::BadRequest(format!(
                        "the body is not a JSON array of price requests: {message}"
                    ))
                }
                e => e,
            })?;
            if n == 0 {
                return Err(no_rows());
            }
            match rows.finish()? {
                Some(values) => Ok(Err(values)),
                None => index(spooled, input::Layout::Price, &settings).map(Ok),
            }
        })
        .await
    }

    /// A JSON object of raw feature rows: answered inline, or written as the job's CSV.
    async fn raw_json(
        &self,
        org: &str,
        bytes: Bytes,
        respond_async: bool,
        key: Option<String>,
    ) -> Result<Intake, BatchError> {
        // Counted before any row is kept: a body of more rows than a job may have is refused before it is
        // in memory.
        let max_rows = self.settings.max_rows;
        if input::count_feature_rows(&bytes).is_some_and(|n| n > max_rows) {
            return Err(BatchError::BatchTooLarge(format!(
                "more than {max_rows} rows (--batch-max-rows)"
            )));
        }
        let raw: RawBatch = from_json(&bytes)?;
        drop(bytes);
        let target = self.raw_model(&raw.model, raw.version)?;
        if raw.rows.is_empty() {
            return Err(no_rows());
        }
        if self.inline.answers(raw.rows.len() as u64, 0, respond_async) {
            let checked = raw.rows.checked(target.width);
            return raw_inline(target, checked).await.map(Intake::Raw);
        }
        let dir = self.spool()?;
        let settings = self.settings;
        let outputs = target.outputs.clone();
        let width = target.width;
        let spooled = blocking(move || {
            let mut spooled = Spooled::new(dir, input::FEATURES);
            spooled.rows = raw.rows.len() as u64;
            spooled.chunks = input::features_to_csv(
                &raw.rows,
                width,
                &spooled.input(),
                settings.chunk_rows,
                settings.max_rows,
            )?;
            spooled.bytes = std::fs::metadata(spooled.input()).map_err(input::io)?.len();
            spooled.outputs = Some(outputs);
            Ok(spooled)
        })
        .await?;
        let job = self
            .enqueue(org, target.model.manifest(), spooled, key)
            .await?;
        Ok(Intake::Job(Box::new(job)))
    }

    /// A CSV of raw feature rows for `name`: answered inline, or the job.
    async fn raw_csv(
        &self,
        org: &str,
        name: &str,
        version: Option<u64>,
        body: Upload,
        respond_async: bool,
        key: Option<String>,
    ) -> Result<Intake, BatchError> {
        let target = self.raw_model(name, version)?;
        let mut spooled = Spooled::new(self.spool()?, input::FEATURES);
        let path = spooled.input();
        spooled.bytes = self.spool_body(body, &path).await?;
        let settings = self.settings;
        let (width, outputs) = (target.width, target.outputs.clone());
        let layout = input::Layout::Features { width };
        spooled.outputs = Some(outputs);
        let spooled = blocking(move || index(spooled, layout, &settings)).await?;
        if self.inline.answers(spooled.rows, 0, respond_async) {
            let chunks = spooled.chunks.clone();
            let checked = blocking(move || {
                let mut rows = Vec::new();
                for chunk in &chunks {
                    rows.extend(input::read_chunk(&path, chunk, |r| {
                        r.and_then(|r| input::parse_features(r, width))
                    })?);
                }
                drop(spooled);
                Ok(rows)
            })
            .await?;
            return raw_inline(target, checked).await.map(Intake::Raw);
        }
        let job = self
            .enqueue(org, target.model.manifest(), spooled, key)
            .await?;
        Ok(Intake::Job(Box::new(job)))
    }

    /// Parsed rows priced together, each row's error in its place.
    async fn prices_inline(
        &self,
        org: &str,
        parsed: Vec<Result<PriceRequest, BatchError>>,
    ) -> Result<Intake, BatchError> {
        let (requests, errors) = input::split(parsed);
        let answers = self.predictions.price_batch(org, &requests).await?;
        Ok(Intake::Prices(input::merge(errors, answers)))
    }

    /// The version asked for (default: the active one, or the traffic split's pick), if it takes raw rows.
    fn raw_model(&self, name: &str, version: Option<u64>) -> Result<RawModel, BatchError> {
        let version = version.map(|v| v.to_string());
        let model = self.repository.get(name, version.as_deref())?;
        let manifest = model.manifest();
        let width = model
            .row_width()
            .ok_or_else(|| unsupported(&manifest.name))?;
        let outputs = manifest
            .outputs
            .iter()
            .map(|o| {
                o.fixed_row_len().map(|width| results::Output {
                    name: o.name.clone(),
                    width,
                })
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| unsupported(&manifest.name))?;
        Ok(RawModel {
            model,
            width,
            outputs,
        })
    }

    /// A fresh spool directory for an upload.
    fn spool(&self) -> Result<PathBuf, BatchError> {
        let dir = self
            .dir
            .join(format!(".spool-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).map_err(input::io)?;
        Ok(dir)
    }

    /// Streams the body to `path`, at most --batch-max-body-bytes; a body whose announced length is too
    /// large, or too large for the free disk, is refused before a byte is written.
    async fn spool_body(&self, body: Upload, path: &Path) -> Result<u64, BatchError> {
        let limit = self.settings.max_body_bytes;
        let too_large = || BatchError::BodyTooLarge {
            limit,
            flag: "--batch-max-body-bytes",
        };
        if let Some(length) = body.length {
            if length > limit as u64 {
                return Err(too_large());
            }
            self.check_space(length)?;
        }
        let mut file = tokio::fs::File::create(path).await.map_err(input::io)?;
        let mut chunks = body.chunks;
        let mut written = 0u64;
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(fault)?;
            written += chunk.len() as u64;
            if written > limit as u64 {
                return Err(too_large());
            }
            file.write_all(&chunk).await.map_err(input::io)?;
        }
        file.flush().await.map_err(input::io)?;
        Ok(written)
    }

    /// Makes a spooled input a queued job of `org` on a model version (pinned for the job's life):
    /// `too_many_batch_jobs` when the organization has its most active jobs, `insufficient_storage` or
    /// `disk_quota_exceeded` when what the job writes has no room. With an idempotency key the organization
    /// has used, the job made with it (and the spool is dropped).
    async fn enqueue(
        &self,
        org: &str,
        model: &Manifest,
        spooled: Spooled,
        idempotency_key: Option<String>,
    ) -> Result<BatchJob, BatchError> {
        let store = &self.store;
        if let Some(key) = &idempotency_key {
            if let Some(job) = store.batch_job_by_key(org, key).await? {
                return Ok(job);
            }
        }
        let active = store.active_batch_jobs(org).await?;
        if active >= self.settings.max_active_per_org {
            return Err(BatchError::TooManyBatchJobs {
                limit: self.settings.max_active_per_org,
            });
        }
        // Room for the rest of what the job writes: --batch-disk-factor times its upload, less the upload.
        let needed = (spooled.bytes as f64 * self.settings.disk_factor) as u64;
        self.check_space(needed.saturating_sub(spooled.bytes))?;
        // Within the organization's quota, counting what its kept jobs hold the same way.
        let cutoff = chrono::Duration::from_std(self.settings.retention)
            .map(|r| chrono::Utc::now() - r)
            .unwrap_or_default();
        let uploaded = store.batch_job_bytes(org, cutoff).await?;
        let used = (uploaded as f64 * self.settings.disk_factor) as u64;
        let limit = self.settings.max_disk_bytes_per_org;
        if used.saturating_add(needed) > limit {
            return Err(BatchError::DiskQuota {
                used,
                needed,
                limit,
            });
        }
        // The chunks first, one at a time (a chunk's input in memory at once), then the job: a job exists
        // only with all its chunks, and chunks without one are never claimed.
        let id = new_batch_id();
        let input = spooled.input();
        for (index, chunk) in spooled.chunks.iter().enumerate() {
            let (path, at) = (input.clone(), *chunk);
            let written = async {
                let bytes = blocking(move || input::chunk_bytes(&path, &at)).await?;
                store
                    .add_batch_chunk(org, &id, index as u64, chunk, &bytes)
                    .await
                    .map_err(BatchError::from)
            };
            // A chunk that cannot be read or written leaves none of the job's behind.
            if let Err(e) = written.await {
                let _ = store.remove_batch_chunks(&id).await;
                return Err(e);
            }
        }
        let outputs = spooled
            .outputs
            .as_ref()
            .map(|o| serde_json::to_string(o).unwrap_or_default());
        let new = NewBatchJob {
            id: id.clone(),
            node: self.node.clone(),
            model: model.name.clone(),
            model_version: model.version,
            input_format: spooled.format.into(),
            input_bytes: spooled.bytes,
            chunks: spooled.chunks.clone(),
            header: spooled.header.clone(),
            outputs,
            idempotency_key,
        };
        // The spool goes when this returns: the input is in the store now.
        let job = store.create_batch_job(org, new).await?;
        self.wake.notify_one();
        Ok(job)
    }
}

/// A JSON body read whole: at most `limit` bytes (--max-bulk-body-bytes).
async fn collect(body: Upload, limit: usize) -> Result<Bytes, BatchError> {
    let too_large = || BatchError::BodyTooLarge {
        limit,
        flag: "--max-bulk-body-bytes",
    };
    if body.length.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut chunks = body.chunks;
    let mut whole = Vec::with_capacity(body.length.unwrap_or(0) as usize);
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(fault)?;
        if whole.len() + chunk.len() > limit {
            return Err(too_large());
        }
        whole.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(whole))
}

fn fault(e: BodyFault) -> BatchError {
    match e {
        BodyFault::TimedOut => BatchError::BodyTimeout,
        BodyFault::Broken(e) => BatchError::BadRequest(format!("the body broke off: {e}")),
    }
}

fn no_rows() -> BatchError {
    BatchError::BadRequest("there are no rows".into())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BatchError> + Send + 'static,
) -> Result<T, BatchError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BatchError::internal("a batch task", e))?
}

/// The spooled CSV, indexed into chunks (a batch with no rows is refused).
fn index(
    mut spooled: Spooled,
    layout: input::Layout,
    settings: &super::Settings,
) -> Result<Spooled, BatchError> {
    let indexed = input::index(
        &spooled.input(),
        layout,
        settings.chunk_rows,
        settings.max_rows,
        settings.csv,
    )?;
    if indexed.rows == 0 {
        return Err(no_rows());
    }
    spooled.rows = indexed.rows;
    spooled.chunks = indexed.chunks;
    if matches!(layout, input::Layout::Price) {
        spooled.header = indexed.headers.iter().map(str::to_string).collect();
    }
    Ok(spooled)
}

/// Raw rows answered in the request, through the model's queue in batches of its batch size; a row of the
/// wrong width or with a value that is not finite carries its own error.
async fn raw_inline(
    target: RawModel,
    checked: Vec<Result<Vec<f32>, BatchError>>,
) -> Result<RawAnswers, BatchError> {
    let manifest = target.model.manifest();
    let ready: Vec<&Vec<f32>> = checked.iter().filter_map(|r| r.as_ref().ok()).collect();
    // Each answered row's output values, all outputs in order, one row after another.
    let values: usize = target.outputs.iter().map(|o| o.width).sum();
    let mut answered: Vec<f64> = Vec::with_capacity(ready.len() * values);
    for chunk in ready.chunks(manifest.batching.max_batch_size.max(1)) {
        let rows = chunk.iter().flat_map(|r| r.iter().copied()).collect();
        let answer = target.model.infer_rows(rows, target.width).await?;
        results::append_rows(&answer.outputs, chunk.len(), &mut answered);
    }
    if answered.len() != values * ready.len() {
        return Err(BatchError::internal(
            "raw rows inline",
            "the model's outputs do not have the widths its manifest gives",
        ));
    }
    let mut answered = answered.chunks_exact(values.max(1));
    let rows = checked
        .into_iter()
        .map(|r| r.map(|_| answered.next().unwrap_or_default().to_vec()))
        .collect();
    Ok(RawAnswers {
        model: ModelRef {
            name: manifest.name.clone(),
            version: manifest.version,
        },
        outputs: target.outputs,
        rows,
    })
}

fn unsupported(model: &str) -> BatchError {
    BatchError::invalid(
        "model",
        format!(
            "{model}: raw batches take models with one fixed-width FP32 input and fixed-width outputs; \
             use the V2 API"
        ),
    )
}

/// An inline CSV's rows, each a request or its own error.
fn from_csv(bytes: &[u8]) -> Result<Vec<Result<PriceRequest, BatchError>>, BatchError> {
    let (headers, mut reader) = csv_body::open(bytes, &input::COLUMNS)?;
    let columns = PriceColumns::new(&headers);
    Ok(reader
        .records()
        .map(|record| match record {
            Ok(record) => columns.parse(&record),
            Err(e) => Err(BatchError::invalid("row", e.to_string())),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::super::Inline;

    #[test]
    fn a_batch_is_answered_inline_only_when_small_in_rows_and_bytes_and_not_asked_to_be_a_job() {
        let inline = Inline {
            max_rows: 100,
            max_bytes: 1000,
        };
        assert!(inline.answers(100, 1000, false));
        assert!(!inline.answers(101, 10, false), "too many rows");
        assert!(!inline.answers(10, 1001, false), "too many bytes");
        assert!(!inline.answers(1, 1, true), "Prefer: respond-async");
        let none = Inline {
            max_rows: 0,
            max_bytes: 1000,
        };
        assert!(
            !none.answers(1, 1, false),
            "--batch-inline-max-rows 0: always a job"
        );
    }
}
