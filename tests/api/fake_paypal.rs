//! A local fake of the PayPal REST endpoints the service calls: OAuth2 client-credentials
//! tokens (which it can revoke, to force a refresh), subscriptions (create with
//! `PayPal-Request-Id` replay, show, cancel, revise, transactions), sales (show, refund) and
//! verify-webhook-signature. It answers after a delay, can answer 429s, records every request,
//! and signs webhook deliveries the way its verify call checks them: an HMAC over the
//! transmission id, time, webhook id and a hash of the exact event bytes received.

#![allow(dead_code)]

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use crate::fake_http::{FakeServer, Request, Respond, ResponseTemplate};
use base64::Engine;
use chrono::{DateTime, Months, Utc};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub const CLIENT_ID: &str = "paypal-client-test";
pub const CLIENT_SECRET: &str = "paypal-secret-test-0123456789";
pub const WEBHOOK_ID: &str = "WH-ID-TEST-1";
pub const PLAN_PRO: &str = "P-PRO-TEST";
pub const PLAN_PREMIUM: &str = "P-PREMIUM-TEST";
pub const CERT_URL: &str =
    "https://api.sandbox.paypal.com/v1/notifications/certs/CERT-360caa42-fca2a594-1d93a270";
/// The key the fake "PayPal" signs deliveries with (stands in for its certificate).
const SIGNING_KEY: &[u8] = b"fake-paypal-signing-key";

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
    pub request_id: Option<String>,
    pub body: Value,
    /// The body as sent, byte for byte.
    pub raw: String,
}

#[derive(Default)]
struct State {
    tokens: Vec<String>,
    token_ttl: u64,
    subscriptions: HashMap<String, Value>,
    /// Revised plans waiting for the payer's approval.
    revisions: HashMap<String, String>,
    sales: HashMap<String, Value>,
    replays: HashMap<String, Value>,
    refunds: Vec<String>,
    received: Vec<Received>,
    delay: Duration,
    throttle_next: u32,
    fail_verify: bool,
}

pub struct FakePaypal {
    pub server: FakeServer,
    state: Arc<Mutex<State>>,
    counter: Arc<AtomicU64>,
}

fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

