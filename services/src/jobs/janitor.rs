//! Ended jobs keep their results for --batch-retention-secs; the janitor deletes their chunks (inputs and
//! results) after that, on one replica a period. The jobs stay; their results answer `results_expired`.

use std::sync::Arc;
use std::time::Duration;

use mercator_store::BatchJob;

use super::Jobs;

impl Jobs {
    /// When an ended job's results expire.
    pub fn expires_at(&self, job: &BatchJob) -> Option<chrono::DateTime<chrono::Utc>> {
        let retention = chrono::Duration::from_std(self.settings.retention).ok()?;
        job.finished_at.map(|end| end + retention)
    }

    /// Whether the job's results are gone: past their retention.
    pub fn expired(&self, job: &BatchJob) -> bool {
        self.expires_at(job)
            .is_some_and(|at| at <= chrono::Utc::now())
    }

    /// The janitor: deletes the chunks of jobs whose results have expired (and of submits that died before
    /// their job was recorded), every so often (an hour, or a quarter of the retention if that is shorter),
    /// once a period across the fleet.
    pub async fn sweep(self: Arc<Self>) {
        let every = (self.settings.retention / 4)
            .clamp(Duration::from_millis(100), Duration::from_secs(3600));
        let store = self.store.clone();
        crate::fleet::each_period(store, "batch_janitor", every, || async {
            let cutoff = chrono::Duration::from_std(self.settings.retention)
                .map(|r| chrono::Utc::now() - r)
                .unwrap_or_default();
            match self.store.purge_batch_chunks(cutoff).await {
                Ok(0) => {}
                Ok(removed) => tracing::info!(removed, "expired batch job chunks deleted"),
                Err(e) => tracing::warn!(error = %e, "cannot delete expired batch job chunks"),
            }
        })
        .await
    }
}
