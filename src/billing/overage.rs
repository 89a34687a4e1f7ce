//! Overage: a PRO user opts in to cards beyond the plan's limit, each billed per month through
//! a metered Stripe price (`STRIPE_PRICE_ID_EXTRA_CARD`).
//!
//! - Opting in adds the metered item to the user's Stripe subscription (once; under the
//!   user's change lock), then records the opt-in. Opting out only stops new extras and new
//!   reports: the item stays, so usage already reported is still invoiced.
//! - CheckLimit then allows PRO cards beyond the limit and says how many are extra.
//! - The reporter (every `OVERAGE_REPORT_INTERVAL`, on each replica) writes down each extra
//!   card of the calendar month (UTC) once, at the highest count seen, before it sends one meter
//!   event per card-month with an identifier derived from the row: two replicas, a retry or a
//!   lost answer send the same identifier, and Stripe counts it once.

use std::time::Duration;

use chrono::Utc;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::{Billing, BillingError};
use crate::{
    domain::{
        Subscription, Tier, Usage, UserId,
        activity::Activity,
        freshness::Evidence,
        subscription::PaymentProvider,
        usage::{OVERAGE_TIER, extra_cards},
    },
    payments::PaymentError,
    store::ExtraCardMonth,
};

/// What a user sees of overage.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OverageView {
    /// Extra cards are sold and the user's plan may buy them.
    pub available: bool,
    pub enabled: bool,
    /// Cards beyond the plan's limit now (billed while enabled).
    pub extra_cards: u64,
    /// One extra card for one month, in the subscription's currency.
    pub unit_price: Option<(i64, String)>,
}

impl OverageView {
    /// What the extra cards cost this month.
    pub fn monthly_cost(&self) -> Option<(i64, String)> {
        self.unit_price.as_ref().map(|(unit, currency)| {
            (
                unit.saturating_mul(i64::try_from(self.extra_cards).unwrap_or(i64::MAX)),
                currency.clone(),
            )
        })
    }
}

/// What one report round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OverageRound {
    pub written: u64,
    pub reported: u64,
    pub failed: u64,
}

/// Subscribers read per page.
const PAGE: u32 = 200;

impl Billing {
    /// Turns on the sale of extra cards (`STRIPE_PRICE_ID_EXTRA_CARD` is set).
    pub fn with_overage(mut self, sold: bool) -> Self {
        self.extra_cards_sold = sold;
        self
    }

    /// Whether the user's cards beyond the limit are allowed and billed.
    pub(super) fn extras_on(&self, subscription: &Subscription) -> bool {
        self.extra_cards_sold
            && subscription.overage
            && subscription.terms.extra_item.is_some()
            && subscription.provider == Some(PaymentProvider::Stripe)
    }

    /// The user's overage, priced.
    pub async fn overage(&self, user: &UserId) -> Result<OverageView, BillingError> {
        Ok(self.usage_with_overage(user).await?.2)
    }

    /// The user's counts, the tier whose limits apply and their overage, from one read.
    pub async fn usage_with_overage(
        &self,
        user: &UserId,
    ) -> Result<(Tier, Usage, OverageView), BillingError> {
        let (subscription, usage) = self.store.standing(user).await?;
        let subscription = subscription.unwrap_or_else(|| Subscription::free(user.clone()));
        let tier = self.entitle(subscription.clone()).effective_tier;
        let overage = self.overage_view(&subscription, tier, &usage).await?;
        Ok((tier, usage, overage))
    }

