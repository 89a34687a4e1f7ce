//! Reading PayPal's objects and webhook events into the provider-neutral types.
//!
//! - A subscription's customer is its `custom_id`: the user id this service created it for
//!   (PayPal has no customer object). A sale names it in `custom`.
//! - PayPal has no "cancel at period end": a cancelled subscription stops billing at once. What
//!   was paid for still runs: a CANCELLED subscription reads as active with
//!   `cancel_at_period_end` until the end of the last paid period: a month after its last
//!   payment (the plans are monthly), or its next billing time if that is sooner. A cycle whose
//!   payment failed was not paid, so it never extends access.
//! - A payment failure leaves the subscription ACTIVE with `failed_payments_count > 0`: read as
//!   past due. SUSPENDED (PayPal stops it after the failed payments allowed) and EXPIRED read
//!   as canceled: nothing is being paid, and the user may subscribe again.
//! - `PAYMENT.SALE.COMPLETED` is an invoice paid (the sale is the invoice). Refunds and
//!   reversals are recorded and not applied (see the README).

use chrono::{DateTime, Months, Utc};
use serde_json::Value;

use super::{EventAction, InvoiceOutcome, RemoteInvoice, WebhookEvent, WebhookRejection};
use crate::domain::{
    Tier,
    invoice::{InvoiceStatus, parse_amount},
    pricing::{BillingInterval, Terms},
    reconcile::RemoteSubscription,
    subscription::{PaymentProvider, SubscriptionStatus},
};

/// The configured PayPal plans of each paid tier.
#[derive(Debug, Clone)]
pub(crate) struct PlanMap {
    pub pro: String,
    pub premium: String,
    /// The yearly plans, when the tier is sold yearly.
    pub pro_yearly: Option<String>,
    pub premium_yearly: Option<String>,
}

impl PlanMap {
    pub fn plan_of(&self, tier: Tier, interval: BillingInterval) -> Option<&str> {
        match (tier, interval) {
            (Tier::Pro, BillingInterval::Month) => Some(&self.pro),
            (Tier::Premium, BillingInterval::Month) => Some(&self.premium),
            (Tier::Pro, BillingInterval::Year) => self.pro_yearly.as_deref(),
            (Tier::Premium, BillingInterval::Year) => self.premium_yearly.as_deref(),
            (Tier::Free, _) => None,
        }
    }

    fn tier_of(&self, plan: &str) -> Option<(Tier, BillingInterval)> {
        [Tier::Pro, Tier::Premium]
            .into_iter()
            .flat_map(|tier| BillingInterval::ALL.map(|interval| (tier, interval)))
            .find(|(tier, interval)| self.plan_of(*tier, *interval) == Some(plan))
    }
}

