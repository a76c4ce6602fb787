//! The webhook outbox: the events a store owes to a webhook receiver, written **in the
//! same transaction** as the change they announce.
//!
//! [`create`](super::KeyStore::create), [`rotate`](super::KeyStore::rotate),
//! [`revoke`](super::KeyStore::revoke) and [`report_leak`](super::KeyStore::report_leak)
//! each append their [`KeyEvent`]s to the outbox as part of the change: a change that
//! rolls back leaves no event, and an event is never lost between a commit and a send.
//! Expiry is not a change anyone makes, so [`WebhookOutbox::announce_expiries`] queues
//! `key.expiring` and `key.expired` from a periodic scan; each key's expiry is announced
//! once (the store remembers which expiry time it announced, on the key's row).
//!
//! A deliverer (the `webhook` module, feature `webhooks`) [claims](WebhookOutbox::claim_due)
//! due events under a lease, sends them and [records](WebhookOutbox::record_attempt)
//! each attempt. All of its state is in the outbox, so a restart resumes where it
//! stopped, and an event whose lease ran out (its sender died) is sent again: delivery
//! is at least once. Events are kept for a retention window (seven days by default),
//! delivered or not, so that the table stays bounded when nobody delivers.
//!
//! An event holds ids and public facts (consumer, name, the key's public start, times),
//! never a key or its hash.
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use tower_api_key::{KeyStore, MemoryStore, store::{EventType, NewKey, WebhookOutbox}};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let store = MemoryStore::new();
//! let created = store.create(NewKey::new("acme"), "admin").await.unwrap();
//! store.revoke(&created.record.id, "admin").await.unwrap();
//! let now = SystemTime::now();
//! let due = store.claim_due(now, now + Duration::from_secs(30), 10).await.unwrap();
//! let types: Vec<_> = due.iter().map(|e| e.event_type).collect();
//! assert_eq!(types, [EventType::KeyCreated, EventType::KeyRevoked]);
//! assert!(due.iter().all(|e| e.data.key_id == created.record.id));
//! # }
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::StoreError;
use crate::record::KeyRecord;

/// How long the outbox keeps an event by default, delivered or not: seven days.
pub const DEFAULT_OUTBOX_RETENTION: Duration = Duration::from_secs(7 * 86_400);

/// The kind of a webhook event: its `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EventType {
    /// `key.created`: a key was issued (by a create or as a rotation's successor).
    KeyCreated,
    /// `key.rotated`: a key was rotated; `data.new_key_id` replaces it.
    KeyRotated,
    /// `key.revoked`: a key was revoked.
    KeyRevoked,
    /// `key.expiring`: a key expires within the notice period.
    KeyExpiring,
    /// `key.expired`: a key's expiry time has passed.
    KeyExpired,
    /// `key.leaked`: a key was reported leaked; `data.url` and `data.source` say where.
    KeyLeaked,
}

impl EventType {
    /// The name on the wire: `key.created`, `key.rotated`, `key.revoked`,
    /// `key.expiring`, `key.expired`, `key.leaked`.
    pub fn name(self) -> &'static str {
        match self {
            Self::KeyCreated => "key.created",
            Self::KeyRotated => "key.rotated",
            Self::KeyRevoked => "key.revoked",
            Self::KeyExpiring => "key.expiring",
            Self::KeyExpired => "key.expired",
            Self::KeyLeaked => "key.leaked",
        }
    }

    /// The type with this [`name`](Self::name).
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "key.created" => Self::KeyCreated,
            "key.rotated" => Self::KeyRotated,
            "key.revoked" => Self::KeyRevoked,
            "key.expiring" => Self::KeyExpiring,
            "key.expired" => Self::KeyExpired,
            "key.leaked" => Self::KeyLeaked,
            _ => return None,
        })
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What an event says about its key: the body's `data`. Ids and public facts only.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EventData {
    /// The key's id.
    pub key_id: String,
    /// Who it belongs to.
    pub consumer: String,
    /// Its name.
    pub name: String,
    /// Its public start (`sk_live_AbC1`), for display.
    pub start: String,
    /// When it expires (for a rotated key: the end of its grace), if ever.
    pub expires_at: Option<SystemTime>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<SystemTime>,
    /// For `key.rotated`: the id of the key that replaces it.
    pub new_key_id: Option<String>,
    /// For `key.leaked`: where it was found (may be empty).
    pub url: Option<String>,
    /// For `key.leaked`: what kind of place that is (may be empty).
    pub source: Option<String>,
}

