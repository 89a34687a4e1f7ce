//! Where billing features meet (issue 25): two payment providers, a paid tab and a new
//! checkout, a late snapshot of an old subscription. Each test failed on the code before its fix.

use chrono::{Duration, Utc};
use nexus_billing::grpc::proto::billing::{
    CreateCheckoutSessionRequest, PaymentProvider, SubscriptionStatus, Tier,
};
use serde_json::json;
use tonic::Code;

use crate::{
    fake_paypal::FakePaypal,
    fake_stripe::{FakeStripe, InvoiceSpec},
    helpers::{ALLOWED_ORIGIN, Backend, TestApp, authed, token},
    subscription_lifecycle::{subscribe, subscription},
};

crate::on_both_backends!(
    a_paypal_checkout_leaves_the_stripe_session_to_stripe,
    a_stripe_checkout_expires_the_stripe_session_not_through_paypal,
    a_tab_paid_first_turns_the_next_checkout_into_its_subscription,
    a_late_snapshot_of_an_ended_subscription_refunds_nothing,
    a_late_snapshot_never_replaces_an_ended_subscription,
    one_unreadable_overdue_subscription_does_not_stop_the_reconciler,
    an_erasure_before_the_webhooks_cancels_what_was_paid_at_each_provider,
    a_paypal_duplicate_is_refunded_once_its_sale_is_listed,
    a_stripe_duplicate_refunds_the_payment_that_was_paid,
    a_deleted_customers_old_payloads_are_erased_too,
    a_paypal_link_approved_after_the_erasure_is_cancelled_and_refunded,
    a_plan_change_lands_although_stripes_clock_runs_ahead,
    a_late_event_of_a_paypal_subscription_whose_month_ran_out_refunds_nothing,
    a_duplicate_refund_that_failed_is_made_when_retried,
);

