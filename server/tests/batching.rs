//! The scheduler under real concurrent HTTP load, with the real price model: batching, no cross-talk,
//! overload answered with 429, and shutdown that drains what was accepted.

mod common;

use std::time::Duration;

use common::{assert_close, floats, price_repository, price_rows, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_are_batched_and_each_gets_its_own_answer() {
    let s = TestServer::start().await;
    let mut tasks = Vec::new();
    for client in 0..64 {
        let (client_http, url) = (s.client.clone(), s.url("/v2/models/price/versions/1/infer"));
        tasks.push(tokio::spawn(async move {
            for i in 0..20 {
                // Each request is 1 to 3 rows starting at a different golden row, so a mixed-up answer shows.
                let (request, expected) = price_rows(1 + (client + i) % 3, client * 7 + i);
                let r = client_http.post(&url).json(&request).send().await.unwrap();
                assert_eq!(r.status(), 200);
                let body: serde_json::Value = r.json().await.unwrap();
                assert_close(
                    &floats(&body["outputs"][0]["data"]),
                    &expected,
                    &format!("client {client} request {i}"),
                );
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (_, stats) = s.get("/v2/models/price/versions/1/stats").await;
    let batches = stats["model_stats"][0]["batch_stats"]
        .as_array()
        .unwrap()
        .clone();
    let largest = batches
        .iter()
        .map(|b| b["batch_size"].as_u64().unwrap())
        .max()
        .unwrap();
    assert!(
        largest > 3,
        "concurrent requests shared batches (largest batch: {largest} rows): {batches:?}"
    );
    let text = s.metrics().await;
    let count = |le: &str| -> f64 {
        let prefix = format!(
            "mercator_inference_batch_size_bucket{{model=\"price\",version=\"1\",le=\"{le}\"}} "
        );
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(
        count("+Inf") > count("2"),
        "the metrics show batches of more than 2 rows"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429_with_retry_after_and_accepted_work_completes() {
    // The queue holds 1,024 rows, and workers wait a minute for batch-mates: two 512-row requests fill it.
    let repo = price_repository("price-429", 4096, 1024, 60_000_000);
    let mut s = TestServer::with(|c| c.models_dir = repo.path().to_path_buf()).await;
    let mut accepted = Vec::new();
    for i in 0..2 {
        let (client, url) = (s.client.clone(), s.url("/v2/models/price-429/infer"));
        accepted.push(tokio::spawn(async move {
            let (request, expected) = price_rows(512, i);
            let r = client.post(&url).json(&request).send().await.unwrap();
            assert_eq!(r.status(), 200);
            let body: serde_json::Value = r.json().await.unwrap();
            assert_close(
                &floats(&body["outputs"][0]["data"]),
                &expected,
                "accepted request",
            );
        }));
    }
    wait_for_queue(&s, "price-429", 1024).await;
    for rows in [512, 1] {
        let (request, _) = price_rows(rows, 0);
        let r = s
            .client
            .post(s.url("/v2/models/price-429/infer"))
            .json(&request)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 429, "{rows} more rows do not fit");
        assert!(
            r.headers().get("retry-after").is_some(),
            "429 carries Retry-After"
        );
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["code"], "overloaded");
        assert!(
            body["error"].as_str().unwrap().contains("1024 rows"),
            "{body}"
        );
    }
    let (_, stats) = s.get("/v2/models/price-429/stats").await;
    let m = &stats["model_stats"][0];
    assert_eq!(m["inference_stats"]["fail"]["count"], 2);
    assert_eq!(m["inference_count"], 0, "refused requests ran nothing");
    // Shutdown ends the wait: the accepted requests are answered.
    s.stop().await.unwrap();
    for t in accepted {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_accepted_requests_then_stops() {
    const REQUESTS: usize = 16;
    const ROWS: usize = 64;
    // Workers wait up to a minute to fill a batch larger than everything sent, so every request is still
    // queued when shutdown begins; shutdown must end the wait and answer them all.
    let repo = price_repository(
        "price-drain",
        REQUESTS * ROWS * 2,
        REQUESTS * ROWS * 4,
        60_000_000,
    );
    let mut s = TestServer::with(|c| c.models_dir = repo.path().to_path_buf()).await;
    let mut tasks = Vec::new();
    for i in 0..REQUESTS {
        let (client, url) = (s.client.clone(), s.url("/v2/models/price-drain/infer"));
        tasks.push(tokio::spawn(async move {
            let (request, expected) = price_rows(ROWS, i);
            let r = client.post(&url).json(&request).send().await.unwrap();
            assert_eq!(
                r.status(),
                200,
                "an accepted request is answered during shutdown"
            );
            let body: serde_json::Value = r.json().await.unwrap();
            assert_close(
                &floats(&body["outputs"][0]["data"]),
                &expected,
                "drained request",
            );
        }));
    }
    wait_for_queue(&s, "price-drain", REQUESTS * ROWS).await;
    let base = s.base.clone();
    s.stop().await.expect("the server stops cleanly");
    for t in tasks {
        t.await.unwrap();
    }
    let after = reqwest::Client::new()
        .get(format!("{base}/healthz"))
        .send()
        .await;
    assert!(after.is_err(), "the listener is closed after shutdown");
}

/// Polls /metrics until `rows` rows wait in the model's queue; fails after 30 s.
async fn wait_for_queue(s: &TestServer, model: &str, rows: usize) {
    let series = format!("mercator_inference_queue_depth_rows{{model=\"{model}\",version=\"1\"}}");
    for _ in 0..15_000 {
        let text = s.metrics().await;
        if gauge(&text, &series) == rows {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("the queue of {model} never held {rows} rows");
}

fn gauge(metrics: &str, series: &str) -> usize {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series))
        .map(|v| v.trim().parse::<f64>().unwrap() as usize)
        .unwrap_or(0)
}
