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
