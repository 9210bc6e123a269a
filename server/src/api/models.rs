//! `/api/v1/models`: what the engine serves, which version answers requests that name none, and the
//! switch between versions (activate, rollback), kept in the store so a restart serves as it was left.
//! Models are the platform's, shared by every organization: any admin may read them, only the platform
//! owner may change them.

use axum::extract::{Path, State};
use axum::Json;
use mercator_engine::Model;
use mercator_store::{ModelPolicy, VersionRecord, VersionState};
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
        .routes(routes!(load_version))
        .routes(routes!(unload_version))
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
    /// validating, ready, failed or retired.
    pub state: VersionState,
    /// Why it failed validation.
    pub reason: Option<String>,
    /// Whether the engine holds it (sessions loaded, able to answer).
    pub loaded: bool,
    /// From the manifest, while the version's folder is there.
    pub kind: Option<String>,
    pub description: Option<String>,
    pub instances: Option<usize>,
    pub max_batch_size: Option<usize>,
    /// The ONNX file's SHA-256 (its name in the artifact store) and size in bytes.
    pub sha256: Option<String>,
    pub size_bytes: Option<u64>,
    /// Live figures since the version was loaded; none while it is not.
    pub stats: Option<VersionStats>,
}

#[derive(Serialize, ToSchema)]
pub struct VersionStats {
    pub requests: u64,
    pub failures: u64,
    /// Rows inferred.
    pub inferences: u64,
    /// ONNX Runtime calls (batches); inferences / executions is the mean batch size.
    pub executions: u64,
    /// Successful requests' time from admission to answer, in µs (within 12.5%); none before the first.
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub mean_queue_us: f64,
    pub mean_compute_us: f64,
    /// How many ONNX Runtime calls ran each batch size (rows), by size.
    pub batch_sizes: std::collections::BTreeMap<usize, u64>,
    /// Rows waiting in the queue now.
    pub queued_rows: usize,
}

/// A model's view from the engine (what it serves) and the store (what is registered).
async fn view(app: &AppState, name: &str) -> Result<ModelView, ApiError> {
    let policy = app
        .store
        .model_policy(name)
        .await
        .map_err(ApiError::store("model"))?;
    let records = app
        .store
        .model_versions(Some(name))
        .await
        .map_err(ApiError::store("model"))?;
    compose(app, name, policy, &records)
}

fn compose(
    app: &AppState,
    name: &str,
    policy: Option<ModelPolicy>,
    records: &[VersionRecord],
) -> Result<ModelView, ApiError> {
    let served = app.repository.versions(name).unwrap_or_default();
    if served.is_empty() && !records.iter().any(|r| r.state == VersionState::Ready) {
        return Err(ApiError::Engine(
            mercator_engine::EngineError::ModelNotFound(name.to_string()),
        ));
    }
    let active_version = app
        .repository
        .active(name)
        .or(policy.map(|p| p.active_version))
        .unwrap_or_default();
    let traffic = app.repository.traffic(name);
    let shadow = traffic
        .as_ref()
        .and_then(|t| t.shadow)
        .and_then(|v| app.shadows.figures(name, v));
    let mut numbers: Vec<u64> = served
        .iter()
        .map(|m| m.manifest().version)
        .chain(records.iter().map(|r| r.version))
        .collect();
    numbers.sort();
    numbers.dedup();
    let versions = numbers
        .into_iter()
        .map(|v| {
            let model = served.iter().find(|m| m.manifest().version == v);
            let record = records.iter().find(|r| r.version == v);
            describe(app, name, v, model, record)
        })
        .collect();
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
        versions,
    })
}

/// A served version's view (no registry record needed: the engine and its folder say it all).
pub fn version_view(app: &AppState, model: &Model) -> VersionView {
    let m = model.manifest();
    describe(app, &m.name, m.version, Some(model), None)
}

