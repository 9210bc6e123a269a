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

/// A new organization and a client holding its admin key.
async fn organization(s: &TestServer, name: &str) -> reqwest::Client {
    let (status, body) = s
        .post("/api/v1/organizations", &json!({ "name": name }))
        .await;
    assert_eq!(status, 201, "{body}");
    client_with(body["api_key"]["secret"].as_str().unwrap())
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
    let org = organization(&s, "dates").await;
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
    let hostile = organization(&s, "hostile").await;
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

    let other = organization(&s, "other").await;
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
    let busy = organization(&s, "busy").await;
    let quiet = organization(&s, "quiet").await;
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
    let admin = organization(&s, "sockets").await;
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
