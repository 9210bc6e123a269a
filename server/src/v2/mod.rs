//! The Open Inference Protocol (KServe V2) over REST, with Triton's binary tensor data, model configuration
//! and statistics extensions, so that tritonclient and perf_analyzer work unchanged.
//!
//! Each handler translates: decode, one call into the engine, encode. The engine decides.

pub mod types;

use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use mercator_engine::{stats::StatsSnapshot, Model};
use serde::Deserialize;
use serde_json::json;

use crate::auth::{Analyst, Auth, Owner, Viewer};
use crate::error::{ApiError, V2Error};
use crate::AppState;
use types::{
    BinarySize, DataOut, InferRequest, InferResponse, ModelMetadata, OutputTensor, TensorMetadata,
};

pub const HEADER_LENGTH: &str = "inference-header-content-length";
const EXTENSIONS: [&str; 4] = [
    "binary_tensor_data",
    "model_configuration",
    "model_repository",
    "statistics",
];

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/stats", get(all_stats))
        .route("/v2/models/{model}", get(model_metadata))
        .route("/v2/models/{model}/versions/{version}", get(model_metadata))
        .route("/v2/models/{model}/ready", get(model_ready))
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(model_ready),
        )
        .route("/v2/models/{model}/config", get(model_config))
        .route(
            "/v2/models/{model}/versions/{version}/config",
            get(model_config),
        )
        .route("/v2/models/{model}/stats", get(model_stats))
        .route(
            "/v2/models/{model}/versions/{version}/stats",
            get(model_stats),
        )
        .route("/v2/repository/index", post(repository_index))
        .route("/v2/repository/models/{model}/load", post(load_model))
        .route("/v2/repository/models/{model}/unload", post(unload_model))
        .route("/v2/models/{model}/infer", post(infer))
        .route("/v2/models/{model}/versions/{version}/infer", post(infer))
}

#[derive(Debug, Deserialize)]
struct ModelPath {
    model: String,
    #[serde(default)]
    version: Option<String>,
}

impl ModelPath {
    fn find(&self, app: &AppState) -> Result<Model, ApiError> {
        Ok(app.repository.get(&self.model, self.version.as_deref())?)
    }
}

/// Triton's model repository extension: every model in the repository's directory and its state.
async fn repository_index(
    State(app): State<AppState>,
    _: Auth<Owner>,
) -> Result<Json<serde_json::Value>, V2Error> {
    let index = app.repository.index()?;
    Ok(Json(serde_json::Value::Array(
        index
            .into_iter()
            .map(|e| json!({ "name": e.name, "version": e.version.map(|v| v.to_string()), "state": e.state, "reason": e.reason }))
            .collect(),
    )))
}

