//! Webhooks end to end: a real HTTP receiver that checks every signature, fails for a
//! while and then recovers, with the deliverer restarted in between on the same SQLite
//! file. Every event arrives, none is sent for a change that rolled back, and expiries
//! are announced once.
#![cfg(all(feature = "sqlite", feature = "webhooks"))]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use tower_api_key::store::{
    Delivery, DeliveryState, EventType, NewKey, SqliteStore, WebhookOutbox,
};
use tower_api_key::webhook::{WebhookConfig, WebhookDeliverer, WebhookSecret};
use tower_api_key::{KeyStore, StoreError};

#[path = "common/receiver.rs"]
mod receiver;

use receiver::Receiver;

/// A receiver that fails (503) until told to recover.
async fn start_receiver(secret: WebhookSecret) -> (std::sync::Arc<Receiver>, SocketAddr) {
    Receiver::start(secret, true).await
}

fn db_path() -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    std::env::temp_dir().join(format!(
        "tower-api-key-webhooks-{}-{nanos}.db",
        std::process::id()
    ))
}

/// Polls `check` until it holds, or fails after a deadline.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_millis(400);

fn config(addr: SocketAddr, secret: &WebhookSecret) -> WebhookConfig {
    WebhookConfig::new(&format!("http://{addr}/hooks"), secret.clone())
        .unwrap()
        .backoff(FIRST_BACKOFF, MAX_BACKOFF)
        .poll_interval(Duration::from_millis(10))
        .scan_interval(Duration::from_millis(50))
        .timeout(Duration::from_secs(1))
        .expiring_notice(Duration::from_secs(3600))
        .concurrency(4)
}

async fn all(store: &SqliteStore) -> Vec<Delivery> {
    store.deliveries(None, 1000).await.unwrap()
}

