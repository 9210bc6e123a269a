//! Configuration: flags, each with an environment variable, over an optional TOML file, over defaults.
//! Parsed once into `Config`; nothing else reads the environment.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

#[derive(Debug, Parser)]
#[command(
    name = "mercator",
    version,
    about = "Mercator: an inference-first ML serving engine for procurement pricing"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the model repository over HTTP (Open Inference Protocol, health, metrics).
    Serve(ServeArgs),
}

/// Every flag may also be set in the TOML file given with --config, under the same name with underscores.
#[derive(Debug, Default, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeArgs {
    /// A TOML file with any of the settings below; flags and environment variables win over it.
    #[arg(long, env = "MERCATOR_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8000].
    #[arg(long, env = "MERCATOR_ADDR")]
    pub addr: Option<SocketAddr>,
    /// Where Mercator keeps its data [default: ./data].
    #[arg(long, env = "MERCATOR_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The model repository: <dir>/<name>/<version>/{model.onnx,model.toml} [default: ./models].
    #[arg(long, env = "MERCATOR_MODELS_DIR")]
    pub models_dir: Option<PathBuf>,
    /// Largest request body accepted, in bytes; larger ones get 413 [default: 8388608].
    #[arg(long, env = "MERCATOR_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// On SIGTERM/SIGINT, how long to finish queued and in-flight requests before exiting, in seconds
    /// [default: 30].
    #[arg(long, env = "MERCATOR_DRAIN_TIMEOUT_SECS")]
    pub drain_timeout_secs: Option<u64>,
    /// libonnxruntime.so to load [default: ORT_DYLIB_PATH, then next to the executable, then .runtime/lib].
    #[arg(long, env = "MERCATOR_ORT_LIB")]
    pub ort_lib: Option<PathBuf>,
}

/// The settings in force.
#[derive(Debug, Clone)]
pub struct Config {
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    pub models_dir: PathBuf,
    pub max_body_bytes: usize,
    pub drain_timeout: Duration,
    pub ort_lib: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            addr: "127.0.0.1:8000".parse().expect("a valid address"),
            data_dir: PathBuf::from("data"),
            models_dir: PathBuf::from("models"),
            max_body_bytes: 8 * 1024 * 1024,
            drain_timeout: Duration::from_secs(30),
            ort_lib: None,
        }
    }
}

impl Config {
    /// Flags and environment first, then the file, then defaults.
    pub fn resolve(args: ServeArgs) -> Result<Config, String> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => ServeArgs::default(),
        };
        let d = Config::default();
        Ok(Config {
            addr: args.addr.or(file.addr).unwrap_or(d.addr),
            data_dir: args.data_dir.or(file.data_dir).unwrap_or(d.data_dir),
            models_dir: args.models_dir.or(file.models_dir).unwrap_or(d.models_dir),
            max_body_bytes: args
                .max_body_bytes
                .or(file.max_body_bytes)
                .unwrap_or(d.max_body_bytes),
            drain_timeout: args
                .drain_timeout_secs
                .or(file.drain_timeout_secs)
                .map(Duration::from_secs)
                .unwrap_or(d.drain_timeout),
            ort_lib: args.ort_lib.or(file.ort_lib),
        })
    }
}

fn read_file(path: &Path) -> Result<ServeArgs, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("--config {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("--config {}: {e}", path.display()))
}
