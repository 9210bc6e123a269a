//! Mercator's HTTP server: it translates HTTP into calls on the domain's services (`mercator_services`) and
//! the engine, and back, and decides nothing itself.
//!
//! - `v2/`: the Open Inference Protocol (KServe V2) with Triton's extensions.
//! - `api/`: the REST API under `/api/v1` (organizations, keys, materials, suppliers, prices), the
//!   `/ws/prices` stream, and the OpenAPI document.
//! - `auth.rs`: API keys, roles, the organization a request is scoped to.
//! - `limits.rs`: rate limits at the door (the domain's limiter), as headers and 429s.
//! - `health.rs`: `/healthz`, `/readyz`.  `metrics.rs`: `/metrics` and HTTP metrics.
//! - `jobs/`: batch prediction jobs: input on disk, the runner, chunked results.
//! - `config.rs`: flags, environment, TOML file.  `error.rs`: the one error format.

pub mod admission;
pub mod api;
pub mod auth;
pub mod background;
pub mod body_timeout;
pub mod config;
pub mod connections;
pub mod error;
pub mod headers;
mod health;
pub mod limits;
pub mod metrics;
#[cfg(test)]
mod properties;
pub mod request_id;
pub mod v2;

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::{Method, Uri};
use axum::routing::get;
use axum::Router;
use mercator_engine::{import, Repository, Runtime};
use mercator_services::alerts::{self, Alerts};
use mercator_services::catalog::Catalog;
use mercator_services::events::relay::Relay;
use mercator_services::events::{Fanout, Notification, PriceEvent};
use mercator_services::fleet::{Follower, Projections};
use mercator_services::ingest::Ingest;
use mercator_services::jobs::{self, Jobs};
use mercator_services::monitor::Monitor;
use mercator_services::predict::Predictions;
use mercator_services::registry::Registry;
use mercator_services::shadow::Shadows;
use mercator_store::{Store, VersionState};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use auth::Keys;
pub use config::Config;
use error::ApiError;

/// Every size limit, each set by the flag of the same name.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_bulk_rows: usize,
    pub max_bulk_body_bytes: usize,
    pub max_page_size: u32,
    pub max_model_bytes: usize,
    pub max_sockets_per_key: usize,
    /// Between two pieces of a request body (--body-read-timeout-secs).
    pub body_read_timeout: std::time::Duration,
    /// Length caps on CSV bodies.
    pub csv: mercator_services::input::csv_body::Caps,
}

/// What every handler can reach: one `Arc`, so that handing it to a handler is one atomic increment
/// (perf showed the clones and drops of a many-field state at ~1.5% of the inference path).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub struct Shared {
    pub repository: Arc<Repository>,
    /// Model monitoring, unless `--monitor false`.
    pub monitor: Option<Arc<Monitor>>,
    /// Heavy requests in progress, by organization (--max-heavy-requests, --max-heavy-requests-per-org).
    pub heavy: Arc<admission::Heavy>,
    pub prometheus: PrometheusHandle,
    pub limits: Limits,
    /// Origins allowed to call from a browser (--cors-origins).
    pub cors_origins: Vec<axum::http::HeaderValue>,
    pub store: Store,
    pub keys: Arc<Keys>,
    /// Rate limits by key or client address and route class.
    pub rate_limits: limits::RateLimits,
    /// Users' sign-ins, refreshes and access tokens.
    pub sessions: Arc<mercator_services::identity::sessions::Sessions>,
    /// Failed authentications, summarised into the audit log each minute.
    pub failed_auth: Arc<api::audit::Failures>,
    /// Users made and changed by their organization's admins.
    pub users: Arc<mercator_services::identity::users::Users>,
    /// API keys made under the policy (scopes, an end).
    pub api_keys: Arc<mercator_services::identity::ApiKeys>,
    /// Price observations as they are written, for `/ws/prices`.
    pub prices: Arc<Fanout<PriceEvent>>,
    /// Shadow traffic's figures.
    pub shadows: Arc<Shadows>,
    /// Notifications, for `/ws/notifications`.
    pub notifications: Arc<Fanout<Notification>>,
    /// Open WebSockets by key (--max-sockets-per-key).
    pub sockets: Arc<api::stream::Sockets>,
    /// Business predictions and the price history they read.
    pub predictions: Arc<Predictions>,
    /// Alert rules by scope, judged on ingest and on a schedule; their events announced.
    pub alerts: Arc<Alerts>,
    /// The SHA-256 of the token `/metrics` asks for (--metrics-key), if any.
    pub metrics_key: Option<[u8; 32]>,
    /// Price observations written, folded into the history, scored, judged and announced.
    pub ingest: Arc<Ingest>,
    /// RFQs, quotes benchmarked as they arrive, comparison and award.
    pub sourcing: Arc<mercator_services::sourcing::Sourcing>,
    /// Inventory policies.
    pub supply: Arc<mercator_services::supply::Supply>,
    /// Batch prediction jobs: their runner, progress and limits.
    pub jobs: Arc<Jobs>,
    /// The model registry: uploads, activation, traffic, load and unload, kept in the store.
    pub registry: Arc<Registry>,
    /// Materials and suppliers, the prediction caches kept in step.
    pub catalog: Arc<Catalog>,
    /// Events to and from the other replicas' listeners, through Redis (--redis-url).
    pub relay: Option<Arc<Relay>>,
    /// Other replicas' changes, applied here from the store's change feed.
    pub fleet: Arc<Follower>,
    /// How long the feed may go unread before /readyz answers 503 (--fleet-max-lag-secs).
    pub fleet_max_lag: std::time::Duration,
    draining: Arc<AtomicBool>,
}

