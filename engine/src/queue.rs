//! The queue of one model version: bounded in rows, batch forming as a pure function of its state.
//!
//! Two lanes: interactive requests (bounded by the queue capacity, refused when it is full) and background
//! slices of batch jobs (bounded by the job runner, which keeps only a few in flight). Each lane has its own
//! workers and sessions (`model.rs`): a batch is made of one lane's entries only, so an interactive request
//! never pays for job rows in its own batch, nor waits for a session a job holds.

use std::collections::VecDeque;
use std::time::Instant;

use tokio::sync::oneshot;

use crate::tensor::Tensor;
use crate::{EngineError, InferOutput};

/// One request: its rows, validated and in the manifest's input order, and where its answer goes.
pub(crate) struct Entry {
    pub inputs: Vec<Tensor>,
    pub rows: usize,
    pub reply: oneshot::Sender<Result<InferOutput, EngineError>>,
    pub enqueued: Instant,
    pub deadline: Option<Instant>,
}

/// What `next_batch` or `next_background` took out of the queue.
#[derive(Default)]
pub(crate) struct Batch {
    pub entries: Vec<Entry>,
    pub rows: usize,
    /// Entries whose caller went away before they ran.
    pub cancelled: usize,
    /// Entries whose deadline passed before they ran (answered with `DeadlineExceeded`).
    pub expired: Vec<Entry>,
}

pub(crate) struct State {
    entries: VecDeque<Entry>,
    rows: usize,
    background: VecDeque<Entry>,
    background_rows: usize,
    capacity: usize,
    pub closed: bool,
}

impl State {
    pub fn new(capacity: usize) -> State {
        State {
            entries: VecDeque::new(),
            rows: 0,
            background: VecDeque::new(),
            background_rows: 0,
            capacity,
            closed: false,
        }
    }

    /// Interactive rows waiting.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Background rows waiting.
    #[cfg(test)]
    pub fn background_rows(&self) -> usize {
        self.background_rows
    }

