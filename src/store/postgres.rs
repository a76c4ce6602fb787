//! [`PostgresStore`]: keys in PostgreSQL (feature `postgres`), shared by many instances.

use std::fmt;
use std::time::{Duration, SystemTime};

use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Row, Transaction};

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

/// Keys, usage and the audit log in PostgreSQL, through sqlx: the production store,
/// shared by every instance of a service.
///
/// Its [`ChangeFeed`] wakes readers with `LISTEN/NOTIFY` (channel
/// `tower_api_key_changes`, on a connection of its own named `tower-api-key-changes`
/// in `pg_stat_activity`); writers of the change log take a transaction-scoped advisory
/// lock, so that its sequences become visible in order.
///
/// **TLS** as libpq users know it, from the URL (or `PGSSLMODE`, `PGSSLROOTCERT`, …):
/// `sslmode=disable|prefer|require|verify-ca|verify-full` (default `prefer`: TLS when
/// the server offers it, unchecked), `sslrootcert=<file>` (a CA to trust besides the
/// system's roots; with `require` it is checked, as `verify-ca`), `sslrootcert=system`
/// (the system's roots, `verify-full` by default), `sslcert=<file>&sslkey=<file>` (a
/// client certificate). Through rustls (ring), with the system's root certificates; the
/// change feed's `LISTEN` connection uses the same settings. Two differences from libpq:
/// a `sslrootcert` file adds to the system's roots instead of replacing them, and
/// `verify-ca` checks the server's name too, as `verify-full` does (sqlx 0.8's rustls
/// verifier misses rustls 0.23.24's name-mismatch error: stricter, never weaker).
///
/// The schema's migrations are embedded in the crate and run on connect (unless turned
/// off with [`PostgresStoreBuilder::migrate`]); a database made by an older version is
/// migrated forward. The hash column is unique and indexed; times are stored as UTC
/// Unix nanoseconds, so records round-trip exactly.
///
/// ```no_run
/// use tower_api_key::{KeyStore, store::{NewKey, PostgresStore}};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let store = PostgresStore::connect("postgres://keys@localhost/keys").await.unwrap();
/// let created = store.create(NewKey::new("acme"), "cli").await.unwrap();
/// # let _ = created;
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct PostgresStore {
    pool: PgPool,
    format: KeyFormat,
    retention: Duration,
    outbox_retention: Duration,
}

/// Configures a [`PostgresStore`]; from [`PostgresStore::builder`].
pub struct PostgresStoreBuilder {
    url: String,
    options: Option<PgConnectOptions>,
    migrate: bool,
    format: KeyFormat,
    max_connections: u32,
    retention: Duration,
    outbox_retention: Duration,
}

impl fmt::Debug for PostgresStoreBuilder {
    // The URL and the options may hold a password: neither is shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStoreBuilder")
            .field("migrate", &self.migrate)
            .field("format", &self.format)
            .field("max_connections", &self.max_connections)
            .field("retention", &self.retention)
            .field("outbox_retention", &self.outbox_retention)
            .finish_non_exhaustive()
    }
}

impl PostgresStoreBuilder {
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

