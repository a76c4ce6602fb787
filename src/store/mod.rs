//! Key management: [`KeyStore`] creates, lists, revokes and rotates keys, records usage
//! and keeps an audit log. Stores keep only a key's hash and public start, never the key.
//!
//! [`MemoryStore`](crate::MemoryStore) implements it in memory. A [`CachedResolver`]
//! over a store is a store too: its changes invalidate the cache entry of the key they
//! change, so that a revocation takes effect at once on this instance. Other instances
//! learn of it through the store's [change feed](changes): a cache that
//! [follows](CachedResolver::follow) it drops the key within milliseconds with
//! PostgreSQL's `LISTEN/NOTIFY`, within its poll interval (250 ms) with SQLite; a cache
//! that does not follow it sees it when its entry's TTL (30 s by default) ends.
//!
//! ```
//! use std::time::Duration;
//! use tower_api_key::{KeyStore, MemoryStore, Scopes, store::NewKey};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let store = MemoryStore::new();
//! let created = store
//!     .create(NewKey::new("acme").with_name("ci").with_scopes(Scopes::parse(["orders:read"]).unwrap()), "admin")
//!     .await
//!     .unwrap();
//! // Show `created.key` to its owner once; the store has only its hash.
//! let rotated = store.rotate(&created.record.id, Duration::from_secs(3600), "admin").await.unwrap();
//! assert_ne!(rotated.record.id, created.record.id);
//! store.revoke(&rotated.record.id, "admin").await.unwrap();
//! # }
//! ```

pub mod changes;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod codec;
#[cfg(any(feature = "admin", feature = "cli"))]
pub(crate) mod import;
pub mod outbox;
#[cfg(feature = "postgres")]
mod pg_tls;
#[cfg(feature = "postgres")]
mod postgres;
pub mod series;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql;
#[cfg(feature = "sqlite")]
mod sqlite;

pub use changes::{ChangeFeed, ChangeKind, Changes, DEFAULT_CHANGE_RETENTION, KeyChange, Wakeups};
#[cfg(any(feature = "admin", feature = "cli"))]
pub use import::{IMPORT_FIELDS, InvalidImportRow};
pub use outbox::{
    Attempt, DEFAULT_OUTBOX_RETENTION, Delivery, DeliveryState, EventData, EventType, KeyEvent,
    WebhookOutbox,
};
#[cfg(feature = "postgres")]
pub use postgres::{PostgresStore, PostgresStoreBuilder};
pub use series::{Outcome, UsageBucket, UsageStep, UsageTop, UsageTopBy};
#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteStore, SqliteStoreBuilder};

use std::collections::BTreeMap;
use std::error::Error as StdError;
use std::fmt;
use std::time::{Duration, SystemTime};

use crate::key::{ApiKey, KeyHash};
use crate::ratelimit::RateLimits;
use crate::record::{KeyRecord, Scopes};
use crate::resolve::{CachedResolver, KeyResolver, ResolveError};

/// What a new key is for.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NewKey {
    /// Who the key belongs to.
    pub consumer: String,
    /// A human-readable name.
    pub name: String,
    /// What it may do.
    pub scopes: Scopes,
    /// When it stops working, if ever.
    pub expires_at: Option<SystemTime>,
    /// Its rate-limit policies (empty: the layer's default).
    pub rate_limits: RateLimits,
    /// Free-form metadata.
    pub metadata: BTreeMap<String, String>,
    /// The networks it may be used from (empty: anywhere).
    pub allowed_ips: Vec<ipnet::IpNet>,
}

impl NewKey {
    /// A key for `consumer`, with no name, scopes, expiry, policies or metadata.
    pub fn new(consumer: impl Into<String>) -> Self {
        Self {
            consumer: consumer.into(),
            name: String::new(),
            scopes: Scopes::empty(),
            expires_at: None,
            rate_limits: RateLimits::default(),
            metadata: BTreeMap::new(),
            allowed_ips: Vec::new(),
        }
    }

    /// Sets the networks the key may be used from (empty: anywhere).
    pub fn with_allowed_ips(mut self, networks: impl IntoIterator<Item = ipnet::IpNet>) -> Self {
        self.allowed_ips = networks.into_iter().collect();
        self
    }

    /// Sets the name.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets the scopes.
    pub fn with_scopes(mut self, scopes: Scopes) -> Self {
        self.scopes = scopes;
        self
    }

    /// Sets the expiry time.
    pub fn with_expires_at(mut self, at: SystemTime) -> Self {
        self.expires_at = Some(at);
        self
    }

