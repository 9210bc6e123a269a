//! Rate limits: how many requests a subject (an API key, a user, a client address) may make in a window, by
//! the class of route it calls.
//!
//! Enforced with GCRA, the generic cell rate algorithm: each bucket is one number, its "theoretical arrival
//! time", with no refill job. It behaves as a token bucket that holds the whole quota: a quota of N per
//! window W admits N requests at once, then one every W/N. So at the edge it is exact: N allowed, the
//! N+1st refused.
//!
//! - In process by default ([`local`]).
//! - Shared through Redis when configured ([`shared`]): replicas draw small leases of tokens from one
//!   bucket, so a fleet enforces one limit without a round trip per request. While Redis cannot be reached,
//!   each replica falls back to its own in-process buckets (fail open to the local limit, never to no limit),
//!   logs it and counts it (`mercator_rate_limit_fallbacks_total`).
//!
//! A subject's [`Plan`] says which rules hold it: one per class at most, and one over every class (`all`).
//! A request is admitted only if every rule that applies admits it; a refused request debits nothing.

pub mod local;
pub mod shared;

use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::clock::Clock;

/// What a route is, for limits: each class is counted on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// Predictions, analytics, V2 inference.
    Predict,
    /// Bulk writes and batch jobs.
    Bulk,
    /// Anything else that reads.
    Read,
    /// Anything else that writes.
    Write,
    /// Keys, organizations, the audit log, the model registry's changes.
    Admin,
    /// Signing in (per account and per address).
    Login,
}

impl Class {
    pub const ALL: [Class; 6] = [
        Class::Predict,
        Class::Bulk,
        Class::Read,
        Class::Write,
        Class::Admin,
        Class::Login,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Class::Predict => "predict",
            Class::Bulk => "bulk",
            Class::Read => "read",
            Class::Write => "write",
            Class::Admin => "admin",
            Class::Login => "login",
        }
    }

    pub fn parse(text: &str) -> Option<Class> {
        Class::ALL.into_iter().find(|c| c.as_str() == text)
    }
}

/// N requests per window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    pub requests: u32,
    pub window: Duration,
}

/// The longest window a rule may have.
pub const MAX_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);

impl Rate {
    /// The time one request earns back: the window over the quota.
    fn interval(&self) -> Duration {
        self.window / self.requests
    }
}

impl FromStr for Rate {
    type Err = String;

    /// `60/min`, `1000/h`, `10/hour`, `5/s`, `100/10s`, `2/day`.
    fn from_str(text: &str) -> Result<Rate, String> {
        let bad = || {
            format!(
                "`{text}` is not a rate: write N/UNIT (60/min, 1000/h, 5/s, 100/10s; units s, min, h, day)"
            )
        };
        let (n, per) = text.trim().split_once('/').ok_or_else(bad)?;
        let requests: u32 = n.trim().parse().map_err(|_| bad())?;
        let per = per.trim();
        let digits = per.bytes().take_while(u8::is_ascii_digit).count();
        let count: u64 = match digits {
            0 => 1,
            _ => per[..digits].parse().map_err(|_| bad())?,
        };
        let unit = match &per[digits..] {
            "s" | "sec" | "second" => 1,
            "m" | "min" | "minute" => 60,
            "h" | "hour" => 3600,
            "d" | "day" => 86_400,
            _ => return Err(bad()),
        };
        let window = Duration::from_secs(count.saturating_mul(unit));
        if requests == 0 {
            return Err(format!("`{text}`: a rate allows at least 1 request"));
        }
        if window.is_zero() || window > MAX_WINDOW {
            return Err(format!("`{text}`: the window is 1 s to 7 days"));
        }
        Ok(Rate { requests, window })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.window.as_secs();
        let (count, unit) = match secs {
            s if s % 86_400 == 0 => (s / 86_400, "day"),
            s if s % 3600 == 0 => (s / 3600, "h"),
            s if s % 60 == 0 => (s / 60, "min"),
            s => (s, "s"),
        };
        match count {
            1 => write!(f, "{}/{unit}", self.requests),
            _ => write!(f, "{}/{count}{unit}", self.requests),
        }
    }
}

/// A rate over one class, or over every class (`scope` None: `all`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rule {
    pub scope: Option<Class>,
    pub rate: Rate,
}

impl Rule {
    /// Its name in the RateLimit headers and in refusals: the class, or `all`.
    pub fn name(&self) -> &'static str {
        self.scope.map_or("all", Class::as_str)
    }

    fn applies_to(&self, class: Class) -> bool {
        self.scope.is_none_or(|c| c == class)
    }
}

/// The rules one subject is held to: `all=1000/h,predict=60/min,bulk=10/h`. Empty: no limit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    rules: Vec<Rule>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The rules a request of `class` is held to: at most two (its class's and `all`).
    pub fn applying(&self, class: Class) -> impl Iterator<Item = &Rule> {
        self.rules.iter().filter(move |r| r.applies_to(class))
    }
}

impl FromStr for Plan {
    type Err = String;

