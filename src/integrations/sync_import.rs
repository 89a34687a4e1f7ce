//! The import phase of a sync: the provider's contacts page by page from the checkpoint into
//! the user's contacts, within the plan's contact limit. A contact the provider holds exactly
//! as stored here is not written (so the push that follows does not send it back).

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::{
    sync_attempt::{Outcome, is_transient},
    sync_context::{IMPORT_CHECKPOINT, IMPORT_DONE, SyncWorker},
    sync_session::Session,
};
use crate::{
    domain::{
        Limit,
        sync_job::{JobProgress, SyncJob},
    },
    providers::ProviderError,
    store::{StoreError, contact_import::ImportGuard},
};

impl SyncWorker {
    /// Reads the provider's contacts page by page from the checkpoint into the user's
    /// contacts, within the plan's contact limit.
    pub(super) async fn import(
        &self,
        session: &mut Session<'_>,
        worker: &str,
        job: &SyncJob,
        progress: &mut JobProgress,
        shutdown: &CancellationToken,
    ) -> Result<Option<Outcome>, StoreError> {
        let entitlement = self.billing.entitlement(&job.user_id).await?;
        let plan = entitlement.effective_tier.plan();
        let limit = match plan.limits.contacts {
            Limit::Max(n) => Some(n),
            Limit::Unlimited => None,
        };
        let over_limit_reason = format!(
            "the {} plan allows {} contacts; upgrade to import the rest",
            plan.name,
            limit.unwrap_or_default()
        );
        // What the import reads is what the connected provider holds, as of this epoch.
        let epoch = session.epoch;
        let mut restarted = false;
        loop {
            if shutdown.is_cancelled() {
                return Ok(Some(Outcome::Stopped));
            }
            if progress.checkpoint.as_deref() == Some(IMPORT_DONE) {
                return Ok(None);
            }
            let cursor = progress
                .checkpoint
                .as_deref()
                .and_then(|c| c.strip_prefix(IMPORT_CHECKPOINT))
                .filter(|c| !c.is_empty())
                .map(str::to_string);
            let read = call_provider!(self, session, job, shutdown, source, |source| source
                .page(cursor.as_deref()));
            let page = match read {
                Ok(page) => page,
                Err(e) if shutdown.is_cancelled() && is_transient(&e) => {
                    return Ok(Some(Outcome::Stopped));
                }
                // A saved cursor can expire at the provider (Salesforce query locators last
                // minutes): read again from the first page, once. Storing is idempotent.
                Err(ProviderError::BatchRefused(reason) | ProviderError::Rejected(reason))
                    if cursor.is_some() && !restarted =>
                {
                    tracing::info!(%reason, "the provider refused the saved import cursor; starting the import over");
                    restarted = true;
                    progress.checkpoint = Some(IMPORT_CHECKPOINT.to_string());
                    continue;
                }
                Err(e) => return Ok(Some(self.outcome_of(e, job))),
            };
            let counts = self
                .store
                .import_contacts(
                    &job.user_id,
                    &page.contacts,
                    limit,
                    Utc::now(),
                    Some(ImportGuard {
                        integration_id: &job.integration_id,
                        epoch,
                    }),
                )
                .await?;
            if counts.stale {
                // Disconnected, erased or reconnected meanwhile: nothing was stored. The job
                // is queued again (a deleted one is gone with its integration) and its next
                // attempt reads the new destination.
                tracing::info!(
                    "the connection changed during the import; nothing stored from this page"
                );
                return Ok(Some(Outcome::Stopped));
            }
            // The provider holds these as read: the push that follows leaves them alone.
            self.store
                .save_provider_fingerprints(&job.integration_id, &counts.synced, epoch)
                .await?;
            tracing::debug!(
                inserted = counts.inserted,
                updated = counts.updated,
                kept_newer = counts.kept_newer,
                unchanged = counts.unchanged,
                over_limit = counts.over_limit,
                "import page stored"
            );
            progress.contacts_done += page.contacts.len() as u64;
            progress.contacts_total = progress.contacts_total.max(progress.contacts_done);
            progress.add_skipped(counts.over_limit, &over_limit_reason);
            let Some(next) = page.next else {
                progress.checkpoint = Some(IMPORT_DONE.to_string());
                if !self.store.save_progress(&job.id, worker, progress).await? {
                    return Ok(Some(Outcome::LeaseLost));
                }
                return Ok(None);
            };
            progress.checkpoint = Some(format!("{IMPORT_CHECKPOINT}{next}"));
            if !self.store.save_progress(&job.id, worker, progress).await? {
                return Ok(Some(Outcome::LeaseLost));
            }
        }
    }
}
