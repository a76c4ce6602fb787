use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use super::{KeyResolver, ResolveError};
use crate::key::{KeyFormat, KeyHash};
use crate::record::{KeyRecord, Scopes, generate_key_id};
use crate::store::outbox::{
    Attempt, DEFAULT_OUTBOX_RETENTION, Delivery, DeliveryState, EventData, EventType, KeyEvent,
    WebhookOutbox,
};
use crate::store::{
    AuditEntry, AuditEvent, BatchHashes, ChangeFeed, ChangeKind, Changes, CreatedKey,
    DEFAULT_CHANGE_RETENTION, ImportedKey, KeyChange, KeyStore, ListQuery, NewKey, Page,
    StoreError, Usage, UsageBucket, UsageDelta, UsageStep, UsageTop, UsageTopBy, Wakeups,
    cursor_of, grace_end, is_last_holder, parse_cursor, series,
};

/// Key records, usage and the audit log in memory: for tests, examples and small
/// services. A full [`KeyStore`], with a [`ChangeFeed`] whose wake-ups come through a
/// channel in memory (for caches in the same process).
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
    format: KeyFormat,
}

#[derive(Debug)]
struct Records {
    by_hash: HashMap<KeyHash, KeyRecord>,
    hash_by_id: HashMap<String, KeyHash>,
    usage: HashMap<String, Usage>,
    /// Per key id and step: the buckets by their start, oldest first.
    series: HashMap<(String, UsageStep), BTreeMap<SystemTime, UsageBucket>>,
    audit: Vec<AuditEntry>,
    /// The change log, oldest first, and the newest sequence it ever had.
    changes: VecDeque<KeyChange>,
    last_seq: u64,
    /// The newest sequence pruned from the log.
    pruned_through: u64,
    retention: Duration,
    /// Tells subscribers the newest sequence.
    wake: watch::Sender<u64>,
    /// The webhook outbox, oldest first.
    outbox: VecDeque<OutboxEntry>,
    outbox_retention: Duration,
    /// Per key id: the expiry times announced as `key.expiring` and as `key.expired`.
    announced: HashMap<String, (Option<SystemTime>, Option<SystemTime>)>,
}

/// An event of the outbox and its delivery state.
#[derive(Debug)]
struct OutboxEntry {
    event: KeyEvent,
    state: DeliveryState,
    next_attempt_at: SystemTime,
    last_status: Option<u16>,
    last_error: Option<String>,
    last_attempt_at: Option<SystemTime>,
    delivered_at: Option<SystemTime>,
}

impl Default for Records {
    fn default() -> Self {
        Self {
            by_hash: HashMap::new(),
            hash_by_id: HashMap::new(),
            usage: HashMap::new(),
            series: HashMap::new(),
            audit: Vec::new(),
            changes: VecDeque::new(),
            last_seq: 0,
            pruned_through: 0,
            retention: DEFAULT_CHANGE_RETENTION,
            wake: watch::Sender::new(0),
            outbox: VecDeque::new(),
            outbox_retention: DEFAULT_OUTBOX_RETENTION,
            announced: HashMap::new(),
        }
    }
}

impl Records {
    fn record_mut(&mut self, id: &str) -> Result<&mut KeyRecord, StoreError> {
        let hash = self
            .hash_by_id
            .get(id)
            .ok_or_else(|| StoreError::NotFound(id.to_owned()))?;
        self.by_hash
            .get_mut(hash)
            .ok_or_else(|| StoreError::NotFound(id.to_owned()))
    }

    /// The record of a key that is not deleted: a deleted one changes no more.
    fn live_mut(&mut self, id: &str) -> Result<&mut KeyRecord, StoreError> {
        match self.record_mut(id)? {
            record if record.deleted_at.is_some() => Err(StoreError::NotFound(id.to_owned())),
            record => Ok(record),
        }
    }

    /// Revokes the key at `now`, unless it is revoked already.
    fn revoke(&mut self, now: SystemTime, id: &str, actor: &str) -> Result<KeyRecord, StoreError> {
        let record = self.live_mut(id)?;
        if record.revoked_at.is_some() {
            return Ok(record.clone());
        }
        record.revoked_at = Some(now);
        let record = record.clone();
        self.log(now, AuditEvent::Revoked, id, actor);
        self.changed(now, &record, ChangeKind::Revoked);
        self.announce(now, EventType::KeyRevoked, EventData::of(&record));
        Ok(record)
    }

