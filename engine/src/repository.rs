//! The model repository on disk, `<dir>/<name>/<version>/{model.onnx, model.toml}`, and the versions being
//! served from it.
//!
//! What is served is one immutable catalogue behind an `ArcSwap`: a request takes a `Model` handle from the
//! current catalogue and keeps it until it is answered. Loading a model builds its versions beside the ones
//! serving (sessions, warm-up), then swaps in a new catalogue; the versions it replaces are retired once
//! the last handle on them is gone (their queues then close, their workers finish what is queued, and their
//! sessions are freed). So a request never sees a half-loaded model, and none fails because of a swap.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::backend::{Backend, OrtBackend};
use crate::manifest::Manifest;
use crate::model::BackendFactory;
use crate::tap::{Tap, PROFILE_FILE};
use crate::{EngineError, Model, Runtime};

/// A model's loaded versions and the one that answers requests that name no version.
#[derive(Clone)]
struct Served {
    versions: BTreeMap<u64, Model>,
    active: u64,
    traffic: Option<Arc<Traffic>>,
}

impl Served {
    /// Versions just built: the newest is active.
    fn new(versions: BTreeMap<u64, Model>) -> Served {
        let active = versions.keys().next_back().copied().unwrap_or_default();
        Served {
            versions,
            active,
            traffic: None,
        }
    }

    /// The version a request that names none goes to: by the split when there is one, else the active one.
    fn pick(&self) -> u64 {
        match &self.traffic {
            Some(t) if !t.split.is_empty() => t.next(),
            _ => self.active,
        }
    }
}

/// How a model's unnamed requests are shared between versions, and which version shadows them.
#[derive(Debug)]
pub struct Traffic {
    /// (version, percent); the percents add up to 100.
    pub split: Vec<(u64, u32)>,
    /// Gets a copy of each unnamed request; its answers are compared, never returned.
    pub shadow: Option<u64>,
    /// Requests routed so far: request n goes where n mod 100 falls among the cumulative percents, so any
    /// 100 consecutive requests follow the split exactly.
    counter: std::sync::atomic::AtomicU64,
}

impl Traffic {
    pub fn new(split: Vec<(u64, u32)>, shadow: Option<u64>) -> Traffic {
        Traffic {
            split,
            shadow,
            counter: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn next(&self) -> u64 {
        // Spread each version's share over the hundred (a multiplicative walk) rather than in one run.
        let n = self
            .counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let slot = ((n % 100) * 37 % 100) as u32;
        let mut bound = 0;
        for (version, percent) in &self.split {
            bound += percent;
            if slot < bound {
                return *version;
            }
        }
        self.split.last().map_or(0, |(v, _)| *v)
    }
}

type Catalog = BTreeMap<String, Served>;

/// Every served model version, by name and version number.
pub struct Repository {
    served: ArcSwap<Catalog>,
    /// Where models are loaded from, when the repository has a directory.
    source: Option<(Runtime, PathBuf)>,
    /// Given to every version loaded with a reference profile beside its manifest.
    tap: Option<Tap>,
    /// One load or unload at a time.
    changing: Mutex<()>,
}

/// A model in the repository's directory and whether it is served (Triton's repository index).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    pub name: String,
    pub version: Option<u64>,
    /// READY or UNAVAILABLE.
    pub state: &'static str,
    pub reason: String,
}

impl Repository {
    /// Loads, checks and warms up every model version under `dir`. Any error stops the start: a server that
    /// silently serves fewer models than its repository holds is worse than one that says why it won't start.
    pub fn load(runtime: &Runtime, dir: &Path) -> Result<Repository, EngineError> {
        Self::load_except(runtime, dir, &|_, _| false, None)
    }

    /// As `load`, leaving out the versions `skip` names (the ones recorded as unloaded); a model with every
    /// version left out is not served (the index shows it unavailable). Versions with a reference profile
    /// are monitored through `tap`, when given.
    pub fn load_except(
        runtime: &Runtime,
        dir: &Path,
        skip: &dyn Fn(&str, u64) -> bool,
        tap: Option<Tap>,
    ) -> Result<Repository, EngineError> {
        let repo = Repository {
            served: ArcSwap::from_pointee(Catalog::new()),
            source: Some((runtime.clone(), dir.to_path_buf())),
            tap,
            changing: Mutex::new(()),
        };
        let mut catalog = Catalog::new();
        for name in model_names(dir)? {
            let versions = repo.build(&name, skip)?;
            if !versions.is_empty() {
                catalog.insert(name.clone(), Served::new(versions));
            }
        }
        repo.served.store(Arc::new(catalog));
        Ok(repo)
    }

