//! The Stripe webhook: signatures, exactly-once processing, order independence with few Stripe
//! calls, and what the intake answers when the database cannot store an event.

use chrono::Utc;
use nexus_billing::grpc::proto::billing::{SubscriptionStatus, Tier};
use serde_json::{Value, json};

use crate::{
    exec,
    fake_stripe::{FakeStripe, InvoiceSpec, WEBHOOK_SECRET, sign_now, signature},
    helpers::{Backend, TestApp},
    subscription_lifecycle::{subscribe, subscription},
};

crate::on_both_backends!(
    signatures_are_checked_over_the_raw_body,
    rotated_secrets_are_all_accepted,
    fifty_concurrent_deliveries_of_one_event_apply_once,
    any_delivery_order_ends_in_the_same_state,
    a_late_stale_event_cannot_move_state_backwards,
    a_database_failure_answers_503_records_nothing_and_the_redelivery_succeeds,
    events_for_unknown_customers_and_unhandled_types_are_recorded_and_acknowledged,
    a_second_live_subscription_is_not_applied_and_is_flagged,
    a_completed_checkout_links_an_unknown_customer_but_never_moves_a_known_one,
);

async fn inbox(app: &TestApp) -> i64 {
    app.count("webhook_inbox", "").await
}

async fn signatures_are_checked_over_the_raw_body(backend: Backend) {
    let (app, stripe) = TestApp::spawn_with_stripe(backend).await;
    let (_, body) = stripe.event(
        "plan.created",
        &json!({ "id": "price_x", "object": "plan" }),
    );
    let now = Utc::now().timestamp();

    let (status, _) = app.deliver(&body, None).await;
    assert_eq!(status, 400, "missing header");
    let (status, _) = app
        .deliver(&body, Some(&signature(&body, now, &["whsec_wrong"])))
        .await;
    assert_eq!(status, 400, "wrong secret");
    let tampered = body.replace("price_x", "price_y");
    let (status, _) = app.deliver(&tampered, Some(&sign_now(&body))).await;
    assert_eq!(status, 400, "tampered body");
    let (status, text) = app
        .deliver(&body, Some(&signature(&body, now - 301, &[WEBHOOK_SECRET])))
        .await;
    assert_eq!(status, 400, "expired timestamp");
    assert!(text.contains("tolerance"), "{text}");
    // Re-serialised JSON (same meaning, other bytes) is not what was signed.
    let reserialised = serde_json::to_string_pretty(
        &serde_json::from_str::<Value>(&body).unwrap_or_else(|e| panic!("{e}")),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let (status, _) = app.deliver(&reserialised, Some(&sign_now(&body))).await;
    assert_eq!(status, 400, "re-serialised body");
    assert_eq!(
        inbox(&app).await,
        0,
        "nothing stored for a refused delivery"
    );

    // Several v1 values, one of them valid.
    let header = signature(&body, now, &["whsec_other", WEBHOOK_SECRET, "whsec_third"]);
    let (status, text) = app.deliver(&body, Some(&header)).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(inbox(&app).await, 1);
    app.stop().await;
}

async fn rotated_secrets_are_all_accepted(backend: Backend) {
    let secrets = format!("whsec_new_one,{WEBHOOK_SECRET}");
    let (app, stripe) = TestApp::spawn_with_stripe_and(
        backend,
        &[
            ("--stripe-webhook-secret", &secrets),
            ("--stripe-webhook-tolerance-secs", "60"),
        ],
    )
    .await;
    let now = Utc::now().timestamp();
    for secret in ["whsec_new_one", WEBHOOK_SECRET] {
        let (_, body) = stripe.event("plan.created", &json!({ "id": "price_x" }));
        let (status, text) = app
            .deliver(&body, Some(&signature(&body, now, &[secret])))
            .await;
        assert_eq!(status, 200, "{secret}: {text}");
    }
    // The configured tolerance (60 s) applies.
    let (_, body) = stripe.event("plan.created", &json!({ "id": "price_x" }));
    let (status, _) = app
        .deliver(&body, Some(&signature(&body, now - 90, &[WEBHOOK_SECRET])))
        .await;
    assert_eq!(status, 400);
    assert_eq!(inbox(&app).await, 2);
    app.stop().await;
}

async fn fifty_concurrent_deliveries_of_one_event_apply_once(backend: Backend) {
    let (app, stripe) = TestApp::spawn_with_stripe(backend).await;
    let user = "carla";
    let (customer, sub_id) = subscribe(&app, &stripe, user, Tier::Pro).await;
    let paid = stripe.put_invoice(&InvoiceSpec {
        id: "in_carla",
        customer: &customer,
        subscription: &sub_id,
        status: "paid",
        amount_due: 900,
        amount_paid: 900,
        created: Utc::now().timestamp(),
    });
    let activity_before = app.count("activity_logs", "").await;
    let fetches_before = stripe.requests("GET", "/v1/invoices/").len();
    let (event_id, body) = stripe.event("invoice.paid", &paid);
    let signature = sign_now(&body);

    let url = app.http_url("/billing/webhook");
    let client = reqwest::Client::new();
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(50));
    let mut deliveries = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let request = client
            .post(&url)
            .header("stripe-signature", &signature)
            .body(body.clone());
        let start = std::sync::Arc::clone(&start);
        deliveries.spawn(async move {
            start.wait().await;
            let response = request.send().await.unwrap_or_else(|e| panic!("{e}"));
            response.status().as_u16()
        });
    }
    while let Some(status) = deliveries.join_next().await {
        assert_eq!(status.unwrap_or_else(|e| panic!("{e}")), 200);
    }
    app.settle().await;
    assert_eq!(
        app.count("invoices", "").await,
        1,
        "exactly one invoice row"
    );
    assert_eq!(
        app.count("activity_logs", "").await - activity_before,
        1,
        "exactly one activity entry"
    );
    assert_eq!(
        app.count("webhook_inbox", &format!("event_id = '{event_id}'"))
            .await,
        1
    );
    assert_eq!(
        stripe.requests("GET", "/v1/invoices/").len() - fetches_before,
        0,
        "the event's own snapshot was applied: no Stripe call"
    );
    app.stop().await;
}

