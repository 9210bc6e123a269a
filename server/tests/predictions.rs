//! Price predictions over a live server: the fixture history ingested through the real bulk API, the online
//! feature rows compared with the training frame `mercator features materialize` computes from the same file,
//! the served price with ONNX Runtime on that row, the shipped model's held-out quality, and every error case
//! across two organizations.

mod common;

use std::collections::HashMap;

use common::{client_with, ingest_fixture, repo_root, TestServer};
use mercator_features::polars::prelude::*;
use mercator_features::{materialize, FeatureSpec};
use reqwest::Client;
use serde_json::{json, Value};

/// POST, and the answer's `features_used` parsed exactly (serde_json's default float parsing may be one
/// ulp off; Rust's `str::parse` is correctly rounded).
async fn predict(s: &TestServer, body: &Value) -> (u16, Value, HashMap<String, f64>) {
    let r = s
        .client
        .post(s.url("/api/v1/predictions/price"))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    #[derive(serde::Deserialize)]
    struct Used<'a> {
        #[serde(borrow)]
        features_used: HashMap<String, &'a serde_json::value::RawValue>,
    }
    let exact = serde_json::from_str::<Used>(&text)
        .map(|u| {
            u.features_used
                .into_iter()
                .map(|(k, v)| (k, v.get().parse::<f64>().unwrap()))
                .collect()
        })
        .unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap(), exact)
}

