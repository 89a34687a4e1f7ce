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

use std::{collections::BTreeMap, sync::Arc};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::{
    Usage, UserId,
    activity::Activity,
    catalogue::ProviderId,
    contact::Contact,
    integration::{Integration, IntegrationStatus},
    invoice::{Invoice, InvoiceStatus, StoredInvoice},
    prepaid::{MobilePayment, PrepaidPeriod},
    subscription::{PaymentProvider, Subscription},
    sync_job::{Direction, JobProgress, JobState, SyncJob},
};

pub use contact_import::ContactImport;
pub use dunning::{ClaimedDunningEmail, DunningOutbox, NewDunningEmail};
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

/// Integrations, their sync jobs and the contacts they push, with the same SQL on both backends
/// (`integration_sql.rs`). Job writes by a worker name the worker: they apply only while it
/// still holds the job's lease, so a job taken over by another worker cannot be written twice.
#[async_trait]
pub trait IntegrationStore: Send + Sync {
    /// The user's integration with `provider`, if connected.
    async fn integration(
        &self,
        user: &UserId,
        provider: ProviderId,
    ) -> Result<Option<Integration>, StoreError>;

    /// An integration by id (for workers; never answer a user with it).
    async fn integration_by_id(&self, id: &str) -> Result<Option<Integration>, StoreError>;

