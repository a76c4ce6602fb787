//! Metrics through the [`metrics`](https://docs.rs/metrics) facade (feature `metrics`).
//!
//! With the feature on, the crate emits the metrics below to whatever recorder the
//! application installs (such as `metrics-exporter-prometheus`); with it off, nothing
//! here is compiled into the request path. No metric carries a key, a key's hash or a
//! key id: per-key series would grow with the number of keys (and the usage API already
//! counts per key).
//!
//! | name | type | labels | meaning |
//! | --- | --- | --- | --- |
//! | `tower_api_key_requests_total` | counter | `outcome` | requests that reached an [`ApiKeyLayer`](crate::ApiKeyLayer), by how they ended (below); each request is counted once, when its answer is ready |
//! | `tower_api_key_cache_lookups_total` | counter | `result`: `hit`, `stale`, `miss` | lookups in a [`CachedResolver`](crate::CachedResolver): answered from the cache while fresh (a hash remembered as unknown included), answered with a stale entry while it is refreshed in the background, or waited for the store |
//! | `tower_api_key_store_call_duration_seconds` | histogram | `operation`: `resolve`, `changes`; `result`: `ok`, `error` | how long calls to the key store took: key loads by the cache (misses and refreshes; a call past its deadline is an `error` of the deadline's length), and reads of its change log by a [`ChangeFollower`](crate::resolve::ChangeFollower) |
//! | `tower_api_key_change_feed_lag_seconds` | histogram | — | for each change a follower applies to its cache, how long after the change was made (by the clock of the instance that made it: clocks apart by more than the lag skew it) |
//! | `tower_api_key_change_feed_last_read_timestamp_seconds` | gauge | — | when a follower last read the change log (Unix time): `time() - tower_api_key_change_feed_last_read_timestamp_seconds` is how long changes made elsewhere may have gone unseen here |
//! | `tower_api_key_redis_fallback` | gauge | — | `1` while a [`RedisRateLimitStore`](crate::ratelimit::RedisRateLimitStore) cannot reach Redis (limits per instance, or its `OnStoreError`), `0` while Redis answers |
//! | `tower_api_key_usage_dropped_total` | counter | — | requests whose usage counts a [`UsageRecorder`](crate::usage::UsageRecorder) dropped because it tracked as many keys as it may between two writes |
//!
//! The `outcome` of `tower_api_key_requests_total`, also the `outcome` field of the
//! request's span ([`auth`](crate::auth)):
//!
//! | outcome | the request |
//! | --- | --- |
//! | `allowed` | was authenticated and answered by the inner service (whatever its status) |
//! | `anonymous` | carried no key and was let through ([`allow_anonymous`](crate::ApiKeyLayer::allow_anonymous)) |
//! | `missing` | carried no key: 401 (also from an extractor behind an anonymous layer) |
//! | `invalid` | carried a malformed or unknown key, or a revoked one that the layer cannot tell apart: 401 |
//! | `revoked` | carried a key known to be revoked: 401 |
//! | `expired` | carried an expired key: 401 |
//! | `conflicting` | carried two different keys: 400 |
//! | `address_not_allowed` | used a key from outside its allowed networks: 403 |
//! | `forbidden` | was refused by a scope check inside the layer ([`RequireScopeLayer`](crate::RequireScopeLayer), the axum extractors): 403 |
//! | `rate_limited` | was refused by a [`RateLimitLayer`](crate::RateLimitLayer) inside the layer: 429 |
//! | `too_many_failures` | came from a client that failed to authenticate too often ([`limit_failures`](crate::ApiKeyLayer::limit_failures)): 429 |
//! | `unavailable` | could not be checked: the key store (or, with `OnStoreError::Deny`, the rate-limit store) did not answer: 503 |
//! | `error` | made the inner service fail (an error, not a response) |
//!
//! A scope refused inside a tonic handler (with [`grpc`](crate::grpc)'s helpers) is the
//! handler's own answer, and counts as `allowed`. A request that passes through two
//! `ApiKeyLayer`s is counted by each.
//!
//! # Installing a recorder
//!
//! Install the recorder before serving. The request and cache counters are registered
//! once per layer (and per cache), at the first request after a recorder is installed,
//! and kept: a request costs one atomic increment per counter, not a lookup of the
//! metric's name. Until a recorder is installed nothing is counted. (A recorder of size
//! zero, such as `metrics::NoopRecorder`, counts as none: every recorder that keeps
//! metrics has a size.) A layer keeps the handles of the first recorder it saw: in
//! tests, set a local recorder (`metrics::set_default_local_recorder`) before the first
//! request and keep it for the test, or build the layer under the recorder you read.
//!
//! [`describe`] gives every metric its description and unit (Prometheus' `HELP` lines);
//! it runs by itself when a layer first registers its counters, and may be called once
//! after installing the recorder so that the descriptions are there from the start.
//!
//! With `metrics-exporter-prometheus`, give the histograms buckets (otherwise it
//! renders them as summaries), for example:
//!
//! ```text
//! PrometheusBuilder::new()
//!     .set_buckets_for_metric(
//!         Matcher::Suffix("_seconds".into()),
//!         &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0],
//!     )?
//!     .install_recorder()?
//! ```

