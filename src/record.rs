//! What a store keeps about a key ([`KeyRecord`]), what a request learns about its caller
//! ([`Authenticated`]), and the scopes a key grants ([`Scopes`]).
//!
//! ```
//! use tower_api_key::{Scope, Scopes};
//!
//! let granted = Scopes::parse(["orders:*", "users:read"]).unwrap();
//! assert!(granted.grants("orders:read"));
//! assert!(granted.grants("orders:refunds:write"));
//! assert!(granted.grants("users:read"));
//! assert!(!granted.grants("users:write"));
//! assert!(Scopes::from_iter([Scope::new("*").unwrap()]).grants("anything:at:all"));
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use crate::key::{ApiKey, KeyHash};
use crate::ratelimit::RateLimits;
use crate::ratelimit::store::{Subject, subject_digest};
use crate::resolve::{Stamp, Stamped};

/// Longest scope accepted, in bytes.
const MAX_SCOPE_LEN: usize = 128;

/// Why a scope string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "a scope is 1 to 128 characters of [A-Za-z0-9_.:/-], optionally ending in ':*', or exactly '*'"
)]
pub struct InvalidScope(());

/// One permission, such as `orders:read`.
///
/// A scope is 1 to 128 characters of `A-Z a-z 0-9 _ . : / -`. A scope ending in `:*`
/// (such as `orders:*`) grants every scope that starts with what precedes the `*`; the
/// scope `*` grants everything.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Scope(Arc<str>);

impl Scope {
    /// Checks and wraps a scope string.
    pub fn new(scope: &str) -> Result<Self, InvalidScope> {
        if is_valid_scope(scope) {
            Ok(Self(scope.into()))
        } else {
            Err(InvalidScope(()))
        }
    }

    /// Wraps a scope literal.
    ///
    /// # Panics
    ///
    /// Panics if `scope` is not a valid scope, like `HeaderName::from_static` does for
    /// header names; use [`Scope::new`] for input from outside the program.
    pub fn from_static(scope: &'static str) -> Self {
        assert!(is_valid_scope(scope), "invalid scope literal {scope:?}");
        Self(scope.into())
    }

    /// The scope as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Does holding this scope grant `required`?
    pub fn grants(&self, required: &str) -> bool {
        let granted = self.as_str();
        if granted == required || granted == "*" {
            return true;
        }
        match granted.strip_suffix('*') {
            Some(stem) => required.len() > stem.len() && required.starts_with(stem),
            None => false,
        }
    }
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl AsRef<str> for Scope {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl TryFrom<&str> for Scope {
    type Error = InvalidScope;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

/// Is `s` a valid scope? Usable in constants, so that [`scope!`](crate::scope) can check
/// its argument at compile time.
#[doc(hidden)]
pub const fn is_valid_scope(s: &str) -> bool {
    let b = s.as_bytes();
    if b.is_empty() || b.len() > MAX_SCOPE_LEN {
        return false;
    }
    if b.len() == 1 && b[0] == b'*' {
        return true;
    }
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let ok = c.is_ascii_alphanumeric()
            || matches!(c, b'_' | b'.' | b':' | b'/' | b'-')
            // `*` only as the last character, right after a `:`.
            || (c == b'*' && i == b.len() - 1 && i > 0 && b[i - 1] == b':');
        if !ok {
            return false;
        }
        i += 1;
    }
    true
}

/// A scope known at compile time, for [`RequireScope`](crate::RequireScope) and
/// [`grpc::require`](crate::grpc). Declare one with [`scope!`](crate::scope).
pub trait RequiredScope: Send + Sync + 'static {
    /// The scope string.
    const SCOPE: &'static str;
}

/// Declares a type standing for one scope, checked at compile time.
///
/// ```
/// use tower_api_key::{RequiredScope, scope};
///
/// scope!(
///     /// May read orders.
///     pub OrdersRead = "orders:read"
/// );
/// assert_eq!(OrdersRead::SCOPE, "orders:read");
/// ```
///
/// An invalid scope does not compile:
///
/// ```compile_fail
/// tower_api_key::scope!(Bad = "no spaces allowed");
/// ```
#[macro_export]
macro_rules! scope {
    ($(#[$meta:meta])* $vis:vis $name:ident = $scope:literal) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, Default)]
        $vis struct $name;

        impl $crate::RequiredScope for $name {
            const SCOPE: &'static str = $scope;
        }

        const _: () = assert!(
            $crate::__is_valid_scope($scope),
            concat!("invalid scope: ", $scope)
        );
    };
}

/// The set of scopes a key grants. Cheap to clone.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Scopes(Arc<[Scope]>);

impl Scopes {
    /// No scopes.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Checks and collects scope strings.
    pub fn parse<I>(scopes: I) -> Result<Self, InvalidScope>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        scopes.into_iter().map(|s| Scope::new(s.as_ref())).collect()
    }

    /// Does any scope in the set grant `required`?
    pub fn grants(&self, required: &str) -> bool {
        self.0.iter().any(|s| s.grants(required))
    }

    /// The scopes, sorted and without duplicates.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &Scope> {
        self.0.iter()
    }

