use std::borrow::Cow;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use super::future::ResponseFuture;
use super::headers::Headers;
use super::layer::{Anonymous, By, Cost, OnStoreError, RequestInfo, Shared};
use super::policy::RateLimits;
use super::store::{Decision, RateLimitStore, RateLimitStoreError, Subject};
use crate::auth::{AuthError, Outcome, Rejection, RejectionBody, is_grpc, mark};
use crate::record::Authenticated;
use crate::resolve::ResolveError;

/// The service built by [`RateLimitLayer`](super::RateLimitLayer).
pub struct RateLimitService<S, St> {
    pub(crate) inner: S,
    pub(crate) shared: Arc<Shared<St>>,
}

impl<S: Clone, St> Clone for RateLimitService<S, St> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: std::fmt::Debug, St> std::fmt::Debug for RateLimitService<S, St> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// Whose budget, by which policies: what one request is charged against. It borrows
/// from the request and the layer; only a store that answers asynchronously gets an
/// owned copy.
struct Charge<'a> {
    kind: &'static str,
    id: Cow<'a, str>,
    /// The subject's digest, when the cache worked it out at load.
    digest: Option<u64>,
    limits: Cow<'a, RateLimits>,
    cost: u32,
}

impl<'a> Charge<'a> {
    /// Charges `subject` of an authenticated caller.
    fn of(subject: Subject<'a>, limits: Cow<'a, RateLimits>, cost: u32) -> Self {
        Self {
            kind: subject.kind(),
            id: Cow::Borrowed(subject.id()),
            digest: Some(subject.digest()),
            limits,
            cost,
        }
    }

    /// Charges an id that an extractor made.
    fn made(kind: &'static str, id: String, limits: Cow<'a, RateLimits>, cost: u32) -> Self {
        Self {
            kind,
            id: Cow::Owned(id),
            digest: None,
            limits,
            cost,
        }
    }

    fn subject(&self) -> Subject<'_> {
        let subject = Subject::custom(self.kind, &self.id);
        match self.digest {
            Some(digest) => subject.with_digest(digest),
            None => subject,
        }
    }

    fn into_owned(self) -> Charge<'static> {
        Charge {
            kind: self.kind,
            id: Cow::Owned(self.id.into_owned()),
            digest: self.digest,
            limits: Cow::Owned(self.limits.into_owned()),
            cost: self.cost,
        }
    }
}

/// What to do with a request once the store has answered.
enum Verdict<B> {
    /// Call the inner service, adding these headers to its response.
    Pass(Option<Headers>),
    /// Answer with this.
    Reject(Response<B>),
}

impl<S, St, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimitService<S, St>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    St: RateLimitStore,
    ReqBody: Send + 'static,
    ResBody: RejectionBody + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // Decide while borrowing from the request: no clone on the synchronous path, and
        // no clock read for a request that is not charged. What only a refused request or
        // an asynchronous store needs is in functions of its own, kept out of the way of
        // the code every request runs (end to end, the size of that code costs time).
        let now;
        let decided = {
            let Some(charge) = self.charge(&req) else {
                return ResponseFuture::inner(self.inner.call(req), None);
            };
            now = self.shared.config.clock.now();
            let policies = charge.limits.as_slice();
            match self
                .shared
                .store
                .check_sync(charge.subject(), policies, charge.cost, now)
            {
                Some(result) => Ok(self.verdict(result, &charge, req.headers())),
                None => Err(charge.into_owned()),
            }
        };
        match decided {
            Ok(verdict) => self.act(verdict, req),
            Err(charge) => self.wait(charge, now, req),
        }
    }
}

impl<S, St> RateLimitService<S, St>
where
    St: RateLimitStore,
{
    /// An asynchronous store: waits for it, then calls the inner service made ready.
    #[cold]
    #[inline(never)]
    fn wait<ReqBody, ResBody>(
        &mut self,
        charge: Charge<'static>,
        now: u64,
        req: Request<ReqBody>,
    ) -> ResponseFuture<S::Future, ResBody, S::Error>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        ReqBody: Send + 'static,
        ResBody: RejectionBody + Send + 'static,
    {
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        let mut this = Self {
            inner: ready,
            shared: Arc::clone(&self.shared),
        };
        ResponseFuture::waiting(Box::pin(async move {
            let policies = charge.limits.as_slice();
            let result = this
                .shared
                .store
                .check(charge.subject(), policies, charge.cost, now)
                .await;
            let verdict = this.verdict(result, &charge, req.headers());
            this.act(verdict, req).await
        }))
    }
}

