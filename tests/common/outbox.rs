//! The webhook outbox every store must keep: one test body, run against each store.

use std::time::{Duration, SystemTime};

use tower_api_key::store::{
    Attempt, DeliveryState, EventType, KeyEvent, ListQuery, NewKey, WebhookOutbox,
};
use tower_api_key::{KeyStore, StoreError};

/// Runs every check against `store`, which must be empty.
pub(crate) async fn run<S: KeyStore + WebhookOutbox>(store: &S) {
    changes_write_their_events(store).await;
    claims_lease_and_attempts_are_recorded(store).await;
    expiries_are_announced_once(store).await;
}

fn types(events: &[KeyEvent]) -> Vec<EventType> {
    events.iter().map(|e| e.event_type).collect()
}

/// Claims everything due within a year (the expiry checks announce at times ahead),
/// and settles it, so that later checks start clean.
async fn drain<S: WebhookOutbox>(store: &S) -> Vec<KeyEvent> {
    let now = SystemTime::now() + Duration::from_secs(365 * 86_400);
    let events = store
        .claim_due(now, now + Duration::from_secs(60), 1000)
        .await
        .unwrap();
    for e in &events {
        let done = Attempt::Delivered {
            at: now,
            status: 200,
        };
        store.record_attempt(&e.id, &done).await.unwrap();
    }
    events
}