    /// Sets the rate-limit policies.
    pub fn with_rate_limits(mut self, limits: impl Into<RateLimits>) -> Self {
        self.rate_limits = limits.into();
        self
    }

    /// Adds a metadata entry.
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// What rotating `old` issues: a key with its consumer, name, scopes, expiry,
    /// policies, metadata and allowlist.
    pub(crate) fn successor_of(old: &KeyRecord) -> Self {
        Self {
            consumer: old.consumer.clone(),
            name: old.name.clone(),
            scopes: old.scopes.clone(),
            expires_at: old.expires_at,
            rate_limits: old.rate_limits.clone(),
            metadata: old.metadata.clone(),
            allowed_ips: old.allowed_ips.clone(),
        }
    }

    /// The record for `key`, created now.
    pub(crate) fn into_record(self, key: &ApiKey) -> KeyRecord {
        let mut record = KeyRecord::new(key, self.consumer)
            .with_name(self.name)
            .with_scopes(self.scopes)
            .with_rate_limits(self.rate_limits);
        record.expires_at = self.expires_at;
        record.metadata = self.metadata;
        record.allowed_ips = self.allowed_ips;
        record
    }
}

/// The [`start`](KeyRecord::start) of an imported key unless one is given: no part of a
/// key minted elsewhere is known, only its hash.
pub const IMPORTED_START: &str = "imported";

/// A key minted elsewhere, to [import](KeyStore::import) by its SHA-256 hash. The key
/// itself is never known to the store; whoever holds it can use it as soon as it is
/// imported (with [`ApiKeyLayer::accept_foreign_keys`](crate::ApiKeyLayer::accept_foreign_keys)
/// if it is not in this crate's format).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ImportedKey {
    /// SHA-256 of the whole key, as [`KeyHash::of`] computes it.
    pub hash: KeyHash,
    /// What lists show in place of the key's start (default [`IMPORTED_START`]).
    pub start: String,
    /// Who the key belongs to.
    pub consumer: String,
    /// A human-readable name.
    pub name: String,
    /// What it may do.
    pub scopes: Scopes,
    /// When it stops working, if ever.
    pub expires_at: Option<SystemTime>,
    /// Its rate-limit policies (empty: the layer's default).
    pub rate_limits: RateLimits,
    /// Free-form metadata.
    pub metadata: BTreeMap<String, String>,
    /// The networks it may be used from (empty: anywhere).
    pub allowed_ips: Vec<ipnet::IpNet>,
}

impl ImportedKey {
    /// The key with this hash, for `consumer`, with no name, scopes, expiry, policies,
    /// metadata or allowlist, shown as [`IMPORTED_START`].
    pub fn new(hash: KeyHash, consumer: impl Into<String>) -> Self {
        Self {
            hash,
            start: IMPORTED_START.to_owned(),
            consumer: consumer.into(),
            name: String::new(),
            scopes: Scopes::empty(),
            expires_at: None,
            rate_limits: RateLimits::default(),
            metadata: BTreeMap::new(),
            allowed_ips: Vec::new(),
        }
    }

    /// Sets what lists show in place of the key's start. Give only what is public
    /// about the key (its prefix, say), never the key.
    pub fn with_start(mut self, start: impl Into<String>) -> Self {
        self.start = start.into();
        self
    }

    /// Sets the name.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets the scopes.
    pub fn with_scopes(mut self, scopes: Scopes) -> Self {
        self.scopes = scopes;
        self
    }

    /// Sets the expiry time.
    pub fn with_expires_at(mut self, at: SystemTime) -> Self {
        self.expires_at = Some(at);
        self
    }

    /// Sets the rate-limit policies.
    pub fn with_rate_limits(mut self, limits: impl Into<RateLimits>) -> Self {
        self.rate_limits = limits.into();
        self
    }

    /// Adds a metadata entry.
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Sets the networks the key may be used from (empty: anywhere).
    pub fn with_allowed_ips(mut self, networks: impl IntoIterator<Item = ipnet::IpNet>) -> Self {
        self.allowed_ips = networks.into_iter().collect();
        self
    }

    /// The record for this key, with a fresh id, created at `now`.
    pub(crate) fn into_record(self, now: SystemTime) -> KeyRecord {
        KeyRecord {
            id: crate::record::generate_key_id(),
            hash: self.hash,
            start: self.start,
            consumer: self.consumer,
            name: self.name,
            scopes: self.scopes,
            created_at: now,
            expires_at: self.expires_at,
            revoked_at: None,
            deleted_at: None,
            metadata: self.metadata,
            rate_limits: self.rate_limits,
            allowed_ips: self.allowed_ips,
        }
    }
}

