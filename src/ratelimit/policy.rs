use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;

/// Why a policy could not be built or parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidPolicy {
    /// A count is zero.
    #[error("a rate limit needs at least 1 request")]
    ZeroRequests,
    /// The period is shorter than a millisecond or longer than a year.
    #[error("a rate-limit period must be between 1 ms and 365 days")]
    Period,
    /// The burst is zero.
    #[error("a burst must be at least 1")]
    ZeroBurst,
    /// The name is empty, too long, or not made of `A-Z a-z 0-9 _ - .`.
    #[error("a policy name is 1 to 32 characters of [A-Za-z0-9_.-]")]
    Name,
    /// Text that is not `<requests>/<period>` such as `100/60s`.
    #[error("expected <requests>/<period>, such as 100/60s, 10/1s, 5000/1h or 10000/1d")]
    Syntax,
}

/// The calendar window of a quota, in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuotaWindow {
    /// A UTC calendar day.
    Day,
    /// A UTC calendar month.
    Month,
}

/// What a policy limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    /// `requests` per `per`, with up to `burst` at once (GCRA).
    Rate {
        /// Requests per period.
        requests: u32,
        /// The period.
        per: Duration,
        /// How many requests may arrive at once.
        burst: u32,
    },
    /// At most `requests` per calendar window.
    Quota {
        /// Requests per window.
        requests: u32,
        /// The window.
        window: QuotaWindow,
    },
}

/// One named limit: a rate (`10/1s`, GCRA, with a burst) or a quota per UTC calendar
/// day or month (`10000/1d`).
///
/// A rate of `requests` per `per` lets `burst` requests (default: `requests`) through at
/// once, then one every `per / requests`: `5/60s` allows 5 at once and then one every
/// 12 s.
///
/// ```
/// use std::time::Duration;
/// use tower_api_key::ratelimit::{QuotaWindow, RateLimitPolicy};
///
/// let burst = RateLimitPolicy::rate("burst", 100, Duration::from_secs(60)).unwrap().with_burst(20).unwrap();
/// let daily = RateLimitPolicy::quota("daily", 10_000, QuotaWindow::Day).unwrap();
/// let parsed: RateLimitPolicy = "5/60s".parse().unwrap();
/// assert_eq!(parsed.name(), "default");
/// # let _ = (burst, daily);
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RateLimitPolicy {
    name: Arc<str>,
    /// A fixed hash of the name: with the subject's hash it keys the policy's state.
    name_hash: u64,
    limit: Limit,
}

impl fmt::Debug for RateLimitPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.name, self)
    }
}

impl fmt::Display for RateLimitPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.limit {
            Limit::Rate {
                requests,
                per,
                burst,
            } => {
                write!(f, "{requests}/{}ms", per.as_millis())?;
                if burst != requests {
                    write!(f, " burst {burst}")?;
                }
                Ok(())
            }
            Limit::Quota { requests, window } => match window {
                QuotaWindow::Day => write!(f, "{requests}/day"),
                QuotaWindow::Month => write!(f, "{requests}/month"),
            },
        }
    }
}

const MAX_PERIOD: Duration = Duration::from_secs(365 * 86_400);

/// FNV-1a: a fixed, fast hash of a policy name.
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn check_name(name: &str) -> Result<Arc<str>, InvalidPolicy> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(name.into())
    } else {
        Err(InvalidPolicy::Name)
    }
}

impl RateLimitPolicy {
    /// `requests` per `per`, burst `requests`.
    pub fn rate(name: &str, requests: u32, per: Duration) -> Result<Self, InvalidPolicy> {
        if requests == 0 {
            return Err(InvalidPolicy::ZeroRequests);
        }
        if per < Duration::from_millis(1) || per > MAX_PERIOD {
            return Err(InvalidPolicy::Period);
        }
        Ok(Self {
            name: check_name(name)?,
            name_hash: name_hash(name),
            limit: Limit::Rate {
                requests,
                per,
                burst: requests,
            },
        })
    }

    /// At most `requests` per UTC calendar `window`.
    pub fn quota(name: &str, requests: u32, window: QuotaWindow) -> Result<Self, InvalidPolicy> {
        if requests == 0 {
            return Err(InvalidPolicy::ZeroRequests);
        }
        Ok(Self {
            name: check_name(name)?,
            name_hash: name_hash(name),
            limit: Limit::Quota { requests, window },
        })
    }

    /// Sets the burst of a rate (ignored for a quota).
    pub fn with_burst(mut self, burst: u32) -> Result<Self, InvalidPolicy> {
        if burst == 0 {
            return Err(InvalidPolicy::ZeroBurst);
        }
        if let Limit::Rate { burst: b, .. } = &mut self.limit {
            *b = burst;
        }
        Ok(self)
    }