/// Deterministic permutations of `0..n`: identity, reversed, and seeded shuffles.
fn orders(n: usize, shuffles: u64) -> Vec<Vec<usize>> {
    let mut out = vec![(0..n).collect::<Vec<_>>(), (0..n).rev().collect()];
    for seed in 1..=shuffles {
        let mut order: Vec<usize> = (0..n).collect();
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        for i in (1..n).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let j = usize::try_from(state % (i as u64 + 1)).unwrap_or(0);
            order.swap(i, j);
        }
        out.push(order);
    }
    out
}

/// The final state a user ends in, as the API reports it, and the money entries of the
/// activity log. (The subscription entries tell the transitions this service saw, which
/// depend on the order: a fetch sees the newest state at once, snapshots step through it.)
async fn final_state(app: &TestApp, user: &str) -> (i32, i32, i32, bool, i64, Vec<String>) {
    let sub = subscription(app, user).await;
    let invoices = app
        .count(
            "invoices",
            &format!("user_id = '{user}' AND status = 'paid'"),
        )
        .await;
    let mut kinds = app.activity_kinds(user).await;
    kinds.retain(|k| {
        k.starts_with("payment.") || k.ends_with("canceled") || k.ends_with("needs_attention")
    });
    kinds.sort();
    (
        sub.tier,
        sub.status,
        sub.effective_tier,
        sub.cancel_at_period_end,
        invoices,
        kinds,
    )
}

