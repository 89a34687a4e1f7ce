//! M-Pesa through Safaricom Daraja's STK push (Lipa na M-Pesa Online), with requests to
//! `MPESA_API_BASE` (tests use a local fake). One payment buys one period: there is no
//! subscription at M-Pesa, so the subscription calls of the trait answer "not available" and the
//! period is kept by this service (`billing::mpesa`).
//!
//! - Token: `GET /oauth/v1/generate` with the consumer key and secret, kept until a minute
//!   before expiry, replaced once on a 401.
//! - STK push: `Password = base64(ShortCode + Passkey + Timestamp)` with `Timestamp` in Nairobi
//!   time (UTC+3, no daylight saving) as `YYYYMMDDHHMMSS`.
//! - Callbacks are not signed: [`read_callback`] only reads one; the payment is confirmed with
//!   the STK query ([`PaymentGateway::payment_status`]) before anything changes.

use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use url::Url;

use super::{
    CheckoutRequest, CheckoutSession, EventAction, EventPage, PaymentError, PaymentGateway,
    PaymentStatus, RemoteInvoice, TierChange, WebhookEvent, WebhookRejection,
    access_token::Issued,
    provider_api::{Call, ProviderApi},
};
use crate::{
    config::MpesaConfig,
    domain::{Tier, UserId, reconcile::RemoteSubscription, subscription::PaymentProvider},
};

/// Daraja's answer to a query about a request still waiting for the payer.
const STILL_PROCESSING: &str = "500.001.1001";

/// `YYYYMMDDHHMMSS` in Nairobi time (UTC+3 all year, no daylight saving).
pub fn timestamp(now: DateTime<Utc>) -> String {
    (now + chrono::Duration::hours(3))
        .format("%Y%m%d%H%M%S")
        .to_string()
}

/// `base64(shortcode + passkey + timestamp)`.
pub fn password(shortcode: &str, passkey: &str, timestamp: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{shortcode}{passkey}{timestamp}"))
}

pub struct MpesaGateway {
    api: ProviderApi,
    consumer_key: String,
    consumer_secret: SecretString,
    shortcode: String,
    passkey: SecretString,
    callback_url: Url,
    price_kes_pro: u32,
    price_kes_premium: u32,
}

/// What Safaricom posts to the callback URL (`Body.stkCallback`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StkCallback {
    pub merchant_request_id: String,
    pub checkout_request_id: String,
    pub result_code: i64,
    pub result_desc: String,
    /// `MpesaReceiptNumber`, on success only.
    pub receipt: Option<String>,
}

/// What a stored M-Pesa event holds: the hint (callback or poll) and whose payment it is.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MpesaHint {
    pub user_id: String,
    pub checkout_request_id: String,
    /// `callback` or `poll`.
    pub source: String,
    pub received_at: DateTime<Utc>,
    /// The receipt a callback named (kept only if the query confirms the payment).
    pub receipt: Option<String>,
    pub result_code: Option<i64>,
    /// The poller's round for this request (0 for a callback): each round is a new event, so
    /// a request whose earlier hints became dead letters is still asked about.
    #[serde(default)]
    pub round: u32,
}

impl MpesaHint {
    /// The inbox id: one per request, source and round (a callback sent twice is one event).
    pub fn event_id(&self) -> String {
        match self.round {
            0 => format!("mpesa-{}-{}", self.source, self.checkout_request_id),
            n => format!("mpesa-{}-{}-{n}", self.source, self.checkout_request_id),
        }
    }
}

/// Reads a callback body. Anything else is refused (400).
pub fn read_callback(body: &[u8]) -> Result<StkCallback, WebhookRejection> {
    let bad = |m: &str| WebhookRejection::BadPayload(m.to_string());
    let v: Value = serde_json::from_slice(body).map_err(|_| bad("not JSON"))?;
    let cb = v
        .pointer("/Body/stkCallback")
        .ok_or_else(|| bad("no Body.stkCallback"))?;
    let id = |key: &str| {
        cb.get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty() && s.len() <= 100)
            .map(str::to_string)
    };
    let result_code = cb
        .get("ResultCode")
        .and_then(|c| {
            c.as_i64()
                .or_else(|| c.as_str().and_then(|s| s.parse().ok()))
        })
        .ok_or_else(|| bad("no ResultCode"))?;
    let receipt = cb
        .pointer("/CallbackMetadata/Item")
        .and_then(Value::as_array)
        .and_then(|items| {
            items.iter().find_map(|i| {
                (i["Name"].as_str() == Some("MpesaReceiptNumber"))
                    .then(|| i["Value"].as_str().map(str::to_string))
                    .flatten()
            })
        })
        .filter(|r| r.len() <= 32 && r.bytes().all(|b| b.is_ascii_alphanumeric()));
    Ok(StkCallback {
        merchant_request_id: id("MerchantRequestID").unwrap_or_default(),
        checkout_request_id: id("CheckoutRequestID").ok_or_else(|| bad("no CheckoutRequestID"))?,
        result_code,
        result_desc: cb["ResultDesc"]
            .as_str()
            .unwrap_or("")
            .chars()
            .take(200)
            .collect(),
        receipt,
    })
}

