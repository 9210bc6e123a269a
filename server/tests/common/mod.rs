//! Starts the real server, with the shipped models and ONNX Runtime, on an ephemeral port.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use mercator_server::{App, Config};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn shipped_models() -> PathBuf {
    repo_root().join("models")
}

/// The platform admin's key every test server starts with (MERCATOR_ADMIN_KEY).
pub const ADMIN_KEY: &str = "mk_testadmin_0123456789abcdef0123456789abcdef";

pub struct TestServer {
    pub base: String,
    /// Sends the platform admin's key with every request.
    pub client: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    pub task: Option<JoinHandle<std::io::Result<()>>>,
    /// The SQLite store's directory, when the server has one; removed with the server.
    pub data_dir: Option<tempfile::TempDir>,
    /// The PostgreSQL database made for this server, dropped with it.
    pub database: Option<PgDatabase>,
}

/// Which store a test server runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A PostgreSQL database of its own on the server at 127.0.0.1:5432 (MERCATOR_TEST_POSTGRES_URL
/// overrides the maintenance URL), dropped when this is dropped.
pub struct PgDatabase {
    admin: String,
    name: String,
    pub url: String,
}

impl PgDatabase {
    pub async fn create() -> PgDatabase {
        use sqlx::Connection;
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let admin = std::env::var("MERCATOR_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let name = format!(
            "mercator_server_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .expect("PostgreSQL at 127.0.0.1:5432");
        sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap();
        let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
        PgDatabase { admin, name, url }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        // Drop runs inside the test's runtime: a thread of its own may block on a runtime of its own.
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async move {
                    use sqlx::Connection;
                    if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                        let _ =
                            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                                .execute(&mut conn)
                                .await;
                    }
                })
        })
        .join();
    }
}

