//! The IETF `RateLimit-Policy` and `RateLimit` fields (draft-ietf-httpapi-ratelimit-headers,
//! draft 11 syntax), and the optional `X-RateLimit-*` trio.

use http::{HeaderMap, HeaderName, HeaderValue};

use super::policy::{RateLimitPolicy, RateLimits};
use super::store::Decision;
use crate::auth::retry_after_secs;

static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
static X_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static X_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static X_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// The headers one response gets.
pub(crate) struct Headers {
    policy: Option<HeaderValue>,
    ratelimit: Option<HeaderValue>,
    /// Boxed: rarely asked for, and this struct rides in every response future.
    x: Option<Box<[HeaderValue; 3]>>,
}

impl Headers {
    pub(crate) fn new(limits: &RateLimits, decision: &Decision, x_headers: bool) -> Self {
        let ratelimit = match limits.at_rest() {
            Some(at_rest)
                if decision.statuses().len() == at_rest.statuses.len()
                    && decision.statuses().iter().zip(at_rest.statuses.iter()).all(
                        |(s, &(remaining, reset))| {
                            s.allowed && s.remaining == remaining && s.reset == reset
                        },
                    ) =>
            {
                Some(at_rest.header.clone())
            }
            _ => Self::ratelimit(limits, decision),
        };
        let x = x_headers
            .then(|| {
                // The policy closest to its limit.
                let (policy, status) = limits
                    .iter()
                    .zip(decision.statuses())
                    .min_by_key(|(_, s)| s.remaining)?;
                let (q, _) = policy.quota_and_window();
                Some(Box::new([
                    HeaderValue::from(q),
                    HeaderValue::from(status.remaining),
                    HeaderValue::from(reset_secs(status.reset)),
                ]))
            })
            .flatten();
        Self {
            policy: limits.policy_header().cloned(),
            ratelimit,
            x,
        }
    }

    /// `"burst";r=42;t=17, "daily";r=950;t=3600`.
    ///
    /// Written on the stack and copied once: a `Vec` turned into `Bytes` with spare
    /// capacity costs a second allocation.
    fn ratelimit(limits: &RateLimits, decision: &Decision) -> Option<HeaderValue> {
        ratelimit_field(
            limits
                .iter()
                .zip(decision.statuses())
                .map(|(p, s)| (p, s.remaining, s.reset)),
        )
    }

    pub(crate) fn apply(self, headers: &mut HeaderMap) {
        headers.reserve(2);
        if let Some(v) = self.policy {
            headers.insert(RATELIMIT_POLICY.clone(), v);
        }
        if let Some(v) = self.ratelimit {
            headers.insert(RATELIMIT.clone(), v);
        }
        if let Some(x) = self.x {
            let [limit, remaining, reset] = *x;
            headers.insert(X_LIMIT.clone(), limit);
            headers.insert(X_REMAINING.clone(), remaining);
            headers.insert(X_RESET.clone(), reset);
        }
    }
}

/// The `RateLimit` field of `(policy, remaining, reset)` for each policy.
pub(crate) fn ratelimit_field<'a>(
    statuses: impl Iterator<Item = (&'a RateLimitPolicy, u64, std::time::Duration)>,
) -> Option<HeaderValue> {
    let mut value = Gather::default();
    for (policy, remaining, reset) in statuses {
        if !value.bytes().is_empty() {
            value.put(b", ");
        }
        value.put(b"\"");
        value.put(policy.name().as_bytes());
        value.put(b"\";r=");
        push_decimal(&mut value, remaining);
        value.put(b";t=");
        push_decimal(&mut value, reset_secs(reset));
    }
    HeaderValue::from_bytes(value.bytes()).ok()
}

/// `t`: whole seconds until reset, rounded up (0 only when already whole).
fn reset_secs(reset: std::time::Duration) -> u64 {
    if reset.is_zero() {
        0
    } else {
        retry_after_secs(reset)
    }
}

/// Bytes gathered on the stack, moving to the heap past 256 (many long policy names).
struct Gather {
    stack: [u8; 256],
    len: usize,
    spilled: Vec<u8>,
}

