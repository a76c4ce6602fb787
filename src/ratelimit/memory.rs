use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex};

use super::gcra;
use super::policy::{RateLimitPolicy, RateLimits};
use super::store::{Decision, PolicyStatus, RateLimitStore, RateLimitStoreError, Subject};
use crate::seeded::{GOLDEN, mum};

const DEFAULT_CAPACITY: usize = 1_000_000;
/// A shard is swept for idle entries when it has grown to twice its size after the last
/// sweep (and at least this much).
const MIN_SWEEP: usize = 1024;

/// Limiter state in this process: sharded, bounded, and self-cleaning.
///
/// Each (subject, policy) pair is one `u64 → u64` entry in one of many mutex-guarded
/// shards, chosen by a per-process seeded hash of the subject so that all of a
/// subject's policies are charged under one lock. Entries whose state has returned to
/// a fresh one (a rate whose budget is whole again, a quota of a past window) are
/// swept out as the shard grows, with no call from the user; past `capacity` entries
/// the most idle ones are evicted, which can only give their subjects back budget they
/// had already regained or nearly so.
///
/// Clones share the state.
#[derive(Clone)]
pub struct MemoryRateLimitStore {
    inner: Arc<Inner>,
}

struct Inner {
    shards: Box<[Shard]>,
    mask: usize,
    per_shard: usize,
}

#[repr(align(128))]
struct Shard(Mutex<ShardState>);

struct ShardState {
    map: HashMap<u64, u64, BuildHasherDefault<IdentityHasher>>,
    sweep_at: usize,
}

/// The map's keys are already seeded hashes: use them as they are.
#[derive(Default)]
struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

impl std::fmt::Debug for MemoryRateLimitStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryRateLimitStore")
            .field("entries", &self.len())
            .finish_non_exhaustive()
    }
}

impl Default for MemoryRateLimitStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryRateLimitStore {
    /// A store holding at most 1 000 000 (subject, policy) entries.
    pub fn new() -> Self {
        Self::with_capacity(DEFAULT_CAPACITY)
    }

    /// A store holding at most about `capacity` (subject, policy) entries.
    pub fn with_capacity(capacity: usize) -> Self {
        let shards = std::thread::available_parallelism()
            .map_or(16, |n| n.get() * 16)
            .next_power_of_two()
            .clamp(16, 1024);
        Self {
            inner: Arc::new(Inner {
                shards: (0..shards)
                    .map(|_| {
                        Shard(Mutex::new(ShardState {
                            map: HashMap::default(),
                            sweep_at: MIN_SWEEP,
                        }))
                    })
                    .collect(),
                mask: shards - 1,
                per_shard: capacity.div_ceil(shards).max(1),
            }),
        }
    }

    /// How many (subject, policy) entries are tracked.
    pub fn len(&self) -> usize {
        self.inner.shards.iter().map(|s| lock(s).map.len()).sum()
    }

    /// Nothing tracked?
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held by the entry tables (their allocated capacity, control bytes included).
    pub fn table_bytes(&self) -> usize {
        let per_bucket = std::mem::size_of::<(u64, u64)>() + 1;
        self.inner
            .shards
            .iter()
            .map(|s| lock(s).map.capacity() * per_bucket)
            .sum()
    }

    /// Charges `cost` against `policies` for `subject` at `now` (Unix nanoseconds),
    /// all or nothing. The same as [`RateLimitStore::check`], without awaiting.
    pub fn check_now(
        &self,
        subject: Subject<'_>,
        policies: &[RateLimitPolicy],
        cost: u32,
        now: u64,
    ) -> Decision {
        let inner = &*self.inner;
        // Already seeded for the process: a client cannot aim its subjects at a shard.
        let subject_hash = subject.digest();
        let shard = &inner.shards[(subject_hash >> 48) as usize & inner.mask];
        let policies = &policies[..policies.len().min(RateLimits::MAX)];
        if let [policy] = policies {
            return self.check_one(shard, subject_hash, policy, cost, now);
        }
        let mut keys = [0u64; RateLimits::MAX];
        let mut states = [0u64; RateLimits::MAX];
        let mut statuses = [PolicyStatus::default(); RateLimits::MAX];
        let mut allowed = true;

        let mut state = lock(shard);
        for (i, policy) in policies.iter().enumerate() {
            keys[i] = entry_key(subject_hash, policy.name_hash());
            let current = state.map.get(&keys[i]).copied().unwrap_or(0);
            let outcome = gcra::check(&policy.limit(), current, now, cost);
            allowed &= outcome.allowed;
            states[i] = outcome.state;
            statuses[i] = PolicyStatus {
                allowed: outcome.allowed,
                remaining: outcome.remaining,
                reset: outcome.reset,
                retry_after: outcome.retry_after,
            };
        }
        if allowed {
            for i in 0..policies.len() {
                state.map.insert(keys[i], states[i]);
            }
            state.maintain(now, inner.per_shard);
        } else {
            // Nothing was charged: report what the allowing policies really have left.
            for (i, policy) in policies.iter().enumerate() {
                if statuses[i].allowed {
                    let current = state.map.get(&keys[i]).copied().unwrap_or(0);
                    let uncharged = gcra::check(&policy.limit(), current, now, 0);
                    statuses[i].remaining = uncharged.remaining;
                    statuses[i].reset = uncharged.reset;
                }
            }
        }
        drop(state);
        Decision::new(statuses.into_iter().take(policies.len()))
    }
}