/// A client that sends `key` as a bearer token.
pub fn client_with(key: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {key}").parse().unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::with(|_| {}).await
    }

    /// A server with no models (for the API's tests), on `backend`, in a fresh database.
    pub async fn api(backend: Backend, adjust: impl FnOnce(&mut Config)) -> TestServer {
        let models = tempfile::tempdir().unwrap();
        let database = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(PgDatabase::create().await),
        };
        let url = database.as_ref().map(|d| d.url.clone());
        let models_dir = models.path().to_path_buf();
        let mut server = TestServer::with(move |c| {
            c.models_dir = models_dir;
            c.database_url = url;
            adjust(c);
        })
        .await;
        server.database = database;
        drop(models);
        server
    }

    /// A server on its own SQLite file in a temporary directory, adjusted by `adjust` (which may point it at
    /// PostgreSQL instead).
    pub async fn with(adjust: impl FnOnce(&mut Config)) -> TestServer {
        let data_dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            models_dir: shipped_models(),
            data_dir: data_dir.path().to_path_buf(),
            drain_timeout: Duration::from_secs(10),
            admin_key: Some(ADMIN_KEY.to_string()),
            ..Config::default()
        };
        adjust(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let app = App::load(config).await.expect("the app loads");
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(app.serve(listener, async move {
            let _ = rx.await;
        }));
        let server = TestServer {
            base,
            client: client_with(ADMIN_KEY),
            shutdown: Some(tx),
            task: Some(task),
            data_dir: Some(data_dir),
            database: None,
        };
        server.wait_ready().await;
        server
    }

    async fn wait_ready(&self) {
        for _ in 0..500 {
            if let Ok(r) = self.client.get(self.url("/readyz")).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("server never became ready");
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.client.get(self.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap())
    }

    pub async fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .client
            .put(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap())
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        let r = self.client.delete(self.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// A new organization, and a client holding its admin key.
    pub async fn organization(&self, name: &str) -> reqwest::Client {
        let (status, body) = self
            .post(
                "/api/v1/organizations",
                &serde_json::json!({ "name": name }),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        client_with(body["api_key"]["secret"].as_str().unwrap())
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Signals shutdown and waits for the server to stop.
    pub async fn stop(&mut self) -> std::io::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.take().unwrap().await.unwrap()
    }
}

/// A golden file written by models/train/train.py.
pub struct Golden {
    pub model: String,
    pub inputs: Vec<Value>,
    pub outputs: Vec<Value>,
}

pub fn golden(model: &str) -> Golden {
    let text =
        std::fs::read_to_string(repo_root().join(format!("fixtures/golden/{model}.json"))).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    Golden {
        model: model.to_string(),
        inputs: v["inputs"].as_array().unwrap().clone(),
        outputs: v["outputs"].as_array().unwrap().clone(),
    }
}

impl Golden {
    pub fn rows(&self) -> usize {
        self.inputs[0]["shape"][0].as_u64().unwrap() as usize
    }

    /// The V2 request for rows [start, end) of the golden inputs.
    pub fn request(&self, start: usize, end: usize) -> Value {
        let inputs: Vec<Value> = self
            .inputs
            .iter()
            .map(|i| {
                let width = i["shape"][1].as_u64().unwrap() as usize;
                let data = &i["data"].as_array().unwrap()[start * width..end * width];
                serde_json::json!({ "name": i["name"], "datatype": "FP32", "shape": [end - start, width], "data": data })
            })
            .collect();
        serde_json::json!({ "inputs": inputs })
    }

    /// Expected output values of rows [start, end) for the output `name`.
    pub fn expected(&self, name: &str, start: usize, end: usize) -> Vec<f64> {
        let o = self.outputs.iter().find(|o| o["name"] == name).unwrap();
        let width = o["shape"][1].as_u64().unwrap() as usize;
        o["data"].as_array().unwrap()[start * width..end * width]
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect()
    }
}

/// Asserts `actual` equals `expected` within a relative tolerance of 1e-5.
pub fn assert_close(actual: &[f64], expected: &[f64], what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: length");
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        let tolerance = 1e-5 * e.abs().max(1e-6);
        assert!(
            (a - e).abs() <= tolerance,
            "{what}[{i}]: got {a}, golden {e}"
        );
    }
}

pub fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// A model repository holding only the shipped `price` model under another name (so that its metrics are
/// its own in a test process with several servers), with its batching settings replaced.
pub fn price_repository(
    name: &str,
    max_batch_size: usize,
    queue_capacity: usize,
    max_queue_delay_us: u64,
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let to = dir.path().join(name).join("1");
    std::fs::create_dir_all(&to).unwrap();
    let from = shipped_models().join("price/1");
    std::fs::copy(from.join("model.onnx"), to.join("model.onnx")).unwrap();
    let mut manifest: toml::Table = std::fs::read_to_string(from.join("model.toml"))
        .unwrap()
        .parse()
        .unwrap();
    manifest.insert("name".into(), name.into());
    let batching = manifest["batching"].as_table_mut().unwrap();
    batching.insert("max_batch_size".into(), (max_batch_size as i64).into());
    batching.insert("queue_capacity".into(), (queue_capacity as i64).into());
    batching.insert(
        "max_queue_delay_us".into(),
        (max_queue_delay_us as i64).into(),
    );
    std::fs::write(to.join("model.toml"), toml::to_string(&manifest).unwrap()).unwrap();
    dir
}

/// `rows` rows cycling through the golden price rows, and the prices expected for them.
pub fn price_rows(rows: usize, offset: usize) -> (Value, Vec<f64>) {
    let g = golden("price");
    let n = g.rows();
    let features = g.inputs[0]["data"].as_array().unwrap();
    let mut data = Vec::with_capacity(rows * 20);
    let mut expected = Vec::with_capacity(rows);
    for r in 0..rows {
        let row = (r + offset) % n;
        data.extend_from_slice(&features[row * 20..(row + 1) * 20]);
        expected.extend(g.expected("price", row, row + 1));
    }
    let request = serde_json::json!({ "inputs": [{ "name": "features", "datatype": "FP32", "shape": [rows, 20], "data": data }] });
    (request, expected)
}

/// The tests' own Python (`.venv-test`, made from server/tests/requirements.txt when that file changes).
pub fn venv_python() -> std::path::PathBuf {
    let root = repo_root();
    let venv = root.join(".venv-test");
    let requirements = root.join("server/tests/requirements.txt");
    let stamp = venv.join(".requirements");
    let wanted = std::fs::read_to_string(&requirements).unwrap();
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(wanted.as_str()) {
        run(std::process::Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv));
        run(std::process::Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "-r"])
            .arg(&requirements));
        std::fs::write(&stamp, wanted).unwrap();
    }
    venv.join("bin/python")
}