/// The server with the settings of several fakes (two payment providers at once).
pub async fn spawn_with_settings(
    backend: Backend,
    settings: Vec<(&'static str, String)>,
) -> TestApp {
    let overrides: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    TestApp::spawn_with(backend, &overrides).await
}

/// The server with both Stripe and PayPal configured.
pub async fn spawn_two(backend: Backend) -> (TestApp, FakeStripe, FakePaypal) {
    let stripe = FakeStripe::start().await;
    let paypal = FakePaypal::start().await;
    let settings = stripe.settings().into_iter().chain(paypal.settings());
    let app = spawn_with_settings(backend, settings.collect()).await;
    (app, stripe, paypal)
}

/// A second live PRO subscription `id` of `customer` at Stripe (another tab paid).
fn live_pro(stripe: &FakeStripe, id: &str, customer: &str) {
    let (start, end) = crate::subscription_lifecycle::period();
    stripe.put_subscription(&crate::fake_stripe::SubSpec {
        id,
        customer,
        price: crate::fake_stripe::PRICE_PRO,
        status: "active",
        period_start: start,
        period_end: end,
        cancel_at_period_end: false,
    });
}

/// A checkout at `provider`; the session id, or the refusal.
pub async fn try_checkout(
    app: &TestApp,
    user: &str,
    tier: Tier,
    provider: PaymentProvider,
) -> Result<String, tonic::Status> {
    app.billing()
        .await
        .create_checkout_session(authed(
            CreateCheckoutSessionRequest {
                tier: tier.into(),
                success_url: format!("{ALLOWED_ORIGIN}/billing/done"),
                cancel_url: format!("{ALLOWED_ORIGIN}/billing"),
                provider: provider.into(),
                ..Default::default()
            },
            &token(user),
        ))
        .await
        .map(|r| r.into_inner().session_id)
}

async fn checkout(app: &TestApp, user: &str, tier: Tier, provider: PaymentProvider) -> String {
    try_checkout(app, user, tier, provider)
        .await
        .unwrap_or_else(|e| panic!("checkout at {provider:?}: {e}"))
}

/// Item 1: a Stripe checkout after a PayPal one used to ask Stripe to expire the PayPal id
/// (Stripe: 404), which failed the RPC on every retry.
async fn a_paypal_checkout_leaves_the_stripe_session_to_stripe(backend: Backend) {
    let (app, stripe, paypal) = spawn_two(backend).await;
    let paypal_id = checkout(&app, "two-ana", Tier::Pro, PaymentProvider::Paypal).await;
    let stripe_id = checkout(&app, "two-ana", Tier::Pro, PaymentProvider::Stripe).await;
    assert!(stripe_id.starts_with("cs_"), "{stripe_id}");
    let asked = stripe.requests("POST", &format!("/v1/checkout/sessions/{paypal_id}"));
    assert!(asked.is_empty(), "Stripe was asked about a PayPal id");
    assert!(paypal.subscription(&paypal_id)["id"] == paypal_id.as_str());
    app.stop().await;
}

/// Item 1, the other way: a PayPal checkout after a Stripe one used to "expire" the Stripe
/// session through PayPal (a no-op), leaving it payable at Stripe for 24 hours.
async fn a_stripe_checkout_expires_the_stripe_session_not_through_paypal(backend: Backend) {
    let (app, stripe, _paypal) = spawn_two(backend).await;
    let stripe_id = checkout(&app, "two-bo", Tier::Pro, PaymentProvider::Stripe).await;
    checkout(&app, "two-bo", Tier::Premium, PaymentProvider::Paypal).await;
    assert_eq!(
        stripe.session_status(&stripe_id).as_deref(),
        Some("expired"),
        "the Stripe session can still be paid"
    );
    app.stop().await;
}

/// Item 1: a session paid in one tab cannot be expired (Stripe answers 400); the next
/// checkout must not open a second payable session, and the paid one is applied at once.
async fn a_tab_paid_first_turns_the_next_checkout_into_its_subscription(backend: Backend) {
    let (app, stripe) = TestApp::spawn_with_stripe(backend).await;
    let user = "two-cy";
    let first = checkout(&app, user, Tier::Pro, PaymentProvider::Stripe).await;
    let customer = stripe
        .customer_of(user)
        .unwrap_or_else(|| panic!("no customer"));
    live_pro(&stripe, "sub_two_cy", &customer);
    stripe.complete_session(&first, "sub_two_cy");
    // The webhook is still on its way when the user opens another tab.
    let refused = try_checkout(&app, user, Tier::Premium, PaymentProvider::Stripe)
        .await
        .err()
        .unwrap_or_else(|| panic!("a second payable session was opened"));
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("ChangePlan"), "{refused:?}");
    let open: Vec<_> = stripe
        .requests("POST", "/v1/checkout/sessions")
        .iter()
        .filter(|r| r.path == "/v1/checkout/sessions")
        .map(|r| r.idempotency_key.clone())
        .collect();
    assert_eq!(open.len(), 2, "the second session was created");
    let second_status = stripe
        .received()
        .iter()
        .filter(|r| r.path.ends_with("/expire"))
        .map(|r| r.path.clone())
        .collect::<Vec<_>>();
    assert_eq!(second_status.len(), 2, "both sessions asked to expire: {second_status:?}");
    let sub = subscription(&app, user).await;
    assert_eq!(sub.effective_tier, i32::from(Tier::Pro));
    assert_eq!(sub.status, i32::from(SubscriptionStatus::Active));
    app.stop().await;
}

/// Sub A ended, the user subscribed again (sub B); a late snapshot of A as it was while
/// active arrives. Returns (customer, A, B, the late event's body).
async fn resubscribed_with_a_late_snapshot(
    app: &TestApp,
    stripe: &FakeStripe,
    user: &str,
) -> (String, String, String, String) {
    let (customer, a) = subscribe(app, stripe, user, Tier::Pro).await;
    let then = Utc::now() - Duration::minutes(10);
    let active_a = stripe.subscription(&a).unwrap_or_else(|| panic!("no {a}"));
    // A's period was paid (the invoice a refund would take back) and then A ended.
    stripe.put_invoice(&InvoiceSpec {
        id: &format!("in_{a}"),
        customer: &customer,
        subscription: &a,
        status: "paid",
        amount_due: 1900,
        amount_paid: 1900,
        created: then.timestamp(),
    });
    let ended = stripe.patch_subscription(
        &a,
        json!({ "status": "canceled", "latest_invoice": format!("in_{a}") }),
    );
    let (_, deleted) = stripe.event("customer.subscription.deleted", &ended);
    app.deliver_signed(&deleted).await;
    assert_eq!(
        subscription(app, user).await.effective_tier,
        i32::from(Tier::Free)
    );
    let (_, b) = subscribe(app, stripe, user, Tier::Premium).await;
    let (_, late) = stripe.event_at(
        "customer.subscription.updated",
        &active_a,
        then.timestamp(),
    );
    (customer, a, b, late)
}

