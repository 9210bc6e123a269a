//! The Open Inference Protocol over real HTTP against the shipped models and real ONNX Runtime.

mod common;

use common::{assert_close, floats, golden, TestServer};
use serde_json::{json, Value};

const MODELS: [&str; 3] = ["price", "anomaly", "forecast"];

#[tokio::test]
async fn server_metadata_lists_the_extensions_and_health_answers() {
    let s = TestServer::start().await;
    let (status, body) = s.get("/v2").await;
    assert_eq!(status, 200);
    assert_eq!(body["name"], "mercator");
    for ext in ["binary_tensor_data", "model_configuration", "statistics"] {
        assert!(
            body["extensions"].as_array().unwrap().contains(&json!(ext)),
            "{ext}"
        );
    }
    for path in [
        "/v2/health/live",
        "/v2/health/ready",
        "/healthz",
        "/readyz",
        "/v2/models/price/ready",
    ] {
        assert_eq!(s.get(path).await.0, 200, "{path}");
    }
    let r = s
        .client
        .get(s.url("/healthz"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["x-request-id"],
        "abc-123",
        "a given request id comes back"
    );
    let r = s.client.get(s.url("/healthz")).send().await.unwrap();
    assert!(
        !r.headers()["x-request-id"].is_empty(),
        "a request without one gets one"
    );
}

#[tokio::test]
async fn model_metadata_and_config_describe_each_shipped_model() {
    let s = TestServer::start().await;
    for model in MODELS {
        let g = golden(model);
        let (status, meta) = s.get(&format!("/v2/models/{model}")).await;
        assert_eq!(status, 200);
        assert_eq!(meta["name"], model);
        assert_eq!(meta["versions"], json!(["1", "2"]));
        // The golden vectors are version 1's: its metadata, named.
        let (_, meta) = s.get(&format!("/v2/models/{model}/versions/1")).await;
        assert_eq!(meta["platform"], "onnxruntime_onnx");
        for (spec, golden_input) in meta["inputs"].as_array().unwrap().iter().zip(&g.inputs) {
            assert_eq!(spec["name"], golden_input["name"]);
            assert_eq!(spec["datatype"], "FP32");
            assert_eq!(spec["shape"], json!([-1, golden_input["shape"][1]]));
        }
        let (status, same) = s.get(&format!("/v2/models/{model}/versions/1")).await;
        assert_eq!((status, &same["inputs"]), (200, &meta["inputs"]));

        let (status, config) = s
            .get(&format!("/v2/models/{model}/versions/1/config"))
            .await;
        assert_eq!(status, 200);
        assert!(config["max_batch_size"].as_u64().unwrap() >= 1);
        let dims: Vec<Value> = config["input"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["dims"].clone())
            .collect();
        let expected: Vec<Value> = g.inputs.iter().map(|i| json!([i["shape"][1]])).collect();
        assert_eq!(dims, expected, "config dims leave out the batch dimension");
        assert_eq!(config["input"][0]["data_type"], "TYPE_FP32");
    }
}

#[tokio::test]
async fn each_shipped_model_reproduces_its_golden_vectors() {
    let s = TestServer::start().await;
    for model in MODELS {
        let g = golden(model);
        let n = g.rows();
        // The whole golden batch in one request.
        let (status, body) = s
            .post(
                &format!("/v2/models/{model}/versions/1/infer"),
                &g.request(0, n),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["model_name"], model);
        assert_eq!(body["model_version"], "1");
        for out in body["outputs"].as_array().unwrap() {
            let name = out["name"].as_str().unwrap();
            assert_eq!(out["shape"][0], n);
            assert!(
                out.get("parameters").is_none(),
                "JSON outputs carry no parameters"
            );
            assert_close(
                &floats(&out["data"]),
                &g.expected(name, 0, n),
                &format!("{model}/{name}"),
            );
        }
        // Row by row, through the versioned route.
        for row in 0..n {
            let (status, body) = s
                .post(
                    &format!("/v2/models/{model}/versions/1/infer"),
                    &g.request(row, row + 1),
                )
                .await;
            assert_eq!(status, 200);
            let out = &body["outputs"][0];
            let name = out["name"].as_str().unwrap();
            assert_close(
                &floats(&out["data"]),
                &g.expected(name, row, row + 1),
                &format!("{model}/{name} row {row}"),
            );
        }
    }
    // The version 2 of each (the active ones: unnamed requests reach them) and their own golden vectors.
    for model in MODELS {
        let g = golden(&format!("{model}-v2"));
        let (status, body) = s
            .post(
                &format!("/v2/models/{model}/infer"),
                &g.request(0, g.rows()),
            )
            .await;
        assert_eq!(
            (status, &body["model_version"]),
            (200, &json!("2")),
            "{model}: {body}"
        );
        let out = &body["outputs"][0];
        let name = out["name"].as_str().unwrap();
        assert_close(
            &floats(&out["data"]),
            &g.expected(name, 0, g.rows()),
            &format!("{model} v2"),
        );
    }
}

#[tokio::test]
async fn nested_data_requested_outputs_and_ids_are_honoured() {
    let s = TestServer::start().await;
    let g = golden("forecast");
    let mut request = g.request(0, 2);
    // Nest the history rows: [[...28], [...28]].
    let flat = request["inputs"][0]["data"].as_array().unwrap().clone();
    request["inputs"][0]["data"] = json!([flat[..28], flat[28..]]);
    request["id"] = json!("req-7");
    request["outputs"] = json!([{ "name": "forecast" }]);
    let (status, body) = s
        .post("/v2/models/forecast/versions/1/infer", &request)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], "req-7");
    assert_close(
        &floats(&body["outputs"][0]["data"]),
        &g.expected("forecast", 0, 2),
        "forecast",
    );

    request["outputs"] = json!([{ "name": "nope" }]);
    let (status, body) = s
        .post("/v2/models/forecast/versions/1/infer", &request)
        .await;
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().contains("output `nope`"),
        "{body}"
    );
}

