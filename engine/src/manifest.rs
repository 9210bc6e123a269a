//! `model.toml`: what a model version is, what it takes and gives, and how it is served.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{DataType, EngineError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    Price,
    Forecast,
    Anomaly,
    /// The chance an order line arrives late (`p_late`), from a supplier's order book.
    Risk,
    /// A material's demand per week ahead, from its order history.
    Demand,
    Generic,
}

/// One input or output tensor. `shape[0]` is the batch dimension and must be -1; the other dimensions are
/// fixed (a positive size) or free (-1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    pub name: String,
    pub datatype: DataType,
    pub shape: Vec<i64>,
}

impl TensorSpec {
    /// Elements per row when every dimension after the batch is fixed.
    pub fn fixed_row_len(&self) -> Option<usize> {
        self.shape[1..]
            .iter()
            .try_fold(1usize, |acc, &d| (d > 0).then(|| acc * d as usize))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Batching {
    /// Rows in one ONNX Runtime call at most. A request with more rows runs alone, in one call.
    pub max_batch_size: usize,
    /// How long a worker that found fewer than `max_batch_size` rows waits for more, in microseconds.
    /// 0 (the default): never wait, take what is queued.
    pub max_queue_delay_us: u64,
    /// Rows that may wait in the queue; past it, requests are refused at once (HTTP 429).
    pub queue_capacity: usize,
    /// A request of at most this many rows that finds the queue empty and an instance idle runs at once on
    /// the caller's thread instead of waking a worker (1 by default; 0: always go through the queue).
    pub inline_max_rows: usize,
}

impl Default for Batching {
    fn default() -> Self {
        Batching {
            max_batch_size: 64,
            max_queue_delay_us: 0,
            queue_capacity: 4096,
            inline_max_rows: 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Instances {
    /// Sessions of this model, each owned by its own worker thread.
    pub count: usize,
    /// ONNX Runtime intra-op threads per session. 1 keeps a session from spinning on the other cores;
    /// tabular models gain nothing from more at the batch sizes served here.
    pub intra_op_threads: usize,
}

impl Default for Instances {
    fn default() -> Self {
        Instances {
            count: 1,
            intra_op_threads: 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    pub version: u64,
    pub kind: ModelKind,
    #[serde(default)]
    pub description: String,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    #[serde(default)]
    pub batching: Batching,
    #[serde(default)]
    pub instances: Instances,
    /// The feature spec the model's input is computed by (a file beside model.toml), for models that
    /// answer business predictions rather than raw tensors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<FeaturesRef>,
    /// How prediction intervals are made from the model's output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Interval>,
    /// How an anomaly model's score becomes a flag and a severity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anomaly: Option<AnomalyThresholds>,
    /// How a risk model's probability becomes a band, and what its factors are measured against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub risk: Option<RiskSettings>,
    /// A demand model's intervals and forecast errors per week ahead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub demand: Option<DemandSettings>,
    /// Training metrics, kept for people: the engine does not read them.
    #[serde(default)]
    pub metrics: toml::Table,
}

/// `[features]`: the spec file and its SHA-256; a version whose file does not match is refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeaturesRef {
    pub spec: String,
    pub sha256: String,
}

/// `[interval]`: split-conformal calibration. At level `levels[i]`, the interval is
/// `prediction · exp(±quantiles[i] · scale)` with `scale = feature[scale_std] / feature[scale_mean] +
/// scale_floor`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interval {
    pub method: String,
    pub levels: Vec<f64>,
    pub quantiles: Vec<f64>,
    /// For a model with one output per step ahead (a forecast): the quantiles by level, then by output
    /// column, used instead of `quantiles`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_quantiles: Vec<Vec<f64>>,
    pub scale_std: String,
    pub scale_mean: String,
    pub scale_floor: f64,
    pub calibration_rows: u64,
}

/// `[anomaly]`: a score at or above `low` is an anomaly, of severity low, medium or high by the highest
/// threshold it reaches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnomalyThresholds {
    pub method: String,
    pub low: f64,
    pub medium: f64,
    pub high: f64,
    pub calibration_rows: u64,
    /// The share of clean calibration prices each threshold flags (low, medium, high): what monitoring
    /// compares the share flagged in service with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibrated_rates: Option<[f64; 3]>,
}

/// `[risk]`: a risk model's bands and typical row. A probability at or above `medium` is a medium risk, at
/// or above `high` a high one. `typical` is one value per input feature (the training rows' medians): a
/// factor is how much the probability moves when that feature takes its typical value instead.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RiskSettings {
    pub method: String,
    pub medium: f64,
    pub high: f64,
    pub typical: Vec<f64>,
}

/// `[demand]`: split-conformal calibration of a demand model whose output is units per day for each week
/// ahead. Residuals (actual − forecast) are divided by the row's scale (its last feature, units per day);
/// at level `levels[i]` and week `k`, the interval of the week's units per day is `forecast + scale ·
/// [week_lower[i][k], week_upper[i][k]]`, clipped at 0.
/// `week_error_std[k]` is the residuals' standard deviation for week `k`: what an inventory policy takes as
/// the forecast's error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemandSettings {
    pub method: String,
    pub levels: Vec<f64>,
    pub week_lower: Vec<Vec<f64>>,
    pub week_upper: Vec<Vec<f64>>,
    pub week_error_std: Vec<f64>,
    pub calibration_rows: u64,
}

impl DemandSettings {
    fn check(&self, weeks: Option<usize>) -> Result<(), String> {
        let weeks = weeks.ok_or("a demand model's output has a fixed width (its weeks)")?;
        if self.levels.is_empty() || self.levels.iter().any(|l| !(*l > 0.0 && *l < 1.0)) {
            return Err("demand.levels are between 0 and 1".into());
        }
        for (name, table) in [
            ("week_lower", &self.week_lower),
            ("week_upper", &self.week_upper),
        ] {
            if table.len() != self.levels.len()
                || table
                    .iter()
                    .any(|row| row.len() != weeks || row.iter().any(|x| !x.is_finite()))
            {
                return Err(format!(
                    "demand.{name} has one list per level of one finite value per week ({weeks})"
                ));
            }
        }
        if self.week_error_std.len() != weeks
            || self
                .week_error_std
                .iter()
                .any(|x| !(x.is_finite() && *x >= 0.0))
        {
            return Err(format!(
                "demand.week_error_std has one value per week ({weeks}), each at least 0"
            ));
        }
        Ok(())
    }
}

/// A file name that stays in its folder: 1 to 128 of letters, digits, `.`, `-`, `_`, not starting with `.`.
fn is_plain_file_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

impl Manifest {
    /// A manifest from TOML text (`origin` names it in errors).
    pub fn parse(text: &str, origin: &Path) -> Result<Manifest, EngineError> {
        let invalid = |reason: String| EngineError::InvalidModel {
            path: origin.to_path_buf(),
            reason,
        };
        let manifest: Manifest = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        manifest.check().map_err(invalid)?;
        Ok(manifest)
    }

    pub fn from_file(path: &Path) -> Result<Manifest, EngineError> {
        let invalid = |reason: String| EngineError::InvalidModel {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| invalid(e.to_string()))?;
        let manifest: Manifest = toml::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        manifest.check().map_err(invalid)?;
        Ok(manifest)
    }

    /// The rules a manifest must keep whatever its graph says.
    pub fn check(&self) -> Result<(), String> {
        if self.inputs.is_empty() || self.outputs.is_empty() {
            return Err("a model needs at least one input and one output".into());
        }
        for spec in self.inputs.iter().chain(&self.outputs) {
            if spec.shape.first() != Some(&-1) {
                return Err(format!(
                    "tensor `{}`: the first dimension is the batch and must be -1",
                    spec.name
                ));
            }
            if spec.shape[1..].iter().any(|&d| d == 0 || d < -1) {
                return Err(format!(
                    "tensor `{}`: dimensions are positive or -1",
                    spec.name
                ));
            }
        }
        if self.batching.max_batch_size == 0 || self.batching.queue_capacity == 0 {
            return Err(
                "batching.max_batch_size and batching.queue_capacity must be at least 1".into(),
            );
        }
        if let Some(i) = &self.interval {
            if i.levels.len() != i.quantiles.len() || i.levels.is_empty() {
                return Err("interval.levels and interval.quantiles must pair up".into());
            }
            if !i.output_quantiles.is_empty() && i.output_quantiles.len() != i.levels.len() {
                return Err("interval.output_quantiles has one list per level".into());
            }
        }
        if let Some(a) = &self.anomaly {
            if !(a.low <= a.medium && a.medium <= a.high) {
                return Err("anomaly thresholds must keep low <= medium <= high".into());
            }
        }
        if let Some(r) = &self.risk {
            let width = self.inputs.first().and_then(TensorSpec::fixed_row_len);
            if !(0.0 < r.medium && r.medium <= r.high && r.high < 1.0) {
                return Err("risk bands must keep 0 < medium <= high < 1".into());
            }
            if width != Some(r.typical.len()) || r.typical.iter().any(|x| !x.is_finite()) {
                return Err("risk.typical has one finite value per input feature".into());
            }
        }
        if let Some(d) = &self.demand {
            d.check(self.outputs.first().and_then(TensorSpec::fixed_row_len))?;
        }
        if self.instances.count == 0 || self.instances.intra_op_threads == 0 {
            return Err("instances.count and instances.intra_op_threads must be at least 1".into());
        }
        if let Some(f) = &self.features {
            if !is_plain_file_name(&f.spec)
                || matches!(f.spec.as_str(), "model.onnx" | "model.toml")
            {
                return Err(
                    "features.spec is the name of a file beside model.toml (letters, digits, `.`, \
                     `-`, `_`; no path), other than model.onnx and model.toml"
                        .into(),
                );
            }
        }
        Ok(())
    }
}
