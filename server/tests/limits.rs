//! Rate limits over real HTTP: a key's own limit at its edge, the headers every counted answer carries,
//! requests with a key that is not valid limited per client address, two replicas sharing one limit through the
//! real Redis, and what happens while Redis cannot be reached.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::{client_with, PgDatabase, Proxy, TestServer, REDIS};
use mercator_services::limits::shared;
use reqwest::{Client, Response};
use serde_json::{json, Value};

/// A key made by the platform admin with these rate limits: its id and a client holding it.
async fn key_with_limits(s: &TestServer, limits: &str) -> (String, Client) {
    let r = s
        .client
        .post(s.url("/api/v1/api-keys"))
        .json(&json!({ "name": "limited", "role": "analyst", "rate_limits": limits }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["rate_limits"], limits, "{body}");
    (
        body["id"].as_str().unwrap().to_string(),
        client_with(body["secret"].as_str().unwrap()),
    )
}

fn header<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).map(|v| v.to_str().unwrap())
}

async fn infer(s: &TestServer, client: &Client) -> Response {
    let row: Vec<f32> = (0..20).map(|i| i as f32 * 0.1).collect();
    client
        .post(s.url("/v2/models/price/versions/1/infer"))
        .json(
            &json!({ "inputs": [{ "name": "features", "datatype": "FP32", "shape": [1, 20],
                                    "data": row }] }),
        )
        .send()
        .await
        .unwrap()
}

