//! The `KeyStore` implementation shared by the SQL stores: one body of portable SQL
//! (numbered `$N` parameters, `CAST`, `CASE`), instantiated for each sqlx driver.

/// Implements `KeyResolver`, `KeyStore`, `ChangeFeed` and `WebhookOutbox` for `$store`
/// (which has `pool`, `format`, `retention` and `outbox_retention` fields, and the dialect's `serialize_changes_in`,
/// `lock_consumer_in`, `wake_in` and `subscribe_changes`) on the sqlx database `$db` with row type `$row`.
macro_rules! sql_key_store {
    ($store:ident, $db:ty, $row:ty) => {
        const COLUMNS: &str = "id, hash, start, consumer, name, scopes, created_at, expires_at, \
                               revoked_at, deleted_at, rate_limits, metadata, allowed_ips";

        fn backend(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
            // PostgreSQL refuses text holding NUL (in `text` and in `jsonb`): the input
            // is at fault, not the store (SQLSTATE 22021, 22P05).
            if let Some(sqlx::Error::Database(db)) =
                (&e as &dyn std::any::Any).downcast_ref::<sqlx::Error>()
                && matches!(db.code().as_deref(), Some("22021" | "22P05"))
            {
                return StoreError::Invalid(
                    "the text holds a character the key store cannot keep (NUL)".to_owned(),
                );
            }
            StoreError::Backend(Box::new(e))
        }

        /// The counts of a row with `allowed`, `rate_limited`, `forbidden` and
        /// `unauthorized` columns, as the bucket starting at `at`.
        fn bucket_from_row(
            row: &$row,
            at: SystemTime,
        ) -> Result<crate::store::UsageBucket, StoreError> {
            let count = |c: &str| {
                row.try_get::<Option<i64>, _>(c)
                    .map(|n| n.unwrap_or(0).max(0).unsigned_abs())
                    .map_err(backend)
            };
            Ok(crate::store::UsageBucket {
                at,
                allowed: count("allowed")?,
                rate_limited: count("rate_limited")?,
                forbidden: count("forbidden")?,
                unauthorized: count("unauthorized")?,
            })
        }

        impl $store {
    async fn fetch(&self, id: &str) -> Result<KeyRecord, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM api_keys WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?
            .ok_or_else(|| StoreError::NotFound(id.to_owned()))?;
        record_from_row(&row)
    }

    /// Revokes the key at `now` in `tx`, unless it is revoked already; a deleted key is
    /// not found.
    async fn revoke_in(
        &self,
        tx: &mut Transaction<'_, $db>,
        now: SystemTime,
        id: &str,
        actor: &str,
    ) -> Result<KeyRecord, StoreError> {
        let changed =
            sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                .bind(time_to_sql(now))
                .bind(id)
                .execute(&mut **tx)
                .await
                .map_err(backend)?
                .rows_affected();
        let record = Self::live_in(tx, id).await?;
        if changed == 1 {
            Self::log_in(tx, now, &AuditEvent::Revoked, id, actor).await?;
            let data = EventData::of(&record);
            Self::announce_in(tx, self.outbox_retention, now, EventType::KeyRevoked, &data)
                .await?;
            Self::changed_in(tx, self.retention, now, &record, ChangeKind::Revoked).await?;
        }
        Ok(record)
    }

    /// Revokes the key at `now` in `tx` (unless it is revoked already) and marks it
    /// deleted; a deleted key is not found.
    async fn delete_in(
        &self,
        tx: &mut Transaction<'_, $db>,
        now: SystemTime,
        id: &str,
        actor: &str,
    ) -> Result<KeyRecord, StoreError> {
        let mut record = self.revoke_in(tx, now, id, actor).await?;
        let changed =
            sqlx::query("UPDATE api_keys SET deleted_at = $1 WHERE id = $2 AND deleted_at IS NULL")
                .bind(time_to_sql(now))
                .bind(id)
                .execute(&mut **tx)
                .await
                .map_err(backend)?
                .rows_affected();
        if changed != 1 {
            // Deleted by another transaction since it was read (the key was revoked
            // already, so the revocation took no row lock).
            return Err(StoreError::NotFound(id.to_owned()));
        }
        Self::log_in(tx, now, &AuditEvent::Deleted, id, actor).await?;
        record.deleted_at = Some(now);
        Ok(record)
    }

    /// Revokes or deletes the key, in a transaction of its own; with `guard`, unless it
    /// is its consumer's last active key granting that scope (`revoke_unless_last`).
    async fn end(
        &self,
        id: &str,
        guard: Option<&str>,
        delete: bool,
        actor: &str,
    ) -> Result<KeyRecord, StoreError> {
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await.map_err(backend)?;
        if let Some(scope) = guard {
            let consumer = Self::fetch_in(&mut tx, id).await?.consumer;
            // One guarded revocation of this consumer's keys at a time; the read below
            // comes after the lock, so it sees what the one before committed.
            Self::lock_consumer_in(&mut tx, &consumer).await?;
            let sql = format!("SELECT {COLUMNS} FROM api_keys WHERE consumer = $1");
            let keys = sqlx::query(&sql)
                .bind(&consumer)
                .fetch_all(&mut *tx)
                .await
                .map_err(backend)?
                .iter()
                .map(record_from_row)
                .collect::<Result<Vec<_>, _>>()?;
            if $crate::store::is_last_holder(id, keys.iter(), scope, SystemTime::now()) {
                return Err(StoreError::LastKey {
                    scope: scope.to_owned(),
                });
            }
        }
        let now = SystemTime::now();
        let record = if delete {
            self.delete_in(&mut tx, now, id, actor).await?
        } else {
            self.revoke_in(&mut tx, now, id, actor).await?
        };
        tx.commit().await.map_err(backend)?;
        self.prune_events().await;
        Ok(record)
    }

    /// The record of a key that is not deleted, in `tx`: a deleted key changes no more.
    async fn live_in(tx: &mut Transaction<'_, $db>, id: &str) -> Result<KeyRecord, StoreError> {
        let record = Self::fetch_in(tx, id).await?;
        if record.deleted_at.is_some() {
            return Err(StoreError::NotFound(id.to_owned()));
        }
        Ok(record)
    }

    async fn fetch_in(tx: &mut Transaction<'_, $db>, id: &str) -> Result<KeyRecord, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM api_keys WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&mut **tx)
            .await
            .map_err(backend)?
            .ok_or_else(|| StoreError::NotFound(id.to_owned()))?;
        record_from_row(&row)
    }

    /// Inserts `record`, drawing another id on an id collision. `Ok(false)`: a record
    /// with its hash is already stored, and nothing was inserted.
    async fn insert_in(
        tx: &mut Transaction<'_, $db>,
        record: &mut KeyRecord,
    ) -> Result<bool, StoreError> {
        loop {
            let result = sqlx::query(
                "INSERT INTO api_keys (id, hash, start, consumer, name, scopes, created_at, \
                 expires_at, revoked_at, rate_limits, metadata, allowed_ips) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(&record.id)
            .bind(&record.hash.as_bytes()[..])
            .bind(&record.start)
            .bind(&record.consumer)
            .bind(&record.name)
            .bind(scopes_to_sql(&record.scopes))
            .bind(time_to_sql(record.created_at))
            .bind(record.expires_at.map(time_to_sql))
            .bind(record.revoked_at.map(time_to_sql))
            .bind(limits_to_sql(&record.rate_limits))
            .bind(metadata_to_sql(&record.metadata))
            .bind(ips_to_sql(&record.allowed_ips))
            .execute(&mut **tx)
            .await
            .map_err(backend)?;
            if result.rows_affected() == 1 {
                return Ok(true);
            }
            let hash_taken: Option<i64> =
                sqlx::query_scalar("SELECT CAST(1 AS BIGINT) FROM api_keys WHERE hash = $1")
                    .bind(&record.hash.as_bytes()[..])
                    .fetch_optional(&mut **tx)
                    .await
                    .map_err(backend)?;
            if hash_taken.is_some() {
                return Ok(false);
            }
            // An id collision (128 random bits: in theory only): draw another.
            record.id = generate_key_id();
        }
    }

    async fn log_in(
        tx: &mut Transaction<'_, $db>,
        at: SystemTime,
        event: &AuditEvent,
        key_id: &str,
        actor: &str,
    ) -> Result<(), StoreError> {
        let detail = match event {
            AuditEvent::Rotated { new_key_id } => Some(new_key_id.as_str()),
            _ => None,
        };
        let (url, source) = match event {
            AuditEvent::Leaked { url, source } => (Some(url.as_str()), Some(source.as_str())),
            _ => (None, None),
        };
        sqlx::query(
            "INSERT INTO api_key_audit (at, event, key_id, actor, detail, url, source) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(time_to_sql(at))
        .bind(event.name())
        .bind(key_id)
        .bind(actor)
        .bind(detail)
        .bind(url)
        .bind(source)
        .execute(&mut **tx)
        .await
        .map_err(backend)?;
        Ok(())
    }

    /// Appends `kind` for `record` to the change log, in `tx`, and prunes what is past
    /// the retention window.
    async fn changed_in(
        tx: &mut Transaction<'_, $db>,
        retention: Duration,
        at: SystemTime,
        record: &KeyRecord,
        kind: ChangeKind,
    ) -> Result<(), StoreError> {
        Self::changed_many_in(tx, retention, at, std::slice::from_ref(record), kind).await
    }

    /// `changed_in` for several records, pruning and waking once.
    async fn changed_many_in(
        tx: &mut Transaction<'_, $db>,
        retention: Duration,
        at: SystemTime,
        records: &[KeyRecord],
        kind: ChangeKind,
    ) -> Result<(), StoreError> {
        // From here to the commit, no other writer appends: sequences become visible
        // in the order they were handed out, so a reader never skips one.
        Self::serialize_changes_in(tx).await?;
        for record in records {
            sqlx::query(
                "INSERT INTO api_key_changes (at, key_id, hash, kind) VALUES ($1, $2, $3, $4)",
            )
            .bind(time_to_sql(at))
            .bind(&record.id)
            .bind(&record.hash.as_bytes()[..])
            .bind(kind.name())
            .execute(&mut **tx)
            .await
            .map_err(backend)?;
        }
        if let Some(cutoff) = SystemTime::now().checked_sub(retention) {
            let through: Option<i64> =
                sqlx::query_scalar("SELECT MAX(seq) FROM api_key_changes WHERE at < $1")
                    .bind(time_to_sql(cutoff))
                    .fetch_one(&mut **tx)
                    .await
                    .map_err(backend)?;
            if let Some(through) = through {
                sqlx::query("DELETE FROM api_key_changes WHERE seq <= $1")
                    .bind(through)
                    .execute(&mut **tx)
                    .await
                    .map_err(backend)?;
                sqlx::query(
                    "UPDATE api_key_changes_pruned SET through = $1 WHERE one = 1 AND through < $1",
                )
                .bind(through)
                .execute(&mut **tx)
                .await
                .map_err(backend)?;
            }
        }
        Self::wake_in(tx).await
    }

    /// Drops the outbox's events past its retention window after the change's own
    /// transaction, in a statement of its own, where the dialect says so (PostgreSQL:
    /// pruning inside a transaction that had locked key rows made a lock cycle with the
    /// expiry scan). Best effort: what is left now goes next time.
    async fn prune_events(&self) {
        if PRUNE_EVENTS_IN_TRANSACTION {
            return;
        }
        let Some(cutoff) = SystemTime::now().checked_sub(self.outbox_retention) else {
            return;
        };
        if let Err(e) = sqlx::query("DELETE FROM api_key_events WHERE at < $1")
            .bind(time_to_sql(cutoff))
            .execute(&self.pool)
            .await
        {
            tracing::debug!(error = %e, "could not prune the webhook outbox");
        }
    }

    /// Appends an event to the webhook outbox, in `tx`, and (where the dialect prunes in
    /// the transaction) prunes what is past the outbox's retention window.
    async fn announce_in(
        tx: &mut Transaction<'_, $db>,
        retention: Duration,
        at: SystemTime,
        event_type: EventType,
        data: &EventData,
    ) -> Result<(), StoreError> {
        // SQLite has one writer, so no lock cycle: prune here, in the change's own
        // write transaction (a statement after it would be one more write to wait for).
        if let Some(cutoff) = SystemTime::now()
            .checked_sub(retention)
            .filter(|_| PRUNE_EVENTS_IN_TRANSACTION)
        {
            sqlx::query("DELETE FROM api_key_events WHERE at < $1")
                .bind(time_to_sql(cutoff))
                .execute(&mut **tx)
                .await
                .map_err(backend)?;
        }
        let event = KeyEvent::new(event_type, at, data.clone());
        sqlx::query(
            "INSERT INTO api_key_events (id, event_type, key_id, data, at, next_attempt_at) \
             VALUES ($1, $2, $3, $4, $5, $5)",
        )
        .bind(&event.id)
        .bind(event_type.name())
        .bind(&data.key_id)
        .bind(data_to_json(data).to_string())
        .bind(time_to_sql(at))
        .execute(&mut **tx)
        .await
        .map_err(backend)?;
        Ok(())
    }
        }

#[async_trait::async_trait]
impl WebhookOutbox for $store {
    async fn announce_expiries(
        &self,
        now: SystemTime,
        notice: Duration,
    ) -> Result<usize, StoreError> {
        const BATCH: i64 = 500;
        let now_sql = time_to_sql(now);
        let horizon = time_to_sql(now.checked_add(notice).unwrap_or(now));
        let mut queued = 0;
        loop {
            let sql = format!(
                "SELECT {COLUMNS} FROM api_keys WHERE revoked_at IS NULL AND expires_at IS NOT NULL \
                 AND ((expires_at <= $1 AND (expired_announced_for IS NULL \
                       OR expired_announced_for <> expires_at)) \
                   OR (expires_at > $1 AND expires_at <= $2 AND (expiring_announced_for IS NULL \
                       OR expiring_announced_for <> expires_at))) \
                 ORDER BY expires_at, id LIMIT $3"
            );
            let rows = sqlx::query(&sql)
                .bind(now_sql)
                .bind(horizon)
                .bind(BATCH)
                .fetch_all(&self.pool)
                .await
                .map_err(backend)?;
            let records = rows
                .iter()
                .map(record_from_row)
                .collect::<Result<Vec<_>, _>>()?;
            let mut tx = self.pool.begin_with(BEGIN_WRITE).await.map_err(backend)?;
            let mut marked = 0;
            for record in &records {
                let Some(expires) = record.expires_at else { continue };
                let (event_type, column) = if expires <= now {
                    (EventType::KeyExpired, "expired_announced_for")
                } else {
                    (EventType::KeyExpiring, "expiring_announced_for")
                };
                // Marks the key unless another instance did since the read: each expiry
                // time is announced once.
                let sql = format!(
                    "UPDATE api_keys SET {column} = expires_at WHERE id = $1 AND expires_at = $2 \
                     AND revoked_at IS NULL AND ({column} IS NULL OR {column} <> expires_at)"
                );
                let changed = sqlx::query(&sql)
                    .bind(&record.id)
                    .bind(time_to_sql(expires))
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?
                    .rows_affected();
                if changed == 1 {
                    let data = EventData::of(record);
                    Self::announce_in(&mut tx, self.outbox_retention, now, event_type, &data)
                        .await?;
                    marked += 1;
                }
            }
            tx.commit().await.map_err(backend)?;
            self.prune_events().await;
            queued += marked;
            if i64::try_from(records.len()).unwrap_or(i64::MAX) < BATCH || marked == 0 {
                return Ok(queued);
            }
        }
    }

    async fn claim_due(
        &self,
        now: SystemTime,
        lease_until: SystemTime,
        limit: usize,
    ) -> Result<Vec<KeyEvent>, StoreError> {
        let candidates = sqlx::query(
            "SELECT id, next_attempt_at FROM api_key_events \
             WHERE state = 'pending' AND next_attempt_at <= $1 \
             ORDER BY next_attempt_at, seq LIMIT $2",
        )
        .bind(time_to_sql(now))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        let mut claimed = Vec::with_capacity(candidates.len());
        for candidate in &candidates {
            let id: String = candidate.try_get("id").map_err(backend)?;
            let due: i64 = candidate.try_get("next_attempt_at").map_err(backend)?;
            // Takes the lease unless another deliverer took it since the read.
            let row = sqlx::query(
                "UPDATE api_key_events SET next_attempt_at = $1, attempts = attempts + 1 \
                 WHERE id = $2 AND state = 'pending' AND next_attempt_at = $3 \
                 RETURNING id, event_type, data, at, attempts",
            )
            .bind(time_to_sql(lease_until))
            .bind(&id)
            .bind(due)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
            let Some(row) = row else { continue };
            let event_type: String = row.try_get("event_type").map_err(backend)?;
            let event_type = EventType::from_name(&event_type).ok_or_else(|| {
                StoreError::Backend("a stored webhook event has an unknown type".into())
            })?;
            let data: String = row.try_get("data").map_err(backend)?;
            let attempts: i32 = row.try_get("attempts").map_err(backend)?;
            let mut event = KeyEvent::new(
                event_type,
                time_from_sql(row.try_get("at").map_err(backend)?),
                data_from_json(&data)?,
            );
            event.id = row.try_get("id").map_err(backend)?;
            event.attempts = attempts.max(0).unsigned_abs();
            claimed.push(event);
        }
        Ok(claimed)
    }

    async fn record_attempt(&self, id: &str, attempt: &Attempt) -> Result<(), StoreError> {
        let query = match attempt {
            Attempt::Delivered { at, status } => sqlx::query(
                "UPDATE api_key_events SET state = 'delivered', last_status = $2, \
                 last_error = NULL, last_attempt_at = $3, delivered_at = $3 WHERE id = $1",
            )
            .bind(id)
            .bind(i32::from(*status))
            .bind(time_to_sql(*at)),
            Attempt::Failed {
                at,
                status,
                error,
                retry_at,
            } => sqlx::query(
                "UPDATE api_key_events SET last_status = $2, last_error = $3, \
                 last_attempt_at = $4, \
                 state = CASE WHEN CAST($5 AS BIGINT) IS NULL THEN 'failed' ELSE state END, \
                 next_attempt_at = COALESCE(CAST($5 AS BIGINT), next_attempt_at) \
                 WHERE id = $1 AND state = 'pending'",
            )
            .bind(id)
            .bind(status.map(i32::from))
            .bind(error.as_str())
            .bind(time_to_sql(*at))
            .bind(retry_at.map(time_to_sql)),
        };
        query.execute(&self.pool).await.map_err(backend)?;
        Ok(())
    }

    async fn deliveries(
        &self,
        key_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, event_type, key_id, at, state, attempts, last_status, last_error, \
             last_attempt_at, next_attempt_at, delivered_at FROM api_key_events \
             WHERE (CAST($1 AS TEXT) IS NULL OR key_id = $1) ORDER BY seq DESC LIMIT $2",
        )
        .bind(key_id)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.iter()
            .map(|row| {
                let corrupt =
                    || StoreError::Backend("a stored webhook event is malformed".into());
                let time = |c: &str| {
                    row.try_get::<Option<i64>, _>(c)
                        .map(|t| t.map(time_from_sql))
                        .map_err(backend)
                };
                let event_type: String = row.try_get("event_type").map_err(backend)?;
                let state: String = row.try_get("state").map_err(backend)?;
                let state = DeliveryState::from_name(&state).ok_or_else(corrupt)?;
                let attempts: i32 = row.try_get("attempts").map_err(backend)?;
                let status: Option<i32> = row.try_get("last_status").map_err(backend)?;
                Ok(Delivery {
                    id: row.try_get("id").map_err(backend)?,
                    event_type: EventType::from_name(&event_type).ok_or_else(corrupt)?,
                    key_id: row.try_get("key_id").map_err(backend)?,
                    at: time_from_sql(row.try_get("at").map_err(backend)?),
                    state,
                    attempts: attempts.max(0).unsigned_abs(),
                    last_status: status.and_then(|s| u16::try_from(s).ok()),
                    last_error: row.try_get("last_error").map_err(backend)?,
                    last_attempt_at: time("last_attempt_at")?,
                    next_attempt_at: if state == DeliveryState::Pending {
                        time("next_attempt_at")?
                    } else {
                        None
                    },
                    delivered_at: time("delivered_at")?,
                })
            })
            .collect()
    }
}

/// A freshly generated key whose hash is already stored: 256 random bits make it
/// impossible in practice; a broken random source would make it happen.
fn generated_hash_taken() -> StoreError {
    StoreError::Backend("a newly generated key's hash is already stored".into())
}

fn change_from_row(row: &$row) -> Result<KeyChange, StoreError> {
    let hash: Vec<u8> = row.try_get("hash").map_err(backend)?;
    let hash: [u8; 32] = hash
        .try_into()
        .map_err(|_| StoreError::Backend("a logged key hash is not 32 bytes".into()))?;
    let seq: i64 = row.try_get("seq").map_err(backend)?;
    let kind: String = row.try_get("kind").map_err(backend)?;
    Ok(KeyChange {
        seq: seq.max(0).unsigned_abs(),
        at: time_from_sql(row.try_get("at").map_err(backend)?),
        key_id: row.try_get("key_id").map_err(backend)?,
        hash: KeyHash::from_bytes(hash),
        kind: ChangeKind::from_name(&kind),
    })
}

#[async_trait::async_trait]
impl ChangeFeed for $store {
    async fn changes_after(&self, after: u64, limit: usize) -> Result<Changes, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, at, key_id, hash, kind FROM api_key_changes WHERE seq > $1 \
             ORDER BY seq LIMIT $2",
        )
        .bind(i64::try_from(after).unwrap_or(i64::MAX))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        // Read after the rows: a prune between the two reads shows here as a gap (at
        // worst one that was not needed), never as changes silently missing.
        let row = sqlx::query(
            "SELECT through, (SELECT MAX(seq) FROM api_key_changes) AS newest \
             FROM api_key_changes_pruned WHERE one = 1",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(backend)?;
        let through: i64 = row.try_get("through").map_err(backend)?;
        let newest: Option<i64> = row.try_get("newest").map_err(backend)?;
        let last_seq = newest.unwrap_or(through).max(through).max(0).unsigned_abs();
        // Pruned past the reader, or the log is behind it (a database restored from
        // a backup, a replica promoted without the last commits): either way the reader
        // cannot know what it missed.
        if through.max(0).unsigned_abs() > after || last_seq < after {
            return Ok(Changes::Gap { last_seq });
        }
        rows.iter()
            .map(change_from_row)
            .collect::<Result<Vec<_>, _>>()
            .map(Changes::Next)
    }

    async fn last_seq(&self) -> Result<u64, StoreError> {
        let seq: Option<i64> = sqlx::query_scalar(
            "SELECT COALESCE((SELECT MAX(seq) FROM api_key_changes), \
             (SELECT through FROM api_key_changes_pruned WHERE one = 1))",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(backend)?;
        Ok(seq.unwrap_or(0).max(0).unsigned_abs())
    }

    async fn subscribe(&self) -> Result<Option<Box<dyn Wakeups>>, StoreError> {
        self.subscribe_changes().await
    }
}

fn record_from_row(row: &$row) -> Result<KeyRecord, StoreError> {
    let get_str = |c: &str| row.try_get::<String, _>(c).map_err(backend);
    let get_time = |c: &str| {
        row.try_get::<Option<i64>, _>(c)
            .map(|t| t.map(time_from_sql))
            .map_err(backend)
    };
    let hash: Vec<u8> = row.try_get("hash").map_err(backend)?;
    let hash: [u8; 32] = hash
        .try_into()
        .map_err(|_| StoreError::Backend("a stored key hash is not 32 bytes".into()))?;
    Ok(KeyRecord {
        id: get_str("id")?,
        hash: KeyHash::from_bytes(hash),
        start: get_str("start")?,
        consumer: get_str("consumer")?,
        name: get_str("name")?,
        scopes: scopes_from_sql(&get_str("scopes")?)?,
        created_at: time_from_sql(row.try_get("created_at").map_err(backend)?),
        expires_at: get_time("expires_at")?,
        revoked_at: get_time("revoked_at")?,
        deleted_at: get_time("deleted_at")?,
        rate_limits: limits_from_sql(&get_str("rate_limits")?)?,
        metadata: metadata_from_sql(&get_str("metadata")?)?,
        allowed_ips: ips_from_sql(&get_str("allowed_ips")?)?,
    })
}

#[async_trait::async_trait]
impl KeyResolver for $store {
    async fn resolve(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, ResolveError> {
        let sql = format!("SELECT {COLUMNS} FROM api_keys WHERE hash = $1");
        let row = sqlx::query(&sql)
            .bind(&hash.as_bytes()[..])
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| ResolveError::new(backend(e)))?;
        Ok(row.as_ref().map(record_from_row).transpose()?)
    }
}

#[async_trait::async_trait]
impl KeyStore for $store {
    async fn create(&self, new: NewKey, actor: &str) -> Result<CreatedKey, StoreError> {
        let key = self.format.generate();
        let mut record = new.into_record(&key);
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await.map_err(backend)?;
        if !Self::insert_in(&mut tx, &mut record).await? {
            return Err(generated_hash_taken());
        }
        Self::log_in(
            &mut tx,
            record.created_at,
            &AuditEvent::Created,
            &record.id,
            actor,
        )
        .await?;
        let at = record.created_at;
        let data = EventData::of(&record);
        Self::announce_in(&mut tx, self.outbox_retention, at, EventType::KeyCreated, &data)
            .await?;
        Self::changed_in(&mut tx, self.retention, at, &record, ChangeKind::Created).await?;
        tx.commit().await.map_err(backend)?;
        self.prune_events().await;
        Ok(CreatedKey { key, record })
    }

    async fn get(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        match self.fetch(id).await {
            Ok(record) => Ok(Some(record)),
            Err(StoreError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn list(&self, query: &ListQuery) -> Result<Page, StoreError> {
        let after = query.after.as_deref().map(parse_cursor).transpose()?;
        let limit = query.limit.clamp(1, ListQuery::MAX_LIMIT);
        let (after_at, after_id) = match &after {
            Some((at, id)) => (Some(time_to_sql(*at)), Some(id.as_str())),
            None => (None, None),
        };
        let sql = format!(
            "SELECT {COLUMNS} FROM api_keys \
             WHERE deleted_at IS NULL \
               AND (CAST($1 AS TEXT) IS NULL OR consumer = $1) \
               AND (CAST($2 AS BIGINT) IS NULL OR (created_at, id) > ($2, CAST($3 AS TEXT))) \
               AND (CAST($5 AS TEXT) IS NULL OR LOWER(consumer) LIKE $5 ESCAPE '\\' \
                    OR LOWER(name) LIKE $5 ESCAPE '\\') \
             ORDER BY created_at, id LIMIT $4"
        );
        let rows = sqlx::query(&sql)
            .bind(query.consumer.as_deref())
            .bind(after_at)
            .bind(after_id)
            .bind(i64::try_from(limit + 1).unwrap_or(i64::MAX))
            .bind(query.like_pattern())
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        let mut records = rows
            .iter()
            .map(record_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let more = records.len() > limit;
        records.truncate(limit);
        let next = if more {
            records.last().map(cursor_of)
        } else {
            None
        };
        Ok(Page { records, next })
    }

    async fn revoke(&self, id: &str, actor: &str) -> Result<KeyRecord, StoreError> {
        self.end(id, None, false, actor).await
    }

    async fn revoke_unless_last(
        &self,
        id: &str,
        scope: &str,
        actor: &str,
    ) -> Result<KeyRecord, StoreError> {
        self.end(id, Some(scope), false, actor).await
    }

    async fn delete(&self, id: &str, actor: &str) -> Result<KeyRecord, StoreError> {
        self.end(id, None, true, actor).await
    }

    async fn delete_unless_last(
        &self,
        id: &str,
        scope: &str,
        actor: &str,
    ) -> Result<KeyRecord, StoreError> {
        self.end(id, Some(scope), true, actor).await
    }

    async fn rotate(
        &self,
        id: &str,
        grace: Duration,
        actor: &str,
    ) -> Result<CreatedKey, StoreError> {
        let now = SystemTime::now();
        let key = self.format.generate();
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await.map_err(backend)?;
        let old = Self::live_in(&mut tx, id).await?;
        let new = NewKey::successor_of(&old);
        let stops = $crate::store::grace_end(&old, now, grace)?;
        let changed =
            sqlx::query("UPDATE api_keys SET expires_at = $1 WHERE id = $2 AND deleted_at IS NULL")
                .bind(time_to_sql(stops))
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(backend)?
                .rows_affected();
        if changed != 1 {
            // Deleted since it was read.
            return Err(StoreError::NotFound(id.to_owned()));
        }
        let mut record = new.into_record(&key);
        if !Self::insert_in(&mut tx, &mut record).await? {
            return Err(generated_hash_taken());
        }
        let rotated = AuditEvent::Rotated {
            new_key_id: record.id.clone(),
        };
        Self::log_in(&mut tx, now, &rotated, id, actor).await?;
        Self::log_in(&mut tx, now, &AuditEvent::Created, &record.id, actor).await?;
        Self::log_in(&mut tx, stops, &AuditEvent::ExpiredByRotation, id, actor).await?;
        let mut rotated = EventData::of(&old);
        rotated.expires_at = Some(stops);
        rotated.new_key_id = Some(record.id.clone());
        let outbox = self.outbox_retention;
        Self::announce_in(&mut tx, outbox, now, EventType::KeyRotated, &rotated).await?;
        let created = EventData::of(&record);
        Self::announce_in(&mut tx, outbox, now, EventType::KeyCreated, &created).await?;
        Self::changed_in(&mut tx, self.retention, now, &old, ChangeKind::Rotated).await?;
        Self::changed_in(&mut tx, self.retention, now, &record, ChangeKind::Created).await?;
        tx.commit().await.map_err(backend)?;
        self.prune_events().await;
        Ok(CreatedKey { key, record })
    }

    async fn set_expiry(
        &self,
        id: &str,
        at: Option<SystemTime>,
        actor: &str,
    ) -> Result<KeyRecord, StoreError> {
        let now = SystemTime::now();
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await.map_err(backend)?;
        sqlx::query("UPDATE api_keys SET expires_at = $1 WHERE id = $2 AND deleted_at IS NULL")
            .bind(at.map(time_to_sql))
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let record = Self::live_in(&mut tx, id).await?;
        Self::log_in(&mut tx, now, &AuditEvent::ExpiryChanged, id, actor).await?;
        Self::changed_in(&mut tx, self.retention, now, &record, ChangeKind::ExpiryChanged)
            .await?;
        tx.commit().await.map_err(backend)?;
        Ok(record)
    }

    async fn set_scopes(
        &self,
        id: &str,
        scopes: Scopes,
        actor: &str,
    ) -> Result<KeyRecord, StoreError> {
        let now = SystemTime::now();
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await.map_err(backend)?;
        sqlx::query("UPDATE api_keys SET scopes = $1 WHERE id = $2 AND deleted_at IS NULL")
            .bind(scopes_to_sql(&scopes))
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let record = Self::live_in(&mut tx, id).await?;
        Self::log_in(&mut tx, now, &AuditEvent::ScopesChanged, id, actor).await?;
        Self::changed_in(&mut tx, self.retention, now, &record, ChangeKind::ScopesChanged)
            .await?;
        tx.commit().await.map_err(backend)?;
        Ok(record)
    }

    async fn set_allowed_ips(
        &self,
        id: &str,
        networks: Vec<ipnet::IpNet>,
        actor: &str,
    ) -> Result<KeyRecord, StoreError> {
        let now = SystemTime::now();
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await.map_err(backend)?;
        sqlx::query("UPDATE api_keys SET allowed_ips = $1 WHERE id = $2 AND deleted_at IS NULL")
            .bind(ips_to_sql(&networks))
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let record = Self::live_in(&mut tx, id).await?;
        Self::log_in(&mut tx, now, &AuditEvent::AllowedIpsChanged, id, actor).await?;
        let kind = ChangeKind::AllowedIpsChanged;
        Self::changed_in(&mut tx, self.retention, now, &record, kind).await?;
        tx.commit().await.map_err(backend)?;
        Ok(record)
    }

    async fn record_usage(&self, deltas: &[UsageDelta]) -> Result<(), StoreError> {
        use crate::store::series::{UsageBucket, UsageStep, bucket_start};
        // In key order, so that two instances writing at once take row locks in the
        // same order (no deadlock).
        let mut deltas: Vec<&UsageDelta> = deltas.iter().collect();
        deltas.sort_by(|a, b| a.key_id.cmp(&b.key_id));
        // The buckets, one row each (a statement may not change one row twice).
        let mut buckets = std::collections::BTreeMap::<(&str, u64, i64), UsageBucket>::new();
        for d in &deltas {
            for minute in &d.minutes {
                for step in UsageStep::ALL {
                    let at = bucket_start(step, minute.at);
                    buckets
                        .entry((d.key_id.as_str(), step.seconds(), time_to_sql(at)))
                        .or_insert_with(|| UsageBucket::empty(at))
                        .add(minute);
                }
            }
        }
        let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let now = SystemTime::now();
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await.map_err(backend)?;
        for d in &deltas {
            sqlx::query(
                "UPDATE api_keys SET requests = requests + $1, rejected = rejected + $2, \
                 last_used_at = CASE WHEN last_used_at IS NULL OR last_used_at < $3 \
                 THEN $3 ELSE last_used_at END WHERE id = $4",
            )
            .bind(count(d.requests))
            .bind(count(d.rejected))
            .bind(time_to_sql(d.last_used_at))
            .bind(&d.key_id)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        }
        // 7 parameters a row, 100 rows a statement: far below either driver's limit.
        let rows: Vec<_> = buckets.into_iter().collect();
        for chunk in rows.chunks(100) {
            let values = (0..chunk.len())
                .map(|i| {
                    let p = i * 7;
                    format!(
                        "(${}, ${}, ${}, ${}, ${}, ${}, ${})",
                        p + 1,
                        p + 2,
                        p + 3,
                        p + 4,
                        p + 5,
                        p + 6,
                        p + 7
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            // Unknown ids are ignored, as for the counters.
            let sql = format!(
                "INSERT INTO api_key_usage \
                 (key_id, step, at, allowed, rate_limited, forbidden, unauthorized) \
                 SELECT v.column1, v.column2, v.column3, v.column4, v.column5, v.column6, \
                 v.column7 FROM (VALUES {values}) AS v \
                 WHERE EXISTS (SELECT 1 FROM api_keys k WHERE k.id = v.column1) \
                 ON CONFLICT (key_id, step, at) DO UPDATE SET \
                 allowed = api_key_usage.allowed + excluded.allowed, \
                 rate_limited = api_key_usage.rate_limited + excluded.rate_limited, \
                 forbidden = api_key_usage.forbidden + excluded.forbidden, \
                 unauthorized = api_key_usage.unauthorized + excluded.unauthorized"
            );
            let mut query = sqlx::query(&sql);
            for ((key_id, step, at), b) in chunk {
                query = query
                    .bind(*key_id)
                    .bind(count(*step))
                    .bind(*at)
                    .bind(count(b.allowed))
                    .bind(count(b.rate_limited))
                    .bind(count(b.forbidden))
                    .bind(count(b.unauthorized));
            }
            query.execute(&mut *tx).await.map_err(backend)?;
        }
        for step in UsageStep::ALL {
            let Some(cut) = step.cutoff(now) else {
                continue;
            };
            sqlx::query("DELETE FROM api_key_usage WHERE step = $1 AND at < $2")
                .bind(count(step.seconds()))
                .bind(time_to_sql(cut))
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)
    }

    async fn usage_series(
        &self,
        key_id: Option<&str>,
        step: crate::store::UsageStep,
        from: SystemTime,
        to: SystemTime,
    ) -> Result<Vec<crate::store::UsageBucket>, StoreError> {
        let from = crate::store::series::bucket_start(step, from);
        if from >= to {
            return Ok(Vec::new());
        }
        let filter = if key_id.is_some() { "AND key_id = $4" } else { "" };
        let sql = format!(
            "SELECT at, CAST(SUM(allowed) AS BIGINT) AS allowed, \
             CAST(SUM(rate_limited) AS BIGINT) AS rate_limited, \
             CAST(SUM(forbidden) AS BIGINT) AS forbidden, \
             CAST(SUM(unauthorized) AS BIGINT) AS unauthorized \
             FROM api_key_usage WHERE step = $1 AND at >= $2 AND at < $3 {filter} \
             GROUP BY at ORDER BY at"
        );
        let mut query = sqlx::query(&sql)
            .bind(i64::try_from(step.seconds()).unwrap_or(i64::MAX))
            .bind(time_to_sql(from))
            .bind(time_to_sql(to));
        if let Some(key_id) = key_id {
            query = query.bind(key_id);
        }
        let rows = query.fetch_all(&self.pool).await.map_err(backend)?;
        rows.iter()
            .map(|row| {
                let at = time_from_sql(row.try_get::<i64, _>("at").map_err(backend)?);
                bucket_from_row(row, at)
            })
            .collect()
    }

    async fn usage_top(
        &self,
        by: crate::store::UsageTopBy,
        step: crate::store::UsageStep,
        from: SystemTime,
        to: SystemTime,
        limit: usize,
    ) -> Result<Vec<crate::store::UsageTop>, StoreError> {
        use crate::store::series::{MAX_TOP, bucket_start};
        let from = bucket_start(step, from);
        let limit = limit.min(MAX_TOP);
        if from >= to || limit == 0 {
            return Ok(Vec::new());
        }
        let (name, join) = match by {
            crate::store::UsageTopBy::Key => ("u.key_id", ""),
            crate::store::UsageTopBy::Consumer => {
                ("k.consumer", "JOIN api_keys k ON k.id = u.key_id")
            }
        };
        let sql = format!(
            "SELECT {name} AS name, CAST(SUM(u.allowed) AS BIGINT) AS allowed, \
             CAST(SUM(u.rate_limited) AS BIGINT) AS rate_limited, \
             CAST(SUM(u.forbidden) AS BIGINT) AS forbidden, \
             CAST(SUM(u.unauthorized) AS BIGINT) AS unauthorized \
             FROM api_key_usage u {join} \
             WHERE u.step = $1 AND u.at >= $2 AND u.at < $3 GROUP BY {name} \
             ORDER BY SUM(u.allowed + u.rate_limited + u.forbidden + u.unauthorized) DESC, \
             {name} LIMIT $4"
        );
        let rows = sqlx::query(&sql)
            .bind(i64::try_from(step.seconds()).unwrap_or(i64::MAX))
            .bind(time_to_sql(from))
            .bind(time_to_sql(to))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        let mut top = rows
            .iter()
            .map(|row| {
                Ok(crate::store::UsageTop {
                    name: row.try_get::<String, _>("name").map_err(backend)?,
                    counts: bucket_from_row(row, from)?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        // The database's collation may order ties differently: the same order as every store.
        crate::store::series::rank(&mut top, limit);
        Ok(top)
    }

    async fn usage(&self, id: &str) -> Result<Option<Usage>, StoreError> {
        let row = sqlx::query("SELECT requests, rejected, last_used_at FROM api_keys WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.map(|row| {
            let count = |c: &str| {
                row.try_get::<i64, _>(c)
                    .map(|n| n.max(0).unsigned_abs())
                    .map_err(backend)
            };
            Ok(Usage {
                requests: count("requests")?,
                rejected: count("rejected")?,
                last_used_at: row
                    .try_get::<Option<i64>, _>("last_used_at")
                    .map_err(backend)?
                    .map(time_from_sql),
            })
        })
        .transpose()
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
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await.map_err(backend)?;
        let changed = if revoke {
            sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                .bind(time_to_sql(now))
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(backend)?
                .rows_affected()
        } else {
            0
        };
        let record = Self::fetch_in(&mut tx, id).await?;
        let leaked = AuditEvent::Leaked {
            url: url.to_owned(),
            source: source.to_owned(),
        };
        Self::log_in(&mut tx, now, &leaked, id, actor).await?;
        let mut data = EventData::of(&record);
        data.url = Some(url.to_owned());
        data.source = Some(source.to_owned());
        let outbox = self.outbox_retention;
        Self::announce_in(&mut tx, outbox, now, EventType::KeyLeaked, &data).await?;
        if changed == 1 {
            Self::log_in(&mut tx, now, &AuditEvent::Revoked, id, actor).await?;
            let data = EventData::of(&record);
            Self::announce_in(&mut tx, outbox, now, EventType::KeyRevoked, &data).await?;
            Self::changed_in(&mut tx, self.retention, now, &record, ChangeKind::Revoked).await?;
        }
        tx.commit().await.map_err(backend)?;
        self.prune_events().await;
        Ok(record)
    }

    async fn import(
        &self,
        keys: Vec<$crate::store::ImportedKey>,
        actor: &str,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        let now = SystemTime::now();
        let mut batch = $crate::store::BatchHashes::default();
        let mut records = Vec::with_capacity(keys.len());
        // One transaction: any error drops it, and with it every row inserted so far.
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await.map_err(backend)?;
        for (index, key) in keys.into_iter().enumerate() {
            if !batch.first(index, key.hash) {
                continue;
            }
            let hash = key.hash;
            let mut record = key.into_record(now);
            // A conflict inserts nothing and leaves the transaction usable: go on, so
            // that the error names every such row.
            if !Self::insert_in(&mut tx, &mut record).await? {
                batch.stored(index, hash);
                continue;
            }
            Self::log_in(&mut tx, now, &AuditEvent::Imported, &record.id, actor).await?;
            records.push(record);
        }
        // Dropping the transaction undoes every row inserted so far.
        batch.check()?;
        if !records.is_empty() {
            Self::changed_many_in(&mut tx, self.retention, now, &records, ChangeKind::Created)
                .await?;
        }
        tx.commit().await.map_err(backend)?;
        Ok(records)
    }

    async fn audit(&self, key_id: Option<&str>) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT at, event, key_id, actor, detail, url, source FROM api_key_audit \
             WHERE (CAST($1 AS TEXT) IS NULL OR key_id = $1) ORDER BY at, seq",
        )
        .bind(key_id)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.iter()
            .map(|row| {
                let name: String = row.try_get("event").map_err(backend)?;
                let detail: Option<String> = row.try_get("detail").map_err(backend)?;
                let event = match (name.as_str(), detail) {
                    ("created", _) => AuditEvent::Created,
                    ("rotated", Some(new_key_id)) => AuditEvent::Rotated { new_key_id },
                    ("expired_by_rotation", _) => AuditEvent::ExpiredByRotation,
                    ("revoked", _) => AuditEvent::Revoked,
                    ("deleted", _) => AuditEvent::Deleted,
                    ("expiry_changed", _) => AuditEvent::ExpiryChanged,
                    ("scopes_changed", _) => AuditEvent::ScopesChanged,
                    ("allowed_ips_changed", _) => AuditEvent::AllowedIpsChanged,
                    ("imported", _) => AuditEvent::Imported,
                    ("leaked", _) => AuditEvent::Leaked {
                        url: row
                            .try_get::<Option<String>, _>("url")
                            .map_err(backend)?
                            .unwrap_or_default(),
                        source: row
                            .try_get::<Option<String>, _>("source")
                            .map_err(backend)?
                            .unwrap_or_default(),
                    },
                    _ => {
                        return Err(StoreError::Backend(
                            "an audit entry has an unknown event".into(),
                        ));
                    }
                };
                Ok(AuditEntry {
                    at: time_from_sql(row.try_get("at").map_err(backend)?),
                    event,
                    key_id: row.try_get("key_id").map_err(backend)?,
                    actor: row.try_get("actor").map_err(backend)?,
                })
            })
            .collect()
    }
}
    };
}

pub(crate) use sql_key_store;
