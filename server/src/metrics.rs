//! Prometheus: the recorder, the HTTP metrics, and `GET /metrics`. Engine metric names live in
//! `mercator_engine::metrics`.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
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
    HANDLE
        .get_or_init(|| {
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
        })
        .clone()
}

/// Counts every request and times it, labelled by route template (not by raw path: bounded cardinality).
pub async fn track(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let method = request.method().clone();
    let response = next.run(request).await;
    let route = route.unwrap_or_else(|| "unmatched".to_owned());
    let status = response.status().as_u16().to_string();
    metrics::counter!(HTTP_REQUESTS, "route" => route.clone(), "method" => method.to_string(), "status" => status)
        .increment(1);
    metrics::histogram!(HTTP_DURATION, "route" => route, "method" => method.to_string())
        .record(started.elapsed().as_secs_f64());
    response
}

pub async fn render(State(app): State<AppState>) -> String {
    app.prometheus.render()
}
