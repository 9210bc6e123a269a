//! Price observations: written by analysts and admins (one, or in bulk as a JSON array or CSV, all or
//! nothing), read by any key of the organization, and announced on `/ws/prices` as they land.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::Json;
use mercator_store::{FieldErrors, NewPrice, Price, PricePatch, PriceQuery, PriceType, RowError};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::csv_body::{self, Columns};
use super::extract::{content_type, from_json, ApiJson, ApiQuery};
use super::{page, ErrorEnvelope, Page};
use crate::auth::{Analyst, Auth, Viewer};
use crate::error::ApiError;
use crate::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_prices, create_price))
        .routes(routes!(bulk_create_prices))
        .routes(routes!(get_price, update_price, delete_price))
}

/// The columns a bulk CSV may have (a header row names them, in any order).
pub const CSV_COLUMNS: &[&str] = &[
    "time",
    "material_id",
    "supplier_id",
    "price",
    "currency",
    "quantity",
    "price_type",
    "source",
];
const CSV_REQUIRED: &[&str] = &["time", "material_id", "price", "currency", "price_type"];

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PriceListQuery {
    pub material_id: Option<String>,
    pub supplier_id: Option<String>,
    pub price_type: Option<PriceType>,
    /// Inclusive; RFC 3339 or a date.
    pub from: Option<String>,
    /// Exclusive; RFC 3339 or a date.
    pub to: Option<String>,
    pub limit: Option<u32>,
    pub offset: Option<u64>,
    /// time, price, created_at; `-` first for descending. Default: `-time` (newest first).
    pub sort: Option<String>,
    /// Also count every observation matched (`total`): a scan of them all, so off by default.
    pub count: Option<bool>,
}

/// Observations by material, supplier, type and time range (backed by an index on organization,
/// material and time).
#[utoipa::path(get, path = "/api/v1/prices", tag = "prices", params(PriceListQuery),
    security(("api_key" = [])),
    responses((status = 200, body = Page<Price>), (status = "4XX", body = ErrorEnvelope)))]
async fn list_prices(
    State(app): State<AppState>,
    caller: Auth<Viewer>,
    ApiQuery(q): ApiQuery<PriceListQuery>,
) -> Result<Json<Page<Price>>, ApiError> {
    let query = PriceQuery {
        from: ApiError::parse_time("from", q.from)?,
        to: ApiError::parse_time("to", q.to)?,
        material_id: q.material_id,
        supplier_id: q.supplier_id,
        price_type: q.price_type,
    };
    let page = page(&app, q.limit, q.offset, q.sort, q.count.unwrap_or(false))?;
    let listed = app
        .store
        .list_prices(&caller.organization_id, &query, &page)
        .await
        .map_err(ApiError::store("price"))?;
    Ok(Json(listed.into()))
}

/// Record one observation (analyst).
#[utoipa::path(post, path = "/api/v1/prices", tag = "prices", request_body = NewPrice,
    security(("api_key" = [])),
    responses((status = 201, body = Price), (status = "4XX", body = ErrorEnvelope)))]
async fn create_price(
    State(app): State<AppState>,
    caller: Auth<Analyst>,
    ApiJson(new): ApiJson<NewPrice>,
) -> Result<(StatusCode, Json<Price>), ApiError> {
    let mut written = ingest(&app, &caller.organization_id, vec![new])
        .await
        .map_err(|e| match e {
            // One row: its problems are the request's, by field.
            ApiError::InvalidRows { mut rows, .. } if rows.len() == 1 => ApiError::Validation {
                message: "the price has invalid values".into(),
                details: rows.remove(0).errors,
            },
            e => e,
        })?;
    Ok((StatusCode::CREATED, Json(written.remove(0))))
}

#[derive(Serialize, ToSchema)]
pub struct BulkResult {
    /// Rows written: all of them.
    pub inserted: usize,
}

