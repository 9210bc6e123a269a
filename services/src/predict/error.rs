//! What a prediction can refuse or fail at.

use mercator_engine::EngineError;
use mercator_features::FeatureError;
use mercator_store::{FieldErrors, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// No honest answer exists (too little history, beyond the model's horizon, a bad quantity...).
    #[error(transparent)]
    Feature(#[from] FeatureError),
    /// A material or supplier the organization does not have.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// Request fields that break a rule, by field.
    #[error("{message}")]
    Invalid {
        message: String,
        details: FieldErrors,
    },
    #[error("more than the limit of {limit} rows in one request (--max-bulk-rows)")]
    TooManyRows { limit: usize },
    /// The version that would answer cannot answer this kind of question (no feature spec, no interval
    /// calibration, no anomaly thresholds): activate another.
    #[error("{0}")]
    Unservable(String),
    /// A served version's feature spec could not be read: the data directory is damaged.
    #[error("the feature spec of version {version} of {model}: {reason}")]
    Spec {
        model: String,
        version: u64,
        reason: String,
    },
    /// The model's output does not have the shape its kind promises.
    #[error("{0}")]
    Output(String),
    #[error("store: {0}")]
    Store(StoreError),
}

impl PredictError {
    /// 400 about one field.
    pub fn invalid(field: &str, message: impl Into<String>) -> PredictError {
        let message = message.into();
        PredictError::Invalid {
            details: FieldErrors::one(field, message.clone()),
            message,
        }
    }

    /// A store error looking up `resource`: not found names it.
    pub fn store(resource: &'static str) -> impl FnOnce(StoreError) -> PredictError {
        move |e| match e {
            StoreError::NotFound(_) => PredictError::NotFound(resource),
            e => PredictError::Store(e),
        }
    }

    /// The stable snake_case code (the server's table maps it to a status).
    pub fn code(&self) -> &'static str {
        match self {
            PredictError::Engine(e) => e.code(),
            PredictError::Feature(e) => e.code(),
            PredictError::NotFound(_) => "not_found",
            PredictError::Invalid { .. } => "validation_error",
            PredictError::TooManyRows { .. } => "too_many_rows",
            PredictError::Unservable(_) => "conflict",
            PredictError::Spec { .. } | PredictError::Output(_) | PredictError::Store(_) => {
                "internal"
            }
        }
    }

    /// The fields at fault, for an `Invalid` error.
    pub fn details(&self) -> Option<&FieldErrors> {
        match self {
            PredictError::Invalid { details, .. } => Some(details),
            _ => None,
        }
    }
}
