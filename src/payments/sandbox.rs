//! The development sandbox: in `APP_ENV=development` with no payment provider configured, this
//! service plays Stripe itself, so the whole paid path runs on a fresh machine with no keys and
//! no internet. The real Stripe gateway talks to it (under `/sandbox/stripe/` on the sidecar,
//! with keys made up for this process, checked as Stripe checks them); its checkout and portal
//! pages (`sidecar::sandbox`) are marked "test mode, no money moves", and their buttons sign
//! Stripe events with the sandbox's webhook secret and hand them to the same intake, inbox and
//! event processor as real deliveries. Nothing here is reachable in production: the
//! configuration never turns it on there (`config::Config::sandbox`).
//!
//! State lives in memory: a restart forgets the sandbox's customers and subscriptions (the
//! service's own rows stay, and refer to objects the sandbox then answers 404 for, as Stripe
//! would for another account's ids). Answers are built from Stripe's own example objects
//! (`sandbox_objects.json`, from stripe/openapi, MIT) so async-stripe reads them.

use std::{collections::HashMap, sync::Mutex};

use chrono::Utc;
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use crate::{
    config::{SANDBOX_PRICES, StripeConfig},
    domain::{Tier, pricing::BillingInterval},
};

const OBJECTS: &str = include_str!("sandbox_objects.json");

/// An answer of the sandbox's API: status and JSON body.
pub type Answer = (u16, Value);

/// A page action the sandbox cannot do.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SandboxError {
    #[error("no such checkout session")]
    UnknownSession,
    #[error("this checkout session is {0}")]
    SessionClosed(String),
    #[error("no such portal session")]
    UnknownPortal,
    #[error("no subscription to change")]
    NoSubscription,
}

/// Events to deliver, each a signed Stripe event: (`Stripe-Signature` value, body).
pub type SignedEvents = Vec<(String, String)>;

#[derive(Default)]
pub(super) struct State {
    pub(super) customers: HashMap<String, Value>,
    /// Checkout sessions with their form (price, URLs).
    pub(super) sessions: HashMap<String, (Value, HashMap<String, String>)>,
    pub(super) subscriptions: HashMap<String, Value>,
    pub(super) invoices: HashMap<String, Value>,
    pub(super) portals: HashMap<String, Value>,
    pub(super) events: Vec<Value>,
    pub(super) replays: HashMap<String, Value>,
}

/// The sandbox's Stripe.
pub struct Sandbox {
    secret_key: String,
    pub(super) webhook_secret: String,
    /// Where the sandbox's pages are (the sidecar's origin).
    pub(super) pages: String,
    pub(super) objects: Value,
    pub(super) state: Mutex<State>,
}

pub(super) fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(super) fn merge(target: &mut Value, patch: Value) {
    if let (Value::Object(t), Value::Object(p)) = (target, patch) {
        for (k, v) in p {
            t.insert(k, v);
        }
    }
}

fn not_found(what: &str) -> Answer {
    (
        404,
        json!({ "error": { "type": "invalid_request_error", "message": format!("No such {what}") } }),
    )
}

fn refused(message: &str) -> Answer {
    (
        400,
        json!({ "error": { "type": "invalid_request_error", "message": message } }),
    )
}

/// A random id with Stripe's prefix (unguessable: page actions name them).
pub(super) fn new_id(prefix: &str) -> String {
    format!("{prefix}_sandbox_{}", uuid::Uuid::new_v4().simple())
}

/// The list price of a sandbox price id (minor units, USD) and what it sells.
pub(super) fn list_price(price: &str) -> Option<(Tier, BillingInterval, i64)> {
    let (_, tier, interval) = SANDBOX_PRICES.iter().find(|(id, _, _)| *id == price)?;
    let monthly = tier.plan().price_minor;
    Some((
        *tier,
        *interval,
        match interval {
            BillingInterval::Month => monthly,
            BillingInterval::Year => monthly * 10,
        },
    ))
}

impl Sandbox {
    /// The sandbox for the keys of `config` (from `config::sandbox_stripe`), its pages under
    /// `pages` (`http://host:port`).
    pub fn new(config: &StripeConfig, pages: &str) -> Result<Self, serde_json::Error> {
        Ok(Self {
            secret_key: config.secret_key.expose_secret().to_string(),
            webhook_secret: config
                .webhook_secrets
                .first()
                .map(|s| s.expose_secret().to_string())
                .unwrap_or_default(),
            pages: pages.trim_end_matches('/').to_string(),
            objects: serde_json::from_str(OBJECTS)?,
            state: Mutex::new(State::default()),
        })
    }

