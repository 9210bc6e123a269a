//! Prometheus metric names of the engine, in one place. Handles are made once per model version, so the
//! request path does no label lookups.

use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};

pub const REQUESTS: &str = "mercator_inference_requests_total";
pub const QUEUE_DURATION: &str = "mercator_inference_queue_duration_seconds";
pub const COMPUTE_DURATION: &str = "mercator_inference_compute_duration_seconds";
pub const BATCH_SIZE: &str = "mercator_inference_batch_size";
pub const QUEUE_DEPTH: &str = "mercator_inference_queue_depth_rows";
/// ONNX Runtime sessions alive, by model version: up when a version loads, down when a retired version's
/// sessions are freed.
pub const SESSIONS: &str = "mercator_model_sessions";

/// Panics caught and survived, by where they happened (`where`: `model_worker`, `handler`, `batch_prep`,
/// `webhook_dispatcher`, `forecast_schedule`, ...). Any increase is a bug to report.
pub const PANICS: &str = "mercator_panics_total";
/// Rows a monitored version computed that monitoring dropped because its channel was full.
pub const MONITOR_DROPPED: &str = "mercator_monitor_dropped_rows_total";

/// Counts rows monitoring could not take (the answer went out all the same).
pub fn count_monitor_dropped(model: &str, version: u64, rows: usize) {
    counter!(MONITOR_DROPPED, "model" => model.to_string(), "version" => version.to_string())
        .increment(rows as u64);
}

/// Counts a caught panic and logs it with its message.
pub fn count_panic(place: &'static str, message: &str) {
    tracing::error!(
        place,
        panic = message,
        "a panic was caught; the work it was doing failed"
    );
    counter!(PANICS, "where" => place).increment(1);
}

/// A panic payload's message (`panic!` with a string or a format).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Request outcomes, the `outcome` label of `REQUESTS`.
pub const OUTCOMES: [&str; 6] = [
    "success",
    "invalid",
    "overloaded",
    "dropped",
    "expired",
    "failed",
];

pub(crate) struct ModelMetrics {
    outcomes: [Counter; 6],
    pub queue: Histogram,
    pub compute: Histogram,
    pub batch_size: Histogram,
    pub depth: Gauge,
}

#[derive(Clone, Copy)]
pub(crate) enum Outcome {
    Success = 0,
    Invalid = 1,
    Overloaded = 2,
    Dropped = 3,
    Expired = 4,
    Failed = 5,
}

impl ModelMetrics {
    pub fn new(model: &str, version: u64) -> ModelMetrics {
        let labels = [
            ("model", model.to_string()),
            ("version", version.to_string()),
        ];
        ModelMetrics {
            outcomes: OUTCOMES.map(|o| {
                let mut l = labels.to_vec();
                l.push(("outcome", o.to_string()));
                counter!(REQUESTS, &l)
            }),
            queue: histogram!(QUEUE_DURATION, &labels),
            compute: histogram!(COMPUTE_DURATION, &labels),
            batch_size: histogram!(BATCH_SIZE, &labels),
            depth: gauge!(QUEUE_DEPTH, &labels),
        }
    }

    pub fn count(&self, outcome: Outcome, n: u64) {
        self.outcomes[outcome as usize].increment(n);
    }
}
