//! Sourcing over real HTTP with the shipped price model, on SQLite and PostgreSQL: an RFQ to three
//! suppliers goes through its states, quotes are refused where the rules say (a draft, an uninvited
//! supplier, another currency, a passed deadline) and accepted otherwise, each line benchmarked exactly as
//! the price model answers the same question and scored as the README's formula says, heard on the
//! WebSocket, kept in the audit log and as price observations; the comparison's best offer per line is
//! the hand computation's, a partial award then a complete one; another organization sees none of it.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{client_with, Backend, PgDatabase, TestServer};
use futures_util::StreamExt;
use mercator_services::clock::Clock;
use serde_json::{json, Value};

async fn send(request: reqwest::RequestBuilder) -> (u16, Value) {
    let r = request.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Φ by Abramowitz and Stegun 26.2.17 (error below 7.5e-8): a second implementation to check the
/// server's against.
fn phi(z: f64) -> f64 {
    if z < 0.0 {
        return 1.0 - phi(-z);
    }
    let t = 1.0 / (1.0 + 0.231_641_9 * z);
    let poly = t
        * (0.319_381_530
            + t * (-0.356_563_782
                + t * (1.781_477_937 + t * (-1.821_255_978 + t * 1.330_274_429))));
    1.0 - (-z * z / 2.0).exp() / (2.0 * std::f64::consts::PI).sqrt() * poly
}

fn close(a: f64, b: f64, tolerance: f64, what: &str) {
    assert!(
        (a - b).abs() <= tolerance * b.abs().max(1.0),
        "{what}: {a} against {b}"
    );
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

/// Waits for the next notification of `kind` on the socket (others are skipped), up to two seconds.
async fn heard<S>(socket: &mut S, kind: &str) -> Value
where
    S: futures_util::Stream<
            Item = Result<
                tokio_tungstenite::tungstenite::Message,
                tokio_tungstenite::tungstenite::Error,
            >,
        > + Unpin,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        let frame = tokio::time::timeout_at(deadline, socket.next())
            .await
            .unwrap_or_else(|_| panic!("no `{kind}` notification within 2 s"))
            .unwrap()
            .unwrap();
        let Ok(text) = frame.to_text() else { continue };
        let Ok(event) = serde_json::from_str::<Value>(text) else {
            continue;
        };
        if event["type"] == kind {
            return event;
        }
    }
}

