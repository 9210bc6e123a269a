//! `features.toml`: the declarative list of a model's input features, in input order.
//!
//! Every feature is one variant of [`Feature`]: no free-form expressions, so a spec means the same thing to
//! the materialiser and to the server. A changed spec is a new model version; the manifest records the
//! spec's SHA-256 and the engine refuses a version whose spec file does not match it.
//!
//! ```toml
//! name = "price_v2"
//! kernel = 1
//! units_per_price = 10000      # prices are fixed point: integer units of 1/10000
//! min_history_days = 20        # days with prices in the 90 before as-of, else "too little history"
//! max_staleness_days = 28      # a lag looks this far back for a day with prices
//! max_lead_days = 60           # the horizon: a delivery further out than this is refused
//! default_lead_days = 30       # a request without a delivery date
//!
//! [[features]]
//! kind = "rolling"
//! stat = "mean"
//! days = 28
//! ```

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::FeatureError;

/// The kernel this crate implements; a spec written for another is refused.
pub const KERNEL: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureSpec {
    pub name: String,
    pub kernel: u32,
    pub units_per_price: i64,
    pub min_history_days: u32,
    pub max_staleness_days: u32,
    pub max_lead_days: u32,
    pub default_lead_days: u32,
    pub features: Vec<Feature>,
}

/// A window statistic over the observations of the days `[as_of - days, as_of)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stat {
    Mean,
    /// Sample standard deviation (n - 1); 0 below two observations.
    Std,
    Min,
    Max,
}

/// One input feature. History features read only days strictly before the as-of day; a window with no
/// observation falls back to the last price (`lag 1`), as the docs of each variant say.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Feature {
    /// ln(quantity).
    LogQuantity,
    /// Days from as-of to delivery.
    LeadDays,
    /// Month of the delivery date, 1 to 12.
    DeliveryMonth,
    /// Weekday of the delivery date, 0 (Monday) to 6.
    DeliveryWeekday,
    /// The material's category: its position in the vocabulary plus one; 0 for one not in it.
    Category {
        vocabulary: Vec<String>,
    },
    /// The supplier's code: its position in the vocabulary plus one; 0 for none or one not in it.
    Supplier {
        vocabulary: Vec<String>,
    },
    /// The material's list price; the last price when it has none.
    ListPrice,
    /// The supplier's reliability (0 to 1); `default` without a supplier.
    SupplierReliability {
        default: f64,
    },
    /// Mean price of the latest day with prices at or before `as_of - days`, looking back at most
    /// `max_staleness_days`; else the last price.
    Lag {
        days: u32,
    },
    Rolling {
        stat: Stat,
        days: u32,
    },
    /// lag 1 / lag `days` - 1.
    PctChange {
        days: u32,
    },
    /// (lag 1 - rolling mean) / rolling std over `days`; 0 when the std is 0.
    Zscore {
        days: u32,
    },
    /// The supplier's mean price for the material over `days` against the market's, minus 1; 0 without a
    /// supplier or its prices in the window.
    SupplierPremium {
        days: u32,
    },
    /// ln(observed price / rolling `stat` over `days`), the stat falling back to the last price as above.
    /// This and the next three describe an observed price (anomaly scoring): they need the row's price.
    PriceToRolling {
        stat: Stat,
        days: u32,
    },
    /// ln(observed price / lag `days`).
    PriceToLag {
        days: u32,
    },
    /// ln(observed price / list price), the last price standing in for a missing list price.
    PriceToList,
    /// (observed price − rolling mean) / rolling std over `days`; 0 when the std is 0.
    PriceZscore {
        days: u32,
    },
}

impl Feature {
    /// The feature's column name in training frames and in `features_used`.
    pub fn name(&self) -> String {
        match self {
            Feature::LogQuantity => "log_quantity".into(),
            Feature::LeadDays => "lead_days".into(),
            Feature::DeliveryMonth => "delivery_month".into(),
            Feature::DeliveryWeekday => "delivery_weekday".into(),
            Feature::Category { .. } => "category".into(),
            Feature::Supplier { .. } => "supplier".into(),
            Feature::ListPrice => "list_price".into(),
            Feature::SupplierReliability { .. } => "supplier_reliability".into(),
            Feature::Lag { days } => format!("lag_{days}"),
            Feature::Rolling { stat, days } => {
                format!("roll_{}_{days}", format!("{stat:?}").to_lowercase())
            }
            Feature::PctChange { days } => format!("pct_change_{days}"),
            Feature::Zscore { days } => format!("zscore_{days}"),
            Feature::SupplierPremium { days } => format!("supplier_premium_{days}"),
            Feature::PriceToRolling { stat, days } => {
                format!("log_price_to_{}_{days}", format!("{stat:?}").to_lowercase())
            }
            Feature::PriceToLag { days } => format!("log_price_to_lag_{days}"),
            Feature::PriceToList => "log_price_to_list".into(),
            Feature::PriceZscore { days } => format!("price_zscore_{days}"),
        }
    }

