//! [`RedisRateLimitStore`]: limiter state in Redis, so that many instances enforce one
//! limit.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use super::batch::{self, Ask, Batching, Begin, Local, Slices};
use super::gcra;
use super::memory::MemoryRateLimitStore;
use super::policy::{Limit, RateLimitPolicy, RateLimits};
use super::redis_conn::{Conn, Connector, RedisConfigError, RedisPingError, RedisStoreBuilder};
use super::store::{Decision, PolicyStatus, RateLimitStore, RateLimitStoreError, Subject};

/// The GCRA and quota check as one Lua script, run atomically by the server.
const SCRIPT: &str = concat!(include_str!("redis_quota.lua"), include_str!("redis.lua"));
/// The same check, granting slices of the budget (the batched mode).
const BATCH_SCRIPT: &str = concat!(
    include_str!("redis_quota.lua"),
    include_str!("redis_batch.lua")
);

/// How a [`RedisRateLimitStore`] asks Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RedisMode {
    /// One script call per request, decided in Redis: every request waits one round
    /// trip.
    Exact,
    /// The default. Each instance takes a slice of a subject's budget in one script
    /// call and spends it in process; slices shrink to one request as the budget runs
    /// low, so a key at its limit is checked exactly. Never more allowed than the exact
    /// mode allows, over any number of instances; see
    /// [`RedisRateLimitStore`] for the bound.
    #[default]
    Batched,
}

/// Keeps rate-limit state in Redis (GCRA and calendar quotas, all policies of a request
/// charged all or nothing), so that every instance sharing the Redis server enforces one
/// limit.
///
/// **Batched** (the default, [`RedisMode::Batched`]): each instance takes a slice of a
/// subject's budget in one atomic script call and spends it in process, asking for the
/// next slice in the background when a quarter is left; a key below its limit costs about
/// one call per slice, and its checks take nanoseconds. A rate's slice is a segment of its
/// GCRA timeline, spent with GCRA inside the segment, so over any number of instances no
/// window of length `w` allows more than `burst + w / T` (what one exact limiter allows);
/// a quota's slice is counted in Redis before it is spent, so a quota is never overspent.
/// Slices shrink as the budget runs low, to the request's cost alone at the edge (an
/// exact check per request), so budget held by other instances cannot starve a key; a
/// quota slice left unused for the [lease](Self::with_slice_lease) goes back. One
/// instance alone answers exactly as the exact mode; with several, the `RateLimit`
/// header's remaining count is an estimate (each counts what the others hold as spent).
/// **Exact** ([`with_mode(RedisMode::Exact)`](Self::with_mode)): one script call per
/// request, whose headers are exact across instances; every request waits a round trip.
///
/// Each policy of each subject is one Redis key, `{prefix}{kind:id}:{policy}` (for
/// example `tak:{key:key_01HV…}:burst`), holding a number and expiring as soon as
/// forgetting it changes nothing. The keys of one subject share a hash tag, so that one
/// script call (all the policies of a request, or a give-back) touches one hash slot, as
/// Redis Cluster needs; subjects spread over the slots. (A prefix with braces of its own
/// would become the tag and put every key in one slot: keep braces out of it.)
///
/// **Connections**: [`open`](Self::open) takes `redis://[user:password@]host[:port][/db]`
/// or, for TLS, `rediss://…` (the system's root certificates; a CA file and client
/// certificates through [`builder`](Self::builder)); [`open_cluster`](Self::open_cluster)
/// and [`cluster_builder`](Self::cluster_builder) take the URLs of one or more nodes of a
/// Redis Cluster (or its configuration endpoint), learn the slot map from them, route each
/// call to the master of its slot and follow `MOVED` and `ASK` as slots move.
///
/// Times come from the layer's [`Clock`](super::Clock), as with the memory store, and
/// are kept in microseconds on the server (where Lua's numbers are exact); keep the
/// instances' clocks in sync (NTP). A rate's interval is rounded up to a whole
/// microsecond, so a policy of more than a million requests a second is held to that;
/// otherwise the answers are the memory store's, which a test checks request by request
/// (in both modes).
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
/// let store = RedisRateLimitStore::open("rediss://default:secret@redis.example.com:6380/")?;
/// match store.ping().await {
///     Ok(()) => {}
///     // A certificate not trusted, a password refused: waiting will not mend it.
///     Err(e) if e.is_misconfigured() => return Err(e.into()),
///     Err(e) => eprintln!("Redis is not there yet ({e}); limiting per instance until it is"),
/// }
/// let layer = RateLimitLayer::new(store, "100/60s".parse::<RateLimitPolicy>()?);
/// # let _ = layer; Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisRateLimitStore {
    inner: Arc<Inner>,
}

