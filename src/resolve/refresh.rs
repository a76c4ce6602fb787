//! How [`CachedResolver`] loads from its resolver: the deadline on a resolver call, and
//! stale-while-revalidate, serving an entry past its TTL while one background refresh
//! runs and, while refreshes fail, until the entry's stale window ends.
//!
//! The tables themselves (moka, the front table, the threads' copies) are in `cache.rs`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::cache::Slot;
use super::{CachedResolver, KeyResolver, ResolveError, TimedOut};
use crate::clock;
use crate::key::KeyHash;
use crate::metrics;
use crate::record::KeyRecord;

/// After a failed refresh, the stale entry is served from the fast tables this long
/// before the next attempt: a store that is down sees one call per key per interval.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// Takes back what a load kept if an invalidation began after the load's epoch was
/// read: the front table's insert was checked against it, but moka's insert comes
/// later and is not. Dropped half way (the request went away), it still takes it back.
struct TakeBack<'a, R: KeyResolver> {
    cache: &'a CachedResolver<R>,
    hash: KeyHash,
    epoch: u64,
    kept: AtomicBool,
}

impl<R: KeyResolver> TakeBack<'_, R> {
    fn overtaken(&self) -> bool {
        self.kept.swap(false, Ordering::Relaxed)
            && self.cache.inner.epoch.load(Ordering::Acquire) != self.epoch
    }

    async fn now(self) {
        if self.overtaken() {
            self.cache.invalidate(&self.hash).await;
        }
    }
}

impl<R: KeyResolver> Drop for TakeBack<'_, R> {
    fn drop(&mut self) {
        if self.overtaken() {
            // The tables and the threads' copies at once; moka on the runtime.
            self.cache.forget_now(&self.hash);
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let (cache, hash) = (self.cache.clone(), self.hash);
                runtime.spawn(async move { cache.inner.moka.invalidate(&hash).await });
            }
        }
    }
}

impl<R: KeyResolver> CachedResolver<R> {
    /// The slow path: through moka, loading from the resolver on a miss, serving a
    /// stale entry at once while it is refreshed.
    pub(crate) async fn lookup_slow(&self, hash: &KeyHash) -> Result<Slot, ResolveError> {
        let now = clock::mono_nanos();
        // Read before the entry: a refresh of it is only good while no invalidation
        // has begun since.
        let epoch = self.inner.epoch.load(Ordering::Acquire);
        let stale = match self.inner.moka.get(hash).await {
            Some(slot) if slot.is_fresh(now) => {
                self.inner.metrics.hit();
                return Ok(slot);
            }
            Some(slot) if slot.is_servable_stale(now) => {
                if self.refresh_in_background(hash, &slot, epoch) {
                    self.inner.metrics.stale();
                    return Ok(slot);
                }
                // No runtime to refresh in: refresh here, then read the tables again.
                self.refresh(*hash, slot.clone(), epoch).await;
                Some(slot)
            }
            // Past its window; moka's clock may run a hair behind ours.
            Some(_) => {
                self.inner.moka.invalidate(hash).await;
                None
            }
            None => None,
        };
        self.inner.metrics.miss();
        let loaded = match self.load_through_moka(hash).await {
            Ok(slot) if slot.is_fresh(clock::mono_nanos()) => Ok(slot),
            // Not kept (invalidated while loading), or moka handed back an entry that
            // is past its TTL by our clock: drop it and load once more.
            Ok(_) => {
                self.inner.moka.invalidate(hash).await;
                self.load_through_moka(hash).await
            }
            Err(error) => Err(error),
        };
        match (loaded, stale) {
            (Err(_), Some(stale)) if stale.is_servable_stale(clock::mono_nanos()) => Ok(stale),
            (loaded, _) => loaded,
        }
    }

