//! [`RedisRateLimitStore`]: limiter state in Redis, so that many instances enforce one
//! limit.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::gcra;
use super::memory::MemoryRateLimitStore;
use super::policy::{Limit, QuotaWindow, RateLimitPolicy, RateLimits};
use super::store::{Decision, PolicyStatus, RateLimitStore, RateLimitStoreError, Subject};

/// The GCRA and quota check as one Lua script, run atomically by the server.
const SCRIPT: &str = include_str!("redis.lua");

/// Keeps rate-limit state in Redis: one atomic script call per request (GCRA and
/// calendar quotas, all policies of the request charged all or nothing), so that every
/// instance sharing the Redis server enforces one limit.
///
/// Each policy of each subject is one Redis key, `{prefix}{kind:id}:{policy}` (for
/// example `tak:{key:key_01HV…}:burst`), holding a number and expiring as soon as
/// forgetting it changes nothing. The keys of one subject share a hash tag, as Redis
/// Cluster needs of one script call; the store itself connects to one Redis server (or
/// a proxy in front of a cluster). TLS (`rediss://`) is not built in.
///
/// Times come from the layer's [`Clock`](super::Clock), as with the memory store, and
/// are kept in microseconds on the server (where Lua's numbers are exact); keep the
/// instances' clocks in sync (NTP). A rate's interval is rounded up to a whole
/// microsecond, so a policy of more than a million requests a second is held to that;
/// otherwise the answers are the memory store's, which a test checks request by request.
///
/// **When Redis cannot answer** (down, unreachable, or slower than the
/// [timeout](Self::with_timeout)), the store by default limits each instance on its own,
/// with a [`MemoryRateLimitStore`], and logs a warning once per outage (and a line when
/// Redis is back). It then leaves Redis alone for the [retry
/// interval](Self::with_retry_interval), after which one request at a time asks again
/// while the others are answered at once, so an outage costs requests no waiting. With
/// [`with_local_fallback(false)`](Self::with_local_fallback) it returns the error
/// instead, and the layer's [`OnStoreError`](super::OnStoreError) decides: `Allow`
/// fails open, `Deny` fails closed. So the three choices are:
///
/// | on a Redis failure | configuration |
/// |---|---|
/// | limit per instance (default) | `with_local_fallback(true)` |
/// | let the request through | `with_local_fallback(false)` + `OnStoreError::Allow` |
/// | refuse it with 503 | `with_local_fallback(false)` + `OnStoreError::Deny` |
///
/// ```no_run
/// use tower_api_key::{RateLimitLayer, RateLimitPolicy};
/// use tower_api_key::ratelimit::RedisRateLimitStore;
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let store = RedisRateLimitStore::open("redis://127.0.0.1:6379/")?;
/// if let Err(e) = store.ping().await {
///     eprintln!("Redis is not there yet ({e}); limiting per instance until it is");
/// }
/// let layer = RateLimitLayer::new(store, "100/60s".parse::<RateLimitPolicy>()?);
/// # let _ = layer; Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisRateLimitStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    conn: ConnectionManager,
    script: redis::Script,
    prefix: String,
    timeout: Duration,
    retry_interval: Duration,
    fallback: Option<MemoryRateLimitStore>,
    /// The zero of `down_until`.
    started: Instant,
    /// Until when (nanoseconds after `started`) Redis is not asked; 0: ask.
    down_until: AtomicU64,
    /// In an outage (logged once when it starts, once when it ends)?
    degraded: AtomicBool,
    /// Requests answered without Redis in the current outage.
    missed: AtomicU64,
    /// Is a request asking Redis whether it is back?
    probing: AtomicBool,
}

impl fmt::Debug for RedisRateLimitStore {
    // The URL may hold a password: it is never shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRateLimitStore")
            .field("prefix", &self.inner.prefix)
            .field("timeout", &self.inner.timeout)
            .field("retry_interval", &self.inner.retry_interval)
            .field("local_fallback", &self.inner.fallback.is_some())
            .field("degraded", &self.is_degraded())
            .finish_non_exhaustive()
    }
}

/// A Redis URL that could not be used. It does not repeat the URL, which may hold a
/// password.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid Redis URL (expected redis://[user:password@]host[:port][/db]; TLS is not built in)"
)]
pub struct InvalidRedisUrl(());

