//! `mercator features materialize`: a price history file to a training frame, with the serving code.
//!
//! Polars reads the file (CSV or Parquet), types and checks its columns, turns dates into days, and builds
//! the integer day tiles of every series with a group-by. The rows are then computed by [`crate::row`], the
//! function the server calls, replaying the days in order: each observation's row reads only the tiles of
//! earlier days. Polars never runs per row, and the row arithmetic is the server's, so a training row and a
//! served row are equal bit for bit.
//!
//! Input columns: `observed_on` (date), `material_code`, `category`, `supplier_code`, `supplier_reliability`,
//! `quantity`, `lead_time_days`, `unit_price`, `list_price`, and optionally `is_anomaly`. The frame written
//! has `observed_on`, `material_code`, `supplier_code`, `unit_price` (the label), `is_anomaly` when given,
//! then one Float64 column per feature, in the spec's order.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use polars::prelude::*;

use crate::history::{to_units, Agg, Day, Series as Tiles, Tile};
use crate::row::{assemble, RowHistory, RowInput};
use crate::spec::FeatureSpec;
use crate::FeatureError;

/// A series of one material from one supplier: (material code, supplier code).
type SupplierKey = (String, String);

/// A training frame and what was left out of it.
pub struct Materialized {
    pub frame: DataFrame,
    pub rows_in: usize,
    /// Rows without a feature row, by reason (too little history, a delivery beyond the horizon, ...).
    pub dropped: BTreeMap<String, usize>,
}

fn fail(e: impl std::fmt::Display) -> FeatureError {
    FeatureError::Materialize(e.to_string())
}

/// Reads `input` (`.csv` or `.parquet`) into observations sorted by day, with their units.
fn observations(input: &Path, spec: &FeatureSpec) -> Result<DataFrame, FeatureError> {
    let path = input.to_string_lossy().to_string();
    let lazy = match input.extension().and_then(|e| e.to_str()) {
        Some("parquet") => {
            LazyFrame::scan_parquet(PlRefPath::new(path.as_str()), Default::default())
        }
        Some("csv") => LazyCsvReader::new(PlRefPath::new(path.as_str()))
            .with_has_header(true)
            .with_try_parse_dates(true)
            .finish(),
        _ => return Err(fail(format!("{path}: give a .csv or .parquet file"))),
    }
    .map_err(fail)?;
    let has_anomaly = lazy
        .clone()
        .collect_schema()
        .map_err(fail)?
        .contains("is_anomaly");
    let mut columns = vec![
        col("observed_on")
            .cast(DataType::Date)
            .cast(DataType::Int32)
            .alias("day"),
        col("material_code").cast(DataType::String),
        col("category").cast(DataType::String),
        col("supplier_code").cast(DataType::String),
        col("supplier_reliability").cast(DataType::Float64),
        col("quantity").cast(DataType::Float64),
        col("lead_time_days").cast(DataType::Int32),
        col("unit_price").cast(DataType::Float64),
        col("list_price").cast(DataType::Float64),
    ];
    if has_anomaly {
        columns.push(col("is_anomaly").cast(DataType::Int32));
    }
    let mut frame = lazy
        .with_row_index("row", None)
        .select(
            std::iter::once(col("row"))
                .chain(columns)
                .collect::<Vec<_>>(),
        )
        .sort(["day", "row"], Default::default())
        .collect()
        .map_err(fail)?;
    // Units by the one rounding function the server uses on every ingested price.
    let units: Vec<Option<i64>> = frame
        .column("unit_price")
        .map_err(fail)?
        .f64()
        .map_err(fail)?
        .into_iter()
        .map(|p| p.map(|p| to_units(p, spec.units_per_price)))
        .collect();
    frame
        .with_column(Column::new("units".into(), units))
        .map_err(fail)?;
    Ok(frame)
}