    /// Loads `hash` through moka, so that concurrent misses make one resolver call.
    async fn load_through_moka(&self, hash: &KeyHash) -> Result<Slot, ResolveError> {
        let inner = &self.inner;
        let epoch = inner.epoch.load(Ordering::Acquire);
        let take_back = TakeBack {
            cache: self,
            hash: *hash,
            epoch,
            kept: AtomicBool::new(false),
        };
        let load = async {
            let record = self.load_record(hash).await?;
            let now = clock::mono_nanos();
            let generation = inner.generation.fetch_add(1, Ordering::Relaxed);
            let slot = self.slot_for(*hash, now, generation, record);
            if inner
                .front
                .insert_unless_moved(slot.clone(), &inner.epoch, epoch)
            {
                take_back.kept.store(true, Ordering::Relaxed);
                return Ok::<_, ResolveError>(slot);
            }
            // Invalidated while loading: answer this request, but keep nothing.
            Ok(slot.spent(now))
        };
        let slot = inner
            .moka
            .try_get_with_by_ref(hash, load)
            .await
            .map_err(|e| (*e).clone())?;
        take_back.now().await;
        Ok(slot)
    }

    /// Starts a refresh of a stale entry on the runtime, unless one is under way.
    /// `false`: there is no runtime to start it on.
    fn refresh_in_background(&self, hash: &KeyHash, stale: &Slot, epoch: u64) -> bool {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        if !lock(&self.inner.refreshing).insert(*hash) {
            return true;
        }
        let (this, hash, stale) = (self.clone(), *hash, stale.clone());
        runtime.spawn(async move {
            this.refresh(hash, stale, epoch).await;
            lock(&this.inner.refreshing).remove(&hash);
        });
        true
    }

    /// Loads `hash` again. If the resolver fails, the stale entry is kept (until its
    /// window ends) and tried again after [`RETRY_INTERVAL`]. `epoch` is the one read
    /// before `stale` was: if it moved, an invalidation may have dropped `stale`, and
    /// nothing is kept.
    async fn refresh(&self, hash: KeyHash, stale: Slot, epoch: u64) {
        let inner = &self.inner;
        let result = self.load_record(&hash).await;
        let now = clock::mono_nanos();
        let generation = inner.generation.fetch_add(1, Ordering::Relaxed);
        let slot = match result {
            Ok(record) => self.slot_for(hash, now, generation, record),
            Err(error) => {
                let key_id = stale.auth().map(crate::Authenticated::key_id);
                tracing::debug!(key_id, %error, "a cached key could not be refreshed");
                let retry = now.saturating_add(clock::duration_nanos(RETRY_INTERVAL));
                stale.restamped(retry.min(stale.stamp().stale_until), generation)
            }
        };
        if !inner
            .front
            .insert_unless_moved(slot.clone(), &inner.epoch, epoch)
        {
            return; // invalidated meanwhile: the next request loads
        }
        let take_back = TakeBack {
            cache: self,
            hash,
            epoch,
            kept: AtomicBool::new(true),
        };
        inner.moka.insert(hash, slot).await;
        take_back.now().await;
    }