    /// A repository of already started models, with no directory to load more from (tests).
    pub fn from_models(models: impl IntoIterator<Item = Model>) -> Repository {
        let mut versions: BTreeMap<String, BTreeMap<u64, Model>> = BTreeMap::new();
        for model in models {
            let m = model.manifest();
            versions
                .entry(m.name.clone())
                .or_default()
                .insert(m.version, model);
        }
        let catalog = versions
            .into_iter()
            .map(|(name, v)| (name, Served::new(v)))
            .collect();
        Repository {
            served: ArcSwap::from_pointee(catalog),
            source: None,
            tap: None,
            changing: Mutex::new(()),
        }
    }

    /// A model version; with no version, the active one.
    pub fn get(&self, name: &str, version: Option<&str>) -> Result<Model, EngineError> {
        let served = self.served.load();
        let model = served
            .get(name)
            .ok_or_else(|| EngineError::ModelNotFound(name.to_string()))?;
        let versions = &model.versions;
        let not_found = || EngineError::VersionNotFound {
            model: name.to_string(),
            version: version.unwrap_or("").into(),
        };
        match version {
            None => versions.get(&model.pick()).cloned().ok_or_else(not_found),
            Some(v) => v
                .parse::<u64>()
                .ok()
                .and_then(|v| versions.get(&v))
                .cloned()
                .ok_or_else(not_found),
        }
    }

    /// Every version of one model, oldest first.
    pub fn versions(&self, name: &str) -> Result<Vec<Model>, EngineError> {
        Ok(self
            .served
            .load()
            .get(name)
            .ok_or_else(|| EngineError::ModelNotFound(name.to_string()))?
            .versions
            .values()
            .cloned()
            .collect())
    }

    /// The version that answers requests naming none (when no split shares them).
    pub fn active(&self, name: &str) -> Option<u64> {
        self.served.load().get(name).map(|m| m.active)
    }

    /// The model's traffic split and shadow, if any.
    pub fn traffic(&self, name: &str) -> Option<Arc<Traffic>> {
        self.served.load().get(name).and_then(|m| m.traffic.clone())
    }

    /// The shadow version of a model, to copy an unnamed request to.
    pub fn shadow(&self, name: &str) -> Option<Model> {
        let served = self.served.load();
        let model = served.get(name)?;
        let version = model.traffic.as_ref()?.shadow?;
        model.versions.get(&version).cloned()
    }

    /// Shares the model's unnamed requests by `split` (percent per version, adding up to 100; empty: all to
    /// the active version) and copies them to `shadow`. Every version named must be loaded and ready.
    pub fn set_traffic(
        &self,
        name: &str,
        split: Vec<(u64, u32)>,
        shadow: Option<u64>,
    ) -> Result<(), EngineError> {
        let _changing = self.changing.lock().unwrap_or_else(|e| e.into_inner());
        let mut catalog = (**self.served.load()).clone();
        let model = catalog
            .get_mut(name)
            .ok_or_else(|| EngineError::ModelNotFound(name.to_string()))?;
        for version in split.iter().map(|(v, _)| v).chain(&shadow) {
            if !model.versions.get(version).is_some_and(Model::is_ready) {
                return Err(EngineError::VersionNotFound {
                    model: name.to_string(),
                    version: version.to_string(),
                });
            }
        }
        let total: u64 = split.iter().map(|(_, p)| u64::from(*p)).sum();
        if !split.is_empty() && total != 100 {
            return Err(EngineError::InvalidRequest(format!(
                "the split adds up to {total}, not 100"
            )));
        }
        model.traffic =
            (!split.is_empty() || shadow.is_some()).then(|| Arc::new(Traffic::new(split, shadow)));
        self.served.store(Arc::new(catalog));
        Ok(())
    }

