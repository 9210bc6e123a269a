//! The change feed: what another replica must apply to the state it keeps in memory, recorded in the same
//! transaction as the change itself and numbered in commit order.
//!
//! Numbering: `seq` is `MAX(seq) + 1`, written under a transaction-scoped lock that is taken last and held
//! to the commit (PostgreSQL's `pg_advisory_xact_lock`; SQLite has one writer). So numbers have no gaps and
//! commit in order: a reader that has read every change up to `n` never later finds one below `n`, the
//! trap of a `bigserial` drawn before commit. Only the tail of a writing transaction is serialized.
//!
//! Wake-up: PostgreSQL `NOTIFY mercator_fleet` at commit ([`ChangeListener`]). A notification can be lost
//! (a dropped connection, a half-open socket), so readers also poll; the feed, not the notification, is
//! what they trust.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sqlx::{AnyConnection, Row};

use crate::{from_ms, now_ms, Result, Store, Time};

/// The notification channel a change is announced on.
pub const CHANNEL: &str = "mercator_fleet";

/// The advisory lock that orders the feed ("mercator" in ASCII).
const FEED_LOCK: i64 = 0x6d65_7263_6174_6f72;

/// What changed, and so what a replica refreshes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// An API key deleted: its cached verification goes (entity: the key's id).
    Key,
    /// A user changed (role, password, deactivated): their cached tokens go (entity: the user's id).
    User,
    /// A session ended (entity: its family id).
    Session,
    /// A model's versions, active version or traffic (entity: the model's name; read again from the store).
    Model,
    /// An organization's alert rules (entity: the rule's id; the organization's index is rebuilt).
    Rules,
    /// A material's or supplier's attributes (entity: its id; the cached attributes go).
    Material,
    Supplier,
    /// Price observations written, corrected or deleted (entity: the organization; payload: [`PriceMoves`]).
    Prices,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Key => "key",
            ChangeKind::User => "user",
            ChangeKind::Session => "session",
            ChangeKind::Model => "model",
            ChangeKind::Rules => "rules",
            ChangeKind::Material => "material",
            ChangeKind::Supplier => "supplier",
            ChangeKind::Prices => "prices",
        }
    }

    fn parse(s: &str) -> Option<ChangeKind> {
        Some(match s {
            "key" => ChangeKind::Key,
            "user" => ChangeKind::User,
            "session" => ChangeKind::Session,
            "model" => ChangeKind::Model,
            "rules" => ChangeKind::Rules,
            "material" => ChangeKind::Material,
            "supplier" => ChangeKind::Supplier,
            "prices" => ChangeKind::Prices,
            _ => return None,
        })
    }
}

/// One recorded change.
#[derive(Debug, Clone)]
pub struct Change {
    pub seq: i64,
    /// `None`: a kind this build does not know (written by a newer replica); the reader resyncs.
    pub kind: Option<ChangeKind>,
    pub organization_id: Option<String>,
    pub entity: String,
    pub payload: Option<String>,
    /// The replica that made it (it applied the change itself).
    pub origin: String,
    pub at: Time,
}

/// An observation as the price history keeps it: material, supplier, time (ms), price.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observed(pub String, pub Option<String>, pub i64, pub f64);

/// What a price write did to the history: observations in, observations out.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PriceMoves {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<Observed>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<Observed>,
}

impl PriceMoves {
    pub fn parse(payload: Option<&str>) -> Option<PriceMoves> {
        serde_json::from_str(payload?).ok()
    }
}

/// A change to record inside a writing transaction.
pub(crate) struct Changed<'a> {
    pub kind: ChangeKind,
    pub organization_id: Option<&'a str>,
    pub entity: &'a str,
    pub payload: Option<String>,
}