async fn changes_write_their_events<S: KeyStore + WebhookOutbox>(store: &S) {
    let created = store
        .create(NewKey::new("acme").with_name("ci"), "admin")
        .await
        .unwrap();
    let id = created.record.id.clone();
    let events = drain(store).await;
    assert_eq!(types(&events), [EventType::KeyCreated]);
    let data = &events[0].data;
    assert_eq!(
        (
            data.key_id.as_str(),
            data.consumer.as_str(),
            data.name.as_str()
        ),
        (id.as_str(), "acme", "ci")
    );
    assert_eq!(data.start, created.record.start);
    assert!(events[0].id.starts_with("msg_"));

    let successor = store
        .rotate(&id, Duration::from_secs(60), "admin")
        .await
        .unwrap();
    let events = drain(store).await;
    assert_eq!(
        types(&events),
        [EventType::KeyRotated, EventType::KeyCreated]
    );
    assert_eq!(events[0].data.key_id, id);
    assert_eq!(
        events[0].data.new_key_id.as_deref(),
        Some(successor.record.id.as_str())
    );
    assert!(events[0].data.expires_at.is_some(), "the end of the grace");
    assert_eq!(events[1].data.key_id, successor.record.id);

    store.revoke(&id, "admin").await.unwrap();
    // Revoking again changes nothing, and announces nothing.
    store.revoke(&id, "admin").await.unwrap();
    // A change that fails announces nothing.
    assert!(matches!(
        store.revoke("key_missing", "admin").await,
        Err(StoreError::NotFound(_))
    ));
    assert!(
        store
            .rotate("key_missing", Duration::ZERO, "admin")
            .await
            .is_err()
    );
    assert!(
        store
            .report_leak("key_missing", "u", "s", true, "github")
            .await
            .is_err()
    );
    let events = drain(store).await;
    assert_eq!(types(&events), [EventType::KeyRevoked]);
    assert!(events[0].data.revoked_at.is_some());

    let sid = &successor.record.id;
    store
        .report_leak(sid, "https://x/y", "commit", false, "github")
        .await
        .unwrap();
    store
        .report_leak(sid, "https://x/z", "content", true, "github")
        .await
        .unwrap();
    let events = drain(store).await;
    assert_eq!(
        types(&events),
        [
            EventType::KeyLeaked,
            EventType::KeyLeaked,
            EventType::KeyRevoked
        ]
    );
    assert_eq!(events[0].data.url.as_deref(), Some("https://x/y"));
    assert_eq!(events[1].data.source.as_deref(), Some("content"));
    assert!(events[0].data.revoked_at.is_none() && events[1].data.revoked_at.is_some());

    // Deleting an active key announces its revocation; deleting a revoked key (the
    // leak revoked the successor), or a deleted one, announces nothing.
    let doomed = store.create(NewKey::new("acme"), "admin").await.unwrap();
    drain(store).await;
    store.delete(&doomed.record.id, "admin").await.unwrap();
    store.delete(sid, "admin").await.unwrap();
    assert!(matches!(
        store.delete(&doomed.record.id, "admin").await,
        Err(StoreError::NotFound(_))
    ));
    let events = drain(store).await;
    assert_eq!(types(&events), [EventType::KeyRevoked]);
    assert_eq!(events[0].data.key_id, doomed.record.id);
    assert!(events[0].data.revoked_at.is_some());

    // One key's events, newest first, and no other key's.
    let of_doomed = store.deliveries(Some(&doomed.record.id), 10).await.unwrap();
    let kinds: Vec<EventType> = of_doomed.iter().map(|d| d.event_type).collect();
    assert_eq!(kinds, [EventType::KeyRevoked, EventType::KeyCreated]);
    assert!(of_doomed.iter().all(|d| d.key_id == doomed.record.id));
    let of_sid = store.deliveries(Some(sid), 2).await.unwrap();
    assert_eq!(of_sid.len(), 2, "at most the limit");
    assert!(of_sid.iter().all(|d| &d.key_id == sid));
    assert!(
        store
            .deliveries(Some("key_none"), 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn claims_lease_and_attempts_are_recorded<S: KeyStore + WebhookOutbox>(store: &S) {
    store.create(NewKey::new("a"), "admin").await.unwrap();
    store.create(NewKey::new("b"), "admin").await.unwrap();
    let now = SystemTime::now() + Duration::from_millis(1);
    let lease = now + Duration::from_secs(30);
    let first = store.claim_due(now, lease, 1).await.unwrap();
    assert_eq!(first.len(), 1, "no more than the limit");
    assert_eq!(first[0].attempts, 1);
    assert_eq!(first[0].data.consumer, "a", "oldest first");
    let second = store.claim_due(now, lease, 10).await.unwrap();
    assert_eq!(second.len(), 1, "a leased event is not claimed twice");
    assert_ne!(second[0].id, first[0].id);
    assert!(store.claim_due(now, lease, 10).await.unwrap().is_empty());

    // A failure with a retry time makes it due then; the lease's end makes the other due.
    let retry = now + Duration::from_secs(5);
    let failed = Attempt::Failed {
        at: now,
        status: Some(503),
        error: "the receiver answered 503".into(),
        retry_at: Some(retry),
    };
    store.record_attempt(&first[0].id, &failed).await.unwrap();
    let log = store.deliveries(None, 2).await.unwrap();
    let entry = log.iter().find(|d| d.id == first[0].id).unwrap();
    assert_eq!(entry.state, DeliveryState::Pending);
    assert_eq!(entry.last_status, Some(503));
    assert_eq!(entry.next_attempt_at, Some(retry));
    assert_eq!(entry.last_attempt_at, Some(now));
    assert!(
        store
            .claim_due(retry - Duration::from_millis(1), lease, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let again = store
        .claim_due(retry, lease + Duration::from_secs(60), 10)
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(
        (again[0].id.as_str(), again[0].attempts),
        (first[0].id.as_str(), 2)
    );
    let after_lease = store.claim_due(lease, lease, 10).await.unwrap();
    assert_eq!(
        after_lease.len(),
        1,
        "a lease that ran out is claimed again"
    );
    assert_eq!(after_lease[0].id, second[0].id);

    // Giving up, and delivering.
    let give_up = Attempt::Failed {
        at: now,
        status: None,
        error: "connection refused".into(),
        retry_at: None,
    };
    store.record_attempt(&first[0].id, &give_up).await.unwrap();
    let done = Attempt::Delivered {
        at: now,
        status: 204,
    };
    store.record_attempt(&second[0].id, &done).await.unwrap();
    // A late failure of an event already delivered (a lease that ran out) changes nothing.
    store.record_attempt(&second[0].id, &failed).await.unwrap();
    store.record_attempt("msg_unknown", &done).await.unwrap();
    let log = store.deliveries(None, 2).await.unwrap();
    assert_eq!(log[0].id, second[0].id, "newest first");
    assert_eq!(log[0].state, DeliveryState::Delivered);
    assert_eq!(log[0].last_status, Some(204));
    assert_eq!(log[0].delivered_at, Some(now));
    assert_eq!(log[0].next_attempt_at, None);
    assert_eq!(log[1].state, DeliveryState::Failed);
    assert_eq!(log[1].last_error.as_deref(), Some("connection refused"));
    assert_eq!(log[1].last_status, None);
    assert_eq!(log[1].next_attempt_at, None);
    assert_eq!(log[1].attempts, 2);
    assert!(
        store
            .claim_due(lease + Duration::from_secs(3600), lease, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn expiries_are_announced_once<S: KeyStore + WebhookOutbox>(store: &S) {
    let now = SystemTime::now();
    let day = Duration::from_secs(86_400);
    let notice = 7 * day;
    let soon = store
        .create(NewKey::new("e").with_expires_at(now + day), "admin")
        .await
        .unwrap();
    let far = store
        .create(NewKey::new("e").with_expires_at(now + 30 * day), "admin")
        .await
        .unwrap();
    let revoked = store
        .create(NewKey::new("e").with_expires_at(now + day), "admin")
        .await
        .unwrap();
    store.revoke(&revoked.record.id, "admin").await.unwrap();
    drain(store).await;

    assert_eq!(store.announce_expiries(now, notice).await.unwrap(), 1);
    assert_eq!(
        store.announce_expiries(now, notice).await.unwrap(),
        0,
        "once"
    );
    let events = drain(store).await;
    assert_eq!(types(&events), [EventType::KeyExpiring]);
    assert_eq!(events[0].data.key_id, soon.record.id);

    // Past the expiry: expired, once. The far key comes into its notice.
    let later = now + 2 * day;
    assert_eq!(store.announce_expiries(later, 29 * day).await.unwrap(), 2);
    assert_eq!(store.announce_expiries(later, 29 * day).await.unwrap(), 0);
    let mut events = drain(store).await;
    events.sort_by_key(|e| e.event_type.name());
    assert_eq!(
        types(&events),
        [EventType::KeyExpired, EventType::KeyExpiring]
    );
    assert_eq!(events[0].data.key_id, soon.record.id);
    assert_eq!(events[1].data.key_id, far.record.id);

    // A new expiry time is a new announcement.
    store
        .set_expiry(&soon.record.id, Some(now + 3 * day), "admin")
        .await
        .unwrap();
    drain(store).await;
    assert_eq!(store.announce_expiries(later, notice).await.unwrap(), 1);
    assert_eq!(types(&drain(store).await), [EventType::KeyExpiring]);
}

/// The consumer whose changes the trigger of [`rolled_back_changes_announce_nothing`]
/// refuses.
const MARKED: &str = "rollback-marked";

/// SQL that makes every write to the change log for a key of [`MARKED`] fail, and SQL
/// that takes that away again: the change log is the last table a change writes, so the
/// change's outbox row is written by then and must go with its transaction.
#[allow(dead_code)] // each store's test uses one
pub(crate) const SQLITE_REFUSAL: (&str, &str) = (
    "CREATE TRIGGER refuse_marked_changes BEFORE INSERT ON api_key_changes \
     WHEN EXISTS (SELECT 1 FROM api_keys WHERE id = NEW.key_id AND consumer = 'rollback-marked') \
     BEGIN SELECT RAISE(ABORT, 'refused by the test'); END",
    "DROP TRIGGER refuse_marked_changes",
);

/// As [`SQLITE_REFUSAL`], for PostgreSQL.
#[allow(dead_code)]
pub(crate) const POSTGRES_REFUSAL: (&str, &str) = (
    "CREATE FUNCTION refuse_marked_changes() RETURNS trigger LANGUAGE plpgsql AS $$ \
     BEGIN \
       IF EXISTS (SELECT 1 FROM api_keys WHERE id = NEW.key_id AND consumer = 'rollback-marked') THEN \
         RAISE EXCEPTION 'refused by the test'; \
       END IF; \
       RETURN NEW; \
     END $$; \
     CREATE TRIGGER refuse_marked_changes BEFORE INSERT ON api_key_changes \
     FOR EACH ROW EXECUTE FUNCTION refuse_marked_changes()",
    "DROP TRIGGER refuse_marked_changes ON api_key_changes; \
     DROP FUNCTION refuse_marked_changes()",
);

/// Changes whose transaction really aborts (`exec` runs the SQL of `refusal`, as
/// [`SQLITE_REFUSAL`]) leave no event in the outbox, nor the change itself, while others
/// go on; once the refusal is gone, the same change commits and announces.
#[allow(dead_code)] // for the SQL stores' tests
pub(crate) async fn rolled_back_changes_announce_nothing<S, F>(
    store: &S,
    refusal: (&str, &str),
    exec: F,
) where
    S: KeyStore + WebhookOutbox,
    F: AsyncFn(&str),
{
    drain(store).await;
    let marked = store
        .create(NewKey::new(MARKED).with_name("marked"), "admin")
        .await
        .unwrap();
    let id = marked.record.id.clone();
    assert_eq!(types(&drain(store).await), [EventType::KeyCreated]);
    let audit_before = store.audit(Some(&id)).await.unwrap().len();
    let keys_of = async || {
        store
            .list(&ListQuery::default().consumer(MARKED))
            .await
            .unwrap()
            .records
    };

    exec(refusal.0).await;
    let refused = |what: &str, result: Result<(), StoreError>| {
        assert!(result.is_err(), "{what} committed past the trigger");
    };
    refused(
        "a create",
        store.create(NewKey::new(MARKED), "admin").await.map(drop),
    );
    refused("a revoke", store.revoke(&id, "admin").await.map(drop));
    refused(
        "a rotation",
        store
            .rotate(&id, Duration::from_secs(60), "admin")
            .await
            .map(drop),
    );
    refused(
        "a leak report that revokes",
        store
            .report_leak(&id, "https://x/leak", "content", true, "github")
            .await
            .map(drop),
    );
    refused("a delete", store.delete(&id, "admin").await.map(drop));
    // None of them left anything: no key, no change to the key, no audit entry, no event.
    let keys = keys_of().await;
    assert_eq!(keys.len(), 1, "the refused create left a key");
    let record = &keys[0];
    assert!(record.revoked_at.is_none() && record.deleted_at.is_none());
    assert_eq!(
        record.expires_at, None,
        "the refused rotation left its grace"
    );
    assert_eq!(store.audit(Some(&id)).await.unwrap().len(), audit_before);
    let due = drain(store).await;
    assert!(due.is_empty(), "events of rolled-back changes: {due:?}");
    assert!(
        store
            .deliveries(None, 1000)
            .await
            .unwrap()
            .iter()
            .all(|d| d.key_id != id || d.event_type == EventType::KeyCreated),
        "the outbox holds an event of a rolled-back change"
    );
    // Another consumer's changes go on, and announce.
    let other = store
        .create(NewKey::new("unmarked"), "admin")
        .await
        .unwrap();
    let due = drain(store).await;
    assert_eq!(types(&due), [EventType::KeyCreated]);
    assert_eq!(due[0].data.key_id, other.record.id);

    exec(refusal.1).await;
    store.revoke(&id, "admin").await.unwrap();
    let due = drain(store).await;
    assert_eq!(types(&due), [EventType::KeyRevoked]);
    assert_eq!(due[0].data.key_id, id);
    assert_eq!(
        store.deliveries(Some(&id), 10).await.unwrap().len(),
        2,
        "the key's events: created and revoked"
    );
}
