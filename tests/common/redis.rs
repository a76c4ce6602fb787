//! Redis for the tests: the server at `TEST_REDIS_URL`, a `redis-server` of a test's own
//! (on a free port, stopped and started again at will), key prefixes that never meet,
//! polling with a deadline, and a small deterministic generator.
#![allow(dead_code)] // each test crate uses part of it

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub(crate) fn require_services() -> bool {
    std::env::var("TOWER_API_KEY_REQUIRE_SERVICES").as_deref() == Ok("1")
}

pub(crate) fn redis_url() -> Option<String> {
    match std::env::var("TEST_REDIS_URL") {
        Ok(url) if !url.is_empty() => {
            // A store would quietly limit locally without Redis: fail loudly instead.
            let mut conn = redis::Client::open(url.as_str())
                .and_then(|c| c.get_connection())
                .unwrap_or_else(|e| panic!("TEST_REDIS_URL is set but Redis does not answer: {e}"));
            let pong: String = redis::cmd("PING").query(&mut conn).unwrap();
            assert_eq!(pong, "PONG");
            Some(url)
        }
        _ => {
            assert!(
                !require_services(),
                "TEST_REDIS_URL is not set and TOWER_API_KEY_REQUIRE_SERVICES=1 requires Redis"
            );
            eprintln!("skipped: TEST_REDIS_URL is not set");
            None
        }
    }
}

/// A key prefix of this test's own: pid, a counter and the time, so that tests sharing
/// the server (in parallel, or in other runs) never meet.
pub(crate) fn unique_prefix(label: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("test:{label}:{}:{n}:{nanos}:", std::process::id())
}

/// A small deterministic generator, so that a failure can be replayed from its seed.
pub(crate) struct XorShift(pub(crate) u64);

impl XorShift {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Polls `check` until `done` holds, for at most 20 s.
pub(crate) async fn poll_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A port nothing listens on.
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) struct OwnRedis {
    port: u16,
    child: Option<Child>,
    /// The TLS options, for a server that speaks only TLS on `port`.
    tls: Vec<String>,
}

/// Is `redis-server` on the PATH? Without it, says the test is skipped (`false`), unless
/// `TOWER_API_KEY_REQUIRE_SERVICES=1`, which makes it a failure.
pub(crate) fn redis_server_found() -> bool {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok();
    if !found {
        assert!(
            !require_services(),
            "redis-server is not on the PATH and TOWER_API_KEY_REQUIRE_SERVICES=1 requires it"
        );
        eprintln!("skipped: redis-server is not on the PATH");
        return false;
    }
    true
}

impl OwnRedis {
    pub(crate) fn start() -> Option<Self> {
        if !redis_server_found() {
            return None;
        }
        let mut redis = Self {
            port: free_port(),
            child: None,
            tls: Vec::new(),
        };
        redis.restart();
        Some(redis)
    }

    /// A server that speaks only TLS, with this certificate and key (PEM files), trusting
    /// client certificates of `ca`; `client_certs`: whether it asks for one; and a
    /// password, when given.
    pub(crate) fn start_tls(
        cert: &std::path::Path,
        key: &std::path::Path,
        ca: &std::path::Path,
        client_certs: bool,
        password: Option<&str>,
    ) -> Option<Self> {
        if !redis_server_found() {
            return None;
        }
        let mut tls: Vec<String> = [
            "--tls-cert-file",
            &cert.display().to_string(),
            "--tls-key-file",
            &key.display().to_string(),
            "--tls-ca-cert-file",
            &ca.display().to_string(),
            "--tls-auth-clients",
            if client_certs { "yes" } else { "no" },
        ]
        .map(str::to_owned)
        .to_vec();
        if let Some(password) = password {
            tls.extend(["--requirepass".to_owned(), password.to_owned()]);
        }
        let mut redis = Self {
            port: free_port(),
            child: None,
            tls,
        };
        redis.restart();
        Some(redis)
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub(crate) fn restart(&mut self) {
        let port = self.port.to_string();
        let ports: Vec<&str> = if self.tls.is_empty() {
            vec!["--port", &port]
        } else {
            vec!["--port", "0", "--tls-port", &port]
        };
        let child = Command::new("redis-server")
            .args(ports)
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(&self.tls)
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        if !self.tls.is_empty() {
            // Accepting connections on its TLS port: ready (what speaks TLS to it is the
            // test's business).
            while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "redis-server (TLS) did not start"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            return;
        }
        let client = redis::Client::open(self.url()).unwrap();
        loop {
            if let Ok(mut c) = client.get_connection()
                && redis::cmd("PING").query::<String>(&mut c).is_ok()
            {
                return;
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Script runs the server has counted (`EVALSHA` and `EVAL`, less the calls that
    /// failed: the `NOSCRIPT` answer before a script is loaded).
    pub(crate) fn script_runs(&self) -> u64 {
        let mut conn = redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .unwrap();
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut conn)
            .unwrap();
        let field = |stats: &str, name: &str| -> u64 {
            stats
                .split(',')
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                .map_or(0, |v| v.parse().unwrap())
        };
        info.lines()
            .filter_map(|line| {
                line.strip_prefix("cmdstat_evalsha:")
                    .or_else(|| line.strip_prefix("cmdstat_eval:"))
            })
            .map(|stats| field(stats, "calls") - field(stats, "failed_calls"))
            .sum()
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}
