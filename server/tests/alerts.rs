//! Price alerting over a live server: rules through the API, prices through the ingest endpoints, events
//! read back and heard on a real WebSocket, and what one organization's rules never see of another's.

mod common;

use std::time::{Duration, Instant};

use common::{client_with, TestServer};
use futures_util::StreamExt;
use serde_json::{json, Value};

struct Setup {
    material: String,
    supplier: String,
}

async fn post(s: &TestServer, client: &reqwest::Client, path: &str, body: &Value) -> (u16, Value) {
    let r = client.post(s.url(path)).json(body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn get(s: &TestServer, client: &reqwest::Client, path: &str) -> (u16, Value) {
    let r = client.get(s.url(path)).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// A steel material bought from one supplier at about 10 a kg twice a day for the 40 days before today.
async fn history(s: &TestServer, client: &reqwest::Client) -> Setup {
    let (status, m) = post(
        s,
        client,
        "/api/v1/materials",
        &json!({"code": "STE-1", "name": "Steel",
        "category": "steel", "unit": "kg", "list_price": 11.5, "specifications": {}}),
    )
    .await;
    assert_eq!(status, 201, "{m}");
    let (status, sup) = post(
        s,
        client,
        "/api/v1/suppliers",
        &json!({"code": "SUP-001",
        "name": "Acme Steel", "country": "DE", "reliability": 0.9}),
    )
    .await;
    assert_eq!(status, 201, "{sup}");
    let (material, supplier) = (
        m["id"].as_str().unwrap().to_string(),
        sup["id"].as_str().unwrap().to_string(),
    );
    let today = chrono::Utc::now().date_naive();
    let mut rows = Vec::new();
    for d in 1..=40i64 {
        for (hour, wiggle) in [(9, -0.1), (15, 0.1)] {
            let day = today - chrono::Duration::days(d);
            rows.push(
                json!({"time": format!("{day}T{hour:02}:00:00Z"), "material_id": material,
                "supplier_id": supplier, "price": 10.0 + wiggle + 0.05 * (d % 3) as f64,
                "currency": "EUR", "quantity": 500.0, "price_type": "quote"}),
            );
        }
    }
    let (status, body) = post(s, client, "/api/v1/prices/bulk", &json!(rows)).await;
    assert_eq!(status, 201, "{body}");
    Setup { material, supplier }
}

async fn quote(
    s: &TestServer,
    client: &reqwest::Client,
    setup: &Setup,
    price: f64,
    time: chrono::DateTime<chrono::Utc>,
) -> Value {
    let (status, body) = post(
        s,
        client,
        "/api/v1/prices",
        &json!({"time": time,
        "material_id": setup.material, "supplier_id": setup.supplier, "price": price,
        "currency": "EUR", "quantity": 500.0, "price_type": "quote"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body
}

async fn events_of(s: &TestServer, client: &reqwest::Client, rule: &str) -> Vec<Value> {
    let (status, body) = get(
        s,
        client,
        &format!("/api/v1/alerts/events?rule_id={rule}&limit=100"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["items"].as_array().unwrap().clone()
}

/// Each condition judged on ingest fires exactly when it should, folds further breaches of the same subject
/// into its event inside the cooldown, opens a new one after it, and ignores history being loaded; the
/// WebSocket hears each event within a second of the ingest that caused it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditions_fire_when_they_should_and_not_again_inside_the_cooldown() {
    // The server judges by this clock: a cooldown passes when the test moves it, not by waiting.
    let clock = std::sync::Arc::new(mercator_services::clock::Clock::default());
    let s = TestServer::with(|c| c.clock = clock.clone()).await;
    let setup = history(&s, &s.client).await;
    let mut rules = std::collections::HashMap::new();
    for (name, scope, condition, cooldown) in [
        (
            "above",
            json!({"material_id": setup.material}),
            json!({"type": "price_above", "threshold": 15.0}),
            3600,
        ),
        (
            "above, short cooldown",
            json!({}),
            json!({"type": "price_above", "threshold": 50.0}),
            1,
        ),
        (
            "below",
            json!({"category": "steel"}),
            json!({"type": "price_below", "threshold": 5.0}),
            3600,
        ),
        (
            "jump",
            json!({"supplier_id": setup.supplier}),
            json!({"type": "pct_change", "threshold": 20.0, "window_days": 7}),
            3600,
        ),
        (
            "anomaly",
            json!({}),
            json!({"type": "anomaly", "level": "high"}),
            3600,
        ),
        (
            "quote",
            json!({"material_id": setup.material}),
            json!({"type": "quote_above_prediction", "threshold": 10.0}),
            3600,
        ),
        (
            "other category",
            json!({"category": "copper"}),
            json!({"type": "price_above", "threshold": 1.0}),
            3600,
        ),
    ] {
        let (status, rule) = post(
            &s,
            &s.client,
            "/api/v1/alerts",
            &json!({"name": name, "scope": scope,
            "condition": condition, "cooldown_seconds": cooldown}),
        )
        .await;
        assert_eq!(status, 201, "{rule}");
        assert_eq!(rule["channels"], json!(["websocket"]));
        rules.insert(name, rule["id"].as_str().unwrap().to_string());
    }
    let count = |events: &[Value]| events.len();
    let ws = s.base.replace("http://", "ws://");
    let key = common::ADMIN_KEY;
    let (mut socket, _) =
        tokio_tungstenite::connect_async(format!("{ws}/ws/notifications?api_key={key}"))
            .await
            .unwrap();

    // A price like the others: nothing fires.
    let now = chrono::Utc::now();
    quote(&s, &s.client, &setup, 10.1, now).await;
    for (name, id) in &rules {
        assert_eq!(count(&events_of(&s, &s.client, id).await), 0, "{name}");
    }

    // Tenfold: above both thresholds, 900% off the 7-day mean, a high anomaly, far above the predicted
    // interval. Each of those rules opens one event, heard on the WebSocket within a second.
    let sent = Instant::now();
    let slip = quote(&s, &s.client, &setup, 100.0, now).await;
    assert_eq!(slip["anomaly"]["severity"], "high", "{slip}");
    let mut heard = Vec::new();
    while heard.len() < 5 {
        let frame = tokio::time::timeout(
            Duration::from_secs(1).saturating_sub(sent.elapsed()),
            socket.next(),
        )
        .await
        .unwrap_or_else(|_| panic!("5 alerts within 1 s of the ingest; heard {heard:?}"))
        .unwrap()
        .unwrap();
        let frame: Value = serde_json::from_str(frame.to_text().unwrap()).unwrap();
        assert_eq!(frame["type"], "alert.fired", "{frame}");
        assert_eq!(frame["event"]["price_id"], slip["id"]);
        heard.push(frame["rule"]["name"].as_str().unwrap().to_string());
    }
    println!(
        "5 alerts heard {} ms after the ingest began",
        sent.elapsed().as_millis()
    );
    heard.sort();
    assert_eq!(
        heard,
        ["above", "above, short cooldown", "anomaly", "jump", "quote"]
    );
    for name in ["above", "above, short cooldown", "anomaly", "jump", "quote"] {
        let events = events_of(&s, &s.client, &rules[name]).await;
        assert_eq!(count(&events), 1, "{name}");
        assert_eq!(
            (&events[0]["status"], &events[0]["breach_count"]),
            (&json!("open"), &json!(1))
        );
    }
    let jump = &events_of(&s, &s.client, &rules["jump"]).await[0];
    assert!(
        jump["message"].as_str().unwrap().contains("7-day mean"),
        "{jump}"
    );
    assert!(jump["value"].as_f64().unwrap() > 800.0, "{jump}");

    // Again at once: inside every cooldown, so the breaches fold into the open events.
    quote(&s, &s.client, &setup, 100.0, now).await;
    for name in ["above", "above, short cooldown", "anomaly", "jump", "quote"] {
        let events = events_of(&s, &s.client, &rules[name]).await;
        assert_eq!(
            (count(&events), &events[0]["breach_count"]),
            (1, &json!(2)),
            "{name}"
        );
    }
    // Far below: the category rule fires; the supplier's jump rule folds it into its event.
    quote(&s, &s.client, &setup, 2.0, now).await;
    assert_eq!(count(&events_of(&s, &s.client, &rules["below"]).await), 1);
    assert_eq!(
        events_of(&s, &s.client, &rules["jump"]).await[0]["breach_count"],
        3
    );
    assert_eq!(
        count(&events_of(&s, &s.client, &rules["other category"]).await),
        0
    );

    // Past a one-second cooldown, a new event.
    clock.advance(Duration::from_millis(1100));
    quote(&s, &s.client, &setup, 100.0, now).await;
    assert_eq!(
        count(&events_of(&s, &s.client, &rules["above, short cooldown"]).await),
        2
    );
    assert_eq!(count(&events_of(&s, &s.client, &rules["above"]).await), 1);

    // History being loaded alerts nobody: a price of a month ago.
    let before = events_of(&s, &s.client, &rules["above"]).await[0]["breach_count"].clone();
    quote(
        &s,
        &s.client,
        &setup,
        100.0,
        now - chrono::Duration::days(30),
    )
    .await;
    assert_eq!(
        events_of(&s, &s.client, &rules["above"]).await[0]["breach_count"],
        before
    );

    // People: acknowledge, resolve; a resolved event is final.
    let id = events_of(&s, &s.client, &rules["above"]).await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, event) = post(
        &s,
        &s.client,
        &format!("/api/v1/alerts/events/{id}/acknowledge"),
        &json!({}),
    )
    .await;
    assert_eq!(
        (status, &event["status"]),
        (200, &json!("acknowledged")),
        "{event}"
    );
    let (status, event) = post(
        &s,
        &s.client,
        &format!("/api/v1/alerts/events/{id}/resolve"),
        &json!({}),
    )
    .await;
    assert_eq!(
        (status, &event["status"]),
        (200, &json!("resolved")),
        "{event}"
    );
    assert!(event["resolved_at"].is_string());
    let (status, body) = post(
        &s,
        &s.client,
        &format!("/api/v1/alerts/events/{id}/resolve"),
        &json!({}),
    )
    .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (409, &json!("conflict")),
        "{body}"
    );
    let (status, listed) = get(&s, &s.client, "/api/v1/alerts/events?status=resolved").await;
    assert_eq!(
        (status, listed["items"].as_array().unwrap().len()),
        (200, 1)
    );

    // A disabled rule judges nothing; a deleted one is gone with its events.
    let r = s
        .client
        .patch(s.url(&format!("/api/v1/alerts/{}", rules["below"])))
        .json(&json!({"enabled": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    clock.advance(Duration::from_millis(1100));
    quote(&s, &s.client, &setup, 2.0, now).await;
    assert_eq!(
        events_of(&s, &s.client, &rules["below"]).await[0]["breach_count"],
        1
    );
    let r = s
        .client
        .delete(s.url(&format!("/api/v1/alerts/{}", rules["below"])))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(count(&events_of(&s, &s.client, &rules["below"]).await), 0);
}

/// Bad rules get a clear 4xx in the one envelope; one organization's rules and events are invisible to
/// another, and its prices never trip another's rules.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_are_checked_and_organizations_never_cross() {
    let s = TestServer::start().await;
    let a = history(&s, &s.client).await;
    let (status, org) = post(
        &s,
        &s.client,
        "/api/v1/organizations",
        &json!({"name": "B"}),
    )
    .await;
    assert_eq!(status, 201);
    let b = client_with(org["api_key"]["secret"].as_str().unwrap());
    let good = json!({"name": "ok", "condition": {"type": "price_above", "threshold": 20.0}});
    let with = |patch: Value| {
        let mut r = good.clone();
        for (k, v) in patch.as_object().unwrap() {
            r[k] = v.clone();
        }
        r
    };
    for (client, body, status_want, code_want, says) in [
        (
            &s.client,
            with(json!({"condition": {"type": "price_sideways", "threshold": 1.0}})),
            400,
            "validation_error",
            "price_sideways",
        ),
        (
            &s.client,
            with(json!({"condition": {"type": "price_above", "threshold": "twenty"}})),
            400,
            "validation_error",
            "condition",
        ),
        (
            &s.client,
            with(json!({"condition": {"type": "price_above", "threshold": -1.0}})),
            400,
            "validation_error",
            "threshold",
        ),
        (
            &s.client,
            with(
                json!({"condition": {"type": "pct_change", "threshold": 5.0, "window_days": 400}}),
            ),
            400,
            "validation_error",
            "window_days",
        ),
        (
            &s.client,
            with(json!({"condition": {"type": "anomaly", "level": "severe"}})),
            400,
            "validation_error",
            "severe",
        ),
        (
            &s.client,
            with(json!({"scope": {"material_id": a.material, "category": "steel"}})),
            400,
            "validation_error",
            "scope",
        ),
        (
            &b,
            with(json!({"scope": {"material_id": a.material}})),
            400,
            "validation_error",
            "scope.material_id",
        ),
        (
            &b,
            with(json!({"scope": {"supplier_id": a.supplier}})),
            400,
            "validation_error",
            "scope.supplier_id",
        ),
        (
            &s.client,
            with(
                json!({"channels": [{"webhook": {"url": "ftp://example.com/x", "secret": "0123456789abcdef"}}]}),
            ),
            400,
            "validation_error",
            "url",
        ),
        (
            &s.client,
            with(
                json!({"channels": [{"webhook": {"url": "not a url", "secret": "0123456789abcdef"}}]}),
            ),
            400,
            "validation_error",
            "url",
        ),
        (
            &s.client,
            with(
                json!({"channels": [{"webhook": {"url": "https://example.com/x", "secret": "short"}}]}),
            ),
            400,
            "validation_error",
            "secret",
        ),
        (
            &s.client,
            with(json!({"channels": ["carrier pigeon"]})),
            400,
            "validation_error",
            "channels",
        ),
        (
            &s.client,
            with(json!({"cooldown_seconds": 315_360_001u64})),
            400,
            "validation_error",
            "cooldown_seconds",
        ),
    ] {
        let (status, body) = post(&s, client, "/api/v1/alerts", &body).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (status_want, Some(code_want)),
            "{body}"
        );
        assert!(body.to_string().contains(says), "{says}: {body}");
    }
    let (status, rule) = post(&s, &s.client, "/api/v1/alerts", &with(json!({"channels":
        ["websocket", {"webhook": {"url": "https://hooks.example.com/mercator", "secret": "0123456789abcdef"}}]}))).await;
    assert_eq!(status, 201, "{rule}");
    assert!(
        !rule.to_string().contains("0123456789abcdef"),
        "the secret is never shown: {rule}"
    );
    // A cooldown past ten years is refused on a change as well (2^63 once saturated to i64::MAX).
    let rule_path = format!("/api/v1/alerts/{}", rule["id"].as_str().unwrap());
    let resp = s
        .client
        .patch(s.url(&rule_path))
        .json(&json!({"cooldown_seconds": 9_223_372_036_854_775_808u64}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert!(body.to_string().contains("cooldown_seconds"), "{body}");
    let (_, unchanged) = get(&s, &s.client, &rule_path).await;
    assert_eq!(unchanged["cooldown_seconds"], 3600, "{unchanged}");
    let (status, body) = post(&s, &s.client, "/api/v1/alerts", &good).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (409, &json!("conflict")),
        "{body}"
    );

    // B's catch-all rule and WebSocket: A's prices reach neither.
    let (status, b_rule) = post(
        &s,
        &b,
        "/api/v1/alerts",
        &json!({"name": "all",
        "condition": {"type": "price_above", "threshold": 1.0}}),
    )
    .await;
    assert_eq!(status, 201, "{b_rule}");
    let ws = s.base.replace("http://", "ws://");
    let b_key = org["api_key"]["secret"].as_str().unwrap();
    let (mut b_socket, _) =
        tokio_tungstenite::connect_async(format!("{ws}/ws/notifications?api_key={b_key}"))
            .await
            .unwrap();
    quote(&s, &s.client, &a, 30.0, chrono::Utc::now()).await;
    let (_, a_events) = get(&s, &s.client, "/api/v1/alerts/events").await;
    assert_eq!(a_events["items"].as_array().unwrap().len(), 1, "{a_events}");
    let a_event = a_events["items"][0]["id"].as_str().unwrap();
    let (_, b_events) = get(&s, &b, "/api/v1/alerts/events").await;
    assert_eq!(b_events["items"], json!([]));
    assert!(
        tokio::time::timeout(Duration::from_millis(500), b_socket.next())
            .await
            .is_err(),
        "B hears nothing of A"
    );
    for path in [
        format!("/api/v1/alerts/{}", rule["id"].as_str().unwrap()),
        format!("/api/v1/alerts/events/{a_event}"),
    ] {
        let (status, _) = get(&s, &b, &path).await;
        assert_eq!(status, 404, "{path}");
    }
    let (status, _) = post(
        &s,
        &b,
        &format!("/api/v1/alerts/events/{a_event}/acknowledge"),
        &json!({}),
    )
    .await;
    assert_eq!(status, 404);
    let (_, b_rules) = get(&s, &b, "/api/v1/alerts").await;
    assert_eq!(b_rules["items"].as_array().unwrap().len(), 1);
}

/// What a webhook receiver got: headers and body of every request, by path.
type Received = std::sync::Arc<std::sync::Mutex<Vec<(String, axum::http::HeaderMap, String)>>>;

/// A receiver on loopback: `/good` answers 200, `/flaky` 500 the first time and 200 after, `/down` always
/// 500.
async fn receiver() -> (String, Received) {
    use axum::extract::{Path, State};
    let got: Received = Default::default();
    let app = axum::Router::new()
        .route(
            "/{which}",
            axum::routing::post(
                |State(got): State<Received>,
                 Path(which): Path<String>,
                 headers: axum::http::HeaderMap,
                 body: String| async move {
                    let mut got = got.lock().unwrap();
                    let before = got.iter().filter(|(p, _, _)| *p == which).count();
                    got.push((which.clone(), headers, body));
                    match (which.as_str(), before) {
                        ("good", _) | ("flaky", 1..) => axum::http::StatusCode::OK,
                        _ => axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                    }
                },
            ),
        )
        .with_state(got.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, got)
}

/// Standard Webhooks' check, written here from the specification: v1,base64(HMAC-SHA256(key, id.ts.body)).
fn verifies(secret: &str, headers: &axum::http::HeaderMap, body: &str) -> bool {
    use base64::Engine;
    use hmac::Mac;
    let key = match secret.strip_prefix("whsec_") {
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap(),
        None => secret.as_bytes().to_vec(),
    };
    let (id, ts) = (
        headers["webhook-id"].to_str().unwrap(),
        headers["webhook-timestamp"].to_str().unwrap(),
    );
    let age = chrono::Utc::now().timestamp() - ts.parse::<i64>().unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.{body}").as_bytes());
    let expected = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    );
    age.abs() <= 300
        && headers["webhook-signature"]
            .to_str()
            .unwrap()
            .split(' ')
            .any(|s| s == expected)
}

/// Each rule's webhook gets its event signed; a receiver answering 500 gets the same message again after the
/// retry delay; one that keeps failing runs out of retries, recorded, without holding up the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_signed_retried_and_a_failing_one_blocks_nothing() {
    let s = TestServer::with(|c| {
        c.webhook_retry_ms = vec![100, 200];
        c.webhook_allow_private = true;
    })
    .await;
    let setup = history(&s, &s.client).await;
    let (url, got) = receiver().await;
    let secrets = [
        ("good", "plain-secret-0123456789"),
        ("flaky", "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"),
        ("down", "another-secret-0123456789"),
    ];
    let mut rules = Vec::new();
    for (i, (path, secret)) in secrets.iter().enumerate() {
        let (status, rule) = post(
            &s,
            &s.client,
            "/api/v1/alerts",
            &json!({"name": path,
            "condition": {"type": "price_above", "threshold": 15.0 + i as f64},
            "channels": [{"webhook": {"url": format!("{url}/{path}"), "secret": secret}}]}),
        )
        .await;
        assert_eq!(status, 201, "{rule}");
        rules.push(rule["id"].as_str().unwrap().to_string());
    }
    let sent = Instant::now();
    quote(&s, &s.client, &setup, 100.0, chrono::Utc::now()).await;
    // Good at once, flaky on its retry, down after its two retries.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut good_after = None;
    loop {
        let counts: Vec<usize> = ["good", "flaky", "down"]
            .iter()
            .map(|p| {
                got.lock()
                    .unwrap()
                    .iter()
                    .filter(|(w, _, _)| w == p)
                    .count()
            })
            .collect();
        if counts[0] == 1 && good_after.is_none() {
            good_after = Some(sent.elapsed());
        }
        if counts == [1, 2, 3] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "deliveries by receiver: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("good receiver reached after {:?}", good_after.unwrap());
    let got = got.lock().unwrap().clone();
    for (path, secret) in secrets {
        let requests: Vec<_> = got.iter().filter(|(p, _, _)| p == path).collect();
        let ids: std::collections::HashSet<_> = requests
            .iter()
            .map(|(_, h, _)| h["webhook-id"].clone())
            .collect();
        assert_eq!(ids.len(), 1, "{path}: one message id across attempts");
        for (_, headers, body) in &requests {
            assert!(
                verifies(secret, headers, body),
                "{path}: the signature verifies"
            );
            assert!(!verifies("not-the-secret-000000", headers, body));
            let body: Value = serde_json::from_str(body).unwrap();
            assert_eq!(body["type"], "alert.fired");
            assert_eq!(body["rule"]["name"], path);
        }
    }
    // At rest, in the SQLite files, the secrets are sealed: none is there in the clear.
    let dir = s.data_dir.as_ref().unwrap().path();
    for file in ["mercator.db", "mercator.db-wal"] {
        let bytes = std::fs::read(dir.join(file)).unwrap_or_default();
        for (_, secret) in secrets {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{file} holds a webhook secret in the clear"
            );
        }
    }
    // The delivery log: delivered after 1 and 2 attempts, failed after 3.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for (rule, (status_want, attempts, code)) in rules.iter().zip([
        ("delivered", 1, 200),
        ("delivered", 2, 200),
        ("failed", 3, 500),
    ]) {
        let event = &events_of(&s, &s.client, rule).await[0];
        let (status, log) = get(
            &s,
            &s.client,
            &format!(
                "/api/v1/alerts/events/{}/deliveries",
                event["id"].as_str().unwrap()
            ),
        )
        .await;
        assert_eq!(status, 200);
        let d = &log[0];
        assert_eq!(
            (&d["status"], &d["attempts"], &d["last_status_code"]),
            (&json!(status_want), &json!(attempts), &json!(code)),
            "{log}"
        );
    }
}

/// Forecast rules run on the schedule: one whose threshold the forecast's move exceeds opens an event (once,
/// within the cooldown), one whose threshold it does not stays quiet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forecast_rules_fire_on_the_schedule() {
    let s = TestServer::with(|c| c.forecast_alert_interval = Duration::from_millis(500)).await;
    let setup = history(&s, &s.client).await;
    let horizon = 14;
    let (status, forecast) = post(
        &s,
        &s.client,
        "/api/v1/analytics/forecast",
        &json!({"material_id": setup.material, "horizon_days": horizon}),
    )
    .await;
    assert_eq!(status, 200, "{forecast}");
    let points = forecast["points"].as_array().unwrap();
    let first = points[0]["value"].as_f64().unwrap();
    let last = points[horizon - 1]["value"].as_f64().unwrap();
    let moves = ((last / first - 1.0) * 100.0).abs();
    assert!(moves > 0.0);
    let mut ids = Vec::new();
    for (name, threshold) in [("moves", moves * 0.5), ("still", moves * 2.0)] {
        let (status, rule) = post(&s, &s.client, "/api/v1/alerts", &json!({"name": name,
            "scope": {"category": "steel"},
            "condition": {"type": "forecast_change", "threshold": threshold, "horizon_days": horizon}})).await;
        assert_eq!(status, 201, "{rule}");
        ids.push(rule["id"].as_str().unwrap().to_string());
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let events = events_of(&s, &s.client, &ids[0]).await;
        if events
            .first()
            .is_some_and(|e| e["breach_count"].as_u64().unwrap() >= 2)
        {
            assert_eq!(events.len(), 1, "one event inside the cooldown");
            assert!(
                (events[0]["value"].as_f64().unwrap().abs() - moves).abs() < 1e-6 * moves.max(1.0),
                "{events:?}"
            );
            assert!(events[0]["price_id"].is_null());
            break;
        }
        assert!(Instant::now() < deadline, "{events:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(events_of(&s, &s.client, &ids[1]).await.len(), 0);
    let (status, body) = post(
        &s,
        &s.client,
        "/api/v1/alerts",
        &json!({"name": "too far",
        "condition": {"type": "forecast_change", "threshold": 5.0, "horizon_days": 40}}),
    )
    .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("validation_error")),
        "{body}"
    );
}

/// Webhooks never reach inside the network without --webhook-allow-private: a URL naming a loopback,
/// private or link-local address (in any spelling) is refused at rule creation, and a rule made while the
/// flag was on is never delivered once it is off: the receiver on 127.0.0.1 sees nothing, and the delivery
/// log says `blocked`, not what a connection attempt would have told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_never_reach_inside_the_network_without_the_flag() {
    let (url, got) = receiver().await;
    let port = url.rsplit(':').next().unwrap().to_string();
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_path_buf();
    // Made while private receivers are allowed.
    let mut open = TestServer::with(|c| {
        c.data_dir = dir.clone();
        c.webhook_allow_private = true;
        c.webhook_retry_ms = vec![100];
    })
    .await;
    let setup = history(&open, &open.client).await;
    let (status, rule) = post(
        &open,
        &open.client,
        "/api/v1/alerts",
        &json!({"name": "inside", "condition": {"type": "price_above", "threshold": 20.0},
            "channels": [{"webhook": {"url": format!("{url}/good"), "secret": "0123456789abcdef"}}]}),
    )
    .await;
    assert_eq!(status, 201, "{rule}");
    open.stop().await.unwrap();

    let s = TestServer::with(|c| {
        c.data_dir = dir.clone();
        c.webhook_retry_ms = vec![100];
    })
    .await;
    for inside in [
        format!("http://127.0.0.1:{port}/good"),
        format!("http://127.1:{port}/good"),
        format!("http://2130706433:{port}/good"),
        format!("http://[::1]:{port}/good"),
        format!("http://[::ffff:127.0.0.1]:{port}/good"),
        format!("http://localhost:{port}/good"),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        "http://10.0.0.1/hook".to_string(),
        "http://192.168.1.1/hook".to_string(),
    ] {
        let (status, body) = post(
            &s,
            &s.client,
            "/api/v1/alerts",
            &json!({"name": "probe", "condition": {"type": "price_above", "threshold": 20.0},
                "channels": [{"webhook": {"url": inside, "secret": "0123456789abcdef"}}]}),
        )
        .await;
        assert_eq!(status, 400, "{inside}: {body}");
        assert!(
            body["error"]["details"]["channels.webhook.url"].is_array(),
            "{inside}: {body}"
        );
    }
    quote(&s, &s.client, &setup, 100.0, chrono::Utc::now()).await;
    let event = loop {
        if let Some(e) = events_of(&s, &s.client, rule["id"].as_str().unwrap())
            .await
            .first()
        {
            break e.clone();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let log = loop {
        let (status, log) = get(
            &s,
            &s.client,
            &format!(
                "/api/v1/alerts/events/{}/deliveries",
                event["id"].as_str().unwrap()
            ),
        )
        .await;
        assert_eq!(status, 200);
        if log[0]["status"] == "failed" {
            break log;
        }
        assert!(Instant::now() < deadline, "{log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(log[0]["attempts"], 2, "{log}");
    assert_eq!(log[0]["last_status_code"], Value::Null, "{log}");
    assert_eq!(log[0]["last_error"], "blocked", "{log}");
    assert!(
        got.lock().unwrap().is_empty(),
        "the receiver inside was never reached"
    );
}
