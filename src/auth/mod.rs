//! The authentication middleware: [`ApiKeyLayer`] and [`ApiKeyService`].
//!
//! For every request the service
//!
//! 1. reads the key from the configured [`KeySource`] (default `Authorization: Bearer`);
//! 2. checks its length, alphabet, prefix and checksum ([`KeyFormat::validate`](crate::KeyFormat::validate)),
//!    with no allocation and no lookup, so garbage costs almost nothing (with
//!    [`accept_foreign_keys`](ApiKeyLayer::accept_foreign_keys), a key that does not claim
//!    the format is looked up as one minted elsewhere and imported by hash);
//! 3. hashes it with SHA-256 and looks the hash up in the [`CachedResolver`](crate::CachedResolver)
//!    (the only I/O on the path is a cache miss);
//! 4. refuses revoked and expired records, whatever the cache says;
//! 5. inserts [`Authenticated`](crate::Authenticated) into the request extensions and calls
//!    the inner service.
//!
//! | case | HTTP | gRPC |
//! | --- | --- | --- |
//! | no key | 401, `WWW-Authenticate: Bearer realm="…"` | 16 `UNAUTHENTICATED` |
//! | malformed, unknown or revoked key | 401, `…, error="invalid_token"` | 16 |
//! | expired key | 401, `…, error_description="The API key has expired"` | 16 |
//! | two different keys | 400, `…, error="invalid_request"` | 16 |
//! | scope missing ([`RequireScopeLayer`], extractors) | 403, `Bearer error="insufficient_scope", scope="…"` | 7 `PERMISSION_DENIED` |
//! | too many failures from the client ([`ApiKeyLayer::limit_failures`]) | 429, `Retry-After` | 8 `RESOURCE_EXHAUSTED` |
//! | key store down, key not cached | 503, `Retry-After` | 14 `UNAVAILABLE` |
//!
//! HTTP bodies are RFC 9457 `application/problem+json`. A request whose `content-type`
//! starts with `application/grpc` gets HTTP 200 with `grpc-status` and `grpc-message`
//! instead; where the HTTP answer has `Retry-After`, the gRPC one has `retry-after`
//! metadata (seconds) and a `google.rpc.RetryInfo` detail in `grpc-status-details-bin`
//! with the same delay. A [`Responder`] replaces the rendering.
//!
//! # Tracing
//!
//! Each request gets one span, `api_key` (target `tower_api_key::auth`, level `DEBUG`),
//! with the fields `key_id` and `consumer` once the key's record is known (never the
//! key, never its hash) and `outcome`: how the request ended, one of the label values of
//! `tower_api_key_requests_total` ([`metrics`](crate::metrics)): `allowed`, `missing`,
//! `invalid`, `revoked`, `expired`, `forbidden`, `rate_limited`, `unavailable`, …. The
//! inner service runs inside it, so that its spans and events are the span's children.
//!
//! `DEBUG`, as tower-http's `TraceLayer` makes its spans: a service that logs at `INFO`
//! pays one level check per request for it, builds no span and allocates nothing. Turn
//! it on with a filter such as `tower_api_key=debug`, for the whole subscriber or for one
//! of its layers (an OpenTelemetry layer, say).
//!
//! ```
//! use axum::{Router, routing::get};
//! use http::{HeaderName, Request, StatusCode};
//! use tower::ServiceExt;
//! use tower_api_key::{ApiKeyLayer, Authenticated, KeyFormat, KeyRecord, KeySource, MemoryStore};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let store = MemoryStore::new();
//! let key = KeyFormat::default().generate();
//! store.insert(KeyRecord::new(&key, "acme"));
//!
//! let app = Router::new()
//!     .route("/", get(|auth: Authenticated| async move { auth.consumer().to_owned() }))
//!     .layer(
//!         ApiKeyLayer::new(store)
//!             .source(KeySource::bearer().or(KeySource::header(HeaderName::from_static("x-api-key"))))
//!             .hide_credentials(true),
//!     );
//!
//! let request = Request::get("/")
//!     .header("x-api-key", key.expose_secret())
//!     .body(axum::body::Body::empty())
//!     .unwrap();
//! let response = app.clone().oneshot(request).await.unwrap();
//! assert_eq!(response.status(), StatusCode::OK);
//!
//! let response = app.oneshot(Request::get("/").body(axum::body::Body::empty()).unwrap()).await.unwrap();
//! assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
//! # }
//! ```

mod body;
mod client_ip;
mod error;
mod failures;
mod future;
mod layer;
mod outcome;
mod require_scope;
mod responder;
mod retry_info;
mod service;
mod source;

pub use body::{RejectionBody, ResponseBody};
pub use client_ip::PeerAddr;
pub use error::{AuthError, Rejection};
#[cfg(feature = "admin")]
pub(crate) use error::{DEFAULT_RETRY_AFTER, retry_after_value};
pub(crate) use error::{is_grpc, retry_after_secs};
pub(crate) use failures::FailureLimiter;
pub use failures::{DEFAULT_MAX_CLIENTS, FailureLimit, InvalidFailureLimit};
pub(crate) use future::BoxFuture;
pub use future::ResponseFuture;
pub use layer::{ApiKeyLayer, InvalidRealm};
pub(crate) use outcome::{Outcome, Report, mark};
#[cfg(any(feature = "axum", feature = "tonic"))]
pub(crate) use require_scope::check_scopes;
pub use require_scope::{RequireScopeLayer, RequireScopeService};
pub use responder::{DefaultResponder, Responder};
pub use service::ApiKeyService;
pub use source::KeySource;
