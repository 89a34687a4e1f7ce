//! PayPal subscriptions (REST v1), with requests to `PAYPAL_API_BASE` (tests use a local fake).
//!
//! - Token: client credentials, kept until a minute before expiry, replaced once on a 401.
//! - Checkout creates the subscription with the tier's plan and `custom_id` = the user id; the
//!   payer is sent to its `approve` link. `PayPal-Request-Id` is derived from the request, so a
//!   double click or a retried RPC gets the same subscription back.
//! - A plan change is PayPal's revise, which the payer approves (the link is handed back); the
//!   tier changes when PayPal reports the revised plan.
//! - Cancel is PayPal's cancel (billing stops, the paid period runs out, see `paypal_event`).
//!   A cancelled PayPal subscription cannot be resumed: FAILED_PRECONDITION says so.
//! - Webhooks: the `PAYPAL-*` headers are checked (the certificate URL must be https on a PayPal
//!   API host), the event is read, then PayPal's verify-webhook-signature call decides, with the
//!   body sent as the exact bytes received. Only `SUCCESS` is accepted.

use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use chrono::{DateTime, Utc};
use reqwest::Method;
use secrecy::ExposeSecret;
use serde::Serialize;
use serde_json::{Value, json, value::RawValue};
use sha2::{Digest, Sha256};
use url::Url;

use super::{
    CheckoutRequest, CheckoutSession, EventPage, PaymentError, PaymentGateway, RemoteInvoice,
    TierChange, WebhookEvent, WebhookRejection,
    access_token::Issued,
    paypal_event::{self, PlanMap},
    provider_api::{Call, ProviderApi},
};
use crate::{
    config::PaypalConfig,
    domain::{
        Tier, UserId, pricing::BillingInterval, reconcile::RemoteSubscription,
        subscription::PaymentProvider,
    },
};

/// Hosts PayPal serves its webhook signing certificates from; a `PAYPAL-CERT-URL` elsewhere is
/// refused before anything else happens.
pub const CERT_HOSTS: [&str; 4] = [
    "api.paypal.com",
    "api-m.paypal.com",
    "api.sandbox.paypal.com",
    "api-m.sandbox.paypal.com",
];

pub struct PaypalGateway {
    api: ProviderApi,
    client_id: String,
    client_secret: secrecy::SecretString,
    webhook_id: String,
    plans: PlanMap,
}

/// The body of PayPal's verify-webhook-signature call.
#[derive(Serialize)]
struct Verification<'a> {
    auth_algo: &'a str,
    cert_url: &'a str,
    transmission_id: &'a str,
    transmission_sig: &'a str,
    transmission_time: &'a str,
    webhook_id: &'a str,
    /// The delivery's bytes, unchanged: re-serialising the event would change what was signed.
    webhook_event: &'a RawValue,
}

/// Whether a signing certificate URL is one PayPal serves.
pub fn is_paypal_cert_url(raw: &str) -> bool {
    Url::parse(raw).is_ok_and(|url| {
        url.scheme() == "https"
            && url.port().is_none()
            && url.username().is_empty()
            && url.host_str().is_some_and(|h| CERT_HOSTS.contains(&h))
            && url.path().starts_with("/v1/notifications/certs/")
    })
}

impl PaypalGateway {
    pub fn new(config: &PaypalConfig, api_base: &Url) -> Result<Self, PaymentError> {
        Ok(Self {
            api: ProviderApi::new(api_base, "paypal")?,
            client_id: config.client_id.clone(),
            client_secret: config.client_secret.clone(),
            webhook_id: config.webhook_id.clone(),
            plans: PlanMap {
                pro: config.plan_pro.clone(),
                premium: config.plan_premium.clone(),
                pro_yearly: config.plan_pro_yearly.clone(),
                premium_yearly: config.plan_premium_yearly.clone(),
            },
        })
    }

