//! A local fake of the few Stripe endpoints the service calls, built from Stripe's own example
//! objects (tests/fixtures/stripe/fixtures.json, from stripe/openapi, MIT) so async-stripe can
//! parse every answer. It keeps state (customers, subscriptions, invoices), records what it
//! received, and can be told to fail. Also signs webhook events exactly as Stripe does.
//!
//! Shared with the benchmark (`benches/webhook_throughput.rs`), so it only uses what both have.

#![allow(dead_code)]

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use crate::fake_http::{FakeServer, Request, Respond, ResponseTemplate};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

pub const SECRET_KEY: &str = "sk_test_fake_0123456789";
pub const WEBHOOK_SECRET: &str = "whsec_test_secret";
pub const PRICE_PRO: &str = "price_pro_test";
pub const PRICE_PREMIUM: &str = "price_premium_test";
pub const PRICE_PRO_YEARLY: &str = "price_pro_yearly_test";
pub const PRICE_PREMIUM_YEARLY: &str = "price_premium_yearly_test";
/// The metered price of an extra card-month (not in [`FakeStripe::settings`]).
pub const PRICE_EXTRA_CARD: &str = "price_extra_card_test";
pub const METER_EVENT: &str = "nexus_extra_card_months";

const FIXTURES: &str = include_str!("../fixtures/stripe/fixtures.json");

#[path = "fake_stripe_objects.rs"]
mod objects;
#[path = "fake_stripe_routes.rs"]
mod routes;

use objects::{invoice_object, merge, subscription_object};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub idempotency_key: Option<String>,
    pub authorization: Option<String>,
    pub form: HashMap<String, String>,
    pub query: HashMap<String, String>,
}

#[derive(Default)]
struct State {
    customers: HashMap<String, Value>,
    subscriptions: HashMap<String, Value>,
    invoices: HashMap<String, Value>,
    /// Idempotency key -> the answer given, as Stripe replays it.
    replays: HashMap<String, Value>,
    received: Vec<Received>,
    fail_reads: bool,
    /// Events `GET /v1/events` lists, newest first.
    events: Vec<Value>,
    /// Requests (method, path prefix) answered once with this status instead of served.
    fail_once: Vec<(String, String, u16)>,
    /// Answer this many requests with 429 before serving again.
    throttle_next: u32,
    /// Requests per second the fake allows (per endpoint and overall); above it, 429.
    limit_per_second: Option<usize>,
    /// Arrival instants of served requests, by endpoint (for the limit).
    recent: HashMap<String, std::collections::VecDeque<std::time::Instant>>,
    recent_all: std::collections::VecDeque<std::time::Instant>,
    /// 429s answered.
    throttled: u64,
    /// Delay of every answer (Stripe answers in 100-500 ms).
    delay: std::time::Duration,
    /// Extra delay of GET answers (their state is taken when the request arrives).
    read_delay: std::time::Duration,
    refunds: Vec<HashMap<String, String>>,
    /// Checkout sessions created (the session and the form that created it), by id.
    sessions: HashMap<String, (Value, HashMap<String, String>)>,
    /// How far Stripe's clock runs ahead of this host's (seconds; its `Date` headers and the
    /// events it creates say so).
    clock_ahead: i64,
    /// Where session URLs point (a hosted checkout page the browser tests serve).
    checkout_base: Option<String>,
    /// Prices by id, with every currency option (`GET /v1/prices/{id}` shows them only
    /// when asked with `expand[]=currency_options`, as Stripe does).
    prices: HashMap<String, Value>,
    /// Meter events taken (their form fields), as Stripe counts them: one per identifier.
    meter_events: Vec<HashMap<String, String>>,
    /// Meter events to take and then drop the answer of (the caller sees a lost connection).
    lose_meter_answers: u32,
}

/// The fake Stripe API.
pub struct FakeStripe {
    pub server: FakeServer,
    state: Arc<Mutex<State>>,
    fixtures: Arc<Value>,
    counter: Arc<AtomicU64>,
}

