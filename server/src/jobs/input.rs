//! A batch's input: price requests as CSV (the canonical form on disk), with JSON arrays and Parquet files
//! turned into it. The file is indexed at submit: the header checked, every record's structure read, the
//! rows counted and cut into chunks by byte offset, so a malformed file is refused before a job exists and a
//! chunk can be read again on its own after a restart.

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
                    c.parse::<NaiveDate>().map_err(|e| {
                        ApiError::invalid(name, format!("`{c}` is not a date (YYYY-MM-DD): {e}"))
                    })
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
    csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .has_headers(headers)
        .from_reader(from)
}

/// What indexing found: the header row and the chunks.
pub struct Indexed {
    pub headers: StringRecord,
    pub chunks: Vec<Chunk>,
    pub rows: u64,
}

/// Reads a CSV input through: the header must name the expected columns, every record must have as many
/// cells as the header (else 400 naming the line), at most `max_rows` rows (else 413). Chunks of
/// `chunk_rows` rows, by byte offset.
pub fn index(path: &Path, chunk_rows: usize, max_rows: u64) -> Result<Indexed, ApiError> {
    let file = std::fs::File::open(path).map_err(io)?;
    let mut reader = reader(BufReader::with_capacity(1 << 20, file), true);
    let headers = reader
        .headers()
        .map_err(|e| ApiError::BadRequest(format!("the CSV header row cannot be read: {e}")))?
        .clone();
    csv_body::check_headers(&headers, &COLUMNS)?;
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

/// A chunk's records as requests (or each one's error), read from its bytes of the input.
pub fn read_chunk(
    path: &Path,
    columns: &PriceColumns,
    chunk: &Chunk,
) -> Result<Vec<Result<PriceRequest, ApiError>>, ApiError> {
    let mut file = std::fs::File::open(path).map_err(io)?;
    file.seek(SeekFrom::Start(chunk.byte_start)).map_err(io)?;
    let mut bytes = vec![0u8; (chunk.byte_end - chunk.byte_start) as usize];
    file.read_exact(&mut bytes).map_err(io)?;
    let mut reader = reader(bytes.as_slice(), false);
    let mut rows = Vec::with_capacity(chunk.rows as usize);
    let mut record = StringRecord::new();
    loop {
        match reader.read_record(&mut record) {
            Ok(true) => rows.push(columns.parse(&record)),
            Ok(false) => break,
            // Structure was checked at submit; what is left is a record that is not UTF-8.
            Err(e) => rows.push(Err(ApiError::invalid("row", e.to_string()))),
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