#[tokio::test]
async fn binary_tensor_data_in_and_out() {
    let s = TestServer::start().await;
    let g = golden("price");
    let data: Vec<f32> = g.inputs[0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let rows = g.rows();
    let header = json!({
        "inputs": [{ "name": "features", "datatype": "FP32", "shape": [rows, 20],
                     "parameters": { "binary_data_size": data.len() * 4 } }],
        "outputs": [{ "name": "price", "parameters": { "binary_data": true } }]
    })
    .to_string();
    let mut body = header.clone().into_bytes();
    body.extend(data.iter().flat_map(|x| x.to_le_bytes()));
    let r = s
        .client
        .post(s.url("/v2/models/price/versions/1/infer"))
        .header("inference-header-content-length", header.len())
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let json_len: usize = r.headers()["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let bytes = r.bytes().await.unwrap();
    let head: Value = serde_json::from_slice(&bytes[..json_len]).unwrap();
    assert_eq!(
        head["outputs"][0]["parameters"]["binary_data_size"],
        rows * 4
    );
    let prices: Vec<f64> = bytes[json_len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
        .collect();
    assert_close(&prices, &g.expected("price", 0, rows), "binary price");
}

async fn expect_error(
    s: &TestServer,
    path: &str,
    body: reqwest::Body,
    status: u16,
    code: &str,
    mentions: &str,
) {
    let r = s
        .client
        .post(s.url(path))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), status, "{path}");
    let body: Value = r.json().await.expect("errors are JSON");
    assert_eq!(body["code"], code, "{body}");
    let message = body["error"]
        .as_str()
        .expect("`error` is a string, as the V2 protocol says");
    assert!(
        message.contains(mentions),
        "`{message}` should mention `{mentions}`"
    );
}

#[tokio::test]
async fn bad_requests_get_a_clear_4xx_in_the_one_error_format() {
    let s = TestServer::with(|c| c.max_body_bytes = 64 * 1024).await;
    let row: Vec<f64> = (0..20).map(|i| i as f64).collect();
    let ok = |datatype: &str, shape: Value| {
        json!({ "inputs": [{ "name": "features", "datatype": datatype, "shape": shape, "data": row }] }).to_string()
    };
    let price = "/v2/models/price/versions/1/infer";
    expect_error(
        &s,
        price,
        "{\"inputs\": [".into(),
        400,
        "bad_request",
        "invalid inference request",
    )
    .await;
    expect_error(
        &s,
        price,
        ok("INT64", json!([1, 20])).into(),
        400,
        "bad_request",
        "input `features`",
    )
    .await;
    expect_error(
        &s,
        price,
        ok("FP64", json!([1, 20])).into(),
        400,
        "invalid_input",
        "input `features`: datatype is FP64",
    )
    .await;
    expect_error(
        &s,
        price,
        ok("FP32", json!([2, 10])).into(),
        400,
        "invalid_input",
        "input `features`: shape is [2, 10]",
    )
    .await;
    expect_error(
        &s,
        price,
        ok("FP32", json!([1, 21])).into(),
        400,
        "bad_request",
        "input `features`",
    )
    .await;
    expect_error(
        &s,
        price,
        ok("FP16", json!([1, 20])).into(),
        400,
        "bad_request",
        "FP16",
    )
    .await;
    expect_error(
        &s,
        "/v2/models/nope/infer",
        ok("FP32", json!([1, 20])).into(),
        404,
        "model_not_found",
        "nope",
    )
    .await;
    expect_error(
        &s,
        "/v2/models/price/versions/9/infer",
        ok("FP32", json!([1, 20])).into(),
        404,
        "version_not_found",
        "9",
    )
    .await;
    let big = json!({ "inputs": [{ "name": "features", "datatype": "FP32", "shape": [5000, 20], "data": vec![1.5; 100_000] }] });
    expect_error(
        &s,
        price,
        big.to_string().into(),
        413,
        "body_too_large",
        "65536",
    )
    .await;
    let (status, body) = s.get("/v2/models/nope").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("model_not_found"))
    );
    // Outside /v2, the same error in the API's envelope.
    let (status, body) = s.get("/no/such/route").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("route_not_found"))
    );
}

