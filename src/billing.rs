//! Billing use cases: subscription state, usage and limit checks, checkout, plan changes,
//! cancellation, the billing portal and invoices. Plain async code over the store, the payment
//! gateways and the pure rules in `domain`; the gRPC layer only converts to and from the wire.
//!
//! Every change to a subscription happens inside a store transaction that holds the user's
//! subscription row locked while the provider is called, so two changes (an RPC and a webhook,
//! or two webhooks) are applied one after the other, each on the state the other left.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};

use crate::{
    domain::{
        LimitCheck, Resource, Subscription, Tier, Usage, UserId,
        activity::Activity,
        invoice::StoredInvoice,
        reconcile::{Reconciled, RemoteSubscription, is_live_status, reconcile},
        subscription::PaymentProvider,
        usage::check_limit,
    },
    payments::{CheckoutRequest, CheckoutSession, Gateways, PaymentError, PaymentGateway},
    store::{BillingTx, InvoiceCursor, Store, StoreError},
};

/// A failed billing request, sorted by what the caller can do about it.
#[derive(Debug, thiserror::Error)]
pub enum BillingError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Payment(#[from] PaymentError),
    /// The request itself is wrong.
    #[error("{0}")]
    Invalid(String),
    /// The request is fine but the user's state does not allow it.
    #[error("{0}")]
    Precondition(String),
}

/// Checks redirect URLs against the allowed origins (the open-redirect guard).
pub type RedirectGuard = Box<dyn Fn(&str) -> bool + Send + Sync>;

pub struct Billing {
    store: Arc<dyn Store>,
    gateways: Gateways,
    past_due_grace: Duration,
    redirect_allowed: RedirectGuard,
}

/// A subscription with the tier it entitles to now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entitlement {
    pub subscription: Subscription,
    pub effective_tier: Tier,
}

/// What a checkout needs from the caller.
#[derive(Debug, Clone)]
pub struct NewCheckout<'a> {
    pub user: &'a UserId,
    pub email: Option<&'a str>,
    pub provider: PaymentProvider,
    pub tier: Tier,
    pub success_url: &'a str,
    pub cancel_url: &'a str,
    pub phone_number: Option<&'a str>,
}

/// Largest invoice page.
pub const MAX_PAGE_SIZE: u32 = 100;
/// Invoice page size when the caller does not say.
pub const DEFAULT_PAGE_SIZE: u32 = 20;

impl Billing {
    pub fn new(
        store: Arc<dyn Store>,
        gateways: Gateways,
        past_due_grace: Duration,
        redirect_allowed: RedirectGuard,
    ) -> Self {
        Self {
            store,
            gateways,
            past_due_grace,
            redirect_allowed,
        }
    }

    pub(crate) fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub(crate) fn gateways(&self) -> &Gateways {
        &self.gateways
    }

    fn entitle(&self, subscription: Subscription) -> Entitlement {
        let effective_tier = subscription.effective_tier(Utc::now(), self.past_due_grace);
        Entitlement {
            subscription,
            effective_tier,
        }
    }

    /// The user's subscription; a user with no row is on FREE and ACTIVE.
    pub async fn entitlement(&self, user: &UserId) -> Result<Entitlement, StoreError> {
        let subscription = self
            .store
            .subscription(user)
            .await?
            .unwrap_or_else(|| Subscription::free(user.clone()));
        Ok(self.entitle(subscription))
    }

    /// The user's counts and the tier whose limits apply.
    pub async fn usage(&self, user: &UserId) -> Result<(Tier, Usage), StoreError> {
        let (entitlement, usage) =
            tokio::try_join!(self.entitlement(user), self.store.usage(user))?;
        Ok((entitlement.effective_tier, usage))
    }

    /// May the user create `quantity` more of `resource`?
    pub async fn check_limit(
        &self,
        user: &UserId,
        resource: Resource,
        quantity: u64,
    ) -> Result<LimitCheck, StoreError> {
        let (tier, usage) = self.usage(user).await?;
        Ok(check_limit(tier, &usage, resource, quantity))
    }

