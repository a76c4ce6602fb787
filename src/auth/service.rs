use std::net::IpAddr;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};

use http::{Extensions, Request, Response};
use tower_service::Service;
use tracing::Instrument;

use super::error::is_grpc;
use super::layer::Shared;
use super::source::Conflicting;
use super::{
    AuthError, DefaultResponder, Rejection, RejectionBody, Report, Responder, ResponseFuture,
};
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
        // The request with a cached key is served here; everything else is in functions
        // of its own, kept out of the way of the code every request runs (end to end,
        // with the kernel's networking between requests, the size of that code costs
        // time of its own).
        let config = &self.shared.config;
        let hash = match config.source.extract(req.headers(), req.uri()) {
            Ok(Some(key)) => match config.format.validate_bytes(key) {
                Ok(()) => KeyHash::of_bytes(key),
                Err(_) => match self.foreign(key) {
                    Some(hash) => hash,
                    None => return self.fail(AuthError::InvalidKey, &req),
                },
            },
            Ok(None) => return self.no_key(req),
            Err(Conflicting) => return self.reject(AuthError::ConflictingKeys, &req),
        };
        if config.hide_credentials {
            req = self.strip(req);
        }

        // Hit path: no await, no boxing.
        let now = crate::clock::mono_nanos();
        match self.shared.cache.lookup_cached(&hash, now) {
            Some(Ok(auth)) if auth.record().allowed_ips.is_empty() => self.admit(auth, req),
            Some(found) => self.found(found, req),
            None => self.miss(hash, now, req),
        }
    }
}