impl<S, St> RateLimitService<S, St> {
    /// What this request is charged against, or `None` to let it pass unlimited.
    fn charge<'a, B>(&'a self, req: &'a Request<B>) -> Option<Charge<'a>> {
        let config = &self.shared.config;
        let info = || RequestInfo {
            method: req.method(),
            uri: req.uri(),
            headers: req.headers(),
            extensions: req.extensions(),
        };
        let cost = match req.extensions().get::<Cost>() {
            Some(Cost(n)) => *n,
            None => config.cost.as_ref().map_or(1, |f| f(&info())),
        };
        let limits_of = |auth: &'a Authenticated| -> Cow<'a, RateLimits> {
            let own = auth.rate_limits();
            Cow::Borrowed(if own.is_empty() { &config.default } else { own })
        };
        let charge = match (req.extensions().get::<Authenticated>(), &config.by) {
            (None, _) => match &config.anonymous {
                Anonymous::Pass => return None,
                Anonymous::Limit(kind, f, limits) => {
                    Charge::made(kind, f(&info())?, Cow::Borrowed(limits), cost)
                }
            },
            (Some(auth), By::Key) => Charge::of(auth.key_subject(), limits_of(auth), cost),
            (Some(auth), By::Consumer) => {
                Charge::of(auth.consumer_subject(), limits_of(auth), cost)
            }
            (Some(auth), By::Custom(kind, f)) => match f(&info()) {
                Some(id) => Charge::made(kind, id, limits_of(auth), cost),
                None => Charge::of(auth.key_subject(), limits_of(auth), cost),
            },
        };
        (!charge.limits.is_empty()).then_some(charge)
    }

    /// What to do, given the store's answer.
    #[inline]
    fn verdict<B: RejectionBody>(
        &self,
        result: Result<Decision, RateLimitStoreError>,
        charge: &Charge<'_>,
        request_headers: &http::HeaderMap,
    ) -> Verdict<B> {
        let headers = match result {
            Ok(decision) => {
                let headers = Headers::new(&charge.limits, &decision, self.shared.config.x_headers);
                if decision.allowed() {
                    return Verdict::Pass(Some(headers));
                }
                Ok((decision, headers))
            }
            Err(error) => Err(error),
        };
        self.refusal(headers, charge, request_headers)
    }

    /// A request over its limits, or the store's failure: refused, or passed without
    /// headers if the layer lets requests through when the store fails.
    #[cold]
    #[inline(never)]
    fn refusal<B: RejectionBody>(
        &self,
        over: Result<(Decision, Headers), RateLimitStoreError>,
        charge: &Charge<'_>,
        request_headers: &http::HeaderMap,
    ) -> Verdict<B> {
        // Only a rejection needs to know whether the caller speaks gRPC.
        let grpc = || is_grpc(request_headers);
        let config = &self.shared.config;
        let (decision, headers) = match over {
            Ok(over) => over,
            Err(error) => {
                if let Some(failures) = self.shared.failures.record(config.clock.now()) {
                    tracing::warn!(
                        %error,
                        failures,
                        subject_kind = charge.kind,
                        "rate-limit store failed (failures since the last such line)"
                    );
                }
                return match config.on_store_error {
                    OnStoreError::Allow => Verdict::Pass(None),
                    OnStoreError::Deny => {
                        let error = AuthError::Unavailable(ResolveError::new(error));
                        let mut response = Rejection::new(error, grpc())
                            .render()
                            .map(B::from_rejection);
                        mark(&mut response, Outcome::Unavailable);
                        Verdict::Reject(response)
                    }
                };
            }
        };
        let violated = charge
            .limits
            .iter()
            .zip(decision.statuses())
            .filter(|(_, s)| !s.allowed)
            .map(|(p, _)| p.name().to_owned())
            .collect();
        let error = AuthError::RateLimited {
            retry_after: decision.retry_after(),
            violated,
        };
        let mut response = Rejection::new(error, grpc())
            .render()
            .map(B::from_rejection);
        mark(&mut response, Outcome::RateLimited);
        headers.apply(response.headers_mut());
        Verdict::Reject(response)
    }

    /// Carries out a verdict.
    fn act<ReqBody, ResBody>(
        &mut self,
        verdict: Verdict<ResBody>,
        req: Request<ReqBody>,
    ) -> ResponseFuture<S::Future, ResBody, S::Error>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    {
        match verdict {
            Verdict::Pass(headers) => ResponseFuture::inner(self.inner.call(req), headers),
            Verdict::Reject(response) => ResponseFuture::ready(response),
        }
    }
}
