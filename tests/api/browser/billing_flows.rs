//! The billing page's main flow: FREE -> a checkout left unpaid -> checkout -> PRO -> PREMIUM
//! -> cancel -> resume.

use std::{sync::Arc, time::Duration};

use nexus_billing::grpc::proto::billing::Tier;

use super::{
    hosted_checkout::{HostedCheckout, spawn_courier},
    run_scenario, spawn_for_browser,
};
use crate::{
    fake_stripe::{FakeStripe, PRICE_PREMIUM},
    helpers::token,
    subscription_lifecycle::subscription,
};

crate::tests!(browser: [
    a_free_user_upgrades_through_checkout_changes_plan_cancels_and_resumes,
    a_newcomer_upgrades_and_cancels_in_the_sandbox_with_no_configuration,
]);

/// The first run: no payment settings at all, the sandbox on (as `cargo run` in development).
async fn a_newcomer_upgrades_and_cancels_in_the_sandbox_with_no_configuration() {
    let app = spawn_for_browser(&[("--payments-sandbox".to_string(), "on".to_string())]).await;
    let user = "browser-newcomer";
    run_scenario("sandbox-first-run", &app, &[("TOKEN", token(user))]).await;
    let sub = subscription(&app, user).await;
    assert_eq!(sub.tier, i32::from(Tier::Pro));
    assert!(sub.cancel_at_period_end, "cancelled in the portal");
    assert_eq!(app.count("invoices", "status = 'paid'").await, 1);
    assert_eq!(app.count("webhook_inbox", "state = 'done'").await, 4);
    app.stop().await;
}

/// Stripe's settings as owned pairs.
pub fn stripe_settings(stripe: &FakeStripe) -> Vec<(String, String)> {
    stripe
        .settings()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

async fn a_free_user_upgrades_through_checkout_changes_plan_cancels_and_resumes() {
    let stripe = Arc::new(FakeStripe::start().await);
    // Stripe answers in 100-500 ms.
    stripe.set_delay(Duration::from_millis(200));
    let (_checkout, outbox) = HostedCheckout::start(Arc::clone(&stripe)).await;
    let app = spawn_for_browser(&stripe_settings(&stripe)).await;
    // The webhooks land 1.5 s after the browser is back: the page has to wait for them.
    let courier = spawn_courier(
        outbox,
        app.http_url("/billing/webhook"),
        Duration::from_millis(1500),
    );
    let user = "browser-upgrader";

    run_scenario("billing-upgrade", &app, &[("TOKEN", token(user))]).await;

    // Two checkout sessions (one left unpaid), the plan change, then the cancel and the
    // resume, each reached Stripe once.
    assert_eq!(stripe.requests("POST", "/v1/checkout/sessions").len(), 2);
    let prices: Vec<String> = stripe
        .requests("POST", "/v1/subscriptions/")
        .iter()
        .filter_map(|r| r.form.get("items[0][price]").cloned())
        .collect();
    assert_eq!(prices, [PRICE_PREMIUM], "one plan change, to Premium");
    let changes: Vec<String> = stripe
        .requests("POST", "/v1/subscriptions/")
        .iter()
        // A plan change sends cancel_at_period_end=false with its price: only the others.
        .filter(|r| !r.form.contains_key("items[0][price]"))
        .filter_map(|r| r.form.get("cancel_at_period_end").cloned())
        .collect();
    assert_eq!(changes, ["true", "false"], "cancel then resume");
    let sub = subscription(&app, user).await;
    assert_eq!(sub.tier, i32::from(Tier::Premium));
    assert!(!sub.cancel_at_period_end);
    assert_eq!(app.count("invoices", "status = 'paid'").await, 1);
    courier.abort();
    app.stop().await;
}
