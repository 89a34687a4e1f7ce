//! Plan changes decided from Stripe's current state with no database transaction open across a
//! Stripe call; prices outside the plans; invoice and customer events beyond payments.

use std::time::Duration;

use chrono::Utc;
use nexus_billing::grpc::proto::billing::{
    CancelSubscriptionRequest, ChangePlanRequest, InvoiceStatus, ListInvoicesRequest,
    ResumeSubscriptionRequest, SubscriptionStatus, Tier,
};
use serde_json::json;

use crate::{
    fake_http::{HoldPoint, route},
    fake_stripe::{InvoiceSpec, PRICE_PRO, SubSpec},
    helpers::{Backend, TestApp, authed, token},
    subscription_lifecycle::{period, subscribe, subscription},
};

crate::on_both_backends!(
    a_cancel_scheduled_in_the_portal_is_resumable_before_its_webhook_lands,
    concurrent_changes_of_one_user_end_as_stripe_has_them,
    webhooks_for_a_user_apply_while_a_plan_change_waits_on_stripe,
    a_price_outside_the_plans_keeps_the_last_tier_and_is_flagged,
    voided_invoices_and_deleted_customers_are_applied,
);

async fn a_cancel_scheduled_in_the_portal_is_resumable_before_its_webhook_lands(backend: Backend) {
    let (app, stripe) = TestApp::spawn_with_stripe(backend).await;
    let user = "olga";
    let (_, sub_id) = subscribe(&app, &stripe, user, Tier::Pro).await;
    // Cancelled in Stripe's billing portal; the webhook has not arrived.
    stripe.patch_subscription(&sub_id, json!({ "cancel_at_period_end": true }));
    assert!(!subscription(&app, user).await.cancel_at_period_end);
    let resumed = app
        .billing()
        .await
        .resume_subscription(authed(ResumeSubscriptionRequest {}, &token(user)))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner()
        .subscription
        .unwrap_or_else(|| panic!("no subscription"));
    assert!(!resumed.cancel_at_period_end);
    let updates = stripe.requests("POST", &format!("/v1/subscriptions/{sub_id}"));
    assert_eq!(updates.len(), 1, "Stripe was asked to resume");
    assert_eq!(
        updates[0]
            .form
            .get("cancel_at_period_end")
            .map(String::as_str),
        Some("false")
    );
    assert_eq!(
        stripe
            .subscription(&sub_id)
            .map(|s| s["cancel_at_period_end"].clone()),
        Some(json!(false))
    );
    app.stop().await;
}

async fn concurrent_changes_of_one_user_end_as_stripe_has_them(backend: Backend) {
    let (app, stripe) = TestApp::spawn_with_stripe(backend).await;
    let user = "pia";
    let (_, sub_id) = subscribe(&app, &stripe, user, Tier::Pro).await;
    stripe.set_delay(Duration::from_millis(150));
    let billing = app.billing().await;
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..6 {
        let mut billing = billing.clone();
        calls.spawn(async move {
            let t = token("pia");
            match i % 3 {
                0 => billing
                    .change_plan(authed(
                        ChangePlanRequest {
                            tier: Tier::Premium.into(),
                            ..Default::default()
                        },
                        &t,
                    ))
                    .await
                    .map(|_| ()),
                1 => billing
                    .cancel_subscription(authed(CancelSubscriptionRequest {}, &t))
                    .await
                    .map(|_| ()),
                _ => billing
                    .change_plan(authed(
                        ChangePlanRequest {
                            tier: Tier::Pro.into(),
                            ..Default::default()
                        },
                        &t,
                    ))
                    .await
                    .map(|_| ()),
            }
        });
    }
    while let Some(done) = calls.join_next().await {
        done.unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("a change failed: {e}"));
    }
    let at_stripe = stripe
        .subscription(&sub_id)
        .unwrap_or_else(|| panic!("sub"));
    let stored = subscription(&app, user).await;
    let stripe_tier = if at_stripe["items"]["data"][0]["price"]["id"] == PRICE_PRO {
        Tier::Pro
    } else {
        Tier::Premium
    };
    assert_eq!(
        stored.tier,
        i32::from(stripe_tier),
        "stored tier = Stripe's"
    );
    assert_eq!(
        json!(stored.cancel_at_period_end),
        at_stripe["cancel_at_period_end"],
        "stored cancellation = Stripe's"
    );
    app.stop().await;
}

