//! Sessions: a user signs in with an email and password and gets
//! - an access token: a JWT signed with Ed25519 (`alg: EdDSA`, `typ: at+jwt`, the key's `kid` in its
//!   header; the public keys at `/.well-known/jwks.json`), claims `iss`, `aud`, `sub`, `org`, `role`,
//!   `sid` (the session), `ver` (the user's token version), `jti`, `iat`, `nbf`, `exp`;
//! - a refresh token: 256 random bits, stored as a SHA-256 hash, spent once: each refresh answers a new
//!   pair, and a refresh token spent twice (stolen, or replayed) ends its whole session.
//!
//! Verification accepts exactly one algorithm, so `alg: none` and algorithm confusion have nowhere to
//! go; an unknown `kid`, a bad signature, a wrong issuer or audience, a token past `exp` or before `nbf`
//! (with `LEEWAY`) are all refused. A verified token is then checked against the user's standing (still
//! active, same token version, session not logged out) and kept in memory until the earlier of its
//! expiry and `standing_ttl`, so a request pays ~1 µs instead of a signature check (~40 µs). Signing keys
//! rotate without logging anyone out: a new key is put first (it signs), older ones still verify.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use chrono::{DateTime, Utc};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use mercator_store::{Role, Spent, Store, StoreError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::passwords::Hasher;
use crate::clock::Clock;
use crate::limits::{Class, Limiter, Plan, Subject};

/// Clocks between issuers and verifiers differ this much at most.
pub const LEEWAY: Duration = Duration::from_secs(30);
/// The longest token read.
const MAX_TOKEN_BYTES: usize = 4096;
/// Past this many verified tokens the cache starts over.
const MAX_CACHED: usize = 10_000;

/// How sessions are made.
#[derive(Clone)]
pub struct Settings {
    pub issuer: String,
    pub audience: String,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    /// How long a verified token's user standing is trusted without asking the store again.
    pub standing_ttl: Duration,
    pub keys: Arc<SigningKeys>,
    /// Sign-in attempts per account (the address's are the door's).
    pub login_limits: Plan,
}

/// Ed25519 keys: the first signs, every one verifies.
pub struct SigningKeys {
    keys: Vec<Key>,
}

struct Key {
    kid: String,
    signing: SigningKey,
    verifying: VerifyingKey,
}

impl SigningKeys {
    /// Keys from their seeds: 64 hex digits each, comma-separated, the signing key first (the form of
    /// `--secret-key`, read by the same parser).
    pub fn parse(text: &str) -> Result<SigningKeys, String> {
        let keys: Vec<Key> = mercator_store::secrets::Sealer::parse_keys(text)?
            .iter()
            .map(|seed| {
                let signing = SigningKey::from_bytes(seed);
                let verifying = signing.verifying_key();
                Key {
                    kid: thumbprint(&verifying),
                    signing,
                    verifying,
                }
            })
            .collect();
        if keys.is_empty() {
            return Err("no signing key".into());
        }
        Ok(SigningKeys { keys })
    }

    /// A new key's seed, in the form `parse` reads.
    pub fn generate() -> String {
        mercator_store::secrets::Sealer::generate_key()
    }

    /// The public keys as a JWK Set (RFC 7517, OKP keys of RFC 8037).
    pub fn jwks(&self) -> serde_json::Value {
        let keys: Vec<_> = self
            .keys
            .iter()
            .map(|k| {
                serde_json::json!({ "kty": "OKP", "crv": "Ed25519", "x": B64.encode(k.verifying.as_bytes()),
                    "kid": k.kid, "alg": "EdDSA", "use": "sig" })
            })
            .collect();
        serde_json::json!({ "keys": keys })
    }
}

/// RFC 7638: the base64url SHA-256 of the key's canonical JWK.
fn thumbprint(key: &VerifyingKey) -> String {
    let canonical = format!(
        r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
        B64.encode(key.as_bytes())
    );
    B64.encode(Sha256::digest(canonical.as_bytes()))
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    alg: String,
    typ: String,
    kid: String,
}

/// An access token's claims.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub org: String,
    pub role: Role,
    pub sid: String,
    pub ver: i64,
    pub jti: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
}

/// A new pair of tokens.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Tokens {
    pub access_token: String,
    pub refresh_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: u64,
}

