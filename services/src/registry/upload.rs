//! A new version from its files, validated before anything serves it: built in a staging folder, the file
//! must parse, its signature must match the manifest, a warm-up inference must run, and the golden outputs
//! must match within 1e-4 (relative). Only then is the artifact stored by its SHA-256 and the version served
//! beside the others. A failed upload changes nothing that serves; the registry keeps the version number as
//! `failed`, with the reason.

use std::path::Path;
use std::time::Duration;

use mercator_engine::{import, EngineError, Manifest, Model, Tensor, PROFILE_FILE};
use mercator_store::{FieldErrors, VersionState};

use super::{Changed, ModelEvent, Registry, RegistryError, VersionView};

/// Golden outputs match when within this relative tolerance (or absolute, below 1).
const GOLDEN_TOLERANCE: f64 = 1e-4;

/// A version's files as uploaded.
pub struct NewVersion {
    /// The model's name: 1 to 64 letters, digits, `-` or `_`.
    pub name: String,
    /// Who registers it (the API key's id).
    pub by: String,
    /// The ONNX file.
    pub model: Vec<u8>,
    /// model.toml; its name and version are overridden (the server numbers versions).
    pub manifest: String,
    /// The feature spec the manifest names in `[features]`.
    pub features: Option<Vec<u8>>,
    /// The reference profile (`mercator features profile`): the version is monitored against it.
    pub profile: Option<Vec<u8>>,
    pub golden: Option<Golden>,
}

/// A reference profile that reads, and whose every column is an element of one of the manifest's tensors
/// on its side (inputs or outputs).
fn check_profile(bytes: &[u8], manifest: &Manifest) -> Result<(), RegistryError> {
    use mercator_features::profile::{Profile, Role};
    let profile = Profile::parse(bytes).map_err(|e| invalid("profile", e.to_string()))?;
    for c in &profile.columns {
        let tensors = match c.at.role {
            Role::Input => &manifest.inputs,
            Role::Output => &manifest.outputs,
        };
        let width = tensors
            .iter()
            .find(|t| t.name == c.at.tensor)
            .and_then(|t| t.fixed_row_len());
        if width.is_none_or(|w| c.at.index >= w) {
            return Err(invalid(
                "profile",
                format!(
                    "column `{}` is element {} of `{}`, which the manifest's {} tensors do not have",
                    c.at.name,
                    c.at.index,
                    c.at.tensor,
                    match c.at.role {
                        Role::Input => "input",
                        Role::Output => "output",
                    }
                ),
            ));
        }
    }
    Ok(())
}

/// Inputs and the outputs they must give.
pub struct Golden {
    pub inputs: Vec<Tensor>,
    pub outputs: Vec<GoldenOutput>,
}

#[derive(serde::Deserialize)]
pub struct GoldenOutput {
    pub name: String,
    pub data: Vec<f64>,
}

impl Registry {
    /// A model's name: 1 to 64 letters, digits, `-` or `_`.
    pub fn check_name(name: &str) -> Result<(), RegistryError> {
        let fits = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if fits {
            Ok(())
        } else {
            Err(invalid("name", "1 to 64 letters, digits, - or _"))
        }
    }

