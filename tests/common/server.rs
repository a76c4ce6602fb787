//! Driving the built example servers (`examples/server.rs`, and the gRPC one,
//! `examples/grpc_server.rs`) over real TCP: start one on a free loopback port (killed on
//! drop), on a given store or a SQLite file of its own, or see it refuse to start; and a
//! small keep-alive HTTP/1.1 client.
#![allow(dead_code)] // each test crate uses part of it

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader as AsyncBufReader};
use tokio::net::TcpStream;

// The including test crate declares `#[path = "common/unique.rs"] mod unique;` (see pg.rs).
use crate::unique::unique_name;

/// Which example server.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Example {
    /// `examples/server.rs`, the HTTP one.
    Http,
    /// `examples/grpc_server.rs`.
    Grpc,
}

impl Example {
    fn name(self) -> &'static str {
        match self {
            Self::Http => "server",
            Self::Grpc => "grpc_server",
        }
    }

    /// The variable that names another binary to drive.
    fn binary_var(self) -> &'static str {
        match self {
            Self::Http => "TOWER_API_KEY_EXAMPLE_SERVER",
            Self::Grpc => "TOWER_API_KEY_EXAMPLE_GRPC_SERVER",
        }
    }

    /// The variable of the address it listens on.
    fn bind_var(self) -> &'static str {
        match self {
            Self::Http => "BIND",
            Self::Grpc => "GRPC_BIND",
        }
    }

    /// target/<profile>/examples/<name>, next to this test's target/<profile>/deps; or
    /// the binary its variable names, when set (a copy kept apart from a target
    /// directory that other checkouts build into).
    pub(crate) fn binary(self) -> PathBuf {
        if let Some(path) = std::env::var_os(self.binary_var()) {
            return PathBuf::from(path);
        }
        let mut path = std::env::current_exe().unwrap();
        path.pop();
        path.pop();
        path.push("examples");
        path.push(self.name());
        assert!(
            path.exists(),
            "{} is missing: build it with `cargo build --features full --example {}` \
             (or run the tests with `cargo test`, which builds examples)",
            path.display(),
            self.name()
        );
        path
    }
}

/// The HTTP example server's binary: see [`Example::binary`].
pub(crate) fn example_binary() -> PathBuf {
    Example::Http.binary()
}

/// A running example server; killed when dropped. While a test panics, its stderr is
/// printed (stdout is not kept: it carries the admin key).
pub(crate) struct Server {
    child: Child,
    pub(crate) addr: String,
    /// Printed only by a start that found no active admin key.
    pub(crate) admin_key: Option<String>,
    log: Arc<Mutex<Vec<String>>>,
    /// The database, when this server owns it (removed after the server is killed).
    _db: Option<TempDb>,
}

/// A SQLite database file (and its WAL) in the temporary directory, removed when dropped.
pub(crate) struct TempDb(pub(crate) PathBuf);

impl TempDb {
    pub(crate) fn new(label: &str) -> Self {
        Self(std::env::temp_dir().join(format!("{}.db", unique_name(label))))
    }

    /// Its `sqlite://` URL, for `DATABASE_URL`.
    pub(crate) fn url(&self) -> String {
        format!("sqlite://{}", self.0.display())
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut p = self.0.as_os_str().to_owned();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
            eprintln!("--- stderr of the server on {} ---", self.addr);
            for line in log.iter() {
                eprintln!("{line}");
            }
        }
    }
}

/// The variables of the server's contract that the test does not give are unset, so
/// that the developer's environment does not leak in.
const CONTRACT_VARS: [&str; 20] = [
    "BIND",
    "GRPC_BIND",
    "DATABASE_URL",
    "WEBHOOK_URL",
    "WEBHOOK_SECRET",
    "KEY_EXPIRING_NOTICE",
    "FAILURE_LIMIT",
    "REDIS_URL",
    "REDIS_MODE",
    "REDIS_CLUSTER_URLS",
    "REDIS_CA_FILE",
    "REDIS_CLIENT_CERT",
    "REDIS_CLIENT_KEY",
    "RATE_LIMIT",
    "CACHE_TTL",
    "CACHE_STALE",
    "STORE_TIMEOUT",
    "CHANGES_POLL",
    "HEADER_TIMEOUT",
    "REQUEST_TIMEOUT",
];

