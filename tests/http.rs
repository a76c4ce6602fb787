//! Every row of DESIGN.md "Wire behaviour" (but 429), end to end through an axum Router.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderName, Request, Response, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;
use tower_api_key::KeyStore as _;
use tower_api_key::{
    ApiKey, ApiKeyLayer, Authenticated, CachedResolver, KeyFormat, KeyHash, KeyRecord, KeyResolver,
    KeySource, MemoryStore, Rejection, RequireScope, RequireScopeLayer, ResolveError, Scope,
    Scopes, scope,
};

#[path = "common/http.rs"]
mod common_http;
use common_http::call;

scope!(OrdersRead = "orders:read");

/// A store that counts lookups and can be made to fail.
#[derive(Clone, Default)]
struct Store {
    records: MemoryStore,
    calls: Arc<AtomicUsize>,
    down: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl KeyResolver for Store {
    async fn resolve(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, ResolveError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(ResolveError::new("connection refused"));
        }
        self.records.resolve(hash).await
    }
}

impl Store {
    fn issue(&self, scopes: &[&str], edit: impl FnOnce(KeyRecord) -> KeyRecord) -> ApiKey {
        let key = KeyFormat::default().generate();
        let record = KeyRecord::new(&key, "acme").with_scopes(Scopes::parse(scopes).unwrap());
        self.records.insert(edit(record));
        key
    }
}

struct App {
    store: Store,
    router: Router,
    handler_calls: Arc<AtomicUsize>,
    cache: CachedResolver<Store>,
}

fn app_with(layer: impl FnOnce(ApiKeyLayer<Store>) -> ApiKeyLayer<Store>) -> App {
    let store = Store::default();
    let handler_calls = Arc::new(AtomicUsize::new(0));
    let calls = handler_calls.clone();
    let whoami = move |auth: Option<Authenticated>, headers: HeaderMap| {
        let calls = calls.clone();
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            let who = auth.map_or_else(|| "anonymous".to_owned(), |a| a.consumer().to_owned());
            let saw_key = headers.contains_key(AUTHORIZATION) || headers.contains_key("x-api-key");
            format!("{who} saw_key={saw_key}")
        }
    };
    let admin = Router::new()
        .route("/admin", get(|| async { "admin area" }))
        .layer(RequireScopeLayer::new([Scope::from_static("admin")]));
    let cache = CachedResolver::builder(store.clone())
        .ttl(Duration::from_secs(3600))
        .build();
    let router = Router::new()
        .route("/whoami", get(whoami))
        .route(
            "/orders",
            get(
                |RequireScope(auth, ..): RequireScope<OrdersRead>| async move {
                    format!("orders for {}", auth.consumer())
                },
            ),
        )
        .merge(admin)
        .layer(layer(ApiKeyLayer::from_cache(cache.clone())));
    App {
        store,
        router,
        handler_calls,
        cache,
    }
}

fn app() -> App {
    app_with(|l| {
        l.source(KeySource::bearer().or(KeySource::header(HeaderName::from_static("x-api-key"))))
    })
}

fn bearer(path: &str, key: &str) -> Request<Body> {
    Request::get(path)
        .header(AUTHORIZATION, format!("Bearer {key}"))
        .body(Body::empty())
        .unwrap()
}

async fn send(app: &App, req: Request<Body>) -> (Response<()>, String) {
    call(&app.router, req).await
}

fn www(r: &Response<()>) -> &str {
    r.headers()[WWW_AUTHENTICATE].to_str().unwrap()
}

fn problem(r: &Response<()>, body: &str) -> serde_json::Value {
    assert_eq!(r.headers()[CONTENT_TYPE], "application/problem+json");
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    for member in ["type", "title", "status", "detail"] {
        assert!(
            v.get(member).is_some(),
            "problem body lacks {member}: {body}"
        );
    }
    assert_eq!(v["status"], r.status().as_u16());
    v
}

