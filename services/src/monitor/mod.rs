//! Model monitoring: what each monitored model version sees and answers, counted against the reference
//! profile it was shipped with, and judged for drift per column.
//!
//! - A version is monitored when its folder holds a reference profile (`profile.json`, made by
//!   `mercator features profile`, see [`reference`]). The engine copies each batch it computes to a bounded
//!   channel ([`mercator_engine::Tap`]); a full channel drops the batch from monitoring, never from the
//!   answer.
//! - One thread (`monitor`) takes those batches every 10 ms (never woken per batch) and counts them into
//!   the current bucket of time (`bucket`, five minutes by default) of their version, on the reference's
//!   bins ([`mercator_features::profile::Live`]).
//! - Every `flush` period each replica writes its counts of the buckets it touched to the store
//!   (`monitor_counts`, one row per version, bucket and replica). A window (the last hour, the last day) is
//!   the merge of every replica's rows of its buckets: counts add exactly, so the fleet's window equals the
//!   window of the combined stream, and a restart loses at most one flush period.
//! - [`Monitor::report`] merges a window and scores every column ([`mercator_features::drift`]); the
//!   flush loop does it for the first window too and sets the Prometheus gauges.
//! - Price predictions are sampled into a log ([`log`]) and checked against the prices that follow
//!   ([`accuracy`]); an anomaly model's share of rows over each threshold is counted with its columns.

pub mod accuracy;
mod count;
pub mod log;
pub mod reference;
mod report;
mod rules;

pub use report::{
    Compared, Comparison, FlagRate, Report, FEATURE_DRIFT, PREDICTION_DRIFT, WINDOW_ROWS,
};

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mercator_engine::{EngineError, Repository, Tap};
use mercator_features::drift::Thresholds;
use mercator_store::{Store, StoreError};

use crate::alerts::Alerts;
use crate::clock::Clock;
use count::{Pending, Reference};

/// How monitoring counts and judges.
#[derive(Debug, Clone)]
pub struct MonitorConfig {
    /// Live counts are kept per bucket of this length.
    pub bucket: Duration,
    /// The windows a report can cover, by name ("1h", "1d"); the first is the default and the gauges'.
    pub windows: Vec<Window>,
    /// How often a replica writes its counts to the store (and refreshes the gauges).
    pub flush: Duration,
    pub thresholds: Thresholds,
    /// Buckets older than the longest window by this much are deleted.
    pub keep_extra: Duration,
    /// The share of price predictions logged for realized accuracy (0 to 1).
    pub log_sample: f64,
    /// Logged rows waiting to be written at most; beyond it rows are dropped and counted.
    pub log_channel: usize,
    /// Days after a prediction's day within which an observed price labels it.
    pub label_days: u32,
    /// How long logged predictions are kept.
    pub log_retention: Duration,
    /// Logged predictions one report checks at most (the latest of its window).
    pub accuracy_max_rows: usize,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig {
            bucket: Duration::from_secs(300),
            windows: vec![
                Window::parse("1h").expect("a window"),
                Window::parse("1d").expect("a window"),
            ],
            flush: Duration::from_secs(10),
            thresholds: Thresholds::default(),
            keep_extra: Duration::from_secs(86_400),
            log_sample: 0.05,
            log_channel: 65_536,
            label_days: 7,
            log_retention: Duration::from_secs(90 * 86_400),
            accuracy_max_rows: 200_000,
        }
    }
}

/// A named length of time, such as `15m`, `1h` or `7d`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub name: String,
    pub length: Duration,
}