struct Inner {
    connector: Connector,
    conn: Conn,
    script: redis::Script,
    batch_script: redis::Script,
    /// The batched mode's slices; `None` in the exact mode.
    batch: Option<Slices>,
    /// Script calls made (checks, slices and give-backs).
    calls: AtomicU64,
    /// The latest time a request brought (Unix ns), and when it came (ns after
    /// `started`): the background give-back's clock.
    last_now: AtomicU64,
    last_now_at: AtomicU64,
    /// Is the background give-back running?
    sweeping: AtomicBool,
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
            .field("mode", &self.mode())
            .field("cluster", &self.inner.connector.is_cluster())
            .field("degraded", &self.is_degraded())
            .finish_non_exhaustive()
    }
}

/// The longest subject id written into a Redis key as it is.
const MAX_ID_IN_KEY: usize = 64;
const DEFAULT_TIMEOUT: Duration = Duration::from_millis(250);
const DEFAULT_RETRY_INTERVAL: Duration = Duration::from_secs(1);
const DEFAULT_BATCHING: Batching = Batching {
    share: 4,
    lease_us: 1_000_000,
    capacity: 1_000_000,
};

impl RedisRateLimitStore {
    /// A store on the server at `url`: `redis://[user:password@]host[:port][/db]`, or
    /// `rediss://…` for TLS with the system's root certificates (`rediss://…/#insecure`
    /// checks no certificate: test servers only). It connects on first use and reconnects
    /// by itself, so it can be made while Redis is down; [`ping`](Self::ping) checks it.
    /// Must be called within a Tokio runtime.
    pub fn open(url: &str) -> Result<Self, RedisConfigError> {
        Self::builder(url).build()
    }

