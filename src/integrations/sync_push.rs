//! The push phase of a sync: the contacts changed since the integration's watermark (all of
//! them for a full push), in push order (`updated_at`, then id), a batch at a time, or as one
//! file for Google Drive and Dropbox. The job's checkpoint is the key of the last contact
//! handled; a finished push moves the integration's watermark there (`sync_outcome.rs`).

use tokio_util::sync::CancellationToken;

use super::{
    sync_attempt::{Outcome, batch_refused, is_transient},
    sync_session::Session,
    sync_worker::{PUSH_CHECKPOINT, SyncWorker},
    tokens::TokenError,
};
use crate::domain::credentials::keys;
use crate::{
    domain::{
        catalogue::ProviderId,
        contact::{Contact, sendable_by_email},
        contact_csv::ContactsCsv,
        sync_job::{JobProgress, PushKey, SyncJob},
    },
    providers::{ProviderError, PushReport},
    store::StoreError,
};

/// Contacts read per query when building a file.
const FILE_PAGE: u32 = 1000;

impl SyncWorker {
    /// Where this push starts: its own checkpoint when resuming, else the integration's
    /// watermark (the very start for a full push or a first sync).
    async fn push_start(
        &self,
        job: &SyncJob,
        progress: &JobProgress,
    ) -> Result<PushKey, StoreError> {
        if let Some(key) = progress
            .checkpoint
            .as_deref()
            .and_then(|c| c.strip_prefix(PUSH_CHECKPOINT))
            .and_then(PushKey::decode)
        {
            return Ok(key);
        }
        if job.full {
            return Ok(PushKey::start());
        }
        Ok(self
            .store
            .push_watermark(&job.integration_id)
            .await?
            .unwrap_or_else(PushKey::start))
    }

    /// Pushes the changed contacts page by page from the checkpoint. `Some` ends the attempt.
    pub(super) async fn push_records(
        &self,
        session: &mut Session<'_>,
        worker: &str,
        job: &SyncJob,
        progress: &mut JobProgress,
        shutdown: &CancellationToken,
    ) -> Result<Option<Outcome>, StoreError> {
        let mut after = self.push_start(job, progress).await?;
        let remaining = self
            .store
            .contacts_changed_count(&job.user_id, &after)
            .await?;
        progress.contacts_total = progress.contacts_done + remaining;
        let batch_size = job.provider.spec().batch_size.max(1);
        loop {
            if shutdown.is_cancelled() {
                return Ok(Some(Outcome::Stopped));
            }
            let page = self
                .store
                .contacts_changed(&job.user_id, &after, batch_size)
                .await?;
            let Some((last, _)) = page.last() else {
                break;
            };
            let last = last.clone();
            let contacts: Vec<Contact> = page.into_iter().map(|(_, c)| c).collect();
            let (sendable, without_email, duplicates): (Vec<&Contact>, u64, u64) =
                if keyed_by_email(job.provider) {
                    sendable_by_email(&contacts)
                } else {
                    (contacts.iter().collect(), 0, 0)
                };
            // Contacts the provider already holds exactly as they are here (imported from it,
            // or pushed before and touched since without a change) are not sent again.
            let (sendable, up_to_date) = if job.full {
                (sendable, 0)
            } else {
                self.not_yet_at_provider(job, sendable).await?
            };
            if !sendable.is_empty() {
                let pushed = call_provider!(self, session, job, shutdown, sink, |sink| sink
                    .push(&sendable));
                match pushed {
                    Ok(report) => {
                        self.remember_pushed(job, &sendable, &report).await?;
                        progress.add_failures(report.failed, report.failures);
                    }
                    Err(ProviderError::BatchRefused(reason)) => {
                        let failed = batch_refused(&sendable, &reason);
                        progress.add_failures(failed.failed, failed.failures);
                    }
                    Err(e) if shutdown.is_cancelled() && is_transient(&e) => {
                        return Ok(Some(Outcome::Stopped));
                    }
                    Err(e) => return Ok(Some(self.outcome_of(e, job))),
                }
            }
            // Contacts already up to date at the provider are not this sync's work at all.
            progress.contacts_done += contacts.len() as u64 - up_to_date;
            progress.contacts_total = progress.contacts_total.saturating_sub(up_to_date);
            progress.add_skipped(without_email, "no email address");
            progress.add_skipped(duplicates, "email address repeated in a batch");
            progress.checkpoint = Some(format!("{PUSH_CHECKPOINT}{}", last.encode()));
            if !self.store.save_progress(&job.id, worker, progress).await? {
                return Ok(Some(Outcome::LeaseLost));
            }
            if contacts.len() < batch_size as usize {
                break;
            }
            after = last;
        }
        Ok(None)
    }