/// How a failed request ended, for a page that follows it, read from [`failure_reason`]'s
/// words (the stored reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    Cancelled,
    TimedOut,
    Other,
}

pub fn failure_kind(reason: &str) -> FailureKind {
    if reason.starts_with("the payment was cancelled on the phone") {
        FailureKind::Cancelled
    } else if reason.starts_with("the phone could not be reached in time")
        || reason.starts_with("the payment request expired")
    {
        FailureKind::TimedOut
    } else {
        FailureKind::Other
    }
}

/// Daraja's result codes as a payer reads them.
pub fn failure_reason(code: i64, description: &str) -> String {
    match code {
        1032 => "the payment was cancelled on the phone".into(),
        1037 => "the phone could not be reached in time (no answer to the payment prompt)".into(),
        1019 => "the payment request expired before it was completed".into(),
        1 => "the M-Pesa balance is not enough for this payment".into(),
        2001 => "the M-Pesa PIN was wrong".into(),
        1025 | 9999 => "M-Pesa could not send the payment prompt; try again".into(),
        _ if description.is_empty() => format!("M-Pesa refused the payment (code {code})"),
        _ => format!("M-Pesa refused the payment: {description} (code {code})"),
    }
}

fn not_subscriptions() -> PaymentError {
    PaymentError::NotAvailable(
        "M-Pesa payments buy one period at a time: there is no subscription to change, cancel or resume; pay for the next period with M-Pesa when you want it".into(),
    )
}

impl MpesaGateway {
    /// The callback URL of one request: `ref` names this service's request, so a callback
    /// still finds it when the push's answer (its CheckoutRequestID) was lost.
    fn callback_for(&self, reference: Option<&str>) -> Url {
        let mut url = self.callback_url.clone();
        if let Some(reference) = reference {
            url.query_pairs_mut().append_pair("ref", reference);
        }
        url
    }

    pub fn new(config: &MpesaConfig, api_base: &Url) -> Result<Self, PaymentError> {
        Ok(Self {
            api: ProviderApi::new(api_base, "mpesa")?,
            consumer_key: config.consumer_key.clone(),
            consumer_secret: config.consumer_secret.clone(),
            shortcode: config.shortcode.clone(),
            passkey: config.passkey.clone(),
            callback_url: config.callback_url.clone(),
            price_kes_pro: config.price_kes_pro,
            price_kes_premium: config.price_kes_premium,
        })
    }

    /// The price of one period of `tier` in whole shillings.
    pub fn price_kes(&self, tier: Tier) -> Option<u32> {
        match tier {
            Tier::Pro => Some(self.price_kes_pro),
            Tier::Premium => Some(self.price_kes_premium),
            Tier::Free => None,
        }
    }

    async fn issue_token(&self) -> Result<Issued, PaymentError> {
        let sent = self
            .api
            .http
            .get(
                self.api
                    .url("/oauth/v1/generate?grant_type=client_credentials")?,
            )
            .basic_auth(
                &self.consumer_key,
                Some(self.consumer_secret.expose_secret()),
            )
            .send()
            .await;
        let body = self.api.finish("oauth_generate", sent).await?.ok()?;
        let token = body["access_token"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| PaymentError::Malformed("Daraja token answer without a token".into()))?;
        // Daraja writes expires_in as a string ("3599").
        let expires_in = body["expires_in"]
            .as_u64()
            .or_else(|| body["expires_in"].as_str().and_then(|s| s.parse().ok()))
            .unwrap_or(300);
        Ok(Issued {
            token: token.to_string().into(),
            expires_in: Duration::from_secs(expires_in),
        })
    }

    fn credentials(&self) -> (String, String) {
        let at = timestamp(Utc::now());
        let password = password(&self.shortcode, self.passkey.expose_secret(), &at);
        (password, at)
    }
}

#[async_trait]
impl PaymentGateway for MpesaGateway {
    fn provider(&self) -> PaymentProvider {
        PaymentProvider::Mpesa
    }

    /// M-Pesa has no customer object: the payment is recorded against the user id.
    async fn create_customer(
        &self,
        user: &UserId,
        _: Option<&str>,
    ) -> Result<String, PaymentError> {
        Ok(user.as_str().to_string())
    }

