//! Organizations (the tenants) and their API keys.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::{FromRow, Row};
use subtle::ConstantTimeEq;

use crate::changes::{ChangeKind, Changed};
use crate::{from_ms, new_id, now_ms, sha256_hex, Result, Store, StoreError};

/// What a key may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read.
    Viewer,
    /// Read, predict, write prices.
    Analyst,
    /// Everything in its organization, including keys, models and alerts.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Analyst => "analyst",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "viewer" => Role::Viewer,
            "analyst" => Role::Analyst,
            "admin" => Role::Admin,
            _ => return None,
        })
    }
}

/// What kind of route a key may call, on top of its role (a key's effective rights are its role's narrowed
/// to its scopes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum KeyScope {
    /// Predictions, analytics, batch jobs and V2 inference.
    Predict,
    /// Reading anything else.
    Read,
    /// Writing the catalogue, prices and alert rules.
    Write,
    /// The organization's keys, organizations and the audit log.
    Admin,
    /// The model registry (its reads and changes) and Triton's repository extension.
    Models,
}

impl KeyScope {
    pub const ALL: [KeyScope; 5] = [
        KeyScope::Predict,
        KeyScope::Read,
        KeyScope::Write,
        KeyScope::Admin,
        KeyScope::Models,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            KeyScope::Predict => "predict",
            KeyScope::Read => "read",
            KeyScope::Write => "write",
            KeyScope::Admin => "admin",
            KeyScope::Models => "models",
        }
    }

    pub fn parse(s: &str) -> Option<KeyScope> {
        KeyScope::ALL.into_iter().find(|scope| scope.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Organization {
    pub id: String,
    pub name: String,
    /// Its admins are the platform's owners: they may create and list organizations.
    pub platform: bool,
    pub created_at: DateTime<Utc>,
}

impl<'r> FromRow<'r, AnyRow> for Organization {
    fn from_row(row: &'r AnyRow) -> sqlx::Result<Self> {
        Ok(Organization {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            platform: row.try_get::<i64, _>("platform")? != 0,
            created_at: from_ms(row.try_get("created_at")?),
        })
    }
}

/// An API key as stored: never its secret, only the secret's SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiKey {
    pub id: String,
    pub organization_id: String,
    /// The public part of the key, shown in lists so people can tell keys apart.
    pub prefix: String,
    pub name: String,
    pub role: Role,
    /// The scopes it may use; null: every scope its role allows.
    pub scopes: Option<Vec<KeyScope>>,
    /// When it stops working; null: never (the operator's keys).
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was last used (to the minute: usage is written at most once a minute).
    pub last_used_at: Option<DateTime<Utc>>,
    /// Its own rate limits (`predict=600/min,all=10000/h`); null: the server's default for keys.
    pub rate_limits: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl ApiKey {
    /// Whether it still works at `now`.
    pub fn active_at(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_none_or(|end| now < end)
    }

    /// Whether it may call a route of `scope`.
    pub fn allows(&self, scope: KeyScope) -> bool {
        self.scopes.as_ref().is_none_or(|s| s.contains(&scope))
    }
}

/// A key to make: its name and role, and optionally narrower scopes and an end.
#[derive(Debug, Clone)]
pub struct KeySpec {
    pub name: String,
    pub role: Role,
    pub scopes: Option<Vec<KeyScope>>,
    pub expires_at: Option<DateTime<Utc>>,
    /// Its own rate limits, as text the caller has checked.
    pub rate_limits: Option<String>,
}

impl KeySpec {
    /// A key of `role` with every scope, that never expires (the operator's and the demo's keys).
    pub fn unrestricted(name: &str, role: Role) -> KeySpec {
        KeySpec {
            name: name.to_string(),
            role,
            scopes: None,
            expires_at: None,
            rate_limits: None,
        }
    }
}

impl<'r> FromRow<'r, AnyRow> for ApiKey {
    fn from_row(row: &'r AnyRow) -> sqlx::Result<Self> {
        let role: String = row.try_get("role")?;
        Ok(ApiKey {
            id: row.try_get("id")?,
            organization_id: row.try_get("organization_id")?,
            prefix: row.try_get("prefix")?,
            name: row.try_get("name")?,
            role: Role::parse(&role)
                .ok_or_else(|| sqlx::Error::Decode(format!("unknown role {role}").into()))?,
            scopes: row
                .try_get::<Option<String>, _>("scopes")?
                .map(|text| {
                    text.split(',')
                        .filter(|s| !s.is_empty())
                        .map(|s| {
                            KeyScope::parse(s).ok_or_else(|| {
                                sqlx::Error::Decode(format!("unknown scope {s}").into())
                            })
                        })
                        .collect::<sqlx::Result<Vec<KeyScope>>>()
                })
                .transpose()?,
            expires_at: row.try_get::<Option<i64>, _>("expires_at")?.map(from_ms),
            last_used_at: row.try_get::<Option<i64>, _>("last_used_at")?.map(from_ms),
            rate_limits: row.try_get("rate_limits")?,
            created_at: from_ms(row.try_get("created_at")?),
        })
    }
}

const KEY_COLUMNS: &str =
    "id, organization_id, prefix, name, role, scopes, expires_at, last_used_at, rate_limits, \
     created_at";

impl Store {
    /// Creates a tenant. `platform`: its admins also manage organizations (only the first start's default
    /// organization is created so).
    pub async fn create_organization(&self, name: &str, platform: bool) -> Result<Organization> {
        let org = Organization {
            id: new_id(),
            name: name.to_string(),
            platform,
            created_at: from_ms(now_ms()),
        };
        sqlx::query(
            "INSERT INTO organizations (id, name, platform, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(&org.id)
        .bind(&org.name)
        .bind(i64::from(platform))
        .bind(org.created_at.timestamp_millis())
        .execute(&self.pool)
        .await?;
        Ok(org)
    }

    pub async fn organization(&self, id: &str) -> Result<Organization> {
        sqlx::query_as("SELECT id, name, platform, created_at FROM organizations WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound("organization"))
    }

    pub async fn list_organizations(&self) -> Result<Vec<Organization>> {
        Ok(sqlx::query_as(
            "SELECT id, name, platform, created_at FROM organizations ORDER BY created_at, id",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Creates a key and returns it with its secret, which is never stored and never shown again.
    pub async fn create_api_key(
        &self,
        organization_id: &str,
        spec: &KeySpec,
    ) -> Result<(ApiKey, String)> {
        let secret = generate_key();
        self.insert_api_key(organization_id, spec, &secret)
            .await
            .map(|key| (key, secret))
    }

    /// Registers a secret chosen by the operator (the first admin key, from MERCATOR_ADMIN_KEY).
    pub async fn import_api_key(
        &self,
        organization_id: &str,
        name: &str,
        role: Role,
        secret: &str,
    ) -> Result<ApiKey> {
        self.insert_api_key(organization_id, &KeySpec::unrestricted(name, role), secret)
            .await
    }

    async fn insert_api_key(
        &self,
        organization_id: &str,
        spec: &KeySpec,
        secret: &str,
    ) -> Result<ApiKey> {
        self.organization(organization_id).await?;
        let id = new_id();
        let scopes = spec.scopes.as_ref().map(|scopes| {
            scopes
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(",")
        });
        sqlx::query(
            "INSERT INTO api_keys (id, organization_id, prefix, secret_sha256, name, role, scopes, \
             expires_at, rate_limits, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&id)
        .bind(organization_id)
        .bind(prefix_of(secret))
        .bind(sha256_hex(secret))
        .bind(&spec.name)
        .bind(spec.role.as_str())
        .bind(scopes)
        .bind(spec.expires_at.map(|t| t.timestamp_millis()))
        .bind(spec.rate_limits.as_deref())
        .bind(now_ms())
        .execute(&self.pool)
        .await
        .map_err(|e| StoreError::from_write(e, "an API key with this prefix exists"))?;
        sqlx::query_as(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1"))
            .bind(&id)
            .fetch_one(&self.pool)
            .await
            .map_err(Into::into)
    }

    /// The key a caller presented, if it is one: looked up by its public prefix (an indexed column), then
    /// its hash compared in constant time.
    pub async fn authenticate(&self, presented: &str) -> Result<Option<ApiKey>> {
        let row = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS}, secret_sha256 FROM api_keys WHERE prefix = $1"
        ))
        .bind(prefix_of(presented))
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let stored: String = row.try_get("secret_sha256")?;
        if !bool::from(stored.as_bytes().ct_eq(sha256_hex(presented).as_bytes())) {
            return Ok(None);
        }
        Ok(Some(ApiKey::from_row(&row)?))
    }

    pub async fn list_api_keys(&self, organization_id: &str) -> Result<Vec<ApiKey>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE organization_id = $1 ORDER BY created_at, id"
        ))
        .bind(organization_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Whether the organization's key `id` still exists and has not expired at `now` (an open stream asks,
    /// to end when it is deleted or expires).
    pub async fn api_key_active(
        &self,
        organization_id: &str,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let found: Option<Option<i64>> = sqlx::query_scalar(
            "SELECT expires_at FROM api_keys WHERE organization_id = $1 AND id = $2",
        )
        .bind(organization_id)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(found.is_some_and(|end| end.is_none_or(|end| now.timestamp_millis() < end)))
    }

    /// Records when keys were last used: (key id, when), one update each.
    pub async fn touch_api_keys(&self, used: &[(String, DateTime<Utc>)]) -> Result<()> {
        for (id, at) in used {
            sqlx::query(
                "UPDATE api_keys SET last_used_at = $1 WHERE id = $2 \
                 AND (last_used_at IS NULL OR last_used_at < $1)",
            )
            .bind(at.timestamp_millis())
            .bind(id)
            .execute(&self.pool)
            .await?;
        }
        Ok(())
    }

    /// Counts every key of every organization: zero only before the first start's bootstrap.
    pub async fn count_api_keys(&self) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM api_keys")
            .fetch_one(&self.pool)
            .await?)
    }

    /// Deletes one of the organization's keys; another organization's key is `NotFound`.
    pub async fn delete_api_key(&self, organization_id: &str, id: &str) -> Result<()> {
        let mut tx = self.write_tx().await?;
        let done = sqlx::query("DELETE FROM api_keys WHERE organization_id = $1 AND id = $2")
            .bind(organization_id)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("api key"));
        }
        self.record_change(
            &mut tx,
            Changed::of(ChangeKind::Key, Some(organization_id), id),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// The type prefix of the keys Mercator makes: a leaked key is recognisable (secret scanners match it).
pub const KEY_PREFIX: &str = "mk_live_";
/// A made key: the type prefix, 30 base62 characters (178 bits) and 6 of CRC32 over the two.
const KEY_RANDOM_CHARS: usize = 30;
const KEY_CHECK_CHARS: usize = 6;
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A new key: `mk_live_`, random base62, then a checksum of what precedes it.
pub fn generate_key() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    let mut key = String::from(KEY_PREFIX);
    key.extend((0..KEY_RANDOM_CHARS).map(|_| BASE62[rng.random_range(0..62)] as char));
    let check = checksum(&key);
    key.push_str(&check);
    key
}

/// The base62 CRC32 of `text`, 6 characters.
fn checksum(text: &str) -> String {
    let mut n = crc32fast::hash(text.as_bytes());
    let mut out = [b'0'; KEY_CHECK_CHARS];
    for digit in out.iter_mut().rev() {
        *digit = BASE62[(n % 62) as usize];
        n /= 62;
    }
    out.iter().map(|&b| b as char).collect()
}

/// Whether a presented key could be one: a key with Mercator's type prefix must have its length and a
/// checksum that matches (else it is refused without a lookup). Keys in other forms (an operator's
/// MERCATOR_ADMIN_KEY, keys made before the typed form) are looked up as they are.
pub fn plausible_key(presented: &str) -> bool {
    match presented.strip_prefix(KEY_PREFIX) {
        Some(rest) if rest.len() == KEY_RANDOM_CHARS + KEY_CHECK_CHARS && rest.is_ascii() => {
            let (body, check) = presented.split_at(presented.len() - KEY_CHECK_CHARS);
            checksum(body) == check
        }
        Some(_) => false,
        None => true,
    }
}

/// A key's public, indexed part: for a typed key its prefix and 8 characters (`mk_live_` + 8), else the first
/// 12 characters (`mk_` and 9 hex digits for the keys made before the typed form).
fn prefix_of(secret: &str) -> &str {
    let chars = if secret.starts_with(KEY_PREFIX) {
        KEY_PREFIX.len() + 8
    } else {
        LEGACY_PREFIX_CHARS
    };
    let end = secret
        .char_indices()
        .nth(chars)
        .map_or(secret.len(), |(i, _)| i);
    &secret[..end]
}

const LEGACY_PREFIX_CHARS: usize = 12;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_keys_carry_their_type_and_a_checksum_that_catches_a_typo() {
        let key = generate_key();
        assert!(key.starts_with("mk_live_"), "{key}");
        assert_eq!(key.len(), 8 + 30 + 6);
        assert!(plausible_key(&key));
        assert_eq!(prefix_of(&key), &key[..16]);
        // One character changed anywhere after the prefix: the checksum no longer matches.
        for at in KEY_PREFIX.len()..key.len() {
            let mut typo: Vec<u8> = key.clone().into_bytes();
            typo[at] = if typo[at] == b'a' { b'b' } else { b'a' };
            let typo = String::from_utf8(typo).unwrap();
            assert!(!plausible_key(&typo), "{typo}");
        }
        assert!(!plausible_key("mk_live_short"));
        assert!(!plausible_key(&format!("{key}x")));
        // Other forms are looked up as they are.
        assert!(plausible_key(
            "mk_testadmin_0123456789abcdef0123456789abcdef"
        ));
        assert_eq!(prefix_of("mk_0a1b2c_0123456789"), "mk_0a1b2c_01");
    }

    #[test]
    fn scopes_read_back_as_written() {
        for scope in KeyScope::ALL {
            assert_eq!(KeyScope::parse(scope.as_str()), Some(scope));
        }
        assert_eq!(KeyScope::parse("everything"), None);
    }
}
