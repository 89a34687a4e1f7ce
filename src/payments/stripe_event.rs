//! Reads a verified Stripe event into a provider-neutral [`WebhookEvent`].
//!
//! Events are rendered in the account's API version, not the library's, so fields are read
//! the version-tolerant way from JSON: the newest location first, the older one as fallback
//! (the invoice's subscription under `parent.subscription_details`, then `subscription`), and an
//! id may arrive as a string or as an expanded object.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{EventAction, InvoiceOutcome, RemoteInvoice, WebhookEvent, WebhookRejection};
use crate::domain::{
    Tier,
    invoice::InvoiceStatus,
    pricing::{BillingInterval, Terms},
    reconcile::RemoteSubscription,
    subscription::PaymentProvider,
};

/// Which tier each Stripe price is.
#[derive(Debug, Clone)]
pub struct PriceMap {
    /// The PRO price for new checkouts first, then others that are PRO too.
    pub pro: Vec<String>,
    pub premium: Vec<String>,
    /// The yearly prices, when the tier is sold yearly.
    pub pro_yearly: Option<String>,
    pub premium_yearly: Option<String>,
    /// The metered price of extra cards (overage), when sold.
    pub extra_card: Option<String>,
}

impl PriceMap {
    pub fn tier_of(&self, price_id: &str) -> Option<Tier> {
        let is = |p: &Option<String>| p.as_deref() == Some(price_id);
        if self.pro.iter().any(|p| p == price_id) || is(&self.pro_yearly) {
            Some(Tier::Pro)
        } else if self.premium.iter().any(|p| p == price_id) || is(&self.premium_yearly) {
            Some(Tier::Premium)
        } else {
            None
        }
    }

    /// The price new checkouts and plan changes to `tier` billed every `interval` use.
    pub fn price_of(&self, tier: Tier, interval: BillingInterval) -> Option<&str> {
        match (tier, interval) {
            (Tier::Pro, BillingInterval::Month) => self.pro.first().map(String::as_str),
            (Tier::Premium, BillingInterval::Month) => self.premium.first().map(String::as_str),
            (Tier::Pro, BillingInterval::Year) => self.pro_yearly.as_deref(),
            (Tier::Premium, BillingInterval::Year) => self.premium_yearly.as_deref(),
            (Tier::Free, _) => None,
        }
    }

    /// Whether `price_id` is the metered extra-card price (a subscription's second item).
    pub fn is_extra_card(&self, price_id: &str) -> bool {
        self.extra_card.as_deref() == Some(price_id)
    }

    /// Every price new checkouts use, with its tier and interval.
    pub fn selling(&self) -> Vec<(Tier, BillingInterval, &str)> {
        [Tier::Pro, Tier::Premium]
            .into_iter()
            .flat_map(|tier| BillingInterval::ALL.map(|interval| (tier, interval)))
            .filter_map(|(tier, interval)| {
                self.price_of(tier, interval)
                    .filter(|p| !p.is_empty())
                    .map(|p| (tier, interval, p))
            })
            .collect()
    }
}

fn bad(what: &str) -> WebhookRejection {
    WebhookRejection::BadPayload(what.to_string())
}

