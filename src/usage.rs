//! Usage tracking off the request path: [`UsageRecorder`] and [`UsageLayer`].
//!
//! The layer counts each authenticated request by its [`Outcome`] (rate limited when the
//! answer is 429, forbidden when it is 403, allowed otherwise) into the recorder's
//! in-memory counters: a short, sharded lock and, once per key and flush, one small
//! allocation. Counts are kept per minute, for the store's
//! [usage over time](crate::store::series). Refusals of known keys (revoked, expired,
//! outside their allowlist) never reach the layer: give the recorder to
//! [`ApiKeyLayer::count_refusals`](crate::ApiKeyLayer::count_refusals) to count them as
//! [`Outcome::Unauthorized`]. A background task writes the counters to the
//! [`KeyStore`] every few seconds ([`KeyStore::record_usage`], one batch) and once more
//! on [`UsageRecorder::shutdown`]. The counters are bounded: past `max_keys` distinct
//! keys between two flushes, counts of further keys are dropped, counted in
//! [`UsageRecorder::dropped`], and reported in a log line at the next flush. Nothing on
//! the request path waits for the store.
//!
//! ```
//! use std::time::Duration;
//! use axum::{Router, routing::get};
//! use tower_api_key::{ApiKeyLayer, MemoryStore, usage::{UsageLayer, UsageRecorder}};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let store = MemoryStore::new();
//! let recorder = UsageRecorder::spawn(store.clone(), Duration::from_secs(5));
//! let app: Router = Router::new()
//!     .route("/", get(|| async { "ok" }))
//!     .layer(UsageLayer::new(recorder.clone()))
//!     .layer(ApiKeyLayer::new(store).count_refusals(recorder.clone()));
//! // … serve `app`; on shutdown:
//! recorder.shutdown().await;
//! # }
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime};

use http::{Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tokio::sync::Notify;
use tower_layer::Layer;
use tower_service::Service;

use crate::record::Authenticated;
use crate::store::series::bucket_start;
use crate::store::{KeyStore, Outcome, UsageBucket, UsageDelta, UsageStep};

const SHARDS: usize = 16;
const DEFAULT_MAX_KEYS: usize = 100_000;

#[derive(Default)]
struct Counts {
    requests: u64,
    rejected: u64,
    last_used_at: Option<SystemTime>,
    /// By minute, oldest first: one or two between flushes, unless clocks jump.
    minutes: Vec<UsageBucket>,
}

impl Counts {
    fn count(&mut self, outcome: Outcome, at: SystemTime) {
        if outcome == Outcome::Allowed {
            self.requests += 1;
        } else {
            self.rejected += 1;
        }
        self.last_used_at = self.last_used_at.max(Some(at));
        let minute = bucket_start(UsageStep::Minute, at);
        match self.minutes.iter_mut().rev().find(|b| b.at == minute) {
            Some(bucket) => bucket.count(outcome),
            None => {
                let mut bucket = UsageBucket::empty(minute);
                bucket.count(outcome);
                let place = self.minutes.partition_point(|b| b.at < minute);
                self.minutes.insert(place, bucket);
            }
        }
    }
}

struct Shared {
    shards: [Mutex<HashMap<Arc<str>, Counts>>; SHARDS],
    max_per_shard: usize,
    dropped: AtomicU64,
    reported_dropped: AtomicU64,
    flushes: AtomicU64,
    stop: Notify,
    done: Notify,
    stopped: std::sync::atomic::AtomicBool,
}

/// Collects usage counts in memory and writes them to a store in batches. Clones share
/// the counters; see the [module docs](self).
#[derive(Clone)]
pub struct UsageRecorder {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for UsageRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsageRecorder")
            .field("dropped", &self.dropped())
            .field("flushes", &self.flushes())
            .finish_non_exhaustive()
    }
}

impl UsageRecorder {
    /// Starts the background task (on the current tokio runtime) that writes to `store`
    /// every `interval`, tracking at most 100 000 keys between two writes.
    pub fn spawn<S: KeyStore>(store: S, interval: Duration) -> Self {
        Self::spawn_with_max_keys(store, interval, DEFAULT_MAX_KEYS)
    }

