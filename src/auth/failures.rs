//! Failed authentications per client address: [`FailureLimit`].

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::clock;

/// The default bound on tracked client addresses.
pub const DEFAULT_MAX_CLIENTS: u64 = 100_000;

/// How many failed authentications a client may have in a window.
///
/// The key checksum is public, so anyone can mint well-formed keys that pass it; each
/// distinct one is a cache miss and a store query. With
/// [`ApiKeyLayer::limit_failures`](super::ApiKeyLayer::limit_failures), a client (an
/// IPv4 address, or an IPv6 /64: one host's share) that fails to authenticate
/// `failures` times within `window` gets 429 with `Retry-After`
/// ([`AuthError::TooManyFailures`](super::AuthError::TooManyFailures)) for the rest of
/// the window, before any store work, for every key the cache does not hold as one the
/// store knows: its flood stops reaching the store, while keys it holds in the cache
/// keep working, refreshed as usual when their entries age (one store call per key and
/// time to live; several users behind one address are not locked out by one of them).
///
/// Failures are malformed keys, unknown, revoked and expired keys. The client's address
/// is found as for allowlists (the peer, or behind
/// [trusted proxies](super::ApiKeyLayer::trusted_proxies) `X-Forwarded-For`); a request
/// whose address is not known is not limited. At most `max_clients` addresses are
/// tracked (default 100 000); past that the least used are forgotten first.
///
/// ```
/// use std::time::Duration;
/// use tower_api_key::{ApiKeyLayer, MemoryStore, auth::FailureLimit};
///
/// let limit: FailureLimit = "20/60s".parse().unwrap();
/// assert_eq!(limit, FailureLimit::new(20, Duration::from_secs(60)).unwrap());
/// let layer = ApiKeyLayer::new(MemoryStore::new()).limit_failures(limit);
/// # let _ = layer;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureLimit {
    failures: u32,
    window: Duration,
    max_clients: u64,
}

/// Why a [`FailureLimit`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "a failure limit is a number of failures from 1 and a window from 1 ms to 1 day, such as 20/60s"
)]
pub struct InvalidFailureLimit(());

impl FailureLimit {
    /// At most `failures` (≥ 1) failed authentications per client in `window` (1 ms to
    /// one day).
    pub fn new(failures: u32, window: Duration) -> Result<Self, InvalidFailureLimit> {
        if failures == 0
            || window < Duration::from_millis(1)
            || window > Duration::from_secs(86_400)
        {
            return Err(InvalidFailureLimit(()));
        }
        Ok(Self {
            failures,
            window,
            max_clients: DEFAULT_MAX_CLIENTS,
        })
    }

    /// Tracks at most `n` client addresses (at least 1; default
    /// [`DEFAULT_MAX_CLIENTS`]).
    pub fn max_clients(mut self, n: u64) -> Self {
        self.max_clients = n.max(1);
        self
    }

    /// The failures allowed in a window.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The window.
    pub fn window(&self) -> Duration {
        self.window
    }
}

impl fmt::Display for FailureLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.window.as_millis();
        if ms.is_multiple_of(1000) {
            write!(f, "{}/{}s", self.failures, ms / 1000)
        } else {
            write!(f, "{}/{ms}ms", self.failures)
        }
    }
}

impl FromStr for FailureLimit {
    type Err = InvalidFailureLimit;

    /// `N/<window>`, the window in `ms`, `s`, `m` or `h`: `20/60s`, `100/1h`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || InvalidFailureLimit(());
        let (n, window) = s.trim().split_once('/').ok_or_else(bad)?;
        let failures: u32 = n.trim().parse().map_err(|_| bad())?;
        let window = window.trim();
        let split = window.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let (amount, unit) = window.split_at(split);
        let amount: u64 = amount.parse().map_err(|_| bad())?;
        let millis = match unit {
            "ms" => Some(amount),
            "s" => amount.checked_mul(1_000),
            "m" => amount.checked_mul(60_000),
            "h" => amount.checked_mul(3_600_000),
            _ => None,
        }
        .ok_or_else(bad)?;
        Self::new(failures, Duration::from_millis(millis))
    }
}

/// One client's current window.
#[derive(Debug)]
struct Window {
    /// (start of the window, monotonic nanoseconds; failures in it)
    state: Mutex<(u64, u32)>,
}

/// The failure counts of the clients seen, bounded.
#[derive(Clone)]
pub(crate) struct FailureLimiter {
    limit: FailureLimit,
    clients: moka::sync::Cache<IpAddr, Arc<Window>>,
}

impl fmt::Debug for FailureLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailureLimiter")
            .field("limit", &self.limit)
            .field("clients", &self.clients.entry_count())
            .finish()
    }
}

/// The address a client is counted under: an IPv4 address, or an IPv6 address's /64.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & (u128::MAX << 64)).into()),
        v4 => v4,
    }
}