impl<'a> Changed<'a> {
    pub fn of(kind: ChangeKind, organization_id: Option<&'a str>, entity: &'a str) -> Changed<'a> {
        Changed {
            kind,
            organization_id,
            entity,
            payload: None,
        }
    }

    pub fn prices(organization_id: &'a str, moves: &PriceMoves) -> Changed<'a> {
        Changed {
            kind: ChangeKind::Prices,
            organization_id: Some(organization_id),
            entity: organization_id,
            payload: Some(serde_json::to_string(moves).expect("observations serialize")),
        }
    }
}

/// A listener for the feed's notifications (PostgreSQL only).
pub struct ChangeListener(sqlx::postgres::PgListener);

impl ChangeListener {
    /// Waits for the next notification: `Ok(true)` one came, `Ok(false)` the connection was lost and
    /// re-established (anything sent meanwhile is gone: read the feed).
    pub async fn wait(&mut self) -> Result<bool> {
        Ok(self.0.try_recv().await?.is_some())
    }
}

impl Store {
    /// This process's name in the feed: the origin of the changes it records.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// Records a change in the writing transaction `conn` (the feed's lock is held from here to its commit,
    /// so call this last).
    pub(crate) async fn record_change(
        &self,
        conn: &mut AnyConnection,
        change: Changed<'_>,
    ) -> Result<()> {
        if !self.sqlite {
            sqlx::query("SELECT 1 FROM pg_advisory_xact_lock($1)")
                .bind(FEED_LOCK)
                .execute(&mut *conn)
                .await?;
        }
        sqlx::query(
            "INSERT INTO fleet_changes (seq, kind, organization_id, entity, payload, origin, at) \
             SELECT COALESCE(MAX(seq), 0) + 1, $1, $2, $3, $4, $5, $6 FROM fleet_changes",
        )
        .bind(change.kind.as_str())
        .bind(change.organization_id)
        .bind(change.entity)
        // One process serves a SQLite file: nobody reads the observations, so they are not kept.
        .bind(change.payload.filter(|_| !self.sqlite))
        .bind(&*self.replica)
        .bind(now_ms())
        .execute(&mut *conn)
        .await?;
        if !self.sqlite {
            sqlx::query("SELECT 1 FROM pg_notify($1, '')")
                .bind(CHANNEL)
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }

    /// Whether the database answers (`SELECT 1`).
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// The newest change's number (0: none yet).
    pub async fn last_change(&self) -> Result<i64> {
        let seq: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM fleet_changes")
            .fetch_one(&self.pool)
            .await?;
        Ok(seq.unwrap_or(0))
    }

    /// Up to `limit` changes after `seq`, in order.
    pub async fn changes_after(&self, seq: i64, limit: u32) -> Result<Vec<Change>> {
        let rows = sqlx::query(
            "SELECT seq, kind, organization_id, entity, payload, origin, at FROM fleet_changes \
             WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(seq)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Change {
                    seq: row.try_get("seq")?,
                    kind: ChangeKind::parse(row.try_get::<&str, _>("kind")?),
                    organization_id: row.try_get("organization_id")?,
                    entity: row.try_get("entity")?,
                    payload: row.try_get("payload")?,
                    origin: row.try_get("origin")?,
                    at: from_ms(row.try_get("at")?),
                })
            })
            .collect()
    }

    /// Forgets changes recorded before `before`, always keeping the newest (numbering continues from it).
    /// A replica that had not read them reloads everything.
    pub async fn prune_changes(&self, before: Time) -> Result<u64> {
        let done = sqlx::query(
            "DELETE FROM fleet_changes WHERE at < $1 \
             AND seq < (SELECT MAX(seq) FROM fleet_changes)",
        )
        .bind(before.timestamp_millis())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// A listener for the feed's notifications; `None` on SQLite, where one process is the only writer.
    pub async fn change_listener(&self) -> Result<Option<ChangeListener>> {
        if self.sqlite {
            return Ok(None);
        }
        let mut listener = sqlx::postgres::PgListener::connect(&self.url).await?;
        listener.listen(CHANNEL).await?;
        Ok(Some(ChangeListener(listener)))
    }
}

/// A name for this process in the feed.
pub(crate) fn replica_name() -> Arc<str> {
    crate::random_hex(8).into()
}
