//! Turning a [`KeyHash`] into a [`KeyRecord`]: the [`KeyResolver`] trait, an in-memory
//! store ([`MemoryStore`]) and a cache in front of any resolver ([`CachedResolver`]).
//!
//! A resolver only ever sees hashes, never keys, so nothing it logs or returns in an
//! error can leak a secret.

mod cache;
mod follow;
mod memory;
mod refresh;

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

pub use cache::{CachedResolver, CachedResolverBuilder};
pub(crate) use cache::{Refused, Stamp, Stamped};
pub use follow::{ChangeFollower, FeedHealth, FeedState, FollowOptions, PushState};
pub use memory::MemoryStore;

use crate::key::KeyHash;
use crate::record::KeyRecord;

/// Looks up the record of a key by its hash.
///
/// Return `Ok(None)` for a hash that no key has; return `Err` only when the answer is not
/// known (the store is unreachable): the layer then answers 503, never 401, and the error
/// is not cached.
///
/// ```
/// use tower_api_key::{KeyHash, KeyRecord, KeyResolver, ResolveError};
///
/// struct Static(Vec<KeyRecord>);
///
/// #[async_trait::async_trait]
/// impl KeyResolver for Static {
///     async fn resolve(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, ResolveError> {
///         Ok(self.0.iter().find(|r| r.hash == *hash).cloned())
///     }
/// }
/// ```
#[async_trait::async_trait]
pub trait KeyResolver: Send + Sync + 'static {
    /// The record whose `hash` is `hash`, if any.
    async fn resolve(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, ResolveError>;
}

#[async_trait::async_trait]
impl<T: KeyResolver + ?Sized> KeyResolver for Arc<T> {
    async fn resolve(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, ResolveError> {
        (**self).resolve(hash).await
    }
}

#[async_trait::async_trait]
impl<T: KeyResolver + ?Sized> KeyResolver for Box<T> {
    async fn resolve(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, ResolveError> {
        (**self).resolve(hash).await
    }
}

/// A call to the key store (a load, a read of its change log) that passed its deadline.
#[derive(Debug, thiserror::Error)]
#[error("the key store did not answer within {0:?}")]
pub(crate) struct TimedOut(pub(crate) std::time::Duration);

/// A resolver could not answer: the key store is unreachable or failed.
///
/// Cheap to clone (the cause is behind an `Arc`), so one failure can be handed to every
/// request waiting on the same lookup.
#[derive(Clone)]
pub struct ResolveError(Arc<dyn StdError + Send + Sync>);

impl ResolveError {
    /// Wraps the cause. The cause must not contain a key (resolvers only see hashes).
    pub fn new(cause: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        Self(Arc::from(cause.into()))
    }
}

impl fmt::Debug for ResolveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ResolveError").field(&self.0).finish()
    }
}

impl fmt::Display for ResolveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key store unavailable: {}", self.0)
    }
}

impl StdError for ResolveError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.0)
    }
}