    /// Renames the policy.
    pub fn with_name(mut self, name: &str) -> Result<Self, InvalidPolicy> {
        self.name = check_name(name)?;
        self.name_hash = name_hash(name);
        Ok(self)
    }

    pub(crate) fn name_hash(&self) -> u64 {
        self.name_hash
    }

    /// The name used in headers and problem bodies.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What it limits.
    pub fn limit(&self) -> Limit {
        self.limit
    }

    /// `q` and `w` of the `RateLimit-Policy` header: the quota and its window in seconds.
    pub(crate) fn quota_and_window(&self) -> (u64, u64) {
        match self.limit {
            Limit::Rate { requests, per, .. } => (u64::from(requests), per.as_secs().max(1)),
            Limit::Quota { requests, window } => (
                u64::from(requests),
                match window {
                    QuotaWindow::Day => 86_400,
                    QuotaWindow::Month => 30 * 86_400,
                },
            ),
        }
    }
}

/// Parses `<requests>/<period>` (`100/60s`, `10/1s`, `5000/1h`, `500ms` periods too) as a
/// rate named `default`, and `<requests>/1d` or `<requests>/1mo` as a daily or monthly
/// quota named `daily` or `monthly`.
impl FromStr for RateLimitPolicy {
    type Err = InvalidPolicy;

    fn from_str(s: &str) -> Result<Self, InvalidPolicy> {
        let (requests, period) = s.trim().split_once('/').ok_or(InvalidPolicy::Syntax)?;
        let requests: u32 = requests.trim().parse().map_err(|_| InvalidPolicy::Syntax)?;
        let period = period.trim();
        match period {
            "1d" | "d" | "day" => return Self::quota("daily", requests, QuotaWindow::Day),
            "1mo" | "mo" | "month" => return Self::quota("monthly", requests, QuotaWindow::Month),
            _ => {}
        }
        let split = period
            .find(|c: char| !c.is_ascii_digit())
            .ok_or(InvalidPolicy::Syntax)?;
        let (n, unit) = period.split_at(split);
        let n: u64 = if n.is_empty() {
            1
        } else {
            n.parse().map_err(|_| InvalidPolicy::Syntax)?
        };
        let unit_ms: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" | "min" => 60_000,
            "h" => 3_600_000,
            _ => return Err(InvalidPolicy::Syntax),
        };
        let per = Duration::from_millis(n.checked_mul(unit_ms).ok_or(InvalidPolicy::Period)?);
        Self::rate("default", requests, per)
    }
}

/// The policies a key (or consumer) is limited by. Cheap to clone. An empty set means
/// "use the layer's default".
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RateLimits(Option<Arc<Policies>>);

#[derive(PartialEq, Eq)]
struct Policies {
    list: Box<[RateLimitPolicy]>,
    /// The `RateLimit-Policy` field for this set, built once.
    header: Option<HeaderValue>,
    /// For a set of rates only: the `RateLimit` field of a request of cost 1 that
    /// finds every bucket at rest, the common case of a key well within its limits,
    /// built once.
    at_rest: Option<AtRest>,
}

/// A prebuilt `RateLimit` field and the statuses it stands for.
#[derive(PartialEq, Eq)]
pub(crate) struct AtRest {
    /// `(remaining, reset)` of each policy.
    pub(crate) statuses: Box<[(u64, Duration)]>,
    pub(crate) header: HeaderValue,
}

impl Policies {
    fn new(list: Vec<RateLimitPolicy>) -> Self {
        let mut header = String::new();
        for p in &list {
            let (q, w) = p.quota_and_window();
            if !header.is_empty() {
                header.push_str(", ");
            }
            header.push_str(&format!("\"{}\";q={q};w={w}", p.name()));
        }
        Self {
            header: HeaderValue::try_from(header)
                .ok()
                .filter(|_| !list.is_empty()),
            at_rest: Self::at_rest(&list),
            list: list.into(),
        }
    }

    fn at_rest(list: &[RateLimitPolicy]) -> Option<AtRest> {
        let mut statuses = Vec::with_capacity(list.len());
        for p in list {
            let Limit::Rate {
                requests,
                per,
                burst,
            } = p.limit
            else {
                return None;
            };
            // What `gcra::check` answers for a fresh state and cost 1.
            let reset = Duration::from_nanos(super::gcra::emission_interval(requests, per));
            statuses.push((u64::from(burst) - 1, reset));
        }
        let header = super::headers::ratelimit_field(
            list.iter()
                .zip(&statuses)
                .map(|(p, &(remaining, reset))| (p, remaining, reset)),
        )?;
        Some(AtRest {
            statuses: statuses.into(),
            header,
        })
        .filter(|_| !list.is_empty())
    }
}

/// Why a set of policies was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidRateLimits {
    /// Two policies share a name.
    #[error("two rate-limit policies are named {0:?}")]
    DuplicateName(String),
    /// More than [`RateLimits::MAX`] policies.
    #[error("at most 8 rate-limit policies per key")]
    TooMany,
}

