//! Rate limiting, in one run:
//!
//! - `store/*`: governor's keyed limiter (`check_key`) against `MemoryRateLimitStore`,
//!   on one hot key and on 100 000 keys;
//! - `layer/*`: per request through an axum `Router` with `oneshot`, over bare:
//!   `RateLimitLayer` against tower_governor's `GovernorLayer`, both keyed by a header
//!   and with a burst too large to ever refuse; each added with `Router::layer` and
//!   wrapped around the router (`*_outer`); `layer_over_bare/*` takes the same
//!   differences in alternating blocks, and adds `GovernorLayer` with its own rate-limit
//!   headers (`use_headers`), since ours always sends them, and ours with a budget in
//!   use (`*_busy_*`), whose `RateLimit` field is written for every response;
//! - `auth_and_limit/*`: `ApiKeyLayer` + `RateLimitLayer` together, hot key and 100 000
//!   keys in scattered order: added with two `Router::layer` calls, with one call of a
//!   `ServiceBuilder` holding both (`*_one_router_layer`), and wrapped around the router;
//! - `redis/*`: one check as the layer makes it, through the memory store and through
//!   `RedisRateLimitStore` in its exact and batched modes (feature `redis`, server at
//!   `TEST_REDIS_URL`), with the Redis calls per check.
//!
//! `cargo bench --features full --bench ratelimit`
#![allow(missing_docs)] // criterion_group! generates an undocumented fn.

use std::hint::black_box;
use std::num::NonZeroU32;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use criterion::{Criterion, criterion_group, criterion_main};
use http::Request;
use tower::Layer;
use tower_api_key::ratelimit::Clock as _;
use tower_api_key::ratelimit::{Subject, SystemClock};
use tower_api_key::{
    ApiKeyLayer, CachedResolver, KeyFormat, KeyRecord, MemoryRateLimitStore, MemoryStore,
    RateLimitLayer, RateLimitPolicy,
};
use tower_governor::GovernorError;
use tower_governor::governor::GovernorConfigBuilder;
use tower_governor::key_extractor::KeyExtractor;

mod common;
use common::{Diff, Expect, cycling, run, run_paired, scattered};

const KEYS: usize = 100_000;

/// Keys tower_governor by the `x-key` header, as `RateLimitLayer` is keyed below.
#[derive(Clone)]
struct HeaderKey;

impl KeyExtractor for HeaderKey {
    type Key = String;