async fn post(s: &TestServer, client: &Client, path: &str, body: &Value) -> (u16, Value) {
    let r = client.post(s.url(path)).json(body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

/// The feature spec of version 2 of `model`.
fn spec_of(model: &str) -> FeatureSpec {
    FeatureSpec::from_file(&repo_root().join(format!("models/{model}/2/features.toml"))).unwrap()
}

fn spec() -> FeatureSpec {
    spec_of("price")
}

/// The training frame of version 2 of `model`, materialised from the fixture. Polars drives its own
/// runtime: call it off the test's.
fn frame_of(model: &str) -> DataFrame {
    materialize::materialize(&spec_of(model), &repo_root().join("fixtures/prices.csv"))
        .unwrap()
        .frame
}

fn frame() -> DataFrame {
    frame_of("price")
}

fn manifest_of(model: &str) -> mercator_engine::Manifest {
    mercator_engine::Manifest::from_file(&repo_root().join(format!("models/{model}/2/model.toml")))
        .unwrap()
}

fn holdout_from(manifest: &mercator_engine::Manifest) -> chrono::NaiveDate {
    manifest.metrics["holdout_from"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// ONNX Runtime's outputs on feature rows, through V2 in chunks: one Vec per row.
async fn infer_rows(s: &TestServer, path: &str, rows: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let mut out = Vec::new();
    for chunk in rows.chunks(256) {
        let width = chunk[0].len();
        let data: Vec<f64> = chunk.iter().flatten().copied().collect();
        let infer = json!({"inputs": [{"name": "features", "datatype": "FP32",
            "shape": [chunk.len(), width], "data": data}]});
        let (status, body) = post(s, &s.client, path, &infer).await;
        assert_eq!(status, 200, "{body}");
        let o = &body["outputs"][0];
        let per_row = o["shape"][1].as_u64().unwrap() as usize;
        let values: Vec<f64> = o["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        out.extend(values.chunks(per_row).map(<[f64]>::to_vec));
    }
    out
}

fn strings(frame: &DataFrame, name: &str) -> Vec<String> {
    frame
        .column(name)
        .unwrap()
        .str()
        .unwrap()
        .into_iter()
        .map(|v| v.unwrap().to_string())
        .collect()
}

fn floats(frame: &DataFrame, name: &str) -> Vec<f64> {
    let c = frame
        .column(name)
        .unwrap()
        .cast(&DataType::Float64)
        .unwrap();
    c.f64().unwrap().into_iter().map(|v| v.unwrap()).collect()
}

fn dates(frame: &DataFrame) -> Vec<chrono::NaiveDate> {
    let days = frame
        .column("observed_on")
        .unwrap()
        .cast(&DataType::Int32)
        .unwrap();
    days.i32()
        .unwrap()
        .into_iter()
        .map(|d| mercator_features::history::date_of(d.unwrap()))
        .collect()
}

/// For a sample of rows of the training frame, the served request's feature row equals the training row
/// (integers exactly, floats within 1e-9 relative; the count of values not bit-identical is printed), and the
/// served price equals ONNX Runtime's output on the training row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_rows_equal_training_rows_and_the_model_beats_the_baseline() {
    let s = TestServer::start().await;
    let fixture = ingest_fixture(&s, &s.client).await;
    // Polars drives its own runtime: off this one.
    let frame = tokio::task::spawn_blocking(frame).await.unwrap();
    let spec = spec();
    let names = spec.names();
    let (material, supplier, day) = (
        strings(&frame, "material_code"),
        strings(&frame, "supplier_code"),
        dates(&frame),
    );
    let columns: Vec<Vec<f64>> = names.iter().map(|n| floats(&frame, n)).collect();
    let lead = {
        let i = names.iter().position(|n| n == "lead_days").unwrap();
        columns[i].clone()
    };
    let quantity_col = names.iter().position(|n| n == "log_quantity").unwrap();

    // A spread sample: every 997th row (early, short-history rows included by the order of the frame).
    let sample: Vec<usize> = (0..frame.height()).step_by(997).collect();
    assert!(sample.len() >= 40, "{}", sample.len());
    let mut not_identical = 0;
    for &i in &sample {
        let request = json!({
            "material_id": fixture.materials[&material[i]],
            "supplier_id": fixture.suppliers[&supplier[i]],
            "quantity": columns[quantity_col][i].exp(),
            "as_of": day[i],
            "delivery_date": day[i] + chrono::Duration::days(lead[i] as i64),
        });
        let (status, body, used) = predict(&s, &request).await;
        assert_eq!(status, 200, "{request} -> {body}");
        assert_eq!(body["model"], json!({"name": "price", "version": 2}));
        let mut row = Vec::new();
        for (j, (name, feature)) in names.iter().zip(&spec.features).enumerate() {
            let served = used[name];
            let trained = columns[j][i];
            // log_quantity goes through exp and back: the one feature whose input the test reconstructs.
            if name == "log_quantity" {
                assert!(
                    (served - trained).abs() <= 1e-12 * trained.abs().max(1.0),
                    "{name}"
                );
            } else if feature.is_integer() {
                assert_eq!(served, trained, "row {i} {name}");
            } else {
                assert!(
                    (served - trained).abs() <= 1e-9 * served.abs().max(trained.abs()).max(1.0),
                    "row {i} {name}: served {served}, trained {trained}"
                );
            }
            if served.to_bits() != trained.to_bits() && name != "log_quantity" {
                not_identical += 1;
                eprintln!(
                    "not bit-identical: row {i} {name}: served {served:e}, trained {trained:e}"
                );
            }
            row.push(trained);
        }
        // The served price is ONNX Runtime's answer on the training row.
        let infer = json!({"inputs": [{"name": "features", "datatype": "FP32",
            "shape": [1, row.len()], "data": row}]});
        let (status, onnx) = post(&s, &s.client, "/v2/models/price/versions/2/infer", &infer).await;
        assert_eq!(status, 200, "{onnx}");
        let expected = onnx["outputs"][0]["data"][0].as_f64().unwrap();
        let served = body["predicted_price"].as_f64().unwrap();
        assert!(
            (served - expected).abs() <= 1e-6 * expected,
            "served {served}, ONNX on the training row {expected}"
        );
        let interval = &body["prediction_interval"];
        let (lower, upper) = (
            interval["lower"].as_f64().unwrap(),
            interval["upper"].as_f64().unwrap(),
        );
        assert!(
            lower < served && served < upper && interval["level"] == 0.8,
            "{body}"
        );
    }
    println!(
        "parity: {} rows x {} features; values not bit-identical: {not_identical}",
        sample.len(),
        names.len()
    );
    assert_eq!(
        not_identical, 0,
        "the same code on the same tiles gives the same bits"
    );

    // Held-out quality of the shipped model, recomputed here through the server: the last 120 days of clean
    // observations, in batches through V2.
    let manifest = manifest_of("price");
    let from = holdout_from(&manifest);
    let anomaly = floats(&frame, "is_anomaly");
    let label = floats(&frame, "unit_price");
    let holdout: Vec<usize> = (0..frame.height())
        .filter(|&i| day[i] >= from && anomaly[i] == 0.0)
        .collect();
    let cal = manifest.interval.as_ref().unwrap();
    let q80 = cal.quantiles[cal.levels.iter().position(|l| *l == 0.8).unwrap()];
    let col = |n: &str| names.iter().position(|x| x == n).unwrap();
    let (std28, mean28, lag1) = (col("roll_std_28"), col("roll_mean_28"), col("lag_1"));
    let (mut ape, mut naive_ape, mut covered) = (0.0, 0.0, 0usize);
    for chunk in holdout.chunks(256) {
        let data: Vec<f64> = chunk
            .iter()
            .flat_map(|&i| columns.iter().map(move |c| c[i]))
            .collect();
        let infer = json!({"inputs": [{"name": "features", "datatype": "FP32",
            "shape": [chunk.len(), names.len()], "data": data}]});
        let (status, out) = post(&s, &s.client, "/v2/models/price/versions/2/infer", &infer).await;
        assert_eq!(status, 200);
        for (k, &i) in chunk.iter().enumerate() {
            let predicted = out["outputs"][0]["data"][k].as_f64().unwrap();
            let actual = label[i];
            ape += (predicted - actual).abs() / actual;
            naive_ape += (columns[lag1][i] - actual).abs() / actual;
            let half = q80 * (columns[std28][i] / columns[mean28][i] + cal.scale_floor);
            if actual >= predicted * (-half).exp() && actual <= predicted * half.exp() {
                covered += 1;
            }
        }
    }
    let n = holdout.len() as f64;
    let (mape, naive, coverage) = (ape / n, naive_ape / n, covered as f64 / n);
    println!(
        "held out: {} rows, MAPE {mape:.4} vs naive last price {naive:.4}, 80% interval covers {coverage:.4}",
        holdout.len()
    );
    assert!(mape < 0.5 * naive, "MAPE {mape} against the naive {naive}");
    assert!((0.75..=0.85).contains(&coverage), "coverage {coverage}");
}

/// No silent guesses: each case is a 404 or 422 that names what is wrong, and one organization never
/// reaches another's materials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predictions_refuse_what_they_cannot_answer_honestly() {
    let data = tempfile::tempdir().unwrap();
    let start = || {
        let data = data.path().to_path_buf();
        TestServer::with(move |c| c.data_dir = data)
    };
    let mut s = start().await;
    let a = ingest_fixture(&s, &s.client).await;
    let (status, org) = post(
        &s,
        &s.client,
        "/api/v1/organizations",
        &json!({"name": "B"}),
    )
    .await;
    assert_eq!(status, 201);
    let b_client = client_with(org["api_key"]["secret"].as_str().unwrap());
    let (_, b_material) = post(
        &s,
        &b_client,
        "/api/v1/materials",
        &json!({"code": "B-1", "name": "B",
        "category": "steel", "unit": "kg", "specifications": {}}),
    )
    .await;
    let b_material = b_material["id"].as_str().unwrap().to_string();
    let alu = a.materials["ALU-001"].clone();
    let ok = json!({"material_id": alu, "quantity": 500.0, "as_of": "2025-06-02"});
    let (status, body) = post(&s, &s.client, "/api/v1/predictions/price", &ok).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["confidence_score"].as_f64().unwrap() > 0.0);

    let with = |patch: Value| {
        let mut r = ok.clone();
        for (k, v) in patch.as_object().unwrap() {
            r[k] = v.clone();
        }
        r
    };
    for (client, request, status_want, code_want, says) in [
        (
            &s.client,
            with(json!({"material_id": "nope"})),
            404,
            "not_found",
            "material",
        ),
        (
            &s.client,
            with(json!({"material_id": b_material})),
            404,
            "not_found",
            "material",
        ),
        (&b_client, ok.clone(), 404, "not_found", "material"),
        (
            &s.client,
            with(json!({"supplier_id": "nope"})),
            404,
            "not_found",
            "supplier",
        ),
        (
            &s.client,
            with(json!({"quantity": 0.0})),
            422,
            "invalid_quantity",
            "quantity",
        ),
        (
            &s.client,
            with(json!({"quantity": -3.0})),
            422,
            "invalid_quantity",
            "quantity",
        ),
        (
            &s.client,
            with(json!({"delivery_date": "2025-09-01"})),
            422,
            "beyond_horizon",
            "60",
        ),
        (
            &s.client,
            with(json!({"delivery_date": "2025-05-01"})),
            422,
            "beyond_horizon",
            "-32",
        ),
        (
            &s.client,
            with(json!({"as_of": "2024-01-10"})),
            422,
            "insufficient_history",
            "history",
        ),
        (
            &s.client,
            with(json!({"as_of": "2027-01-01"})),
            422,
            "insufficient_history",
            "history",
        ),
        (
            &b_client,
            json!({"material_id": b_material, "quantity": 1.0}),
            422,
            "insufficient_history",
            "history",
        ),
        (
            &s.client,
            with(json!({"interval_level": 0.33})),
            400,
            "validation_error",
            "0.8",
        ),
        (
            &s.client,
            with(json!({"colour": "red"})),
            400,
            "validation_error",
            "colour",
        ),
    ] {
        let (status, body) = post(&s, client, "/api/v1/predictions/price", &request).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (status_want, Some(code_want)),
            "{request} -> {body}"
        );
        assert!(
            body["error"]["message"].as_str().unwrap().contains(says),
            "{body}"
        );
    }

    // A correction moves the history: deleting the material's prices of the last week before as-of changes
    // lag 1, and nothing leaks in from on or after as-of.
    let (_, listed) = {
        let r = s
            .client
            .get(s.url(&format!(
                "/api/v1/prices?material_id={alu}&from=2025-05-25T00:00:00Z&to=2025-06-02T00:00:00Z&limit=100"
            )))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    let items = listed["items"].as_array().unwrap();
    assert!(!items.is_empty(), "{listed}");
    let lag1 = |body: &Value| body["features_used"]["lag_1"].as_f64().unwrap();
    let before = lag1(&body);
    for item in items {
        let r = s
            .client
            .delete(s.url(&format!("/api/v1/prices/{}", item["id"].as_str().unwrap())))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    }
    let (_, after) = post(&s, &s.client, "/api/v1/predictions/price", &ok).await;
    assert_ne!(
        lag1(&after),
        before,
        "the deleted day no longer feeds lag 1"
    );
    // Prices on or after as-of never change the row.
    let later = json!({"time": "2025-06-02T08:00:00Z", "material_id": alu, "price": 9999.0,
                       "currency": "EUR", "price_type": "quote"});
    assert_eq!(post(&s, &s.client, "/api/v1/prices", &later).await.0, 201);
    let (_, again) = post(&s, &s.client, "/api/v1/predictions/price", &ok).await;
    assert_eq!(again["features_used"], after["features_used"]);

    // A restart rebuilds the history from the store: the same row, the same price.
    s.stop().await.unwrap();
    let s = start().await;
    let (status, restarted) = post(&s, &s.client, "/api/v1/predictions/price", &ok).await;
    assert_eq!(status, 200, "{restarted}");
    assert_eq!(
        (&restarted["features_used"], &restarted["predicted_price"]),
        (&after["features_used"], &after["predicted_price"])
    );
}

/// The trend is the least-squares line through the daily mean prices of the window before as-of: checked
/// against the closed form computed here from the fixture file; the direction follows the stated rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trends_are_the_line_through_the_daily_means() {
    let s = TestServer::start().await;
    let fixture = ingest_fixture(&s, &s.client).await;
    let text = std::fs::read_to_string(repo_root().join("fixtures/prices.csv")).unwrap();
    let as_of: chrono::NaiveDate = "2025-06-02".parse().unwrap();
    for (code, window) in [("ALU-001", 90), ("COP-002", 30), ("ELE-003", 365)] {
        // Daily means of the window, by hand.
        let from = as_of - chrono::Duration::days(window);
        let mut days: std::collections::BTreeMap<chrono::NaiveDate, (f64, f64)> =
            Default::default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split(',').collect();
            let d: chrono::NaiveDate = f[0].parse().unwrap();
            if f[1] == code && d >= from && d < as_of {
                let e = days.entry(d).or_default();
                // Prices are kept in fixed point, 1/10000 of the currency unit.
                e.0 += (f[8].parse::<f64>().unwrap() * 10_000.0).round();
                e.1 += 1.0;
            }
        }
        let points: Vec<(f64, f64)> = days
            .iter()
            .map(|(d, (sum, n))| ((*d - from).num_days() as f64, sum / n / 10_000.0))
            .collect();
        let n = points.len() as f64;
        let (mx, my) = (
            points.iter().map(|p| p.0).sum::<f64>() / n,
            points.iter().map(|p| p.1).sum::<f64>() / n,
        );
        let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
        let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
        let slope = sxy / sxx;
        let request =
            json!({"material_id": fixture.materials[code], "window_days": window, "as_of": as_of});
        let (status, body) = post(&s, &s.client, "/api/v1/analytics/trends", &request).await;
        assert_eq!(status, 200, "{body}");
        let got = body["slope_per_day"].as_f64().unwrap();
        assert!(
            (got - slope).abs() <= 1e-9 * slope.abs().max(1e-6),
            "{code}: {got} vs {slope}"
        );
        assert_eq!(body["points"], points.len());
        let (pct, r2) = (
            body["pct_change"].as_f64().unwrap(),
            body["r2"].as_f64().unwrap(),
        );
        let expected = if pct.abs() < 0.02 || r2 < 0.3 {
            "stable"
        } else if slope > 0.0 {
            "rising"
        } else {
            "falling"
        };
        assert_eq!(body["direction"], expected, "{body}");
        println!("trend {code} {window} days: {body}");
    }
    let alu = &fixture.materials["ALU-001"];
    for (request, status_want, code_want) in [
        (
            json!({"material_id": alu, "window_days": 3}),
            400,
            "validation_error",
        ),
        (
            json!({"material_id": "nope", "window_days": 30}),
            404,
            "not_found",
        ),
        (
            json!({"material_id": alu, "window_days": 30, "as_of": "2024-01-02"}),
            422,
            "insufficient_history",
        ),
    ] {
        let (status, body) = post(&s, &s.client, "/api/v1/analytics/trends", &request).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (status_want, Some(code_want)),
            "{body}"
        );
    }
}

