//! Counters behind Triton's statistics extension and the Prometheus metrics of one model version.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// A count and the nanoseconds spent in it.
#[derive(Default)]
pub struct Timer {
    count: AtomicU64,
    ns: AtomicU64,
}

impl Timer {
    pub fn record(&self, n: u64, elapsed: Duration) {
        self.count.fetch_add(n, Relaxed);
        self.ns.fetch_add(elapsed.as_nanos() as u64, Relaxed);
    }

    pub fn snapshot(&self) -> Duration2 {
        Duration2 {
            count: self.count.load(Relaxed),
            ns: self.ns.load(Relaxed),
        }
    }
}

/// `{count, ns}` as Triton writes it.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Duration2 {
    pub count: u64,
    pub ns: u64,
}

/// A latency histogram that many threads record into without a lock: log-linear buckets over microseconds
/// (exact below 16 µs, then 8 per power of two), so a quantile read from it is within 12.5% of the true
/// value. What the model view's p50/p99 come from.
pub struct Histogram {
    buckets: Box<[AtomicU64; BUCKETS]>,
}

const BUCKETS: usize = 16 + 30 * 8;

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: Box::new(std::array::from_fn(|_| AtomicU64::new(0))),
        }
    }
}

impl Histogram {
    fn bucket(us: u64) -> usize {
        if us < 16 {
            return us as usize;
        }
        let exp = 63 - us.leading_zeros() as usize; // >= 4
        let sub = ((us >> (exp - 3)) & 7) as usize;
        (16 + (exp - 4) * 8 + sub).min(BUCKETS - 1)
    }

    /// The smallest value a bucket holds, in microseconds.
    fn lower(bucket: usize) -> u64 {
        if bucket < 16 {
            return bucket as u64;
        }
        let (exp, sub) = ((bucket - 16) / 8 + 4, (bucket - 16) % 8);
        (8 + sub as u64) << (exp - 3)
    }

    pub fn record(&self, elapsed: Duration) {
        self.buckets[Self::bucket(elapsed.as_micros() as u64)].fetch_add(1, Relaxed);
    }

    /// The value below which a fraction `q` of the recorded ones fall, in microseconds (the middle of its
    /// bucket); none before anything is recorded.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (bucket, count) in counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                let (lo, hi) = (Self::lower(bucket), Self::lower(bucket + 1));
                return Some((lo + hi) as f64 / 2.0);
            }
        }
        None
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct BatchStats {
    pub batch_size: usize,
    pub compute_input: Duration2,
    pub compute_infer: Duration2,
    pub compute_output: Duration2,
}

#[derive(Default)]
pub struct Stats {
    /// Requests answered with outputs, and their time from admission to answer.
    pub success: Timer,
    /// Requests refused or failed, with their time.
    pub fail: Timer,
    /// The successful requests' time from admission to answer, for percentiles.
    pub latency: Histogram,
    pub queue: Timer,
    pub compute_input: Timer,
    pub compute_infer: Timer,
    pub compute_output: Timer,
    /// Rows inferred.
    pub inference_count: AtomicU64,
    /// ONNX Runtime calls.
    pub execution_count: AtomicU64,
    /// Requests taken out of the queue unrun: caller gone, or deadline passed.
    pub dropped: AtomicU64,
    last_inference_ms: AtomicU64,
    batches: Mutex<BTreeMap<usize, [Duration2; 3]>>,
}

/// What one batch cost, recorded once by the worker that ran it.
pub struct BatchTiming {
    pub rows: usize,
    pub requests: usize,
    pub input: Duration,
    pub infer: Duration,
    pub output: Duration,
}

impl Stats {
    pub fn record_batch(&self, t: &BatchTiming) {
        let n = t.requests as u64;
        self.compute_input.record(n, t.input);
        self.compute_infer.record(n, t.infer);
        self.compute_output.record(n, t.output);
        self.inference_count.fetch_add(t.rows as u64, Relaxed);
        self.execution_count.fetch_add(1, Relaxed);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        self.last_inference_ms.store(now, Relaxed);
        let mut batches = self.batches.lock().unwrap_or_else(|e| e.into_inner());
        let entry = batches.entry(t.rows).or_default();
        for (slot, d) in entry.iter_mut().zip([t.input, t.infer, t.output]) {
            slot.count += 1;
            slot.ns += d.as_nanos() as u64;
        }
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let batches = self.batches.lock().unwrap_or_else(|e| e.into_inner());
        StatsSnapshot {
            last_inference: self.last_inference_ms.load(Relaxed),
            inference_count: self.inference_count.load(Relaxed),
            execution_count: self.execution_count.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            success: self.success.snapshot(),
            fail: self.fail.snapshot(),
            queue: self.queue.snapshot(),
            compute_input: self.compute_input.snapshot(),
            compute_infer: self.compute_infer.snapshot(),
            compute_output: self.compute_output.snapshot(),
            batches: batches
                .iter()
                .map(|(&batch_size, [i, c, o])| BatchStats {
                    batch_size,
                    compute_input: *i,
                    compute_infer: *c,
                    compute_output: *o,
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct StatsSnapshot {
    /// Milliseconds since the epoch of the last batch run; 0 when none has run.
    pub last_inference: u64,
    pub inference_count: u64,
    pub execution_count: u64,
    pub dropped: u64,
    pub success: Duration2,
    pub fail: Duration2,
    pub queue: Duration2,
    pub compute_input: Duration2,
    pub compute_infer: Duration2,
    pub compute_output: Duration2,
    pub batches: Vec<BatchStats>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_ordered() {
        for us in [0u64, 1, 15, 16, 17, 31, 32, 100, 1_000, 123_456, 10_000_000] {
            let b = Histogram::bucket(us);
            assert!(Histogram::lower(b) <= us, "{us} in bucket {b}");
            assert!(us < Histogram::lower(b + 1), "{us} in bucket {b}");
        }
    }

    #[test]
    fn quantiles_are_within_the_bucket_error() {
        let h = Histogram::default();
        assert_eq!(h.quantile(0.5), None);
        // 1..=1000 µs, uniformly: p50 ≈ 500, p99 ≈ 990.
        for us in 1..=1000 {
            h.record(Duration::from_micros(us));
        }
        let (p50, p99) = (h.quantile(0.5).unwrap(), h.quantile(0.99).unwrap());
        assert!((p50 - 500.0).abs() / 500.0 < 0.125, "p50 {p50}");
        assert!((p99 - 990.0).abs() / 990.0 < 0.125, "p99 {p99}");
    }
}
