//! Triton's model repository extension over a live server: a new version appears on disk and is loaded
//! while requests run (none fails; new requests switch to it), taken away and loaded again (back to the
//! old one), unloaded (404) and loaded once more. Real ONNX Runtime sessions, real HTTP.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{assert_close, floats, price_repository, price_rows, TestServer};
use serde_json::{json, Value};

const MODEL: &str = "price-swap";

/// Copies version 1 of `model` to version `v` in the repository folder.
fn add_version(repo: &std::path::Path, model: &str, v: u64) {
    let from = repo.join(model).join("1");
    let to = repo.join(model).join(v.to_string());
    std::fs::create_dir_all(&to).unwrap();
    std::fs::copy(from.join("model.onnx"), to.join("model.onnx")).unwrap();
    let manifest = std::fs::read_to_string(from.join("model.toml"))
        .unwrap()
        .replace("version = 1", &format!("version = {v}"));
    std::fs::write(to.join("model.toml"), manifest).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_swap_under_load_with_no_failed_request() {
    let repo = price_repository(MODEL, 64, 4096, 0);
    let s = TestServer::with(|c| c.models_dir = repo.path().to_path_buf()).await;
    let infer = format!("/v2/models/{MODEL}/infer");

    // Clients that keep inferring, and record which version answered each request.
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..4 {
        let (client, url, stop) = (s.client.clone(), s.url(&infer), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut seen: Vec<String> = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let (request, expected) = price_rows(1 + (i + c) % 3, i * 7 + c);
                let r = client.post(&url).json(&request).send().await.unwrap();
                let status = r.status();
                let body: Value = r.json().await.unwrap();
                assert_eq!(status, 200, "request {i} of client {c} failed: {body}");
                assert_close(&floats(&body["outputs"][0]["data"]), &expected, "price");
                seen.push(body["model_version"].as_str().unwrap().to_string());
                i += 1;
            }
            seen
        }));
    }
    let wait_for_version = |v: &'static str| {
        let (client, url) = (s.client.clone(), s.url(&infer));
        async move {
            for _ in 0..500 {
                let (request, _) = price_rows(1, 0);
                let body: Value = client
                    .post(&url)
                    .json(&request)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                if body["model_version"] == v {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("version {v} never answered");
        }
    };
    tokio::time::sleep(Duration::from_millis(200)).await;

    // A version 2 appears on disk and is loaded beside version 1, which stays active; then it is activated,
    // and rolled back, while the clients run.
    add_version(repo.path(), MODEL, 2);
    let (status, body) = s
        .post(&format!("/v2/repository/models/{MODEL}/load"), &json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, meta) = s.get(&format!("/v2/models/{MODEL}")).await;
    assert_eq!(meta["versions"], json!(["1", "2"]));
    let (_, model) = s.get(&format!("/api/v1/models/{MODEL}")).await;
    assert_eq!(
        model["active_version"], 1,
        "loading a version does not activate it: {model}"
    );
    let (status, model) = s
        .post(
            &format!("/api/v1/models/{MODEL}/versions/2/activate"),
            &json!({}),
        )
        .await;
    assert_eq!(
        (status, &model["active_version"], &model["previous_version"]),
        (200, &json!(2), &json!(1))
    );
    wait_for_version("2").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, model) = s
        .post(&format!("/api/v1/models/{MODEL}/rollback"), &json!({}))
        .await;
    assert_eq!(
        (status, &model["active_version"], &model["previous_version"]),
        (200, &json!(1), &json!(2))
    );
    wait_for_version("1").await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Version 2 is retired (the active one cannot be) and leaves the source folder; a reload keeps it out.
    let (status, body) = s
        .delete(&format!("/api/v1/models/{MODEL}/versions/1"))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("conflict")),
        "{body}"
    );
    let (status, _) = s
        .delete(&format!("/api/v1/models/{MODEL}/versions/2"))
        .await;
    assert_eq!(status, 204);
    std::fs::remove_dir_all(repo.path().join(MODEL).join("2")).unwrap();
    let (status, _) = s
        .post(&format!("/v2/repository/models/{MODEL}/load"), &json!({}))
        .await;
    assert_eq!(status, 200);
    let (status, body) = s
        .post(
            &format!("/api/v1/models/{MODEL}/versions/2/activate"),
            &json!({}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("conflict")),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("retired"),
        "{body}"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;

    stop.store(true, Ordering::Relaxed);
    let mut versions = std::collections::BTreeSet::new();
    let mut total = 0;
    for c in clients {
        let seen = c.await.expect("no client saw a failure");
        total += seen.len();
        versions.extend(seen);
    }
    assert!(
        total > 100,
        "the clients kept the model busy: {total} requests"
    );
    assert_eq!(
        versions.into_iter().collect::<Vec<_>>(),
        ["1", "2"],
        "responses switched version"
    );

    // Unload: not found; the index says so; load: served again.
    let (status, _) = s
        .post(&format!("/v2/repository/models/{MODEL}/unload"), &json!({}))
        .await;
    assert_eq!(status, 200);
    let (request, _) = price_rows(1, 0);
    let (status, body) = s.post(&infer, &request).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("model_not_found"))
    );
    let (_, index) = s.post("/v2/repository/index", &json!({})).await;
    assert_eq!(
        index,
        json!([{ "name": MODEL, "version": "1", "state": "UNAVAILABLE", "reason": "unloaded" }])
    );
    let (status, body) = s.get("/readyz").await;
    assert_eq!(
        status, 200,
        "an unloaded model does not make the server unready: {body}"
    );
    let (status, _) = s
        .post(&format!("/v2/repository/models/{MODEL}/load"), &json!({}))
        .await;
    assert_eq!(status, 200);
    let (status, _) = s.post(&infer, &request).await;
    assert_eq!(status, 200);
    let (_, index) = s.post("/v2/repository/index", &json!({})).await;
    assert_eq!(
        index,
        json!([{ "name": MODEL, "version": "1", "state": "READY", "reason": "" }])
    );

    // Bad requests, and only the platform owner may change what is served.
    let (status, body) = s.post("/v2/repository/models/nope/load", &json!({})).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("model_not_found"))
    );
    let tenant_admin = s.organization("Tenant").await;
    let r = tenant_admin
        .post(s.url(&format!("/v2/repository/models/{MODEL}/unload")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let (status, _) = s.post(&infer, &request).await;
    assert_eq!(status, 200, "still served");

    // Every load and unload is in the platform organization's audit log, with what served before and after.
    let (_, log) = s.get("/api/v1/audit?target_type=model").await;
    let actions: Vec<&str> = log["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "model.load",
            "model.unload",
            "model.load",
            "model.retire",
            "model.rollback",
            "model.activate",
            "model.load"
        ],
        "{log}"
    );
    let retired = &log["items"][3];
    assert_eq!(retired["before"]["version"], 2, "{retired}");
    assert_eq!(
        retired["before"]["sha256"].as_str().map(str::len),
        Some(64),
        "{retired}"
    );
    let first = &log["items"][6];
    assert_eq!(
        (
            &first["before"]["served_versions"],
            &first["after"]["served_versions"]
        ),
        (&json!([1]), &json!([1, 2]))
    );
    let activate = &log["items"][5];
    assert_eq!(
        (
            &activate["before"]["active_version"],
            &activate["after"]["active_version"]
        ),
        (&json!(1), &json!(2))
    );
}

