//! Cheap clocks for the request path.
//!
//! `Instant::now()` and `SystemTime::now()` cost ~25–35 ns each here (a vDSO call), and
//! every request read one or two of them. [`quanta`] reads the CPU's time-stamp counter
//! instead (it falls back to the OS clock where the TSC is not reliable), which measured
//! ~65 ns less per request in the rate limiter.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How often the wall clock is taken again from the OS, so that the TSC's small rate
/// error (and any NTP step) never adds up to more than this interval's worth.
const REANCHOR_NANOS: u64 = 1_000_000_000;

struct Clocks {
    tsc: quanta::Clock,
    /// The raw counter at start: monotonic nanoseconds count from here.
    origin: u64,
    /// Wall-clock nanoseconds minus monotonic nanoseconds, as of the last anchoring.
    offset: AtomicU64,
    /// Monotonic nanoseconds at which to anchor again.
    next_anchor: AtomicU64,
}

static CLOCKS: LazyLock<Clocks> = LazyLock::new(|| {
    let tsc = quanta::Clock::new();
    let origin = tsc.raw();
    let clocks = Clocks {
        tsc,
        origin,
        offset: AtomicU64::new(0),
        next_anchor: AtomicU64::new(0),
    };
    clocks.anchor(0);
    clocks
});

impl Clocks {
    fn mono(&self) -> u64 {
        self.tsc.delta_as_nanos(self.origin, self.tsc.raw())
    }

    fn anchor(&self, mono: u64) {
        let wall = system_nanos();
        self.offset
            .store(wall.wrapping_sub(mono), Ordering::Relaxed);
        self.next_anchor
            .store(mono.saturating_add(REANCHOR_NANOS), Ordering::Relaxed);
    }
}

/// Monotonic nanoseconds since an arbitrary start (the first call in the process).
pub(crate) fn mono_nanos() -> u64 {
    CLOCKS.mono()
}

/// Nanoseconds since the Unix epoch: the OS wall clock, taken again every second and
/// advanced by the TSC in between.
pub(crate) fn wall_nanos() -> u64 {
    let clocks = &*CLOCKS;
    let mono = clocks.mono();
    if mono >= clocks.next_anchor.load(Ordering::Relaxed) {
        // Several threads may anchor at once; each stores a correct value.
        clocks.anchor(mono);
    }
    mono.wrapping_add(clocks.offset.load(Ordering::Relaxed))
}

/// The OS wall clock in nanoseconds since the Unix epoch (0 before 1970).
pub(crate) fn system_nanos() -> u64 {
    unix_nanos(SystemTime::now())
}

/// `at` in nanoseconds since the Unix epoch: 0 before 1970, `u64::MAX` past 2554.
pub(crate) fn unix_nanos(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, duration_nanos)
}

/// `d` in nanoseconds, `u64::MAX` past 584 years.
pub(crate) fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cheap_wall_clock_stays_with_the_os_clock() {
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(2_500);
        let mut last_mono = 0;
        // Over more than two anchorings: never more than a few milliseconds off.
        while std::time::Instant::now() < deadline {
            let before = system_nanos();
            let ours = wall_nanos();
            let after = system_nanos();
            let slack = 5_000_000;
            assert!(
                ours + slack >= before && ours <= after + slack,
                "{before} <= {ours} <= {after}, give or take 5 ms"
            );
            let mono = mono_nanos();
            assert!(mono >= last_mono, "monotonic time went back");
            last_mono = mono;
            std::thread::yield_now();
        }
    }
}
