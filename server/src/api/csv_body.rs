//! CSV request bodies read by the rules of JSON ones: a header row naming known columns (any order), and each
//! record turned into a JSON object — numbers for the numeric columns, empty cells left out — deserialized
//! as a JSON body would be, so a problem names its column. Used by bulk prices and batch predictions.

use serde::de::DeserializeOwned;

use crate::error::ApiError;

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
) -> Result<(csv::StringRecord, csv::Reader<&'a [u8]>), ApiError> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(bytes);
    let headers = reader
        .headers()
        .map_err(|e| ApiError::BadRequest(format!("the CSV header row cannot be read: {e}")))?
        .clone();
    check_headers(&headers, columns)?;
    Ok((headers, reader))
}

/// A header row must name only allowed columns and every required one (else 400, each problem named).
pub fn check_headers(headers: &csv::StringRecord, columns: &Columns) -> Result<(), ApiError> {
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
        return Err(ApiError::Validation {
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
