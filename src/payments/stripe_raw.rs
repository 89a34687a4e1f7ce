//! The Stripe calls made as plain HTTP with JSON answers kept as JSON: event listings (stored
//! in the inbox exactly as Stripe sent them), a customer's subscriptions (read by the same
//! version-tolerant reader as event snapshots), expiring checkout sessions, and cancel-and-refund
//! of a duplicate subscription. They share the client's budget, key and base URL.

use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use url::Url;

use super::{EventPage, Expiry, PaymentError, stripe::StripeGateway, stripe_event};
use crate::domain::reconcile::RemoteSubscription;

/// How a failed raw call is counted in `stripe_requests_total{status}`.
fn raw_outcome_of(error: &PaymentError) -> &'static str {
    match error {
        PaymentError::Unavailable(m) if m.starts_with("status 429") => "429",
        PaymentError::Unavailable(m) if m.starts_with("status 5") => "5xx",
        PaymentError::Unavailable(_) => "error",
        _ => "4xx",
    }
}

impl StripeGateway {
    /// Sends a raw request within the budget and reads the JSON answer.
    pub(super) async fn raw(
        &self,
        endpoint: &'static str,
        request: reqwest::RequestBuilder,
    ) -> Result<serde_json::Value, PaymentError> {
        let request = request.bearer_auth(self.secret_key.expose_secret());
        self.budget
            .call(
                endpoint,
                async {
                    let response = request.send().await.map_err(|e| {
                        PaymentError::Unavailable(if e.is_timeout() {
                            "timed out".to_string()
                        } else {
                            "cannot reach Stripe".to_string()
                        })
                    })?;
                    self.clock
                        .observe(response.headers().get(http::header::DATE), Utc::now());
                    let status = response.status().as_u16();
                    let body: serde_json::Value = response.json().await.map_err(|_| {
                        PaymentError::Malformed(format!("status {status}: not JSON"))
                    })?;
                    if (200..300).contains(&status) {
                        return Ok(body);
                    }
                    let message = body
                        .pointer("/error/message")
                        .and_then(serde_json::Value::as_str)
                        .unwrap_or("no message")
                        .to_string();
                    Err(match status {
                        404 => PaymentError::NotFound(message),
                        400..=499 if status != 409 && status != 429 => {
                            PaymentError::Rejected(message)
                        }
                        _ => PaymentError::Unavailable(format!("status {status}: {message}")),
                    })
                },
                raw_outcome_of,
            )
            .await
    }

    pub(super) fn url(&self, path: &str) -> Result<Url, PaymentError> {
        self.api_base
            .join(path)
            .map_err(|e| PaymentError::NotAvailable(format!("STRIPE_API_BASE: {e}")))
    }

    pub(super) fn url_with(&self, path: &str, query: &[(&str, &str)]) -> Result<Url, PaymentError> {
        let mut url = self.url(path)?;
        url.query_pairs_mut().extend_pairs(query);
        Ok(url)
    }

    pub(super) async fn list_events_raw(
        &self,
        created_after: DateTime<Utc>,
        starting_after: Option<&str>,
    ) -> Result<EventPage, PaymentError> {
        let created_gt = created_after.timestamp().to_string();
        let mut query = vec![("limit", "100"), ("created[gt]", created_gt.as_str())];
        if let Some(after) = starting_after {
            query.push(("starting_after", after));
        }
        let page = self
            .raw(
                "GET /v1/events",
                self.http.get(self.url_with("v1/events", &query)?),
            )
            .await?;
        let data = page
            .get("data")
            .and_then(serde_json::Value::as_array)
            .ok_or_else(|| PaymentError::Malformed("event list without data".into()))?;
        let mut events = Vec::with_capacity(data.len());
        for event in data {
            let id = event
                .get("id")
                .and_then(serde_json::Value::as_str)
                .ok_or_else(|| PaymentError::Malformed("listed event without id".into()))?;
            events.push((id.to_string(), event.to_string()));
        }
        Ok(EventPage {
            events,
            has_more: page
                .get("has_more")
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(false),
        })
    }

    /// The subscription as Stripe answers it, kept as JSON.
    async fn subscription_json(
        &self,
        subscription_id: &str,
    ) -> Result<serde_json::Value, PaymentError> {
        let path = format!("v1/subscriptions/{subscription_id}");
        self.raw(
            "GET /v1/subscriptions/{id}",
            self.http.get(self.url(&path)?),
        )
        .await
    }

    pub(super) async fn fetch_subscription_raw(
        &self,
        subscription_id: &str,
    ) -> Result<RemoteSubscription, PaymentError> {
        let sub = self.subscription_json(subscription_id).await?;
        stripe_event::subscription_from_json(&sub, &self.prices)
            .ok_or_else(|| PaymentError::Malformed("the subscription cannot be read".into()))
    }

