//! Following a store's [`ChangeFeed`]: a task that reads the change log from the last
//! change it applied and invalidates each changed key in a [`CachedResolver`], woken
//! by the store's push channel when it has one and polling underneath.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::{CachedResolver, KeyResolver, TimedOut};
use crate::store::{ChangeFeed, ChangeKind, Changes, StoreError};

/// Changes read in one query.
const BATCH: usize = 1000;
/// The first retry after a failure; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The longest interval or timeout the options take (longer ones are cut to it), so
/// that no sum of them overflows.
const MAX_INTERVAL: Duration = Duration::from_secs(86_400);

/// How a [`ChangeFollower`] reads its feed; for [`CachedResolver::follow_with`].
#[derive(Debug, Clone)]
pub struct FollowOptions {
    poll_interval: Duration,
    push_poll_interval: Duration,
    read_timeout: Duration,
}

impl Default for FollowOptions {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_millis(250),
            push_poll_interval: Duration::from_secs(1),
            read_timeout: Duration::from_secs(2),
        }
    }
}

impl FollowOptions {
    /// How often the log is read when the store has no push channel, or while it is
    /// lost (default 250 ms; at most a day). This is the propagation bound of polling.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval.clamp(Duration::from_millis(1), MAX_INTERVAL);
        self
    }

    /// How often the log is read while the push channel is up, in case a wake-up is
    /// lost without the channel noticing (default 1 s; at most a day).
    pub fn push_poll_interval(mut self, interval: Duration) -> Self {
        self.push_poll_interval = interval.clamp(Duration::from_millis(1), MAX_INTERVAL);
        self
    }

    /// How long one read of the log, or one subscribe, may take before it counts as
    /// failed (default 2 s; at most a day).
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = timeout.clamp(Duration::from_millis(1), MAX_INTERVAL);
        self
    }

    /// With no successful read for this long, the feed is [`FeedHealth::Down`].
    fn down_after(&self) -> Duration {
        let slowest = self.poll_interval.max(self.push_poll_interval);
        (slowest * 3)
            .max(self.read_timeout + slowest)
            .max(Duration::from_secs(3))
    }
}

/// Whether the store's push channel is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushState {
    /// Subscribed: changes arrive as they commit.
    Connected,
    /// Lost (or not yet made): the log is polled until it is back.
    Disconnected,
    /// The store has no push channel: the log is polled.
    Unavailable,
}

/// How well a [`ChangeFollower`] keeps up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedHealth {
    /// The log is read, and changes arrive within the feed's bound.
    Ok,
    /// The log is read, but slower than it should be: the push channel is lost (changes
    /// arrive by polling), or reads are late.
    Lagging,
    /// The log has not been read for a while (or ever): changes made elsewhere are not
    /// seen.
    Down,
}

impl FeedHealth {
    /// `ok`, `lagging` or `down`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Lagging => "lagging",
            Self::Down => "down",
        }
    }
}

/// A [`ChangeFollower`]'s state, from [`ChangeFollower::state`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FeedState {
    /// The sequence of the last change applied (or where following started).
    pub last_seq: u64,
    /// How well it keeps up.
    pub health: FeedHealth,
    /// The push channel.
    pub push: PushState,
    /// How long since the feed was last [`FeedHealth::Ok`] (zero while it is).
    pub since_healthy: Duration,
}

/// A task following a store's change feed for a cache; from
/// [`CachedResolver::follow`].
///
/// Each change read from the log invalidates its key in the cache: moka, the front
/// table and every thread's copy. It starts from the log's newest sequence (flushing the
/// cache once then), replays from the last change it applied after any failure or lost
/// channel, and flushes the whole cache when it learns that changes it had not read
/// were pruned. Losing the push channel or the log is logged once (`warn`), and its
/// return once (`info`).
///
/// Dropping the handle stops the task.
#[must_use = "the feed is followed only while the ChangeFollower is kept"]
#[derive(Debug)]
pub struct ChangeFollower {
    shared: Arc<Shared>,
    applied: watch::Receiver<u64>,
    task: JoinHandle<()>,
}

