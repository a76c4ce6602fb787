use std::borrow::Borrow;
use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use moka::Expiry;
use moka::future::Cache;

use super::{KeyResolver, ResolveError};
use crate::auth::AuthError;
use crate::clock;
use crate::key::KeyHash;
use crate::record::{Authenticated, KeyRecord, KeyStatus};
use crate::seeded::{self, fold};

const DEFAULT_CAPACITY: u64 = 100_000;
const DEFAULT_TTL: Duration = Duration::from_secs(30);
const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(5);
const DEFAULT_STALE_WINDOW: Duration = Duration::from_secs(600);
const DEFAULT_LOAD_TIMEOUT: Duration = Duration::from_secs(2);
/// One hit in this many (per thread) goes through moka, so that its admission and
/// eviction policy keeps seeing which keys are hot.
const TOUCH_EVERY: u32 = 64;
/// Entries in each thread's table of private copies (a power of two).
const LOCAL_SLOTS: usize = 64;

/// A moka cache in front of any [`KeyResolver`].
///
/// - **Bounded**: at most `max_capacity` entries (TinyLFU admission, so a flood of
///   unknown keys does not push out the keys in real use).
/// - **Positive and negative TTLs**: a found record is fresh for `ttl` (default 30 s), an
///   unknown hash is remembered for `negative_ttl` (default 5 s). Expiry and revocation
///   *times* on a record are checked on every request by the layer, not left to the TTL.
/// - **Changes made elsewhere**: [`follow`](Self::follow) a store's
///   [`ChangeFeed`](crate::store::ChangeFeed), and a change made through any instance
///   invalidates the key here within the feed's bound; the TTL then only bounds how
///   long an unchanged record is trusted. Without a feed, the TTL is the bound.
/// - **Stale while revalidating**: past its TTL, a found record is still served at once
///   while one background refresh runs; while the resolver fails, it is served until the
///   stale window (default 10 min, [`stale_window`](CachedResolverBuilder::stale_window))
///   ends. A hash never seen gets the resolver's error (the layer's 503).
/// - **A deadline**: a resolver call that takes longer than `load_timeout` (default 2 s)
///   counts as failed.
/// - **Single-flight**: concurrent lookups of one uncached hash make one resolver call,
///   and a stale entry has at most one refresh under way.
/// - **Errors are not cached**: the next request tries the resolver again.
///
/// Moka decides what stays. On top of it sits a small sharded table holding the same
/// entries, which moka's eviction listener keeps a subset of moka; most hits are served
/// from that table with one read lock and no moka bookkeeping, and one hit in 64 per
/// thread is passed to moka so that its policy still sees which keys are hot. A key a
/// thread looks up again and again is served from that thread's own copy of its entry
/// (up to 64 a thread), so that cores sharing a hot key do not write the same cache
/// lines on every request; [`invalidate`](Self::invalidate) reaches those copies too.
///
/// Clones share the cache.
///
/// ```
/// use std::time::Duration;
/// use tower_api_key::{CachedResolver, KeyFormat, KeyRecord, MemoryStore};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let store = MemoryStore::new();
/// let key = KeyFormat::default().generate();
/// store.insert(KeyRecord::new(&key, "acme"));
///
/// let cache = CachedResolver::builder(store)
///     .max_capacity(10_000)
///     .ttl(Duration::from_secs(60))
///     .negative_ttl(Duration::from_secs(2))
///     .build();
/// let found = cache.lookup(&key.hash()).await.unwrap().unwrap();
/// assert_eq!(found.consumer(), "acme");
/// cache.invalidate(&key.hash()).await;
/// # }
/// ```
pub struct CachedResolver<R> {
    pub(super) inner: Arc<Inner<R>>,
}

impl<R> Clone for CachedResolver<R> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<R> std::fmt::Debug for CachedResolver<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedResolver")
            .field("entries", &self.inner.moka.entry_count())
            .field("ttl", &self.inner.ttl)
            .field("negative_ttl", &self.inner.negative_ttl)
            .finish_non_exhaustive()
    }
}

pub(super) struct Inner<R> {
    pub(super) resolver: R,
    pub(super) moka: Cache<KeyHash, Slot>,
    pub(super) front: Arc<Front>,
    pub(super) ttl: Duration,
    pub(super) negative_ttl: Duration,
    pub(super) stale_window: Duration,
    pub(super) load_timeout: Option<Duration>,
    /// Hashes whose stale entry is being refreshed in the background.
    pub(super) refreshing: Mutex<HashSet<KeyHash>>,
    /// Bumped before and after every invalidation; a load that saw it change is not
    /// kept, and a thread's private copy made under another value is not used.
    pub(super) epoch: AtomicU64,
    pub(super) generation: AtomicU64,
    /// Tells this cache's entries in the threads' tables from other caches'.
    id: u64,
    /// Hits, stale hits and misses, with the `metrics` feature.
    pub(super) metrics: crate::metrics::CacheLookups,
}

/// Builds a [`CachedResolver`]; from [`CachedResolver::builder`].
#[derive(Debug)]
pub struct CachedResolverBuilder<R> {
    resolver: R,
    max_capacity: u64,
    ttl: Duration,
    negative_ttl: Duration,
    stale_window: Duration,
    load_timeout: Option<Duration>,
}

impl<R: KeyResolver> CachedResolverBuilder<R> {
    /// At most this many entries, found and unknown together (default 100 000).
    pub fn max_capacity(mut self, entries: u64) -> Self {
        self.max_capacity = entries;
        self
    }

