//! The fleet: replicas on one PostgreSQL database keep what they hold in memory (the models they serve and
//! how, the alert rule index, the price history, cached keys, sessions and catalogue entries) in step with
//! each other through the store's change feed.
//!
//! Each replica is a projection of the store: everything is loaded at start, then every change another
//! replica records is applied in order, from the number the start-up load included. A notification wakes
//! the follower at once (PostgreSQL `LISTEN`); it also reads the feed every `poll`, because a notification
//! can be lost and a listening connection can go quietly dead. A replica that finds the feed pruned past
//! what it has read (it was cut off longer than the feed is kept) reloads everything.
//!
//! Changes are applied idempotently, by reading the store's state again (a model's policy, an
//! organization's rules) or dropping a cached copy; prices are the exception: the change carries the
//! observations in and out, and the start-up history names the last change it holds, so none is counted
//! twice.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mercator_features::online::Observation;
use mercator_store::{Change, ChangeKind, Observed, PriceMoves, Store, StoreError};

use crate::alerts::Alerts;
use crate::identity::sessions::Sessions;
use crate::predict::Predictions;
use crate::registry::Registry;

/// Changes read from the feed at a time.
const PAGE: u32 = 500;

/// How the follower reads the feed.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// The feed is read this often even without a notification (--fleet-poll-ms).
    pub poll: Duration,
    /// Changes are kept this long; a replica cut off for longer reloads everything.
    pub retention: Duration,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            poll: Duration::from_secs(2),
            retention: Duration::from_secs(24 * 3600),
        }
    }
}

/// Drops a cached API key by id (`None`: every one).
pub type ForgetKey = Box<dyn Fn(Option<&str>) + Send + Sync>;

/// What the follower changes when another replica changed something.
pub struct Projections {
    pub registry: Arc<Registry>,
    pub alerts: Arc<Alerts>,
    pub predictions: Arc<Predictions>,
    pub sessions: Arc<Sessions>,
    /// Drops a cached API key by id (`None`: every one). The key cache is the server's.
    pub forget_key: ForgetKey,
}

/// How far behind the feed this replica is, for `/readyz`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Lag {
    /// The last change applied.
    pub applied: i64,
    /// Seconds since the feed was last read to its end (0: just now).
    pub seconds_behind: f64,
}

pub struct Follower {
    store: Store,
    projections: Projections,
    settings: Settings,
    /// The last change applied.
    applied: AtomicI64,
    /// Price changes up to this one are in the history already (it was rebuilt from a snapshot).
    history_at: AtomicI64,
    /// When the feed was last read to its end.
    caught_up: Mutex<Instant>,
    /// One catch-up at a time.
    reading: tokio::sync::Mutex<()>,
}

impl Follower {
    /// A follower that applies changes after `applied`, knowing the history holds price changes up to
    /// `history_at`. Read `applied` before loading anything, so a change made during the load is applied
    /// again rather than missed.
    pub fn new(
        store: Store,
        projections: Projections,
        settings: Settings,
        applied: i64,
        history_at: i64,
    ) -> Follower {
        Follower {
            store,
            projections,
            settings,
            applied: AtomicI64::new(applied),
            history_at: AtomicI64::new(history_at),
            caught_up: Mutex::new(Instant::now()),
            reading: tokio::sync::Mutex::new(()),
        }
    }

    pub fn lag(&self) -> Lag {
        let since = self.caught_up.lock().unwrap_or_else(|e| e.into_inner());
        Lag {
            applied: self.applied.load(Ordering::Acquire),
            seconds_behind: since.elapsed().as_secs_f64(),
        }
    }

