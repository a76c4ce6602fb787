//! RedisRateLimitStore against a real Redis: the server at `TEST_REDIS_URL` for shared
//! limits, and a `redis-server` of the test's own for outages (stopped and started
//! again mid-test).
//!
//! Without `TEST_REDIS_URL` (or without `redis-server` on the PATH, for the outage test)
//! the tests say they skipped, unless `TOWER_API_KEY_REQUIRE_SERVICES=1`, which makes a
//! missing service a failure.
#![cfg(all(feature = "redis", feature = "axum"))]

#[path = "common/redis.rs"]
mod common_redis;
use common_redis::{OwnRedis, XorShift, free_port, poll_until, redis_url, unique_prefix};

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::header::AUTHORIZATION;
use http::{Request, Response, StatusCode};
use tower_api_key::ratelimit::{
    ManualClock, OnStoreError, QuotaWindow, RateLimitStore, RedisMode, RedisRateLimitStore, Subject,
};
use tower_api_key::{
    ApiKey, ApiKeyLayer, KeyFormat, KeyRecord, MemoryRateLimitStore, MemoryStore, RateLimitLayer,
    RateLimitPolicy, RateLimits,
};

#[path = "common/http.rs"]
mod common_http;
use common_http::{call, header};

/// A store in the exact mode, whose answers (headers included) are exact across
/// instances.
fn store(url: &str, prefix: &str) -> RedisRateLimitStore {
    store_in(RedisMode::Exact, url, prefix)
}

fn store_in(mode: RedisMode, url: &str, prefix: &str) -> RedisRateLimitStore {
    RedisRateLimitStore::open(url)
        .unwrap()
        .with_mode(mode)
        .with_prefix(prefix)
        .with_timeout(Duration::from_secs(2))
        .with_slice_lease(Duration::from_millis(100))
}

/// 2026-11-23T10:00:00Z.
fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_795_392_000 + 10 * 3600)
}

const S: u64 = 1_000_000_000;
const T0: u64 = (1_795_392_000 + 10 * 3600) * S;

/// One instance of a service: its own limiter (and Redis connection) over the shared
/// keys and clock.
fn instance<St: RateLimitStore + Clone>(
    keys: &MemoryStore,
    clock: &ManualClock,
    store: St,
    default: &str,
    on_error: OnStoreError,
) -> Router {
    let default: RateLimitPolicy = default.parse().unwrap();
    Router::new()
        .route("/v1/x", get(|| async { "ok" }))
        .layer(
            RateLimitLayer::new(store, default)
                .clock(clock.clone())
                .on_store_error(on_error),
        )
        .layer(ApiKeyLayer::new(keys.clone()))
}

fn issue(keys: &MemoryStore, consumer: &str, limits: Option<RateLimits>) -> ApiKey {
    let key = KeyFormat::default().generate();
    let mut record = KeyRecord::new(&key, consumer);
    if let Some(limits) = limits {
        record = record.with_rate_limits(limits);
    }
    keys.insert(record);
    key
}

async fn get_x(router: &Router, key: &ApiKey) -> (Response<()>, String) {
    let req = Request::get("/v1/x")
        .header(AUTHORIZATION, format!("Bearer {}", key.expose_secret()))
        .body(Body::empty())
        .unwrap();
    call(router, req).await
}

