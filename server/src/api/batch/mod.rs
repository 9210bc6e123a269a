//! Batch predictions: `POST /api/v1/predictions/batch` answers a batch inline up to
//! --batch-inline-max-rows rows, and makes a larger one (or one sent with `Prefer: respond-async`) a job;
//! `GET`/`DELETE /api/v1/predictions/batch/{id}`, `GET .../results`, the organization's list, and
//! `/ws/predictions/{batch_id}` for progress. The handlers extract and render; [`mercator_services::jobs`]
//! takes batches, runs jobs and renders their results.
//!
//! - `submit.rs`: the submit, and the inline answers rendered.
//! - `views.rs`: jobs listed, shown, cancelled; their results and errors.
//! - `stream.rs`: a job's progress over a WebSocket.

pub mod stream;
pub mod submit;
pub mod views;

use axum::http::{header, HeaderMap};
use mercator_services::jobs::Progress;
use mercator_services::predict::PricePrediction;
use mercator_store::{BatchJob, BatchState};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(submit::predict_batch, views::list_jobs))
        .routes(routes!(views::get_job, views::cancel_job))
        .routes(routes!(views::cancel_job_post))
        .routes(routes!(views::job_results))
        .routes(routes!(views::job_errors))
        .routes(routes!(stream::progress_stream))
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

impl Accepted {
    fn of(job: BatchJob) -> Accepted {
        let urls = Urls::of(&job.id);
        Accepted {
            batch_id: job.id,
            state: job.state,
            total_rows: job.total_rows,
            created_at: job.created_at,
            status_url: urls.status,
            results_url: urls.results,
            ws_url: urls.ws,
        }
    }
}

/// Where a job is followed: the one place its paths are written.
struct Urls {
    status: String,
    results: String,
    ws: String,
}

impl Urls {
    fn of(id: &str) -> Urls {
        Urls {
            status: format!("/api/v1/predictions/batch/{id}"),
            results: format!("/api/v1/predictions/batch/{id}/results"),
            ws: format!("/ws/predictions/{id}"),
        }
    }
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
        let progress: Progress = app.jobs.progress(&job);
        let urls = Urls::of(&job.id);
        JobView {
            rows_per_sec: progress.rows_per_sec,
            eta_seconds: progress.eta_seconds,
            expires_at: app.jobs.expires_at(&job),
            status_url: urls.status,
            results_url: urls.results,
            ws_url: urls.ws,
            job,
        }
    }
}

/// Whether the request's `Accept` names `kind`.
fn accepts(headers: &HeaderMap, kind: &str) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains(kind))
}
