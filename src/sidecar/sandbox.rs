//! The development sandbox's routes (only when `config::Config::sandbox` is on):
//! - `/sandbox/stripe/v1/...`: the sandbox's Stripe API, which the Stripe gateway calls;
//! - `/sandbox/checkout/{id}`: the checkout page, "test mode, no money moves", with Pay and
//!   Cancel; Pay signs the events Stripe would send and hands them to the same webhook intake;
//! - `/sandbox/portal/{id}`: the billing portal, to cancel at the period end or resume;
//! - `/sandbox/invoice/{id}`: an invoice's page.
//!
//! The page buttons are POSTs that must come from the page itself (`Sec-Fetch-Site:
//! same-origin`): another site cannot make a browser pay or cancel.

use std::collections::HashMap;

use bytes::Bytes;
use chrono::Utc;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;

use super::{SidecarState, read_body, text};
use crate::{
    domain::{invoice::format_amount, subscription::PaymentProvider},
    payments::sandbox::{Sandbox, SignedEvents},
};

/// Where the sandbox's Stripe API is, under the sidecar.
pub const API_PREFIX: &str = "/sandbox/stripe/";

/// Whether `path` is the sandbox's to answer.
pub fn owns(path: &str) -> bool {
    path.starts_with("/sandbox/")
}

pub(super) async fn route(
    state: &SidecarState,
    sandbox: &Sandbox,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_string();
    let method = request.method().clone();
    if let Some(api_path) = path.strip_prefix(API_PREFIX.trim_end_matches('/')) {
        return api(sandbox, request, api_path.to_string()).await;
    }
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        (Method::GET, ["sandbox", "checkout", id]) => checkout_page(sandbox, id),
        (Method::POST, ["sandbox", "checkout", id, action]) => {
            if !same_origin(request.headers()) {
                return text(
                    StatusCode::FORBIDDEN,
                    "sandbox actions come from its own pages",
                );
            }
            match *action {
                "pay" => pay(state, sandbox, id).await,
                "cancel" => match sandbox.checkout(id) {
                    Ok(page) => redirect(&page.cancel_url),
                    Err(e) => text(StatusCode::NOT_FOUND, &e.to_string()),
                },
                _ => text(StatusCode::NOT_FOUND, "not found"),
            }
        }
        (Method::GET, ["sandbox", "portal", id]) => portal_page(sandbox, id),
        (Method::POST, ["sandbox", "portal", id, action @ ("cancel" | "resume")]) => {
            if !same_origin(request.headers()) {
                return text(
                    StatusCode::FORBIDDEN,
                    "sandbox actions come from its own pages",
                );
            }
            match sandbox.set_cancel(id, *action == "cancel", Utc::now()) {
                Ok(events) => match deliver(state, events).await {
                    Ok(()) => redirect(&format!("/sandbox/portal/{id}")),
                    Err(response) => response,
                },
                Err(e) => text(StatusCode::CONFLICT, &e.to_string()),
            }
        }
        (Method::GET, ["sandbox", "invoice", id]) => page(
            "Invoice",
            &format!(
                "<p>Invoice <code>{}</code>: paid in the sandbox. No money moved.</p>",
                escape(id)
            ),
        ),
        _ => text(StatusCode::NOT_FOUND, "not found"),
    }
}

/// The Stripe API: form body (or query) in, JSON out.
async fn api(sandbox: &Sandbox, request: Request<Incoming>, path: String) -> Response<Full<Bytes>> {
    let method = request.method().to_string();
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (authorization, key) = (header("authorization"), header("idempotency-key"));
    let mut form: HashMap<String, String> = request
        .uri()
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let body = match read_body(request, 256 * 1024).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    form.extend(url::form_urlencoded::parse(&body).into_owned());
    let (status, answer) = sandbox.api(
        &method,
        &path,
        authorization.as_deref(),
        key.as_deref(),
        &form,
    );
    let mut response = Response::new(Full::new(Bytes::from(answer.to_string())));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    // Stripe's clock is this host's.
    if let Ok(date) =
        HeaderValue::from_str(&Utc::now().format("%a, %d %b %Y %H:%M:%S GMT").to_string())
    {
        response.headers_mut().insert(header::DATE, date);
    }
    response
}

async fn pay(state: &SidecarState, sandbox: &Sandbox, id: &str) -> Response<Full<Bytes>> {
    match sandbox.pay(id, Utc::now()) {
        Ok((events, success)) => match deliver(state, events).await {
            Ok(()) => redirect(&success),
            Err(response) => response,
        },
        Err(e) => text(StatusCode::CONFLICT, &e.to_string()),
    }
}

