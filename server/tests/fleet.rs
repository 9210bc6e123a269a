//! Three replicas of the real binary on one PostgreSQL database: a change made on one is served by the
//! others within a second (through the change feed and its notification, not a reload: the feed's poll is
//! set to a minute here), a rule made on one fires once on another's ingest, and a replica that finds the
//! feed cut reloads everything from the store; a batch job runs on every replica and survives the death of
//! the one that took it.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    client_with, free_port, shipped_models, PgDatabase, Proxy, ADMIN_KEY, POSTGRES, REDIS,
};
use futures_util::StreamExt;
use serde_json::{json, Value};

/// How long a change may take to reach another replica.
const PROPAGATION: Duration = Duration::from_secs(1);

struct Replica {
    child: Child,
    base: String,
    _data: tempfile::TempDir,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Fleet {
    replicas: Vec<Replica>,
    db: PgDatabase,
    client: reqwest::Client,
}

fn spawn(database_url: &str, secret_key: &str, models: &Path, args: &[&str]) -> Replica {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    // Only a notification makes a change arrive within the second, unless the test sets its own poll.
    let poll: &[&str] = match args.contains(&"--fleet-poll-ms") {
        true => &[],
        false => &["--fleet-poll-ms", "60000"],
    };
    let child = Command::new(env!("CARGO_BIN_EXE_mercator"))
        .args(["serve", "--addr", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(data.path())
        .arg("--models-dir")
        .arg(models)
        .args([
            "--database-url",
            database_url,
            "--webhook-allow-private",
            "true",
        ])
        .args(poll)
        .args(args)
        .env("MERCATOR_ADMIN_KEY", ADMIN_KEY)
        .env("MERCATOR_SECRET_KEY", secret_key)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("the mercator binary starts");
    Replica {
        child,
        base: format!("http://127.0.0.1:{port}"),
        _data: data,
    }
}

impl Fleet {
    async fn start(n: usize, args: &[&str]) -> Fleet {
        let db = PgDatabase::create().await;
        let secret_key = mercator_store::secrets::Sealer::generate_key();
        let client = client_with(ADMIN_KEY);
        // The first one migrates the database and registers the admin key; the others start after it.
        let mut replicas = vec![spawn(&db.url, &secret_key, &shipped_models(), args)];
        wait_ready(&client, &replicas[0].base).await;
        for _ in 1..n {
            replicas.push(spawn(&db.url, &secret_key, &shipped_models(), args));
        }
        for r in &replicas[1..] {
            wait_ready(&client, &r.base).await;
        }
        Fleet {
            replicas,
            db,
            client,
        }
    }

    fn url(&self, i: usize, path: &str) -> String {
        format!("{}{path}", self.replicas[i].base)
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        let r = request.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn get(&self, i: usize, path: &str) -> (u16, Value) {
        self.send(self.client.get(self.url(i, path))).await
    }

    async fn post(&self, i: usize, path: &str, body: &Value) -> (u16, Value) {
        self.send(self.client.post(self.url(i, path)).json(body))
            .await
    }

    /// The newest change recorded, read from the database.
    async fn newest_change(&self) -> i64 {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&self.db.url).await.unwrap();
        sqlx::query_scalar::<_, Option<i64>>("SELECT MAX(seq) FROM fleet_changes")
            .fetch_one(&mut conn)
            .await
            .unwrap()
            .unwrap_or(0)
    }

    /// Waits until replica `i` has applied every change recorded so far.
    async fn caught_up(&self, i: usize) {
        let newest = self.newest_change().await;
        until(
            PROPAGATION,
            &format!("replica {i} applies change {newest}"),
            || async {
                let (_, ready) = self.get(i, "/readyz").await;
                ready["change_feed"]["applied"].as_i64().unwrap_or(0) >= newest
            },
        )
        .await;
    }
}

async fn wait_ready(client: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await {
            if r.status() == 200 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the replica at {base} never became ready");
}

/// Polls `check` until it holds, failing after `within`; answers how long it took.
async fn until<F, Fut>(within: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if check().await {
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What replica `i` serves for `price`: the active version and the traffic split, as its engine holds them.
async fn serving(f: &Fleet, i: usize) -> (u64, Value) {
    let (status, model) = f.get(i, "/api/v1/models/price").await;
    assert_eq!(status, 200, "{model}");
    (
        model["active_version"].as_u64().unwrap(),
        model["traffic"]["split"].clone(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_serve_each_others_changes_within_a_second() {
    let f = Fleet::start(3, &[]).await;
    let (active, _) = serving(&f, 0).await;
    let other = if active == 2 { 1 } else { 2 };

    // Activate on A: B and C serve it within the second, and V2 clients see the version's inputs.
    let (status, body) = f
        .post(
            0,
            &format!("/api/v1/models/price/versions/{other}/activate"),
            &json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    for i in [1, 2] {
        until(
            PROPAGATION,
            &format!("replica {i} serves version {other}"),
            || async { serving(&f, i).await.0 == other },
        )
        .await;
        let (_, meta) = f.get(i, "/v2/models/price").await;
        let width = if other == 2 { 27 } else { 20 };
        assert_eq!(meta["inputs"][0]["shape"][1], json!(width), "{meta}");
    }

    // A split set on B is followed on A and C.
    let split = json!({"split": [{"version": 1, "percent": 90}, {"version": 2, "percent": 10}]});
    let (status, body) = f
        .send(
            f.client
                .put(f.url(1, "/api/v1/models/price/traffic"))
                .json(&split),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    for i in [0, 2] {
        until(
            PROPAGATION,
            &format!("replica {i} follows the split"),
            || async { serving(&f, i).await.1 == split["split"] },
        )
        .await;
    }

    // A key deleted on A is refused on B and C within the second (each had it cached).
    let (status, key) = f
        .post(
            0,
            "/api/v1/api-keys",
            &json!({"name": "short-lived", "role": "viewer"}),
        )
        .await;
    assert_eq!(status, 201, "{key}");
    let holder = client_with(key["secret"].as_str().unwrap());
    for i in [1, 2] {
        let r = holder
            .get(f.url(i, "/api/v1/materials"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "the new key works on replica {i}");
    }
    let id = key["id"].as_str().unwrap();
    let (status, _) = f
        .send(f.client.delete(f.url(0, &format!("/api/v1/api-keys/{id}"))))
        .await;
    assert_eq!(status, 204);
    for i in [1, 2] {
        until(
            PROPAGATION,
            &format!("replica {i} refuses the deleted key"),
            || async {
                let r = holder
                    .get(f.url(i, "/api/v1/materials"))
                    .send()
                    .await
                    .unwrap();
                r.status() == 401
            },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prices_and_rules_cross_replicas_and_a_rule_fires_once() {
    let f = Fleet::start(3, &[]).await;
    let (status, material) = f
        .post(
            0,
            "/api/v1/materials",
            &json!({"code": "CU-1", "name": "copper", "category": "copper", "unit": "kg"}),
        )
        .await;
    assert_eq!(status, 201, "{material}");
    let material = material["id"].as_str().unwrap().to_string();
    let (status, supplier) = f
        .post(
            0,
            "/api/v1/suppliers",
            &json!({"code": "S-1", "name": "s", "country": "DE", "reliability": 0.9}),
        )
        .await;
    assert_eq!(status, 201, "{supplier}");
    let supplier = supplier["id"].as_str().unwrap().to_string();
    let today = chrono::Utc::now().date_naive();
    let history: Vec<Value> = (1..=40)
        .map(|d| {
            json!({"time": format!("{}T00:00:00Z", today - chrono::Days::new(d)),
                   "material_id": material, "supplier_id": supplier,
                   "price": 10.0 + (d % 3) as f64, "currency": "EUR", "quantity": 100.0, "price_type": "quote"})
        })
        .collect();
    let (status, body) = f.post(0, "/api/v1/prices/bulk", &json!(history)).await;
    assert_eq!(status, 201, "{body}");
    f.caught_up(1).await;

    // A price posted to A changes B's next prediction: B's history took it in.
    let request = json!({"material_id": material, "supplier_id": supplier, "quantity": 100.0,
                         "as_of": (today + chrono::Days::new(1)).to_string()});
    let (status, before) = f.post(1, "/api/v1/predictions/price", &request).await;
    assert_eq!(status, 200, "{before}");
    let (status, body) = f
        .post(0, "/api/v1/prices", &json!({"time": format!("{today}T00:00:00Z"), "material_id": material,
            "supplier_id": supplier, "price": 30.0, "currency": "EUR", "quantity": 100.0, "price_type": "quote"}))
        .await;
    assert_eq!(status, 201, "{body}");
    until(
        PROPAGATION,
        "replica B's features take in A's price",
        || async {
            let (_, after) = f.post(1, "/api/v1/predictions/price", &request).await;
            after["features_used"] != before["features_used"]
        },
    )
    .await;
    // And B's features equal A's, which wrote it.
    let (_, on_a) = f.post(0, "/api/v1/predictions/price", &request).await;
    let (_, on_b) = f.post(1, "/api/v1/predictions/price", &request).await;
    assert_eq!(on_a["features_used"], on_b["features_used"]);
    assert_eq!(on_a["predicted_price"], on_b["predicted_price"]);

    // A rule made on B fires on an ingest at A: one event, one webhook delivery.
    let (url, got) = receiver().await;
    let (status, rule) = f
        .post(1, "/api/v1/alerts", &json!({"name": "copper above 100", "scope": {"material_id": material},
            "condition": {"type": "price_above", "threshold": 100.0},
            "channels": ["websocket", {"webhook": {"url": format!("{url}/hook"), "secret": "0123456789abcdef0123"}}]}))
        .await;
    assert_eq!(status, 201, "{rule}");
    let rule = rule["id"].as_str().unwrap().to_string();
    f.caught_up(0).await;
    let now = chrono::Utc::now().to_rfc3339();
    let (status, body) = f
        .post(
            0,
            "/api/v1/prices",
            &json!({"time": now, "material_id": material, "supplier_id": supplier,
            "price": 150.0, "currency": "EUR", "quantity": 100.0, "price_type": "quote"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    until(
        Duration::from_secs(10),
        "the webhook is delivered",
        || async { !got.lock().unwrap().is_empty() },
    )
    .await;
    // Every replica dispatches webhooks and judged nothing it did not ingest: still one of each later.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(got.lock().unwrap().len(), 1, "one delivery");
    for i in 0..3 {
        let (status, events) = f
            .get(i, &format!("/api/v1/alerts/events?rule_id={rule}"))
            .await;
        assert_eq!(status, 200, "{events}");
        assert_eq!(
            events["items"].as_array().unwrap().len(),
            1,
            "replica {i}: {events}"
        );
    }

    // A correction and a deletion on C reach A's history too: its features come back to B's.
    let (_, prices) = f
        .get(2, &format!("/api/v1/prices?material_id={material}&limit=2"))
        .await;
    let newest = prices["items"][0]["id"].as_str().unwrap().to_string();
    let (status, body) = f
        .send(
            f.client
                .delete(f.url(2, &format!("/api/v1/prices/{newest}"))),
        )
        .await;
    assert_eq!(status, 204, "{body}");
    let (status, body) = f
        .send(
            f.client
                .patch(f.url(
                    2,
                    &format!(
                        "/api/v1/prices/{}",
                        prices["items"][1]["id"].as_str().unwrap()
                    ),
                ))
                .json(&json!({"price": 12.5})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    for i in [0, 1] {
        f.caught_up(i).await;
    }
    let (_, on_a) = f.post(0, "/api/v1/predictions/price", &request).await;
    let (_, on_b) = f.post(1, "/api/v1/predictions/price", &request).await;
    let (_, on_c) = f.post(2, "/api/v1/predictions/price", &request).await;
    assert_eq!(on_a["features_used"], on_c["features_used"]);
    assert_eq!(on_b["features_used"], on_c["features_used"]);
}

/// A version uploaded to A is served by B and C: they fetch its files from the store, check them against
/// the recorded artifact, and load it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_uploaded_to_one_replica_serves_on_all() {
    let f = Fleet::start(3, &[]).await;
    let shipped = shipped_models().join("price/1");
    let mut form = reqwest::multipart::Form::new();
    for (part, bytes) in [
        ("model", std::fs::read(shipped.join("model.onnx")).unwrap()),
        (
            "manifest",
            std::fs::read(shipped.join("model.toml")).unwrap(),
        ),
        (
            "golden",
            std::fs::read(common::repo_root().join("fixtures/golden/price.json")).unwrap(),
        ),
    ] {
        form = form.part(part, reqwest::multipart::Part::bytes(bytes).file_name(part));
    }
    let (status, uploaded) = f
        .send(
            f.client
                .post(f.url(0, "/api/v1/models/price/versions"))
                .multipart(form),
        )
        .await;
    assert_eq!(status, 201, "{uploaded}");
    let version = uploaded["version"].as_u64().unwrap();
    let golden = common::golden("price");
    for i in [1, 2] {
        let path = format!("/v2/models/price/versions/{version}/infer");
        until(
            Duration::from_secs(10),
            &format!("replica {i} serves the upload"),
            || async { f.post(i, &path, &golden.request(0, 4)).await.0 == 200 },
        )
        .await;
        let (_, answer) = f.post(i, &path, &golden.request(0, 4)).await;
        common::assert_close(
            &common::floats(&answer["outputs"][0]["data"]),
            &golden.expected("price", 0, 4),
            "the uploaded version's answers on another replica",
        );
    }
}

/// A replica that finds the feed pruned past what it read reloads from the store: here the store is
/// changed behind every replica's back and the feed jumps, as after a long cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_finds_the_feed_cut_reloads_everything() {
    let f = Fleet::start(2, &[]).await;
    let (active, _) = serving(&f, 1).await;
    let other = if active == 2 { 1 } else { 2 };
    {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&f.db.url).await.unwrap();
        sqlx::query(
            "INSERT INTO model_policies (name, active_version, updated_at) VALUES ('price', $1, 0) \
             ON CONFLICT (name) DO UPDATE SET active_version = $1",
        )
        .bind(other as i64)
            .execute(&mut conn)
            .await
            .unwrap();
        // A change numbered past a gap, and its notification.
        sqlx::query(
            "INSERT INTO fleet_changes (seq, kind, entity, origin, at) \
             SELECT COALESCE(MAX(seq), 0) + 10, 'rules', 'nothing', 'elsewhere', 0 FROM fleet_changes",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        sqlx::query("SELECT pg_notify('mercator_fleet', '')")
            .execute(&mut conn)
            .await
            .unwrap();
    }
    for i in [0, 1] {
        until(PROPAGATION, &format!("replica {i} reloads"), || async {
            serving(&f, i).await.0 == other
        })
        .await;
        f.caught_up(i).await;
    }
    // The listener's connection is cut: the replica reconnects and reads what it missed.
    {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&f.db.url).await.unwrap();
        let cut: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND query LIKE 'LISTEN%'",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap();
        assert_eq!(cut.len(), 2, "one listener per replica");
    }
    let (status, body) = f
        .post(
            0,
            &format!("/api/v1/models/price/versions/{active}/activate"),
            &json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    until(
        Duration::from_secs(5),
        "replica B follows after its listener was cut",
        || async { serving(&f, 1).await.0 == active },
    )
    .await;
}

/// The forecast rules' round runs once per period across the fleet, and when the replica that ran the last
/// one is killed, the next periods are run by the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_periodic_round_runs_once_per_period_and_moves_when_its_runner_dies() {
    let mut f = Fleet::start(3, &["--forecast-alert-interval-secs", "1"]).await;
    let mut names = Vec::new();
    for i in 0..3 {
        let (_, ready) = f.get(i, "/readyz").await;
        names.push(ready["replica"].as_str().unwrap().to_string());
    }
    let runs = |db: String| async move {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&db).await.unwrap();
        sqlx::query_as::<_, (i64, String)>(
            "SELECT slot, holder FROM fleet_runs WHERE task = 'forecast_rules' ORDER BY slot",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap()
    };
    let gapless = |runs: &[(i64, String)]| runs.windows(2).all(|w| w[1].0 == w[0].0 + 1);
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let before = runs(f.db.url.clone()).await;
    assert!(before.len() >= 3, "{before:?}");
    assert!(gapless(&before), "one round every period: {before:?}");
    assert!(
        before.iter().all(|(_, h)| names.contains(h)),
        "{before:?} {names:?}"
    );

    // Kill the one that ran the last round: the rounds go on, every period, on the others.
    let last = &before.last().unwrap().1;
    let victim = names.iter().position(|n| n == last).unwrap();
    let killed = f.replicas.remove(victim);
    drop(killed);
    let (started, after_kill) = (before.last().unwrap().0, Instant::now());
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let after = runs(f.db.url.clone()).await;
    assert!(gapless(&after), "no period lost: {after:?}");
    let later: Vec<&(i64, String)> = after
        .iter()
        .filter(|(slot, _)| *slot > started + 1)
        .collect();
    assert!(
        later.len() >= 2,
        "{after:?} ({:?} after the kill)",
        after_kill.elapsed()
    );
    assert!(
        later.iter().all(|(_, h)| h != last),
        "the killed replica runs nothing: {after:?}"
    );
}

/// A replica whose database stops answering stays ready (inference needs no database, and every replica
/// is behind alike), says so, and is caught up again when the database is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_from_its_database_keeps_serving_and_says_so() {
    let db = PgDatabase::create().await;
    let proxy = Proxy::start(POSTGRES).await;
    let through = db.url.replace(POSTGRES, &proxy.addr.to_string());
    let secret_key = mercator_store::secrets::Sealer::generate_key();
    let args = ["--fleet-max-lag-secs", "1", "--fleet-poll-ms", "200"];
    let replica = spawn(&through, &secret_key, &shipped_models(), &args);
    let client = client_with(ADMIN_KEY);
    wait_ready(&client, &replica.base).await;
    let golden = common::golden("price");
    let infer = || async {
        client
            .post(format!("{}/v2/models/price/versions/1/infer", replica.base))
            .json(&golden.request(0, 2))
            .send()
            .await
            .unwrap()
            .status()
    };
    assert_eq!(infer().await, 200);
    let ready = || async {
        let r = client
            .get(format!("{}/readyz", replica.base))
            .send()
            .await
            .unwrap();
        (
            r.status().as_u16(),
            r.json::<Value>().await.unwrap_or_default(),
        )
    };
    assert_eq!(ready().await.1["store"]["reachable"], true);

    proxy.cut();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, body) = ready().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["store"]["reachable"], false, "{body}");
    assert!(
        body["change_feed"]["seconds_behind"].as_f64().unwrap() > 1.0,
        "{body}"
    );
    assert_eq!(infer().await, 200, "inference goes on without the database");

    proxy.restore().await;
    until(
        Duration::from_secs(10),
        "the replica reaches its database again",
        || async {
            let (status, body) = ready().await;
            status == 200
                && body["store"]["reachable"] == true
                && body["change_feed"]["seconds_behind"].as_f64() < Some(1.0)
        },
    )
    .await;
    drop(replica);
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn socket(f: &Fleet, i: usize, path: &str) -> Socket {
    let url = f.url(i, path).replace("http://", "ws://");
    let (socket, _) = tokio_tungstenite::connect_async(format!("{url}?api_key={ADMIN_KEY}"))
        .await
        .unwrap();
    socket
}

/// Reads frames until one `wanted` holds, failing after `within`.
async fn hear(socket: &mut Socket, within: Duration, what: &str, wanted: impl Fn(&Value) -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let frame = tokio::time::timeout_at(deadline, socket.next())
            .await
            .unwrap_or_else(|_| panic!("{what}: not heard within {within:?}"))
            .expect("the socket stays open")
            .unwrap();
        if let Ok(text) = frame.to_text() {
            if wanted(&serde_json::from_str(text).unwrap_or(Value::Null)) {
                return;
            }
        }
    }
}

async fn redis_state(f: &Fleet, i: usize) -> String {
    let (_, ready) = f.get(i, "/readyz").await;
    ready["redis"].as_str().unwrap_or_default().to_string()
}

/// With Redis, a WebSocket client on any replica hears every replica's prices and notifications; a rate
/// limit holds across replicas; Redis lost and back, the replicas subscribe again, and what happened while
/// it was gone reached their state through the change feed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_clients_hear_every_replica_through_redis() {
    let proxy = Proxy::start(REDIS).await;
    let redis = format!("redis://{}/0", proxy.addr);
    let prefix = format!("fleet-{}-{}", std::process::id(), rand_suffix());
    let f = Fleet::start(3, &["--redis-url", &redis, "--redis-key-prefix", &prefix]).await;
    for i in 0..3 {
        until(
            Duration::from_secs(5),
            &format!("replica {i} subscribes"),
            || async { redis_state(&f, i).await == "up" },
        )
        .await;
    }
    let (_, material) = f
        .post(
            0,
            "/api/v1/materials",
            &json!({"code": "AL-1", "name": "aluminium", "category": "aluminium", "unit": "kg"}),
        )
        .await;
    let material = material["id"].as_str().unwrap().to_string();
    let mut prices_on_c = socket(&f, 2, "/ws/prices").await;
    let mut notes_on_b = socket(&f, 1, "/ws/notifications").await;
    let price = |p: f64| {
        json!({"time": chrono::Utc::now().to_rfc3339(), "material_id": material, "price": p,
               "currency": "EUR", "price_type": "quote"})
    };

    // A price posted to A reaches the /ws/prices client on C.
    let (status, written) = f.post(0, "/api/v1/prices", &price(11.0)).await;
    assert_eq!(status, 201, "{written}");
    hear(&mut prices_on_c, PROPAGATION, "A's price on C", |frame| {
        frame["type"] == "price" && frame["price"]["id"] == written["id"]
    })
    .await;
    // A model event on A reaches /ws/notifications on B.
    let (active, _) = serving(&f, 0).await;
    let other = if active == 2 { 1 } else { 2 };
    let (status, _) = f
        .post(
            0,
            &format!("/api/v1/models/price/versions/{other}/activate"),
            &json!({}),
        )
        .await;
    assert_eq!(status, 200);
    hear(
        &mut notes_on_b,
        PROPAGATION,
        "A's activation on B",
        |frame| frame["type"] == "model" && frame["action"] == "model.activate",
    )
    .await;

    // A key's limit holds across the three: 9 reads an hour, 27 asked round the fleet.
    let (status, key) = f
        .post(
            0,
            "/api/v1/api-keys",
            &json!({"name": "limited", "role": "viewer", "rate_limits": "read=9/h"}),
        )
        .await;
    assert_eq!(status, 201, "{key}");
    let limited = client_with(key["secret"].as_str().unwrap());
    let mut admitted = 0;
    for n in 0..27 {
        let r = limited
            .get(f.url(n % 3, "/api/v1/materials"))
            .send()
            .await
            .unwrap();
        admitted += usize::from(r.status() == 200);
    }
    assert_eq!(admitted, 9, "one limit for the fleet");

    // Redis goes away: the replicas notice, prices still reach every replica's history through the feed.
    proxy.cut();
    for i in 0..3 {
        until(
            Duration::from_secs(5),
            &format!("replica {i} notices"),
            || async { redis_state(&f, i).await == "down" },
        )
        .await;
    }
    let (status, meanwhile) = f.post(0, "/api/v1/prices", &price(12.0)).await;
    assert_eq!(status, 201, "{meanwhile}");
    f.caught_up(2).await;
    let (_, listed) = f
        .get(2, &format!("/api/v1/prices?material_id={material}"))
        .await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 2, "{listed}");
    proxy.restore().await;
    for i in 0..3 {
        until(
            Duration::from_secs(5),
            &format!("replica {i} subscribes again"),
            || async { redis_state(&f, i).await == "up" },
        )
        .await;
    }
    let (status, after) = f.post(0, "/api/v1/prices", &price(13.0)).await;
    assert_eq!(status, 201, "{after}");
    hear(
        &mut prices_on_c,
        PROPAGATION,
        "A's price on C after Redis came back",
        |frame| frame["price"]["id"] == after["id"],
    )
    .await;
}

/// A number no other test process draws (a Redis prefix of this test's own).
fn rand_suffix() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(std::process::id())
}

type Received = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// A webhook receiver on loopback that answers 200 and keeps every body.
async fn receiver() -> (String, Received) {
    let got: Received = Default::default();
    let app = axum::Router::new()
        .route(
            "/hook",
            axum::routing::post(
                |axum::extract::State(got): axum::extract::State<Received>, body: String| async move {
                    got.lock().unwrap().push(body);
                    axum::http::StatusCode::OK
                },
            ),
        )
        .with_state(got.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, got)
}

/// Chunks replica `node` holds, read from the database.
async fn chunks_held(db: &str, node: &str) -> i64 {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(db).await.unwrap();
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM batch_chunks WHERE holder = $1 AND state = 'running' AND lease_until > 0",
    )
    .bind(node)
    .fetch_one(&mut conn)
    .await
    .unwrap()
}

/// A metric's value summed over its series, from a replica's `/metrics`.
async fn metric(f: &Fleet, i: usize, name: &str, label: &str) -> f64 {
    let text = f
        .client
        .get(f.url(i, "/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn submit_job(f: &Fleet, i: usize, csv: &str) -> String {
    let r = f
        .client
        .post(f.url(i, "/api/v1/predictions/batch"))
        .header("content-type", "text/csv")
        .header("prefer", "respond-async")
        .body(csv.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let body: Value = r.json().await.unwrap();
    body["batch_id"].as_str().unwrap().to_string()
}

async fn job_ended(f: &Fleet, i: usize, id: &str) -> Value {
    let path = format!("/api/v1/predictions/batch/{id}");
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let job = f.get(i, &path).await.1;
        if ["succeeded", "failed", "cancelled"].contains(&job["state"].as_str().unwrap_or("")) {
            return job;
        }
        assert!(Instant::now() < deadline, "{id} never ended: {job}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn results_text(f: &Fleet, i: usize, id: &str) -> String {
    let r = f
        .client
        .get(f.url(
            i,
            &format!("/api/v1/predictions/batch/{id}/results?format=csv"),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

/// One large job runs on all three replicas at once; the one that took it is killed (SIGKILL) while it
/// holds chunks: the other two take those over when their leases run out and finish it, every row answered
/// once and equal to a run never interrupted; its progress reaches a WebSocket client on another replica,
/// and its results are read from a third.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_on_every_replica_and_a_killed_one_loses_no_row() {
    let mut f = Fleet::start(
        3,
        &["--batch-chunk-rows", "4000", "--batch-lease-secs", "2"],
    )
    .await;
    let fixture = common::ingest_fixture_at(&f.replicas[0].base, &f.client).await;
    f.caught_up(1).await;
    f.caught_up(2).await;
    const ROWS: usize = 200_000;
    let (csv, _) = common::requests_csv(&fixture, ROWS, 997);
    let node =
        std::fs::read_to_string(f.replicas[0]._data.path().join("node-id")).expect("A's node id");

    let id = submit_job(&f, 0, &csv).await;
    let mut progress = socket(&f, 1, &format!("/ws/predictions/{id}")).await;
    // Kill A once chunks have committed and while it holds some.
    let path = format!("/api/v1/predictions/batch/{id}");
    until(Duration::from_secs(120), "chunks commit", || async {
        f.get(1, &path).await.1["processed_rows"]
            .as_u64()
            .unwrap_or(0)
            >= 12_000
    })
    .await;
    until(Duration::from_secs(60), "A holds a chunk", || async {
        chunks_held(&f.db.url, node.trim()).await > 0
    })
    .await;
    let committed_by_a = metric(&f, 0, "mercator_batch_chunks_total", "committed").await;
    f.replicas[0].child.kill().unwrap();
    f.replicas[0].child.wait().unwrap();
    let killed_at = f.get(1, &path).await.1;
    assert_eq!(killed_at["state"], "running", "{killed_at}");

    // B's WebSocket follows the job to its end, its count never going back.
    let mut seen = Vec::new();
    let last = loop {
        let frame = tokio::time::timeout(Duration::from_secs(300), progress.next())
            .await
            .expect("progress keeps coming")
            .expect("the socket stays open until the end")
            .unwrap();
        let Ok(text) = frame.to_text() else { continue };
        let Ok(m) = serde_json::from_str::<Value>(text) else {
            continue;
        };
        seen.push(m["processed"].as_u64().unwrap());
        if m["type"] == "final" {
            break m;
        }
    };
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
    assert_eq!(
        (last["state"].as_str(), last["processed"].as_u64()),
        (Some("succeeded"), Some(ROWS as u64)),
        "{last}"
    );
    let job = f.get(2, &path).await.1;
    assert!(job["attempts"].as_u64().unwrap() >= 2, "taken over: {job}");
    assert_eq!(job["failed_rows"], ROWS as u64 / 997, "{job}");

    // The job ran on all three: A before it died, B and C after; B and C took over A's chunks.
    assert!(committed_by_a >= 1.0, "A committed {committed_by_a}");
    for i in [1, 2] {
        let committed = metric(&f, i, "mercator_batch_chunks_total", "committed").await;
        assert!(committed >= 1.0, "replica {i} committed {committed}");
    }
    let reclaimed = metric(&f, 1, "mercator_batch_chunk_claims_total", "reclaimed").await
        + metric(&f, 2, "mercator_batch_chunk_claims_total", "reclaimed").await;
    assert!(reclaimed >= 1.0, "A's chunks taken over: {reclaimed}");

    // Every row once, in order, read from C; equal to a run never interrupted.
    let interrupted = results_text(&f, 2, &id).await;
    let rows: Vec<usize> = interrupted
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(rows, (1..=ROWS).collect::<Vec<_>>(), "every row once");
    let clean = submit_job(&f, 1, &csv).await;
    assert_eq!(job_ended(&f, 2, &clean).await["state"], "succeeded");
    assert!(
        results_text(&f, 1, &clean).await == interrupted,
        "an interrupted job's results equal a clean run's"
    );
}
