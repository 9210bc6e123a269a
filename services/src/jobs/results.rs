//! A job's results: CSV records per committed chunk (no header), kept in the store with the chunk, so any
//! replica answers them. Rendered on read, one chunk at a time, as CSV (the records as they are, after a
//! header), JSON (a streamed array, or NDJSON) or Parquet (one row group per chunk), never held whole in
//! memory.
//!
//! A price job's rows have [`COLUMNS`]; a job of raw feature rows has `row`, one column per output value
//! (`name`, or `name_1..name_N` for an output of N values a row), `error_code`, `error_message`: its
//! [`Shape`] is kept with the job.

use std::io::Write;

use bytes::Bytes;
use mercator_store::{BatchJob, Store};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::BatchError;
use crate::predict::PricePrediction;

/// The columns of a result row, in the inline CSV answer and a job's results alike.
pub const COLUMNS: [&str; 10] = [
    "row",
    "predicted_price",
    "lower",
    "upper",
    "level",
    "confidence_score",
    "model_version",
    "as_of",
    "error_code",
    "error_message",
];

/// One output of a model, as a job of raw feature rows answers it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Output {
    pub name: String,
    /// Values a row.
    pub width: usize,
}

/// What a job's result rows hold.
#[derive(Debug, Clone)]
pub enum Shape {
    Price,
    Outputs(Vec<Output>),
}

impl Shape {
    /// A job's shape: the outputs kept with it, or a price job's.
    pub fn of(job: &BatchJob) -> std::io::Result<Shape> {
        if job.input_format != super::input::FEATURES {
            return Ok(Shape::Price);
        }
        let outputs = job.outputs.as_deref().unwrap_or("[]");
        Ok(Shape::Outputs(serde_json::from_str(outputs)?))
    }

    pub fn columns(&self) -> Vec<String> {
        match self {
            Shape::Price => COLUMNS.iter().map(|c| c.to_string()).collect(),
            Shape::Outputs(outputs) => {
                let mut columns = vec!["row".to_string()];
                for o in outputs {
                    if o.width == 1 {
                        columns.push(o.name.clone());
                    } else {
                        columns.extend((1..=o.width).map(|k| format!("{}_{k}", o.name)));
                    }
                }
                columns.extend(["error_code".into(), "error_message".into()]);
                columns
            }
        }
    }

    /// Cells between `row` and `error_code`.
    fn values(&self) -> usize {
        match self {
            Shape::Price => 7,
            Shape::Outputs(outputs) => outputs.iter().map(|o| o.width).sum(),
        }
    }

    /// A result record as JSON: the inline answer's row.
    fn row_json(&self, r: &csv::StringRecord, model: &str) -> serde_json::Value {
        let Shape::Outputs(outputs) = self else {
            return row_json(r, model);
        };
        let row: u64 = r.get(0).and_then(|c| c.parse().ok()).unwrap_or(0);
        let error_at = 1 + self.values();
        if let Some(code) = r.get(error_at).filter(|c| !c.is_empty()) {
            return serde_json::json!({
                "row": row,
                "outputs": null,
                "error": {"code": code, "message": r.get(error_at + 1).unwrap_or_default()},
            });
        }
        let mut values = serde_json::Map::new();
        let mut at = 1;
        for o in outputs {
            let v: Vec<Option<f64>> = (at..at + o.width)
                .map(|i| r.get(i).and_then(|c| c.parse().ok()))
                .collect();
            values.insert(o.name.clone(), serde_json::json!(v));
            at += o.width;
        }
        serde_json::json!({"row": row, "outputs": values, "error": null})
    }
}

/// A model's outputs for `rows` rows appended to `into` row by row: each row's values of every output, in
/// the outputs' order (what a raw feature row's answer holds).
pub fn append_rows(outputs: &[mercator_engine::Tensor], rows: usize, into: &mut Vec<f64>) {
    let columns: Vec<Vec<f64>> = outputs.iter().map(|t| t.data.to_f64()).collect();
    for k in 0..rows {
        for column in &columns {
            let w = column.len() / rows.max(1);
            into.extend_from_slice(&column[k * w..(k + 1) * w]);
        }
    }
}

/// A raw feature row's answer as a CSV record: its outputs' values in order, or its error after `values`
/// empty cells.
pub fn write_values<W: Write>(
    w: &mut csv::Writer<W>,
    row: u64,
    outcome: Result<&[f64], &BatchError>,
    values: usize,
) -> csv::Result<()> {
    let mut number = ryu::Buffer::new();
    w.write_field(itoa::Buffer::new().format(row))?;
    match outcome {
        Ok(out) => {
            for v in out {
                w.write_field(if v.is_finite() {
                    float(&mut number, *v)
                } else {
                    ""
                })?;
            }
            w.write_field("")?;
            w.write_field("")?;
        }
        Err(e) => {
            for _ in 0..values {
                w.write_field("")?;
            }
            w.write_field(e.code())?;
            w.write_field(e.to_string())?;
        }
    }
    w.write_record(None::<&[u8]>)
}

