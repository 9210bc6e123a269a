//! Who may call: API keys made under the platform's policy, users with passwords ([`users`],
//! [`passwords`]) and their signed-in sessions ([`sessions`]).
//!
//! API keys made under the platform's policy: a key names its scopes (or has every scope its role allows)
//! and ends (`expires_at`, by default `--api-key-default-ttl-days` after it is made, at most
//! `--api-key-max-ttl-days`). The operator's keys (the first start's, `MERCATOR_ADMIN_KEY`, an
//! organization's first admin key, the demo's) are made without an end by the server itself.

pub mod passwords;
pub mod sessions;
pub mod users;

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use mercator_store::{ApiKey, FieldErrors, KeyScope, KeySpec, Role, Store, StoreError};

use crate::clock::Clock;

/// How long keys live.
#[derive(Debug, Clone, Copy)]
pub struct KeyPolicy {
    /// The end of a key made without one.
    pub default_ttl: Duration,
    /// The latest end a key may have, from when it is made.
    pub max_ttl: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A value that breaks a rule, by field.
    #[error("{message}")]
    Invalid {
        message: String,
        details: FieldErrors,
    },
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

impl KeyError {
    fn invalid(field: &str, message: impl Into<String>) -> KeyError {
        let message = message.into();
        KeyError::Invalid {
            details: FieldErrors::one(field, message.clone()),
            message: format!("{field}: {message}"),
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            KeyError::Invalid { .. } => "validation_error",
            KeyError::Store(e) => e.code(),
        }
    }
}

/// A key a caller asks for.
#[derive(Debug, Clone)]
pub struct KeyRequest {
    pub name: String,
    pub role: Role,
    /// None: every scope its role allows.
    pub scopes: Option<Vec<KeyScope>>,
    /// None: the policy's default.
    pub expires_at: Option<DateTime<Utc>>,
    /// Its own rate limits ([`crate::limits::Plan`] text); None: the server's default for keys.
    pub rate_limits: Option<String>,
}

/// The organization's API keys.
pub struct ApiKeys {
    store: Store,
    policy: KeyPolicy,
    clock: Arc<Clock>,
}

impl ApiKeys {
    pub fn new(store: Store, policy: KeyPolicy, clock: Arc<Clock>) -> ApiKeys {
        ApiKeys {
            store,
            policy,
            clock,
        }
    }

