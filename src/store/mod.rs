//! Storage: one trait the rest of the service uses, with a PostgreSQL implementation (production,
//! many replicas on one database) and a SQLite one (embedded default). The backend is chosen by
//! the URL scheme. Queries are runtime `query_as` + `bind`, so one binary speaks to both.

#[macro_use]
mod shared;
#[macro_use]
pub mod contact_import;
#[macro_use]
pub(crate) mod dunning_sql;
#[macro_use]
mod integration_sql;
mod integrations;
#[macro_use]
mod overage_sql;
#[macro_use]
mod provider_webhook_sql;
#[macro_use]
mod health_sql;
#[macro_use]
mod webhook_sql;
#[macro_use]
pub(crate) mod mpesa_sql;
#[macro_use]
mod sync_sql;
#[macro_use]
pub(crate) mod user_data_sql;
pub mod dunning;
pub mod migrations;
mod mobile_payments;
pub mod overage;
mod postgres;
pub mod provider_webhooks;
mod rows;
mod sqlite;
mod sqlite_reads;
pub mod sync_queue;
mod user_data;
mod webhooks;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::{
    Usage, UserId,
    activity::Activity,
    integration::Integration,
    invoice::{Invoice, InvoiceStatus, StoredInvoice},
    prepaid::{MobilePayment, PrepaidPeriod},
    subscription::{PaymentProvider, Subscription},
};

pub use contact_import::ContactImport;
pub use dunning::{ClaimedDunningEmail, DunningOutbox, NewDunningEmail};
pub use integrations::{IntegrationStore, JobEnd, NewSyncJob, OAuthState};
pub use mobile_payments::{MobilePayments, NewMobilePayment, Settled};
pub use overage::{ExtraCardMonth, OverageStore, OverageSubscriber};
pub use postgres::PgStore;
pub use provider_webhooks::{
    HealthStore, NewProviderEvent, ProviderEvent, ProviderWebhookStore, WebhookRegistration,
};
pub use sqlite::SqliteStore;
pub use sync_queue::{BindOutcome, JobCursor, Pruned, SyncQueue};
pub use user_data::UserDataStore;
pub use webhooks::{FailedEvent, NewInboxEvent, OverdueSubscription, PendingEvent, WebhookStore};

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

impl StoreError {
    /// Whether trying again later can succeed: the database was unreachable, busy or locked
    /// (SQLite's "database is locked"), or a transaction lost a serialisation race.
    pub fn is_temporary(&self) -> bool {
        match self {
            Self::Database(
                sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::WorkerCrashed,
            ) => true,
            Self::Database(sqlx::Error::Database(e)) => {
                // SQLite: SQLITE_BUSY (5) and SQLITE_LOCKED (6) with their extended codes;
                // PostgreSQL: serialization failure, deadlock, shutdown, too many connections.
                matches!(
                    e.code().as_deref(),
                    Some("5" | "6" | "261" | "262" | "517" | "40001" | "40P01" | "57P01" | "53300")
                ) || e.message().contains("database is locked")
            }
            _ => false,
        }
    }
}

