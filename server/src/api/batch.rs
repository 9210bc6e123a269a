//! Batch predictions: `POST /api/v1/predictions/batch` answers a batch inline up to
//! --batch-inline-max-rows rows, and makes a larger one (or one sent with `Prefer: respond-async`) a job;
//! `GET`/`DELETE /api/v1/predictions/batch/{id}`, `GET .../results`, the organization's list, and
//! `/ws/predictions/{batch_id}` for progress. The handlers parse and render; [`crate::jobs`] runs jobs and
//! [`crate::predict::Predictor::price_batch`] prices.

use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use mercator_store::{BatchJob, BatchState};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::csv_body;
use super::extract::{content_type, ApiQuery};
use super::{page, ErrorEnvelope, Page};
use crate::auth::{Analyst, Auth, Viewer};
use crate::error::ApiError;
use crate::jobs::input::{self, PriceColumns};
use crate::jobs::results::{self, Format};
use crate::jobs::{Progress, Spooled};
use crate::predict::{PricePrediction, PriceRequest};
use crate::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(predict_batch, list_jobs))
        .routes(routes!(get_job, cancel_job))
        .routes(routes!(cancel_job_post))
        .routes(routes!(job_results))
        .routes(routes!(job_errors))
        .routes(routes!(progress_stream))
}

/// Parquet bodies' content types.
const PARQUET: [&str; 2] = ["application/vnd.apache.parquet", "application/x-parquet"];

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct BatchQuery {
    /// `json` (default) or `csv`; `Accept: text/csv` also picks CSV.
    pub format: Option<String>,
    /// With a CSV body: the model whose raw feature rows the CSV holds (a header row, then one value a
    /// cell), instead of price requests.
    pub model: Option<String>,
    /// With `model`: its version (default: the active one, or the traffic split's pick).
    pub version: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct RowError {
    pub code: String,
    pub message: String,
}

/// One input row's answer.
#[derive(Serialize, ToSchema)]
pub struct BatchRow {
    /// The input row, from 1 (CSV line = row + 1).
    pub row: usize,
    pub prediction: Option<PricePrediction>,
    pub error: Option<RowError>,
}

#[derive(Serialize, ToSchema)]
pub struct BatchAnswer {
    pub rows: usize,
    pub succeeded: usize,
    pub failed: usize,
    /// In input order.
    pub results: Vec<BatchRow>,
}

/// A job made of a batch: where to follow it.
#[derive(Serialize, ToSchema)]
pub struct Accepted {
    pub batch_id: String,
    pub state: BatchState,
    pub total_rows: u64,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub status_url: String,
    pub results_url: String,
    pub ws_url: String,
}

/// Price many purchases at once (analyst): a JSON array of price requests (the single endpoint's fields),
/// `text/csv` with a header row naming the columns (material_id, quantity, supplier_id, delivery_date,
/// as_of, interval_level) or a Parquet file with those columns. Up to --batch-inline-max-rows rows are
/// answered inline (200): one answer per input row, in input order; a row that cannot be answered (unknown
/// material, bad value, too little history) carries its own error and the others are answered; `?format=csv`
/// or `Accept: text/csv` answers CSV. A larger batch, or any with `Prefer: respond-async`, becomes a job
/// (202, `Location` its status): follow it at `status_url` or `ws_url`, fetch `results_url` when it ends. A
/// body that cannot be read through (not an array, a CSV without the required columns or with a broken
/// record) is refused whole (400); more than --batch-max-rows rows or bytes beyond the body limits, 413.
/// Or raw feature rows for a model with one fixed-width FP32 input: a JSON object `{model, version?, rows:
/// [[...], ...]}`, or CSV with `?model=` (a header row naming the input's values, then one value a cell).
/// Answered as each output's values per row (CSV columns: row, each output value, error_code,
/// error_message), inline or as a job by the same rules.
#[utoipa::path(post, path = "/api/v1/predictions/batch", tag = "predictions", params(BatchQuery),
    request_body(content(
        (Vec<PriceRequest> = "application/json"),
        (String = "text/csv", example = "material_id,quantity,supplier_id,delivery_date\n<id>,500,<id>,2026-12-20\n"),
        (Vec<u8> = "application/vnd.apache.parquet"))),
    security(("api_key" = [])),
    responses((status = 200, body = BatchAnswer), (status = 202, body = Accepted),
              (status = "4XX", body = ErrorEnvelope)))]