    /// Makes a loaded version the one that answers requests naming none, at once: requests already
    /// holding the previous one finish on it. Returns the version that was active.
    pub fn activate(&self, name: &str, version: u64) -> Result<u64, EngineError> {
        let _changing = self.changing.lock().unwrap_or_else(|e| e.into_inner());
        let mut catalog = (**self.served.load()).clone();
        let model = catalog
            .get_mut(name)
            .ok_or_else(|| EngineError::ModelNotFound(name.to_string()))?;
        if !model.versions.get(&version).is_some_and(Model::is_ready) {
            return Err(EngineError::VersionNotFound {
                model: name.to_string(),
                version: version.to_string(),
            });
        }
        let previous = std::mem::replace(&mut model.active, version);
        // A full rollout: a split ends; a shadow stays.
        let shadow = model.traffic.as_ref().and_then(|t| t.shadow);
        model.traffic = shadow.map(|s| Arc::new(Traffic::new(Vec::new(), Some(s))));
        self.served.store(Arc::new(catalog));
        tracing::info!(model = %name, version, previous, "activated");
        Ok(previous)
    }

    /// Every served model version, by name then version.
    pub fn all(&self) -> Vec<Model> {
        self.served
            .load()
            .values()
            .flat_map(|m| m.versions.values().cloned())
            .collect()
    }

    /// Every model version in the directory, with the ones served marked READY and the rest UNAVAILABLE.
    pub fn index(&self) -> Result<Vec<IndexEntry>, EngineError> {
        let served = self.served.load();
        let mut entries = Vec::new();
        let names = match &self.source {
            Some((_, dir)) => model_names(dir)?,
            None => served.keys().cloned().collect(),
        };
        for name in names {
            let mut versions: Vec<u64> = match &self.source {
                Some((_, dir)) => version_numbers(&dir.join(&name)),
                None => Vec::new(),
            };
            if let Some(model) = served.get(&name) {
                versions.extend(model.versions.keys());
            }
            versions.sort();
            versions.dedup();
            entries.extend(versions.into_iter().map(|v| {
                let ready = served
                    .get(&name)
                    .is_some_and(|m| m.versions.contains_key(&v));
                IndexEntry {
                    name: name.clone(),
                    version: Some(v),
                    state: if ready { "READY" } else { "UNAVAILABLE" },
                    reason: if ready { "" } else { "unloaded" }.into(),
                }
            }));
        }
        Ok(entries)
    }

    /// (Re)loads every version of `name` from the directory: builds and warms them beside what serves, then
    /// swaps them in at once. The active version stays active if it is still there, else the newest is.
    /// Blocking (sessions are built here): call it off the async runtime.
    pub fn load_model(&self, name: &str) -> Result<(), EngineError> {
        let _changing = self.changing.lock().unwrap_or_else(|e| e.into_inner());
        let versions = self.build(name, &|_, _| false)?;
        if versions.is_empty() {
            return Err(EngineError::ModelNotFound(name.to_string()));
        }
        let mut fresh = Served::new(versions);
        let mut catalog = (**self.served.load()).clone();
        if let Some(old) = catalog.get(name) {
            if fresh.versions.contains_key(&old.active) {
                fresh.active = old.active;
            }
            // The traffic policy stays while every version it names is still there.
            if let Some(traffic) = &old.traffic {
                let named = traffic.split.iter().map(|(v, _)| v).chain(&traffic.shadow);
                if named.into_iter().all(|v| fresh.versions.contains_key(v)) {
                    fresh.traffic = Some(traffic.clone());
                }
            }
        }
        let replaced = catalog.insert(name.to_string(), fresh);
        self.served.store(Arc::new(catalog));
        tracing::info!(model = %name, "loaded and swapped in");
        replaced
            .into_iter()
            .flat_map(|m| m.versions.into_values())
            .for_each(retire);
        Ok(())
    }

    /// Loads, checks and warms up a version folder `<...>/<name>/<version>/` without serving it: how an
    /// upload is validated before anything changes.
    pub fn stage(&self, version_dir: &Path) -> Result<Model, EngineError> {
        let Some((runtime, _)) = &self.source else {
            return Err(EngineError::InvalidRequest(
                "this repository has no runtime to load with".into(),
            ));
        };
        start(runtime, version_dir, self.tap.as_ref())
    }