impl EventData {
    /// The facts of `record` (no rotation or leak details).
    pub fn of(record: &KeyRecord) -> Self {
        Self {
            key_id: record.id.clone(),
            consumer: record.consumer.clone(),
            name: record.name.clone(),
            start: record.start.clone(),
            expires_at: record.expires_at,
            revoked_at: record.revoked_at,
            new_key_id: None,
            url: None,
            source: None,
        }
    }
}

/// One event of the outbox, as a deliverer sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyEvent {
    /// The message id (`msg_…`): the `webhook-id`, the same on every attempt.
    pub id: String,
    /// The event's type.
    pub event_type: EventType,
    /// When it happened (for `key.expiring`/`key.expired`: when it was noticed).
    pub at: SystemTime,
    /// What it says.
    pub data: EventData,
    /// Attempts started so far, this claim included.
    pub attempts: u32,
}

impl KeyEvent {
    /// A new event, with a fresh message id.
    pub fn new(event_type: EventType, at: SystemTime, data: EventData) -> Self {
        Self {
            id: generate_message_id(),
            event_type,
            at,
            data,
            attempts: 0,
        }
    }
}

/// A fresh message id: `msg_` and 22 base62 characters (128 random bits).
pub(crate) fn generate_message_id() -> String {
    let id = crate::record::generate_key_id();
    format!("msg_{}", &id[4..])
}

/// Where an event stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DeliveryState {
    /// Not delivered yet: due at its next attempt.
    Pending,
    /// A receiver answered 2xx.
    Delivered,
    /// Given up on, after failing for the deliverer's whole retry window.
    Failed,
}

impl DeliveryState {
    /// `pending`, `delivered` or `failed`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }

    /// The state with this [`name`](Self::name).
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "pending" => Self::Pending,
            "delivered" => Self::Delivered,
            "failed" => Self::Failed,
            _ => return None,
        })
    }
}

/// How one attempt to deliver an event ended; for [`WebhookOutbox::record_attempt`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Attempt {
    /// The receiver answered 2xx with this status.
    Delivered {
        /// When.
        at: SystemTime,
        /// The status code.
        status: u16,
    },
    /// The attempt failed: try again at `retry_at`, or, if `None`, give up.
    Failed {
        /// When.
        at: SystemTime,
        /// The status code, if the receiver answered.
        status: Option<u16>,
        /// Why, in a few words (never a secret).
        error: String,
        /// When to try again; `None` marks the event failed.
        retry_at: Option<SystemTime>,
    },
}

/// One event as the delivery log shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Delivery {
    /// The message id.
    pub id: String,
    /// The event's type.
    pub event_type: EventType,
    /// The key it is about.
    pub key_id: String,
    /// When the event happened.
    pub at: SystemTime,
    /// Where it stands.
    pub state: DeliveryState,
    /// Attempts started.
    pub attempts: u32,
    /// The status of the last answer, if there was one.
    pub last_status: Option<u16>,
    /// Why the last attempt failed, if it did.
    pub last_error: Option<String>,
    /// When the last attempt ended.
    pub last_attempt_at: Option<SystemTime>,
    /// When it is due next (pending events only).
    pub next_attempt_at: Option<SystemTime>,
    /// When it was delivered.
    pub delivered_at: Option<SystemTime>,
}

