//! The change feed: an ordered log, kept by the store itself, of every change that can
//! make a cached record wrong.
//!
//! Each change (a key created, revoked, rotated, its expiry or scopes changed) appends
//! one [`KeyChange`] to the log **in the same transaction** as the change, with a
//! sequence number that only grows. A reader asks for the changes after the last one it
//! applied ([`ChangeFeed::changes_after`]), so that a reader that was away (a dropped
//! connection, a restart of the database) replays what it missed: the log is the truth.
//! A wake-up channel ([`ChangeFeed::subscribe`]: PostgreSQL's `LISTEN/NOTIFY`, a
//! channel in memory) only makes the reader ask sooner.
//!
//! The log is pruned after a retention window (one day by default). A reader further
//! behind than that gets [`Changes::Gap`]: it cannot know what it missed and flushes its
//! whole cache. [`CachedResolver::follow`](crate::CachedResolver::follow) does all of
//! this for a cache.
//!
//! ```
//! use tower_api_key::{KeyStore, MemoryStore, store::{ChangeFeed, ChangeKind, Changes, NewKey}};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let store = MemoryStore::new();
//! let start = store.last_seq().await.unwrap();
//! let created = store.create(NewKey::new("acme"), "admin").await.unwrap();
//! store.revoke(&created.record.id, "admin").await.unwrap();
//! let Changes::Next(changes) = store.changes_after(start, 100).await.unwrap() else {
//!     unreachable!("nothing was pruned");
//! };
//! let kinds: Vec<_> = changes.iter().map(|c| c.kind).collect();
//! assert_eq!(kinds, [ChangeKind::Created, ChangeKind::Revoked]);
//! assert!(changes.iter().all(|c| c.hash == created.record.hash));
//! # }
//! ```

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::StoreError;
use crate::key::KeyHash;

/// How long the log keeps a change by default: one day.
pub const DEFAULT_CHANGE_RETENTION: Duration = Duration::from_secs(86_400);

/// What happened to a key, as the change log records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ChangeKind {
    /// The key was created (a cache may remember its hash as unknown).
    Created,
    /// The key was revoked.
    Revoked,
    /// The key was rotated: it now stops at the end of its grace.
    Rotated,
    /// The key's expiry changed.
    ExpiryChanged,
    /// The key's scopes changed.
    ScopesChanged,
    /// The networks the key may be used from changed.
    AllowedIpsChanged,
    /// The record changed in some other way (a record replaced as a whole, say).
    Updated,
}

impl ChangeKind {
    /// A stable snake_case name, as stored: `created`, `revoked`, `rotated`,
    /// `expiry_changed`, `scopes_changed`, `allowed_ips_changed`, `updated`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Revoked => "revoked",
            Self::Rotated => "rotated",
            Self::ExpiryChanged => "expiry_changed",
            Self::ScopesChanged => "scopes_changed",
            Self::AllowedIpsChanged => "allowed_ips_changed",
            Self::Updated => "updated",
        }
    }

    /// The kind with this [`name`](Self::name). An unknown name (written by a newer
    /// version) reads as [`Updated`](Self::Updated): a reader only needs to know that
    /// the record changed.
    pub fn from_name(name: &str) -> Self {
        match name {
            "created" => Self::Created,
            "revoked" => Self::Revoked,
            "rotated" => Self::Rotated,
            "expiry_changed" => Self::ExpiryChanged,
            "scopes_changed" => Self::ScopesChanged,
            "allowed_ips_changed" => Self::AllowedIpsChanged,
            _ => Self::Updated,
        }
    }
}

/// One entry of the change log. It names the key by id and hash, never by the key.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyChange {
    /// The entry's place in the log: later changes have larger numbers.
    pub seq: u64,
    /// When the change was made.
    pub at: SystemTime,
    /// The key's id.
    pub key_id: String,
    /// The key's hash: what a cache is keyed by.
    pub hash: KeyHash,
    /// What changed.
    pub kind: ChangeKind,
}

/// The answer of [`ChangeFeed::changes_after`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changes {
    /// The changes after the sequence asked for, oldest first, at most as many as asked
    /// for; empty when there are none yet.
    Next(Vec<KeyChange>),
    /// Changes after the sequence asked for were pruned: the reader cannot know what it
    /// missed. It forgets everything it cached and goes on from `last_seq`.
    Gap {
        /// The newest sequence in the log now.
        last_seq: u64,
    },
}

/// A store's change log, read in order. See the [module docs](self).
#[async_trait::async_trait]
pub trait ChangeFeed: Send + Sync + 'static {
    /// The changes with a sequence above `after`, oldest first, at most `limit` of them.
    async fn changes_after(&self, after: u64, limit: usize) -> Result<Changes, StoreError>;

    /// The newest sequence in the log (0 for an empty log that was never pruned): where a
    /// new reader starts.
    async fn last_seq(&self) -> Result<u64, StoreError>;

    /// A channel that says when there may be new changes, if the store has one; `None`
    /// (the default) means that readers poll.
    ///
    /// Wake-ups only make readers ask sooner; a reader that (re)subscribes asks
    /// [`changes_after`](Self::changes_after) at once, so a lost wake-up loses nothing.
    async fn subscribe(&self) -> Result<Option<Box<dyn Wakeups>>, StoreError> {
        Ok(None)
    }
}

/// Wake-ups from a store's push channel; from [`ChangeFeed::subscribe`].
#[async_trait::async_trait]
pub trait Wakeups: Send + 'static {
    /// Waits until there may be new changes: `true`; or until the channel is lost:
    /// `false` (then subscribe again).
    async fn next(&mut self) -> bool;
}

#[async_trait::async_trait]
impl<T: ChangeFeed + ?Sized> ChangeFeed for Arc<T> {
    async fn changes_after(&self, after: u64, limit: usize) -> Result<Changes, StoreError> {
        (**self).changes_after(after, limit).await
    }
    async fn last_seq(&self) -> Result<u64, StoreError> {
        (**self).last_seq().await
    }
    async fn subscribe(&self) -> Result<Option<Box<dyn Wakeups>>, StoreError> {
        (**self).subscribe().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_by_name() {
        for kind in [
            ChangeKind::Created,
            ChangeKind::Revoked,
            ChangeKind::Rotated,
            ChangeKind::ExpiryChanged,
            ChangeKind::ScopesChanged,
            ChangeKind::AllowedIpsChanged,
            ChangeKind::Updated,
        ] {
            assert_eq!(ChangeKind::from_name(kind.name()), kind);
        }
        assert_eq!(ChangeKind::from_name("renamed"), ChangeKind::Updated);
    }
}
