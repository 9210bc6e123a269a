//! Extractors whose rejections are the server's error format: a body that is not JSON, a field of the
//! wrong type, an unknown field or query parameter each come back as a `validation_error` naming the field.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use mercator_store::FieldErrors;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::AppState;

/// A JSON body (`Content-Type: application/json`).
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, app: &AppState) -> Result<Self, ApiError> {
        if content_type(request.headers()) != Some("application/json") {
            return Err(ApiError::UnsupportedMediaType(
                "send the body as JSON, with Content-Type: application/json".into(),
            ));
        }
        let bytes = body(request, app.limits.max_body_bytes, "--max-body-bytes").await?;
        object(&bytes)?;
        from_json(&bytes).map(ApiJson)
    }
}

/// Every JSON body the API takes is an object: serde would read a struct from an array by position (`[]`
/// for a body whose fields all have defaults), so anything else is refused before it is parsed.
fn object(bytes: &[u8]) -> Result<(), ApiError> {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') | None => Ok(()),
        Some(_) => Err(ApiError::Validation {
            message: "the body must be a JSON object".into(),
            details: FieldErrors::one("body", "expected a JSON object".to_string()),
        }),
    }
}

/// The body's bytes, with the body limit's rejection in the error format (`limit` and `flag`, the setting
/// that sets it, are for the message; the route's `DefaultBodyLimit` enforces it).
pub async fn body(request: Request, limit: usize, flag: &'static str) -> Result<Bytes, ApiError> {
    Bytes::from_request(request, &())
        .await
        .map_err(|e| match e {
            BytesRejection::FailedToBufferBody(e) => ApiError::body(&e, limit, flag),
            other => ApiError::BadRequest(other.body_text()),
        })
}

/// `T` from JSON text; a field that does not fit is named by its path (`rows[3].price`).
pub fn from_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    Ok(mercator_services::input::from_json(bytes)?)
}

pub fn content_type(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::CONTENT_TYPE)?
        .to_str()
        .ok()?
        .split(';')
        .next()
        .map(str::trim)
}

/// Query parameters (`?limit=10&sort=-time`); unknown ones are refused rather than ignored.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or_default();
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(de)
            .map(ApiQuery)
            .map_err(|e| {
                let field = e.path().to_string();
                let field = if field == "." {
                    "query".to_string()
                } else {
                    field
                };
                let message = e.into_inner().to_string();
                ApiError::Validation {
                    message: format!("query parameter `{field}`: {message}"),
                    details: FieldErrors::one(&field, message),
                }
            })
    }
}