/// A store's webhook outbox. See the [module docs](self).
#[async_trait::async_trait]
pub trait WebhookOutbox: Send + Sync + 'static {
    /// Queues `key.expiring` for unrevoked keys that expire within `notice` of `now`,
    /// and `key.expired` for those whose expiry has passed, unless that expiry time was
    /// announced already. Returns how many events it queued. Safe to run from many
    /// instances at once: each announcement is made once.
    async fn announce_expiries(
        &self,
        now: SystemTime,
        notice: Duration,
    ) -> Result<usize, StoreError>;

    /// Claims up to `limit` pending events due at `now`, oldest first, counting an
    /// attempt for each and leasing them until `lease_until`: no other claim returns
    /// them before then, unless [`record_attempt`](Self::record_attempt) reschedules
    /// them.
    async fn claim_due(
        &self,
        now: SystemTime,
        lease_until: SystemTime,
        limit: usize,
    ) -> Result<Vec<KeyEvent>, StoreError>;

    /// Records how an attempt on the event `id` ended. An unknown id is ignored (the
    /// event was pruned).
    async fn record_attempt(&self, id: &str, attempt: &Attempt) -> Result<(), StoreError>;

    /// The delivery log: the newest `limit` events, newest first; with `key_id`, only
    /// the events of that key.
    async fn deliveries(
        &self,
        key_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError>;
}

#[async_trait::async_trait]
impl<T: WebhookOutbox + ?Sized> WebhookOutbox for Arc<T> {
    async fn announce_expiries(
        &self,
        now: SystemTime,
        notice: Duration,
    ) -> Result<usize, StoreError> {
        (**self).announce_expiries(now, notice).await
    }
    async fn claim_due(
        &self,
        now: SystemTime,
        lease_until: SystemTime,
        limit: usize,
    ) -> Result<Vec<KeyEvent>, StoreError> {
        (**self).claim_due(now, lease_until, limit).await
    }
    async fn record_attempt(&self, id: &str, attempt: &Attempt) -> Result<(), StoreError> {
        (**self).record_attempt(id, attempt).await
    }
    async fn deliveries(
        &self,
        key_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        (**self).deliveries(key_id, limit).await
    }
}

#[async_trait::async_trait]
impl<S: WebhookOutbox + crate::KeyResolver> WebhookOutbox for crate::CachedResolver<S> {
    async fn announce_expiries(
        &self,
        now: SystemTime,
        notice: Duration,
    ) -> Result<usize, StoreError> {
        self.resolver().announce_expiries(now, notice).await
    }
    async fn claim_due(
        &self,
        now: SystemTime,
        lease_until: SystemTime,
        limit: usize,
    ) -> Result<Vec<KeyEvent>, StoreError> {
        self.resolver().claim_due(now, lease_until, limit).await
    }
    async fn record_attempt(&self, id: &str, attempt: &Attempt) -> Result<(), StoreError> {
        self.resolver().record_attempt(id, attempt).await
    }
    async fn deliveries(
        &self,
        key_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        self.resolver().deliveries(key_id, limit).await
    }
}

/// `data` as JSON text, as the SQL stores keep it and the webhook body carries it.
/// Times are RFC 3339 UTC; `expires_at` and `revoked_at` are always present (`null`:
/// none), the rotation and leak fields only on their events.
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "webhooks"))]
pub(crate) fn data_to_json(data: &EventData) -> serde_json::Value {
    use serde_json::{Map, Value};
    let mut map = Map::new();
    map.insert("key_id".into(), Value::from(data.key_id.as_str()));
    map.insert("consumer".into(), Value::from(data.consumer.as_str()));
    map.insert("name".into(), Value::from(data.name.as_str()));
    map.insert("start".into(), Value::from(data.start.as_str()));
    let time = |t: Option<SystemTime>| t.map_or(Value::Null, |t| Value::from(rfc3339(t)));
    map.insert("expires_at".into(), time(data.expires_at));
    map.insert("revoked_at".into(), time(data.revoked_at));
    for (field, value) in [
        ("new_key_id", &data.new_key_id),
        ("url", &data.url),
        ("source", &data.source),
    ] {
        if let Some(value) = value {
            map.insert(field.into(), Value::from(value.as_str()));
        }
    }
    Value::Object(map)
}

