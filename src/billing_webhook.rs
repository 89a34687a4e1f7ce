//! Processing a payment provider's webhook delivery, exactly once and in any order.
//!
//! Steps: verify the signature over the raw bytes; read the event; then, in ONE store
//! transaction: record the event id in the inbox (a duplicate stops here), lock the user's
//! subscription row, fetch the named objects from the provider (events are triggers, the
//! provider's current state is the truth), store that state, append activity entries, commit.
//! Any failure rolls everything back, the caller answers 5xx and the provider redelivers.

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::{
    billing::{Billing, apply_remote},
    domain::{
        UserId,
        activity::Activity,
        invoice::InvoiceStatus,
        subscription::{PaymentProvider, Subscription},
    },
    payments::{
        EventAction, InvoiceOutcome, PaymentError, PaymentGateway, WebhookEvent, WebhookRejection,
    },
    store::{BillingTx, StoreError},
};

/// How a delivery ended, when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookOutcome {
    /// Processed now.
    Processed,
    /// Processed before: nothing changed.
    Duplicate,
    /// Recorded, but about a customer this service does not know.
    UnknownCustomer,
}

/// Why a delivery was not processed.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("payments are not configured")]
    NotConfigured,
    /// Bad signature or unreadable event: 400, nothing stored.
    #[error(transparent)]
    Rejected(#[from] WebhookRejection),
    /// Processing failed: 5xx, nothing stored, the provider retries.
    #[error("database: {0}")]
    Store(#[from] StoreError),
    #[error("payment provider: {0}")]
    Provider(#[from] PaymentError),
}

impl Billing {
    /// Handles one delivery to the Stripe webhook route.
    #[tracing::instrument(skip_all, fields(event_id, event_type))]
    pub async fn stripe_webhook(
        &self,
        signature: Option<&str>,
        body: &[u8],
    ) -> Result<WebhookOutcome, WebhookError> {
        let gateway = self
            .gateways()
            .get(PaymentProvider::Stripe)
            .map_err(|_| WebhookError::NotConfigured)?;
        let now = Utc::now();
        let event = gateway.verify_webhook(signature, body, now)?;
        let span = tracing::Span::current();
        span.record("event_id", event.id.as_str());
        span.record("event_type", event.event_type.as_str());
        let outcome = self.process(gateway.as_ref(), &event, now).await?;
        tracing::info!(?outcome, "webhook handled");
        Ok(outcome)
    }

    async fn process(
        &self,
        gateway: &dyn PaymentGateway,
        event: &WebhookEvent,
        now: DateTime<Utc>,
    ) -> Result<WebhookOutcome, WebhookError> {
        let provider = gateway.provider();
        // Fast path for redeliveries; the inbox insert below is what makes it exactly once.
        if self.store().webhook_recorded(provider, &event.id).await? {
            return Ok(WebhookOutcome::Duplicate);
        }
        let user = self.event_user(provider, event).await?;
        let mut tx = self.store().begin().await?;
        if !tx
            .record_webhook(provider, &event.id, &event.event_type)
            .await?
        {
            return Ok(WebhookOutcome::Duplicate);
        }
        if matches!(event.action, EventAction::Ignore) {
            tx.commit().await?;
            return Ok(WebhookOutcome::Processed);
        }
        let Some(user) = user else {
            tracing::warn!(
                customer_id = event.customer_id.as_deref().unwrap_or("none"),
                "webhook event for a customer this service does not know; recorded and ignored"
            );
            tx.commit().await?;
            return Ok(WebhookOutcome::UnknownCustomer);
        };
        let stored = tx.lock_subscription(&user).await?;
        let seen_at = event.created.min(now);
        let mut work = EventWork {
            tx: tx.as_mut(),
            gateway,
            user: &user,
            customer_id: event.customer_id.as_deref(),
            stored,
            seen_at,
        };
        match &event.action {
            EventAction::CheckoutCompleted {
                subscription_id, ..
            } => {
                if let Some(id) = subscription_id {
                    work.sync_subscription(id).await?;
                }
            }
            EventAction::SubscriptionChanged { subscription_id } => {
                work.sync_subscription(subscription_id).await?;
            }
            EventAction::InvoiceChanged {
                invoice_id,
                subscription_id,
                outcome,
            } => {
                work.sync_invoice(invoice_id, *outcome).await?;
                if let Some(id) = subscription_id {
                    work.sync_subscription(id).await?;
                }
            }
            EventAction::TrialWillEnd {
                subscription_id,
                trial_end,
            } => {
                let entry = Activity::new(
                    "subscription.trial_will_end",
                    match trial_end {
                        Some(end) => format!("trial ends on {}", end.date_naive()),
                        None => "trial ends soon".to_string(),
                    },
                    json!({ "subscription_id": subscription_id,
                            "trial_end": trial_end.map(|t| t.to_rfc3339()) }),
                );
                work.tx.log_activity(&user, &entry).await?;
            }
            EventAction::Ignore => {}
        }
        tx.commit().await?;
        Ok(WebhookOutcome::Processed)
    }

    /// Whose event this is: the owner of the customer it names (customers are created by this
    /// service, one per user). A completed checkout for a customer not yet linked is linked to
    /// the user the checkout was made for.
    async fn event_user(
        &self,
        provider: PaymentProvider,
        event: &WebhookEvent,
    ) -> Result<Option<UserId>, StoreError> {
        let Some(customer) = event.customer_id.as_deref() else {
            return Ok(None);
        };
        let known = self.store().user_for_customer(provider, customer).await?;
        if let EventAction::CheckoutCompleted {
            user_ref: Some(user_ref),
            ..
        } = &event.action
        {
            match (&known, UserId::parse(user_ref.as_str())) {
                (Some(owner), Ok(user)) if owner != &user => {
                    tracing::warn!(
                        "checkout completed for a user other than the customer's owner; using the owner"
                    );
                }
                (None, Ok(user)) => {
                    let stored = self
                        .store()
                        .save_billing_customer(&user, provider, customer)
                        .await?;
                    if stored == customer {
                        return Ok(Some(user));
                    }
                    tracing::warn!("checkout customer differs from the user's stored customer");
                    return Ok(None);
                }
                _ => {}
            }
        }
        Ok(known)
    }
}

/// One event's work inside its transaction.
struct EventWork<'a> {
    tx: &'a mut dyn BillingTx,
    gateway: &'a dyn PaymentGateway,
    user: &'a UserId,
    customer_id: Option<&'a str>,
    stored: Subscription,
    seen_at: DateTime<Utc>,
}

impl EventWork<'_> {
    /// Fetches the subscription and applies its current state.
    async fn sync_subscription(&mut self, subscription_id: &str) -> Result<(), WebhookError> {
        let remote = self.gateway.fetch_subscription(subscription_id).await?;
        if self.customer_id.is_some_and(|c| c != remote.customer_id) {
            tracing::warn!(
                subscription_id,
                "subscription belongs to another customer; ignored"
            );
            return Ok(());
        }
        self.stored = apply_remote(self.tx, &self.stored, &remote, self.seen_at).await?;
        Ok(())
    }

    /// Fetches the invoice, stores it, and logs what the event says happened to it.
    async fn sync_invoice(
        &mut self,
        invoice_id: &str,
        outcome: InvoiceOutcome,
    ) -> Result<(), WebhookError> {
        let remote = self.gateway.fetch_invoice(invoice_id).await?;
        if self
            .customer_id
            .zip(remote.customer_id.as_deref())
            .is_some_and(|(event, invoice)| event != invoice)
        {
            tracing::warn!(invoice_id, "invoice belongs to another customer; ignored");
            return Ok(());
        }
        let invoice = remote.for_user(self.user.clone());
        let before = self.tx.save_invoice(&invoice).await?;
        let amount = format!(
            "{}.{:02} {}",
            invoice.amount_paid.max(invoice.amount_due) / 100,
            invoice.amount_paid.max(invoice.amount_due) % 100,
            invoice.currency.to_uppercase()
        );
        let details = json!({
            "invoice_id": invoice.provider_invoice_id,
            "amount_due": invoice.amount_due,
            "amount_paid": invoice.amount_paid,
            "currency": invoice.currency,
            "status": invoice.status.as_str(),
        });
        let entry = match outcome {
            // invoice.paid and invoice.payment_succeeded both arrive for one payment: log it
            // once, when the stored invoice becomes paid.
            InvoiceOutcome::Paid
                if invoice.status == InvoiceStatus::Paid && before != Some(InvoiceStatus::Paid) =>
            {
                Some(Activity::new(
                    "payment.succeeded",
                    format!("payment of {amount} received"),
                    details,
                ))
            }
            InvoiceOutcome::Paid => None,
            InvoiceOutcome::PaymentFailed => Some(Activity::new(
                "payment.failed",
                format!("payment of {amount} failed"),
                details,
            )),
            InvoiceOutcome::ActionRequired => Some(Activity::new(
                "payment.action_required",
                format!("payment of {amount} needs the customer to confirm it"),
                details,
            )),
        };
        if let Some(entry) = entry {
            self.tx.log_activity(self.user, &entry).await?;
        }
        Ok(())
    }
}
