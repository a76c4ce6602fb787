//! Black-box test of `examples/server.rs`: the built binary, over real TCP.
#![cfg(all(
    unix,
    feature = "axum",
    feature = "sqlite",
    feature = "postgres",
    feature = "redis",
    feature = "admin",
    feature = "webhooks"
))]

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[path = "common/browser.rs"]
mod browser;
#[path = "common/receiver.rs"]
mod receiver;
#[path = "common/rfc3339.rs"]
mod rfc3339;
#[path = "common/server.rs"]
mod server;
#[path = "common/unique.rs"]
mod unique;

use browser::Browser;
use rfc3339::{rfc3339, unix_of};
use server::{TempDb, refuses_to_start, start_on, start_sqlite};

/// A loopback port nothing listens on (bound, then let go).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.1 request; returns the status and the body.
async fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let status = raw[9..12].parse().unwrap();
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn contract_of_the_example_server() {
    let server = start_sqlite(&[]);
    let addr = server.addr.as_str();
    let admin_key = server
        .admin_key
        .clone()
        .expect("a fresh database gets an admin key");
    let bearer = format!("Bearer {admin_key}");
    assert!(admin_key.starts_with("sk_live_"));

    assert_eq!(http(addr, "GET", "/healthz", &[], "").await.0, 200);
    // A path that is not there (GitHub's endpoint without its keys, too): problem+json,
    // as the OpenAPI document says.
    for path in ["/nowhere", "/github/secret-scanning"] {
        let (status, body) = http(addr, "POST", path, &[], "").await;
        assert_eq!(status, 404, "{path}");
        let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(problem["status"], 404, "{path}: {body}");
    }

    let (status, body) = http(addr, "GET", "/v1/whoami", &[("authorization", &bearer)], "").await;
    assert_eq!(status, 200, "{body}");
    let who: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(who["consumer"], "admin");
    assert_eq!(who["scopes"], serde_json::json!(["admin"]));
    assert!(who["key_id"].as_str().unwrap().starts_with("key_"));

    let lower = format!("bearer {admin_key}");
    assert_eq!(
        http(addr, "GET", "/v1/whoami", &[("authorization", &lower)], "")
            .await
            .0,
        200
    );
    let (status, _) = http(addr, "GET", "/v1/whoami", &[("x-api-key", &admin_key)], "").await;
    assert_eq!(status, 200);

    assert_eq!(http(addr, "GET", "/v1/whoami", &[], "").await.0, 401);
    let (status, body) = http(
        addr,
        "GET",
        "/v1/whoami",
        &[("authorization", "Bearer sk_live_nope")],
        "",
    )
    .await;
    assert_eq!(status, 401);
    assert!(!body.contains(&admin_key));

    // The admin key lacks the order scopes.
    let (status, body) = http(addr, "GET", "/v1/orders", &[("authorization", &bearer)], "").await;
    assert_eq!(status, 403);
    assert!(body.contains("orders:read"));
    let (status, _) = http(
        addr,
        "POST",
        "/v1/orders",
        &[
            ("authorization", &bearer),
            ("content-type", "application/json"),
        ],
        r#"{"item":"book","quantity":1}"#,
    )
    .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn a_key_made_through_the_admin_api_reaches_the_orders() {
    let server = start_sqlite(&[]);
    let admin = format!("Bearer {}", server.admin_key.clone().unwrap());
    let json_admin = [
        ("authorization", admin.as_str()),
        ("content-type", "application/json"),
    ];
    let body = r#"{"consumer":"acme","name":"shop","scopes":["orders:read","orders:write"]}"#;
    let (status, created) = http(&server.addr, "POST", "/admin/keys", &json_admin, body).await;
    assert_eq!(status, 201, "{created}");
    let created: serde_json::Value = serde_json::from_str(&created).unwrap();
    let bearer = format!("Bearer {}", created["key"].as_str().unwrap());
    let auth = [
        ("authorization", bearer.as_str()),
        ("content-type", "application/json"),
    ];
    let order = r#"{"item":"book","quantity":2}"#;
    let (status, made) = http(&server.addr, "POST", "/v1/orders", &auth, order).await;
    assert_eq!(status, 201, "{made}");
    let (status, list) = http(&server.addr, "GET", "/v1/orders", &auth, "").await;
    assert_eq!(status, 200);
    assert!(list.contains("\"item\":\"book\""), "{list}");
    let (status, bad) = http(&server.addr, "POST", "/v1/orders", &auth, "{nope").await;
    assert!(status == 400 || status == 422, "{status}: {bad}");
    assert!(bad.contains("\"status\""), "problem+json: {bad}");
    // Revoked through the admin API: refused on the next request.
    let id = created["id"].as_str().unwrap();
    let (status, _) = http(
        &server.addr,
        "DELETE",
        &format!("/admin/keys/{id}"),
        &json_admin,
        "",
    )
    .await;
    assert_eq!(status, 204);
    assert_eq!(
        http(&server.addr, "GET", "/v1/orders", &auth, "").await.0,
        401
    );
}

#[tokio::test]
async fn rate_limit_from_the_environment() {
    let server = start_sqlite(&[("RATE_LIMIT", "5/60s")]);
    let bearer = format!("Bearer {}", server.admin_key.clone().unwrap());
    let auth = [("authorization", bearer.as_str())];
    for _ in 0..5 {
        assert_eq!(
            http(&server.addr, "GET", "/v1/whoami", &auth, "").await.0,
            200
        );
    }
    let (status, body) = http(&server.addr, "GET", "/v1/whoami", &auth, "").await;
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("quota-exceeded"), "{body}");
    // /healthz is not limited.
    assert_eq!(http(&server.addr, "GET", "/healthz", &[], "").await.0, 200);
}

/// DESIGN.md: `REDIS_URL` set → rate limits through Redis, so that two instances on one
/// database enforce one limit.
#[tokio::test]
async fn two_servers_on_one_redis_share_a_rate_limit() {
    let redis = match std::env::var("TEST_REDIS_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => {
            assert!(
                std::env::var("TOWER_API_KEY_REQUIRE_SERVICES").as_deref() != Ok("1"),
                "TEST_REDIS_URL is not set and TOWER_API_KEY_REQUIRE_SERVICES=1 requires Redis"
            );
            eprintln!("skipped: TEST_REDIS_URL is not set");
            return;
        }
    };
    let env = [("RATE_LIMIT", "5/60s"), ("REDIS_URL", redis.as_str())];
    let db = TempDb::new("redis");
    let a = start_on(&db.0, &env);
    let b = start_on(&db.0, &env);
    let bearer = format!("Bearer {}", a.admin_key.clone().unwrap());
    let auth = [("authorization", bearer.as_str())];
    let mut statuses = Vec::new();
    for i in 0..6 {
        let server = if i % 2 == 0 { &a } else { &b };
        statuses.push(http(&server.addr, "GET", "/v1/whoami", &auth, "").await.0);
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429]);
    assert_eq!(http(&a.addr, "GET", "/v1/whoami", &auth, "").await.0, 429);
    let (_, body) = http(&b.addr, "GET", "/readyz", &[], "").await;
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["redis"], "ok", "{body}");
}

#[tokio::test]
async fn without_redis_each_server_limits_on_its_own() {
    // Nothing listens on port 1: the server starts anyway, and limits per instance.
    let server = start_sqlite(&[
        ("RATE_LIMIT", "2/60s"),
        ("REDIS_URL", "redis://127.0.0.1:1/"),
    ]);
    let bearer = format!("Bearer {}", server.admin_key.clone().unwrap());
    let auth = [("authorization", bearer.as_str())];
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(http(&server.addr, "GET", "/v1/whoami", &auth, "").await.0);
    }
    assert_eq!(statuses, [200, 200, 429]);
    // Ready all the same: limits are per instance, and /readyz says why.
    let (status, body) = http(&server.addr, "GET", "/readyz", &[], "").await;
    assert_eq!(status, 200, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["redis"], "down", "{body}");
}

