//! `POST /api/v1/models/{name}/versions`: register a new version from a multipart upload, validated before
//! anything serves it.
//!
//! Parts: `model` (the ONNX file), `manifest` (model.toml), `features` (the feature spec, when the manifest
//! names one in `[features]`) and optionally `golden` (inputs and expected
//! outputs as V2 JSON tensors: `{"inputs": [...], "outputs": [{"name", "data"}]}`). The server gives the
//! next version number (a name or version in the manifest is overridden). The version is built in a
//! staging folder: the file must parse, its signature must match the manifest, a warm-up inference must
//! run, and the golden outputs must match within 1e-4 (relative). Only then is the artifact stored by its
//! SHA-256 and the version served beside the others; it answers requests that name it until it is
//! activated (or at once, for a new model). A failed upload answers 422 and changes nothing that serves;
//! the registry keeps the version number as `failed`, with the reason.

use std::path::Path as FsPath;
use std::time::Duration;

use axum::extract::{FromRequest, Multipart, Path, Request, State};
use axum::http::StatusCode;
use axum::Json;
use mercator_engine::{import, EngineError, Manifest, Model};
use mercator_store::FieldErrors;
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::models::{version_view, VersionView};
use super::{audit, ErrorEnvelope};
use crate::auth::{Auth, Owner};
use crate::error::ApiError;
use crate::v2::types::InputTensor;
use crate::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    // The upload's own limit (--max-model-bytes) is enforced while reading it.
    OpenApiRouter::new()
        .routes(routes!(upload))
        .layer(axum::extract::DefaultBodyLimit::disable())
}

/// Golden outputs match when within this relative tolerance (or absolute, below 1).
const GOLDEN_TOLERANCE: f64 = 1e-4;

#[derive(Deserialize)]
struct Golden {
    inputs: Vec<InputTensor>,
    outputs: Vec<GoldenOutput>,
}

#[derive(Deserialize)]
struct GoldenOutput {
    name: String,
    data: Vec<f64>,
}

/// Register a new version of a model from an upload, validated first (platform owner).
#[utoipa::path(post, path = "/api/v1/models/{name}/versions", tag = "models",
    params(("name" = String, Path)),
    request_body(content_type = "multipart/form-data", description = "parts: model (ONNX), manifest (TOML), golden (JSON, optional)"),
    security(("api_key" = [])),
    responses((status = 201, body = VersionView), (status = "4XX", body = ErrorEnvelope)))]
async fn upload(
    State(app): State<AppState>,
    caller: Auth<Owner>,
    Path(name): Path<String>,
    request: Request,
) -> Result<(StatusCode, Json<VersionView>), ApiError> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(invalid("name", "1 to 64 letters, digits, - or _"));
    }
    let parts = read_parts(request, app.limits.max_model_bytes).await?;
    let model_bytes = parts
        .model
        .ok_or_else(|| invalid("model", "the ONNX file is required"))?;
    let manifest_text = parts
        .manifest
        .ok_or_else(|| invalid("manifest", "model.toml is required"))?;
    let manifest_text =
        String::from_utf8(manifest_text).map_err(|_| invalid("manifest", "must be UTF-8 TOML"))?;
    let golden: Option<Golden> = parts
        .golden
        .map(|g| {
            serde_json::from_slice(&g)
                .map_err(|e| invalid("golden", format!("not golden JSON: {e}")))
        })
        .transpose()?;

    let served = import::served_dir(&app.data_dir);
    let mut manifest =
        Manifest::parse(&manifest_text, FsPath::new("manifest")).map_err(model_error)?;
    // The number is claimed in the registry (validating), so two uploads at once get two.
    let version = app
        .store
        .claim_model_version(&name, next_version(&served.join(&name)), &caller.key_id)
        .await
        .map_err(ApiError::store("model"))?;
    manifest.name = name.clone();
    manifest.version = version;
    let staging =
        app.data_dir
            .join("staging")
            .join(format!("{}-{}", std::process::id(), rand_suffix()));
    let staged_dir = staging.join(&name).join(version.to_string());
    let result = match (&parts.features, &manifest.features) {
        (Some(spec), Some(reference)) => std::fs::create_dir_all(&staged_dir)
            .and_then(|()| std::fs::write(staged_dir.join(&reference.spec), spec))
            .map_err(|e| ApiError::Engine(EngineError::Runtime(format!("staging: {e}")))),
        (Some(_), None) => Err(invalid(
            "features",
            "the manifest names no feature spec ([features] spec, sha256)",
        )),
        (None, Some(_)) => Err(invalid(
            "features",
            "the manifest names a feature spec: send it as the `features` part",
        )),
        (None, None) => Ok(()),
    };
    let result = match result {
        Ok(()) => stage_and_check(&app, &staged_dir, &model_bytes, &manifest, golden).await,
        Err(e) => Err(e),
    };
    let outcome = match result {
        Ok(model) => commit(&app, &staged_dir, &served, model).await,
        Err(e) => Err(e),
    };
    let _ = std::fs::remove_dir_all(&staging);
    let outcome = outcome.map_err(|e| scrub(e, &staging));
    let view = outcome.map(|model| version_view(&app, &model));
    let finished = match &view {
        Ok(v) => {
            let artifact = (
                v.sha256.as_deref().unwrap_or_default(),
                v.size_bytes.unwrap_or(0),
            );
            app.store
                .finish_model_version(&name, version, Ok(artifact))
                .await
        }
        Err(e) => {
            let reason = e.to_string();
            app.store
                .finish_model_version(&name, version, Err(&reason))
                .await
        }
    };
    finished.map_err(ApiError::store("model"))?;
    let mut view = view?;
    view.state = mercator_store::VersionState::Ready;
    let target = ("model", name.as_str());
    audit::record(
        &app,
        &caller,
        "model.upload",
        target,
        None::<()>,
        Some(&view),
    )
    .await;
    Ok((StatusCode::CREATED, Json(view)))
}

