//! Starting a paid subscription: the provider's customer (created once per user) and a checkout
//! session. One paid subscription per user: a user with a live one is sent to ChangePlan, and
//! the user's earlier open checkout sessions are expired before a new one is opened, so two tabs
//! cannot both be paid. M-Pesa's checkout (a push to the phone) is in `mpesa.rs`.

use chrono::Utc;

use super::{Billing, BillingError};
use crate::{
    domain::{
        Subscription, Tier, UserId,
        freshness::Evidence,
        pricing::{BillingInterval, parse_currency},
        subscription::PaymentProvider,
    },
    payments::{CheckoutRequest, CheckoutSession, Expiry, PaymentGateway},
};

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
    pub interval: BillingInterval,
    /// The currency asked for; `None`: the account's, else the price's default.
    pub currency: Option<&'a str>,
}

impl Billing {
    pub(super) fn check_redirect(&self, name: &str, url: &str) -> Result<(), BillingError> {
        if (self.redirect_allowed)(url) {
            Ok(())
        } else {
            Err(BillingError::Invalid(format!(
                "{name} must be an absolute URL on one of the allowed origins (ALLOWED_ORIGINS)"
            )))
        }
    }

    /// Starts a checkout for a paid tier.
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
        if new.provider == PaymentProvider::Mpesa {
            if new.interval != BillingInterval::Month {
                return Err(BillingError::Invalid(
                    "M-Pesa pays one 30-day period at a time: choose the monthly interval".into(),
                ));
            }
            if new.currency.is_some_and(|c| c != "kes") {
                return Err(BillingError::Invalid(
                    "M-Pesa is paid in KES: leave currency empty or \"kes\"".into(),
                ));
            }
            return self.mpesa_checkout(gateway.as_ref(), new).await;
        }
        self.check_redirect("success_url", new.success_url)?;
        self.check_redirect("cancel_url", new.cancel_url)?;
        let current = self.entitlement(new.user).await?;
        let live = &current.subscription;
        if live.is_live(Utc::now()) && live.provider == Some(PaymentProvider::Mpesa) {
            return Err(BillingError::Precondition(format!(
                "your {} period paid with M-Pesa runs until {}; it does not renew, so subscribe after it ends (or pay another period with M-Pesa)",
                live.tier,
                live.current_period_end
                    .map(|t| t.date_naive().to_string())
                    .unwrap_or_else(|| "its end".into())
            )));
        }
        if live.is_live(Utc::now()) {
            return Err(BillingError::Precondition(format!(
                "you already have a {} subscription; use ChangePlan to switch plans",
                live.tier
            )));
        }
        if let Some(waiting) = self.store.pending_mobile_payment(new.user).await? {
            // Both could be paid otherwise.
            return Err(super::mpesa::pending_precondition(&waiting));
        }
        // M-Pesa days paid in advance (queued after the running period) would be lost.
        let queued = {
            let mut tx = self.store.begin().await?;
            tx.prepaid_periods(new.user, Utc::now()).await?
        };
        if let Some(last) = queued.iter().map(|p| p.end).max() {
            return Err(BillingError::Precondition(format!(
                "you have periods paid with M-Pesa until {}; subscribe after they end (or pay more periods with M-Pesa)",
                last.date_naive()
            )));
        }
        let currency = self
            .checkout_currency(new.provider, new.tier, new.interval, new.currency, live)
            .await?;
        let trial_days = self.trial_days(new.provider, live);
        let customer_id = self.customer(gateway.as_ref(), new.user, new.email).await?;
        let earlier = self.store.checkouts(new.user).await?;

