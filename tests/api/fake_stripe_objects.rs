//! Stripe objects the fake answers with, built from Stripe's own examples.

use serde_json::{Value, json};

use super::{InvoiceSpec, SubSpec};

pub fn merge(target: &mut Value, patch: Value) {
    if let (Value::Object(t), Value::Object(p)) = (target, patch) {
        for (k, v) in p {
            t.insert(k, v);
        }
    }
}

/// A recurring price with a currency option per entry of `amounts` (the first is its own).
pub fn price_object(fixtures: &Value, id: &str, interval: &str, amounts: &[(&str, i64)]) -> Value {
    let mut price = fixtures["price"].clone();
    let (currency, amount) = amounts[0];
    let options: serde_json::Map<String, Value> = amounts
        .iter()
        .map(|(c, a)| {
            (
                c.to_string(),
                json!({ "unit_amount": a, "unit_amount_decimal": a.to_string(),
                        "tax_behavior": "unspecified", "custom_unit_amount": null, "tiers": null }),
            )
        })
        .collect();
    merge(
        &mut price,
        json!({ "id": id, "currency": currency, "unit_amount": amount,
                "unit_amount_decimal": amount.to_string(),
                "recurring": { "interval": interval, "interval_count": 1, "meter": null,
                               "trial_period_days": null, "usage_type": "licensed" },
                "currency_options": options }),
    );
    price
}

/// The interval of a test price: its id says "yearly" for a year.
pub fn interval_of(price: &str) -> &'static str {
    if price.contains("yearly") {
        "year"
    } else {
        "month"
    }
}

pub fn subscription_object(fixtures: &Value, spec: &SubSpec<'_>) -> Value {
    let mut sub = fixtures["subscription"].clone();
    let mut item = fixtures["subscription_item"].clone();
    let mut price = fixtures["price"].clone();
    merge(
        &mut price,
        json!({ "id": spec.price,
                "recurring": { "interval": interval_of(spec.price), "interval_count": 1,
                               "meter": null, "trial_period_days": null, "usage_type": "licensed" } }),
    );
    merge(
        &mut item,
        json!({
            "id": format!("si_{}", spec.id),
            "subscription": spec.id,
            "price": price,
            "current_period_start": spec.period_start,
            "current_period_end": spec.period_end,
            "quantity": 1,
        }),
    );
    merge(
        &mut sub,
        json!({
            "id": spec.id,
            "customer": spec.customer,
            "status": spec.status,
            "cancel_at_period_end": spec.cancel_at_period_end,
            "cancel_at": null,
            "canceled_at": null,
            "ended_at": null,
            "latest_invoice": null,
            "pending_update": null,
            "schedule": null,
            "trial_end": null,
            "trial_start": null,
            "metadata": {},
            "items": { "object": "list", "data": [item], "has_more": false,
                       "url": format!("/v1/subscription_items?subscription={}", spec.id) },
        }),
    );
    sub
}

pub fn invoice_object(fixtures: &Value, spec: &InvoiceSpec<'_>) -> Value {
    let mut invoice = fixtures["invoice"].clone();
    merge(
        &mut invoice,
        json!({
            "id": spec.id,
            "customer": spec.customer,
            "status": spec.status,
            "amount_due": spec.amount_due,
            "amount_paid": spec.amount_paid,
            "amount_remaining": spec.amount_due - spec.amount_paid,
            "currency": "usd",
            "created": spec.created,
            "period_start": spec.created - 30 * 86_400,
            "period_end": spec.created,
            "hosted_invoice_url": format!("https://invoice.stripe.test/i/{}", spec.id),
            "invoice_pdf": format!("https://pay.stripe.test/invoice/{}/pdf", spec.id),
            "billing_reason": "subscription_cycle",
            "parent": {
                "type": "subscription_details",
                "quote_details": null,
                "subscription_details": { "subscription": spec.subscription, "metadata": {} },
            },
        }),
    );
    invoice
}
