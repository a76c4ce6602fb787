//! The behaviour every `ChangeFeed` must have: one test body, run against each store.

use std::collections::HashSet;
use std::time::Duration;

use tower_api_key::store::{
    ChangeFeed, ChangeKind, Changes, ImportedKey, KeyChange, NewKey, UsageDelta,
};
use tower_api_key::{CachedResolver, KeyHash, KeyStore, Scopes, StoreError};

/// The changes after `after`, which must not be a gap.
async fn after<S: ChangeFeed>(store: &S, after: u64) -> Vec<KeyChange> {
    match store.changes_after(after, 1000).await.unwrap() {
        Changes::Next(changes) => changes,
        Changes::Gap { .. } => panic!("a gap after {after}"),
    }
}

fn kinds(changes: &[KeyChange]) -> Vec<(ChangeKind, KeyHash)> {
    changes.iter().map(|c| (c.kind, c.hash)).collect()
}

/// Every change that can make a cached record wrong is logged, in order, once; nothing
/// else is, and a change that fails (its transaction rolled back) logs nothing.
pub(crate) async fn logs_every_change<S>(store: &S)
where
    S: KeyStore + ChangeFeed + Clone,
{
    let start = store.last_seq().await.unwrap();
    assert!(after(store, start).await.is_empty());

    let a = store.create(NewKey::new("acme"), "admin").await.unwrap();
    let b = store.create(NewKey::new("acme"), "admin").await.unwrap();
    let (ha, hb) = (a.record.hash, b.record.hash);
    store.revoke(&a.record.id, "admin").await.unwrap();
    // Revoking again changes nothing, and logs nothing.
    store.revoke(&a.record.id, "admin").await.unwrap();
    let rotated = store
        .rotate(&b.record.id, Duration::from_secs(60), "admin")
        .await
        .unwrap();
    let hc = rotated.record.hash;
    store
        .set_scopes(
            &rotated.record.id,
            Scopes::parse(["orders:read"]).unwrap(),
            "admin",
        )
        .await
        .unwrap();
    store
        .set_expiry(&rotated.record.id, None, "admin")
        .await
        .unwrap();
    let networks = vec!["10.0.0.0/8".parse().unwrap()];
    store
        .set_allowed_ips(&rotated.record.id, networks, "admin")
        .await
        .unwrap();
    // Usage is no change to a record.
    store
        .record_usage(&[UsageDelta {
            key_id: rotated.record.id.clone(),
            requests: 3,
            rejected: 0,
            last_used_at: std::time::SystemTime::now(),
            minutes: Vec::new(),
        }])
        .await
        .unwrap();
    // Changes that fail leave no trace: a grace too long, an unknown id.
    assert!(matches!(
        store
            .rotate(&rotated.record.id, Duration::MAX, "admin")
            .await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        store.set_scopes("key_nope", Scopes::empty(), "admin").await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.set_allowed_ips("key_nope", Vec::new(), "admin").await,
        Err(StoreError::NotFound(_))
    ));

    let changes = after(store, start).await;
    assert_eq!(
        kinds(&changes),
        [
            (ChangeKind::Created, ha),
            (ChangeKind::Created, hb),
            (ChangeKind::Revoked, ha),
            (ChangeKind::Rotated, hb),
            (ChangeKind::Created, hc),
            (ChangeKind::ScopesChanged, hc),
            (ChangeKind::ExpiryChanged, hc),
            (ChangeKind::AllowedIpsChanged, hc),
        ]
    );
    assert_eq!(changes[2].key_id, a.record.id);
    assert!(changes.windows(2).all(|w| w[0].seq < w[1].seq));
    assert!(changes[0].seq > start);
    let last = changes.last().unwrap().seq;
    assert_eq!(store.last_seq().await.unwrap(), last);
    // Paging: a limit, then on from the last one read.
    let Changes::Next(first) = store.changes_after(start, 2).await.unwrap() else {
        panic!("a gap");
    };
    assert_eq!(first, changes[..2]);
    assert_eq!(after(store, first[1].seq).await, changes[2..]);
    assert!(after(store, last).await.is_empty());
    // A reader ahead of the log (the database was restored from a backup, say) is told
    // it cannot know what it missed.
    assert_eq!(
        store.changes_after(last + 10, 100).await.unwrap(),
        Changes::Gap { last_seq: last }
    );

    // A cache over the store, as the admin API uses it, logs through the store.
    let cached = CachedResolver::new(store.clone());
    cached.revoke(&rotated.record.id, "admin").await.unwrap();
    assert_eq!(
        kinds(&after(store, last).await),
        [(ChangeKind::Revoked, hc)]
    );
}