/// How many distinct messages of `event_type` the receiver got for `key_id`.
fn messages(rx: &Receiver, event_type: &str, key_id: &str) -> usize {
    rx.messages(event_type, key_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_signed_through_failures_and_a_restart() {
    let secret = WebhookSecret::generate();
    let (rx, addr) = start_receiver(secret.clone()).await;
    let path = db_path();
    let url = format!("sqlite://{}", path.display());
    let store = SqliteStore::connect(&url).await.unwrap();
    let deliverer = WebhookDeliverer::spawn(store.clone(), config(addr, &secret));

    // Changes of every kind, while the receiver fails.
    let now = SystemTime::now();
    let mut secrets = Vec::new();
    let soon = store
        .create(
            NewKey::new("acme")
                .with_name("expires soon")
                .with_expires_at(now + Duration::from_millis(700)),
            "admin",
        )
        .await
        .unwrap();
    let later = store
        .create(
            NewKey::new("acme")
                .with_name("expires later")
                .with_expires_at(now + Duration::from_secs(1800)),
            "admin",
        )
        .await
        .unwrap();
    let rotated = store
        .rotate(&later.record.id, Duration::from_secs(3600), "admin")
        .await
        .unwrap();
    let leaked = store
        .create(NewKey::new("globex").with_name("leaky"), "admin")
        .await
        .unwrap();
    store
        .report_leak(
            &leaked.record.id,
            "https://github.com/o/r/blob/x",
            "content",
            true,
            "github",
        )
        .await
        .unwrap();
    for created in [&soon, &later, &rotated, &leaked] {
        secrets.push(created.key.expose_secret().to_owned());
    }

    // Changes that roll back announce nothing: a revoke of a missing key, and a revoke
    // whose transaction fails after the outbox row was written.
    assert!(matches!(
        store.revoke("key_missing", "admin").await,
        Err(StoreError::NotFound(_))
    ));
    let doomed = store
        .create(NewKey::new("initech").with_name("doomed revoke"), "admin")
        .await
        .unwrap();
    secrets.push(doomed.key.expose_secret().to_owned());
    sqlx::query(
        "CREATE TRIGGER fail_revocations BEFORE INSERT ON api_key_changes \
         WHEN NEW.kind = 'revoked' BEGIN SELECT RAISE(ABORT, 'refused by the test'); END",
    )
    .execute(store.pool())
    .await
    .unwrap();
    assert!(store.revoke(&doomed.record.id, "admin").await.is_err());
    sqlx::query("DROP TRIGGER fail_revocations")
        .execute(store.pool())
        .await
        .unwrap();
    assert!(
        store
            .get(&doomed.record.id)
            .await
            .unwrap()
            .unwrap()
            .revoked_at
            .is_none()
    );

    // Failures are retried with doubling backoff, as the delivery log shows.
    eventually("an event failed three times", async || {
        all(&store).await.iter().any(|d| d.attempts >= 3)
    })
    .await;
    for d in all(&store).await {
        if d.state == DeliveryState::Pending
            && d.last_status == Some(503)
            && let (Some(last), Some(next)) = (d.last_attempt_at, d.next_attempt_at)
        {
            let wait = next.duration_since(last).unwrap();
            let doublings = d.attempts.saturating_sub(1).min(31);
            let expected = (FIRST_BACKOFF * 2u32.pow(doublings)).min(MAX_BACKOFF);
            // An event claimed again just now has its lease as next_attempt_at.
            if wait <= MAX_BACKOFF {
                assert_eq!(wait, expected, "backoff after {} attempts", d.attempts);
            }
        }
    }
    let before_restart: u32 = all(&store).await.iter().map(|d| d.attempts).sum();

    // Restart: the deliverer goes away (mid-request, perhaps), a change is made while
    // it is down, and a new one starts on the same file.
    drop(deliverer);
    drop(store);
    let store = SqliteStore::connect(&url).await.unwrap();
    let while_down = store
        .create(NewKey::new("acme").with_name("made while down"), "admin")
        .await
        .unwrap();
    secrets.push(while_down.key.expose_secret().to_owned());
    let _deliverer = WebhookDeliverer::spawn(store.clone(), config(addr, &secret));
    eventually("attempts go on after the restart", async || {
        all(&store).await.iter().map(|d| d.attempts).sum::<u32>() > before_restart
    })
    .await;

    // The receiver recovers: everything arrives.
    rx.failing.store(false, Ordering::SeqCst);
    eventually("every event is delivered", async || {
        let deliveries = all(&store).await;
        deliveries
            .iter()
            .all(|d| d.state == DeliveryState::Delivered)
            && deliveries
                .iter()
                .any(|d| d.event_type == EventType::KeyExpired && d.key_id == soon.record.id)
    })
    .await;

    let deliveries = all(&store).await;
    let received = rx.received.lock().unwrap().bodies.clone();
    let in_outbox: BTreeSet<&str> = deliveries.iter().map(|d| d.id.as_str()).collect();
    let arrived: BTreeSet<&str> = received.keys().map(String::as_str).collect();
    assert_eq!(in_outbox, arrived, "every event arrived, and no other");
    assert_eq!(rx.bad_signatures.load(Ordering::SeqCst), 0);
    assert!(rx.refused.load(Ordering::SeqCst) >= 3);
    for d in &deliveries {
        assert_eq!(d.last_status, Some(204));
        assert!(d.delivered_at.is_some() && d.next_attempt_at.is_none());
        let body = &received[&d.id];
        assert_eq!(body["type"], d.event_type.name());
        assert_eq!(body["data"]["key_id"], d.key_id.as_str());
        assert!(body["timestamp"].as_str().unwrap().ends_with('Z'));
    }

    let one = |t: &str, id: &str| assert_eq!(messages(&rx, t, id), 1, "{t} for {id}");
    for created in [&soon, &later, &rotated, &leaked, &doomed, &while_down] {
        one("key.created", &created.record.id);
    }
    one("key.rotated", &later.record.id);
    one("key.leaked", &leaked.record.id);
    one("key.revoked", &leaked.record.id);
    one("key.expiring", &soon.record.id);
    one("key.expired", &soon.record.id);
    one("key.expiring", &later.record.id);
    one("key.expiring", &rotated.record.id);
    assert_eq!(messages(&rx, "key.revoked", &doomed.record.id), 0);
    assert_eq!(messages(&rx, "key.expired", &later.record.id), 0);
    assert!(
        !received
            .values()
            .any(|b| b["data"]["key_id"] == "key_missing")
    );

    // What the bodies say, and what they never say.
    let rotation = received
        .values()
        .find(|b| b["type"] == "key.rotated")
        .unwrap();
    assert_eq!(rotation["data"]["new_key_id"], rotated.record.id.as_str());
    assert_eq!(rotation["data"]["consumer"], "acme");
    let leak = received
        .values()
        .find(|b| b["type"] == "key.leaked")
        .unwrap();
    assert_eq!(leak["data"]["url"], "https://github.com/o/r/blob/x");
    assert_eq!(leak["data"]["source"], "content");
    assert_eq!(leak["data"]["start"], leaked.record.start.as_str());
    let everything = serde_json::to_string(&received).unwrap();
    for key in &secrets {
        assert!(
            !everything.contains(&key[key.len() - 40..]),
            "a body holds a key"
        );
    }
    assert!(!everything.contains("hash"));
    let text = secret.expose_secret();
    assert!(!everything.contains(&text[6..]));

    // Expiries are announced once, however often the scan runs.
    assert_eq!(
        store
            .announce_expiries(SystemTime::now(), Duration::from_secs(3600))
            .await
            .unwrap(),
        0
    );
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.clone().into_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
}

#[tokio::test]
async fn an_event_is_given_up_after_its_retry_window() {
    let secret = WebhookSecret::generate();
    let (rx, addr) = start_receiver(secret.clone()).await;
    let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
    let created = store.create(NewKey::new("acme"), "admin").await.unwrap();
    let config = config(addr, &secret).retry_for(Duration::from_millis(300));
    let _deliverer = WebhookDeliverer::spawn(store.clone(), config);
    eventually("the event is failed", async || {
        all(&store)
            .await
            .iter()
            .any(|d| d.state == DeliveryState::Failed)
    })
    .await;
    let d = &all(&store).await[0];
    assert_eq!(d.key_id, created.record.id);
    assert!(d.attempts >= 2);
    assert_eq!(d.last_status, Some(503));
    assert_eq!(d.last_error.as_deref(), Some("the receiver answered 503"));
    assert!(d.next_attempt_at.is_none());
    let refused = rx.refused.load(Ordering::SeqCst);
    // A failed event is not tried again.
    rx.failing.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(rx.refused.load(Ordering::SeqCst), refused);
    assert!(rx.received.lock().unwrap().bodies.is_empty());
}

/// Deliveries are bounded: with a receiver that holds every request open, no more than
/// the configured number are in flight at once, however many events are due, and as
/// each one is answered the next goes out, until every event has arrived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_are_bounded_in_flight_and_all_arrive() {
    const BOUND: usize = 3;
    const EVENTS: usize = 12;
    let secret = WebhookSecret::generate();
    let (rx, addr) = Receiver::holding(secret.clone()).await;
    let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
    let mut ids = Vec::new();
    for i in 0..EVENTS {
        let created = store
            .create(NewKey::new("acme").with_name(format!("key {i}")), "admin")
            .await
            .unwrap();
        ids.push(created.record.id);
    }
    // Requests are held for as long as the test likes: no timeout, no retry.
    let config = config(addr, &secret)
        .timeout(Duration::from_secs(600))
        .concurrency(BOUND);
    let _deliverer = WebhookDeliverer::spawn(store.clone(), config);

    // All twelve are due at once; the receiver holds what it gets.
    eventually("the bound is reached", async || rx.in_flight() >= BOUND).await;
    assert!(
        rx.max_in_flight() <= BOUND,
        "{} in flight",
        rx.max_in_flight()
    );
    let mut released = 0;
    while released < EVENTS {
        // One answered, and (while any are left) the next one goes out.
        rx.release(1);
        released += 1;
        let waiting = (EVENTS - released).min(BOUND);
        eventually("the next delivery goes out", async || {
            rx.count() == released && rx.in_flight() >= waiting
        })
        .await;
        assert!(
            rx.max_in_flight() <= BOUND,
            "{} in flight",
            rx.max_in_flight()
        );
        assert_eq!(rx.in_flight(), waiting);
    }
    assert_eq!(
        rx.max_in_flight(),
        BOUND,
        "the bound was used, not exceeded"
    );
    eventually("every event is recorded delivered", async || {
        all(&store)
            .await
            .iter()
            .all(|d| d.state == DeliveryState::Delivered)
    })
    .await;
    assert_eq!(rx.bad_signatures.load(Ordering::SeqCst), 0);
    for id in &ids {
        assert_eq!(rx.messages("key.created", id), 1, "{id}");
    }
    assert_eq!(rx.count(), EVENTS);
}
