//! Usage tracking: counts reach the store in batches, off the request path.

use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::{Request, StatusCode};
use tower::ServiceExt;
use tower_api_key::store::NewKey;
use tower_api_key::usage::{UsageLayer, UsageRecorder};
use tower_api_key::{
    ApiKeyLayer, KeyStore, MemoryRateLimitStore, MemoryStore, RateLimitLayer, RateLimitPolicy,
};

#[tokio::test]
async fn ten_thousand_requests_make_one_store_write() {
    let store = MemoryStore::new();
    let created = store.create(NewKey::new("acme"), "test").await.unwrap();
    // Only the final flush: the interval is far longer than the test.
    let recorder = UsageRecorder::spawn(store.clone(), Duration::from_secs(3600));
    // 9000 at once, then one more every 400 s: the loop below can never earn one more
    // (with 9000/1h it did whenever the loop took over 0.4 s, as on a busy CI machine).
    let policy: RateLimitPolicy = "9000/1000h".parse().unwrap();
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(RateLimitLayer::new(MemoryRateLimitStore::new(), policy))
        .layer(UsageLayer::new(recorder.clone()))
        .layer(ApiKeyLayer::new(store.clone()));
    let bearer = format!("Bearer {}", created.key.expose_secret());
    let mut limited = 0;
    for _ in 0..10_000 {
        let req = Request::get("/")
            .header("authorization", &bearer)
            .body(Body::empty())
            .unwrap();
        if app.clone().oneshot(req).await.unwrap().status() == StatusCode::TOO_MANY_REQUESTS {
            limited += 1;
        }
    }
    assert_eq!(limited, 1000);
    // Nothing was written while requests were served.
    assert_eq!(recorder.flushes(), 0);
    assert_eq!(
        store
            .usage(&created.record.id)
            .await
            .unwrap()
            .unwrap()
            .requests,
        0
    );
    recorder.shutdown().await;
    assert_eq!(recorder.flushes(), 1, "one batch for 10 000 requests");
    let usage = store.usage(&created.record.id).await.unwrap().unwrap();
    assert_eq!((usage.requests, usage.rejected), (9000, 1000));
    assert!(usage.last_used_at.is_some());
    // Shutting down twice is fine.
    recorder.shutdown().await;
}

#[tokio::test]
async fn counts_are_flushed_every_interval() {
    let store = MemoryStore::new();
    let created = store.create(NewKey::new("acme"), "test").await.unwrap();
    let recorder = UsageRecorder::spawn(store.clone(), Duration::from_millis(20));
    recorder.record(&created.record.id, false, SystemTime::now());
    recorder.record(&created.record.id, true, SystemTime::now());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let usage = store.usage(&created.record.id).await.unwrap().unwrap();
        if usage.requests == 1 {
            assert_eq!(usage.rejected, 1);
            break;
        }
        assert!(Instant::now() < deadline, "never flushed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    recorder.shutdown().await;
}

#[tokio::test]
async fn past_the_bound_counts_are_dropped_and_counted() {
    let store = MemoryStore::new();
    let recorder = UsageRecorder::spawn_with_max_keys(store, Duration::from_secs(3600), 16);
    for i in 0..10_000 {
        recorder.record(&format!("key_{i}"), false, SystemTime::now());
    }
    // At most one key per shard is kept; every other count is dropped, and counted.
    assert!(recorder.dropped() >= 10_000 - 16, "{}", recorder.dropped());
    recorder.shutdown().await;
}