fn text<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter()
        .try_fold(v, |v, key| v.get(key))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn time(v: &Value, path: &[&str]) -> Option<DateTime<Utc>> {
    text(v, path)
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// A PayPal subscription (`GET /v1/billing/subscriptions/{id}` or an event's resource).
pub(super) fn subscription(v: &Value, plans: &PlanMap) -> Result<RemoteSubscription, String> {
    let id = text(v, &["id"]).ok_or("subscription without an id")?;
    let status = text(v, &["status"]).ok_or("subscription without a status")?;
    let plan = text(v, &["plan_id"]);
    let last_payment = time(v, &["billing_info", "last_payment", "time"]);
    let next_billing = time(v, &["billing_info", "next_billing_time"]);
    let failed = v
        .pointer("/billing_info/failed_payments_count")
        .and_then(|n| {
            n.as_u64()
                .or_else(|| n.as_str().and_then(|s| s.parse().ok()))
        })
        .unwrap_or(0);
    let paid_month = last_payment.and_then(|t| t.checked_add_months(Months::new(1)));
    let paid_through = match (paid_month, next_billing) {
        (Some(month), Some(next)) if failed == 0 => Some(month.min(next)),
        (month, None) | (month, Some(_)) => month,
    };
    let (status, cancel_at_period_end) = match status {
        "APPROVAL_PENDING" | "APPROVED" => (SubscriptionStatus::Incomplete, false),
        "ACTIVE" if failed > 0 => (SubscriptionStatus::PastDue, false),
        "ACTIVE" => (SubscriptionStatus::Active, false),
        "CANCELLED" if paid_through.is_some() => (SubscriptionStatus::Active, true),
        "CANCELLED" | "SUSPENDED" | "EXPIRED" => (SubscriptionStatus::Canceled, false),
        other => return Err(format!("unknown subscription status {other:?}")),
    };
    Ok(RemoteSubscription {
        provider: PaymentProvider::Paypal,
        id: id.to_string(),
        customer_id: text(v, &["custom_id"]).unwrap_or_default().to_string(),
        status,
        price_id: plan.map(str::to_string),
        tier: plan.and_then(|p| plans.tier_of(p)).map(|(tier, _)| tier),
        current_period_start: last_payment.or_else(|| time(v, &["start_time"])),
        current_period_end: if status == SubscriptionStatus::Active && !cancel_at_period_end {
            next_billing.or(paid_through)
        } else {
            paid_through
        },
        cancel_at_period_end,
        cancel_at: None,
        terms: Terms {
            interval: plan
                .and_then(|p| plans.tier_of(p))
                .map(|(_, interval)| interval),
            currency: text(
                v,
                &["billing_info", "last_payment", "amount", "currency_code"],
            )
            .map(str::to_ascii_lowercase),
            trial_end: None,
            extra_item: None,
        },
    })
}

/// A sale of a subscription (`GET /v1/payments/sale/{id}` or an event's resource): its invoice.
pub(super) fn sale(v: &Value) -> Result<RemoteInvoice, String> {
    let id = text(v, &["id"]).ok_or("sale without an id")?;
    let currency = text(v, &["amount", "currency"]).ok_or("sale without a currency")?;
    let total = text(v, &["amount", "total"])
        .and_then(|t| parse_amount(t, currency))
        .ok_or("sale without a readable amount")?;
    let status = match text(v, &["state"]).unwrap_or_default() {
        "completed" | "partially_refunded" | "refunded" => InvoiceStatus::Paid,
        "pending" => InvoiceStatus::Open,
        "denied" => InvoiceStatus::Uncollectible,
        other => return Err(format!("unknown sale state {other:?}")),
    };
    Ok(RemoteInvoice {
        provider: PaymentProvider::Paypal,
        id: id.to_string(),
        customer_id: text(v, &["custom"])
            .or_else(|| text(v, &["custom_id"]))
            .map(str::to_string),
        subscription_id: text(v, &["billing_agreement_id"]).map(str::to_string),
        amount_due: total,
        amount_paid: if status == InvoiceStatus::Paid {
            total
        } else {
            0
        },
        currency: currency.to_ascii_lowercase(),
        status,
        hosted_invoice_url: None,
        invoice_pdf_url: None,
        period_start: None,
        period_end: None,
        created_at: time(v, &["create_time"]).unwrap_or_default(),
        customer_email: None,
    })
}

/// Reads a webhook event (already verified, or stored).
pub(crate) fn parse(body: &[u8], plans: &PlanMap) -> Result<WebhookEvent, WebhookRejection> {
    let bad = |m: &str| WebhookRejection::BadPayload(m.to_string());
    let v: Value = serde_json::from_slice(body).map_err(|_| bad("not JSON"))?;
    let id = text(&v, &["id"]).ok_or_else(|| bad("event without an id"))?;
    let event_type = text(&v, &["event_type"]).ok_or_else(|| bad("event without a type"))?;
    // Events are ordered by the second (see domain::freshness): PayPal's milliseconds are cut.
    let created = time(&v, &["create_time"])
        .and_then(|t| DateTime::from_timestamp(t.timestamp(), 0))
        .ok_or_else(|| bad("event without a create_time"))?;
    let resource = v.get("resource").cloned().unwrap_or(Value::Null);
    let object_id = text(&resource, &["id"]).map(str::to_string);
    let (customer_id, action) = if event_type.starts_with("BILLING.SUBSCRIPTION.") {
        let remote = subscription(&resource, plans).map_err(|e| bad(&e))?;
        let customer = Some(remote.customer_id.clone()).filter(|c| !c.is_empty());
        (
            customer,
            EventAction::SubscriptionChanged {
                subscription_id: remote.id.clone(),
                snapshot: Some(Box::new(remote)),
            },
        )
    } else if event_type == "PAYMENT.SALE.COMPLETED" {
        let invoice = sale(&resource).map_err(|e| bad(&e))?;
        (
            invoice.customer_id.clone(),
            EventAction::InvoiceChanged {
                invoice_id: invoice.id.clone(),
                outcome: InvoiceOutcome::Paid,
                snapshot: Some(Box::new(invoice)),
            },
        )
    } else {
        (None, EventAction::Ignore)
    };
    Ok(WebhookEvent {
        id: id.to_string(),
        event_type: event_type.to_string(),
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

    fn plans() -> PlanMap {
        PlanMap {
            pro: "P-PRO".into(),
            premium: "P-PREMIUM".into(),
            pro_yearly: None,
            premium_yearly: None,
        }
    }

    fn sub(status: &str, billing: Value) -> Value {
        json!({ "id": "I-1", "plan_id": "P-PRO", "status": status, "custom_id": "user-1",
                "start_time": "2026-11-01T10:00:00Z", "billing_info": billing })
    }

    #[test]
    fn statuses_map_to_what_the_user_may_use() {
        let active = json!({ "last_payment": { "time": "2026-11-01T10:00:00Z" },
                             "next_billing_time": "2026-12-01T10:00:00Z", "failed_payments_count": 0 });
        let r = subscription(&sub("ACTIVE", active.clone()), &plans())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (r.status, r.tier, r.customer_id.as_str()),
            (SubscriptionStatus::Active, Some(Tier::Pro), "user-1")
        );
        assert_eq!(r.current_period_end, time(&active, &["next_billing_time"]));
        let failed = json!({ "last_payment": { "time": "2026-11-01T10:00:00Z" }, "failed_payments_count": 1 });
        let r = subscription(&sub("ACTIVE", failed), &plans()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.status, SubscriptionStatus::PastDue);
        // Cancelled: still paid until a month after the last payment.
        let cancelled = json!({ "last_payment": { "time": "2026-11-01T10:00:00Z" } });
        let r =
            subscription(&sub("CANCELLED", cancelled), &plans()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (r.status, r.cancel_at_period_end),
            (SubscriptionStatus::Active, true)
        );
        assert_eq!(
            r.access_ends_at(),
            DateTime::parse_from_rfc3339("2026-12-01T10:00:00Z")
                .ok()
                .map(|t| t.with_timezone(&Utc))
        );
        let r =
            subscription(&sub("CANCELLED", json!({})), &plans()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.status, SubscriptionStatus::Canceled);
        // Issue 25, item 9: cancelled after the December payment failed (PayPal retries on the
        // 6th): paid through December 1 only, not the retry date.
        let unpaid = json!({ "last_payment": { "time": "2026-11-01T10:00:00Z" },
                             "next_billing_time": "2026-12-06T10:00:00Z", "failed_payments_count": 1 });
        let r = subscription(&sub("CANCELLED", unpaid), &plans()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            r.access_ends_at(),
            DateTime::parse_from_rfc3339("2026-12-01T10:00:00Z")
                .ok()
                .map(|t| t.with_timezone(&Utc)),
            "an unpaid cycle gave access"
        );
        // Suspended by PayPal: nothing is paid, and the user is not held to it.
        let r = subscription(&sub("SUSPENDED", active.clone()), &plans())
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!crate::domain::reconcile::is_live_status(r.status), "{r:?}");
        let r = subscription(&sub("APPROVAL_PENDING", json!({})), &plans())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.status, SubscriptionStatus::Incomplete);
        assert!(subscription(&sub("WEIRD", json!({})), &plans()).is_err());
    }

    #[test]
    fn a_completed_sale_is_a_paid_invoice_of_its_subscription() {
        let event = json!({ "id": "WH-1", "event_type": "PAYMENT.SALE.COMPLETED",
            "create_time": "2026-11-01T10:00:01.472Z",
            "resource": { "id": "SALE-1", "state": "completed", "custom": "user-1",
                "billing_agreement_id": "I-1", "create_time": "2026-11-01T10:00:00Z",
                "amount": { "total": "9.00", "currency": "USD" } } });
        let e = parse(event.to_string().as_bytes(), &plans()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(e.customer_id.as_deref(), Some("user-1"));
        assert_eq!(e.created.timestamp_subsec_millis(), 0);
        let EventAction::InvoiceChanged {
            snapshot: Some(invoice),
            ..
        } = e.action
        else {
            panic!("not an invoice event: {:?}", e.action);
        };
        assert_eq!(
            (invoice.amount_paid, invoice.currency.as_str()),
            (900, "usd")
        );
        assert_eq!(invoice.subscription_id.as_deref(), Some("I-1"));
    }

    #[test]
    fn unreadable_events_are_refused_and_unknown_types_ignored() {
        for bad in [
            "",
            "[]",
            r#"{"id":"WH-1"}"#,
            r#"{"id":"WH-1","event_type":"X"}"#,
        ] {
            assert!(parse(bad.as_bytes(), &plans()).is_err(), "{bad}");
        }
        let other = json!({ "id": "WH-2", "event_type": "CATALOG.PRODUCT.UPDATED",
            "create_time": "2026-11-01T10:00:00Z", "resource": {} });
        let e = parse(other.to_string().as_bytes(), &plans()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(e.action, EventAction::Ignore);
    }
}