    /// No work of either lane.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.background.is_empty()
    }

    /// No interactive work.
    pub fn no_interactive(&self) -> bool {
        self.entries.is_empty()
    }

    /// Background slices wait.
    pub fn has_background(&self) -> bool {
        !self.background.is_empty()
    }

    pub fn oldest(&self) -> Option<Instant> {
        self.entries.front().map(|e| e.enqueued)
    }

    /// Admits the entry if its rows fit in what is left of the capacity; otherwise hands it back.
    pub fn push(&mut self, entry: Entry) -> Result<(), Entry> {
        if self.closed || self.rows + entry.rows > self.capacity {
            return Err(entry);
        }
        self.rows += entry.rows;
        self.entries.push_back(entry);
        Ok(())
    }

    /// Admits a background slice (only a closed queue refuses one: the job runner bounds them).
    pub fn push_background(&mut self, entry: Entry) -> Result<(), Entry> {
        if self.closed {
            return Err(entry);
        }
        self.background_rows += entry.rows;
        self.background.push_back(entry);
        Ok(())
    }

    /// Takes interactive entries in arrival order while their rows fit in `max_rows`. An entry larger than
    /// `max_rows` runs alone when it is first. Entries whose caller left or whose deadline passed are taken
    /// out and reported, never run.
    pub fn next_batch(&mut self, max_rows: usize, now: Instant) -> Batch {
        self.take(false, max_rows, now)
    }

    /// Takes background slices the same way.
    pub fn next_background(&mut self, max_rows: usize, now: Instant) -> Batch {
        self.take(true, max_rows, now)
    }

    fn take(&mut self, background: bool, max_rows: usize, now: Instant) -> Batch {
        let mut batch = Batch::default();
        while let Some(front) = self.lane(background).front() {
            if front.reply.is_closed() {
                let gone = self.pop(background);
                batch.cancelled += 1;
                drop(gone);
                continue;
            }
            if front.deadline.is_some_and(|d| d <= now) {
                let late = self.pop(background);
                batch.expired.push(late);
                continue;
            }
            if !batch.entries.is_empty() && batch.rows + front.rows > max_rows {
                break;
            }
            let entry = self.pop(background);
            batch.rows += entry.rows;
            batch.entries.push(entry);
            if batch.rows >= max_rows {
                break;
            }
        }
        batch
    }

    fn lane(&self, background: bool) -> &VecDeque<Entry> {
        if background {
            &self.background
        } else {
            &self.entries
        }
    }

    fn pop(&mut self, background: bool) -> Entry {
        let (lane, rows) = if background {
            (&mut self.background, &mut self.background_rows)
        } else {
            (&mut self.entries, &mut self.rows)
        };
        let entry = lane.pop_front().expect("pop follows a successful front()");
        *rows -= entry.rows;
        entry
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::tensor::TensorData;

    fn entry(rows: usize) -> (Entry, oneshot::Receiver<Result<InferOutput, EngineError>>) {
        let (tx, rx) = oneshot::channel();
        let input = Tensor {
            name: "x".into(),
            shape: vec![rows, 1],
            data: TensorData::Fp32(vec![0.0; rows]),
        };
        (
            Entry {
                inputs: vec![input],
                rows,
                reply: tx,
                enqueued: Instant::now(),
                deadline: None,
            },
            rx,
        )
    }

    #[test]
    fn capacity_is_counted_in_rows() {
        let mut state = State::new(10);
        let (a, _ra) = entry(6);
        let (b, _rb) = entry(5);
        let (c, _rc) = entry(4);
        assert!(state.push(a).is_ok());
        assert!(state.push(b).is_err(), "6 + 5 rows exceed 10");
        assert!(state.push(c).is_ok());
        assert_eq!(state.rows(), 10);
    }

    #[test]
    fn batches_take_arrival_order_up_to_the_budget() {
        let mut state = State::new(100);
        let mut receivers = Vec::new();
        for rows in [3, 4, 2, 5] {
            let (e, rx) = entry(rows);
            receivers.push(rx);
            state.push(e).ok().unwrap();
        }
        let batch = state.next_batch(9, Instant::now());
        assert_eq!(
            batch.entries.iter().map(|e| e.rows).collect::<Vec<_>>(),
            vec![3, 4, 2]
        );
        assert_eq!(batch.rows, 9);
        assert_eq!(state.rows(), 5);
        let batch = state.next_batch(9, Instant::now());
        assert_eq!(batch.rows, 5);
        assert!(state.is_empty());
    }

    #[test]
    fn an_oversized_entry_runs_alone() {
        let mut state = State::new(100);
        let (a, _ra) = entry(50);
        let (b, _rb) = entry(1);
        state.push(a).ok().unwrap();
        state.push(b).ok().unwrap();
        let batch = state.next_batch(8, Instant::now());
        assert_eq!(batch.entries.len(), 1);
        assert_eq!(batch.rows, 50);
    }

    #[test]
    fn cancelled_and_expired_entries_never_run() {
        let mut state = State::new(100);
        let (gone, rx_gone) = entry(1);
        drop(rx_gone);
        let (mut late, _rx_late) = entry(1);
        late.deadline = Some(Instant::now() - Duration::from_millis(1));
        let (live, _rx_live) = entry(2);
        for e in [gone, late, live] {
            state.push(e).ok().unwrap();
        }
        let batch = state.next_batch(8, Instant::now());
        assert_eq!(batch.cancelled, 1);
        assert_eq!(batch.expired.len(), 1);
        assert_eq!(batch.entries.len(), 1);
        assert_eq!(batch.entries[0].rows, 2);
        assert_eq!(state.rows(), 0);
    }

    #[test]
    fn the_lanes_never_share_a_batch() {
        let mut state = State::new(100);
        let mut receivers = Vec::new();
        for rows in [6, 6] {
            let (e, rx) = entry(rows);
            receivers.push(rx);
            state.push_background(e).ok().unwrap();
        }
        let (a, _ra) = entry(3);
        state.push(a).ok().unwrap();
        assert_eq!((state.rows(), state.background_rows()), (3, 12));
        let batch = state.next_batch(100, Instant::now());
        assert_eq!(
            batch.entries.iter().map(|e| e.rows).collect::<Vec<_>>(),
            vec![3],
            "an interactive batch holds interactive entries only"
        );
        assert!(state.no_interactive() && state.has_background());
        let batch = state.next_background(13, Instant::now());
        assert_eq!(
            batch.entries.iter().map(|e| e.rows).collect::<Vec<_>>(),
            vec![6, 6],
            "background slices, as many as fit"
        );
        assert!(state.is_empty());
        assert!(state.next_batch(100, Instant::now()).entries.is_empty());
    }

    #[test]
    fn background_slices_do_not_count_against_the_capacity() {
        let mut state = State::new(10);
        let (big, _rb) = entry(50);
        assert!(state.push_background(big).is_ok());
        let (a, _ra) = entry(10);
        assert!(state.push(a).is_ok(), "interactive capacity is untouched");
        state.closed = true;
        let (late, _rl) = entry(1);
        assert!(state.push_background(late).is_err());
    }

    #[test]
    fn a_closed_queue_admits_nothing() {
        let mut state = State::new(100);
        state.closed = true;
        let (a, _ra) = entry(1);
        assert!(state.push(a).is_err());
    }
}
