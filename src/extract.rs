//! axum extractors: [`Authenticated`] and [`RequireScope`].
//!
//! They read what [`ApiKeyLayer`](crate::ApiKeyLayer) put into the request extensions and
//! reject with the same problem+json and `WWW-Authenticate` answers as the layer.
//!
//! ```
//! use axum::{Router, routing::get};
//! use tower_api_key::{ApiKeyLayer, Authenticated, MemoryStore, RequireScope, scope};
//!
//! scope!(pub OrdersRead = "orders:read");
//!
//! async fn whoami(auth: Authenticated) -> String {
//!     auth.consumer().to_owned()
//! }
//!
//! async fn orders(RequireScope(auth, ..): RequireScope<OrdersRead>) -> String {
//!     format!("orders of {}", auth.consumer())
//! }
//!
//! async fn maybe(auth: Option<Authenticated>) -> &'static str {
//!     if auth.is_some() { "hello, caller" } else { "hello, stranger" }
//! }
//!
//! let app: Router = Router::new()
//!     .route("/whoami", get(whoami))
//!     .route("/orders", get(orders))
//!     .route("/hello", get(maybe))
//!     .layer(ApiKeyLayer::new(MemoryStore::new()).allow_anonymous(true));
//! # let _ = app;
//! ```

use std::convert::Infallible;
use std::marker::PhantomData;
use std::ops::Deref;

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::response::{IntoResponse, Response};
use http::request::Parts;

use crate::auth::{AuthError, Rejection, check_scopes};
use crate::record::{Authenticated, RequiredScope};

impl<S: Send + Sync> FromRequestParts<S> for Authenticated {
    type Rejection = Rejection;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Rejection> {
        parts
            .extensions
            .get::<Authenticated>()
            .cloned()
            .ok_or_else(|| Rejection::for_request(AuthError::MissingKey, &parts.headers))
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for Authenticated {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Option<Self>, Infallible> {
        Ok(parts.extensions.get::<Authenticated>().cloned())
    }
}

/// Extracts the [`Authenticated`] caller if it holds the scope `T` (declared with
/// [`scope!`](crate::scope)); otherwise rejects with 403 `insufficient_scope` (or 401
/// when the request was not authenticated).
pub struct RequireScope<T: RequiredScope>(pub Authenticated, pub PhantomData<fn() -> T>);

impl<T: RequiredScope> std::fmt::Debug for RequireScope<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("RequireScope")
            .field(&T::SCOPE)
            .field(&self.0)
            .finish()
    }
}

impl<T: RequiredScope> Clone for RequireScope<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone(), PhantomData)
    }
}

impl<T: RequiredScope> Deref for RequireScope<T> {
    type Target = Authenticated;
    fn deref(&self) -> &Authenticated {
        &self.0
    }
}

impl<T: RequiredScope, S: Send + Sync> FromRequestParts<S> for RequireScope<T> {
    type Rejection = Rejection;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Rejection> {
        let auth = parts.extensions.get::<Authenticated>();
        match check_scopes(auth, [T::SCOPE]) {
            Ok(()) => Ok(Self(auth.cloned().expect("checked above"), PhantomData)),
            Err(error) => Err(Rejection::for_request(error, &parts.headers)),
        }
    }
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        let mut response = self.render().map(axum::body::Body::from);
        // Seen by the ApiKeyLayer outside, which counts the request as refused.
        crate::auth::mark(&mut response, crate::auth::Outcome::of(self.error()));
        response
    }
}
