//! The `zscore` rule: a price far from the moving average of the observations before it.
//!
//! The series is the organization's observations of one material and one price type, in the order of
//! their time, then id. For a price x, the window W is the last `window` observations before x in that
//! order, observed at most `lookback_days` before it (x itself never in it; a price flagged earlier stays
//! in later windows, so a real level shift stops flagging once the window has moved onto it). With fewer
//! than `min_points` in W nothing is judged. Otherwise μ = mean(W), σ = the sample standard deviation of W
//! (divided by n − 1), σ' = max(σ, 0.001·|μ|) (a flat series would otherwise flag every cent), z =
//! (x − μ)/σ'; the rule breaches when |z| > k, strictly.

use std::collections::HashMap;

use mercator_store::{Price, PriceType, Store, StoreError};

/// A price's place against the window before it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    pub mean: f64,
    /// σ', the floored sample standard deviation.
    pub sd: f64,
    pub z: f64,
    /// How many observations the window held.
    pub points: usize,
}

/// `x` against `window` (the observations before it, oldest first); None below `min_points`.
pub fn score(window: &[f64], x: f64, min_points: usize) -> Option<Score> {
    let n = window.len();
    if n < min_points.max(2) {
        return None;
    }
    let mean = window.iter().sum::<f64>() / n as f64;
    let variance = window.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let sd = variance.sqrt().max(0.001 * mean.abs());
    if sd.is_nan() || sd <= 0.0 {
        return None;
    }
    Some(Score {
        mean,
        sd,
        z: (x - mean) / sd,
        points: n,
    })
}

/// The stored observations around a batch of prices, one series per material and price type: enough to
/// find any of the batch's windows.
/// One stored observation: (time in ms, id, price).
type Point = (i64, String, f64);

#[derive(Default)]
pub struct Series {
    /// (material, type) → its observations in series order.
    points: HashMap<(String, PriceType), Vec<Point>>,
}

impl Series {
    /// Reads the series of every (material, type) among `prices`, from `lookback_days` before the
    /// earliest of them to the latest.
    pub async fn load(
        store: &Store,
        org: &str,
        prices: &[&Price],
        lookback_days: u32,
    ) -> Result<Series, StoreError> {
        let mut spans: HashMap<
            (String, PriceType),
            (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>),
        > = HashMap::new();
        for p in prices {
            let span = spans
                .entry((p.material_id.clone(), p.price_type))
                .or_insert((p.time, p.time));
            span.0 = span.0.min(p.time);
            span.1 = span.1.max(p.time);
        }
        let mut series = Series::default();
        for ((material, kind), (first, last)) in spans {
            let from = first - chrono::Duration::days(i64::from(lookback_days));
            let points = store
                .price_series(org, &material, kind, (from, last))
                .await?;
            series.points.insert((material, kind), points);
        }
        Ok(series)
    }

    /// The window of `price`: the last `window` observations before it within `lookback_days`.
    pub fn window(&self, price: &Price, window: usize, lookback_days: u32) -> Vec<f64> {
        let Some(points) = self
            .points
            .get(&(price.material_id.clone(), price.price_type))
        else {
            return Vec::new();
        };
        let at = price.time.timestamp_millis();
        let earliest = at - i64::from(lookback_days) * 86_400_000;
        // Everything before (time, id) in series order.
        let end = points.partition_point(|(t, id, _)| (*t, id.as_str()) < (at, price.id.as_str()));
        points[..end]
            .iter()
            .rev()
            .take_while(|(t, _, _)| *t >= earliest)
            .take(window)
            .map(|(_, _, v)| *v)
            .collect::<Vec<f64>>()
            .into_iter()
            .rev()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The design reference's vector: W = 100, 102, 98, 101, 99, 100, 103, 97 → μ = 100, σ = 2.
    #[test]
    fn the_reference_series_flags_exactly_beyond_two_sigma() {
        let w = [100.0, 102.0, 98.0, 101.0, 99.0, 100.0, 103.0, 97.0];
        let s = score(&w, 104.0, 8).unwrap();
        assert!(
            (s.mean - 100.0).abs() < 1e-12 && (s.sd - 2.0).abs() < 1e-12,
            "{s:?}"
        );
        assert!((s.z - 2.0).abs() < 1e-12);
        assert!(s.z.abs() <= 2.0, "104 is exactly 2σ: not flagged");
        assert!(score(&w, 104.01, 8).unwrap().z > 2.0);
        assert!((score(&w, 95.0, 8).unwrap().z - -2.5).abs() < 1e-12);
        // The population σ (n) would be 1.871 and flag 104: the sample σ (n − 1) is the definition.
        assert!(
            score(&w[..7], 104.0, 8).is_none(),
            "seven points are too few"
        );
    }

    #[test]
    fn a_flat_series_is_judged_against_a_tenth_of_a_percent() {
        let s = score(&[50.0; 5], 50.04, 5).unwrap();
        assert!((s.sd - 0.05).abs() < 1e-12);
        assert!((s.z - 0.8).abs() < 1e-9);
        assert!(score(&[0.0; 5], 1.0, 5).is_none(), "nothing to scale by");
    }
}
