//! How long a revocation made through one instance takes to reach another's cache: two
//! store handles on one database (two pools, as two processes have), the second one's
//! `CachedResolver` following the change feed.
//!
//! `cargo bench --bench propagation --features sqlite,postgres`. Rows:
//! - `postgres, LISTEN/NOTIFY`: the default on PostgreSQL (needs `TEST_POSTGRES_URL`;
//!   a database of its own, dropped afterwards);
//! - `postgres, polling`: the same database with the push channel hidden, polled every
//!   250 ms;
//! - `sqlite, polling`: one database file, polled every 250 ms.
//!
//! Each row revokes `REVOCATIONS` keys one after another, each already cached by the
//! follower, and times from the start of the revoke call to the moment the follower has
//! applied it (the next request with the key is then refused), and from the revoke's
//! commit. Figures are printed as p50 / p99 / max in milliseconds.

use std::str::FromStr;
use std::time::{Duration, Instant};

use sqlx::ConnectOptions;
use sqlx::postgres::PgConnectOptions;
use tower_api_key::store::{
    ChangeFeed, Changes, NewKey, PostgresStore, SqliteStore, StoreError, Wakeups,
};
use tower_api_key::{CachedResolver, KeyResolver, KeyStore};

const REVOCATIONS: usize = 200;

/// A feed with its push channel hidden: readers poll.
struct PollOnly<F>(F);

#[async_trait::async_trait]
impl<F: ChangeFeed> ChangeFeed for PollOnly<F> {
    async fn changes_after(&self, after: u64, limit: usize) -> Result<Changes, StoreError> {
        self.0.changes_after(after, limit).await
    }
    async fn last_seq(&self) -> Result<u64, StoreError> {
        self.0.last_seq().await
    }
    async fn subscribe(&self) -> Result<Option<Box<dyn Wakeups>>, StoreError> {
        Ok(None)
    }
}

/// Revokes through `writer` and waits for `reader`'s cache to apply each revocation.
async fn measure<W, R, F>(label: &str, writer: W, reader: R, feed: F)
where
    W: KeyStore + ChangeFeed,
    R: KeyResolver + Clone,
    F: ChangeFeed,
{
    let cache = CachedResolver::builder(reader)
        .ttl(Duration::from_secs(3600))
        .build();
    let follower = cache.follow(feed);
    let mut ids = Vec::with_capacity(REVOCATIONS);
    for i in 0..REVOCATIONS {
        let created = writer
            .create(NewKey::new(format!("c{i}")), "bench")
            .await
            .unwrap();
        ids.push(created.record);
    }
    let last = writer.last_seq().await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), follower.applied(last))
        .await
        .expect("the follower caught up");
    for record in &ids {
        assert!(cache.lookup(&record.hash).await.unwrap().is_some());
    }
    let (mut from_call, mut from_commit) = (Vec::new(), Vec::new());
    for record in &ids {
        let started = Instant::now();
        writer.revoke(&record.id, "bench").await.unwrap();
        let committed = Instant::now();
        let seq = writer.last_seq().await.unwrap();
        tokio::time::timeout(Duration::from_secs(30), follower.applied(seq))
            .await
            .expect("the revocation arrived");
        let done = Instant::now();
        from_call.push(done - started);
        from_commit.push(done - committed);
        let now = cache.lookup(&record.hash).await.unwrap().unwrap();
        assert!(now.record().revoked_at.is_some(), "refused from here on");
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let pct = |v: &mut Vec<Duration>, p: f64| {
        v.sort();
        v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
    };
    println!(
        "{label:<26} from the revoke call: p50 {:7.2} ms  p99 {:7.2} ms  max {:7.2} ms | \
         from its commit: p50 {:7.2} ms  p99 {:7.2} ms   ({REVOCATIONS} revocations)",
        ms(pct(&mut from_call, 0.50)),
        ms(pct(&mut from_call, 0.99)),
        ms(*from_call.last().unwrap()),
        ms(pct(&mut from_commit, 0.50)),
        ms(pct(&mut from_commit, 0.99)),
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: both run.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        match std::env::var("TEST_POSTGRES_URL") {
            Ok(url) if !url.is_empty() => {
                let server = PgConnectOptions::from_str(&url).unwrap();
                let name = format!("tak_propagation_{}", std::process::id());
                let mut admin = server.connect().await.unwrap();
                sqlx::query(&format!("CREATE DATABASE \"{name}\""))
                    .execute(&mut admin)
                    .await
                    .unwrap();
                let options = server.clone().database(&name);
                let connect = || PostgresStore::builder_with(options.clone()).connect();
                let (a, b) = (connect().await.unwrap(), connect().await.unwrap());
                measure("postgres, LISTEN/NOTIFY", a.clone(), b.clone(), b.clone()).await;
                measure(
                    "postgres, polling 250 ms",
                    a.clone(),
                    b.clone(),
                    PollOnly(b.clone()),
                )
                .await;
                a.pool().close().await;
                b.pool().close().await;
                sqlx::query(&format!("DROP DATABASE \"{name}\" WITH (FORCE)"))
                    .execute(&mut admin)
                    .await
                    .unwrap();
            }
            _ => println!("postgres rows skipped: TEST_POSTGRES_URL is not set"),
        }
        let path = std::env::temp_dir().join(format!(
            "tower-api-key-propagation-{}.db",
            std::process::id()
        ));
        let url = format!("sqlite://{}", path.display());
        let a = SqliteStore::connect(&url).await.unwrap();
        let b = SqliteStore::connect(&url).await.unwrap();
        measure("sqlite, polling 250 ms", a.clone(), b.clone(), b.clone()).await;
        for suffix in ["", "-wal", "-shm"] {
            let mut p = path.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    });
}