/// Record many observations at once (analyst): a JSON array of prices, or `text/csv` with a header row
/// naming the columns (time, material_id, supplier_id, price, currency, quantity, price_type, source;
/// empty cells are absent values). All or nothing: one invalid row refuses the file (422, each bad row
/// named; `row` counts data rows from 1, so CSV line = row + 1). At most --max-bulk-rows rows and
/// --max-bulk-body-bytes bytes.
#[utoipa::path(post, path = "/api/v1/prices/bulk", tag = "prices",
    request_body(content(
        (Vec<NewPrice> = "application/json"),
        (String = "text/csv", example = "time,material_id,price,currency,price_type\n2025-03-01,<id>,4.2,EUR,quote\n"))),
    security(("api_key" = [])),
    responses((status = 201, body = BulkResult), (status = "4XX", body = ErrorEnvelope)))]
async fn bulk_create_prices(
    State(app): State<AppState>,
    caller: Auth<Analyst>,
    request: Request,
) -> Result<(StatusCode, Json<BulkResult>), ApiError> {
    let kind = content_type(request.headers()).map(str::to_owned);
    let limit = app.limits.max_bulk_body_bytes;
    let bytes = axum::body::to_bytes(request.into_body(), limit)
        .await
        .map_err(|_| ApiError::BodyTooLarge {
            limit,
            flag: "--max-bulk-body-bytes",
        })?;
    let rows = match kind.as_deref() {
        Some("application/json") => from_json::<Vec<NewPrice>>(&bytes)?,
        Some("text/csv") => from_csv(&bytes, app.limits.max_bulk_rows)?,
        _ => {
            return Err(ApiError::UnsupportedMediaType(
                "send a JSON array (application/json) or CSV (text/csv)".into(),
            ))
        }
    };
    if rows.len() > app.limits.max_bulk_rows {
        return Err(ApiError::TooManyRows {
            rows: rows.len(),
            limit: app.limits.max_bulk_rows,
        });
    }
    if rows.is_empty() {
        return Err(ApiError::BadRequest("there are no rows".into()));
    }
    let inserted = ingest(&app, &caller.organization_id, rows).await?.len();
    Ok((StatusCode::CREATED, Json(BulkResult { inserted })))
}

/// A write this large refreshes the query planner's statistics (in the background).
const ANALYZE_AFTER_ROWS: usize = 10_000;

/// Scores prices just written (or corrected) with the active anomaly model, against the history before
/// their day, and stores each score with its price. A price is never refused for its score: when scoring
/// fails it stays unscored, and the failure is logged. Off with --score-on-ingest false.
async fn score(app: &AppState, org: &str, prices: &mut [Price]) {
    if !app.score_on_ingest {
        return;
    }
    let scores = match app
        .predictor
        .score_prices(&app.store, &app.repository, &app.data_dir, org, prices)
        .await
    {
        Ok(Some(scores)) => scores,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(error = %e, prices = prices.len(), "anomaly scoring failed; prices stored unscored");
            return;
        }
    };
    let updates: Vec<_> = prices
        .iter()
        .zip(&scores)
        .map(|(p, s)| (p.id.clone(), s.clone()))
        .collect();
    if let Err(e) = app.store.set_price_anomalies(org, &updates).await {
        tracing::warn!(error = %e, "storing anomaly scores failed; prices stored unscored");
        return;
    }
    for (p, s) in prices.iter_mut().zip(scores) {
        p.anomaly = s;
    }
}

/// Writes observations, scores them, evaluates the alert rules on them, and announces them to the
/// organization's `/ws/prices` listeners.
async fn ingest(app: &AppState, org: &str, rows: Vec<NewPrice>) -> Result<Vec<Price>, ApiError> {
    let total = rows.len();
    let written = app.store.insert_prices(org, rows).await.map_err(|e| {
        match ApiError::store("price")(e) {
            ApiError::InvalidRows { rows, .. } => ApiError::InvalidRows { rows, total },
            e => e,
        }
    })?;
    if written.len() >= ANALYZE_AFTER_ROWS {
        let store = app.store.clone();
        tokio::spawn(async move {
            if let Err(e) = store.refresh_statistics().await {
                tracing::warn!(error = %e, "refreshing the planner's statistics failed");
            }
        });
    }
    app.predictor
        .history
        .add(written.iter().map(|p| observation(org, p)));
    let mut written = written;
    score(app, org, &mut written).await;
    crate::alerts::on_ingest(app, org, &written).await;
    app.prices
        .send(org, written.iter().map(|p| Arc::new(p.clone())));
    Ok(written)
}

