//! Finding and loading the ONNX Runtime shared library (ort's `load-dynamic`).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::EngineError;

/// The ONNX Runtime version this build is made for: `make runtime` installs it.
pub const ORT_VERSION: &str = "1.31.1";
const LIB: &str = "libonnxruntime.so";

/// A loaded ONNX Runtime: the environment every session is built from.
#[derive(Clone)]
pub struct Runtime {
    pub(crate) env: ort::environment::Environment,
    pub library: PathBuf,
}

impl Runtime {
    /// Loads ONNX Runtime from, in order: `explicit`, `ORT_DYLIB_PATH`, the executable's folder (and its
    /// `lib/`), and the checkout's `.runtime/lib` that `make runtime` fills.
    ///
    /// ONNX Runtime allows one environment per process: the first successful load is kept and every later
    /// call returns it (several servers in one test process share it).
    pub fn load(explicit: Option<&Path>) -> Result<Runtime, EngineError> {
        static LOADED: Mutex<Option<Runtime>> = Mutex::new(None);
        let mut loaded = LOADED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(runtime) = loaded.as_ref() {
            return Ok(runtime.clone());
        }
        let runtime = Runtime::load_once(explicit)?;
        *loaded = Some(runtime.clone());
        Ok(runtime)
    }

    /// The ONNX Runtime environment, to build sessions from.
    pub fn environment(&self) -> &ort::environment::Environment {
        &self.env
    }

    fn load_once(explicit: Option<&Path>) -> Result<Runtime, EngineError> {
        let library = locate(explicit).ok_or_else(|| {
            EngineError::Runtime(format!(
                "ONNX Runtime {ORT_VERSION} not found: looked for {LIB} in ORT_DYLIB_PATH, next to the executable \
                 and in {}. Run `make runtime` (or scripts/install-runtime.sh), or set ORT_DYLIB_PATH.",
                repo_runtime_dir().display()
            ))
        })?;
        let builder = ort::init_from(&library).map_err(|e| {
            EngineError::Runtime(format!(
                "cannot load ONNX Runtime from {}: {e}. Mercator needs ONNX Runtime {ORT_VERSION}: run `make runtime`, \
                 or point ORT_DYLIB_PATH at a matching libonnxruntime.so.",
                library.display()
            ))
        })?;
        let env = builder
            .with_name("mercator")
            .with_telemetry(false)
            .build()
            .map_err(|e| EngineError::Runtime(format!("cannot start ONNX Runtime: {e}")))?;
        Ok(Runtime { env, library })
    }
}

fn repo_runtime_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.runtime/lib")
}

fn locate(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(path) = explicit {
        return Some(path.to_path_buf());
    }
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH") {
        return Some(PathBuf::from(path));
    }
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
    {
        candidates.push(dir.join(LIB));
        candidates.push(dir.join("lib").join(LIB));
        candidates.push(dir.join("../lib").join(LIB));
    }
    candidates.push(repo_runtime_dir().join(LIB));
    candidates.into_iter().find(|p| p.is_file())
}