/// A clean fixture price: its material, supplier, day and price text.
type PriceKey = (String, String, chrono::NaiveDate, String);

/// Every price the fixture ingested was scored at ingest against the history before its day: the score the
/// anomalies endpoint gives for the held-out period equals ONNX Runtime on the materialised training row,
/// the stored score equals it, and the flags find the injected anomalies at the rate the issue asks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prices_are_scored_like_training_rows_and_injected_anomalies_are_found() {
    let s = TestServer::with(|c| c.max_bulk_rows = 50_000).await;
    let fixture = ingest_fixture(&s, &s.client).await;
    let frame = tokio::task::spawn_blocking(|| frame_of("anomaly"))
        .await
        .unwrap();
    let spec = spec_of("anomaly");
    let manifest = manifest_of("anomaly");
    let from = holdout_from(&manifest);
    let supplier_code: HashMap<&str, &str> = fixture
        .suppliers
        .iter()
        .map(|(code, id)| (id.as_str(), code.as_str()))
        .collect();
    let key = |material: &str, supplier: &str, day: chrono::NaiveDate, price: f64| -> PriceKey {
        (material.into(), supplier.into(), day, format!("{price}"))
    };

    // Stored mode: every material's observations of the held-out period.
    let mut judged: HashMap<PriceKey, Value> = HashMap::new();
    let mut codes: Vec<&String> = fixture.materials.keys().collect();
    codes.sort();
    for code in codes {
        let request =
            json!({"material_id": fixture.materials[code], "from": from, "to": "2026-01-01"});
        let (status, body) = post(&s, &s.client, "/api/v1/analytics/anomalies", &request).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["model"], json!({"name": "anomaly", "version": 2}));
        for j in body["results"].as_array().unwrap() {
            let day: chrono::NaiveDate = j["observed_on"].as_str().unwrap().parse().unwrap();
            let supplier = supplier_code[j["supplier_id"].as_str().unwrap()];
            judged.insert(
                key(code, supplier, day, j["price"].as_f64().unwrap()),
                j.clone(),
            );
        }
    }

    // The training frame's held-out rows, scored by ONNX Runtime through V2.
    let names = spec.names();
    let columns: Vec<Vec<f64>> = names.iter().map(|n| floats(&frame, n)).collect();
    let (material, supplier, day, price, label) = (
        strings(&frame, "material_code"),
        strings(&frame, "supplier_code"),
        dates(&frame),
        floats(&frame, "unit_price"),
        floats(&frame, "is_anomaly"),
    );
    let holdout: Vec<usize> = (0..frame.height()).filter(|&i| day[i] >= from).collect();
    let rows: Vec<Vec<f64>> = holdout
        .iter()
        .map(|&i| columns.iter().map(|c| c[i]).collect())
        .collect();
    let onnx = infer_rows(&s, "/v2/models/anomaly/versions/2/infer", &rows).await;
    let t = manifest.anomaly.as_ref().unwrap();
    let (mut tp, mut fp, mut positives, mut negatives) = (0, 0, 0, 0);
    for (k, &i) in holdout.iter().enumerate() {
        let j = &judged[&key(&material[i], &supplier[i], day[i], price[i])];
        let score = j["score"].as_f64().unwrap();
        assert!(
            (score - onnx[k][0]).abs() <= 1e-6,
            "row {i}: served {score}, ONNX on the training row {}",
            onnx[k][0]
        );
        let flagged = j["is_anomaly"].as_bool().unwrap();
        assert_eq!(flagged, score >= t.low, "{j}");
        if label[i] == 1.0 {
            positives += 1;
            tp += flagged as usize;
        } else {
            negatives += 1;
            fp += flagged as usize;
        }
    }
    let (recall, fpr) = (tp as f64 / positives as f64, fp as f64 / negatives as f64);
    println!(
        "held out: {} prices, {positives} injected anomalies: recall {recall:.4}, false positives {fpr:.4} ({fp})",
        holdout.len()
    );
    assert!(
        recall >= 0.8 && fpr <= 0.05,
        "recall {recall}, false-positive rate {fpr}"
    );

    // The score stored at ingest is the same, and a decimal slip is flagged high with its reasons.
    let slip = holdout
        .iter()
        .copied()
        .find(|&i| label[i] == 1.0 && columns[0][i].abs() > 1.5)
        .expect("a decimal slip in the held-out period");
    let j = &judged[&key(&material[slip], &supplier[slip], day[slip], price[slip])];
    let r = s
        .client
        .get(s.url(&format!(
            "/api/v1/prices/{}",
            j["price_id"].as_str().unwrap()
        )))
        .send()
        .await
        .unwrap();
    let stored: Value = r.json().await.unwrap();
    assert_eq!(stored["anomaly"]["score"], j["score"], "{stored}");
    assert_eq!(stored["anomaly"]["model"], "anomaly:2");
    assert_eq!(
        (&j["severity"], &stored["anomaly"]["severity"]),
        (&json!("high"), &json!("high"))
    );
    // A tenfold slip is ~90% off (or 900%) every reference: the 28-day mean among the reasons, in words.
    let reasons = j["reasons"].as_array().unwrap();
    let mean28 = reasons
        .iter()
        .find(|r| r["feature"] == "log_price_to_mean_28")
        .unwrap_or_else(|| panic!("{j}"));
    let message = mean28["message"].as_str().unwrap();
    assert!(
        message.contains("the 28-day mean")
            && (message.contains("% above") || message.contains("% below")),
        "{j}"
    );

    // Observations in the body are judged as stored ones are, and not stored.
    let normal = holdout
        .iter()
        .copied()
        .find(|&i| {
            label[i] == 0.0
                && !judged[&key(&material[i], &supplier[i], day[i], price[i])]["is_anomaly"]
                    .as_bool()
                    .unwrap()
        })
        .unwrap();
    let (m_id, s_id) = (
        &fixture.materials[&material[normal]],
        &fixture.suppliers[&supplier[normal]],
    );
    let body = json!({"material_id": m_id, "observations": [
        {"supplier_id": s_id, "price": price[normal], "observed_on": day[normal]},
        {"supplier_id": s_id, "price": price[normal] * 10.0, "observed_on": day[normal]},
    ]});
    let (status, answer) = post(&s, &s.client, "/api/v1/analytics/anomalies", &body).await;
    assert_eq!(status, 200, "{answer}");
    let results = answer["results"].as_array().unwrap();
    assert_eq!(
        results[0]["score"],
        judged[&key(
            &material[normal],
            &supplier[normal],
            day[normal],
            price[normal]
        )]["score"]
    );
    assert_eq!(results[0]["is_anomaly"], false);
    assert_eq!(results[1]["severity"], "high", "{answer}");
    assert!(results[1]["price_id"].is_null());

    // A price ingested now is scored as it lands; a correction rescores it.
    let new = json!({"time": format!("{}T09:00:00Z", day[normal]), "material_id": m_id,
                     "supplier_id": s_id, "price": price[normal] * 10.0, "currency": "EUR",
                     "price_type": "quote"});
    let (status, created) = post(&s, &s.client, "/api/v1/prices", &new).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(
        (
            &created["anomaly"]["is_anomaly"],
            &created["anomaly"]["severity"]
        ),
        (&json!(true), &json!("high")),
        "{created}"
    );
    let r = s
        .client
        .patch(s.url(&format!(
            "/api/v1/prices/{}",
            created["id"].as_str().unwrap()
        )))
        .json(&json!({"price": price[normal]}))
        .send()
        .await
        .unwrap();
    let corrected: Value = r.json().await.unwrap();
    assert_eq!(corrected["anomaly"]["is_anomaly"], false, "{corrected}");

    // Refusals, and a second organization that reaches nothing of the first.
    let (status, org) = post(
        &s,
        &s.client,
        "/api/v1/organizations",
        &json!({"name": "B"}),
    )
    .await;
    assert_eq!(status, 201);
    let b_client = client_with(org["api_key"]["secret"].as_str().unwrap());
    let too_many: Vec<Value> = (0..50_001).map(|_| json!({"price": 1.0})).collect();
    for (client, request, status_want, code_want) in [
        (&b_client, json!({"material_id": m_id}), 404, "not_found"),
        (
            &b_client,
            json!({"material_id": m_id, "observations": [{"price": 1.0}]}),
            404,
            "not_found",
        ),
        (
            &s.client,
            json!({"from": "2025-01-01"}),
            400,
            "validation_error",
        ),
        (
            &s.client,
            json!({"material_id": m_id, "from": "2025-01-01", "observations": []}),
            400,
            "validation_error",
        ),
        (
            &s.client,
            json!({"material_id": m_id, "from": "yesterday"}),
            400,
            "validation_error",
        ),
        (
            &s.client,
            json!({"material_id": m_id, "observations": [{"price": -2.0}]}),
            422,
            "invalid_price",
        ),
        (
            &s.client,
            json!({"material_id": m_id, "observations": too_many}),
            413,
            "too_many_rows",
        ),
    ] {
        let (status, body) = post(&s, client, "/api/v1/analytics/anomalies", &request).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (status_want, Some(code_want)),
            "{body}"
        );
    }
    // Too little history before the day: no score, and the reason.
    let (status, body) = post(&s, &s.client, "/api/v1/analytics/anomalies",
        &json!({"material_id": m_id, "observations": [{"price": 1.0, "observed_on": "2024-01-03"}]})).await;
    assert_eq!(status, 200);
    assert!(body["results"][0]["score"].is_null());
    assert!(
        body["results"][0]["error"]
            .as_str()
            .unwrap()
            .contains("history"),
        "{body}"
    );
}

