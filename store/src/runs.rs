//! Periodic work done once per period across replicas, without a leader: every replica ticks, and the one
//! whose insert of (task, period) succeeds runs that period's round (a unique key decides, as River moved
//! its unique jobs from advisory locks to a unique index). A replica that dies is simply not the one that
//! claims the next period; nothing has to notice it died.

use crate::{now_ms, Result, Store};

/// Periods a task's claims are kept for.
const KEEP_SLOTS: i64 = 1000;

impl Store {
    /// Claims period `slot` of `task` for this replica: true when no replica had claimed it.
    pub async fn claim_run(&self, task: &str, slot: i64) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO fleet_runs (task, slot, holder, at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (task, slot) DO NOTHING",
        )
        .bind(task)
        .bind(slot)
        .bind(&*self.replica)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query("DELETE FROM fleet_runs WHERE task = $1 AND slot < $2")
            .bind(task)
            .bind(slot.saturating_sub(KEEP_SLOTS))
            .execute(&self.pool)
            .await?;
        Ok(true)
    }
}
