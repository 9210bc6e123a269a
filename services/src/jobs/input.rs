//! A batch's input as CSV, the canonical form on disk: price requests (JSON arrays and Parquet files turned
//! into it), or a model's raw feature rows (one value a cell). The file is indexed at submit: the header
//! checked, every record's structure read, the rows counted and cut into chunks by byte offset, so a
//! malformed file is refused before a job exists and a chunk can be read again on its own after a restart.

use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use chrono::NaiveDate;
use csv::StringRecord;
use mercator_store::Chunk;

use super::BatchError;
use crate::input::csv_body::{self, Bounded, Caps, Columns};
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
    values: impl Iterator<Item = Result<f64, BatchError>>,
    width: usize,
) -> Result<Vec<f32>, BatchError> {
    if len != width {
        return Err(BatchError::invalid(
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
                Err(BatchError::invalid(
                    "rows",
                    "every value must be a finite FP32 number",
                ))
            }
        })
        .collect()
}

/// A raw feature row read from a CSV record.
pub fn parse_features(record: &StringRecord, width: usize) -> Result<Vec<f32>, BatchError> {
    feature_row(
        record.len(),
        record.iter().map(|c| {
            c.parse::<f64>()
                .map_err(|_| BatchError::invalid("rows", format!("`{c}` is not a number")))
        }),
        width,
    )
}

/// Raw feature rows as they arrive in a JSON batch: every value as FP32 one after another (a value that is
/// not a finite FP32 number kept as NaN, which fails its row when checked), and where each row ends. No
/// allocation per row, so the rows take at most a small multiple of the body's bytes.
#[derive(Debug, Default)]
pub struct FeatureRows {
    values: Vec<f32>,
    ends: Vec<usize>,
}

impl FeatureRows {
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &[f32]> + '_ {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts.zip(&self.ends).map(|(a, &b)| &self.values[a..b])
    }

    /// Each row checked for a model input of `width` values.
    pub fn checked(&self, width: usize) -> Vec<Result<Vec<f32>, BatchError>> {
        self.iter()
            .map(|r| feature_row(r.len(), r.iter().map(|v| Ok(*v as f64)), width))
            .collect()
    }
}

impl<'de> serde::Deserialize<'de> for FeatureRows {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<FeatureRows, D::Error> {
        use serde::de::{DeserializeSeed, SeqAccess, Visitor};
        struct Rows;
        struct Row<'a>(&'a mut FeatureRows);
        impl<'de> Visitor<'de> for Rows {
            type Value = FeatureRows;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an array of rows, each an array of numbers")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<FeatureRows, A::Error> {
                let mut rows = FeatureRows::default();
                while seq.next_element_seed(Row(&mut rows))?.is_some() {}
                Ok(rows)
            }
        }
        impl<'de> DeserializeSeed<'de> for Row<'_> {
            type Value = ();
            fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
                d.deserialize_seq(self)
            }
        }
        impl<'de> Visitor<'de> for Row<'_> {
            type Value = ();
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a row: an array of numbers")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
                while let Some(v) = seq.next_element::<f64>()? {
                    let fits = v.is_finite() && v.abs() <= f32::MAX as f64;
                    self.0.values.push(if fits { v as f32 } else { f32::NAN });
                }
                self.0.ends.push(self.0.values.len());
                Ok(())
            }
        }
        d.deserialize_seq(Rows)
    }
}

/// How many rows a JSON batch of raw feature rows (`{"model", "rows": [...]}`) holds, counted without
/// keeping any (None when the body does not parse: reading it for real says why).
pub fn count_feature_rows(bytes: &[u8]) -> Option<u64> {
    use serde::de::{IgnoredAny, SeqAccess, Visitor};
    #[derive(Default)]
    struct Count(u64);
    impl<'de> serde::Deserialize<'de> for Count {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Count, D::Error> {
            struct Counter;
            impl<'de> Visitor<'de> for Counter {
                type Value = Count;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("an array")
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Count, A::Error> {
                    let mut n = 0;
                    while seq.next_element::<IgnoredAny>()?.is_some() {
                        n += 1;
                    }
                    Ok(Count(n))
                }
            }
            d.deserialize_seq(Counter)
        }
    }
    #[derive(serde::Deserialize)]
    struct Counted {
        #[serde(default)]
        rows: Count,
    }
    serde_json::from_slice::<Counted>(bytes)
        .ok()
        .map(|c| c.rows.0)
}

