//! Background upkeep of integrations, on every replica at once:
//! - the scheduler queues a sync for each integration whose `syncInterval` has elapsed since its
//!   last run (one set-based statement per tick; the one-active-job index makes it idempotent,
//!   and `SKIP LOCKED` lets replicas share the due rows). Nothing depends on the previous job
//!   having finished well: a crash between two jobs delays the next by at most one tick.
//! - retention deletes finished jobs and activity entries older than RETENTION_DAYS, in small
//!   batches so no statement holds locks for long.

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::{store::Store, telemetry::error_chain};

/// Integrations queued per statement; a tick repeats while a full batch was due.
const SCHEDULE_BATCH: u32 = 500;
/// Rows deleted per statement, with a short pause between statements.
const PRUNE_BATCH: u32 = 500;
const PRUNE_PAUSE: Duration = Duration::from_millis(50);
/// How often retention runs.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Time between scheduler ticks (SYNC_SCHEDULER_INTERVAL).
    pub tick: Duration,
    /// Attempts of each queued job (SYNC_MAX_ATTEMPTS).
    pub max_attempts: u32,
    /// Finished jobs and activity entries are kept this long (RETENTION_DAYS).
    pub retention: chrono::Duration,
}

/// Runs the scheduler and retention until `shutdown`.
pub async fn run(store: Arc<dyn Store>, config: SchedulerConfig, shutdown: CancellationToken) {
    let mut last_prune: Option<tokio::time::Instant> = None;
    while !shutdown.is_cancelled() {
        let ticked = tick(store.as_ref(), &config).await;
        if ticked.is_ok() {
            // A heartbeat: alerts tell a stopped scheduler from an idle one.
            metrics::counter!("sync_scheduler_ticks_total").increment(1);
        }
        if let Err(e) = ticked {
            tracing::warn!(error = %error_chain(&e), "the sync scheduler cannot reach the database");
        }
        if last_prune.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
            last_prune = Some(tokio::time::Instant::now());
            match prune(store.as_ref(), config.retention, &shutdown).await {
                Ok((jobs, activity)) if jobs + activity > 0 => {
                    tracing::info!(jobs, activity, "pruned old sync jobs and activity entries")
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %error_chain(&e), "retention cannot reach the database")
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(config.tick) => {}
            () = shutdown.cancelled() => {}
        }
    }
}

/// One scheduler tick: queues every due integration, a batch at a time. Returns how many
/// were due.
pub async fn tick(
    store: &dyn Store,
    config: &SchedulerConfig,
) -> Result<u64, crate::store::StoreError> {
    let mut total = 0;
    // Bounded: a backlog larger than this waits for the next tick.
    for _ in 0..20 {
        let due = store
            .schedule_due_syncs(Utc::now(), SCHEDULE_BATCH, config.max_attempts)
            .await?;
        total += due;
        if due < u64::from(SCHEDULE_BATCH) {
            break;
        }
    }
    if total > 0 {
        metrics::counter!("sync_jobs_scheduled_total").increment(total);
        tracing::debug!(due = total, "scheduled syncs queued");
    }
    Ok(total)
}

/// Deletes everything older than the retention period, a batch at a time.
pub async fn prune(
    store: &dyn Store,
    retention: chrono::Duration,
    shutdown: &CancellationToken,
) -> Result<(u64, u64), crate::store::StoreError> {
    let before = Utc::now() - retention;
    let (mut jobs, mut activity) = (0, 0);
    while !shutdown.is_cancelled() {
        let pruned = store.prune(before, PRUNE_BATCH).await?;
        jobs += pruned.jobs;
        activity += pruned.activity;
        metrics::counter!("retention_pruned_total", "table" => "sync_jobs").increment(pruned.jobs);
        metrics::counter!("retention_pruned_total", "table" => "activity_logs")
            .increment(pruned.activity);
        if pruned.jobs < u64::from(PRUNE_BATCH) && pruned.activity < u64::from(PRUNE_BATCH) {
            break;
        }
        tokio::time::sleep(PRUNE_PAUSE).await;
    }
    Ok((jobs, activity))
}
