//! `RedisRateLimitStore` over TLS, against `redis-server`s of the tests' own that speak
//! only TLS (`--tls-port`), with a CA and certificates the test makes (rcgen): the CA
//! file and client certificates, a wrong CA (one clear error at once, never a hang), the
//! system's roots, `#insecure`, and no password in any error or log line.
//!
//! Without `redis-server` on the PATH the tests say they skipped, unless
//! `TOWER_API_KEY_REQUIRE_SERVICES=1`, which makes it a failure.
#![cfg(feature = "redis")]

#[path = "common/redis.rs"]
mod common_redis;
#[path = "common/tls.rs"]
mod common_tls;
#[path = "common/unique.rs"]
mod unique;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common_redis::OwnRedis;
use common_tls::Pki;
use tower_api_key::RateLimitPolicy;
use tower_api_key::ratelimit::{
    RateLimitStore, RedisMode, RedisPingError, RedisRateLimitStore, Subject,
};

const PASSWORD: &str = "s3cret-redis-pw";

fn now() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    )
    .unwrap()
}

fn url(server: &OwnRedis, fragment: &str) -> String {
    format!(
        "rediss://:{PASSWORD}@127.0.0.1:{}/{fragment}",
        server.port()
    )
}

/// A ping that must answer within 10 s, whatever it answers.
async fn ping(store: &RedisRateLimitStore) -> Result<(), RedisPingError> {
    let started = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(10), store.ping())
        .await
        .expect("ping answers within 10 s");
    assert!(started.elapsed() < Duration::from_secs(10));
    answer
}

/// Three allowed, the fourth refused: limits are kept in Redis (not in the fallback).
async fn limits_through_redis(store: &RedisRateLimitStore, label: &str) {
    let policy: RateLimitPolicy = "3/60s".parse().unwrap();
    let id = format!("{label}-{}", now());
    let subject = Subject::key(&id);
    let t = now();
    let mut allowed = Vec::new();
    for i in 0..4 {
        let decision = store
            .check(subject, std::slice::from_ref(&policy), 1, t + i)
            .await
            .expect("Redis answers");
        allowed.push(decision.allowed());
    }
    assert_eq!(allowed, [true, true, true, false], "{label}");
    assert!(!store.is_degraded(), "{label}: limited through Redis");
}

/// A one-line error that names TLS and not the password.
fn assert_tls_error(e: &RedisPingError, what: &str) {
    let text = e.to_string();
    assert!(e.is_misconfigured(), "{what}: {text}");
    assert!(
        text.starts_with("TLS with Redis failed: "),
        "{what}: {text}"
    );
    assert!(!text.contains('\n'), "{what}: one line: {text}");
    assert!(!text.contains(PASSWORD), "{what}: {text}");
    assert!(!format!("{e:?}").contains(PASSWORD), "{what}: {e:?}");
}

#[tokio::test]
async fn the_ca_file_verifies_the_server_in_both_modes() {
    let pki = Pki::new("redis");
    let Some(server) = OwnRedis::start_tls(
        &pki.path("server.pem"),
        &pki.path("server.key"),
        &pki.ca(),
        false,
        Some(PASSWORD),
    ) else {
        return;
    };
    for mode in [RedisMode::Exact, RedisMode::Batched] {
        let store = RedisRateLimitStore::builder(&url(&server, ""))
            .ca_file(pki.ca())
            .build()
            .unwrap()
            .with_prefix(format!("tls:{mode:?}:"))
            .with_mode(mode);
        ping(&store).await.unwrap();
        limits_through_redis(&store, &format!("{mode:?}")).await;
        assert!(!format!("{store:?}").contains(PASSWORD));
    }
    // The CA as PEM text works the same.
    let store = RedisRateLimitStore::builder(&url(&server, ""))
        .ca_pem(pki.ca_pem.clone())
        .build()
        .unwrap()
        .with_prefix("tls:pem:")
        .with_mode(RedisMode::Exact);
    limits_through_redis(&store, "pem").await;
}

#[tokio::test]
async fn a_wrong_ca_is_one_clear_error_at_once_and_the_store_falls_back() {
    let pki = Pki::new("redis-wrong");
    let Some(server) = OwnRedis::start_tls(
        &pki.path("server.pem"),
        &pki.path("server.key"),
        &pki.ca(),
        false,
        Some(PASSWORD),
    ) else {
        return;
    };
    // Capture the store's log (it logs from this thread's calls).
    let log = LogCapture::default();
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_writer(log.clone())
            .with_max_level(tracing::Level::DEBUG)
            .finish(),
    );
    let store = RedisRateLimitStore::builder(&url(&server, ""))
        .ca_file(pki.other_ca())
        .build()
        .unwrap()
        .with_mode(RedisMode::Exact);
    let e = ping(&store).await.unwrap_err();
    assert_tls_error(&e, "wrong CA");
    assert!(e.to_string().contains("UnknownIssuer"), "{e}");
    // A check does not hang either: it is answered by the local fallback, and said so.
    let policy: RateLimitPolicy = "3/60s".parse().unwrap();
    let decision = tokio::time::timeout(
        Duration::from_secs(10),
        store.check(Subject::key("k"), std::slice::from_ref(&policy), 1, now()),
    )
    .await
    .expect("a check answers within 10 s")
    .expect("the local fallback answers");
    assert!(decision.allowed());
    assert!(store.is_degraded());
    let text = log.text();
    assert!(text.contains("limiting per instance"), "{text}");
    assert!(!text.contains(PASSWORD), "{text}");

    // The system's roots do not know the test's CA either.
    let store = RedisRateLimitStore::open(&url(&server, "")).unwrap();
    let e = ping(&store).await.unwrap_err();
    assert_tls_error(&e, "system roots");

    // A wrong password is also a configuration error, and not repeated.
    let wrong = format!("rediss://:not-{PASSWORD}@127.0.0.1:{}/", server.port());
    let store = RedisRateLimitStore::builder(&wrong)
        .ca_file(pki.ca())
        .build()
        .unwrap();
    let e = ping(&store).await.unwrap_err();
    assert!(e.is_misconfigured(), "{e}");
    assert!(
        e.to_string().starts_with("Redis refused the credentials"),
        "{e}"
    );
    assert!(!e.to_string().contains(PASSWORD), "{e}");

    // TLS to a plain-text port: Redis waits for the end of a line that the handshake
    // never sends, as a server that does not answer would; so it is an outage (the
    // store falls back), said within the deadline, not a hang.
    if let Some(plain) = OwnRedis::start() {
        let tls_url = format!("rediss://:{PASSWORD}@127.0.0.1:{}/", plain.port());
        let store = RedisRateLimitStore::builder(&tls_url)
            .ca_file(pki.ca())
            .build()
            .unwrap();
        let e = ping(&store).await.unwrap_err();
        assert!(!e.is_misconfigured(), "{e}");
        assert!(!e.to_string().contains(PASSWORD), "{e}");
    }

    // Plain text to a TLS port: no answer (the server waits for a handshake), and
    // still no password.
    let plain = format!("redis://:{PASSWORD}@127.0.0.1:{}/", server.port());
    let store = RedisRateLimitStore::open(&plain).unwrap();
    let e = ping(&store).await.unwrap_err();
    assert!(!e.to_string().contains(PASSWORD), "{e}");
}

