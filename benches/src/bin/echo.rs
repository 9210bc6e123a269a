//! The HTTP ceiling: an axum handler that parses the same V2 request as Mercator and answers a constant
//! response of the same shape, without running any model.

use axum::body::Bytes;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::Router;

async fn infer(body: Bytes) -> impl IntoResponse {
    match mercator_benches::decode(&body) {
        Ok((shape, _)) => {
            let prices = vec![1.0f32; shape[0]];
            let body = serde_json::json!({ "model_name": "price", "model_version": "1", "outputs": [
                { "name": "price", "datatype": "FP32", "shape": [shape[0], 1], "data": prices } ] });
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                serde_json::to_vec(&body).unwrap(),
            )
        }
        Err(e) => (
            StatusCode::BAD_REQUEST,
            [(header::CONTENT_TYPE, "text/plain")],
            e.into_bytes(),
        ),
    }
}

/// glibc's malloc contends between threads under load (seen in perf: ~15% of the server's cycles).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    let app = Router::new().route("/v2/models/price/infer", post(infer));
    let listener = tokio::net::TcpListener::bind(mercator_benches::addr())
        .await
        .unwrap();
    axum::serve(listener, app).await.unwrap();
}
