//! Rate limits at the door. Every request but the probes (`/healthz`, `/readyz`), `/metrics`, the API
//! reference and CORS preflights is counted before its handler runs, by its route class
//! ([`class_of`]): against its API key (the key's own `rate_limits`, else `--rate-limits-key`), or, when
//! it presents a credential that is not valid (or signs in), against its client address
//! (`--rate-limits-anonymous`), so that guessing keys is limited too. A request with no credential at all
//! to a route that needs one is not counted: it is answered 401 from memory. The decision is the domain's ([`mercator_services::limits`]); here it becomes headers:
//! - on every counted response, `RateLimit-Policy: "predict";q=60;w=60` and `RateLimit: "predict";r=59;t=1`
//!   (draft-ietf-httpapi-ratelimit-headers: quota, window, remaining, seconds until the quota is back),
//!   one item per rule that applied;
//! - a refusal is 429 `rate_limited` in the envelope, with `Retry-After` in seconds.
//!
//! The key verified here is handed to the handler's `Auth` extractor, which does not verify it again.

use std::fmt::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::Response;
use mercator_services::clock::Clock;
use mercator_services::identity::sessions::SessionError;
use mercator_services::limits::{shared, Class, Limiter, Plan, Subject, Verdict};
use mercator_store::KeyScope;

use crate::auth::{self, Principal};
use crate::error::ApiError;
use crate::AppState;

/// The limits in force (`--rate-limits-*`, `--redis-url`, `--trusted-proxy-hops`).
#[derive(Clone)]
pub struct Settings {
    /// Requests without a valid credential, per client address.
    pub anonymous: Plan,
    /// API keys made without their own.
    pub key: Plan,
    /// Signed-in users.
    pub user: Plan,
    /// Shared through Redis; None: each replica on its own.
    pub redis: Option<shared::Settings>,
    /// Proxies that append to X-Forwarded-For in front of this server.
    pub proxy_hops: usize,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("anonymous", &self.anonymous.to_string())
            .field("key", &self.key.to_string())
            .field("user", &self.user.to_string())
            .field("redis", &self.redis.as_ref().map(|_| "***"))
            .field("proxy_hops", &self.proxy_hops)
            .finish()
    }
}

/// The client's address as the listener saw it (a request extension).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub IpAddr);

/// The caller the door verified, for the handler's `Auth` (a request extension).
#[derive(Clone)]
pub struct Verified(pub Arc<Principal>);

/// Where a request came from, for the audit trail: set by the door for the request's handler (a task
/// local: the handler runs in the door's task), read by `api::audit::record`. Header values are shared
/// bytes, so it costs no copy.
#[derive(Debug, Clone)]
pub struct Origin {
    pub ip: IpAddr,
    pub user_agent: Option<HeaderValue>,
    pub request_id: Option<HeaderValue>,
}

tokio::task_local! {
    pub static ORIGIN: Origin;
}

pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// The limiter and the plans it applies.
pub struct RateLimits {
    pub limiter: Arc<Limiter>,
    anonymous: Plan,
    key: Plan,
    user: Plan,
    proxy_hops: usize,
}

impl RateLimits {
    pub fn new(settings: &Settings, clock: Arc<Clock>) -> Result<RateLimits, String> {
        let limiter = match &settings.redis {
            Some(redis) => Limiter::shared(clock, redis.clone())?,
            None => Limiter::local(clock),
        };
        Ok(RateLimits {
            limiter: Arc::new(limiter),
            anonymous: settings.anonymous.clone(),
            key: settings.key.clone(),
            user: settings.user.clone(),
            proxy_hops: settings.proxy_hops,
        })
    }

    /// Who the client is: the connection's peer, or with trusted proxies in front, the address the
    /// outermost of them saw (that many entries from the right of X-Forwarded-For).
    fn client(&self, request: &Request) -> IpAddr {
        let peer = request
            .extensions()
            .get::<Peer>()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |p| p.0);
        if self.proxy_hops == 0 {
            return peer;
        }
        let forwarded: Vec<&str> = request
            .headers()
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        forwarded
            .iter()
            .rev()
            .nth(self.proxy_hops - 1)
            .and_then(|a| a.parse().ok())
            .unwrap_or(peer)
    }
}

/// What a route is for limits; None: not counted.
pub fn class_of(method: &Method, path: &str) -> Option<Class> {
    if method == Method::OPTIONS
        || matches!(
            path,
            "/healthz"
                | "/readyz"
                | "/metrics"
                | "/docs"
                | "/openapi.json"
                | "/.well-known/jwks.json"
        )
        || path.starts_with("/docs/")
    {
        return None;
    }
    if path.starts_with("/api/v1/auth/") {
        return Some(Class::Login);
    }
    let writes = !matches!(*method, Method::GET | Method::HEAD);
    if writes && matches!(path, "/api/v1/prices/bulk" | "/api/v1/predictions/batch") {
        return Some(Class::Bulk);
    }
    Some(match auth::scope_of(method, path) {
        KeyScope::Predict => Class::Predict,
        KeyScope::Admin => Class::Admin,
        KeyScope::Models if writes => Class::Admin,
        KeyScope::Models | KeyScope::Read => Class::Read,
        KeyScope::Write => Class::Write,
    })
}

