//! A material's prices against its category and the market: `GET /api/v1/benchmarks/materials/{id}`.
//!
//! Over a period (the last 365 days unless asked): the material's own observations (quotes, contracts,
//! invoices), every observation of the materials of its category, and its `market` prices, each summarized
//! by count, quartiles, mean and range; the material's median placed in the category's prices (the share of
//! them at or below it); the ratios of its median to the category's and the market's; its trend over the
//! period's last 90 days; and the fair price today from the price model. Every figure says how many
//! observations it rests on; the answer says how old the newest one is.

use chrono::{Duration, NaiveDate};
use mercator_store::{PriceType, Time};
use serde::Serialize;
use utoipa::ToSchema;

use super::{Sourcing, SourcingError};
use crate::predict::{PricePrediction, PriceRequest, TrendAnswer, TrendRequest};

/// The longest period one benchmark reads.
pub const MAX_DAYS: i64 = 3 * 366;

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Summary {
    pub n: usize,
    pub min: f64,
    pub q1: f64,
    pub median: f64,
    pub q3: f64,
    pub max: f64,
    pub mean: f64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MaterialBenchmark {
    pub material_id: String,
    pub category: String,
    #[schema(value_type = String, format = DateTime)]
    pub from: Time,
    #[schema(value_type = String, format = DateTime)]
    pub to: Time,
    /// The material's quotes, contracts and invoices in the period.
    pub material: Option<Summary>,
    /// Every observation (but market prices) of the category's materials, this one included.
    pub category_prices: Option<Summary>,
    /// Materials of the category with observations in the period.
    pub category_materials: usize,
    /// The material's `market` prices.
    pub market: Option<Summary>,
    /// The share (0–100) of the category's prices at or below the material's median.
    pub percentile_in_category: Option<f64>,
    /// The material's median ÷ the category's, and ÷ the market's, minus 1.
    pub vs_category: Option<f64>,
    pub vs_market: Option<f64>,
    /// The trend of its prices over the period's last 90 days, or why there is none.
    pub trend: Option<TrendAnswer>,
    pub trend_error: Option<String>,
    /// The price model's fair price today at the material's median quantity of the period (no supplier).
    pub fair_price: Option<PricePrediction>,
    pub fair_price_error: Option<String>,
    /// Days from the newest observation of the material to today.
    pub data_age_days: Option<i64>,
}

/// Quartiles by linear interpolation between order statistics (numpy's default), over sorted values.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    let h = (sorted.len() - 1) as f64 * q;
    let (lo, hi) = (h.floor() as usize, h.ceil() as usize);
    sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo])
}

pub fn summary(mut values: Vec<f64>) -> Option<Summary> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    Some(Summary {
        n: values.len(),
        min: values[0],
        q1: quantile(&values, 0.25),
        median: quantile(&values, 0.5),
        q3: quantile(&values, 0.75),
        max: values[values.len() - 1],
        mean: values.iter().sum::<f64>() / values.len() as f64,
    })
}

impl Sourcing {
    pub async fn benchmark(
        &self,
        org: &str,
        material_id: &str,
        from: Option<Time>,
        to: Option<Time>,
    ) -> Result<MaterialBenchmark, SourcingError> {
        let material = self.store.material(org, material_id).await?;
        let now = self.clock.now();
        let to = to.unwrap_or(now);
        let from = from.unwrap_or(to - Duration::days(365));
        if from >= to {
            return Err(SourcingError::field("from", "must be before `to`"));
        }
        if to - from > Duration::days(MAX_DAYS) {
            return Err(SourcingError::field(
                "from",
                format!("a benchmark covers at most {MAX_DAYS} days"),
            ));
        }
        let prices = self
            .store
            .category_prices(org, &material.category, (from, to))
            .await?;
        let own: Vec<_> = prices
            .iter()
            .filter(|p| p.material_id == material.id && p.price_type != PriceType::Market)
            .collect();
        let market = summary(
            prices
                .iter()
                .filter(|p| p.material_id == material.id && p.price_type == PriceType::Market)
                .map(|p| p.price)
                .collect(),
        );
        let category: Vec<f64> = prices
            .iter()
            .filter(|p| p.price_type != PriceType::Market)
            .map(|p| p.price)
            .collect();
        let mut materials: Vec<&str> = prices
            .iter()
            .filter(|p| p.price_type != PriceType::Market)
            .map(|p| p.material_id.as_str())
            .collect();
        materials.sort_unstable();
        materials.dedup();
        let mine = summary(own.iter().map(|p| p.price).collect());
        let category_summary = summary(category.clone());
        let percentile_in_category = mine.as_ref().filter(|_| !category.is_empty()).map(|m| {
            100.0 * category.iter().filter(|&&p| p <= m.median).count() as f64
                / category.len() as f64
        });
        let ratio = |a: Option<&Summary>, b: Option<&Summary>| match (a, b) {
            (Some(a), Some(b)) if b.median > 0.0 => Some(a.median / b.median - 1.0),
            _ => None,
        };
        let today = now.date_naive();
        let as_of: NaiveDate = to.date_naive().min(today);
        let (trend, trend_error) = match self
            .predictions
            .trend(
                org,
                TrendRequest {
                    material_id: material.id.clone(),
                    window_days: 90,
                    as_of: Some(as_of),
                },
            )
            .await
        {
            Ok(t) => (Some(t), None),
            Err(e) => (None, Some(e.to_string())),
        };
        let mut quantities: Vec<f64> = own.iter().filter_map(|p| p.quantity).collect();
        quantities.sort_by(f64::total_cmp);
        let quantity = if quantities.is_empty() {
            1.0
        } else {
            quantile(&quantities, 0.5)
        };
        let (fair_price, fair_price_error) = match self
            .predictions
            .price(
                org,
                PriceRequest {
                    material_id: material.id.clone(),
                    quantity,
                    supplier_id: None,
                    delivery_date: None,
                    as_of: Some(today),
                    interval_level: None,
                },
            )
            .await
        {
            Ok(p) => (Some(p), None),
            Err(e) => (None, Some(e.to_string())),
        };
        let newest = own.iter().map(|p| p.at).max();
        Ok(MaterialBenchmark {
            vs_category: ratio(mine.as_ref(), category_summary.as_ref()),
            vs_market: ratio(mine.as_ref(), market.as_ref()),
            material_id: material.id,
            category: material.category,
            from,
            to,
            material: mine,
            category_prices: category_summary,
            category_materials: materials.len(),
            market,
            percentile_in_category,
            trend,
            trend_error,
            fair_price,
            fair_price_error,
            data_age_days: newest
                .and_then(chrono::DateTime::from_timestamp_millis)
                .map(|at| (today - at.date_naive()).num_days()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quartiles_interpolate_between_order_statistics() {
        let s = summary(vec![4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!(
            (s.min, s.q1, s.median, s.q3, s.max),
            (1.0, 1.75, 2.5, 3.25, 4.0)
        );
        assert_eq!(s.mean, 2.5);
        let one = summary(vec![7.0]).unwrap();
        assert_eq!((one.q1, one.median, one.q3), (7.0, 7.0, 7.0));
        assert!(summary(Vec::new()).is_none());
    }
}
