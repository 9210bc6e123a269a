//! What runs a batch. `OrtBackend` is the real one; tests of the scheduler bring their own.

use std::path::Path;

use ort::session::{builder::GraphOptimizationLevel, Session};
use ort::value::{DynValue, Tensor as OrtTensor, TensorElementType, ValueType};

use crate::manifest::{Manifest, TensorSpec};
use crate::tensor::{DataType, Tensor, TensorData};
use crate::{EngineError, Runtime};

/// Runs one batch: inputs in the manifest's order, outputs in the manifest's order, batch dimension first.
/// Each worker owns its backend, so `run` takes `&mut self` and needs no lock.
pub trait Backend: Send + 'static {
    fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, BackendError>;
}

/// Why a batch gave no outputs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// An input could not be handed to the runtime.
    #[error("input: {0}")]
    Input(String),
    /// The runtime failed the run.
    #[error("{0}")]
    Run(String),
    /// An output is missing, of another type than the manifest says, or not one row per input row.
    #[error("output: {0}")]
    Output(String),
    /// The run panicked (a bug, in the runtime's bindings or ours); the worker goes on.
    #[error("the model run panicked: {0}")]
    Panicked(String),
}

/// One ONNX Runtime session.
pub struct OrtBackend {
    session: Session,
    outputs: Vec<TensorSpec>,
    /// `mercator_model_sessions` of this version: counts this session while it lives.
    alive: metrics::Gauge,
}

impl Drop for OrtBackend {
    fn drop(&mut self) {
        self.alive.decrement(1.0);
    }
}

impl OrtBackend {
    /// Loads the graph and checks it against the manifest: every tensor by name, type and shape.
    pub fn load(
        runtime: &Runtime,
        path: &Path,
        manifest: &Manifest,
    ) -> Result<OrtBackend, EngineError> {
        let invalid = |reason: String| EngineError::InvalidModel {
            path: path.to_path_buf(),
            reason,
        };
        let session = Session::builder(&runtime.env)
            .and_then(|b| Ok(b.with_optimization_level(GraphOptimizationLevel::Level3)?))
            .and_then(|b| Ok(b.with_intra_threads(manifest.instances.intra_op_threads)?))
            .and_then(|b| Ok(b.with_inter_threads(1)?))
            // A session that spins between runs burns a core the HTTP side needs.
            .and_then(|b| Ok(b.with_intra_op_spinning(false)?))
            .and_then(|mut b| b.commit_from_file(path))
            .map_err(|e| invalid(format!("ONNX Runtime cannot load it: {e}")))?;
        check_signature(
            "input",
            session.inputs().iter().map(|o| (o.name(), o.dtype())),
            &manifest.inputs,
        )
        .map_err(invalid)?;
        check_signature(
            "output",
            session.outputs().iter().map(|o| (o.name(), o.dtype())),
            &manifest.outputs,
        )
        .map_err(invalid)?;
        let alive = metrics::gauge!(
            crate::metrics::SESSIONS,
            "model" => manifest.name.clone(),
            "version" => manifest.version.to_string()
        );
        alive.increment(1.0);
        Ok(OrtBackend {
            session,
            outputs: manifest.outputs.clone(),
            alive,
        })
    }
}

