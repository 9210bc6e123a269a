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

impl Store {
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
