//! Prometheus: the recorder, the HTTP metrics, and `GET /metrics`. Engine metric names live in
//! `mercator_engine::metrics`.

use std::collections::HashMap;
use std::sync::{OnceLock, RwLock};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::AppState;

pub const HTTP_REQUESTS: &str = "mercator_http_requests_total";
pub const HTTP_DURATION: &str = "mercator_http_request_duration_seconds";

/// Installs the process-wide recorder once (tests start several servers in one process) and returns it.
/// It must be installed before models load: their metric handles are taken at load time.
pub fn recorder() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    let handle = HANDLE.get_or_init(|| {
        // Durations from 10 µs to 10 s, by factors of about 2.5.
        let seconds: Vec<f64> = (0..16).map(|i| 1e-5 * 2.5f64.powi(i)).collect();
        let batch: Vec<f64> = (0..11).map(|i| 2f64.powi(i)).collect();
        PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("duration_seconds".into()), &seconds)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(mercator_engine::metrics::BATCH_SIZE.into()),
                    &batch,
                )
            })
            .expect("non-empty buckets")
            .install_recorder()
            .expect("the only recorder of the process")
    });
    static UPKEEP: OnceLock<()> = OnceLock::new();
    UPKEEP.get_or_init(|| {
        // Histograms keep every sample until drained: without upkeep a server that nobody scrapes grows
        // by the size of its samples (measured: +30 MiB per 500k requests).
        let handle = handle.clone();
        std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || loop {
                std::thread::sleep(std::time::Duration::from_secs(5));
                handle.run_upkeep();
            })
            .expect("a thread can be started");
    });
    handle.clone()
}

/// Counts every request and times it, labelled by route template (not by raw path: bounded cardinality).
/// Handles are made once per (route, method, status) and kept, so a request costs a read lock and a lookup
/// instead of building labels and looking them up in the registry.
pub async fn track(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request.extensions().get::<MatchedPath>().cloned();
    let method = request.method().clone();
    let response = next.run(request).await;
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    // Methods anyone can invent would each add a series: the standard ones are labelled, others `OTHER`.
    let method = match method {
        Method::GET
        | Method::POST
        | Method::PUT
        | Method::PATCH
        | Method::DELETE
        | Method::HEAD
        | Method::OPTIONS => method,
        _ => OTHER_METHOD.clone(),
    };
    let (counter, histogram) = handles(route, &method, response.status().as_u16());
    counter.increment(1);
    histogram.record(started.elapsed().as_secs_f64());
    response
}

/// The label of every non-standard method.
static OTHER_METHOD: std::sync::LazyLock<Method> =
    std::sync::LazyLock::new(|| Method::from_bytes(b"OTHER").expect("a valid token"));

type Handles = (metrics::Counter, metrics::Histogram);
type ByRoute = HashMap<String, HashMap<(Method, u16), Handles>>;

fn handles(route: &str, method: &Method, status: u16) -> Handles {
    static CACHE: OnceLock<RwLock<ByRoute>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let key = (method.clone(), status);
    if let Some(h) = cache
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(route)
        .and_then(|m| m.get(&key))
    {
        return h.clone();
    }
    let made = (
        metrics::counter!(HTTP_REQUESTS, "route" => route.to_owned(), "method" => method.to_string(), "status" => status.to_string()),
        metrics::histogram!(HTTP_DURATION, "route" => route.to_owned(), "method" => method.to_string()),
    );
    let mut cache = cache.write().unwrap_or_else(|e| e.into_inner());
    cache
        .entry(route.to_owned())
        .or_default()
        .entry(key)
        .or_insert(made)
        .clone()
}

/// The Prometheus text; with --metrics-key, only for a request bearing that token (compared as digests,
/// so the time taken says nothing of the token).
pub async fn render(
    State(app): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Result<String, crate::error::ApiError> {
    if let Some(wanted) = &app.metrics_key {
        use sha2::Digest;
        let presented = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(crate::error::ApiError::MissingKey)?;
        let digest: [u8; 32] = sha2::Sha256::digest(presented.trim().as_bytes()).into();
        if digest != *wanted {
            return Err(crate::error::ApiError::InvalidKey);
        }
    }
    Ok(app.prometheus.render())
}
