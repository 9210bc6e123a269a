//! Mercator's domain store: organizations, API keys, materials, suppliers and price observations, on SQLite
//! (the embedded default: one file under --data-dir, WAL) or PostgreSQL (`postgres://...`), through one
//! code path.
//!
//! The choice, made once: sqlx's `Any` driver with portable SQL and one migrations folder, rather than a
//! trait with one implementation per database. The rules that keep it portable: ids are TEXT (random hex
//! made here), times are BIGINT milliseconds since the epoch, money and quantities are DOUBLE PRECISION,
//! JSON is TEXT, flags are BIGINT 0/1; placeholders are `$1`, which both databases take; no dialect
//! features (no `FOR UPDATE`, no `RETURNING`). Runtime queries with `FromRow`, no macros, so the build needs
//! no database.
//!
//! Tenancy is in every signature: each method that touches a tenant's rows takes the organization, there
//! is no unscoped query to call by mistake, and another organization's row is simply not found.
//!
//! The types here are the API's shapes too (serde; utoipa schemas with the `openapi` feature): a material
//! is the same thing in the database, in the server and on the wire.

mod alerts;
mod audit;
mod batches;
mod catalog;
mod changes;
mod models;
mod monitor;
mod orders;
mod prices;
mod runs;
pub mod secrets;
mod sourcing;
mod tenants;
mod users;
mod validate;

use std::time::{SystemTime, UNIX_EPOCH};

use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::any::{AnyArguments, AnyPoolOptions};
use sqlx::query::Query;
use sqlx::{Any, AnyPool};

pub use alerts::{
    AlertEvent, AlertRule, AlertRulePatch, Breach, Channel, Condition, Delivery, DueDelivery,
    EventQuery, EventStatus, NewAlertRule, OwnedRule, Scope, Webhook, SOURCING_EVENTS,
};
pub use audit::{AuditEvent, AuditQuery, NewAuditEvent};
pub use batches::{
    new_batch_id, BatchJob, BatchState, Chunk, ClaimedChunk, JobError, LegacyChunk, NewBatchJob,
};
pub use catalog::{
    Columns, Entry, Material, MaterialFilter, MaterialPatch, NewMaterial, NewSupplier, Supplier,
    SupplierFilter, SupplierPatch,
};
pub use changes::{Change, ChangeKind, ChangeListener, Observed, PriceMoves, CHANNEL};
pub use models::{ModelPolicy, TrafficPolicy, VersionRecord, VersionState};
pub use monitor::{LoggedPrediction, MonitorCounts};
pub use orders::{
    check_delivery, DeliveryImportRow, NewOrder, NewOrderDelivery, NewOrderLine, Order,
    OrderDelivery, OrderFilter, OrderImportRow, OrderLine, MAX_ORDER_LINES,
};
pub use prices::{
    CategoryPrice, NewPrice, Price, PriceAnomaly, PricePatch, PricePoint, PriceQuery, PriceType,
    Severity,
};
pub use sourcing::{
    checked_lines, checked_suppliers, invites, Award, Benchmark, DealScore, Invite, NewRfq,
    NewRfqLine, Quote, QuoteLine, Rfq, RfqFilter, RfqLine, RfqPatch, RfqStatus, MAX_RFQ_LINES,
    MAX_RFQ_SUPPLIERS,
};
pub use tenants::{
    generate_key, plausible_key, ApiKey, KeyScope, KeySpec, Organization, Role, KEY_PREFIX,
};
pub use users::{RefreshToken, Spent, User, UserChange};
pub use validate::{
    opt_date, opt_time, parse_date, parse_time, parse_time_param, FieldErrors, RowError,
    DATE_RANGE, MAX_PRICE, MIN_PRICE,
};

/// Times on the wire are RFC 3339 in UTC; in the database, milliseconds since the epoch.
pub type Time = chrono::DateTime<chrono::Utc>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// What was asked for is not there (or is another organization's): named (`material`, `batch job`).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A uniqueness rule or a reference that forbids the write (a duplicate code; a material that still has
    /// observations).
    #[error("{0}")]
    Conflict(String),
    /// Values that break a rule, by field.
    #[error("invalid values: {0:?}")]
    Invalid(FieldErrors),
    /// A bulk write refused, with every offending row; nothing was written.
    #[error("{} rows are invalid", .0.len())]
    Rows(Vec<RowError>),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// A sealed secret that does not open (another key, or tampered with).
    #[error("a stored secret: {0}")]
    Secret(String),
}

