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
pub mod log;
pub mod reference;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use mercator_engine::{EngineError, Observed, Repository, Tap, Tensor, PROFILE_FILE};
use mercator_features::drift::{self, ColumnDrift, Thresholds, Verdict};
use mercator_features::profile::{Live, Profile, Role};
use mercator_store::{Store, StoreError};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::alerts::Alerts;
use crate::clock::Clock;
use mercator_store::{AlertRule, Breach, Condition};

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

/// A version's window judged against its reference.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Report {
    pub model: String,
    pub version: u64,
    /// The window's name, and the time it covers (whole buckets, the current one included).
    pub window: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Rows counted in the window, on every replica.
    pub rows: u64,
    /// Where the reference came from, and its rows.
    pub reference: String,
    pub reference_rows: u64,
    /// `drift` when any feature drifted, `insufficient_data` below the minimum rows, else `stable`.
    #[schema(value_type = String)]
    pub verdict: Verdict,
    /// The features whose verdict is drift.
    pub drifted: Vec<String>,
    #[schema(value_type = Vec<Object>)]
    pub features: Vec<ColumnDrift>,
    /// The same, on the model's outputs.
    #[schema(value_type = Vec<Object>)]
    pub predictions: Vec<ColumnDrift>,
    #[schema(value_type = Object)]
    pub thresholds: Thresholds,
    /// A price model's logged predictions of the window against the prices that followed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<accuracy::Accuracy>,
    /// An anomaly model's share of rows at or above each threshold, against its calibration.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anomaly_rates: Option<Vec<FlagRate>>,
}

/// The share of a window's rows an anomaly threshold flagged.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FlagRate {
    pub level: &'static str,
    pub threshold: f64,
    pub flagged: u64,
    pub share: f64,
    /// The share of clean calibration prices it flagged, when the manifest says.
    pub calibrated: Option<f64>,
}

/// What a monitored version is compared with.
struct Reference {
    profile: Profile,
    /// An anomaly model's thresholds (low, medium, high) and the shares they flagged in calibration.
    anomaly: Option<([f64; 3], Option<[f64; 3]>)>,
    /// Whether its predictions are logged (a price model).
    logs: bool,
}

/// The versions answering a model's requests, side by side over one window.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Comparison {
    pub model: String,
    pub window: String,
    pub versions: Vec<Compared>,
    /// Versions answering requests that have no reference profile.
    pub not_monitored: Vec<u64>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Compared {
    /// Why it is here: `active`, `split` (a share of the traffic) or `shadow`.
    pub role: &'static str,
    #[serde(flatten)]
    pub report: Report,
}

type Key = (Arc<str>, u64);

/// One version's counts of one bucket on this replica, and whether the store has them all.
struct Pending {
    live: Live,
    written: bool,
}

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

