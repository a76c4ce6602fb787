//! The IETF `RateLimit-Policy` and `RateLimit` fields (draft-ietf-httpapi-ratelimit-headers,
//! draft 11 syntax), and the optional `X-RateLimit-*` trio.

use std::fmt::Write;

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
        let mut value = String::with_capacity(48 * limits.as_slice().len());
        for (policy, status) in limits.iter().zip(decision.statuses()) {
            if !value.is_empty() {
                value.push_str(", ");
            }
            let reset = if status.reset.is_zero() {
                0
            } else {
                retry_after_secs(status.reset)
            };
            let _ = write!(
                value,
                "\"{}\";r={};t={}",
                policy.name(),
                status.remaining,
                reset
            );
        }
        let x = x_headers
            .then(|| {
                // The policy closest to its limit.
                let (policy, status) = limits
                    .iter()
                    .zip(decision.statuses())
                    .min_by_key(|(_, s)| s.remaining)?;
                let (q, _) = policy.quota_and_window();
                let reset = if status.reset.is_zero() {
                    0
                } else {
                    retry_after_secs(status.reset)
                };
                Some([
                    HeaderValue::from(q),
                    HeaderValue::from(status.remaining),
                    HeaderValue::from(reset),
                ])
            })
            .flatten();
        Self {
            policy: limits.policy_header().cloned(),
            ratelimit: HeaderValue::try_from(value).ok(),
            x,
        }
    }

    pub(crate) fn apply(self, headers: &mut HeaderMap) {
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
