//! Reports: a window of the store's counts merged across replicas and judged against the reference.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use mercator_engine::EngineError;
use mercator_features::drift::{self, ColumnDrift, Thresholds, Verdict};
use mercator_features::profile::{Live, Profile, Role};
use serde::Serialize;

use super::{accuracy, Key, Monitor, MonitorError, Window};

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

impl Monitor {
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

    /// A version's window, merged across replicas, judged column by column, with its realized accuracy.
    pub async fn report(
        &self,
        model: &str,
        version: u64,
        window: Option<&str>,
    ) -> Result<Report, MonitorError> {
        self.report_with(model, version, window, true).await
    }

    /// The same, with realized accuracy only when `with_accuracy` (the gauges need drift alone, and
    /// accuracy reads every logged prediction of the window).
    async fn report_with(
        &self,
        model: &str,
        version: u64,
        window: Option<&str>,
        with_accuracy: bool,
    ) -> Result<Report, MonitorError> {
        let window = self.window(window)?.clone();
        self.repository.get(model, Some(&version.to_string()))?;
        self.settle().await;
        self.flush().await?;
        let now = self.clock.now();
        let to = self.bucket_of(now) + self.bucket_secs();
        let from = to - (window.length.as_secs() as i64).max(self.bucket_secs());
        self.report_range(model, version, &window.name, (from, to), with_accuracy)
            .await
    }

    /// A version's report over the buckets that start in `[from, to)` (Unix seconds), as the store has
    /// them.
    pub(super) async fn report_range(
        &self,
        model: &str,
        version: u64,
        window: &str,
        (from, to): (i64, i64),
        with_accuracy: bool,
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
        if reference.logs && with_accuracy {
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
    pub(super) async fn set_gauges(&self) {
        let monitored: Vec<Key> = self
            .repository
            .all()
            .into_iter()
            .filter(|m| m.is_monitored())
            .map(|m| (Arc::from(m.manifest().name.as_str()), m.manifest().version))
            .collect();
        for (model, version) in monitored {
            match self.report_with(&model, version, None, false).await {
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
