//! RateLimitLayer end to end through an axum Router, behind ApiKeyLayer, with an
//! injected clock (no sleeps).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use tower::ServiceExt;
use tower_api_key::ratelimit::{
    Cost, Decision, ManualClock, OnStoreError, QuotaWindow, RateLimitStore, RateLimitStoreError,
    Subject,
};
use tower_api_key::{
    ApiKey, ApiKeyLayer, KeyFormat, KeyRecord, MemoryRateLimitStore, MemoryStore, RateLimitLayer,
    RateLimitPolicy, RateLimits,
};

#[path = "common/http.rs"]
mod common_http;
use common_http::{call, header};

/// 2026-11-23T10:00:00Z.
fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_795_392_000 + 10 * 3600)
}

struct App {
    router: Router,
    keys: MemoryStore,
    clock: ManualClock,
    calls: Arc<AtomicUsize>,
}

fn app(
    default: &str,
    configure: impl FnOnce(RateLimitLayer<MemoryRateLimitStore>) -> RateLimitLayer<MemoryRateLimitStore>,
) -> App {
    let keys = MemoryStore::new();
    let clock = ManualClock::new(t0());
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let default: RateLimitPolicy = default.parse().unwrap();
    let limiter =
        configure(RateLimitLayer::new(MemoryRateLimitStore::new(), default).clock(clock.clone()));
    let router = Router::new()
        .route(
            "/v1/x",
            get(move || {
                counter.fetch_add(1, Ordering::SeqCst);
                async { "ok" }
            }),
        )
        .layer(limiter)
        .layer(ApiKeyLayer::new(keys.clone()).allow_anonymous(true));
    App {
        router,
        keys,
        clock,
        calls,
    }
}

impl App {
    fn issue(&self, consumer: &str, limits: Option<RateLimits>) -> ApiKey {
        let key = KeyFormat::default().generate();
        let mut record = KeyRecord::new(&key, consumer);
        if let Some(limits) = limits {
            record = record.with_rate_limits(limits);
        }
        self.keys.insert(record);
        key
    }

    async fn get(&self, key: Option<&ApiKey>) -> (Response<()>, String) {
        self.send(key, |r| r).await
    }

    async fn send(
        &self,
        key: Option<&ApiKey>,
        edit: impl FnOnce(http::request::Builder) -> http::request::Builder,
    ) -> (Response<()>, String) {
        let mut req = Request::get("/v1/x");
        if let Some(key) = key {
            req = req.header(AUTHORIZATION, format!("Bearer {}", key.expose_secret()));
        }
        call(&self.router, edit(req).body(Body::empty()).unwrap()).await
    }
}

