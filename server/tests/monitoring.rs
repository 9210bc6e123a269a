//! Model monitoring end to end: the fixture's held-out period replayed through ingest and price predictions
//! on the real server and models, clean (no drift) and with one input shifted by two reference standard
//! deviations (that feature, and only it, drifts); two replicas on one PostgreSQL database whose counts merge
//! to the counts of the combined stream.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{ingest_fixture, shipped_models, Fixture, PgDatabase, TestServer};
use mercator_services::clock::Clock;
use serde_json::{json, Value};

/// Held while a test ingests the fixture and reads the process's counters around it.
static INGEST: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The held-out rows of the fixture: (observed_on, material code, supplier code, quantity, lead days).
fn holdout() -> Vec<(chrono::NaiveDate, String, String, f64, i64)> {
    let manifest =
        mercator_engine::Manifest::from_file(&shipped_models().join("price/2/model.toml")).unwrap();
    let from: chrono::NaiveDate = manifest.metrics["holdout_from"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let path = shipped_models().join("../fixtures/prices.csv");
    let mut reader = csv::Reader::from_path(path).unwrap();
    reader
        .records()
        .map(Result::unwrap)
        .filter_map(|r| {
            let day: chrono::NaiveDate = r[0].parse().unwrap();
            (day >= from).then(|| {
                let quantity: f64 = r[6].parse().unwrap();
                (
                    day,
                    r[1].to_string(),
                    r[4].to_string(),
                    quantity,
                    r[7].parse().unwrap(),
                )
            })
        })
        .collect()
}

/// The replay as one batch CSV of price requests, each quantity times `scale`.
fn replay_csv(f: &Fixture, scale: f64) -> String {
    let mut csv = String::from("material_id,quantity,supplier_id,as_of,delivery_date\n");
    for (day, material, supplier, quantity, lead) in holdout() {
        let delivery = day + chrono::Duration::days(lead);
        csv.push_str(&format!(
            "{},{},{},{day},{delivery}\n",
            f.materials[&material],
            quantity * scale,
            f.suppliers[&supplier]
        ));
    }
    csv
}

/// Posts a batch inline; the rows the model computed.
async fn predict(s: &TestServer, path: &str, csv: String) -> u64 {
    let body = predict_inline(s, path, csv).await;
    body["rows"].as_u64().unwrap() - body["failed"].as_u64().unwrap()
}

/// Posts a batch inline; its answer.
async fn predict_inline(s: &TestServer, path: &str, csv: String) -> Value {
    let r = s
        .client
        .post(s.url(path))
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    body
}

async fn report(s: &TestServer, path: &str) -> Value {
    let r = s.client.get(s.url(path)).send().await.unwrap();
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    body
}

fn verdicts(report: &Value) -> Vec<(String, String)> {
    report["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["verdict"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The reference standard deviation of a column, from the version's reference profile.
fn reference_std(detail: &Value, column: &str) -> f64 {
    let c = detail["reference_profile"]["columns"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == column)
        .unwrap();
    let counts = &c["counts"];
    let n = counts["count"].as_f64().unwrap();
    let mean = counts["sum"].as_f64().unwrap() / n;
    (counts["sum_sq"].as_f64().unwrap() / n - mean * mean).sqrt()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_replay_drifts_nowhere_and_a_two_sigma_shift_on_one_input_flags_it_alone() {
    let clock = Arc::new(Clock::default());
    let shared = clock.clone();
    let s = TestServer::with(move |c| {
        c.clock = shared;
        c.batch_inline_max_rows = 20_000;
        let m = c.monitor.as_mut().unwrap();
        m.bucket = Duration::from_secs(60);
        m.windows = vec![
            mercator_services::monitor::Window::parse("1h").unwrap(),
            mercator_services::monitor::Window::parse("1d").unwrap(),
        ];
        m.log_sample = 1.0;
        m.flush = Duration::from_secs(1);
    })
    .await;
    // Metrics are the process's, and another test here ingests too: the counters are read around this
    // ingest with the other one held off.
    let ingesting = INGEST.lock().await;
    let before = s.metrics().await;
    let fixture = ingest_fixture(&s, &s.client).await;
    let after = s.metrics().await;
    drop(ingesting);

    // Ingest scored every price with enough history: the anomaly model's share over each threshold is
    // the share ingest flagged at that severity or above, and near what calibration flagged.
    let scored = report(&s, "/api/v1/models/anomaly/versions/2/monitoring?window=1h").await;
    let counter = |name: &str| -> u64 {
        let sum = |text: &str| -> u64 {
            text.lines()
                .filter(|l| l.starts_with(name))
                .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64)
                .sum()
        };
        sum(&after) - sum(&before)
    };
    assert_eq!(counter("price_updates_total"), 43_678, "{after}");
    let by = |severity: &str| counter(&format!("price_anomalies_total{{severity=\"{severity}\"}}"));
    let rates = scored["anomaly_rates"].as_array().unwrap();
    assert_eq!(
        rates[0]["flagged"],
        by("low") + by("medium") + by("high"),
        "{scored:#}"
    );
    assert_eq!(rates[1]["flagged"], by("medium") + by("high"));
    assert_eq!(rates[2]["flagged"], by("high"));
    assert_eq!(rates[0]["calibrated"], 0.02);
    let low = rates[0]["share"].as_f64().unwrap();
    assert!((0.01..0.06).contains(&low), "{low}");
    assert_eq!(
        scored["accuracy"],
        Value::Null,
        "anomaly answers are not priced"
    );
    // The ingest's anomaly scoring is counted in this hour; the replays go to windows of their own.
    clock.advance(Duration::from_secs(3660));

    // Rules on the model, judged as each hour ends: drift of any feature, and accuracy bounds.
    let mut rules = Vec::new();
    for condition in [
        json!({"type": "feature_drift", "model": "price"}),
        json!({"type": "accuracy", "model": "price", "max_mape": 0.2, "min_coverage": 0.5}),
    ] {
        let r = s
            .client
            .post(s.url("/api/v1/alerts"))
            .json(&json!({"name": condition["type"], "condition": condition}))
            .send()
            .await
            .unwrap();
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["condition"]["windows"], 1, "{body}");
        rules.push(body["id"].as_str().unwrap().to_string());
    }
    let events = |rule: &str| {
        let r = s
            .client
            .get(s.url(&format!("/api/v1/alerts/events?rule_id={rule}")));
        async move {
            let body: Value = r.send().await.unwrap().json().await.unwrap();
            body["items"].as_array().cloned().unwrap_or_default()
        }
    };

    let monitoring = "/api/v1/models/price/versions/2/monitoring?window=1h";
    let empty = report(&s, monitoring).await;
    assert_eq!(empty["rows"], 0);
    assert_eq!(empty["verdict"], "insufficient_data", "{empty}");

    // The held-out period as it happened.
    let answered = predict_inline(&s, "/api/v1/predictions/batch", replay_csv(&fixture, 1.0)).await;
    let computed = answered["rows"].as_u64().unwrap() - answered["failed"].as_u64().unwrap();
    assert!(computed > 5000, "{computed}");
    let clean = report(&s, monitoring).await;

    // Realized accuracy: each answer against the fixture's mean price of its material from its supplier on
    // its day (prices as the store keeps them, in 1/10000ths), computed here apart from the server.
    let mut observed: std::collections::HashMap<(String, String, chrono::NaiveDate), (f64, f64)> =
        Default::default();
    let mut reader =
        csv::Reader::from_path(shipped_models().join("../fixtures/prices.csv")).unwrap();
    for r in reader.records().map(Result::unwrap) {
        let units = (r[8].parse::<f64>().unwrap() * 10_000.0).round();
        let e = observed
            .entry((r[1].to_string(), r[4].to_string(), r[0].parse().unwrap()))
            .or_default();
        e.0 += units;
        e.1 += 1.0;
    }
    let (mut ape, mut covered, mut n) = (0.0, 0u64, 0u64);
    for ((day, material, supplier, _, _), row) in holdout()
        .iter()
        .zip(answered["results"].as_array().unwrap())
    {
        let Some(p) = row["prediction"].as_object() else {
            continue;
        };
        let (sum, count) = observed[&(material.clone(), supplier.clone(), *day)];
        let actual = sum / count / 10_000.0;
        let predicted = p["predicted_price"].as_f64().unwrap();
        let interval = &p["prediction_interval"];
        ape += (predicted - actual).abs() / actual;
        covered += u64::from(
            interval["lower"].as_f64().unwrap() <= actual
                && actual <= interval["upper"].as_f64().unwrap(),
        );
        n += 1;
    }
    let accuracy = &clean["accuracy"];
    assert_eq!(
        (accuracy["logged"].as_u64(), accuracy["labelled"].as_u64()),
        (Some(n), Some(n)),
        "{accuracy:#}"
    );
    assert_eq!(
        (&accuracy["pending"], &accuracy["unlabelled"]),
        (&json!(0), &json!(0))
    );
    let mape = accuracy["mape"].as_f64().unwrap();
    assert!(
        (mape - ape / n as f64).abs() < 1e-9,
        "{mape} vs {}",
        ape / n as f64
    );
    let coverage = &accuracy["coverage"][0];
    assert_eq!(
        (coverage["level"].as_f64(), coverage["covered"].as_u64()),
        (Some(0.8), Some(covered)),
        "{coverage}"
    );
    // The manifest's held-out MAPE (2.44%) is on clean prices; the replay keeps the injected anomalies,
    // which pull the mean and not the median.
    assert!(
        accuracy["median_ape"].as_f64().unwrap() < mape,
        "{accuracy}"
    );
    eprintln!("realized accuracy of the replay: {accuracy}");
    assert_eq!(clean["rows"], computed, "{clean}");
    assert_eq!(clean["drifted"], json!([]), "{clean:#}");
    assert_eq!(clean["verdict"], "stable", "{clean:#}");
    let mut closest: Vec<(f64, String)> = clean["features"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["verdict"] == "stable")
        .map(|c| {
            let (v, t) = (
                c["value"].as_f64().unwrap(),
                c["threshold"].as_f64().unwrap(),
            );
            (
                v / t,
                format!("{} {v:.3} of {t:.3}", c["name"].as_str().unwrap()),
            )
        })
        .collect();
    closest.sort_by(|a, b| b.0.total_cmp(&a.0));
    eprintln!(
        "clean replay, closest to their thresholds: {:?}",
        &closest[..3]
    );
    for (name, verdict) in verdicts(&clean) {
        assert!(
            verdict == "stable" || verdict == "seasonal",
            "{name}: {verdict}"
        );
    }

    // The next hour, every quantity larger by two reference standard deviations of its logarithm.
    let detail = report(&s, "/api/v1/models/price/versions/2").await;
    let sigma = reference_std(&detail, "log_quantity");
    assert!(sigma > 0.1, "{sigma}");
    clock.advance(Duration::from_secs(3660));
    let shifted_rows = predict(
        &s,
        "/api/v1/predictions/batch",
        replay_csv(&fixture, (2.0 * sigma).exp()),
    )
    .await;
    let shifted = report(&s, monitoring).await;
    assert_eq!(shifted["rows"], shifted_rows);
    assert_eq!(shifted["drifted"], json!(["log_quantity"]), "{shifted:#}");
    assert_eq!(shifted["verdict"], "drift");
    let column = shifted["features"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "log_quantity")
        .unwrap();
    let moved = column["mean_shift_sigma"].as_f64().unwrap();
    let before = clean["features"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "log_quantity")
        .unwrap()["mean_shift_sigma"]
        .as_f64()
        .unwrap();
    assert!((moved - before - 2.0).abs() < 0.01, "{moved} vs {before}");
    assert!(column["psi"].as_f64().unwrap() > 1.0, "{column}");

    // The shifted hour ends: the drift rule fires, naming the feature; the clean hour before it fired
    // nothing, and the accuracy bounds held in both.
    clock.advance(Duration::from_secs(3660));
    let until = std::time::Instant::now() + Duration::from_secs(20);
    let fired = loop {
        let fired = events(&rules[0]).await;
        if !fired.is_empty() || std::time::Instant::now() > until {
            break fired;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(fired.len(), 1, "{fired:?}");
    let message = fired[0]["message"].as_str().unwrap();
    assert!(
        message.starts_with("price v2: log_quantity drifted (psi "),
        "{message}"
    );
    assert!(!message.contains("; "), "one feature only: {message}");
    assert!(events(&rules[1]).await.is_empty());
    // The drift goes on for another hour: no second event (it fires again only after it cleared).
    predict(
        &s,
        "/api/v1/predictions/batch",
        replay_csv(&fixture, (2.0 * sigma).exp()),
    )
    .await;
    clock.advance(Duration::from_secs(3660));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(events(&rules[0]).await.len(), 1);

    // The day window holds both hours; the comparison shows the active version.
    let day = report(&s, "/api/v1/models/price/versions/2/monitoring?window=1d").await;
    assert_eq!(day["rows"], computed + 2 * shifted_rows);
    let compared = report(&s, "/api/v1/models/price/monitoring?window=1d").await;
    assert_eq!(compared["versions"][0]["role"], "active");
    assert_eq!(compared["versions"][0]["version"], 2);
    let drifted = compared["versions"][0]["drifted"].as_array().unwrap();
    assert!(drifted.contains(&json!("log_quantity")), "{compared}");

    // The gauges follow within a flush period.
    let metrics = |s: &TestServer| {
        let r = s.client.get(s.url("/metrics"));
        async move { r.send().await.unwrap().text().await.unwrap() }
    };
    let until = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = metrics(&s).await;
        let gauge = text.lines().find(|l| {
            l.starts_with("mercator_feature_drift{")
                && l.contains("model=\"price\"")
                && l.contains("column=\"log_quantity\"")
        });
        if let Some(line) = gauge {
            let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
            if value > 1.0 {
                break;
            }
        }
        assert!(std::time::Instant::now() < until, "no drift gauge:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitoring_answers_in_the_envelope_and_only_to_the_platform_owner() {
    let s = TestServer::start().await;
    let get = |path: &str, client: &reqwest::Client| {
        let r = client.get(s.url(path));
        async move {
            let r = r.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let cases = [
        (
            "/api/v1/models/price/versions/2/monitoring?window=2h",
            400,
            "bad_request",
        ),
        (
            "/api/v1/models/price/versions/2/monitoring?windw=1h",
            400,
            "validation_error",
        ),
        (
            "/api/v1/models/price/versions/1/monitoring",
            404,
            "not_monitored",
        ),
        (
            "/api/v1/models/price/versions/9/monitoring",
            404,
            "version_not_found",
        ),
        ("/api/v1/models/nothing/monitoring", 404, "model_not_found"),
    ];
    for (path, status, code) in cases {
        let (got, body) = get(path, &s.client).await;
        assert_eq!(
            (got, body["error"]["code"].as_str()),
            (status, Some(code)),
            "{path}: {body}"
        );
    }
    let (status, body) = get("/api/v1/models/anomaly/versions/2/monitoring", &s.client).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["window"], "1h");
    // A tenant's admin reads the models, not the traffic of every organization.
    let tenant = s.organization("Tenant").await;
    let (status, body) = get("/api/v1/models/price/monitoring", &tenant).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{body}"
    );
    // Nor does it watch the model through a rule; the platform names a window the server keeps.
    let rule = |client: &reqwest::Client, condition: Value| {
        let r = client
            .post(s.url("/api/v1/alerts"))
            .json(&json!({"name": "drift", "condition": condition}));
        async move {
            let r = r.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let drift = json!({"type": "feature_drift", "model": "price"});
    let (status, body) = rule(&tenant, drift.clone()).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("platform organization"),
        "{body}"
    );
    let (status, body) = rule(
        &s.client,
        json!({"type": "feature_drift", "model": "price", "window": "2h"}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1h, 1d"),
        "{body}"
    );
    let (status, body) = rule(
        &s.client,
        json!({"type": "accuracy", "model": "price", "windows": 30}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = rule(&s.client, drift).await;
    assert_eq!(status, 201, "{body}");

    // Off, the routes say so.
    let off = TestServer::with(|c| c.monitor = None).await;
    let r = off
        .client
        .get(off.url("/api/v1/models/price/versions/2/monitoring"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_monitored", "{body}");
}

/// `rows` feature rows of the price model (27 values each) as a `?model=` CSV, spread over plausible ranges.
fn feature_rows(rows: usize, seed: u64) -> Vec<String> {
    let mut s = seed;
    let mut next = move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (s >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..rows)
        .map(|_| {
            (0..27)
                .map(|i| match i {
                    4 => format!("{}", 1 + (next() * 8.0) as u32),
                    5 => format!("{}", (next() * 11.0) as u32),
                    _ => format!("{:.4}", next() * 40.0),
                })
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_counts_merge_to_the_counts_of_the_combined_stream() {
    let db = PgDatabase::create().await;
    let clock = Arc::new(Clock::default());
    let start = |clock: Arc<Clock>| {
        let url = db.url.clone();
        TestServer::with(move |c| {
            c.database_url = Some(url);
            c.clock = clock;
            let m = c.monitor.as_mut().unwrap();
            m.bucket = Duration::from_secs(60);
            m.thresholds.min_rows = 100;
        })
    };
    let a = start(clock.clone()).await;
    let b = start(clock.clone()).await;
    let header = (0..27)
        .map(|i| format!("f{i}"))
        .collect::<Vec<_>>()
        .join(",");
    let rows = feature_rows(1200, 7);
    let csv = |part: &[String]| format!("{header}\n{}\n", part.join("\n"));
    let path = "/api/v1/predictions/batch?model=price";
    let monitoring = "/api/v1/models/price/versions/2/monitoring";
    clock.advance(Duration::from_secs(3660));

    // The stream split between the replicas, in pieces.
    for (i, part) in rows.chunks(100).enumerate() {
        let s = if i % 3 == 0 { &a } else { &b };
        assert_eq!(predict(s, path, csv(part)).await, part.len() as u64);
    }
    // Each report writes its replica's own counts first: B's, then A's, then B reads both.
    report(&b, monitoring).await;
    let from_a = report(&a, monitoring).await;
    let from_b = report(&b, monitoring).await;
    assert_eq!(from_a["rows"], 1200);
    assert_eq!(from_a["features"], from_b["features"]);
    assert_eq!(from_a["predictions"], from_b["predictions"]);

    // The same stream, an hour later, all to one replica, read from the other.
    clock.advance(Duration::from_secs(3660));
    assert_eq!(predict(&a, path, csv(&rows)).await, 1200);
    report(&a, monitoring).await;
    let whole = report(&b, monitoring).await;
    assert_eq!(whole["rows"], 1200);
    for side in ["features", "predictions"] {
        let (merged, one) = (
            from_a[side].as_array().unwrap(),
            whole[side].as_array().unwrap(),
        );
        assert_eq!(merged.len(), one.len());
        for (m, w) in merged.iter().zip(one) {
            assert_eq!(m["name"], w["name"]);
            assert_eq!(m["rows"], w["rows"]);
            assert_eq!(m["top_bins"], w["top_bins"], "{}", m["name"]);
            for metric in ["psi", "js", "live_mean", "mean_shift_sigma"] {
                let (x, y) = (m[metric].as_f64().unwrap(), w[metric].as_f64().unwrap());
                assert!(
                    (x - y).abs() <= 1e-9 * (1.0 + y.abs()),
                    "{} {metric}: {x} vs {y}",
                    m["name"]
                );
            }
        }
    }
    drop((a, b));
    drop(db);
}

/// A multipart upload of price version 2's files as the next version, with `profile` as its profile part.
async fn upload(s: &TestServer, profile: Vec<u8>) -> (u16, Value) {
    let dir = shipped_models().join("price/2");
    let mut form = reqwest::multipart::Form::new();
    for (part, file) in [
        ("model", "model.onnx"),
        ("manifest", "model.toml"),
        ("features", "features.toml"),
    ] {
        let bytes = std::fs::read(dir.join(file)).unwrap();
        form = form.part(part, reqwest::multipart::Part::bytes(bytes).file_name(file));
    }
    form = form.part(
        "profile",
        reqwest::multipart::Part::bytes(profile).file_name("profile.json"),
    );
    let r = s
        .client
        .post(s.url("/api/v1/models/price/versions"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uploaded_version_with_a_profile_is_monitored_and_a_profile_that_does_not_fit_is_refused(
) {
    let s = TestServer::start().await;
    let profile = std::fs::read(shipped_models().join("price/2/profile.json")).unwrap();

    // A column pointing past the input's 27 values.
    let mut wrong: Value = serde_json::from_slice(&profile).unwrap();
    wrong["columns"][3]["index"] = json!(27);
    let (status, body) = upload(&s, serde_json::to_vec(&wrong).unwrap()).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("element 27 of `features`"),
        "{body}"
    );
    let (status, body) = upload(&s, b"{\"rows\": 1}".to_vec()).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("validation_error")),
        "{body}"
    );

    let (status, body) = upload(&s, profile).await;
    assert_eq!(status, 201, "{body}");
    let version = body["version"].as_u64().unwrap();
    let golden: Value = serde_json::from_slice(
        &std::fs::read(shipped_models().join("../fixtures/golden/price-v2.json")).unwrap(),
    )
    .unwrap();
    let r = s
        .client
        .post(s.url(&format!("/v2/models/price/versions/{version}/infer")))
        .json(&json!({ "inputs": golden["inputs"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let path = format!("/api/v1/models/price/versions/{version}/monitoring");
    let report = report(&s, &path).await;
    assert_eq!(report["rows"], 8, "{report}");
    assert_eq!(report["verdict"], "insufficient_data");
    let detail = report_detail(&s, version).await;
    assert_eq!(detail["reference_profile"]["rows"], 34900);
}

async fn report_detail(s: &TestServer, version: u64) -> Value {
    report(s, &format!("/api/v1/models/price/versions/{version}")).await
}

/// The held-out period replayed in time order, a window of 500 requests (about eight days of prices) an
/// hour: the clean windows raise few drift verdicts (none on the quantity), and from the window where every
/// quantity grows by two reference standard deviations of its logarithm, `log_quantity` drifts in each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_windowed_replay_raises_few_false_alarms_and_a_shift_is_caught_in_its_first_window() {
    const ROWS: usize = 500;
    const SHIFT_FROM: usize = 10;
    let clock = Arc::new(Clock::default());
    let shared = clock.clone();
    let s = TestServer::with(move |c| {
        c.clock = shared;
        let m = c.monitor.as_mut().unwrap();
        m.bucket = Duration::from_secs(60);
        m.log_sample = 0.0;
    })
    .await;
    let fixture = {
        let _ingesting = INGEST.lock().await;
        ingest_fixture(&s, &s.client).await
    };
    let detail = report(&s, "/api/v1/models/price/versions/2").await;
    let scale = (2.0 * reference_std(&detail, "log_quantity")).exp();
    let rows = holdout();
    let (mut judged, mut false_alarms, mut caught) = (0, Vec::new(), Vec::new());
    for (w, window) in rows.chunks(ROWS).enumerate() {
        if window.len() < ROWS {
            break;
        }
        clock.advance(Duration::from_secs(3660));
        let shifted = w >= SHIFT_FROM;
        let mut csv = String::from("material_id,quantity,supplier_id,as_of,delivery_date\n");
        for (day, material, supplier, quantity, lead) in window {
            let q = if shifted { quantity * scale } else { *quantity };
            csv.push_str(&format!(
                "{},{q},{},{day},{}\n",
                fixture.materials[material],
                fixture.suppliers[supplier],
                *day + chrono::Duration::days(*lead)
            ));
        }
        assert_eq!(
            predict(&s, "/api/v1/predictions/batch", csv).await,
            ROWS as u64
        );
        let r = report(&s, "/api/v1/models/price/versions/2/monitoring").await;
        assert_eq!(r["rows"], ROWS as u64);
        for (name, verdict) in verdicts(&r) {
            if verdict == "seasonal" {
                continue;
            }
            if shifted {
                if name == "log_quantity" {
                    assert_eq!(verdict, "drift", "window {w}");
                    caught.push(w);
                }
            } else {
                judged += 1;
                if verdict == "drift" {
                    false_alarms.push((w, name));
                }
            }
        }
    }
    eprintln!("clean windows: {false_alarms:?} drift verdicts of {judged}; the shift caught in windows {caught:?}");
    assert_eq!(caught.first(), Some(&SHIFT_FROM));
    assert!(
        false_alarms.iter().all(|(_, name)| name != "log_quantity"),
        "{false_alarms:?}"
    );
    assert!(
        false_alarms.len() * 20 <= judged,
        "more than 5% of verdicts: {false_alarms:?}"
    );
}
