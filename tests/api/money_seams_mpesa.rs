//! M-Pesa where it meets the rest (issue 25): a push whose answer is lost, a push beside a
//! Stripe checkout, prepaid periods of two tiers, hints that died, a lagging STK query. Each
//! test failed on the code before its fix.

use chrono::{Duration, Utc};
use nexus_billing::grpc::proto::billing::{PaymentProvider, Tier};
use tonic::Code;

use crate::{
    exec,
    fake_mpesa::{FakeMpesa, PRICE_PREMIUM, PRICE_PRO, REFUSE, callback},
    helpers::{Backend, TestApp, authed, eventually, token, wait_for},
    money_seams::try_checkout,
    mpesa::{payment_state, post_callback, push, push_request, settled},
    subscription_lifecycle::subscription,
};

crate::on_both_backends!(
    a_push_whose_answer_was_lost_is_found_by_its_callback,
    a_waiting_push_blocks_a_stripe_checkout,
    prepaid_periods_keep_their_tier_in_order,
    a_request_whose_hints_died_is_still_asked_about,
    a_request_never_confirmed_is_failed_and_flagged_after_a_day,
    a_lagging_query_does_not_fail_a_paid_request,
    a_slow_confirmation_keeps_its_lease,
    a_push_waits_while_a_paypal_link_can_be_approved,
);

async fn spawn_with(backend: Backend, extra: &[(&str, &str)]) -> (TestApp, FakeMpesa) {
    let mpesa = FakeMpesa::start().await;
    let settings = mpesa.settings();
    let mut overrides: Vec<(&str, &str)> =
        settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    overrides.extend_from_slice(extra);
    (TestApp::spawn_with(backend, &overrides).await, mpesa)
}

/// The `ref` the push's CallBackURL carries.
fn reference_of(push: &serde_json::Value) -> String {
    let url = url::Url::parse(push["CallBackURL"].as_str().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}"));
    url.query_pairs()
        .find(|(k, _)| k == "ref")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| panic!("no ref in {url}"))
}

/// POSTs a callback to the URL the push named.
async fn post_callback_to(app: &TestApp, reference: &str, body: &str) -> (u16, i64) {
    let response = reqwest::Client::new()
        .post(app.http_url(&format!("/billing/webhook/mpesa?ref={reference}")))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let status = response.status().as_u16();
    let ack: serde_json::Value = response.json().await.unwrap_or_default();
    (status, ack["ResultCode"].as_i64().unwrap_or(-1))
}

/// Item 2: Daraja accepted the push (the phone prompts) and the answer was lost. The request
/// used to end failed with no CheckoutRequestID: the user paid, the callback was dropped as
/// unknown, and a retry sent a second push.
async fn a_push_whose_answer_was_lost_is_found_by_its_callback(backend: Backend) {
    let (app, mpesa) = spawn_with(backend, &[]).await;
    let user = "lost-ana";
    mpesa.lose_next_push_answer();
    let lost = app
        .billing()
        .await
        .create_checkout_session(authed(push_request(Tier::Pro, "0712345678"), &token(user)))
        .await
        .err()
        .unwrap_or_else(|| panic!("a lost answer read as sent"));
    assert_eq!(lost.code(), Code::Unavailable, "{lost:?}");
    assert!(lost.message().contains("phone"), "{lost:?}");
    // The retry does not send a second push while the first may still be paid.
    let again = app
        .billing()
        .await
        .create_checkout_session(authed(push_request(Tier::Pro, "0712345678"), &token(user)))
        .await
        .err()
        .unwrap_or_else(|| panic!("a second push was sent"));
    assert_eq!(again.code(), Code::FailedPrecondition, "{again:?}");
    assert_eq!(mpesa.pushes().len(), 1);
    // The payer pays; the callback names the request the answer never did.
    let id = mpesa.created()[0].clone();
    mpesa.resolve(&id, 0);
    let reference = reference_of(&mpesa.pushes()[0]);
    let (status, ack) =
        post_callback_to(&app, &reference, &callback(&id, 0, Some("RLOST1"), PRICE_PRO)).await;
    assert_eq!((status, ack), (200, 0));
    assert_eq!(settled(&app, &id).await.0, "paid");
    app.settle().await;
    assert_eq!(
        subscription(&app, user).await.effective_tier,
        i32::from(Tier::Pro)
    );
    app.stop().await;
}

/// Item 2: a push still waiting on the phone did not stop a Stripe checkout: both could be
/// paid.
async fn a_waiting_push_blocks_a_stripe_checkout(backend: Backend) {
    let mpesa = FakeMpesa::start().await;
    let stripe = crate::fake_stripe::FakeStripe::start().await;
    let settings = mpesa.settings().into_iter().chain(stripe.settings());
    let app = crate::money_seams::spawn_with_settings(backend, settings.collect()).await;
    push(&app, "wait-bo", Tier::Pro).await;
    let refused = try_checkout(&app, "wait-bo", Tier::Pro, PaymentProvider::Stripe)
        .await
        .err()
        .unwrap_or_else(|| panic!("a Stripe checkout opened beside a waiting push"));
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(stripe.requests("POST", "/v1/checkout/sessions").is_empty());
    app.stop().await;
}