/// The longest subject id written into a Redis key as it is.
const MAX_ID_IN_KEY: usize = 64;
const DEFAULT_TIMEOUT: Duration = Duration::from_millis(250);
const DEFAULT_RETRY_INTERVAL: Duration = Duration::from_secs(1);

impl RedisRateLimitStore {
    /// A store on the server at `url` (`redis://[user:password@]host[:port][/db]`). It
    /// connects on first use and reconnects by itself, so it can be made while Redis is
    /// down; [`ping`](Self::ping) checks it. Must be called within a Tokio runtime.
    pub fn open(url: &str) -> Result<Self, InvalidRedisUrl> {
        let client = redis::Client::open(url).map_err(|_| InvalidRedisUrl(()))?;
        Self::build(client, DEFAULT_TIMEOUT)
    }

    fn build(client: redis::Client, timeout: Duration) -> Result<Self, InvalidRedisUrl> {
        let conn = connection(client.clone(), timeout).map_err(|_| InvalidRedisUrl(()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                conn,
                script: redis::Script::new(SCRIPT),
                prefix: "tak:".to_owned(),
                timeout,
                retry_interval: DEFAULT_RETRY_INTERVAL,
                fallback: Some(MemoryRateLimitStore::new()),
                started: Instant::now(),
                down_until: AtomicU64::new(0),
                degraded: AtomicBool::new(false),
                missed: AtomicU64::new(0),
                probing: AtomicBool::new(false),
            }),
        })
    }

    fn inner_mut(&mut self) -> &mut Inner {
        Arc::get_mut(&mut self.inner)
            .expect("configure a RedisRateLimitStore before cloning or using it")
    }

    /// Prefixes every Redis key (default `tak:`), so that several services or
    /// environments can share one Redis.
    ///
    /// # Panics
    ///
    /// If the store was already cloned: configure it first.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.inner_mut().prefix = prefix.into();
        self
    }

    /// How long one check may wait for Redis (to connect, and for each answer) before
    /// the store treats Redis as down (default 250 ms).
    ///
    /// # Panics
    ///
    /// If the store was already cloned: configure it first.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        let inner = self.inner_mut();
        // The connection's own connect and response timeouts follow (it has not
        // connected yet: it connects on first use).
        if let Ok(conn) = connection(inner.client.clone(), timeout) {
            inner.conn = conn;
            inner.timeout = timeout;
        }
        self
    }

    /// After a failure, how long Redis is left alone before it is tried again
    /// (default 1 s).
    ///
    /// # Panics
    ///
    /// If the store was already cloned: configure it first.
    pub fn with_retry_interval(mut self, interval: Duration) -> Self {
        self.inner_mut().retry_interval = interval;
        self
    }

    /// Whether to limit each instance on its own while Redis is down (default `true`);
    /// with `false` the error goes to the layer's [`OnStoreError`](super::OnStoreError).
    ///
    /// # Panics
    ///
    /// If the store was already cloned: configure it first.
    pub fn with_local_fallback(mut self, enabled: bool) -> Self {
        self.inner_mut().fallback = enabled.then(MemoryRateLimitStore::new);
        self
    }

    /// Asks Redis for `PONG`, within the timeout.
    pub async fn ping(&self) -> Result<(), RateLimitStoreError> {
        let mut conn = self.inner.conn.clone();
        let reply: String = self
            .within_timeout(redis::cmd("PING").query_async(&mut conn))
            .await?;
        if reply == "PONG" {
            Ok(())
        } else {
            Err(store_error(format!("unexpected reply to PING: {reply:?}")))
        }
    }

    /// Is the store limiting per instance right now, because Redis failed?
    pub fn is_degraded(&self) -> bool {
        self.inner.degraded.load(Ordering::Relaxed)
    }

    /// The Redis key of `policy` for `subject`.
    ///
    /// An id longer than 64 bytes (a custom subject may come from the client) stands in
    /// the key as `sha256:` and the first 16 bytes of its SHA-256 in hex, so that a
    /// client cannot make Redis keep long keys.
    pub fn redis_key(&self, subject: Subject<'_>, policy: &RateLimitPolicy) -> String {
        let (prefix, kind, id, name) = (
            &self.inner.prefix,
            subject.kind(),
            subject.id(),
            policy.name(),
        );
        if id.len() <= MAX_ID_IN_KEY {
            return format!("{prefix}{{{kind}:{id}}}:{name}");
        }
        let hex = crate::KeyHash::of_bytes(id.as_bytes()).to_hex();
        format!("{prefix}{{{kind}:sha256:{}}}:{name}", &hex[..32])
    }

    async fn within_timeout<T>(
        &self,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, RateLimitStoreError> {
        match tokio::time::timeout(self.inner.timeout, fut).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(RateLimitStoreError(Box::new(e))),
            Err(_) => Err(store_error(format!(
                "no answer from Redis within {:?}",
                self.inner.timeout
            ))),
        }
    }

    fn elapsed(&self) -> u64 {
        u64::try_from(self.inner.started.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    async fn check_redis(
        &self,
        subject: Subject<'_>,
        policies: &[RateLimitPolicy],
        cost: u32,
        now: u64,
    ) -> Result<Decision, RateLimitStoreError> {
        let now_us = now / 1_000;
        let mut call = self.inner.script.prepare_invoke();
        call.arg(now_us);
        for policy in policies {
            call.key(self.redis_key(subject, policy));
            match policy.limit() {
                Limit::Rate {
                    requests,
                    per,
                    burst,
                } => {
                    // The emission interval in whole microseconds, rounded up so that
                    // the allowed rate is never above the policy's.
                    let t = gcra::emission_interval(requests, per)
                        .div_ceil(1_000)
                        .max(1);
                    call.arg("r")
                        .arg(clamp_product(u64::from(cost), t))
                        .arg(clamp_product(u64::from(burst), t))
                        .arg(t)
                        .arg(0);
                }
                Limit::Quota { requests, window } => {
                    let (number, end) = gcra::calendar_window(window, now);
                    let tag = match window {
                        QuotaWindow::Day => format!("d{number}"),
                        QuotaWindow::Month => format!("m{number}"),
                    };
                    let ttl_ms = (end - now).div_ceil(1_000_000);
                    call.arg("q").arg(cost).arg(requests).arg(tag).arg(ttl_ms);
                }
            }
        }
        let mut conn = self.inner.conn.clone();
        let reply: Vec<i64> = self.within_timeout(call.invoke_async(&mut conn)).await?;
        if reply.len() != 4 * policies.len() {
            return Err(store_error(format!(
                "the rate-limit script returned {} numbers for {} policies",
                reply.len(),
                policies.len()
            )));
        }
        let us = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
        Ok(Decision::new(
            policies
                .iter()
                .zip(reply.chunks_exact(4))
                .map(|(policy, r)| {
                    let allowed = r[0] == 1;
                    let remaining = u64::try_from(r[1]).unwrap_or(0);
                    match policy.limit() {
                        Limit::Rate { .. } => PolicyStatus {
                            allowed,
                            remaining,
                            reset: us(r[2]),
                            retry_after: if allowed {
                                Duration::ZERO
                            } else {
                                us(r[3]).max(Duration::from_micros(1))
                            },
                        },
                        Limit::Quota { window, .. } => {
                            let (_, end) = gcra::calendar_window(window, now);
                            let reset = Duration::from_nanos(end - now);
                            PolicyStatus {
                                allowed,
                                remaining,
                                reset,
                                retry_after: if allowed {
                                    Duration::ZERO
                                } else {
                                    reset.max(Duration::from_nanos(1))
                                },
                            }
                        }
                    }
                }),
        ))
    }

    fn on_failure(&self, error: &RateLimitStoreError) {
        let inner = &*self.inner;
        let retry = u64::try_from(inner.retry_interval.as_nanos()).unwrap_or(u64::MAX);
        inner.down_until.store(
            self.elapsed().saturating_add(retry).max(1),
            Ordering::Relaxed,
        );
        if !inner.degraded.swap(true, Ordering::Relaxed) {
            if inner.fallback.is_some() {
                tracing::warn!(
                    error = %error,
                    "Redis rate-limit store failed: limiting per instance until Redis answers again"
                );
            } else {
                tracing::warn!(
                    error = %error,
                    "Redis rate-limit store failed: the layer's OnStoreError applies until Redis answers again"
                );
            }
        }
    }

    fn on_success(&self) {
        let inner = &*self.inner;
        if inner.degraded.swap(false, Ordering::Relaxed) {
            let missed = inner.missed.swap(0, Ordering::Relaxed);
            tracing::info!(
                missed,
                "Redis rate-limit store answers again: limits are shared across instances"
            );
        }
    }
}

/// A connection that connects on first use and reconnects by itself, with `timeout`
/// for connecting and for each answer.
fn connection(client: redis::Client, timeout: Duration) -> redis::RedisResult<ConnectionManager> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_lazy_with_config(client, config)
}

