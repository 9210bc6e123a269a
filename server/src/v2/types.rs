//! Wire types of the Open Inference Protocol (KServe V2) REST API, and their translation to engine tensors.

use std::fmt;

use mercator_engine::{DataType, Tensor, TensorData};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

#[derive(Debug, Deserialize)]
pub struct InferRequest {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub parameters: RequestParameters,
    pub inputs: Vec<InputTensor>,
    #[serde(default)]
    pub outputs: Vec<RequestedOutput>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RequestParameters {
    /// Binary tensor data extension: every output in binary unless the output says otherwise.
    #[serde(default)]
    pub binary_data_output: bool,
    /// Triton's request timeout, in microseconds: a request still queued past it is dropped unrun.
    #[serde(default)]
    pub timeout: Option<u64>,
}

#[derive(Debug, Deserialize)]
pub struct InputTensor {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: String,
    #[serde(default)]
    pub parameters: TensorParameters,
    #[serde(default)]
    pub data: Option<JsonData>,
}

#[derive(Debug, Default, Deserialize)]
pub struct TensorParameters {
    #[serde(default)]
    pub binary_data_size: Option<usize>,
    #[serde(default)]
    pub binary_data: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub struct RequestedOutput {
    pub name: String,
    #[serde(default)]
    pub parameters: TensorParameters,
}

/// A JSON scalar of a tensor's `data`, before the datatype says what it must be.
#[derive(Debug, Clone, Copy)]
pub enum Scalar {
    Float(f64),
    Int(i64),
    UInt(u64),
    Bool(bool),
}

/// `data` flattened in row-major order: the protocol allows nested arrays as well as a flat one.
#[derive(Debug, Default)]
pub struct JsonData(pub Vec<Scalar>);

impl<'de> Deserialize<'de> for JsonData {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Flatten<'a>(&'a mut Vec<Scalar>);

        impl<'de> de::DeserializeSeed<'de> for Flatten<'_> {
            type Value = ();
            fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
                deserializer.deserialize_any(self)
            }
        }

        impl<'de> Visitor<'de> for Flatten<'_> {
            type Value = ();
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("numbers or booleans, in a flat or nested array")
            }
            fn visit_f64<E>(self, v: f64) -> Result<(), E> {
                self.0.push(Scalar::Float(v));
                Ok(())
            }
            fn visit_i64<E>(self, v: i64) -> Result<(), E> {
                self.0.push(Scalar::Int(v));
                Ok(())
            }
            fn visit_u64<E>(self, v: u64) -> Result<(), E> {
                self.0.push(Scalar::UInt(v));
                Ok(())
            }
            fn visit_bool<E>(self, v: bool) -> Result<(), E> {
                self.0.push(Scalar::Bool(v));
                Ok(())
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
                if let Some(n) = seq.size_hint() {
                    self.0.reserve(n);
                }
                while seq.next_element_seed(Flatten(&mut *self.0))?.is_some() {}
                Ok(())
            }
        }

        let mut out = Vec::new();
        deserializer.deserialize_any(Flatten(&mut out))?;
        Ok(JsonData(out))
    }
}

impl InputTensor {
    /// Checks the shape and datatype and builds the engine's tensor from JSON data or from `binary`.
    pub fn into_tensor(self, binary: Option<&[u8]>) -> Result<Tensor, ApiError> {
        let name = self.name;
        let bad = |reason: String| ApiError::BadRequest(format!("input `{name}`: {reason}"));
        let datatype = DataType::parse(&self.datatype).ok_or_else(|| {
            bad(format!(
                "datatype `{}` is not served; use FP32, FP64, INT32, INT64 or BOOL",
                self.datatype
            ))
        })?;
        if self.shape.iter().any(|&d| d < 0) {
            return Err(bad(format!(
                "shape {:?} has a negative dimension",
                self.shape
            )));
        }
        let shape: Vec<usize> = self.shape.iter().map(|&d| d as usize).collect();
        let elements = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| bad("shape overflows".into()))?;
        let data = match (binary, self.data) {
            (Some(bytes), _) => from_bytes(datatype, bytes, elements).map_err(bad)?,
            (None, Some(json)) => {
                if json.0.len() != elements {
                    return Err(bad(format!(
                        "shape {shape:?} holds {elements} elements but data has {}",
                        json.0.len()
                    )));
                }
                from_json(datatype, json.0).map_err(bad)?
            }
            (None, None) => return Err(bad("has neither `data` nor `binary_data_size`".into())),
        };
        Ok(Tensor { name, shape, data })
    }
}

fn from_json(datatype: DataType, values: Vec<Scalar>) -> Result<TensorData, String> {
    fn convert<T>(
        values: Vec<Scalar>,
        datatype: DataType,
        f: impl Fn(Scalar) -> Option<T>,
    ) -> Result<Vec<T>, String> {
        values
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                f(v).ok_or_else(|| format!("element {i} ({}) is not a valid {datatype}", show(v)))
            })
            .collect()
    }
    let int = |v: Scalar| match v {
        Scalar::Int(i) => Some(i),
        Scalar::UInt(u) => i64::try_from(u).ok(),
        _ => None,
    };
    Ok(match datatype {
        DataType::Fp32 => TensorData::Fp32(convert(values, datatype, |v| match v {
            Scalar::Float(f) => Some(f as f32),
            Scalar::Int(i) => Some(i as f32),
            Scalar::UInt(u) => Some(u as f32),
            Scalar::Bool(_) => None,
        })?),
        DataType::Fp64 => TensorData::Fp64(convert(values, datatype, |v| match v {
            Scalar::Float(f) => Some(f),
            Scalar::Int(i) => Some(i as f64),
            Scalar::UInt(u) => Some(u as f64),
            Scalar::Bool(_) => None,
        })?),
        DataType::Int32 => TensorData::Int32(convert(values, datatype, |v| {
            int(v).and_then(|i| i32::try_from(i).ok())
        })?),
        DataType::Int64 => TensorData::Int64(convert(values, datatype, int)?),
        DataType::Bool => TensorData::Bool(convert(values, datatype, |v| match v {
            Scalar::Bool(b) => Some(b),
            _ => None,
        })?),
    })
}

