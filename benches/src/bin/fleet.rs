//! The fleet benchmark's client: against two running replicas A and B on one database (and Redis), how long
//! a change made on A takes to reach B, N times each, as p50 and p99 in milliseconds (one host, one clock):
//!
//! - `activation`: A switches the `price` model's active version; until B's engine serves it (B's
//!   `/api/v1/models/price`, asked every millisecond).
//! - `price` and `rule`: a price written on A, an alert rule made on A; until B has applied the change
//!   (B's `/readyz` `change_feed.applied` moves past where it was).
//! - `price_event`: a price written on A; until a `/ws/prices` client on B hears it (through Redis).
//!
//!     bench-fleet http://127.0.0.1:8001 http://127.0.0.1:8002 <admin key> 200

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (a, b, key) = (args[1].clone(), args[2].clone(), args[3].clone());
    let n: usize = args.get(4).map_or(200, |n| n.parse().unwrap());
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
    let get = |url: String| {
        let request = client.get(url);
        async move { request.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let post = |url: String, body: Value| {
        let request = client.post(url).json(&body);
        async move {
            let r = request.send().await.unwrap();
            assert!(r.status().is_success(), "{}", r.text().await.unwrap());
            r.json::<Value>().await.unwrap()
        }
    };
    let applied = |base: String| {
        let get = &get;
        async move {
            get(format!("{base}/readyz")).await["change_feed"]["applied"]
                .as_i64()
                .unwrap()
        }
    };

    let material = post(
        format!("{a}/api/v1/materials"),
        json!({"code": format!("FLEET-{}", chrono::Utc::now().timestamp_millis()), "name": "fleet bench",
               "category": "bench", "unit": "kg"}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let price = || {
        json!({"time": chrono::Utc::now().to_rfc3339(), "material_id": material, "price": 10.0,
               "currency": "EUR", "price_type": "quote"})
    };

    let mut results = serde_json::Map::new();
    // Activation: back and forth between the two shipped versions.
    let mut took = Vec::with_capacity(n);
    for i in 0..n {
        let version = 1 + (i % 2) as u64;
        let started = Instant::now();
        post(
            format!("{a}/api/v1/models/price/versions/{version}/activate"),
            json!({}),
        )
        .await;
        loop {
            let model = get(format!("{b}/api/v1/models/price")).await;
            if model["active_version"].as_u64() == Some(version) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        took.push(started.elapsed());
    }
    results.insert("activation".into(), summary(&mut took));

    // A price and a rule reaching B's projections.
    for kind in ["price", "rule"] {
        let mut took = Vec::with_capacity(n);
        for i in 0..n {
            let before = applied(b.clone()).await;
            let started = Instant::now();
            match kind {
                "price" => post(format!("{a}/api/v1/prices"), price()).await,
                _ => post(
                    format!("{a}/api/v1/alerts"),
                    json!({"name": format!("bench {i} {}", chrono::Utc::now().timestamp_micros()),
                               "scope": {"material_id": material},
                               "condition": {"type": "price_above", "threshold": 1e9}}),
                )
                .await,
            };
            while applied(b.clone()).await <= before {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            took.push(started.elapsed());
        }
        results.insert(kind.into(), summary(&mut took));
    }

    // A price event on B's WebSocket, through Redis.
    let ws = b.replace("http://", "ws://");
    let (mut socket, _) = tokio_tungstenite::connect_async(format!("{ws}/ws/prices?api_key={key}"))
        .await
        .unwrap();
    let mut took = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let written = post(format!("{a}/api/v1/prices"), price()).await;
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(5), socket.next())
                .await
                .expect("the price event arrives within 5 s (is Redis configured?)")
                .unwrap()
                .unwrap();
            let frame: Value =
                serde_json::from_str(frame.to_text().unwrap_or("null")).unwrap_or_default();
            if frame["price"]["id"] == written["id"] {
                break;
            }
        }
        took.push(started.elapsed());
    }
    results.insert("price_event".into(), summary(&mut took));
    println!("{}", Value::Object(results));
}

/// p50 and p99 in milliseconds, and the count.
fn summary(took: &mut [Duration]) -> Value {
    took.sort();
    let at = |q: f64| took[((took.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1e3;
    json!({"n": took.len(), "p50_ms": at(0.5), "p99_ms": at(0.99), "max_ms": at(1.0)})
}
