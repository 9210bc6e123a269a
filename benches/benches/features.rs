//! The feature pipeline's two paths: `materialize` over the fixture history (rows/s), and the online
//! assembly of one request's feature row from the in-memory history (µs per request).
//!
//!     cargo bench -p mercator-benches --bench features
//!
//! MERCATOR_BENCH_PRICES=<csv> materialises another history (the three-year one: `python
//! models/train/generate_data.py --days 1095 --out /tmp/prices-3y.csv`).

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mercator_features::history::day_of;
use mercator_features::online::{Observation, OnlineHistory};
use mercator_features::{materialize, FeatureSpec, RowInput};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn bench(c: &mut Criterion) {
    let spec = FeatureSpec::from_file(&root().join("models/price/2/features.toml")).unwrap();
    let input = std::env::var_os("MERCATOR_BENCH_PRICES")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("fixtures/prices.csv"));

    let rows = materialize::materialize(&spec, &input).unwrap().rows_in;
    let mut group = c.benchmark_group("materialize");
    group
        .sample_size(10)
        .throughput(Throughput::Elements(rows as u64));
    group.bench_function("fixture history", |b| {
        b.iter(|| materialize::materialize(&spec, &input).unwrap())
    });
    group.finish();

    // The online history as the server holds it after ingesting the fixture.
    let text = std::fs::read_to_string(&input).unwrap();
    let records: Vec<Vec<String>> = text
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect();
    let history = OnlineHistory::default();
    history.add(records.iter().map(|r| {
        Observation {
            organization: "org",
            material: &r[1],
            supplier: Some(&r[4]),
            observed_at_ms: chrono::NaiveDate::parse_from_str(&r[0], "%Y-%m-%d")
                .unwrap()
                .and_hms_opt(0, 0, 0)
                .unwrap()
                .and_utc()
                .timestamp_millis(),
            price: r[8].parse().unwrap(),
        }
    }));
    let as_of = day_of(chrono::NaiveDate::from_ymd_opt(2025, 9, 15).unwrap());
    let request = RowInput {
        as_of,
        quantity: 500.0,
        delivery: Some(as_of + 20),
        category: "aluminium",
        supplier_code: Some("SUP-004"),
        list_price: Some(4.04),
        supplier_reliability: Some(0.77),
        price: None,
    };
    let mut group = c.benchmark_group("online");
    group.throughput(Throughput::Elements(1));
    group.bench_function("assemble one request row", |b| {
        b.iter(|| {
            history
                .row(&spec, "org", "ALU-001", Some("SUP-004"), &request)
                .unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