async fn predict_batch(
    State(app): State<AppState>,
    caller: Auth<Analyst>,
    ApiQuery(q): ApiQuery<BatchQuery>,
    request: Request,
) -> Result<Response, ApiError> {
    let csv_out = match q.format.as_deref() {
        Some("csv") => true,
        Some("json") => false,
        Some(other) => {
            return Err(ApiError::invalid(
                "format",
                format!("`{other}`: answer as json or csv"),
            ))
        }
        None => accepts(request.headers(), "text/csv"),
    };
    let respond_async = request
        .headers()
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("respond-async"));
    let kind = content_type(request.headers()).map(str::to_owned);
    if q.version.is_some() && q.model.is_none() {
        return Err(ApiError::invalid("version", "goes with `model`"));
    }
    if q.model.is_some() && kind.as_deref() != Some("text/csv") {
        return Err(ApiError::invalid(
            "model",
            "names the model of a CSV body of raw feature rows; a JSON batch of them names it in the body",
        ));
    }
    let max_inline = app.limits.batch_inline_max_rows;
    let org = caller.organization_id.clone();
    let key = idempotency_key(request.headers())?;
    if let Some(key) = &key {
        // A retry of a submit that made its job: that job, without reading the body again.
        if let Some(job) = app
            .store
            .batch_job_by_key(&org, key)
            .await
            .map_err(ApiError::store("batch job"))?
        {
            return Ok(accepted(job));
        }
    }
    let spooled = match kind.as_deref() {
        Some("application/json") => {
            let limit = app.limits.max_bulk_body_bytes;
            let bytes = axum::body::to_bytes(request.into_body(), limit)
                .await
                .map_err(|_| ApiError::BodyTooLarge {
                    limit,
                    flag: "--max-bulk-body-bytes",
                })?;
            if bytes.trim_ascii_start().starts_with(b"{") {
                let raw: RawBatch = super::extract::from_json(&bytes)?;
                drop(bytes);
                let target = RawModel::resolve(&app, &raw.model, raw.version)?;
                if raw.rows.is_empty() {
                    return Err(ApiError::BadRequest("there are no rows".into()));
                }
                if raw.rows.len() <= max_inline && !respond_async {
                    let width = target.width;
                    let checked = raw
                        .rows
                        .iter()
                        .map(|r| input::feature_row(r.len(), r.iter().map(|v| Ok(*v)), width))
                        .collect();
                    return raw_inline(target, checked, csv_out).await;
                }
                let dir = app.jobs.spool().map_err(input::io)?;
                let settings = app.jobs.settings;
                let outputs = target.outputs.clone();
                let width = target.width;
                let spooled = blocking(move || {
                    let mut spooled = Spooled {
                        dir,
                        format: input::FEATURES,
                        bytes: 0,
                        chunks: Vec::new(),
                        rows: raw.rows.len() as u64,
                    };
                    spooled.chunks = input::features_to_csv(
                        &raw.rows,
                        width,
                        &spooled.input(),
                        settings.chunk_rows,
                        settings.max_rows,
                    )?;
                    spooled.bytes = std::fs::metadata(spooled.input()).map_err(input::io)?.len();
                    results::Shape::keep(&outputs, &spooled.dir).map_err(input::io)?;
                    Ok(spooled)
                })
                .await?;
                return accept(&app, &org, target.model.manifest(), spooled, key).await;
            }
            let values: Vec<serde_json::Value> = serde_json::from_slice(&bytes).map_err(|e| {
                ApiError::BadRequest(format!(
                    "the body is not a JSON array of price requests: {e}"
                ))
            })?;
            if values.is_empty() {
                return Err(ApiError::BadRequest("there are no rows".into()));
            }
            if values.len() <= max_inline && !respond_async {
                let parsed = values
                    .into_iter()
                    .map(|v| {
                        serde_path_to_error::deserialize(v).map_err(|e| {
                            let field = e.path().to_string();
                            ApiError::invalid(&field, e.into_inner().to_string())
                        })
                    })
                    .collect();
                return inline(&app, &org, parsed, csv_out).await;
            }
            let dir = app.jobs.spool().map_err(input::io)?;
            let settings = app.jobs.settings;
            blocking(move || {
                let spooled = Spooled {
                    dir,
                    format: "json",
                    bytes: bytes.len() as u64,
                    chunks: Vec::new(),
                    rows: 0,
                };
                input::json_to_csv(&values, &spooled.input())?;
                index(
                    spooled,
                    input::Layout::Price,
                    settings.chunk_rows,
                    settings.max_rows,
                )
            })
            .await?
        }
        Some("text/csv") if q.model.is_some() => {
            let name = q.model.clone().unwrap_or_default();
            let target = RawModel::resolve(&app, &name, q.version)?;
            let dir = app.jobs.spool().map_err(input::io)?;
            let limit = app.jobs.settings.max_body_bytes;
            let mut spooled = Spooled {
                dir,
                format: input::FEATURES,
                bytes: 0,
                chunks: Vec::new(),
                rows: 0,
            };
            let path = spooled.input();
            spooled.bytes = spool(&app.jobs, request, &path, limit).await?;
            let settings = app.jobs.settings;
            let (width, outputs) = (target.width, target.outputs.clone());
            let layout = input::Layout::Features { width };
            let spooled = blocking(move || {
                results::Shape::keep(&outputs, &spooled.dir).map_err(input::io)?;
                index(spooled, layout, settings.chunk_rows, settings.max_rows)
            })
            .await?;
            if spooled.rows as usize <= max_inline && !respond_async {
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
                return raw_inline(target, checked, csv_out).await;
            }
            return accept(&app, &org, target.model.manifest(), spooled, key).await;
        }
        Some("text/csv") => {
            let dir = app.jobs.spool().map_err(input::io)?;
            let limit = app.jobs.settings.max_body_bytes;
            let path = dir.join("input.csv");
            let mut spooled = Spooled {
                dir,
                format: "csv",
                bytes: 0,
                chunks: Vec::new(),
                rows: 0,
            };
            spooled.bytes = spool(&app.jobs, request, &path, limit).await?;
            let settings = app.jobs.settings;
            blocking(move || {
                index(
                    spooled,
                    input::Layout::Price,
                    settings.chunk_rows,
                    settings.max_rows,
                )
            })
            .await?
        }
        Some(k) if PARQUET.contains(&k) => {
            let dir = app.jobs.spool().map_err(input::io)?;
            let limit = app.jobs.settings.max_body_bytes;
            let upload = dir.join("upload.parquet");
            let mut spooled = Spooled {
                dir,
                format: "parquet",
                bytes: 0,
                chunks: Vec::new(),
                rows: 0,
            };
            spooled.bytes = spool(&app.jobs, request, &upload, limit).await?;
            let settings = app.jobs.settings;
            blocking(move || {
                input::parquet_to_csv(&upload, &spooled.input())?;
                let _ = std::fs::remove_file(&upload);
                index(
                    spooled,
                    input::Layout::Price,
                    settings.chunk_rows,
                    settings.max_rows,
                )
            })
            .await?
        }
        _ => return Err(ApiError::UnsupportedMediaType(
            "send a JSON array of price requests (application/json), CSV (text/csv) or Parquet \
                 (application/vnd.apache.parquet)"
                .into(),
        )),
    };
    if spooled.rows as usize <= max_inline && !respond_async {
        let path = spooled.input();
        let parsed = blocking(move || {
            let bytes = std::fs::read(&path).map_err(input::io)?;
            from_csv(&bytes)
        })
        .await?;
        return inline(&app, &org, parsed, csv_out).await;
    }
    let model = app.repository.get(crate::predict::PRICE_MODEL, None)?;
    accept(&app, &org, model.manifest(), spooled, key).await
}