/// Pays one period of `tier` and waits until it is applied; returns the CheckoutRequestID.
async fn pay(app: &TestApp, mpesa: &FakeMpesa, user: &str, tier: Tier) -> String {
    let id = push(app, user, tier).await;
    mpesa.resolve(&id, 0);
    let amount = if tier == Tier::Premium {
        PRICE_PREMIUM
    } else {
        PRICE_PRO
    };
    let receipt = format!("R{}", &id[id.len() - 6..]);
    post_callback(app, &callback(&id, 0, Some(&receipt), amount)).await;
    assert_eq!(settled(app, &id).await.0, "paid");
    app.settle().await;
    id
}

/// Item 5: PRO then PREMIUM used to turn the PRO days into PREMIUM days (and PRO on top of
/// PREMIUM downgraded paid PREMIUM days). Each period keeps its tier, in order.
async fn prepaid_periods_keep_their_tier_in_order(backend: Backend) {
    let (app, mpesa) = spawn_with(backend, &[]).await;
    let user = "pre-cy";
    pay(&app, &mpesa, user, Tier::Pro).await;
    let pro = subscription(&app, user).await;
    let pro_end = pro.current_period_end.unwrap_or_default().seconds;
    pay(&app, &mpesa, user, Tier::Premium).await;
    let sub = subscription(&app, user).await;
    assert_eq!(sub.effective_tier, i32::from(Tier::Pro), "PRO days became PREMIUM");
    assert_eq!(sub.current_period_end.unwrap_or_default().seconds, pro_end);
    assert!(
        app.activity_kinds(user)
            .await
            .contains(&"subscription.queued".to_string())
    );
    // The PRO period runs out: the PREMIUM one follows, with its own 30 days.
    let shift = Duration::seconds(pro_end - Utc::now().timestamp()) + Duration::hours(1);
    for table in ["subscriptions", "mpesa_payments"] {
        let (start, end) = if table == "subscriptions" {
            ("current_period_start", "current_period_end")
        } else {
            ("period_start", "period_end")
        };
        let sql = format!(
            "UPDATE {table} SET {start} = {start} - $1 * INTERVAL '1 second', \
             {end} = {end} - $1 * INTERVAL '1 second' WHERE user_id = '{user}'"
        );
        let lite = format!(
            "UPDATE {table} SET {start} = strftime('%Y-%m-%dT%H:%M:%fZ', {start}, '-' || $1 || ' seconds'), \
             {end} = strftime('%Y-%m-%dT%H:%M:%fZ', {end}, '-' || $1 || ' seconds') WHERE user_id = '{user}'"
        );
        exec!(&app.pool, pg: sqlx::AssertSqlSafe(sql), sqlite: sqlx::AssertSqlSafe(lite), shift.num_seconds() as f64);
    }
    let premium = wait_for("the PREMIUM period started", || async {
        let sub = subscription(&app, user).await;
        (sub.effective_tier == i32::from(Tier::Premium)).then_some(sub)
    })
    .await;
    let end = premium.current_period_end.unwrap_or_default().seconds;
    assert!(
        (end - (Utc::now().timestamp() + 30 * 86_400 - 3_600)).abs() < 120,
        "the PREMIUM period keeps its 30 days"
    );
    app.stop().await;
}

/// Item 7: once the callback's and the poller's hints were dead letters, the poller's next
/// hint was a duplicate and nothing asked again: pending forever.
async fn a_request_whose_hints_died_is_still_asked_about(backend: Backend) {
    let (app, mpesa) = spawn_with(backend, &[("--webhook-max-attempts", "1")]).await;
    let user = "dead-di";
    let id = push(&app, user, Tier::Pro).await;
    // Daraja refuses the query for a while: every hint so far dies.
    mpesa.query_says(&id, Some(REFUSE));
    post_callback(&app, &callback(&id, 1037, None, PRICE_PRO)).await;
    eventually("the callback's and the poller's hints died", || async {
        app.count(
            "webhook_inbox",
            &format!("event_id IN ('mpesa-callback-{id}', 'mpesa-poll-{id}') AND state = 'failed'"),
        )
        .await
            == 2
    })
    .await;
    // The query answers again: the payer paid.
    mpesa.query_says(&id, None);
    mpesa.resolve(&id, 0);
    assert_eq!(settled(&app, &id).await.0, "paid");
    app.stop().await;
}

/// Item 7: a request M-Pesa never confirms either way used to stay pending forever (no new
/// push, and erasure answered UNAVAILABLE). After a day it is failed and flagged.
async fn a_request_never_confirmed_is_failed_and_flagged_after_a_day(backend: Backend) {
    let (app, mpesa) = spawn_with(backend, &[]).await;
    let user = "day-ed";
    let id = push(&app, user, Tier::Pro).await;
    let day_ago = Utc::now() - Duration::hours(25);
    exec!(&app.pool, "UPDATE mpesa_payments SET created_at = $1", day_ago);
    let (state, reason) = settled(&app, &id).await;
    assert_eq!(state, "failed");
    assert!(reason.unwrap_or_default().contains("support"));
    assert!(
        app.activity_kinds(user)
            .await
            .contains(&"subscription.needs_attention".to_string())
    );
    push(&app, user, Tier::Pro).await;
    assert_eq!(mpesa.pushes().len(), 2);
    app.stop().await;
}

