//! Keys minted elsewhere, imported by hash: accepted only with
//! `ApiKeyLayer::accept_foreign_keys(true)`, bounded by the negative cache, and never at
//! the cost of our own keys' checksum shortcut.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::header::AUTHORIZATION;
use http::{Request, StatusCode};
use tower_api_key::key::MAX_FOREIGN_KEY_LEN;
use tower_api_key::store::ImportedKey;
use tower_api_key::{
    ApiKeyLayer, Authenticated, CachedResolver, KeyFormat, KeyHash, KeyRecord, KeyResolver,
    KeyStore, MemoryStore, ResolveError,
};

#[path = "common/http.rs"]
mod common_http;
use common_http::call;

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

const DODA: &str = "doda_5f3c9a1e7b2d4c6e8f0a1b3c5d7e9f21";
const STRIPE_LIKE: &str = "sk_test_51H8xYzAbCdEfGhIjKlMnOpQrStUvWxYz0123456789";
const UUID: &str = "0b9c6e1e-5e37-4b7e-9f0e-8d4a0f3c2a11";

struct App {
    router: Router,
    counting: Counting,
    cache: CachedResolver<Counting>,
}

async fn app(accept: bool) -> App {
    let counting = Counting::default();
    let imported: Vec<ImportedKey> = [DODA, STRIPE_LIKE, UUID]
        .iter()
        .map(|k| ImportedKey::new(KeyHash::of(k), "legacy"))
        .collect();
    counting.store.import(imported, "test").await.unwrap();
    let cache = CachedResolver::builder(counting.clone())
        .negative_ttl(Duration::from_secs(3600))
        .build();
    let router = Router::new()
        .route(
            "/whoami",
            get(|auth: Authenticated| async move { auth.consumer().to_owned() }),
        )
        .layer(ApiKeyLayer::from_cache(cache.clone()).accept_foreign_keys(accept));
    App {
        router,
        counting,
        cache,
    }
}

impl App {
    async fn status(&self, key: &str) -> StatusCode {
        let req = Request::get("/whoami")
            .header(AUTHORIZATION, format!("Bearer {key}"))
            .body(Body::empty())
            .unwrap();
        call(&self.router, req).await.0.status()
    }

    fn calls(&self) -> usize {
        self.counting.calls.load(Ordering::SeqCst)
    }
}

#[tokio::test]
async fn imported_foreign_keys_authenticate_only_with_the_option_on() {
    let off = app(false).await;
    for key in [DODA, STRIPE_LIKE, UUID] {
        assert_eq!(off.status(key).await, StatusCode::UNAUTHORIZED, "{key}");
    }
    assert_eq!(
        off.calls(),
        0,
        "without the option a foreign key is never looked up"
    );

    let on = app(true).await;
    for key in [DODA, STRIPE_LIKE, UUID] {
        assert_eq!(on.status(key).await, StatusCode::OK, "{key}");
        // Served from the cache the second time.
        assert_eq!(on.status(key).await, StatusCode::OK, "{key}");
    }
    assert_eq!(on.calls(), 3);
}

#[tokio::test]
async fn unknown_foreign_keys_are_401_and_remembered_by_the_negative_cache() {
    let app = app(true).await;
    let unknown = "doda_ffffffffffffffffffffffffffffffff";
    assert_eq!(app.status(unknown).await, StatusCode::UNAUTHORIZED);
    assert_eq!(app.calls(), 1);
    assert_eq!(app.status(unknown).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.calls(),
        1,
        "the second attempt is served by the negative cache"
    );
}

#[tokio::test]
async fn our_own_keys_keep_the_checksum_shortcut() {
    let app = app(true).await;
    let ours = KeyFormat::default().generate();
    app.counting.store.insert(KeyRecord::new(&ours, "acme"));
    assert_eq!(app.status(ours.expose_secret()).await, StatusCode::OK);
    assert_eq!(app.calls(), 1);

    let mut typo = ours.expose_secret().to_owned();
    let last = typo.pop().unwrap();
    typo.push(if last == 'a' { 'b' } else { 'a' });
    // Even imported, a text that claims our prefix is judged by the checksum alone.
    let claims_ours = "sk_live_legacy0123456789";
    app.counting
        .store
        .import(
            vec![ImportedKey::new(KeyHash::of(claims_ours), "x")],
            "test",
        )
        .await
        .unwrap();
    let too_long = "a".repeat(MAX_FOREIGN_KEY_LEN + 1);
    for key in [
        typo.as_str(),
        "sk_live_",
        claims_ours,
        &too_long,
        "caf\u{e9}",
    ] {
        assert_eq!(app.status(key).await, StatusCode::UNAUTHORIZED, "{key:.20}");
    }
    app.cache.run_pending_tasks().await;
    assert_eq!(app.calls(), 1, "none of these reached the resolver");
}

#[tokio::test]
async fn a_key_tried_before_its_import_works_once_imported_through_the_cache() {
    let cache = CachedResolver::builder(MemoryStore::new())
        .negative_ttl(Duration::from_secs(3600))
        .build();
    let router = Router::new()
        .route(
            "/",
            get(|auth: Authenticated| async move { auth.consumer().to_owned() }),
        )
        .layer(ApiKeyLayer::from_cache(cache.clone()).accept_foreign_keys(true));
    let later = "3f2504e0-4f89-11d3-9a0c-0305e82c3301";
    let send = || {
        let req = Request::get("/")
            .header(AUTHORIZATION, format!("Bearer {later}"))
            .body(Body::empty())
            .unwrap();
        call(&router, req)
    };
    assert_eq!(send().await.0.status(), StatusCode::UNAUTHORIZED);
    // Imported through the layer's cache: the negative entry goes with it.
    cache
        .import(vec![ImportedKey::new(KeyHash::of(later), "late")], "test")
        .await
        .unwrap();
    let (r, body) = send().await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(body, "late");
}