/// The day tiles of each series: one row per (keys, day) with the integer sums.
fn tiles(frame: &DataFrame, keys: &[&str]) -> Result<Vec<(Vec<String>, Day, Agg)>, FeatureError> {
    let mut by: Vec<Expr> = keys.iter().map(|k| col(*k)).collect();
    by.push(col("day"));
    let units = || col("units").cast(DataType::Int128);
    let tiles = frame
        .clone()
        .lazy()
        .filter(col("units").is_not_null())
        .group_by(by)
        .agg([
            len().alias("n"),
            units().sum().alias("sum"),
            (units() * units()).sum().alias("sumsq"),
            col("units").min().alias("min"),
            col("units").max().alias("max"),
        ])
        .collect()
        .map_err(fail)?;
    let key_columns = keys
        .iter()
        .map(|k| tiles.column(k).and_then(|c| c.str().cloned()))
        .collect::<PolarsResult<Vec<_>>>()
        .map_err(fail)?;
    let day = tiles
        .column("day")
        .and_then(|c| c.i32().cloned())
        .map_err(fail)?;
    let n = tiles
        .column("n")
        .and_then(|c| c.cast(&DataType::UInt64))
        .map_err(fail)?;
    let n = n.u64().map_err(fail)?;
    let sum = tiles
        .column("sum")
        .and_then(|c| c.i128().cloned())
        .map_err(fail)?;
    let sumsq = tiles
        .column("sumsq")
        .and_then(|c| c.i128().cloned())
        .map_err(fail)?;
    let min = tiles
        .column("min")
        .and_then(|c| c.i64().cloned())
        .map_err(fail)?;
    let max = tiles
        .column("max")
        .and_then(|c| c.i64().cloned())
        .map_err(fail)?;
    let mut out = Vec::with_capacity(tiles.height());
    for i in 0..tiles.height() {
        let key: Option<Vec<String>> = key_columns
            .iter()
            .map(|c| c.get(i).map(str::to_string))
            .collect();
        let (Some(key), Some(day)) = (key, day.get(i)) else {
            continue;
        };
        out.push((
            key,
            day,
            Agg {
                n: n.get(i).unwrap_or(0),
                sum: sum.get(i).unwrap_or(0),
                sumsq: sumsq.get(i).unwrap_or(0),
                min: min.get(i).unwrap_or(i64::MAX),
                max: max.get(i).unwrap_or(i64::MIN),
            },
        ));
    }
    Ok(out)
}

