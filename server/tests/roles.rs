//! The role × route matrix, generated from the OpenAPI document: for every operation, every caller below
//! its `x-minimum-role` gets 403, and its minimum role gets past the door (neither 401 nor 403), with keys
//! and with a signed-in user alike.

mod common;

use common::{client_with, TestServer, ADMIN_KEY};
use reqwest::{Client, Method};
use serde_json::{json, Value};

const ROLES: [&str; 4] = ["viewer", "analyst", "admin", "owner"];

async fn key(s: &TestServer, admin: &Client, role: &str) -> Client {
    let r = admin
        .post(s.url("/api/v1/api-keys"))
        .json(&json!({ "name": role, "role": role }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let body: Value = r.json().await.unwrap();
    client_with(body["secret"].as_str().unwrap())
}

/// A signed-in user of `role` in the organization `admin` administers.
async fn user(s: &TestServer, admin: &Client, role: &str) -> Client {
    let email = format!("{role}@roles.example.com");
    let password = "a passphrase for the matrix";
    let r = admin
        .post(s.url("/api/v1/users"))
        .json(&json!({ "email": email, "role": role, "password": password }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let tokens: Value = Client::new()
        .post(s.url("/api/v1/auth/login"))
        .json(&json!({ "email": email, "password": password }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    client_with(tokens["access_token"].as_str().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_refuses_the_roles_below_its_minimum() {
    let models = tempfile::tempdir().unwrap();
    let dir = models.path().to_path_buf();
    let s = TestServer::with(|c| c.models_dir = dir).await;
    // An organization that is not the platform's: its admin is not the owner.
    let created: Value = s
        .client
        .post(s.url("/api/v1/organizations"))
        .json(&json!({ "name": "Tenant" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let tenant_admin = client_with(created["api_key"]["secret"].as_str().unwrap());
    let keys = [
        key(&s, &tenant_admin, "viewer").await,
        key(&s, &tenant_admin, "analyst").await,
        tenant_admin.clone(),
        client_with(ADMIN_KEY),
    ];
    let users = [
        user(&s, &tenant_admin, "viewer").await,
        user(&s, &tenant_admin, "analyst").await,
        user(&s, &tenant_admin, "admin").await,
    ];
    let doc: Value = Client::new()
        .get(s.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let minimum = operation["x-minimum-role"]
                .as_str()
                .unwrap_or_else(|| panic!("{method} {path} states no minimum role"));
            let concrete = path
                .replace("{id}", "0")
                .replace("{batch_id}", "0")
                .replace("{quote_id}", "0")
                .replace("{model}", "price")
                .replace("{name}", "price")
                .replace("{version}", "1");
            let method: Method = method.to_uppercase().parse().unwrap();
            let call = |client: &Client| {
                client
                    .request(method.clone(), s.url(&concrete))
                    .header("content-type", "application/json")
                    .send()
            };
            if minimum == "none" {
                let status = call(&Client::new()).await.unwrap().status().as_u16();
                assert!(
                    status != 401 && status != 403,
                    "{method} {path}: {status} without a credential"
                );
                checked += 1;
                continue;
            }
            let rank = ROLES.iter().position(|r| *r == minimum).unwrap();
            for (i, role) in ROLES.iter().enumerate() {
                let mut callers = vec![("key", &keys[i])];
                // Signing out would end the users' sessions mid-matrix (keys get 400: no session).
                if i < 3 && path != "/api/v1/auth/logout" {
                    callers.push(("user", &users[i]));
                }
                for (kind, client) in callers {
                    let r = call(client).await.unwrap();
                    let status = r.status().as_u16();
                    let body: Value = r.json().await.unwrap_or(Value::Null);
                    let code = body["error"]["code"].as_str().or(body["code"].as_str());
                    if i < rank {
                        assert_eq!(
                            (status, code),
                            (403, Some("forbidden")),
                            "{method} {path} needs {minimum}: a {role} {kind} got {status} {body}"
                        );
                    } else {
                        assert!(
                            status != 401 && status != 403,
                            "{method} {path} needs {minimum}: a {role} {kind} got {status} {body}"
                        );
                    }
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 400, "{checked} cases");
}

/// The cross-tenant matrix, generated from the same document: every id-bearing operation, called by
/// another organization's admin with this organization's id, answers 404 exactly as for an id that does
/// not exist, and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_organizations_ids_are_not_found() {
    let s = TestServer::start().await;
    let owner = &s.client;
    let post = |path: &str, body: Value| {
        let request = owner.post(s.url(path)).json(&body);
        async move {
            let r = request.send().await.unwrap();
            let status = r.status();
            let body = r.json::<Value>().await.unwrap();
            assert!(status.is_success(), "{status} {body}");
            body
        }
    };
    // One of each resource in the platform organization.
    let material = post(
        "/api/v1/materials",
        json!({ "code": "AL-1", "name": "Aluminium", "unit": "kg", "category": "metals" }),
    )
    .await;
    let supplier = post(
        "/api/v1/suppliers",
        json!({ "code": "S-1", "name": "Acme", "country": "DE", "reliability": 0.9 }),
    )
    .await;
    let rule = post(
        "/api/v1/alerts",
        json!({ "name": "any price", "scope": { "material_id": material["id"] },
                "condition": { "type": "price_above", "threshold": 1.0 }, "cooldown_seconds": 60 }),
    )
    .await;
    let price = post(
        "/api/v1/prices",
        json!({ "time": chrono::Utc::now(), "material_id": material["id"],
                "supplier_id": supplier["id"], "price": 5.0, "currency": "EUR", "quantity": 10.0,
                "price_type": "quote" }),
    )
    .await;
    let events: Value = owner
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
    // An open RFQ to the supplier, with its quote.
    let rfq = post(
        "/api/v1/rfqs",
        json!({ "title": "t", "currency": "EUR", "deadline": chrono::Utc::now() + chrono::Duration::hours(1),
                "lines": [{ "material_id": material["id"], "quantity": 1.0, "needed_by": "2030-01-01" }],
                "suppliers": [supplier["id"]] }),
    )
    .await;
    post(
        &format!("/api/v1/rfqs/{}/open", rfq["id"].as_str().unwrap()),
        json!({}),
    )
    .await;
    let quote = post(
        &format!("/api/v1/rfqs/{}/quotes", rfq["id"].as_str().unwrap()),
        json!({ "supplier_id": supplier["id"], "lines": [{ "line_id": "1", "unit_price": 5.0 }] }),
    )
    .await;
    let order = post(
        "/api/v1/orders",
        json!({ "supplier_id": supplier["id"], "currency": "EUR",
                "lines": [{ "material_id": material["id"], "quantity": 1.0, "unit_price": 5.0,
                            "promised_date": "2030-01-01" }] }),
    )
    .await;
    let key = post("/api/v1/api-keys", json!({ "name": "k", "role": "viewer" })).await;
    let user = post(
        "/api/v1/users",
        json!({ "email": "someone@platform.example.com", "role": "viewer" }),
    )
    .await;
    let batch: Value = owner
        .post(s.url("/api/v1/predictions/batch"))
        .header("content-type", "text/csv")
        .header("prefer", "respond-async")
        .body(format!(
            "material_id,quantity,supplier_id,delivery_date\n{},100,{},2027-01-01\n",
            material["id"].as_str().unwrap(),
            supplier["id"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id_for = |path: &str| -> String {
        let id = |v: &Value| v["id"].as_str().unwrap().to_string();
        if path.starts_with("/api/v1/alerts/events/") {
            event.clone()
        } else if path.starts_with("/api/v1/alerts/") {
            id(&rule)
        } else if path.starts_with("/api/v1/materials/")
            || path.starts_with("/api/v1/benchmarks/materials/")
        {
            id(&material)
        } else if path.starts_with("/api/v1/rfqs/") {
            id(&rfq)
        } else if path.starts_with("/api/v1/orders/") {
            id(&order)
        } else if path.starts_with("/api/v1/suppliers/") {
            id(&supplier)
        } else if path.starts_with("/api/v1/prices/") {
            id(&price)
        } else if path.starts_with("/api/v1/api-keys/") {
            id(&key)
        } else if path.starts_with("/api/v1/users/") {
            id(&user)
        } else if path.contains("/batch") || path.starts_with("/ws/predictions/") {
            batch["batch_id"].as_str().unwrap().to_string()
        } else {
            panic!("{path}: which resource does its id name? (add it here)")
        }
    };

    let created: Value = owner
        .post(s.url("/api/v1/organizations"))
        .json(&json!({ "name": "Other" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let other_secret = created["api_key"]["secret"].as_str().unwrap().to_string();
    let other_admin = client_with(&other_secret);
    let doc: Value = Client::new()
        .get(s.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        if !path.contains("{id}") && !path.contains("{batch_id}") {
            continue;
        }
        for method in item.as_object().unwrap().keys() {
            let answer = |id: &str| {
                let concrete = path
                    .replace("{id}", id)
                    .replace("{batch_id}", id)
                    .replace("{quote_id}", quote["id"].as_str().unwrap());
                let method: Method = method.to_uppercase().parse().unwrap();
                let (url, ws) = (s.url(&concrete), concrete.starts_with("/ws/"));
                let (other_admin, other_secret) = (other_admin.clone(), other_secret.clone());
                async move {
                    if ws {
                        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
                        let mut request = url.replace("http", "ws").into_client_request().unwrap();
                        request.headers_mut().insert(
                            "authorization",
                            format!("Bearer {other_secret}").parse().unwrap(),
                        );
                        return match tokio_tungstenite::connect_async(request).await {
                            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                                (r.status().as_u16(), Value::Null)
                            }
                            other => panic!("{concrete}: {:?}", other.map(|_| ())),
                        };
                    }
                    let with_body = matches!(method, Method::POST | Method::PATCH | Method::PUT);
                    let mut request = other_admin.request(method, url);
                    if with_body {
                        // A body that parses, where the route needs fields: the id is what is judged.
                        let body = if concrete.ends_with("/quotes") {
                            json!({"supplier_id": "x", "lines": [{"line_id": "1", "unit_price": 1.0}]})
                        } else if concrete.ends_with("/reopen") {
                            json!({"deadline": "2100-01-01"})
                        } else if concrete.ends_with("/deliveries") {
                            json!({"deliveries": []})
                        } else {
                            json!({})
                        };
                        request = request.json(&body);
                    }
                    let r = request.send().await.unwrap();
                    (
                        r.status().as_u16(),
                        r.json::<Value>().await.unwrap_or(Value::Null),
                    )
                }
            };
            let (status, body) = answer(&id_for(path)).await;
            let (missing_status, missing) = answer("0123456789abcdef0123456789abcdef").await;
            assert_eq!(
                status, 404,
                "{method} {path}: another organization's id: {body}"
            );
            assert_eq!(
                missing_status, 404,
                "{method} {path}: an id nobody has: {missing}"
            );
            assert_eq!(
                (&body["error"]["code"], &body["error"]["message"]),
                (&missing["error"]["code"], &missing["error"]["message"]),
                "{method} {path}: the same answer as for a missing id"
            );
            checked += 1;
        }
    }
    assert!(checked >= 20, "{checked} operations");
    // Nothing was changed: the owner still sees its resources as they were.
    for (path, before) in [
        (
            format!("/api/v1/materials/{}", material["id"].as_str().unwrap()),
            &material,
        ),
        (
            format!("/api/v1/alerts/{}", rule["id"].as_str().unwrap()),
            &rule,
        ),
    ] {
        let now: Value = owner
            .get(s.url(&path))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(&now, before, "{path}");
    }
    let user_now: Value = owner
        .get(s.url(&format!("/api/v1/users/{}", user["id"].as_str().unwrap())))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(user_now["active"], true);
}
