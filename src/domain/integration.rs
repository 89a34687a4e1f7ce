//! A user's connection to a provider, as the API shows it. It has no credentials field on
//! purpose: credentials stay in the vault and never travel with this type.

use std::{collections::BTreeMap, str::FromStr};

use chrono::{DateTime, Utc};

use super::{UserId, catalogue::ProviderId};

/// Connection health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntegrationStatus {
    Active,
    Error,
    NeedsReauth,
}

impl IntegrationStatus {
    pub const ALL: [IntegrationStatus; 3] = [Self::Active, Self::Error, Self::NeedsReauth];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Error => "error",
            Self::NeedsReauth => "needs_reauth",
        }
    }
}

/// A stored status name that this version does not know.
#[derive(Debug, thiserror::Error)]
#[error("unknown integration status {0:?}")]
pub struct UnknownIntegrationStatus(pub String);

impl FromStr for IntegrationStatus {
    type Err = UnknownIntegrationStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnknownIntegrationStatus(s.to_string()))
    }
}

/// A user's integration without its credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Integration {
    pub id: String,
    pub user_id: UserId,
    pub provider: ProviderId,
    pub status: IntegrationStatus,
    pub settings: BTreeMap<String, String>,
    pub last_sync_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}
