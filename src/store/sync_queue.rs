//! What scheduled, incremental and user-managed syncs need from storage, beside the job queue of
//! `IntegrationStore`: contacts in push order after a watermark, the recurring schedule, job
//! pages and cancellation, retention, and browser-bound OAuth states.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::StoreError;
use crate::domain::{
    UserId,
    catalogue::ProviderId,
    contact::Contact,
    integration::Integration,
    sync_job::{Direction, PushKey, SyncJob},
};

/// Where a page of jobs ends: the next page starts after this job (newest first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobCursor {
    pub created_at: DateTime<Utc>,
    pub id: String,
}

/// What one pruning pass deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pruned {
    pub jobs: u64,
    pub activity: u64,
}

#[async_trait]
pub trait SyncQueue: Send + Sync {
    /// The user's contacts after `after` in push order (change number, then id), with their
    /// keys.
    async fn contacts_changed(
        &self,
        user: &UserId,
        after: &PushKey,
        limit: u32,
    ) -> Result<Vec<(PushKey, Contact)>, StoreError>;

    /// The change number from which a contact change may still be uncommitted (every change
    /// numbered below it is committed and visible). SQLite numbers changes in commit order, so
    /// there is no such number (`i64::MAX`); PostgreSQL's is its snapshot's oldest running
    /// transaction.
    async fn push_horizon(&self) -> Result<i64, StoreError>;

    /// Keeps contacts a provider refused for a passing reason (contact id, reason), to be sent
    /// again by the next push.
    async fn hold_for_retry(
        &self,
        integration_id: &str,
        contacts: &[(String, String)],
    ) -> Result<(), StoreError>;

    /// Moves the held contacts of the integration after every watermark (their change numbers
    /// are renewed, their values untouched) and forgets them; how many there were.
    async fn requeue_retries(&self, integration_id: &str, user: &UserId)
    -> Result<u64, StoreError>;

    /// Forgets what the integration's destination holds (its watermark and the fingerprints of
    /// the contacts pushed there): the destination changed, so the next push sends everything.
    async fn forget_destination(&self, integration_id: &str) -> Result<(), StoreError>;

    /// The integration's destination epoch: moved on by every [`Self::forget_destination`]. A
    /// push remembers what it sent (fingerprints, watermark) only under the epoch it began in.
    async fn destination_epoch(&self, integration_id: &str) -> Result<i64, StoreError>;

    /// How many of the user's contacts lie after `after` in push order.
    async fn contacts_changed_count(
        &self,
        user: &UserId,
        after: &PushKey,
    ) -> Result<u64, StoreError>;

    /// The key of the user's last contact in push order.
    async fn last_push_key(&self, user: &UserId) -> Result<Option<PushKey>, StoreError>;

    /// The integration's watermark: where its next incremental push starts.
    async fn push_watermark(&self, integration_id: &str) -> Result<Option<PushKey>, StoreError>;

    /// Moves the watermark forward to `key` (never back), unless the destination changed since
    /// `epoch`.
    async fn advance_push_watermark(
        &self,
        integration_id: &str,
        key: &PushKey,
        epoch: i64,
    ) -> Result<(), StoreError>;

    /// Sets the recurring schedule: `None` stops automatic syncs.
    async fn set_sync_schedule(
        &self,
        integration_id: &str,
        interval_seconds: Option<i64>,
        direction: Direction,
        next: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError>;

    /// When the next automatic sync is due (kept only while the integration has an interval).
    async fn set_next_sync(
        &self,
        integration_id: &str,
        next: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// Replaces the settings of the user's integration; `None` when it is not connected.
    async fn update_integration_settings(
        &self,
        user: &UserId,
        provider: ProviderId,
        settings: &BTreeMap<String, String>,
    ) -> Result<Option<Integration>, StoreError>;

    /// Queues a sync (in the integration's recurring direction) for up to `limit` active
    /// integrations whose `next_sync_at` has come, and moves their `next_sync_at` one interval
    /// on. An integration with a job already queued or running gets no second one. Safe on any
    /// number of replicas at once. Returns how many integrations were due.
    async fn schedule_due_syncs(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        max_attempts: u32,
    ) -> Result<u64, StoreError>;

    /// A page of the user's jobs of one integration, newest first, after `before`.
    async fn sync_jobs_page(
        &self,
        user: &UserId,
        provider: ProviderId,
        before: Option<&JobCursor>,
        limit: u32,
    ) -> Result<Vec<SyncJob>, StoreError>;

    /// Cancels the user's job if it is queued or running; `false` otherwise. A worker running
    /// it loses it at its next checkpoint.
    async fn cancel_sync_job(
        &self,
        user: &UserId,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Deletes up to `batch` finished jobs and `batch` activity entries older than `before`.
    async fn prune(&self, before: DateTime<Utc>, batch: u32) -> Result<Pruned, StoreError>;

    /// Binds a started OAuth flow to a browser, once: stores the hash of the browser's cookie
    /// and returns the provider's authorization URL. `None` when the state is unknown,
    /// expired or already bound.
    async fn bind_oauth_browser(
        &self,
        state_hash: &str,
        user: &UserId,
        browser_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<BindOutcome, StoreError>;

    /// The fingerprints recorded for `contact_ids` at the integration's provider.
    async fn provider_fingerprints(
        &self,
        integration_id: &str,
        contact_ids: &[&str],
    ) -> Result<std::collections::HashMap<String, String>, StoreError>;

    /// Records (contact id, fingerprint) pairs as what the integration's provider now holds.
    /// `false` (nothing saved) when the destination changed since `epoch`.
    async fn save_provider_fingerprints(
        &self,
        integration_id: &str,
        entries: &[(String, String)],
        epoch: i64,
    ) -> Result<bool, StoreError>;

    /// Job changes in this process's view: ids of jobs written (`*` for many at once).
    fn job_changes(&self) -> tokio::sync::broadcast::Receiver<String>;
}

/// What binding an OAuth flow to a browser came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindOutcome {
    /// Bound: the provider's authorization URL.
    Bound(String),
    /// The flow is open but another user's: nothing bound.
    NotYours,
    /// No open flow has this state (unknown, expired, or bound already).
    Unknown,
}
