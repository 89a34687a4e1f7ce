//! Storage: one trait the rest of the service uses, with a PostgreSQL implementation (production,
//! many replicas on one database) and a SQLite one (embedded default). The backend is chosen by
//! the URL scheme. Queries are runtime `query_as` + `bind`, so one binary speaks to both.

#[macro_use]
mod shared;
mod postgres;
mod rows;
mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::{
    Usage, UserId,
    activity::Activity,
    integration::Integration,
    invoice::{Invoice, InvoiceStatus, StoredInvoice},
    subscription::{PaymentProvider, Subscription},
};

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
pub trait Store: BillingRecords + Send + Sync + 'static {
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

    /// The user's invoices, newest first, after `cursor`.
    async fn invoices(
        &self,
        user: &UserId,
        cursor: Option<&InvoiceCursor>,
        limit: u32,
    ) -> Result<Vec<StoredInvoice>, StoreError>;

    /// Starts a write transaction for billing changes. On PostgreSQL, rows are locked as they are
    /// read; on SQLite the transaction takes the database's single write lock up front
    /// (`BEGIN IMMEDIATE`). Dropping it without `commit` rolls everything back.
    async fn begin(&self) -> Result<Box<dyn BillingTx>, StoreError>;

    /// Closes the pool, waiting for connections in use to be returned.
    async fn close(&self);
}

/// Billing reads and single writes with the same SQL on both backends (`shared.rs`).
#[async_trait]
pub trait BillingRecords: Send + Sync {
    /// The user's customer id at `provider`, if one was created.
    async fn billing_customer(
        &self,
        user: &UserId,
        provider: PaymentProvider,
    ) -> Result<Option<String>, StoreError>;

    /// Remembers the user's customer id at `provider` and returns the one stored: when two
    /// requests race, the first one stored wins and both get it.
    async fn save_billing_customer(
        &self,
        user: &UserId,
        provider: PaymentProvider,
        customer_id: &str,
    ) -> Result<String, StoreError>;

    /// Whose customer this is.
    async fn user_for_customer(
        &self,
        provider: PaymentProvider,
        customer_id: &str,
    ) -> Result<Option<UserId>, StoreError>;

    /// Whether the webhook event was already processed (a fast path; the inbox insert inside the
    /// processing transaction is what guarantees exactly once).
    async fn webhook_recorded(
        &self,
        provider: PaymentProvider,
        event_id: &str,
    ) -> Result<bool, StoreError>;

    /// The user's activity log, newest first.
    async fn activity(&self, user: &UserId, limit: u32) -> Result<Vec<ActivityRecord>, StoreError>;
}

/// Billing writes that must happen together or not at all: a webhook's inbox entry, the state
/// it changes and its activity entries commit in one transaction.
#[async_trait]
pub trait BillingTx: Send {
    /// Records a webhook event; `false` when it was already recorded (a duplicate delivery).
    /// Concurrent deliveries of one event wait on each other here: only one can record it.
    async fn record_webhook(
        &mut self,
        provider: PaymentProvider,
        event_id: &str,
        event_type: &str,
    ) -> Result<bool, StoreError>;

    /// The user's subscription, locked until commit (created FREE if the user has none).
    async fn lock_subscription(&mut self, user: &UserId) -> Result<Subscription, StoreError>;

    /// Stores the user's subscription (which must have been locked).
    async fn save_subscription(&mut self, subscription: &Subscription) -> Result<(), StoreError>;

    /// Inserts or updates the invoice (one row per provider invoice) and returns the status it
    /// had before, if it was known.
    async fn save_invoice(
        &mut self,
        invoice: &Invoice,
    ) -> Result<Option<InvoiceStatus>, StoreError>;

    /// Appends an activity-log entry.
    async fn log_activity(&mut self, user: &UserId, activity: &Activity) -> Result<(), StoreError>;

    /// Makes every change of this transaction visible.
    async fn commit(self: Box<Self>) -> Result<(), StoreError>;
}

/// Where a page of invoices ends: the next page starts after this invoice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvoiceCursor {
    pub created_at: DateTime<Utc>,
    pub id: String,
}

/// A stored activity-log entry.
#[derive(Debug, Clone, PartialEq)]
pub struct ActivityRecord {
    pub kind: String,
    pub message: String,
    pub details: serde_json::Value,
    pub created_at: DateTime<Utc>,
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
