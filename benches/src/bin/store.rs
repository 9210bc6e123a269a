//! The store benchmark's client: against a running Mercator, bulk-ingests ROWS price observations by CSV
//! (in requests of 100,000 rows) and reports rows/s, then times list and range queries on the result one
//! at a time (latency, not throughput) and reports p50/p99.
//!
//!     bench-store http://127.0.0.1:8104 <admin key> 1000000 [alert rules]
//!
//! With a rule count, that many alert rules are made first: all but ten scoped to categories no price
//! has (they cannot match), ten that look at every price and never fire (the work of evaluation without
//! the writes of events), to show what evaluation on ingest costs and that rules which cannot match cost
//! nothing.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

const MATERIALS: usize = 50;
const CHUNK: usize = 100_000;
const SAMPLES: usize = 300;

/// The path of the i-th query of a kind.
type PathOf<'a> = Box<dyn Fn(usize) -> String + 'a>;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (base, key) = (args[1].clone(), args[2].clone());
    let rows: usize = args.get(3).map_or(1_000_000, |r| r.parse().unwrap());
    let rules: usize = args.get(4).map_or(0, |r| r.parse().unwrap());
    let client = reqwest::Client::builder()
        .default_headers(
            [(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {key}").parse().unwrap(),
            )]
            .into_iter()
            .collect(),
        )
        .build()
        .unwrap();
    let post = |path: &str, body: Value| client.post(format!("{base}{path}")).json(&body).send();

    let mut materials = Vec::new();
    for i in 0..MATERIALS {
        let m: Value = post(
            "/api/v1/materials",
            json!({"code": format!("B-{i}"), "name": format!("Bench {i}"), "category": format!("c{}", i % 8), "unit": "kg"}),
        )
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
        materials.push(m["id"].as_str().expect("a material").to_string());
    }
    let supplier: Value = post(
        "/api/v1/suppliers",
        json!({"code": "S-1", "name": "Bench", "country": "DE", "reliability": 0.9}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let supplier = supplier["id"].as_str().unwrap().to_string();
    for i in 0..rules {
        let scope = if i < rules.saturating_sub(10) {
            json!({"category": format!("unused-{i}")})
        } else {
            json!({})
        };
        let r = post(
            "/api/v1/alerts",
            json!({"name": format!("rule {i}"), "scope": scope,
                   "condition": {"type": "price_above", "threshold": 1.0e9}}),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    }

    // One observation per material every 5 minutes from 2024-01-01, so each material's series is dense.
    let start = chrono::DateTime::parse_from_rfc3339("2024-01-01T00:00:00Z").unwrap();
    let minutes_per_row = 5.0 / MATERIALS as f64;
    let mut ingest = Duration::ZERO;
    for first in (0..rows).step_by(CHUNK) {
        let mut csv =
            String::from("time,material_id,supplier_id,price,currency,quantity,price_type\n");
        for i in first..(first + CHUNK).min(rows) {
            let t = start + chrono::Duration::seconds((i as f64 * minutes_per_row * 60.0) as i64);
            csv.push_str(&format!(
                "{},{},{supplier},{:.3},EUR,{},quote\n",
                t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                materials[i % MATERIALS],
                3.0 + (i % 113) as f64 / 50.0,
                100 + i % 900,
            ));
        }
        let sent = Instant::now();
        let r = client
            .post(format!("{base}/api/v1/prices/bulk"))
            .header("content-type", "text/csv")
            .body(csv)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
        ingest += sent.elapsed();
        eprintln!("  rows {first}..: {:.2} s", sent.elapsed().as_secs_f64());
    }
    let rate = rows as f64 / ingest.as_secs_f64();
    println!(
        "bulk ingest: {rows} rows in {:.1} s: {rate:.0} rows/s",
        ingest.as_secs_f64()
    );

    let days = (rows as f64 * minutes_per_row / 1440.0) as i64;
    let queries: Vec<(&str, PathOf)> = vec![
        (
            "newest 50 of all",
            Box::new(|_| "/api/v1/prices?limit=50".to_string()),
        ),
        (
            "material, 30-day range, 100 rows",
            Box::new(|i| {
                let from = start + chrono::Duration::days((i as i64 * 7) % (days - 30).max(1));
                let to = from + chrono::Duration::days(30);
                format!(
                    "/api/v1/prices?material_id={}&from={}&to={}&limit=100",
                    materials[i % MATERIALS],
                    from.format("%Y-%m-%d"),
                    to.format("%Y-%m-%d")
                )
            }),
        ),
        (
            "material, newest 100",
            Box::new(|i| {
                format!(
                    "/api/v1/prices?material_id={}&limit=100",
                    materials[i % MATERIALS]
                )
            }),
        ),
        (
            "materials list, 50",
            Box::new(|_| "/api/v1/materials?limit=50".to_string()),
        ),
    ];
    let mut report =
        json!({ "rows": rows, "alert_rules": rules, "ingest_rows_per_s": rate.round() });
    for (name, path) in &queries {
        let mut took = Vec::with_capacity(SAMPLES);
        for i in 0..SAMPLES {
            let sent = Instant::now();
            let r = client
                .get(format!("{base}{}", path(i)))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.bytes().await.unwrap();
            took.push(sent.elapsed().as_secs_f64() * 1e3);
        }
        took.sort_by(f64::total_cmp);
        let (p50, p99) = (took[SAMPLES / 2], took[SAMPLES * 99 / 100]);
        println!("{name}: p50 {p50:.2} ms, p99 {p99:.2} ms");
        report[*name] = json!({ "p50_ms": (p50 * 100.0).round() / 100.0, "p99_ms": (p99 * 100.0).round() / 100.0 });
    }
    println!("{report}");
}
