//! The webhook inbox, the event processor's leases and the reconciler's reads: the trait and
//! its types (SQL in `webhook_sql.rs`, the same on both backends).

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::StoreError;
use crate::domain::{UserId, subscription::PaymentProvider};

/// A verified webhook event as the intake stores it.
#[derive(Debug, Clone)]
pub struct NewInboxEvent<'a> {
    pub provider: PaymentProvider,
    pub event_id: &'a str,
    pub event_type: &'a str,
    pub created: DateTime<Utc>,
    pub object_id: Option<&'a str>,
    /// Events with one key are applied one at a time, in `created` order (the customer).
    pub order_key: &'a str,
    /// The raw event JSON, exactly as received.
    pub payload: &'a str,
}

/// A stored event waiting to be applied.
#[derive(Debug, Clone)]
pub struct PendingEvent {
    pub provider: PaymentProvider,
    pub event_id: String,
    pub event_type: String,
    pub created: DateTime<Utc>,
    pub payload: String,
    pub attempts: u32,
    /// When the intake stored it.
    pub received_at: DateTime<Utc>,
}

/// An event that was given up on (a dead letter), for operators.
#[derive(Debug, Clone)]
pub struct FailedEvent {
    pub provider: PaymentProvider,
    pub event_id: String,
    pub event_type: String,
    pub created: Option<DateTime<Utc>>,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub received_at: DateTime<Utc>,
}

/// A paid subscription whose stored period ended without news from the provider.
#[derive(Debug, Clone)]
pub struct OverdueSubscription {
    pub user: UserId,
    pub provider: PaymentProvider,
    pub subscription_id: String,
    pub customer_id: Option<String>,
}

/// The webhook inbox and the event processor's leases (`webhook_sql.rs`).
///
/// The inbox row is the unit of exactly-once: an event is applied in the transaction that moves
/// its row from pending to done ([`BillingTx::finish_event`]). The stream lease only orders the
/// work: one processor at a time per order key (customer), so a customer's events are applied
/// one after the other, oldest first.
#[async_trait]
pub trait WebhookStore: Send + Sync {
    /// Stores a verified event as pending; `false` when it was already stored (a duplicate).
    async fn store_event(
        &self,
        event: &NewInboxEvent<'_>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Up to 16 order keys with pending events that no processor holds, oldest event first.
    async fn ready_order_keys(&self, now: DateTime<Utc>) -> Result<Vec<String>, StoreError>;

    /// Takes the lease of an order key until `until` unless it is held (or held back) past
    /// `now`; `true` when taken.
    async fn claim_order_key(
        &self,
        key: &str,
        owner: &str,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Renews the lease; `false` when `owner` no longer holds it.
    async fn extend_order_key(
        &self,
        key: &str,
        owner: &str,
        until: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Lets go of an order key; with `hold_until`, no processor takes it before then (a back-off).
    async fn release_order_key(
        &self,
        key: &str,
        owner: &str,
        hold_until: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError>;

    /// Up to 50 of the key's pending events in the provider's order (created, then id).
    async fn pending_events(&self, key: &str) -> Result<Vec<PendingEvent>, StoreError>;

    /// Counts a failed attempt of a pending event; with `dead`, gives up on it (state failed).
    async fn event_attempt_failed(
        &self,
        provider: PaymentProvider,
        event_id: &str,
        error: &str,
        dead: bool,
    ) -> Result<(), StoreError>;

    /// Events given up on, newest first.
    async fn failed_events(&self, limit: u32) -> Result<Vec<FailedEvent>, StoreError>;

    /// Puts a failed event back to pending with its attempts reset; `false` if it is not failed.
    async fn replay_event(
        &self,
        provider: PaymentProvider,
        event_id: &str,
    ) -> Result<bool, StoreError>;

    /// How many events wait to be applied.
    async fn pending_event_count(&self) -> Result<u64, StoreError>;

    /// Whether the event is stored (pending, done or failed).
    async fn event_stored(
        &self,
        provider: PaymentProvider,
        event_id: &str,
    ) -> Result<bool, StoreError>;

    /// Paid subscriptions whose stored period ended before `ended_before` and whose state is
    /// older than that: the provider's news about them was missed.
    async fn overdue_subscriptions(
        &self,
        ended_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<OverdueSubscription>, StoreError>;

    /// Takes subscriptions that ended (cancelled, expired) with state newer than `since` and
    /// not checked since they ended, newest first, marking them checked at `now` (a replica
    /// running at the same time gets others): the user may still have another live one.
    async fn claim_ended_subscriptions(
        &self,
        since: DateTime<Utc>,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<OverdueSubscription>, StoreError>;

    /// Gives back a claimed ending whose check failed, so a later run checks it again.
    async fn unclaim_ended_subscription(&self, user: &UserId) -> Result<(), StoreError>;

    /// How far back the provider's event listing is known complete (`None`: never listed).
    async fn events_listed_through(
        &self,
        provider: PaymentProvider,
    ) -> Result<Option<DateTime<Utc>>, StoreError>;

    /// Records that the provider's events up to `at` were all listed.
    async fn set_events_listed_through(
        &self,
        provider: PaymentProvider,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;
}
