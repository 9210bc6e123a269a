//! Business predictions: the organization's price history kept in memory ([`mercator_features::online`]),
//! feature rows assembled from it by the code that made the training frames, and the active models run on
//! them through the batching scheduler. One file per question:
//!
//! - [`price`]: what a purchase should cost (the `price` model, a split-conformal interval);
//! - [`forecast`]: a material's daily price ahead (the `forecast` model, an interval per day);
//! - [`anomaly`]: how unusual observed prices are (the `anomaly` model, severities, reasons), also run on
//!   every ingested price;
//! - [`trend`]: a least-squares line through the daily means (linfa, no model);
//! - [`demand`]: a material's demand in the weeks ahead (the `demand` model on its order history);
//! - [`risk`]: the chance an order line with a supplier arrives late (the `risk` model on its order book).
//!
//! Every model run goes through [`Predictions::infer`], which copies the request to the model's shadow
//! version when it has one: REST predictions are shadowed as V2 requests are.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use mercator_engine::{InferOutput, Model, Repository};
use mercator_features::online::{Observation, OnlineHistory};
use mercator_features::FeatureSpec;
use mercator_store::{PricePoint, Store};
use serde::Serialize;
use utoipa::ToSchema;

use crate::shadow::Shadows;

/// The models that answer business predictions (each its active version, or the traffic split's pick).
pub const PRICE_MODEL: &str = "price";
pub const FORECAST_MODEL: &str = "forecast";
pub const ANOMALY_MODEL: &str = "anomaly";

mod anomaly;
mod demand;
mod error;
mod forecast;
mod price;
mod risk;
mod trend;

pub use anomaly::{AnomalyAnswer, AnomalyRequest, Judgement};
pub use demand::{DemandAnswer, DemandOutlook, DemandRequest, Granularity, DEMAND_MODEL};
pub use error::PredictError;
pub use forecast::{ForecastAnswer, ForecastRequest};
pub use price::{Catalog, Interval, Named, PricePrediction, PriceRequest, DEFAULT_LEVEL};
pub use risk::{RiskRequest, SupplierRisk, RISK_MODEL};
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
/// when the row changes. A read that a change overtook (dropped while the store was being read, here or
/// through the change feed) answers but is not kept, so a stale copy never settles in the cache.
struct Cache<T> {
    entries: RwLock<HashMap<String, (String, T)>>,
    /// Counts drops: a miss keeps what it read only if none happened meanwhile.
    drops: std::sync::atomic::AtomicU64,
}

