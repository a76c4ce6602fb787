use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};

use http::{Extensions, Request, Response};
use tower_service::Service;

use super::error::is_grpc;
use super::layer::Shared;
use super::source::Conflicting;
use super::{AuthError, DefaultResponder, Rejection, RejectionBody, Responder, ResponseFuture};
use crate::key::KeyHash;
use crate::resolve::KeyResolver;

/// An empty `Extensions` whose map already has room for seven entries. A request's
/// map is made on its first insert with room for three; axum's router adds three of its
/// own after ours, and the fourth would make the map grow (a new allocation and a
/// rehash) on every request. Cloning this one instead costs the same allocations as
/// the first insert and never grows.
static ROOMY: LazyLock<Extensions> = LazyLock::new(|| {
    #[derive(Clone)]
    struct Room<const N: usize>;
    let mut extensions = Extensions::new();
    extensions.insert(Room::<0>);
    extensions.insert(Room::<1>);
    extensions.insert(Room::<2>);
    extensions.insert(Room::<3>);
    extensions.clear();
    extensions
});

/// The service built by [`ApiKeyLayer`](crate::ApiKeyLayer).
///
/// On success the request reaches the inner service with
/// [`Authenticated`](crate::Authenticated) in its
/// extensions; otherwise the responder answers and the inner service is not called.
#[derive(Debug)]
pub struct ApiKeyService<S, R, P = DefaultResponder> {
    pub(crate) inner: S,
    pub(crate) shared: Arc<Shared<R, P>>,
}

impl<S: Clone, R, P> Clone for ApiKeyService<S, R, P> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
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
    ResBody: RejectionBody + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let config = &self.shared.config;
        let hash = match config.source.extract(req.headers(), req.uri()) {
            Ok(Some(key)) => match config.format.validate_bytes(key) {
                Ok(()) => KeyHash::of_bytes(key),
                // Minted elsewhere, imported by hash: looked up like ours, bounded by the
                // negative cache. Keys claiming our format never get here.
                Err(_) if config.accept_foreign_keys && config.format.may_be_foreign(key) => {
                    KeyHash::of_bytes(key)
                }
                Err(_) => return self.fail(AuthError::InvalidKey, &req),
            },
            Ok(None) if config.allow_anonymous => {
                return ResponseFuture::inner(self.inner.call(req));
            }
            Ok(None) => return self.reject(AuthError::MissingKey, &req),
            Err(Conflicting) => return self.reject(AuthError::ConflictingKeys, &req),
        };
        if config.hide_credentials {
            let (mut parts, body) = req.into_parts();
            config.source.strip(&mut parts.headers, &mut parts.uri);
            req = Request::from_parts(parts, body);
        }

        // Hit path: no await, no boxing. A client over its failure limit gets only
        // what the tables hold, and no lookup.
        let now = crate::clock::mono_nanos();
        if let Some(found) = self.shared.cache.lookup_cached(&hash, now).or_else(|| {
            let error = self.too_many_failures(&req)?;
            let peeked = self.shared.cache.peek(&hash, now);
            Some(peeked.unwrap_or(Err(crate::resolve::Refused { error, known: None })))
        }) {
            return match found {
                Ok(auth) if !address_allowed(config, &auth, &req) => {
                    self.refused(Some(&auth));
                    self.reject(AuthError::AddressNotAllowed, &req)
                }
                Ok(auth) => {
                    let extensions = req.extensions_mut();
                    if extensions.is_empty() {
                        *extensions = ROOMY.clone();
                    }
                    extensions.insert(auth);
                    ResponseFuture::inner(self.inner.call(req))
                }
                Err(refused) => {
                    self.refused(refused.known.as_ref());
                    self.fail(refused.error, &req)
                }
            };
        }

        // Miss: resolve, then call the inner service that was made ready.
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        let this = self.with_inner(ready);
        let grpc = is_grpc(req.headers());
        ResponseFuture::resolving(Box::pin(async move {
            let mut this = this;
            let error = match this.shared.cache.lookup_slow(&hash).await {
                Ok(slot) => match slot.into_verdict() {
                    Ok(auth) if !address_allowed(&this.shared.config, &auth, &req) => {
                        this.refused(Some(&auth));
                        AuthError::AddressNotAllowed
                    }
                    Ok(auth) => {
                        req.extensions_mut().insert(auth);
                        let response = this.inner.call(req).await?;
                        return Ok(response);
                    }
                    Err(refused) => {
                        this.refused(refused.known.as_ref());
                        this.count_failure(&req);
                        refused.error
                    }
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

/// May `auth`'s key be used from where `req` comes from? (Always, without an allowlist:
/// one length check on the hit path.)
fn address_allowed<B>(
    config: &super::layer::Config,
    auth: &crate::Authenticated,
    req: &Request<B>,
) -> bool {
    let record = auth.record();
    record.allowed_ips.is_empty()
        || super::client_ip::client_ip(req, &config.trusted_proxies)
            .is_some_and(|ip| record.allows_ip(ip))
}

impl<S, R, P: Responder> ApiKeyService<S, R, P> {
    fn with_inner(&self, inner: S) -> Self {
        Self {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }

    /// A key was refused; counts it for its key when the key is known (revoked,
    /// expired, outside its allowlist) and refusals are counted.
    fn refused(&self, known: Option<&crate::Authenticated>) {
        if let (Some(auth), Some(recorder)) = (known, &self.shared.config.refusals) {
            recorder.record(
                auth.key_id(),
                crate::store::Outcome::Unauthorized,
                std::time::SystemTime::now(),
            );
        }
    }

    /// [`AuthError::TooManyFailures`] if failures are limited and the request's client
    /// has used up its own.
    fn too_many_failures<B>(&self, req: &Request<B>) -> Option<AuthError> {
        let config = &self.shared.config;
        let limiter = config.failures.as_ref()?;
        let ip = super::client_ip::client_ip(req, &config.trusted_proxies)?;
        let retry_after = limiter.blocked(ip)?;
        Some(AuthError::TooManyFailures { retry_after })
    }

    /// Counts a failed authentication of the request's client, if failures are limited.
    fn count_failure<B>(&self, req: &Request<B>) {
        let config = &self.shared.config;
        if let Some(limiter) = &config.failures
            && let Some(ip) = super::client_ip::client_ip(req, &config.trusted_proxies)
        {
            limiter.failed(ip);
        }
    }

    /// Refuses a key that failed: with `error`, or once the client has failed too often,
    /// with [`AuthError::TooManyFailures`] (and without counting it again).
    fn fail<F, B: RejectionBody, E, T>(
        &self,
        error: AuthError,
        req: &Request<T>,
    ) -> ResponseFuture<F, B, E> {
        if self.shared.config.failures.is_none() {
            return self.reject(error, req);
        }
        match self.too_many_failures(req) {
            Some(too_many) => self.reject(too_many, req),
            None => {
                self.count_failure(req);
                self.reject(error, req)
            }
        }
    }

    fn rejection<B: RejectionBody>(&self, error: AuthError, grpc: bool) -> Response<B> {
        let config = &self.shared.config;
        let rejection = Rejection::with_settings(error, grpc, &config.realm, config.retry_after);
        self.shared
            .responder
            .respond(rejection)
            .map(B::from_rejection)
    }

    fn reject<F, B: RejectionBody, E, T>(
        &self,
        error: AuthError,
        req: &Request<T>,
    ) -> ResponseFuture<F, B, E> {
        ResponseFuture::rejected(self.rejection(error, is_grpc(req.headers())))
    }
}
