//! Business predictions: the organization's price history kept in memory ([`mercator_features::online`]),
//! feature rows assembled from it by the code that made the training frames, and the active models run on
//! them through the batching scheduler. One file per question:
//!
//! - [`price`]: what a purchase should cost (the `price` model, a split-conformal interval);
//! - [`forecast`]: a material's daily price ahead (the `forecast` model, an interval per day);
//! - [`anomaly`]: how unusual observed prices are (the `anomaly` model, severities, reasons), also run on
//!   every ingested price;
//! - [`trend`]: a least-squares line through the daily means (linfa, no model).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use mercator_engine::{EngineError, Model};
use mercator_features::online::{Observation, OnlineHistory};
use mercator_features::FeatureSpec;
use mercator_store::{PricePoint, Store};
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::ApiError;

/// The models that answer business predictions (each its active version, or the traffic split's pick).
pub const PRICE_MODEL: &str = "price";
pub const FORECAST_MODEL: &str = "forecast";
pub const ANOMALY_MODEL: &str = "anomaly";

mod anomaly;
mod forecast;
mod price;
mod trend;

pub use anomaly::{AnomalyAnswer, AnomalyRequest, Judgement};
pub use forecast::{ForecastAnswer, ForecastRequest};
pub use price::{Catalog, Named, PricePrediction, PriceRequest};
pub use trend::{TrendAnswer, TrendRequest};

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ModelRef {
    pub name: String,
    pub version: u64,
}

#[derive(Clone)]
struct MaterialInfo {
    category: String,
    list_price: Option<f64>,
}

#[derive(Clone)]
struct SupplierInfo {
    code: String,
    reliability: f64,
}

/// Rows' attributes by id, with the organization that owns each: read from the store on a miss, dropped
/// when the row changes.
struct Cache<T>(RwLock<HashMap<String, (String, T)>>);

impl<T> Default for Cache<T> {
    fn default() -> Self {
        Cache(RwLock::default())
    }
}

impl<T: Clone> Cache<T> {
    fn forget(&self, id: &str) {
        self.0.write().unwrap_or_else(|e| e.into_inner()).remove(id);
    }

    /// The attributes of `id` if `org` owns it: 404 `what` otherwise, as the store answers.
    async fn get<F: std::future::Future<Output = Result<T, ApiError>>>(
        &self,
        org: &str,
        id: &str,
        what: &'static str,
        load: impl FnOnce() -> F,
    ) -> Result<T, ApiError> {
        let cached = self
            .0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned();
        let (owner, info) = match cached {
            Some(entry) => entry,
            None => {
                let info = load().await?;
                self.0
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id.to_string(), (org.to_string(), info.clone()));
                (org.to_string(), info)
            }
        };
        if owner != org {
            return Err(ApiError::NotFound(what));
        }
        Ok(info)
    }
}

/// The price history, the material and supplier attributes features need (cached, dropped on change),
/// and the parsed feature specs of the model versions.
#[derive(Default)]
pub struct Predictor {
    pub history: OnlineHistory,
    materials: Cache<MaterialInfo>,
    suppliers: Cache<SupplierInfo>,
    /// The feature specs of model versions, with their column names, by model and version.
    specs: Mutex<HashMap<String, HashMap<u64, Arc<Prepared>>>>,
}

/// A parsed spec and its column names, made once per model version.
struct Prepared {
    spec: FeatureSpec,
    names: Vec<String>,
}

/// Prices read per page when the history is rebuilt from the store.
const REBUILD_PAGE: usize = 50_000;

impl Predictor {
    /// Rebuilds every organization's history from the store. Returns the prices read.
    pub async fn rebuild(&self, store: &Store) -> Result<usize, String> {
        let mut after = String::new();
        let mut total = 0;
        loop {
            let page: Vec<PricePoint> = store
                .price_points(&after, REBUILD_PAGE)
                .await
                .map_err(|e| format!("rebuilding the price history: {e}"))?;
            let Some(last) = page.last() else {
                return Ok(total);
            };
            after = last.id.clone();
            total += page.len();
            self.history.add(page.iter().map(observation));
        }
    }