    fn from_str(text: &str) -> Result<Plan, String> {
        let mut rules: Vec<Rule> = Vec::new();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, rate) = item
                .split_once('=')
                .ok_or_else(|| format!("`{item}`: write CLASS=RATE, e.g. predict=60/min"))?;
            let name = name.trim();
            let scope = match name {
                "all" => None,
                _ => Some(Class::parse(name).ok_or_else(|| {
                    format!(
                        "`{name}` is not a class: all, {}",
                        Class::ALL.map(Class::as_str).join(", ")
                    )
                })?),
            };
            if rules.iter().any(|r| r.scope == scope) {
                return Err(format!("`{name}` is given twice"));
            }
            rules.push(Rule {
                scope,
                rate: rate.parse()?,
            });
        }
        Ok(Plan { rules })
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, rule) in self.rules.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}={}", rule.name(), rule.rate)?;
        }
        Ok(())
    }
}

/// Who is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Subject<'a> {
    Key(&'a str),
    User(&'a str),
    /// A client address (an IPv6 client by its /64: one host holds a whole /64).
    Address(IpAddr),
}

impl Subject<'_> {
    /// A client address's subject.
    pub fn address(ip: IpAddr) -> Subject<'static> {
        match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Subject::Address(IpAddr::V4(v4)),
                None => {
                    let s = v6.segments();
                    Subject::Address(IpAddr::V6(std::net::Ipv6Addr::new(
                        s[0], s[1], s[2], s[3], 0, 0, 0, 0,
                    )))
                }
            },
            v4 => Subject::Address(v4),
        }
    }
}

impl fmt::Display for Subject<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Key(id) => write!(f, "key:{id}"),
            Subject::User(id) => write!(f, "user:{id}"),
            Subject::Address(ip) => write!(f, "ip:{ip}"),
        }
    }
}

/// Where one rule stands after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    pub rule: Rule,
    /// Requests it would still admit now.
    pub remaining: u32,
    /// Until its whole quota is back.
    pub reset: Duration,
}

/// A request admitted or refused, and every rule that applied (at most two).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Verdict {
    pub statuses: [Option<Status>; 2],
    /// Refused: the first moment it would be admitted, from now.
    pub retry_after: Option<Duration>,
}

impl Verdict {
    pub fn allowed(&self) -> bool {
        self.retry_after.is_none()
    }

    pub fn statuses(&self) -> impl Iterator<Item = &Status> {
        self.statuses.iter().flatten()
    }

    /// The rule that refused (the one with the fewest requests left).
    pub fn binding(&self) -> Option<&Status> {
        self.statuses().min_by_key(|s| s.remaining)
    }
}

