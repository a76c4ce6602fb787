use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use super::{KeyResolver, ResolveError};
use crate::key::KeyHash;
use crate::record::KeyRecord;

/// Key records in memory: for tests, examples and small services.
///
/// Clones share the same records.
///
/// ```
/// use tower_api_key::{KeyFormat, KeyRecord, MemoryStore};
///
/// let store = MemoryStore::new();
/// let key = KeyFormat::default().generate();
/// store.insert(KeyRecord::new(&key, "acme"));
/// assert_eq!(store.len(), 1);
/// ```
#[derive(Clone, Default, Debug)]
pub struct MemoryStore {
    records: Arc<RwLock<Records>>,
}

#[derive(Default, Debug)]
struct Records {
    by_hash: HashMap<KeyHash, KeyRecord>,
    hash_by_id: HashMap<String, KeyHash>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a record, replacing any with the same id or hash.
    pub fn insert(&self, record: KeyRecord) {
        let mut records = self.write();
        if let Some(old) = records.hash_by_id.insert(record.id.clone(), record.hash) {
            records.by_hash.remove(&old);
        }
        if let Some(old) = records.by_hash.insert(record.hash, record) {
            records.hash_by_id.remove(&old.id);
        }
    }

    /// The record with this id.
    pub fn get(&self, id: &str) -> Option<KeyRecord> {
        let records = self.read();
        let hash = records.hash_by_id.get(id)?;
        records.by_hash.get(hash).cloned()
    }

    /// Marks the record with this id revoked at `at`; returns the updated record.
    ///
    /// A [`CachedResolver`](crate::CachedResolver) in front of this store keeps serving
    /// its cached copy until its TTL ends unless it is told with
    /// [`invalidate`](crate::CachedResolver::invalidate).
    pub fn revoke(&self, id: &str, at: SystemTime) -> Option<KeyRecord> {
        let mut records = self.write();
        let hash = *records.hash_by_id.get(id)?;
        let record = records.by_hash.get_mut(&hash)?;
        record.revoked_at.get_or_insert(at);
        Some(record.clone())
    }

    /// Every record.
    pub fn records(&self) -> Vec<KeyRecord> {
        self.read().by_hash.values().cloned().collect()
    }

    /// How many records.
    pub fn len(&self) -> usize {
        self.read().by_hash.len()
    }

    /// No records?
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Records> {
        // A panic while holding the lock cannot leave the maps inconsistent with each
        // other in a way that matters more than refusing all later requests would.
        self.records.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Records> {
        self.records.write().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait::async_trait]
impl KeyResolver for MemoryStore {
    async fn resolve(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, ResolveError> {
        Ok(self.read().by_hash.get(hash).cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KeyFormat;

    #[tokio::test]
    async fn insert_resolve_revoke_replace() {
        let store = MemoryStore::new();
        let key = KeyFormat::default().generate();
        let rec = KeyRecord::new(&key, "acme").with_id("k1");
        store.insert(rec.clone());
        assert_eq!(store.resolve(&key.hash()).await.unwrap(), Some(rec));
        let now = SystemTime::now();
        assert_eq!(store.revoke("k1", now).unwrap().revoked_at, Some(now));
        assert_eq!(store.get("k1").unwrap().revoked_at, Some(now));
        assert!(store.revoke("nope", now).is_none());

        // Re-inserting the same id with a new key drops the old hash.
        let key2 = KeyFormat::default().generate();
        store.insert(KeyRecord::new(&key2, "acme").with_id("k1"));
        assert_eq!(store.len(), 1);
        assert!(store.resolve(&key.hash()).await.unwrap().is_none());
        assert!(store.resolve(&key2.hash()).await.unwrap().is_some());
    }
}
