//! Extra cards reported to Stripe's meter (overage): one row per user, month and extra card,
//! written before its meter event is sent and marked once Stripe took it (SQL in
//! `overage_sql.rs`, the same on both backends).

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::StoreError;
use crate::domain::UserId;

/// A user who opted in to extra cards, with what the report needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverageSubscriber {
    pub user_id: UserId,
    pub customer_id: String,
    pub cards: u64,
}

/// One extra card-month to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraCardMonth {
    pub user_id: UserId,
    /// `YYYY-MM`, UTC.
    pub month: String,
    /// 1 for the first extra card of the month, 2 for the second...
    pub n: u64,
    pub customer_id: String,
    /// Sent with the meter event: Stripe counts one event per identifier.
    pub identifier: String,
}

#[async_trait]
pub trait OverageStore: Send + Sync {
    /// Users with overage on a PRO subscription at Stripe, after `after` (by user id).
    async fn overage_subscribers(
        &self,
        after: Option<&UserId>,
        limit: u32,
    ) -> Result<Vec<OverageSubscriber>, StoreError>;

    /// How many extra cards of `month` were written down for the user.
    async fn extra_cards_written(&self, user: &UserId, month: &str) -> Result<u64, StoreError>;

    /// Writes extra card-months down (those already there stay as they are), only while the
    /// user's opt-in is still stored (not after an opt-out or an erasure).
    async fn write_extra_cards(&self, months: &[ExtraCardMonth]) -> Result<(), StoreError>;

    /// Extra card-months not yet taken by Stripe, oldest first.
    async fn unreported_extra_cards(&self, limit: u32) -> Result<Vec<ExtraCardMonth>, StoreError>;

    /// Stripe took the event of `identifier` (or had it already).
    async fn extra_card_reported(
        &self,
        identifier: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// Sending the event failed: sent again next round, or never (`give_up`: Stripe refused
    /// it for good).
    async fn extra_card_not_reported(
        &self,
        identifier: &str,
        error: &str,
        give_up: bool,
    ) -> Result<(), StoreError>;
}