/// `mercator_model_sessions` of version 1 of `model`, from /metrics.
async fn sessions(s: &TestServer, model: &str) -> f64 {
    let series = format!("mercator_model_sessions{{model=\"{model}\",version=\"1\"}} ");
    s.metrics()
        .await
        .lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// Threads of this process whose name starts with `prefix` (Linux keeps 15 characters of a name).
fn threads(prefix: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|name| name.trim_end().starts_with(prefix))
        })
        .count()
}

/// Unloading a model retires its versions: once nothing holds them, their workers stop and their ONNX
/// Runtime sessions are freed (the session gauge counts sessions alive: it is decremented when one is
/// dropped); loading the model again brings them back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unloading_frees_the_sessions() {
    const FREED: &str = "price-free";
    let repo = price_repository(FREED, 64, 4096, 0);
    let manifest = repo.path().join(FREED).join("1").join("model.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, text.replace("count = 1", "count = 4")).unwrap();
    let s = TestServer::with(|c| c.models_dir = repo.path().to_path_buf()).await;
    let (request, _) = price_rows(8, 0);
    assert_eq!(
        s.post(&format!("/v2/models/{FREED}/infer"), &request)
            .await
            .0,
        200
    );
    let workers = "model-price-fre";
    assert_eq!((sessions(&s, FREED).await, threads(workers)), (4.0, 4));

    let (status, _) = s
        .post(&format!("/v2/repository/models/{FREED}/unload"), &json!({}))
        .await;
    assert_eq!(status, 200);
    for _ in 0..400 {
        if sessions(&s, FREED).await == 0.0 && threads(workers) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        (sessions(&s, FREED).await, threads(workers)),
        (0.0, 0),
        "the retired version's sessions are freed and its workers gone"
    );

    let (status, _) = s
        .post(&format!("/v2/repository/models/{FREED}/load"), &json!({}))
        .await;
    assert_eq!(status, 200);
    // A new thread names itself once it runs: give the workers a moment to be seen by name.
    for _ in 0..200 {
        if threads(workers) == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!((sessions(&s, FREED).await, threads(workers)), (4.0, 4));
    assert_eq!(
        s.post(&format!("/v2/models/{FREED}/infer"), &request)
            .await
            .0,
        200
    );
}

/// The active version is the store's: a restart serves what was left active, and rollback still knows
/// where to return.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activations_survive_a_restart() {
    const KEPT: &str = "price-kept";
    let repo = price_repository(KEPT, 64, 4096, 0);
    add_version(repo.path(), KEPT, 2);
    let data = tempfile::tempdir().unwrap();
    let start = || {
        let (models, data) = (repo.path().to_path_buf(), data.path().to_path_buf());
        TestServer::with(move |c| {
            c.models_dir = models;
            c.data_dir = data;
        })
    };
    let (request, _) = price_rows(1, 0);
    let infer = format!("/v2/models/{KEPT}/infer");

    let mut first = start().await;
    assert_eq!(
        first.post(&infer, &request).await.1["model_version"],
        "2",
        "newest by default"
    );
    let (status, body) = first
        .post(&format!("/api/v1/models/{KEPT}/rollback"), &json!({}))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("conflict")),
        "nothing to roll back to"
    );
    let (status, _) = first
        .post(
            &format!("/api/v1/models/{KEPT}/versions/1/activate"),
            &json!({}),
        )
        .await;
    assert_eq!(status, 200);
    first.stop().await.unwrap();

    let second = start().await;
    assert_eq!(
        second.post(&infer, &request).await.1["model_version"],
        "1",
        "as it was left"
    );
    let (_, model) = second.get(&format!("/api/v1/models/{KEPT}")).await;
    assert_eq!(
        (&model["active_version"], &model["previous_version"]),
        (&json!(1), &json!(2))
    );
    let (_, all) = second.get("/api/v1/models").await;
    assert_eq!(all[0]["name"], KEPT);
    assert_eq!(all[0]["versions"].as_array().unwrap().len(), 2);
    assert!(
        all[0]["versions"][0]["stats"]["requests"].as_u64().unwrap() >= 1,
        "{all}"
    );
    // A tenant's WebSocket hears of the switch: models are shared.
    let (_, org) = second
        .post("/api/v1/organizations", &json!({"name": "Tenant"}))
        .await;
    let secret = org["api_key"]["secret"].as_str().unwrap();
    let ws = second.base.replace("http://", "ws://");
    let (mut notifications, _) =
        tokio_tungstenite::connect_async(format!("{ws}/ws/notifications?api_key={secret}"))
            .await
            .unwrap();
    let (status, _) = second
        .post(&format!("/api/v1/models/{KEPT}/rollback"), &json!({}))
        .await;
    assert_eq!(status, 200);
    use futures_util::StreamExt;
    let message = tokio::time::timeout(Duration::from_secs(1), notifications.next())
        .await
        .expect("the model event arrives within 1 s")
        .unwrap()
        .unwrap();
    let event: Value = serde_json::from_str(message.to_text().unwrap()).unwrap();
    assert_eq!(
        (
            &event["type"],
            &event["action"],
            &event["model"],
            &event["after"]["active_version"]
        ),
        (
            &json!("model"),
            &json!("model.rollback"),
            &json!(KEPT),
            &json!(2)
        ),
        "{event}"
    );
    assert!(
        event.get("actor_key_id").is_none(),
        "who did it stays in the owner's audit log"
    );
    assert_eq!(second.post(&infer, &request).await.1["model_version"], "2");
}