    /// Revokes the key at `now` (unless it is revoked already) and marks it deleted.
    fn delete(&mut self, now: SystemTime, id: &str, actor: &str) -> Result<KeyRecord, StoreError> {
        self.revoke(now, id, actor)?;
        let record = self.live_mut(id)?;
        record.deleted_at = Some(now);
        let record = record.clone();
        self.log(now, AuditEvent::Deleted, id, actor);
        Ok(record)
    }

    /// Refuses (as [`KeyStore::revoke_unless_last`]) to end `id` if it is its consumer's
    /// last active key granting `scope`.
    fn guard_last(&mut self, now: SystemTime, id: &str, scope: &str) -> Result<(), StoreError> {
        let consumer = self.record_mut(id)?.consumer.clone();
        let consumers_keys = self.by_hash.values().filter(|r| r.consumer == consumer);
        if is_last_holder(id, consumers_keys, scope, now) {
            return Err(StoreError::LastKey {
                scope: scope.to_owned(),
            });
        }
        Ok(())
    }

    fn log(&mut self, at: SystemTime, event: AuditEvent, key_id: &str, actor: &str) {
        self.audit.push(AuditEntry {
            at,
            event,
            key_id: key_id.to_owned(),
            actor: actor.to_owned(),
        });
    }

    /// Appends to the change log (under the same lock as the change itself), prunes
    /// what is past the retention window, and wakes subscribers.
    fn changed(&mut self, at: SystemTime, record: &KeyRecord, kind: ChangeKind) {
        self.last_seq += 1;
        self.changes.push_back(KeyChange {
            seq: self.last_seq,
            at,
            key_id: record.id.clone(),
            hash: record.hash,
            kind,
        });
        if let Some(cutoff) = SystemTime::now().checked_sub(self.retention) {
            while self.changes.front().is_some_and(|c| c.at < cutoff) {
                if let Some(pruned) = self.changes.pop_front() {
                    self.pruned_through = pruned.seq;
                }
            }
        }
        self.wake.send_replace(self.last_seq);
    }

    /// Appends an event to the webhook outbox (under the same lock as the change it
    /// announces), and prunes what is past the retention window.
    fn announce(&mut self, at: SystemTime, event_type: EventType, data: EventData) {
        if let Some(cutoff) = SystemTime::now().checked_sub(self.outbox_retention) {
            while self.outbox.front().is_some_and(|e| e.event.at < cutoff) {
                self.outbox.pop_front();
            }
        }
        self.outbox.push_back(OutboxEntry {
            event: KeyEvent::new(event_type, at, data),
            state: DeliveryState::Pending,
            next_attempt_at: at,
            last_status: None,
            last_error: None,
            last_attempt_at: None,
            delivered_at: None,
        });
    }

    /// Stores a new record under a fresh, unused id.
    fn add(&mut self, mut record: KeyRecord) -> KeyRecord {
        while self.hash_by_id.contains_key(&record.id) {
            record.id = generate_key_id();
        }
        self.hash_by_id.insert(record.id.clone(), record.hash);
        self.by_hash.insert(record.hash, record.clone());
        record
    }
}

impl MemoryStore {
    /// An empty store issuing keys of the default [`KeyFormat`].
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store issuing keys of `format`.
    pub fn with_format(format: KeyFormat) -> Self {
        Self {
            format,
            ..Self::default()
        }
    }

    /// Adds a record as it is, replacing any with the same id or hash (for tests and
    /// seeding; [`KeyStore::create`] is the way to issue keys).
    pub fn insert(&self, record: KeyRecord) {
        let now = SystemTime::now();
        let mut records = self.write();
        // Drop whatever holds this id or this hash.
        if let Some(old_hash) = records.hash_by_id.remove(&record.id)
            && let Some(old) = records.by_hash.remove(&old_hash)
            && old.hash != record.hash
        {
            records.changed(now, &old, ChangeKind::Updated);
        }
        if let Some(old) = records.by_hash.remove(&record.hash) {
            records.hash_by_id.remove(&old.id);
        }
        records.changed(now, &record, ChangeKind::Updated);
        records.hash_by_id.insert(record.id.clone(), record.hash);
        records.by_hash.insert(record.hash, record);
    }

    /// Keeps changes in the log for `retention` (default one day); a reader further
    /// behind gets [`Changes::Gap`].
    pub fn with_change_retention(self, retention: Duration) -> Self {
        self.write().retention = retention;
        self
    }

