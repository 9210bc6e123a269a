//! The REST API over real HTTP, on SQLite and on PostgreSQL: keys and roles, organizations, materials,
//! suppliers and prices, validation, tenant isolation, bulk ingest, and the `/ws/prices` stream.

mod common;

use std::time::Duration;

use common::{client_with, Backend, TestServer};
use futures_util::StreamExt;
use reqwest::{Client, Method};
use serde_json::{json, Value};

/// A request with `client`'s key: status and JSON body.
async fn call(
    s: &TestServer,
    client: &Client,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut request = client.request(method, s.url(path));
    if let Some(body) = body {
        request = request.json(body);
    }
    let r = request.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// A raw body with a content type.
async fn send(
    s: &TestServer,
    client: &Client,
    path: &str,
    kind: &str,
    body: String,
) -> (u16, Value) {
    let r = client
        .post(s.url(path))
        .header("content-type", kind)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

/// The error envelope's code, checking the envelope's shape on the way.
fn code(body: &Value) -> &str {
    assert!(body["status_code"].is_u64(), "envelope: {body}");
    assert!(
        body["timestamp"].is_string() && body["request_id"].is_string(),
        "envelope: {body}"
    );
    body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no code in {body}"))
}

/// A new organization made by the platform owner, and a client holding its first admin key.
async fn organization(s: &TestServer, name: &str) -> (String, Client) {
    let (status, body) = call(
        s,
        &s.client,
        Method::POST,
        "/api/v1/organizations",
        Some(&json!({ "name": name })),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["api_key"]["role"], "admin");
    let id = body["organization"]["id"].as_str().unwrap().to_string();
    (id, client_with(body["api_key"]["secret"].as_str().unwrap()))
}

async fn key(s: &TestServer, admin: &Client, role: &str) -> (String, Client) {
    let (status, body) = call(
        s,
        admin,
        Method::POST,
        "/api/v1/api-keys",
        Some(&json!({ "name": format!("{role} key"), "role": role })),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().unwrap().to_string();
    (id, client_with(body["secret"].as_str().unwrap()))
}

async fn create(s: &TestServer, client: &Client, path: &str, body: Value) -> String {
    let (status, created) = call(s, client, Method::POST, path, Some(&body)).await;
    assert_eq!(status, 201, "POST {path}: {created}");
    created["id"].as_str().unwrap().to_string()
}

fn material(code: &str, category: &str) -> Value {
    json!({ "code": code, "name": format!("Material {code}"), "category": category, "unit": "kg",
            "list_price": 4.0, "specifications": { "grade": "6061" } })
}

fn supplier(code: &str, country: &str) -> Value {
    json!({ "code": code, "name": format!("Supplier {code}"), "country": country, "reliability": 0.9 })
}

fn price(material: &str, day: u32, value: f64) -> Value {
    json!({ "time": format!("2025-01-{day:02}"), "material_id": material, "price": value,
            "currency": "EUR", "quantity": 100.0, "price_type": "quote" })
}

/// The `total` of a list (prices are counted only when asked: `count=true` is added).
async fn total(s: &TestServer, client: &Client, path: &str) -> i64 {
    let path = if path.starts_with("/api/v1/prices") {
        format!(
            "{path}{}count=true",
            if path.contains('?') { '&' } else { '?' }
        )
    } else {
        path.to_string()
    };
    let (status, body) = call(s, client, Method::GET, &path, None).await;
    assert_eq!(status, 200, "GET {path}: {body}");
    body["total"].as_i64().unwrap()
}

async fn keys_roles_and_organizations(backend: Backend) {
    let s = TestServer::api(backend, |_| {}).await;
    let anonymous = Client::new();

    let r = anonymous
        .get(s.url("/api/v1/materials"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let request_id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        (code(&body), body["status_code"].as_u64()),
        ("unauthorized", Some(401))
    );
    assert_eq!(body["request_id"], request_id.as_str());
    let (status, body) = call(
        &s,
        &client_with("mk_0123456789_nope"),
        Method::GET,
        "/api/v1/materials",
        None,
    )
    .await;
    assert_eq!((status, code(&body)), (401, "unauthorized"));
    for open in ["/healthz", "/readyz", "/metrics"] {
        let r = anonymous.get(s.url(open)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{open} needs no key");
    }
    // The V2 endpoints need a key too, and answer in their own shape.
    let (status, body) = call(&s, &anonymous, Method::GET, "/v2", None).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("unauthorized")),
        "{body}"
    );
    assert!(body["error"].is_string());

    let (acme, acme_admin) = organization(&s, "Acme").await;
    let (status, body) = call(&s, &s.client, Method::GET, "/api/v1/organizations", None).await;
    assert_eq!(status, 200);
    let names: Vec<&str> = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["default", "Acme"]);
    let (status, body) = call(&s, &acme_admin, Method::GET, "/api/v1/organizations", None).await;
    assert_eq!(
        (status, code(&body)),
        (403, "forbidden"),
        "an organization's admin is not the owner"
    );
    let (status, _) = call(
        &s,
        &acme_admin,
        Method::POST,
        "/api/v1/organizations",
        Some(&json!({"name": "x"})),
    )
    .await;
    assert_eq!(status, 403);

    let (viewer_id, viewer) = key(&s, &acme_admin, "viewer").await;
    let (_, analyst) = key(&s, &acme_admin, "analyst").await;
    let (status, body) = call(&s, &acme_admin, Method::GET, "/api/v1/api-keys", None).await;
    assert_eq!((status, body["total"].as_u64()), (200, Some(3)), "{body}");
    for k in body["items"].as_array().unwrap() {
        assert_eq!(k["organization_id"], acme.as_str());
        assert!(
            k.get("secret").is_none()
                && k["prefix"].as_str().unwrap().starts_with("mk_live_")
                && k["prefix"].as_str().unwrap().len() == 16,
            "{k}"
        );
    }
    let (status, body) = call(
        &s,
        &acme_admin,
        Method::POST,
        "/api/v1/api-keys",
        Some(&json!({"name": "x", "role": "superuser"})),
    )
    .await;
    assert_eq!((status, code(&body)), (400, "validation_error"));
    assert!(body["error"]["details"]["role"].is_array(), "{body}");

    // Roles, endpoint by endpoint.
    let m = create(
        &s,
        &acme_admin,
        "/api/v1/materials",
        material("M-1", "metal"),
    )
    .await;
    for (client, method, path, body, want) in [
        (
            &viewer,
            Method::GET,
            "/api/v1/materials".to_string(),
            None,
            200,
        ),
        (
            &viewer,
            Method::GET,
            format!("/api/v1/materials/{m}"),
            None,
            200,
        ),
        (
            &viewer,
            Method::POST,
            "/api/v1/materials".into(),
            Some(material("M-2", "x")),
            403,
        ),
        (
            &viewer,
            Method::PATCH,
            format!("/api/v1/materials/{m}"),
            Some(json!({"name": "n"})),
            403,
        ),
        (
            &viewer,
            Method::POST,
            "/api/v1/prices".into(),
            Some(price(&m, 1, 3.0)),
            403,
        ),
        (&viewer, Method::GET, "/api/v1/api-keys".into(), None, 403),
        (
            &analyst,
            Method::POST,
            "/api/v1/materials".into(),
            Some(material("M-2", "x")),
            403,
        ),
        (
            &analyst,
            Method::POST,
            "/api/v1/suppliers".into(),
            Some(supplier("S-1", "DE")),
            403,
        ),
        (
            &analyst,
            Method::POST,
            "/api/v1/prices".into(),
            Some(price(&m, 1, 3.0)),
            201,
        ),
        (
            &analyst,
            Method::POST,
            "/api/v1/api-keys".into(),
            Some(json!({"name": "a", "role": "admin"})),
            403,
        ),
        (
            &acme_admin,
            Method::DELETE,
            format!("/api/v1/materials/{m}"),
            None,
            409,
        ),
    ] {
        let (status, answer) = call(&s, client, method.clone(), &path, body.as_ref()).await;
        assert_eq!(status, want, "{method} {path}: {answer}");
    }
    // Inference needs an analyst; reading the V2 metadata, a viewer.
    let (status, _) = call(&s, &viewer, Method::GET, "/v2", None).await;
    assert_eq!(status, 200);
    let (status, body) = call(
        &s,
        &viewer,
        Method::POST,
        "/v2/models/price/infer",
        Some(&json!({"inputs": []})),
    )
    .await;
    assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")));

    // X-API-Key works as well as a bearer token; a deleted key stops at once.
    let secret = viewer_key_secret(&s, &acme_admin).await;
    let r = anonymous
        .get(s.url("/api/v1/materials"))
        .header("x-api-key", &secret)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (status, _) = call(
        &s,
        &acme_admin,
        Method::DELETE,
        &format!("/api/v1/api-keys/{viewer_id}"),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let (status, _) = call(&s, &viewer, Method::GET, "/api/v1/materials", None).await;
    assert_eq!(status, 401, "a deleted key no longer works");
}

/// A fresh viewer key's secret (for header variants).
async fn viewer_key_secret(s: &TestServer, admin: &Client) -> String {
    let (_, body) = call(
        s,
        admin,
        Method::POST,
        "/api/v1/api-keys",
        Some(&json!({"name": "header", "role": "viewer"})),
    )
    .await;
    body["secret"].as_str().unwrap().to_string()
}

async fn materials_and_suppliers_crud_with_clear_errors(backend: Backend) {
    let s = TestServer::api(backend, |c| {
        c.max_page_size = 3;
        c.max_body_bytes = 4096;
    })
    .await;
    let (_, admin) = organization(&s, "Acme").await;

    let id = create(
        &s,
        &admin,
        "/api/v1/materials",
        material("ALU-1", "aluminium"),
    )
    .await;
    let (status, got) = call(
        &s,
        &admin,
        Method::GET,
        &format!("/api/v1/materials/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        (
            got["code"].as_str(),
            got["status"].as_str(),
            &got["specifications"]
        ),
        (Some("ALU-1"), Some("active"), &json!({"grade": "6061"}))
    );
    let (status, body) = call(
        &s,
        &admin,
        Method::POST,
        "/api/v1/materials",
        Some(&material("ALU-1", "x")),
    )
    .await;
    assert_eq!((status, code(&body)), (409, "conflict"));

    // Bad input: each refused with the field named, nothing written.
    for (body, field) in [
        (
            json!({"code": "A", "name": "n", "category": "c", "unit": "kg", "colour": "red"}),
            "colour",
        ),
        (
            json!({"code": "A", "name": "n", "category": "c", "unit": "kg", "list_price": "cheap"}),
            "list_price",
        ),
        (
            json!({"code": "A", "name": "n", "category": "c", "unit": "kg", "list_price": -3}),
            "list_price",
        ),
        (json!({"code": "A", "name": "n", "category": "c"}), "unit"),
        (
            json!({"code": "A", "name": "n", "category": "c", "unit": "kg", "status": "gone"}),
            "status",
        ),
        (
            json!({"code": "A", "name": "n", "category": "c", "unit": "kg", "specifications": [1]}),
            "specifications",
        ),
    ] {
        let (status, answer) =
            call(&s, &admin, Method::POST, "/api/v1/materials", Some(&body)).await;
        assert_eq!(
            (status, code(&answer)),
            (400, "validation_error"),
            "{body}: {answer}"
        );
        assert!(
            answer["error"]["message"].as_str().unwrap().contains(field)
                || answer["error"]["details"][field].is_array(),
            "{field} named in {answer}"
        );
    }
    let (status, body) = send(
        &s,
        &admin,
        "/api/v1/materials",
        "text/plain",
        "code=A".into(),
    )
    .await;
    assert_eq!((status, code(&body)), (415, "unsupported_media_type"));
    let (status, body) = send(
        &s,
        &admin,
        "/api/v1/materials",
        "application/json",
        "{\"code\": ".into(),
    )
    .await;
    assert_eq!((status, code(&body)), (400, "bad_request"));
    // serde reads a struct from an array by position; a body must be the object the schema says.
    for body in [json!([]), json!(["ALU-2"]), json!("x")] {
        let (status, answer) = call(
            &s,
            &admin,
            Method::PATCH,
            &format!("/api/v1/materials/{id}"),
            Some(&body),
        )
        .await;
        assert_eq!((status, code(&answer)), (400, "validation_error"), "{body}");
        assert!(answer["error"]["details"]["body"].is_array(), "{answer}");
    }
    let mut big = material("BIG", "x");
    big["specifications"] = json!({ "notes": "x".repeat(5000) });
    let (status, body) = call(&s, &admin, Method::POST, "/api/v1/materials", Some(&big)).await;
    assert_eq!((status, code(&body)), (413, "body_too_large"));
    assert!(
        body["error"]["message"].as_str().unwrap().contains("4096"),
        "{body}"
    );
    assert_eq!(
        total(&s, &admin, "/api/v1/materials").await,
        1,
        "nothing half-written"
    );

    for (code_, category) in [
        ("CU-1", "copper"),
        ("ALU-2", "aluminium"),
        ("ALU-3", "aluminium"),
        ("STL-1", "steel"),
    ] {
        create(&s, &admin, "/api/v1/materials", material(code_, category)).await;
    }
    let (_, page) = call(
        &s,
        &admin,
        Method::GET,
        "/api/v1/materials?category=aluminium&sort=-code&limit=2&offset=1",
        None,
    )
    .await;
    let codes: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["code"].as_str().unwrap())
        .collect();
    assert_eq!(
        (page["total"].as_i64(), codes),
        (Some(3), vec!["ALU-2", "ALU-1"])
    );
    assert_eq!(total(&s, &admin, "/api/v1/materials?q=alu").await, 3);
    for bad in ["limit=0", "limit=4", "limit=x", "sort=price", "colour=red"] {
        let (status, body) = call(
            &s,
            &admin,
            Method::GET,
            &format!("/api/v1/materials?{bad}"),
            None,
        )
        .await;
        assert_eq!(
            (status, code(&body)),
            (400, "validation_error"),
            "{bad}: {body}"
        );
    }

    let path = format!("/api/v1/materials/{id}");
    let (status, patched) = call(
        &s,
        &admin,
        Method::PATCH,
        &path,
        Some(&json!({"name": "Aluminium 6061", "list_price": null})),
    )
    .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(
        (
            patched["name"].as_str(),
            &patched["list_price"],
            patched["category"].as_str()
        ),
        (Some("Aluminium 6061"), &Value::Null, Some("aluminium"))
    );
    assert_ne!(patched["updated_at"], got["updated_at"]);
    let (status, body) = call(
        &s,
        &admin,
        Method::PATCH,
        &path,
        Some(&json!({"code": "CU-1"})),
    )
    .await;
    assert_eq!((status, code(&body)), (409, "conflict"));
    let (status, _) = call(&s, &admin, Method::DELETE, &path, None).await;
    assert_eq!(status, 204);
    let (status, body) = call(&s, &admin, Method::GET, &path, None).await;
    assert_eq!((status, code(&body)), (404, "not_found"));

    let sid = create(&s, &admin, "/api/v1/suppliers", supplier("S-1", "DE")).await;
    create(&s, &admin, "/api/v1/suppliers", supplier("S-2", "FR")).await;
    for (body, field) in [
        (
            json!({"code": "S", "name": "n", "country": "DE", "reliability": 1.5}),
            "reliability",
        ),
        (
            json!({"code": "S", "name": "n", "country": "germany", "reliability": 0.5}),
            "country",
        ),
    ] {
        let (status, answer) =
            call(&s, &admin, Method::POST, "/api/v1/suppliers", Some(&body)).await;
        assert_eq!((status, code(&answer)), (400, "validation_error"));
        assert!(answer["error"]["details"][field].is_array(), "{answer}");
    }
    assert_eq!(total(&s, &admin, "/api/v1/suppliers?country=FR").await, 1);
    let (status, patched) = call(
        &s,
        &admin,
        Method::PATCH,
        &format!("/api/v1/suppliers/{sid}"),
        Some(&json!({"reliability": 0.5, "status": "inactive"})),
    )
    .await;
    assert_eq!(
        (
            status,
            patched["reliability"].as_f64(),
            patched["status"].as_str()
        ),
        (200, Some(0.5), Some("inactive"))
    );
    assert_eq!(
        total(&s, &admin, "/api/v1/suppliers?status=active").await,
        1
    );
    let (status, _) = call(
        &s,
        &admin,
        Method::DELETE,
        &format!("/api/v1/suppliers/{sid}"),
        None,
    )
    .await;
    assert_eq!(status, 204);
}

async fn organizations_never_see_each_other(backend: Backend) {
    let s = TestServer::api(backend, |_| {}).await;
    let (_, a) = organization(&s, "A").await;
    let (_, b) = organization(&s, "B").await;
    let m = create(&s, &a, "/api/v1/materials", material("M-1", "metal")).await;
    let sup = create(&s, &a, "/api/v1/suppliers", supplier("S-1", "DE")).await;
    let mut observation = price(&m, 1, 3.5);
    observation["supplier_id"] = json!(sup);
    let p = create(&s, &a, "/api/v1/prices", observation).await;
    let (a_key, _) = key(&s, &a, "viewer").await;

    // Every route, with B's key, on A's rows: not found, never forbidden, nothing revealed.
    for (method, path, body) in [
        (Method::GET, format!("/api/v1/materials/{m}"), None),
        (
            Method::PATCH,
            format!("/api/v1/materials/{m}"),
            Some(json!({"name": "mine"})),
        ),
        (Method::DELETE, format!("/api/v1/materials/{m}"), None),
        (Method::GET, format!("/api/v1/suppliers/{sup}"), None),
        (
            Method::PATCH,
            format!("/api/v1/suppliers/{sup}"),
            Some(json!({"name": "mine"})),
        ),
        (Method::DELETE, format!("/api/v1/suppliers/{sup}"), None),
        (Method::GET, format!("/api/v1/prices/{p}"), None),
        (
            Method::PATCH,
            format!("/api/v1/prices/{p}"),
            Some(json!({"price": 1.0})),
        ),
        (Method::DELETE, format!("/api/v1/prices/{p}"), None),
        (Method::DELETE, format!("/api/v1/api-keys/{a_key}"), None),
    ] {
        let (status, answer) = call(&s, &b, method.clone(), &path, body.as_ref()).await;
        assert_eq!(
            (status, code(&answer)),
            (404, "not_found"),
            "{method} {path}"
        );
        let text = answer.to_string();
        assert!(
            ![&m, &sup, &p, &a_key]
                .iter()
                .any(|id| text.contains(id.as_str())),
            "{answer}"
        );
    }
    for list in [
        "/api/v1/materials",
        "/api/v1/suppliers",
        "/api/v1/prices",
        &format!("/api/v1/prices?material_id={m}"),
    ] {
        assert_eq!(total(&s, &b, list).await, 0, "{list}");
        assert_eq!(total(&s, &a, list).await, 1, "{list}");
    }
    let (_, keys) = call(&s, &b, Method::GET, "/api/v1/api-keys", None).await;
    assert_eq!(keys["total"], 1, "only B's own admin key: {keys}");
    // B cannot write observations against A's material or supplier.
    let (status, body) = call(
        &s,
        &b,
        Method::POST,
        "/api/v1/prices",
        Some(&price(&m, 2, 3.0)),
    )
    .await;
    assert_eq!((status, code(&body)), (400, "validation_error"));
    assert!(body["error"]["details"]["material_id"].is_array(), "{body}");
    let (status, _) = call(&s, &a, Method::GET, &format!("/api/v1/materials/{m}"), None).await;
    assert_eq!(status, 200, "A's rows are untouched");
}

async fn prices_bulk_all_or_nothing_and_range_queries(backend: Backend) {
    let s = TestServer::api(backend, |c| {
        c.max_bulk_rows = 50;
        c.max_bulk_body_bytes = 16 * 1024;
    })
    .await;
    let (_, admin) = organization(&s, "Acme").await;
    let m = create(&s, &admin, "/api/v1/materials", material("M-1", "metal")).await;
    let other = create(&s, &admin, "/api/v1/materials", material("M-2", "metal")).await;

    let rows: Vec<Value> = (1..=20)
        .map(|d| price(&m, d, 3.0 + d as f64 / 10.0))
        .collect();
    let (status, body) = call(
        &s,
        &admin,
        Method::POST,
        "/api/v1/prices/bulk",
        Some(&Value::Array(rows)),
    )
    .await;
    assert_eq!(
        (status, body["inserted"].as_u64()),
        (201, Some(20)),
        "{body}"
    );

    let mut csv = String::from("time,material_id,price,currency,price_type,quantity,source\n");
    for d in 1..=10 {
        let value = if d == 3 {
            "-1".to_string()
        } else {
            format!("{}", 5.0 + d as f64)
        };
        csv.push_str(&format!(
            "2025-02-{d:02},{other},{value},EUR,contract,,erp\n"
        ));
    }
    csv.push_str(&format!("2025-02-11,{other},5.5,EUR,guess,,erp\n"));
    let (status, body) = send(&s, &admin, "/api/v1/prices/bulk", "text/csv", csv.clone()).await;
    assert_eq!((status, code(&body)), (422, "invalid_rows"), "{body}");
    let rows: Vec<(u64, Vec<String>)> = body["error"]["details"]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["row"].as_u64().unwrap(),
                r["errors"].as_object().unwrap().keys().cloned().collect(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            (3, vec!["price".to_string()]),
            (11, vec!["price_type".to_string()])
        ]
    );
    assert_eq!(
        total(&s, &admin, &format!("/api/v1/prices?material_id={other}")).await,
        0,
        "nothing written"
    );
    let fixed = csv.replace(",-1,", ",8,").replace("guess", "market");
    let (status, body) = send(&s, &admin, "/api/v1/prices/bulk", "text/csv", fixed).await;
    assert_eq!(
        (status, body["inserted"].as_u64()),
        (201, Some(11)),
        "{body}"
    );

    for (kind, body, want, want_code) in [
        (
            "text/csv",
            "time,material,price\n".to_string(),
            400,
            "validation_error",
        ),
        (
            "application/xml",
            "<prices/>".to_string(),
            415,
            "unsupported_media_type",
        ),
        (
            "application/json",
            serde_json::to_string(&vec![price(&m, 1, 1.0); 51]).unwrap(),
            413,
            "too_many_rows",
        ),
        ("text/csv", "x".repeat(17 * 1024), 413, "body_too_large"),
        ("application/json", "[]".to_string(), 400, "bad_request"),
    ] {
        let (status, answer) = send(&s, &admin, "/api/v1/prices/bulk", kind, body).await;
        assert_eq!(
            (status, code(&answer)),
            (want, want_code),
            "{kind}: {answer}"
        );
    }
    assert_eq!(total(&s, &admin, "/api/v1/prices").await, 31);

    let (_, page) = call(
        &s,
        &admin,
        Method::GET,
        &format!("/api/v1/prices?material_id={m}&from=2025-01-05&to=2025-01-10T00:00:00Z&limit=2&count=true"),
        None,
    )
    .await;
    let times: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["time"].as_str().unwrap())
        .collect();
    assert_eq!(
        (&page["total"], &page["has_more"]),
        (&json!(5), &json!(true))
    );
    let (_, uncounted) = call(&s, &admin, Method::GET, "/api/v1/prices?limit=30", None).await;
    assert_eq!(
        (&uncounted["total"], &uncounted["has_more"]),
        (&Value::Null, &json!(true)),
        "prices are counted only when asked"
    );
    assert_eq!(
        times,
        ["2025-01-09T00:00:00Z", "2025-01-08T00:00:00Z"],
        "newest first"
    );
    let (_, page) = call(
        &s,
        &admin,
        Method::GET,
        "/api/v1/prices?price_type=contract&sort=price&limit=1&count=true",
        None,
    )
    .await;
    assert_eq!(
        (page["total"].as_i64(), page["items"][0]["price"].as_f64()),
        (Some(10), Some(6.0)),
        "row 11 became a market price"
    );
    for bad in ["from=yesterday", "price_type=rumour", "sort=-supplier"] {
        let (status, body) = call(
            &s,
            &admin,
            Method::GET,
            &format!("/api/v1/prices?{bad}"),
            None,
        )
        .await;
        assert_eq!(
            (status, code(&body)),
            (400, "validation_error"),
            "{bad}: {body}"
        );
    }
    let (status, body) = call(
        &s,
        &admin,
        Method::POST,
        "/api/v1/prices",
        Some(&price(&m, 1, -2.0)),
    )
    .await;
    assert_eq!((status, code(&body)), (400, "validation_error"));
    assert!(body["error"]["details"]["price"].is_array());
}