/// Who signed in, and the session begun.
#[derive(Debug, Clone)]
pub struct SignedIn {
    pub user_id: String,
    pub organization_id: String,
    pub session_id: String,
}

/// The signed-in caller an access token names.
#[derive(Debug, Clone)]
pub struct SessionCaller {
    pub user_id: String,
    pub organization_id: String,
    pub role: Role,
    pub session_id: String,
    pub expires_at: DateTime<Utc>,
    /// Their organization is the platform's.
    pub platform: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Wrong email or password, or an account that cannot sign in: one answer for all.
    #[error("the email or password is wrong")]
    InvalidCredentials,
    #[error("too many sign-in attempts for this account ({rate}); retry in {retry_after} s")]
    Throttled { rate: String, retry_after: u64 },
    #[error("the access token is not valid: {0}")]
    InvalidToken(&'static str),
    #[error("the access token expired")]
    TokenExpired,
    #[error("the refresh token is not valid")]
    InvalidRefresh,
    /// A refresh token spent before: the session it belongs to is ended.
    #[error("the refresh token was already used; the session is ended")]
    RefreshReused {
        user_id: String,
        /// Empty when the user is gone.
        organization_id: String,
    },
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("signing: {0}")]
    Internal(String),
}

impl SessionError {
    pub fn code(&self) -> &'static str {
        match self {
            SessionError::InvalidCredentials => "invalid_credentials",
            SessionError::Throttled { .. } => "rate_limited",
            SessionError::InvalidToken(_) | SessionError::InvalidRefresh => "unauthorized",
            SessionError::TokenExpired => "token_expired",
            SessionError::RefreshReused { .. } => "refresh_token_reused",
            SessionError::Store(e) => e.code(),
            SessionError::Internal(_) => "internal",
        }
    }
}

struct Cached {
    caller: Arc<SessionCaller>,
    until: Instant,
}

pub struct Sessions {
    store: Store,
    hasher: Hasher,
    settings: Settings,
    clock: Arc<Clock>,
    limiter: Arc<Limiter>,
    verified: Mutex<HashMap<[u8; 32], Cached>>,
}

impl Sessions {
    pub fn new(
        store: Store,
        hasher: Hasher,
        settings: Settings,
        clock: Arc<Clock>,
        limiter: Arc<Limiter>,
    ) -> Sessions {
        Sessions {
            store,
            hasher,
            settings,
            clock,
            limiter,
            verified: Mutex::new(HashMap::new()),
        }
    }

    pub fn jwks(&self) -> serde_json::Value {
        self.settings.keys.jwks()
    }

    /// Signs in: a new session's tokens, and who signed in. Attempts per account are limited
    /// (`login_limits`) before the password is even checked.
    pub async fn login(
        &self,
        email: &str,
        password: &str,
    ) -> Result<(Tokens, SignedIn), SessionError> {
        let email = email.trim().to_lowercase();
        if email.len() > 254 || password.len() > 4 * super::passwords::MAX_CHARS {
            // No account has such an email or password: nothing to hash.
            return Err(SessionError::InvalidCredentials);
        }
        let verdict = self
            .limiter
            .check(
                Subject::User(&email),
                &self.settings.login_limits,
                Class::Login,
            )
            .await;
        if let Some(wait) = verdict.retry_after {
            return Err(SessionError::Throttled {
                rate: verdict
                    .binding()
                    .map(|s| s.rule.rate.to_string())
                    .unwrap_or_default(),
                retry_after: crate::limits::whole_secs(wait),
            });
        }
        let found = self.store.user_for_login(&email).await?;
        let (user, phc) = match found {
            Some((user, phc)) => (Some(user), phc),
            None => (None, None),
        };
        let matched = self.hasher.verify(password, phc.as_deref()).await;
        let Some(user) = user.filter(|u| matched && u.active) else {
            return Err(SessionError::InvalidCredentials);
        };
        let now = self.clock.now();
        self.store.record_login(&user.id, now).await?;
        let refresh = random_token();
        let family = self
            .store
            .insert_refresh_token(
                &user.id,
                None,
                &sha256_hex(&refresh),
                now + self.refresh_ttl(),
            )
            .await?;
        let tokens = self.issue(
            &user.id,
            &user.organization_id,
            user.role,
            &family,
            user.token_version,
            refresh,
        )?;
        Ok((
            tokens,
            SignedIn {
                user_id: user.id,
                organization_id: user.organization_id,
                session_id: family,
            },
        ))
    }

