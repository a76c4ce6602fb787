//! The IETF `RateLimit-Policy` and `RateLimit` fields (draft-ietf-httpapi-ratelimit-headers,
//! draft 11 syntax), and the optional `X-RateLimit-*` trio.

use http::{HeaderMap, HeaderName, HeaderValue};

use super::policy::RateLimits;
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
    fn ratelimit(limits: &RateLimits, decision: &Decision) -> Option<HeaderValue> {
        let mut value = Vec::with_capacity(48 * limits.as_slice().len());
        for (policy, status) in limits.iter().zip(decision.statuses()) {
            if !value.is_empty() {
                value.extend_from_slice(b", ");
            }
            value.push(b'"');
            value.extend_from_slice(policy.name().as_bytes());
            value.extend_from_slice(b"\";r=");
            push_decimal(&mut value, status.remaining);
            value.extend_from_slice(b";t=");
            push_decimal(&mut value, reset_secs(status.reset));
        }
        HeaderValue::from_maybe_shared(bytes::Bytes::from(value)).ok()
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

/// `t`: whole seconds until reset, rounded up (0 only when already whole).
fn reset_secs(reset: std::time::Duration) -> u64 {
    if reset.is_zero() {
        0
    } else {
        retry_after_secs(reset)
    }
}

/// Appends `n` in decimal.
fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
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
    out.extend_from_slice(&digits[i..]);
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
            let mut v = Vec::new();
            push_decimal(&mut v, n);
            assert_eq!(String::from_utf8(v).unwrap(), n.to_string());
        }
    }
}
