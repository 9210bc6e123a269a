//! A batch's input as CSV, the canonical form on disk: price requests (JSON arrays and Parquet files turned
//! into it), or a model's raw feature rows (one value a cell). The file is indexed at submit: the header
//! checked, every record's structure read, the rows counted and cut into chunks by byte offset, so a
//! malformed file is refused before a job exists and a chunk can be read again on its own after a restart.

use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use chrono::NaiveDate;
use csv::StringRecord;
use mercator_store::Chunk;

use crate::api::csv_body::{self, Columns};
use crate::error::ApiError;
use crate::predict::PriceRequest;

/// The columns a batch CSV (or Parquet file, or JSON object) may have: the single endpoint's fields.
pub const COLUMNS: Columns = Columns {
    allowed: &[
        "material_id",
        "quantity",
        "supplier_id",
        "delivery_date",
        "as_of",
        "interval_level",
    ],
    required: &["material_id", "quantity"],
    numeric: &["quantity", "interval_level"],
};

/// What a batch's rows are.
#[derive(Debug, Clone, Copy)]
pub enum Layout {
    /// Price requests: the header names [`COLUMNS`], every record has as many cells.
    Price,
    /// Raw feature rows of a model whose one input takes `width` FP32 values a row: a header of `width`
    /// names, then one value a cell (a row of another width is that row's error when it runs).
    Features { width: usize },
}

/// `input_format` of a job of raw feature rows.
pub const FEATURES: &str = "features";

/// A raw feature row checked for a model input of `width` values: the values as FP32.
pub fn feature_row(
    len: usize,
    values: impl Iterator<Item = Result<f64, ApiError>>,
    width: usize,
) -> Result<Vec<f32>, ApiError> {
    if len != width {
        return Err(ApiError::invalid(
            "rows",
            format!("{len} values; the model takes {width}"),
        ));
    }
    values
        .map(|v| {
            let v = v?;
            if v.is_finite() && v.abs() <= f32::MAX as f64 {
                Ok(v as f32)
            } else {
                Err(ApiError::invalid(
                    "rows",
                    "every value must be a finite FP32 number",
                ))
            }
        })
        .collect()
}

/// A raw feature row read from a CSV record.
pub fn parse_features(record: &StringRecord, width: usize) -> Result<Vec<f32>, ApiError> {
    feature_row(
        record.len(),
        record.iter().map(|c| {
            c.parse::<f64>()
                .map_err(|_| ApiError::invalid("rows", format!("`{c}` is not a number")))
        }),
        width,
    )
}

/// Raw feature rows written as the CSV input (a header `v1..vN`, then each row's values), indexed as they
/// are written: at most `max_rows` rows (else 413), in chunks of `chunk_rows`.
pub fn features_to_csv(
    rows: &[Vec<f64>],
    width: usize,
    path: &Path,
    chunk_rows: usize,
    max_rows: u64,
) -> Result<Vec<Chunk>, ApiError> {
    use std::io::Write;
    if rows.len() as u64 > max_rows {
        return Err(ApiError::BatchTooLarge(format!(
            "{} rows, more than {max_rows} (--batch-max-rows)",
            rows.len()
        )));
    }
    let file = std::fs::File::create(path).map_err(io)?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    let header: Vec<String> = (1..=width).map(|i| format!("v{i}")).collect();
    let mut line = header.join(",").into_bytes();
    line.push(b'\n');
    let mut at = line.len() as u64;
    w.write_all(&line).map_err(io)?;
    let mut chunks: Vec<Chunk> = Vec::new();
    let mut number = ryu::Buffer::new();
    for (i, row) in rows.iter().enumerate() {
        if i % chunk_rows.max(1) == 0 {
            chunks.push(Chunk {
                first_row: i as u64,
                rows: 0,
                byte_start: at,
                byte_end: at,
            });
        }
        line.clear();
        for (k, v) in row.iter().enumerate() {
            if k > 0 {
                line.push(b',');
            }
            // Written as read back: a value that is not finite fails its row when it runs.
            if v.is_finite() {
                line.extend_from_slice(number.format_finite(*v).as_bytes());
            } else {
                line.extend_from_slice(b"NaN");
            }
        }
        line.push(b'\n');
        w.write_all(&line).map_err(io)?;
        at += line.len() as u64;
        let last = chunks.last_mut().expect("a chunk was opened");
        last.rows += 1;
        last.byte_end = at;
    }
    w.flush().map_err(io)?;
    Ok(chunks)
}

