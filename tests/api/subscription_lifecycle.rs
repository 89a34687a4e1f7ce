//! The whole subscription lifecycle through the API and signed webhooks, against the fake
//! Stripe: checkout, activation, plan change, cancellation and resumption, deletion, a failed
//! payment with its grace period, and recovery with an invoice row.

use chrono::{DateTime, Duration, Utc};
use nexus_billing::grpc::proto::billing::{
    CancelSubscriptionRequest, ChangePlanRequest, CheckLimitRequest, CreateCheckoutSessionRequest,
    GetSubscriptionRequest, InvoiceStatus, ListInvoicesRequest, Resource,
    ResumeSubscriptionRequest, Subscription, SubscriptionStatus, Tier,
};
use serde_json::json;

use crate::{
    exec,
    fake_stripe::{FakeStripe, InvoiceSpec, PRICE_PREMIUM, PRICE_PRO, SubSpec},
    helpers::{ALLOWED_ORIGIN, Backend, TestApp, authed, token},
};

crate::on_both_backends!(
    free_to_pro_to_premium_then_cancel_resume_and_deletion,
    failed_payment_keeps_the_tier_within_grace_then_recovers_with_an_invoice,
);

pub fn period() -> (i64, i64) {
    let now = Utc::now().timestamp();
    (now - 86_400, now + 29 * 86_400)
}

/// Checkout for `user` through the API, then the subscription appears at Stripe and its events
/// arrive. Returns (customer id, subscription id).
pub async fn subscribe(
    app: &TestApp,
    stripe: &FakeStripe,
    user: &str,
    tier: Tier,
) -> (String, String) {
    let session = app
        .billing()
        .await
        .create_checkout_session(authed(
            CreateCheckoutSessionRequest {
                tier: tier.into(),
                success_url: format!("{ALLOWED_ORIGIN}/billing/done"),
                cancel_url: format!("{ALLOWED_ORIGIN}/billing"),
                ..Default::default()
            },
            &token(user),
        ))
        .await
        .unwrap_or_else(|e| panic!("checkout: {e}"))
        .into_inner();
    assert!(session.url.starts_with("https://checkout.stripe.test/"));
    let customer = stripe
        .customer_of(user)
        .unwrap_or_else(|| panic!("no Stripe customer was created for {user}"));
    let sub_id = format!("sub_{}", uuid::Uuid::new_v4().simple());
    let (start, end) = period();
    let price = if tier == Tier::Premium {
        PRICE_PREMIUM
    } else {
        PRICE_PRO
    };
    let sub = stripe.put_subscription(&SubSpec {
        id: &sub_id,
        customer: &customer,
        price,
        status: "active",
        period_start: start,
        period_end: end,
        cancel_at_period_end: false,
    });
    let (_, completed) = stripe.event(
        "checkout.session.completed",
        &stripe.checkout_completed(user, &customer, &sub_id),
    );
    app.deliver_signed(&completed).await;
    let (_, created) = stripe.event("customer.subscription.created", &sub);
    app.deliver_signed(&created).await;
    (customer, sub_id)
}

pub async fn subscription(app: &TestApp, user: &str) -> Subscription {
    app.billing()
        .await
        .get_subscription(authed(GetSubscriptionRequest {}, &token(user)))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner()
        .subscription
        .unwrap_or_else(|| panic!("no subscription in the answer"))
}

fn time(ts: Option<prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    ts.and_then(|t| DateTime::from_timestamp(t.seconds, 0))
}

async fn cards_limit(app: &TestApp, user: &str) -> i64 {
    app.billing()
        .await
        .check_limit(authed(
            CheckLimitRequest {
                resource: Resource::Cards.into(),
                ..Default::default()
            },
            &token(user),
        ))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner()
        .limit
}

