use std::path::PathBuf;

/// Everything the engine can refuse or fail at. The server maps each variant to one status and code.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    Runtime(String),
    #[error("model at {path}: {reason}")]
    InvalidModel { path: PathBuf, reason: String },
    #[error("unknown model `{0}`")]
    ModelNotFound(String),
    #[error("model `{model}` has no version `{version}`")]
    VersionNotFound { model: String, version: String },
    #[error("model `{model}` is not ready")]
    NotReady { model: String },
    #[error("input `{name}`: {reason}")]
    InvalidInput { name: String, reason: String },
    #[error("{0}")]
    InvalidRequest(String),
    #[error("the queue of model `{model}` is full ({capacity} rows); retry later")]
    QueueFull { model: String, capacity: usize },
    #[error("the request's deadline passed before it ran")]
    DeadlineExceeded,
    #[error("the engine is shutting down")]
    ShuttingDown,
    #[error("inference failed: {0}")]
    Inference(#[from] crate::backend::BackendError),
}

impl EngineError {
    /// The stable snake_case code clients and metrics see; the server maps codes to statuses.
    pub fn code(&self) -> &'static str {
        match self {
            EngineError::ModelNotFound(_) => "model_not_found",
            EngineError::VersionNotFound { .. } => "version_not_found",
            EngineError::InvalidInput { .. } => "invalid_input",
            EngineError::InvalidRequest(_) => "invalid_request",
            EngineError::QueueFull { .. } => "overloaded",
            EngineError::NotReady { .. } => "model_not_ready",
            EngineError::ShuttingDown => "shutting_down",
            EngineError::DeadlineExceeded => "deadline_exceeded",
            EngineError::Inference(_)
            | EngineError::Runtime(_)
            | EngineError::InvalidModel { .. } => "internal",
        }
    }
}
