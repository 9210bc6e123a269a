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
/// `Accept: text/csv` answers CSV. Or a JSON object `{model, version?, rows: [[...], ...]}`: raw feature
/// rows for a model with one fixed-width FP32 input, answered as each output's values per row.
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
    if kind.as_deref() == Some("application/json") && bytes.trim_ascii_start().starts_with(b"{") {
        if csv_out {
            return Err(ApiError::invalid(
                "format",
                "a batch of raw feature rows answers JSON",
            ));
        }
        let raw: RawBatch = super::extract::from_json(&bytes)?;
        return raw_batch(&app, raw, max_rows)
            .await
            .map(|a| Json(a).into_response());
    }
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

/// Raw rows through the model's queue in chunks of its batch size; a row of the wrong width or with a
/// value that is not finite carries its own error.
async fn raw_batch(app: &AppState, raw: RawBatch, max_rows: usize) -> Result<RawAnswer, ApiError> {
    if raw.rows.len() > max_rows {
        return Err(too_many(raw.rows.len(), max_rows));
    }
    if raw.rows.is_empty() {
        return Err(ApiError::BadRequest("there are no rows".into()));
    }
    let version = raw.version.map(|v| v.to_string());
    let model = app.repository.get(&raw.model, version.as_deref())?;
    let manifest = model.manifest();
    let (input, width) = match manifest.inputs.as_slice() {
        [only] if only.datatype == mercator_engine::DataType::Fp32 => match only.fixed_row_len() {
            Some(width) => (only, width),
            None => return Err(unsupported(&manifest.name)),
        },
        _ => return Err(unsupported(&manifest.name)),
    };
    let checked: Vec<Result<&Vec<f64>, ApiError>> = raw
        .rows
        .iter()
        .map(|row| {
            if row.len() != width {
                Err(ApiError::invalid(
                    "rows",
                    format!("{} values; the model takes {width}", row.len()),
                ))
            } else if !row
                .iter()
                .all(|v| v.is_finite() && v.abs() <= f32::MAX as f64)
            {
                Err(ApiError::invalid(
                    "rows",
                    "every value must be a finite FP32 number",
                ))
            } else {
                Ok(row)
            }
        })
        .collect();
    let ready: Vec<&Vec<f64>> = checked
        .iter()
        .filter_map(|r| r.as_ref().ok().copied())
        .collect();
    let mut outputs: Vec<serde_json::Map<String, serde_json::Value>> =
        Vec::with_capacity(ready.len());
    for chunk in ready.chunks(manifest.batching.max_batch_size.max(1)) {
        let tensor = mercator_engine::Tensor {
            name: input.name.clone(),
            shape: vec![chunk.len(), width],
            data: mercator_engine::TensorData::Fp32(
                chunk
                    .iter()
                    .flat_map(|r| r.iter().map(|v| *v as f32))
                    .collect(),
            ),
        };
        let answer = model.infer(vec![tensor], None).await?;
        let mut per_row = vec![serde_json::Map::new(); chunk.len()];
        for t in &answer.outputs {
            let values = t.data.to_f64();
            let w = values.len() / chunk.len().max(1);
            for (k, row) in per_row.iter_mut().enumerate() {
                row.insert(
                    t.name.clone(),
                    serde_json::json!(values[k * w..(k + 1) * w]),
                );
            }
        }
        outputs.extend(per_row);
    }
    let mut outputs = outputs.into_iter();
    let results: Vec<RawRow> = checked
        .into_iter()
        .enumerate()
        .map(|(i, r)| match r {
            Ok(_) => RawRow {
                row: i + 1,
                outputs: outputs.next(),
                error: None,
            },
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
    Ok(RawAnswer {
        model: crate::predict::ModelRef {
            name: manifest.name.clone(),
            version: manifest.version,
        },
        rows: results.len(),
        succeeded: results.len() - failed,
        failed,
        results,
    })
}

fn unsupported(model: &str) -> ApiError {
    ApiError::invalid(
        "model",
        format!("{model}: raw batches take models with one fixed-width FP32 input; use the V2 API"),
    )
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
