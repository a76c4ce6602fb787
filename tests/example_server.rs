//! Black-box test of `examples/server.rs`: the built binary, over real TCP.
#![cfg(all(
    unix,
    feature = "axum",
    feature = "sqlite",
    feature = "postgres",
    feature = "redis",
    feature = "admin"
))]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[path = "common/server.rs"]
mod server;
#[path = "common/unique.rs"]
mod unique;

use server::{TempDb, refuses_to_start, start_on, start_sqlite};

/// A loopback port nothing listens on (bound, then let go).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The id of the first key of `consumer`, through the admin API.
async fn first_key_id(addr: &str, admin: &str, consumer: &str) -> String {
    let path = format!("/admin/keys?consumer={consumer}");
    let (status, listed) = http(addr, "GET", &path, &[("authorization", admin)], "").await;
    assert_eq!(status, 200, "{listed}");
    serde_json::from_str::<serde_json::Value>(&listed).unwrap()[0]["id"]
        .as_str()
        .unwrap()
        .to_owned()
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

/// A WebDriver session on chromedriver, driven over plain HTTP.
struct Browser {
    driver: Child,
    addr: String,
    session: String,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    /// Starts chromedriver and a headless Chromium, or `None` (skipped) where they are
    /// not installed and services are not required.
    async fn start() -> Option<Self> {
        let driver_bin = std::path::Path::new("/usr/bin/chromedriver");
        if !driver_bin.exists() {
            assert!(
                std::env::var("TOWER_API_KEY_REQUIRE_SERVICES").as_deref() != Ok("1"),
                "chromedriver is missing and TOWER_API_KEY_REQUIRE_SERVICES=1 requires it"
            );
            eprintln!("skipped: /usr/bin/chromedriver is not installed");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr = format!("127.0.0.1:{port}");
        let mut browser = Self {
            driver,
            addr,
            session: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&browser.addr).await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile =
            std::env::temp_dir().join(format!("chromium-profile-{}-{port}", std::process::id()));
        let caps = serde_json::json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                format!("--user-data-dir={}", profile.display()), "--window-size=1280,800",
            ]}
        }}});
        let created = browser.call("POST", "/session", Some(caps)).await;
        browser.session = created["sessionId"].as_str().expect("a session").to_owned();
        Some(browser)
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> serde_json::Value {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let (status, text) = http_sized(&self.addr, method, path, &body).await;
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        assert!(status < 300, "{method} {path}: {status} {text}");
        v["value"].clone()
    }

    async fn session(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> serde_json::Value {
        self.call(method, &format!("/session/{}{path}", self.session), body)
            .await
    }

    /// The elements matching `css` now.
    async fn find_all(&self, css: &str) -> Vec<String> {
        let v = self
            .session(
                "POST",
                "/elements",
                Some(serde_json::json!({"using": "css selector", "value": css})),
            )
            .await;
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| e[ELEMENT].as_str().unwrap().to_owned())
            .collect()
    }

    /// The first element matching `css`, waiting for it.
    async fn find(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(e) = self.find_all(css).await.into_iter().next() {
                return e;
            }
            assert!(Instant::now() < deadline, "no element {css}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the text of the first element matching `css` satisfies `want`. The page
    /// re-renders as it loads, so a vanished (stale) element just means "not yet".
    async fn wait_text(&self, css: &str, want: impl Fn(&str) -> bool, what: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last = String::new();
        loop {
            if let Some(e) = self.find_all(css).await.into_iter().next() {
                let path = format!("/session/{}/element/{e}/text", self.session);
                let (status, body) = http_sized(&self.addr, "GET", &path, "").await;
                if status == 200 {
                    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                    last = v["value"].as_str().unwrap_or_default().to_owned();
                    if want(&last) {
                        return last;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "waited for {what}; {css} says {last:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css).await;
        self.session(
            "POST",
            &format!("/element/{e}/value"),
            Some(serde_json::json!({"text": text})),
        )
        .await;
    }

    async fn click(&self, css: &str) {
        let e = self.find(css).await;
        self.session(
            "POST",
            &format!("/element/{e}/click"),
            Some(serde_json::json!({})),
        )
        .await;
    }

    async fn screenshot(&self, name: &str) -> std::path::PathBuf {
        let b64 = self.session("GET", "/screenshot", None).await;
        let png = base64_decode(b64.as_str().unwrap());
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target")
            .join("screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, png).unwrap();
        path
    }
}

/// One HTTP/1.1 JSON request that reads exactly `Content-Length` bytes of answer
/// (chromedriver keeps connections open).
async fn http_sized(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "connection closed before the answer was complete");
        raw.extend_from_slice(&buf[..n]);
        let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&raw[..end]).to_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        if raw.len() >= end + 4 + len {
            let status = head[9..12].parse().unwrap();
            return (
                status,
                String::from_utf8_lossy(&raw[end + 4..end + 4 + len]).into_owned(),
            );
        }
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64"),
    };
    let bytes: Vec<u8> = s
        .bytes()
        .filter(|c| *c != b'=' && !c.is_ascii_whitespace())
        .collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= u32::from(value(c)) << (18 - 6 * i);
        }
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

#[tokio::test]
async fn the_dashboard_in_a_real_browser() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    // Lifetimes for the create form to show, and webhooks to a receiver that is not
    // there, so that the deliveries list has pending events to show.
    let nowhere = format!("http://127.0.0.1:{}/hooks", free_port());
    let server = start_sqlite(&[
        ("DEFAULT_KEY_TTL", "90d"),
        ("MAX_KEY_TTL", "365d"),
        ("WEBHOOK_URL", &nowhere),
        ("WEBHOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
    ]);
    let admin_key = server.admin_key.clone().unwrap();
    browser
        .session(
            "POST",
            "/url",
            Some(serde_json::json!({"url": format!("http://{}/admin/", server.addr)})),
        )
        .await;
    // Before signing in, only the sign-in form shows.
    let app = browser.find("#app").await;
    let shown = browser
        .session("GET", &format!("/element/{app}/displayed"), None)
        .await;
    assert_eq!(
        shown,
        serde_json::json!(false),
        "the app is hidden until sign-in"
    );
    browser.type_into("#admin-key", &admin_key).await;
    browser.click("#sign-in").await;
    browser.find("#keys tr[data-id]").await; // the admin key itself is listed

    browser.type_into("#new-consumer", "acme").await;
    browser.type_into("#new-name", "from the browser").await;
    browser.type_into("#new-scopes", "orders:read").await;
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

    // The key works, and the table lists it as active.
    let bearer = format!("Bearer {secret}");
    assert_eq!(
        http(
            &server.addr,
            "GET",
            "/v1/whoami",
            &[("authorization", bearer.as_str())],
            ""
        )
        .await
        .0,
        200
    );
    let admin = format!("Bearer {admin_key}");
    let id = first_key_id(&server.addr, &admin, "acme").await;
    let row = format!("#keys tr[data-id=\"{id}\"]");
    browser
        .wait_text(&format!("{row} .status"), |t| t == "active", "the new row")
        .await;
    browser.screenshot("dashboard-1280x800.png").await;

    // Revoke it through the page (confirming the dialog): its status changes, and the
    // key is refused.
    browser.click(&format!("{row} .revoke")).await;
    browser
        .session("POST", "/alert/accept", Some(serde_json::json!({})))
        .await;
    browser
        .wait_text(
            &format!("{row} .status"),
            |t| t == "revoked",
            "the revoked status",
        )
        .await;
    assert_eq!(
        http(
            &server.addr,
            "GET",
            "/v1/whoami",
            &[("authorization", bearer.as_str())],
            ""
        )
        .await
        .0,
        401
    );

    // Rotate another key through the page: a new secret shows, and the details of the
    // old key show its usage and a "rotated" audit entry.
    browser.click("#dismiss").await;
    let admin_id = first_key_id(&server.addr, &admin, "admin").await;
    let admin_row = format!("#keys tr[data-id=\"{admin_id}\"]");
    browser.click(&format!("{admin_row} .rotate")).await;
    browser
        .wait_text(
            "#secret-value",
            |t| t.starts_with("sk_live_") && t != secret,
            "the rotated key",
        )
        .await;
    browser.click(&format!("{admin_row} button")).await; // "Details"
    browser
        .wait_text(
            "#details-usage",
            |t| t.contains("requests"),
            "the usage line",
        )
        .await;
    browser
        .wait_text(
            "#details-audit",
            |t| t.contains("rotated"),
            "the rotated entry",
        )
        .await;
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
    browser
        .wait_text(
            "#details-networks",
            |t| t == "Allowed from: anywhere",
            "the admin key's networks",
        )
        .await;
    // The key made through the form carries the networks typed into it.
    let (_, listed) = http(
        &server.addr,
        "GET",
        "/admin/keys?consumer=acme",
        &[("authorization", admin.as_str())],
        "",
    )
    .await;
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(
        listed[0]["allowed_ips"],
        serde_json::json!(["127.0.0.0/8", "2001:db8::/32"]),
        "{listed}"
    );

    // With the one-time secret dismissed: the picture for the README.
    browser.click("#dismiss").await;
    let shown = browser
        .session(
            "GET",
            &format!("/element/{}/displayed", browser.find("#secret").await),
            None,
        )
        .await;
    assert_eq!(
        shown,
        serde_json::json!(false),
        "the secret panel hides when dismissed"
    );
    browser.screenshot("dashboard-keys-1280x800.png").await;
    browser
        .session(
            "POST",
            "/window/rect",
            Some(serde_json::json!({"width": 390, "height": 844})),
        )
        .await;
    let phone = browser.screenshot("dashboard-phone.png").await;
    assert!(std::fs::metadata(phone).unwrap().len() > 1000);
    browser.session("DELETE", "", None).await;
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