pub fn run(command: &mut std::process::Command) {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?}\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The fixture's last day.
pub fn fixture_last_day() -> chrono::NaiveDate {
    let text = std::fs::read_to_string(repo_root().join("fixtures/prices.csv")).unwrap();
    text.lines()
        .skip(1)
        .filter_map(|l| chrono::NaiveDate::parse_from_str(l.split(',').next()?, "%Y-%m-%d").ok())
        .max()
        .unwrap()
}

/// The fixture's materials and suppliers as created: code -> id.
pub struct Fixture {
    pub materials: std::collections::HashMap<String, String>,
    pub suppliers: std::collections::HashMap<String, String>,
}

/// Creates the fixture's materials and suppliers in the caller's organization and ingests every price of
/// fixtures/prices.csv through `POST /api/v1/prices/bulk` (CSV).
pub async fn ingest_fixture(s: &TestServer, client: &reqwest::Client) -> Fixture {
    ingest_fixture_at(&s.base, client).await
}

/// `ingest_fixture` on the server at `base`.
pub async fn ingest_fixture_at(base: &str, client: &reqwest::Client) -> Fixture {
    ingest_fixture_moved(base, client, 0).await
}

/// `ingest_fixture` with every observation `days` later (a history that reaches today, for questions asked
/// about today).
pub async fn ingest_fixture_moved(base: &str, client: &reqwest::Client, days: i64) -> Fixture {
    let fixture = catalogue_fixture(base, client).await;
    let text = std::fs::read_to_string(repo_root().join("fixtures/prices.csv")).unwrap();
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let mut csv = String::from("time,material_id,supplier_id,price,currency,quantity,price_type\n");
    for r in reader.records().map(Result::unwrap) {
        let day = chrono::NaiveDate::parse_from_str(&r[0], "%Y-%m-%d").unwrap()
            + chrono::Duration::days(days);
        csv.push_str(&format!(
            "{day}T00:00:00Z,{},{},{},EUR,{},quote\n",
            fixture.materials[&r[1]], fixture.suppliers[&r[4]], &r[8], &r[6]
        ));
    }
    let r = client
        .post(format!("{base}/api/v1/prices/bulk"))
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    fixture
}

/// Creates the fixture's materials and suppliers (fixtures/prices.csv) in the caller's organization.
pub async fn catalogue_fixture(base: &str, client: &reqwest::Client) -> Fixture {
    use std::collections::HashMap;
    let post = |path: &str, body: Value| {
        let request = client.post(format!("{base}{path}")).json(&body);
        async move {
            let r = request.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }
    };
    let text = std::fs::read_to_string(repo_root().join("fixtures/prices.csv")).unwrap();
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let (mut materials, mut suppliers) = (HashMap::new(), HashMap::new());
    for r in reader.records().map(Result::unwrap) {
        if !materials.contains_key(&r[1]) {
            let body = serde_json::json!({"code": &r[1], "name": &r[1], "category": &r[2], "unit": &r[3],
                              "list_price": r[9].parse::<f64>().unwrap(), "specifications": {}});
            let (status, m) = post("/api/v1/materials", body).await;
            assert_eq!(status, 201, "{m}");
            materials.insert(r[1].to_string(), m["id"].as_str().unwrap().to_string());
        }
        if !suppliers.contains_key(&r[4]) {
            let body = serde_json::json!({"code": &r[4], "name": &r[4], "country": "DE",
                              "reliability": r[5].parse::<f64>().unwrap()});
            let (status, m) = post("/api/v1/suppliers", body).await;
            assert_eq!(status, 201, "{m}");
            suppliers.insert(r[4].to_string(), m["id"].as_str().unwrap().to_string());
        }
    }
    Fixture {
        materials,
        suppliers,
    }
}