fn check_signature<'a>(
    side: &str,
    graph: impl Iterator<Item = (&'a str, &'a ValueType)>,
    manifest: &[TensorSpec],
) -> Result<(), String> {
    let graph: Vec<_> = graph.collect();
    for spec in manifest {
        let Some((_, ty)) = graph.iter().find(|(name, _)| *name == spec.name) else {
            let names: Vec<_> = graph.iter().map(|(n, _)| *n).collect();
            return Err(format!(
                "manifest {side} `{}` is not in the graph, whose {side}s are {names:?}",
                spec.name
            ));
        };
        let ValueType::Tensor { ty, shape, .. } = ty else {
            return Err(format!("graph {side} `{}` is not a tensor", spec.name));
        };
        let graph_type = datatype_of(*ty).ok_or_else(|| {
            format!(
                "graph {side} `{}` has element type {ty:?}, which is not served",
                spec.name
            )
        })?;
        if graph_type != spec.datatype {
            return Err(format!(
                "{side} `{}`: the manifest says {}, the graph says {graph_type}",
                spec.name, spec.datatype
            ));
        }
        let dims: Vec<i64> = shape.iter().copied().collect();
        let compatible = dims.len() == spec.shape.len()
            && dims
                .iter()
                .zip(&spec.shape)
                .all(|(&g, &m)| g == m || (g <= 0 && m == -1));
        if !compatible {
            return Err(format!(
                "{side} `{}`: the manifest says shape {:?}, the graph says {dims:?}",
                spec.name, spec.shape
            ));
        }
    }
    if side == "input" && graph.len() != manifest.len() {
        let names: Vec<_> = graph.iter().map(|(n, _)| *n).collect();
        return Err(format!(
            "the graph has inputs {names:?}; the manifest must list each of them"
        ));
    }
    Ok(())
}

fn datatype_of(ty: TensorElementType) -> Option<DataType> {
    Some(match ty {
        TensorElementType::Float32 => DataType::Fp32,
        TensorElementType::Float64 => DataType::Fp64,
        TensorElementType::Int32 => DataType::Int32,
        TensorElementType::Int64 => DataType::Int64,
        TensorElementType::Bool => DataType::Bool,
        _ => return None,
    })
}

fn to_value(tensor: Tensor) -> ort::Result<DynValue> {
    let shape: Vec<i64> = tensor.shape.iter().map(|&d| d as i64).collect();
    Ok(match tensor.data {
        TensorData::Fp32(v) => OrtTensor::from_array((shape, v))?.into_dyn(),
        TensorData::Fp64(v) => OrtTensor::from_array((shape, v))?.into_dyn(),
        TensorData::Int32(v) => OrtTensor::from_array((shape, v))?.into_dyn(),
        TensorData::Int64(v) => OrtTensor::from_array((shape, v))?.into_dyn(),
        TensorData::Bool(v) => OrtTensor::from_array((shape, v))?.into_dyn(),
    })
}

fn from_value(spec: &TensorSpec, value: &DynValue) -> ort::Result<Tensor> {
    fn extract<T: ort::value::PrimitiveTensorElementType + Clone>(
        v: &DynValue,
    ) -> ort::Result<(Vec<usize>, Vec<T>)> {
        let (shape, data) = v.try_extract_tensor::<T>()?;
        Ok((shape.iter().map(|&d| d as usize).collect(), data.to_vec()))
    }
    let (shape, data) = match spec.datatype {
        DataType::Fp32 => extract::<f32>(value).map(|(s, d)| (s, TensorData::Fp32(d)))?,
        DataType::Fp64 => extract::<f64>(value).map(|(s, d)| (s, TensorData::Fp64(d)))?,
        DataType::Int32 => extract::<i32>(value).map(|(s, d)| (s, TensorData::Int32(d)))?,
        DataType::Int64 => extract::<i64>(value).map(|(s, d)| (s, TensorData::Int64(d)))?,
        DataType::Bool => extract::<bool>(value).map(|(s, d)| (s, TensorData::Bool(d)))?,
    };
    Ok(Tensor {
        name: spec.name.clone(),
        shape,
        data,
    })
}

impl Backend for OrtBackend {
    fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, BackendError> {
        let named: Vec<(String, DynValue)> = inputs
            .into_iter()
            .map(|t| Ok((t.name.clone(), to_value(t)?)))
            .collect::<ort::Result<_>>()
            .map_err(|e| BackendError::Input(e.to_string()))?;
        let outputs = self
            .session
            .run(named)
            .map_err(|e| BackendError::Run(e.to_string()))?;
        self.outputs
            .iter()
            .map(|spec| {
                let value = outputs.get(&spec.name).ok_or_else(|| {
                    BackendError::Output(format!("the graph gave no output `{}`", spec.name))
                })?;
                from_value(spec, value)
                    .map_err(|e| BackendError::Output(format!("`{}`: {e}", spec.name)))
            })
            .collect()
    }
}
