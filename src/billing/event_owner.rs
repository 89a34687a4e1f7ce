//! Whose event this is: the user who owns the customer an event names (customers are created
//! by this service, one per user), and what happens to a subscription that starts for a user
//! erased since (a PayPal approve link or a Stripe session paid after the erasure): it is
//! cancelled and refunded, and its event kept without its payload.

use super::{
    Billing,
    event_apply::{Failure, Outcome},
};
use crate::{
    domain::{UserId, subscription::PaymentProvider},
    payments::{EventAction, PaymentError, PaymentGateway, WebhookEvent},
    store::{PendingEvent, StoreError},
};

impl Billing {
    /// Whose event this is: the owner of the customer it names (customers are created by this
    /// service, one per user). A completed checkout for a customer not yet linked is linked to
    /// the user the checkout was made for.
    pub(crate) async fn event_user(
        &self,
        provider: PaymentProvider,
        event: &WebhookEvent,
    ) -> Result<Option<UserId>, StoreError> {
        let Some(customer) = event.customer_id.as_deref() else {
            return Ok(None);
        };
        let known = self.store.user_for_customer(provider, customer).await?;
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
                    if self.was_erased(&user).await? {
                        tracing::warn!(
                            "checkout completed for an erased user; recorded and not linked"
                        );
                        return Ok(None);
                    }
                    let stored = self
                        .store
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

impl Billing {
    /// The subscription an event names when it was started for a user who has been erased
    /// since (a PayPal approve link or a Stripe session paid after the erasure).
    pub(super) async fn erased_users_subscription(
        &self,
        event: &WebhookEvent,
    ) -> Result<Option<String>, StoreError> {
        let (user_ref, subscription_id) = match &event.action {
            EventAction::CheckoutCompleted {
                user_ref,
                subscription_id: Some(id),
            } => (user_ref.as_deref().or(event.customer_id.as_deref()), id),
            // PayPal's customer is the user id.
            EventAction::SubscriptionChanged {
                subscription_id, ..
            } => (event.customer_id.as_deref(), subscription_id),
            _ => return Ok(None),
        };
        let Some(user) = user_ref.and_then(|u| UserId::parse(u).ok()) else {
            return Ok(None);
        };
        let erased = self.was_erased(&user).await?;
        Ok(erased.then(|| subscription_id.clone()))
    }

    /// An erased user cannot use what was paid after the erasure: cancelled and refunded.
    pub(super) async fn refund_for_erased(
        &self,
        gateway: &dyn PaymentGateway,
        pending: &PendingEvent,
        subscription_id: &str,
    ) -> Result<Outcome, Failure> {
        let remote = match gateway.fetch_subscription(subscription_id).await {
            Ok(remote) => remote,
            Err(PaymentError::NotFound(_)) => return self.finish(pending, "erased", None).await,
            Err(e) => return Err(e.into()),
        };
        if !crate::domain::reconcile::is_live_status(remote.status) || remote.cancel_at_period_end {
            return self.finish(pending, "erased", None).await;
        }
        let refunded = gateway.cancel_and_refund(subscription_id).await?;
        tracing::warn!(
            ?refunded,
            "subscription paid after its user was erased; cancelled and refunded"
        );
        self.finish(pending, "erased_refunded", None).await
    }
}
