//! The sync worker: takes due jobs from the database under a lease and runs one attempt of each
//! (import, then push), saving a checkpoint after every batch. What an attempt's end means is
//! decided in `sync_outcome.rs`; the phases are in `sync_push.rs` and `sync_import.rs`.
//!
//! Any number of workers, in any number of processes on one database, share the queue: a claim
//! takes one job (`FOR UPDATE SKIP LOCKED` on PostgreSQL), a heartbeat renews the lease, and
//! every write names the worker, so a job whose lease was taken over is never written twice.
//! A panic inside an attempt is caught, logged with the job id and counted; the job is retried
//! like any failed attempt and the worker loop goes on.

use std::{panic::AssertUnwindSafe, sync::Arc};

use chrono::{DateTime, SubsecRound, Utc};
use futures_util::FutureExt;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use super::sync_context::SyncWorker;
use super::{sync_attempt::Outcome, sync_session::Session};
use crate::{
    domain::{
        integration::{Integration, IntegrationStatus},
        sync_job::{Direction, PushCheckpoint, SyncJob},
    },
    store::StoreError,
    telemetry::error_chain,
};

impl SyncWorker {
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
            // A panic that escaped the attempt's own guard (in claiming or settling) must not
            // end the loop either.
            let next = AssertUnwindSafe(self.run_next(&name, &shutdown)).catch_unwind();
            match next.await {
                Ok(Ok(true)) => continue,
                Ok(Ok(false)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %error_chain(&e), "sync worker cannot reach the database")
                }
                Err(_) => {
                    metrics::counter!("sync_worker_panics_total").increment(1);
                    tracing::error!(worker = %name, "a sync worker loop panicked outside an attempt; it goes on");
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
        // Whole microseconds, so the stored claim time reads back equal on both backends.
        let now = Utc::now().trunc_subsecs(6);
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
        self.run_job(worker, job, now, shutdown)
            .instrument(span)
            .await;
        Ok(true)
    }

    async fn run_job(
        &self,
        worker: &str,
        job: SyncJob,
        claimed_at: DateTime<Utc>,
        shutdown: &CancellationToken,
    ) {
        // A job whose workers kept dying (the lease ran out each time) comes back with its
        // attempts spent: it ends here instead of running once more.
        if job.attempts_in_a_row > job.max_attempts {
            let reason = format!(
                "gave up after {} attempts (the workers running it stopped without finishing)",
                job.max_attempts
            );
            let outcome = Outcome::GiveUp { reason };
            if let Err(e) = self.settle(worker, &job, outcome).await {
                tracing::error!(error = %error_chain(&e), "cannot record the end of a sync job");
            }
            return;
        }
        let first_start = job.started_at == Some(claimed_at);
        tracing::info!(
            checkpoint = job.progress.checkpoint.as_deref().unwrap_or(""),
            first_start,
            "sync attempt started"
        );
        let attempt = AssertUnwindSafe(self.attempt(worker, &job, first_start, shutdown));
        let outcome = tokio::select! {
            outcome = attempt.catch_unwind() => match outcome {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(e)) => {
                    tracing::warn!(error = %error_chain(&e), "sync attempt hit a database error");
                    Outcome::Retry { reason: "the service's database was unavailable".into() }
                }
                Err(_) => {
                    metrics::counter!("sync_worker_panics_total").increment(1);
                    tracing::error!(job_id = %job.id, "sync attempt panicked; the job will be retried");
                    Outcome::Retry { reason: "the sync hit an internal error".into() }
                }
            },
            () = self.heartbeat(&job.id, worker) => Outcome::LeaseLost,
        };
        if let Err(e) = self.settle(worker, &job, outcome).await {
            // The lease will expire and the job will be picked up again.
            tracing::error!(error = %error_chain(&e), "cannot record the end of a sync attempt");
        }
    }

    /// Renews the lease every third of its length; returns when the job is no longer ours
    /// (taken over, canceled or deleted), or when the lease could not be renewed for so long
    /// that another worker may take the job over: this one stops before that can happen.
    async fn heartbeat(&self, id: &str, worker: &str) {
        let mut held_until = tokio::time::Instant::now() + self.config.lease;
        loop {
            tokio::time::sleep(self.config.lease / 3).await;
            let asked = tokio::time::Instant::now();
            match self
                .store
                .extend_lease(id, worker, Utc::now() + self.lease())
                .await
            {
                Ok(true) => held_until = asked + self.config.lease,
                Ok(false) => return,
                Err(e) => {
                    tracing::warn!(error = %error_chain(&e), "cannot renew a job lease");
                    if tokio::time::Instant::now() + self.config.lease / 3 >= held_until {
                        tracing::warn!(
                            "the job lease runs out before it can be renewed; this worker stops the attempt"
                        );
                        return;
                    }
                }
            }
        }
    }

    /// One attempt: import first (IMPORT, BOTH), then push (PUSH, BOTH), so a BOTH run never
    /// pushes what it is about to read back, and contacts the import left unchanged are not
    /// pushed again.
    async fn attempt(
        &self,
        worker: &str,
        job: &SyncJob,
        first_start: bool,
        shutdown: &CancellationToken,
    ) -> Result<Outcome, StoreError> {
        // The destination epoch before the settings: a change saves the new settings first and
        // then moves the epoch on, so this attempt works either for the destination of its
        // epoch or for a later one, and then remembers nothing of what it sent.
        let epoch = self.store.destination_epoch(&job.integration_id).await?;
        let Some(integration) = self.store.integration_by_id(&job.integration_id).await? else {
            return Ok(Outcome::LeaseLost);
        };
        if let Some(outcome) = unusable(job, &integration) {
            return Ok(outcome);
        }
        let mut session = match Session::open(&self.tokens, integration, epoch).await {
            Ok(session) => session,
            Err(outcome) => return Ok(outcome),
        };
        if first_start {
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
        let pushing_already = progress
            .checkpoint
            .as_deref()
            .is_some_and(PushCheckpoint::is_push);
        if job.direction != Direction::Push
            && !pushing_already
            && let Some(outcome) = self
                .import(&mut session, worker, job, &mut progress, shutdown)
                .await?
        {
            return Ok(outcome);
        }
        if job.direction != Direction::Import {
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
        }
        progress.contacts_total = progress.contacts_total.max(progress.contacts_done);
        Ok(Outcome::Done(progress))
    }
}

/// Why a job cannot run at all, before any provider call.
fn unusable(job: &SyncJob, integration: &Integration) -> Option<Outcome> {
    if integration.status != IntegrationStatus::Active {
        return Some(Outcome::Broken {
            reason: format!(
                "{} needs attention: {}",
                job.provider,
                integration.last_error.as_deref().unwrap_or("reconnect it")
            ),
            integration: integration.status,
        });
    }
    if job.direction != Direction::Push && !job.provider.spec().can_import() {
        return Some(Outcome::Broken {
            reason: format!("contacts cannot be imported from {}", job.provider),
            integration: IntegrationStatus::Active,
        });
    }
    None
}
