//! A local fake of Safaricom Daraja: the client-credentials token, STK push and STK query. It
//! checks every push and query the way Daraja does (shortcode, the password derived from the
//! passkey and the timestamp, a timestamp in Nairobi time close to now, the phone format, the
//! field lengths) and records what it got. A request stays "being processed" (Daraja's 500
//! `500.001.1001`) until the test decides how the payer answered.

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
use chrono::{NaiveDateTime, Utc};
use serde_json::{Value, json};

pub const CONSUMER_KEY: &str = "mpesa-consumer-key-test";
pub const CONSUMER_SECRET: &str = "mpesa-consumer-secret-test-0123";
pub const SHORTCODE: &str = "174379";
pub const PASSKEY: &str = "bfb279f9aa9bdbcf158e97dd71a467cd2e0c893059b10f78e6b72ada1ed2c919";
pub const PRICE_PRO: u32 = 1500;
pub const PRICE_PREMIUM: u32 = 3500;
/// For [`FakeMpesa::query_says`]: the query is refused (400), as for an id Daraja lost.
pub const REFUSE: i64 = -1;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Default)]
struct State {
    tokens: Vec<String>,
    /// CheckoutRequestID -> the payer's answer (`None`: not yet).
    requests: HashMap<String, Option<i64>>,
    pushes: Vec<Value>,
    queries: Vec<Value>,
    /// Problems found in requests (a test asserts there are none).
    problems: Vec<String>,
    delay: Duration,
    /// Accept the next push, then drop the connection without answering.
    lose_next_push: bool,
    /// What the STK query answers for a request, whatever the payer did (a lagging query).
    query_says: HashMap<String, i64>,
    /// CheckoutRequestIDs created, in order.
    created: Vec<String>,
}

pub struct FakeMpesa {
    pub server: FakeServer,
    state: Arc<Mutex<State>>,
    counter: Arc<AtomicU64>,
}