    fn check_redirect(&self, name: &str, url: &str) -> Result<(), BillingError> {
        if (self.redirect_allowed)(url) {
            Ok(())
        } else {
            Err(BillingError::Invalid(format!(
                "{name} must be an absolute URL on one of the allowed origins (ALLOWED_ORIGINS)"
            )))
        }
    }

    /// Starts a checkout for a paid tier. One live subscription per user: a user who has one is
    /// sent to ChangePlan.
    #[tracing::instrument(skip_all, fields(user_id = %new.user, tier = %new.tier))]
    pub async fn create_checkout(
        &self,
        new: NewCheckout<'_>,
    ) -> Result<CheckoutSession, BillingError> {
        let gateway = self.gateways.get(new.provider)?;
        if !new.tier.is_paid() {
            return Err(BillingError::Invalid(
                "checkout is for PRO or PREMIUM; to leave a paid plan use ChangePlan(FREE) or CancelSubscription".into(),
            ));
        }
        self.check_redirect("success_url", new.success_url)?;
        self.check_redirect("cancel_url", new.cancel_url)?;
        let current = self.entitlement(new.user).await?;
        if current.subscription.is_live(Utc::now()) {
            return Err(BillingError::Precondition(format!(
                "you already have a {} subscription; use ChangePlan to switch plans",
                current.subscription.tier
            )));
        }
        let customer_id = self.customer(gateway.as_ref(), new.user, new.email).await?;
        let session = gateway
            .create_checkout(&CheckoutRequest {
                user: new.user,
                customer_id: &customer_id,
                tier: new.tier,
                success_url: new.success_url,
                cancel_url: new.cancel_url,
                phone_number: new.phone_number,
                previous_subscription_id: current.subscription.provider_subscription_id.as_deref(),
            })
            .await?;
        tracing::info!(session_id = %session.id, "checkout session created");
        Ok(session)
    }

    /// The user's customer at the gateway's provider, created once and reused.
    async fn customer(
        &self,
        gateway: &dyn PaymentGateway,
        user: &UserId,
        email: Option<&str>,
    ) -> Result<String, BillingError> {
        let provider = gateway.provider();
        if let Some(id) = self.store.billing_customer(user, provider).await? {
            return Ok(id);
        }
        let created = gateway.create_customer(user, email).await?;
        Ok(self
            .store
            .save_billing_customer(user, provider, &created)
            .await?)
    }

