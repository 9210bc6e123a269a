//! Events for listeners: price observations as they are written, and notifications (alert events, model
//! events), each on a broadcast channel per organization ([`Fanout`]), so that a busy tenant's stream lags
//! only its own listeners.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use mercator_store::Price;
use tokio::sync::broadcast;

/// An observation written, for its organization's listeners.
pub type PriceEvent = Arc<Price>;

/// Events a listener may fall behind by before it is told it lagged.
pub const STREAM_CAPACITY: usize = 16_384;

/// A notification (an alert event, a model event).
pub type Notification = Arc<serde_json::Value>;

/// A broadcast channel per organization, made when its first listener arrives and dropped with its last.
pub struct Fanout<T> {
    channels: Mutex<HashMap<Arc<str>, broadcast::Sender<T>>>,
}

impl<T: Clone> Default for Fanout<T> {
    fn default() -> Self {
        Fanout {
            channels: Mutex::new(HashMap::new()),
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

    /// To the organization's listeners, if it has any.
    pub fn send(&self, org: &str, events: impl IntoIterator<Item = T>) {
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

    /// To every organization's listeners.
    pub fn send_all(&self, event: T) {
        let mut channels = self.lock();
        channels.retain(|_, tx| tx.send(event.clone()).is_ok());
    }
}