/// The forecast is the model's output on the training row of its as-of day, day by day; over the held-out
/// period it beats the last price, and its 80% intervals cover about 80% of the daily means.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forecasts_follow_the_model_and_beat_the_last_price() {
    let s = TestServer::start().await;
    let fixture = ingest_fixture(&s, &s.client).await;
    let frame = tokio::task::spawn_blocking(|| frame_of("forecast"))
        .await
        .unwrap();
    let spec = spec_of("forecast");
    let manifest = manifest_of("forecast");
    let from = holdout_from(&manifest);
    let horizon = manifest.outputs[0].shape[1] as usize;

    // The clean daily means of the fixture: the targets.
    let text = std::fs::read_to_string(repo_root().join("fixtures/prices.csv")).unwrap();
    let mut daily: HashMap<(String, chrono::NaiveDate), (f64, f64)> = HashMap::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        if f[10] == "0" {
            let e = daily
                .entry((f[1].to_string(), f[0].parse().unwrap()))
                .or_default();
            e.0 += f[8].parse::<f64>().unwrap();
            e.1 += 1.0;
        }
    }
    let names = spec.names();
    let columns: Vec<Vec<f64>> = names.iter().map(|n| floats(&frame, n)).collect();
    let (material, day) = (strings(&frame, "material_code"), dates(&frame));
    let lag1 = names.iter().position(|n| n == "lag_1").unwrap();
    // One as-of day in seven per material in the held-out period (a day the material has a row).
    let mut seen = std::collections::HashSet::new();
    let sample: Vec<usize> = (0..frame.height())
        .filter(|&i| day[i] >= from && (day[i] - from).num_days() % 7 == 0)
        .filter(|&i| seen.insert((material[i].clone(), day[i])))
        .collect();
    assert!(sample.len() > 100, "{}", sample.len());
    let rows: Vec<Vec<f64>> = sample
        .iter()
        .map(|&i| columns.iter().map(|c| c[i]).collect())
        .collect();
    let onnx = infer_rows(&s, "/v2/models/forecast/versions/2/infer", &rows).await;
    let (mut ape, mut naive_ape, mut covered, mut n) = (0.0, 0.0, 0usize, 0usize);
    for (k, &i) in sample.iter().enumerate() {
        let request = json!({"material_id": fixture.materials[&material[i]],
                             "horizon_days": horizon, "as_of": day[i]});
        let (status, body) = post(&s, &s.client, "/api/v1/analytics/forecast", &request).await;
        assert_eq!(status, 200, "{body}");
        let points = body["points"].as_array().unwrap();
        assert_eq!(points.len(), horizon);
        for (h, p) in points.iter().enumerate() {
            let date = day[i] + chrono::Duration::days(h as i64);
            assert_eq!(p["date"], json!(date));
            let (value, lower, upper) = (
                p["value"].as_f64().unwrap(),
                p["lower"].as_f64().unwrap(),
                p["upper"].as_f64().unwrap(),
            );
            assert!(
                (value - onnx[k][h]).abs() <= 1e-6 * value,
                "{}: day {h}: served {value}, ONNX on the training row {}",
                material[i],
                onnx[k][h]
            );
            assert!(lower < value && value < upper, "{p}");
            if let Some((sum, count)) = daily.get(&(material[i].clone(), date)) {
                let actual = sum / count;
                ape += (value - actual).abs() / actual;
                naive_ape += (columns[lag1][i] - actual).abs() / actual;
                covered += (lower <= actual && actual <= upper) as usize;
                n += 1;
            }
        }
    }
    let (mape, naive, coverage) = (
        ape / n as f64,
        naive_ape / n as f64,
        covered as f64 / n as f64,
    );
    println!(
        "forecast held out: {} forecasts, {n} daily means: MAPE {mape:.4} vs last price {naive:.4}, 80% interval covers {coverage:.4}",
        sample.len()
    );
    assert!(mape < naive, "MAPE {mape} against the last price {naive}");
    assert!((0.72..=0.88).contains(&coverage), "coverage {coverage}");

    // A supplier's forecast is the market's scaled by its premium.
    let alu = &fixture.materials["ALU-001"];
    let market = json!({"material_id": alu, "horizon_days": 7, "as_of": "2025-10-01"});
    let (_, m) = post(&s, &s.client, "/api/v1/analytics/forecast", &market).await;
    let mut with_supplier = market.clone();
    let mut premiums = Vec::new();
    for id in fixture.suppliers.values() {
        with_supplier["supplier_id"] = json!(id);
        let (status, b) = post(&s, &s.client, "/api/v1/analytics/forecast", &with_supplier).await;
        assert_eq!(status, 200, "{b}");
        let p = b["supplier_premium"].as_f64().unwrap();
        let (v, base) = (
            b["points"][3]["value"].as_f64().unwrap(),
            m["points"][3]["value"].as_f64().unwrap(),
        );
        assert!((v - base * (1.0 + p)).abs() <= 1e-9 * v, "{b}");
        premiums.push(p);
    }
    assert!(
        premiums.iter().any(|p| *p != 0.0),
        "the suppliers carrying ALU-001 have a premium: {premiums:?}"
    );

    let (status, org) = post(
        &s,
        &s.client,
        "/api/v1/organizations",
        &json!({"name": "B"}),
    )
    .await;
    assert_eq!(status, 201);
    let b_client = client_with(org["api_key"]["secret"].as_str().unwrap());
    for (client, request, status_want, code_want) in [
        (
            &s.client,
            json!({"material_id": alu, "horizon_days": 0, "as_of": "2025-10-01"}),
            422,
            "beyond_horizon",
        ),
        (
            &s.client,
            json!({"material_id": alu, "horizon_days": horizon + 1, "as_of": "2025-10-01"}),
            422,
            "beyond_horizon",
        ),
        (
            &s.client,
            json!({"material_id": alu, "horizon_days": 7, "as_of": "2024-01-05"}),
            422,
            "insufficient_history",
        ),
        (
            &s.client,
            json!({"material_id": "nope", "horizon_days": 7}),
            404,
            "not_found",
        ),
        (
            &s.client,
            json!({"material_id": alu, "horizon_days": 7, "supplier_id": "nope"}),
            404,
            "not_found",
        ),
        (
            &s.client,
            json!({"material_id": alu, "horizon_days": 7, "interval_level": 0.33, "as_of": "2025-10-01"}),
            400,
            "validation_error",
        ),
        (
            &b_client,
            json!({"material_id": alu, "horizon_days": 7}),
            404,
            "not_found",
        ),
    ] {
        let (status, body) = post(&s, client, "/api/v1/analytics/forecast", &request).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (status_want, Some(code_want)),
            "{request} -> {body}"
        );
    }
}