/// How often the monitor thread takes what the tap sent.
const DRAIN_EVERY: Duration = Duration::from_millis(10);

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

    /// Counts what the tap sends, on a thread of its own, until every sender is gone.
    pub fn count(self: &Arc<Self>, mut rx: mpsc::Receiver<Observed>) -> std::io::Result<()> {
        let monitor = self.clone();
        std::thread::Builder::new()
            .name("monitor".into())
            .spawn(move || loop {
                // Drained on a period, never woken per batch: a wake-up costs a model worker more than
                // the copy it sends.
                std::thread::sleep(DRAIN_EVERY);
                loop {
                    let batch = match rx.try_recv() {
                        Ok(batch) => batch,
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => return,
                    };
                    let counted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        monitor.observe(&batch)
                    }));
                    if let Err(payload) = counted {
                        let message = mercator_engine::metrics::panic_message(payload.as_ref());
                        mercator_engine::metrics::count_panic("monitor", &message);
                    }
                    monitor.counted.fetch_add(1, Ordering::AcqRel);
                }
            })
            .map(|_| ())
    }

    /// Counts one batch into its version's current bucket.
    pub fn observe(&self, batch: &Observed) {
        let key: Key = (batch.model.clone(), batch.version);
        let Some(reference) = self.reference(&key) else {
            return;
        };
        let columns: Vec<Option<(Vec<f64>, usize)>> = reference
            .profile
            .columns
            .iter()
            .map(|c| {
                let tensors = match c.at.role {
                    Role::Input => &batch.inputs,
                    Role::Output => &batch.outputs,
                };
                tensors
                    .iter()
                    .find(|t| t.name == c.at.tensor)
                    .filter(|t| c.at.index < t.row_len() && t.rows() == batch.rows)
                    .map(|t: &Tensor| (t.data.to_f64(), t.row_len()))
            })
            .collect();
        let bucket = self.bucket_of(self.clock.now());
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let profile = &reference.profile;
        let entry = pending.entry((key, bucket)).or_insert_with(|| Pending {
            live: profile.empty(),
            written: false,
        });
        entry
            .live
            .observe_rows(profile, batch.rows, |c, r| match &columns[c] {
                Some((values, width)) => values[r * width + profile.columns[c].at.index],
                None => f64::NAN,
            });
        // An anomaly model's score is its first output.
        if let (Some((thresholds, _)), Some(score)) = (&reference.anomaly, batch.outputs.first()) {
            let (scores, width) = (score.data.to_f64(), score.row_len().max(1));
            entry.live.flagged.resize(3, 0);
            for r in 0..batch.rows.min(scores.len() / width) {
                let s = scores[r * width];
                for (flagged, t) in entry.live.flagged.iter_mut().zip(thresholds) {
                    *flagged += u64::from(s >= *t);
                }
            }
        }
        entry.written = false;
    }

    /// The reference profile of a version, read from its folder the first time it is asked for.
    fn reference(&self, key: &Key) -> Option<Arc<Reference>> {
        let mut known = self.references.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(profile) = known.get(key) {
            return profile.clone();
        }
        let path = self
            .served
            .join(&*key.0)
            .join(key.1.to_string())
            .join(PROFILE_FILE);
        let manifest = self
            .repository
            .get(&key.0, Some(&key.1.to_string()))
            .ok()
            .map(|m| m.manifest().clone());
        let profile = match std::fs::read(&path).map(|b| Profile::parse(&b)) {
            Ok(Ok(profile)) => Some(Arc::new(Reference {
                profile,
                anomaly: manifest.as_ref().and_then(|m| {
                    let a = m.anomaly.as_ref()?;
                    Some(([a.low, a.medium, a.high], a.calibrated_rates))
                }),
                logs: manifest.is_some_and(|m| m.kind == mercator_engine::ModelKind::Price),
            })),
            Ok(Err(e)) => {
                tracing::warn!(path = %path.display(), error = %e, "a reference profile that cannot be read: the version is not monitored");
                None
            }
            // Not served yet (an upload's golden check runs while it is staged): asked again next time.
            Err(_) => return None,
        };
        known.insert(key.clone(), profile.clone());
        profile
    }

    fn bucket_secs(&self) -> i64 {
        self.config.bucket.as_secs().max(1) as i64
    }

    fn bucket_of(&self, at: DateTime<Utc>) -> i64 {
        at.timestamp().div_euclid(self.bucket_secs()) * self.bucket_secs()
    }

    /// Writes this replica's counts that the store does not have yet; forgets buckets that are over.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let current = self.bucket_of(self.clock.now());
        let unwritten: Vec<((Key, i64), String, u64)> = {
            let pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            pending
                .iter()
                .filter(|(_, p)| !p.written)
                .filter_map(|(k, p)| {
                    let json = serde_json::to_string(&p.live).ok()?;
                    Some((k.clone(), json, p.live.rows))
                })
                .collect()
        };
        for (((model, version), bucket), json, rows) in &unwritten {
            self.store
                .put_monitor_counts(model, *version, *bucket, *rows, json)
                .await?;
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(p) = pending.get_mut(&((model.clone(), *version), *bucket)) {
                // Counted again since the copy was taken: written next time.
                if p.live.rows == *rows {
                    p.written = true;
                }
            }
        }
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(_, bucket), p| !p.written || *bucket >= current);
        Ok(())
    }

    /// The window a report covers, by name; none names the first.
    pub fn window(&self, name: Option<&str>) -> Result<&Window, MonitorError> {
        match name {
            None => Ok(&self.config.windows[0]),
            Some(asked) => self
                .config
                .windows
                .iter()
                .find(|w| w.name == asked)
                .ok_or_else(|| MonitorError::UnknownWindow {
                    asked: asked.to_string(),
                    known: self
                        .config
                        .windows
                        .iter()
                        .map(|w| w.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                }),
        }
    }

    /// A version's window, merged across replicas, judged column by column.
    pub async fn report(
        &self,
        model: &str,
        version: u64,
        window: Option<&str>,
    ) -> Result<Report, MonitorError> {
        let window = self.window(window)?.clone();
        self.repository.get(model, Some(&version.to_string()))?;
        self.settle().await;
        self.flush().await?;
        let now = self.clock.now();
        let to = self.bucket_of(now) + self.bucket_secs();
        let from = to - (window.length.as_secs() as i64).max(self.bucket_secs());
        self.report_range(model, version, &window.name, (from, to))
            .await
    }

    /// A version's report over the buckets that start in `[from, to)` (Unix seconds), as the store has
    /// them.
    async fn report_range(
        &self,
        model: &str,
        version: u64,
        window: &str,
        (from, to): (i64, i64),
    ) -> Result<Report, MonitorError> {
        let served = self.repository.get(model, Some(&version.to_string()))?;
        let key: Key = (Arc::from(served.manifest().name.as_str()), version);
        let reference = self
            .reference(&key)
            .ok_or_else(|| MonitorError::NotMonitored {
                model: model.to_string(),
                version,
            })?;
        let mut live = reference.profile.empty();
        for row in self.store.monitor_counts(model, version, from, to).await? {
            match serde_json::from_str::<Live>(&row.counts) {
                Ok(counts) => {
                    if let Err(e) = live.merge(&counts) {
                        tracing::warn!(model, version, bucket = row.bucket, replica = %row.replica, error = %e, "monitor counts of another reference skipped");
                    }
                }
                Err(e) => {
                    tracing::warn!(model, version, bucket = row.bucket, error = %e, "unreadable monitor counts skipped")
                }
            }
        }
        let mut report = judge(
            &reference.profile,
            &live,
            &self.config.thresholds,
            model,
            version,
            window,
            (from, to),
        );
        report.anomaly_rates = reference.anomaly.map(|(thresholds, calibrated)| {
            ["low", "medium", "high"]
                .into_iter()
                .enumerate()
                .map(|(i, level)| {
                    let flagged = live.flagged.get(i).copied().unwrap_or(0);
                    FlagRate {
                        level,
                        threshold: thresholds[i],
                        flagged,
                        share: if live.rows > 0 {
                            flagged as f64 / live.rows as f64
                        } else {
                            0.0
                        },
                        calibrated: calibrated.map(|c| c[i]),
                    }
                })
                .collect()
        });
        if reference.logs {
            report.accuracy = Some(self.accuracy(model, version, (from, to)).await?);
        }
        Ok(report)
    }

    /// The realized accuracy of the version's predictions logged in `[from, to)` (Unix seconds).
    async fn accuracy(
        &self,
        model: &str,
        version: u64,
        (from, to): (i64, i64),
    ) -> Result<accuracy::Accuracy, MonitorError> {
        let cap = self.config.accuracy_max_rows.max(1);
        let logged = self
            .store
            .prediction_logs(model, version, from * 1000, to * 1000, cap as i64 + 1)
            .await?;
        let truncated = logged.len() > cap;
        let logged = &logged[..logged.len().min(cap)];
        let today = mercator_features::day_of(self.clock.now().date_naive());
        Ok(accuracy::realized(
            logged,
            truncated,
            &self.predictions.history,
            self.config.label_days,
            today,
        ))
    }

    /// The versions that answer the model's requests (the active one, any with a share of the traffic,
    /// the shadow), each judged over the window.
    pub async fn compare(
        &self,
        model: &str,
        window: Option<&str>,
    ) -> Result<Comparison, MonitorError> {
        let window_name = self.window(window)?.name.clone();
        let mut versions: Vec<(u64, &'static str)> = Vec::new();
        if let Some(active) = self.repository.active(model) {
            versions.push((active, "active"));
        }
        if let Some(traffic) = self.repository.traffic(model) {
            for &(version, _) in &traffic.split {
                if !versions.iter().any(|(v, _)| *v == version) {
                    versions.push((version, "split"));
                }
            }
        }
        if let Some(shadow) = self.repository.shadow(model) {
            let version = shadow.manifest().version;
            if !versions.iter().any(|(v, _)| *v == version) {
                versions.push((version, "shadow"));
            }
        }
        if versions.is_empty() {
            return Err(EngineError::ModelNotFound(model.to_string()).into());
        }
        let mut compared = Vec::new();
        let mut not_monitored = Vec::new();
        for (version, role) in versions {
            match self.report(model, version, Some(&window_name)).await {
                Ok(report) => compared.push(Compared { role, report }),
                Err(MonitorError::NotMonitored { .. }) => not_monitored.push(version),
                Err(e) => return Err(e),
            }
        }
        Ok(Comparison {
            model: model.to_string(),
            window: window_name,
            versions: compared,
            not_monitored,
        })
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

    /// Judges model monitoring rules through `alerts` from now on.
    pub fn alert_through(&self, alerts: Arc<Alerts>) {
        let _ = self.alerts.set(alerts);
    }

    /// Once per window that ends (on one replica: the first to claim it), the model rules over it.
    async fn judge_rules(&self) {
        let Some(alerts) = self.alerts.get() else {
            return;
        };
        let rules = alerts.model_rules();
        if rules.is_empty() {
            return;
        }
        let now = self.clock.now().timestamp();
        for window in &self.config.windows {
            let length = window.length.as_secs().max(1) as i64;
            let slot = now.div_euclid(length);
            {
                let mut judged = self.judged.lock().unwrap_or_else(|e| e.into_inner());
                if judged.get(&window.name) == Some(&slot) {
                    continue;
                }
                judged.insert(window.name.clone(), slot);
            }
            match self
                .store
                .claim_run(&format!("monitor_rules:{}", window.name), slot)
                .await
            {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, window = %window.name, "model rules not judged");
                    continue;
                }
            }
            for (org, rule) in &rules {
                let named = match &rule.condition {
                    Condition::FeatureDrift { window, .. } | Condition::Accuracy { window, .. } => {
                        window.as_deref()
                    }
                    _ => continue,
                };
                if named.unwrap_or(&self.config.windows[0].name) != window.name {
                    continue;
                }
                if let Some(breach) = self.judge_rule(rule, window, slot * length).await {
                    alerts.raise(org, rule, &breach).await;
                }
            }
        }
    }

    /// The breach of a model rule by the windows that end at `end`: it held in each of the last `windows`
    /// and not in the one before them (so a drift that lasts fires once, and again only after it cleared).
    async fn judge_rule(&self, rule: &AlertRule, window: &Window, end: i64) -> Option<Breach> {
        let model = rule.condition.watches_model()?;
        let version = self.repository.active(model)?;
        let n = match &rule.condition {
            Condition::FeatureDrift { windows, .. } | Condition::Accuracy { windows, .. } => {
                *windows as usize
            }
            _ => return None,
        };
        let length = window.length.as_secs().max(1) as i64;
        let mut held = Vec::with_capacity(n + 1);
        for k in 0..=n as i64 {
            let range = (end - (k + 1) * length, end - k * length);
            let report = match self.report_range(model, version, &window.name, range).await {
                Ok(report) => report,
                Err(e) => {
                    tracing::warn!(rule = %rule.id, error = %e, "a model rule cannot be judged");
                    return None;
                }
            };
            held.push(self.breach_of(&rule.condition, &report));
        }
        if held[n].is_some() || held[..n].iter().any(Option::is_none) {
            return None;
        }
        let (value, threshold, what) = held.swap_remove(0)?;
        let from = DateTime::from_timestamp(end - length, 0).unwrap_or_default();
        let to = DateTime::from_timestamp(end, 0).unwrap_or_default();
        Some(Breach {
            rule_id: rule.id.clone(),
            material_id: None,
            supplier_id: None,
            price_id: None,
            value,
            threshold,
            message: format!(
                "{model} v{version}: {what}, in each of the last {n} window(s) of {} (the last {from} to {to})",
                window.name
            ),
            severity: rule.severity,
            count: 1,
        })
    }

    /// Whether a report breaks a model rule's condition: (value, threshold, what broke).
    fn breach_of(&self, condition: &Condition, report: &Report) -> Option<(f64, f64, String)> {
        match condition {
            Condition::FeatureDrift { features, .. } => {
                let drifted: Vec<&ColumnDrift> = report
                    .features
                    .iter()
                    .filter(|c| c.verdict == Verdict::Drift)
                    .filter(|c| features.as_ref().is_none_or(|f| f.contains(&c.name)))
                    .collect();
                let first = drifted.first()?;
                let what = drifted
                    .iter()
                    .map(|c| {
                        format!(
                            "{} drifted ({} {:.3} > {:.3}, {} rows)",
                            c.name,
                            c.metric,
                            c.value.unwrap_or_default(),
                            c.threshold,
                            c.rows
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                Some((first.value.unwrap_or_default(), first.threshold, what))
            }
            Condition::Accuracy {
                max_mape,
                min_coverage,
                ..
            } => {
                let a = report.accuracy.as_ref()?;
                if a.labelled < self.config.thresholds.min_rows {
                    return None;
                }
                if let (Some(max), Some(mape)) = (max_mape, a.mape) {
                    if mape > *max {
                        return Some((
                            mape,
                            *max,
                            format!(
                                "realized MAPE {:.2}% above {:.2}% ({} labelled)",
                                mape * 100.0,
                                max * 100.0,
                                a.labelled
                            ),
                        ));
                    }
                }
                let min = (*min_coverage)?;
                let low = a.coverage.iter().find(|c| c.coverage < min)?;
                Some((
                    low.coverage,
                    min,
                    format!(
                        "the {:.0}% interval covered {:.1}% of {} prices, below {:.1}%",
                        low.level * 100.0,
                        low.coverage * 100.0,
                        low.labelled,
                        min * 100.0
                    ),
                ))
            }
            _ => None,
        }
    }

    async fn set_gauges(&self) {
        let monitored: Vec<Key> = self
            .repository
            .all()
            .into_iter()
            .filter(|m| m.is_monitored())
            .map(|m| (Arc::from(m.manifest().name.as_str()), m.manifest().version))
            .collect();
        for (model, version) in monitored {
            match self.report(&model, version, None).await {
                Ok(report) => gauges(&report),
                Err(e) => tracing::debug!(%model, version, error = %e, "no monitoring gauges"),
            }
        }
    }
}

/// The report of `live` against `reference`.
fn judge(
    reference: &Profile,
    live: &Live,
    thresholds: &Thresholds,
    model: &str,
    version: u64,
    window: &str,
    (from, to): (i64, i64),
) -> Report {
    let scored: Vec<ColumnDrift> = reference
        .columns
        .iter()
        .zip(&live.columns)
        .map(|(column, counts)| drift::column(column, counts, thresholds))
        .collect();
    let (features, predictions): (Vec<_>, Vec<_>) =
        scored.into_iter().partition(|c| c.role == Role::Input);
    let drifted: Vec<String> = features
        .iter()
        .filter(|c| c.verdict == Verdict::Drift)
        .map(|c| c.name.clone())
        .collect();
    let verdict = if !drifted.is_empty() {
        Verdict::Drift
    } else if live.rows < thresholds.min_rows {
        Verdict::InsufficientData
    } else {
        Verdict::Stable
    };
    let time = |s: i64| DateTime::from_timestamp(s, 0).unwrap_or_default();
    Report {
        model: model.to_string(),
        version,
        window: window.to_string(),
        from: time(from),
        to: time(to),
        rows: live.rows,
        reference: reference.source.clone(),
        reference_rows: reference.rows,
        verdict,
        drifted,
        features,
        predictions,
        thresholds: *thresholds,
        accuracy: None,
        anomaly_rates: None,
    }
}

/// `mercator_feature_drift` and `mercator_prediction_drift` (the verdict's metric) and
/// `mercator_monitor_window_rows`, per model and version.
fn gauges(report: &Report) {
    use metrics::gauge;
    let (model, version) = (report.model.clone(), report.version.to_string());
    gauge!(WINDOW_ROWS, "model" => model.clone(), "version" => version.clone())
        .set(report.rows as f64);
    for (name, columns) in [
        (FEATURE_DRIFT, &report.features),
        (PREDICTION_DRIFT, &report.predictions),
    ] {
        for c in columns {
            if let Some(v) = c.value {
                gauge!(name, "model" => model.clone(), "version" => version.clone(),
                    "column" => c.name.clone(), "metric" => c.metric)
                .set(v);
            }
        }
    }
}

pub const FEATURE_DRIFT: &str = "mercator_feature_drift";
pub const PREDICTION_DRIFT: &str = "mercator_prediction_drift";
pub const WINDOW_ROWS: &str = "mercator_monitor_window_rows";

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
