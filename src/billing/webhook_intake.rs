//! Webhook intake (Stripe and PayPal; M-Pesa's unsigned callbacks are in `mpesa.rs`): verify
//! the delivery over its raw bytes, read the event, store it in the inbox and answer. Nothing else: the intake never calls the payment provider, so it answers in
//! milliseconds whatever the provider's latency, and the event processor applies the event
//! afterwards. A duplicate delivery finds the event stored and is answered 2xx as well.

use chrono::Utc;

use super::Billing;
use crate::{
    domain::subscription::PaymentProvider,
    payments::{PaymentGateway, WebhookRejection},
    store::{NewInboxEvent, StoreError},
};

/// How a delivery ended, when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookOutcome {
    /// Stored; the event processor applies it.
    Stored,
    /// Stored before: nothing changed.
    Duplicate,
}

/// Why a delivery was not stored.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("payments are not configured")]
    NotConfigured,
    /// Bad signature or unreadable event: 400, nothing stored.
    #[error(transparent)]
    Rejected(#[from] WebhookRejection),
    /// The database could not store it: 503, the provider redelivers.
    #[error("database: {0}")]
    Store(#[from] StoreError),
}

impl Billing {
    /// Handles one delivery to a provider's webhook route.
    #[tracing::instrument(skip_all, fields(provider = provider.as_str(), event_id, event_type))]
    pub async fn webhook(
        &self,
        provider: PaymentProvider,
        headers: &http::HeaderMap,
        body: &[u8],
    ) -> Result<WebhookOutcome, WebhookError> {
        let gateway = self
            .gateways
            .get(provider)
            .map_err(|_| WebhookError::NotConfigured)?;
        let now = Utc::now();
        let event = gateway.verify_webhook(headers, body, now).await?;
        // Verified bytes are JSON (the event was read from them), so they are UTF-8 text.
        let payload = std::str::from_utf8(body)
            .map_err(|_| WebhookRejection::BadPayload("not UTF-8".into()))?;
        Ok(self.store_event(gateway.as_ref(), &event, payload).await?)
    }

    /// Stores an event listed from the provider's API (by the reconciler) for processing.
    pub(crate) async fn take_in(
        &self,
        gateway: &dyn PaymentGateway,
        payload: &str,
    ) -> Result<WebhookOutcome, WebhookError> {
        let event = gateway.read_event(payload.as_bytes())?;
        Ok(self.store_event(gateway, &event, payload).await?)
    }

    pub(super) async fn store_event(
        &self,
        gateway: &dyn PaymentGateway,
        event: &crate::payments::WebhookEvent,
        payload: &str,
    ) -> Result<WebhookOutcome, StoreError> {
        let span = tracing::Span::current();
        span.record("event_id", event.id.as_str());
        span.record("event_type", event.event_type.as_str());
        let stored = self
            .store
            .store_event(
                &NewInboxEvent {
                    provider: gateway.provider(),
                    event_id: &event.id,
                    event_type: &event.event_type,
                    created: event.created,
                    object_id: event.object_id.as_deref(),
                    order_key: event.order_key(),
                    payload,
                },
                Utc::now(),
            )
            .await?;
        if stored {
            self.stored_events.notify_waiters();
            tracing::debug!("webhook event stored");
            Ok(WebhookOutcome::Stored)
        } else {
            Ok(WebhookOutcome::Duplicate)
        }
    }
}
