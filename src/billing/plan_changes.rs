//! Plan changes, cancellation at the period end and resumption: decided from the provider's
//! current subscription (a cancel scheduled in the billing portal whose webhook has not landed
//! yet is still resumable), with no database transaction open while the provider is called.
//!
//! Two changes for one user never interleave: each holds the user's change lock (a short lease
//! in the database, so it works across replicas) from the first provider call until the answer
//! is stored.

use std::time::Duration as StdDuration;

use chrono::{Duration, Utc};

use super::{Applied, Billing, BillingError, Entitlement, apply_remote};
use crate::{
    domain::{
        Subscription, Tier, UserId, freshness::Evidence, pricing::BillingInterval,
        reconcile::RemoteSubscription, reconcile::is_live_status, subscription::PaymentProvider,
    },
    payments::{NOT_CONFIGURED, PaymentError, PaymentGateway},
};

/// How long one change may hold the lock (a crashed holder's lock expires after it).
const CHANGE_LOCK: Duration = Duration::seconds(60);
/// How long a change waits for another one of the same user before giving up.
const CHANGE_WAIT: StdDuration = StdDuration::from_secs(30);

/// A plan change's result: the subscription as stored, and where the payer approves the change
/// when the provider asks for that (PayPal): the tier changes once it is approved.
#[derive(Debug, Clone)]
pub struct PlanChange {
    pub entitlement: Entitlement,
    pub approval_url: Option<String>,
}

/// A change asked of the provider.
enum Change {
    Tier(Tier, BillingInterval),
    CancelAtPeriodEnd(bool),
}

impl Billing {
    /// Switches the live subscription to `tier` billed every `interval` (`None`: the current
    /// interval), prorated; FREE means cancel at period end.
    #[tracing::instrument(skip_all, fields(user_id = %user, tier = %tier))]
    pub async fn change_plan(
        &self,
        user: &UserId,
        tier: Tier,
        interval: Option<BillingInterval>,
    ) -> Result<PlanChange, BillingError> {
        if !tier.is_paid() {
            return self
                .change_at_provider(user, |remote| {
                    Ok((!remote.cancel_at_period_end).then_some(Change::CancelAtPeriodEnd(true)))
                })
                .await;
        }
        self.change_at_provider(user, |remote| {
            let cancelling = remote.cancel_at_period_end || remote.cancel_at.is_some();
            let current = remote.terms.interval.unwrap_or(BillingInterval::Month);
            let interval = interval.unwrap_or(current);
            // Stripe's classic billing mode keeps every item of a subscription on one interval,
            // and the extra-card item is monthly.
            if interval == BillingInterval::Year && remote.terms.extra_item.is_some() {
                return Err(BillingError::Precondition(
                    "this subscription has the monthly extra-card item (overage): it cannot be billed yearly".into(),
                ));
            }
            if remote.tier == Some(tier) && interval == current && !cancelling {
                return Ok(None);
            }
            Ok(Some(Change::Tier(tier, interval)))
        })
        .await
    }

    /// Cancels at the end of the paid period (`cancel == true`), or undoes that.
    #[tracing::instrument(skip_all, fields(user_id = %user, cancel = cancel))]
    pub async fn set_cancel(
        &self,
        user: &UserId,
        cancel: bool,
    ) -> Result<Entitlement, BillingError> {
        let change = self.change_at_provider(user, |remote| {
            if !cancel && remote.cancel_at.is_some() && !remote.cancel_at_period_end {
                return Err(BillingError::Precondition(
                    "this subscription has a fixed end date set in the billing portal; change it there".into(),
                ));
            }
            if remote.cancel_at_period_end == cancel {
                return Ok(None);
            }
            Ok(Some(Change::CancelAtPeriodEnd(cancel)))
        })
        .await?;
        Ok(change.entitlement)
    }

    /// Runs one change of the user's subscription at its provider under the user's change lock.
    async fn change_at_provider(
        &self,
        user: &UserId,
        decide: impl FnOnce(&RemoteSubscription) -> Result<Option<Change>, BillingError>,
    ) -> Result<PlanChange, BillingError> {
        // Fail fast when payments are off, before touching the database.
        if self.gateways.configured().is_empty() {
            return Err(PaymentError::NotAvailable(NOT_CONFIGURED.into()).into());
        }
        let owner = uuid::Uuid::new_v4().to_string();
        self.lock_changes(user, &owner).await?;
        let result = self
            .while_locked(user, &owner, self.change_locked(user, decide))
            .await;
        if let Err(e) = self.store.unlock_subscription_changes(user, &owner).await {
            // The lock expires on its own.
            tracing::warn!(error = %e, "cannot release a subscription-change lock");
        }
        result
    }

