//! Two example-server processes sharing one Redis in the batched mode (the default):
//! with demand at twice a key's limit for several windows, together they never allow
//! more than one exact limiter would, and at least 95 % of it. Black-box, over loopback,
//! with the built example binary and the Redis at `TEST_REDIS_URL` (without it the test
//! says it skipped, unless `TOWER_API_KEY_REQUIRE_SERVICES=1`).
#![cfg(all(
    unix,
    feature = "axum",
    feature = "sqlite",
    feature = "redis",
    feature = "admin"
))]

use std::time::{Duration, Instant};

use serde_json::json;
use tower_api_key::ratelimit::{Limit, gcra};

#[path = "common/server.rs"]
mod server;
#[path = "common/unique.rs"]
mod unique;

use server::{Client, TempDb};

fn redis_url() -> Option<String> {
    match std::env::var("TEST_REDIS_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var("TOWER_API_KEY_REQUIRE_SERVICES").as_deref() != Ok("1"),
                "TEST_REDIS_URL is not set and TOWER_API_KEY_REQUIRE_SERVICES=1 requires Redis"
            );
            eprintln!("skipped: TEST_REDIS_URL is not set");
            None
        }
    }
}

/// The key's limit: 100 a second, 100 at once (an interval of 10 ms).
const RATE: u64 = 100;
const BURST: u64 = 100;
const INTERVAL: Duration = Duration::from_millis(10);
const WINDOWS: u64 = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_at_twice_the_limit_allow_at_most_the_limit_and_nearly_all_of_it() {
    let Some(redis) = redis_url() else { return };
    let db = TempDb::new("batched");
    let env = [("REDIS_URL", redis.as_str())];
    let a = server::start_on(&db.0, &env);
    let b = server::start_on(&db.0, &env);
    for s in [&a, &b] {
        let log = s.stderr().join("\n");
        assert!(log.contains("shared through Redis (Batched mode)"), "{log}");
    }
    let admin_key = a.admin_key.clone().unwrap();
    let mut admin = Client::new(&a.addr);
    let body = json!({"consumer": "acme", "name": "hot", "scopes": [],
        "rate_limit": {"requests": RATE, "per_seconds": 1, "burst": BURST}});
    let created = admin
        .send("POST", "/admin/keys", Some(&admin_key), Some(&body))
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let key = created.json()["key"].as_str().unwrap().to_owned();
    let mut clients = [Client::new(&a.addr), Client::new(&b.addr)];
    // Both connections are open before the clock starts.
    for c in &mut clients {
        let r = c.get("/healthz", None).await;
        assert_eq!(r.status, 200);
    }

    // Twice the rate, alternating between the servers, for WINDOWS seconds.
    let gap = INTERVAL / 2;
    let requests = (WINDOWS * 1_000_000 / gap.as_micros() as u64) as usize;
    let start = Instant::now();
    let mut tick = tokio::time::interval_at(start.into(), gap);
    // (sent, answered, allowed) per request, in the order sent: one at a time, so each
    // was decided after the one before it was answered.
    let mut seen = Vec::with_capacity(requests);
    let mut by_server = [0u64; 2];
    for i in 0..requests {
        tick.tick().await;
        let sent = start.elapsed();
        let r = clients[i % 2].get("/v1/whoami", Some(&key)).await;
        assert!(
            r.status == 200 || r.status == 429,
            "{} {}",
            r.status,
            r.body
        );
        let allowed = r.status == 200;
        by_server[i % 2] += u64::from(allowed);
        seen.push((sent, start.elapsed(), allowed));
    }

    // Never over: the n-th allowed request was decided after n − 1 others and before it
    // was answered, so n ≤ burst + (answered − first sent) / interval, as for one exact
    // limiter (plus one for the microsecond the intervals are rounded to).
    let first = seen[0].0;
    let mut n = 0u64;
    for &(_, answered, allowed) in &seen {
        if allowed {
            n += 1;
            let bound = BURST + ((answered - first).as_micros() / INTERVAL.as_micros()) as u64 + 1;
            assert!(n <= bound, "{n} allowed by {answered:?}, more than {bound}");
        }
    }
    // Nearly all of it: per window of a second (by the time sent), at least 95 % of what
    // one exact limiter allows when it sees the same requests at the times they were sent.
    // Replaying the real send times keeps this a check of the limiter, not of the
    // machine: a stall that sends fewer requests in a window lowers both counts alike.
    let limit = Limit::Rate {
        requests: RATE as u32,
        per: Duration::from_secs(1),
        burst: BURST as u32,
    };
    let mut windows = vec![0u64; WINDOWS as usize];
    let mut exact = vec![0u64; WINDOWS as usize];
    let mut state = 0;
    for &(sent, _, allowed) in &seen {
        let w = (sent.as_secs() as usize).min(windows.len() - 1);
        windows[w] += u64::from(allowed);
        // Nanoseconds on a clock far from zero, as the stores' clock is.
        let now = 1_800_000_000_000_000_000 + sent.as_nanos() as u64;
        let outcome = gcra::check(&limit, state, now, 1);
        if outcome.allowed {
            state = outcome.state;
            exact[w] += 1;
        }
    }
    eprintln!(
        "allowed per window: {windows:?} (one exact limiter: {exact:?}); by server: \
         {by_server:?}; in all {n} of {requests}"
    );
    for (w, (&allowed, &exact)) in windows.iter().zip(&exact).enumerate() {
        assert!(
            allowed * 100 >= exact * 95,
            "window {w}: {allowed} allowed, under 95 % of the exact limiter's {exact} \
             ({windows:?})"
        );
    }
    // Both servers decided: neither merely passed the other's refusals along.
    assert!(by_server.iter().all(|&n| n > RATE / 2), "{by_server:?}");
}
