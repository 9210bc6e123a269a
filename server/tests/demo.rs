//! The first five minutes: the demo organization (`--demo`) and the README's quick start, run as written
//! against a server on the demo data.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{client_with, repo_root, TestServer, ADMIN_KEY};
use serde_json::{json, Value};

/// A server on the demo data, its data directory `root/data` (the README reads `data/demo.key`).
async fn demo_server(root: &Path) -> TestServer {
    let data = root.join("data");
    TestServer::with(move |c| {
        c.demo = true;
        c.data_dir = data;
    })
    .await
}

fn demo_key(root: &Path) -> String {
    std::fs::read_to_string(root.join("data/demo.key"))
        .unwrap()
        .trim()
        .to_string()
}

async fn total(client: &reqwest::Client, url: String) -> i64 {
    let r = client.get(url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.json::<Value>().await.unwrap()["total"].as_i64().unwrap()
}

/// A second start loads nothing twice and keeps the key; every demo material gets a price prediction as of
/// today (the history ends yesterday).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_loads_once_and_every_material_is_priced_today() {
    let root = tempfile::tempdir().unwrap();
    let mut s = demo_server(root.path()).await;
    let key = demo_key(root.path());
    let analyst = client_with(&key);
    let counts = |client: reqwest::Client, base: String| async move {
        (
            total(&client, format!("{base}/api/v1/materials")).await,
            total(&client, format!("{base}/api/v1/suppliers")).await,
            total(&client, format!("{base}/api/v1/prices?count=true")).await,
        )
    };
    let fixture_rows = std::fs::read_to_string(repo_root().join("fixtures/prices.csv"))
        .unwrap()
        .lines()
        .count() as i64
        - 1;
    let first = counts(analyst.clone(), s.base.clone()).await;
    assert_eq!(first, (40, 10, fixture_rows));
    // The analyst key's organization is `demo`, not the platform's (which the admin key sees empty).
    let (status, platform) = s.get("/api/v1/materials").await;
    assert_eq!((status, platform["total"].as_i64()), (200, Some(0)));
    let (status, orgs) = s.get("/api/v1/organizations").await;
    assert_eq!(status, 200);
    let names: Vec<&str> = orgs["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.iter().filter(|n| **n == "demo").count(), 1, "{orgs}");

    // The latest price is yesterday's.
    let latest: Value = analyst
        .get(s.url("/api/v1/prices?limit=1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let yesterday = chrono::Utc::now().date_naive().pred_opt().unwrap();
    assert!(
        latest["items"][0]["time"]
            .as_str()
            .unwrap()
            .starts_with(&yesterday.to_string()),
        "{latest}"
    );

    // Every material, priced as of today in one inline batch: no insufficient history, no stale one.
    let materials: Value = analyst
        .get(s.url("/api/v1/materials?limit=100"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let requests: Vec<Value> = materials["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| json!({"material_id": m["id"], "quantity": 500}))
        .collect();
    assert_eq!(requests.len(), 40);
    let r = analyst
        .post(s.url("/api/v1/predictions/batch"))
        .json(&requests)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(
        (answer["succeeded"].as_u64(), answer["failed"].as_u64()),
        (Some(40), Some(0)),
        "{answer}"
    );
    for row in answer["results"].as_array().unwrap() {
        let p = &row["prediction"];
        let (price, lower, upper) = (
            p["predicted_price"].as_f64().unwrap(),
            p["prediction_interval"]["lower"].as_f64().unwrap(),
            p["prediction_interval"]["upper"].as_f64().unwrap(),
        );
        assert!(lower < price && price < upper, "{row}");
        assert_eq!(
            p["as_of"],
            json!(chrono::Utc::now().date_naive().to_string())
        );
    }
    // Ingested through the ingest path: the prices carry the anomaly model's score.
    let scored: Value = analyst
        .get(s.url("/api/v1/prices?limit=5"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for p in scored["items"].as_array().unwrap() {
        assert!(p["anomaly"]["score"].is_number(), "{p}");
    }
    s.stop().await.unwrap();

    // A second start on the same data: nothing loaded twice, the same key.
    let mut again = demo_server(root.path()).await;
    assert_eq!(demo_key(root.path()), key);
    assert_eq!(counts(analyst.clone(), again.base.clone()).await, first);
    again.stop().await.unwrap();

    // A key file that no longer authenticates is replaced by a new key that does.
    std::fs::write(root.path().join("data/demo.key"), "mk_not_a_key\n").unwrap();
    let mut third = demo_server(root.path()).await;
    let replaced = demo_key(root.path());
    assert_ne!(replaced, key);
    assert_eq!(
        counts(client_with(&replaced), third.base.clone()).await,
        first
    );
    third.stop().await.unwrap();
}

/// One fenced block of the README.
#[derive(Debug)]
struct Block {
    /// The line its fence opens on (1-based).
    line: usize,
    code: String,
    /// The answer the README shows after it (a `json` block), whose shape the output must have.
    shows: Option<Value>,
}

/// The `sh` blocks of the README's section `title` (a `## ` heading), but those the line before marks
/// `<!-- not run -->` (they start the server).
fn sh_blocks(readme: &str, title: &str) -> Vec<Block> {
    let lines: Vec<&str> = readme.lines().collect();
    let start = lines
        .iter()
        .position(|l| *l == format!("## {title}"))
        .unwrap_or_else(|| panic!("README has no section {title:?}"));
    let end = lines[start + 1..]
        .iter()
        .position(|l| l.starts_with("## "))
        .map_or(lines.len(), |i| start + 1 + i);
    let mut blocks: Vec<Block> = Vec::new();
    let mut i = start + 1;
    let mut skip = false;
    while i < end {
        let line = lines[i];
        if let Some(lang) = line.strip_prefix("```") {
            let close = lines[i + 1..end]
                .iter()
                .position(|l| *l == "```")
                .map(|j| i + 1 + j)
                .unwrap_or_else(|| panic!("README line {}: an unclosed block", i + 1));
            let code = lines[i + 1..close].join("\n");
            match lang {
                "sh" if !skip => blocks.push(Block {
                    line: i + 1,
                    code,
                    shows: None,
                }),
                "json" => {
                    let shown = serde_json::from_str(&code).unwrap_or_else(|e| {
                        panic!("README line {}: the json block does not parse: {e}", i + 1)
                    });
                    let last = blocks.last_mut().expect("a json block follows an sh block");
                    last.shows = Some(shown);
                }
                _ => {}
            }
            skip = false;
            i = close + 1;
            continue;
        }
        if !line.trim().is_empty() {
            skip = line.trim() == "<!-- not run -->";
        }
        i += 1;
    }
    blocks
}

/// Whether `actual` has `shown`'s shape: the same JSON kind, every key shown present with that shape, and an
/// array's first element shaped like the first shown. Says where it differs.
fn shape_differs(shown: &Value, actual: &Value, at: &str) -> Option<String> {
    match (shown, actual) {
        (Value::Object(s), Value::Object(a)) => s.iter().find_map(|(k, v)| match a.get(k) {
            Some(got) => shape_differs(v, got, &format!("{at}.{k}")),
            None => Some(format!("{at}.{k} is missing")),
        }),
        (Value::Array(s), Value::Array(a)) => match (s.first(), a.first()) {
            (Some(s), Some(a)) => shape_differs(s, a, &format!("{at}[0]")),
            (Some(_), None) => Some(format!("{at} is empty")),
            _ => None,
        },
        (Value::Null, _) => None,
        (s, a) if std::mem::discriminant(s) == std::mem::discriminant(a) => None,
        (s, a) => Some(format!("{at}: shown {s}, got {a}")),
    }
}

/// The quick start, block by block in one shell (as a reader pastes them into one terminal), against a
/// server on the demo data: every command succeeds, and each answer the README shows has that shape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_quick_start_runs_as_written() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let blocks = sh_blocks(&readme, "Try it in five minutes");
    assert!(blocks.len() >= 7, "{blocks:?}");
    let root = tempfile::tempdir().unwrap();
    let s = demo_server(root.path()).await;
    let mut script = String::from("set -euo pipefail\n");
    for (i, b) in blocks.iter().enumerate() {
        script.push_str(&format!("printf '\\n@@block {i}\\n'\n{}\n", b.code));
    }
    let (base, dir) = (s.base.clone(), root.path().to_path_buf());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("bash")
            .arg("-c")
            .arg(script)
            .current_dir(dir)
            .env("MERCATOR", base)
            .env("ADMIN_KEY", ADMIN_KEY)
            .env_remove("KEY")
            .output()
            .unwrap()
    });
    let out = tokio::time::timeout(Duration::from_secs(300), out)
        .await
        .expect("the quick start finishes within 5 minutes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let outputs: Vec<&str> = stdout.split("\n@@block ").skip(1).collect();
    if !out.status.success() {
        let failed = outputs.len().saturating_sub(1);
        panic!(
            "README line {}: the block failed ({})\n{}\nstdout:\n{stdout}\nstderr:\n{stderr}",
            blocks[failed].line, out.status, blocks[failed].code
        );
    }
    assert_eq!(outputs.len(), blocks.len(), "{stdout}");
    let mut checked = 0;
    for (b, output) in blocks.iter().zip(&outputs) {
        let Some(shown) = &b.shows else { continue };
        let output = output.split_once('\n').map_or("", |(_, rest)| rest);
        // The whole output (pretty-printed), else its last line that is JSON.
        let actual = serde_json::from_str::<Value>(output.trim())
            .ok()
            .or_else(|| {
                output
                    .lines()
                    .rev()
                    .find_map(|l| serde_json::from_str(l).ok())
            })
            .unwrap_or_else(|| panic!("README line {}: no JSON answer in\n{output}", b.line));
        if let Some(why) = shape_differs(shown, &actual, "answer") {
            panic!(
                "README line {}: the answer is not shaped as shown: {why}\n{actual}",
                b.line
            );
        }
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} answers shown\n{stdout}");
}

/// The shape check sees a missing key, another kind, and an empty array where the README shows items.
#[test]
fn shapes_are_compared_key_by_key() {
    let shown = json!({"a": 1, "b": {"c": "x"}, "d": [{"e": true}], "f": null});
    assert_eq!(
        shape_differs(
            &shown,
            &json!({"a": 2, "b": {"c": "y"}, "d": [{"e": false}], "f": 3, "g": 0}),
            "answer"
        ),
        None
    );
    assert!(shape_differs(
        &shown,
        &json!({"a": 2, "b": {}, "d": [{"e": true}], "f": 1}),
        "answer"
    )
    .unwrap()
    .contains("answer.b.c is missing"));
    assert!(shape_differs(
        &shown,
        &json!({"a": "2", "b": {"c": "y"}, "d": [], "f": 1}),
        "answer"
    )
    .is_some());
    assert!(shape_differs(
        &shown,
        &json!({"a": 2, "b": {"c": "y"}, "d": [], "f": 1}),
        "answer"
    )
    .unwrap()
    .contains("answer.d is empty"));
}
