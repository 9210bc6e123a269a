//! `/api/v1/rfqs`: requests for quotation, their state moves and their quotes. Read by any key of the
//! organization, changed by analysts and admins. The handlers translate; [`mercator_services::sourcing`]
//! decides.
//!
//! A change may name the version it read in `If-Match` (`"3"`, as the `ETag` of a read gives it): a
//! change to an RFQ changed since is refused with 409.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use mercator_services::sourcing::award::AwardRequest;
use mercator_services::sourcing::benchmarks::MaterialBenchmark;
use mercator_services::sourcing::compare::{self, Comparison};
use mercator_services::sourcing::quotes::NewQuote;
use mercator_services::sourcing::{Action, Changed};
use mercator_store::{FieldErrors, NewRfq, Quote, Rfq, RfqFilter, RfqPatch, RfqStatus};
use serde::Deserialize;
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::audit;
use super::extract::{ApiJson, ApiQuery};
use super::{page, ErrorEnvelope, Page};
use crate::auth::{Analyst, Auth, Principal, Viewer};
use crate::error::ApiError;
use crate::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_rfqs, create_rfq))
        .routes(routes!(get_rfq, update_rfq, delete_rfq))
        .routes(routes!(open_rfq))
        .routes(routes!(close_rfq))
        .routes(routes!(reopen_rfq))
        .routes(routes!(cancel_rfq))
        .routes(routes!(list_quotes, submit_quote))
        .routes(routes!(get_quote))
        .routes(routes!(comparison))
        .routes(routes!(award))
        .routes(routes!(material_benchmark))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RfqQuery {
    /// draft | open | closed | partially_awarded | awarded | cancelled
    #[param(pattern = "^(draft|open|closed|partially_awarded|awarded|cancelled)$")]
    pub status: Option<String>,
    /// A case-insensitive substring of the title.
    pub q: Option<String>,
    /// RFQs that invite this supplier.
    pub supplier_id: Option<String>,
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    #[param(maximum = 1_000_000_000)]
    pub offset: Option<u64>,
    /// created_at, deadline, title, status; `-` first for descending. Default: newest first.
    #[param(pattern = "^-?(created_at|deadline|title|status)$")]
    pub sort: Option<String>,
}

/// The organization's RFQs (open ones whose deadline passed are closed first).
#[utoipa::path(get, path = "/api/v1/rfqs", tag = "sourcing", params(RfqQuery),
    security(("api_key" = [])),
    responses((status = 200, body = Page<Rfq>), (status = "4XX", body = ErrorEnvelope)))]
async fn list_rfqs(
    State(app): State<AppState>,
    caller: Auth<Viewer>,
    ApiQuery(q): ApiQuery<RfqQuery>,
) -> Result<Json<Page<Rfq>>, ApiError> {
    let status = match q.status.as_deref() {
        None => None,
        Some(s) => Some(RfqStatus::parse(s).ok_or_else(|| ApiError::Validation {
            message: "invalid values: status".into(),
            details: FieldErrors::one(
                "status",
                "must be one of draft, open, closed, partially_awarded, awarded, cancelled",
            ),
        })?),
    };
    let filter = RfqFilter {
        status,
        q: q.q,
        supplier_id: q.supplier_id,
    };
    let page = page(&app, q.limit, q.offset, q.sort, true)?;
    let listed = app
        .sourcing
        .list(&caller.organization_id, &filter, &page)
        .await?;
    Ok(Json(listed.into()))
}

/// The RFQ, its version as the `ETag`.
fn versioned(rfq: Rfq, status: StatusCode) -> Response {
    let etag = HeaderValue::from_str(&format!("\"{}\"", rfq.version)).ok();
    let mut response = (status, Json(rfq)).into_response();
    if let Some(etag) = etag {
        response.headers_mut().insert(header::ETAG, etag);
    }
    response
}

/// The version `If-Match` names, if any: `"3"`, `W/"3"` or `3`.
fn if_match(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or_default().trim();
    let text = text.strip_prefix("W/").unwrap_or(text).trim_matches('"');
    text.parse().map(Some).map_err(|_| ApiError::Validation {
        message: "invalid values: If-Match".into(),
        details: FieldErrors::one(
            "If-Match",
            "name the RFQ's version as its ETag gives it, such as \"3\"",
        ),
    })
}

