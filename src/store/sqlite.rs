//! [`SqliteStore`]: keys in an embedded SQLite database (feature `sqlite`).

use std::str::FromStr;
use std::time::{Duration, SystemTime};

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
};
use sqlx::{Row, Sqlite, Transaction};

use super::codec::{
    ips_from_sql, ips_to_sql, limits_from_sql, limits_to_sql, metadata_from_sql, metadata_to_sql,
    scopes_from_sql, scopes_to_sql, time_from_sql, time_to_sql,
};
use super::outbox::{
    Attempt, DEFAULT_OUTBOX_RETENTION, Delivery, DeliveryState, EventData, EventType, KeyEvent,
    WebhookOutbox, data_from_json, data_to_json,
};
use super::{
    AuditEntry, AuditEvent, ChangeFeed, ChangeKind, Changes, CreatedKey, DEFAULT_CHANGE_RETENTION,
    KeyChange, KeyStore, ListQuery, NewKey, Page, StoreError, Usage, UsageDelta, Wakeups,
    cursor_of, parse_cursor,
};
use crate::key::{KeyFormat, KeyHash};
use crate::record::{KeyRecord, Scopes, generate_key_id};
use crate::resolve::{KeyResolver, ResolveError};

/// Keys, usage and the audit log in SQLite, through sqlx.
///
/// Its [`ChangeFeed`] is read by polling: several processes may share one database
/// file, and SQLite has no way to wake them.
///
/// The schema's migrations are embedded in the crate and run on connect (unless turned
/// off with [`SqliteStoreBuilder::migrate`]); a database made by an older version is
/// migrated forward. The hash column is unique and indexed; times are stored as UTC
/// Unix nanoseconds, so records round-trip exactly.
///
/// ```
/// use tower_api_key::{KeyStore, store::{NewKey, SqliteStore}};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
/// let created = store.create(NewKey::new("acme"), "cli").await.unwrap();
/// assert!(store.get(&created.record.id).await.unwrap().is_some());
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    format: KeyFormat,
    retention: Duration,
    outbox_retention: Duration,
}

/// Configures a [`SqliteStore`]; from [`SqliteStore::builder`].
#[derive(Debug)]
pub struct SqliteStoreBuilder {
    url: String,
    migrate: bool,
    format: KeyFormat,
    max_connections: u32,
    retention: Duration,
    outbox_retention: Duration,
}

impl SqliteStoreBuilder {
    /// Run the embedded migrations on connect (default: yes).
    pub fn migrate(mut self, on: bool) -> Self {
        self.migrate = on;
        self
    }

    /// The format of keys this store issues (default [`KeyFormat::default`]).
    pub fn format(mut self, format: KeyFormat) -> Self {
        self.format = format;
        self
    }

    /// How long the change log keeps a change (default one day); a reader further
    /// behind flushes its whole cache.
    pub fn change_retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// How long the webhook outbox keeps an event, delivered or not (default seven
    /// days); it should outlast the deliverer's retry window.
    pub fn outbox_retention(mut self, retention: Duration) -> Self {
        self.outbox_retention = retention;
        self
    }

    /// The largest number of pooled connections (default 8).
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// Opens (creating the file if missing) and migrates.
    pub async fn connect(self) -> Result<SqliteStore, StoreError> {
        let options = SqliteConnectOptions::from_str(&self.url)
            .map_err(backend)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        // An in-memory database lives as long as its one connection.
        let in_memory = self.url.contains(":memory:") || self.url.contains("mode=memory");
        let pool = SqlitePoolOptions::new()
            .max_connections(if in_memory { 1 } else { self.max_connections })
            .min_connections(u32::from(in_memory))
            .idle_timeout(if in_memory {
                None
            } else {
                Some(Duration::from_secs(600))
            })
            .max_lifetime(if in_memory {
                None
            } else {
                Some(Duration::from_secs(3600))
            })
            .connect_with(options)
            .await
            .map_err(backend)?;
        let store = SqliteStore {
            pool,
            format: self.format,
            retention: self.retention,
            outbox_retention: self.outbox_retention,
        };
        if self.migrate {
            store.migrate().await?;
        }
        Ok(store)
    }
}

impl SqliteStore {
    /// Opens `url` (`sqlite://keys.db`, `sqlite::memory:`, …), creating the file if
    /// missing, and migrates it.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::builder(url).connect().await
    }

    /// A builder, to turn off migrations or set the key format.
    pub fn builder(url: &str) -> SqliteStoreBuilder {
        SqliteStoreBuilder {
            url: url.to_owned(),
            migrate: true,
            format: KeyFormat::default(),
            max_connections: 8,
            retention: DEFAULT_CHANGE_RETENTION,
            outbox_retention: DEFAULT_OUTBOX_RETENTION,
        }
    }

    /// Runs the embedded migrations that have not run yet.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("src/store/migrations/sqlite")
            .run(&self.pool)
            .await
            .map_err(backend)
    }

    /// The connection pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

impl SqliteStore {
    /// SQLite has one writer at a time: sequences are already handed out in commit order.
    async fn serialize_changes_in(_: &mut Transaction<'_, Sqlite>) -> Result<(), StoreError> {
        Ok(())
    }

    /// SQLite has one writer at a time, and write transactions take the write lock when
    /// they begin: a transaction is already alone with every consumer's keys.
    async fn lock_consumer_in(_: &mut Transaction<'_, Sqlite>, _: &str) -> Result<(), StoreError> {
        Ok(())
    }

    /// Readers poll: there is nobody to wake.
    async fn wake_in(_: &mut Transaction<'_, Sqlite>) -> Result<(), StoreError> {
        Ok(())
    }

    async fn subscribe_changes(&self) -> Result<Option<Box<dyn Wakeups>>, StoreError> {
        Ok(None)
    }
}

/// How a write transaction begins. SQLite: take the write lock at once, so that a transaction waits (busy timeout) for
/// another writer instead of failing with "database is locked" when it upgrades from
/// reading to writing.
const BEGIN_WRITE: &str = "BEGIN IMMEDIATE";

/// Whether the webhook outbox is pruned inside each change's transaction (else after it).
const PRUNE_EVENTS_IN_TRANSACTION: bool = true;

super::sql::sql_key_store!(SqliteStore, Sqlite, SqliteRow);