impl Drop for ChangeFollower {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ChangeFollower {
    /// Where it stands now.
    pub fn state(&self) -> FeedState {
        self.shared.state(*self.applied.borrow())
    }

    /// Waits until the change with sequence `seq` (and every one before it) has been
    /// applied to the cache.
    pub async fn applied(&self, seq: u64) {
        let mut applied = self.applied.clone();
        // The sender lives as long as the task, which only ends when this handle drops.
        let _ = applied.wait_for(|&at| at >= seq).await;
    }
}

impl<R: KeyResolver> CachedResolver<R> {
    /// Follows `feed` (a store's change log) with the default [`FollowOptions`], so that
    /// a change made through any instance invalidates the key here: with PostgreSQL's
    /// `LISTEN/NOTIFY` within milliseconds, by polling within 250 ms.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime (the task is spawned on it).
    ///
    /// ```
    /// use tower_api_key::{CachedResolver, KeyStore, MemoryStore, store::{ChangeFeed, NewKey}};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let store = MemoryStore::new();
    /// let created = store.create(NewKey::new("acme"), "admin").await.unwrap();
    /// // This instance's cache over the store that every instance shares.
    /// let cache = CachedResolver::new(store.clone());
    /// let follower = cache.follow(store.clone());
    /// assert!(cache.lookup(&created.record.hash).await.unwrap().is_some());
    ///
    /// // Revoked elsewhere (straight in the store, not through this cache)...
    /// store.revoke(&created.record.id, "admin").await.unwrap();
    /// follower.applied(store.last_seq().await.unwrap()).await;
    /// // ...and the cache has forgotten the record it held.
    /// let now = cache.lookup(&created.record.hash).await.unwrap().unwrap();
    /// assert!(now.record().revoked_at.is_some());
    /// # }
    /// ```
    pub fn follow<F: ChangeFeed>(&self, feed: F) -> ChangeFollower {
        self.follow_with(feed, FollowOptions::default())
    }

