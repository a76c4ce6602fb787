//! Several instances of the example server on one store, and the store failing: the
//! change feed (a change made through one instance reaches the others' caches), its
//! replay after a lost listener, stale serving through an outage, and the deadline on a
//! hanging store. Black-box, over loopback, with the built example binary.
//!
//! The PostgreSQL tests need `TEST_POSTGRES_URL` (a superuser, trust auth); without it
//! they say they skipped, unless `TOWER_API_KEY_REQUIRE_SERVICES=1`. The outage and hang
//! tests start private clusters of their own; the shared server is never stopped.
//!
//! `postgres_stopped_under_load` takes `SCALEOUT_OUTAGE_SECS` (default 5) and
//! `SCALEOUT_STALE` (`CACHE_STALE`, default `8s`). With a window over a minute it checks
//! the whole outage and does not wait for the window to end: the 10-minute variant is
//! `SCALEOUT_OUTAGE_SECS=590 SCALEOUT_STALE=10m cargo test --features full --test
//! scaleout postgres_stopped_under_load -- --nocapture`.
#![cfg(all(
    unix,
    feature = "axum",
    feature = "sqlite",
    feature = "postgres",
    feature = "redis",
    feature = "admin"
))]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tower_api_key::KeyStore;
use tower_api_key::store::{NewKey, PostgresStore};

#[path = "common/pg.rs"]
mod pg;
#[path = "common/server.rs"]
mod server;
#[path = "common/unique.rs"]
mod unique;

use pg::{Cluster, FreshDb};
use server::{Answer, Client, Server, TempDb};

/// No test here is about rate limits.
const NO_LIMIT: (&str, &str) = ("RATE_LIMIT", "1000000/1s");
/// Keys revoked one by one in the propagation measurements.
const REVOCATIONS: usize = 30;
/// The propagation bound the tests hold the change feed to.
const BOUND: Duration = Duration::from_secs(1);

/// The admin API of one server, with its admin key.
struct Admin {
    client: Client,
    key: String,
}

impl Admin {
    fn of(server: &Server) -> Self {
        Self {
            client: Client::new(&server.addr),
            key: server
                .admin_key
                .clone()
                .expect("a fresh database gets an admin key"),
        }
    }

    async fn call(&mut self, method: &str, path: &str, body: Option<&Value>) -> Answer {
        self.client.send(method, path, Some(&self.key), body).await
    }

    /// A new key: its id and secret.
    async fn create(&mut self, consumer: &str, scopes: &[&str]) -> (String, String) {
        let body = json!({"consumer": consumer, "name": consumer, "scopes": scopes});
        let created = self.call("POST", "/admin/keys", Some(&body)).await;
        assert_eq!(created.status, 201, "{}", created.body);
        let created = created.json();
        (
            created["id"].as_str().unwrap().to_owned(),
            created["key"].as_str().unwrap().to_owned(),
        )
    }

    async fn revoke(&mut self, id: &str) {
        let revoked = self
            .call("DELETE", &format!("/admin/keys/{id}"), None)
            .await;
        assert_eq!(revoked.status, 204, "{}", revoked.body);
    }
}

/// Waits until the server of `on` has applied every change made so far through
/// `admin` (creates included: applying one drops that key from the cache, so a key
/// warmed before its create is applied would not stay cached). A sentinel key is warmed
/// there and revoked; the log is applied in order, so its refusal means every earlier
/// change was applied too.
async fn settle(admin: &mut Admin, on: &mut Client) {
    let (id, key) = admin.create("sentinel", &[]).await;
    assert_eq!(on.get("/v1/whoami", Some(&key)).await.status, 200);
    admin.revoke(&id).await;
    let every = Duration::from_millis(5);
    let applied = poll_status(
        on,
        "/v1/whoami",
        Some(&key),
        401,
        Instant::now(),
        BOUND * 5,
        every,
    );
    if let Err(last) = applied.await {
        panic!("a revoked sentinel key still answers {}", last.status);
    }
}

