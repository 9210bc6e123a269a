//! The served model repository lives under the data directory, `<data>/models/<name>/<version>/`, with each
//! version's `model.onnx` a link to its artifact stored once by content, `<data>/artifacts/<sha256>.onnx`.
//! Versions in a source repository (the shipped `models/`, or any `--models-dir`) are imported into it: at
//! start, and when a model is loaded again. An imported version is never overwritten: a version number,
//! once registered, means one artifact.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::EngineError;

/// Where the data directory keeps the served repository and the artifacts.
pub fn served_dir(data: &Path) -> PathBuf {
    data.join("models")
}

fn artifacts_dir(data: &Path) -> PathBuf {
    data.join("artifacts")
}

/// Imports every version of every model (or of `only`) found in `source` that the data directory does not
/// hold yet, but those `skip` names (the retired ones). Returns what it imported, as (name, version).
pub fn import(
    source: &Path,
    data: &Path,
    only: Option<&str>,
    skip: &dyn Fn(&str, u64) -> bool,
) -> Result<Vec<(String, u64)>, EngineError> {
    let io = |path: &Path, e: std::io::Error| EngineError::InvalidModel {
        path: path.to_path_buf(),
        reason: format!("cannot import: {e}"),
    };
    let mut imported = Vec::new();
    let models = std::fs::read_dir(source).map_err(|e| EngineError::InvalidModel {
        path: source.to_path_buf(),
        reason: format!("cannot read the models directory: {e} (set --models-dir)"),
    })?;
    let served = served_dir(data);
    std::fs::create_dir_all(&served).map_err(|e| io(&served, e))?;
    for model_dir in models.flatten().map(|e| e.path()) {
        let Some(name) = model_dir
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
        else {
            continue;
        };
        if name.starts_with('.') || only.is_some_and(|o| o != name) {
            continue;
        }
        let Ok(versions) = std::fs::read_dir(&model_dir) else {
            continue;
        };
        for version_dir in versions.flatten().map(|e| e.path()) {
            let (toml, onnx) = (
                version_dir.join("model.toml"),
                version_dir.join("model.onnx"),
            );
            let Some(version) = version_dir
                .file_name()
                .and_then(|v| v.to_str())
                .and_then(|v| v.parse::<u64>().ok())
            else {
                continue;
            };
            if skip(&name, version) {
                continue;
            }
            let target = served_dir(data).join(&name).join(version.to_string());
            if !toml.is_file() || !onnx.is_file() || target.join("model.toml").is_file() {
                continue;
            }
            let sha = store_artifact(data, &onnx)?;
            std::fs::create_dir_all(&target).map_err(|e| io(&target, e))?;
            link_artifact(data, &target, &sha)?;
            copy_companions(&version_dir, &target)?;
            // The manifest last: a version folder counts once its model.toml is there.
            std::fs::copy(&toml, target.join("model.toml")).map_err(|e| io(&toml, e))?;
            imported.push((name.clone(), version));
        }
    }
    imported.sort();
    Ok(imported)
}

/// Files a version keeps beside its manifest (the feature spec, the reference profile).
pub const COMPANIONS: &[&str] = &["features.toml", crate::tap::PROFILE_FILE];

/// Copies the companion files of a version folder that has them.
pub fn copy_companions(from: &Path, to: &Path) -> Result<(), EngineError> {
    for name in COMPANIONS {
        let source = from.join(name);
        if source.is_file() {
            std::fs::copy(&source, to.join(name)).map_err(|e| EngineError::InvalidModel {
                path: source.clone(),
                reason: format!("cannot import: {e}"),
            })?;
        }
    }
    Ok(())
}

/// The SHA-256 of some bytes, as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Copies an ONNX file into the artifact store under its SHA-256 (once) and returns the digest.
pub fn store_artifact(data: &Path, onnx: &Path) -> Result<String, EngineError> {
    let io = |e: std::io::Error| EngineError::InvalidModel {
        path: onnx.to_path_buf(),
        reason: format!("cannot store the artifact: {e}"),
    };
    let bytes = std::fs::read(onnx).map_err(io)?;
    let sha = hex(&Sha256::digest(&bytes));
    let dir = artifacts_dir(data);
    std::fs::create_dir_all(&dir).map_err(io)?;
    let path = dir.join(format!("{sha}.onnx"));
    if !path.is_file() {
        let partial = dir.join(format!(".{sha}.partial"));
        std::fs::write(&partial, &bytes).map_err(io)?;
        std::fs::rename(&partial, &path).map_err(io)?;
    }
    Ok(sha)
}

/// Points `<version dir>/model.onnx` at the stored artifact, by a relative link (the data directory can move).
pub fn link_artifact(data: &Path, version_dir: &Path, sha: &str) -> Result<(), EngineError> {
    let _ = data;
    let artifact = PathBuf::from(format!("../../../artifacts/{sha}.onnx"));
    let link = version_dir.join("model.onnx");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&artifact, &link).map_err(|e| EngineError::InvalidModel {
        path: link.clone(),
        reason: format!("cannot link the artifact: {e}"),
    })
}

/// The SHA-256 and size of a served version's artifact.
pub fn artifact_of(version_dir: &Path) -> Option<(String, u64)> {
    let target = std::fs::read_link(version_dir.join("model.onnx")).ok()?;
    let sha = target.file_stem()?.to_str()?.to_string();
    let size = std::fs::metadata(version_dir.join(&target)).ok()?.len();
    Some((sha, size))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