#[tokio::test]
async fn keys_and_usage_survive_a_restart() {
    use tower_api_key::KeyStore;
    let db = TempDb::new("restart");
    let first = start_on(&db.0, &[]);
    let admin_key = first
        .admin_key
        .clone()
        .expect("first start prints the admin key");
    let bearer = format!("Bearer {admin_key}");
    let auth = [("authorization", bearer.as_str())];
    for _ in 0..3 {
        assert_eq!(
            http(&first.addr, "GET", "/v1/whoami", &auth, "").await.0,
            200
        );
    }
    let (_, body) = http(&first.addr, "GET", "/v1/whoami", &auth, "").await;
    let key_id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["key_id"]
        .as_str()
        .unwrap()
        .to_owned();
    first.stop();

    let second = start_on(&db.0, &[]);
    assert_eq!(
        second.admin_key, None,
        "an active admin key exists: no new one"
    );
    assert_eq!(
        http(&second.addr, "GET", "/v1/whoami", &auth, "").await.0,
        200
    );
    second.stop();

    // The usage of the first run was written on shutdown.
    let store = tower_api_key::store::SqliteStore::connect(&format!("sqlite://{}", db.0.display()))
        .await
        .unwrap();
    let usage = store.usage(&key_id).await.unwrap().unwrap();
    assert!(usage.requests >= 4, "{usage:?}");
}

#[test]
fn bad_rate_limit_is_a_clear_error() {
    let stderr = refuses_to_start(&[("RATE_LIMIT", "lots")]);
    assert!(stderr.contains("RATE_LIMIT"), "{stderr}");
}

#[test]
fn bad_durations_are_clear_errors() {
    for var in ["CACHE_TTL", "CACHE_STALE", "STORE_TIMEOUT", "CHANGES_POLL"] {
        let stderr = refuses_to_start(&[(var, "soon")]);
        assert!(
            stderr.contains(&format!("{var}: 'soon' is not a duration")),
            "{stderr}"
        );
    }
}

