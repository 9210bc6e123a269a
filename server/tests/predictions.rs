//! Price predictions over a live server: the fixture history ingested through the real bulk API, the online
//! feature rows compared with the training frame `mercator features materialize` computes from the same file,
//! the served price with ONNX Runtime on that row, the shipped model's held-out quality, and every error case
//! across two organizations.

mod common;

use std::collections::HashMap;

use common::{client_with, repo_root, TestServer};
use mercator_features::polars::prelude::*;
use mercator_features::{materialize, FeatureSpec};
use reqwest::Client;
use serde_json::{json, Value};

struct Fixture {
    /// material code -> id, supplier code -> id.
    materials: HashMap<String, String>,
    suppliers: HashMap<String, String>,
}

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

/// Creates the fixture's materials and suppliers in the caller's organization and ingests every price of
/// fixtures/prices.csv through `POST /api/v1/prices/bulk` (CSV).
async fn ingest_fixture(s: &TestServer, client: &Client) -> Fixture {
    let text = std::fs::read_to_string(repo_root().join("fixtures/prices.csv")).unwrap();
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    let (mut materials, mut suppliers) = (HashMap::new(), HashMap::new());
    for r in &rows {
        if !materials.contains_key(&r[1]) {
            let body = json!({"code": &r[1], "name": &r[1], "category": &r[2], "unit": &r[3],
                              "list_price": r[9].parse::<f64>().unwrap(), "specifications": {}});
            let (status, m) = post(s, client, "/api/v1/materials", &body).await;
            assert_eq!(status, 201, "{m}");
            materials.insert(r[1].to_string(), m["id"].as_str().unwrap().to_string());
        }
        if !suppliers.contains_key(&r[4]) {
            let body = json!({"code": &r[4], "name": &r[4], "country": "DE",
                              "reliability": r[5].parse::<f64>().unwrap()});
            let (status, m) = post(s, client, "/api/v1/suppliers", &body).await;
            assert_eq!(status, 201, "{m}");
            suppliers.insert(r[4].to_string(), m["id"].as_str().unwrap().to_string());
        }
    }
    let mut csv = String::from("time,material_id,supplier_id,price,currency,quantity,price_type\n");
    for r in &rows {
        csv.push_str(&format!(
            "{}T00:00:00Z,{},{},{},EUR,{},quote\n",
            &r[0], materials[&r[1]], suppliers[&r[4]], &r[8], &r[6]
        ));
    }
    let r = client
        .post(s.url("/api/v1/prices/bulk"))
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    Fixture {
        materials,
        suppliers,
    }
}

fn spec() -> FeatureSpec {
    FeatureSpec::from_file(&repo_root().join("models/price/2/features.toml")).unwrap()
}

fn frame() -> DataFrame {
    materialize::materialize(&spec(), &repo_root().join("fixtures/prices.csv"))
        .unwrap()
        .frame
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
    let manifest =
        mercator_engine::Manifest::from_file(&repo_root().join("models/price/2/model.toml"))
            .unwrap();
    let from: chrono::NaiveDate = manifest.metrics["holdout_from"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
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
