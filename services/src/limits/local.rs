//! Buckets in this process: each (subject, rule) is one theoretical arrival time in nanoseconds, in shards
//! chosen by subject so that every rule of one subject is checked and debited under one lock.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Mutex;
use std::time::Duration;

use super::{Rule, Status, Verdict};

const SHARDS: usize = 16;

/// Past this many buckets a shard is swept at once; if none is full the new bucket is not kept (the
/// request is admitted, and counted in `mercator_rate_limit_overflows_total`). 16 shards of 65,536: a
/// million subjects, ~40 MB.
const MAX_PER_SHARD: usize = 1 << 16;

pub struct Buckets {
    shards: [Mutex<HashMap<u64, u64, Digested>>; SHARDS],
}

/// The keys are already SipHash digests: used as they are.
#[derive(Default)]
struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Digested = BuildHasherDefault<Identity>;

impl Default for Buckets {
    fn default() -> Buckets {
        Buckets {
            shards: std::array::from_fn(|_| Mutex::new(HashMap::default())),
        }
    }
}

impl Buckets {
    /// Admits a request if every rule does, and then debits each; `digests[i]` names `rules[i]`'s bucket,
    /// `subject` (its subject's digest) the shard every bucket of that subject is in.
    pub fn check(
        &self,
        subject: u64,
        rules: &[Option<Rule>; 2],
        digests: &[Option<u64>; 2],
        now: u64,
    ) -> Verdict {
        let shard = &self.shards[(subject >> 60) as usize % SHARDS];
        let mut buckets = shard.lock().unwrap_or_else(|e| e.into_inner());
        let mut verdict = Verdict::default();
        let mut next = [0u64; 2];
        for i in 0..2 {
            let (Some(rule), Some(digest)) = (rules[i], digests[i]) else {
                continue;
            };
            let tat = buckets.get(&digest).copied().unwrap_or(now).max(now);
            let (interval, window) = (nanos(rule.rate.interval()), nanos(rule.rate.window));
            let after = tat + interval;
            if after > now + window {
                let wait = Duration::from_nanos(after - now - window);
                verdict.retry_after = Some(verdict.retry_after.map_or(wait, |w| w.max(wait)));
                verdict.statuses[i] = Some(Status {
                    rule,
                    remaining: 0,
                    reset: Duration::from_nanos(tat - now),
                });
            } else {
                next[i] = after;
                verdict.statuses[i] = Some(Status {
                    rule,
                    remaining: ((now + window - after) / interval.max(1)) as u32,
                    reset: Duration::from_nanos(after - now),
                });
            }
        }
        if verdict.allowed() {
            for i in 0..2 {
                if let Some(digest) = digests[i] {
                    if buckets.len() >= MAX_PER_SHARD && !buckets.contains_key(&digest) {
                        buckets.retain(|_, tat| *tat > now);
                        if buckets.len() >= MAX_PER_SHARD {
                            metrics::counter!("mercator_rate_limit_overflows_total").increment(1);
                            continue;
                        }
                    }
                    buckets.insert(digest, next[i]);
                }
            }
        }
        verdict
    }

    /// Forgets full buckets; answers how many.
    pub fn sweep(&self, now: u64) -> usize {
        self.shards
            .iter()
            .map(|shard| {
                let mut buckets = shard.lock().unwrap_or_else(|e| e.into_inner());
                let before = buckets.len();
                buckets.retain(|_, tat| *tat > now);
                before - buckets.len()
            })
            .sum()
    }

    /// How many buckets are kept.
    #[cfg(test)]
    pub fn count(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }
}

pub(super) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
