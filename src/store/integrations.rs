//! The integrations' storage: the `IntegrationStore` trait (SQL in `integration_sql.rs`, the
//! same on both backends) and the types its methods take.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::StoreError;
use crate::domain::{
    UserId,
    activity::Activity,
    catalogue::ProviderId,
    contact::Contact,
    integration::{Integration, IntegrationStatus},
    sync_job::{Direction, JobProgress, JobState, SyncJob},
};

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
