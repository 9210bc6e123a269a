//! CSV request bodies read by the rules of JSON ones: a header row naming known columns (any order), and each
//! record turned into a JSON object — numbers for the numeric columns, empty cells left out — deserialized
//! as a JSON body would be, so a problem names its column. Used by bulk prices and batch predictions.

use serde::de::DeserializeOwned;

use super::InputError;

/// What a body's columns may be.
pub struct Columns {
    pub allowed: &'static [&'static str],
    pub required: &'static [&'static str],
    /// Read as numbers.
    pub numeric: &'static [&'static str],
}

/// The reader, past a header row that names only allowed columns and every required one (else 400, each
/// problem named).
pub fn open<'a>(
    bytes: &'a [u8],
    columns: &Columns,
) -> Result<(csv::StringRecord, csv::Reader<&'a [u8]>), InputError> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(bytes);
    let headers = reader
        .headers()
        .map_err(|e| InputError::BadRequest(format!("the CSV header row cannot be read: {e}")))?
        .clone();
    check_headers(&headers, columns)?;
    Ok((headers, reader))
}

/// A header row must name only allowed columns and every required one (else 400, each problem named).
pub fn check_headers(headers: &csv::StringRecord, columns: &Columns) -> Result<(), InputError> {
    let mut problems = mercator_store::FieldErrors::default();
    for column in headers {
        if !columns.allowed.contains(&column) {
            problems.add(
                "columns",
                format!(
                    "unknown column `{column}`; columns are {}",
                    columns.allowed.join(", ")
                ),
            );
        }
    }
    for column in columns.required {
        if !headers.iter().any(|h| h == *column) {
            problems.add(
                "columns",
                format!("the required column `{column}` is missing"),
            );
        }
    }
    if !problems.is_empty() {
        return Err(InputError::Invalid {
            message: "the CSV header row does not name the expected columns".into(),
            details: problems,
        });
    }
    Ok(())
}

/// One record as `T`, or (the field, what is wrong with it).
pub fn record<T: DeserializeOwned>(
    headers: &csv::StringRecord,
    record: &csv::StringRecord,
    columns: &Columns,
) -> Result<T, (String, String)> {
    let mut object = serde_json::Map::new();
    for (column, cell) in headers.iter().zip(record.iter()) {
        if cell.is_empty() {
            continue;
        }
        let value = if columns.numeric.contains(&column) {
            match cell.parse::<f64>() {
                Ok(number) => serde_json::json!(number),
                Err(_) => return Err((column.into(), format!("`{cell}` is not a number"))),
            }
        } else {
            serde_json::Value::String(cell.to_string())
        };
        object.insert(column.to_string(), value);
    }
    serde_path_to_error::deserialize(serde_json::Value::Object(object)).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        // A missing column is reported by serde at the top: name it from the message.
        let field = if path == "." {
            columns
                .allowed
                .iter()
                .find(|c| message.contains(&format!("`{c}`")))
                .copied()
                .unwrap_or("row")
                .to_string()
        } else {
            path
        };
        (field, message)
    })
}

/// Length caps on CSV input, so that one cell or one record cannot take the server's memory
/// (--csv-max-field-bytes, --csv-max-record-bytes).
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    pub field_bytes: usize,
    pub record_bytes: usize,
}

impl Caps {
    /// 400 naming the line when a record, or one of its cells, is longer than allowed.
    pub fn check(&self, record: &csv::ByteRecord) -> Result<(), InputError> {
        let line = record.position().map_or(0, |p| p.line());
        if let Some(i) = record.iter().position(|f| f.len() > self.field_bytes) {
            return Err(InputError::BadRequest(format!(
                "the CSV's line {line} has a cell (column {}) longer than {} bytes (--csv-max-field-bytes)",
                i + 1,
                self.field_bytes
            )));
        }
        if record.as_slice().len() > self.record_bytes {
            return Err(self.record_too_long(line));
        }
        Ok(())
    }

    fn record_too_long(&self, line: u64) -> InputError {
        InputError::BadRequest(format!(
            "the CSV's record at line {line} is longer than {} bytes (--csv-max-record-bytes)",
            self.record_bytes
        ))
    }

    /// The error a [`Bounded`] reader's refusal becomes, or `None` for any other read error.
    pub fn refusal(&self, e: &csv::Error) -> Option<InputError> {
        match e.kind() {
            csv::ErrorKind::Io(io) if io.get_ref().is_some_and(|e| e.is::<RecordTooLong>()) => {
                Some(self.record_too_long(e.position().map_or(0, |p| p.line())))
            }
            _ => None,
        }
    }
}

/// A reader that refuses to hand the CSV parser more than a record's cap (plus the parser's own buffer)
/// past the start of the record being read, so that an endless record is refused before it is in memory.
/// The reading loop marks where each record starts ([`Bounded::mark`]).
pub struct Bounded<R> {
    inner: R,
    read: u64,
    start: std::cell::Cell<u64>,
    cap: u64,
}

/// Slack for what the CSV parser reads ahead (its buffer is 8 KiB).
const READ_AHEAD: u64 = 64 * 1024;

#[derive(Debug)]
struct RecordTooLong;

impl std::fmt::Display for RecordTooLong {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a CSV record is longer than its cap")
    }
}

impl std::error::Error for RecordTooLong {}

impl<R> Bounded<R> {
    pub fn new(inner: R, caps: Caps) -> Bounded<R> {
        Bounded {
            inner,
            read: 0,
            start: std::cell::Cell::new(0),
            cap: caps.record_bytes as u64 + READ_AHEAD,
        }
    }

    /// The next record starts at byte `at` (the parser's position).
    pub fn mark(&self, at: u64) {
        self.start.set(at);
    }
}

impl<R: std::io::Read> std::io::Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.read.saturating_sub(self.start.get()) > self.cap {
            return Err(std::io::Error::other(RecordTooLong));
        }
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}
