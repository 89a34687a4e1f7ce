//! NotifyContactsChanged: the card app says a user's contacts changed, and they go to every
//! ACTIVE push connection within seconds, through the job queue and its guarantees. Many
//! notifications in the coalescing window make one job: the first queues a push due at the
//! window's end, the next ones find it queued. A notification arriving while a push runs
//! (its read horizon may be behind the change) leaves a push owed, queued as soon as that
//! job ends; never two jobs side by side.

use chrono::Utc;

use super::{IntegrationError, Integrations, sync_context::sync_direction};
use crate::{
    domain::{
        UserId,
        integration::IntegrationStatus,
        sync_job::{Direction, SyncJob},
    },
    store::NewSyncJob,
};

/// Most contact ids one notification may name.
pub const MAX_NOTIFIED_IDS: usize = 1000;

impl Integrations {
    /// Queues (or joins) a push to each of the user's ACTIVE push connections; the jobs.
    pub async fn notify_contacts_changed(
        &self,
        user: &UserId,
        contact_ids: &[String],
    ) -> Result<Vec<SyncJob>, IntegrationError> {
        if contact_ids.len() > MAX_NOTIFIED_IDS {
            return Err(IntegrationError::InvalidArgument(format!(
                "contact_ids: at most {MAX_NOTIFIED_IDS} per notification"
            )));
        }
        if let Some(bad) = contact_ids
            .iter()
            .find(|id| id.trim().is_empty() || id.len() > 128)
        {
            return Err(IntegrationError::InvalidArgument(format!(
                "contact_ids: {bad:?} is not a contact id"
            )));
        }
        let window =
            chrono::Duration::from_std(self.real_time.notify_coalesce_window).unwrap_or_default();
        let mut jobs = Vec::new();
        for integration in self.store.integrations(user).await? {
            if integration.status != IntegrationStatus::Active
                || sync_direction(&integration) == Direction::Import
            {
                continue;
            }
            let now = Utc::now();
            let due = now + window;
            let new = NewSyncJob {
                integration_id: &integration.id,
                user,
                direction: Direction::Push,
                max_attempts: self.max_attempts,
                due,
                now,
                full: false,
            };
            let (job, created) = self.store.enqueue_sync(&new).await?;
            let outcome = if created {
                "queued"
            } else if job.started_at.is_none()
                && job.attempts == 0
                // Not started: it reads every change when it does. A scheduled one is
                // brought forward to the window's end, an import widened to a push too.
                // `false`: a worker took it meanwhile (perhaps an import), so a push is owed.
                && self
                    .store
                    .expedite_sync(&job.id, due, job.direction.and(Direction::Push), false)
                    .await?
            {
                "coalesced"
            } else {
                // Running: its read may be behind this change. A push is owed when it ends;
                // if it ended meanwhile, the push is queued now.
                self.store.owe_push(&integration.id, now).await?;
                let (again, created) = self.store.enqueue_sync(&new).await?;
                if created {
                    self.store.take_owed_push(&integration.id).await?;
                    jobs.push(again);
                    metrics::counter!("contact_notifications_total", "outcome" => "queued")
                        .increment(1);
                    continue;
                }
                "owed"
            };
            metrics::counter!("contact_notifications_total", "outcome" => outcome).increment(1);
            jobs.push(self.store.sync_job(user, &job.id).await?.unwrap_or(job));
        }
        if jobs.is_empty() {
            metrics::counter!("contact_notifications_total", "outcome" => "no_connection")
                .increment(1);
        }
        tracing::debug!(
            user_id = user.as_str(),
            named = contact_ids.len(),
            jobs = jobs.len(),
            "contacts changed"
        );
        Ok(jobs)
    }
}