async fn price_stream_carries_its_organization_only(backend: Backend) {
    let s = TestServer::api(backend, |_| {}).await;
    let (_, a) = organization(&s, "A").await;
    let (_, b) = organization(&s, "B").await;
    let ma = create(&s, &a, "/api/v1/materials", material("M-1", "metal")).await;
    let ma2 = create(&s, &a, "/api/v1/materials", material("M-2", "metal")).await;
    let mb = create(&s, &b, "/api/v1/materials", material("M-1", "metal")).await;
    let a_viewer = viewer_key_secret(&s, &a).await;
    let ws = s.base.replace("http://", "ws://");

    let refused = tokio_tungstenite::connect_async(format!("{ws}/ws/prices")).await;
    assert!(refused.is_err(), "no key, no stream");
    let (mut all_of_a, _) =
        tokio_tungstenite::connect_async(format!("{ws}/ws/prices?api_key={a_viewer}"))
            .await
            .unwrap();
    let (mut one_material, _) = tokio_tungstenite::connect_async(format!(
        "{ws}/ws/prices?api_key={a_viewer}&material_id={ma2}"
    ))
    .await
    .unwrap();

    create(&s, &b, "/api/v1/prices", price(&mb, 1, 9.0)).await;
    let (status, _) = call(
        &s,
        &a,
        Method::POST,
        "/api/v1/prices/bulk",
        Some(&json!([
            price(&ma, 1, 1.0),
            price(&ma2, 2, 2.0),
            price(&ma, 3, 3.0)
        ])),
    )
    .await;
    assert_eq!(status, 201);
    create(&s, &b, "/api/v1/prices", price(&mb, 4, 9.0)).await;

    let mut seen = Vec::new();
    while seen.len() < 3 {
        let message = tokio::time::timeout(Duration::from_secs(1), all_of_a.next())
            .await
            .expect("each observation arrives within 1 s")
            .unwrap()
            .unwrap();
        let event: Value = serde_json::from_str(message.to_text().unwrap()).unwrap();
        assert_eq!(event["type"], "price");
        seen.push(event["price"]["price"].as_f64().unwrap());
    }
    assert_eq!(seen, [1.0, 2.0, 3.0]);
    let extra = tokio::time::timeout(Duration::from_millis(300), all_of_a.next()).await;
    assert!(extra.is_err(), "nothing of B's arrives: {extra:?}");
    let message = tokio::time::timeout(Duration::from_secs(1), one_material.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let event: Value = serde_json::from_str(message.to_text().unwrap()).unwrap();
    assert_eq!(event["price"]["material_id"], ma2.as_str());
    assert!(
        tokio::time::timeout(Duration::from_millis(200), one_material.next())
            .await
            .is_err()
    );
    all_of_a.close(None).await.unwrap();
}

async fn a_100k_row_csv_lands_whole(backend: Backend) {
    let s = TestServer::api(backend, |_| {}).await;
    let (_, admin) = organization(&s, "Acme").await;
    let mut materials = Vec::new();
    for i in 0..10 {
        materials.push(
            create(
                &s,
                &admin,
                "/api/v1/materials",
                material(&format!("M-{i}"), "metal"),
            )
            .await,
        );
    }
    let sup = create(&s, &admin, "/api/v1/suppliers", supplier("S-1", "DE")).await;
    let csv = bulk_csv(&materials, &sup, 100_000);
    let (status, body) = send(&s, &admin, "/api/v1/prices/bulk", "text/csv", csv).await;
    assert_eq!(
        (status, body["inserted"].as_u64()),
        (201, Some(100_000)),
        "{body}"
    );
    assert_eq!(total(&s, &admin, "/api/v1/prices?limit=1").await, 100_000);
    assert_eq!(
        total(
            &s,
            &admin,
            &format!("/api/v1/prices?limit=1&material_id={}", materials[3])
        )
        .await,
        10_000
    );
}

/// `rows` observations spread over `materials`, one a minute from 2024-01-01.
fn bulk_csv(materials: &[String], supplier: &str, rows: usize) -> String {
    let mut csv =
        String::from("time,material_id,supplier_id,price,currency,quantity,price_type,source\n");
    let start = chrono::DateTime::parse_from_rfc3339("2024-01-01T00:00:00Z").unwrap();
    for i in 0..rows {
        let time = start + chrono::Duration::minutes(i as i64);
        csv.push_str(&format!(
            "{},{},{supplier},{:.4},EUR,{},quote,test\n",
            time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            materials[i % materials.len()],
            3.0 + (i % 97) as f64 / 100.0,
            100 + i % 900,
        ));
    }
    csv
}

async fn admin_changes_are_audited_per_organization(backend: Backend) {
    let s = TestServer::api(backend, |_| {}).await;
    let (_, admin) = organization(&s, "Acme").await;
    let (_, other) = organization(&s, "Other").await;
    let (_, keys) = call(&s, &admin, Method::GET, "/api/v1/api-keys", None).await;
    let admin_key_id = keys["items"][0]["id"].as_str().unwrap().to_string();

    let m = create(&s, &admin, "/api/v1/materials", material("M-1", "metal")).await;
    let path = format!("/api/v1/materials/{m}");
    call(
        &s,
        &admin,
        Method::PATCH,
        &path,
        Some(&json!({"name": "Renamed"})),
    )
    .await;
    let (viewer_id, viewer) = key(&s, &admin, "viewer").await;
    call(
        &s,
        &admin,
        Method::DELETE,
        &format!("/api/v1/api-keys/{viewer_id}"),
        None,
    )
    .await;
    let (status, _) = call(&s, &admin, Method::DELETE, &path, None).await;
    assert_eq!(status, 204);

    let (status, log) = call(&s, &admin, Method::GET, "/api/v1/audit", None).await;
    assert_eq!(status, 200, "{log}");
    let events = log["items"].as_array().unwrap();
    let actions: Vec<&str> = events
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "material.delete",
            "api_key.delete",
            "api_key.create",
            "material.update",
            "material.create"
        ],
        "newest first"
    );
    assert!(
        events
            .iter()
            .all(|e| e["actor_key_id"] == admin_key_id.as_str()),
        "{log}"
    );
    let update = &events[3];
    assert_eq!(
        (update["target_type"].as_str(), update["target_id"].as_str()),
        (Some("material"), Some(m.as_str()))
    );
    assert_eq!(
        (
            update["before"]["name"].as_str(),
            update["after"]["name"].as_str()
        ),
        (Some("Material M-1"), Some("Renamed"))
    );
    assert!(events[0]["after"].is_null() && events[0]["before"]["code"] == "M-1");
    assert!(
        !log.to_string().contains("\"secret\""),
        "no key secret in the log"
    );
    let (_, filtered) = call(
        &s,
        &admin,
        Method::GET,
        "/api/v1/audit?action=material.update",
        None,
    )
    .await;
    assert_eq!(filtered["total"], 1);
    let (_, theirs) = call(
        &s,
        &other,
        Method::GET,
        "/api/v1/audit?action=material.create",
        None,
    )
    .await;
    assert_eq!(theirs["total"], 0, "another organization sees none of it");
    let (status, _) = call(&s, &viewer, Method::GET, "/api/v1/audit", None).await;
    assert_eq!(status, 401, "the viewer key was deleted");
    let (_, analyst) = key(&s, &admin, "analyst").await;
    let (status, body) = call(&s, &analyst, Method::GET, "/api/v1/audit", None).await;
    assert_eq!((status, code(&body)), (403, "forbidden"));
}