/// Requests that reached an `ApiKeyLayer`, by `outcome` (counter).
pub const REQUESTS_TOTAL: &str = "tower_api_key_requests_total";
/// Cache lookups by `result`: `hit`, `stale`, `miss` (counter).
pub const CACHE_LOOKUPS_TOTAL: &str = "tower_api_key_cache_lookups_total";
/// Key-store call durations by `operation` and `result` (histogram, seconds).
pub const STORE_CALL_DURATION_SECONDS: &str = "tower_api_key_store_call_duration_seconds";
/// From a change being made to it being applied to a cache here (histogram, seconds).
pub const CHANGE_FEED_LAG_SECONDS: &str = "tower_api_key_change_feed_lag_seconds";
/// When the change log was last read (gauge, Unix seconds).
pub const CHANGE_FEED_LAST_READ_TIMESTAMP_SECONDS: &str =
    "tower_api_key_change_feed_last_read_timestamp_seconds";
/// 1 while the Redis rate-limit store cannot reach Redis, else 0 (gauge).
pub const REDIS_FALLBACK: &str = "tower_api_key_redis_fallback";
/// Usage counts dropped by the usage recorder's bound (counter).
pub const USAGE_DROPPED_TOTAL: &str = "tower_api_key_usage_dropped_total";

/// Every metric's name.
pub const ALL: [&str; 7] = [
    REQUESTS_TOTAL,
    CACHE_LOOKUPS_TOTAL,
    STORE_CALL_DURATION_SECONDS,
    CHANGE_FEED_LAG_SECONDS,
    CHANGE_FEED_LAST_READ_TIMESTAMP_SECONDS,
    REDIS_FALLBACK,
    USAGE_DROPPED_TOTAL,
];

/// Which store call a duration is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StoreCall {
    /// A key load by the cache.
    Resolve,
    /// A read of the change log.
    Changes,
}

#[cfg(feature = "metrics")]
pub use enabled::describe;
#[cfg(feature = "metrics")]
pub(crate) use enabled::*;

#[cfg(not(feature = "metrics"))]
pub(crate) use disabled::*;

#[cfg(feature = "metrics")]
mod enabled {
    use std::sync::OnceLock;
    use std::time::SystemTime;

    use ::metrics::{Counter, Unit, counter, gauge, histogram};

    use super::*;
    use crate::auth::Outcome;
    use crate::clock;