/// An id field that may be a string or an expanded object with an `id`.
fn id_of(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Object(o) => o.get("id").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// [`id_of`] for the gateway's raw answers.
pub(super) fn id_of_value(value: Option<&Value>) -> Option<String> {
    id_of(value)
}

fn timestamp(value: Option<&Value>) -> Option<DateTime<Utc>> {
    value
        .and_then(Value::as_i64)
        .and_then(|t| DateTime::from_timestamp(t, 0))
}

fn invoice_subscription(invoice: &Value) -> Option<String> {
    id_of(invoice.pointer("/parent/subscription_details/subscription"))
        .or_else(|| id_of(invoice.get("subscription")))
}

/// A subscription object (from an event or a listing) as this service sees it; `None` when a
/// field it needs is missing or unknown (the object is then fetched instead).
pub(super) fn subscription_from_json(sub: &Value, prices: &PriceMap) -> Option<RemoteSubscription> {
    let items = sub
        .pointer("/items/data")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let price_of = |i: &Value| id_of(i.get("price")).or_else(|| id_of(i.get("plan")));
    let is_extra = |i: &&Value| price_of(i).is_some_and(|p| prices.is_extra_card(&p));
    // The plan's item; the metered extra-card item (overage) is beside it.
    let item = items.iter().find(|i| !is_extra(i));
    let extra_item = items.iter().find(is_extra).and_then(|i| id_of(i.get("id")));
    let price_id = item.and_then(price_of);
    // API versions since 2025-03-31 keep periods on items; older ones on the subscription.
    let period =
        |name: &str| timestamp(item.and_then(|i| i.get(name))).or_else(|| timestamp(sub.get(name)));
    Some(RemoteSubscription {
        provider: PaymentProvider::Stripe,
        id: id_of(sub.get("id"))?,
        customer_id: id_of(sub.get("customer"))?,
        status: sub.get("status")?.as_str()?.parse().ok()?,
        tier: price_id.as_deref().and_then(|p| prices.tier_of(p)),
        price_id,
        current_period_start: period("current_period_start"),
        current_period_end: period("current_period_end"),
        cancel_at_period_end: sub.get("cancel_at_period_end")?.as_bool()?,
        cancel_at: timestamp(sub.get("cancel_at")),
        terms: Terms {
            interval: item
                .and_then(|i| i.pointer("/price/recurring/interval"))
                .and_then(Value::as_str)
                .and_then(|i| i.parse().ok()),
            currency: sub
                .get("currency")
                .and_then(Value::as_str)
                .map(str::to_ascii_lowercase),
            trial_end: timestamp(sub.get("trial_end")),
            extra_item,
        },
    })
}

/// An invoice object as this service sees it; `None` when a field it needs is missing.
pub(super) fn invoice_from_json(invoice: &Value) -> Option<RemoteInvoice> {
    let status: InvoiceStatus = invoice.get("status")?.as_str()?.parse().ok()?;
    let text = |name: &str| {
        invoice
            .get(name)
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    Some(RemoteInvoice {
        provider: PaymentProvider::Stripe,
        id: id_of(invoice.get("id"))?,
        customer_id: id_of(invoice.get("customer")),
        subscription_id: invoice_subscription(invoice),
        amount_due: invoice.get("amount_due")?.as_i64()?,
        amount_paid: invoice.get("amount_paid")?.as_i64()?,
        currency: text("currency")?,
        status,
        hosted_invoice_url: text("hosted_invoice_url"),
        invoice_pdf_url: text("invoice_pdf"),
        period_start: timestamp(invoice.get("period_start")),
        period_end: timestamp(invoice.get("period_end")),
        created_at: timestamp(invoice.get("created"))?,
        customer_email: text("customer_email"),
    })
}

pub(crate) fn parse(body: &[u8], prices: &PriceMap) -> Result<WebhookEvent, WebhookRejection> {
    let event: Value = serde_json::from_slice(body).map_err(|_| bad("not JSON"))?;
    let id = event
        .get("id")
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty() && id.len() <= 255)
        .ok_or_else(|| bad("missing id"))?
        .to_string();
    let event_type = event
        .get("type")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty() && t.len() <= 255)
        .ok_or_else(|| bad("missing type"))?
        .to_string();
    let created = timestamp(event.get("created")).ok_or_else(|| bad("missing created"))?;
    let object = event
        .pointer("/data/object")
        .filter(|o| o.is_object())
        .ok_or_else(|| bad("missing data.object"))?;
    let object_id = id_of(object.get("id"));
    let mut customer_id = id_of(object.get("customer"));
    let required_id = || {
        object_id
            .clone()
            .ok_or_else(|| bad("missing data.object.id"))
    };
    let invoice = |outcome| -> Result<EventAction, WebhookRejection> {
        Ok(EventAction::InvoiceChanged {
            invoice_id: required_id()?,
            outcome,
            snapshot: invoice_from_json(object).map(Box::new),
        })
    };

    let action = match event_type.as_str() {
        "checkout.session.completed" => {
            if object.get("mode").and_then(Value::as_str) == Some("subscription") {
                EventAction::CheckoutCompleted {
                    user_ref: object
                        .get("client_reference_id")
                        .and_then(Value::as_str)
                        .or_else(|| object.pointer("/metadata/user_id").and_then(Value::as_str))
                        .map(str::to_string),
                    subscription_id: id_of(object.get("subscription")),
                }
            } else {
                EventAction::Ignore
            }
        }
        "customer.subscription.created"
        | "customer.subscription.updated"
        | "customer.subscription.deleted"
        | "customer.subscription.paused"
        | "customer.subscription.resumed" => EventAction::SubscriptionChanged {
            subscription_id: required_id()?,
            snapshot: subscription_from_json(object, prices).map(Box::new),
        },
        "customer.subscription.trial_will_end" => EventAction::TrialWillEnd {
            subscription_id: required_id()?,
            trial_end: timestamp(object.get("trial_end")),
        },
        "customer.deleted" => {
            customer_id = Some(required_id()?);
            EventAction::CustomerDeleted
        }
        "invoice.created" | "invoice.finalized" | "invoice.updated" => {
            invoice(InvoiceOutcome::Updated)?
        }
        "invoice.paid" | "invoice.payment_succeeded" => invoice(InvoiceOutcome::Paid)?,
        "invoice.payment_failed" => invoice(InvoiceOutcome::PaymentFailed)?,
        "invoice.payment_action_required" => invoice(InvoiceOutcome::ActionRequired)?,
        "invoice.voided" => invoice(InvoiceOutcome::Voided)?,
        "invoice.marked_uncollectible" => invoice(InvoiceOutcome::MarkedUncollectible)?,
        _ => EventAction::Ignore,
    };
    Ok(WebhookEvent {
        id,
        event_type,
        created,
        customer_id,
        object_id,
        action,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::domain::subscription::SubscriptionStatus;

    fn prices() -> PriceMap {
        PriceMap {
            pro: vec!["price_pro".into(), "price_pro_2024".into()],
            premium: vec!["price_premium".into()],
            pro_yearly: None,
            premium_yearly: None,
            extra_card: None,
        }
    }

    fn event(kind: &str, object: Value) -> Vec<u8> {
        json!({"id": "evt_1", "object": "event", "type": kind, "created": 1_800_000_000,
               "data": {"object": object}})
        .to_string()
        .into_bytes()
    }

    #[test]
    fn invoice_subscription_is_read_from_the_new_place_first() {
        let new = event(
            "invoice.paid",
            json!({"id": "in_1", "customer": "cus_1", "status": "paid", "amount_due": 900,
                   "amount_paid": 900, "currency": "usd", "created": 1_800_000_000,
                   "parent": {"subscription_details": {"subscription": "sub_new"}},
                   "subscription": "sub_old"}),
        );
        let old = event(
            "invoice.paid",
            json!({"id": "in_1", "customer": {"id": "cus_1"}, "subscription": "sub_old",
                   "status": "paid", "amount_due": 900, "amount_paid": 900, "currency": "usd",
                   "created": 1_800_000_000}),
        );
        for (body, want) in [(new, "sub_new"), (old, "sub_old")] {
            let e = parse(&body, &prices()).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(e.customer_id.as_deref(), Some("cus_1"));
            let EventAction::InvoiceChanged {
                invoice_id,
                outcome,
                snapshot: Some(snapshot),
            } = e.action
            else {
                panic!("{:?}", e.action)
            };
            assert_eq!(
                (invoice_id.as_str(), outcome),
                ("in_1", InvoiceOutcome::Paid)
            );
            assert_eq!(snapshot.subscription_id.as_deref(), Some(want));
            assert_eq!(snapshot.status, InvoiceStatus::Paid);
        }
    }

    #[test]
    fn checkout_links_the_user_and_ignores_other_modes() {
        let e = parse_with(&event(
            "checkout.session.completed",
            json!({"id": "cs_1", "mode": "subscription", "customer": "cus_1",
                   "subscription": "sub_1", "client_reference_id": "u1"}),
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            e.action,
            EventAction::CheckoutCompleted {
                user_ref: Some("u1".into()),
                subscription_id: Some("sub_1".into())
            }
        );
        let e = parse_with(&event(
            "checkout.session.completed",
            json!({"id": "cs_1", "mode": "payment"}),
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(e.action, EventAction::Ignore);
    }

    #[test]
    fn unknown_types_are_kept_and_garbage_is_refused() {
        let e = parse_with(&event("plan.created", json!({"id": "price_1"})))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(e.action, EventAction::Ignore);
        assert!(parse(b"not json", &prices()).is_err());
        assert!(parse(br#"{"id":"evt_1","type":"invoice.paid"}"#, &prices()).is_err());
    }

    fn parse_with(body: &[u8]) -> Result<WebhookEvent, WebhookRejection> {
        parse(body, &prices())
    }

    #[test]
    fn a_subscription_snapshot_is_read_in_either_api_version() {
        let new = json!({"id": "sub_1", "customer": "cus_1", "status": "active",
            "cancel_at_period_end": false, "cancel_at": null,
            "items": {"data": [{"price": {"id": "price_pro_2024"},
                "current_period_start": 1_800_000_000, "current_period_end": 1_802_592_000}]}});
        let old = json!({"id": "sub_1", "customer": {"id": "cus_1"}, "status": "past_due",
            "cancel_at_period_end": true, "current_period_start": 1_800_000_000,
            "current_period_end": 1_802_592_000,
            "items": {"data": [{"price": "price_premium"}]}});
        let a = subscription_from_json(&new, &prices()).unwrap_or_else(|| panic!("new"));
        assert_eq!(
            (a.tier, a.status),
            (Some(Tier::Pro), SubscriptionStatus::Active)
        );
        assert_eq!(
            a.current_period_end.map(|t| t.timestamp()),
            Some(1_802_592_000)
        );
        let b = subscription_from_json(&old, &prices()).unwrap_or_else(|| panic!("old"));
        assert_eq!(
            (b.tier, b.status),
            (Some(Tier::Premium), SubscriptionStatus::PastDue)
        );
        assert!(b.cancel_at_period_end);
        assert_eq!(
            b.current_period_start.map(|t| t.timestamp()),
            Some(1_800_000_000)
        );
        // An unknown price is kept, with no tier; an unknown status means no snapshot.
        let odd = json!({"id": "sub_1", "customer": "cus_1", "status": "active",
            "cancel_at_period_end": false, "items": {"data": [{"price": {"id": "price_x"}}]}});
        let c = subscription_from_json(&odd, &prices()).unwrap_or_else(|| panic!("odd"));
        assert_eq!((c.tier, c.price_id.as_deref()), (None, Some("price_x")));
        let weird = json!({"id": "sub_1", "customer": "cus_1", "status": "frozen",
            "cancel_at_period_end": false});
        assert!(subscription_from_json(&weird, &prices()).is_none());
    }

    #[test]
    fn voided_uncollectible_and_deleted_customers_are_read() {
        let e = parse_with(&event(
            "invoice.voided",
            json!({"id": "in_1", "customer": "cus_1",
            "status": "void", "amount_due": 0, "amount_paid": 0, "currency": "jpy",
            "created": 1_800_000_000}),
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            e.action,
            EventAction::InvoiceChanged {
                outcome: InvoiceOutcome::Voided,
                snapshot: Some(_),
                ..
            }
        ));
        let e = parse_with(&event(
            "customer.deleted",
            json!({"id": "cus_9", "object": "customer"}),
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(e.action, EventAction::CustomerDeleted);
        assert_eq!(e.order_key(), "cus_9");
    }
}