/// (Re)loads a model's versions from the repository's directory, beside the ones serving, and swaps them
/// in; requests in flight finish on the versions they started on.
async fn load_model(
    State(app): State<AppState>,
    caller: Auth<Owner>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, V2Error> {
    let changed = app
        .registry
        .load_model(&name)
        .await
        .map_err(ApiError::from)?;
    crate::api::models::audited(&app, &caller, changed).await;
    Ok(Json(json!({})))
}

/// Stops serving a model; requests in flight finish, later ones get 404. Kept across restarts.
async fn unload_model(
    State(app): State<AppState>,
    caller: Auth<Owner>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, V2Error> {
    let changed = app
        .registry
        .unload_model(&name)
        .await
        .map_err(ApiError::from)?;
    crate::api::models::audited(&app, &caller, changed).await;
    Ok(Json(json!({})))
}

async fn server_metadata(_: Auth<Viewer>) -> Json<serde_json::Value> {
    Json(
        json!({ "name": "mercator", "version": env!("CARGO_PKG_VERSION"), "extensions": EXTENSIONS }),
    )
}

async fn live(_: Auth<Viewer>) -> StatusCode {
    StatusCode::OK
}

async fn ready(State(app): State<AppState>, _: Auth<Viewer>) -> Result<StatusCode, V2Error> {
    app.check_ready()?;
    Ok(StatusCode::OK)
}

async fn model_ready(
    State(app): State<AppState>,
    _: Auth<Viewer>,
    Path(path): Path<ModelPath>,
) -> Result<StatusCode, V2Error> {
    let model = path.find(&app)?;
    if !model.is_ready() {
        return Err(mercator_engine::EngineError::NotReady { model: path.model }.into());
    }
    Ok(StatusCode::OK)
}

async fn model_metadata(
    State(app): State<AppState>,
    _: Auth<Viewer>,
    Path(path): Path<ModelPath>,
) -> Result<Json<ModelMetadata>, V2Error> {
    let model = path.find(&app)?;
    let m = model.manifest();
    let versions = match &path.version {
        Some(_) => vec![m.version.to_string()],
        None => app
            .repository
            .versions(&m.name)?
            .iter()
            .map(|v| v.manifest().version.to_string())
            .collect(),
    };
    let describe = |specs: &[mercator_engine::TensorSpec]| {
        specs
            .iter()
            .map(|s| TensorMetadata {
                name: s.name.clone(),
                datatype: s.datatype.as_str(),
                shape: s.shape.clone(),
            })
            .collect()
    };
    Ok(Json(ModelMetadata {
        name: m.name.clone(),
        versions,
        platform: "onnxruntime_onnx",
        inputs: describe(&m.inputs),
        outputs: describe(&m.outputs),
    }))
}

/// Triton's ModelConfig: dims leave out the batch dimension, which `max_batch_size` stands for.
async fn model_config(
    State(app): State<AppState>,
    _: Auth<Viewer>,
    Path(path): Path<ModelPath>,
) -> Result<Json<serde_json::Value>, V2Error> {
    let model = path.find(&app)?;
    let m = model.manifest();
    let tensors = |specs: &[mercator_engine::TensorSpec]| {
        specs
            .iter()
            .map(|s| json!({ "name": s.name, "data_type": format!("TYPE_{}", s.datatype), "dims": &s.shape[1..] }))
            .collect::<Vec<_>>()
    };
    Ok(Json(json!({
        "name": m.name,
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "version_policy": { "latest": { "num_versions": 1 } },
        "max_batch_size": m.batching.max_batch_size,
        "input": tensors(&m.inputs),
        "output": tensors(&m.outputs),
        "instance_group": [{ "name": m.name, "kind": "KIND_CPU", "count": m.instances.count }],
        "dynamic_batching": {
            "max_queue_delay_microseconds": m.batching.max_queue_delay_us,
            "default_queue_policy": { "max_queue_size": m.batching.queue_capacity }
        },
        "parameters": { "intra_op_thread_count": { "string_value": m.instances.intra_op_threads.to_string() } }
    })))
}

fn model_stats_json(model: &Model) -> serde_json::Value {
    let m = model.manifest();
    let s: StatsSnapshot = model.stats().snapshot();
    json!({
        "name": m.name,
        "version": m.version.to_string(),
        "last_inference": s.last_inference,
        "inference_count": s.inference_count,
        "execution_count": s.execution_count,
        "inference_stats": {
            "success": s.success,
            "fail": s.fail,
            "queue": s.queue,
            "compute_input": s.compute_input,
            "compute_infer": s.compute_infer,
            "compute_output": s.compute_output,
            "cache_hit": { "count": 0, "ns": 0 },
            "cache_miss": { "count": 0, "ns": 0 },
        },
        "batch_stats": s.batches,
    })
}

async fn all_stats(State(app): State<AppState>, _: Auth<Viewer>) -> Json<serde_json::Value> {
    Json(
        json!({ "model_stats": app.repository.all().iter().map(model_stats_json).collect::<Vec<_>>() }),
    )
}

async fn model_stats(
    State(app): State<AppState>,
    _: Auth<Viewer>,
    Path(path): Path<ModelPath>,
) -> Result<Json<serde_json::Value>, V2Error> {
    let stats: Vec<_> = match &path.version {
        Some(_) => vec![model_stats_json(&path.find(&app)?)],
        None => app
            .repository
            .versions(&path.model)?
            .iter()
            .map(model_stats_json)
            .collect(),
    };
    Ok(Json(json!({ "model_stats": stats })))
}

/// `POST .../infer`: JSON, or JSON plus binary tensors when `Inference-Header-Content-Length` is set.
async fn infer(
    State(app): State<AppState>,
    _: Auth<Analyst>,
    Path(path): Path<ModelPath>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, V2Error> {
    let body = body.map_err(|e| match e {
        BytesRejection::FailedToBufferBody(e) => {
            ApiError::body(&e, app.limits.max_body_bytes, "--max-body-bytes")
        }
        other => ApiError::BadRequest(other.body_text()),
    })?;
    let model = path.find(&app)?;
    let (request, binary) = decode(&headers, &body)?;
    let deadline = request
        .parameters
        .timeout
        .map(|us| Instant::now() + Duration::from_micros(us));
    let wants = Wanted::from_request(&request, &model)?;
    let inputs = tensors(request.inputs, binary)?;
    // A request that names no version is copied to the model's shadow, if it has one.
    let shadow = match path.version {
        None => app.repository.shadow(&path.model),
        Some(_) => None,
    };
    let copy = shadow.as_ref().map(|_| inputs.clone());
    let result = model.infer(inputs, deadline).await?;
    if let (Some(shadow), Some(copy)) = (shadow, copy) {
        app.shadows.mirror(shadow, copy, result.outputs.clone());
    }
    Ok(encode(&model, request.id, result, &wants)?)
}

/// The request's inputs as tensors: each from its JSON data, or from its `binary_data_size` bytes of the
/// binary part, in order; the sizes must add up to the binary part exactly.
pub(crate) fn tensors(
    inputs: Vec<types::InputTensor>,
    binary: &[u8],
) -> Result<Vec<mercator_engine::Tensor>, ApiError> {
    let mut offset = 0usize;
    let mut tensors = Vec::with_capacity(inputs.len());
    for input in inputs {
        let bytes = match input.parameters.binary_data_size {
            Some(n) => {
                let chunk = offset
                    .checked_add(n)
                    .and_then(|end| binary.get(offset..end))
                    .ok_or_else(|| {
                        ApiError::BadRequest(format!(
                            "input `{}`: binary_data_size {n} runs past the end of the body",
                            input.name
                        ))
                    })?;
                offset += n;
                Some(chunk)
            }
            None => None,
        };
        tensors.push(input.into_tensor(bytes)?);
    }
    if offset != binary.len() {
        return Err(ApiError::BadRequest(format!(
            "the body has {} binary bytes after the JSON header, the inputs' binary_data_size add up to {offset}",
            binary.len()
        )));
    }
    Ok(tensors)
}

/// Splits the body into the JSON header and the binary tensor data that follows it.
pub(crate) fn decode<'b>(
    headers: &HeaderMap,
    body: &'b Bytes,
) -> Result<(InferRequest, &'b [u8]), ApiError> {
    let header_len = match headers.get(HEADER_LENGTH) {
        None => body.len(),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .filter(|&n| n <= body.len())
            .ok_or_else(|| {
                ApiError::BadRequest(format!("{HEADER_LENGTH} must be a length within the body"))
            })?,
    };
    let (json, binary) = body.split_at(header_len);
    let request: InferRequest = serde_json::from_slice(json)
        .map_err(|e| ApiError::BadRequest(format!("invalid inference request: {e}")))?;
    Ok((request, binary))
}

/// Which outputs to return, each as JSON or binary.
struct Wanted(Vec<(usize, bool)>);

impl Wanted {
    fn from_request(request: &InferRequest, model: &Model) -> Result<Wanted, ApiError> {
        let specs = &model.manifest().outputs;
        let default_binary = request.parameters.binary_data_output;
        if request.outputs.is_empty() {
            return Ok(Wanted(
                (0..specs.len()).map(|i| (i, default_binary)).collect(),
            ));
        }
        request
            .outputs
            .iter()
            .map(|o| {
                let index = specs.iter().position(|s| s.name == o.name).ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "output `{}`: the model has no such output",
                        o.name
                    ))
                })?;
                Ok((index, o.parameters.binary_data.unwrap_or(default_binary)))
            })
            .collect::<Result<_, _>>()
            .map(Wanted)
    }
}

