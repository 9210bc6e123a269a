//! Mercator's HTTP server: it translates HTTP into engine calls and back, and decides nothing itself.
//!
//! - `v2/`: the Open Inference Protocol (KServe V2) with Triton's extensions.
//! - `api/`: the REST API under `/api/v1` (organizations, keys, materials, suppliers, prices), the
//!   `/ws/prices` stream, and the OpenAPI document.
//! - `auth.rs`: API keys, roles, the organization a request is scoped to.
//! - `health.rs`: `/healthz`, `/readyz`.  `metrics.rs`: `/metrics` and HTTP metrics.
//! - `jobs/`: batch prediction jobs: input on disk, the runner, chunked results.
//! - `config.rs`: flags, environment, TOML file.  `error.rs`: the one error format.

pub mod alerts;
pub mod api;
pub mod auth;
pub mod background;
pub mod config;
pub mod error;
mod health;
pub mod jobs;
pub mod metrics;
pub mod predict;
pub mod request_id;
pub mod shadow;
pub mod v2;

use std::collections::HashSet;
use std::future::{Future, IntoFuture};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::{Method, Uri};
use axum::routing::get;
use axum::Router;
use mercator_engine::{import, Repository, Runtime};
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
    pub batch_inline_max_rows: usize,
    pub max_alert_rules: usize,
    pub max_alert_channels: usize,
    pub max_sockets_per_key: usize,
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
    pub prometheus: PrometheusHandle,
    pub limits: Limits,
    pub store: Store,
    pub keys: Arc<Keys>,
    /// Price observations as they are written, for `/ws/prices`.
    pub prices: api::stream::Fanout<api::stream::PriceEvent>,
    /// Where models are imported from (--models-dir) and the data directory that serves them.
    pub models_source: std::path::PathBuf,
    pub data_dir: std::path::PathBuf,
    /// Shadow traffic's figures.
    pub shadows: Arc<shadow::Shadows>,
    /// Notifications, for `/ws/notifications`.
    pub notifications: api::stream::Fanout<api::stream::Notification>,
    /// Open WebSockets by key (--max-sockets-per-key).
    pub sockets: Arc<api::stream::Sockets>,
    /// Business predictions and the price history they read.
    pub predictor: Arc<predict::Predictor>,
    /// Alert rules by scope, evaluated on ingest.
    pub alerting: Arc<alerts::Alerting>,
    /// The webhook dispatcher's settings and wake-up call.
    pub webhooks: Arc<alerts::webhook::Webhooks>,
    /// The SHA-256 of the token `/metrics` asks for (--metrics-key), if any.
    pub metrics_key: Option<[u8; 32]>,
    /// Whether ingested prices are scored by the anomaly model (--score-on-ingest).
    pub score_on_ingest: bool,
    /// Batch prediction jobs: their runner, progress and limits.
    pub jobs: Arc<jobs::Jobs>,
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
        tracing::info!(backend = store.backend(), "store open");
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
                Repository::load_except(&runtime, &import::served_dir(&data), &unloaded)
                    .map_err(|e| e.to_string())?;
            Ok::<_, String>((repository, imported))
        })
        .await
        .map_err(|e| e.to_string())??;
        let (repository, imported) = repository;
        api::models::record_imports(&store, &config.data_dir, &imported).await;
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
        let alerting = Arc::new(alerts::Alerting::new(config.alert_max_age_days));
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
        let rules = alerting.load(&store).await?;
        tracing::info!(rules, "alert rules indexed");
        let predictor = Arc::new(predict::Predictor::default());
        let started = std::time::Instant::now();
        let prices = predictor.rebuild(&store).await?;
        tracing::info!(
            prices,
            seconds = started.elapsed().as_secs_f64(),
            "price history rebuilt"
        );
        let jobs = Arc::new(
            jobs::Jobs::open(&config.data_dir, config.batch)
                .map_err(|e| format!("--data-dir {}/batches: {e}", config.data_dir.display()))?,
        );
        let state = AppState(Arc::new(Shared {
            jobs: jobs.clone(),
            predictor,
            score_on_ingest: config.score_on_ingest,
            metrics_key: config.metrics_key.as_deref().map(|k| {
                use sha2::Digest;
                sha2::Sha256::digest(k.as_bytes()).into()
            }),
            alerting,
            webhooks: webhooks.clone(),
            repository: Arc::new(repository),
            prometheus,
            limits: Limits {
                max_body_bytes: config.max_body_bytes,
                max_bulk_rows: config.max_bulk_rows,
                max_bulk_body_bytes: config.max_bulk_body_bytes,
                max_page_size: config.max_page_size,
                max_model_bytes: config.max_model_bytes,
                batch_inline_max_rows: config.batch_inline_max_rows,
                max_alert_rules: config.max_alert_rules,
                max_alert_channels: config.max_alert_channels,
                max_sockets_per_key: config.max_sockets_per_key,
            },
            keys: Arc::new(Keys::new(store.clone(), config.key_cache)),
            store,
            prices: api::stream::Fanout::default(),
            notifications: api::stream::Fanout::default(),
            sockets: Arc::default(),
            shadows: Arc::default(),
            models_source: config.models_dir.clone(),
            data_dir: config.data_dir.clone(),
            draining: Arc::new(AtomicBool::new(false)),
        }));
        {
            let (app, every) = (state.clone(), config.forecast_alert_interval);
            background::supervise("forecast_schedule", move || {
                alerts::schedule::run(app.clone(), every)
            });
            let (janitor, app) = (jobs.clone(), state.clone());
            background::supervise("batch_janitor", move || janitor.clone().sweep(app.clone()));
            let app = state.clone();
            background::supervise("batch_runner", move || jobs.clone().run(app.clone()));
        }
        Ok(App { state, config })
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
        let server = axum::serve(listener, self.router()).with_graceful_shutdown(signal);
        let server = async move {
            let mut server = std::pin::pin!(server.into_future());
            tokio::select! {
                result = &mut server => result,
                _ = async { let _ = stopped_rx.await; tokio::time::sleep(drain_timeout).await } => {
                    tracing::warn!("drain timeout reached with connections still open");
                    Ok(())
                }
            }
        };
        let result = server.await;
        let repository = state.repository.clone();
        let drained = tokio::task::spawn_blocking(move || repository.drain(drain_timeout))
            .await
            .unwrap_or(false);
        if !drained {
            tracing::warn!("model workers did not finish within the drain timeout");
        }
        state.store.close().await;
        tracing::info!("stopped");
        result
    }
}

pub fn router(state: AppState) -> Router {
    let max_body = state.limits.max_body_bytes;
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
        .with_state(state);
    layers(routes, max_body)
}

/// What every route runs inside, innermost first: a panic becomes the 500 envelope (and is counted), HTTP
/// metrics, the body limit, the request id, the error renderer.
pub fn layers(routes: Router, max_body_bytes: usize) -> Router {
    routes
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            error::panicked,
        ))
        .layer(axum::middleware::from_fn(metrics::track))
        .layer(DefaultBodyLimit::max(max_body_bytes))
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
        let response = super::layers(routes, 1024)
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
