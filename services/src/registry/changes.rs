//! Changes to what serves: activation and rollback, the traffic split and shadow, versions loaded,
//! unloaded and retired, models (re)loaded from --models-dir. The engine changes first and the store
//! records it; when the store cannot, the engine is put back, so a restart serves what the store says.

use std::collections::HashSet;
use std::path::Path;

use mercator_engine::{import, EngineError};
use mercator_store::{FieldErrors, ModelPolicy, Store, TrafficPolicy, VersionState};
use serde_json::json;

use super::{Changed, ModelEvent, ModelView, Registry, RegistryError, VersionView};

impl Registry {
    /// Makes a loaded version the one that answers requests naming none, atomically: requests in flight
    /// finish on the version they started on. Ends the split (the shadow stays).
    pub async fn activate(
        &self,
        name: &str,
        version: u64,
    ) -> Result<Changed<ModelView>, RegistryError> {
        self.switch(name, version, "model.activate").await
    }

    /// Returns to the version active before the last switch; a conflict when there is none.
    pub async fn rollback(&self, name: &str) -> Result<Changed<ModelView>, RegistryError> {
        let policy = self.store.model_policy(name).await?;
        let Some(previous) = policy.and_then(|p| p.previous_version) else {
            self.view(name).await?;
            return Err(RegistryError::Conflict(format!(
                "{name} has no earlier active version to roll back to"
            )));
        };
        self.switch(name, previous, "model.rollback").await
    }

    /// Shares the model's unnamed requests between ready versions (`split`: version and percent, adding up
    /// to 100; empty: all to the active version) and copies them to `shadow`.
    pub async fn set_traffic(
        &self,
        name: &str,
        split: Vec<(u64, u32)>,
        shadow: Option<u64>,
    ) -> Result<Changed<ModelView>, RegistryError> {
        // Summed wide: percents near u32::MAX would wrap to 100 in u32.
        let total: u64 = split.iter().map(|(_, p)| u64::from(*p)).sum();
        if !split.is_empty() && total != 100 {
            return Err(RegistryError::Invalid {
                message: format!("the split adds up to {total}, not 100"),
                details: FieldErrors::one("split", "the percents must add up to 100"),
            });
        }
        let policy = TrafficPolicy { split, shadow };
        for version in policy.split.iter().map(|(v, _)| v).chain(&policy.shadow) {
            self.usable(name, *version).await?;
        }
        let before = self.view(name).await?.traffic;
        self.repository
            .set_traffic(name, policy.split.clone(), policy.shadow)?;
        let active = self.repository.active(name).unwrap_or_default();
        self.store.set_model_traffic(name, active, &policy).await?;
        let after = self.view(name).await?;
        let event = ModelEvent::new("model.traffic", name, Some(before), Some(&after.traffic));
        Ok(self.announce(after, event))
    }

    /// Loads a registered version into the engine: sessions built and warmed beside what serves; it then
    /// answers requests that name it. Kept across restarts.
    pub async fn load(
        &self,
        name: &str,
        version: u64,
    ) -> Result<Changed<VersionView>, RegistryError> {
        self.usable(name, version).await?;
        let (repository, model) = (self.repository.clone(), name.to_string());
        tokio::task::spawn_blocking(move || repository.load_version(&model, version))
            .await
            .map_err(|e| RegistryError::internal("loading a version", e))??;
        self.store
            .set_model_version_loaded(name, version, true)
            .await?;
        let model = self.repository.get(name, Some(&version.to_string()))?;
        let state = |loaded: bool| Some(json!({ "version": version, "loaded": loaded }));
        let event = ModelEvent::new("model.load", name, state(false), state(true));
        Ok(self.announce(self.version_view(&model), event))
    }

    /// Unloads a version that takes no traffic: requests holding it finish, then its sessions are freed;
    /// it stays registered and can be loaded again. Kept across restarts.
    pub async fn unload(
        &self,
        name: &str,
        version: u64,
    ) -> Result<Changed<ModelView>, RegistryError> {
        self.refuse_if_in_traffic(name, version)?;
        self.repository.remove_version(name, version)?;
        self.store
            .set_model_version_loaded(name, version, false)
            .await?;
        let state = |loaded: bool| Some(json!({ "version": version, "loaded": loaded }));
        let event = ModelEvent::new("model.unload", name, state(true), state(false));
        Ok(self.announce(self.view(name).await?, event))
    }