    async fn issue_token(&self) -> Result<Issued, PaymentError> {
        let sent = self
            .api
            .http
            .post(self.api.url("/v1/oauth2/token")?)
            .basic_auth(&self.client_id, Some(self.client_secret.expose_secret()))
            .header("accept", "application/json")
            .header("content-type", "application/x-www-form-urlencoded")
            .body("grant_type=client_credentials")
            .send()
            .await;
        let body = self.api.finish("oauth2_token", sent).await?.ok()?;
        let token = body["access_token"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| PaymentError::Malformed("PayPal token answer without a token".into()))?;
        Ok(Issued {
            token: token.to_string().into(),
            expires_in: Duration::from_secs(body["expires_in"].as_u64().unwrap_or(300)),
        })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        endpoint: &'static str,
        body: Option<Value>,
        request_id: Option<String>,
    ) -> Result<Value, PaymentError> {
        let call = Call {
            method,
            path,
            endpoint,
            body: body.map(|b| b.to_string()),
            headers: request_id
                .map(|id| vec![("paypal-request-id", id)])
                .unwrap_or_default(),
        };
        self.api.send(call, || self.issue_token()).await?.ok()
    }

    fn plan_of(&self, tier: Tier, interval: BillingInterval) -> Result<&str, PaymentError> {
        match (tier, interval) {
            (Tier::Free, _) => Err(PaymentError::Rejected("FREE has no PayPal plan".into())),
            _ => self.plans.plan_of(tier, interval).ok_or_else(|| {
                PaymentError::NotAvailable(format!(
                    "{tier} is not sold yearly with PayPal (PAYPAL_PLAN_ID_{}_YEARLY is not set)",
                    tier.as_str().to_uppercase()
                ))
            }),
        }
    }

    fn read_subscription(&self, body: &Value) -> Result<RemoteSubscription, PaymentError> {
        paypal_event::subscription(body, &self.plans).map_err(PaymentError::Malformed)
    }

    async fn cancel(&self, subscription_id: &str, reason: &str) -> Result<(), PaymentError> {
        let path = format!(
            "/v1/billing/subscriptions/{}/cancel",
            segment(subscription_id)
        );
        match self
            .call(
                Method::POST,
                &path,
                "subscription_cancel",
                Some(json!({ "reason": reason })),
                None,
            )
            .await
        {
            Ok(_) => Ok(()),
            // 422 SUBSCRIPTION_STATUS_INVALID: already cancelled (a retried call).
            Err(PaymentError::Rejected(m)) if m.starts_with("422") => {
                let now = self.fetch_subscription(subscription_id).await?;
                if now.cancel_at_period_end || !crate::domain::reconcile::is_live_status(now.status)
                {
                    Ok(())
                } else {
                    Err(PaymentError::Rejected(m))
                }
            }
            Err(e) => Err(e),
        }
    }
}

/// A path segment: PayPal ids are letters, digits and dashes; anything else is escaped.
fn segment(id: &str) -> String {
    url::form_urlencoded::byte_serialize(id.as_bytes()).collect()
}

fn approve_link(body: &Value) -> Option<String> {
    body["links"].as_array()?.iter().find_map(|l| {
        (l["rel"].as_str() == Some("approve"))
            .then(|| l["href"].as_str().map(str::to_string))
            .flatten()
    })
}

fn header<'a>(headers: &'a http::HeaderMap, name: &str) -> Result<&'a str, WebhookRejection> {
    headers
        .get(name)
        .ok_or(WebhookRejection::MissingSignature)?
        .to_str()
        .ok()
        .filter(|v| !v.is_empty() && v.len() <= 2048)
        .ok_or(WebhookRejection::MalformedSignature)
}

#[async_trait]
impl PaymentGateway for PaypalGateway {
    fn provider(&self) -> PaymentProvider {
        PaymentProvider::Paypal
    }

