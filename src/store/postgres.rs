//! [`PostgresStore`]: keys in PostgreSQL (feature `postgres`), shared by many instances.

use std::str::FromStr;
use std::time::{Duration, SystemTime};

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Row, Transaction};

use super::codec::{
    limits_from_sql, limits_to_sql, metadata_from_sql, metadata_to_sql, scopes_from_sql,
    scopes_to_sql, time_from_sql, time_to_sql,
};
use super::{
    AuditEntry, AuditEvent, CreatedKey, KeyStore, ListQuery, NewKey, Page, StoreError, Usage,
    UsageDelta, cursor_of, parse_cursor,
};
use crate::key::{KeyFormat, KeyHash};
use crate::record::{KeyRecord, Scopes, generate_key_id};
use crate::resolve::{KeyResolver, ResolveError};

/// Keys, usage and the audit log in PostgreSQL, through sqlx: the production store,
/// shared by every instance of a service.
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
}

/// Configures a [`PostgresStore`]; from [`PostgresStore::builder`].
#[derive(Debug)]
pub struct PostgresStoreBuilder {
    url: String,
    options: Option<PgConnectOptions>,
    migrate: bool,
    format: KeyFormat,
    max_connections: u32,
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

    /// The largest number of pooled connections (default 8).
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// Connects and migrates.
    pub async fn connect(self) -> Result<PostgresStore, StoreError> {
        let options = match self.options {
            Some(options) => options,
            None => PgConnectOptions::from_str(&self.url).map_err(backend)?,
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
        };
        if self.migrate {
            store.migrate().await?;
        }
        Ok(store)
    }
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user:password@host/database`) and migrates.
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

super::sql::sql_key_store!(PostgresStore, Postgres, PgRow);
