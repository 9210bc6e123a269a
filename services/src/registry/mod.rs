//! The model registry: what the engine serves and the store records, kept in step. Versions are uploaded
//! (validated in a staging folder before anything serves them), activated and rolled back, shared between
//! versions by a traffic split with a shadow, loaded, unloaded and retired; every change is kept in the
//! store so a restart serves as it was left, and announced to every organization as a [`ModelEvent`].
//! Models are the platform's, shared by every organization.
//!
//! - `changes.rs`: activate, rollback, traffic, load and unload, retire, imports.
//! - `upload.rs`: a new version from its files, validated, then served.

mod changes;
mod upload;

use std::path::PathBuf;
use std::sync::Arc;

use mercator_engine::{import, EngineError, Model, Repository};
use mercator_store::{FieldErrors, ModelPolicy, Store, StoreError, VersionRecord, VersionState};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::events::{Fanout, Notification};
use crate::shadow::Shadows;

pub use changes::record_imports;
pub use upload::{invalid, Golden, GoldenOutput, NewVersion};

/// Why a registry change or read was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The store's answer about a model (not found, ...).
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The change does not fit the model's state (a version in traffic, nothing to roll back to, ...).
    #[error("{0}")]
    Conflict(String),
    /// A value that breaks a rule, by field.
    #[error("{message}")]
    Invalid {
        message: String,
        details: FieldErrors,
    },
    /// An upload that does not pass validation; nothing was served.
    #[error("the upload failed validation: {0}")]
    InvalidModel(String),
    /// The server's own failure, named for what failed (staging an upload, a task).
    #[error("{what}: {detail}")]
    Internal { what: &'static str, detail: String },
}

impl RegistryError {
    pub fn code(&self) -> &'static str {
        match self {
            RegistryError::Engine(e) => e.code(),
            RegistryError::Store(e) => e.code(),
            RegistryError::Conflict(_) => "conflict",
            RegistryError::Invalid { .. } => "validation_error",
            RegistryError::InvalidModel(_) => "invalid_model",
            RegistryError::Internal { .. } => "internal",
        }
    }

    fn internal(what: &'static str, e: impl std::fmt::Display) -> RegistryError {
        RegistryError::Internal {
            what,
            detail: e.to_string(),
        }
    }
}

/// A change to a model, as the audit log records it and every organization hears of it.
#[derive(Debug, Clone, Serialize)]
pub struct ModelEvent {
    /// `model.activate`, `model.rollback`, `model.traffic`, `model.load`, `model.unload`, `model.retire`,
    /// `model.upload`.
    pub action: &'static str,
    pub model: String,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

impl ModelEvent {
    fn new(
        action: &'static str,
        model: &str,
        before: Option<impl Serialize>,
        after: Option<impl Serialize>,
    ) -> ModelEvent {
        ModelEvent {
            action,
            model: model.to_string(),
            before: before.and_then(|b| serde_json::to_value(b).ok()),
            after: after.and_then(|a| serde_json::to_value(a).ok()),
        }
    }

    /// On `/ws/notifications`: `{"type": "model", action, model, before, after, at}` (not who made it).
    fn notification(&self) -> Notification {
        Arc::new(serde_json::json!({
            "type": "model", "action": self.action, "model": self.model, "before": self.before,
            "after": self.after, "at": chrono::Utc::now(),
        }))
    }
}

/// A change made: what it answers, and the event it was.
pub struct Changed<T> {
    pub answer: T,
    pub event: ModelEvent,
}

pub struct Registry {
    repository: Arc<Repository>,
    store: Store,
    /// The data directory that serves models, and --models-dir they are imported from.
    data_dir: PathBuf,
    models_source: PathBuf,
    shadows: Arc<Shadows>,
    notifications: Arc<Fanout<Notification>>,
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
    /// How many ONNX Runtime calls ran each batch size (rows), by size. JSON keys are strings: the schema
    /// says so (an integer key schema no JSON object can meet).
    #[schema(value_type = std::collections::BTreeMap<String, u64>)]
    pub batch_sizes: std::collections::BTreeMap<usize, u64>,
    /// Rows waiting in the queue now.
    pub queued_rows: usize,
}

#[derive(Serialize, ToSchema)]
pub struct VersionDetail {
    #[serde(flatten)]
    pub served: VersionView,
    /// The manifest (model.toml, as JSON), while the version's folder is there.
    #[schema(value_type = Option<Object>)]
    pub manifest: Option<serde_json::Value>,
    /// When and by whom it was registered.
    pub registered: Option<VersionRecord>,
    /// Its reference profile (`profile.json`: each feature's and output's bins, counts and moments over
    /// the reference rows), when it has one: what monitoring compares live traffic with.
    #[schema(value_type = Option<Object>)]
    pub reference_profile: Option<mercator_features::profile::Profile>,
}

impl Registry {
    pub fn new(
        repository: Arc<Repository>,
        store: Store,
        data_dir: PathBuf,
        models_source: PathBuf,
        shadows: Arc<Shadows>,
        notifications: Arc<Fanout<Notification>>,
    ) -> Registry {
        Registry {
            repository,
            store,
            data_dir,
            models_source,
            shadows,
            notifications,
        }
    }

