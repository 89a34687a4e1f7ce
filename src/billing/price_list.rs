//! What the plans cost, read from the payment provider (Stripe's prices, with their
//! `currency_options`) and kept for `PRICE_REFRESH_INTERVAL`. While one request refreshes the
//! prices, others are answered from the old ones; a failed refresh keeps the old ones too, so
//! Stripe being slow or down never slows the plans page down after the first read.
//!
//! Without Stripe (PayPal or M-Pesa only, or the development sandbox) the prices are the list
//! prices of `domain::plans`, yearly at ten months.

use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

use tokio::time::Instant;

use super::{Billing, BillingError};
use crate::{
    domain::{
        Tier,
        plans::PLANS,
        pricing::{BillingInterval, CurrencyProblem, PriceTable, months_free, saving_line},
    },
    payments::{PaymentError, PaymentGateway},
};

/// The prices, cached.
pub struct PriceList {
    source: Option<Arc<dyn PaymentGateway>>,
    refresh: Duration,
    cached: RwLock<Option<(Instant, Arc<PriceTable>)>>,
    /// One refresh at a time.
    refreshing: tokio::sync::Mutex<()>,
}

/// A tier's price at one interval, in the chosen currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntervalPrice {
    pub interval: BillingInterval,
    pub amount_minor: i64,
    pub months_free: i32,
    pub saving: String,
}

/// One plan with what it costs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PricedPlan {
    pub tier: Tier,
    pub prices: Vec<IntervalPrice>,
}

/// The plans priced in one currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanPrices {
    pub currency: String,
    pub currencies: Vec<String>,
    pub plans: Vec<PricedPlan>,
}

/// The list prices of `domain::plans`: monthly as written, yearly at ten months.
pub fn list_prices() -> PriceTable {
    use crate::domain::pricing::ProviderPrice;
    let prices = PLANS
        .iter()
        .filter(|p| p.tier.is_paid())
        .flat_map(|plan| {
            BillingInterval::ALL.map(|interval| ProviderPrice {
                id: format!("list_{}_{}", plan.tier.as_str(), interval.as_str()),
                tier: plan.tier,
                interval,
                default_currency: plan.currency.to_string(),
                amounts: [(
                    plan.currency.to_string(),
                    match interval {
                        BillingInterval::Month => plan.price_minor,
                        BillingInterval::Year => plan.price_minor * 10,
                    },
                )]
                .into(),
            })
        })
        .collect();
    PriceTable {
        prices,
        extra_card: Default::default(),
    }
}

impl PriceList {
    pub fn new(source: Option<Arc<dyn PaymentGateway>>, refresh: Duration) -> Self {
        Self {
            source,
            refresh,
            cached: RwLock::new(None),
            refreshing: tokio::sync::Mutex::new(()),
        }
    }

    fn cached(&self) -> Option<(Instant, Arc<PriceTable>)> {
        self.cached
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The current prices.
    pub async fn table(&self) -> Result<Arc<PriceTable>, PaymentError> {
        let Some(source) = &self.source else {
            return Ok(Arc::new(list_prices()));
        };
        let cached = self.cached();
        if let Some((at, table)) = &cached
            && at.elapsed() < self.refresh
        {
            return Ok(Arc::clone(table));
        }
        // Stale: one caller refreshes, the others keep the old prices meanwhile.
        let _gate = match (&cached, self.refreshing.try_lock()) {
            (_, Ok(gate)) => gate,
            (Some((_, old)), Err(_)) => return Ok(Arc::clone(old)),
            (None, Err(_)) => self.refreshing.lock().await,
        };
        if let Some((at, table)) = self.cached()
            && at.elapsed() < self.refresh
        {
            return Ok(table);
        }
        match source.prices().await {
            Ok(table) => {
                let table = Arc::new(table);
                *self.cached.write().unwrap_or_else(|e| e.into_inner()) =
                    Some((Instant::now(), Arc::clone(&table)));
                tracing::info!(prices = table.prices.len(), "prices read from the provider");
                Ok(table)
            }
            Err(e) => match cached {
                Some((_, old)) => {
                    tracing::warn!(error = %e, "cannot refresh the prices; the old ones stay");
                    Ok(old)
                }
                None => Err(e),
            },
        }
    }
}

impl Billing {
    /// The plans priced in `currency` (the default currency when `None`).
    pub async fn plan_prices(&self, currency: Option<&str>) -> Result<PlanPrices, BillingError> {
        let table = self.price_list.table().await?;
        let currency = table
            .choose_currency(currency, None)
            .map_err(currency_error)?;
        let plans = Tier::ALL
            .into_iter()
            .map(|tier| {
                let amount = |interval| {
                    table
                        .price(tier, interval)
                        .and_then(|p| p.amounts.get(&currency).copied())
                };
                let monthly = amount(BillingInterval::Month);
                let prices = BillingInterval::ALL
                    .into_iter()
                    .filter_map(|interval| {
                        let amount_minor = amount(interval)?;
                        let months = match (interval, monthly) {
                            (BillingInterval::Year, Some(m)) => months_free(m, amount_minor),
                            _ => 0,
                        };
                        Some(IntervalPrice {
                            interval,
                            amount_minor,
                            months_free: months,
                            saving: saving_line(months),
                        })
                    })
                    .collect();
                PricedPlan { tier, prices }
            })
            .collect();
        Ok(PlanPrices {
            currency,
            currencies: table.currencies().into_iter().collect(),
            plans,
        })
    }
}

/// A currency problem, as the caller's mistake or their account's state.
pub(super) fn currency_error(problem: CurrencyProblem) -> BillingError {
    match problem {
        CurrencyProblem::AccountCurrency { .. } => BillingError::Precondition(problem.to_string()),
        _ => BillingError::Invalid(problem.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_prices_sell_every_paid_tier_monthly_and_yearly_at_ten_months() {
        let table = list_prices();
        for tier in [Tier::Pro, Tier::Premium] {
            let month = table
                .price(tier, BillingInterval::Month)
                .map(|p| p.amounts["usd"]);
            let year = table
                .price(tier, BillingInterval::Year)
                .map(|p| p.amounts["usd"]);
            assert_eq!(year, month.map(|m| m * 10));
        }
        assert!(table.price(Tier::Free, BillingInterval::Month).is_none());
    }
}
