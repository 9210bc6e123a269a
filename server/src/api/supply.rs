//! `/api/v1/orders` (purchase orders, their deliveries, imports of both), `/api/v1/suppliers/{id}/scorecard`
//! and `/risk`, and `/api/v1/inventory/policy`. Read by any key of the organization, written and computed by
//! analysts and admins; the handlers translate, [`mercator_services::supply`] decides (the risk model is
//! run by [`mercator_services::predict`], as every model is).

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::Json;
use mercator_services::input::csv_body::Columns;
use mercator_services::predict::{RiskRequest, SupplierRisk};
use mercator_services::supply::import::{ImportedDeliveries, ImportedOrders};
use mercator_services::supply::scorecard::Scorecard;
use mercator_services::supply::{Policy, PolicyRequest};
use mercator_store::{
    DeliveryImportRow, FieldErrors, NewOrder, NewOrderDelivery, Order, OrderDelivery, OrderFilter,
    OrderImportRow,
};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{ApiJson, ApiQuery};
use super::{audit, bulk};
use super::{page, ErrorEnvelope, Page};
use crate::auth::{Analyst, Auth, Viewer};
use crate::error::ApiError;
use crate::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(inventory_policy))
        .routes(routes!(list_orders, create_order))
        .routes(routes!(get_order))
        .routes(routes!(cancel_order))
        .routes(routes!(list_deliveries, deliver))
        .routes(routes!(import_orders))
        .routes(routes!(import_deliveries))
        .routes(routes!(orders_from_award))
        .routes(routes!(scorecard))
        .routes(routes!(supplier_risk))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct OrderQuery {
    pub supplier_id: Option<String>,
    /// open | delivered | cancelled
    #[param(pattern = "^(open|delivered|cancelled)$")]
    pub status: Option<String>,
    pub rfq_id: Option<String>,
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    #[param(maximum = 1_000_000_000)]
    pub offset: Option<u64>,
    /// ordered_on, created_at, reference; `-` first for descending. Default: newest first.
    #[param(pattern = "^-?(ordered_on|created_at|reference)$")]
    pub sort: Option<String>,
}

/// The organization's purchase orders.
#[utoipa::path(get, path = "/api/v1/orders", tag = "supply", params(OrderQuery),
    security(("api_key" = [])),
    responses((status = 200, body = Page<Order>), (status = "4XX", body = ErrorEnvelope)))]
async fn list_orders(
    State(app): State<AppState>,
    caller: Auth<Viewer>,
    ApiQuery(q): ApiQuery<OrderQuery>,
) -> Result<Json<Page<Order>>, ApiError> {
    if let Some(status) = &q.status {
        if !["open", "delivered", "cancelled"].contains(&status.as_str()) {
            return Err(ApiError::invalid(
                "status",
                "must be open, delivered or cancelled",
            ));
        }
    }
    let filter = OrderFilter {
        supplier_id: q.supplier_id,
        status: q.status,
        rfq_id: q.rfq_id,
    };
    let page = page(&app, q.limit, q.offset, q.sort, true)?;
    let listed = app
        .supply
        .orders(&caller.organization_id, &filter, &page)
        .await?;
    Ok(Json(listed.into()))
}

/// Place an order: a supplier of the organization, its currency, lines (material, quantity, unit price,
/// promised date), an optional reference unique in the organization.
#[utoipa::path(post, path = "/api/v1/orders", tag = "supply", request_body = NewOrder,
    security(("api_key" = [])),
    responses((status = 201, body = Order), (status = "4XX", body = ErrorEnvelope)))]
