//! Who is calling: API keys, roles, and the organization every request is scoped to.
//!
//! A handler states what it needs in its signature, `Auth<Analyst>`, and gets a `Principal` whose
//! organization scopes every store call it makes; it cannot reach data without one. Keys come as
//! `Authorization: Bearer <key>` or `X-API-Key: <key>` (WebSocket clients that cannot set headers may pass
//! `?api_key=`, on `/ws/` routes only). Verified keys are kept in memory for `--key-cache-secs`, so a prediction does not pay a
//! database round trip; deleting a key evicts it here at once (other replicas within that time).

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use axum::response::Response;
use chrono::{DateTime, Utc};
use mercator_services::clock::Clock;
use mercator_store::{ApiKey, KeyScope, Role, Store};
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::AppState;

/// The caller, once its key is verified.
#[derive(Debug, Clone)]
pub struct Principal {
    /// Its key's id, or its user's.
    pub actor_id: String,
    /// A signed-in user's session; None: an API key.
    pub session: Option<String>,
    pub organization_id: String,
    pub role: Role,
    /// An admin of the platform organization: may create and list organizations.
    pub owner: bool,
    /// The scopes its key may use; None: every scope its role allows.
    pub scopes: Option<Vec<KeyScope>>,
    /// When its key stops working.
    pub expires_at: Option<DateTime<Utc>>,
    /// Its key's own rate limits; None: `--rate-limits-key`.
    pub rate_limits: Option<Arc<mercator_services::limits::Plan>>,
}

impl Principal {
    /// Who acted, as logs and the audit trail name it: a key by its id, a user as `user:<id>`.
    pub fn actor(&self) -> std::borrow::Cow<'_, str> {
        match self.session {
            None => std::borrow::Cow::Borrowed(&self.actor_id),
            Some(_) => std::borrow::Cow::Owned(format!("user:{}", self.actor_id)),
        }
    }

    /// Whether it may call a route of `scope`.
    pub fn allows(&self, scope: KeyScope) -> bool {
        self.scopes.as_ref().is_none_or(|s| s.contains(&scope))
    }
}

/// A role a handler requires, as a type.
pub trait Requirement: Send + Sync + 'static {
    const ROLE: Role;
    const OWNER: bool = false;
    const NAME: &'static str;
}

pub struct Viewer;
pub struct Analyst;
pub struct Admin;
/// An admin of the platform organization.
pub struct Owner;

impl Requirement for Viewer {
    const ROLE: Role = Role::Viewer;
    const NAME: &'static str = "viewer";
}
impl Requirement for Analyst {
    const ROLE: Role = Role::Analyst;
    const NAME: &'static str = "analyst";
}
impl Requirement for Admin {
    const ROLE: Role = Role::Admin;
    const NAME: &'static str = "admin";
}
impl Requirement for Owner {
    const ROLE: Role = Role::Admin;
    const OWNER: bool = true;
    const NAME: &'static str = "platform owner (an admin key of the first organization)";
}

/// The verified caller, holding at least `R`'s role (shared with the key cache: no copy per request).
pub struct Auth<R>(pub Arc<Principal>, PhantomData<R>);

impl<R> std::ops::Deref for Auth<R> {
    type Target = Principal;
    fn deref(&self) -> &Principal {
        &self.0
    }
}

impl<R: Requirement> FromRequestParts<AppState> for Auth<R> {
    /// In the shape of the protocol the path speaks (V2 or REST).
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, Response> {
        // The door (`limits::enforce`) verified it already, unless the route is not counted.
        let verified = match parts.extensions.get::<crate::limits::Verified>() {
            Some(verified) => Ok(verified.0.clone()),
            None => match presented(&parts.headers, &parts.uri) {
                Some(key) => identify(app, key).await.inspect(|p| record_caller(p)),
                None => Err(ApiError::MissingKey),
            },
        };
        let scope = scope_of(&parts.method, parts.uri.path());
        verified
            .and_then(|principal| allow::<R>(&principal, scope).map(|()| principal))
            .map(|principal| Auth(principal, PhantomData))
            .map_err(|e| e.for_path(parts.uri.path()))
    }
}

/// The caller a credential names: a signed-in user's access token (a JWT), or an API key.
pub async fn identify(app: &AppState, presented: &str) -> Result<Arc<Principal>, ApiError> {
    if !looks_like_jwt(presented) {
        return app.keys.verify(presented).await;
    }
    let caller = app.sessions.verify(presented).await?;
    Ok(Arc::new(Principal {
        actor_id: caller.user_id.clone(),
        session: Some(caller.session_id.clone()),
        organization_id: caller.organization_id.clone(),
        role: caller.role,
        owner: caller.platform && caller.role == Role::Admin,
        scopes: None,
        // A user's sockets last while the session stands, not only the access token that opened them.
        expires_at: None,
        rate_limits: None,
    }))
}