/// `a * b`, capped at 2^50 µs (35 years), so that sums with the time stay exact in the
/// script's doubles.
fn clamp_product(a: u64, b: u64) -> u64 {
    a.saturating_mul(b).min(1 << 50)
}

fn store_error(message: String) -> RateLimitStoreError {
    RateLimitStoreError(message.into())
}

#[async_trait::async_trait]
impl RateLimitStore for RedisRateLimitStore {
    async fn check(
        &self,
        subject: Subject<'_>,
        policies: &[RateLimitPolicy],
        cost: u32,
        now: u64,
    ) -> Result<Decision, RateLimitStoreError> {
        let policies = &policies[..policies.len().min(RateLimits::MAX)];
        let inner = &*self.inner;
        // In an outage one request at a time asks Redis again, once the retry interval
        // has passed; the others do not wait for it (a Redis that does not answer at
        // all would otherwise hold every request for the whole timeout).
        let probe = if inner.degraded.load(Ordering::Relaxed) {
            let due = self.elapsed() >= inner.down_until.load(Ordering::Relaxed);
            match due.then(|| Probe::claim(&inner.probing)).flatten() {
                Some(probe) => Some(probe),
                None => {
                    return self.without_redis(
                        store_error("Redis is down; not asked".to_owned()),
                        subject,
                        policies,
                        cost,
                        now,
                    );
                }
            }
        } else {
            None
        };
        let result = match self.check_redis(subject, policies, cost, now).await {
            Ok(decision) => {
                self.on_success();
                return Ok(decision);
            }
            Err(e) => {
                self.on_failure(&e);
                e
            }
        };
        drop(probe);
        self.without_redis(result, subject, policies, cost, now)
    }
}

