//! Usage over time: per key, counts of each [`Outcome`] in time buckets of a minute
//! (kept [`MINUTE_RETENTION`], 48 h) and of an hour (kept [`HOUR_RETENTION`], 90 days).
//!
//! The [`UsageRecorder`](crate::usage::UsageRecorder) counts outcomes by minute in
//! memory and hands them to [`KeyStore::record_usage`](super::KeyStore::record_usage) in
//! batches ([`UsageDelta::minutes`](super::UsageDelta::minutes)); the store adds each
//! minute's counts to its minute bucket and to the bucket of the hour it falls in, and
//! prunes buckets past their retention. So a store holds at most 2 880 minute buckets
//! and 2 160 hour buckets per key that was used, whatever the traffic.
//!
//! Buckets start on whole minutes and hours of UTC (Unix time divisible by 60 or 3 600).
//!
//! ```
//! use std::time::{Duration, SystemTime, UNIX_EPOCH};
//! use tower_api_key::store::{UsageStep, series::bucket_start};
//!
//! let t = UNIX_EPOCH + Duration::from_secs(3_725); // 01:02:05
//! assert_eq!(bucket_start(UsageStep::Minute, t), UNIX_EPOCH + Duration::from_secs(3_720));
//! assert_eq!(bucket_start(UsageStep::Hour, t), UNIX_EPOCH + Duration::from_secs(3_600));
//! ```

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long minute buckets are kept: 48 hours.
pub const MINUTE_RETENTION: Duration = Duration::from_secs(48 * 3_600);
/// How long hour buckets are kept: 90 days.
pub const HOUR_RETENTION: Duration = Duration::from_secs(90 * 86_400);
/// The most top entries one [`usage_top`](super::KeyStore::usage_top) call returns.
pub const MAX_TOP: usize = 1_000;

/// What became of one request made with a known key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// Let through to the service.
    Allowed,
    /// Refused by a rate limit or quota (429).
    RateLimited,
    /// Refused for a missing scope (403).
    Forbidden,
    /// The key is known but was refused: revoked, expired, or used from outside its
    /// allowlist.
    Unauthorized,
}

/// The width of a time bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UsageStep {
    /// One minute; kept [`MINUTE_RETENTION`].
    Minute,
    /// One hour; kept [`HOUR_RETENTION`].
    Hour,
}

impl UsageStep {
    /// Every step: each minute is added to a bucket of each.
    pub const ALL: [Self; 2] = [Self::Minute, Self::Hour];

    /// Buckets of this step starting before this are past their retention at `now`.
    pub fn cutoff(self, now: SystemTime) -> Option<SystemTime> {
        now.checked_sub(self.retention())
    }

    /// The bucket's width.
    pub fn width(self) -> Duration {
        Duration::from_secs(self.seconds())
    }

    /// The bucket's width in seconds (60 or 3 600), as stores keep it.
    pub fn seconds(self) -> u64 {
        match self {
            Self::Minute => 60,
            Self::Hour => 3_600,
        }
    }

    /// How long buckets of this width are kept.
    pub fn retention(self) -> Duration {
        match self {
            Self::Minute => MINUTE_RETENTION,
            Self::Hour => HOUR_RETENTION,
        }
    }

    /// `minute` or `hour`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Minute => "minute",
            Self::Hour => "hour",
        }
    }
}

impl fmt::Display for UsageStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A step name other than `minute` or `hour`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the step is `minute` or `hour`")]
pub struct InvalidStep;

impl FromStr for UsageStep {
    type Err = InvalidStep;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "minute" => Ok(Self::Minute),
            "hour" => Ok(Self::Hour),
            _ => Err(InvalidStep),
        }
    }
}

/// The start of the bucket of `step` that holds `t` (times before 1970 fall in the
/// first bucket).
pub fn bucket_start(step: UsageStep, t: SystemTime) -> SystemTime {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    UNIX_EPOCH + Duration::from_secs(secs - secs % step.seconds())
}

/// The counts of one time bucket, of one key or summed over several.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageBucket {
    /// The bucket's start.
    pub at: SystemTime,
    /// Requests let through.
    pub allowed: u64,
    /// Requests refused by a rate limit or quota.
    pub rate_limited: u64,
    /// Requests refused for a missing scope.
    pub forbidden: u64,
    /// Requests of a known key that was refused (revoked, expired, outside its allowlist).
    pub unauthorized: u64,
}

impl UsageBucket {
    /// An empty bucket starting at `at`.
    pub fn empty(at: SystemTime) -> Self {
        Self {
            at,
            allowed: 0,
            rate_limited: 0,
            forbidden: 0,
            unauthorized: 0,
        }
    }

    /// Counts one more request of `outcome`.
    pub fn count(&mut self, outcome: Outcome) {
        let n = match outcome {
            Outcome::Allowed => &mut self.allowed,
            Outcome::RateLimited => &mut self.rate_limited,
            Outcome::Forbidden => &mut self.forbidden,
            Outcome::Unauthorized => &mut self.unauthorized,
        };
        *n = n.saturating_add(1);
    }

