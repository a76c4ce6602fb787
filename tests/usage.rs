//! Usage tracking: counts reach the store in batches, off the request path.

use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::{Request, StatusCode};
use tower::ServiceExt;
use tower_api_key::store::{NewKey, Outcome};
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
    recorder.record(&created.record.id, Outcome::Allowed, SystemTime::now());
    recorder.record(&created.record.id, Outcome::RateLimited, SystemTime::now());
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
        recorder.record(&format!("key_{i}"), Outcome::Allowed, SystemTime::now());
    }
    // At most one key per shard is kept; every other count is dropped, and counted.
    assert!(recorder.dropped() >= 10_000 - 16, "{}", recorder.dropped());
    recorder.shutdown().await;
}

/// Every outcome of a known key reaches its series: allowed, rate limited (429),
/// forbidden by scope (403), and refused by the authentication layer (revoked,
/// expired, outside the allowlist); an unknown key reaches none.
#[tokio::test]
async fn every_outcome_is_counted_by_minute() {
    use tower_api_key::store::{UsageBucket, UsageStep};
    use tower_api_key::{PeerAddr, RequireScopeLayer, Scope, Scopes};

    let store = MemoryStore::new();
    let new = |name: &str| {
        NewKey::new("acme")
            .with_name(name)
            .with_scopes(Scopes::parse(["orders:read"]).unwrap())
    };
    let good = store.create(new("good"), "test").await.unwrap();
    let unscoped = store.create(NewKey::new("acme"), "test").await.unwrap();
    let revoked = store.create(new("revoked"), "test").await.unwrap();
    let expired = store.create(new("expired"), "test").await.unwrap();
    let fenced = store
        .create(
            new("fenced").with_allowed_ips(["10.0.0.0/8".parse().unwrap()]),
            "test",
        )
        .await
        .unwrap();
    store.revoke(&revoked.record.id, "test").await.unwrap();
    store
        .set_expiry(
            &expired.record.id,
            Some(SystemTime::now() - Duration::from_secs(1)),
            "test",
        )
        .await
        .unwrap();
    let recorder = UsageRecorder::spawn(store.clone(), Duration::from_secs(3600));
    let policy: RateLimitPolicy = "3/1000h".parse().unwrap();
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(RequireScopeLayer::new([Scope::from_static("orders:read")]))
        .layer(RateLimitLayer::new(MemoryRateLimitStore::new(), policy))
        .layer(UsageLayer::new(recorder.clone()))
        .layer(ApiKeyLayer::new(store.clone()).count_refusals(recorder.clone()));
    let call = |key: String| {
        let app = app.clone();
        async move {
            let mut req = Request::get("/")
                .header("authorization", format!("Bearer {key}"))
                .body(Body::empty())
                .unwrap();
            req.extensions_mut()
                .insert(PeerAddr("192.0.2.1:1234".parse().unwrap()));
            app.oneshot(req).await.unwrap().status()
        }
    };
    let secret = |c: &tower_api_key::store::CreatedKey| c.key.expose_secret().to_owned();
    let started = SystemTime::now();
    for _ in 0..5 {
        call(secret(&good)).await; // 3 allowed, then 2 rate limited
    }
    assert_eq!(call(secret(&unscoped)).await, StatusCode::FORBIDDEN);
    for key in [&revoked, &expired, &fenced] {
        for _ in 0..2 {
            let status = call(secret(key)).await;
            assert!(
                status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN,
                "{status}"
            );
        }
    }
    let unknown = tower_api_key::KeyFormat::default().generate();
    assert_eq!(
        call(unknown.expose_secret().to_owned()).await,
        StatusCode::UNAUTHORIZED
    );
    // Refusals too are counted off the request path: nothing written yet.
    assert_eq!(recorder.flushes(), 0);
    assert_eq!(
        store
            .usage(&revoked.record.id)
            .await
            .unwrap()
            .unwrap()
            .rejected,
        0
    );
    recorder.shutdown().await;

    let sum = |id: String| {
        let store = store.clone();
        async move {
            let buckets = store
                .usage_series(
                    Some(&id),
                    UsageStep::Minute,
                    started - Duration::from_secs(60),
                    SystemTime::now() + Duration::from_secs(60),
                )
                .await
                .unwrap();
            let mut total = UsageBucket::empty(SystemTime::UNIX_EPOCH);
            for b in &buckets {
                total.add(b);
            }
            (
                total.allowed,
                total.rate_limited,
                total.forbidden,
                total.unauthorized,
            )
        }
    };
    assert_eq!(sum(good.record.id.clone()).await, (3, 2, 0, 0));
    assert_eq!(sum(unscoped.record.id.clone()).await, (0, 0, 1, 0));
    for key in [&revoked, &expired, &fenced] {
        assert_eq!(
            sum(key.record.id.clone()).await,
            (0, 0, 0, 2),
            "{}",
            key.record.name
        );
    }
    let all = store
        .usage_series(
            None,
            UsageStep::Hour,
            started - Duration::from_secs(3600),
            SystemTime::now() + Duration::from_secs(60),
        )
        .await
        .unwrap();
    let total: u64 = all.iter().map(UsageBucket::total).sum();
    assert_eq!(total, 5 + 1 + 6, "the unknown key is counted nowhere");
    // The counters agree: refusals are rejected requests of the key.
    let usage = store.usage(&revoked.record.id).await.unwrap().unwrap();
    assert_eq!((usage.requests, usage.rejected), (0, 2));
}

#[tokio::test]
async fn grpc_refusals_are_counted_by_their_grpc_status() {
    let store = MemoryStore::new();
    let created = store.create(NewKey::new("acme"), "test").await.unwrap();
    let recorder = UsageRecorder::spawn(store.clone(), Duration::from_secs(3600));
    let policy: RateLimitPolicy = "3/1000h".parse().unwrap();
    // What tonic answers for a handler's `Err(Status::permission_denied(…))`: HTTP 200,
    // the status in the headers (trailers-only).
    let denied = || async {
        http::Response::builder()
            .header("content-type", "application/grpc")
            .header("grpc-status", "7")
            .body(Body::empty())
            .unwrap()
    };
    let app = Router::new()
        .route("/ok", axum::routing::post(|| async { "ok" }))
        .route("/denied", axum::routing::post(denied))
        .layer(RateLimitLayer::new(MemoryRateLimitStore::new(), policy))
        .layer(UsageLayer::new(recorder.clone()))
        .layer(ApiKeyLayer::new(store.clone()));
    let bearer = format!("Bearer {}", created.key.expose_secret());
    // Two allowed, one denied by the handler, then two refused by the rate limit.
    for path in ["/ok", "/ok", "/denied", "/ok", "/ok"] {
        let req = Request::post(path)
            .header("authorization", &bearer)
            .header("content-type", "application/grpc")
            .body(Body::empty())
            .unwrap();
        assert_eq!(app.clone().oneshot(req).await.unwrap().status(), 200);
    }
    recorder.shutdown().await;
    let usage = store.usage(&created.record.id).await.unwrap().unwrap();
    assert_eq!((usage.requests, usage.rejected), (2, 3));
}
