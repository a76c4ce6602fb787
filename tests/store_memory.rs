//! The KeyStore conformance suite on MemoryStore, and on a CachedResolver over it.

use std::time::SystemTime;

use tower_api_key::store::NewKey;
use tower_api_key::{CachedResolver, KeyStatus, KeyStore, MemoryStore};

#[path = "common/conformance.rs"]
mod conformance;
#[path = "common/feed.rs"]
mod feed;
#[path = "common/outbox.rs"]
mod outbox;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_change_feed() {
    let store = MemoryStore::new();
    feed::logs_every_change(&store).await;
    feed::a_reader_never_skips_a_change(&store).await;
    feed::a_leak_revocation_is_logged(&store).await;
    feed::a_deletion_is_logged_as_a_revocation(&store).await;
    feed::an_import_is_logged(&store).await;
    let pruning = MemoryStore::new().with_change_retention(std::time::Duration::ZERO);
    feed::a_reader_behind_the_retention_is_told(&pruning).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store() {
    let store = MemoryStore::new();
    let dump = store.clone();
    conformance::run(store, || {
        let dump = dump.clone();
        async move { format!("{dump:?}") }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_memory_store() {
    let inner = MemoryStore::new();
    let dump = inner.clone();
    conformance::run(CachedResolver::new(inner), || {
        let dump = dump.clone();
        async move { format!("{dump:?}") }
    })
    .await;
}

#[tokio::test]
async fn a_cached_store_sees_its_own_revocation_at_once() {
    let cache = CachedResolver::new(MemoryStore::new());
    let created = cache.create(NewKey::new("acme"), "admin").await.unwrap();
    let hash = created.record.hash;
    let before = cache.lookup(&hash).await.unwrap().unwrap();
    assert_eq!(before.record().status(SystemTime::now()), KeyStatus::Active);
    cache.revoke(&created.record.id, "admin").await.unwrap();
    let after = cache.lookup(&hash).await.unwrap().unwrap();
    assert_eq!(after.record().status(SystemTime::now()), KeyStatus::Revoked);
}

#[tokio::test]
async fn memory_outbox() {
    outbox::run(&MemoryStore::new()).await;
}
