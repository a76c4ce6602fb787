//! The example server: `cargo run --features full --example server`.
//!
//! - `BIND` (default `127.0.0.1:3000`) is where it listens.
//! - `DATABASE_URL` (default `sqlite://keys.db`, created if missing; `postgres://…` for
//!   PostgreSQL, with libpq's `sslmode`, `sslrootcert`, `sslcert` and `sslkey` for TLS,
//!   e.g. `?sslmode=verify-full&sslrootcert=/etc/ssl/pg-ca.pem`) is where keys, usage and
//!   the audit log live.
//! - `RATE_LIMIT` (default `1000/60s`) limits `/v1/*` per key, for keys whose record
//!   carries no policy of its own.
//! - `REDIS_URL` (unset by default) keeps rate-limit state in Redis, so that several
//!   instances enforce one limit. While Redis does not answer, each instance limits on
//!   its own and logs that it does. `REDIS_MODE` (default `batched`: each instance takes
//!   slices of a key's budget and spends them in process; `exact`: one Redis call per
//!   request) says how. `rediss://…` speaks TLS, checked against the system's roots, or
//!   against `REDIS_CA_FILE` (PEM); `REDIS_CLIENT_CERT` and `REDIS_CLIENT_KEY` (PEM files,
//!   both or neither) present a client certificate; `rediss://…/#insecure` checks no
//!   certificate (test servers only; it says so in a warning). `REDIS_CLUSTER_URLS`
//!   (comma-separated `redis://`/`rediss://` URLs of one or more nodes, or a configuration
//!   endpoint; instead of `REDIS_URL`) talks to a Redis Cluster. A Redis that answers and
//!   refuses the configuration (a certificate not trusted, a password refused) stops the
//!   start with one line naming the variable; one that does not answer does not.
//! - `DEFAULT_KEY_TTL` and `MAX_KEY_TTL` (such as `90d` and `365d`; unset: none): the
//!   lifetime of a key created without `expires_in_seconds`, and the longest a new key may
//!   have (a longer one, or none, is refused with 422).
//! - `TRUSTED_PROXIES` (comma-separated CIDRs; unset: none): proxies whose
//!   `X-Forwarded-For` names the client, for keys with an allowlist (`allowed_ips`); a
//!   request from outside a key's list gets 403.
//! - `FAILURE_LIMIT` (default `100/60s`; `off` turns it off): a client address that fails
//!   to authenticate this many times in the window gets 429 with `Retry-After` on `/v1/*`
//!   for the rest of it, before any store lookup (its cached valid keys keep working and
//!   are refreshed as usual).
//! - `ACCEPT_FOREIGN_KEYS` (`true` or `false`, default `false`): also accept keys not in
//!   this server's format, minted elsewhere and imported by hash through
//!   `POST /admin/keys/import`; keys of our format keep their checksum check.
//! - `WEBHOOK_URL` (an `http://` URL) and `WEBHOOK_SECRET` (`whsec_<base64>`; both or
//!   neither): Standard Webhooks deliveries of `key.created`, `key.rotated`,
//!   `key.revoked`, `key.expiring` (`KEY_EXPIRING_NOTICE` ahead, default `7d`),
//!   `key.expired` and `key.leaked`; `GET /admin/webhooks/deliveries` shows them.
//! - `CACHE_TTL` (default `30s`), `CACHE_STALE` (default `10m`; `0` turns it off) and
//!   `STORE_TIMEOUT` (default `2s`): how long a cached key is fresh, how long past that it
//!   is still served while the store fails, and how long a store call may take
//!   (`STORE_TIMEOUT=0`: key loads wait as long as the store takes).
//! - `CHANGES_POLL` (default `250ms`): how often the store's change log is polled, so
//!   that a change made through another instance is seen here (PostgreSQL also pushes
//!   changes with `LISTEN/NOTIFY`; then the log is read at once, and polled every second).
//! - On a start that finds no active admin key it issues one (scope `admin`) and prints
//!   `admin key: <key>`.
//! - Keys are read from `Authorization: Bearer …` and from `X-API-Key`.
//! - `/admin/*` is the admin API (scope `admin`): create, list, show, revoke, delete,
//!   rotate, usage, audit and import.
//! - `/portal/*` is the self-service portal (scope `keys:self`): a consumer lists,
//!   creates, rotates, revokes and deletes its own keys, never more than the calling key may do,
//!   and never its last `keys:self` key; `GET /portal/` is its page.
//! - `GITHUB_SECRET_SCANNING_KEYS=<path>` (unset by default): a file holding GitHub's
//!   secret-scanning public keys (`GET https://api.github.com/meta/public_keys/secret_scanning`)
//!   mounts `POST /github/secret-scanning`, GitHub's secret scanning partner endpoint.
//!   `SECRET_SCANNING_ACTION` (default `revoke`; or `notify`) says what happens to a key
//!   of ours that GitHub found; either way the audit log gets a `leaked` entry.
//! - `GET /metrics`: the library's metrics in Prometheus' text format, for keys with
//!   the scope `metrics` or `admin` (see `tower_api_key::metrics`).
//! - `HEADER_TIMEOUT` (default `30s`; `0` turns it off): how long a client may take to
//!   send a request's head, counted from the first byte, and how long an idle
//!   keep-alive connection is kept for the next one. Past it the connection is closed:
//!   a client that sends half a head and waits holds nothing for longer.
//! - `REQUEST_TIMEOUT` (default `30s`; `0` turns it off): how long a request may take
//!   from its head to the head of its answer, reading its body included. Past it the
//!   answer is 408 problem+json and the connection is closed: a body that stops short of
//!   its `Content-Length` holds nothing for longer.
//! - `GET /healthz` (liveness) and `GET /readyz` (readiness: 200 or 503 with
//!   `{"store","changes","redis"}`) need no key; `GET /v1/whoami` needs any valid key;
//!   `GET /v1/orders` needs `orders:read`, `POST /v1/orders` needs `orders:write`.
//!
//! Usage is counted off the request path and written every 5 s. It stops cleanly on
//! Ctrl-C or SIGTERM, writing the last usage counts first.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequest, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hyper::body::Incoming;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::Mutex as AsyncMutex;
use tower_api_key::admin::{LeakAction, PublicKeys, SecretScanning};
use tower_api_key::auth::FailureLimit;
use tower_api_key::lifetime::{KeyLifetimes, parse_lifetime};
use tower_api_key::ratelimit::RedisRateLimitStore;
use tower_api_key::record::parse_network;
use tower_api_key::resolve::{ChangeFollower, FeedHealth};
use tower_api_key::usage::{UsageLayer, UsageRecorder};
use tower_api_key::webhook::{WebhookConfig, WebhookDeliverer, WebhookSecret};
use tower_api_key::{
    ApiKeyLayer, AuthError, Authenticated, RateLimitLayer, Rejection, RequireScope, scope,
};