impl FakePaypal {
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(State {
            token_ttl: 32_400,
            delay: Duration::from_millis(120),
            ..State::default()
        }));
        let counter = Arc::new(AtomicU64::new(1));
        let server = FakeServer::start(Handler {
            state: Arc::clone(&state),
            counter: Arc::clone(&counter),
        })
        .await;
        Self {
            server,
            state,
            counter,
        }
    }

    /// The settings that point the service at this fake.
    pub fn settings(&self) -> Vec<(&'static str, String)> {
        vec![
            ("--paypal-client-id", CLIENT_ID.to_string()),
            ("--paypal-client-secret", CLIENT_SECRET.to_string()),
            ("--paypal-webhook-id", WEBHOOK_ID.to_string()),
            ("--paypal-plan-id-pro", PLAN_PRO.to_string()),
            ("--paypal-plan-id-premium", PLAN_PREMIUM.to_string()),
            ("--paypal-api-base", self.server.uri()),
        ]
    }

    pub fn set_delay(&self, delay: Duration) {
        lock(&self.state).delay = delay;
    }

    pub fn throttle_next(&self, n: u32) {
        lock(&self.state).throttle_next = n;
    }

    /// Makes verify-webhook-signature answer 503 until set back.
    pub fn fail_verify(&self, fail: bool) {
        lock(&self.state).fail_verify = fail;
    }

    /// Invalidates every token issued so far (the next call with one gets 401).
    pub fn revoke_tokens(&self) {
        lock(&self.state).tokens.clear();
    }

    pub fn received(&self) -> Vec<Received> {
        lock(&self.state).received.clone()
    }

    /// Requests with this method whose path starts with `prefix`.
    pub fn requests(&self, method: &str, prefix: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.method == method && r.path.starts_with(prefix))
            .collect()
    }

    pub fn subscription(&self, id: &str) -> Value {
        lock(&self.state)
            .subscriptions
            .get(id)
            .cloned()
            .unwrap_or_else(|| panic!("no subscription {id}"))
    }

    pub fn refunds(&self) -> Vec<String> {
        lock(&self.state).refunds.clone()
    }

    /// The payer approved: the subscription is ACTIVE with its first payment at `at`.
    pub fn activate(&self, id: &str, at: DateTime<Utc>) -> Value {
        let next = at.checked_add_months(Months::new(1)).unwrap_or(at);
        self.patch(id, |s| {
            s["status"] = json!("ACTIVE");
            s["start_time"] = json!(time(at));
            s["billing_info"] = json!({
                "outstanding_balance": { "currency_code": "USD", "value": "0.00" },
                "last_payment": { "amount": { "currency_code": "USD", "value": "9.00" }, "time": time(at) },
                "next_billing_time": time(next),
                "failed_payments_count": 0,
            });
            s["update_time"] = json!(time(at));
        })
    }

    /// Applies a change to a stored subscription and returns it.
    pub fn patch(&self, id: &str, change: impl FnOnce(&mut Value)) -> Value {
        let mut state = lock(&self.state);
        let sub = state
            .subscriptions
            .get_mut(id)
            .unwrap_or_else(|| panic!("no subscription {id}"));
        change(sub);
        sub.clone()
    }

    /// The payer approved a revision: the plan changes.
    pub fn approve_revision(&self, id: &str) -> Value {
        let plan = lock(&self.state)
            .revisions
            .remove(id)
            .unwrap_or_else(|| panic!("no revision of {id}"));
        self.patch(id, |s| s["plan_id"] = json!(plan))
    }

    /// A completed sale (payment) of the subscription.
    pub fn sale(&self, subscription: &str, total: &str, at: DateTime<Utc>) -> Value {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let custom = self.subscription(subscription)["custom_id"].clone();
        let sale = json!({
            "id": format!("SALE-{n}"),
            "state": "completed",
            "amount": { "total": total, "currency": "USD", "details": { "subtotal": total } },
            "payment_mode": "INSTANT_TRANSFER",
            "billing_agreement_id": subscription,
            "custom": custom,
            "create_time": time(at),
            "update_time": time(at),
        });
        lock(&self.state).sales.insert(
            sale["id"].as_str().unwrap_or_default().to_string(),
            sale.clone(),
        );
        sale
    }

    /// A webhook event around `resource`, created at `at`; returns (id, body).
    pub fn event(&self, event_type: &str, resource: &Value, at: DateTime<Utc>) -> (String, String) {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let id = format!("WH-{n}-{}", uuid::Uuid::new_v4().simple());
        let resource_type = if event_type.starts_with("PAYMENT.SALE") {
            "sale"
        } else {
            "subscription"
        };
        let body = json!({
            "id": id,
            "event_version": "1.0",
            "create_time": at.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
            "resource_type": resource_type,
            "resource_version": "2.0",
            "event_type": event_type,
            "summary": "test event",
            "resource": resource,
        });
        (id, body.to_string())
    }

    /// The `PAYPAL-*` headers PayPal would send with `body`.
    pub fn headers(&self, body: &str) -> Vec<(&'static str, String)> {
        signed_headers(body, CERT_URL)
    }
}

/// Headers signing `body`, naming `cert_url` as the certificate.
pub fn signed_headers(body: &str, cert_url: &str) -> Vec<(&'static str, String)> {
    let id = uuid::Uuid::new_v4().to_string();
    let at = time(Utc::now());
    vec![
        ("paypal-auth-algo", "SHA256withRSA".to_string()),
        ("paypal-cert-url", cert_url.to_string()),
        ("paypal-transmission-id", id.clone()),
        (
            "paypal-transmission-sig",
            signature(&id, &at, WEBHOOK_ID, body),
        ),
        ("paypal-transmission-time", at),
    ]
}