        let session = gateway
            .create_checkout(&CheckoutRequest {
                user: new.user,
                customer_id: &customer_id,
                tier: new.tier,
                success_url: new.success_url,
                cancel_url: new.cancel_url,
                phone_number: new.phone_number,
                previous_subscription_id: current.subscription.provider_subscription_id.as_deref(),
                expired_before: earlier.iter().filter(|(_, open)| !open).count(),
                reference: None,
                interval: new.interval,
                currency: currency.as_deref(),
                trial_days,
                allow_promotion_codes: self.selling.allow_promotion_codes
                    && new.provider == PaymentProvider::Stripe,
            })
            .await?;
        self.store
            .save_checkout(new.user, gateway.provider(), &session.id, &session.url)
            .await?;
        // The same request asked again gets the same session back (idempotency): keep it open.
        let paid = self.close_checkouts(new.user, Some(&session.id)).await?;
        for (provider, subscription_id) in paid {
            let adopted = self
                .adopt_paid(new.user, provider, &subscription_id)
                .await?;
            if !adopted.is_live(Utc::now()) {
                // Paid long ago and ended since (its session was never closed): no obstacle.
                continue;
            }
            // Another tab was paid first: this session must not be paid as well.
            if let Expiry::AlreadyPaid { .. } = gateway.expire_checkout(&session.id).await? {
                tracing::warn!(session_id = %session.id, "two checkout sessions were paid");
            }
            self.store.checkout_expired(&session.id).await?;
            return Err(BillingError::Precondition(format!(
                "an earlier checkout was paid: you have a {} subscription now; use ChangePlan to switch plans",
                adopted.tier
            )));
        }
        tracing::info!(session_id = %session.id, "checkout session created");
        Ok(session)
    }

    /// The currency to ask the provider for: `None` for the price's own. A Stripe customer
    /// keeps the currency of their first subscription (Stripe refuses to mix them).
    async fn checkout_currency(
        &self,
        provider: PaymentProvider,
        tier: Tier,
        interval: BillingInterval,
        asked: Option<&str>,
        stored: &Subscription,
    ) -> Result<Option<String>, BillingError> {
        if provider != PaymentProvider::Stripe {
            if let Some(asked) = asked {
                parse_currency(asked).map_err(super::price_list::currency_error)?;
            }
            return Ok(asked.map(str::to_string));
        }
        let account = stored
            .terms
            .currency
            .as_deref()
            .filter(|_| stored.provider == Some(PaymentProvider::Stripe));
        if asked.is_none() && account.is_none() {
            return Ok(None);
        }
        let table = self.price_list.table().await?;
        let chosen = table
            .choose_currency(asked, account)
            .map_err(super::price_list::currency_error)?;
        let price = table.price(tier, interval).ok_or_else(|| {
            BillingError::Precondition(format!("{tier} is not sold {interval} here"))
        })?;
        if !price.amounts.contains_key(&chosen) {
            return Err(BillingError::Invalid(format!(
                "the {interval} {tier} plan is not sold in {chosen}"
            )));
        }
        Ok((chosen != price.default_currency).then_some(chosen))
    }

    /// Trial days for this checkout: only Stripe's, and only for a user who never had a
    /// subscription (one trial per user, ever).
    fn trial_days(&self, provider: PaymentProvider, stored: &Subscription) -> Option<u32> {
        let never_subscribed = stored.provider_subscription_id.is_none();
        self.selling
            .trial_days
            .filter(|_| provider == PaymentProvider::Stripe && never_subscribed)
    }

    /// Expires the user's open checkout sessions (all but `keep`), each through the gateway of
    /// the provider that opened it. Sessions the payer already finished are closed too and
    /// their subscriptions returned, to be applied (or cancelled, for an erasure).
    pub(super) async fn close_checkouts(
        &self,
        user: &UserId,
        keep: Option<&str>,
    ) -> Result<Vec<(PaymentProvider, String)>, BillingError> {
        let mut paid = Vec::new();
        for (provider, id) in self.store.open_checkouts(user, true).await? {
            if keep == Some(id.as_str()) {
                continue;
            }
            match self.gateways.get(provider)?.expire_checkout(&id).await? {
                Expiry::Expired => {
                    tracing::info!(session_id = %id, "earlier checkout session expired")
                }
                Expiry::AlreadyPaid { subscription_id } => {
                    tracing::info!(session_id = %id, "earlier checkout session was paid");
                    paid.extend(subscription_id.map(|s| (provider, s)));
                }
            }
            self.store.checkout_expired(&id).await?;
        }
        Ok(paid)
    }

    /// Applies the subscription a paid checkout started (its webhook may still be on its way);
    /// the user's subscription now.
    pub(super) async fn adopt_paid(
        &self,
        user: &UserId,
        provider: PaymentProvider,
        subscription_id: &str,
    ) -> Result<crate::domain::Subscription, BillingError> {
        let gateway = self.gateways.get(provider)?;
        let fetched_at = gateway.now();
        let remote = gateway.fetch_subscription(subscription_id).await?;
        self.store_remote(user, &remote, Evidence::Fetched(fetched_at))
            .await
    }

    /// The user's customer at the gateway's provider, created once and reused.
    pub(super) async fn customer(
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
}
