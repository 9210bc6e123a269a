//! The naive server most teams would write first: the same request parsing, then the price model run
//! inline in the handler through one ONNX Runtime session behind a mutex (one intra-op thread, as Mercator).

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use ort::session::Session;
use ort::value::TensorRef;

type Shared = Arc<Mutex<Session>>;

async fn infer(State(session): State<Shared>, body: Bytes) -> Response {
    let result = mercator_benches::decode(&body).and_then(|(shape, data)| {
        let mut session = session.lock().unwrap();
        let input = TensorRef::from_array_view(([shape[0], shape[1]], data.as_slice()))
            .map_err(|e| e.to_string())?;
        let outputs = session
            .run(ort::inputs!["features" => input])
            .map_err(|e| e.to_string())?;
        let (_, prices) = outputs["price"]
            .try_extract_tensor::<f32>()
            .map_err(|e| e.to_string())?;
        Ok((shape[0], prices.to_vec()))
    });
    mercator_benches::respond(result.map(|(_, prices)| prices))
}

/// glibc's malloc contends between threads under load (seen in perf: ~15% of the server's cycles).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    let runtime = mercator_engine::Runtime::load(None).unwrap();
    let session = Session::builder(runtime.environment())
        .unwrap()
        .with_intra_threads(1)
        .unwrap()
        .with_intra_op_spinning(false)
        .unwrap()
        .commit_from_file(mercator_benches::models_dir().join("price/1/model.onnx"))
        .unwrap();
    let app = Router::new()
        .route("/v2/models/price/infer", post(infer))
        .route("/v2/models/price/versions/1/infer", post(infer))
        .with_state(Arc::new(Mutex::new(session)));
    let listener = tokio::net::TcpListener::bind(mercator_benches::addr())
        .await
        .unwrap();
    axum::serve(listener, app).await.unwrap();
}