/// An import row refused because of its hash, from [`StoreError::DuplicateHashes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DuplicateRow {
    /// The row, from 0.
    pub index: usize,
    /// The earlier row of the batch with the same hash, when the hash is not stored but
    /// repeated in the batch; `None`: a key with this hash is already stored.
    pub earlier: Option<usize>,
}

impl fmt::Display for DuplicateRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.earlier {
            Some(earlier) => write!(f, "row {}: the same key hash as row {earlier}", self.index),
            None => write!(
                f,
                "row {}: a key with this hash is already stored",
                self.index
            ),
        }
    }
}

/// The hashes of an import batch, and every row refused for its hash. A store calls
/// [`first`](Self::first) for each row in order, and [`stored`](Self::stored) for a
/// first row whose hash turns out to be stored already.
#[derive(Default)]
pub(crate) struct BatchHashes {
    /// The first row of each hash, and whether its hash was stored already.
    first: std::collections::HashMap<KeyHash, (usize, bool)>,
    duplicates: Vec<DuplicateRow>,
}

impl BatchHashes {
    /// Is row `index` the first of the batch with `hash`? If not it is refused: as
    /// stored when the first one's hash is stored, else as repeating the first one.
    pub(crate) fn first(&mut self, index: usize, hash: KeyHash) -> bool {
        match self.first.get(&hash) {
            Some(&(earlier, stored)) => {
                let earlier = (!stored).then_some(earlier);
                self.duplicates.push(DuplicateRow { index, earlier });
                false
            }
            None => {
                self.first.insert(hash, (index, false));
                true
            }
        }
    }

    /// Row `index`, the first with `hash`, has the hash of a key already stored.
    pub(crate) fn stored(&mut self, index: usize, hash: KeyHash) {
        self.first.insert(hash, (index, true));
        self.duplicates.push(DuplicateRow {
            index,
            earlier: None,
        });
    }

    /// `Err` naming every refused row, in row order, if there is one.
    pub(crate) fn check(mut self) -> Result<(), StoreError> {
        if self.duplicates.is_empty() {
            return Ok(());
        }
        self.duplicates.sort_by_key(|d| d.index);
        Err(StoreError::DuplicateHashes(self.duplicates))
    }
}

/// When a key rotated at `now` with `grace` stops working: at the grace's end, or at its
/// own expiry if that comes first. A grace too long for the system clock is refused.
pub(crate) fn grace_end(
    old: &KeyRecord,
    now: SystemTime,
    grace: Duration,
) -> Result<SystemTime, StoreError> {
    let ends = now
        .checked_add(grace)
        .ok_or_else(|| StoreError::Invalid(format!("a grace of {grace:?} is too long")))?;
    Ok(old.expires_at.map_or(ends, |at| at.min(ends)))
}

/// A key just created: the secret, shown this once, and its record.
#[derive(Debug, Clone)]
pub struct CreatedKey {
    /// The secret key. Its `Debug` shows only its start.
    pub key: ApiKey,
    /// What the store keeps.
    pub record: KeyRecord,
}

/// Which records [`KeyStore::list`] returns: oldest first, `limit` at a time.
///
/// ```
/// use tower_api_key::store::ListQuery;
///
/// // The first 50 keys whose consumer or name contains "acme", in any case.
/// let query = ListQuery::default().search("ACME").limit(50);
/// assert_eq!(query.search.as_deref(), Some("ACME"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListQuery {
    /// Only this consumer's keys.
    pub consumer: Option<String>,
    /// Only keys whose consumer or name contains this text, ignoring case (see
    /// [`search`](Self::search)).
    pub search: Option<String>,
    /// The `next` cursor of the previous page.
    pub after: Option<String>,
    /// At most this many (1 to 1000; default 100).
    pub limit: usize,
}

impl Default for ListQuery {
    fn default() -> Self {
        Self {
            consumer: None,
            search: None,
            after: None,
            limit: 100,
        }
    }
}

impl ListQuery {
    /// The largest page.
    pub const MAX_LIMIT: usize = 1000;

    /// Only `consumer`'s keys.
    pub fn consumer(mut self, consumer: impl Into<String>) -> Self {
        self.consumer = Some(consumer.into());
        self
    }