    /// Follows the feed until the server stops: woken by notifications, reading every `poll` regardless,
    /// pruning changes older than the retention once an hour.
    pub async fn run(self: Arc<Self>) {
        let postgres = self.store.backend() == "postgres";
        let mut listener = None;
        let mut pruned = Instant::now();
        loop {
            if postgres && listener.is_none() {
                match self.store.change_listener().await {
                    Ok(l) => listener = l,
                    Err(e) => {
                        tracing::warn!(error = %e, "the change feed's listener cannot connect")
                    }
                }
            }
            if let Err(e) = self.catch_up().await {
                tracing::warn!(error = %e, "reading the change feed failed; retrying");
            }
            if pruned.elapsed() >= Duration::from_secs(3600) {
                pruned = Instant::now();
                self.prune().await;
            }
            match listener.as_mut() {
                Some(l) => match tokio::time::timeout(self.settings.poll, l.wait()).await {
                    Ok(Ok(_)) | Err(_) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "the change feed's listener failed; reconnecting");
                        listener = None;
                        tokio::time::sleep(self.settings.poll.min(Duration::from_secs(1))).await;
                    }
                },
                None => tokio::time::sleep(self.settings.poll).await,
            }
        }
    }

    /// Applies every change recorded after the last one applied. Answers how many were read.
    pub async fn catch_up(&self) -> Result<usize, StoreError> {
        let _reading = self.reading.lock().await;
        let mut read = 0;
        loop {
            let last = self.applied.load(Ordering::Acquire);
            let changes = self.store.changes_after(last, PAGE).await?;
            let Some(first) = changes.first() else {
                break;
            };
            if first.seq != last + 1 {
                tracing::warn!(
                    applied = last,
                    oldest = first.seq,
                    "the change feed was pruned past this replica; reloading"
                );
                self.resync().await?;
                continue;
            }
            for change in &changes {
                self.apply(change).await?;
                self.applied.store(change.seq, Ordering::Release);
            }
            read += changes.len();
            metrics::counter!("mercator_fleet_changes_applied_total")
                .increment(changes.len() as u64);
            if changes.len() < PAGE as usize {
                break;
            }
        }
        *self.caught_up.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        Ok(read)
    }

    /// Applies one change (one this replica made it applied itself). A store failure is returned (the
    /// change is read again); a change that cannot apply here is logged and passed.
    async fn apply(&self, change: &Change) -> Result<(), StoreError> {
        if change.origin == self.store.replica() {
            return Ok(());
        }
        let p = &self.projections;
        let entity = change.entity.as_str();
        let org = change.organization_id.as_deref().unwrap_or_default();
        let Some(kind) = change.kind else {
            tracing::warn!(
                seq = change.seq,
                "a change of a kind this build does not know; reloading"
            );
            return self.resync().await;
        };
        match kind {
            ChangeKind::Key => (p.forget_key)(Some(entity)),
            ChangeKind::User => p.sessions.forget_user(entity),
            ChangeKind::Session => p.sessions.forget_session(entity),
            ChangeKind::Material => p.predictions.forget_material(entity),
            ChangeKind::Supplier => p.predictions.forget_supplier(entity),
            ChangeKind::Rules => p.alerts.refresh(org).await?,
            ChangeKind::Model => match p.registry.follow(entity).await {
                Ok(()) => {}
                Err(crate::registry::RegistryError::Store(e)) => return Err(e),
                Err(e) => {
                    tracing::warn!(model = %entity, error = %e, "another replica's model change does not apply here")
                }
            },
            ChangeKind::Prices => {
                if change.seq <= self.history_at.load(Ordering::Acquire) {
                    return Ok(());
                }
                let Some(moves) = PriceMoves::parse(change.payload.as_deref()) else {
                    tracing::warn!(
                        seq = change.seq,
                        "a price change that does not read; reloading"
                    );
                    return self.resync().await;
                };
                let history = &p.predictions.history;
                for o in &moves.remove {
                    history.remove(observation(org, o));
                }
                history.add(moves.add.iter().map(|o| observation(org, o)));
            }
        }
        Ok(())
    }

    /// Reloads everything the feed keeps in step, for a replica that cannot follow it change by change.
    async fn resync(&self) -> Result<(), StoreError> {
        let p = &self.projections;
        let newest = self.store.last_change().await?;
        (p.forget_key)(None);
        p.sessions.forget_all();
        p.predictions.forget_catalog();
        if let Err(e) = p.alerts.load().await {
            tracing::warn!(error = %e, "reloading the alert rules failed");
        }
        let mut names: Vec<String> = self
            .store
            .model_versions(None)
            .await?
            .into_iter()
            .map(|r| r.name)
            .collect();
        names.dedup();
        for name in names {
            if let Err(e) = p.registry.follow(&name).await {
                tracing::warn!(model = %name, error = %e, "following a model failed");
            }
        }
        match p.predictions.rebuild().await {
            Ok((_, seq)) => self.history_at.store(seq, Ordering::Release),
            Err(e) => tracing::warn!(error = %e, "rebuilding the price history failed"),
        }
        self.applied.store(newest, Ordering::Release);
        metrics::counter!("mercator_fleet_resyncs_total").increment(1);
        Ok(())
    }

    async fn prune(&self) {
        let Some(before) = chrono::Duration::from_std(self.settings.retention)
            .ok()
            .and_then(|keep| chrono::Utc::now().checked_sub_signed(keep))
        else {
            return;
        };
        match self.store.prune_changes(before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(n, "old changes pruned from the feed"),
            Err(e) => tracing::warn!(error = %e, "pruning the change feed failed"),
        }
    }
}

/// Runs `round` once per period of `every` across the fleet: every replica wakes at each period's start (wall
/// clock, so replicas agree on the periods), and the one that claims the period in the store runs it. No
/// leader to elect or lose: a replica that dies just stops claiming, and the next period is another's.
pub async fn each_period<F, Fut>(store: Store, task: &'static str, every: Duration, mut round: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let period = i64::try_from(every.as_millis())
        .unwrap_or(i64::MAX)
        .max(100);
    loop {
        let now = chrono::Utc::now().timestamp_millis();
        let slot = now / period + 1;
        let wait = slot.saturating_mul(period).saturating_sub(now);
        tokio::time::sleep(Duration::from_millis(wait.max(0) as u64)).await;
        match store.claim_run(task, slot).await {
            Ok(true) => {
                round().await;
                metrics::counter!("mercator_fleet_rounds_total", "task" => task).increment(1);
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(task, error = %e, "claiming a periodic round failed"),
        }
    }
}

fn observation<'a>(org: &'a str, o: &'a Observed) -> Observation<'a> {
    Observation {
        organization: org,
        material: &o.0,
        supplier: o.1.as_deref(),
        observed_at_ms: o.2,
        price: o.3,
    }
}