/// Computes the training frame of `input` under `spec`.
pub fn materialize(spec: &FeatureSpec, input: &Path) -> Result<Materialized, FeatureError> {
    let obs = observations(input, spec)?;
    let rows_in = obs.height();
    // Tiles by day, so the replay can add each day after computing its rows.
    let mut market_tiles: BTreeMap<Day, Vec<(String, Agg)>> = BTreeMap::new();
    for (key, day, agg) in tiles(&obs, &["material_code"])? {
        market_tiles
            .entry(day)
            .or_default()
            .push((key[0].clone(), agg));
    }
    let mut supplier_tiles: BTreeMap<Day, Vec<(SupplierKey, Agg)>> = BTreeMap::new();
    for (key, day, agg) in tiles(&obs, &["material_code", "supplier_code"])? {
        supplier_tiles
            .entry(day)
            .or_default()
            .push(((key[0].clone(), key[1].clone()), agg));
    }

    let str_col = |name: &str| -> Result<StringChunked, FeatureError> {
        obs.column(name)
            .and_then(|c| c.str().cloned())
            .map_err(fail)
    };
    let f64_col = |name: &str| -> Result<Float64Chunked, FeatureError> {
        obs.column(name)
            .and_then(|c| c.f64().cloned())
            .map_err(fail)
    };
    let i32_col = |name: &str| -> Result<Int32Chunked, FeatureError> {
        obs.column(name)
            .and_then(|c| c.i32().cloned())
            .map_err(fail)
    };
    let (day, material, category, supplier) = (
        i32_col("day")?,
        str_col("material_code")?,
        str_col("category")?,
        str_col("supplier_code")?,
    );
    let (reliability, quantity, lead, price, list_price) = (
        f64_col("supplier_reliability")?,
        f64_col("quantity")?,
        i32_col("lead_time_days")?,
        f64_col("unit_price")?,
        f64_col("list_price")?,
    );

    let names = spec.names();
    let mut features: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    let mut kept: Vec<IdxSize> = Vec::new();
    let mut dropped: BTreeMap<String, usize> = BTreeMap::new();
    let mut market: HashMap<String, Tiles> = HashMap::new();
    let mut by_supplier: HashMap<SupplierKey, Tiles> = HashMap::new();
    let empty = Tiles::default();
    let mut current: Option<Day> = None;
    let mut add_day = |d: Day,
                       market: &mut HashMap<String, Tiles>,
                       by_supplier: &mut HashMap<SupplierKey, Tiles>| {
        for (key, agg) in market_tiles.remove(&d).unwrap_or_default() {
            market
                .entry(key)
                .or_default()
                .insert_tile(d, Tile::from_agg(agg));
        }
        for (key, agg) in supplier_tiles.remove(&d).unwrap_or_default() {
            by_supplier
                .entry(key)
                .or_default()
                .insert_tile(d, Tile::from_agg(agg));
        }
    };
    for i in 0..obs.height() {
        let Some(d) = day.get(i) else {
            *dropped.entry("no date".into()).or_default() += 1;
            continue;
        };
        // A new day: the previous day's prices join the history before this day's rows are computed.
        if current != Some(d) {
            if let Some(previous) = current {
                add_day(previous, &mut market, &mut by_supplier);
            }
            current = Some(d);
        }
        let (Some(m), Some(c), Some(q), Some(l), Some(p)) = (
            material.get(i),
            category.get(i),
            quantity.get(i),
            lead.get(i),
            price.get(i),
        ) else {
            *dropped.entry("missing values".into()).or_default() += 1;
            continue;
        };
        let s = supplier.get(i);
        let input = RowInput {
            as_of: d,
            quantity: q,
            delivery: Some(d + l),
            category: c,
            supplier_code: s,
            list_price: list_price.get(i),
            supplier_reliability: reliability.get(i),
            price: Some(p),
        };
        let history = RowHistory {
            market: market.get(m).unwrap_or(&empty),
            supplier: s.and_then(|s| by_supplier.get(&(m.to_string(), s.to_string()))),
        };
        match assemble(spec, &input, history) {
            Ok(row) => {
                for (column, value) in features.iter_mut().zip(row) {
                    column.push(value);
                }
                kept.push(i as IdxSize);
            }
            Err(e) => {
                let reason = match e {
                    FeatureError::TooLittleHistory { .. } => "too little history".to_string(),
                    FeatureError::Lead { .. } => "delivery beyond the horizon".to_string(),
                    FeatureError::Quantity(_) => "quantity not positive".to_string(),
                    FeatureError::Price(_) => "price not positive".to_string(),
                    e => e.to_string(),
                };
                *dropped.entry(reason).or_default() += 1;
            }
        }
    }

    let mut keep = vec!["day", "material_code", "supplier_code", "unit_price"];
    if obs.column("is_anomaly").is_ok() {
        keep.push("is_anomaly");
    }
    let idx = IdxCa::from_vec("idx".into(), kept);
    let mut frame = obs.select(keep).map_err(fail)?.take(&idx).map_err(fail)?;
    for (name, values) in names.iter().zip(features) {
        frame
            .with_column(Column::new(name.as_str().into(), values))
            .map_err(fail)?;
    }
    let frame = frame
        .lazy()
        .with_column(col("day").cast(DataType::Date).alias("day"))
        .rename(["day"], ["observed_on"], true)
        .collect()
        .map_err(fail)?;
    Ok(Materialized {
        frame,
        rows_in,
        dropped,
    })
}

/// Writes a frame as Parquet, or as CSV when `output` ends in `.csv`.
pub fn write(frame: &mut DataFrame, output: &Path) -> Result<(), FeatureError> {
    let file =
        std::fs::File::create(output).map_err(|e| fail(format!("{}: {e}", output.display())))?;
    match output.extension().and_then(|e| e.to_str()) {
        Some("csv") => CsvWriter::new(file).finish(frame).map_err(fail),
        _ => ParquetWriter::new(file)
            .finish(frame)
            .map(|_| ())
            .map_err(fail),
    }
}