    /// Only keys whose consumer or name contains `text`, ignoring case. The text is
    /// matched literally (`%`, `_` and `\` are not wildcards). Letters `A` to `Z` match
    /// `a` to `z` in every store; other letters match their other case in memory, in
    /// PostgreSQL as its locale says, and not in SQLite (whose `LOWER` is ASCII only).
    pub fn search(mut self, text: impl Into<String>) -> Self {
        self.search = Some(text.into());
        self
    }

    /// The SQL `LIKE` pattern of [`search`](Self::search), lower case, with `\` as its
    /// escape character: `%text%` with the wildcards in the text escaped.
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub(crate) fn like_pattern(&self) -> Option<String> {
        self.search.as_ref().map(|text| {
            let mut pattern = String::with_capacity(text.len() + 2);
            pattern.push('%');
            for c in text.to_lowercase().chars() {
                if matches!(c, '%' | '_' | '\\') {
                    pattern.push('\\');
                }
                pattern.push(c);
            }
            pattern.push('%');
            pattern
        })
    }

    /// The page after the one that returned `cursor` as `next`.
    pub fn after(mut self, cursor: impl Into<String>) -> Self {
        self.after = Some(cursor.into());
        self
    }

    /// At most `limit` records (clamped to 1..=1000).
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit.clamp(1, Self::MAX_LIMIT);
        self
    }
}

/// One page of records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The records, oldest first.
    pub records: Vec<KeyRecord>,
    /// The cursor of the next page, if there is one.
    pub next: Option<String>,
}

/// How much a key has been used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Requests let through.
    pub requests: u64,
    /// Requests refused: rate limited, a scope missing, or (counted with
    /// [`ApiKeyLayer::count_refusals`](crate::ApiKeyLayer::count_refusals)) the key
    /// revoked, expired or used from outside its allowlist.
    pub rejected: u64,
    /// When the key was last presented.
    pub last_used_at: Option<SystemTime>,
}

/// Usage of one key to add to the store's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageDelta {
    /// The key.
    pub key_id: String,
    /// Requests let through.
    pub requests: u64,
    /// Requests refused.
    pub rejected: u64,
    /// When it was last presented.
    pub last_used_at: SystemTime,
    /// The same requests by [`Outcome`], in minute buckets ([`series`]), oldest first.
    pub minutes: Vec<UsageBucket>,
}

/// What happened to a key.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuditEvent {
    /// The key was created.
    Created,
    /// The key was rotated; `new_key_id` replaces it.
    Rotated {
        /// The replacement.
        new_key_id: String,
    },
    /// The key stops working (at the entry's time) because it was rotated.
    ExpiredByRotation,
    /// The key was revoked.
    Revoked,
    /// The key was deleted ([`KeyStore::delete`]); when that revoked it, a
    /// [`Revoked`](Self::Revoked) entry comes before.
    Deleted,
    /// The key's expiry time was changed.
    ExpiryChanged,
    /// The key's scopes were changed.
    ScopesChanged,
    /// The networks the key may be used from were changed
    /// ([`KeyStore::set_allowed_ips`]).
    AllowedIpsChanged,
    /// The key was minted elsewhere and imported by its hash ([`KeyStore::import`]).
    Imported,
    /// The key was reported leaked (by a secret scanner, such as GitHub's): where it
    /// was found. Never the key itself. When the report revoked the key, a
    /// [`Revoked`](Self::Revoked) entry follows.
    Leaked {
        /// Where the key was found (for GitHub, the URL of the commit, issue, …);
        /// may be empty.
        url: String,
        /// What kind of place that is (for GitHub: `content`, `commit`, `pull_request`, …);
        /// may be empty.
        source: String,
    },
}

impl AuditEvent {
    /// A stable snake_case name: `created`, `rotated`, `expired_by_rotation`, `revoked`,
    /// `deleted`, `expiry_changed`, `scopes_changed`, `allowed_ips_changed`, `leaked`,
    /// `imported`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Rotated { .. } => "rotated",
            Self::ExpiredByRotation => "expired_by_rotation",
            Self::Revoked => "revoked",
            Self::Deleted => "deleted",
            Self::ExpiryChanged => "expiry_changed",
            Self::ScopesChanged => "scopes_changed",
            Self::AllowedIpsChanged => "allowed_ips_changed",
            Self::Leaked { .. } => "leaked",
            Self::Imported => "imported",
        }
    }
}