// Shared with the gRPC example server: the store, its cache and change feed, the rate
// limit, where keys are read, the shutdown signal.
#[path = "support/setup.rs"]
mod setup;

use setup::{Store, duration_var, shutdown_signal};

scope!(OrdersRead = "orders:read");
scope!(OrdersWrite = "orders:write");

#[derive(Clone, Default)]
struct AppState {
    orders: Arc<Mutex<Vec<Order>>>,
}

#[derive(Clone, Serialize)]
struct Order {
    id: u64,
    consumer: String,
    item: String,
    quantity: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewOrder {
    item: String,
    quantity: u32,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The library's own log lines (a Redis outage, a failing store) on stderr.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::INFO)
        .init();
    // The library's metrics, for GET /metrics: the recorder goes in before anything is
    // served. Durations get buckets (the exporter renders summaries without them).
    let prometheus = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &SECONDS_BUCKETS)?
        .install_recorder()?;
    tower_api_key::metrics::describe();
    let upkeep = prometheus.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    let accept_foreign = accept_foreign_keys()?;
    let failures = failure_limit()?;
    let bind: SocketAddr = std::env::var("BIND")
        .unwrap_or_else(|_| "127.0.0.1:3000".to_owned())
        .parse()
        .map_err(|e| format!("BIND must be an address such as 127.0.0.1:3000: {e}"))?;
    let rate_limit = setup::rate_limit()?;

