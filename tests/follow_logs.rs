//! The change follower tells the operator once per loss of its push channel and once per
//! return, however many subscribes fail in between.
//!
//! In a process of its own with one global subscriber: tracing caches each log line's
//! "is anyone listening" answer process-wide, and in the library's unit tests other
//! threads (with subscribers of their own, or none) now and then left this test's info
//! line cached as unwanted.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tower_api_key::resolve::PushState;
use tower_api_key::store::{ChangeFeed, Changes, Wakeups};
use tower_api_key::{CachedResolver, MemoryStore, StoreError};

/// A feed over a memory store whose push channel can be cut and kept from coming back.
#[derive(Clone, Default)]
struct Cuttable {
    store: MemoryStore,
    cut: Arc<tokio::sync::Notify>,
    refuse_subscribe: Arc<AtomicBool>,
    subscribes: Arc<AtomicUsize>,
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
        let inner = self
            .store
            .subscribe()
            .await?
            .expect("a memory store pushes");
        Ok(Some(Box::new(CutWakeups {
            inner,
            cut: Arc::clone(&self.cut),
        })))
    }
}

/// Log lines, captured.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
    fn count(&self, text: &str) -> usize {
        self.text().matches(text).count()
    }
}

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "waited for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn each_loss_of_the_channel_and_each_return_is_logged_once() {
    let logs = Capture::default();
    let writer = logs.clone();
    tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish(),
    )
    .expect("the only subscriber of this process");
    let feed = Cuttable {
        refuse_subscribe: Arc::new(AtomicBool::new(true)),
        ..Cuttable::default()
    };
    let cache = CachedResolver::new(feed.store.clone());
    let follower = cache.follow(feed.clone());
    let lost = "no push channel; polling the change log";
    let back = "the push channel is back";
    // Twice: several subscribes refused in a row, then one that works.
    for round in 1..=2 {
        let tries = feed.subscribes.load(Ordering::SeqCst);
        feed.cut.notify_waiters();
        eventually("three refused subscribes", async || {
            feed.cut.notify_waiters();
            feed.subscribes.load(Ordering::SeqCst) >= tries + 3
        })
        .await;
        feed.refuse_subscribe.store(false, Ordering::SeqCst);
        eventually("the channel to come back", async || {
            follower.state().push == PushState::Connected
        })
        .await;
        assert_eq!(
            logs.count(lost),
            round,
            "one warning per loss: {}",
            logs.text()
        );
        assert_eq!(
            logs.count(back),
            round,
            "one notice per return: {}",
            logs.text()
        );
        feed.refuse_subscribe.store(true, Ordering::SeqCst);
    }
}