/// Create an RFQ in draft: a title, its currency, a deadline, lines (material, quantity, unit,
/// needed-by date) and the suppliers to invite.
#[utoipa::path(post, path = "/api/v1/rfqs", tag = "sourcing", request_body = NewRfq,
    security(("api_key" = [])),
    responses((status = 201, body = Rfq), (status = "4XX", body = ErrorEnvelope)))]
async fn create_rfq(
    State(app): State<AppState>,
    caller: Auth<Analyst>,
    ApiJson(new): ApiJson<NewRfq>,
) -> Result<Response, ApiError> {
    let rfq = app.sourcing.create(&caller.organization_id, new).await?;
    audit::record(
        &app,
        &caller,
        "rfq.create",
        ("rfq", &rfq.id),
        None::<()>,
        Some(&rfq),
    )
    .await;
    Ok(versioned(rfq, StatusCode::CREATED))
}

#[utoipa::path(get, path = "/api/v1/rfqs/{id}", tag = "sourcing", params(("id" = String, Path)),
    security(("api_key" = [])),
    responses((status = 200, body = Rfq), (status = "4XX", body = ErrorEnvelope)))]
async fn get_rfq(
    State(app): State<AppState>,
    caller: Auth<Viewer>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let rfq = app.sourcing.get(&caller.organization_id, &id).await?;
    Ok(versioned(rfq, StatusCode::OK))
}

/// Change a draft (any field), or an open RFQ's title, notes, deadline and invitations (only added to).
#[utoipa::path(patch, path = "/api/v1/rfqs/{id}", tag = "sourcing", params(("id" = String, Path)),
    request_body = RfqPatch, security(("api_key" = [])),
    responses((status = 200, body = Rfq), (status = "4XX", body = ErrorEnvelope)))]
async fn update_rfq(
    State(app): State<AppState>,
    caller: Auth<Analyst>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(patch): ApiJson<RfqPatch>,
) -> Result<Response, ApiError> {
    let version = if_match(&headers)?;
    let changed = app
        .sourcing
        .update(&caller.organization_id, &id, version, patch)
        .await?;
    Ok(recorded(&app, &caller, "rfq.update", changed).await)
}

/// Delete a draft or a cancelled RFQ (with its quotes).
#[utoipa::path(delete, path = "/api/v1/rfqs/{id}", tag = "sourcing", params(("id" = String, Path)),
    security(("api_key" = [])),
    responses((status = 204), (status = "4XX", body = ErrorEnvelope)))]
async fn delete_rfq(
    State(app): State<AppState>,
    caller: Auth<Analyst>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let version = if_match(&headers)?;
    let before = app
        .sourcing
        .delete(&caller.organization_id, &id, version)
        .await?;
    audit::record(
        &app,
        &caller,
        "rfq.delete",
        ("rfq", &id),
        Some(&before),
        None::<()>,
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// The change in the audit log (the state moves, not the lines again), the RFQ as it is now.
async fn recorded(app: &AppState, caller: &Principal, action: &str, changed: Changed) -> Response {
    let state = |r: &Rfq| {
        json!({"status": r.status, "deadline": r.deadline, "title": r.title, "version": r.version,
               "suppliers": r.suppliers.iter().map(|s| &s.supplier_id).collect::<Vec<_>>(),
               "lines": r.lines.len()})
    };
    audit::record(
        app,
        caller,
        action,
        ("rfq", &changed.after.id),
        Some(state(&changed.before)),
        Some(state(&changed.after)),
    )
    .await;
    versioned(changed.after, StatusCode::OK)
}

async fn act(
    app: &AppState,
    caller: &Principal,
    id: &str,
    headers: &HeaderMap,
    action: Action,
) -> Result<Response, ApiError> {
    let version = if_match(headers)?;
    let name = format!("rfq.{}", action.name());
    let changed = app
        .sourcing
        .act(&caller.organization_id, id, version, action)
        .await?;
    Ok(recorded(app, caller, &name, changed).await)
}

/// Open a draft to quotes: it needs an invited supplier and a deadline still to come. Announces
/// `rfq.opened`.
#[utoipa::path(post, path = "/api/v1/rfqs/{id}/open", tag = "sourcing", params(("id" = String, Path)),
    security(("api_key" = [])),
    responses((status = 200, body = Rfq), (status = "4XX", body = ErrorEnvelope)))]
async fn open_rfq(
    State(app): State<AppState>,
    caller: Auth<Analyst>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    act(&app, &caller, &id, &headers, Action::Open).await
}

