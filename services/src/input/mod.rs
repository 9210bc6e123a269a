//! Request bodies read by the API's rules, whichever service reads them: JSON whose problems name their
//! field (`rows[3].price`), JSON arrays read element by element, CSV read as JSON would be (`csv_body`).

pub mod csv_body;

use mercator_store::FieldErrors;
use serde::de::DeserializeOwned;

/// A body that cannot be read: not the format it says (`bad_request`), or values that do not fit, by field
/// (`validation_error`).
#[derive(Debug, Clone, thiserror::Error)]
pub enum InputError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{message}")]
    Invalid {
        message: String,
        details: FieldErrors,
    },
}

impl InputError {
    /// One field's problem.
    pub fn invalid(field: &str, message: impl Into<String>) -> InputError {
        let message = message.into();
        InputError::Invalid {
            details: FieldErrors::one(field, message.clone()),
            message,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            InputError::BadRequest(_) => "bad_request",
            InputError::Invalid { .. } => "validation_error",
        }
    }
}

/// `T` from JSON text; a field that does not fit is named by its path (`rows[3].price`).
pub fn from_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, InputError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(json_error)
}

/// A JSON array body read element by element: each element, as a `T`, is handed to `each` with its index
/// as soon as it is parsed, so the array never sits in memory as generic values. More than `max` elements
/// stops the parse at the first one too many, with the error `overflow` makes; an error from `each` stops
/// it too and is the answer. A body that is not such an array is `E::from` its [`InputError`]. Answers how
/// many elements there were.
pub fn json_array<T: DeserializeOwned, E: From<InputError>>(
    bytes: &[u8],
    max: usize,
    overflow: impl FnOnce() -> E,
    mut each: impl FnMut(usize, T) -> Result<(), E>,
) -> Result<usize, E> {
    use serde::de::{Deserializer as _, Error as _};

    struct Elements<'a, T, F, E> {
        max: usize,
        each: &'a mut F,
        /// Why the parse was stopped, when not for the JSON itself.
        stopped: &'a mut Option<Stop<E>>,
        _t: std::marker::PhantomData<T>,
    }
    enum Stop<E> {
        Overflow,
        Each(E),
    }
    impl<'de, T, F, E> serde::de::Visitor<'de> for Elements<'_, T, F, E>
    where
        T: DeserializeOwned,
        F: FnMut(usize, T) -> Result<(), E>,
    {
        type Value = usize;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON array")
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
            let mut n = 0;
            while let Some(element) = seq.next_element::<T>()? {
                if n == self.max {
                    *self.stopped = Some(Stop::Overflow);
                    return Err(A::Error::custom("too many elements"));
                }
                if let Err(e) = (self.each)(n, element) {
                    *self.stopped = Some(Stop::Each(e));
                    return Err(A::Error::custom("stopped"));
                }
                n += 1;
            }
            Ok(n)
        }
    }

    let mut stopped = None;
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let mut track = serde_path_to_error::Track::new();
    let parsed = serde_path_to_error::Deserializer::new(&mut de, &mut track)
        .deserialize_seq(Elements {
            max,
            each: &mut each,
            stopped: &mut stopped,
            _t: std::marker::PhantomData,
        })
        .and_then(|n| de.end().map(|()| n));
    match (parsed, stopped) {
        (_, Some(Stop::Overflow)) => Err(overflow()),
        (_, Some(Stop::Each(e))) => Err(e),
        (Ok(n), None) => Ok(n),
        (Err(e), None) => Err(json_error(serde_path_to_error::Error::new(track.path(), e)).into()),
    }
}

/// A JSON body's error: a syntax error is `bad_request`, a value that does not fit a `validation_error`
/// naming its field.
fn json_error(e: serde_path_to_error::Error<serde_json::Error>) -> InputError {
    let path = e.path().to_string();
    let inner = e.into_inner();
    match inner.classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
            InputError::BadRequest(format!("the body is not valid JSON: {inner}"))
        }
        _ => {
            let field = if path == "." {
                "body".to_string()
            } else {
                path
            };
            InputError::Invalid {
                message: format!("`{field}`: {inner}"),
                details: FieldErrors::one(&field, strip_position(&inner.to_string())),
            }
        }
    }
}

/// serde_json appends "at line 1 column 17": useful in a message, noise in a field's list.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}
