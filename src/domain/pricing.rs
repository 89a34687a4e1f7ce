//! What the paid plans cost, as the payment provider charges it: one price per tier and billing
//! interval, each in one or more currencies (Stripe's `currency_options`), and the rules for
//! which currency a payer gets. Pure: the prices are fetched and cached in `billing::price_list`.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    str::FromStr,
};

use chrono::{DateTime, Utc};

use super::Tier;

/// How often a subscription renews.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BillingInterval {
    Month,
    Year,
}

impl BillingInterval {
    pub const ALL: [BillingInterval; 2] = [Self::Month, Self::Year];

    /// The name stored in the database (and Stripe's `recurring.interval`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Month => "month",
            Self::Year => "year",
        }
    }
}

impl fmt::Display for BillingInterval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Month => "monthly",
            Self::Year => "yearly",
        })
    }
}

/// A stored interval name that this version does not know.
#[derive(Debug, thiserror::Error)]
#[error("unknown billing interval {0:?}")]
pub struct UnknownInterval(pub String);

impl FromStr for BillingInterval {
    type Err = UnknownInterval;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnknownInterval(s.to_string()))
    }
}

/// The terms a subscription is charged on, as the provider reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Terms {
    pub interval: Option<BillingInterval>,
    /// ISO 4217, lower case.
    pub currency: Option<String>,
    /// When a free trial ends, for a subscription that has one.
    pub trial_end: Option<DateTime<Utc>>,
    /// The subscription's item of the metered extra-card price, once overage was set up.
    pub extra_item: Option<String>,
}

/// One of the provider's prices: what a tier costs per interval, in each currency it offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderPrice {
    pub id: String,
    pub tier: Tier,
    pub interval: BillingInterval,
    /// The price's own currency (Stripe's `currency`).
    pub default_currency: String,
    /// Minor units per interval, by currency (the default one included).
    pub amounts: BTreeMap<String, i64>,
}

/// Every price the service sells through one provider.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PriceTable {
    pub prices: Vec<ProviderPrice>,
    /// One extra card for one month (overage), by currency; empty when not sold.
    pub extra_card: BTreeMap<String, i64>,
}

/// Why a currency cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CurrencyProblem {
    #[error("currency must be an ISO 4217 code in lower case, like \"usd\"")]
    Malformed,
    #[error("KES is paid with M-Pesa: choose the M-Pesa provider to pay in shillings")]
    MobileOnly,
    #[error("the plans are not sold in {asked}; choose one of {}", offered.join(", "))]
    NotOffered { asked: String, offered: Vec<String> },
    #[error(
        "your account pays in {account}; a customer keeps the currency of their first subscription"
    )]
    AccountCurrency { account: String },
}

/// Checks the shape of a currency code from a request.
pub fn parse_currency(code: &str) -> Result<String, CurrencyProblem> {
    if code.len() == 3 && code.bytes().all(|b| b.is_ascii_lowercase()) {
        Ok(code.to_string())
    } else {
        Err(CurrencyProblem::Malformed)
    }
}

impl PriceTable {
    /// The price of `tier` billed every `interval`.
    pub fn price(&self, tier: Tier, interval: BillingInterval) -> Option<&ProviderPrice> {
        self.prices
            .iter()
            .find(|p| p.tier == tier && p.interval == interval)
    }

    /// The currencies every price can be paid in (so any plan can be bought in each).
    pub fn currencies(&self) -> BTreeSet<String> {
        let mut all = self.prices.iter().map(|p| {
            p.amounts
                .keys()
                .filter(|c| c.as_str() != "kes")
                .cloned()
                .collect::<BTreeSet<_>>()
        });
        let first = all.next().unwrap_or_default();
        all.fold(first, |common, next| {
            common.intersection(&next).cloned().collect()
        })
    }

    /// The currency shown when the payer has not picked one: the first price's own.
    pub fn default_currency(&self) -> Option<&str> {
        self.prices.first().map(|p| p.default_currency.as_str())
    }

