//! PayPal and M-Pesa until their issue lands: every call says clearly that the provider is not
//! available, so callers get FAILED_PRECONDITION instead of a panic or a deep UNIMPLEMENTED.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{
    CheckoutRequest, CheckoutSession, PaymentError, PaymentGateway, RemoteInvoice, WebhookEvent,
    WebhookRejection,
};
use crate::domain::{Tier, UserId, reconcile::RemoteSubscription, subscription::PaymentProvider};

/// A provider this version cannot use yet.
pub struct Unavailable {
    provider: PaymentProvider,
}

impl Unavailable {
    pub fn new(provider: PaymentProvider) -> Self {
        Self { provider }
    }

    fn error(&self) -> PaymentError {
        let name = match self.provider {
            PaymentProvider::Stripe => "Stripe",
            PaymentProvider::Paypal => "PayPal",
            PaymentProvider::Mpesa => "M-Pesa",
        };
        PaymentError::NotAvailable(format!("{name} payments are not available yet; use STRIPE"))
    }
}

#[async_trait]
impl PaymentGateway for Unavailable {
    fn provider(&self) -> PaymentProvider {
        self.provider
    }

    async fn create_customer(&self, _: &UserId, _: Option<&str>) -> Result<String, PaymentError> {
        Err(self.error())
    }

    async fn create_checkout(
        &self,
        _: &CheckoutRequest<'_>,
    ) -> Result<CheckoutSession, PaymentError> {
        Err(self.error())
    }

    async fn change_tier(&self, _: &str, _: Tier) -> Result<RemoteSubscription, PaymentError> {
        Err(self.error())
    }

    async fn set_cancel_at_period_end(
        &self,
        _: &str,
        _: bool,
    ) -> Result<RemoteSubscription, PaymentError> {
        Err(self.error())
    }

    async fn create_portal(&self, _: &str, _: &str) -> Result<String, PaymentError> {
        Err(self.error())
    }

    async fn fetch_subscription(&self, _: &str) -> Result<RemoteSubscription, PaymentError> {
        Err(self.error())
    }

    async fn fetch_invoice(&self, _: &str) -> Result<RemoteInvoice, PaymentError> {
        Err(self.error())
    }

    fn verify_webhook(
        &self,
        _: Option<&str>,
        _: &[u8],
        _: DateTime<Utc>,
    ) -> Result<WebhookEvent, WebhookRejection> {
        Err(WebhookRejection::BadSignature)
    }

    fn read_event(&self, _: &[u8]) -> Result<WebhookEvent, WebhookRejection> {
        Err(WebhookRejection::BadPayload(
            "this provider has no events yet".into(),
        ))
    }

    async fn list_events(
        &self,
        _: DateTime<Utc>,
        _: Option<&str>,
    ) -> Result<super::EventPage, PaymentError> {
        Err(self.error())
    }

    async fn customer_subscriptions(
        &self,
        _: &str,
    ) -> Result<Vec<RemoteSubscription>, PaymentError> {
        Err(self.error())
    }

    async fn expire_checkout(&self, _: &str) -> Result<(), PaymentError> {
        Err(self.error())
    }

    async fn cancel_and_refund(&self, _: &str) -> Result<Option<i64>, PaymentError> {
        Err(self.error())
    }
}