fn show(v: Scalar) -> String {
    match v {
        Scalar::Float(f) => f.to_string(),
        Scalar::Int(i) => i.to_string(),
        Scalar::UInt(u) => u.to_string(),
        Scalar::Bool(b) => b.to_string(),
    }
}

/// Little-endian raw tensor data, as the binary tensor data extension carries it.
fn from_bytes(datatype: DataType, bytes: &[u8], elements: usize) -> Result<TensorData, String> {
    if bytes.len() != elements * datatype.size() {
        return Err(format!(
            "{} binary bytes for {elements} {datatype} elements; expected {}",
            bytes.len(),
            elements * datatype.size()
        ));
    }
    macro_rules! le {
        ($t:ty, $n:expr) => {
            bytes
                .chunks_exact($n)
                .map(|c| <$t>::from_le_bytes(c.try_into().expect("chunk size")))
                .collect()
        };
    }
    Ok(match datatype {
        DataType::Fp32 => TensorData::Fp32(le!(f32, 4)),
        DataType::Fp64 => TensorData::Fp64(le!(f64, 8)),
        DataType::Int32 => TensorData::Int32(le!(i32, 4)),
        DataType::Int64 => TensorData::Int64(le!(i64, 8)),
        DataType::Bool => TensorData::Bool(bytes.iter().map(|&b| b != 0).collect()),
    })
}

/// Appends a tensor's data as little-endian bytes.
pub fn write_bytes(data: &TensorData, out: &mut Vec<u8>) {
    match data {
        TensorData::Fp32(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        TensorData::Fp64(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        TensorData::Int32(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        TensorData::Int64(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        TensorData::Bool(v) => out.extend(v.iter().map(|&b| b as u8)),
    }
}

#[derive(Debug, Serialize)]
pub struct InferResponse<'a> {
    pub model_name: &'a str,
    pub model_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub outputs: Vec<OutputTensor>,
}

#[derive(Debug, Serialize)]
pub struct OutputTensor {
    pub name: String,
    pub datatype: &'static str,
    pub shape: Vec<usize>,
    /// Only for binary outputs: perf_analyzer refuses JSON outputs that carry parameters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<BinarySize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<DataOut>,
}

#[derive(Debug, Serialize)]
pub struct BinarySize {
    pub binary_data_size: usize,
}

/// Serialises tensor data as a flat JSON array.
#[derive(Debug)]
pub struct DataOut(pub TensorData);

impl Serialize for DataOut {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        fn all<S: Serializer, T: Serialize>(s: S, v: &[T]) -> Result<S::Ok, S::Error> {
            let mut seq = s.serialize_seq(Some(v.len()))?;
            for x in v {
                seq.serialize_element(x)?;
            }
            seq.end()
        }
        match &self.0 {
            TensorData::Fp32(v) => all(s, v),
            TensorData::Fp64(v) => all(s, v),
            TensorData::Int32(v) => all(s, v),
            TensorData::Int64(v) => all(s, v),
            TensorData::Bool(v) => all(s, v),
        }
    }
}

/// `GET /v2/models/{m}`: the model metadata response.
#[derive(Debug, Serialize)]
pub struct ModelMetadata {
    pub name: String,
    pub versions: Vec<String>,
    pub platform: &'static str,
    pub inputs: Vec<TensorMetadata>,
    pub outputs: Vec<TensorMetadata>,
}

#[derive(Debug, Serialize)]
pub struct TensorMetadata {
    pub name: String,
    pub datatype: &'static str,
    pub shape: Vec<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(json: &str) -> InputTensor {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn nested_and_flat_data_give_the_same_tensor() {
        let flat = input(r#"{"name":"x","shape":[2,2],"datatype":"FP32","data":[1,2.5,3,4]}"#);
        let nested =
            input(r#"{"name":"x","shape":[2,2],"datatype":"FP32","data":[[1,2.5],[3,4]]}"#);
        assert_eq!(
            flat.into_tensor(None).unwrap(),
            nested.into_tensor(None).unwrap()
        );
    }

    #[test]
    fn element_errors_name_the_input_and_the_element() {
        let err = input(r#"{"name":"x","shape":[1,2],"datatype":"INT64","data":[1,2.5]}"#)
            .into_tensor(None)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "input `x`: element 1 (2.5) is not a valid INT64"
        );
        let err = input(r#"{"name":"x","shape":[1,3],"datatype":"BOOL","data":[true,false]}"#)
            .into_tensor(None)
            .unwrap_err();
        assert!(
            err.to_string().contains("holds 3 elements but data has 2"),
            "{err}"
        );
        let err = input(r#"{"name":"x","shape":[1],"datatype":"FP16","data":[1]}"#)
            .into_tensor(None)
            .unwrap_err();
        assert!(err.to_string().contains("`FP16` is not served"), "{err}");
    }

    #[test]
    fn binary_data_is_little_endian() {
        let bytes: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let t = input(
            r#"{"name":"x","shape":[1,2],"datatype":"FP32","parameters":{"binary_data_size":8}}"#,
        )
        .into_tensor(Some(&bytes))
        .unwrap();
        assert_eq!(t.data, TensorData::Fp32(vec![1.5, -2.0]));
        let mut back = Vec::new();
        write_bytes(&t.data, &mut back);
        assert_eq!(back, bytes);
    }
}