/// A multipart upload with the parts given: (name, bytes).
async fn upload(s: &TestServer, model: &str, parts: Vec<(&'static str, Vec<u8>)>) -> (u16, Value) {
    let mut form = reqwest::multipart::Form::new();
    for (name, bytes) in parts {
        form = form.part(name, reqwest::multipart::Part::bytes(bytes).file_name(name));
    }
    let r = s
        .client
        .post(s.url(&format!("/api/v1/models/{model}/versions")))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

/// An uploaded version is checked before anything serves it (parses, matches its manifest, warms up,
/// reproduces its golden outputs); a good one gets the next number and serves beside the active one until
/// activated; a bad one answers 422, serves nothing, and stays in the registry as failed with its reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_is_validated_before_it_serves() {
    const UP: &str = "price-up";
    let repo = price_repository(UP, 64, 4096, 0);
    let s = TestServer::with(|c| c.models_dir = repo.path().to_path_buf()).await;
    let shipped = common::shipped_models().join("price/1");
    let onnx = std::fs::read(shipped.join("model.onnx")).unwrap();
    // The shipped manifest names `price` version 1: the server overrides both.
    let manifest = std::fs::read(shipped.join("model.toml")).unwrap();
    let golden = std::fs::read(common::repo_root().join("fixtures/golden/price.json")).unwrap();

    let (status, body) = upload(
        &s,
        UP,
        vec![
            ("model", onnx.clone()),
            ("manifest", manifest.clone()),
            ("golden", golden.clone()),
        ],
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        (body["version"].as_u64(), body["state"].as_str()),
        (Some(2), Some("ready"))
    );
    assert_eq!(body["sha256"].as_str().map(str::len), Some(64));
    let (_, model) = s.get(&format!("/api/v1/models/{UP}")).await;
    assert_eq!(
        model["active_version"], 1,
        "an upload does not take traffic by itself"
    );
    let (request, expected) = price_rows(3, 5);
    let (status, answer) = s
        .post(&format!("/v2/models/{UP}/versions/2/infer"), &request)
        .await;
    assert_eq!((status, answer["model_version"].as_str()), (200, Some("2")));
    assert_close(
        &floats(&answer["outputs"][0]["data"]),
        &expected,
        "uploaded version",
    );

    // Bad uploads, each refused with a reason, none registered.
    let mut wrong_golden: Value = serde_json::from_slice(&golden).unwrap();
    wrong_golden["outputs"][0]["data"][3] = json!(1234.5);
    let wrong_shape = String::from_utf8(manifest.clone())
        .unwrap()
        .replace("[-1, 20]", "[-1, 19]");
    for (parts, status_want, code, says) in [
        (
            vec![
                ("model", b"not onnx".to_vec()),
                ("manifest", manifest.clone()),
            ],
            422,
            "invalid_model",
            "",
        ),
        (
            vec![
                ("model", onnx.clone()),
                ("manifest", wrong_shape.into_bytes()),
            ],
            422,
            "invalid_model",
            "features",
        ),
        (
            vec![
                ("model", onnx.clone()),
                ("manifest", manifest.clone()),
                ("golden", serde_json::to_vec(&wrong_golden).unwrap()),
            ],
            422,
            "invalid_model",
            "golden",
        ),
        (
            vec![("manifest", manifest.clone())],
            400,
            "validation_error",
            "model",
        ),
        (
            vec![("model", onnx.clone()), ("manifest", b"name = ".to_vec())],
            422,
            "invalid_model",
            "",
        ),
        (
            vec![
                ("model", onnx.clone()),
                ("manifest", manifest.clone()),
                ("extra", vec![1]),
            ],
            400,
            "validation_error",
            "extra",
        ),
    ] {
        let (status, body) = upload(&s, UP, parts).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (status_want, Some(code)),
            "{body}"
        );
        assert!(
            body["error"]["message"].as_str().unwrap().contains(says),
            "{body}"
        );
    }
    let r = s
        .client
        .post(s.url(&format!("/api/v1/models/{UP}/versions")))
        .json(&json!({"model": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let (_, meta) = s.get(&format!("/v2/models/{UP}")).await;
    assert_eq!(
        meta["versions"],
        json!(["1", "2"]),
        "no failed upload serves"
    );
    // The registry keeps the three uploads that reached validation as failed, each with its reason.
    let (_, model) = s.get(&format!("/api/v1/models/{UP}")).await;
    let states: Vec<(u64, &str, bool)> = model["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            let reason = v["reason"].as_str().unwrap_or_default();
            (
                v["version"].as_u64().unwrap(),
                v["state"].as_str().unwrap(),
                !reason.is_empty(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            (1, "ready", false),
            (2, "ready", false),
            (3, "failed", true),
            (4, "failed", true),
            (5, "failed", true)
        ],
        "{model}"
    );
    for action in ["activate", "load"] {
        let (status, body) = s
            .post(
                &format!("/api/v1/models/{UP}/versions/4/{action}"),
                &json!({}),
            )
            .await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (409, Some("conflict")),
            "{body}"
        );
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("failed"),
            "{body}"
        );
    }
    let split = json!({"split": [{"version": 1, "percent": 90}, {"version": 5, "percent": 10}]});
    let (status, body) = s.put(&format!("/api/v1/models/{UP}/traffic"), &split).await;
    assert_eq!(status, 409, "a split may not name a failed version: {body}");

    // The next good upload is version 6; activating it moves the traffic.
    let (status, body) = upload(&s, UP, vec![("model", onnx), ("manifest", manifest)]).await;
    assert_eq!((status, body["version"].as_u64()), (201, Some(6)));
    let (status, _) = s
        .post(
            &format!("/api/v1/models/{UP}/versions/6/activate"),
            &json!({}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        s.post(&format!("/v2/models/{UP}/infer"), &request).await.1["model_version"],
        "6"
    );
    let (_, log) = s.get("/api/v1/audit?action=model.upload").await;
    assert_eq!(log["total"], 2);

    // Each version says what it is, and when and by whom it was registered.
    let (_, keys) = s.get("/api/v1/api-keys").await;
    let owner_key = keys["items"][0]["id"].as_str().unwrap().to_string();
    let (status, v2) = s.get(&format!("/api/v1/models/{UP}/versions/2")).await;
    assert_eq!(status, 200, "{v2}");
    assert_eq!(
        (&v2["manifest"]["name"], &v2["manifest"]["version"]),
        (&json!(UP), &json!(2))
    );
    assert_eq!(v2["registered"]["created_by"], owner_key.as_str());
    assert_eq!(v2["registered"]["sha256"], v2["sha256"]);
    let (_, v1) = s.get(&format!("/api/v1/models/{UP}/versions/1")).await;
    assert_eq!(v1["registered"]["created_by"], "import");
    let (status, _) = s.get(&format!("/api/v1/models/{UP}/versions/9")).await;
    assert_eq!(status, 404);
}

/// A 90/10 canary over 2,000 unnamed requests, with a shadow version that is copied every request and
/// never answers; the policy survives a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_splits_traffic_and_a_shadow_never_answers() {
    const CANARY: &str = "price-canary";
    let repo = price_repository(CANARY, 64, 4096, 0);
    for v in [2, 3] {
        add_version(repo.path(), CANARY, v);
    }
    let data = tempfile::tempdir().unwrap();
    let start = || {
        let (models, data) = (repo.path().to_path_buf(), data.path().to_path_buf());
        TestServer::with(move |c| {
            c.models_dir = models;
            c.data_dir = data;
        })
    };
    let mut s = start().await;
    let traffic = format!("/api/v1/models/{CANARY}/traffic");
    let put = |body: Value| {
        let (client, url) = (s.client.clone(), s.url(&traffic));
        async move {
            let r = client.put(url).json(&body).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }
    };
    let (status, body) =
        put(json!({"split": [{"version": 1, "percent": 90}, {"version": 2, "percent": 5}]})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("validation_error")),
        "{body}"
    );
    let (status, body) =
        put(json!({"split": [{"version": 1, "percent": 90}, {"version": 9, "percent": 10}]})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("version_not_found")),
        "{body}"
    );
    let (status, body) =
        put(json!({"split": [{"version": 1, "percent": 90}, {"version": 2, "percent": 10}], "shadow": 3})).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = s
        .delete(&format!("/api/v1/models/{CANARY}/versions/2"))
        .await;
    assert_eq!(status, 409, "a version in the split cannot be retired");

    let mut tasks = Vec::new();
    for t in 0..8 {
        let (client, url) = (
            s.client.clone(),
            s.url(&format!("/v2/models/{CANARY}/infer")),
        );
        tasks.push(tokio::spawn(async move {
            let mut versions = Vec::new();
            for i in 0..250 {
                let (request, expected) = price_rows(1, t * 250 + i);
                let body: Value = client
                    .post(&url)
                    .json(&request)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                assert_close(&floats(&body["outputs"][0]["data"]), &expected, "canary");
                versions.push(body["model_version"].as_str().unwrap().to_string());
            }
            versions
        }));
    }
    let mut counts = std::collections::BTreeMap::new();
    for t in tasks {
        for v in t.await.unwrap() {
            *counts.entry(v).or_insert(0) += 1;
        }
    }
    assert!(
        !counts.contains_key("3"),
        "the shadow never answers: {counts:?}"
    );
    let canary = counts.get("2").copied().unwrap_or(0) as f64 / 2000.0;
    assert!(
        (canary - 0.10).abs() < 0.03,
        "10% to the canary, got {canary}: {counts:?}"
    );

    let mut figures = Value::Null;
    for _ in 0..400 {
        figures = s.get(&format!("/api/v1/models/{CANARY}")).await.1["shadow"].clone();
        if figures["requests"] == 2000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        (
            &figures["version"],
            &figures["requests"],
            &figures["failures"]
        ),
        (&json!(3), &json!(2000), &json!(0)),
        "{figures}"
    );
    assert_eq!(
        figures["agreement_rate"], 1.0,
        "a copy of the same model agrees: {figures}"
    );

    s.stop().await.unwrap();
    let s = start().await;
    let (_, model) = s.get(&format!("/api/v1/models/{CANARY}")).await;
    assert_eq!(
        model["traffic"],
        json!({"split": [{"version": 1, "percent": 90}, {"version": 2, "percent": 10}], "shadow": 3}),
        "the policy is as it was left"
    );
    let (status, model) = s
        .post(
            &format!("/api/v1/models/{CANARY}/versions/2/activate"),
            &json!({}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        model["traffic"],
        json!({"split": [], "shadow": 3}),
        "a full rollout ends the split"
    );
}

/// A model made by another tool (scikit-learn's random forest through skl2onnx, built by the test's own
/// Python) registers through the upload, passes its golden check, and serves through V2 with the answers
/// scikit-learn gave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_from_another_tool_registers_and_serves() {
    let python = tokio::task::spawn_blocking(common::venv_python)
        .await
        .unwrap();
    let made = tempfile::tempdir().unwrap();
    let script = common::repo_root().join("server/tests/sklearn_model.py");
    let dir = made.path().to_path_buf();
    tokio::task::spawn_blocking(move || {
        common::run(std::process::Command::new(python).arg(script).arg(dir))
    })
    .await
    .unwrap();
    let empty = tempfile::tempdir().unwrap();
    let s = TestServer::with(|c| c.models_dir = empty.path().to_path_buf()).await;
    let read = |f: &str| std::fs::read(made.path().join(f)).unwrap();
    let (status, body) = upload(
        &s,
        "forest",
        vec![
            ("model", read("model.onnx")),
            ("manifest", read("model.toml")),
            ("golden", read("golden.json")),
        ],
    )
    .await;
    assert_eq!((status, body["version"].as_u64()), (201, Some(1)), "{body}");

    let golden: Value = serde_json::from_slice(&read("golden.json")).unwrap();
    let request = json!({ "inputs": golden["inputs"] });
    let (status, answer) = s.post("/v2/models/forest/infer", &request).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["outputs"][0]["name"], golden["outputs"][0]["name"]);
    assert_close(
        &floats(&answer["outputs"][0]["data"]),
        &floats(&golden["outputs"][0]["data"]),
        "forest",
    );
}

