//! What the example servers (`server`, HTTP, and `grpc_server`) share, so that the two
//! read the same variables the same way and can run side by side on one store: the key
//! store from `DATABASE_URL` and its admin key, the cache in front of it and the change
//! feed behind it (`CACHE_TTL`, `CACHE_STALE`, `STORE_TIMEOUT`, `CHANGES_POLL`), the rate
//! limit (`RATE_LIMIT`, `REDIS_URL` or `REDIS_CLUSTER_URLS`, `REDIS_MODE`, the Redis TLS
//! files), where keys are read, and the shutdown
//! signal.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::HeaderName;
use tower_api_key::ratelimit::{RateLimitStore, RedisMode, RedisRateLimitStore};
use tower_api_key::resolve::{ChangeFollower, FollowOptions};
use tower_api_key::store::{
    ChangeFeed, ListQuery, NewKey, PostgresStore, SqliteStore, WebhookOutbox,
};
use tower_api_key::{
    CachedResolver, KeySource, KeyStatus, KeyStore, MemoryRateLimitStore, RateLimitPolicy, Scopes,
};

/// The error of a start that cannot go on.
pub(crate) type BoxError = Box<dyn std::error::Error>;

/// A key store with a change log: what every instance shares.
pub(crate) trait Store: KeyStore + ChangeFeed + WebhookOutbox {}
impl<T: KeyStore + ChangeFeed + WebhookOutbox> Store for T {}

/// The store of `DATABASE_URL` (default `sqlite://keys.db`, created if missing;
/// `postgres://…` for PostgreSQL).
pub(crate) async fn open_store() -> Result<Arc<dyn Store>, BoxError> {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| "sqlite://keys.db".to_owned());
    if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        Ok(Arc::new(
            PostgresStore::connect(&url)
                .await
                .map_err(|e| format!("DATABASE_URL: {e}"))?,
        ))
    } else if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::connect(&url).await?))
    } else {
        Err("DATABASE_URL must start with sqlite:// or postgres://".into())
    }
}

/// On a store with no active admin key, issues one (scope `admin`, made by `actor`) and
/// prints `admin key: <key>` on stdout: the one place the secret is shown, once, to the
/// operator.
pub(crate) async fn ensure_admin_key(store: &Arc<dyn Store>, actor: &str) -> Result<(), BoxError> {
    if has_active_admin_key(store).await? {
        return Ok(());
    }
    let created = store
        .create(
            NewKey::new("admin")
                .with_name("admin")
                .with_scopes(Scopes::parse(["admin"])?),
            actor,
        )
        .await?;
    println!("admin key: {}", created.key.expose_secret());
    Ok(())
}

/// Is there a key with the `admin` scope that may be used now?
async fn has_active_admin_key(store: &Arc<dyn Store>) -> Result<bool, BoxError> {
    let mut query = ListQuery::default().limit(ListQuery::MAX_LIMIT);
    loop {
        let page = store.list(&query).await?;
        let now = SystemTime::now();
        if page
            .records
            .iter()
            .any(|r| r.scopes.grants("admin") && r.status(now) == KeyStatus::Active)
        {
            return Ok(true);
        }
        match page.next {
            Some(next) => query = query.after(next),
            None => return Ok(false),
        }
    }
}

/// The cache in front of the store, and what keeps it current.
pub(crate) struct Cache {
    pub(crate) cache: CachedResolver<Arc<dyn Store>>,
    /// Applies changes made through any instance to this one's cache; keep it.
    pub(crate) follower: Arc<ChangeFollower>,
    /// How long a store call other than a key load may take: `STORE_TIMEOUT`, or 2 s
    /// when that is 0 (no deadline on key loads).
    pub(crate) probe_timeout: Duration,
}

/// How the cache is shaped and fed: `CACHE_TTL` (default `30s`), `CACHE_STALE` (default
/// `10m`; `0` turns it off), `STORE_TIMEOUT` (default `2s`; `0`: key loads wait as long
/// as the store takes) and `CHANGES_POLL` (default `250ms`: how often the store's change
/// log is read). Read before the store is opened, so that a mistake stops the start
/// before anything is written.
pub(crate) struct CacheSettings {
    fresh: Duration,
    stale: Duration,
    store_timeout: Duration,
    poll: Duration,
}

impl CacheSettings {
    pub(crate) fn from_env() -> Result<Self, String> {
        Ok(Self {
            fresh: duration_var("CACHE_TTL", "30s")?,
            stale: duration_var("CACHE_STALE", "10m")?,
            store_timeout: duration_var("STORE_TIMEOUT", "2s")?,
            poll: duration_var("CHANGES_POLL", "250ms")?,
        })
    }