/// Everything the service reads and writes. Every query that returns user data takes the user id,
/// so one user's rows can never be read through another user's request.
#[async_trait]
pub trait Store:
    BillingRecords
    + WebhookStore
    + MobilePayments
    + DunningOutbox
    + OverageStore
    + IntegrationStore
    + SyncQueue
    + ContactImport
    + UserDataStore
    + ProviderWebhookStore
    + HealthStore
    + Send
    + Sync
    + 'static
{
    /// Which database this is.
    fn backend(&self) -> Backend;

    /// Applies the embedded migrations of this backend.
    async fn migrate(&self) -> Result<(), StoreError>;

    /// Checks that the database answers (for `/readyz`).
    async fn ping(&self) -> Result<(), StoreError>;

    /// The user's stored subscription, if they ever started paying.
    async fn subscription(&self, user: &UserId) -> Result<Option<Subscription>, StoreError>;

    /// How many cards and contacts the user has (counts the database keeps: one row read).
    async fn usage(&self, user: &UserId) -> Result<Usage, StoreError>;

    /// The user's stored subscription and counts, in one statement: the limit check's read.
    async fn standing(&self, user: &UserId) -> Result<(Option<Subscription>, Usage), StoreError>;

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

    /// Takes the user's subscription-change lock until `until` unless another holder's lock is
    /// still running; `true` when taken. RPCs that change a subscription at the provider hold
    /// it across the provider call instead of a database transaction.
    async fn lock_subscription_changes(
        &self,
        user: &UserId,
        owner: &str,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Extends the lock to `until` if `owner` still holds it; `false` if it does not.
    async fn extend_subscription_lock(
        &self,
        user: &UserId,
        owner: &str,
        until: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Releases the lock if `owner` still holds it.
    async fn unlock_subscription_changes(
        &self,
        user: &UserId,
        owner: &str,
    ) -> Result<(), StoreError>;

    /// The user's checkout sessions, oldest first, each with whether it is still open.
    async fn checkouts(&self, user: &UserId) -> Result<Vec<(String, bool)>, StoreError>;

    /// The user's checkout sessions (those still open, or all of them), with their provider,
    /// oldest first.
    async fn open_checkouts(
        &self,
        user: &UserId,
        only_open: bool,
    ) -> Result<Vec<(PaymentProvider, String)>, StoreError>;

    /// The user's checkout sessions at `provider` opened after `since` (any state).
    async fn checkouts_since(
        &self,
        user: &UserId,
        provider: PaymentProvider,
        since: DateTime<Utc>,
    ) -> Result<Vec<String>, StoreError>;

    /// Remembers a checkout session opened for the user (a replayed one is kept once).
    async fn save_checkout(
        &self,
        user: &UserId,
        provider: PaymentProvider,
        id: &str,
        url: &str,
    ) -> Result<(), StoreError>;

    /// Marks a checkout session expired.
    async fn checkout_expired(&self, id: &str) -> Result<(), StoreError>;

    /// One page of the user's activity log, newest first: entries before the entry id `before`.
    async fn activity(
        &self,
        user: &UserId,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<ActivityRecord>, StoreError>;
}

/// Billing writes that must happen together or not at all: a webhook's inbox entry, the state
/// it changes and its activity entries commit in one transaction.
#[async_trait]
pub trait BillingTx: Send {
    /// Marks a pending inbox event done with its outcome; `false` when it is no longer pending
    /// (another processor applied it): the caller must then roll back.
    async fn finish_event(
        &mut self,
        provider: PaymentProvider,
        event_id: &str,
        outcome: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// The user's subscription, locked until commit (created FREE if the user has none).
    async fn lock_subscription(&mut self, user: &UserId) -> Result<Subscription, StoreError>;

    /// Stores the user's subscription (which must have been locked).
    async fn save_subscription(&mut self, subscription: &Subscription) -> Result<(), StoreError>;

    /// The stored invoice's owner, status and freshness, locked until commit.
    async fn invoice_state(
        &mut self,
        provider: PaymentProvider,
        invoice_id: &str,
    ) -> Result<Option<InvoiceState>, StoreError>;

    /// Inserts or updates the invoice (one row per provider invoice; never another user's),
    /// known to be current at `as_of`.
    async fn save_invoice(
        &mut self,
        invoice: &Invoice,
        as_of: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// Forgets a customer the provider deleted: the user's next checkout creates a new one.
    async fn forget_customer(
        &mut self,
        provider: PaymentProvider,
        customer_id: &str,
    ) -> Result<(), StoreError>;

    /// Appends an activity-log entry.
    async fn log_activity(&mut self, user: &UserId, activity: &Activity) -> Result<(), StoreError>;

    /// Moves a pending M-Pesa request to paid or failed; `None` when it was not pending (settled
    /// before: the effects must not be applied twice).
    async fn settle_mobile_payment(
        &mut self,
        request_id: &str,
        settled: &Settled<'_>,
    ) -> Result<Option<MobilePayment>, StoreError>;

    /// The periods the user's paid M-Pesa payments bought that end after `after`, oldest first.
    async fn prepaid_periods(
        &mut self,
        user: &UserId,
        after: DateTime<Utc>,
    ) -> Result<Vec<PrepaidPeriod>, StoreError>;

    /// Records the period a paid M-Pesa payment bought.
    async fn save_prepaid_period(&mut self, period: &PrepaidPeriod) -> Result<(), StoreError>;

    /// Writes dunning emails to the outbox; an invoice's step already there stays as it is.
    /// Returns how many were new.
    async fn schedule_dunning(&mut self, emails: &[NewDunningEmail<'_>])
    -> Result<u64, StoreError>;

    /// Calls off the invoice's emails not sent yet (it was paid, voided or written off).
    async fn cancel_dunning(
        &mut self,
        provider: PaymentProvider,
        invoice_id: &str,
    ) -> Result<u64, StoreError>;

    /// Makes every change of this transaction visible.
    async fn commit(self: Box<Self>) -> Result<(), StoreError>;
}

/// A stored invoice's owner, status and freshness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvoiceState {
    pub user_id: UserId,
    pub status: InvoiceStatus,
    pub state_as_of: Option<DateTime<Utc>>,
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
    /// Increasing with time: the cursor of a page.
    pub id: i64,
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
