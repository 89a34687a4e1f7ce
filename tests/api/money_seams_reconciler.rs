//! The reconciler where it meets an outage and many replicas (issue 25, item 12). Each test
//! failed on the code before its fix.

use chrono::Utc;
use nexus_billing::grpc::proto::billing::Tier;
use serde_json::json;

use crate::{
    event_processing::run_cli,
    fake_stripe::{InvoiceSpec, PRICE_PRO, SubSpec},
    helpers::{Backend, TestApp},
    subscription_lifecycle::{period, subscribe},
};

crate::on_both_backends!(
    events_missed_hours_before_the_newest_delivery_are_brought_in,
    an_ended_subscription_is_checked_for_a_live_one_once,
);

/// The endpoint was down for three hours; the first delivery after it came through. The
/// reconciler listed only from an hour before the newest stored event, so the events of the
/// outage were never brought in.
async fn events_missed_hours_before_the_newest_delivery_are_brought_in(backend: Backend) {
    let (app, stripe) = TestApp::spawn_with_stripe(backend).await;
    let user = "outage-ana";
    let (customer, sub_id) = subscribe(&app, &stripe, user, Tier::Pro).await;
    // During the outage an invoice was paid; that event was never delivered.
    let three_hours_ago = Utc::now().timestamp() - 3 * 3600;
    let invoice = stripe.put_invoice(&InvoiceSpec {
        id: "in_outage",
        customer: &customer,
        subscription: &sub_id,
        status: "paid",
        amount_due: 1900,
        amount_paid: 1900,
        created: three_hours_ago,
    });
    let (_, lost) = stripe.event_at("invoice.paid", &invoice, three_hours_ago);
    stripe.publish(&lost);
    // Back up: an unrelated event is delivered first.
    let (_, other) = stripe.event("customer.updated", &json!({ "id": "cus_other", "object": "customer" }));
    stripe.publish(&other);
    app.deliver_signed(&other).await;
    let (ok, out) = run_cli(&app, &stripe, &["reconcile"]);
    assert!(ok, "{out}");
    app.settle().await;
    assert_eq!(
        app.count("invoices", "provider_invoice_id = 'in_outage'").await,
        1,
        "the payment during the outage was not brought in: {out}"
    );
    app.stop().await;
}

/// Every run of every replica listed the customer of every subscription that ended in the last
/// 30 days (up to 500 per run, oldest first), spending Stripe's rate limit again and again.
async fn an_ended_subscription_is_checked_for_a_live_one_once(backend: Backend) {
    let (app, stripe) = TestApp::spawn_with_stripe(backend).await;
    let user = "ended-bo";
    let (customer, sub_id) = subscribe(&app, &stripe, user, Tier::Pro).await;
    let ended = stripe.patch_subscription(&sub_id, json!({ "status": "canceled" }));
    let (_, body) = stripe.event("customer.subscription.deleted", &ended);
    app.deliver_signed(&body).await;
    let listings = || {
        stripe
            .requests("GET", "/v1/subscriptions")
            .iter()
            .filter(|r| r.path == "/v1/subscriptions")
            .count()
    };
    for _ in 0..2 {
        let (ok, out) = run_cli(&app, &stripe, &["reconcile"]);
        assert!(ok, "{out}");
    }
    assert_eq!(listings(), 1, "the ended subscription's customer was listed again");
    // A later ending of a new subscription is checked again, and a live one adopted.
    let (start, end) = period();
    stripe.put_subscription(&SubSpec {
        id: "sub_ended_bo_2",
        customer: &customer,
        price: PRICE_PRO,
        status: "active",
        period_start: start,
        period_end: end,
        cancel_at_period_end: false,
    });
    crate::exec!(
        &app.pool,
        "UPDATE subscriptions SET state_as_of = $1",
        Utc::now() + chrono::Duration::seconds(1)
    );
    let (ok, out) = run_cli(&app, &stripe, &["reconcile"]);
    assert!(ok, "{out}");
    assert_eq!(listings(), 2);
    assert!(out.contains("adopted 1"), "{out}");
    app.stop().await;
}
