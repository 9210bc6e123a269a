//! `POST /api/v1/predictions/batch`: the body handed to the jobs service as it arrives, and what it
//! becomes rendered: inline answers as JSON or CSV, a job as 202 with where to follow it.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use mercator_services::jobs::{
    results, BatchError, BodyFault, Intake, Kind, RawAnswers, Submission, Upload,
};
use mercator_services::predict::{PricePrediction, PriceRequest};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::super::extract::{content_type, ApiQuery};
use super::super::ErrorEnvelope;
use super::{accepts, Accepted, BatchAnswer, BatchRow, RowError};
use crate::auth::{Analyst, Auth};
use crate::error::ApiError;
use crate::AppState;

/// Parquet bodies' content types.
const PARQUET: [&str; 2] = ["application/vnd.apache.parquet", "application/x-parquet"];

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct BatchQuery {
    /// `json` (default) or `csv`; `Accept: text/csv` also picks CSV.
    #[param(pattern = "^(json|csv)$")]
    pub format: Option<String>,
    /// With a CSV body: the model whose raw feature rows the CSV holds (a header row, then one value a
    /// cell), instead of price requests.
    pub model: Option<String>,
    /// With `model`: its version (default: the active one, or the traffic split's pick).
    pub version: Option<u64>,
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
    pub model: mercator_services::predict::ModelRef,
    pub rows: usize,
    pub succeeded: usize,
    pub failed: usize,
    pub results: Vec<RawRow>,
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
    responses((status = 200, content((BatchAnswer = "application/json"), (String = "text/csv"))),
              (status = 202, body = Accepted),
              (status = "4XX", body = ErrorEnvelope)))]
pub(super) async fn predict_batch(
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
    let kind = kind(request.headers(), q)?;
    let _admitted = app.heavy.admit(&caller.organization_id)?;
    let submission = Submission {
        org: caller.organization_id.clone(),
        kind,
        respond_async: request
            .headers()
            .get_all("prefer")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.contains("respond-async")),
        idempotency_key: idempotency_key(request.headers())?,
        body: upload(request),
    };
    Ok(match app.jobs.submit(submission).await? {
        Intake::Prices(outcomes) => prices(outcomes, csv_out),
        Intake::Raw(answers) => raw(answers, csv_out),
        Intake::Job(job) => {
            let accepted = Accepted::of(*job);
            super::super::audit::record(
                &app,
                &caller,
                "batch.submit",
                ("batch_job", &accepted.batch_id),
                None::<()>,
                Some(&accepted),
            )
            .await;
            (
                StatusCode::ACCEPTED,
                [(header::LOCATION, accepted.status_url.clone())],
                Json(accepted),
            )
                .into_response()
        }
    })
}

/// What the body holds, from its content type and `?model=`.
fn kind(headers: &HeaderMap, q: BatchQuery) -> Result<Kind, ApiError> {
    let kind = content_type(headers);
    if q.version.is_some() && q.model.is_none() {
        return Err(ApiError::invalid("version", "goes with `model`"));
    }
    Ok(match (kind, q.model) {
        (Some("text/csv"), Some(model)) => Kind::FeaturesCsv {
            model,
            version: q.version,
        },
        (_, Some(_)) => {
            return Err(ApiError::invalid(
                "model",
                "names the model of a CSV body of raw feature rows; a JSON batch of them names it in the body",
            ))
        }
        (Some("application/json"), None) => Kind::Json,
        (Some("text/csv"), None) => Kind::Csv,
        (Some(k), None) if PARQUET.contains(&k) => Kind::Parquet,
        _ => {
            return Err(ApiError::UnsupportedMediaType(
                "send a JSON array of price requests (application/json), CSV (text/csv) or Parquet \
                 (application/vnd.apache.parquet)"
                    .into(),
            ))
        }
    })
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

/// The body as it arrives, with its announced length; a stall past the body read timeout says so.
fn upload(request: Request) -> Upload {
    let length = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let chunks = request.into_body().into_data_stream().map(|chunk| {
        chunk.map_err(|e| {
            if crate::error::timed_out(&e) {
                BodyFault::TimedOut
            } else {
                BodyFault::Broken(e.to_string())
            }
        })
    });
    Upload {
        length,
        chunks: Box::pin(chunks),
    }
}

fn row_error(e: &BatchError) -> RowError {
    RowError {
        code: e.code().to_string(),
        message: e.to_string(),
    }
}

fn csv_response(bytes: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], bytes).into_response()
}

/// Price requests answered inline: JSON, or CSV with the results' columns.
fn prices(outcomes: Vec<Result<PricePrediction, BatchError>>, csv_out: bool) -> Response {
    if csv_out {
        let mut w = csv::Writer::from_writer(Vec::new());
        let _ = w.write_record(results::COLUMNS);
        for (i, outcome) in outcomes.iter().enumerate() {
            let _ = results::write_row(&mut w, i as u64 + 1, outcome);
        }
        return csv_response(w.into_inner().unwrap_or_default());
    }
    let results: Vec<BatchRow> = outcomes
        .into_iter()
        .enumerate()
        .map(|(i, outcome)| BatchRow {
            row: i + 1,
            error: outcome.as_ref().err().map(row_error),
            prediction: outcome.ok(),
        })
        .collect();
    let failed = results.iter().filter(|r| r.error.is_some()).count();
    Json(BatchAnswer {
        rows: results.len(),
        succeeded: results.len() - failed,
        failed,
        results,
    })
    .into_response()
}

/// Raw feature rows answered inline: each output's values by name, or CSV with a column per value.
fn raw(answers: RawAnswers, csv_out: bool) -> Response {
    let values: usize = answers.outputs.iter().map(|o| o.width).sum();
    if csv_out {
        let shape = results::Shape::Outputs(answers.outputs.clone());
        let mut w = csv::Writer::from_writer(Vec::new());
        let _ = w.write_record(shape.columns());
        for (i, outcome) in answers.rows.iter().enumerate() {
            let outcome = outcome.as_ref().map(Vec::as_slice);
            let _ = results::write_values(&mut w, i as u64 + 1, outcome, values);
        }
        return csv_response(w.into_inner().unwrap_or_default());
    }
    let results: Vec<RawRow> = answers
        .rows
        .iter()
        .enumerate()
        .map(|(i, outcome)| match outcome {
            Ok(values) => {
                let mut outputs = serde_json::Map::new();
                let mut at = 0;
                for o in &answers.outputs {
                    let of_output = values.get(at..at + o.width).unwrap_or_default();
                    outputs.insert(o.name.clone(), serde_json::json!(of_output));
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
                error: Some(row_error(e)),
            },
        })
        .collect();
    let failed = results.iter().filter(|r| r.error.is_some()).count();
    Json(RawAnswer {
        model: answers.model,
        rows: results.len(),
        succeeded: results.len() - failed,
        failed,
        results,
    })
    .into_response()
}