    let header_timeout = duration_var("HEADER_TIMEOUT", "30s")?;
    let request_timeout = duration_var("REQUEST_TIMEOUT", "30s")?;
    let cache_settings = setup::CacheSettings::from_env()?;
    let scanning = secret_scanning_config()?;
    let webhooks = webhook_config()?;

    let store = setup::open_store().await?;
    setup::ensure_admin_key(&store, "server").await?;
    // Changes made through any instance reach this one's cache.
    let setup::Cache {
        cache,
        follower,
        probe_timeout,
    } = cache_settings.build(&store);
    let proxies = trusted_proxies()?;
    let mut config = tower_api_key::admin::AdminConfig::new()
        .lifetimes(key_lifetimes()?)
        .trusted_proxies(proxies.iter().copied());
    // Events are written to the store's outbox whether or not a receiver is set; with
    // one, this instance delivers them (several instances may: each event is leased).
    let _deliverer = webhooks.map(|webhooks| {
        eprintln!("webhooks: delivering key events");
        config = config.clone().webhook_deliveries(store.clone());
        WebhookDeliverer::spawn(store.clone(), webhooks)
    });
    // Self-service: keys with the scope `keys:self` manage their own consumer's keys.
    let portal = tower_api_key::admin::portal::router(cache.clone(), config.clone());
    let mut admin = tower_api_key::admin::router_with(cache.clone(), config);
    if let Some((keys, action)) = scanning {
        eprintln!(
            "secret scanning: POST {} ({} GitHub key(s), action {action})",
            tower_api_key::admin::secret_scanning::DEFAULT_PATH,
            keys.len()
        );
        admin = admin.merge(
            SecretScanning::new(cache.clone(), keys)
                .action(action)
                .router(),
        );
    }
    let usage = UsageRecorder::spawn(store.clone(), Duration::from_secs(5));

    let mut auth = ApiKeyLayer::from_cache(cache)
        .source(setup::key_source())
        .trusted_proxies(proxies)
        .accept_foreign_keys(accept_foreign)
        .count_refusals(usage.clone());
    if let Some(limit) = failures {
        auth = auth.limit_failures(limit);
    }

    let (limit_store, redis) = setup::rate_limit_store().await?;
    let limits = RateLimitLayer::new(limit_store, rate_limit);
    let readiness = Readiness {
        store: store.clone(),
        follower,
        redis,
        timeout: probe_timeout,
        last: Arc::new(AsyncMutex::new(None)),
    };

    let metrics = Router::new()
        .route(
            "/metrics",
            get(move |auth: Authenticated, headers: HeaderMap| {
                let prometheus = prometheus.clone();
                async move { metrics_text(&prometheus, &auth, &headers) }
            }),
        )
        .layer(auth.clone());
    let v1 = Router::new()
        .route("/v1/whoami", get(whoami))
        .route("/v1/orders", get(list_orders).post(create_order))
        .layer(limits)
        .layer(UsageLayer::new(usage.clone()))
        .layer(auth);
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let readiness = readiness.clone();
                async move { readiness.check().await }
            }),
        )
        .merge(v1)
        .with_state(AppState::default())
        .merge(admin)
        .merge(portal)
        .merge(metrics)
        .fallback(not_found);

    let shutdown = shutdown_signal()?;
    let listener = tokio::net::TcpListener::bind(bind).await?;
    // On stdout after the admin key line, so that readers see the two in order.
    println!("listening on http://{}", listener.local_addr()?);
    let timeouts = Timeouts {
        header: (!header_timeout.is_zero()).then_some(header_timeout),
        request: (!request_timeout.is_zero()).then_some(request_timeout),
    };
    serve(listener, app, timeouts, shutdown).await;
    usage.shutdown().await;
    eprintln!("shut down");
    Ok(())
}