/// Where each field is in a record, from the header row.
#[derive(Debug, Clone)]
pub struct PriceColumns {
    material_id: usize,
    quantity: usize,
    supplier_id: Option<usize>,
    delivery_date: Option<usize>,
    as_of: Option<usize>,
    interval_level: Option<usize>,
}

impl PriceColumns {
    /// The positions in a header row `csv_body::open` has checked (material_id and quantity are there).
    pub fn new(headers: &StringRecord) -> PriceColumns {
        let at = |name: &str| headers.iter().position(|h| h == name);
        PriceColumns {
            material_id: at("material_id").unwrap_or(0),
            quantity: at("quantity").unwrap_or(0),
            supplier_id: at("supplier_id"),
            delivery_date: at("delivery_date"),
            as_of: at("as_of"),
            interval_level: at("interval_level"),
        }
    }

    /// One record as a request, or a 400 naming the field that is wrong (what the JSON body would say).
    pub fn parse(&self, record: &StringRecord) -> Result<PriceRequest, ApiError> {
        let cell = |i: Option<usize>| i.and_then(|i| record.get(i)).filter(|c| !c.is_empty());
        let number = |name: &str, i: Option<usize>| -> Result<Option<f64>, ApiError> {
            cell(i)
                .map(|c| {
                    c.parse::<f64>()
                        .map_err(|_| ApiError::invalid(name, format!("`{c}` is not a number")))
                })
                .transpose()
        };
        let date = |name: &str, i: Option<usize>| -> Result<Option<NaiveDate>, ApiError> {
            cell(i)
                .map(|c| {
                    mercator_store::parse_date(c)
                        .map_err(|e| ApiError::invalid(name, format!("{name}: {e}")))
                })
                .transpose()
        };
        let material_id = cell(Some(self.material_id))
            .ok_or_else(|| ApiError::invalid("material_id", "missing field `material_id`"))?;
        let quantity = number("quantity", Some(self.quantity))?
            .ok_or_else(|| ApiError::invalid("quantity", "missing field `quantity`"))?;
        Ok(PriceRequest {
            material_id: material_id.to_string(),
            quantity,
            supplier_id: cell(self.supplier_id).map(str::to_string),
            delivery_date: date("delivery_date", self.delivery_date)?,
            as_of: date("as_of", self.as_of)?,
            interval_level: number("interval_level", self.interval_level)?,
        })
    }
}

/// Parsed rows split for pricing: the requests that parsed (moved, not copied), and each row's parse error
/// or `None` where its request went.
pub fn split(
    parsed: Vec<Result<PriceRequest, ApiError>>,
) -> (Vec<PriceRequest>, Vec<Option<ApiError>>) {
    let mut requests = Vec::with_capacity(parsed.len());
    let errors = parsed
        .into_iter()
        .map(|p| match p {
            Ok(request) => {
                requests.push(request);
                None
            }
            Err(e) => Some(e),
        })
        .collect();
    (requests, errors)
}

/// Each row's outcome, in input order: its parse error, or the next answer.
pub fn merge<T>(
    errors: Vec<Option<ApiError>>,
    answers: Vec<Result<T, ApiError>>,
) -> Vec<Result<T, ApiError>> {
    let mut answers = answers.into_iter();
    errors
        .into_iter()
        .map(|e| match e {
            Some(e) => Err(e),
            None => answers
                .next()
                .unwrap_or_else(|| Err(ApiError::BadRequest("the row was not answered".into()))),
        })
        .collect()
}

