//! A copy of what a monitored model version computed, sent off the request path to its monitor.
//!
//! A version whose folder holds a reference profile (`profile.json`) is started with the repository's tap:
//! after each batch its worker hands the batch's inputs and outputs to a bounded channel and goes on. A
//! full channel never blocks a batch: the rows are dropped from monitoring and counted
//! (`mercator_monitor_dropped_rows_total`), never from the answer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::tensor::Tensor;

/// The file beside a version's manifest that holds its reference profile.
pub const PROFILE_FILE: &str = "profile.json";

/// One batch a monitored version computed.
#[derive(Debug)]
pub struct Observed {
    pub model: Arc<str>,
    pub version: u64,
    pub rows: usize,
    pub inputs: Vec<Tensor>,
    pub outputs: Vec<Tensor>,
}

/// The sending side: cheap to clone, one clone per monitored version.
#[derive(Debug)]
pub struct Tap {
    tx: mpsc::Sender<Observed>,
    /// Batches sent so far: a reader that has counted as many has counted every batch answered before.
    sent: Arc<AtomicU64>,
    /// One batch in `every` is sent.
    every: u64,
    /// Batches this clone (its version) was offered: each clone samples its own version's stream.
    offered: AtomicU64,
}

impl Clone for Tap {
    fn clone(&self) -> Tap {
        Tap {
            tx: self.tx.clone(),
            sent: self.sent.clone(),
            every: self.every,
            offered: AtomicU64::new(0),
        }
    }
}

impl Tap {
    /// A tap holding at most `capacity` batches not yet counted, and the receiver its monitor reads; it
    /// sends one batch in `every` (1: all of them).
    pub fn channel(capacity: usize, every: u64) -> (Tap, mpsc::Receiver<Observed>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (
            Tap {
                tx,
                sent: Arc::default(),
                every: every.max(1),
                offered: AtomicU64::new(0),
            },
            rx,
        )
    }

    /// Batches sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Acquire)
    }

    pub(crate) fn sent_one(&self) {
        self.sent.fetch_add(1, Ordering::AcqRel);
    }

    /// Room for one batch, or `None`: when the batch is not in the sample, or (counted as `rows` dropped)
    /// when the monitor is behind or gone.
    pub(crate) fn reserve(
        &self,
        model: &str,
        version: u64,
        rows: usize,
    ) -> Option<mpsc::Permit<'_, Observed>> {
        if self.every > 1
            && !self
                .offered
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(self.every)
        {
            return None;
        }
        match self.tx.try_reserve() {
            Ok(permit) => Some(permit),
            Err(_) => {
                crate::metrics::count_monitor_dropped(model, version, rows);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_clone_sends_one_batch_in_every_of_its_own_and_a_full_channel_drops() {
        let (tap, mut rx) = Tap::channel(100, 3);
        let (a, b) = (tap.clone(), tap.clone());
        let mut sent = 0;
        for i in 0..9 {
            // Interleaved versions: each is sampled on its own count, so neither is starved.
            for (tap, name) in [(&a, "a"), (&b, "b")] {
                if let Some(permit) = tap.reserve(name, 1, 1) {
                    permit.send(Observed {
                        model: name.into(),
                        version: i,
                        rows: 1,
                        inputs: vec![],
                        outputs: vec![],
                    });
                    sent += 1;
                }
            }
        }
        assert_eq!(sent, 6);
        let got: Vec<(String, u64)> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|o| (o.model.to_string(), o.version))
            .collect();
        assert_eq!(
            got,
            [("a", 0), ("b", 0), ("a", 3), ("b", 3), ("a", 6), ("b", 6)]
                .map(|(m, v)| (m.to_string(), v))
        );

        let (every, _rx) = Tap::channel(1, 1);
        let held = every.reserve("m", 1, 1);
        assert!(held.is_some(), "room for the first batch");
        assert!(every.reserve("m", 1, 5).is_none(), "no room: dropped");
    }
}