    /// How long a found record is fresh (default 30 s): served with no question. Past
    /// it, the record is refreshed in the background (see
    /// [`stale_window`](Self::stale_window)).
    ///
    /// With a [change feed](CachedResolver::follow), changes made elsewhere do not wait
    /// for the TTL; it bounds how long an unchanged record is trusted, and costs one
    /// resolver call per key in use per TTL.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How long past its TTL a found record may still be served while the resolver
    /// fails (default 10 min; zero turns stale serving off, and then a lookup past the
    /// TTL waits for the resolver).
    ///
    /// While the resolver answers, a stale hit is served once and refreshed in the
    /// background: a request never waits for the refresh.
    pub fn stale_window(mut self, window: Duration) -> Self {
        self.stale_window = window;
        self
    }

    /// How long a resolver call may take before it counts as failed (default 2 s;
    /// `None`: no deadline). Needs a Tokio runtime with timers, as servers have.
    pub fn load_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.load_timeout = timeout;
        self
    }

    /// How long an unknown hash is remembered as unknown (default 5 s).
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = ttl;
        self
    }

    /// Builds the cache.
    pub fn build(self) -> CachedResolver<R> {
        let front = Arc::new(Front::new(self.max_capacity));
        let listener_front = Arc::clone(&front);
        let moka = Cache::builder()
            .max_capacity(self.max_capacity)
            .expire_after(SlotExpiry)
            .eviction_listener(move |hash: Arc<KeyHash>, slot: Slot, _cause| {
                listener_front.remove_generation(&hash, slot.stamp().generation);
            })
            .build();
        CachedResolver {
            inner: Arc::new(Inner {
                resolver: self.resolver,
                moka,
                front,
                ttl: self.ttl,
                negative_ttl: self.negative_ttl,
                stale_window: self.stale_window,
                load_timeout: self.load_timeout,
                refreshing: Mutex::new(HashSet::new()),
                epoch: AtomicU64::new(0),
                generation: AtomicU64::new(0),
                id: {
                    static NEXT_ID: AtomicU64 = AtomicU64::new(0);
                    NEXT_ID.fetch_add(1, Ordering::Relaxed)
                },
                metrics: Default::default(),
            }),
        }
    }
}

impl<R: KeyResolver> CachedResolver<R> {
    /// A cache with the defaults: 100 000 entries, TTL 30 s, negative TTL 5 s, stale
    /// window 10 min, load timeout 2 s.
    pub fn new(resolver: R) -> Self {
        Self::builder(resolver).build()
    }

    /// A builder to set capacity and TTLs.
    pub fn builder(resolver: R) -> CachedResolverBuilder<R> {
        CachedResolverBuilder {
            resolver,
            max_capacity: DEFAULT_CAPACITY,
            ttl: DEFAULT_TTL,
            negative_ttl: DEFAULT_NEGATIVE_TTL,
            stale_window: DEFAULT_STALE_WINDOW,
            load_timeout: Some(DEFAULT_LOAD_TIMEOUT),
        }
    }

    /// The resolver behind the cache.
    pub fn resolver(&self) -> &R {
        &self.inner.resolver
    }

    /// The caller for `hash`, from the cache or, on a miss, from the resolver.
    ///
    /// `Ok(None)` means no key has this hash. The record's expiry and revocation times
    /// are not checked here; [`KeyRecord::status`] does that.
    pub async fn lookup(&self, hash: &KeyHash) -> Result<Option<Authenticated>, ResolveError> {
        Ok(self.lookup_slot(hash).await?.auth().cloned())
    }

    async fn lookup_slot(&self, hash: &KeyHash) -> Result<Slot, ResolveError> {
        if let Some(slot) = self.cached(hash, clock::mono_nanos()) {
            self.inner.metrics.hit();
            return Ok(slot);
        }
        self.lookup_slow(hash).await
    }

    /// The hit path for the layer: the caller for a fresh cached entry, with the
    /// record's revocation and expiry checked, without awaiting.
    ///
    /// `None` means "take the slow path": not in the table, stale, or this hit's turn to
    /// be reported to moka.
    pub(crate) fn lookup_cached(
        &self,
        hash: &KeyHash,
        now: u64,
    ) -> Option<Result<Authenticated, Refused>> {
        let slot = self.cached(hash, now)?;
        if touch_due() {
            return None;
        }
        self.inner.metrics.hit();
        Some(slot.into_verdict())
    }

    /// The tables' answer for `hash`, as [`lookup_cached`](Self::lookup_cached) gives
    /// it but never declining a hit for moka's sake: for callers that must not reach
    /// the resolver.
    pub(crate) fn peek(&self, hash: &KeyHash, now: u64) -> Option<Result<Authenticated, Refused>> {
        Some(self.cached(hash, now)?.into_verdict())
    }

    /// A fresh entry for `hash` from the tables, if there is one.
    ///
    /// A key this thread looks up again and again is answered from the thread's own
    /// copy of its entry: the shared table's lock and the shared entry's reference count
    /// are written by every lookup that reads them, and with several cores on one hot
    /// key those two cache lines would travel between the cores on every request.
    fn cached(&self, hash: &KeyHash, now: u64) -> Option<Slot> {
        let inner = &*self.inner;
        // Read before the shared table: a copy made from what the table holds now is
        // only good while no invalidation has begun since.
        let epoch = inner.epoch.load(Ordering::Acquire);
        let seen = Some((inner.id, *hash));
        // This thread's copy; else whether this place saw the hash just before. Without
        // the thread's table (being torn down with the thread, say): the shared table.
        let local = LOCAL.try_with(|local| {
            let mut local = local.try_borrow_mut().ok()?;
            let local = local
                .get_or_insert_with(|| Box::new(std::array::from_fn(|_| LocalSlot::default())));
            let place = &mut local[local_index(hash)];
            Some(match &place.held {
                Some(held) if held.is(inner.id, epoch, hash, now) => Ok(held.slot.clone()),
                _ => Err(std::mem::replace(&mut place.seen, seen) == seen),
            })
        });
        let copy_wanted = match local {
            Ok(Some(Ok(copy))) => return Some(copy),
            Ok(Some(Err(seen_before))) => seen_before,
            _ => false,
        };
        let shared = inner.front.get_fresh(hash, now)?;
        if !copy_wanted {
            return Some(shared);
        }
        // The second time in a row this place sees the hash: keep a private copy.
        let copy = shared.private_copy();
        let _ = LOCAL.try_with(|local| {
            if let Ok(mut local) = local.try_borrow_mut()
                && let Some(local) = local.as_mut()
            {
                local[local_index(hash)].held = Some(Held {
                    cache: inner.id,
                    epoch,
                    slot: copy.clone(),
                });
            }
        });
        Some(copy)
    }

