//! Webhook delivery: the events' bodies wait in the store's outbox (`alert_deliveries`), and one dispatcher
//! task per server sends what is due, signed after Standard Webhooks, and reschedules failures on the retry
//! schedule. A receiver that keeps failing holds only its own rows; nothing is lost to a crash (a claimed
//! attempt is retried once its lease ends).
//!
//! Headers: `webhook-id` (the delivery's id, the same on every attempt), `webhook-timestamp` (Unix seconds
//! of this attempt), `webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`. The key is
//! the secret's bytes, or for a `whsec_` secret the base64 after the prefix (as Standard Webhooks'
//! libraries read it).
//!
//! Receivers must be outside the server's network (`egress.rs`); a failed attempt is logged with the
//! receiver's status code, or with the category of a transport failure (`timeout`, `refused`, `tls`,
//! `dns`, `blocked`), never the raw error.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, Mac};
use mercator_store::{DueDelivery, Store};
use sha2::Sha256;
use tokio::sync::{Notify, Semaphore};

use super::egress::{Egress, Transport};

/// Deliveries claimed per round.
const CLAIM: usize = 32;
/// Attempts in flight at once, across receivers.
const IN_FLIGHT: usize = 16;
/// A receiver has this long to answer.
const TIMEOUT: Duration = Duration::from_secs(15);
/// How long a claimed attempt is out of other dispatchers' reach.
const LEASE_MS: i64 = 60_000;

/// The dispatcher's settings and its wake-up call.
pub struct Webhooks {
    /// Delays before the 2nd, 3rd, ... attempt; after the last, a delivery has failed.
    pub retry_schedule: Vec<Duration>,
    /// Where receivers may be.
    pub egress: Egress,
    wake: Notify,
}

impl Webhooks {
    pub fn new(retry_schedule: Vec<Duration>, egress: Egress) -> Webhooks {
        Webhooks {
            retry_schedule,
            egress,
            wake: Notify::new(),
        }
    }

    /// Something was queued: look now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Sends what is due until the process ends.
    pub async fn run(self: Arc<Self>, store: Store) {
        let client = self.egress.client(TIMEOUT);
        let permits = Arc::new(Semaphore::new(IN_FLIGHT));
        loop {
            // A read first: claiming is a write, and on SQLite an idle poll would queue behind every bulk
            // ingest's transaction for the write lock.
            let due = match store.next_delivery_due().await {
                Ok(due) => due,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the webhook outbox failed");
                    None
                }
            };
            let now = chrono::Utc::now();
            if due.is_some_and(|at| at <= now) {
                match store.claim_deliveries(CLAIM, LEASE_MS).await {
                    Ok(claimed) => {
                        for delivery in claimed {
                            let Ok(permit) = permits.clone().acquire_owned().await else {
                                return;
                            };
                            let (this, store, client) =
                                (self.clone(), store.clone(), client.clone());
                            tokio::spawn(async move {
                                this.attempt(&store, &client, delivery).await;
                                drop(permit);
                            });
                        }
                        continue;
                    }
                    Err(e) => tracing::warn!(error = %e, "claiming webhook deliveries failed"),
                }
            }
            let wait = due
                .and_then(|at| (at - now).to_std().ok())
                .unwrap_or(Duration::from_secs(5))
                .min(Duration::from_secs(5));
            let _ = tokio::time::timeout(wait, self.wake.notified()).await;
        }
    }

    async fn attempt(&self, store: &Store, client: &reqwest::Client, d: DueDelivery) {
        let (code, error) = match (self.egress.check_literal(&d.url), &d.secret) {
            (Err(blocked), _) => (None, Some(blocked.as_str().to_string())),
            (Ok(()), Err(e)) => {
                tracing::error!(delivery = %d.id, error = %e, "a webhook secret cannot be opened");
                (None, Some("secret_unavailable".to_string()))
            }
            (Ok(()), Ok(secret)) => {
                let timestamp = chrono::Utc::now().timestamp();
                let signature = sign(secret, &d.id, timestamp, &d.body);
                let sent = client
                    .post(&d.url)
                    .header("content-type", "application/json")
                    .header("webhook-id", &d.id)
                    .header("webhook-timestamp", timestamp.to_string())
                    .header("webhook-signature", signature)
                    .body(d.body.clone())
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status().is_success() => (Some(r.status().as_u16()), None),
                    Ok(r) => (
                        Some(r.status().as_u16()),
                        Some(format!("the receiver answered {}", r.status())),
                    ),
                    Err(e) => {
                        tracing::debug!(delivery = %d.id, error = %e, "webhook transport failure");
                        (None, Some(Transport::of(&e).as_str().to_string()))
                    }
                }
            }
        };
        let delivered = error.is_none();
        let retry = (!delivered)
            .then(|| self.retry_schedule.get(d.attempt as usize - 1))
            .flatten()
            .map(|delay| jitter(*delay).as_millis() as i64);
        if !delivered {
            tracing::info!(delivery = %d.id, attempt = d.attempt, code, error = error.as_deref(),
                retry_in_ms = retry, "webhook attempt failed");
        }
        if let Err(e) = store
            .finish_attempt(&d.id, code, error.as_deref(), delivered, retry)
            .await
        {
            tracing::warn!(error = %e, delivery = %d.id, "recording a webhook attempt failed; it will be retried");
        }
        if retry.is_some() {
            // The dispatcher may be asleep until a lease it saw ends: the retry may be due sooner.
            self.wake();
        }
    }
}

/// `v1,<base64 HMAC-SHA256>` of `{id}.{timestamp}.{body}`.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &str) -> String {
    let key = match secret.strip_prefix("whsec_") {
        Some(encoded) => base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap_or_else(|_| secret.as_bytes().to_vec()),
        None => secret.as_bytes().to_vec(),
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes any key length");
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

/// ±20%, so receivers that failed together are not retried in one burst.
fn jitter(delay: Duration) -> Duration {
    let f = 0.8 + 0.4 * rand::random::<f64>();
    delay.mul_f64(f)
}

#[cfg(test)]
mod tests {
    /// The Standard Webhooks specification's own vector.
    #[test]
    fn signs_like_standard_webhooks() {
        assert_eq!(
            super::sign(
                "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
                "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
                1649367553,
                r#"{"email":"test@example.com","username":"test_user"}"#
            ),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
    }
}