impl MemoryRateLimitStore {
    /// One policy, the common case: one map lookup.
    fn check_one(
        &self,
        shard: &Shard,
        subject_hash: u64,
        policy: &RateLimitPolicy,
        cost: u32,
        now: u64,
    ) -> Decision {
        let key = entry_key(subject_hash, policy.name_hash());
        let mut state = lock(shard);
        let slot = state.map.entry(key).or_insert(0);
        let outcome = gcra::check(&policy.limit(), *slot, now, cost);
        *slot = outcome.state;
        if outcome.allowed {
            state.maintain(now, self.inner.per_shard);
        }
        drop(state);
        Decision::new([PolicyStatus {
            allowed: outcome.allowed,
            remaining: outcome.remaining,
            reset: outcome.reset,
            retry_after: outcome.retry_after,
        }])
    }
}

impl ShardState {
    /// Sweeps idle entries when the shard has doubled since the last sweep, and evicts
    /// the most idle ones past the shard's capacity.
    fn maintain(&mut self, now: u64, capacity: usize) {
        let len = self.map.len();
        if len < self.sweep_at && len <= capacity {
            return;
        }
        self.map.retain(|_, state| !gcra::is_idle(*state, now));
        if self.map.len() > capacity {
            // Rate states hold their theoretical arrival time: the smallest are the
            // nearest to idle. Keep the `capacity` largest.
            let mut values: Vec<u64> = self.map.values().copied().collect();
            let cut = values.len() - capacity;
            let (_, &mut threshold, _) = values.select_nth_unstable(cut);
            let mut over = self.map.len() - capacity;
            self.map.retain(|_, v| {
                if over > 0 && *v < threshold {
                    over -= 1;
                    false
                } else {
                    true
                }
            });
            if self.map.len() > capacity {
                let extra: Vec<u64> = self
                    .map
                    .iter()
                    .filter(|(_, v)| **v == threshold)
                    .map(|(k, _)| *k)
                    .take(self.map.len() - capacity)
                    .collect();
                for k in extra {
                    self.map.remove(&k);
                }
            }
        }
        self.sweep_at = (self.map.len() * 2).max(MIN_SWEEP);
    }
}

/// The key of one (subject, policy) entry: a folded multiply of the two hashes.
fn entry_key(subject: u64, policy: u64) -> u64 {
    mum(subject ^ policy, GOLDEN) ^ subject
}

fn lock(shard: &Shard) -> std::sync::MutexGuard<'_, ShardState> {
    // The maps hold plain numbers; a panic elsewhere cannot leave them inconsistent.
    shard.0.lock().unwrap_or_else(|e| e.into_inner())
}

#[async_trait::async_trait]
impl RateLimitStore for MemoryRateLimitStore {
    async fn check(
        &self,
        subject: Subject<'_>,
        policies: &[RateLimitPolicy],
        cost: u32,
        now: u64,
    ) -> Result<Decision, RateLimitStoreError> {
        Ok(self.check_now(subject, policies, cost, now))
    }

