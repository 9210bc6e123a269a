//! `POST /api/v1/analytics/demand-forecast`: a material's demand for the days or weeks ahead, with an
//! interval per point, from the organization's orders of it ([`mercator_features::demand`], the code that
//! built the training frame) and the `demand` model.
//!
//! The model gives units per day for each week ahead. A week's point is seven times its rate and interval;
//! a day's point is its week's rate and interval per day: on which day of a week an order lands is not
//! predictable from the history (orders come in lumps, most days none), so a day's own quantity has no
//! useful interval. The intervals are the version's split-conformal quantiles per week ahead times the
//! material's scale; they never go below 0.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use mercator_features::demand::{demand_row, DemandSpec};
use mercator_features::{date_of, day_of, Day};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ModelRef, PredictError, Predictions, DEFAULT_LEVEL};

pub const DEMAND_MODEL: &str = "demand";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Granularity {
    Day,
    #[default]
    Week,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DemandRequest {
    pub material_id: String,
    /// Days from `as_of` on: 1 to 7 × the model's weeks (56 for the shipped model); by week, a multiple of 7.
    pub horizon_days: u32,
    /// `week` (default): one point per week, its quantity; `day`: one point per day, its week's rate.
    #[serde(default)]
    pub granularity: Granularity,
    /// The first forecast day (orders up to the day before are used); default today (UTC). For backtests.
    #[serde(default, deserialize_with = "mercator_store::opt_date")]
    pub as_of: Option<NaiveDate>,
    /// One of the calibrated levels (see the model's manifest); default 0.8.
    pub interval_level: Option<f64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DemandPoint {
    pub start: NaiveDate,
    /// The last day of the point (the start, by day).
    pub end: NaiveDate,
    /// The expected quantity over the point's days, in the material's unit.
    pub value: f64,
    pub lower: f64,
    pub upper: f64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DemandHistory {
    /// The orders read: placed from `from` to `to`.
    pub from: NaiveDate,
    pub to: NaiveDate,
    /// Days with an order of the material in them.
    pub order_days: usize,
    /// Whether they span the whole window (else the scale is over the days since the first).
    pub full_year: bool,
    /// Units per day ordered over the window: what the model's ratios are put against.
    pub scale_per_day: f64,
    pub median_days_between_orders: f64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DemandAnswer {
    pub material_id: String,
    pub as_of: NaiveDate,
    pub granularity: Granularity,
    /// The level of every point's interval.
    pub level: f64,
    pub points: Vec<DemandPoint>,
    /// Units per day the model expects in each of its weeks ahead.
    pub weekly_rates: Vec<f64>,
    pub history: DemandHistory,
    /// Every feature, by name, as the model saw it.
    pub features: BTreeMap<String, f64>,
    pub model: ModelRef,
}

/// What the model expects of a material from a day on: what the forecast route renders, and what an
/// inventory policy takes as its demand.
#[derive(Debug, Clone)]
pub struct DemandOutlook {
    pub as_of: NaiveDate,
    /// Units per day, per week ahead.
    pub rates: Vec<f64>,
    /// The standard deviation of each week's rate's forecast error, units per day.
    pub error_std: Vec<f64>,
    pub scale: f64,
    pub order_days: usize,
    pub full_year: bool,
    pub median_gap: f64,
    pub window: (NaiveDate, NaiveDate),
    pub features: Vec<(String, f64)>,
    pub model: ModelRef,
    settings: mercator_engine::DemandSettings,
}

impl Predictions {
    /// The model's weekly rates of `material_id` from `as_of` (default today) on, for organization `org`.
    pub async fn demand_outlook(
        &self,
        org: &str,
        material_id: &str,
        as_of: Option<NaiveDate>,
    ) -> Result<DemandOutlook, PredictError> {
        self.material(org, material_id).await?;
        let model = self.model(DEMAND_MODEL)?;
        let spec: std::sync::Arc<DemandSpec> =
            self.cached_spec(&self.demand_specs, &model, DemandSpec::from_file)?;
        let m = model.manifest();
        let Some(settings) = m.demand.clone() else {
            return Err(PredictError::Unservable(format!(
                "version {} of {} has no [demand] calibration; activate a version with it",
                m.version, m.name
            )));
        };
        let today = as_of.unwrap_or_else(|| chrono::Utc::now().date_naive());
        let at = day_of(today);
        let (from, to) = (date_of(spec.window_start(at)), date_of(at - 1));
        let orders: Vec<(Day, f64)> = self
            .store
            .orders_between(org, (from, to))
            .await
            .map_err(PredictError::Store)?
            .iter()
            .filter(|o| o.status != "cancelled")
            .flat_map(|o| {
                let day = day_of(o.ordered_on);
                o.lines
                    .iter()
                    .filter(|l| l.material_id == material_id)
                    .map(move |l| (day, l.quantity))
            })
            .collect();
        let (row, summary) = demand_row(&spec, &orders, at)?;
        let width = row.len();
        let output = self.infer(&model, row.clone(), width).await?;
        let rates = output
            .outputs
            .first()
            .map(|t| t.data.to_f64())
            .filter(|v| v.len() == spec.weeks as usize && v.iter().all(|x| x.is_finite()))
            .ok_or_else(|| {
                PredictError::Output(format!(
                    "the model gave no forecast of {} weeks",
                    spec.weeks
                ))
            })?;
        if settings.week_error_std.len() != rates.len() {
            return Err(PredictError::Output(format!(
                "version {} of {}: [demand] is calibrated for {} weeks, the model gives {}",
                m.version,
                m.name,
                settings.week_error_std.len(),
                rates.len()
            )));
        }
        Ok(DemandOutlook {
            as_of: today,
            error_std: settings
                .week_error_std
                .iter()
                .map(|e| e * summary.scale)
                .collect(),
            rates,
            scale: summary.scale,
            order_days: summary.orders,
            full_year: summary.full_year,
            median_gap: summary.median_gap,
            window: (from, to),
            features: spec
                .names()
                .into_iter()
                .zip(row.iter().map(|v| f64::from(*v)))
                .collect(),
            model: ModelRef {
                name: m.name.clone(),
                version: m.version,
            },
            settings,
        })
    }

    /// `POST /api/v1/analytics/demand-forecast`.
    pub async fn demand_forecast(
        &self,
        org: &str,
        request: DemandRequest,
    ) -> Result<DemandAnswer, PredictError> {
        let outlook = self
            .demand_outlook(org, &request.material_id, request.as_of)
            .await?;
        let max = 7 * outlook.rates.len();
        let days = request.horizon_days as usize;
        if days == 0 || days > max {
            return Err(mercator_features::FeatureError::Horizon {
                days: request.horizon_days,
                max,
            }
            .into());
        }
        if request.granularity == Granularity::Week && !days.is_multiple_of(7) {
            return Err(PredictError::invalid(
                "horizon_days",
                "by week, a multiple of 7",
            ));
        }
        let level = request.interval_level.unwrap_or(DEFAULT_LEVEL);
        let s = &outlook.settings;
        let Some(l) = s.levels.iter().position(|x| (x - level).abs() < 1e-9) else {
            return Err(PredictError::invalid(
                "interval_level",
                format!("one of {:?}", s.levels),
            ));
        };
        let date = |offset: usize| {
            outlook
                .as_of
                .checked_add_days(chrono::Days::new(offset as u64))
                .ok_or_else(|| PredictError::invalid("as_of", mercator_store::DATE_RANGE))
        };
        let scale = outlook.scale;
        let points = match request.granularity {
            Granularity::Week => (0..days / 7)
                .map(|k| {
                    let rate = outlook.rates[k];
                    Ok(DemandPoint {
                        start: date(7 * k)?,
                        end: date(7 * k + 6)?,
                        value: 7.0 * rate,
                        lower: 7.0 * (rate + scale * s.week_lower[l][k]).max(0.0),
                        upper: 7.0 * (rate + scale * s.week_upper[l][k]).max(0.0),
                    })
                })
                .collect::<Result<Vec<_>, PredictError>>()?,
            Granularity::Day => (0..days)
                .map(|d| {
                    let (k, rate) = (d / 7, outlook.rates[d / 7]);
                    Ok(DemandPoint {
                        start: date(d)?,
                        end: date(d)?,
                        value: rate,
                        lower: (rate + scale * s.week_lower[l][k]).max(0.0),
                        upper: (rate + scale * s.week_upper[l][k]).max(0.0),
                    })
                })
                .collect::<Result<Vec<_>, PredictError>>()?,
        };
        Ok(DemandAnswer {
            material_id: request.material_id,
            as_of: outlook.as_of,
            granularity: request.granularity,
            level,
            points,
            history: DemandHistory {
                from: outlook.window.0,
                to: outlook.window.1,
                order_days: outlook.order_days,
                full_year: outlook.full_year,
                scale_per_day: scale,
                median_days_between_orders: outlook.median_gap,
            },
            features: outlook.features.iter().cloned().collect(),
            weekly_rates: outlook.rates,
            model: outlook.model,
        })
    }
}

impl DemandOutlook {
    /// The mean daily demand over the first `days` days ahead and its daily forecast error: each day takes
    /// its week's rate and error (days past the model's weeks take the last week's). A week's rate error
    /// e (units per day over 7 days) is a daily error of e·√7, were days independent: the spread the policy's
    /// σ_d·√days then restores over the exposure.
    ///
    /// Each week is weighted by its days among the first `days` (whole days, at least one), so a lead time
    /// of any size costs one step per week, never one per day.
    pub fn over(&self, days: f64) -> (f64, f64) {
        let n = if days.is_finite() {
            days.ceil().max(1.0)
        } else {
            1.0
        };
        let last = self.rates.len().saturating_sub(1);
        let (mut mean, mut error) = (0.0, 0.0);
        for (k, (rate, e)) in self.rates.iter().zip(&self.error_std).enumerate() {
            let before = 7.0 * k as f64;
            let days_in = if k < last {
                (n - before).clamp(0.0, 7.0)
            } else {
                (n - before).max(0.0)
            };
            mean += days_in * rate;
            error += days_in * e;
        }
        (mean / n, error / n * 7f64.sqrt())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outlook(rates: Vec<f64>, error_std: Vec<f64>) -> DemandOutlook {
        let day = NaiveDate::from_ymd_opt(2026, 1, 1).unwrap();
        DemandOutlook {
            as_of: day,
            rates,
            error_std,
            scale: 1.0,
            order_days: 0,
            full_year: true,
            median_gap: 0.0,
            window: (day, day),
            features: Vec::new(),
            model: ModelRef {
                name: "demand".into(),
                version: 1,
            },
            settings: mercator_engine::DemandSettings {
                method: String::new(),
                levels: vec![0.8],
                week_lower: vec![vec![0.0; 2]],
                week_upper: vec![vec![0.0; 2]],
                week_error_std: vec![0.0; 2],
                calibration_rows: 0,
            },
        }
    }

    /// Days take their week's rate and error; days past the last week take the last week's, whatever the
    /// number of days (a huge lead time answers at once).
    #[test]
    fn demand_over_an_exposure_weights_the_weeks_by_their_days() {
        let o = outlook(vec![10.0, 20.0], vec![1.0, 3.0]);
        let (mean, error) = o.over(10.0);
        assert!((mean - (7.0 * 10.0 + 3.0 * 20.0) / 10.0).abs() < 1e-12);
        assert!((error - (7.0 * 1.0 + 3.0 * 3.0) / 10.0 * 7f64.sqrt()).abs() < 1e-12);
        let (mean, _) = o.over(28.0);
        assert!((mean - (7.0 * 10.0 + 21.0 * 20.0) / 28.0).abs() < 1e-12);
        assert_eq!(o.over(0.2), o.over(1.0));
        let (mean, error) = o.over(1e300);
        assert!((mean - 20.0).abs() < 1e-9 && (error - 3.0 * 7f64.sqrt()).abs() < 1e-9);
        assert_eq!(o.over(f64::NAN), o.over(1.0));
    }
}