    /// Serves an already started version beside the model's others; it becomes active only when the model
    /// had none.
    pub fn insert_version(&self, model: Model) {
        let _changing = self.changing.lock().unwrap_or_else(|e| e.into_inner());
        let mut catalog = (**self.served.load()).clone();
        let (name, version) = (model.manifest().name.clone(), model.manifest().version);
        let replaced = match catalog.get_mut(&name) {
            Some(served) => served.versions.insert(version, model),
            None => {
                catalog.insert(name, Served::new(BTreeMap::from([(version, model)])));
                None
            }
        };
        self.served.store(Arc::new(catalog));
        replaced.into_iter().for_each(retire);
    }

    /// Stops serving one version that is not the active one: requests holding it finish, then it is retired
    /// and its sessions freed.
    pub fn remove_version(&self, name: &str, version: u64) -> Result<(), EngineError> {
        let _changing = self.changing.lock().unwrap_or_else(|e| e.into_inner());
        let mut catalog = (**self.served.load()).clone();
        let model = catalog
            .get_mut(name)
            .ok_or_else(|| EngineError::ModelNotFound(name.to_string()))?;
        let in_traffic = model.traffic.as_ref().is_some_and(|t| {
            t.split.iter().any(|(v, _)| *v == version) || t.shadow == Some(version)
        });
        if model.active == version || in_traffic {
            return Err(EngineError::InvalidRequest(format!(
                "version {version} of {name} takes traffic; change the traffic policy first"
            )));
        }
        let removed =
            model
                .versions
                .remove(&version)
                .ok_or_else(|| EngineError::VersionNotFound {
                    model: name.to_string(),
                    version: version.to_string(),
                })?;
        self.served.store(Arc::new(catalog));
        retire(removed);
        Ok(())
    }

    /// Stops serving `name`: new requests get ModelNotFound; the ones holding its versions finish.
    pub fn unload_model(&self, name: &str) -> Result<(), EngineError> {
        let _changing = self.changing.lock().unwrap_or_else(|e| e.into_inner());
        let mut catalog = (**self.served.load()).clone();
        let removed = catalog
            .remove(name)
            .ok_or_else(|| EngineError::ModelNotFound(name.to_string()))?;
        self.served.store(Arc::new(catalog));
        tracing::info!(model = %name, "unloaded");
        removed.versions.into_values().for_each(retire);
        Ok(())
    }

    /// Loads one version from the directory, checks and warms it, and serves it beside the model's others
    /// (active only when the model had none). Blocking: call it off the async runtime.
    pub fn load_version(&self, name: &str, version: u64) -> Result<(), EngineError> {
        if self.get(name, Some(&version.to_string())).is_ok() {
            return Ok(());
        }
        let Some((runtime, dir)) = &self.source else {
            return Err(EngineError::InvalidRequest(
                "this repository has no directory to load from".into(),
            ));
        };
        let version_dir = dir.join(name).join(version.to_string());
        if name.contains(['/', '\\']) || name.starts_with('.') || !version_dir.is_dir() {
            return Err(EngineError::VersionNotFound {
                model: name.to_string(),
                version: version.to_string(),
            });
        }
        self.insert_version(start(runtime, &version_dir, self.tap.as_ref())?);
        Ok(())
    }

    /// Builds the versions of `name` found in the directory, but those `skip` names.
    fn build(
        &self,
        name: &str,
        skip: &dyn Fn(&str, u64) -> bool,
    ) -> Result<BTreeMap<u64, Model>, EngineError> {
        let Some((runtime, dir)) = &self.source else {
            return Err(EngineError::InvalidRequest(
                "this repository has no directory to load from".into(),
            ));
        };
        let model_dir = dir.join(name);
        if name.contains(['/', '\\']) || name.starts_with('.') || !model_dir.is_dir() {
            return Err(EngineError::ModelNotFound(name.to_string()));
        }
        let mut version_dirs: Vec<PathBuf> = std::fs::read_dir(&model_dir)
            .map_err(|e| EngineError::InvalidModel {
                path: model_dir.clone(),
                reason: format!("cannot read: {e}"),
            })?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.join("model.toml").is_file())
            .filter(|p| {
                let version = p.file_name().and_then(|v| v.to_str()?.parse::<u64>().ok());
                !version.is_some_and(|v| skip(name, v))
            })
            .collect();
        version_dirs.sort();
        let mut versions = BTreeMap::new();
        for version_dir in version_dirs {
            let model = start(runtime, &version_dir, self.tap.as_ref())?;
            versions.insert(model.manifest().version, model);
        }
        Ok(versions)
    }