    fn extract<T>(&self, req: &Request<T>) -> Result<String, GovernorError> {
        req.headers()
            .get("x-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or(GovernorError::UnableToExtractKey)
    }
}

fn handler_router() -> Router {
    Router::new().route("/", get(|| async { "ok" }))
}

fn ready(router: Router) -> Router {
    router.with_state(())
}

/// A burst no bench run can spend.
fn generous() -> RateLimitPolicy {
    RateLimitPolicy::rate("bench", 1_000_000_000, Duration::from_secs(1)).unwrap()
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let order = scattered(KEYS);
    let ids: Vec<String> = (0..KEYS).map(|i| format!("key_{i:022}")).collect();

    // Stores, head to head.
    let mut g = c.benchmark_group("store");
    let quota = governor::Quota::per_second(NonZeroU32::new(1_000_000_000).unwrap())
        .allow_burst(NonZeroU32::new(1_000_000_000).unwrap());
    let keyed = governor::RateLimiter::keyed(quota);
    let ours = MemoryRateLimitStore::new();
    let policy = [generous()];
    let clock = SystemClock;
    g.bench_function("governor_check_key_hot", |b| {
        b.iter(|| black_box(keyed.check_key(&ids[0]).is_ok()))
    });
    g.bench_function("memory_store_hot", |b| {
        b.iter(|| {
            black_box(
                ours.check_now(Subject::key(&ids[0]), &policy, 1, clock.now())
                    .allowed(),
            )
        })
    });
    for id in &ids {
        let _ = keyed.check_key(id);
        ours.check_now(Subject::key(id), &policy, 1, clock.now());
    }
    let mut i = 0;
    g.bench_function("governor_check_key_100k", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(keyed.check_key(&ids[order[i]]).is_ok())
        })
    });
    g.bench_function("memory_store_100k", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            let s = Subject::key(&ids[order[i]]);
            black_box(ours.check_now(s, &policy, 1, clock.now()).allowed())
        })
    });
    g.finish();

    // Layers over a bare router, keyed by a header.
    let governor_config = GovernorConfigBuilder::default()
        .per_nanosecond(1)
        .burst_size(1_000_000_000)
        .key_extractor(HeaderKey)
        .finish()
        .unwrap();
    let governor_layer = tower_governor::GovernorLayer::new(governor_config);
    // The same with tower_governor's own rate-limit headers, which ours always sends.
    let governor_headers_config = GovernorConfigBuilder::default()
        .per_nanosecond(1)
        .burst_size(1_000_000_000)
        .key_extractor(HeaderKey)
        .use_headers()
        .finish()
        .unwrap();
    let governor_headers_layer = tower_governor::GovernorLayer::new(governor_headers_config);
    let by_header = |policy: RateLimitPolicy| {
        RateLimitLayer::new(MemoryRateLimitStore::new(), policy.clone()).anonymous(
            "header",
            |info| {
                info.headers
                    .get("x-key")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            },
            policy,
        )
    };
    let bare = ready(handler_router());
    let governed_headers = ready(handler_router().layer(governor_headers_layer.clone()));
    let governed_headers_outer = governor_headers_layer.layer(bare.clone());
    let governed = ready(handler_router().layer(governor_layer.clone()));
    let limited = ready(handler_router().layer(by_header(generous())));
    let governed_outer = governor_layer.layer(bare.clone());
    let limited_outer = by_header(generous()).layer(bare.clone());
    let hot = || ("x-key", "client-1".to_owned());
    let mut g = c.benchmark_group("layer");
    run(
        &mut g,
        &rt,
        "bare",
        &bare,
        Expect::Success,
        &mut hot.clone(),
    );
    run(
        &mut g,
        &rt,
        "tower_governor",
        &governed,
        Expect::Success,
        &mut hot.clone(),
    );
    run(
        &mut g,
        &rt,
        "rate_limit_layer",
        &limited,
        Expect::Success,
        &mut hot.clone(),
    );
    run(
        &mut g,
        &rt,
        "tower_governor_outer",
        &governed_outer,
        Expect::Success,
        &mut hot.clone(),
    );
    run(
        &mut g,
        &rt,
        "rate_limit_layer_outer",
        &limited_outer,
        Expect::Success,
        &mut hot.clone(),
    );
    g.finish();

    // The same differences, each timed against bare in alternating blocks.
    let mut g = c.benchmark_group("layer_over_bare");
    run_paired(
        &mut g,
        &rt,
        "tower_governor",
        &bare,
        &governed,
        Diff::LayerMinusBare,
        &mut hot.clone(),
    );
    run_paired(
        &mut g,
        &rt,
        "rate_limit_layer",
        &bare,
        &limited,
        Diff::LayerMinusBare,
        &mut hot.clone(),
    );
    // A budget in use (a request every few hundred ns against one every 3.6 µs, with a
    // burst no run can spend): the `RateLimit` field is written for every response,
    // where the generous policy above finds its bucket at rest and sends a prebuilt one.
    let busy = RateLimitPolicy::rate("busy", 1_000_000_000, Duration::from_secs(3_600)).unwrap();
    let limited_busy_outer = by_header(busy).layer(bare.clone());
    run_paired(
        &mut g,
        &rt,
        "rate_limit_layer_busy_outer",
        &bare,
        &limited_busy_outer,
        Diff::LayerMinusBare,
        &mut hot.clone(),
    );
    run_paired(
        &mut g,
        &rt,
        "tower_governor_outer",
        &bare,
        &governed_outer,
        Diff::LayerMinusBare,
        &mut hot.clone(),
    );
    run_paired(
        &mut g,
        &rt,
        "rate_limit_layer_outer",
        &bare,
        &limited_outer,
        Diff::LayerMinusBare,
        &mut hot.clone(),
    );
    run_paired(
        &mut g,
        &rt,
        "tower_governor_with_headers",
        &bare,
        &governed_headers,
        Diff::LayerMinusBare,
        &mut hot.clone(),
    );
    run_paired(
        &mut g,
        &rt,
        "tower_governor_with_headers_outer",
        &bare,
        &governed_headers_outer,
        Diff::LayerMinusBare,
        &mut hot.clone(),
    );
    g.finish();

    // Authentication and rate limiting together.
    let format = KeyFormat::default();
    let keys = MemoryStore::new();
    let secrets: Vec<String> = (0..KEYS)
        .map(|_| {
            let key = format.generate();
            keys.insert(KeyRecord::new(&key, "bench"));
            format!("Bearer {}", key.expose_secret())
        })
        .collect();
    let cache = CachedResolver::builder(keys)
        .max_capacity(2 * KEYS as u64)
        .ttl(Duration::from_secs(3600))
        .build();
    rt.block_on(async {
        for s in &secrets {
            let hash = tower_api_key::KeyHash::of(&s["Bearer ".len()..]);
            cache.lookup(&hash).await.unwrap().unwrap();
        }
        cache.run_pending_tasks().await;
    });
    let auth = ApiKeyLayer::from_cache(cache.clone());
    let limits = RateLimitLayer::new(MemoryRateLimitStore::new(), generous());
    let both = ready(handler_router().layer(limits.clone()).layer(auth.clone()));
    let both_outer = auth.layer(limits.layer(bare.clone()));
    // Both in one `Router::layer` call: axum boxes each call's stack once per request.
    let both_one_call = ready(
        handler_router().layer(
            tower::ServiceBuilder::new()
                .layer(auth.clone())
                .layer(limits.clone()),
        ),
    );
    let mut g = c.benchmark_group("auth_and_limit");
    let hot = || ("authorization", secrets[0].clone());
    run(
        &mut g,
        &rt,
        "bare",
        &bare,
        Expect::Success,
        &mut hot.clone(),
    );
    run(&mut g, &rt, "hot", &both, Expect::Success, &mut hot.clone());
    run(
        &mut g,
        &rt,
        "100k_scattered",
        &both,
        Expect::Success,
        &mut cycling("authorization", &secrets, &order),
    );
    run(
        &mut g,
        &rt,
        "hot_outer",
        &both_outer,
        Expect::Success,
        &mut hot.clone(),
    );
    run(
        &mut g,
        &rt,
        "100k_scattered_outer",
        &both_outer,
        Expect::Success,
        &mut cycling("authorization", &secrets, &order),
    );
    g.finish();

    let mut g = c.benchmark_group("auth_and_limit_over_bare");
    run_paired(
        &mut g,
        &rt,
        "hot",
        &bare,
        &both,
        Diff::LayerMinusBare,
        &mut hot.clone(),
    );
    run_paired(
        &mut g,
        &rt,
        "hot_outer",
        &bare,
        &both_outer,
        Diff::LayerMinusBare,
        &mut hot.clone(),
    );
    run_paired(
        &mut g,
        &rt,
        "hot_one_router_layer",
        &bare,
        &both_one_call,
        Diff::LayerMinusBare,
        &mut hot.clone(),
    );
    run_paired(
        &mut g,
        &rt,
        "100k_scattered",
        &bare,
        &both,
        Diff::LayerMinusBare,
        &mut cycling("authorization", &secrets, &order),
    );
    run_paired(
        &mut g,
        &rt,
        "100k_scattered_one_router_layer",
        &bare,
        &both_one_call,
        Diff::LayerMinusBare,
        &mut cycling("authorization", &secrets, &order),
    );
    run_paired(
        &mut g,
        &rt,
        "100k_scattered_outer",
        &bare,
        &both_outer,
        Diff::LayerMinusBare,
        &mut cycling("authorization", &secrets, &order),
    );
    g.finish();
}