#[tokio::test]
async fn metrics_and_statistics_count_what_was_served() {
    let s = TestServer::start().await;
    let g = golden("anomaly");
    for _ in 0..3 {
        assert_eq!(
            s.post("/v2/models/anomaly/versions/1/infer", &g.request(0, 2))
                .await
                .0,
            200
        );
    }
    let (status, stats) = s.get("/v2/models/anomaly/versions/1/stats").await;
    assert_eq!(status, 200);
    let m = &stats["model_stats"][0];
    assert_eq!(m["name"], "anomaly");
    assert_eq!(m["version"], "1");
    assert!(m["inference_stats"]["success"]["count"].as_u64().unwrap() >= 3);
    assert!(
        m["inference_count"].as_u64().unwrap() >= 6,
        "rows are counted"
    );
    assert!(m["batch_stats"]
        .as_array()
        .unwrap()
        .iter()
        .any(|b| b["batch_size"] == 2));
    let (_, all) = s.get("/v2/models/stats").await;
    assert_eq!(
        all["model_stats"].as_array().unwrap().len(),
        8,
        "versions 1 and 2 of price, anomaly and forecast, risk 1 and demand 1"
    );

    let text = s.metrics().await;
    for metric in [
        "mercator_inference_requests_total{model=\"anomaly\",version=\"1\",outcome=\"success\"}",
        "mercator_inference_compute_duration_seconds_bucket{model=\"anomaly\"",
        "mercator_inference_queue_duration_seconds_bucket{model=\"anomaly\"",
        "mercator_inference_batch_size_bucket{model=\"anomaly\"",
        "mercator_inference_queue_depth_rows{model=\"anomaly\"",
        "mercator_http_requests_total{route=\"/v2/models/{model}/versions/{version}/infer\",method=\"POST\",status=\"200\"}",
        "mercator_http_request_duration_seconds_bucket{route=\"/v2/models/{model}/versions/{version}/infer\"",
    ] {
        assert!(text.contains(metric), "/metrics lacks {metric}");
    }
}