/// Item 3: the late "active" snapshot of A was judged a second live subscription, and A's
/// latest invoice (a period the user had used) was refunded.
async fn a_late_snapshot_of_an_ended_subscription_refunds_nothing(backend: Backend) {
    let (app, stripe) = TestApp::spawn_with_stripe(backend).await;
    let user = "late-ana";
    let (_, a, b, late) = resubscribed_with_a_late_snapshot(&app, &stripe, user).await;
    app.deliver_signed(&late).await;
    assert!(stripe.refunds().is_empty(), "refunded: {:?}", stripe.refunds());
    assert!(
        stripe
            .requests("DELETE", &format!("/v1/subscriptions/{a}"))
            .is_empty()
    );
    let sub = subscription(&app, user).await;
    assert_eq!(sub.effective_tier, i32::from(Tier::Premium));
    let kinds = app.activity_kinds(user).await;
    assert!(
        !kinds.iter().any(|k| k.starts_with("subscription.duplicate")),
        "{kinds:?}"
    );
    assert_eq!(stripe.subscription(&b).map(|s| s["status"].clone()), Some(json!("active")));
    app.stop().await;
}

/// Item 3: when the stored subscription (B) has ended, a late snapshot of A restored A's
/// paid tier although A ended long ago.
async fn a_late_snapshot_never_replaces_an_ended_subscription(backend: Backend) {
    let (app, stripe) = TestApp::spawn_with_stripe(backend).await;
    let user = "late-bo";
    let (_, _a, b, late) = resubscribed_with_a_late_snapshot(&app, &stripe, user).await;
    let ended = stripe.patch_subscription(&b, json!({ "status": "canceled" }));
    let (_, deleted) = stripe.event("customer.subscription.deleted", &ended);
    app.deliver_signed(&deleted).await;
    assert_eq!(
        subscription(&app, user).await.effective_tier,
        i32::from(Tier::Free)
    );
    app.deliver_signed(&late).await;
    let sub = subscription(&app, user).await;
    assert_eq!(sub.effective_tier, i32::from(Tier::Free), "{sub:?}");
    assert!(stripe.refunds().is_empty());
    app.stop().await;
}

/// Item 6: the reconciler stopped at the first overdue subscription it could not read (a
/// test-mode id after switching to live keys), in the same order every run.
async fn one_unreadable_overdue_subscription_does_not_stop_the_reconciler(backend: Backend) {
    let (app, stripe) = TestApp::spawn_with_stripe(backend).await;
    let (_, lost) = subscribe(&app, &stripe, "rec-ana", Tier::Pro).await;
    let (_, kept) = subscribe(&app, &stripe, "rec-bo", Tier::Pro).await;
    // Both periods ended with no news since; Stripe no longer knows the first (404).
    for (user, days) in [("rec-ana", 40), ("rec-bo", 35)] {
        crate::exec!(
            &app.pool,
            "UPDATE subscriptions SET current_period_end = $1, state_as_of = NULL WHERE user_id = $2",
            Utc::now() - Duration::days(days),
            user
        );
    }
    stripe.forget_subscription(&lost);
    stripe.patch_subscription(&kept, json!({ "status": "canceled" }));
    let (_, output) = crate::event_processing::run_cli(&app, &stripe, &["reconcile"]);
    assert!(output.contains("refreshed 1"), "{output}");
    assert!(output.contains("failed 1"), "{output}");
    assert_eq!(
        subscription(&app, "rec-bo").await.status,
        i32::from(SubscriptionStatus::Canceled),
        "the readable subscription behind the unreadable one was refreshed"
    );
    app.stop().await;
}

