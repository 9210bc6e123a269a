//! Kill -9 the real binary in the middle of a bulk price write: after a restart the rows are all there or
//! none are, never some. Kill it in the middle of a batch job: after a restart the job resumes and its
//! results are byte for byte those of a run never interrupted.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{client_with, free_port, ingest_fixture_at, requests_csv, shipped_models, ADMIN_KEY};
use serde_json::{json, Value};

fn start(data: &Path, models: &Path, port: u16) -> Child {
    start_with(data, models, port, &[])
}

fn start_with(data: &Path, models: &Path, port: u16, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_mercator"))
        .args(["serve", "--addr", &format!("127.0.0.1:{port}")])
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .arg("--models-dir")
        .arg(models)
        .env("MERCATOR_ADMIN_KEY", ADMIN_KEY)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("the mercator binary starts")
}

async fn wait_ready(client: &reqwest::Client, base: &str) {
    for _ in 0..600 {
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await {
            if r.status() == 200 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the server never became ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_write_killed_midway_leaves_all_or_none() {
    let data = tempfile::tempdir().unwrap();
    let models = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let client = client_with(ADMIN_KEY);
    let mut server = start(data.path(), models.path(), port);
    wait_ready(&client, &base).await;

    let material: Value = client
        .post(format!("{base}/api/v1/materials"))
        .json(&json!({"code": "M-1", "name": "m", "category": "c", "unit": "kg"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = material["id"].as_str().unwrap().to_string();
    const ROWS: usize = 200_000;
    let mut csv = String::from("time,material_id,price,currency,price_type\n");
    for i in 0..ROWS {
        csv.push_str(&format!(
            "2024-01-01T00:00:00Z,{id},{}.5,EUR,quote\n",
            1 + i % 50
        ));
    }
    let request = tokio::spawn(
        client
            .post(format!("{base}/api/v1/prices/bulk"))
            .header("content-type", "text/csv")
            .body(csv)
            .send(),
    );

    // The write is under way once SQLite's write-ahead log grows; kill then, before it can commit.
    let wal = data.path().join("mercator.db-wal");
    let started = Instant::now();
    loop {
        let size = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        if size > 4 * 1024 * 1024 {
            break;
        }
        assert!(
            !request.is_finished(),
            "the write finished before it could be interrupted"
        );
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the write never started"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    server.kill().unwrap();
    server.wait().unwrap();
    assert!(
        request.await.unwrap().is_err(),
        "the killed server never answered"
    );

    let mut server = start(data.path(), models.path(), port);
    wait_ready(&client, &base).await;
    let listed: Value = client
        .get(format!("{base}/api/v1/prices?limit=1&count=true"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    server.kill().unwrap();
    server.wait().unwrap();
    let total = listed["total"].as_u64().unwrap();
    assert_eq!(total, 0, "a write killed before its commit leaves nothing");
}

async fn job(client: &reqwest::Client, base: &str, id: &str) -> Value {
    client
        .get(format!("{base}/api/v1/predictions/batch/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn submit(client: &reqwest::Client, base: &str, csv: &str) -> String {
    let r = client
        .post(format!("{base}/api/v1/predictions/batch"))
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

async fn wait_end(client: &reqwest::Client, base: &str, id: &str) -> Value {
    let started = Instant::now();
    loop {
        let j = job(client, base, id).await;
        if j["state"] != "queued" && j["state"] != "running" {
            return j;
        }
        assert!(started.elapsed() < Duration::from_secs(300), "{j}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn results_csv(client: &reqwest::Client, base: &str, id: &str) -> String {
    client
        .get(format!(
            "{base}/api/v1/predictions/batch/{id}/results?format=csv"
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Batch chunks the server holds, read from its SQLite file.
async fn chunks_held(data: &Path) -> i64 {
    use sqlx::Connection;
    let url = format!("sqlite://{}?mode=ro", data.join("mercator.db").display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM batch_chunks WHERE state = 'running' AND lease_until > 0",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_job_killed_midway_resumes_and_loses_no_row() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let client = client_with(ADMIN_KEY);
    let args = ["--batch-chunk-rows", "2000"];
    let mut server = start_with(data.path(), &shipped_models(), port, &args);
    wait_ready(&client, &base).await;
    let fixture = ingest_fixture_at(&base, &client).await;
    const ROWS: usize = 100_000;
    let (csv, _) = requests_csv(&fixture, ROWS, 501);
    let id = submit(&client, &base, &csv).await;

    // Kill once a few chunks have committed, well before the end.
    let started = Instant::now();
    let before = loop {
        let j = job(&client, &base, &id).await;
        let processed = j["processed_rows"].as_u64().unwrap();
        assert!(
            processed < ROWS as u64,
            "the job ended before it could be interrupted"
        );
        // Killed while it holds a chunk (its two chunks can commit together, leaving it none for an
        // instant), so that the restart takes one over.
        if processed >= 6000 && chunks_held(data.path()).await > 0 {
            break processed;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "{j}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    server.kill().unwrap();
    server.wait().unwrap();

    let mut server = start_with(data.path(), &shipped_models(), port, &args);
    wait_ready(&client, &base).await;
    let resumed = job(&client, &base, &id).await;
    assert!(
        resumed["processed_rows"].as_u64().unwrap() >= before,
        "committed rows survive the kill: {resumed}"
    );
    let done = wait_end(&client, &base, &id).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["attempts"], 2, "{done}");
    assert_eq!(done["processed_rows"], ROWS);
    let interrupted = results_csv(&client, &base, &id).await;

    // The same input, never interrupted: the same bytes.
    let clean = submit(&client, &base, &csv).await;
    assert_eq!(wait_end(&client, &base, &clean).await["state"], "succeeded");
    let uninterrupted = results_csv(&client, &base, &clean).await;
    server.kill().unwrap();
    server.wait().unwrap();
    assert_eq!(interrupted.lines().count(), ROWS + 1);
    let rows: Vec<usize> = interrupted
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(
        rows,
        (1..=ROWS).collect::<Vec<_>>(),
        "every row once, in order"
    );
    assert!(
        interrupted == uninterrupted,
        "an interrupted job's results equal a clean run's"
    );
}

/// A job taken by a server from before chunks were kept in the store (its input and committed results in
/// the data directory) is moved into the store when the new server starts: its committed rows are
/// answered as they were, the rest run, and the directory goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_from_before_the_store_kept_chunks_is_adopted_and_finishes() {
    use sqlx::Connection;
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let client = client_with(ADMIN_KEY);
    let mut server = start(data.path(), &shipped_models(), port);
    wait_ready(&client, &base).await;
    let fixture = ingest_fixture_at(&base, &client).await;
    server.kill().unwrap();
    server.wait().unwrap();

    // What the old server left: a running job of two chunks of two rows, the first committed.
    let (csv, _) = requests_csv(&fixture, 4, 0);
    let lines: Vec<&str> = csv.split_inclusive('\n').collect();
    let at = |n: usize| lines[..n].iter().map(|l| l.len()).sum::<usize>();
    let chunks = format!("[[0,2,{},{}],[2,2,{},{}]]", at(1), at(3), at(3), at(5));
    let id = "bat_0000000000000000000000000000legacy";
    let dir = data.path().join("batches").join(id);
    std::fs::create_dir_all(dir.join("results")).unwrap();
    std::fs::write(dir.join("input.csv"), &csv).unwrap();
    let committed = "1,9.5,9,10,0.8,0.5,2,2025-07-01,,\n2,8.5,8,9,0.8,0.5,2,2025-07-01,,\n";
    std::fs::write(dir.join("results/c000000.csv"), committed).unwrap();
    let url = format!("sqlite://{}", data.path().join("mercator.db").display());
    let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let org: String = sqlx::query_scalar("SELECT id FROM organizations LIMIT 1")
        .fetch_one(&mut db)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO batch_jobs (id, organization_id, node, model, model_version, state, input_format, \
         input_bytes, total_rows, processed_rows, failed_rows, chunks, chunks_total, chunks_done, attempts, \
         created_at, started_at) \
         VALUES ($1, $2, 'node_old', 'price', 2, 'running', 'csv', $3, 4, 2, 0, $4, 2, 1, 1, 0, 0)",
    )
    .bind(id)
    .bind(&org)
    .bind(csv.len() as i64)
    .bind(&chunks)
    .execute(&mut db)
    .await
    .unwrap();
    drop(db);

    let mut server = start(data.path(), &shipped_models(), port);
    wait_ready(&client, &base).await;
    let done = wait_end(&client, &base, id).await;
    assert_eq!(
        (done["state"].as_str(), done["processed_rows"].as_u64()),
        (Some("succeeded"), Some(4)),
        "{done}"
    );
    let results = results_csv(&client, &base, id).await;
    server.kill().unwrap();
    server.wait().unwrap();
    let rows: Vec<&str> = results.lines().skip(1).collect();
    assert_eq!(rows.len(), 4, "{results}");
    assert_eq!(
        format!("{}\n{}\n", rows[0], rows[1]),
        committed,
        "committed rows as they were"
    );
    assert!(
        rows[2].starts_with("3,") && rows[3].starts_with("4,"),
        "{results}"
    );
    assert!(
        rows[2].split(',').nth(1).unwrap().parse::<f64>().unwrap() > 0.0,
        "{results}"
    );
    assert!(
        !dir.exists(),
        "the directory goes once the store has the job"
    );
}