#[tokio::test]
async fn insecure_skips_the_checks_and_says_so() {
    let pki = Pki::new("redis-insecure");
    let Some(server) = OwnRedis::start_tls(
        &pki.path("server.pem"),
        &pki.path("server.key"),
        &pki.ca(),
        false,
        Some(PASSWORD),
    ) else {
        return;
    };
    let log = LogCapture::default();
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_writer(log.clone())
            .with_max_level(tracing::Level::INFO)
            .finish(),
    );
    let store = RedisRateLimitStore::open(&url(&server, "#insecure"))
        .unwrap()
        .with_prefix("tls:insecure:")
        .with_mode(RedisMode::Exact);
    ping(&store).await.unwrap();
    limits_through_redis(&store, "insecure").await;
    let text = log.text();
    assert!(text.contains("without certificate checks"), "{text}");
    assert!(!text.contains(PASSWORD), "{text}");
    // Only that fragment is taken.
    let e = RedisRateLimitStore::open(&url(&server, "#trust-me")).unwrap_err();
    assert!(!e.to_string().contains(PASSWORD), "{e}");
}

#[tokio::test]
async fn client_certificates_for_a_server_that_asks_for_them() {
    let pki = Pki::new("redis-mtls");
    let Some(server) = OwnRedis::start_tls(
        &pki.path("server.pem"),
        &pki.path("server.key"),
        &pki.ca(),
        true,
        None,
    ) else {
        return;
    };
    let url = format!("rediss://127.0.0.1:{}/", server.port());
    let without = RedisRateLimitStore::builder(&url)
        .ca_file(pki.ca())
        .build()
        .unwrap();
    let e = ping(&without).await.unwrap_err();
    assert!(e.is_misconfigured(), "without a client certificate: {e}");
    let with = RedisRateLimitStore::builder(&url)
        .ca_file(pki.ca())
        .client_cert_files(pki.path("client.pem"), pki.path("client.key"))
        .build()
        .unwrap()
        .with_prefix("tls:mtls:")
        .with_mode(RedisMode::Exact);
    ping(&with).await.unwrap();
    limits_through_redis(&with, "mtls").await;
    let pem = RedisRateLimitStore::builder(&url)
        .ca_pem(pki.ca_pem.clone())
        .client_cert_pem(pki.client_cert_pem.clone(), pki.client_key_pem.clone())
        .build()
        .unwrap();
    ping(&pem).await.unwrap();
    // The key never shows in Debug output.
    let builder = RedisRateLimitStore::builder(&url)
        .client_cert_pem(pki.client_cert_pem.clone(), pki.client_key_pem.clone());
    let debug = format!("{builder:?}");
    assert!(!debug.contains("PRIVATE KEY"), "{debug}");
}

#[tokio::test]
async fn configuration_errors_are_said_when_the_store_is_made() {
    let pki = Pki::new("redis-config");
    let e = RedisRateLimitStore::builder("rediss://:pw-in-url@127.0.0.1:1/")
        .ca_file(pki.path("missing.pem"))
        .build()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cannot read the Redis CA file") && e.contains("missing.pem"),
        "{e}"
    );
    assert!(!e.contains("pw-in-url"), "{e}");
    let e = RedisRateLimitStore::builder("redis://:pw-in-url@127.0.0.1:1/")
        .ca_file(pki.ca())
        .build()
        .unwrap_err()
        .to_string();
    assert!(e.contains("needs rediss://"), "{e}");
    // A key is not a certificate: refused, and not shown.
    let e = RedisRateLimitStore::builder("rediss://127.0.0.1:1/")
        .ca_file(pki.path("server.key"))
        .build()
        .unwrap_err()
        .to_string();
    assert!(e.contains("holds no PEM certificate"), "{e}");
    assert!(!e.contains(&pki.server_key_pem[40..80]), "{e}");
    let e = RedisRateLimitStore::open("redis://:pw-in-url@127.0.0.1:notaport/")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("invalid Redis URL"), "{e}");
    assert!(!e.contains("pw-in-url"), "{e}");
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
