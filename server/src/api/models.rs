//! `/api/v1/models`: what the engine serves, which version answers requests that name none, and the
//! switch between versions (activate, rollback), kept in the store so a restart serves as it was left.
//! Models are the platform's, shared by every organization: any admin may read them, only the platform
//! owner may change them.

use axum::extract::{Path, State};
use axum::Json;
use mercator_engine::Model;
use mercator_store::ModelPolicy;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::ApiJson;
use super::{audit, ErrorEnvelope};
use crate::auth::{Admin, Auth, Owner};
use crate::error::ApiError;
use crate::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_models))
        .routes(routes!(get_model))
        .routes(routes!(activate))
        .routes(routes!(delete_version))
        .routes(routes!(set_traffic))
        .routes(routes!(get_version))
        .routes(routes!(rollback))
}

#[derive(Serialize, ToSchema)]
pub struct ModelView {
    pub name: String,
    /// Answers requests that name no version.
    pub active_version: u64,
    /// What rollback returns to.
    pub previous_version: Option<u64>,
    /// How unnamed requests are shared, and the shadow version.
    pub traffic: TrafficBody,
    /// The shadow version's figures since this server started.
    pub shadow: Option<crate::shadow::ShadowFigures>,
    pub versions: Vec<VersionView>,
}

#[derive(Serialize, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct TrafficBody {
    /// Percent per version, adding up to 100; empty: everything to the active version.
    #[serde(default)]
    pub split: Vec<SplitEntry>,
    /// A version that gets a copy of each unnamed request; its answers are compared, never returned.
    #[serde(default)]
    pub shadow: Option<u64>,
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SplitEntry {
    pub version: u64,
    pub percent: u32,
}

#[derive(Serialize, ToSchema)]
pub struct VersionView {
    pub version: u64,
    /// ready, or loading/unavailable while it is not.
    pub state: &'static str,
    pub kind: String,
    pub description: String,
    pub instances: usize,
    pub max_batch_size: usize,
    /// The ONNX file's SHA-256 (its name in the artifact store) and size in bytes.
    pub sha256: Option<String>,
    pub size_bytes: Option<u64>,
    /// Live figures since the version was loaded.
    pub stats: VersionStats,
}

#[derive(Serialize, ToSchema)]
pub struct VersionStats {
    pub requests: u64,
    pub failures: u64,
    /// Rows inferred.
    pub inferences: u64,
    /// ONNX Runtime calls (batches); inferences / executions is the mean batch size.
    pub executions: u64,
    pub mean_queue_us: f64,
    pub mean_compute_us: f64,
    /// Rows waiting in the queue now.
    pub queued_rows: usize,
}

fn view(app: &AppState, name: &str, policy: Option<ModelPolicy>) -> Result<ModelView, ApiError> {
    let versions = app.repository.versions(name)?;
    let active_version = app.repository.active(name).unwrap_or_default();
    let traffic = app.repository.traffic(name);
    let shadow = traffic
        .as_ref()
        .and_then(|t| t.shadow)
        .and_then(|v| app.shadows.figures(name, v));
    Ok(ModelView {
        name: name.to_string(),
        active_version,
        previous_version: policy.and_then(|p| p.previous_version),
        traffic: TrafficBody {
            split: traffic
                .as_ref()
                .map(|t| {
                    t.split
                        .iter()
                        .map(|&(version, percent)| SplitEntry { version, percent })
                        .collect()
                })
                .unwrap_or_default(),
            shadow: traffic.as_ref().and_then(|t| t.shadow),
        },
        shadow,
        versions: versions.iter().map(|m| version_view(app, m)).collect(),
    })
}

pub fn version_view(app: &AppState, model: &Model) -> VersionView {
    let m = model.manifest();
    let dir = mercator_engine::import::served_dir(&app.data_dir)
        .join(&m.name)
        .join(m.version.to_string());
    let artifact = mercator_engine::import::artifact_of(&dir);
    let s = model.stats().snapshot();
    let mean_us = |d: &mercator_engine::stats::Duration2| {
        if d.count == 0 {
            0.0
        } else {
            d.ns as f64 / d.count as f64 / 1000.0
        }
    };
    VersionView {
        version: m.version,
        state: if model.is_ready() {
            "ready"
        } else {
            "unavailable"
        },
        kind: format!("{:?}", m.kind).to_lowercase(),
        description: m.description.clone(),
        instances: m.instances.count,
        max_batch_size: m.batching.max_batch_size,
        sha256: artifact.as_ref().map(|a| a.0.clone()),
        size_bytes: artifact.map(|a| a.1),
        stats: VersionStats {
            requests: s.success.count + s.fail.count,
            failures: s.fail.count,
            inferences: s.inference_count,
            executions: s.execution_count,
            mean_queue_us: mean_us(&s.queue),
            mean_compute_us: mean_us(&s.compute_infer),
            queued_rows: model.queue_rows(),
        },
    }
}

