//! `POST /api/v1/models/{name}/versions`: register a new version from a multipart upload, validated before
//! anything serves it ([`mercator_services::registry`] stages, checks and serves it).
//!
//! Parts: `model` (the ONNX file), `manifest` (model.toml), `features` (the feature spec, when the manifest
//! names one in `[features]`), optionally `profile` (its reference profile, `mercator features profile`:
//! the version is then monitored) and optionally `golden` (inputs and expected
//! outputs as V2 JSON tensors: `{"inputs": [...], "outputs": [{"name", "data"}]}`). The server gives the
//! next version number (a name or version in the manifest is overridden). A failed upload answers 422 and
//! changes nothing that serves; the registry keeps the version number as `failed`, with the reason.

use axum::extract::{FromRequest, Multipart, Path, Request, State};
use axum::http::StatusCode;
use axum::Json;
use mercator_services::registry::{
    invalid, Golden, GoldenOutput, NewVersion, Registry, RegistryError, VersionView,
};
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::models::audited;
use super::ErrorEnvelope;
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

/// The golden part as sent: V2 JSON input tensors and the outputs they must give.
#[derive(Deserialize)]
struct GoldenPart {
    inputs: Vec<InputTensor>,
    outputs: Vec<GoldenOutput>,
}

/// Register a new version of a model from an upload, validated first (platform owner).
#[utoipa::path(post, path = "/api/v1/models/{name}/versions", tag = "models",
    params(("name" = String, Path)),
    request_body(content_type = "multipart/form-data", description = "parts: model (ONNX), manifest (TOML), features (TOML, when the manifest names a spec), profile (JSON, optional), golden (JSON, optional)"),
    security(("api_key" = [])),
    responses((status = 201, body = VersionView), (status = "4XX", body = ErrorEnvelope)))]
async fn upload(
    State(app): State<AppState>,
    caller: Auth<Owner>,
    Path(name): Path<String>,
    request: Request,
) -> Result<(StatusCode, Json<VersionView>), ApiError> {
    Registry::check_name(&name)?;
    let _admitted = app.heavy.admit(&caller.organization_id)?;
    let parts = read_parts(request, app.limits.max_model_bytes).await?;
    let new = NewVersion {
        name,
        by: caller.actor().into_owned(),
        model: parts
            .model
            .ok_or_else(|| invalid("model", "the ONNX file is required"))?,
        manifest: parts
            .manifest
            .ok_or_else(|| invalid("manifest", "model.toml is required"))
            .and_then(|m| {
                String::from_utf8(m).map_err(|_| invalid("manifest", "must be UTF-8 TOML"))
            })?,
        features: parts.features,
        profile: parts.profile,
        golden: parts.golden.map(|g| golden(&g)).transpose()?,
    };
    let changed = app.registry.upload(new).await?;
    Ok((
        StatusCode::CREATED,
        Json(audited(&app, &caller, changed).await),
    ))
}

/// The golden part: inputs decoded as V2 JSON tensors.
fn golden(bytes: &[u8]) -> Result<Golden, RegistryError> {
    let part: GoldenPart = serde_json::from_slice(bytes)
        .map_err(|e| invalid("golden", format!("not golden JSON: {e}")))?;
    let inputs = part
        .inputs
        .into_iter()
        .map(|i| i.into_tensor(None))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid("golden", e.to_string()))?;
    Ok(Golden {
        inputs,
        outputs: part.outputs,
    })
}

struct Parts {
    model: Option<Vec<u8>>,
    manifest: Option<Vec<u8>>,
    golden: Option<Vec<u8>>,
    features: Option<Vec<u8>>,
    profile: Option<Vec<u8>>,
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
        profile: None,
    };
    let mut total = 0usize;
    while let Some(mut field) = multipart
        .next_field()
        .await
        .map_err(|e| ApiError::BadRequest(format!("the multipart body cannot be read: {e}")))?
    {
        let part = field.name().unwrap_or_default().to_string();
        let mut bytes = Vec::new();
        while let Some(chunk) = field.chunk().await.map_err(|e| {
            if crate::error::timed_out(&e) {
                ApiError::BodyTimeout
            } else {
                ApiError::BadRequest(format!("part `{part}` cannot be read: {e}"))
            }
        })? {
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
            "profile" => parts.profile = Some(bytes),
            other => {
                return Err(invalid(
                    other,
                    "unknown part; the parts are model, manifest, features, profile and golden",
                )
                .into())
            }
        }
    }
    Ok(parts)
}
