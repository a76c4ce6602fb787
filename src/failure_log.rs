//! Logging failures seldom: a store that is down fails every request, and a line per
//! request would bury everything else in the log. [`StoreFailures`] lets one line through
//! per interval, with how many failures it stands for.

use std::sync::atomic::{AtomicU64, Ordering};

/// Logs store failures at most once per interval, with how many there were, so that an
/// outage does not write a line per request.
#[derive(Debug, Default)]
pub(crate) struct StoreFailures {
    unlogged: AtomicU64,
    last_logged: AtomicU64,
}

const FAILURE_LOG_INTERVAL_NS: u64 = 10_000_000_000;

impl StoreFailures {
    /// Counts one failure at `now` (Unix ns); returns how many to report if a line is due.
    pub(crate) fn record(&self, now: u64) -> Option<u64> {
        self.unlogged.fetch_add(1, Ordering::Relaxed);
        let last = self.last_logged.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= FAILURE_LOG_INTERVAL_NS;
        if due
            && self
                .last_logged
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            // This failure is counted already: the swap takes it and any held back.
            return Some(self.unlogged.swap(0, Ordering::Relaxed));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_failures_are_logged_once_per_interval_with_a_count() {
        let f = StoreFailures::default();
        let t0 = 1_000_000_000_000;
        assert_eq!(f.record(t0), Some(1), "the first failure is logged at once");
        for i in 1..=99 {
            assert_eq!(f.record(t0 + i), None);
        }
        assert_eq!(
            f.record(t0 + FAILURE_LOG_INTERVAL_NS),
            Some(100),
            "99 held back + this one"
        );
        assert_eq!(f.record(t0 + FAILURE_LOG_INTERVAL_NS + 1), None);
    }
}
