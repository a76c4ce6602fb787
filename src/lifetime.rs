//! [`KeyLifetimes`]: how long new keys live by default, and the longest they may.
//!
//! A default lifetime is given to a key created without an expiry; a maximum refuses a
//! longer one (and "never expires") with [`TooLong`]. The admin API answers that with 422
//! naming `expires_in_seconds`; the `apikey` CLI with an error naming `--expires-in`.
//! Rotation keeps the old key's expiry, so it is not checked again.
//!
//! ```
//! use std::time::Duration;
//! use tower_api_key::lifetime::{KeyLifetimes, parse_lifetime};
//!
//! let lifetimes = KeyLifetimes::new()
//!     .with_default(parse_lifetime("90d").unwrap())
//!     .unwrap()
//!     .with_max(parse_lifetime("365d").unwrap())
//!     .unwrap();
//! // No expiry asked for: the default.
//! assert_eq!(lifetimes.expires_in(None), Ok(Some(Duration::from_secs(90 * 86_400))));
//! // Longer than the maximum: refused.
//! assert!(lifetimes.expires_in(Some(Duration::from_secs(400 * 86_400))).is_err());
//! ```

use std::fmt;
use std::time::Duration;

/// The default and longest lifetime of new keys; neither by default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyLifetimes {
    default: Option<Duration>,
    max: Option<Duration>,
}

/// A lifetime longer than the maximum (or no expiry where a maximum is set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLong {
    /// The longest lifetime allowed.
    pub max: Duration,
}

impl fmt::Display for TooLong {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a key may live at most {} s ({}); give a shorter expiry",
            self.max.as_secs(),
            Human(self.max)
        )
    }
}

impl std::error::Error for TooLong {}

/// A default lifetime longer than the maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the default key lifetime ({}) is longer than the maximum ({})", Human(*.default), Human(*.max))]
pub struct DefaultAboveMax {
    /// The default given.
    pub default: Duration,
    /// The maximum given.
    pub max: Duration,
}

/// Text that is not a lifetime such as `90d`, `12h`, `30m` or `3600s`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "expected a lifetime such as 90d, 12h, 30m or 3600s (a whole number and d, h, m or s), more than zero"
)]
pub struct InvalidLifetime(());

impl KeyLifetimes {
    /// No default and no maximum: keys live as long as they are asked to (or forever).
    pub fn new() -> Self {
        Self::default()
    }

    /// The lifetime of a key created without an expiry. Fails if the maximum is shorter.
    pub fn with_default(mut self, default: Duration) -> Result<Self, DefaultAboveMax> {
        if let Some(max) = self.max.filter(|max| default > *max) {
            return Err(DefaultAboveMax { default, max });
        }
        self.default = Some(default);
        Ok(self)
    }

    /// The longest lifetime a new key may have. Fails if the default is longer.
    pub fn with_max(mut self, max: Duration) -> Result<Self, DefaultAboveMax> {
        if let Some(default) = self.default.filter(|d| *d > max) {
            return Err(DefaultAboveMax { default, max });
        }
        self.max = Some(max);
        Ok(self)
    }

    /// The default lifetime, if any.
    pub fn default_lifetime(&self) -> Option<Duration> {
        self.default
    }

    /// The longest lifetime, if any.
    pub fn max(&self) -> Option<Duration> {
        self.max
    }

    /// How long a new key lives when `asked` (`None`: nothing asked): the ask, else the
    /// default, else the maximum, else forever (`None`). Refused when longer than the
    /// maximum.
    pub fn expires_in(&self, asked: Option<Duration>) -> Result<Option<Duration>, TooLong> {
        let life = asked.or(self.default).or(self.max);
        match (life, self.max) {
            (Some(life), Some(max)) if life > max => Err(TooLong { max }),
            _ => Ok(life),
        }
    }

