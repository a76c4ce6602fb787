//! PostgreSQL for tests: the shared server of `TEST_POSTGRES_URL` (a fresh database per
//! test), and private clusters a test may stop, start again, freeze and thaw.
#![allow(dead_code)] // each test crate uses part of it

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, Executor};

// The including test crate declares `#[path = "common/unique.rs"] mod unique;` once:
// server.rs uses it too, and a crate including both may not load it twice.
pub(crate) use crate::unique::unique_name;

/// `TEST_POSTGRES_URL`; without it, says the test is skipped and returns `None`, unless
/// `TOWER_API_KEY_REQUIRE_SERVICES=1`, which makes a missing server a failure.
pub(crate) fn test_url() -> Option<String> {
    match std::env::var("TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var("TOWER_API_KEY_REQUIRE_SERVICES").as_deref() != Ok("1"),
                "TEST_POSTGRES_URL is not set and TOWER_API_KEY_REQUIRE_SERVICES=1 requires PostgreSQL"
            );
            eprintln!("skipped: TEST_POSTGRES_URL is not set");
            None
        }
    }
}

/// `url` with its database replaced by `db`.
pub(crate) fn with_database(url: &str, db: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a postgres:// URL");
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let query = tail.find('?').map_or("", |at| &tail[at..]);
    format!("{scheme}://{authority}/{db}{query}")
}

/// `url` with its user (and password) replaced by `user`, no password.
pub(crate) fn with_user(url: &str, user: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a postgres:// URL");
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    format!("{scheme}://{user}@{host}{}", &rest[authority_end..])
}

/// Runs `sql` on the server of `url`, on a connection of its own.
pub(crate) async fn execute(url: &str, sql: &str) -> u64 {
    let mut conn = PgConnectOptions::from_str(url)
        .unwrap()
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to PostgreSQL: {e}"));
    let done = conn
        .execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    conn.close().await.unwrap();
    done.rows_affected()
}

/// The one number `sql` answers (e.g. a `count(*)`), on a connection of its own.
pub(crate) async fn query_i64(url: &str, sql: &str) -> i64 {
    let mut conn = PgConnectOptions::from_str(url)
        .unwrap()
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to PostgreSQL: {e}"));
    let n: i64 = sqlx::query_scalar(sql)
        .fetch_one(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    conn.close().await.unwrap();
    n
}

/// A fresh database on the shared server; dropped (with `FORCE`) when this is dropped,
/// also on a panic.
pub(crate) struct FreshDb {
    server: String,
    pub(crate) name: String,
}

impl FreshDb {
    pub(crate) async fn new(server: &str, label: &str) -> Self {
        let name = unique_name(label);
        execute(server, &format!("CREATE DATABASE \"{name}\"")).await;
        Self {
            server: server.to_owned(),
            name,
        }
    }

    /// The URL of this database, as the server's user.
    pub(crate) fn url(&self) -> String {
        with_database(&self.server, &self.name)
    }

    /// The connection options of this database, as the server's user.
    pub(crate) fn options(&self) -> PgConnectOptions {
        PgConnectOptions::from_str(&self.url()).expect("a postgres:// URL")
    }
}

impl Drop for FreshDb {
    fn drop(&mut self) {
        let server = self.server.clone();
        let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        // Drop may run on a runtime's thread: a thread and a runtime of its own.
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(execute(&server, &sql));
        })
        .join();
        if dropped.is_err() && !std::thread::panicking() {
            panic!("could not drop database {}", self.name);
        }
    }
}

/// A PostgreSQL cluster of the test's own, in a temporary directory, on a free loopback
/// port (run as the `postgres` user when the test runs as root). Dropping it thaws,
/// stops and removes it.
pub(crate) struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    pub(crate) port: u16,
    /// `listen_addresses`.
    listen: &'static str,
}