impl AppState {
    /// Whether the server is shutting down.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn check_ready(&self) -> Result<(), ApiError> {
        if self.draining.load(Ordering::Acquire) {
            return Err(ApiError::Draining);
        }
        if !self.jobs.prep_is_whole() {
            return Err(ApiError::PoolBroken("batch preparing"));
        }
        if let Some(model) = self.repository.all().into_iter().find(|m| !m.is_ready()) {
            let model = model.manifest().name.clone();
            return Err(mercator_engine::EngineError::NotReady { model }.into());
        }
        Ok(())
    }
}

/// A loaded, ready-to-serve application: the models are loaded and warmed up.
pub struct App {
    pub state: AppState,
    pub config: Config,
    /// The demo organization, when `--demo` loaded it.
    pub demo: Option<mercator_services::demo::Loaded>,
}

impl App {
    /// Installs the metrics recorder, opens the store (migrating it, and on a first start creating the
    /// platform organization and its admin key), loads ONNX Runtime and every model in the repository.
    pub async fn load(config: Config) -> Result<App, String> {
        let prometheus = metrics::recorder();
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| format!("--data-dir {}: {e}", config.data_dir.display()))?;
        let store = Store::connect(&config.database_url()).await.map_err(|e| {
            format!(
                "the store ({}): {e}",
                config
                    .database_url()
                    .split('@')
                    .next_back()
                    .unwrap_or_default()
            )
        })?;
        let store = store.with_sealer(secret_key(&config)?);
        match store.reseal_secrets().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(n, "stored secrets resealed with the current secret key"),
            Err(e) => return Err(format!("resealing stored secrets: {e}")),
        }
        tracing::info!(backend = store.backend(), "store open");
        // Changes after this one are applied from the feed: read before anything is loaded, so a change
        // made during the load is applied again (idempotently) rather than missed.
        let feed_start = store.last_change().await.map_err(|e| e.to_string())?;
        auth::bootstrap(&store, config.admin_key.as_deref()).await?;
        // The registry says which versions are retired (never imported again) and which are unloaded.
        let records = store
            .model_versions(None)
            .await
            .map_err(|e| e.to_string())?;
        let retired: HashSet<(String, u64)> = records
            .iter()
            .filter(|r| r.state == VersionState::Retired)
            .map(|r| (r.name.clone(), r.version))
            .collect();
        let unloaded: HashSet<(String, u64)> = records
            .iter()
            .filter(|r| !r.loaded)
            .map(|r| (r.name.clone(), r.version))
            .collect();
        let (ort_lib, source, data) = (
            config.ort_lib.clone(),
            config.models_dir.clone(),
            config.data_dir.clone(),
        );
        // Versions with a reference profile copy their batches here, for monitoring to count.
        let (tap, counted) = match config.monitor {
            Some(_) => {
                let (tap, rx) =
                    mercator_engine::Tap::channel(config.monitor_channel, config.monitor_sample);
                (Some(tap.clone()), Some((tap, rx)))
            }
            None => (None, None),
        };
        let repository = tokio::task::spawn_blocking(move || {
            let runtime = Runtime::load(ort_lib.as_deref()).map_err(|e| e.to_string())?;
            tracing::info!(library = %runtime.library.display(), "ONNX Runtime loaded");
            // Versions in --models-dir not yet in the data directory are imported, then served from there.
            let retired = |name: &str, v: u64| retired.contains(&(name.to_string(), v));
            let imported =
                import::import(&source, &data, None, &retired).map_err(|e| e.to_string())?;
            if !imported.is_empty() {
                tracing::info!(?imported, from = %source.display(), "model versions imported");
            }
            let unloaded = |name: &str, v: u64| unloaded.contains(&(name.to_string(), v));
            let repository =
                Repository::load_except(&runtime, &import::served_dir(&data), &unloaded, tap)
                    .map_err(|e| e.to_string())?;
            Ok::<_, String>((repository, imported))
        })
        .await
        .map_err(|e| e.to_string())??;
        let (repository, imported) = repository;
        mercator_services::registry::record_imports(&store, &config.data_dir, &imported).await;
        // Serve each model's version as it was left (activations survive restarts).
        for (name, policy) in store.model_policies().await.map_err(|e| e.to_string())? {
            if let Err(e) = repository.activate(&name, policy.active_version) {
                tracing::warn!(model = %name, version = policy.active_version, error = %e,
                    "the recorded active version is not in the repository; serving the newest");
            }
            if let Some(traffic) = store
                .model_traffic(&name)
                .await
                .map_err(|e| e.to_string())?
            {
                if let Err(e) = repository.set_traffic(&name, traffic.split, traffic.shadow) {
                    tracing::warn!(model = %name, error = %e, "the recorded traffic policy cannot apply");
                }
            }
        }
        let webhooks = Arc::new(alerts::webhook::Webhooks::new(
            config
                .webhook_retry_ms
                .iter()
                .map(|ms| std::time::Duration::from_millis(*ms))
                .collect(),
            alerts::egress::Egress {
                allow_private: config.webhook_allow_private,
            },
        ));
        {
            let (webhooks, store) = (webhooks.clone(), store.clone());
            background::supervise("webhook_dispatcher", move || {
                webhooks.clone().run(store.clone())
            });
        }
        let repository = Arc::new(repository);
        let shadows = Arc::new(Shadows::default());
        let predictions = Arc::new(Predictions::new(
            repository.clone(),
            store.clone(),
            config.data_dir.clone(),
            shadows.clone(),
            config.max_bulk_rows,
        ));
        let monitor = match (&config.monitor, counted) {
            (Some(settings), Some((tap, rx))) => {
                let monitor = Arc::new(Monitor::new(
                    store.clone(),
                    repository.clone(),
                    config.clock.clone(),
                    import::served_dir(&config.data_dir),
                    settings.clone(),
                    tap,
                    predictions.clone(),
                ));
                predictions.log_to(monitor.prediction_log());
                tokio::spawn(monitor.clone().write_log());
                monitor
                    .count(rx)
                    .map_err(|e| format!("cannot start the monitor thread: {e}"))?;
                let m = monitor.clone();
                background::supervise("monitor", move || m.clone().run());
                Some(monitor)
            }
            _ => None,
        };
        let started = std::time::Instant::now();
        let (prices, history_at) = predictions.rebuild().await?;
        tracing::info!(
            prices,
            history_at,
            seconds = started.elapsed().as_secs_f64(),
            "price history rebuilt"
        );
        let notifications = Arc::new(Fanout::default());
        let alerts = Arc::new(Alerts::new(
            config.alert_max_age_days,
            store.clone(),
            predictions.clone(),
            notifications.clone(),
            webhooks,
            mercator_services::alerts::RuleLimits {
                max_rules: config.max_alert_rules,
                max_channels: config.max_alert_channels,
            },
            config.clock.clone(),
        ));
        if let Some(monitor) = &monitor {
            let windows = monitor.config().windows.iter().map(|w| w.name.clone());
            alerts.watch_models(windows.collect());
            monitor.alert_through(alerts.clone());
        }
        let rules = alerts.load().await?;
        tracing::info!(rules, "alert rules indexed");
        let price_events = Arc::new(Fanout::default());
        // With Redis, every replica's events reach every replica's WebSocket listeners.
        let relay = match &config.rate_limits.redis {
            Some(redis) => {
                let relay = Relay::start(&redis.url, &redis.prefix, store.replica())?;
                price_events.relay_through(&relay, "px");
                notifications.relay_through(&relay, "ntf");
                Some(relay)
            }
            None => None,
        };
        let ingest = Arc::new(Ingest::new(
            store.clone(),
            predictions.clone(),
            alerts.clone(),
            price_events.clone(),
            config.score_on_ingest,
        ));
        let sourcing = Arc::new(mercator_services::sourcing::Sourcing::new(
            store.clone(),
            predictions.clone(),
            ingest.clone(),
            notifications.clone(),
            alerts.clone(),
            config.clock.clone(),
            config.sourcing,
        ));
        let draining = Arc::new(AtomicBool::new(false));
        let jobs = Arc::new(
            Jobs::open(
                &config.data_dir,
                config.batch,
                jobs::Inline {
                    max_rows: config.batch_inline_max_rows,
                    max_bytes: config.max_bulk_body_bytes,
                },
                jobs::Deps {
                    store: store.clone(),
                    repository: repository.clone(),
                    predictions: predictions.clone(),
                    draining: draining.clone(),
                },
            )
            .map_err(|e| format!("--data-dir {}/batches: {e}", config.data_dir.display()))?,
        );
        let registry = Arc::new(Registry::new(
            repository.clone(),
            store.clone(),
            config.data_dir.clone(),
            config.models_dir.clone(),
            shadows.clone(),
            notifications.clone(),
        ));
        let catalog = Arc::new(Catalog::new(store.clone(), predictions.clone()));
        let keys = Arc::new(Keys::new(
            store.clone(),
            config.key_cache,
            config.clock.clone(),
        ));
        {
            let keys = keys.clone();
            background::supervise("key_usage", move || {
                keys.clone().write_usage(auth::USAGE_EVERY)
            });
        }
        let rate_limits = limits::RateLimits::new(&config.rate_limits, config.clock.clone())?;
        {
            let limiter = rate_limits.limiter.clone();
            background::supervise("rate_limit_sweep", move || {
                limiter
                    .clone()
                    .sweep_every(std::time::Duration::from_secs(60))
            });
        }
        let (sessions, users) = identity(&config, &store, &rate_limits)?;
        let fleet = Arc::new(Follower::new(
            store.clone(),
            Projections {
                registry: registry.clone(),
                alerts: alerts.clone(),
                predictions: predictions.clone(),
                sessions: sessions.clone(),
                forget_key: {
                    let keys = keys.clone();
                    Box::new(move |id| match id {
                        Some(id) => keys.evict(id),
                        None => keys.evict_all(),
                    })
                },
            },
            config.fleet,
            feed_start,
            history_at,
        ));
        let state = AppState(Arc::new(Shared {
            relay,
            fleet: fleet.clone(),
            fleet_max_lag: config.fleet_max_lag,
            sessions,
            users,
            failed_auth: Arc::default(),
            rate_limits,
            catalog,
            registry,
            jobs: jobs.clone(),
            predictions: predictions.clone(),
            ingest,
            sourcing,
            supply: Arc::new(mercator_services::supply::Supply::new(
                store.clone(),
                config.clock.clone(),
                predictions.clone(),
            )),
            metrics_key: config.metrics_key.as_deref().map(|k| {
                use sha2::Digest;
                sha2::Sha256::digest(k.as_bytes()).into()
            }),
            alerts,
            repository,
            monitor,
            heavy: admission::Heavy::new(
                config.max_heavy_requests,
                config.max_heavy_requests_per_org,
            ),
            prometheus,
            limits: Limits {
                max_body_bytes: config.max_body_bytes,
                max_bulk_rows: config.max_bulk_rows,
                max_bulk_body_bytes: config.max_bulk_body_bytes,
                max_page_size: config.max_page_size,
                max_model_bytes: config.max_model_bytes,
                max_sockets_per_key: config.max_sockets_per_key,
                body_read_timeout: config.connections.body_read_timeout,
                csv: config.batch.csv,
            },
            cors_origins: config.cors_origins.clone(),
            keys: keys.clone(),
            api_keys: Arc::new(mercator_services::identity::ApiKeys::new(
                store.clone(),
                config.api_keys,
                config.clock.clone(),
            )),
            store,
            prices: price_events,
            notifications,
            sockets: Arc::default(),
            shadows,
            draining,
        }));
        {
            let (alerts, every) = (state.alerts.clone(), config.forecast_alert_interval);
            background::supervise("forecast_schedule", move || {
                alerts.clone().run_schedule(every)
            });
            let summaries = state.clone();
            background::supervise("failed_auth_summaries", move || {
                api::audit::Failures::flush_every(
                    summaries.clone(),
                    std::time::Duration::from_secs(60),
                )
            });
            if let Some(keep) = config.audit_retention {
                let store = state.store.clone();
                background::supervise("audit_retention", move || {
                    api::audit::retain(store.clone(), keep)
                });
            }
            background::supervise("change_feed", move || fleet.clone().run());
            let janitor = jobs.clone();
            background::supervise("batch_janitor", move || janitor.clone().sweep());
            background::supervise("batch_runner", move || jobs.clone().run());
        }
        let demo = match config.demo {
            true => Some(load_demo(&state, &config).await?),
            false => None,
        };
        Ok(App {
            state,
            config,
            demo,
        })
    }

    pub fn router(&self) -> Router {
        router(self.state.clone())
    }

    /// Serves until `shutdown` resolves, then drains: readiness goes to 503, the listener closes, requests in
    /// flight and queued finish (bounded by the drain timeout), and the model workers stop.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let state = self.state.clone();
        let drain_timeout = self.config.drain_timeout;
        let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
        let draining = state.draining.clone();
        let repository = state.repository.clone();
        let signal = async move {
            shutdown.await;
            draining.store(true, Ordering::Release);
            // Queued requests run now; the HTTP server then waits for their handlers to answer.
            repository.close();
            tracing::info!(timeout = ?drain_timeout, "shutting down: draining requests");
            let _ = stopped_tx.send(());
        };
        let server = connections::serve(listener, self.router(), self.config.connections, signal);
        tokio::select! {
            () = server => {}
            _ = async { let _ = stopped_rx.await; tokio::time::sleep(drain_timeout).await } => {
                tracing::warn!("drain timeout reached with connections still open");
            }
        }
        let repository = state.repository.clone();
        let drained = tokio::task::spawn_blocking(move || repository.drain(drain_timeout))
            .await
            .unwrap_or(false);
        if !drained {
            tracing::warn!("model workers did not finish within the drain timeout");
        }
        state.store.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// The demo organization, through the same services the API writes with.
