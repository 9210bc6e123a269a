//! `mercator features profile`: a model version's reference profile, from the reference period of a price
//! history, written beside its manifest as `profile.json`.
//!
//! The input columns are the feature rows the feature pipeline materialises for the period (the code that
//! serves them); the output columns are the model's answers to those rows, from the model itself in ONNX
//! Runtime. Use a period the model did not train on (the calibration period): a reference made of training
//! rows makes the live data look drifted by how well the model fitted them.

use std::path::Path;

use mercator_engine::{Backend, Manifest, OrtBackend, Runtime, Tensor, TensorData};
use mercator_features::polars::prelude::{DataType, *};
use mercator_features::profile::{
    calibrate, kinds, reference_column, seasonal, Column, ColumnRef, Counts, KindOf, Profile, Role,
};
use mercator_features::{materialize, FeatureSpec};

/// Rows per ONNX Runtime call while profiling the outputs.
const CHUNK: usize = 1024;

/// What to profile.
pub struct Request<'a> {
    /// The version's folder: `model.toml`, `model.onnx`, its feature spec.
    pub version_dir: &'a Path,
    /// The price history (`.csv` or `.parquet`), as `features materialize` reads it.
    pub input: &'a Path,
    /// The reference period, inclusive.
    pub from: chrono::NaiveDate,
    pub to: chrono::NaiveDate,
    pub bins: usize,
}

/// The reference profile of the version, from the rows of the period.
pub fn build(runtime: &Runtime, r: &Request) -> Result<Profile, String> {
    let manifest =
        Manifest::from_file(&r.version_dir.join("model.toml")).map_err(|e| e.to_string())?;
    let features = manifest.features.as_ref().ok_or(
        "the manifest names no feature spec: only feature-pipeline models can be profiled",
    )?;
    let spec =
        FeatureSpec::from_file(&r.version_dir.join(&features.spec)).map_err(|e| e.to_string())?;
    let input = manifest.inputs.first().ok_or("the manifest has no input")?;
    if manifest.inputs.len() != 1 || input.fixed_row_len() != Some(spec.features.len()) {
        return Err(format!(
            "the model must take one input of {} features per row",
            spec.features.len()
        ));
    }
    let m = materialize::materialize(&spec, r.input).map_err(|e| e.to_string())?;
    let (from, to) = (
        mercator_features::day_of(r.from),
        mercator_features::day_of(r.to),
    );
    let names = spec.names();
    let frame = m
        .frame
        .lazy()
        .filter(
            col("observed_on")
                .cast(DataType::Int32)
                .gt_eq(lit(from))
                .and(col("observed_on").cast(DataType::Int32).lt_eq(lit(to))),
        )
        .select(
            std::iter::once(col("observed_on").cast(DataType::Int32).alias("__day"))
                .chain(
                    names
                        .iter()
                        .map(|n| col(n.as_str()).cast(DataType::Float64)),
                )
                .collect::<Vec<_>>(),
        )
        .collect()
        .map_err(|e| e.to_string())?;
    let rows = frame.height();
    if rows == 0 {
        return Err(format!("no feature rows from {} to {}", r.from, r.to));
    }
    let weeks: Vec<i32> = frame
        .column("__day")
        .and_then(|c| c.i32().cloned())
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|d| week_of(d.unwrap_or_default()))
        .collect();
    let mut values: Vec<Vec<f64>> = Vec::with_capacity(names.len());
    for name in &names {
        let column = frame
            .column(name)
            .and_then(|c| c.f64().cloned())
            .map_err(|e| e.to_string())?;
        // As the model sees them: FP32. A value's f64 and f32 can fall either side of an edge.
        values.push(
            column
                .into_iter()
                .map(|v| v.map_or(f64::NAN, |v| f64::from(v as f32)))
                .collect(),
        );
    }
    let mut columns: Vec<Column> = names
        .iter()
        .zip(kinds(&spec))
        .enumerate()
        .map(|(i, (name, kind))| {
            let at = ColumnRef {
                name: name.clone(),
                role: Role::Input,
                tensor: input.name.clone(),
                index: i,
            };
            let mut column = reference_column(at, kind, &values[i], r.bins);
            column.seasonal = seasonal(&spec.features[i]);
            calibrated(column, &values[i], &weeks)
        })
        .collect();
    let (output_columns, output_values) =
        outputs(runtime, r.version_dir, &manifest, &values, rows, r.bins)?;
    columns.extend(
        output_columns
            .into_iter()
            .zip(&output_values)
            .map(|(c, v)| calibrated(c, v, &weeks)),
    );
    Ok(Profile {
        source: format!(
            "{} from {} to {}: {rows} feature rows",
            r.input
                .file_name()
                .map(|f| f.to_string_lossy())
                .unwrap_or_default(),
            r.from,
            r.to
        ),
        rows: rows as u64,
        columns,
    })
}

