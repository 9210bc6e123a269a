//! One story, run against both backends for real: SQLite in a temporary file, and the PostgreSQL server at
//! 127.0.0.1:5432 (MERCATOR_TEST_POSTGRES_URL overrides), in a database made for the test and dropped after
//! it, so that every run applies the migrations from nothing.

use mercator_store::{Role, Store, StoreError};

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
    let acme = store.create_organization("Acme").await.unwrap();
    let other = store.create_organization("Other").await.unwrap();
    let (key, secret) = store
        .create_api_key(&acme.id, "ci", Role::Analyst)
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
        Err(StoreError::NotFound)
    ));
    store.delete_api_key(&acme.id, &key.id).await.unwrap();
    assert_eq!(
        store.authenticate(&secret).await.unwrap(),
        None,
        "a deleted key no longer works"
    );
    assert!(matches!(
        store.create_api_key("no-such-org", "x", Role::Admin).await,
        Err(StoreError::NotFound)
    ));
}

async fn organizations_are_listed_and_found(store: Store) {
    let a = store.create_organization("A").await.unwrap();
    assert_eq!(store.organization(&a.id).await.unwrap(), a);
    assert!(store.list_organizations().await.unwrap().contains(&a));
    assert!(matches!(
        store.organization("missing").await,
        Err(StoreError::NotFound)
    ));
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
    organizations_are_listed_and_found
);

#[tokio::test]
async fn a_reopened_sqlite_file_keeps_its_rows_and_migrates_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("m.db").display());
    let org = Store::connect(&url)
        .await
        .unwrap()
        .create_organization("Kept")
        .await
        .unwrap();
    let again = Store::connect(&url).await.unwrap();
    assert_eq!(again.organization(&org.id).await.unwrap(), org);
}
