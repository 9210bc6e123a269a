//! `/api/v1/models/{name}/monitoring` and `/api/v1/models/{name}/versions/{version}/monitoring`: drift of
//! what a model version sees and answers against its reference profile, over a window, merged across the
//! fleet. The counts cover every organization's traffic, so only the platform owner reads them. The
//! handlers translate; [`mercator_services::monitor`] decides.

use axum::extract::{Path, State};
use axum::Json;
use mercator_services::monitor::{Comparison, MonitorError, Report};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::ApiQuery;
use super::ErrorEnvelope;
use crate::auth::{Auth, Owner};
use crate::error::ApiError;
use crate::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(version_monitoring))
        .routes(routes!(model_monitoring))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct WindowQuery {
    /// One of the server's windows (`--monitor-windows`, `1h` and `1d` by default); the first by default.
    pub window: Option<String>,
}

/// A version's drift over a window: per feature and per output, the metric (PSI for numeric columns, JS
/// for categorical ones), its value, the threshold and the verdict, with the rows counted (platform
/// owner). 404 `not_monitored` for a version without a reference profile.
#[utoipa::path(get, path = "/api/v1/models/{name}/versions/{version}/monitoring", tag = "models",
    params(("name" = String, Path), ("version" = u64, Path), WindowQuery), security(("api_key" = [])),
    responses((status = 200, body = Report), (status = "4XX", body = ErrorEnvelope)))]
async fn version_monitoring(
    State(app): State<AppState>,
    _: Auth<Owner>,
    Path((name, version)): Path<(String, u64)>,
    ApiQuery(q): ApiQuery<WindowQuery>,
) -> Result<Json<Report>, ApiError> {
    let monitor = app.monitor.as_ref().ok_or(MonitorError::Off)?;
    Ok(Json(
        monitor.report(&name, version, q.window.as_deref()).await?,
    ))
}

/// The versions answering the model's requests (active, split, shadow) side by side over a window
/// (platform owner).
#[utoipa::path(get, path = "/api/v1/models/{name}/monitoring", tag = "models",
    params(("name" = String, Path), WindowQuery), security(("api_key" = [])),
    responses((status = 200, body = Comparison), (status = "4XX", body = ErrorEnvelope)))]
async fn model_monitoring(
    State(app): State<AppState>,
    _: Auth<Owner>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<WindowQuery>,
) -> Result<Json<Comparison>, ApiError> {
    let monitor = app.monitor.as_ref().ok_or(MonitorError::Off)?;
    Ok(Json(monitor.compare(&name, q.window.as_deref()).await?))
}