/// Reads [`data_to_json`]'s text back.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn data_from_json(text: &str) -> Result<EventData, StoreError> {
    let corrupt = || StoreError::Backend("a stored webhook event has malformed data".into());
    let value: serde_json::Value = serde_json::from_str(text).map_err(|_| corrupt())?;
    let text_field = |f: &str| value.get(f).and_then(|v| v.as_str()).map(str::to_owned);
    let required = |f: &str| text_field(f).ok_or_else(corrupt);
    let time = |f: &str| match value.get(f) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => v
            .as_str()
            .and_then(parse_rfc3339)
            .map(Some)
            .ok_or_else(corrupt),
    };
    Ok(EventData {
        key_id: required("key_id")?,
        consumer: required("consumer")?,
        name: required("name")?,
        start: required("start")?,
        expires_at: time("expires_at")?,
        revoked_at: time("revoked_at")?,
        new_key_id: text_field("new_key_id"),
        url: text_field("url"),
        source: text_field("source"),
    })
}

/// RFC 3339 UTC with nanoseconds, `1970-01-01T00:00:00.000000000Z` (times before 1970
/// read as 1970).
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "webhooks", test))]
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(i64::try_from(days).unwrap_or(i64::MAX));
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

/// Parses [`rfc3339`]'s output (UTC, `Z`, up to nine fraction digits).
#[cfg(any(feature = "sqlite", feature = "postgres", test))]
pub(crate) fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut date = date.splitn(3, '-').map(str::parse::<i64>);
    let (y, m, d) = (date.next()?.ok()?, date.next()?.ok()?, date.next()?.ok()?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut hms = hms.splitn(3, ':').map(str::parse::<u64>);
    let (h, mi, sec) = (hms.next()?.ok()?, hms.next()?.ok()?, hms.next()?.ok()?);
    if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let nanos: u32 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().ok()?
    };
    let days = u64::try_from(days_from_civil(y, m, d)).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::new(days * 86_400 + h * 3600 + mi * 60 + sec, nanos))
}

/// Howard Hinnant's `civil_from_days`: the proleptic Gregorian date of a day number.
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "webhooks", test))]
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The inverse of [`civil_from_days`].
#[cfg(any(feature = "sqlite", feature = "postgres", test))]
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for t in [
            EventType::KeyCreated,
            EventType::KeyRotated,
            EventType::KeyRevoked,
            EventType::KeyExpiring,
            EventType::KeyExpired,
            EventType::KeyLeaked,
        ] {
            assert_eq!(EventType::from_name(t.name()), Some(t));
        }
        for s in [
            DeliveryState::Pending,
            DeliveryState::Delivered,
            DeliveryState::Failed,
        ] {
            assert_eq!(DeliveryState::from_name(s.name()), Some(s));
        }
        assert_eq!(EventType::from_name("key.renamed"), None);
    }

    #[test]
    fn times_round_trip_through_rfc3339() {
        assert_eq!(
            rfc3339(SystemTime::UNIX_EPOCH),
            "1970-01-01T00:00:00.000000000Z"
        );
        let t = SystemTime::UNIX_EPOCH + Duration::new(1_614_265_330, 123_456_789);
        assert_eq!(rfc3339(t), "2021-02-25T15:02:10.123456789Z");
        assert_eq!(parse_rfc3339(&rfc3339(t)), Some(t));
        assert_eq!(
            parse_rfc3339("2021-02-25T15:02:10Z"),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_614_265_330))
        );
        assert_eq!(parse_rfc3339("2021-02-25 15:02:10"), None);
    }

    #[test]
    fn message_ids_are_fresh() {
        let (a, b) = (generate_message_id(), generate_message_id());
        assert!(a.starts_with("msg_") && a.len() == 26);
        assert_ne!(a, b);
    }
}