/// A reader of CSV records as batch inputs are read everywhere (cells trimmed).
fn reader<R: Read>(from: R, headers: bool) -> csv::Reader<R> {
    builder(headers).from_reader(from)
}

fn builder(headers: bool) -> csv::ReaderBuilder {
    let mut b = csv::ReaderBuilder::new();
    b.trim(csv::Trim::All).has_headers(headers);
    b
}

/// What indexing found: the header row and the chunks.
pub struct Indexed {
    pub headers: StringRecord,
    pub chunks: Vec<Chunk>,
    pub rows: u64,
}

/// Reads a CSV input through: the header must name the expected columns (price requests) or as many as the
/// model's input width (feature rows), every price record must have as many cells as the header (else 400
/// naming the line), at most `max_rows` rows (else 413). Chunks of `chunk_rows` rows, by byte offset.
pub fn index(
    path: &Path,
    layout: Layout,
    chunk_rows: usize,
    max_rows: u64,
) -> Result<Indexed, ApiError> {
    let file = std::fs::File::open(path).map_err(io)?;
    // Feature rows may be of any length: a short or long row is that row's error.
    let mut reader = builder(true)
        .flexible(matches!(layout, Layout::Features { .. }))
        .from_reader(BufReader::with_capacity(1 << 20, file));
    let headers = reader
        .headers()
        .map_err(|e| ApiError::BadRequest(format!("the CSV header row cannot be read: {e}")))?
        .clone();
    match layout {
        Layout::Price => csv_body::check_headers(&headers, &COLUMNS)?,
        Layout::Features { width } if headers.len() != width => {
            return Err(ApiError::BadRequest(format!(
                "the CSV header names {} columns; the model takes {width} values a row",
                headers.len()
            )))
        }
        Layout::Features { .. } => {}
    }
    let mut chunks: Vec<Chunk> = Vec::new();
    let mut record = csv::ByteRecord::new();
    let mut rows = 0u64;
    let chunk_rows = chunk_rows.max(1) as u64;
    loop {
        let start = reader.position().byte();
        let more = reader.read_byte_record(&mut record).map_err(|e| {
            let line = e.position().map_or(0, |p| p.line());
            ApiError::BadRequest(format!("the CSV cannot be read at line {line}: {e}"))
        })?;
        if !more {
            if let Some(last) = chunks.last_mut() {
                last.byte_end = reader.position().byte();
            }
            break;
        }
        if rows.is_multiple_of(chunk_rows) {
            if let Some(last) = chunks.last_mut() {
                last.byte_end = start;
            }
            chunks.push(Chunk {
                first_row: rows,
                rows: 0,
                byte_start: start,
                byte_end: start,
            });
        }
        rows += 1;
        if rows > max_rows {
            return Err(ApiError::BatchTooLarge(format!(
                "more than {max_rows} rows (--batch-max-rows)"
            )));
        }
        if let Some(last) = chunks.last_mut() {
            last.rows += 1;
        }
    }
    Ok(Indexed {
        headers,
        chunks,
        rows,
    })
}

/// The header row of a CSV input.
pub fn headers(path: &Path) -> Result<StringRecord, ApiError> {
    let file = std::fs::File::open(path).map_err(io)?;
    let mut reader = reader(BufReader::new(file), true);
    Ok(reader
        .headers()
        .map_err(|e| ApiError::BadRequest(format!("the CSV header row cannot be read: {e}")))?
        .clone())
}

