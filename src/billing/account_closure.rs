//! What billing does when a user's data is erased: open checkouts are expired (so nothing can
//! be paid for an erased user) and the live subscription is cancelled now, without a refund.
//! The provider is called first and the database is changed by the erasure afterwards, so a
//! failure here leaves the user's data in place for a retry.

use chrono::Utc;

use super::{Billing, BillingError};
use crate::{
    domain::{
        UserId, freshness::Evidence, reconcile::is_live_status, subscription::PaymentProvider,
    },
    payments::PaymentError,
};

impl Billing {
    /// Expires the user's open checkout sessions at their providers; how many could not be
    /// (best effort: an unexpired session of an erased user is ignored when it completes,
    /// because its customer is gone).
    pub async fn expire_open_checkouts(&self, user: &UserId) -> Result<u32, BillingError> {
        let mut failed = 0;
        for (provider, id) in self.store.open_checkouts(user).await? {
            let expired = match self.gateways.get(provider) {
                Ok(gateway) => gateway.expire_checkout(&id).await,
                Err(e) => Err(e),
            };
            match expired {
                Ok(_) => self.store.checkout_expired(&id).await?,
                Err(e) => {
                    failed += 1;
                    tracing::warn!(provider = provider.as_str(), error = %e, "cannot expire a checkout session of a user being erased");
                }
            }
        }
        Ok(failed)
    }

    /// Cancels the user's live subscription now (no refund: the user is deleting their
    /// account) and stores the cancelled state. Returns the provider when one was cancelled;
    /// `None` when nothing was live or renews (an M-Pesa period is prepaid and just ends). A
    /// provider that cannot be reached fails the erasure, which keeps the user's data until a
    /// retry succeeds: deleting it would leave a subscription charging nobody we know.
    pub async fn cancel_for_erasure(
        &self,
        user: &UserId,
    ) -> Result<Option<PaymentProvider>, BillingError> {
        let stored = self.entitlement(user).await?.subscription;
        let (Some(provider), Some(subscription_id)) =
            (stored.provider, stored.provider_subscription_id.clone())
        else {
            return Ok(None);
        };
        if provider == PaymentProvider::Mpesa {
            return Ok(None);
        }
        let gateway = self.gateways.get(provider)?;
        let owner = uuid::Uuid::new_v4().to_string();
        self.lock_changes(user, &owner).await?;
        let result = async {
            let remote = match gateway.fetch_subscription(&subscription_id).await {
                Ok(remote) => remote,
                Err(PaymentError::NotFound(_)) => return Ok(None),
                Err(e) => return Err(BillingError::from(e)),
            };
            if !is_live_status(remote.status) {
                return Ok(None);
            }
            gateway.cancel_now(&subscription_id).await?;
            let fetched_at = Utc::now();
            let after = gateway.fetch_subscription(&subscription_id).await?;
            self.store_remote(user, &after, Evidence::Fetched(fetched_at))
                .await?;
            tracing::info!(
                provider = provider.as_str(),
                "subscription cancelled for an erasure"
            );
            Ok(Some(provider))
        }
        .await;
        if let Err(e) = self.store.unlock_subscription_changes(user, &owner).await {
            tracing::warn!(error = %e, "cannot release a subscription-change lock");
        }
        result
    }
}
