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

/// Each bad row of a refused file and the fields named in it.
fn named_rows(body: &Value) -> Vec<(u64, Vec<&str>)> {
    let rows = body["error"]["details"]["rows"].as_array();
    rows.into_iter()
        .flatten()
        .map(|r| {
            let fields = r["errors"].as_object().into_iter().flatten();
            (
                r["row"].as_u64().unwrap_or(0),
                fields.map(|(f, _)| f.as_str()).collect(),
            )
        })
        .collect()
}

/// Orders and deliveries imported from CSV (and JSON), all or nothing, every bad row named by its place in
/// the file whichever check found it; orders received in full become delivered in the same write.
async fn imports(backend: common::Backend) {
    let s = TestServer::api(backend, |_| {}).await;
    let (_, m) = send(s.client.post(s.url("/api/v1/materials")).json(&json!({
        "code": "NUT-8", "name": "Nut M8", "category": "fasteners", "unit": "pcs", "specifications": {}})))
    .await;
    let supplier = |code: &str| {
        let request = s
            .client
            .post(s.url("/api/v1/suppliers"))
            .json(&json!({"code": code, "name": code, "country": "DE", "reliability": 0.9}));
        async move { send(request).await.1["id"].as_str().unwrap().to_string() }
    };
    let (sup, sup2) = (supplier("S-1").await, supplier("S-2").await);
    let m = m["id"].as_str().unwrap();
    let csv = |path: &str, body: String| {
        let request = s
            .client
            .post(s.url(path))
            .header("content-type", "text/csv")
            .body(body);
        async move { send(request).await }
    };
    let header =
        "reference,supplier_id,currency,ordered_on,material_id,quantity,unit_price,promised_date\n";
    let bad = format!(
        "{header}PO-1,{sup},EUR,2026-10-01,{m},100,2.5,2026-10-10\n\
         PO-1,{sup},EUR,2026-10-01,{m},50,2.5,2026-10-15\n\
         PO-2,{sup},EUR,2026-10-02,{m},200,2.4,2026-10-20\n\
         PO-2,{sup2},EUR,2026-10-02,{m},-1,2.4,2026-09-20\n\
         PO-3,{sup},EUR,2026-10-03,nope,10,2.5,2026-10-05\n\
         PO-4,{sup},EUR,2026-10-03,{m},ten,2.5,2026-10-05\n"
    );
    let (status, body) = csv("/api/v1/orders/bulk", bad).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("invalid_rows")),
        "{body}"
    );
    let named = named_rows(&body);
    // Row 6 fails as it is read; rows 4 and 5 when the orders are checked: one answer names all three.
    assert_eq!(
        named,
        [(6, vec!["quantity"])],
        "the file's own values first: {body}"
    );
    let bad = format!(
        "{header}PO-1,{sup},EUR,2026-10-01,{m},100,2.5,2026-10-10\n\
         PO-1,{sup},EUR,2026-10-01,{m},50,2.5,2026-10-15\n\
         PO-2,{sup},EUR,2026-10-02,{m},200,2.4,2026-10-20\n\
         PO-2,{sup2},EUR,2026-10-02,{m},-1,2.4,2026-09-20\n\
         PO-3,{sup},EUR,2026-10-03,nope,10,2.5,2026-10-05\n"
    );
    let (status, body) = csv("/api/v1/orders/bulk", bad).await;
    assert_eq!(status, 422, "{body}");
    let named = named_rows(&body);
    assert_eq!(
        named,
        [
            (4, vec!["promised_date", "quantity", "supplier_id"]),
            (5, vec!["material_id"])
        ],
        "{body}"
    );
    let (_, listed) = send(s.client.get(s.url("/api/v1/orders"))).await;
    assert_eq!(listed["items"], json!([]), "nothing written");

    let good = format!(
        "{header}PO-1,{sup},EUR,2026-10-01,{m},100,2.5,2026-10-10\n\
         PO-1,{sup},EUR,2026-10-01,{m},50,2.5,2026-10-15\n\
         PO-2,{sup},EUR,2026-10-02,{m},200,2.4,2026-10-20\n\
         PO-3,{sup2},USD,,{m},10,2.5,2030-10-05\n"
    );
    let (status, body) = csv("/api/v1/orders/bulk", good.clone()).await;
    assert_eq!((status, &body), (201, &json!({"orders": 3, "lines": 4})));
    let (_, listed) = send(s.client.get(s.url("/api/v1/orders?sort=reference"))).await;
    let orders = listed["items"].as_array().unwrap();
    assert_eq!(orders.len(), 3);
    assert_eq!(orders[0]["reference"], "PO-1");
    assert_eq!(orders[0]["lines"][1]["id"], "2");
    assert_eq!(orders[0]["lines"][1]["quantity"], 50.0);
    assert_eq!(orders[2]["supplier_id"], sup2.as_str());
    assert_eq!(orders[2]["currency"], "USD");
    // The same file again: every reference is taken, named at its order's first row.
    let (status, body) = csv("/api/v1/orders/bulk", good).await;
    assert_eq!(status, 422, "{body}");
    let rows: Vec<u64> = body["error"]["details"]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["row"].as_u64().unwrap())
        .collect();
    assert_eq!(rows, [1, 3, 4], "{body}");
    // JSON rows too.
    let (status, body) = send(s.client.post(s.url("/api/v1/orders/bulk")).json(&json!([
        {"reference": "PO-5", "supplier_id": sup, "currency": "EUR", "material_id": m,
         "quantity": 5.0, "unit_price": 2.0, "promised_date": "2030-01-01"}])))
    .await;
    assert_eq!((status, &body), (201, &json!({"orders": 1, "lines": 1})));

    let header = "order_reference,line,delivered_on,quantity,rejected_quantity\n";
    let (status, body) = csv(
        "/api/v1/deliveries/bulk",
        format!(
            "{header}PO-1,1,2026-10-08,100,5\n\
             PO-9,1,2026-10-08,1,\n\
             PO-1,9,2026-10-08,1,\n\
             PO-2,1,2026-10-18,10,11\n"
        ),
    )
    .await;
    let named = named_rows(&body);
    assert_eq!(
        (status, named),
        (
            422,
            vec![
                (2, vec!["order_reference"]),
                (3, vec!["line"]),
                (4, vec!["rejected_quantity"])
            ]
        ),
        "{body}"
    );
    let po1 = orders[0]["id"].as_str().unwrap();
    let (_, none) = send(
        s.client
            .get(s.url(&format!("/api/v1/orders/{po1}/deliveries"))),
    )
    .await;
    assert_eq!(none, json!([]), "nothing written");
    let (status, body) = csv(
        "/api/v1/deliveries/bulk",
        format!(
            "{header}PO-1,1,2026-10-08,100,5\n\
             PO-1,1,2026-10-12,5,\n\
             PO-1,2,2026-10-15,50,0\n\
             PO-2,1,2026-10-18,120,\n"
        ),
    )
    .await;
    assert_eq!(
        (status, &body),
        (201, &json!({"deliveries": 4, "orders_delivered": 1}))
    );
    let (_, delivered) = send(s.client.get(s.url("/api/v1/orders?status=delivered"))).await;
    let delivered: Vec<&str> = delivered["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["reference"].as_str().unwrap())
        .collect();
    assert_eq!(delivered, ["PO-1"]);
    let (_, received) = send(
        s.client
            .get(s.url(&format!("/api/v1/orders/{po1}/deliveries"))),
    )
    .await;
    assert_eq!(received.as_array().unwrap().len(), 3);
    assert_eq!(received[0]["rejected_quantity"], 5.0);

    // Bad bodies, another organization, a viewer.
    let (status, body) = csv("/api/v1/deliveries/bulk", "order,line\nPO-1,1\n".into()).await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = send(
        s.client
            .post(s.url("/api/v1/orders/bulk"))
            .header("content-type", "text/plain")
            .body("x"),
    )
    .await;
    assert_eq!(status, 415);
    let other = s.organization("Other").await;
    let (status, body) = send(
        other
            .post(s.url("/api/v1/deliveries/bulk"))
            .header("content-type", "text/csv")
            .body(format!("{header}PO-2,1,2026-10-19,80,\n")),
    )
    .await;
    assert_eq!(
        status, 422,
        "another organization's order is unknown: {body}"
    );
    let (_, key) = send(
        s.client
            .post(s.url("/api/v1/api-keys"))
            .json(&json!({"name": "v", "role": "viewer"})),
    )
    .await;
    let viewer = common::client_with(key["secret"].as_str().unwrap());
    let (status, _) = send(viewer.post(s.url("/api/v1/orders/bulk")).json(&json!([]))).await;
    assert_eq!(status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imports_on_sqlite() {
    imports(common::Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imports_on_postgres() {
    imports(common::Backend::Postgres).await;
}

/// Each order line of the fixture: (reference, line) -> (material code, quantity, promised date, late), late
/// computed here from the deliveries: short of the quantity at the end of the promised day.
fn fixture_lines() -> std::collections::HashMap<(String, String), (String, f64, String, bool)> {
    let root = common::repo_root();
    let mut delivered: std::collections::HashMap<(String, String), Vec<(String, f64)>> =
        Default::default();
    let text = std::fs::read_to_string(root.join("fixtures/deliveries.csv")).unwrap();
    for r in csv::Reader::from_reader(text.as_bytes())
        .records()
        .map(Result::unwrap)
    {
        delivered
            .entry((r[0].to_string(), r[1].to_string()))
            .or_default()
            .push((r[2].to_string(), r[3].parse().unwrap()));
    }
    let text = std::fs::read_to_string(root.join("fixtures/orders.csv")).unwrap();
    let mut numbers: std::collections::HashMap<String, usize> = Default::default();
    let mut lines = std::collections::HashMap::new();
    for r in csv::Reader::from_reader(text.as_bytes())
        .records()
        .map(Result::unwrap)
    {
        let n = numbers.entry(r[0].to_string()).or_default();
        *n += 1;
        let key = (r[0].to_string(), n.to_string());
        let quantity: f64 = r[5].parse().unwrap();
        let by_promise: f64 = delivered
            .get(&key)
            .into_iter()
            .flatten()
            .filter(|(day, _)| day.as_str() <= &r[7])
            .map(|(_, q)| q)
            .sum();
        let late = by_promise + 1e-9 < quantity;
        lines.insert(key, (r[4].to_string(), quantity, r[7].to_string(), late));
    }
    lines
}

/// A model's training-frame rows kept for the parity tests (`fixtures/golden/<file>`), and its feature
/// names in input order.
fn frame_rows(file: &str) -> (Value, Vec<String>) {
    let golden: Value = serde_json::from_str(
        &std::fs::read_to_string(common::repo_root().join("fixtures/golden").join(file)).unwrap(),
    )
    .unwrap();
    let names = golden["names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_string())
        .collect();
    (golden, names)
}

/// The share of (late, on time) pairs the scores order rightly, ties half.
fn auc(scored: &[(f64, bool)]) -> f64 {
    let (mut right, mut pairs) = (0.0, 0.0);
    for (p, _) in scored.iter().filter(|(_, late)| *late) {
        for (q, _) in scored.iter().filter(|(_, late)| !*late) {
            pairs += 1.0;
            right += if p > q {
                1.0
            } else if p == q {
                0.5
            } else {
                0.0
            };
        }
    }
    right / pairs
}

/// The supplier-risk model served: the fixture's three years of orders and deliveries imported, each row of
/// the training frame kept in `fixtures/golden/risk-v1-rows.json` is asked for as of the day it was ordered;
/// the server rebuilds its features from the order book, equal to the frame's, and answers the probability
/// ONNX Runtime gave at training. Held-out lines (every third of 2026) rank late above on time as the
/// manifest says. Factors, bands, refusals, the golden vectors over V2, tenancy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supplier_risk_is_the_training_frame_served() {
    let s = TestServer::start().await;
    let f = common::catalogue_fixture(&s.base, &s.client).await;
    common::import_supply_fixture(&s.base, &s.client, &f).await;
    let (golden, names) = frame_rows("risk-v1-rows.json");
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let lines = fixture_lines();
    let ask = |supplier: &str, material: &str, quantity: f64, promised: &str, as_of: &str| {
        let request = s.client.get(s.url(&format!(
            "/api/v1/suppliers/{supplier}/risk?material_id={material}&quantity={quantity}\
             &promised_date={promised}&as_of={as_of}"
        )));
        async move { send(request).await }
    };
    let mut top = None;
    for row in golden["rows"].as_array().unwrap() {
        let key = (
            row["reference"].as_str().unwrap().to_string(),
            row["line"].as_str().unwrap().to_string(),
        );
        let (material, quantity, promised, late) = &lines[&key];
        let (status, answer) = ask(
            &f.suppliers[row["supplier_code"].as_str().unwrap()],
            &f.materials[material],
            *quantity,
            promised,
            row["ordered_on"].as_str().unwrap(),
        )
        .await;
        assert_eq!(status, 200, "{answer}");
        for (name, want) in names.iter().zip(row["features"].as_array().unwrap()) {
            let (got, want) = (
                answer["features"][name].as_f64().unwrap(),
                want.as_f64().unwrap(),
            );
            assert!(
                (got - want).abs() <= 1e-6 * want.abs().max(1.0),
                "{key:?} {name}: served {got}, frame {want}"
            );
        }
        let (got, want) = (
            answer["p_late"].as_f64().unwrap(),
            row["p_late"].as_f64().unwrap(),
        );
        assert!(
            (got - want).abs() < 1e-6,
            "{key:?}: served {got}, ONNX Runtime {want}"
        );
        assert_eq!(row["late"].as_u64() == Some(1), *late, "{key:?}: the label");
        top.get_or_insert(answer);
    }

    // Factors: every feature, largest effect first, each the probability less the one with that feature at
    // its typical value (checked over V2 for the largest).
    let answer = top.unwrap();
    let factors = answer["factors"].as_array().unwrap();
    assert_eq!(factors.len(), names.len());
    let effects: Vec<f64> = factors
        .iter()
        .map(|f| f["effect"].as_f64().unwrap())
        .collect();
    assert!(
        effects.windows(2).all(|w| w[0].abs() >= w[1].abs()),
        "{effects:?}"
    );
    let mut row: Vec<f64> = names
        .iter()
        .map(|n| answer["features"][n].as_f64().unwrap())
        .collect();
    let i = names
        .iter()
        .position(|n| *n == factors[0]["feature"].as_str().unwrap())
        .unwrap();
    row[i] = factors[0]["typical"].as_f64().unwrap();
    let (status, v2) = s
        .post(
            "/v2/models/risk/versions/1/infer",
            &json!({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, row.len()], "data": row}]}),
        )
        .await;
    assert_eq!(status, 200, "{v2}");
    let without = v2["outputs"][0]["data"][0].as_f64().unwrap();
    let p = answer["p_late"].as_f64().unwrap();
    assert!(
        (effects[0] - (p - without)).abs() < 1e-6,
        "{} against {}",
        effects[0],
        p - without
    );
    let (medium, high) = (
        answer["thresholds"]["medium"].as_f64().unwrap(),
        answer["thresholds"]["high"].as_f64().unwrap(),
    );
    let band = if p >= high {
        "high"
    } else if p >= medium {
        "medium"
    } else {
        "low"
    };
    assert_eq!(answer["band"], band);
    assert_eq!(answer["model"], json!({"name": "risk", "version": 1}));

    // Held out: every third line ordered in 2026 and promised before 2027, labelled here.
    let holdout = golden["holdout_from"].as_str().unwrap();
    let text = std::fs::read_to_string(common::repo_root().join("fixtures/orders.csv")).unwrap();
    let mut numbers: std::collections::HashMap<String, usize> = Default::default();
    let mut scored = Vec::new();
    for (i, r) in csv::Reader::from_reader(text.as_bytes())
        .records()
        .map(Result::unwrap)
        .enumerate()
    {
        let n = numbers.entry(r[0].to_string()).or_default();
        *n += 1;
        if &r[3] < holdout || &r[7] >= "2027-01-01" || i % 3 != 0 {
            continue;
        }
        let (_, quantity, promised, late) = &lines[&(r[0].to_string(), n.to_string())];
        let (status, answer) = ask(
            &f.suppliers[&r[1]],
            &f.materials[&r[4]],
            *quantity,
            promised,
            &r[3],
        )
        .await;
        assert_eq!(status, 200, "{answer}");
        scored.push((answer["p_late"].as_f64().unwrap(), *late));
    }
    let served = auc(&scored);
    let trained = golden["holdout_auc"].as_f64().unwrap();
    assert!(scored.len() > 200, "{} held-out lines", scored.len());
    assert!(
        served >= 0.70,
        "held-out AUC {served} over {} lines (training: {trained})",
        scored.len()
    );
    assert!(
        (served - trained).abs() < 0.05,
        "held-out AUC {served}, at training {trained}"
    );

    // The golden vectors over V2.
    let g = common::golden("risk-v1");
    let (status, v2) = s
        .post(
            "/v2/models/risk/versions/1/infer",
            &json!({"inputs": g.inputs}),
        )
        .await;
    assert_eq!(status, 200, "{v2}");
    common::assert_close(
        &common::floats(&v2["outputs"][0]["data"]),
        &g.expected("p_late", 0, g.rows()),
        "risk golden",
    );

    // Defaults, refusals, tenancy.
    let supplier = &f.suppliers["SUP-001"];
    let (status, plain) = send(
        s.client
            .get(s.url(&format!("/api/v1/suppliers/{supplier}/risk"))),
    )
    .await;
    assert_eq!(status, 200, "{plain}");
    assert!(plain["line"]["quantity"].as_f64().unwrap() > 0.0, "{plain}");
    let material = &f.materials["STE-001"];
    for (query, field) in [
        (format!("material_id={material}&quantity=0"), "quantity"),
        (
            "promised_date=2025-01-01&as_of=2025-02-01".to_string(),
            "promised_date",
        ),
        ("as_of=2025-13-01".to_string(), "as_of"),
    ] {
        let (status, body) = send(
            s.client
                .get(s.url(&format!("/api/v1/suppliers/{supplier}/risk?{query}"))),
        )
        .await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(
            body["error"]["details"][field].is_array(),
            "{query}: {body}"
        );
    }
    let (status, _) = send(s.client.get(s.url("/api/v1/suppliers/nope/risk"))).await;
    assert_eq!(status, 404);
    let other = s.organization("Other").await;
    let (status, _) = send(other.get(s.url(&format!("/api/v1/suppliers/{supplier}/risk")))).await;
    assert_eq!(status, 404, "another organization's supplier");
}

/// A policy without a lead time or a demand takes them from the history, by hand here: the supplier's
/// lines of the material received in full took 12 and 18 days; the material was ordered 280, 140 and 420
/// units in the 112 days before today (28-day totals 0, 420, 140, 280).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_takes_lead_time_and_demand_from_the_history() {
    let s = TestServer::start().await;
    let material = |code: &str| {
        let request = s.client.post(s.url("/api/v1/materials")).json(&json!({
            "code": code, "name": code, "category": "steel", "unit": "kg", "specifications": {}}));
        async move { send(request).await.1["id"].as_str().unwrap().to_string() }
    };
    let supplier = |code: &str| {
        let request = s
            .client
            .post(s.url("/api/v1/suppliers"))
            .json(&json!({"code": code, "name": code, "country": "DE", "reliability": 0.9}));
        async move { send(request).await.1["id"].as_str().unwrap().to_string() }
    };
    let (m, m2, m3) = (
        material("M").await,
        material("M2").await,
        material("M3").await,
    );
    let (sup, sup2) = (supplier("S").await, supplier("S2").await);
    let today = chrono::Utc::now().date_naive();
    let day = |back: i64| today - chrono::Duration::days(back);
    let csv = |path: &str, body: String| {
        let request = s
            .client
            .post(s.url(path))
            .header("content-type", "text/csv")
            .body(body);
        async move { send(request).await }
    };
    let (status, body) = csv(
        "/api/v1/orders/bulk",
        format!(
            "reference,supplier_id,currency,ordered_on,material_id,quantity,unit_price,promised_date\n\
             A,{sup},EUR,{},{m},280,1,{}\nB,{sup},EUR,{},{m},140,1,{}\n\
             C,{sup2},EUR,{},{m},420,1,{}\nD,{sup},EUR,{},{m2},50,1,{}\n",
            day(100),
            day(90),
            day(70),
            day(60),
            day(40),
            day(30),
            day(30),
            day(25),
        ),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = csv(
        "/api/v1/deliveries/bulk",
        format!(
            "order_reference,line,delivered_on,quantity,rejected_quantity\n\
             A,1,{},280,0\nB,1,{},130,0\nB,1,{},10,0\nD,1,{},50,0\n",
            day(88),
            day(56),
            day(52),
            day(20),
        ),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let policy = |body: Value| {
        let request = s.client.post(s.url("/api/v1/inventory/policy")).json(&body);
        async move { send(request).await }
    };
    let base = |material: &str| {
        json!({"material_id": material, "unit_cost": 2.0, "holding_rate": 0.2, "ordering_cost": 50.0,
               "service_level": {"type": "cycle", "value": 0.95}, "history_days": 112,
               "demand_from": "orders"})
    };
    let mut request = base(&m);
    request["supplier_id"] = json!(sup);
    let (status, answer) = policy(request).await;
    assert_eq!(status, 200, "{answer}");
    let inputs = &answer["inputs"];
    assert_eq!(inputs["lead_time"]["source"], "deliveries of the material");
    assert_eq!(inputs["lead_time"]["lines"], 2);
    let close = |v: &Value, want: f64| {
        let got = v.as_f64().unwrap();
        assert!(
            (got - want).abs() < 1e-9 * want.max(1.0),
            "{got} against {want}"
        );
    };
    close(&inputs["lead_time"]["mean"], 15.0);
    close(&inputs["lead_time"]["std"], 18f64.sqrt());
    assert_eq!(inputs["demand"]["source"], "orders");
    assert_eq!(inputs["demand"]["lines"], 3);
    close(&inputs["demand"]["mean"], 840.0 / 112.0);
    close(
        &inputs["demand"]["std"],
        (98_000.0f64 / 3.0).sqrt() / 28f64.sqrt(),
    );
    assert_eq!(inputs["demand"]["from"], day(112).to_string());
    assert_eq!(inputs["demand"]["to"], day(1).to_string());
    // The figures are computed from them, as from the same numbers given.
    let mut given = base(&m);
    given["lead_time"] = json!({"mean_days": 15.0, "std_days": 18f64.sqrt()});
    given["demand"] = json!({"mean_per_day": 840.0 / 112.0,
                             "std_per_day": (98_000.0f64 / 3.0).sqrt() / 28f64.sqrt()});
    let (_, same) = policy(given).await;
    for figure in ["eoq", "safety_stock", "reorder_point"] {
        close(
            &answer["figures"][figure]["value"],
            same["figures"][figure]["value"].as_f64().unwrap(),
        );
    }
    assert_eq!(same["inputs"]["lead_time"]["source"], "given");
    // A material the supplier never delivered: every line of the supplier (12, 18, 10 days).
    let mut request = base(&m3);
    request["supplier_id"] = json!(sup);
    request["demand"] = json!({"mean_per_day": 5.0, "std_per_day": 1.0});
    let (status, answer) = policy(request).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["inputs"]["lead_time"]["source"], "deliveries");
    close(&answer["inputs"]["lead_time"]["mean"], 40.0 / 3.0);
    // What the history cannot give is asked for by name.
    for (change, field) in [
        (json!({}), "lead_time"),
        (json!({"supplier_id": sup2}), "lead_time"),
        (
            json!({"supplier_id": sup, "history_days": 10}),
            "history_days",
        ),
    ] {
        let mut request = base(&m);
        for (k, v) in change.as_object().unwrap() {
            request[k] = v.clone();
        }
        let (status, body) = policy(request).await;
        assert_eq!(status, 400, "{change}: {body}");
        assert!(
            body["error"]["details"][field].is_array(),
            "{change}: {body}"
        );
    }
    let mut request = base(&m3);
    request["lead_time"] = json!({"mean_days": 10.0});
    let (status, body) = policy(request).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["details"]["demand"].is_array(), "{body}");
}

