use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use http::{Extensions, HeaderMap, Method, Uri};
use tower_layer::Layer;

use super::policy::RateLimits;
use super::service::RateLimitService;
use super::store::RateLimitStore;
use crate::failure_log::StoreFailures;

/// The time source of the limiter, in nanoseconds since the Unix epoch. Quotas follow
/// UTC calendar days and months, and a shared store needs one clock for all instances,
/// so this is wall-clock time.
pub trait Clock: Send + Sync + 'static {
    /// Now, in nanoseconds since the Unix epoch.
    fn now(&self) -> u64;
}

/// The system's wall clock, read cheaply: taken from the OS once a second and advanced
/// by the CPU's time-stamp counter in between (through `quanta`, which falls back to the
/// OS clock where the counter is not reliable), so it stays within milliseconds of
/// `SystemTime::now()`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> u64 {
        crate::clock::wall_nanos()
    }
}

/// A clock that moves only when told: for tests of windows and resets without sleeping.
/// Clones share the time.
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A clock showing `at`.
    pub fn new(at: SystemTime) -> Self {
        let clock = Self::default();
        clock.set(at);
        clock
    }

    /// Sets the time.
    pub fn set(&self, at: SystemTime) {
        self.0.store(crate::clock::unix_nanos(at), Ordering::SeqCst);
    }

    /// Moves the time forward.
    pub fn advance(&self, by: Duration) {
        self.0
            .fetch_add(crate::clock::duration_nanos(by), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// What a request costs, if not 1. Insert it into the request's extensions before the
/// [`RateLimitLayer`] (or compute it with [`RateLimitLayer::cost`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost(pub u32);

/// The parts of a request that subject extractors and cost functions may look at.
#[derive(Debug, Clone, Copy)]
pub struct RequestInfo<'a> {
    /// The method.
    pub method: &'a Method,
    /// The URI.
    pub uri: &'a Uri,
    /// The headers.
    pub headers: &'a HeaderMap,
    /// The extensions (for example axum's `ConnectInfo`).
    pub extensions: &'a Extensions,
}

pub(crate) type SubjectFn = Arc<dyn Fn(&RequestInfo<'_>) -> Option<String> + Send + Sync>;
pub(crate) type CostFn = Arc<dyn Fn(&RequestInfo<'_>) -> u32 + Send + Sync>;

/// Whose budget an authenticated request is charged to.
#[derive(Clone)]
pub(crate) enum By {
    Key,
    Consumer,
    Custom(&'static str, SubjectFn),
}

/// What happens to requests without an [`Authenticated`](crate::Authenticated) caller.
#[derive(Clone)]
pub(crate) enum Anonymous {
    Pass,
    Limit(&'static str, SubjectFn, RateLimits),
}

/// What happens when the store cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStoreError {
    /// Let the request through, and log it (the default).
    Allow,
    /// Refuse it with 503.
    Deny,
}

pub(crate) struct Config {
    pub(crate) default: RateLimits,
    pub(crate) by: By,
    pub(crate) anonymous: Anonymous,
    pub(crate) cost: Option<CostFn>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) x_headers: bool,
    pub(crate) on_store_error: OnStoreError,
}

impl Clone for Config {
    fn clone(&self) -> Self {
        Self {
            default: self.default.clone(),
            by: self.by.clone(),
            anonymous: self.anonymous.clone(),
            cost: self.cost.clone(),
            clock: Arc::clone(&self.clock),
            x_headers: self.x_headers,
            on_store_error: self.on_store_error,
        }
    }
}

pub(crate) struct Shared<St> {
    pub(crate) store: St,
    pub(crate) config: Config,
    /// Store failures since the last log line, and when that line was written.
    pub(crate) failures: StoreFailures,
}

/// Limits every request by the rate-limit policies of its caller's key record (or a
/// default), in a [`RateLimitStore`]; see the [module docs](crate::ratelimit).
///
/// Put it inside [`ApiKeyLayer`](crate::ApiKeyLayer): it reads the
/// [`Authenticated`](crate::Authenticated) caller from the request extensions.
pub struct RateLimitLayer<St> {
    shared: Arc<Shared<St>>,
}

impl<St> Clone for RateLimitLayer<St> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<St> fmt::Debug for RateLimitLayer<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("default", &self.shared.config.default)
            .finish_non_exhaustive()
    }
}

impl<St: RateLimitStore + Clone> RateLimitLayer<St> {
    /// Limits each key by its record's policies, or by `default` when it has none.
    /// Requests without a caller pass unlimited (see [`anonymous`](Self::anonymous)).
    pub fn new(store: St, default: impl Into<RateLimits>) -> Self {
        Self {
            shared: Arc::new(Shared {
                store,
                failures: StoreFailures::default(),
                config: Config {
                    default: default.into(),
                    by: By::Key,
                    anonymous: Anonymous::Pass,
                    cost: None,
                    clock: Arc::new(SystemClock),
                    x_headers: false,
                    on_store_error: OnStoreError::Allow,
                },
            }),
        }
    }

    fn config_mut(&mut self) -> &mut Config {
        if Arc::get_mut(&mut self.shared).is_none() {
            self.shared = Arc::new(Shared {
                store: self.shared.store.clone(),
                config: self.shared.config.clone(),
                failures: StoreFailures::default(),
            });
        }
        &mut Arc::get_mut(&mut self.shared)
            .expect("not shared: just made")
            .config
    }

    /// One budget per consumer, shared by all of its keys (default: one per key).
    pub fn per_consumer(mut self) -> Self {
        self.config_mut().by = By::Consumer;
        self
    }

    /// Charges authenticated requests to the subject `f` returns (of kind `kind`);
    /// requests for which it returns `None` are charged per key.
    pub fn per<F>(mut self, kind: &'static str, f: F) -> Self
    where
        F: Fn(&RequestInfo<'_>) -> Option<String> + Send + Sync + 'static,
    {
        self.config_mut().by = By::Custom(kind, Arc::new(f));
        self
    }

    /// Limits requests without a caller by `limits`, per the subject `f` returns (for
    /// example the peer address) of kind `kind`; requests for which it returns `None`
    /// pass. By default requests without a caller pass unlimited.
    pub fn anonymous<F>(mut self, kind: &'static str, f: F, limits: impl Into<RateLimits>) -> Self
    where
        F: Fn(&RequestInfo<'_>) -> Option<String> + Send + Sync + 'static,
    {
        self.config_mut().anonymous = Anonymous::Limit(kind, Arc::new(f), limits.into());
        self
    }

    /// Computes the cost of requests that carry no [`Cost`] extension (default 1).
    pub fn cost<F>(mut self, f: F) -> Self
    where
        F: Fn(&RequestInfo<'_>) -> u32 + Send + Sync + 'static,
    {
        self.config_mut().cost = Some(Arc::new(f));
        self
    }

    /// The time source (default [`SystemClock`]).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.config_mut().clock = Arc::new(clock);
        self
    }

    /// Also sends `X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset`
    /// for the policy closest to its limit (off by default).
    pub fn x_ratelimit_headers(mut self, on: bool) -> Self {
        self.config_mut().x_headers = on;
        self
    }

    /// What to do when the store cannot answer (default [`OnStoreError::Allow`]).
    pub fn on_store_error(mut self, on: OnStoreError) -> Self {
        self.config_mut().on_store_error = on;
        self
    }
}

impl<S, St> Layer<S> for RateLimitLayer<St> {
    type Service = RateLimitService<S, St>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimitService {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}
