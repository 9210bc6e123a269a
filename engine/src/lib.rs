//! Mercator's engine: the model repository, ONNX Runtime sessions and the per-model batching scheduler.
//!
//! - [`Runtime`] loads ONNX Runtime (`runtime.rs`).
//! - [`Repository`] loads every `model.toml` + `model.onnx` under the models directory (`repository.rs`).
//! - [`Model`] is one served version: a bounded queue and the worker threads that own its sessions and
//!   form batches (`model.rs`, `queue.rs`).
//! - [`Backend`] is what runs a batch; [`OrtBackend`] is ONNX Runtime (`backend.rs`).
//! - [`Tap`] copies a monitored version's batches to its monitor, off the request path (`tap.rs`).

mod backend;
mod error;
pub mod import;
pub mod manifest;
pub mod metrics;
mod model;
mod queue;
mod repository;
mod rows;
mod runtime;
pub mod stats;
mod tap;
mod tensor;

pub use backend::{Backend, BackendError, OrtBackend};
pub use error::EngineError;
pub use manifest::{AnomalyThresholds, DemandSettings, Manifest, ModelKind, TensorSpec};
pub use model::{BackendFactory, InferOutput, Lane, Model, Pending, Timing, WARMUP};
pub use repository::{IndexEntry, Repository, Traffic};
pub use rows::Slices;
pub use runtime::{Runtime, ORT_VERSION};
pub use tap::{Observed, Tap, PROFILE_FILE};
pub use tensor::{DataType, Tensor, TensorData};