/// The door: counts the request, refuses it past a limit, and tells the client where it stands.
pub async fn enforce(State(app): State<AppState>, mut request: Request, next: Next) -> Response {
    let Some(class) = class_of(request.method(), request.uri().path()) else {
        return next.run(request).await;
    };
    let limits = &app.rate_limits;
    let origin = Origin {
        ip: limits.client(&request),
        user_agent: request.headers().get(header::USER_AGENT).cloned(),
        request_id: request.headers().get(crate::request_id::HEADER).cloned(),
    };
    let verified = match auth::presented(request.headers(), request.uri()) {
        Some(key) => auth::identify(&app, key).await.inspect_err(|e| {
            if !matches!(e, ApiError::Store(_)) {
                app.failed_auth.note(key, origin.ip);
            }
        }),
        // Nothing to guess and nothing served: the handler answers 401 from memory, uncounted (only
        // signing in is open to callers without a credential).
        None if class != Class::Login => return ORIGIN.scope(origin, next.run(request)).await,
        None => Err(ApiError::MissingKey),
    };
    let (verdict, whose) = match &verified {
        Ok(principal) if principal.session.is_some() => {
            let subject = Subject::User(&principal.actor_id);
            (
                limits.limiter.check(subject, &limits.user, class).await,
                "user",
            )
        }
        Ok(principal) => {
            let plan = principal.rate_limits.as_deref().unwrap_or(&limits.key);
            let subject = Subject::Key(&principal.actor_id);
            (limits.limiter.check(subject, plan, class).await, "key")
        }
        Err(
            ApiError::MissingKey
            | ApiError::InvalidKey
            | ApiError::KeyExpired(_)
            | ApiError::Session(SessionError::InvalidToken(_) | SessionError::TokenExpired),
        ) => {
            let subject = Subject::address(origin.ip);
            let verdict = limits
                .limiter
                .check(subject, &limits.anonymous, class)
                .await;
            (verdict, "client address")
        }
        // The store could not say (the handler answers why): not counted.
        Err(_) => (Verdict::default(), ""),
    };
    if let Ok(principal) = verified {
        auth::record_caller(&principal);
        request.extensions_mut().insert(Verified(principal));
    }
    if let Some(wait) = verdict.retry_after {
        let binding = verdict.binding().map(|s| s.rule);
        let retry_after = mercator_services::limits::whole_secs(wait);
        let mut response = ApiError::RateLimited {
            rule: binding.map_or("all", |r| r.name()),
            rate: binding.map(|r| r.rate.to_string()).unwrap_or_default(),
            whose,
            retry_after,
        }
        .for_path(request.uri().path());
        let headers = response.headers_mut();
        headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
        write_headers(&verdict, headers);
        return response;
    }
    let mut response = ORIGIN.scope(origin, next.run(request)).await;
    write_headers(&verdict, response.headers_mut());
    response
}

/// `RateLimit-Policy` and `RateLimit`, one item per rule that applied.
fn write_headers(verdict: &Verdict, headers: &mut HeaderMap) {
    let mut statuses = verdict.statuses().peekable();
    if statuses.peek().is_none() {
        return;
    }
    let (mut policy, mut state) = (String::with_capacity(64), String::with_capacity(64));
    for (i, status) in statuses.enumerate() {
        let sep = if i == 0 { "" } else { ", " };
        let name = status.rule.name();
        let reset = mercator_services::limits::whole_secs(status.reset);
        let _ = write!(
            policy,
            "{sep}\"{name}\";q={};w={}",
            status.rule.rate.requests,
            status.rule.rate.window.as_secs()
        );
        let _ = write!(state, "{sep}\"{name}\";r={};t={reset}", status.remaining);
    }
    if let (Ok(policy), Ok(state)) = (HeaderValue::try_from(policy), HeaderValue::try_from(state)) {
        headers.insert(RATELIMIT_POLICY, policy);
        headers.insert(RATELIMIT, state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_counted_by_what_they_are() {
        let cases = [
            (
                Method::POST,
                "/v2/models/price/versions/2/infer",
                Some(Class::Predict),
            ),
            (
                Method::POST,
                "/api/v1/predictions/price",
                Some(Class::Predict),
            ),
            (Method::POST, "/api/v1/predictions/batch", Some(Class::Bulk)),
            (
                Method::GET,
                "/api/v1/predictions/batch",
                Some(Class::Predict),
            ),
            (Method::POST, "/api/v1/prices/bulk", Some(Class::Bulk)),
            (Method::POST, "/api/v1/prices", Some(Class::Write)),
            (Method::GET, "/api/v1/prices", Some(Class::Read)),
            (Method::GET, "/v2/models/price", Some(Class::Read)),
            (Method::GET, "/api/v1/models", Some(Class::Read)),
            (
                Method::POST,
                "/api/v1/models/price/rollback",
                Some(Class::Admin),
            ),
            (Method::POST, "/api/v1/api-keys", Some(Class::Admin)),
            (Method::GET, "/api/v1/audit", Some(Class::Admin)),
            (Method::POST, "/api/v1/auth/login", Some(Class::Login)),
            (Method::GET, "/nowhere", Some(Class::Read)),
            (Method::GET, "/healthz", None),
            (Method::GET, "/readyz", None),
            (Method::GET, "/metrics", None),
            (Method::GET, "/docs", None),
            (Method::GET, "/docs/start.js", None),
            (Method::GET, "/openapi.json", None),
            (Method::OPTIONS, "/api/v1/prices", None),
        ];
        for (method, path, class) in cases {
            assert_eq!(class_of(&method, path), class, "{method} {path}");
        }
    }
}