/// The `Idempotency-Key` header: at most 255 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(key) if !key.is_empty() && key.len() <= 255 => Ok(Some(key.to_string())),
        _ => Err(ApiError::invalid(
            "Idempotency-Key",
            "1 to 255 visible ASCII characters",
        )),
    }
}

/// A spooled batch made a job of `org` on `model`'s version (or the job its idempotency key made).
async fn accept(
    app: &AppState,
    org: &str,
    model: &mercator_engine::Manifest,
    spooled: Spooled,
    key: Option<String>,
) -> Result<Response, ApiError> {
    let job = app
        .jobs
        .submit(&app.store, org, model, spooled, key)
        .await?;
    Ok(accepted(job))
}

/// 202 with where to follow the job, `Location` its status.
fn accepted(job: BatchJob) -> Response {
    let accepted = Accepted {
        status_url: format!("/api/v1/predictions/batch/{}", job.id),
        results_url: format!("/api/v1/predictions/batch/{}/results", job.id),
        ws_url: format!("/ws/predictions/{}", job.id),
        batch_id: job.id,
        state: job.state,
        total_rows: job.total_rows,
        created_at: job.created_at,
    };
    (
        StatusCode::ACCEPTED,
        [(header::LOCATION, accepted.status_url.clone())],
        Json(accepted),
    )
        .into_response()
}

