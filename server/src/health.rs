//! Liveness and readiness for orchestrators (the V2 protocol has its own under /v2/health).

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

use crate::error::ApiError;
use crate::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(|| async { StatusCode::OK }))
        .route("/readyz", get(readyz))
}

/// 200 once every model is loaded and warmed up; 503 before, and while draining.
async fn readyz(State(app): State<AppState>) -> Result<StatusCode, ApiError> {
    app.check_ready()?;
    Ok(StatusCode::OK)
}
