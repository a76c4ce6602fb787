//! How a [`RedisRateLimitStore`] reaches Redis: one server (`redis://`, or `rediss://`
//! for TLS) or a Redis Cluster, with the TLS settings of [`RedisStoreBuilder`].

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{ClientTlsConfig, ConnectionAddr, TlsCertificates};
use zeroize::Zeroizing;

use super::RedisRateLimitStore;
use super::store::RateLimitStoreError;

/// Configures how a [`RedisRateLimitStore`] connects: TLS roots and client certificates,
/// one server or a cluster. From [`RedisRateLimitStore::builder`] or
/// [`RedisRateLimitStore::cluster_builder`].
///
/// A `rediss://` URL verifies the server's certificate against the system's root
/// certificates (the platform's store, as `rustls-native-certs` reads it) and its name
/// against the URL's host. [`ca_file`](Self::ca_file) replaces the system's roots by the
/// CA certificates of a file, for a provider that signs with a CA of its own;
/// [`client_cert_files`](Self::client_cert_files) presents a client certificate (mutual
/// TLS). Certificate checks are turned off only by the URL's `#insecure` fragment
/// (`rediss://host:6380/#insecure`, as redis-rs and `redis-cli --insecure` spell it),
/// which the store says in a warning when it is made: for throwaway test servers, never
/// for production.
///
/// ```no_run
/// use tower_api_key::ratelimit::RedisRateLimitStore;
///
/// # fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let store = RedisRateLimitStore::builder("rediss://default:secret@redis.example.com:6380/")
///     .ca_file("/etc/ssl/redis/ca.pem")
///     .client_cert_files("/etc/ssl/redis/client.pem", "/etc/ssl/redis/client.key")
///     .build()?;
/// # let _ = store; Ok(()) }
/// ```
pub struct RedisStoreBuilder {
    nodes: Vec<Zeroizing<String>>,
    cluster: bool,
    ca: Option<Pem>,
    client: Option<(Pem, Pem)>,
}

/// PEM text, or the file that holds it.
enum Pem {
    File(PathBuf),
    Text(Zeroizing<Vec<u8>>),
}

impl Pem {
    fn read(&self, what: &str) -> Result<Zeroizing<Vec<u8>>, RedisConfigError> {
        match self {
            Self::Text(text) => Ok(text.clone()),
            Self::File(path) => std::fs::read(path).map(Zeroizing::new).map_err(|e| {
                RedisConfigError(format!("cannot read the {what} {}: {e}", path.display()))
            }),
        }
    }
}

impl fmt::Debug for RedisStoreBuilder {
    // The URLs may hold a password and the client key is secret: neither is shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field("nodes", &self.nodes.len())
            .field("cluster", &self.cluster)
            .field("ca", &self.ca.is_some())
            .field("client_cert", &self.client.is_some())
            .finish()
    }
}

/// A Redis configuration that cannot be used: a URL that does not parse, a certificate
/// file that cannot be read. It never repeats a URL, which may hold a password, nor a
/// key.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RedisConfigError(String);

impl RedisConfigError {
    pub(super) fn new(message: String) -> Self {
        Self(message)
    }
}

/// Why [`RedisRateLimitStore::ping`] failed: Redis did not answer, or it answered and
/// the configuration is wrong (its certificate is not trusted, the credentials are
/// refused), which waiting will not mend.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct RedisPingError {
    message: String,
    misconfigured: bool,
    #[source]
    source: Option<redis::RedisError>,
}

impl RedisPingError {
    /// Did Redis (or something on its port) answer and refuse this configuration: a TLS
    /// handshake that failed (a certificate not signed by a trusted CA, a name that does
    /// not match, a client certificate refused), or
    /// credentials refused? Otherwise Redis did not answer (down, unreachable, slow),
    /// which may pass.
    pub fn is_misconfigured(&self) -> bool {
        self.misconfigured
    }

    pub(super) fn timeout(timeout: Duration) -> Self {
        Self {
            message: format!("no answer from Redis within {timeout:?}"),
            misconfigured: false,
            source: None,
        }
    }

    pub(super) fn other(message: String) -> Self {
        Self {
            message,
            misconfigured: false,
            source: None,
        }
    }

