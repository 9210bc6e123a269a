//! Batch prediction jobs end to end on the real server: a 200,000-row CSV job followed over a real
//! WebSocket to its end, its results in every format and equal to the single endpoint's answers; cancel;
//! jobs of two organizations that see only their own.

mod common;

use std::time::{Duration, Instant};

use common::{client_with, ingest_fixture, requests_csv, TestServer};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

async fn submit(s: &TestServer, client: &reqwest::Client, csv: String) -> Value {
    let r = client
        .post(s.url("/api/v1/predictions/batch"))
        .header("content-type", "text/csv")
        .header("prefer", "respond-async")
        .body(csv)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let location = r.headers().get("location").cloned();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        location.unwrap().to_str().unwrap(),
        body["status_url"].as_str().unwrap()
    );
    body
}

async fn get(s: &TestServer, client: &reqwest::Client, path: &str) -> (u16, Value) {
    let r = client.get(s.url(path)).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// Polls the job until it has ended.
async fn wait_end(s: &TestServer, client: &reqwest::Client, id: &str) -> Value {
    let until = Instant::now() + Duration::from_secs(600);
    loop {
        let (status, job) = get(s, client, &format!("/api/v1/predictions/batch/{id}")).await;
        assert_eq!(status, 200, "{job}");
        if ["succeeded", "failed", "cancelled"].contains(&job["state"].as_str().unwrap()) {
            return job;
        }
        assert!(Instant::now() < until, "the job never ended: {job}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn results(
    s: &TestServer,
    client: &reqwest::Client,
    id: &str,
    format: &str,
) -> reqwest::Response {
    client
        .get(s.url(&format!(
            "/api/v1/predictions/batch/{id}/results?format={format}"
        )))
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200k_row_job_is_followed_over_a_websocket_and_answers_like_the_single_endpoint() {
    let s = TestServer::start().await;
    let fixture = ingest_fixture(&s, &s.client).await;
    const ROWS: usize = 200_000;
    let (csv, bad) = requests_csv(&fixture, ROWS, 997);
    let accepted = submit(&s, &s.client, csv.clone()).await;
    assert_eq!(accepted["total_rows"], ROWS);
    let id = accepted["batch_id"].as_str().unwrap().to_string();

    // Results before the end: 409.
    let early = results(&s, &s.client, &id, "csv").await;
    if early.status() != 200 {
        assert_eq!(early.status(), 409);
        let body: Value = early.json().await.unwrap();
        assert_eq!(body["error"]["code"], "results_not_ready");
    }

    // A WebSocket client, authenticated by its header: a snapshot, monotone progress, a final event.
    let ws = s.base.replace("http://", "ws://");
    let mut request = format!("{ws}{}", accepted["ws_url"].as_str().unwrap())
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", common::ADMIN_KEY).parse().unwrap(),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let mut events: Vec<Value> = Vec::new();
    let mut closed = false;
    while let Some(message) = tokio::time::timeout(Duration::from_secs(120), socket.next())
        .await
        .expect("a message within 2 minutes")
    {
        match message.unwrap() {
            Message::Text(text) => events.push(serde_json::from_str(&text).unwrap()),
            Message::Close(frame) => {
                assert_eq!(u16::from(frame.unwrap().code), 1000);
                closed = true;
                break;
            }
            _ => {}
        }
    }
    assert!(closed, "the server closes the stream after the final event");
    assert_eq!(events[0]["type"], "snapshot", "{}", events[0]);
    let last = events.last().unwrap();
    assert_eq!(last["type"], "final", "{last}");
    assert_eq!(
        (
            last["state"].as_str(),
            last["processed"].as_u64(),
            last["total"].as_u64()
        ),
        (Some("succeeded"), Some(ROWS as u64), Some(ROWS as u64))
    );
    let bad_rows = bad.iter().filter(|b| **b).count() as u64;
    assert_eq!(last["failed"], bad_rows, "{last}");
    assert!(last["results_url"].is_string());
    let processed: Vec<u64> = events
        .iter()
        .map(|e| e["processed"].as_u64().unwrap())
        .collect();
    assert!(
        processed.windows(2).all(|w| w[0] <= w[1]),
        "progress never goes back: {processed:?}"
    );
    assert!(
        events.iter().filter(|e| e["type"] == "progress").count() >= 2,
        "progress is reported as chunks commit: {events:?}"
    );
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (0..events.len() as u64).collect::<Vec<_>>());

    // A client that comes after the end gets the final event at once.
    let (mut late, _) = tokio_tungstenite::connect_async(format!(
        "{ws}/ws/predictions/{id}?api_key={}",
        common::ADMIN_KEY
    ))
    .await
    .unwrap();
    let first = late.next().await.unwrap().unwrap();
    let first: Value = serde_json::from_str(first.to_text().unwrap()).unwrap();
    assert_eq!(
        (first["type"].as_str(), first["processed"].as_u64()),
        (Some("final"), Some(ROWS as u64))
    );

    let job = wait_end(&s, &s.client, &id).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["attempts"], 1);
    assert!(job["rows_per_sec"].as_f64().unwrap() > 0.0);

    // CSV: a header and every row in order; failed rows carry their error.
    let r = results(&s, &s.client, &id, "csv").await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["x-total-rows"].to_str().unwrap(),
        ROWS.to_string()
    );
    let text = r.text().await.unwrap();
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(records.len(), ROWS);
    for (i, record) in records.iter().enumerate() {
        assert_eq!(record[0].parse::<usize>().unwrap(), i + 1);
        assert_eq!(record[8].is_empty(), !bad[i], "row {}: {record:?}", i + 1);
    }
    assert_eq!(&records[996][8], "not_found");

    // A sample of rows: the single endpoint's answer.
    let inputs: Vec<&str> = csv.lines().skip(1).collect();
    for i in (0..ROWS).step_by(9973).filter(|i| !bad[*i]) {
        let cells: Vec<&str> = inputs[i].split(',').collect();
        let request = json!({"material_id": cells[0], "quantity": cells[1].parse::<f64>().unwrap(),
                             "supplier_id": cells[2], "as_of": cells[3]});
        let r = s
            .client
            .post(s.url("/api/v1/predictions/price"))
            .json(&request)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let one: Value = r.json().await.unwrap();
        let (batch, alone) = (
            records[i][1].parse::<f64>().unwrap(),
            one["predicted_price"].as_f64().unwrap(),
        );
        assert!(
            (batch - alone).abs() <= 1e-9 * alone,
            "row {}: {batch} vs {alone}",
            i + 1
        );
        let upper = records[i][3].parse::<f64>().unwrap();
        let single_upper = one["prediction_interval"]["upper"].as_f64().unwrap();
        assert!((upper - single_upper).abs() <= 1e-9 * single_upper);
    }

    // JSON (an array) and NDJSON: the same rows.
    let r = results(&s, &s.client, &id, "json").await;
    let rows: Vec<Value> = r.json().await.unwrap();
    assert_eq!(rows.len(), ROWS);
    assert_eq!(rows[0]["row"], 1);
    assert_eq!(
        rows[0]["prediction"]["predicted_price"].as_f64().unwrap(),
        records[0][1].parse::<f64>().unwrap()
    );
    assert_eq!(rows[996]["error"]["code"], "not_found");
    let text = results(&s, &s.client, &id, "ndjson")
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(text.lines().count(), ROWS);

    // Parquet: read back by Polars.
    let r = results(&s, &s.client, &id, "parquet").await;
    assert_eq!(r.status(), 200);
    let bytes = r.bytes().await.unwrap();
    use mercator_features::polars::prelude::{ParquetReader, SerReader};
    let frame = ParquetReader::new(std::io::Cursor::new(bytes.to_vec()))
        .finish()
        .unwrap();
    assert_eq!(frame.height(), ROWS);
    let prices = frame
        .column("predicted_price")
        .unwrap()
        .f64()
        .unwrap()
        .clone();
    assert_eq!(prices.null_count() as u64, bad_rows);
    assert_eq!(prices.get(0), Some(records[0][1].parse::<f64>().unwrap()));

    // The organization's list has it.
    let (status, list) = get(&s, &s.client, "/api/v1/predictions/batch?state=succeeded").await;
    assert_eq!(status, 200);
    assert!(list["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|j| j["id"] == id.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_jobs_stop_and_still_answer_every_row() {
    let s = TestServer::with(|c| {
        c.batch.chunk_rows = 500;
        c.batch.max_running = 1;
        c.batch_inline_max_rows = 100;
    })
    .await;
    let fixture = ingest_fixture(&s, &s.client).await;
    const ROWS: usize = 60_000;
    let (csv, _) = requests_csv(&fixture, ROWS, 0);
    let running = submit(&s, &s.client, csv.clone()).await;
    let queued = submit(&s, &s.client, csv).await;
    let (running, queued) = (
        running["batch_id"].as_str().unwrap().to_string(),
        queued["batch_id"].as_str().unwrap().to_string(),
    );
    // The second waits behind the first (one job runs at a time here): cancelled at once.
    let r = s
        .client
        .delete(s.url(&format!("/api/v1/predictions/batch/{queued}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let job: Value = r.json().await.unwrap();
    assert_eq!(
        (job["state"].as_str(), job["processed_rows"].as_u64()),
        (Some("cancelled"), Some(0))
    );

    // The first, once it has committed some chunks.
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, job) = get(
            &s,
            &s.client,
            &format!("/api/v1/predictions/batch/{running}"),
        )
        .await;
        if job["processed_rows"].as_u64().unwrap() >= 1000 {
            break;
        }
        assert!(Instant::now() < until, "{job}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // POST .../cancel does what DELETE does.
    let r = s
        .client
        .post(s.url(&format!("/api/v1/predictions/batch/{running}/cancel")))
        .send()
        .await
        .unwrap();
    // Ended at once: a chunk computing is not committed after this.
    let status = r.status().as_u16();
    let answered: Value = r.json().await.unwrap();
    assert_eq!(
        (status, answered["state"].as_str()),
        (200, Some("cancelled")),
        "{answered}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let job = wait_end(&s, &s.client, &running).await;
    assert_eq!(
        job["processed_rows"], answered["processed_rows"],
        "nothing commits after the cancel"
    );
    assert_eq!(job["state"], "cancelled", "{job}");
    assert!(job["cancel_requested_at"].is_string());
    let processed = job["processed_rows"].as_u64().unwrap() as usize;
    assert!((1000..ROWS).contains(&processed), "{job}");
    assert_eq!(processed % 500, 0, "whole chunks only: {processed}");

    // Every row is answered: the committed ones, then `not_run`.
    let text = results(&s, &s.client, &running, "csv")
        .await
        .text()
        .await
        .unwrap();
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(records.len(), ROWS);
    for (i, record) in records.iter().enumerate() {
        assert_eq!(record[0].parse::<usize>().unwrap(), i + 1);
        if i < processed {
            assert!(!record[1].is_empty(), "row {}: {record:?}", i + 1);
        } else {
            assert_eq!(&record[8], "not_run", "row {}: {record:?}", i + 1);
        }
    }
    // A download that broke at row 12,345 resumes there: no header, the rows from there on.
    let r = s
        .client
        .get(s.url(&format!(
            "/api/v1/predictions/batch/{running}/results?format=csv&offset=12345"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-total-rows"], (ROWS - 12345).to_string());
    let rest = r.text().await.unwrap();
    let whole: Vec<&str> = text.lines().skip(1 + 12345).collect();
    assert_eq!(rest.lines().collect::<Vec<_>>(), whole);

    // The errors alone: the rows it never ran (and any that failed), as rows of the results.
    let r = s
        .client
        .get(s.url(&format!(
            "/api/v1/predictions/batch/{running}/errors?format=ndjson"
        )))
        .send()
        .await
        .unwrap();
    let failed = job["failed_rows"].as_u64().unwrap() as usize;
    assert_eq!(
        r.headers()["x-total-rows"],
        (failed + ROWS - processed).to_string()
    );
    let errors: Vec<Value> = r
        .text()
        .await
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(errors.len(), failed + ROWS - processed);
    assert!(errors.iter().all(|e| e["error"]["code"].is_string()));
    assert_eq!(errors.last().unwrap()["row"], ROWS);
    assert_eq!(
        errors[failed]["error"]["code"], "not_run",
        "{}",
        errors[failed]
    );

    // Cancelling an ended job changes nothing.
    let r = s
        .client
        .delete(s.url(&format!("/api/v1/predictions/batch/{running}")))
        .send()
        .await
        .unwrap();
    let again: Value = r.json().await.unwrap();
    assert_eq!(again["processed_rows"], job["processed_rows"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_concurrent_jobs_of_two_organizations_each_see_only_their_own() {
    let s = TestServer::with(|c| {
        c.batch.chunk_rows = 1000;
        c.batch.max_active_per_org = 5;
        c.batch_inline_max_rows = 100;
    })
    .await;
    let fixture = ingest_fixture(&s, &s.client).await;
    let (_, org) = s.post("/api/v1/organizations", &json!({"name": "B"})).await;
    let b = client_with(org["api_key"]["secret"].as_str().unwrap());
    let (csv, _) = requests_csv(&fixture, 20_000, 0);
    let mut submitted = Vec::new();
    for client in [&s.client, &b] {
        let mut ids = Vec::new();
        for _ in 0..5 {
            let job = submit(&s, client, csv.clone()).await;
            ids.push(job["batch_id"].as_str().unwrap().to_string());
        }
        submitted.push(ids);
    }
    // A sixth active job is one too many.
    let r = b
        .post(s.url("/api/v1/predictions/batch"))
        .header("content-type", "text/csv")
        .header("prefer", "respond-async")
        .body(csv.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_batch_jobs");

    let ws = s.base.replace("http://", "ws://");
    for (client, mine, theirs) in [
        (&s.client, &submitted[0], &submitted[1]),
        (&b, &submitted[1], &submitted[0]),
    ] {
        for id in mine {
            let job = wait_end(&s, client, id).await;
            assert_eq!(job["state"], "succeeded", "{job}");
            assert_eq!(job["processed_rows"], 20_000);
        }
        let (_, list) = get(&s, client, "/api/v1/predictions/batch").await;
        let mut listed: Vec<String> = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_str().unwrap().to_string())
            .collect();
        listed.sort();
        let mut expected = mine.clone();
        expected.sort();
        assert_eq!(listed, expected);
        for id in theirs {
            let (status, _) = get(&s, client, &format!("/api/v1/predictions/batch/{id}")).await;
            assert_eq!(status, 404);
            let r = results(&s, client, id, "csv").await;
            assert_eq!(r.status(), 404);
            let r = client
                .delete(s.url(&format!("/api/v1/predictions/batch/{id}")))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 404);
        }
    }
    // Organization B's key cannot follow A's job.
    let b_key = org["api_key"]["secret"].as_str().unwrap();
    let refused = tokio_tungstenite::connect_async(format!(
        "{ws}/ws/predictions/{}?api_key={b_key}",
        submitted[0][0]
    ))
    .await;
    assert!(refused.is_err());
    let refused =
        tokio_tungstenite::connect_async(format!("{ws}/ws/predictions/{}", submitted[0][0])).await;
    assert!(refused.is_err(), "no key, no stream");
    // B's rows name A's materials: each is not found in B.
    let text = results(&s, &b, &submitted[1][0], "csv")
        .await
        .text()
        .await
        .unwrap();
    assert!(text.lines().skip(1).all(|l| l.contains("not_found")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_batches_are_refused_at_submit_and_json_and_parquet_become_jobs() {
    let s = TestServer::with(|c| c.batch_inline_max_rows = 10).await;
    let fixture = ingest_fixture(&s, &s.client).await;
    let send = |body: Vec<u8>, kind: &'static str| {
        s.client
            .post(s.url("/api/v1/predictions/batch"))
            .header("content-type", kind)
            .body(body)
            .send()
    };
    // A record with a cell too many: refused whole, naming the line.
    let r = send(b"material_id,quantity\nA,1\nB,2,3\n".to_vec(), "text/csv")
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("line 3"),
        "{body}"
    );
    let r = send(b"not parquet".to_vec(), "application/vnd.apache.parquet")
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = send(b"material_id,quantity\n".to_vec(), "text/csv")
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = send(b"x".to_vec(), "text/plain").await.unwrap();
    assert_eq!(r.status(), 415);

    // JSON: 30 requests, one with a bad value, become a job; the bad row carries its error.
    let (csv, _) = requests_csv(&fixture, 30, 0);
    let objects: Vec<Value> = csv
        .lines()
        .skip(1)
        .enumerate()
        .map(|(i, l)| {
            let c: Vec<&str> = l.split(',').collect();
            let quantity = if i == 4 {
                json!("lots")
            } else {
                json!(c[1].parse::<f64>().unwrap())
            };
            json!({"material_id": c[0], "quantity": quantity, "supplier_id": c[2], "as_of": c[3]})
        })
        .collect();
    let r = send(serde_json::to_vec(&objects).unwrap(), "application/json")
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["batch_id"]
        .as_str()
        .unwrap()
        .to_string();
    let job = wait_end(&s, &s.client, &id).await;
    assert_eq!(
        (job["state"].as_str(), job["failed_rows"].as_u64()),
        (Some("succeeded"), Some(1))
    );
    let rows: Vec<Value> = results(&s, &s.client, &id, "json")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(rows[4]["error"]["code"], "validation_error");
    let json_prices: Vec<Value> = rows
        .iter()
        .map(|r| r["prediction"]["predicted_price"].clone())
        .collect();

    // Parquet with the same rows: the same prices.
    use mercator_features::polars::prelude::{CsvReader, ParquetWriter, SerReader};
    let mut frame = CsvReader::new(std::io::Cursor::new(csv.into_bytes()))
        .finish()
        .unwrap();
    let mut parquet = Vec::new();
    ParquetWriter::new(&mut parquet).finish(&mut frame).unwrap();
    let r = send(parquet, "application/vnd.apache.parquet")
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["batch_id"]
        .as_str()
        .unwrap()
        .to_string();
    let job = wait_end(&s, &s.client, &id).await;
    assert_eq!(
        (job["state"].as_str(), job["input_format"].as_str()),
        (Some("succeeded"), Some("parquet"))
    );
    let rows: Vec<Value> = results(&s, &s.client, &id, "json")
        .await
        .json()
        .await
        .unwrap();
    for (i, (row, want)) in rows.iter().zip(&json_prices).enumerate() {
        if i != 4 {
            assert_eq!(&row["prediction"]["predicted_price"], want, "row {}", i + 1);
        }
    }
}

/// The golden input rows of a one-input model, one `Vec` a row.
fn golden_rows(g: &common::Golden) -> Vec<Vec<f64>> {
    let width = g.inputs[0]["shape"][1].as_u64().unwrap() as usize;
    let data: Vec<f64> = g.inputs[0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    data.chunks(width).map(<[f64]>::to_vec).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_feature_rows_become_jobs_that_answer_as_the_model_does() {
    let s = TestServer::with(|c| {
        c.batch_inline_max_rows = 10;
        c.batch.chunk_rows = 128;
    })
    .await;
    let price = common::golden("price");
    let golden = golden_rows(&price);
    let expected = price.expected("price", 0, golden.len());
    // 1,000 rows cycling through the golden rows; row 7 is too short and row 500 holds a value no FP32 can.
    const ROWS: usize = 1000;
    let mut rows: Vec<Value> = (0..ROWS).map(|i| json!(golden[i % golden.len()])).collect();
    rows[6] = json!([1.0, 2.0]);
    let mut huge = golden[499 % golden.len()].clone();
    huge[0] = 1e39;
    rows[499] = json!(huge);
    let r = s
        .client
        .post(s.url("/api/v1/predictions/batch"))
        .json(&json!({"model": "price", "version": 1, "rows": rows}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["batch_id"]
        .as_str()
        .unwrap()
        .to_string();
    let job = wait_end(&s, &s.client, &id).await;
    assert_eq!(
        (
            job["state"].as_str(),
            job["input_format"].as_str(),
            job["model"].as_str(),
            job["model_version"].as_u64(),
            job["total_rows"].as_u64(),
            job["failed_rows"].as_u64(),
            job["chunks_total"].as_u64()
        ),
        (
            Some("succeeded"),
            Some("features"),
            Some("price"),
            Some(1),
            Some(ROWS as u64),
            Some(2),
            Some(8)
        ),
        "{job}"
    );
    let bad = [7usize, 500];
    let csv = results(&s, &s.client, &id, "csv")
        .await
        .text()
        .await
        .unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("row,price,error_code,error_message"));
    let lines: Vec<&str> = lines.collect();
    assert_eq!(lines.len(), ROWS);
    for (i, line) in lines.iter().enumerate() {
        let cells: Vec<&str> = line.splitn(4, ',').collect();
        assert_eq!(cells[0], (i + 1).to_string());
        if bad.contains(&(i + 1)) {
            assert_eq!((cells[1], cells[2]), ("", "validation_error"), "{line}");
        } else {
            let got: f64 = cells[1].parse().unwrap();
            let want = expected[i % golden.len()];
            assert!(
                (got - want).abs() <= 1e-5 * want.abs(),
                "row {}: {got} vs {want}",
                i + 1
            );
        }
    }
    let json_rows: Vec<Value> = results(&s, &s.client, &id, "json")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(json_rows.len(), ROWS);
    assert_eq!(json_rows[6]["error"]["code"], "validation_error");
    assert!(json_rows[6]["outputs"].is_null());
    let got = json_rows[8]["outputs"]["price"][0].as_f64().unwrap();
    let want = expected[8 % golden.len()];
    assert!((got - want).abs() <= 1e-5 * want.abs(), "{got} vs {want}");
    let parquet = results(&s, &s.client, &id, "parquet")
        .await
        .bytes()
        .await
        .unwrap();
    use mercator_features::polars::prelude::{ParquetReader, SerReader};
    let frame = ParquetReader::new(std::io::Cursor::new(parquet.to_vec()))
        .finish()
        .unwrap();
    assert_eq!(frame.height(), ROWS);
    let prices = frame.column("price").unwrap().f64().unwrap().clone();
    assert_eq!(prices.null_count(), 2);
    let got = prices.get(8).unwrap();
    assert!((got - want).abs() <= 1e-5 * want.abs());

    // CSV with `?model=`: a header of the input's width, one value a cell. Small: answered inline; larger:
    // a job. A cell that is not a number is its row's error.
    let anomaly = common::golden("anomaly");
    let golden = golden_rows(&anomaly);
    let scores = anomaly.expected("anomaly_score", 0, golden.len());
    let csv_of = |n: usize| {
        let mut csv = String::from("a,b,c,d,e,f\n");
        for i in 0..n {
            let cells: Vec<String> = golden[i % golden.len()]
                .iter()
                .map(|v| v.to_string())
                .collect();
            if i == 2 {
                csv.push_str("1,2,x,4,5,6\n");
            } else {
                csv.push_str(&(cells.join(",") + "\n"));
            }
        }
        csv
    };
    let post_csv = |body: String, query: &'static str| {
        s.client
            .post(s.url(&format!("/api/v1/predictions/batch{query}")))
            .header("content-type", "text/csv")
            .body(body)
            .send()
    };
    let r = post_csv(csv_of(5), "?model=anomaly&version=1")
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let inline: Value = r.json().await.unwrap();
    assert_eq!(
        (inline["rows"].as_u64(), inline["failed"].as_u64()),
        (Some(5), Some(1)),
        "{inline}"
    );
    let r = post_csv(csv_of(300), "?model=anomaly&version=1")
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["batch_id"]
        .as_str()
        .unwrap()
        .to_string();
    let job = wait_end(&s, &s.client, &id).await;
    assert_eq!(job["failed_rows"], 1, "{job}");
    let rows: Vec<Value> = results(&s, &s.client, &id, "ndjson")
        .await
        .text()
        .await
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 300);
    for (i, row) in rows.iter().enumerate() {
        if i == 2 {
            assert_eq!(row["error"]["code"], "validation_error", "{row}");
            continue;
        }
        let got = row["outputs"]["anomaly_score"][0].as_f64().unwrap();
        let want = scores[i % golden.len()];
        assert!(
            (got - want).abs() <= 1e-5 * want.abs().max(1e-6),
            "row {}: {got} vs {want}",
            i + 1
        );
    }
    // The inline answer's rows are the job's.
    for k in [0, 1, 3, 4] {
        assert_eq!(inline["results"][k]["outputs"], rows[k]["outputs"]);
    }

    // Refused at submit: a header of the wrong width, a model with two inputs, `?model=` on a body that
    // is not CSV, `?version=` alone.
    let r = s
        .client
        .post(s.url("/api/v1/predictions/batch?model=anomaly"))
        .json(&json!([{"material_id": "m", "quantity": 1}]))
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "validation_error", "{body}");
    let r = post_csv(csv_of(3), "?version=1").await.unwrap();
    assert_eq!(r.status(), 400);
    let r = post_csv("a,b\n1,2\n".into(), "?model=anomaly&version=1")
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = s
        .client
        .post(s.url("/api/v1/predictions/batch"))
        .json(&json!({"model": "forecast", "version": 1, "rows": [[1.0]]}))
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "validation_error", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_submit_with_one_key_makes_one_job_whose_results_expire() {
    let database = common::PgDatabase::create().await;
    let url = database.url.clone();
    let s = TestServer::with(move |c| {
        c.database_url = Some(url);
        c.batch_inline_max_rows = 10;
        c.batch.retention = Duration::from_secs(3);
    })
    .await;
    let fixture = ingest_fixture(&s, &s.client).await;
    let (csv, _) = requests_csv(&fixture, 40, 0);
    let submit_keyed = |body: String, key: &str| {
        s.client
            .post(s.url("/api/v1/predictions/batch"))
            .header("content-type", "text/csv")
            .header("idempotency-key", key)
            .body(body)
            .send()
    };
    let r = submit_keyed(csv.clone(), "quote-book-7").await.unwrap();
    assert_eq!(r.status(), 202);
    let first: Value = r.json().await.unwrap();
    // The retry (even with another body) gets the same job; another key makes another.
    let (other_csv, _) = requests_csv(&fixture, 30, 0);
    let r = submit_keyed(other_csv, "quote-book-7").await.unwrap();
    assert_eq!(r.status(), 202);
    let again: Value = r.json().await.unwrap();
    assert_eq!(again["batch_id"], first["batch_id"]);
    assert_eq!(again["total_rows"], 40);
    let r = submit_keyed(csv.clone(), &"k".repeat(256)).await.unwrap();
    assert_eq!(r.status(), 400);
    let (_, listed) = get(&s, &s.client, "/api/v1/predictions/batch").await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 1, "{listed}");

    // Results are kept for the retention, then deleted: the job stays, its results answer 410.
    let id = first["batch_id"].as_str().unwrap();
    let job = wait_end(&s, &s.client, id).await;
    let finished: chrono::DateTime<chrono::Utc> =
        job["finished_at"].as_str().unwrap().parse().unwrap();
    let expires: chrono::DateTime<chrono::Utc> =
        job["expires_at"].as_str().unwrap().parse().unwrap();
    assert_eq!((expires - finished).num_seconds(), 3, "{job}");
    let chunks = || async {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&database.url).await.unwrap();
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM batch_chunks WHERE job_id = $1")
            .bind(id)
            .fetch_one(&mut conn)
            .await
            .unwrap()
    };
    assert_eq!(chunks().await, 1, "the results are kept");
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let r = results(&s, &s.client, id, "csv").await;
        if r.status() == 410 {
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["error"]["code"], "results_expired", "{body}");
            break;
        }
        assert_eq!(r.status(), 200);
        assert!(Instant::now() < until, "the results never expired");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let until = Instant::now() + Duration::from_secs(30);
    while chunks().await > 0 {
        assert!(
            Instant::now() < until,
            "the janitor never deleted the chunks"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, job) = get(&s, &s.client, &format!("/api/v1/predictions/batch/{id}")).await;
    assert_eq!((status, job["state"].as_str()), (200, Some("succeeded")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_the_disk_cannot_hold_is_refused_before_it_is_written() {
    // No disk has a billion times an upload free: every job is refused, inline batches still answered.
    let s = TestServer::with(|c| {
        c.batch_inline_max_rows = 10;
        c.batch.disk_factor = 1e9;
    })
    .await;
    let fixture = ingest_fixture(&s, &s.client).await;
    let (csv, _) = requests_csv(&fixture, 50, 0);
    let r = s
        .client
        .post(s.url("/api/v1/predictions/batch"))
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 507);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "insufficient_storage", "{body}");
    let rows: Vec<Value> = (0..20).map(|_| json!(vec![0.5; 6])).collect();
    let r = s
        .client
        .post(s.url("/api/v1/predictions/batch"))
        .json(&json!({"model": "anomaly", "version": 1, "rows": rows}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 507);
    let spools: Vec<_> = std::fs::read_dir(s.data_dir.as_ref().unwrap().path().join("batches"))
        .unwrap()
        .collect();
    assert!(spools.is_empty(), "nothing is left behind: {spools:?}");
    let (csv, _) = requests_csv(&fixture, 5, 0);
    let r = s
        .client
        .post(s.url("/api/v1/predictions/batch"))
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "a batch answered inline needs no room");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_database_share_a_job_and_both_answer_its_results() {
    let database = common::PgDatabase::create().await;
    let replica = |url: String| {
        TestServer::with(move |c| {
            c.database_url = Some(url);
            c.batch_inline_max_rows = 10;
            c.batch.chunk_rows = 500;
        })
    };
    let a = replica(database.url.clone()).await;
    let b = replica(database.url.clone()).await;
    let fixture = ingest_fixture(&a, &a.client).await;
    let (csv, _) = requests_csv(&fixture, 40, 0);
    let accepted = submit(&a, &a.client, csv).await;
    let id = accepted["batch_id"].as_str().unwrap();
    // Either replica follows the job and answers its results (they are in the store).
    let job = wait_end(&b, &b.client, id).await;
    assert_eq!(
        (job["state"].as_str(), job["processed_rows"].as_u64()),
        (Some("succeeded"), Some(40))
    );
    let from_a = results(&a, &a.client, id, "csv").await;
    let from_b = results(&b, &b.client, id, "csv").await;
    assert_eq!(
        (from_a.status().as_u16(), from_b.status().as_u16()),
        (200, 200)
    );
    let (from_a, from_b) = (from_a.text().await.unwrap(), from_b.text().await.unwrap());
    assert_eq!(from_a.lines().count(), 41);
    assert_eq!(from_a, from_b);
}

/// An organization's small job is not stuck behind another's large one: a free slot goes to the
/// organization with the fewest chunks running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_job_of_one_organization_passes_a_large_one_of_another() {
    let s = TestServer::with(|c| {
        c.batch.chunk_rows = 500;
        c.batch.max_running = 1;
        c.batch_inline_max_rows = 10;
    })
    .await;
    let fixture = ingest_fixture(&s, &s.client).await;
    let b = s.organization("B").await;
    let (large, _) = requests_csv(&fixture, 40_000, 0);
    let large = submit(&s, &s.client, large).await;
    let large = large["batch_id"].as_str().unwrap().to_string();
    // B's job names A's materials, so its rows fail (`not_found`): the answers do not matter here, only
    // when they come.
    let (small, _) = requests_csv(&fixture, 1_000, 0);
    let small = submit(&s, &b, small).await;
    let small = small["batch_id"].as_str().unwrap().to_string();
    let done = wait_end(&s, &b, &small).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let (_, large_now) = get(&s, &s.client, &format!("/api/v1/predictions/batch/{large}")).await;
    assert_eq!(large_now["state"], "running", "{large_now}");
    assert!(
        large_now["processed_rows"].as_u64().unwrap() < 40_000,
        "{large_now}"
    );
    assert_eq!(wait_end(&s, &s.client, &large).await["state"], "succeeded");
}