/// Rows of a CSV file: every row's problems are collected, so one answer names them all.
fn from_csv(bytes: &Bytes, max_rows: usize) -> Result<Vec<NewPrice>, ApiError> {
    let columns = Columns {
        allowed: CSV_COLUMNS,
        required: CSV_REQUIRED,
        numeric: &["price", "quantity"],
    };
    let (headers, mut reader) = csv_body::open(&bytes[..], &columns)?;
    let mut rows = Vec::new();
    let mut bad = Vec::new();
    for (i, record) in reader.records().enumerate() {
        if i >= max_rows {
            return Err(ApiError::TooManyRows {
                rows: i + 1 + reader.records().count(),
                limit: max_rows,
            });
        }
        let errors = match record {
            Ok(record) => match csv_body::record::<NewPrice>(&headers, &record, &columns) {
                Ok(price) => match price.check() {
                    errors if errors.is_empty() => {
                        rows.push(price);
                        continue;
                    }
                    errors => errors,
                },
                Err((field, message)) => FieldErrors::one(&field, message),
            },
            Err(e) => FieldErrors::one("row", e.to_string()),
        };
        bad.push(RowError { row: i + 1, errors });
    }
    if !bad.is_empty() {
        let total = rows.len() + bad.len();
        return Err(ApiError::InvalidRows { rows: bad, total });
    }
    Ok(rows)
}

#[utoipa::path(get, path = "/api/v1/prices/{id}", tag = "prices", params(("id" = String, Path)),
    security(("api_key" = [])),
    responses((status = 200, body = Price), (status = "4XX", body = ErrorEnvelope)))]
async fn get_price(
    State(app): State<AppState>,
    caller: Auth<Viewer>,
    Path(id): Path<String>,
) -> Result<Json<Price>, ApiError> {
    let price = app
        .store
        .price(&caller.organization_id, &id)
        .await
        .map_err(ApiError::store("price"))?;
    Ok(Json(price))
}

/// Correct an observation (analyst).
#[utoipa::path(patch, path = "/api/v1/prices/{id}", tag = "prices", params(("id" = String, Path)),
    request_body = PricePatch, security(("api_key" = [])),
    responses((status = 200, body = Price), (status = "4XX", body = ErrorEnvelope)))]
async fn update_price(
    State(app): State<AppState>,
    caller: Auth<Analyst>,
    Path(id): Path<String>,
    ApiJson(patch): ApiJson<PricePatch>,
) -> Result<Json<Price>, ApiError> {
    let org = &caller.organization_id;
    let before = app
        .store
        .price(org, &id)
        .await
        .map_err(ApiError::store("price"))?;
    let price = app
        .store
        .update_price(org, &id, patch)
        .await
        .map_err(ApiError::store("price"))?;
    // The history follows the correction: the old price out, the new one in; and the score is redone.
    app.predictor.history.remove(observation(org, &before));
    app.predictor.history.add([observation(org, &price)]);
    let mut price = [price];
    score(&app, org, &mut price).await;
    let [price] = price;
    Ok(Json(price))
}

/// Delete an observation (analyst).
#[utoipa::path(delete, path = "/api/v1/prices/{id}", tag = "prices", params(("id" = String, Path)),
    security(("api_key" = [])),
    responses((status = 204), (status = "4XX", body = ErrorEnvelope)))]
async fn delete_price(
    State(app): State<AppState>,
    caller: Auth<Analyst>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let org = &caller.organization_id;
    let before = app
        .store
        .price(org, &id)
        .await
        .map_err(ApiError::store("price"))?;
    app.store
        .delete_price(org, &id)
        .await
        .map_err(ApiError::store("price"))?;
    app.predictor.history.remove(observation(org, &before));
    Ok(StatusCode::NO_CONTENT)
}

/// An observation as the feature history keeps it.
fn observation<'a>(org: &'a str, p: &'a Price) -> mercator_features::online::Observation<'a> {
    mercator_features::online::Observation {
        organization: org,
        material: &p.material_id,
        supplier: p.supplier_id.as_deref(),
        observed_at_ms: p.time.timestamp_millis(),
        price: p.price,
    }
}
