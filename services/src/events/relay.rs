//! Events between replicas through Redis pub/sub: what one replica sends to its listeners, the others
//! send to theirs.
//!
//! Each [`Fanout`](super::Fanout) that is relayed publishes its events on `{prefix}:ev:{topic}:{org}`
//! (`{prefix}:ev:{topic}` for every organization) as `{"o": replica, "e": [events]}`, at most [`BATCH`]
//! events a message, from a bounded outbox so a sender never waits for Redis. One connection per replica
//! subscribes to `{prefix}:ev:*` and hands each message to the topic's fanout, skipping its own.
//!
//! Delivery is at most once, as live streams are: a message published while a subscriber is cut off
//! (Redis restarting, a slow subscriber dropped at its output buffer limit) is not replayed. What a
//! replica keeps, it keeps from the store's change feed, which Redis does not carry.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::mpsc;

/// Events in one message at most (a bulk ingest's prices go as several, each well under the output buffer
/// limit Redis cuts slow subscribers at).
pub const BATCH: usize = 500;

/// Messages waiting to be published at most; past it, events are dropped and counted.
const OUTBOX: usize = 4096;

/// How long a lost subscription waits before it connects again.
const RECONNECT_AFTER: Duration = Duration::from_millis(500);

/// A relayed stream: hands events another replica published to this replica's listeners.
pub trait Sink: Send + Sync {
    /// `events`: a JSON array of the topic's events; `org`: whose (`None`: every organization's).
    fn deliver(&self, org: Option<&str>, events: &RawValue);
}

pub struct Relay {
    replica: Arc<str>,
    /// `{prefix}:ev:`
    channel_prefix: String,
    outbox: mpsc::Sender<(String, String)>,
    sinks: RwLock<HashMap<&'static str, Arc<dyn Sink>>>,
    subscribed: AtomicBool,
}

#[derive(serde::Serialize)]
struct Outgoing<'a, T> {
    o: &'a str,
    e: &'a [T],
}

#[derive(Deserialize)]
struct Message<'a> {
    o: &'a str,
    #[serde(borrow)]
    e: &'a RawValue,
}

impl Relay {
    /// Connects to Redis at `url` (in the background: until it answers, events stay on this replica) and
    /// starts the publisher and the subscriber. `replica` names this process in its messages.
    pub fn start(url: &str, prefix: &str, replica: &str) -> Result<Arc<Relay>, String> {
        let client = redis::Client::open(url).map_err(|e| format!("--redis-url: {e}"))?;
        let (outbox, queued) = mpsc::channel(OUTBOX);
        let relay = Arc::new(Relay {
            replica: replica.into(),
            channel_prefix: format!("{prefix}:ev:"),
            outbox,
            sinks: RwLock::default(),
            subscribed: AtomicBool::new(false),
        });
        tokio::spawn(publish(client.clone(), queued));
        tokio::spawn(relay.clone().subscribe(client));
        Ok(relay)
    }

    /// Whether the subscription is up (for `/readyz`).
    pub fn is_subscribed(&self) -> bool {
        self.subscribed.load(Ordering::Acquire)
    }

    /// Hands the messages of `topic` to `sink`.
    pub fn register(&self, topic: &'static str, sink: Arc<dyn Sink>) {
        self.sinks
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(topic, sink);
    }

    /// Publishes `events` (serialized) of `topic` for `org` (`None`: every organization), [`BATCH`] a
    /// message. Never waits: a full outbox drops them, counted.
    pub fn publish<T: serde::Serialize>(&self, topic: &str, org: Option<&str>, events: &[T]) {
        let channel = match org {
            Some(org) => format!("{}{topic}:{org}", self.channel_prefix),
            None => format!("{}{topic}", self.channel_prefix),
        };
        for batch in events.chunks(BATCH) {
            let payload = match serde_json::to_string(&Outgoing {
                o: &self.replica,
                e: batch,
            }) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, topic, "an event does not serialize; not relayed");
                    return;
                }
            };
            if self.outbox.try_send((channel.clone(), payload)).is_err() {
                metrics::counter!("mercator_relay_dropped_total", "reason" => "outbox_full")
                    .increment(batch.len() as u64);
            }
        }
    }

    /// Subscribes to every topic, reconnecting for as long as the process runs.
    async fn subscribe(self: Arc<Self>, client: redis::Client) {
        let pattern = format!("{}*", self.channel_prefix);
        loop {
            match client.get_async_pubsub().await {
                Ok(mut pubsub) => match pubsub.psubscribe(&pattern).await {
                    Ok(()) => {
                        self.subscribed.store(true, Ordering::Release);
                        tracing::info!("subscribed to other replicas' events");
                        let mut messages = pubsub.on_message();
                        while let Some(message) = messages.next().await {
                            self.receive(message.get_channel_name(), message.get_payload_bytes());
                        }
                        self.subscribed.store(false, Ordering::Release);
                        tracing::warn!(
                            "the subscription to other replicas' events was lost; reconnecting"
                        );
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "subscribing to other replicas' events failed")
                    }
                },
                Err(e) => tracing::debug!(error = %e, "Redis for events is unreachable"),
            }
            tokio::time::sleep(RECONNECT_AFTER).await;
        }
    }

    fn receive(&self, channel: &str, payload: &[u8]) {
        let Some(rest) = channel.strip_prefix(&self.channel_prefix) else {
            return;
        };
        let (topic, org) = match rest.split_once(':') {
            Some((topic, org)) => (topic, Some(org)),
            None => (rest, None),
        };
        let Ok(message) = serde_json::from_slice::<Message>(payload) else {
            metrics::counter!("mercator_relay_dropped_total", "reason" => "unreadable")
                .increment(1);
            return;
        };
        if message.o == &*self.replica {
            return;
        }
        let sink = self
            .sinks
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(topic)
            .cloned();
        if let Some(sink) = sink {
            sink.deliver(org, message.e);
        }
    }
}

/// Publishes what the outbox holds, through a connection that reconnects by itself.
async fn publish(client: redis::Client, mut queued: mpsc::Receiver<(String, String)>) {
    let mut connection: Option<redis::aio::ConnectionManager> = None;
    while let Some((channel, payload)) = queued.recv().await {
        if connection.is_none() {
            match redis::aio::ConnectionManager::new(client.clone()).await {
                Ok(c) => connection = Some(c),
                Err(e) => {
                    tracing::debug!(error = %e, "Redis for events is unreachable; an event stays here");
                    metrics::counter!("mercator_relay_dropped_total", "reason" => "unreachable")
                        .increment(1);
                    continue;
                }
            }
        }
        let Some(c) = connection.as_mut() else {
            continue;
        };
        let sent: redis::RedisResult<i64> = redis::cmd("PUBLISH")
            .arg(&channel)
            .arg(&payload)
            .query_async(c)
            .await;
        if let Err(e) = sent {
            tracing::debug!(error = %e, "publishing an event failed");
            metrics::counter!("mercator_relay_dropped_total", "reason" => "unreachable")
                .increment(1);
        }
    }
}