    /// Makes a key in `org`: answers it and its secret (shown this once).
    pub async fn create(
        &self,
        org: &str,
        request: KeyRequest,
    ) -> Result<(ApiKey, String), KeyError> {
        let spec = spec(&self.policy, self.clock.now(), request)?;
        Ok(self.store.create_api_key(org, &spec).await?)
    }
}

/// The request checked against the policy at `now`, its defaults filled in.
fn spec(policy: &KeyPolicy, now: DateTime<Utc>, request: KeyRequest) -> Result<KeySpec, KeyError> {
    let name = request.name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(KeyError::invalid("name", "must be 1 to 200 characters"));
    }
    let scopes = match request.scopes {
        Some(scopes) if scopes.is_empty() => {
            return Err(KeyError::invalid(
                "scopes",
                "must name at least one scope (leave it out for every scope the role allows)",
            ))
        }
        Some(scopes) => Some(
            KeyScope::ALL
                .into_iter()
                .filter(|s| scopes.contains(s))
                .collect(),
        ),
        None => None,
    };
    let after = |ttl| {
        now.checked_add_signed(ttl)
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    };
    let latest = after(policy.max_ttl);
    let expires_at = match request.expires_at {
        Some(end) if end <= now => {
            return Err(KeyError::invalid("expires_at", "must be in the future"))
        }
        Some(end) if end > latest => {
            return Err(KeyError::invalid(
                "expires_at",
                format!(
                    "must be at most {} days away (--api-key-max-ttl-days): {latest} at the latest",
                    policy.max_ttl.num_days()
                ),
            ))
        }
        Some(end) => end,
        None => after(policy.default_ttl).min(latest),
    };
    let rate_limits = match request.rate_limits {
        Some(text) if text.len() > 500 => {
            return Err(KeyError::invalid(
                "rate_limits",
                "must be at most 500 characters",
            ))
        }
        Some(text) => match text.parse::<crate::limits::Plan>() {
            // Kept in the one spelling the server prints.
            Ok(plan) => Some(plan.to_string()),
            Err(e) => return Err(KeyError::invalid("rate_limits", e)),
        },
        None => None,
    };
    Ok(KeySpec {
        name: name.to_string(),
        role: request.role,
        scopes,
        expires_at: Some(expires_at),
        rate_limits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: KeyPolicy = KeyPolicy {
        default_ttl: Duration::days(90),
        max_ttl: Duration::days(366),
    };

    fn request() -> KeyRequest {
        KeyRequest {
            name: " ci ".into(),
            role: Role::Analyst,
            scopes: None,
            expires_at: None,
            rate_limits: None,
        }
    }

    #[test]
    fn rate_limits_are_checked_and_kept_in_one_spelling() {
        let now = Utc::now();
        let with = |text: &str| KeyRequest {
            rate_limits: Some(text.into()),
            ..request()
        };
        let made = spec(&POLICY, now, with(" predict = 600/minute, all=1000/hour")).unwrap();
        assert_eq!(
            made.rate_limits.as_deref(),
            Some("predict=600/min,all=1000/h")
        );
        assert_eq!(
            spec(&POLICY, now, with("")).unwrap().rate_limits.as_deref(),
            Some(""),
            "empty: this key has no limit, whatever the default"
        );
        for bad in ["predict=0/min", "guess=1/s", "predict=1/s,predict=2/s"] {
            match spec(&POLICY, now, with(bad)) {
                Err(KeyError::Invalid { message, .. }) => {
                    assert!(message.starts_with("rate_limits:"), "{message}")
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert!(spec(&POLICY, now, with(&"a".repeat(501))).is_err());
    }

    #[test]
    fn a_key_ends_by_default_and_never_past_the_limit() {
        let now = Utc::now();
        let made = spec(&POLICY, now, request()).unwrap();
        assert_eq!(made.expires_at, Some(now + Duration::days(90)));
        assert_eq!(made.name, "ci");
        let at = |end| KeyRequest {
            expires_at: Some(end),
            ..request()
        };
        let refused = |end| matches!(spec(&POLICY, now, at(end)), Err(KeyError::Invalid { .. }));
        assert!(refused(now + Duration::days(366) + Duration::seconds(1)));
        assert!(refused(now));
        let chosen = now + Duration::days(366);
        assert_eq!(
            spec(&POLICY, now, at(chosen)).unwrap().expires_at,
            Some(chosen)
        );
        let short = KeyPolicy {
            default_ttl: Duration::days(90),
            max_ttl: Duration::days(30),
        };
        let made = spec(&short, now, request()).unwrap();
        assert_eq!(
            made.expires_at,
            Some(now + Duration::days(30)),
            "the limit wins"
        );
    }

    #[test]
    fn scopes_are_deduplicated_in_one_order_and_never_empty() {
        let now = Utc::now();
        let with = |scopes| KeyRequest {
            scopes: Some(scopes),
            ..request()
        };
        let made = spec(
            &POLICY,
            now,
            with(vec![KeyScope::Read, KeyScope::Predict, KeyScope::Read]),
        )
        .unwrap();
        assert_eq!(made.scopes, Some(vec![KeyScope::Predict, KeyScope::Read]));
        assert!(matches!(
            spec(&POLICY, now, with(vec![])),
            Err(KeyError::Invalid { .. })
        ));
        let blank = KeyRequest {
            name: "  ".into(),
            ..request()
        };
        assert!(matches!(
            spec(&POLICY, now, blank),
            Err(KeyError::Invalid { .. })
        ));
    }
}