    fn check_sync(
        &self,
        subject: Subject<'_>,
        policies: &[RateLimitPolicy],
        cost: u32,
        now: u64,
    ) -> Option<Result<Decision, RateLimitStoreError>> {
        Some(Ok(self.check_now(subject, policies, cost, now)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::QuotaWindow;
    use std::time::Duration;

    const S: u64 = 1_000_000_000;
    const T0: u64 = 1_795_392_000 * S;

    fn rate(name: &str, requests: u32, secs: u64) -> RateLimitPolicy {
        RateLimitPolicy::rate(name, requests, Duration::from_secs(secs)).unwrap()
    }

    #[test]
    fn subject_hash_depends_on_kind_and_id() {
        // Its dependence on the seed is `seeded`'s test.
        let h = |k: Subject<'_>| k.digest();
        assert_ne!(h(Subject::key("a")), h(Subject::consumer("a")));
        assert_ne!(h(Subject::key("a")), h(Subject::key("b")));
        assert_ne!(h(Subject::key("abcdefgh1")), h(Subject::key("abcdefgh2")));
    }

    #[test]
    fn a_caller_from_the_cache_shares_the_budget_of_its_plain_subject() {
        let key = crate::KeyFormat::default().generate();
        let record = crate::KeyRecord::new(&key, "acme");
        let id = record.id.clone();
        let auth = crate::Authenticated::new(record);
        let store = MemoryRateLimitStore::new();
        let p = [rate("r", 2, 60)];
        assert!(store.check_now(auth.key_subject(), &p, 1, T0).allowed());
        assert!(store.check_now(Subject::key(&id), &p, 1, T0).allowed());
        assert!(!store.check_now(auth.key_subject(), &p, 1, T0).allowed());
        assert!(
            store
                .check_now(auth.consumer_subject(), &p, 2, T0)
                .allowed()
        );
        assert!(
            !store
                .check_now(Subject::consumer("acme"), &p, 1, T0)
                .allowed()
        );
        assert_eq!(store.len(), 2);
    }

    #[test]
    fn kinds_never_share_a_budget() {
        let store = MemoryRateLimitStore::new();
        let p = [rate("burst", 1, 60)];
        assert!(store.check_now(Subject::key("x"), &p, 1, T0).allowed());
        assert!(store.check_now(Subject::consumer("x"), &p, 1, T0).allowed());
        assert!(
            store
                .check_now(Subject::custom("peer", "x"), &p, 1, T0)
                .allowed()
        );
        assert!(!store.check_now(Subject::key("x"), &p, 1, T0).allowed());
    }

    #[test]
    fn subjects_are_independent() {
        let store = MemoryRateLimitStore::new();
        let p = [rate("burst", 2, 60)];
        assert!(store.check_now(Subject::key("a"), &p, 1, T0).allowed());
        assert!(store.check_now(Subject::key("a"), &p, 1, T0).allowed());
        assert!(!store.check_now(Subject::key("a"), &p, 1, T0).allowed());
        assert!(store.check_now(Subject::key("b"), &p, 1, T0).allowed());
    }

    #[test]
    fn all_or_nothing_across_policies() {
        let store = MemoryRateLimitStore::new();
        let daily = RateLimitPolicy::quota("daily", 3, QuotaWindow::Day).unwrap();
        let p = [rate("burst", 2, 60), daily];
        assert!(store.check_now(Subject::key("k"), &p, 2, T0).allowed());
        // burst is spent; the denial must not spend the daily quota.
        for _ in 0..5 {
            let d = store.check_now(Subject::key("k"), &p, 1, T0);
            assert!(!d.allowed());
            assert!(!d.statuses()[0].allowed);
            assert!(d.statuses()[1].allowed);
            assert_eq!(
                d.statuses()[1].remaining,
                1,
                "the daily quota was not charged"
            );
        }
        // After the burst refills the daily quota still has exactly one left.
        let later = T0 + 60 * S;
        assert!(store.check_now(Subject::key("k"), &p, 1, later).allowed());
        let d = store.check_now(Subject::key("k"), &p, 1, later);
        assert!(!d.allowed());
        assert!(d.statuses()[0].allowed);
        assert!(!d.statuses()[1].allowed);
    }

    #[test]
    fn idle_entries_are_swept_without_a_cleanup_call() {
        let store = MemoryRateLimitStore::with_capacity(1_000_000);
        let p = [rate("burst", 10, 1)];
        for i in 0..100_000 {
            store.check_now(Subject::key(&format!("s{i}")), &p, 1, T0);
        }
        assert_eq!(store.len(), 100_000);
        // A second later every one of them is idle; new traffic sweeps them out.
        let later = T0 + 2 * S;
        for i in 0..100_000 {
            store.check_now(Subject::key(&format!("t{i}")), &p, 1, later);
        }
        assert!(store.len() < 150_000, "{} entries", store.len());
    }

    #[test]
    fn capacity_bounds_memory_even_when_nothing_is_idle() {
        let store = MemoryRateLimitStore::with_capacity(10_000);
        let p = [rate("slow", 1, 3600)];
        for i in 0..100_000 {
            store.check_now(Subject::key(&format!("s{i}")), &p, 1, T0 + i);
        }
        let shards = store.inner.shards.len();
        assert!(store.len() <= 10_000 + shards, "{} entries", store.len());
    }

    #[test]
    fn eight_threads_times_a_thousand_requests_allow_exactly_the_budget() {
        let store = MemoryRateLimitStore::new();
        let p = [rate("burst", 500, 3600)];
        let allowed = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    for _ in 0..1000 {
                        if store.check_now(Subject::key("hot"), &p, 1, T0).allowed() {
                            allowed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(allowed.into_inner(), 500);
    }

    #[test]
    fn bytes_per_tracked_key_at_a_million_keys() {
        let store = MemoryRateLimitStore::with_capacity(2_000_000);
        let p = [rate("burst", 10, 60)];
        for i in 0..1_000_000u32 {
            store.check_now(Subject::key(&i.to_string()), &p, 1, T0);
        }
        assert_eq!(store.len(), 1_000_000);
        let per_key = store.table_bytes() as f64 / 1e6;
        println!("bytes per tracked key at 1M keys: {per_key:.1}");
        assert!(per_key <= 40.0, "{per_key} bytes per key");
    }
}
