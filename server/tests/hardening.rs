//! What a hostile or careless tenant could do to the server and to other tenants, each tried from the
//! outside (real HTTP, real files): out-of-range dates, huge offsets and percents, model uploads whose
//! manifest names a path, and a batch job full of bad dates followed by another tenant's job.

mod common;

use std::time::{Duration, Instant};

use common::{client_with, TestServer};
use serde_json::{json, Value};

async fn send(request: reqwest::RequestBuilder) -> (u16, Value) {
    let r = request.send().await.expect("the server answers");
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn field_error(body: &Value, field: &str) -> bool {
    body["error"]["code"] == "validation_error" && body["error"]["details"][field].is_array()
}

/// Every date the API takes lies between 1900-01-01 and 2200-12-31; outside, the request is refused with a
/// 400 naming the field, in the envelope, instead of reaching calendar arithmetic (where a far-future date
/// used to panic and drop the connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dates_outside_the_range_are_refused_naming_the_field() {
    let s = TestServer::start().await;
    let org = s.organization("dates").await;
    let (status, m) = send(org.post(s.url("/api/v1/materials")).json(&json!({
        "code": "M-1", "name": "Steel", "category": "steel", "unit": "kg", "specifications": {}})))
    .await;
    assert_eq!(status, 201, "{m}");
    let material = m["id"].as_str().unwrap();
    for far in [
        "+262142-01-01",
        "+262143-12-30",
        "2201-01-01",
        "1899-12-31",
        "-0001-01-01",
    ] {
        let (status, body) = send(org.post(s.url("/api/v1/prices")).json(&json!({
            "time": far, "material_id": material, "price": 10.0, "currency": "EUR",
            "price_type": "quote"})))
        .await;
        assert_eq!(status, 400, "price at {far}: {body}");
        assert!(field_error(&body, "time"), "{far}: {body}");
        for (path, field, body) in [
            (
                "/api/v1/predictions/price",
                "as_of",
                json!({"material_id": material, "quantity": 10.0, "as_of": far}),
            ),
            (
                "/api/v1/predictions/price",
                "delivery_date",
                json!({"material_id": material, "quantity": 10.0, "delivery_date": far}),
            ),
            (
                "/api/v1/analytics/forecast",
                "as_of",
                json!({"material_id": material, "horizon_days": 28, "as_of": far}),
            ),
            (
                "/api/v1/analytics/trends",
                "as_of",
                json!({"material_id": material, "window_days": 30, "as_of": far}),
            ),
            (
                "/api/v1/analytics/anomalies",
                "observations[0].observed_on",
                json!({"observations": [{"material_id": material, "price": 10.0, "observed_on": far}]}),
            ),
        ] {
            let (status, answer) = send(org.post(s.url(path)).json(&body)).await;
            assert_eq!(status, 400, "{path} {far}: {answer}");
            assert!(
                answer["error"]["code"] == "validation_error"
                    && answer["error"]["message"]
                        .as_str()
                        .is_some_and(|m| m.contains(field.rsplit('.').next().unwrap())),
                "{path} {far}: {answer}"
            );
        }
        let (status, body) = send(org.get(s.url(&format!("/api/v1/prices?from={far}")))).await;
        assert_eq!(status, 400, "from={far}: {body}");
        assert!(field_error(&body, "from"), "{body}");
    }
    // The edges of the range are in it.
    for edge in ["1900-01-01", "2200-12-31T23:59:59Z"] {
        let (status, body) = send(org.post(s.url("/api/v1/prices")).json(&json!({
            "time": edge, "material_id": material, "price": 10.0, "currency": "EUR",
            "price_type": "quote"})))
        .await;
        assert_eq!(status, 201, "{edge}: {body}");
    }
    let (status, body) = send(
        org.post(s.url("/api/v1/analytics/forecast"))
            .json(&json!({"material_id": material, "horizon_days": 28, "as_of": "2200-12-31"})),
    )
    .await;
    assert_ne!(status, 500, "a forecast from the last day: {body}");
    let (status, _) = s.get("/readyz").await;
    assert_eq!(status, 200);
}

