//! M-Pesa payment requests: the trait and its types (SQL in `mpesa_sql.rs`, the same on both
//! backends).

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::StoreError;
use crate::domain::{
    UserId,
    prepaid::{MobilePayment, PaymentState},
};

/// How a pending M-Pesa request ended.
#[derive(Debug, Clone)]
pub struct Settled<'a> {
    pub state: PaymentState,
    pub reason: Option<&'a str>,
    pub receipt: Option<&'a str>,
    pub now: DateTime<Utc>,
}

/// A new M-Pesa request, reserved before the push is sent.
#[derive(Debug, Clone)]
pub struct NewMobilePayment<'a> {
    pub id: &'a str,
    pub user: &'a UserId,
    pub tier: crate::domain::Tier,
    pub amount: i64,
    pub currency: &'a str,
    pub phone: &'a str,
    pub now: DateTime<Utc>,
}

/// M-Pesa payment requests (see `billing::mpesa`).
#[async_trait]
pub trait MobilePayments: Send + Sync {
    /// Records a pending request; `false` when the user already has one pending.
    async fn reserve_mobile_payment(&self, p: &NewMobilePayment<'_>) -> Result<bool, StoreError>;

    /// The push was accepted: its CheckoutRequestID.
    async fn mobile_payment_sent(&self, id: &str, request_id: &str) -> Result<(), StoreError>;

    /// Gives a pending request whose push answer was lost the CheckoutRequestID its callback
    /// named; `false` when it has one already, is not pending, or the id is taken.
    async fn mobile_payment_found(&self, id: &str, request_id: &str) -> Result<bool, StoreError>;

    /// The poller asked about the request (stored a hint); it asks again from `next`. Returns
    /// the round number.
    async fn mobile_payment_polled(&self, id: &str, next: DateTime<Utc>)
    -> Result<u32, StoreError>;

    /// A callback reported the pending request paid with `receipt`: kept, so no later hint
    /// fails it on a lagging STK query.
    async fn mobile_payment_reported_paid(
        &self,
        request_id: &str,
        receipt: &str,
    ) -> Result<(), StoreError>;

    /// The request with this service's id.
    async fn mobile_payment_by_id(&self, id: &str) -> Result<Option<MobilePayment>, StoreError>;

    /// The push was not sent (refused or failed): the request ends failed.
    async fn mobile_payment_not_sent(
        &self,
        id: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// The request with this CheckoutRequestID.
    async fn mobile_payment(&self, request_id: &str) -> Result<Option<MobilePayment>, StoreError>;

    /// The user's pending request, if any.
    async fn pending_mobile_payment(
        &self,
        user: &UserId,
    ) -> Result<Option<MobilePayment>, StoreError>;

    /// Users whose prepaid (M-Pesa) period ended before `now` and is still stored active.
    async fn ended_prepaid_periods(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<UserId>, StoreError>;

    /// Pending requests created before `created_before` that are due to be asked about at
    /// `now`, the least recently asked first.
    async fn stale_mobile_payments(
        &self,
        created_before: DateTime<Utc>,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<MobilePayment>, StoreError>;
}