/// A compact JWS: a JSON header (`{"` in base64url is `eyJ`) and three dot-separated parts. API keys have
/// neither.
fn looks_like_jwt(presented: &str) -> bool {
    presented.starts_with("eyJ") && presented.bytes().filter(|b| *b == b'.').count() == 2
}

/// Names the caller in the request's span (and so on every line logged while serving it).
pub fn record_caller(principal: &Principal) {
    let span = tracing::Span::current();
    span.record("org", tracing::field::display(&principal.organization_id));
    span.record(
        "actor",
        tracing::field::display(match principal.session {
            None => format!("key:{}", principal.actor_id),
            Some(_) => format!("user:{}", principal.actor_id),
        }),
    );
}

fn allow<R: Requirement>(principal: &Principal, scope: KeyScope) -> Result<(), ApiError> {
    if principal.role < R::ROLE || (R::OWNER && !principal.owner) {
        return Err(ApiError::Forbidden(R::NAME));
    }
    if !principal.allows(scope) {
        return Err(ApiError::InsufficientScope(scope.as_str()));
    }
    Ok(())
}

/// The scope a route needs, by what it is: the model registry (and Triton's repository extension) is
/// `models`; predictions, analytics, inventory policies, batch jobs and V2 inference `predict`; keys, organizations and the
/// audit log `admin`; anything else `read` to read and `write` to change.
pub fn scope_of(method: &axum::http::Method, path: &str) -> KeyScope {
    let under = |prefix: &str| {
        path.strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    };
    if under("/api/v1/models") || under("/v2/repository") {
        KeyScope::Models
    } else if under("/api/v1/predictions")
        || under("/api/v1/analytics")
        || under("/api/v1/inventory")
        || under("/ws/predictions")
        || (path.starts_with("/v2/models/") && path.ends_with("/infer"))
    {
        KeyScope::Predict
    } else if under("/api/v1/api-keys") || under("/api/v1/organizations") || under("/api/v1/audit")
    {
        KeyScope::Admin
    } else if matches!(*method, axum::http::Method::GET | axum::http::Method::HEAD) {
        KeyScope::Read
    } else {
        KeyScope::Write
    }
}

/// The key in the request: a header, or on the WebSocket routes (`/ws/...`, whose browser clients cannot
/// set headers) the `api_key` query parameter. Elsewhere a key in the URL is not read: URLs end up in
/// access logs and browser histories.
pub fn presented<'a>(headers: &'a HeaderMap, uri: &'a axum::http::Uri) -> Option<&'a str> {
    from_headers(headers).or_else(|| {
        uri.path()
            .starts_with("/ws/")
            .then(|| uri.query())
            .flatten()
            .and_then(|q| q.split('&').find_map(|pair| pair.strip_prefix("api_key=")))
    })
}

fn from_headers(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value.to_str().ok()?;
        return value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim);
    }
    headers.get("x-api-key")?.to_str().ok().map(str::trim)
}

/// Verified keys, by the SHA-256 of the secret (the secret itself is not kept), and keys recently found
/// invalid, so that a flood of bad keys costs hashing, not store lookups.
pub struct Keys {
    store: Store,
    ttl: Duration,
    clock: Arc<Clock>,
    cache: Mutex<HashMap<[u8; 32], Cached>>,
    invalid: Mutex<HashMap<[u8; 32], Instant>>,
    /// Keys used since usage was last written: key id -> when.
    used: Mutex<HashMap<String, DateTime<Utc>>>,
}

/// A key's use is marked at most this often (and so written at most this often).
pub const USAGE_EVERY: Duration = Duration::from_secs(60);

/// How long a key found invalid is answered 401 from memory. Keys are random secrets made by the server,
/// so a key that was invalid a moment ago can only become valid as a configured MERCATOR_ADMIN_KEY at
/// the next start.
pub const INVALID_KEY_TTL: Duration = Duration::from_secs(10);

/// A verified key's principal, when it was verified, and when its use was last marked.
struct Cached {
    principal: Arc<Principal>,
    verified: Instant,
    marked: Option<Instant>,
}

/// Past this many cached keys the cache starts over (it holds verified keys only, so this is a bound on
/// memory, not a defence).
const MAX_CACHED_KEYS: usize = 10_000;

