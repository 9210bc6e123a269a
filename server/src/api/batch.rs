//! `POST /api/v1/predictions/batch`: many price predictions in one request, as a JSON array or CSV, answered
//! inline in input order, each row with its prediction or its own error. The handler parses and renders;
//! [`crate::predict::Predictor::price_batch`] decides.

use axum::extract::{Request, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::csv_body::{self, Columns};
use super::extract::{content_type, ApiQuery};
use super::ErrorEnvelope;
use crate::auth::{Analyst, Auth};
use crate::error::ApiError;
use crate::predict::{PricePrediction, PriceRequest};
use crate::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(predict_batch))
}

/// The columns a batch CSV may have (a header row names them, in any order).
const CSV_COLUMNS: &[&str] = &[
    "material_id",
    "quantity",
    "supplier_id",
    "delivery_date",
    "as_of",
];

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct BatchQuery {
    /// `json` (default) or `csv`; `Accept: text/csv` also picks CSV.
    pub format: Option<String>,
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

/// Price many purchases at once (analyst): a JSON array of price requests (the single endpoint's fields) or
/// `text/csv` with a header row naming the columns (material_id, quantity, supplier_id, delivery_date,
/// as_of). One answer per input row, in input order; a row that cannot be answered (unknown material, bad
/// value, too little history) carries its own error and the others are answered. All rows run on the price
/// model version active when the batch began. At most --batch-inline-max-rows rows (413 above it); a body
/// that is not an array or a CSV without the required columns is refused whole (400). `?format=csv` or
/// `Accept: text/csv` answers CSV.
#[utoipa::path(post, path = "/api/v1/predictions/batch", tag = "predictions", params(BatchQuery),
    request_body(content(
        (Vec<PriceRequest> = "application/json"),
        (String = "text/csv", example = "material_id,quantity,supplier_id,delivery_date\n<id>,500,<id>,2026-12-20\n"))),
    security(("api_key" = [])),
    responses((status = 200, body = BatchAnswer), (status = "4XX", body = ErrorEnvelope)))]
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
        None => request
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("text/csv")),
    };
    let kind = content_type(request.headers()).map(str::to_owned);
    let limit = app.limits.max_bulk_body_bytes;
    let bytes = axum::body::to_bytes(request.into_body(), limit)
        .await
        .map_err(|_| ApiError::BodyTooLarge {
            limit,
            flag: "--max-bulk-body-bytes",
        })?;
    let max_rows = app.limits.batch_inline_max_rows;
    let parsed = match kind.as_deref() {
        Some("application/json") => from_json(&bytes, max_rows)?,
        Some("text/csv") => from_csv(&bytes, max_rows)?,
        _ => {
            return Err(ApiError::UnsupportedMediaType(
                "send a JSON array of price requests (application/json) or CSV (text/csv)".into(),
            ))
        }
    };
    if parsed.is_empty() {
        return Err(ApiError::BadRequest("there are no rows".into()));
    }
    // Rows that parsed go to the predictor together; the others keep their parse error in place.
    let requests: Vec<PriceRequest> = parsed
        .iter()
        .filter_map(|p| p.as_ref().ok())
        .map(|r| r.0.clone())
        .collect();
    let mut answers = app
        .predictor
        .price_batch(
            &app.store,
            &app.repository,
            &app.data_dir,
            &caller.organization_id,
            &requests,
        )
        .await?
        .into_iter();
    let mut results = Vec::with_capacity(parsed.len());
    for (i, p) in parsed.into_iter().enumerate() {
        let outcome = match p {
            Ok(_) => answers
                .next()
                .unwrap_or_else(|| Err(ApiError::BadRequest("the row was not answered".into()))),
            Err(e) => Err(e),
        };
        results.push(match outcome {
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
        });
    }
    let failed = results.iter().filter(|r| r.error.is_some()).count();
    let answer = BatchAnswer {
        rows: results.len(),
        succeeded: results.len() - failed,
        failed,
        results,
    };
    Ok(if csv_out {
        (
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            to_csv(&answer),
        )
            .into_response()
    } else {
        Json(answer).into_response()
    })
}

/// A parsed row: the request (cloned into the batch), or why it could not be read.
struct Parsed(PriceRequest);

fn too_many(rows: usize, limit: usize) -> ApiError {
    ApiError::TooManyRows { rows, limit }
}

fn from_json(bytes: &[u8], max_rows: usize) -> Result<Vec<Result<Parsed, ApiError>>, ApiError> {
    let values: Vec<serde_json::Value> = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::BadRequest(format!(
            "the body is not a JSON array of price requests: {e}"
        ))
    })?;
    if values.len() > max_rows {
        return Err(too_many(values.len(), max_rows));
    }
    Ok(values
        .into_iter()
        .map(|v| {
            serde_path_to_error::deserialize(v)
                .map(Parsed)
                .map_err(|e| {
                    let field = e.path().to_string();
                    ApiError::invalid(&field, e.into_inner().to_string())
                })
        })
        .collect())
}

fn from_csv(bytes: &[u8], max_rows: usize) -> Result<Vec<Result<Parsed, ApiError>>, ApiError> {
    let columns = Columns {
        allowed: CSV_COLUMNS,
        required: &["material_id", "quantity"],
        numeric: &["quantity"],
    };
    let (headers, mut reader) = csv_body::open(bytes, &columns)?;
    let mut rows = Vec::new();
    for (i, record) in reader.records().enumerate() {
        if i >= max_rows {
            return Err(too_many(i + 1 + reader.records().count(), max_rows));
        }
        rows.push(match record {
            Ok(record) => csv_body::record(&headers, &record, &columns)
                .map(Parsed)
                .map_err(|(field, message)| ApiError::invalid(&field, message)),
            Err(e) => Err(ApiError::invalid("row", e.to_string())),
        });
    }
    Ok(rows)
}

fn to_csv(answer: &BatchAnswer) -> String {
    let mut w = csv::Writer::from_writer(Vec::new());
    let _ = w.write_record([
        "row",
        "predicted_price",
        "lower",
        "upper",
        "level",
        "confidence_score",
        "model_version",
        "as_of",
        "error_code",
        "error_message",
    ]);
    for r in &answer.results {
        let row = r.row.to_string();
        let record: Vec<String> = match (&r.prediction, &r.error) {
            (Some(p), _) => vec![
                row,
                p.predicted_price.to_string(),
                p.prediction_interval.lower.to_string(),
                p.prediction_interval.upper.to_string(),
                p.prediction_interval.level.to_string(),
                p.confidence_score.to_string(),
                p.model.version.to_string(),
                p.as_of.to_string(),
                String::new(),
                String::new(),
            ],
            (None, e) => {
                let (code, message) = e.as_ref().map_or((String::new(), String::new()), |e| {
                    (e.code.clone(), e.message.clone())
                });
                let mut v = vec![row];
                v.extend(std::iter::repeat_n(String::new(), 7));
                v.extend([code, message]);
                v
            }
        };
        let _ = w.write_record(&record);
    }
    String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
}