    /// Follows `feed` with `options`; see [`follow`](Self::follow).
    pub fn follow_with<F: ChangeFeed>(&self, feed: F, options: FollowOptions) -> ChangeFollower {
        let (applied_tx, applied) = watch::channel(0);
        let shared = Arc::new(Shared {
            options,
            status: Mutex::new(Status {
                last_read: None,
                healthy_at: Instant::now(),
                push: PushState::Disconnected,
                push_lost: false,
                read_failing: false,
            }),
        });
        let follow = Follow {
            cache: self.clone(),
            feed: Arc::new(feed),
            shared: Arc::clone(&shared),
            applied: applied_tx,
            last: 0,
        };
        ChangeFollower {
            shared,
            applied,
            task: tokio::spawn(follow.run()),
        }
    }
}

#[derive(Debug)]
struct Shared {
    options: FollowOptions,
    status: Mutex<Status>,
}

#[derive(Debug)]
struct Status {
    /// The last successful read of the log (none yet: the feed is down).
    last_read: Option<Instant>,
    /// The last time the feed was healthy (or when following began).
    healthy_at: Instant,
    push: PushState,
    /// A loss of the push channel was logged, and its return not yet.
    push_lost: bool,
    read_failing: bool,
}

impl Shared {
    fn status(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn state(&self, last_seq: u64) -> FeedState {
        let status = self.status();
        let now = Instant::now();
        let health = self.health(&status, now);
        FeedState {
            last_seq,
            health,
            push: status.push,
            since_healthy: if health == FeedHealth::Ok {
                Duration::ZERO
            } else {
                now.saturating_duration_since(status.healthy_at)
            },
        }
    }

    fn health(&self, status: &Status, now: Instant) -> FeedHealth {
        let options = &self.options;
        let Some(last_read) = status.last_read else {
            return FeedHealth::Down;
        };
        let since = now.saturating_duration_since(last_read);
        if since > options.down_after() {
            return FeedHealth::Down;
        }
        let interval = match status.push {
            PushState::Connected => options.push_poll_interval,
            _ => options.poll_interval,
        };
        if status.push == PushState::Disconnected
            || status.read_failing
            || since > interval * 2 + options.read_timeout
        {
            FeedHealth::Lagging
        } else {
            FeedHealth::Ok
        }
    }

    fn read_ok(&self, last_seq: u64) {
        crate::metrics::change_log_read();
        let mut status = self.status();
        let now = Instant::now();
        status.last_read = Some(now);
        if status.read_failing {
            status.read_failing = false;
            tracing::info!(
                last_seq,
                "change feed: reading the store's change log again"
            );
        }
        if status.push != PushState::Disconnected {
            status.healthy_at = now;
        }
    }

    fn read_failed(&self, error: &dyn std::fmt::Display) {
        let mut status = self.status();
        if !status.read_failing {
            status.read_failing = true;
            tracing::warn!(
                %error,
                "change feed: the store's change log cannot be read; changes made elsewhere \
                 are not seen until it can"
            );
        }
    }

    fn push(&self, push: PushState, why: Option<&dyn std::fmt::Display>) {
        let mut status = self.status();
        status.push = push;
        match push {
            // Once per loss, whether the channel dropped or could not be made at all.
            PushState::Disconnected if !status.push_lost => {
                status.push_lost = true;
                tracing::warn!(
                    reason = %why.map(ToString::to_string).unwrap_or_default(),
                    poll_interval = ?self.options.poll_interval,
                    "change feed: no push channel; polling the change log until it is back"
                );
            }
            PushState::Connected if status.push_lost => {
                status.push_lost = false;
                tracing::info!("change feed: the push channel is back");
            }
            _ => {}
        }
    }
}

/// The task's state.
struct Follow<R, F> {
    cache: CachedResolver<R>,
    feed: Arc<F>,
    shared: Arc<Shared>,
    applied: watch::Sender<u64>,
    last: u64,
}

/// What the push task says.
enum Push {
    /// Subscribed: read the log now, which replays what the channel missed.
    Connected,
    /// There may be new changes.
    Changed,
    /// The channel was lost, or could not be made (and why).
    Lost(String),
    /// The store has no push channel.
    Unavailable,
}

/// Aborts the push task when the follower's task ends (or is aborted).
struct PushTask(JoinHandle<()>);

impl Drop for PushTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Subscribes, forwards wake-ups, and subscribes again after a loss (at once, then
/// with backoff), in a task of its own: waiting for a wake-up is never cancelled half
/// way, and a subscribe that hangs never holds up the reads.
async fn push_task<F: ChangeFeed>(feed: Arc<F>, tx: mpsc::Sender<Push>, timeout: Duration) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let why = match tokio::time::timeout(timeout, feed.subscribe()).await {
            Ok(Ok(Some(mut wakeups))) => {
                backoff = FIRST_BACKOFF;
                if tx.send(Push::Connected).await.is_err() {
                    return;
                }
                while wakeups.next().await {
                    // Full: a wake-up is already pending, which is enough.
                    let _ = tx.try_send(Push::Changed);
                }
                if tx
                    .send(Push::Lost("the connection closed".to_owned()))
                    .await
                    .is_err()
                {
                    return;
                }
                continue;
            }
            Ok(Ok(None)) => {
                let _ = tx.send(Push::Unavailable).await;
                return;
            }
            Ok(Err(error)) => error.to_string(),
            Err(_) => TimedOut(timeout).to_string(),
        };
        if tx.send(Push::Lost(why)).await.is_err() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

impl<R: KeyResolver, F: ChangeFeed> Follow<R, F> {
    async fn run(mut self) {
        let options = self.shared.options.clone();
        // Where the log stands: changes from here on are applied. Whatever the cache
        // loaded before is flushed, since changes before this point are not read.
        let mut backoff = FIRST_BACKOFF;
        self.last = loop {
            match self.timed(self.feed.last_seq()).await {
                Ok(seq) => break seq,
                Err(error) => {
                    self.shared.read_failed(&error);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        };
        self.cache.invalidate_all();
        self.applied_through(self.last);

        let (tx, rx) = mpsc::channel::<Push>(16);
        let _push = PushTask(tokio::spawn(push_task(
            Arc::clone(&self.feed),
            tx,
            options.read_timeout,
        )));
        let mut rx = Some(rx);
        let mut connected = false;
        // The log is read at once, on every wake-up and subscribe, and at the latest
        // one poll interval after the last read.
        let mut read = true;
        let mut next_poll = Instant::now();
        loop {
            if std::mem::take(&mut read) || Instant::now() >= next_poll {
                self.catch_up().await;
                let interval = if connected {
                    options.push_poll_interval
                } else {
                    options.poll_interval
                };
                next_poll = Instant::now() + interval;
            }
            let message = match rx.as_mut() {
                Some(messages) => tokio::select! {
                    message = messages.recv() => message,
                    _ = tokio::time::sleep_until(next_poll.into()) => continue,
                },
                None => {
                    tokio::time::sleep_until(next_poll.into()).await;
                    continue;
                }
            };
            let Some(mut message) = message else {
                rx = None; // the push task ended: the store has no channel
                continue;
            };
            // This message and any already queued: one read covers them all.
            loop {
                match message {
                    Push::Changed => read = true,
                    Push::Connected => {
                        connected = true;
                        read = true;
                        self.shared.push(PushState::Connected, None);
                    }
                    Push::Lost(why) => {
                        connected = false;
                        next_poll = next_poll.min(Instant::now() + options.poll_interval);
                        self.shared.push(PushState::Disconnected, Some(&why));
                    }
                    Push::Unavailable => self.shared.push(PushState::Unavailable, None),
                }
                match rx.as_mut().map(mpsc::Receiver::try_recv) {
                    Some(Ok(next)) => message = next,
                    _ => break,
                }
            }
        }
    }

    /// Reads and applies every change after the last one applied.
    async fn catch_up(&mut self) {
        loop {
            match self.timed(self.feed.changes_after(self.last, BATCH)).await {
                Ok(Changes::Next(changes)) => {
                    for change in &changes {
                        crate::metrics::change_applied(change.at);
                        // A revoked record the cache already holds (this instance
                        // revoked it, or loaded it since) stays as it is: dropping it
                        // would turn the key's 401 into a 503 should the store fail
                        // before the next load.
                        if change.kind == ChangeKind::Revoked
                            && self.cache.holds_revoked(&change.hash)
                        {
                            continue;
                        }
                        // Likewise a record the cache holds for a created key: a hash is
                        // stored once, so it was loaded after the creation committed and
                        // the creation cannot have made it wrong (only an "unknown"
                        // remembered before it). Dropping it would cost a store call and,
                        // for a client over its failure limit, refuse its valid key.
                        if change.kind == ChangeKind::Created && self.cache.knows(&change.hash) {
                            continue;
                        }
                        self.cache.invalidate(&change.hash).await;
                    }
                    if let Some(newest) = changes.last() {
                        self.last = newest.seq;
                    }
                    self.applied_through(self.last);
                    if changes.len() < BATCH {
                        return;
                    }
                }
                Ok(Changes::Gap { last_seq }) => {
                    tracing::warn!(
                        from = self.last,
                        to = last_seq,
                        "change feed: changes were pruned from the log before they were read; \
                         every cached key was flushed"
                    );
                    self.cache.invalidate_all();
                    self.last = last_seq;
                    self.applied_through(last_seq);
                    return;
                }
                Err(error) => {
                    self.shared.read_failed(&error);
                    return;
                }
            }
        }
    }

    fn applied_through(&self, seq: u64) {
        self.shared.read_ok(seq);
        self.applied.send_replace(seq);
    }

    /// `call`, within the read timeout.
    async fn timed<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let limit = self.shared.options.read_timeout;
        let timer = crate::metrics::StoreTimer::start();
        let result = tokio::time::timeout(limit, call)
            .await
            .unwrap_or_else(|_| Err(StoreError::Backend(Box::new(TimedOut(limit)))));
        timer.finish(crate::metrics::StoreCall::Changes, result.is_ok());
        result
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use super::*;
    use crate::key::KeyHash;
    use crate::record::KeyRecord;
    use crate::store::{KeyStore, NewKey, Wakeups};
    use crate::{KeyFormat, MemoryStore, ResolveError, Scopes};

    /// Polls `check` until it holds, failing after ten seconds.
    async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !check().await {
            assert!(Instant::now() < deadline, "waited for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn caught_up(follower: &ChangeFollower, store: &MemoryStore) {
        let last = ChangeFeed::last_seq(store).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), follower.applied(last))
            .await
            .expect("the follower did not catch up");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn changes_made_in_the_store_reach_the_cache() {
        let store = MemoryStore::new();
        // A cache with a long TTL: only the feed can tell it of a change.
        let cache = CachedResolver::builder(store.clone())
            .ttl(Duration::from_secs(3600))
            .build();
        let follower = cache.follow(store.clone());
        let a = store.create(NewKey::new("acme"), "admin").await.unwrap();
        caught_up(&follower, &store).await;
        assert!(cache.lookup(&a.record.hash).await.unwrap().is_some());

        store
            .set_scopes(&a.record.id, Scopes::parse(["x"]).unwrap(), "admin")
            .await
            .unwrap();
        caught_up(&follower, &store).await;
        let found = cache.lookup(&a.record.hash).await.unwrap().unwrap();
        assert!(found.has_scope("x"));

        let rotated = store
            .rotate(&a.record.id, Duration::ZERO, "admin")
            .await
            .unwrap();
        caught_up(&follower, &store).await;
        let old = cache.lookup(&a.record.hash).await.unwrap().unwrap();
        assert!(old.record().expires_at.is_some());
        store.revoke(&rotated.record.id, "admin").await.unwrap();
        caught_up(&follower, &store).await;
        let new = cache.lookup(&rotated.record.hash).await.unwrap().unwrap();
        assert!(new.record().revoked_at.is_some());

        // A key that was unknown here a moment ago works once it is made.
        let key = KeyFormat::default().generate();
        assert!(cache.lookup(&key.hash()).await.unwrap().is_none());
        store.insert(KeyRecord::new(&key, "acme"));
        caught_up(&follower, &store).await;
        assert!(cache.lookup(&key.hash()).await.unwrap().is_some());
        let state = follower.state();
        assert_eq!(state.health, FeedHealth::Ok);
        assert_eq!(state.push, PushState::Connected);
        assert_eq!(state.since_healthy, Duration::ZERO);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_revoked_record_already_cached_is_kept_when_its_revocation_arrives() {
        let store = MemoryStore::new();
        let resolver = Counting {
            store: store.clone(),
            ..Counting::default()
        };
        let cache = CachedResolver::new(resolver.clone());
        // Polling only, and slowly: the revocation arrives after the record is cached.
        let feed = Cuttable {
            store: store.clone(),
            refuse_subscribe: Arc::new(AtomicBool::new(true)),
            ..Cuttable::default()
        };
        let follower = cache.follow_with(
            feed,
            FollowOptions::default().poll_interval(Duration::from_millis(200)),
        );
        caught_up(&follower, &store).await;
        let created = store.create(NewKey::new("acme"), "admin").await.unwrap();
        caught_up(&follower, &store).await;
        store.revoke(&created.record.id, "admin").await.unwrap();
        let loaded = cache.lookup(&created.record.hash).await.unwrap().unwrap();
        assert!(loaded.record().revoked_at.is_some());
        let calls = resolver.calls.load(Ordering::SeqCst);
        caught_up(&follower, &store).await;
        cache.lookup(&created.record.hash).await.unwrap().unwrap();
        assert_eq!(resolver.calls.load(Ordering::SeqCst), calls, "not dropped");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_record_loaded_before_its_creation_arrives_is_kept() {
        let store = MemoryStore::new();
        let resolver = Counting {
            store: store.clone(),
            ..Counting::default()
        };
        let cache = CachedResolver::new(resolver.clone());
        // Polling only, and slowly: the creation arrives after the record is cached.
        let feed = Cuttable {
            store: store.clone(),
            refuse_subscribe: Arc::new(AtomicBool::new(true)),
            ..Cuttable::default()
        };
        let follower = cache.follow_with(
            feed,
            FollowOptions::default().poll_interval(Duration::from_millis(200)),
        );
        // One change read, so that the next read is a poll interval away.
        store.create(NewKey::new("other"), "admin").await.unwrap();
        caught_up(&follower, &store).await;
        // Remembered as unknown before it exists: the creation must drop that.
        let unknown = KeyFormat::default().generate();
        assert!(cache.lookup(&unknown.hash()).await.unwrap().is_none());
        store.insert(KeyRecord::new(&unknown, "acme"));
        let created = store.create(NewKey::new("acme"), "admin").await.unwrap();
        cache.lookup(&created.record.hash).await.unwrap().unwrap();
        let calls = resolver.calls.load(Ordering::SeqCst);
        caught_up(&follower, &store).await;
        cache.lookup(&created.record.hash).await.unwrap().unwrap();
        assert_eq!(resolver.calls.load(Ordering::SeqCst), calls, "not dropped");
        assert!(cache.lookup(&unknown.hash()).await.unwrap().is_some());
        assert_eq!(resolver.calls.load(Ordering::SeqCst), calls + 1);
    }

    /// A feed over a memory store whose push channel can be cut, and kept from coming
    /// back, and whose log can be made to report a gap.
    #[derive(Clone, Default)]
    struct Cuttable {
        store: MemoryStore,
        cut: Arc<tokio::sync::Notify>,
        refuse_subscribe: Arc<AtomicBool>,
        subscribes: Arc<AtomicUsize>,
        gap_at: Arc<std::sync::Mutex<Option<u64>>>,
    }

    struct CutWakeups {
        inner: Box<dyn Wakeups>,
        cut: Arc<tokio::sync::Notify>,
    }

    #[async_trait::async_trait]
    impl Wakeups for CutWakeups {
        async fn next(&mut self) -> bool {
            tokio::select! {
                alive = self.inner.next() => alive,
                _ = self.cut.notified() => false,
            }
        }
    }

    #[async_trait::async_trait]
    impl ChangeFeed for Cuttable {
        async fn changes_after(&self, after: u64, limit: usize) -> Result<Changes, StoreError> {
            if let Some(last_seq) = self.gap_at.lock().unwrap().take() {
                return Ok(Changes::Gap { last_seq });
            }
            self.store.changes_after(after, limit).await
        }
        async fn last_seq(&self) -> Result<u64, StoreError> {
            ChangeFeed::last_seq(&self.store).await
        }
        async fn subscribe(&self) -> Result<Option<Box<dyn Wakeups>>, StoreError> {
            self.subscribes.fetch_add(1, Ordering::SeqCst);
            if self.refuse_subscribe.load(Ordering::SeqCst) {
                return Err(StoreError::Backend("connection refused".into()));
            }
            let inner = self.store.subscribe().await?.unwrap();
            Ok(Some(Box::new(CutWakeups {
                inner,
                cut: Arc::clone(&self.cut),
            })))
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_change_made_while_the_channel_is_lost_is_replayed_when_it_returns() {
        let feed = Cuttable::default();
        let store = feed.store.clone();
        let cache = CachedResolver::builder(store.clone())
            .ttl(Duration::from_secs(3600))
            .build();
        // Polling so slow that only the replay after a new subscription can deliver.
        let options = FollowOptions::default()
            .poll_interval(Duration::from_secs(3600))
            .push_poll_interval(Duration::from_secs(3600));
        let follower = cache.follow_with(feed.clone(), options);
        let a = store.create(NewKey::new("acme"), "admin").await.unwrap();
        caught_up(&follower, &store).await;
        assert!(cache.lookup(&a.record.hash).await.unwrap().is_some());

        feed.refuse_subscribe.store(true, Ordering::SeqCst);
        feed.cut.notify_waiters();
        eventually("the lost channel to show", async || {
            feed.cut.notify_waiters();
            follower.state().push == PushState::Disconnected
        })
        .await;
        assert_eq!(follower.state().health, FeedHealth::Lagging);
        let before = follower.state().last_seq;
        store.revoke(&a.record.id, "admin").await.unwrap();
        // Retried, and refused, at least twice: still nothing applied.
        let tries = feed.subscribes.load(Ordering::SeqCst);
        eventually("two more refused subscribes", async || {
            feed.subscribes.load(Ordering::SeqCst) >= tries + 2
        })
        .await;
        assert_eq!(follower.state().last_seq, before);
        let cached = cache.lookup(&a.record.hash).await.unwrap().unwrap();
        assert!(
            cached.record().revoked_at.is_none(),
            "nothing could tell it"
        );
        assert!(follower.state().since_healthy > Duration::ZERO);

        feed.refuse_subscribe.store(false, Ordering::SeqCst);
        caught_up(&follower, &store).await;
        let now = cache.lookup(&a.record.hash).await.unwrap().unwrap();
        assert!(now.record().revoked_at.is_some());
        eventually("the channel to come back", async || {
            follower.state().health == FeedHealth::Ok
        })
        .await;
    }

    /// Counts resolver calls.
    #[derive(Clone, Default)]
    struct Counting {
        store: MemoryStore,
        calls: Arc<AtomicUsize>,
    }

    #[async_trait::async_trait]
    impl crate::KeyResolver for Counting {
        async fn resolve(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, ResolveError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.store.resolve(hash).await
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_gap_in_the_log_flushes_the_whole_cache() {
        let feed = Cuttable::default();
        let resolver = Counting {
            store: feed.store.clone(),
            ..Counting::default()
        };
        let key = KeyFormat::default().generate();
        feed.store.insert(KeyRecord::new(&key, "acme"));
        let cache = CachedResolver::new(resolver.clone());
        let follower = cache.follow(feed.clone());
        caught_up(&follower, &feed.store).await;
        cache.lookup(&key.hash()).await.unwrap().unwrap();
        cache.lookup(&key.hash()).await.unwrap().unwrap();
        assert_eq!(resolver.calls.load(Ordering::SeqCst), 1);
        // The reader is told that changes were pruned before it read them.
        // (At the log's real end: a gap beyond it would be followed by a second one, back
        // to that end, which a late waiter for the first would never see.)
        let end = ChangeFeed::last_seq(&feed.store).await.unwrap() + 1;
        *feed.gap_at.lock().unwrap() = Some(end);
        feed.store
            .insert(KeyRecord::new(&KeyFormat::default().generate(), "other"));
        tokio::time::timeout(Duration::from_secs(10), follower.applied(end))
            .await
            .unwrap();
        cache.lookup(&key.hash()).await.unwrap().unwrap();
        assert_eq!(resolver.calls.load(Ordering::SeqCst), 2, "flushed");
    }

    /// A log that cannot be read.
    struct Down;

    #[async_trait::async_trait]
    impl ChangeFeed for Down {
        async fn changes_after(&self, _: u64, _: usize) -> Result<Changes, StoreError> {
            Err(StoreError::Backend("connection refused".into()))
        }
        async fn last_seq(&self) -> Result<u64, StoreError> {
            Err(StoreError::Backend("connection refused".into()))
        }
    }

    #[tokio::test]
    async fn the_longest_options_do_not_overflow() {
        let store = MemoryStore::new();
        let cache = CachedResolver::new(store.clone());
        let options = FollowOptions::default()
            .poll_interval(Duration::MAX)
            .push_poll_interval(Duration::MAX)
            .read_timeout(Duration::MAX);
        let follower = cache.follow_with(store.clone(), options);
        store.create(NewKey::new("acme"), "admin").await.unwrap();
        caught_up(&follower, &store).await;
        assert_ne!(follower.state().health, FeedHealth::Down);
    }

    #[tokio::test]
    async fn a_log_never_read_is_down() {
        let cache = CachedResolver::new(MemoryStore::new());
        let follower = cache.follow(Down);
        tokio::task::yield_now().await;
        let state = follower.state();
        assert_eq!(state.health, FeedHealth::Down);
        assert_eq!(state.last_seq, 0);
        assert_eq!(FeedHealth::Down.name(), "down");
    }
}