/// Keys are typed and checksummed, may be narrowed to scopes, end (by default after 90 days, never past
/// the limit), and say when they were last used.
async fn keys_have_scopes_an_end_and_a_last_use(backend: Backend) {
    let clock = std::sync::Arc::new(mercator_services::clock::Clock::default());
    let shared = clock.clone();
    let s = TestServer::api(backend, move |c| c.clock = shared).await;
    let (_, admin) = organization(&s, "Scoped").await;
    let make = |body: Value| {
        let (s, admin) = (&s, &admin);
        async move { call(s, admin, Method::POST, "/api/v1/api-keys", Some(&body)).await }
    };

    // Made without an end: 90 days; typed and checksummed; a typo is refused.
    let (status, plain) = make(json!({"name": "plain", "role": "analyst"})).await;
    assert_eq!(status, 201, "{plain}");
    let secret = plain["secret"].as_str().unwrap();
    assert!(
        secret.starts_with("mk_live_") && secret.len() == 44,
        "{secret}"
    );
    assert!(secret.starts_with(plain["prefix"].as_str().unwrap()));
    let end = chrono::DateTime::parse_from_rfc3339(plain["expires_at"].as_str().unwrap()).unwrap();
    let days = (end.with_timezone(&chrono::Utc) - clock.now()).num_hours() as f64 / 24.0;
    assert!((89.9..=90.0).contains(&days), "{days} days");
    assert!(
        plain["scopes"].is_null() && plain["last_used_at"].is_null(),
        "{plain}"
    );
    let mut typo = secret.to_string();
    let last = typo.pop().unwrap();
    typo.push(if last == 'a' { 'b' } else { 'a' });
    let (status, body) = call(
        &s,
        &client_with(&typo),
        Method::GET,
        "/api/v1/materials",
        None,
    )
    .await;
    assert_eq!((status, code(&body)), (401, "unauthorized"));

    // Ends out of bounds are refused naming the field.
    for end in [
        (clock.now() + chrono::Duration::days(367)).to_rfc3339(),
        (clock.now() - chrono::Duration::seconds(5)).to_rfc3339(),
    ] {
        let (status, body) = make(json!({"name": "x", "role": "viewer", "expires_at": end})).await;
        assert_eq!((status, code(&body)), (400, "validation_error"), "{body}");
        assert!(body["error"]["details"]["expires_at"].is_array(), "{body}");
    }
    let (status, body) = make(json!({"name": "x", "role": "viewer", "scopes": []})).await;
    assert_eq!((status, code(&body)), (400, "validation_error"), "{body}");
    let (status, body) = make(json!({"name": "x", "role": "viewer", "scopes": ["all"]})).await;
    assert_eq!(status, 400, "{body}");

    // A read-only admin key reads, but neither writes, predicts nor manages keys.
    let (status, reader) =
        make(json!({"name": "reader", "role": "admin", "scopes": ["read"]})).await;
    assert_eq!(status, 201, "{reader}");
    assert_eq!(reader["scopes"], json!(["read"]));
    let reader = client_with(reader["secret"].as_str().unwrap());
    let (status, _) = call(&s, &reader, Method::GET, "/api/v1/materials", None).await;
    assert_eq!(status, 200);
    for (method, path, body) in [
        (
            Method::POST,
            "/api/v1/materials",
            Some(material("M-1", "steel")),
        ),
        (Method::GET, "/api/v1/predictions/batch", None),
        (Method::GET, "/api/v1/api-keys", None),
    ] {
        let (status, answer) = call(&s, &reader, method, path, body.as_ref()).await;
        assert_eq!(
            (status, code(&answer)),
            (403, "insufficient_scope"),
            "{path}: {answer}"
        );
    }
    // The role still bounds a key: predict and write scopes on a viewer give no write.
    let (_, viewer) =
        make(json!({"name": "v", "role": "viewer", "scopes": ["write", "predict"]})).await;
    let viewer = client_with(viewer["secret"].as_str().unwrap());
    let (status, body) = call(
        &s,
        &viewer,
        Method::POST,
        "/api/v1/materials",
        Some(&material("M-2", "steel")),
    )
    .await;
    assert_eq!((status, code(&body)), (403, "forbidden"));

    // An end an hour away works until the clock passes it, from the cache too.
    let (status, brief) = make(json!({"name": "brief", "role": "analyst",
        "expires_at": (clock.now() + chrono::Duration::hours(1)).to_rfc3339()}))
    .await;
    assert_eq!(status, 201, "{brief}");
    let brief_id = brief["id"].as_str().unwrap().to_string();
    let brief_secret = brief["secret"].as_str().unwrap().to_string();
    let brief = client_with(&brief_secret);
    let (status, _) = call(&s, &brief, Method::GET, "/api/v1/materials", None).await;
    assert_eq!(status, 200);

    // Use is recorded: listing writes what is pending first.
    let (_, keys) = call(&s, &admin, Method::GET, "/api/v1/api-keys", None).await;
    let used = keys["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == brief_id.as_str())
        .unwrap()
        .clone();
    assert!(used["last_used_at"].is_string(), "{used}");

    // A socket opened with it closes with 1008 once it ends.
    let url = format!(
        "{}/ws/prices?api_key={brief_secret}",
        s.base.replace("http://", "ws://")
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    clock.advance(std::time::Duration::from_secs(3601));
    let close = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match socket.next().await {
                Some(Ok(tokio_tungstenite::tungstenite::Message::Close(frame))) => return frame,
                None | Some(Err(_)) => return None,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await
    .expect("the socket closes within 5 s");
    assert_eq!(u16::from(close.expect("a close frame").code), 1008);
    let (status, body) = call(&s, &brief, Method::GET, "/api/v1/materials", None).await;
    assert_eq!((status, code(&body)), (401, "key_expired"), "{body}");
    let (status, _) = call(&s, &admin, Method::GET, "/api/v1/materials", None).await;
    assert_eq!(status, 200, "the organization's first key has no end");
}

macro_rules! on_both {
    ($($story:ident),*) => {
        mod on_sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $story() {
                super::$story(super::Backend::Sqlite).await;
            })*
        }
        mod on_postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $story() {
                super::$story(super::Backend::Postgres).await;
            })*
        }
    };
}

