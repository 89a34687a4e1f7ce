//! Row types shared by both backends, and their conversion into domain types. A stored value
//! this version cannot understand is `StoreError::Corrupt`, never a default.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::types::Json;

use super::StoreError;
use crate::domain::{
    UserId,
    integration::Integration,
    subscription::{PaymentProvider, Subscription},
};

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

#[derive(sqlx::FromRow)]
pub(super) struct SubscriptionRow {
    user_id: String,
    tier: String,
    status: String,
    provider: Option<String>,
    provider_customer_id: Option<String>,
    provider_subscription_id: Option<String>,
    current_period_start: Option<DateTime<Utc>>,
    current_period_end: Option<DateTime<Utc>>,
    cancel_at_period_end: bool,
    cancel_at: Option<DateTime<Utc>>,
    past_due_since: Option<DateTime<Utc>>,
}

pub(super) const SUBSCRIPTION_QUERY: &str = "SELECT user_id, tier, status, provider, \
     provider_customer_id, provider_subscription_id, current_period_start, current_period_end, \
     cancel_at_period_end, cancel_at, past_due_since FROM subscriptions WHERE user_id = $1";

impl TryFrom<SubscriptionRow> for Subscription {
    type Error = StoreError;

    fn try_from(row: SubscriptionRow) -> Result<Self, Self::Error> {
        Ok(Subscription {
            user_id: UserId::parse(row.user_id).map_err(corrupt)?,
            tier: row.tier.parse().map_err(corrupt)?,
            status: row.status.parse().map_err(corrupt)?,
            provider: row
                .provider
                .map(|p| p.parse::<PaymentProvider>())
                .transpose()
                .map_err(corrupt)?,
            provider_customer_id: row.provider_customer_id,
            provider_subscription_id: row.provider_subscription_id,
            current_period_start: row.current_period_start,
            current_period_end: row.current_period_end,
            cancel_at_period_end: row.cancel_at_period_end,
            cancel_at: row.cancel_at,
            past_due_since: row.past_due_since,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct IntegrationRow {
    id: String,
    user_id: String,
    provider: String,
    status: String,
    settings: Json<BTreeMap<String, String>>,
    last_sync_at: Option<DateTime<Utc>>,
    last_error: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl TryFrom<IntegrationRow> for Integration {
    type Error = StoreError;

    fn try_from(row: IntegrationRow) -> Result<Self, Self::Error> {
        Ok(Integration {
            id: row.id,
            user_id: UserId::parse(row.user_id).map_err(corrupt)?,
            provider: row.provider.parse().map_err(corrupt)?,
            status: row.status.parse().map_err(corrupt)?,
            settings: row.settings.0,
            last_sync_at: row.last_sync_at,
            last_error: row.last_error,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct UsageRow {
    pub cards: i64,
    pub contacts: i64,
}

impl From<UsageRow> for crate::domain::Usage {
    fn from(row: UsageRow) -> Self {
        Self {
            cards: u64::try_from(row.cards).unwrap_or(0),
            contacts: u64::try_from(row.contacts).unwrap_or(0),
        }
    }
}

pub(super) const USAGE_QUERY: &str = "SELECT \
     (SELECT COUNT(*) FROM cards WHERE user_id = $1) AS cards, \
     (SELECT COUNT(*) FROM contacts WHERE user_id = $1) AS contacts";