async fn load_demo(
    state: &AppState,
    config: &Config,
) -> Result<mercator_services::demo::Loaded, String> {
    let started = std::time::Instant::now();
    let loaded = mercator_services::demo::load(
        &state.store,
        &state.catalog,
        &state.ingest,
        &config.data_dir,
        config.clock.now().date_naive(),
    )
    .await
    .map_err(|e| format!("--demo: {e}"))?;
    tracing::info!(organization = %loaded.organization_id, prices_loaded = loaded.prices_loaded,
        last_day = %loaded.last_day, seconds = started.elapsed().as_secs_f64(), "demo organization ready");
    Ok(loaded)
}

/// Sessions (their signing keys: `--jwt-signing-keys`, else `<data-dir>/jwt-signing.keys`, made on first
/// start) and users.
#[allow(clippy::type_complexity)]
fn identity(
    config: &Config,
    store: &Store,
    limits: &limits::RateLimits,
) -> Result<
    (
        Arc<mercator_services::identity::sessions::Sessions>,
        Arc<mercator_services::identity::users::Users>,
    ),
    String,
> {
    use mercator_services::identity::{passwords, sessions, users};
    let text = match &config.sessions.signing_keys {
        Some(keys) => keys.clone(),
        None => {
            let path = config.data_dir.join("jwt-signing.keys");
            match std::fs::read_to_string(&path) {
                Ok(keys) => keys,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let key = sessions::SigningKeys::generate();
                    write_private(&path, &key).map_err(|e| format!("{}: {e}", path.display()))?;
                    if config.database_url.is_some() {
                        tracing::warn!(
                            "a token signing key was generated into {}; replicas sharing this database \
                             must share it: set MERCATOR_JWT_SIGNING_KEYS",
                            path.display()
                        );
                    }
                    key
                }
                Err(e) => return Err(format!("{}: {e}", path.display())),
            }
        }
    };
    let keys = sessions::SigningKeys::parse(&text)
        .map_err(|e| format!("MERCATOR_JWT_SIGNING_KEYS: {e}"))?;
    let hasher = passwords::Hasher::new(config.sessions.max_password_hashes);
    let c = &config.sessions;
    let sessions = Arc::new(sessions::Sessions::new(
        store.clone(),
        hasher.clone(),
        sessions::Settings {
            issuer: c.issuer.clone(),
            audience: c.audience.clone(),
            access_ttl: c.access_ttl,
            refresh_ttl: c.refresh_ttl,
            standing_ttl: config.key_cache,
            keys: Arc::new(keys),
            login_limits: c.login_limits.clone(),
        },
        config.clock.clone(),
        limits.limiter.clone(),
    ));
    let users = Arc::new(users::Users::new(store.clone(), hasher, sessions.clone()));
    Ok((sessions, users))
}