    /// Spends a refresh token for a new pair; a token spent before ends its session (401).
    pub async fn refresh(&self, token: &str) -> Result<Tokens, SessionError> {
        let now = self.clock.now();
        let spent = match self
            .store
            .spend_refresh_token(&sha256_hex(token), now)
            .await?
        {
            Spent::Fresh(spent) => spent,
            Spent::Reused(reused) => {
                tracing::warn!(user = %reused.user_id, session = %reused.family_id,
                    "a refresh token was used twice: the session is ended");
                self.forget_session(&reused.family_id);
                let organization_id = self
                    .store
                    .user_by_id(&reused.user_id)
                    .await?
                    .map(|u| u.organization_id)
                    .unwrap_or_default();
                return Err(SessionError::RefreshReused {
                    user_id: reused.user_id,
                    organization_id,
                });
            }
            Spent::Expired | Spent::Unknown => return Err(SessionError::InvalidRefresh),
        };
        let user = match self.store.user_by_id(&spent.user_id).await? {
            Some(user) if user.active => user,
            _ => return Err(SessionError::InvalidRefresh),
        };
        let refresh = random_token();
        self.store
            .insert_refresh_token(
                &user.id,
                Some(&spent.family_id),
                &sha256_hex(&refresh),
                now + self.refresh_ttl(),
            )
            .await?;
        self.issue(
            &user.id,
            &user.organization_id,
            user.role,
            &spent.family_id,
            user.token_version,
            refresh,
        )
    }

    /// Ends a session: its refresh tokens are revoked and its access tokens refused from now on.
    pub async fn logout(&self, session_id: &str) -> Result<(), SessionError> {
        self.store
            .revoke_family(session_id, self.clock.now())
            .await?;
        self.forget_session(session_id);
        Ok(())
    }

