//! Provider webhooks in (HubSpot, Mailchimp, Zoho CRM) and each integration's health: the
//! traits and their types (SQL in `provider_webhook_sql.rs`, the same on both backends).
//!
//! The inbox row is the unit of exactly-once, as for the billing webhooks: a delivery stores
//! one row per event and connection, unique by its key, so a redelivery stores nothing; a row
//! moves from pending to done only under the connection's lease, which one webhook worker at
//! a time holds.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::StoreError;
use crate::domain::{
    UserId,
    catalogue::ProviderId,
    health::{HealthFacts, SyncHealthEvent},
    integration::IntegrationStatus,
};

/// How a connection hears of its provider's changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookRegistration {
    pub integration_id: String,
    pub user_id: UserId,
    pub provider: ProviderId,
    /// The provider account events name (HubSpot's portal id).
    pub account: Option<String>,
    /// SHA-256 (hex) of the secret a delivery carries: Mailchimp's URL secret, Zoho's token.
    pub secret_hash: Option<String>,
    /// The provider's id of the registration: Mailchimp's webhook id, Zoho's channel id.
    pub remote_id: Option<String>,
    /// When the provider stops sending (Zoho channels expire).
    pub expires_at: Option<DateTime<Utc>>,
}

/// One verified event, attributed to one connection.
#[derive(Debug, Clone)]
pub struct NewProviderEvent {
    pub integration_id: String,
    /// Unique per event and connection: a redelivery has the same key.
    pub delivery_key: String,
    /// The provider's event type (`contact.creation`, `unsubscribe`, `update`...).
    pub kind: String,
    /// The event as the provider sent it (one array element or form, JSON-encoded).
    pub payload: String,
}

/// A stored event waiting to be applied.
#[derive(Debug, Clone)]
pub struct ProviderEvent {
    pub id: i64,
    pub kind: String,
    pub payload: String,
    pub received_at: DateTime<Utc>,
    pub attempts: u32,
}

