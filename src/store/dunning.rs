//! The dunning outbox: emails written in the transaction of the event that scheduled them, and
//! sent later by `billing::dunning_mailer` (SQL in `dunning_sql.rs`, the same on both backends).
//! One row per invoice and step (`UNIQUE (provider, invoice_id, step)`), so redeliveries and
//! replicas never schedule an email twice; a sender claims a row with a lease before sending.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::StoreError;
use crate::domain::{
    SubscriptionStatus, Tier, UserId, dunning::DunningStep, invoice::InvoiceStatus,
    subscription::PaymentProvider,
};

/// An email to schedule.
#[derive(Debug, Clone)]
pub struct NewDunningEmail<'a> {
    pub user: &'a UserId,
    pub provider: PaymentProvider,
    pub invoice_id: &'a str,
    pub step: DunningStep,
    pub recipient: Option<&'a str>,
    pub due: DateTime<Utc>,
    pub grace_ends: DateTime<Utc>,
}

/// A claimed email with what it is about, as stored now.
#[derive(Debug, Clone)]
pub struct ClaimedDunningEmail {
    pub id: String,
    pub user_id: UserId,
    pub provider: PaymentProvider,
    pub invoice_id: String,
    pub step: DunningStep,
    pub recipient: Option<String>,
    pub grace_ends: DateTime<Utc>,
    /// Deliveries tried, this one included.
    pub attempts: u32,
    pub invoice_status: Option<InvoiceStatus>,
    pub amount_due: Option<i64>,
    pub currency: Option<String>,
    pub hosted_invoice_url: Option<String>,
    pub subscription_status: Option<SubscriptionStatus>,
    pub tier: Option<Tier>,
    /// When the stored subscription state was known current.
    pub subscription_as_of: Option<DateTime<Utc>>,
    /// When the email was written to the outbox.
    pub scheduled_at: DateTime<Utc>,
    /// This sender's claim: the updates below change the row only while it is still held
    /// (a claim that ran out may have been taken by another sender, which sent the email).
    pub lease: DateTime<Utc>,
}

/// The outbox's reads and writes outside the event's transaction.
#[async_trait]
pub trait DunningOutbox: Send + Sync {
    /// Ids of pending emails due at `now` and not claimed by a live sender, oldest first.
    async fn due_dunning_emails(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<String>, StoreError>;

    /// Claims a due email until `until` and counts the attempt; `None` when it is not due, not
    /// pending, or another sender holds it.
    async fn claim_dunning_email(
        &self,
        id: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Option<ClaimedDunningEmail>, StoreError>;

    /// The SMTP server accepted the email.
    async fn dunning_email_sent(
        &self,
        id: &str,
        lease: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// The delivery failed: tried again from `next`, or given up (`failed`).
    async fn dunning_email_failed(
        &self,
        id: &str,
        lease: DateTime<Utc>,
        next: DateTime<Utc>,
        error: &str,
        give_up: bool,
    ) -> Result<(), StoreError>;

    /// The email waits for news (see `domain::dunning::Verdict::Wait`) until `next`; the
    /// attempt is not counted.
    async fn dunning_email_postponed(
        &self,
        id: &str,
        lease: DateTime<Utc>,
        next: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// The email is not sent (see `domain::dunning::Skip`).
    async fn dunning_email_skipped(
        &self,
        id: &str,
        lease: DateTime<Utc>,
        reason: &str,
    ) -> Result<(), StoreError>;
}
