//! Liveness and readiness for orchestrators (the V2 protocol has its own under /v2/health).

use std::time::Duration;

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

/// How long readiness waits for the store to answer, and for a nudged catch-up.
const PROBE: Duration = Duration::from_secs(1);

/// 200 once every model is loaded and warmed up, with the store (its backend, whether it answers), Redis and
/// how far this replica is behind the change feed; 503 before, while draining, and when this replica is
/// behind the feed by more than --fleet-max-lag-secs while the store answers (it is stuck where the others
/// are not). A store that does not answer leaves every replica behind alike, and inference still serves,
/// so that alone does not take the replica out.
async fn readyz(State(app): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    app.check_ready()?;
    let reachable = tokio::time::timeout(PROBE, app.store.ping())
        .await
        .is_ok_and(|answered| answered.is_ok());
    let max = app.fleet_max_lag.as_secs_f64();
    let mut lag = app.fleet.lag();
    if reachable && lag.seconds_behind > max {
        // The store is back, or the feed's poll has not come round yet: read it now.
        let _ = tokio::time::timeout(PROBE, app.fleet.catch_up()).await;
        lag = app.fleet.lag();
        if lag.seconds_behind > max {
            return Err(ApiError::FeedBehind(lag.seconds_behind as u64));
        }
    }
    Ok(Json(serde_json::json!({
        "status": "ready",
        "store": {"backend": app.store.backend(), "reachable": reachable},
        "replica": app.store.replica(),
        "redis": match &app.relay {
            None => "off",
            Some(relay) if relay.is_subscribed() => "up",
            Some(_) => "down",
        },
        "change_feed": lag,
    })))
}
