//! Stripe's hosted checkout page, faked for the browser: `GET /c/pay/{session}` shows what is
//! bought and a "Pay" button; paying creates the subscription and its first invoice at the fake
//! Stripe, sends the browser to the session's success URL, and hands the events a real Stripe
//! would send to a courier that delivers them signed, a moment later (as Stripe does: the
//! redirect usually wins the race).

use std::{sync::Arc, time::Duration};

use serde_json::json;
use tokio::sync::mpsc;
use crate::fake_http::{FakeServer, Request, Respond, ResponseTemplate};

use crate::fake_stripe::{FakeStripe, InvoiceSpec, PRICE_PREMIUM, SubSpec, sign_now};

/// The hosted checkout page server (pages are served while it lives).
pub struct HostedCheckout {
    /// Serves while this value lives.
    _server: FakeServer,
}

impl HostedCheckout {
    /// Serves the page for sessions of `stripe` (whose session URLs it points here) and returns
    /// the receiving end of the events "Pay" produces.
    pub async fn start(
        stripe: Arc<FakeStripe>,
    ) -> (
        Self,
        mpsc::UnboundedReceiver<(tokio::time::Instant, String)>,
    ) {
        let (events, outbox) = mpsc::unbounded_channel();
        let server = FakeServer::start(Page {
            stripe: Arc::clone(&stripe),
            events,
        })
        .await;
        stripe.set_checkout_base(&server.uri());
        (Self { _server: server }, outbox)
    }
}

/// Delivers every event from `outbox` to the service's webhook route, signed, `delay` after it
/// was produced, in order; fails the test on a refused delivery.
pub fn spawn_courier(
    mut outbox: mpsc::UnboundedReceiver<(tokio::time::Instant, String)>,
    webhook_url: String,
    delay: Duration,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let client = reqwest::Client::new();
        let mut delivered = 0;
        while let Some((produced, body)) = outbox.recv().await {
            tokio::time::sleep_until(produced + delay).await;
            let response = client
                .post(&webhook_url)
                .header("content-type", "application/json")
                .header("stripe-signature", sign_now(&body))
                .body(body)
                .send()
                .await
                .unwrap_or_else(|e| panic!("webhook delivery: {e}"));
            assert!(
                response.status().is_success(),
                "webhook refused: {}",
                response.status()
            );
            delivered += 1;
        }
        delivered
    })
}

struct Page {
    stripe: Arc<FakeStripe>,
    events: mpsc::UnboundedSender<(tokio::time::Instant, String)>,
}

impl Respond for Page {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let path = request.url.path().to_string();
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (request.method.as_str(), segments.as_slice()) {
            ("GET", ["c", "pay", id]) => self.show(id),
            ("POST", ["c", "pay", id, "pay"]) => self.pay(id),
            _ => ResponseTemplate::new(404).set_body_string("no such checkout page"),
        }
    }
}

impl Page {
    fn show(&self, id: &str) -> ResponseTemplate {
        let Some((session, form)) = self.stripe.checkout_session(id) else {
            return ResponseTemplate::new(404)
                .set_body_string("this checkout session does not exist");
        };
        let back = session["cancel_url"].as_str().unwrap_or("/").to_string();
        let price = form
            .get("line_items[0][price]")
            .cloned()
            .unwrap_or_default();
        let (plan, amount) = if price == PRICE_PREMIUM {
            ("Premium", "$29.00")
        } else {
            ("Pro", "$9.00")
        };
        let html = format!(
            "<!doctype html><html lang=\"en\"><head><title>Pay Nexus Cards</title></head><body>\
             <h1>Subscribe to Nexus Cards {plan}</h1><p>{amount} per month</p>\
             <form method=\"post\" action=\"/c/pay/{id}/pay\"><button type=\"submit\">Pay {amount}</button></form>\
             <p><a href=\"{back}\">Cancel and return to Nexus Cards</a></p>\
             </body></html>"
        );
        ResponseTemplate::new(200).set_body_raw(html, "text/html; charset=utf-8")
    }

    fn pay(&self, id: &str) -> ResponseTemplate {
        let Some((session, form)) = self.stripe.checkout_session(id) else {
            return ResponseTemplate::new(404)
                .set_body_string("this checkout session does not exist");
        };
        let get = |k: &str| form.get(k).cloned().unwrap_or_default();
        let (user, customer, price) = (
            get("client_reference_id"),
            get("customer"),
            get("line_items[0][price]"),
        );
        let now = chrono::Utc::now().timestamp();
        let sub_id = format!("sub_{}", uuid::Uuid::new_v4().simple());
        let sub = self.stripe.put_subscription(&SubSpec {
            id: &sub_id,
            customer: &customer,
            price: &price,
            status: "active",
            period_start: now,
            period_end: now + 30 * 86_400,
            cancel_at_period_end: false,
        });
        let invoice_id = format!("in_{}", uuid::Uuid::new_v4().simple());
        let amount = if price == PRICE_PREMIUM { 2900 } else { 900 };
        let invoice = self.stripe.put_invoice(&InvoiceSpec {
            id: &invoice_id,
            customer: &customer,
            subscription: &sub_id,
            status: "paid",
            amount_due: amount,
            amount_paid: amount,
            created: now,
        });
        let mut completed = self.stripe.checkout_completed(&user, &customer, &sub_id);
        completed["id"] = json!(id);
        for (kind, object) in [
            ("checkout.session.completed", &completed),
            ("customer.subscription.created", &sub),
            ("invoice.paid", &invoice),
        ] {
            let (_, body) = self.stripe.event(kind, object);
            let _ = self.events.send((tokio::time::Instant::now(), body));
        }
        let success = session["success_url"].as_str().unwrap_or("/").to_string();
        ResponseTemplate::new(303).insert_header("location", success.as_str())
    }
}
