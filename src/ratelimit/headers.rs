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
    x: Option<[HeaderValue; 3]>,
}

impl Headers {
    pub(crate) fn new(limits: &RateLimits, decision: &Decision, x_headers: bool) -> Self {
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
        let x = x_headers
            .then(|| {
                // The policy closest to its limit.
                let (policy, status) = limits
                    .iter()
                    .zip(decision.statuses())
                    .min_by_key(|(_, s)| s.remaining)?;
                let (q, _) = policy.quota_and_window();
                Some([
                    HeaderValue::from(q),
                    HeaderValue::from(status.remaining),
                    HeaderValue::from(reset_secs(status.reset)),
                ])
            })
            .flatten();
        Self {
            policy: limits.policy_header().cloned(),
            ratelimit: HeaderValue::from_maybe_shared(bytes::Bytes::from(value)).ok(),
            x,
        }
    }

    pub(crate) fn apply(self, headers: &mut HeaderMap) {
        headers.reserve(2);
        if let Some(v) = self.policy {
            headers.insert(RATELIMIT_POLICY.clone(), v);
        }
        if let Some(v) = self.ratelimit {
            headers.insert(RATELIMIT.clone(), v);
        }
        if let Some([limit, remaining, reset]) = self.x {
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

    #[test]
    fn decimals() {
        for n in [0, 7, 10, 99, 12345, u64::MAX] {
            let mut v = Vec::new();
            push_decimal(&mut v, n);
            assert_eq!(String::from_utf8(v).unwrap(), n.to_string());
        }
    }
}
