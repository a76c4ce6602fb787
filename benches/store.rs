//! Key stores: `resolve` on a cache miss (every lookup goes to the database), and the
//! cold start of 1 000 distinct keys through a fresh `CachedResolver`.
//!
//! `cargo bench --bench store --features sqlite`
#![allow(missing_docs)] // criterion_group! generates an undocumented fn.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use tower_api_key::store::{NewKey, SqliteStore};
use tower_api_key::{CachedResolver, KeyHash, KeyResolver, KeyStore};

mod common;
use common::scattered;

const KEYS: usize = 10_000;

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let path = std::env::temp_dir().join(format!("tower-api-key-bench-{}.db", std::process::id()));
    let url = format!("sqlite://{}", path.display());
    let (store, hashes) = rt.block_on(async {
        let store = SqliteStore::connect(&url).await.unwrap();
        let mut hashes = Vec::with_capacity(KEYS);
        for i in 0..KEYS {
            let created = store
                .create(NewKey::new(format!("c{}", i % 100)), "bench")
                .await
                .unwrap();
            hashes.push(created.record.hash);
        }
        (store, hashes)
    });
    let order = scattered(KEYS);

    let mut g = c.benchmark_group("store");
    let mut i = 0;
    g.bench_function("sqlite_resolve_miss", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 1) % KEYS;
            let hash = hashes[order[i]];
            let store = &store;
            async move { black_box(store.resolve(&hash).await.unwrap().unwrap()) }
        })
    });
    g.bench_function("sqlite_cold_start_1000_keys", |b| {
        b.to_async(&rt).iter_batched(
            || CachedResolver::new(store.clone()),
            |cache| {
                let hashes: Vec<KeyHash> = hashes[..1000].to_vec();
                async move {
                    for h in &hashes {
                        black_box(cache.lookup(h).await.unwrap().unwrap());
                    }
                }
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
    rt.block_on(store.pool().close());
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.clone().into_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
}

criterion_group!(store, benches);
criterion_main!(store);