/// A version's life in the registry across restarts: unloaded (its sessions freed, requests naming it
/// 404) and loaded again; retired, and not brought back by the import of the --models-dir that holds it;
/// and the live figures (p50/p99, batch sizes) of a loaded version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_unload_load_and_retire_across_restarts() {
    const LIFE: &str = "price-life";
    let repo = price_repository(LIFE, 64, 4096, 0);
    for v in [2, 3] {
        add_version(repo.path(), LIFE, v);
    }
    let data = tempfile::tempdir().unwrap();
    let start = || {
        let (models, data) = (repo.path().to_path_buf(), data.path().to_path_buf());
        TestServer::with(move |c| {
            c.models_dir = models;
            c.data_dir = data;
        })
    };
    let (request, _) = price_rows(2, 0);
    let named = |v: u64| format!("/v2/models/{LIFE}/versions/{v}/infer");
    let model_path = format!("/api/v1/models/{LIFE}");
    let version_of = |model: &Value, v: u64| {
        model["versions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["version"] == v)
            .cloned()
            .unwrap_or(Value::Null)
    };

    let mut s = start().await;
    for _ in 0..20 {
        assert_eq!(s.post(&named(3), &request).await.0, 200);
    }
    let (_, model) = s.get(&model_path).await;
    let stats = &version_of(&model, 3)["stats"];
    let (p50, p99) = (
        stats["p50_us"].as_f64().unwrap(),
        stats["p99_us"].as_f64().unwrap(),
    );
    assert!(0.0 < p50 && p50 <= p99, "{stats}");
    let batches: u64 = stats["batch_sizes"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(
        (batches, &stats["batch_sizes"]["2"]),
        (20, &json!(20)),
        "{stats}"
    );

    let (status, body) = s
        .post(&format!("{model_path}/versions/3/unload"), &json!({}))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("conflict")),
        "the active one stays: {body}"
    );
    let (status, body) = s
        .post(&format!("{model_path}/versions/2/unload"), &json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    let v2 = version_of(&body, 2);
    assert_eq!(
        (&v2["state"], &v2["loaded"], &v2["stats"]),
        (&json!("ready"), &json!(false), &Value::Null)
    );
    assert_eq!(s.post(&named(2), &request).await.0, 404);
    let (status, _) = s.delete(&format!("{model_path}/versions/1")).await;
    assert_eq!(status, 204);
    let (_, index) = s.post("/v2/repository/index", &json!({})).await;
    let index: Vec<(String, String)> = index
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["name"] == LIFE)
        .map(|e| {
            (
                e["version"].as_str().unwrap().to_string(),
                e["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        index,
        [
            ("2".into(), "UNAVAILABLE".into()),
            ("3".into(), "READY".into())
        ]
    );
    s.stop().await.unwrap();

    // A restart keeps 2 unloaded and 1 retired, though --models-dir still holds version 1.
    let mut s = start().await;
    assert_eq!(s.post(&named(1), &request).await.0, 404);
    assert_eq!(s.post(&named(2), &request).await.0, 404);
    let (_, model) = s.get(&model_path).await;
    assert_eq!(
        (
            &version_of(&model, 1)["state"],
            &version_of(&model, 2)["loaded"]
        ),
        (&json!("retired"), &json!(false)),
        "{model}"
    );
    let (status, body) = s
        .post(&format!("{model_path}/versions/1/load"), &json!({}))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("conflict")),
        "{body}"
    );
    let (status, body) = s
        .post(&format!("{model_path}/versions/2/load"), &json!({}))
        .await;
    assert_eq!((status, &body["loaded"]), (200, &json!(true)), "{body}");
    assert_eq!(s.post(&named(2), &request).await.1["model_version"], "2");
    s.stop().await.unwrap();

    let s = start().await;
    assert_eq!(
        s.post(&named(2), &request).await.0,
        200,
        "loaded is kept too"
    );
    let (_, log) = s.get("/api/v1/audit?target_type=model").await;
    let actions: Vec<&str> = log["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for action in ["model.unload", "model.load", "model.retire"] {
        assert!(actions.contains(&action), "{actions:?}");
    }
}