/// Scoring on ingest on PostgreSQL, as on SQLite: a steady month of prices, then a tenfold one flagged high;
/// and with --score-on-ingest false, prices land unscored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_scores_on_postgres_and_can_be_turned_off() {
    for (postgres, scoring) in [(true, true), (false, false)] {
        let database = if postgres {
            Some(common::PgDatabase::create().await)
        } else {
            None
        };
        let url = database.as_ref().map(|d| d.url.clone());
        let mut s = TestServer::with(move |c| {
            c.database_url = url;
            c.score_on_ingest = scoring;
        })
        .await;
        s.database = database;
        let (status, m) = post(&s, &s.client, "/api/v1/materials", &json!({"code": "STE-1",
            "name": "Steel", "category": "steel", "unit": "kg", "list_price": 2.4, "specifications": {}}))
        .await;
        assert_eq!(status, 201, "{m}");
        let material = m["id"].as_str().unwrap();
        let month: Vec<Value> = (1..=30)
            .map(|d| json!({"time": format!("2025-03-{d:02}"), "material_id": material,
                            "price": 2.0 + 0.01 * (d % 5) as f64, "currency": "EUR", "price_type": "quote"}))
            .collect();
        let (status, body) = post(&s, &s.client, "/api/v1/prices/bulk", &json!(month)).await;
        assert_eq!(status, 201, "{body}");
        let slip = json!({"time": "2025-03-31T10:00:00Z", "material_id": material, "price": 20.0,
                          "currency": "EUR", "price_type": "quote"});
        let (status, price) = post(&s, &s.client, "/api/v1/prices", &slip).await;
        assert_eq!(status, 201, "{price}");
        if scoring {
            assert_eq!(price["anomaly"]["severity"], "high", "{price}");
            // Stored: read back from the database.
            let r = s
                .client
                .get(s.url(&format!("/api/v1/prices/{}", price["id"].as_str().unwrap())))
                .send()
                .await
                .unwrap();
            let stored: Value = r.json().await.unwrap();
            assert_eq!(stored["anomaly"], price["anomaly"]);
        } else {
            assert!(price["anomaly"].is_null(), "{price}");
        }
        s.stop().await.unwrap();
    }
}