    /// Connects and migrates.
    pub async fn connect(self) -> Result<PostgresStore, StoreError> {
        let options = match self.options {
            Some(options) => options,
            None => super::pg_tls::connect_options(&self.url)
                .map_err(|e| StoreError::Backend(e.into()))?,
        };
        let pool = PgPoolOptions::new()
            .max_connections(self.max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await
            .map_err(backend)?;
        let store = PostgresStore {
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

impl PostgresStore {
    /// Connects to `url` (`postgres://user:password@host/database`, with
    /// `?sslmode=verify-full&sslrootcert=…` for TLS: see [`PostgresStore`]) and migrates.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::builder(url).connect().await
    }

    /// A builder, to turn off migrations or set the key format.
    pub fn builder(url: &str) -> PostgresStoreBuilder {
        PostgresStoreBuilder {
            url: url.to_owned(),
            options: None,
            migrate: true,
            format: KeyFormat::default(),
            max_connections: 8,
            retention: DEFAULT_CHANGE_RETENTION,
            outbox_retention: DEFAULT_OUTBOX_RETENTION,
        }
    }

    /// A builder from connection options instead of a URL.
    pub fn builder_with(options: PgConnectOptions) -> PostgresStoreBuilder {
        PostgresStoreBuilder {
            url: String::new(),
            options: Some(options),
            migrate: true,
            format: KeyFormat::default(),
            max_connections: 8,
            retention: DEFAULT_CHANGE_RETENTION,
            outbox_retention: DEFAULT_OUTBOX_RETENTION,
        }
    }

    /// Runs the embedded migrations that have not run yet.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("src/store/migrations/postgres")
            .run(&self.pool)
            .await
            .map_err(backend)
    }

    /// The connection pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// The channel the change log's writers notify.
const CHANGES_CHANNEL: &str = "tower_api_key_changes";
/// The advisory lock that orders the change log's writers (an arbitrary constant).
const CHANGES_LOCK: i64 = 0x7461_6b5f_6368_6e67;

/// The first key of the advisory locks on consumers (an arbitrary constant); the second
/// is [`consumer_lock`].
const CONSUMER_LOCKS: i32 = 0x7461_6b63;

/// A fixed 32-bit hash (FNV-1a) of a consumer's name, for its advisory lock.
fn consumer_lock(consumer: &str) -> i32 {
    let hash = consumer.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    i32::from_ne_bytes(hash.to_ne_bytes())
}

impl PostgresStore {
    /// Holds the change log's lock until the transaction ends. Without it, a writer that
    /// took sequence 11 could commit before one holding 10, and a reader that saw 11
    /// would never read 10.
    async fn serialize_changes_in(tx: &mut Transaction<'_, Postgres>) -> Result<(), StoreError> {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(CHANGES_LOCK)
            .execute(&mut **tx)
            .await
            .map_err(backend)?;
        Ok(())
    }

    /// Holds a lock on `consumer`'s keys until the transaction ends (a transaction-scoped
    /// advisory lock on a hash of the name: two consumers whose hashes collide only wait
    /// for each other). Taken before anything is read, so that a transaction that waited
    /// reads what the one before it committed.
    async fn lock_consumer_in(
        tx: &mut Transaction<'_, Postgres>,
        consumer: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
            .bind(CONSUMER_LOCKS)
            .bind(consumer_lock(consumer))
            .execute(&mut **tx)
            .await
            .map_err(backend)?;
        Ok(())
    }

    /// Notifies listeners; PostgreSQL delivers it when (and only if) the transaction
    /// commits.
    async fn wake_in(tx: &mut Transaction<'_, Postgres>) -> Result<(), StoreError> {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(CHANGES_CHANNEL)
            .execute(&mut **tx)
            .await
            .map_err(backend)?;
        Ok(())
    }

    /// A `LISTEN` on a connection of its own (not one of the pool's, which are for
    /// queries).
    async fn subscribe_changes(&self) -> Result<Option<Box<dyn Wakeups>>, StoreError> {
        let options = (*self.pool.connect_options())
            .clone()
            .application_name("tower-api-key-changes");
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await
            .map_err(backend)?;
        let mut listener = PgListener::connect_with(&pool).await.map_err(backend)?;
        // A lost connection ends this subscription; the reader subscribes again and
        // replays from the log.
        listener.eager_reconnect(false);
        listener.listen(CHANGES_CHANNEL).await.map_err(backend)?;
        Ok(Some(Box::new(PgWakeups {
            listener,
            _pool: pool,
        })))
    }
}

/// Notifications on [`CHANGES_CHANNEL`].
struct PgWakeups {
    listener: PgListener,
    _pool: PgPool,
}

#[async_trait::async_trait]
impl Wakeups for PgWakeups {
    async fn next(&mut self) -> bool {
        matches!(self.listener.try_recv().await, Ok(Some(_)))
    }
}

/// How a write transaction begins. PostgreSQL: an ordinary transaction (rows are locked as they are written).
const BEGIN_WRITE: &str = "BEGIN";

/// Whether the webhook outbox is pruned inside each change's transaction (else after it).
const PRUNE_EVENTS_IN_TRANSACTION: bool = false;

super::sql::sql_key_store!(PostgresStore, Postgres, PgRow);