    pub(super) async fn customer_subscriptions_raw(
        &self,
        customer_id: &str,
    ) -> Result<Vec<RemoteSubscription>, PaymentError> {
        let page = self
            .raw(
                "GET /v1/subscriptions",
                self.http.get(self.url_with(
                    "v1/subscriptions",
                    &[
                        ("customer", customer_id),
                        ("status", "all"),
                        ("limit", "100"),
                    ],
                )?),
            )
            .await?;
        let data = page
            .get("data")
            .and_then(serde_json::Value::as_array)
            .ok_or_else(|| PaymentError::Malformed("subscription list without data".into()))?;
        data.iter()
            .map(|sub| {
                stripe_event::subscription_from_json(sub, &self.prices).ok_or_else(|| {
                    PaymentError::Malformed("a listed subscription cannot be read".into())
                })
            })
            .collect()
    }

    /// Stripe answers 404 for a session it does not know (another account's or mode's: it
    /// cannot be paid here) and 400 for one no longer open, which is read to tell a paid one.
    pub(super) async fn expire_checkout_raw(
        &self,
        session_id: &str,
    ) -> Result<Expiry, PaymentError> {
        let path = format!("v1/checkout/sessions/{session_id}");
        let result = self
            .raw(
                "POST /v1/checkout/sessions/{id}/expire",
                self.http
                    .post(self.url(&format!("{path}/expire"))?)
                    .header("Idempotency-Key", format!("nexus-expire-{session_id}")),
            )
            .await;
        match result {
            Ok(_) | Err(PaymentError::NotFound(_)) => Ok(Expiry::Expired),
            Err(PaymentError::Rejected(_)) => {
                let session = self
                    .raw(
                        "GET /v1/checkout/sessions/{id}",
                        self.http.get(self.url(&path)?),
                    )
                    .await?;
                match session.get("status").and_then(serde_json::Value::as_str) {
                    Some("complete") => Ok(Expiry::AlreadyPaid {
                        subscription_id: stripe_event::id_of_value(session.get("subscription")),
                    }),
                    _ => Ok(Expiry::Expired),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Cancels the subscription now; its state afterwards. Cancelling again (a retry) reads
    /// the cancelled subscription.
    pub(super) async fn cancel_now_raw(
        &self,
        subscription_id: &str,
    ) -> Result<serde_json::Value, PaymentError> {
        let path = format!("v1/subscriptions/{subscription_id}");
        match self
            .raw(
                "DELETE /v1/subscriptions/{id}",
                self.http.delete(self.url(&path)?),
            )
            .await
        {
            Ok(sub) => Ok(sub),
            // Cancelled before (a retry): read it as it is.
            Err(PaymentError::Rejected(_)) => self.subscription_json(subscription_id).await,
            Err(e) => Err(e),
        }
    }

    /// Refunds the latest invoice's payment first, then cancels: a retry after a failure in
    /// between finds the subscription still live and does both again (the refund replays by
    /// its idempotency key).
    pub(super) async fn cancel_and_refund_raw(
        &self,
        subscription_id: &str,
    ) -> Result<Option<i64>, PaymentError> {
        let refunded = self.refund_latest_invoice(subscription_id).await?;
        self.cancel_now_raw(subscription_id).await?;
        Ok(refunded)
    }

    async fn refund_latest_invoice(
        &self,
        subscription_id: &str,
    ) -> Result<Option<i64>, PaymentError> {
        let sub = self.subscription_json(subscription_id).await?;
        let Some(invoice_id) = stripe_event::id_of_value(sub.get("latest_invoice")) else {
            return Ok(None);
        };
        let invoice = self
            .raw(
                "GET /v1/invoices/{id}",
                self.http.get(self.url_with(
                    &format!("v1/invoices/{invoice_id}"),
                    &[("expand[]", "payments")],
                )?),
            )
            .await?;
        let amount = invoice
            .get("amount_paid")
            .and_then(serde_json::Value::as_i64)
            .unwrap_or(0);
        // Newer API versions list the invoice's payments (a failed attempt may come first: the
        // paid one is refunded); older ones name its payment intent.
        let payments = invoice
            .pointer("/payments/data")
            .and_then(serde_json::Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let paid = payments
            .iter()
            .find(|p| p.get("status").and_then(serde_json::Value::as_str) == Some("paid"))
            .or_else(|| {
                // Without statuses (older versions), only a single payment is unambiguous.
                (payments.len() == 1 && payments[0].get("status").is_none()).then(|| &payments[0])
            });
        let payment_intent = paid
            .and_then(|p| p.pointer("/payment/payment_intent"))
            .and_then(|v| stripe_event::id_of_value(Some(v)))
            .or_else(|| stripe_event::id_of_value(invoice.get("payment_intent")));
        let (Some(payment_intent), true) = (payment_intent, amount > 0) else {
            return Ok(None);
        };
        self.raw(
            "POST /v1/refunds",
            self.http
                .post(self.url("v1/refunds")?)
                .header("Idempotency-Key", format!("nexus-refund-{subscription_id}"))
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body(form(&[
                    ("payment_intent", payment_intent.as_str()),
                    ("reason", "duplicate"),
                    ("metadata[subscription_id]", subscription_id),
                ])),
        )
        .await?;
        Ok(Some(amount))
    }
}

/// An `application/x-www-form-urlencoded` body.
pub(super) fn form(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}
