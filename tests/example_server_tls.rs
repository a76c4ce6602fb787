//! The example server on managed-style services: PostgreSQL with `ssl = on` and
//! `sslmode=verify-full`, Redis on `--tls-port` through `rediss://` and `REDIS_CA_FILE`,
//! both with passwords and a CA the test makes; end to end, and a wrong CA for either
//! stops the start with one line naming the variable, never the password. Also Redis
//! Cluster through `REDIS_CLUSTER_URLS`.
//!
//! Needs PostgreSQL's server binaries and redis-server (see the other TLS tests).
#![cfg(all(
    unix,
    feature = "axum",
    feature = "sqlite",
    feature = "postgres",
    feature = "redis",
    feature = "admin"
))]

#[path = "common/redis.rs"]
mod common_redis;
#[path = "common/redis_cluster.rs"]
mod common_redis_cluster;
#[path = "common/pg.rs"]
mod pg;
#[path = "common/server.rs"]
mod server;
#[path = "common/tls.rs"]
mod tls;
#[path = "common/unique.rs"]
mod unique;

use common_redis::OwnRedis;
use common_redis_cluster::OwnCluster;
use pg::Cluster;
use server::{Client, refuses_to_start, start, start_sqlite};
use tls::{CLIENT_NAME, Pki};

const PG_PASSWORD: &str = "pg-pw-8c1f";
const REDIS_PASSWORD: &str = "redis-pw-4e2a";

struct Services {
    pki: Pki,
    pg: Cluster,
    redis: OwnRedis,
}

fn services(label: &str) -> Option<Services> {
    pg::test_url()?;
    let pki = Pki::new(label);
    let pg = Cluster::start_tls(
        &pki.server_cert_pem,
        &pki.server_key_pem,
        &pki.ca_pem,
        PG_PASSWORD,
        CLIENT_NAME,
    );
    let redis = OwnRedis::start_tls(
        &pki.path("server.pem"),
        &pki.path("server.key"),
        &pki.ca(),
        false,
        Some(REDIS_PASSWORD),
    )?;
    Some(Services { pki, pg, redis })
}

impl Services {
    fn database_url(&self, ca: &std::path::Path) -> String {
        format!(
            "postgres://postgres:{PG_PASSWORD}@127.0.0.1:{}/postgres?sslmode=verify-full&sslrootcert={}",
            self.pg.port,
            ca.display()
        )
    }

    fn redis_url(&self) -> String {
        format!(
            "rediss://:{REDIS_PASSWORD}@127.0.0.1:{}/",
            self.redis.port()
        )
    }
}

