//! `/api/v1/alerts`: alert rules (analyst or admin) and the events they open. The handlers translate;
//! [`mercator_services::alerts`] evaluates.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use mercator_store::{
    AlertEvent, AlertRule, AlertRulePatch, Delivery, EventQuery, EventStatus, NewAlertRule,
};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::audit;
use super::extract::{ApiJson, ApiQuery};
use super::{page, ErrorEnvelope, Page};
use crate::auth::{Analyst, Auth};
use crate::error::ApiError;
use crate::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_rules, create_rule))
        .routes(routes!(list_events))
        .routes(routes!(get_event))
        .routes(routes!(acknowledge_event))
        .routes(routes!(resolve_event))
        .routes(routes!(event_deliveries))
        .routes(routes!(get_rule, update_rule, delete_rule))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RuleListQuery {
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    #[param(maximum = 1_000_000_000)]
    pub offset: Option<u64>,
}

/// The organization's alert rules, oldest first.
#[utoipa::path(get, path = "/api/v1/alerts", tag = "alerts", params(RuleListQuery),
    security(("api_key" = [])),
    responses((status = 200, body = Page<AlertRule>), (status = "4XX", body = ErrorEnvelope)))]
async fn list_rules(
    State(app): State<AppState>,
    caller: Auth<Analyst>,
    ApiQuery(q): ApiQuery<RuleListQuery>,
) -> Result<Json<Page<AlertRule>>, ApiError> {
    let page = page(&app, q.limit, q.offset, None, true)?;
    let listed = app
        .store
        .alert_rules(&caller.organization_id, &page)
        .await?;
    Ok(Json(listed.into()))
}

/// Create a rule: a scope (`material_id`, `category` or `supplier_id`; none for everything), a condition
/// (`price_above`, `price_below`, `pct_change`, `anomaly`, `forecast_change`, `quote_above_prediction`), a
/// cooldown, channels (`"websocket"`, `{"webhook": {"url", "secret"}}`). It judges prices ingested from now
/// on.
#[utoipa::path(post, path = "/api/v1/alerts", tag = "alerts", request_body = NewAlertRule,
    security(("api_key" = [])),
    responses((status = 201, body = AlertRule), (status = "4XX", body = ErrorEnvelope)))]
async fn create_rule(
    State(app): State<AppState>,
    caller: Auth<Analyst>,
    ApiJson(new): ApiJson<NewAlertRule>,
) -> Result<(StatusCode, Json<AlertRule>), ApiError> {
    let rule = app.alerts.create_rule(&caller.organization_id, new).await?;
    let target = ("alert_rule", rule.id.as_str());
    audit::record(
        &app,
        &caller,
        "alert_rule.create",
        target,
        None::<()>,
        Some(&rule),
    )
    .await;
    Ok((StatusCode::CREATED, Json(rule)))
}

#[utoipa::path(get, path = "/api/v1/alerts/{id}", tag = "alerts", params(("id" = String, Path)),
    security(("api_key" = [])),
    responses((status = 200, body = AlertRule), (status = "4XX", body = ErrorEnvelope)))]
async fn get_rule(
    State(app): State<AppState>,
    caller: Auth<Analyst>,
    Path(id): Path<String>,
) -> Result<Json<AlertRule>, ApiError> {
    app.store
        .alert_rule(&caller.organization_id, &id)
        .await
        .map(Json)
        .map_err(ApiError::from)
}

/// Change a rule: the fields given. Events already opened stay.
#[utoipa::path(patch, path = "/api/v1/alerts/{id}", tag = "alerts", params(("id" = String, Path)),
    request_body = AlertRulePatch, security(("api_key" = [])),
    responses((status = 200, body = AlertRule), (status = "4XX", body = ErrorEnvelope)))]
async fn update_rule(
    State(app): State<AppState>,
    caller: Auth<Analyst>,
    Path(id): Path<String>,
    ApiJson(patch): ApiJson<AlertRulePatch>,
) -> Result<Json<AlertRule>, ApiError> {
    let org = &caller.organization_id;
    let (before, rule) = app.alerts.update_rule(org, &id, patch).await?;
    let target = ("alert_rule", id.as_str());
    audit::record(
        &app,
        &caller,
        "alert_rule.update",
        target,
        Some(&before),
        Some(&rule),
    )
    .await;
    Ok(Json(rule))
}

/// Delete a rule and its events.
#[utoipa::path(delete, path = "/api/v1/alerts/{id}", tag = "alerts", params(("id" = String, Path)),
    security(("api_key" = [])),
    responses((status = 204), (status = "4XX", body = ErrorEnvelope)))]