async fn story(backend: Backend) {
    let database = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => Some(PgDatabase::create().await),
    };
    let clock = Arc::new(Clock::default());
    let url = database.as_ref().map(|d| d.url.clone());
    let mut s = {
        let clock = clock.clone();
        TestServer::with(move |c| {
            c.database_url = url;
            c.clock = clock;
            c.webhook_allow_private = true;
        })
        .await
    };
    s.database = database;
    // A webhook subscribed to quotes and awards through a `sourcing` rule.
    let (hook, received) = receiver().await;
    let (status, rule) = send(s.client.post(s.url("/api/v1/alerts")).json(&json!({
        "name": "sourcing hook",
        "condition": {"type": "sourcing", "events": ["quote.received", "rfq.awarded"]},
        "channels": [{"webhook": {"url": format!("{hook}/in"), "secret": "s3cret-sourcing-hook-0001"}}],
    })))
    .await;
    assert_eq!(status, 201, "{rule}");
    let (status, body) = send(s.client.post(s.url("/api/v1/alerts")).json(&json!({
        "name": "bad", "condition": {"type": "sourcing", "events": ["rfq.lost"]}})))
    .await;
    assert_eq!((status, code(&body)), (400, "validation_error"), "{body}");
    // The fixture's history moved to end yesterday: quotes are judged today.
    let moved = (clock.now().date_naive() - common::fixture_last_day()).num_days() - 1;
    let fixture = common::ingest_fixture_moved(&s.base, &s.client, moved).await;
    let mut materials: Vec<(&String, &String)> = fixture.materials.iter().collect();
    materials.sort();
    let mut suppliers: Vec<(&String, &String)> = fixture.suppliers.iter().collect();
    suppliers.sort();
    assert!(materials.len() >= 3 && suppliers.len() >= 4);
    let m: Vec<&str> = materials
        .iter()
        .take(3)
        .map(|(_, id)| id.as_str())
        .collect();
    let sup: Vec<&str> = suppliers
        .iter()
        .take(4)
        .map(|(_, id)| id.as_str())
        .collect();
    let ws = s.base.replace("http://", "ws://");
    let (mut socket, _) = tokio_tungstenite::connect_async(format!(
        "{ws}/ws/notifications?api_key={}",
        common::ADMIN_KEY
    ))
    .await
    .unwrap();

    // A draft with three lines to three of the four suppliers.
    let today = clock.now().date_naive();
    let needed_by = today + chrono::Days::new(30);
    let deadline = clock.now() + chrono::Duration::hours(2);
    let (status, rfq) = send(s.client.post(s.url("/api/v1/rfqs")).json(&json!({
        "title": "Q1 steel and fasteners",
        "currency": "EUR",
        "incoterm": "DAP",
        "deadline": deadline.to_rfc3339(),
        "lines": [
            {"material_id": m[0], "quantity": 100.0, "needed_by": needed_by.to_string()},
            {"material_id": m[1], "quantity": 40.0, "unit": "kg", "needed_by": needed_by.to_string()},
            {"material_id": m[2], "quantity": 250.0, "needed_by": needed_by.to_string()},
        ],
        "suppliers": [sup[0], sup[1], sup[2]],
    })))
    .await;
    assert_eq!(status, 201, "{rfq}");
    assert_eq!(rfq["status"], "draft");
    assert_eq!(rfq["version"], 1);
    let id = rfq["id"].as_str().unwrap().to_string();
    let path = |rest: &str| s.url(&format!("/api/v1/rfqs/{id}{rest}"));

    // Refusals in the one envelope: a line naming another organization's (or no) material, a bad currency.
    let (status, body) = send(s.client.post(s.url("/api/v1/rfqs")).json(&json!({
        "title": "bad", "currency": "eur", "deadline": deadline.to_rfc3339(),
        "lines": [{"material_id": "nope", "quantity": 1.0, "needed_by": needed_by.to_string()}],
    })))
    .await;
    assert_eq!((status, code(&body)), (400, "validation_error"), "{body}");
    assert!(body["error"]["details"]["currency"].is_array(), "{body}");
    let (status, body) = send(s.client.post(s.url("/api/v1/rfqs")).json(&json!({
        "title": "bad", "currency": "EUR", "deadline": deadline.to_rfc3339(),
        "lines": [{"material_id": "nope", "quantity": 1.0, "needed_by": needed_by.to_string()}],
    })))
    .await;
    assert_eq!((status, code(&body)), (400, "validation_error"), "{body}");
    assert!(body["error"]["details"]["lines"].is_array(), "{body}");

    // A draft takes no quotes; a stale version cannot open it.
    let quote = |supplier: &str, prices: &[(&str, f64)], lead: u32| {
        json!({
            "supplier_id": supplier,
            "valid_until": (today + chrono::Days::new(60)).to_string(),
            "lines": prices.iter().map(|(line, price)| json!({
                "line_id": line, "unit_price": price, "lead_time_days": lead,
            })).collect::<Vec<_>>(),
        })
    };
    let (status, body) = send(s.client.post(path("/quotes")).json(&quote(
        sup[0],
        &[("1", 10.0)],
        10,
    )))
    .await;
    assert_eq!((status, code(&body)), (409, "invalid_state"), "{body}");
    let (status, body) = send(s.client.post(path("/open")).header("if-match", "\"7\"")).await;
    assert_eq!((status, code(&body)), (409, "conflict"), "{body}");
    let (status, opened) = send(s.client.post(path("/open")).header("if-match", "\"1\"")).await;
    assert_eq!(status, 200, "{opened}");
    assert_eq!(opened["status"], "open");
    let event = heard(&mut socket, "rfq.opened").await;
    assert_eq!(event["rfq"]["id"], id.as_str());
    // Open: its lines are fixed, invitations only grow.
    let (status, body) = send(s.client.patch(path("")).json(&json!({"lines": []}))).await;
    assert_eq!((status, code(&body)), (409, "invalid_state"), "{body}");
    let (status, body) = send(
        s.client
            .patch(path(""))
            .json(&json!({"suppliers": [sup[0], sup[1]]})),
    )
    .await;
    assert_eq!((status, code(&body)), (400, "validation_error"), "{body}");
    let (status, body) = send(s.client.post(path("/open"))).await;
    assert_eq!((status, code(&body)), (409, "invalid_state"), "{body}");

    // The uninvited supplier, another currency, an unknown line: refused.
    let (status, body) = send(s.client.post(path("/quotes")).json(&quote(
        sup[3],
        &[("1", 10.0)],
        10,
    )))
    .await;
    assert_eq!(
        (status, code(&body)),
        (422, "supplier_not_invited"),
        "{body}"
    );
    let mut usd = quote(sup[0], &[("1", 10.0)], 10);
    usd["currency"] = json!("USD");
    let (status, body) = send(s.client.post(path("/quotes")).json(&usd)).await;
    assert_eq!((status, code(&body)), (400, "validation_error"), "{body}");
    let (status, body) = send(s.client.post(path("/quotes")).json(&quote(
        sup[0],
        &[("9", 10.0)],
        10,
    )))
    .await;
    assert_eq!((status, code(&body)), (400, "validation_error"), "{body}");
    assert!(
        body["error"]["details"]["lines[0].line_id"].is_array(),
        "{body}"
    );

    // Three quotes. Prices around each material's fair price: below, near and above it.
    let mut fair = Vec::new();
    for (i, material) in m.iter().enumerate() {
        let quantity = [100.0, 40.0, 250.0][i];
        let (status, p) = send(
            s.client
                .post(s.url("/api/v1/predictions/price"))
                .json(&json!({"material_id": material, "quantity": quantity,
                              "supplier_id": sup[0]})),
        )
        .await;
        assert_eq!(status, 200, "{p}");
        fair.push(p["predicted_price"].as_f64().unwrap());
    }
    let offers: [(&str, [f64; 3], u32); 3] = [
        (sup[0], [0.80, 1.00, 1.30], 10),
        (sup[1], [1.05, 0.70, 1.00], 20),
        (sup[2], [0.95, 1.10, 0.0], 45),
    ];
    let mut quotes = Vec::new();
    for (supplier, factors, lead) in offers {
        let lines: Vec<(&str, f64)> = ["1", "2", "3"]
            .into_iter()
            .zip(factors)
            .filter(|(_, f)| *f > 0.0)
            .map(|(line, f)| {
                (
                    line,
                    ((fair[line.parse::<usize>().unwrap() - 1] * f) * 100.0).round() / 100.0,
                )
            })
            .collect();
        let (status, q) = send(
            s.client
                .post(path("/quotes"))
                .json(&quote(supplier, &lines, lead)),
        )
        .await;
        assert_eq!(status, 201, "{q}");
        assert_eq!(q["revision"], 1);
        let event = heard(&mut socket, "quote.received").await;
        assert_eq!(event["quote"]["id"], q["id"]);
        quotes.push(q);
    }

    // Each line's benchmark is the price model's answer to the same question, and the arithmetic holds.
    let reliability = |supplier: &str| {
        let (code, _) = suppliers
            .iter()
            .find(|(_, id)| id.as_str() == supplier)
            .unwrap();
        let text =
            std::fs::read_to_string(common::repo_root().join("fixtures/prices.csv")).unwrap();
        let mut reader = csv::Reader::from_reader(text.as_bytes());
        let row = reader
            .records()
            .map(Result::unwrap)
            .find(|r| &r[4] == code.as_str())
            .unwrap();
        row[5].parse::<f64>().unwrap()
    };
    for q in &quotes {
        let supplier = q["supplier_id"].as_str().unwrap();
        for line in q["lines"].as_array().unwrap() {
            let b = &line["benchmark"];
            assert!(b.is_object(), "{line}");
            let (status, p) = send(s.client.post(s.url("/api/v1/predictions/price")).json(&json!({
                "material_id": line["material_id"], "quantity": line["quantity"], "supplier_id": supplier,
                "delivery_date": line["promised_date"], "as_of": today.to_string(),
            })))
            .await;
            assert_eq!(status, 200, "{p}");
            close(
                b["fair_price"].as_f64().unwrap(),
                p["predicted_price"].as_f64().unwrap(),
                1e-9,
                "fair price",
            );
            close(
                b["lower"].as_f64().unwrap(),
                p["prediction_interval"]["lower"].as_f64().unwrap(),
                1e-9,
                "lower",
            );
            close(
                b["upper"].as_f64().unwrap(),
                p["prediction_interval"]["upper"].as_f64().unwrap(),
                1e-9,
                "upper",
            );
            assert_eq!(b["model"], p["model"]["name"]);
            assert_eq!(b["model_version"], p["model"]["version"]);
            let (price, qty) = (
                line["unit_price"].as_f64().unwrap(),
                line["quantity"].as_f64().unwrap(),
            );
            let (fm, lo, hi) = (
                b["fair_price"].as_f64().unwrap(),
                b["lower"].as_f64().unwrap(),
                b["upper"].as_f64().unwrap(),
            );
            // The split normal through the 80% interval: σ each side = half-width / Φ⁻¹(0.9).
            let sigma = if price < fm { fm - lo } else { hi - fm } / 1.281_551_565_545;
            let z = (price - fm) / sigma;
            close(b["z"].as_f64().unwrap(), z, 1e-9, "z");
            close(
                b["percentile"].as_f64().unwrap(),
                phi(z),
                1e-6,
                "percentile",
            );
            close(
                b["savings"].as_f64().unwrap(),
                (fm - price) * qty,
                1e-9,
                "savings",
            );
            let verdict = if price < lo {
                "below"
            } else if price > hi {
                "above"
            } else {
                "within"
            };
            assert_eq!(b["verdict"], verdict, "{line}");
            // The risk model's p(late) is the supplier-risk answer for the same line, as of the quote.
            let p_late = line["p_late"]
                .as_f64()
                .expect("p_late from the shipped risk model");
            let (status, risk) = send(s.client.get(s.url(&format!(
                "/api/v1/suppliers/{supplier}/risk?material_id={}&quantity={}&promised_date={}&as_of={today}",
                line["material_id"].as_str().unwrap(),
                line["quantity"],
                line["promised_date"].as_str().unwrap(),
            ))))
            .await;
            assert_eq!(status, 200, "{risk}");
            close(risk["p_late"].as_f64().unwrap(), p_late, 1e-9, "p_late");
            // The deal score: 0.5 price + 0.2 reliability + 0.15 lead time + 0.15 risk.
            let deal = &line["deal"];
            let c_price = 100.0 * (1.0 - phi(z));
            let c_rel = 100.0 * reliability(supplier);
            let promised = chrono::NaiveDate::parse_from_str(
                line["promised_date"].as_str().unwrap(),
                "%Y-%m-%d",
            )
            .unwrap();
            let late = (promised - needed_by).num_days();
            let c_lead = if late <= 0 {
                100.0
            } else {
                100.0 * (1.0 - late as f64 / 14.0).max(0.0)
            };
            close(
                deal["components"]["price"].as_f64().unwrap(),
                c_price,
                1e-5,
                "price component",
            );
            close(
                deal["components"]["reliability"].as_f64().unwrap(),
                c_rel,
                1e-9,
                "reliability component",
            );
            close(
                deal["components"]["lead_time"].as_f64().unwrap(),
                c_lead,
                1e-9,
                "lead-time component",
            );
            let c_risk = 100.0 * (1.0 - p_late);
            close(
                deal["components"]["risk"].as_f64().unwrap(),
                c_risk,
                1e-9,
                "risk component",
            );
            assert_eq!(deal["missing"], json!([]));
            let expected = (0.5 * c_price + 0.2 * c_rel + 0.15 * c_lead + 0.15 * c_risk).round();
            assert_eq!(deal["score"].as_f64(), Some(expected), "{deal}");
            // It is a price observation of type quote, scored.
            let price_id = line["price_id"].as_str().expect("a price observation");
            let (status, observed) =
                send(s.client.get(s.url(&format!("/api/v1/prices/{price_id}")))).await;
            assert_eq!(status, 200, "{observed}");
            assert_eq!(observed["price_type"], "quote");
            assert_eq!(observed["price"].as_f64(), Some(price));
            assert_eq!(line["anomaly_score"], observed["anomaly"]["score"]);
        }
    }
    // The 45-day lead time is 15 days late: its lead-time component is 0.
    let late_line = &quotes[2]["lines"][0];
    assert_eq!(
        late_line["deal"]["components"]["lead_time"], 0.0,
        "{late_line}"
    );
    // The 30%-over line is above its interval; the 20%-under one below or within, never above.
    assert_eq!(quotes[0]["lines"][2]["benchmark"]["verdict"], "above");
    assert_ne!(quotes[0]["lines"][0]["benchmark"]["verdict"], "above");

    // A revised quote supersedes the supplier's first.
    let (status, revised) = send(s.client.post(path("/quotes")).json(&quote(
        sup[1],
        &[("1", fair[0]), ("2", fair[1]), ("3", fair[2])],
        20,
    )))
    .await;
    assert_eq!(status, 201, "{revised}");
    assert_eq!(revised["revision"], 2);
    let (_, current) = send(s.client.get(path("/quotes"))).await;
    assert_eq!(current.as_array().unwrap().len(), 3, "{current}");
    let (_, every) = send(s.client.get(path("/quotes?all=true"))).await;
    assert_eq!(every.as_array().unwrap().len(), 4);
    let (_, rfq) = send(s.client.get(path(""))).await;
    assert!(
        rfq["suppliers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["status"] == "responded"),
        "{rfq}"
    );
    assert_eq!(
        rfq["suppliers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["supplier_id"] == sup[1])
            .unwrap()["quote_id"],
        revised["id"]
    );

    // Past the deadline: the RFQ is closed, and a quote is refused as late.
    clock.advance(Duration::from_secs(2 * 3600 + 1));
    let (status, body) = send(s.client.post(path("/quotes")).json(&quote(
        sup[0],
        &[("1", 10.0)],
        10,
    )))
    .await;
    assert_eq!((status, code(&body)), (409, "deadline_passed"), "{body}");
    let (status, rfq) = send(s.client.get(path(""))).await;
    assert_eq!(status, 200);
    assert_eq!(rfq["status"], "closed", "{rfq}");
    assert_eq!(rfq["closed_at"], rfq["deadline"]);
    // Reopened until a new deadline, closed by hand.
    let later = clock.now() + chrono::Duration::hours(1);
    let (status, body) = send(
        s.client
            .post(path("/reopen"))
            .json(&json!({"deadline": later.to_rfc3339()})),
    )
    .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("open")),
        "{body}"
    );
    let (status, body) = send(
        s.client
            .post(path("/award"))
            .json(&json!({"supplier_id": sup[0]})),
    )
    .await;
    assert_eq!((status, code(&body)), (409, "invalid_state"), "{body}");
    let (status, body) = send(s.client.post(path("/close"))).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("closed")),
        "{body}"
    );
    heard(&mut socket, "rfq.closed").await;

    // The comparison: the best offer per line by landed cost, as computed here by hand.
    let (status, cmp) = send(s.client.get(path("/comparison"))).await;
    assert_eq!(status, 200, "{cmp}");
    let (_, current) = send(s.client.get(path("/quotes"))).await;
    let mut best = Vec::new();
    for (i, line) in ["1", "2", "3"].into_iter().enumerate() {
        let quantity = [100.0, 40.0, 250.0][i];
        let mut offers: Vec<(f64, f64, String)> = Vec::new();
        for q in current.as_array().unwrap() {
            let supplier = q["supplier_id"].as_str().unwrap();
            if let Some(l) = q["lines"]
                .as_array()
                .unwrap()
                .iter()
                .find(|l| l["line_id"] == line)
            {
                let price = l["unit_price"].as_f64().unwrap();
                let promised = chrono::NaiveDate::parse_from_str(
                    l["promised_date"].as_str().unwrap(),
                    "%Y-%m-%d",
                )
                .unwrap();
                let late = (promised - needed_by).num_days().max(0) as f64;
                let p_late = l["p_late"].as_f64().unwrap();
                let landed = price * (1.0 + 0.005 * late + 0.1 * p_late);
                offers.push((landed, price, supplier.to_string()));
            }
        }
        offers.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
        let row = &cmp["lines"][i];
        assert_eq!(
            row["offers"].as_array().unwrap().len(),
            offers.len(),
            "{row}"
        );
        assert_eq!(
            row["best_supplier_id"].as_str(),
            Some(offers[0].2.as_str()),
            "line {line}: {row}"
        );
        close(
            row["offers"][0]["landed_unit_cost"].as_f64().unwrap(),
            offers[0].0,
            1e-12,
            "landed cost",
        );
        best.push((offers[0].2.clone(), offers[0].1 * quantity));
    }
    let split: f64 = best.iter().map(|(_, extended)| extended).sum();
    close(
        cmp["totals"]["best_per_line"].as_f64().unwrap(),
        split,
        1e-12,
        "best split total",
    );
    let third = cmp["suppliers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["supplier_id"] == sup[2])
        .unwrap();
    assert_eq!(
        (third["lines_quoted"].as_u64(), third["complete"].as_bool()),
        (Some(2), Some(false))
    );
    assert_ne!(cmp["totals"]["best_single_supplier"], sup[2]);
    let r = s
        .client
        .get(path("/comparison?format=csv"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    let csv_text = r.text().await.unwrap();
    assert_eq!(csv_text.lines().count(), 1 + 3 + 3 + 2, "{csv_text}");

    // A partial award: line 1 split 60/40, line 2 whole; line 3 is left.
    let other_supplier = [sup[0], sup[1], sup[2]]
        .into_iter()
        .find(|x| *x != best[0].0)
        .unwrap();
    let (status, awarded) = send(s.client.post(path("/award")).json(&json!({"lines": [
        {"line_id": "1", "supplier_id": best[0].0, "quantity": 60.0},
        {"line_id": "1", "supplier_id": other_supplier, "quantity": 40.0},
        {"line_id": "2", "supplier_id": best[1].0},
    ]})))
    .await;
    assert_eq!(status, 200, "{awarded}");
    assert_eq!(awarded["status"], "partially_awarded");
    assert_eq!(awarded["awards"].as_array().unwrap().len(), 3, "{awarded}");
    let event = heard(&mut socket, "rfq.awarded").await;
    assert_eq!(event["awards"].as_array().unwrap().len(), 3, "{event}");
    // Nothing beyond a line's quantity, nothing from a supplier that did not price the line.
    let (status, body) = send(s.client.post(path("/award")).json(&json!({"lines": [
        {"line_id": "1", "supplier_id": best[0].0, "quantity": 1.0}]})))
    .await;
    assert_eq!((status, code(&body)), (400, "validation_error"), "{body}");
    let (status, body) = send(s.client.post(path("/award")).json(&json!({"lines": [
        {"line_id": "3", "supplier_id": sup[3]}]})))
    .await;
    assert_eq!((status, code(&body)), (400, "validation_error"), "{body}");
    // The rest to the best offer of line 3: awarded in full.
    let (status, done) = send(
        s.client
            .post(path("/award"))
            .json(&json!({"supplier_id": best[2].0})),
    )
    .await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["status"], "awarded", "{done}");
    let line3: f64 = done["awards"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["line_id"] == "3")
        .map(|a| a["quantity"].as_f64().unwrap())
        .sum();
    assert_eq!(line3, 250.0);
    let (status, body) = send(s.client.post(path("/cancel"))).await;
    assert_eq!((status, code(&body)), (409, "invalid_state"), "{body}");

    // The awards become orders, one per awarded supplier, once.
    let (status, orders) = send(s.client.post(path("/orders"))).await;
    assert_eq!(status, 201, "{orders}");
    let awarded_suppliers: std::collections::BTreeSet<&str> = done["awards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["supplier_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        orders.as_array().unwrap().len(),
        awarded_suppliers.len(),
        "{orders}"
    );
    let ordered: f64 = orders
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|o| o["lines"].as_array().unwrap())
        .map(|l| l["quantity"].as_f64().unwrap())
        .sum();
    assert_eq!(ordered, 100.0 + 40.0 + 250.0);
    let (status, body) = send(s.client.post(path("/orders"))).await;
    assert_eq!((status, code(&body)), (409, "invalid_state"), "{body}");
    // The scorecard counts the RFQ: the first supplier was invited and quoted.
    let (status, card) = send(
        s.client
            .get(s.url(&format!("/api/v1/suppliers/{}/scorecard", sup[0]))),
    )
    .await;
    assert_eq!(status, 200, "{card}");
    assert_eq!(
        (
            card["rfqs_invited"].as_u64(),
            card["rfqs_responded"].as_u64()
        ),
        (Some(1), Some(1)),
        "{card}"
    );
    assert_eq!(card["quote_lines_benchmarked"], 3, "{card}");
    let (_, card) = send(
        s.client
            .get(s.url(&format!("/api/v1/suppliers/{}/scorecard", sup[3]))),
    )
    .await;
    assert_eq!(card["rfqs_invited"], 0, "{card}");

    // The webhook got every quote and both awards, as the WebSocket did.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let kinds: Vec<String> = received
            .lock()
            .unwrap()
            .iter()
            .map(|body| {
                serde_json::from_str::<Value>(body).unwrap()["type"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        let count = |k: &str| kinds.iter().filter(|x| x.as_str() == k).count();
        if count("quote.received") == 4 && count("rfq.awarded") == 2 {
            assert_eq!(kinds.len(), 6, "nothing else: {kinds:?}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "webhook bodies: {kinds:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A draft cancelled and deleted.
    let (_, draft) = send(s.client.post(s.url("/api/v1/rfqs")).json(&json!({
        "title": "spare", "currency": "EUR", "deadline": later.to_rfc3339(),
        "lines": [{"material_id": m[0], "quantity": 1.0, "needed_by": needed_by.to_string()}],
    })))
    .await;
    let draft_path = s.url(&format!("/api/v1/rfqs/{}", draft["id"].as_str().unwrap()));
    let (status, body) = send(s.client.post(format!("{draft_path}/open"))).await;
    assert_eq!(
        (status, code(&body)),
        (400, "validation_error"),
        "no supplier invited: {body}"
    );
    let (status, _) = send(s.client.post(format!("{draft_path}/cancel"))).await;
    assert_eq!(status, 200);
    let (status, _) = send(s.client.delete(draft_path.clone())).await;
    assert_eq!(status, 204);
    let (status, _) = send(s.client.get(draft_path)).await;
    assert_eq!(status, 404);

    // The audit log has every move.
    let (status, audit) = send(
        s.client
            .get(s.url(&format!("/api/v1/audit?target_id={id}"))),
    )
    .await;
    assert_eq!(status, 200, "{audit}");
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for action in [
        "rfq.create",
        "rfq.open",
        "rfq.reopen",
        "rfq.close",
        "rfq.award",
    ] {
        assert!(actions.contains(&action), "{action} in {actions:?}");
    }

    // Another organization sees none of it, and cannot quote into it.
    let other = s.organization("Elsewhere").await;
    let (status, _) = send(other.get(path(""))).await;
    assert_eq!(status, 404);
    let (status, list) = send(other.get(s.url("/api/v1/rfqs"))).await;
    assert_eq!(
        (status, list["items"].as_array().map(Vec::len)),
        (200, Some(0)),
        "{list}"
    );
    let (status, _) = send(other.get(path("/quotes"))).await;
    assert_eq!(status, 404);
    // A viewer reads, never writes.
    let (status, key) = send(
        s.client
            .post(s.url("/api/v1/api-keys"))
            .json(&json!({"name": "viewer", "role": "viewer"})),
    )
    .await;
    assert_eq!(status, 201, "{key}");
    let viewer = client_with(key["secret"].as_str().unwrap());
    let (status, _) = send(viewer.get(path("/quotes"))).await;
    assert_eq!(status, 200);
    let (status, body) = send(viewer.post(s.url("/api/v1/rfqs")).json(&json!({}))).await;
    assert_eq!((status, code(&body)), (403, "forbidden"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rfq_story_on_sqlite() {
    story(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rfq_story_on_postgres() {
    story(Backend::Postgres).await;
}

/// A webhook receiver on loopback that answers 200 and keeps every body.
async fn receiver() -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    let got: Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    let keep = got.clone();
    let app = axum::Router::new().route(
        "/in",
        axum::routing::post(move |body: String| {
            let keep = keep.clone();
            async move {
                keep.lock().unwrap().push(body);
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, got)
}

/// Posts prices (CSV) for the caller's organization.
async fn ingest(s: &TestServer, rows: &[(String, &str, f64, &str)]) {
    let mut csv = String::from("time,material_id,price,currency,quantity,price_type\n");
    for (time, material, price, kind) in rows {
        csv.push_str(&format!("{time},{material},{price},EUR,10,{kind}\n"));
    }
    let r = s
        .client
        .post(s.url("/api/v1/prices/bulk"))
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
}

/// The zscore rule on hand-made series (the design reference's: 100, 102, 98, 101, 99, 100, 103, 97, whose
/// mean is 100 and sample σ 2): 104 is exactly 2σ and does not fire, 104.01 and 95 do; another price type's
/// series is its own. Then the material benchmark over hand-made prices, checked by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_zscore_rule_fires_exactly_where_its_definition_says_and_benchmarks_add_up() {
    let s = TestServer::start().await;
    let mut ids = Vec::new();
    for (code, category) in [
        ("Z1", "bolts"),
        ("Z2", "bolts"),
        ("Z3", "bolts"),
        ("N1", "nuts"),
    ] {
        let (status, m) = send(s.client.post(s.url("/api/v1/materials")).json(&json!({
            "code": code, "name": code, "category": category, "unit": "pcs", "specifications": {}})))
        .await;
        assert_eq!(status, 201, "{m}");
        ids.push(m["id"].as_str().unwrap().to_string());
    }
    let (status, rule) = send(s.client.post(s.url("/api/v1/alerts")).json(&json!({
        "name": "two sigma", "scope": {"category": "bolts"},
        "condition": {"type": "zscore", "k": 2, "window": 8, "min_points": 8},
        "cooldown_seconds": 0})))
    .await;
    assert_eq!(status, 201, "{rule}");
    let rule_id = rule["id"].as_str().unwrap().to_string();
    for bad in [
        json!({"type": "zscore", "k": 0}),
        json!({"type": "zscore", "window": 5, "min_points": 6}),
    ] {
        let (status, body) = send(s.client.post(s.url("/api/v1/alerts")).json(&json!({
            "name": "bad", "condition": bad})))
        .await;
        assert_eq!((status, code(&body)), (400, "validation_error"), "{body}");
    }
    let base = chrono::Utc::now() - chrono::Duration::days(3);
    let at = |minutes: i64| (base + chrono::Duration::minutes(minutes)).to_rfc3339();
    let series = [100.0, 102.0, 98.0, 101.0, 99.0, 100.0, 103.0, 97.0];
    let mut rows = Vec::new();
    for (m, id) in ids.iter().take(3).enumerate() {
        for (i, p) in series.iter().enumerate() {
            rows.push((at(i as i64 + 10 * m as i64), id.as_str(), *p, "quote"));
        }
    }
    ingest(&s, &rows).await;
    let events = |s: &TestServer| {
        let url = s.url(&format!("/api/v1/alerts/events?rule_id={rule_id}"));
        let client = s.client.clone();
        async move {
            let (_, body) = send(client.get(url)).await;
            body["items"].as_array().unwrap().clone()
        }
    };
    // The series builds up below eight points: nothing judged, nothing fires.
    assert_eq!(events(&s).await.len(), 0);
    // 104 is μ + 2σ exactly: not beyond it.
    ingest(&s, &[(at(100), ids[0].as_str(), 104.0, "quote")]).await;
    assert_eq!(events(&s).await.len(), 0);
    // 104.01 on the second material and 95 on the third: beyond.
    ingest(
        &s,
        &[
            (at(101), ids[1].as_str(), 104.01, "quote"),
            (at(102), ids[2].as_str(), 95.0, "quote"),
        ],
    )
    .await;
    let fired = events(&s).await;
    assert_eq!(fired.len(), 2, "{fired:?}");
    let mut values: Vec<f64> = fired.iter().map(|e| e["value"].as_f64().unwrap()).collect();
    values.sort_by(f64::total_cmp);
    assert!(
        (values[0] - -2.5).abs() < 1e-9 && (values[1] - 2.005).abs() < 1e-9,
        "{values:?}"
    );
    // A market price of 95 on the first material is a series of one: nothing to judge.
    ingest(&s, &[(at(103), ids[0].as_str(), 95.0, "market")]).await;
    assert_eq!(events(&s).await.len(), 2);

    // The benchmark of the first material: its quotes (the series and 104), the category's (three bolts'
    // quotes), its one market price.
    let from = (base - chrono::Duration::days(1)).to_rfc3339();
    let (status, b) = send(s.client.get(s.url(&format!(
        "/api/v1/benchmarks/materials/{}?from={}",
        ids[0],
        urlencode(&from)
    ))))
    .await;
    assert_eq!(status, 200, "{b}");
    let mut own: Vec<f64> = series.to_vec();
    own.push(104.0);
    own.sort_by(f64::total_cmp);
    // Nine values: the median is the fifth, the quartiles the third and seventh.
    assert_eq!(b["material"]["n"], 9);
    assert_eq!(b["material"]["median"].as_f64(), Some(own[4]));
    assert_eq!(b["material"]["q1"].as_f64(), Some(own[2]));
    assert_eq!(b["material"]["q3"].as_f64(), Some(own[6]));
    let mut category: Vec<f64> = series.repeat(3);
    category.extend([104.0, 104.01, 95.0]);
    assert_eq!(b["category_prices"]["n"], category.len());
    assert_eq!(b["category_materials"], 3);
    let at_or_below = category.iter().filter(|&&p| p <= own[4]).count() as f64;
    close(
        b["percentile_in_category"].as_f64().unwrap(),
        100.0 * at_or_below / category.len() as f64,
        1e-12,
        "percentile",
    );
    assert_eq!(b["market"]["n"], 1);
    close(
        b["vs_market"].as_f64().unwrap(),
        own[4] / 95.0 - 1.0,
        1e-12,
        "vs market",
    );
    let newest = (base + chrono::Duration::minutes(100)).date_naive();
    assert_eq!(
        b["data_age_days"],
        (chrono::Utc::now().date_naive() - newest).num_days()
    );
    assert!(
        b["fair_price"].is_object() || b["fair_price_error"].is_string(),
        "{b}"
    );
    // Another organization's material is not found.
    let other = s.organization("Other").await;
    let (status, _) =
        send(other.get(s.url(&format!("/api/v1/benchmarks/materials/{}", ids[0])))).await;
    assert_eq!(status, 404);
}

fn urlencode(text: &str) -> String {
    text.replace('+', "%2B").replace(':', "%3A")
}