/// Whether the request's `Accept` names `kind`.
fn accepts(headers: &HeaderMap, kind: &str) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains(kind))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        ApiError::Engine(mercator_engine::EngineError::Runtime(format!(
            "a batch task failed: {e}"
        )))
    })?
}

/// Streams the body to `path`, at most `limit` bytes (413 beyond); a body whose `Content-Length` says it
/// is too large, or too large for the free disk (507), is refused before a byte is written.
async fn spool(
    jobs: &crate::jobs::Jobs,
    request: Request,
    path: &std::path::Path,
    limit: usize,
) -> Result<u64, ApiError> {
    let length = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(length) = length {
        if length > limit as u64 {
            return Err(ApiError::BodyTooLarge {
                limit,
                flag: "--batch-max-body-bytes",
            });
        }
        jobs.check_space(length)?;
    }
    let mut file = tokio::fs::File::create(path).await.map_err(input::io)?;
    let mut stream = request.into_body().into_data_stream();
    let mut written = 0u64;
    while let Some(frame) = stream.next().await {
        let frame = frame.map_err(|e| ApiError::BadRequest(format!("the body broke off: {e}")))?;
        written += frame.len() as u64;
        if written > limit as u64 {
            return Err(ApiError::BodyTooLarge {
                limit,
                flag: "--batch-max-body-bytes",
            });
        }
        file.write_all(&frame).await.map_err(input::io)?;
    }
    file.flush().await.map_err(input::io)?;
    Ok(written)
}

/// The spooled CSV, indexed into chunks (a batch with no rows is refused).
fn index(
    mut spooled: Spooled,
    layout: input::Layout,
    chunk_rows: usize,
    max_rows: u64,
) -> Result<Spooled, ApiError> {
    let indexed = input::index(&spooled.input(), layout, chunk_rows, max_rows)?;
    if indexed.rows == 0 {
        return Err(ApiError::BadRequest("there are no rows".into()));
    }
    spooled.rows = indexed.rows;
    spooled.chunks = indexed.chunks;
    Ok(spooled)
}

/// A batch answered in the request: parsed rows priced together, each row's error in its place.
async fn inline(
    app: &AppState,
    org: &str,
    parsed: Vec<Result<PriceRequest, ApiError>>,
    csv_out: bool,
) -> Result<Response, ApiError> {
    // Rows that parsed go to the predictor together; the others keep their parse error in place.
    let (requests, errors) = input::split(parsed);
    let answers = app
        .predictor
        .price_batch(&app.store, &app.repository, &app.data_dir, org, &requests)
        .await?;
    let outcomes = input::merge(errors, answers);
    if csv_out {
        let mut w = csv::Writer::from_writer(Vec::new());
        let _ = w.write_record(results::COLUMNS);
        for (i, outcome) in outcomes.iter().enumerate() {
            let _ = results::write_row(&mut w, i as u64 + 1, outcome);
        }
        return Ok((
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            w.into_inner().unwrap_or_default(),
        )
            .into_response());
    }
    let results: Vec<BatchRow> = outcomes
        .into_iter()
        .enumerate()
        .map(|(i, outcome)| match outcome {
            Ok(prediction) => BatchRow {
                row: i + 1,
                prediction: Some(prediction),
                error: None,
            },
            Err(e) => BatchRow {
                row: i + 1,
                prediction: None,
                error: Some(RowError {
                    code: e.status_and_code().1.to_string(),
                    message: e.to_string(),
                }),
            },
        })
        .collect();
    let failed = results.iter().filter(|r| r.error.is_some()).count();
    Ok(Json(BatchAnswer {
        rows: results.len(),
        succeeded: results.len() - failed,
        failed,
        results,
    })
    .into_response())
}

/// A job as the API shows it: the stored object, its rate and time left, where to follow it.
#[derive(Serialize, ToSchema)]
pub struct JobView {
    #[serde(flatten)]
    pub job: BatchJob,
    pub rows_per_sec: f64,
    pub eta_seconds: Option<f64>,
    /// When an ended job's results are deleted (--batch-retention-secs).
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
    pub status_url: String,
    pub results_url: String,
    pub ws_url: String,
}

impl JobView {
    fn of(app: &AppState, job: BatchJob) -> JobView {
        let progress = progress(app, &job);
        JobView {
            rows_per_sec: progress.rows_per_sec,
            eta_seconds: progress.eta_seconds,
            expires_at: app.jobs.expires_at(&job),
            status_url: format!("/api/v1/predictions/batch/{}", job.id),
            results_url: format!("/api/v1/predictions/batch/{}/results", job.id),
            ws_url: format!("/ws/predictions/{}", job.id),
            job,
        }
    }
}