    /// How many scopes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// No scopes at all?
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<Scope> for Scopes {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Self {
        let mut v: Vec<Scope> = iter.into_iter().collect();
        v.sort();
        v.dedup();
        Self(v.into())
    }
}

impl fmt::Debug for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.iter()).finish()
    }
}

/// Generates a new random key id such as `key_3kT9…` (16 random bytes, base62).
pub fn generate_key_id() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the operating system's random number generator failed");
    let mut n = u128::from_be_bytes(bytes);
    let mut id = String::with_capacity(4 + 22);
    id.push_str("key_");
    let mut digits = [0u8; 22];
    for d in digits.iter_mut().rev() {
        *d = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"[(n % 62) as usize];
        n /= 62;
    }
    id.extend(digits.iter().map(|&d| char::from(d)));
    id
}

/// Text that is not a network such as `10.0.0.0/8`, `2001:db8::/32` or one address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected a network such as 10.0.0.0/8 or 2001:db8::/32, or one address")]
pub struct InvalidNetwork(());

/// Parses an allowlist entry: a CIDR (IPv4 or IPv6) or one address (a /32 or /128).
/// Host bits are cleared: `10.1.2.3/8` is `10.0.0.0/8`.
pub fn parse_network(text: &str) -> Result<ipnet::IpNet, InvalidNetwork> {
    let text = text.trim();
    let net = match text.parse::<ipnet::IpNet>() {
        Ok(net) => net,
        Err(_) => text
            .parse::<std::net::IpAddr>()
            .map(ipnet::IpNet::from)
            .map_err(|_| InvalidNetwork(()))?,
    };
    // Client addresses are compared as IPv4 when IPv4-mapped: so are such networks.
    if let ipnet::IpNet::V6(v6) = net
        && let Some(v4) = v6.addr().to_ipv4_mapped()
        && v6.prefix_len() >= 96
    {
        let v4 = ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).map_err(|_| InvalidNetwork(()))?;
        return Ok(ipnet::IpNet::V4(v4.trunc()));
    }
    Ok(net.trunc())
}

#[cfg(test)]
mod network_tests {
    use super::parse_network;

    #[test]
    fn networks_parse_with_host_bits_cleared_and_mapped_ipv4_as_ipv4() {
        let net = |s: &str| parse_network(s).map(|n| n.to_string());
        assert_eq!(net("10.1.2.3/8").as_deref(), Ok("10.0.0.0/8"));
        assert_eq!(net(" 203.0.113.7 ").as_deref(), Ok("203.0.113.7/32"));
        assert_eq!(net("2001:db8::1").as_deref(), Ok("2001:db8::1/128"));
        assert_eq!(net("::ffff:10.0.0.0/104").as_deref(), Ok("10.0.0.0/8"));
        assert_eq!(net("::ffff:192.0.2.1").as_deref(), Ok("192.0.2.1/32"));
        for bad in ["", "10.0.0.0/33", "localhost", "10.0.0", "::/129"] {
            assert!(parse_network(bad).is_err(), "{bad:?}");
        }
    }
}

