//! Business predictions: what a purchase should cost. The request names a material, a quantity and maybe a
//! supplier and a delivery date; the feature row is assembled from the organization's price history kept
//! in memory ([`mercator_features::online`]) by the code that made the training frame, the active price
//! model runs it through the batching scheduler, and the manifest's calibration gives the interval.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use chrono::NaiveDate;
use mercator_engine::{EngineError, Model, Repository, Tensor, TensorData};
use mercator_features::online::{Observation, OnlineHistory};
use mercator_features::{day_of, FeatureError, FeatureSpec, RowInput};
use mercator_store::{PricePoint, Store};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::ApiError;

/// The model that answers price predictions (its active version, or the traffic split's pick).
pub const PRICE_MODEL: &str = "price";
/// The interval level when a request names none.
pub const DEFAULT_LEVEL: f64 = 0.8;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PriceRequest {
    pub material_id: String,
    /// In the material's unit; must be positive.
    pub quantity: f64,
    pub supplier_id: Option<String>,
    /// Default: the spec's default lead time after `as_of`.
    pub delivery_date: Option<NaiveDate>,
    /// The day the price is asked on (history up to the day before is used); default today (UTC). For
    /// backtests.
    pub as_of: Option<NaiveDate>,
    /// One of the calibrated levels (see the model's manifest); default 0.8.
    pub interval_level: Option<f64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Interval {
    pub lower: f64,
    pub upper: f64,
    pub level: f64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelRef {
    pub name: String,
    pub version: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PricePrediction {
    pub predicted_price: f64,
    /// Split-conformal, from the calibration residuals recorded in the manifest.
    pub prediction_interval: Interval,
    /// 1 / (1 + relative width of the interval): 1 for a point, falling as the interval widens.
    pub confidence_score: f64,
    pub model: ModelRef,
    pub as_of: NaiveDate,
    /// The row the model saw, by feature name.
    #[schema(value_type = Object)]
    pub features_used: serde_json::Map<String, serde_json::Value>,
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
    /// The price model's feature specs by version, with their column names.
    specs: Mutex<HashMap<u64, Arc<Prepared>>>,
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

    /// The feature spec of a price model version (parsed once).
    fn spec(&self, data_dir: &std::path::Path, model: &Model) -> Result<Arc<Prepared>, ApiError> {
        let m = model.manifest();
        if let Some(prepared) = self
            .specs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&m.version)
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
            .insert(m.version, prepared.clone());
        Ok(prepared)
    }

    /// What `request` should cost, for organization `org`.
    pub async fn price(
        &self,
        store: &Store,
        repository: &Repository,
        data_dir: &std::path::Path,
        org: &str,
        request: PriceRequest,
    ) -> Result<PricePrediction, ApiError> {
        if !(request.quantity > 0.0 && request.quantity.is_finite()) {
            return Err(FeatureError::Quantity(request.quantity).into());
        }
        let material = self.material(store, org, &request.material_id).await?;
        let supplier = match &request.supplier_id {
            Some(id) => Some(self.supplier(store, org, id).await?),
            None => None,
        };
        let model = repository.get(PRICE_MODEL, None)?;
        let prepared = self.spec(data_dir, &model)?;
        let (spec, names) = (&prepared.spec, &prepared.names);
        let manifest = model.manifest();
        let as_of = request
            .as_of
            .unwrap_or_else(|| chrono::Utc::now().date_naive());
        let input = RowInput {
            as_of: day_of(as_of),
            quantity: request.quantity,
            delivery: request.delivery_date.map(day_of),
            category: &material.category,
            supplier_code: supplier.as_ref().map(|s| s.code.as_str()),
            list_price: material.list_price,
            supplier_reliability: supplier.as_ref().map(|s| s.reliability),
        };
        let row = self.history.row(
            spec,
            org,
            &request.material_id,
            request.supplier_id.as_deref(),
            &input,
        )?;
        let tensor = Tensor {
            name: manifest.inputs[0].name.clone(),
            shape: vec![1, row.len()],
            data: TensorData::Fp32(row.iter().map(|v| *v as f32).collect()),
        };
        let output = model.infer(vec![tensor], None).await?;
        let predicted = output
            .outputs
            .first()
            .map(|t| t.data.to_f64())
            .and_then(|v| v.first().copied())
            .ok_or_else(|| {
                ApiError::Engine(EngineError::Inference("the model gave no price".into()))
            })?;
        let level = request.interval_level.unwrap_or(DEFAULT_LEVEL);
        let (lower, upper) = interval(manifest, names, &row, predicted, level)?;
        let features_used = names
            .iter()
            .zip(&row)
            .map(|(n, v)| (n.clone(), serde_json::json!(v)))
            .collect();
        Ok(PricePrediction {
            predicted_price: predicted,
            prediction_interval: Interval {
                lower,
                upper,
                level,
            },
            confidence_score: 1.0 / (1.0 + (upper - lower) / predicted),
            model: ModelRef {
                name: manifest.name.clone(),
                version: manifest.version,
            },
            as_of,
            features_used,
        })
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TrendRequest {
    pub material_id: String,
    /// 7 to 730.
    pub window_days: u32,
    /// The window ends the day before; default today (UTC).
    pub as_of: Option<NaiveDate>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TrendAnswer {
    pub material_id: String,
    pub window_days: u32,
    pub as_of: NaiveDate,
    /// Currency units per day, from a least-squares line through the daily mean prices.
    pub slope_per_day: f64,
    /// The fitted line's change over the window, as a fraction.
    pub pct_change: f64,
    pub r2: f64,
    /// rising | falling | stable: stable when |pct_change| < 0.02 or r2 < 0.3.
    #[schema(value_type = String)]
    pub direction: mercator_features::trend::Direction,
    /// Days with prices in the window.
    pub points: usize,
}

impl Predictor {
    /// The material's price trend over the window before `as_of`.
    pub async fn trend(
        &self,
        store: &Store,
        org: &str,
        request: TrendRequest,
    ) -> Result<TrendAnswer, ApiError> {
        use mercator_features::trend::{trend, MAX_WINDOW_DAYS};
        if !(7..=MAX_WINDOW_DAYS).contains(&request.window_days) {
            return Err(ApiError::Validation {
                message: format!("window_days must be 7 to {MAX_WINDOW_DAYS}"),
                details: mercator_store::FieldErrors::one(
                    "window_days",
                    format!("7 to {MAX_WINDOW_DAYS}"),
                ),
            });
        }
        self.material(store, org, &request.material_id).await?;
        let as_of = request
            .as_of
            .unwrap_or_else(|| chrono::Utc::now().date_naive());
        let t = self
            .history
            .with_market(org, &request.material_id, |series| {
                trend(
                    series,
                    day_of(as_of),
                    request.window_days,
                    mercator_features::online::UNITS_PER_PRICE,
                )
            })?;
        Ok(TrendAnswer {
            material_id: request.material_id,
            window_days: request.window_days,
            as_of,
            slope_per_day: t.slope_per_day,
            pct_change: t.pct_change,
            r2: t.r2,
            direction: t.direction,
            points: t.points,
        })
    }
}

/// `prediction · exp(±q · scale)`, q the calibrated quantile at `level`, scale the row's volatility.
fn interval(
    manifest: &mercator_engine::Manifest,
    names: &[String],
    row: &[f64],
    predicted: f64,
    level: f64,
) -> Result<(f64, f64), ApiError> {
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
    let half = cal.quantiles[i] * scale;
    Ok((predicted * (-half).exp(), predicted * half.exp()))
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
