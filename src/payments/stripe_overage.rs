//! Overage at Stripe: the metered extra-card item added to a subscription, and one meter event
//! per extra card-month (`POST /v1/billing/meter_events`) carrying this service's identifier,
//! which Stripe keeps unique for at least 24 hours: a resend after a lost answer is not counted
//! again (the report row in `overage_reports` keeps the identifier for the resend).

use chrono::{DateTime, Utc};

use super::{PaymentError, stripe::StripeGateway};
use crate::domain::reconcile::RemoteSubscription;

impl StripeGateway {
    pub(super) async fn add_extra_item_raw(
        &self,
        subscription_id: &str,
    ) -> Result<RemoteSubscription, PaymentError> {
        let price = self.prices.extra_card.clone().ok_or_else(|| {
            PaymentError::NotAvailable(
                "extra cards are not sold here (STRIPE_PRICE_ID_EXTRA_CARD is not set)".into(),
            )
        })?;
        let current = self.fetch_subscription_raw(subscription_id).await?;
        if current.terms.extra_item.is_some() {
            return Ok(current);
        }
        let body = super::stripe_raw::form(&[
            ("subscription", subscription_id),
            ("price", &price),
            ("proration_behavior", "none"),
        ]);
        // The same subscription and price always send the same key: a retried opt-in adds
        // one item.
        let key = format!("nexus-extra-item-{subscription_id}-{price}");
        self.raw(
            "POST /v1/subscription_items",
            self.http
                .post(self.url("v1/subscription_items")?)
                .header("idempotency-key", key)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body),
        )
        .await?;
        self.fetch_subscription_raw(subscription_id).await
    }

    pub(super) async fn report_extra_card_raw(
        &self,
        customer_id: &str,
        identifier: &str,
        at: DateTime<Utc>,
    ) -> Result<(), PaymentError> {
        let timestamp = at.timestamp().to_string();
        let body = super::stripe_raw::form(&[
            ("event_name", self.meter_event.as_str()),
            ("payload[stripe_customer_id]", customer_id),
            ("payload[value]", "1"),
            ("identifier", identifier),
            ("timestamp", &timestamp),
        ]);
        let sent = self
            .raw(
                "POST /v1/billing/meter_events",
                self.http
                    .post(self.url("v1/billing/meter_events")?)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(body),
            )
            .await;
        match sent {
            Ok(_) => Ok(()),
            // Sent before, and its answer lost: Stripe has it.
            Err(PaymentError::Rejected(message)) if message.contains("already exists") => Ok(()),
            Err(e) => Err(e),
        }
    }
}