    /// Gives every metric its description and unit, for the recorder installed now.
    pub fn describe() {
        ::metrics::describe_counter!(
            REQUESTS_TOTAL,
            Unit::Count,
            "Requests that reached an ApiKeyLayer, by outcome."
        );
        ::metrics::describe_counter!(
            CACHE_LOOKUPS_TOTAL,
            Unit::Count,
            "Key cache lookups: hit (fresh), stale (served while refreshed) or miss (waited for the store)."
        );
        ::metrics::describe_histogram!(
            STORE_CALL_DURATION_SECONDS,
            Unit::Seconds,
            "Key store calls: key loads (resolve) and change log reads (changes), by result."
        );
        ::metrics::describe_histogram!(
            CHANGE_FEED_LAG_SECONDS,
            Unit::Seconds,
            "From a key change being made to this instance's cache applying it."
        );
        ::metrics::describe_gauge!(
            CHANGE_FEED_LAST_READ_TIMESTAMP_SECONDS,
            Unit::Seconds,
            "When the store's change log was last read (Unix time)."
        );
        ::metrics::describe_gauge!(
            REDIS_FALLBACK,
            "1 while the Redis rate-limit store cannot reach Redis, 0 while it answers."
        );
        ::metrics::describe_counter!(
            USAGE_DROPPED_TOTAL,
            Unit::Count,
            "Usage counts dropped because the usage recorder tracked as many keys as it may."
        );
    }

    /// Is a recorder installed (or set for this thread)? The no-op recorder that the
    /// facade falls back to has no size; every recorder that keeps metrics has one.
    fn recorder_installed() -> bool {
        ::metrics::with_recorder(|recorder| std::mem::size_of_val(recorder) != 0)
    }

    /// Handles registered once, with the first recorder installed; none before.
    struct Registered<T>(OnceLock<T>);

    impl<T> Default for Registered<T> {
        fn default() -> Self {
            Self(OnceLock::new())
        }
    }

    impl<T> Registered<T> {
        #[inline]
        fn get(&self, register: impl FnOnce() -> T) -> Option<&T> {
            if let Some(handles) = self.0.get() {
                return Some(handles);
            }
            self.init(register)
        }

        #[cold]
        fn init(&self, register: impl FnOnce() -> T) -> Option<&T> {
            if !recorder_installed() {
                return None;
            }
            Some(self.0.get_or_init(|| {
                describe();
                register()
            }))
        }
    }

    /// One counter a label value of `tower_api_key_requests_total`.
    pub(crate) struct RequestCounters([Counter; Outcome::COUNT]);

    impl RequestCounters {
        fn register() -> Self {
            Self(Outcome::ALL.map(|outcome| counter!(REQUESTS_TOTAL, "outcome" => outcome.name())))
        }
    }

    /// A layer's request counters, registered at its first request after a recorder
    /// was installed. They live as long as the process (a few hundred bytes a layer):
    /// a request's future holds a plain reference to them, where an `Arc` would write
    /// a shared reference count twice per request.
    #[derive(Default)]
    pub(crate) struct Requests(Registered<&'static RequestCounters>);

    impl Clone for Requests {
        fn clone(&self) -> Self {
            let clone = Self::default();
            if let Some(handles) = self.0.0.get() {
                let _ = clone.0.0.set(handles);
            }
            clone
        }
    }

    impl std::fmt::Debug for Requests {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Requests")
                .field("registered", &self.0.0.get().is_some())
                .finish()
        }
    }

    impl Requests {
        /// Where this request is counted when it ends.
        #[inline]
        pub(crate) fn tally(&self) -> Tally {
            Tally(
                self.0
                    .get(|| &*Box::leak(Box::new(RequestCounters::register())))
                    .copied(),
            )
        }
    }

