//! Configuration: flags, each with an environment variable, over an optional TOML file, over defaults.
//! Parsed once into `Config`; nothing else reads the environment.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

mod monitor;
mod sourcing;
use monitor::monitor;
use sourcing::sourcing;

#[derive(Debug, Parser)]
#[command(
    name = "mercator",
    version,
    about = "Mercator: an inference-first ML serving engine for procurement pricing"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum FeaturesCommand {
    /// Computes a training frame from a price history with the code that serves predictions.
    Materialize {
        /// The model's features.toml.
        #[arg(long)]
        spec: PathBuf,
        /// Price observations, .csv or .parquet.
        #[arg(long)]
        input: PathBuf,
        /// The frame to write: .parquet (or .csv).
        #[arg(long)]
        output: PathBuf,
    },
    /// Writes a supplier-risk model's training frame (CSV): one row per order line whose lateness is known
    /// by --end, its features as of the day it was ordered, computed by the code that answers
    /// `GET /api/v1/suppliers/{id}/risk`, and the label `late`.
    DeliveryFrame {
        /// The risk model's features.toml (`kind = "delivery"`).
        #[arg(long)]
        spec: PathBuf,
        /// Order lines: reference, supplier_code, ordered_on, material_code, quantity, promised_date.
        #[arg(long)]
        orders: PathBuf,
        /// Receipts: order_reference, line, delivered_on, quantity, rejected_quantity.
        #[arg(long)]
        deliveries: PathBuf,
        /// Any CSV with material_code and category columns (the price fixture has them).
        #[arg(long)]
        materials: PathBuf,
        /// The first day not in the data (YYYY-MM-DD): lines promised before it are labelled.
        #[arg(long)]
        end: chrono::NaiveDate,
        #[arg(long)]
        output: PathBuf,
    },
    /// Writes a demand model's training frame (CSV): one row per material and as-of day whose weeks ahead
    /// all end before --end, its features computed by the code that answers
    /// `POST /api/v1/analytics/demand-forecast`, and the units per day ordered in each week ahead.
    DemandFrame {
        /// The demand model's features.toml (`kind = "demand"`).
        #[arg(long)]
        spec: PathBuf,
        /// Order lines: material_code, ordered_on, quantity (and optionally status).
        #[arg(long)]
        orders: PathBuf,
        /// The first day not in the data (YYYY-MM-DD).
        #[arg(long)]
        end: chrono::NaiveDate,
        /// One row every this many days per material.
        #[arg(long, default_value_t = 1)]
        every: u32,
        #[arg(long)]
        output: PathBuf,
    },
    /// Writes a model version's reference profile (`profile.json` beside its manifest): each feature's and
    /// each output's quantile bins, counts and moments over the rows of a reference period, which model
    /// monitoring compares live traffic with. Use a period the model did not train on.
    Profile {
        /// The version's folder (model.toml, model.onnx, its feature spec).
        #[arg(long)]
        model: PathBuf,
        /// Price observations, .csv or .parquet.
        #[arg(long)]
        input: PathBuf,
        /// The reference period's first day (YYYY-MM-DD).
        #[arg(long)]
        from: chrono::NaiveDate,
        /// The reference period's last day (YYYY-MM-DD).
        #[arg(long)]
        to: chrono::NaiveDate,
        /// Quantile bins per numeric column at most.
        #[arg(long, default_value_t = mercator_features::profile::DEFAULT_BINS)]
        bins: usize,
        /// Where to write it [default: <model>/profile.json].
        #[arg(long)]
        output: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the model repository over HTTP (Open Inference Protocol, health, metrics).
    Serve(Box<ServeArgs>),
    /// The feature pipeline: `mercator features materialize`, `profile`, `delivery-frame`,
    /// `demand-frame`.
    #[command(subcommand)]
    Features(FeaturesCommand),
}

/// Every flag may also be set in the TOML file given with --config, under the same name with underscores.
#[derive(Debug, Default, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeArgs {
    /// A TOML file with any of the settings below; flags and environment variables win over it.
    #[arg(long, env = "MERCATOR_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8000].
    #[arg(long, env = "MERCATOR_ADDR")]
    pub addr: Option<SocketAddr>,
    /// Where Mercator keeps its data: the SQLite store unless --database-url says otherwise
    /// [default: ./data].
    #[arg(long, env = "MERCATOR_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The model repository: <dir>/<name>/<version>/{model.onnx,model.toml} [default: ./models].
    #[arg(long, env = "MERCATOR_MODELS_DIR")]
    pub models_dir: Option<PathBuf>,
    /// Largest request body accepted, in bytes; larger ones get 413 [default: 8388608].
    #[arg(long, env = "MERCATOR_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// On SIGTERM/SIGINT, how long to finish queued and in-flight requests before exiting, in seconds
    /// [default: 30].
    #[arg(long, env = "MERCATOR_DRAIN_TIMEOUT_SECS")]
    pub drain_timeout_secs: Option<u64>,
    /// libonnxruntime.so to load [default: ORT_DYLIB_PATH, then next to the executable, then .runtime/lib].
    #[arg(long, env = "MERCATOR_ORT_LIB")]
    pub ort_lib: Option<PathBuf>,
    /// The store: `postgres://user@host/db`, or `sqlite://path` [default: sqlite://<data-dir>/mercator.db].
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// The platform admin's API key (at least 24 characters), registered at start if it is not known yet.
    /// Unset on a first start: one is generated and printed once.
    #[arg(long, env = "MERCATOR_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,
    /// How long a verified API key is trusted without asking the store again, in seconds. A key deleted
    /// on another replica is forgotten here through the change feed at once; this bounds it when the feed
    /// cannot be read [default: 30].
    #[arg(long, env = "MERCATOR_KEY_CACHE_SECS")]
    pub key_cache_secs: Option<u64>,
    /// Days until an API key made without `expires_at` stops working [default: 90].
    #[arg(long, env = "MERCATOR_API_KEY_DEFAULT_TTL_DAYS")]
    pub api_key_default_ttl_days: Option<u32>,
    /// Most days from its making an API key may work (a later `expires_at` gets 400) [default: 366].
    #[arg(long, env = "MERCATOR_API_KEY_MAX_TTL_DAYS")]
    pub api_key_max_ttl_days: Option<u32>,
    /// Most rows in one bulk price write [default: 200000].
    #[arg(long, env = "MERCATOR_MAX_BULK_ROWS")]
    pub max_bulk_rows: Option<usize>,
    /// Largest bulk price body, in bytes [default: 67108864].
    #[arg(long, env = "MERCATOR_MAX_BULK_BODY_BYTES")]
    pub max_bulk_body_bytes: Option<usize>,
    /// Largest uploaded model (all parts of the upload), in bytes [default: 536870912].
    #[arg(long, env = "MERCATOR_MAX_MODEL_BYTES")]
    pub max_model_bytes: Option<usize>,
    /// Largest `limit` of a list [default: 1000].
    #[arg(long, env = "MERCATOR_MAX_PAGE_SIZE")]
    pub max_page_size: Option<u32>,
    /// Score every ingested price with the active anomaly model and store the score with it; `false` for
    /// a back-fill that should land at the store's own pace [default: true].
    #[arg(long, env = "MERCATOR_SCORE_ON_INGEST")]
    pub score_on_ingest: Option<bool>,
    /// Prices observed longer ago than this many days are not evaluated by alert rules: loading history
    /// alerts nobody [default: 7].
    #[arg(long, env = "MERCATOR_ALERT_MAX_AGE_DAYS")]
    pub alert_max_age_days: Option<u32>,
    /// Delays before each webhook retry, in milliseconds, comma-separated; after the last, a delivery has
    /// failed [default: 5000,300000,1800000,7200000,18000000,36000000,36000000: 5 s to 10 h, ~27.6 h in all].
    #[arg(long, env = "MERCATOR_WEBHOOK_RETRY_MS", value_delimiter = ',')]
    pub webhook_retry_ms: Option<Vec<u64>>,
    /// A bearer token `/metrics` asks for (`Authorization: Bearer <token>`); unset, `/metrics` is open
    /// [default: unset].
    #[arg(long, env = "MERCATOR_METRICS_KEY", hide_env_values = true)]
    pub metrics_key: Option<String>,
    /// Let webhooks reach loopback, private, link-local and other inside addresses (tests, on-premise
    /// receivers). Off, such URLs are refused at rule creation and never connected to [default: false].
    #[arg(long, env = "MERCATOR_WEBHOOK_ALLOW_PRIVATE")]
    pub webhook_allow_private: Option<bool>,
    /// Load the demo organization on start (materials, suppliers and two years of prices, moved to end
    /// yesterday, with an analyst key in `<data-dir>/demo.key`); loads nothing a second time
    /// [default: false].
    #[arg(long, env = "MERCATOR_DEMO", num_args = 0..=1, default_missing_value = "true")]
    pub demo: Option<bool>,
    /// Origins whose pages may call the API from a browser (CORS), comma-separated:
    /// `https://buyers.example.com,http://localhost:5173` [default: none].
    #[arg(long, env = "MERCATOR_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Option<Vec<String>>,
    /// Most WebSockets one API key may hold open at once; one more gets 429 [default: 16].
    #[arg(long, env = "MERCATOR_MAX_SOCKETS_PER_KEY")]
    pub max_sockets_per_key: Option<usize>,
    /// Most alert rules an organization may have [default: 1000].
    #[arg(long, env = "MERCATOR_MAX_ALERT_RULES")]
    pub max_alert_rules: Option<usize>,
    /// Most channels one alert rule may announce on [default: 10].
    #[arg(long, env = "MERCATOR_MAX_ALERT_CHANNELS")]
    pub max_alert_channels: Option<usize>,
    /// How often forecast rules are evaluated, in seconds [default: 3600].
    #[arg(long, env = "MERCATOR_FORECAST_ALERT_INTERVAL_SECS")]
    pub forecast_alert_interval_secs: Option<u64>,
    /// Most rows POST /api/v1/predictions/batch answers inline; a larger batch becomes a job [default: 10000].
    #[arg(long, env = "MERCATOR_BATCH_INLINE_MAX_ROWS")]
    pub batch_inline_max_rows: Option<usize>,
    /// Most rows in one batch job [default: 10000000].
    #[arg(long, env = "MERCATOR_BATCH_MAX_ROWS")]
    pub batch_max_rows: Option<u64>,
    /// Largest CSV or Parquet batch upload, in bytes [default: 2147483648]. JSON batches are bounded by
    /// --max-bulk-body-bytes.
    #[arg(long, env = "MERCATOR_BATCH_MAX_BODY_BYTES")]
    pub batch_max_body_bytes: Option<usize>,
    /// Rows per chunk of a batch job: what is committed at once, and redone after a crash [default: 16384].
    #[arg(long, env = "MERCATOR_BATCH_CHUNK_ROWS")]
    pub batch_chunk_rows: Option<usize>,
    /// Chunks of batch jobs one replica computes at once, of any job [default: 2].
    #[arg(long, env = "MERCATOR_BATCH_MAX_RUNNING_CHUNKS")]
    pub batch_max_running_chunks: Option<usize>,
    /// How long a replica holds a batch chunk it claimed without renewing the claim (it renews every third
    /// of this while it computes); a replica that dies loses its chunks to the others after this long, in
    /// seconds [default: 30].
    #[arg(long, env = "MERCATOR_BATCH_LEASE_SECS")]
    pub batch_lease_secs: Option<u64>,
    /// Queued and running batch jobs an organization may have [default: 10].
    #[arg(long, env = "MERCATOR_BATCH_MAX_ACTIVE_JOBS")]
    pub batch_max_active_jobs: Option<u64>,
    /// How long an ended batch job's results are kept, in seconds; then its chunks are deleted and its
    /// results answer 410 [default: 604800, 7 days].
    #[arg(long, env = "MERCATOR_BATCH_RETENTION_SECS")]
    pub batch_retention_secs: Option<u64>,
    /// A batch job is refused (507) unless the data directory has this many times its upload free: the
    /// upload, its CSV form and its results [default: 3].
    #[arg(long, env = "MERCATOR_BATCH_DISK_FACTOR")]
    pub batch_disk_factor: Option<f64>,
    /// The key that seals webhook secrets at rest (AES-256-GCM): 64 hex digits; after a comma, older keys
    /// that still open what they sealed (rotation: put the new key first; at start every secret is
    /// resealed with it). Unset: a key generated into `<data-dir>/secret.key` on first start. Replicas
    /// sharing a database must share it.
    #[arg(long, env = "MERCATOR_SECRET_KEY", hide_env_values = true)]
    pub secret_key: Option<String>,
    /// Disk an organization's batch jobs may hold (their uploads times --batch-disk-factor, until their
    /// results expire); a submit beyond it is refused with 429 [default: 21474836480, 20 GiB].
    #[arg(long, env = "MERCATOR_BATCH_MAX_DISK_BYTES_PER_ORG")]
    pub batch_max_disk_bytes_per_org: Option<u64>,
    /// Most rows in one row group of a Parquet batch upload: what is decoded at once [default: 1048576].
    #[arg(long, env = "MERCATOR_BATCH_PARQUET_MAX_GROUP_ROWS")]
    pub batch_parquet_max_group_rows: Option<u64>,
    /// Longest cell of a CSV body (bulk prices, batches), in bytes [default: 65536].
    #[arg(long, env = "MERCATOR_CSV_MAX_FIELD_BYTES")]
    pub csv_max_field_bytes: Option<usize>,
    /// Longest record (line) of a CSV body, in bytes [default: 1048576].
    #[arg(long, env = "MERCATOR_CSV_MAX_RECORD_BYTES")]
    pub csv_max_record_bytes: Option<usize>,
    /// Heavy requests (batch submits, bulk writes, model uploads) the server handles at once; more are
    /// answered 429 with Retry-After [default: 8].
    #[arg(long, env = "MERCATOR_MAX_HEAVY_REQUESTS")]
    pub max_heavy_requests: Option<usize>,
    /// Heavy requests one organization may have at once; more are answered 429 [default: 2].
    #[arg(long, env = "MERCATOR_MAX_HEAVY_REQUESTS_PER_ORG")]
    pub max_heavy_requests_per_org: Option<usize>,
    /// Rate limits of requests without a valid credential, per client address (an IPv6 client by its /64):
    /// CLASS=RATE pairs, comma-separated. Classes: predict, bulk, read, write, admin, login, or `all` for
    /// every class together; rates N/s, N/min, N/h, N/day, or N/<count><unit> (100/10s). Empty: none
    /// [default: all=100/h].
    #[arg(long, env = "MERCATOR_RATE_LIMITS_ANONYMOUS")]
    pub rate_limits_anonymous: Option<String>,
    /// Rate limits of each API key made without its own `rate_limits`, in the same form; empty: none
    /// [default: none].
    #[arg(long, env = "MERCATOR_RATE_LIMITS_KEY")]
    pub rate_limits_key: Option<String>,
    /// Rate limits of each signed-in user, in the same form [default: all=1000/h,predict=60/min,bulk=10/h].
    #[arg(long, env = "MERCATOR_RATE_LIMITS_USER")]
    pub rate_limits_user: Option<String>,
    /// Sign-in attempts per account (whatever the address), in the same form [default: login=10/15min].
    #[arg(long, env = "MERCATOR_RATE_LIMITS_LOGIN")]
    pub rate_limits_login: Option<String>,
    /// The Ed25519 keys that sign access tokens: 64 hex digits each (a seed), comma-separated; the first
    /// signs, all verify (rotation: put a new key first, keep the old one past the access token lifetime).
    /// Unset: a key generated into `<data-dir>/jwt-signing.keys` on first start. Replicas must share them.
    #[arg(long, env = "MERCATOR_JWT_SIGNING_KEYS", hide_env_values = true)]
    pub jwt_signing_keys: Option<String>,
    /// The access tokens' `iss` [default: mercator].
    #[arg(long, env = "MERCATOR_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// The access tokens' `aud` [default: mercator-api].
    #[arg(long, env = "MERCATOR_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Seconds an access token is valid [default: 900].
    #[arg(long, env = "MERCATOR_ACCESS_TOKEN_TTL_SECS")]
    pub access_token_ttl_secs: Option<u64>,
    /// Seconds a refresh token is valid (each refresh makes a new one) [default: 604800].
    #[arg(long, env = "MERCATOR_REFRESH_TOKEN_TTL_SECS")]
    pub refresh_token_ttl_secs: Option<u64>,
    /// Password hashes computed at once (argon2id, 19 MiB and ~40 ms of a core each); more wait
    /// [default: 2].
    #[arg(long, env = "MERCATOR_MAX_PASSWORD_HASHES")]
    pub max_password_hashes: Option<usize>,
    /// Days audit events are kept; older ones are deleted hourly. 0: kept forever [default: 365].
    #[arg(long, env = "MERCATOR_AUDIT_RETENTION_DAYS")]
    pub audit_retention_days: Option<u32>,
    /// Share rate limits between replicas through this Redis, `redis://host:6379/0`; unset, each replica
    /// limits on its own [default: unset].
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// The prefix of every key Mercator writes in Redis [default: mercator].
    #[arg(long, env = "MERCATOR_REDIS_KEY_PREFIX")]
    pub redis_key_prefix: Option<String>,
    /// Milliseconds to wait for Redis; slower (or unreachable), a replica limits in process for a second
    /// before asking again [default: 25].
    #[arg(long, env = "MERCATOR_REDIS_TIMEOUT_MS")]
    pub redis_timeout_ms: Option<u64>,
    /// Milliseconds between two reads of the change feed when no notification came (replicas on one
    /// PostgreSQL apply each other's changes; a notification makes it at once) [default: 2000].
    #[arg(long, env = "MERCATOR_FLEET_POLL_MS")]
    pub fleet_poll_ms: Option<u64>,
    /// Seconds this replica may be behind the change feed, while the store answers, before /readyz
    /// answers 503 (it would serve state the others have changed) [default: 30].
    #[arg(long, env = "MERCATOR_FLEET_MAX_LAG_SECS")]
    pub fleet_max_lag_secs: Option<u64>,
    /// Proxies in front of Mercator that each append the address they saw to X-Forwarded-For: the client
    /// is that many addresses from the right. 0: the connection's peer is the client [default: 0].
    #[arg(long, env = "MERCATOR_TRUSTED_PROXY_HOPS")]
    pub trusted_proxy_hops: Option<usize>,
    /// Open client connections; beyond it new connections wait in the listen backlog [default: 4096].
    #[arg(long, env = "MERCATOR_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Seconds a client has to send a request's headers once it starts (or a new connection its first
    /// byte) before the connection is closed [default: 10].
    #[arg(long, env = "MERCATOR_HEADER_READ_TIMEOUT_SECS")]
    pub header_read_timeout_secs: Option<u64>,
    /// Seconds a request body may stall between two pieces before the request fails with 408
    /// [default: 30].
    #[arg(long, env = "MERCATOR_BODY_READ_TIMEOUT_SECS")]
    pub body_read_timeout_secs: Option<u64>,
    /// Seconds a kept-alive connection may sit idle between requests before it is closed [default: 60].
    #[arg(long, env = "MERCATOR_IDLE_TIMEOUT_SECS")]
    pub idle_timeout_secs: Option<u64>,
    /// Monitor every model version that has a reference profile (`profile.json`): count what it sees and
    /// answers, and judge drift [default: true].
    #[arg(long, env = "MERCATOR_MONITOR")]
    pub monitor: Option<bool>,
    /// Seconds of one bucket of live counts; windows are made of whole buckets [default: 300].
    #[arg(long, env = "MERCATOR_MONITOR_BUCKET_SECS")]
    pub monitor_bucket_secs: Option<u64>,
    /// The windows monitoring reports on, comma-separated (`<n>s|m|h|d`); the first is the default and the
    /// gauges' [default: 1h,1d].
    #[arg(long, env = "MERCATOR_MONITOR_WINDOWS")]
    pub monitor_windows: Option<String>,
    /// Seconds between two writes of this replica's counts to the store (and two refreshes of the drift
    /// gauges) [default: 10].
    #[arg(long, env = "MERCATOR_MONITOR_FLUSH_SECS")]
    pub monitor_flush_secs: Option<u64>,
    /// Batches waiting to be counted at most; beyond it batches are left out of monitoring and counted in
    /// `mercator_monitor_dropped_rows_total` (never left out of the answer) [default: 1024].
    #[arg(long, env = "MERCATOR_MONITOR_CHANNEL_BATCHES")]
    pub monitor_channel_batches: Option<usize>,
    /// Count one batch in N of each monitored version (1: every batch). Drift compares shares, so a
    /// sample is judged alike, but a window reaches --monitor-min-rows N times later [default: 1].
    #[arg(long, env = "MERCATOR_MONITOR_SAMPLE")]
    pub monitor_sample: Option<u64>,
    /// PSI above which a numeric column has drifted [default: 0.25].
    #[arg(long, env = "MERCATOR_MONITOR_PSI_THRESHOLD")]
    pub monitor_psi_threshold: Option<f64>,
    /// Jensen-Shannon divergence (base 2) above which a categorical column has drifted [default: 0.1].
    #[arg(long, env = "MERCATOR_MONITOR_JS_THRESHOLD")]
    pub monitor_js_threshold: Option<f64>,
    /// Rows a window needs before any column is judged [default: 500].
    #[arg(long, env = "MERCATOR_MONITOR_MIN_ROWS")]
    pub monitor_min_rows: Option<u64>,
    /// The share of price predictions logged to be checked against the prices that follow (0 to 1)
    /// [default: 0.05].
    #[arg(long, env = "MERCATOR_MONITOR_LOG_SAMPLE")]
    pub monitor_log_sample: Option<f64>,
    /// Logged predictions waiting to be written at most; beyond it they are dropped and counted in
    /// `mercator_prediction_log_dropped_total` [default: 65536].
    #[arg(long, env = "MERCATOR_MONITOR_LOG_CHANNEL_ROWS")]
    pub monitor_log_channel_rows: Option<usize>,
    /// Days after a prediction's day within which an observed price of the same material and supplier
    /// labels it [default: 7].
    #[arg(long, env = "MERCATOR_MONITOR_LABEL_DAYS")]
    pub monitor_label_days: Option<u32>,
    /// Days logged predictions are kept [default: 90].
    #[arg(long, env = "MERCATOR_MONITOR_LOG_RETENTION_DAYS")]
    pub monitor_log_retention_days: Option<u32>,
    /// Logged predictions one report checks at most (the latest of its window) [default: 200000].
    #[arg(long, env = "MERCATOR_MONITOR_ACCURACY_MAX_ROWS")]
    pub monitor_accuracy_max_rows: Option<usize>,
    /// The deal score's weights, `name=value` comma-separated (any of price, reliability, lead_time,
    /// risk; the rest keep theirs) [default: price=0.5,reliability=0.2,lead_time=0.15,risk=0.15].
    #[arg(long, env = "MERCATOR_DEAL_WEIGHTS")]
    pub deal_weights: Option<String>,
    /// Days late at which a quote's lead-time component of the deal score reaches 0 [default: 14].
    #[arg(long, env = "MERCATOR_DEAL_LATE_DAYS")]
    pub deal_late_days: Option<f64>,
    /// Landed cost: the share of the price added per day a promised date falls after the needed-by date
    /// [default: 0.005].
    #[arg(long, env = "MERCATOR_LANDED_LATE_PER_DAY")]
    pub landed_late_per_day: Option<f64>,
    /// Landed cost: the share of the price added per unit of the chance a line arrives late (the risk
    /// model's p(late), else 1 − the supplier's reliability) [default: 0.1].
    #[arg(long, env = "MERCATOR_LANDED_UNRELIABILITY")]
    pub landed_unreliability: Option<f64>,
}

