use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use super::future::ResponseFuture;
use super::headers::Headers;
use super::layer::{Anonymous, By, Cost, OnStoreError, RequestInfo, Shared};
use super::policy::RateLimits;
use super::store::{Decision, RateLimitStore, RateLimitStoreError, Subject};
use crate::auth::{AuthError, Rejection, RejectionBody, is_grpc};
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

/// Whose budget, by which policies: what one request is charged against.
struct Charge {
    kind: &'static str,
    /// The caller (kept alive so that its ids can be borrowed) or a computed id.
    id: Id,
    limits: RateLimits,
    cost: u32,
}

enum Id {
    Key(Authenticated),
    Consumer(Authenticated),
    Owned(String),
}

impl Charge {
    fn subject(&self) -> Subject<'_> {
        let id = match &self.id {
            Id::Key(a) => a.key_id(),
            Id::Consumer(a) => a.consumer(),
            Id::Owned(s) => s,
        };
        Subject::custom(self.kind, id)
    }
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
        let Some(charge) = self.charge(&req) else {
            return ResponseFuture::inner(self.inner.call(req), None);
        };
        let shared = &*self.shared;
        let now = shared.config.clock.now();
        let policies = charge.limits.as_slice();
        if let Some(result) = shared
            .store
            .check_sync(charge.subject(), policies, charge.cost, now)
        {
            return self.decide(result, &charge, req);
        }
        // An asynchronous store: wait for it, then call the inner service made ready.
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
            this.decide(result, &charge, req).await
        }))
    }
}

impl<S, St> RateLimitService<S, St> {
    /// What this request is charged against, or `None` to let it pass unlimited.
    fn charge<B>(&self, req: &Request<B>) -> Option<Charge> {
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
        let limits_of = |auth: &Authenticated| {
            let own = auth.rate_limits();
            if own.is_empty() {
                config.default.clone()
            } else {
                own.clone()
            }
        };
        let charge = match (req.extensions().get::<Authenticated>(), &config.by) {
            (None, _) => match &config.anonymous {
                Anonymous::Pass => return None,
                Anonymous::Limit(kind, f, limits) => Charge {
                    kind,
                    id: Id::Owned(f(&info())?),
                    limits: limits.clone(),
                    cost,
                },
            },
            (Some(auth), By::Key) => Charge {
                kind: "key",
                limits: limits_of(auth),
                id: Id::Key(auth.clone()),
                cost,
            },
            (Some(auth), By::Consumer) => Charge {
                kind: "consumer",
                limits: limits_of(auth),
                id: Id::Consumer(auth.clone()),
                cost,
            },
            (Some(auth), By::Custom(kind, f)) => match f(&info()) {
                Some(id) => Charge {
                    kind,
                    limits: limits_of(auth),
                    id: Id::Owned(id),
                    cost,
                },
                None => Charge {
                    kind: "key",
                    limits: limits_of(auth),
                    id: Id::Key(auth.clone()),
                    cost,
                },
            },
        };
        (!charge.limits.is_empty()).then_some(charge)
    }

    fn decide<ReqBody, ResBody>(
        &mut self,
        result: Result<Decision, RateLimitStoreError>,
        charge: &Charge,
        req: Request<ReqBody>,
    ) -> ResponseFuture<S::Future, ResBody, S::Error>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>>,
        ResBody: RejectionBody,
    {
        let config = &self.shared.config;
        let decision = match result {
            Ok(decision) => decision,
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
                    OnStoreError::Allow => ResponseFuture::inner(self.inner.call(req), None),
                    OnStoreError::Deny => ResponseFuture::ready(
                        Rejection::new(
                            AuthError::Unavailable(ResolveError::new(error)),
                            is_grpc(req.headers()),
                        )
                        .render()
                        .map(ResBody::from_rejection),
                    ),
                };
            }
        };
        let headers = Headers::new(&charge.limits, &decision, config.x_headers);
        if decision.allowed() {
            return ResponseFuture::inner(self.inner.call(req), Some(headers));
        }
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
        let mut response = Rejection::new(error, is_grpc(req.headers()))
            .render()
            .map(ResBody::from_rejection);
        headers.apply(response.headers_mut());
        ResponseFuture::ready(response)
    }
}