impl FailureLimiter {
    pub(crate) fn new(limit: FailureLimit) -> Self {
        Self {
            limit,
            clients: moka::sync::Cache::builder()
                .max_capacity(limit.max_clients)
                // An entry outlives its window only while the window is renewed.
                .time_to_idle(limit.window)
                .build(),
        }
    }

    /// How long `ip` must wait, if it has used up its failures.
    pub(crate) fn blocked(&self, ip: IpAddr) -> Option<Duration> {
        self.blocked_at(ip, clock::mono_nanos())
    }

    fn blocked_at(&self, ip: IpAddr, now: u64) -> Option<Duration> {
        let window = self.clients.get(&client_key(ip))?;
        let (start, count) = *window.state.lock().unwrap_or_else(|e| e.into_inner());
        let end = start.saturating_add(self.window_nanos());
        (count >= self.limit.failures && now < end).then(|| Duration::from_nanos(end - now))
    }

    /// Counts a failed authentication of `ip`.
    pub(crate) fn failed(&self, ip: IpAddr) {
        self.failed_at(ip, clock::mono_nanos());
    }

    fn failed_at(&self, ip: IpAddr, now: u64) {
        let window = self.clients.get_with(client_key(ip), || {
            Arc::new(Window {
                state: Mutex::new((now, 0)),
            })
        });
        let mut state = window.state.lock().unwrap_or_else(|e| e.into_inner());
        if now >= state.0.saturating_add(self.window_nanos()) {
            *state = (now, 0);
        }
        state.1 = state.1.saturating_add(1);
    }

    fn window_nanos(&self) -> u64 {
        u64::try_from(self.limit.window.as_nanos()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn limits_parse_print_and_refuse_nonsense() {
        let limit: FailureLimit = "20/60s".parse().unwrap();
        assert_eq!(
            (limit.failures(), limit.window()),
            (20, Duration::from_secs(60))
        );
        assert_eq!(limit.to_string(), "20/60s");
        assert_eq!(
            "5/250ms".parse::<FailureLimit>().unwrap().to_string(),
            "5/250ms"
        );
        assert_eq!(
            "3/2m".parse::<FailureLimit>().unwrap().window(),
            Duration::from_secs(120)
        );
        for bad in [
            "", "20", "0/60s", "20/0s", "20/60", "20/60d", "-1/1s", "20/2h/1", "x/1s", "5/25h",
        ] {
            assert!(bad.parse::<FailureLimit>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_client_is_blocked_after_its_failures_until_the_window_ends() {
        let limiter = FailureLimiter::new(FailureLimit::new(3, Duration::from_secs(10)).unwrap());
        let client = ip("192.0.2.1");
        for i in 0..3 {
            assert_eq!(limiter.blocked_at(client, i * SEC), None, "failure {i}");
            limiter.failed_at(client, i * SEC);
        }
        assert_eq!(
            limiter.blocked_at(client, 4 * SEC),
            Some(Duration::from_secs(6)),
            "until the window that began at the first failure ends"
        );
        assert_eq!(
            limiter.blocked_at(ip("192.0.2.2"), 4 * SEC),
            None,
            "others are not"
        );
        assert_eq!(limiter.blocked_at(client, 10 * SEC), None, "a new window");
        limiter.failed_at(client, 10 * SEC);
        assert_eq!(
            limiter.blocked_at(client, 11 * SEC),
            None,
            "one failure in it"
        );
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        let limiter = FailureLimiter::new(FailureLimit::new(2, Duration::from_secs(10)).unwrap());
        limiter.failed_at(ip("2001:db8:1:2::1"), 0);
        limiter.failed_at(ip("2001:db8:1:2:ffff::9"), 0);
        assert!(limiter.blocked_at(ip("2001:db8:1:2::77"), SEC).is_some());
        assert!(limiter.blocked_at(ip("2001:db8:1:3::1"), SEC).is_none());
        // An IPv4-mapped address is its IPv4 address.
        limiter.failed_at(ip("::ffff:192.0.2.9"), 0);
        limiter.failed_at(ip("192.0.2.9"), 0);
        assert!(limiter.blocked_at(ip("192.0.2.9"), SEC).is_some());
    }

    #[test]
    fn the_number_of_clients_tracked_is_bounded() {
        let limit = FailureLimit::new(1, Duration::from_secs(60))
            .unwrap()
            .max_clients(100);
        let limiter = FailureLimiter::new(limit);
        for i in 0..10_000u32 {
            limiter.failed_at(IpAddr::from(i.to_be_bytes()), 0);
        }
        limiter.clients.run_pending_tasks();
        assert!(
            limiter.clients.entry_count() <= 100,
            "{}",
            limiter.clients.entry_count()
        );
    }
}
