//! Price observations: written by analysts and admins (one, or in bulk as a JSON array or CSV, all or
//! nothing), read by any key of the organization, and announced on `/ws/prices` as they land.

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::Json;
use mercator_store::{NewPrice, Price, PricePatch, PriceQuery, PriceType};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::bulk;
use super::extract::{ApiJson, ApiQuery};
use super::{page, ErrorEnvelope, Page};
use crate::auth::{Analyst, Auth, Viewer};
use crate::error::ApiError;
use crate::AppState;
use mercator_services::input::csv_body::Columns;

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
const COLUMNS: Columns = Columns {
    allowed: CSV_COLUMNS,
    required: CSV_REQUIRED,
    numeric: &["price", "quantity"],
};

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PriceListQuery {
    pub material_id: Option<String>,
    pub supplier_id: Option<String>,
    pub price_type: Option<PriceType>,
    /// Inclusive; RFC 3339 or a date.
    pub from: Option<String>,
    /// Exclusive; RFC 3339 or a date.
    pub to: Option<String>,
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    #[param(maximum = 1_000_000_000)]
    pub offset: Option<u64>,
    /// time, price, created_at; `-` first for descending. Default: `-time` (newest first).
    #[param(pattern = "^-?(time|price|created_at)$")]
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
        .await?;
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
    let mut written = app
        .ingest
        .write(&caller.organization_id, vec![new])
        .await
        .map_err(|e| match ApiError::from(e) {
            // One row: its problems are the request's, by field.
            ApiError::InvalidRows { mut rows, .. } if rows.len() == 1 => ApiError::Validation {
                message: "the price has invalid values".into(),
                details: rows.remove(0).errors,
            },
            e => e,
        })?;
    let price = written.remove(0);
    super::audit::record(
        &app,
        &caller,
        "price.create",
        ("price", &price.id),
        None::<()>,
        Some(&price),
    )
    .await;
    Ok((StatusCode::CREATED, Json(price)))
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
    let _admitted = app.heavy.admit(&caller.organization_id)?;
    let rows = bulk::rows(&app, request, &COLUMNS, NewPrice::check).await?;
    let written = app.ingest.write(&caller.organization_id, rows).await?;
    let inserted = written.len();
    // One entry for the write, with its count and the first and last ids (not a row per price).
    let ids = (
        written.first().map(|p| &p.id),
        written.last().map(|p| &p.id),
    );
    super::audit::record(
        &app,
        &caller,
        "price.bulk_create",
        ("price", ids.0.map_or("", |id| id.as_str())),
        None::<()>,
        Some(serde_json::json!({ "inserted": inserted, "first_id": ids.0, "last_id": ids.1 })),
    )
    .await;
    Ok((StatusCode::CREATED, Json(BulkResult { inserted })))
}

/// Rows of a CSV file of prices (the fuzz properties read through it).
#[cfg(test)]
pub(crate) fn from_csv(
    bytes: &axum::body::Bytes,
    max_rows: usize,
    caps: mercator_services::input::csv_body::Caps,
) -> Result<Vec<NewPrice>, ApiError> {
    bulk::from_csv(bytes, max_rows, caps, &COLUMNS, NewPrice::check)
}

#[utoipa::path(get, path = "/api/v1/prices/{id}", tag = "prices", params(("id" = String, Path)),
    security(("api_key" = [])),
    responses((status = 200, body = Price), (status = "4XX", body = ErrorEnvelope)))]
async fn get_price(
    State(app): State<AppState>,
    caller: Auth<Viewer>,
    Path(id): Path<String>,
) -> Result<Json<Price>, ApiError> {
    let price = app.store.price(&caller.organization_id, &id).await?;
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
    let before = app.store.price(&caller.organization_id, &id).await.ok();
    let price = app
        .ingest
        .correct(&caller.organization_id, &id, patch)
        .await?;
    super::audit::record(
        &app,
        &caller,
        "price.update",
        ("price", &id),
        before,
        Some(&price),
    )
    .await;
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
    let before = app.store.price(&caller.organization_id, &id).await.ok();
    app.ingest.delete(&caller.organization_id, &id).await?;
    super::audit::record(
        &app,
        &caller,
        "price.delete",
        ("price", &id),
        before,
        None::<()>,
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}
