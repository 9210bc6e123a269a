//! `POST /api/v1/analytics/forecast`: a material's daily price for the days ahead, with an interval per day.

use std::sync::LazyLock;

use chrono::NaiveDate;
use mercator_features::spec::Feature;
use mercator_features::{day_of, FeatureError, FeatureSpec, RowInput};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::price::DEFAULT_LEVEL;
use super::{half_widths, ModelRef, PredictError, Predictions, FORECAST_MODEL};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForecastRequest {
    pub material_id: String,
    /// Days to forecast from `as_of` on: 1 to the model's horizon (28 for the shipped model).
    pub horizon_days: u32,
    /// Scales the market forecast by this supplier's premium over the market in the last 28 days.
    pub supplier_id: Option<String>,
    /// The first forecast day (history up to the day before is used); default today (UTC). For backtests.
    #[serde(default, deserialize_with = "mercator_store::opt_date")]
    pub as_of: Option<NaiveDate>,
    /// One of the calibrated levels (see the model's manifest); default 0.8.
    pub interval_level: Option<f64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ForecastPoint {
    pub date: NaiveDate,
    /// The expected mean price of the day.
    pub value: f64,
    pub lower: f64,
    pub upper: f64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ForecastAnswer {
    pub material_id: String,
    pub supplier_id: Option<String>,
    pub as_of: NaiveDate,
    /// The level of every point's interval: split-conformal per day ahead, from the manifest.
    pub level: f64,
    /// The supplier's premium over the market applied to every point (0 without a supplier, or when it has
    /// no prices in the window).
    pub supplier_premium: f64,
    pub points: Vec<ForecastPoint>,
    pub model: ModelRef,
}

/// The window the supplier premium is measured over, in days.
const PREMIUM_DAYS: u32 = 28;

/// The supplier premium as a one-feature spec: the same kernel the models' rows are computed by.
static PREMIUM: LazyLock<FeatureSpec> = LazyLock::new(|| {
    FeatureSpec::single(
        Feature::SupplierPremium { days: PREMIUM_DAYS },
        PREMIUM_DAYS,
    )
});

/// The days a forecast model's output covers (0 when its output has no fixed length).
fn horizon(manifest: &mercator_engine::Manifest) -> usize {
    manifest
        .outputs
        .first()
        .and_then(|o| o.fixed_row_len())
        .unwrap_or(0)
}

impl Predictions {
    /// The days the active forecast model covers (0 without one).
    pub fn forecast_horizon(&self) -> usize {
        self.model(FORECAST_MODEL)
            .map_or(0, |model| horizon(model.manifest()))
    }

    /// The material's daily price from `as_of` on, for organization `org`.
    pub async fn forecast(
        &self,
        org: &str,
        request: ForecastRequest,
    ) -> Result<ForecastAnswer, PredictError> {
        let material = self.material(org, &request.material_id).await?;
        if let Some(id) = &request.supplier_id {
            self.supplier(org, id).await?;
        }
        let model = self.model(FORECAST_MODEL)?;
        let prepared = self.spec(&model)?;
        let manifest = model.manifest();
        let horizon = horizon(manifest);
        if request.horizon_days == 0 || request.horizon_days as usize > horizon {
            return Err(FeatureError::Horizon {
                days: request.horizon_days,
                max: horizon,
            }
            .into());
        }
        let as_of = request
            .as_of
            .unwrap_or_else(|| chrono::Utc::now().date_naive());
        let input = RowInput {
            as_of: day_of(as_of),
            quantity: 1.0,
            delivery: None,
            category: &material.category,
            supplier_code: None,
            list_price: material.list_price,
            supplier_reliability: None,
            price: None,
        };
        let row = self
            .history
            .row(&prepared.spec, org, &request.material_id, None, &input)?;
        let supplier_premium = match &request.supplier_id {
            Some(id) => self
                .history
                .row(&PREMIUM, org, &request.material_id, Some(id), &input)?[0],
            None => 0.0,
        };
        let output = self
            .infer(&model, row.iter().map(|v| *v as f32).collect(), row.len())
            .await?;
        let values = output
            .outputs
            .first()
            .map(|t| t.data.to_f64())
            .filter(|v| v.len() == horizon)
            .ok_or_else(|| {
                PredictError::Output(format!("the model gave no forecast of {horizon} days"))
            })?;
        let level = request.interval_level.unwrap_or(DEFAULT_LEVEL);
        let halves = half_widths(manifest, &prepared.names, &row, level)?;
        let points = (0..request.horizon_days as usize)
            .map(|h| {
                let value = values[h] * (1.0 + supplier_premium);
                let half = halves.get(h).or(halves.last()).copied().unwrap_or(0.0);
                let date = as_of
                    .checked_add_days(chrono::Days::new(h as u64))
                    .ok_or_else(|| PredictError::invalid("as_of", mercator_store::DATE_RANGE))?;
                Ok(ForecastPoint {
                    date,
                    value,
                    lower: value * (-half).exp(),
                    upper: value * half.exp(),
                })
            })
            .collect::<Result<_, PredictError>>()?;
        Ok(ForecastAnswer {
            material_id: request.material_id,
            supplier_id: request.supplier_id,
            as_of,
            level,
            supplier_premium,
            points,
            model: ModelRef {
                name: manifest.name.clone(),
                version: manifest.version,
            },
        })
    }
}
