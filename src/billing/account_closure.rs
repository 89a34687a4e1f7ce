//! What billing does when a user's data is erased: open checkouts are expired (so nothing can
//! be paid for an erased user) and every subscription of the user still live at a provider is
//! cancelled now, without a refund: the stored one, the customer's others at Stripe (a second
//! one flagged as a duplicate, one paid whose webhooks are still on their way) and the PayPal
//! subscriptions the user's checkouts started (PayPal cannot list a customer's subscriptions,
//! but a PayPal checkout's id is its subscription's). The provider is called first and the
//! database is changed by the erasure afterwards, so a failure here leaves the user's data in
//! place for a retry.

use super::{Billing, BillingError};
use crate::{
    domain::{
        UserId, freshness::Evidence, reconcile::is_live_status, subscription::PaymentProvider,
    },
    payments::{Expiry, PaymentError},
};

impl Billing {
    /// Expires the user's open checkout sessions at their providers; how many could not be
    /// (best effort: a session that can still be paid is found by [`Self::cancel_for_erasure`]
    /// once paid only if its provider lists it, so a failure is reported).
    pub async fn expire_open_checkouts(&self, user: &UserId) -> Result<u32, BillingError> {
        let mut failed = 0;
        for (provider, id) in self.store.open_checkouts(user, true).await? {
            let expired = match self.gateways.get(provider) {
                Ok(gateway) => gateway.expire_checkout(&id).await,
                Err(e) => Err(e),
            };
            match expired {
                Ok(Expiry::Expired | Expiry::AlreadyPaid { .. }) => {
                    self.store.checkout_expired(&id).await?
                }
                Err(e) => {
                    failed += 1;
                    tracing::warn!(provider = provider.as_str(), error = %e, "cannot expire a checkout session of a user being erased");
                }
            }
        }
        Ok(failed)
    }

    /// Cancels every live subscription of the user now (no refund: the user is deleting their
    /// account) and stores the stored one's cancelled state. Returns the provider when one was
    /// cancelled; `None` when nothing was live or renews (an M-Pesa period is prepaid and just
    /// ends). A provider that cannot be reached fails the erasure, which keeps the user's data
    /// until a retry succeeds: deleting it would leave a subscription charging nobody we know.
    pub async fn cancel_for_erasure(
        &self,
        user: &UserId,
    ) -> Result<Option<PaymentProvider>, BillingError> {
        let candidates = self.subscriptions_of(user).await?;
        if candidates.is_empty() {
            // Nothing to lock either (the lock would create a row for an erased user).
            return Ok(None);
        }
        let owner = uuid::Uuid::new_v4().to_string();
        self.lock_changes(user, &owner).await?;
        let result = self
            .while_locked(user, &owner, self.cancel_everything(user, candidates))
            .await;
        if let Err(e) = self.store.unlock_subscription_changes(user, &owner).await {
            tracing::warn!(error = %e, "cannot release a subscription-change lock");
        }
        result
    }

    async fn cancel_everything(
        &self,
        user: &UserId,
        candidates: Vec<(PaymentProvider, String)>,
    ) -> Result<Option<PaymentProvider>, BillingError> {
        let stored = self.entitlement(user).await?.subscription;
        let mut cancelled = None;
        for (provider, subscription_id) in candidates {
            let gateway = self.gateways.get(provider)?;
            let remote = match gateway.fetch_subscription(&subscription_id).await {
                Ok(remote) => remote,
                Err(PaymentError::NotFound(_)) => continue,
                Err(e) => return Err(e.into()),
            };
            if !is_live_status(remote.status) {
                continue;
            }
            gateway.cancel_now(&subscription_id).await?;
            cancelled = Some(provider);
            tracing::info!(
                provider = provider.as_str(),
                "subscription cancelled for an erasure"
            );
            if stored.provider_subscription_id.as_deref() == Some(subscription_id.as_str()) {
                let fetched_at = gateway.now();
                let after = gateway.fetch_subscription(&subscription_id).await?;
                self.store_remote(user, &after, Evidence::Fetched(fetched_at))
                    .await?;
            }
        }
        Ok(cancelled)
    }

    /// Every subscription the user may have at a provider that renews (not M-Pesa).
    async fn subscriptions_of(
        &self,
        user: &UserId,
    ) -> Result<Vec<(PaymentProvider, String)>, BillingError> {
        let stored = self.entitlement(user).await?.subscription;
        let mut found: Vec<(PaymentProvider, String)> = Vec::new();
        if let (Some(provider), Some(id)) = (stored.provider, stored.provider_subscription_id)
            && provider != PaymentProvider::Mpesa
        {
            found.push((provider, id));
        }
        if let Ok(stripe) = self.gateways.get(PaymentProvider::Stripe)
            && let Some(customer) = self
                .store
                .billing_customer(user, PaymentProvider::Stripe)
                .await?
        {
            for remote in stripe.customer_subscriptions(&customer).await? {
                if is_live_status(remote.status) {
                    found.push((PaymentProvider::Stripe, remote.id));
                }
            }
        }
        for (provider, id) in self.store.open_checkouts(user, false).await? {
            if provider == PaymentProvider::Paypal {
                found.push((provider, id));
            }
        }
        let mut seen = std::collections::HashSet::new();
        found.retain(|entry| seen.insert(entry.clone()));
        Ok(found)
    }
}