    /// Forgets a material's cached attributes (it changed or is gone).
    pub fn forget_material(&self, id: &str) {
        self.materials.forget(id);
    }

    pub fn forget_supplier(&self, id: &str) {
        self.suppliers.forget(id);
    }

    /// The category of the organization's material `id` (cached).
    pub async fn category(&self, store: &Store, org: &str, id: &str) -> Result<String, ApiError> {
        Ok(self.material(store, org, id).await?.category)
    }

    async fn material(&self, store: &Store, org: &str, id: &str) -> Result<MaterialInfo, ApiError> {
        self.materials
            .get(org, id, "material", || async {
                let m = store
                    .material(org, id)
                    .await
                    .map_err(ApiError::store("material"))?;
                Ok(MaterialInfo {
                    category: m.category,
                    list_price: m.list_price,
                })
            })
            .await
    }

    async fn supplier(&self, store: &Store, org: &str, id: &str) -> Result<SupplierInfo, ApiError> {
        self.suppliers
            .get(org, id, "supplier", || async {
                let s = store
                    .supplier(org, id)
                    .await
                    .map_err(ApiError::store("supplier"))?;
                Ok(SupplierInfo {
                    code: s.code,
                    reliability: s.reliability,
                })
            })
            .await
    }

    /// The feature spec of a model version (parsed once).
    fn spec(&self, data_dir: &std::path::Path, model: &Model) -> Result<Arc<Prepared>, ApiError> {
        let m = model.manifest();
        if let Some(prepared) = self
            .specs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(m.name.as_str())
            .and_then(|versions| versions.get(&m.version))
        {
            return Ok(prepared.clone());
        }
        let Some(features) = &m.features else {
            return Err(ApiError::Conflict(format!(
                "version {} of {} takes raw feature tensors (no [features] spec); activate a version with one",
                m.version, m.name
            )));
        };
        let path = mercator_engine::import::served_dir(data_dir)
            .join(&m.name)
            .join(m.version.to_string())
            .join(&features.spec);
        let spec = FeatureSpec::from_file(&path)
            .map_err(|e| ApiError::Engine(EngineError::Runtime(e.to_string())))?;
        let prepared = Arc::new(Prepared {
            names: spec.names(),
            spec,
        });
        self.specs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(m.name.clone())
            .or_default()
            .insert(m.version, prepared.clone());
        Ok(prepared)
    }
}

/// The interval's half widths in log space at `level`, one per model output: the interval is
/// `prediction · exp(±half)`, `half = q · scale`, q the calibrated quantile (of the output, for a model with
/// one per step ahead), scale the row's volatility.
fn half_widths(
    manifest: &mercator_engine::Manifest,
    names: &[String],
    row: &[f64],
    level: f64,
) -> Result<Vec<f64>, ApiError> {
    let Some(cal) = &manifest.interval else {
        return Err(ApiError::Conflict(format!(
            "version {} of {} has no interval calibration",
            manifest.version, manifest.name
        )));
    };
    let Some(i) = cal.levels.iter().position(|l| (l - level).abs() < 1e-9) else {
        return Err(ApiError::Validation {
            message: format!(
                "interval_level {level} is not calibrated; use one of {:?}",
                cal.levels
            ),
            details: mercator_store::FieldErrors::one(
                "interval_level",
                format!("one of {:?}", cal.levels),
            ),
        });
    };
    let feature = |name: &str| {
        names
            .iter()
            .position(|n| n == name)
            .map(|i| row[i])
            .ok_or_else(|| {
                ApiError::Engine(EngineError::Runtime(format!(
                    "the interval needs feature {name}"
                )))
            })
    };
    let scale = feature(&cal.scale_std)? / feature(&cal.scale_mean)? + cal.scale_floor;
    Ok(match cal.output_quantiles.get(i) {
        Some(by_output) => by_output.iter().map(|q| q * scale).collect(),
        None => vec![cal.quantiles[i] * scale],
    })
}

pub fn observation(p: &PricePoint) -> Observation<'_> {
    Observation {
        organization: &p.organization_id,
        material: &p.material_id,
        supplier: p.supplier_id.as_deref(),
        observed_at_ms: p.observed_at_ms,
        price: p.price,
    }
}