/// What a store keeps about one key. It never holds the key itself, only its
/// [`KeyHash`] and its public [`start`](Self::start).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyRecord {
    /// Stable identifier of the key (not secret), e.g. `key_3kT9…`.
    pub id: String,
    /// SHA-256 of the key.
    pub hash: KeyHash,
    /// The key's public start, e.g. `sk_live_AbC1`, for display.
    pub start: String,
    /// Who the key belongs to: a user, team or application id.
    pub consumer: String,
    /// A human-readable name, e.g. `ci-deploy`.
    pub name: String,
    /// What the key may do.
    pub scopes: Scopes,
    /// When the key was created.
    pub created_at: SystemTime,
    /// When the key stops working, if ever.
    pub expires_at: Option<SystemTime>,
    /// When the key was revoked, if it was.
    pub revoked_at: Option<SystemTime>,
    /// When the key was deleted, if it was ([`KeyStore::delete`](crate::KeyStore::delete)):
    /// a deleted key is revoked too, listed no more, and changes no more; the store
    /// keeps its record, audit log and past usage.
    pub deleted_at: Option<SystemTime>,
    /// Free-form string metadata, copied into [`Authenticated`].
    pub metadata: BTreeMap<String, String>,
    /// The rate-limit policies of this key; empty means the
    /// [`RateLimitLayer`](crate::RateLimitLayer)'s default.
    pub rate_limits: RateLimits,
    /// The networks this key may be used from (IPv4 and IPv6 CIDRs); empty: anywhere.
    /// [`ApiKeyLayer`](crate::ApiKeyLayer) refuses a request from elsewhere with 403.
    pub allowed_ips: Vec<ipnet::IpNet>,
}

impl KeyRecord {
    /// A record for `key` with a fresh id, no name, no scopes, created now, never expiring.
    pub fn new(key: &ApiKey, consumer: impl Into<String>) -> Self {
        Self {
            id: generate_key_id(),
            hash: key.hash(),
            start: key.start().to_owned(),
            consumer: consumer.into(),
            name: String::new(),
            scopes: Scopes::empty(),
            created_at: SystemTime::now(),
            expires_at: None,
            revoked_at: None,
            deleted_at: None,
            metadata: BTreeMap::new(),
            rate_limits: RateLimits::default(),
            allowed_ips: Vec::new(),
        }
    }

    /// Sets the networks the key may be used from (empty: anywhere).
    pub fn with_allowed_ips(mut self, networks: impl IntoIterator<Item = ipnet::IpNet>) -> Self {
        self.allowed_ips = networks.into_iter().collect();
        self
    }

    /// May the key be used from `ip`? (Always, without an allowlist.)
    pub fn allows_ip(&self, ip: std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.allowed_ips.is_empty() || self.allowed_ips.iter().any(|net| net.contains(&ip))
    }

    /// Sets the rate-limit policies.
    pub fn with_rate_limits(mut self, limits: impl Into<RateLimits>) -> Self {
        self.rate_limits = limits.into();
        self
    }

    /// Sets the id.
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    /// Sets the name.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets the scopes.
    pub fn with_scopes(mut self, scopes: Scopes) -> Self {
        self.scopes = scopes;
        self
    }

    /// Sets the expiry time.
    pub fn with_expires_at(mut self, at: SystemTime) -> Self {
        self.expires_at = Some(at);
        self
    }

    /// Marks the key revoked at `at`.
    pub fn with_revoked_at(mut self, at: SystemTime) -> Self {
        self.revoked_at = Some(at);
        self
    }

    /// Adds one metadata entry.
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Whether the key may be used at `now`.
    pub fn status(&self, now: SystemTime) -> KeyStatus {
        if self.revoked_at.is_some_and(|at| at <= now) {
            KeyStatus::Revoked
        } else if self.expires_at.is_some_and(|at| at <= now) {
            KeyStatus::Expired
        } else {
            KeyStatus::Active
        }
    }
}

/// Whether a key may be used, at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStatus {
    /// Usable.
    Active,
    /// Past its expiry time.
    Expired,
    /// Revoked.
    Revoked,
}

impl KeyStatus {
    /// `active`, `expired` or `revoked`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
        }
    }
}

/// The authenticated caller, as [`ApiKeyLayer`](crate::ApiKeyLayer) puts it into the
/// request extensions. Cheap to clone: one `Arc` inside.
///
/// With the `axum` feature it is also an extractor (and `Option<Authenticated>` one for
/// routes that allow anonymous callers); in tonic handlers read it with
/// `request.extensions().get::<Authenticated>()` or [`grpc::authenticated`](crate::grpc).
#[derive(Clone)]
pub struct Authenticated(pub(crate) Arc<Stamped<Caller>>);