    /// Keeps webhook events in the outbox for `retention` (default seven days),
    /// delivered or not.
    pub fn with_outbox_retention(self, retention: Duration) -> Self {
        self.write().outbox_retention = retention;
        self
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
        // Every change below is made in one step under the lock, so a panic elsewhere
        // cannot leave the maps half-updated.
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

#[async_trait::async_trait]
impl KeyStore for MemoryStore {
    async fn create(&self, new: NewKey, actor: &str) -> Result<CreatedKey, StoreError> {
        let key = self.format.generate();
        let mut records = self.write();
        let record = records.add(new.into_record(&key));
        records.log(record.created_at, AuditEvent::Created, &record.id, actor);
        records.changed(record.created_at, &record, ChangeKind::Created);
        let data = EventData::of(&record);
        records.announce(record.created_at, EventType::KeyCreated, data);
        Ok(CreatedKey { key, record })
    }

    async fn import(
        &self,
        keys: Vec<ImportedKey>,
        actor: &str,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        let now = SystemTime::now();
        // One write lock for the checks and the inserts: all or nothing.
        let mut records = self.write();
        let mut batch = BatchHashes::default();
        for (index, key) in keys.iter().enumerate() {
            if batch.first(index, key.hash) && records.by_hash.contains_key(&key.hash) {
                batch.stored(index, key.hash);
            }
        }
        batch.check()?;
        let mut imported = Vec::with_capacity(keys.len());
        for key in keys {
            let record = records.add(key.into_record(now));
            records.log(now, AuditEvent::Imported, &record.id, actor);
            records.changed(now, &record, ChangeKind::Created);
            imported.push(record);
        }
        Ok(imported)
    }

    async fn get(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        let records = self.read();
        Ok(records
            .hash_by_id
            .get(id)
            .and_then(|h| records.by_hash.get(h))
            .cloned())
    }

    async fn list(&self, query: &ListQuery) -> Result<Page, StoreError> {
        let after = query.after.as_deref().map(parse_cursor).transpose()?;
        let search = query.search.as_ref().map(|text| text.to_lowercase());
        let records = self.read();
        let mut matching: Vec<&KeyRecord> = records
            .by_hash
            .values()
            .filter(|r| r.deleted_at.is_none())
            .filter(|r| query.consumer.as_ref().is_none_or(|c| &r.consumer == c))
            .filter(|r| {
                search.as_ref().is_none_or(|text| {
                    r.consumer.to_lowercase().contains(text) || r.name.to_lowercase().contains(text)
                })
            })
            .filter(|r| {
                after
                    .as_ref()
                    .is_none_or(|(at, id)| (r.created_at, &r.id) > (*at, id))
            })
            .collect();
        matching.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        let limit = query.limit.clamp(1, ListQuery::MAX_LIMIT);
        let more = matching.len() > limit;
        let page: Vec<KeyRecord> = matching.into_iter().take(limit).cloned().collect();
        let next = if more {
            page.last().map(cursor_of)
        } else {
            None
        };
        Ok(Page {
            records: page,
            next,
        })
    }

    async fn revoke(&self, id: &str, actor: &str) -> Result<KeyRecord, StoreError> {
        self.write().revoke(SystemTime::now(), id, actor)
    }

    async fn revoke_unless_last(
        &self,
        id: &str,
        scope: &str,
        actor: &str,
    ) -> Result<KeyRecord, StoreError> {
        let now = SystemTime::now();
        // One write lock over the check and the revocation.
        let mut records = self.write();
        records.guard_last(now, id, scope)?;
        records.revoke(now, id, actor)
    }

    async fn delete(&self, id: &str, actor: &str) -> Result<KeyRecord, StoreError> {
        self.write().delete(SystemTime::now(), id, actor)
    }

    async fn delete_unless_last(
        &self,
        id: &str,
        scope: &str,
        actor: &str,
    ) -> Result<KeyRecord, StoreError> {
        let now = SystemTime::now();
        let mut records = self.write();
        records.guard_last(now, id, scope)?;
        records.delete(now, id, actor)
    }

    async fn rotate(
        &self,
        id: &str,
        grace: Duration,
        actor: &str,
    ) -> Result<CreatedKey, StoreError> {
        let now = SystemTime::now();
        let key = self.format.generate();
        let mut records = self.write();
        let old = records.live_mut(id)?;
        let new = NewKey::successor_of(old);
        let stops = grace_end(old, now, grace)?;
        old.expires_at = Some(stops);
        let old = old.clone();
        let record = records.add(new.into_record(&key));
        let new_key_id = record.id.clone();
        records.log(now, AuditEvent::Rotated { new_key_id }, id, actor);
        records.log(now, AuditEvent::Created, &record.id, actor);
        records.log(stops, AuditEvent::ExpiredByRotation, id, actor);
        records.changed(now, &old, ChangeKind::Rotated);
        records.changed(now, &record, ChangeKind::Created);
        let mut rotated = EventData::of(&old);
        rotated.new_key_id = Some(record.id.clone());
        records.announce(now, EventType::KeyRotated, rotated);
        records.announce(now, EventType::KeyCreated, EventData::of(&record));
        Ok(CreatedKey { key, record })
    }

    async fn set_expiry(
        &self,
        id: &str,
        at: Option<SystemTime>,
        actor: &str,
    ) -> Result<KeyRecord, StoreError> {
        let now = SystemTime::now();
        let mut records = self.write();
        let record = records.live_mut(id)?;
        record.expires_at = at;
        let record = record.clone();
        records.log(now, AuditEvent::ExpiryChanged, id, actor);
        records.changed(now, &record, ChangeKind::ExpiryChanged);
        Ok(record)
    }

    async fn set_scopes(
        &self,
        id: &str,
        scopes: Scopes,
        actor: &str,
    ) -> Result<KeyRecord, StoreError> {
        let now = SystemTime::now();
        let mut records = self.write();
        let record = records.live_mut(id)?;
        record.scopes = scopes;
        let record = record.clone();
        records.log(now, AuditEvent::ScopesChanged, id, actor);
        records.changed(now, &record, ChangeKind::ScopesChanged);
        Ok(record)
    }

    async fn set_allowed_ips(
        &self,
        id: &str,
        networks: Vec<ipnet::IpNet>,
        actor: &str,
    ) -> Result<KeyRecord, StoreError> {
        let now = SystemTime::now();
        let mut records = self.write();
        let record = records.live_mut(id)?;
        record.allowed_ips = networks;
        let record = record.clone();
        records.log(now, AuditEvent::AllowedIpsChanged, id, actor);
        records.changed(now, &record, ChangeKind::AllowedIpsChanged);
        Ok(record)
    }

    async fn record_usage(&self, deltas: &[UsageDelta]) -> Result<(), StoreError> {
        let mut records = self.write();
        for d in deltas {
            if !records.hash_by_id.contains_key(&d.key_id) {
                continue;
            }
            let usage = records.usage.entry(d.key_id.clone()).or_default();
            usage.requests += d.requests;
            usage.rejected += d.rejected;
            usage.last_used_at = usage.last_used_at.max(Some(d.last_used_at));
            for minute in &d.minutes {
                for step in UsageStep::ALL {
                    let at = series::bucket_start(step, minute.at);
                    records
                        .series
                        .entry((d.key_id.clone(), step))
                        .or_default()
                        .entry(at)
                        .or_insert_with(|| UsageBucket::empty(at))
                        .add(minute);
                }
            }
        }
        let now = SystemTime::now();
        records.series.retain(|(_, step), buckets| {
            if let Some(cut) = step.cutoff(now) {
                *buckets = buckets.split_off(&cut);
            }
            !buckets.is_empty()
        });
        Ok(())
    }

    async fn usage_series(
        &self,
        key_id: Option<&str>,
        step: UsageStep,
        from: SystemTime,
        to: SystemTime,
    ) -> Result<Vec<UsageBucket>, StoreError> {
        let records = self.read();
        let from = series::bucket_start(step, from);
        let mut summed = BTreeMap::<SystemTime, UsageBucket>::new();
        if from >= to {
            return Ok(Vec::new());
        }
        for ((id, s), buckets) in &records.series {
            if *s != step || key_id.is_some_and(|k| k != id) {
                continue;
            }
            for (at, bucket) in buckets.range(from..to) {
                summed
                    .entry(*at)
                    .or_insert_with(|| UsageBucket::empty(*at))
                    .add(bucket);
            }
        }
        Ok(summed.into_values().collect())
    }

    async fn usage_top(
        &self,
        by: UsageTopBy,
        step: UsageStep,
        from: SystemTime,
        to: SystemTime,
        limit: usize,
    ) -> Result<Vec<UsageTop>, StoreError> {
        let records = self.read();
        let from = series::bucket_start(step, from);
        let mut sums = HashMap::<String, UsageBucket>::new();
        if from < to {
            for ((id, s), buckets) in &records.series {
                if *s != step {
                    continue;
                }
                let name = match by {
                    UsageTopBy::Key => id.clone(),
                    UsageTopBy::Consumer => {
                        let Some(record) = records
                            .hash_by_id
                            .get(id)
                            .and_then(|hash| records.by_hash.get(hash))
                        else {
                            continue;
                        };
                        record.consumer.clone()
                    }
                };
                let sum = sums.entry(name).or_insert_with(|| UsageBucket::empty(from));
                for bucket in buckets.range(from..to).map(|(_, b)| b) {
                    sum.add(bucket);
                }
            }
        }
        let mut top: Vec<UsageTop> = sums
            .into_iter()
            .filter(|(_, counts)| counts.total() > 0)
            .map(|(name, counts)| UsageTop { name, counts })
            .collect();
        series::rank(&mut top, limit);
        Ok(top)
    }

    async fn usage(&self, id: &str) -> Result<Option<Usage>, StoreError> {
        let records = self.read();
        if !records.hash_by_id.contains_key(id) {
            return Ok(None);
        }
        Ok(Some(records.usage.get(id).copied().unwrap_or_default()))
    }

    async fn audit(&self, key_id: Option<&str>) -> Result<Vec<AuditEntry>, StoreError> {
        let records = self.read();
        let mut entries: Vec<AuditEntry> = records
            .audit
            .iter()
            .filter(|e| key_id.is_none_or(|id| e.key_id == id))
            .cloned()
            .collect();
        entries.sort_by_key(|e| e.at);
        Ok(entries)
    }

    async fn report_leak(
        &self,
        id: &str,
        url: &str,
        source: &str,
        revoke: bool,
        actor: &str,
    ) -> Result<KeyRecord, StoreError> {
        let now = SystemTime::now();
        let mut records = self.write();
        let record = records.record_mut(id)?;
        let revokes = revoke && record.revoked_at.is_none();
        if revokes {
            record.revoked_at = Some(now);
        }
        let record = record.clone();
        let leaked = AuditEvent::Leaked {
            url: url.to_owned(),
            source: source.to_owned(),
        };
        records.log(now, leaked, id, actor);
        let mut data = EventData::of(&record);
        data.url = Some(url.to_owned());
        data.source = Some(source.to_owned());
        records.announce(now, EventType::KeyLeaked, data);
        if revokes {
            records.log(now, AuditEvent::Revoked, id, actor);
            records.changed(now, &record, ChangeKind::Revoked);
            records.announce(now, EventType::KeyRevoked, EventData::of(&record));
        }
        Ok(record)
    }
}

#[async_trait::async_trait]
impl ChangeFeed for MemoryStore {
    async fn changes_after(&self, after: u64, limit: usize) -> Result<Changes, StoreError> {
        let records = self.read();
        // Pruned past the reader, or the log is behind it: it cannot know what it missed.
        if records.pruned_through > after || records.last_seq < after {
            return Ok(Changes::Gap {
                last_seq: records.last_seq,
            });
        }
        // Sequences are consecutive, so the first wanted entry's place is known.
        let skip =
            usize::try_from(after.saturating_sub(records.pruned_through)).unwrap_or(usize::MAX);
        Ok(Changes::Next(
            records
                .changes
                .iter()
                .skip(skip)
                .take(limit)
                .cloned()
                .collect(),
        ))
    }

    async fn last_seq(&self) -> Result<u64, StoreError> {
        Ok(self.read().last_seq)
    }

    async fn subscribe(&self) -> Result<Option<Box<dyn Wakeups>>, StoreError> {
        let mut receiver = self.read().wake.subscribe();
        receiver.mark_changed();
        Ok(Some(Box::new(MemoryWakeups(receiver))))
    }
}

#[async_trait::async_trait]
impl WebhookOutbox for MemoryStore {
    async fn announce_expiries(
        &self,
        now: SystemTime,
        notice: Duration,
    ) -> Result<usize, StoreError> {
        let horizon = now.checked_add(notice).unwrap_or(now);
        let mut records = self.write();
        let mut due = Vec::new();
        for record in records.by_hash.values() {
            let (Some(expires), None) = (record.expires_at, record.revoked_at) else {
                continue;
            };
            let (expiring, expired) = records
                .announced
                .get(&record.id)
                .copied()
                .unwrap_or_default();
            if expires <= now {
                if expired != Some(expires) {
                    due.push((EventType::KeyExpired, EventData::of(record)));
                }
            } else if expires <= horizon && expiring != Some(expires) {
                due.push((EventType::KeyExpiring, EventData::of(record)));
            }
        }
        let count = due.len();
        for (event_type, data) in due {
            let marks = records.announced.entry(data.key_id.clone()).or_default();
            if event_type == EventType::KeyExpired {
                marks.1 = data.expires_at;
            } else {
                marks.0 = data.expires_at;
            }
            records.announce(now, event_type, data);
        }
        Ok(count)
    }

    async fn claim_due(
        &self,
        now: SystemTime,
        lease_until: SystemTime,
        limit: usize,
    ) -> Result<Vec<KeyEvent>, StoreError> {
        let mut records = self.write();
        let mut due: Vec<&mut OutboxEntry> = records
            .outbox
            .iter_mut()
            .filter(|e| e.state == DeliveryState::Pending && e.next_attempt_at <= now)
            .collect();
        due.sort_by_key(|e| (e.next_attempt_at, e.event.at));
        Ok(due
            .into_iter()
            .take(limit)
            .map(|e| {
                e.event.attempts = e.event.attempts.saturating_add(1);
                e.next_attempt_at = lease_until;
                e.event.clone()
            })
            .collect())
    }

    async fn record_attempt(&self, id: &str, attempt: &Attempt) -> Result<(), StoreError> {
        let mut records = self.write();
        let Some(entry) = records.outbox.iter_mut().find(|e| e.event.id == id) else {
            return Ok(());
        };
        match attempt {
            Attempt::Delivered { at, status } => {
                entry.state = DeliveryState::Delivered;
                entry.last_status = Some(*status);
                entry.last_error = None;
                entry.last_attempt_at = Some(*at);
                entry.delivered_at = Some(*at);
            }
            // A late failure (its lease ran out and another attempt settled the event)
            // changes nothing.
            Attempt::Failed { .. } if entry.state != DeliveryState::Pending => {}
            Attempt::Failed {
                at,
                status,
                error,
                retry_at,
            } => {
                entry.last_status = *status;
                entry.last_error = Some(error.clone());
                entry.last_attempt_at = Some(*at);
                match retry_at {
                    Some(retry) => entry.next_attempt_at = *retry,
                    None => entry.state = DeliveryState::Failed,
                }
            }
        }
        Ok(())
    }

    async fn deliveries(
        &self,
        key_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        let records = self.read();
        Ok(records
            .outbox
            .iter()
            .rev()
            .filter(|e| key_id.is_none_or(|id| e.event.data.key_id == id))
            .take(limit)
            .map(|e| Delivery {
                id: e.event.id.clone(),
                event_type: e.event.event_type,
                key_id: e.event.data.key_id.clone(),
                at: e.event.at,
                state: e.state,
                attempts: e.event.attempts,
                last_status: e.last_status,
                last_error: e.last_error.clone(),
                last_attempt_at: e.last_attempt_at,
                next_attempt_at: (e.state == DeliveryState::Pending).then_some(e.next_attempt_at),
                delivered_at: e.delivered_at,
            })
            .collect())
    }
}

/// Wake-ups of a [`MemoryStore`]: its store is in this process, so the channel is never
/// lost while the store lives.
struct MemoryWakeups(watch::Receiver<u64>);

#[async_trait::async_trait]
impl Wakeups for MemoryWakeups {
    async fn next(&mut self) -> bool {
        self.0.changed().await.is_ok()
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
        let revoked = store.revoke("k1", "test").await.unwrap();
        assert!(revoked.revoked_at.is_some());
        assert_eq!(KeyStore::get(&store, "k1").await.unwrap(), Some(revoked));
        assert!(matches!(
            store.revoke("nope", "test").await,
            Err(StoreError::NotFound(_))
        ));

        // Re-inserting the same id with a new key drops the old hash.
        let key2 = KeyFormat::default().generate();
        store.insert(KeyRecord::new(&key2, "acme").with_id("k1"));
        assert_eq!(store.len(), 1);
        assert!(store.resolve(&key.hash()).await.unwrap().is_none());
        assert!(store.resolve(&key2.hash()).await.unwrap().is_some());
    }
}