/// Close an open RFQ before its deadline (it closes by itself when the deadline passes).
#[utoipa::path(post, path = "/api/v1/rfqs/{id}/close", tag = "sourcing", params(("id" = String, Path)),
    security(("api_key" = [])),
    responses((status = 200, body = Rfq), (status = "4XX", body = ErrorEnvelope)))]
async fn close_rfq(
    State(app): State<AppState>,
    caller: Auth<Analyst>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    act(&app, &caller, &id, &headers, Action::Close).await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Reopen {
    /// RFC 3339, or a date (its midnight UTC); still to come.
    #[serde(deserialize_with = "mercator_store::opt_time", default)]
    #[schema(value_type = String, format = DateTime)]
    pub deadline: Option<mercator_store::Time>,
}

/// Take quotes again on a closed RFQ, until a new deadline.
#[utoipa::path(post, path = "/api/v1/rfqs/{id}/reopen", tag = "sourcing", params(("id" = String, Path)),
    request_body = Reopen, security(("api_key" = [])),
    responses((status = 200, body = Rfq), (status = "4XX", body = ErrorEnvelope)))]
async fn reopen_rfq(
    State(app): State<AppState>,
    caller: Auth<Analyst>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Reopen>,
) -> Result<Response, ApiError> {
    let deadline = body.deadline.ok_or_else(|| ApiError::Validation {
        message: "invalid values: deadline".into(),
        details: FieldErrors::one("deadline", "a reopened RFQ needs a new deadline"),
    })?;
    act(&app, &caller, &id, &headers, Action::Reopen { deadline }).await
}

/// Cancel a draft, open or closed RFQ.
#[utoipa::path(post, path = "/api/v1/rfqs/{id}/cancel", tag = "sourcing", params(("id" = String, Path)),
    security(("api_key" = [])),
    responses((status = 200, body = Rfq), (status = "4XX", body = ErrorEnvelope)))]
async fn cancel_rfq(
    State(app): State<AppState>,
    caller: Auth<Analyst>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    act(&app, &caller, &id, &headers, Action::Cancel).await
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct QuoteQuery {
    /// Every revision, superseded ones too (default: each supplier's current quote).
    pub all: Option<bool>,
}

/// The RFQ's quotes, each line with its benchmark and deal score.
#[utoipa::path(get, path = "/api/v1/rfqs/{id}/quotes", tag = "sourcing",
    params(("id" = String, Path), QuoteQuery), security(("api_key" = [])),
    responses((status = 200, body = Vec<Quote>), (status = "4XX", body = ErrorEnvelope)))]
async fn list_quotes(
    State(app): State<AppState>,
    caller: Auth<Viewer>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<QuoteQuery>,
) -> Result<Json<Vec<Quote>>, ApiError> {
    let quotes = app
        .sourcing
        .quotes(&caller.organization_id, &id, q.all.unwrap_or(false))
        .await?;
    Ok(Json(quotes))
}

/// A supplier's quote (entered by a buyer): taken from an invited supplier while the RFQ is open and
/// before its deadline, in its currency. Each line is benchmarked against the price model's fair price for
/// it (percentile, savings, verdict), scored, and written as a price observation of type `quote`; a later
/// quote of the same supplier supersedes it. Announces `quote.received`.
#[utoipa::path(post, path = "/api/v1/rfqs/{id}/quotes", tag = "sourcing", params(("id" = String, Path)),
    request_body = NewQuote, security(("api_key" = [])),
    responses((status = 201, body = Quote), (status = "4XX", body = ErrorEnvelope)))]
async fn submit_quote(
    State(app): State<AppState>,
    caller: Auth<Analyst>,
    Path(id): Path<String>,
    ApiJson(new): ApiJson<NewQuote>,
) -> Result<(StatusCode, Json<Quote>), ApiError> {
    let quote = app
        .sourcing
        .submit_quote(&caller.organization_id, &id, new)
        .await?;
    let summary = json!({
        "rfq_id": quote.rfq_id, "supplier_id": quote.supplier_id, "revision": quote.revision,
        "lines": quote.lines.iter().map(|l| json!({"line_id": l.line_id, "unit_price": l.unit_price,
            "quantity": l.quantity})).collect::<Vec<_>>(),
    });
    audit::record(
        &app,
        &caller,
        "quote.submit",
        ("quote", &quote.id),
        None::<()>,
        Some(summary),
    )
    .await;
    Ok((StatusCode::CREATED, Json(quote)))
}

