//! `/api/v1/models`: what the engine serves, which version answers requests that name none, and the
//! switch between versions (activate, rollback), kept in the store so a restart serves as it was left.
//! Models are the platform's, shared by every organization: any admin may read them, only the platform
//! owner may change them. The handlers translate; [`mercator_services::registry`] decides.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use mercator_services::registry::{
    Changed, ModelEvent, ModelView, TrafficBody, VersionDetail, VersionView,
};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::ApiJson;
use super::{audit, ErrorEnvelope};
use crate::auth::{Admin, Auth, Owner, Principal};
use crate::error::ApiError;
use crate::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_models))
        .routes(routes!(get_model))
        .routes(routes!(activate))
        .routes(routes!(delete_version))
        .routes(routes!(set_traffic))
        .routes(routes!(get_version))
        .routes(routes!(load_version))
        .routes(routes!(unload_version))
        .routes(routes!(rollback))
}

/// A registry change recorded in the audit log under `who`; answers what the change answered.
pub async fn audited<T>(app: &AppState, who: &Principal, changed: Changed<T>) -> T {
    let ModelEvent {
        action,
        model,
        before,
        after,
    } = changed.event;
    audit::record(app, who, action, ("model", &model), before, after).await;
    changed.answer
}

/// Every registered model, its versions with their states and live figures, and the active one (admin).
#[utoipa::path(get, path = "/api/v1/models", tag = "models", security(("api_key" = [])),
    responses((status = 200, body = Vec<ModelView>), (status = "4XX", body = ErrorEnvelope)))]
async fn list_models(
    State(app): State<AppState>,
    _: Auth<Admin>,
) -> Result<Json<Vec<ModelView>>, ApiError> {
    Ok(Json(app.registry.list().await?))
}

#[utoipa::path(get, path = "/api/v1/models/{name}", tag = "models", params(("name" = String, Path)),
    security(("api_key" = [])),
    responses((status = 200, body = ModelView), (status = "4XX", body = ErrorEnvelope)))]
async fn get_model(
    State(app): State<AppState>,
    _: Auth<Admin>,
    Path(name): Path<String>,
) -> Result<Json<ModelView>, ApiError> {
    Ok(Json(app.registry.view(&name).await?))
}

/// Make a loaded version the one that answers requests naming none, atomically: requests in flight
/// finish on the version they started on (platform owner). 409 for a version that failed validation,
/// is retired or is unloaded.
#[utoipa::path(post, path = "/api/v1/models/{name}/versions/{version}/activate", tag = "models",
    params(("name" = String, Path), ("version" = u64, Path)), security(("api_key" = [])),
    responses((status = 200, body = ModelView), (status = "4XX", body = ErrorEnvelope)))]
async fn activate(
    State(app): State<AppState>,
    caller: Auth<Owner>,
    Path((name, version)): Path<(String, u64)>,
) -> Result<Json<ModelView>, ApiError> {
    let changed = app.registry.activate(&name, version).await?;
    Ok(Json(audited(&app, &caller, changed).await))
}

/// Return to the version active before the last switch (platform owner); 409 when there is none.
#[utoipa::path(post, path = "/api/v1/models/{name}/rollback", tag = "models",
    params(("name" = String, Path)), security(("api_key" = [])),
    responses((status = 200, body = ModelView), (status = "4XX", body = ErrorEnvelope)))]
async fn rollback(
    State(app): State<AppState>,
    caller: Auth<Owner>,
    Path(name): Path<String>,
) -> Result<Json<ModelView>, ApiError> {
    let changed = app.registry.rollback(&name).await?;
    Ok(Json(audited(&app, &caller, changed).await))
}

/// Retire a version that takes no traffic (platform owner): it stops serving once the requests holding
/// it are answered, its sessions are freed, and it leaves the served repository. The registry keeps it as
/// retired, so a later import from --models-dir does not bring it back (409 for one taking traffic).
#[utoipa::path(delete, path = "/api/v1/models/{name}/versions/{version}", tag = "models",
    params(("name" = String, Path), ("version" = u64, Path)), security(("api_key" = [])),
    responses((status = 204), (status = "4XX", body = ErrorEnvelope)))]
async fn delete_version(
    State(app): State<AppState>,
    caller: Auth<Owner>,
    Path((name, version)): Path<(String, u64)>,
) -> Result<StatusCode, ApiError> {
    let changed = app.registry.retire(&name, version).await?;
    audited(&app, &caller, changed).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Load a registered version into the engine (platform owner): sessions built and warmed beside what
/// serves; it then answers requests that name it. Kept across restarts.
#[utoipa::path(post, path = "/api/v1/models/{name}/versions/{version}/load", tag = "models",
    params(("name" = String, Path), ("version" = u64, Path)), security(("api_key" = [])),
    responses((status = 200, body = VersionView), (status = "4XX", body = ErrorEnvelope)))]
async fn load_version(
    State(app): State<AppState>,
    caller: Auth<Owner>,
    Path((name, version)): Path<(String, u64)>,
) -> Result<Json<VersionView>, ApiError> {
    let changed = app.registry.load(&name, version).await?;
    Ok(Json(audited(&app, &caller, changed).await))
}

/// Unload a version that takes no traffic (platform owner): requests holding it finish, then its
/// sessions are freed; it stays registered and can be loaded again. Kept across restarts.
#[utoipa::path(post, path = "/api/v1/models/{name}/versions/{version}/unload", tag = "models",
    params(("name" = String, Path), ("version" = u64, Path)), security(("api_key" = [])),
    responses((status = 200, body = ModelView), (status = "4XX", body = ErrorEnvelope)))]
async fn unload_version(
    State(app): State<AppState>,
    caller: Auth<Owner>,
    Path((name, version)): Path<(String, u64)>,
) -> Result<Json<ModelView>, ApiError> {
    let changed = app.registry.unload(&name, version).await?;
    Ok(Json(audited(&app, &caller, changed).await))
}

/// One version: state, manifest, artifact, registration and live figures (admin).
#[utoipa::path(get, path = "/api/v1/models/{name}/versions/{version}", tag = "models",
    params(("name" = String, Path), ("version" = u64, Path)), security(("api_key" = [])),
    responses((status = 200, body = VersionDetail), (status = "4XX", body = ErrorEnvelope)))]
async fn get_version(
    State(app): State<AppState>,
    _: Auth<Admin>,
    Path((name, version)): Path<(String, u64)>,
) -> Result<Json<VersionDetail>, ApiError> {
    Ok(Json(app.registry.version(&name, version).await?))
}

/// Share the model's unnamed requests between ready versions (a 90/10 canary) and copy them to a shadow
/// version whose answers are compared and never returned (platform owner). Kept across restarts; an
/// activation or rollback ends the split (the shadow stays).
#[utoipa::path(put, path = "/api/v1/models/{name}/traffic", tag = "models",
    params(("name" = String, Path)), request_body = TrafficBody, security(("api_key" = [])),
    responses((status = 200, body = ModelView), (status = "4XX", body = ErrorEnvelope)))]
async fn set_traffic(
    State(app): State<AppState>,
    caller: Auth<Owner>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<TrafficBody>,
) -> Result<Json<ModelView>, ApiError> {
    let split = body.split.iter().map(|e| (e.version, e.percent)).collect();
    let changed = app.registry.set_traffic(&name, split, body.shadow).await?;
    Ok(Json(audited(&app, &caller, changed).await))
}