    /// Runs `work` while renewing the user's change lock held by `owner`.
    pub(super) async fn while_locked<T>(
        &self,
        user: &UserId,
        owner: &str,
        work: impl std::future::Future<Output = T>,
    ) -> T {
        let every = (CHANGE_LOCK / 3)
            .to_std()
            .unwrap_or(StdDuration::from_secs(20));
        super::lease::renewing(work, every, || {
            self.store
                .extend_subscription_lock(user, owner, Utc::now() + CHANGE_LOCK)
        })
        .await
    }

    pub(super) async fn lock_changes(
        &self,
        user: &UserId,
        owner: &str,
    ) -> Result<(), BillingError> {
        let started = tokio::time::Instant::now();
        loop {
            let now = Utc::now();
            if self
                .store
                .lock_subscription_changes(user, owner, now + CHANGE_LOCK, now)
                .await?
            {
                return Ok(());
            }
            if started.elapsed() > CHANGE_WAIT {
                return Err(BillingError::Busy(
                    "another change of this subscription is in progress; try again".into(),
                ));
            }
            tokio::time::sleep(StdDuration::from_millis(50)).await;
        }
    }

    async fn change_locked(
        &self,
        user: &UserId,
        decide: impl FnOnce(&RemoteSubscription) -> Result<Option<Change>, BillingError>,
    ) -> Result<PlanChange, BillingError> {
        let no_subscription = || {
            BillingError::Precondition(
                "you have no paid subscription; start one with CreateCheckoutSession".into(),
            )
        };
        let stored = self.entitlement(user).await?.subscription;
        let (Some(provider), Some(subscription_id)) =
            (stored.provider, stored.provider_subscription_id.clone())
        else {
            return Err(no_subscription());
        };
        if provider == PaymentProvider::Mpesa {
            let end = stored
                .current_period_end
                .map(|t| format!(" on {}", t.date_naive()))
                .unwrap_or_default();
            return Err(BillingError::Precondition(format!(
                "an M-Pesa period is prepaid and ends{end} without renewing: there is nothing to cancel or resume; to change tier, pay for a period of the new tier with M-Pesa (it follows the days already paid)"
            )));
        }
        let gateway = self.gateways.get(provider)?;
        // The provider's state now, not the stored row (its news may still be on the way).
        // Times of fetches are the provider's (see `payments::provider_clock`).
        let fetched_at = gateway.now();
        let remote = gateway.fetch_subscription(&subscription_id).await?;
        let live = is_live_status(remote.status)
            && remote.access_ends_at().is_none_or(|end| end > fetched_at);
        let change = if live { decide(&remote)? } else { None };
        let (remote, evidence, approval_url) = match change {
            None => (remote, Evidence::Fetched(fetched_at), None),
            Some(change) => {
                let started = gateway.now();
                let (answer, approval) = send(gateway.as_ref(), &subscription_id, change).await?;
                (answer, Evidence::Fetched(started), approval)
            }
        };
        let next = self.store_remote(user, &remote, evidence).await?;
        if !live {
            return Err(no_subscription());
        }
        Ok(PlanChange {
            entitlement: self.entitle(next),
            approval_url,
        })
    }

    /// Stores the provider's answer in a short transaction (never over newer state) and returns
    /// what is stored.
    pub(crate) async fn store_remote(
        &self,
        user: &UserId,
        remote: &RemoteSubscription,
        evidence: Evidence,
    ) -> Result<Subscription, BillingError> {
        let mut remote = remote.clone();
        let mut evidence = evidence;
        for _ in 0..3 {
            let mut tx = self.store.begin().await?;
            let stored = tx.lock_subscription(user).await?;
            match apply_remote(tx.as_mut(), &stored, &remote, evidence).await? {
                Applied::Stored(next) => {
                    tx.commit().await?;
                    return Ok(next);
                }
                // Read in the second of the stored snapshot: read again after it.
                Applied::NeedsFetch => {
                    drop(tx);
                    let gateway = self.gateways.get(remote.provider)?;
                    super::event_apply::wait_until(
                        gateway.as_ref(),
                        super::event_apply::next_second(evidence.as_of()),
                    )
                    .await;
                    let started = gateway.now();
                    remote = gateway.fetch_subscription(&remote.id).await?;
                    evidence = Evidence::Fetched(started);
                }
                // A webhook stored newer news meanwhile: that is the state.
                _ => {
                    tx.commit().await?;
                    return Ok(stored);
                }
            }
        }
        Ok(self.entitlement(user).await?.subscription)
    }
}

/// Sends the change; the provider's answer and, for a change the payer must approve, where.
async fn send(
    gateway: &dyn PaymentGateway,
    subscription_id: &str,
    change: Change,
) -> Result<(RemoteSubscription, Option<String>), BillingError> {
    Ok(match change {
        Change::Tier(tier, interval) => {
            let change = gateway.change_tier(subscription_id, tier, interval).await?;
            (change.subscription, change.approval_url)
        }
        Change::CancelAtPeriodEnd(cancel) => (
            gateway
                .set_cancel_at_period_end(subscription_id, cancel)
                .await?,
            None,
        ),
    })
}