    /// A store on the Redis Cluster of these nodes' URLs (`redis://` or `rediss://`, one
    /// or more; they share one password): see [`open`](Self::open).
    pub fn open_cluster<I, S>(urls: I) -> Result<Self, RedisConfigError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self::cluster_builder(urls).build()
    }

    /// A builder for a store on the server at `url`, to set a CA file or a client
    /// certificate.
    pub fn builder(url: &str) -> RedisStoreBuilder {
        RedisStoreBuilder::new(vec![Zeroizing::new(url.to_owned())], false)
    }

    /// A builder for a store on the Redis Cluster of these nodes' URLs.
    pub fn cluster_builder<I, S>(urls: I) -> RedisStoreBuilder
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let urls = urls
            .into_iter()
            .map(|u| Zeroizing::new(u.as_ref().to_owned()))
            .collect();
        RedisStoreBuilder::new(urls, true)
    }

    pub(super) fn with_connector(connector: Connector) -> Result<Self, RedisConfigError> {
        let timeout = DEFAULT_TIMEOUT;
        let conn = connector.connect(timeout).map_err(|e| {
            RedisConfigError::new(format!("cannot set up the Redis connection: {e}"))
        })?;
        crate::metrics::redis_fallback(false);
        Ok(Self {
            inner: Arc::new(Inner {
                connector,
                conn,
                script: redis::Script::new(SCRIPT),
                batch_script: redis::Script::new(BATCH_SCRIPT),
                batch: Some(Slices::new(DEFAULT_BATCHING)),
                calls: AtomicU64::new(0),
                last_now: AtomicU64::new(0),
                last_now_at: AtomicU64::new(0),
                sweeping: AtomicBool::new(false),
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
        if let Ok(conn) = inner.connector.connect(timeout) {
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

    /// Batched (the default) or exact: see [`RedisMode`].
    ///
    /// # Panics
    ///
    /// If the store was already cloned: configure it first.
    pub fn with_mode(mut self, mode: RedisMode) -> Self {
        let inner = self.inner_mut();
        let config = inner.batch.as_ref().map_or(DEFAULT_BATCHING, |b| b.config);
        inner.batch = (mode == RedisMode::Batched).then(|| Slices::new(config));
        self
    }

    /// The mode: batched or exact.
    pub fn mode(&self) -> RedisMode {
        if self.inner.batch.is_some() {
            RedisMode::Batched
        } else {
            RedisMode::Exact
        }
    }

    /// In the batched mode, the largest part of what a policy has left (beyond a
    /// request's cost) that one slice takes: `1/share` (default 4, at least 1). A
    /// larger share makes smaller slices: more round trips, less budget held by any
    /// one instance.
    ///
    /// # Panics
    ///
    /// If the store was already cloned: configure it first.
    pub fn with_slice_share(mut self, share: u32) -> Self {
        self.configure_batching(|b| b.share = share.max(1));
        self
    }

    /// In the batched mode, how long a quota's slice may be left unused before its
    /// unspent requests go back to Redis, and the longest a refusal is remembered
    /// (default 1 s; at least 1 ms).
    ///
    /// # Panics
    ///
    /// If the store was already cloned: configure it first.
    pub fn with_slice_lease(mut self, lease: Duration) -> Self {
        let us = u64::try_from(lease.as_micros())
            .unwrap_or(u64::MAX)
            .max(1_000);
        self.configure_batching(|b| b.lease_us = us);
        self
    }

    fn configure_batching(&mut self, f: impl FnOnce(&mut Batching)) {
        let inner = self.inner_mut();
        if let Some(slices) = &inner.batch {
            let mut config = slices.config;
            f(&mut config);
            inner.batch = Some(Slices::new(config));
        }
    }

    /// Script calls this store has made to Redis (checks, slices and give-backs): with
    /// the requests it decided, the round trips per request.
    pub fn redis_calls(&self) -> u64 {
        self.inner.calls.load(Ordering::Relaxed)
    }

    /// In the batched mode, how many (subject, policy) slices this instance holds.
    pub fn slices_held(&self) -> usize {
        self.inner.batch.as_ref().map_or(0, Slices::len)
    }

    /// Asks Redis for `PONG`, within the timeout (each node of a cluster). When that
    /// fails, one fresh connection (given up to 2 s) tells why:
    /// [`RedisPingError::is_misconfigured`] says
    /// whether Redis answered and refused this configuration (a certificate not trusted,
    /// the credentials refused), which is worth stopping for at start.
    pub async fn ping(&self) -> Result<(), RedisPingError> {
        let mut conn = self.inner.conn.clone();
        let timeout = self.inner.timeout;
        let reply =
            tokio::time::timeout(timeout, redis::cmd("PING").query_async::<String>(&mut conn))
                .await;
        match reply {
            Ok(Ok(reply)) if reply == "PONG" => Ok(()),
            Ok(Ok(reply)) => Err(RedisPingError::other(format!(
                "unexpected reply to PING: {reply:?}"
            ))),
            Ok(Err(e)) => Err(self
                .inner
                .connector
                .diagnose(timeout)
                .await
                .err()
                .unwrap_or_else(|| RedisPingError::of(e))),
            Err(_) => Err(self
                .inner
                .connector
                .diagnose(timeout)
                .await
                .err()
                .unwrap_or_else(|| RedisPingError::timeout(timeout))),
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
                    let tag = batch::quota_tag(window, number);
                    let ttl_ms = (end - now).div_ceil(1_000_000);
                    call.arg("q").arg(cost).arg(requests).arg(tag).arg(ttl_ms);
                }
            }
        }
        self.inner.calls.fetch_add(1, Ordering::Relaxed);
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
            crate::metrics::redis_fallback(true);
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
            crate::metrics::redis_fallback(false);
            let missed = inner.missed.swap(0, Ordering::Relaxed);
            tracing::info!(
                missed,
                "Redis rate-limit store answers again: limits are shared across instances"
            );
        }
    }
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
        if let Some(slices) = &self.inner.batch {
            return self
                .check_batched(slices, subject, policies, cost, now)
                .await;
        }
        let Some(probe) = self.may_ask() else {
            return self.without_redis(
                store_error("Redis is down; not asked".to_owned()),
                subject,
                policies,
                cost,
                now,
            );
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

    fn check_sync(
        &self,
        subject: Subject<'_>,
        policies: &[RateLimitPolicy],
        cost: u32,
        now: u64,
    ) -> Option<Result<Decision, RateLimitStoreError>> {
        let slices = self.inner.batch.as_ref()?;
        let policies = &policies[..policies.len().min(RateLimits::MAX)];
        match slices.try_local(subject, policies, cost, now) {
            Local::Decided(decision, more) => {
                if more {
                    self.prefetch(slices, subject, policies, now);
                }
                Some(Ok(decision))
            }
            Local::Miss => None,
        }
    }
}

impl RedisRateLimitStore {
    /// May Redis be asked now? In an outage one request at a time asks again, once the
    /// retry interval has passed (it holds the returned probe); the others do not wait
    /// for it (a Redis that does not answer at all would otherwise hold every request
    /// for the whole timeout). `None`: do not ask.
    fn may_ask(&self) -> Option<Option<Probe<'_>>> {
        let inner = &*self.inner;
        if !inner.degraded.load(Ordering::Relaxed) {
            return Some(None);
        }
        let due = self.elapsed() >= inner.down_until.load(Ordering::Relaxed);
        due.then(|| Probe::claim(&inner.probing))
            .flatten()
            .map(Some)
    }

    /// The batched mode: the slices decide when they can; otherwise one script call
    /// (one at a time per subject: the others wait for it and look again).
    async fn check_batched(
        &self,
        slices: &Slices,
        subject: Subject<'_>,
        policies: &[RateLimitPolicy],
        cost: u32,
        now: u64,
    ) -> Result<Decision, RateLimitStoreError> {
        let mut waits = 0;
        loop {
            if let Local::Decided(decision, more) = slices.try_local(subject, policies, cost, now) {
                if more {
                    self.prefetch(slices, subject, policies, now);
                }
                return Ok(decision);
            }
            let Some(probe) = self.may_ask() else {
                return self.without_redis(
                    store_error("Redis is down; not asked".to_owned()),
                    subject,
                    policies,
                    cost,
                    now,
                );
            };
            // Wait for another request's call at most twice (a subject at its limit
            // would otherwise queue its requests behind one call at a time).
            let wait = waits < 2 && probe.is_none();
            let ticket = match slices.begin(subject, policies, cost, now, wait) {
                Begin::Wait(done) => {
                    waits += 1;
                    let _ = tokio::time::timeout(self.inner.timeout, done).await;
                    continue;
                }
                Begin::Go(ticket) => ticket,
            };
            match self.call_batch(subject, policies, &ticket.asks, now).await {
                Ok(reply) => {
                    let key = |p: &RateLimitPolicy| self.redis_key(subject, p);
                    let len = reply.len();
                    if let Some(decision) = slices.finish(ticket, policies, key, &reply) {
                        self.on_success();
                        return Ok(decision);
                    }
                    // An answer that does not fit the call: as a failure of Redis.
                    let e = store_error(format!(
                        "the batch script returned {len} numbers for {} policies",
                        policies.len()
                    ));
                    self.on_failure(&e);
                    drop(probe);
                    return self.without_redis(e, subject, policies, cost, now);
                }
                Err(e) => {
                    drop(ticket);
                    self.on_failure(&e);
                    drop(probe);
                    return self.without_redis(e, subject, policies, cost, now);
                }
            }
        }
    }

    /// Asks for more of a subject's budget in the background (`try_local` marked the
    /// subject in flight).
    fn prefetch(
        &self,
        slices: &Slices,
        subject: Subject<'_>,
        policies: &[RateLimitPolicy],
        now: u64,
    ) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            slices.unmark(subject);
            return;
        };
        let store = self.clone();
        let (kind, id, digest) = (subject.kind(), subject.id().to_owned(), subject.digest());
        let policies = policies.to_vec();
        // Clears the mark should the task be dropped before it runs (the runtime shutting
        // down); once it runs, its ticket holds the mark.
        let unmark = Unmark(Some((store.clone(), digest)));
        runtime.spawn(async move {
            let subject = Subject::custom(kind, &id).with_digest(digest);
            let Some(slices) = &store.inner.batch else {
                return;
            };
            let ticket = slices.begin_prefetch(subject, &policies, now);
            unmark.disarm();
            if store.is_degraded() {
                return;
            }
            match store
                .call_batch(subject, &policies, &ticket.asks, now)
                .await
            {
                Ok(reply) => {
                    store.on_success();
                    let key = |p: &RateLimitPolicy| store.redis_key(subject, p);
                    slices.finish(ticket, &policies, key, &reply);
                }
                Err(e) => {
                    drop(ticket);
                    store.on_failure(&e);
                }
            }
        });
    }

    /// One call of the batch script.
    async fn call_batch(
        &self,
        subject: Subject<'_>,
        policies: &[RateLimitPolicy],
        asks: &[Ask],
        now: u64,
    ) -> Result<Vec<i64>, RateLimitStoreError> {
        let keys = policies.iter().map(|p| self.redis_key(subject, p));
        self.invoke_batch(keys, asks, now).await
    }

    async fn invoke_batch(
        &self,
        keys: impl Iterator<Item = String>,
        asks: &[Ask],
        now: u64,
    ) -> Result<Vec<i64>, RateLimitStoreError> {
        let inner = &*self.inner;
        let Some(slices) = &inner.batch else {
            return Err(store_error("not in the batched mode".to_owned()));
        };
        self.saw(now);
        let mut call = inner.batch_script.prepare_invoke();
        call.arg(now / 1_000).arg(slices.config.share);
        for (key, ask) in keys.zip(asks) {
            call.key(key);
            match ask {
                Ask::Rate {
                    cost,
                    cost_t,
                    tau,
                    t,
                    cap,
                    back_end,
                    back_tat,
                } => {
                    call.arg("r").arg(cost).arg(cost_t).arg(tau).arg(t);
                    call.arg(cap).arg(back_end).arg(back_tat);
                }
                Ask::Quota {
                    cost,
                    limit,
                    tag,
                    ttl_ms,
                    cap,
                    back,
                } => {
                    call.arg("q").arg(cost).arg(limit).arg(tag).arg(ttl_ms);
                    call.arg(cap).arg(back).arg(0);
                }
            }
        }
        inner.calls.fetch_add(1, Ordering::Relaxed);
        let mut conn = inner.conn.clone();
        self.within_timeout(call.invoke_async(&mut conn)).await
    }

    /// Notes the time a request brought, for the background give-back's clock, and
    /// starts that task on the first call.
    fn saw(&self, now: u64) {
        let inner = &*self.inner;
        // The latest time, not the last: a background call may bring an older one.
        if inner.last_now.fetch_max(now, Ordering::Relaxed) < now {
            inner.last_now_at.store(self.elapsed(), Ordering::Relaxed);
        }
        if !inner.sweeping.swap(true, Ordering::Relaxed)
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(give_back_unused(Arc::downgrade(&self.inner)));
        }
    }

    /// The layer's time now, as estimated from the latest request's.
    fn now_estimate(&self) -> u64 {
        let inner = &*self.inner;
        let since = self
            .elapsed()
            .saturating_sub(inner.last_now_at.load(Ordering::Relaxed));
        inner.last_now.load(Ordering::Relaxed).saturating_add(since)
    }

    /// Gives the unspent requests of quota slices left unused for the lease back to
    /// Redis, one call per subject.
    async fn give_back(&self, slices: &Slices) {
        if self.is_degraded() {
            return;
        }
        let now = self.now_estimate();
        let mut back = slices.sweep(now);
        back.sort_by_key(|b| b.subject);
        // Every subject swept is marked: each mark goes when its call is over, or however
        // this ends (the task may be dropped with the runtime).
        let mut marks: std::collections::HashMap<u64, Release<'_>> = back
            .chunk_by(|a, b| a.subject == b.subject)
            .map(|group| (group[0].subject, Release(slices, group[0].subject)))
            .collect();
        for group in back.chunk_by(|a, b| a.subject == b.subject) {
            let (keys, asks): (Vec<String>, Vec<Ask>) = group
                .iter()
                .filter_map(|b| {
                    let ask = batch::give_back_ask(&b.limit, b.window, b.units, now)?;
                    Some((b.redis_key.to_string(), ask))
                })
                .unzip();
            let _done = marks.remove(&group[0].subject);
            if asks.is_empty() {
                continue;
            }
            let keys = keys.into_iter();
            if let Err(e) = self.invoke_batch(keys, &asks, now).await {
                // Left counted in Redis until their window ends: never too many allowed,
                // but budget lost, so it is said.
                tracing::warn!(error = %e, "could not give unused quota slices back to Redis");
            }
        }
    }
}