    /// Adds `other`'s counts to this bucket's.
    pub fn add(&mut self, other: &Self) {
        self.allowed = self.allowed.saturating_add(other.allowed);
        self.rate_limited = self.rate_limited.saturating_add(other.rate_limited);
        self.forbidden = self.forbidden.saturating_add(other.forbidden);
        self.unauthorized = self.unauthorized.saturating_add(other.unauthorized);
    }

    /// All requests counted.
    pub fn total(&self) -> u64 {
        self.allowed
            .saturating_add(self.rate_limited)
            .saturating_add(self.forbidden)
            .saturating_add(self.unauthorized)
    }

    /// Requests refused: everything but `allowed`.
    pub fn refused(&self) -> u64 {
        self.total() - self.allowed
    }
}

/// What [`usage_top`](super::KeyStore::usage_top) ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageTopBy {
    /// Consumers, summing their keys.
    Consumer,
    /// Keys.
    Key,
}

/// One entry of a ranking: a consumer's or a key's counts over a range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageTop {
    /// The consumer, or the key's id.
    pub name: String,
    /// The counts, summed over the range (`at` is the range's start).
    pub counts: UsageBucket,
}

/// The bucket starts of `step` in `[from, to)`, `from` floored to the step; at most
/// `limit` of them, or `None` when there would be more.
pub fn bucket_starts(
    step: UsageStep,
    from: SystemTime,
    to: SystemTime,
    limit: usize,
) -> Option<Vec<SystemTime>> {
    let mut at = bucket_start(step, from);
    let mut starts = Vec::new();
    while at < to {
        if starts.len() == limit {
            return None;
        }
        starts.push(at);
        at += step.width();
    }
    Some(starts)
}

/// Spreads sparse `buckets` (in time order, from a store) over every bucket start in
/// `[from, to)`, zeros where nothing was counted. `None` when there would be more than
/// `limit` buckets.
pub fn fill(
    step: UsageStep,
    from: SystemTime,
    to: SystemTime,
    limit: usize,
    buckets: &[UsageBucket],
) -> Option<Vec<UsageBucket>> {
    let starts = bucket_starts(step, from, to, limit)?;
    let mut counted = buckets.iter().peekable();
    Some(
        starts
            .into_iter()
            .map(|at| {
                let mut bucket = UsageBucket::empty(at);
                while let Some(b) = counted.next_if(|b| b.at <= at) {
                    if b.at == at {
                        bucket.add(b);
                    }
                }
                bucket
            })
            .collect(),
    )
}

/// Sorts a ranking as stores return it: highest total first, then by name.
pub(crate) fn rank(entries: &mut Vec<UsageTop>, limit: usize) {
    entries.sort_by(|a, b| {
        b.counts
            .total()
            .cmp(&a.counts.total())
            .then_with(|| a.name.cmp(&b.name))
    });
    entries.truncate(limit.min(MAX_TOP));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn buckets_start_on_whole_minutes_and_hours() {
        assert_eq!(bucket_start(UsageStep::Minute, at(119)), at(60));
        assert_eq!(bucket_start(UsageStep::Minute, at(120)), at(120));
        assert_eq!(bucket_start(UsageStep::Hour, at(7_199)), at(3_600));
        let before_1970 = UNIX_EPOCH - Duration::from_secs(5);
        assert_eq!(bucket_start(UsageStep::Hour, before_1970), UNIX_EPOCH);
    }

    #[test]
    fn fill_puts_counts_in_place_and_zeros_between() {
        let mut b = UsageBucket::empty(at(120));
        b.count(Outcome::Allowed);
        b.count(Outcome::Unauthorized);
        let filled = fill(UsageStep::Minute, at(61), at(300), 10, &[b]).unwrap();
        let starts: Vec<_> = filled.iter().map(|b| b.at).collect();
        assert_eq!(starts, [at(60), at(120), at(180), at(240)]);
        assert_eq!(filled[1].allowed, 1);
        assert_eq!(filled[1].unauthorized, 1);
        assert_eq!(filled.iter().map(UsageBucket::total).sum::<u64>(), 2);
        assert!(fill(UsageStep::Minute, at(0), at(600), 9, &[]).is_none());
        assert_eq!(
            fill(UsageStep::Minute, at(0), at(600), 10, &[])
                .unwrap()
                .len(),
            10
        );
        assert!(
            fill(UsageStep::Minute, at(600), at(0), 10, &[])
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn rank_orders_by_total_then_name() {
        let top = |name: &str, n: u64| UsageTop {
            name: name.into(),
            counts: UsageBucket {
                allowed: n,
                ..UsageBucket::empty(UNIX_EPOCH)
            },
        };
        let mut entries = vec![top("b", 1), top("c", 5), top("a", 1)];
        rank(&mut entries, 2);
        let names: Vec<_> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["c", "a"]);
    }

    #[test]
    fn steps_parse_and_print() {
        assert_eq!("hour".parse::<UsageStep>(), Ok(UsageStep::Hour));
        assert_eq!("Minute".parse::<UsageStep>(), Err(InvalidStep));
        assert_eq!(UsageStep::Minute.to_string(), "minute");
    }
}