impl FakeMpesa {
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(State {
            delay: Duration::from_millis(150),
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

    /// The settings that point the service at this fake. The poller waits 1 s for a callback.
    pub fn settings(&self) -> Vec<(&'static str, String)> {
        vec![
            ("--mpesa-consumer-key", CONSUMER_KEY.to_string()),
            ("--mpesa-consumer-secret", CONSUMER_SECRET.to_string()),
            ("--mpesa-shortcode", SHORTCODE.to_string()),
            ("--mpesa-passkey", PASSKEY.to_string()),
            (
                "--mpesa-callback-url",
                "https://billing.example.com/billing/webhook/mpesa".to_string(),
            ),
            ("--mpesa-price-kes-pro", PRICE_PRO.to_string()),
            ("--mpesa-price-kes-premium", PRICE_PREMIUM.to_string()),
            ("--mpesa-api-base", self.server.uri()),
            ("--mpesa-poll-interval", "200ms".to_string()),
            ("--mpesa-callback-grace", "1s".to_string()),
        ]
    }

    pub fn set_delay(&self, delay: Duration) {
        lock(&self.state).delay = delay;
    }

    /// The payer answered: `0` paid, 1032 cancelled, 1037 timed out, 1 not enough money.
    pub fn resolve(&self, request_id: &str, code: i64) {
        lock(&self.state)
            .requests
            .insert(request_id.to_string(), Some(code));
    }

    /// Daraja accepts the next push (the phone prompts) and the answer never arrives.
    pub fn lose_next_push_answer(&self) {
        lock(&self.state).lose_next_push = true;
    }

    /// The STK query answers `code` for `request_id` whatever the payer did, until cleared.
    pub fn query_says(&self, request_id: &str, code: Option<i64>) {
        let mut state = lock(&self.state);
        match code {
            Some(code) => state.query_says.insert(request_id.to_string(), code),
            None => state.query_says.remove(request_id),
        };
    }

    /// The CheckoutRequestIDs Daraja created, in order (answered or not).
    pub fn created(&self) -> Vec<String> {
        lock(&self.state).created.clone()
    }

    /// Every STK push body received.
    pub fn pushes(&self) -> Vec<Value> {
        lock(&self.state).pushes.clone()
    }

    /// How many STK queries named `request_id`.
    pub fn queries(&self, request_id: &str) -> usize {
        lock(&self.state)
            .queries
            .iter()
            .filter(|q| q["CheckoutRequestID"].as_str() == Some(request_id))
            .count()
    }

    /// What was wrong in the requests received (empty when every one was valid).
    pub fn problems(&self) -> Vec<String> {
        lock(&self.state).problems.clone()
    }
}

/// A callback as Safaricom posts it.
pub fn callback(request_id: &str, code: i64, receipt: Option<&str>, amount: u32) -> String {
    let mut cb = json!({
        "MerchantRequestID": "29115-34620561-1",
        "CheckoutRequestID": request_id,
        "ResultCode": code,
        "ResultDesc": match code {
            0 => "The service request is processed successfully.",
            1032 => "Request cancelled by user",
            1037 => "DS timeout user cannot be reached",
            1 => "The balance is insufficient for the transaction",
            _ => "Failed",
        },
    });
    if let Some(receipt) = receipt {
        cb["CallbackMetadata"] = json!({ "Item": [
            { "Name": "Amount", "Value": amount },
            { "Name": "MpesaReceiptNumber", "Value": receipt },
            { "Name": "TransactionDate", "Value": 20261130211530u64 },
            { "Name": "PhoneNumber", "Value": 254712345678u64 },
        ]});
    }
    json!({ "Body": { "stkCallback": cb } }).to_string()
}

struct Handler {
    state: Arc<Mutex<State>>,
    counter: Arc<AtomicU64>,
}

fn daraja_error(status: u16, code: &str, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(json!({
        "requestId": "fake-1", "errorCode": code, "errorMessage": message }))
}

impl Respond for Handler {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let mut state = lock(&self.state);
        let delay = state.delay;
        self.answer(&mut state, request).set_delay(delay)
    }
}

impl Handler {
    /// Checks the password and timestamp Daraja checks; returns what is wrong.
    fn check_credentials(body: &Value) -> Vec<String> {
        let mut problems = Vec::new();
        let at = body["Timestamp"].as_str().unwrap_or_default();
        match NaiveDateTime::parse_from_str(at, "%Y%m%d%H%M%S") {
            Ok(t) => {
                let nairobi_now = (Utc::now() + chrono::Duration::hours(3)).naive_utc();
                if (nairobi_now - t).num_seconds().abs() > 120 {
                    problems.push(format!("Timestamp {at} is not Nairobi time now"));
                }
            }
            Err(_) => problems.push(format!("Timestamp {at:?} is not YYYYMMDDHHMMSS")),
        }
        let expected =
            base64::engine::general_purpose::STANDARD.encode(format!("{SHORTCODE}{PASSKEY}{at}"));
        if body["Password"].as_str() != Some(expected.as_str()) {
            problems.push("Password is not base64(ShortCode + Passkey + Timestamp)".into());
        }
        if body["BusinessShortCode"].as_str() != Some(SHORTCODE) {
            problems.push("BusinessShortCode".into());
        }
        problems
    }