/// Raw feature rows written as the CSV input (a header `v1..vN`, then each row's values), indexed as they
/// are written: at most `max_rows` rows (else 413), in chunks of `chunk_rows`.
pub fn features_to_csv(
    rows: &FeatureRows,
    width: usize,
    path: &Path,
    chunk_rows: usize,
    max_rows: u64,
) -> Result<Vec<Chunk>, BatchError> {
    use std::io::Write;
    if rows.len() as u64 > max_rows {
        return Err(BatchError::BatchTooLarge(format!(
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
        if let Some(last) = chunks.last_mut() {
            last.rows += 1;
            last.byte_end = at;
        }
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
    pub fn parse(&self, record: &StringRecord) -> Result<PriceRequest, BatchError> {
        let cell = |i: Option<usize>| i.and_then(|i| record.get(i)).filter(|c| !c.is_empty());
        let number = |name: &str, i: Option<usize>| -> Result<Option<f64>, BatchError> {
            cell(i)
                .map(|c| {
                    c.parse::<f64>()
                        .map_err(|_| BatchError::invalid(name, format!("`{c}` is not a number")))
                })
                .transpose()
        };
        let date = |name: &str, i: Option<usize>| -> Result<Option<NaiveDate>, BatchError> {
            cell(i)
                .map(|c| {
                    mercator_store::parse_date(c)
                        .map_err(|e| BatchError::invalid(name, format!("{name}: {e}")))
                })
                .transpose()
        };
        let material_id = cell(Some(self.material_id))
            .ok_or_else(|| BatchError::invalid("material_id", "missing field `material_id`"))?;
        let quantity = number("quantity", Some(self.quantity))?
            .ok_or_else(|| BatchError::invalid("quantity", "missing field `quantity`"))?;
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
    parsed: Vec<Result<PriceRequest, BatchError>>,
) -> (Vec<PriceRequest>, Vec<Option<BatchError>>) {
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
pub fn merge<T, E: Into<BatchError>>(
    errors: Vec<Option<BatchError>>,
    answers: Vec<Result<T, E>>,
) -> Vec<Result<T, BatchError>> {
    let mut answers = answers.into_iter();
    errors
        .into_iter()
        .map(|e| match e {
            Some(e) => Err(e),
            None => match answers.next() {
                Some(answer) => answer.map_err(Into::into),
                None => Err(BatchError::BadRequest("the row was not answered".into())),
            },
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
/// naming the line), no record or cell may be longer than its cap (400, refused before the record is in
/// memory), at most `max_rows` rows (else 413). Chunks of `chunk_rows` rows, by byte offset.
pub fn index(
    path: &Path,
    layout: Layout,
    chunk_rows: usize,
    max_rows: u64,
    caps: Caps,
) -> Result<Indexed, BatchError> {
    let file = std::fs::File::open(path).map_err(io)?;
    // Feature rows may be of any length: a short or long row is that row's error.
    let mut reader = builder(true)
        .flexible(matches!(layout, Layout::Features { .. }))
        .from_reader(Bounded::new(BufReader::with_capacity(1 << 20, file), caps));
    let headers = reader
        .headers()
        .map_err(|e| {
            caps.refusal(&e).map_or_else(
                || BatchError::BadRequest(format!("the CSV header row cannot be read: {e}")),
                BatchError::from,
            )
        })?
        .clone();
    caps.check(headers.as_byte_record())?;
    match layout {
        Layout::Price => csv_body::check_headers(&headers, &COLUMNS)?,
        Layout::Features { width } if headers.len() != width => {
            return Err(BatchError::BadRequest(format!(
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
        reader.get_ref().mark(start);
        let more = reader.read_byte_record(&mut record).map_err(|e| {
            caps.refusal(&e).map_or_else(
                || {
                    let line = e.position().map_or(0, |p| p.line());
                    BatchError::BadRequest(format!("the CSV cannot be read at line {line}: {e}"))
                },
                BatchError::from,
            )
        })?;
        if !more {
            if let Some(last) = chunks.last_mut() {
                last.byte_end = reader.position().byte();
            }
            break;
        }
        caps.check(&record)?;
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
            return Err(BatchError::BatchTooLarge(format!(
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
pub fn headers(path: &Path) -> Result<StringRecord, BatchError> {
    let file = std::fs::File::open(path).map_err(io)?;
    let mut reader = reader(BufReader::new(file), true);
    Ok(reader
        .headers()
        .map_err(|e| BatchError::BadRequest(format!("the CSV header row cannot be read: {e}")))?
        .clone())
}

/// A chunk's records, each made into a `T` by `parse` (given the record, or the error reading it: structure
/// was checked at submit, so what is left is a record that is not UTF-8), read from its bytes of the input.
pub fn read_chunk<T>(
    path: &Path,
    chunk: &Chunk,
    parse: impl FnMut(Result<&StringRecord, BatchError>) -> T,
) -> Result<Vec<T>, BatchError> {
    chunk_bytes(path, chunk).and_then(|bytes| parse_chunk(&bytes, chunk, parse))
}

/// A chunk's bytes of the input file: its records, without the header.
pub fn chunk_bytes(path: &Path, chunk: &Chunk) -> Result<Vec<u8>, BatchError> {
    let mut file = std::fs::File::open(path).map_err(io)?;
    file.seek(SeekFrom::Start(chunk.byte_start)).map_err(io)?;
    let mut bytes = vec![0u8; (chunk.byte_end - chunk.byte_start) as usize];
    file.read_exact(&mut bytes).map_err(io)?;
    Ok(bytes)
}

/// A chunk's records read from its bytes, each made into a `T` by `parse`; as many as were indexed.
pub fn parse_chunk<T>(
    bytes: &[u8],
    chunk: &Chunk,
    mut parse: impl FnMut(Result<&StringRecord, BatchError>) -> T,
) -> Result<Vec<T>, BatchError> {
    let mut reader = builder(false).flexible(true).from_reader(bytes);
    let mut rows = Vec::with_capacity(chunk.rows as usize);
    let mut record = StringRecord::new();
    loop {
        match reader.read_record(&mut record) {
            Ok(true) => rows.push(parse(Ok(&record))),
            Ok(false) => break,
            Err(e) => rows.push(parse(Err(BatchError::invalid("row", e.to_string())))),
        }
    }
    if rows.len() as u64 != chunk.rows {
        return Err(BatchError::internal(
            "batch files",
            format!(
                "chunk at row {} holds {} records, {} were indexed: the input changed",
                chunk.first_row,
                rows.len(),
                chunk.rows
            ),
        ));
    }
    Ok(rows)
}

/// The elements of a JSON array of price requests as they are parsed: kept in memory while there are at
/// most `keep` of them (an inline batch), else written to the CSV input at `path` (a job), the ones kept so
/// far first.
pub struct JsonRows {
    keep: usize,
    kept: Vec<serde_json::Value>,
    path: std::path::PathBuf,
    out: Option<JsonCsv>,
}

impl JsonRows {
    pub fn new(keep: usize, path: std::path::PathBuf) -> JsonRows {
        JsonRows {
            keep,
            kept: Vec::new(),
            path,
            out: None,
        }
    }

    /// Element `i`, kept or written.
    pub fn push(&mut self, i: usize, value: serde_json::Value) -> Result<(), BatchError> {
        if self.out.is_none() && self.kept.len() < self.keep {
            self.kept.push(value);
            return Ok(());
        }
        let out = match &mut self.out {
            Some(out) => out,
            None => {
                let mut out = JsonCsv::create(&self.path)?;
                for (k, kept) in std::mem::take(&mut self.kept).iter().enumerate() {
                    out.write(k, kept)?;
                }
                self.out.insert(out)
            }
        };
        out.write(i, &value)
    }

    /// The elements when all were kept, or None when they were written (the file complete).
    pub fn finish(self) -> Result<Option<Vec<serde_json::Value>>, BatchError> {
        match self.out {
            None => Ok(Some(self.kept)),
            Some(mut out) => {
                out.w.flush().map_err(io)?;
                Ok(None)
            }
        }
    }
}

/// Request objects written as the CSV input: each field a cell (numbers as written, strings as they are),
/// so a bad value becomes that row's error when it runs. An element that is not an object, or that names a
/// field requests do not have, refuses the whole body.
struct JsonCsv {
    w: csv::Writer<std::io::BufWriter<std::fs::File>>,
    cells: Vec<String>,
}

impl JsonCsv {
    fn create(path: &Path) -> Result<JsonCsv, BatchError> {
        let file = std::fs::File::create(path).map_err(io)?;
        let mut w = csv::Writer::from_writer(std::io::BufWriter::with_capacity(1 << 20, file));
        w.write_record(COLUMNS.allowed).map_err(csv_io)?;
        Ok(JsonCsv {
            w,
            cells: vec![String::new(); COLUMNS.allowed.len()],
        })
    }

    fn write(&mut self, i: usize, value: &serde_json::Value) -> Result<(), BatchError> {
        let names = COLUMNS.allowed;
        let object = value.as_object().ok_or_else(|| {
            BatchError::invalid(
                &format!("[{i}]"),
                "each element must be an object of price request fields",
            )
        })?;
        if let Some(unknown) = object.keys().find(|k| !names.contains(&k.as_str())) {
            return Err(BatchError::invalid(
                &format!("[{i}].{unknown}"),
                format!("unknown field; fields are {}", names.join(", ")),
            ));
        }
        for (cell, name) in self.cells.iter_mut().zip(names) {
            cell.clear();
            match object.get(*name) {
                None | Some(serde_json::Value::Null) => {}
                Some(serde_json::Value::String(s)) => cell.push_str(s),
                Some(other) => cell.push_str(&other.to_string()),
            }
        }
        self.w.write_record(&self.cells).map_err(csv_io)
    }
}

/// The largest Parquet footer (file metadata) read: a real file of a few columns has kilobytes.
const MAX_PARQUET_FOOTER: u64 = 16 * 1024 * 1024;

/// A Parquet file of requests (columns named as the fields) written as the CSV input. What the footer
/// declares is checked before any data is read: at most `max_rows` rows and `max_bytes` uncompressed bytes
/// (else 413), at most `max_group_rows` rows in a row group (413: memory holds one row group, never the
/// file), a footer of at most 16 MiB, the expected columns; then it is converted row group by row group.
pub fn parquet_to_csv(
    from: &Path,
    to: &Path,
    max_rows: u64,
    max_bytes: u64,
    max_group_rows: u64,
) -> Result<(), BatchError> {
    use polars::prelude::{CsvWriter, ParallelStrategy, ParquetReader, SerReader, SerWriter};
    let unreadable = |e: &dyn std::fmt::Display| {
        BatchError::BadRequest(format!("the body is not a readable Parquet file: {e}"))
    };
    let mut file = std::fs::File::open(from).map_err(io)?;
    let length = file.metadata().map_err(io)?.len();
    // The last 8 bytes: the footer's length (little-endian u32), then the magic `PAR1`.
    let mut tail = [0u8; 8];
    if length < 12
        || file.seek(SeekFrom::End(-8)).is_err()
        || file.read_exact(&mut tail).is_err()
        || &tail[4..] != b"PAR1"
    {
        return Err(unreadable(&"no Parquet footer"));
    }
    let footer = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]) as u64;
    if footer > MAX_PARQUET_FOOTER.min(length) {
        return Err(BatchError::BatchTooLarge(format!(
            "the Parquet footer declares {footer} bytes of metadata, more than {MAX_PARQUET_FOOTER}"
        )));
    }
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    let mut reader = ParquetReader::new(file);
    let metadata = reader.get_metadata().map_err(|e| unreadable(&e))?.clone();
    let group_rows: u64 = metadata
        .row_groups
        .iter()
        .map(|g| g.num_rows() as u64)
        .sum();
    let rows = (metadata.num_rows as u64).max(group_rows);
    if rows > max_rows {
        return Err(BatchError::BatchTooLarge(format!(
            "the Parquet file declares {rows} rows, more than {max_rows} (--batch-max-rows)"
        )));
    }
    if let Some(group) = metadata
        .row_groups
        .iter()
        .find(|g| g.num_rows() as u64 > max_group_rows)
    {
        return Err(BatchError::BatchTooLarge(format!(
            "a Parquet row group of {} rows, more than {max_group_rows} (--batch-parquet-max-group-rows); \
             write the file with smaller row groups",
            group.num_rows()
        )));
    }
    let bytes: u64 = metadata
        .row_groups
        .iter()
        .map(|g| g.total_byte_size() as u64)
        .sum();
    if bytes > max_bytes {
        return Err(BatchError::BatchTooLarge(format!(
            "the Parquet file declares {bytes} bytes uncompressed, more than {max_bytes} (--batch-max-body-bytes)"
        )));
    }
    let schema = reader.schema().map_err(|e| unreadable(&e))?;
    let headers: StringRecord = schema.iter_names().map(|n| n.as_str()).collect();
    csv_body::check_headers(&headers, &COLUMNS)?;
    let out = std::fs::File::create(to).map_err(io)?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, out);
    let mut at = 0;
    for (i, group) in metadata.row_groups.iter().enumerate() {
        let rows = group.num_rows();
        let file = std::fs::File::open(from).map_err(io)?;
        let mut slice = ParquetReader::new(file)
            .read_parallel(ParallelStrategy::None)
            .with_slice(Some((at, rows)));
        slice.set_metadata(metadata.clone());
        let mut frame = slice.finish().map_err(|e| {
            BatchError::BadRequest(format!("the Parquet file cannot be read through: {e}"))
        })?;
        CsvWriter::new(&mut out)
            .include_header(i == 0)
            .finish(&mut frame)
            .map_err(|e| {
                BatchError::BadRequest(format!("the Parquet file cannot be read through: {e}"))
            })?;
        at += rows;
    }
    if metadata.row_groups.is_empty() {
        // No data: the header alone, so the batch is refused for having no rows.
        let header = headers.iter().collect::<Vec<_>>().join(",") + "\n";
        std::io::Write::write_all(&mut out, header.as_bytes()).map_err(io)?;
    }
    std::io::Write::flush(&mut out).map_err(io)?;
    Ok(())
}

pub fn io(e: std::io::Error) -> BatchError {
    BatchError::internal("batch files", e)
}

fn csv_io(e: csv::Error) -> BatchError {
    BatchError::internal("batch files", e)
}
