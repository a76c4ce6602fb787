//! `MODE=floor` of `loadtest_server`: the work `ApiKeyLayer` + `RateLimitLayer` do for an
//! allowed request, written as plainly as it can be, in one service with nothing to
//! configure: the `Bearer` key, its format and checksum, SHA-256 over the whole key, a
//! lookup in a map built at start, the expiry check, the caller in the request's
//! extensions, one GCRA step on an atomic, and the two IETF `RateLimit` fields on the
//! response. No cache with a TTL, no change feed, no usage, no failure limit, no spans: what
//! is left is the floor under our layers on this machine, so that an end-to-end ratio can
//! be split into the work (this mode) and what our layers add above it (`auth-outer`).
//!
//! `MODE=floor-no<part>[-no<part>…]` leaves parts of the work out, to price each on a real
//! server: `nosha` looks the one key up by its hash without hashing the token, `nocrc`
//! skips the format and checksum check, `nogcra` the GCRA step, `noext` the caller in the
//! extensions, `nohdr` the two response fields. With all five off what is left is the
//! header lookup, the map lookup and the expiry check.

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

/// The parts of the work a `floor-no…` mode leaves out.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Skip {
    sha: bool,
    crc: bool,
    gcra: bool,
    ext: bool,
    hdr: bool,
}

impl Skip {
    /// The parts `mode` (`floor`, `floor-nosha-nohdr`, …) leaves out; `None` if `mode` is
    /// not a floor mode.
    pub(crate) fn parse(mode: &str) -> Option<Self> {
        let rest = mode.strip_prefix("floor")?;
        let mut skip = Self::default();
        for part in rest.split('-').skip(1) {
            let flag = match part {
                "nosha" => &mut skip.sha,
                "nocrc" => &mut skip.crc,
                "nogcra" => &mut skip.gcra,
                "noext" => &mut skip.ext,
                "nohdr" => &mut skip.hdr,
                _ => return None,
            };
            *flag = true;
        }
        (rest.is_empty() || rest.starts_with('-')).then_some(skip)
    }
}

/// Keys by SHA-256, the one policy and its prebuilt `RateLimit-Policy` field.
pub(crate) struct FloorLayer {
    keys: Arc<HashMap<[u8; 32], Arc<Caller>>>,
    policy: Arc<(RateLimitPolicy, HeaderValue)>,
    format: Arc<KeyFormat>,
    /// The one key's hash, for `nosha`.
    hash: [u8; 32],
    /// The policy's burst less one, what `nogcra` answers as remaining.
    full: u64,
    skip: Skip,
}

impl FloorLayer {
    /// One key, for `consumer`, limited by `policy`.
    pub(crate) fn new(key: &ApiKey, consumer: &str, policy: RateLimitPolicy, skip: Skip) -> Self {
        let hash: [u8; 32] = Sha256::digest(key.expose_secret().as_bytes()).into();
        let caller = Arc::new(Caller {
            consumer: consumer.to_owned(),
            expires_at: u64::MAX,
            tat: AtomicU64::new(0),
        });
        let (field, full) = match policy.limit() {
            Limit::Rate {
                requests,
                per,
                burst,
            } => {
                let field = format!(
                    "\"{}\";q={requests};w={}",
                    policy.name(),
                    per.as_secs().max(1)
                );
                (field, u64::from(burst).saturating_sub(1))
            }
            Limit::Quota { .. } => panic!("the floor takes a rate, not a quota"),
        };
        let field = HeaderValue::from_str(&field).expect("a policy name is a token");
        Self {
            keys: Arc::new(HashMap::from([(hash, caller)])),
            policy: Arc::new((policy, field)),
            format: Arc::new(KeyFormat::default()),
            hash,
            full,
            skip,
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
            hash: self.hash,
            full: self.full,
            skip: self.skip,
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
    hash: [u8; 32],
    full: u64,
    skip: Skip,
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
        let skip = self.skip;
        if !skip.crc && self.format.validate_bytes(token).is_err() {
            return FloorFuture::Ready {
                response: Some(refuse(StatusCode::UNAUTHORIZED)),
            };
        }
        let hash: [u8; 32] = if skip.sha {
            self.hash
        } else {
            Sha256::digest(token).into()
        };
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
        let outcome = if skip.gcra {
            // What a full bucket would answer, without reading or writing the state.
            gcra::Outcome {
                allowed: true,
                state: 0,
                remaining: self.full,
                reset: Duration::from_secs(1),
                retry_after: Duration::ZERO,
            }
        } else {
            let mut state = caller.tat.load(Ordering::Relaxed);
            loop {
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
            }
        };
        if !outcome.allowed {
            return FloorFuture::Ready {
                response: Some(refuse(StatusCode::TOO_MANY_REQUESTS)),
            };
        }
        if !skip.ext {
            req.extensions_mut().insert(Arc::clone(caller));
        }
        let fields = (!skip.hdr).then(|| {
            let field = ratelimit_field(policy.name(), outcome.remaining, outcome.reset);
            (policy_field.clone(), field)
        });
        FloorFuture::Inner {
            future: self.inner.call(req),
            fields,
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
