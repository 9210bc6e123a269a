//! A job's results: one CSV file per committed chunk (`results/c000042.csv`, no header), written to a
//! temporary name, synced and renamed into place before the store counts it, so a file under its final name
//! is whole. Rendered on read, one chunk at a time, as CSV (the files as they are, after a header), JSON (a
//! streamed array, or NDJSON) or Parquet (one row group per chunk), never held whole in memory.

use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use mercator_store::BatchJob;
use tokio::sync::mpsc;

use crate::error::ApiError;
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

/// One row's answer as a CSV record (`row` counts from 1).
pub fn write_row<W: Write>(
    w: &mut csv::Writer<W>,
    row: u64,
    outcome: &Result<PricePrediction, ApiError>,
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
            w.write_field(e.status_and_code().1)?;
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

/// Where chunk `index`'s results are once committed.
pub fn chunk_path(dir: &Path, index: u64) -> PathBuf {
    dir.join("results").join(format!("c{index:06}.csv"))
}

/// Puts a chunk's results in place whole: written to `.tmp`, synced, renamed, the directory synced.
pub fn commit_file(dir: &Path, index: u64, bytes: &[u8]) -> std::io::Result<u64> {
    let path = chunk_path(dir, index);
    let tmp = path.with_extension("csv.tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_data()?;
    drop(file);
    std::fs::rename(&tmp, &path)?;
    if let Some(parent) = path.parent() {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(bytes.len() as u64)
}

/// Removes what a crash may have left half-written (`*.tmp`).
pub fn remove_partial(dir: &Path) -> std::io::Result<()> {
    let results = dir.join("results");
    std::fs::create_dir_all(&results)?;
    for entry in std::fs::read_dir(&results)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "tmp") {
            std::fs::remove_file(path)?;
        }
    }
    Ok(())
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

/// The job's results, rendered by a blocking task into a channel of two buffers at most: every row, in
/// order, the committed rows from their files and the rows a cancelled or failed job never ran as errors
/// (`not_run`).
pub fn render(
    job: BatchJob,
    dir: PathBuf,
    format: Format,
) -> mpsc::Receiver<std::io::Result<Bytes>> {
    let (tx, rx) = mpsc::channel(2);
    tokio::task::spawn_blocking(move || {
        let result = match format {
            Format::Parquet => parquet(&job, &dir, &tx),
            _ => text(&job, &dir, format, &tx),
        };
        if let Err(e) = result {
            // Headers are sent: the best left is to break the body so the client sees it incomplete.
            let _ = tx.blocking_send(Err(e));
        }
    });
    rx
}

/// A chunk's records: its file, or (never run) a `not_run` error per row.
fn chunk_records(job: &BatchJob, dir: &Path, index: u64) -> std::io::Result<Vec<u8>> {
    if index < job.chunks_done {
        return std::fs::read(chunk_path(dir, index));
    }
    let chunk = job.chunks[index as usize];
    let mut w = csv::Writer::from_writer(Vec::new());
    let message = format!("the job {} before this row ran", job.state.as_str());
    for row in chunk.first_row..chunk.first_row + chunk.rows {
        let mut record = vec![(row + 1).to_string()];
        record.extend(std::iter::repeat_n(String::new(), 7));
        record.extend(["not_run".to_string(), message.clone()]);
        w.write_record(&record)?;
    }
    w.into_inner().map_err(|e| e.into_error())
}

const FLUSH_AT: usize = 256 * 1024;

fn send(tx: &Sender, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let bytes = Bytes::from(std::mem::take(buf));
    tx.blocking_send(Ok(bytes))
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away"))
}

fn text(job: &BatchJob, dir: &Path, format: Format, tx: &Sender) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(FLUSH_AT * 2);
    match format {
        Format::Csv => out.extend_from_slice(format!("{}\n", COLUMNS.join(",")).as_bytes()),
        Format::Json => out.push(b'['),
        _ => {}
    }
    let mut first = true;
    for index in 0..job.chunks_total {
        let records = chunk_records(job, dir, index)?;
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
                serde_json::to_writer(&mut out, &row_json(&record, &job.model))?;
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

fn parquet(job: &BatchJob, dir: &Path, tx: &Sender) -> std::io::Result<()> {
    use polars::prelude::*;
    let polars_io = |e: PolarsError| std::io::Error::other(e.to_string());
    let mut writer = ChannelWriter {
        tx,
        buf: Vec::with_capacity(FLUSH_AT * 2),
    };
    let types = [
        DataType::UInt64,
        DataType::Float64,
        DataType::Float64,
        DataType::Float64,
        DataType::Float64,
        DataType::Float64,
        DataType::UInt64,
        DataType::String,
        DataType::String,
        DataType::String,
    ];
    let schema: Schema = COLUMNS
        .iter()
        .zip(types)
        .map(|(name, dtype)| Field::new((*name).into(), dtype))
        .collect();
    let mut batched = ParquetWriter::new(&mut writer)
        .with_compression(ParquetCompression::Zstd(None))
        .batched(&schema)
        .map_err(polars_io)?;
    for index in 0..job.chunks_total {
        let records = chunk_records(job, dir, index)?;
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(records.as_slice());
        let mut row: Vec<u64> = Vec::new();
        let mut floats: [Vec<Option<f64>>; 5] = Default::default();
        let mut version: Vec<Option<u64>> = Vec::new();
        let mut texts: [Vec<Option<String>>; 3] = Default::default();
        let mut record = csv::StringRecord::new();
        while reader.read_record(&mut record)? {
            row.push(record.get(0).and_then(|c| c.parse().ok()).unwrap_or(0));
            for (k, column) in floats.iter_mut().enumerate() {
                column.push(record.get(k + 1).and_then(|c| c.parse().ok()));
            }
            version.push(record.get(6).and_then(|c| c.parse().ok()));
            for (k, column) in texts.iter_mut().enumerate() {
                column.push(
                    record
                        .get(k + 7)
                        .filter(|c| !c.is_empty())
                        .map(str::to_string),
                );
            }
        }
        let height = row.len();
        let mut columns: Vec<Column> = vec![Column::new(COLUMNS[0].into(), row)];
        for (k, values) in floats.into_iter().enumerate() {
            columns.push(Column::new(COLUMNS[k + 1].into(), values));
        }
        columns.push(Column::new(COLUMNS[6].into(), version));
        for (k, values) in texts.into_iter().enumerate() {
            columns.push(Column::new(COLUMNS[k + 7].into(), values));
        }
        let frame = DataFrame::new(height, columns).map_err(polars_io)?;
        batched.write_batch(&frame).map_err(polars_io)?;
    }
    batched.finish().map_err(polars_io)?;
    drop(batched);
    send(tx, &mut writer.buf)
}