    fn answer(&self, state: &mut State, request: &Request) -> ResponseTemplate {
        let path = request.url.path();
        let auth = request
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        if path == "/oauth/v1/generate" {
            let basic = base64::engine::general_purpose::STANDARD
                .encode(format!("{CONSUMER_KEY}:{CONSUMER_SECRET}"));
            let grant = request
                .url
                .query_pairs()
                .any(|(k, v)| k == "grant_type" && v == "client_credentials");
            if request.method.as_str() != "GET" || auth != format!("Basic {basic}") || !grant {
                return daraja_error(400, "400.008.01", "Invalid Authentication passed");
            }
            let token = format!(
                "fake-daraja-{}",
                self.counter.fetch_add(1, Ordering::Relaxed)
            );
            state.tokens.push(token.clone());
            return ResponseTemplate::new(200)
                .set_body_json(json!({ "access_token": token, "expires_in": "3599" }));
        }
        let token_ok = auth
            .strip_prefix("Bearer ")
            .is_some_and(|t| state.tokens.iter().any(|k| k == t));
        if !token_ok {
            return daraja_error(401, "404.001.03", "Invalid Access Token");
        }
        let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
        match path {
            "/mpesa/stkpush/v1/processrequest" => {
                state.pushes.push(body.clone());
                let mut problems = Self::check_credentials(&body);
                let phone_ok = |v: &Value| {
                    let s = v
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string());
                    s.len() == 12
                        && (s.starts_with("2547") || s.starts_with("2541"))
                        && s.bytes().all(|b| b.is_ascii_digit())
                };
                if !phone_ok(&body["PhoneNumber"]) || !phone_ok(&body["PartyA"]) {
                    problems.push("PhoneNumber/PartyA must be 2547XXXXXXXX or 2541XXXXXXXX".into());
                }
                if body["TransactionType"] != "CustomerPayBillOnline" {
                    problems.push("TransactionType".into());
                }
                if body["PartyB"].as_str() != Some(SHORTCODE) {
                    problems.push("PartyB".into());
                }
                if !body["Amount"].is_u64() {
                    problems.push("Amount must be a whole number".into());
                }
                if body["AccountReference"]
                    .as_str()
                    .is_none_or(|s| s.is_empty() || s.len() > 12)
                {
                    problems.push("AccountReference must be 1-12 characters".into());
                }
                if body["TransactionDesc"]
                    .as_str()
                    .is_none_or(|s| s.is_empty() || s.len() > 13)
                {
                    problems.push("TransactionDesc must be 1-13 characters".into());
                }
                if body["CallBackURL"]
                    .as_str()
                    .is_none_or(|s| !s.starts_with("https://"))
                {
                    problems.push("CallBackURL must be https".into());
                }
                if !problems.is_empty() {
                    state.problems.extend(problems.clone());
                    return daraja_error(
                        400,
                        "400.002.02",
                        &format!("Bad Request - Invalid {}", problems.join("; ")),
                    );
                }
                let n = self.counter.fetch_add(1, Ordering::Relaxed);
                let id = format!("ws_CO_30112026{n:06}");
                state.requests.insert(id.clone(), None);
                state.created.push(id.clone());
                let answer = ResponseTemplate::new(200).set_body_json(json!({
                    "MerchantRequestID": format!("29115-34620561-{n}"), "CheckoutRequestID": id,
                    "ResponseCode": "0", "ResponseDescription": "Success. Request accepted for processing",
                    "CustomerMessage": "Success. Request accepted for processing" }));
                if std::mem::take(&mut state.lose_next_push) {
                    answer.lost()
                } else {
                    answer
                }
            }
            "/mpesa/stkpushquery/v1/query" => {
                state.queries.push(body.clone());
                let problems = Self::check_credentials(&body);
                if !problems.is_empty() {
                    state.problems.extend(problems.clone());
                    return daraja_error(
                        400,
                        "400.002.02",
                        &format!("Bad Request - Invalid {}", problems.join("; ")),
                    );
                }
                let id = body["CheckoutRequestID"].as_str().unwrap_or_default();
                let lagging = state.query_says.get(id).copied().map(Some);
                if lagging == Some(Some(REFUSE)) {
                    return daraja_error(
                        400,
                        "400.002.02",
                        "Bad Request - Invalid CheckoutRequestID",
                    );
                }
                match lagging.as_ref().or(state.requests.get(id)) {
                    None => daraja_error(400, "400.002.02", "Bad Request - Invalid CheckoutRequestID"),
                    Some(None) => daraja_error(500, "500.001.1001", "The transaction is being processed"),
                    Some(Some(code)) => ResponseTemplate::new(200).set_body_json(json!({
                        "ResponseCode": "0", "ResponseDescription": "The service request has been accepted successsfully",
                        "MerchantRequestID": "29115-34620561-1", "CheckoutRequestID": id,
                        "ResultCode": code.to_string(),
                        "ResultDesc": if *code == 0 { "The service request is processed successfully." } else { "Request cancelled by user" } })),
                }
            }
            _ => daraja_error(404, "404.001.01", "Resource not found"),
        }
    }
}
