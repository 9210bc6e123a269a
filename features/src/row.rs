//! The one place a feature row is computed: the materialiser calls [`assemble`] for every training row, the
//! server for every request, on the same integer tiles, with the same sequence of float operations. So a
//! served row equals its training row bit for bit.

use std::cell::RefCell;

use chrono::Datelike;

use crate::history::{date_of, to_units, Agg, Day, Series};
use crate::spec::{Feature, FeatureSpec, Stat, HISTORY_DAYS};
use crate::FeatureError;

/// What a row is computed from besides the price history.
#[derive(Debug, Clone, Copy)]
pub struct RowInput<'a> {
    /// History features read only days strictly before this one.
    pub as_of: Day,
    /// Read by `log_quantity` only (and must then be positive).
    pub quantity: f64,
    /// None: `as_of + default_lead_days`.
    pub delivery: Option<Day>,
    pub category: &'a str,
    pub supplier_code: Option<&'a str>,
    pub list_price: Option<f64>,
    pub supplier_reliability: Option<f64>,
    /// The observed unit price, for the features that describe one (anomaly scoring); None otherwise.
    pub price: Option<f64>,
}

/// The price series a row reads: the material's market, and the material from the row's supplier.
#[derive(Debug, Clone, Copy)]
pub struct RowHistory<'a> {
    pub market: &'a Series,
    pub supplier: Option<&'a Series>,
}

/// The days a row may be computed for: ±1,000,000 days from 1970 (the API takes 1900 to 2200). Outside,
/// [`FeatureError::Day`]; inside, no day arithmetic can overflow.
pub const MAX_DAY: Day = 1_000_000;

/// `days` before `day`, saturating.
fn back(day: Day, days: u32) -> Day {
    day.saturating_sub(Day::try_from(days).unwrap_or(Day::MAX))
}

/// `days` after `day`, saturating.
fn forward(day: Day, days: u32) -> Day {
    day.saturating_add(Day::try_from(days).unwrap_or(Day::MAX))
}

/// The feature row in the spec's order, or why there is none.
pub fn assemble(
    spec: &FeatureSpec,
    input: &RowInput,
    history: RowHistory,
) -> Result<Vec<f64>, FeatureError> {
    let uses_quantity = spec.features.contains(&Feature::LogQuantity);
    if uses_quantity && !(input.quantity > 0.0 && input.quantity.is_finite()) {
        return Err(FeatureError::Quantity(input.quantity));
    }
    // An observed price counts in the history's fixed point, like every price the windows hold.
    let price = match input.price {
        _ if !spec.needs_price() => 0.0,
        None => return Err(FeatureError::NoPrice),
        Some(p) => match to_units(p, spec.units_per_price) {
            units if units > 0 && p.is_finite() => units as f64 / spec.units_per_price as f64,
            _ => return Err(FeatureError::Price(p)),
        },
    };
    let as_of = input.as_of;
    for day in [Some(as_of), input.delivery].into_iter().flatten() {
        if !(-MAX_DAY..=MAX_DAY).contains(&day) {
            return Err(FeatureError::Day(day));
        }
    }
    let delivery = input
        .delivery
        .unwrap_or(forward(as_of, spec.default_lead_days));
    let lead = delivery - as_of;
    if lead < 0 || lead > spec.max_lead_days as Day {
        return Err(FeatureError::Lead {
            lead_days: lead as i64,
            max: spec.max_lead_days,
        });
    }
    let days = history
        .market
        .days_with_prices(back(as_of, HISTORY_DAYS), as_of);
    if days < spec.min_history_days as usize {
        return Err(FeatureError::TooLittleHistory {
            days,
            needed: spec.min_history_days,
            window: HISTORY_DAYS,
        });
    }
    let k = Kernel {
        spec,
        market: history.market,
        as_of,
        windows: RefCell::new(Vec::new()),
    };
    let lag1 = k.lag(1).ok_or(FeatureError::TooLittleHistory {
        days: 0,
        needed: 1,
        window: spec.max_staleness_days + 1,
    })?;
    let delivery_date = date_of(delivery);
    let row = spec
        .features
        .iter()
        .map(|f| match f {
            Feature::LogQuantity => input.quantity.ln(),
            Feature::LeadDays => lead as f64,
            Feature::DeliveryMonth => delivery_date.month() as f64,
            Feature::DeliveryWeekday => delivery_date.weekday().num_days_from_monday() as f64,
            Feature::Category { vocabulary } => code(vocabulary, Some(input.category)),
            Feature::Supplier { vocabulary } => code(vocabulary, input.supplier_code),
            Feature::ListPrice => input.list_price.unwrap_or(lag1),
            Feature::SupplierReliability { default } => {
                input.supplier_reliability.unwrap_or(*default)
            }
            Feature::Lag { days } => k.lag(*days).unwrap_or(lag1),
            Feature::Rolling { stat, days } => {
                let w = k.window(k.market, *days);
                match stat {
                    Stat::Mean => k.mean(&w).unwrap_or(lag1),
                    Stat::Std => k.std(&w),
                    Stat::Min => k.price(w.min).filter(|_| w.n > 0).unwrap_or(lag1),
                    Stat::Max => k.price(w.max).filter(|_| w.n > 0).unwrap_or(lag1),
                }
            }
            Feature::PctChange { days } => lag1 / k.lag(*days).unwrap_or(lag1) - 1.0,
            Feature::Zscore { days } => {
                let w = k.window(k.market, *days);
                let std = k.std(&w);
                if std == 0.0 {
                    0.0
                } else {
                    (lag1 - k.mean(&w).unwrap_or(lag1)) / std
                }
            }
            Feature::SupplierPremium { days } => {
                let market = k.mean(&k.window(k.market, *days));
                let own = history.supplier.and_then(|s| k.mean(&k.window(s, *days)));
                match (own, market) {
                    (Some(own), Some(market)) => own / market - 1.0,
                    _ => 0.0,
                }
            }
            Feature::PriceToRolling { stat, days } => {
                let w = k.window(k.market, *days);
                let reference = match stat {
                    Stat::Min => k.price(w.min).filter(|_| w.n > 0),
                    Stat::Max => k.price(w.max).filter(|_| w.n > 0),
                    _ => k.mean(&w),
                };
                (price / reference.unwrap_or(lag1)).ln()
            }
            Feature::PriceToLag { days } => (price / k.lag(*days).unwrap_or(lag1)).ln(),
            Feature::PriceToList => (price / input.list_price.unwrap_or(lag1)).ln(),
            Feature::PriceZscore { days } => {
                let w = k.window(k.market, *days);
                let std = k.std(&w);
                if std == 0.0 {
                    0.0
                } else {
                    (price - k.mean(&w).unwrap_or(lag1)) / std
                }
            }
        })
        .collect();
    Ok(row)
}