    /// Where one request is counted: its layer's counters, or nowhere.
    #[derive(Clone, Copy)]
    pub(crate) struct Tally(Option<&'static RequestCounters>);

    impl Tally {
        /// Counts nothing.
        pub(crate) const OFF: Self = Self(None);

        /// Does it count?
        #[inline]
        pub(crate) fn is_on(&self) -> bool {
            self.0.is_some()
        }

        /// Counts one request that ended with `outcome`.
        #[inline]
        pub(crate) fn count(self, outcome: Outcome) {
            if let Some(counters) = self.0 {
                counters.0[outcome as usize].increment(1);
            }
        }
    }

    /// A cache's lookup counters: `hit`, `stale`, `miss`.
    #[derive(Default)]
    pub(crate) struct CacheLookups(Registered<[Counter; 3]>);

    impl CacheLookups {
        #[inline]
        fn count(&self, i: usize) {
            let register = || {
                ["hit", "stale", "miss"]
                    .map(|result| counter!(CACHE_LOOKUPS_TOTAL, "result" => result))
            };
            if let Some(counters) = self.0.get(register) {
                counters[i].increment(1);
            }
        }

        /// A lookup answered from a fresh entry.
        #[inline]
        pub(crate) fn hit(&self) {
            self.count(0);
        }

        /// A lookup answered from a stale entry while it is refreshed.
        #[inline]
        pub(crate) fn stale(&self) {
            self.count(1);
        }

        /// A lookup that waited for the store.
        #[inline]
        pub(crate) fn miss(&self) {
            self.count(2);
        }
    }

    /// Times one store call.
    pub(crate) struct StoreTimer(u64);

    impl StoreTimer {
        /// Starts timing now.
        pub(crate) fn start() -> Self {
            Self(clock::mono_nanos())
        }

        /// Records the call's duration.
        pub(crate) fn finish(self, call: StoreCall, ok: bool) {
            let seconds = clock::mono_nanos().saturating_sub(self.0) as f64 / 1e9;
            let histogram = match (call, ok) {
                (StoreCall::Resolve, true) => histogram!(
                    STORE_CALL_DURATION_SECONDS, "operation" => "resolve", "result" => "ok"
                ),
                (StoreCall::Resolve, false) => histogram!(
                    STORE_CALL_DURATION_SECONDS, "operation" => "resolve", "result" => "error"
                ),
                (StoreCall::Changes, true) => histogram!(
                    STORE_CALL_DURATION_SECONDS, "operation" => "changes", "result" => "ok"
                ),
                (StoreCall::Changes, false) => histogram!(
                    STORE_CALL_DURATION_SECONDS, "operation" => "changes", "result" => "error"
                ),
            };
            histogram.record(seconds);
        }
    }

    /// A change made at `at` was applied to a cache now.
    pub(crate) fn change_applied(at: SystemTime) {
        let lag = SystemTime::now()
            .duration_since(at)
            .unwrap_or_default()
            .as_secs_f64();
        histogram!(CHANGE_FEED_LAG_SECONDS).record(lag);
    }

    /// The change log was read now.
    pub(crate) fn change_log_read() {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        gauge!(CHANGE_FEED_LAST_READ_TIMESTAMP_SECONDS).set(now);
    }

    /// The Redis rate-limit store falls back (`true`), or reaches Redis again.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn redis_fallback(on: bool) {
        gauge!(REDIS_FALLBACK).set(if on { 1.0 } else { 0.0 });
    }

    /// The usage recorder dropped one request's counts.
    pub(crate) fn usage_dropped() {
        counter!(USAGE_DROPPED_TOTAL).increment(1);
    }
}

/// The same calls, doing nothing: with the feature off they compile to nothing.
#[cfg(not(feature = "metrics"))]
mod disabled {
    use std::time::SystemTime;

    use super::StoreCall;
    use crate::auth::Outcome;

    #[derive(Debug, Default, Clone)]
    pub(crate) struct Requests;

    impl Requests {
        #[inline(always)]
        pub(crate) fn tally(&self) -> Tally {
            Tally
        }
    }

    #[derive(Clone, Copy)]
    pub(crate) struct Tally;

    impl Tally {
        pub(crate) const OFF: Self = Self;

        #[inline(always)]
        pub(crate) fn is_on(&self) -> bool {
            false
        }

        #[inline(always)]
        pub(crate) fn count(self, _: Outcome) {}
    }

    #[derive(Default)]
    pub(crate) struct CacheLookups;

    impl CacheLookups {
        #[inline(always)]
        pub(crate) fn hit(&self) {}
        #[inline(always)]
        pub(crate) fn stale(&self) {}
        #[inline(always)]
        pub(crate) fn miss(&self) {}
    }

    pub(crate) struct StoreTimer;

    impl StoreTimer {
        #[inline(always)]
        pub(crate) fn start() -> Self {
            Self
        }
        #[inline(always)]
        pub(crate) fn finish(self, _: StoreCall, _: bool) {}
    }

