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

/// The sending side: cheap to clone, shared by every monitored version.
#[derive(Clone, Debug)]
pub struct Tap {
    tx: mpsc::Sender<Observed>,
    /// Batches sent so far: a reader that has counted as many has counted every batch answered before.
    sent: Arc<AtomicU64>,
}

impl Tap {
    /// A tap holding at most `capacity` batches not yet counted, and the receiver its monitor reads.
    pub fn channel(capacity: usize) -> (Tap, mpsc::Receiver<Observed>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (
            Tap {
                tx,
                sent: Arc::default(),
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

    /// Room for one batch, or `None` (counted as `rows` dropped) when the monitor is behind or gone.
    pub(crate) fn reserve(
        &self,
        model: &str,
        version: u64,
        rows: usize,
    ) -> Option<mpsc::Permit<'_, Observed>> {
        match self.tx.try_reserve() {
            Ok(permit) => Some(permit),
            Err(_) => {
                crate::metrics::count_monitor_dropped(model, version, rows);
                None
            }
        }
    }
}
