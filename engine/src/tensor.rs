//! Tensors as the engine sees them: a name, a shape whose first dimension is the batch, and flat data.

use std::fmt;

/// The element types the engine serves, named as the Open Inference Protocol names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum DataType {
    #[serde(rename = "FP32")]
    Fp32,
    #[serde(rename = "FP64")]
    Fp64,
    #[serde(rename = "INT32")]
    Int32,
    #[serde(rename = "INT64")]
    Int64,
    #[serde(rename = "BOOL")]
    Bool,
}

impl DataType {
    /// The Open Inference Protocol name: `FP32`, `INT64`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Fp32 => "FP32",
            DataType::Fp64 => "FP64",
            DataType::Int32 => "INT32",
            DataType::Int64 => "INT64",
            DataType::Bool => "BOOL",
        }
    }

    pub fn parse(name: &str) -> Option<DataType> {
        Some(match name {
            "FP32" => DataType::Fp32,
            "FP64" => DataType::Fp64,
            "INT32" => DataType::Int32,
            "INT64" => DataType::Int64,
            "BOOL" => DataType::Bool,
            _ => return None,
        })
    }

    /// Bytes per element in the binary tensor data extension (little endian; BOOL is one byte).
    pub fn size(self) -> usize {
        match self {
            DataType::Fp32 | DataType::Int32 => 4,
            DataType::Fp64 | DataType::Int64 => 8,
            DataType::Bool => 1,
        }
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Flat, row-major tensor contents.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    Fp32(Vec<f32>),
    Fp64(Vec<f64>),
    Int32(Vec<i32>),
    Int64(Vec<i64>),
    Bool(Vec<bool>),
}

/// Applies the same expression to the vector inside every variant.
macro_rules! each {
    ($data:expr, $v:ident => $e:expr) => {
        match $data {
            TensorData::Fp32($v) => $e,
            TensorData::Fp64($v) => $e,
            TensorData::Int32($v) => $e,
            TensorData::Int64($v) => $e,
            TensorData::Bool($v) => $e,
        }
    };
}

impl TensorData {
    /// The values as f64, whatever the type (for comparing answers).
    pub fn to_f64(&self) -> Vec<f64> {
        match self {
            TensorData::Fp32(v) => v.iter().map(|&x| f64::from(x)).collect(),
            TensorData::Fp64(v) => v.clone(),
            TensorData::Int32(v) => v.iter().map(|&x| f64::from(x)).collect(),
            TensorData::Int64(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::Bool(v) => v.iter().map(|&x| f64::from(u8::from(x))).collect(),
        }
    }

    /// The value at `i` as f64, whatever the type; NaN past the end.
    pub fn f64_at(&self, i: usize) -> f64 {
        match self {
            TensorData::Fp32(v) => v.get(i).map_or(f64::NAN, |&x| f64::from(x)),
            TensorData::Fp64(v) => v.get(i).copied().unwrap_or(f64::NAN),
            TensorData::Int32(v) => v.get(i).map_or(f64::NAN, |&x| f64::from(x)),
            TensorData::Int64(v) => v.get(i).map_or(f64::NAN, |&x| x as f64),
            TensorData::Bool(v) => v.get(i).map_or(f64::NAN, |&x| f64::from(u8::from(x))),
        }
    }

    pub fn datatype(&self) -> DataType {
        match self {
            TensorData::Fp32(_) => DataType::Fp32,
            TensorData::Fp64(_) => DataType::Fp64,
            TensorData::Int32(_) => DataType::Int32,
            TensorData::Int64(_) => DataType::Int64,
            TensorData::Bool(_) => DataType::Bool,
        }
    }

    pub fn len(&self) -> usize {
        each!(self, v => v.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// An empty vector of the given type with room for `capacity` elements.
    pub fn with_capacity(datatype: DataType, capacity: usize) -> TensorData {
        match datatype {
            DataType::Fp32 => TensorData::Fp32(Vec::with_capacity(capacity)),
            DataType::Fp64 => TensorData::Fp64(Vec::with_capacity(capacity)),
            DataType::Int32 => TensorData::Int32(Vec::with_capacity(capacity)),
            DataType::Int64 => TensorData::Int64(Vec::with_capacity(capacity)),
            DataType::Bool => TensorData::Bool(Vec::with_capacity(capacity)),
        }
    }

    /// `len` elements all equal to one (zeros would divide by zero in models that normalise).
    pub fn ones(datatype: DataType, len: usize) -> TensorData {
        match datatype {
            DataType::Fp32 => TensorData::Fp32(vec![1.0; len]),
            DataType::Fp64 => TensorData::Fp64(vec![1.0; len]),
            DataType::Int32 => TensorData::Int32(vec![1; len]),
            DataType::Int64 => TensorData::Int64(vec![1; len]),
            DataType::Bool => TensorData::Bool(vec![true; len]),
        }
    }

    /// Appends `other`, which must be of the same type (the engine checks types before batching).
    pub fn extend_from(&mut self, other: &TensorData) {
        match (self, other) {
            (TensorData::Fp32(a), TensorData::Fp32(b)) => a.extend_from_slice(b),
            (TensorData::Fp64(a), TensorData::Fp64(b)) => a.extend_from_slice(b),
            (TensorData::Int32(a), TensorData::Int32(b)) => a.extend_from_slice(b),
            (TensorData::Int64(a), TensorData::Int64(b)) => a.extend_from_slice(b),
            (TensorData::Bool(a), TensorData::Bool(b)) => a.extend_from_slice(b),
            (a, b) => unreachable!(
                "batched {} with {}: inputs are validated first",
                a.datatype(),
                b.datatype()
            ),
        }
    }

    /// The elements `[start, end)` as a new tensor.
    pub fn slice(&self, start: usize, end: usize) -> TensorData {
        match self {
            TensorData::Fp32(v) => TensorData::Fp32(v[start..end].to_vec()),
            TensorData::Fp64(v) => TensorData::Fp64(v[start..end].to_vec()),
            TensorData::Int32(v) => TensorData::Int32(v[start..end].to_vec()),
            TensorData::Int64(v) => TensorData::Int64(v[start..end].to_vec()),
            TensorData::Bool(v) => TensorData::Bool(v[start..end].to_vec()),
        }
    }
}

/// A named tensor. `shape[0]` is the batch dimension for every model the engine serves.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: TensorData,
}

impl Tensor {
    /// Rows in the batch dimension.
    pub fn rows(&self) -> usize {
        self.shape.first().copied().unwrap_or(0)
    }

    /// Elements in one row: the product of the dimensions after the first.
    pub fn row_len(&self) -> usize {
        self.shape.iter().skip(1).product()
    }
}