    /// Retires a version that takes no traffic: it stops serving once the requests holding it are
    /// answered, its sessions are freed, and it leaves the served repository. The registry keeps it as
    /// retired, so a later import from --models-dir does not bring it back.
    pub async fn retire(&self, name: &str, version: u64) -> Result<Changed<()>, RegistryError> {
        self.refuse_if_in_traffic(name, version)?;
        let before = self.view(name).await?;
        let Some(before) = before
            .versions
            .into_iter()
            .find(|v| v.version == version && v.state != VersionState::Retired)
        else {
            return Err(EngineError::VersionNotFound {
                model: name.to_string(),
                version: version.to_string(),
            }
            .into());
        };
        match self.repository.remove_version(name, version) {
            Ok(()) | Err(EngineError::VersionNotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        self.store.retire_model_version(name, version).await?;
        let dir = self.version_dir(name, version);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(error = %e, dir = %dir.display(), "the retired version's folder stays");
        }
        let event = ModelEvent::new("model.retire", name, Some(before), None::<()>);
        Ok(self.announce((), event))
    }

    /// (Re)loads a model's versions: new versions in --models-dir (not retired ones) join the served
    /// repository, then every version of the model is loaded beside the ones serving and swapped in;
    /// requests in flight finish on the versions they started on. Kept across restarts.
    pub async fn load_model(&self, name: &str) -> Result<Changed<()>, RegistryError> {
        let before = self.served_versions(name);
        let retired: HashSet<u64> = self
            .store
            .model_versions(Some(name))
            .await?
            .iter()
            .filter(|r| r.state == VersionState::Retired)
            .map(|r| r.version)
            .collect();
        let (repository, model) = (self.repository.clone(), name.to_string());
        let (source, data) = (self.models_source.clone(), self.data_dir.clone());
        let imported = tokio::task::spawn_blocking(move || {
            let skip = |_: &str, v: u64| retired.contains(&v);
            let imported = import::import(&source, &data, Some(&model), &skip)?;
            repository.load_model(&model).map(|()| imported)
        })
        .await
        .map_err(|e| RegistryError::internal("loading a model", e))??;
        record_imports(&self.store, &self.data_dir, &imported).await;
        for model in self.repository.versions(name).unwrap_or_default() {
            self.store
                .set_model_version_loaded(name, model.manifest().version, true)
                .await?;
        }
        let after = self.served_versions(name);
        let event = ModelEvent::new("model.load", name, before, after);
        Ok(self.announce((), event))
    }

    /// Stops serving a model: requests in flight finish, later ones get `model_not_found`. Kept across
    /// restarts.
    pub async fn unload_model(&self, name: &str) -> Result<Changed<()>, RegistryError> {
        let before = self.served_versions(name);
        let versions = self.repository.versions(name)?;
        self.repository.unload_model(name)?;
        for model in versions {
            self.store
                .set_model_version_loaded(name, model.manifest().version, false)
                .await?;
        }
        let event = ModelEvent::new("model.unload", name, before, None::<()>);
        Ok(self.announce((), event))
    }

    /// Serves what the store records for `name` after another replica changed it: versions loaded and
    /// unloaded, the active version, the traffic split and shadow. Idempotent (it reads the store's
    /// state, not the change), and nothing is announced: the replica that made the change did.
    pub async fn follow(&self, name: &str) -> Result<(), RegistryError> {
        let records = self.store.model_versions(Some(name)).await?;
        let wanted =
            |r: &&mercator_store::VersionRecord| r.state == VersionState::Ready && r.loaded;
        let served = |v: u64| self.repository.get(name, Some(&v.to_string())).is_ok();
        for record in records.iter().filter(wanted).filter(|r| !served(r.version)) {
            if !self.version_dir(name, record.version).is_dir() {
                match self.fetch(record).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(model = %name, version = record.version,
                            "another replica serves a version whose files the store does not keep");
                        continue;
                    }
                    Err(RegistryError::Store(e)) => return Err(e.into()),
                    Err(e) => {
                        tracing::warn!(model = %name, version = record.version, error = %e,
                            "a version uploaded to another replica cannot be fetched");
                        continue;
                    }
                }
            }
            let (repository, model, version) =
                (self.repository.clone(), name.to_string(), record.version);
            tokio::task::spawn_blocking(move || repository.load_version(&model, version))
                .await
                .map_err(|e| RegistryError::internal("loading a version", e))??;
        }
        if !records.is_empty() && !records.iter().any(|r| wanted(&r)) {
            match self.repository.unload_model(name) {
                Ok(()) | Err(EngineError::ModelNotFound(_)) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(policy) = self.store.model_policy(name).await? {
            if self
                .repository
                .active(name)
                .is_some_and(|a| a != policy.active_version)
            {
                self.repository.activate(name, policy.active_version)?;
            }
        }
        let traffic = self.store.model_traffic(name).await?.unwrap_or_default();
        let current = self.repository.traffic(name);
        let (split, shadow) = current
            .as_deref()
            .map_or((&[][..], None), |t| (&t.split[..], t.shadow));
        if split != traffic.split || shadow != traffic.shadow {
            self.repository
                .set_traffic(name, traffic.split, traffic.shadow)?;
        }
        for record in records.iter().filter(|r| !wanted(r) && served(r.version)) {
            if let Err(e) = self.repository.remove_version(name, record.version) {
                tracing::warn!(model = %name, version = record.version, error = %e,
                    "a version another replica stopped serving still serves here");
            }
        }
        Ok(())
    }

    /// Brings a version uploaded to another replica into this one's data directory from the files the
    /// store keeps, checked against the artifact the registry recorded. False when the store keeps none.
    async fn fetch(&self, record: &mercator_store::VersionRecord) -> Result<bool, RegistryError> {
        let files = self.store.model_files(&record.name, record.version).await?;
        if files.is_empty() {
            return Ok(false);
        }
        let (data, name, version) = (self.data_dir.clone(), record.name.clone(), record.version);
        let source = data.join("staging").join(format!(
            "fetch-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let fetched = tokio::task::spawn_blocking(move || {
            let dir = source.join(&name).join(version.to_string());
            let result = std::fs::create_dir_all(&dir)
                .and_then(|()| {
                    files
                        .iter()
                        .try_for_each(|(file, bytes)| std::fs::write(dir.join(file), bytes))
                })
                .map_err(|e| RegistryError::internal("writing a fetched version", e))
                .and_then(|()| {
                    let only = |_: &str, v: u64| v != version;
                    import::import(&source, &data, Some(&name), &only).map_err(RegistryError::from)
                });
            let _ = std::fs::remove_dir_all(&source);
            result.map(|_| {
                import::artifact_of(
                    &import::served_dir(&data)
                        .join(&name)
                        .join(version.to_string()),
                )
            })
        })
        .await
        .map_err(|e| RegistryError::internal("fetching a version", e))??;
        match fetched {
            Some((sha, _)) if Some(&sha) == record.sha256.as_ref() => Ok(true),
            other => {
                let dir = self.version_dir(&record.name, record.version);
                let _ = std::fs::remove_dir_all(&dir);
                Err(RegistryError::internal(
                    "fetching a version",
                    format!(
                        "its artifact is {:?}, the registry recorded {:?}",
                        other.map(|o| o.0),
                        record.sha256
                    ),
                ))
            }
        }
    }

    /// The versions of a model being served, for the audit log (`None`: not served).
    fn served_versions(&self, name: &str) -> Option<serde_json::Value> {
        let versions = self.repository.versions(name).ok()?;
        Some(
            json!({ "served_versions": versions.iter().map(|m| m.manifest().version).collect::<Vec<_>>() }),
        )
    }

    /// Activates `version` in the engine and records it (and what it replaced) in the store; the engine is
    /// put back when the store cannot record it.
    async fn switch(
        &self,
        name: &str,
        version: u64,
        action: &'static str,
    ) -> Result<Changed<ModelView>, RegistryError> {
        self.usable(name, version).await?;
        let before = self.view(name).await?.active_version;
        if self
            .repository
            .get(name, Some(&version.to_string()))
            .is_err()
            && self
                .store
                .model_version_record(name, version)
                .await?
                .is_some()
        {
            return Err(RegistryError::Conflict(format!(
                "version {version} of {name} is not loaded; load it first"
            )));
        }
        let previous = self.repository.activate(name, version)?;
        let policy = ModelPolicy {
            active_version: version,
            previous_version: Some(previous).filter(|p| *p != version),
        };
        let shadow = self.repository.traffic(name).and_then(|t| t.shadow);
        let traffic = TrafficPolicy {
            split: Vec::new(),
            shadow,
        };
        let stored = match self.store.set_model_policy(name, policy).await {
            Ok(()) => self.store.set_model_traffic(name, version, &traffic).await,
            Err(e) => Err(e),
        };
        if let Err(e) = stored {
            // Serve what the store says, or the store and the engine disagree after a restart.
            let _ = self.repository.activate(name, previous);
            return Err(e.into());
        }
        let state = |v: u64| Some(json!({ "active_version": v }));
        let event = ModelEvent::new(action, name, state(before), state(version));
        Ok(self.announce(self.view(name).await?, event))
    }

    /// A conflict unless the version takes no traffic (not active, not in the split, not the shadow).
    fn refuse_if_in_traffic(&self, name: &str, version: u64) -> Result<(), RegistryError> {
        let in_traffic = self.repository.traffic(name).is_some_and(|t| {
            t.split.iter().any(|(v, _)| *v == version) || t.shadow == Some(version)
        });
        if self.repository.active(name) == Some(version) || in_traffic {
            return Err(RegistryError::Conflict(format!(
                "version {version} of {name} takes traffic (active, in the split or the shadow); change that first"
            )));
        }
        Ok(())
    }

    /// A conflict for a version the registry holds as failed, validating or retired (the engine answers
    /// for one it does not know).
    async fn usable(&self, name: &str, version: u64) -> Result<(), RegistryError> {
        match self.store.model_version_record(name, version).await? {
            Some(r) if r.state == VersionState::Ready => Ok(()),
            Some(r) => Err(RegistryError::Conflict(format!(
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
}

/// Records imported versions in the store's registry (who: `import`).
pub async fn record_imports(store: &Store, data: &Path, imported: &[(String, u64)]) {
    for (name, version) in imported {
        let dir = import::served_dir(data)
            .join(name)
            .join(version.to_string());
        if let Some((sha, size)) = import::artifact_of(&dir) {
            if let Err(e) = store
                .record_model_version(name, *version, &sha, size, "import")
                .await
            {
                tracing::warn!(model = %name, version, error = %e, "the version could not be recorded");
            }
        }
    }
}
