//! The WebSocket streams.
//!
//! - `/ws/prices`: price observations of the caller's organization as they are written, optionally of one
//!   material: `{"type": "price", "price": {...}}`.
//! - `/ws/notifications`: events for the caller's organization: model events (a model loaded, unloaded,
//!   activated, rolled back; models are shared, so every organization hears them) as
//!   `{"type": "model", "action", "model", "before", "after", "at"}`; and alert events,
//!   `{"type": "alert.fired", ...}` (see [`mercator_services::alerts`]).
//!
//! A listener too slow for a stream gets `{"type": "lagged", "missed": n}` and carries on with the newest.
//!
//! Each organization has its own channel ([`Fanout`]): a busy tenant's stream lags only its own listeners,
//! and `missed` counts only its own events. A socket checks every few seconds that its key still exists
//! and closes with 1008 (policy violation) once it is deleted. A key holds at most --max-sockets-per-key
//! sockets at once; what a client sends is capped at [`MAX_INCOMING_BYTES`] a message.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use serde::Deserialize;
use tokio::sync::broadcast::{self, error::RecvError};
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::ApiQuery;
use super::ErrorEnvelope;
use crate::auth::{Auth, Principal, Viewer};
use crate::error::ApiError;
use crate::AppState;

/// The largest message a client may send on a stream (the streams take no commands; pings fit).
pub const MAX_INCOMING_BYTES: usize = 4096;

/// How often an open socket checks that its key still exists.
pub const REVALIDATE_EVERY: Duration = Duration::from_secs(2);

pub use mercator_services::events::{Fanout, Notification, PriceEvent};

/// Open sockets by key, for --max-sockets-per-key.
#[derive(Default)]
pub struct Sockets {
    open: Mutex<HashMap<String, usize>>,
}

/// One open socket of a key, counted until dropped.
pub struct SocketSlot {
    sockets: Arc<Sockets>,
    key_id: String,
}

impl Sockets {
    /// A slot for one more socket of `key_id`, or 429 at the limit.
    pub fn open(self: &Arc<Self>, key_id: &str, limit: usize) -> Result<SocketSlot, ApiError> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(key_id.to_string()).or_default();
        if *n >= limit {
            return Err(ApiError::TooManySockets { limit });
        }
        *n += 1;
        Ok(SocketSlot {
            sockets: self.clone(),
            key_id: key_id.to_string(),
        })
    }
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        let mut open = self.sockets.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.key_id) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key_id);
            }
        }
    }
}

/// What every stream socket holds: its slot, and its caller to recheck.
pub struct Held {
    _slot: SocketSlot,
    caller: Arc<Principal>,
    app: AppState,
}

/// Admits a socket for `caller`: its slot under the per-key cap, and the upgrade with incoming messages
/// capped.
pub fn admit(
    app: &AppState,
    caller: Arc<Principal>,
    upgrade: WebSocketUpgrade,
) -> Result<(WebSocketUpgrade, Held), ApiError> {
    let slot = app
        .sockets
        .open(&caller.actor_id, app.limits.max_sockets_per_key)?;
    let upgrade = upgrade
        .max_message_size(MAX_INCOMING_BYTES)
        .max_frame_size(MAX_INCOMING_BYTES);
    Ok((
        upgrade,
        Held {
            _slot: slot,
            caller,
            app: app.clone(),
        },
    ))
}

impl Held {
    /// Whether the socket's key still exists and has not expired (a store error keeps the socket: the
    /// store may be back).
    pub async fn still_valid(&self) -> bool {
        let now = self.app.keys.now();
        if self.caller.expires_at.is_some_and(|end| now >= end) {
            return false;
        }
        let active = match &self.caller.session {
            None => {
                self.app
                    .store
                    .api_key_active(&self.caller.organization_id, &self.caller.actor_id, now)
                    .await
            }
            Some(session) => {
                self.app
                    .sessions
                    .still_valid(&self.caller.actor_id, session)
                    .await
            }
        };
        !matches!(active, Ok(false))
    }
}

/// The close frame of a socket whose key was deleted or expired.
pub fn revoked() -> Message {
    Message::Close(Some(CloseFrame {
        code: axum::extract::ws::close_code::POLICY,
        reason: "the API key was revoked or expired".into(),
    }))
}

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(price_stream))
        .routes(routes!(notification_stream))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
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
    let events = app.notifications.subscribe(&caller.organization_id);
    let (upgrade, held) = admit(&app, caller.0.clone(), upgrade)?;
    Ok(upgrade.on_upgrade(move |socket| {
        forward(socket, held, events, |event: &Notification| {
            Some((**event).clone())
        })
    }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
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
    let material = q.material_id;
    let events = app.prices.subscribe(&caller.organization_id);
    let (upgrade, held) = admit(&app, caller.0.clone(), upgrade)?;
    Ok(upgrade.on_upgrade(move |socket| {
        forward(socket, held, events, move |price: &PriceEvent| {
            let wanted = material.as_ref().is_none_or(|m| *m == price.material_id);
            wanted.then(|| serde_json::json!({ "type": "price", "price": **price }))
        })
    }))
}

/// Sends the events `pick` keeps (as the JSON it makes of them) until the client goes away, the stream
/// ends or the key is deleted; a listener that falls behind is told how many it missed.
async fn forward<T: Clone>(
    mut socket: WebSocket,
    held: Held,
    mut events: broadcast::Receiver<T>,
    pick: impl Fn(&T) -> Option<serde_json::Value>,
) {
    let mut recheck = tokio::time::interval(REVALIDATE_EVERY);
    recheck.tick().await;
    loop {
        let message = tokio::select! {
            _ = recheck.tick() => {
                if held.still_valid().await {
                    continue;
                }
                let _ = socket.send(revoked()).await;
                return;
            }
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
