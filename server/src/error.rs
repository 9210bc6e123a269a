//! The one error format, in two shapes.
//!
//! Every error is an `ApiError`; each has one stable snake_case code (`code`: the domain's and the engine's
//! errors bring their own), and [`status`] is the one table from codes to statuses. A handler's error
//! becomes a response that carries an `ErrorReport` in its extensions (V2 handlers return `V2Error`, which
//! marks the report for the V2 shape); `render`, a layer outside the one that stamps `x-request-id`, writes
//! the body with that id.
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
use mercator_services::input::InputError;
use mercator_services::jobs::BatchError;
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
    #[error("more than the limit of {limit} rows in one request (--max-bulk-rows)")]
    TooManyRows { limit: usize },
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error(
        "the request body stalled longer than the body read timeout (--body-read-timeout-secs)"
    )]
    BodyTimeout,
    #[error("the server is handling its most heavy requests (uploads, bulk writes, batches) at once (--max-heavy-requests); retry shortly")]
    Busy,
    #[error("the organization has {limit} heavy requests (uploads, bulk writes, batches) in progress, its limit (--max-heavy-requests-per-org); retry when one ends")]
    TooManyHeavyRequests { limit: usize },
    #[error("an API key is required: send `Authorization: Bearer <key>` or `X-API-Key: <key>`")]
    MissingKey,
    #[error("the API key is not valid")]
    InvalidKey,
    #[error("this needs the {0} role")]
    Forbidden(&'static str),
    #[error("the API key expired at {0}")]
    KeyExpired(mercator_store::Time),
    #[error("the API key's scopes do not include `{0}`, which this route needs")]
    InsufficientScope(&'static str),
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
    /// A rate limit reached: its rule, the rate, whose it is (a key's, a client address's).
    #[error("rate limit `{rule}` of {rate} per {whose} reached; retry in {retry_after} s")]
    RateLimited {
        rule: &'static str,
        rate: String,
        whose: &'static str,
        retry_after: u64,
    },
    #[error("this API key holds {limit} open WebSockets, its limit (--max-sockets-per-key); close one first")]
    TooManySockets { limit: usize },
    /// A pool of worker threads the server needs has lost some (`/readyz`).
    #[error("the {0} threads are not all running")]
    PoolBroken(&'static str),
    /// The change feed has gone unread longer than --fleet-max-lag-secs (`/readyz`).
    #[error(
        "the change feed has not been read for {0} s: this replica may serve what others changed"
    )]
    FeedBehind(u64),
    /// A handler panicked: a bug; the request failed and the server goes on.
    #[error("the handler panicked: {0}")]
    Panicked(String),
    /// An uploaded model that does not pass validation; nothing was registered.
    #[error("the upload failed validation: {0}")]
    InvalidModel(String),
    #[error("store: {0}")]
    Store(StoreError),
    /// The server's own failure, named for what failed (batch files, a staging directory, a task): 500.
    #[error("{what}: {detail}")]
    Internal { what: &'static str, detail: String },
    /// A prediction the model cannot make honestly (too little history, beyond its horizon, ...).
    #[error("{0}")]
    Prediction(#[from] mercator_features::FeatureError),
    #[error(transparent)]
    Predict(#[from] mercator_services::predict::PredictError),
    /// Signing in, refreshing, or an access token refused.
    #[error(transparent)]
    Session(mercator_services::identity::sessions::SessionError),
    /// A user refused (a field, a duplicate email).
    #[error(transparent)]
    Users(#[from] mercator_services::identity::users::UserError),
    /// A batch's answer instead of results (too large, no room, not ready, ...).
    #[error(transparent)]
    Batch(BatchError),
    /// A monitoring report that cannot be given (a version without a reference profile, an unknown
    /// window).
    #[error(transparent)]
    Monitor(mercator_services::monitor::MonitorError),
    /// A sourcing move the RFQ's state, deadline or invitations do not allow.
    #[error(transparent)]
    Sourcing(mercator_services::sourcing::SourcingError),
    /// An order move its state does not allow.
    #[error(transparent)]
    Supply(mercator_services::supply::SupplyError),
}

/// Supply's error: the store's, or fields.
impl From<mercator_services::supply::SupplyError> for ApiError {
    fn from(e: mercator_services::supply::SupplyError) -> ApiError {
        use mercator_services::supply::SupplyError;
        match e {
            SupplyError::Store(e) => e.into(),
            SupplyError::Invalid { message, details } => ApiError::Validation { message, details },
            SupplyError::Predict(e) => e.into(),
            e @ SupplyError::State(_) => ApiError::Supply(e),
        }
    }
}

/// Sourcing's error as it is, except the store's and field errors, which have their own variants.
impl From<mercator_services::sourcing::SourcingError> for ApiError {
    fn from(e: mercator_services::sourcing::SourcingError) -> ApiError {
        use mercator_services::sourcing::SourcingError;
        match e {
            SourcingError::Store(e) => e.into(),
            SourcingError::Invalid { message, details } => {
                ApiError::Validation { message, details }
            }
            e => ApiError::Sourcing(e),
        }
    }
}

/// Monitoring's error as it is, except the engine's and the store's, which have their own variants.
impl From<mercator_services::monitor::MonitorError> for ApiError {
    fn from(e: mercator_services::monitor::MonitorError) -> ApiError {
        use mercator_services::monitor::MonitorError;
        match e {
            MonitorError::Engine(e) => e.into(),
            MonitorError::Store(e) => e.into(),
            e => ApiError::Monitor(e),
        }
    }
}

/// A batch's error as it is, except the store's about a job, which names it.
impl From<BatchError> for ApiError {
    fn from(e: BatchError) -> ApiError {
        match e {
            BatchError::Store(e) => e.into(),
            e => ApiError::Batch(e),
        }
    }
}

/// Too many sign-ins for one account is a rate limit like the others; the rest are the session's own.
impl From<mercator_services::identity::sessions::SessionError> for ApiError {
    fn from(e: mercator_services::identity::sessions::SessionError) -> ApiError {
        use mercator_services::identity::sessions::SessionError;
        match e {
            SessionError::Throttled { rate, retry_after } => ApiError::RateLimited {
                rule: "login",
                rate,
                whose: "account",
                retry_after,
            },
            SessionError::Store(e) => e.into(),
            e => ApiError::Session(e),
        }
    }
}

/// A rule change refused: its field, the organization's limit, or the store's answer about the rule.
impl From<mercator_services::alerts::RuleError> for ApiError {
    fn from(e: mercator_services::alerts::RuleError) -> ApiError {
        use mercator_services::alerts::RuleError;
        match e {
            RuleError::Invalid { message, details } => ApiError::Validation { message, details },
            RuleError::Conflict(message) => ApiError::Conflict(message),
            RuleError::Store(e) => e.into(),
        }
    }
}

/// A key refused: its field, or the store's answer.
impl From<mercator_services::identity::KeyError> for ApiError {
    fn from(e: mercator_services::identity::KeyError) -> ApiError {
        use mercator_services::identity::KeyError;
        match e {
            KeyError::Invalid { message, details } => ApiError::Validation { message, details },
            KeyError::Store(e) => e.into(),
        }
    }
}

/// A registry change refused, as the engine, the store (about a model) or the registry says.
impl From<mercator_services::registry::RegistryError> for ApiError {
    fn from(e: mercator_services::registry::RegistryError) -> ApiError {
        use mercator_services::registry::RegistryError;
        match e {
            RegistryError::Engine(e) => ApiError::Engine(e),
            RegistryError::Store(e) => e.into(),
            RegistryError::Conflict(message) => ApiError::Conflict(message),
            RegistryError::Invalid { message, details } => {
                ApiError::Validation { message, details }
            }
            RegistryError::InvalidModel(message) => ApiError::InvalidModel(message),
            RegistryError::Internal { what, detail } => ApiError::Internal { what, detail },
        }
    }
}

/// A body the API cannot read: 400, the field at fault named where there is one.
impl From<InputError> for ApiError {
    fn from(e: InputError) -> ApiError {
        match e {
            InputError::BadRequest(message) => ApiError::BadRequest(message),
            InputError::Invalid { message, details } => ApiError::Validation { message, details },
        }
    }
}

/// The store's answer: not found (naming what), a conflict, invalid values by field, invalid rows; anything
/// else is the server's own failure.
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::NotFound(what) => ApiError::NotFound(what),
            StoreError::Conflict(message) => ApiError::Conflict(message),
            StoreError::Invalid(details) => ApiError::Validation {
                message: format!(
                    "invalid values: {}",
                    details.0.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
                details,
            },
            StoreError::Rows(rows) => {
                let total = rows.len();
                ApiError::InvalidRows { rows, total }
            }
            e => ApiError::Store(e),
        }
    }
}

/// A refused ingest answers as any bulk write does: its rows, or the store's answer about the price.
impl From<mercator_services::ingest::IngestError> for ApiError {
    fn from(e: mercator_services::ingest::IngestError) -> ApiError {
        use mercator_services::ingest::IngestError;
        match e {
            IngestError::Rows { rows, total } => ApiError::InvalidRows { rows, total },
            IngestError::Store(e) => e.into(),
        }
    }
}

impl ApiError {
    /// The server's own failure at `what`.
    pub fn internal(what: &'static str, e: impl std::fmt::Display) -> ApiError {
        ApiError::Internal {
            what,
            detail: e.to_string(),
        }
    }

    /// 422 about one field.
    pub fn invalid(field: &str, message: impl Into<String>) -> ApiError {
        let message = message.into();
        ApiError::Validation {
            details: FieldErrors::one(field, message.clone()),
            message,
        }
    }

    /// A time parameter: RFC 3339 or a date; 400 naming the field otherwise.
    pub fn parse_time(
        field: &str,
        text: Option<String>,
    ) -> Result<Option<mercator_store::Time>, ApiError> {
        mercator_store::parse_time_param(field, text).map_err(|details| ApiError::Validation {
            message: format!("`{field}` is not a time"),
            details,
        })
    }

    /// The stable snake_case code clients switch on (and metrics label by).
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Engine(e) => e.code(),
            ApiError::Predict(e) => e.code(),
            ApiError::Prediction(e) => e.code(),
            ApiError::Batch(e) => e.code(),
            ApiError::Monitor(e) => e.code(),
            ApiError::Sourcing(e) => e.code(),
            ApiError::Supply(e) => e.code(),
            ApiError::Session(e) => e.code(),
            ApiError::Users(e) => e.code(),
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Validation { .. } => "validation_error",
            ApiError::InvalidRows { .. } => "invalid_rows",
            ApiError::BodyTooLarge { .. } => "body_too_large",
            ApiError::TooManyRows { .. } => "too_many_rows",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::BodyTimeout => "body_timeout",
            ApiError::Busy => "server_busy",
            ApiError::TooManyHeavyRequests { .. } => "too_many_heavy_requests",
            ApiError::MissingKey | ApiError::InvalidKey => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::KeyExpired(_) => "key_expired",
            ApiError::InsufficientScope(_) => "insufficient_scope",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::RouteNotFound(_) => "route_not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::Draining => "shutting_down",
            ApiError::TooManySockets { .. } => "too_many_sockets",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::PoolBroken(_) | ApiError::FeedBehind(_) => "not_ready",
            ApiError::Panicked(_) | ApiError::Store(_) | ApiError::Internal { .. } => "internal",
            ApiError::InvalidModel(_) => "invalid_model",
        }
    }

    /// The engine's error inside, whichever layer carried it up.
    pub fn engine(&self) -> Option<&EngineError> {
        match self {
            ApiError::Engine(e)
            | ApiError::Predict(mercator_services::predict::PredictError::Engine(e)) => Some(e),
            ApiError::Batch(e) => e.engine(),
            _ => None,
        }
    }

    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        let code = self.code();
        (status(code), code)
    }

    fn details(&self) -> Value {
        match self {
            ApiError::Validation { details, .. } => json!(details),
            ApiError::Predict(e) | ApiError::Batch(BatchError::Predict(e)) => {
                e.details().map_or_else(|| json!({}), |d| json!(d))
            }
            ApiError::Batch(BatchError::Validation { details, .. }) => json!(details),
            ApiError::Users(mercator_services::identity::users::UserError::Invalid {
                details,
                ..
            }) => json!(details),
            ApiError::InvalidRows { rows, .. } => {
                // Enough to fix a file; a file that is all wrong does not produce a giant answer.
                json!({ "rows": rows.iter().take(MAX_REPORTED_ROWS).collect::<Vec<_>>(),
                        "invalid_rows": rows.len() })
            }
            ApiError::RateLimited {
                rule,
                rate,
                retry_after,
                ..
            } => json!({ "policy": rule, "limit": rate, "retry_after_seconds": retry_after }),
            _ => json!({}),
        }
    }
}