/// Item 4: a user who paid (Stripe in one tab, PayPal in another) and erased the account
/// before any webhook was applied kept being charged: the erasure cancelled only the stored
/// subscription (none yet), and the later events were dropped as unknown.
async fn an_erasure_before_the_webhooks_cancels_what_was_paid_at_each_provider(backend: Backend) {
    let (app, stripe, paypal) = spawn_two(backend).await;
    let user = "gone-ana";
    // PayPal's approve link cannot be withdrawn: the later Stripe checkout leaves it payable.
    let approval = checkout(&app, user, Tier::Premium, PaymentProvider::Paypal).await;
    let session = checkout(&app, user, Tier::Pro, PaymentProvider::Stripe).await;
    let customer = stripe
        .customer_of(user)
        .unwrap_or_else(|| panic!("no customer"));
    live_pro(&stripe, "sub_gone_ana", &customer);
    stripe.complete_session(&session, "sub_gone_ana");
    paypal.activate(&approval, Utc::now());
    let erased = crate::account_world::erase(&app, &token(user), "").await;
    assert!(!erased.erasure_id.is_empty());
    assert_eq!(
        stripe.subscription("sub_gone_ana").map(|s| s["status"].clone()),
        Some(json!("canceled")),
        "the Stripe subscription still charges an erased user"
    );
    assert_eq!(
        paypal.subscription(&approval)["status"],
        "CANCELLED",
        "the PayPal subscription still charges an erased user"
    );
    app.stop().await;
}

/// Item 9: PayPal lists a sale only some time after the payment. A duplicate cancelled before
/// its sale was listed was never refunded, and nothing tried again.
async fn a_paypal_duplicate_is_refunded_once_its_sale_is_listed(backend: Backend) {
    let (app, paypal) = crate::paypal::spawn(backend).await;
    let user = "pp-late-sale";
    let (first, _) = crate::paypal::checkout(&app, user, Tier::Pro).await;
    let (second, _) = crate::paypal::checkout(&app, user, Tier::Premium).await;
    let at = Utc::now() - Duration::seconds(30);
    let one = paypal.activate(&first, at);
    let two = paypal.activate(&second, at + Duration::seconds(2));
    let (_, e1) = paypal.event("BILLING.SUBSCRIPTION.ACTIVATED", &one, at + Duration::seconds(1));
    let (_, e2) = paypal.event("BILLING.SUBSCRIPTION.ACTIVATED", &two, at + Duration::seconds(3));
    crate::paypal::deliver_signed(&app, &paypal, &e1).await;
    let (status, _) = crate::paypal::deliver(&app, &e2, &paypal.headers(&e2)).await;
    assert_eq!(status, 200);
    // PayPal has answered the listing of its transactions: none yet.
    let listing = format!("/v1/billing/subscriptions/{second}/transactions");
    crate::helpers::eventually("the duplicate's payments were listed", || async {
        !paypal.requests("GET", &listing).is_empty()
    })
    .await;
    // Refund first, then cancel: it waits, still active, for its sale.
    assert_eq!(paypal.subscription(&second)["status"], "ACTIVE");
    assert!(paypal.refunds().is_empty());
    // The sale shows up in the listing later.
    let sale = paypal.sale(&second, "19.00", at + Duration::seconds(2));
    crate::helpers::eventually("the duplicate's payment was refunded", || async {
        paypal.refunds() == [sale["id"].as_str().unwrap_or_default().to_string()]
    })
    .await;
    app.settle().await;
    assert_eq!(paypal.refunds().len(), 1);
    assert_eq!(paypal.subscription(&second)["status"], "CANCELLED");
    app.stop().await;
}

