//! The KeyStore conformance suite on PostgresStore, against the server at
//! `TEST_POSTGRES_URL` (each test in a fresh database of its own, dropped afterwards).
//!
//! Without `TEST_POSTGRES_URL` the tests say they skipped, unless
//! `TOWER_API_KEY_REQUIRE_SERVICES=1`, which makes a missing server a failure.
#![cfg(feature = "postgres")]

use sqlx::{ConnectOptions, Connection, Row};
use tower_api_key::store::{NewKey, PostgresStore};
use tower_api_key::{CachedResolver, KeyResolver, KeyStore};

#[path = "common/conformance.rs"]
mod conformance;
#[path = "common/feed.rs"]
mod feed;
#[path = "common/pg.rs"]
mod pg;
#[path = "common/unique.rs"]
mod unique;

use pg::FreshDb;

/// The tables the conformance suite compares, as text.
async fn dump(db: &FreshDb) -> String {
    let mut conn = db.options().connect().await.unwrap();
    let mut text = String::new();
    for table in ["api_keys", "api_key_audit"] {
        let sql = format!("SELECT COALESCE(string_agg(t::text, E'\\n'), '') AS d FROM {table} t");
        let row = sqlx::query(&sql).fetch_one(&mut conn).await.unwrap();
        text.push_str(&row.get::<String, _>("d"));
    }
    conn.close().await.unwrap();
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store() {
    let Some(server) = pg::test_url() else { return };
    let db = FreshDb::new(&server, "conformance").await;
    let store = PostgresStore::builder_with(db.options())
        .connect()
        .await
        .unwrap();
    conformance::run(store.clone(), || dump(&db)).await;
    store.pool().close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_postgres_store() {
    let Some(server) = pg::test_url() else { return };
    let db = FreshDb::new(&server, "cached").await;
    let store = PostgresStore::builder_with(db.options())
        .connect()
        .await
        .unwrap();
    conformance::run(CachedResolver::new(store.clone()), || dump(&db)).await;
    store.pool().close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_change_feed() {
    let Some(server) = pg::test_url() else { return };
    let db = FreshDb::new(&server, "feed").await;
    let store = PostgresStore::builder_with(db.options())
        .connect()
        .await
        .unwrap();
    feed::logs_every_change(&store).await;
    feed::a_reader_never_skips_a_change(&store).await;
    feed::a_leak_revocation_is_logged(&store).await;
    let pruning = PostgresStore::builder_with(db.options())
        .change_retention(std::time::Duration::ZERO)
        .connect()
        .await
        .unwrap();
    feed::a_reader_behind_the_retention_is_told(&pruning).await;
    store.pool().close().await;
    pruning.pool().close().await;
}

#[tokio::test]
async fn two_instances_share_keys_and_migrations_run_once() {
    let Some(server) = pg::test_url() else { return };
    let db = FreshDb::new(&server, "shared").await;
    let a = PostgresStore::builder_with(db.options())
        .connect()
        .await
        .unwrap();
    let b = PostgresStore::builder_with(db.options())
        .connect()
        .await
        .unwrap();
    let created = a.create(NewKey::new("acme"), "cli").await.unwrap();
    assert_eq!(
        b.resolve(&created.record.hash).await.unwrap(),
        Some(created.record.clone())
    );
    b.revoke(&created.record.id, "cli").await.unwrap();
    assert!(
        a.get(&created.record.id)
            .await
            .unwrap()
            .unwrap()
            .revoked_at
            .is_some()
    );
    a.pool().close().await;
    b.pool().close().await;
}

/// A database made before the change log existed migrates forward, keys intact.
#[tokio::test]
async fn a_database_from_before_the_change_log_migrates_forward() {
    let Some(server) = pg::test_url() else { return };
    let db = FreshDb::new(&server, "forward").await;
    let connect = || PostgresStore::builder_with(db.options()).connect();
    let store = connect().await.unwrap();
    let created = store.create(NewKey::new("acme"), "cli").await.unwrap();
    for sql in feed::BACK_TO_THE_FIRST_SCHEMA {
        sqlx::query(sql).execute(store.pool()).await.unwrap();
    }
    store.pool().close().await;
    let store = connect().await.unwrap();
    feed::migrated_forward(&store, &created.record).await;
    store.pool().close().await;
}