/// Item 8: the STK query lags right after completion ("cancelled" while the callback said
/// paid); it used to make the paid request final-failed.
async fn a_lagging_query_does_not_fail_a_paid_request(backend: Backend) {
    let (app, mpesa) = spawn_with(backend, &[]).await;
    let user = "lag-fa";
    let id = push(&app, user, Tier::Pro).await;
    mpesa.resolve(&id, 0);
    mpesa.query_says(&id, Some(1032));
    post_callback(&app, &callback(&id, 0, Some("RLAG01"), PRICE_PRO)).await;
    // Asked at least twice while the query lags, and still not failed.
    wait_for("the query was asked again", || async {
        (mpesa.queries(&id) >= 2).then_some(())
    })
    .await;
    assert_eq!(payment_state(&app, &id).await.0, "pending");
    mpesa.query_says(&id, None);
    assert_eq!(settled(&app, &id).await.0, "paid");
    app.settle().await;
    assert_eq!(
        subscription(&app, user).await.effective_tier,
        i32::from(Tier::Pro)
    );
    app.stop().await;
}

/// Who holds the lease on `key`, and until when (`None` while no worker holds it).
async fn lease(app: &TestApp, key: &str) -> Option<(String, chrono::DateTime<Utc>)> {
    let sql = "SELECT lease_owner, lease_until FROM webhook_streams \
               WHERE order_key = $1 AND lease_owner IS NOT NULL";
    match &app.pool {
        crate::helpers::TestPool::Sqlite(pool) => {
            sqlx::query_as(sql).bind(key).fetch_optional(pool).await
        }
        crate::helpers::TestPool::Postgres(pool) => {
            sqlx::query_as(sql).bind(key).fetch_optional(pool).await
        }
    }
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Item 11: the event lease was not renewed while a provider call ran, so a confirmation
/// slower than the lease could be taken over and run twice by another worker.
async fn a_slow_confirmation_keeps_its_lease(backend: Backend) {
    // Renewed every 2 s: a takeover needs the holder stalled for 6 s, even on a busy machine.
    let (app, mpesa) = spawn_with(backend, &[("--webhook-lease", "6s")]).await;
    let user = "lease-gi";
    let id = push(&app, user, Tier::Pro).await;
    mpesa.resolve(&id, 0);
    let query = mpesa.server.hold_first(
        1,
        crate::fake_http::HoldPoint::Answer,
        crate::fake_http::route("POST", "/mpesa/stkpushquery"),
    );
    post_callback(&app, &callback(&id, 0, Some("RLEASE"), PRICE_PRO)).await;
    query.arrived(1).await;
    let held_at = Utc::now();
    let (owner, _) = lease(&app, user)
        .await
        .unwrap_or_else(|| panic!("no worker holds the user's events"));
    // Daraja is slow to answer: the same worker renews its lease past its first term (without
    // renewals it ends, and another worker takes the event and asks Daraja again).
    wait_for("the lease was renewed by its holder", || async {
        lease(&app, user)
            .await
            .filter(|(holder, until)| *holder == owner && *until > held_at + Duration::seconds(6))
    })
    .await;
    query.release();
    assert_eq!(settled(&app, &id).await.0, "paid");
    app.settle().await;
    assert_eq!(mpesa.queries(&id), 1, "the confirmation was started twice");
    assert_eq!(
        app.count("invoices", "provider = 'mpesa'").await,
        1,
        "the confirmation ran once"
    );
    app.stop().await;
}

/// The money model found it: a PayPal approve link (which cannot be withdrawn) and a push
/// were both paid; the M-Pesa payment, which this service cannot refund, was only flagged.
async fn a_push_waits_while_a_paypal_link_can_be_approved(backend: Backend) {
    let mpesa = FakeMpesa::start().await;
    let paypal = crate::fake_paypal::FakePaypal::start().await;
    let settings = mpesa.settings().into_iter().chain(paypal.settings());
    let app = crate::money_seams::spawn_with_settings(backend, settings.collect()).await;
    let user = "link-ha";
    let (link, _) = crate::paypal::checkout(&app, user, Tier::Pro).await;
    let refused = app
        .billing()
        .await
        .create_checkout_session(authed(push_request(Tier::Pro, "0712345678"), &token(user)))
        .await
        .err()
        .unwrap_or_else(|| panic!("a push was sent beside an open PayPal link"));
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(mpesa.pushes().is_empty());
    // Approved: the PayPal subscription is the user's, and a push is still refused.
    paypal.activate(&link, Utc::now());
    let refused = app
        .billing()
        .await
        .create_checkout_session(authed(push_request(Tier::Pro, "0712345678"), &token(user)))
        .await
        .err()
        .unwrap_or_else(|| panic!("a push was sent beside a live PayPal subscription"));
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(mpesa.pushes().is_empty());
    app.stop().await;
}