/// Item 9: the duplicate's refund took `payments.data[0]`, which can be a failed attempt
/// rather than the payment that was made.
async fn a_stripe_duplicate_refunds_the_payment_that_was_paid(backend: Backend) {
    let (app, stripe) = TestApp::spawn_with_stripe(backend).await;
    let user = "dup-paid";
    let (customer, _) = subscribe(&app, &stripe, user, Tier::Pro).await;
    live_pro(&stripe, "sub_dup_paid_2", &customer);
    stripe.put_invoice(&InvoiceSpec {
        id: "in_latest_sub_dup_paid_2",
        customer: &customer,
        subscription: "sub_dup_paid_2",
        status: "paid",
        amount_due: 1900,
        amount_paid: 1900,
        created: crate::subscription_lifecycle::period().0,
    });
    stripe.patch_invoice(
        "in_latest_sub_dup_paid_2",
        json!({ "payments": { "object": "list", "data": [
            { "status": "canceled", "payment": { "type": "payment_intent", "payment_intent": "pi_declined" } },
            { "status": "paid", "payment": { "type": "payment_intent", "payment_intent": "pi_paid" } },
        ] } }),
    );
    let (_, body) = stripe.event(
        "checkout.session.completed",
        &stripe.checkout_completed(user, &customer, "sub_dup_paid_2"),
    );
    app.deliver_signed(&body).await;
    let refunds = stripe.refunds();
    assert_eq!(refunds.len(), 1, "{refunds:?}");
    assert_eq!(
        refunds[0].get("payment_intent").map(String::as_str),
        Some("pi_paid")
    );
    app.stop().await;
}

/// Item 12: after Stripe deleted the customer (`customer.deleted`), an erasure no longer found
/// the customer's old webhook payloads, which keep the user's email and id.
async fn a_deleted_customers_old_payloads_are_erased_too(backend: Backend) {
    let (app, stripe) = TestApp::spawn_with_stripe(backend).await;
    let user = "deleted-cus";
    let (customer, sub_id) = subscribe(&app, &stripe, user, Tier::Pro).await;
    let ended = stripe.patch_subscription(&sub_id, json!({ "status": "canceled" }));
    let (_, body) = stripe.event("customer.subscription.deleted", &ended);
    app.deliver_signed(&body).await;
    let (_, deleted) = stripe.event(
        "customer.deleted",
        &json!({ "id": customer, "object": "customer", "email": "deleted-cus@example.com",
                 "metadata": { "user_id": user } }),
    );
    app.deliver_signed(&deleted).await;
    crate::account_world::erase(&app, &token(user), "").await;
    assert_eq!(
        app.count("webhook_inbox", &format!("payload LIKE '%{user}%'"))
            .await,
        0,
        "an erased user's webhook payloads are kept"
    );
    // Item 12: the entry's anonymous key is keyed, not a plain hash anyone can recompute.
    use sha2::Digest;
    let plain = hex::encode(sha2::Sha256::digest(
        format!("nexus-erasure-v1:{user}").as_bytes(),
    ));
    assert_eq!(app.count("erasures", "").await, 1);
    assert_eq!(
        app.count("erasures", &format!("subject_hash = '{plain}'"))
            .await,
        0,
        "the erased user's key is a plain SHA-256 of a guessable id"
    );
    app.stop().await;
}

/// The money model found it: PayPal's approve link cannot be withdrawn, and one approved
/// after the erasure charged an erased user every month (its events were dropped as unknown).
async fn a_paypal_link_approved_after_the_erasure_is_cancelled_and_refunded(backend: Backend) {
    let (app, paypal) = crate::paypal::spawn(backend).await;
    let user = "pp-after-erasure";
    let (id, _) = crate::paypal::checkout(&app, user, Tier::Pro).await;
    crate::account_world::erase(&app, &token(user), "").await;
    let at = Utc::now() - Duration::seconds(5);
    let active = paypal.activate(&id, at);
    let sale = paypal.sale(&id, "9.00", at);
    let (_, body) = paypal.event("BILLING.SUBSCRIPTION.ACTIVATED", &active, at);
    crate::paypal::deliver_signed(&app, &paypal, &body).await;
    assert_eq!(paypal.subscription(&id)["status"], "CANCELLED");
    assert_eq!(
        paypal.refunds(),
        [sale["id"].as_str().unwrap_or_default().to_string()]
    );
    assert_eq!(
        app.count("webhook_inbox", &format!("payload LIKE '%{user}%'"))
            .await,
        0,
        "the event's payload names the erased user"
    );
    app.stop().await;
}