    /// PayPal has no customer object: the subscription carries the user id (`custom_id`).
    async fn create_customer(
        &self,
        user: &UserId,
        _: Option<&str>,
    ) -> Result<String, PaymentError> {
        Ok(user.as_str().to_string())
    }

    #[tracing::instrument(skip_all, fields(tier = %request.tier))]
    async fn create_checkout(
        &self,
        request: &CheckoutRequest<'_>,
    ) -> Result<CheckoutSession, PaymentError> {
        if request.currency.is_some() {
            return Err(PaymentError::NotAvailable(
                "a PayPal plan charges the currency it was created in; leave currency empty to pay with PayPal".into(),
            ));
        }
        let plan = self.plan_of(request.tier, request.interval)?;
        let key = Sha256::digest(
            format!(
                "{}|{}|{}|{}|{}|{}",
                request.user,
                plan,
                request.success_url,
                request.cancel_url,
                request.previous_subscription_id.unwrap_or(""),
                request.expired_before
            )
            .as_bytes(),
        );
        let body = json!({
            "plan_id": plan,
            "custom_id": request.user.as_str(),
            "application_context": {
                "brand_name": "Nexus Cards",
                "user_action": "SUBSCRIBE_NOW",
                "shipping_preference": "NO_SHIPPING",
                "return_url": request.success_url,
                "cancel_url": request.cancel_url,
            },
        });
        let answer = self
            .call(
                Method::POST,
                "/v1/billing/subscriptions",
                "subscription_create",
                Some(body),
                Some(format!("nexus-checkout-{}", hex::encode(&key[..16]))),
            )
            .await?;
        let id = answer["id"]
            .as_str()
            .ok_or_else(|| PaymentError::Malformed("PayPal subscription without an id".into()))?;
        let url = approve_link(&answer).ok_or_else(|| {
            PaymentError::Malformed("PayPal subscription without an approve link".into())
        })?;
        Ok(CheckoutSession {
            id: id.to_string(),
            url,
            message: None,
        })
    }

    #[tracing::instrument(skip_all, fields(subscription_id = %subscription_id, tier = %tier))]
    async fn change_tier(
        &self,
        subscription_id: &str,
        tier: Tier,
        interval: BillingInterval,
    ) -> Result<TierChange, PaymentError> {
        let plan = self.plan_of(tier, interval)?;
        let path = format!(
            "/v1/billing/subscriptions/{}/revise",
            segment(subscription_id)
        );
        let answer = self
            .call(
                Method::POST,
                &path,
                "subscription_revise",
                Some(json!({ "plan_id": plan })),
                None,
            )
            .await?;
        Ok(TierChange {
            subscription: self.fetch_subscription(subscription_id).await?,
            approval_url: approve_link(&answer),
        })
    }

    #[tracing::instrument(skip_all, fields(subscription_id = %subscription_id, cancel = cancel))]
    async fn set_cancel_at_period_end(
        &self,
        subscription_id: &str,
        cancel: bool,
    ) -> Result<RemoteSubscription, PaymentError> {
        if cancel {
            self.cancel(
                subscription_id,
                "Cancelled by the subscriber in Nexus Cards",
            )
            .await?;
            return self.fetch_subscription(subscription_id).await;
        }
        let now = self.fetch_subscription(subscription_id).await?;
        if now.cancel_at_period_end {
            let until = now
                .current_period_end
                .map(|t| format!(" (it keeps its tier until {})", t.date_naive()))
                .unwrap_or_default();
            return Err(PaymentError::NotAvailable(format!(
                "a cancelled PayPal subscription cannot be resumed{until}; start a new subscription after it ends"
            )));
        }
        Ok(now)
    }

    async fn create_portal(&self, _: &str, _: &str) -> Result<String, PaymentError> {
        Err(PaymentError::NotAvailable(
            "PayPal subscriptions are managed in the subscriber's PayPal account".into(),
        ))
    }