async fn any_delivery_order_ends_in_the_same_state(backend: Backend) {
    let (app, stripe) = TestApp::spawn_with_stripe(backend).await;
    let mut states = Vec::new();
    let reads_at_start = stripe
        .received()
        .iter()
        .filter(|r| r.method == "GET")
        .count();
    let runs = orders(6, 8).len();
    for (run, order) in orders(6, 8).into_iter().enumerate() {
        let user = format!("order{run}");
        // The checkout happens through the API (the customer now exists at Stripe); then the
        // subscription goes incomplete -> active -> PREMIUM, one invoice is paid.
        let (customer, sub_id) = checkout_only(&app, &stripe, &user).await;
        let (start, end) = crate::subscription_lifecycle::period();
        let spec = crate::fake_stripe::SubSpec {
            id: &sub_id,
            customer: &customer,
            price: crate::fake_stripe::PRICE_PRO,
            status: "incomplete",
            period_start: start,
            period_end: end,
            cancel_at_period_end: false,
        };
        let incomplete = stripe.put_subscription(&spec);
        let active = stripe.patch_subscription(&sub_id, json!({ "status": "active" }));
        let invoice = stripe.put_invoice(&InvoiceSpec {
            id: &format!("in_{user}"),
            customer: &customer,
            subscription: &sub_id,
            status: "paid",
            amount_due: 1900,
            amount_paid: 1900,
            created: Utc::now().timestamp(),
        });
        let premium = stripe.put_subscription(&crate::fake_stripe::SubSpec {
            price: crate::fake_stripe::PRICE_PREMIUM,
            status: "active",
            ..spec
        });
        // Stripe's order, one second apart (the one-second resolution of `created`).
        let t = Utc::now().timestamp() - 60;
        let events = [
            stripe.event_at(
                "checkout.session.completed",
                &stripe.checkout_completed(&user, &customer, &sub_id),
                t,
            ),
            stripe.event_at("customer.subscription.created", &incomplete, t + 1),
            stripe.event_at("customer.subscription.updated", &active, t + 2),
            stripe.event_at("invoice.paid", &invoice, t + 3),
            stripe.event_at("invoice.payment_succeeded", &invoice, t + 3),
            stripe.event_at("customer.subscription.updated", &premium, t + 4),
        ];
        let reads_before = stripe
            .received()
            .iter()
            .filter(|r| r.method == "GET")
            .count();
        for i in order {
            app.deliver_signed(&events[i].1).await;
        }
        let reads = stripe
            .received()
            .iter()
            .filter(|r| r.method == "GET")
            .count()
            - reads_before;
        // Snapshots are applied in order or skipped as stale; only a checkout that arrives
        // before any subscription state needs a fetch, and two invoice events of one second
        // may need one more.
        assert!(reads <= 2, "run {run}: {reads} Stripe reads");
        let state = final_state(&app, &user).await;
        assert_eq!(state.0, i32::from(Tier::Premium), "run {run}");
        assert_eq!(state.1, i32::from(SubscriptionStatus::Active), "run {run}");
        assert_eq!(state.4, 1, "run {run}: one paid invoice");
        states.push(state);
    }
    for (run, state) in states.iter().enumerate() {
        assert_eq!(state, &states[0], "run {run} ended differently");
    }
    let reads = stripe
        .received()
        .iter()
        .filter(|r| r.method == "GET")
        .count()
        - reads_at_start;
    // At most one fetch for a checkout that comes before any subscription state and one for
    // the second of two invoice events of one second; most runs need none.
    assert!(
        reads <= 2 * runs,
        "{reads} Stripe reads for {} events",
        runs * 6
    );
    app.stop().await;
}

/// CreateCheckoutSession only (no events): returns (customer, a new subscription id).
pub async fn checkout_only(app: &TestApp, stripe: &FakeStripe, user: &str) -> (String, String) {
    use nexus_billing::grpc::proto::billing::CreateCheckoutSessionRequest;
    app.billing()
        .await
        .create_checkout_session(crate::helpers::authed(
            CreateCheckoutSessionRequest {
                tier: Tier::Pro.into(),
                success_url: format!("{}/ok", crate::helpers::ALLOWED_ORIGIN),
                cancel_url: format!("{}/no", crate::helpers::ALLOWED_ORIGIN),
                ..Default::default()
            },
            &crate::helpers::token(user),
        ))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let customer = stripe
        .customer_of(user)
        .unwrap_or_else(|| panic!("no customer for {user}"));
    (customer, format!("sub_{user}"))
}

