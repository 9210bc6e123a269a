//! The feature pipeline: one implementation of every feature, used to materialise training frames and to
//! serve predictions, so the two can never disagree.
//!
//! - [`spec`]: `features.toml`, the declarative list of a model's input features.
//! - [`history`]: price series as exact integer day tiles, folded price by price (serving) or built by a
//!   Polars group-by (materialising); equal either way.
//! - [`row`]: the one function that turns tiles and a request into a feature row.
//! - [`materialize`]: `mercator features materialize`, Polars from file to training frame.
//! - [`delivery`]: a supplier's order book as of a day, the supplier-risk model's features.
//! - [`demand`]: a material's order history as of a day, the demand model's features.
//!
//! The "as of" rule: a row's history features read only days strictly before its as-of day (the
//! observation's day in training, the request's day when serving); the delivery date feeds calendar and
//! lead-time features and never moves that cut-off.

pub mod delivery;
pub mod demand;
pub mod drift;
pub mod history;
pub mod materialize;
pub mod online;
pub mod profile;
pub mod row;
pub mod spec;
pub mod trend;

pub use history::{date_of, day_of, Day, Series};
/// The Polars this crate builds its frames with, for readers of them.
pub use polars;
pub use row::{assemble, RowHistory, RowInput};
pub use spec::{Feature, FeatureSpec};

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum FeatureError {
    #[error("feature spec: {0}")]
    Spec(String),
    #[error("quantity must be a positive number, got {0}")]
    Quantity(f64),
    #[error("the observed price must be a positive number, got {0}")]
    Price(f64),
    #[error("these features describe an observed price, and the row has none")]
    NoPrice,
    #[error("the delivery is {lead_days} days after the as-of date; the model covers 0 to {max}")]
    Lead { lead_days: i64, max: u32 },
    #[error("{days} days ahead asked; the model forecasts 1 to {max}")]
    Horizon { days: u32, max: usize },
    #[error(
        "too little price history: {days} days with prices in the {window} days before, {needed} needed"
    )]
    TooLittleHistory {
        days: usize,
        needed: u32,
        window: u32,
    },
    #[error(
        "too little order history: the material's first order in the {window} days before is {days} days back, {needed} needed"
    )]
    TooLittleOrderHistory {
        days: usize,
        needed: u32,
        window: u32,
    },
    #[error("materialize: {0}")]
    Materialize(String),
    #[error("day {0} (days since 1970-01-01) is outside the range features are computed for")]
    Day(i32),
}

impl FeatureError {
    /// The stable snake_case code of an answer that cannot be given; a spec or materialisation failure is
    /// the server's own (`internal`).
    pub fn code(&self) -> &'static str {
        match self {
            FeatureError::Quantity(_) => "invalid_quantity",
            FeatureError::Lead { .. } | FeatureError::Horizon { .. } => "beyond_horizon",
            FeatureError::Price(_) => "invalid_price",
            FeatureError::Day(_) => "invalid_date",
            FeatureError::TooLittleHistory { .. } | FeatureError::TooLittleOrderHistory { .. } => {
                "insufficient_history"
            }
            FeatureError::Spec(_) | FeatureError::Materialize(_) | FeatureError::NoPrice => {
                "internal"
            }
        }
    }
}

/// The SHA-256 of a spec file's bytes, as the manifest records it.
pub fn spec_sha256(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