/// One check as the layer makes it (`check_sync`, else `check`) through the memory store
/// and through `RedisRateLimitStore` against the server at `TEST_REDIS_URL` (skipped
/// without it), exact (one script call per check: a loopback round trip) and batched
/// (slices spent in process), on one hot key well below its limit. Prints the Redis
/// calls per check of each Redis store.
#[cfg(feature = "redis")]
fn redis(c: &mut Criterion) {
    use std::sync::Arc;
    use tower_api_key::ratelimit::{RateLimitStore, RedisMode, RedisRateLimitStore};
    let Ok(url) = std::env::var("TEST_REDIS_URL") else {
        eprintln!("redis/*: skipped, TEST_REDIS_URL is not set");
        return;
    };
    // A worker of its own runs the batched store's background calls, as a server's
    // other threads would.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let nanos = SystemClock.now();
    let open = |mode: RedisMode| {
        rt.block_on(async {
            let store = RedisRateLimitStore::open(&url)
                .unwrap()
                .with_mode(mode)
                .with_prefix(format!("bench:{nanos}:{mode:?}:"));
            store.ping().await.expect("Redis answers");
            store
        })
    };
    let (exact, batched) = (open(RedisMode::Exact), open(RedisMode::Batched));
    let memory = MemoryRateLimitStore::new();
    let stores: [(&str, Arc<dyn RateLimitStore>, Option<&RedisRateLimitStore>); 3] = [
        ("memory", Arc::new(memory), None),
        ("exact", Arc::new(exact.clone()), Some(&exact)),
        ("batched", Arc::new(batched.clone()), Some(&batched)),
    ];
    let one = [generous()];
    let two = [
        generous(),
        RateLimitPolicy::quota(
            "daily",
            u32::MAX,
            tower_api_key::ratelimit::QuotaWindow::Day,
        )
        .unwrap(),
    ];
    let mut g = c.benchmark_group("redis");
    for (set, policies) in [("one_policy", &one[..]), ("rate_and_quota", &two[..])] {
        for (name, store, redis) in &stores {
            let checks = std::cell::Cell::new(0u64);
            let calls_before = redis.map_or(0, |r| r.redis_calls());
            g.bench_function(format!("{name}_{set}"), |b| {
                b.to_async(&rt).iter(|| async {
                    checks.set(checks.get() + 1);
                    let subject = Subject::key("bench");
                    let now = SystemClock.now();
                    let d = match store.check_sync(subject, policies, 1, now) {
                        Some(d) => d,
                        None => store.check(subject, policies, 1, now).await,
                    }
                    .unwrap();
                    black_box(d.allowed())
                })
            });
            if let Some(redis) = redis {
                assert!(!redis.is_degraded(), "Redis failed during the run");
                let calls = redis.redis_calls() - calls_before;
                eprintln!(
                    "redis/{name}_{set}: {calls} Redis calls for {} checks ({:.5} a check)",
                    checks.get(),
                    calls as f64 / checks.get().max(1) as f64
                );
            }
        }
    }
    g.finish();
}

#[cfg(not(feature = "redis"))]
fn redis(_: &mut Criterion) {}

criterion_group!(ratelimit, benches, redis);
criterion_main!(ratelimit);