/// The state of a subscription at the fake.
#[derive(Debug, Clone)]
pub struct SubSpec<'a> {
    pub id: &'a str,
    pub customer: &'a str,
    pub price: &'a str,
    pub status: &'a str,
    pub period_start: i64,
    pub period_end: i64,
    pub cancel_at_period_end: bool,
}

/// The state of an invoice at the fake.
#[derive(Debug, Clone)]
pub struct InvoiceSpec<'a> {
    pub id: &'a str,
    pub customer: &'a str,
    pub subscription: &'a str,
    pub status: &'a str,
    pub amount_due: i64,
    pub amount_paid: i64,
    pub created: i64,
}

impl FakeStripe {
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(State::default()));
        let fixtures: Value =
            serde_json::from_str(FIXTURES).unwrap_or_else(|e| panic!("fixtures: {e}"));
        let fixtures = Arc::new(fixtures["resources"].clone());
        for (id, interval, amounts) in [
            (PRICE_PRO, "month", &[("usd", 900), ("eur", 850)]),
            (PRICE_PREMIUM, "month", &[("usd", 2900), ("eur", 2700)]),
            (PRICE_PRO_YEARLY, "year", &[("usd", 9000), ("eur", 8500)]),
            (
                PRICE_PREMIUM_YEARLY,
                "year",
                &[("usd", 29000), ("eur", 27000)],
            ),
        ] {
            let price = objects::price_object(&fixtures, id, interval, amounts);
            lock(&state).prices.insert(id.to_string(), price);
        }
        let mut extra = objects::price_object(
            &fixtures,
            PRICE_EXTRA_CARD,
            "month",
            &[("usd", 200), ("eur", 190)],
        );
        extra["recurring"]["usage_type"] = json!("metered");
        lock(&state)
            .prices
            .insert(PRICE_EXTRA_CARD.to_string(), extra);
        let counter = Arc::new(AtomicU64::new(0));
        let server = FakeServer::start(Handler {
            state: Arc::clone(&state),
            fixtures: Arc::clone(&fixtures),
            counter: Arc::clone(&counter),
        })
        .await;
        Self {
            server,
            state,
            fixtures,
            counter,
        }
    }

    pub fn uri(&self) -> String {
        self.server.uri()
    }

    /// The settings that point the service at this fake.
    pub fn settings(&self) -> Vec<(&'static str, String)> {
        vec![
            ("--stripe-secret-key", SECRET_KEY.to_string()),
            ("--stripe-webhook-secret", WEBHOOK_SECRET.to_string()),
            ("--stripe-price-id-pro", PRICE_PRO.to_string()),
            ("--stripe-price-id-premium", PRICE_PREMIUM.to_string()),
            ("--stripe-price-id-pro-yearly", PRICE_PRO_YEARLY.to_string()),
            (
                "--stripe-price-id-premium-yearly",
                PRICE_PREMIUM_YEARLY.to_string(),
            ),
            ("--stripe-api-base", self.uri()),
        ]
    }

    /// Makes every GET fail with 500 (Stripe down) until set back.
    pub fn fail_reads(&self, fail: bool) {
        lock(&self.state).fail_reads = fail;
    }

    /// Runs Stripe's clock `seconds` ahead of this host's (negative: behind).
    pub fn set_clock_ahead(&self, seconds: i64) {
        lock(&self.state).clock_ahead = seconds;
    }

    /// Stripe's time now, in unix seconds.
    pub fn now(&self) -> i64 {
        chrono::Utc::now().timestamp() + lock(&self.state).clock_ahead
    }

    /// Answers every request after `delay`, as a real Stripe does.
    pub fn set_delay(&self, delay: std::time::Duration) {
        lock(&self.state).delay = delay;
    }

    /// Answers GETs `delay` later still; the answer is the state when the request arrived.
    pub fn delay_reads(&self, delay: std::time::Duration) {
        lock(&self.state).read_delay = delay;
    }

    /// Enforces `per_second` requests per second per endpoint and overall (429 above it).
    pub fn limit(&self, per_second: usize) {
        lock(&self.state).limit_per_second = Some(per_second);
    }

    /// Answers the next `method` request whose path starts with `prefix` with `status` (a
    /// 5xx: nothing done), once.
    pub fn fail_once(&self, method: &str, prefix: &str, status: u16) {
        lock(&self.state)
            .fail_once
            .push((method.to_string(), prefix.to_string(), status));
    }

    /// Answers the next `n` requests with 429 (a rate-limit storm).
    pub fn throttle_next(&self, n: u32) {
        lock(&self.state).throttle_next = n;
    }

    /// How many requests were answered 429.
    pub fn throttled(&self) -> u64 {
        lock(&self.state).throttled
    }

    /// Points checkout session URLs at `base` (`{base}/c/pay/{id}`) instead of Stripe's host.
    pub fn set_checkout_base(&self, base: &str) {
        lock(&self.state).checkout_base = Some(base.trim_end_matches('/').to_string());
    }

    /// A checkout session created through the API, with the form fields that created it.
    pub fn checkout_session(&self, id: &str) -> Option<(Value, HashMap<String, String>)> {
        lock(&self.state).sessions.get(id).cloned()
    }

    /// The payer finished the session at Stripe, starting `subscription` (it can no longer
    /// be expired).
    pub fn complete_session(&self, id: &str, subscription: &str) {
        let mut state = lock(&self.state);
        let (session, _) = state
            .sessions
            .get_mut(id)
            .unwrap_or_else(|| panic!("no checkout session {id}"));
        session["status"] = json!("complete");
        session["payment_status"] = json!("paid");
        session["subscription"] = json!(subscription);
    }

    /// A session's status at the fake ("open", "expired", "complete").
    pub fn session_status(&self, id: &str) -> Option<String> {
        lock(&self.state)
            .sessions
            .get(id)
            .and_then(|(s, _)| s["status"].as_str().map(str::to_string))
    }

    /// Creates or replaces a price (`amounts`: the first is the price's own currency).
    pub fn put_price(&self, id: &str, interval: &str, amounts: &[(&str, i64)]) {
        let price = objects::price_object(&self.fixtures, id, interval, amounts);
        lock(&self.state).prices.insert(id.to_string(), price);
    }

    /// Stripe no longer knows the customer (deleted in the dashboard, say).
    pub fn forget_customer(&self, id: &str) {
        lock(&self.state).customers.remove(id);
    }

    /// Meter events Stripe counted (one per identifier).
    pub fn meter_events(&self) -> Vec<HashMap<String, String>> {
        lock(&self.state).meter_events.clone()
    }

    /// Takes the next `n` meter events but loses their answers.
    pub fn lose_meter_answers(&self, n: u32) {
        lock(&self.state).lose_meter_answers = n;
    }

    /// Refunds created (their form fields).
    pub fn refunds(&self) -> Vec<HashMap<String, String>> {
        lock(&self.state).refunds.clone()
    }

    /// Adds an event to what `GET /v1/events` lists (as if Stripe had created it).
    pub fn publish(&self, body: &str) {
        let event: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}"));
        lock(&self.state).events.insert(0, event);
    }

    /// Every request received so far.
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

    /// Creates or replaces a subscription. Its latest invoice (`in_latest_{id}`, paid with the
    /// payment intent `pi_{id}`) is created with it unless the test put one.
    pub fn put_subscription(&self, spec: &SubSpec<'_>) -> Value {
        let mut sub = subscription_object(&self.fixtures, spec);
        let invoice = format!("in_latest_{}", spec.id);
        sub["latest_invoice"] = json!(invoice);
        let mut state = lock(&self.state);
        state.invoices.entry(invoice.clone()).or_insert_with(|| {
            let mut paid = self.fixtures["invoice"].clone();
            merge(
                &mut paid,
                json!({ "id": invoice, "customer": spec.customer, "subscription": spec.id,
                "status": "paid", "amount_paid": 1900, "amount_due": 1900,
                "payments": { "object": "list", "data": [
                    { "payment": { "type": "payment_intent", "payment_intent": format!("pi_{}", spec.id) } }
                ] } }),
            );
            paid
        });
        state.subscriptions.insert(spec.id.to_string(), sub.clone());
        sub
    }

    /// Stripe no longer knows the subscription (another account's or mode's id): 404.
    pub fn forget_subscription(&self, id: &str) {
        lock(&self.state).subscriptions.remove(id);
    }

    pub fn subscription(&self, id: &str) -> Option<Value> {
        lock(&self.state).subscriptions.get(id).cloned()
    }

    /// Changes fields of a stored subscription (e.g. `status`).
    pub fn patch_subscription(&self, id: &str, patch: Value) -> Value {
        let mut state = lock(&self.state);
        let sub = state
            .subscriptions
            .get_mut(id)
            .unwrap_or_else(|| panic!("no subscription {id}"));
        merge(sub, patch);
        sub.clone()
    }

    /// Creates or replaces an invoice.
    pub fn put_invoice(&self, spec: &InvoiceSpec<'_>) -> Value {
        let invoice = invoice_object(&self.fixtures, spec);
        lock(&self.state)
            .invoices
            .insert(spec.id.to_string(), invoice.clone());
        invoice
    }

    /// Changes fields of a stored invoice (e.g. its `payments`).
    pub fn patch_invoice(&self, id: &str, patch: Value) {
        let mut state = lock(&self.state);
        let invoice = state
            .invoices
            .get_mut(id)
            .unwrap_or_else(|| panic!("no invoice {id}"));
        merge(invoice, patch);
    }

    /// A stored invoice, as Stripe would send it in an event.
    pub fn invoice_json(&self, id: &str) -> Value {
        lock(&self.state)
            .invoices
            .get(id)
            .cloned()
            .unwrap_or_else(|| panic!("no invoice {id}"))
    }

    /// The id of the customer created for `user`, if any.
    pub fn customer_of(&self, user: &str) -> Option<String> {
        lock(&self.state)
            .customers
            .values()
            .find(|c| c["metadata"]["user_id"] == user)
            .and_then(|c| c["id"].as_str().map(str::to_string))
    }

    /// A Stripe event envelope around `object`, with a fresh id, created now (Stripe's time).
    pub fn event(&self, kind: &str, object: &Value) -> (String, String) {
        self.event_at(kind, object, self.now())
    }

    /// A Stripe event envelope around `object`, created at `created` (unix seconds).
    pub fn event_at(&self, kind: &str, object: &Value, created: i64) -> (String, String) {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let id = format!("evt_test_{n}_{}", uuid::Uuid::new_v4().simple());
        let body = json!({
            "id": id,
            "object": "event",
            "api_version": "2026-09-30.endive",
            "created": created,
            "data": { "object": object },
            "livemode": false,
            "pending_webhooks": 1,
            "request": { "id": null, "idempotency_key": null },
            "type": kind,
        });
        (id, body.to_string())
    }

    /// A `checkout.session.completed` object as Stripe sends it.
    pub fn checkout_completed(&self, user: &str, customer: &str, subscription: &str) -> Value {
        let mut session = self.fixtures["checkout.session"].clone();
        merge(
            &mut session,
            json!({
                "id": format!("cs_test_{}", uuid::Uuid::new_v4().simple()),
                "mode": "subscription",
                "status": "complete",
                "payment_status": "paid",
                "customer": customer,
                "subscription": subscription,
                "client_reference_id": user,
                "metadata": { "user_id": user },
            }),
        );
        session
    }
}

