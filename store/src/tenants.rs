//! Organizations (the tenants) and their API keys.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::{FromRow, Row};
use subtle::ConstantTimeEq;

use crate::{from_ms, new_id, now_ms, random_hex, sha256_hex, Result, Store, StoreError};

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
    pub created_at: DateTime<Utc>,
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
            created_at: from_ms(row.try_get("created_at")?),
        })
    }
}

const KEY_COLUMNS: &str = "id, organization_id, prefix, name, role, created_at";

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
        name: &str,
        role: Role,
    ) -> Result<(ApiKey, String)> {
        let secret = format!("mk_{}_{}", random_hex(6), random_hex(24));
        self.insert_api_key(organization_id, name, role, &secret)
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
        self.insert_api_key(organization_id, name, role, secret)
            .await
    }

    async fn insert_api_key(
        &self,
        organization_id: &str,
        name: &str,
        role: Role,
        secret: &str,
    ) -> Result<ApiKey> {
        self.organization(organization_id).await?;
        let id = new_id();
        sqlx::query(
            "INSERT INTO api_keys (id, organization_id, prefix, secret_sha256, name, role, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&id)
        .bind(organization_id)
        .bind(prefix_of(secret))
        .bind(sha256_hex(secret))
        .bind(name)
        .bind(role.as_str())
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

    /// Whether the organization's key `id` still exists (an open stream asks, to end when it is deleted).
    pub async fn api_key_exists(&self, organization_id: &str, id: &str) -> Result<bool> {
        let found: Option<String> =
            sqlx::query_scalar("SELECT id FROM api_keys WHERE organization_id = $1 AND id = $2")
                .bind(organization_id)
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(found.is_some())
    }

    /// Counts every key of every organization: zero only before the first start's bootstrap.
    pub async fn count_api_keys(&self) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM api_keys")
            .fetch_one(&self.pool)
            .await?)
    }

    /// Deletes one of the organization's keys; another organization's key is `NotFound`.
    pub async fn delete_api_key(&self, organization_id: &str, id: &str) -> Result<()> {
        let done = sqlx::query("DELETE FROM api_keys WHERE organization_id = $1 AND id = $2")
            .bind(organization_id)
            .bind(id)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("api key"));
        }
        Ok(())
    }
}

/// A key's public, indexed part: its first 12 characters (`mk_` and 9 hex digits for generated keys).
fn prefix_of(secret: &str) -> &str {
    let end = secret
        .char_indices()
        .nth(PREFIX_CHARS)
        .map_or(secret.len(), |(i, _)| i);
    &secret[..end]
}

const PREFIX_CHARS: usize = 12;