/// A job's progress: the live rate while it runs here, else the average over its run.
fn progress(app: &AppState, job: &BatchJob) -> Progress {
    let rate = app.jobs.live_rate(&job.id).unwrap_or_else(|| {
        let end = job.finished_at.unwrap_or_else(chrono::Utc::now);
        match job.started_at {
            Some(start) => {
                let seconds = (end - start).num_milliseconds() as f64 / 1000.0;
                if seconds > 0.0 {
                    job.processed_rows as f64 / seconds
                } else {
                    0.0
                }
            }
            None => 0.0,
        }
    });
    Progress::of(job, rate)
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct JobListQuery {
    /// queued, running, succeeded, failed or cancelled.
    pub state: Option<String>,
    pub limit: Option<u32>,
    pub offset: Option<u64>,
}

/// The organization's batch jobs, newest first.
#[utoipa::path(get, path = "/api/v1/predictions/batch", tag = "predictions", params(JobListQuery),
    security(("api_key" = [])),
    responses((status = 200, body = Page<JobView>), (status = "4XX", body = ErrorEnvelope)))]
async fn list_jobs(
    State(app): State<AppState>,
    caller: Auth<Viewer>,
    ApiQuery(q): ApiQuery<JobListQuery>,
) -> Result<Json<Page<JobView>>, ApiError> {
    let state = q
        .state
        .map(|s| {
            BatchState::parse(&s).ok_or_else(|| {
                ApiError::invalid(
                    "state",
                    "one of queued, running, succeeded, failed, cancelled",
                )
            })
        })
        .transpose()?;
    let page = page(&app, q.limit, q.offset, None, false)?;
    let listed = app
        .store
        .batch_jobs(&caller.organization_id, state, &page)
        .await
        .map_err(ApiError::store("batch job"))?;
    Ok(Json(Page {
        items: listed
            .items
            .into_iter()
            .map(|j| JobView::of(&app, j))
            .collect(),
        has_more: listed.has_more,
        total: listed.total,
        limit: listed.limit,
        offset: listed.offset,
    }))
}

/// A batch job: state, processed and total rows, errors, rate, times.
#[utoipa::path(get, path = "/api/v1/predictions/batch/{id}", tag = "predictions",
    params(("id" = String, Path)), security(("api_key" = [])),
    responses((status = 200, body = JobView), (status = "4XX", body = ErrorEnvelope)))]
async fn get_job(
    State(app): State<AppState>,
    caller: Auth<Viewer>,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let job = app
        .store
        .batch_job(&caller.organization_id, &id)
        .await
        .map_err(ApiError::store("batch job"))?;
    Ok(Json(JobView::of(&app, job)))
}

/// Cancel a batch job (analyst): a queued job at once; a running one stops before its next commit, keeping
/// the rows committed (the rest answer `not_run`). Answers the job once it has stopped (200), or 202 with
/// `cancel_requested_at` if it has not within 2 seconds. An ended job is left as it is.
#[utoipa::path(delete, path = "/api/v1/predictions/batch/{id}", tag = "predictions",
    params(("id" = String, Path)), security(("api_key" = [])),
    responses((status = 200, body = JobView), (status = 202, body = JobView),
              (status = "4XX", body = ErrorEnvelope)))]
async fn cancel_job(
    State(app): State<AppState>,
    caller: Auth<Analyst>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    cancel(&app, &caller.organization_id, &id).await
}

/// Cancel a batch job (analyst), as `DELETE /api/v1/predictions/batch/{id}` does: for clients that cannot
/// send DELETE, and where a cancel reads better as an action.
#[utoipa::path(post, path = "/api/v1/predictions/batch/{id}/cancel", tag = "predictions",
    params(("id" = String, Path)), security(("api_key" = [])),
    responses((status = 200, body = JobView), (status = 202, body = JobView),
              (status = "4XX", body = ErrorEnvelope)))]
async fn cancel_job_post(
    State(app): State<AppState>,
    caller: Auth<Analyst>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    cancel(&app, &caller.organization_id, &id).await
}

async fn cancel(app: &AppState, org: &str, id: &str) -> Result<Response, ApiError> {
    let mut job = app
        .store
        .cancel_batch_job(org, id)
        .await
        .map_err(ApiError::store("batch job"))?;
    app.jobs.cancel(id);
    let until = Instant::now() + Duration::from_secs(2);
    while !job.state.is_terminal() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
        job = app
            .store
            .batch_job(org, id)
            .await
            .map_err(ApiError::store("batch job"))?;
    }
    let status = if job.state.is_terminal() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, Json(JobView::of(app, job))).into_response())
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ResultsQuery {
    /// csv, json (an array), ndjson or parquet; else from `Accept`, else json.
    pub format: Option<String>,
    /// Leave out the rows before this one (from 0): a broken download resumes where it broke (CSV then has
    /// no header row).
    pub offset: Option<u64>,
}

