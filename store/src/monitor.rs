//! Live profiles of monitored model versions, per replica and bucket of time: what `services::monitor`
//! counted, kept so that every replica's counts merge into one window and survive a restart.

use crate::{now_ms, Result, Store};

/// One replica's counts of one bucket.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct MonitorCounts {
    pub replica: String,
    pub bucket: i64,
    pub rows_counted: i64,
    /// The counts, as the JSON the monitor wrote.
    pub counts: String,
}

impl Store {
    /// Writes this replica's counts of `bucket` (all of them so far: a later write replaces an earlier).
    pub async fn put_monitor_counts(
        &self,
        model: &str,
        version: u64,
        bucket: i64,
        rows: u64,
        counts: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO monitor_counts (model, version, bucket, replica, rows_counted, counts, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (model, version, bucket, replica) DO UPDATE SET \
             rows_counted = excluded.rows_counted, counts = excluded.counts, updated_at = excluded.updated_at",
        )
        .bind(model)
        .bind(version as i64)
        .bind(bucket)
        .bind(&*self.replica)
        .bind(rows as i64)
        .bind(counts)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every replica's counts of the version's buckets from `from` (inclusive) to `to` (exclusive).
    pub async fn monitor_counts(
        &self,
        model: &str,
        version: u64,
        from: i64,
        to: i64,
    ) -> Result<Vec<MonitorCounts>> {
        Ok(sqlx::query_as(
            "SELECT replica, bucket, rows_counted, counts FROM monitor_counts \
             WHERE model = $1 AND version = $2 AND bucket >= $3 AND bucket < $4 \
             ORDER BY bucket, replica",
        )
        .bind(model)
        .bind(version as i64)
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Removes every bucket that starts before `before`; returns how many rows went.
    pub async fn prune_monitor_counts(&self, before: i64) -> Result<u64> {
        let done = sqlx::query("DELETE FROM monitor_counts WHERE bucket < $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}

/// One logged price prediction.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct LoggedPrediction {
    pub id: String,
    pub organization_id: String,
    pub model: String,
    pub version: i64,
    pub material_id: String,
    pub supplier_id: Option<String>,
    /// The day it was asked for (days since 1970-01-01).
    pub as_of_day: i64,
    pub quantity: f64,
    pub predicted: f64,
    pub lower_bound: f64,
    pub upper_bound: f64,
    pub level: f64,
    /// SHA-256 of the feature row the model saw (single precision), as hex.
    pub inputs_digest: String,
    /// When it was answered, by the domain's clock (milliseconds).
    pub created_at: i64,
}

const LOG_COLUMNS: &str =
    "id, organization_id, model, version, material_id, supplier_id, as_of_day, \
     quantity, predicted, lower_bound, upper_bound, level, inputs_digest, created_at";

impl Store {
    /// Writes logged predictions (their ids are theirs: a row written twice stays one).
    pub async fn insert_prediction_logs(&self, rows: &[LoggedPrediction]) -> Result<()> {
        let mut tx = self.write_tx().await?;
        // 14 values a row: well under either database's limit on parameters.
        for chunk in rows.chunks(if self.sqlite { 64 } else { 500 }) {
            let mut sql = crate::Sql::new(format!(
                "INSERT INTO prediction_log ({LOG_COLUMNS}) VALUES "
            ));
            for (i, r) in chunk.iter().enumerate() {
                sql.values_row(
                    i == 0,
                    [
                        crate::Value::Text(Some(r.id.clone())),
                        crate::Value::Text(Some(r.organization_id.clone())),
                        crate::Value::Text(Some(r.model.clone())),
                        crate::Value::Int(r.version),
                        crate::Value::Text(Some(r.material_id.clone())),
                        crate::Value::Text(r.supplier_id.clone()),
                        crate::Value::Int(r.as_of_day),
                        crate::Value::Real(Some(r.quantity)),
                        crate::Value::Real(Some(r.predicted)),
                        crate::Value::Real(Some(r.lower_bound)),
                        crate::Value::Real(Some(r.upper_bound)),
                        crate::Value::Real(Some(r.level)),
                        crate::Value::Text(Some(r.inputs_digest.clone())),
                        crate::Value::Int(r.created_at),
                    ],
                );
            }
            sql.push(" ON CONFLICT (id) DO NOTHING");
            sql.query().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The version's logged predictions answered in `[from_ms, to_ms)`, the latest `limit` of them.
    pub async fn prediction_logs(
        &self,
        model: &str,
        version: u64,
        from_ms: i64,
        to_ms: i64,
        limit: i64,
    ) -> Result<Vec<LoggedPrediction>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {LOG_COLUMNS} FROM prediction_log \
             WHERE model = $1 AND version = $2 AND created_at >= $3 AND created_at < $4 \
             ORDER BY created_at DESC, id DESC LIMIT $5"
        ))
        .bind(model)
        .bind(version as i64)
        .bind(from_ms)
        .bind(to_ms)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Removes logged predictions answered before `before_ms`; returns how many went.
    pub async fn prune_prediction_logs(&self, before_ms: i64) -> Result<u64> {
        let done = sqlx::query("DELETE FROM prediction_log WHERE created_at < $1")
            .bind(before_ms)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}