#[tokio::test]
async fn readyz_reports_the_store_the_change_feed_and_redis() {
    let server = start_sqlite(&[]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = http(&server.addr, "GET", "/readyz", &[], "").await;
        let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
        // SQLite: polled, no push; no REDIS_URL. Until the feed knows that the store
        // has no push channel it says "lagging" (and is ready all the same).
        if ready == serde_json::json!({"store": "ok", "changes": "ok", "redis": "off"}) {
            assert_eq!(status, 200, "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "not ready: {status} {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn bad_redis_url_is_a_clear_error_that_hides_the_password() {
    let stderr = refuses_to_start(&[("REDIS_URL", "http://user:hunter2pw@example.com/")]);
    assert!(stderr.contains("REDIS_URL: invalid Redis URL"), "{stderr}");
    assert!(!stderr.contains("hunter2pw"), "{stderr}");
}

#[test]
fn sigterm_shuts_down_cleanly() {
    start_sqlite(&[]).stop();
}

/// Polls `check` until it returns true, failing after `limit`.
async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn admin_contract_over_real_http() {
    let server = start_sqlite(&[]);
    let addr = server.addr.clone();
    let admin = format!("Bearer {}", server.admin_key.clone().unwrap());
    let json = [
        ("authorization", admin.as_str()),
        ("content-type", "application/json"),
    ];
    let (_, me) = http(&addr, "GET", "/v1/whoami", &json, "").await;
    let admin_id = serde_json::from_str::<serde_json::Value>(&me).unwrap()["key_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let create = |body: &'static str| {
        let addr = addr.clone();
        let admin = admin.clone();
        async move {
            let json = [
                ("authorization", admin.as_str()),
                ("content-type", "application/json"),
            ];
            let (status, body) = http(&addr, "POST", "/admin/keys", &json, body).await;
            assert_eq!(status, 201, "{body}");
            serde_json::from_str::<serde_json::Value>(&body).unwrap()
        }
    };
    let whoami = |key: String| {
        let addr = addr.clone();
        async move {
            let bearer = format!("Bearer {key}");
            http(
                &addr,
                "GET",
                "/v1/whoami",
                &[("authorization", bearer.as_str())],
                "",
            )
            .await
            .0
        }
    };

    // Usage counts reach the admin API (the server writes them every 5 s).
    let k = create(r#"{"consumer":"acme","name":"usage"}"#).await;
    let (key, id) = (
        k["key"].as_str().unwrap().to_owned(),
        k["id"].as_str().unwrap().to_owned(),
    );
    for _ in 0..3 {
        assert_eq!(whoami(key.clone()).await, 200);
    }
    let usage_path = format!("/admin/keys/{id}/usage");
    eventually(Duration::from_secs(20), "usage to be written", || async {
        let (_, body) = http(&addr, "GET", &usage_path, &json, "").await;
        let u: serde_json::Value = serde_json::from_str(&body).unwrap();
        u["requests"] == 3 && u["last_used_at"].is_string()
    })
    .await;

    // Expiry: a key for one second works, then fails as expired.
    let short = create(r#"{"consumer":"acme","expires_in_seconds":1}"#).await;
    let short_key = short["key"].as_str().unwrap().to_owned();
    assert_eq!(whoami(short_key.clone()).await, 200);
    eventually(Duration::from_secs(10), "the key to expire", || {
        let f = whoami(short_key.clone());
        async move { f.await == 401 }
    })
    .await;

    // Rotation with grace: both work, then only the new one.
    let (status, body) = http(
        &addr,
        "POST",
        &format!("/admin/keys/{id}/rotate"),
        &json,
        r#"{"grace_seconds":1}"#,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let rotated: serde_json::Value = serde_json::from_str(&body).unwrap();
    let new_key = rotated["key"].as_str().unwrap().to_owned();
    assert_eq!(whoami(new_key.clone()).await, 200);
    assert_eq!(
        whoami(key.clone()).await,
        200,
        "the old key works during the grace"
    );
    eventually(Duration::from_secs(10), "the grace to end", || {
        let f = whoami(key.clone());
        async move { f.await == 401 }
    })
    .await;
    assert_eq!(whoami(new_key.clone()).await, 200);

    // The audit log names the admin key as the actor of every change.
    let (_, log) = http(
        &addr,
        "GET",
        &format!("/admin/audit?key_id={id}"),
        &json,
        "",
    )
    .await;
    let log: serde_json::Value = serde_json::from_str(&log).unwrap();
    let events: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["created", "rotated", "expired_by_rotation"]);
    assert!(
        log.as_array()
            .unwrap()
            .iter()
            .all(|e| e["actor"] == admin_id.as_str())
    );

    // A rate limit given at creation applies to the key.
    let limited =
        create(r#"{"consumer":"acme","rate_limit":{"requests":2,"per_seconds":60}}"#).await;
    let limited_key = limited["key"].as_str().unwrap().to_owned();
    assert_eq!(whoami(limited_key.clone()).await, 200);
    assert_eq!(whoami(limited_key.clone()).await, 200);
    assert_eq!(
        whoami(limited_key.clone()).await,
        429,
        "the third request in a minute"
    );

    // Bad input over the wire: problem+json naming the field.
    let (status, body) = http(
        &addr,
        "POST",
        "/admin/keys",
        &json,
        r#"{"consumer":"a","expires_in_seconds":-1}"#,
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains(r#""field":"expires_in_seconds""#), "{body}");
    let (status, _) = http(&addr, "POST", "/admin/keys", &json, "{oops").await;
    assert_eq!(status, 400);
}

/// Counts by outcome: allowed, rate limited, forbidden, unauthorized.
type Counts = [u64; 4];

fn add(a: Counts, b: Counts) -> Counts {
    [a[0] + b[0], a[1] + b[1], a[2] + b[2], a[3] + b[3]]
}

/// What [`seed_usage`] wrote: the sums the charts of all keys must show.
struct Seeded {
    /// In the last hour, by minute.
    last_hour: Counts,
    /// In the last 7 days, by hour.
    last_week: Counts,
    /// One minute bucket (its RFC 3339 start) and its counts, summed over the keys.
    probe: (String, Counts),
}

/// Three keys with a week of traffic, written into the database at `url` before the
/// server opens it: the minutes of the last 50 minutes, and one minute of each hour
/// 2 to 160 hours ago. So the charts have a shape, and known sums.
async fn seed_usage(url: &str) -> Seeded {
    use std::time::{SystemTime, UNIX_EPOCH};
    use tower_api_key::store::{NewKey, SqliteStore, UsageBucket, UsageDelta};
    use tower_api_key::{KeyStore, RateLimitPolicy, Scopes};

    let store = SqliteStore::connect(url).await.unwrap();
    let now = SystemTime::now();
    let unix = now.duration_since(UNIX_EPOCH).unwrap().as_secs();
    let minute = UNIX_EPOCH + Duration::from_secs(unix - unix % 60);
    let hour = UNIX_EPOCH + Duration::from_secs(unix - unix % 3600);
    let keys = [
        ("acme", "checkout service", "orders:read orders:write", 1.0),
        ("globex", "mobile app", "orders:read", 0.6),
        ("initech", "nightly export", "orders:read", 0.3),
    ];
    let mut seeded = Seeded {
        last_hour: [0; 4],
        last_week: [0; 4],
        probe: (rfc3339(minute - Duration::from_secs(600)), [0; 4]),
    };
    for (k, (consumer, name, scopes, weight)) in keys.into_iter().enumerate() {
        let scopes = Scopes::parse(scopes.split(' ')).unwrap();
        let mut new = NewKey::new(consumer).with_name(name).with_scopes(scopes);
        if k == 0 {
            new = new.with_rate_limits(
                RateLimitPolicy::rate("default", 600, Duration::from_secs(60)).unwrap(),
            );
        }
        let id = store.create(new, "seed").await.unwrap().record.id;
        let wave =
            |x: f64, base: f64, swing: f64| ((base + swing * x.sin()) * weight).round() as u64;
        let mut minutes = Vec::new();
        for h in (2..=160u32).rev() {
            let at = hour - Duration::from_secs(u64::from(h) * 3600) + Duration::from_secs(1800);
            let hour_of_day = (unix / 3600 - u64::from(h)) % 24;
            let x = (hour_of_day as f64 - 8.0) / 24.0 * std::f64::consts::TAU;
            let mut b = UsageBucket::empty(at);
            b.allowed = wave(x, 900.0, 600.0);
            b.rate_limited = if (h + k as u32).is_multiple_of(7) {
                40 + 10 * k as u64
            } else {
                0
            };
            b.forbidden = u64::from((h * 3 + k as u32).is_multiple_of(11)) * 12;
            b.unauthorized = u64::from(h % 17 == k as u32) * 5;
            seeded.last_week = add(
                seeded.last_week,
                [b.allowed, b.rate_limited, b.forbidden, b.unauthorized],
            );
            minutes.push(b);
        }
        for i in (1..=50u32).rev() {
            let at = minute - Duration::from_secs(u64::from(i) * 60);
            let mut b = UsageBucket::empty(at);
            b.allowed = wave(f64::from(i) / 6.0 + k as f64, 24.0, 12.0);
            b.rate_limited = if (i + k as u32).is_multiple_of(9) {
                5 + k as u64
            } else {
                0
            };
            b.forbidden = u64::from((i * 3 + k as u32).is_multiple_of(13)) * 2;
            b.unauthorized = u64::from(i % 23 == k as u32);
            let counts = [b.allowed, b.rate_limited, b.forbidden, b.unauthorized];
            seeded.last_hour = add(seeded.last_hour, counts);
            seeded.last_week = add(seeded.last_week, counts);
            if i == 10 {
                seeded.probe.1 = add(seeded.probe.1, counts);
            }
            minutes.push(b);
        }
        let requests = minutes.iter().map(|b| b.allowed).sum();
        let rejected = minutes.iter().map(UsageBucket::refused).sum();
        store
            .record_usage(&[UsageDelta {
                key_id: id,
                requests,
                rejected,
                last_used_at: minute - Duration::from_secs(60),
                minutes,
            }])
            .await
            .unwrap();
    }
    store.pool().close().await;
    seeded
}

/// What a chart panel of the page shows: from the SVG's data attributes, one `g.bucket`
/// per bucket, and its title and description.
const CHART_STATE: &str = "
    const svg = document.querySelector(arguments[0] + ' .chart svg');
    if (!svg) return null;
    const d = svg.dataset;
    const probe = arguments[1] && svg.querySelector('g.bucket[data-at=\"' + arguments[1] + '\"]');
    return {
        step: d.step, points: Number(d.points), bars: svg.querySelectorAll('g.bucket').length,
        totals: [d.allowed, d.rateLimited, d.forbidden, d.unauthorized].map(Number),
        label: svg.querySelector('title').textContent + ' | ' + svg.querySelector('desc').textContent,
        legend: document.querySelector(arguments[0] + ' .legend').textContent,
        probe: probe ? [probe.dataset.allowed, probe.dataset.rateLimited, probe.dataset.forbidden, probe.dataset.unauthorized].map(Number) : null,
    };";

impl Browser {
    /// Reloads the chart of `panel` until `check` holds of its state (the usage recorder
    /// writes every 5 s); the state.
    async fn chart_until(
        &self,
        panel: &str,
        probe: Option<&str>,
        check: impl Fn(&serde_json::Value) -> bool,
        what: &str,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        let args = serde_json::json!([panel, probe]);
        loop {
            let state = self.exec(CHART_STATE, args.clone()).await;
            if check(&state) {
                return state;
            }
            assert!(
                Instant::now() < deadline,
                "waited for {what}; the chart says {state}"
            );
            self.click(&format!("{panel} .chart-refresh")).await;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The ids of the rows of the keys table.
    async fn row_ids(&self) -> Vec<String> {
        let ids = self
            .exec(
                "return [...document.querySelectorAll('#keys tr[data-id]')].map((r) => r.dataset.id);",
                serde_json::json!([]),
            )
            .await;
        serde_json::from_value(ids).unwrap()
    }

    /// Does the page fit the window's width (nothing to scroll sideways)?
    async fn fits_width(&self) -> serde_json::Value {
        self.exec(
            "return {page: document.documentElement.scrollWidth, window: window.innerWidth};",
            serde_json::json!([]),
        )
        .await
    }
}

/// A GitHub secret-scanning key pair of the test's own: the public key in a file in
/// GitHub's format, for `GITHUB_SECRET_SCANNING_KEYS`, removed when dropped.
struct GitHubKey {
    signing: p256::ecdsa::SigningKey,
    file: std::path::PathBuf,
}

impl GitHubKey {
    fn new() -> Self {
        use p256::pkcs8::EncodePublicKey as _;
        let signing = p256::ecdsa::SigningKey::from_slice(&[0x42; 32]).unwrap();
        let pem = signing
            .verifying_key()
            .to_public_key_pem(p256::pkcs8::LineEnding::LF)
            .unwrap();
        let file = std::env::temp_dir().join(format!("{}.json", unique::unique_name("gh-keys")));
        let document = serde_json::json!({"public_keys": [{"key_identifier": "k1", "key": pem, "is_current": true}]});
        std::fs::write(&file, document.to_string()).unwrap();
        Self { signing, file }
    }

    fn path(&self) -> &str {
        self.file.to_str().unwrap()
    }

    /// Reports `token` found at `url` to the server at `addr`, signed as GitHub signs.
    async fn report(&self, addr: &str, token: &str, url: &str, source: &str) -> (u16, String) {
        use base64::Engine as _;
        use p256::ecdsa::signature::Signer as _;
        let report =
            serde_json::json!([{"token": token, "type": "acme_key", "url": url, "source": source}])
                .to_string();
        let signature: p256::ecdsa::Signature = self.signing.sign(report.as_bytes());
        let signature =
            base64::engine::general_purpose::STANDARD.encode(signature.to_der().as_bytes());
        let headers = [
            ("content-type", "application/json"),
            ("github-public-key-identifier", "k1"),
            ("github-public-key-signature", signature.as_str()),
        ];
        http(addr, "POST", "/github/secret-scanning", &headers, &report).await
    }
}

impl Drop for GitHubKey {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.file);
    }
}

#[tokio::test]
async fn the_dashboard_in_a_real_browser() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let db = TempDb::new("dashboard");
    let seeded = seed_usage(&db.url()).await;
    // Lifetimes for the forms to show, webhooks to a receiver that is not there (so
    // that the deliveries list has pending events to show), and a rate limit small
    // enough to reach.
    let nowhere = format!("http://127.0.0.1:{}/hooks", free_port());
    // GitHub's secret scanning, with a key pair of the test's own, for a leak report.
    let github = GitHubKey::new();
    let server = start_on(
        &db.0,
        &[
            ("DEFAULT_KEY_TTL", "90d"),
            ("MAX_KEY_TTL", "365d"),
            ("WEBHOOK_URL", &nowhere),
            ("WEBHOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            ("RATE_LIMIT", "4/3600s"),
            ("GITHUB_SECRET_SCANNING_KEYS", github.path()),
        ],
    );
    let admin_key = server.admin_key.clone().unwrap();
    let mut api = server::Client::new(&server.addr);
    let page = api.get("/admin/", None).await;
    assert!(
        page.body.contains("id=\"overview-chart\""),
        "the example binary serves another dashboard than src/admin/dashboard.html: \
         rebuild it (cargo build --features full --examples): {} {}",
        page.status,
        page.body.get(..300).unwrap_or(&page.body)
    );
    let admin = Some(admin_key.as_str());
    let create = |consumer: &str, name: &str| serde_json::json!({"consumer": consumer, "name": name, "scopes": ["orders:read"]});

    // Traffic of every outcome: key A is allowed, refused a scope and rate limited;
    // key B is allowed, revoked, then refused.
    let a = api
        .send(
            "POST",
            "/admin/keys",
            admin,
            Some(&create("acme", "orders reader")),
        )
        .await
        .json();
    let b = api
        .send(
            "POST",
            "/admin/keys",
            admin,
            Some(&create("globex", "soon revoked")),
        )
        .await
        .json();
    let (a_id, a_key) = (a["id"].as_str().unwrap(), a["key"].as_str().unwrap());
    let (b_id, b_key) = (b["id"].as_str().unwrap(), b["key"].as_str().unwrap());
    let mut live_a: Counts = [0; 4];
    for (method, path) in [
        ("GET", "/v1/orders"),
        ("GET", "/v1/orders"),
        ("POST", "/v1/orders"),
        ("GET", "/v1/orders"),
        ("GET", "/v1/orders"),
        ("GET", "/v1/orders"),
    ] {
        let body = serde_json::json!({"item": "book"});
        let status = api
            .send(method, path, Some(a_key), Some(&body))
            .await
            .status;
        let outcome = match status {
            200 | 201 => 0,
            429 => 1,
            403 => 2,
            other => panic!("{method} {path}: {other}"),
        };
        live_a[outcome] += 1;
    }
    assert!(
        live_a.iter().take(3).all(|&n| n > 0),
        "every outcome: {live_a:?}"
    );
    assert_eq!(api.get("/v1/whoami", Some(b_key)).await.status, 200);
    // Revoked, not deleted: its page stays, with what it was used for.
    let revoked = api
        .send("POST", &format!("/admin/keys/{b_id}/revoke"), admin, None)
        .await;
    assert_eq!(revoked.status, 200);
    assert_eq!(revoked.json()["status"], "revoked");
    for _ in 0..2 {
        assert_eq!(api.get("/v1/whoami", Some(b_key)).await.status, 401);
    }
    let live_b: Counts = [1, 0, 0, 2];
    // More keys than a page holds.
    for i in 0..30 {
        let body = create(&format!("bulk-{i:02}"), &format!("bulk key {i:02}"));
        assert_eq!(
            api.send("POST", "/admin/keys", admin, Some(&body))
                .await
                .status,
            201
        );
    }

    browser
        .session(
            "POST",
            "/url",
            Some(serde_json::json!({"url": format!("http://{}/admin/", server.addr)})),
        )
        .await;
    // Before signing in, only the sign-in form shows.
    assert!(
        !browser.displayed("#app").await,
        "the app is hidden until sign-in"
    );
    browser.type_into("#admin-key", &admin_key).await;
    browser.click("#sign-in").await;
    browser.find("#keys tr[data-id]").await;
    browser.viewport(1280, 800).await;

    // The overview's chart: one bar per minute of the last hour, and the sums of the
    // seeded and the live traffic once the recorder has written it.
    let want_hour = add(seeded.last_hour, add(live_a, live_b));
    let state = browser
        .chart_until(
            "#overview-chart",
            Some(&seeded.probe.0),
            |s| s["totals"] == serde_json::json!(want_hour),
            "the overview's totals",
        )
        .await;
    assert_eq!(state["step"], "minute");
    assert_eq!(state["points"], 60, "{state}");
    assert_eq!(state["bars"], 60, "{state}");
    assert_eq!(state["probe"], serde_json::json!(seeded.probe.1), "{state}");
    let label = state["label"].as_str().unwrap();
    let total: u64 = want_hour.iter().sum();
    assert!(label.contains("per minute, the last hour"), "{label}");
    assert!(
        label.contains(&format!("{total} requests in the last hour")),
        "{label}"
    );
    let legend = state["legend"].as_str().unwrap().replace(',', "");
    assert!(
        legend.contains(&format!("Allowed {}", want_hour[0])),
        "{legend}"
    );
    assert!(
        legend.contains(&format!("Unauthorized {}", want_hour[3])),
        "{legend}"
    );
    browser
        .wait_text(
            "#overview-chart .readout",
            |t| t.contains("arrow keys"),
            "the hint",
        )
        .await;
    let fits = browser.fits_width().await;
    assert!(fits["page"].as_u64() <= fits["window"].as_u64(), "{fits}");
    browser.scroll_to(None).await;
    // The picture for the README (docs/dashboard.png).
    browser.screenshot("dashboard-1280x800.png").await;
    // The arrow keys walk the bars; the readout says the numbers of the one picked.
    browser
        .type_into("#overview-chart svg", "\u{E010}\u{E012}")
        .await;
    let readout = browser
        .wait_text(
            "#overview-chart .readout",
            |t| t.contains(" UTC — "),
            "a bar's numbers",
        )
        .await;
    assert!(readout.ends_with(" unauthorized"), "{readout}");
    // The last 7 days: one bar per hour.
    browser
        .click("#overview-chart .segmented button[data-step=hour]")
        .await;
    let want_week = add(seeded.last_week, add(live_a, live_b));
    let state = browser
        .chart_until(
            "#overview-chart",
            None,
            |s| s["step"] == "hour" && s["totals"] == serde_json::json!(want_week),
            "the week's totals",
        )
        .await;
    assert_eq!(
        (&state["points"], &state["bars"]),
        (&serde_json::json!(168), &serde_json::json!(168))
    );
    browser.screenshot("dashboard-week-1280x800.png").await;
    browser
        .click("#overview-chart .segmented button[data-step=minute]")
        .await;

    // Key A's page: its own chart, its limits and networks; scopes and expiry edited
    // through the page.
    browser
        .click(&format!("#keys tr[data-id=\"{a_id}\"] a.open"))
        .await;
    browser
        .wait_text("#details-name", |t| t == "orders reader", "key A's page")
        .await;
    let state = browser
        .chart_until(
            "#key-chart",
            None,
            |s| s["totals"] == serde_json::json!(live_a),
            "key A's totals",
        )
        .await;
    assert_eq!(
        (&state["points"], &state["bars"]),
        (&serde_json::json!(60), &serde_json::json!(60))
    );
    assert_eq!(
        browser
            .wait_text("#details-limits", |t| !t.is_empty(), "limits")
            .await,
        "the service's default"
    );
    assert_eq!(
        browser
            .wait_text("#details-networks", |t| !t.is_empty(), "networks")
            .await,
        "anywhere"
    );
    browser.clear("#edit-scopes").await;
    browser
        .type_into("#edit-scopes", "orders:read orders:write")
        .await;
    browser.click("#save-scopes").await;
    browser
        .wait_text("#edit-note", |t| t == "Scopes saved.", "the saved note")
        .await;
    let record = api.get(&format!("/admin/keys/{a_id}"), admin).await.json();
    assert_eq!(
        record["scopes"],
        serde_json::json!(["orders:read", "orders:write"])
    );
    browser
        .wait_text(
            "#details-scopes",
            |t| t.contains("orders:write"),
            "the new scopes",
        )
        .await;
    // Beyond MAX_KEY_TTL: refused, and said so; "never" is not offered.
    assert!(!browser.displayed("#never-expires").await);
    let expires_before = record["expires_at"].clone();
    browser.clear("#edit-expires").await;
    browser.type_into("#edit-expires", "400").await;
    browser.click("#save-expiry").await;
    browser
        .wait_text("#edit-error", |t| !t.is_empty(), "the refusal")
        .await;
    let record = api.get(&format!("/admin/keys/{a_id}"), admin).await.json();
    assert_eq!(record["expires_at"], expires_before, "unchanged");
    browser.clear("#edit-expires").await;
    browser.type_into("#edit-expires", "30").await;
    let before = unix_of(&rfc3339(std::time::SystemTime::now()));
    browser.click("#save-expiry").await;
    browser
        .wait_text("#edit-note", |t| t == "Expiry saved.", "the saved expiry")
        .await;
    let after = unix_of(&rfc3339(std::time::SystemTime::now())) + 1;
    let record = api.get(&format!("/admin/keys/{a_id}"), admin).await.json();
    let at = unix_of(record["expires_at"].as_str().unwrap());
    assert!(
        (before + 30 * 86_400..=after + 30 * 86_400).contains(&at),
        "{record}"
    );
    browser
        .wait_text(
            "#details-audit",
            |t| t.contains("scopes changed") && t.contains("expiry changed"),
            "the audit log",
        )
        .await;
    // The allowlist, edited on the page: from then on the key (cached by the server
    // since its requests above) is refused from this machine at once.
    assert_eq!(
        browser
            .exec(
                "return document.getElementById('edit-networks').value;",
                serde_json::json!([])
            )
            .await,
        "",
        "anywhere, as the record says"
    );
    browser
        .type_into("#edit-networks", "10.0.0.0/8 2001:db8::/32")
        .await;
    browser.click("#save-networks").await;
    browser
        .wait_text(
            "#edit-note",
            |t| t == "Networks saved.",
            "the saved networks",
        )
        .await;
    let record = api.get(&format!("/admin/keys/{a_id}"), admin).await.json();
    assert_eq!(
        record["allowed_ips"],
        serde_json::json!(["10.0.0.0/8", "2001:db8::/32"])
    );
    browser
        .wait_text(
            "#details-networks",
            |t| t == "10.0.0.0/8, 2001:db8::/32",
            "the new networks",
        )
        .await;
    let outside = api.get("/v1/whoami", Some(a_key)).await;
    assert_eq!(outside.status, 403, "{}", outside.body);
    assert!(
        outside.body.contains("AddressNotAllowed"),
        "{}",
        outside.body
    );
    // A refusal of a known key counts as unauthorized.
    live_a[3] += 1;
    // A bad network: refused, said so, nothing changed.
    browser.clear("#edit-networks").await;
    browser.type_into("#edit-networks", "10.0.0.0/33").await;
    browser.click("#save-networks").await;
    browser
        .wait_text(
            "#edit-error",
            |t| t.contains("allowed_ips"),
            "the refused network",
        )
        .await;
    let record = api.get(&format!("/admin/keys/{a_id}"), admin).await.json();
    assert_eq!(
        record["allowed_ips"],
        serde_json::json!(["10.0.0.0/8", "2001:db8::/32"])
    );
    // Emptied: anywhere again.
    browser.clear("#edit-networks").await;
    browser.click("#save-networks").await;
    browser
        .wait_text(
            "#edit-note",
            |t| t == "The key may be used from anywhere now.",
            "anywhere again",
        )
        .await;
    let record = api.get(&format!("/admin/keys/{a_id}"), admin).await.json();
    assert_eq!(record["allowed_ips"], serde_json::json!([]));
    browser
        .wait_text("#details-networks", |t| t == "anywhere", "anywhere")
        .await;
    browser
        .wait_text(
            "#details-audit",
            |t| t.matches("allowed ips changed").count() == 2,
            "the allowlist changes in the audit log",
        )
        .await;
    browser.scroll_to(None).await;
    browser.screenshot("dashboard-key-1280x800.png").await;
    browser.scroll_to(Some("#key-chart")).await;
    browser.screenshot("dashboard-key-edit-1280x800.png").await;
    // Key B's page: the unauthorized requests of a revoked key, and no actions.
    browser
        .session(
            "POST",
            "/url",
            Some(serde_json::json!({"url": format!("http://{}/admin/#/keys/{b_id}", server.addr)})),
        )
        .await;
    browser
        .wait_text("#details-status", |t| t == "revoked", "key B's page")
        .await;
    browser
        .chart_until(
            "#key-chart",
            None,
            |s| s["totals"] == serde_json::json!(live_b),
            "key B's totals",
        )
        .await;
    assert!(
        !browser.displayed("#details-actions").await,
        "a revoked key is neither rotated nor revoked"
    );
    assert!(
        browser.displayed("#details-delete").await,
        "a revoked key may be deleted"
    );
    browser.click("a.back").await;

    // A key made through the form, found by searching, shows its limits and networks.
    browser.click("#create-card summary").await;
    browser.type_into("#new-consumer", "acme").await;
    browser.type_into("#new-name", "from the browser").await;
    browser.type_into("#new-scopes", "orders:read").await;
    browser.type_into("#new-requests", "100").await;
    browser.type_into("#new-per", "60").await;
    browser
        .type_into("#new-networks", "127.0.0.0/8 2001:db8::/32")
        .await;
    browser.click("#create").await;
    let secret = browser
        .wait_text(
            "#secret-value",
            |t| t.starts_with("sk_live_"),
            "the new key",
        )
        .await;
    assert_eq!(api.get("/v1/whoami", Some(&secret)).await.status, 200);
    browser.click("#dismiss").await;
    browser.type_into("#search", "FROM THE").await;
    let rows = browser
        .wait_for(
            "return [...document.querySelectorAll('#keys tr[data-id] .keyname a')].map((a) => a.textContent);",
            |v| v == &serde_json::json!(["from the browser"]),
            "the search to narrow the list",
        )
        .await;
    assert_eq!(rows, serde_json::json!(["from the browser"]));
    let c_id = browser.row_ids().await.remove(0);
    let row = format!("#keys tr[data-id=\"{c_id}\"]");
    browser.click(&format!("{row} a.open")).await;
    browser
        .wait_text(
            "#details-limits",
            |t| t.contains("100 per 1 min"),
            "the key's rate limit",
        )
        .await;
    browser
        .wait_text(
            "#details-networks",
            |t| t == "127.0.0.0/8, 2001:db8::/32",
            "the key's networks",
        )
        .await;
    browser.click("a.back").await;

    // Revoking asks first: Cancel keeps the key, Revoke revokes it.
    browser.click(&format!("{row} .revoke")).await;
    assert!(browser.displayed("#confirm").await, "a confirmation");
    browser
        .wait_text(
            "#confirm-text",
            |t| t.contains("from the browser"),
            "the key named",
        )
        .await;
    browser.click("#confirm-cancel").await;
    assert!(!browser.displayed("#confirm").await);
    assert_eq!(
        browser
            .wait_text(&format!("{row} .status"), |t| !t.is_empty(), "status")
            .await,
        "active"
    );
    assert_eq!(api.get("/v1/whoami", Some(&secret)).await.status, 200);
    // Revoking the key the page signed in with is called out.
    let admin_id = api.get("/admin/keys?consumer=admin", admin).await.json()[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    browser.clear("#search").await;
    browser.type_into("#search", "admin").await;
    let admin_row = format!("#keys tr[data-id=\"{admin_id}\"]");
    browser.click(&format!("{admin_row} .revoke")).await;
    browser
        .wait_text(
            "#confirm-text",
            |t| t.contains("signed in with"),
            "the warning",
        )
        .await;
    browser.click("#confirm-cancel").await;
    browser.clear("#search").await;
    browser.type_into("#search", "FROM THE").await;
    browser.click(&format!("{row} .revoke")).await;
    browser
        .wait_text(
            "#confirm-text",
            |t| t.contains("from the browser") && !t.contains("signed in"),
            "the key named",
        )
        .await;
    browser.click("#confirm-ok").await;
    browser
        .wait_text(
            &format!("{row} .status"),
            |t| t == "revoked",
            "the revoked status",
        )
        .await;
    assert_eq!(api.get("/v1/whoami", Some(&secret)).await.status, 401);
    // Its page stays, shown revoked; deleting it (confirmed) takes the page and the row.
    let c_path = format!("/admin/keys/{c_id}");
    assert_eq!(api.get(&c_path, admin).await.json()["status"], "revoked");
    browser.click(&format!("{row} a.open")).await;
    browser
        .wait_text("#details-status", |t| t == "revoked", "key C's page")
        .await;
    browser
        .wait_text(
            "#details-audit",
            |t| t.contains("revoked"),
            "the revocation",
        )
        .await;
    browser.click("#details-delete").await;
    browser
        .wait_text(
            "#confirm-title",
            |t| t == "Delete this key?",
            "the question",
        )
        .await;
    browser.click("#confirm-cancel").await;
    assert_eq!(api.get(&c_path, admin).await.status, 200, "cancelled");
    browser.click("#details-delete").await;
    browser
        .wait_text("#confirm-ok", |t| t == "Delete", "the button")
        .await;
    browser.click("#confirm-ok").await;
    browser
        .wait_for(
            "return !document.getElementById('overview').hidden && document.querySelectorAll('#keys tr[data-id]').length === 0;",
            |v| v == true,
            "the overview, without the deleted key",
        )
        .await;
    assert_eq!(api.get(&c_path, admin).await.status, 404);

    // Search in any case, by consumer or name; then pages of 25.
    browser.clear("#search").await;
    browser.type_into("#search", "Orders Rea").await;
    browser
        .wait_for(
            "return [...document.querySelectorAll('#keys tr[data-id]')].map((r) => r.dataset.id);",
            |v| v == &serde_json::json!([a_id]),
            "a search by name",
        )
        .await;
    browser.clear("#search").await;
    browser.type_into("#search", "bulk-0").await;
    browser
        .wait_for(
            "return document.querySelectorAll('#keys tr[data-id]').length;",
            |v| v == 10,
            "a search by consumer",
        )
        .await;
    browser.clear("#search").await;
    let all: Vec<String> = api
        .get("/admin/keys", admin)
        .await
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(all.len() > 25 && all.len() <= 50, "{}", all.len());
    let first = browser
        .wait_for(
            "return [...document.querySelectorAll('#keys tr[data-id]')].map((r) => r.dataset.id);",
            |v| v.as_array().is_some_and(|a| a.len() == 25),
            "the first page",
        )
        .await;
    assert_eq!(first, serde_json::json!(all[..25]));
    browser
        .wait_text(
            "#page-info",
            |t| t.starts_with("Page 1 · keys 1–25"),
            "page 1",
        )
        .await;
    browser.click("#next").await;
    browser
        .wait_text("#page-info", |t| t.starts_with("Page 2"), "page 2")
        .await;
    assert_eq!(browser.row_ids().await, all[25..]);
    assert!(
        browser
            .exec(
                "return document.getElementById('next').disabled;",
                serde_json::json!([])
            )
            .await
            == true
    );
    browser.click("#prev").await;
    browser
        .wait_text("#page-info", |t| t.starts_with("Page 1"), "page 1 again")
        .await;
    assert_eq!(browser.row_ids().await, all[..25]);

    // Rotating through the page shows the new secret once; the old key's page logs it.
    let bulk = &all[8];
    browser
        .click(&format!("#keys tr[data-id=\"{bulk}\"] .rotate"))
        .await;
    browser
        .wait_text(
            "#secret-value",
            |t| t.starts_with("sk_live_") && t != secret,
            "the rotated key",
        )
        .await;
    browser.click("#dismiss").await;
    browser
        .click(&format!("#keys tr[data-id=\"{bulk}\"] a.open"))
        .await;
    browser
        .wait_text(
            "#details-audit",
            |t| t.contains("rotated"),
            "the rotated entry",
        )
        .await;
    browser.click("a.back").await;
    browser
        .wait_text(
            "#lifetimes",
            |t| t.contains("live 90 days") && t.contains("at most 365 days"),
            "the lifetimes of new keys",
        )
        .await;
    browser
        .wait_text(
            "#deliveries",
            |t| t.contains("key.created") && t.contains("pending"),
            "the pending deliveries",
        )
        .await;

    // A leak that GitHub reports: the key's audit log says where it was found, and
    // lists the webhook events sent for the key, with how their delivery stands.
    let leaky = api
        .send(
            "POST",
            "/admin/keys",
            admin,
            Some(&create("initech", "leaky")),
        )
        .await
        .json();
    let (leaky_id, leaky_key) = (
        leaky["id"].as_str().unwrap().to_owned(),
        leaky["key"].as_str().unwrap().to_owned(),
    );
    let leak_url = "https://github.com/octo/repo/blob/abc/.env";
    let (status, body) = github
        .report(&server.addr, &leaky_key, leak_url, "content")
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("true_positive"), "{body}");
    browser
        .session(
            "POST",
            "/url",
            Some(serde_json::json!({"url": format!("http://{}/admin/#/keys/{leaky_id}", server.addr)})),
        )
        .await;
    browser
        .wait_text(
            "#details-status",
            |t| t == "revoked",
            "the leaked key's page",
        )
        .await;
    let audit = browser
        .wait_text(
            "#details-audit",
            |t| {
                t.contains(&format!("leaked: found at {leak_url} (content)"))
                    && t.contains("webhook key.leaked: pending")
                    && t.contains("webhook key.revoked: pending")
                    && t.contains("webhook key.created: pending")
            },
            "the leak and its webhook events in the audit log",
        )
        .await;
    assert!(!audit.contains(&leaky_key), "the page shows the key");
    assert!(browser.displayed("#audit-hint").await);
    // One line for each webhook event the store holds for the key, named by its id.
    let sent = api
        .get(
            &format!("/admin/webhooks/deliveries?key_id={leaky_id}"),
            admin,
        )
        .await
        .json();
    let mut ids: Vec<String> = sent
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    let shown = browser
        .exec(
            "return [...document.querySelectorAll('#details-audit tr.webhook')].map((r) => r.dataset.delivery).sort();",
            serde_json::json!([]),
        )
        .await;
    assert_eq!(ids.len(), 3, "{sent}");
    assert_eq!(shown, serde_json::json!(ids));
    // Newest first: the revocation's event above the leak's, above the creation's.
    let order = browser
        .exec(
            "return [...document.querySelectorAll('#details-audit tr .event')].map((c) => c.textContent);",
            serde_json::json!([]),
        )
        .await;
    let order: Vec<String> = serde_json::from_value(order).unwrap();
    let want = [
        "webhook key.revoked: ",
        "revoked",
        "webhook key.leaked: ",
        "leaked: ",
        "webhook key.created: ",
        "created",
    ];
    assert_eq!(order.len(), want.len(), "{order:?}");
    for (line, want) in order.iter().zip(want) {
        assert!(line.starts_with(want), "{want:?}: {order:?}");
    }
    browser.scroll_to(Some("#details-audit")).await;
    browser
        .screenshot("dashboard-key-leaked-1280x800.png")
        .await;
    browser.click("a.back").await;

    // At phone width: nothing to scroll sideways, on the overview and on a key's page.
    browser.viewport(390, 844).await;
    browser
        .chart_until(
            "#overview-chart",
            None,
            |s| s["points"] == 60,
            "the chart redrawn",
        )
        .await;
    let fits = browser.fits_width().await;
    assert!(fits["page"].as_u64() <= fits["window"].as_u64(), "{fits}");
    browser.scroll_to(None).await;
    let phone = browser.screenshot("dashboard-phone.png").await;
    assert!(std::fs::metadata(phone).unwrap().len() > 1000);
    browser.scroll_to(Some("#keys")).await;
    browser.screenshot("dashboard-phone-keys.png").await;
    browser.scroll_to(Some("#create-card")).await;
    browser.screenshot("dashboard-phone-create.png").await;
    browser
        .click(&format!("#keys tr[data-id=\"{a_id}\"] a.open"))
        .await;
    browser
        .wait_text("#details-name", |t| t == "orders reader", "key A's page")
        .await;
    browser
        .chart_until(
            "#key-chart",
            None,
            |s| s["totals"] == serde_json::json!(live_a),
            "key A's chart",
        )
        .await;
    let fits = browser.fits_width().await;
    assert!(fits["page"].as_u64() <= fits["window"].as_u64(), "{fits}");
    browser.scroll_to(None).await;
    browser.screenshot("dashboard-key-phone.png").await;
    browser.scroll_to(Some("#key-chart")).await;
    browser.screenshot("dashboard-key-phone-chart.png").await;
    browser.scroll_to(Some("#edit")).await;
    browser.screenshot("dashboard-key-phone-edit.png").await;
    // The confirmation fits a phone too.
    browser.click("#details-revoke").await;
    assert!(browser.displayed("#confirm").await);
    browser.screenshot("dashboard-phone-confirm.png").await;
    browser.click("#confirm-cancel").await;
    browser.session("DELETE", "", None).await;
    drop(server);
    drop(db);
}

#[tokio::test]
async fn key_lifetimes_from_the_environment() {
    let server = start_sqlite(&[("DEFAULT_KEY_TTL", "90d"), ("MAX_KEY_TTL", "365d")]);
    let bearer = format!("Bearer {}", server.admin_key.clone().unwrap());
    let auth = [("authorization", bearer.as_str())];
    let (status, body) = http(
        &server.addr,
        "POST",
        "/admin/keys",
        &auth,
        r#"{"consumer":"acme"}"#,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let created: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        created["expires_at"].is_string(),
        "the default applies: {body}"
    );
    let too_long = format!(
        r#"{{"consumer":"acme","expires_in_seconds":{}}}"#,
        366 * 86_400
    );
    let (status, body) = http(&server.addr, "POST", "/admin/keys", &auth, &too_long).await;
    assert_eq!(status, 422, "{body}");
    let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(problem["field"], "expires_in_seconds", "{body}");
    // A default above the maximum, or a lifetime that is not one: a clear start-up error.
    let stderr = refuses_to_start(&[("DEFAULT_KEY_TTL", "400d"), ("MAX_KEY_TTL", "365d")]);
    assert!(
        stderr.contains("longer than the maximum (365d)"),
        "{stderr}"
    );
    let stderr = refuses_to_start(&[("MAX_KEY_TTL", "forever")]);
    assert!(
        stderr.contains("MAX_KEY_TTL=") && stderr.contains("expected a lifetime such as 90d"),
        "{stderr}"
    );
}

#[tokio::test]
async fn allowlists_use_the_peer_and_trusted_proxies_only() {
    let server = start_sqlite(&[("TRUSTED_PROXIES", "127.0.0.1/32, ::1/128")]);
    let bearer = format!("Bearer {}", server.admin_key.clone().unwrap());
    let admin = [("authorization", bearer.as_str())];
    let create = |nets: &str| format!(r#"{{"consumer":"acme","allowed_ips":{nets}}}"#);
    let mut keys = Vec::new();
    for nets in [r#"["127.0.0.0/8"]"#, r#"["198.51.100.0/24"]"#] {
        let (status, body) = http(&server.addr, "POST", "/admin/keys", &admin, &create(nets)).await;
        assert_eq!(status, 201, "{body}");
        let created: serde_json::Value = serde_json::from_str(&body).unwrap();
        keys.push(format!("Bearer {}", created["key"].as_str().unwrap()));
    }
    let whoami = |key: &str, xff: Option<&str>| {
        let mut headers = vec![("authorization".to_owned(), key.to_owned())];
        if let Some(xff) = xff {
            headers.push(("x-forwarded-for".to_owned(), xff.to_owned()));
        }
        headers
    };
    for (key, xff, want) in [
        // The peer is 127.0.0.1: inside the first key's list.
        (&keys[0], None, 200),
        (&keys[1], None, 403),
        // The peer is a trusted proxy: the client it names counts.
        (&keys[1], Some("198.51.100.7"), 200),
        (&keys[0], Some("198.51.100.7"), 403),
        (&keys[1], Some("198.51.100.7, junk"), 403),
    ] {
        let headers = whoami(key, xff);
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let (status, body) = http(&server.addr, "GET", "/v1/whoami", &headers, "").await;
        assert_eq!(status, want, "{xff:?}: {body}");
        if want == 403 {
            assert!(body.contains("variant.AddressNotAllowed"), "{body}");
        }
    }
    let stderr = refuses_to_start(&[("TRUSTED_PROXIES", "10.0.0.0/8,nowhere")]);
    assert!(
        stderr.contains("TRUSTED_PROXIES") && stderr.contains("nowhere"),
        "{stderr}"
    );
}

/// `GITHUB_SECRET_SCANNING_KEYS` mounts GitHub's endpoint: a signed report revokes the
/// key it names and the audit list shows where it was found; bad settings stop the start.
#[tokio::test]
async fn github_secret_scanning() {
    use base64::Engine as _;
    use p256::ecdsa::signature::Signer as _;
    use p256::pkcs8::EncodePublicKey as _;

    let github = p256::ecdsa::SigningKey::from_slice(&[0x42; 32]).unwrap();
    let pem = github
        .verifying_key()
        .to_public_key_pem(p256::pkcs8::LineEnding::LF)
        .unwrap();
    let keys = std::env::temp_dir().join(format!("{}.json", unique::unique_name("gh-keys")));
    let document = serde_json::json!({"public_keys": [{"key_identifier": "k1", "key": pem, "is_current": true}]});
    std::fs::write(&keys, document.to_string()).unwrap();
    let keys_path = keys.to_str().unwrap();

    let stderr = refuses_to_start(&[
        ("GITHUB_SECRET_SCANNING_KEYS", keys_path),
        ("SECRET_SCANNING_ACTION", "delete"),
    ]);
    assert!(stderr.contains("SECRET_SCANNING_ACTION"), "{stderr}");
    let stderr = refuses_to_start(&[("GITHUB_SECRET_SCANNING_KEYS", "/nonexistent/keys.json")]);
    assert!(stderr.contains("GITHUB_SECRET_SCANNING_KEYS"), "{stderr}");

    let server = start_sqlite(&[("GITHUB_SECRET_SCANNING_KEYS", keys_path)]);
    let addr = server.addr.as_str();
    let bearer = format!("Bearer {}", server.admin_key.clone().unwrap());
    let (status, body) = http(
        addr,
        "POST",
        "/admin/keys",
        &[
            ("authorization", &bearer),
            ("content-type", "application/json"),
        ],
        r#"{"consumer":"acme"}"#,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let created: serde_json::Value = serde_json::from_str(&body).unwrap();
    let key = created["key"].as_str().unwrap();
    let key_bearer = format!("Bearer {key}");
    assert_eq!(
        http(
            addr,
            "GET",
            "/v1/whoami",
            &[("authorization", &key_bearer)],
            ""
        )
        .await
        .0,
        200
    );

    let url = "https://github.com/octo/repo/blob/abc/.env";
    let report =
        serde_json::json!([{"token": key, "type": "acme_key", "url": url, "source": "content"}])
            .to_string();
    let signature: p256::ecdsa::Signature = github.sign(report.as_bytes());
    let signature = base64::engine::general_purpose::STANDARD.encode(signature.to_der().as_bytes());
    let headers = [
        ("content-type", "application/json"),
        ("github-public-key-identifier", "k1"),
        ("github-public-key-signature", signature.as_str()),
    ];
    let (status, body) = http(addr, "POST", "/github/secret-scanning", &headers, &report).await;
    assert_eq!(status, 200, "{body}");
    let feedback: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(feedback[0]["label"], "true_positive");
    assert_eq!(feedback[0]["token_type"], "acme_key");
    assert_eq!(
        http(
            addr,
            "GET",
            "/v1/whoami",
            &[("authorization", &key_bearer)],
            ""
        )
        .await
        .0,
        401
    );

    let path = format!("/admin/audit?key_id={}", created["id"].as_str().unwrap());
    let (status, body) = http(addr, "GET", &path, &[("authorization", &bearer)], "").await;
    assert_eq!(status, 200);
    let audit: serde_json::Value = serde_json::from_str(&body).unwrap();
    let leaked = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"] == "leaked")
        .unwrap_or_else(|| panic!("no leaked entry: {body}"));
    assert_eq!(leaked["url"], url);
    assert_eq!(leaked["source"], "content");
    assert!(
        !server.stderr().iter().any(|l| l.contains(key)),
        "a token was logged"
    );

    // Tampered: refused, as problem+json.
    let (status, _) = http(
        addr,
        "POST",
        "/github/secret-scanning",
        &headers,
        &report.replace("content", "commit"),
    )
    .await;
    assert_eq!(status, 401);
    server.stop();
    let _ = std::fs::remove_file(&keys);
}

#[tokio::test]
async fn with_accept_foreign_keys_an_imported_uuid_key_works() {
    let uuid = "6f1c2b9e-8d4a-4e7b-a0c3-5d2f9e8b7a61";
    let hash = tower_api_key::KeyHash::of(uuid).to_hex();
    let import = format!(r#"[{{"hash":"{hash}","consumer":"legacy","scopes":["orders:read"]}}]"#);
    for (accept, works) in [("true", true), ("false", false)] {
        let server = start_sqlite(&[("ACCEPT_FOREIGN_KEYS", accept)]);
        let admin = format!("Bearer {}", server.admin_key.clone().unwrap());
        let json_admin = [
            ("authorization", admin.as_str()),
            ("content-type", "application/json"),
        ];
        let (status, body) = http(
            &server.addr,
            "POST",
            "/admin/keys/import",
            &json_admin,
            &import,
        )
        .await;
        assert_eq!(status, 201, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["imported"], 1);
        let bearer = format!("Bearer {uuid}");
        let auth = [("authorization", bearer.as_str())];
        let (status, body) = http(&server.addr, "GET", "/v1/whoami", &auth, "").await;
        if works {
            assert_eq!(status, 200, "{body}");
            let who: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(who["consumer"], "legacy");
            assert_eq!(who["key_id"], v["ids"][0]);
            let (status, _) = http(&server.addr, "GET", "/v1/orders", &auth, "").await;
            assert_eq!(status, 200);
            // Another UUID, never imported: 401 like any unknown key.
            let other = "Bearer 00000000-0000-4000-8000-000000000000";
            let (status, _) = http(
                &server.addr,
                "GET",
                "/v1/whoami",
                &[("authorization", other)],
                "",
            )
            .await;
            assert_eq!(status, 401);
        } else {
            assert_eq!(
                status, 401,
                "ACCEPT_FOREIGN_KEYS=false refuses foreign keys"
            );
        }
    }
}

#[test]
fn bad_accept_foreign_keys_is_a_clear_error() {
    let stderr = refuses_to_start(&[("ACCEPT_FOREIGN_KEYS", "yes")]);
    assert!(
        stderr.contains("ACCEPT_FOREIGN_KEYS must be true or false"),
        "{stderr}"
    );
}

/// `WEBHOOK_URL` and `WEBHOOK_SECRET`: the server signs its events so that a receiver
/// holding the secret accepts them (one holding another secret refuses every one), and
/// its delivery log says how each went.
#[tokio::test]
async fn webhooks_from_the_example_server_reach_a_receiver_that_checks_them() {
    use std::sync::atomic::Ordering;
    use tower_api_key::webhook::WebhookSecret;

    let secret = WebhookSecret::generate();
    let (rx, addr) = receiver::Receiver::start(secret.clone(), false).await;
    let url = format!("http://{addr}/hooks");
    let text = secret.expose_secret();
    let server = start_sqlite(&[("WEBHOOK_URL", &url), ("WEBHOOK_SECRET", text.as_str())]);
    let admin = server.admin_key.clone().unwrap();
    let mut api = server::Client::new(&server.addr);
    let created = api
        .send(
            "POST",
            "/admin/keys",
            Some(&admin),
            Some(&serde_json::json!({"consumer": "acme", "name": "hooked"})),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let created = created.json();
    let id = created["id"].as_str().unwrap().to_owned();
    let key = created["key"].as_str().unwrap().to_owned();
    let revoked = api
        .send(
            "POST",
            &format!("/admin/keys/{id}/revoke"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(revoked.status, 200);

    eventually(Duration::from_secs(30), "the key's events arrive", || {
        let rx = rx.clone();
        let id = id.clone();
        async move { rx.messages("key.created", &id) == 1 && rx.messages("key.revoked", &id) == 1 }
    })
    .await;
    assert_eq!(rx.bad_signatures.load(Ordering::SeqCst), 0);
    let bodies = rx.received.lock().unwrap().bodies.clone();
    let revocation = bodies
        .values()
        .find(|b| b["type"] == "key.revoked")
        .unwrap();
    assert_eq!(revocation["data"]["consumer"], "acme");
    assert_eq!(revocation["data"]["name"], "hooked");
    assert!(revocation["data"]["revoked_at"].is_string());
    let everything = serde_json::to_string(&bodies).unwrap();
    assert!(
        !everything.contains(&key[key.len() - 40..]),
        "a body holds a key"
    );
    // The delivery log says so, once the attempt is recorded.
    let path = format!("/admin/webhooks/deliveries?key_id={id}");
    let mut log = serde_json::Value::Null;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        log = api.get(&path, Some(&admin)).await.json();
        if log.as_array().is_some_and(|l| {
            l.len() == 2
                && l.iter()
                    .all(|d| d["state"] == "delivered" && d["last_status"] == 204)
        }) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let types: Vec<&str> = log
        .as_array()
        .unwrap_or_else(|| panic!("{log}"))
        .iter()
        .map(|d| d["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["key.revoked", "key.created"], "{log}");
    assert!(
        log.as_array()
            .unwrap()
            .iter()
            .all(|d| d["state"] == "delivered"),
        "{log}"
    );
    assert!(
        !server.stderr().iter().any(|l| l.contains(&text[6..])),
        "the secret was logged"
    );
    drop(server);

    // A server with another secret: the receiver refuses every event, and the log
    // shows the receiver's 401 on a pending event.
    let other = WebhookSecret::generate().expose_secret();
    let server = start_sqlite(&[("WEBHOOK_URL", &url), ("WEBHOOK_SECRET", other.as_str())]);
    let admin = server.admin_key.clone().unwrap();
    let mut api = server::Client::new(&server.addr);
    let before = rx.count();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = api
            .get("/admin/webhooks/deliveries", Some(&admin))
            .await
            .json();
        if log[0]["last_status"] == 401 {
            assert_eq!(log[0]["state"], "pending", "{log}");
            assert_eq!(log[0]["type"], "key.created", "the admin key's creation");
            break;
        }
        assert!(Instant::now() < deadline, "no 401 recorded: {log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(rx.bad_signatures.load(Ordering::SeqCst) > 0);
    assert_eq!(rx.count(), before, "nothing wrongly signed was accepted");
}

/// A bad `WEBHOOK_SECRET`, or only one of the two variables: the server does not start,
/// and says which variable in one line (never the secret).
#[test]
fn bad_webhook_settings_are_one_clear_line() {
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let url = "http://127.0.0.1:9/hooks";
    for (env, says) in [
        (
            vec![
                ("WEBHOOK_URL", url),
                ("WEBHOOK_SECRET", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            ],
            "WEBHOOK_SECRET: a webhook secret must start with `whsec_`",
        ),
        (
            vec![
                ("WEBHOOK_URL", url),
                ("WEBHOOK_SECRET", "whsec_not*base64!"),
            ],
            "WEBHOOK_SECRET: a webhook secret must be `whsec_` followed by base64",
        ),
        (
            vec![("WEBHOOK_URL", url), ("WEBHOOK_SECRET", "whsec_c2hvcnQ=")],
            "WEBHOOK_SECRET: a webhook secret must hold at least 16 bytes",
        ),
        (vec![("WEBHOOK_URL", url)], "WEBHOOK_SECRET is not set"),
        (vec![("WEBHOOK_SECRET", secret)], "WEBHOOK_URL is not set"),
        (
            vec![
                ("WEBHOOK_URL", "https://example.com/hooks"),
                ("WEBHOOK_SECRET", secret),
            ],
            "WEBHOOK_URL: ",
        ),
    ] {
        let stderr = refuses_to_start(&env);
        assert_eq!(stderr.trim().lines().count(), 1, "{env:?}: {stderr}");
        assert!(stderr.contains(says), "{env:?}: {stderr}");
        assert!(
            !stderr.contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            "{stderr}"
        );
        assert!(!stderr.contains("not*base64"), "{stderr}");
    }
}