/// A job's results, once it has ended (409 before; 410 once expired; 421 from a replica that did not run
/// it): one row per input row, in input order, streamed. CSV columns of price requests: row,
/// predicted_price, lower, upper, level, confidence_score, model_version, as_of, error_code, error_message;
/// of raw feature rows: row, each output value (`name`, or `name_1..name_N`), error_code, error_message.
/// JSON rows as the inline answer's; Parquet with the CSV's columns. Rows a cancelled or failed job never
/// ran carry `not_run`. `X-Total-Rows` says how many rows follow; `offset` resumes a broken download.
#[utoipa::path(get, path = "/api/v1/predictions/batch/{id}/results", tag = "predictions",
    params(("id" = String, Path), ResultsQuery), security(("api_key" = [])),
    responses((status = 200, description = "The rows, in the format asked for"),
              (status = "4XX", body = ErrorEnvelope)))]
async fn job_results(
    State(app): State<AppState>,
    caller: Auth<Viewer>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<ResultsQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let pick = results::Pick {
        offset: q.offset.unwrap_or(0),
        errors_only: false,
    };
    render(&app, &caller.organization_id, &id, q.format, &headers, pick).await
}

/// A job's failed rows only (those it never ran, `not_run`, included), once it has ended: as its results,
/// in the same formats and columns.
#[utoipa::path(get, path = "/api/v1/predictions/batch/{id}/errors", tag = "predictions",
    params(("id" = String, Path), ResultsQuery), security(("api_key" = [])),
    responses((status = 200, description = "The failed rows, in the format asked for"),
              (status = "4XX", body = ErrorEnvelope)))]
async fn job_errors(
    State(app): State<AppState>,
    caller: Auth<Viewer>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<ResultsQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let pick = results::Pick {
        offset: q.offset.unwrap_or(0),
        errors_only: true,
    };
    render(&app, &caller.organization_id, &id, q.format, &headers, pick).await
}

/// The rows of an ended job that `pick` takes, streamed in the format asked for.
async fn render(
    app: &AppState,
    org: &str,
    id: &str,
    format: Option<String>,
    headers: &HeaderMap,
    pick: results::Pick,
) -> Result<Response, ApiError> {
    let format = match format.as_deref() {
        Some(f) => Format::parse(f).ok_or_else(|| {
            ApiError::invalid("format", format!("`{f}`: csv, json, ndjson or parquet"))
        })?,
        None if accepts(headers, "text/csv") => Format::Csv,
        None if accepts(headers, "ndjson") => Format::Ndjson,
        None if accepts(headers, "parquet") => Format::Parquet,
        None => Format::Json,
    };
    let job = app
        .store
        .batch_job(org, id)
        .await
        .map_err(ApiError::store("batch job"))?;
    if !job.state.is_terminal() {
        return Err(ApiError::ResultsNotReady(job.state.as_str()));
    }
    if job.node != app.jobs.node {
        return Err(ApiError::ResultsElsewhere(job.node));
    }
    if app.jobs.expired(&job) {
        let at = app.jobs.expires_at(&job).unwrap_or_else(chrono::Utc::now);
        return Err(ApiError::ResultsExpired(at.to_rfc3339()));
    }
    let total = pick.rows(&job);
    let rx = results::render(job, app.jobs.job_dir(id), format, pick);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let mut response = (
        [(header::CONTENT_TYPE, format.content_type().to_string())],
        axum::body::Body::from_stream(stream),
    )
        .into_response();
    if let Some(total) = total {
        response.headers_mut().insert(
            header::HeaderName::from_static("x-total-rows"),
            header::HeaderValue::from(total),
        );
    }
    Ok(response)
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ProgressQuery {
    /// The API key, for clients that cannot set headers on a WebSocket handshake.
    pub api_key: Option<String>,
}

/// A WebSocket of a batch job's progress: `{"type": "snapshot"}` first (the current state, however late the
/// client comes), then `progress` at most every 250 ms as chunks commit (and at least every 10 s), then
/// `final` with the summary, and a normal close. Each message: type, batch_id, seq, state, processed,
/// total, succeeded, failed, rows_per_sec, eta_seconds, ts. Another organization's job is 404.
#[utoipa::path(get, path = "/ws/predictions/{batch_id}", tag = "predictions",
    params(("batch_id" = String, Path), ProgressQuery), security(("api_key" = [])),
    responses((status = 101, description = "Switching to the WebSocket protocol"),
              (status = "4XX", body = ErrorEnvelope)))]
