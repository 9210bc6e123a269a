//! One story, run against both backends for real: SQLite in a temporary file, and the PostgreSQL server at
//! 127.0.0.1:5432 (MERCATOR_TEST_POSTGRES_URL overrides), in a database made for the test and dropped after
//! it, so that every run applies the migrations from nothing.

use mercator_store::{
    KeyScope, KeySpec, ListParams, Material, MaterialFilter, MaterialPatch, NewMaterial, NewPrice,
    NewSupplier, PriceAnomaly, PricePatch, PriceQuery, PriceType, Role, Severity, Store,
    StoreError, Supplier,
};

async fn sqlite() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("mercator.db").display());
    (Store::connect(&url).await.unwrap(), dir)
}

/// A fresh PostgreSQL database, dropped when the story has run.
struct Postgres {
    admin: String,
    name: String,
}

impl Postgres {
    async fn create() -> (Store, Postgres) {
        use sqlx::Connection;
        let admin = std::env::var("MERCATOR_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let name = format!("mercator_store_{}_{}", std::process::id(), rand_suffix());
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .expect("PostgreSQL at 127.0.0.1:5432");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap();
        let base = admin.rsplit_once('/').unwrap().0;
        let store = Store::connect(&format!("{base}/{name}")).await.unwrap();
        (store, Postgres { admin, name })
    }

    async fn drop(self, store: Store) {
        use sqlx::Connection;
        store.close().await;
        let mut conn = sqlx::PgConnection::connect(&self.admin).await.unwrap();
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&mut conn)
        .await
        .unwrap();
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now()) % 1_000_000_000
}

async fn keys_authenticate_by_secret_and_stay_in_their_organization(store: Store) {
    let acme = store.create_organization("Acme", false).await.unwrap();
    let other = store.create_organization("Other", false).await.unwrap();
    let (key, secret) = store
        .create_api_key(&acme.id, &KeySpec::unrestricted("ci", Role::Analyst))
        .await
        .unwrap();
    assert!(
        secret.starts_with(&key.prefix),
        "the secret carries its public prefix"
    );

    let found = store
        .authenticate(&secret)
        .await
        .unwrap()
        .expect("the secret authenticates");
    assert_eq!(found, key);
    assert_eq!(found.role, Role::Analyst);
    let forged = format!("{}_{}", key.prefix, "0".repeat(48));
    assert_eq!(
        store.authenticate(&forged).await.unwrap(),
        None,
        "right prefix, wrong secret"
    );
    assert_eq!(store.authenticate("garbage").await.unwrap(), None);

    assert_eq!(
        store.list_api_keys(&acme.id).await.unwrap(),
        vec![key.clone()]
    );
    assert!(
        store.list_api_keys(&other.id).await.unwrap().is_empty(),
        "another organization sees none"
    );
    assert!(matches!(
        store.delete_api_key(&other.id, &key.id).await,
        Err(StoreError::NotFound("api key"))
    ));
    store.delete_api_key(&acme.id, &key.id).await.unwrap();
    assert_eq!(
        store.authenticate(&secret).await.unwrap(),
        None,
        "a deleted key no longer works"
    );
    assert!(matches!(
        store
            .create_api_key("no-such-org", &KeySpec::unrestricted("x", Role::Admin))
            .await,
        Err(StoreError::NotFound(_))
    ));
}

/// A key's scopes and end read back as made; it is active until its end; usage is recorded and never
/// goes back.
async fn keys_keep_their_scopes_end_and_last_use(store: Store) {
    use chrono::{Duration, TimeZone, Utc};
    let acme = store.create_organization("Acme", false).await.unwrap();
    let end = Utc.with_ymd_and_hms(2030, 1, 2, 3, 4, 5).unwrap();
    let spec = KeySpec {
        name: "reader".into(),
        role: Role::Analyst,
        scopes: Some(vec![KeyScope::Predict, KeyScope::Read]),
        expires_at: Some(end),
        rate_limits: Some("predict=600/min".into()),
    };
    let (key, secret) = store.create_api_key(&acme.id, &spec).await.unwrap();
    assert!(secret.starts_with("mk_live_") && mercator_store::plausible_key(&secret));
    assert_eq!(key.scopes, Some(vec![KeyScope::Predict, KeyScope::Read]));
    assert_eq!(key.expires_at, Some(end));
    assert_eq!(key.rate_limits.as_deref(), Some("predict=600/min"));
    assert_eq!(key.last_used_at, None);
    assert!(key.allows(KeyScope::Predict) && !key.allows(KeyScope::Write));
    assert_eq!(
        store.authenticate(&secret).await.unwrap(),
        Some(key.clone())
    );
    let second = Duration::seconds(1);
    assert!(store
        .api_key_active(&acme.id, &key.id, end - second)
        .await
        .unwrap());
    assert!(!store.api_key_active(&acme.id, &key.id, end).await.unwrap());
    assert!(!store
        .api_key_active("other", &key.id, end - second)
        .await
        .unwrap());

    let used = Utc.with_ymd_and_hms(2029, 6, 1, 0, 0, 0).unwrap();
    store
        .touch_api_keys(&[(key.id.clone(), used), (key.id.clone(), used - second)])
        .await
        .unwrap();
    let listed = store.list_api_keys(&acme.id).await.unwrap();
    assert_eq!(
        listed[0].last_used_at,
        Some(used),
        "an older use does not move it back"
    );

    let (open, _) = store
        .create_api_key(&acme.id, &KeySpec::unrestricted("ops", Role::Admin))
        .await
        .unwrap();
    assert_eq!((open.scopes, open.expires_at), (None, None));
    assert!(store.api_key_active(&acme.id, &open.id, end).await.unwrap());
}