    /// The same, with another bound on the keys tracked between two writes.
    pub fn spawn_with_max_keys<S: KeyStore>(store: S, interval: Duration, max_keys: usize) -> Self {
        let shared = Arc::new(Shared {
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            max_per_shard: max_keys.div_ceil(SHARDS).max(1),
            dropped: AtomicU64::new(0),
            reported_dropped: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            stop: Notify::new(),
            done: Notify::new(),
            stopped: std::sync::atomic::AtomicBool::new(false),
        });
        let task = Arc::clone(&shared);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval.max(Duration::from_millis(1)));
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                tokio::select! {
                    _ = ticks.tick() => flush(&task, &store).await,
                    () = task.stop.notified() => {
                        flush(&task, &store).await;
                        task.stopped.store(true, Ordering::SeqCst);
                        task.done.notify_waiters();
                        return;
                    }
                }
            }
        });
        Self { shared }
    }

    /// Counts one request of `key_id` at `at` with its outcome. Never waits for the
    /// store.
    pub fn record(&self, key_id: &str, outcome: Outcome, at: SystemTime) {
        let shard = &self.shared.shards[shard_of(key_id)];
        let mut map = shard.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(counts) = map.get_mut(key_id) {
            counts.count(outcome, at);
            return;
        }
        if map.len() >= self.shared.max_per_shard {
            drop(map);
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            crate::metrics::usage_dropped();
            return;
        }
        let mut counts = Counts::default();
        counts.count(outcome, at);
        map.insert(Arc::from(key_id), counts);
    }

    /// Requests whose counts were dropped because the bound was reached.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// How many batches have been written to the store.
    pub fn flushes(&self) -> u64 {
        self.shared.flushes.load(Ordering::Relaxed)
    }

    /// Writes what is counted, stops the background task, and returns when done.
    pub async fn shutdown(&self) {
        let done = self.shared.done.notified();
        if self.shared.stopped.load(Ordering::SeqCst) {
            return;
        }
        self.shared.stop.notify_one();
        done.await;
    }
}

fn shard_of(key_id: &str) -> usize {
    // FNV-1a: key ids are random already; this only spreads them over the shards.
    let h = key_id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    (h as usize) % SHARDS
}

/// Takes every shard's counters and writes them as one batch.
async fn flush<S: KeyStore>(shared: &Shared, store: &S) {
    let mut batch = Vec::new();
    for shard in &shared.shards {
        let taken = std::mem::take(&mut *shard.lock().unwrap_or_else(|e| e.into_inner()));
        batch.extend(taken.into_iter().filter_map(|(key_id, c)| {
            Some(UsageDelta {
                key_id: key_id.to_string(),
                requests: c.requests,
                rejected: c.rejected,
                last_used_at: c.last_used_at?,
                minutes: c.minutes,
            })
        }));
    }
    let dropped = shared.dropped.load(Ordering::Relaxed);
    let reported = shared.reported_dropped.swap(dropped, Ordering::Relaxed);
    if dropped > reported {
        tracing::warn!(
            dropped = dropped - reported,
            "usage counts dropped: more distinct keys than the recorder tracks between flushes"
        );
    }
    if batch.is_empty() {
        return;
    }
    match store.record_usage(&batch).await {
        Ok(()) => {
            shared.flushes.fetch_add(1, Ordering::Relaxed);
        }
        Err(error) => {
            tracing::warn!(%error, keys = batch.len(), "usage counts could not be written");
        }
    }
}

/// Where a trailers-only gRPC answer carries its status.
static GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");

/// Counts every authenticated request into a [`UsageRecorder`] by its [`Outcome`]: rate
/// limited when the response is 429 (gRPC: `grpc-status` 8 in its headers, a
/// trailers-only refusal), forbidden when it is 403 (gRPC: 7), allowed otherwise. Put it
/// inside [`ApiKeyLayer`](crate::ApiKeyLayer) and outside the
/// [`RateLimitLayer`](crate::RateLimitLayer), so that it sees the final answer.
#[derive(Clone, Debug)]
pub struct UsageLayer {
    recorder: UsageRecorder,
}

impl UsageLayer {
    /// Feeds `recorder`.
    pub fn new(recorder: UsageRecorder) -> Self {
        Self { recorder }
    }
}

impl<S> Layer<S> for UsageLayer {
    type Service = UsageService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        UsageService {
            inner,
            recorder: self.recorder.clone(),
        }
    }
}

/// The service built by [`UsageLayer`].
#[derive(Clone, Debug)]
pub struct UsageService<S> {
    inner: S,
    recorder: UsageRecorder,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for UsageService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = UsageFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let caller = req
            .extensions()
            .get::<Authenticated>()
            .map(|auth| (auth.clone(), self.recorder.clone()));
        UsageFuture {
            inner: self.inner.call(req),
            caller,
        }
    }
}

pin_project! {
    /// Response future of [`UsageService`].
    pub struct UsageFuture<F> {
        #[pin]
        inner: F,
        caller: Option<(Authenticated, UsageRecorder)>,
    }
}

impl<F, B, E> Future for UsageFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        if let (Ok(response), Some((auth, recorder))) = (&result, this.caller.take()) {
            let outcome = match response.status() {
                StatusCode::TOO_MANY_REQUESTS => Outcome::RateLimited,
                StatusCode::FORBIDDEN => Outcome::Forbidden,
                // A gRPC refusal is HTTP 200 with its status in the headers
                // (trailers-only); only a 200 needs the header looked up.
                StatusCode::OK => {
                    match response.headers().get(&GRPC_STATUS).map(|v| v.as_bytes()) {
                        Some(b"8") => Outcome::RateLimited,
                        Some(b"7") => Outcome::Forbidden,
                        _ => Outcome::Allowed,
                    }
                }
                _ => Outcome::Allowed,
            };
            recorder.record(auth.key_id(), outcome, SystemTime::now());
        }
        Poll::Ready(result)
    }
}