/// The key that seals secrets at rest: `--secret-key`, else the one in `<data-dir>/secret.key` (made on
/// first start, readable by its owner only).
fn secret_key(config: &Config) -> Result<mercator_store::secrets::Sealer, String> {
    use mercator_store::secrets::Sealer;
    let text = match &config.secret_key {
        Some(keys) => keys.clone(),
        None => {
            let path = config.data_dir.join("secret.key");
            match std::fs::read_to_string(&path) {
                Ok(key) => key,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let key = Sealer::generate_key();
                    write_private(&path, &key).map_err(|e| format!("{}: {e}", path.display()))?;
                    if config.database_url.is_some() {
                        tracing::warn!(
                            "a secret key was generated into {}; replicas sharing this database must \
                             share it: set MERCATOR_SECRET_KEY",
                            path.display()
                        );
                    }
                    key
                }
                Err(e) => return Err(format!("{}: {e}", path.display())),
            }
        }
    };
    let keys = Sealer::parse_keys(&text).map_err(|e| format!("MERCATOR_SECRET_KEY: {e}"))?;
    Sealer::new(&keys).map_err(|e| format!("MERCATOR_SECRET_KEY: {e}"))
}

/// Writes a file only its owner may read.
fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(text.as_bytes())
}

pub fn router(state: AppState) -> Router {
    let max_body = state.limits.max_body_bytes;
    let state_timeout = state.limits.body_read_timeout;
    let cors_origins = state.cors_origins.clone();
    let routes = Router::new()
        .merge(v2::routes())
        .merge(api::openapi::router())
        .merge(health::routes())
        .route("/metrics", get(metrics::render))
        .fallback(|uri: Uri| async move {
            ApiError::RouteNotFound(uri.path().to_string()).for_path(uri.path())
        })
        .method_not_allowed_fallback(|method: Method, uri: Uri| async move {
            ApiError::MethodNotAllowed(method.to_string()).for_path(uri.path())
        })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limits::enforce,
        ))
        .with_state(state);
    headers::layer(layers(routes, max_body, state_timeout), &cors_origins)
}