/// One row's answer as a CSV record (`row` counts from 1).
pub fn write_row<W: Write>(
    w: &mut csv::Writer<W>,
    row: u64,
    outcome: &Result<PricePrediction, BatchError>,
) -> csv::Result<()> {
    let mut number = ryu::Buffer::new();
    let mut integer = itoa::Buffer::new();
    w.write_field(integer.format(row))?;
    match outcome {
        Ok(p) => {
            for v in [
                p.predicted_price,
                p.prediction_interval.lower,
                p.prediction_interval.upper,
                p.prediction_interval.level,
                p.confidence_score,
            ] {
                w.write_field(float(&mut number, v))?;
            }
            w.write_field(integer.format(p.model.version))?;
            w.write_field(p.as_of.to_string())?;
            w.write_field("")?;
            w.write_field("")?;
        }
        Err(e) => {
            for _ in 0..7 {
                w.write_field("")?;
            }
            w.write_field(e.code())?;
            w.write_field(e.to_string())?;
        }
    }
    w.write_record(None::<&[u8]>)
}

/// The shortest text that reads back as the same f64 (as `f64::to_string` writes, without its cost).
fn float(buffer: &mut ryu::Buffer, v: f64) -> &str {
    let s = buffer.format(v);
    s.strip_suffix(".0").unwrap_or(s)
}

/// How results are rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Json,
    Ndjson,
    Parquet,
}

impl Format {
    pub fn parse(s: &str) -> Option<Format> {
        Some(match s {
            "csv" => Format::Csv,
            "json" => Format::Json,
            "ndjson" => Format::Ndjson,
            "parquet" => Format::Parquet,
            _ => return None,
        })
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Csv => "text/csv; charset=utf-8",
            Format::Json => "application/json",
            Format::Ndjson => "application/x-ndjson",
            Format::Parquet => "application/vnd.apache.parquet",
        }
    }
}

type Sender = mpsc::Sender<std::io::Result<Bytes>>;

/// Which result rows are rendered.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pick {
    /// Rows before this one (counted from 0) are left out: a broken download resumes here.
    pub offset: u64,
    /// Only rows that carry an error (`not_run` ones included).
    pub errors_only: bool,
}

impl Pick {
    /// How many rows of the job this picks (None: not known without reading the files).
    pub fn rows(&self, job: &BatchJob) -> Option<u64> {
        match (self.errors_only, self.offset) {
            (false, offset) => Some(job.total_rows.saturating_sub(offset)),
            (true, 0) => Some(job.failed_rows + job.total_rows.saturating_sub(job.processed_rows)),
            (true, _) => None,
        }
    }
}

/// An ended job's results as they are rendered.
pub struct Rendered {
    /// How many rows follow, when that is known before they are read.
    pub total: Option<u64>,
    /// The encoded rows, a buffer at a time; an error breaks the body off.
    pub chunks: mpsc::Receiver<std::io::Result<Bytes>>,
}

/// The job's results, rendered by a blocking task into a channel of two buffers at most: the rows `pick`
/// takes, in order, the committed rows from their files and the rows a cancelled or failed job never ran as
/// errors (`not_run`).
pub fn render(
    job: BatchJob,
    store: Store,
    format: Format,
    pick: Pick,
) -> mpsc::Receiver<std::io::Result<Bytes>> {
    let (tx, rx) = mpsc::channel(2);
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let result = Shape::of(&job).and_then(|shape| {
            let read = Reader {
                job: &job,
                shape: &shape,
                store: &store,
                runtime: &runtime,
                pick,
            };
            match format {
                Format::Parquet => parquet(&read, &tx),
                _ => text(&read, format, &tx),
            }
        });
        if let Err(e) = result {
            // Headers are sent: the best left is to break the body so the client sees it incomplete.
            let _ = tx.blocking_send(Err(e));
        }
    });
    rx
}

/// What rendering reads: the job, its shape, the store holding its chunks (read from the blocking task
/// through the runtime), and which rows.
struct Reader<'a> {
    job: &'a BatchJob,
    shape: &'a Shape,
    store: &'a Store,
    runtime: &'a tokio::runtime::Handle,
    pick: Pick,
}