/// The newest installed server's bin directory (a client-only install has no initdb).
fn bin_dir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed under /usr/lib/postgresql")
        .filter_map(Result::ok)
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .expect("no initdb under /usr/lib/postgresql/*/bin")
        .1
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// Runs `script` with sh, as `postgres` when this is root; true when it succeeded.
fn as_postgres(script: &str) -> bool {
    let mut command = if is_root() {
        let mut c = Command::new("su");
        c.args(["postgres", "-s", "/bin/sh", "-c", script]);
        c
    } else {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        c
    };
    // No pipes: the postmaster outlives the command and must not hold one open.
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn signal(pid: &str, sig: &str) {
    let _ = Command::new("kill")
        .args([sig, pid])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

impl Cluster {
    /// initdb and start.
    pub(crate) fn start() -> Self {
        let cluster = Self::init("-A trust");
        cluster.start_again();
        cluster
    }

    /// initdb, then start with `ssl = on` and this certificate and key (PEM), listening
    /// on 127.0.0.1 and 127.0.0.2 and accepting only TLS connections on TCP: as
    /// `postgres` with `password` (SCRAM), or as `cert_user` with a client certificate
    /// (of that common name) signed by `ca_pem`.
    pub(crate) fn start_tls(
        cert_pem: &str,
        key_pem: &str,
        ca_pem: &str,
        password: &str,
        cert_user: &str,
    ) -> Self {
        let mut probe = Self::init_dir();
        probe.listen = "127.0.0.1,127.0.0.2";
        let pwfile = probe.dir.join("pwfile");
        std::fs::write(&pwfile, format!("{password}\n")).unwrap();
        let cluster = probe.initdb(&format!(
            "--auth-local=trust --auth-host=scram-sha-256 --pwfile='{}'",
            pwfile.display()
        ));
        let _ = std::fs::remove_file(&pwfile);
        let data = cluster.data();
        std::fs::write(data.join("server.crt"), cert_pem).unwrap();
        std::fs::write(data.join("ca.crt"), ca_pem).unwrap();
        std::fs::write(data.join("server.key"), key_pem).unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(
                data.join("server.key"),
                std::fs::Permissions::from_mode(0o600),
            )
            .unwrap();
        }
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .unwrap();
        std::io::Write::write_all(
            &mut conf,
            b"\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\nssl_ca_file = 'ca.crt'\n",
        )
        .unwrap();
        std::fs::write(
            data.join("pg_hba.conf"),
            format!(
                "local all all trust\n\
                 hostssl all {cert_user} 127.0.0.0/8 cert\n\
                 hostssl all all 127.0.0.0/8 scram-sha-256\n"
            ),
        )
        .unwrap();
        cluster.chown();
        cluster.start_again();
        let role = format!(
            "{}/psql -h '{}' -p {} -U postgres -d postgres -qc 'CREATE ROLE {cert_user} LOGIN SUPERUSER' >>'{}/psql.log' 2>&1",
            cluster.bin.display(),
            cluster.dir.display(),
            cluster.port,
            cluster.dir.display()
        );
        assert!(
            as_postgres(&role),
            "CREATE ROLE: {}",
            cluster.log("psql.log")
        );
        cluster
    }

    fn init(auth: &str) -> Self {
        Self::init_dir().initdb(auth)
    }

    /// A directory and a port for a cluster, not made yet.
    fn init_dir() -> Self {
        let dir = std::env::temp_dir().join(unique_name("pg"));
        std::fs::create_dir_all(&dir).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self {
            dir,
            bin: bin_dir(),
            port,
            listen: "127.0.0.1",
        }
    }

    /// Gives the cluster's directory to `postgres`, when this is root.
    fn chown(&self) {
        if is_root() {
            let chown = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(&self.dir)
                .status()
                .unwrap();
            assert!(chown.success(), "chown the cluster's directory");
        }
    }

    fn initdb(self, auth: &str) -> Self {
        self.chown();
        let initdb = format!(
            "{}/initdb -D '{}' -U postgres {auth} --no-sync >'{}/initdb.log' 2>&1",
            self.bin.display(),
            self.data().display(),
            self.dir.display()
        );
        assert!(
            as_postgres(&initdb),
            "initdb failed: {}",
            self.log("initdb.log")
        );
        self
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }

    /// A superuser's URL of the `postgres` database.
    pub(crate) fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn pg_ctl(&self, args: &str) -> bool {
        as_postgres(&format!(
            "{}/pg_ctl -D '{}' -l '{}/log' -w -t 60 {args} >>'{}/pg_ctl.log' 2>&1",
            self.bin.display(),
            self.data().display(),
            self.dir.display(),
            self.dir.display()
        ))
    }

    /// Starts it (again) on the same data directory and port.
    pub(crate) fn start_again(&self) {
        let options = format!(
            "-o \"-p {} -c listen_addresses={} -k '{}' -c fsync=off\"",
            self.port,
            self.listen,
            self.dir.display()
        );
        assert!(
            self.pg_ctl(&format!("{options} start")),
            "pg_ctl start failed: {}{}",
            self.log("pg_ctl.log"),
            self.log("log")
        );
    }

    /// A fast shutdown: sessions are ended, the port refuses connections.
    pub(crate) fn stop(&self) {
        assert!(
            self.pg_ctl("-m fast stop"),
            "pg_ctl stop failed: {}",
            self.log("pg_ctl.log")
        );
    }

    /// The postmaster, then every process it started.
    fn processes(&self) -> Vec<String> {
        let pidfile =
            std::fs::read_to_string(self.data().join("postmaster.pid")).unwrap_or_default();
        let Some(postmaster) = pidfile.lines().next().filter(|p| !p.is_empty()) else {
            return Vec::new();
        };
        let children = Command::new("pgrep")
            .args(["-P", postmaster])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        std::iter::once(postmaster.to_owned())
            .chain(children.split_whitespace().map(str::to_owned))
            .collect()
    }

    /// SIGSTOP to every process of the cluster: connections stay open, nothing answers.
    pub(crate) fn freeze(&self) {
        let processes = self.processes();
        assert!(!processes.is_empty(), "the cluster is not running");
        for pid in &processes {
            signal(pid, "-STOP");
        }
    }

    /// SIGCONT to every process of the cluster.
    pub(crate) fn thaw(&self) {
        for pid in self.processes() {
            signal(&pid, "-CONT");
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.thaw();
        if self.data().join("postmaster.pid").exists() {
            self.pg_ctl("-m immediate stop");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
