//! What authenticating and limiting cost per request: an access token verified from the cache (every
//! request after the first) and from scratch (its Ed25519 signature and claims), an API key from the key
//! cache, one GCRA check, and a password (argon2id: slow on purpose).
//!
//!     cargo bench -p mercator-benches --bench identity

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use mercator_services::clock::Clock;
use mercator_services::identity::passwords::Hasher;
use mercator_services::identity::sessions::{Sessions, Settings, SigningKeys};
use mercator_services::limits::{Class, Limiter, Plan, Subject};
use mercator_store::{KeySpec, Role, Store};

const PASSWORD: &str = "correct horse battery staple";

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = std::env::temp_dir().join(format!("mercator-bench-identity-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let clock = Arc::new(Clock::default());
    let limiter = Arc::new(Limiter::local(clock.clone()));
    let hasher = Hasher::new(2);
    let (store, sessions, token, key) = runtime.block_on(async {
        let store = Store::connect(&format!("sqlite://{}", dir.join("bench.db").display()))
            .await
            .unwrap();
        let org = store.create_organization("bench", false).await.unwrap();
        let hash = hasher.hash(PASSWORD).await.unwrap();
        store
            .create_user(
                &org.id,
                "bench@example.com",
                None,
                Role::Analyst,
                Some(&hash),
            )
            .await
            .unwrap();
        let (_, key) = store
            .create_api_key(&org.id, &KeySpec::unrestricted("bench", Role::Analyst))
            .await
            .unwrap();
        let sessions = Sessions::new(
            store.clone(),
            hasher.clone(),
            Settings {
                issuer: "mercator".into(),
                audience: "mercator-api".into(),
                access_ttl: Duration::from_secs(900),
                refresh_ttl: Duration::from_secs(3600),
                standing_ttl: Duration::from_secs(3600),
                keys: Arc::new(SigningKeys::parse(&SigningKeys::generate()).unwrap()),
                login_limits: Plan::default(),
            },
            clock.clone(),
            limiter.clone(),
        );
        let (tokens, _) = sessions.login("bench@example.com", PASSWORD).await.unwrap();
        (store, sessions, tokens.access_token, key)
    });
    let keys = mercator_server::auth::Keys::new(store, Duration::from_secs(3600), clock.clone());

    let mut group = c.benchmark_group("identity");
    group.bench_function("access token, verified from the cache", |b| {
        b.iter(|| runtime.block_on(sessions.verify(&token)).unwrap())
    });
    group.bench_function("access token, signature and claims", |b| {
        b.iter(|| sessions.claims(&token).unwrap())
    });
    group.bench_function("API key, from the key cache", |b| {
        b.iter(|| runtime.block_on(keys.verify(&key)).unwrap())
    });
    let plan: Plan = "predict=100000000/min".parse().unwrap();
    group.bench_function("rate limit, one GCRA rule in process", |b| {
        b.iter(|| runtime.block_on(limiter.check(Subject::Key("bench"), &plan, Class::Predict)))
    });
    let phc = runtime.block_on(hasher.hash(PASSWORD)).unwrap();
    group.sample_size(10);
    group.bench_function("password, argon2id verify (a sign-in's cost)", |b| {
        b.iter(|| assert!(runtime.block_on(hasher.verify(PASSWORD, Some(&phc)))))
    });
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench);
criterion_main!(benches);