/// Every served model, its versions with live figures, and the active one (admin).
#[utoipa::path(get, path = "/api/v1/models", tag = "models", security(("api_key" = [])),
    responses((status = 200, body = Vec<ModelView>), (status = "4XX", body = ErrorEnvelope)))]
async fn list_models(
    State(app): State<AppState>,
    _: Auth<Admin>,
) -> Result<Json<Vec<ModelView>>, ApiError> {
    let policies: std::collections::HashMap<String, ModelPolicy> = app
        .store
        .model_policies()
        .await
        .map_err(ApiError::store("model"))?
        .into_iter()
        .collect();
    let mut names: Vec<String> = app
        .repository
        .all()
        .iter()
        .map(|m| m.manifest().name.clone())
        .collect();
    names.dedup();
    names
        .iter()
        .map(|name| view(&app, name, policies.get(name).copied()))
        .collect::<Result<Vec<_>, _>>()
        .map(Json)
}

#[utoipa::path(get, path = "/api/v1/models/{name}", tag = "models", params(("name" = String, Path)),
    security(("api_key" = [])),
    responses((status = 200, body = ModelView), (status = "4XX", body = ErrorEnvelope)))]
async fn get_model(
    State(app): State<AppState>,
    _: Auth<Admin>,
    Path(name): Path<String>,
) -> Result<Json<ModelView>, ApiError> {
    let policy = app
        .store
        .model_policy(&name)
        .await
        .map_err(ApiError::store("model"))?;
    Ok(Json(view(&app, &name, policy)?))
}

/// Make a loaded version the one that answers requests naming none, atomically: requests in flight
/// finish on the version they started on (platform owner).
#[utoipa::path(post, path = "/api/v1/models/{name}/versions/{version}/activate", tag = "models",
    params(("name" = String, Path), ("version" = u64, Path)), security(("api_key" = [])),
    responses((status = 200, body = ModelView), (status = "4XX", body = ErrorEnvelope)))]
async fn activate(
    State(app): State<AppState>,
    caller: Auth<Owner>,
    Path((name, version)): Path<(String, u64)>,
) -> Result<Json<ModelView>, ApiError> {
    switch(&app, &caller, &name, version, "model.activate").await
}

/// Return to the version active before the last switch (platform owner); 409 when there is none.
#[utoipa::path(post, path = "/api/v1/models/{name}/rollback", tag = "models",
    params(("name" = String, Path)), security(("api_key" = [])),
    responses((status = 200, body = ModelView), (status = "4XX", body = ErrorEnvelope)))]
async fn rollback(
    State(app): State<AppState>,
    caller: Auth<Owner>,
    Path(name): Path<String>,
) -> Result<Json<ModelView>, ApiError> {
    let policy = app
        .store
        .model_policy(&name)
        .await
        .map_err(ApiError::store("model"))?;
    let Some(previous) = policy.and_then(|p| p.previous_version) else {
        app.repository.versions(&name)?;
        return Err(ApiError::Conflict(format!(
            "{name} has no earlier active version to roll back to"
        )));
    };
    switch(&app, &caller, &name, previous, "model.rollback").await
}

/// Retire a version that is not active (platform owner): it stops serving once the requests holding it
/// are answered, its sessions are freed, and it leaves the served repository (409 for the active one).
#[utoipa::path(delete, path = "/api/v1/models/{name}/versions/{version}", tag = "models",
    params(("name" = String, Path), ("version" = u64, Path)), security(("api_key" = [])),
    responses((status = 204), (status = "4XX", body = ErrorEnvelope)))]
async fn delete_version(
    State(app): State<AppState>,
    caller: Auth<Owner>,
    Path((name, version)): Path<(String, u64)>,
) -> Result<axum::http::StatusCode, ApiError> {
    let in_traffic = app
        .repository
        .traffic(&name)
        .is_some_and(|t| t.split.iter().any(|(v, _)| *v == version) || t.shadow == Some(version));
    if app.repository.active(&name) == Some(version) || in_traffic {
        return Err(ApiError::Conflict(format!(
            "version {version} of {name} takes traffic (active, in the split or the shadow); change that first"
        )));
    }
    let before = view(&app, &name, None)?;
    let before = before.versions.into_iter().find(|v| v.version == version);
    app.repository.remove_version(&name, version)?;
    let dir = mercator_engine::import::served_dir(&app.data_dir)
        .join(&name)
        .join(version.to_string());
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        tracing::warn!(error = %e, dir = %dir.display(), "the retired version's folder stays");
    }
    let target = ("model", name.as_str());
    audit::record(&app, &caller, "model.retire", target, before, None::<()>).await;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

