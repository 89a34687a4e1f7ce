//! What Stripe charges: each configured price read with `GET /v1/prices/{id}`, its
//! `currency_options` expanded, into the provider-neutral [`PriceTable`]. Raw JSON, like the
//! other reads whose shape changes between API versions.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{PaymentError, stripe::StripeGateway};
use crate::domain::{
    Tier,
    pricing::{BillingInterval, PriceTable, ProviderPrice},
};

impl StripeGateway {
    /// Reads every price new checkouts use.
    pub(super) async fn prices_raw(&self) -> Result<PriceTable, PaymentError> {
        let mut prices = Vec::new();
        for (tier, interval, id) in self.prices.selling() {
            let url = self.url_with(
                &format!("v1/prices/{id}"),
                &[("expand[]", "currency_options")],
            )?;
            let body = self.raw("GET /v1/prices/{id}", self.http.get(url)).await?;
            prices.push(price_from_json(&body, tier, interval)?);
        }
        let mut extra_card = std::collections::BTreeMap::new();
        if let Some(id) = self.prices.extra_card.as_deref() {
            let url = self.url_with(
                &format!("v1/prices/{id}"),
                &[("expand[]", "currency_options")],
            )?;
            let body = self.raw("GET /v1/prices/{id}", self.http.get(url)).await?;
            extra_card = metered_amounts(&body)?;
        }
        Ok(PriceTable { prices, extra_card })
    }
}

/// One Stripe price, checked against the tier and interval it is configured for.
pub(super) fn price_from_json(
    body: &Value,
    tier: Tier,
    interval: BillingInterval,
) -> Result<ProviderPrice, PaymentError> {
    let id = body
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| PaymentError::Malformed("a price without an id".into()))?;
    let bad = |what: &str| PaymentError::Malformed(format!("price {id}: {what}"));
    let recurs = body
        .pointer("/recurring/interval")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("not a recurring price"))?;
    let count = body
        .pointer("/recurring/interval_count")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    if recurs != interval.as_str() || count != 1 {
        return Err(bad(&format!(
            "it renews every {count} {recurs} but is set as the {interval} {tier} price"
        )));
    }
    if body.get("active").and_then(Value::as_bool) == Some(false) {
        return Err(bad("archived at Stripe; new subscriptions cannot use it"));
    }
    let default_currency = body
        .get("currency")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("no currency"))?
        .to_ascii_lowercase();
    let mut amounts = BTreeMap::new();
    let default_amount = body
        .get("unit_amount")
        .and_then(Value::as_i64)
        .ok_or_else(|| bad("no unit_amount (tiered and custom prices are not supported)"))?;
    amounts.insert(default_currency.clone(), default_amount);
    if let Some(options) = body.get("currency_options").and_then(Value::as_object) {
        for (currency, option) in options {
            if let Some(amount) = option.get("unit_amount").and_then(Value::as_i64) {
                amounts.insert(currency.to_ascii_lowercase(), amount);
            }
        }
    }
    Ok(ProviderPrice {
        id: id.to_string(),
        tier,
        interval,
        default_currency,
        amounts,
    })
}

/// The amounts of the metered extra-card price, by currency.
pub(super) fn metered_amounts(body: &Value) -> Result<BTreeMap<String, i64>, PaymentError> {
    let id = body.get("id").and_then(Value::as_str).unwrap_or("(no id)");
    let bad = |what: &str| PaymentError::Malformed(format!("price {id}: {what}"));
    if body
        .pointer("/recurring/usage_type")
        .and_then(Value::as_str)
        != Some("metered")
    {
        return Err(bad("STRIPE_PRICE_ID_EXTRA_CARD must be a metered price"));
    }
    let currency = body
        .get("currency")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("no currency"))?;
    let amount = body
        .get("unit_amount")
        .and_then(Value::as_i64)
        .ok_or_else(|| bad("no unit_amount"))?;
    let mut amounts = BTreeMap::from([(currency.to_ascii_lowercase(), amount)]);
    if let Some(options) = body.get("currency_options").and_then(Value::as_object) {
        for (c, option) in options {
            if let Some(a) = option.get("unit_amount").and_then(Value::as_i64) {
                amounts.insert(c.to_ascii_lowercase(), a);
            }
        }
    }
    Ok(amounts)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_price_with_currency_options_offers_each_currency() -> Result<(), PaymentError> {
        let price = price_from_json(
            &json!({ "id": "price_1", "object": "price", "active": true, "currency": "usd",
                "unit_amount": 9000, "recurring": { "interval": "year", "interval_count": 1 },
                "currency_options": { "eur": { "unit_amount": 8500 }, "usd": { "unit_amount": 9000 } } }),
            Tier::Pro,
            BillingInterval::Year,
        )?;
        assert_eq!(price.default_currency, "usd");
        assert_eq!(price.amounts.get("eur"), Some(&8500));
        assert_eq!(price.amounts.len(), 2);
        Ok(())
    }

    #[test]
    fn a_price_set_for_the_wrong_interval_or_archived_is_refused() {
        let monthly = json!({ "id": "price_1", "active": true, "currency": "usd",
            "unit_amount": 900, "recurring": { "interval": "month", "interval_count": 1 } });
        assert!(price_from_json(&monthly, Tier::Pro, BillingInterval::Year).is_err());
        let archived = json!({ "id": "price_1", "active": false, "currency": "usd",
            "unit_amount": 900, "recurring": { "interval": "month", "interval_count": 1 } });
        assert!(price_from_json(&archived, Tier::Pro, BillingInterval::Month).is_err());
        let one_off = json!({ "id": "price_1", "currency": "usd", "unit_amount": 900 });
        assert!(price_from_json(&one_off, Tier::Pro, BillingInterval::Month).is_err());
    }
}