/// Position in the vocabulary plus one; 0 for none or an unknown value.
fn code(vocabulary: &[String], value: Option<&str>) -> f64 {
    value
        .and_then(|v| vocabulary.iter().position(|x| x == v))
        .map_or(0.0, |i| (i + 1) as f64)
}

struct Kernel<'a> {
    spec: &'a FeatureSpec,
    market: &'a Series,
    as_of: Day,
    /// Windows already summed for this row, by series and length: a spec asks for the same window for
    /// several statistics (mean, std, min, max of 28 days), and summing it once is 4x less work.
    windows: RefCell<Vec<(*const Series, u32, Agg)>>,
}

impl Kernel<'_> {
    fn scale(&self) -> f64 {
        self.spec.units_per_price as f64
    }

    fn price(&self, units: i64) -> Option<f64> {
        Some(units as f64 / self.scale())
    }

    fn window(&self, series: &Series, days: u32) -> Agg {
        let key = series as *const Series;
        if let Some((_, _, agg)) = self
            .windows
            .borrow()
            .iter()
            .find(|(s, d, _)| *s == key && *d == days)
        {
            return *agg;
        }
        let agg = series.window(back(self.as_of, days), self.as_of);
        self.windows.borrow_mut().push((key, days, agg));
        agg
    }

    fn mean(&self, agg: &Agg) -> Option<f64> {
        (agg.n > 0).then(|| agg.sum as f64 / agg.n as f64 / self.scale())
    }

    /// Sample standard deviation from exact integers: (n·Σx² − (Σx)²) / (n·(n−1)) is never negative.
    fn std(&self, agg: &Agg) -> f64 {
        if agg.n < 2 {
            return 0.0;
        }
        let n = agg.n as i128;
        let numerator = n
            .saturating_mul(agg.sumsq)
            .saturating_sub(agg.sum.saturating_mul(agg.sum));
        (numerator as f64 / (n * (n - 1)) as f64).sqrt() / self.scale()
    }

    /// The mean price of the latest day at or before `as_of - days`, at most `max_staleness_days` older.
    fn lag(&self, days: u32) -> Option<f64> {
        let to = back(self.as_of, days);
        let from = back(to, self.spec.max_staleness_days);
        self.market
            .latest(from, to)
            .and_then(|(_, agg)| self.mean(&agg))
    }
}
