//! Shared by the benchmark baselines: where the models are, and the request they all parse.

use std::path::PathBuf;

use mercator_server::v2::types::InferRequest;

pub fn models_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models")
}

/// The listen address from the first argument, default 127.0.0.1:8001.
pub fn addr() -> String {
    std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8001".into())
}

/// Decodes a V2 JSON request exactly as Mercator does, into one FP32 matrix.
pub fn decode(body: &[u8]) -> Result<(Vec<usize>, Vec<f32>), String> {
    let request: InferRequest = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let input = request.inputs.into_iter().next().ok_or("no input")?;
    let tensor = input.into_tensor(None).map_err(|e| e.to_string())?;
    match tensor.data {
        mercator_engine::TensorData::Fp32(v) => Ok((tensor.shape, v)),
        _ => Err("FP32 only".into()),
    }
}

/// The V2 response both baselines send: the price output, or the error as plain text.
pub fn respond(result: Result<Vec<f32>, String>) -> axum::response::Response {
    use axum::http::{header, StatusCode};
    use axum::response::IntoResponse;
    match result {
        Ok(prices) => {
            let body = serde_json::json!({ "model_name": "price", "model_version": "1", "outputs": [
                { "name": "price", "datatype": "FP32", "shape": [prices.len(), 1], "data": prices } ] });
            (
                [(header::CONTENT_TYPE, "application/json")],
                serde_json::to_vec(&body).unwrap(),
            )
                .into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, e).into_response(),
    }
}
