use bytes::Bytes;
use http::Response;

use super::Rejection;

/// Turns a [`Rejection`] into the response the caller gets.
///
/// The default, [`DefaultResponder`], answers with [`Rejection::render`]. Any
/// `Fn(Rejection) -> Response<Bytes>` closure is a responder too:
///
/// ```
/// use bytes::Bytes;
/// use http::{Response, StatusCode};
/// use tower_api_key::{ApiKeyLayer, MemoryStore, Rejection};
///
/// let layer = ApiKeyLayer::new(MemoryStore::new()).responder(|rejection: Rejection| {
///     let mut response = rejection.render();
///     response.headers_mut().insert("x-auth-failed", "1".parse().unwrap());
///     response
/// });
/// # let _ = layer;
/// ```
pub trait Responder: Clone + Send + Sync + 'static {
    /// The response for `rejection`.
    fn respond(&self, rejection: Rejection) -> Response<Bytes>;
}

/// Answers with [`Rejection::render`]: problem+json and `WWW-Authenticate` for HTTP,
/// `grpc-status` for gRPC.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultResponder;

impl Responder for DefaultResponder {
    fn respond(&self, rejection: Rejection) -> Response<Bytes> {
        rejection.render()
    }
}

impl<F> Responder for F
where
    F: Fn(Rejection) -> Response<Bytes> + Clone + Send + Sync + 'static,
{
    fn respond(&self, rejection: Rejection) -> Response<Bytes> {
        self(rejection)
    }
}