    /// Closes every model: no new requests; what is queued runs without waiting for batch-mates.
    pub fn close(&self) {
        self.all().iter().for_each(Model::close);
    }

    /// Drains every model: no new requests, everything queued answered, within `timeout` in all.
    pub fn drain(&self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now().checked_add(timeout);
        self.all()
            .iter()
            .map(|m| {
                m.drain(deadline.map_or(timeout, |d| {
                    d.saturating_duration_since(std::time::Instant::now())
                }))
            })
            .filter(|drained| !drained)
            .count()
            == 0
    }
}

/// The model folders under `dir`: those with at least one `<version>/model.toml` (so `models/train/`, the
/// training scripts, is not a model).
fn model_names(dir: &Path) -> Result<Vec<String>, EngineError> {
    let entries = std::fs::read_dir(dir).map_err(|e| EngineError::InvalidModel {
        path: dir.to_path_buf(),
        reason: format!("cannot read the models directory: {e} (set --models-dir)"),
    })?;
    let mut names: Vec<String> = entries
        .flatten()
        .filter(|e| has_versions(&e.path()))
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    Ok(names)
}

/// The version numbers of the folders under a model's folder that hold a model.toml.
fn version_numbers(model_dir: &Path) -> Vec<u64> {
    std::fs::read_dir(model_dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.path().join("model.toml").is_file())
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn has_versions(model_dir: &Path) -> bool {
    std::fs::read_dir(model_dir).is_ok_and(|versions| {
        versions
            .flatten()
            .any(|v| v.path().join("model.toml").is_file())
    })
}

/// Loads, checks and warms up one version folder.
fn start(runtime: &Runtime, version_dir: &Path, tap: Option<&Tap>) -> Result<Model, EngineError> {
    let manifest = Manifest::from_file(&version_dir.join("model.toml"))?;
    let expected = (
        model_dir_name(version_dir, 1),
        model_dir_name(version_dir, 0),
    );
    if expected
        != (
            Some(manifest.name.clone()),
            Some(manifest.version.to_string()),
        )
    {
        return Err(EngineError::InvalidModel {
            path: version_dir.to_path_buf(),
            reason: format!(
                "the manifest names {} version {}; the folder must be <models-dir>/{}/{}",
                manifest.name, manifest.version, manifest.name, manifest.version
            ),
        });
    }
    if let Some(features) = &manifest.features {
        let path = version_dir.join(&features.spec);
        let invalid = |reason: String| EngineError::InvalidModel {
            path: path.clone(),
            reason,
        };
        if features.spec.contains(['/', '\\']) {
            return Err(invalid(
                "features.spec names a file beside model.toml".into(),
            ));
        }
        let bytes = std::fs::read(&path).map_err(|e| invalid(format!("the feature spec: {e}")))?;
        let sha = crate::import::sha256_hex(&bytes);
        if sha != features.sha256 {
            return Err(invalid(format!(
                "the feature spec's SHA-256 is {sha}, the manifest says {}: a changed spec is a new version",
                features.sha256
            )));
        }
    }
    let onnx = version_dir.join("model.onnx");
    let factory: BackendFactory = {
        let (runtime, manifest) = (runtime.clone(), manifest.clone());
        Arc::new(move |_lane| {
            OrtBackend::load(&runtime, &onnx, &manifest).map(|b| Box::new(b) as Box<dyn Backend>)
        })
    };
    let model = Model::start(manifest, factory)?;
    if let Some(tap) = tap.filter(|_| version_dir.join(PROFILE_FILE).is_file()) {
        model.monitor(tap.clone());
    }
    tracing::info!(model = %model.manifest().name, version = model.manifest().version,
        instances = model.manifest().instances.count, "loaded");
    Ok(model)
}

/// Retires a version no longer in the catalogue: once no request holds it any more, its queue closes, its
/// workers finish what was queued and stop, and its sessions are freed with the last handle.
fn retire(model: Model) {
    let name = format!(
        "retire-{}-{}",
        model.manifest().name,
        model.manifest().version
    );
    let spawned = std::thread::Builder::new().name(name).spawn(move || {
        while model.handles() > 1 {
            std::thread::sleep(Duration::from_millis(5));
        }
        model.drain(Duration::from_secs(60));
        tracing::info!(model = %model.manifest().name, version = model.manifest().version, "retired");
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start a thread to retire a model version");
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
