//! What the model registry keeps between restarts: each model's active version and the one before it.

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{FromRow, Row};

use crate::changes::{ChangeKind, Changed};
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

/// Where a version is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum VersionState {
    /// An upload being checked.
    Validating,
    Ready,
    /// An upload that did not pass its checks (the reason is kept).
    Failed,
    /// Deleted: it serves no more and an import does not bring it back.
    Retired,
}

impl VersionState {
    fn as_str(self) -> &'static str {
        match self {
            VersionState::Validating => "validating",
            VersionState::Ready => "ready",
            VersionState::Failed => "failed",
            VersionState::Retired => "retired",
        }
    }

    fn parse(text: &str) -> VersionState {
        match text {
            "validating" => VersionState::Validating,
            "failed" => VersionState::Failed,
            "retired" => VersionState::Retired,
            _ => VersionState::Ready,
        }
    }
}

/// A registered version's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VersionRecord {
    #[serde(skip)]
    pub name: String,
    #[serde(skip)]
    pub version: u64,
    pub state: VersionState,
    /// Why it failed.
    pub reason: Option<String>,
    /// Whether the engine should hold it (a ready version can be unloaded and loaded again).
    pub loaded: bool,
    /// The artifact's SHA-256 and size; none until an upload passed its checks.
    pub sha256: Option<String>,
    pub size_bytes: u64,
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// The API key that uploaded it, or `import` for a version imported from --models-dir.
    pub created_by: String,
}

impl<'r> FromRow<'r, AnyRow> for VersionRecord {
    fn from_row(row: &'r AnyRow) -> sqlx::Result<Self> {
        let sha: String = row.try_get("sha256")?;
        Ok(VersionRecord {
            name: row.try_get("name")?,
            version: row.try_get::<i64, _>("version")? as u64,
            state: VersionState::parse(&row.try_get::<String, _>("state")?),
            reason: row.try_get("reason")?,
            loaded: row.try_get::<i64, _>("loaded")? != 0,
            sha256: (!sha.is_empty()).then_some(sha),
            size_bytes: row.try_get::<i64, _>("size_bytes")? as u64,
            created_at: crate::from_ms(row.try_get("created_at")?),
            created_by: row.try_get("created_by")?,
        })
    }
}

const VERSION_COLUMNS: &str =
    "name, version, state, reason, loaded, sha256, size_bytes, created_at, created_by";