/// The example server on a free loopback port with `env` and no other variable of the
/// contract.
fn command(example: Example, env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(example.binary());
    for var in CONTRACT_VARS {
        command.env_remove(var);
    }
    command
        .env(example.bind_var(), "127.0.0.1:0")
        .envs(env.iter().copied())
        .stdin(Stdio::null());
    command
}

/// `env` with `DATABASE_URL` set to `url` first (so that `env` may still name another).
fn with_database<'a>(url: &'a str, env: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    std::iter::once(("DATABASE_URL", url))
        .chain(env.iter().copied())
        .collect()
}

/// Starts the example server on the SQLite file `db` with `env`.
pub(crate) fn start_on(db: &Path, env: &[(&str, &str)]) -> Server {
    let url = format!("sqlite://{}", db.display());
    start(&with_database(&url, env))
}

/// Starts the example server with `env` on a SQLite file of its own, removed with it.
pub(crate) fn start_sqlite(env: &[(&str, &str)]) -> Server {
    let db = TempDb::new("server");
    let mut server = start(&with_database(&db.url(), env));
    server._db = Some(db);
    server
}

/// Starts the example server with `env` on a SQLite file of its own, expects it to
/// refuse to start, and returns what it wrote on stderr.
pub(crate) fn refuses_to_start(env: &[(&str, &str)]) -> String {
    let db = TempDb::new("refused");
    let mut child = command(Example::Http, &with_database(&db.url(), env))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_with_deadline(&mut child, Duration::from_secs(20));
    assert!(!status.success(), "started with {env:?}");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    stderr
}

/// Waits for `child` to exit; kills it and fails the test past `limit`.
fn wait_with_deadline(child: &mut Child, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("the server did not exit within {limit:?} (stale example binary?)");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Server {
    /// Sends SIGTERM and waits for a clean exit.
    pub(crate) fn stop(mut self) {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let status = wait_with_deadline(&mut self.child, Duration::from_secs(20));
        assert!(status.success(), "{status:?}");
    }
}

/// Starts the example server with `env` (which should name `DATABASE_URL`) and waits
/// until it listens.
pub(crate) fn start(env: &[(&str, &str)]) -> Server {
    start_example(Example::Http, env)
}

/// Starts the gRPC example server with `env` (which should name `DATABASE_URL`) and
/// waits until it listens.
pub(crate) fn start_grpc(env: &[(&str, &str)]) -> Server {
    start_example(Example::Grpc, env)
}

/// Starts `example` with `env` and waits until it listens.
pub(crate) fn start_example(example: Example, env: &[(&str, &str)]) -> Server {
    let mut child = command(example, env)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    let stdout_tx = tx.clone();
    // Both pipes are read to the end, so that the server never blocks on a full one.
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = stdout_tx.send(line);
        }
    });
    let stderr_log = Arc::clone(&log);
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            stderr_log
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(line.clone());
            let _ = tx.send(line);
        }
    });
    let mut server = Server {
        child,
        addr: String::new(),
        admin_key: None,
        log,
        _db: None,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    // The admin key, if any, is printed on stdout before the "listening on" line, and
    // one thread reads stdout, so it has arrived by the time that line has.
    while server.addr.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = rx.recv_timeout(left) else {
            panic!("the server did not start within 30 s");
        };
        if let Some(k) = line.strip_prefix("admin key: ") {
            server.admin_key = Some(k.to_owned());
        }
        if let Some(a) = line.strip_prefix("listening on http://") {
            server.addr = a.to_owned();
        }
    }
    server
}

