//! What a batch (inline or a job) can answer instead of results, and what one of its rows can carry.

use mercator_engine::EngineError;
use mercator_store::{FieldErrors, StoreError};

use crate::input::InputError;
use crate::predict::PredictError;

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("{0}")]
    BadRequest(String),
    /// Values that do not fit, by field (a row's, or the request's).
    #[error("{message}")]
    Validation {
        message: String,
        details: FieldErrors,
    },
    /// More rows or bytes than a job may have.
    #[error("the batch is too large: {0}")]
    BatchTooLarge(String),
    /// An upload longer than its limit (`flag` the setting).
    #[error("the body is larger than the limit of {limit} bytes ({flag})")]
    BodyTooLarge { limit: usize, flag: &'static str },
    /// The upload stalled past the body read timeout.
    #[error(
        "the request body stalled longer than the body read timeout (--body-read-timeout-secs)"
    )]
    BodyTimeout,
    #[error("the organization's batch jobs hold {used} bytes of disk and this one needs {needed} more: over its quota of {limit} bytes (--batch-max-disk-bytes-per-org); retry when older results expire")]
    DiskQuota { used: u64, needed: u64, limit: u64 },
    #[error("the organization has {limit} batch jobs queued or running, its limit (--batch-max-active-jobs); retry when one ends")]
    TooManyBatchJobs { limit: u64 },
    #[error("the data directory has {free} bytes free; this batch needs {needed} more (its upload, and for a job --batch-disk-factor times that)")]
    InsufficientStorage { free: u64, needed: u64 },
    /// Results asked for before the job ended.
    #[error("the job is {0}; its results are ready when it ends")]
    ResultsNotReady(&'static str),
    #[error("the job's results expired at {0} (--batch-retention-secs) and were deleted")]
    ResultsExpired(String),
    /// The server's own failure, named for what failed (batch files, a task, the preparing threads).
    #[error("{what}: {detail}")]
    Internal { what: &'static str, detail: String },
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Predict(#[from] PredictError),
    /// The store's answer about a batch job (not found, ...).
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

impl From<InputError> for BatchError {
    fn from(e: InputError) -> BatchError {
        match e {
            InputError::BadRequest(message) => BatchError::BadRequest(message),
            InputError::Invalid { message, details } => BatchError::Validation { message, details },
        }
    }
}

impl BatchError {
    /// One field's problem.
    pub fn invalid(field: &str, message: impl Into<String>) -> BatchError {
        InputError::invalid(field, message).into()
    }

    /// The server's own failure at `what`.
    pub fn internal(what: &'static str, e: impl std::fmt::Display) -> BatchError {
        BatchError::Internal {
            what,
            detail: e.to_string(),
        }
    }

    /// The stable code: a row's `error_code`, and what the server maps to a status.
    pub fn code(&self) -> &'static str {
        match self {
            BatchError::BadRequest(_) => "bad_request",
            BatchError::Validation { .. } => "validation_error",
            BatchError::BatchTooLarge(_) => "batch_too_large",
            BatchError::BodyTooLarge { .. } => "body_too_large",
            BatchError::BodyTimeout => "body_timeout",
            BatchError::DiskQuota { .. } => "disk_quota_exceeded",
            BatchError::TooManyBatchJobs { .. } => "too_many_batch_jobs",
            BatchError::InsufficientStorage { .. } => "insufficient_storage",
            BatchError::ResultsNotReady(_) => "results_not_ready",
            BatchError::ResultsExpired(_) => "results_expired",
            BatchError::Internal { .. } => "internal",
            BatchError::Engine(e) => e.code(),
            BatchError::Predict(e) => e.code(),
            BatchError::Store(e) => e.code(),
        }
    }

    /// A failure of the store's connection (not of the job): the chunk is let go for another try, not the
    /// job failed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            BatchError::Store(StoreError::Database(_))
                | BatchError::Predict(PredictError::Store(StoreError::Database(_)))
        )
    }

    /// The engine's error inside, whichever layer carried it up.
    pub fn engine(&self) -> Option<&EngineError> {
        match self {
            BatchError::Engine(e) | BatchError::Predict(PredictError::Engine(e)) => Some(e),
            _ => None,
        }
    }
}
