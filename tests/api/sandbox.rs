//! The development payments sandbox: with no provider configured, a newcomer upgrades to PRO on
//! the service's own "test mode" checkout page, sees the invoice, and cancels in its portal;
//! every step goes through the real Stripe gateway, signed events, the inbox and the processor.
//! Beside a real provider it is off.

use nexus_billing::grpc::proto::billing::{
    CreateCheckoutSessionRequest, CreateCheckoutSessionResponse, CreatePortalSessionRequest, InvoiceStatus, ListInvoicesRequest,
    ListPlansRequest, PaymentProvider, SubscriptionStatus, Tier,
};

use crate::{
    helpers::{ALLOWED_ORIGIN, Backend, TestApp, authed, token, wait_for},
    subscription_lifecycle::subscription,
};

crate::on_both_backends!(
    a_newcomer_upgrades_in_the_sandbox_sees_the_invoice_and_cancels,
    the_sandbox_is_off_beside_a_real_provider,
);

fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A PRO checkout for `user`, returning to the allowed origin.
async fn pro_checkout(app: &TestApp, user: &str) -> CreateCheckoutSessionResponse {
    app.billing()
        .await
        .create_checkout_session(authed(
            CreateCheckoutSessionRequest {
                tier: Tier::Pro.into(),
                success_url: format!("{ALLOWED_ORIGIN}/billing/done"),
                cancel_url: format!("{ALLOWED_ORIGIN}/billing"),
                ..Default::default()
            },
            &token(user),
        ))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner()
}

/// POSTs a sandbox button as the page's own form would.
async fn press(url: &str, same_origin: bool) -> (u16, String) {
    let mut request = browser().post(url);
    if same_origin {
        request = request.header("sec-fetch-site", "same-origin");
    }
    let response = request.send().await.unwrap_or_else(|e| panic!("{e}"));
    let location = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (response.status().as_u16(), location)
}

async fn page(url: &str) -> String {
    browser()
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .text()
        .await
        .unwrap_or_default()
}

async fn a_newcomer_upgrades_in_the_sandbox_sees_the_invoice_and_cancels(backend: Backend) {
    let app = TestApp::spawn_with(backend, &[("--payments-sandbox", "on")]).await;
    let user = "newcomer";
    let config = page(&app.http_url("/dashboard/config.json")).await;
    assert!(config.contains("\"sandbox\":true"), "{config}");
    // The plans are priced (list prices, monthly and yearly).
    let plans = app
        .billing()
        .await
        .list_plans(authed(ListPlansRequest::default(), &token(user)))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner();
    let pro = plans.plans.iter().find(|p| p.tier == i32::from(Tier::Pro));
    assert_eq!(pro.map(|p| p.prices.len()), Some(2));

    let session = pro_checkout(&app, user).await;
    assert_eq!(session.provider, i32::from(PaymentProvider::Stripe));
    // The page is on the dashboard's origin (this sidecar).
    let base = format!("http://localhost:{}", app.http_addr.port());
    assert!(
        session.url.starts_with(&format!("{base}/sandbox/checkout/")),
        "{} is not on {base}",
        session.url
    );
    let checkout = page(&session.url).await;
    assert!(checkout.contains("Test mode, no money moves"), "{checkout}");
    assert!(checkout.contains("Pay 9.00 USD"), "{checkout}");

    // Another site cannot press Pay.
    assert_eq!(press(&format!("{}/pay", session.url), false).await.0, 403);
    let (status, location) = press(&format!("{}/pay", session.url), true).await;
    assert_eq!((status, location.as_str()), (303, format!("{ALLOWED_ORIGIN}/billing/done").as_str()));
    let sub = wait_for("the sandbox subscription is applied", || async {
        let s = subscription(&app, user).await;
        (s.tier == i32::from(Tier::Pro) && s.status == i32::from(SubscriptionStatus::Active))
            .then_some(s)
    })
    .await;
    assert_eq!(sub.effective_tier, i32::from(Tier::Pro));
    // Paying twice is refused.
    assert_eq!(press(&format!("{}/pay", session.url), true).await.0, 409);

    // The invoice is there, paid.
    let invoices = wait_for("the invoice is listed", || async {
        let list = app
            .billing()
            .await
            .list_invoices(authed(ListInvoicesRequest::default(), &token(user)))
            .await
            .ok()?
            .into_inner()
            .invoices;
        (!list.is_empty()).then_some(list)
    })
    .await;
    assert_eq!(invoices.len(), 1);
    assert_eq!(invoices[0].status, i32::from(InvoiceStatus::Paid));
    assert_eq!(invoices[0].amount_paid.as_ref().map(|m| m.amount_minor), Some(900));

    // The portal cancels at the period end.
    let portal = app
        .billing()
        .await
        .create_portal_session(authed(
            CreatePortalSessionRequest {
                return_url: format!("{ALLOWED_ORIGIN}/billing"),
            },
            &token(user),
        ))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner();
    assert!(portal.url.starts_with(&format!("{base}/sandbox/portal/")));
    let before = page(&portal.url).await;
    assert!(before.contains("Cancel subscription"), "{before}");
    let (status, _) = press(&format!("{}/cancel", portal.url), true).await;
    assert_eq!(status, 303);
    let cancelled = wait_for("the cancellation is applied", || async {
        let s = subscription(&app, user).await;
        s.cancel_at_period_end.then_some(s)
    })
    .await;
    assert!(cancelled.access_ends_at.is_some());
    assert_eq!(cancelled.effective_tier, i32::from(Tier::Pro), "paid until the period end");
    assert!(page(&portal.url).await.contains("Resume subscription"));
    app.stop().await;
}

async fn the_sandbox_is_off_beside_a_real_provider(backend: Backend) {
    let (app, stripe) =
        TestApp::spawn_with_stripe_and(backend, &[("--payments-sandbox", "on")]).await;
    let config = page(&app.http_url("/dashboard/config.json")).await;
    assert!(config.contains("\"sandbox\":false"), "{config}");
    let status = browser()
        .get(app.http_url("/sandbox/checkout/cs_anything"))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or_default();
    assert_eq!(status, 404);
    let session = pro_checkout(&app, "real").await;
    assert!(session.url.starts_with("https://checkout.stripe.test/"));
    assert_eq!(stripe.requests("POST", "/v1/checkout/sessions").len(), 1);
    app.stop().await;
}
