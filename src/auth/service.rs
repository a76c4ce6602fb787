use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use http::{Request, Response};
use tower_service::Service;

use super::error::is_grpc;
use super::layer::Config;
use super::source::SourceError;
use super::{AuthError, DefaultResponder, Rejection, Responder, ResponseBody, ResponseFuture};
use crate::key::KeyHash;
use crate::record::{Authenticated, KeyStatus};
use crate::resolve::{CachedResolver, KeyResolver};

/// The service built by [`ApiKeyLayer`](crate::ApiKeyLayer).
///
/// On success the request reaches the inner service with [`Authenticated`] in its
/// extensions; otherwise the responder answers and the inner service is not called.
#[derive(Debug)]
pub struct ApiKeyService<S, R, P = DefaultResponder> {
    pub(crate) inner: S,
    pub(crate) cache: CachedResolver<R>,
    pub(crate) config: Arc<Config>,
    pub(crate) responder: P,
}

impl<S: Clone, R, P: Clone> Clone for ApiKeyService<S, R, P> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            cache: self.cache.clone(),
            config: Arc::clone(&self.config),
            responder: self.responder.clone(),
        }
    }
}

impl<S, R, P> ApiKeyService<S, R, P> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming `self`.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, R, P, ReqBody, ResBody> Service<Request<ReqBody>> for ApiKeyService<S, R, P>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    R: KeyResolver,
    P: Responder,
    ReqBody: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let config = &*self.config;
        let grpc = is_grpc(req.headers());
        let hash = match config.source.extract(req.headers(), req.uri()) {
            Ok(Some(key)) => match config.format.validate(key) {
                Ok(()) => KeyHash::of(key),
                Err(_) => return self.reject(AuthError::InvalidKey, grpc),
            },
            Ok(None) if config.allow_anonymous => {
                return ResponseFuture::inner(self.inner.call(req));
            }
            Ok(None) => return self.reject(AuthError::MissingKey, grpc),
            Err(SourceError::Conflicting) => return self.reject(AuthError::ConflictingKeys, grpc),
            Err(SourceError::Unreadable) => return self.reject(AuthError::InvalidKey, grpc),
        };
        if config.hide_credentials {
            let (mut parts, body) = req.into_parts();
            config.source.strip(&mut parts.headers, &mut parts.uri);
            req = Request::from_parts(parts, body);
        }

        // Hit path: no await, no boxing.
        if let Some(found) = self.cache.lookup_cached(&hash, Instant::now()) {
            return match admit(found) {
                Ok(auth) => {
                    req.extensions_mut().insert(auth);
                    ResponseFuture::inner(self.inner.call(req))
                }
                Err(error) => self.reject(error, grpc),
            };
        }

        // Miss: resolve, then call the inner service that was made ready.
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        let this = self.with_inner(ready);
        ResponseFuture::resolving(Box::pin(async move {
            let mut this = this;
            let error = match this.cache.lookup_slow(&hash).await {
                Ok(found) => match admit(found) {
                    Ok(auth) => {
                        req.extensions_mut().insert(auth);
                        let response = this.inner.call(req).await?;
                        return Ok(response.map(ResponseBody::inner));
                    }
                    Err(error) => error,
                },
                Err(error) => {
                    tracing::warn!(key_hash = %hash, %error, "API key could not be resolved");
                    AuthError::Unavailable(error)
                }
            };
            Ok(this.rejection(error, grpc))
        }))
    }
}

impl<S, R, P: Responder> ApiKeyService<S, R, P> {
    fn with_inner(&self, inner: S) -> Self {
        Self {
            inner,
            cache: self.cache.clone(),
            config: Arc::clone(&self.config),
            responder: self.responder.clone(),
        }
    }

    fn rejection<B>(&self, error: AuthError, grpc: bool) -> Response<ResponseBody<B>> {
        let rejection = Rejection::with_settings(
            error,
            grpc,
            self.config.realm.clone(),
            self.config.retry_after,
        );
        self.responder.respond(rejection).map(ResponseBody::full)
    }

    fn reject<F, B, E>(&self, error: AuthError, grpc: bool) -> ResponseFuture<F, B, E> {
        ResponseFuture::rejected(self.rejection(error, grpc))
    }
}

/// The checks made on every request against the record itself, whatever the cache holds.
fn admit(found: Option<Authenticated>) -> Result<Authenticated, AuthError> {
    let auth = found.ok_or(AuthError::InvalidKey)?;
    let record = auth.record();
    // Read the clock only for records that can stop working.
    if record.revoked_at.is_some() || record.expires_at.is_some() {
        match record.status(SystemTime::now()) {
            KeyStatus::Active => {}
            KeyStatus::Expired => return Err(AuthError::ExpiredKey),
            KeyStatus::Revoked => return Err(AuthError::InvalidKey),
        }
    }
    Ok(auth)
}
