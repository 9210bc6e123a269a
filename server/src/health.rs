//! Liveness and readiness for orchestrators (the V2 protocol has its own under /v2/health).

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};

use crate::error::ApiError;
use crate::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(|| async { StatusCode::OK }))
        .route("/readyz", get(readyz))
}

/// 200 once every model is loaded and warmed up, with the store's backend and how far this replica is
/// behind the change feed; 503 before, while draining, and when the feed has gone unread too long.
async fn readyz(State(app): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    app.check_ready()?;
    let lag = app.fleet.lag();
    if lag.seconds_behind > app.fleet_max_lag.as_secs_f64() {
        return Err(ApiError::FeedBehind(lag.seconds_behind as u64));
    }
    Ok(Json(serde_json::json!({
        "status": "ready",
        "store": app.store.backend(),
        "replica": app.store.replica(),
        "redis": match &app.relay {
            None => "off",
            Some(relay) if relay.is_subscribed() => "up",
            Some(_) => "down",
        },
        "change_feed": lag,
    })))
}