/// The settings in force.
#[derive(Clone)]
pub struct Config {
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    pub models_dir: PathBuf,
    pub max_body_bytes: usize,
    pub drain_timeout: Duration,
    pub ort_lib: Option<PathBuf>,
    /// None: SQLite under `data_dir`.
    pub database_url: Option<String>,
    pub admin_key: Option<String>,
    pub key_cache: Duration,
    pub api_keys: mercator_services::identity::KeyPolicy,
    pub max_bulk_rows: usize,
    pub max_bulk_body_bytes: usize,
    pub max_page_size: u32,
    pub max_model_bytes: usize,
    pub score_on_ingest: bool,
    pub alert_max_age_days: u32,
    pub webhook_retry_ms: Vec<u64>,
    pub webhook_allow_private: bool,
    pub demo: bool,
    pub cors_origins: Vec<axum::http::HeaderValue>,
    pub metrics_key: Option<String>,
    pub max_sockets_per_key: usize,
    pub max_alert_rules: usize,
    pub max_alert_channels: usize,
    pub forecast_alert_interval: Duration,
    pub batch_inline_max_rows: usize,
    pub batch: mercator_services::jobs::Settings,
    pub max_heavy_requests: usize,
    pub max_heavy_requests_per_org: usize,
    pub connections: crate::connections::Settings,
    pub secret_key: Option<String>,
    /// Rate limits: the plans, Redis, whom to believe about the client's address.
    pub rate_limits: crate::limits::Settings,
    /// Users' sessions: token signing, lifetimes, sign-in limits.
    pub sessions: SessionConfig,
    /// How long audit events are kept; None: forever.
    pub audit_retention: Option<Duration>,
    /// How the change feed is read.
    pub fleet: mercator_services::fleet::Settings,
    /// How long the change feed may go unread before the replica is not ready.
    pub fleet_max_lag: Duration,
    /// The time alerting judges by: the system's (tests move it forward instead of waiting).
    pub clock: std::sync::Arc<mercator_services::clock::Clock>,
    /// Model monitoring; None: off.
    pub monitor: Option<mercator_services::monitor::MonitorConfig>,
    /// Batches waiting to be counted by monitoring at most.
    pub monitor_channel: usize,
    /// One batch in this many of each monitored version is counted.
    pub monitor_sample: u64,
    /// How quotes are scored and offers ranked.
    pub sourcing: mercator_services::sourcing::SourcingConfig,
}