    async fn fetch_subscription(
        &self,
        subscription_id: &str,
    ) -> Result<RemoteSubscription, PaymentError> {
        let path = format!("/v1/billing/subscriptions/{}", segment(subscription_id));
        let body = self
            .call(Method::GET, &path, "subscription_get", None, None)
            .await?;
        self.read_subscription(&body)
    }

    async fn fetch_invoice(&self, invoice_id: &str) -> Result<RemoteInvoice, PaymentError> {
        let path = format!("/v1/payments/sale/{}", segment(invoice_id));
        let body = self
            .call(Method::GET, &path, "sale_get", None, None)
            .await?;
        paypal_event::sale(&body).map_err(PaymentError::Malformed)
    }

    async fn verify_webhook(
        &self,
        headers: &http::HeaderMap,
        body: &[u8],
        _now: DateTime<Utc>,
    ) -> Result<WebhookEvent, WebhookRejection> {
        let cert_url = header(headers, "paypal-cert-url")?;
        if !is_paypal_cert_url(cert_url) {
            tracing::warn!("PayPal webhook with a certificate URL off the allow-list");
            return Err(WebhookRejection::BadSignature);
        }
        let auth_algo = header(headers, "paypal-auth-algo")?;
        let transmission_id = header(headers, "paypal-transmission-id")?;
        let transmission_sig = header(headers, "paypal-transmission-sig")?;
        let transmission_time = header(headers, "paypal-transmission-time")?;
        if base64::engine::general_purpose::STANDARD
            .decode(transmission_sig)
            .is_err()
        {
            return Err(WebhookRejection::MalformedSignature);
        }
        let event = paypal_event::parse(body, &self.plans)?;
        let text = std::str::from_utf8(body)
            .map_err(|_| WebhookRejection::BadPayload("not UTF-8".into()))?;
        let raw = RawValue::from_string(text.to_string())
            .map_err(|_| WebhookRejection::BadPayload("not JSON".into()))?;
        let verification = Verification {
            auth_algo,
            cert_url,
            transmission_id,
            transmission_sig,
            transmission_time,
            webhook_id: &self.webhook_id,
            webhook_event: &raw,
        };
        let body = serde_json::to_string(&verification)
            .map_err(|e| WebhookRejection::BadPayload(e.to_string()))?;
        let call = Call {
            method: Method::POST,
            path: "/v1/notifications/verify-webhook-signature",
            endpoint: "verify_webhook_signature",
            body: Some(body),
            headers: Vec::new(),
        };
        let answer = self
            .api
            .send(call, || self.issue_token())
            .await
            .and_then(|a| a.ok())
            .map_err(|e| match e {
                PaymentError::Rejected(m) => WebhookRejection::BadSignature.with_log(&m),
                other => WebhookRejection::Unverifiable(other.to_string()),
            })?;
        match answer["verification_status"].as_str() {
            Some("SUCCESS") => Ok(event),
            _ => Err(WebhookRejection::BadSignature),
        }
    }

    fn read_event(&self, body: &[u8]) -> Result<WebhookEvent, WebhookRejection> {
        paypal_event::parse(body, &self.plans)
    }

    async fn list_events(
        &self,
        _: DateTime<Utc>,
        _: Option<&str>,
    ) -> Result<EventPage, PaymentError> {
        Err(PaymentError::NotAvailable(
            "the reconciler lists Stripe events only".into(),
        ))
    }

    async fn customer_subscriptions(
        &self,
        _: &str,
    ) -> Result<Vec<RemoteSubscription>, PaymentError> {
        Err(PaymentError::NotAvailable(
            "PayPal cannot list a customer's subscriptions".into(),
        ))
    }

    /// PayPal has no call to withdraw an approve link; an unapproved subscription lapses on its
    /// own, and one approved anyway is a second live subscription (`DUPLICATE_SUBSCRIPTION_POLICY`).
    async fn expire_checkout(&self, _: &str) -> Result<super::Expiry, PaymentError> {
        Ok(super::Expiry::Expired)
    }