/// Hands signed events to the webhook intake, as Stripe's deliveries would arrive.
async fn deliver(state: &SidecarState, events: SignedEvents) -> Result<(), Response<Full<Bytes>>> {
    for (signature, body) in events {
        let mut headers = HeaderMap::new();
        let value = HeaderValue::from_str(&signature)
            .map_err(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "bad signature header"))?;
        headers.insert("stripe-signature", value);
        if let Err(e) = state
            .billing
            .webhook(PaymentProvider::Stripe, &headers, body.as_bytes())
            .await
        {
            tracing::warn!(error = %e, "the sandbox's event was not taken in");
            return Err(text(
                StatusCode::SERVICE_UNAVAILABLE,
                "the payment could not be recorded; try again",
            ));
        }
    }
    Ok(())
}

fn same_origin(headers: &HeaderMap) -> bool {
    headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) == Some("same-origin")
}

fn checkout_page(sandbox: &Sandbox, id: &str) -> Response<Full<Bytes>> {
    let checkout = match sandbox.checkout(id) {
        Ok(checkout) => checkout,
        Err(e) => return text(StatusCode::NOT_FOUND, &e.to_string()),
    };
    let amount = format_amount(checkout.amount_minor, "usd");
    let trial = checkout
        .trial_days
        .map(|d| format!("<p>Starts with a {d}-day free trial.</p>"))
        .unwrap_or_default();
    let body = if checkout.status == "open" {
        format!(
            "<h2>{} plan, {}</h2><p class=\"price\">{amount} per {}</p>{trial}\
             <form method=\"post\" action=\"/sandbox/checkout/{id}/pay\">\
             <button type=\"submit\" id=\"sandbox-pay\">Pay {amount}</button></form>\
             <form method=\"post\" action=\"/sandbox/checkout/{id}/cancel\">\
             <button type=\"submit\" id=\"sandbox-cancel\" class=\"secondary\">Cancel</button></form>",
            checkout.tier,
            checkout.interval,
            checkout.interval.as_str(),
            id = escape(id),
        )
    } else {
        format!("<p>This checkout is {}.</p>", escape(&checkout.status))
    };
    page("Checkout", &body)
}

fn portal_page(sandbox: &Sandbox, id: &str) -> Response<Full<Bytes>> {
    let (subscriptions, return_url) = match sandbox.portal(id) {
        Ok(found) => found,
        Err(e) => return text(StatusCode::NOT_FOUND, &e.to_string()),
    };
    let mut body = String::new();
    match subscriptions.first() {
        None => body.push_str("<p>No subscription.</p>"),
        Some(sub) => {
            let cancelling = sub["cancel_at_period_end"].as_bool().unwrap_or(false);
            let (action, label) = if cancelling {
                ("resume", "Resume subscription")
            } else {
                ("cancel", "Cancel subscription")
            };
            body.push_str(&format!(
                "<p>Subscription <code>{}</code>: {}{}</p>\
                 <form method=\"post\" action=\"/sandbox/portal/{}/{action}\">\
                 <button type=\"submit\" id=\"sandbox-{action}\">{label}</button></form>",
                escape(sub["id"].as_str().unwrap_or_default()),
                escape(sub["status"].as_str().unwrap_or_default()),
                if cancelling {
                    ", ends at the period end"
                } else {
                    ""
                },
                escape(id),
            ));
        }
    }
    if return_url.starts_with("http://") || return_url.starts_with("https://") {
        body.push_str(&format!(
            "<p><a id=\"sandbox-return\" href=\"{}\">Return</a></p>",
            escape(&return_url)
        ));
    }
    page("Billing portal", &body)
}

fn page(title: &str, body: &str) -> Response<Full<Bytes>> {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} (sandbox)</title><style>\
         body{{font-family:sans-serif;max-width:32rem;margin:2rem auto;padding:0 1rem}}\
         .banner{{background:#fff3cd;border:1px solid #e0c36c;padding:.5rem 1rem;border-radius:6px}}\
         button{{font-size:1rem;padding:.5rem 1rem;margin:.25rem 0}}\
         .secondary{{background:none}}</style></head><body>\
         <p class=\"banner\" id=\"sandbox-banner\"><strong>Test mode, no money moves.</strong> \
         This is the Nexus Cards payments sandbox.</p><h1>{title}</h1>{body}</body></html>"
    );
    let mut response = Response::new(Full::new(Bytes::from(html)));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; form-action 'self' http: https:; frame-ancestors 'none'"),
    );
    response
}

fn redirect(to: &str) -> Response<Full<Bytes>> {
    let mut response = text(StatusCode::SEE_OTHER, "see other");
    if let Ok(location) = HeaderValue::from_str(to) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

fn escape(value: &str) -> String {
    value
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