struct Parts {
    model: Option<Vec<u8>>,
    manifest: Option<Vec<u8>>,
    golden: Option<Vec<u8>>,
    features: Option<Vec<u8>>,
}

async fn read_parts(request: Request, limit: usize) -> Result<Parts, ApiError> {
    let mut multipart = Multipart::from_request(request, &()).await.map_err(|e| {
        ApiError::UnsupportedMediaType(format!(
            "send the upload as multipart/form-data with parts model, manifest and golden ({})",
            e.body_text()
        ))
    })?;
    let mut parts = Parts {
        model: None,
        manifest: None,
        golden: None,
        features: None,
    };
    let mut total = 0usize;
    while let Some(mut field) = multipart
        .next_field()
        .await
        .map_err(|e| ApiError::BadRequest(format!("the multipart body cannot be read: {e}")))?
    {
        let part = field.name().unwrap_or_default().to_string();
        let mut bytes = Vec::new();
        while let Some(chunk) = field
            .chunk()
            .await
            .map_err(|e| ApiError::BadRequest(format!("part `{part}` cannot be read: {e}")))?
        {
            total += chunk.len();
            if total > limit {
                return Err(ApiError::BodyTooLarge {
                    limit,
                    flag: "--max-model-bytes",
                });
            }
            bytes.extend_from_slice(&chunk);
        }
        match part.as_str() {
            "model" => parts.model = Some(bytes),
            "manifest" => parts.manifest = Some(bytes),
            "golden" => parts.golden = Some(bytes),
            "features" => parts.features = Some(bytes),
            other => {
                return Err(invalid(
                    other,
                    "unknown part; the parts are model, manifest, features and golden",
                ))
            }
        }
    }
    Ok(parts)
}

/// Writes the version to a staging folder and loads, checks and warms it there; then the golden check.
async fn stage_and_check(
    app: &AppState,
    dir: &FsPath,
    onnx: &[u8],
    manifest: &Manifest,
    golden: Option<Golden>,
) -> Result<Model, ApiError> {
    let io = |e: std::io::Error| ApiError::Engine(EngineError::Runtime(format!("staging: {e}")));
    std::fs::create_dir_all(dir).map_err(io)?;
    std::fs::write(dir.join("model.onnx"), onnx).map_err(io)?;
    let toml = toml::to_string(manifest).map_err(|e| ApiError::InvalidModel(e.to_string()))?;
    std::fs::write(dir.join("model.toml"), toml).map_err(io)?;
    let (repository, staged) = (app.repository.clone(), dir.to_path_buf());
    let model = tokio::task::spawn_blocking(move || repository.stage(&staged))
        .await
        .map_err(|e| ApiError::Engine(EngineError::Runtime(e.to_string())))?
        .map_err(model_error)?;
    if let Some(golden) = golden {
        if let Err(e) = check_golden(&model, golden).await {
            dispose(model).await;
            return Err(e);
        }
    }
    Ok(model)
}