/// Item 10: fetches were timed by this host's clock and events by Stripe's. With Stripe's
/// clock two minutes ahead, the answer of a plan change looked older than the stored state
/// (from an event "created" two minutes in this host's future) and was dropped: Stripe bills
/// PREMIUM while the user kept PRO.
async fn a_plan_change_lands_although_stripes_clock_runs_ahead(backend: Backend) {
    let (app, stripe) = TestApp::spawn_with_stripe(backend).await;
    stripe.set_clock_ahead(120);
    let user = "skew-ana";
    subscribe(&app, &stripe, user, Tier::Pro).await;
    app.billing()
        .await
        .change_plan(authed(
            nexus_billing::grpc::proto::billing::ChangePlanRequest {
                tier: Tier::Premium.into(),
                ..Default::default()
            },
            &token(user),
        ))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        subscription(&app, user).await.tier,
        i32::from(Tier::Premium),
        "the change Stripe made was dropped as older than the stored state"
    );
    app.stop().await;
}

/// Review of issue 25: a cancelled PayPal subscription reads as active until the end of its
/// paid month, and was judged a live second subscription even after that month ran out: a late
/// event about it refunded a month the user had used.
async fn a_late_event_of_a_paypal_subscription_whose_month_ran_out_refunds_nothing(
    backend: Backend,
) {
    let (app, paypal) = crate::paypal::spawn(backend).await;
    let user = "pp-old-month";
    let (old, _) = crate::paypal::checkout(&app, user, Tier::Pro).await;
    let (new, _) = crate::paypal::checkout(&app, user, Tier::Premium).await;
    let live = paypal.activate(&new, Utc::now() - Duration::seconds(30));
    let (_, body) = paypal.event(
        "BILLING.SUBSCRIPTION.ACTIVATED",
        &live,
        Utc::now() - Duration::seconds(20),
    );
    crate::paypal::deliver_signed(&app, &paypal, &body).await;
    // The old one was paid 35 days ago and cancelled since: its month ran out 5 days ago.
    let paid_at = Utc::now() - Duration::days(35);
    paypal.activate(&old, paid_at);
    paypal.sale(&old, "9.00", paid_at);
    let cancelled = paypal.patch(&old, |s| {
        s["status"] = json!("CANCELLED");
        if let Some(info) = s["billing_info"].as_object_mut() {
            info.remove("next_billing_time");
        }
    });
    let (_, late) = paypal.event("BILLING.SUBSCRIPTION.CANCELLED", &cancelled, Utc::now());
    crate::paypal::deliver_signed(&app, &paypal, &late).await;
    assert!(paypal.refunds().is_empty(), "a used month was refunded");
    assert_eq!(subscription(&app, user).await.tier, i32::from(Tier::Premium));
    app.stop().await;
}

/// Review of issue 25: the duplicate was cancelled first and refunded second; when the refund
/// failed, the retry found the subscription cancelled, took it for an old one, and the payment
/// was never refunded.
async fn a_duplicate_refund_that_failed_is_made_when_retried(backend: Backend) {
    let (app, stripe) = TestApp::spawn_with_stripe(backend).await;
    let user = "dup-retry";
    let (customer, _) = subscribe(&app, &stripe, user, Tier::Pro).await;
    live_pro(&stripe, "sub_dup_retry_2", &customer);
    stripe.fail_once("POST", "/v1/refunds", 500);
    let (_, body) = stripe.event(
        "checkout.session.completed",
        &stripe.checkout_completed(user, &customer, "sub_dup_retry_2"),
    );
    app.deliver_signed(&body).await;
    let refunds = stripe.refunds();
    assert_eq!(refunds.len(), 1, "{refunds:?}");
    assert_eq!(
        refunds[0].get("payment_intent").map(String::as_str),
        Some("pi_sub_dup_retry_2")
    );
    assert_eq!(
        stripe.subscription("sub_dup_retry_2").map(|s| s["status"].clone()),
        Some(json!("canceled"))
    );
    app.stop().await;
}
