//! The WebSocket streams.
//!
//! - `/ws/prices`: price observations of the caller's organization as they are written, optionally of one
//!   material: `{"type": "price", "price": {...}}`.
//! - `/ws/notifications`: events for the caller's organization: model events (a model loaded, unloaded,
//!   activated, rolled back; models are shared, so every organization hears them) as
//!   `{"type": "model", "action", "model", "before", "after", "at"}`; and alert events,
//!   `{"type": "alert.fired", ...}` (see [`crate::alerts`]).
//!
//! A listener too slow for a stream gets `{"type": "lagged", "missed": n}` and carries on with the newest.

use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use mercator_store::Price;
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::ApiQuery;
use super::ErrorEnvelope;
use crate::auth::{Auth, Viewer};
use crate::error::ApiError;
use crate::AppState;

/// What is announced: the organization and the observation written.
pub type PriceEvent = Arc<(Arc<str>, Price)>;

/// Observations a listener may fall behind by before it is told it lagged.
pub const STREAM_CAPACITY: usize = 16_384;

/// A notification and the organization it is for (`None`: every organization).
pub type Notification = Arc<(Option<Arc<str>>, serde_json::Value)>;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(price_stream))
        .routes(routes!(notification_stream))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct NotificationQuery {
    /// The API key, for clients that cannot set headers on a WebSocket handshake.
    pub api_key: Option<String>,
}

/// A WebSocket of the organization's notifications: alert events and model events.
#[utoipa::path(get, path = "/ws/notifications", tag = "notifications", params(NotificationQuery),
    security(("api_key" = [])),
    responses((status = 101, description = "Switching to the WebSocket protocol"),
              (status = "4XX", body = ErrorEnvelope)))]
async fn notification_stream(
    State(app): State<AppState>,
    caller: Auth<Viewer>,
    ApiQuery(_): ApiQuery<NotificationQuery>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let org: Arc<str> = Arc::from(caller.organization_id.as_str());
    let events = app.notifications.subscribe();
    Ok(upgrade.on_upgrade(move |socket| {
        forward(socket, events, move |event: &Notification| match &event.0 {
            Some(to) if *to != org => None,
            _ => Some(event.1.clone()),
        })
    }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    /// Only this material's observations.
    pub material_id: Option<String>,
    /// The API key, for clients that cannot set headers on a WebSocket handshake.
    pub api_key: Option<String>,
}

/// A WebSocket of the organization's price observations as they are ingested.
#[utoipa::path(get, path = "/ws/prices", tag = "prices", params(StreamQuery),
    security(("api_key" = [])),
    responses((status = 101, description = "Switching to the WebSocket protocol"),
              (status = "4XX", body = ErrorEnvelope)))]
async fn price_stream(
    State(app): State<AppState>,
    caller: Auth<Viewer>,
    ApiQuery(q): ApiQuery<StreamQuery>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let org = caller.organization_id.clone();
    let material = q.material_id;
    let events = app.prices.subscribe();
    Ok(upgrade.on_upgrade(move |socket| {
        forward(socket, events, move |event: &PriceEvent| {
            let (event_org, price) = &**event;
            let wanted =
                **event_org == *org && material.as_ref().is_none_or(|m| *m == price.material_id);
            wanted.then(|| serde_json::json!({ "type": "price", "price": price }))
        })
    }))
}

/// Sends the events `pick` keeps (as the JSON it makes of them) until the client goes away or the
/// stream ends; a listener that falls behind is told how many it missed.
async fn forward<T: Clone>(
    mut socket: WebSocket,
    mut events: tokio::sync::broadcast::Receiver<T>,
    pick: impl Fn(&T) -> Option<serde_json::Value>,
) {
    loop {
        let message = tokio::select! {
            event = events.recv() => match event {
                Ok(event) => match pick(&event) {
                    Some(message) => message,
                    None => continue,
                },
                Err(RecvError::Lagged(missed)) => serde_json::json!({ "type": "lagged", "missed": missed }),
                Err(RecvError::Closed) => return,
            },
            // The client's messages are not commands; a close or an error ends the stream.
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => continue,
            },
        };
        if socket
            .send(Message::Text(message.to_string().into()))
            .await
            .is_err()
        {
            return;
        }
    }
}
