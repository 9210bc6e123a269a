//! Buckets shared through Redis, so that every replica enforces one limit.
//!
//! One Lua script (GCRA on Redis's own clock, `TIME`, one clock for every replica) checks all the buckets of
//! a request at once and debits them only if all admit: a refusal by one rule costs the others nothing.
//!
//! A round trip per request (50–100 µs on loopback) would cost more than the rest of a prediction, so a
//! replica draws a small lease of tokens per bucket (1 for quotas up to 50, so those are exact; at most
//! [`MAX_LEASE`]) and spends it locally for at most [`LEASE_TTL`] (or a tenth of the window). A fleet never
//! admits more than the quota plus the tokens leased within one lease's lifetime, and refuses early by at most
//! the tokens other replicas hold unspent. A refusal is remembered until its retry time: a flood of refused
//! requests costs no round trips.
//!
//! Times in Redis are whole microseconds (Lua's numbers are doubles: nanoseconds since 1970 would not be
//! exact), so a quota finer than one request per microsecond (over 1,000,000 a second) counts as that.
//!
//! Redis unreachable, or slower than the timeout: the caller limits in process instead (fail open to the
//! local limit, never to none) until [`RETRY_EVERY`] has passed, then tries again. Logged once per outage,
//! counted per request in `mercator_rate_limit_fallbacks_total`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use redis::aio::ConnectionManager;

use super::local::nanos;
use super::{Rule, Status, Subject, Verdict};

/// Where Redis is and how long to wait for it.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `redis://host:port/db`.
    pub url: String,
    /// Every key the limiter writes starts with it (and `:rl:`).
    pub prefix: String,
    /// A call slower than this counts as Redis unreachable.
    pub timeout: Duration,
}

/// The most tokens one lease holds.
pub const MAX_LEASE: u32 = 100;
/// How long leased tokens may be spent.
pub const LEASE_TTL: Duration = Duration::from_secs(1);
/// After a failure, how long the replica limits in process before it asks Redis again.
pub const RETRY_EVERY: Duration = Duration::from_secs(1);

const SCRIPT: &str = r"
-- KEYS[i]: a bucket, its theoretical arrival time in microseconds of Redis's clock.
-- ARGV: for each bucket, its interval (window / quota) and window in microseconds, and the tokens wanted.
-- Answers {admitted, then for each bucket: granted, remaining, reset, retry} (microseconds): every
-- bucket grants (up to what was wanted) or none does.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {1}
local tats = {}
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[3 * i - 2])
  local window = tonumber(ARGV[3 * i - 1])
  local want = tonumber(ARGV[3 * i])
  local tat = tonumber(redis.call('GET', key) or 0)
  if tat < now then tat = now end
  local available = math.floor((now + window - tat) / interval)
  local granted = math.min(want, available)
  if granted < 1 then
    out[1] = 0
    granted = 0
  end
  tats[i] = tat
  out[4 * i - 2] = granted
  out[4 * i - 1] = math.max(available - granted, 0)
  out[4 * i] = tat + granted * interval - now
  out[4 * i + 1] = tat + interval - window - now
end
if out[1] == 1 then
  for i, key in ipairs(KEYS) do
    local tat = tats[i] + out[4 * i - 2] * tonumber(ARGV[3 * i - 2])
    redis.call('SET', key, string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1)
  end
end
return out
";

pub struct Shared {
    client: redis::Client,
    script: redis::Script,
    settings: Settings,
    connection: Mutex<Option<ConnectionManager>>,
    connecting: AtomicBool,
    /// Until when (the limiter's nanoseconds) Redis is not asked; 0: it is.
    down_until: AtomicU64,
    leases: Mutex<HashMap<u64, Lease>>,
}

/// Tokens a replica holds for one bucket, and what Redis last said of it.
#[derive(Debug, Clone, Copy, Default)]
struct Lease {
    tokens: u32,
    /// The tokens may be spent until then.
    expires: u64,
    /// What Redis would still admit after this lease.
    remaining: u32,
    /// When Redis's bucket is full again.
    full_at: u64,
    /// Refused until then.
    refused_until: u64,
}

impl Shared {
    pub fn new(settings: Settings) -> Result<Shared, String> {
        let client =
            redis::Client::open(settings.url.as_str()).map_err(|e| format!("--redis-url: {e}"))?;
        Ok(Shared {
            client,
            script: redis::Script::new(SCRIPT),
            settings,
            connection: Mutex::new(None),
            connecting: AtomicBool::new(false),
            down_until: AtomicU64::new(0),
            leases: Mutex::new(HashMap::new()),
        })
    }

    /// The verdict from the shared buckets, or None when Redis cannot answer (the caller limits locally).
    pub async fn check(
        &self,
        subject: Subject<'_>,
        rules: &[Option<Rule>; 2],
        digests: &[Option<u64>; 2],
        now: u64,
    ) -> Option<Verdict> {
        if let Some(verdict) = self.spend_leases(rules, digests, now) {
            return Some(verdict);
        }
        if self.down_until.load(Ordering::Acquire) > now {
            metrics::counter!("mercator_rate_limit_fallbacks_total").increment(1);
            return None;
        }
        match self.ask(subject, rules).await {
            Ok(answer) => {
                if self.down_until.swap(0, Ordering::AcqRel) != 0 {
                    tracing::info!("rate limits: Redis answers again; limits are shared");
                }
                Some(self.record(rules, digests, &answer, now))
            }
            Err(e) => {
                let until = now + nanos(RETRY_EVERY);
                if self.down_until.swap(until, Ordering::AcqRel) == 0 {
                    tracing::warn!(error = %e, "rate limits: Redis unreachable; limiting in this process \
                        until it answers");
                }
                metrics::counter!("mercator_rate_limit_fallbacks_total").increment(1);
                None
            }
        }
    }

