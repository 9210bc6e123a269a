//! The model repository on disk: `<dir>/<name>/<version>/{model.onnx, model.toml}`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use crate::backend::{Backend, OrtBackend};
use crate::manifest::Manifest;
use crate::{EngineError, Model, Runtime};

/// Every served model version, by name and version number.
pub struct Repository {
    models: BTreeMap<String, BTreeMap<u64, Model>>,
}

impl Repository {
    /// Loads, checks and warms up every model version under `dir`. Any error stops the start: a server that
    /// silently serves fewer models than its repository holds is worse than one that says why it won't start.
    pub fn load(runtime: &Runtime, dir: &Path) -> Result<Repository, EngineError> {
        let mut repo = Repository {
            models: BTreeMap::new(),
        };
        let entries = std::fs::read_dir(dir).map_err(|e| EngineError::InvalidModel {
            path: dir.to_path_buf(),
            reason: format!("cannot read the models directory: {e} (set --models-dir)"),
        })?;
        let mut version_dirs = Vec::new();
        for model_dir in entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()) {
            let Ok(versions) = std::fs::read_dir(&model_dir) else {
                continue;
            };
            for version_dir in versions.flatten().map(|e| e.path()) {
                if version_dir.join("model.toml").is_file() {
                    version_dirs.push(version_dir);
                }
            }
        }
        version_dirs.sort();
        for version_dir in version_dirs {
            let manifest = Manifest::from_file(&version_dir.join("model.toml"))?;
            let expected = (
                model_dir_name(&version_dir, 1),
                model_dir_name(&version_dir, 0),
            );
            if expected
                != (
                    Some(manifest.name.clone()),
                    Some(manifest.version.to_string()),
                )
            {
                return Err(EngineError::InvalidModel {
                    path: version_dir,
                    reason: format!(
                        "the manifest names {} version {}; the folder must be <models-dir>/{}/{}",
                        manifest.name, manifest.version, manifest.name, manifest.version
                    ),
                });
            }
            let onnx = version_dir.join("model.onnx");
            let backends = (0..manifest.instances.count)
                .map(|_| {
                    OrtBackend::load(runtime, &onnx, &manifest)
                        .map(|b| Box::new(b) as Box<dyn Backend>)
                })
                .collect::<Result<Vec<_>, _>>()?;
            tracing::info!(model = %manifest.name, version = manifest.version, instances = backends.len(), "loaded");
            repo.insert(Model::start(manifest, backends)?);
        }
        Ok(repo)
    }

    /// A repository of already started models (tests, and later the registry).
    pub fn from_models(models: impl IntoIterator<Item = Model>) -> Repository {
        let mut repo = Repository {
            models: BTreeMap::new(),
        };
        models.into_iter().for_each(|m| repo.insert(m));
        repo
    }

    fn insert(&mut self, model: Model) {
        let m = model.manifest();
        self.models
            .entry(m.name.clone())
            .or_default()
            .insert(m.version, model);
    }

    /// A model version; with no version, the newest.
    pub fn get(&self, name: &str, version: Option<&str>) -> Result<&Model, EngineError> {
        let versions = self
            .models
            .get(name)
            .ok_or_else(|| EngineError::ModelNotFound(name.to_string()))?;
        let not_found = || EngineError::VersionNotFound {
            model: name.to_string(),
            version: version.unwrap_or("").into(),
        };
        match version {
            None => versions.values().next_back().ok_or_else(not_found),
            Some(v) => v
                .parse::<u64>()
                .ok()
                .and_then(|v| versions.get(&v))
                .ok_or_else(not_found),
        }
    }

    /// Every version of one model, oldest first.
    pub fn versions(&self, name: &str) -> Result<impl Iterator<Item = &Model>, EngineError> {
        Ok(self
            .models
            .get(name)
            .ok_or_else(|| EngineError::ModelNotFound(name.to_string()))?
            .values())
    }

    /// Every model version, by name then version.
    pub fn all(&self) -> impl Iterator<Item = &Model> {
        self.models.values().flat_map(|v| v.values())
    }

    /// Closes every model: no new requests; what is queued runs without waiting for batch-mates.
    pub fn close(&self) {
        self.all().for_each(Model::close);
    }

    /// Drains every model: no new requests, everything queued answered, within `timeout` in all.
    pub fn drain(&self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        self.all()
            .map(|m| m.drain(deadline.saturating_duration_since(std::time::Instant::now())))
            .filter(|drained| !drained)
            .count()
            == 0
    }
}

fn model_dir_name(version_dir: &Path, up: usize) -> Option<String> {
    version_dir
        .ancestors()
        .nth(up)?
        .file_name()?
        .to_str()
        .map(str::to_string)
}