impl Default for Gather {
    fn default() -> Self {
        Self {
            stack: [0; 256],
            len: 0,
            spilled: Vec::new(),
        }
    }
}

impl Gather {
    fn put(&mut self, bytes: &[u8]) {
        let end = self.len + bytes.len();
        if self.spilled.is_empty() && end <= self.stack.len() {
            self.stack[self.len..end].copy_from_slice(bytes);
            self.len = end;
        } else {
            if self.spilled.is_empty() {
                self.spilled.extend_from_slice(&self.stack[..self.len]);
            }
            self.spilled.extend_from_slice(bytes);
        }
    }

    fn bytes(&self) -> &[u8] {
        if self.spilled.is_empty() {
            &self.stack[..self.len]
        } else {
            &self.spilled
        }
    }
}

/// Appends `n` in decimal.
fn push_decimal(out: &mut Gather, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.put(&digits[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::{PolicyStatus, QuotaWindow, RateLimitPolicy, gcra};
    use std::time::Duration;

    /// What `gcra::check` says of each policy, as a decision.
    fn decide(limits: &RateLimits, states: &[u64], now: u64) -> Decision {
        Decision::new(limits.iter().zip(states).map(|(p, &state)| {
            let o = gcra::check(&p.limit(), state, now, 1);
            PolicyStatus {
                allowed: o.allowed,
                remaining: o.remaining,
                reset: o.reset,
                retry_after: o.retry_after,
            }
        }))
    }

    #[test]
    fn the_prebuilt_header_at_rest_is_the_rendered_one() {
        let now = 1_795_392_000 * 1_000_000_000;
        let rate =
            |name: &str, n, ms| RateLimitPolicy::rate(name, n, Duration::from_millis(ms)).unwrap();
        let sets = [
            RateLimits::from(rate("default", 5, 60_000)),
            RateLimits::from(rate("fast", 1_000, 1_000)),
            RateLimits::from(rate("odd", 7, 1_001).with_burst(3).unwrap()),
            RateLimits::new([rate("a", 10, 1_000), rate("b", 100, 3_600_000)]).unwrap(),
        ];
        for limits in &sets {
            let at_rest = limits.at_rest().expect("rates only");
            // A fresh bucket: the prebuilt value, and the same bytes as rendering.
            let fresh = decide(limits, &[0, 0], now);
            let h = Headers::new(limits, &fresh, false);
            assert_eq!(h.ratelimit.as_ref(), Some(&at_rest.header), "{limits:?}");
            assert_eq!(
                Headers::ratelimit(limits, &fresh).as_ref(),
                Some(&at_rest.header)
            );
            // A bucket in use: rendered, and different.
            let busy = decide(limits, &[now + 5_000_000_000, now], now);
            let h = Headers::new(limits, &busy, false);
            assert_eq!(h.ratelimit, Headers::ratelimit(limits, &busy));
            assert_ne!(h.ratelimit.as_ref(), Some(&at_rest.header), "{limits:?}");
        }
        // A set with a quota has no prebuilt value.
        let quota = RateLimits::new([
            rate("burst", 10, 1_000),
            RateLimitPolicy::quota("daily", 100, QuotaWindow::Day).unwrap(),
        ])
        .unwrap();
        assert!(quota.at_rest().is_none());
    }

    #[test]
    fn decimals() {
        for n in [0, 7, 10, 99, 12345, u64::MAX] {
            let mut v = Gather::default();
            push_decimal(&mut v, n);
            assert_eq!(v.bytes(), n.to_string().as_bytes());
        }
    }

    #[test]
    fn gathering_moves_to_the_heap_without_losing_a_byte() {
        let mut g = Gather::default();
        let mut expected = Vec::new();
        for i in 0..100u8 {
            let piece = [b'a' + i % 26; 7];
            g.put(&piece);
            expected.extend_from_slice(&piece);
            assert_eq!(g.bytes(), &expected[..]);
        }
        assert!(!g.spilled.is_empty());
    }
}