/// Waits until `on`'s server has applied, from the change log, every change made so far,
/// when the changes were made through that same server (whose own cache then knows of
/// them at once, so that a sentinel revoked through it would prove nothing). A sentinel
/// is created and revoked straight in the store, through `store`; a refusal seen within
/// `ttl` of its first load (so not a refresh on expiry) came from applying its create or
/// its revocation, which follow every earlier change in the log.
async fn settle_from_store(store: &PostgresStore, on: &mut Client, ttl: Duration) {
    let deadline = Instant::now() + BOUND * 10;
    while Instant::now() < deadline {
        let created = store.create(NewKey::new("sentinel"), "test").await.unwrap();
        let key = created.key.expose_secret().to_owned();
        let loaded_at = Instant::now();
        assert_eq!(on.get("/v1/whoami", Some(&key)).await.status, 200);
        store.revoke(&created.record.id, "test").await.unwrap();
        let every = Duration::from_millis(5);
        let refused = poll_status(on, "/v1/whoami", Some(&key), 401, loaded_at, ttl * 2, every);
        if refused.await.is_ok_and(|took| took < ttl) {
            return;
        }
    }
    panic!("the server does not apply its change log");
}

/// Polls `GET path` with `key` every `every` until it answers `want`; the time from
/// `since` to that answer, or the last answer if `within` (from `since`) passed first.
async fn poll_status(
    client: &mut Client,
    path: &str,
    key: Option<&str>,
    want: u16,
    since: Instant,
    within: Duration,
    every: Duration,
) -> Result<Duration, Answer> {
    loop {
        let answer = client.get(path, key).await;
        if answer.status == want {
            return Ok(since.elapsed());
        }
        if since.elapsed() > within {
            return Err(answer);
        }
        tokio::time::sleep(every).await;
    }
}