/// What every route runs inside, innermost first: a panic becomes the 500 envelope (and is counted), HTTP
/// metrics, the body limit, the body read timeout (a body that stalls longer between two pieces fails its
/// reader), the request id, the error renderer.
pub fn layers(
    routes: Router,
    max_body_bytes: usize,
    body_read_timeout: std::time::Duration,
) -> Router {
    routes
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            error::panicked,
        ))
        .layer(axum::middleware::from_fn(request_id::span))
        .layer(axum::middleware::from_fn(metrics::track))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(body_timeout::layer(body_read_timeout))
        .layer(request_id::propagate())
        .layer(tower::util::MapResponseLayer::new(error::render))
        .layer(request_id::set())
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    /// A handler that panics answers the 500 envelope with a request id, and the server counts it.
    #[tokio::test]
    async fn a_panicking_handler_answers_the_500_envelope() {
        let routes = axum::Router::new().route(
            "/boom",
            axum::routing::get(|| async {
                if std::hint::black_box(true) {
                    panic!("a bug");
                }
                "never"
            }),
        );
        let response = super::layers(routes, 1024, std::time::Duration::from_secs(1))
            .oneshot(Request::get("/boom").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), 500);
        assert!(response.headers().contains_key("x-request-id"));
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["code"], "internal", "{body}");
        assert!(
            !body["error"]["message"].as_str().unwrap().contains("a bug"),
            "the panic's detail goes to the log, not the client: {body}"
        );
    }
}