async fn free_to_pro_to_premium_then_cancel_resume_and_deletion(backend: Backend) {
    let (app, stripe) = TestApp::spawn_with_stripe(backend).await;
    let user = "alice";
    let free_cards = cards_limit(&app, user).await;
    assert_eq!(
        subscription(&app, user).await.effective_tier,
        i32::from(Tier::Free)
    );

    let (customer, sub_id) = subscribe(&app, &stripe, user, Tier::Pro).await;

    // What Stripe received: one customer carrying the user id, one subscription-mode session.
    let customers = stripe.requests("POST", "/v1/customers");
    assert_eq!(customers.len(), 1);
    assert_eq!(
        customers[0]
            .form
            .get("metadata[user_id]")
            .map(String::as_str),
        Some(user)
    );
    assert_eq!(
        customers[0].form.get("email").map(String::as_str),
        Some("alice@example.com")
    );
    let sessions = stripe.requests("POST", "/v1/checkout/sessions");
    assert_eq!(sessions.len(), 1);
    let form = &sessions[0].form;
    for (key, want) in [
        ("mode", "subscription"),
        ("customer", customer.as_str()),
        ("client_reference_id", user),
        ("line_items[0][price]", PRICE_PRO),
        ("line_items[0][quantity]", "1"),
        ("subscription_data[metadata][user_id]", user),
        ("success_url", &format!("{ALLOWED_ORIGIN}/billing/done")),
        ("cancel_url", &format!("{ALLOWED_ORIGIN}/billing")),
    ] {
        assert_eq!(form.get(key).map(String::as_str), Some(want), "{key}");
    }
    for post in stripe.received().iter().filter(|r| r.method == "POST") {
        assert!(
            post.idempotency_key.is_some(),
            "POST {} without Idempotency-Key",
            post.path
        );
    }

    let pro = subscription(&app, user).await;
    assert_eq!(pro.tier, i32::from(Tier::Pro));
    assert_eq!(pro.effective_tier, i32::from(Tier::Pro));
    assert_eq!(pro.status, i32::from(SubscriptionStatus::Active));
    let pro_cards = cards_limit(&app, user).await;
    assert!(
        pro_cards > free_cards || pro_cards == -1,
        "PRO limits apply"
    );

    // Upgrade: the same subscription's item gets the PREMIUM price, prorated.
    let mut billing = app.billing().await;
    let premium = billing
        .change_plan(authed(
            ChangePlanRequest {
                tier: Tier::Premium.into(),
                ..Default::default()
            },
            &token(user),
        ))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner()
        .subscription
        .unwrap_or_else(|| panic!("no subscription"));
    assert_eq!(premium.tier, i32::from(Tier::Premium));
    let updates = stripe.requests("POST", &format!("/v1/subscriptions/{sub_id}"));
    assert_eq!(updates.len(), 1);
    assert_eq!(
        updates[0].form.get("items[0][price]").map(String::as_str),
        Some(PRICE_PREMIUM)
    );
    assert_eq!(
        updates[0].form.get("items[0][id]").map(String::as_str),
        Some(format!("si_{sub_id}").as_str())
    );
    assert_eq!(
        updates[0]
            .form
            .get("proration_behavior")
            .map(String::as_str),
        Some("create_prorations")
    );
    assert_eq!(
        stripe.requests("POST", "/v1/checkout/sessions").len(),
        1,
        "no second checkout"
    );

    // Cancel: access ends at the period end, and the answer says when.
    let (_, period_end) = period();
    let canceling = billing
        .cancel_subscription(authed(CancelSubscriptionRequest {}, &token(user)))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner()
        .subscription
        .unwrap_or_else(|| panic!("no subscription"));
    assert!(canceling.cancel_at_period_end);
    let ends = time(canceling.access_ends_at).unwrap_or_else(|| panic!("no access_ends_at"));
    assert!(
        (ends.timestamp() - period_end).abs() < 5,
        "cancels on the period end"
    );
    assert_eq!(
        canceling.effective_tier,
        i32::from(Tier::Premium),
        "paid until then"
    );
    assert_eq!(
        stripe
            .subscription(&sub_id)
            .map(|s| s["cancel_at_period_end"].clone()),
        Some(json!(true))
    );

    let resumed = billing
        .resume_subscription(authed(ResumeSubscriptionRequest {}, &token(user)))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner()
        .subscription
        .unwrap_or_else(|| panic!("no subscription"));
    assert!(!resumed.cancel_at_period_end);
    assert!(resumed.access_ends_at.is_none());

    billing
        .cancel_subscription(authed(CancelSubscriptionRequest {}, &token(user)))
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    // Stripe ends it at the period end and sends the deletion.
    let deleted = stripe.patch_subscription(
        &sub_id,
        json!({ "status": "canceled", "ended_at": Utc::now().timestamp(), "canceled_at": Utc::now().timestamp() }),
    );
    let (_, body) = stripe.event("customer.subscription.deleted", &deleted);
    app.deliver_signed(&body).await;
    let ended = subscription(&app, user).await;
    assert_eq!(ended.status, i32::from(SubscriptionStatus::Canceled));
    assert_eq!(ended.effective_tier, i32::from(Tier::Free));
    assert_eq!(cards_limit(&app, user).await, free_cards);

    let kinds = app.activity_kinds(user).await;
    for kind in [
        "subscription.started",
        "subscription.plan_changed",
        "subscription.cancellation_scheduled",
        "subscription.resumed",
        "subscription.canceled",
    ] {
        assert!(
            kinds.iter().any(|k| k == kind),
            "activity {kind} missing from {kinds:?}"
        );
    }

    // Subscribing again reuses the Stripe customer.
    subscribe(&app, &stripe, user, Tier::Pro).await;
    assert_eq!(
        stripe.requests("POST", "/v1/customers").len(),
        1,
        "one customer per user"
    );
    assert_eq!(
        subscription(&app, user).await.effective_tier,
        i32::from(Tier::Pro)
    );
    app.stop().await;
}