async fn create_order(
    State(app): State<AppState>,
    caller: Auth<Analyst>,
    ApiJson(new): ApiJson<NewOrder>,
) -> Result<(StatusCode, Json<Order>), ApiError> {
    let mut orders = app
        .supply
        .create_orders(&caller.organization_id, vec![new])
        .await
        .map_err(|e| match e {
            // One order: its problems are the body's fields, not a row's.
            mercator_services::supply::SupplyError::Store(mercator_store::StoreError::Rows(
                mut rows,
            )) if rows.len() == 1 => {
                let details = rows.remove(0).errors;
                ApiError::Validation {
                    message: format!(
                        "invalid values: {}",
                        details.0.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                    details,
                }
            }
            e => e.into(),
        })?;
    let order = orders.remove(0);
    audit::record(
        &app,
        &caller,
        "order.create",
        ("order", &order.id),
        None::<()>,
        Some(&order),
    )
    .await;
    Ok((StatusCode::CREATED, Json(order)))
}

#[utoipa::path(get, path = "/api/v1/orders/{id}", tag = "supply", params(("id" = String, Path)),
    security(("api_key" = [])),
    responses((status = 200, body = Order), (status = "4XX", body = ErrorEnvelope)))]
async fn get_order(
    State(app): State<AppState>,
    caller: Auth<Viewer>,
    Path(id): Path<String>,
) -> Result<Json<Order>, ApiError> {
    Ok(Json(app.supply.order(&caller.organization_id, &id).await?))
}

/// Cancel an open order.
#[utoipa::path(post, path = "/api/v1/orders/{id}/cancel", tag = "supply", params(("id" = String, Path)),
    security(("api_key" = [])),
    responses((status = 200, body = Order), (status = "4XX", body = ErrorEnvelope)))]
async fn cancel_order(
    State(app): State<AppState>,
    caller: Auth<Analyst>,
    Path(id): Path<String>,
) -> Result<Json<Order>, ApiError> {
    let (before, after) = app
        .supply
        .cancel_order(&caller.organization_id, &id)
        .await?;
    audit::record(
        &app,
        &caller,
        "order.cancel",
        ("order", &id),
        Some(&before.status),
        Some(&after.status),
    )
    .await;
    Ok(Json(after))
}

/// The deliveries received against an order.
#[utoipa::path(get, path = "/api/v1/orders/{id}/deliveries", tag = "supply", params(("id" = String, Path)),
    security(("api_key" = [])),
    responses((status = 200, body = Vec<OrderDelivery>), (status = "4XX", body = ErrorEnvelope)))]
async fn list_deliveries(
    State(app): State<AppState>,
    caller: Auth<Viewer>,
    Path(id): Path<String>,
) -> Result<Json<Vec<OrderDelivery>>, ApiError> {
    Ok(Json(
        app.supply.deliveries(&caller.organization_id, &id).await?,
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Deliveries {
    pub deliveries: Vec<NewOrderDelivery>,
}

/// Receive deliveries against an order's lines (all or nothing): date, quantity, rejected quantity. The
/// order is `delivered` once every line's accepted quantity reaches what was ordered.
#[utoipa::path(post, path = "/api/v1/orders/{id}/deliveries", tag = "supply", params(("id" = String, Path)),
    request_body = Deliveries, security(("api_key" = [])),
    responses((status = 201, body = Vec<OrderDelivery>), (status = "4XX", body = ErrorEnvelope)))]
async fn deliver(
    State(app): State<AppState>,
    caller: Auth<Analyst>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Deliveries>,
) -> Result<(StatusCode, Json<Vec<OrderDelivery>>), ApiError> {
    let (order, written) = app
        .supply
        .deliver(&caller.organization_id, &id, body.deliveries)
        .await?;
    audit::record(
        &app,
        &caller,
        "order.deliver",
        ("order", &order.id),
        None::<()>,
        Some(&written),
    )
    .await;
    Ok((StatusCode::CREATED, Json(written)))
}

/// The columns of an orders CSV: one row per order line.
const ORDER_COLUMNS: Columns = Columns {
    allowed: &[
        "reference",
        "supplier_id",
        "currency",
        "ordered_on",
        "material_id",
        "quantity",
        "unit_price",
        "promised_date",
    ],
    required: &[
        "reference",
        "supplier_id",
        "currency",
        "material_id",
        "quantity",
        "unit_price",
        "promised_date",
    ],
    numeric: &["quantity", "unit_price"],
};

/// The columns of a deliveries CSV: one row per receipt.
const DELIVERY_COLUMNS: Columns = Columns {
    allowed: &[
        "order_reference",
        "line",
        "delivered_on",
        "quantity",
        "rejected_quantity",
    ],
    required: &["order_reference", "line", "delivered_on", "quantity"],
    numeric: &["quantity", "rejected_quantity"],
};

/// Import orders from another system (analyst), all or nothing: a JSON array or `text/csv`, one row per
/// order line (reference, supplier_id, currency, ordered_on, material_id, quantity, unit_price,
/// promised_date). Rows with the same reference are one order's lines, in the order given, and must name
/// the same supplier, currency and date; a reference already used in the organization is refused. A
/// refusal (422) names every bad row (`row` from 1: CSV line = row + 1). At most --max-bulk-rows rows and
/// --max-bulk-body-bytes bytes.
#[utoipa::path(post, path = "/api/v1/orders/bulk", tag = "supply",
    request_body(content(
        (Vec<OrderImportRow> = "application/json"),
        (String = "text/csv", example = "reference,supplier_id,currency,ordered_on,material_id,quantity,unit_price,promised_date\nPO-1,<id>,EUR,2025-03-01,<id>,500,4.2,2025-03-20\n"))),
    security(("api_key" = [])),
    responses((status = 201, body = ImportedOrders), (status = "4XX", body = ErrorEnvelope)))]