/// A batch answers every row in input order: the same prediction as the single endpoint for rows it can
/// answer, the row's own error for the others; malformed files and oversized batches are refused whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_answer_each_row_in_order_like_the_single_endpoint() {
    let s = TestServer::with(|c| {
        c.batch_inline_max_rows = 200;
        c.batch.max_rows = 1000;
    })
    .await;
    let fixture = ingest_fixture(&s, &s.client).await;
    let frame = tokio::task::spawn_blocking(frame).await.unwrap();
    let names = spec().names();
    let (material, supplier, day) = (
        strings(&frame, "material_code"),
        strings(&frame, "supplier_code"),
        dates(&frame),
    );
    let col = |n: &str| floats(&frame, &names[names.iter().position(|x| x == n).unwrap()]);
    let (log_q, lead) = (col("log_quantity"), col("lead_days"));
    let mut csv = String::from("material_id,quantity,supplier_id,delivery_date,as_of\n");
    let mut singles = Vec::new();
    for i in (1000..frame.height()).step_by(331).take(60) {
        let request = json!({
            "material_id": fixture.materials[&material[i]],
            "supplier_id": fixture.suppliers[&supplier[i]],
            "quantity": log_q[i].exp().round(),
            "as_of": day[i],
            "delivery_date": day[i] + chrono::Duration::days(lead[i] as i64),
        });
        csv.push_str(&format!(
            "{},{},{},{},{}\n",
            request["material_id"].as_str().unwrap(),
            request["quantity"],
            request["supplier_id"].as_str().unwrap(),
            request["delivery_date"].as_str().unwrap(),
            request["as_of"].as_str().unwrap()
        ));
        singles.push(Some(request));
    }
    let alu = &fixture.materials["ALU-001"];
    // Rows that cannot be answered, each for its own reason (checked below).
    for line in [
        "nope,5,,,2025-06-02".to_string(),
        format!("{alu},abc,,,2025-06-02"),
        format!("{alu},-1,,,2025-06-02"),
        format!("{alu},5,,,2024-01-03"),
        format!("{alu},5,,someday,2025-06-02"),
    ] {
        csv.push_str(&line);
        csv.push('\n');
        singles.push(None);
    }
    let send = |body: String, kind: &'static str, path: &'static str| {
        s.client
            .post(s.url(path))
            .header("content-type", kind)
            .body(body)
            .send()
    };
    let r = send(csv.clone(), "text/csv", "/api/v1/predictions/batch")
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(
        (answer["rows"].as_u64(), answer["failed"].as_u64()),
        (Some(65), Some(5)),
        "{answer}"
    );
    let results = answer["results"].as_array().unwrap();
    for (k, (result, single)) in results.iter().zip(&singles).enumerate() {
        assert_eq!(result["row"], k + 1);
        match single {
            Some(request) => {
                let (status, one) = post(&s, &s.client, "/api/v1/predictions/price", request).await;
                assert_eq!(status, 200, "{one}");
                let (batch, alone) = (
                    result["prediction"]["predicted_price"].as_f64().unwrap(),
                    one["predicted_price"].as_f64().unwrap(),
                );
                assert!(
                    (batch - alone).abs() <= 1e-6 * alone,
                    "row {}: {batch} vs {alone}",
                    k + 1
                );
                assert_eq!(result["prediction"]["features_used"], one["features_used"]);
            }
            None => assert!(result["prediction"].is_null(), "{result}"),
        }
    }
    let codes: Vec<&str> = results[60..]
        .iter()
        .map(|r| r["error"]["code"].as_str().unwrap())
        .collect();
    assert_eq!(
        codes,
        [
            "not_found",
            "validation_error",
            "invalid_quantity",
            "insufficient_history",
            "validation_error"
        ]
    );

    // CSV out: a header and one line per input row, in order.
    let r = send(
        csv.clone(),
        "text/csv",
        "/api/v1/predictions/batch?format=csv",
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 66);
    assert!(lines[0].starts_with("row,predicted_price"));
    assert!(
        lines[61].starts_with("61,") && lines[61].contains("not_found"),
        "{}",
        lines[61]
    );

    // JSON in: a malformed element is its row's error.
    let body = json!([
        {"material_id": alu, "quantity": 500.0, "as_of": "2025-06-02"},
        {"material_id": alu, "quantity": "lots", "as_of": "2025-06-02"},
    ]);
    let (status, answer) = post(&s, &s.client, "/api/v1/predictions/batch", &body).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer["results"][0]["prediction"]["predicted_price"].is_number());
    assert_eq!(answer["results"][1]["error"]["code"], "validation_error");

    // Refused whole: not an array, a CSV without the required columns, more rows than the limit.
    let (status, body) = post(
        &s,
        &s.client,
        "/api/v1/predictions/batch",
        &json!("a sentence"),
    )
    .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("bad_request")),
        "{body}"
    );
    // An object is a raw batch, and says what it lacks.
    let (status, body) = post(
        &s,
        &s.client,
        "/api/v1/predictions/batch",
        &json!({"rows": []}),
    )
    .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("validation_error")),
        "{body}"
    );
    assert!(
        body["error"]["message"].as_str().unwrap().contains("model"),
        "{body}"
    );
    let r = send(
        "material_id,price\nx,1\n".into(),
        "text/csv",
        "/api/v1/predictions/batch",
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    // Above the inline limit a batch becomes a job; above --batch-max-rows it is refused.
    let big = format!("material_id,quantity\n{}", format!("{alu},5\n").repeat(201));
    let r = send(big, "text/csv", "/api/v1/predictions/batch")
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let huge = format!(
        "material_id,quantity\n{}",
        format!("{alu},5\n").repeat(1001)
    );
    let r = send(huge, "text/csv", "/api/v1/predictions/batch")
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "batch_too_large", "{body}");

    // Raw feature rows for a model version: its golden rows answer its golden outputs; a row of the wrong
    // width is that row's error.
    let g = common::golden("price");
    let width = g.inputs[0]["shape"][1].as_u64().unwrap() as usize;
    let data: Vec<f64> = g.inputs[0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let mut rows: Vec<Value> = data.chunks(width).map(|r| json!(r)).collect();
    rows.push(json!([1.0, 2.0]));
    let (status, answer) = post(
        &s,
        &s.client,
        "/api/v1/predictions/batch",
        &json!({"model": "price", "version": 1, "rows": rows}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["model"], json!({"name": "price", "version": 1}));
    let expected = g.expected("price", 0, g.rows());
    for (k, want) in expected.iter().enumerate() {
        let got = answer["results"][k]["outputs"]["price"][0]
            .as_f64()
            .unwrap();
        assert!(
            (got - want).abs() <= 1e-5 * want.abs(),
            "row {k}: {got} vs {want}"
        );
    }
    let last = &answer["results"][g.rows()];
    assert_eq!(
        (&last["error"]["code"], answer["failed"].as_u64()),
        (&json!("validation_error"), Some(1)),
        "{answer}"
    );
    let (status, body) = post(
        &s,
        &s.client,
        "/api/v1/predictions/batch",
        &json!({"model": "nope", "rows": [[1.0]]}),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    // As CSV: the row, each output value, the row's error.
    let r = s
        .client
        .post(s.url("/api/v1/predictions/batch?format=csv"))
        .json(&json!({"model": "price", "version": 1, "rows": [rows[0], [1.0]]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "row,price,error_code,error_message");
    let first: f64 = lines[1].split(',').nth(1).unwrap().parse().unwrap();
    assert!(
        (first - expected[0]).abs() <= 1e-5 * expected[0].abs(),
        "{text}"
    );
    assert!(lines[2].starts_with("2,,validation_error,"), "{text}");

    // Another organization's batch naming these materials: each row is not found.
    let (_, org) = post(
        &s,
        &s.client,
        "/api/v1/organizations",
        &json!({"name": "B"}),
    )
    .await;
    let b = client_with(org["api_key"]["secret"].as_str().unwrap());
    let r = b
        .post(s.url("/api/v1/predictions/batch"))
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .await
        .unwrap();
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["failed"], 65, "{answer}");
    assert_eq!(answer["results"][0]["error"]["code"], "not_found");
}

/// The shipped models, with version 3 of `price` a copy of version 2 (so the newest, active, and its shadow
/// answer alike).
fn models_with_a_price_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for model in ["price", "forecast", "anomaly"] {
        let from = common::shipped_models().join(model);
        for entry in std::fs::read_dir(&from).unwrap() {
            let version = entry.unwrap().file_name();
            copy_files(&from.join(&version), &dir.path().join(model).join(&version));
        }
    }
    let (v2, v3) = (dir.path().join("price/2"), dir.path().join("price/3"));
    copy_files(&v2, &v3);
    let manifest = std::fs::read_to_string(v3.join("model.toml")).unwrap();
    std::fs::write(
        v3.join("model.toml"),
        manifest.replace("version = 2", "version = 3"),
    )
    .unwrap();
    dir
}

fn copy_files(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// REST price predictions name no version, so a shadow set on the price model gets a copy of each: its
/// figures count them, and a copy of the same model agrees with every answer; the client only ever hears
/// the active version.
#[tokio::test]
async fn rest_predictions_are_mirrored_to_the_shadow_version() {
    let models = models_with_a_price_copy();
    let dir = models.path().to_path_buf();
    let s = TestServer::with(move |c| c.models_dir = dir).await;
    let fixture = ingest_fixture(&s, &s.client).await;
    let (status, body) = s
        .put(
            "/api/v1/models/price/traffic",
            &json!({"split": [], "shadow": 2}),
        )
        .await;
    assert_eq!(
        (status, &body["active_version"]),
        (200, &json!(3)),
        "{body}"
    );
    let requests = 12;
    for i in 0..requests {
        let (status, answer, _) = predict(
            &s,
            &json!({
                "material_id": fixture.materials["ALU-001"],
                "quantity": 100 + 10 * i,
                "as_of": "2025-06-02",
            }),
        )
        .await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["model"]["version"], 3, "the shadow never answers");
    }
    let mut figures = Value::Null;
    for _ in 0..500 {
        figures = s.get("/api/v1/models/price").await.1["shadow"].clone();
        if figures["requests"] == requests {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(
        (
            &figures["version"],
            &figures["requests"],
            &figures["failures"],
            &figures["agreement_rate"]
        ),
        (&json!(2), &json!(requests), &json!(0), &json!(1.0)),
        "{figures}"
    );
}
