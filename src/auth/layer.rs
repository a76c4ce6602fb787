use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::error::{DEFAULT_RETRY_AFTER, Realm};
use super::{ApiKeyService, DefaultResponder, KeySource, Responder};
use crate::key::KeyFormat;
use crate::resolve::{CachedResolver, KeyResolver};
use crate::usage::UsageRecorder;

/// Authenticates every request by its API key; see the [module docs](crate::auth).
///
/// Cheap to clone. The cache it holds is shared by every service it builds.
#[derive(Debug)]
pub struct ApiKeyLayer<R, P = DefaultResponder> {
    shared: Arc<Shared<R, P>>,
}

impl<R, P> Clone for ApiKeyLayer<R, P> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

/// Everything the services share, behind one `Arc`: cloning a service (axum does it for
/// every request) costs one reference count.
#[derive(Debug)]
pub(crate) struct Shared<R, P> {
    pub(crate) cache: CachedResolver<R>,
    pub(crate) config: Config,
    pub(crate) responder: P,
}

impl<R, P: Clone> Clone for Shared<R, P> {
    fn clone(&self) -> Self {
        Self {
            cache: self.cache.clone(),
            config: self.config.clone(),
            responder: self.responder.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) format: KeyFormat,
    pub(crate) source: KeySource,
    pub(crate) realm: Realm,
    pub(crate) allow_anonymous: bool,
    pub(crate) hide_credentials: bool,
    /// Look up keys not of `format` too (see [`ApiKeyLayer::accept_foreign_keys`]).
    pub(crate) accept_foreign_keys: bool,
    pub(crate) retry_after: Duration,
    /// Proxies whose `X-Forwarded-For` names the client (for keys with an allowlist).
    pub(crate) trusted_proxies: Arc<[ipnet::IpNet]>,
    /// Where refusals of known keys are counted (see [`ApiKeyLayer::count_refusals`]).
    pub(crate) refusals: Option<UsageRecorder>,
    /// Failed authentications per client (see [`ApiKeyLayer::limit_failures`]).
    pub(crate) failures: Option<super::FailureLimiter>,
}

/// Why [`ApiKeyLayer::realm`] refused a realm.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a realm is printable ASCII without '\"' or '\\\\'")]
pub struct InvalidRealm(());

impl<R: KeyResolver> ApiKeyLayer<R> {
    /// A layer resolving keys through `resolver`, behind a [`CachedResolver`] with its
    /// default settings.
    pub fn new(resolver: R) -> Self {
        Self::from_cache(CachedResolver::new(resolver))
    }

    /// A layer using a cache built elsewhere: to set its capacity and TTLs, or to keep a
    /// handle for [`CachedResolver::invalidate`].
    pub fn from_cache(cache: CachedResolver<R>) -> Self {
        Self {
            shared: Arc::new(Shared {
                cache,
                config: Config {
                    format: KeyFormat::default(),
                    source: KeySource::default(),
                    realm: Realm::default(),
                    allow_anonymous: false,
                    hide_credentials: false,
                    accept_foreign_keys: false,
                    retry_after: DEFAULT_RETRY_AFTER,
                    trusted_proxies: Arc::new([]),
                    refusals: None,
                    failures: None,
                },
                responder: DefaultResponder,
            }),
        }
    }
}

impl<R: KeyResolver, P: Responder> ApiKeyLayer<R, P> {
    /// The key format; keys that do not fit it are refused before any lookup.
    pub fn format(mut self, format: KeyFormat) -> Self {
        self.config_mut().format = format;
        self
    }

    /// Where keys are read (default: `Authorization: Bearer`).
    pub fn source(mut self, source: KeySource) -> Self {
        self.config_mut().source = source;
        self
    }

    /// The realm in `WWW-Authenticate` challenges (default `api`).
    pub fn realm(mut self, realm: &str) -> Result<Self, InvalidRealm> {
        self.config_mut().realm = Realm::new(realm).ok_or(InvalidRealm(()))?;
        Ok(self)
    }

    /// Lets requests that carry no key through, without [`Authenticated`](crate::Authenticated)
    /// in their extensions (off by default). A request with a bad key is still refused.
    pub fn allow_anonymous(mut self, allow: bool) -> Self {
        self.config_mut().allow_anonymous = allow;
        self
    }

    /// The proxies (CIDRs) trusted to name the client in `X-Forwarded-For` (default:
    /// none). A key whose record has [`allowed_ips`](crate::KeyRecord::allowed_ips) is
    /// accepted only from those networks: the client's address is the connection's
    /// peer (axum's `ConnectInfo`, or a [`PeerAddr`](super::PeerAddr) extension) or,
    /// when the peer is one of these proxies, the right-most `X-Forwarded-For` entry
    /// that is not one of them. Elsewhere, or when the address is not known, the request
    /// gets 403 ([`AuthError::AddressNotAllowed`](super::AuthError::AddressNotAllowed))
    /// and never reaches the inner service.
    pub fn trusted_proxies(mut self, proxies: impl IntoIterator<Item = ipnet::IpNet>) -> Self {
        self.config_mut().trusted_proxies = proxies.into_iter().collect();
        self
    }

