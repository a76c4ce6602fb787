//! The limiting algorithms as pure functions of one `u64` of state and the time:
//! GCRA for rates (what `governor` uses, equivalent to a token bucket) and a counter per
//! UTC calendar window for quotas. No clock is read here; the caller passes `now`.
//!
//! State encoding (self-describing, so that a store can tell idle entries apart without
//! knowing their policy):
//! - rate: the theoretical arrival time (TAT) in nanoseconds since the Unix epoch
//!   (top bit clear); 0 is a fresh state;
//! - quota: bit 63 set, bit 62 set for a monthly window, bits 32..62 the window number
//!   plus one, bits 0..32 the requests counted in it.

use std::time::Duration;

use super::policy::{Limit, QuotaWindow};

const NANOS_PER_DAY: u64 = 86_400 * 1_000_000_000;
const QUOTA_BIT: u64 = 1 << 63;
const MONTH_BIT: u64 = 1 << 62;
const WINDOW_MASK: u64 = (1 << 30) - 1;

/// The result of charging one request against one policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Was the request within the policy?
    pub allowed: bool,
    /// The state to keep: advanced when allowed, unchanged when denied.
    pub state: u64,
    /// Requests of cost 1 that would still be allowed right now.
    pub remaining: u64,
    /// Until the policy is back to its full allowance (rate) or the window ends (quota).
    pub reset: Duration,
    /// When denied, how long until the same request would be allowed; never zero.
    /// Zero when allowed.
    pub retry_after: Duration,
}

/// Charges `cost` against `limit` at `now` (nanoseconds since the Unix epoch).
pub fn check(limit: &Limit, state: u64, now: u64, cost: u32) -> Outcome {
    match *limit {
        Limit::Rate {
            requests,
            per,
            burst,
        } => rate(requests, per, burst, state, now, cost),
        Limit::Quota { requests, window } => quota(requests, window, state, now, cost),
    }
}

/// The emission interval: `per / requests`, rounded up to a whole nanosecond so that
/// the allowed rate is never above the policy's.
pub(crate) fn emission_interval(requests: u32, per: Duration) -> u64 {
    let per = u64::try_from(per.as_nanos()).unwrap_or(u64::MAX);
    per.div_ceil(u64::from(requests)).max(1)
}

fn rate(requests: u32, per: Duration, burst: u32, state: u64, now: u64, cost: u32) -> Outcome {
    // u64 nanoseconds, saturating: a sum past year 2554 means "no limit in sight".
    let t = emission_interval(requests, per);
    // A quota state where a rate is expected (the policy changed kind): start afresh.
    let tat = if state & QUOTA_BIT != 0 {
        now
    } else {
        state.max(now)
    };
    let new_tat = tat.saturating_add(u64::from(cost).saturating_mul(t));
    let limit_at = now.saturating_add(u64::from(burst).saturating_mul(t));
    if new_tat <= limit_at {
        Outcome {
            allowed: true,
            state: new_tat.min(QUOTA_BIT - 1),
            remaining: (limit_at - new_tat) / t,
            reset: Duration::from_nanos(new_tat - now),
            retry_after: Duration::ZERO,
        }
    } else {
        Outcome {
            allowed: false,
            state,
            remaining: limit_at.saturating_sub(tat) / t,
            reset: Duration::from_nanos(tat - now),
            retry_after: Duration::from_nanos(new_tat - limit_at),
        }
    }
}

fn quota(requests: u32, window: QuotaWindow, state: u64, now: u64, cost: u32) -> Outcome {
    let (number, end) = calendar_window(window, now);
    let tag = QUOTA_BIT
        | if window == QuotaWindow::Month {
            MONTH_BIT
        } else {
            0
        }
        | ((number + 1) << 32);
    let used = if state & !0xFFFF_FFFF == tag {
        state & 0xFFFF_FFFF
    } else {
        0
    };
    let reset = Duration::from_nanos(end - now);
    let limit = u64::from(requests);
    if used + u64::from(cost) <= limit {
        let used = used + u64::from(cost);
        Outcome {
            allowed: true,
            state: tag | used,
            remaining: limit - used,
            reset,
            retry_after: Duration::ZERO,
        }
    } else {
        Outcome {
            allowed: false,
            state,
            remaining: limit.saturating_sub(used),
            reset,
            retry_after: reset.max(Duration::from_nanos(1)),
        }
    }
}

