//! Mercator's domain store: organizations and API keys so far (the store issue adds materials, suppliers,
//! prices), on SQLite (the embedded default: one file under --data-dir, WAL) or PostgreSQL
//! (`postgres://...`), through one code path.
//!
//! The choice, made once: sqlx's `Any` driver with portable SQL and one migrations folder, rather than a
//! trait with one implementation per database. The rules that keep it portable: ids are TEXT (random hex
//! made here), times are BIGINT milliseconds since the epoch, money and quantities will be DOUBLE
//! PRECISION, JSON is TEXT; placeholders are `$1`, which both databases take; no dialect features (no
//! `FOR UPDATE`, no `RETURNING` differences relied upon). Runtime queries with `FromRow`, no macros, so the
//! build needs no database.
//!
//! Every method that touches a tenant's rows takes the organization: there is no unscoped query to call
//! by mistake, and another organization's row is simply not found.

use std::time::{SystemTime, UNIX_EPOCH};

use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, FromRow, Row};
use subtle::ConstantTimeEq;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    Conflict(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
}

pub type Result<T> = std::result::Result<T, StoreError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Viewer,
    Analyst,
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

#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct Organization {
    pub id: String,
    pub name: String,
    pub created_at: i64,
}

/// An API key as stored: never its secret, only the secret's SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub id: String,
    pub organization_id: String,
    /// The public part of the key, shown in lists so people can tell keys apart.
    pub prefix: String,
    pub name: String,
    pub role: Role,
    pub created_at: i64,
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
            created_at: row.try_get("created_at")?,
        })
    }
}

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

impl Store {
    /// Connects and applies the migrations. `url`: `sqlite://path/to/file.db` (created if missing, WAL) or
    /// `postgres://user@host:port/db`.
    pub async fn connect(url: &str) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let sqlite = url.starts_with("sqlite:");
        let url = if sqlite && !url.contains('?') {
            format!("{url}?mode=rwc")
        } else {
            url.to_string()
        };
        let pool = AnyPoolOptions::new()
            // SQLite has one writer: a small pool; PostgreSQL is shared by replicas: keep it modest too.
            .max_connections(if sqlite { 4 } else { 8 })
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if sqlite {
                        sqlx::query("PRAGMA journal_mode = WAL")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA foreign_keys = ON")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA busy_timeout = 5000")
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Store { pool })
    }

    /// Closes the pool's connections.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    pub async fn create_organization(&self, name: &str) -> Result<Organization> {
        let org = Organization {
            id: random_hex(16),
            name: name.to_string(),
            created_at: now_ms(),
        };
        sqlx::query("INSERT INTO organizations (id, name, created_at) VALUES ($1, $2, $3)")
            .bind(&org.id)
            .bind(&org.name)
            .bind(org.created_at)
            .execute(&self.pool)
            .await?;
        Ok(org)
    }

    pub async fn organization(&self, id: &str) -> Result<Organization> {
        sqlx::query_as("SELECT id, name, created_at FROM organizations WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound)
    }

    pub async fn list_organizations(&self) -> Result<Vec<Organization>> {
        Ok(
            sqlx::query_as(
                "SELECT id, name, created_at FROM organizations ORDER BY created_at, id",
            )
            .fetch_all(&self.pool)
            .await?,
        )
    }

    /// Creates a key and returns it with its secret, which is never stored and never shown again.
    pub async fn create_api_key(
        &self,
        organization_id: &str,
        name: &str,
        role: Role,
    ) -> Result<(ApiKey, String)> {
        self.organization(organization_id).await?;
        let prefix = format!("mk_{}", random_hex(6));
        let secret = format!("{prefix}_{}", random_hex(24));
        let key = ApiKey {
            id: random_hex(16),
            organization_id: organization_id.to_string(),
            prefix,
            name: name.to_string(),
            role,
            created_at: now_ms(),
        };
        sqlx::query(
            "INSERT INTO api_keys (id, organization_id, prefix, secret_sha256, name, role, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&key.id)
        .bind(&key.organization_id)
        .bind(&key.prefix)
        .bind(sha256_hex(&secret))
        .bind(&key.name)
        .bind(key.role.as_str())
        .bind(key.created_at)
        .execute(&self.pool)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::Conflict("key prefix taken".into()),
            _ => StoreError::Database(e),
        })?;
        Ok((key, secret))
    }

    /// The key a caller presented, if it is one: looked up by its public prefix (an indexed column), then
    /// its hash compared in constant time.
    pub async fn authenticate(&self, presented: &str) -> Result<Option<ApiKey>> {
        let Some(prefix) = presented.rsplit_once('_').map(|(p, _)| p) else {
            return Ok(None);
        };
        let row = sqlx::query(
            "SELECT id, organization_id, prefix, name, role, created_at, secret_sha256 FROM api_keys WHERE prefix = $1",
        )
        .bind(prefix)
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
        Ok(sqlx::query_as(
            "SELECT id, organization_id, prefix, name, role, created_at FROM api_keys \
             WHERE organization_id = $1 ORDER BY created_at, id",
        )
        .bind(organization_id)
        .fetch_all(&self.pool)
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
            return Err(StoreError::NotFound);
        }
        Ok(())
    }
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