impl Store {
    /// Records a ready version (once: a version number keeps its first record).
    pub async fn record_model_version(
        &self,
        name: &str,
        version: u64,
        sha256: &str,
        size_bytes: u64,
        created_by: &str,
    ) -> Result<()> {
        let mut tx = self.write_tx().await?;
        let done = sqlx::query(
            "INSERT INTO model_versions (name, version, sha256, size_bytes, created_at, created_by) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name, version) DO NOTHING",
        )
        .bind(name)
        .bind(version as i64)
        .bind(sha256)
        .bind(size_bytes as i64)
        .bind(now_ms())
        .bind(created_by)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() > 0 {
            self.record_change(&mut tx, Changed::of(ChangeKind::Model, None, name))
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Claims the next version number of `name` for an upload, at least `at_least`, recorded as validating.
    /// Two uploads at once get two numbers.
    pub async fn claim_model_version(
        &self,
        name: &str,
        at_least: u64,
        created_by: &str,
    ) -> Result<u64> {
        loop {
            let highest: Option<i64> =
                sqlx::query_scalar("SELECT MAX(version) FROM model_versions WHERE name = $1")
                    .bind(name)
                    .fetch_one(&self.pool)
                    .await?;
            let version = (highest.unwrap_or(0) as u64 + 1).max(at_least);
            let claimed = sqlx::query(
                "INSERT INTO model_versions (name, version, sha256, size_bytes, created_at, created_by, state) \
                 VALUES ($1, $2, '', 0, $3, $4, 'validating') ON CONFLICT (name, version) DO NOTHING",
            )
            .bind(name)
            .bind(version as i64)
            .bind(now_ms())
            .bind(created_by)
            .execute(&self.pool)
            .await?;
            if claimed.rows_affected() == 1 {
                return Ok(version);
            }
        }
    }

    /// Ends a claimed version's validation: ready with its artifact, or failed with the reason.
    pub async fn finish_model_version(
        &self,
        name: &str,
        version: u64,
        outcome: std::result::Result<(&str, u64), &str>,
    ) -> Result<()> {
        let (state, sha, size, reason) = match outcome {
            Ok((sha, size)) => (VersionState::Ready, sha, size, None),
            Err(reason) => (VersionState::Failed, "", 0, Some(reason)),
        };
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "UPDATE model_versions SET state = $3, sha256 = $4, size_bytes = $5, reason = $6, \
             loaded = $7 WHERE name = $1 AND version = $2",
        )
        .bind(name)
        .bind(version as i64)
        .bind(state.as_str())
        .bind(sha)
        .bind(size as i64)
        .bind(reason)
        .bind(i64::from(state == VersionState::Ready))
        .execute(&mut *tx)
        .await?;
        self.record_change(&mut tx, Changed::of(ChangeKind::Model, None, name))
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Marks a version retired (it stays as a tombstone) and not loaded.
    pub async fn retire_model_version(&self, name: &str, version: u64) -> Result<()> {
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "UPDATE model_versions SET state = 'retired', loaded = 0 WHERE name = $1 AND version = $2",
        )
        .bind(name)
        .bind(version as i64)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM model_files WHERE name = $1 AND version = $2")
            .bind(name)
            .bind(version as i64)
            .execute(&mut *tx)
            .await?;
        self.record_change(&mut tx, Changed::of(ChangeKind::Model, None, name))
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records whether the engine should hold a version (kept across restarts).
    pub async fn set_model_version_loaded(
        &self,
        name: &str,
        version: u64,
        loaded: bool,
    ) -> Result<()> {
        let mut tx = self.write_tx().await?;
        sqlx::query("UPDATE model_versions SET loaded = $3 WHERE name = $1 AND version = $2")
            .bind(name)
            .bind(version as i64)
            .bind(i64::from(loaded))
            .execute(&mut *tx)
            .await?;
        self.record_change(&mut tx, Changed::of(ChangeKind::Model, None, name))
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn model_version_record(
        &self,
        name: &str,
        version: u64,
    ) -> Result<Option<VersionRecord>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {VERSION_COLUMNS} FROM model_versions WHERE name = $1 AND version = $2"
        ))
        .bind(name)
        .bind(version as i64)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Every recorded version (of one model, or of all), by name then version.
    pub async fn model_versions(&self, name: Option<&str>) -> Result<Vec<VersionRecord>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {VERSION_COLUMNS} FROM model_versions WHERE ($1 IS NULL OR name = $1) \
             ORDER BY name, version"
        ))
        .bind(name)
        .fetch_all(&self.pool)
        .await?)
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
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO model_policies (name, active_version, previous_version, updated_at, traffic) \
             VALUES ($1, $2, NULL, $3, $4) ON CONFLICT (name) DO UPDATE SET traffic = $4, updated_at = $3",
        )
        .bind(name)
        .bind(active as i64)
        .bind(now_ms())
        .bind(text)
        .execute(&mut *tx)
        .await?;
        self.record_change(&mut tx, Changed::of(ChangeKind::Model, None, name))
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records `version` as active and `previous` as what rollback returns to.
    pub async fn set_model_policy(&self, name: &str, policy: ModelPolicy) -> Result<()> {
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO model_policies (name, active_version, previous_version, updated_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO UPDATE SET \
             active_version = $2, previous_version = $3, updated_at = $4",
        )
        .bind(name)
        .bind(policy.active_version as i64)
        .bind(policy.previous_version.map(|v| v as i64))
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        self.record_change(&mut tx, Changed::of(ChangeKind::Model, None, name))
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Keeps an uploaded version's files (relative path, bytes), replacing any kept before, for the other
    /// replicas of a fleet. Not on SQLite: one process serves it, and the files are on its disk already.
    pub async fn put_model_files(
        &self,
        name: &str,
        version: u64,
        files: &[(String, Vec<u8>)],
    ) -> Result<()> {
        if self.sqlite {
            return Ok(());
        }
        let mut tx = self.write_tx().await?;
        sqlx::query("DELETE FROM model_files WHERE name = $1 AND version = $2")
            .bind(name)
            .bind(version as i64)
            .execute(&mut *tx)
            .await?;
        for (path, bytes) in files {
            sqlx::query(
                "INSERT INTO model_files (name, version, path, bytes) VALUES ($1, $2, $3, $4)",
            )
            .bind(name)
            .bind(version as i64)
            .bind(path)
            .bind(bytes.as_slice())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// An uploaded version's files, as kept (empty: none kept, an imported version).
    pub async fn model_files(&self, name: &str, version: u64) -> Result<Vec<(String, Vec<u8>)>> {
        let rows = sqlx::query(
            "SELECT path, bytes FROM model_files WHERE name = $1 AND version = $2 ORDER BY path",
        )
        .bind(name)
        .bind(version as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("path")?, row.try_get("bytes")?)))
            .collect()
    }
}
