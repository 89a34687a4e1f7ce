//! The payment webhook routes: `POST /billing/webhook` (Stripe; `/billing/webhook/stripe` too),
//! `/billing/webhook/paypal` and `/billing/webhook/mpesa`. Each reads the raw body under the cap
//! and hands the exact bytes to the billing intake.
//!
//! Answers: 2xx "stored, do not send again" (the event processor applies it, or it was a
//! duplicate); 400 a delivery that failed verification or cannot be read, nothing stored; 503
//! "try again later" with nothing stored. M-Pesa gets the acknowledgement Safaricom expects
//! (`{"ResultCode":0,"ResultDesc":"Accepted"}`), and a non-zero ResultCode for a callback this
//! service did not ask for.

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;

use super::{SidecarState, read_body, text};
use crate::{
    billing::{CallbackOutcome, WebhookError, WebhookOutcome},
    domain::subscription::PaymentProvider,
    payments::WebhookRejection,
};

/// The provider a webhook path is for.
pub(super) fn provider_of(path: &str) -> Option<PaymentProvider> {
    match path {
        "/billing/webhook" | "/billing/webhook/stripe" => Some(PaymentProvider::Stripe),
        "/billing/webhook/paypal" => Some(PaymentProvider::Paypal),
        "/billing/webhook/mpesa" => Some(PaymentProvider::Mpesa),
        _ => None,
    }
}

/// The path's label in request metrics.
pub(super) fn route_name(path: &str) -> &'static str {
    match provider_of(path) {
        Some(PaymentProvider::Stripe) if path == "/billing/webhook" => "/billing/webhook",
        Some(PaymentProvider::Stripe) => "/billing/webhook/stripe",
        Some(PaymentProvider::Paypal) => "/billing/webhook/paypal",
        Some(PaymentProvider::Mpesa) => "/billing/webhook/mpesa",
        None => "other",
    }
}

pub(super) async fn deliver(
    state: &SidecarState,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let Some(provider) = provider_of(request.uri().path()) else {
        return text(StatusCode::NOT_FOUND, "not found");
    };
    let headers = request.headers().clone();
    // M-Pesa callbacks name this service's request in their URL (`?ref=`).
    let reference = request.uri().query().and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "ref")
            .map(|(_, v)| v.into_owned())
    });
    let body = match read_body(request, state.webhook_max_body_bytes).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    if provider == PaymentProvider::Mpesa {
        return mpesa(state, &body, reference.as_deref()).await;
    }
    let result = state.billing.webhook(provider, &headers, &body).await;
    count(provider, label(&result));
    match result {
        Ok(WebhookOutcome::Duplicate) => text(StatusCode::OK, "duplicate"),
        Ok(_) => text(StatusCode::OK, "ok"),
        Err(error) => refusal(error),
    }
}

async fn mpesa(
    state: &SidecarState,
    body: &[u8],
    reference: Option<&str>,
) -> Response<Full<Bytes>> {
    let result = state.billing.mpesa_callback(body, reference).await;
    let outcome = match &result {
        Ok(CallbackOutcome::Accepted(o)) => label(&Ok(*o)),
        Ok(CallbackOutcome::Ignored) => "ignored",
        Err(e) => error_label(e),
    };
    count(PaymentProvider::Mpesa, outcome);
    match result {
        Ok(CallbackOutcome::Accepted(_)) => ack(0, "Accepted"),
        Ok(CallbackOutcome::Ignored) => {
            ack(1, "Rejected: not a pending payment request of this service")
        }
        Err(error) => refusal(error),
    }
}

fn ack(code: i32, description: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "ResultCode": code, "ResultDesc": description }).to_string();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn label(result: &Result<WebhookOutcome, WebhookError>) -> &'static str {
    match result {
        Ok(WebhookOutcome::Stored) => "stored",
        Ok(WebhookOutcome::Duplicate) => "duplicate",
        Err(e) => error_label(e),
    }
}

fn error_label(error: &WebhookError) -> &'static str {
    match error {
        WebhookError::NotConfigured => "not_configured",
        WebhookError::Rejected(WebhookRejection::Unverifiable(_)) => "unverifiable",
        WebhookError::Rejected(_) => "rejected",
        WebhookError::Store(_) => "failed",
    }
}

fn count(provider: PaymentProvider, outcome: &'static str) {
    metrics::counter!("webhook_deliveries_total", "provider" => provider.as_str(), "outcome" => outcome)
        .increment(1);
}

fn refusal(error: WebhookError) -> Response<Full<Bytes>> {
    match error {
        WebhookError::NotConfigured => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "payments are not configured",
        ),
        WebhookError::Rejected(WebhookRejection::Unverifiable(reason)) => {
            tracing::warn!(%reason, "webhook delivery could not be verified now; the provider will redeliver");
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                "the delivery cannot be verified now; nothing was recorded, send it again later",
            )
        }
        WebhookError::Rejected(reason) => {
            tracing::info!(%reason, "webhook delivery rejected");
            text(StatusCode::BAD_REQUEST, &reason.to_string())
        }
        WebhookError::Store(error) => {
            tracing::error!(error = %crate::telemetry::error_chain(&error), "webhook event cannot be stored; the provider will redeliver");
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot store the event now; nothing was recorded, send it again later",
            )
        }
    }
}