/// A key limited to 5 predictions a minute: 5 admitted, each saying how many remain; the 6th refused with
/// 429 `rate_limited` in the V2 shape and the wait; other classes and other keys are not touched; a
/// request earns back one every 12 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_own_limit_is_exact_at_its_edge() {
    let mut clock = None;
    let s = TestServer::with(|c| clock = Some(c.clock.clone())).await;
    let clock = clock.unwrap();
    let (_, limited) = key_with_limits(&s, "predict=5/min").await;
    for i in 0..5 {
        let r = infer(&s, &limited).await;
        assert_eq!(r.status(), 200, "request {i}");
        assert_eq!(header(&r, "ratelimit-policy"), Some("\"predict\";q=5;w=60"));
        let state = header(&r, "ratelimit").unwrap().to_string();
        assert!(
            state.starts_with(&format!("\"predict\";r={};t=", 4 - i)),
            "{state}"
        );
    }
    let r = infer(&s, &limited).await;
    assert_eq!(r.status(), 429);
    let wait: u64 = header(&r, "retry-after").unwrap().parse().unwrap();
    assert!((1..=12).contains(&wait), "{wait}");
    assert!(header(&r, "ratelimit")
        .unwrap()
        .starts_with("\"predict\";r=0;"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "rate_limited", "V2's shape: {body}");
    assert!(
        body["error"].as_str().unwrap().contains("predict"),
        "{body}"
    );

    // Reads are another class, which this key's limits leave alone.
    let r = limited.get(s.url("/v2/models/price")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(header(&r, "ratelimit").is_none());
    // The admin key (no limits of its own, and no default for keys) is not limited.
    for _ in 0..8 {
        let r = infer(&s, &s.client).await;
        assert_eq!(r.status(), 200);
        assert!(header(&r, "ratelimit").is_none());
    }
    // One request comes back every 12 s.
    clock.advance(Duration::from_secs(12));
    assert_eq!(infer(&s, &limited).await.status(), 200);
    assert_eq!(infer(&s, &limited).await.status(), 429);
}

/// A refusal on the REST API is the envelope, naming the rule, its rate and the wait; the default for keys
/// (--rate-limits-key) holds keys without their own, and an empty `rate_limits` frees a key of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_for_keys_and_the_rest_envelope() {
    let models = tempfile::tempdir().unwrap();
    let dir = models.path().to_path_buf();
    let s = TestServer::with(|c| {
        c.models_dir = dir;
        c.rate_limits.key = "read=3/h,all=100/h".parse().unwrap();
    })
    .await;
    let (_, defaulted) = key_with_limits(&s, "").await;
    let made: Value = s
        .client
        .post(s.url("/api/v1/api-keys"))
        .json(&json!({ "name": "default", "role": "viewer" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(made["rate_limits"], Value::Null);
    let held = client_with(made["secret"].as_str().unwrap());
    for i in 0..3 {
        let r = held.get(s.url("/api/v1/materials")).send().await.unwrap();
        assert_eq!(r.status(), 200, "request {i}");
        assert_eq!(
            header(&r, "ratelimit-policy"),
            Some("\"read\";q=3;w=3600, \"all\";q=100;w=3600")
        );
    }
    let r = held.get(s.url("/api/v1/materials")).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(header(&r, "x-request-id").is_some());
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    assert_eq!(body["status_code"], 429);
    assert_eq!(body["error"]["details"]["policy"], "read");
    assert_eq!(body["error"]["details"]["limit"], "3/h");
    let wait = body["error"]["details"]["retry_after_seconds"]
        .as_u64()
        .unwrap();
    assert!((1..=1200).contains(&wait), "{body}");
    // Writes are not reads: `all` still admits them (it was not debited by the refusal either).
    let r = held
        .post(s.url("/api/v1/materials"))
        .json(&json!({ "code": "M1", "name": "m", "unit": "kg" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "a viewer, but not rate limited");
    assert_eq!(
        header(&r, "ratelimit").unwrap(),
        "\"all\";r=96;t=144",
        "3 reads and this write of 100 an hour: a request per 36 s"
    );
    // A key made with an empty plan has no limit at all.
    for _ in 0..5 {
        let r = defaulted
            .get(s.url("/api/v1/materials"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // A plan that does not parse is refused when the key is made.
    let r = s
        .client
        .post(s.url("/api/v1/api-keys"))
        .json(&json!({ "name": "x", "role": "viewer", "rate_limits": "predict=lots" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert!(body["error"]["details"]["rate_limits"].is_array(), "{body}");
}

/// A request with a credential that is not valid counts against its client address, so guessing keys is
/// limited (one with no credential at all is answered 401 uncounted); the probes, metrics and API reference are never counted; behind trusted proxies the client is the address
/// they forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_valid_key_are_limited_per_client_address() {
    let models = tempfile::tempdir().unwrap();
    let dir = models.path().to_path_buf();
    let s = TestServer::with(|c| {
        c.models_dir = dir;
        c.rate_limits.anonymous = "all=3/h".parse().unwrap();
    })
    .await;
    let anonymous = Client::new();
    for path in ["/healthz", "/readyz", "/openapi.json", "/docs"].repeat(3) {
        let r = anonymous.get(s.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert!(header(&r, "ratelimit").is_none(), "{path} is not counted");
    }
    // The document names each counted route's class and its 429.
    let doc: Value = anonymous
        .get(s.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for (path, method, class) in [
        ("/v2/models/{model}/infer", "post", "predict"),
        ("/api/v1/prices/bulk", "post", "bulk"),
        ("/api/v1/prices", "get", "read"),
        ("/api/v1/prices", "post", "write"),
        ("/api/v1/api-keys", "post", "admin"),
    ] {
        let operation = &doc["paths"][path][method];
        assert_eq!(operation["x-rate-limit-class"], class, "{method} {path}");
        assert!(operation["responses"]["429"].is_object(), "{method} {path}");
    }
    assert!(doc["paths"]["/healthz"]["get"]["x-rate-limit-class"].is_null());

    // No credential at all: 401 from memory, not counted (nothing is guessed).
    for _ in 0..5 {
        let r = anonymous
            .get(s.url("/api/v1/materials"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        assert!(header(&r, "ratelimit").is_none());
    }
    let guess = client_with("mk_live_notakeyatall00000000000000000000");
    let r = guess.get(s.url("/api/v1/materials")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(header(&r, "ratelimit"), Some("\"all\";r=2;t=1200"));
    assert_eq!(
        guess
            .get(s.url("/api/v1/materials"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        guess
            .get(s.url("/v2/models/price"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let r = guess.get(s.url("/api/v1/materials")).send().await.unwrap();
    assert_eq!(r.status(), 429);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("client address"));
    // A valid key has its own count.
    assert_eq!(
        s.client
            .get(s.url("/api/v1/materials"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // Behind one trusted proxy each forwarded client counts apart (and the proxy's own address does not).
    let models = tempfile::tempdir().unwrap();
    let dir = models.path().to_path_buf();
    let proxied = TestServer::with(|c| {
        c.models_dir = dir;
        c.rate_limits.anonymous = "all=2/h".parse().unwrap();
        c.rate_limits.proxy_hops = 1;
    })
    .await;
    let from = |client: &'static str| {
        guess
            .get(proxied.url("/api/v1/materials"))
            .header("x-forwarded-for", format!("203.0.113.9, {client}"))
            .send()
    };
    for client in ["198.51.100.1", "198.51.100.2"] {
        assert_eq!(from(client).await.unwrap().status(), 401);
        assert_eq!(from(client).await.unwrap().status(), 401);
        assert_eq!(from(client).await.unwrap().status(), 429, "{client}");
    }
}

/// A Redis prefix no other test (or earlier run) uses.
fn fresh_prefix() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "mercator-test-{}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// A replica of a fleet: the PostgreSQL database and Redis prefix it shares with the others.
async fn replica(database: &str, redis: &str, prefix: &str, anonymous: &str) -> TestServer {
    let models = tempfile::tempdir().unwrap();
    let dir = models.path().to_path_buf();
    let server = TestServer::with(|c| {
        c.models_dir = dir;
        c.database_url = Some(database.to_string());
        c.rate_limits.anonymous = anonymous.parse().unwrap();
        c.rate_limits.redis = Some(shared::Settings {
            url: format!("redis://{redis}/0"),
            prefix: prefix.to_string(),
            timeout: Duration::from_millis(500),
        });
    })
    .await;
    drop(models);
    server
}

/// Two replicas on one database and one Redis: a key's quota (small quotas lease one token at a time, so
/// exactly) and an address's quota are each one limit for the fleet, whichever replica answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_sharing_redis_enforce_one_limit() {
    let database = PgDatabase::create().await;
    let prefix = fresh_prefix();
    let a = replica(&database.url, REDIS, &prefix, "all=4/h").await;
    let b = replica(&database.url, REDIS, &prefix, "all=4/h").await;
    let (_, limited) = key_with_limits(&a, "read=10/min").await;
    let mut admitted = 0;
    for i in 0..16 {
        let s = if i % 2 == 0 { &a } else { &b };
        let r = limited
            .get(s.url("/api/v1/materials"))
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            200 => admitted += 1,
            429 => assert!(header(&r, "retry-after").is_some()),
            other => panic!("{other}"),
        }
    }
    assert_eq!(admitted, 10, "one limit for both replicas");

    let guess = client_with("mk_live_notakeyatall00000000000000000000");
    let mut statuses = Vec::new();
    for i in 0..7 {
        let s = if i % 2 == 0 { &b } else { &a };
        let r = guess.get(s.url("/api/v1/suppliers")).send().await.unwrap();
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses, [401, 401, 401, 401, 429, 429, 429]);
}

/// Redis cut off: no request fails, each replica limits in process (a limit still, never none), logs it
/// and counts it; Redis back: the shared count resumes where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_unreachable_each_replica_limits_on_its_own() {
    let relay = Proxy::start(REDIS).await;
    let prefix = fresh_prefix();
    let models = tempfile::tempdir().unwrap();
    let dir = models.path().to_path_buf();
    let addr = relay.addr.to_string();
    let mut clock = None;
    let s = TestServer::with(|c| {
        c.models_dir = dir;
        clock = Some(c.clock.clone());
        c.rate_limits.redis = Some(shared::Settings {
            url: format!("redis://{addr}/0"),
            prefix: prefix.clone(),
            timeout: Duration::from_millis(200),
        });
    })
    .await;
    let clock = clock.unwrap();
    let (_, limited) = key_with_limits(&s, "read=6/h").await;
    let get = || limited.get(s.url("/api/v1/materials")).send();
    for _ in 0..4 {
        assert_eq!(get().await.unwrap().status(), 200);
    }

    relay.cut();
    // In process, the key starts afresh: 6 more, then refused. No 5xx on the way.
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(get().await.unwrap().status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 200, 429, 429]);
    let fallbacks = fallbacks_of(&s).await;
    assert!(fallbacks >= 8.0, "{fallbacks}");

    relay.restore().await;
    // Past the retry interval the replica asks Redis again (reconnecting may take a try or two: a probe
    // with a key of its own waits until the answers come from Redis, not from the fallback).
    let (_, probe) = key_with_limits(&s, "read=1000/h").await;
    let mut shared_again = false;
    for _ in 0..50 {
        clock.advance(shared::RETRY_EVERY * 2);
        let before = fallbacks_of(&s).await;
        assert_eq!(
            probe
                .get(s.url("/api/v1/materials"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
        if fallbacks_of(&s).await == before {
            shared_again = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(shared_again, "Redis is used again once it answers");
    // Redis still holds the 4 counted before the cut: 2 more.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(get().await.unwrap().status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 429, 429], "the shared count resumed");
}

/// `mercator_rate_limit_fallbacks_total` (0 before the first).
async fn fallbacks_of(s: &TestServer) -> f64 {
    let metrics = s
        .client
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("mercator_rate_limit_fallbacks_total "))
        .map_or(0.0, |n| n.parse().unwrap())
}
