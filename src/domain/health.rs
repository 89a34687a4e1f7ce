//! An integration's health, as the dashboard and the `integration_health` metric show it: one
//! state from the connection's status and its sync attempts failed in a row.

use chrono::{DateTime, Utc};

use super::integration::IntegrationStatus;

/// Attempts failed in a row from which a connection is FAILING (fewer: DEGRADED).
pub const FAILING_AFTER: u32 = 3;

/// How a connection is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HealthState {
    /// The last sync attempt succeeded (or none has failed yet).
    Healthy,
    /// One or two attempts in a row failed: retried by itself.
    Degraded,
    /// [`FAILING_AFTER`] or more attempts in a row failed.
    Failing,
    /// The user must act: connect again (refused or expired credentials, a wrong setting).
    NeedsAttention,
}

impl HealthState {
    pub const ALL: [HealthState; 4] = [
        Self::Healthy,
        Self::Degraded,
        Self::Failing,
        Self::NeedsAttention,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Degraded => "degraded",
            Self::Failing => "failing",
            Self::NeedsAttention => "needs_attention",
        }
    }

    /// The state of a connection with this status and these attempts failed in a row.
    pub fn of(status: IntegrationStatus, failures_in_a_row: u32) -> Self {
        match status {
            IntegrationStatus::Error | IntegrationStatus::NeedsReauth => Self::NeedsAttention,
            IntegrationStatus::Active if failures_in_a_row >= FAILING_AFTER => Self::Failing,
            IntegrationStatus::Active if failures_in_a_row > 0 => Self::Degraded,
            IntegrationStatus::Active => Self::Healthy,
        }
    }
}

/// What the store keeps about a connection's syncs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthFacts {
    pub failures_in_a_row: u32,
    pub last_success_at: Option<DateTime<Utc>>,
    /// Why the last failed attempt failed (safe to show: provider texts are scrubbed).
    pub last_failure: Option<String>,
    /// Failed sync attempts over the last 24 hours.
    pub failures_24h: u64,
    /// Sync attempts parked by a provider's rate limit over the last 24 hours.
    pub rate_limit_waits_24h: u64,
}

/// How one sync attempt ended, for health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncHealthEvent {
    Succeeded,
    Failed,
    RateLimited,
}

/// A connection's health as shown to its user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntegrationHealth {
    pub state: HealthState,
    pub facts: HealthFacts,
    /// Why it is not healthy, safe to show (the integration's last error).
    pub last_error: Option<String>,
    /// When the OAuth access token expires (refreshed by itself before then).
    pub token_expires_at: Option<DateTime<Utc>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_follows_the_status_then_the_failures_in_a_row() {
        use IntegrationStatus::*;
        assert_eq!(HealthState::of(Active, 0), HealthState::Healthy);
        assert_eq!(HealthState::of(Active, 1), HealthState::Degraded);
        assert_eq!(
            HealthState::of(Active, FAILING_AFTER - 1),
            HealthState::Degraded
        );
        assert_eq!(HealthState::of(Active, FAILING_AFTER), HealthState::Failing);
        assert_eq!(HealthState::of(NeedsReauth, 0), HealthState::NeedsAttention);
        assert_eq!(HealthState::of(Error, 9), HealthState::NeedsAttention);
    }
}