    pub(super) fn of(error: redis::RedisError) -> Self {
        let (message, misconfigured) = if is_tls_failure(&error) {
            (format!("TLS with Redis failed: {error}"), true)
        } else if is_auth_failure(&error) {
            (format!("Redis refused the credentials: {error}"), true)
        } else {
            (format!("Redis does not answer: {error}"), false)
        };
        Self {
            message,
            misconfigured,
            source: Some(error),
        }
    }
}

impl From<RedisPingError> for RateLimitStoreError {
    fn from(e: RedisPingError) -> Self {
        RateLimitStoreError(Box::new(e))
    }
}

/// A rustls error anywhere in the chain (redis-rs keeps the I/O error of a failed
/// handshake behind an `Arc`; the I/O error holds rustls's).
fn is_tls_failure(error: &redis::RedisError) -> bool {
    fn tls_in(e: &(dyn std::error::Error + 'static)) -> bool {
        if e.is::<rustls::Error>() {
            return true;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return io.get_ref().is_some_and(|inner| tls_in(inner));
        }
        if let Some(arc) = e.downcast_ref::<std::sync::Arc<dyn std::error::Error + Send + Sync>>() {
            return tls_in(&**arc);
        }
        e.source().is_some_and(tls_in)
    }
    std::error::Error::source(error).is_some_and(tls_in)
}

fn is_auth_failure(error: &redis::RedisError) -> bool {
    error.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(error.code(), Some("WRONGPASS" | "NOAUTH" | "NOPERM"))
}

impl RedisStoreBuilder {
    pub(super) fn new(nodes: Vec<Zeroizing<String>>, cluster: bool) -> Self {
        Self {
            nodes,
            cluster,
            ca: None,
            client: None,
        }
    }

    /// Trust the CA certificates (PEM, one or more) of this file instead of the system's
    /// roots. The file is read by [`build`](Self::build).
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca = Some(Pem::File(path.into()));
        self
    }

    /// Trust these CA certificates (PEM) instead of the system's roots.
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca = Some(Pem::Text(Zeroizing::new(pem.into())));
        self
    }

    /// Present the client certificate (PEM, the chain) of `cert` with the private key
    /// (PEM: PKCS#8, PKCS#1 or SEC1) of `key`, for a server that asks for one (mutual
    /// TLS). The files are read by [`build`](Self::build).
    pub fn client_cert_files(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.client = Some((Pem::File(cert.into()), Pem::File(key.into())));
        self
    }

    /// Present this client certificate (PEM) with this private key (PEM).
    pub fn client_cert_pem(mut self, cert: impl Into<Vec<u8>>, key: impl Into<Vec<u8>>) -> Self {
        self.client = Some((
            Pem::Text(Zeroizing::new(cert.into())),
            Pem::Text(Zeroizing::new(key.into())),
        ));
        self
    }

    /// The store. It connects on first use and reconnects by itself, so it can be made
    /// while Redis is down; [`ping`](RedisRateLimitStore::ping) checks it. Must be called
    /// within a Tokio runtime.
    pub fn build(self) -> Result<RedisRateLimitStore, RedisConfigError> {
        let certificates = self.certificates()?;
        let mut tls = false;
        for url in &self.nodes {
            match redis::Client::open(url.as_str()).map(|c| c.get_connection_info().addr().clone())
            {
                Ok(ConnectionAddr::TcpTls { insecure, .. }) => {
                    tls = true;
                    if insecure {
                        tracing::warn!(
                            "Redis TLS without certificate checks (#insecure in the URL): \
                             anyone on the path can read and change the traffic; for test servers only"
                        );
                    }
                }
                Ok(_) if certificates.is_some() => {
                    return Err(RedisConfigError(
                        "a CA file or client certificate needs rediss:// URLs".to_owned(),
                    ));
                }
                Ok(_) => {}
                Err(e) => return Err(invalid_url(&e)),
            }
        }
        let connector = if self.cluster {
            if self.nodes.is_empty() {
                return Err(RedisConfigError(
                    "a Redis Cluster needs at least one node's URL".to_owned(),
                ));
            }
            let urls: Vec<&str> = self.nodes.iter().map(|u| u.as_str()).collect();
            // Enough retries to follow a redirect or two (`MOVED`, `ASK`); the store's
            // timeout bounds them all.
            let mut builder = ClusterClient::builder(urls).retries(3);
            if let Some(certificates) = certificates.clone() {
                builder = builder.certs(certificates);
            }
            let client = builder.build().map_err(|e| invalid_url(&e))?;
            Connector::Cluster(client)
        } else {
            let url = self.nodes[0].as_str();
            let client = match certificates.clone() {
                None => redis::Client::open(url),
                Some(certificates) => redis::Client::build_with_tls(url, certificates),
            }
            .map_err(|e| invalid_url(&e))?;
            Connector::One(client)
        };
        if tls {
            use_ring_unless_chosen();
        }
        RedisRateLimitStore::with_connector(connector)
    }

    fn certificates(&self) -> Result<Option<TlsCertificates>, RedisConfigError> {
        if self.ca.is_none() && self.client.is_none() {
            return Ok(None);
        }
        let root_cert = match &self.ca {
            Some(ca) => {
                let pem = ca.read("Redis CA file")?;
                const BEGIN: &[u8] = b"-----BEGIN CERTIFICATE-----";
                if !pem.windows(BEGIN.len()).any(|w| w == BEGIN) {
                    return Err(RedisConfigError(
                        "the Redis CA file holds no PEM certificate".to_owned(),
                    ));
                }
                Some(pem.to_vec())
            }
            None => None,
        };
        let client_tls = match &self.client {
            Some((cert, key)) => Some(ClientTlsConfig {
                client_cert: cert.read("Redis client certificate")?.to_vec(),
                client_key: key.read("Redis client key")?.to_vec(),
            }),
            None => None,
        };
        Ok(Some(TlsCertificates {
            client_tls,
            root_cert,
        }))
    }
}