on_both!(
    keys_roles_and_organizations,
    keys_have_scopes_an_end_and_a_last_use,
    materials_and_suppliers_crud_with_clear_errors,
    organizations_never_see_each_other,
    prices_bulk_all_or_nothing_and_range_queries,
    price_stream_carries_its_organization_only,
    a_100k_row_csv_lands_whole,
    admin_changes_are_audited_per_organization
);

/// The OpenAPI document is generated from the same registrations as the router: every path it lists is
/// served (no 405, no unknown route), every route is in it with its methods, and each operation declares
/// the key it needs and the error envelope.
#[tokio::test]
async fn the_openapi_document_covers_every_endpoint() {
    let s = TestServer::api(Backend::Sqlite, |_| {}).await;
    let anonymous = Client::new();
    let doc: Value = anonymous
        .get(s.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    // JSON object keys are strings: a map's key schema of another type rejects every non-empty map (a
    // BTreeMap<usize, _> made one, and schemathesis found it on a model's batch sizes).
    fn key_schemas(v: &Value, at: &str, bad: &mut Vec<String>) {
        match v {
            Value::Object(o) => {
                if let Some(keys) = o.get("propertyNames") {
                    if keys.get("type").is_some_and(|t| t != "string") {
                        bad.push(at.to_string());
                    }
                }
                for (k, v) in o {
                    key_schemas(v, &format!("{at}/{k}"), bad);
                }
            }
            Value::Array(a) => a.iter().for_each(|v| key_schemas(v, at, bad)),
            _ => {}
        }
    }
    let mut bad = Vec::new();
    key_schemas(&doc, "", &mut bad);
    assert!(bad.is_empty(), "map keys that are not strings: {bad:?}");
    let paths = doc["paths"].as_object().unwrap();
    let mut operations = Vec::new();
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            operations.push(format!("{} {path}", method.to_uppercase()));
            assert!(
                op["security"].is_array(),
                "{method} {path} declares its key"
            );
            let responses = op["responses"].as_object().unwrap();
            assert!(
                responses.contains_key("4XX"),
                "{method} {path} documents its errors"
            );
            let concrete = path
                .replace("{id}", "0")
                .replace("{model}", "price")
                .replace("{name}", "price")
                .replace("{version}", "1");
            let method: Method = method.to_uppercase().parse().unwrap();
            let r = s
                .client
                .request(method.clone(), s.url(&concrete))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            let code = body["error"]["code"].as_str().or(body["code"].as_str());
            assert!(
                status != 405 && code != Some("route_not_found"),
                "{method} {path} is documented but not served: {status} {body}"
            );
        }
    }
    operations.sort();
    let mut expected: Vec<String> = [
        "GET /api/v1/organizations",
        "POST /api/v1/organizations",
        "GET /api/v1/api-keys",
        "POST /api/v1/api-keys",
        "DELETE /api/v1/api-keys/{id}",
        "GET /api/v1/users",
        "POST /api/v1/users",
        "GET /api/v1/users/me",
        "GET /api/v1/users/{id}",
        "PATCH /api/v1/users/{id}",
        "DELETE /api/v1/users/{id}",
        "POST /api/v1/auth/login",
        "POST /api/v1/auth/refresh",
        "POST /api/v1/auth/logout",
        "GET /.well-known/jwks.json",
        "GET /api/v1/materials",
        "POST /api/v1/materials",
        "GET /api/v1/materials/{id}",
        "PATCH /api/v1/materials/{id}",
        "DELETE /api/v1/materials/{id}",
        "GET /api/v1/suppliers",
        "POST /api/v1/suppliers",
        "GET /api/v1/suppliers/{id}",
        "PATCH /api/v1/suppliers/{id}",
        "DELETE /api/v1/suppliers/{id}",
        "GET /api/v1/prices",
        "POST /api/v1/prices",
        "POST /api/v1/prices/bulk",
        "GET /api/v1/prices/{id}",
        "PATCH /api/v1/prices/{id}",
        "DELETE /api/v1/prices/{id}",
        "POST /api/v1/predictions/price",
        "POST /api/v1/predictions/batch",
        "GET /api/v1/predictions/batch",
        "GET /api/v1/predictions/batch/{id}",
        "DELETE /api/v1/predictions/batch/{id}",
        "GET /api/v1/predictions/batch/{id}/results",
        "GET /api/v1/predictions/batch/{id}/errors",
        "POST /api/v1/predictions/batch/{id}/cancel",
        "GET /ws/predictions/{batch_id}",
        "POST /api/v1/analytics/trends",
        "POST /api/v1/analytics/forecast",
        "POST /api/v1/analytics/demand-forecast",
        "POST /api/v1/analytics/anomalies",
        "GET /api/v1/alerts",
        "POST /api/v1/alerts",
        "GET /api/v1/alerts/{id}",
        "PATCH /api/v1/alerts/{id}",
        "DELETE /api/v1/alerts/{id}",
        "GET /api/v1/alerts/events",
        "GET /api/v1/alerts/events/{id}",
        "GET /api/v1/alerts/events/{id}/deliveries",
        "POST /api/v1/alerts/events/{id}/acknowledge",
        "POST /api/v1/alerts/events/{id}/resolve",
        "GET /ws/prices",
        "GET /api/v1/audit",
        "GET /ws/notifications",
        "GET /api/v1/rfqs",
        "POST /api/v1/rfqs",
        "GET /api/v1/rfqs/{id}",
        "PATCH /api/v1/rfqs/{id}",
        "DELETE /api/v1/rfqs/{id}",
        "POST /api/v1/rfqs/{id}/open",
        "POST /api/v1/rfqs/{id}/close",
        "POST /api/v1/rfqs/{id}/reopen",
        "POST /api/v1/rfqs/{id}/cancel",
        "POST /api/v1/rfqs/{id}/award",
        "GET /api/v1/rfqs/{id}/quotes",
        "POST /api/v1/rfqs/{id}/quotes",
        "GET /api/v1/rfqs/{id}/quotes/{quote_id}",
        "GET /api/v1/rfqs/{id}/comparison",
        "GET /api/v1/benchmarks/materials/{id}",
        "POST /api/v1/inventory/policy",
        "GET /api/v1/orders",
        "POST /api/v1/orders",
        "GET /api/v1/orders/{id}",
        "POST /api/v1/orders/{id}/cancel",
        "GET /api/v1/orders/{id}/deliveries",
        "POST /api/v1/orders/{id}/deliveries",
        "POST /api/v1/orders/bulk",
        "POST /api/v1/deliveries/bulk",
        "POST /api/v1/rfqs/{id}/orders",
        "GET /api/v1/suppliers/{id}/scorecard",
        "GET /api/v1/suppliers/{id}/risk",
        "GET /api/v1/models",
        "GET /api/v1/models/{name}",
        "GET /api/v1/models/{name}/monitoring",
        "POST /api/v1/models/{name}/versions/{version}/activate",
        "POST /api/v1/models/{name}/versions/{version}/load",
        "POST /api/v1/models/{name}/versions/{version}/unload",
        "DELETE /api/v1/models/{name}/versions/{version}",
        "POST /api/v1/models/{name}/versions",
        "PUT /api/v1/models/{name}/traffic",
        "GET /api/v1/models/{name}/versions/{version}",
        "GET /api/v1/models/{name}/versions/{version}/monitoring",
        "POST /api/v1/models/{name}/rollback",
        "GET /healthz",
        "GET /readyz",
        "GET /metrics",
        "GET /v2",
        "GET /v2/health/live",
        "GET /v2/health/ready",
        "GET /v2/models/stats",
        "GET /v2/models/{model}",
        "GET /v2/models/{model}/versions/{version}",
        "GET /v2/models/{model}/ready",
        "GET /v2/models/{model}/versions/{version}/ready",
        "GET /v2/models/{model}/config",
        "GET /v2/models/{model}/versions/{version}/config",
        "GET /v2/models/{model}/stats",
        "GET /v2/models/{model}/versions/{version}/stats",
        "POST /v2/models/{model}/infer",
        "POST /v2/models/{model}/versions/{version}/infer",
    ]
    .map(String::from)
    .to_vec();
    expected.sort();
    assert_eq!(operations, expected);
    for schema in ["Material", "NewPrice", "Price", "ErrorEnvelope", "Role"] {
        assert!(
            doc["components"]["schemas"][schema].is_object(),
            "schema {schema}"
        );
    }
    // Every templated path declares its parameters in the path, everything else is a query parameter,
    // and the WebSocket routes declare their handshake headers.
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let params = op["parameters"].as_array().cloned().unwrap_or_default();
            let declared = |name: &str, place: &str| {
                params
                    .iter()
                    .any(|p| p["name"] == name && p["in"] == place && p["required"] == true)
            };
            for segment in path.split('/').filter(|s| s.starts_with('{')) {
                let name = segment.trim_matches(|c| c == '{' || c == '}');
                assert!(declared(name, "path"), "{method} {path}: {name}");
            }
            for p in &params {
                if p["in"] == "path" {
                    let name = p["name"].as_str().unwrap();
                    assert!(
                        path.contains(&format!("{{{name}}}")),
                        "{method} {path}: {p}"
                    );
                }
            }
            if path.starts_with("/ws/") {
                for header in [
                    "Connection",
                    "Upgrade",
                    "Sec-WebSocket-Key",
                    "Sec-WebSocket-Version",
                ] {
                    assert!(declared(header, "header"), "{path}: {header}");
                }
            }
        }
    }
}