async fn delete_rule(
    State(app): State<AppState>,
    caller: Auth<Analyst>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let before = app.alerts.delete_rule(&caller.organization_id, &id).await?;
    let target = ("alert_rule", id.as_str());
    audit::record(
        &app,
        &caller,
        "alert_rule.delete",
        target,
        Some(&before),
        None::<()>,
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventListQuery {
    /// open, acknowledged or resolved.
    pub status: Option<EventStatus>,
    pub rule_id: Option<String>,
    pub material_id: Option<String>,
    pub supplier_id: Option<String>,
    /// Opened at or after (RFC 3339 or a date).
    pub from: Option<String>,
    /// Opened before.
    pub to: Option<String>,
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    #[param(maximum = 1_000_000_000)]
    pub offset: Option<u64>,
}

/// The organization's alert events, newest first.
#[utoipa::path(get, path = "/api/v1/alerts/events", tag = "alerts", params(EventListQuery),
    security(("api_key" = [])),
    responses((status = 200, body = Page<AlertEvent>), (status = "4XX", body = ErrorEnvelope)))]
async fn list_events(
    State(app): State<AppState>,
    caller: Auth<Analyst>,
    ApiQuery(q): ApiQuery<EventListQuery>,
) -> Result<Json<Page<AlertEvent>>, ApiError> {
    let query = EventQuery {
        status: q.status,
        rule_id: q.rule_id,
        material_id: q.material_id,
        supplier_id: q.supplier_id,
        from: ApiError::parse_time("from", q.from)?,
        to: ApiError::parse_time("to", q.to)?,
    };
    let page = page(&app, q.limit, q.offset, None, false)?;
    let listed = app
        .store
        .alert_events(&caller.organization_id, &query, &page)
        .await?;
    Ok(Json(listed.into()))
}

#[utoipa::path(get, path = "/api/v1/alerts/events/{id}", tag = "alerts",
    params(("id" = String, Path)), security(("api_key" = [])),
    responses((status = 200, body = AlertEvent), (status = "4XX", body = ErrorEnvelope)))]
async fn get_event(
    State(app): State<AppState>,
    caller: Auth<Analyst>,
    Path(id): Path<String>,
) -> Result<Json<AlertEvent>, ApiError> {
    app.store
        .alert_event(&caller.organization_id, &id)
        .await
        .map(Json)
        .map_err(ApiError::from)
}

/// Someone is on it. 409 for a resolved event.
#[utoipa::path(post, path = "/api/v1/alerts/events/{id}/acknowledge", tag = "alerts",
    params(("id" = String, Path)), security(("api_key" = [])),
    responses((status = 200, body = AlertEvent), (status = "4XX", body = ErrorEnvelope)))]
async fn acknowledge_event(
    State(app): State<AppState>,
    caller: Auth<Analyst>,
    Path(id): Path<String>,
) -> Result<Json<AlertEvent>, ApiError> {
    set_status(&app, &caller, &id, EventStatus::Acknowledged).await
}

/// Done with it; final. 409 for a resolved event.
#[utoipa::path(post, path = "/api/v1/alerts/events/{id}/resolve", tag = "alerts",
    params(("id" = String, Path)), security(("api_key" = [])),
    responses((status = 200, body = AlertEvent), (status = "4XX", body = ErrorEnvelope)))]
async fn resolve_event(
    State(app): State<AppState>,
    caller: Auth<Analyst>,
    Path(id): Path<String>,
) -> Result<Json<AlertEvent>, ApiError> {
    set_status(&app, &caller, &id, EventStatus::Resolved).await
}

async fn set_status(
    app: &AppState,
    caller: &Auth<Analyst>,
    id: &str,
    status: EventStatus,
) -> Result<Json<AlertEvent>, ApiError> {
    let event = app
        .store
        .set_alert_event_status(&caller.organization_id, id, status)
        .await?;
    let action = match status {
        EventStatus::Resolved => "alert_event.resolve",
        _ => "alert_event.acknowledge",
    };
    audit::record(
        app,
        caller,
        action,
        ("alert_event", id),
        None::<()>,
        Some(&event),
    )
    .await;
    Ok(Json(event))
}

/// The webhook deliveries of an event: status (pending, delivered, failed), attempts, the receiver's last
/// answer, the next attempt's time.
#[utoipa::path(get, path = "/api/v1/alerts/events/{id}/deliveries", tag = "alerts",
    params(("id" = String, Path)), security(("api_key" = [])),
    responses((status = 200, body = Vec<Delivery>), (status = "4XX", body = ErrorEnvelope)))]
async fn event_deliveries(
    State(app): State<AppState>,
    caller: Auth<Analyst>,
    Path(id): Path<String>,
) -> Result<Json<Vec<Delivery>>, ApiError> {
    let org = &caller.organization_id;
    app.store.alert_event(org, &id).await?;
    app.store
        .deliveries(org, &id)
        .await
        .map(Json)
        .map_err(ApiError::from)
}