/// Records imported versions in the store's registry (who: `import`).
pub async fn record_imports(
    store: &mercator_store::Store,
    data: &std::path::Path,
    imported: &[(String, u64)],
) {
    for (name, version) in imported {
        let dir = mercator_engine::import::served_dir(data)
            .join(name)
            .join(version.to_string());
        if let Some((sha, size)) = mercator_engine::import::artifact_of(&dir) {
            if let Err(e) = store
                .record_model_version(name, *version, &sha, size, "import")
                .await
            {
                tracing::warn!(model = %name, version, error = %e, "the version could not be recorded");
            }
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct VersionDetail {
    #[serde(flatten)]
    pub served: VersionView,
    /// The manifest as served (model.toml, as JSON).
    #[schema(value_type = Object)]
    pub manifest: serde_json::Value,
    /// When and by whom it was registered.
    pub registered: Option<mercator_store::VersionRecord>,
}

/// One version: manifest, artifact, registration and live figures (admin).
#[utoipa::path(get, path = "/api/v1/models/{name}/versions/{version}", tag = "models",
    params(("name" = String, Path), ("version" = u64, Path)), security(("api_key" = [])),
    responses((status = 200, body = VersionDetail), (status = "4XX", body = ErrorEnvelope)))]
async fn get_version(
    State(app): State<AppState>,
    _: Auth<Admin>,
    Path((name, version)): Path<(String, u64)>,
) -> Result<Json<VersionDetail>, ApiError> {
    let model = app.repository.get(&name, Some(&version.to_string()))?;
    let registered = app
        .store
        .model_version_record(&name, version)
        .await
        .map_err(ApiError::store("model"))?;
    Ok(Json(VersionDetail {
        served: version_view(&app, &model),
        manifest: serde_json::to_value(model.manifest()).unwrap_or_default(),
        registered,
    }))
}

/// Share the model's unnamed requests between ready versions (a 90/10 canary) and copy them to a shadow
/// version whose answers are compared and never returned (platform owner). Kept across restarts; an
/// activation or rollback ends the split (the shadow stays).
#[utoipa::path(put, path = "/api/v1/models/{name}/traffic", tag = "models",
    params(("name" = String, Path)), request_body = TrafficBody, security(("api_key" = [])),
    responses((status = 200, body = ModelView), (status = "4XX", body = ErrorEnvelope)))]
async fn set_traffic(
    State(app): State<AppState>,
    caller: Auth<Owner>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<TrafficBody>,
) -> Result<Json<ModelView>, ApiError> {
    let total: u32 = body.split.iter().map(|e| e.percent).sum();
    if !body.split.is_empty() && total != 100 {
        return Err(ApiError::Validation {
            message: format!("the split adds up to {total}, not 100"),
            details: mercator_store::FieldErrors::one("split", "the percents must add up to 100"),
        });
    }
    let policy = mercator_store::TrafficPolicy {
        split: body.split.iter().map(|e| (e.version, e.percent)).collect(),
        shadow: body.shadow,
    };
    let before = view(&app, &name, None)?.traffic;
    app.repository
        .set_traffic(&name, policy.split.clone(), policy.shadow)?;
    let active = app.repository.active(&name).unwrap_or_default();
    app.store
        .set_model_traffic(&name, active, &policy)
        .await
        .map_err(ApiError::store("model"))?;
    let stored = app
        .store
        .model_policy(&name)
        .await
        .map_err(ApiError::store("model"))?;
    let after = view(&app, &name, stored)?;
    let target = ("model", name.as_str());
    audit::record(
        &app,
        &caller,
        "model.traffic",
        target,
        Some(before),
        Some(&after.traffic),
    )
    .await;
    Ok(Json(after))
}

/// Activates `version` in the engine and records it (and what it replaced) in the store and the audit log.
async fn switch(
    app: &AppState,
    caller: &crate::auth::Principal,
    name: &str,
    version: u64,
    action: &str,
) -> Result<Json<ModelView>, ApiError> {
    let before = view(app, name, None)?.active_version;
    let previous = app.repository.activate(name, version)?;
    let policy = ModelPolicy {
        active_version: version,
        previous_version: Some(previous).filter(|p| *p != version),
    };
    let shadow = app.repository.traffic(name).and_then(|t| t.shadow);
    let traffic = mercator_store::TrafficPolicy {
        split: Vec::new(),
        shadow,
    };
    let stored = match app.store.set_model_policy(name, policy).await {
        Ok(()) => app.store.set_model_traffic(name, version, &traffic).await,
        Err(e) => Err(e),
    };
    if let Err(e) = stored {
        // Serve what the store says, or the store and the engine disagree after a restart.
        let _ = app.repository.activate(name, previous);
        return Err(ApiError::store("model")(e));
    }
    let target = ("model", name);
    let state = |v: u64| Some(serde_json::json!({ "active_version": v }));
    audit::record(app, caller, action, target, state(before), state(version)).await;
    Ok(Json(view(app, name, Some(policy))?))
}