    async fn overage_view(
        &self,
        subscription: &Subscription,
        tier: Tier,
        usage: &Usage,
    ) -> Result<OverageView, BillingError> {
        let available = self.extra_cards_sold
            && tier == OVERAGE_TIER
            && subscription.provider == Some(PaymentProvider::Stripe);
        if !available {
            return Ok(OverageView::default());
        }
        let enabled = self.extras_on(subscription);
        // Priced only for users who opted in (the plain usage read stays one query).
        let unit_price = if enabled {
            // Usage is answered without the price when Stripe's prices cannot be read now.
            let table = match self.price_list.table().await {
                Ok(table) => table,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot price the extra cards now");
                    return Ok(OverageView {
                        available,
                        enabled,
                        extra_cards: extra_cards(tier, usage.cards),
                        unit_price: None,
                    });
                }
            };
            let currency = subscription
                .terms
                .currency
                .clone()
                .or_else(|| table.default_currency().map(str::to_string))
                .unwrap_or_else(|| "usd".into());
            table
                .extra_card
                .get(&currency)
                .map(|amount| (*amount, currency))
        } else {
            None
        };
        Ok(OverageView {
            available,
            enabled,
            extra_cards: if enabled {
                extra_cards(tier, usage.cards)
            } else {
                0
            },
            unit_price,
        })
    }

    /// Opts the user in to extra cards (or out).
    #[tracing::instrument(skip_all, fields(user_id = %user, enabled))]
    pub async fn set_overage(
        &self,
        user: &UserId,
        enabled: bool,
    ) -> Result<OverageView, BillingError> {
        if enabled {
            self.add_extra_item(user).await?;
        }
        let mut tx = self.store.begin().await?;
        let mut stored = tx.lock_subscription(user).await?;
        if enabled && stored.terms.extra_item.is_none() {
            return Err(BillingError::Busy(
                "the subscription changed meanwhile; try again".into(),
            ));
        }
        if stored.overage != enabled {
            stored.overage = enabled;
            tx.save_subscription(&stored).await?;
            tx.log_activity(
                user,
                &Activity::new(
                    if enabled {
                        "billing.overage_on"
                    } else {
                        "billing.overage_off"
                    },
                    if enabled {
                        "extra cards beyond the plan's limit are on, billed per card and month"
                            .to_string()
                    } else {
                        "extra cards are off: no more cards beyond the plan's limit".to_string()
                    },
                    json!({ "subscription_id": stored.provider_subscription_id }),
                ),
            )
            .await?;
        }
        tx.commit().await?;
        self.overage(user).await
    }

    /// Makes sure the user's live PRO subscription at Stripe has the metered item.
    async fn add_extra_item(&self, user: &UserId) -> Result<(), BillingError> {
        if !self.extra_cards_sold {
            return Err(BillingError::Precondition(
                "extra cards are not sold here (STRIPE_PRICE_ID_EXTRA_CARD is not set)".into(),
            ));
        }
        let current = self.entitlement(user).await?;
        let sub = &current.subscription;
        let live = sub.is_live(Utc::now());
        if !live
            || current.effective_tier != OVERAGE_TIER
            || sub.provider != Some(PaymentProvider::Stripe)
        {
            return Err(BillingError::Precondition(format!(
                "extra cards are for {OVERAGE_TIER} subscriptions paid by card; you are on {}",
                current.effective_tier
            )));
        }
        if sub.terms.extra_item.is_some() {
            return Ok(());
        }
        // Stripe's classic billing mode keeps every item of a subscription on one interval.
        if sub.terms.interval == Some(crate::domain::pricing::BillingInterval::Year) {
            return Err(BillingError::Precondition(
                "extra cards are billed monthly: they cannot be added to a yearly subscription; switch to monthly billing first".into(),
            ));
        }
        let Some(subscription_id) = sub.provider_subscription_id.clone() else {
            return Err(BillingError::Precondition(
                "you have no paid subscription".into(),
            ));
        };
        let gateway = self.gateways.get(PaymentProvider::Stripe)?;
        let owner = uuid::Uuid::new_v4().to_string();
        self.lock_changes(user, &owner).await?;
        let result = self
            .while_locked(user, &owner, async {
                let started = gateway.now();
                let remote = gateway.add_extra_item(&subscription_id).await?;
                self.store_remote(user, &remote, Evidence::Fetched(started))
                    .await
            })
            .await;
        if let Err(e) = self.store.unlock_subscription_changes(user, &owner).await {
            tracing::warn!(error = %e, "cannot release a subscription-change lock");
        }
        result.map(drop)
    }

    /// Writes down this month's extra cards of every opted-in user and reports the ones Stripe
    /// has not taken yet.
    pub async fn report_overage(&self) -> Result<OverageRound, BillingError> {
        let mut round = OverageRound::default();
        if !self.extra_cards_sold {
            return Ok(round);
        }
        let gateway = self.gateways.get(PaymentProvider::Stripe)?;
        let month = gateway.now().format("%Y-%m").to_string();
        let mut after: Option<UserId> = None;
        loop {
            let page = self.store.overage_subscribers(after.as_ref(), PAGE).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.user_id.clone());
            for subscriber in &page {
                let Some(subscription) = self.store.subscription(&subscriber.user_id).await? else {
                    continue;
                };
                if !self.extras_on(&subscription) {
                    continue;
                }
                let tier = self.entitle(subscription).effective_tier;
                let extra = extra_cards(tier, subscriber.cards);
                let written = self
                    .store
                    .extra_cards_written(&subscriber.user_id, &month)
                    .await?;
                if extra <= written {
                    continue;
                }
                let months: Vec<ExtraCardMonth> = (written + 1..=extra)
                    .map(|n| ExtraCardMonth {
                        identifier: identifier(&subscriber.user_id, &month, n),
                        user_id: subscriber.user_id.clone(),
                        month: month.clone(),
                        n,
                        customer_id: subscriber.customer_id.clone(),
                    })
                    .collect();
                self.store.write_extra_cards(&months).await?;
                round.written += extra - written;
            }
        }
        for card in self.store.unreported_extra_cards(500).await? {
            match gateway
                .report_extra_card(&card.customer_id, &card.identifier, gateway.now())
                .await
            {
                Ok(()) => {
                    self.store
                        .extra_card_reported(&card.identifier, Utc::now())
                        .await?;
                    round.reported += 1;
                    metrics::counter!("overage_card_months_reported_total").increment(1);
                }
                Err(e) => {
                    round.failed += 1;
                    // Refused for good (the customer is gone at Stripe, say): a resend cannot
                    // help, and the row must not hold the queue up.
                    let give_up = matches!(
                        e,
                        PaymentError::Rejected(_)
                            | PaymentError::NotFound(_)
                            | PaymentError::Malformed(_)
                    );
                    if give_up {
                        tracing::error!(error = %e, identifier = %card.identifier,
                            "Stripe refused an extra card-month for good; not reported");
                        metrics::counter!("overage_card_months_refused_total").increment(1);
                    } else {
                        tracing::warn!(error = %e, identifier = %card.identifier,
                            "extra card-month not reported; sent again next round");
                    }
                    self.store
                        .extra_card_not_reported(&card.identifier, &e.to_string(), give_up)
                        .await?;
                    if e.is_temporary() {
                        break;
                    }
                }
            }
        }
        Ok(round)
    }
}

/// The meter event's identifier of the `n`th extra card of `month`: the same on every replica
/// and every resend, at most 100 characters, and naming nobody.
fn identifier(user: &UserId, month: &str, n: u64) -> String {
    let digest = Sha256::digest(format!("{user}\0{month}\0{n}"));
    format!("nexus-xc-{month}-{n}-{}", &hex::encode(digest)[..24])
}

/// Reports extra cards every `interval` until `shutdown`.
pub async fn run(
    billing: std::sync::Arc<Billing>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    loop {
        match billing.report_overage().await {
            Ok(round) if round.written + round.reported + round.failed > 0 => {
                tracing::info!(?round, "overage report round");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "overage report round failed"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_stable_short_and_name_nobody() -> Result<(), Box<dyn std::error::Error>> {
        let user = UserId::parse("user-with-a-rather-long-id@example.com".to_string())?;
        let a = identifier(&user, "2026-12", 3);
        assert_eq!(a, identifier(&user, "2026-12", 3));
        assert_ne!(a, identifier(&user, "2026-12", 4));
        assert_ne!(a, identifier(&user, "2027-01", 3));
        assert!(a.len() <= 100 && !a.contains("example"), "{a}");
        Ok(())
    }
}