/// How sessions are signed and how long they last.
#[derive(Clone)]
pub struct SessionConfig {
    /// None: `<data-dir>/jwt-signing.keys`, generated on first start.
    pub signing_keys: Option<String>,
    pub issuer: String,
    pub audience: String,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    pub login_limits: mercator_services::limits::Plan,
    pub max_password_hashes: usize,
}

impl std::fmt::Debug for SessionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionConfig")
            .field("signing_keys", &self.signing_keys.as_ref().map(|_| "***"))
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("access_ttl", &self.access_ttl)
            .field("refresh_ttl", &self.refresh_ttl)
            .field("login_limits", &self.login_limits.to_string())
            .field("max_password_hashes", &self.max_password_hashes)
            .finish()
    }
}

impl Config {
    /// The store's URL: the configured one, or the SQLite file under the data directory.
    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("mercator.db").display()))
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            addr: "127.0.0.1:8000".parse().expect("a valid address"),
            data_dir: PathBuf::from("data"),
            models_dir: PathBuf::from("models"),
            max_body_bytes: 8 * 1024 * 1024,
            drain_timeout: Duration::from_secs(30),
            ort_lib: None,
            database_url: None,
            admin_key: None,
            key_cache: Duration::from_secs(30),
            api_keys: mercator_services::identity::KeyPolicy {
                default_ttl: chrono::Duration::days(90),
                max_ttl: chrono::Duration::days(366),
            },
            max_bulk_rows: 200_000,
            max_bulk_body_bytes: 64 * 1024 * 1024,
            max_page_size: 1000,
            max_model_bytes: 512 * 1024 * 1024,
            score_on_ingest: true,
            alert_max_age_days: 7,
            webhook_retry_ms: vec![
                5_000, 300_000, 1_800_000, 7_200_000, 18_000_000, 36_000_000, 36_000_000,
            ],
            webhook_allow_private: false,
            demo: false,
            cors_origins: Vec::new(),
            metrics_key: None,
            max_sockets_per_key: 16,
            max_alert_rules: 1000,
            max_alert_channels: 10,
            forecast_alert_interval: Duration::from_secs(3600),
            batch_inline_max_rows: 10_000,
            batch: mercator_services::jobs::Settings {
                chunk_rows: 16_384,
                max_rows: 10_000_000,
                max_body_bytes: 2 * 1024 * 1024 * 1024,
                max_running: 2,
                lease: Duration::from_secs(30),
                max_active_per_org: 10,
                retention: Duration::from_secs(7 * 24 * 3600),
                disk_factor: 3.0,
                max_disk_bytes_per_org: 20 * 1024 * 1024 * 1024,
                parquet_max_group_rows: 1 << 20,
                csv: mercator_services::input::csv_body::Caps {
                    field_bytes: 64 * 1024,
                    record_bytes: 1024 * 1024,
                },
            },
            max_heavy_requests: 8,
            max_heavy_requests_per_org: 2,
            connections: crate::connections::Settings {
                max: 4096,
                header_read_timeout: Duration::from_secs(10),
                body_read_timeout: Duration::from_secs(30),
                idle_timeout: Duration::from_secs(60),
            },
            secret_key: None,
            rate_limits: crate::limits::Settings {
                anonymous: "all=100/h".parse().expect("a valid plan"),
                key: Default::default(),
                user: "all=1000/h,predict=60/min,bulk=10/h"
                    .parse()
                    .expect("a valid plan"),
                redis: None,
                proxy_hops: 0,
            },
            audit_retention: Some(Duration::from_secs(365 * 24 * 3600)),
            fleet: Default::default(),
            fleet_max_lag: Duration::from_secs(30),
            sessions: SessionConfig {
                signing_keys: None,
                issuer: "mercator".into(),
                audience: "mercator-api".into(),
                access_ttl: Duration::from_secs(900),
                refresh_ttl: Duration::from_secs(7 * 24 * 3600),
                login_limits: "login=10/15min".parse().expect("a valid plan"),
                max_password_hashes: 2,
            },
            clock: Default::default(),
            monitor: Some(Default::default()),
            monitor_channel: 1024,
            monitor_sample: 1,
            sourcing: Default::default(),
        }
    }
}