/// The `Stripe-Signature` header Stripe would send for `body` at `t`, one `v1` per secret.
pub fn signature(body: &str, t: i64, secrets: &[&str]) -> String {
    let mut header = format!("t={t}");
    for secret in secrets {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        mac.update(format!("{t}.{body}").as_bytes());
        header.push_str(&format!(",v1={}", hex::encode(mac.finalize().into_bytes())));
    }
    header
}

/// Signs `body` now with the test secret.
pub fn sign_now(body: &str) -> String {
    signature(body, chrono::Utc::now().timestamp(), &[WEBHOOK_SECRET])
}

fn error(status: u16, kind: &str, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(status)
        .set_body_json(json!({ "error": { "type": kind, "message": message } }))
}

struct Handler {
    state: Arc<Mutex<State>>,
    fixtures: Arc<Value>,
    counter: Arc<AtomicU64>,
}

impl Handler {
    fn next(&self, prefix: &str) -> String {
        format!("{prefix}_{}", self.counter.fetch_add(1, Ordering::Relaxed))
    }
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
        let form: HashMap<String, String> =
            serde_urlencoded::from_bytes::<Vec<(String, String)>>(&request.body)
                .unwrap_or_default()
                .into_iter()
                .collect();
        let received = Received {
            method: request.method.to_string(),
            path: request.url.path().to_string(),
            idempotency_key: header("idempotency-key"),
            authorization: header("authorization"),
            form: form.clone(),
            query: request.url.query_pairs().into_owned().collect(),
        };
        let mut state = lock(&self.state);
        state.received.push(received.clone());
        if received.authorization.as_deref() != Some(&format!("Bearer {SECRET_KEY}")) {
            return error(401, "invalid_request_error", "Invalid API Key provided");
        }
        let delay = state.delay
            + if received.method == "GET" {
                state.read_delay
            } else {
                std::time::Duration::ZERO
            };
        if let Some(at) = state.fail_once.iter().position(|(m, prefix, _)| {
            *m == received.method && received.path.starts_with(prefix.as_str())
        }) {
            let (_, _, status) = state.fail_once.remove(at);
            return error(status, "api_error", "injected failure").set_delay(delay);
        }
        if state.throttle_next > 0 {
            state.throttle_next -= 1;
            state.throttled += 1;
            return error(429, "rate_limit_error", "Too many requests").set_delay(delay);
        }
        if let Some(limit) = state.limit_per_second {
            let now = std::time::Instant::now();
            let window = std::time::Duration::from_secs(1);
            let endpoint = endpoint_of(&received.method, &received.path);
            let recent = state.recent.entry(endpoint).or_default();
            while recent
                .front()
                .is_some_and(|t| now.duration_since(*t) >= window)
            {
                recent.pop_front();
            }
            let endpoint_full = recent.len() >= limit;
            if !endpoint_full {
                recent.push_back(now);
            }
            let all = &mut state.recent_all;
            while all
                .front()
                .is_some_and(|t| now.duration_since(*t) >= window)
            {
                all.pop_front();
            }
            if endpoint_full || all.len() >= limit * 4 {
                state.throttled += 1;
                return error(429, "rate_limit_error", "Too many requests").set_delay(delay);
            }
            all.push_back(now);
        }
        let answer = self.answer(&mut state, &received, &form);
        let date = chrono::Utc::now() + chrono::Duration::seconds(state.clock_ahead);
        answer
            .insert_header("date", date.format("%a, %d %b %Y %H:%M:%S GMT").to_string())
            .set_delay(delay)
    }
}

/// The endpoint a request counts against (`GET /v1/subscriptions/{id}`).
fn endpoint_of(method: &str, path: &str) -> String {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let named: Vec<&str> = segments
        .iter()
        .enumerate()
        .map(|(i, s)| if i >= 2 && i % 2 == 0 { "{id}" } else { s })
        .collect();
    format!("{method} /{}", named.join("/"))
}