impl<T> Default for Cache<T> {
    fn default() -> Self {
        Cache {
            entries: RwLock::default(),
            drops: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl<T: Clone> Cache<T> {
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, (String, T)>> {
        self.entries.write().unwrap_or_else(|e| e.into_inner())
    }

    fn forget(&self, id: &str) {
        let mut entries = self.write();
        self.drops.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        entries.remove(id);
    }

    fn clear(&self) {
        let mut entries = self.write();
        self.drops.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        entries.clear();
    }

    /// The attributes of `id` if `org` owns it: not found `what` otherwise, as the store answers.
    async fn get<F: std::future::Future<Output = Result<T, PredictError>>>(
        &self,
        org: &str,
        id: &str,
        what: &'static str,
        load: impl FnOnce() -> F,
    ) -> Result<T, PredictError> {
        let cached = self
            .entries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned();
        let (owner, info) = match cached {
            Some(entry) => entry,
            None => {
                let drops = self.drops.load(std::sync::atomic::Ordering::Acquire);
                let info = load().await?;
                let mut entries = self.write();
                if self.drops.load(std::sync::atomic::Ordering::Acquire) == drops {
                    entries.insert(id.to_string(), (org.to_string(), info.clone()));
                }
                (org.to_string(), info)
            }
        };
        if owner != org {
            return Err(PredictError::NotFound(what));
        }
        Ok(info)
    }
}

/// The predictions service: the price history, the material and supplier attributes features need
/// (cached, dropped on change), the parsed feature specs of the model versions, and what it runs them on.
pub struct Predictions {
    repository: Arc<Repository>,
    store: Store,
    /// The data directory, whose served versions hold their feature specs.
    data_dir: PathBuf,
    shadows: Arc<Shadows>,
    /// Most observations one anomaly request may score (--max-bulk-rows).
    max_rows: usize,
    pub history: OnlineHistory,
    materials: Cache<MaterialInfo>,
    suppliers: Cache<SupplierInfo>,
    /// The feature specs of model versions, with their column names, by model and version.
    specs: Mutex<HashMap<String, HashMap<u64, Arc<Prepared>>>>,
    /// The delivery specs of risk model versions.
    delivery_specs: SpecCache<mercator_features::delivery::DeliverySpec>,
    demand_specs: SpecCache<mercator_features::demand::DemandSpec>,
    /// Where a sample of the price predictions goes, when monitoring keeps one.
    log: std::sync::OnceLock<crate::monitor::log::PredictionLog>,
}

/// Parsed feature specs by model name and version.
type SpecCache<S> = Mutex<HashMap<(String, u64), Arc<S>>>;

/// A parsed spec and its column names, made once per model version.
struct Prepared {
    spec: FeatureSpec,
    names: Vec<String>,
}

/// Prices read per page when the history is rebuilt from the store.
const REBUILD_PAGE: usize = 50_000;

impl Predictions {
    /// The service, with an empty history ([`Predictions::rebuild`] fills it).
    pub fn new(
        repository: Arc<Repository>,
        store: Store,
        data_dir: PathBuf,
        shadows: Arc<Shadows>,
        max_rows: usize,
    ) -> Predictions {
        Predictions {
            repository,
            store,
            data_dir,
            shadows,
            max_rows,
            history: OnlineHistory::default(),
            materials: Cache::default(),
            suppliers: Cache::default(),
            specs: Mutex::default(),
            delivery_specs: Mutex::default(),
            demand_specs: Mutex::default(),
            log: std::sync::OnceLock::new(),
        }
    }

    /// Logs a sample of the price predictions to `log` from now on (once).
    pub fn log_to(&self, log: crate::monitor::log::PredictionLog) {
        let _ = self.log.set(log);
    }

    /// Rebuilds every organization's history from the store (what it held is dropped). Returns the prices
    /// read and the newest change of the feed they include.
    pub async fn rebuild(&self) -> Result<(usize, i64), String> {
        let history = OnlineHistory::default();
        let mut total = 0;
        let seq = self
            .store
            .price_snapshot(REBUILD_PAGE, |page| {
                total += page.len();
                history.add(page.iter().map(observation));
            })
            .await
            .map_err(|e| format!("rebuilding the price history: {e}"))?;
        self.history.replace(history);
        Ok((total, seq))
    }

    /// Forgets a material's cached attributes (it changed or is gone).
    pub fn forget_material(&self, id: &str) {
        self.materials.forget(id);
    }

    pub fn forget_supplier(&self, id: &str) {
        self.suppliers.forget(id);
    }

    /// Forgets every cached attribute (a replica that fell too far behind the change feed).
    pub fn forget_catalog(&self) {
        self.materials.clear();
        self.suppliers.clear();
    }

    /// The category of the organization's material `id` (cached).
    pub async fn category(&self, org: &str, id: &str) -> Result<String, PredictError> {
        Ok(self.material(org, id).await?.category)
    }

    async fn material(&self, org: &str, id: &str) -> Result<MaterialInfo, PredictError> {
        self.materials
            .get(org, id, "material", || async {
                let m = self
                    .store
                    .material(org, id)
                    .await
                    .map_err(PredictError::store("material"))?;
                Ok(MaterialInfo {
                    category: m.category,
                    list_price: m.list_price,
                })
            })
            .await
    }

    async fn supplier(&self, org: &str, id: &str) -> Result<SupplierInfo, PredictError> {
        self.suppliers
            .get(org, id, "supplier", || async {
                let s = self
                    .store
                    .supplier(org, id)
                    .await
                    .map_err(PredictError::store("supplier"))?;
                Ok(SupplierInfo {
                    code: s.code,
                    reliability: s.reliability,
                })
            })
            .await
    }

    /// The active version of `name` (or the traffic split's pick).
    fn model(&self, name: &str) -> Result<Model, PredictError> {
        Ok(self.repository.get(name, None)?)
    }

    /// Runs `rows` (`width` values each) on `model`, a version picked without naming one, on the interactive
    /// lane; a copy goes to the model's shadow version, if it has one, after the answer is in.
    async fn infer(
        &self,
        model: &Model,
        rows: Vec<f32>,
        width: usize,
    ) -> Result<InferOutput, PredictError> {
        let manifest = model.manifest();
        let inputs = model.rows_input(rows, width)?;
        let shadow = self.repository.shadow(&manifest.name);
        let copy = shadow.as_ref().map(|_| inputs.clone());
        let output = model.infer(inputs, None).await?;
        if let (Some(shadow), Some(copy)) = (shadow, copy) {
            self.shadows.mirror(shadow, copy, output.outputs.clone());
        }
        Ok(output)
    }

    /// Where a served version's feature spec is; a version without one cannot answer business questions.
    fn spec_path(&self, m: &mercator_engine::Manifest) -> Result<PathBuf, PredictError> {
        let Some(features) = &m.features else {
            return Err(PredictError::Unservable(format!(
                "version {} of {} takes raw feature tensors (no [features] spec); activate a version with one",
                m.version, m.name
            )));
        };
        Ok(mercator_engine::import::served_dir(&self.data_dir)
            .join(&m.name)
            .join(m.version.to_string())
            .join(&features.spec))
    }

    /// A model version's feature spec of kind `S`, parsed once into `cache`.
    fn cached_spec<S>(
        &self,
        cache: &SpecCache<S>,
        model: &Model,
        parse: fn(&std::path::Path) -> Result<S, mercator_features::FeatureError>,
    ) -> Result<Arc<S>, PredictError> {
        let m = model.manifest();
        let key = (m.name.clone(), m.version);
        if let Some(spec) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(spec.clone());
        }
        let path = self.spec_path(m)?;
        let spec = Arc::new(parse(&path).map_err(|e| PredictError::Spec {
            model: m.name.clone(),
            version: m.version,
            reason: e.to_string(),
        })?);
        cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, spec.clone());
        Ok(spec)
    }

    /// The feature spec of a model version (parsed once).
    fn spec(&self, model: &Model) -> Result<Arc<Prepared>, PredictError> {
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
        let path = self.spec_path(m)?;
        let spec = FeatureSpec::from_file(&path).map_err(|e| PredictError::Spec {
            model: m.name.clone(),
            version: m.version,
            reason: e.to_string(),
        })?;
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
) -> Result<Vec<f64>, PredictError> {
    let Some(cal) = &manifest.interval else {
        return Err(PredictError::Unservable(format!(
            "version {} of {} has no interval calibration",
            manifest.version, manifest.name
        )));
    };
    let Some(i) = cal.levels.iter().position(|l| (l - level).abs() < 1e-9) else {
        return Err(PredictError::Invalid {
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
            .ok_or_else(|| PredictError::Spec {
                model: manifest.name.clone(),
                version: manifest.version,
                reason: format!("the interval needs feature {name}, which the spec lacks"),
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// A read that a change overtook (the entry dropped while the store was read) answers, but is not
    /// kept: the next read asks the store again. An untroubled read is kept.
    #[tokio::test]
    async fn a_read_overtaken_by_a_change_is_not_kept() {
        let cache: Cache<u32> = Cache::default();
        let loads = AtomicU32::new(0);
        let read = |value: u32, changed_meanwhile: bool| {
            let (cache, loads) = (&cache, &loads);
            async move {
                loads.fetch_add(1, Ordering::SeqCst);
                if changed_meanwhile {
                    cache.forget("m");
                }
                Ok(value)
            }
        };
        let get = |value, changed| cache.get("org", "m", "material", move || read(value, changed));
        assert_eq!(get(1, true).await.unwrap(), 1);
        assert_eq!(
            get(2, false).await.unwrap(),
            2,
            "the overtaken read was not kept"
        );
        assert_eq!(
            get(3, false).await.unwrap(),
            2,
            "an untroubled read is kept"
        );
        assert_eq!(loads.load(Ordering::SeqCst), 2);
        assert!(matches!(
            cache.get("other", "m", "material", || read(4, false)).await,
            Err(PredictError::NotFound("material"))
        ));
    }
}
