//! What the end of a sync attempt means: retry policy (retries inside an attempt, backoff
//! between attempts, growing waits for rate limits), and recording the outcome (the job's
//! state, the integration's health and watermark, the activity log, the next scheduled sync).

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::{DateTime, Utc};
use rand::Rng;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{
    sync_attempt::{Outcome, broken},
    sync_context::{SyncWorker, sync_interval},
};
use crate::{
    domain::{
        UserId,
        activity::Activity,
        health::SyncHealthEvent,
        integration::IntegrationStatus,
        sync_job::{JobProgress, JobState, PushCheckpoint, SyncJob},
    },
    providers::ProviderError,
    store::{JobEnd, StoreError},
};

/// The longest wait for a rate limit or a retry spent inside an attempt; a longer one parks
/// the job and frees the worker.
pub(super) const MAX_INLINE_WAIT: Duration = Duration::from_secs(60);

impl SyncWorker {
    /// Calls the provider, retrying outages and short rate limits within the attempt
    /// (honouring `Retry-After`), with exponential backoff and jitter between tries.
    pub(super) async fn with_retries<T, F, Fut>(
        &self,
        shutdown: &CancellationToken,
        mut call: F,
    ) -> Result<T, ProviderError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, ProviderError>>,
    {
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(self.config.retry_min_delay)
            .with_max_delay(MAX_INLINE_WAIT)
            .with_max_times(self.config.request_retries.saturating_sub(1) as usize)
            .with_jitter()
            .build();
        loop {
            let error = match call().await {
                Ok(value) => return Ok(value),
                Err(e) => e,
            };
            let wait = match &error {
                ProviderError::RateLimited {
                    retry_after,
                    daily: false,
                } => delays
                    .next()
                    .map(|backoff| retry_after.map_or(backoff, |asked| asked.max(backoff))),
                ProviderError::Unavailable(_) => delays.next(),
                _ => None,
            };
            let Some(wait) = wait.filter(|w| *w <= MAX_INLINE_WAIT) else {
                return Err(error);
            };
            tracing::info!(error = %error, wait_ms = wait.as_millis() as u64, "provider request will be retried");
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = shutdown.cancelled() => return Err(error),
            }
        }
    }

    /// What a provider failure that the retries could not get past means for the job.
    pub(super) fn outcome_of(&self, error: ProviderError, job: &SyncJob) -> Outcome {
        match error {
            ProviderError::RateLimited { retry_after, daily } => {
                self.rate_limited(job, retry_after, daily, Utc::now())
            }
            ProviderError::Unavailable(reason) => Outcome::Retry { reason },
            other => broken(other),
        }
    }

    /// A rate limit the attempt could not wait out. The job is parked; each park in a row
    /// (without a saved batch in between) waits longer: exponential from SYNC_RETRY_MIN_DELAY
    /// with jitter, capped at SYNC_RETRY_MAX_DELAY, and never shorter than the provider asked
    /// (its `Retry-After`, clamped to 24 h when read). A spent daily quota waits for the reset
    /// (the provider's, else the next UTC midnight). Past SYNC_MAX_RATE_LIMITED parks in a
    /// row the job fails with the reason, and the next sync starts afresh.
    fn rate_limited(
        &self,
        job: &SyncJob,
        retry_after: Option<Duration>,
        daily: bool,
        now: DateTime<Utc>,
    ) -> Outcome {
        let parks = job.rate_limited + 1;
        if parks > self.config.max_rate_limited {
            return Outcome::GiveUp {
                reason: format!(
                    "{} kept limiting the request rate ({} times in a row without progress); \
                     the next sync tries again",
                    job.provider, job.rate_limited
                ),
            };
        }
        let (until, reason) = if daily {
            let until = match retry_after {
                Some(wait) => add(now, wait),
                None => next_utc_midnight(now),
            };
            (
                until,
                "the provider's daily request limit is used up; the sync resumes when it resets",
            )
        } else {
            let grown = self.growing_wait(parks);
            let wait = retry_after.map_or(grown, |asked| asked.max(grown));
            (
                add(now, wait),
                "the provider asked to slow down; the sync resumes shortly",
            )
        };
        Outcome::Parked {
            until,
            reason: reason.into(),
        }
    }

    /// `min * 2^(n-1)`, capped, with up to a quarter taken off at random (jitter), for the
    /// n-th park in a row.
    fn growing_wait(&self, parks: u32) -> Duration {
        let min = self.config.retry_min_delay;
        let max = self.config.retry_max_delay;
        let grown = min
            .saturating_mul(2u32.saturating_pow(parks.saturating_sub(1).min(30)))
            .min(max);
        let jitter = rand::rng().random_range(0.75..=1.0);
        grown.mul_f64(jitter).max(min.min(max))
    }

    /// Records how the attempt ended: the job's state, the integration's health and
    /// watermark, the activity log, and when the next scheduled sync is due.
    pub(super) async fn settle(
        &self,
        worker: &str,
        job: &SyncJob,
        outcome: Outcome,
    ) -> Result<(), StoreError> {
        let health = health_event(&outcome);
        self.settle_job(worker, job, outcome).await?;
        self.after_attempt(job, health).await;
        Ok(())
    }

    /// Health facts, and the push owed by a NotifyContactsChanged that came while this job
    /// ran: queued now unless the job is still active (re-queued), then owed again.
    async fn after_attempt(
        &self,
        job: &SyncJob,
        health: Option<(SyncHealthEvent, Option<String>)>,
    ) {
        let now = Utc::now();
        if let Some((event, error)) = health
            && let Err(e) = self
                .store
                .record_sync_health(&job.integration_id, event, error.as_deref(), now)
                .await
        {
            tracing::warn!(error = %crate::telemetry::error_chain(&e), "cannot record the integration's health");
        }
        let follow_up = async {
            if !self.store.take_owed_push(&job.integration_id).await? {
                return Ok::<_, StoreError>(());
            }
            let (next, created) = self
                .store
                .enqueue_sync(&crate::store::NewSyncJob {
                    integration_id: &job.integration_id,
                    user: &job.user_id,
                    direction: crate::domain::sync_job::Direction::Push,
                    max_attempts: self.config.max_attempts,
                    due: now,
                    now,
                    full: false,
                })
                .await?;
            if created {
                tracing::info!(job_id = %next.id, "the push owed to contacts changed during the last one is queued");
            } else if next.started_at.is_some() {
                self.store.owe_push(&job.integration_id, now).await?;
            }
            Ok(())
        };
        if let Err(e) = follow_up.await {
            tracing::warn!(error = %crate::telemetry::error_chain(&e), "cannot queue the owed push; the next sync sends the changes");
        }
    }

    async fn settle_job(
        &self,
        worker: &str,
        job: &SyncJob,
        outcome: Outcome,
    ) -> Result<(), StoreError> {
        let now = Utc::now();
        let store = &self.store;
        match outcome {
            Outcome::LeaseLost => {
                tracing::warn!("the job was taken over, canceled or deleted; this worker stops it");
                // A canceled job keeps its lease until its worker has stopped: now it has.
                store.release_stopped_job(&job.id, worker).await?;
            }
            Outcome::Stopped => {
                let end = JobEnd::Retry {
                    at: now,
                    error: None,
                    count_attempt: false,
                    rate_limited: false,
                };
                store.end_sync_job(&job.id, worker, &end).await?;
                tracing::info!("sync attempt stopped by shutdown; the job is queued again");
            }
            Outcome::Parked { until, reason } => {
                let end = JobEnd::Retry {
                    at: until,
                    error: Some(&reason),
                    count_attempt: false,
                    rate_limited: true,
                };
                store.end_sync_job(&job.id, worker, &end).await?;
                tracing::info!(resume_at = %until, parks = job.rate_limited + 1, "sync parked by a rate limit");
            }
            Outcome::Retry { reason } => {
                // Attempts are counted in a row without a saved batch (saving one sets the
                // count back to this attempt): a long job that keeps moving under a flaky
                // provider is not given up (measured by `benches/sync_storm.rs`). Batches
                // saved during this attempt are in the row, not in `job` (read at claim).
                let attempts = store
                    .sync_job(&job.user_id, &job.id)
                    .await?
                    .map_or(job.attempts_in_a_row, |now| now.attempts_in_a_row);
                if attempts < job.max_attempts {
                    let at = add(now, self.backoff(attempts));
                    let end = JobEnd::Retry {
                        at,
                        error: Some(&reason),
                        count_attempt: true,
                        rate_limited: false,
                    };
                    store.end_sync_job(&job.id, worker, &end).await?;
                    tracing::warn!(%reason, next_attempt_at = %at, "sync attempt failed; will retry");
                } else {
                    let reason = format!("gave up after {attempts} attempts in a row: {reason}");
                    self.give_up(worker, job, &reason).await?;
                }
            }
            Outcome::GiveUp { reason } => self.give_up(worker, job, &reason).await?,
            Outcome::Broken {
                reason,
                integration,
            } => self.broken(worker, job, &reason, integration).await?,
            Outcome::Done(progress) => {
                let state = progress.final_state();
                if state == JobState::Failed && refused_for_one_reason(&progress) {
                    // Every contact sent was refused, all for one reason: the provider is set
                    // up wrong (a list that does not exist, say), not the contacts. (Refusals
                    // that name each record are the contacts': the job FAILS, the connection
                    // stays ACTIVE so later changes still go. Found by the contacts model: two
                    // bad addresses used to stop the integration until it was reconnected.)
                    let first = progress
                        .failures
                        .first()
                        .map(|f| f.message.as_str())
                        .unwrap_or("no reason given");
                    let reason = format!(
                        "{} refused every contact ({} of them): {first}",
                        job.provider, progress.contacts_failed
                    );
                    return self
                        .broken(worker, job, &reason, IntegrationStatus::Error)
                        .await;
                }
                // The integration's watermark and last sync time first, while the job is still
                // ours, so whoever sees the job finished sees them too.
                if !self.still_ours(worker, job).await? {
                    tracing::warn!("the job was taken over, canceled or deleted before it ended");
                    return Ok(());
                }
                if let Some(checkpoint) = progress
                    .checkpoint
                    .as_deref()
                    .and_then(PushCheckpoint::decode)
                {
                    // Never past the push's horizon: a change still uncommitted when the push
                    // began is read by the next one (unchanged contacts read again cost no
                    // provider request: their fingerprints match).
                    store
                        .advance_push_watermark(
                            &job.integration_id,
                            &checkpoint.watermark(),
                            checkpoint.epoch,
                        )
                        .await?;
                }
                store.record_sync_time(&job.integration_id, now).await?;
                self.next_sync_after(job, now).await?;
                let end = JobEnd::Finished {
                    state,
                    at: now,
                    error: None,
                };
                if !store.end_sync_job(&job.id, worker, &end).await? {
                    return Ok(());
                }
                metrics::counter!("sync_jobs_finished_total", "provider" => job.provider.as_str(), "state" => state.as_str())
                    .increment(1);
                let (kind, message) = match state {
                    JobState::Partial => (
                        "sync.partial",
                        format!(
                            "Synced contacts with {}; {} were refused",
                            job.provider, progress.contacts_failed
                        ),
                    ),
                    _ => (
                        "sync.succeeded",
                        format!("Synced contacts with {}", job.provider),
                    ),
                };
                self.activity(&job.user_id, kind, message, job, Some(&progress))
                    .await;
                tracing::info!(
                    state = state.as_str(),
                    done = progress.contacts_done,
                    failed = progress.contacts_failed,
                    skipped = progress.contacts_skipped,
                    "sync finished"
                );
            }
        }
        Ok(())
    }

    /// Whether the job is still this worker's (renewing its lease). The integration is
    /// updated before the job is marked final, so whoever sees the job end sees its effects.
    async fn still_ours(&self, worker: &str, job: &SyncJob) -> Result<bool, StoreError> {
        self.store
            .extend_lease(&job.id, worker, Utc::now() + self.lease())
            .await
    }

    /// Fails the job; the integration stays ACTIVE with the reason as its last error.
    async fn give_up(&self, worker: &str, job: &SyncJob, reason: &str) -> Result<(), StoreError> {
        if !self.still_ours(worker, job).await? {
            return Ok(());
        }
        self.store
            .set_integration_health(&job.integration_id, IntegrationStatus::Active, Some(reason))
            .await?;
        self.next_sync_after(job, Utc::now()).await?;
        self.fail(worker, job, reason).await?;
        Ok(())
    }

    /// Fails the job and marks the integration as needing the user (unless it stays ACTIVE).
    async fn broken(
        &self,
        worker: &str,
        job: &SyncJob,
        reason: &str,
        integration: IntegrationStatus,
    ) -> Result<(), StoreError> {
        if integration == IntegrationStatus::Active {
            self.fail(worker, job, reason).await?;
            return Ok(());
        }
        if !self.still_ours(worker, job).await? {
            return Ok(());
        }
        self.store
            .set_integration_health(&job.integration_id, integration, Some(reason))
            .await?;
        if self.fail(worker, job, reason).await? {
            self.activity(
                &job.user_id,
                "integration.error",
                format!("{} needs attention: {reason}", job.provider),
                job,
                None,
            )
            .await;
        }
        Ok(())
    }

    /// Marks the job FAILED; `false` if it was no longer ours.
    async fn fail(&self, worker: &str, job: &SyncJob, reason: &str) -> Result<bool, StoreError> {
        let end = JobEnd::Finished {
            state: JobState::Failed,
            at: Utc::now(),
            error: Some(reason),
        };
        if !self.store.end_sync_job(&job.id, worker, &end).await? {
            return Ok(false);
        }
        metrics::counter!("sync_jobs_finished_total", "provider" => job.provider.as_str(), "state" => "failed")
            .increment(1);
        tracing::warn!(%reason, "sync failed");
        self.activity(
            &job.user_id,
            "sync.failed",
            format!("Syncing contacts with {} failed: {reason}", job.provider),
            job,
            None,
        )
        .await;
        Ok(true)
    }

    /// The next scheduled sync is one interval after this one ended (the scheduler also moved
    /// it one interval on when it queued this job, so a job that never ends stops nothing).
    async fn next_sync_after(&self, job: &SyncJob, now: DateTime<Utc>) -> Result<(), StoreError> {
        let Some(integration) = self.store.integration_by_id(&job.integration_id).await? else {
            return Ok(());
        };
        if let Some(interval) = sync_interval(&integration) {
            let next = now.checked_add_signed(interval).unwrap_or(now);
            self.store.set_next_sync(&integration.id, next).await?;
        }
        Ok(())
    }

    /// The delay before attempt `attempts + 1`: exponential from SYNC_RETRY_MIN_DELAY, capped
    /// at SYNC_RETRY_MAX_DELAY, with jitter.
    fn backoff(&self, attempts: u32) -> Duration {
        ExponentialBuilder::default()
            .with_min_delay(self.config.retry_min_delay)
            .with_max_delay(self.config.retry_max_delay)
            .with_max_times(attempts as usize + 1)
            .with_jitter()
            .build()
            .nth(attempts.saturating_sub(1) as usize)
            .unwrap_or(self.config.retry_max_delay)
            .min(self.config.retry_max_delay)
    }

    /// Activity entries are best effort: a failure to write one is logged, never fatal.
    pub(super) async fn activity(
        &self,
        user: &UserId,
        kind: &'static str,
        message: String,
        job: &SyncJob,
        progress: Option<&JobProgress>,
    ) {
        let mut details = json!({ "provider": job.provider.as_str(), "job_id": job.id });
        if let Some(p) = progress {
            details["contacts_done"] = json!(p.contacts_done);
            details["contacts_failed"] = json!(p.contacts_failed);
            details["contacts_skipped"] = json!(p.contacts_skipped);
        }
        let entry = Activity::new(kind, message, details);
        if let Err(e) = self.store.append_activity(user, &entry).await {
            tracing::warn!(error = %crate::telemetry::error_chain(&e), kind, "cannot write an activity entry");
        }
    }
}

