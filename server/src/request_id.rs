//! `x-request-id` on every response: the client's when it sent one, else a new one; and a tracing span per
//! request carrying it, so every log line written while serving the request names its request id, and
//! (once the key is verified) its organization and actor.

use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::{HeaderName, HeaderValue, Request};
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};

pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Ids are a per-process random-ish prefix and a counter: unique, cheap, and sortable within a process.
#[derive(Clone, Copy)]
struct Counter {
    prefix: u32,
}

static NEXT: AtomicU64 = AtomicU64::new(0);

impl MakeRequestId for Counter {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        HeaderValue::from_str(&format!("{:08x}-{n:012x}", self.prefix))
            .ok()
            .map(RequestId::new)
    }
}

/// Gives a request without an `x-request-id` a new one.
pub fn set() -> SetRequestIdLayer<impl MakeRequestId + Clone> {
    let prefix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32) ^ std::process::id())
        .unwrap_or(0);
    SetRequestIdLayer::new(HEADER, Counter { prefix })
}

/// Copies the request's `x-request-id` onto the response.
pub fn propagate() -> PropagateRequestIdLayer {
    PropagateRequestIdLayer::new(HEADER)
}

/// Serves the request inside a span naming its request id, method and path; the authentication extractor
/// records `org` and `actor` (`key:<id>`) into it.
pub async fn span(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use tracing::Instrument;
    let id = request
        .headers()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %request.method(),
        path = %request.uri().path(),
        org = tracing::field::Empty,
        actor = tracing::field::Empty,
    );
    let response = next.run(request).instrument(span.clone()).await;
    span.in_scope(|| tracing::debug!(status = response.status().as_u16(), "answered"));
    response
}