    #[inline(always)]
    pub(crate) fn change_applied(_: SystemTime) {}
    #[inline(always)]
    pub(crate) fn change_log_read() {}
    #[inline(always)]
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn redis_fallback(_: bool) {}
    #[inline(always)]
    pub(crate) fn usage_dropped() {}
}

#[cfg(all(test, feature = "metrics"))]
mod tests {
    use std::collections::BTreeMap;
    use std::convert::Infallible;
    use std::time::{Duration, SystemTime};

    use ::metrics::Unit;
    use http::{Request, Response};
    use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
    use tower::{ServiceExt, service_fn};
    use tower_layer::Layer;

    use super::*;
    use crate::auth::Outcome;
    use crate::store::{ChangeFeed, NewKey};
    use crate::usage::UsageRecorder;
    use crate::{
        ApiKeyLayer, CachedResolver, KeyFormat, KeyRecord, KeyStore, MemoryRateLimitStore,
        MemoryStore, RateLimitLayer, RateLimitPolicy, RequireScopeLayer, Scope,
    };

    /// Every metric the recorder saw since the last snapshot, as `name{k=v,…}` (labels
    /// sorted), with its value, unit and description.
    fn snapshot(
        snapshotter: &Snapshotter,
    ) -> BTreeMap<String, (DebugValue, Option<Unit>, Option<String>)> {
        snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(key, unit, description, value)| {
                let key = key.key();
                let mut labels: Vec<_> = key
                    .labels()
                    .map(|l| format!("{}={}", l.key(), l.value()))
                    .collect();
                labels.sort();
                let name = format!("{}{{{}}}", key.name(), labels.join(","));
                (name, (value, unit, description.map(|d| d.to_string())))
            })
            .collect()
    }

    fn counter(
        seen: &BTreeMap<String, (DebugValue, Option<Unit>, Option<String>)>,
        name: &str,
    ) -> u64 {
        match seen.get(name) {
            Some((DebugValue::Counter(n), ..)) => *n,
            other => panic!("{name}: {other:?} in {seen:#?}"),
        }
    }

    fn get(key: Option<&str>) -> Request<String> {
        let mut req = Request::get("/");
        if let Some(key) = key {
            req = req.header("x-api-key", key);
        }
        req.body(String::new()).unwrap()
    }

    async fn ok(_: Request<String>) -> Result<Response<String>, Infallible> {
        Ok(Response::new("ok".to_owned()))
    }

    #[tokio::test(flavor = "current_thread")]
    async fn each_request_is_counted_once_by_outcome_with_no_key_in_any_label() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let _local = ::metrics::set_default_local_recorder(&recorder);

        let store = MemoryStore::new();
        let format = KeyFormat::default();
        let (active, revoked) = (format.generate(), format.generate());
        let active_record = KeyRecord::new(&active, "acme");
        let revoked_record = KeyRecord::new(&revoked, "acme")
            .with_revoked_at(SystemTime::now() - Duration::from_secs(1));
        let ids = [active_record.id.clone(), revoked_record.id.clone()];
        store.insert(active_record);
        store.insert(revoked_record);
        let auth = ApiKeyLayer::new(store).source(crate::KeySource::header(
            http::HeaderName::from_static("x-api-key"),
        ));
        let limits = RateLimitLayer::new(
            MemoryRateLimitStore::new(),
            RateLimitPolicy::rate("per-minute", 2, Duration::from_secs(60)).unwrap(),
        );
        let limited = auth.layer(limits.layer(service_fn(ok)));
        let scoped = auth.layer(
            RequireScopeLayer::new([Scope::from_static("orders:read")]).layer(service_fn(ok)),
        );

        let (active_key, revoked_key) = (active.expose_secret(), revoked.expose_secret());
        let malformed = &active_key[..active_key.len() - 1];
        let requests = [
            (&limited, Some(active_key)),  // allowed (a miss)
            (&limited, Some(active_key)),  // allowed (a hit)
            (&limited, Some(active_key)),  // rate_limited (a hit)
            (&limited, None),              // missing
            (&limited, Some(malformed)),   // invalid
            (&limited, Some("sk_live_x")), // invalid
            (&limited, Some(revoked_key)), // revoked (a miss)
            (&limited, Some(revoked_key)), // revoked (a hit)
        ];
        for (service, key) in requests {
            service.clone().oneshot(get(key)).await.unwrap();
        }
        scoped.oneshot(get(Some(active_key))).await.unwrap(); // forbidden (a hit)

        let seen = snapshot(&snapshotter);
        let expected = [
            ("allowed", 2),
            ("rate_limited", 1),
            ("missing", 1),
            ("invalid", 2),
            ("revoked", 2),
            ("forbidden", 1),
        ];
        for outcome in Outcome::ALL {
            let name = format!("{REQUESTS_TOTAL}{{outcome={}}}", outcome.name());
            let want = expected
                .iter()
                .find(|(o, _)| *o == outcome.name())
                .map_or(0, |(_, n)| *n);
            assert_eq!(counter(&seen, &name), want, "{name}");
        }
        let (_, unit, description) = &seen[&format!("{REQUESTS_TOTAL}{{outcome=allowed}}")];
        assert_eq!(*unit, Some(Unit::Count));
        assert!(description.as_deref().unwrap().contains("by outcome"));
        let lookups =
            |result: &str| counter(&seen, &format!("{CACHE_LOOKUPS_TOTAL}{{result={result}}}"));
        assert_eq!(
            (lookups("hit"), lookups("stale"), lookups("miss")),
            (4, 0, 2),
            "two keys loaded, then hit"
        );
        match &seen[&format!("{STORE_CALL_DURATION_SECONDS}{{operation=resolve,result=ok}}")].0 {
            DebugValue::Histogram(samples) => {
                assert_eq!(samples.len(), 2, "one load a key");
                assert!(
                    samples.iter().all(|s| s.0 >= 0.0 && s.0 < 10.0),
                    "{samples:?}"
                );
            }
            other => panic!("{other:?}"),
        }
        for name in seen.keys() {
            assert!(name.starts_with("tower_api_key_"), "{name}");
            assert!(
                ALL.iter().any(|n| name.starts_with(&format!("{n}{{"))),
                "{name}"
            );
            for secret in [active_key, revoked_key, &ids[0], &ids[1], "key_id"] {
                assert!(!name.contains(secret), "{name}");
            }
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_layer_used_before_a_recorder_was_installed_counts_once_there_is_one() {
        let store = MemoryStore::new();
        let key = KeyFormat::default().generate();
        store.insert(KeyRecord::new(&key, "acme"));
        let service = ApiKeyLayer::new(store).layer(service_fn(ok));
        let header = || {
            Request::get("/")
                .header("authorization", format!("Bearer {}", key.expose_secret()))
                .body(String::new())
                .unwrap()
        };
        // No recorder: nothing is registered, and nothing kept that would stay a no-op.
        service.clone().oneshot(header()).await.unwrap();
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let _local = ::metrics::set_default_local_recorder(&recorder);
        service.clone().oneshot(header()).await.unwrap();
        service.oneshot(header()).await.unwrap();
        let seen = snapshot(&snapshotter);
        assert_eq!(
            counter(&seen, &format!("{REQUESTS_TOTAL}{{outcome=allowed}}")),
            2
        );
        assert_eq!(
            counter(&seen, &format!("{CACHE_LOOKUPS_TOTAL}{{result=hit}}")),
            2
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn stale_hits_failed_loads_and_the_change_feed_are_measured() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let _local = ::metrics::set_default_local_recorder(&recorder);

        let store = MemoryStore::new();
        let ttl = Duration::from_millis(1);
        let cache = CachedResolver::builder(store.clone()).ttl(ttl).build();
        let follower = cache.follow(store.clone());
        // The follower starts from where the log stands when it first reads it: after
        // one change has been applied, the next one is surely read as a change.
        store.create(NewKey::new("first"), "admin").await.unwrap();
        follower.applied(store.last_seq().await.unwrap()).await;
        let _ = snapshotter.snapshot();
        let before = SystemTime::now();
        let created = store.create(NewKey::new("acme"), "admin").await.unwrap();
        follower.applied(store.last_seq().await.unwrap()).await;
        let hash = created.record.hash;
        cache.lookup(&hash).await.unwrap().unwrap();
        // Past the TTL, within the stale window: served stale while refreshed.
        tokio::time::sleep(ttl * 5).await;
        cache.lookup(&hash).await.unwrap().unwrap();
        let seen = snapshot(&snapshotter);
        let lookups =
            |result: &str| counter(&seen, &format!("{CACHE_LOOKUPS_TOTAL}{{result={result}}}"));
        assert_eq!((lookups("stale"), lookups("miss")), (1, 1));
        match &seen[&format!("{CHANGE_FEED_LAG_SECONDS}{{}}")].0 {
            DebugValue::Histogram(lags) => {
                assert_eq!(lags.len(), 1, "one change applied");
                assert!(lags[0].0 >= 0.0 && lags[0].0 < 10.0, "{lags:?}");
            }
            other => panic!("{other:?}"),
        }
        match &seen[&format!("{CHANGE_FEED_LAST_READ_TIMESTAMP_SECONDS}{{}}")].0 {
            DebugValue::Gauge(at) => {
                let before = before.duration_since(SystemTime::UNIX_EPOCH).unwrap();
                assert!((at.0 - before.as_secs_f64()).abs() < 10.0, "{at}");
            }
            other => panic!("{other:?}"),
        }
        assert!(seen.contains_key(&format!(
            "{STORE_CALL_DURATION_SECONDS}{{operation=changes,result=ok}}"
        )));

        // A store that fails: the load is measured as an error.
        #[derive(Clone)]
        struct Down;
        #[async_trait::async_trait]
        impl crate::KeyResolver for Down {
            async fn resolve(
                &self,
                _: &crate::KeyHash,
            ) -> Result<Option<KeyRecord>, crate::ResolveError> {
                Err(crate::ResolveError::new("down"))
            }
        }
        let down = CachedResolver::new(Down);
        assert!(down.lookup(&hash).await.is_err());
        let seen = snapshot(&snapshotter);
        match &seen[&format!("{STORE_CALL_DURATION_SECONDS}{{operation=resolve,result=error}}")].0 {
            DebugValue::Histogram(samples) => assert_eq!(samples.len(), 1),
            other => panic!("{other:?}"),
        }
        drop(follower);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn usage_drops_and_the_redis_fallback_are_reported() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let _local = ::metrics::set_default_local_recorder(&recorder);
        // Room for one key a shard: of 40 keys, some share a shard and are dropped.
        let usage =
            UsageRecorder::spawn_with_max_keys(MemoryStore::new(), Duration::from_secs(3600), 1);
        for i in 0..40 {
            usage.record(
                &format!("key_{i}"),
                crate::store::Outcome::Allowed,
                SystemTime::now(),
            );
        }
        assert!(usage.dropped() > 0);
        redis_fallback(true);
        let seen = snapshot(&snapshotter);
        assert_eq!(
            counter(&seen, &format!("{USAGE_DROPPED_TOTAL}{{}}")),
            usage.dropped()
        );
        assert_eq!(
            seen[&format!("{REDIS_FALLBACK}{{}}")].0,
            DebugValue::Gauge(1.0.into())
        );
        redis_fallback(false);
        assert_eq!(
            snapshot(&snapshotter)[&format!("{REDIS_FALLBACK}{{}}")].0,
            DebugValue::Gauge(0.0.into())
        );
        usage.shutdown().await;
    }

    #[test]
    fn every_metric_is_described_and_named_for_prometheus() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        ::metrics::with_local_recorder(&recorder, || {
            describe();
            // Described metrics appear once they are registered.
            for name in ALL {
                let _ = ::metrics::counter!(name);
                let _ = ::metrics::gauge!(name);
                let _ = ::metrics::histogram!(name);
            }
        });
        let seen = snapshotter.snapshot().into_vec();
        for name in ALL {
            assert!(name.starts_with("tower_api_key_"));
            assert!(
                name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{name}"
            );
            assert!(
                seen.iter()
                    .any(|(key, _, description, _)| key.key().name() == name
                        && description.is_some()),
                "{name} has no description"
            );
        }
    }
}
