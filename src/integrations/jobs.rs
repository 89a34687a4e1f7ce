//! Sync jobs as the user sees them: asking for a sync (one-off, never changing the recurring
//! direction), reading, listing and canceling jobs.

use chrono::{DateTime, Utc};

use super::{IntegrationError, Integrations, not_connected};
use crate::{
    domain::{
        UserId,
        catalogue::ProviderId,
        integration::{Integration, IntegrationStatus},
        sync_job::{Direction, SyncJob},
    },
    store::{JobCursor, NewSyncJob, StoreError},
};

/// Most jobs one ListSyncJobs page holds.
pub const MAX_JOB_PAGE: u32 = 100;

impl Integrations {
    /// Queues a sync, or returns the one already queued or running (a scheduled one is
    /// brought forward to now).
    pub async fn sync(
        &self,
        user: &UserId,
        provider: ProviderId,
        direction: Direction,
        full: bool,
    ) -> Result<SyncJob, IntegrationError> {
        if direction != Direction::Push && !provider.spec().can_import() {
            return Err(IntegrationError::InvalidArgument(format!(
                "direction: contacts cannot be imported from {provider}; use PUSH"
            )));
        }
        let integration = self
            .store
            .integration(user, provider)
            .await?
            .ok_or_else(|| not_connected(provider))?;
        match integration.status {
            IntegrationStatus::Active => {}
            IntegrationStatus::Error | IntegrationStatus::NeedsReauth => {
                return Err(IntegrationError::FailedPrecondition(format!(
                    "the {provider} connection needs attention ({}); connect it again first",
                    integration.last_error.as_deref().unwrap_or("no details")
                )));
            }
        }
        let (job, created) = self.enqueue(user, &integration, direction, full).await?;
        if created {
            return Ok(job);
        }
        // The integration's queued job is brought forward (a scheduled one) and widened to
        // cover this direction too, unless it has started. A started job is left as it is: one
        // parked for the provider's limit waits for the reset (bringing it forward would only
        // spend a park), and one stopped mid-push resumes from its checkpoint, so it can be
        // neither widened to an import nor made full.
        let now = Utc::now();
        let wanted = job.direction.and(direction);
        let changes = wanted != job.direction || (full && !job.full);
        let started = job.attempts > 0 || job.started_at.is_some();
        if !started
            && (job.next_attempt_at > now || changes)
            && self.store.expedite_sync(&job.id, now, wanted, full).await?
        {
            return Ok(self.store.sync_job(user, &job.id).await?.unwrap_or(job));
        }
        if changes {
            let asked = if wanted != job.direction {
                wanted.as_str()
            } else {
                "full"
            };
            return Err(IntegrationError::FailedPrecondition(format!(
                "a {} sync of {provider} has started (job {}); ask for a {asked} sync when it has finished",
                job.direction.as_str(),
                job.id
            )));
        }
        Ok(job)
    }

    pub(super) async fn enqueue(
        &self,
        user: &UserId,
        integration: &Integration,
        direction: Direction,
        full: bool,
    ) -> Result<(SyncJob, bool), StoreError> {
        let now = Utc::now();
        let (job, created) = self
            .store
            .enqueue_sync(&NewSyncJob {
                integration_id: &integration.id,
                user,
                direction,
                max_attempts: self.max_attempts,
                due: now,
                now,
                full,
            })
            .await?;
        if created {
            tracing::info!(job_id = %job.id, provider = integration.provider.as_str(), "sync queued");
        }
        Ok((job, created))
    }

    /// One of the user's jobs; another user's (or a made-up) id is NOT_FOUND.
    pub async fn job(&self, user: &UserId, id: &str) -> Result<SyncJob, IntegrationError> {
        let not_found = || IntegrationError::NotFound(format!("sync job {id:?} not found"));
        if uuid::Uuid::parse_str(id).is_err() {
            return Err(not_found());
        }
        self.store.sync_job(user, id).await?.ok_or_else(not_found)
    }

    /// A page of the user's jobs of one integration, newest first, after `before`.
    pub async fn jobs(
        &self,
        user: &UserId,
        provider: ProviderId,
        before: Option<&JobCursor>,
        page_size: u32,
    ) -> Result<Vec<SyncJob>, IntegrationError> {
        let size = page_size.clamp(1, MAX_JOB_PAGE);
        Ok(self
            .store
            .sync_jobs_page(user, provider, before, size)
            .await?)
    }

    /// Cancels one of the user's jobs that is queued or running (a running one stops at its
    /// next batch). Canceling a canceled job again is fine; a finished one cannot be.
    pub async fn cancel(&self, user: &UserId, id: &str) -> Result<SyncJob, IntegrationError> {
        let job = self.job(user, id).await?;
        let now: DateTime<Utc> = Utc::now();
        if self.store.cancel_sync_job(user, &job.id, now).await? {
            tracing::info!(job_id = %job.id, provider = job.provider.as_str(), "sync job canceled");
            self.activity(
                user,
                crate::domain::activity::Activity::new(
                    "sync.canceled",
                    format!("Canceled a sync with {}", job.provider),
                    serde_json::json!({ "provider": job.provider.as_str(), "job_id": job.id }),
                ),
            )
            .await;
            return self.job(user, id).await;
        }
        let job = self.job(user, id).await?;
        match job.state {
            crate::domain::sync_job::JobState::Canceled => Ok(job),
            state => Err(IntegrationError::FailedPrecondition(format!(
                "the job has already finished ({})",
                state.as_str()
            ))),
        }
    }
}
