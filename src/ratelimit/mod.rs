//! Per-key rate limiting and quotas: [`RateLimitLayer`].
//!
//! [`RateLimitPolicy`] says what is allowed (a GCRA rate with a burst, or a quota per
//! UTC calendar day or month); [`RateLimits`] is the set of named policies a key
//! carries in its [`KeyRecord`](crate::KeyRecord), with the layer's default for keys
//! that carry none. The algorithms in [`gcra`] are pure functions of a `u64` state and
//! the time; a [`RateLimitStore`] keeps those states ([`MemoryRateLimitStore`] in this
//! process).
//!
//! Every limited response carries the IETF `RateLimit-Policy` and `RateLimit` fields
//! (`"burst";q=100;w=60` and `"burst";r=42;t=17`); a refused request gets 429 with
//! `Retry-After` (whole seconds, never 0) and an RFC 9457 body of type
//! `https://iana.org/assignments/http-problem-types#quota-exceeded` listing the
//! `violated-policies`, or gRPC `RESOURCE_EXHAUSTED`. A request is charged all or
//! nothing: when one policy refuses it, no other policy's budget is spent.
//!
//! ```
//! use std::time::Duration;
//! use axum::{Router, body::Body, routing::get};
//! use http::{Request, StatusCode};
//! use tower::ServiceExt;
//! use tower_api_key::{
//!     ApiKeyLayer, KeyFormat, KeyRecord, MemoryRateLimitStore, MemoryStore, RateLimitLayer,
//!     RateLimitPolicy, RateLimits,
//! };
//! use tower_api_key::ratelimit::QuotaWindow;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let keys = MemoryStore::new();
//! let key = KeyFormat::default().generate();
//! // This key: 10 a second and 10 000 a day. Keys without policies get the default.
//! keys.insert(KeyRecord::new(&key, "acme").with_rate_limits(RateLimits::new([
//!     RateLimitPolicy::rate("burst", 10, Duration::from_secs(1)).unwrap(),
//!     RateLimitPolicy::quota("daily", 10_000, QuotaWindow::Day).unwrap(),
//! ]).unwrap()));
//! let default: RateLimitPolicy = "100/60s".parse().unwrap();
//!
//! let app = Router::new()
//!     .route("/", get(|| async { "ok" }))
//!     .layer(RateLimitLayer::new(MemoryRateLimitStore::new(), default))
//!     .layer(ApiKeyLayer::new(keys)); // outermost: authenticate first
//!
//! let request = Request::get("/")
//!     .header("authorization", format!("Bearer {}", key.expose_secret()))
//!     .body(Body::empty())
//!     .unwrap();
//! let response = app.oneshot(request).await.unwrap();
//! assert_eq!(response.status(), StatusCode::OK);
//! let remaining = response.headers()["ratelimit"].to_str().unwrap();
//! // `t` of the daily quota is the time to UTC midnight.
//! assert!(remaining.starts_with(r#""burst";r=9;t=1, "daily";r=9999;t="#));
//! # }
//! ```

#[cfg(feature = "redis")]
mod batch;
mod future;
pub mod gcra;
mod headers;
mod layer;
mod memory;
mod policy;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "redis")]
mod redis_conn;
mod service;
pub(crate) mod store;

#[cfg(feature = "redis")]
pub use self::redis::{RedisMode, RedisRateLimitStore};
#[cfg(feature = "redis")]
pub use self::redis_conn::{RedisConfigError, RedisPingError, RedisStoreBuilder};
pub use future::ResponseFuture;
pub use layer::{Clock, Cost, ManualClock, OnStoreError, RateLimitLayer, RequestInfo, SystemClock};
pub use memory::MemoryRateLimitStore;
pub use policy::{
    InvalidPolicy, InvalidRateLimits, Limit, QuotaWindow, RateLimitPolicy, RateLimits,
};
pub use service::RateLimitService;
pub use store::{Decision, PolicyStatus, RateLimitStore, RateLimitStoreError, Subject};
