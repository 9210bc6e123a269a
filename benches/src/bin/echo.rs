//! The HTTP ceiling: an axum handler that parses the same V2 request as Mercator and answers a constant
//! response of the same shape, without running any model.

use axum::body::Bytes;
use axum::response::Response;
use axum::routing::post;
use axum::Router;

async fn infer(body: Bytes) -> Response {
    mercator_benches::respond(
        mercator_benches::decode(&body).map(|(shape, _)| vec![1.0f32; shape[0]]),
    )
}

/// glibc's malloc contends between threads under load (seen in perf: ~15% of the server's cycles).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    let app = Router::new()
        .route("/v2/models/price/infer", post(infer))
        .route("/v2/models/price/versions/1/infer", post(infer));
    let listener = tokio::net::TcpListener::bind(mercator_benches::addr())
        .await
        .unwrap();
    axum::serve(listener, app).await.unwrap();
}
