//! A material's price trend: an ordinary least-squares line (linfa) through the daily mean prices of the
//! days `[as_of - window, as_of)` that have prices.
//!
//! The direction rule: `stable` when the fitted change over the window is within ±2% or the line explains
//! less than 30% of the variance (r² < 0.3); otherwise `rising` or `falling` by the sign of the slope.

use linfa::prelude::*;
use linfa_linear::LinearRegression;
use ndarray::{Array1, Array2};
use serde::Serialize;

use crate::history::{Day, Series};
use crate::FeatureError;

/// A change within this fraction of the start is `stable`.
pub const STABLE_PCT: f64 = 0.02;
/// A line that explains less than this share of the variance is `stable`.
pub const MIN_R2: f64 = 0.3;
/// Days with prices a trend needs.
pub const MIN_POINTS: usize = 3;
/// The widest window.
pub const MAX_WINDOW_DAYS: u32 = 730;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Rising,
    Falling,
    Stable,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Trend {
    /// Currency units per day.
    pub slope_per_day: f64,
    /// The fitted line's change from the window's first day to its last, as a fraction.
    pub pct_change: f64,
    pub r2: f64,
    pub direction: Direction,
    /// Days with prices in the window.
    pub points: usize,
}

/// The trend of `series` over the `window_days` before `as_of`.
pub fn trend(
    series: &Series,
    as_of: Day,
    window_days: u32,
    units_per_price: i64,
) -> Result<Trend, FeatureError> {
    let from = as_of - window_days as Day;
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for (day, agg) in series.tiles().filter(|(d, _)| *d >= from && *d < as_of) {
        x.push((day - from) as f64);
        y.push(agg.sum as f64 / agg.n as f64 / units_per_price as f64);
    }
    if x.len() < MIN_POINTS {
        return Err(FeatureError::TooLittleHistory {
            days: x.len(),
            needed: MIN_POINTS as u32,
            window: window_days,
        });
    }
    let points = x.len();
    let records = Array2::from_shape_vec((points, 1), x).expect("one column");
    let targets = Array1::from(y);
    let dataset = Dataset::new(records, targets);
    let line = LinearRegression::new()
        .fit(&dataset)
        .map_err(|e| FeatureError::Spec(format!("the trend fit failed: {e}")))?;
    let slope = line.params()[0];
    let fitted = line.predict(dataset.records());
    let r2 = fitted.r2(&dataset).unwrap_or(0.0);
    let start = line.intercept();
    let end = start + slope * (window_days as f64 - 1.0);
    let pct_change = if start > 0.0 { end / start - 1.0 } else { 0.0 };
    let direction = if pct_change.abs() < STABLE_PCT || r2 < MIN_R2 {
        Direction::Stable
    } else if slope > 0.0 {
        Direction::Rising
    } else {
        Direction::Falling
    };
    Ok(Trend {
        slope_per_day: slope,
        pct_change,
        r2,
        direction,
        points,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(prices: impl IntoIterator<Item = (Day, f64)>) -> Series {
        let mut s = Series::default();
        for (d, p) in prices {
            s.add(d, crate::history::to_units(p, 10_000));
        }
        s
    }

    #[test]
    fn a_straight_line_is_found_and_named() {
        // 10.00 rising 0.05 a day over 30 days: +14.5% from the first day to the last.
        let s = series((0..30).map(|d| (d, 10.0 + 0.05 * d as f64)));
        let t = trend(&s, 30, 30, 10_000).unwrap();
        assert!((t.slope_per_day - 0.05).abs() < 1e-9, "{t:?}");
        assert!((t.r2 - 1.0).abs() < 1e-9);
        assert!((t.pct_change - 0.145).abs() < 1e-9);
        assert_eq!((t.direction, t.points), (Direction::Rising, 30));
        let falling = series((0..30).map(|d| (d, 10.0 - 0.05 * d as f64)));
        assert_eq!(
            trend(&falling, 30, 30, 10_000).unwrap().direction,
            Direction::Falling
        );
        // Flat with noise: stable.
        let flat = series((0..30).map(|d| (d, 10.0 + if d % 2 == 0 { 0.1 } else { -0.1 })));
        assert_eq!(
            trend(&flat, 30, 30, 10_000).unwrap().direction,
            Direction::Stable
        );
        // Days on or after as-of are not read; too few points is an error.
        assert!(matches!(
            trend(&s, 2, 30, 10_000),
            Err(FeatureError::TooLittleHistory { days: 2, .. })
        ));
    }
}