impl Config {
    /// Flags and environment first, then the file, then defaults.
    pub fn resolve(args: ServeArgs) -> Result<Config, String> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => ServeArgs::default(),
        };
        let d = Config::default();
        let monitor = monitor(&args, &file)?;
        let sourcing = sourcing(&args, &file)?;
        Ok(Config {
            addr: args.addr.or(file.addr).unwrap_or(d.addr),
            data_dir: args.data_dir.or(file.data_dir).unwrap_or(d.data_dir),
            models_dir: args.models_dir.or(file.models_dir).unwrap_or(d.models_dir),
            max_body_bytes: args
                .max_body_bytes
                .or(file.max_body_bytes)
                .unwrap_or(d.max_body_bytes),
            drain_timeout: args
                .drain_timeout_secs
                .or(file.drain_timeout_secs)
                .map(bounded_secs)
                .unwrap_or(d.drain_timeout),
            ort_lib: args.ort_lib.or(file.ort_lib),
            database_url: args.database_url.or(file.database_url),
            admin_key: args.admin_key.or(file.admin_key),
            key_cache: args
                .key_cache_secs
                .or(file.key_cache_secs)
                .map(bounded_secs)
                .unwrap_or(d.key_cache),
            api_keys: mercator_services::identity::KeyPolicy {
                default_ttl: args
                    .api_key_default_ttl_days
                    .or(file.api_key_default_ttl_days)
                    .map_or(d.api_keys.default_ttl, days),
                max_ttl: args
                    .api_key_max_ttl_days
                    .or(file.api_key_max_ttl_days)
                    .map_or(d.api_keys.max_ttl, days),
            },
            max_bulk_rows: args
                .max_bulk_rows
                .or(file.max_bulk_rows)
                .unwrap_or(d.max_bulk_rows),
            max_bulk_body_bytes: args
                .max_bulk_body_bytes
                .or(file.max_bulk_body_bytes)
                .unwrap_or(d.max_bulk_body_bytes),
            max_page_size: args
                .max_page_size
                .or(file.max_page_size)
                .unwrap_or(d.max_page_size),
            max_model_bytes: args
                .max_model_bytes
                .or(file.max_model_bytes)
                .unwrap_or(d.max_model_bytes),
            score_on_ingest: args
                .score_on_ingest
                .or(file.score_on_ingest)
                .unwrap_or(d.score_on_ingest),
            alert_max_age_days: args
                .alert_max_age_days
                .or(file.alert_max_age_days)
                .unwrap_or(d.alert_max_age_days),
            webhook_retry_ms: args
                .webhook_retry_ms
                .or(file.webhook_retry_ms)
                .unwrap_or(d.webhook_retry_ms),
            webhook_allow_private: args
                .webhook_allow_private
                .or(file.webhook_allow_private)
                .unwrap_or(d.webhook_allow_private),
            demo: args.demo.or(file.demo).unwrap_or(d.demo),
            cors_origins: args
                .cors_origins
                .or(file.cors_origins)
                .unwrap_or_default()
                .iter()
                .map(|o| crate::headers::parse_origin(o.trim()))
                .collect::<Result<_, _>>()
                .map_err(|e| format!("--cors-origins: {e}"))?,
            metrics_key: args.metrics_key.or(file.metrics_key),
            max_sockets_per_key: args
                .max_sockets_per_key
                .or(file.max_sockets_per_key)
                .unwrap_or(d.max_sockets_per_key),
            max_alert_rules: args
                .max_alert_rules
                .or(file.max_alert_rules)
                .unwrap_or(d.max_alert_rules),
            max_alert_channels: args
                .max_alert_channels
                .or(file.max_alert_channels)
                .unwrap_or(d.max_alert_channels),
            forecast_alert_interval: args
                .forecast_alert_interval_secs
                .or(file.forecast_alert_interval_secs)
                .map(bounded_secs)
                .unwrap_or(d.forecast_alert_interval),
            batch_inline_max_rows: args
                .batch_inline_max_rows
                .or(file.batch_inline_max_rows)
                .unwrap_or(d.batch_inline_max_rows),
            batch: mercator_services::jobs::Settings {
                chunk_rows: args
                    .batch_chunk_rows
                    .or(file.batch_chunk_rows)
                    .unwrap_or(d.batch.chunk_rows)
                    .max(1),
                max_rows: args
                    .batch_max_rows
                    .or(file.batch_max_rows)
                    .unwrap_or(d.batch.max_rows),
                max_body_bytes: args
                    .batch_max_body_bytes
                    .or(file.batch_max_body_bytes)
                    .unwrap_or(d.batch.max_body_bytes),
                max_running: args
                    .batch_max_running_chunks
                    .or(file.batch_max_running_chunks)
                    .unwrap_or(d.batch.max_running)
                    .max(1),
                lease: args
                    .batch_lease_secs
                    .or(file.batch_lease_secs)
                    .map(|s| bounded_secs(s.max(1)))
                    .unwrap_or(d.batch.lease),
                max_active_per_org: args
                    .batch_max_active_jobs
                    .or(file.batch_max_active_jobs)
                    .unwrap_or(d.batch.max_active_per_org),
                retention: args
                    .batch_retention_secs
                    .or(file.batch_retention_secs)
                    .map(bounded_secs)
                    .unwrap_or(d.batch.retention),
                disk_factor: args
                    .batch_disk_factor
                    .or(file.batch_disk_factor)
                    .unwrap_or(d.batch.disk_factor)
                    .max(0.0),
                max_disk_bytes_per_org: args
                    .batch_max_disk_bytes_per_org
                    .or(file.batch_max_disk_bytes_per_org)
                    .unwrap_or(d.batch.max_disk_bytes_per_org),
                parquet_max_group_rows: args
                    .batch_parquet_max_group_rows
                    .or(file.batch_parquet_max_group_rows)
                    .unwrap_or(d.batch.parquet_max_group_rows)
                    .max(1),
                csv: mercator_services::input::csv_body::Caps {
                    field_bytes: args
                        .csv_max_field_bytes
                        .or(file.csv_max_field_bytes)
                        .unwrap_or(d.batch.csv.field_bytes)
                        .max(1),
                    record_bytes: args
                        .csv_max_record_bytes
                        .or(file.csv_max_record_bytes)
                        .unwrap_or(d.batch.csv.record_bytes)
                        .max(1),
                },
            },
            max_heavy_requests: args
                .max_heavy_requests
                .or(file.max_heavy_requests)
                .unwrap_or(d.max_heavy_requests)
                .clamp(1, MAX_PERMITS),
            max_heavy_requests_per_org: args
                .max_heavy_requests_per_org
                .or(file.max_heavy_requests_per_org)
                .unwrap_or(d.max_heavy_requests_per_org)
                .clamp(1, MAX_PERMITS),
            connections: crate::connections::Settings {
                max: args
                    .max_connections
                    .or(file.max_connections)
                    .unwrap_or(d.connections.max)
                    .clamp(1, MAX_PERMITS),
                header_read_timeout: secs(
                    args.header_read_timeout_secs
                        .or(file.header_read_timeout_secs),
                    d.connections.header_read_timeout,
                ),
                body_read_timeout: secs(
                    args.body_read_timeout_secs.or(file.body_read_timeout_secs),
                    d.connections.body_read_timeout,
                ),
                idle_timeout: secs(
                    args.idle_timeout_secs.or(file.idle_timeout_secs),
                    d.connections.idle_timeout,
                ),
            },
            secret_key: args.secret_key.or(file.secret_key),
            rate_limits: crate::limits::Settings {
                anonymous: plan(
                    "--rate-limits-anonymous",
                    args.rate_limits_anonymous.or(file.rate_limits_anonymous),
                    d.rate_limits.anonymous,
                )?,
                key: plan(
                    "--rate-limits-key",
                    args.rate_limits_key.or(file.rate_limits_key),
                    d.rate_limits.key,
                )?,
                user: plan(
                    "--rate-limits-user",
                    args.rate_limits_user.or(file.rate_limits_user),
                    d.rate_limits.user,
                )?,
                redis: args.redis_url.or(file.redis_url).map(|url| {
                    mercator_services::limits::shared::Settings {
                        url,
                        prefix: args
                            .redis_key_prefix
                            .or(file.redis_key_prefix)
                            .unwrap_or_else(|| "mercator".into()),
                        timeout: Duration::from_millis(
                            args.redis_timeout_ms
                                .or(file.redis_timeout_ms)
                                .unwrap_or(25)
                                .clamp(1, 60_000),
                        ),
                    }
                }),
                proxy_hops: args
                    .trusted_proxy_hops
                    .or(file.trusted_proxy_hops)
                    .unwrap_or(d.rate_limits.proxy_hops),
            },
            audit_retention: match args.audit_retention_days.or(file.audit_retention_days) {
                Some(0) => None,
                Some(days) => Some(Duration::from_secs(u64::from(days.min(36_500)) * 24 * 3600)),
                None => d.audit_retention,
            },
            fleet: mercator_services::fleet::Settings {
                poll: args
                    .fleet_poll_ms
                    .or(file.fleet_poll_ms)
                    .map(|ms| Duration::from_millis(ms.clamp(10, 3_600_000)))
                    .unwrap_or(d.fleet.poll),
                retention: d.fleet.retention,
            },
            fleet_max_lag: args
                .fleet_max_lag_secs
                .or(file.fleet_max_lag_secs)
                .map(|s| Duration::from_secs(s.clamp(1, 86_400)))
                .unwrap_or(d.fleet_max_lag),
            sessions: SessionConfig {
                signing_keys: args.jwt_signing_keys.or(file.jwt_signing_keys),
                issuer: args
                    .jwt_issuer
                    .or(file.jwt_issuer)
                    .unwrap_or(d.sessions.issuer),
                audience: args
                    .jwt_audience
                    .or(file.jwt_audience)
                    .unwrap_or(d.sessions.audience),
                access_ttl: secs(
                    args.access_token_ttl_secs.or(file.access_token_ttl_secs),
                    d.sessions.access_ttl,
                ),
                refresh_ttl: secs(
                    args.refresh_token_ttl_secs.or(file.refresh_token_ttl_secs),
                    d.sessions.refresh_ttl,
                ),
                login_limits: plan(
                    "--rate-limits-login",
                    args.rate_limits_login.or(file.rate_limits_login),
                    d.sessions.login_limits,
                )?,
                max_password_hashes: args
                    .max_password_hashes
                    .or(file.max_password_hashes)
                    .unwrap_or(d.sessions.max_password_hashes)
                    .clamp(1, 64),
            },
            clock: d.clock,
            monitor,
            monitor_channel: args
                .monitor_channel_batches
                .or(file.monitor_channel_batches)
                .unwrap_or(d.monitor_channel)
                .clamp(1, 1 << 20),
            monitor_sample: match args.monitor_sample.or(file.monitor_sample) {
                Some(0) => {
                    return Err("--monitor-sample: 0 is not a sample; 1 counts every batch".into())
                }
                Some(n) => n,
                None => d.monitor_sample,
            },
            sourcing,
        })
    }
}

