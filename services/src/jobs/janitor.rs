//! Ended jobs keep their results for --batch-retention-secs; the janitor deletes the files after that. The
//! jobs stay; their results answer `results_expired`.

use std::path::PathBuf;
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

    /// Whether the job's results are gone: past their retention, or their files removed.
    pub fn expired(&self, job: &BatchJob) -> bool {
        self.expires_at(job)
            .is_some_and(|at| at <= chrono::Utc::now())
            || (job.state.is_terminal() && !self.job_dir(&job.id).exists())
    }

    /// The janitor: deletes the files of this node's jobs whose results have expired, every so often (an
    /// hour, or a quarter of the retention if that is shorter), until the server drains.
    pub async fn sweep(self: Arc<Self>) {
        let every = (self.settings.retention / 4)
            .clamp(Duration::from_millis(100), Duration::from_secs(3600));
        loop {
            if self.is_draining() {
                return;
            }
            let cutoff = chrono::Duration::from_std(self.settings.retention)
                .map(|r| chrono::Utc::now() - r)
                .unwrap_or_default();
            match self.store.batch_jobs_ended_before(&self.node, cutoff).await {
                Ok(ids) => {
                    let dirs: Vec<PathBuf> = ids
                        .iter()
                        .map(|id| self.job_dir(id))
                        .filter(|d| d.exists())
                        .collect();
                    if !dirs.is_empty() {
                        let removed = tokio::task::spawn_blocking(move || {
                            dirs.iter()
                                .filter(|d| std::fs::remove_dir_all(d).is_ok())
                                .count()
                        })
                        .await
                        .unwrap_or(0);
                        tracing::info!(removed, "expired batch job results deleted");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the expired batch jobs"),
            }
            tokio::time::sleep(every).await;
        }
    }
}