    /// Registers and serves the next version of a model from its files, validated first; it answers
    /// requests that name it until it is activated (or at once, for a new model).
    pub async fn upload(&self, new: NewVersion) -> Result<Changed<VersionView>, RegistryError> {
        Registry::check_name(&new.name)?;
        let name = new.name.clone();
        let served = import::served_dir(&self.data_dir);
        let mut manifest =
            Manifest::parse(&new.manifest, Path::new("manifest")).map_err(invalid_model)?;
        // The number is claimed in the registry (validating), so two uploads at once get two.
        let version = self
            .store
            .claim_model_version(&name, next_version(&served.join(&name)), &new.by)
            .await?;
        manifest.name = name.clone();
        manifest.version = version;
        let staging = self.data_dir.join("staging").join(format!(
            "{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let staged_dir = staging.join(&name).join(version.to_string());
        let result = match (&new.features, &manifest.features) {
            (Some(spec), Some(reference)) => std::fs::create_dir_all(&staged_dir)
                .and_then(|()| std::fs::write(staged_dir.join(&reference.spec), spec))
                .map_err(|e| RegistryError::internal("staging an upload", e)),
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
        let result = result.and_then(|()| match &new.profile {
            Some(bytes) => check_profile(bytes, &manifest).and_then(|()| {
                std::fs::create_dir_all(&staged_dir)
                    .and_then(|()| std::fs::write(staged_dir.join(PROFILE_FILE), bytes))
                    .map_err(|e| RegistryError::internal("staging an upload", e))
            }),
            None => Ok(()),
        });
        let result = match result {
            Ok(()) => {
                self.stage_and_check(&staged_dir, &new.model, &manifest, new.golden)
                    .await
            }
            Err(e) => Err(e),
        };
        let outcome = match result {
            Ok(model) => self.commit(&staged_dir, &served, model).await,
            Err(e) => Err(e),
        };
        let _ = std::fs::remove_dir_all(&staging);
        let outcome = outcome.map_err(|e| scrub(e, &staging));
        let view = outcome.map(|model| self.version_view(&model));
        let finished = match &view {
            Ok(v) => {
                let artifact = (
                    v.sha256.as_deref().unwrap_or_default(),
                    v.size_bytes.unwrap_or(0),
                );
                self.store
                    .finish_model_version(&name, version, Ok(artifact))
                    .await
            }
            Err(e) => {
                let reason = e.to_string();
                self.store
                    .finish_model_version(&name, version, Err(&reason))
                    .await
            }
        };
        finished?;
        let mut view = view?;
        view.state = VersionState::Ready;
        let event = ModelEvent::new("model.upload", &name, None::<()>, Some(&view));
        Ok(self.announce(view, event))
    }

    /// Writes the version to a staging folder and loads, checks and warms it there; then the golden check.
    async fn stage_and_check(
        &self,
        dir: &Path,
        onnx: &[u8],
        manifest: &Manifest,
        golden: Option<Golden>,
    ) -> Result<Model, RegistryError> {
        let io = |e: std::io::Error| RegistryError::internal("staging an upload", e);
        std::fs::create_dir_all(dir).map_err(io)?;
        std::fs::write(dir.join("model.onnx"), onnx).map_err(io)?;
        let toml = toml::to_string(manifest)
            .map_err(|e| RegistryError::internal("writing the manifest", e))?;
        std::fs::write(dir.join("model.toml"), toml).map_err(io)?;
        let (repository, staged) = (self.repository.clone(), dir.to_path_buf());
        let model = tokio::task::spawn_blocking(move || repository.stage(&staged))
            .await
            .map_err(|e| RegistryError::internal("staging an upload", e))?
            .map_err(invalid_model)?;
        if let Some(golden) = golden {
            if let Err(e) = check_golden(&model, golden).await {
                dispose(model).await;
                return Err(e);
            }
        }
        Ok(model)
    }

    /// Stores the artifact by its SHA-256, moves the version into the served repository and serves it.
    async fn commit(
        &self,
        staged: &Path,
        served: &Path,
        model: Model,
    ) -> Result<Model, RegistryError> {
        let m = model.manifest();
        let target = served.join(&m.name).join(m.version.to_string());
        let data = &self.data_dir;
        let written = (|| -> Result<(), RegistryError> {
            let io = |e: std::io::Error| RegistryError::internal("serving an upload", e);
            let sha = import::store_artifact(data, &staged.join("model.onnx"))?;
            std::fs::create_dir_all(&target).map_err(io)?;
            import::link_artifact(data, &target, &sha)?;
            import::copy_companions(staged, &target)?;
            std::fs::copy(staged.join("model.toml"), target.join("model.toml")).map_err(io)?;
            Ok(())
        })();
        // Kept in the store too, so every replica of a fleet can serve it.
        let kept = match written {
            Ok(()) => match staged_files(staged) {
                Ok(files) => self
                    .store
                    .put_model_files(&m.name, m.version, &files)
                    .await
                    .map_err(RegistryError::from),
                Err(e) => Err(RegistryError::internal("reading a staged upload", e)),
            },
            Err(e) => Err(e),
        };
        if let Err(e) = kept {
            let _ = std::fs::remove_dir_all(&target);
            dispose(model).await;
            return Err(e);
        }
        self.repository.insert_version(model.clone());
        Ok(model)
    }
}

/// The files of a staged version (its folder holds files only): name and bytes.
fn staged_files(dir: &Path) -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            let name = entry.file_name().to_string_lossy().into_owned();
            files.push((name, std::fs::read(entry.path())?));
        }
    }
    Ok(files)
}

/// Runs the golden inputs through the staged version and compares every golden output.
async fn check_golden(model: &Model, golden: Golden) -> Result<(), RegistryError> {
    let output = model
        .infer(golden.inputs, None)
        .await
        .map_err(|e| RegistryError::InvalidModel(format!("the golden inputs do not run: {e}")))?;
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
        Err(RegistryError::InvalidModel(format!(
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

/// Stops a staged version that will not serve: its workers finish and its sessions are freed.
async fn dispose(model: Model) {
    let _ = tokio::task::spawn_blocking(move || model.drain(Duration::from_secs(10))).await;
}

/// One more than the highest version folder of the model (1 for a new model).
fn next_version(model_dir: &Path) -> u64 {
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

/// One part's problem: `` `field`: message ``.
pub fn invalid(field: &str, message: impl Into<String>) -> RegistryError {
    let message = message.into();
    RegistryError::Invalid {
        message: format!("`{field}`: {message}"),
        details: FieldErrors::one(field, message),
    }
}

fn invalid_model(e: EngineError) -> RegistryError {
    match e {
        EngineError::InvalidModel { reason, .. } => RegistryError::InvalidModel(reason),
        e => RegistryError::InvalidModel(e.to_string()),
    }
}

/// The staging folder's path out of an error's message: a client learns what was wrong with its upload,
/// not where the server keeps its files.
fn scrub(e: RegistryError, staging: &Path) -> RegistryError {
    let scrubbed = |m: String| m.replace(&staging.display().to_string(), "<upload>");
    match e {
        RegistryError::InvalidModel(m) => RegistryError::InvalidModel(scrubbed(m)),
        RegistryError::Engine(EngineError::InvalidModel { reason, .. }) => {
            RegistryError::InvalidModel(scrubbed(reason))
        }
        e => e,
    }
}