async fn import_orders(
    State(app): State<AppState>,
    caller: Auth<Analyst>,
    request: Request,
) -> Result<(StatusCode, Json<ImportedOrders>), ApiError> {
    let _admitted = app.heavy.admit(&caller.organization_id)?;
    let rows = bulk::rows(&app, request, &ORDER_COLUMNS, |_: &OrderImportRow| {
        FieldErrors::default()
    })
    .await?;
    let imported = app
        .supply
        .import_orders(&caller.organization_id, rows)
        .await?;
    audit::record(
        &app,
        &caller,
        "order.import",
        ("order", ""),
        None::<()>,
        Some(&imported),
    )
    .await;
    Ok((StatusCode::CREATED, Json(imported)))
}

/// Import deliveries (analyst), all or nothing: a JSON array or `text/csv`, one row per receipt
/// (order_reference, line, delivered_on, quantity, rejected_quantity) against line `line` (1, 2, ...) of
/// the organization's order with that reference. Orders then received in full become `delivered`. A
/// refusal (422) names every bad row. At most --max-bulk-rows rows and --max-bulk-body-bytes bytes.
#[utoipa::path(post, path = "/api/v1/deliveries/bulk", tag = "supply",
    request_body(content(
        (Vec<DeliveryImportRow> = "application/json"),
        (String = "text/csv", example = "order_reference,line,delivered_on,quantity,rejected_quantity\nPO-1,1,2025-03-22,500,3\n"))),
    security(("api_key" = [])),
    responses((status = 201, body = ImportedDeliveries), (status = "4XX", body = ErrorEnvelope)))]
async fn import_deliveries(
    State(app): State<AppState>,
    caller: Auth<Analyst>,
    request: Request,
) -> Result<(StatusCode, Json<ImportedDeliveries>), ApiError> {
    let _admitted = app.heavy.admit(&caller.organization_id)?;
    let rows = bulk::rows(&app, request, &DELIVERY_COLUMNS, |_: &DeliveryImportRow| {
        FieldErrors::default()
    })
    .await?;
    let imported = app
        .supply
        .import_deliveries(&caller.organization_id, rows)
        .await?;
    audit::record(
        &app,
        &caller,
        "delivery.import",
        ("order", ""),
        None::<()>,
        Some(&imported),
    )
    .await;
    Ok((StatusCode::CREATED, Json(imported)))
}

/// Make the orders of an awarded RFQ: one per awarded supplier, at the awarded quantities and prices,
/// promised as quoted. Once per RFQ.
#[utoipa::path(post, path = "/api/v1/rfqs/{id}/orders", tag = "supply", params(("id" = String, Path)),
    security(("api_key" = [])),
    responses((status = 201, body = Vec<Order>), (status = "4XX", body = ErrorEnvelope)))]
