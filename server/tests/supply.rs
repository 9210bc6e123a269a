//! Inventory policies over real HTTP: the design reference's worked examples (Silver, Pyke & Thomas's
//! formulas; the vectors recomputed there) to their stated precision, each figure explained; bad inputs
//! named by field; another organization's material not found; a viewer refused.

mod common;

use common::TestServer;
use serde_json::{json, Value};

async fn send(request: reqwest::RequestBuilder) -> (u16, Value) {
    let r = request.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn near(answer: &Value, figure: &str, expected: f64, tolerance: f64) {
    let value = answer["figures"][figure]["value"]
        .as_f64()
        .unwrap_or_else(|| panic!("{figure} in {answer}"));
    assert!(
        (value - expected).abs() <= tolerance,
        "{figure}: {value} against {expected} ({})",
        answer["figures"][figure]["computed"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_equal_the_worked_examples() {
    let s = TestServer::start().await;
    let (status, m) = send(s.client.post(s.url("/api/v1/materials")).json(&json!({
        "code": "BOLT-8", "name": "Bolt M8", "category": "fasteners", "unit": "pcs", "specifications": {}})))
    .await;
    assert_eq!(status, 201, "{m}");
    let material = m["id"].as_str().unwrap();
    let policy = |body: Value| {
        let request = s.client.post(s.url("/api/v1/inventory/policy")).json(&body);
        async move { send(request).await }
    };
    // Weeks of seven days: 200 a week with a weekly σ of 40 is 200/7 a day with σ 40/√7.
    let week = 7f64;
    let (status, a) = policy(json!({
        "material_id": material, "unit_cost": 25.0, "holding_rate": 0.20, "ordering_cost": 100.0,
        "service_level": {"type": "cycle", "value": 0.95},
        "lead_time": {"mean_days": 28.0},
        "demand": {"mean_per_day": 200.0 / week, "std_per_day": 40.0 / week.sqrt()},
        "days_per_year": 364.0,
    }))
    .await;
    assert_eq!(status, 200, "{a}");
    near(&a, "annual_demand", 10_400.0, 1e-9);
    near(&a, "eoq", 644.98, 5e-3);
    near(&a, "annual_cost", 3224.90, 5e-3);
    near(&a, "exposure_sd", 80.0, 1e-9);
    near(&a, "safety_stock", 131.59, 5e-3);
    near(&a, "reorder_point", 931.59, 5e-3);
    near(&a, "expected_fill_rate", 0.99741, 5e-6);
    near(&a, "inventory_turns", 22.90, 5e-3);
    assert_eq!(a["review"], "continuous");
    assert_eq!(a["reorder_point"], a["figures"]["reorder_point"]["value"]);
    assert!(a["figures"]["eoq"]["formula"]
        .as_str()
        .unwrap()
        .contains("√(2·D·K / h)"));

    // A fill rate with lead-time variance: σ_L = √(10·10² + 50²·2²) = 104.881, not 31.62.
    let (status, b) = policy(json!({
        "material_id": material, "unit_cost": 1.0, "holding_rate": 0.2, "ordering_cost": 10.0,
        "service_level": {"type": "fill_rate", "value": 0.98},
        "lead_time": {"mean_days": 10.0, "std_days": 2.0},
        "demand": {"mean_per_day": 50.0, "std_per_day": 10.0}, "order_quantity": 1000.0,
    }))
    .await;
    assert_eq!(status, 200, "{b}");
    near(&b, "exposure_sd", 104.881, 5e-4);
    near(&b, "z", 0.523334, 5e-6);
    near(&b, "safety_stock", 54.89, 5e-3);
    near(&b, "reorder_point", 554.89, 5e-3);
    near(&b, "expected_fill_rate", 0.98, 1e-9);
    let (_, c) = policy(json!({
        "material_id": material, "unit_cost": 1.0, "holding_rate": 0.2, "ordering_cost": 10.0,
        "service_level": {"type": "cycle", "value": 0.98},
        "lead_time": {"mean_days": 10.0, "std_days": 2.0},
        "demand": {"mean_per_day": 50.0, "std_per_day": 10.0}, "order_quantity": 1000.0,
    }))
    .await;
    near(&c, "z", 2.053749, 5e-6);
    near(&c, "safety_stock", 215.40, 5e-3);

    // Periodic review (R, S): R = 1 week, L = 2 weeks, 100 a week ± 30, CSL 90%; position 220.
    let (status, p) = policy(json!({
        "material_id": material, "unit_cost": 10.0, "holding_cost": 2.0, "ordering_cost": 50.0,
        "service_level": {"type": "cycle", "value": 0.90},
        "review": {"type": "periodic", "period_days": 7.0},
        "lead_time": {"mean_days": 14.0},
        "demand": {"mean_per_day": 100.0 / week, "std_per_day": 30.0 / week.sqrt()},
        "inventory_position": 220.0, "days_per_year": 364.0,
    }))
    .await;
    assert_eq!(status, 200, "{p}");
    near(&p, "safety_stock", 66.59, 5e-3);
    near(&p, "order_up_to", 366.59, 5e-3);
    near(&p, "order_now", 147.0, 0.0);
    near(&p, "eoq", 509.90, 5e-3);
    near(&p, "S", 876.49, 5e-3);
    assert!(
        p["reorder_point"].is_null() && p["order_up_to"].is_number(),
        "{p}"
    );

    // Refusals name their field.
    for (body, field) in [
        (
            json!({"service_level": {"type": "cycle", "value": 1.0}}),
            "service_level.value",
        ),
        (
            json!({"service_level": {"type": "always", "value": 0.9}}),
            "service_level.type",
        ),
        (
            json!({"review": {"type": "periodic"}}),
            "review.period_days",
        ),
        (json!({"holding_cost": 2.0}), "holding_rate"),
        (
            json!({"demand": {"mean_per_day": -1.0, "std_per_day": 1.0}}),
            "demand.mean_per_day",
        ),
        (json!({"ordering_cost": 0.0}), "ordering_cost"),
    ] {
        let mut request = json!({
            "material_id": material, "unit_cost": 1.0, "holding_rate": 0.2, "ordering_cost": 10.0,
            "service_level": {"type": "cycle", "value": 0.9},
            "lead_time": {"mean_days": 10.0}, "demand": {"mean_per_day": 5.0, "std_per_day": 1.0},
        });
        for (k, v) in body.as_object().unwrap() {
            request[k] = v.clone();
        }
        let (status, answer) = policy(request).await;
        assert_eq!(status, 400, "{answer}");
        assert!(
            answer["error"]["details"][field].is_array(),
            "{field}: {answer}"
        );
    }
    // Another organization's material is not found; a viewer may not ask.
    let other = s.organization("Other").await;
    let body = json!({
        "material_id": material, "unit_cost": 1.0, "holding_rate": 0.2, "ordering_cost": 10.0,
        "service_level": {"type": "cycle", "value": 0.9},
        "lead_time": {"mean_days": 10.0}, "demand": {"mean_per_day": 5.0, "std_per_day": 1.0},
    });
    let (status, _) = send(other.post(s.url("/api/v1/inventory/policy")).json(&body)).await;
    assert_eq!(status, 404);
    let (status, key) = send(
        s.client
            .post(s.url("/api/v1/api-keys"))
            .json(&json!({"name": "v", "role": "viewer"})),
    )
    .await;
    assert_eq!(status, 201);
    let viewer = common::client_with(key["secret"].as_str().unwrap());
    let (status, _) = send(viewer.post(s.url("/api/v1/inventory/policy")).json(&body)).await;
    assert_eq!(status, 403);
}

/// The scorecard of a small order book, computed here by hand: three lines due (a cancelled order's line
/// aside), one on time in full; lead times 11 and 14 days; 5 rejected of 275 delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scorecard_equals_the_hand_computation_and_orders_keep_their_states() {
    let s = TestServer::start().await;
    let (_, m) = send(s.client.post(s.url("/api/v1/materials")).json(&json!({
        "code": "NUT-8", "name": "Nut M8", "category": "fasteners", "unit": "pcs", "specifications": {}})))
    .await;
    let (_, sup) = send(s.client.post(s.url("/api/v1/suppliers")).json(&json!({
        "code": "S-9", "name": "Nine", "country": "DE", "reliability": 0.9})))
    .await;
    let (material, supplier) = (m["id"].as_str().unwrap(), sup["id"].as_str().unwrap());
    let order = |reference: &str, lines: Value| {
        let request = s.client.post(s.url("/api/v1/orders")).json(&json!({
            "supplier_id": supplier, "currency": "EUR", "reference": reference,
            "ordered_on": "2026-10-01", "lines": lines}));
        async move { send(request).await }
    };
    let line = |quantity: f64, promised: &str| json!({"material_id": material, "quantity": quantity, "unit_price": 2.5, "promised_date": promised});
    let (status, o1) = order(
        "PO-1",
        json!([line(100.0, "2026-10-10"), line(50.0, "2026-10-15")]),
    )
    .await;
    assert_eq!(status, 201, "{o1}");
    let (_, o2) = order("PO-2", json!([line(200.0, "2026-10-20")])).await;
    let (_, o3) = order("PO-3", json!([line(10.0, "2026-10-05")])).await;
    let (status, body) = order("PO-1", json!([line(1.0, "2026-10-10")])).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("conflict")),
        "{body}"
    );
    let (status, body) = order("PO-4", json!([line(1.0, "2026-09-10")])).await;
    assert_eq!(status, 400, "promised before ordered: {body}");
    assert!(
        body["error"]["details"]["lines[0].promised_date"].is_array(),
        "{body}"
    );
    let id = |o: &Value| o["id"].as_str().unwrap().to_string();
    let (status, _) = send(
        s.client
            .post(s.url(&format!("/api/v1/orders/{}/cancel", id(&o3)))),
    )
    .await;
    assert_eq!(status, 200);
    let deliver = |order: String, deliveries: Value| {
        let request = s
            .client
            .post(s.url(&format!("/api/v1/orders/{order}/deliveries")))
            .json(&json!({"deliveries": deliveries}));
        async move { send(request).await }
    };
    let (status, body) = deliver(id(&o1), json!([
        {"line_id": "1", "delivered_on": "2026-10-08", "quantity": 100.0, "rejected_quantity": 5.0},
        {"line_id": "9", "delivered_on": "2026-10-08", "quantity": 1.0},
    ])).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("invalid_rows")),
        "all or nothing: {body}"
    );
    let (status, _) = deliver(id(&o1), json!([
        {"line_id": "1", "delivered_on": "2026-10-08", "quantity": 100.0, "rejected_quantity": 5.0},
        {"line_id": "1", "delivered_on": "2026-10-12", "quantity": 5.0},
        {"line_id": "2", "delivered_on": "2026-10-15", "quantity": 50.0},
    ])).await;
    assert_eq!(status, 201);
    let (_, _) = deliver(
        id(&o2),
        json!([{"line_id": "1", "delivered_on": "2026-10-18", "quantity": 120.0}]),
    )
    .await;
    let (status, body) = deliver(
        id(&o3),
        json!([{"line_id": "1", "delivered_on": "2026-10-18", "quantity": 1.0}]),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("invalid_state")),
        "{body}"
    );
    let (_, o1_now) = send(s.client.get(s.url(&format!("/api/v1/orders/{}", id(&o1))))).await;
    assert_eq!(o1_now["status"], "delivered");
    let (_, o2_now) = send(s.client.get(s.url(&format!("/api/v1/orders/{}", id(&o2))))).await;
    assert_eq!(o2_now["status"], "open");
    let (_, listed) = send(s.client.get(s.url(&format!(
        "/api/v1/orders?supplier_id={supplier}&status=open"
    ))))
    .await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 1, "{listed}");

    let (status, card) = send(s.client.get(s.url(&format!(
        "/api/v1/suppliers/{supplier}/scorecard?from=2026-09-01&to=2026-11-30"
    ))))
    .await;
    assert_eq!(status, 200, "{card}");
    assert_eq!(card["orders"], 3);
    assert_eq!(
        (
            card["lines_due"].as_u64(),
            card["lines_on_time_in_full"].as_u64()
        ),
        (Some(3), Some(1))
    );
    assert!(
        (card["otif"].as_f64().unwrap() - 1.0 / 3.0).abs() < 1e-12,
        "{card}"
    );
    assert_eq!(card["lines_received"], 2);
    assert!((card["lead_time_mean_days"].as_f64().unwrap() - 12.5).abs() < 1e-12);
    assert!((card["lead_time_std_days"].as_f64().unwrap() - 4.5f64.sqrt()).abs() < 1e-12);
    assert!((card["defect_rate"].as_f64().unwrap() - 5.0 / 275.0).abs() < 1e-12);
    assert_eq!(card["deliveries"], 4);
    assert!(
        card["rfq_response_rate"].is_null() && card["rfqs_invited"] == 0,
        "{card}"
    );
    // Another organization sees neither the orders nor the scorecard.
    let other = s.organization("Other").await;
    let (status, _) = send(other.get(s.url(&format!("/api/v1/orders/{}", id(&o1))))).await;
    assert_eq!(status, 404);
    let (status, _) =
        send(other.get(s.url(&format!("/api/v1/suppliers/{supplier}/scorecard")))).await;
    assert_eq!(status, 404);
}