/// One entry of the audit log. It holds ids, never a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// When.
    pub at: SystemTime,
    /// What.
    pub event: AuditEvent,
    /// Which key.
    pub key_id: String,
    /// Who: an admin key's id, `cli`, or what the caller passed.
    pub actor: String,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No key has this id.
    #[error("no key with id {0:?}")]
    NotFound(String),
    /// The request is not valid (for example a malformed cursor).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// An [import](KeyStore::import) was refused, and nothing imported, because of the
    /// hashes of these rows (every such row of the batch, in row order): each is already
    /// stored or repeats an earlier row's.
    #[error("{}", duplicate_message(.0))]
    DuplicateHashes(Vec<DuplicateRow>),
    /// [`KeyStore::revoke_unless_last`] or [`KeyStore::delete_unless_last`] refused: the
    /// key is its consumer's last active key granting `scope`.
    #[error("this is the consumer's last active key with scope {scope:?}")]
    LastKey {
        /// The scope the consumer would have lost.
        scope: String,
    },
    /// The backend failed.
    #[error("key store error: {0}")]
    Backend(#[source] Box<dyn StdError + Send + Sync>),
}

fn duplicate_message(rows: &[DuplicateRow]) -> String {
    let rows: Vec<String> = rows.iter().map(ToString::to_string).collect();
    format!("import {}", rows.join("; "))
}

impl From<StoreError> for ResolveError {
    fn from(error: StoreError) -> Self {
        ResolveError::new(error)
    }
}

/// A store that manages keys: everything [`KeyResolver`] does, plus creating, listing,
/// revoking, deleting and rotating keys, usage counters and the audit log.
///
/// Every change takes an `actor` (an admin key's id, `cli`, …) for the audit log.
///
/// A revoked key stays what it was, for anyone to look into; a [deleted](Self::delete)
/// one is revoked and gone from its id: [`list`](Self::list) leaves it out, and every
/// change to it ([`revoke`](Self::revoke), [`rotate`](Self::rotate),
/// [`set_expiry`](Self::set_expiry), [`set_scopes`](Self::set_scopes),
/// [`set_allowed_ips`](Self::set_allowed_ips), deleting it again) is
/// [`StoreError::NotFound`]. The store keeps its row: [`get`](Self::get) and
/// [`resolve`](KeyResolver::resolve) still find it (with
/// [`deleted_at`](KeyRecord::deleted_at)), and its audit log and past usage stay.
#[async_trait::async_trait]
pub trait KeyStore: KeyResolver {
    /// Generates a key, stores its hash and start, and returns it: the only time the
    /// secret is available.
    async fn create(&self, new: NewKey, actor: &str) -> Result<CreatedKey, StoreError>;

    /// The record with this id, deleted or not.
    async fn get(&self, id: &str) -> Result<Option<KeyRecord>, StoreError>;

    /// Records, oldest first, a page at a time; deleted keys are left out.
    async fn list(&self, query: &ListQuery) -> Result<Page, StoreError>;

    /// Revokes the key now. Revoking a revoked key changes nothing.
    async fn revoke(&self, id: &str, actor: &str) -> Result<KeyRecord, StoreError>;

    /// Revokes the key now, as [`revoke`](Self::revoke) does, unless it is an active key
    /// whose scopes grant `scope` and its consumer has no other active key that does:
    /// then [`StoreError::LastKey`], and nothing changes. The check and the revocation
    /// are one transaction, serialized per consumer, so that two calls at once cannot
    /// revoke a consumer's last two such keys. (Used by the self-service portal, so that
    /// a consumer cannot lock itself out.)
    async fn revoke_unless_last(
        &self,
        id: &str,
        scope: &str,
        actor: &str,
    ) -> Result<KeyRecord, StoreError>;

    /// Deletes the key: revokes it now, as [`revoke`](Self::revoke) does (unless it is
    /// revoked already), and marks it deleted, with an [`AuditEvent::Deleted`] entry, in
    /// one transaction. Returns the record as it is afterwards. A deleted key is
    /// [`StoreError::NotFound`] here (see the trait's documentation for the rest).
    async fn delete(&self, id: &str, actor: &str) -> Result<KeyRecord, StoreError>;

    /// Deletes the key, as [`delete`](Self::delete) does, unless it is an active key
    /// whose scopes grant `scope` and its consumer has no other active key that does:
    /// then [`StoreError::LastKey`], and nothing changes, as with
    /// [`revoke_unless_last`](Self::revoke_unless_last).
    async fn delete_unless_last(
        &self,
        id: &str,
        scope: &str,
        actor: &str,
    ) -> Result<KeyRecord, StoreError>;