impl ApiError {
    /// A request body that could not be read in full: it stalled past the body read timeout (408), or it
    /// was longer than `limit` (413, `flag` the setting).
    pub fn body(
        e: &(dyn std::error::Error + 'static),
        limit: usize,
        flag: &'static str,
    ) -> ApiError {
        if timed_out(e) {
            ApiError::BodyTimeout
        } else {
            ApiError::BodyTooLarge { limit, flag }
        }
    }
}

/// Whether a body error, or one of its causes, is the body read timeout.
pub fn timed_out(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(e) = cause {
        if e.is::<crate::body_timeout::Stalled>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// The one table: each code the server answers with (its own, the domain's, the engine's) and its status.
pub fn status(code: &str) -> StatusCode {
    match code {
        "bad_request" | "validation_error" | "invalid_input" | "invalid_request" => {
            StatusCode::BAD_REQUEST
        }
        "unauthorized"
        | "key_expired"
        | "invalid_credentials"
        | "token_expired"
        | "refresh_token_reused" => StatusCode::UNAUTHORIZED,
        "forbidden" | "insufficient_scope" => StatusCode::FORBIDDEN,
        "not_found" | "route_not_found" | "model_not_found" | "version_not_found"
        | "not_monitored" => StatusCode::NOT_FOUND,
        "method_not_allowed" => StatusCode::METHOD_NOT_ALLOWED,
        "body_timeout" => StatusCode::REQUEST_TIMEOUT,
        "conflict" | "results_not_ready" | "invalid_state" | "deadline_passed" => {
            StatusCode::CONFLICT
        }
        "results_expired" => StatusCode::GONE,
        "body_too_large" | "too_many_rows" | "batch_too_large" => StatusCode::PAYLOAD_TOO_LARGE,
        "unsupported_media_type" => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "invalid_rows"
        | "invalid_model"
        | "invalid_quantity"
        | "beyond_horizon"
        | "invalid_price"
        | "invalid_date"
        | "insufficient_history"
        | "supplier_not_invited" => StatusCode::UNPROCESSABLE_ENTITY,
        "overloaded"
        | "server_busy"
        | "too_many_heavy_requests"
        | "disk_quota_exceeded"
        | "too_many_batch_jobs"
        | "too_many_sockets"
        | "rate_limited" => StatusCode::TOO_MANY_REQUESTS,
        "model_not_ready" | "shutting_down" | "not_ready" => StatusCode::SERVICE_UNAVAILABLE,
        "deadline_exceeded" => StatusCode::GATEWAY_TIMEOUT,
        "insufficient_storage" => StatusCode::INSUFFICIENT_STORAGE,
        // "internal", and any code this table has not learned: a failure of the server's own.
        _ => StatusCode::INTERNAL_SERVER_ERROR,
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
        if let ApiError::RateLimited { retry_after, .. } = &self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
        } else if matches!(
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

#[cfg(test)]
mod tests {
    use super::*;
    use mercator_features::FeatureError;
    use mercator_services::predict::PredictError;

    /// Each layer's errors answer the status their code has in the one table, whichever layer made them.
    #[test]
    fn every_layers_codes_map_through_the_one_table() {
        let cases: Vec<(ApiError, u16, &str)> = vec![
            (PredictError::NotFound("material").into(), 404, "not_found"),
            (
                PredictError::invalid("interval_level", "one of [0.8]").into(),
                400,
                "validation_error",
            ),
            (
                PredictError::TooManyRows { limit: 3 }.into(),
                413,
                "too_many_rows",
            ),
            (
                PredictError::Unservable("no spec".into()).into(),
                409,
                "conflict",
            ),
            (
                PredictError::Output("no price".into()).into(),
                500,
                "internal",
            ),
            (
                PredictError::Feature(FeatureError::TooLittleHistory {
                    days: 1,
                    needed: 2,
                    window: 3,
                })
                .into(),
                422,
                "insufficient_history",
            ),
            (
                PredictError::Engine(EngineError::QueueFull {
                    model: "price".into(),
                    capacity: 1,
                })
                .into(),
                429,
                "overloaded",
            ),
            (
                EngineError::ModelNotFound("x".into()).into(),
                404,
                "model_not_found",
            ),
            (EngineError::Runtime("x".into()).into(), 500, "internal"),
            (
                ApiError::internal("batch files", "disk full"),
                500,
                "internal",
            ),
            (FeatureError::Day(1 << 30).into(), 422, "invalid_date"),
            (ApiError::BodyTimeout, 408, "body_timeout"),
            (
                BatchError::InsufficientStorage { free: 0, needed: 1 }.into(),
                507,
                "insufficient_storage",
            ),
            (
                BatchError::ResultsExpired("then".into()).into(),
                410,
                "results_expired",
            ),
            (
                BatchError::ResultsNotReady("running").into(),
                409,
                "results_not_ready",
            ),
            (
                BatchError::DiskQuota {
                    used: 2,
                    needed: 1,
                    limit: 2,
                }
                .into(),
                429,
                "disk_quota_exceeded",
            ),
            (
                BatchError::TooManyBatchJobs { limit: 1 }.into(),
                429,
                "too_many_batch_jobs",
            ),
            (
                BatchError::BatchTooLarge("rows".into()).into(),
                413,
                "batch_too_large",
            ),
            (
                BatchError::Store(mercator_store::StoreError::NotFound("batch job")).into(),
                404,
                "not_found",
            ),
            (
                BatchError::from(EngineError::ModelNotFound("x".into())).into(),
                404,
                "model_not_found",
            ),
            (BatchError::BodyTimeout.into(), 408, "body_timeout"),
            (ApiError::Draining, 503, "shutting_down"),
            (ApiError::MissingKey, 401, "unauthorized"),
            (
                ApiError::KeyExpired(chrono::DateTime::UNIX_EPOCH),
                401,
                "key_expired",
            ),
            (
                ApiError::InsufficientScope("write"),
                403,
                "insufficient_scope",
            ),
            (
                mercator_services::identity::KeyError::Store(mercator_store::StoreError::NotFound(
                    "organization",
                ))
                .into(),
                404,
                "not_found",
            ),
        ];
        for (error, status, code) in cases {
            let (got_status, got_code) = error.status_and_code();
            assert_eq!((got_status.as_u16(), got_code), (status, code), "{error}");
        }
        let details = ApiError::from(PredictError::invalid("as_of", "a date")).details();
        assert!(details["as_of"].is_array(), "{details}");
        let batch = ApiError::from(BatchError::invalid("rows", "3 values; the model takes 6"));
        assert!(batch.details()["rows"].is_array(), "{}", batch.details());
        let job = ApiError::from(BatchError::Store(mercator_store::StoreError::NotFound(
            "batch job",
        )));
        assert_eq!(job.to_string(), "batch job not found");
    }
}