/// An `offset` past the bound and traffic percents that overflow 32 bits are refused, not wrapped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_and_percents_are_checked_without_wrapping() {
    let s = TestServer::start().await;
    for path in [
        "/api/v1/materials?offset=18446744073709551615",
        "/api/v1/prices?offset=9223372036854775808",
        "/api/v1/suppliers?offset=1000000001",
    ] {
        let (status, body) = s.get(path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(field_error(&body, "offset"), "{path}: {body}");
    }
    let (status, body) = s.get("/api/v1/materials?offset=1000000000").await;
    assert_eq!(status, 200, "{body}");
    // 4294967295 + 101 wraps to 100 in u32.
    let (status, body) = s
        .put(
            "/api/v1/models/price/traffic",
            &json!({"split": [{"version": 1, "percent": 4294967295u64}, {"version": 2, "percent": 101}]}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, model) = s.get("/api/v1/models/price").await;
    assert_eq!(status, 200);
    assert!(
        model["traffic"]["split"]
            .as_array()
            .is_none_or(|s| s.is_empty()),
        "no split was set: {model}"
    );
}

/// A model upload whose manifest names its feature spec with a path is refused before anything is
/// written: no file appears where the path points, and nothing stays in the staging folder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_cannot_write_outside_its_folder() {
    let s = TestServer::start().await;
    let shipped = common::shipped_models().join("price/2");
    let onnx = std::fs::read(shipped.join("model.onnx")).unwrap();
    let spec = std::fs::read(shipped.join("features.toml")).unwrap();
    let manifest = std::fs::read_to_string(shipped.join("model.toml")).unwrap();
    let data = s.data_dir.as_ref().unwrap().path().to_path_buf();
    let outside = tempfile::tempdir().unwrap();
    let absolute = outside.path().join("absolute.toml");
    for (target, name) in [
        (
            outside.path().join("escaped.toml"),
            format!(
                "../../../../../../../..{}",
                outside.path().join("escaped.toml").display()
            ),
        ),
        (absolute.clone(), absolute.display().to_string()),
        (
            data.join("mercator.db.toml"),
            "../../../mercator.db.toml".into(),
        ),
        (data.join("staging/x/model.toml"), "model.toml".into()),
    ] {
        let manifest = manifest.replace(
            "spec = \"features.toml\"",
            &format!("spec = {}", toml::Value::String(name.clone())),
        );
        let form = reqwest::multipart::Form::new()
            .part(
                "model",
                reqwest::multipart::Part::bytes(onnx.clone()).file_name("model.onnx"),
            )
            .part(
                "manifest",
                reqwest::multipart::Part::bytes(manifest.into_bytes()).file_name("model.toml"),
            )
            .part(
                "features",
                reqwest::multipart::Part::bytes(spec.clone()).file_name("features.toml"),
            );
        let (status, body) = send(
            s.client
                .post(s.url("/api/v1/models/pathy/versions"))
                .multipart(form),
        )
        .await;
        assert_eq!(status, 422, "{name}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("features.spec"),
            "{body}"
        );
        assert!(
            !body.to_string().contains("staging"),
            "no server path in {body}"
        );
        assert!(!target.exists(), "{name} wrote {}", target.display());
    }
    let staged = std::fs::read_dir(data.join("staging"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(staged, 0, "nothing is left in staging");
}

/// A tenant's batch job full of far-future dates fails those rows alone, and leaves the server whole:
/// another tenant's job of 50,000 rows runs to the end afterwards, and `/readyz` stays 200. (Such a job
/// used to kill a preparing thread for good, and after two of them every tenant's jobs failed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_of_bad_dates_fails_alone_and_the_next_tenant_is_served() {
    let s = TestServer::start().await;
    let hostile = s.organization("hostile").await;
    let fixture = common::ingest_fixture(&s, &hostile).await;
    let material = fixture.materials.values().next().unwrap();
    for round in 0..3 {
        let mut csv = String::from("material_id,quantity,as_of,delivery_date\n");
        for i in 0..20_000 {
            let (as_of, delivery) = match i % 3 {
                0 => ("+262143-12-30", ""),
                1 => ("2025-09-01", "+262143-12-31"),
                _ => ("2025-09-01", ""),
            };
            csv.push_str(&format!("{material},{},{as_of},{delivery}\n", 10 + i % 50));
        }
        let job = submit(&s, &hostile, csv).await;
        let ended = wait_end(&s, &hostile, &job).await;
        assert_eq!(ended["state"], "succeeded", "round {round}: {ended}");
        assert_eq!(ended["failed_rows"], 20_000 - 20_000 / 3, "{ended}");
        let (status, errors) = send(hostile.get(s.url(&format!(
            "/api/v1/predictions/batch/{job}/errors?format=json"
        ))))
        .await;
        assert_eq!(status, 200);
        let first = &errors.as_array().unwrap()[0];
        assert!(
            first.to_string().contains("as_of") && first.to_string().contains("2200-12-31"),
            "{first}"
        );
    }
    let (status, _) = s.get("/readyz").await;
    assert_eq!(status, 200, "the server is whole");

    let other = s.organization("other").await;
    let fixture = common::ingest_fixture(&s, &other).await;
    let (csv, _) = common::requests_csv(&fixture, 50_000, 0);
    let job = submit(&s, &other, csv).await;
    let ended = wait_end(&s, &other, &job).await;
    assert_eq!(ended["state"], "succeeded", "{ended}");
    assert_eq!(ended["processed_rows"], 50_000, "{ended}");
    assert_eq!(ended["failed_rows"], 0, "{ended}");
}

async fn submit(s: &TestServer, client: &reqwest::Client, csv: String) -> String {
    let (status, body) = send(
        client
            .post(s.url("/api/v1/predictions/batch"))
            .header("content-type", "text/csv")
            .header("prefer", "respond-async")
            .body(csv),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    body["batch_id"].as_str().unwrap().to_string()
}

async fn wait_end(s: &TestServer, client: &reqwest::Client, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let (status, job) =
            send(client.get(s.url(&format!("/api/v1/predictions/batch/{id}")))).await;
        assert_eq!(status, 200, "{job}");
        if ["succeeded", "failed", "cancelled"].contains(&job["state"].as_str().unwrap()) {
            return job;
        }
        assert!(Instant::now() < deadline, "{job}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A key of `role` in the organization of `admin`: (id, secret).
async fn key_of(s: &TestServer, admin: &reqwest::Client, role: &str) -> (String, String) {
    let (status, body) = send(
        admin
            .post(s.url("/api/v1/api-keys"))
            .json(&json!({"name": format!("{role} key"), "role": role})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    (
        body["id"].as_str().unwrap().to_string(),
        body["secret"].as_str().unwrap().to_string(),
    )
}

async fn material(s: &TestServer, admin: &reqwest::Client, code: &str) -> String {
    let (status, m) = send(admin.post(s.url("/api/v1/materials")).json(&json!({
        "code": code, "name": code, "category": "steel", "unit": "kg", "specifications": {}})))
    .await;
    assert_eq!(status, 201, "{m}");
    m["id"].as_str().unwrap().to_string()
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next_text(socket: &mut Socket) -> Value {
    use futures_util::StreamExt;
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("a message in time")
            .expect("the stream is open")
            .expect("a message");
        if let tokio_tungstenite::tungstenite::Message::Text(text) = message {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

/// Each organization's price stream is its own: a tenant ingesting tens of thousands of prices past a
/// listener that never reads leaves another tenant's listener without a `lagged` message, and the other
/// tenant's own price is the first thing it hears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_tenant_does_not_make_another_tenants_stream_lag() {
    let s = TestServer::with(|c| c.score_on_ingest = false).await;
    let busy = s.organization("busy").await;
    let quiet = s.organization("quiet").await;
    let (_, busy_viewer) = key_of(&s, &busy, "viewer").await;
    let (_, quiet_viewer) = key_of(&s, &quiet, "viewer").await;
    let busy_material = material(&s, &busy, "B-1").await;
    let quiet_material = material(&s, &quiet, "Q-1").await;
    let ws = s.base.replace("http://", "ws://");
    let (_stalled, _) =
        tokio_tungstenite::connect_async(format!("{ws}/ws/prices?api_key={busy_viewer}"))
            .await
            .unwrap();
    let (mut listener, _) =
        tokio_tungstenite::connect_async(format!("{ws}/ws/prices?api_key={quiet_viewer}"))
            .await
            .unwrap();
    let start = chrono::NaiveDate::from_ymd_opt(2024, 1, 1).unwrap();
    for batch in 0..2 {
        let rows: Vec<Value> = (0..20_000)
            .map(|i| {
                let t = start.and_hms_opt(0, 0, 0).unwrap().and_utc()
                    + chrono::Duration::seconds(batch * 20_000 + i);
                json!({"time": t, "material_id": busy_material, "price": 10.0,
                    "currency": "EUR", "price_type": "quote"})
            })
            .collect();
        let (status, body) = send(busy.post(s.url("/api/v1/prices/bulk")).json(&rows)).await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, body) = send(quiet.post(s.url("/api/v1/prices")).json(&json!({
        "time": "2025-01-01", "material_id": quiet_material, "price": 7.5,
        "currency": "EUR", "price_type": "quote"})))
    .await;
    assert_eq!(status, 201, "{body}");
    let first = next_text(&mut listener).await;
    assert_eq!(first["type"], "price", "{first}");
    assert_eq!(first["price"]["material_id"], quiet_material.as_str());
}

/// A socket whose key is deleted is closed within a few seconds with 1008; a key holds at most
/// --max-sockets-per-key sockets; a client message over the cap closes the socket; and `?api_key=` is read
/// on WebSocket routes only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_end_with_their_key_and_are_bounded() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let s = TestServer::with(|c| c.max_sockets_per_key = 2).await;
    let admin = s.organization("sockets").await;
    let (viewer_id, viewer) = key_of(&s, &admin, "viewer").await;
    let ws = s.base.replace("http://", "ws://");
    let url = format!("{ws}/ws/prices?api_key={viewer}");
    let (mut first, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let (mut second, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    match tokio_tungstenite::connect_async(&url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 429),
        other => panic!("a third socket of one key: {other:?}"),
    }
    // Over the incoming cap: the server ends that socket, and its slot is free again.
    second
        .send(Message::Text("x".repeat(64 * 1024).into()))
        .await
        .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match second.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "an oversized message ends the socket");
    let mut again = None;
    for _ in 0..50 {
        if let Ok((socket, _)) = tokio_tungstenite::connect_async(&url).await {
            again = Some(socket);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(again.is_some(), "the slot came back");
    // Outside /ws/ a key in the URL is not read.
    let (status, body) =
        send(reqwest::Client::new().get(s.url(&format!("/api/v1/materials?api_key={viewer}"))))
            .await;
    assert_eq!(status, 401, "{body}");
    // Revoked: closed with a policy violation within a few seconds.
    let (status, body) = send(admin.delete(s.url(&format!("/api/v1/api-keys/{viewer_id}")))).await;
    assert_eq!(status, 204, "{body}");
    let deleted = Instant::now();
    let close = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match first.next().await {
                Some(Ok(Message::Close(frame))) => return frame,
                None | Some(Err(_)) => return None,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await
    .expect("the socket closes");
    let frame = close.expect("a close frame");
    assert_eq!(u16::from(frame.code), 1008, "{frame:?}");
    assert!(deleted.elapsed() < Duration::from_secs(5));
}

/// Invented HTTP methods share one `OTHER` label in /metrics instead of a series each, and --metrics-key
/// guards /metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_label_known_methods_and_take_a_key() {
    let s = TestServer::with(|c| c.metrics_key = Some("metrics-token-0123456789".into())).await;
    let odd = reqwest::Method::from_bytes(b"FROBNICATE").unwrap();
    for _ in 0..3 {
        let r = reqwest::Client::new()
            .request(odd.clone(), s.url("/api/v1/materials"))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_client_error());
    }
    let (status, body) = send(reqwest::Client::new().get(s.url("/metrics"))).await;
    assert_eq!(status, 401, "{body}");
    let (status, _) = send(client_with("wrong-token").get(s.url("/metrics"))).await;
    assert_eq!(status, 401);
    let text = client_with("metrics-token-0123456789")
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!text.contains("FROBNICATE"), "{text}");
    assert!(text.contains("method=\"OTHER\""), "{text}");
}

/// The resident set and its peak since the last reset, in bytes (this process: the server runs in it).
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| -> u64 {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap();
        let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kb * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Resets the peak resident set to the current one (Linux: 5 > /proc/self/clear_refs).
fn reset_peak() {
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
}

const MIB: u64 = 1024 * 1024;

/// What is under the batch directory besides the node's own files: spools and job folders.
fn batch_leftovers(s: &TestServer) -> Vec<String> {
    let dir = s.data_dir.as_ref().unwrap().path().join("batches");
    std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A small Parquet file that declares millions of rows (one value repeated compresses to nothing) is
/// refused from its footer: 413 before a row is read, the server's peak memory barely moves, and nothing
/// is left on disk. A JSON body of millions of tiny elements stops at the row limit as they arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bombs_are_refused_before_they_are_read() {
    use mercator_features::polars::prelude::{
        AnyValue, Column, DataFrame, DataType, ParquetWriter, Scalar,
    };
    let s = TestServer::with(|c| c.batch.max_rows = 1_000_000).await;
    let rows = 5_000_000;
    let mut frame = DataFrame::new(
        rows,
        vec![
            Column::new_scalar(
                "material_id".into(),
                Scalar::new(DataType::String, AnyValue::StringOwned("M-1".into())),
                rows,
            ),
            Column::new_scalar(
                "quantity".into(),
                Scalar::new(DataType::Float64, AnyValue::Float64(500.0)),
                rows,
            ),
        ],
    )
    .unwrap();
    let mut parquet = Vec::new();
    ParquetWriter::new(&mut parquet).finish(&mut frame).unwrap();
    drop(frame);
    assert!(parquet.len() < 4 * MIB as usize, "{} bytes", parquet.len());
    let empty: String = format!("[{}{{}}]", "{},".repeat(3_000_000));
    let raw = format!(
        r#"{{"model":"price","rows":[{}[1]]}}"#,
        "[1],".repeat(2_000_000)
    );

    let (before, _) = rss();
    reset_peak();
    let (status, body) = send(
        s.client
            .post(s.url("/api/v1/predictions/batch"))
            .header("content-type", "application/vnd.apache.parquet")
            .body(parquet),
    )
    .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "batch_too_large", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("declares 5000000 rows"),
        "{body}"
    );
    let (_, peak) = rss();
    assert!(
        peak.saturating_sub(before) < 64 * MIB,
        "the Parquet bomb grew the peak by {} MiB",
        (peak - before) / MIB
    );
    assert!(batch_leftovers(&s).is_empty(), "{:?}", batch_leftovers(&s));

    for (body, what) in [(empty, "a JSON array"), (raw, "raw feature rows")] {
        let (before, _) = rss();
        reset_peak();
        let (status, answer) = send(
            s.client
                .post(s.url("/api/v1/predictions/batch"))
                .header("content-type", "application/json")
                .body(body),
        )
        .await;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (413, Some("batch_too_large")),
            "{what}: {answer}"
        );
        let (_, peak) = rss();
        assert!(
            peak.saturating_sub(before) < 64 * MIB,
            "{what} grew the peak by {} MiB",
            (peak - before) / MIB
        );
    }
    assert!(batch_leftovers(&s).is_empty(), "{:?}", batch_leftovers(&s));
}

/// A CSV cell or record longer than its cap is refused with a 400 naming the line and the flag, and an
/// endless record is refused without being read whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_cells_and_records_have_length_caps() {
    let s = TestServer::with(|c| {
        c.batch.csv.field_bytes = 1024;
        c.batch.csv.record_bytes = 1500;
    })
    .await;
    let batch = |csv: String| {
        s.client
            .post(s.url("/api/v1/predictions/batch"))
            .header("content-type", "text/csv")
            .body(csv)
    };
    let long_cell = format!("material_id,quantity\nM-1,5\n{},5\n", "x".repeat(2000));
    let (status, body) = send(batch(long_cell)).await;
    assert_eq!(status, 400, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("line 3") && message.contains("--csv-max-field-bytes"),
        "{body}"
    );
    // Many cells, each within the cap, one record beyond its own.
    let long_record = format!(
        "material_id,quantity\nM-1,5\n{},{}\n",
        "y".repeat(900),
        "9".repeat(900)
    );
    let (status, body) = send(batch(long_record)).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--csv-max-record-bytes"),
        "{body}"
    );
    // 64 MiB with no line end: refused at the cap, not read into one record.
    let endless = format!("material_id,quantity\n\"{}", "z".repeat(64 * MIB as usize));
    let (status, body) = send(batch(endless)).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("--csv-max-record-bytes"));
    assert!(batch_leftovers(&s).is_empty(), "{:?}", batch_leftovers(&s));

    // Bulk prices: the row is named.
    let csv = format!(
        "time,material_id,price,currency,price_type,source\n2025-01-01,m,1,EUR,quote,{}\n",
        "s".repeat(2000)
    );
    let (status, body) = send(
        s.client
            .post(s.url("/api/v1/prices/bulk"))
            .header("content-type", "text/csv")
            .body(csv),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["details"]["rows"][0]["row"], 1, "{body}");
}

/// Opens a raw connection and sends a request head (with a body still to come), returning the socket.
async fn start_upload(s: &TestServer, key: &str, path: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut socket = tokio::net::TcpStream::connect(s.base.trim_start_matches("http://"))
        .await
        .unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: text/csv\r\nContent-Length: 100000\r\n\r\nmaterial_id,quantity\n"
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    socket
}

/// Heavy requests (batches, bulk writes, uploads) are admitted up to a cap per organization and one for
/// the server; beyond, 429 with Retry-After before the body is read. Other tenants' light requests and
/// their own heavy ones within the caps go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_requests_are_capped_per_tenant_and_for_the_server() {
    let s = TestServer::with(|c| {
        c.max_heavy_requests = 2;
        c.max_heavy_requests_per_org = 1;
        c.connections.body_read_timeout = Duration::from_secs(30);
    })
    .await;
    let (_, a) = key_of(&s, &s.client, "admin").await;
    let b_admin = s.organization("heavy-b").await;
    let (_, b) = key_of(&s, &b_admin, "admin").await;
    let (_, c) = key_of(&s, &s.organization("heavy-c").await, "admin").await;
    let heavy = |client: &reqwest::Client| {
        client
            .post(s.url("/api/v1/predictions/batch"))
            .header("content-type", "text/csv")
            .body("material_id,quantity\n")
    };
    let a_upload = start_upload(&s, &a, "/api/v1/predictions/batch").await;
    // A's second heavy request waits for its first: 429, with Retry-After.
    let mut refused = None;
    for _ in 0..500 {
        let r = heavy(&client_with(&a)).send().await.unwrap();
        if r.status() == 429 {
            refused = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused = refused.expect("the organization's cap is reached");
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_heavy_requests", "{body}");
    // B is not A: its batch is read (and refused for having no rows).
    let (status, body) = send(heavy(&client_with(&b))).await;
    assert_eq!(status, 400, "{body}");
    // With C's upload in progress too, the server's two slots are taken: B waits.
    let c_upload = start_upload(&s, &c, "/api/v1/prices/bulk").await;
    let mut busy = false;
    for _ in 0..500 {
        let (status, body) = send(heavy(&client_with(&b))).await;
        if status == 429 {
            assert_eq!(body["error"]["code"], "server_busy", "{body}");
            busy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(busy, "the server's cap is reached");
    // Light requests go on meanwhile.
    let (status, _) = send(client_with(&b).get(s.url("/api/v1/materials"))).await;
    assert_eq!(status, 200);
    drop((a_upload, c_upload));
    let mut admitted = false;
    for _ in 0..500 {
        let (status, _) = send(heavy(&client_with(&a))).await;
        if status == 400 {
            admitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(admitted, "a closed upload gives its slot back");
}

/// An organization's batch jobs may hold so much disk: beyond its quota a submit is refused with 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_jobs_have_a_disk_quota_per_organization() {
    for backend in [common::Backend::Sqlite, common::Backend::Postgres] {
        disk_quota(backend).await;
    }
}

async fn disk_quota(backend: common::Backend) {
    let database = match backend {
        common::Backend::Sqlite => None,
        common::Backend::Postgres => Some(common::PgDatabase::create().await),
    };
    let url = database.as_ref().map(|d| d.url.clone());
    let mut s = TestServer::with(|c| {
        c.batch.disk_factor = 1.0;
        c.batch.max_disk_bytes_per_org = 3000;
        c.database_url = url;
    })
    .await;
    s.database = database;
    let admin = s.organization("quota").await;
    let m = material(&s, &admin, "Q-1").await;
    let csv = format!(
        "material_id,quantity\n{}",
        format!("{m},5\n").repeat(1000 / (m.len() + 3) + 1)
    );
    assert!(csv.len() > 1000 && csv.len() < 1500, "{}", csv.len());
    let job = |csv: String| {
        admin
            .post(s.url("/api/v1/predictions/batch"))
            .header("content-type", "text/csv")
            .header("prefer", "respond-async")
            .body(csv)
    };
    let (status, body) = send(job(csv.clone())).await;
    assert_eq!(status, 202, "{body}");
    let (status, body) = send(job(csv.clone())).await;
    assert_eq!(status, 202, "{body}");
    let (status, body) = send(job(csv.clone())).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "disk_quota_exceeded", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--batch-max-disk-bytes-per-org"),
        "{body}"
    );
    // Another organization has its own quota.
    let other = s.organization("quota-2").await;
    let m2 = material(&s, &other, "Q-2").await;
    let (status, body) = send(
        other
            .post(s.url("/api/v1/predictions/batch"))
            .header("content-type", "text/csv")
            .header("prefer", "respond-async")
            .body(format!("material_id,quantity\n{m2},5\n")),
    )
    .await;
    assert_eq!(status, 202, "{body}");
}

/// Reads from a raw connection until the server closes it (or `limit` passes): the bytes read and when
/// the close came.
async fn read_until_closed(
    socket: &mut tokio::net::TcpStream,
    limit: Duration,
) -> Option<(Vec<u8>, Instant)> {
    use tokio::io::AsyncReadExt;
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, socket.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some((all, Instant::now())),
            Ok(Ok(n)) => all.extend_from_slice(&buf[..n]),
            Err(_) => return None,
        }
    }
}

/// A request head that stalls, a kept-alive connection left idle, a body that stalls: each is closed or
/// answered after its own timeout; and beyond the connection cap, a new connection waits for a free one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_have_timeouts_and_a_cap() {
    use tokio::io::AsyncWriteExt;
    let s = TestServer::with(|c| {
        c.connections.header_read_timeout = Duration::from_secs(1);
        c.connections.idle_timeout = Duration::from_secs(2);
        c.connections.body_read_timeout = Duration::from_secs(1);
    })
    .await;
    let addr = s.base.trim_start_matches("http://").to_string();

    // Half a head, then nothing: closed after about a second, with no answer.
    let mut socket = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let start = Instant::now();
    socket
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let (bytes, at) = read_until_closed(&mut socket, Duration::from_secs(10))
        .await
        .expect("a stalled head is closed");
    assert!(bytes.is_empty(), "{}", String::from_utf8_lossy(&bytes));
    let took = at - start;
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "{took:?}"
    );

    // A connection that says nothing at all is closed as a stalled head too.
    let mut silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    assert!(read_until_closed(&mut silent, Duration::from_secs(10))
        .await
        .is_some());

    // Kept alive: a second request within the idle timeout is served on the same connection; then, idle,
    // it is closed after about two seconds.
    let mut socket = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    for _ in 0..2 {
        socket.write_all(request).await.unwrap();
        let mut buf = [0u8; 1024];
        let n = tokio::io::AsyncReadExt::read(&mut socket, &mut buf)
            .await
            .unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
    let idle_from = Instant::now() - Duration::from_millis(1200);
    let (_, at) = read_until_closed(&mut socket, Duration::from_secs(10))
        .await
        .expect("an idle connection is closed");
    let idle = at - idle_from;
    assert!(
        idle >= Duration::from_millis(1900) && idle < Duration::from_secs(5),
        "{idle:?}"
    );

    // A body that stalls: 408 in the envelope.
    let mut socket = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /api/v1/prices/bulk HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: text/csv\r\nContent-Length: 1000\r\n\r\ntime,material_id",
        common::ADMIN_KEY
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    let (bytes, _) = read_until_closed(&mut socket, Duration::from_secs(10))
        .await
        .expect("answered and closed");
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("body_timeout"), "{text}");

    // At most two connections: a third waits for one of them to close.
    drop(s);
    let s = TestServer::with(|c| c.connections.max = 2).await;
    let addr = s.base.trim_start_matches("http://").to_string();
    let mut held = Vec::new();
    // The test client's own pooled connection may hold a slot: fill what is left.
    loop {
        let mut socket = tokio::net::TcpStream::connect(&addr).await.unwrap();
        socket.write_all(request).await.unwrap();
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(
            Duration::from_millis(700),
            tokio::io::AsyncReadExt::read(&mut socket, &mut buf),
        )
        .await
        {
            Ok(n) => {
                assert!(n.unwrap() > 0);
                held.push(socket);
                assert!(held.len() <= 2, "more connections than the cap were served");
            }
            Err(_) => {
                // Waiting: a held connection closes, and this one is served.
                assert!(
                    !held.is_empty(),
                    "a slot is held by a connection of this test"
                );
                held.clear();
                let n = tokio::time::timeout(
                    Duration::from_secs(5),
                    tokio::io::AsyncReadExt::read(&mut socket, &mut buf),
                )
                .await
                .expect("served once a slot is free")
                .unwrap();
                assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
                break;
            }
        }
    }
}

/// Webhook secrets are sealed at rest (AES-256-GCM) under the server's key, the key id beside each: the
/// database never holds one in the clear; a server given a new key (the old one after it) reseals every
/// secret at start; a server without the key that sealed them refuses to start rather than lose them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_secrets_are_sealed_at_rest_and_keys_rotate() {
    use mercator_store::secrets::Sealer;
    use sqlx::Connection;
    let database = common::PgDatabase::create().await;
    let (k1, k2, k3) = (
        Sealer::generate_key(),
        Sealer::generate_key(),
        Sealer::generate_key(),
    );
    let id_of = |k: &str| {
        Sealer::new(&Sealer::parse_keys(k).unwrap())
            .unwrap()
            .key_id()
            .to_string()
    };
    let secret = "plain-webhook-secret-0123456789";
    let server = |keys: String| {
        let url = database.url.clone();
        TestServer::with(move |c| {
            c.database_url = Some(url);
            c.secret_key = Some(keys);
            c.webhook_allow_private = true;
        })
    };
    let stored = || async {
        let mut conn = sqlx::PgConnection::connect(&database.url).await.unwrap();
        let channels: Vec<String> = sqlx::query_scalar("SELECT channels FROM alert_rules")
            .fetch_all(&mut conn)
            .await
            .unwrap();
        channels.join("\n")
    };

    let mut s = server(k1.clone()).await;
    let (status, rule) = send(s.client.post(s.url("/api/v1/alerts")).json(&json!({
        "name": "sealed", "condition": {"type": "price_above", "threshold": 20.0},
        "channels": [{"webhook": {"url": "http://127.0.0.1:9/hook", "secret": secret}}]})))
    .await;
    assert_eq!(status, 201, "{rule}");
    assert!(!rule.to_string().contains(secret), "{rule}");
    let at_rest = stored().await;
    assert!(!at_rest.contains(secret), "{at_rest}");
    assert!(
        at_rest.contains(&format!("enc:v1:{}:", id_of(&k1))),
        "{at_rest}"
    );
    s.stop().await.unwrap();

    // Rotated: the new key first, the old one after it.
    let mut s = server(format!("{k2},{k1}")).await;
    let at_rest = stored().await;
    assert!(
        at_rest.contains(&format!("enc:v1:{}:", id_of(&k2))),
        "{at_rest}"
    );
    assert!(
        !at_rest.contains(&id_of(&k1)) && !at_rest.contains(secret),
        "{at_rest}"
    );
    let (status, _) = send(s.client.get(s.url("/api/v1/alerts"))).await;
    assert_eq!(status, 200);
    s.stop().await.unwrap();

    // A key that never sealed them: the server does not start.
    let data_dir = tempfile::tempdir().unwrap();
    let config = mercator_server::Config {
        models_dir: common::shipped_models(),
        data_dir: data_dir.path().to_path_buf(),
        database_url: Some(database.url.clone()),
        secret_key: Some(k3),
        admin_key: Some(common::ADMIN_KEY.to_string()),
        ..mercator_server::Config::default()
    };
    let refused = mercator_server::App::load(config)
        .await
        .err()
        .expect("refused");
    assert!(refused.contains("does not hold"), "{refused}");
}

/// A price too small to keep its value in the feature history's fixed point (a subnormal `5e-324` once
/// passed as "greater than 0" and then broke anomaly scoring), or absurdly large, is refused naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prices_are_refused_outside_the_range_features_keep() {
    let s = TestServer::start().await;
    let org = s.organization("tiny-prices").await;
    let m = material(&s, &org, "T-1").await;
    for (price, want) in [
        (5e-324, 400),
        (0.00001, 400),
        (1e13, 400),
        (0.0001, 201),
        (1e12, 201),
    ] {
        let (status, body) = send(org.post(s.url("/api/v1/prices")).json(&json!({
            "time": "2025-03-01", "material_id": m, "price": price, "currency": "EUR",
            "price_type": "quote"})))
        .await;
        assert_eq!(status, want, "{price}: {body}");
        if want == 400 {
            assert!(field_error(&body, "price"), "{price}: {body}");
        }
    }
}