/// Buckets of the duration histograms, in seconds: from a cache miss served by a local
/// store to a call that ran into its deadline.
const SECONDS_BUCKETS: [f64; 13] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// `GET /metrics`: Prometheus' text format, for keys with the scope `metrics` or
/// `admin` (403 for another key; the layer answers 401 without one).
fn metrics_text(
    prometheus: &PrometheusHandle,
    auth: &Authenticated,
    headers: &HeaderMap,
) -> Response {
    if !(auth.has_scope("metrics") || auth.has_scope("admin")) {
        let scope = "metrics".into();
        return Rejection::for_request(AuthError::InsufficientScope { scope }, headers)
            .into_response();
    }
    let content_type = "text/plain; version=0.0.4; charset=utf-8";
    (
        [(axum::http::header::CONTENT_TYPE, content_type)],
        prometheus.render(),
    )
        .into_response()
}

/// Any other path: 404 as problem+json, like every other error here.
async fn not_found() -> Response {
    problem(StatusCode::NOT_FOUND, "no such path")
}

/// How long a client may take; `None`: as long as it likes.
#[derive(Clone, Copy)]
struct Timeouts {
    /// To send a request's head, and between requests on a kept connection.
    header: Option<Duration>,
    /// From a request's head to its answer's head, the request body included.
    request: Option<Duration>,
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets the open connections
/// finish their requests. What `axum::serve` does, plus the timeouts: `axum::serve`
/// gives hyper no timer, so hyper's header read timeout never fires there, and a
/// client that stops half way through a request holds its connection for good.
async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    timeouts: Timeouts,
    shutdown: impl std::future::Future<Output = ()>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::server::graceful::GracefulShutdown;

    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header);
    // HTTP/2 (with prior knowledge) has no header timeout; pings find peers that are gone.
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(timeouts.header);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Such as too many open files: wait for some to close, as axum does.
                    eprintln!("accept: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            // The peer address, for keys with an allowlist.
            request.extensions_mut().insert(ConnectInfo(peer));
            let answer = tower::ServiceExt::oneshot(app.clone(), request.map(Body::new));
            async move {
                let Some(limit) = timeouts.request else {
                    return answer.await;
                };
                match tokio::time::timeout(limit, answer).await {
                    Ok(answer) => answer,
                    Err(_) => Ok(timed_out()),
                }
            }
        });
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            // A client that goes away mid-request is no error of ours.
            let _ = connection.await;
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Errors of one connection that was being accepted; the listener is fine.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

/// 408 for a request that took longer than `REQUEST_TIMEOUT`; the connection is closed,
/// since what is left of the request on it cannot be told from the next one.
fn timed_out() -> Response {
    let mut response = problem(
        StatusCode::REQUEST_TIMEOUT,
        "the request took longer than the server waits for one",
    );
    response.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    response
}

/// What `/readyz` reports: whether the store answers, whether changes made elsewhere
/// arrive, and whether Redis answers.
#[derive(Clone)]
struct Readiness {
    store: Arc<dyn Store>,
    follower: Arc<ChangeFollower>,
    redis: Option<RedisRateLimitStore>,
    timeout: Duration,
    /// The last probe of the store, reused for a second: a load balancer (or anyone:
    /// the route needs no key) calling often costs at most one query a second.
    last: Arc<AsyncMutex<Option<(std::time::Instant, bool)>>>,
}