/// redis-rs's rustls builds its configurations with the process's default crypto
/// provider, which rustls only picks by itself when exactly one is compiled in: name
/// ring (what this crate and sqlx compile) unless the application installed one.
fn use_ring_unless_chosen() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Another thread may install one at the same time: then that one is used.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

fn invalid_url(e: &redis::RedisError) -> RedisConfigError {
    // redis-rs's parse errors name the part that is wrong, never the URL.
    RedisConfigError(format!(
        "invalid Redis URL (expected redis:// or rediss://[user:password@]host[:port][/db][#insecure]): {e}"
    ))
}

/// What makes connections: a client of one server, or of a cluster.
// One per store, made once and never moved on a request's path: its size does not matter.
#[allow(clippy::large_enum_variant)]
pub(super) enum Connector {
    One(redis::Client),
    Cluster(ClusterClient),
}

impl Connector {
    /// A connection that connects on first use and reconnects by itself, with `timeout`
    /// for connecting and for each answer.
    pub(super) fn connect(&self, timeout: Duration) -> redis::RedisResult<Conn> {
        match self {
            Self::One(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(500));
                ConnectionManager::new_lazy_with_config(client.clone(), config).map(Conn::One)
            }
            Self::Cluster(client) => {
                let config = ClusterConfig::new()
                    .set_connection_timeout(timeout)
                    .set_response_timeout(timeout);
                Ok(Conn::Cluster(
                    client.get_pending_async_connection_with_config(config),
                ))
            }
        }
    }

    /// One fresh connection and a `PING` on it, to learn why the store's own connection
    /// fails (its error, not a timeout of its retries). It may take up to 2 s (or the
    /// store's timeout, if longer): a TLS handshake that loads the system's roots can
    /// take longer than a check may wait.
    pub(super) async fn diagnose(&self, timeout: Duration) -> Result<(), RedisPingError> {
        let timeout = timeout.max(Duration::from_secs(2));
        let attempt = async {
            match self {
                Self::One(client) => {
                    let config = redis::AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(timeout))
                        .set_response_timeout(Some(timeout));
                    let mut conn = client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?;
                    redis::cmd("PING").query_async::<String>(&mut conn).await
                }
                Self::Cluster(client) => {
                    let config = ClusterConfig::new()
                        .set_connection_timeout(timeout)
                        .set_response_timeout(timeout);
                    let mut conn = client.get_async_connection_with_config(config).await?;
                    redis::cmd("PING").query_async::<String>(&mut conn).await
                }
            }
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(RedisPingError::of(e)),
            Err(_) => Err(RedisPingError::timeout(timeout)),
        }
    }

    pub(super) fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }
}

/// The store's connection: to one server, or to a cluster (which routes each script
/// call by its keys' hash slot and follows `MOVED` and `ASK`).
#[derive(Clone)]
pub(super) enum Conn {
    One(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Self::One(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Self::One(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::One(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}