/// A wait in whole seconds, rounded up (what `Retry-After` and the RateLimit headers say).
pub fn whole_secs(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

/// The limiter: in-process buckets, and the Redis-shared ones when configured.
pub struct Limiter {
    local: local::Buckets,
    shared: Option<shared::Shared>,
    clock: Arc<Clock>,
    started: Instant,
    /// Digests of (subject, rule): one seed per process.
    hasher: std::hash::RandomState,
}

impl Limiter {
    /// Buckets in this process only.
    pub fn local(clock: Arc<Clock>) -> Limiter {
        Limiter {
            local: local::Buckets::default(),
            shared: None,
            clock,
            started: Instant::now(),
            hasher: std::hash::RandomState::new(),
        }
    }

    /// Buckets shared through Redis (with this process's as the fallback).
    pub fn shared(clock: Arc<Clock>, settings: shared::Settings) -> Result<Limiter, String> {
        Ok(Limiter {
            shared: Some(shared::Shared::new(settings)?),
            ..Limiter::local(clock)
        })
    }

    /// Whether a request of `class` by `subject` under `plan` is admitted now; if so, it is counted.
    pub async fn check(&self, subject: Subject<'_>, plan: &Plan, class: Class) -> Verdict {
        let mut rules = [None; 2];
        for (slot, rule) in rules.iter_mut().zip(plan.applying(class)) {
            *slot = Some(*rule);
        }
        if rules[0].is_none() {
            return Verdict::default();
        }
        let whose = self.digest(&subject);
        let digests = rules.map(|r| r.map(|r| self.digest(&(whose, r))));
        if let Some(shared) = &self.shared {
            if let Some(verdict) = shared.check(subject, &rules, &digests, self.now()).await {
                return verdict;
            }
        }
        self.local.check(whose, &rules, &digests, self.now())
    }

    /// Forgets buckets that are full again (they are the same as no bucket). Run now and then.
    pub fn sweep(&self) -> usize {
        self.local.sweep(self.now())
    }

    /// Sweeps every `every`, until the process ends.
    pub async fn sweep_every(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.sweep();
        }
    }

    /// Monotonic nanoseconds (plus whatever a test moved the clock by).
    fn now(&self) -> u64 {
        let elapsed = self.started.elapsed() + self.clock.offset();
        // A start well above zero, so that "full" (a bucket's time at or before now) needs no special case.
        u64::try_from(elapsed.as_nanos())
            .unwrap_or(u64::MAX / 2)
            .saturating_add(MAX_WINDOW.as_nanos() as u64)
    }

    fn digest(&self, value: &impl Hash) -> u64 {
        self.hasher.hash_one(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_plans_read_and_print_back() {
        let rate: Rate = "60/min".parse().unwrap();
        assert_eq!(rate.requests, 60);
        assert_eq!(rate.window, Duration::from_secs(60));
        assert_eq!(rate.interval(), Duration::from_secs(1));
        for (text, shown) in [
            ("1000/h", "1000/h"),
            ("10/hour", "10/h"),
            ("5/s", "5/s"),
            ("100/10s", "100/10s"),
            ("2/day", "2/day"),
            ("7/90s", "7/90s"),
            ("3/120s", "3/2min"),
        ] {
            assert_eq!(text.parse::<Rate>().unwrap().to_string(), shown, "{text}");
        }
        for bad in [
            "",
            "60",
            "0/min",
            "60/",
            "60/fortnight",
            "x/min",
            "1/0s",
            "1/8day",
        ] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
        let plan: Plan = " all=1000/h, predict=60/min ,bulk=10/h".parse().unwrap();
        assert_eq!(plan.to_string(), "all=1000/h,predict=60/min,bulk=10/h");
        assert_eq!(plan.to_string().parse::<Plan>().unwrap(), plan);
        let names: Vec<_> = plan.applying(Class::Predict).map(Rule::name).collect();
        assert_eq!(names, ["all", "predict"]);
        let names: Vec<_> = plan.applying(Class::Read).map(Rule::name).collect();
        assert_eq!(names, ["all"]);
        assert!("".parse::<Plan>().unwrap().is_empty());
        for bad in ["predict=1/s,predict=2/s", "reads=1/s", "predict", "all=1"] {
            assert!(bad.parse::<Plan>().is_err(), "{bad}");
        }
    }

    #[test]
    fn ipv6_clients_count_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(Subject::address(a), Subject::address(b));
        assert_ne!(Subject::address(a), Subject::address(c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(
            Subject::address(mapped),
            Subject::Address("10.0.0.1".parse().unwrap())
        );
    }

    /// N admitted at once, the N+1st refused with the wait for one request; a refusal debits nothing, and
    /// each rule counts on its own.
    #[tokio::test]
    async fn the_edge_is_exact_and_a_refusal_costs_nothing() {
        let clock = Arc::new(Clock::default());
        let limiter = Limiter::local(clock.clone());
        let plan: Plan = "all=8/h,predict=5/min".parse().unwrap();
        let key = Subject::Key("k1");
        for i in 0..5 {
            let v = limiter.check(key, &plan, Class::Predict).await;
            assert!(v.allowed(), "request {i}");
            let predict = v.statuses().find(|s| s.rule.name() == "predict").unwrap();
            assert_eq!(predict.remaining, 4 - i);
        }
        let refused = limiter.check(key, &plan, Class::Predict).await;
        let wait = refused.retry_after.unwrap();
        assert!(
            wait > Duration::from_secs(11) && wait <= Duration::from_secs(12),
            "{wait:?}"
        );
        assert_eq!(refused.binding().unwrap().rule.name(), "predict");
        // The refusal took nothing from `all`: 3 reads left of its 8.
        for _ in 0..3 {
            assert!(limiter.check(key, &plan, Class::Read).await.allowed());
        }
        let v = limiter.check(key, &plan, Class::Read).await;
        assert!(!v.allowed());
        assert_eq!(v.binding().unwrap().rule.name(), "all");
        // Another subject has its own buckets.
        assert!(limiter
            .check(Subject::Key("k2"), &plan, Class::Predict)
            .await
            .allowed());
        // One request comes back every 12 s of predict's window (and all's: 1 per 450 s).
        clock.advance(Duration::from_secs(450));
        let v = limiter.check(key, &plan, Class::Predict).await;
        assert!(v.allowed(), "{v:?}");
        assert!(!limiter.check(key, &plan, Class::Predict).await.allowed());
        // An empty plan limits nothing and reports nothing.
        let v = limiter.check(key, &Plan::default(), Class::Predict).await;
        assert!(v.allowed() && v.statuses().next().is_none());
    }

    #[tokio::test]
    async fn full_buckets_are_swept() {
        let clock = Arc::new(Clock::default());
        let limiter = Limiter::local(clock.clone());
        let plan: Plan = "read=10/min".parse().unwrap();
        for i in 0..100u8 {
            let ip = IpAddr::from([10, 0, 0, i]);
            limiter
                .check(Subject::address(ip), &plan, Class::Read)
                .await;
        }
        assert_eq!(limiter.sweep(), 0, "nothing is full yet");
        clock.advance(Duration::from_secs(7));
        assert_eq!(limiter.sweep(), 100);
        assert_eq!(limiter.local.count(), 0);
    }
}