impl Server {
    /// The server's process id, to read its memory and open files from `/proc`.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the server has written on stderr so far.
    pub(crate) fn stderr(&self) -> Vec<String> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// One answer: status, headers (names in lower case) and body.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: String,
}

impl Answer {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// An HTTP/1.1 client of one server, over one keep-alive connection (made again when
/// the server closes it), so that tight polling loops do not use up loopback ports.
pub(crate) struct Client {
    addr: String,
    conn: Option<AsyncBufReader<TcpStream>>,
}

impl Client {
    pub(crate) fn new(addr: &str) -> Self {
        Self {
            addr: addr.to_owned(),
            conn: None,
        }
    }

    /// `GET path` with `key` (if any) as a bearer token.
    pub(crate) async fn get(&mut self, path: &str, key: Option<&str>) -> Answer {
        self.send("GET", path, key, None).await
    }

    /// One request; `body` is sent as JSON. Panics if no answer arrives within 30 s.
    pub(crate) async fn send(
        &mut self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<&serde_json::Value>,
    ) -> Answer {
        let mut req = format!("{method} {path} HTTP/1.1\r\nhost: {}\r\n", self.addr);
        if let Some(key) = key {
            req.push_str(&format!("authorization: Bearer {key}\r\n"));
        }
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        if !body.is_empty() {
            req.push_str("content-type: application/json\r\n");
        }
        req.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
        let attempt = async {
            // A kept connection may have been closed by the server meanwhile: then
            // once more on a new one.
            if self.conn.is_some() {
                match self.exchange(&req).await {
                    Ok(answer) => return answer,
                    Err(_) => self.conn = None,
                }
            }
            self.exchange(&req)
                .await
                .unwrap_or_else(|e| panic!("{method} {path} on {}: {e}", self.addr))
        };
        match tokio::time::timeout(Duration::from_secs(30), attempt).await {
            Ok(answer) => answer,
            Err(_) => panic!("{method} {path} on {}: no answer within 30 s", self.addr),
        }
    }

    async fn exchange(&mut self, req: &str) -> std::io::Result<Answer> {
        if self.conn.is_none() {
            let stream = TcpStream::connect(&self.addr).await?;
            stream.set_nodelay(true)?;
            self.conn = Some(AsyncBufReader::new(stream));
        }
        let conn = self.conn.as_mut().unwrap();
        conn.get_mut().write_all(req.as_bytes()).await?;
        let mut line = String::new();
        if conn.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let status = line
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let mut headers = Vec::new();
        loop {
            line.clear();
            if conn.read_line(&mut line).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
            }
        }
        let find = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v): &(String, String)| v.to_ascii_lowercase())
        };
        let mut body = Vec::new();
        let mut keep = find("connection").as_deref() != Some("close");
        if status == 204 || status == 304 || (100..200).contains(&status) {
            // No body.
        } else if let Some(n) = find("content-length") {
            let n: usize = n.parse().map_err(std::io::Error::other)?;
            body.resize(n, 0);
            conn.read_exact(&mut body).await?;
        } else if find("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
            loop {
                line.clear();
                conn.read_line(&mut line).await?;
                let size = line.trim().split(';').next().unwrap_or("");
                let n = usize::from_str_radix(size, 16).map_err(std::io::Error::other)?;
                if n == 0 {
                    // Trailers, if any, up to an empty line.
                    loop {
                        line.clear();
                        if conn.read_line(&mut line).await? == 0 || line.trim().is_empty() {
                            break;
                        }
                    }
                    break;
                }
                let at = body.len();
                body.resize(at + n + 2, 0);
                conn.read_exact(&mut body[at..]).await?;
                body.truncate(at + n);
            }
        } else {
            conn.read_to_end(&mut body).await?;
            keep = false;
        }
        if !keep {
            self.conn = None;
        }
        Ok(Answer {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}