impl Keys {
    pub fn new(store: Store, ttl: Duration, clock: Arc<Clock>) -> Keys {
        Keys {
            store,
            ttl,
            clock,
            cache: Mutex::new(HashMap::new()),
            invalid: Mutex::new(HashMap::new()),
            used: Mutex::new(HashMap::new()),
        }
    }

    /// The caller a key names, if it is a key that works now: its use is marked (at most once a minute).
    pub async fn verify(&self, presented: &str) -> Result<Arc<Principal>, ApiError> {
        let principal = self.principal_of(presented).await?;
        let now = self.clock.now();
        if let Some(end) = principal.expires_at.filter(|end| now >= *end) {
            return Err(ApiError::KeyExpired(end));
        }
        Ok(principal)
    }

    async fn principal_of(&self, presented: &str) -> Result<Arc<Principal>, ApiError> {
        // A typed key whose checksum does not match is no key: no hashing, no lookup.
        if !mercator_store::plausible_key(presented) {
            return Err(ApiError::InvalidKey);
        }
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        if let Some(cached) = self.cache.lock().expect("key cache").get_mut(&digest) {
            if cached.verified.elapsed() < self.ttl {
                if cached.marked.is_none_or(|at| at.elapsed() >= USAGE_EVERY) {
                    cached.marked = Some(Instant::now());
                    self.mark_used(&cached.principal.actor_id);
                }
                return Ok(cached.principal.clone());
            }
        }
        let now = Instant::now();
        if let Some(at) = self
            .invalid
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&digest)
        {
            if now.duration_since(*at) < INVALID_KEY_TTL {
                return Err(ApiError::InvalidKey);
            }
        }
        let Some(key) = self
            .store
            .authenticate(presented)
            .await
            .map_err(ApiError::Store)?
        else {
            let mut invalid = self.invalid.lock().unwrap_or_else(|e| e.into_inner());
            if invalid.len() >= MAX_CACHED_KEYS {
                invalid.retain(|_, at| now.duration_since(*at) < INVALID_KEY_TTL);
                if invalid.len() >= MAX_CACHED_KEYS {
                    invalid.clear();
                }
            }
            invalid.insert(digest, now);
            return Err(ApiError::InvalidKey);
        };
        let principal = Arc::new(self.principal(key).await?);
        self.mark_used(&principal.actor_id);
        let mut cache = self.cache.lock().expect("key cache");
        if cache.len() >= MAX_CACHED_KEYS {
            cache.clear();
        }
        let now = Instant::now();
        cache.insert(
            digest,
            Cached {
                principal: principal.clone(),
                verified: now,
                marked: Some(now),
            },
        );
        Ok(principal)
    }

    fn mark_used(&self, key_id: &str) {
        let now = self.clock.now();
        self.used
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key_id.to_string(), now);
    }

    /// Writes the keys' uses marked since the last time (a failure is logged; those uses are marked again
    /// the next minute they happen).
    pub async fn flush_usage(&self) {
        let used: Vec<(String, DateTime<Utc>)> =
            std::mem::take(&mut *self.used.lock().unwrap_or_else(|e| e.into_inner()))
                .into_iter()
                .collect();
        if used.is_empty() {
            return;
        }
        if let Err(e) = self.store.touch_api_keys(&used).await {
            tracing::warn!(error = %e, keys = used.len(), "writing API keys' last use failed");
        }
    }

    /// Writes usage every `every`, until the process ends.
    pub async fn write_usage(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.flush_usage().await;
        }
    }

    async fn principal(&self, key: ApiKey) -> Result<Principal, ApiError> {
        let org = self
            .store
            .organization(&key.organization_id)
            .await
            .map_err(ApiError::Store)?;
        let rate_limits = key.rate_limits.as_deref().and_then(|text| {
            text.parse()
                .inspect_err(|e| {
                    tracing::warn!(key = %key.id, error = %e,
                        "a stored key's rate limits do not parse; --rate-limits-key applies")
                })
                .ok()
                .map(Arc::new)
        });
        Ok(Principal {
            owner: org.platform && key.role == Role::Admin,
            actor_id: key.id,
            session: None,
            organization_id: key.organization_id,
            role: key.role,
            rate_limits,
            scopes: key.scopes,
            expires_at: key.expires_at,
        })
    }

    /// The time keys are judged by.
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Forgets every cached key (a replica that fell too far behind the change feed).
    pub fn evict_all(&self) {
        self.cache.lock().expect("key cache").clear();
    }

    /// Forgets a deleted key at once (here, or on another replica through the change feed).
    pub fn evict(&self, key_id: &str) {
        self.cache
            .lock()
            .expect("key cache")
            .retain(|_, cached| cached.principal.actor_id != key_id);
    }
}