impl RateLimits {
    /// The most policies one key may carry.
    pub const MAX: usize = 8;

    /// Checks that names are unique and there are at most [`Self::MAX`].
    pub fn new(
        policies: impl IntoIterator<Item = RateLimitPolicy>,
    ) -> Result<Self, InvalidRateLimits> {
        let v: Vec<RateLimitPolicy> = policies.into_iter().collect();
        if v.len() > Self::MAX {
            return Err(InvalidRateLimits::TooMany);
        }
        for (i, p) in v.iter().enumerate() {
            if v[..i].iter().any(|q| q.name == p.name) {
                return Err(InvalidRateLimits::DuplicateName(p.name.to_string()));
            }
        }
        // No policies: nothing allocated, so that the usual record (which has none)
        // costs the limiter no pointer to follow.
        Ok(Self((!v.is_empty()).then(|| Arc::new(Policies::new(v)))))
    }

    /// No policies at all?
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// The policies.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &RateLimitPolicy> {
        self.as_slice().iter()
    }

    /// The policies, as a slice.
    pub fn as_slice(&self) -> &[RateLimitPolicy] {
        self.0.as_ref().map_or(&[], |p| &p.list)
    }

    pub(crate) fn at_rest(&self) -> Option<&AtRest> {
        self.0.as_ref()?.at_rest.as_ref()
    }

    /// The `RateLimit-Policy` header value, e.g. `"burst";q=100;w=60, "daily";q=1000;w=86400`.
    pub fn policy_header(&self) -> Option<&HeaderValue> {
        self.0.as_ref()?.header.as_ref()
    }
}

impl From<RateLimitPolicy> for RateLimits {
    fn from(policy: RateLimitPolicy) -> Self {
        Self(Some(Arc::new(Policies::new(vec![policy]))))
    }
}

impl fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rates_and_quotas() {
        let p: RateLimitPolicy = "100/60s".parse().unwrap();
        assert_eq!(
            p.limit(),
            Limit::Rate {
                requests: 100,
                per: Duration::from_secs(60),
                burst: 100
            }
        );
        assert_eq!(
            "5/500ms"
                .parse::<RateLimitPolicy>()
                .unwrap()
                .quota_and_window(),
            (5, 1)
        );
        assert_eq!(
            "10/1h"
                .parse::<RateLimitPolicy>()
                .unwrap()
                .quota_and_window(),
            (10, 3600)
        );
        assert_eq!(
            "3/s".parse::<RateLimitPolicy>().unwrap().quota_and_window(),
            (3, 1)
        );
        let q: RateLimitPolicy = "10000/1d".parse().unwrap();
        assert_eq!(q.name(), "daily");
        assert_eq!(q.quota_and_window(), (10_000, 86_400));
        for bad in [
            "",
            "100",
            "x/60s",
            "100/60",
            "100/60y",
            "0/1s",
            "-1/1s",
            "1/0s",
            "99999999999/1s",
        ] {
            assert!(bad.parse::<RateLimitPolicy>().is_err(), "{bad}");
        }
    }

    #[test]
    fn names_bursts_and_sets() {
        assert_eq!(
            RateLimitPolicy::rate("", 1, Duration::from_secs(1)),
            Err(InvalidPolicy::Name)
        );
        assert_eq!(
            RateLimitPolicy::rate("a b", 1, Duration::from_secs(1)),
            Err(InvalidPolicy::Name)
        );
        let p = RateLimitPolicy::rate("a", 1, Duration::from_secs(1)).unwrap();
        assert_eq!(p.clone().with_burst(0), Err(InvalidPolicy::ZeroBurst));
        assert_eq!(p.to_string(), "1/1000ms");
        assert_eq!(
            p.clone().with_burst(3).unwrap().to_string(),
            "1/1000ms burst 3"
        );
        assert!(matches!(
            RateLimits::new([p.clone(), p.clone()]),
            Err(InvalidRateLimits::DuplicateName(_))
        ));
        assert_eq!(
            RateLimits::new((0..9).map(|i| p.clone().with_name(&format!("p{i}")).unwrap())),
            Err(InvalidRateLimits::TooMany)
        );
        assert!(RateLimits::default().is_empty());
        assert_eq!(RateLimits::new([]).unwrap(), RateLimits::default());
        assert!(RateLimits::default().policy_header().is_none());
        assert_eq!(RateLimits::default().as_slice(), &[]);
        let daily = RateLimitPolicy::quota("daily", 1000, QuotaWindow::Day).unwrap();
        let burst = RateLimitPolicy::rate("burst", 100, Duration::from_secs(60)).unwrap();
        let both = RateLimits::new([burst, daily]).unwrap();
        assert_eq!(
            both.policy_header().unwrap(),
            r#""burst";q=100;w=60, "daily";q=1000;w=86400"#
        );
    }
}