    /// Sends the STK push to `request.phone_number` (normalised `2547XXXXXXXX` by the caller);
    /// the session id is Daraja's CheckoutRequestID and there is no URL.
    #[tracing::instrument(skip_all, fields(tier = %request.tier))]
    async fn create_checkout(
        &self,
        request: &CheckoutRequest<'_>,
    ) -> Result<CheckoutSession, PaymentError> {
        let phone = request
            .phone_number
            .ok_or_else(|| PaymentError::Rejected("a phone number is required".into()))?;
        let amount = self
            .price_kes(request.tier)
            .ok_or_else(|| PaymentError::Rejected("FREE has no price".into()))?;
        let (password, at) = self.credentials();
        let tier = request.tier.as_str().to_uppercase();
        let body = json!({
            "BusinessShortCode": self.shortcode,
            "Password": password,
            "Timestamp": at,
            "TransactionType": "CustomerPayBillOnline",
            "Amount": amount,
            "PartyA": phone,
            "PartyB": self.shortcode,
            "PhoneNumber": phone,
            "CallBackURL": self.callback_for(request.reference).as_str(),
            // At most 12 and 13 characters.
            "AccountReference": "NexusCards",
            "TransactionDesc": format!("Nexus {tier}").chars().take(13).collect::<String>(),
        });
        let call = Call {
            method: Method::POST,
            path: "/mpesa/stkpush/v1/processrequest",
            endpoint: "stk_push",
            body: Some(body.to_string()),
            headers: Vec::new(),
        };
        let answer = self.api.send(call, || self.issue_token()).await?.ok()?;
        let code = answer["ResponseCode"].as_str().unwrap_or("");
        if code != "0" {
            let why = answer["ResponseDescription"].as_str().unwrap_or("refused");
            return Err(PaymentError::Rejected(format!(
                "M-Pesa: {why} (code {code})"
            )));
        }
        let id = answer["CheckoutRequestID"]
            .as_str()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                PaymentError::Malformed("STK push answer without a CheckoutRequestID".into())
            })?;
        let prompt = answer["CustomerMessage"].as_str().unwrap_or("");
        Ok(CheckoutSession {
            id: id.to_string(),
            url: String::new(),
            message: Some(
                format!("Check your phone: enter your M-Pesa PIN to pay KES {amount}. {prompt}")
                    .trim_end()
                    .to_string(),
            ),
        })
    }

    fn local_price(&self, tier: Tier) -> Option<(i64, String)> {
        self.price_kes(tier)
            .map(|kes| (i64::from(kes) * 100, "kes".to_string()))
    }

    #[tracing::instrument(skip_all, fields(checkout_request_id = %request_id))]
    async fn payment_status(&self, request_id: &str) -> Result<PaymentStatus, PaymentError> {
        let (password, at) = self.credentials();
        let body = json!({
            "BusinessShortCode": self.shortcode,
            "Password": password,
            "Timestamp": at,
            "CheckoutRequestID": request_id,
        });
        let call = Call {
            method: Method::POST,
            path: "/mpesa/stkpushquery/v1/query",
            endpoint: "stk_query",
            body: Some(body.to_string()),
            headers: Vec::new(),
        };
        let answer = self.api.send(call, || self.issue_token()).await?;
        if answer.status == StatusCode::INTERNAL_SERVER_ERROR
            && answer.body["errorCode"].as_str() == Some(STILL_PROCESSING)
        {
            return Ok(PaymentStatus::Pending);
        }
        let body = answer.ok()?;
        let code = body["ResultCode"]
            .as_i64()
            .or_else(|| body["ResultCode"].as_str().and_then(|s| s.parse().ok()))
            .ok_or_else(|| {
                PaymentError::Malformed("STK query answer without a ResultCode".into())
            })?;
        let description = body["ResultDesc"].as_str().unwrap_or("");
        Ok(match code {
            0 => PaymentStatus::Paid,
            code => PaymentStatus::Failed {
                code: code.to_string(),
                reason: failure_reason(code, description),
            },
        })
    }

    async fn change_tier(
        &self,
        _: &str,
        _: Tier,
        _: crate::domain::pricing::BillingInterval,
    ) -> Result<TierChange, PaymentError> {
        Err(not_subscriptions())
    }

    async fn set_cancel_at_period_end(
        &self,
        _: &str,
        _: bool,
    ) -> Result<RemoteSubscription, PaymentError> {
        Err(not_subscriptions())
    }

    async fn create_portal(&self, _: &str, _: &str) -> Result<String, PaymentError> {
        Err(not_subscriptions())
    }

    async fn fetch_subscription(&self, _: &str) -> Result<RemoteSubscription, PaymentError> {
        Err(not_subscriptions())
    }

    async fn fetch_invoice(&self, _: &str) -> Result<RemoteInvoice, PaymentError> {
        Err(not_subscriptions())
    }

    /// Callbacks are not signed; the M-Pesa intake (`billing::mpesa`) reads them as hints.
    async fn verify_webhook(
        &self,
        _: &http::HeaderMap,
        _: &[u8],
        _: DateTime<Utc>,
    ) -> Result<WebhookEvent, WebhookRejection> {
        Err(WebhookRejection::BadSignature)
    }

    /// Reads a stored hint ([`MpesaHint`]).
    fn read_event(&self, body: &[u8]) -> Result<WebhookEvent, WebhookRejection> {
        let hint: MpesaHint = serde_json::from_slice(body)
            .map_err(|e| WebhookRejection::BadPayload(format!("not an M-Pesa hint: {e}")))?;
        Ok(WebhookEvent {
            id: hint.event_id(),
            event_type: format!("mpesa.stk_{}", hint.source),
            created: hint.received_at,
            customer_id: Some(hint.user_id.clone()),
            object_id: Some(hint.checkout_request_id.clone()),
            action: EventAction::ConfirmPayment {
                request_id: hint.checkout_request_id,
                receipt: hint.receipt,
            },
        })
    }

    async fn list_events(
        &self,
        _: DateTime<Utc>,
        _: Option<&str>,
    ) -> Result<EventPage, PaymentError> {
        Err(not_subscriptions())
    }

    async fn customer_subscriptions(
        &self,
        _: &str,
    ) -> Result<Vec<RemoteSubscription>, PaymentError> {
        Err(not_subscriptions())
    }

    async fn expire_checkout(&self, _: &str) -> Result<super::Expiry, PaymentError> {
        Ok(super::Expiry::Expired)
    }

    async fn cancel_now(&self, _: &str) -> Result<(), PaymentError> {
        Err(not_subscriptions())
    }

    async fn cancel_and_refund(&self, _: &str) -> Result<Option<i64>, PaymentError> {
        Err(not_subscriptions())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timestamp_is_nairobi_time_and_the_password_its_base64() {
        let utc = DateTime::parse_from_rfc3339("2026-11-30T21:59:58Z")
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(|e| panic!("{e}"));
        // 21:59:58 UTC is 00:59:58 the next day in Nairobi.
        assert_eq!(timestamp(utc), "20261201005958");
        let p = password("174379", "passkey", "20261201005958");
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(&p)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(decoded, b"174379passkey20261201005958");
    }

    #[test]
    fn callbacks_are_read_and_bad_ones_refused() {
        let ok = r#"{"Body":{"stkCallback":{"MerchantRequestID":"m-1","CheckoutRequestID":"ws_CO_1",
            "ResultCode":0,"ResultDesc":"The service request is processed successfully.",
            "CallbackMetadata":{"Item":[{"Name":"Amount","Value":1500},
            {"Name":"MpesaReceiptNumber","Value":"NLJ7RT61SV"},{"Name":"PhoneNumber","Value":254708374149}]}}}}"#;
        let cb = read_callback(ok.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (cb.result_code, cb.receipt.as_deref()),
            (0, Some("NLJ7RT61SV"))
        );
        let cancelled = r#"{"Body":{"stkCallback":{"MerchantRequestID":"m-1","CheckoutRequestID":"ws_CO_1","ResultCode":1032,"ResultDesc":"Request cancelled by user"}}}"#;
        let cb = read_callback(cancelled.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((cb.result_code, cb.receipt), (1032, None));
        for bad in [
            "",
            "{}",
            r#"{"Body":{"stkCallback":{"ResultCode":0}}}"#,
            r#"{"Body":{"stkCallback":{"CheckoutRequestID":"x"}}}"#,
        ] {
            assert!(read_callback(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn failure_codes_read_as_reasons() {
        assert!(failure_reason(1032, "Request cancelled by user").contains("cancelled"));
        assert!(failure_reason(1037, "").contains("could not be reached"));
        assert_eq!(
            failure_kind(&failure_reason(1032, "")),
            FailureKind::Cancelled
        );
        assert_eq!(
            failure_kind(&failure_reason(1037, "")),
            FailureKind::TimedOut
        );
        assert_eq!(
            failure_kind(&failure_reason(1019, "")),
            FailureKind::TimedOut
        );
        assert_eq!(failure_kind(&failure_reason(1, "")), FailureKind::Other);
        assert!(failure_reason(1, "").contains("balance"));
        assert!(failure_reason(17, "Rule limited").contains("Rule limited (code 17)"));
    }
}