/// `/docs` works offline: every file the page names (`src`, `href`) is on this server and loads from it,
/// the start script reads this server's document, and nothing names another host.
#[tokio::test]
async fn the_api_reference_loads_every_file_from_the_server() {
    let s = TestServer::api(Backend::Sqlite, |_| {}).await;
    let anonymous = reqwest::Client::new();
    let page = anonymous.get(s.url("/docs")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["cache-control"], "no-cache");
    let page = page.text().await.unwrap();
    let named: Vec<String> = page
        .split(['"', '\''])
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0].ends_with("src=") || w[0].ends_with("href="))
        .map(|w| w[1].to_string())
        .collect();
    assert!(named.len() >= 4, "{named:?} in {page}");
    for path in &named {
        assert!(path.starts_with('/'), "{path} is not on this server");
        let r = anonymous.get(s.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let kind = r.headers()["content-type"].to_str().unwrap().to_string();
        let cache = r.headers()["cache-control"].to_str().unwrap().to_string();
        let body = r.bytes().await.unwrap();
        match path.rsplit('.').next().unwrap() {
            "js" => {
                assert!(kind.starts_with("text/javascript"), "{path}: {kind}");
                let text = String::from_utf8(body.to_vec()).unwrap();
                if path.contains("/assets/") {
                    assert!(text.contains("SwaggerUIBundle"), "{path}");
                    assert!(body.len() > 1_000_000, "{path}: {} bytes", body.len());
                } else {
                    assert!(text.contains("\"/openapi.json\""), "{text}");
                    assert!(text.contains("validatorUrl: null"), "{text}");
                }
            }
            "css" => assert!(
                kind.starts_with("text/css") && body.len() > 100_000,
                "{path}"
            ),
            "png" => assert_eq!(&body[1..4], b"PNG", "{path}"),
            other => panic!("{path}: an unexpected kind of file ({other})"),
        }
        if path.contains("/assets/") {
            assert_eq!(cache, "public, max-age=31536000, immutable", "{path}");
        } else {
            assert_eq!(cache, "no-cache", "{path}");
        }
    }
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "{page}"
    );
    let document = anonymous.get(s.url("/openapi.json")).send().await.unwrap();
    assert_eq!(document.status(), 200);
}

