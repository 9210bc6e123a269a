//! `POST /api/v1/analytics/trends`: a least-squares line through the daily mean prices.

use chrono::NaiveDate;
use mercator_features::day_of;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{PredictError, Predictions};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TrendRequest {
    pub material_id: String,
    /// 7 to 730.
    #[schema(minimum = 7, maximum = 730)]
    pub window_days: u32,
    /// The window ends the day before; default today (UTC).
    #[serde(default, deserialize_with = "mercator_store::opt_date")]
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

impl Predictions {
    /// The material's price trend over the window before `as_of`.
    pub async fn trend(
        &self,
        org: &str,
        request: TrendRequest,
    ) -> Result<TrendAnswer, PredictError> {
        use mercator_features::trend::{trend, MAX_WINDOW_DAYS};
        if !(7..=MAX_WINDOW_DAYS).contains(&request.window_days) {
            return Err(PredictError::Invalid {
                message: format!("window_days must be 7 to {MAX_WINDOW_DAYS}"),
                details: mercator_store::FieldErrors::one(
                    "window_days",
                    format!("7 to {MAX_WINDOW_DAYS}"),
                ),
            });
        }
        self.material(org, &request.material_id).await?;
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