async fn a_late_stale_event_cannot_move_state_backwards(backend: Backend) {
    let (app, stripe) = TestApp::spawn_with_stripe(backend).await;
    let user = "dora";
    let (_, sub_id) = subscribe(&app, &stripe, user, Tier::Pro).await;
    let active_snapshot = stripe
        .subscription(&sub_id)
        .unwrap_or_else(|| panic!("no subscription"));
    let canceled = stripe.patch_subscription(&sub_id, json!({ "status": "canceled" }));
    let (_, deleted) = stripe.event("customer.subscription.deleted", &canceled);
    app.deliver_signed(&deleted).await;
    assert_eq!(
        subscription(&app, user).await.effective_tier,
        i32::from(Tier::Free)
    );

    // An old `updated` (snapshot: active) arrives days late: skipped without a Stripe call.
    let reads = stripe.requests("GET", "/v1/subscriptions/").len();
    let (late_id, late) = stripe.event_at(
        "customer.subscription.updated",
        &active_snapshot,
        Utc::now().timestamp() - 3 * 86_400,
    );
    app.deliver_signed(&late).await;
    assert_eq!(stripe.requests("GET", "/v1/subscriptions/").len(), reads);
    assert_eq!(
        app.count(
            "webhook_inbox",
            &format!("event_id = '{late_id}' AND outcome = 'stale'")
        )
        .await,
        1
    );
    let sub = subscription(&app, user).await;
    assert_eq!(sub.status, i32::from(SubscriptionStatus::Canceled));
    assert_eq!(sub.effective_tier, i32::from(Tier::Free));

    // The user subscribes again; the old subscription's late events leave the new one alone.
    let (_, new_sub) = subscribe(&app, &stripe, user, Tier::Premium).await;
    assert_ne!(new_sub, sub_id);
    let (_, old_again) = stripe.event("customer.subscription.deleted", &canceled);
    app.deliver_signed(&old_again).await;
    let sub = subscription(&app, user).await;
    assert_eq!(sub.tier, i32::from(Tier::Premium));
    assert_eq!(sub.effective_tier, i32::from(Tier::Premium));
    app.stop().await;
}

async fn a_database_failure_answers_503_records_nothing_and_the_redelivery_succeeds(
    backend: Backend,
) {
    let (app, stripe) = TestApp::spawn_with_stripe(backend).await;
    let user = "emil";
    let (customer, sub_id) = subscribe(&app, &stripe, user, Tier::Pro).await;
    let paid = stripe.put_invoice(&InvoiceSpec {
        id: "in_emil",
        customer: &customer,
        subscription: &sub_id,
        status: "paid",
        amount_due: 900,
        amount_paid: 900,
        created: Utc::now().timestamp(),
    });
    let (event_id, body) = stripe.event("invoice.paid", &paid);
    let inbox_before = inbox(&app).await;

    // The inbox cannot be written.
    exec!(
        &app.pool,
        "ALTER TABLE webhook_inbox RENAME TO webhook_inbox_unavailable"
    );
    let (status, _) = app.deliver(&body, Some(&sign_now(&body))).await;
    assert_eq!(status, 503);
    exec!(
        &app.pool,
        "ALTER TABLE webhook_inbox_unavailable RENAME TO webhook_inbox"
    );
    assert_eq!(
        inbox(&app).await,
        inbox_before,
        "the event was not recorded"
    );
    assert_eq!(app.count("invoices", "").await, 0);

    // Applying fails half-way (the activity log cannot be written): rolled back, retried.
    exec!(
        &app.pool,
        "ALTER TABLE activity_logs RENAME TO activity_logs_unavailable"
    );
    let (status, text) = app.deliver(&body, Some(&sign_now(&body))).await;
    assert_eq!(status, 200, "{text}");
    let deadline = std::time::Instant::now() + crate::helpers::PATIENCE;
    while app
        .count(
            "webhook_inbox",
            &format!("event_id = '{event_id}' AND attempts > 0"),
        )
        .await
        == 0
    {
        assert!(std::time::Instant::now() < deadline, "never attempted");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        app.count("invoices", "").await,
        0,
        "the invoice write was rolled back"
    );
    exec!(
        &app.pool,
        "ALTER TABLE activity_logs_unavailable RENAME TO activity_logs"
    );
    app.settle().await;
    assert_eq!(app.count("invoices", "").await, 1);
    assert_eq!(
        app.count("webhook_inbox", &format!("event_id = '{event_id}'"))
            .await,
        1
    );
    assert_eq!(
        app.activity_kinds(user)
            .await
            .iter()
            .filter(|k| *k == "payment.succeeded")
            .count(),
        1
    );
    app.stop().await;
}