impl Readiness {
    async fn check(&self) -> Response {
        let store_ok = {
            let mut last = self.last.lock().await;
            match *last {
                Some((at, ok)) if at.elapsed() < Duration::from_secs(1) => ok,
                _ => {
                    let ok = tokio::time::timeout(self.timeout, self.store.last_seq())
                        .await
                        .is_ok_and(|r| r.is_ok());
                    *last = Some((std::time::Instant::now(), ok));
                    ok
                }
            }
        };
        let changes = self.follower.state().health;
        let redis = match &self.redis {
            None => "off",
            Some(redis) if redis.is_degraded() => "down",
            Some(_) => "ok",
        };
        // Redis down degrades limits to per-instance ones (and says so): the instance
        // still serves, so it stays ready.
        let ready = store_ok && changes != FeedHealth::Down;
        let status = if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        let body = json!({
            "store": if store_ok { "ok" } else { "down" },
            "changes": changes.name(),
            "redis": redis,
        });
        (status, Json(body)).into_response()
    }
}

/// GitHub's public keys from `GITHUB_SECRET_SCANNING_KEYS` and the action from
/// `SECRET_SCANNING_ACTION`, or `None` when no key file is set. Any mistake stops the
/// start with a message that says which variable is wrong.
fn secret_scanning_config() -> Result<Option<(PublicKeys, LeakAction)>, String> {
    let action = match std::env::var("SECRET_SCANNING_ACTION") {
        Err(_) => LeakAction::default(),
        Ok(text) if text.is_empty() => LeakAction::default(),
        Ok(text) => text
            .parse()
            .map_err(|e| format!("SECRET_SCANNING_ACTION: {e}"))?,
    };
    let path = match std::env::var("GITHUB_SECRET_SCANNING_KEYS") {
        Ok(path) if !path.is_empty() => path,
        _ => return Ok(None),
    };
    let document = std::fs::read(&path)
        .map_err(|e| format!("GITHUB_SECRET_SCANNING_KEYS: cannot read {path}: {e}"))?;
    let keys = PublicKeys::parse(&document)
        .map_err(|e| format!("GITHUB_SECRET_SCANNING_KEYS ({path}): {e}"))?;
    Ok(Some((keys, action)))
}

/// `FAILURE_LIMIT`: failed authentications a client may have in a window (default
/// `100/60s`), or `off`.
fn failure_limit() -> Result<Option<FailureLimit>, String> {
    let text = match std::env::var("FAILURE_LIMIT").as_deref() {
        Ok("off") => return Ok(None),
        Err(_) | Ok("") => "100/60s".to_owned(),
        Ok(text) => text.to_owned(),
    };
    text.parse()
        .map(Some)
        .map_err(|e| format!("FAILURE_LIMIT ({text:?}): {e}, or off"))
}

/// `ACCEPT_FOREIGN_KEYS`: `true` or `false` (default); anything else stops the start.
fn accept_foreign_keys() -> Result<bool, String> {
    match std::env::var("ACCEPT_FOREIGN_KEYS").as_deref() {
        Err(_) | Ok("") | Ok("false") => Ok(false),
        Ok("true") => Ok(true),
        Ok(other) => Err(format!(
            "ACCEPT_FOREIGN_KEYS must be true or false, not {other:?}"
        )),
    }
}

/// `TRUSTED_PROXIES`: comma-separated CIDRs whose `X-Forwarded-For` names the client.
fn trusted_proxies() -> Result<Vec<ipnet::IpNet>, Box<dyn std::error::Error>> {
    let Ok(text) = std::env::var("TRUSTED_PROXIES") else {
        return Ok(Vec::new());
    };
    text.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| parse_network(s).map_err(|e| format!("TRUSTED_PROXIES: {s:?}: {e}").into()))
        .collect()
}