    /// The vault envelope of an integration's credentials.
    async fn sealed_credentials(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Connects, or reconnects (one integration per user and provider): new credentials and
    /// settings, status ACTIVE, last error cleared.
    async fn save_integration(
        &self,
        user: &UserId,
        provider: ProviderId,
        sealed: &[u8],
        settings: &BTreeMap<String, String>,
    ) -> Result<Integration, StoreError>;

    /// Deletes the integration, its credentials and its jobs; `false` if it did not exist.
    async fn delete_integration(
        &self,
        user: &UserId,
        provider: ProviderId,
    ) -> Result<bool, StoreError>;

    async fn set_integration_health(
        &self,
        id: &str,
        status: IntegrationStatus,
        last_error: Option<&str>,
    ) -> Result<(), StoreError>;

    /// Records a finished sync (and clears the last error).
    async fn record_sync_time(&self, id: &str, at: DateTime<Utc>) -> Result<(), StoreError>;

    /// Appends an activity-log entry on its own.
    async fn append_activity(&self, user: &UserId, activity: &Activity) -> Result<(), StoreError>;

    async fn contact_count(&self, user: &UserId) -> Result<u64, StoreError>;

    /// The user's contacts after the contact id `after`, in id order: one page of a sync.
    async fn contacts_after(
        &self,
        user: &UserId,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Contact>, StoreError>;

    /// Queues a job, or returns the integration's queued or running one; `true` when new.
    async fn enqueue_sync(&self, job: &NewSyncJob<'_>) -> Result<(SyncJob, bool), StoreError>;

    /// One of the user's jobs.
    async fn sync_job(&self, user: &UserId, id: &str) -> Result<Option<SyncJob>, StoreError>;

    /// Moves a queued, never-attempted job's next attempt to `now` (if later) and sets its
    /// direction; `false` when the job has started meanwhile.
    async fn expedite_sync(
        &self,
        id: &str,
        now: DateTime<Utc>,
        direction: Direction,
        full: bool,
    ) -> Result<bool, StoreError>;

    /// Takes the next due job (or one whose lease expired), counting an attempt.
    async fn claim_sync_job(
        &self,
        worker: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Option<SyncJob>, StoreError>;

    /// `false` when the worker no longer holds the job.
    /// Lets go of a job this worker stopped working on after it was canceled: until then, no
    /// other job of its integration is claimed (a canceled job's worker may still be talking
    /// to the provider).
    async fn release_stopped_job(&self, id: &str, worker: &str) -> Result<(), StoreError>;

    async fn extend_lease(
        &self,
        id: &str,
        worker: &str,
        lease_until: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Saves a checkpoint; `false` when the worker no longer holds the job.
    async fn save_progress(
        &self,
        id: &str,
        worker: &str,
        progress: &JobProgress,
    ) -> Result<bool, StoreError>;

    /// The checkpoint of the integration's job before `job_id` (the newest other one), if any:
    /// a batch it left on its way (canceled or failed mid-send) is sent again by the next job.
    async fn previous_job_checkpoint(
        &self,
        integration_id: &str,
        job_id: &str,
    ) -> Result<Option<String>, StoreError>;

    /// Saves only the checkpoint text (a batch about to be sent), leaving the counts and the
    /// attempts in a row as they are (nothing was saved yet); `false` when the worker no longer
    /// holds the job.
    async fn save_checkpoint(
        &self,
        id: &str,
        worker: &str,
        checkpoint: &str,
    ) -> Result<bool, StoreError>;

    /// Finishes or re-queues a job; `false` when the worker no longer holds it.
    async fn end_sync_job(
        &self,
        id: &str,
        worker: &str,
        end: &JobEnd<'_>,
    ) -> Result<bool, StoreError>;

    /// Integration ids and envelopes in id order after `after` (for key rotation).
    async fn sealed_credentials_page(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError>;

    /// Replaces an envelope only if it is still `old` (a concurrent reconnect wins).
    async fn replace_sealed_credentials(
        &self,
        id: &str,
        old: &[u8],
        new: &[u8],
    ) -> Result<bool, StoreError>;

    /// Stores a started OAuth flow (and drops expired ones).
    async fn save_oauth_state(
        &self,
        state: &OAuthState,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// Takes (deletes and returns) a started flow, so a state works once. With `user`, only
    /// that user's flow is taken: another user's state is left alone and `None` returned.
    async fn take_oauth_state(
        &self,
        state_hash: &str,
        user: Option<&UserId>,
        browser_hash: Option<&str>,
    ) -> Result<Option<OAuthState>, StoreError>;

    /// Takes the integration's token-refresh lock until `until` unless another holder's lock
    /// is still running; `true` when taken.
    async fn lock_token_refresh(
        &self,
        id: &str,
        owner: &str,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Releases the lock if `owner` still holds it.
    async fn unlock_token_refresh(&self, id: &str, owner: &str) -> Result<(), StoreError>;
}

/// A started OAuth flow, kept until the provider sends the user back (or it expires).
#[derive(Debug, Clone)]
pub struct OAuthState {
    /// SHA-256 of the state (the state itself is only in the authorization URL).
    pub state_hash: String,
    pub user: UserId,
    pub provider: ProviderId,
    /// The PKCE verifier, sealed by the vault.
    pub sealed_verifier: Option<Vec<u8>>,
    pub redirect_after: String,
    pub settings: BTreeMap<String, String>,
    pub expires_at: DateTime<Utc>,
    /// The provider's authorization URL, which the sidecar's start route redirects to (not
    /// read back by `take_oauth_state`).
    pub authorize_url: String,
}

/// A job to queue.
#[derive(Debug, Clone)]
pub struct NewSyncJob<'a> {
    pub integration_id: &'a str,
    pub user: &'a UserId,
    pub direction: Direction,
    pub max_attempts: u32,
    /// When it may start.
    pub due: DateTime<Utc>,
    pub now: DateTime<Utc>,
    /// Push every contact, not only those changed since the watermark.
    pub full: bool,
}

/// How a worker lets go of a job.
#[derive(Debug, Clone)]
pub enum JobEnd<'a> {
    /// A final state.
    Finished {
        state: JobState,
        at: DateTime<Utc>,
        error: Option<&'a str>,
    },
    /// Back to the queue until `at`. `count_attempt: false` gives the attempt back (the job
    /// was parked for a rate limit or stopped by a shutdown, not failed).
    Retry {
        at: DateTime<Utc>,
        error: Option<&'a str>,
        count_attempt: bool,
        /// A rate limit parked it: counted, so the wait can grow and the job give up.
        rate_limited: bool,
    },
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