    /// The resolver's answer for `hash`, within the deadline.
    async fn load_record(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, ResolveError> {
        let timer = metrics::StoreTimer::start();
        let call = self.inner.resolver.resolve(hash);
        let result = match self.inner.load_timeout {
            Some(limit) if tokio::runtime::Handle::try_current().is_ok() => {
                tokio::time::timeout(limit, call)
                    .await
                    .unwrap_or_else(|_| Err(ResolveError::new(TimedOut(limit))))
            }
            _ => call.await,
        };
        timer.finish(metrics::StoreCall::Resolve, result.is_ok());
        result
    }

    /// The entry for what the resolver answered at `now`: fresh for the TTL, then (for
    /// a found record) servable for the stale window.
    fn slot_for(
        &self,
        hash: KeyHash,
        now: u64,
        generation: u64,
        record: Option<KeyRecord>,
    ) -> Slot {
        let inner = &self.inner;
        let (ttl, stale) = match record {
            Some(_) => (inner.ttl, inner.stale_window),
            None => (inner.negative_ttl, Duration::ZERO),
        };
        let fresh_until = now.saturating_add(clock::duration_nanos(ttl));
        let stale_until = fresh_until.saturating_add(clock::duration_nanos(stale));
        Slot::new(hash, fresh_until, stale_until, generation, record)
    }
}

/// The set holds plain hashes; a panic elsewhere while it was locked leaves it valid.
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize};

    use super::*;
    use crate::auth::AuthError;
    use crate::{KeyFormat, KeyStore, MemoryStore};

    /// A resolver over a store that counts its calls, can be made to fail, and can hold
    /// every call after the first until released (or for ever).
    #[derive(Clone, Default)]
    struct Flaky {
        store: MemoryStore,
        calls: Arc<AtomicUsize>,
        failing: Arc<AtomicBool>,
        hold_after_first: Arc<AtomicBool>,
        release: Arc<tokio::sync::Notify>,
    }

    #[async_trait::async_trait]
    impl KeyResolver for Flaky {
        async fn resolve(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, ResolveError> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            if n > 0 && self.hold_after_first.load(Ordering::SeqCst) {
                self.release.notified().await;
            }
            if self.failing.load(Ordering::SeqCst) {
                return Err(ResolveError::new("database is down"));
            }
            self.store.resolve(hash).await
        }
    }

    fn key_in(store: &MemoryStore) -> KeyHash {
        let key = KeyFormat::default().generate();
        store.insert(KeyRecord::new(&key, "acme"));
        key.hash()
    }

    /// Polls `check` until it holds, failing after ten seconds.
    async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !check().await {
            assert!(std::time::Instant::now() < deadline, "waited for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn past_its_ttl_a_record_is_served_at_once_while_one_refresh_runs() {
        let resolver = Flaky::default();
        let hash = key_in(&resolver.store);
        let ttl = Duration::from_millis(1);
        let cache = CachedResolver::builder(resolver.clone()).ttl(ttl).build();
        cache.lookup(&hash).await.unwrap().unwrap();
        // Let the entry go stale. (A load that took over the 1 ms TTL is made twice:
        // count from here.)
        tokio::time::sleep(ttl * 5).await;
        let loads = resolver.calls.load(Ordering::SeqCst);
        // Every refresh is held: were a request waiting for one, it would hang here.
        resolver.hold_after_first.store(true, Ordering::SeqCst);
        let lookups: Vec<_> = (0..100)
            .map(|_| {
                let cache = cache.clone();
                tokio::spawn(async move { cache.lookup(&hash).await })
            })
            .collect();
        for lookup in lookups {
            assert_eq!(lookup.await.unwrap().unwrap().unwrap().consumer(), "acme");
        }
        assert_eq!(
            resolver.calls.load(Ordering::SeqCst),
            loads + 1,
            "one refresh for a hundred stale hits"
        );
        // Once the refresh answers, what it read is served.
        let id = resolver.store.records()[0].id.clone();
        resolver.store.revoke(&id, "test").await.unwrap();
        resolver.hold_after_first.store(false, Ordering::SeqCst);
        resolver.release.notify_waiters();
        eventually("the refreshed record", async || {
            resolver.release.notify_waiters();
            let found = cache.lookup(&hash).await.unwrap().unwrap();
            found.record().revoked_at.is_some()
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn while_the_resolver_fails_a_record_is_served_until_its_stale_window_ends() {
        let resolver = Flaky::default();
        let hash = key_in(&resolver.store);
        let revoked = key_in(&resolver.store);
        let id = resolver
            .store
            .records()
            .into_iter()
            .find(|r| r.hash == revoked)
            .unwrap()
            .id;
        resolver.store.revoke(&id, "test").await.unwrap();
        let window = Duration::from_millis(300);
        let cache = CachedResolver::builder(resolver.clone())
            .ttl(Duration::ZERO)
            .stale_window(window)
            .build();
        // Before the load: the window ends at least `window` from here.
        let started = std::time::Instant::now();
        cache.lookup(&hash).await.unwrap().unwrap();
        cache.lookup(&revoked).await.unwrap().unwrap();
        resolver.failing.store(true, Ordering::SeqCst);
        let mut served = 0;
        // Served (never "unknown") until the window ends, then the resolver's error.
        loop {
            match cache.lookup_slow(&hash).await {
                Ok(slot) => {
                    assert!(slot.into_admitted().is_ok(), "a stale hit was refused");
                    served += 1;
                }
                Err(error) => {
                    assert_eq!(error.to_string(), "key store unavailable: database is down");
                    break;
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "served for ever"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(served > 1, "served {served} times");
        assert!(
            started.elapsed() >= window,
            "refused before the window ended"
        );
        // A record revoked before the outage stays refused when served stale.
        let stale = cache.lookup_slow(&revoked).await;
        assert!(matches!(
            stale.map(Slot::into_admitted),
            Ok(Err(AuthError::InvalidKey)) | Err(_)
        ));
        // Failed refreshes are spaced: one call a second at most, not one a lookup.
        assert!(
            resolver.calls.load(Ordering::SeqCst) < 10,
            "{} calls",
            resolver.calls.load(Ordering::SeqCst)
        );
        // The store is back: the record is loaded again.
        resolver.failing.store(false, Ordering::SeqCst);
        assert!(cache.lookup(&hash).await.unwrap().is_some());
    }

    /// On one thread, the refresh a stale hit spawns runs only when the test yields:
    /// after the invalidation below, which is the order that must keep nothing.
    #[tokio::test(flavor = "current_thread")]
    async fn a_refresh_overtaken_by_an_invalidation_keeps_nothing_even_when_it_fails() {
        let resolver = Flaky::default();
        let hash = key_in(&resolver.store);
        let ttl = Duration::from_millis(1);
        let cache = CachedResolver::builder(resolver.clone()).ttl(ttl).build();
        cache.lookup(&hash).await.unwrap().unwrap();
        std::thread::sleep(ttl * 5); // past the TTL, without letting tasks run
        // (A load that took over the 1 ms TTL is made twice: count from here.)
        let loads = resolver.calls.load(Ordering::SeqCst);
        resolver.failing.store(true, Ordering::SeqCst);
        // A stale hit: served, and a refresh spawned (not yet run).
        cache.lookup(&hash).await.unwrap().unwrap();
        assert_eq!(lock(&cache.inner.refreshing).len(), 1);
        // The key changes elsewhere and the change arrives: the entry is dropped.
        cache.invalidate(&hash).await;
        eventually("the refresh to end", async || {
            lock(&cache.inner.refreshing).is_empty()
        })
        .await;
        assert_eq!(
            resolver.calls.load(Ordering::SeqCst),
            loads + 1,
            "it ran, and failed"
        );
        // The failed refresh did not bring back what was read before the change.
        assert!(
            cache.lookup(&hash).await.is_err(),
            "a record dropped by an invalidation came back"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_a_stale_window_a_lookup_past_the_ttl_waits_for_the_resolver() {
        let resolver = Flaky::default();
        let hash = key_in(&resolver.store);
        let cache = CachedResolver::builder(resolver.clone())
            .ttl(Duration::ZERO)
            .stale_window(Duration::ZERO)
            .build();
        cache.lookup(&hash).await.unwrap().unwrap();
        resolver.failing.store(true, Ordering::SeqCst);
        assert!(cache.lookup(&hash).await.is_err());
    }

    /// Never answers.
    #[derive(Clone, Default)]
    struct Hanging {
        calls: Arc<AtomicUsize>,
    }

    #[async_trait::async_trait]
    impl KeyResolver for Hanging {
        async fn resolve(&self, _: &KeyHash) -> Result<Option<KeyRecord>, ResolveError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            std::future::pending().await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_resolver_fails_at_the_deadline_with_one_call_in_flight() {
        let resolver = Hanging::default();
        let limit = Duration::from_secs(2);
        let cache = CachedResolver::builder(resolver.clone())
            .load_timeout(Some(limit))
            .build();
        let hash = KeyHash::of("sk_live_whatever");
        let started = tokio::time::Instant::now();
        let lookups: Vec<_> = (0..50)
            .map(|_| {
                let cache = cache.clone();
                tokio::spawn(async move { cache.lookup(&hash).await })
            })
            .collect();
        for lookup in lookups {
            let error = lookup.await.unwrap().unwrap_err();
            assert_eq!(
                error.to_string(),
                "key store unavailable: the key store did not answer within 2s"
            );
        }
        // Tokio's clock is paused: it moved exactly as far as the timers asked.
        assert_eq!(started.elapsed(), limit);
        assert_eq!(
            resolver.calls.load(Ordering::SeqCst),
            1,
            "one load in flight"
        );
    }
}
