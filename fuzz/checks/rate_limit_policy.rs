//! `RateLimitPolicy` parsing (`FromStr`) and building, and the headers of policy sets.
//!
//! The input is text. Its first line is parsed as a policy: no panic; a policy that
//! parses prints (`Display`) as text that parses back to an equal policy, and parses
//! the same with spaces around it; its set has a `RateLimit-Policy` header naming it,
//! with its quota and window.
//!
//! Every further line is `name requests per_ms burst` (numbers taken as they come,
//! wrapping into `u32`/`u64`) and is built with `RateLimitPolicy::rate` and
//! `with_burst`; up to [`RateLimits::MAX`] + 1 of them (and the parsed one) go into
//! `RateLimits::new`, which must refuse duplicates and too many, and otherwise build
//! its prebuilt headers without a panic.

use std::time::Duration;

use tower_api_key::ratelimit::{Limit, QuotaWindow, RateLimitPolicy, RateLimits};

/// Runs one input; panics when an invariant does not hold.
pub(crate) fn check(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let first = lines.next().unwrap_or_default();
    let mut policies = Vec::new();
    if let Ok(policy) = first.parse::<RateLimitPolicy>() {
        parsed(first, &policy);
        policies.push(policy);
    }
    for line in lines.take(RateLimits::MAX + 1) {
        if let Some(policy) = built(line) {
            policies.push(policy);
        }
    }
    let unique = {
        let mut names: Vec<&str> = policies.iter().map(RateLimitPolicy::name).collect();
        names.sort_unstable();
        names.dedup();
        names.len() == policies.len()
    };
    match RateLimits::new(policies.clone()) {
        Ok(limits) => {
            assert!(policies.len() <= RateLimits::MAX && unique);
            assert_eq!(limits.as_slice(), &policies[..]);
            assert_eq!(limits.is_empty(), policies.is_empty());
            match limits.policy_header() {
                Some(header) => {
                    let header = header.to_str().expect("the policy header is ASCII");
                    for p in &policies {
                        assert!(header.contains(&format!("\"{}\";q=", p.name())), "{header}");
                    }
                }
                None => assert!(policies.is_empty(), "no RateLimit-Policy header"),
            }
            let _ = format!("{limits:?}");
        }
        Err(_) => assert!(policies.len() > RateLimits::MAX || !unique),
    }
}

fn parsed(text: &str, policy: &RateLimitPolicy) {
    let shown = policy.to_string();
    let again: RateLimitPolicy = shown
        .parse()
        .unwrap_or_else(|e| panic!("{text:?} parsed, printed as {shown:?}, which does not: {e}"));
    assert_eq!(&again, policy, "{text:?} → {shown:?}");
    assert_eq!(
        format!(" {text} ").parse::<RateLimitPolicy>().as_ref(),
        Ok(policy)
    );
    match policy.limit() {
        Limit::Rate {
            requests,
            per,
            burst,
        } => {
            assert!(requests >= 1 && burst == requests, "{text:?}");
            assert!(per >= Duration::from_millis(1) && per <= Duration::from_secs(365 * 86_400));
            assert_eq!(policy.name(), "default");
        }
        Limit::Quota { requests, window } => {
            assert!(requests >= 1);
            let name = match window {
                QuotaWindow::Day => "daily",
                QuotaWindow::Month => "monthly",
            };
            assert_eq!(policy.name(), name);
        }
    }
    let limits = RateLimits::from(policy.clone());
    let header = limits.policy_header().expect("one policy has a header");
    let requests = match policy.limit() {
        Limit::Rate { requests, .. } | Limit::Quota { requests, .. } => requests,
    };
    let expected = format!("\"{}\";q={requests};w=", policy.name());
    assert!(
        header.to_str().unwrap().starts_with(&expected),
        "{header:?}"
    );
}

fn built(line: &str) -> Option<RateLimitPolicy> {
    let mut words = line.split_ascii_whitespace();
    let name = words.next()?;
    let mut number = || -> u64 {
        words
            .next()
            .map(|w| {
                w.bytes().fold(0u64, |n, b| {
                    n.wrapping_mul(10)
                        .wrapping_add(u64::from(b.wrapping_sub(b'0')))
                })
            })
            .unwrap_or(1)
    };
    let requests = number() as u32;
    let per = Duration::from_millis(number());
    let burst = number() as u32;
    let policy = match RateLimitPolicy::rate(name, requests, per) {
        Ok(policy) => policy,
        Err(_) => {
            let ok_name = !name.is_empty()
                && name.len() <= 32
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
            let ok_period =
                per >= Duration::from_millis(1) && per <= Duration::from_secs(365 * 86_400);
            assert!(!(ok_name && ok_period && requests > 0), "{line:?} refused");
            return None;
        }
    };
    assert_eq!(policy.name(), name);
    match policy.with_burst(burst) {
        Ok(policy) => {
            assert!(burst > 0);
            assert_eq!(
                policy.limit(),
                Limit::Rate {
                    requests,
                    per,
                    burst
                }
            );
            Some(policy)
        }
        Err(_) => {
            assert_eq!(burst, 0);
            None
        }
    }
}
