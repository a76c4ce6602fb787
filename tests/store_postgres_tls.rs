//! PostgresStore over TLS, against a PostgreSQL cluster of the test's own with `ssl = on`
//! that accepts only TLS on TCP, with a CA and certificates the test makes (rcgen):
//! `sslmode` and `sslrootcert` as libpq users know them, on the pool and on the change
//! feed's `LISTEN` connection; client certificates (`sslcert`, `sslkey`); a wrong CA is
//! one clear error at once, which never holds the password.
//!
//! Needs PostgreSQL's server binaries (initdb); without `TEST_POSTGRES_URL` (which CI
//! sets when it installed them) the tests say they skipped, unless
//! `TOWER_API_KEY_REQUIRE_SERVICES=1`, which makes it a failure.
#![cfg(feature = "postgres")]

use std::time::{Duration, Instant};

use tower_api_key::KeyStore;
use tower_api_key::store::{ChangeFeed, NewKey, PostgresStore, StoreError};

#[path = "common/pg.rs"]
mod pg;
#[path = "common/tls.rs"]
mod tls;
#[path = "common/unique.rs"]
mod unique;

use pg::Cluster;
use tls::{CLIENT_NAME, Pki};

const PASSWORD: &str = "s3cret-pg-pw";

struct Setup {
    pki: Pki,
    cluster: Cluster,
}

fn setup(label: &str) -> Option<Setup> {
    pg::test_url()?;
    let pki = Pki::new(label);
    let cluster = Cluster::start_tls(
        &pki.server_cert_pem,
        &pki.server_key_pem,
        &pki.ca_pem,
        PASSWORD,
        CLIENT_NAME,
    );
    Some(Setup { pki, cluster })
}

impl Setup {
    /// `postgres` with the password, on `host`, with `query`.
    fn url(&self, host: &str, query: &str) -> String {
        format!(
            "postgres://postgres:{PASSWORD}@{host}:{}/postgres?{query}",
            self.cluster.port
        )
    }

    fn ca(&self) -> String {
        self.pki.ca().display().to_string()
    }

    fn other_ca(&self) -> String {
        self.pki.other_ca().display().to_string()
    }
}

/// Connects within 20 s, whatever the answer.
async fn connect(url: &str) -> Result<PostgresStore, StoreError> {
    let started = Instant::now();
    let store = tokio::time::timeout(Duration::from_secs(20), PostgresStore::connect(url))
        .await
        .expect("connect answers within 20 s (no hang)");
    assert!(started.elapsed() < Duration::from_secs(20));
    store
}

/// Is the pool's connection encrypted?
async fn pool_uses_tls(store: &PostgresStore) -> bool {
    sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(store.pool())
        .await
        .unwrap()
}