async fn failed_payment_keeps_the_tier_within_grace_then_recovers_with_an_invoice(
    backend: Backend,
) {
    let (app, stripe) = TestApp::spawn_with_stripe(backend).await;
    let user = "bruno";
    let (customer, sub_id) = subscribe(&app, &stripe, user, Tier::Pro).await;
    let created = Utc::now().timestamp();
    let invoice = InvoiceSpec {
        id: "in_bruno_1",
        customer: &customer,
        subscription: &sub_id,
        status: "open",
        amount_due: 900,
        amount_paid: 0,
        created,
    };
    let open = stripe.put_invoice(&invoice);
    // Stripe tells the subscription's news in its own event, not in the invoice's.
    let past_due = stripe.patch_subscription(&sub_id, json!({ "status": "past_due" }));
    let (_, failed) = stripe.event("invoice.payment_failed", &open);
    app.deliver_signed(&failed).await;
    let (_, updated) = stripe.event("customer.subscription.updated", &past_due);
    app.deliver_signed(&updated).await;

    let sub = subscription(&app, user).await;
    assert_eq!(sub.status, i32::from(SubscriptionStatus::PastDue));
    assert_eq!(
        sub.effective_tier,
        i32::from(Tier::Pro),
        "still entitled within grace"
    );

    // Eight days later (the first failure moved back), the grace period is over.
    exec!(
        &app.pool,
        "UPDATE subscriptions SET past_due_since = $1 WHERE user_id = $2",
        Utc::now() - Duration::days(8),
        user
    );
    let sub = subscription(&app, user).await;
    assert_eq!(sub.status, i32::from(SubscriptionStatus::PastDue));
    assert_eq!(
        sub.effective_tier,
        i32::from(Tier::Free),
        "FREE after the grace period"
    );

    // The retry succeeds.
    let paid = stripe.put_invoice(&InvoiceSpec {
        status: "paid",
        amount_paid: 900,
        ..invoice
    });
    let active = stripe.patch_subscription(&sub_id, json!({ "status": "active" }));
    let (_, paid_event) = stripe.event("invoice.paid", &paid);
    app.deliver_signed(&paid_event).await;
    let (_, succeeded_event) = stripe.event("invoice.payment_succeeded", &paid);
    app.deliver_signed(&succeeded_event).await;
    let (_, updated) = stripe.event("customer.subscription.updated", &active);
    app.deliver_signed(&updated).await;

    let sub = subscription(&app, user).await;
    assert_eq!(sub.status, i32::from(SubscriptionStatus::Active));
    assert_eq!(sub.effective_tier, i32::from(Tier::Pro));

    let invoices = app
        .billing()
        .await
        .list_invoices(authed(ListInvoicesRequest::default(), &token(user)))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner()
        .invoices;
    assert_eq!(invoices.len(), 1, "one row per Stripe invoice");
    let row = &invoices[0];
    assert_eq!(row.provider_invoice_id, "in_bruno_1");
    assert_eq!(row.status, i32::from(InvoiceStatus::Paid));
    assert_eq!(row.amount_paid.as_ref().map(|m| m.amount_minor), Some(900));
    assert_eq!(
        row.amount_due.as_ref().map(|m| m.currency.as_str()),
        Some("USD")
    );
    assert_eq!(
        row.hosted_invoice_url,
        "https://invoice.stripe.test/i/in_bruno_1"
    );
    assert_eq!(
        row.invoice_pdf_url,
        "https://pay.stripe.test/invoice/in_bruno_1/pdf"
    );

    let kinds = app.activity_kinds(user).await;
    let count = |kind: &str| kinds.iter().filter(|k| *k == kind).count();
    assert_eq!(count("payment.failed"), 1);
    assert_eq!(count("subscription.past_due"), 1);
    assert_eq!(count("subscription.reactivated"), 1);
    assert_eq!(
        count("payment.succeeded"),
        1,
        "invoice.paid + payment_succeeded log one payment"
    );
    app.stop().await;
}
