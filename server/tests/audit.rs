//! The audit trail over real HTTP: each kind of write leaves one entry naming the actor (key or user),
//! the client's address, its user agent and the request id; failed authentications are summarised, not
//! logged one by one; the CSV export parses and matches the JSON.

mod common;

use common::{client_with, TestServer};
use reqwest::Client;
use serde_json::{json, Value};

const PASSWORD: &str = "a passphrase for the audit";

/// The entries of `action`, newest first.
async fn entries(s: &TestServer, action: &str) -> Vec<Value> {
    let body: Value = s
        .client
        .get(s.url(&format!("/api/v1/audit?action={action}&limit=100")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["items"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_leaves_one_entry_with_its_actor_and_origin() {
    let s = TestServer::start().await;
    let owner = &s.client;
    // The analyst's key sends its own user agent and request ids.
    let made: Value = owner
        .post(s.url("/api/v1/api-keys"))
        .json(&json!({ "name": "analyst", "role": "analyst" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let analyst_key = made["id"].as_str().unwrap().to_string();
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        "authorization",
        format!("Bearer {}", made["secret"].as_str().unwrap())
            .parse()
            .unwrap(),
    );
    headers.insert("user-agent", "audit-test/1.0".parse().unwrap());
    let analyst = Client::builder().default_headers(headers).build().unwrap();
    let material: Value = owner
        .post(s.url("/api/v1/materials"))
        .json(&json!({ "code": "AL-1", "name": "Aluminium", "unit": "kg", "category": "metals" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let material = material["id"].as_str().unwrap().to_string();
    let rule: Value = owner
        .post(s.url("/api/v1/alerts"))
        .json(
            &json!({ "name": "any", "scope": { "material_id": material },
                       "condition": { "type": "price_above", "threshold": 1.0 } }),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(rule["id"].is_string(), "{rule}");

    // One price, with a request id of the client's own.
    let r = analyst
        .post(s.url("/api/v1/prices"))
        .header("x-request-id", "audit-req-1")
        .json(
            &json!({ "time": chrono::Utc::now(), "material_id": material, "price": 5.0,
                       "currency": "EUR", "price_type": "quote" }),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let price: Value = r.json().await.unwrap();
    let price_id = price["id"].as_str().unwrap();
    let created = entries(&s, "price.create").await;
    assert_eq!(created.len(), 1);
    let entry = &created[0];
    assert_eq!(entry["actor_key_id"], analyst_key.as_str());
    assert_eq!(entry["actor_type"], "key");
    assert_eq!(entry["ip"], "127.0.0.1");
    assert_eq!(entry["user_agent"], "audit-test/1.0");
    assert_eq!(entry["request_id"], "audit-req-1");
    assert_eq!(entry["target_id"], price_id);

    // A bulk write is one entry with its count.
    let csv = format!(
        "time,material_id,price,currency,price_type\n2025-01-01,{material},4.0,EUR,quote\n\
         2025-01-02,{material},4.1,EUR,quote\n2025-01-03,{material},4.2,EUR,quote\n"
    );
    let r = analyst
        .post(s.url("/api/v1/prices/bulk"))
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let bulk = entries(&s, "price.bulk_create").await;
    assert_eq!(bulk.len(), 1);
    assert_eq!(bulk[0]["after"]["inserted"], 3);
    assert!(bulk[0]["request_id"].is_string());

    // A correction and a deletion, each with the state before.
    let r = analyst
        .patch(s.url(&format!("/api/v1/prices/{price_id}")))
        .json(&json!({ "price": 5.5 }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let updated = entries(&s, "price.update").await;
    assert_eq!(
        (
            updated.len(),
            &updated[0]["before"]["price"],
            &updated[0]["after"]["price"]
        ),
        (1, &json!(5.0), &json!(5.5))
    );

    // The rule fired on the first price: acknowledge, then resolve, each an entry.
    let events: Value = analyst
        .get(s.url("/api/v1/alerts/events"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let event = events["items"][0]["id"]
        .as_str()
        .expect("the rule fired")
        .to_string();
    for verb in ["acknowledge", "resolve"] {
        let r = analyst
            .post(s.url(&format!("/api/v1/alerts/events/{event}/{verb}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{verb}");
        let logged = entries(&s, &format!("alert_event.{verb}")).await;
        assert_eq!(logged.len(), 1, "{verb}");
        assert_eq!(logged[0]["target_id"], event.as_str());
    }
    let r = analyst
        .delete(s.url(&format!("/api/v1/prices/{price_id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(entries(&s, "price.delete").await.len(), 1);

    // A batch job submitted and cancelled.
    let accepted: Value = analyst
        .post(s.url("/api/v1/predictions/batch"))
        .header("content-type", "text/csv")
        .header("prefer", "respond-async")
        .body(format!(
            "material_id,quantity\n{material},100\n{material},200\n"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let batch = accepted["batch_id"].as_str().expect("a job").to_string();
    let r = analyst
        .post(s.url(&format!("/api/v1/predictions/batch/{batch}/cancel")))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    assert_eq!(
        entries(&s, "batch.submit").await[0]["target_id"],
        batch.as_str()
    );
    assert_eq!(
        entries(&s, "batch.cancel").await[0]["target_id"],
        batch.as_str()
    );

    // A user signs in and out; a replayed refresh token is recorded against the user.
    let user: Value = owner
        .post(s.url("/api/v1/users"))
        .json(&json!({ "email": "ana@example.com", "role": "viewer", "password": PASSWORD }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let user_actor = format!("user:{}", user["id"].as_str().unwrap());
    let login = || async {
        Client::new()
            .post(s.url("/api/v1/auth/login"))
            .json(&json!({ "email": "ana@example.com", "password": PASSWORD }))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    let first = login().await;
    let refresh = |token: &Value| {
        Client::new()
            .post(s.url("/api/v1/auth/refresh"))
            .json(&json!({ "refresh_token": token }))
            .send()
    };
    assert_eq!(
        refresh(&first["refresh_token"]).await.unwrap().status(),
        200
    );
    assert_eq!(
        refresh(&first["refresh_token"]).await.unwrap().status(),
        401
    );
    let second = login().await;
    let r = client_with(second["access_token"].as_str().unwrap())
        .post(s.url("/api/v1/auth/logout"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    for action in ["session.login", "session.refresh_reused", "session.logout"] {
        let logged = entries(&s, action).await;
        assert!(!logged.is_empty(), "{action}");
        assert_eq!(logged[0]["actor_key_id"], user_actor.as_str(), "{action}");
        assert_eq!(logged[0]["actor_type"], "user", "{action}");
    }
    assert_eq!(entries(&s, "session.login").await.len(), 2);

    // Guessed keys: summarised per prefix and address, not one entry per attempt.
    let guess = client_with("mk_live_guessedkeyguessedkey000000000000");
    for _ in 0..5 {
        let r = guess.get(s.url("/api/v1/materials")).send().await.unwrap();
        assert_eq!(r.status(), 401);
    }
    let failed = entries(&s, "auth.failed").await;
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["after"]["count"], 5);
    assert_eq!(failed[0]["target_id"], "mk_live_guessedk");
    assert_eq!(failed[0]["actor_key_id"], "ip:127.0.0.1");
    assert_eq!(failed[0]["actor_type"], "anonymous");
    assert!(
        failed[0]["request_id"].is_null(),
        "a summary, not a request"
    );

    // The CSV export holds every entry the JSON lists, in the same order.
    let all: Value = owner
        .get(s.url("/api/v1/audit?limit=1000"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let r = owner
        .get(s.url("/api/v1/audit?format=csv"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    let text = r.text().await.unwrap();
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    assert_eq!(header[..5], ["at", "id", "actor_type", "actor", "action"]);
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    let items = all["items"].as_array().unwrap();
    assert_eq!(rows.len(), items.len());
    for (row, item) in rows.iter().zip(items) {
        assert_eq!(&row[1], item["id"].as_str().unwrap());
        assert_eq!(&row[4], item["action"].as_str().unwrap());
    }
}