    /// Does the cache hold a record of the store's for `hash`, fresh or not: a key the
    /// store knows, rather than one it answered "unknown" for? A client over its failure
    /// limit still gets such a key refreshed when its entry ages: that costs one store
    /// call per key and time to live, which minting new keys cannot multiply.
    pub(crate) fn knows(&self, hash: &KeyHash) -> bool {
        self.inner
            .front
            .get_fresh(hash, 0)
            .is_some_and(|slot| slot.auth().is_some())
    }

    /// Does the cache hold `hash` as a revoked record (fresh or not)? Revocation is
    /// final, so such an entry cannot be made wrong by a revocation read later.
    pub(crate) fn holds_revoked(&self, hash: &KeyHash) -> bool {
        self.inner
            .front
            .get_fresh(hash, 0)
            .and_then(|slot| slot.auth().map(|auth| auth.record().revoked_at.is_some()))
            .unwrap_or(false)
    }

    /// Forgets `hash`, so that the next request asks the resolver. Call it after revoking
    /// or changing a key; a load already under way for any key is then not kept.
    pub async fn invalidate(&self, hash: &KeyHash) {
        self.inner.epoch.fetch_add(1, Ordering::AcqRel);
        self.inner.front.remove(hash);
        self.inner.moka.invalidate(hash).await;
        // Again: a thread may have copied the entry between the first bump and its removal.
        self.inner.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// `invalidate` without moka (whose invalidation awaits): the front table and the
    /// threads' copies.
    pub(super) fn forget_now(&self, hash: &KeyHash) {
        self.inner.epoch.fetch_add(1, Ordering::AcqRel);
        self.inner.front.remove(hash);
        self.inner.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// Forgets everything.
    pub fn invalidate_all(&self) {
        self.inner.epoch.fetch_add(1, Ordering::AcqRel);
        self.inner.front.clear();
        self.inner.moka.invalidate_all();
        self.inner.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// How many entries the cache holds (after pending maintenance).
    pub fn entry_count(&self) -> u64 {
        self.inner.moka.entry_count()
    }

    /// Runs moka's pending maintenance (evictions, expirations) now.
    pub async fn run_pending_tasks(&self) {
        self.inner.moka.run_pending_tasks().await;
    }

    #[cfg(test)]
    fn front_len(&self) -> usize {
        self.inner.front.len()
    }
}

#[async_trait::async_trait]
impl<R: KeyResolver> KeyResolver for CachedResolver<R> {
    async fn resolve(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, ResolveError> {
        Ok(self.lookup(hash).await?.map(|a| a.record().clone()))
    }
}

thread_local! {
    static HITS: Cell<u32> = const { Cell::new(0) };
    static LOCAL: RefCell<Option<Box<[LocalSlot; LOCAL_SLOTS]>>> = const { RefCell::new(None) };
}

/// Where `hash` goes in a thread's table: by a process-wide seed, so that the same hash
/// takes the same place whichever cache looks it up (the place then tells them apart).
fn local_index(hash: &KeyHash) -> usize {
    static SEED: LazyLock<u64> = LazyLock::new(|| seeded::random_seed().0);
    (fold(hash.words().0, *SEED) as usize) & (LOCAL_SLOTS - 1)
}

/// One place in a thread's table of private copies.
#[derive(Default)]
struct LocalSlot {
    /// The last hash looked up here from the shared table, and by which cache.
    seen: Option<(u64, KeyHash)>,
    /// A private copy of an entry, and the cache and epoch it was copied under.
    held: Option<Held>,
}

struct Held {
    cache: u64,
    epoch: u64,
    slot: Slot,
}

impl Held {
    /// Is this the entry for `hash` in cache `cache`, copied under the current `epoch`,
    /// and still fresh at `now`?
    fn is(&self, cache: u64, epoch: u64, hash: &KeyHash, now: u64) -> bool {
        self.cache == cache
            && self.epoch == epoch
            && self.slot.stamp().fresh_until > now
            && self.slot.stamp().hash == *hash
    }
}

fn touch_due() -> bool {
    HITS.try_with(|hits| {
        let n = hits.get().wrapping_add(1);
        hits.set(n);
        n % TOUCH_EVERY == 0
    })
    .unwrap_or(false)
}

/// What the front table's hit path reads of an entry. It sits at the start of the
/// entry's one allocation, right after the `Arc`'s reference counts, so that a hit reads
/// and counts on one cache line (or two neighbours): with many keys, that is the hit's
/// one likely miss, where a table holding the stamps beside pointers to the records
/// made two misses in a row.
#[derive(Clone, Copy)]
#[repr(C)]
pub(crate) struct Stamp {
    /// The hash the entry was loaded for.
    hash: KeyHash,
    /// When the entry stops being fresh, on the cheap monotonic clock
    /// (`clock::mono_nanos`) that the hit path reads.
    fresh_until: u64,
    /// The earlier of the record's revocation and expiry times, in Unix nanoseconds
    /// (`u64::MAX`: never), so that a hit checks them without reading the record.
    stops_at: u64,
    /// Unique per load, so that evicting an old entry never removes its replacement.
    pub(super) generation: u64,
    /// Until when the entry may be served while a refresh fails (monotonic, as
    /// `fresh_until`); not read by hits.
    pub(super) stale_until: u64,
}

impl Stamp {
    /// The stamp of a record made outside the cache ([`Authenticated::new`]).
    pub(crate) fn unattached(record: &KeyRecord) -> Self {
        Self {
            hash: record.hash,
            fresh_until: 0,
            stops_at: stops_at(record),
            generation: 0,
            stale_until: 0,
        }
    }
}

/// A value behind its [`Stamp`], in one allocation.
#[repr(C)]
pub(crate) struct Stamped<T> {
    pub(crate) stamp: Stamp,
    pub(crate) value: T,
}

/// The earlier of a record's revocation and expiry times, in Unix nanoseconds.
fn stops_at(record: &KeyRecord) -> u64 {
    let at = match (record.revoked_at, record.expires_at) {
        (Some(a), Some(b)) => a.min(b),
        (Some(t), None) | (None, Some(t)) => t,
        (None, None) => return u64::MAX,
    };
    // Before 1970: already stopped. Past 2554: just below "never".
    clock::unix_nanos(at).min(u64::MAX - 1)
}

/// One cache entry, held by moka and (while moka holds it) by the front table: a found
/// record or the memory that a hash is unknown. Cloning it counts one reference.
#[derive(Clone)]
pub(crate) enum Slot {
    Found(Authenticated),
    Unknown(Arc<Stamped<()>>),
}

impl Slot {
    pub(super) fn new(
        hash: KeyHash,
        fresh_until: u64,
        stale_until: u64,
        generation: u64,
        record: Option<KeyRecord>,
    ) -> Self {
        let stamp = |stops_at| Stamp {
            hash,
            fresh_until,
            stops_at,
            generation,
            stale_until: stale_until.max(fresh_until),
        };
        match record {
            Some(record) => Self::Found(Authenticated::stamped(stamp(stops_at(&record)), record)),
            None => Self::Unknown(Arc::new(Stamped {
                stamp: stamp(u64::MAX),
                value: (),
            })),
        }
    }

    pub(super) fn stamp(&self) -> &Stamp {
        match self {
            Self::Found(auth) => &auth.0.stamp,
            Self::Unknown(unknown) => &unknown.stamp,
        }
    }

    /// The same entry in an allocation of its own, whose reference count only the thread
    /// that holds it writes (unless a request it answered ends on another thread).
    fn private_copy(&self) -> Self {
        self.with_stamp(*self.stamp())
    }

    /// The same record (or unknown hash) behind `stamp`, in an allocation of its own.
    fn with_stamp(&self, stamp: Stamp) -> Self {
        match self {
            Self::Found(auth) => Self::Found(Authenticated(Arc::new(Stamped {
                stamp,
                value: auth.0.value.clone(),
            }))),
            Self::Unknown(_) => Self::Unknown(Arc::new(Stamped { stamp, value: () })),
        }
    }

    /// The caller, if a record was found (whatever its status).
    pub(crate) fn auth(&self) -> Option<&Authenticated> {
        match self {
            Self::Found(auth) => Some(auth),
            Self::Unknown(_) => None,
        }
    }

    /// Is the entry fresh at `now`?
    pub(super) fn is_fresh(&self, now: u64) -> bool {
        self.stamp().fresh_until > now
    }

    /// May the entry be served at `now` while it is refreshed?
    pub(super) fn is_servable_stale(&self, now: u64) -> bool {
        self.stamp().stale_until > now
    }

    /// The same record, fresh until `fresh_until` (its stale end kept), as a new entry.
    pub(super) fn restamped(&self, fresh_until: u64, generation: u64) -> Self {
        self.with_stamp(Stamp {
            fresh_until,
            generation,
            stale_until: self.stamp().stale_until.max(fresh_until),
            ..*self.stamp()
        })
    }

    /// The same record as an entry already past its TTL and window at `now`: an answer
    /// for one request that the tables must not serve again.
    pub(super) fn spent(&self, now: u64) -> Self {
        self.with_stamp(Stamp {
            fresh_until: now,
            stale_until: now,
            ..*self.stamp()
        })
    }

    /// How long from now moka keeps the entry: to the end of its stale window.
    fn keep_for(&self) -> Duration {
        Duration::from_nanos(self.stamp().stale_until.saturating_sub(clock::mono_nanos()))
    }

    /// The caller, if the record exists and may be used now. Revoked and unknown keys
    /// get the same error.
    #[cfg(test)]
    pub(crate) fn into_admitted(self) -> Result<Authenticated, AuthError> {
        self.into_verdict().map_err(|refused| refused.error)
    }

    /// The caller, if the record exists and may be used now; else why not, and the
    /// record's caller if there is a record (revoked, expired).
    pub(crate) fn into_verdict(self) -> Result<Authenticated, Refused> {
        let Self::Found(auth) = self else {
            return Err(Refused {
                error: AuthError::InvalidKey,
                known: None,
            });
        };
        let stops_at = auth.0.stamp.stops_at;
        // Read the clock only for records that can stop working.
        if stops_at != u64::MAX {
            let now = SystemTime::now();
            // A clock set before 1970 never counts as past a stop time.
            if now >= SystemTime::UNIX_EPOCH && clock::unix_nanos(now) >= stops_at {
                let error = match auth.record().status(now) {
                    KeyStatus::Expired => AuthError::ExpiredKey,
                    KeyStatus::Revoked | KeyStatus::Active => AuthError::InvalidKey,
                };
                return Err(Refused {
                    error,
                    known: Some(auth),
                });
            }
        }
        Ok(auth)
    }
}

/// A key refused by the cache: the answer, and the caller of the key's record when
/// there is one (a revoked or expired key; `None` for an unknown key).
#[derive(Debug)]
pub(crate) struct Refused {
    pub(crate) error: AuthError,
    pub(crate) known: Option<Authenticated>,
}

// The front table is a set of slots found by their hash.
impl Borrow<KeyHash> for Slot {
    fn borrow(&self) -> &KeyHash {
        &self.stamp().hash
    }
}

impl Hash for Slot {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.stamp().hash.hash(state);
    }
}

impl PartialEq for Slot {
    fn eq(&self, other: &Self) -> bool {
        self.stamp().hash == other.stamp().hash
    }
}

impl Eq for Slot {}

struct SlotExpiry;

impl Expiry<KeyHash, Slot> for SlotExpiry {
    fn expire_after_create(&self, _: &KeyHash, slot: &Slot, _: Instant) -> Option<Duration> {
        Some(slot.keep_for())
    }

    fn expire_after_update(
        &self,
        _: &KeyHash,
        slot: &Slot,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(slot.keep_for())
    }
}

/// The front table: shards of `RwLock<HashMap>`, each on its own cache lines.
pub(super) struct Front {
    shards: Box<[Shard]>,
    mask: usize,
    hasher: SeededHasher,
}

#[repr(align(128))]
struct Shard(RwLock<HashSet<Slot, SeededHasher>>);

type ShardReadGuard<'a> = std::sync::RwLockReadGuard<'a, HashSet<Slot, SeededHasher>>;
type ShardWriteGuard<'a> = std::sync::RwLockWriteGuard<'a, HashSet<Slot, SeededHasher>>;

impl Front {
    fn new(capacity: u64) -> Self {
        let shards = std::thread::available_parallelism()
            .map_or(8, |n| n.get() * 8)
            .next_power_of_two()
            .clamp(8, 256);
        let hasher = SeededHasher::random();
        let per_shard = usize::try_from(capacity / shards as u64)
            .unwrap_or(0)
            .min(1 << 16);
        Self {
            shards: (0..shards)
                .map(|_| {
                    Shard(RwLock::new(HashSet::with_capacity_and_hasher(
                        per_shard / 4,
                        hasher,
                    )))
                })
                .collect(),
            mask: shards - 1,
            hasher,
        }
    }

    fn shard(&self, hash: &KeyHash) -> &Shard {
        let (_, b) = hash.words();
        let i = (fold(b, self.hasher.1) as usize) & self.mask;
        &self.shards[i]
    }

    fn get_fresh(&self, hash: &KeyHash, now: u64) -> Option<Slot> {
        let shard = read(self.shard(hash));
        let slot = shard.get(hash)?;
        (slot.stamp().fresh_until > now).then(|| slot.clone())
    }

    #[cfg(test)]
    fn insert(&self, slot: Slot) {
        self.insert_unless_moved(slot, &AtomicU64::new(0), 0);
    }

    /// Inserts `slot` unless `epoch` has moved from `expected`, checked under the
    /// shard's lock: an invalidation bumps the epoch before it takes that lock to
    /// remove, so either this sees the bump, or the removal comes after the insert.
    pub(super) fn insert_unless_moved(&self, slot: Slot, epoch: &AtomicU64, expected: u64) -> bool {
        let mut shard = write(self.shard(&slot.stamp().hash));
        if epoch.load(Ordering::Acquire) != expected {
            return false;
        }
        match shard.get(&slot.stamp().hash) {
            Some(old) if old.stamp().generation > slot.stamp().generation => {}
            _ => {
                shard.replace(slot);
            }
        }
        true
    }

    pub(super) fn remove(&self, hash: &KeyHash) {
        write(self.shard(hash)).remove(hash);
    }

    pub(super) fn remove_generation(&self, hash: &KeyHash, generation: u64) {
        let mut shard = write(self.shard(hash));
        if shard
            .get(hash)
            .is_some_and(|s| s.stamp().generation == generation)
        {
            shard.remove(hash);
        }
    }

    fn clear(&self) {
        for shard in &self.shards {
            write(shard).clear();
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards.iter().map(|s| read(s).len()).sum()
    }
}

// The maps hold plain data; a panic elsewhere while a lock was held leaves them valid.
fn read(shard: &Shard) -> ShardReadGuard<'_> {
    shard.0.read().unwrap_or_else(|e| e.into_inner())
}

fn write(shard: &Shard) -> ShardWriteGuard<'_> {
    shard.0.write().unwrap_or_else(|e| e.into_inner())
}

/// Hashes a [`KeyHash`] (already uniform, but chosen by whoever sends keys) with a
/// per-process random seed and a folded multiply, so that bucket positions cannot be
/// predicted or collided on purpose.
#[derive(Clone, Copy)]
struct SeededHasher(u64, u64);

impl SeededHasher {
    fn random() -> Self {
        let (a, b) = seeded::random_seed();
        Self(a, b)
    }
}

impl BuildHasher for SeededHasher {
    type Hasher = WordHasher;
    fn build_hasher(&self) -> WordHasher {
        WordHasher {
            seed: self.0,
            state: 0,
        }
    }
}

struct WordHasher {
    seed: u64,
    state: u64,
}

impl Hasher for WordHasher {
    fn write(&mut self, bytes: &[u8]) {
        // `KeyHash` writes its 32 bytes once; any other input is folded 8 bytes at a time.
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.state = fold(self.state ^ u64::from_le_bytes(word), self.seed);
            if bytes.len() == 32 {
                // The first word of a SHA-256 output is as good as all four.
                break;
            }
        }
    }

    fn finish(&self) -> u64 {
        self.state
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{KeyFormat, MemoryStore};
    use std::sync::atomic::AtomicUsize;

    /// Counts calls and can be switched to failing; optionally waits on a gate so that
    /// concurrent lookups pile up behind one load.
    #[derive(Clone, Default)]
    struct Counting {
        store: MemoryStore,
        calls: Arc<AtomicUsize>,
        failing: Arc<std::sync::atomic::AtomicBool>,
        gate: Option<Arc<tokio::sync::Notify>>,
    }

    #[async_trait::async_trait]
    impl KeyResolver for Counting {
        async fn resolve(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, ResolveError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if let Some(gate) = &self.gate {
                gate.notified().await;
            }
            if self.failing.load(Ordering::SeqCst) {
                return Err(ResolveError::new("database is down"));
            }
            self.store.resolve(hash).await
        }
    }

    fn key_in(store: &MemoryStore) -> crate::ApiKey {
        let key = KeyFormat::default().generate();
        store.insert(KeyRecord::new(&key, "acme"));
        key
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn hundred_concurrent_lookups_of_one_uncached_key_make_one_resolver_call() {
        let gate = Arc::new(tokio::sync::Notify::new());
        let resolver = Counting {
            gate: Some(gate.clone()),
            ..Default::default()
        };
        let key = key_in(&resolver.store);
        let cache = CachedResolver::new(resolver.clone());
        let hash = key.hash();
        let tasks: Vec<_> = (0..100)
            .map(|_| {
                let cache = cache.clone();
                tokio::spawn(async move { cache.lookup(&hash).await })
            })
            .collect();
        // Wait (with a deadline) until the one load has started, then let it finish.
        let deadline = Instant::now() + Duration::from_secs(10);
        while resolver.calls.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "no load started");
            tokio::task::yield_now().await;
        }
        gate.notify_one();
        for t in tasks {
            let found = t.await.unwrap().unwrap().unwrap();
            assert_eq!(found.consumer(), "acme");
        }
        assert_eq!(resolver.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn hits_do_not_call_the_resolver_and_unknown_keys_are_cached_negatively() {
        let resolver = Counting::default();
        let key = key_in(&resolver.store);
        let cache = CachedResolver::new(resolver.clone());
        for _ in 0..1000 {
            assert!(cache.lookup(&key.hash()).await.unwrap().is_some());
        }
        assert_eq!(resolver.calls.load(Ordering::SeqCst), 1);
        let unknown = KeyFormat::default().generate().hash();
        for _ in 0..10 {
            assert!(cache.lookup(&unknown).await.unwrap().is_none());
        }
        assert_eq!(resolver.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn errors_are_not_cached() {
        let resolver = Counting::default();
        let key = key_in(&resolver.store);
        let cache = CachedResolver::new(resolver.clone());
        resolver.failing.store(true, Ordering::SeqCst);
        let err = cache.lookup(&key.hash()).await.unwrap_err();
        assert_eq!(err.to_string(), "key store unavailable: database is down");
        assert!(cache.lookup(&key.hash()).await.is_err());
        assert_eq!(resolver.calls.load(Ordering::SeqCst), 2);
        resolver.failing.store(false, Ordering::SeqCst);
        assert!(cache.lookup(&key.hash()).await.unwrap().is_some());
        assert_eq!(resolver.calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn ttls_expire_positive_and_negative_entries() {
        let resolver = Counting::default();
        let key = key_in(&resolver.store);
        let cache = CachedResolver::builder(resolver.clone())
            .ttl(Duration::ZERO)
            .negative_ttl(Duration::ZERO)
            .build();
        cache.lookup(&key.hash()).await.unwrap();
        cache.lookup(&key.hash()).await.unwrap();
        let unknown = KeyHash::of("nope");
        cache.lookup(&unknown).await.unwrap();
        cache.lookup(&unknown).await.unwrap();
        // Zero TTLs: every lookup loads (the stale-retry may add one more per lookup).
        assert!(resolver.calls.load(Ordering::SeqCst) >= 4);
    }

    /// Reads the record at once, but holds the first load's answer until the gate opens;
    /// every later load answers at once.
    #[derive(Clone, Default)]
    struct FirstLoadHeld {
        store: MemoryStore,
        calls: Arc<AtomicUsize>,
        gate: Arc<tokio::sync::Notify>,
    }

    #[async_trait::async_trait]
    impl KeyResolver for FirstLoadHeld {
        async fn resolve(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, ResolveError> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            let record = self.store.resolve(hash).await;
            if n == 0 {
                self.gate.notified().await;
            }
            record
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_load_under_way_during_an_invalidation_is_not_kept() {
        let resolver = FirstLoadHeld::default();
        let key = key_in(&resolver.store);
        let hash = key.hash();
        let cache = CachedResolver::new(resolver.clone());
        let first = {
            let cache = cache.clone();
            tokio::spawn(async move { cache.lookup(&hash).await })
        };
        // The first load has read the (still active) record and is held.
        let deadline = Instant::now() + Duration::from_secs(10);
        while resolver.calls.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "no load started");
            tokio::task::yield_now().await;
        }
        revoke_only(&resolver.store).await;
        cache.invalidate(&hash).await;
        resolver.gate.notify_one();
        // The held load answers its own request...
        assert!(first.await.unwrap().unwrap().is_some());
        // ...but what it read before the revocation is not what the cache serves now.
        let now = cache.lookup(&hash).await.unwrap().unwrap();
        assert!(now.record().revoked_at.is_some(), "the stale load was kept");
        assert!(
            !matches!(cache.lookup_cached(&hash, clock::mono_nanos()), Some(Ok(_))),
            "the hit path admits a revoked key"
        );
    }

    #[tokio::test]
    async fn invalidate_makes_the_next_lookup_see_a_revocation() {
        let resolver = Counting::default();
        let key = key_in(&resolver.store);
        let cache = CachedResolver::new(resolver.clone());
        let before = cache.lookup(&key.hash()).await.unwrap().unwrap();
        assert!(before.record().revoked_at.is_none());
        let id = before.key_id().to_owned();
        crate::KeyStore::revoke(&resolver.store, &id, "test")
            .await
            .unwrap();
        // Still cached until invalidated.
        let cached = cache.lookup(&key.hash()).await.unwrap().unwrap();
        assert!(cached.record().revoked_at.is_none());
        cache.invalidate(&key.hash()).await;
        let after = cache.lookup(&key.hash()).await.unwrap().unwrap();
        assert!(after.record().revoked_at.is_some());
    }

    #[tokio::test]
    async fn capacity_bounds_moka_and_the_front_table() {
        let store = MemoryStore::new();
        let keys: Vec<_> = (0..5_000).map(|_| key_in(&store)).collect();
        let cache = CachedResolver::builder(store).max_capacity(200).build();
        for key in &keys {
            cache.lookup(&key.hash()).await.unwrap();
        }
        cache.run_pending_tasks().await;
        assert!(
            cache.entry_count() <= 200,
            "moka holds {}",
            cache.entry_count()
        );
        assert!(
            cache.front_len() <= 200,
            "front holds {}",
            cache.front_len()
        );
        // Whatever is left in front is what moka holds.
        assert!(cache.front_len() as u64 <= cache.entry_count());
    }

    /// A store with one key, and a cache that has looked it up once.
    async fn one_cached_key() -> (MemoryStore, CachedResolver<MemoryStore>, KeyHash) {
        let store = MemoryStore::new();
        let hash = key_in(&store).hash();
        let cache = CachedResolver::new(store.clone());
        cache.lookup(&hash).await.unwrap().unwrap();
        (store, cache, hash)
    }

    /// Revokes the one key of `store`.
    async fn revoke_only(store: &MemoryStore) {
        let id = store.records()[0].id.clone();
        crate::KeyStore::revoke(store, &id, "test").await.unwrap();
    }

    /// `lookup_cached` until it answers (it declines one hit in 64, for moka's sake).
    fn hit(cache: &CachedResolver<MemoryStore>, hash: &KeyHash, now: u64) -> Authenticated {
        for _ in 0..2 {
            if let Some(found) = cache.lookup_cached(hash, now) {
                return found.expect("admitted");
            }
        }
        panic!("not answered from the tables");
    }

    #[tokio::test]
    async fn a_thread_answers_a_hot_key_from_its_own_copy() {
        let (_, cache, hash) = one_cached_key().await;
        let now = clock::mono_nanos();
        let shared = cache.inner.front.get_fresh(&hash, now).unwrap();
        let shared = shared.auth().unwrap();
        hit(&cache, &hash, now);
        let second = hit(&cache, &hash, now);
        let third = hit(&cache, &hash, now);
        assert!(
            !Arc::ptr_eq(&second.0, &shared.0),
            "a repeated hit made a copy"
        );
        assert!(Arc::ptr_eq(&second.0, &third.0), "later hits use the copy");
        assert_eq!(third.key_id(), shared.key_id());
        // Through the public lookup as well.
        let public = cache.lookup(&hash).await.unwrap().unwrap();
        assert!(Arc::ptr_eq(&public.0, &third.0));
        // Another thread reads the shared entry once, then has a copy of its own.
        let (once, other) = std::thread::scope(|s| {
            s.spawn(|| {
                let once = hit(&cache, &hash, now);
                (once, hit(&cache, &hash, now))
            })
            .join()
            .unwrap()
        });
        assert!(Arc::ptr_eq(&once.0, &shared.0));
        assert!(!Arc::ptr_eq(&other.0, &third.0));
        assert!(!Arc::ptr_eq(&other.0, &shared.0));
        // A copy is not used past the entry's freshness.
        let later = now + DEFAULT_TTL.as_nanos() as u64 + 1;
        assert!(cache.lookup_cached(&hash, later).is_none());
    }

    #[tokio::test]
    async fn invalidate_reaches_the_copies_threads_hold() {
        let (store, cache, hash) = one_cached_key().await;
        let now = clock::mono_nanos();
        for _ in 0..4 {
            hit(&cache, &hash, now);
        }
        revoke_only(&store).await;
        cache.invalidate(&hash).await;
        for _ in 0..200 {
            assert!(
                !matches!(cache.lookup_cached(&hash, now), Some(Ok(_))),
                "a copy outlived the invalidation"
            );
        }
        // Loaded again, the key is refused from the tables too.
        let slot = cache.lookup_slow(&hash).await.unwrap();
        assert!(matches!(slot.into_admitted(), Err(AuthError::InvalidKey)));
        for _ in 0..4 {
            if let Some(found) = cache.lookup_cached(&hash, clock::mono_nanos()) {
                let refused = found.unwrap_err();
                assert!(matches!(refused.error, AuthError::InvalidKey));
                // Revoked, not unknown: the record is known, for counting its refusals.
                assert!(refused.known.is_some());
            }
        }
    }

    #[tokio::test]
    async fn an_invalidation_on_one_thread_reaches_another_threads_copy() {
        let (store, cache, hash) = one_cached_key().await;
        let warm = Arc::new(std::sync::Barrier::new(2));
        let invalidated = Arc::new(std::sync::Barrier::new(2));
        let holder = {
            let (cache, warm, invalidated) = (cache.clone(), warm.clone(), invalidated.clone());
            std::thread::spawn(move || {
                let now = clock::mono_nanos();
                for _ in 0..4 {
                    hit(&cache, &hash, now);
                }
                warm.wait();
                invalidated.wait();
                (0..200)
                    .filter(|_| matches!(cache.lookup_cached(&hash, now), Some(Ok(_))))
                    .count()
            })
        };
        warm.wait();
        revoke_only(&store).await;
        cache.invalidate(&hash).await;
        invalidated.wait();
        assert_eq!(
            holder.join().unwrap(),
            0,
            "a copy outlived the invalidation"
        );
    }

    #[tokio::test]
    async fn two_caches_keep_their_copies_apart() {
        let key = KeyFormat::default().generate();
        let (a, b) = (MemoryStore::new(), MemoryStore::new());
        a.insert(KeyRecord::new(&key, "from-a"));
        b.insert(KeyRecord::new(&key, "from-b"));
        let (a, b) = (CachedResolver::new(a), CachedResolver::new(b));
        let hash = key.hash();
        a.lookup(&hash).await.unwrap().unwrap();
        b.lookup(&hash).await.unwrap().unwrap();
        let now = clock::mono_nanos();
        for _ in 0..5 {
            assert_eq!(hit(&a, &hash, now).consumer(), "from-a");
            assert_eq!(hit(&a, &hash, now).consumer(), "from-a");
            assert_eq!(hit(&b, &hash, now).consumer(), "from-b");
            assert_eq!(hit(&b, &hash, now).consumer(), "from-b");
        }
    }

    #[test]
    fn a_hit_reads_one_line_and_the_table_holds_pointers() {
        // Arc's two counts (16 bytes) and what a hit reads of the stamp (hash, freshness,
        // stop time) fill one 64-byte line; the generation, read on writes, may not.
        assert_eq!(std::mem::offset_of!(Stamped<KeyRecord>, stamp), 0);
        assert_eq!(std::mem::offset_of!(Stamped<()>, stamp), 0);
        assert_eq!(std::mem::offset_of!(Stamp, hash), 0);
        assert_eq!(std::mem::offset_of!(Stamp, fresh_until), 32);
        assert_eq!(std::mem::offset_of!(Stamp, stops_at), 40);
        // A front-table bucket is a tag and a pointer.
        assert_eq!(std::mem::size_of::<Slot>(), 16);
    }

    #[test]
    fn a_hit_checks_the_records_stop_time_at_its_edges() {
        let key = KeyFormat::default().generate();
        let record = || KeyRecord::new(&key, "acme");
        let admit =
            |record: KeyRecord| Slot::new(key.hash(), u64::MAX, 0, 0, Some(record)).into_admitted();
        let epoch = SystemTime::UNIX_EPOCH;
        let far = epoch + Duration::from_secs(600 * 365 * 86_400); // past u64 nanoseconds
        let soon = SystemTime::now() + Duration::from_secs(60);
        let past = SystemTime::now() - Duration::from_secs(1);

        assert!(admit(record()).is_ok());
        assert!(admit(record().with_expires_at(soon)).is_ok());
        assert!(admit(record().with_expires_at(far)).is_ok());
        assert!(matches!(
            admit(record().with_expires_at(past)),
            Err(AuthError::ExpiredKey)
        ));
        assert!(matches!(
            admit(record().with_expires_at(epoch - Duration::from_secs(1))),
            Err(AuthError::ExpiredKey)
        ));
        // Revoked (even if also expired) is the same error as unknown.
        assert!(matches!(
            admit(record().with_revoked_at(past).with_expires_at(soon)),
            Err(AuthError::InvalidKey)
        ));
        assert!(matches!(
            Slot::new(key.hash(), u64::MAX, 0, 0, None).into_admitted(),
            Err(AuthError::InvalidKey)
        ));
    }

    #[tokio::test]
    async fn a_newer_load_is_never_replaced_by_an_older_one() {
        let store = MemoryStore::new();
        let key = key_in(&store);
        let cache = CachedResolver::new(store);
        let front = &cache.inner.front;
        let now = clock::mono_nanos();
        let newer = Slot::new(key.hash(), now + 1_000_000_000, 0, 7, None);
        let older = Slot::new(
            key.hash(),
            now + 1_000_000_000,
            0,
            3,
            Some(KeyRecord::new(&key, "a")),
        );
        front.insert(newer);
        front.insert(older);
        // The newer entry (unknown) stays; the older one (found) was dropped.
        let slot = front.get_fresh(&key.hash(), now).unwrap();
        assert_eq!(slot.stamp().generation, 7);
        assert!(slot.auth().is_none());
        // Evicting the older generation leaves the newer one in place.
        front.remove_generation(&key.hash(), 3);
        assert_eq!(front.len(), 1);
        front.remove_generation(&key.hash(), 7);
        assert_eq!(front.len(), 0);
    }

    #[test]
    fn seeded_hasher_spreads_and_depends_on_the_seed() {
        let a = SeededHasher(1, 3);
        let b = SeededHasher(5, 7);
        let h = KeyHash::of("x");
        assert_ne!(a.hash_one(h), b.hash_one(h));
        assert_ne!(a.hash_one(h), a.hash_one(KeyHash::of("y")));
    }
}
