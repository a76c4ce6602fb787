//! The KeyStore conformance suite on SqliteStore, on a real database file.
#![cfg(feature = "sqlite")]

use std::path::PathBuf;

use tower_api_key::store::{NewKey, SqliteStore};
use tower_api_key::{CachedResolver, KeyResolver, KeyStore};

#[path = "common/conformance.rs"]
mod conformance;
#[path = "common/feed.rs"]
mod feed;
#[path = "common/outbox.rs"]
mod outbox;

/// A fresh database path under the system's temporary directory.
fn db_path(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    std::env::temp_dir().join(format!(
        "tower-api-key-{name}-{}-{nanos}.db",
        std::process::id()
    ))
}

/// Everything in the database file and its write-ahead log, as text.
async fn raw_text(path: PathBuf) -> String {
    let mut all = Vec::new();
    for suffix in ["", "-wal"] {
        let mut p = path.clone().into_os_string();
        p.push(suffix);
        if let Ok(bytes) = std::fs::read(&p) {
            all.extend(bytes);
        }
    }
    String::from_utf8_lossy(&all).into_owned()
}

fn cleanup(path: &std::path::Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store() {
    let path = db_path("conformance");
    let store = SqliteStore::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    let p = path.clone();
    conformance::run(store, move || raw_text(p.clone())).await;
    cleanup(&path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_sqlite_store() {
    let path = db_path("cached");
    let store = SqliteStore::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    let p = path.clone();
    conformance::run(CachedResolver::new(store), move || raw_text(p.clone())).await;
    cleanup(&path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_change_feed() {
    let path = db_path("feed");
    let url = format!("sqlite://{}", path.display());
    let store = SqliteStore::connect(&url).await.unwrap();
    feed::logs_every_change(&store).await;
    feed::a_reader_never_skips_a_change(&store).await;
    feed::a_leak_revocation_is_logged(&store).await;
    feed::a_deletion_is_logged_as_a_revocation(&store).await;
    feed::an_import_is_logged(&store).await;
    store.pool().close().await;
    // A second handle on the same file, as a second process would have, that keeps no
    // change.
    let pruning = SqliteStore::builder(&url)
        .change_retention(std::time::Duration::ZERO)
        .connect()
        .await
        .unwrap();
    feed::a_reader_behind_the_retention_is_told(&pruning).await;
    pruning.pool().close().await;
    cleanup(&path);
}

/// A database made before the change log existed migrates forward, keys intact.
#[tokio::test]
async fn a_database_from_before_the_change_log_migrates_forward() {
    let path = db_path("forward");
    let url = format!("sqlite://{}", path.display());
    let store = SqliteStore::connect(&url).await.unwrap();
    let created = store.create(NewKey::new("acme"), "cli").await.unwrap();
    for sql in feed::BACK_TO_THE_FIRST_SCHEMA {
        sqlx::query(sql).execute(store.pool()).await.unwrap();
    }
    store.pool().close().await;
    let store = SqliteStore::connect(&url).await.unwrap();
    feed::migrated_forward(&store, &created.record).await;
    store.pool().close().await;
    cleanup(&path);
}

#[tokio::test]
async fn keys_survive_a_reopen_and_migrations_run_once() {
    let path = db_path("reopen");
    let url = format!("sqlite://{}", path.display());
    let created = {
        let store = SqliteStore::connect(&url).await.unwrap();
        let created = store.create(NewKey::new("acme"), "cli").await.unwrap();
        store.pool().close().await;
        created
    };
    // Opening again runs no migration twice and finds the key.
    let store = SqliteStore::connect(&url).await.unwrap();
    let found = store.resolve(&created.record.hash).await.unwrap();
    assert_eq!(found, Some(created.record.clone()));
    store.pool().close().await;
    // Without migrations, a fresh file has no schema: a clear error, not a panic.
    let empty = db_path("unmigrated");
    let bare = SqliteStore::builder(&format!("sqlite://{}", empty.display()))
        .migrate(false)
        .connect()
        .await
        .unwrap();
    assert!(bare.get("key_x").await.is_err());
    // Migrating that older database brings it forward; running again changes nothing.
    bare.migrate().await.unwrap();
    bare.migrate().await.unwrap();
    let created = bare.create(NewKey::new("acme"), "cli").await.unwrap();
    assert!(bare.get(&created.record.id).await.unwrap().is_some());
    bare.pool().close().await;
    cleanup(&path);
    cleanup(&empty);
}

/// A leak report and its audit entry (with URL and source) outlive a reopen; audit
/// entries written before the leak columns existed stay readable after the migration.
#[tokio::test]
async fn leak_reports_persist_and_older_audit_rows_stay_readable() {
    use tower_api_key::KeyStatus;
    use tower_api_key::store::AuditEvent;

    let path = db_path("leak");
    let url = format!("sqlite://{}", path.display());
    let store = SqliteStore::connect(&url).await.unwrap();
    let created = store.create(NewKey::new("acme"), "cli").await.unwrap();
    let id = created.record.id.clone();
    // Back to the schema before the leak columns: the `created` entry is an old row.
    for sql in [
        "ALTER TABLE api_key_audit DROP COLUMN url",
        "ALTER TABLE api_key_audit DROP COLUMN source",
        "DELETE FROM _sqlx_migrations WHERE version = 20261202000020",
    ] {
        sqlx::query(sql).execute(store.pool()).await.unwrap();
    }
    store.pool().close().await;

    let store = SqliteStore::connect(&url).await.unwrap();
    let old = store.audit(Some(&id)).await.unwrap();
    assert_eq!(old.len(), 1);
    assert_eq!(old[0].event, AuditEvent::Created);
    let leak_url = "https://github.com/octo/repo/commit/0123abc";
    store
        .report_leak(&id, leak_url, "commit", true, "github-secret-scanning")
        .await
        .unwrap();
    store.pool().close().await;

    let store = SqliteStore::connect(&url).await.unwrap();
    let log = store.audit(Some(&id)).await.unwrap();
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
    assert_eq!(log[1].actor, "github-secret-scanning");
    let record = store.resolve(&created.record.hash).await.unwrap().unwrap();
    assert_eq!(
        record.status(std::time::SystemTime::now()),
        KeyStatus::Revoked
    );
    store.pool().close().await;
    // The key's text is nowhere in the file.
    let text = raw_text(path.clone()).await;
    assert!(!text.contains(&created.key.expose_secret()[10..]));
    cleanup(&path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_outbox() {
    let path = db_path("outbox");
    let store = SqliteStore::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    outbox::run(&store).await;
    let pool = store.pool().clone();
    outbox::rolled_back_changes_announce_nothing(&store, outbox::SQLITE_REFUSAL, async |sql| {
        sqlx::raw_sql(sql).execute(&pool).await.unwrap();
    })
    .await;
    cleanup(&path);
}