    /// A new key with the same consumer, name, scopes, policies, metadata and expiry;
    /// the old one keeps working for `grace`, then fails as expired.
    async fn rotate(
        &self,
        id: &str,
        grace: Duration,
        actor: &str,
    ) -> Result<CreatedKey, StoreError>;

    /// Sets (or clears) the expiry time.
    async fn set_expiry(
        &self,
        id: &str,
        at: Option<SystemTime>,
        actor: &str,
    ) -> Result<KeyRecord, StoreError>;

    /// Replaces the scopes.
    async fn set_scopes(
        &self,
        id: &str,
        scopes: Scopes,
        actor: &str,
    ) -> Result<KeyRecord, StoreError>;

    /// Replaces the networks the key may be used from (empty: anywhere), with an
    /// [`AuditEvent::AllowedIpsChanged`] entry and a [`ChangeKind::AllowedIpsChanged`]
    /// change, so that caches that follow the change feed drop the key.
    async fn set_allowed_ips(
        &self,
        id: &str,
        networks: Vec<ipnet::IpNet>,
        actor: &str,
    ) -> Result<KeyRecord, StoreError>;

    /// Adds usage counts (unknown ids are ignored).
    async fn record_usage(&self, deltas: &[UsageDelta]) -> Result<(), StoreError>;

    /// The usage of a key, `None` if no key has this id.
    async fn usage(&self, id: &str) -> Result<Option<Usage>, StoreError>;

    /// Usage over time of the key `key_id` (of all keys summed with `None`): the
    /// buckets of `step` starting in `[from, to)` that have counts, oldest first
    /// ([`series`]). `from` is floored to the step. An unknown key has none.
    async fn usage_series(
        &self,
        key_id: Option<&str>,
        step: UsageStep,
        from: SystemTime,
        to: SystemTime,
    ) -> Result<Vec<UsageBucket>, StoreError>;

    /// The consumers or keys with the most requests in the buckets of `step` starting
    /// in `[from, to)`: at most `limit` (and [`series::MAX_TOP`]), highest total first,
    /// ties by name.
    async fn usage_top(
        &self,
        by: UsageTopBy,
        step: UsageStep,
        from: SystemTime,
        to: SystemTime,
        limit: usize,
    ) -> Result<Vec<UsageTop>, StoreError>;

    /// The audit log, oldest first, of one key or of all.
    async fn audit(&self, key_id: Option<&str>) -> Result<Vec<AuditEntry>, StoreError>;

    /// Records that the key was found leaked at `url` (a place of kind `source`), as an
    /// [`AuditEvent::Leaked`] entry, and, if `revoke`, revokes it, in one transaction.
    /// The revocation is logged and reaches the change feed as
    /// [`revoke`](Self::revoke)'s does; a key already revoked stays as it was. Returns
    /// the record as it is afterwards.
    async fn report_leak(
        &self,
        id: &str,
        url: &str,
        source: &str,
        revoke: bool,
        actor: &str,
    ) -> Result<KeyRecord, StoreError>;

    /// Stores keys minted elsewhere, by their hashes, all or nothing: if any row's hash
    /// is already stored or repeats an earlier row's, nothing is imported and the error
    /// ([`StoreError::DuplicateHashes`]) names every such row. Each imported key gets a fresh id,
    /// an [`AuditEvent::Imported`] entry by `actor` and a
    /// [`ChangeKind::Created`] change. Returns the records in the order of `keys`.
    async fn import(
        &self,
        keys: Vec<ImportedKey>,
        actor: &str,
    ) -> Result<Vec<KeyRecord>, StoreError>;
}