/// Makes a key with `scopes` through the admin API.
async fn create_key(client: &mut Client, admin: &str) -> String {
    let body = serde_json::json!({"consumer": "acme", "name": "tls", "scopes": ["orders:read"]});
    let created = client
        .send("POST", "/admin/keys", Some(admin), Some(&body))
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    created.json()["key"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_postgres_and_rediss_end_to_end() {
    let Some(s) = tokio::task::block_in_place(|| services("e2e")) else {
        return;
    };
    let (database_url, redis_url, ca) = (s.database_url(&s.pki.ca()), s.redis_url(), s.pki.ca());
    let server = start(&[
        ("DATABASE_URL", &database_url),
        ("REDIS_URL", &redis_url),
        ("REDIS_CA_FILE", ca.to_str().unwrap()),
        ("REDIS_MODE", "exact"),
        ("RATE_LIMIT", "3/60s"),
    ]);
    let admin = server
        .admin_key
        .clone()
        .expect("a new database: an admin key");
    let mut client = Client::new(&server.addr);
    let ready = client.get("/readyz", None).await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert_eq!(ready.json()["redis"], "ok", "{}", ready.body);
    assert_eq!(ready.json()["store"], "ok", "{}", ready.body);
    let key = create_key(&mut client, &admin).await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(client.get("/v1/whoami", Some(&key)).await.status);
    }
    assert_eq!(statuses, [200, 200, 200, 429]);
    let stderr = server.stderr().join("\n");
    assert!(
        stderr.contains("rate limits: shared through Redis"),
        "{stderr}"
    );
    assert!(
        !stderr.contains(PG_PASSWORD) && !stderr.contains(REDIS_PASSWORD),
        "{stderr}"
    );
}

/// The error line of a refused start: one line, naming `var`, with neither password.
fn assert_refusal(stderr: &str, var: &str, expect: &str) {
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("Error")).collect();
    assert_eq!(lines.len(), 1, "one error line: {stderr}");
    assert!(lines[0].contains(&format!("{var}: ")), "{stderr}");
    assert!(lines[0].contains(expect), "{stderr}");
    assert!(
        !stderr.contains(PG_PASSWORD) && !stderr.contains(REDIS_PASSWORD),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_stops_the_start_with_one_line_naming_the_variable() {
    let Some(s) = tokio::task::block_in_place(|| services("wrong-ca")) else {
        return;
    };
    let (good, bad) = (
        s.database_url(&s.pki.ca()),
        s.database_url(&s.pki.other_ca()),
    );
    let redis_url = s.redis_url();
    let (ca, other) = (s.pki.ca(), s.pki.other_ca());
    let stderr = tokio::task::block_in_place(|| refuses_to_start(&[("DATABASE_URL", &bad)]));
    assert_refusal(&stderr, "DATABASE_URL", "UnknownIssuer");
    let stderr = tokio::task::block_in_place(|| {
        refuses_to_start(&[
            ("DATABASE_URL", &good),
            ("REDIS_URL", &redis_url),
            ("REDIS_CA_FILE", other.to_str().unwrap()),
        ])
    });
    assert_refusal(&stderr, "REDIS_URL", "TLS with Redis failed");
    // The system's roots do not know the test's CA.
    let stderr = tokio::task::block_in_place(|| {
        refuses_to_start(&[("DATABASE_URL", &good), ("REDIS_URL", &redis_url)])
    });
    assert_refusal(&stderr, "REDIS_URL", "UnknownIssuer");
    // A missing CA file, half a client certificate: said before anything connects.
    let stderr = tokio::task::block_in_place(|| {
        refuses_to_start(&[
            ("REDIS_URL", &redis_url),
            ("REDIS_CA_FILE", "/nonexistent/ca.pem"),
        ])
    });
    assert_refusal(
        &stderr,
        "REDIS_URL",
        "cannot read the Redis CA file /nonexistent/ca.pem",
    );
    let stderr = tokio::task::block_in_place(|| {
        refuses_to_start(&[
            ("REDIS_URL", &redis_url),
            ("REDIS_CA_FILE", ca.to_str().unwrap()),
            ("REDIS_CLIENT_CERT", "/some/client.pem"),
        ])
    });
    assert!(
        stderr.contains("REDIS_CLIENT_CERT and REDIS_CLIENT_KEY together"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_urls() {
    let Some(cluster) = tokio::task::block_in_place(OwnCluster::start) else {
        return;
    };
    // A comma list of seed nodes (one is enough: the others are learned from it).
    let urls = format!("{}, {}", cluster.url(1), cluster.url(2));
    let server = start_sqlite(&[
        ("REDIS_CLUSTER_URLS", &urls),
        ("REDIS_MODE", "exact"),
        ("RATE_LIMIT", "2/60s"),
    ]);
    let admin = server.admin_key.clone().unwrap();
    let mut client = Client::new(&server.addr);
    assert_eq!(client.get("/readyz", None).await.json()["redis"], "ok");
    let key = create_key(&mut client, &admin).await;
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(client.get("/v1/whoami", Some(&key)).await.status);
    }
    assert_eq!(statuses, [200, 200, 429]);
    let stderr = tokio::task::block_in_place(|| {
        refuses_to_start(&[
            ("REDIS_URL", &cluster.url(0)),
            ("REDIS_CLUSTER_URLS", &urls),
        ])
    });
    assert!(stderr.contains("not both"), "{stderr}");
}