async fn events_for_unknown_customers_and_unhandled_types_are_recorded_and_acknowledged(
    backend: Backend,
) {
    let (app, stripe) = TestApp::spawn_with_stripe(backend).await;
    let stranger = stripe.put_subscription(&crate::fake_stripe::SubSpec {
        id: "sub_stranger",
        customer: "cus_not_ours",
        price: crate::fake_stripe::PRICE_PRO,
        status: "active",
        period_start: 0,
        period_end: Utc::now().timestamp() + 86_400,
        cancel_at_period_end: false,
    });
    let (unknown_id, body) = stripe.event("customer.subscription.updated", &stranger);
    app.deliver_signed(&body).await;
    let (other_id, other) = stripe.event(
        "customer.created",
        &json!({ "id": "cus_x", "object": "customer" }),
    );
    app.deliver_signed(&other).await;
    for id in [unknown_id, other_id] {
        assert_eq!(
            app.count("webhook_inbox", &format!("event_id = '{id}'"))
                .await,
            1
        );
    }
    assert_eq!(
        app.count("subscriptions", "").await,
        0,
        "no state for strangers"
    );
    // A redelivery is a duplicate: acknowledged, nothing fetched again.
    let fetches = stripe.requests("GET", "/v1/subscriptions/").len();
    let (status, text) = app.deliver(&body, Some(&sign_now(&body))).await;
    assert_eq!((status, text.as_str()), (200, "duplicate"));
    app.settle().await;
    assert_eq!(stripe.requests("GET", "/v1/subscriptions/").len(), fetches);
    app.stop().await;
}

async fn a_second_live_subscription_is_not_applied_and_is_flagged(backend: Backend) {
    let (app, stripe) =
        TestApp::spawn_with_stripe_and(backend, &[("--duplicate-subscription-policy", "flag")])
            .await;
    let user = "gus";
    let (customer, first) = subscribe(&app, &stripe, user, Tier::Pro).await;
    // Two checkouts completed in a race: Stripe now has a second live subscription.
    let (start, end) = crate::subscription_lifecycle::period();
    let second = stripe.put_subscription(&crate::fake_stripe::SubSpec {
        id: "sub_gus_second",
        customer: &customer,
        price: crate::fake_stripe::PRICE_PREMIUM,
        status: "active",
        period_start: start,
        period_end: end,
        cancel_at_period_end: false,
    });
    let (_, body) = stripe.event("customer.subscription.created", &second);
    app.deliver_signed(&body).await;
    let sub = subscription(&app, user).await;
    assert_eq!(
        sub.tier,
        i32::from(Tier::Pro),
        "the first subscription stays"
    );
    assert_eq!(
        app.count(
            "subscriptions",
            &format!("provider_subscription_id = '{first}'")
        )
        .await,
        1
    );
    assert!(
        app.activity_kinds(user)
            .await
            .iter()
            .any(|k| k == "subscription.needs_attention"),
        "support can find the double charge"
    );
    app.stop().await;
}

async fn a_completed_checkout_links_an_unknown_customer_but_never_moves_a_known_one(
    backend: Backend,
) {
    let (app, stripe) = TestApp::spawn_with_stripe(backend).await;
    let (start, end) = crate::subscription_lifecycle::period();
    // The customer id was never stored here (the answer to the customer creation was lost).
    stripe.put_subscription(&crate::fake_stripe::SubSpec {
        id: "sub_hal",
        customer: "cus_lost",
        price: crate::fake_stripe::PRICE_PRO,
        status: "active",
        period_start: start,
        period_end: end,
        cancel_at_period_end: false,
    });
    let (_, body) = stripe.event(
        "checkout.session.completed",
        &stripe.checkout_completed("hal", "cus_lost", "sub_hal"),
    );
    app.deliver_signed(&body).await;
    assert_eq!(
        subscription(&app, "hal").await.effective_tier,
        i32::from(Tier::Pro)
    );

    // A session naming another user cannot move hal's customer (or subscription) to them.
    let (_, body) = stripe.event(
        "checkout.session.completed",
        &stripe.checkout_completed("mallory", "cus_lost", "sub_hal"),
    );
    app.deliver_signed(&body).await;
    assert_eq!(
        subscription(&app, "mallory").await.effective_tier,
        i32::from(Tier::Free)
    );
    assert_eq!(
        app.count("billing_customers", "user_id = 'mallory'").await,
        0
    );
    assert_eq!(
        subscription(&app, "hal").await.effective_tier,
        i32::from(Tier::Pro)
    );
    app.stop().await;
}
