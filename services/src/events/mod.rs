//! Events for listeners: price observations as they are written, and notifications (alert events, model
//! events), each on a broadcast channel per organization ([`Fanout`]), so that a busy tenant's stream lags
//! only its own listeners. With Redis, every replica's events reach every replica's listeners
//! ([`relay`]).

pub mod relay;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use mercator_store::Price;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::broadcast;

use relay::{Relay, Sink};

/// An observation written, for its organization's listeners.
pub type PriceEvent = Arc<Price>;

/// Events a listener may fall behind by before it is told it lagged.
pub const STREAM_CAPACITY: usize = 16_384;

/// A notification (an alert event, a model event).
pub type Notification = Arc<serde_json::Value>;

/// A broadcast channel per organization, made when its first listener arrives and dropped with its last;
/// relayed to the other replicas when a [`Relay`] is attached.
pub struct Fanout<T> {
    channels: Mutex<HashMap<Arc<str>, broadcast::Sender<T>>>,
    relay: OnceLock<(Arc<Relay>, &'static str)>,
}

impl<T: Clone> Default for Fanout<T> {
    fn default() -> Self {
        Fanout {
            channels: Mutex::new(HashMap::new()),
            relay: OnceLock::new(),
        }
    }
}

impl<T> Fanout<T>
where
    T: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Sends this fanout's events to the other replicas as `topic`, and theirs to this one's listeners.
    pub fn relay_through(self: &Arc<Self>, relay: &Arc<Relay>, topic: &'static str) {
        relay.register(topic, self.clone());
        let _ = self.relay.set((relay.clone(), topic));
    }

    /// To the organization's listeners, here and on every other replica.
    pub fn send(&self, org: &str, events: impl IntoIterator<Item = T>) {
        match self.relay.get() {
            Some((relay, topic)) => {
                let events: Vec<T> = events.into_iter().collect();
                relay.publish(topic, Some(org), &events);
                self.send_here(org, events);
            }
            None => self.send_here(org, events),
        }
    }

    /// To every organization's listeners, here and on every other replica.
    pub fn send_all(&self, event: T) {
        if let Some((relay, topic)) = self.relay.get() {
            relay.publish(topic, None, std::slice::from_ref(&event));
        }
        self.send_all_here(event);
    }
}

impl<T> Sink for Fanout<T>
where
    T: Clone + DeserializeOwned + Send + Sync,
{
    fn deliver(&self, org: Option<&str>, events: &RawValue) {
        let Ok(events) = serde_json::from_str::<Vec<T>>(events.get()) else {
            metrics::counter!("mercator_relay_dropped_total", "reason" => "unreadable")
                .increment(1);
            return;
        };
        match org {
            Some(org) => self.send_here(org, events),
            None => events.into_iter().for_each(|e| self.send_all_here(e)),
        }
    }
}

impl<T: Clone> Fanout<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, broadcast::Sender<T>>> {
        self.channels.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn subscribe(&self, org: &str) -> broadcast::Receiver<T> {
        let mut channels = self.lock();
        match channels.get(org) {
            Some(tx) => tx.subscribe(),
            None => {
                let (tx, rx) = broadcast::channel(STREAM_CAPACITY);
                channels.insert(Arc::from(org), tx);
                rx
            }
        }
    }

    /// To the organization's listeners on this replica, if it has any.
    fn send_here(&self, org: &str, events: impl IntoIterator<Item = T>) {
        let mut channels = self.lock();
        let Some(tx) = channels.get(org) else {
            return;
        };
        if tx.receiver_count() == 0 {
            channels.remove(org);
            return;
        }
        for event in events {
            let _ = tx.send(event);
        }
    }

    /// To every organization's listeners on this replica.
    fn send_all_here(&self, event: T) {
        let mut channels = self.lock();
        channels.retain(|_, tx| tx.send(event.clone()).is_ok());
    }
}