    /// Also accepts keys minted elsewhere and [imported](crate::KeyStore::import) by
    /// their hash (off by default).
    ///
    /// With it, a presented key that does not [claim](KeyFormat::claims_bytes) this
    /// layer's format (it does not start with the format's prefix and `_`) and is 1 to
    /// [`MAX_FOREIGN_KEY_LEN`](crate::key::MAX_FOREIGN_KEY_LEN) bytes of visible ASCII is
    /// hashed and looked up like any key; an unknown one is remembered as unknown by the
    /// cache's negative TTL, like an unknown key of ours. A key that claims the format
    /// is still checked by its checksum alone, with no lookup, and keys of the format
    /// take exactly the path they take without this option. Choose a prefix that the
    /// foreign keys do not start with.
    ///
    /// ```
    /// use tower_api_key::{ApiKeyLayer, KeyHash, KeyStore, MemoryStore, store::ImportedKey};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let store = MemoryStore::new();
    /// let legacy = "0b9c6e1e-5e37-4b7e-9f0e-8d4a0f3c2a11";
    /// store.import(vec![ImportedKey::new(KeyHash::of(legacy), "acme")], "migration").await.unwrap();
    /// let layer = ApiKeyLayer::new(store).accept_foreign_keys(true);
    /// # let _ = layer;
    /// # }
    /// ```
    pub fn accept_foreign_keys(mut self, accept: bool) -> Self {
        self.config_mut().accept_foreign_keys = accept;
        self
    }

    /// Counts the requests of known keys that this layer refuses — revoked, expired,
    /// or from outside the key's allowlist — into `recorder` as
    /// [`Outcome::Unauthorized`](crate::store::Outcome::Unauthorized), for the key's
    /// [usage over time](crate::store::series) (off by default). Unknown keys are not
    /// counted: they have no record to count them for. The requests this layer lets
    /// through are counted by a [`UsageLayer`](crate::usage::UsageLayer) inside it.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_api_key::{ApiKeyLayer, MemoryStore, usage::UsageRecorder};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let store = MemoryStore::new();
    /// let recorder = UsageRecorder::spawn(store.clone(), Duration::from_secs(5));
    /// let layer = ApiKeyLayer::new(store).count_refusals(recorder);
    /// # let _ = layer;
    /// # }
    /// ```
    pub fn count_refusals(mut self, recorder: UsageRecorder) -> Self {
        self.config_mut().refusals = Some(recorder);
        self
    }

    /// Limits failed authentications per client address (off by default): a client
    /// that fails `limit.failures()` times within `limit.window()` gets 429 with
    /// `Retry-After` ([`AuthError::TooManyFailures`](super::AuthError::TooManyFailures))
    /// for the rest of the window, before any lookup, unless its key is cached as valid.
    /// See [`FailureLimit`](super::FailureLimit). The client's address is found as for
    /// [`trusted_proxies`](Self::trusted_proxies).
    pub fn limit_failures(mut self, limit: super::FailureLimit) -> Self {
        self.config_mut().failures = Some(super::FailureLimiter::new(limit));
        self
    }

    /// Removes the key (its header or query parameter) before the inner service sees
    /// the request (off by default).
    pub fn hide_credentials(mut self, hide: bool) -> Self {
        self.config_mut().hide_credentials = hide;
        self
    }

    /// The `Retry-After` sent with 503 when the key store is unreachable (default 5 s;
    /// rounded up to whole seconds, at least 1).
    pub fn retry_after(mut self, after: Duration) -> Self {
        self.config_mut().retry_after = after;
        self
    }

    /// Answers rejections with `responder` instead of [`DefaultResponder`].
    pub fn responder<P2: Responder>(self, responder: P2) -> ApiKeyLayer<R, P2> {
        ApiKeyLayer {
            shared: Arc::new(Shared {
                cache: self.shared.cache.clone(),
                config: self.shared.config.clone(),
                responder,
            }),
        }
    }

    /// The cache, for [`CachedResolver::invalidate`].
    pub fn cache(&self) -> &CachedResolver<R> {
        &self.shared.cache
    }

    fn config_mut(&mut self) -> &mut Config {
        &mut Arc::make_mut(&mut self.shared).config
    }
}

impl<S, R: KeyResolver, P: Responder> Layer<S> for ApiKeyLayer<R, P> {
    type Service = ApiKeyService<S, R, P>;

    fn layer(&self, inner: S) -> Self::Service {
        ApiKeyService {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}