/// Imports the fixture's three years of orders and deliveries (fixtures/orders.csv, deliveries.csv) through
/// `POST /api/v1/orders/bulk` and `/deliveries/bulk`, codes mapped to the catalogue's ids.
pub async fn import_supply_fixture(base: &str, client: &reqwest::Client, f: &Fixture) {
    let text = std::fs::read_to_string(repo_root().join("fixtures/orders.csv")).unwrap();
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let mut orders = String::from(
        "reference,supplier_id,currency,ordered_on,material_id,quantity,unit_price,promised_date\n",
    );
    for r in reader.records().map(Result::unwrap) {
        orders.push_str(&format!(
            "{},{},{},{},{},{},{},{}\n",
            &r[0], f.suppliers[&r[1]], &r[2], &r[3], f.materials[&r[4]], &r[5], &r[6], &r[7]
        ));
    }
    let deliveries = std::fs::read_to_string(repo_root().join("fixtures/deliveries.csv")).unwrap();
    for (path, body) in [
        ("/api/v1/orders/bulk", orders),
        ("/api/v1/deliveries/bulk", deliveries),
    ] {
        let r = client
            .post(format!("{base}{path}"))
            .header("content-type", "text/csv")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{path}: {}", r.text().await.unwrap());
    }
}

/// `rows` price requests as CSV: the fixture's materials and suppliers in turn, days across the second half
/// of 2025, quantities varying; every `bad_every`-th row names a material that does not exist. Also says
/// which rows are bad.
pub fn requests_csv(f: &Fixture, rows: usize, bad_every: usize) -> (String, Vec<bool>) {
    let mut materials: Vec<&String> = f.materials.values().collect();
    materials.sort();
    let mut suppliers: Vec<&String> = f.suppliers.values().collect();
    suppliers.sort();
    let start = chrono::NaiveDate::from_ymd_opt(2025, 7, 1).unwrap();
    let mut csv = String::from("material_id,quantity,supplier_id,as_of\n");
    let mut bad = Vec::with_capacity(rows);
    for i in 0..rows {
        let is_bad = bad_every > 0 && i % bad_every == bad_every - 1;
        let material = if is_bad {
            "no-such-material"
        } else {
            materials[i % materials.len()].as_str()
        };
        let day = start + chrono::Duration::days((i / 7 % 150) as i64);
        csv.push_str(&format!(
            "{material},{},{},{day}\n",
            50 + (i * 37) % 2000,
            suppliers[(i / materials.len()) % suppliers.len()]
        ));
        bad.push(is_bad);
    }
    (csv, bad)
}

/// A port nothing listens on now (for a server started as its own process).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The Redis every machine runs.
pub const REDIS: &str = "127.0.0.1:6379";

/// The PostgreSQL every machine runs.
pub const POSTGRES: &str = "127.0.0.1:5432";

/// A TCP relay to a service (Redis, PostgreSQL) that can be cut (every connection dropped, nothing
/// accepted) and restored.
pub struct Proxy {
    pub addr: std::net::SocketAddr,
    target: &'static str,
    tasks: std::sync::Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    pub async fn start(target: &'static str) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay = Proxy {
            addr: listener.local_addr().unwrap(),
            target,
            tasks: std::sync::Arc::default(),
        };
        relay.serve(listener);
        relay
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let (tasks, target) = (self.tasks.clone(), self.target);
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let pipe = tokio::spawn(async move {
                    if let Ok(mut service) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut service).await;
                    }
                });
                tasks.lock().unwrap().push(pipe);
            }
        });
        self.tasks.lock().unwrap().push(accept);
    }

    pub fn cut(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    pub async fn restore(&self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }
}
