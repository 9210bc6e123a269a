//! A job's progress: what its runner publishes on a watch per job as chunks commit, and the figures (rate,
//! time left) read from the job as stored when no runner here publishes.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use mercator_store::{BatchJob, BatchState};
use serde::Serialize;
use tokio::sync::watch;
use utoipa::ToSchema;

use super::Jobs;

/// A job's progress as the runner last published it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Progress {
    pub state: BatchState,
    pub processed: u64,
    pub total: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// Rows committed per second since the job (re)started.
    pub rows_per_sec: f64,
    pub eta_seconds: Option<f64>,
}

impl Progress {
    /// From the job as stored, at `rows_per_sec`.
    pub fn of(job: &BatchJob, rows_per_sec: f64) -> Progress {
        let left = job.total_rows.saturating_sub(job.processed_rows);
        Progress {
            state: job.state,
            processed: job.processed_rows,
            total: job.total_rows,
            succeeded: job.processed_rows - job.failed_rows.min(job.processed_rows),
            failed: job.failed_rows,
            rows_per_sec,
            eta_seconds: (!job.state.is_terminal() && rows_per_sec > 0.0)
                .then(|| left as f64 / rows_per_sec),
        }
    }

    /// From the job as stored, at its average rate over its run until `now` (or its end).
    pub fn average(job: &BatchJob, now: DateTime<Utc>) -> Progress {
        let end = job.finished_at.unwrap_or(now);
        let rate = match job.started_at {
            Some(start) => {
                let seconds = (end - start).num_milliseconds() as f64 / 1000.0;
                if seconds > 0.0 {
                    job.processed_rows as f64 / seconds
                } else {
                    0.0
                }
            }
            None => 0.0,
        };
        Progress::of(job, rate)
    }
}

/// One watch per job someone follows or a runner here publishes to.
#[derive(Default)]
pub(super) struct Watches(Mutex<HashMap<String, watch::Sender<Option<Progress>>>>);

impl Watches {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Sender<Option<Progress>>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn publish(&self, id: &str, progress: Progress) {
        self.lock()
            .entry(id.to_string())
            .or_insert_with(|| watch::channel(None).0)
            .send_replace(Some(progress));
    }

    /// The job's watch is gone: listeners see the sender go and read the end from the store.
    pub(super) fn end(&self, id: &str) {
        self.lock().remove(id);
    }
}

impl Jobs {
    /// The job's progress as published here (None until its runner publishes; the sender is dropped when
    /// the job ends).
    pub fn subscribe(&self, id: &str) -> watch::Receiver<Option<Progress>> {
        self.watches
            .lock()
            .entry(id.to_string())
            .or_insert_with(|| watch::channel(None).0)
            .subscribe()
    }

    /// Forgets a listener's watch when nobody listens and no runner publishes to it.
    pub fn unsubscribe(&self, id: &str) {
        let running = self.is_running(id);
        let mut watches = self.watches.lock();
        if !running && watches.get(id).is_some_and(|w| w.receiver_count() == 0) {
            watches.remove(id);
        }
    }

    /// A job's progress: the live rate while it runs here, else the average over its run.
    pub fn progress(&self, job: &BatchJob) -> Progress {
        let live = self
            .watches
            .lock()
            .get(&job.id)
            .and_then(|w| w.borrow().as_ref().map(|p| p.rows_per_sec));
        match live {
            Some(rate) => Progress::of(job, rate),
            None => Progress::average(job, Utc::now()),
        }
    }

    pub(super) fn is_running(&self, id: &str) -> bool {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(state: BatchState, processed: u64, failed: u64, total: u64) -> BatchJob {
        let at = Utc::now();
        BatchJob {
            id: "b".into(),
            organization_id: "o".into(),
            node: "n".into(),
            model: "price".into(),
            model_version: 1,
            state,
            input_format: "csv".into(),
            input_bytes: 0,
            total_rows: total,
            processed_rows: processed,
            failed_rows: failed,
            chunks_total: 1,
            chunks_done: 0,
            chunks: Vec::new(),
            header: Vec::new(),
            outputs: None,
            attempts: 1,
            error: None,
            created_at: at,
            started_at: Some(at),
            finished_at: None,
            cancel_requested_at: None,
        }
    }

    #[test]
    fn time_left_is_the_rows_left_at_the_rate_and_none_once_ended_or_without_a_rate() {
        let p = Progress::of(&job(BatchState::Running, 400, 10, 1000), 200.0);
        assert_eq!(
            (p.processed, p.succeeded, p.failed, p.total),
            (400, 390, 10, 1000)
        );
        assert_eq!(p.eta_seconds, Some(3.0));
        assert_eq!(
            Progress::of(&job(BatchState::Running, 400, 0, 1000), 0.0).eta_seconds,
            None
        );
        assert_eq!(
            Progress::of(&job(BatchState::Cancelled, 400, 0, 1000), 50.0).eta_seconds,
            None
        );
        // More failures than rows (a count out of step) never underflows.
        assert_eq!(
            Progress::of(&job(BatchState::Running, 3, 5, 10), 1.0).succeeded,
            0
        );
        // Rows past the total (a resumed count) leave nothing to wait for.
        assert_eq!(
            Progress::of(&job(BatchState::Running, 12, 0, 10), 1.0).eta_seconds,
            Some(0.0)
        );
    }

    #[test]
    fn the_average_rate_runs_from_the_start_to_the_end_or_now() {
        let mut j = job(BatchState::Succeeded, 1000, 0, 1000);
        let start = j.started_at.unwrap();
        j.finished_at = Some(start + chrono::Duration::seconds(4));
        assert_eq!(Progress::average(&j, start).rows_per_sec, 250.0);
        let mut running = job(BatchState::Running, 300, 0, 1000);
        running.started_at = Some(start);
        let now = start + chrono::Duration::seconds(3);
        let p = Progress::average(&running, now);
        assert_eq!(p.rows_per_sec, 100.0);
        assert_eq!(p.eta_seconds, Some(7.0));
        running.started_at = None;
        assert_eq!(Progress::average(&running, now).rows_per_sec, 0.0);
    }
}