/// The fixture's orders by (material code, day): quantity ordered.
fn fixture_demand() -> std::collections::HashMap<(String, chrono::NaiveDate), f64> {
    let text = std::fs::read_to_string(common::repo_root().join("fixtures/orders.csv")).unwrap();
    let mut demand = std::collections::HashMap::new();
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let headers = reader.headers().unwrap().clone();
    let col = |name: &str| headers.iter().position(|h| h == name).unwrap();
    let (code, day, quantity) = (col("material_code"), col("ordered_on"), col("quantity"));
    for r in reader.records().map(Result::unwrap) {
        *demand
            .entry((r[code].to_string(), r[day].parse().unwrap()))
            .or_default() += r[quantity].parse::<f64>().unwrap();
    }
    demand
}

/// The demand model served: the fixture's orders imported, each row of the training frame kept in
/// `fixtures/golden/demand-v1-rows.json` is asked for as of its day; the server rebuilds the features from
/// the order book, equal to the frame's, and answers the weekly rates ONNX Runtime gave at training. On the
/// held-out rows, the weekly quantities (counted here from orders.csv) fall in the 80% intervals at about
/// that rate, and the forecast's error is below holding the last 28 days' rate flat. Days, refusals,
/// tenancy, and a policy whose demand is the forecast.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demand_forecast_is_the_training_frame_served() {
    let s = TestServer::start().await;
    let f = common::catalogue_fixture(&s.base, &s.client).await;
    common::import_supply_fixture(&s.base, &s.client, &f).await;
    let (golden, names) = frame_rows("demand-v1-rows.json");
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let holdout: chrono::NaiveDate = golden["holdout_from"].as_str().unwrap().parse().unwrap();
    let orders = fixture_demand();
    let ordered = |code: &str, from: chrono::NaiveDate, days: i64| -> f64 {
        (0..days)
            .map(|d| {
                orders
                    .get(&(code.to_string(), from + chrono::Duration::days(d)))
                    .copied()
                    .unwrap_or(0.0)
            })
            .sum()
    };
    let forecast = |body: Value| {
        let request = s
            .client
            .post(s.url("/api/v1/analytics/demand-forecast"))
            .json(&body);
        async move { send(request).await }
    };
    let (mut error, mut flat_error, mut total, mut covered, mut points) = (0.0, 0.0, 0.0, 0, 0);
    let mut first = None;
    for row in golden["rows"].as_array().unwrap() {
        let code = row["material_code"].as_str().unwrap();
        let as_of: chrono::NaiveDate = row["as_of"].as_str().unwrap().parse().unwrap();
        let (status, answer) = forecast(json!({"material_id": f.materials[code],
            "horizon_days": 56, "as_of": as_of, "interval_level": 0.8}))
        .await;
        assert_eq!(status, 200, "{answer}");
        for (name, want) in names.iter().zip(row["features"].as_array().unwrap()) {
            let (got, want) = (
                answer["features"][name].as_f64().unwrap(),
                want.as_f64().unwrap(),
            );
            assert!(
                (got - want).abs() <= 1e-6 * want.abs().max(1.0),
                "{code} {as_of} {name}: served {got}, frame {want}"
            );
        }
        let rates = answer["weekly_rates"].as_array().unwrap();
        let weeks = answer["points"].as_array().unwrap();
        assert_eq!((rates.len(), weeks.len()), (8, 8));
        for (k, want) in row["demand"].as_array().unwrap().iter().enumerate() {
            let (got, want) = (rates[k].as_f64().unwrap(), want.as_f64().unwrap());
            assert!(
                (got - want).abs() <= 1e-5 * want.abs().max(1.0),
                "{code} {as_of} week {k}: served {got}, ONNX Runtime {want}"
            );
            let point = &weeks[k];
            let start = as_of + chrono::Duration::days(7 * k as i64);
            assert_eq!(point["start"], start.to_string());
            assert_eq!(
                point["end"],
                (start + chrono::Duration::days(6)).to_string()
            );
            let (value, lower, upper) = (
                point["value"].as_f64().unwrap(),
                point["lower"].as_f64().unwrap(),
                point["upper"].as_f64().unwrap(),
            );
            assert!((value - 7.0 * got).abs() <= 1e-9 * value.max(1.0));
            assert!(0.0 <= lower && lower <= value && value <= upper, "{point}");
            if as_of >= holdout {
                let actual = ordered(code, start, 7);
                let flat = ordered(code, as_of - chrono::Duration::days(28), 28) / 4.0;
                error += (value - actual).abs();
                flat_error += (flat - actual).abs();
                total += actual;
                covered += usize::from(lower <= actual && actual <= upper);
                points += 1;
            }
        }
        first.get_or_insert((code.to_string(), as_of, answer));
    }
    assert!(points >= 200, "{points} held-out weeks");
    let coverage = covered as f64 / points as f64;
    assert!(
        (0.65..=0.95).contains(&coverage),
        "80% intervals held {coverage} of {points} held-out weeks"
    );
    assert!(
        error < flat_error,
        "held-out WAPE {} against {} for the last 28 days held flat",
        error / total,
        flat_error / total
    );

    // By day: each point its week's rate and interval per day.
    let (code, as_of, by_week) = first.unwrap();
    let (status, by_day) = forecast(json!({"material_id": f.materials[&code],
        "horizon_days": 10, "granularity": "day", "as_of": as_of}))
    .await;
    assert_eq!(status, 200, "{by_day}");
    assert_eq!(by_day["level"], 0.8);
    let days = by_day["points"].as_array().unwrap();
    assert_eq!(days.len(), 10);
    for (d, point) in days.iter().enumerate() {
        let date = as_of + chrono::Duration::days(d as i64);
        assert_eq!(point["start"], date.to_string());
        assert_eq!(point["end"], date.to_string());
        assert_eq!(point["value"], by_week["weekly_rates"][d / 7]);
        let week = &by_week["points"][d / 7];
        for bound in ["lower", "upper"] {
            let (day, week) = (
                point[bound].as_f64().unwrap(),
                week[bound].as_f64().unwrap(),
            );
            assert!(
                (day - week / 7.0).abs() <= 1e-9 * week.max(1.0),
                "{bound}: {day} against {week}/7"
            );
        }
    }
    assert_eq!(by_day["model"], json!({"name": "demand", "version": 1}));

    // Refusals, each naming what is wrong.
    let material = &f.materials[&code];
    let (status, unordered) = send(s.client.post(s.url("/api/v1/materials")).json(&json!({
        "code": "NEVER", "name": "never ordered", "category": "steel", "unit": "kg",
        "specifications": {}})))
    .await;
    assert_eq!(status, 201, "{unordered}");
    for (body, status, code) in [
        (
            json!({"material_id": material, "horizon_days": 0}),
            422,
            "beyond_horizon",
        ),
        (
            json!({"material_id": material, "horizon_days": 63}),
            422,
            "beyond_horizon",
        ),
        (
            json!({"material_id": material, "horizon_days": 10}),
            400,
            "validation_error",
        ),
        (
            json!({"material_id": material, "horizon_days": 7, "interval_level": 0.7}),
            400,
            "validation_error",
        ),
        (
            json!({"material_id": material, "horizon_days": 7, "as_of": "2024-02-01"}),
            422,
            "insufficient_history",
        ),
        (
            json!({"material_id": unordered["id"], "horizon_days": 7}),
            422,
            "insufficient_history",
        ),
        (
            json!({"material_id": "nope", "horizon_days": 7}),
            404,
            "not_found",
        ),
        (
            json!({"material_id": material, "horizon_days": 7, "granularity": "month"}),
            400,
            "validation_error",
        ),
    ] {
        let (got, answer) = forecast(body.clone()).await;
        assert_eq!(
            (got, answer["error"]["code"].as_str()),
            (status, Some(code)),
            "{body}: {answer}"
        );
    }
    // Another organization does not see the material.
    let other = s.organization("Other").await;
    let (status, _) = send(
        other
            .post(s.url("/api/v1/analytics/demand-forecast"))
            .json(&json!({"material_id": material, "horizon_days": 7, "as_of": as_of})),
    )
    .await;
    assert_eq!(status, 404);

    // A policy without demand takes it from the forecast over the lead time: 14 days, weeks 1 and 2.
    let manifest: toml::Table =
        std::fs::read_to_string(common::repo_root().join("models/demand/1/model.toml"))
            .unwrap()
            .parse()
            .unwrap();
    let errors: Vec<f64> = manifest["demand"]["week_error_std"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_float().unwrap())
        .collect();
    let scale = by_week["history"]["scale_per_day"].as_f64().unwrap();
    let rate = |k: usize| by_week["weekly_rates"][k].as_f64().unwrap();
    let (status, policy) = send(
        s.client
            .post(s.url("/api/v1/inventory/policy"))
            .json(&json!({
        "material_id": material, "unit_cost": 2.0, "holding_rate": 0.2, "ordering_cost": 50.0,
        "service_level": {"type": "cycle", "value": 0.95}, "as_of": as_of,
        "lead_time": {"mean_days": 14.0, "std_days": 2.0}})),
    )
    .await;
    assert_eq!(status, 200, "{policy}");
    let demand = &policy["inputs"]["demand"];
    assert_eq!(demand["source"], "forecast");
    assert_eq!(demand["model"], json!({"name": "demand", "version": 1}));
    let (mean, std) = (
        (rate(0) + rate(1)) / 2.0,
        (errors[0] + errors[1]) / 2.0 * scale * 7f64.sqrt(),
    );
    for (got, want) in [(&demand["mean"], mean), (&demand["std"], std)] {
        let got = got.as_f64().unwrap();
        assert!(
            (got - want).abs() <= 1e-9 * want.max(1.0),
            "{got} against {want}"
        );
    }
    // Thin history is the demand field's problem, with the way out named.
    let (status, body) = send(s.client.post(s.url("/api/v1/inventory/policy")).json(&json!({
        "material_id": unordered["id"], "unit_cost": 2.0, "holding_rate": 0.2, "ordering_cost": 50.0,
        "service_level": {"type": "cycle", "value": 0.95},
        "lead_time": {"mean_days": 14.0, "std_days": 2.0}})))
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["details"]["demand"][0]
            .as_str()
            .unwrap()
            .contains("demand_from"),
        "{body}"
    );
}