/// First start: the default organization and its admin key, from MERCATOR_ADMIN_KEY or generated and
/// printed once. Later starts: a configured admin key that is not yet known is added to the platform
/// organization (how an operator regains access).
pub async fn bootstrap(store: &Store, admin_key: Option<&str>) -> Result<(), String> {
    let e = |e: mercator_store::StoreError| format!("store: {e}");
    let platform = match store
        .list_organizations()
        .await
        .map_err(e)?
        .into_iter()
        .find(|o| o.platform)
    {
        Some(org) => org,
        None => store
            .create_organization("default", true)
            .await
            .map_err(e)?,
    };
    match admin_key {
        Some(secret) => {
            if secret.len() < 24 {
                return Err("MERCATOR_ADMIN_KEY must be at least 24 characters".into());
            }
            if store.authenticate(secret).await.map_err(e)?.is_none() {
                store
                    .import_api_key(
                        &platform.id,
                        "admin (MERCATOR_ADMIN_KEY)",
                        Role::Admin,
                        secret,
                    )
                    .await
                    .map_err(e)?;
                tracing::info!(organization = %platform.id, "admin key from MERCATOR_ADMIN_KEY registered");
            }
        }
        None if store.count_api_keys().await.map_err(e)? == 0 => {
            let (_, secret) = store
                .create_api_key(
                    &platform.id,
                    &mercator_store::KeySpec::unrestricted("admin (first start)", Role::Admin),
                )
                .await
                .map_err(e)?;
            // Shown once, on the terminal, not in the structured log.
            eprintln!(
                "\n  Mercator's first start: the platform admin key is\n\n    {secret}\n\n  \
                 It is stored only as a hash and will not be shown again.\n"
            );
        }
        None => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key found invalid is answered from memory: after the store is gone, the same bad key still gets
    /// 401 without a lookup, while a new one reaches the (closed) store.
    #[tokio::test]
    async fn invalid_keys_are_remembered_without_a_store_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("keys.db").display());
        let store = Store::connect(&url).await.unwrap();
        let keys = Keys::new(store.clone(), Duration::from_secs(30), Arc::default());
        let bad = "mk_not_a_key_0123456789abcdef";
        assert!(matches!(keys.verify(bad).await, Err(ApiError::InvalidKey)));
        store.close().await;
        assert!(matches!(keys.verify(bad).await, Err(ApiError::InvalidKey)));
        assert!(matches!(
            keys.verify("mk_another_bad_key_0123456789").await,
            Err(ApiError::Store(_))
        ));
        // A typed key whose checksum fails never reaches the (closed) store.
        let mut typo = mercator_store::generate_key();
        typo.pop();
        typo.push('!');
        assert!(matches!(
            keys.verify(&typo).await,
            Err(ApiError::InvalidKey)
        ));
    }

    #[test]
    fn routes_need_the_scope_of_what_they_are() {
        use axum::http::Method;
        let cases = [
            (Method::POST, "/api/v1/predictions/price", KeyScope::Predict),
            (Method::POST, "/api/v1/inventory/policy", KeyScope::Predict),
            (
                Method::GET,
                "/api/v1/predictions/batch/bat_1",
                KeyScope::Predict,
            ),
            (
                Method::POST,
                "/api/v1/analytics/forecast",
                KeyScope::Predict,
            ),
            (
                Method::POST,
                "/v2/models/price/versions/2/infer",
                KeyScope::Predict,
            ),
            (Method::GET, "/ws/predictions/bat_1", KeyScope::Predict),
            (Method::GET, "/v2/models/price", KeyScope::Read),
            (Method::GET, "/api/v1/materials", KeyScope::Read),
            (Method::GET, "/ws/prices", KeyScope::Read),
            (Method::POST, "/api/v1/prices/bulk", KeyScope::Write),
            (Method::DELETE, "/api/v1/materials/x", KeyScope::Write),
            (Method::POST, "/api/v1/api-keys", KeyScope::Admin),
            (Method::GET, "/api/v1/audit", KeyScope::Admin),
            (
                Method::POST,
                "/api/v1/models/price/rollback",
                KeyScope::Models,
            ),
            (Method::GET, "/api/v1/models", KeyScope::Models),
            (Method::POST, "/v2/repository/index", KeyScope::Models),
            (Method::GET, "/api/v1/modelsx", KeyScope::Read),
        ];
        for (method, path, scope) in cases {
            assert_eq!(scope_of(&method, path), scope, "{method} {path}");
        }
    }
}