impl StoreError {
    /// The stable snake_case code of the store's answer (the server maps codes to statuses).
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::NotFound(_) => "not_found",
            StoreError::Conflict(_) => "conflict",
            StoreError::Invalid(_) => "validation_error",
            StoreError::Rows(_) => "invalid_rows",
            StoreError::Database(_) | StoreError::Migration(_) | StoreError::Secret(_) => {
                "internal"
            }
        }
    }

    /// A write's error, with the portable reading of constraint violations (SQLite does not name them).
    fn from_write(e: sqlx::Error, conflict: &str) -> StoreError {
        match &e {
            sqlx::Error::Database(d) if d.is_unique_violation() => {
                StoreError::Conflict(conflict.to_string())
            }
            sqlx::Error::Database(d) if d.is_foreign_key_violation() => {
                StoreError::Conflict(conflict.to_string())
            }
            _ => StoreError::Database(e),
        }
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Page and order of a list.
#[derive(Debug, Clone, Default)]
pub struct ListParams {
    /// At most this many items (the server bounds it).
    pub limit: u32,
    pub offset: u64,
    /// A field name, `-` first for descending; each resource lists the fields it sorts by.
    pub sort: Option<String>,
    /// Count every row the filters match (a scan of them all: cheap for a catalogue, not for a price
    /// history of millions).
    pub count: bool,
}

/// One page of a list: whether more follow, and the count of everything the filters match when asked.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Listed<T> {
    pub items: Vec<T>,
    pub has_more: bool,
    pub total: Option<i64>,
    pub limit: u32,
    pub offset: u64,
}

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    sqlite: bool,
    /// Where it connected (a feed listener opens its own connection there).
    url: std::sync::Arc<str>,
    /// This process's name in the change feed.
    replica: std::sync::Arc<str>,
    /// Seals secrets written (webhook secrets) and opens them read; without one they are kept as given.
    sealer: Option<std::sync::Arc<secrets::Sealer>>,
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

impl Store {
    /// Connects and applies the migrations. `url`: `sqlite://path/to/file.db` (created if missing, WAL) or
    /// `postgres://user@host:port/db`.
    pub async fn connect(url: &str) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let sqlite = url.starts_with("sqlite:");
        let url: std::sync::Arc<str> = if sqlite && !url.contains('?') {
            format!("{url}?mode=rwc").into()
        } else {
            url.into()
        };
        let pool = AnyPoolOptions::new()
            // SQLite has one writer: a small pool; PostgreSQL is shared by replicas: keep it modest too.
            .max_connections(if sqlite { 4 } else { 8 })
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if sqlite {
                        for pragma in [
                            "PRAGMA journal_mode = WAL",
                            "PRAGMA synchronous = NORMAL",
                            "PRAGMA foreign_keys = ON",
                            "PRAGMA busy_timeout = 5000",
                        ] {
                            sqlx::query(pragma).execute(&mut *conn).await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Store {
            pool,
            sqlite,
            url,
            replica: changes::replica_name(),
            sealer: None,
        })
    }

    /// A transaction that writes. On SQLite it takes the database's one write lock as it starts (`BEGIN
    /// IMMEDIATE`), waiting for it up to the busy timeout: a deferred transaction that reads first and then
    /// writes fails at once with "database is locked" when another connection holds the lock, because
    /// SQLite does not wait on a read lock's upgrade (it could deadlock).
    pub(crate) async fn write_tx(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        Ok(if self.sqlite {
            self.pool.begin_with("BEGIN IMMEDIATE").await?
        } else {
            self.pool.begin().await?
        })
    }

    /// The store, sealing the secrets it writes with `sealer` (and opening those it reads).
    pub fn with_sealer(mut self, sealer: secrets::Sealer) -> Store {
        self.sealer = Some(std::sync::Arc::new(sealer));
        self
    }

    /// A secret as it is written.
    fn seal(&self, secret: &str) -> String {
        match &self.sealer {
            Some(s) => s.seal(secret),
            None => secret.to_string(),
        }
    }

