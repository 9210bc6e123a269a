//! `x-request-id` on every response: the client's when it sent one, else a new one.

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