async fn webhooks_for_a_user_apply_while_a_plan_change_waits_on_stripe(backend: Backend) {
    let (app, stripe) = TestApp::spawn_with_stripe(backend).await;
    let user = "quinn";
    let (customer, sub_id) = subscribe(&app, &stripe, user, Tier::Pro).await;
    // Stripe has not answered the plan change (it has not even seen it) until released.
    let update = stripe.server.hold(
        HoldPoint::Arrival,
        route("POST", &format!("/v1/subscriptions/{sub_id}")),
    );
    let mut billing = app.billing().await;
    let change = tokio::spawn(async move {
        billing
            .change_plan(authed(
                ChangePlanRequest {
                    tier: Tier::Premium.into(),
                    ..Default::default()
                },
                &token("quinn"),
            ))
            .await
    });
    update.arrived(1).await;
    // The change is waiting on Stripe; the user's invoice event is applied meanwhile (no row
    // of the user is held by a transaction across the Stripe call).
    let paid = stripe.put_invoice(&InvoiceSpec {
        id: "in_quinn",
        customer: &customer,
        subscription: &sub_id,
        status: "paid",
        amount_due: 900,
        amount_paid: 900,
        created: Utc::now().timestamp(),
    });
    let (_, body) = stripe.event("invoice.paid", &paid);
    app.deliver_signed(&body).await;
    assert_eq!(
        app.count("invoices", "provider_invoice_id = 'in_quinn' AND status = 'paid'")
            .await,
        1,
        "the invoice event was applied while the change waited"
    );
    assert!(
        !change.is_finished(),
        "the change is still waiting on Stripe"
    );
    update.release();
    let changed = change
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(changed.into_inner().subscription.is_some());
    assert_eq!(
        subscription(&app, user).await.tier,
        i32::from(Tier::Premium)
    );
    app.stop().await;
}

async fn a_price_outside_the_plans_keeps_the_last_tier_and_is_flagged(backend: Backend) {
    let (app, stripe) = TestApp::spawn_with_stripe_and(
        backend,
        &[("--stripe-price-ids-premium", "price_premium_legacy")],
    )
    .await;
    let user = "rosa";
    let (customer, sub_id) = subscribe(&app, &stripe, user, Tier::Pro).await;
    let (start, end) = period();
    let spec = SubSpec {
        id: &sub_id,
        customer: &customer,
        price: "price_premium_legacy",
        status: "active",
        period_start: start,
        period_end: end,
        cancel_at_period_end: false,
    };
    // A second PREMIUM price (listed in STRIPE_PRICE_IDS_PREMIUM) is PREMIUM.
    let legacy = stripe.put_subscription(&spec);
    let t = Utc::now().timestamp() + 1;
    app.deliver_signed(
        &stripe
            .event_at("customer.subscription.updated", &legacy, t)
            .1,
    )
    .await;
    assert_eq!(
        subscription(&app, user).await.tier,
        i32::from(Tier::Premium)
    );
    // A price on no list: never silently FREE; the tier stays and support is told.
    let odd = stripe.put_subscription(&SubSpec {
        price: "price_someone_made_by_hand",
        status: "past_due",
        ..spec
    });
    app.deliver_signed(
        &stripe
            .event_at("customer.subscription.updated", &odd, t + 1)
            .1,
    )
    .await;
    let sub = subscription(&app, user).await;
    assert_eq!(sub.tier, i32::from(Tier::Premium));
    assert_eq!(sub.status, i32::from(SubscriptionStatus::PastDue));
    assert!(
        app.activity_kinds(user)
            .await
            .iter()
            .any(|k| k == "subscription.needs_attention")
    );
    app.stop().await;
}

async fn voided_invoices_and_deleted_customers_are_applied(backend: Backend) {
    let (app, stripe) = TestApp::spawn_with_stripe(backend).await;
    let user = "sven";
    let (customer, sub_id) = subscribe(&app, &stripe, user, Tier::Pro).await;
    let spec = InvoiceSpec {
        id: "in_sven",
        customer: &customer,
        subscription: &sub_id,
        status: "open",
        amount_due: 900,
        amount_paid: 0,
        created: Utc::now().timestamp(),
    };
    let open = stripe.put_invoice(&spec);
    let void = stripe.put_invoice(&InvoiceSpec {
        status: "void",
        ..spec
    });
    let t = Utc::now().timestamp();
    // Delivered out of order: the void (newer) first, then the open (older) one.
    app.deliver_signed(&stripe.event_at("invoice.voided", &void, t + 2).1)
        .await;
    app.deliver_signed(&stripe.event_at("invoice.finalized", &open, t + 1).1)
        .await;
    let invoices = app
        .billing()
        .await
        .list_invoices(authed(ListInvoicesRequest::default(), &token(user)))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner()
        .invoices;
    assert_eq!(invoices.len(), 1);
    assert_eq!(
        invoices[0].status,
        i32::from(InvoiceStatus::Void),
        "never back to open"
    );
    assert!(
        app.activity_kinds(user)
            .await
            .iter()
            .any(|k| k == "invoice.voided")
    );

    let (_, deleted) = stripe.event_at(
        "customer.deleted",
        &json!({ "id": customer, "object": "customer" }),
        t + 3,
    );
    app.deliver_signed(&deleted).await;
    assert_eq!(
        app.count("billing_customers", &format!("user_id = '{user}'"))
            .await,
        0,
        "the next checkout creates a new customer"
    );
    assert!(
        app.activity_kinds(user)
            .await
            .iter()
            .any(|k| k == "billing.customer_deleted")
    );
    app.stop().await;
}