    /// Answers one API request the way Stripe does (for the paths this service calls).
    pub fn api(
        &self,
        method: &str,
        path: &str,
        authorization: Option<&str>,
        idempotency_key: Option<&str>,
        form: &HashMap<String, String>,
    ) -> Answer {
        if authorization != Some(format!("Bearer {}", self.secret_key).as_str()) {
            return (
                401,
                json!({ "error": { "type": "invalid_request_error", "message": "Invalid API Key provided" } }),
            );
        }
        let mut state = lock(&self.state);
        if method == "POST"
            && let Some(answer) = idempotency_key.and_then(|k| state.replays.get(k))
        {
            return (200, answer.clone());
        }
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let answer = match (method, segments.as_slice()) {
            ("POST", ["v1", "customers"]) => {
                let mut customer = self.objects["customer"].clone();
                let id = new_id("cus");
                merge(
                    &mut customer,
                    json!({ "id": id, "email": form.get("email"),
                            "metadata": { "user_id": form.get("metadata[user_id]") } }),
                );
                state.customers.insert(id, customer.clone());
                customer
            }
            ("GET", ["v1", "prices", id]) => match self.price(id) {
                Some(price) => price,
                None => return not_found("price"),
            },
            ("POST", ["v1", "checkout", "sessions"]) => {
                let price = form
                    .get("line_items[0][price]")
                    .cloned()
                    .unwrap_or_default();
                if list_price(&price).is_none() {
                    return refused(&format!("No such price: '{price}'"));
                }
                let mut session = self.objects["checkout.session"].clone();
                let id = new_id("cs");
                merge(
                    &mut session,
                    json!({ "id": id, "url": format!("{}/sandbox/checkout/{id}", self.pages),
                            "mode": "subscription", "status": "open", "payment_status": "unpaid",
                            "customer": form.get("customer"),
                            "client_reference_id": form.get("client_reference_id"),
                            "success_url": form.get("success_url"),
                            "cancel_url": form.get("cancel_url"), "subscription": null }),
                );
                state.sessions.insert(id, (session.clone(), form.clone()));
                session
            }
            ("GET", ["v1", "checkout", "sessions", id]) => match state.sessions.get(*id) {
                Some((session, _)) => session.clone(),
                None => return not_found("checkout.session"),
            },
            ("POST", ["v1", "checkout", "sessions", id, "expire"]) => {
                let Some((session, _)) = state.sessions.get_mut(*id) else {
                    return not_found("checkout.session");
                };
                if session["status"] == "complete" {
                    return refused(
                        "Only Checkout Sessions with a status in [\"open\"] can be expired",
                    );
                }
                session["status"] = json!("expired");
                session.clone()
            }
            ("GET", ["v1", "subscriptions"]) => {
                let customer = form.get("customer").cloned().unwrap_or_default();
                let data: Vec<Value> = state
                    .subscriptions
                    .values()
                    .filter(|s| s["customer"] == customer.as_str())
                    .cloned()
                    .collect();
                json!({ "object": "list", "url": "/v1/subscriptions", "has_more": false, "data": data })
            }
            ("GET", ["v1", "subscriptions", id]) => match state.subscriptions.get(*id) {
                Some(sub) => sub.clone(),
                None => return not_found("subscription"),
            },
            ("POST", ["v1", "subscriptions", id]) => {
                let price = form.get("items[0][price]").cloned();
                if let Some(price) = &price
                    && list_price(price).is_none()
                {
                    return refused(&format!("No such price: '{price}'"));
                }
                let Some(sub) = state.subscriptions.get_mut(*id) else {
                    return not_found("subscription");
                };
                if let Some(cancel) = form.get("cancel_at_period_end") {
                    sub["cancel_at_period_end"] = json!(cancel == "true");
                }
                if let Some(price) = price {
                    sub["items"]["data"][0]["price"] = self.price(&price).unwrap_or_default();
                }
                sub.clone()
            }
            ("DELETE", ["v1", "subscriptions", id]) => {
                let Some(sub) = state.subscriptions.get_mut(*id) else {
                    return not_found("subscription");
                };
                sub["status"] = json!("canceled");
                sub["ended_at"] = json!(Utc::now().timestamp());
                sub.clone()
            }
            ("GET", ["v1", "invoices", id]) => match state.invoices.get(*id) {
                Some(invoice) => invoice.clone(),
                None => return not_found("invoice"),
            },
            ("GET", ["v1", "events"]) => {
                let data: Vec<Value> = state.events.iter().rev().take(100).cloned().collect();
                json!({ "object": "list", "url": "/v1/events", "has_more": false, "data": data })
            }
            ("POST", ["v1", "billing_portal", "sessions"]) => {
                let mut portal = self.objects["billing_portal.session"].clone();
                let id = new_id("bps");
                merge(
                    &mut portal,
                    json!({ "id": id, "customer": form.get("customer"),
                            "return_url": form.get("return_url"),
                            "url": format!("{}/sandbox/portal/{id}", self.pages) }),
                );
                state.portals.insert(id, portal.clone());
                portal
            }
            ("POST", ["v1", "refunds"]) => json!({ "id": new_id("re"), "object": "refund",
                "status": "succeeded", "payment_intent": form.get("payment_intent") }),
            _ => return not_found("API route (the sandbox plays only what this service calls)"),
        };
        if method == "POST"
            && let Some(key) = idempotency_key
        {
            state.replays.insert(key.to_string(), answer.clone());
        }
        (200, answer)
    }

