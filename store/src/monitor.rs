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