#[tokio::test]
async fn n_allowed_then_429_with_the_standard_headers() {
    let app = app("5/60s", |l| l);
    let key = app.issue("acme", None);
    for remaining in (0..5).rev() {
        let (r, body) = app.get(Some(&key)).await;
        assert_eq!((r.status(), body.as_str()), (StatusCode::OK, "ok"));
        assert_eq!(header(&r, "ratelimit-policy"), r#""default";q=5;w=60"#);
        let t = 60 - 12 * remaining;
        assert_eq!(
            header(&r, "ratelimit"),
            format!(r#""default";r={remaining};t={t}"#)
        );
    }
    let (r, body) = app.get(Some(&key)).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&r, "retry-after"), "12");
    assert_eq!(header(&r, "ratelimit-policy"), r#""default";q=5;w=60"#);
    assert_eq!(header(&r, "ratelimit"), r#""default";r=0;t=60"#);
    assert_eq!(r.headers()[CONTENT_TYPE], "application/problem+json");
    let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        problem["type"],
        "https://iana.org/assignments/http-problem-types#quota-exceeded"
    );
    assert_eq!(problem["status"], 429);
    assert_eq!(problem["violated-policies"], serde_json::json!(["default"]));
    assert_eq!(
        app.calls.load(Ordering::SeqCst),
        5,
        "the 429 never reached the handler"
    );
}

#[tokio::test]
async fn budget_comes_back_with_the_clock() {
    let app = app("5/60s", |l| l);
    let key = app.issue("acme", None);
    for _ in 0..5 {
        app.get(Some(&key)).await;
    }
    assert_eq!(
        app.get(Some(&key)).await.0.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    app.clock.advance(Duration::from_secs(11));
    assert_eq!(
        app.get(Some(&key)).await.0.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    app.clock.advance(Duration::from_secs(1));
    assert_eq!(
        app.get(Some(&key)).await.0.status(),
        StatusCode::OK,
        "one every 12 s"
    );
    assert_eq!(
        app.get(Some(&key)).await.0.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    app.clock.advance(Duration::from_secs(60));
    for _ in 0..5 {
        assert_eq!(app.get(Some(&key)).await.0.status(), StatusCode::OK);
    }
}

#[tokio::test]
async fn keys_are_independent_and_a_record_policy_beats_the_default() {
    let app = app("3/60s", |l| l);
    let a = app.issue("acme", None);
    let b = app.issue("acme", None);
    let tight = app.issue(
        "acme",
        Some(
            RateLimitPolicy::rate("tight", 1, Duration::from_secs(60))
                .unwrap()
                .into(),
        ),
    );
    for _ in 0..3 {
        assert_eq!(app.get(Some(&a)).await.0.status(), StatusCode::OK);
    }
    assert_eq!(
        app.get(Some(&a)).await.0.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        app.get(Some(&b)).await.0.status(),
        StatusCode::OK,
        "b has its own budget"
    );
    let (r, _) = app.get(Some(&tight)).await;
    assert_eq!(header(&r, "ratelimit-policy"), r#""tight";q=1;w=60"#);
    let (r, body) = app.get(Some(&tight)).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(body.contains(r#"["tight"]"#), "{body}");
}

#[tokio::test]
async fn per_consumer_budgets_are_shared_by_its_keys() {
    let app = app("4/60s", |l| l.per_consumer());
    let a1 = app.issue("acme", None);
    let a2 = app.issue("acme", None);
    let other = app.issue("globex", None);
    for key in [&a1, &a2, &a1, &a2] {
        assert_eq!(app.get(Some(key)).await.0.status(), StatusCode::OK);
    }
    assert_eq!(
        app.get(Some(&a1)).await.0.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        app.get(Some(&a2)).await.0.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(app.get(Some(&other)).await.0.status(), StatusCode::OK);
}

#[tokio::test]
async fn daily_quota_on_top_of_a_rate_and_its_retry_after_points_at_midnight() {
    let app = app("100/1s", |l| l);
    let limits = RateLimits::new([
        RateLimitPolicy::rate("burst", 10, Duration::from_secs(1)).unwrap(),
        RateLimitPolicy::quota("daily", 3, QuotaWindow::Day).unwrap(),
    ])
    .unwrap();
    let key = app.issue("acme", Some(limits));
    for _ in 0..3 {
        let (r, _) = app.get(Some(&key)).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            header(&r, "ratelimit-policy"),
            r#""burst";q=10;w=1, "daily";q=3;w=86400"#
        );
    }
    let (r, body) = app.get(Some(&key)).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    // 10:00 UTC → 14 hours to midnight.
    assert_eq!(header(&r, "retry-after"), (14 * 3600).to_string());
    assert!(body.contains(r#""violated-policies":["daily"]"#), "{body}");
    // The denial spent nothing of the burst.
    assert!(
        header(&r, "ratelimit").starts_with(r#""burst";r=7;"#),
        "{}",
        header(&r, "ratelimit")
    );
    app.clock.advance(Duration::from_secs(14 * 3600));
    assert_eq!(
        app.get(Some(&key)).await.0.status(),
        StatusCode::OK,
        "a new UTC day"
    );
}

#[tokio::test]
async fn a_request_can_cost_more_than_one() {
    let app = app("10/60s", |l| {
        l.cost(|info| {
            if info.uri.query() == Some("bulk") {
                4
            } else {
                1
            }
        })
    });
    let key = app.issue("acme", None);
    let bulk = |r: http::request::Builder| r.uri("/v1/x?bulk");
    let (r, _) = app.send(Some(&key), bulk).await;
    assert!(
        header(&r, "ratelimit").contains("r=6"),
        "{}",
        header(&r, "ratelimit")
    );
    let (r, _) = app.send(Some(&key), |r| r.extension(Cost(5))).await;
    assert!(
        header(&r, "ratelimit").contains("r=1"),
        "the extension wins"
    );
    let (r, _) = app.send(Some(&key), bulk).await;
    assert_eq!(
        r.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "4 > 1 left: all or nothing"
    );
    assert_eq!(
        app.get(Some(&key)).await.0.status(),
        StatusCode::OK,
        "the last 1 is still there"
    );
}

#[tokio::test]
async fn anonymous_requests_pass_or_are_limited_by_the_fallback() {
    let open = app("1/60s", |l| l);
    for _ in 0..3 {
        let (r, _) = open.get(None).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert!(r.headers().get("ratelimit").is_none());
    }
    let fallback = RateLimitPolicy::rate("anonymous", 2, Duration::from_secs(60)).unwrap();
    let limited = app("100/60s", |l| {
        l.anonymous(
            "peer",
            |info| {
                info.headers
                    .get("x-peer")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            },
            fallback,
        )
    });
    let peer = |name: &'static str| move |r: http::request::Builder| r.header("x-peer", name);
    for _ in 0..2 {
        assert_eq!(
            limited.send(None, peer("1.2.3.4")).await.0.status(),
            StatusCode::OK
        );
    }
    let (r, _) = limited.send(None, peer("1.2.3.4")).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        limited.send(None, peer("5.6.7.8")).await.0.status(),
        StatusCode::OK
    );
    // Without a subject the fallback does not apply.
    assert_eq!(limited.get(None).await.0.status(), StatusCode::OK);
}

#[tokio::test]
async fn x_ratelimit_headers_are_optional() {
    let app = app("5/60s", |l| l.x_ratelimit_headers(true));
    let key = app.issue("acme", None);
    let (r, _) = app.get(Some(&key)).await;
    assert_eq!(header(&r, "x-ratelimit-limit"), "5");
    assert_eq!(header(&r, "x-ratelimit-remaining"), "4");
    assert_eq!(header(&r, "x-ratelimit-reset"), "12");
    let plain = self::app("5/60s", |l| l);
    let key = plain.issue("acme", None);
    assert!(
        plain
            .get(Some(&key))
            .await
            .0
            .headers()
            .get("x-ratelimit-limit")
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_tasks_times_a_thousand_requests_allow_exactly_the_budget() {
    let app = Arc::new(app("500/1h", |l| l));
    let key = Arc::new(app.issue("acme", None));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (app, key) = (app.clone(), key.clone());
            tokio::spawn(async move {
                let mut allowed = 0;
                for _ in 0..1000 {
                    if app.get(Some(&key)).await.0.status() == StatusCode::OK {
                        allowed += 1;
                    }
                }
                allowed
            })
        })
        .collect();
    let mut allowed = 0;
    for t in tasks {
        allowed += t.await.unwrap();
    }
    assert_eq!(allowed, 500);
    assert_eq!(app.calls.load(Ordering::SeqCst), 500);
}

#[tokio::test]
async fn grpc_requests_get_resource_exhausted() {
    let app = app("1/60s", |l| l);
    let key = app.issue("acme", None);
    let grpc = |r: http::request::Builder| r.header(CONTENT_TYPE, "application/grpc");
    assert_eq!(app.send(Some(&key), grpc).await.0.status(), StatusCode::OK);
    let (r, _) = app.send(Some(&key), grpc).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "grpc-status"), "8");
    assert!(header(&r, "ratelimit").starts_with(r#""default";r=0"#));
}

/// A store that answers only asynchronously (as a networked store would), or fails.
#[derive(Clone)]
struct AsyncStore {
    inner: MemoryRateLimitStore,
    down: Arc<std::sync::atomic::AtomicBool>,
}

#[async_trait::async_trait]
impl RateLimitStore for AsyncStore {
    async fn check(
        &self,
        subject: Subject<'_>,
        policies: &[RateLimitPolicy],
        cost: u32,
        now: u64,
    ) -> Result<Decision, RateLimitStoreError> {
        tokio::task::yield_now().await;
        if self.down.load(Ordering::SeqCst) {
            return Err(RateLimitStoreError("connection refused".into()));
        }
        Ok(self.inner.check_now(subject, policies, cost, now))
    }
}

fn async_app(on_error: OnStoreError) -> (Router, MemoryStore, Arc<std::sync::atomic::AtomicBool>) {
    let keys = MemoryStore::new();
    let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let store = AsyncStore {
        inner: MemoryRateLimitStore::new(),
        down: down.clone(),
    };
    let policy: RateLimitPolicy = "2/60s".parse().unwrap();
    let router = Router::new()
        .route("/v1/x", get(|| async { "ok" }))
        .layer(RateLimitLayer::new(store, policy).on_store_error(on_error))
        .layer(ApiKeyLayer::new(keys.clone()));
    (router, keys, down)
}

async fn status_of(router: &Router, key: &ApiKey) -> (StatusCode, Option<String>) {
    let req = Request::get("/v1/x")
        .header(AUTHORIZATION, format!("Bearer {}", key.expose_secret()))
        .body(Body::empty())
        .unwrap();
    let r = router.clone().oneshot(req).await.unwrap();
    let limit = r
        .headers()
        .get("ratelimit")
        .map(|v| v.to_str().unwrap().to_owned());
    (r.status(), limit)
}

#[tokio::test]
async fn an_asynchronous_store_limits_the_same_way() {
    let (router, keys, _) = async_app(OnStoreError::Allow);
    let key = KeyFormat::default().generate();
    keys.insert(KeyRecord::new(&key, "acme"));
    let (status, limit) = status_of(&router, &key).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(limit.as_deref(), Some(r#""default";r=1;t=30"#));
    assert_eq!(status_of(&router, &key).await.0, StatusCode::OK);
    assert_eq!(
        status_of(&router, &key).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn a_failing_store_lets_requests_through_or_refuses_them_as_configured() {
    let key = KeyFormat::default().generate();
    let (open, keys, down) = async_app(OnStoreError::Allow);
    keys.insert(KeyRecord::new(&key, "acme"));
    down.store(true, Ordering::SeqCst);
    for _ in 0..5 {
        let (status, limit) = status_of(&open, &key).await;
        assert_eq!(status, StatusCode::OK, "fail open");
        assert!(limit.is_none(), "no numbers to report");
    }
    let (closed, keys, down) = async_app(OnStoreError::Deny);
    keys.insert(KeyRecord::new(&key, "acme"));
    down.store(true, Ordering::SeqCst);
    assert_eq!(
        status_of(&closed, &key).await.0,
        StatusCode::SERVICE_UNAVAILABLE,
        "fail closed"
    );
    down.store(false, Ordering::SeqCst);
    assert_eq!(status_of(&closed, &key).await.0, StatusCode::OK);
}