    /// Every organization hears of a change; answers it with the event.
    fn announce<T>(&self, answer: T, event: ModelEvent) -> Changed<T> {
        self.notifications.send_all(event.notification());
        Changed { answer, event }
    }

    /// Every registered model, its versions with their states and live figures, and the active one.
    pub async fn list(&self) -> Result<Vec<ModelView>, RegistryError> {
        let policies: std::collections::HashMap<String, ModelPolicy> =
            self.store.model_policies().await?.into_iter().collect();
        let records = self.store.model_versions(None).await?;
        let mut names: Vec<String> = self
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
                self.compose(name, policies.get(name).copied(), &of_model)
            })
            .collect()
    }

    /// A model's view from the engine (what it serves) and the store (what is registered).
    pub async fn view(&self, name: &str) -> Result<ModelView, RegistryError> {
        let policy = self.store.model_policy(name).await?;
        let records = self.store.model_versions(Some(name)).await?;
        self.compose(name, policy, &records)
    }

    /// One version: state, manifest, artifact, registration and live figures.
    pub async fn version(&self, name: &str, version: u64) -> Result<VersionDetail, RegistryError> {
        let model = self.repository.get(name, Some(&version.to_string())).ok();
        let registered = self.store.model_version_record(name, version).await?;
        if model.is_none() && registered.is_none() {
            return Err(EngineError::VersionNotFound {
                model: name.to_string(),
                version: version.to_string(),
            }
            .into());
        }
        let served = self.describe(name, version, model.as_ref(), registered.as_ref());
        let manifest = manifest_of(&self.version_dir(name, version), model.as_ref());
        let reference_profile = std::fs::read(
            self.version_dir(name, version)
                .join(mercator_engine::PROFILE_FILE),
        )
        .ok()
        .and_then(|bytes| mercator_features::profile::Profile::parse(&bytes).ok());
        Ok(VersionDetail {
            served,
            manifest: manifest.and_then(|m| serde_json::to_value(m).ok()),
            registered,
            reference_profile,
        })
    }

    /// Where a served version's files are.
    fn version_dir(&self, name: &str, version: u64) -> PathBuf {
        import::served_dir(&self.data_dir)
            .join(name)
            .join(version.to_string())
    }

    fn compose(
        &self,
        name: &str,
        policy: Option<ModelPolicy>,
        records: &[VersionRecord],
    ) -> Result<ModelView, RegistryError> {
        let served = self.repository.versions(name).unwrap_or_default();
        if served.is_empty() && !records.iter().any(|r| r.state == VersionState::Ready) {
            return Err(EngineError::ModelNotFound(name.to_string()).into());
        }
        let active_version = self
            .repository
            .active(name)
            .or(policy.map(|p| p.active_version))
            .unwrap_or_default();
        let traffic = self.repository.traffic(name);
        let shadow = traffic
            .as_ref()
            .and_then(|t| t.shadow)
            .and_then(|v| self.shadows.figures(name, v));
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
                self.describe(name, v, model, record)
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
    pub fn version_view(&self, model: &Model) -> VersionView {
        let m = model.manifest();
        self.describe(&m.name, m.version, Some(model), None)
    }

    fn describe(
        &self,
        name: &str,
        version: u64,
        model: Option<&Model>,
        record: Option<&VersionRecord>,
    ) -> VersionView {
        let dir = self.version_dir(name, version);
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