async fn organizations_are_listed_and_found(store: Store) {
    let a = store.create_organization("A", false).await.unwrap();
    assert_eq!(store.organization(&a.id).await.unwrap(), a);
    assert!(store.list_organizations().await.unwrap().contains(&a));
    assert!(matches!(
        store.organization("missing").await,
        Err(StoreError::NotFound(_))
    ));
}

/// Users: one account per email (any case), changes that end sessions move the token version on and
/// revoke refresh tokens; a refresh token is spent once, and spending it again revokes its family.
async fn users_and_refresh_tokens_rotate_once(store: Store) {
    use chrono::{Duration, Utc};
    use mercator_store::{Role, Spent, UserChange};
    let acme = store.create_organization("Acme", false).await.unwrap();
    let user = store
        .create_user(
            &acme.id,
            "Ana@Example.com",
            Some("Ana"),
            Role::Analyst,
            Some("$argon2id$x"),
        )
        .await
        .unwrap();
    assert_eq!(user.email, "ana@example.com");
    assert!(user.has_password && user.active);
    assert!(matches!(
        store
            .create_user(&acme.id, "ANA@example.com", None, Role::Viewer, None)
            .await,
        Err(StoreError::Conflict(_))
    ));
    let other = store.create_organization("Other", false).await.unwrap();
    assert!(matches!(
        store.user(&other.id, &user.id).await,
        Err(StoreError::NotFound(_))
    ));
    let now = Utc::now();
    let family = store
        .insert_refresh_token(&user.id, None, "hash-1", now + Duration::days(7))
        .await
        .unwrap();
    assert!(matches!(
        store.spend_refresh_token("hash-1", now).await.unwrap(),
        Spent::Fresh(_)
    ));
    store
        .insert_refresh_token(&user.id, Some(&family), "hash-2", now + Duration::days(7))
        .await
        .unwrap();
    assert!(store.family_live(&family).await.unwrap());
    assert!(matches!(
        store.spend_refresh_token("hash-1", now).await.unwrap(),
        Spent::Reused(_)
    ));
    assert!(
        !store.family_live(&family).await.unwrap(),
        "reuse revokes the family"
    );
    assert!(matches!(
        store.spend_refresh_token("hash-2", now).await.unwrap(),
        Spent::Reused(_)
    ));
    assert!(matches!(
        store.spend_refresh_token("nothing", now).await.unwrap(),
        Spent::Unknown
    ));
    // A name change keeps sessions; a role change ends them.
    let renamed = store
        .update_user(
            &acme.id,
            &user.id,
            &UserChange {
                name: Some(Some("Ana B".into())),
                ..UserChange::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(renamed.token_version, user.token_version);
    let promoted = store
        .update_user(
            &acme.id,
            &user.id,
            &UserChange {
                role: Some(Role::Admin),
                ..UserChange::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(promoted.token_version, user.token_version + 1);
    assert_eq!(
        store.user_standing(&user.id).await.unwrap(),
        Some((promoted.token_version, true))
    );
}

/// Retention deletes events older than the cutoff, in every organization, and nothing newer.
async fn audit_events_keep_their_origin_and_age_out(store: Store) {
    use mercator_store::{AuditQuery, ListParams, NewAuditEvent};
    let acme = store.create_organization("Acme", false).await.unwrap();
    store
        .record_audit(
            &acme.id,
            NewAuditEvent {
                actor_key_id: "user:u1",
                actor_type: "user",
                ip: Some("203.0.113.7".into()),
                user_agent: Some("curl/8".into()),
                request_id: Some("req-1".into()),
                action: "price.create",
                target_type: "price",
                target_id: "p1",
                before: None,
                after: None,
            },
        )
        .await
        .unwrap();
    let page = ListParams {
        limit: 10,
        offset: 0,
        sort: None,
        count: true,
    };
    let listed = store
        .list_audit(&acme.id, &AuditQuery::default(), &page)
        .await
        .unwrap();
    let event = &listed.items[0];
    assert_eq!(
        (
            event.actor_type.as_deref(),
            event.ip.as_deref(),
            event.request_id.as_deref()
        ),
        (Some("user"), Some("203.0.113.7"), Some("req-1"))
    );
    let past = chrono::Utc::now() - chrono::Duration::days(1);
    assert_eq!(store.purge_audit_before(past).await.unwrap(), 0);
    let future = chrono::Utc::now() + chrono::Duration::seconds(1);
    assert_eq!(store.purge_audit_before(future).await.unwrap(), 1);
    let listed = store
        .list_audit(&acme.id, &AuditQuery::default(), &page)
        .await
        .unwrap();
    assert!(listed.items.is_empty());
}

macro_rules! on_both {
    ($($story:ident),*) => {
        mod on_sqlite {
            $(#[tokio::test]
            async fn $story() {
                let (store, _dir) = super::sqlite().await;
                super::$story(store).await;
            })*
        }
        mod on_postgres {
            $(#[tokio::test]
            async fn $story() {
                let (store, db) = super::Postgres::create().await;
                super::$story(store.clone()).await;
                db.drop(store).await;
            })*
        }
    };
}

on_both!(
    keys_authenticate_by_secret_and_stay_in_their_organization,
    keys_keep_their_scopes_end_and_last_use,
    organizations_are_listed_and_found,
    materials_are_scoped_unique_filtered_sorted_and_patched,
    prices_land_all_or_nothing_and_query_by_material_and_time,
    model_versions_are_claimed_once_and_keep_their_state,
    alert_events_open_once_per_cooldown_and_deliveries_are_claimed_once,
    batch_jobs_commit_each_chunk_once_and_stay_in_their_organization,
    a_missing_number_and_a_number_share_one_statement,
    users_and_refresh_tokens_rotate_once,
    audit_events_keep_their_origin_and_age_out,
    monitor_counts_and_logged_predictions_are_kept_by_version_and_time,
    writers_that_read_first_wait_for_each_other
);

/// Writes that read before they write (a patch reads the row, then updates it and records the change), many
/// at once on the pool's connections: each waits for the write lock rather than failing. SQLite refuses a
/// deferred transaction's upgrade from reading to writing at once while another connection writes, so its
/// write transactions must take the lock as they begin.
async fn writers_that_read_first_wait_for_each_other(store: Store) {
    let org = store.create_organization("Acme", false).await.unwrap().id;
    let m = store
        .create_entry::<Material>(&org, material("M-1", "steel"))
        .await
        .unwrap()
        .id;
    let prices = store
        .insert_prices(
            &org,
            (1..=8).map(|d| observation(&m, None, d, 3.0)).collect(),
        )
        .await
        .unwrap();
    let writers = prices.into_iter().map(|price| {
        let (store, org) = (store.clone(), org.clone());
        tokio::spawn(async move {
            for round in 1..=15 {
                let patch: PricePatch =
                    serde_json::from_value(serde_json::json!({"price": f64::from(round)})).unwrap();
                store
                    .update_price(&org, &price.id, patch)
                    .await
                    .map_err(|e| format!("{} round {round}: {e}", price.id))?;
            }
            Ok::<_, String>(price.id)
        })
    });
    for writer in writers.collect::<Vec<_>>() {
        let id = writer.await.unwrap().unwrap();
        assert_eq!(store.price(&org, &id).await.unwrap().price, 15.0);
    }
}

/// A replica's counts of a bucket are replaced by its later write and read beside another replica's, by
/// version and bucket range; logged predictions are written once by id, read newest first within a time
/// range and a limit, and both age out.
async fn monitor_counts_and_logged_predictions_are_kept_by_version_and_time(store: Store) {
    use mercator_store::LoggedPrediction;
    store
        .put_monitor_counts("price", 2, 600, 10, "{\"a\":1}")
        .await
        .unwrap();
    store
        .put_monitor_counts("price", 2, 600, 25, "{\"a\":2}")
        .await
        .unwrap();
    store
        .put_monitor_counts("price", 2, 900, 5, "{}")
        .await
        .unwrap();
    store
        .put_monitor_counts("price", 3, 600, 7, "{}")
        .await
        .unwrap();
    let rows = store.monitor_counts("price", 2, 600, 900).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].rows_counted, rows[0].counts.as_str()),
        (25, "{\"a\":2}")
    );
    assert_eq!(
        store
            .monitor_counts("price", 2, 0, 10_000)
            .await
            .unwrap()
            .len(),
        2
    );
    assert_eq!(store.prune_monitor_counts(900).await.unwrap(), 2);
    assert_eq!(
        store
            .monitor_counts("price", 2, 0, 10_000)
            .await
            .unwrap()
            .len(),
        1
    );

    let logged = |id: &str, at: i64| LoggedPrediction {
        id: id.into(),
        organization_id: "org".into(),
        model: "price".into(),
        version: 2,
        material_id: "m".into(),
        supplier_id: (at % 2 == 0).then(|| "s".to_string()),
        as_of_day: 20_000,
        quantity: 3.5,
        predicted: 4.25,
        lower_bound: 4.0,
        upper_bound: 4.5,
        level: 0.8,
        inputs_digest: "ab".into(),
        created_at: at,
    };
    let rows: Vec<_> = (0..150)
        .map(|i| logged(&format!("p{i:03}"), 1000 + i))
        .collect();
    store.insert_prediction_logs(&rows).await.unwrap();
    store.insert_prediction_logs(&rows[..3]).await.unwrap();
    let read = store
        .prediction_logs("price", 2, 1000, 1100, 1000)
        .await
        .unwrap();
    assert_eq!(read.len(), 100);
    assert_eq!(read[0], rows[99]);
    assert_eq!(read[99], rows[0]);
    let latest = store
        .prediction_logs("price", 2, 0, i64::MAX, 5)
        .await
        .unwrap();
    assert_eq!(
        latest.iter().map(|r| r.created_at).collect::<Vec<_>>(),
        [1149, 1148, 1147, 1146, 1145]
    );
    assert!(store
        .prediction_logs("price", 3, 0, i64::MAX, 5)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(store.prune_prediction_logs(1140).await.unwrap(), 140);
    assert_eq!(
        store
            .prediction_logs("price", 2, 0, i64::MAX, 1000)
            .await
            .unwrap()
            .len(),
        10
    );
}

/// A job's chunks are written before the job and claimed by any replica under a lease, fairly across
/// organizations, two claims never getting one chunk; a chunk commits once, only under the claim that holds
/// it, and the last one ends the job; a lease that runs out is taken over (one more attempt); cancel ends a
/// job at once; another organization never sees it.
async fn batch_jobs_commit_each_chunk_once_and_stay_in_their_organization(store: Store) {
    use mercator_store::{new_batch_id, BatchState, Chunk, NewBatchJob};
    use std::time::Duration;
    let a = store.create_organization("A", false).await.unwrap();
    let b = store.create_organization("B", false).await.unwrap();
    let lease = Duration::from_secs(30);
    let chunks = |n: u64| -> Vec<Chunk> {
        (0..n)
            .map(|i| Chunk {
                first_row: i * 10,
                rows: 10,
                byte_start: 20 + i * 100,
                byte_end: 120 + i * 100,
            })
            .collect()
    };
    let submit = |org: String, n: u64, key: Option<&'static str>| {
        let store = store.clone();
        async move {
            let id = new_batch_id();
            for (i, c) in chunks(n).iter().enumerate() {
                let input = format!("row {i}\n");
                store
                    .add_batch_chunk(&org, &id, i as u64, c, input.as_bytes())
                    .await
                    .unwrap();
            }
            let new = NewBatchJob {
                id,
                node: "n1".into(),
                model: "price".into(),
                model_version: 2,
                input_format: "csv".into(),
                input_bytes: 100 * n,
                chunks: chunks(n),
                header: vec!["material_id".into(), "quantity".into()],
                outputs: None,
                idempotency_key: key.map(str::to_string),
            };
            store.create_batch_job(&org, new).await.unwrap()
        }
    };
    // Chunks whose job is not recorded yet are never claimed.
    store
        .add_batch_chunk(&a.id, "bat_unborn", 0, &chunks(1)[0], b"x\n")
        .await
        .unwrap();
    assert!(store
        .claim_batch_chunk("n1", lease)
        .await
        .unwrap()
        .is_none());

    let first = submit(a.id.clone(), 3, None).await;
    assert_eq!(
        (
            first.state,
            first.total_rows,
            first.chunks_total,
            first.chunks.clone(),
            first.header.len()
        ),
        (BatchState::Queued, 30, 3, chunks(3), 2)
    );
    let second = submit(a.id.clone(), 2, None).await;
    let other = submit(b.id.clone(), 1, None).await;
    assert!(matches!(
        store.batch_job(&b.id, &first.id).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(store.active_batch_jobs(&a.id).await.unwrap(), 2);
    assert_eq!(store.active_batch_jobs(&b.id).await.unwrap(), 1);

    // The oldest job first; then B, which has nothing running, before A's next chunk; then A again.
    let c0 = store.claim_batch_chunk("n1", lease).await.unwrap().unwrap();
    assert_eq!((c0.job.id.as_str(), c0.index), (first.id.as_str(), 0));
    assert_eq!((c0.job.state, c0.job.attempts), (BatchState::Running, 1));
    assert_eq!(
        (c0.first_row, c0.rows, c0.input.as_slice()),
        (0, 10, &b"row 0\n"[..])
    );
    assert!(c0.job.started_at.is_some() && !c0.reclaimed);
    let cb = store.claim_batch_chunk("n2", lease).await.unwrap().unwrap();
    assert_eq!(cb.job.id, other.id, "fair across organizations");
    // Two replicas claiming at once get two chunks.
    let (x, y) = tokio::join!(
        store.claim_batch_chunk("n1", lease),
        store.claim_batch_chunk("n2", lease)
    );
    let (x, y) = (x.unwrap().unwrap(), y.unwrap().unwrap());
    assert_ne!((&x.job.id, x.index), (&y.job.id, y.index));
    let mut claimed = vec![(x.job.id.clone(), x.index), (y.job.id.clone(), y.index)];
    claimed.sort();
    let mut expected = vec![(first.id.clone(), 1), (first.id.clone(), 2)];
    expected.sort();
    assert_eq!(claimed, expected, "A's oldest job before its next one");
    let c1 = if x.index == 1 { x } else { y };

    // A commit carries its claim's token, and applies once.
    assert!(store
        .commit_batch_chunk(&first.id, 0, c0.token + 1, b"r0\n", 10, 1)
        .await
        .unwrap()
        .is_none());
    let job = store
        .commit_batch_chunk(&first.id, 0, c0.token, b"r0\n", 10, 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            job.chunks_done,
            job.processed_rows,
            job.failed_rows,
            job.state
        ),
        (1, 10, 1, BatchState::Running)
    );
    assert!(store
        .commit_batch_chunk(&first.id, 0, c0.token, b"r0\n", 10, 1)
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        store.batch_chunk_result(&first.id, 0).await.unwrap(),
        Some(b"r0\n".to_vec())
    );
    assert_eq!(store.batch_chunk_result(&first.id, 1).await.unwrap(), None);

    // A replica that starts again lets go of what it held: taken over at once, one more attempt for the
    // job however many chunks it held; the old claim can neither renew nor commit.
    assert!(store
        .renew_batch_chunk(&first.id, 1, c1.token, lease)
        .await
        .unwrap());
    let held = store.release_batch_chunks("n1").await.unwrap()
        + store.release_batch_chunks("n2").await.unwrap();
    assert_eq!(held, 3, "x, y and B's chunk: the committed one is not held");
    let mut taken = Vec::new();
    while let Some(c) = store.claim_batch_chunk("n3", lease).await.unwrap() {
        taken.push(c);
    }
    let again: Vec<&mercator_store::ClaimedChunk> =
        taken.iter().filter(|c| c.job.id == first.id).collect();
    assert!(
        again.iter().all(|c| c.reclaimed && c.job.attempts == 2),
        "{again:?}"
    );
    assert!(!store
        .renew_batch_chunk(&first.id, c1.index, c1.token, lease)
        .await
        .unwrap());
    assert!(store
        .commit_batch_chunk(&first.id, c1.index, c1.token, b"late\n", 10, 0)
        .await
        .unwrap()
        .is_none());
    // The new claims commit; the last chunk ends the job.
    let mut last = None;
    for c in taken.iter().filter(|c| c.job.id == first.id) {
        last = store
            .commit_batch_chunk(&first.id, c.index, c.token, b"r\n", 10, 0)
            .await
            .unwrap();
    }
    let done = last.unwrap();
    assert_eq!(
        (
            done.state,
            done.chunks_done,
            done.processed_rows,
            done.attempts
        ),
        (BatchState::Succeeded, 3, 30, 2)
    );
    assert!(done.finished_at.is_some());
    assert!(
        !store
            .finish_batch_job(&first.id, BatchState::Failed, None)
            .await
            .unwrap(),
        "an ended job stays ended"
    );

    // Cancel ends a job at once, running or queued; what it had claimed no longer commits.
    let running = taken.iter().find(|c| c.job.id == second.id).unwrap();
    let cancelled = store.cancel_batch_job(&a.id, &second.id).await.unwrap();
    assert_eq!(cancelled.state, BatchState::Cancelled);
    assert!(cancelled.cancel_requested_at.is_some() && cancelled.finished_at.is_some());
    assert!(store
        .commit_batch_chunk(&second.id, running.index, running.token, b"r\n", 10, 0)
        .await
        .unwrap()
        .is_none());
    assert!(store
        .claim_batch_chunk("n1", lease)
        .await
        .unwrap()
        .is_none());
    assert!(matches!(
        store.cancel_batch_job(&b.id, &second.id).await,
        Err(StoreError::NotFound(_))
    ));
    let listed = store
        .batch_jobs(
            &a.id,
            Some(BatchState::Cancelled),
            &ListParams {
                limit: 10,
                ..ListParams::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(store.active_batch_jobs(&a.id).await.unwrap(), 0);

    // Expired results go with their chunks; unborn chunks go once they are old.
    let now = chrono::Utc::now();
    assert_eq!(
        store
            .purge_batch_chunks(now - chrono::Duration::hours(1))
            .await
            .unwrap(),
        0
    );
    assert!(
        store
            .purge_batch_chunks(now + chrono::Duration::seconds(1))
            .await
            .unwrap()
            >= 5
    );
    assert_eq!(store.batch_chunk_result(&first.id, 0).await.unwrap(), None);

    // An idempotency key names one job in its organization: a second submit with it gets the first job.
    let first = submit(a.id.clone(), 1, Some("k-1")).await;
    let again = submit(a.id.clone(), 1, Some("k-1")).await;
    assert_eq!(again.id, first.id);
    let elsewhere = submit(b.id.clone(), 1, Some("k-1")).await;
    assert_ne!(elsewhere.id, first.id, "keys are per organization");
    assert_eq!(
        store
            .batch_job_by_key(&a.id, "k-1")
            .await
            .unwrap()
            .map(|j| j.id),
        Some(first.id)
    );
    assert!(store
        .batch_job_by_key(&a.id, "k-2")
        .await
        .unwrap()
        .is_none());
}

/// Concurrent uploads claim distinct numbers; each ends ready or failed (with the reason); retiring keeps a
/// tombstone; the loaded flag is kept.
async fn model_versions_are_claimed_once_and_keep_their_state(store: Store) {
    use mercator_store::VersionState;
    store
        .record_model_version("m", 1, "aa", 10, "import")
        .await
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let store = store.clone();
        tasks.spawn(async move { store.claim_model_version("m", 1, "k").await.unwrap() });
    }
    let claims: std::collections::BTreeSet<u64> = tasks.join_all().await.into_iter().collect();
    assert_eq!(claims.into_iter().collect::<Vec<_>>(), [2, 3, 4, 5]);
    assert_eq!(
        store.claim_model_version("m", 9, "k").await.unwrap(),
        9,
        "at least the folder's next"
    );
    store
        .finish_model_version("m", 2, Ok(("bb", 20)))
        .await
        .unwrap();
    store
        .finish_model_version("m", 3, Err("does not parse"))
        .await
        .unwrap();
    store.retire_model_version("m", 1).await.unwrap();
    store.set_model_version_loaded("m", 2, false).await.unwrap();
    let all = store.model_versions(None).await.unwrap();
    type Row<'a> = (u64, VersionState, Option<&'a str>, bool, Option<&'a str>);
    let got: Vec<Row> = all
        .iter()
        .take(3)
        .map(|r| {
            (
                r.version,
                r.state,
                r.reason.as_deref(),
                r.loaded,
                r.sha256.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (1, VersionState::Retired, None, false, Some("aa")),
            (2, VersionState::Ready, None, false, Some("bb")),
            (3, VersionState::Failed, Some("does not parse"), false, None),
        ]
    );
    assert_eq!(all[3].state, VersionState::Validating);
    assert!(store
        .model_versions(Some("other"))
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn a_reopened_sqlite_file_keeps_its_rows_and_migrates_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("m.db").display());
    let org = Store::connect(&url)
        .await
        .unwrap()
        .create_organization("Kept", true)
        .await
        .unwrap();
    let again = Store::connect(&url).await.unwrap();
    assert_eq!(again.organization(&org.id).await.unwrap(), org);
}

fn material(code: &str, category: &str) -> NewMaterial {
    serde_json::from_value(serde_json::json!({
        "code": code, "name": format!("Material {code}"), "category": category, "unit": "kg",
        "list_price": 4.0
    }))
    .unwrap()
}

/// One statement written with no number first and a number after (a material without a list price, then
/// one with): a statement is prepared once per connection, so the missing number must be declared as the
/// number's type. Many times over, so that the connections of the pool each see both orders.
async fn a_missing_number_and_a_number_share_one_statement(store: Store) {
    let org = store.create_organization("Acme", false).await.unwrap().id;
    for i in 0..40 {
        let new = NewMaterial {
            list_price: (i % 2 == 1).then_some(4.5),
            ..material(&format!("M-{i}"), "c")
        };
        let made = store.create_entry::<Material>(&org, new).await.unwrap();
        assert_eq!(made.list_price, (i % 2 == 1).then_some(4.5));
    }
}

fn page(limit: u32, offset: u64, sort: Option<&str>) -> ListParams {
    ListParams {
        limit,
        offset,
        sort: sort.map(Into::into),
        count: true,
    }
}

async fn materials_are_scoped_unique_filtered_sorted_and_patched(store: Store) {
    let acme = store.create_organization("Acme", false).await.unwrap().id;
    let other = store.create_organization("Other", false).await.unwrap().id;
    let alu = store
        .create_entry::<Material>(&acme, material("ALU-1", "aluminium"))
        .await
        .unwrap();
    store
        .create_entry::<Material>(&acme, material("CU-1", "copper"))
        .await
        .unwrap();
    store
        .create_entry::<Material>(&acme, material("ALU-2", "aluminium"))
        .await
        .unwrap();
    // The same code in another organization is fine; twice in one is a conflict.
    store
        .create_entry::<Material>(&other, material("ALU-1", "aluminium"))
        .await
        .unwrap();
    assert!(matches!(
        store
            .create_entry::<Material>(&acme, material("ALU-1", "x"))
            .await,
        Err(StoreError::Conflict(_))
    ));
    let bad = NewMaterial {
        list_price: Some(-1.0),
        code: " ".into(),
        ..material("X", "y")
    };
    match store.create_entry::<Material>(&acme, bad).await {
        Err(StoreError::Invalid(e)) => {
            assert!(
                e.0.contains_key("list_price") && e.0.contains_key("code"),
                "{e:?}"
            )
        }
        other => panic!("{other:?}"),
    }

    let all = store
        .entries::<Material>(
            &acme,
            &MaterialFilter::default(),
            &page(10, 0, Some("-code")),
        )
        .await
        .unwrap();
    let codes: Vec<&str> = all.items.iter().map(|m| m.code.as_str()).collect();
    assert_eq!(
        (all.total, codes),
        (Some(3), vec!["CU-1", "ALU-2", "ALU-1"])
    );
    let filter = MaterialFilter {
        category: Some("aluminium".into()),
        ..Default::default()
    };
    let second = store
        .entries::<Material>(&acme, &filter, &page(1, 1, None))
        .await
        .unwrap();
    assert_eq!((second.total, second.has_more), (Some(2), false));
    assert_eq!(second.items[0].code, "ALU-2");
    let search = MaterialFilter {
        search: Some("cu-".into()),
        ..Default::default()
    };
    assert_eq!(
        store
            .entries::<Material>(&acme, &search, &page(10, 0, None))
            .await
            .unwrap()
            .total,
        Some(1)
    );
    assert!(matches!(
        store
            .entries::<Material>(&acme, &filter, &page(10, 0, Some("secret")))
            .await,
        Err(StoreError::Invalid(_))
    ));

    let patch: MaterialPatch =
        serde_json::from_value(serde_json::json!({"name": "Aluminium ingot", "list_price": null}))
            .unwrap();
    let patched = store
        .update_entry::<Material>(&acme, &alu.id, patch.clone())
        .await
        .unwrap();
    assert_eq!(
        (patched.name.as_str(), patched.list_price),
        ("Aluminium ingot", None)
    );
    assert_eq!(patched.category, "aluminium", "untouched fields stay");
    // Not found, and named: the server answers the store's own words.
    assert!(matches!(
        store.update_entry::<Material>(&other, &alu.id, patch).await,
        Err(StoreError::NotFound("material"))
    ));
    assert!(matches!(
        store.material(&other, &alu.id).await,
        Err(StoreError::NotFound("material"))
    ));
    assert!(matches!(
        store.delete_entry::<Material>(&other, &alu.id).await,
        Err(StoreError::NotFound("material"))
    ));
    store
        .delete_entry::<Material>(&acme, &alu.id)
        .await
        .unwrap();
    assert!(matches!(
        store.material(&acme, &alu.id).await,
        Err(StoreError::NotFound(_))
    ));
}

fn observation(material: &str, supplier: Option<&str>, day: u32, price: f64) -> NewPrice {
    serde_json::from_value(serde_json::json!({
        "time": format!("2025-01-{day:02}"), "material_id": material, "supplier_id": supplier,
        "price": price, "currency": "EUR", "quantity": 100.0, "price_type": "quote"
    }))
    .unwrap()
}

async fn prices_land_all_or_nothing_and_query_by_material_and_time(store: Store) {
    let acme = store.create_organization("Acme", false).await.unwrap().id;
    let other = store.create_organization("Other", false).await.unwrap().id;
    let m = store
        .create_entry::<Material>(&acme, material("ALU-1", "aluminium"))
        .await
        .unwrap()
        .id;
    let foreign = store
        .create_entry::<Material>(&other, material("ALU-1", "aluminium"))
        .await
        .unwrap()
        .id;
    let s = store
        .create_entry::<Supplier>(
            &acme,
            NewSupplier {
                code: "S1".into(),
                name: "Supplier".into(),
                country: "DE".into(),
                reliability: 0.9,
                status: None,
            },
        )
        .await
        .unwrap()
        .id;

    let mut rows: Vec<NewPrice> = (1..=20)
        .map(|d| observation(&m, Some(&s), d, 3.0 + d as f64))
        .collect();
    rows[4].price = -2.0;
    rows[9].material_id = foreign.clone();
    match store.insert_prices(&acme, rows.clone()).await {
        Err(StoreError::Rows(errors)) => {
            let named: Vec<(usize, Vec<&String>)> = errors
                .iter()
                .map(|e| (e.row, e.errors.0.keys().collect()))
                .collect();
            assert_eq!(
                named,
                vec![
                    (5, vec![&"price".to_string()]),
                    (10, vec![&"material_id".to_string()])
                ]
            );
        }
        other => panic!("{other:?}"),
    }
    let none = store
        .list_prices(&acme, &PriceQuery::default(), &page(10, 0, None))
        .await
        .unwrap();
    assert_eq!(none.total, Some(0), "a refused bulk writes nothing");

    rows[4].price = 7.0;
    rows[9].material_id = m.clone();
    let written = store.insert_prices(&acme, rows).await.unwrap();
    assert_eq!(written.len(), 20);
    assert!(
        written.iter().all(|p| p.anomaly.is_none()),
        "written unscored"
    );

    // Anomaly scores are stored with their prices, cleared with None, and only in the organization's rows.
    let judged = |score: f64, severity: Option<Severity>| PriceAnomaly {
        score,
        is_anomaly: severity.is_some(),
        severity,
        model: "anomaly:2".into(),
    };
    let scores = vec![
        (
            written[1].id.clone(),
            Some(judged(0.71, Some(Severity::High))),
        ),
        (written[2].id.clone(), Some(judged(0.41, None))),
        (written[3].id.clone(), None),
    ];
    store.set_price_anomalies(&acme, &scores).await.unwrap();
    for (id, want) in &scores {
        assert_eq!(&store.price(&acme, id).await.unwrap().anomaly, want);
    }
    store
        .set_price_anomalies(&acme, &[(written[1].id.clone(), None)])
        .await
        .unwrap();
    assert_eq!(
        store.price(&acme, &written[1].id).await.unwrap().anomaly,
        None
    );
    store
        .set_price_anomalies(&other, &[(written[2].id.clone(), None)])
        .await
        .unwrap();
    assert_eq!(
        store.price(&acme, &written[2].id).await.unwrap().anomaly,
        Some(judged(0.41, None)),
        "another organization's write touches nothing"
    );

    let query = PriceQuery {
        material_id: Some(m.clone()),
        from: mercator_store::parse_time("2025-01-05"),
        to: mercator_store::parse_time("2025-01-10"),
        ..Default::default()
    };
    let range = store
        .list_prices(&acme, &query, &page(3, 0, None))
        .await
        .unwrap();
    assert!(range.has_more);
    assert_eq!(range.total, Some(5), "from inclusive, to exclusive");
    let days: Vec<String> = range
        .items
        .iter()
        .map(|p| p.time.format("%d").to_string())
        .collect();
    assert_eq!(days, ["09", "08", "07"], "newest first by default");
    let cheapest = store
        .list_prices(&acme, &query, &page(1, 0, Some("price")))
        .await
        .unwrap();
    assert_eq!(cheapest.items[0].price, 7.0);
    assert_eq!(
        store
            .list_prices(&other, &PriceQuery::default(), &page(10, 0, None))
            .await
            .unwrap()
            .total,
        Some(0),
        "another organization sees none"
    );

    let first = &written[0];
    let patch: PricePatch = serde_json::from_value(
        serde_json::json!({"price": 9.5, "price_type": "invoice", "source": null}),
    )
    .unwrap();
    let (before, patched) = store
        .update_price(&acme, &first.id, patch.clone())
        .await
        .unwrap();
    assert_eq!(
        (before.id.as_str(), before.price),
        (first.id.as_str(), first.price)
    );
    assert_eq!(
        (patched.price, patched.price_type),
        (9.5, PriceType::Invoice)
    );
    assert_eq!(patched.time, first.time);
    assert!(matches!(
        store.update_price(&other, &first.id, patch).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(
        matches!(
            store.delete_entry::<Material>(&acme, &m).await,
            Err(StoreError::Conflict(_))
        ),
        "a material with observations stays"
    );
    store.delete_price(&acme, &first.id).await.unwrap();
    assert!(matches!(
        store.price(&acme, &first.id).await,
        Err(StoreError::NotFound(_))
    ));
}

/// Alert rules are the organization's; a breach opens an event once per cooldown and subject (the
/// conditional upsert), later ones count on it; events are acknowledged and resolved once; webhook deliveries
/// are claimed by one dispatcher, retried on schedule and recorded.
async fn alert_events_open_once_per_cooldown_and_deliveries_are_claimed_once(store: Store) {
    use mercator_store::{Breach, EventQuery, EventStatus, NewAlertRule, Severity, Webhook};
    let acme = store.create_organization("Acme", false).await.unwrap().id;
    let other = store.create_organization("Other", false).await.unwrap().id;
    let m = store
        .create_entry::<Material>(&acme, material("ALU-1", "aluminium"))
        .await
        .unwrap()
        .id;
    let rule = |name: &str, scope: serde_json::Value| -> NewAlertRule {
        serde_json::from_value(serde_json::json!({"name": name, "scope": scope,
            "condition": {"type": "price_above", "threshold": 5.0},
            "channels": ["websocket", {"webhook": {"url": "https://example.com/h", "secret": "0123456789abcdef"}}]}))
        .unwrap()
    };
    let held = store
        .create_alert_rule(&acme, rule("held", serde_json::json!({"material_id": m})))
        .await
        .unwrap();
    assert!(matches!(
        store
            .create_alert_rule(
                &other,
                rule("foreign", serde_json::json!({"material_id": m}))
            )
            .await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        store
            .create_alert_rule(&acme, rule("held", serde_json::json!({})))
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(store.all_alert_rules().await.unwrap().len(), 1);
    assert!(matches!(
        store.alert_rule(&other, &held.id).await,
        Err(StoreError::NotFound(_))
    ));

    let breach = |value: f64| Breach {
        rule_id: held.id.clone(),
        material_id: Some(m.clone()),
        supplier_id: None,
        price_id: None,
        value,
        threshold: 5.0,
        message: format!("price {value} is above 5"),
        severity: Severity::Medium,
        count: 1,
    };
    // Judged at given times: the cooldown's edge exactly, no waiting.
    let t0 = chrono::Utc::now();
    let at = |seconds: i64| t0 + chrono::Duration::seconds(seconds);
    let first = store
        .record_breach(&acme, &breach(6.0), 3600, at(0))
        .await
        .unwrap()
        .expect("the first breach opens an event");
    assert!(
        store
            .record_breach(&acme, &breach(7.0), 3600, at(3599))
            .await
            .unwrap()
            .is_none(),
        "a second inside the cooldown, the breach folds into the event"
    );
    let folded = store.alert_event(&acme, &first.id).await.unwrap();
    assert_eq!((folded.breach_count, folded.last_value), (2, 7.0));
    // The cooldown over, a new event.
    let second = store
        .record_breach(&acme, &breach(8.0), 3600, at(3600))
        .await
        .unwrap();
    assert!(second.is_some_and(|e| e.id != first.id));
    let listed = store
        .alert_events(&acme, &EventQuery::default(), &page(10, 0, None))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 2);
    assert!(store
        .alert_events(&other, &EventQuery::default(), &page(10, 0, None))
        .await
        .unwrap()
        .items
        .is_empty());
    let acked = store
        .set_alert_event_status(&acme, &first.id, EventStatus::Acknowledged)
        .await
        .unwrap();
    assert_eq!(acked.status, EventStatus::Acknowledged);
    store
        .set_alert_event_status(&acme, &first.id, EventStatus::Resolved)
        .await
        .unwrap();
    assert!(matches!(
        store
            .set_alert_event_status(&acme, &first.id, EventStatus::Resolved)
            .await,
        Err(StoreError::Conflict(_))
    ));

    // Deliveries: claimed once, retried when due, recorded.
    let hook = Webhook {
        url: "https://example.com/h".into(),
        secret: "0123456789abcdef".into(),
    };
    let id = store
        .enqueue_delivery(&acme, &first.id, &hook, "{}")
        .await
        .unwrap();
    let claimed = store.claim_deliveries(10, 60_000).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(
        (claimed[0].id.as_str(), claimed[0].attempt),
        (id.as_str(), 1)
    );
    assert!(
        store.claim_deliveries(10, 60_000).await.unwrap().is_empty(),
        "leased"
    );
    store
        .finish_attempt(
            &id,
            Some(500),
            Some("the receiver answered 500"),
            false,
            Some(0),
        )
        .await
        .unwrap();
    let again = store.claim_deliveries(10, 60_000).await.unwrap();
    assert_eq!(again[0].attempt, 2);
    store
        .finish_attempt(&id, Some(200), None, true, None)
        .await
        .unwrap();
    let log = store.deliveries(&acme, &first.id).await.unwrap();
    assert_eq!(
        (
            log[0].status.as_str(),
            log[0].attempts,
            log[0].last_status_code
        ),
        ("delivered", 2, Some(200))
    );
    assert!(store
        .deliveries(&other, &first.id)
        .await
        .unwrap()
        .is_empty());
    assert!(store.next_delivery_due().await.unwrap().is_none());

    store.delete_alert_rule(&acme, &held.id).await.unwrap();
    assert!(matches!(
        store.alert_event(&acme, &first.id).await,
        Err(StoreError::NotFound(_))
    ));
}