    /// May an existing key's expiry be set to `life` from now (`None`: never)?
    pub fn check(&self, life: Option<Duration>) -> Result<(), TooLong> {
        match (life, self.max) {
            (None, Some(max)) => Err(TooLong { max }),
            (Some(life), Some(max)) if life > max => Err(TooLong { max }),
            _ => Ok(()),
        }
    }
}

/// Parses a lifetime: a whole number and `d`, `h`, `m` or `s` (`90d`, `12h`, `30m`,
/// `3600s`), more than zero and at most a hundred years.
pub fn parse_lifetime(text: &str) -> Result<Duration, InvalidLifetime> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or(InvalidLifetime(()))?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| InvalidLifetime(()))?;
    let unit = match unit {
        "d" => 86_400,
        "h" => 3_600,
        "m" => 60,
        "s" => 1,
        _ => return Err(InvalidLifetime(())),
    };
    let secs = n.checked_mul(unit).ok_or(InvalidLifetime(()))?;
    if secs == 0 || secs > 100 * 365 * 86_400 {
        return Err(InvalidLifetime(()));
    }
    Ok(Duration::from_secs(secs))
}

/// A duration in the largest whole unit of `parse_lifetime`.
struct Human(Duration);

impl fmt::Display for Human {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0.as_secs();
        match s {
            _ if s.is_multiple_of(86_400) => write!(f, "{}d", s / 86_400),
            _ if s.is_multiple_of(3_600) => write!(f, "{}h", s / 3_600),
            _ if s.is_multiple_of(60) => write!(f, "{}m", s / 60),
            _ => write!(f, "{s}s"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400;

    fn days(n: u64) -> Duration {
        Duration::from_secs(n * DAY)
    }

    #[test]
    fn lifetimes_parse_in_days_hours_minutes_and_seconds() {
        assert_eq!(parse_lifetime("90d"), Ok(days(90)));
        assert_eq!(parse_lifetime("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert_eq!(parse_lifetime("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_lifetime(" 3600s "), Ok(Duration::from_secs(3600)));
        for bad in [
            "",
            "90",
            "d",
            "0d",
            "-1d",
            "1.5d",
            "90 d",
            "90days",
            "1w",
            "99999999999999999d",
            "36501d",
        ] {
            assert_eq!(parse_lifetime(bad), Err(InvalidLifetime(())), "{bad:?}");
        }
    }

    #[test]
    fn the_ask_then_the_default_then_the_maximum() {
        let none = KeyLifetimes::new();
        assert_eq!(none.expires_in(None), Ok(None));
        assert_eq!(none.expires_in(Some(days(5000))), Ok(Some(days(5000))));
        assert_eq!(none.check(None), Ok(()));

        let both = KeyLifetimes::new()
            .with_default(days(90))
            .unwrap()
            .with_max(days(365))
            .unwrap();
        assert_eq!(both.expires_in(None), Ok(Some(days(90))));
        assert_eq!(both.expires_in(Some(days(365))), Ok(Some(days(365))));
        assert_eq!(
            both.expires_in(Some(days(366))),
            Err(TooLong { max: days(365) })
        );
        assert_eq!(both.check(Some(days(1))), Ok(()));
        assert_eq!(both.check(None), Err(TooLong { max: days(365) }));

        // A maximum alone makes keys without an expiry live the maximum.
        let max = KeyLifetimes::new().with_max(days(30)).unwrap();
        assert_eq!(max.expires_in(None), Ok(Some(days(30))));
        let message = max.expires_in(Some(days(31))).unwrap_err().to_string();
        assert!(message.contains("2592000 s (30d)"), "{message}");
    }

    #[test]
    fn a_default_above_the_maximum_is_refused() {
        let err = KeyLifetimes::new()
            .with_default(days(400))
            .unwrap()
            .with_max(days(365))
            .unwrap_err();
        // In either order.
        let other = KeyLifetimes::new()
            .with_max(days(365))
            .unwrap()
            .with_default(days(400))
            .unwrap_err();
        assert_eq!(other, err);
        assert_eq!(
            err.to_string(),
            "the default key lifetime (400d) is longer than the maximum (365d)"
        );
    }
}