    /// A secret as it was written, opened.
    fn open(&self, stored: &str) -> Result<String> {
        match &self.sealer {
            Some(s) => s.open(stored),
            None => Ok(stored.to_string()),
        }
    }

    /// Which database this is: `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        if self.sqlite {
            "sqlite"
        } else {
            "postgres"
        }
    }

    /// Closes the pool's connections.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Bound values of a query assembled piece by piece (filters, partial updates).
#[derive(Debug, Clone)]
enum Value {
    Text(Option<String>),
    Real(Option<f64>),
    Int(i64),
}

/// SQL text with `$n` placeholders numbered as values are added (`QueryBuilder` would write `?` for `Any`,
/// which PostgreSQL does not take).
#[derive(Debug, Default)]
struct Sql {
    text: String,
    values: Vec<Value>,
}

impl Sql {
    fn new(text: impl Into<String>) -> Sql {
        Sql {
            text: text.into(),
            values: Vec::new(),
        }
    }

    fn push(&mut self, text: &str) -> &mut Sql {
        self.text.push_str(text);
        self
    }

    /// Appends a placeholder for `value`.
    fn bind(&mut self, value: Value) -> &mut Sql {
        self.values.push(value);
        self.text.push_str(&format!("${}", self.values.len()));
        self
    }

    /// Appends one row of a multi-row `VALUES` list: `(…)`, preceded by `, ` unless it is the first.
    fn values_row(&mut self, first: bool, row: impl IntoIterator<Item = Value>) -> &mut Sql {
        self.push(if first { "(" } else { ", (" });
        for (j, value) in row.into_iter().enumerate() {
            if j > 0 {
                self.push(", ");
            }
            self.bind(value);
        }
        self.push(")")
    }

    fn query(&self) -> Query<'_, Any, AnyArguments<'_>> {
        let mut query = sqlx::query(&self.text);
        for value in &self.values {
            query = match value {
                Value::Text(v) => query.bind(v.clone()),
                // sqlx 0.8.6's Any driver declares a NULL f64 to PostgreSQL as FLOAT4 (a NULL f32 as
                // FLOAT8: the two are swapped in sqlx-postgres's `any.rs`). A statement is prepared once per
                // connection with the types of its first run, so a NULL first and a number later sent 8
                // bytes to a FLOAT4 parameter ("incorrect binary data format"). A NULL bound as f32 is
                // declared FLOAT8, as a number is.
                Value::Real(None) => query.bind(None::<f32>),
                Value::Real(Some(v)) => query.bind(*v),
                Value::Int(v) => query.bind(*v),
            };
        }
        query
    }
}

/// `ORDER BY` for `sort` among the resource's `(field, column)` pairs; unknown fields are a validation error.
fn order_by(sort: Option<&str>, fields: &[(&str, &str)], default: &str) -> Result<String> {
    let Some(sort) = sort else {
        return Ok(format!(" ORDER BY {default}"));
    };
    let (field, direction) = match sort.strip_prefix('-') {
        Some(field) => (field, "DESC"),
        None => (sort, "ASC"),
    };
    match fields.iter().find(|(name, _)| *name == field) {
        Some((_, column)) => Ok(format!(" ORDER BY {column} {direction}, id {direction}")),
        None => {
            let names: Vec<&str> = fields.iter().map(|(name, _)| *name).collect();
            Err(StoreError::Invalid(FieldErrors::one(
                "sort",
                format!(
                    "unknown field `{field}`; sort by one of {} (prefix `-` for descending)",
                    names.join(", ")
                ),
            )))
        }
    }
}

/// A new row id: 32 hex digits, the first 12 the time in milliseconds and the next 8 a process-wide
/// sequence, so ids made one after another sort in order and a bulk write appends to the primary key's
/// index instead of writing all over it (not measured apart from the other ingest changes); the last 12
/// are random, so replicas writing in the same millisecond do not collide.
fn new_id() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static SEQUENCE: AtomicU32 = AtomicU32::new(0);
    let sequence = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    format!("{:012x}{sequence:08x}{}", now_ms(), random_hex(6))
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn from_ms(ms: i64) -> Time {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// `text` with `LIKE`'s wildcards escaped (by `\\`: follow the pattern with `ESCAPE '\\'`).
fn like_escaped(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

/// JSON text from the database, as a value.
fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or(serde_json::Value::Null)
}
