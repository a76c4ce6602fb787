//! Key stores: `resolve` on a cache miss (every lookup goes to the database), and the
//! cold start of 1 000 distinct keys through a fresh `CachedResolver`.
//!
//! `cargo bench --bench store --features sqlite,postgres`; PostgreSQL is measured when
//! `TEST_POSTGRES_URL` names a server (in a database of its own, dropped afterwards).
#![allow(missing_docs)] // criterion_group! generates an undocumented fn.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};
use tower_api_key::store::{NewKey, PostgresStore, SqliteStore};
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
    postgres(&mut g, &rt, &order);
    g.finish();
    rt.block_on(store.pool().close());
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.clone().into_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
}

fn postgres(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &tokio::runtime::Runtime,
    order: &[usize],
) {
    let Ok(url) = std::env::var("TEST_POSTGRES_URL") else {
        eprintln!("store/postgres_*: skipped, TEST_POSTGRES_URL is not set");
        return;
    };
    let server = PgConnectOptions::from_str(&url).unwrap();
    let name = format!("tak_bench_{}", std::process::id());
    let (store, hashes) = rt.block_on(async {
        let mut admin = server.connect().await.unwrap();
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .await
            .unwrap();
        admin.close().await.unwrap();
        let store = PostgresStore::builder_with(server.clone().database(&name))
            .connect()
            .await
            .unwrap();
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
    let mut i = 0;
    g.bench_function("postgres_resolve_miss", |b| {
        b.to_async(rt).iter(|| {
            i = (i + 1) % KEYS;
            let hash = hashes[order[i]];
            let store = &store;
            async move { black_box(store.resolve(&hash).await.unwrap().unwrap()) }
        })
    });
    g.bench_function("postgres_cold_start_1000_keys", |b| {
        b.to_async(rt).iter_batched(
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
    rt.block_on(async {
        store.pool().close().await;
        let mut admin = server.connect().await.unwrap();
        sqlx::query(&format!("DROP DATABASE \"{name}\" WITH (FORCE)"))
            .execute(&mut admin)
            .await
            .unwrap();
    });
}

criterion_group!(store, benches);
criterion_main!(store);
