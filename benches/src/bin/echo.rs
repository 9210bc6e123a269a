//! The HTTP ceiling: an axum handler that parses the same V2 request as Mercator and answers a constant
//! response of the same shape, without running any model; the same for a price prediction's JSON.

use axum::body::Bytes;
use axum::response::Response;
use axum::routing::post;
use axum::Router;

async fn infer(body: Bytes) -> Response {
    mercator_benches::respond(
        mercator_benches::decode(&body).map(|(shape, _)| vec![1.0f32; shape[0]]),
    )
}

/// The ceiling of `POST /api/v1/predictions/price`: parse the same JSON body, answer a constant of the
/// same shape.
async fn predict(body: Bytes) -> Response {
    let request: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let answer = serde_json::json!({
        "predicted_price": 1.0,
        "prediction_interval": {"lower": 0.9, "upper": 1.1, "level": 0.8},
        "confidence_score": 0.8,
        "model": {"name": "price", "version": 2},
        "as_of": request["as_of"],
        "features_used": {},
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(answer.to_string().into())
        .unwrap()
}

/// glibc's malloc contends between threads under load (seen in perf: ~15% of the server's cycles).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    let app = Router::new()
        .route("/v2/models/price/infer", post(infer))
        .route("/v2/models/price/versions/1/infer", post(infer))
        .route("/api/v1/predictions/price", post(predict));
    let listener = tokio::net::TcpListener::bind(mercator_benches::addr())
        .await
        .unwrap();
    axum::serve(listener, app).await.unwrap();
}