/// The record, after the hashes the rate limiter finds its subjects by: worked out once
/// per load, so that a request need not read the id and consumer strings (each a heap
/// allocation of its own).
#[derive(Clone)]
pub(crate) struct Caller {
    key_digest: u64,
    consumer_digest: u64,
    record: KeyRecord,
}

impl fmt::Debug for Authenticated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Authenticated").field(self.record()).finish()
    }
}

impl Authenticated {
    /// Wraps a record.
    pub fn new(record: KeyRecord) -> Self {
        Self::stamped(Stamp::unattached(&record), record)
    }

    /// Wraps a record with the cache's bookkeeping beside it.
    pub(crate) fn stamped(stamp: Stamp, record: KeyRecord) -> Self {
        Self(Arc::new(Stamped {
            stamp,
            value: Caller {
                key_digest: subject_digest("key", &record.id),
                consumer_digest: subject_digest("consumer", &record.consumer),
                record,
            },
        }))
    }

    /// The key's id.
    pub fn key_id(&self) -> &str {
        &self.0.value.record.id
    }

    /// The consumer the key belongs to.
    pub fn consumer(&self) -> &str {
        &self.0.value.record.consumer
    }

    /// The scopes the key grants.
    pub fn scopes(&self) -> &Scopes {
        &self.0.value.record.scopes
    }

    /// Metadata from the key's record.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.0.value.record.metadata
    }

    /// The whole record.
    pub fn record(&self) -> &KeyRecord {
        &self.0.value.record
    }

    /// The key's rate-limit policies (empty: the layer's default applies).
    pub fn rate_limits(&self) -> &RateLimits {
        &self.0.value.record.rate_limits
    }

    /// Does the key grant `scope`?
    pub fn has_scope(&self, scope: &str) -> bool {
        self.0.value.record.scopes.grants(scope)
    }

    /// The key as a rate-limit subject, its digest worked out at load.
    pub(crate) fn key_subject(&self) -> Subject<'_> {
        Subject::key(self.key_id()).with_digest(self.0.value.key_digest)
    }

    /// The consumer as a rate-limit subject, its digest worked out at load.
    pub(crate) fn consumer_subject(&self) -> Subject<'_> {
        Subject::consumer(self.consumer()).with_digest(self.0.value.consumer_digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn scope_validation() {
        for ok in [
            "a",
            "orders:read",
            "orders:*",
            "*",
            "a.b/c-d_e:f",
            &"x".repeat(128),
        ] {
            assert!(Scope::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "orders*",
            "or*ders",
            "**",
            ":*x",
            "sp ace",
            "é",
            &"x".repeat(129),
        ] {
            assert!(Scope::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn wildcard_rules() {
        let s = |x: &str| Scope::new(x).unwrap();
        assert!(s("orders:*").grants("orders:read"));
        assert!(s("orders:*").grants("orders:items:write"));
        assert!(s("orders:*").grants("orders:*"));
        assert!(!s("orders:*").grants("orders"));
        assert!(!s("orders:*").grants("ordersx:read"));
        assert!(!s("orders:read").grants("orders:*"));
        assert!(!s("orders:read").grants("orders:write"));
        assert!(s("*").grants("admin"));
        assert!(!s("admin").grants("*"));
    }

    #[test]
    fn scopes_sorted_and_deduplicated() {
        let scopes = Scopes::parse(["b", "a", "b"]).unwrap();
        let v: Vec<&str> = scopes.iter().map(Scope::as_str).collect();
        assert_eq!(v, ["a", "b"]);
        assert!(Scopes::parse(["a", "bad scope"]).is_err());
    }

    #[test]
    fn status_checks_revocation_then_expiry() {
        let key = crate::KeyFormat::default().generate();
        let now = SystemTime::now();
        let r = KeyRecord::new(&key, "c");
        assert_eq!(r.status(now), KeyStatus::Active);
        let r = r.with_expires_at(now + Duration::from_secs(1));
        assert_eq!(r.status(now), KeyStatus::Active);
        assert_eq!(r.status(now + Duration::from_secs(1)), KeyStatus::Expired);
        let r = r.with_revoked_at(now);
        assert_eq!(r.status(now), KeyStatus::Revoked);
    }

    #[test]
    fn key_ids_are_unique_and_well_formed() {
        let a = generate_key_id();
        assert_eq!(a.len(), 26);
        assert!(a.starts_with("key_"));
        assert_ne!(a, generate_key_id());
    }
}