    /// A sandbox price as Stripe shows it (with its currency options).
    pub(super) fn price(&self, id: &str) -> Option<Value> {
        let (_, interval, amount) = list_price(id)?;
        let mut price = self.objects["price"].clone();
        merge(
            &mut price,
            json!({ "id": id, "active": true, "currency": "usd", "unit_amount": amount,
                    "unit_amount_decimal": amount.to_string(), "type": "recurring",
                    "recurring": { "interval": interval.as_str(), "interval_count": 1,
                                   "meter": null, "trial_period_days": null, "usage_type": "licensed" },
                    "currency_options": { "usd": { "unit_amount": amount,
                        "unit_amount_decimal": amount.to_string(), "tax_behavior": "unspecified",
                        "custom_unit_amount": null, "tiers": null } } }),
        );
        Some(price)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox() -> Result<Sandbox, serde_json::Error> {
        Sandbox::new(&crate::config::sandbox_stripe(), "http://localhost:3001")
    }

    #[test]
    fn the_sandbox_refuses_other_keys_and_unknown_ids_as_stripe_does()
    -> Result<(), serde_json::Error> {
        let sandbox = sandbox()?;
        let none = HashMap::new();
        assert_eq!(
            sandbox
                .api(
                    "GET",
                    "/v1/subscriptions/sub_x",
                    Some("Bearer sk_test_other"),
                    None,
                    &none
                )
                .0,
            401
        );
        let key = format!("Bearer {}", sandbox.secret_key);
        assert_eq!(
            sandbox
                .api("GET", "/v1/subscriptions/sub_x", Some(&key), None, &none)
                .0,
            404
        );
        assert_eq!(
            sandbox
                .api("GET", "/v1/prices/price_x", Some(&key), None, &none)
                .0,
            404
        );
        let (status, price) = sandbox.api(
            "GET",
            "/v1/prices/price_sandbox_pro_year",
            Some(&key),
            None,
            &none,
        );
        assert_eq!((status, price["unit_amount"].as_i64()), (200, Some(9000)));
        Ok(())
    }

    #[test]
    fn paying_twice_is_refused_and_events_are_signed_with_the_sandbox_secret()
    -> Result<(), Box<dyn std::error::Error>> {
        let sandbox = sandbox()?;
        let key = format!("Bearer {}", sandbox.secret_key);
        let form: HashMap<String, String> = [
            ("line_items[0][price]", "price_sandbox_pro_month"),
            ("customer", "cus_1"),
            ("client_reference_id", "ann"),
            ("success_url", "http://localhost:3001/done"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let (_, session) = sandbox.api(
            "POST",
            "/v1/checkout/sessions",
            Some(&key),
            Some("k1"),
            &form,
        );
        let id = session["id"].as_str().ok_or("no id")?;
        // The same key answers the same session.
        let (_, again) = sandbox.api(
            "POST",
            "/v1/checkout/sessions",
            Some(&key),
            Some("k1"),
            &form,
        );
        assert_eq!(again["id"], session["id"]);
        let (events, success) = sandbox.pay(id, Utc::now())?;
        assert_eq!(success, "http://localhost:3001/done");
        assert_eq!(events.len(), 3);
        let verifier = crate::payments::stripe_signature::SignatureVerifier::new(
            vec![sandbox.webhook_secret.clone().into()],
            std::time::Duration::from_secs(300),
        );
        for (signature, body) in &events {
            assert!(
                verifier
                    .verify(Some(signature), body.as_bytes(), Utc::now().timestamp())
                    .is_ok()
            );
        }
        assert!(matches!(
            sandbox.pay(id, Utc::now()),
            Err(SandboxError::SessionClosed(_))
        ));
        Ok(())
    }
}
