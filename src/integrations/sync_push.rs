//! The push phase of a sync: the contacts changed since the integration's watermark (all of
//! them for a full push), in push order (the change number the database gave each contact's
//! last write, then id), a batch at a time, or as one file for Google Drive and Dropbox. The
//! job's checkpoint is the key of the last contact handled and the push's horizon; a finished
//! push moves the integration's watermark there, never past the horizon (`sync_outcome.rs`).
//!
//! Every provider write is safe to send again: record providers upsert by key, the Zapier hook
//! gets an `Idempotency-Key` naming the batch, Google Drive's file id is reserved and stored
//! before the file is made. The bookkeeping after a provider call is retried in place
//! (`bookkeeping.rs`) before the attempt is given up, so a passing database error does not
//! send a batch again.

use tokio_util::sync::CancellationToken;

use super::{
    bookkeeping::in_place,
    sync_attempt::{Outcome, batch_refused, is_transient},
    sync_context::SyncWorker,
    sync_session::Session,
};
use crate::{
    domain::{
        catalogue::ProviderId,
        contact::{Contact, sendable_by_email},
        sync_job::{JobProgress, PendingBatch, PushCheckpoint, PushKey, SyncJob},
    },
    providers::{ProviderError, PushReport},
    store::StoreError,
};

impl SyncWorker {
    /// Where this push starts (`last`), its horizon and its destination epoch: its own
    /// checkpoint when resuming in the same epoch, else the integration's watermark (the very
    /// start for a full push, a first sync or a changed destination) and the horizon read now.
    /// A fresh push first sends again the contacts refused for a passing reason last time
    /// (their change numbers are moved on, so they sort after the watermark).
    pub(super) async fn push_start(
        &self,
        job: &SyncJob,
        progress: &JobProgress,
        epoch: i64,
    ) -> Result<PushCheckpoint, StoreError> {
        if let Some(checkpoint) = progress
            .checkpoint
            .as_deref()
            .and_then(PushCheckpoint::decode)
        {
            if checkpoint.epoch == epoch {
                return Ok(checkpoint);
            }
            tracing::info!("the destination changed since this push began; it starts over there");
        }
        let requeued = self
            .store
            .requeue_retries(&job.integration_id, &job.user_id)
            .await?;
        if requeued > 0 {
            tracing::info!(
                requeued,
                "contacts refused for a passing reason are sent again"
            );
        }
        // A batch the integration's previous job left on its way (it was canceled or gave up
        // after sending it) is sent again by this one, under its key.
        let pending = self
            .store
            .previous_job_checkpoint(&job.integration_id, &job.id)
            .await?
            .as_deref()
            .and_then(PushCheckpoint::decode)
            .filter(|previous| previous.epoch == epoch)
            .and_then(|previous| previous.pending);
        let horizon = self.store.push_horizon().await?;
        let last = if job.full {
            PushKey::start()
        } else {
            self.store
                .push_watermark(&job.integration_id)
                .await?
                .unwrap_or_else(PushKey::start)
        };
        Ok(PushCheckpoint {
            horizon,
            last,
            epoch,
            pending,
        })
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
        let PushCheckpoint {
            horizon,
            last: mut after,
            epoch,
            mut pending,
        } = self.push_start(job, progress, session.epoch).await?;
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
            let batch_key = batch_key(&job.integration_id, &page);
            let contacts: Vec<Contact> = page.into_iter().map(|(_, c)| c).collect();
            let (sendable, without_email, duplicates): (Vec<&Contact>, u64, u64) =
                if keyed_by_email(job.provider) {
                    sendable_by_email(&contacts)
                } else {
                    (contacts.iter().collect(), 0, 0)
                };
            // Addresses that unsubscribed at the provider (its webhooks told us) are never
            // subscribed again.
            let (sendable, unsubscribed) = self.not_unsubscribed(job, sendable).await?;
            // Contacts the provider already holds exactly as they are here (imported from it,
            // or pushed before and touched since without a change) are not sent again.
            let (sendable, up_to_date) = if job.full {
                (sendable, 0)
            } else {
                self.not_yet_at_provider(job, sendable).await?
            };
            // A batch refused whole for one bad record is split in halves until the refusal
            // names the record (only that one is then left out). The splits are bounded (twice
            // the halvings one bad record needs): a refusal of the request itself (a list that
            // does not exist) refuses the batch after a few requests, not one per contact.
            let mut splits_left = 2 * (usize::BITS - sendable.len().leading_zeros());
            // A batch a lost attempt had on its way to a destination that cannot tell a resend:
            // its contacts unchanged since go first, under its key (a Zap drops the repeat);
            // the rest of the page is another batch, under another key.
            // (Taken by the first page holding any of its contacts: with other pages than the
            // lost attempt's, contacts of it on a later page go under another key.)
            let mut parts: Vec<(Vec<&Contact>, Option<String>)> = match &pending {
                Some(lost) => {
                    let members: std::collections::HashSet<(&str, String)> = lost
                        .members
                        .iter()
                        .map(|(id, fingerprint)| (id.as_str(), fingerprint.clone()))
                        .collect();
                    let (again, rest): (Vec<&Contact>, Vec<&Contact>) = sendable
                        .into_iter()
                        .partition(|c| members.contains(&(c.id.as_str(), c.fingerprint())));
                    if again.is_empty() {
                        vec![(rest, None)]
                    } else {
                        let key = lost.key.clone();
                        pending = None;
                        vec![(rest, None), (again, Some(key))]
                    }
                }
                None => vec![(sendable, None)],
            };
            while let Some((part, fixed_key)) = parts.pop() {
                if part.is_empty() {
                    continue;
                }
                let key = match &fixed_key {
                    Some(key) => key.clone(),
                    None => part_key(&batch_key, &part, contacts.len()),
                };
                if !keyed_by_email(job.provider) {
                    // Saved before it is sent: a crash before its answer is remembered resends
                    // this very batch under this key, not a page read again another way.
                    // Only the checkpoint: nothing is saved yet, so the attempts in a row go on.
                    let checkpoint = PushCheckpoint {
                        horizon,
                        last: after.clone(),
                        epoch,
                        pending: Some(PendingBatch {
                            key: key.clone(),
                            members: part
                                .iter()
                                .map(|c| (c.id.clone(), c.fingerprint()))
                                .collect(),
                        }),
                    }
                    .encode();
                    if !in_place(|| self.store.save_checkpoint(&job.id, worker, &checkpoint))
                        .await?
                    {
                        return Ok(Some(Outcome::LeaseLost));
                    }
                }
                let pushed = call_provider!(self, session, job, shutdown, sink, |sink| sink
                    .push(&part, &key));
                match pushed {
                    Ok(report) => {
                        in_place(|| self.remember_pushed(job, &part, &report, epoch)).await?;
                        add_report(progress, report);
                    }
                    Err(ProviderError::BatchRefused(_)) if part.len() > 1 && splits_left > 0 => {
                        splits_left -= 1;
                        let second = part[part.len() / 2..].to_vec();
                        let first = part[..part.len() / 2].to_vec();
                        // A half's key follows from its batch's: the same half of the same
                        // batch always has the same one.
                        let (second_key, first_key) = (
                            part_key(&key, &second, usize::MAX),
                            part_key(&key, &first, usize::MAX),
                        );
                        parts.push((second, Some(second_key)));
                        parts.push((first, Some(first_key)));
                    }
                    Err(ProviderError::BatchRefused(reason)) => {
                        let failed = batch_refused(&part, &reason);
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
            progress.add_skipped(unsubscribed, "unsubscribed at the provider");
            progress.checkpoint = Some(
                PushCheckpoint {
                    horizon,
                    last: last.clone(),
                    epoch,
                    pending: None,
                }
                .encode(),
            );
            if !in_place(|| self.store.save_progress(&job.id, worker, progress)).await? {
                return Ok(Some(Outcome::LeaseLost));
            }
            if contacts.len() < batch_size as usize {
                break;
            }
            after = last;
        }
        Ok(None)
    }
}

impl SyncWorker {
    /// The contacts of `batch` whose address did not unsubscribe at the provider (Mailchimp
    /// tells us with its webhooks), and how many were left out.
    async fn not_unsubscribed<'c>(
        &self,
        job: &SyncJob,
        batch: Vec<&'c Contact>,
    ) -> Result<(Vec<&'c Contact>, u64), StoreError> {
        if job.provider != ProviderId::Mailchimp || batch.is_empty() {
            return Ok((batch, 0));
        }
        let emails: Vec<String> = batch
            .iter()
            .filter_map(|c| c.email())
            .map(str::to_lowercase)
            .collect();
        let gone: std::collections::HashSet<String> = self
            .store
            .unsubscribed_among(&job.integration_id, &emails)
            .await?
            .into_iter()
            .collect();
        if gone.is_empty() {
            return Ok((batch, 0));
        }
        let before = batch.len();
        let kept: Vec<&Contact> = batch
            .into_iter()
            .filter(|c| c.email().is_none_or(|e| !gone.contains(&e.to_lowercase())))
            .collect();
        let left_out = (before - kept.len()) as u64;
        Ok((kept, left_out))
    }

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

    /// Records what the provider now holds: every sent contact it did not refuse. Contacts
    /// refused for a passing reason are kept to be sent again at the next push.
    async fn remember_pushed(
        &self,
        job: &SyncJob,
        sent: &[&Contact],
        report: &PushReport,
        epoch: i64,
    ) -> Result<(), StoreError> {
        let lower = |e: &str| e.to_ascii_lowercase();
        let retry: std::collections::HashSet<String> =
            report.retry_later.iter().map(|e| lower(e)).collect();
        if !retry.is_empty() {
            let again: Vec<(String, String)> = sent
                .iter()
                .filter(|c| retry.contains(&lower(c.email().unwrap_or_default())))
                .map(|c| (c.id.clone(), "refused for a passing reason".to_string()))
                .collect();
            self.store
                .hold_for_retry(&job.integration_id, &again)
                .await?;
        }
        // Held to be sent again: not at the provider yet, whatever else the report says.
        let refused: std::collections::HashSet<String> = report
            .failures
            .iter()
            .map(|f| lower(&f.email))
            .chain(retry.iter().cloned())
            .collect();
        // Refusals the provider did not name (or named without an address): nothing of this
        // batch is known to have landed.
        if report.failed as usize > report.failures.len()
            || report.failures.iter().any(|f| f.email.trim().is_empty())
        {
            return Ok(());
        }
        let landed: Vec<(String, String)> = sent
            .iter()
            .filter(|c| !refused.contains(&c.email().unwrap_or_default().to_ascii_lowercase()))
            .map(|c| (c.id.clone(), c.fingerprint()))
            .collect();
        if !self
            .store
            .save_provider_fingerprints(&job.integration_id, &landed, epoch)
            .await?
        {
            tracing::info!(
                "the destination changed during this push; what it sent is not remembered"
            );
        }
        Ok(())
    }
}

/// Names one batch of changes: the same batch sent again (a lost answer, a retried attempt)
/// gets the same key, another batch (other contacts, or the same ones changed since) another
/// one. Sent as Zapier's `Idempotency-Key`.
fn batch_key(integration_id: &str, page: &[(PushKey, Contact)]) -> String {
    short_hash(integration_id, page.iter().map(|(key, _)| key.encode()))
}

/// The key of a part of a split batch: the batch's own when whole, else derived from the
/// batch's and the part's contacts.
fn part_key(batch_key: &str, part: &[&Contact], whole: usize) -> String {
    if part.len() == whole {
        return batch_key.to_string();
    }
    short_hash(batch_key, part.iter().map(|contact| contact.id.clone()))
}

/// 32 hex digits of SHA-256 over `first` and each of `lines`.
fn short_hash(first: &str, lines: impl Iterator<Item = String>) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    hash.update(first.as_bytes());
    for line in lines {
        hash.update(b"\n");
        hash.update(line.as_bytes());
    }
    hex::encode(&hash.finalize()[..16])
}

