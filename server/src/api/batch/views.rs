//! Jobs listed, shown and cancelled; an ended job's results and errors, streamed in the format asked for.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use mercator_services::jobs::results::{self, Format};
use mercator_store::BatchState;
use serde::Deserialize;
use utoipa::IntoParams;

use super::super::extract::ApiQuery;
use super::super::{page, ErrorEnvelope, Page};
use super::{accepts, JobView};
use crate::auth::{Analyst, Auth, Viewer};
use crate::error::ApiError;
use crate::AppState;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct JobListQuery {
    /// queued, running, succeeded, failed or cancelled.
    #[param(pattern = "^(queued|running|succeeded|failed|cancelled)$")]
    pub state: Option<String>,
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    #[param(maximum = 1_000_000_000)]
    pub offset: Option<u64>,
}

/// The organization's batch jobs, newest first.
#[utoipa::path(get, path = "/api/v1/predictions/batch", tag = "predictions", params(JobListQuery),
    security(("api_key" = [])),
    responses((status = 200, body = Page<JobView>), (status = "4XX", body = ErrorEnvelope)))]
pub(super) async fn list_jobs(
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
    let listed = app.jobs.list(&caller.organization_id, state, &page).await?;
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
pub(super) async fn get_job(
    State(app): State<AppState>,
    caller: Auth<Viewer>,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let job = app.jobs.job(&caller.organization_id, &id).await?;
    Ok(Json(JobView::of(&app, job)))
}

/// Cancel a batch job (analyst), queued or running, at once: the rows committed are kept (the rest answer
/// `not_run`), and a chunk computing on any replica is not committed after this. Answers the job (200). An
/// ended job is left as it is.
#[utoipa::path(delete, path = "/api/v1/predictions/batch/{id}", tag = "predictions",
    params(("id" = String, Path)), security(("api_key" = [])),
    responses((status = 200, body = JobView), (status = "4XX", body = ErrorEnvelope)))]
pub(super) async fn cancel_job(
    State(app): State<AppState>,
    caller: Auth<Analyst>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    cancel(&app, &caller, &id).await
}

/// Cancel a batch job (analyst), as `DELETE /api/v1/predictions/batch/{id}` does: for clients that cannot
/// send DELETE, and where a cancel reads better as an action.
#[utoipa::path(post, path = "/api/v1/predictions/batch/{id}/cancel", tag = "predictions",
    params(("id" = String, Path)), security(("api_key" = [])),
    responses((status = 200, body = JobView), (status = "4XX", body = ErrorEnvelope)))]
pub(super) async fn cancel_job_post(
    State(app): State<AppState>,
    caller: Auth<Analyst>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    cancel(&app, &caller, &id).await
}

async fn cancel(app: &AppState, caller: &Auth<Analyst>, id: &str) -> Result<Response, ApiError> {
    let job = app.jobs.cancel(&caller.organization_id, id).await?;
    super::super::audit::record(
        app,
        caller,
        "batch.cancel",
        ("batch_job", id),
        None::<()>,
        Some(serde_json::json!({ "state": job.state })),
    )
    .await;
    Ok(Json(JobView::of(app, job)).into_response())
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ResultsQuery {
    /// csv, json (an array), ndjson or parquet; else from `Accept`, else json.
    #[param(pattern = "^(csv|json|ndjson|parquet)$")]
    pub format: Option<String>,
    /// Leave out the rows before this one (from 0): a broken download resumes where it broke (CSV then has
    /// no header row).
    #[param(maximum = 1_000_000_000)]
    pub offset: Option<u64>,
}

/// A job's results, once it has ended (409 before; 410 once expired), from any replica: one row per input
/// row, in input order, streamed. CSV columns of price requests: row,
/// predicted_price, lower, upper, level, confidence_score, model_version, as_of, error_code, error_message;
/// of raw feature rows: row, each output value (`name`, or `name_1..name_N`), error_code, error_message.
/// JSON rows as the inline answer's; Parquet with the CSV's columns. Rows a cancelled or failed job never
/// ran carry `not_run`. `X-Total-Rows` says how many rows follow; `offset` resumes a broken download.
#[utoipa::path(get, path = "/api/v1/predictions/batch/{id}/results", tag = "predictions",
    params(("id" = String, Path), ResultsQuery), security(("api_key" = [])),
    responses((status = 200, description = "The rows, in the format asked for"),
              (status = "4XX", body = ErrorEnvelope)))]
pub(super) async fn job_results(
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
pub(super) async fn job_errors(
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
    let rendered = app.jobs.results(org, id, format, pick).await?;
    let stream = futures_util::stream::unfold(rendered.chunks, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let mut response = (
        [(header::CONTENT_TYPE, format.content_type().to_string())],
        axum::body::Body::from_stream(stream),
    )
        .into_response();
    if let Some(total) = rendered.total {
        response.headers_mut().insert(
            header::HeaderName::from_static("x-total-rows"),
            header::HeaderValue::from(total),
        );
    }
    Ok(response)
}