#[async_trait::async_trait]
impl<T: KeyStore + ?Sized> KeyStore for std::sync::Arc<T> {
    async fn create(&self, new: NewKey, actor: &str) -> Result<CreatedKey, StoreError> {
        (**self).create(new, actor).await
    }
    async fn get(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        (**self).get(id).await
    }
    async fn list(&self, query: &ListQuery) -> Result<Page, StoreError> {
        (**self).list(query).await
    }
    async fn revoke(&self, id: &str, actor: &str) -> Result<KeyRecord, StoreError> {
        (**self).revoke(id, actor).await
    }
    async fn delete(&self, id: &str, actor: &str) -> Result<KeyRecord, StoreError> {
        (**self).delete(id, actor).await
    }
    async fn delete_unless_last(
        &self,
        id: &str,
        scope: &str,
        actor: &str,
    ) -> Result<KeyRecord, StoreError> {
        (**self).delete_unless_last(id, scope, actor).await
    }
    async fn revoke_unless_last(
        &self,
        id: &str,
        scope: &str,
        actor: &str,
    ) -> Result<KeyRecord, StoreError> {
        (**self).revoke_unless_last(id, scope, actor).await
    }
    async fn rotate(
        &self,
        id: &str,
        grace: Duration,
        actor: &str,
    ) -> Result<CreatedKey, StoreError> {
        (**self).rotate(id, grace, actor).await
    }
    async fn set_expiry(
        &self,
        id: &str,
        at: Option<SystemTime>,
        actor: &str,
    ) -> Result<KeyRecord, StoreError> {
        (**self).set_expiry(id, at, actor).await
    }
    async fn set_scopes(
        &self,
        id: &str,
        scopes: Scopes,
        actor: &str,
    ) -> Result<KeyRecord, StoreError> {
        (**self).set_scopes(id, scopes, actor).await
    }
    async fn set_allowed_ips(
        &self,
        id: &str,
        networks: Vec<ipnet::IpNet>,
        actor: &str,
    ) -> Result<KeyRecord, StoreError> {
        (**self).set_allowed_ips(id, networks, actor).await
    }
    async fn record_usage(&self, deltas: &[UsageDelta]) -> Result<(), StoreError> {
        (**self).record_usage(deltas).await
    }
    async fn usage(&self, id: &str) -> Result<Option<Usage>, StoreError> {
        (**self).usage(id).await
    }
    async fn usage_series(
        &self,
        key_id: Option<&str>,
        step: UsageStep,
        from: SystemTime,
        to: SystemTime,
    ) -> Result<Vec<UsageBucket>, StoreError> {
        (**self).usage_series(key_id, step, from, to).await
    }
    async fn usage_top(
        &self,
        by: UsageTopBy,
        step: UsageStep,
        from: SystemTime,
        to: SystemTime,
        limit: usize,
    ) -> Result<Vec<UsageTop>, StoreError> {
        (**self).usage_top(by, step, from, to, limit).await
    }
    async fn audit(&self, key_id: Option<&str>) -> Result<Vec<AuditEntry>, StoreError> {
        (**self).audit(key_id).await
    }
    async fn report_leak(
        &self,
        id: &str,
        url: &str,
        source: &str,
        revoke: bool,
        actor: &str,
    ) -> Result<KeyRecord, StoreError> {
        (**self).report_leak(id, url, source, revoke, actor).await
    }
    async fn import(
        &self,
        keys: Vec<ImportedKey>,
        actor: &str,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        (**self).import(keys, actor).await
    }
}

/// A cached store is a store whose changes invalidate the cache entry of the key they
/// change, so that revocation, rotation and expiry changes take effect at once here.
#[async_trait::async_trait]
impl<S: KeyStore> KeyStore for CachedResolver<S> {
    async fn create(&self, new: NewKey, actor: &str) -> Result<CreatedKey, StoreError> {
        let created = self.resolver().create(new, actor).await?;
        // A request may have cached "unknown" for this hash a moment ago.
        self.invalidate(&created.record.hash).await;
        Ok(created)
    }

    async fn get(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        self.resolver().get(id).await
    }

    async fn list(&self, query: &ListQuery) -> Result<Page, StoreError> {
        self.resolver().list(query).await
    }

    async fn revoke(&self, id: &str, actor: &str) -> Result<KeyRecord, StoreError> {
        let record = self.resolver().revoke(id, actor).await?;
        self.invalidate(&record.hash).await;
        Ok(record)
    }

    async fn revoke_unless_last(
        &self,
        id: &str,
        scope: &str,
        actor: &str,
    ) -> Result<KeyRecord, StoreError> {
        let record = self.resolver().revoke_unless_last(id, scope, actor).await?;
        self.invalidate(&record.hash).await;
        Ok(record)
    }

    async fn delete(&self, id: &str, actor: &str) -> Result<KeyRecord, StoreError> {
        let record = self.resolver().delete(id, actor).await?;
        self.invalidate(&record.hash).await;
        Ok(record)
    }

    async fn delete_unless_last(
        &self,
        id: &str,
        scope: &str,
        actor: &str,
    ) -> Result<KeyRecord, StoreError> {
        let record = self.resolver().delete_unless_last(id, scope, actor).await?;
        self.invalidate(&record.hash).await;
        Ok(record)
    }

    async fn rotate(
        &self,
        id: &str,
        grace: Duration,
        actor: &str,
    ) -> Result<CreatedKey, StoreError> {
        let old = self.resolver().get(id).await?;
        let created = self.resolver().rotate(id, grace, actor).await?;
        if let Some(old) = old {
            self.invalidate(&old.hash).await;
        }
        self.invalidate(&created.record.hash).await;
        Ok(created)
    }

