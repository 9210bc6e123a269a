//! Users and their sessions over real HTTP: admins make users, users sign in and get a JWT accepted
//! wherever a key is (REST, V2, WebSocket), refresh tokens rotate and a reused one ends its session,
//! signing keys rotate without signing anyone out, and every bad token is a 401 in the envelope.

mod common;

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use common::{client_with, PgDatabase, TestServer};
use ed25519_dalek::{Signer, SigningKey};
use futures_util::StreamExt;
use reqwest::Client;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// The test servers' signing key (a seed), so tests can forge tokens with it.
const SEED: &str = "0101010101010101010101010101010101010101010101010101010101010101";
const OTHER_SEED: &str = "0202020202020202020202020202020202020202020202020202020202020202";
const PASSWORD: &str = "correct horse battery staple";

fn seed(hex: &str) -> SigningKey {
    let bytes: Vec<u8> = (0..64)
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    SigningKey::from_bytes(&bytes.try_into().unwrap())
}

/// RFC 7638's thumbprint: the server's `kid`.
fn kid(key: &SigningKey) -> String {
    let x = B64.encode(key.verifying_key().as_bytes());
    B64.encode(Sha256::digest(
        format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#).as_bytes(),
    ))
}

fn forge(key: &SigningKey, header: &Value, claims: &Value) -> String {
    let signed = format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    );
    let signature = key.sign(signed.as_bytes());
    format!("{signed}.{}", B64.encode(signature.to_bytes()))
}

async fn server(
    keys: &str,
    database: Option<&str>,
) -> (TestServer, std::sync::Arc<mercator_services::clock::Clock>) {
    let models = tempfile::tempdir().unwrap();
    let dir = models.path().to_path_buf();
    let mut clock = None;
    let (keys, database) = (keys.to_string(), database.map(str::to_string));
    let s = TestServer::with(|c| {
        c.models_dir = dir;
        c.sessions.signing_keys = Some(keys);
        c.database_url = database;
        clock = Some(c.clock.clone());
    })
    .await;
    (s, clock.unwrap())
}

