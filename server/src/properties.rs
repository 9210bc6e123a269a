//! Properties over everything that reads input: whatever the bytes, an answer or an error, never a panic.
//! Each target starts from its seeds in `fuzz/corpus/<target>/` (real files and the cases that once broke
//! something) and mutates them: bytes replaced, inserted, deleted, spliced. In the test suite each runs 256
//! cases; `make fuzz` runs each for `MERCATOR_FUZZ_SECS` seconds. A failure prints its input; add it to the
//! target's corpus when it is fixed.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

/// The seeds of a target (at least an empty input).
fn corpus(target: &str) -> Vec<Vec<u8>> {
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(corpus_dir(target))
        .map(|d| {
            d.filter_map(|e| std::fs::read(e.ok()?.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    seeds.push(Vec::new());
    seeds
}

/// One of `seeds` with up to 8 edits.
fn mutated(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let dictionary: &[&[u8]] = &[
        b"\"",
        b",",
        b"\n",
        b"\r\n",
        b"{",
        b"}",
        b"[",
        b"]",
        b":",
        b"null",
        b"-1",
        b"1e309",
        b"NaN",
        b"18446744073709551615",
        b"+262142-01-01",
        b"2200-12-31",
        b"\xff\xfe",
        b"=",
        b"\0",
    ];
    let dictionary: Vec<Vec<u8>> = dictionary.iter().map(|d| d.to_vec()).collect();
    (
        prop::sample::select(seeds),
        prop::collection::vec(
            (
                any::<prop::sample::Index>(),
                0u8..5,
                any::<u8>(),
                prop::sample::select(dictionary),
                any::<prop::sample::Index>(),
            ),
            0..8,
        ),
    )
        .prop_map(|(mut bytes, edits)| {
            for (at, op, byte, word, other) in edits {
                let at = if bytes.is_empty() {
                    0
                } else {
                    at.index(bytes.len())
                };
                match op {
                    0 if !bytes.is_empty() => bytes[at] = byte,
                    1 => bytes.insert(at, byte),
                    2 if !bytes.is_empty() => {
                        let end = (at + 1 + other.index(16)).min(bytes.len());
                        bytes.drain(at..end);
                    }
                    3 => {
                        bytes.splice(at..at, word);
                    }
                    _ if !bytes.is_empty() => {
                        // Repeat a slice: long cells, deep nesting.
                        let end = (at + 1 + other.index(64)).min(bytes.len());
                        let piece = bytes[at..end].to_vec();
                        for _ in 0..1 + other.index(64) {
                            bytes.splice(at..at, piece.iter().copied());
                        }
                    }
                    _ => {}
                }
            }
            bytes
        })
}

/// Runs `check` on inputs from `strategy`: 256 cases, or for MERCATOR_FUZZ_SECS seconds.
fn fuzz<S: Strategy>(strategy: S, check: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    let budget = std::env::var("MERCATOR_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_secs);
    let config = Config {
        cases: 256,
        failure_persistence: None,
        ..Config::default()
    };
    let deadline = budget.map(|b| Instant::now() + b);
    let mut rounds = 0u64;
    loop {
        let mut runner = TestRunner::new(config.clone());
        if let Err(e) = runner.run(&strategy, &check) {
            panic!("{e}");
        }
        rounds += 1;
        match deadline {
            Some(d) if Instant::now() < d => continue,
            _ => break,
        }
    }
    if budget.is_some() {
        eprintln!("{} cases", rounds * config.cases as u64);
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn v2_json_requests() {
    use axum::http::HeaderMap;
    fuzz(mutated(corpus("v2_json")), |bytes| {
        let body = bytes::Bytes::from(bytes);
        if let Ok((request, binary)) = crate::v2::decode(&HeaderMap::new(), &body) {
            let _ = crate::v2::tensors(request.inputs, binary);
        }
        Ok(())
    });
}

#[test]
fn v2_binary_requests() {
    use axum::http::{HeaderMap, HeaderValue};
    let strategy = (
        mutated(corpus("v2_json")),
        prop::collection::vec(any::<u8>(), 0..64),
        any::<u16>(),
    );
    fuzz(strategy, |(header, tail, cut)| {
        let mut headers = HeaderMap::new();
        let length = (header.len() + cut as usize % 8).saturating_sub(4);
        headers.insert(
            crate::v2::HEADER_LENGTH,
            HeaderValue::from_str(&length.to_string()).unwrap(),
        );
        let mut body = header;
        body.extend_from_slice(&tail);
        let body = bytes::Bytes::from(body);
        if let Ok((request, binary)) = crate::v2::decode(&headers, &body) {
            let _ = crate::v2::tensors(request.inputs, binary);
        }
        Ok(())
    });
}

#[test]
fn batch_csv_files() {
    use mercator_services::jobs::input::{self, Layout};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("input.csv");
    let caps = mercator_services::input::csv_body::Caps {
        field_bytes: 256,
        record_bytes: 1024,
    };
    fuzz(mutated(corpus("csv")), |bytes| {
        std::fs::write(&path, &bytes).unwrap();
        for layout in [Layout::Price, Layout::Features { width: 3 }] {
            let Ok(indexed) = input::index(&path, layout, 4, 1000, caps) else {
                continue;
            };
            let columns = input::PriceColumns::new(&indexed.headers);
            for chunk in &indexed.chunks {
                let _ = input::read_chunk(&path, chunk, |record| match layout {
                    Layout::Price => record.and_then(|r| columns.parse(r)).map(|_| ()),
                    Layout::Features { width } => record
                        .and_then(|r| input::parse_features(r, width))
                        .map(|_| ()),
                });
            }
        }
        Ok(())
    });
}

#[test]
fn bulk_price_csv() {
    let caps = mercator_services::input::csv_body::Caps {
        field_bytes: 256,
        record_bytes: 1024,
    };
    fuzz(mutated(corpus("csv")), |bytes| {
        let _ = crate::api::prices::from_csv(&bytes::Bytes::from(bytes), 100, caps);
        Ok(())
    });
}

#[test]
fn json_bulk_and_batch_bodies() {
    use crate::api::extract::from_json;
    use crate::error::ApiError;
    use mercator_services::input::json_array;
    use mercator_services::jobs::BatchError;
    let dir = tempfile::tempdir().unwrap();
    fuzz(mutated(corpus("json_bulk")), |bytes| {
        let _ = json_array::<mercator_store::NewPrice, ApiError>(
            &bytes,
            50,
            || ApiError::TooManyRows { limit: 50 },
            |_, _| Ok(()),
        );
        let mut rows =
            mercator_services::jobs::input::JsonRows::new(2, dir.path().join("input.csv"));
        let read = json_array::<serde_json::Value, BatchError>(
            &bytes,
            50,
            || BatchError::BadRequest("too many".into()),
            |i, v| rows.push(i, v),
        );
        if read.is_ok() {
            let _ = rows.finish();
        }
        let _ = mercator_services::jobs::input::count_feature_rows(&bytes);
        if let Ok(raw) = from_json::<mercator_services::jobs::RawBatch>(&bytes) {
            let _ = raw.rows.checked(3);
        }
        Ok(())
    });
}

#[test]
fn manifests() {
    fuzz(mutated(corpus("manifest")), |bytes| {
        let _ = mercator_engine::Manifest::parse(&text(&bytes), std::path::Path::new("m"));
        Ok(())
    });
}

#[test]
fn feature_specs() {
    fuzz(mutated(corpus("features_toml")), |bytes| {
        let _ = mercator_features::FeatureSpec::parse(&text(&bytes));
        Ok(())
    });
}

/// Feature assembly over any history and any request: days anywhere in `i32`, prices of any float.
#[test]
fn feature_assembly() {
    use mercator_features::history::to_units;
    use mercator_features::{assemble, RowHistory, RowInput, Series};
    let specs: Vec<mercator_features::FeatureSpec> = ["price", "anomaly", "forecast"]
        .iter()
        .map(|m| {
            let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../models")
                .join(m)
                .join("2/features.toml");
            mercator_features::FeatureSpec::parse(&std::fs::read_to_string(path).unwrap()).unwrap()
        })
        .collect();
    let day = prop_oneof![
        any::<i32>(),
        40_000i32..50_000,
        Just(i32::MAX),
        Just(i32::MIN)
    ];
    let price = prop_oneof![any::<f64>(), 0.0f64..1000.0, Just(f64::MAX), Just(1e-9)];
    let strategy = (
        prop::collection::vec((day.clone(), price.clone()), 0..64),
        day.clone(),
        prop::option::of(day),
        any::<f64>(),
        prop::option::of(price.clone()),
        prop::option::of(any::<f64>()),
        0usize..3,
    );
    fuzz(
        strategy,
        |(history, as_of, delivery, quantity, observed, list, which)| {
            let mut market = Series::default();
            let spec = &specs[which];
            for (day, p) in &history {
                market.add(*day, to_units(*p, spec.units_per_price));
            }
            let input = RowInput {
                as_of,
                quantity,
                delivery,
                category: "steel",
                supplier_code: Some("S-1"),
                list_price: list,
                supplier_reliability: list,
                price: observed,
            };
            let _ = assemble(
                spec,
                &input,
                RowHistory {
                    market: &market,
                    supplier: Some(&market),
                },
            );
            Ok(())
        },
    );
}