    /// A verdict from what this replica holds: a standing refusal, or a token of every rule's lease.
    fn spend_leases(
        &self,
        rules: &[Option<Rule>; 2],
        digests: &[Option<u64>; 2],
        now: u64,
    ) -> Option<Verdict> {
        let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        let mut verdict = Verdict::default();
        let mut refused = false;
        for i in 0..2 {
            let (Some(rule), Some(digest)) = (rules[i], digests[i]) else {
                continue;
            };
            let lease = leases.get(&digest).copied().unwrap_or_default();
            if lease.refused_until > now {
                let wait = Duration::from_nanos(lease.refused_until - now);
                verdict.retry_after = Some(verdict.retry_after.map_or(wait, |w| w.max(wait)));
                refused = true;
            } else if lease.tokens == 0 || lease.expires <= now {
                return None;
            }
            verdict.statuses[i] = Some(Status {
                rule,
                remaining: lease.remaining + lease.tokens.saturating_sub(1),
                reset: Duration::from_nanos(lease.full_at.saturating_sub(now)),
            });
        }
        if refused {
            for status in verdict.statuses.iter_mut().flatten() {
                status.remaining = 0;
            }
            return Some(verdict);
        }
        for digest in digests.iter().flatten() {
            if let Some(lease) = leases.get_mut(digest) {
                lease.tokens -= 1;
            }
        }
        Some(verdict)
    }

    /// Asks Redis for a lease of every rule's bucket.
    async fn ask(
        &self,
        subject: Subject<'_>,
        rules: &[Option<Rule>; 2],
    ) -> Result<Vec<i64>, String> {
        let mut connection = self.connection().await?;
        let mut call = self.script.prepare_invoke();
        for rule in rules.iter().flatten() {
            let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
            call.key(format!(
                "{}:rl:{{{subject}}}:{}:{}/{}",
                self.settings.prefix,
                rule.name(),
                rule.rate.requests,
                rule.rate.window.as_secs()
            ))
            .arg(micros(rule.rate.interval()).max(1))
            .arg(micros(rule.rate.window))
            .arg(lease_size(rule));
        }
        match tokio::time::timeout(self.settings.timeout, call.invoke_async(&mut connection)).await
        {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {:?}", self.settings.timeout)),
        }
    }

    /// Keeps what Redis granted (this request spends one token of each) or refused.
    fn record(
        &self,
        rules: &[Option<Rule>; 2],
        digests: &[Option<u64>; 2],
        answer: &[i64],
        now: u64,
    ) -> Verdict {
        let admitted = answer.first() == Some(&1);
        let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        let mut verdict = Verdict::default();
        for (n, i) in (0..2).filter(|i| rules[*i].is_some()).enumerate() {
            let (Some(rule), Some(digest)) = (rules[i], digests[i]) else {
                continue;
            };
            let at = |k: usize| answer.get(1 + 4 * n + k).copied().unwrap_or(0).max(0) as u64;
            let (granted, remaining, reset, retry) = (at(0) as u32, at(1) as u32, at(2), at(3));
            let micros = Duration::from_micros;
            let lease = leases.entry(digest).or_default();
            if lease.expires <= now {
                lease.tokens = 0;
            }
            if admitted {
                lease.tokens += granted.saturating_sub(1);
                lease.expires = now + nanos(LEASE_TTL.min(rule.rate.window / 10));
                lease.remaining = remaining;
                lease.full_at = now + nanos(micros(reset));
            } else if granted == 0 {
                let wait = micros(retry).max(Duration::from_millis(1));
                lease.refused_until = now + nanos(wait);
                verdict.retry_after = Some(verdict.retry_after.map_or(wait, |w| w.max(wait)));
            }
            verdict.statuses[i] = Some(Status {
                rule,
                remaining: match admitted {
                    true => remaining + lease.tokens,
                    false => 0,
                },
                reset: match admitted {
                    true => Duration::from_nanos(lease.full_at.saturating_sub(now)),
                    false => micros(reset),
                },
            });
        }
        if !admitted && verdict.retry_after.is_none() {
            verdict.retry_after = Some(Duration::from_millis(1));
        }
        if leases.len() > 1 << 16 {
            leases.retain(|_, l| (l.tokens > 0 && l.expires > now) || l.refused_until > now);
        }
        verdict
    }

    /// The connection, made on first use (and again after it could not be made).
    async fn connection(&self) -> Result<ConnectionManager, String> {
        if let Some(c) = self
            .connection
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            return Ok(c.clone());
        }
        if self.connecting.swap(true, Ordering::AcqRel) {
            return Err("connecting".into());
        }
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.settings.timeout.max(Duration::from_millis(250))))
            .set_response_timeout(Some(self.settings.timeout))
            .set_number_of_retries(1);
        let made = ConnectionManager::new_with_config(self.client.clone(), config).await;
        self.connecting.store(false, Ordering::Release);
        let made = made.map_err(|e| e.to_string())?;
        *self.connection.lock().unwrap_or_else(|e| e.into_inner()) = Some(made.clone());
        Ok(made)
    }
}

/// Tokens drawn at once: a fiftieth of the quota, 1 (exact) up to a quota of 99, at most [`MAX_LEASE`].
fn lease_size(rule: &Rule) -> u32 {
    (rule.rate.requests / 50).clamp(1, MAX_LEASE)
}
