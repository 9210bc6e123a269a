//! The REST API under `/api/v1`: organizations and keys (`tenants.rs`), materials and suppliers
//! (`catalog.rs`), price observations (`prices.rs`), alert rules and events (`alerts.rs`), RFQs and quotes (`sourcing.rs`), inventory policies (`supply.rs`), and the OpenAPI document that describes them all
//! (`openapi.rs`). Handlers translate: an `Auth<Role>` extractor gives the caller's organization, the store
//! does the work scoped to it, `ApiError` maps what went wrong.

pub mod alerts;
pub mod audit;
pub mod batch;
mod bulk;
pub mod catalog;
pub mod docs;
pub mod extract;
pub mod models;
pub mod monitoring;
pub mod openapi;
pub mod predictions;
pub mod prices;
pub mod sourcing;
pub mod stream;
pub mod supply;
pub mod tenants;
pub mod upload;
pub mod users;

use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;

use crate::AppState;

/// Every documented route; `openapi.rs` splits it into the router and the document.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(tenants::routes())
        .merge(users::routes())
        .merge(audit::routes())
        .merge(models::routes())
        .merge(monitoring::routes())
        .merge(upload::routes())
        .merge(catalog::routes())
        .merge(prices::routes())
        .merge(predictions::routes())
        .merge(batch::routes())
        .merge(alerts::routes())
        .merge(sourcing::routes())
        .merge(supply::routes())
        .merge(stream::routes())
}

/// Page size when a list does not say.
pub const DEFAULT_PAGE_SIZE: u32 = 50;

/// The largest `offset` a list takes (past it: 400). Both stores take offsets as signed 64-bit numbers,
/// and nobody pages a billion rows in: filters and sorting find them.
pub const MAX_OFFSET: u64 = 1_000_000_000;

/// `limit`, bounded by --max-page-size, `offset` (at most [`MAX_OFFSET`]), `sort`, and whether to count
/// everything matched.
pub fn page(
    app: &AppState,
    limit: Option<u32>,
    offset: Option<u64>,
    sort: Option<String>,
    count: bool,
) -> Result<mercator_store::ListParams, crate::error::ApiError> {
    let max = app.limits.max_page_size;
    let limit = limit.unwrap_or(DEFAULT_PAGE_SIZE.min(max));
    if limit == 0 || limit > max {
        return Err(crate::error::ApiError::Validation {
            message: format!("limit must be between 1 and {max} (--max-page-size)"),
            details: mercator_store::FieldErrors::one(
                "limit",
                format!("must be between 1 and {max}"),
            ),
        });
    }
    let offset = offset.unwrap_or(0);
    if offset > MAX_OFFSET {
        return Err(crate::error::ApiError::invalid(
            "offset",
            format!("must be at most {MAX_OFFSET}"),
        ));
    }
    Ok(mercator_store::ListParams {
        limit,
        offset,
        sort,
        count,
    })
}

/// One page of a list, whether more follow, and the count of everything the filters match (always for
/// materials and suppliers; for prices with `count=true`).
#[derive(Serialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub has_more: bool,
    pub total: Option<i64>,
    pub limit: u32,
    pub offset: u64,
}

impl<T> From<mercator_store::Listed<T>> for Page<T> {
    fn from(l: mercator_store::Listed<T>) -> Self {
        Page {
            items: l.items,
            has_more: l.has_more,
            total: l.total,
            limit: l.limit,
            offset: l.offset,
        }
    }
}

/// The error envelope of every endpoint outside `/v2`.
#[derive(Serialize, ToSchema)]
pub struct ErrorEnvelope {
    pub error: ErrorBody,
    pub status_code: u16,
    /// RFC 3339.
    pub timestamp: String,
    /// Also in the `x-request-id` header; the server log has it too.
    pub request_id: String,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// Stable: validation_error, invalid_rows, bad_request, unauthorized, forbidden, not_found, conflict,
    /// body_too_large, too_many_rows, unsupported_media_type, overloaded, internal, ...
    pub code: String,
    pub message: String,
    /// By field: `{"price": ["must be a number greater than 0"]}`; for a refused bulk write,
    /// `{"rows": [{"row": 3, "errors": {...}}], "invalid_rows": n}`.
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
}