async fn orders_from_award(
    State(app): State<AppState>,
    caller: Auth<Analyst>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Vec<Order>>), ApiError> {
    let orders = app
        .supply
        .orders_from_award(&caller.organization_id, &id)
        .await?;
    for order in &orders {
        audit::record(
            &app,
            &caller,
            "order.create",
            ("order", &order.id),
            None::<()>,
            Some(order),
        )
        .await;
    }
    Ok((StatusCode::CREATED, Json(orders)))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ScorecardQuery {
    /// Orders placed from this day (default: a year before `to`).
    pub from: Option<String>,
    /// To this day (default: today).
    pub to: Option<String>,
}

/// A supplier's scorecard over the orders placed in a period: on-time-in-full, lead time mean and
/// standard deviation, defect rate, price competitiveness of its quotes, RFQ response rate; each with its
/// count.
#[utoipa::path(get, path = "/api/v1/suppliers/{id}/scorecard", tag = "supply",
    params(("id" = String, Path), ScorecardQuery), security(("api_key" = [])),
    responses((status = 200, body = Scorecard), (status = "4XX", body = ErrorEnvelope)))]
async fn scorecard(
    State(app): State<AppState>,
    caller: Auth<Viewer>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<ScorecardQuery>,
) -> Result<Json<Scorecard>, ApiError> {
    let day = |field: &str, text: Option<String>| {
        text.map(|t| mercator_store::parse_date(&t).map_err(|e| ApiError::invalid(field, e)))
            .transpose()
    };
    let (from, to) = (day("from", q.from)?, day("to", q.to)?);
    Ok(Json(
        app.supply
            .scorecard(&caller.organization_id, &id, from, to)
            .await?,
    ))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RiskQuery {
    /// The planned line's material (its category is a feature); default: none.
    pub material_id: Option<String>,
    /// Default: the supplier's median line quantity over the model's window.
    pub quantity: Option<f64>,
    /// Default: as_of plus the supplier's mean days to deliver in full (14 without history).
    pub promised_date: Option<String>,
    /// The order book as known before this day, the line ordered on it (default today).
    pub as_of: Option<String>,
}

/// The chance a line ordered from this supplier arrives late (short of its quantity at the end of its
/// promised day), optionally for a planned line: probability, band, the factors that move it most, every
/// feature, the order-book history it rests on, and the model version (the `risk` model).
#[utoipa::path(get, path = "/api/v1/suppliers/{id}/risk", tag = "supply",
    params(("id" = String, Path), RiskQuery), security(("api_key" = [])),
    responses((status = 200, body = SupplierRisk), (status = "4XX", body = ErrorEnvelope)))]
async fn supplier_risk(
    State(app): State<AppState>,
    caller: Auth<Viewer>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<RiskQuery>,
) -> Result<Json<SupplierRisk>, ApiError> {
    let day = |field: &str, text: Option<String>| {
        text.map(|t| mercator_store::parse_date(&t).map_err(|e| ApiError::invalid(field, e)))
            .transpose()
    };
    let request = RiskRequest {
        material_id: q.material_id,
        quantity: q.quantity,
        promised_date: day("promised_date", q.promised_date)?,
        as_of: day("as_of", q.as_of)?,
    };
    Ok(Json(
        app.predictions
            .supplier_risk(&caller.organization_id, &id, &request)
            .await?,
    ))
}

/// A material's inventory policy: from its unit and ordering costs, holding rate, service target (cycle
/// service level or fill rate), review (continuous, or periodic with a period), lead time (mean and
/// standard deviation) and daily demand (mean and forecast error): EOQ, safety stock, reorder point or
/// order-up-to level, (s, S), expected fill rate and turns, each figure with its formula and numbers.
#[utoipa::path(post, path = "/api/v1/inventory/policy", tag = "supply", request_body = PolicyRequest,
    security(("api_key" = [])),
    responses((status = 200, body = Policy), (status = "4XX", body = ErrorEnvelope)))]
async fn inventory_policy(
    State(app): State<AppState>,
    caller: Auth<Analyst>,
    ApiJson(request): ApiJson<PolicyRequest>,
) -> Result<Json<Policy>, ApiError> {
    let policy = app.supply.policy(&caller.organization_id, request).await?;
    Ok(Json(policy))
}