/// `DEFAULT_KEY_TTL` and `MAX_KEY_TTL` (such as `90d` and `365d`; unset: none).
/// `WEBHOOK_URL` and `WEBHOOK_SECRET` (`whsec_<base64>`), both or neither, and
/// `KEY_EXPIRING_NOTICE` (default `7d`). The secret never appears in an error.
fn webhook_config() -> Result<Option<WebhookConfig>, Box<dyn std::error::Error>> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let (url, secret) = match (var("WEBHOOK_URL"), var("WEBHOOK_SECRET")) {
        (None, None) => return Ok(None),
        (Some(url), Some(secret)) => (url, secret),
        (Some(_), None) => {
            return Err("WEBHOOK_SECRET is not set: WEBHOOK_URL needs it (both or neither)".into());
        }
        (None, Some(_)) => {
            return Err("WEBHOOK_URL is not set: WEBHOOK_SECRET needs it (both or neither)".into());
        }
    };
    let secret = WebhookSecret::parse(&secret).map_err(|e| format!("WEBHOOK_SECRET: {e}"))?;
    let notice_text = var("KEY_EXPIRING_NOTICE").unwrap_or_else(|| "7d".to_owned());
    let notice = parse_lifetime(&notice_text)
        .map_err(|e| format!("KEY_EXPIRING_NOTICE={notice_text:?}: {e}"))?;
    let config = WebhookConfig::new(&url, secret).map_err(|e| format!("WEBHOOK_URL: {e}"))?;
    Ok(Some(config.expiring_notice(notice)))
}

fn key_lifetimes() -> Result<KeyLifetimes, Box<dyn std::error::Error>> {
    let var = |name: &str| -> Result<Option<Duration>, String> {
        match std::env::var(name) {
            Ok(text) if !text.is_empty() => parse_lifetime(&text)
                .map(Some)
                .map_err(|e| format!("{name}={text:?}: {e}")),
            _ => Ok(None),
        }
    };
    let mut lifetimes = KeyLifetimes::new();
    if let Some(default) = var("DEFAULT_KEY_TTL")? {
        lifetimes = lifetimes
            .with_default(default)
            .map_err(|e| format!("DEFAULT_KEY_TTL, MAX_KEY_TTL: {e}"))?;
    }
    if let Some(max) = var("MAX_KEY_TTL")? {
        lifetimes = lifetimes
            .with_max(max)
            .map_err(|e| format!("DEFAULT_KEY_TTL, MAX_KEY_TTL: {e}"))?;
    }
    Ok(lifetimes)
}

async fn whoami(auth: Authenticated) -> Json<serde_json::Value> {
    Json(json!({
        "key_id": auth.key_id(),
        "consumer": auth.consumer(),
        "scopes": auth.scopes().iter().map(|s| s.as_str()).collect::<Vec<_>>(),
    }))
}

async fn list_orders(
    State(state): State<AppState>,
    RequireScope(auth, ..): RequireScope<OrdersRead>,
) -> Json<Vec<Order>> {
    let orders = state.orders.lock().unwrap_or_else(|e| e.into_inner());
    Json(
        orders
            .iter()
            .filter(|o| o.consumer == auth.consumer())
            .cloned()
            .collect(),
    )
}

async fn create_order(
    State(state): State<AppState>,
    RequireScope(auth, ..): RequireScope<OrdersWrite>,
    request: Request,
) -> Response {
    let new = match Json::<NewOrder>::from_request(request, &()).await {
        Ok(Json(new)) => new,
        Err(rejection) => return problem(rejection.status(), &rejection.body_text()),
    };
    if new.item.trim().is_empty() || new.quantity == 0 {
        return problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "item must not be empty and quantity must be at least 1",
        );
    }
    let mut orders = state.orders.lock().unwrap_or_else(|e| e.into_inner());
    let order = Order {
        id: orders.len() as u64 + 1,
        consumer: auth.consumer().to_owned(),
        item: new.item,
        quantity: new.quantity,
    };
    orders.push(order.clone());
    (StatusCode::CREATED, Json(order)).into_response()
}

fn problem(status: StatusCode, detail: &str) -> Response {
    let body = json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
    });
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/problem+json")],
        body.to_string(),
    )
        .into_response()
}
