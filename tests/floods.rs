//! Unknown-key floods: with `ApiKeyLayer::limit_failures`, a client that keeps failing
//! stops reaching the store, while its cached valid keys (refreshed as their entries age)
//! and other clients are untouched.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;
use tower_api_key::auth::FailureLimit;
use tower_api_key::{
    ApiKeyLayer, KeyFormat, KeyHash, KeyRecord, KeyResolver, MemoryStore, PeerAddr, ResolveError,
};

/// A resolver that counts the lookups that reach it.
#[derive(Clone, Default)]
struct Counting {
    store: MemoryStore,
    calls: Arc<AtomicUsize>,
}

#[async_trait::async_trait]
impl KeyResolver for Counting {
    async fn resolve(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, ResolveError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.store.resolve(hash).await
    }
}

fn app(counting: &Counting, limit: &str) -> Router {
    Router::new().route("/", get(|| async { "ok" })).layer(
        ApiKeyLayer::new(counting.clone())
            .trusted_proxies(["10.0.0.1/32".parse().unwrap()])
            .limit_failures(limit.parse::<FailureLimit>().unwrap()),
    )
}

/// One request with `key` from `peer` (and `X-Forwarded-For`, if given): the status,
/// `Retry-After` and the body.
async fn call(
    app: &Router,
    key: &str,
    peer: Option<&str>,
    forwarded: Option<&str>,
) -> (StatusCode, Option<String>, String) {
    let mut req = Request::get("/").header("authorization", format!("Bearer {key}"));
    if let Some(f) = forwarded {
        req = req.header("x-forwarded-for", f);
    }
    let mut req = req.body(Body::empty()).unwrap();
    if let Some(peer) = peer {
        let addr: SocketAddr = peer.parse().unwrap();
        req.extensions_mut().insert(PeerAddr(addr));
    }
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let retry = res
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, retry, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn a_flood_of_well_formed_unknown_keys_stops_reaching_the_store() {
    let counting = Counting::default();
    let format = KeyFormat::default();
    let valid = format.generate();
    counting.store.insert(KeyRecord::new(&valid, "acme"));
    let uncached = format.generate();
    counting.store.insert(KeyRecord::new(&uncached, "acme"));
    let app = app(&counting, "5/60s");
    let attacker = Some("192.0.2.66:4000");
    // The attacker's own valid key, used before the flood: cached.
    for _ in 0..3 {
        assert_eq!(
            call(&app, valid.expose_secret(), attacker, None).await.0,
            StatusCode::OK
        );
    }
    let before = counting.calls.load(Ordering::SeqCst);

    let mut statuses = Vec::new();
    for _ in 0..1_000 {
        // Well-formed, passing the checksum, each one new: a cache miss each.
        let minted = format.generate();
        statuses.push(call(&app, minted.expose_secret(), attacker, None).await);
    }
    let store_calls = counting.calls.load(Ordering::SeqCst) - before;
    assert_eq!(store_calls, 5, "only the failures allowed reach the store");
    assert!(
        statuses[..5]
            .iter()
            .all(|s| s.0 == StatusCode::UNAUTHORIZED)
    );
    for (status, retry, body) in &statuses[5..] {
        assert_eq!(*status, StatusCode::TOO_MANY_REQUESTS);
        let secs: u64 = retry.as_deref().unwrap().parse().unwrap();
        assert!((1..=60).contains(&secs), "{secs}");
        assert!(body.contains("TooManyFailures"), "{body}");
    }
    // Malformed keys are failures too, and refused alike.
    assert_eq!(
        call(&app, "sk_live_nonsense", attacker, None).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );

    // The attacker's cached valid key still works; a valid key it never used is not
    // looked up while it is blocked.
    for _ in 0..200 {
        assert_eq!(
            call(&app, valid.expose_secret(), attacker, None).await.0,
            StatusCode::OK
        );
    }
    assert_eq!(
        call(&app, uncached.expose_secret(), attacker, None).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(counting.calls.load(Ordering::SeqCst) - before, 5);

    // Other clients are not affected.
    let neighbour = Some("192.0.2.67:4000");
    assert_eq!(
        call(&app, format.generate().expose_secret(), neighbour, None)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(&app, uncached.expose_secret(), neighbour, None)
            .await
            .0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn the_block_ends_with_the_window_and_clients_behind_a_proxy_are_told_apart() {
    let counting = Counting::default();
    let format = KeyFormat::default();
    let app = app(&counting, "2/2s");
    let proxy = Some("10.0.0.1:5000");
    for _ in 0..2 {
        let (status, _, _) = call(
            &app,
            format.generate().expose_secret(),
            proxy,
            Some("198.51.100.7"),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let blocked = call(
        &app,
        format.generate().expose_secret(),
        proxy,
        Some("198.51.100.7"),
    )
    .await;
    assert_eq!(blocked.0, StatusCode::TOO_MANY_REQUESTS);
    // Another client behind the same proxy.
    let other = call(
        &app,
        format.generate().expose_secret(),
        proxy,
        Some("198.51.100.8"),
    )
    .await;
    assert_eq!(other.0, StatusCode::UNAUTHORIZED);
    // An untrusted peer cannot pick its address: it is counted as itself.
    for _ in 0..3 {
        call(
            &app,
            format.generate().expose_secret(),
            Some("192.0.2.9:1"),
            Some("198.51.100.99"),
        )
        .await;
    }
    assert_eq!(
        call(
            &app,
            format.generate().expose_secret(),
            Some("192.0.2.9:1"),
            Some("203.0.113.1")
        )
        .await
        .0,
        StatusCode::TOO_MANY_REQUESTS
    );
    // When the window ends, the client is looked up again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _, _) = call(
            &app,
            format.generate().expose_secret(),
            proxy,
            Some("198.51.100.7"),
        )
        .await;
        if status == StatusCode::UNAUTHORIZED {
            break;
        }
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert!(Instant::now() < deadline, "the block never ended");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Without a known address, requests are not limited.
    let before = counting.calls.load(Ordering::SeqCst);
    for _ in 0..10 {
        assert_eq!(
            call(&app, format.generate().expose_secret(), None, None)
                .await
                .0,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(counting.calls.load(Ordering::SeqCst) - before, 10);
}

#[tokio::test]
async fn a_blocked_clients_valid_key_keeps_working_when_its_entry_ages() {
    let counting = Counting::default();
    let format = KeyFormat::default();
    let valid = format.generate();
    counting.store.insert(KeyRecord::new(&valid, "acme"));
    // Entries fresh for 50 ms, kept (stale) for a minute after.
    let cache = tower_api_key::CachedResolver::builder(counting.clone())
        .ttl(Duration::from_millis(50))
        .stale_window(Duration::from_secs(60))
        .build();
    let app = Router::new().route("/", get(|| async { "ok" })).layer(
        ApiKeyLayer::from_cache(cache).limit_failures("5/60s".parse::<FailureLimit>().unwrap()),
    );
    let attacker = Some("192.0.2.66:4000");
    assert_eq!(
        call(&app, valid.expose_secret(), attacker, None).await.0,
        StatusCode::OK
    );
    for _ in 0..20 {
        let minted = format.generate();
        call(&app, minted.expose_secret(), attacker, None).await;
    }
    let blocked = counting.calls.load(Ordering::SeqCst);
    assert_eq!(
        blocked,
        1 + 5,
        "the valid key's load and the failures allowed"
    );
    assert_eq!(
        call(&app, format.generate().expose_secret(), attacker, None)
            .await
            .0,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Past its time to live the valid key's entry is refreshed (one store call), and the
    // key never stops working, while minted keys stay refused without a lookup.
    let deadline = Instant::now() + Duration::from_secs(10);
    while counting.calls.load(Ordering::SeqCst) == blocked {
        assert!(
            Instant::now() < deadline,
            "the valid key's entry was never refreshed"
        );
        assert_eq!(
            call(&app, valid.expose_secret(), attacker, None).await.0,
            StatusCode::OK
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let since = Instant::now();
    for _ in 0..50 {
        assert_eq!(
            call(&app, valid.expose_secret(), attacker, None).await.0,
            StatusCode::OK
        );
        assert_eq!(
            call(&app, format.generate().expose_secret(), attacker, None)
                .await
                .0,
            StatusCode::TOO_MANY_REQUESTS
        );
    }
    // One refresh at most per time to live (and the one that ended the wait).
    let refreshes = counting.calls.load(Ordering::SeqCst) - blocked;
    let most = 2 + (since.elapsed().as_millis() / 50) as usize;
    assert!(
        (1..=most).contains(&refreshes),
        "only the valid key's refreshes reach the store: {refreshes} (at most {most})"
    );
}
