//! Helpers for tonic handlers behind [`ApiKeyLayer`](crate::ApiKeyLayer).
//!
//! The layer itself answers gRPC requests (`content-type: application/grpc…`) with the
//! right `grpc-status`; inside handlers, these read the caller and check scopes, with
//! errors as `tonic::Status`.
//!
//! ```
//! use tonic::{Request, Status};
//! use tower_api_key::grpc;
//!
//! fn handler(request: &Request<()>) -> Result<String, Status> {
//!     let auth = grpc::require_scope(request, "orders:read")?;
//!     Ok(auth.consumer().to_owned())
//! }
//! // Without the layer in front, there is no caller.
//! assert_eq!(handler(&Request::new(())).unwrap_err().code(), tonic::Code::Unauthenticated);
//! ```

use tonic::{Code, Request, Status};

use crate::auth::{AuthError, Rejection, check_scopes};
use crate::record::{Authenticated, RequiredScope};

impl From<AuthError> for Status {
    /// The caller-facing message: for `Unavailable`, without the store's own error.
    fn from(error: AuthError) -> Self {
        Status::new(Code::from(error.grpc_code()), error.detail())
    }
}

impl From<Rejection> for Status {
    fn from(rejection: Rejection) -> Self {
        rejection.into_error().into()
    }
}

/// The authenticated caller of `request`, or `UNAUTHENTICATED`.
pub fn authenticated<T>(request: &Request<T>) -> Result<&Authenticated, Status> {
    request
        .extensions()
        .get::<Authenticated>()
        .ok_or_else(|| AuthError::MissingKey.into())
}

/// The authenticated caller of `request` if it holds `scope`; otherwise
/// `PERMISSION_DENIED` (or `UNAUTHENTICATED` when there is no caller).
pub fn require_scope<'a, T>(
    request: &'a Request<T>,
    scope: &str,
) -> Result<&'a Authenticated, Status> {
    let auth = request.extensions().get::<Authenticated>();
    check_scopes(auth, [scope])?;
    Ok(auth.expect("checked above"))
}

/// [`require_scope`] with a scope type declared by [`scope!`](crate::scope).
pub fn require<S: RequiredScope, T>(request: &Request<T>) -> Result<&Authenticated, Status> {
    require_scope(request, S::SCOPE)
}
