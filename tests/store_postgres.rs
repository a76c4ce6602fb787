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
#[path = "common/outbox.rs"]
mod outbox;
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
    feed::a_deletion_is_logged_as_a_revocation(&store).await;
    feed::an_import_is_logged(&store).await;
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

/// A leak report and its audit entry (with URL and source) are seen by a second
/// instance; audit entries written before the leak columns existed stay readable.
#[tokio::test]
async fn leak_reports_persist_and_older_audit_rows_stay_readable() {
    use tower_api_key::KeyStatus;
    use tower_api_key::store::AuditEvent;

    let Some(server) = pg::test_url() else { return };
    let db = FreshDb::new(&server, "leak").await;
    let connect = || PostgresStore::builder_with(db.options()).connect();
    let store = connect().await.unwrap();
    let created = store.create(NewKey::new("acme"), "cli").await.unwrap();
    let id = created.record.id.clone();
    for sql in [
        "ALTER TABLE api_key_audit DROP COLUMN url",
        "ALTER TABLE api_key_audit DROP COLUMN source",
        "DELETE FROM _sqlx_migrations WHERE version = 20261202000020",
    ] {
        sqlx::query(sql).execute(store.pool()).await.unwrap();
    }
    store.pool().close().await;

    let store = connect().await.unwrap();
    let old = store.audit(Some(&id)).await.unwrap();
    assert_eq!(old.len(), 1);
    assert_eq!(old[0].event, AuditEvent::Created);
    let leak_url = "https://github.com/octo/repo/commit/0123abc";
    store
        .report_leak(&id, leak_url, "commit", true, "github-secret-scanning")
        .await
        .unwrap();
    store.pool().close().await;

    let other = connect().await.unwrap();
    let log = other.audit(Some(&id)).await.unwrap();
    let events: Vec<_> = log.iter().map(|e| e.event.clone()).collect();
    assert_eq!(
        events,
        [
            AuditEvent::Created,
            AuditEvent::Leaked {
                url: leak_url.to_owned(),
                source: "commit".to_owned()
            },
            AuditEvent::Revoked,
        ]
    );
    let record = other.resolve(&created.record.hash).await.unwrap().unwrap();
    assert_eq!(
        record.status(std::time::SystemTime::now()),
        KeyStatus::Revoked
    );
    other.pool().close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outbox() {
    let Some(server) = pg::test_url() else { return };
    let db = FreshDb::new(&server, "outbox").await;
    let store = PostgresStore::builder_with(db.options())
        .connect()
        .await
        .unwrap();
    outbox::run(&store).await;
    let pool = store.pool().clone();
    outbox::rolled_back_changes_announce_nothing(&store, outbox::POSTGRES_REFUSAL, async |sql| {
        sqlx::raw_sql(sql).execute(&pool).await.unwrap();
    })
    .await;
    store.pool().close().await;
}