fn signature(id: &str, at: &str, webhook_id: &str, body: &str) -> String {
    let digest = hex::encode(Sha256::digest(body.as_bytes()));
    let mut mac = Hmac::<Sha256>::new_from_slice(SIGNING_KEY).unwrap_or_else(|e| panic!("{e}"));
    mac.update(format!("{id}|{at}|{webhook_id}|{digest}").as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

fn error(status: u16, name: &str, issue: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(json!({
        "name": name, "message": "fake PayPal refused the request",
        "debug_id": "f00", "details": [{ "issue": issue }],
    }))
}

struct Handler {
    state: Arc<Mutex<State>>,
    counter: Arc<AtomicU64>,
}

#[derive(serde::Deserialize)]
struct Verification<'a> {
    auth_algo: String,
    cert_url: String,
    transmission_id: String,
    transmission_sig: String,
    transmission_time: String,
    webhook_id: String,
    #[serde(borrow)]
    webhook_event: &'a serde_json::value::RawValue,
}

impl Respond for Handler {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let header = |name: &str| {
            request
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let raw = String::from_utf8_lossy(&request.body).to_string();
        let received = Received {
            method: request.method.to_string(),
            path: request.url.path().to_string(),
            authorization: header("authorization"),
            request_id: header("paypal-request-id"),
            body: serde_json::from_str(&raw).unwrap_or(Value::Null),
            raw: raw.clone(),
        };
        let mut state = lock(&self.state);
        state.received.push(received.clone());
        let delay = state.delay;
        let answer = self.answer(&mut state, &received, request);
        answer.set_delay(delay)
    }
}

impl Handler {
    fn next(&self, prefix: &str) -> String {
        format!("{prefix}{}", self.counter.fetch_add(1, Ordering::Relaxed))
    }

    fn answer(&self, state: &mut State, r: &Received, request: &Request) -> ResponseTemplate {
        if state.throttle_next > 0 {
            state.throttle_next -= 1;
            return error(429, "RATE_LIMIT_REACHED", "TOO_MANY_REQUESTS");
        }
        let path = r.path.as_str();
        if r.method == "POST" && path == "/v1/oauth2/token" {
            let basic = base64::engine::general_purpose::STANDARD
                .encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"));
            if r.authorization.as_deref() != Some(&format!("Basic {basic}")) {
                return ResponseTemplate::new(401).set_body_json(json!({
                    "error": "invalid_client", "error_description": "Client Authentication failed" }));
            }
            if r.raw != "grant_type=client_credentials" {
                return ResponseTemplate::new(400)
                    .set_body_json(json!({ "error": "unsupported_grant_type" }));
            }
            let token = self.next("A21AA-fake-token-");
            state.tokens.push(token.clone());
            return ResponseTemplate::new(200).set_body_json(json!({
                "scope": "https://uri.paypal.com/services/subscriptions", "access_token": token,
                "token_type": "Bearer", "app_id": "APP-80W284485P519543T", "expires_in": state.token_ttl,
                "nonce": "2026-11-30T20:00:00Z" }));
        }
        let authorised = r
            .authorization
            .as_deref()
            .and_then(|a| a.strip_prefix("Bearer "))
            .is_some_and(|t| state.tokens.iter().any(|k| k == t));
        if !authorised {
            return ResponseTemplate::new(401).set_body_json(json!({
                "error": "invalid_token", "error_description": "Token signature verification failed" }));
        }
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (r.method.as_str(), parts.as_slice()) {
            ("POST", ["v1", "billing", "subscriptions"]) => {
                if let Some(id) = &r.request_id
                    && let Some(replay) = state.replays.get(id)
                {
                    return ResponseTemplate::new(201).set_body_json(replay.clone());
                }
                let plan = r.body["plan_id"].as_str().unwrap_or_default();
                if plan != PLAN_PRO && plan != PLAN_PREMIUM {
                    return error(422, "UNPROCESSABLE_ENTITY", "INVALID_PLAN");
                }
                let id = self.next("I-FAKE");
                let sub = json!({
                    "id": id, "plan_id": plan, "status": "APPROVAL_PENDING",
                    "custom_id": r.body["custom_id"], "create_time": time(Utc::now()),
                    "links": [
                        { "href": format!("https://www.sandbox.paypal.com/webapps/billing/subscriptions?ba_token=BA-{id}"), "rel": "approve", "method": "GET" },
                        { "href": format!("https://api.sandbox.paypal.com/v1/billing/subscriptions/{id}"), "rel": "self", "method": "GET" },
                    ],
                });
                state.subscriptions.insert(id.clone(), sub.clone());
                if let Some(key) = &r.request_id {
                    state.replays.insert(key.clone(), sub.clone());
                }
                ResponseTemplate::new(201).set_body_json(sub)
            }
            ("GET", ["v1", "billing", "subscriptions", id]) => match state.subscriptions.get(*id) {
                Some(sub) => ResponseTemplate::new(200).set_body_json(sub.clone()),
                None => error(404, "RESOURCE_NOT_FOUND", "INVALID_RESOURCE_ID"),
            },
            ("POST", ["v1", "billing", "subscriptions", id, "cancel"]) => {
                let Some(sub) = state.subscriptions.get_mut(*id) else {
                    return error(404, "RESOURCE_NOT_FOUND", "INVALID_RESOURCE_ID");
                };
                if !matches!(sub["status"].as_str(), Some("ACTIVE" | "SUSPENDED")) {
                    return error(422, "UNPROCESSABLE_ENTITY", "SUBSCRIPTION_STATUS_INVALID");
                }
                if r.body["reason"].as_str().is_none_or(str::is_empty) {
                    return error(400, "INVALID_REQUEST", "MISSING_REQUIRED_PARAMETER");
                }
                sub["status"] = json!("CANCELLED");
                if let Some(info) = sub["billing_info"].as_object_mut() {
                    info.remove("next_billing_time");
                }
                ResponseTemplate::new(204)
            }
            ("POST", ["v1", "billing", "subscriptions", id, "revise"]) => {
                let plan = r.body["plan_id"].as_str().unwrap_or_default().to_string();
                if !state.subscriptions.contains_key(*id) {
                    return error(404, "RESOURCE_NOT_FOUND", "INVALID_RESOURCE_ID");
                }
                if plan != PLAN_PRO && plan != PLAN_PREMIUM {
                    return error(422, "UNPROCESSABLE_ENTITY", "INVALID_PLAN");
                }
                state.revisions.insert(id.to_string(), plan.clone());
                ResponseTemplate::new(200).set_body_json(json!({
                    "plan_id": plan, "plan_overridden": false,
                    "links": [{ "href": format!("https://www.sandbox.paypal.com/webapps/billing/subscriptions/update?ba_token=BA-R-{id}"), "rel": "approve", "method": "GET" }],
                }))
            }
            ("GET", ["v1", "billing", "subscriptions", id, "transactions"]) => {
                let transactions: Vec<Value> = state
                    .sales
                    .values()
                    .filter(|s| s["billing_agreement_id"].as_str() == Some(id))
                    .map(|s| json!({
                        "id": s["id"],
                        "status": if s["state"] == "refunded" { "REFUNDED" } else { "COMPLETED" },
                        "time": s["create_time"],
                        "amount_with_breakdown": { "gross_amount": {
                            "currency_code": s["amount"]["currency"], "value": s["amount"]["total"] } },
                    }))
                    .collect();
                let query: HashMap<String, String> =
                    request.url.query_pairs().into_owned().collect();
                if !query.contains_key("start_time") || !query.contains_key("end_time") {
                    return error(400, "INVALID_REQUEST", "MISSING_REQUIRED_PARAMETER");
                }
                ResponseTemplate::new(200).set_body_json(json!({ "transactions": transactions }))
            }
            ("GET", ["v1", "payments", "sale", id]) => match state.sales.get(*id) {
                Some(sale) => ResponseTemplate::new(200).set_body_json(sale.clone()),
                None => error(404, "RESOURCE_NOT_FOUND", "INVALID_RESOURCE_ID"),
            },
            ("POST", ["v1", "payments", "sale", id, "refund"]) => {
                // As PayPal: the same PayPal-Request-Id replays the first answer; a sale
                // refunded before cannot be refunded again.
                if let Some(key) = &r.request_id
                    && let Some(replay) = state.replays.get(key)
                {
                    return ResponseTemplate::new(201).set_body_json(replay.clone());
                }
                let Some(sale) = state.sales.get_mut(*id) else {
                    return error(404, "RESOURCE_NOT_FOUND", "INVALID_RESOURCE_ID");
                };
                if sale["state"] == "refunded" {
                    return error(400, "TRANSACTION_REFUSED", "TRANSACTION_ALREADY_REFUNDED");
                }
                sale["state"] = json!("refunded");
                state.refunds.push(id.to_string());
                let answer =
                    json!({ "id": self.next("REFUND-"), "state": "completed", "sale_id": id });
                if let Some(key) = &r.request_id {
                    state.replays.insert(key.clone(), answer.clone());
                }
                ResponseTemplate::new(201).set_body_json(answer)
            }
            ("POST", ["v1", "notifications", "verify-webhook-signature"]) => {
                if state.fail_verify {
                    return error(503, "SERVICE_UNAVAILABLE", "SERVICE_UNAVAILABLE");
                }
                let Ok(v) = serde_json::from_str::<Verification<'_>>(&r.raw) else {
                    return error(400, "VALIDATION_ERROR", "MISSING_REQUIRED_PARAMETER");
                };
                let expected = signature(
                    &v.transmission_id,
                    &v.transmission_time,
                    &v.webhook_id,
                    v.webhook_event.get(),
                );
                let ok = v.auth_algo == "SHA256withRSA"
                    && v.webhook_id == WEBHOOK_ID
                    && v.cert_url
                        .starts_with("https://api.sandbox.paypal.com/v1/notifications/certs/")
                    && v.transmission_sig == expected;
                ResponseTemplate::new(200).set_body_json(json!({
                    "verification_status": if ok { "SUCCESS" } else { "FAILURE" } }))
            }
            _ => error(404, "RESOURCE_NOT_FOUND", "UNKNOWN_PATH"),
        }
    }
}
