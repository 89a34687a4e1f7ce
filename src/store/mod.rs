//! Storage: one trait the rest of the service uses, with a PostgreSQL implementation (production,
//! many replicas on one database) and a SQLite one (embedded default). The backend is chosen by
//! the URL scheme. Queries are runtime `query_as` + `bind`, so one binary speaks to both.

mod postgres;
mod rows;
mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;

use crate::domain::{Usage, UserId, integration::Integration, subscription::Subscription};

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// Which database a store talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// A storage failure. The message is safe to log; the source carries the cause chain.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database URL scheme (expected postgres://, postgresql:// or sqlite:)")]
    UnsupportedUrl,
    #[error("stored row is invalid: {0}")]
    Corrupt(String),
}

/// Everything the service reads and writes. Every query that returns user data takes the user id,
/// so one user's rows can never be read through another user's request.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Which database this is.
    fn backend(&self) -> Backend;

    /// Applies the embedded migrations of this backend.
    async fn migrate(&self) -> Result<(), StoreError>;

    /// Checks that the database answers (for `/readyz`).
    async fn ping(&self) -> Result<(), StoreError>;

    /// The user's stored subscription, if they ever started paying.
    async fn subscription(&self, user: &UserId) -> Result<Option<Subscription>, StoreError>;

    /// How many cards and contacts the user has.
    async fn usage(&self, user: &UserId) -> Result<Usage, StoreError>;

    /// The user's integrations (without credentials), ordered by provider.
    async fn integrations(&self, user: &UserId) -> Result<Vec<Integration>, StoreError>;

    /// Closes the pool, waiting for connections in use to be returned.
    async fn close(&self);
}

/// Connects to the database named by `url` and returns the matching store (not yet migrated).
pub async fn connect(url: &str, max_connections: u32) -> Result<Arc<dyn Store>, StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PgStore::connect(url, max_connections).await?))
    } else if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::connect(url, max_connections).await?))
    } else {
        Err(StoreError::UnsupportedUrl)
    }
}
