//! The sandbox's payer: what its checkout and portal pages show, and what their buttons do
//! (Pay starts the subscription and its paid invoice; the portal cancels or resumes), each
//! answered with the signed events Stripe would send. The API side is in `sandbox.rs`.

use chrono::{DateTime, Months, Utc};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use super::sandbox::{Sandbox, SandboxError, SignedEvents, State, list_price, lock, merge, new_id};
use crate::domain::{Tier, pricing::BillingInterval};

impl Sandbox {
    /// What a checkout page shows: the plan, the price and where Cancel returns to.
    pub fn checkout(&self, session_id: &str) -> Result<CheckoutPage, SandboxError> {
        let state = lock(&self.state);
        let (session, form) = state
            .sessions
            .get(session_id)
            .ok_or(SandboxError::UnknownSession)?;
        let price = form
            .get("line_items[0][price]")
            .cloned()
            .unwrap_or_default();
        let (tier, interval, amount) = list_price(&price).ok_or(SandboxError::UnknownSession)?;
        Ok(CheckoutPage {
            tier,
            interval,
            amount_minor: amount,
            status: session["status"].as_str().unwrap_or("open").to_string(),
            trial_days: form
                .get("subscription_data[trial_period_days]")
                .and_then(|d| d.parse().ok()),
            cancel_url: form.get("cancel_url").cloned().unwrap_or_default(),
        })
    }

    /// The payer pressed Pay: the subscription starts, its first invoice is paid, and the
    /// events Stripe would send are returned, signed, with the page to return to.
    pub fn pay(
        &self,
        session_id: &str,
        now: DateTime<Utc>,
    ) -> Result<(SignedEvents, String), SandboxError> {
        let mut state = lock(&self.state);
        let (session, form) = state
            .sessions
            .get(session_id)
            .cloned()
            .ok_or(SandboxError::UnknownSession)?;
        if session["status"] != "open" {
            return Err(SandboxError::SessionClosed(
                session["status"].as_str().unwrap_or("closed").to_string(),
            ));
        }
        let price_id = form
            .get("line_items[0][price]")
            .cloned()
            .unwrap_or_default();
        let (_, interval, amount) = list_price(&price_id).ok_or(SandboxError::UnknownSession)?;
        let customer = form.get("customer").cloned().unwrap_or_default();
        let user = form.get("client_reference_id").cloned().unwrap_or_default();
        let trial_days: Option<u32> = form
            .get("subscription_data[trial_period_days]")
            .and_then(|d| d.parse().ok());
        let start = now;
        let end = match (trial_days, interval) {
            (Some(days), _) => start + chrono::Duration::days(i64::from(days)),
            (None, BillingInterval::Month) => {
                start.checked_add_months(Months::new(1)).unwrap_or(start)
            }
            (None, BillingInterval::Year) => {
                start.checked_add_months(Months::new(12)).unwrap_or(start)
            }
        };
        let sub_id = new_id("sub");
        let invoice_id = new_id("in");
        let mut item = self.objects["subscription_item"].clone();
        merge(
            &mut item,
            json!({ "id": new_id("si"), "subscription": sub_id,
                    "price": self.price(&price_id).unwrap_or_default(), "quantity": 1,
                    "current_period_start": start.timestamp(),
                    "current_period_end": end.timestamp() }),
        );
        let mut sub = self.objects["subscription"].clone();
        merge(
            &mut sub,
            json!({ "id": sub_id, "customer": customer, "currency": "usd",
                    "status": if trial_days.is_some() { "trialing" } else { "active" },
                    "cancel_at_period_end": false, "cancel_at": null, "canceled_at": null,
                    "ended_at": null, "pending_update": null, "schedule": null,
                    "trial_start": trial_days.map(|_| start.timestamp()),
                    "trial_end": trial_days.map(|_| end.timestamp()),
                    "latest_invoice": invoice_id, "metadata": { "user_id": user },
                    "items": { "object": "list", "data": [item], "has_more": false,
                               "url": format!("/v1/subscription_items?subscription={sub_id}") } }),
        );
        let paid = if trial_days.is_some() { 0 } else { amount };
        let mut invoice = self.objects["invoice"].clone();
        merge(
            &mut invoice,
            json!({ "id": invoice_id, "customer": customer, "status": "paid", "currency": "usd",
                    "amount_due": paid, "amount_paid": paid, "amount_remaining": 0,
                    "created": now.timestamp(), "period_start": start.timestamp(),
                    "period_end": start.timestamp(), "billing_reason": "subscription_create",
                    "hosted_invoice_url": format!("{}/sandbox/invoice/{invoice_id}", self.pages),
                    "invoice_pdf": null, "customer_email": null,
                    "parent": { "type": "subscription_details", "quote_details": null,
                        "subscription_details": { "subscription": sub_id, "metadata": {} } } }),
        );
        let mut completed = session.clone();
        merge(
            &mut completed,
            json!({ "status": "complete", "payment_status": "paid", "subscription": sub_id,
                    "metadata": { "user_id": user } }),
        );
        state
            .sessions
            .insert(session_id.to_string(), (completed.clone(), form.clone()));
        state.subscriptions.insert(sub_id, sub.clone());
        state.invoices.insert(invoice_id, invoice.clone());
        let success = form.get("success_url").cloned().unwrap_or_default();
        let events = [
            ("checkout.session.completed", completed),
            ("customer.subscription.created", sub),
            ("invoice.paid", invoice),
        ]
        .into_iter()
        .map(|(kind, object)| self.event(&mut state, kind, object, now))
        .collect();
        Ok((events, success))
    }