async fn progress_stream(
    State(app): State<AppState>,
    caller: Auth<Viewer>,
    Path(batch_id): Path<String>,
    ApiQuery(_): ApiQuery<ProgressQuery>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let org = caller.organization_id.clone();
    app.store
        .batch_job(&org, &batch_id)
        .await
        .map_err(ApiError::store("batch job"))?;
    // Counted under the key's socket cap and with incoming messages capped, as the other streams.
    let (upgrade, held) = super::stream::admit(&app, caller.0.clone(), upgrade)?;
    Ok(upgrade.on_upgrade(move |socket| async move {
        follow(socket, app, org, batch_id).await;
        drop(held);
    }))
}

/// Least time between two progress messages, and most between two messages of a job that moves slowly.
const MIN_GAP: Duration = Duration::from_millis(250);
const HEARTBEAT: Duration = Duration::from_secs(10);

async fn follow(mut socket: WebSocket, app: AppState, org: String, id: String) {
    let mut updates = app.jobs.subscribe(&id);
    let mut seq = 0u64;
    let mut kind = "snapshot";
    let mut live = true;
    let mut last: Option<(Instant, u64, BatchState)> = None;
    loop {
        let Ok(job) = app.store.batch_job(&org, &id).await else {
            break;
        };
        let changed = last.is_none_or(|(_, processed, state)| {
            processed != job.processed_rows || state != job.state
        });
        let due = last.is_none_or(|(at, _, _)| at.elapsed() >= HEARTBEAT);
        if job.state.is_terminal() || changed || due {
            let message = message(&app, &job, kind, seq);
            seq += 1;
            kind = "progress";
            if socket
                .send(Message::Text(message.to_string().into()))
                .await
                .is_err()
            {
                break;
            }
            last = Some((Instant::now(), job.processed_rows, job.state));
            if job.state.is_terminal() {
                let _ = socket
                    .send(Message::Close(Some(CloseFrame {
                        code: 1000,
                        reason: "the job has ended".into(),
                    })))
                    .await;
                break;
            }
            tokio::time::sleep(MIN_GAP).await;
        }
        tokio::select! {
            changed = updates.changed(), if live => {
                // The runner is gone: the job ended (or stopped); the store says which.
                live = changed.is_ok();
            }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
        }
    }
    drop(updates);
    app.jobs.unsubscribe(&id);
}

/// One progress message; `final` adds the summary.
fn message(app: &AppState, job: &BatchJob, kind: &str, seq: u64) -> serde_json::Value {
    let progress = progress(app, job);
    let terminal = job.state.is_terminal();
    let mut m = serde_json::json!({
        "type": if terminal { "final" } else { kind },
        "batch_id": job.id,
        "seq": seq,
        "state": progress.state,
        "processed": progress.processed,
        "total": progress.total,
        "succeeded": progress.succeeded,
        "failed": progress.failed,
        "rows_per_sec": progress.rows_per_sec,
        "eta_seconds": progress.eta_seconds,
        "ts": chrono::Utc::now(),
    });
    if terminal {
        let duration = match (job.started_at, job.finished_at) {
            (Some(s), Some(f)) => (f - s).num_milliseconds() as f64 / 1000.0,
            _ => 0.0,
        };
        m["duration_seconds"] = serde_json::json!(duration);
        m["results_url"] =
            serde_json::json!(format!("/api/v1/predictions/batch/{}/results", job.id));
        m["error"] = serde_json::json!(job.error);
    }
    m
}

/// A batch of raw feature rows for a model with one fixed-width FP32 input.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawBatch {
    pub model: String,
    /// Default: the active version (or the traffic split's pick, once for the whole batch).
    pub version: Option<u64>,
    /// One array of the input's width per row.
    pub rows: Vec<Vec<f64>>,
}

/// One raw row's answer: each output's values for the row, by output name.
#[derive(Serialize, ToSchema)]
pub struct RawRow {
    pub row: usize,
    #[schema(value_type = Option<Object>)]
    pub outputs: Option<serde_json::Map<String, serde_json::Value>>,
    pub error: Option<RowError>,
}

#[derive(Serialize, ToSchema)]
pub struct RawAnswer {
    pub model: crate::predict::ModelRef,
    pub rows: usize,
    pub succeeded: usize,
    pub failed: usize,
    pub results: Vec<RawRow>,
}

