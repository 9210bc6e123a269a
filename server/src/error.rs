//! The one error format: `{"error": "<message>", "code": "<stable_snake_case_code>"}`.
//!
//! `error` is what the Open Inference Protocol specifies (tritonclient reads it); `code` is stable, for
//! programs and for the metrics. Each variant maps to one status and one code, in one table below.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use mercator_engine::EngineError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("{0}")]
    BadRequest(String),
    #[error("the body is larger than the limit of {limit} bytes (--max-body-bytes)")]
    BodyTooLarge { limit: usize },
    #[error("no route for {0}")]
    RouteNotFound(String),
    #[error("{0} is not allowed here")]
    MethodNotAllowed(String),
    #[error("the server is shutting down")]
    Draining,
}

impl ApiError {
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
            ApiError::BodyTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            ApiError::RouteNotFound(_) => (StatusCode::NOT_FOUND, "route_not_found"),
            ApiError::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::Draining => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
        }
    }
}

/// How long a client should wait before retrying a 429 or 503, in seconds.
const RETRY_AFTER: HeaderValue = HeaderValue::from_static("1");

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let message = if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
            // The detail goes to the log (with the request id); the client gets the id in `x-request-id`.
            tracing::error!(error = %self, "request failed");
            "internal error; the server log has the detail under this response's x-request-id"
                .to_string()
        } else {
            self.to_string()
        };
        let body = serde_json::json!({ "error": message, "code": code });
        let mut response = (status, axum::Json(body)).into_response();
        if matches!(
            status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, RETRY_AFTER);
        }
        response
    }
}
