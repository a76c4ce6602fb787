//! The KeyStore conformance suite on PostgresStore, against the server at
//! `TEST_POSTGRES_URL` (each test in a fresh database of its own, dropped afterwards).
//!
//! Without `TEST_POSTGRES_URL` the tests say they skipped, unless
//! `TOWER_API_KEY_REQUIRE_SERVICES=1`, which makes a missing server a failure.
#![cfg(feature = "postgres")]

use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, Row};
use tower_api_key::store::{NewKey, PostgresStore};
use tower_api_key::{CachedResolver, KeyResolver, KeyStore};

#[path = "common/conformance.rs"]
mod conformance;
#[path = "common/feed.rs"]
mod feed;

fn server() -> Option<PgConnectOptions> {
    match std::env::var("TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => {
            Some(PgConnectOptions::from_str(&url).expect("TEST_POSTGRES_URL"))
        }
        _ => {
            assert!(
                std::env::var("TOWER_API_KEY_REQUIRE_SERVICES").as_deref() != Ok("1"),
                "TEST_POSTGRES_URL is not set and TOWER_API_KEY_REQUIRE_SERVICES=1 requires PostgreSQL"
            );
            eprintln!("skipped: TEST_POSTGRES_URL is not set");
            None
        }
    }
}

/// A fresh, empty database on the test server.
struct FreshDb {
    server: PgConnectOptions,
    name: String,
}

impl FreshDb {
    async fn new(server: &PgConnectOptions, label: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let name = format!("tak_{label}_{}_{nanos}", std::process::id());
        let mut admin = server
            .connect()
            .await
            .expect("connect to TEST_POSTGRES_URL");
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .await
            .unwrap();
        admin.close().await.unwrap();
        Self {
            server: server.clone(),
            name,
        }
    }

    fn options(&self) -> PgConnectOptions {
        self.server.clone().database(&self.name)
    }

    async fn dump(&self) -> String {
        let mut conn = self.options().connect().await.unwrap();
        let mut text = String::new();
        for table in ["api_keys", "api_key_audit"] {
            let sql =
                format!("SELECT COALESCE(string_agg(t::text, E'\\n'), '') AS d FROM {table} t");
            let row = sqlx::query(&sql).fetch_one(&mut conn).await.unwrap();
            text.push_str(&row.get::<String, _>("d"));
        }
        conn.close().await.unwrap();
        text
    }

    async fn drop_db(self) {
        let mut admin = self.server.connect().await.unwrap();
        sqlx::query(&format!("DROP DATABASE \"{}\" WITH (FORCE)", self.name))
            .execute(&mut admin)
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store() {
    let Some(server) = server() else { return };
    let db = FreshDb::new(&server, "conformance").await;
    let store = PostgresStore::builder_with(db.options())
        .connect()
        .await
        .unwrap();
    conformance::run(store.clone(), || db.dump()).await;
    store.pool().close().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_postgres_store() {
    let Some(server) = server() else { return };
    let db = FreshDb::new(&server, "cached").await;
    let store = PostgresStore::builder_with(db.options())
        .connect()
        .await
        .unwrap();
    conformance::run(CachedResolver::new(store.clone()), || db.dump()).await;
    store.pool().close().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_change_feed() {
    let Some(server) = server() else { return };
    let db = FreshDb::new(&server, "feed").await;
    let store = PostgresStore::builder_with(db.options())
        .connect()
        .await
        .unwrap();
    feed::logs_every_change(&store).await;
    feed::a_reader_never_skips_a_change(&store).await;
    let pruning = PostgresStore::builder_with(db.options())
        .change_retention(std::time::Duration::ZERO)
        .connect()
        .await
        .unwrap();
    feed::a_reader_behind_the_retention_is_told(&pruning).await;
    store.pool().close().await;
    pruning.pool().close().await;
    db.drop_db().await;
}

#[tokio::test]
async fn two_instances_share_keys_and_migrations_run_once() {
    let Some(server) = server() else { return };
    let db = FreshDb::new(&server, "shared").await;
    let a = PostgresStore::builder_with(db.options())
        .connect()
        .await
        .unwrap();
    let b = PostgresStore::builder_with(db.options())
        .connect()
        .await
        .unwrap();
    let created = a.create(NewKey::new("acme"), "cli").await.unwrap();
    assert_eq!(
        b.resolve(&created.record.hash).await.unwrap(),
        Some(created.record.clone())
    );
    b.revoke(&created.record.id, "cli").await.unwrap();
    assert!(
        a.get(&created.record.id)
            .await
            .unwrap()
            .unwrap()
            .revoked_at
            .is_some()
    );
    a.pool().close().await;
    b.pool().close().await;
    db.drop_db().await;
}