#[utoipa::path(get, path = "/api/v1/rfqs/{id}/quotes/{quote_id}", tag = "sourcing",
    params(("id" = String, Path), ("quote_id" = String, Path)), security(("api_key" = [])),
    responses((status = 200, body = Quote), (status = "4XX", body = ErrorEnvelope)))]
async fn get_quote(
    State(app): State<AppState>,
    caller: Auth<Viewer>,
    Path((id, quote_id)): Path<(String, String)>,
) -> Result<Json<Quote>, ApiError> {
    let quote = app
        .sourcing
        .quote(&caller.organization_id, &id, &quote_id)
        .await?;
    Ok(Json(quote))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ComparisonQuery {
    /// `json` (default) or `csv`; `Accept: text/csv` asks for CSV too.
    #[param(pattern = "^(json|csv)$")]
    pub format: Option<String>,
}

/// The bid comparison: lines × suppliers (each cell the quote with its benchmark and deal score), the best
/// offer per line by landed cost, totals per supplier and for the best split and single-supplier awards.
#[utoipa::path(get, path = "/api/v1/rfqs/{id}/comparison", tag = "sourcing",
    params(("id" = String, Path), ComparisonQuery), security(("api_key" = [])),
    responses((status = 200, body = Comparison, content_type = "application/json"),
        (status = 200, body = String, content_type = "text/csv"),
        (status = "4XX", body = ErrorEnvelope)))]
async fn comparison(
    State(app): State<AppState>,
    caller: Auth<Viewer>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<ComparisonQuery>,
) -> Result<Response, ApiError> {
    let csv = match q.format.as_deref() {
        Some("csv") => true,
        Some("json") => false,
        Some(_) => return Err(ApiError::invalid("format", "must be json or csv")),
        None => headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/csv")),
    };
    let comparison = app
        .sourcing
        .comparison(&caller.organization_id, &id)
        .await?;
    Ok(if csv {
        (
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"rfq-{id}-comparison.csv\""),
                ),
            ],
            compare::to_csv(&comparison),
        )
            .into_response()
    } else {
        Json(comparison).into_response()
    })
}

/// Award a closed RFQ: `{"supplier_id"}` for every line that supplier priced, or `{"lines": [{"line_id",
/// "supplier_id", "quantity"}]}` line by line (a line split by quantity); `"final": true` decides the RFQ
/// with the lines left unawarded. Announces `rfq.awarded`.
#[utoipa::path(post, path = "/api/v1/rfqs/{id}/award", tag = "sourcing", params(("id" = String, Path)),
    request_body = AwardRequest, security(("api_key" = [])),
    responses((status = 200, body = Rfq), (status = "4XX", body = ErrorEnvelope)))]
async fn award(
    State(app): State<AppState>,
    caller: Auth<Analyst>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<AwardRequest>,
) -> Result<Response, ApiError> {
    let version = if_match(&headers)?;
    let (changed, awards) = app
        .sourcing
        .award(&caller.organization_id, &id, version, request)
        .await?;
    audit::record(
        &app,
        &caller,
        "rfq.award",
        ("rfq", &id),
        Some(json!({"status": changed.before.status, "version": changed.before.version})),
        Some(json!({"status": changed.after.status, "version": changed.after.version, "awards": awards})),
    )
    .await;
    Ok(versioned(changed.after, StatusCode::OK))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct BenchmarkQuery {
    /// Default: a year before `to`. RFC 3339 or a date.
    pub from: Option<String>,
    /// Default: now.
    pub to: Option<String>,
}

/// A material's observed prices against its category and its market prices over a period (at most three
/// years): counts, quartiles, its percentile in the category, the ratios of the medians, its trend and the
/// fair price today, with how old its newest observation is.
#[utoipa::path(get, path = "/api/v1/benchmarks/materials/{id}", tag = "sourcing",
    params(("id" = String, Path), BenchmarkQuery), security(("api_key" = [])),
    responses((status = 200, body = MaterialBenchmark), (status = "4XX", body = ErrorEnvelope)))]
async fn material_benchmark(
    State(app): State<AppState>,
    caller: Auth<Viewer>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<BenchmarkQuery>,
) -> Result<Json<MaterialBenchmark>, ApiError> {
    let from = ApiError::parse_time("from", q.from)?;
    let to = ApiError::parse_time("to", q.to)?;
    let benchmark = app
        .sourcing
        .benchmark(&caller.organization_id, &id, from, to)
        .await?;
    Ok(Json(benchmark))
}