/// Runs the golden inputs through the staged version and compares every golden output.
async fn check_golden(model: &Model, golden: Golden) -> Result<(), ApiError> {
    let inputs = golden
        .inputs
        .into_iter()
        .map(|i| i.into_tensor(None))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid("golden", e.to_string()))?;
    let output = model
        .infer(inputs, None)
        .await
        .map_err(|e| ApiError::InvalidModel(format!("the golden inputs do not run: {e}")))?;
    let mut problems = FieldErrors::default();
    for want in &golden.outputs {
        let Some(got) = output.outputs.iter().find(|t| t.name == want.name) else {
            problems.add("golden", format!("the model has no output `{}`", want.name));
            continue;
        };
        let got = got.data.to_f64();
        if got.len() != want.data.len() {
            problems.add(
                "golden",
                format!(
                    "output `{}`: {} values, golden has {}",
                    want.name,
                    got.len(),
                    want.data.len()
                ),
            );
            continue;
        }
        if let Some((i, (g, w))) = got
            .iter()
            .zip(&want.data)
            .enumerate()
            .find(|(_, (g, w))| (*g - *w).abs() > GOLDEN_TOLERANCE * w.abs().max(1.0))
        {
            problems.add(
                "golden",
                format!(
                    "output `{}`[{i}]: the model gives {g}, golden says {w}",
                    want.name
                ),
            );
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ApiError::InvalidModel(format!(
            "golden outputs differ: {}",
            problems
                .0
                .values()
                .flatten()
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        )))
    }
}

/// Stores the artifact by its SHA-256, moves the version into the served repository and serves it.
async fn commit(
    app: &AppState,
    staged: &FsPath,
    served: &FsPath,
    model: Model,
) -> Result<Model, ApiError> {
    let m = model.manifest();
    let target = served.join(&m.name).join(m.version.to_string());
    let data = app.data_dir.clone();
    let written = (|| -> Result<(), EngineError> {
        let sha = import::store_artifact(&data, &staged.join("model.onnx"))?;
        std::fs::create_dir_all(&target).map_err(|e| EngineError::Runtime(e.to_string()))?;
        import::link_artifact(&data, &target, &sha)?;
        import::copy_companions(staged, &target)?;
        std::fs::copy(staged.join("model.toml"), target.join("model.toml"))
            .map_err(|e| EngineError::Runtime(e.to_string()))?;
        Ok(())
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&target);
        dispose(model).await;
        return Err(ApiError::Engine(e));
    }
    app.repository.insert_version(model.clone());
    Ok(model)
}

/// Stops a staged version that will not serve: its workers finish and its sessions are freed.
async fn dispose(model: Model) {
    let _ = tokio::task::spawn_blocking(move || model.drain(Duration::from_secs(10))).await;
}

/// One more than the highest version folder of the model (1 for a new model).
fn next_version(model_dir: &FsPath) -> u64 {
    std::fs::read_dir(model_dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok())
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
        + 1
}

fn invalid(field: &str, message: impl Into<String>) -> ApiError {
    let message = message.into();
    ApiError::Validation {
        message: format!("`{field}`: {message}"),
        details: FieldErrors::one(field, message),
    }
}

fn model_error(e: EngineError) -> ApiError {
    match e {
        EngineError::InvalidModel { reason, .. } => ApiError::InvalidModel(reason),
        e => ApiError::InvalidModel(e.to_string()),
    }
}

/// The staging folder's path out of an error's message: a client learns what was wrong with its upload,
/// not where the server keeps its files.
fn scrub(e: ApiError, staging: &FsPath) -> ApiError {
    let scrubbed = |m: String| m.replace(&staging.display().to_string(), "<upload>");
    match e {
        ApiError::InvalidModel(m) => ApiError::InvalidModel(scrubbed(m)),
        ApiError::Engine(EngineError::InvalidModel { reason, .. }) => {
            ApiError::InvalidModel(scrubbed(reason))
        }
        e => e,
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::Instant::now())
}
