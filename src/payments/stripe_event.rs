//! Reads a verified Stripe event into a provider-neutral [`WebhookEvent`].
//!
//! Events are rendered in the account's API version, not the library's, so fields are read
//! the version-tolerant way from JSON: the newest location first, the older one as fallback
//! (the invoice's subscription under `parent.subscription_details`, then `subscription`), and an
//! id may arrive as a string or as an expanded object.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{EventAction, InvoiceOutcome, WebhookEvent, WebhookRejection};

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

fn timestamp(value: Option<&Value>) -> Option<DateTime<Utc>> {
    value
        .and_then(Value::as_i64)
        .and_then(|t| DateTime::from_timestamp(t, 0))
}

fn invoice_subscription(invoice: &Value) -> Option<String> {
    id_of(invoice.pointer("/parent/subscription_details/subscription"))
        .or_else(|| id_of(invoice.get("subscription")))
}

pub(super) fn parse(body: &[u8]) -> Result<WebhookEvent, WebhookRejection> {
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
    let created = timestamp(event.get("created")).unwrap_or_else(Utc::now);
    let object = event
        .pointer("/data/object")
        .filter(|o| o.is_object())
        .ok_or_else(|| bad("missing data.object"))?;
    let customer_id = id_of(object.get("customer"));
    let object_id = || id_of(object.get("id")).ok_or_else(|| bad("missing data.object.id"));

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
            subscription_id: object_id()?,
        },
        "customer.subscription.trial_will_end" => EventAction::TrialWillEnd {
            subscription_id: object_id()?,
            trial_end: timestamp(object.get("trial_end")),
        },
        "invoice.paid" | "invoice.payment_succeeded" => EventAction::InvoiceChanged {
            invoice_id: object_id()?,
            subscription_id: invoice_subscription(object),
            outcome: InvoiceOutcome::Paid,
        },
        "invoice.payment_failed" => EventAction::InvoiceChanged {
            invoice_id: object_id()?,
            subscription_id: invoice_subscription(object),
            outcome: InvoiceOutcome::PaymentFailed,
        },
        "invoice.payment_action_required" => EventAction::InvoiceChanged {
            invoice_id: object_id()?,
            subscription_id: invoice_subscription(object),
            outcome: InvoiceOutcome::ActionRequired,
        },
        _ => EventAction::Ignore,
    };
    Ok(WebhookEvent {
        id,
        event_type,
        created,
        customer_id,
        action,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

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
            json!({"id": "in_1", "customer": "cus_1",
                   "parent": {"subscription_details": {"subscription": "sub_new"}},
                   "subscription": "sub_old"}),
        );
        let old = event(
            "invoice.paid",
            json!({"id": "in_1", "customer": {"id": "cus_1"}, "subscription": "sub_old"}),
        );
        for (body, want) in [(new, "sub_new"), (old, "sub_old")] {
            let e = parse(&body).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(e.customer_id.as_deref(), Some("cus_1"));
            assert_eq!(
                e.action,
                EventAction::InvoiceChanged {
                    invoice_id: "in_1".into(),
                    subscription_id: Some(want.into()),
                    outcome: InvoiceOutcome::Paid
                }
            );
        }
    }

    #[test]
    fn checkout_links_the_user_and_ignores_other_modes() {
        let e = parse(&event(
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
        let e = parse(&event(
            "checkout.session.completed",
            json!({"id": "cs_1", "mode": "payment"}),
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(e.action, EventAction::Ignore);
    }

    #[test]
    fn unknown_types_are_kept_and_garbage_is_refused() {
        let e = parse(&event("plan.created", json!({"id": "price_1"})))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(e.action, EventAction::Ignore);
        assert!(parse(b"not json").is_err());
        assert!(parse(br#"{"id":"evt_1","type":"invoice.paid"}"#).is_err());
    }
}
