//! What the model registry keeps between restarts: each model's active version and the one before it.

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{FromRow, Row};

use crate::{now_ms, Result, Store};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ModelPolicy {
    pub active_version: u64,
    /// What rollback returns to.
    pub previous_version: Option<u64>,
}

/// How a model's unnamed requests are shared between versions, and which version shadows them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct TrafficPolicy {
    /// (version, percent), adding up to 100; empty: all to the active version.
    pub split: Vec<(u64, u32)>,
    pub shadow: Option<u64>,
}

impl<'r> FromRow<'r, AnyRow> for ModelPolicy {
    fn from_row(row: &'r AnyRow) -> sqlx::Result<Self> {
        Ok(ModelPolicy {
            active_version: row.try_get::<i64, _>("active_version")? as u64,
            previous_version: row
                .try_get::<Option<i64>, _>("previous_version")?
                .map(|v| v as u64),
        })
    }
}

/// A registered version's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VersionRecord {
    pub sha256: String,
    pub size_bytes: u64,
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// The API key that uploaded it, or `import` for a version imported from --models-dir.
    pub created_by: String,
}

impl Store {
    /// Records a registered version (once: a version number keeps its first record).
    pub async fn record_model_version(
        &self,
        name: &str,
        version: u64,
        sha256: &str,
        size_bytes: u64,
        created_by: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO model_versions (name, version, sha256, size_bytes, created_at, created_by) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name, version) DO NOTHING",
        )
        .bind(name)
        .bind(version as i64)
        .bind(sha256)
        .bind(size_bytes as i64)
        .bind(now_ms())
        .bind(created_by)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn model_version_record(
        &self,
        name: &str,
        version: u64,
    ) -> Result<Option<VersionRecord>> {
        let row = sqlx::query(
            "SELECT sha256, size_bytes, created_at, created_by FROM model_versions \
             WHERE name = $1 AND version = $2",
        )
        .bind(name)
        .bind(version as i64)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(VersionRecord {
                sha256: row.try_get("sha256")?,
                size_bytes: row.try_get::<i64, _>("size_bytes")? as u64,
                created_at: crate::from_ms(row.try_get("created_at")?),
                created_by: row.try_get("created_by")?,
            })
        })
        .transpose()
    }

    pub async fn model_policy(&self, name: &str) -> Result<Option<ModelPolicy>> {
        Ok(sqlx::query_as(
            "SELECT active_version, previous_version FROM model_policies WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Every model's policy, by name.
    pub async fn model_policies(&self) -> Result<Vec<(String, ModelPolicy)>> {
        let rows = sqlx::query(
            "SELECT name, active_version, previous_version FROM model_policies ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("name")?, ModelPolicy::from_row(row)?)))
            .collect()
    }

    /// The model's traffic policy, if one is set.
    pub async fn model_traffic(&self, name: &str) -> Result<Option<TrafficPolicy>> {
        let text: Option<Option<String>> =
            sqlx::query_scalar("SELECT traffic FROM model_policies WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?;
        Ok(text.flatten().and_then(|t| serde_json::from_str(&t).ok()))
    }

    /// Records the traffic policy (`active` is recorded too for a model with no policy yet).
    pub async fn set_model_traffic(
        &self,
        name: &str,
        active: u64,
        traffic: &TrafficPolicy,
    ) -> Result<()> {
        let text = serde_json::to_string(traffic).expect("a policy serializes");
        sqlx::query(
            "INSERT INTO model_policies (name, active_version, previous_version, updated_at, traffic) \
             VALUES ($1, $2, NULL, $3, $4) ON CONFLICT (name) DO UPDATE SET traffic = $4, updated_at = $3",
        )
        .bind(name)
        .bind(active as i64)
        .bind(now_ms())
        .bind(text)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records `version` as active and `previous` as what rollback returns to.
    pub async fn set_model_policy(&self, name: &str, policy: ModelPolicy) -> Result<()> {
        sqlx::query(
            "INSERT INTO model_policies (name, active_version, previous_version, updated_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO UPDATE SET \
             active_version = $2, previous_version = $3, updated_at = $4",
        )
        .bind(name)
        .bind(policy.active_version as i64)
        .bind(policy.previous_version.map(|v| v as i64))
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