fn encode(
    model: &Model,
    id: Option<String>,
    result: mercator_engine::InferOutput,
    wants: &Wanted,
) -> Result<Response, ApiError> {
    let m = model.manifest();
    let mut outputs: Vec<Option<mercator_engine::Tensor>> =
        result.outputs.into_iter().map(Some).collect();
    let mut binary = Vec::new();
    let mut tensors = Vec::with_capacity(wants.0.len());
    for &(index, as_binary) in &wants.0 {
        let tensor = outputs[index]
            .take()
            .ok_or_else(|| ApiError::BadRequest("an output is requested twice".into()))?;
        let datatype = tensor.data.datatype().as_str();
        if as_binary {
            let start = binary.len();
            types::write_bytes(&tensor.data, &mut binary);
            let size = binary.len() - start;
            tensors.push(OutputTensor {
                name: tensor.name,
                datatype,
                shape: tensor.shape,
                parameters: Some(BinarySize {
                    binary_data_size: size,
                }),
                data: None,
            });
        } else {
            tensors.push(OutputTensor {
                name: tensor.name,
                datatype,
                shape: tensor.shape,
                parameters: None,
                data: Some(DataOut(tensor.data)),
            });
        }
    }
    let response = InferResponse {
        model_name: &m.name,
        model_version: m.version.to_string(),
        id,
        outputs: tensors,
    };
    let mut body =
        serde_json::to_vec(&response).map_err(|e| ApiError::internal("encoding the answer", e))?;
    let mut headers = HeaderMap::new();
    let timing = result.timing;
    headers.insert(
        "x-mercator-queue-us",
        HeaderValue::from(timing.queue.as_micros() as u64),
    );
    headers.insert(
        "x-mercator-compute-us",
        HeaderValue::from(timing.compute.as_micros() as u64),
    );
    headers.insert(
        "x-mercator-batch-rows",
        HeaderValue::from(timing.batch_rows as u64),
    );
    if binary.is_empty() && !wants.0.iter().any(|w| w.1) {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    } else {
        headers.insert(HEADER_LENGTH, HeaderValue::from(body.len() as u64));
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        body.extend_from_slice(&binary);
    }
    Ok((headers, body).into_response())
}
