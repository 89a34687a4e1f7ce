//! The sync worker: takes due jobs from the database under a lease, pushes the user's contacts
//! page by page to the provider, checkpoints after every batch, and decides what a failure
//! means (retry with backoff, park until a rate limit resets, or stop for good).
//!
//! Any number of workers, in any number of processes on one database, share the queue: a claim
//! takes one job (`FOR UPDATE SKIP LOCKED` on PostgreSQL), a heartbeat renews the lease, and
//! every write names the worker, so a job whose lease was taken over is never written twice.

use std::{sync::Arc, time::Duration};

use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::{DateTime, Utc};
use serde_json::json;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{
    billing::Billing,
    config::SyncConfig,
    domain::{
        Limit, UserId,
        activity::Activity,
        catalogue::{AuthKind, ProviderId},
        contact::{Contact, sendable_by_email},
        contact_csv::ContactsCsv,
        credentials::Credentials,
        integration::{Integration, IntegrationStatus},
        sync_job::{Direction, JobProgress, JobState, SyncJob},
    },
    integrations::oauth::keys,
    providers::{ProviderError, Providers, PushReport},
    store::{JobEnd, NewSyncJob, Store, StoreError},
    telemetry::error_chain,
    integrations::tokens::{TokenError, TokenKeeper},
};

/// Calls the provider with the session's credentials, kept fresh: builds the client with the
/// `Providers` method `$build`, runs `$call` with retries, and after a 401 refreshes the token
/// once and calls again. Returns from the enclosing function with the outcome when no usable
/// credentials or client can be had; otherwise evaluates to the call's result.
macro_rules! call_provider {
    ($self:ident, $session:ident, $job:ident, $shutdown:ident, $build:ident, |$client:ident| $call:expr) => {
        loop {
            if let Err(outcome) = $session.keep_fresh().await {
                return Ok(Some(outcome));
            }
            let $client = match $self.providers.$build(
                $job.provider,
                $job.user_id.as_str(),
                &$session.credentials,
                &$session.integration.settings,
            ) {
                Ok(client) => client,
                Err(e) => return Ok(Some(broken(e))),
            };
            match $self.with_retries($shutdown, || $call).await {
                Err(ProviderError::Unauthorized(reason)) => {
                    if let Err(outcome) = $session.after_unauthorized(reason).await {
                        return Ok(Some(outcome));
                    }
                }
                other => break other,
            }
        }
    };
}

/// The longest wait for a rate limit or a retry spent inside an attempt; a longer one parks
/// the job and frees the worker.
const MAX_INLINE_WAIT: Duration = Duration::from_secs(60);

/// Everything a worker needs; shared by the worker loops of one process.
pub struct SyncWorker {
    store: Arc<dyn Store>,
    billing: Arc<Billing>,
    tokens: Arc<TokenKeeper>,
    providers: Arc<Providers>,
    config: SyncConfig,
    /// Unique per process; each loop appends its slot.
    name: String,
}

/// How an attempt ended.
enum Outcome {
    /// Every contact was handled.
    Done(JobProgress),
    /// The process is stopping: back to the queue at once, the attempt given back.
    Stopped,
    /// Another worker holds the job now (or it was deleted): leave it alone.
    LeaseLost,
    /// A rate limit: back to the queue until `until`, the attempt given back.
    Parked {
        until: DateTime<Utc>,
        reason: String,
    },
    /// Worth another attempt later.
    Retry { reason: String },
    /// Will not work until the user acts; `integration` is what the integration becomes.
    Broken {
        reason: String,
        integration: IntegrationStatus,
    },
}

impl SyncWorker {
    pub fn new(
        store: Arc<dyn Store>,
        billing: Arc<Billing>,
        tokens: Arc<TokenKeeper>,
        providers: Arc<Providers>,
        config: SyncConfig,
    ) -> Self {
        let name = format!(
            "{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        Self {
            store,
            billing,
            tokens,
            providers,
            config,
            name,
        }
    }

