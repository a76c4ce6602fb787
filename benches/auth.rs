//! Per-request cost of authentication through an axum `Router` with `oneshot`.
//!
//! One run compares: bare; tower-http's `ValidateRequestHeaderLayer::bearer` (the
//! simplest possible check); `ApiKeyLayer` with one hot cached key; the same with
//! 100 000 cached keys visited in scattered order; and a malformed key. Each layer is
//! measured twice: added with `Router::layer` (runs after routing, boxed and cloned by
//! axum for every request) and wrapped around the whole router (`*_outer`: runs before
//! routing). Beside them,
//! the building blocks: SHA-256 of a key, moka `get` (hot and scattered) and the
//! `CachedResolver` hit path (hot, hot from two threads at once, and scattered); and
//! `two_threads_over_bare/*`: one hot key from two threads at once, against bare in
//! alternating blocks.
//!
//! `cargo bench --bench auth`; `BENCH_PREFIX=sk cargo bench --bench auth` measures keys
//! with another prefix (default `sk_live`: 57-byte keys, two SHA-256 blocks; a prefix of
//! at most 5 characters gives keys of at most 55 bytes, one block).
//! `BENCH_METRICS=prometheus cargo bench --bench auth --features metrics` measures with
//! the layers counting into a Prometheus recorder.

#![allow(missing_docs)] // criterion_group! generates an undocumented fn.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::routing::get;
use criterion::{Criterion, criterion_group, criterion_main};
use tower::Layer;
use tower_api_key::{
    ApiKeyLayer, CachedResolver, KeyFormat, KeyHash, KeyRecord, KeyResolver, MemoryStore,
    ResolveError,
};

mod common;
use common::{
    Diff, Expect, cycling, on_two_threads, run, run_paired, run_two_threads_paired, scattered,
};

const KEYS: usize = 100_000;

/// Counts resolver calls, to prove that the malformed path reaches no cache or store.
#[derive(Clone)]
struct Counting {
    store: MemoryStore,
    calls: Arc<AtomicUsize>,
}

#[async_trait::async_trait]
impl KeyResolver for Counting {
    async fn resolve(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, ResolveError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.store.resolve(hash).await
    }
}

fn handler_router() -> Router {
    Router::new().route("/", get(|| async { "ok" }))
}