impl Window {
    /// `<n>s`, `<n>m`, `<n>h` or `<n>d`, `n` a positive whole number.
    pub fn parse(text: &str) -> Result<Window, String> {
        let text = text.trim();
        // The unit is the last character; a multi-byte one is no unit, and must not split a character.
        let cut = text.char_indices().last().map_or(0, |(i, _)| i);
        let (n, unit) = text.split_at(cut);
        let seconds = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => {
                return Err(format!(
                    "`{text}`: give a window as <n>s, <n>m, <n>h or <n>d"
                ))
            }
        };
        match n.parse::<u64>() {
            Ok(n) if n > 0 && n <= 366 * 86_400 / seconds => Ok(Window {
                name: text.to_string(),
                length: Duration::from_secs(n * seconds),
            }),
            _ => Err(format!(
                "`{text}`: a window is a whole number from 1 of seconds, minutes, hours or days, up to a year"
            )),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("{model} version {version} has no reference profile, so it is not monitored")]
    NotMonitored { model: String, version: u64 },
    #[error("model monitoring is off on this server (--monitor false)")]
    Off,
    #[error("unknown window `{asked}`; this server keeps {known}")]
    UnknownWindow { asked: String, known: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl MonitorError {
    pub fn code(&self) -> &'static str {
        match self {
            MonitorError::Engine(e) => e.code(),
            MonitorError::NotMonitored { .. } | MonitorError::Off => "not_monitored",
            MonitorError::UnknownWindow { .. } => "bad_request",
            MonitorError::Store(e) => e.code(),
        }
    }
}

type Key = (Arc<str>, u64);

pub struct Monitor {
    store: Store,
    repository: Arc<Repository>,
    clock: Arc<Clock>,
    config: MonitorConfig,
    /// Where served versions live: `<served>/<model>/<version>/profile.json`.
    served: PathBuf,
    /// Reference profiles read so far; `None` for a version whose file does not parse.
    references: Mutex<HashMap<Key, Option<Arc<Reference>>>>,
    predictions: Arc<crate::predict::Predictions>,
    /// This replica's counts not yet final: by version and bucket start (Unix seconds).
    pending: Mutex<HashMap<(Key, i64), Pending>>,
    /// The engine's side of the channel, for how many batches it has sent.
    tap: Tap,
    /// Batches taken from the channel and counted (or skipped) so far.
    counted: AtomicU64,
    /// The prediction log, and its writer until it is started.
    log: log::PredictionLog,
    writer: Mutex<Option<log::Writer>>,
    /// Where model rules' breaches go, once set.
    alerts: std::sync::OnceLock<Arc<Alerts>>,
    /// The last period of each window this replica judged the model rules of.
    judged: Mutex<HashMap<String, i64>>,
}

/// How long a report waits for the batches answered before it was asked to be counted.
const SETTLE: Duration = Duration::from_secs(2);

impl Monitor {
    pub fn new(
        store: Store,
        repository: Arc<Repository>,
        clock: Arc<Clock>,
        served: PathBuf,
        config: MonitorConfig,
        tap: Tap,
        predictions: Arc<crate::predict::Predictions>,
    ) -> Monitor {
        let (log, writer) =
            log::PredictionLog::channel(config.log_sample, config.log_channel, clock.clone());
        Monitor {
            log,
            writer: Mutex::new(Some(writer)),
            alerts: std::sync::OnceLock::new(),
            judged: Mutex::default(),
            predictions,
            store,
            repository,
            clock,
            config,
            served,
            references: Mutex::default(),
            pending: Mutex::default(),
            tap,
            counted: AtomicU64::new(0),
        }
    }

    /// Waits (up to two seconds) until every batch sent before now is counted, and every prediction
    /// logged before now is written.
    async fn settle(&self) {
        let target = self.tap.sent();
        let logged = self.log.counts().sent.load(Ordering::Acquire);
        let deadline = tokio::time::Instant::now() + SETTLE;
        while (self.counted.load(Ordering::Acquire) < target
            || self.log.counts().done.load(Ordering::Acquire) < logged)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// The prediction log's sending side, for the predictions service.
    pub fn prediction_log(&self) -> log::PredictionLog {
        self.log.clone()
    }

    /// Writes the prediction log to the store until the server stops (once; later calls return at once).
    pub async fn write_log(self: Arc<Self>) {
        let writer = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(writer) = writer {
            writer.run(self.store.clone()).await;
        }
    }

    pub fn config(&self) -> &MonitorConfig {
        &self.config
    }

    /// Writes the counts, deletes what no window reaches any more, and sets the gauges of every monitored
    /// version from its first window, every `flush` period until the server stops.
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.config.flush);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut rounds: u64 = 0;
        loop {
            tick.tick().await;
            if let Err(e) = self.flush().await {
                tracing::warn!(error = %e, "monitor counts not written; they are kept for the next round");
                continue;
            }
            rounds += 1;
            if rounds % 60 == 1 {
                let longest = self.config.windows.iter().map(|w| w.length).max();
                let keep =
                    longest.unwrap_or_default() + self.config.keep_extra + self.config.bucket;
                let before = self.clock.now().timestamp() - keep.as_secs() as i64;
                if let Err(e) = self.store.prune_monitor_counts(before).await {
                    tracing::warn!(error = %e, "old monitor counts not deleted");
                }
                let before = self.clock.now().timestamp_millis()
                    - self.config.log_retention.as_millis() as i64;
                if let Err(e) = self.store.prune_prediction_logs(before).await {
                    tracing::warn!(error = %e, "old logged predictions not deleted");
                }
            }
            self.set_gauges().await;
            self.judge_rules().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse_from_a_number_and_a_unit_and_nothing_else() {
        assert_eq!(
            Window::parse("15m").unwrap().length,
            Duration::from_secs(900)
        );
        assert_eq!(
            Window::parse("1d").unwrap().length,
            Duration::from_secs(86_400)
        );
        for bad in [
            "", "h", "0h", "-1h", "1w", "1.5h", "9999d", "1 h", "1é", "é",
        ] {
            assert!(Window::parse(bad).is_err(), "{bad}");
        }
    }
}