/// Concurrent writers, and a reader reading all along: the reader sees every change,
/// though it only ever asks for what comes after the last one it read. (A sequence
/// that became visible after a larger one would be skipped.)
pub(crate) async fn a_reader_never_skips_a_change<S>(store: &S)
where
    S: KeyStore + ChangeFeed + Clone,
{
    let start = store.last_seq().await.unwrap();
    let writers: Vec<_> = (0..40)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let created = store
                    .create(NewKey::new(format!("c{i}")), "admin")
                    .await
                    .unwrap();
                store.revoke(&created.record.id, "admin").await.unwrap();
                created.record.hash
            })
        })
        .collect();
    let reader = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut last = start;
            let mut seen = Vec::new();
            // Read until 80 changes have come, with a deadline.
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while seen.len() < 80 {
                assert!(std::time::Instant::now() < deadline, "saw {}", seen.len());
                for change in after(&store, last).await {
                    last = change.seq;
                    seen.push((change.kind, change.hash));
                }
                tokio::task::yield_now().await;
            }
            seen
        })
    };
    let mut written = HashSet::new();
    for writer in writers {
        written.insert(writer.await.unwrap());
    }
    let seen = reader.await.unwrap();
    for kind in [ChangeKind::Created, ChangeKind::Revoked] {
        let hashes: HashSet<KeyHash> = seen
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, h)| *h)
            .collect();
        assert_eq!(hashes, written, "{kind:?}");
    }
}

/// `store` keeps no change (retention zero): a reader behind is told of the gap, and
/// goes on from the newest sequence.
pub(crate) async fn a_reader_behind_the_retention_is_told<S>(store: &S)
where
    S: KeyStore + ChangeFeed,
{
    let start = store.last_seq().await.unwrap();
    store.create(NewKey::new("acme"), "admin").await.unwrap();
    store.create(NewKey::new("acme"), "admin").await.unwrap();
    let last = store.last_seq().await.unwrap();
    assert!(last >= start + 2, "sequences still grow when pruned");
    match store.changes_after(start, 100).await.unwrap() {
        Changes::Gap { last_seq } => assert_eq!(last_seq, last),
        Changes::Next(changes) => panic!("no gap: {changes:?}"),
    }
    assert_eq!(
        store.changes_after(last, 100).await.unwrap(),
        Changes::Next(Vec::new())
    );
    store.create(NewKey::new("acme"), "admin").await.unwrap();
    assert!(store.last_seq().await.unwrap() > last);
}

/// What takes a database back to the schema of the first release (before the log).
#[allow(dead_code)] // for the SQL stores' tests; the memory store's has no schema
pub(crate) const BACK_TO_THE_FIRST_SCHEMA: [&str; 12] = [
    "ALTER TABLE api_keys DROP COLUMN deleted_at",
    "DROP TABLE api_key_usage",
    "DROP INDEX api_keys_by_expiry",
    "ALTER TABLE api_keys DROP COLUMN expiring_announced_for",
    "ALTER TABLE api_keys DROP COLUMN expired_announced_for",
    "DROP TABLE api_key_events",
    "ALTER TABLE api_keys DROP COLUMN allowed_ips",
    "DROP TABLE api_key_changes",
    "DROP TABLE api_key_changes_pruned",
    "ALTER TABLE api_key_audit DROP COLUMN url",
    "ALTER TABLE api_key_audit DROP COLUMN source",
    "DELETE FROM _sqlx_migrations WHERE version > 20261123000001",
];