fn describe(
    app: &AppState,
    name: &str,
    version: u64,
    model: Option<&Model>,
    record: Option<&VersionRecord>,
) -> VersionView {
    let dir = mercator_engine::import::served_dir(&app.data_dir)
        .join(name)
        .join(version.to_string());
    let artifact = mercator_engine::import::artifact_of(&dir);
    let manifest = manifest_of(&dir, model);
    VersionView {
        version,
        state: record.map_or(VersionState::Ready, |r| r.state),
        reason: record.and_then(|r| r.reason.clone()),
        loaded: model.is_some_and(Model::is_ready),
        kind: manifest
            .as_ref()
            .map(|m| format!("{:?}", m.kind).to_lowercase()),
        description: manifest.as_ref().map(|m| m.description.clone()),
        instances: manifest.as_ref().map(|m| m.instances.count),
        max_batch_size: manifest.as_ref().map(|m| m.batching.max_batch_size),
        sha256: artifact
            .as_ref()
            .map(|a| a.0.clone())
            .or_else(|| record.and_then(|r| r.sha256.clone())),
        size_bytes: artifact
            .map(|a| a.1)
            .or_else(|| record.filter(|r| r.sha256.is_some()).map(|r| r.size_bytes)),
        stats: model.map(stats),
    }
}

/// A version's manifest: the served one, or its folder's while it is not loaded.
fn manifest_of(dir: &std::path::Path, model: Option<&Model>) -> Option<mercator_engine::Manifest> {
    match model {
        Some(m) => Some(m.manifest().clone()),
        None => mercator_engine::Manifest::from_file(&dir.join("model.toml")).ok(),
    }
}

fn stats(model: &Model) -> VersionStats {
    let live = model.stats();
    let s = live.snapshot();
    let mean_us = |d: &mercator_engine::stats::Duration2| {
        if d.count == 0 {
            0.0
        } else {
            d.ns as f64 / d.count as f64 / 1000.0
        }
    };
    VersionStats {
        requests: s.success.count + s.fail.count,
        failures: s.fail.count,
        inferences: s.inference_count,
        executions: s.execution_count,
        p50_us: live.latency.quantile(0.5),
        p99_us: live.latency.quantile(0.99),
        mean_queue_us: mean_us(&s.queue),
        mean_compute_us: mean_us(&s.compute_infer),
        batch_sizes: s
            .batches
            .iter()
            .map(|b| (b.batch_size, b.compute_infer.count))
            .collect(),
        queued_rows: model.queue_rows(),
    }
}

/// Every registered model, its versions with their states and live figures, and the active one (admin).
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
    let records = app
        .store
        .model_versions(None)
        .await
        .map_err(ApiError::store("model"))?;
    let mut names: Vec<String> = app
        .repository
        .all()
        .iter()
        .map(|m| m.manifest().name.clone())
        .chain(
            records
                .iter()
                .filter(|r| r.state == VersionState::Ready)
                .map(|r| r.name.clone()),
        )
        .collect();
    names.sort();
    names.dedup();
    names
        .iter()
        .map(|name| {
            let of_model: Vec<VersionRecord> = records
                .iter()
                .filter(|r| &r.name == name)
                .cloned()
                .collect();
            compose(&app, name, policies.get(name).copied(), &of_model)
        })
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
    Ok(Json(view(&app, &name).await?))
}

/// Make a loaded version the one that answers requests naming none, atomically: requests in flight
/// finish on the version they started on (platform owner). 409 for a version that failed validation,
/// is retired or is unloaded.
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
        view(&app, &name).await?;
        return Err(ApiError::Conflict(format!(
            "{name} has no earlier active version to roll back to"
        )));
    };
    switch(&app, &caller, &name, previous, "model.rollback").await
}

/// 409 unless the version takes no traffic (not active, not in the split, not the shadow).
fn refuse_if_in_traffic(app: &AppState, name: &str, version: u64) -> Result<(), ApiError> {
    let in_traffic = app
        .repository
        .traffic(name)
        .is_some_and(|t| t.split.iter().any(|(v, _)| *v == version) || t.shadow == Some(version));
    if app.repository.active(name) == Some(version) || in_traffic {
        return Err(ApiError::Conflict(format!(
            "version {version} of {name} takes traffic (active, in the split or the shadow); change that first"
        )));
    }
    Ok(())
}