    /// The currency a payer gets: the one asked for, else their account's, else the default.
    /// A payer whose account already pays in one currency keeps it.
    pub fn choose_currency(
        &self,
        asked: Option<&str>,
        account: Option<&str>,
    ) -> Result<String, CurrencyProblem> {
        let asked = asked.map(parse_currency).transpose()?;
        if asked.as_deref() == Some("kes") {
            return Err(CurrencyProblem::MobileOnly);
        }
        if let (Some(asked), Some(account)) = (asked.as_deref(), account)
            && asked != account
        {
            return Err(CurrencyProblem::AccountCurrency {
                account: account.to_string(),
            });
        }
        let chosen = asked
            .or_else(|| account.map(str::to_string))
            .or_else(|| self.default_currency().map(str::to_string))
            .unwrap_or_else(|| "usd".to_string());
        let offered = self.currencies();
        if offered.is_empty() || offered.contains(&chosen) {
            Ok(chosen)
        } else {
            Err(CurrencyProblem::NotOffered {
                asked: chosen,
                offered: offered.into_iter().collect(),
            })
        }
    }
}

/// How many months of the monthly price a year at `yearly` saves, rounded to the nearest
/// month (a year at 10 months' price saves 2); 0 when it saves nothing.
pub fn months_free(monthly: i64, yearly: i64) -> i32 {
    if monthly <= 0 || yearly <= 0 {
        return 0;
    }
    let saved = monthly.saturating_mul(12).saturating_sub(yearly);
    if saved <= 0 {
        return 0;
    }
    i32::try_from((saved + monthly / 2) / monthly).unwrap_or(0)
}

/// The line shown beside a yearly price.
pub fn saving_line(months: i32) -> String {
    match months {
        0 => String::new(),
        1 => "1 month free".into(),
        n => format!("{n} months free"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn price(tier: Tier, interval: BillingInterval, amounts: &[(&str, i64)]) -> ProviderPrice {
        ProviderPrice {
            id: format!("price_{}_{}", tier.as_str(), interval.as_str()),
            tier,
            interval,
            default_currency: amounts[0].0.to_string(),
            amounts: amounts.iter().map(|(c, a)| (c.to_string(), *a)).collect(),
        }
    }

    fn table() -> PriceTable {
        PriceTable {
            extra_card: BTreeMap::new(),
            prices: vec![
                price(
                    Tier::Pro,
                    BillingInterval::Month,
                    &[("usd", 900), ("eur", 850), ("gbp", 750)],
                ),
                price(
                    Tier::Pro,
                    BillingInterval::Year,
                    &[("usd", 9000), ("eur", 8500)],
                ),
                price(
                    Tier::Premium,
                    BillingInterval::Month,
                    &[("usd", 2900), ("eur", 2700)],
                ),
            ],
        }
    }

    #[test]
    fn a_year_at_ten_months_price_is_two_months_free() {
        assert_eq!(months_free(900, 9000), 2);
        assert_eq!(saving_line(months_free(900, 9000)), "2 months free");
        assert_eq!(months_free(900, 10_800), 0);
        assert_eq!(months_free(900, 12_000), 0);
        assert_eq!(months_free(0, 9000), 0);
        assert_eq!(months_free(1000, 11_000), 1);
    }

    #[test]
    fn only_currencies_every_price_offers_are_sold() {
        let offered: Vec<String> = table().currencies().into_iter().collect();
        assert_eq!(offered, ["eur", "usd"]);
        assert_eq!(
            table().choose_currency(Some("gbp"), None),
            Err(CurrencyProblem::NotOffered {
                asked: "gbp".into(),
                offered: vec!["eur".into(), "usd".into()]
            })
        );
    }

    #[test]
    fn a_payer_keeps_the_currency_of_their_account() {
        let t = table();
        assert_eq!(t.choose_currency(None, None).as_deref(), Ok("usd"));
        assert_eq!(t.choose_currency(Some("eur"), None).as_deref(), Ok("eur"));
        assert_eq!(t.choose_currency(None, Some("eur")).as_deref(), Ok("eur"));
        assert_eq!(
            t.choose_currency(Some("usd"), Some("eur")),
            Err(CurrencyProblem::AccountCurrency {
                account: "eur".into()
            })
        );
    }

    #[test]
    fn shillings_and_odd_codes_are_refused() {
        let t = table();
        assert_eq!(
            t.choose_currency(Some("kes"), None),
            Err(CurrencyProblem::MobileOnly)
        );
        for bad in ["EUR", "euro", "", "e1r"] {
            assert_eq!(
                t.choose_currency(Some(bad), None),
                Err(CurrencyProblem::Malformed),
                "{bad}"
            );
        }
    }
}