    /// Switches the live subscription to `tier` (prorated); FREE means cancel at period end.
    #[tracing::instrument(skip_all, fields(user_id = %user, tier = %tier))]
    pub async fn change_plan(
        &self,
        user: &UserId,
        tier: Tier,
    ) -> Result<Entitlement, BillingError> {
        if !tier.is_paid() {
            return self.set_cancel(user, true).await;
        }
        self.change_at_provider(user, |stored| {
            if stored.tier == tier && !stored.cancel_at_period_end && stored.cancel_at.is_none() {
                return Ok(None);
            }
            Ok(Some(Change::Tier(tier)))
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
        self.change_at_provider(user, |stored| {
            if !cancel && stored.cancel_at.is_some() && !stored.cancel_at_period_end {
                return Err(BillingError::Precondition(
                    "this subscription has a fixed end date set in the billing portal; change it there".into(),
                ));
            }
            if stored.cancel_at_period_end == cancel {
                return Ok(None);
            }
            Ok(Some(Change::CancelAtPeriodEnd(cancel)))
        })
        .await
    }

    /// Runs one change of the live subscription at its provider, under the row lock, and
    /// stores the provider's answer.
    async fn change_at_provider(
        &self,
        user: &UserId,
        decide: impl FnOnce(&Subscription) -> Result<Option<Change>, BillingError>,
    ) -> Result<Entitlement, BillingError> {
        // Fail fast when payments are off, before touching the database.
        self.gateways.get(PaymentProvider::Stripe)?;
        let mut tx = self.store.begin().await?;
        let stored = tx.lock_subscription(user).await?;
        let now = Utc::now();
        let (Some(provider), Some(subscription_id), true) = (
            stored.provider,
            stored.provider_subscription_id.clone(),
            stored.is_live(now),
        ) else {
            return Err(BillingError::Precondition(
                "you have no paid subscription; start one with CreateCheckoutSession".into(),
            ));
        };
        let Some(change) = decide(&stored)? else {
            return Ok(self.entitle(stored));
        };
        let gateway = self.gateways.get(provider)?;
        let remote = match change {
            Change::Tier(tier) => gateway.change_tier(&subscription_id, tier).await?,
            Change::CancelAtPeriodEnd(cancel) => {
                gateway
                    .set_cancel_at_period_end(&subscription_id, cancel)
                    .await?
            }
        };
        let next = apply_remote(tx.as_mut(), &stored, &remote, now).await?;
        tx.commit().await?;
        Ok(self.entitle(next))
    }

    /// A billing-portal URL for the user's customer.
    #[tracing::instrument(skip_all, fields(user_id = %user))]
    pub async fn portal(&self, user: &UserId, return_url: &str) -> Result<String, BillingError> {
        let gateway = self.gateways.get(PaymentProvider::Stripe)?;
        self.check_redirect("return_url", return_url)?;
        let customer = self
            .store
            .billing_customer(user, gateway.provider())
            .await?
            .ok_or_else(|| {
                BillingError::Precondition(
                    "you have no billing account yet; start a subscription with CreateCheckoutSession".into(),
                )
            })?;
        Ok(gateway.create_portal(&customer, return_url).await?)
    }

    /// One page of the user's invoices, newest first, and the cursor of the next page.
    pub async fn invoices(
        &self,
        user: &UserId,
        after: Option<&InvoiceCursor>,
        page_size: u32,
    ) -> Result<(Vec<StoredInvoice>, Option<InvoiceCursor>), StoreError> {
        let size = match page_size {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        let mut page = self.store.invoices(user, after, size + 1).await?;
        let next = if page.len() > size as usize {
            page.truncate(size as usize);
            page.last().map(|last| InvoiceCursor {
                created_at: last.invoice.created_at,
                id: last.id.clone(),
            })
        } else {
            None
        };
        Ok((page, next))
    }
}

/// A change asked of the provider.
enum Change {
    Tier(Tier),
    CancelAtPeriodEnd(bool),
}

/// Merges the provider's view into the locked row and logs what changed. Returns the state now
/// stored.
pub(crate) async fn apply_remote(
    tx: &mut dyn BillingTx,
    stored: &Subscription,
    remote: &RemoteSubscription,
    seen_at: DateTime<Utc>,
) -> Result<Subscription, StoreError> {
    match reconcile(stored, remote, seen_at) {
        Reconciled::Apply { next, activity } => {
            if &next != stored {
                tx.save_subscription(&next).await?;
            }
            for entry in &activity {
                tx.log_activity(&stored.user_id, entry).await?;
            }
            Ok(next)
        }
        Reconciled::Ignore { reason } => {
            if is_live_status(remote.status) {
                // A second live subscription (two checkouts completed in a race): the user may be
                // charged twice. Keep the first, and leave a trail for support to refund.
                tracing::error!(user_id = %stored.user_id, subscription_id = %remote.id, %reason,
                    "second live subscription for one user; not applied, needs attention");
                tx.log_activity(
                    &stored.user_id,
                    &Activity::new(
                        "subscription.needs_attention",
                        format!(
                            "a second {} subscription is live at the payment provider and was not applied",
                            remote.tier.unwrap_or(Tier::Free)
                        ),
                        serde_json::json!({ "subscription_id": remote.id, "kept": stored.provider_subscription_id }),
                    ),
                )
                .await?;
            } else {
                tracing::info!(user_id = %stored.user_id, %reason, "provider subscription not applied");
            }
            Ok(stored.clone())
        }
    }
}