    /// Writes every contact into one CSV file and uploads it whole (Google Drive, Dropbox),
    /// only when a contact changed since the last upload (or for a full push, or when there is
    /// no file yet). A retry uploads the whole file again, which replaces it.
    pub(super) async fn push_file(
        &self,
        session: &mut Session<'_>,
        worker: &str,
        job: &SyncJob,
        progress: &mut JobProgress,
        shutdown: &CancellationToken,
    ) -> Result<Option<Outcome>, StoreError> {
        let start = self.push_start(job, progress).await?;
        // Read before the file is built: a contact changed while it is written sorts after
        // this key, so the next sync uploads again.
        // (Deleting a contact does not move the newest key: the file catches up at the next
        // change or full push.)
        let newest = self.store.last_push_key(&job.user_id).await?;
        let unchanged = match &newest {
            Some(newest) => *newest <= start,
            None => start != PushKey::start(),
        };
        if unchanged {
            tracing::info!("no contact changed since the last upload; nothing to send");
            return Ok(None);
        }
        let mut file = ContactsCsv::default();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .store
                .contacts_after(&job.user_id, after.as_deref(), FILE_PAGE)
                .await?;
            file.add(&page);
            after = page.last().map(|c| c.id.clone());
            if page.len() < FILE_PAGE as usize {
                break;
            }
        }
        let rows = file.rows();
        let csv = file.finish();
        let uploaded = call_provider!(self, session, job, shutdown, file_sink, |sink| sink
            .upload(&csv));
        match uploaded {
            Ok(new_file) => {
                if let Some(file_id) = new_file {
                    // Kept so the next sync updates this file instead of making another.
                    match session.remember(keys::FILE_ID, &file_id).await {
                        Ok(()) => {}
                        Err(TokenError::Store(e)) => return Err(e),
                        Err(e) => return Ok(Some(super::sync_session::session_outcome(e))),
                    }
                }
                progress.contacts_total = rows;
                progress.contacts_done = rows;
                if let Some(newest) = newest {
                    progress.checkpoint = Some(format!("{PUSH_CHECKPOINT}{}", newest.encode()));
                }
                if !self.store.save_progress(&job.id, worker, progress).await? {
                    return Ok(Some(Outcome::LeaseLost));
                }
                Ok(None)
            }
            Err(e) if shutdown.is_cancelled() && is_transient(&e) => Ok(Some(Outcome::Stopped)),
            Err(e) => Ok(Some(self.outcome_of(e, job))),
        }
    }
}

impl SyncWorker {
    /// The contacts of `batch` whose values differ from what the provider is known to hold,
    /// and how many were left out.
    async fn not_yet_at_provider<'c>(
        &self,
        job: &SyncJob,
        batch: Vec<&'c Contact>,
    ) -> Result<(Vec<&'c Contact>, u64), StoreError> {
        let ids: Vec<&str> = batch.iter().map(|c| c.id.as_str()).collect();
        let known = self
            .store
            .provider_fingerprints(&job.integration_id, &ids)
            .await?;
        let before = batch.len();
        let changed: Vec<&Contact> = batch
            .into_iter()
            .filter(|c| known.get(&c.id) != Some(&c.fingerprint()))
            .collect();
        let left_out = (before - changed.len()) as u64;
        Ok((changed, left_out))
    }

    /// Records what the provider now holds: every sent contact it did not refuse.
    async fn remember_pushed(
        &self,
        job: &SyncJob,
        sent: &[&Contact],
        report: &PushReport,
    ) -> Result<(), StoreError> {
        let refused: std::collections::HashSet<String> = report
            .failures
            .iter()
            .map(|f| f.email.to_ascii_lowercase())
            .collect();
        // Refusals the provider did not name: nothing of this batch is known to have landed.
        if report.failed as usize > report.failures.len() {
            return Ok(());
        }
        let landed: Vec<(String, String)> = sent
            .iter()
            .filter(|c| !refused.contains(&c.email().unwrap_or_default().to_ascii_lowercase()))
            .map(|c| (c.id.clone(), c.fingerprint()))
            .collect();
        self.store
            .save_provider_fingerprints(&job.integration_id, &landed)
            .await
    }
}

/// Providers that identify contacts by email (a contact without one cannot be sent).
fn keyed_by_email(provider: ProviderId) -> bool {
    !matches!(provider, ProviderId::Zapier)
}