impl<S, R, P> ApiKeyService<S, R, P>
where
    R: KeyResolver,
    P: Responder,
{
    /// Calls the inner service for `auth`'s request.
    #[inline]
    fn admit<ReqBody, ResBody>(
        &mut self,
        auth: crate::Authenticated,
        mut req: Request<ReqBody>,
    ) -> ResponseFuture<S::Future, ResBody, S::Error>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    {
        let report = Report::of_caller(&self.shared.metrics, &auth);
        let extensions = req.extensions_mut();
        if extensions.is_empty() {
            *extensions = ROOMY.clone();
        }
        extensions.insert(auth);
        ResponseFuture::reporting(self.inner.call(req), report)
    }

    /// A key not in our format, which may have been minted elsewhere and imported by
    /// hash: looked up like ours (bounded by the negative cache) if foreign keys are
    /// accepted. Keys claiming our format never get here.
    #[cold]
    #[inline(never)]
    fn foreign(&self, key: &[u8]) -> Option<KeyHash> {
        let config = &self.shared.config;
        (config.accept_foreign_keys && config.format.may_be_foreign(key))
            .then(|| KeyHash::of_bytes(key))
    }

    /// A request without a key: passed on if anonymous requests are allowed, else
    /// refused.
    #[cold]
    #[inline(never)]
    fn no_key<ReqBody, ResBody>(
        &mut self,
        req: Request<ReqBody>,
    ) -> ResponseFuture<S::Future, ResBody, S::Error>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>>,
        ResBody: RejectionBody,
    {
        if self.shared.config.allow_anonymous {
            let report = Report::anonymous(&self.shared.metrics);
            return ResponseFuture::reporting(self.inner.call(req), report);
        }
        self.reject(AuthError::MissingKey, &req)
    }

    /// `req` without its key, for an inner service that must not see it.
    #[cold]
    #[inline(never)]
    fn strip<ReqBody>(&self, req: Request<ReqBody>) -> Request<ReqBody> {
        let (mut parts, body) = req.into_parts();
        self.shared
            .config
            .source
            .strip(&mut parts.headers, &mut parts.uri);
        Request::from_parts(parts, body)
    }

    /// What the tables hold for the key, other than a plain hit: a key with an
    /// allowlist (not cold: every request of such a key comes here), or a refusal.
    #[inline(never)]
    fn found<ReqBody, ResBody>(
        &mut self,
        found: Result<crate::Authenticated, crate::resolve::Refused>,
        req: Request<ReqBody>,
    ) -> ResponseFuture<S::Future, ResBody, S::Error>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>>,
        ResBody: RejectionBody,
    {
        match found {
            Ok(auth) if !address_allowed(&self.shared.config, &auth, &req) => {
                let mut report = Report::start(&self.shared.metrics);
                self.refused(&mut report, Some(&auth));
                self.refuse(report, AuthError::AddressNotAllowed, &req)
            }
            Ok(auth) => self.admit(auth, req),
            Err(refused) => {
                let mut report = Report::start(&self.shared.metrics);
                self.refused(&mut report, refused.known.as_ref());
                self.fail_reported(report, refused.error, &req)
            }
        }
    }

    /// Not answered from the tables. A client over its failure limit gets only what the
    /// tables hold, and no lookup, but for the keys the store knows: those are refreshed
    /// as usual once their entries age (else its valid keys would stop working one time
    /// to live into the block). Otherwise: resolve, then call the inner service that was
    /// made ready.
    #[cold]
    #[inline(never)]
    fn miss<ReqBody, ResBody>(
        &mut self,
        hash: KeyHash,
        now: u64,
        mut req: Request<ReqBody>,
    ) -> ResponseFuture<S::Future, ResBody, S::Error>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        ReqBody: Send + 'static,
        ResBody: RejectionBody + Send + 'static,
    {
        if let Some(error) = self.too_many_failures(&req)
            && !self.shared.cache.knows(&hash)
        {
            let peeked = self.shared.cache.peek(&hash, now);
            let found = peeked.unwrap_or(Err(crate::resolve::Refused { error, known: None }));
            return self.found(found, req);
        }

        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        let this = self.with_inner(ready);
        let grpc = is_grpc(req.headers());
        let mut report = Report::start(&self.shared.metrics);
        let span = report.span().clone();
        ResponseFuture::resolving(Box::pin(
            async move {
                let mut this = this;
                let error = match this.shared.cache.lookup_slow(&hash).await {
                    Ok(slot) => match slot.into_verdict() {
                        Ok(auth) if !address_allowed(&this.shared.config, &auth, &req) => {
                            this.refused(&mut report, Some(&auth));
                            AuthError::AddressNotAllowed
                        }
                        Ok(auth) => {
                            report.caller(&auth);
                            req.extensions_mut().insert(auth);
                            let response = this.inner.call(req).await;
                            report.finish_with(&response);
                            return response;
                        }
                        Err(refused) => {
                            this.refused(&mut report, refused.known.as_ref());
                            if let Some((limiter, ip)) = this.failure_client(&req) {
                                limiter.failed(ip);
                            }
                            refused.error
                        }
                    },
                    Err(error) => {
                        // Neither the key nor its hash (derived from the key); the key's
                        // id is not known. One line per interval, with how many.
                        let now = crate::clock::wall_nanos();
                        if let Some(failures) = this.shared.store_failures.record(now) {
                            tracing::warn!(
                                %error,
                                failures,
                                "API keys could not be resolved: answering 503 \
                                 (failures since the last such line)"
                            );
                        }
                        AuthError::Unavailable(error)
                    }
                };
                report.refused(&error);
                Ok(this.rejection(error, grpc))
            }
            .instrument(span),
        ))
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

    /// A key was refused. When its record is known (revoked, expired, outside its
    /// allowlist), the report names its caller and, if refusals are counted, the
    /// refusal is counted for the key.
    fn refused(&self, report: &mut Report, known: Option<&crate::Authenticated>) {
        let Some(auth) = known else { return };
        report.caller(auth);
        if let Some(recorder) = &self.shared.config.refusals {
            recorder.record(
                auth.key_id(),
                crate::store::Outcome::Unauthorized,
                std::time::SystemTime::now(),
            );
        }
    }

    /// The failure limiter and the request's client address, when failures are
    /// limited and the address is known.
    fn failure_client<B>(&self, req: &Request<B>) -> Option<(&super::FailureLimiter, IpAddr)> {
        let config = &self.shared.config;
        let limiter = config.failures.as_ref()?;
        let ip = super::client_ip::client_ip(req, &config.trusted_proxies)?;
        Some((limiter, ip))
    }

    /// [`AuthError::TooManyFailures`] if failures are limited and the request's client
    /// has used up its own.
    fn too_many_failures<B>(&self, req: &Request<B>) -> Option<AuthError> {
        let (limiter, ip) = self.failure_client(req)?;
        let retry_after = limiter.blocked(ip)?;
        Some(AuthError::TooManyFailures { retry_after })
    }

    /// Refuses a key that failed: with `error`, or once the client has failed too often,
    /// with [`AuthError::TooManyFailures`] (and without counting it again).
    #[cold]
    #[inline(never)]
    fn fail<F, B: RejectionBody, E, T>(
        &self,
        error: AuthError,
        req: &Request<T>,
    ) -> ResponseFuture<F, B, E> {
        self.fail_reported(Report::start(&self.shared.metrics), error, req)
    }

    /// [`fail`](Self::fail), reported with `report`.
    fn fail_reported<F, B: RejectionBody, E, T>(
        &self,
        report: Report,
        error: AuthError,
        req: &Request<T>,
    ) -> ResponseFuture<F, B, E> {
        // One address lookup: checked, then counted unless already over the limit.
        let Some((limiter, ip)) = self.failure_client(req) else {
            return self.refuse(report, error, req);
        };
        match limiter.blocked(ip) {
            Some(retry_after) => {
                self.refuse(report, AuthError::TooManyFailures { retry_after }, req)
            }
            None => {
                limiter.failed(ip);
                self.refuse(report, error, req)
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

    #[cold]
    #[inline(never)]
    fn reject<F, B: RejectionBody, E, T>(
        &self,
        error: AuthError,
        req: &Request<T>,
    ) -> ResponseFuture<F, B, E> {
        self.refuse(Report::start(&self.shared.metrics), error, req)
    }

    fn refuse<F, B: RejectionBody, E, T>(
        &self,
        mut report: Report,
        error: AuthError,
        req: &Request<T>,
    ) -> ResponseFuture<F, B, E> {
        report.refused(&error);
        ResponseFuture::rejected(self.rejection(error, is_grpc(req.headers())))
    }
}