#[tokio::test]
async fn two_instances_share_one_limit() {
    let Some(url) = redis_url() else { return };
    let prefix = unique_prefix("share");
    let keys = MemoryStore::new();
    let clock = ManualClock::new(t0());
    let a = instance(
        &keys,
        &clock,
        store(&url, &prefix),
        "5/60s",
        OnStoreError::Deny,
    );
    let b = instance(
        &keys,
        &clock,
        store(&url, &prefix),
        "5/60s",
        OnStoreError::Deny,
    );
    let key = issue(&keys, "acme", None);
    let other = issue(&keys, "acme", None);

    for (i, remaining) in (0..5).rev().enumerate() {
        let router = if i % 2 == 0 { &a } else { &b };
        let (r, body) = get_x(router, &key).await;
        assert_eq!(
            (r.status(), body.as_str()),
            (StatusCode::OK, "ok"),
            "request {i}"
        );
        assert_eq!(header(&r, "ratelimit-policy"), r#""default";q=5;w=60"#);
        let t = 60 - 12 * remaining;
        assert_eq!(
            header(&r, "ratelimit"),
            format!(r#""default";r={remaining};t={t}"#)
        );
    }
    // The sixth, on either instance, is refused.
    for router in [&a, &b] {
        let (r, body) = get_x(router, &key).await;
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(header(&r, "retry-after"), "12");
        assert_eq!(header(&r, "ratelimit"), r#""default";r=0;t=60"#);
        assert!(body.contains("quota-exceeded"), "{body}");
        assert!(
            body.contains(r#""violated-policies":["default"]"#),
            "{body}"
        );
    }
    // Another key has its own budget.
    assert_eq!(get_x(&b, &other).await.0.status(), StatusCode::OK);
    // Twelve seconds later, exactly one more, wherever it arrives.
    clock.advance(Duration::from_secs(12));
    assert_eq!(get_x(&b, &key).await.0.status(), StatusCode::OK);
    assert_eq!(
        get_x(&a, &key).await.0.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn consumers_share_a_budget_across_instances_and_quotas_end_at_midnight() {
    let Some(url) = redis_url() else { return };
    let prefix = unique_prefix("consumer");
    let keys = MemoryStore::new();
    let clock = ManualClock::new(t0());
    let limits = RateLimits::new([
        RateLimitPolicy::rate("burst", 10, Duration::from_secs(1)).unwrap(),
        RateLimitPolicy::quota("daily", 3, QuotaWindow::Day).unwrap(),
    ])
    .unwrap();
    let layer = |store: RedisRateLimitStore| {
        Router::new()
            .route("/v1/x", get(|| async { "ok" }))
            .layer(
                RateLimitLayer::new(store, "100/60s".parse::<RateLimitPolicy>().unwrap())
                    .clock(clock.clone())
                    .per_consumer()
                    .on_store_error(OnStoreError::Deny),
            )
            .layer(ApiKeyLayer::new(keys.clone()))
    };
    let a = layer(store(&url, &prefix));
    let b = layer(store(&url, &prefix));
    let k1 = issue(&keys, "acme", Some(limits.clone()));
    let k2 = issue(&keys, "acme", Some(limits));

    for (router, key, daily_left) in [(&a, &k1, 2), (&b, &k2, 1), (&a, &k2, 0)] {
        let (r, _) = get_x(router, key).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert!(
            header(&r, "ratelimit").ends_with(&format!(r#""daily";r={daily_left};t=50400"#)),
            "{}",
            header(&r, "ratelimit")
        );
    }
    let (r, body) = get_x(&b, &k1).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    // Fourteen hours to UTC midnight.
    assert_eq!(header(&r, "retry-after"), "50400");
    assert!(body.contains(r#""violated-policies":["daily"]"#), "{body}");
    // The refused request charged nothing: the burst budget still shows 3 spent at
    // 10:00:00 (r=7), not 4.
    assert!(
        header(&r, "ratelimit").starts_with(r#""burst";r=7;"#),
        "{}",
        header(&r, "ratelimit")
    );
    clock.advance(Duration::from_secs(14 * 3600));
    assert_eq!(get_x(&a, &k1).await.0.status(), StatusCode::OK);
}

/// Batched, two instances still allow exactly the budget of alternating requests (their
/// headers are estimates: each counts what the other holds as spent).
#[tokio::test]
async fn two_batched_instances_allow_exactly_ten_of_twenty() {
    let Some(url) = redis_url() else { return };
    let prefix = unique_prefix("share-batched");
    let keys = MemoryStore::new();
    let clock = ManualClock::new(t0());
    let make = || {
        let store = store_in(RedisMode::Batched, &url, &prefix);
        instance(&keys, &clock, store, "10/60s", OnStoreError::Deny)
    };
    let (a, b) = (make(), make());
    let key = issue(&keys, "acme", None);
    let mut allowed = 0;
    for i in 0..20 {
        let router = if i % 2 == 0 { &a } else { &b };
        let (r, _) = get_x(router, &key).await;
        allowed += usize::from(r.status() == StatusCode::OK);
    }
    assert_eq!(allowed, 10);
    // Six seconds later (half of an interval of six), nothing; six more, one.
    clock.advance(Duration::from_secs(3));
    assert_eq!(
        get_x(&b, &key).await.0.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    clock.advance(Duration::from_secs(3));
    let mut statuses = Vec::new();
    for router in [&a, &b, &a] {
        statuses.push(get_x(router, &key).await.0.status().as_u16());
    }
    assert_eq!(
        statuses.iter().filter(|&&s| s == 200).count(),
        1,
        "{statuses:?}"
    );
}

/// The Lua script and the Rust algorithm give the same answers for the same requests
/// (with whole-microsecond times and intervals, where the two are exactly equal).
#[tokio::test]
async fn redis_answers_exactly_as_the_memory_store() {
    let Some(url) = redis_url() else { return };
    // One batched instance alone gives back what it holds whenever it asks again, so it
    // answers as the exact mode does, request by request.
    for mode in [RedisMode::Exact, RedisMode::Batched] {
        let redis = store_in(mode, &url, &unique_prefix("differential"));
        answers_as_the_memory_store(&redis).await;
    }
}

async fn answers_as_the_memory_store(redis: &RedisRateLimitStore) {
    let memory = MemoryRateLimitStore::new();
    let sets: Vec<Vec<RateLimitPolicy>> = vec![
        vec!["5/60s".parse().unwrap()],
        vec![
            RateLimitPolicy::rate("burst", 4, Duration::from_secs(2))
                .unwrap()
                .with_burst(7)
                .unwrap(),
            RateLimitPolicy::quota("daily", 40, QuotaWindow::Day).unwrap(),
        ],
        vec![
            RateLimitPolicy::rate("fast", 1000, Duration::from_secs(1)).unwrap(),
            RateLimitPolicy::rate("slow", 3, Duration::from_secs(3600)).unwrap(),
            RateLimitPolicy::quota("monthly", 25, QuotaWindow::Month).unwrap(),
        ],
    ];
    let subjects = ["k1", "k2", "k3"];
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    // Start an hour before a month ends, so both quota windows roll over.
    let mut now = (1_795_392_000 + 7 * 86_400 + 23 * 3600) * S;
    let mut allowed = 0;
    for step in 0..600 {
        now += (rng.next() % 3_000_000) * 1_000; // up to 3 s, whole microseconds
        let set = &sets[(rng.next() % sets.len() as u64) as usize];
        let subject = Subject::key(subjects[(rng.next() % 3) as usize]);
        let cost = 1 + (rng.next() % 3) as u32;
        let want = memory.check(subject, set, cost, now).await.unwrap();
        let got = redis.check(subject, set, cost, now).await.unwrap();
        assert_eq!(
            got,
            want,
            "{:?} step {step}: {subject:?} {set:?} cost {cost}",
            redis.mode()
        );
        allowed += usize::from(want.allowed());
    }
    // Both branches were taken.
    assert!(allowed > 50 && allowed < 550, "{allowed} of 600 allowed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_instances_and_tasks_allow_exactly_the_budget() {
    let Some(url) = redis_url() else { return };
    for mode in [RedisMode::Exact, RedisMode::Batched] {
        exactly_the_budget(mode, &url).await;
    }
}

async fn exactly_the_budget(mode: RedisMode, url: &str) {
    let prefix = unique_prefix("concurrent");
    let policy = vec![
        RateLimitPolicy::rate("burst", 100, Duration::from_secs(3600)).unwrap(),
        RateLimitPolicy::quota("daily", 1000, QuotaWindow::Day).unwrap(),
    ];
    let stores: Vec<RedisRateLimitStore> = (0..4).map(|_| store_in(mode, url, &prefix)).collect();
    let allowed = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for t in 0..16 {
        let store = stores[t % stores.len()].clone();
        let policy = policy.clone();
        let allowed = allowed.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..50 {
                let d = store
                    .check(Subject::key("hot"), &policy, 1, T0)
                    .await
                    .unwrap();
                if d.allowed() {
                    allowed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(allowed.load(Ordering::Relaxed), 100, "{mode:?}");
    // The quota was charged exactly for the allowed ones, once the batched stores have
    // given back the quota slices they no longer use (after the lease, 100 ms here).
    let fresh = store_in(RedisMode::Exact, url, &prefix);
    let mut checked = 0;
    poll_until("unused quota slices go back", || {
        checked += 1;
        let (fresh, policy) = (&fresh, &policy);
        async move {
            let d = fresh
                .check(Subject::key("hot"), &policy[1..], 1, T0)
                .await
                .unwrap();
            d.statuses()[0].remaining == 1000 - 100 - checked
        }
    })
    .await;
}

#[tokio::test]
async fn every_state_expires_and_odd_ids_are_kept_apart() {
    let Some(url) = redis_url() else { return };
    let prefix = unique_prefix("expiry");
    let store = store(&url, &prefix);
    let policies = vec![
        RateLimitPolicy::rate("burst", 5, Duration::from_secs(60)).unwrap(),
        RateLimitPolicy::quota("daily", 10, QuotaWindow::Day).unwrap(),
    ];
    // Ids with the characters of the key syntax, and not-ASCII ones.
    let ids = ["a}:b", "a", "{a}", "ключ", "a:b}"];
    for id in ids {
        let d = store
            .check(Subject::key(id), &policies, 2, T0)
            .await
            .unwrap();
        assert!(d.allowed());
        assert_eq!(d.statuses()[1].remaining, 8, "{id}");
    }
    // Kinds are apart too.
    let d = store
        .check(Subject::consumer("a"), &policies, 1, T0)
        .await
        .unwrap();
    assert_eq!(d.statuses()[1].remaining, 9);

    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let found: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(found.len(), 2 * (ids.len() + 1), "{found:?}");
    for key in &found {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        if key.ends_with(":burst") {
            // 12 s a request (two for each key, one for the consumer): forgotten then.
            let want = if key.contains("{consumer:") {
                12_000
            } else {
                24_000
            };
            assert!(ttl > want - 4_000 && ttl <= want, "{key}: {ttl}");
        } else {
            // Fourteen hours to midnight (the clock is the store's, not Redis's).
            assert!(
                ttl > 14 * 3_600_000 - 5_000 && ttl <= 14 * 3_600_000,
                "{key}: {ttl}"
            );
        }
    }
    assert!(found.contains(&format!("{prefix}{{key:ключ}}:daily")));

    // A long id (a custom subject may come from the client) is kept short in Redis, and
    // still has a budget of its own.
    let long_a = "a".repeat(10_000);
    let long_b = format!("{}b", "a".repeat(9_999));
    let one = &policies[1..];
    for (id, left) in [(&long_a, 9), (&long_a, 8), (&long_b, 9)] {
        let d = store
            .check(Subject::custom("peer", id), one, 1, T0)
            .await
            .unwrap();
        assert_eq!(d.statuses()[0].remaining, left);
    }
    let key = store.redis_key(Subject::custom("peer", &long_a), &policies[1]);
    assert!(key.len() < 100, "{key}");
    assert!(key.starts_with(&format!("{prefix}{{peer:sha256:")), "{key}");
    let exists: i64 = redis::cmd("EXISTS")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(exists, 1);
}

#[tokio::test]
async fn the_password_never_shows() {
    let store = RedisRateLimitStore::open("redis://user:s3cretpw@127.0.0.1:1/").unwrap();
    assert!(!format!("{store:?}").contains("s3cretpw"));
    let err = RedisRateLimitStore::open("redis://user:s3cretpw@[::1/").unwrap_err();
    assert!(!err.to_string().contains("s3cretpw"), "{err}");
    assert!(!format!("{err:?}").contains("s3cretpw"));
    // TLS is built in now (tests/redis_tls.rs): a rediss:// URL makes a store.
    let tls = RedisRateLimitStore::open("rediss://user:s3cretpw@example.com/").unwrap();
    assert!(!format!("{tls:?}").contains("s3cretpw"));
    for url in [
        "http://user:s3cretpw@example.com/",
        "rediss://user:s3cretpw@example.com/#not-insecure",
        "",
    ] {
        let err = RedisRateLimitStore::open(url).unwrap_err();
        assert!(
            err.to_string().contains("invalid Redis URL"),
            "{url}: {err}"
        );
        assert!(!err.to_string().contains("s3cretpw"));
    }
    // A cluster's URLs, and a password written percent-encoded (shown neither way).
    for urls in [
        vec!["redis://user:s3cretpw@[::1/"],
        vec![
            "redis://127.0.0.1:1/",
            "redis://user:s3cretpw@127.0.0.1:notaport/",
        ],
        vec!["redis://user:s3cret%21pw@[::1/"],
    ] {
        let err = RedisRateLimitStore::open_cluster(urls.clone()).unwrap_err();
        let shown = format!("{err} {err:?}");
        assert!(shown.contains("invalid Redis URL"), "{urls:?}: {shown}");
        for secret in ["s3cretpw", "s3cret%21pw", "s3cret!pw"] {
            assert!(!shown.contains(secret), "{urls:?}: {shown}");
        }
    }
    let err = RedisRateLimitStore::open("redis://user:s3cret%21pw@[::1/").unwrap_err();
    assert!(!format!("{err} {err:?}").contains("s3cret"), "{err:?}");
    let store = store.with_local_fallback(false);
    let policy = ["1/1s".parse::<RateLimitPolicy>().unwrap()];
    let err = store
        .check(Subject::key("k"), &policy, 1, T0)
        .await
        .unwrap_err();
    assert!(!format!("{err} {err:?}").contains("s3cretpw"), "{err:?}");
}

#[tokio::test]
async fn without_fallback_the_layer_fails_open_or_closed() {
    let url = format!("redis://127.0.0.1:{}/", free_port());
    let keys = MemoryStore::new();
    let clock = ManualClock::new(t0());
    let key = issue(&keys, "acme", None);
    let redis = || {
        RedisRateLimitStore::open(&url)
            .unwrap()
            .with_local_fallback(false)
    };
    let closed = instance(&keys, &clock, redis(), "1/60s", OnStoreError::Deny);
    let open = instance(&keys, &clock, redis(), "1/60s", OnStoreError::Allow);
    for _ in 0..3 {
        let (r, body) = get_x(&closed, &key).await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE, "{body}");
        let (r, body) = get_x(&open, &key).await;
        assert_eq!((r.status(), body.as_str()), (StatusCode::OK, "ok"));
    }
}

/// A server on `port` that completes the client's handshake (`+OK` to each `CLIENT`
/// command) and then never answers: a Redis that hangs.
fn hung_redis(port: u16) {
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                let (mut seen, mut answered) = (Vec::new(), 0);
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = conn.read(&mut buf) {
                    seen.extend_from_slice(&buf[..n]);
                    let handshakes = String::from_utf8_lossy(&seen).matches("CLIENT").count();
                    for _ in answered..handshakes {
                        let _ = conn.write_all(b"+OK\r\n");
                    }
                    answered = handshakes;
                }
            });
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_never_answers_holds_one_request_at_a_time() {
    let port = free_port();
    let store = RedisRateLimitStore::open(&format!("redis://127.0.0.1:{port}/"))
        .unwrap()
        .with_timeout(Duration::from_secs(60))
        .with_retry_interval(Duration::ZERO);
    let policy = ["1000/60s".parse::<RateLimitPolicy>().unwrap()];
    // Nothing listens yet: the first request is refused at once and limits locally.
    let d = store
        .check(Subject::key("k"), &policy, 1, T0)
        .await
        .unwrap();
    assert!(d.allowed() && store.is_degraded());
    // Now Redis is there but hangs. Fifty requests at once, with the retry interval
    // over: one of them asks it (and waits), the others are answered locally.
    hung_redis(port);
    let done = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (store, policy, done) = (store.clone(), policy.clone(), done.clone());
            tokio::spawn(async move {
                let d = store.check(Subject::key("k"), &policy, 1, T0).await;
                done.fetch_add(1, Ordering::SeqCst);
                d
            })
        })
        .collect();
    poll_until("49 requests answered without Redis", || async {
        done.load(Ordering::SeqCst) >= 49
    })
    .await;
    let (finished, waiting): (Vec<_>, Vec<_>) = tasks.into_iter().partition(|t| t.is_finished());
    assert_eq!(
        (finished.len(), waiting.len()),
        (49, 1),
        "one probe at a time"
    );
    for t in finished {
        assert!(t.await.unwrap().unwrap().allowed());
    }
    // While that one waits, later requests do not queue up behind it.
    let later = Arc::new(AtomicUsize::new(0));
    for _ in 0..20 {
        let (store, policy, later) = (store.clone(), policy.clone(), later.clone());
        tokio::spawn(async move {
            let d = store.check(Subject::key("k"), &policy, 1, T0).await;
            assert!(d.unwrap().allowed());
            later.fetch_add(1, Ordering::SeqCst);
        });
    }
    poll_until(
        "20 later requests answered while the probe waits",
        || async { later.load(Ordering::SeqCst) == 20 },
    )
    .await;
    // The store's 60 s timeout holds for the connection too: the probe is still waiting
    // well past the connection's 250 ms default.
    let mut probe = waiting.into_iter().next().unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(600), &mut probe)
            .await
            .is_err(),
        "the probe gave up before the store's own timeout"
    );
    probe.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_redis_goes_down_each_instance_limits_alone_until_it_is_back() {
    let Some(mut server) = OwnRedis::start() else {
        return;
    };
    // The stores log from the request path, which runs on this thread.
    let log = LogCapture::default();
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_writer(log.clone())
            .with_max_level(tracing::Level::INFO)
            .finish(),
    );
    let url = server.url();
    let keys = MemoryStore::new();
    let clock = ManualClock::new(t0());
    let make = || {
        RedisRateLimitStore::open(&url)
            .unwrap()
            .with_timeout(Duration::from_millis(300))
            .with_retry_interval(Duration::from_millis(50))
    };
    let (sa, sb) = (make(), make());
    let a = instance(&keys, &clock, sa.clone(), "3/60s", OnStoreError::Deny);
    let b = instance(&keys, &clock, sb.clone(), "3/60s", OnStoreError::Deny);

    // Shared: three in all.
    let key = issue(&keys, "acme", None);
    let statuses = [
        get_x(&a, &key).await.0.status(),
        get_x(&b, &key).await.0.status(),
        get_x(&a, &key).await.0.status(),
        get_x(&b, &key).await.0.status(),
    ];
    assert_eq!(
        statuses.map(|s| s.as_u16()),
        [200, 200, 200, 429],
        "while Redis is up"
    );
    assert!(!sa.is_degraded() && !sb.is_degraded());

    server.kill();
    // Down: each instance limits on its own, three each, and never answers 503.
    let key = issue(&keys, "acme", None);
    for (router, store) in [(&a, &sa), (&b, &sb)] {
        for i in 0..3 {
            let (r, body) = get_x(router, &key).await;
            assert_eq!(r.status(), StatusCode::OK, "request {i} while down: {body}");
        }
        assert_eq!(
            get_x(router, &key).await.0.status(),
            StatusCode::TOO_MANY_REQUESTS
        );
        assert!(store.is_degraded());
    }
    server.restart();
    // Back: shared again, once each store has tried Redis again.
    let key = issue(&keys, "acme", None);
    poll_until("instance a uses Redis again", || async {
        get_x(&a, &key).await;
        !sa.is_degraded()
    })
    .await;
    poll_until("instance b uses Redis again", || async {
        sb.ping().await.is_ok() && {
            // A refused request still tells the store that Redis answers.
            get_x(&b, &issue(&keys, "probe", None)).await;
            !sb.is_degraded()
        }
    })
    .await;
    let key = issue(&keys, "acme", None);
    let statuses = [
        get_x(&a, &key).await.0.status(),
        get_x(&b, &key).await.0.status(),
        get_x(&b, &key).await.0.status(),
        get_x(&a, &key).await.0.status(),
    ];
    assert_eq!(
        statuses.map(|s| s.as_u16()),
        [200, 200, 200, 429],
        "after Redis came back"
    );
    // Said once per store when the outage began, and once when it ended.
    let text = log.text();
    assert_eq!(
        text.matches("limiting per instance until Redis answers again")
            .count(),
        2,
        "{text}"
    );
    assert_eq!(
        text.matches("limits are shared across instances").count(),
        2,
        "{text}"
    );
}

/// Collects what a `tracing` subscriber writes.
#[derive(Clone, Default)]
struct LogCapture(Arc<std::sync::Mutex<Vec<u8>>>);

impl LogCapture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogCapture {
    type Writer = LogCapture;

    fn make_writer(&'a self) -> LogCapture {
        self.clone()
    }
}