/// `now + wait`, saturating far in the future instead of overflowing.
/// What an attempt's outcome says about the integration's health (`None`: nothing, e.g. a
/// shutdown or a lost lease).
fn health_event(outcome: &Outcome) -> Option<(SyncHealthEvent, Option<String>)> {
    let failed = |reason: &str| Some((SyncHealthEvent::Failed, Some(reason.to_string())));
    match outcome {
        Outcome::LeaseLost | Outcome::Stopped => None,
        Outcome::Parked { .. } => Some((SyncHealthEvent::RateLimited, None)),
        Outcome::Retry { reason } | Outcome::GiveUp { reason } | Outcome::Broken { reason, .. } => {
            failed(reason)
        }
        Outcome::Done(progress) => match progress.final_state() {
            JobState::Failed => failed(
                progress
                    .failures
                    .first()
                    .map_or("every contact was refused", |f| f.message.as_str()),
            ),
            _ => Some((SyncHealthEvent::Succeeded, None)),
        },
    }
}

fn add(now: DateTime<Utc>, wait: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(wait)
        .ok()
        .and_then(|wait| now.checked_add_signed(wait))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

fn next_utc_midnight(now: DateTime<Utc>) -> DateTime<Utc> {
    let tomorrow = now.date_naive() + chrono::Days::new(1);
    tomorrow
        .and_hms_opt(0, 0, 0)
        .map(|t| t.and_utc())
        .unwrap_or(now + chrono::Duration::hours(24))
}

/// Whether a run's refusals, over more than one contact, all give one and the same reason: a
/// refusal of the set-up (a list that does not exist), not of the contacts (whose refusals
/// name each record, its address or its field).
fn refused_for_one_reason(progress: &crate::domain::sync_job::JobProgress) -> bool {
    let mut reasons = progress.failures.iter().map(|f| f.message.as_str());
    match reasons.next() {
        Some(first) => progress.contacts_failed > 1 && reasons.all(|r| r == first),
        None => true,
    }
}