/// 409 for a version the registry holds as failed, validating or retired; 404 for one it doesn't know.
async fn usable(app: &AppState, name: &str, version: u64) -> Result<(), ApiError> {
    let record = app
        .store
        .model_version_record(name, version)
        .await
        .map_err(ApiError::store("model"))?;
    match record {
        Some(r) if r.state == VersionState::Ready => Ok(()),
        Some(r) => Err(ApiError::Conflict(format!(
            "version {version} of {name} is {}{}",
            serde_json::to_value(r.state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            r.reason.map(|r| format!(": {r}")).unwrap_or_default()
        ))),
        // Served but never recorded (a repository built in-process): the engine decides.
        None => Ok(()),
    }
}

/// Retire a version that takes no traffic (platform owner): it stops serving once the requests holding
/// it are answered, its sessions are freed, and it leaves the served repository. The registry keeps it as
/// retired, so a later import from --models-dir does not bring it back (409 for one taking traffic).
#[utoipa::path(delete, path = "/api/v1/models/{name}/versions/{version}", tag = "models",
    params(("name" = String, Path), ("version" = u64, Path)), security(("api_key" = [])),
    responses((status = 204), (status = "4XX", body = ErrorEnvelope)))]
async fn delete_version(
    State(app): State<AppState>,
    caller: Auth<Owner>,
    Path((name, version)): Path<(String, u64)>,
) -> Result<axum::http::StatusCode, ApiError> {
    refuse_if_in_traffic(&app, &name, version)?;
    let before = view(&app, &name).await?;
    let Some(before) = before
        .versions
        .into_iter()
        .find(|v| v.version == version && v.state != VersionState::Retired)
    else {
        return Err(mercator_engine::EngineError::VersionNotFound {
            model: name,
            version: version.to_string(),
        }
        .into());
    };
    match app.repository.remove_version(&name, version) {
        Ok(()) | Err(mercator_engine::EngineError::VersionNotFound { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    app.store
        .retire_model_version(&name, version)
        .await
        .map_err(ApiError::store("model"))?;
    let dir = mercator_engine::import::served_dir(&app.data_dir)
        .join(&name)
        .join(version.to_string());
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        tracing::warn!(error = %e, dir = %dir.display(), "the retired version's folder stays");
    }
    let target = ("model", name.as_str());
    audit::record(
        &app,
        &caller,
        "model.retire",
        target,
        Some(before),
        None::<()>,
    )
    .await;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

/// Load a registered version into the engine (platform owner): sessions built and warmed beside what
/// serves; it then answers requests that name it. Kept across restarts.
#[utoipa::path(post, path = "/api/v1/models/{name}/versions/{version}/load", tag = "models",
    params(("name" = String, Path), ("version" = u64, Path)), security(("api_key" = [])),
    responses((status = 200, body = VersionView), (status = "4XX", body = ErrorEnvelope)))]
async fn load_version(
    State(app): State<AppState>,
    caller: Auth<Owner>,
    Path((name, version)): Path<(String, u64)>,
) -> Result<Json<VersionView>, ApiError> {
    usable(&app, &name, version).await?;
    let (repository, model) = (app.repository.clone(), name.clone());
    tokio::task::spawn_blocking(move || repository.load_version(&model, version))
        .await
        .map_err(|e| ApiError::from(mercator_engine::EngineError::Runtime(e.to_string())))??;
    app.store
        .set_model_version_loaded(&name, version, true)
        .await
        .map_err(ApiError::store("model"))?;
    let model = app.repository.get(&name, Some(&version.to_string()))?;
    let after = version_view(&app, &model);
    let target = ("model", name.as_str());
    let state = |loaded: bool| Some(serde_json::json!({ "version": version, "loaded": loaded }));
    audit::record(
        &app,
        &caller,
        "model.load",
        target,
        state(false),
        state(true),
    )
    .await;
    Ok(Json(after))
}

/// Unload a version that takes no traffic (platform owner): requests holding it finish, then its
/// sessions are freed; it stays registered and can be loaded again. Kept across restarts.
#[utoipa::path(post, path = "/api/v1/models/{name}/versions/{version}/unload", tag = "models",
    params(("name" = String, Path), ("version" = u64, Path)), security(("api_key" = [])),
    responses((status = 200, body = ModelView), (status = "4XX", body = ErrorEnvelope)))]
