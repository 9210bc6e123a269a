//! What every response tells a browser: the OWASP REST security headers, and CORS for the origins the
//! operator lists (`--cors-origins`; none by default, so no cross-origin page can call the API).

use std::time::Duration;

use axum::http::{header, HeaderName, HeaderValue, Method};
use axum::Router;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::set_header::SetResponseHeaderLayer;

/// Headers a handler may have set itself (the API reference's page and files set their own caching and
/// policy); the others always.
const DEFAULTS: [(HeaderName, &str); 2] = [
    // JSON is never a document to render: nothing loads from it and no page frames it.
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; frame-ancestors 'none'",
    ),
    // Answers are per caller and per moment: no shared or browser cache keeps them.
    (header::CACHE_CONTROL, "no-store"),
];

const ALWAYS: [(HeaderName, &str); 3] = [
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::X_FRAME_OPTIONS, "DENY"),
    (header::REFERRER_POLICY, "no-referrer"),
];

/// The headers a browser may send across origins, and read back.
const ALLOWED_HEADERS: [&str; 7] = [
    "authorization",
    "content-type",
    "x-api-key",
    "idempotency-key",
    "prefer",
    "inference-header-content-length",
    "x-request-id",
];
const EXPOSED_HEADERS: [&str; 10] = [
    "x-request-id",
    "retry-after",
    "ratelimit",
    "ratelimit-policy",
    "location",
    "inference-header-content-length",
    "x-total-rows",
    "x-mercator-queue-us",
    "x-mercator-compute-us",
    "x-mercator-batch-rows",
];

/// The security headers on every response, then CORS outermost (so a refusal, 401 or 429, is readable
/// by the page that asked).
pub fn layer(routes: Router, cors_origins: &[HeaderValue]) -> Router {
    let mut routes = routes;
    for (name, value) in DEFAULTS {
        routes = routes.layer(SetResponseHeaderLayer::if_not_present(
            name,
            HeaderValue::from_static(value),
        ));
    }
    for (name, value) in ALWAYS {
        routes = routes.layer(SetResponseHeaderLayer::overriding(
            name,
            HeaderValue::from_static(value),
        ));
    }
    if cors_origins.is_empty() {
        return routes;
    }
    routes.layer(cors(cors_origins))
}

/// CORS for exactly these origins, bearer credentials in headers (no cookies: no credentials mode).
fn cors(origins: &[HeaderValue]) -> CorsLayer {
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins.iter().cloned()))
        .allow_methods([
            Method::GET,
            Method::HEAD,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ])
        .allow_headers(ALLOWED_HEADERS.map(HeaderName::from_static))
        .expose_headers(EXPOSED_HEADERS.map(HeaderName::from_static))
        .max_age(Duration::from_secs(600))
}

/// `--cors-origins`: each an origin as a browser sends it (`https://buyers.example.com`: a scheme, a host,
/// an optional port; no path, no `*`).
pub fn parse_origin(text: &str) -> Result<HeaderValue, String> {
    let bad = || format!("`{text}` is not an origin (scheme://host[:port], without a path)");
    let url = url::Url::parse(text).map_err(|_| bad())?;
    if !matches!(url.scheme(), "http" | "https")
        || url.host_str().is_none()
        || url.path() != "/"
        || text.ends_with('/')
        || url.query().is_some()
        || url.fragment().is_some()
        || !url.username().is_empty()
    {
        return Err(bad());
    }
    HeaderValue::from_str(&url.origin().ascii_serialization()).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_scheme_host_and_port_only() {
        assert_eq!(
            parse_origin("https://buyers.example.com").unwrap(),
            "https://buyers.example.com"
        );
        assert_eq!(
            parse_origin("http://localhost:5173").unwrap(),
            "http://localhost:5173"
        );
        for bad in [
            "*",
            "buyers.example.com",
            "https://buyers.example.com/",
            "https://buyers.example.com/app",
            "ftp://example.com",
            "https://user@example.com",
        ] {
            assert!(parse_origin(bad).is_err(), "{bad}");
        }
    }
}