/// A failure to connect: one line, naming what failed, without the password.
fn assert_clear(e: &StoreError, what: &str, expect: &str) {
    let text = e.to_string();
    assert!(text.contains(expect), "{what}: {text}");
    assert!(!text.contains('\n'), "{what}: one line: {text}");
    assert!(!text.contains(PASSWORD), "{what}: {text}");
    assert!(!format!("{e:?}").contains(PASSWORD), "{what}: {e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_on_the_pool_and_the_change_feed() {
    let Some(s) = tokio::task::block_in_place(|| setup("pg-full")) else {
        return;
    };
    let url = s.url(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={}", s.ca()),
    );
    let store = connect(&url).await.unwrap();
    assert!(pool_uses_tls(&store).await);
    assert!(!format!("{store:?}").contains(PASSWORD));
    assert!(!format!("{:?}", PostgresStore::builder(&url)).contains(PASSWORD));

    // The change feed's LISTEN connection is encrypted too, and is woken.
    let mut wakeups = store.subscribe().await.unwrap().expect("PostgreSQL pushes");
    let listener_tls: Vec<bool> = sqlx::query_scalar(
        "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.application_name = 'tower-api-key-changes'",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(listener_tls, [true], "the LISTEN connection");
    store.create(NewKey::new("acme"), "test").await.unwrap();
    let woken = tokio::time::timeout(Duration::from_secs(20), wakeups.next())
        .await
        .expect("woken within 20 s");
    assert!(woken, "a notification over TLS");
    store.pool().close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmodes_as_libpq_has_them() {
    let Some(s) = tokio::task::block_in_place(|| setup("pg-modes")) else {
        return;
    };
    // require: encrypted, the certificate not checked.
    let store = connect(&s.url("127.0.0.1", "sslmode=require"))
        .await
        .unwrap();
    assert!(pool_uses_tls(&store).await);
    store.pool().close().await;
    // The default (prefer) takes TLS when offered, as libpq does.
    let store = connect(&s.url("127.0.0.1", "")).await.unwrap();
    assert!(pool_uses_tls(&store).await);
    store.pool().close().await;
    // disable: the server accepts only TLS, so it refuses.
    let e = connect(&s.url("127.0.0.1", "sslmode=disable"))
        .await
        .unwrap_err();
    assert_clear(&e, "disable", "no encryption");

    // verify-ca: the CA checked.
    let ca = s.ca();
    let store = connect(&s.url("127.0.0.1", &format!("sslmode=verify-ca&sslrootcert={ca}")))
        .await
        .unwrap();
    assert!(pool_uses_tls(&store).await);
    store.pool().close().await;
    // 127.0.0.2 is not a name in the certificate (127.0.0.1 and localhost are):
    // verify-full refuses it. So does verify-ca, which libpq would let through: sqlx
    // 0.8's rustls verifier misses rustls 0.23.24's new name-mismatch error
    // (launchbadge/sqlx#3793, fixed in sqlx 0.9), so verify-ca is verify-full for now,
    // stricter and never weaker (the README says so). When this fails, sqlx was mended:
    // update the README.
    for mode in ["verify-full", "verify-ca"] {
        let e = connect(&s.url("127.0.0.2", &format!("sslmode={mode}&sslrootcert={ca}")))
            .await
            .unwrap_err();
        assert_clear(&e, &format!("{mode}, wrong name"), "not valid for name");
    }

    // A wrong CA: one clear line, at once.
    let other = s.other_ca();
    let e = connect(&s.url(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={other}"),
    ))
    .await
    .unwrap_err();
    assert_clear(&e, "verify-full, wrong CA", "UnknownIssuer");
    // libpq: require with a root certificate checks it (as verify-ca).
    let e = connect(&s.url("127.0.0.1", &format!("sslmode=require&sslrootcert={other}")))
        .await
        .unwrap_err();
    assert_clear(&e, "require, wrong CA", "UnknownIssuer");
    // sslrootcert=system: the system's roots (which do not know the test's CA), not a
    // file named "system".
    let e = connect(&s.url("127.0.0.1", "sslrootcert=system"))
        .await
        .unwrap_err();
    assert_clear(&e, "sslrootcert=system", "UnknownIssuer");
    let e = connect(&s.url("127.0.0.1", "sslrootcert=system&sslmode=require"))
        .await
        .unwrap_err();
    assert_clear(&e, "system with require", "weak sslmode");
    // A missing CA file is named.
    let e = connect(&s.url(
        "127.0.0.1",
        "sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
    ))
    .await
    .unwrap_err();
    assert_clear(&e, "missing CA file", "No such file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_log_in() {
    let Some(s) = tokio::task::block_in_place(|| setup("pg-cert")) else {
        return;
    };
    let base = format!(
        "postgres://{CLIENT_NAME}@127.0.0.1:{}/postgres?sslmode=verify-full&sslrootcert={}",
        s.cluster.port,
        s.ca()
    );
    let with = format!(
        "{base}&sslcert={}&sslkey={}",
        s.pki.path("client.pem").display(),
        s.pki.path("client.key").display()
    );
    let store = connect(&with).await.unwrap();
    assert!(pool_uses_tls(&store).await);
    let user: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(user, CLIENT_NAME);
    store.pool().close().await;
    let e = connect(&base).await.unwrap_err();
    let text = e.to_string();
    assert!(!text.contains('\n'), "{text}");
    assert!(!text.contains("PRIVATE KEY"), "{text}");
}