async fn make_user(s: &TestServer, email: &str, role: &str) -> Value {
    let r = s
        .client
        .post(s.url("/api/v1/users"))
        .json(&json!({ "email": email, "name": "Ana", "role": role, "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    r.json().await.unwrap()
}

async fn login(s: &TestServer, email: &str, password: &str) -> (u16, Value) {
    let r = Client::new()
        .post(s.url("/api/v1/auth/login"))
        .json(&json!({ "email": email, "password": password }))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn status(client: &Client, url: String) -> (u16, Value) {
    let r = client.get(url).send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// An admin makes a user; the user signs in and the access token works on REST, V2 and the WebSocket;
/// `/users/me` answers who they are; the role bounds them as it bounds a key; the password policy and
/// a duplicate email are refused; a deactivated user's session ends at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_signs_in_and_the_token_works_wherever_a_key_does() {
    let (s, _) = server(SEED, None).await;
    let user = make_user(&s, "Ana@Example.com", "analyst").await;
    assert_eq!(user["email"], "ana@example.com");
    assert_eq!(user["has_password"], true);
    assert!(user.get("password_hash").is_none() && user.get("token_version").is_none());

    let r = s
        .client
        .post(s.url("/api/v1/users"))
        .json(&json!({ "email": "bob@example.com", "role": "viewer", "password": "short" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert!(body["error"]["details"]["password"][0]
        .as_str()
        .unwrap()
        .contains("12"));
    let r = s
        .client
        .post(s.url("/api/v1/users"))
        .json(&json!({ "email": "ANA@example.com", "role": "viewer" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409, "one account per email");

    let (code, body) = login(&s, "ana@example.com", "not the password at all").await;
    assert_eq!(code, 401);
    assert_eq!(body["error"]["code"], "invalid_credentials");
    let (code, body) = login(&s, "nobody@example.com", PASSWORD).await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (401, Some("invalid_credentials"))
    );

    let (code, tokens) = login(&s, " ANA@example.com ", PASSWORD).await;
    assert_eq!(code, 200, "{tokens}");
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["expires_in"], 900);
    let access = tokens["access_token"].as_str().unwrap().to_string();
    let ana = client_with(&access);
    let (code, me) = status(&ana, s.url("/api/v1/users/me")).await;
    assert_eq!((code, me["id"].clone()), (200, user["id"].clone()));
    assert_eq!(status(&ana, s.url("/api/v1/materials")).await.0, 200);
    assert_eq!(
        status(&ana, s.url("/v2/models/price")).await.0,
        404,
        "authenticated: the model is not here"
    );
    // The role bounds a user as it bounds a key.
    assert_eq!(status(&ana, s.url("/api/v1/users")).await.0, 403);
    // A key is not a user.
    assert_eq!(status(&s.client, s.url("/api/v1/users/me")).await.0, 404);
    // The WebSocket takes the token like a key.
    let url = format!(
        "{}/ws/prices?api_key={access}",
        s.base.replace("http", "ws")
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();

    // Deactivated: every use of the session ends, the open socket closes, signing in fails.
    let id = user["id"].as_str().unwrap();
    let r = s
        .client
        .delete(s.url(&format!("/api/v1/users/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let (code, body) = status(&ana, s.url("/api/v1/materials")).await;
    assert_eq!(code, 401, "{body}");
    assert_eq!(login(&s, "ana@example.com", PASSWORD).await.0, 401);
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(message)) = socket.next().await {
            if message.is_close() {
                return true;
            }
        }
        true
    })
    .await;
    assert!(closed.unwrap_or(false), "the socket closes");
}

/// Each refresh answers a new pair; the spent refresh token used again ends the whole session (its newer
/// tokens too); sign-out ends a session; an access token expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_tokens_rotate_and_a_reused_one_ends_the_session() {
    let (s, clock) = server(SEED, None).await;
    make_user(&s, "ana@example.com", "analyst").await;
    let refresh = |token: String| {
        let url = s.url("/api/v1/auth/refresh");
        async move {
            let r = Client::new()
                .post(url)
                .json(&json!({ "refresh_token": token }))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (_, first) = login(&s, "ana@example.com", PASSWORD).await;
    let first_refresh = first["refresh_token"].as_str().unwrap().to_string();
    let (code, second) = refresh(first_refresh.clone()).await;
    assert_eq!(code, 200, "{second}");
    assert_ne!(second["refresh_token"], first["refresh_token"]);
    let second_access = client_with(second["access_token"].as_str().unwrap());
    assert_eq!(
        status(&second_access, s.url("/api/v1/materials")).await.0,
        200
    );

    // The first refresh token again: stolen. The session ends, newer tokens included.
    let (code, body) = refresh(first_refresh).await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (401, Some("refresh_token_reused"))
    );
    let (code, _) = refresh(second["refresh_token"].as_str().unwrap().to_string()).await;
    assert_eq!(code, 401);
    assert_eq!(
        status(&second_access, s.url("/api/v1/materials")).await.0,
        401
    );

    // Sign-out ends a session; another session of the same user is untouched.
    let (_, a) = login(&s, "ana@example.com", PASSWORD).await;
    let (_, b) = login(&s, "ana@example.com", PASSWORD).await;
    let (a_client, b_client) = (
        client_with(a["access_token"].as_str().unwrap()),
        client_with(b["access_token"].as_str().unwrap()),
    );
    let r = a_client
        .post(s.url("/api/v1/auth/logout"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(status(&a_client, s.url("/api/v1/materials")).await.0, 401);
    assert_eq!(
        refresh(a["refresh_token"].as_str().unwrap().to_string())
            .await
            .0,
        401
    );
    assert_eq!(status(&b_client, s.url("/api/v1/materials")).await.0, 200);

    // 15 minutes and the leeway later, the access token has expired.
    clock.advance(Duration::from_secs(900 + 31));
    let (code, body) = status(&b_client, s.url("/api/v1/materials")).await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (401, Some("token_expired")),
        "{body}"
    );
    // Its refresh token still makes a new pair.
    let (code, _) = refresh(b["refresh_token"].as_str().unwrap().to_string()).await;
    assert_eq!(code, 200);
}

/// `alg: none`, algorithm confusion (HS256 keyed with the public key), an unknown `kid`, a tampered
/// payload, another issuer or audience, a token not valid yet, a refresh token as an access token: each a
/// 401 in the envelope, never a panic, never a 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_token_is_refused_in_the_envelope() {
    let (s, _) = server(SEED, None).await;
    let user = make_user(&s, "ana@example.com", "admin").await;
    let (_, tokens) = login(&s, "ana@example.com", PASSWORD).await;
    let good = tokens["access_token"].as_str().unwrap().to_string();
    assert_eq!(
        status(&client_with(&good), s.url("/api/v1/materials"))
            .await
            .0,
        200
    );

    let key = seed(SEED);
    let claims: Value =
        serde_json::from_slice(&B64.decode(good.split('.').nth(1).unwrap()).unwrap()).unwrap();
    assert_eq!(claims["sub"], user["id"]);
    assert_eq!(claims["role"], "admin");
    let header = json!({ "alg": "EdDSA", "typ": "at+jwt", "kid": kid(&key) });
    // The forged-with-the-real-key control passes: the cases below fail for their one difference.
    assert_eq!(
        status(
            &client_with(&forge(&key, &header, &claims)),
            s.url("/api/v1/materials")
        )
        .await
        .0,
        200
    );
    let with = |field: &str, value: Value| {
        let mut c = claims.clone();
        c[field] = value;
        c
    };
    let public = B64.encode(key.verifying_key().as_bytes());
    let hs256 = {
        use hmac::{Hmac, Mac};
        let h =
            B64.encode(json!({ "alg": "HS256", "typ": "at+jwt", "kid": kid(&key) }).to_string());
        let signed = format!("{h}.{}", B64.encode(claims.to_string()));
        let mut mac = Hmac::<Sha256>::new_from_slice(public.as_bytes()).unwrap();
        mac.update(signed.as_bytes());
        format!("{signed}.{}", B64.encode(mac.finalize().into_bytes()))
    };
    let none = format!(
        "{}.{}.",
        B64.encode(json!({ "alg": "none", "typ": "at+jwt", "kid": kid(&key) }).to_string()),
        B64.encode(claims.to_string())
    );
    let mut tampered: Vec<&str> = good.split('.').collect();
    let promoted = B64.encode(with("org", json!("another-org")).to_string());
    tampered[1] = &promoted;
    let now = chrono::Utc::now().timestamp();
    let other = seed(OTHER_SEED);
    let cases = [
        ("alg none", none),
        ("HS256 keyed with the public key", hs256),
        (
            "unknown kid",
            forge(
                &other,
                &json!({ "alg": "EdDSA", "typ": "at+jwt", "kid": kid(&other) }),
                &claims,
            ),
        ),
        (
            "another key under this kid",
            forge(&other, &header, &claims),
        ),
        ("tampered payload", tampered.join(".")),
        (
            "another issuer",
            forge(&key, &header, &with("iss", json!("someone-else"))),
        ),
        (
            "another audience",
            forge(&key, &header, &with("aud", json!("another-api"))),
        ),
        (
            "not valid yet",
            forge(&key, &header, &with("nbf", json!(now + 3600))),
        ),
        ("no exp", {
            let mut c = claims.clone();
            c.as_object_mut().unwrap().remove("exp");
            forge(&key, &header, &c)
        }),
        (
            "an id token, not an access token",
            forge(
                &key,
                &json!({ "alg": "EdDSA", "typ": "JWT", "kid": kid(&key) }),
                &claims,
            ),
        ),
        (
            "a refresh token",
            tokens["refresh_token"].as_str().unwrap().to_string(),
        ),
        ("garbage", "eyJ.eyJ.eyJ".to_string()),
    ];
    for (case, token) in cases {
        let (code, body) = status(&client_with(&token), s.url("/api/v1/materials")).await;
        assert_eq!(code, 401, "{case}: {body}");
        assert!(
            body["error"]["code"].is_string() && body["request_id"].is_string(),
            "{case}: {body}"
        );
        // V2 answers in its own shape.
        let (code, body) = status(&client_with(&token), s.url("/v2/models/price")).await;
        assert_eq!(code, 401, "{case}: {body}");
        assert!(body["error"].is_string(), "{case}: {body}");
    }
}

/// A new signing key put first: tokens signed with the old key still work, new ones are signed with the
/// new key, and the JWK Set publishes both (two replicas on one database, as a rolling restart has).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_keys_rotate_without_signing_anyone_out() {
    let database = PgDatabase::create().await;
    let (old, _) = server(SEED, Some(&database.url)).await;
    make_user(&old, "ana@example.com", "analyst").await;
    let (_, before) = login(&old, "ana@example.com", PASSWORD).await;
    let (new, _) = server(&format!("{OTHER_SEED},{SEED}"), Some(&database.url)).await;
    let earlier = client_with(before["access_token"].as_str().unwrap());
    assert_eq!(status(&earlier, new.url("/api/v1/materials")).await.0, 200);
    let (_, after) = login(&new, "ana@example.com", PASSWORD).await;
    let header: Value = serde_json::from_slice(
        &B64.decode(
            after["access_token"]
                .as_str()
                .unwrap()
                .split('.')
                .next()
                .unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(header["kid"], kid(&seed(OTHER_SEED)));
    assert_eq!(header["alg"], "EdDSA");
    let (code, jwks) = status(&Client::new(), new.url("/.well-known/jwks.json")).await;
    assert_eq!(code, 200);
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(kids, [kid(&seed(OTHER_SEED)), kid(&seed(SEED))]);
    assert_eq!(jwks["keys"][0]["kty"], "OKP");
    // The old replica does not know the new key yet: it refuses, as it should.
    let later = client_with(after["access_token"].as_str().unwrap());
    assert_eq!(status(&later, old.url("/api/v1/materials")).await.0, 401);
}

/// Sign-in attempts per account are limited whatever the address, before the password is checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_a_password_is_throttled_per_account() {
    let (s, _) = server(SEED, None).await;
    make_user(&s, "ana@example.com", "viewer").await;
    for i in 0..10 {
        let (code, _) = login(&s, "ana@example.com", &format!("wrong guess number {i}")).await;
        assert_eq!(code, 401, "attempt {i}");
    }
    let r = Client::new()
        .post(s.url("/api/v1/auth/login"))
        .json(&json!({ "email": "ana@example.com", "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429, "even the right password waits");
    let wait: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=90).contains(&wait), "{wait}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    assert_eq!(body["error"]["details"]["policy"], "login");
    // Another account is not held back.
    make_user(&s, "bob@example.com", "viewer").await;
    assert_eq!(login(&s, "bob@example.com", PASSWORD).await.0, 200);
}
