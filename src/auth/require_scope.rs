//! Requiring scopes for a whole group of routes.

use std::borrow::Cow;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use super::error::is_grpc;
use super::{
    AuthError, DefaultResponder, Outcome, Rejection, RejectionBody, Responder, ResponseFuture, mark,
};
use crate::record::{Authenticated, Scope};

/// Refuses requests whose [`Authenticated`] caller lacks any of the given scopes:
/// 403 `insufficient_scope` naming the first missing scope, or 401 when the request
/// was not authenticated at all. Put it inside an [`ApiKeyLayer`](crate::ApiKeyLayer).
///
/// ```
/// use axum::{Router, routing::get};
/// use tower_api_key::{ApiKeyLayer, MemoryStore, RequireScopeLayer, Scope};
///
/// let admin = Router::new()
///     .route("/admin/stats", get(|| async { "ok" }))
///     .layer(RequireScopeLayer::new([Scope::from_static("admin")]));
/// let app: Router = Router::new()
///     .merge(admin)
///     .layer(ApiKeyLayer::new(MemoryStore::new()));
/// # let _ = app;
/// ```
#[derive(Clone, Debug)]
pub struct RequireScopeLayer<P = DefaultResponder> {
    scopes: Arc<[Scope]>,
    responder: P,
}

impl RequireScopeLayer {
    /// Requires every one of `scopes`.
    pub fn new(scopes: impl IntoIterator<Item = Scope>) -> Self {
        Self {
            scopes: scopes.into_iter().collect(),
            responder: DefaultResponder,
        }
    }
}

impl<P: Responder> RequireScopeLayer<P> {
    /// Answers rejections with `responder`.
    pub fn responder<P2: Responder>(self, responder: P2) -> RequireScopeLayer<P2> {
        RequireScopeLayer {
            scopes: self.scopes,
            responder,
        }
    }
}

impl<S, P: Clone> Layer<S> for RequireScopeLayer<P> {
    type Service = RequireScopeService<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireScopeService {
            inner,
            scopes: Arc::clone(&self.scopes),
            responder: self.responder.clone(),
        }
    }
}

/// The service built by [`RequireScopeLayer`].
#[derive(Clone, Debug)]
pub struct RequireScopeService<S, P = DefaultResponder> {
    inner: S,
    scopes: Arc<[Scope]>,
    responder: P,
}

/// The first of `scopes` that `auth` lacks, as the error to answer with.
pub(crate) fn check_scopes<'a>(
    auth: Option<&Authenticated>,
    scopes: impl IntoIterator<Item = &'a str>,
) -> Result<(), AuthError> {
    let auth = auth.ok_or(AuthError::MissingKey)?;
    for scope in scopes {
        if !auth.has_scope(scope) {
            return Err(AuthError::InsufficientScope {
                scope: Cow::Owned(scope.to_owned()),
            });
        }
    }
    Ok(())
}

impl<S, P, ReqBody, ResBody> Service<Request<ReqBody>> for RequireScopeService<S, P>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    P: Responder,
    ResBody: RejectionBody,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let auth = req.extensions().get::<Authenticated>();
        match check_scopes(auth, self.scopes.iter().map(Scope::as_str)) {
            Ok(()) => ResponseFuture::inner(self.inner.call(req)),
            Err(error) => {
                let grpc = is_grpc(req.headers());
                let outcome = Outcome::of(&error);
                let mut response = self
                    .responder
                    .respond(Rejection::new(error, grpc))
                    .map(ResBody::from_rejection);
                mark(&mut response, outcome);
                ResponseFuture::rejected(response)
            }
        }
    }
}
