//! The contact providers' webhook routes: `POST /integrations/webhook/hubspot`,
//! `/integrations/webhook/zoho_crm` and `/integrations/webhook/mailchimp/{secret}` (Mailchimp's
//! validation GET answered 200). Each reads the raw body under the cap and hands the exact
//! bytes to the integrations' intake.
//!
//! Answers: 200 stored, duplicate, or acknowledged and dropped (no connection it concerns);
//! 401 unsigned, wrongly signed or stale (HubSpot); 400 unreadable; 503 "send it again later"
//! (not configured, database down), nothing stored.

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;

use super::{SidecarState, read_body, text};
use crate::integrations::webhook_intake::{Intake, IntakeError, Refusal};

const PREFIX: &str = "/integrations/webhook/";
const MAILCHIMP: &str = "/integrations/webhook/mailchimp/";

/// Which provider route a path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Route {
    Hubspot,
    Zoho,
    Mailchimp,
}

impl Route {
    fn provider(self) -> &'static str {
        match self {
            Self::Hubspot => "hubspot",
            Self::Zoho => "zoho_crm",
            Self::Mailchimp => "mailchimp",
        }
    }

    /// The route's label in request metrics (never Mailchimp's secret).
    pub(super) fn name(self) -> &'static str {
        match self {
            Self::Hubspot => "/integrations/webhook/hubspot",
            Self::Zoho => "/integrations/webhook/zoho_crm",
            Self::Mailchimp => "/integrations/webhook/mailchimp",
        }
    }
}

pub(super) fn route_of(path: &str) -> Option<Route> {
    match path.strip_prefix(PREFIX)? {
        "hubspot" => Some(Route::Hubspot),
        "zoho_crm" => Some(Route::Zoho),
        rest => {
            let secret = rest.strip_prefix("mailchimp/")?;
            (!secret.is_empty()
                && secret.len() <= 128
                && secret.bytes().all(|b| b.is_ascii_alphanumeric()))
            .then_some(Route::Mailchimp)
        }
    }
}

pub(super) async fn deliver(
    state: &SidecarState,
    route: Route,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let method = request.method().clone();
    if route == Route::Mailchimp && matches!(method, Method::GET | Method::HEAD) {
        // Mailchimp checks the URL answers before it registers a webhook.
        return text(StatusCode::OK, "ok");
    }
    if method != Method::POST {
        return super::method_not_allowed("POST");
    }
    let path_and_query = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let headers = request.headers().clone();
    let body = match read_body(request, state.webhook_max_body_bytes).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let integrations = &state.integrations;
    let result = match route {
        Route::Hubspot => {
            integrations
                .hubspot_webhook(method.as_str(), &path_and_query, &headers, &body)
                .await
        }
        Route::Zoho => integrations.zoho_webhook(&body).await,
        Route::Mailchimp => {
            let secret = path_and_query
                .split('?')
                .next()
                .and_then(|p| p.strip_prefix(MAILCHIMP))
                .unwrap_or_default();
            integrations.mailchimp_webhook(secret, &body).await
        }
    };
    let outcome = match &result {
        Ok(intake) => intake.as_str(),
        Err(IntakeError::Refused(_) | IntakeError::NotConfigured) => "rejected",
        Err(IntakeError::Store(_)) => "failed",
    };
    metrics::counter!("integration_webhook_deliveries_total", "provider" => route.provider(), "outcome" => outcome)
        .increment(1);
    match result {
        Ok(Intake::Stored) => text(StatusCode::OK, "ok"),
        Ok(Intake::Duplicate) => text(StatusCode::OK, "duplicate"),
        Ok(Intake::Dropped) => text(StatusCode::OK, "ignored"),
        Err(IntakeError::NotConfigured) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "HubSpot webhooks are not configured on this server",
        ),
        Err(IntakeError::Refused(
            reason @ (Refusal::Unsigned | Refusal::Stale | Refusal::BadSignature),
        )) => {
            tracing::info!(provider = route.provider(), %reason, "provider webhook refused");
            text(StatusCode::UNAUTHORIZED, &reason.to_string())
        }
        Err(IntakeError::Refused(reason)) => {
            tracing::info!(provider = route.provider(), %reason, "provider webhook refused");
            text(StatusCode::BAD_REQUEST, &reason.to_string())
        }
        Err(IntakeError::Store(error)) => {
            tracing::error!(error = %crate::telemetry::error_chain(&error), "provider webhook cannot be stored; the provider will deliver it again");
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot store the delivery now; nothing was recorded, send it again later",
            )
        }
    }
}