#[tokio::test]
async fn allowed_request_reaches_the_handler_with_its_caller() {
    let app = app();
    let key = app.store.issue(&[], |r| r);
    let (r, body) = send(&app, bearer("/whoami", key.expose_secret())).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(body, "acme saw_key=true");
    // The scheme is case-insensitive, and X-API-Key works too.
    for req in [
        Request::get("/whoami")
            .header(AUTHORIZATION, format!("bEaReR {}", key.expose_secret()))
            .body(Body::empty())
            .unwrap(),
        Request::get("/whoami")
            .header("x-api-key", key.expose_secret())
            .body(Body::empty())
            .unwrap(),
    ] {
        assert_eq!(send(&app, req).await.0.status(), StatusCode::OK);
    }
}

#[tokio::test]
async fn no_key_is_401_with_a_bare_challenge() {
    let app = app();
    let (r, body) = send(&app, Request::get("/whoami").body(Body::empty()).unwrap()).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(www(&r), r#"Bearer realm="api""#);
    assert!(
        problem(&r, &body)["type"]
            .as_str()
            .unwrap()
            .ends_with("MissingKey")
    );
    assert_eq!(app.handler_calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn malformed_unknown_and_revoked_keys_get_one_identical_answer() {
    let app = app();
    let revoked = app
        .store
        .issue(&[], |r| r.with_revoked_at(SystemTime::now()));
    let unknown = KeyFormat::default().generate();
    let mut answers = Vec::new();
    for key in [
        "sk_live_garbage",
        unknown.expose_secret(),
        revoked.expose_secret(),
    ] {
        let (r, body) = send(&app, bearer("/whoami", key)).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(www(&r), r#"Bearer realm="api", error="invalid_token""#);
        problem(&r, &body);
        answers.push(body);
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "{answers:?}");
    assert_eq!(app.handler_calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn malformed_key_touches_no_cache_and_no_store() {
    let app = app();
    let good = KeyFormat::default().generate();
    let mut typo = good.expose_secret().to_owned();
    let last = typo.pop().unwrap();
    typo.push(if last == 'a' { 'b' } else { 'a' });
    for key in ["", "x", "sk_live_", &typo, &"A".repeat(10_000)] {
        let (r, _) = send(&app, bearer("/whoami", key)).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{key:.20}");
    }
    app.cache.run_pending_tasks().await;
    assert_eq!(app.store.calls.load(Ordering::SeqCst), 0);
    assert_eq!(app.cache.entry_count(), 0);
}

#[tokio::test]
async fn expired_key_is_401_with_a_description() {
    let app = app();
    let key = app.store.issue(&[], |r| {
        r.with_expires_at(SystemTime::now() - Duration::from_secs(1))
    });
    let (r, body) = send(&app, bearer("/whoami", key.expose_secret())).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        www(&r),
        r#"Bearer realm="api", error="invalid_token", error_description="The API key has expired""#
    );
    assert!(
        problem(&r, &body)["detail"]
            .as_str()
            .unwrap()
            .contains("expired")
    );
}

#[tokio::test]
async fn expiry_is_checked_on_every_request_not_left_to_the_cache_ttl() {
    // The cache keeps records for an hour; the key expires in 300 ms.
    let app = app();
    let key = app.store.issue(&[], |r| {
        r.with_expires_at(SystemTime::now() + Duration::from_millis(300))
    });
    let (r, _) = send(&app, bearer("/whoami", key.expose_secret())).await;
    assert_eq!(r.status(), StatusCode::OK);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (r, _) = send(&app, bearer("/whoami", key.expose_secret())).await;
        if r.status() == StatusCode::UNAUTHORIZED {
            assert!(www(&r).contains("expired"));
            break;
        }
        assert!(Instant::now() < deadline, "the key never expired");
        tokio::task::yield_now().await;
    }
    assert_eq!(
        app.store.calls.load(Ordering::SeqCst),
        1,
        "served from the cache"
    );
}

#[tokio::test]
async fn revocation_takes_effect_on_invalidate() {
    let app = app();
    let key = app.store.issue(&[], |r| r);
    assert_eq!(
        send(&app, bearer("/whoami", key.expose_secret()))
            .await
            .0
            .status(),
        StatusCode::OK
    );
    let id = app.store.records.records()[0].id.clone();
    app.store.records.revoke(&id, "test").await.unwrap();
    app.cache.invalidate(&key.hash()).await;
    let (r, _) = send(&app, bearer("/whoami", key.expose_secret())).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn missing_scope_is_403_naming_the_scope() {
    let app = app();
    let key = app.store.issue(&["users:read"], |r| r);
    let (r, body) = send(&app, bearer("/orders", key.expose_secret())).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        www(&r),
        r#"Bearer error="insufficient_scope", scope="orders:read""#
    );
    let p = problem(&r, &body);
    assert_eq!(p["scope"], "orders:read");
    assert!(p["detail"].as_str().unwrap().contains("orders:read"));

    // The route-group layer answers the same way.
    let (r, body) = send(&app, bearer("/admin", key.expose_secret())).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        www(&r),
        r#"Bearer error="insufficient_scope", scope="admin""#
    );
    assert_eq!(problem(&r, &body)["scope"], "admin");

    // Wildcards grant.
    let wide = app.store.issue(&["orders:*", "*"], |r| r);
    let (r, body) = send(&app, bearer("/orders", wide.expose_secret())).await;
    assert_eq!(
        (r.status(), body.as_str()),
        (StatusCode::OK, "orders for acme")
    );
    assert_eq!(
        send(&app, bearer("/admin", wide.expose_secret()))
            .await
            .0
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn two_different_keys_are_400_invalid_request() {
    let app = app();
    let a = app.store.issue(&[], |r| r);
    let b = app.store.issue(&[], |r| r);
    let req = Request::get("/whoami")
        .header(AUTHORIZATION, format!("Bearer {}", a.expose_secret()))
        .header("x-api-key", b.expose_secret())
        .body(Body::empty())
        .unwrap();
    let (r, body) = send(&app, req).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(www(&r), r#"Bearer realm="api", error="invalid_request""#);
    problem(&r, &body);
    // The same key twice is not a conflict.
    let req = Request::get("/whoami")
        .header(AUTHORIZATION, format!("Bearer {}", a.expose_secret()))
        .header("x-api-key", a.expose_secret())
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&app, req).await.0.status(), StatusCode::OK);
}

#[tokio::test]
async fn store_down_is_503_with_retry_after_never_401_never_pass_through() {
    let app = app_with(|l| l.retry_after(Duration::from_millis(2500)));
    let key = app.store.issue(&[], |r| r);
    app.store.down.store(true, Ordering::SeqCst);
    let (r, body) = send(&app, bearer("/whoami", key.expose_secret())).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers()[RETRY_AFTER], "3");
    assert!(r.headers().get(WWW_AUTHENTICATE).is_none());
    let p = problem(&r, &body);
    assert!(
        !body.contains("connection refused"),
        "internal error leaked: {p}"
    );
    assert_eq!(app.handler_calls.load(Ordering::SeqCst), 0);
    // Not cached: once the store is back, the same key works.
    app.store.down.store(false, Ordering::SeqCst);
    assert_eq!(
        send(&app, bearer("/whoami", key.expose_secret()))
            .await
            .0
            .status(),
        StatusCode::OK
    );
    // And once cached, an outage does not affect it.
    app.store.down.store(true, Ordering::SeqCst);
    assert_eq!(
        send(&app, bearer("/whoami", key.expose_secret()))
            .await
            .0
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn hide_credentials_strips_the_key_before_the_handler() {
    let app = app_with(|l| {
        l.source(KeySource::bearer().or(KeySource::header(HeaderName::from_static("x-api-key"))))
            .hide_credentials(true)
    });
    let key = app.store.issue(&[], |r| r);
    let (r, body) = send(&app, bearer("/whoami", key.expose_secret())).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(body, "acme saw_key=false");
}

#[tokio::test]
async fn query_parameter_is_opt_in() {
    let app = app();
    let key = app.store.issue(&[], |r| r);
    let uri = format!("/whoami?api_key={}", key.expose_secret());
    let (r, _) = send(&app, Request::get(&uri).body(Body::empty()).unwrap()).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "query not enabled");
    let app = app_with(|l| l.source(KeySource::query("api_key")));
    let key = app.store.issue(&[], |r| r);
    let uri = format!("/whoami?x=1&api_key={}", key.expose_secret());
    let (r, _) = send(&app, Request::get(&uri).body(Body::empty()).unwrap()).await;
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn anonymous_mode_lets_keyless_requests_through_but_never_bad_keys() {
    let app = app_with(|l| l.allow_anonymous(true));
    let (r, body) = send(&app, Request::get("/whoami").body(Body::empty()).unwrap()).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(body, "anonymous saw_key=false");
    let (r, _) = send(&app, bearer("/whoami", "sk_live_bad")).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // A route that needs a scope still refuses the anonymous caller, with 401.
    let (r, body) = send(&app, Request::get("/orders").body(Body::empty()).unwrap()).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(www(&r), r#"Bearer realm="api""#);
    problem(&r, &body);
}

#[tokio::test]
async fn custom_realm_and_responder() {
    let app = app_with(|l| l.realm("orders").unwrap());
    let (r, _) = send(&app, Request::get("/whoami").body(Body::empty()).unwrap()).await;
    assert_eq!(www(&r), r#"Bearer realm="orders""#);
    assert!(ApiKeyLayer::new(MemoryStore::new()).realm("a\"b").is_err());

    let store = MemoryStore::new();
    let router =
        Router::new()
            .route("/", get(|| async { "ok" }))
            .layer(ApiKeyLayer::new(store).responder(|rejection: Rejection| {
                let mut response = rejection.render();
                *response.body_mut() = bytes::Bytes::from_static(b"nope");
                response
                    .headers_mut()
                    .insert(CONTENT_TYPE, "text/plain".parse().unwrap());
                response
            }));
    let r = router
        .oneshot(Request::get("/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers()[CONTENT_TYPE], "text/plain");
    assert_eq!(
        &r.into_body().collect().await.unwrap().to_bytes()[..],
        b"nope"
    );
}

#[tokio::test]
async fn grpc_content_type_gets_grpc_status_instead_of_problem_json() {
    let app = app();
    let req = Request::post("/whoami")
        .header(CONTENT_TYPE, "application/grpc+proto")
        .body(Body::empty())
        .unwrap();
    let (r, body) = send(&app, req).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["grpc-status"], "16");
    assert!(body.is_empty());
}

#[test]
fn debug_output_of_every_type_holding_a_key_shows_no_secret() {
    let key = KeyFormat::default().generate();
    let secret = key.expose_secret();
    let body = &secret[key.start().len()..];
    let record = KeyRecord::new(&key, "acme");
    let auth = Authenticated::new(record.clone());
    let parsed = KeyFormat::default().parse(secret).unwrap();
    let outputs = [
        format!("{key:?}"),
        format!("{key:#?}"),
        format!("{parsed:?}"),
        format!("{:?}", key.hash()),
        format!("{}", key.hash()),
        format!("{record:?}"),
        format!("{auth:?}"),
        format!("{:?}", KeyFormat::default().validate(&secret[1..])),
        format!(
            "{:?}",
            Rejection::new(tower_api_key::AuthError::InvalidKey, false)
        ),
    ];
    for out in &outputs {
        // No run of 8 characters of the secret body appears anywhere.
        for window in body.as_bytes().windows(8) {
            let window = std::str::from_utf8(window).unwrap();
            assert!(!out.contains(window), "{out} leaks part of the key");
        }
    }
    assert_eq!(format!("{key:?}"), format!("ApiKey(\"{}…\")", key.start()));
}

/// Extensions the request already carries stay, whatever the layer does to make room
/// for its own; the router's own (the matched path) arrive too.
#[tokio::test]
async fn extensions_already_on_the_request_are_kept() {
    use axum::extract::{Extension, MatchedPath};
    use tower::Layer;

    #[derive(Clone)]
    struct TraceId(&'static str);

    let store = Store::default();
    let key = store.issue(&[], |r| r);
    let router: Router = Router::new().route(
        "/x/{id}",
        get(
            |auth: Authenticated, path: MatchedPath, trace: Option<Extension<TraceId>>| async move {
                format!(
                    "{} {} {}",
                    auth.consumer(),
                    path.as_str(),
                    trace.map_or("-", |Extension(t)| t.0)
                )
            },
        ),
    );
    // Around the router: the layer runs first, on a request without extensions or with.
    let service = ApiKeyLayer::new(store).layer(router);
    for (trace, want) in [(None, "acme /x/{id} -"), (Some("t-1"), "acme /x/{id} t-1")] {
        let mut req = bearer("/x/7", key.expose_secret());
        if let Some(t) = trace {
            req.extensions_mut().insert(TraceId(t));
        }
        let response = service.clone().oneshot(req).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, want);
    }
}