    async fn set_expiry(
        &self,
        id: &str,
        at: Option<SystemTime>,
        actor: &str,
    ) -> Result<KeyRecord, StoreError> {
        let record = self.resolver().set_expiry(id, at, actor).await?;
        self.invalidate(&record.hash).await;
        Ok(record)
    }

    async fn set_scopes(
        &self,
        id: &str,
        scopes: Scopes,
        actor: &str,
    ) -> Result<KeyRecord, StoreError> {
        let record = self.resolver().set_scopes(id, scopes, actor).await?;
        self.invalidate(&record.hash).await;
        Ok(record)
    }

    async fn set_allowed_ips(
        &self,
        id: &str,
        networks: Vec<ipnet::IpNet>,
        actor: &str,
    ) -> Result<KeyRecord, StoreError> {
        let record = self.resolver().set_allowed_ips(id, networks, actor).await?;
        // The entry would let the key in from outside its new list until it expired.
        self.invalidate(&record.hash).await;
        Ok(record)
    }

    async fn record_usage(&self, deltas: &[UsageDelta]) -> Result<(), StoreError> {
        self.resolver().record_usage(deltas).await
    }

    async fn usage(&self, id: &str) -> Result<Option<Usage>, StoreError> {
        self.resolver().usage(id).await
    }

    async fn usage_series(
        &self,
        key_id: Option<&str>,
        step: UsageStep,
        from: SystemTime,
        to: SystemTime,
    ) -> Result<Vec<UsageBucket>, StoreError> {
        self.resolver().usage_series(key_id, step, from, to).await
    }

    async fn usage_top(
        &self,
        by: UsageTopBy,
        step: UsageStep,
        from: SystemTime,
        to: SystemTime,
        limit: usize,
    ) -> Result<Vec<UsageTop>, StoreError> {
        self.resolver().usage_top(by, step, from, to, limit).await
    }

    async fn audit(&self, key_id: Option<&str>) -> Result<Vec<AuditEntry>, StoreError> {
        self.resolver().audit(key_id).await
    }

    async fn report_leak(
        &self,
        id: &str,
        url: &str,
        source: &str,
        revoke: bool,
        actor: &str,
    ) -> Result<KeyRecord, StoreError> {
        let record = self
            .resolver()
            .report_leak(id, url, source, revoke, actor)
            .await?;
        if revoke {
            self.invalidate(&record.hash).await;
        }
        Ok(record)
    }

    async fn import(
        &self,
        keys: Vec<ImportedKey>,
        actor: &str,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        let records = self.resolver().import(keys, actor).await?;
        // A request may have cached "unknown" for these hashes: a key used before it
        // was imported must work the moment the import returns.
        for record in &records {
            self.invalidate(&record.hash).await;
        }
        Ok(records)
    }
}

/// Is `id` the last active key granting `scope` among `keys` (its consumer's), so that
/// [`KeyStore::revoke_unless_last`] (or [`KeyStore::delete_unless_last`]) must refuse? A
/// revocation counts whatever its time (another instance's clock may be ahead).
pub(crate) fn is_last_holder<'a>(
    id: &str,
    keys: impl Iterator<Item = &'a KeyRecord>,
    scope: &str,
    now: SystemTime,
) -> bool {
    let holds = |r: &KeyRecord| {
        r.revoked_at.is_none()
            && r.status(now) == crate::record::KeyStatus::Active
            && r.scopes.grants(scope)
    };
    let (mut target, mut others) = (false, false);
    for r in keys.filter(|r| holds(r)) {
        if r.id == id {
            target = true;
        } else {
            others = true;
        }
    }
    target && !others
}

/// The opaque cursor of a listing: the creation time and id of the last record.
pub(crate) fn cursor_of(record: &KeyRecord) -> String {
    let nanos = record
        .created_at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{nanos}.{}", record.id)
}

/// Parses a cursor from [`cursor_of`].
pub(crate) fn parse_cursor(cursor: &str) -> Result<(SystemTime, String), StoreError> {
    let invalid = || StoreError::Invalid("malformed list cursor".to_owned());
    let (nanos, id) = cursor.split_once('.').ok_or_else(invalid)?;
    let nanos: u64 = nanos.parse().map_err(|_| invalid())?;
    if id.is_empty() {
        return Err(invalid());
    }
    Ok((
        SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos),
        id.to_owned(),
    ))
}

impl fmt::Display for AuditEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