/// Every answer carries the security headers (errors too); CORS answers only the listed origins, and
/// lets their pages read a refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_carry_security_headers_and_cors_only_for_listed_origins() {
    let allowed = "https://buyers.example.com";
    let s = TestServer::api(Backend::Sqlite, |c| {
        c.cors_origins = vec![reqwest::header::HeaderValue::from_static(
            "https://buyers.example.com",
        )]
    })
    .await;
    let anonymous = Client::new();
    for (client, path, status) in [
        (&s.client, "/api/v1/materials", 200),
        (&anonymous, "/api/v1/materials", 401),
        (&s.client, "/api/v1/nowhere", 404),
        (&anonymous, "/healthz", 200),
    ] {
        let r = client.get(s.url(path)).send().await.unwrap();
        assert_eq!(r.status(), status, "{path}");
        let h = r.headers();
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["x-frame-options"], "DENY", "{path}");
        assert_eq!(h["referrer-policy"], "no-referrer", "{path}");
        assert_eq!(
            h["content-security-policy"], "default-src 'none'; frame-ancestors 'none'",
            "{path}"
        );
        assert_eq!(h["cache-control"], "no-store", "{path}");
    }
    // The API reference keeps its own caching and a policy that lets its scripts run.
    let docs = anonymous.get(s.url("/docs")).send().await.unwrap();
    assert_eq!(docs.headers()["cache-control"], "no-cache");
    assert_eq!(
        docs.headers()["content-security-policy"],
        "frame-ancestors 'none'"
    );

    // A preflight from the listed origin is answered; from another, it is not allowed.
    let preflight = |origin: &'static str| {
        anonymous
            .request(Method::OPTIONS, s.url("/api/v1/predictions/price"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .send()
    };
    let ok = preflight(allowed).await.unwrap();
    assert_eq!(ok.headers()["access-control-allow-origin"], allowed);
    let methods = ok.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap();
    assert!(methods.contains("POST"), "{methods}");
    let other = preflight("https://evil.example.com").await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
    // A refusal is readable by the listed origin's page, with the request id exposed.
    let refused = anonymous
        .get(s.url("/api/v1/materials"))
        .header("origin", allowed)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    assert_eq!(refused.headers()["access-control-allow-origin"], allowed);
    let exposed = refused.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_lowercase();
    assert!(
        exposed.contains("x-request-id") && exposed.contains("retry-after"),
        "{exposed}"
    );

    // Without --cors-origins no origin is allowed.
    let closed = TestServer::api(Backend::Sqlite, |_| {}).await;
    let r = anonymous
        .get(closed.url("/healthz"))
        .header("origin", allowed)
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
}

/// Log lines written while serving a request carry its request id, organization and actor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_name_the_request_organization_and_actor() {
    use std::sync::{Arc, Mutex};
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let lines = Lines::default();
    let writer = lines.clone();
    tracing_subscriber::fmt()
        .with_env_filter("mercator_server=debug")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .try_init()
        .expect("the only subscriber of this test binary");
    let s = TestServer::api(Backend::Sqlite, |_| {}).await;
    let (org, admin) = organization(&s, "Logged").await;
    let (key_id, analyst) = key(&s, &admin, "analyst").await;
    let r = analyst
        .get(s.url("/api/v1/materials"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains(&format!("request_id={id}")))
        .unwrap_or_else(|| panic!("no line for {id} in\n{text}"));
    assert!(line.contains(&format!("org={org}")), "{line}");
    assert!(line.contains(&format!("actor=key:{key_id}")), "{line}");
    assert!(line.contains("status=200"), "{line}");
}