/// A chunk's records, each made into a `T` by `parse` (given the record, or the error reading it: structure
/// was checked at submit, so what is left is a record that is not UTF-8), read from its bytes of the input.
pub fn read_chunk<T>(
    path: &Path,
    chunk: &Chunk,
    mut parse: impl FnMut(Result<&StringRecord, ApiError>) -> T,
) -> Result<Vec<T>, ApiError> {
    let mut file = std::fs::File::open(path).map_err(io)?;
    file.seek(SeekFrom::Start(chunk.byte_start)).map_err(io)?;
    let mut bytes = vec![0u8; (chunk.byte_end - chunk.byte_start) as usize];
    file.read_exact(&mut bytes).map_err(io)?;
    let mut reader = builder(false).flexible(true).from_reader(bytes.as_slice());
    let mut rows = Vec::with_capacity(chunk.rows as usize);
    let mut record = StringRecord::new();
    loop {
        match reader.read_record(&mut record) {
            Ok(true) => rows.push(parse(Ok(&record))),
            Ok(false) => break,
            Err(e) => rows.push(parse(Err(ApiError::invalid("row", e.to_string())))),
        }
    }
    if rows.len() as u64 != chunk.rows {
        return Err(ApiError::Engine(mercator_engine::EngineError::Runtime(
            format!(
                "chunk at row {} holds {} records, {} were indexed: the input changed",
                chunk.first_row,
                rows.len(),
                chunk.rows
            ),
        )));
    }
    Ok(rows)
}

/// A JSON array of request objects written as the CSV input: each field a cell (numbers as written, strings
/// as they are), so a bad value becomes that row's error when it runs. An element that is not an object,
/// or that names a field requests do not have, refuses the whole body.
pub fn json_to_csv(values: &[serde_json::Value], path: &Path) -> Result<(), ApiError> {
    let names = COLUMNS.allowed;
    let file = std::fs::File::create(path).map_err(io)?;
    let mut w = csv::Writer::from_writer(std::io::BufWriter::new(file));
    w.write_record(names).map_err(csv_io)?;
    let mut cells: Vec<String> = vec![String::new(); names.len()];
    for (i, value) in values.iter().enumerate() {
        let object = value.as_object().ok_or_else(|| {
            ApiError::invalid(
                &format!("[{i}]"),
                "each element must be an object of price request fields",
            )
        })?;
        if let Some(unknown) = object.keys().find(|k| !names.contains(&k.as_str())) {
            return Err(ApiError::invalid(
                &format!("[{i}].{unknown}"),
                format!("unknown field; fields are {}", names.join(", ")),
            ));
        }
        for (cell, name) in cells.iter_mut().zip(names) {
            *cell = match object.get(*name) {
                None | Some(serde_json::Value::Null) => String::new(),
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
            };
        }
        w.write_record(&cells).map_err(csv_io)?;
    }
    w.flush().map_err(io)?;
    Ok(())
}

/// A Parquet file of requests (columns named as the fields) written as the CSV input.
pub fn parquet_to_csv(from: &Path, to: &Path) -> Result<(), ApiError> {
    use polars::prelude::{CsvWriter, ParquetReader, SerReader, SerWriter};
    let file = std::fs::File::open(from).map_err(io)?;
    let mut frame = ParquetReader::new(file).finish().map_err(|e| {
        ApiError::BadRequest(format!("the body is not a readable Parquet file: {e}"))
    })?;
    let headers: StringRecord = frame
        .get_column_names()
        .iter()
        .map(|n| n.as_str())
        .collect();
    csv_body::check_headers(&headers, &COLUMNS)?;
    let out = std::fs::File::create(to).map_err(io)?;
    CsvWriter::new(std::io::BufWriter::new(out))
        .include_header(true)
        .finish(&mut frame)
        .map_err(|e| {
            ApiError::BadRequest(format!("the Parquet file cannot be read through: {e}"))
        })?;
    Ok(())
}

pub fn io(e: std::io::Error) -> ApiError {
    ApiError::Engine(mercator_engine::EngineError::Runtime(format!(
        "batch files: {e}"
    )))
}

fn csv_io(e: csv::Error) -> ApiError {
    ApiError::Engine(mercator_engine::EngineError::Runtime(format!(
        "batch files: {e}"
    )))
}