/// `with_state` turns the routes into services once, as `axum::serve` does; without it
/// `oneshot` on a `Router<()>` would apply every layer again on every request.
fn ready(router: Router) -> Router {
    router.with_state(())
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

fn benches(c: &mut Criterion) {
    // With the `metrics` feature, `BENCH_METRICS=prometheus` has the layers count into a
    // Prometheus recorder, installed before anything is built or measured.
    #[cfg(feature = "metrics")]
    let _prometheus = (std::env::var("BENCH_METRICS").as_deref() == Ok("prometheus")).then(|| {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .unwrap()
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let format =
        KeyFormat::new(&std::env::var("BENCH_PREFIX").unwrap_or_else(|_| "sk_live".into()))
            .unwrap();
    let store = MemoryStore::new();
    let keys: Vec<_> = (0..KEYS).map(|_| format.generate()).collect();
    for key in &keys {
        store.insert(KeyRecord::new(key, "bench"));
    }
    let headers: Vec<String> = keys.iter().map(|k| bearer(k.expose_secret())).collect();
    let hashes: Vec<KeyHash> = keys.iter().map(|k| k.hash()).collect();
    let order = scattered(KEYS);
    let resolver = Counting {
        store: store.clone(),
        calls: Arc::new(AtomicUsize::new(0)),
    };
    // A TTL longer than the run: this measures the steady-state hit path.
    let cache = CachedResolver::builder(resolver.clone())
        .max_capacity(2 * KEYS as u64)
        .ttl(std::time::Duration::from_secs(3600))
        .build();
    // Warm the cache with every key.
    rt.block_on(async {
        for h in &hashes {
            cache.lookup(h).await.unwrap().unwrap();
        }
        cache.run_pending_tasks().await;
    });
    assert_eq!(cache.entry_count(), KEYS as u64);
    let loads_after_warmup = resolver.calls.load(Ordering::Relaxed);

    let bare = ready(handler_router());
    let tower_http = ready(handler_router().layer(
        #[allow(deprecated)]
        tower_http::validate_request::ValidateRequestHeaderLayer::bearer(keys[0].expose_secret()),
    ));
    let api_key = ready(
        handler_router().layer(ApiKeyLayer::from_cache(cache.clone()).format(format.clone())),
    );

    let hot = headers[0].clone();
    let mut malformed = keys[0].expose_secret().to_owned();
    let last = malformed.pop().unwrap();
    malformed.push(if last == 'a' { 'b' } else { 'a' });
    let malformed = bearer(&malformed);

    // The same layers wrapped around the whole router: they run before routing, and
    // axum does not box and clone them per request.
    let tower_http_outer = {
        #[allow(deprecated)]
        let layer = tower_http::validate_request::ValidateRequestHeaderLayer::bearer(
            keys[0].expose_secret(),
        );
        layer.layer(bare.clone())
    };
    let api_key_outer = ApiKeyLayer::from_cache(cache.clone())
        .format(format.clone())
        .layer(bare.clone());

    let mut g = c.benchmark_group("auth");
    run(&mut g, &rt, "bare", &bare, Expect::Success, &mut || {
        ("authorization", hot.clone())
    });
    run(
        &mut g,
        &rt,
        "tower_http_bearer",
        &tower_http,
        Expect::Success,
        &mut || ("authorization", hot.clone()),
    );
    run(
        &mut g,
        &rt,
        "api_key_hot",
        &api_key,
        Expect::Success,
        &mut || ("authorization", hot.clone()),
    );
    run(
        &mut g,
        &rt,
        "api_key_100k_scattered",
        &api_key,
        Expect::Success,
        &mut cycling("authorization", &headers, &order),
    );
    run(
        &mut g,
        &rt,
        "tower_http_bearer_outer",
        &tower_http_outer,
        Expect::Success,
        &mut || ("authorization", hot.clone()),
    );
    run(
        &mut g,
        &rt,
        "api_key_hot_outer",
        &api_key_outer,
        Expect::Success,
        &mut || ("authorization", hot.clone()),
    );
    run(
        &mut g,
        &rt,
        "api_key_100k_scattered_outer",
        &api_key_outer,
        Expect::Success,
        &mut cycling("authorization", &headers, &order),
    );
    drop(g);

    // The same differences, each timed against bare in alternating blocks.
    let mut g = c.benchmark_group("auth_over_bare");
    run_paired(
        &mut g,
        &rt,
        "hot_router_layer",
        &bare,
        &api_key,
        Diff::LayerMinusBare,
        &mut || ("authorization", hot.clone()),
    );
    run_paired(
        &mut g,
        &rt,
        "hot_outer",
        &bare,
        &api_key_outer,
        Diff::LayerMinusBare,
        &mut || ("authorization", hot.clone()),
    );
    run_paired(
        &mut g,
        &rt,
        "100k_scattered_router_layer",
        &bare,
        &api_key,
        Diff::LayerMinusBare,
        &mut cycling("authorization", &headers, &order),
    );
    run_paired(
        &mut g,
        &rt,
        "100k_scattered_outer",
        &bare,
        &api_key_outer,
        Diff::LayerMinusBare,
        &mut cycling("authorization", &headers, &order),
    );
    drop(g);
    let mut g = c.benchmark_group("auth");

    let calls_before_malformed = resolver.calls.load(Ordering::Relaxed);
    rt.block_on(cache.run_pending_tasks());
    let entries_before = cache.entry_count();
    run(
        &mut g,
        &rt,
        "malformed_key",
        &api_key,
        Expect::Any,
        &mut || ("authorization", malformed.clone()),
    );
    run(
        &mut g,
        &rt,
        "malformed_key_outer",
        &api_key_outer,
        Expect::Any,
        &mut || ("authorization", malformed.clone()),
    );
    drop(g);
    let mut g = c.benchmark_group("auth_over_bare");
    run_paired(
        &mut g,
        &rt,
        "malformed_router_layer",
        &bare,
        &api_key,
        Diff::LayerMinusBare,
        &mut || ("authorization", malformed.clone()),
    );
    run_paired(
        &mut g,
        &rt,
        "malformed_outer_saving",
        &bare,
        &api_key_outer,
        Diff::BareMinusLayer,
        &mut || ("authorization", malformed.clone()),
    );
    drop(g);

    rt.block_on(cache.run_pending_tasks());
    assert_eq!(
        resolver.calls.load(Ordering::Relaxed),
        calls_before_malformed,
        "a malformed key reached the resolver"
    );
    assert_eq!(
        cache.entry_count(),
        entries_before,
        "a malformed key reached the cache"
    );
    assert_eq!(
        resolver.calls.load(Ordering::Relaxed),
        loads_after_warmup,
        "cached keys were loaded again"
    );

    // Two threads at once on one hot key, each with a runtime of its own: per request,
    // per thread. Without per-thread copies of a hot entry, every request writes the
    // shared table's lock and the entry's reference count, and those lines travel
    // between the cores.
    let mut g = c.benchmark_group("two_threads_over_bare");
    run_two_threads_paired(
        &mut g,
        "api_key_hot_outer",
        &bare,
        &api_key_outer,
        ("authorization", hot.clone()),
    );
    g.finish();

    // The building blocks.
    let mut g = c.benchmark_group("parts");
    let secret = keys[0].expose_secret();
    g.bench_function("sha256_key", |b| b.iter(|| KeyHash::of(black_box(secret))));
    g.bench_function("validate_key", |b| {
        b.iter(|| format.validate(black_box(secret)))
    });
    let moka: moka::future::Cache<KeyHash, Arc<KeyRecord>> = moka::future::Cache::builder()
        .max_capacity(2 * KEYS as u64)
        .build();
    rt.block_on(async {
        for (h, k) in hashes.iter().zip(&keys) {
            moka.insert(*h, Arc::new(KeyRecord::new(k, "bench"))).await;
        }
        moka.run_pending_tasks().await;
    });
    g.bench_function("moka_get_hot", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(moka.get(&hashes[0]).await) })
    });
    let mut i = 0;
    g.bench_function("moka_get_100k_scattered", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 1) % KEYS;
            let h = hashes[order[i]];
            let moka = &moka;
            async move { black_box(moka.get(&h).await) }
        })
    });
    g.bench_function("cached_resolver_hot", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(cache.lookup(&hashes[0]).await.unwrap()) })
    });
    // The same hot key from two threads at once: per lookup and thread (the slower one).
    g.bench_function("cached_resolver_hot_two_threads", |b| {
        b.iter_custom(|iters| {
            let times = on_two_threads(|rt| {
                let started = std::time::Instant::now();
                rt.block_on(async {
                    for _ in 0..iters {
                        black_box(cache.lookup(&hashes[0]).await.unwrap());
                    }
                });
                started.elapsed()
            });
            times.into_iter().max().unwrap()
        })
    });
    g.bench_function("cached_resolver_100k_scattered", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 1) % KEYS;
            let h = hashes[order[i]];
            let cache = &cache;
            async move { black_box(cache.lookup(&h).await.unwrap()) }
        })
    });
    g.finish();
}

criterion_group!(auth, benches);
criterion_main!(auth);