/// `store` was opened on a database taken back to the first schema after `before` was
/// created in it: the key is there, the log starts empty, and changes are logged.
#[allow(dead_code)] // for the SQL stores' tests
pub(crate) async fn migrated_forward<S: KeyStore + ChangeFeed>(
    store: &S,
    before: &tower_api_key::KeyRecord,
) {
    assert_eq!(
        store.resolve(&before.hash).await.unwrap().as_ref(),
        Some(before)
    );
    assert_eq!(store.last_seq().await.unwrap(), 0);
    store.revoke(&before.id, "cli").await.unwrap();
    assert_eq!(
        kinds(&after(store, 0).await),
        [(ChangeKind::Revoked, before.hash)]
    );
}

/// A leak report that revokes reaches the feed as a revocation does; one that only
/// notifies, or that finds the key revoked already, logs no change.
#[allow(dead_code)] // not every including crate calls it
pub(crate) async fn a_leak_revocation_is_logged<S: KeyStore + ChangeFeed>(store: &S) {
    let a = store.create(NewKey::new("acme"), "admin").await.unwrap();
    let start = store.last_seq().await.unwrap();
    store
        .report_leak(
            &a.record.id,
            "https://example.com",
            "content",
            false,
            "github",
        )
        .await
        .unwrap();
    assert!(
        after(store, start).await.is_empty(),
        "notify changes no record"
    );
    store
        .report_leak(
            &a.record.id,
            "https://example.com",
            "content",
            true,
            "github",
        )
        .await
        .unwrap();
    store
        .report_leak(
            &a.record.id,
            "https://example.com",
            "content",
            true,
            "github",
        )
        .await
        .unwrap();
    assert_eq!(
        kinds(&after(store, start).await),
        [(ChangeKind::Revoked, a.record.hash)]
    );
}

/// Deleting an active key reaches the feed as its revocation; deleting a revoked key
/// (whose record a cache may hold as it is: it fails either way) logs nothing, and
/// neither does a delete that fails.
#[allow(dead_code)] // not every including crate calls it
pub(crate) async fn a_deletion_is_logged_as_a_revocation<S: KeyStore + ChangeFeed>(store: &S) {
    let a = store.create(NewKey::new("acme"), "admin").await.unwrap();
    let b = store.create(NewKey::new("acme"), "admin").await.unwrap();
    store.revoke(&b.record.id, "admin").await.unwrap();
    let start = store.last_seq().await.unwrap();
    store.delete(&a.record.id, "admin").await.unwrap();
    store.delete(&b.record.id, "admin").await.unwrap();
    assert!(matches!(
        store.delete(&a.record.id, "admin").await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(
        kinds(&after(store, start).await),
        [(ChangeKind::Revoked, a.record.hash)]
    );
}

/// An import logs a `created` change for each imported key, in the order of the rows;
/// a failed import logs nothing.
pub(crate) async fn an_import_is_logged<S: KeyStore + ChangeFeed>(store: &S) {
    let start = store.last_seq().await.unwrap();
    let hashes: Vec<KeyHash> = (0..3)
        .map(|i| KeyHash::of(&format!("doda_feed_{i}_{start}")))
        .collect();
    let rows = |h: &[KeyHash]| h.iter().map(|&h| ImportedKey::new(h, "legacy")).collect();
    let records = store.import(rows(&hashes), "admin").await.unwrap();
    let changes = after(store, start).await;
    assert_eq!(
        kinds(&changes),
        hashes
            .iter()
            .map(|&h| (ChangeKind::Created, h))
            .collect::<Vec<_>>()
    );
    let ids: Vec<&str> = changes.iter().map(|c| c.key_id.as_str()).collect();
    let want: Vec<&str> = records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, want);
    let seq = store.last_seq().await.unwrap();
    let fresh = KeyHash::of(&format!("doda_feed_fresh_{start}"));
    assert!(
        store
            .import(rows(&[fresh, hashes[0]]), "admin")
            .await
            .is_err()
    );
    assert!(
        after(store, seq).await.is_empty(),
        "a failed import logs nothing"
    );
}
