//! `MODE=floor` of `loadtest_server`: the work `ApiKeyLayer` + `RateLimitLayer` do for an
//! allowed request, written as plainly as it can be, in one service with nothing to
//! configure: the `Bearer` key, its format and checksum, SHA-256 over the whole key, a
//! lookup in a map built at start, the expiry check, the caller in the request's
//! extensions, one GCRA step on an atomic, and the two IETF `RateLimit` fields on the
//! response. No cache with a TTL, no change feed, no usage, no failure limit, no spans: what
//! is left is the floor under our layers on this machine, so that an end-to-end ratio can
//! be split into the work (this mode) and what our layers add above it (`auth-outer`).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderName, HeaderValue, Request, Response, StatusCode, header};
use sha2::{Digest, Sha256};
use tower::{Layer, Service};
use tower_api_key::ratelimit::Limit;
use tower_api_key::ratelimit::gcra;
use tower_api_key::{ApiKey, KeyFormat, RateLimitPolicy};

static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// What a handler can read of its caller.
#[derive(Debug)]
pub(crate) struct Caller {
    /// The consumer the key belongs to (the load test's handler does not read it).
    #[expect(
        dead_code,
        reason = "a handler would read it; the load test's does not"
    )]
    pub(crate) consumer: String,
    expires_at: u64,
    /// GCRA's theoretical arrival time, nanoseconds since the Unix epoch.
    tat: AtomicU64,
}

/// Keys by SHA-256, the one policy and its prebuilt `RateLimit-Policy` field.
pub(crate) struct FloorLayer {
    keys: Arc<HashMap<[u8; 32], Arc<Caller>>>,
    policy: Arc<(RateLimitPolicy, HeaderValue)>,
    format: Arc<KeyFormat>,
}

impl FloorLayer {
    /// One key, for `consumer`, limited by `policy`.
    pub(crate) fn new(key: &ApiKey, consumer: &str, policy: RateLimitPolicy) -> Self {
        let hash: [u8; 32] = Sha256::digest(key.expose_secret().as_bytes()).into();
        let caller = Arc::new(Caller {
            consumer: consumer.to_owned(),
            expires_at: u64::MAX,
            tat: AtomicU64::new(0),
        });
        let field = match policy.limit() {
            Limit::Rate { requests, per, .. } => {
                format!(
                    "\"{}\";q={requests};w={}",
                    policy.name(),
                    per.as_secs().max(1)
                )
            }
            Limit::Quota { .. } => panic!("the floor takes a rate, not a quota"),
        };
        let field = HeaderValue::from_str(&field).expect("a policy name is a token");
        Self {
            keys: Arc::new(HashMap::from([(hash, caller)])),
            policy: Arc::new((policy, field)),
            format: Arc::new(KeyFormat::default()),
        }
    }
}

impl<S> Layer<S> for FloorLayer {
    type Service = Floor<S>;

    fn layer(&self, inner: S) -> Floor<S> {
        Floor {
            inner,
            keys: Arc::clone(&self.keys),
            policy: Arc::clone(&self.policy),
            format: Arc::clone(&self.format),
        }
    }
}

/// The service of [`FloorLayer`].
#[derive(Clone)]
pub(crate) struct Floor<S> {
    inner: S,
    keys: Arc<HashMap<[u8; 32], Arc<Caller>>>,
    policy: Arc<(RateLimitPolicy, HeaderValue)>,
    format: Arc<KeyFormat>,
}

fn refuse<B: Default>(status: StatusCode) -> Response<B> {
    let mut response = Response::new(B::default());
    *response.status_mut() = status;
    response
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Floor<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = FloorFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let token = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
        let Some(token) = token else {
            return FloorFuture::Ready {
                response: Some(refuse(StatusCode::UNAUTHORIZED)),
            };
        };
        if self.format.validate_bytes(token).is_err() {
            return FloorFuture::Ready {
                response: Some(refuse(StatusCode::UNAUTHORIZED)),
            };
        }
        let hash: [u8; 32] = Sha256::digest(token).into();
        let Some(caller) = self.keys.get(&hash) else {
            return FloorFuture::Ready {
                response: Some(refuse(StatusCode::UNAUTHORIZED)),
            };
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        if now >= caller.expires_at {
            return FloorFuture::Ready {
                response: Some(refuse(StatusCode::UNAUTHORIZED)),
            };
        }
        let (policy, policy_field) = &*self.policy;
        let limit = policy.limit();
        let mut state = caller.tat.load(Ordering::Relaxed);
        let outcome = loop {
            let outcome = gcra::check(&limit, state, now, 1);
            if !outcome.allowed {
                break outcome;
            }
            match caller.tat.compare_exchange_weak(
                state,
                outcome.state,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break outcome,
                Err(actual) => state = actual,
            }
        };
        if !outcome.allowed {
            return FloorFuture::Ready {
                response: Some(refuse(StatusCode::TOO_MANY_REQUESTS)),
            };
        }
        let field = ratelimit_field(policy.name(), outcome.remaining, outcome.reset);
        req.extensions_mut().insert(Arc::clone(caller));
        FloorFuture::Inner {
            future: self.inner.call(req),
            fields: Some((policy_field.clone(), field)),
        }
    }
}

/// `"name";r=42;t=17`, written on the stack.
fn ratelimit_field(name: &str, remaining: u64, reset: Duration) -> HeaderValue {
    let mut buf = [0u8; 128];
    let mut len = 0;
    let mut put = |bytes: &[u8]| {
        let end = (len + bytes.len()).min(buf.len());
        buf[len..end].copy_from_slice(&bytes[..end - len]);
        len = end;
    };
    put(b"\"");
    put(name.as_bytes());
    put(b"\";r=");
    put(decimal(remaining, &mut [0; 20]));
    put(b";t=");
    put(decimal(
        reset.as_secs() + u64::from(reset.subsec_nanos() > 0),
        &mut [0; 20],
    ));
    HeaderValue::from_bytes(&buf[..len]).expect("a token and digits")
}

fn decimal(mut n: u64, digits: &mut [u8; 20]) -> &[u8] {
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &digits[i..]
}

pin_project_lite::pin_project! {
    /// The inner service's future, whose response gets the two fields; or a refusal.
    #[project = FloorProj]
    pub(crate) enum FloorFuture<F, B> {
        /// Waiting for the inner service.
        Inner { #[pin] future: F, fields: Option<(HeaderValue, HeaderValue)> },
        /// A refusal, answered at once.
        Ready { response: Option<Response<B>> },
    }
}

impl<F, B, E> Future for FloorFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            FloorProj::Inner { future, fields } => {
                let mut response = std::task::ready!(future.poll(cx))?;
                if let Some((policy, ratelimit)) = fields.take() {
                    let headers = response.headers_mut();
                    headers.reserve(2);
                    headers.insert(RATELIMIT_POLICY.clone(), policy);
                    headers.insert(RATELIMIT.clone(), ratelimit);
                }
                Poll::Ready(Ok(response))
            }
            FloorProj::Ready { response } => {
                Poll::Ready(Ok(response.take().expect("polled after completion")))
            }
        }
    }
}
