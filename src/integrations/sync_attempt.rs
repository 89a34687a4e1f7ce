//! What one attempt of a sync job can end in, and how a provider's error reads as such an
//! end. Plain types and functions: the phases (`sync_push`, `sync_import`, `sync_session`) say
//! how their attempt ended, the worker (`sync_worker`) runs the attempt, and `sync_outcome`
//! records what the end means.

use chrono::{DateTime, Utc};

use crate::{
    domain::{
        contact::Contact,
        integration::IntegrationStatus,
        sync_job::{JobProgress, RecordFailure},
    },
    providers::{ProviderError, PushReport},
};

/// How an attempt ended.
pub(super) enum Outcome {
    /// Every contact was handled.
    Done(JobProgress),
    /// The process is stopping: back to the queue at once, the attempt given back.
    Stopped,
    /// Another worker holds the job now, or it was canceled or deleted: leave it alone.
    LeaseLost,
    /// A rate limit: back to the queue until `until`, the attempt given back, the park counted.
    Parked {
        until: DateTime<Utc>,
        reason: String,
    },
    /// Worth another attempt later.
    Retry { reason: String },
    /// No more attempts: the job fails, the integration stays usable (the next sync tries
    /// again).
    GiveUp { reason: String },
    /// Will not work until the user acts; `integration` is what the integration becomes.
    Broken {
        reason: String,
        integration: IntegrationStatus,
    },
}

pub(super) fn is_transient(error: &ProviderError) -> bool {
    matches!(
        error,
        ProviderError::Unavailable(_) | ProviderError::RateLimited { .. }
    )
}

/// Failures that stop the job until the user acts.
pub(super) fn broken(error: ProviderError) -> Outcome {
    Outcome::Broken {
        reason: error.to_string(),
        integration: IntegrationStatus::Error,
    }
}

/// Every contact of a refused batch, as failures with the provider's reason.
pub(super) fn batch_refused(batch: &[&Contact], reason: &str) -> PushReport {
    PushReport {
        failed: batch.len() as u64,
        failures: batch
            .iter()
            .map(|c| RecordFailure {
                email: c.email().unwrap_or_default().to_string(),
                message: reason.to_string(),
            })
            .collect(),
        retry_later: Vec::new(),
    }
}