impl Reader<'_> {
    /// A chunk's records that the pick takes: as committed, or (never run) a `not_run` error per row.
    fn chunk(&self, index: u64) -> std::io::Result<Vec<u8>> {
        let (job, pick) = (self.job, self.pick);
        let chunk = job.chunks[index as usize];
        if chunk.first_row + chunk.rows <= pick.offset {
            return Ok(Vec::new());
        }
        let committed = self
            .runtime
            .block_on(self.store.batch_chunk_result(&job.id, index))
            .map_err(std::io::Error::other)?;
        let records = if let Some(records) = committed {
            records
        } else {
            let mut w = csv::Writer::from_writer(Vec::new());
            let message = format!("the job {} before this row ran", job.state.as_str());
            for row in chunk.first_row..chunk.first_row + chunk.rows {
                let mut record = vec![(row + 1).to_string()];
                record.extend(std::iter::repeat_n(String::new(), self.shape.values()));
                record.extend(["not_run".to_string(), message.clone()]);
                w.write_record(&record)?;
            }
            w.into_inner().map_err(|e| e.into_error())?
        };
        if chunk.first_row >= pick.offset && !pick.errors_only {
            return Ok(records);
        }
        let error_at = 1 + self.shape.values();
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(records.as_slice());
        let mut w = csv::Writer::from_writer(Vec::with_capacity(records.len()));
        let mut record = csv::ByteRecord::new();
        let mut row = chunk.first_row;
        while reader.read_byte_record(&mut record)? {
            let erred = record.get(error_at).is_some_and(|c| !c.is_empty());
            if row >= pick.offset && (erred || !pick.errors_only) {
                w.write_byte_record(&record)?;
            }
            row += 1;
        }
        w.into_inner().map_err(|e| e.into_error())
    }
}

const FLUSH_AT: usize = 256 * 1024;

fn send(tx: &Sender, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let bytes = Bytes::from(std::mem::take(buf));
    tx.blocking_send(Ok(bytes))
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away"))
}

fn text(read: &Reader, format: Format, tx: &Sender) -> std::io::Result<()> {
    let (job, shape) = (read.job, read.shape);
    let mut out = Vec::with_capacity(FLUSH_AT * 2);
    match format {
        // A resumed download continues the file it began: no second header.
        Format::Csv if read.pick.offset > 0 => {}
        Format::Csv => {
            let mut w = csv::Writer::from_writer(&mut out);
            w.write_record(shape.columns())?;
            w.flush()?;
        }
        Format::Json => out.push(b'['),
        _ => {}
    }
    let mut first = true;
    for index in 0..job.chunks_total {
        let records = read.chunk(index)?;
        if format == Format::Csv {
            out.extend_from_slice(&records);
        } else {
            let mut reader = csv::ReaderBuilder::new()
                .has_headers(false)
                .from_reader(records.as_slice());
            let mut record = csv::StringRecord::new();
            while reader.read_record(&mut record)? {
                if format == Format::Json && !first {
                    out.push(b',');
                }
                first = false;
                serde_json::to_writer(&mut out, &shape.row_json(&record, &job.model))?;
                if format == Format::Ndjson {
                    out.push(b'\n');
                }
            }
        }
        if out.len() >= FLUSH_AT {
            send(tx, &mut out)?;
        }
    }
    if format == Format::Json {
        out.push(b']');
    }
    send(tx, &mut out)
}

/// A result record as the inline JSON answer's row: `{row, prediction, error}`.
fn row_json(r: &csv::StringRecord, model: &str) -> serde_json::Value {
    let f = |i: usize| r.get(i).and_then(|c| c.parse::<f64>().ok());
    let row: u64 = r.get(0).and_then(|c| c.parse().ok()).unwrap_or(0);
    match r.get(8).filter(|c| !c.is_empty()) {
        Some(code) => serde_json::json!({
            "row": row,
            "prediction": null,
            "error": {"code": code, "message": r.get(9).unwrap_or_default()},
        }),
        None => serde_json::json!({
            "row": row,
            "prediction": {
                "predicted_price": f(1),
                "prediction_interval": {"lower": f(2), "upper": f(3), "level": f(4)},
                "confidence_score": f(5),
                "model": {"name": model, "version": r.get(6).and_then(|c| c.parse::<u64>().ok())},
                "as_of": r.get(7),
            },
            "error": null,
        }),
    }
}

/// Bytes written by the Parquet writer, sent on in buffers.
struct ChannelWriter<'a> {
    tx: &'a Sender,
    buf: Vec<u8>,
}