async fn unload_version(
    State(app): State<AppState>,
    caller: Auth<Owner>,
    Path((name, version)): Path<(String, u64)>,
) -> Result<Json<ModelView>, ApiError> {
    refuse_if_in_traffic(&app, &name, version)?;
    app.repository.remove_version(&name, version)?;
    app.store
        .set_model_version_loaded(&name, version, false)
        .await
        .map_err(ApiError::store("model"))?;
    let target = ("model", name.as_str());
    let state = |loaded: bool| Some(serde_json::json!({ "version": version, "loaded": loaded }));
    audit::record(
        &app,
        &caller,
        "model.unload",
        target,
        state(true),
        state(false),
    )
    .await;
    Ok(Json(view(&app, &name).await?))
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
    /// The manifest (model.toml, as JSON), while the version's folder is there.
    #[schema(value_type = Object)]
    pub manifest: Option<serde_json::Value>,
    /// When and by whom it was registered.
    pub registered: Option<VersionRecord>,
}

/// One version: state, manifest, artifact, registration and live figures (admin).
#[utoipa::path(get, path = "/api/v1/models/{name}/versions/{version}", tag = "models",
    params(("name" = String, Path), ("version" = u64, Path)), security(("api_key" = [])),
    responses((status = 200, body = VersionDetail), (status = "4XX", body = ErrorEnvelope)))]
async fn get_version(
    State(app): State<AppState>,
    _: Auth<Admin>,
    Path((name, version)): Path<(String, u64)>,
) -> Result<Json<VersionDetail>, ApiError> {
    let model = app.repository.get(&name, Some(&version.to_string())).ok();
    let registered = app
        .store
        .model_version_record(&name, version)
        .await
        .map_err(ApiError::store("model"))?;
    if model.is_none() && registered.is_none() {
        return Err(mercator_engine::EngineError::VersionNotFound {
            model: name,
            version: version.to_string(),
        }
        .into());
    }
    let served = describe(&app, &name, version, model.as_ref(), registered.as_ref());
    let dir = mercator_engine::import::served_dir(&app.data_dir)
        .join(&name)
        .join(version.to_string());
    let manifest = manifest_of(&dir, model.as_ref());
    Ok(Json(VersionDetail {
        served,
        manifest: manifest.and_then(|m| serde_json::to_value(m).ok()),
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
    // Summed wide: percents near u32::MAX would wrap to 100 in u32.
    let total: u64 = body.split.iter().map(|e| u64::from(e.percent)).sum();
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
    for version in policy.split.iter().map(|(v, _)| v).chain(&policy.shadow) {
        usable(&app, &name, *version).await?;
    }
    let before = view(&app, &name).await?.traffic;
    app.repository
        .set_traffic(&name, policy.split.clone(), policy.shadow)?;
    let active = app.repository.active(&name).unwrap_or_default();
    app.store
        .set_model_traffic(&name, active, &policy)
        .await
        .map_err(ApiError::store("model"))?;
    let after = view(&app, &name).await?;
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
    usable(app, name, version).await?;
    let before = view(app, name).await?.active_version;
    if app
        .repository
        .get(name, Some(&version.to_string()))
        .is_err()
        && app
            .store
            .model_version_record(name, version)
            .await
            .map_err(ApiError::store("model"))?
            .is_some()
    {
        return Err(ApiError::Conflict(format!(
            "version {version} of {name} is not loaded; load it first"
        )));
    }
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
    Ok(Json(view(app, name).await?))
}
