//! Bulk bodies (`/prices/bulk`, `/orders/bulk`, `/deliveries/bulk`): a JSON array of rows, or `text/csv`
//! with a header row naming the columns, read into rows of one type. At most --max-bulk-rows rows and
//! --max-bulk-body-bytes bytes. A CSV row's problems are all collected, so one answer names every bad row
//! (`row` counts data rows from 1: CSV line = row + 1).

use axum::body::Bytes;
use axum::extract::Request;
use mercator_services::input::csv_body::{self, Columns};
use mercator_services::input::json_array;
use mercator_store::{FieldErrors, RowError};
use serde::de::DeserializeOwned;

use super::extract::content_type;
use crate::error::ApiError;
use crate::AppState;

/// The rows of a bulk body; `check` is each CSV row's own validation (a JSON row is checked where it is
/// written).
pub(crate) async fn rows<T: DeserializeOwned>(
    app: &AppState,
    request: Request,
    columns: &Columns,
    check: impl Fn(&T) -> FieldErrors,
) -> Result<Vec<T>, ApiError> {
    let kind = content_type(request.headers()).map(str::to_owned);
    let limit = app.limits.max_bulk_body_bytes;
    let bytes = axum::body::to_bytes(request.into_body(), limit)
        .await
        .map_err(|e| ApiError::body(&e, limit, "--max-bulk-body-bytes"))?;
    let max_rows = app.limits.max_bulk_rows;
    let rows = match kind.as_deref() {
        Some("application/json") => {
            // Element by element, the row limit checked as each arrives.
            let mut rows = Vec::new();
            json_array::<T, ApiError>(
                &bytes,
                max_rows,
                || ApiError::TooManyRows { limit: max_rows },
                |_, row| {
                    rows.push(row);
                    Ok(())
                },
            )?;
            rows
        }
        Some("text/csv") => from_csv(&bytes, max_rows, app.limits.csv, columns, check)?,
        _ => {
            return Err(ApiError::UnsupportedMediaType(
                "send a JSON array (application/json) or CSV (text/csv)".into(),
            ))
        }
    };
    if rows.is_empty() {
        return Err(ApiError::BadRequest("there are no rows".into()));
    }
    Ok(rows)
}

/// Rows of a CSV file: every row's problems are collected, so one answer names them all.
pub(crate) fn from_csv<T: DeserializeOwned>(
    bytes: &Bytes,
    max_rows: usize,
    caps: csv_body::Caps,
    columns: &Columns,
    check: impl Fn(&T) -> FieldErrors,
) -> Result<Vec<T>, ApiError> {
    let (headers, mut reader) = csv_body::open(&bytes[..], columns)?;
    caps.check(headers.as_byte_record())?;
    let mut rows = Vec::new();
    let mut bad = Vec::new();
    for (i, record) in reader.records().enumerate() {
        if i >= max_rows {
            return Err(ApiError::TooManyRows { limit: max_rows });
        }
        let errors = match record {
            Ok(record) if caps.check(record.as_byte_record()).is_err() => {
                FieldErrors::one("row", format!("a cell is longer than {} bytes (--csv-max-field-bytes), or the record longer than {} (--csv-max-record-bytes)", caps.field_bytes, caps.record_bytes))
            }
            Ok(record) => match csv_body::record::<T>(&headers, &record, columns) {
                Ok(row) => match check(&row) {
                    errors if errors.is_empty() => {
                        rows.push(row);
                        continue;
                    }
                    errors => errors,
                },
                Err((field, message)) => FieldErrors::one(&field, message),
            },
            Err(e) => FieldErrors::one("row", e.to_string()),
        };
        bad.push(RowError { row: i + 1, errors });
    }
    if !bad.is_empty() {
        let total = rows.len() + bad.len();
        return Err(ApiError::InvalidRows { rows: bad, total });
    }
    Ok(rows)
}
