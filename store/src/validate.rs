//! The rules values must keep, reported by field (and by row for bulk writes), and time parsing.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use crate::{StoreError, Time};

/// The smallest unit price taken: one ten-thousandth, the feature history's fixed-point unit.
pub const MIN_PRICE: f64 = 0.0001;
/// The largest unit price taken.
pub const MAX_PRICE: f64 = 1e12;

/// Problems by field name: `{"price": ["must be greater than 0"]}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(transparent)]
pub struct FieldErrors(pub BTreeMap<String, Vec<String>>);

impl FieldErrors {
    pub fn one(field: &str, message: impl Into<String>) -> FieldErrors {
        let mut errors = FieldErrors::default();
        errors.add(field, message);
        errors
    }

    pub fn add(&mut self, field: &str, message: impl Into<String>) {
        self.0
            .entry(field.to_string())
            .or_default()
            .push(message.into());
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok` when nothing was found wrong.
    pub fn into_result(self) -> Result<(), StoreError> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(StoreError::Invalid(self))
        }
    }

    pub(crate) fn text(&mut self, field: &str, value: &str, max: usize) {
        if value.trim().is_empty() {
            self.add(field, "must not be empty");
        } else if value.chars().count() > max {
            self.add(field, format!("must be at most {max} characters"));
        }
    }

    pub(crate) fn positive(&mut self, field: &str, value: f64) {
        if !value.is_finite() || value <= 0.0 {
            self.add(field, "must be a number greater than 0");
        }
    }

    /// A unit price: between [`MIN_PRICE`] and [`MAX_PRICE`], so that it keeps its value in the feature
    /// history's fixed point (a smaller one would round to nothing).
    pub(crate) fn price(&mut self, field: &str, value: f64) {
        if !(MIN_PRICE..=MAX_PRICE).contains(&value) {
            self.add(
                field,
                format!("must be a number from {MIN_PRICE} to {MAX_PRICE:e}"),
            );
        }
    }

    pub(crate) fn one_of(&mut self, field: &str, value: &str, allowed: &[&str]) {
        if !allowed.contains(&value) {
            self.add(field, format!("must be one of {}", allowed.join(", ")));
        }
    }

    pub(crate) fn code(&mut self, field: &str, value: &str, letters: usize, what: &str) {
        if value.len() != letters || !value.chars().all(|c| c.is_ascii_uppercase()) {
            self.add(
                field,
                format!("must be {letters} upper-case letters ({what})"),
            );
        }
    }
}

/// What is wrong with one row of a bulk write: `row` counts from 1 over the data rows (a CSV file's header
/// is not counted; its line number is `row + 1`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RowError {
    pub row: usize,
    pub errors: FieldErrors,
}

/// The first and last days any time or date the API takes may fall on. Anything outside is refused with
/// the field named, so no calendar arithmetic downstream (windows, horizons, lead times) can leave the
/// range chrono can represent.
pub const FIRST_DATE: chrono::NaiveDate = match chrono::NaiveDate::from_ymd_opt(1900, 1, 1) {
    Some(d) => d,
    None => panic!("a valid date"),
};
pub const LAST_DATE: chrono::NaiveDate = match chrono::NaiveDate::from_ymd_opt(2200, 12, 31) {
    Some(d) => d,
    None => panic!("a valid date"),
};

/// What a time or date outside [`FIRST_DATE`, `LAST_DATE`] is told.
pub const DATE_RANGE: &str = "must fall between 1900-01-01 and 2200-12-31";

fn in_range(date: chrono::NaiveDate) -> bool {
    (FIRST_DATE..=LAST_DATE).contains(&date)
}

/// `2025-03-01T12:00:00Z` (any RFC 3339 offset) or a date, `2025-03-01`, meaning its midnight in UTC; None
/// when it is neither or falls outside [`FIRST_DATE`, `LAST_DATE`].
pub fn parse_time(text: &str) -> Option<Time> {
    let time = match chrono::DateTime::parse_from_rfc3339(text) {
        Ok(t) => t.with_timezone(&chrono::Utc),
        Err(_) => chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
            .ok()?
            .and_hms_opt(0, 0, 0)?
            .and_utc(),
    };
    in_range(time.date_naive()).then_some(time)
}

/// A time parameter named `field`, as [`parse_time`] reads it; what to send instead, for that field, when
/// it is not one.
pub fn parse_time_param(field: &str, text: Option<String>) -> Result<Option<Time>, FieldErrors> {
    text.map(|t| {
        parse_time(&t).ok_or_else(|| {
            FieldErrors::one(
                field,
                format!("use RFC 3339 (2025-03-01T12:00:00Z) or a date; it {DATE_RANGE}"),
            )
        })
    })
    .transpose()
}

/// A date, `2025-03-01`, within [`FIRST_DATE`, `LAST_DATE`]; the message says what is wrong otherwise.
pub fn parse_date(text: &str) -> Result<chrono::NaiveDate, String> {
    let date = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|e| {
        format!("`{text}` is not a date (YYYY-MM-DD) between 1900-01-01 and 2200-12-31: {e}")
    })?;
    if in_range(date) {
        Ok(date)
    } else {
        Err(format!("`{text}` {DATE_RANGE}"))
    }
}

/// serde: a time as `parse_time` reads it.
pub(crate) fn time<'de, D: Deserializer<'de>>(d: D) -> Result<Time, D::Error> {
    let text = String::deserialize(d)?;
    parse_time(&text).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "`{text}` is not a time between 1900-01-01 and 2200-12-31: use RFC 3339 \
             (2025-03-01T12:00:00Z) or a date (2025-03-01)"
        ))
    })
}

/// serde: an optional time as `parse_time` reads it (use with `#[serde(default)]`).
pub fn opt_time<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Time>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|text| time(serde::de::value::StringDeserializer::<D::Error>::new(text)))
        .transpose()
}

/// serde: a date as `parse_date` reads it.
pub(crate) fn date<'de, D: Deserializer<'de>>(d: D) -> Result<chrono::NaiveDate, D::Error> {
    let text = String::deserialize(d)?;
    parse_date(&text).map_err(serde::de::Error::custom)
}

/// serde: an optional date as `parse_date` reads it (use with `#[serde(default)]`).
pub fn opt_date<'de, D: Deserializer<'de>>(d: D) -> Result<Option<chrono::NaiveDate>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|text| parse_date(&text).map_err(serde::de::Error::custom))
        .transpose()
}

/// serde: a present field (even `null`) becomes `Some`, so a partial update can tell "set to null" from
/// "leave alone".
pub(crate) fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}