/// The webhook inbox of the contact providers.
#[async_trait]
pub trait ProviderWebhookStore: Send + Sync {
    /// Saves (or replaces) how a connection hears of changes; `false` when the integration is
    /// gone. A held lease is kept.
    async fn save_webhook_registration(
        &self,
        registration: &WebhookRegistration,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// The connection's registration, if any.
    async fn webhook_registration(
        &self,
        integration_id: &str,
    ) -> Result<Option<WebhookRegistration>, StoreError>;

    /// The registrations of every connection to a provider account (one HubSpot portal can be
    /// connected by several users).
    async fn registrations_of_account(
        &self,
        provider: ProviderId,
        account: &str,
    ) -> Result<Vec<WebhookRegistration>, StoreError>;

    /// The registration whose secret hashes to `secret_hash`.
    async fn registration_of_secret(
        &self,
        provider: ProviderId,
        secret_hash: &str,
    ) -> Result<Option<WebhookRegistration>, StoreError>;

    /// Registrations of ACTIVE connections to a provider expiring before `before` whose
    /// renewal no replica has claimed (or whose claim ran out) at `now`.
    async fn expiring_registrations(
        &self,
        provider: ProviderId,
        before: DateTime<Utc>,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<WebhookRegistration>, StoreError>;

    /// Claims the renewal of a registration until `until` (a failed one waits until then);
    /// `false` when another replica holds it.
    async fn claim_renewal(
        &self,
        integration_id: &str,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Makes `new_hash` the secret of the registration with this remote id, keeping the one
    /// before as the previous secret; `false` when the registration is gone or replaced.
    async fn rotate_webhook_secret(
        &self,
        integration_id: &str,
        remote_id: &str,
        new_hash: &str,
    ) -> Result<bool, StoreError>;

    /// Puts the previous secret back after a renewal the provider did not take.
    async fn restore_webhook_secret(
        &self,
        integration_id: &str,
        failed_hash: &str,
    ) -> Result<(), StoreError>;

    /// Records a renewal: the new expiry, the claim released; `false` when the registration
    /// is gone or replaced meanwhile.
    async fn renewed(
        &self,
        integration_id: &str,
        remote_id: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Stores the events in one transaction, skipping those stored before and those whose
    /// integration is gone; returns how many were new.
    async fn store_provider_events(
        &self,
        events: &[NewProviderEvent],
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError>;

    /// Takes the lease of one connection with due pending events that no worker holds.
    async fn claim_webhook_integration(
        &self,
        owner: &str,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Option<String>, StoreError>;

    /// Up to `limit` of the connection's due pending events, oldest first.
    async fn pending_provider_events(
        &self,
        integration_id: &str,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<ProviderEvent>, StoreError>;

    /// Marks the events applied (done) with `outcome`, only while `owner` holds the lease
    /// (checked in the same statement); `false` when it no longer does (nothing is marked).
    async fn finish_provider_events(
        &self,
        integration_id: &str,
        owner: &str,
        ids: &[i64],
        outcome: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// The events wait until `retry_at`, only while `owner` holds the lease. With `count`, a
    /// failed attempt is counted and those that reach `max_attempts` are given up (failed);
    /// without (a rate limit), the attempt is not counted. How many were given up.
    #[allow(clippy::too_many_arguments)]
    async fn retry_provider_events(
        &self,
        integration_id: &str,
        owner: &str,
        ids: &[i64],
        error: &str,
        retry_at: DateTime<Utc>,
        count: bool,
        max_attempts: u32,
    ) -> Result<u64, StoreError>;

    /// Lets go of the connection's lease.
    async fn release_webhook_integration(
        &self,
        integration_id: &str,
        owner: &str,
    ) -> Result<(), StoreError>;

    /// How many events wait to be applied.
    async fn pending_provider_event_count(&self) -> Result<u64, StoreError>;

    /// Deletes applied or given-up events older than `before`; how many.
    async fn prune_provider_events(&self, before: DateTime<Utc>) -> Result<u64, StoreError>;

    /// Remembers that an address unsubscribed at the provider (no push subscribes it again).
    async fn remember_unsubscribe(
        &self,
        integration_id: &str,
        email: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// Forgets it (the address subscribed again at the provider).
    async fn forget_unsubscribe(&self, integration_id: &str, email: &str)
    -> Result<(), StoreError>;

    /// Records that a push is owed to the connection (a change came while its push ran).
    async fn owe_push(&self, integration_id: &str, now: DateTime<Utc>) -> Result<(), StoreError>;

    /// Takes the owed push, if any; `true` when one was owed.
    async fn take_owed_push(&self, integration_id: &str) -> Result<bool, StoreError>;

    /// Which of `emails` (lower case) unsubscribed from this connection's provider.
    async fn unsubscribed_among(
        &self,
        integration_id: &str,
        emails: &[String],
    ) -> Result<Vec<String>, StoreError>;
}

/// Each connection's health facts.
#[async_trait]
pub trait HealthStore: Send + Sync {
    /// Records how a sync attempt ended: a success zeroes the failures in a row, a failure
    /// adds one; failures and rate-limit waits are kept a day (older ones are pruned here).
    async fn record_sync_health(
        &self,
        integration_id: &str,
        event: SyncHealthEvent,
        error: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// The health facts of the user's integrations, by integration id; counts since `since`.
    async fn health_facts(
        &self,
        user: &UserId,
        since: DateTime<Utc>,
    ) -> Result<Vec<(String, HealthFacts)>, StoreError>;

    /// Every integration's provider, status and failures in a row (capped at `cap`), counted:
    /// the `integration_health` metric's census.
    async fn health_census(
        &self,
        cap: u32,
    ) -> Result<Vec<(ProviderId, IntegrationStatus, u32, u64)>, StoreError>;
}