/// Is `state` back at a fresh policy's state at `now`, so that forgetting it changes
/// nothing? (A rate whose TAT has passed; a quota of an earlier window.)
pub fn is_idle(state: u64, now: u64) -> bool {
    if state & QUOTA_BIT == 0 {
        return state <= now;
    }
    let window = if state & MONTH_BIT != 0 {
        QuotaWindow::Month
    } else {
        QuotaWindow::Day
    };
    let (number, _) = calendar_window(window, now);
    ((state >> 32) & WINDOW_MASK) != number + 1
}

/// The number and end (Unix nanoseconds) of the UTC window containing `now`.
pub(crate) fn calendar_window(window: QuotaWindow, now: u64) -> (u64, u64) {
    let day = now / NANOS_PER_DAY;
    match window {
        QuotaWindow::Day => (day, (day + 1) * NANOS_PER_DAY),
        QuotaWindow::Month => {
            let (y, m, _) = civil_from_days(day as i64);
            let number = ((y - 1970) * 12 + i64::from(m) - 1) as u64;
            let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            let end = days_from_civil(ny, nm, 1);
            (number, end as u64 * NANOS_PER_DAY)
        }
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number since 1970-01-01.
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: u64 = 1_000_000_000;
    /// 2026-11-23T00:00:00Z.
    const T0: u64 = 1_795_392_000 * S;

    fn rate_limit(requests: u32, per_secs: u64, burst: u32) -> Limit {
        Limit::Rate {
            requests,
            per: Duration::from_secs(per_secs),
            burst,
        }
    }

    #[test]
    fn five_per_minute_allows_five_at_once_then_one_every_twelve_seconds() {
        let limit = rate_limit(5, 60, 5);
        let mut state = 0;
        for i in 0..5 {
            let o = check(&limit, state, T0, 1);
            assert!(o.allowed, "request {i}");
            assert_eq!(o.remaining, 4 - i);
            state = o.state;
        }
        let denied = check(&limit, state, T0, 1);
        assert!(!denied.allowed);
        assert_eq!(denied.retry_after, Duration::from_secs(12));
        assert_eq!(denied.state, state);
        assert_eq!(denied.reset, Duration::from_secs(60));
        // 12 s later exactly one more.
        let later = T0 + 12 * S;
        let o = check(&limit, state, later, 1);
        assert!(o.allowed);
        assert!(!check(&limit, o.state, later, 1).allowed);
        // A minute after the burst everything is back.
        assert!(is_idle(state, T0 + 60 * S));
        assert!(!is_idle(state, T0 + 59 * S));
    }

    #[test]
    fn cost_is_all_or_nothing_and_retry_after_is_never_zero() {
        let limit = rate_limit(10, 10, 10);
        let o = check(&limit, 0, T0, 7);
        assert!(o.allowed);
        assert_eq!(o.remaining, 3);
        let d = check(&limit, o.state, T0, 4);
        assert!(!d.allowed);
        assert_eq!(d.state, o.state);
        assert_eq!(d.retry_after, Duration::from_secs(1));
        // Denied by a hair: still a positive retry-after.
        let limit = Limit::Rate {
            requests: 1,
            per: Duration::from_nanos(1_000_001),
            burst: 1,
        };
        let o = check(&limit, 0, T0, 1);
        let d = check(&limit, o.state, T0 + 1_000_000, 1);
        assert!(!d.allowed);
        assert!(d.retry_after > Duration::ZERO);
    }

    #[test]
    fn daily_quota_resets_at_utc_midnight() {
        let limit = Limit::Quota {
            requests: 3,
            window: QuotaWindow::Day,
        };
        let noon = T0 + 12 * 3600 * S;
        let mut state = 0;
        for left in [2, 1, 0] {
            let o = check(&limit, state, noon, 1);
            assert!(o.allowed);
            assert_eq!(o.remaining, left);
            state = o.state;
        }
        let d = check(&limit, state, noon, 1);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Duration::from_secs(12 * 3600));
        assert!(!is_idle(state, noon));
        let tomorrow = T0 + 86_400 * S;
        assert!(is_idle(state, tomorrow));
        assert!(check(&limit, state, tomorrow, 3).allowed);
    }

    #[test]
    fn monthly_quota_uses_calendar_months() {
        let limit = Limit::Quota {
            requests: 1,
            window: QuotaWindow::Month,
        };
        // 2026-11-23 → the window ends 2026-12-01T00:00Z, 8 days later.
        let o = check(&limit, 0, T0, 1);
        assert_eq!(o.reset, Duration::from_secs(8 * 86_400));
        let d = check(&limit, o.state, T0, 1);
        assert_eq!(d.retry_after, Duration::from_secs(8 * 86_400));
        let december = T0 + 8 * 86_400 * S;
        assert!(check(&limit, o.state, december, 1).allowed);
        // December's window is 31 days.
        assert_eq!(
            check(&limit, 0, december, 1).reset,
            Duration::from_secs(31 * 86_400)
        );
    }

    #[test]
    fn calendar_conversions_round_trip() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(civil_from_days(20_780), (2026, 11, 23));
        for day in (-1000..40_000).step_by(7) {
            let (y, m, d) = civil_from_days(day);
            assert_eq!(days_from_civil(y, m, d), day);
        }
        // A leap day.
        assert_eq!(civil_from_days(days_from_civil(2028, 2, 29)), (2028, 2, 29));
    }

    fn limits() -> impl Strategy<Value = (u32, u64, u32)> {
        // requests, per (ms), burst
        (1u32..50, 1u64..5_000, 1u32..60)
    }

    proptest! {
        /// Over any request sequence, any window of length `per` holds at most
        /// `burst + requests` allowed requests.
        #[test]
        fn no_window_of_length_per_allows_more_than_burst_plus_requests(
            (requests, per_ms, burst) in limits(),
            gaps in proptest::collection::vec(0u64..2_000_000_000, 1..300),
        ) {
            let limit = Limit::Rate { requests, per: Duration::from_millis(per_ms), burst };
            let per = per_ms * 1_000_000;
            let mut now = T0;
            let mut state = 0;
            let mut allowed = Vec::new();
            for gap in gaps {
                now += gap % (2 * per);
                let o = check(&limit, state, now, 1);
                if o.allowed { allowed.push(now); state = o.state; }
            }
            for (i, &start) in allowed.iter().enumerate() {
                let within = allowed[i..].iter().take_while(|&&t| t < start + per).count();
                prop_assert!(within as u64 <= u64::from(burst) + u64::from(requests),
                    "{within} allowed within one period from {start}");
            }
        }

        /// A client that paces itself at the rate is never denied.
        #[test]
        fn a_client_pacing_at_the_rate_is_never_denied(
            (requests, per_ms, burst) in limits(),
            extra in proptest::collection::vec(0u64..1_000_000, 1..300),
        ) {
            let limit = Limit::Rate { requests, per: Duration::from_millis(per_ms), burst };
            let interval = emission_interval(requests, Duration::from_millis(per_ms));
            let mut now = T0;
            let mut state = 0;
            for e in extra {
                let o = check(&limit, state, now, 1);
                prop_assert!(o.allowed);
                state = o.state;
                now += interval + e;
            }
        }

        /// A denial always names a positive wait, and waiting that long is enough.
        #[test]
        fn waiting_retry_after_is_enough(
            (requests, per_ms, burst) in limits(),
            cost in 1u32..10,
            burst_first in 0u32..60,
        ) {
            prop_assume!(cost <= burst);
            let limit = Limit::Rate { requests, per: Duration::from_millis(per_ms), burst };
            let mut state = 0;
            for _ in 0..burst_first {
                let o = check(&limit, state, T0, 1);
                if o.allowed { state = o.state; }
            }
            let o = check(&limit, state, T0, cost);
            if !o.allowed {
                prop_assert!(o.retry_after > Duration::ZERO);
                let later = T0 + u64::try_from(o.retry_after.as_nanos()).unwrap();
                prop_assert!(check(&limit, state, later, cost).allowed);
            }
        }
    }
}