    /// Whether the feature describes an observed price (the row needs one).
    pub fn needs_price(&self) -> bool {
        matches!(
            self,
            Feature::PriceToRolling { .. }
                | Feature::PriceToLag { .. }
                | Feature::PriceToList
                | Feature::PriceZscore { .. }
        )
    }

    /// Whether the value is an integer code (compared exactly in parity checks).
    pub fn is_integer(&self) -> bool {
        matches!(
            self,
            Feature::LeadDays
                | Feature::DeliveryMonth
                | Feature::DeliveryWeekday
                | Feature::Category { .. }
                | Feature::Supplier { .. }
        )
    }
}

/// The widest history window any feature reads, in days.
pub const HISTORY_DAYS: u32 = 90;

impl FeatureSpec {
    pub fn parse(text: &str) -> Result<FeatureSpec, FeatureError> {
        let spec: FeatureSpec =
            toml::from_str(text).map_err(|e| FeatureError::Spec(e.to_string()))?;
        spec.check()?;
        Ok(spec)
    }

    pub fn from_file(path: &Path) -> Result<FeatureSpec, FeatureError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| FeatureError::Spec(format!("{}: {e}", path.display())))?;
        FeatureSpec::parse(&text)
            .map_err(|e| FeatureError::Spec(format!("{}: {e}", path.display())))
    }

    /// A spec of one history feature, for a figure the server computes with the kernel rather than a model
    /// (a supplier's premium, a window's mean): one day with prices needed, lags looking back
    /// `max_staleness_days`.
    pub fn single(feature: Feature, max_staleness_days: u32) -> FeatureSpec {
        FeatureSpec {
            name: feature.name(),
            kernel: KERNEL,
            units_per_price: crate::online::UNITS_PER_PRICE,
            min_history_days: 1,
            max_staleness_days,
            max_lead_days: 0,
            default_lead_days: 0,
            features: vec![feature],
        }
    }

    /// Whether rows need the observed price (an anomaly model's spec).
    pub fn needs_price(&self) -> bool {
        self.features.iter().any(Feature::needs_price)
    }

    /// Column names in input order.
    pub fn names(&self) -> Vec<String> {
        self.features.iter().map(Feature::name).collect()
    }

    fn check(&self) -> Result<(), FeatureError> {
        let fail = |m: String| Err(FeatureError::Spec(m));
        if self.kernel != KERNEL {
            return fail(format!(
                "kernel {} is not the one this build implements ({KERNEL})",
                self.kernel
            ));
        }
        if self.units_per_price <= 0 {
            return fail("units_per_price must be positive".into());
        }
        if self.features.is_empty() {
            return fail("a spec lists at least one feature".into());
        }
        for f in &self.features {
            let days = match f {
                Feature::Lag { days }
                | Feature::Rolling { days, .. }
                | Feature::PctChange { days }
                | Feature::Zscore { days }
                | Feature::SupplierPremium { days }
                | Feature::PriceToRolling { days, .. }
                | Feature::PriceToLag { days }
                | Feature::PriceZscore { days } => *days,
                _ => 1,
            };
            if days == 0 || days > HISTORY_DAYS {
                return fail(format!("{}: days must be 1 to {HISTORY_DAYS}", f.name()));
            }
        }
        if let Some(f) = self.features.iter().find(|f| {
            matches!(
                f,
                Feature::PriceToRolling {
                    stat: Stat::Std,
                    ..
                }
            )
        }) {
            return fail(format!(
                "{}: a price is compared to a mean, min or max",
                f.name()
            ));
        }
        let mut names = self.names();
        names.sort();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return fail(format!("feature {} is listed twice", w[0]));
        }
        Ok(())
    }
}