impl RedisRateLimitStore {
    /// The answer when Redis did not give one: the local fallback's, or the error.
    fn without_redis(
        &self,
        error: RateLimitStoreError,
        subject: Subject<'_>,
        policies: &[RateLimitPolicy],
        cost: u32,
        now: u64,
    ) -> Result<Decision, RateLimitStoreError> {
        let inner = &*self.inner;
        match &inner.fallback {
            Some(local) => {
                inner.missed.fetch_add(1, Ordering::Relaxed);
                Ok(local.check_now(subject, policies, cost, now))
            }
            None => Err(error),
        }
    }
}

/// The right to ask Redis during an outage, held by one request at a time; given back
/// when dropped, also when the request is cancelled mid-way.
struct Probe<'a>(&'a AtomicBool);

impl<'a> Probe<'a> {
    fn claim(flag: &'a AtomicBool) -> Option<Self> {
        flag.compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
            .ok()
            .map(|_| Self(flag))
    }
}

impl Drop for Probe<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_probe_at_a_time_and_the_turn_comes_back_when_dropped() {
        let flag = AtomicBool::new(false);
        let first = Probe::claim(&flag).expect("free");
        assert!(Probe::claim(&flag).is_none());
        drop(first);
        assert!(Probe::claim(&flag).is_some());
    }

    #[tokio::test]
    async fn a_cancelled_probe_gives_the_turn_back() {
        let flag = AtomicBool::new(false);
        let held = async {
            let _probe = Probe::claim(&flag).expect("free");
            std::future::pending::<()>().await;
        };
        // Polled once (the probe is taken), then dropped: as a cancelled request is.
        let mut held = Box::pin(held);
        assert!(futures_poll_once(held.as_mut()).await.is_none());
        assert!(Probe::claim(&flag).is_none());
        drop(held);
        assert!(Probe::claim(&flag).is_some());
    }

    async fn futures_poll_once<F: Future + Unpin>(mut f: F) -> Option<F::Output> {
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(match std::pin::Pin::new(&mut f).poll(cx) {
                std::task::Poll::Ready(v) => Some(v),
                std::task::Poll::Pending => None,
            })
        })
        .await
    }
}
