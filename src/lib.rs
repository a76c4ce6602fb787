//! API-key authentication and per-key rate limiting for [tower] services, axum and tonic.
//!
//! [`ApiKeyLayer`] reads a key from each request, checks its format and checksum, hashes
//! it with SHA-256, resolves the hash through a [`KeyResolver`] behind a moka cache
//! ([`CachedResolver`]), refuses revoked and expired keys, and puts the caller
//! ([`Authenticated`]) into the request extensions. Scopes are checked by axum
//! extractors ([`RequireScope`]), by a layer for route groups ([`RequireScopeLayer`]) and
//! in tonic handlers ([`grpc`]).
//!
//! ```
//! use axum::{Router, body::Body, routing::get};
//! use http::{Request, StatusCode};
//! use tower::ServiceExt;
//! use tower_api_key::{
//!     ApiKeyLayer, Authenticated, KeyFormat, KeyRecord, MemoryStore, RequireScope, Scopes, scope,
//! };
//!
//! scope!(OrdersRead = "orders:read");
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! // Issue a key: the client gets the secret once, the store keeps only its hash.
//! let store = MemoryStore::new();
//! let key = KeyFormat::default().generate();
//! store.insert(
//!     KeyRecord::new(&key, "acme-corp").with_scopes(Scopes::parse(["orders:read"]).unwrap()),
//! );
//!
//! let app = Router::new()
//!     .route("/whoami", get(|auth: Authenticated| async move { auth.consumer().to_owned() }))
//!     .route("/orders", get(|_: RequireScope<OrdersRead>| async { "[]" }))
//!     .layer(ApiKeyLayer::new(store));
//!
//! let get = |path: &str, key: &str| {
//!     Request::get(path).header("authorization", format!("Bearer {key}")).body(Body::empty()).unwrap()
//! };
//! let ok = app.clone().oneshot(get("/orders", key.expose_secret())).await.unwrap();
//! assert_eq!(ok.status(), StatusCode::OK);
//!
//! let typo = app.oneshot(get("/orders", "sk_live_nope")).await.unwrap();
//! assert_eq!(typo.status(), StatusCode::UNAUTHORIZED);
//! # }
//! ```
//!
//! # Features
//!
//! - `axum` (default): extractors and `IntoResponse` for [`Rejection`].
//! - `tonic`: the [`grpc`] helpers and `From<AuthError> for tonic::Status`.
//! - `sqlite`, `postgres`: key storage ([`store::SqliteStore`], [`store::PostgresStore`]).
//! - `redis`: rate limits shared by many instances
//!   ([`ratelimit::RedisRateLimitStore`]).
//! - `admin`: the admin HTTP API and dashboard ([`admin::router`]), and GitHub's secret
//!   scanning partner endpoint ([`admin::SecretScanning`]).
//! - `webhooks`: Standard Webhooks of key events, from the stores' outbox
//!   ([`webhook`]).
//! - `metrics`: request outcomes, cache, store and change-feed metrics through the
//!   `metrics` facade ([`metrics`]).
//! - `cli`: the `apikey` tool.
//! - `full`: all of them.
//!
//! The core (keys, hashing, resolver, cache, layers, memory store) needs none of them.
//!
//! [tower]: https://docs.rs/tower

#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![deny(unreachable_pub)]

#[cfg(feature = "admin")]
pub mod admin;
pub mod auth;
mod clock;
#[cfg(feature = "axum")]
pub mod extract;
mod failure_log;
#[cfg(feature = "tonic")]
pub mod grpc;
pub mod key;
pub mod lifetime;
pub mod metrics;
pub mod ratelimit;
pub mod record;
pub mod resolve;
mod seeded;
pub mod store;
pub mod usage;
#[cfg(feature = "webhooks")]
pub mod webhook;

pub use auth::{
    ApiKeyLayer, ApiKeyService, AuthError, DefaultResponder, KeySource, PeerAddr, Rejection,
    RejectionBody, RequireScopeLayer, RequireScopeService, Responder, ResponseBody,
};
#[cfg(feature = "axum")]
pub use extract::RequireScope;
pub use key::{ApiKey, KeyFormat, KeyHash};
pub use ratelimit::{
    MemoryRateLimitStore, RateLimitLayer, RateLimitPolicy, RateLimitService, RateLimits,
};
pub use record::{Authenticated, KeyRecord, KeyStatus, RequiredScope, Scope, Scopes};
pub use resolve::{CachedResolver, KeyResolver, MemoryStore, ResolveError};
pub use store::{KeyStore, StoreError};

#[doc(hidden)]
pub use record::is_valid_scope as __is_valid_scope;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