    /// What a portal page shows: the customer's subscriptions and where to return to.
    pub fn portal(&self, portal_id: &str) -> Result<(Vec<Value>, String), SandboxError> {
        let state = lock(&self.state);
        let portal = state
            .portals
            .get(portal_id)
            .ok_or(SandboxError::UnknownPortal)?;
        let customer = portal["customer"].as_str().unwrap_or_default();
        let subs = state
            .subscriptions
            .values()
            .filter(|s| s["customer"] == customer && s["status"] != "canceled")
            .cloned()
            .collect();
        Ok((
            subs,
            portal["return_url"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        ))
    }

    /// The customer cancelled (or resumed) at the period end in the portal: the event Stripe
    /// would send.
    pub fn set_cancel(
        &self,
        portal_id: &str,
        cancel: bool,
        now: DateTime<Utc>,
    ) -> Result<SignedEvents, SandboxError> {
        let mut state = lock(&self.state);
        let portal = state
            .portals
            .get(portal_id)
            .cloned()
            .ok_or(SandboxError::UnknownPortal)?;
        let customer = portal["customer"].as_str().unwrap_or_default().to_string();
        let sub = state
            .subscriptions
            .values_mut()
            .find(|s| s["customer"] == customer.as_str() && s["status"] != "canceled")
            .ok_or(SandboxError::NoSubscription)?;
        sub["cancel_at_period_end"] = json!(cancel);
        sub["canceled_at"] = if cancel {
            json!(now.timestamp())
        } else {
            Value::Null
        };
        let sub = sub.clone();
        Ok(vec![self.event(
            &mut state,
            "customer.subscription.updated",
            sub,
            now,
        )])
    }

    /// A Stripe event around `object`, kept for `GET /v1/events` and signed for delivery.
    fn event(
        &self,
        state: &mut State,
        kind: &str,
        object: Value,
        now: DateTime<Utc>,
    ) -> (String, String) {
        let body = json!({
            "id": new_id("evt"), "object": "event", "api_version": "2026-09-30.endive",
            "created": now.timestamp(), "data": { "object": object }, "livemode": false,
            "pending_webhooks": 1, "request": { "id": null, "idempotency_key": null },
            "type": kind,
        });
        state.events.push(body.clone());
        let body = body.to_string();
        let t = now.timestamp();
        let signature = Hmac::<Sha256>::new_from_slice(self.webhook_secret.as_bytes())
            .map(|mut mac| {
                mac.update(format!("{t}.{body}").as_bytes());
                hex::encode(mac.finalize().into_bytes())
            })
            .unwrap_or_default();
        (format!("t={t},v1={signature}"), body)
    }
}

/// What the sandbox's checkout page shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckoutPage {
    pub tier: Tier,
    pub interval: BillingInterval,
    pub amount_minor: i64,
    pub status: String,
    pub trial_days: Option<u32>,
    pub cancel_url: String,
}
