//! The one error format, in two shapes.
//!
//! Every error is an `ApiError`; each variant maps to one status and one stable snake_case code, in the
//! table in `status_and_code`. A handler's error becomes a response that carries an `ErrorReport` in its
//! extensions (V2 handlers return `V2Error`, which marks the report for the V2 shape); `render`, a layer
//! outside the one that stamps `x-request-id`, writes the body with that id.
//!
//! - `/v2/...` (Open Inference Protocol): `{"error": "<message>", "code": "<code>"}` (tritonclient reads
//!   `error`).
//! - Everything else: `{"error": {"code", "message", "details"}, "status_code", "timestamp", "request_id"}`,
//!   `details` holding field-level problems (`{"price": ["must be a number greater than 0"]}`) or the rows
//!   of a refused bulk write.
//!
//! Responses that are errors but did not come from here (a rejection inside axum) are rewritten into the
//! same shapes, so no plain-text error ever leaves the server.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use mercator_engine::EngineError;
use mercator_store::{FieldErrors, RowError, StoreError};
use serde_json::{json, Value};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("{0}")]
    BadRequest(String),
    /// A body or query that does not fit its schema, or values that break a rule, by field.
    #[error("{message}")]
    Validation {
        message: String,
        details: FieldErrors,
    },
    /// A bulk write refused: every offending row, nothing written.
    #[error("{} of {total} rows are invalid; nothing was written", rows.len())]
    InvalidRows { rows: Vec<RowError>, total: usize },
    #[error("the body is larger than the limit of {limit} bytes ({flag})")]
    BodyTooLarge { limit: usize, flag: &'static str },
    #[error("{rows} rows is more than the limit of {limit} in one request (--max-bulk-rows)")]
    TooManyRows { rows: usize, limit: usize },
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// A batch larger than a job may be (rows or bytes).
    #[error("the batch is too large: {0}")]
    BatchTooLarge(String),
    #[error("the organization has {limit} batch jobs queued or running, its limit (--batch-max-active-jobs); retry when one ends")]
    TooManyBatchJobs { limit: u64 },
    /// Results asked for before the job ended.
    #[error("the job is {0}; its results are ready when it ends")]
    ResultsNotReady(&'static str),
    #[error("the job's results expired at {0} (--batch-retention-secs) and were deleted")]
    ResultsExpired(String),
    /// Results asked of a replica other than the one whose data directory holds them.
    #[error("the job ran on node {0}, whose data directory holds its results: ask that server")]
    ResultsElsewhere(String),
    #[error("the data directory has {free} bytes free; this batch needs {needed} more (its upload, and for a job --batch-disk-factor times that)")]
    InsufficientStorage { free: u64, needed: u64 },
    #[error("an API key is required: send `Authorization: Bearer <key>` or `X-API-Key: <key>`")]
    MissingKey,
    #[error("the API key is not valid")]
    InvalidKey,
    #[error("this needs the {0} role")]
    Forbidden(&'static str),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    #[error("no route for {0}")]
    RouteNotFound(String),
    #[error("{0} is not allowed here")]
    MethodNotAllowed(String),
    #[error("the server is shutting down")]
    Draining,
    #[error("this API key holds {limit} open WebSockets, its limit (--max-sockets-per-key); close one first")]
    TooManySockets { limit: usize },
    /// A pool of worker threads the server needs has lost some (`/readyz`).
    #[error("the {0} threads are not all running")]
    PoolBroken(&'static str),
    /// A handler panicked: a bug; the request failed and the server goes on.
    #[error("the handler panicked: {0}")]
    Panicked(String),
    /// An uploaded model that does not pass validation; nothing was registered.
    #[error("the upload failed validation: {0}")]
    InvalidModel(String),
    #[error("store: {0}")]
    Store(StoreError),
    /// A prediction the model cannot make honestly (too little history, beyond its horizon, ...).
    #[error("{0}")]
    Prediction(#[from] mercator_features::FeatureError),
}

impl ApiError {
    /// 422 about one field.
    pub fn invalid(field: &str, message: impl Into<String>) -> ApiError {
        let message = message.into();
        ApiError::Validation {
            details: FieldErrors::one(field, message.clone()),
            message,
        }
    }

    /// A time parameter: RFC 3339 or a date; 422 naming the field otherwise.
    pub fn parse_time(
        field: &str,
        text: Option<String>,
    ) -> Result<Option<mercator_store::Time>, ApiError> {
        text.map(|t| {
            mercator_store::parse_time(&t).ok_or_else(|| ApiError::Validation {
                message: format!("`{field}` is not a time"),
                details: FieldErrors::one(
                    field,
                    format!(
                        "use RFC 3339 (2025-03-01T12:00:00Z) or a date; it {}",
                        mercator_store::DATE_RANGE
                    ),
                ),
            })
        })
        .transpose()
    }

    /// Maps a store error for a resource (`NotFound` names it).
    pub fn store(resource: &'static str) -> impl FnOnce(StoreError) -> ApiError {
        move |e| match e {
            StoreError::NotFound => ApiError::NotFound(resource),
            StoreError::Conflict(message) => ApiError::Conflict(message),
            StoreError::Invalid(details) => ApiError::Validation {
                message: format!("the {resource} has invalid values"),
                details,
            },
            StoreError::Rows(rows) => {
                let total = rows.len();
                ApiError::InvalidRows { rows, total }
            }
            e => ApiError::Store(e),
        }
    }

    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        use EngineError as E;
        match self {
            ApiError::Engine(e) => match e {
                E::ModelNotFound(_) => (StatusCode::NOT_FOUND, "model_not_found"),
                E::VersionNotFound { .. } => (StatusCode::NOT_FOUND, "version_not_found"),
                E::InvalidInput { .. } => (StatusCode::BAD_REQUEST, "invalid_input"),
                E::InvalidRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
                E::QueueFull { .. } => (StatusCode::TOO_MANY_REQUESTS, "overloaded"),
                E::NotReady { .. } => (StatusCode::SERVICE_UNAVAILABLE, "model_not_ready"),
                E::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
                E::DeadlineExceeded => (StatusCode::GATEWAY_TIMEOUT, "deadline_exceeded"),
                E::Inference(_) | E::Runtime(_) | E::InvalidModel { .. } => {
                    (StatusCode::INTERNAL_SERVER_ERROR, "internal")
                }
            },
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Validation { .. } => (StatusCode::BAD_REQUEST, "validation_error"),
            ApiError::InvalidRows { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_rows"),
            ApiError::BodyTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            ApiError::TooManyRows { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_many_rows"),
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::BatchTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "batch_too_large"),
            ApiError::TooManyBatchJobs { .. } => {
                (StatusCode::TOO_MANY_REQUESTS, "too_many_batch_jobs")
            }
            ApiError::ResultsNotReady(_) => (StatusCode::CONFLICT, "results_not_ready"),
            ApiError::ResultsExpired(_) => (StatusCode::GONE, "results_expired"),
            ApiError::ResultsElsewhere(_) => {
                (StatusCode::MISDIRECTED_REQUEST, "results_on_another_node")
            }
            ApiError::InsufficientStorage { .. } => {
                (StatusCode::INSUFFICIENT_STORAGE, "insufficient_storage")
            }
            ApiError::MissingKey | ApiError::InvalidKey => {
                (StatusCode::UNAUTHORIZED, "unauthorized")
            }
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::RouteNotFound(_) => (StatusCode::NOT_FOUND, "route_not_found"),
            ApiError::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::Draining => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            ApiError::TooManySockets { .. } => (StatusCode::TOO_MANY_REQUESTS, "too_many_sockets"),
            ApiError::PoolBroken(_) => (StatusCode::SERVICE_UNAVAILABLE, "not_ready"),
            ApiError::Panicked(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            ApiError::InvalidModel(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_model"),
            ApiError::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            ApiError::Prediction(e) => {
                use mercator_features::FeatureError as F;
                match e {
                    F::Quantity(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_quantity"),
                    F::Lead { .. } | F::Horizon { .. } => {
                        (StatusCode::UNPROCESSABLE_ENTITY, "beyond_horizon")
                    }
                    F::Price(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_price"),
                    F::TooLittleHistory { .. } => {
                        (StatusCode::UNPROCESSABLE_ENTITY, "insufficient_history")
                    }
                    F::Spec(_) | F::Materialize(_) | F::NoPrice => {
                        (StatusCode::INTERNAL_SERVER_ERROR, "internal")
                    }
                }
            }
        }
    }

    fn details(&self) -> Value {
        match self {
            ApiError::Validation { details, .. } => json!(details),
            ApiError::InvalidRows { rows, .. } => {
                // Enough to fix a file; a file that is all wrong does not produce a giant answer.
                json!({ "rows": rows.iter().take(MAX_REPORTED_ROWS).collect::<Vec<_>>(),
                        "invalid_rows": rows.len() })
            }
            _ => json!({}),
        }
    }
}

/// How many invalid rows a refused bulk write lists (it counts them all).
pub const MAX_REPORTED_ROWS: usize = 100;

/// Which protocol's shape an error is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// The REST API's envelope.
    Rest,
    /// The Open Inference Protocol's `{"error", "code"}`.
    V2,
}

/// What `render` turns into a body.
#[derive(Debug, Clone)]
pub struct ErrorReport {
    pub code: &'static str,
    pub message: String,
    pub details: Value,
    pub protocol: Protocol,
}

/// How long a client should wait before retrying a 429 or 503, in seconds.
const RETRY_AFTER: HeaderValue = HeaderValue::from_static("1");

impl ApiError {
    fn respond(self, protocol: Protocol) -> Response {
        let (status, code) = self.status_and_code();
        let message = if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
            // The detail goes to the log (with the request id); the client gets the id.
            tracing::error!(error = %self, "request failed");
            "internal error; the server log has the detail under this response's request id"
                .to_string()
        } else {
            self.to_string()
        };
        let mut response = status.into_response();
        if matches!(
            status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, RETRY_AFTER);
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response.extensions_mut().insert(ErrorReport {
            code,
            message,
            details: self.details(),
            protocol,
        });
        response
    }

    /// The error as a response in the shape the request's path calls for.
    pub fn for_path(self, path: &str) -> Response {
        self.respond(if path.starts_with("/v2") {
            Protocol::V2
        } else {
            Protocol::Rest
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.respond(Protocol::Rest)
    }
}

/// An error of a V2 handler: the same error, in the Open Inference Protocol's shape.
#[derive(Debug)]
pub struct V2Error(pub ApiError);

impl<E: Into<ApiError>> From<E> for V2Error {
    fn from(e: E) -> Self {
        V2Error(e.into())
    }
}

impl IntoResponse for V2Error {
    fn into_response(self) -> Response {
        self.0.respond(Protocol::V2)
    }
}

/// The answer to a request whose handler panicked (tower-http's `CatchPanicLayer`): counted, logged, and a
/// 500 in the envelope instead of a dropped connection.
pub fn panicked(payload: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = mercator_engine::metrics::panic_message(payload.as_ref());
    mercator_engine::metrics::count_panic("handler", &message);
    ApiError::Panicked(message).into_response()
}

/// Writes every error response's body (the outermost layer but one, so the response already carries its
/// `x-request-id`). Synchronous and allocation-free for the responses that are not errors, which is all
/// of them on the inference path.
pub fn render(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let report = match parts.extensions.remove::<ErrorReport>() {
        Some(report) => report,
        None if is_json(&parts.headers) => return Response::from_parts(parts, body),
        // An error from inside axum or tower (a rejection the extractors did not catch).
        None => foreign(status),
    };
    let body = match report.protocol {
        Protocol::V2 => json!({ "error": report.message, "code": report.code }),
        Protocol::Rest => json!({
            "error": { "code": report.code, "message": report.message, "details": report.details },
            "status_code": status.as_u16(),
            "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "request_id": parts
                .headers
                .get(crate::request_id::HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default(),
        }),
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, axum::body::Body::from(body.to_string()))
}

fn is_json(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

fn foreign(status: StatusCode) -> ErrorReport {
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    };
    ErrorReport {
        code,
        message: status.canonical_reason().unwrap_or("error").to_lowercase(),
        details: json!({}),
        protocol: Protocol::Rest,
    }
}