    fn now(&self) -> DateTime<Utc> {
        self.api.clock.now()
    }

    #[tracing::instrument(skip_all, fields(subscription_id = %subscription_id))]
    async fn cancel_now(&self, subscription_id: &str) -> Result<(), PaymentError> {
        self.cancel(subscription_id, "Account deleted at the user's request")
            .await
    }

    /// Refunds first, then cancels: a retry after a failure in between finds the subscription
    /// still live and does both again (the refund replays by its `PayPal-Request-Id`).
    async fn cancel_and_refund(&self, subscription_id: &str) -> Result<Option<i64>, PaymentError> {
        let refunded = self.refund_latest_sale(subscription_id).await?;
        self.cancel(subscription_id, "Second subscription of one user; refunded")
            .await?;
        Ok(refunded)
    }
}

impl PaypalGateway {
    /// Refunds the subscription's latest completed sale; the amount refunded, if any.
    async fn refund_latest_sale(&self, subscription_id: &str) -> Result<Option<i64>, PaymentError> {
        let end = Utc::now();
        let start = end - chrono::Duration::days(LISTED_DAYS);
        let path = format!(
            "/v1/billing/subscriptions/{}/transactions?start_time={}&end_time={}",
            segment(subscription_id),
            start.format("%Y-%m-%dT%H:%M:%SZ"),
            end.format("%Y-%m-%dT%H:%M:%SZ"),
        );
        let listed = self
            .call(Method::GET, &path, "subscription_transactions", None, None)
            .await?;
        let all = listed["transactions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let status = |t: &Value| t["status"].as_str().unwrap_or_default().to_string();
        let Some(paid) = all
            .iter()
            .filter(|t| status(t) == "COMPLETED")
            .max_by_key(|t| t["time"].as_str().unwrap_or("").to_string())
        else {
            // Refunded before (an earlier attempt whose answer was lost): nothing left to do.
            if all
                .iter()
                .any(|t| matches!(status(t).as_str(), "REFUNDED" | "PARTIALLY_REFUNDED"))
            {
                return Ok(None);
            }
            // PayPal lists a subscription's sale some time after its payment: a recent payment
            // not listed yet is waited for (the subscription is not cancelled meanwhile).
            let path = format!("/v1/billing/subscriptions/{}", segment(subscription_id));
            let sub = self
                .call(Method::GET, &path, "subscription_get", None, None)
                .await?;
            let recent = sub
                .pointer("/billing_info/last_payment/time")
                .and_then(Value::as_str)
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .is_some_and(|t| t.with_timezone(&Utc) > end - chrono::Duration::days(LISTED_DAYS));
            if recent {
                return Err(PaymentError::Unavailable(
                    "the subscription's payment is not listed by PayPal yet; the refund is retried"
                        .into(),
                ));
            }
            return Ok(None);
        };
        let sale = paid["id"]
            .as_str()
            .ok_or_else(|| PaymentError::Malformed("transaction without an id".into()))?;
        let amount = paid.pointer("/amount_with_breakdown/gross_amount");
        let minor = amount.and_then(|a| {
            crate::domain::invoice::parse_amount(a["value"].as_str()?, a["currency_code"].as_str()?)
        });
        self.call(
            Method::POST,
            &format!("/v1/payments/sale/{}/refund", segment(sale)),
            "sale_refund",
            Some(json!({})),
            Some(format!("nexus-refund-{sale}")),
        )
        .await?;
        Ok(minor)
    }
}

/// How far back a subscription's transactions are listed for a refund.
const LISTED_DAYS: i64 = 40;

impl WebhookRejection {
    /// Logs why PayPal refused to verify (a 4xx), keeping the rejection.
    fn with_log(self, message: &str) -> Self {
        tracing::warn!(%message, "PayPal refused the signature verification call");
        self
    }
}