/// Every element of every output, profiled over the model's answers to the reference rows.
fn outputs(
    runtime: &Runtime,
    version_dir: &Path,
    manifest: &Manifest,
    values: &[Vec<f64>],
    rows: usize,
    bins: usize,
) -> Result<(Vec<Column>, Vec<Vec<f64>>), String> {
    let mut backend = OrtBackend::load(runtime, &version_dir.join("model.onnx"), manifest)
        .map_err(|e| e.to_string())?;
    let width = values.len();
    let mut answers: Vec<Vec<f64>> = Vec::new();
    let mut specs = Vec::new();
    for start in (0..rows).step_by(CHUNK) {
        let n = CHUNK.min(rows - start);
        let mut data = Vec::with_capacity(n * width);
        for r in start..start + n {
            data.extend(values.iter().map(|c| c[r] as f32));
        }
        let inputs = vec![Tensor {
            name: manifest.inputs[0].name.clone(),
            shape: vec![n, width],
            data: TensorData::Fp32(data),
        }];
        let out = backend.run(inputs).map_err(|e| e.to_string())?;
        if answers.is_empty() {
            for t in &out {
                for j in 0..t.row_len() {
                    specs.push((t.name.clone(), j, t.row_len()));
                }
            }
            answers = vec![Vec::with_capacity(rows); specs.len()];
        }
        let mut k = 0;
        for t in &out {
            let flat = t.data.to_f64();
            let w = t.row_len();
            for j in 0..w {
                answers[k].extend((0..n).map(|r| flat[r * w + j]));
                k += 1;
            }
        }
    }
    let columns = specs
        .into_iter()
        .zip(&answers)
        .map(|((tensor, j, w), values)| {
            let name = if w == 1 {
                tensor.clone()
            } else {
                format!("{tensor}[{j}]")
            };
            let at = ColumnRef {
                name,
                role: Role::Output,
                tensor,
                index: j,
            };
            reference_column(at, KindOf::Numeric, values, bins)
        })
        .collect();
    Ok((columns, answers))
}

/// Weeks of the reference with fewer rows than this are left out of a column's calibration: their
/// metric is mostly sampling noise (and a live window needs `min_rows`, 500 by default, to be judged).
const MIN_CHUNK_ROWS: usize = 300;

/// `column` with its calibration on the weeks of the reference period. A week, not a month: a live window
/// (an hour or a day of traffic) holds prices of a few recent days, and its level features are as
/// concentrated as a week's, not as spread as a month's; calibrated on months, clean replayed windows of
/// 500 rows flagged 64 times in 14 windows, on weeks 6 (benches/RESULTS.md).
fn calibrated(mut column: Column, values: &[f64], weeks: &[i32]) -> Column {
    let mut by_week: std::collections::BTreeMap<i32, Counts> = Default::default();
    let mut rows: std::collections::BTreeMap<i32, usize> = Default::default();
    for (x, w) in values.iter().zip(weeks) {
        by_week
            .entry(*w)
            .or_insert_with(|| Counts::empty(column.kind.bins()))
            .observe(&column.kind, *x);
        *rows.entry(*w).or_default() += 1;
    }
    let chunks: Vec<Counts> = by_week
        .into_iter()
        .filter(|(w, _)| rows[w] >= MIN_CHUNK_ROWS)
        .map(|(_, c)| c)
        .collect();
    column.calibration = calibrate(&column, &chunks);
    column
}

/// The week (Monday to Sunday) of a day, numbered from the one of 1970-01-01 (a Thursday).
fn week_of(day: i32) -> i32 {
    (day + 3).div_euclid(7)
}