/// Clears a prefetch's in-flight mark when dropped, unless disarmed.
struct Unmark(Option<(RedisRateLimitStore, u64)>);

impl Unmark {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for Unmark {
    fn drop(&mut self) {
        if let Some((store, digest)) = self.0.take()
            && let Some(slices) = &store.inner.batch
        {
            slices.release(digest);
        }
    }
}

/// Says the give-back task is gone when dropped, so that the next call starts another.
struct Sweeping(std::sync::Weak<Inner>);

impl Drop for Sweeping {
    fn drop(&mut self) {
        if let Some(inner) = self.0.upgrade() {
            inner.sweeping.store(false, Ordering::Relaxed);
        }
    }
}

/// Clears a subject's in-flight mark when dropped.
struct Release<'a>(&'a Slices, u64);

impl Drop for Release<'_> {
    fn drop(&mut self) {
        self.0.release(self.1);
    }
}

/// The background give-back, every half lease while the store lives.
async fn give_back_unused(store: std::sync::Weak<Inner>) {
    let _sweeping = Sweeping(store.clone());
    loop {
        let Some(inner) = store.upgrade() else { return };
        let Some(lease_us) = inner.batch.as_ref().map(|b| b.config.lease_us) else {
            return;
        };
        let period = Duration::from_micros(lease_us / 2).max(Duration::from_millis(5));
        drop(inner);
        tokio::time::sleep(period).await;
        let Some(inner) = store.upgrade() else { return };
        let store_now = RedisRateLimitStore { inner };
        if let Some(slices) = &store_now.inner.batch {
            store_now.give_back(slices).await;
        }
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
