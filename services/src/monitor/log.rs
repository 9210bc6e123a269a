//! The prediction log: a sample of the price predictions answered (`--monitor-log-sample`), each with what
//! it was asked (organization, material, supplier, day, quantity), what it answered (the price and its
//! interval), the model version and a digest of the feature row, written to the store off the request
//! path, to be checked against the prices that follow ([`super::accuracy`]).
//!
//! A full channel drops the row and counts it (`mercator_prediction_log_dropped_total`): a prediction is
//! never slowed to be logged.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use mercator_store::{LoggedPrediction, Store};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::clock::Clock;
use crate::predict::{PricePrediction, PriceRequest};

pub const DROPPED: &str = "mercator_prediction_log_dropped_total";

/// Rows written to the store in one statement batch at most.
const WRITE_ROWS: usize = 1000;

/// The sending side, held by the predictions service.
#[derive(Clone)]
pub struct PredictionLog {
    tx: mpsc::Sender<LoggedPrediction>,
    sample: f64,
    clock: Arc<Clock>,
    counts: Arc<Counts>,
}

/// Rows sent to the log and rows it has written (or given up on), so that a report can wait for the rows
/// of predictions answered before it.
#[derive(Default)]
pub struct Counts {
    pub sent: AtomicU64,
    pub done: AtomicU64,
}

impl PredictionLog {
    /// A log keeping the share `sample` of predictions, at most `capacity` rows waiting to be written.
    pub fn channel(sample: f64, capacity: usize, clock: Arc<Clock>) -> (PredictionLog, Writer) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let counts = Arc::new(Counts::default());
        let writer = Writer {
            rx,
            counts: counts.clone(),
        };
        (
            PredictionLog {
                tx,
                sample,
                clock,
                counts,
            },
            writer,
        )
    }

    /// Rows sent and rows written so far.
    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// Whether this prediction is kept.
    pub fn sampled(&self) -> bool {
        self.sample >= 1.0 || (self.sample > 0.0 && rand::random::<f64>() < self.sample)
    }

    /// Keeps one answered prediction; `digest` is [`digest`] of the row the model saw.
    pub fn record(
        &self,
        org: &str,
        request: &PriceRequest,
        answer: &PricePrediction,
        digest: String,
    ) {
        let row = LoggedPrediction {
            id: format!(
                "{:016x}{:016x}",
                rand::random::<u64>(),
                rand::random::<u64>()
            ),
            organization_id: org.to_string(),
            model: answer.model.name.clone(),
            version: answer.model.version as i64,
            material_id: request.material_id.clone(),
            supplier_id: request.supplier_id.clone(),
            as_of_day: i64::from(mercator_features::day_of(answer.as_of)),
            quantity: request.quantity,
            predicted: answer.predicted_price,
            lower_bound: answer.prediction_interval.lower,
            upper_bound: answer.prediction_interval.upper,
            level: answer.prediction_interval.level,
            inputs_digest: digest,
            created_at: self.clock.now().timestamp_millis(),
        };
        match self.tx.try_send(row) {
            Ok(()) => {
                self.counts.sent.fetch_add(1, Ordering::AcqRel);
            }
            Err(_) => metrics::counter!(DROPPED).increment(1),
        }
    }
}

/// The SHA-256 of a feature row as the model saw it (single precision, little-endian), first 16 bytes in
/// hex: equal rows, equal digests.
pub fn digest(row: &[f64]) -> String {
    let mut hash = Sha256::new();
    for v in row {
        hash.update((*v as f32).to_le_bytes());
    }
    hash.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The receiving side: what writes the log to the store.
pub struct Writer {
    rx: mpsc::Receiver<LoggedPrediction>,
    counts: Arc<Counts>,
}

impl Writer {
    /// Writes what the log receives to the store every [`WRITE_EVERY`], in batches of at most
    /// [`WRITE_ROWS`], until every sender is gone. Never woken per row: a write per prediction cost REST
    /// predictions a quarter of their throughput (benches/RESULTS.md).
    pub async fn run(mut self, store: Store) {
        let mut batch = Vec::with_capacity(WRITE_ROWS);
        let mut tick = tokio::time::interval(WRITE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            loop {
                let open = loop {
                    match self.rx.try_recv() {
                        Ok(row) => {
                            batch.push(row);
                            if batch.len() == WRITE_ROWS {
                                break true;
                            }
                        }
                        Err(mpsc::error::TryRecvError::Empty) => break true,
                        Err(mpsc::error::TryRecvError::Disconnected) => break false,
                    }
                };
                if !batch.is_empty() {
                    self.write(&store, &batch).await;
                    batch.clear();
                }
                if !open {
                    return;
                }
                if self.rx.is_empty() {
                    break;
                }
            }
        }
    }

    async fn write(&self, store: &Store, batch: &[LoggedPrediction]) {
        if let Err(e) = store.insert_prediction_logs(batch).await {
            tracing::warn!(rows = batch.len(), error = %e, "logged predictions not written");
            metrics::counter!(DROPPED).increment(batch.len() as u64);
        }
        self.counts
            .done
            .fetch_add(batch.len() as u64, Ordering::AcqRel);
    }
}

/// How often the writer takes what was logged.
const WRITE_EVERY: std::time::Duration = std::time::Duration::from_millis(250);