    /// Runs the configured number of worker loops until `shutdown`. Each loop finishes the
    /// batch in flight and puts its job back in the queue before returning. Dropping the
    /// returned future aborts them all (as a crash would): their leases then expire.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut loops = JoinSet::new();
        for slot in 0..self.config.workers {
            let worker = Arc::clone(&self);
            let shutdown = shutdown.clone();
            loops.spawn(async move { worker.work(slot, shutdown).await });
        }
        while loops.join_next().await.is_some() {}
    }

    async fn work(&self, slot: usize, shutdown: CancellationToken) {
        let name = format!("{}-{slot}", self.name);
        while !shutdown.is_cancelled() {
            match self.run_next(&name, &shutdown).await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %error_chain(&e), "sync worker cannot reach the database")
                }
            }
            tokio::select! {
                () = tokio::time::sleep(self.config.poll_interval) => {}
                () = shutdown.cancelled() => {}
            }
        }
    }

    /// Claims and runs one due job; `false` when none was due.
    pub async fn run_next(
        &self,
        worker: &str,
        shutdown: &CancellationToken,
    ) -> Result<bool, StoreError> {
        let now = Utc::now();
        let Some(job) = self
            .store
            .claim_sync_job(worker, now, now + self.lease())
            .await?
        else {
            return Ok(false);
        };
        let span = tracing::info_span!(
            "sync_job",
            job_id = %job.id,
            provider = job.provider.as_str(),
            attempt = job.attempts
        );
        self.run_job(worker, job, shutdown).instrument(span).await;
        Ok(true)
    }

    fn lease(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.config.lease).unwrap_or(chrono::Duration::seconds(60))
    }

    async fn run_job(&self, worker: &str, job: SyncJob, shutdown: &CancellationToken) {
        tracing::info!(
            checkpoint = job.progress.checkpoint.as_deref().unwrap_or(""),
            "sync attempt started"
        );
        let outcome = tokio::select! {
            outcome = self.attempt(worker, &job, shutdown) => match outcome {
                Ok(outcome) => outcome,
                Err(e) => {
                    tracing::warn!(error = %error_chain(&e), "sync attempt hit a database error");
                    Outcome::Retry { reason: "the service's database was unavailable".into() }
                }
            },
            () = self.heartbeat(&job.id, worker) => Outcome::LeaseLost,
        };
        if let Err(e) = self.settle(worker, &job, outcome).await {
            // The lease will expire and the job will be picked up again.
            tracing::error!(error = %error_chain(&e), "cannot record the end of a sync attempt");
        }
    }

    /// Renews the lease every third of its length; returns when the job is no longer ours.
    async fn heartbeat(&self, id: &str, worker: &str) {
        loop {
            tokio::time::sleep(self.config.lease / 3).await;
            match self
                .store
                .extend_lease(id, worker, Utc::now() + self.lease())
                .await
            {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => tracing::warn!(error = %error_chain(&e), "cannot renew a job lease"),
            }
        }
    }

    async fn attempt(
        &self,
        worker: &str,
        job: &SyncJob,
        shutdown: &CancellationToken,
    ) -> Result<Outcome, StoreError> {
        let Some(integration) = self.store.integration_by_id(&job.integration_id).await? else {
            return Ok(Outcome::LeaseLost);
        };
        if integration.status != IntegrationStatus::Active {
            return Ok(Outcome::Broken {
                reason: format!(
                    "{} needs attention: {}",
                    job.provider,
                    integration.last_error.as_deref().unwrap_or("reconnect it")
                ),
                integration: integration.status,
            });
        }
        if job.direction != Direction::Push && !job.provider.spec().can_import() {
            return Ok(Outcome::Broken {
                reason: format!("contacts cannot be imported from {}", job.provider),
                integration: IntegrationStatus::Active,
            });
        }
        let mut session = match Session::open(&self.tokens, integration).await {
            Ok(session) => session,
            Err(outcome) => return Ok(outcome),
        };
        if job.attempts == 1 {
            self.activity(
                &job.user_id,
                "sync.started",
                format!("Started syncing contacts with {}", job.provider),
                job,
                None,
            )
            .await;
        }

        let mut progress = job.progress.clone();
        let importing_already = progress
            .checkpoint
            .as_deref()
            .is_some_and(|c| c.starts_with(IMPORT_CHECKPOINT) || c == IMPORT_DONE);
        if job.direction != Direction::Import && !importing_already {
            let pushed = if job.provider.spec().batch_size == 0 {
                self.push_file(&mut session, worker, job, &mut progress, shutdown)
                    .await?
            } else {
                self.push_records(&mut session, worker, job, &mut progress, shutdown)
                    .await?
            };
            if let Some(outcome) = pushed {
                return Ok(outcome);
            }
            if job.direction == Direction::Both {
                progress.checkpoint = Some(IMPORT_CHECKPOINT.to_string());
                if !self.store.save_progress(&job.id, worker, &progress).await? {
                    return Ok(Outcome::LeaseLost);
                }
            }
        }
        if job.direction != Direction::Push
            && let Some(outcome) = self
                .import(&mut session, worker, job, &mut progress, shutdown)
                .await?
        {
            return Ok(outcome);
        }
        progress.contacts_total = progress.contacts_total.max(progress.contacts_done);
        Ok(Outcome::Done(progress))
    }

    /// Pushes the contacts page by page from the checkpoint. `Some` ends the attempt early.
    async fn push_records(
        &self,
        session: &mut Session<'_>,
        worker: &str,
        job: &SyncJob,
        progress: &mut JobProgress,
        shutdown: &CancellationToken,
    ) -> Result<Option<Outcome>, StoreError> {
        progress.contacts_total = self.store.contact_count(&job.user_id).await?;
        let batch_size = job.provider.spec().batch_size.max(1);
        loop {
            if shutdown.is_cancelled() {
                return Ok(Some(Outcome::Stopped));
            }
            let page = self
                .store
                .contacts_after(&job.user_id, progress.checkpoint.as_deref(), batch_size)
                .await?;
            let Some(last) = page.last().map(|c| c.id.clone()) else {
                break;
            };
            let (sendable, without_email, duplicates): (Vec<&Contact>, u64, u64) =
                if keyed_by_email(job.provider) {
                    sendable_by_email(&page)
                } else {
                    (page.iter().collect(), 0, 0)
                };
            if !sendable.is_empty() {
                let pushed = call_provider!(self, session, job, shutdown, sink, |sink| sink
                    .push(&sendable));
                match pushed {
                    Ok(report) => progress.add_failures(report.failed, report.failures),
                    Err(ProviderError::BatchRefused(reason)) => {
                        let failed = batch_refused(&sendable, &reason);
                        progress.add_failures(failed.failed, failed.failures);
                    }
                    Err(e) if shutdown.is_cancelled() && is_transient(&e) => {
                        return Ok(Some(Outcome::Stopped));
                    }
                    Err(e) => return Ok(Some(self.outcome_of(e))),
                }
            }
            progress.contacts_done += page.len() as u64;
            progress.add_skipped(without_email, "no email address");
            progress.add_skipped(duplicates, "email address repeated in a batch");
            progress.checkpoint = Some(last);
            if !self.store.save_progress(&job.id, worker, progress).await? {
                return Ok(Some(Outcome::LeaseLost));
            }
            if page.len() < batch_size as usize {
                break;
            }
        }
        Ok(None)
    }

    /// Writes every contact into one CSV file and uploads it whole (Google Drive, Dropbox).
    /// There is no checkpoint: a retry uploads the whole file again, which replaces it.
    async fn push_file(
        &self,
        session: &mut Session<'_>,
        worker: &str,
        job: &SyncJob,
        progress: &mut JobProgress,
        shutdown: &CancellationToken,
    ) -> Result<Option<Outcome>, StoreError> {
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
                    match self
                        .tokens
                        .remember(&session.integration, crate::integrations::oauth::keys::FILE_ID, &file_id)
                        .await
                    {
                        Ok(()) => {}
                        Err(TokenError::Store(e)) => return Err(e),
                        Err(e) => return Ok(Some(session_outcome(e))),
                    }
                }
                progress.contacts_total = rows;
                progress.contacts_done = rows;
                if !self.store.save_progress(&job.id, worker, progress).await? {
                    return Ok(Some(Outcome::LeaseLost));
                }
                Ok(None)
            }
            Err(e) if shutdown.is_cancelled() && is_transient(&e) => Ok(Some(Outcome::Stopped)),
            Err(e) => Ok(Some(self.outcome_of(e))),
        }
    }

    /// Reads the provider's contacts page by page from the checkpoint into the user's
    /// contacts, within the plan's contact limit.
    async fn import(
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
                Err(e) => return Ok(Some(self.outcome_of(e))),
            };
            let counts = self
                .store
                .import_contacts(&job.user_id, &page.contacts, limit, Utc::now())
                .await?;
            tracing::debug!(
                inserted = counts.inserted,
                updated = counts.updated,
                kept_newer = counts.kept_newer,
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

    /// Calls the provider, retrying outages and short rate limits within the attempt
    /// (honouring `Retry-After`), with exponential backoff and jitter between tries.
    async fn with_retries<T, F, Fut>(
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
                } => delays.next().map(|backoff| retry_after.unwrap_or(backoff)),
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

    fn outcome_of(&self, error: ProviderError) -> Outcome {
        let now = Utc::now();
        match error {
            ProviderError::RateLimited { retry_after, daily } => {
                let until = match retry_after {
                    Some(wait) => now + chrono::Duration::from_std(wait).unwrap_or_default(),
                    None if daily => next_utc_midnight(now),
                    None => {
                        now + chrono::Duration::from_std(self.config.retry_min_delay)
                            .unwrap_or_default()
                    }
                };
                let reason = if daily {
                    "the provider's daily request limit is used up; the sync resumes when it resets"
                } else {
                    "the provider asked to slow down; the sync resumes shortly"
                };
                Outcome::Parked {
                    until,
                    reason: reason.into(),
                }
            }
            ProviderError::Unavailable(reason) => Outcome::Retry { reason },
            other => broken(other),
        }
    }

    /// Records how the attempt ended: the job's state, the integration's health, the activity
    /// log, and the next recurring sync.
    async fn settle(
        &self,
        worker: &str,
        job: &SyncJob,
        outcome: Outcome,
    ) -> Result<(), StoreError> {
        let now = Utc::now();
        let store = &self.store;
        match outcome {
            Outcome::LeaseLost => {
                tracing::warn!("the job was taken over or deleted; this worker stops it");
            }
            Outcome::Stopped => {
                let end = JobEnd::Retry {
                    at: now,
                    error: None,
                    count_attempt: false,
                };
                store.end_sync_job(&job.id, worker, &end).await?;
                tracing::info!("sync attempt stopped by shutdown; the job is queued again");
            }
            Outcome::Parked { until, reason } => {
                let end = JobEnd::Retry {
                    at: until,
                    error: Some(&reason),
                    count_attempt: false,
                };
                store.end_sync_job(&job.id, worker, &end).await?;
                tracing::info!(resume_at = %until, "sync parked by a rate limit");
            }
            Outcome::Retry { reason } if job.attempts < job.max_attempts => {
                let at = now
                    + chrono::Duration::from_std(self.backoff(job.attempts)).unwrap_or_default();
                let end = JobEnd::Retry {
                    at,
                    error: Some(&reason),
                    count_attempt: true,
                };
                store.end_sync_job(&job.id, worker, &end).await?;
                tracing::warn!(%reason, next_attempt_at = %at, "sync attempt failed; will retry");
            }
            Outcome::Retry { reason } => {
                let reason = format!("gave up after {} attempts: {reason}", job.attempts);
                if self.fail(worker, job, &reason).await? {
                    self.store
                        .set_integration_health(
                            &job.integration_id,
                            IntegrationStatus::Active,
                            Some(&reason),
                        )
                        .await?;
                    self.schedule_next(job, now).await?;
                }
            }
            Outcome::Broken {
                reason,
                integration,
            } => {
                if self.fail(worker, job, &reason).await?
                    && integration != IntegrationStatus::Active
                {
                    store
                        .set_integration_health(&job.integration_id, integration, Some(&reason))
                        .await?;
                    self.activity(
                        &job.user_id,
                        "integration.error",
                        format!("{} needs attention: {reason}", job.provider),
                        job,
                        None,
                    )
                    .await;
                }
            }
            Outcome::Done(progress) => {
                let state = progress.final_state();
                let end = JobEnd::Finished {
                    state,
                    at: now,
                    error: None,
                };
                if !store.end_sync_job(&job.id, worker, &end).await? {
                    return Ok(());
                }
                store.record_sync_time(&job.integration_id, now).await?;
                metrics::counter!("sync_jobs_finished_total", "provider" => job.provider.as_str(), "state" => state.as_str())
                    .increment(1);
                let (kind, message) = match state {
                    JobState::Partial => (
                        "sync.partial",
                        format!(
                            "Synced contacts to {}; {} were refused",
                            job.provider, progress.contacts_failed
                        ),
                    ),
                    _ => (
                        "sync.succeeded",
                        format!("Synced contacts to {}", job.provider),
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
                self.schedule_next(job, now).await?;
            }
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
            format!("Syncing contacts to {} failed: {reason}", job.provider),
            job,
            None,
        )
        .await;
        Ok(true)
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

    /// Queues the next sync when the integration has `syncInterval`.
    async fn schedule_next(&self, job: &SyncJob, now: DateTime<Utc>) -> Result<(), StoreError> {
        let Some(integration) = self.store.integration_by_id(&job.integration_id).await? else {
            return Ok(());
        };
        if let Some(interval) = sync_interval(&integration) {
            let (next, _) = self
                .store
                .enqueue_sync(&NewSyncJob {
                    integration_id: &integration.id,
                    user: &job.user_id,
                    direction: job.direction,
                    max_attempts: self.config.max_attempts,
                    due: now + interval,
                    now,
                })
                .await?;
            tracing::info!(next_job = %next.id, due = %next.next_attempt_at, "next recurring sync queued");
        }
        Ok(())
    }

    /// Activity entries are best effort: a failure to write one is logged, never fatal.
    async fn activity(
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
            tracing::warn!(error = %error_chain(&e), kind, "cannot write an activity entry");
        }
    }
}

/// Checkpoints of the import phase start with this (push checkpoints are contact ids).
const IMPORT_CHECKPOINT: &str = "import:";
/// The checkpoint of an import that read its last page.
const IMPORT_DONE: &str = "import-done";
/// Contacts read per query when building a file.
const FILE_PAGE: u32 = 1000;

/// The credentials one attempt works with: refreshed before they expire, and once after a 401.
struct Session<'a> {
    tokens: &'a TokenKeeper,
    integration: Integration,
    credentials: Credentials,
    oauth: bool,
    forced_refresh: bool,
}

impl<'a> Session<'a> {
    async fn open(tokens: &'a TokenKeeper, integration: Integration) -> Result<Self, Outcome> {
        let oauth = integration.provider.spec().auth == AuthKind::OAuth2;
        let credentials = tokens
            .credentials(&integration, None)
            .await
            .map_err(session_outcome)?;
        Ok(Self {
            tokens,
            integration,
            credentials,
            oauth,
            forced_refresh: false,
        })
    }

    /// Refreshes the access token when it is about to expire (OAuth providers only).
    async fn keep_fresh(&mut self) -> Result<(), Outcome> {
        if self.oauth {
            self.credentials = self
                .tokens
                .credentials(&self.integration, None)
                .await
                .map_err(session_outcome)?;
        }
        Ok(())
    }

    /// A 401: one forced refresh per attempt for OAuth providers; otherwise the credentials
    /// are refused for good.
    async fn after_unauthorized(&mut self, reason: String) -> Result<(), Outcome> {
        if !self.oauth || self.forced_refresh {
            return Err(broken(ProviderError::Unauthorized(reason)));
        }
        self.forced_refresh = true;
        tracing::info!("the provider refused the access token; refreshing it once");
        let rejected = self.credentials.get(keys::ACCESS_TOKEN).map(str::to_string);
        self.credentials = self
            .tokens
            .credentials(&self.integration, rejected.as_deref())
            .await
            .map_err(session_outcome)?;
        Ok(())
    }
}

/// What a failure to get credentials means for the attempt.
fn session_outcome(error: TokenError) -> Outcome {
    match error {
        TokenError::NeedsReauth(reason) => Outcome::Broken {
            reason,
            integration: IntegrationStatus::NeedsReauth,
        },
        TokenError::Unreadable => Outcome::Broken {
            reason: error.to_string(),
            integration: IntegrationStatus::Error,
        },
        TokenError::Gone => Outcome::LeaseLost,
        TokenError::Unavailable(reason) => Outcome::Retry { reason },
        TokenError::Store(e) => {
            tracing::warn!(error = %error_chain(&e), "cannot read credentials");
            Outcome::Retry {
                reason: "the service's database was unavailable".into(),
            }
        }
    }
}

/// The recurring interval of an integration, if it has one.
pub fn sync_interval(integration: &Integration) -> Option<chrono::Duration> {
    let secs: i64 = integration
        .settings
        .get("syncInterval")?
        .trim()
        .parse()
        .ok()?;
    (secs > 0).then(|| chrono::Duration::seconds(secs))
}

/// Providers that identify contacts by email (a contact without one cannot be sent).
fn keyed_by_email(provider: ProviderId) -> bool {
    !matches!(provider, ProviderId::Zapier)
}

fn is_transient(error: &ProviderError) -> bool {
    matches!(
        error,
        ProviderError::Unavailable(_) | ProviderError::RateLimited { .. }
    )
}

/// Failures that stop the job until the user acts.
fn broken(error: ProviderError) -> Outcome {
    Outcome::Broken {
        reason: error.to_string(),
        integration: IntegrationStatus::Error,
    }
}

/// Every contact of a refused batch, as failures with the provider's reason.
fn batch_refused(batch: &[&Contact], reason: &str) -> PushReport {
    PushReport {
        failed: batch.len() as u64,
        failures: batch
            .iter()
            .map(|c| crate::domain::sync_job::RecordFailure {
                email: c.email().unwrap_or_default().to_string(),
                message: reason.to_string(),
            })
            .collect(),
    }
}

fn next_utc_midnight(now: DateTime<Utc>) -> DateTime<Utc> {
    let tomorrow = now.date_naive() + chrono::Days::new(1);
    tomorrow
        .and_hms_opt(0, 0, 0)
        .map(|t| t.and_utc())
        .unwrap_or(now + chrono::Duration::hours(24))
}