/// A model that takes raw feature rows: one fixed-width FP32 input, outputs of fixed widths.
struct RawModel {
    model: mercator_engine::Model,
    width: usize,
    outputs: Vec<results::Output>,
}

impl RawModel {
    /// The version asked for (default: the active one, or the traffic split's pick), if it takes raw rows.
    fn resolve(app: &AppState, name: &str, version: Option<u64>) -> Result<RawModel, ApiError> {
        let version = version.map(|v| v.to_string());
        let model = app.repository.get(name, version.as_deref())?;
        let manifest = model.manifest();
        let width = match manifest.inputs.as_slice() {
            [only] if only.datatype == mercator_engine::DataType::Fp32 => only.fixed_row_len(),
            _ => None,
        }
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
}

/// Raw rows answered in the request, through the model's queue in batches of its batch size; a row of the
/// wrong width or with a value that is not finite carries its own error.
async fn raw_inline(
    target: RawModel,
    checked: Vec<Result<Vec<f32>, ApiError>>,
    csv_out: bool,
) -> Result<Response, ApiError> {
    let manifest = target.model.manifest();
    let input = &manifest.inputs[0];
    let width = target.width;
    let ready: Vec<&Vec<f32>> = checked.iter().filter_map(|r| r.as_ref().ok()).collect();
    // Each answered row's output values, all outputs in order, one row after another.
    let values: usize = target.outputs.iter().map(|o| o.width).sum();
    let mut answered: Vec<f64> = Vec::with_capacity(ready.len() * values);
    for chunk in ready.chunks(manifest.batching.max_batch_size.max(1)) {
        let tensor = mercator_engine::Tensor {
            name: input.name.clone(),
            shape: vec![chunk.len(), width],
            data: mercator_engine::TensorData::Fp32(
                chunk.iter().flat_map(|r| r.iter().copied()).collect(),
            ),
        };
        let answer = target.model.infer(vec![tensor], None).await?;
        results::append_rows(&answer.outputs, chunk.len(), &mut answered);
    }
    let mut answered = answered.chunks_exact(values.max(1));
    let outcomes: Vec<Result<&[f64], ApiError>> = checked
        .into_iter()
        .map(|r| r.map(|_| answered.next().unwrap_or_default()))
        .collect();
    if csv_out {
        let shape = results::Shape::Outputs(target.outputs.clone());
        let mut w = csv::Writer::from_writer(Vec::new());
        let _ = w.write_record(shape.columns());
        for (i, outcome) in outcomes.iter().enumerate() {
            let _ = results::write_values(&mut w, i as u64 + 1, outcome.as_ref().copied(), values);
        }
        return Ok((
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            w.into_inner().unwrap_or_default(),
        )
            .into_response());
    }
    let results: Vec<RawRow> = outcomes
        .into_iter()
        .enumerate()
        .map(|(i, outcome)| match outcome {
            Ok(values) => {
                let mut outputs = serde_json::Map::new();
                let mut at = 0;
                for o in &target.outputs {
                    outputs.insert(o.name.clone(), serde_json::json!(values[at..at + o.width]));
                    at += o.width;
                }
                RawRow {
                    row: i + 1,
                    outputs: Some(outputs),
                    error: None,
                }
            }
            Err(e) => RawRow {
                row: i + 1,
                outputs: None,
                error: Some(RowError {
                    code: e.status_and_code().1.to_string(),
                    message: e.to_string(),
                }),
            },
        })
        .collect();
    let failed = results.iter().filter(|r| r.error.is_some()).count();
    Ok(Json(RawAnswer {
        model: crate::predict::ModelRef {
            name: manifest.name.clone(),
            version: manifest.version,
        },
        rows: results.len(),
        succeeded: results.len() - failed,
        failed,
        results,
    })
    .into_response())
}

fn unsupported(model: &str) -> ApiError {
    ApiError::invalid(
        "model",
        format!(
            "{model}: raw batches take models with one fixed-width FP32 input and fixed-width outputs; \
             use the V2 API"
        ),
    )
}

/// An inline CSV's rows, each a request or its own error.
fn from_csv(bytes: &[u8]) -> Result<Vec<Result<PriceRequest, ApiError>>, ApiError> {
    let (headers, mut reader) = csv_body::open(bytes, &input::COLUMNS)?;
    let columns = PriceColumns::new(&headers);
    Ok(reader
        .records()
        .map(|record| match record {
            Ok(record) => columns.parse(&record),
            Err(e) => Err(ApiError::invalid("row", e.to_string())),
        })
        .collect())
}