    /// The caller an access token names, if it is valid now and its user still stands.
    pub async fn verify(&self, token: &str) -> Result<Arc<SessionCaller>, SessionError> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(cached) = self.lock().get(&digest) {
            if cached.until > Instant::now() {
                if self.clock.now() >= cached.caller.expires_at + LEEWAY {
                    return Err(SessionError::TokenExpired);
                }
                return Ok(cached.caller.clone());
            }
        }
        let claims = self.claims(token)?;
        match self.store.user_standing(&claims.sub).await? {
            Some((version, true)) if version == claims.ver => {}
            _ => return Err(SessionError::InvalidToken("the session has ended")),
        }
        if !self.store.family_live(&claims.sid).await? {
            return Err(SessionError::InvalidToken("the session has ended"));
        }
        let platform = self.store.organization(&claims.org).await?.platform;
        let expires_at = DateTime::from_timestamp(claims.exp, 0)
            .ok_or(SessionError::InvalidToken("exp is out of range"))?;
        let caller = Arc::new(SessionCaller {
            user_id: claims.sub,
            organization_id: claims.org,
            role: claims.role,
            session_id: claims.sid,
            expires_at,
            platform,
        });
        let left = (expires_at + LEEWAY - self.clock.now())
            .to_std()
            .unwrap_or_default();
        let mut cache = self.lock();
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(
            digest,
            Cached {
                caller: caller.clone(),
                until: Instant::now() + left.min(self.settings.standing_ttl),
            },
        );
        Ok(caller)
    }

    /// Whether a session still stands: its user active and it not logged out (an open WebSocket asks).
    pub async fn still_valid(&self, user_id: &str, session_id: &str) -> Result<bool, StoreError> {
        Ok(self
            .store
            .user_standing(user_id)
            .await?
            .is_some_and(|(_, active)| active)
            && self.store.family_live(session_id).await?)
    }

    /// Forgets a user's verified tokens at once (deactivated, role or password changed).
    pub fn forget_user(&self, user_id: &str) {
        self.lock().retain(|_, c| c.caller.user_id != user_id);
    }

    /// Forgets every verified token (a replica that fell too far behind the change feed).
    pub fn forget_all(&self) {
        self.lock().clear();
    }

    /// Forgets a session's verified tokens (it ended, here or on another replica).
    pub fn forget_session(&self, session_id: &str) {
        self.lock().retain(|_, c| c.caller.session_id != session_id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Cached>> {
        self.verified.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn refresh_ttl(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.settings.refresh_ttl).unwrap_or(chrono::Duration::days(7))
    }

    fn issue(
        &self,
        user: &str,
        org: &str,
        role: Role,
        session: &str,
        version: i64,
        refresh_token: String,
    ) -> Result<Tokens, SessionError> {
        let now = self.clock.now().timestamp();
        let ttl = self.settings.access_ttl.as_secs();
        let claims = Claims {
            iss: self.settings.issuer.clone(),
            aud: self.settings.audience.clone(),
            sub: user.to_string(),
            org: org.to_string(),
            role,
            sid: session.to_string(),
            ver: version,
            jti: random_token(),
            iat: now,
            nbf: now,
            exp: now + ttl as i64,
        };
        Ok(Tokens {
            access_token: self.sign(&claims)?,
            refresh_token,
            token_type: "Bearer",
            expires_in: ttl,
        })
    }

    /// A signed token of these claims, with the signing key (the first).
    pub fn sign(&self, claims: &Claims) -> Result<String, SessionError> {
        let key = &self.settings.keys.keys[0];
        let header = Header {
            alg: "EdDSA".into(),
            typ: "at+jwt".into(),
            kid: key.kid.clone(),
        };
        let mut token = format!(
            "{}.{}",
            B64.encode(json(&header)?),
            B64.encode(json(claims)?)
        );
        let signature = key.signing.sign(token.as_bytes());
        token.push('.');
        token.push_str(&B64.encode(signature.to_bytes()));
        Ok(token)
    }

    /// The claims of a token whose header, signature and times are right (the user's standing is not
    /// asked: [`Sessions::verify`] does).
    pub fn claims(&self, token: &str) -> Result<Claims, SessionError> {
        use SessionError::InvalidToken as Bad;
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Bad("too long"));
        }
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Bad("not a JWS compact token"));
        };
        let header: Header = B64
            .decode(header)
            .ok()
            .and_then(|h| serde_json::from_slice(&h).ok())
            .ok_or(Bad("its header does not parse"))?;
        if header.alg != "EdDSA" {
            return Err(Bad("only EdDSA is accepted"));
        }
        if header.typ != "at+jwt" {
            return Err(Bad("not an access token (typ)"));
        }
        let key = self
            .settings
            .keys
            .keys
            .iter()
            .find(|k| k.kid == header.kid)
            .ok_or(Bad("unknown kid"))?;
        let signature = B64
            .decode(signature)
            .ok()
            .and_then(|s| Signature::from_slice(&s).ok())
            .ok_or(Bad("bad signature"))?;
        let signed = &token[..token.len() - token.rsplit('.').next().unwrap_or_default().len() - 1];
        key.verifying
            .verify_strict(signed.as_bytes(), &signature)
            .map_err(|_| Bad("bad signature"))?;
        let claims: Claims = B64
            .decode(payload)
            .ok()
            .and_then(|c| serde_json::from_slice(&c).ok())
            .ok_or(Bad("its claims do not parse"))?;
        if claims.iss != self.settings.issuer {
            return Err(Bad("wrong issuer"));
        }
        if claims.aud != self.settings.audience {
            return Err(Bad("wrong audience"));
        }
        let now = self.clock.now().timestamp();
        let leeway = LEEWAY.as_secs() as i64;
        if claims.nbf > now.saturating_add(leeway) {
            return Err(Bad("not valid yet"));
        }
        if claims.exp.saturating_add(leeway) <= now {
            return Err(SessionError::TokenExpired);
        }
        Ok(claims)
    }
}

fn json<T: Serialize>(value: &T) -> Result<Vec<u8>, SessionError> {
    serde_json::to_vec(value).map_err(|e| SessionError::Internal(e.to_string()))
}

/// 256 random bits, base64url.
fn random_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    B64.encode(bytes)
}

fn sha256_hex(text: &str) -> String {
    mercator_engine::import::sha256_hex(text.as_bytes())
}