/// A rate limit plan flag, or its default.
fn plan(
    flag: &str,
    text: Option<String>,
    default: mercator_services::limits::Plan,
) -> Result<mercator_services::limits::Plan, String> {
    match text {
        Some(text) => text.parse().map_err(|e| format!("{flag}: {e}")),
        None => Ok(default),
    }
}

/// A timeout flag in seconds (at least one), or its default.
/// A number of days, at least one and at most ten years.
fn days(n: u32) -> chrono::Duration {
    chrono::Duration::days(i64::from(n.clamp(1, 3650)))
}

fn secs(flag: Option<u64>, default: Duration) -> Duration {
    flag.map_or(default, |s| bounded_secs(s.max(1)))
}

/// The longest any duration flag may be: ten years. Deadlines are instants plus a duration, and a flag of
/// 2^64 - 1 seconds would overflow them; nothing here needs to wait longer.
pub const MAX_SECS: u64 = 10 * 365 * 24 * 3600;

fn bounded_secs(s: u64) -> Duration {
    Duration::from_secs(s.min(MAX_SECS))
}

/// The most connections or concurrent heavy requests a flag may allow: 2^24. Permits are counted by
/// semaphores, whose capacity (and `acquire_many`'s u32) a flag of `usize::MAX` would exceed.
pub const MAX_PERMITS: usize = 1 << 24;