    /// The cache in front of `store`, following its change log.
    pub(crate) fn build(self, store: &Arc<dyn Store>) -> Cache {
        let Self {
            fresh,
            stale,
            store_timeout,
            poll,
        } = self;
        let cache = CachedResolver::builder(store.clone())
            .ttl(fresh)
            .stale_window(stale)
            .load_timeout((!store_timeout.is_zero()).then_some(store_timeout))
            .build();
        // `STORE_TIMEOUT=0` takes the deadline off key loads; reads of the change log and
        // the readiness probe still give up after the default 2 s.
        let probe_timeout = if store_timeout.is_zero() {
            Duration::from_secs(2)
        } else {
            store_timeout
        };
        let options = FollowOptions::default()
            .poll_interval(poll)
            .read_timeout(probe_timeout);
        let follower = Arc::new(cache.follow_with(store.clone(), options));
        Cache {
            cache,
            follower,
            probe_timeout,
        }
    }
}

/// Keys are read from `Authorization: Bearer …` (scheme case-insensitive) and from
/// `X-API-Key` (in gRPC: the `authorization` and `x-api-key` metadata).
pub(crate) fn key_source() -> KeySource {
    KeySource::bearer().or(KeySource::header(HeaderName::from_static("x-api-key")))
}

/// `RATE_LIMIT` (default `1000/60s`): the policy of keys whose record carries none.
pub(crate) fn rate_limit() -> Result<RateLimitPolicy, String> {
    std::env::var("RATE_LIMIT")
        .unwrap_or_else(|_| "1000/60s".to_owned())
        .parse()
        .map_err(|e| format!("RATE_LIMIT: {e}"))
}

/// A rate-limit store, and the Redis store when it is one.
pub(crate) type LimitStores = (Arc<dyn RateLimitStore>, Option<RedisRateLimitStore>);

/// Redis when `REDIS_URL` (or `REDIS_CLUSTER_URLS`) is set (`REDIS_MODE`: `batched`, the
/// default, or `exact`; `REDIS_CA_FILE`, `REDIS_CLIENT_CERT` and `REDIS_CLIENT_KEY` for
/// TLS), this process's memory otherwise.
pub(crate) async fn rate_limit_store() -> Result<LimitStores, BoxError> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let (name, builder) = match (var("REDIS_URL"), var("REDIS_CLUSTER_URLS")) {
        (Some(_), Some(_)) => {
            return Err(
                "set REDIS_URL (one server) or REDIS_CLUSTER_URLS (a cluster), not both".into(),
            );
        }
        (Some(url), None) => ("REDIS_URL", RedisRateLimitStore::builder(&url)),
        (None, Some(urls)) => (
            "REDIS_CLUSTER_URLS",
            RedisRateLimitStore::cluster_builder(urls.split(',').map(str::trim)),
        ),
        (None, None) => return Ok((Arc::new(MemoryRateLimitStore::new()), None)),
    };
    let builder = match var("REDIS_CA_FILE") {
        Some(path) => builder.ca_file(path),
        None => builder,
    };
    let builder = match (var("REDIS_CLIENT_CERT"), var("REDIS_CLIENT_KEY")) {
        (Some(cert), Some(key)) => builder.client_cert_files(cert, key),
        (None, None) => builder,
        _ => return Err("set REDIS_CLIENT_CERT and REDIS_CLIENT_KEY together".into()),
    };
    let mode = match std::env::var("REDIS_MODE").as_deref() {
        Err(_) | Ok("") | Ok("batched") => RedisMode::Batched,
        Ok("exact") => RedisMode::Exact,
        Ok(other) => {
            return Err(format!("REDIS_MODE must be batched or exact, not {other:?}").into());
        }
    };
    let redis = builder
        .build()
        .map_err(|e| format!("{name}: {e}"))?
        .with_mode(mode);
    match redis.ping().await {
        Ok(()) => eprintln!("rate limits: shared through Redis ({mode:?} mode)"),
        // Waiting will not mend a certificate that is not trusted or a password refused.
        Err(e) if e.is_misconfigured() => return Err(format!("{name}: {e}").into()),
        Err(e) => eprintln!("rate limits: {e}; limiting per instance until Redis answers"),
    }
    Ok((Arc::new(redis.clone()), Some(redis)))
}

/// A duration from the environment, written like `250ms`, `2s`, `10m`, `1h` or `0`.
pub(crate) fn duration_var(name: &str, default: &str) -> Result<Duration, String> {
    let text = std::env::var(name).unwrap_or_else(|_| default.to_owned());
    parse_duration(text.trim())
        .ok_or_else(|| format!("{name}: '{text}' is not a duration such as 250ms, 2s, 10m or 1h"))
}

fn parse_duration(text: &str) -> Option<Duration> {
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().ok()?;
    let millis = match unit {
        "ms" => n,
        "s" => n.checked_mul(1_000)?,
        "m" => n.checked_mul(60_000)?,
        "h" => n.checked_mul(3_600_000)?,
        _ => return None,
    };
    Some(Duration::from_millis(millis))
}

/// Resolves on Ctrl-C or SIGTERM. The handlers are installed when this is called, not
/// when the future is first polled: a signal that arrives between the server announcing
/// itself and its first poll must still shut it down gracefully.
pub(crate) fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => {},
                _ = terminate.recv() => {},
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}
