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

pub fn subscription_object(fixtures: &Value, spec: &SubSpec<'_>) -> Value {
    let mut sub = fixtures["subscription"].clone();
    let mut item = fixtures["subscription_item"].clone();
    let mut price = fixtures["price"].clone();
    merge(&mut price, json!({ "id": spec.price }));
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