fn read_file(path: &Path) -> Result<ServeArgs, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("--config {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("--config {}: {e}", path.display()))
}

/// Secrets stay out of logs: the admin key is never printed, a database URL's password is hidden.
impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let database = self.database_url().split_once('@').map_or_else(
            || self.database_url(),
            |(credentials, host)| match credentials.rsplit_once(':') {
                Some((user, _)) if !user.ends_with('/') => format!("{user}:***@{host}"),
                _ => format!("{credentials}@{host}"),
            },
        );
        f.debug_struct("Config")
            .field("addr", &self.addr)
            .field("data_dir", &self.data_dir)
            .field("models_dir", &self.models_dir)
            .field("database", &database)
            .field("admin_key", &self.admin_key.as_ref().map(|_| "***"))
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_bulk_rows", &self.max_bulk_rows)
            .field("max_bulk_body_bytes", &self.max_bulk_body_bytes)
            .field("max_page_size", &self.max_page_size)
            .field("max_model_bytes", &self.max_model_bytes)
            .field("score_on_ingest", &self.score_on_ingest)
            .field("alert_max_age_days", &self.alert_max_age_days)
            .field("webhook_retry_ms", &self.webhook_retry_ms)
            .field("webhook_allow_private", &self.webhook_allow_private)
            .field("demo", &self.demo)
            .field("cors_origins", &self.cors_origins)
            .field("metrics_key", &self.metrics_key.as_ref().map(|_| "***"))
            .field("secret_key", &self.secret_key.as_ref().map(|_| "***"))
            .field("max_sockets_per_key", &self.max_sockets_per_key)
            .field("max_alert_rules", &self.max_alert_rules)
            .field("max_alert_channels", &self.max_alert_channels)
            .field("forecast_alert_interval", &self.forecast_alert_interval)
            .field("batch_inline_max_rows", &self.batch_inline_max_rows)
            .field("batch", &self.batch)
            .field("max_heavy_requests", &self.max_heavy_requests)
            .field(
                "max_heavy_requests_per_org",
                &self.max_heavy_requests_per_org,
            )
            .field("connections", &self.connections)
            .field("rate_limits", &self.rate_limits)
            .field("sessions", &self.sessions)
            .field("audit_retention", &self.audit_retention)
            .field("fleet", &self.fleet)
            .field("fleet_max_lag", &self.fleet_max_lag)
            .field("key_cache", &self.key_cache)
            .field("api_keys", &self.api_keys)
            .field("drain_timeout", &self.drain_timeout)
            .field("ort_lib", &self.ort_lib)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_at_their_type_maximum_are_bounded_so_nothing_overflows() {
        let config = Config::resolve(ServeArgs {
            max_connections: Some(usize::MAX),
            max_heavy_requests: Some(usize::MAX),
            max_heavy_requests_per_org: Some(usize::MAX),
            drain_timeout_secs: Some(u64::MAX),
            key_cache_secs: Some(u64::MAX),
            forecast_alert_interval_secs: Some(u64::MAX),
            batch_retention_secs: Some(u64::MAX),
            header_read_timeout_secs: Some(u64::MAX),
            body_read_timeout_secs: Some(u64::MAX),
            idle_timeout_secs: Some(u64::MAX),
            ..ServeArgs::default()
        })
        .unwrap();
        for permits in [
            config.connections.max,
            config.max_heavy_requests,
            config.max_heavy_requests_per_org,
        ] {
            assert_eq!(permits, MAX_PERMITS);
            // What the listener and admission do with them.
            let slots = tokio::sync::Semaphore::new(permits);
            assert!(slots.try_acquire_many(permits as u32).is_ok());
        }
        for duration in [
            config.drain_timeout,
            config.key_cache,
            config.forecast_alert_interval,
            config.batch.retention,
            config.connections.header_read_timeout,
            config.connections.body_read_timeout,
            config.connections.idle_timeout,
        ] {
            assert_eq!(duration, Duration::from_secs(MAX_SECS));
            let _ = std::time::Instant::now() + duration;
            let _ = std::time::SystemTime::now() - duration;
        }
        let config = Config::resolve(ServeArgs {
            max_connections: Some(0),
            idle_timeout_secs: Some(0),
            ..ServeArgs::default()
        })
        .unwrap();
        assert_eq!(config.connections.max, 1);
        assert_eq!(config.connections.idle_timeout, Duration::from_secs(1));
    }

    #[test]
    fn a_monitor_sample_of_zero_is_refused_and_any_other_is_taken() {
        let err = Config::resolve(ServeArgs {
            monitor_sample: Some(0),
            ..ServeArgs::default()
        })
        .err()
        .unwrap();
        assert!(err.contains("--monitor-sample"), "{err}");
        for n in [1, 10, u64::MAX] {
            let config = Config::resolve(ServeArgs {
                monitor_sample: Some(n),
                ..ServeArgs::default()
            })
            .unwrap();
            assert_eq!(config.monitor_sample, n);
        }
        assert_eq!(
            Config::resolve(ServeArgs::default())
                .unwrap()
                .monitor_sample,
            1
        );
    }
}