/// Providers that identify contacts by email (a contact without one cannot be sent).
fn keyed_by_email(provider: ProviderId) -> bool {
    !matches!(provider, ProviderId::Zapier)
}

/// Why contacts held for the next push were not sent now.
pub const SENT_AGAIN_NEXT_SYNC: &str = "not taken by the provider yet (a passing refusal or an unanswered import); sent again at the next sync";

/// Adds a pushed batch's report to the job's progress. Contacts held to be sent again at the
/// next push (`retry_later`) are not refused: they count as skipped, with the reason, so a
/// batch the provider could not take just now never makes the job FAILED (and its integration
/// ERROR, which would stop the very next sync that sends them).
fn add_report(progress: &mut JobProgress, report: PushReport) {
    let held: std::collections::HashSet<String> = report
        .retry_later
        .iter()
        .map(|e| e.to_ascii_lowercase())
        .collect();
    let (deferred, refused): (Vec<_>, Vec<_>) = report
        .failures
        .into_iter()
        .partition(|f| held.contains(&f.email.to_ascii_lowercase()));
    progress.add_failures(report.failed.saturating_sub(deferred.len() as u64), refused);
    progress.add_skipped(held.len() as u64, SENT_AGAIN_NEXT_SYNC);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::sync_job::{JobState, RecordFailure};

    /// Found in review: a SendGrid import whose end could not be learnt (every contact held for
    /// the next push) made the job FAILED and the integration ERROR, so no next sync came.
    #[test]
    fn contacts_held_for_the_next_push_are_skipped_not_refused() {
        let mut progress = JobProgress {
            contacts_done: 3,
            ..JobProgress::default()
        };
        add_report(
            &mut progress,
            PushReport {
                failed: 0,
                failures: vec![],
                retry_later: vec!["a@x.test".into(), "b@x.test".into(), "c@x.test".into()],
            },
        );
        assert_eq!(progress.contacts_failed, 0);
        assert_eq!(progress.contacts_skipped, 3);
        assert_eq!(progress.final_state(), JobState::Succeeded);
        // Salesforce names a locked record as a failure and holds it: skipped, not refused; a
        // record refused for its content still is.
        let mut progress = JobProgress {
            contacts_done: 2,
            ..JobProgress::default()
        };
        add_report(
            &mut progress,
            PushReport {
                failed: 2,
                failures: vec![
                    RecordFailure {
                        email: "Locked@x.test".into(),
                        message: "UNABLE_TO_LOCK_ROW".into(),
                    },
                    RecordFailure {
                        email: "bad@x.test".into(),
                        message: "INVALID_EMAIL_ADDRESS".into(),
                    },
                ],
                retry_later: vec!["locked@x.test".into()],
            },
        );
        assert_eq!(progress.contacts_failed, 1);
        assert_eq!(progress.failures.len(), 1);
        assert_eq!(progress.failures[0].email, "bad@x.test");
        assert_eq!(progress.contacts_skipped, 1);
        assert_eq!(
            progress.final_state(),
            JobState::Failed,
            "the one sent was refused"
        );
    }
}