impl Write for ChannelWriter<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= FLUSH_AT {
            send(self.tx, &mut self.buf)?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A result column's type in Parquet.
#[derive(Clone, Copy)]
enum Kind {
    UInt,
    Float,
    Text,
}

enum Values {
    UInt(Vec<Option<u64>>),
    Float(Vec<Option<f64>>),
    Text(Vec<Option<String>>),
}

fn parquet(read: &Reader, tx: &Sender) -> std::io::Result<()> {
    use polars::prelude::*;
    let (job, shape) = (read.job, read.shape);
    let polars_io = |e: PolarsError| std::io::Error::other(e.to_string());
    let mut writer = ChannelWriter {
        tx,
        buf: Vec::with_capacity(FLUSH_AT * 2),
    };
    let names = shape.columns();
    let kinds: Vec<Kind> = match shape {
        Shape::Price => [
            Kind::UInt,
            Kind::Float,
            Kind::Float,
            Kind::Float,
            Kind::Float,
            Kind::Float,
            Kind::UInt,
            Kind::Text,
            Kind::Text,
            Kind::Text,
        ]
        .to_vec(),
        Shape::Outputs(_) => std::iter::once(Kind::UInt)
            .chain(std::iter::repeat_n(Kind::Float, shape.values()))
            .chain([Kind::Text, Kind::Text])
            .collect(),
    };
    let schema: Schema = names
        .iter()
        .zip(&kinds)
        .map(|(name, kind)| {
            let dtype = match kind {
                Kind::UInt => DataType::UInt64,
                Kind::Float => DataType::Float64,
                Kind::Text => DataType::String,
            };
            Field::new(name.as_str().into(), dtype)
        })
        .collect();
    let mut batched = ParquetWriter::new(&mut writer)
        .with_compression(ParquetCompression::Zstd(None))
        .batched(&schema)
        .map_err(polars_io)?;
    for index in 0..job.chunks_total {
        let records = read.chunk(index)?;
        if records.is_empty() {
            continue;
        }
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(records.as_slice());
        let mut columns: Vec<Values> = kinds
            .iter()
            .map(|k| match k {
                Kind::UInt => Values::UInt(Vec::new()),
                Kind::Float => Values::Float(Vec::new()),
                Kind::Text => Values::Text(Vec::new()),
            })
            .collect();
        let mut record = csv::StringRecord::new();
        let mut height = 0;
        while reader.read_record(&mut record)? {
            height += 1;
            for (i, column) in columns.iter_mut().enumerate() {
                let cell = record.get(i).filter(|c| !c.is_empty());
                match column {
                    Values::UInt(v) => v.push(cell.and_then(|c| c.parse().ok())),
                    Values::Float(v) => v.push(cell.and_then(|c| c.parse().ok())),
                    Values::Text(v) => v.push(cell.map(str::to_string)),
                }
            }
        }
        let columns: Vec<Column> = columns
            .into_iter()
            .zip(&names)
            .map(|(values, name)| {
                let name = name.as_str().into();
                match values {
                    Values::UInt(v) => Column::new(name, v),
                    Values::Float(v) => Column::new(name, v),
                    Values::Text(v) => Column::new(name, v),
                }
            })
            .collect();
        let frame = DataFrame::new(height, columns).map_err(polars_io)?;
        batched.write_batch(&frame).map_err(polars_io)?;
    }
    batched.finish().map_err(polars_io)?;
    drop(batched);
    send(tx, &mut writer.buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_output_of_several_values_a_row_has_a_column_for_each() {
        let shape = Shape::Outputs(vec![
            Output {
                name: "forecast".into(),
                width: 3,
            },
            Output {
                name: "score".into(),
                width: 1,
            },
        ]);
        assert_eq!(
            shape.columns(),
            [
                "row",
                "forecast_1",
                "forecast_2",
                "forecast_3",
                "score",
                "error_code",
                "error_message"
            ]
        );
        let mut w = csv::Writer::from_writer(Vec::new());
        write_values(&mut w, 4, Ok(&[1.5, 2.0, f64::NAN, 0.25]), 4).unwrap();
        let error = BatchError::invalid("rows", "2 values; the model takes 6");
        write_values(&mut w, 5, Err(&error), 4).unwrap();
        let text = String::from_utf8(w.into_inner().unwrap()).unwrap();
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("4,1.5,2,,0.25,,"));
        let record =
            csv::StringRecord::from(lines.next().unwrap().splitn(7, ',').collect::<Vec<_>>());
        let json = shape.row_json(&record, "m");
        assert_eq!(json["error"]["code"], "validation_error", "{json}");
        let ok = csv::StringRecord::from(vec!["4", "1.5", "2", "", "0.25", "", ""]);
        assert_eq!(
            shape.row_json(&ok, "m"),
            serde_json::json!({"row": 4, "outputs": {"forecast": [1.5, 2.0, null], "score": [0.25]}, "error": null})
        );
    }
}