/// Polls `/readyz` until its `field` reads `want`; the last answer if `within` passes.
async fn poll_ready(
    client: &mut Client,
    field: &str,
    want: &str,
    within: Duration,
) -> Result<Answer, Answer> {
    let deadline = Instant::now() + within;
    loop {
        let answer = client.get("/readyz", None).await;
        if answer.json()[field] == want {
            return Ok(answer);
        }
        if Instant::now() > deadline {
            return Err(answer);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Creates `REVOCATIONS` keys through `a`, warms each on `b`, then revokes them through
/// `a` one at a time and measures how long until `b` refuses each (from `a`'s 204).
/// Prints p50/p99/max; asserts every one is within `BOUND`.
async fn measure_revocations(label: &str, a: &Server, b: &Server) {
    let mut admin = Admin::of(a);
    let mut on_b = Client::new(&b.addr);
    // B follows the feed (and, with PostgreSQL, is subscribed) before anything changes.
    if let Err(last) = poll_ready(&mut on_b, "changes", "ok", Duration::from_secs(10)).await {
        panic!("B's change feed is not ok: {}", last.body);
    }
    let mut keys = Vec::new();
    for i in 0..REVOCATIONS {
        keys.push(admin.create(&format!("revoked-{i}"), &[]).await);
    }
    settle(&mut admin, &mut on_b).await;
    for (_, key) in &keys {
        let warm = on_b.get("/v1/whoami", Some(key)).await;
        assert_eq!(warm.status, 200, "warming on B: {}", warm.body);
    }
    let mut latencies = Vec::new();
    for (id, key) in &keys {
        admin.revoke(id).await;
        let revoked_at = Instant::now();
        // Polled past the bound, so that a slow one is measured rather than cut off.
        let within = BOUND * 5;
        let every = Duration::from_millis(2);
        match poll_status(
            &mut on_b,
            "/v1/whoami",
            Some(key),
            401,
            revoked_at,
            within,
            every,
        )
        .await
        {
            Ok(latency) => latencies.push(latency),
            Err(last) => panic!(
                "B still answers {} for key {id} {within:?} after its revocation on A",
                last.status
            ),
        }
    }
    latencies.sort();
    let (p50, p99, max) = (
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        *latencies.last().unwrap(),
    );
    eprintln!(
        "{label}: revocation on A → 401 on B over {} keys: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        latencies.len(),
        ms(p50),
        ms(p99),
        ms(max)
    );
    assert!(
        max < BOUND,
        "{label}: a revocation took {max:?} to reach B (bound {BOUND:?}); all: {latencies:?}"
    );
}

/// Two servers on one database, with a long TTL: only the change feed can make one
/// forget a key the other changed.
fn two_servers(db_url: &str) -> (Server, Server) {
    let env = [("DATABASE_URL", db_url), ("CACHE_TTL", "10m"), NO_LIMIT];
    let a = server::start(&env);
    let b = server::start(&env);
    assert_eq!(
        b.admin_key, None,
        "the second server finds the first's admin key"
    );
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_on_one_postgres_instance_reaches_the_other() {
    let Some(url) = pg::test_url() else { return };
    let db = FreshDb::new(&url, "scaleout_feed").await;
    let (a, b) = two_servers(&db.url());
    measure_revocations("postgres", &a, &b).await;

    let mut admin = Admin::of(&a);
    let mut on_b = Client::new(&b.addr);

    // A rotation with no grace: B refuses the old key and takes the new one.
    let (id, old) = admin.create("rotated", &[]).await;
    settle(&mut admin, &mut on_b).await;
    assert_eq!(on_b.get("/v1/whoami", Some(&old)).await.status, 200);
    let rotated = admin
        .call(
            "POST",
            &format!("/admin/keys/{id}/rotate"),
            Some(&json!({"grace_seconds": 0})),
        )
        .await;
    assert_eq!(rotated.status, 201, "{}", rotated.body);
    let rotated_at = Instant::now();
    let new = rotated.json()["key"].as_str().unwrap().to_owned();
    assert_ne!(new, old, "the rotation issued a new key");
    let every = Duration::from_millis(2);
    let refused = poll_status(
        &mut on_b,
        "/v1/whoami",
        Some(&old),
        401,
        rotated_at,
        BOUND,
        every,
    )
    .await;
    let refused = refused.unwrap_or_else(|last| {
        panic!(
            "B answers {} for the rotated-out key after {BOUND:?}",
            last.status
        )
    });
    let accepted = poll_status(
        &mut on_b,
        "/v1/whoami",
        Some(&new),
        200,
        rotated_at,
        BOUND,
        every,
    )
    .await;
    let accepted = accepted.unwrap_or_else(|last| {
        panic!(
            "B answers {} for the new key after {BOUND:?}: {}",
            last.status, last.body
        )
    });
    eprintln!(
        "postgres: rotation on A → old key 401 on B after {:.1} ms, new key 200 after {:.1} ms",
        ms(refused),
        ms(accepted)
    );

    // New scopes through A reach B's cached record.
    let (id, key) = admin.create("rescoped", &["orders:write"]).await;
    settle(&mut admin, &mut on_b).await;
    let before = on_b.get("/v1/orders", Some(&key)).await;
    assert_eq!(before.status, 403, "{}", before.body);
    let patched = admin
        .call(
            "PATCH",
            &format!("/admin/keys/{id}"),
            Some(&json!({"scopes": ["orders:read"]})),
        )
        .await;
    assert_eq!(patched.status, 200, "{}", patched.body);
    assert_eq!(patched.json()["scopes"], json!(["orders:read"]));
    let patched_at = Instant::now();
    let granted = poll_status(
        &mut on_b,
        "/v1/orders",
        Some(&key),
        200,
        patched_at,
        BOUND,
        every,
    )
    .await;
    let granted = granted.unwrap_or_else(|last| {
        panic!(
            "B answers {} on /v1/orders after {BOUND:?}: {}",
            last.status, last.body
        )
    });
    eprintln!(
        "postgres: new scopes on A → 200 on B after {:.1} ms",
        ms(granted)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_on_one_sqlite_file_reaches_the_other() {
    let file = TempDb::new("scaleout");
    // Polling at the default 250 ms.
    let (a, b) = two_servers(&file.url());
    measure_revocations("sqlite", &a, &b).await;
}

/// A login role of the test's own; its sessions ended and the role dropped on drop.
struct Role {
    server: String,
    name: String,
}

impl Drop for Role {
    fn drop(&mut self) {
        let server = self.server.clone();
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async {
                    pg::query_i64(
                        &server,
                        &format!(
                            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                             WHERE usename = '{name}'"
                        ),
                    )
                    .await;
                    pg::execute(&server, &format!("DROP ROLE IF EXISTS \"{name}\"")).await;
                })
        })
        .join();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_made_while_the_listener_is_down_is_applied_after_it_reconnects() {
    let Some(url) = pg::test_url() else { return };
    // Dropped last: after the servers and the database.
    let role = Role {
        server: url.clone(),
        name: pg::unique_name("role"),
    };
    pg::execute(
        &url,
        &format!("CREATE ROLE \"{}\" LOGIN SUPERUSER", role.name),
    )
    .await;
    let db = FreshDb::new(&url, "scaleout_replay").await;
    let a_url = db.url();
    let b_url = pg::with_user(&a_url, &role.name);
    let a = server::start(&[("DATABASE_URL", a_url.as_str()), NO_LIMIT]);
    // Polling once an hour: while the listener is down, nothing but its replay can tell
    // B of a change.
    let b = server::start(&[
        ("DATABASE_URL", b_url.as_str()),
        ("CHANGES_POLL", "1h"),
        ("CACHE_TTL", "10m"),
        NO_LIMIT,
    ]);
    let mut admin = Admin::of(&a);
    let mut on_b = Client::new(&b.addr);
    if let Err(last) = poll_ready(&mut on_b, "changes", "ok", Duration::from_secs(10)).await {
        panic!("B's change feed is not ok: {}", last.body);
    }
    let (id, key) = admin.create("replayed", &[]).await;
    settle(&mut admin, &mut on_b).await;
    assert_eq!(on_b.get("/v1/whoami", Some(&key)).await.status, 200);

    // B's listener is cut, and cannot come back while the role may not log in.
    pg::execute(&url, &format!("ALTER ROLE \"{}\" NOLOGIN", role.name)).await;
    let killed = pg::query_i64(
        &url,
        &format!(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) AS done \
             FROM pg_stat_activity WHERE usename = '{}' \
             AND application_name = 'tower-api-key-changes') t WHERE done",
            role.name
        ),
    )
    .await;
    assert_eq!(killed, 1, "B's one listener connection was terminated");
    let lagging = poll_ready(&mut on_b, "changes", "lagging", Duration::from_secs(5)).await;
    let lagging = lagging.unwrap_or_else(|last| {
        panic!(
            "B's /readyz does not say lagging: {} {}",
            last.status, last.body
        )
    });
    assert_eq!(
        lagging.status, 200,
        "lagging is still ready: {}",
        lagging.body
    );

    admin.revoke(&id).await;
    // B cannot know yet: its listener is down and it polls once an hour.
    for _ in 0..5 {
        let answer = on_b.get("/v1/whoami", Some(&key)).await;
        assert_eq!(
            answer.status, 200,
            "B learnt of the revocation without its listener: the test proves nothing"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    pg::execute(&url, &format!("ALTER ROLE \"{}\" LOGIN", role.name)).await;
    let allowed_at = Instant::now();
    let within = Duration::from_secs(6);
    let every = Duration::from_millis(10);
    let refused = poll_status(
        &mut on_b,
        "/v1/whoami",
        Some(&key),
        401,
        allowed_at,
        within,
        every,
    )
    .await
    .unwrap_or_else(|last| {
        panic!(
            "B still answers {} {within:?} after its role may log in again",
            last.status
        )
    });
    let left = within.saturating_sub(allowed_at.elapsed());
    if let Err(last) = poll_ready(&mut on_b, "changes", "ok", left).await {
        panic!("B's change feed is not ok again: {}", last.body);
    }
    eprintln!(
        "replay: login allowed again → revocation applied on B after {:.0} ms",
        ms(refused)
    );
}

/// A duration written like `250ms`, `2s`, `10m`, `1h`.
fn parse_duration(text: &str) -> Duration {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (n, unit) = text.split_at(split);
    let n: u64 = n
        .parse()
        .unwrap_or_else(|_| panic!("not a duration: {text}"));
    match unit {
        "ms" => Duration::from_millis(n),
        "s" | "" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => panic!("not a duration: {text}"),
    }
}

/// Loops requesting `/v1/whoami` with one key until stopped, counting the statuses.
struct Load {
    stop: Arc<AtomicBool>,
    counts: Arc<Mutex<BTreeMap<u16, u64>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(addr: &str, key: &str, loops: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Mutex::new(BTreeMap::new()));
        let tasks = (0..loops)
            .map(|_| {
                let (stop, counts) = (Arc::clone(&stop), Arc::clone(&counts));
                let (mut client, key) = (Client::new(addr), key.to_owned());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let status = client.get("/v1/whoami", Some(&key)).await.status;
                        *counts.lock().unwrap().entry(status).or_insert(0) += 1;
                        // Leaves the two cores some room for the server and the store.
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                })
            })
            .collect();
        Self {
            stop,
            counts,
            tasks,
        }
    }

    fn counts(&self) -> BTreeMap<u16, u64> {
        self.counts.lock().unwrap().clone()
    }

    async fn finish(mut self) -> BTreeMap<u16, u64> {
        self.stop.store(true, Ordering::Relaxed);
        for task in std::mem::take(&mut self.tasks) {
            task.await.expect("a load loop panicked");
        }
        self.counts()
    }
}

impl Drop for Load {
    /// On a panic, before the server is killed: no loop is left to fail on it.
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Counts of `now` not yet in `before`.
fn since(before: &BTreeMap<u16, u64>, now: &BTreeMap<u16, u64>) -> BTreeMap<u16, u64> {
    now.iter()
        .map(|(s, n)| (*s, n - before.get(s).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_stopped_under_load() {
    if pg::test_url().is_none() {
        return;
    }
    let outage = Duration::from_secs(
        std::env::var("SCALEOUT_OUTAGE_SECS")
            .map_or(5, |s| s.parse().expect("SCALEOUT_OUTAGE_SECS")),
    );
    let stale_text = std::env::var("SCALEOUT_STALE").unwrap_or_else(|_| "8s".to_owned());
    let stale = parse_duration(&stale_text);
    let (ttl, timeout) = (Duration::from_secs(1), Duration::from_secs(1));
    assert!(
        outage + ttl < stale,
        "SCALEOUT_OUTAGE_SECS must end well inside SCALEOUT_STALE"
    );
    // Past a minute, waiting for the window to end is left out.
    let wait_for_the_end = stale <= Duration::from_secs(60);

    let cluster = tokio::task::block_in_place(Cluster::start);
    let url = cluster.url();
    let server = server::start(&[
        ("DATABASE_URL", url.as_str()),
        ("CACHE_TTL", "1s"),
        ("CACHE_STALE", stale_text.as_str()),
        ("STORE_TIMEOUT", "1s"),
        NO_LIMIT,
    ]);
    let mut admin = Admin::of(&server);
    let mut client = Client::new(&server.addr);
    if let Err(last) = poll_ready(&mut client, "changes", "ok", Duration::from_secs(10)).await {
        panic!("the change feed is not ok: {}", last.body);
    }
    let (_, in_use) = admin.create("in-use", &[]).await;
    let (revoked_id, revoked) = admin.create("revoked", &[]).await;
    let (_, unseen) = admin.create("unseen", &[]).await;
    assert_eq!(client.get("/v1/whoami", Some(&in_use)).await.status, 200);
    assert_eq!(client.get("/v1/whoami", Some(&revoked)).await.status, 200);
    admin.revoke(&revoked_id).await;
    let seen = poll_status(
        &mut client,
        "/v1/whoami",
        Some(&revoked),
        401,
        Instant::now(),
        BOUND,
        Duration::from_millis(10),
    )
    .await;
    assert!(seen.is_ok(), "the revoked key is refused before the outage");
    // Its revocation, when applied from the change log, drops it from the cache: seen
    // again after that, it is cached as revoked with nothing pending.
    let store = PostgresStore::connect(&url).await.unwrap();
    settle_from_store(&store, &mut client, ttl).await;
    store.pool().close().await;
    assert_eq!(client.get("/v1/whoami", Some(&revoked)).await.status, 401);

    let load = Load::start(&server.addr, &in_use, 8);
    // Some load before the outage.
    while load.counts().values().sum::<u64>() < 200 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let at_stop = load.counts();
    let stopped_at = Instant::now();
    tokio::task::block_in_place(|| cluster.stop());
    eprintln!(
        "outage: PostgreSQL stopped in {:.0} ms",
        ms(stopped_at.elapsed())
    );

    // The outage, well past the TTL: the key in use is served, the revoked one stays
    // refused, an unseen one is unavailable (never refused), and readiness says so.
    let mut checks = 0;
    while stopped_at.elapsed() < outage {
        let answer = client.get("/v1/whoami", Some(&in_use)).await;
        assert_eq!(
            answer.status,
            200,
            "in use, {:?} into the outage: {}",
            stopped_at.elapsed(),
            answer.body
        );
        let answer = client.get("/v1/whoami", Some(&revoked)).await;
        assert_eq!(
            answer.status,
            401,
            "revoked, {:?} into the outage: {}",
            stopped_at.elapsed(),
            answer.body
        );
        let answer = client.get("/v1/whoami", Some(&unseen)).await;
        assert_eq!(
            answer.status,
            503,
            "unseen, {:?} into the outage: {}",
            stopped_at.elapsed(),
            answer.body
        );
        assert!(
            answer.header("retry-after").is_some(),
            "503 without Retry-After"
        );
        // Its store probe is reused for a second and may take the 1 s timeout.
        if stopped_at.elapsed() > Duration::from_millis(2500) {
            let ready = client.get("/readyz", None).await;
            assert_eq!(ready.status, 503, "{}", ready.body);
            assert_eq!(ready.json()["store"], "down", "{}", ready.body);
            // No read of the log for 3 s (plus the 1 s read timeout): the feed is down.
            if stopped_at.elapsed() > Duration::from_millis(4500) {
                assert_eq!(ready.json()["changes"], "down", "{}", ready.body);
            }
        }
        checks += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(checks > 0);
    let in_outage = since(&at_stop, &load.counts());
    eprintln!(
        "outage: load on the key in use, first {outage:?} of the outage: {in_outage:?} \
         (before it: {at_stop:?})"
    );
    assert_eq!(
        at_stop.keys().collect::<Vec<_>>(),
        [&200],
        "before the outage: {at_stop:?}"
    );
    assert_eq!(
        in_outage.keys().collect::<Vec<_>>(),
        [&200],
        "in the outage: {in_outage:?}"
    );

    if wait_for_the_end {
        // The stale window ends: from then on the key in use is unavailable (503, never
        // 401), within the window + TTL + timeout and some slack.
        let bound = stale + ttl + timeout + Duration::from_secs(10);
        let every = Duration::from_millis(50);
        let ended = poll_status(
            &mut client,
            "/v1/whoami",
            Some(&in_use),
            503,
            stopped_at,
            bound,
            every,
        )
        .await
        .unwrap_or_else(|last| {
            panic!(
                "in use still answers {} {bound:?} into the outage",
                last.status
            )
        });
        eprintln!(
            "outage: the key in use answers 503 {:.1} s into the outage (window {stale:?})",
            ended.as_secs_f64()
        );
        let answer = client.get("/v1/whoami", Some(&in_use)).await;
        assert_eq!(answer.status, 503, "{}", answer.body);
        assert!(
            answer.header("retry-after").is_some(),
            "503 without Retry-After"
        );
    } else {
        eprintln!("outage: a window of {stale:?}: not waiting for it to end");
    }
    let whole_outage = since(&at_stop, &load.counts());
    assert_eq!(
        whole_outage.get(&401),
        None,
        "no 401 in the outage: {whole_outage:?}"
    );

    tokio::task::block_in_place(|| cluster.start_again());
    let up_at = Instant::now();
    let within = Duration::from_secs(30);
    let every = Duration::from_millis(50);
    let ready = poll_status(&mut client, "/readyz", None, 200, up_at, within, every).await;
    if let Err(last) = ready {
        panic!(
            "/readyz after PostgreSQL is back: {} {}",
            last.status, last.body
        );
    }
    eprintln!(
        "outage: ready {:.1} s after PostgreSQL started again",
        up_at.elapsed().as_secs_f64()
    );
    // No restart of the server: both keys are served again.
    for (name, key) in [("in use", &in_use), ("unseen", &unseen)] {
        let back = poll_status(
            &mut client,
            "/v1/whoami",
            Some(key),
            200,
            Instant::now(),
            BOUND * 5,
            every,
        )
        .await;
        if let Err(last) = back {
            panic!(
                "{name} after the store is back: {} {}",
                last.status, last.body
            );
        }
    }
    let revoked_after = client.get("/v1/whoami", Some(&revoked)).await;
    assert_eq!(revoked_after.status, 401, "{}", revoked_after.body);
    let total = load.finish().await;
    eprintln!("outage: load on the key in use, whole run: {total:?}");
    assert_eq!(
        total.get(&401),
        None,
        "no 401 for the key in use: {total:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_store_answers_503_within_the_deadline() {
    if pg::test_url().is_none() {
        return;
    }
    let cluster = tokio::task::block_in_place(Cluster::start);
    let url = cluster.url();
    let timeout = Duration::from_secs(1);
    let server = server::start(&[
        ("DATABASE_URL", url.as_str()),
        ("STORE_TIMEOUT", "1s"),
        NO_LIMIT,
    ]);
    let mut admin = Admin::of(&server);
    let mut client = Client::new(&server.addr);
    let (_, unseen) = admin.create("unseen", &[]).await;

    tokio::task::block_in_place(|| cluster.freeze());
    let bound = timeout + Duration::from_secs(2);
    let asked_at = Instant::now();
    let answer = client.get("/v1/whoami", Some(&unseen)).await;
    let took = asked_at.elapsed();
    eprintln!(
        "hang: an unseen key answered {} after {:.0} ms",
        answer.status,
        ms(took)
    );
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert!(
        answer.header("retry-after").is_some(),
        "503 without Retry-After"
    );
    assert!(took <= bound, "answered after {took:?}, bound {bound:?}");
    let asked_at = Instant::now();
    let ready = client.get("/readyz", None).await;
    let took = asked_at.elapsed();
    eprintln!(
        "hang: /readyz answered {} after {:.0} ms",
        ready.status,
        ms(took)
    );
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert_eq!(ready.json()["store"], "down", "{}", ready.body);
    assert!(
        took <= bound,
        "/readyz answered after {took:?}, bound {bound:?}"
    );

    tokio::task::block_in_place(|| cluster.thaw());
    let thawed_at = Instant::now();
    let within = Duration::from_secs(30);
    let every = Duration::from_millis(50);
    let back = poll_status(
        &mut client,
        "/v1/whoami",
        Some(&unseen),
        200,
        thawed_at,
        within,
        every,
    )
    .await
    .unwrap_or_else(|last| panic!("unseen after the thaw: {} {}", last.status, last.body));
    eprintln!("hang: unseen key served {:.0} ms after the thaw", ms(back));
}
