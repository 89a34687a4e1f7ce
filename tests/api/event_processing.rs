//! Webhook intake and the event processor against a slow, rate-limited and failing fake
//! Stripe: the intake never waits on Stripe, every event is applied exactly once in any order
//! with few Stripe calls, failures wait and retry, permanent ones become dead letters that can
//! be replayed, and the reconciler brings in what was never delivered.

use std::{process::Command, time::Duration};

use chrono::Utc;
use nexus_billing::grpc::proto::billing::{CheckLimitRequest, Resource, SubscriptionStatus, Tier};
use serde_json::json;

use crate::{
    fake_http::{HoldPoint, route},
    fake_stripe::{FakeStripe, PRICE_PREMIUM, PRICE_PRO, SubSpec, sign_now},
    helpers::{Backend, PATIENCE, TestApp, authed, eventually, service_token},
    subscription_lifecycle::{period, subscribe, subscription},
};

crate::on_both_backends!(
    the_intake_answers_while_stripe_is_down_and_the_events_apply_once_it_is_back,
    three_servers_and_duplicate_deliveries_apply_each_event_once,
    a_429_storm_delays_events_without_losing_them,
    the_stripe_budget_spaces_the_event_processors_fetches,
    a_permanent_failure_is_a_dead_letter_until_replayed,
    a_slow_fetch_never_overwrites_a_newer_snapshot,
    the_reconciler_brings_in_an_undelivered_event_and_adopts_a_live_subscription,
    two_paid_checkouts_end_with_one_live_subscription_and_a_refund,
    check_limit_and_the_intake_answer_while_stripe_answers_nothing,
);

const BIN: &str = env!("CARGO_BIN_EXE_nexus-billing");

/// Runs the binary against the app's database with the fake's Stripe settings.
pub fn run_cli(app: &TestApp, stripe: &FakeStripe, args: &[&str]) -> (bool, String) {
    let mut command = Command::new(BIN);
    command
        .env_clear()
        .env("DATABASE_URL", app.database_url())
        .env("JWT_SECRET", crate::helpers::JWT_SECRET)
        .env("ENCRYPTION_KEY", crate::helpers::ENCRYPTION_KEY)
        .env("LOG_LEVEL", "warn")
        .env("DATA_DIR", std::env::temp_dir());
    for (flag, value) in stripe.settings() {
        command.arg(format!("{flag}={value}"));
    }
    let output = command
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// A user with a customer at the fake (created through a checkout) and an active subscription
/// at the fake that this service has not heard of yet. Returns (customer, subscription).
async fn paid_at_stripe(app: &TestApp, stripe: &FakeStripe, user: &str) -> (String, String) {
    let (customer, sub_id) = crate::webhooks::checkout_only(app, stripe, user).await;
    let (start, end) = period();
    stripe.put_subscription(&SubSpec {
        id: &sub_id,
        customer: &customer,
        price: PRICE_PRO,
        status: "active",
        period_start: start,
        period_end: end,
        cancel_at_period_end: false,
    });
    (customer, sub_id)
}

async fn tier_of(app: &TestApp, user: &str) -> i32 {
    subscription(app, user).await.effective_tier
}

async fn the_intake_answers_while_stripe_is_down_and_the_events_apply_once_it_is_back(
    backend: Backend,
) {
    let (app, stripe) = TestApp::spawn_with_stripe(backend).await;
    let (customer, sub_id) = paid_at_stripe(&app, &stripe, "ines").await;
    // Stripe takes the fetch and does not answer until released.
    let fetch = stripe
        .server
        .hold(HoldPoint::Arrival, route("GET", "/v1/subscriptions/"));
    // A completed checkout carries no subscription state: it needs a fetch.
    let (_, body) = stripe.event(
        "checkout.session.completed",
        &stripe.checkout_completed("ines", &customer, &sub_id),
    );
    let (status, text) = app.deliver(&body, Some(&sign_now(&body))).await;
    assert_eq!(
        (status, text.as_str()),
        (200, "ok"),
        "answered while the fetch it needs is still unanswered"
    );
    fetch.arrived(1).await;
    // Then Stripe fails: the event stays pending and is retried.
    stripe.fail_reads(true);
    fetch.release();
    eventually("the processor retried the failed fetch", || async {
        stripe.requests("GET", "/v1/subscriptions/").len() >= 2
    })
    .await;
    assert_eq!(tier_of(&app, "ines").await, i32::from(Tier::Free));
    assert_eq!(app.count("webhook_inbox", "state = 'pending'").await, 1);

    stripe.fail_reads(false);
    app.settle().await;
    assert_eq!(tier_of(&app, "ines").await, i32::from(Tier::Pro));
    assert_eq!(app.count("webhook_inbox", "outcome = 'fetched'").await, 1);
    app.stop().await;
}


async fn three_servers_and_duplicate_deliveries_apply_each_event_once(backend: Backend) {
    let (app, stripe) = TestApp::spawn_with_stripe(backend).await;
    let settings = stripe.settings();
    let overrides: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let second = app.spawn_beside(&overrides).await;
    let third = app.spawn_beside(&overrides).await;
    stripe.set_delay(Duration::from_millis(50));
    let users: Vec<String> = (0..6).map(|i| format!("trio{i}")).collect();
    let mut bodies = Vec::new();
    for user in &users {
        let (customer, sub_id) = paid_at_stripe(&app, &stripe, user).await;
        let sub = stripe
            .subscription(&sub_id)
            .unwrap_or_else(|| panic!("sub"));
        let created = Utc::now().timestamp() - 60;
        bodies.push(stripe.event_at(
            "checkout.session.completed",
            &stripe.checkout_completed(user, &customer, &sub_id),
            created,
        ));
        bodies.push(stripe.event_at("customer.subscription.created", &sub, created + 1));
    }
    let urls = [
        app.http_url("/billing/webhook"),
        second.http_url("/billing/webhook"),
        third.http_url("/billing/webhook"),
    ];
    let client = reqwest::Client::new();
    let mut deliveries = tokio::task::JoinSet::new();
    for (_, body) in &bodies {
        // Each event three times, to each server at once.
        for url in &urls {
            let request = client
                .post(url)
                .header("stripe-signature", sign_now(body))
                .body(body.clone());
            deliveries.spawn(async move {
                request
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0)
            });
        }
    }
    while let Some(status) = deliveries.join_next().await {
        assert_eq!(status.unwrap_or_else(|e| panic!("{e}")), 200);
    }
    app.settle().await;
    assert_eq!(app.count("webhook_inbox", "").await, bodies.len() as i64);
    for user in &users {
        assert_eq!(tier_of(&app, user).await, i32::from(Tier::Pro), "{user}");
        let kinds = app.activity_kinds(user).await;
        assert_eq!(
            kinds
                .iter()
                .filter(|k| *k == "subscription.started")
                .count(),
            1,
            "{user}: {kinds:?}"
        );
    }
    second.stop().await;
    third.stop().await;
    app.stop().await;
}

async fn a_429_storm_delays_events_without_losing_them(backend: Backend) {
    let (app, stripe) = TestApp::spawn_with_stripe(backend).await;
    let (customer, sub_id) = paid_at_stripe(&app, &stripe, "jo").await;
    stripe.throttle_next(3);
    let (_, body) = stripe.event(
        "checkout.session.completed",
        &stripe.checkout_completed("jo", &customer, &sub_id),
    );
    app.deliver_signed(&body).await;
    assert_eq!(stripe.throttled(), 3);
    assert_eq!(tier_of(&app, "jo").await, i32::from(Tier::Pro));
    assert_eq!(app.count("webhook_inbox", "state = 'failed'").await, 0);
    app.stop().await;
}

/// The request budget is applied to the event processor's fetches: 12 fetches at 5 a second
/// cannot all start in less than 2 seconds. (A lower bound holds on any machine, however busy;
/// that the budget keeps under Stripe's limit in every window is proven on a fake clock, in
/// `payments::stripe_budget`'s unit tests.)
async fn the_stripe_budget_spaces_the_event_processors_fetches(backend: Backend) {
    let (app, stripe) = TestApp::spawn_with_stripe_and(
        backend,
        &[
            ("--stripe-max-requests-per-second", "5"),
            ("--webhook-workers", "4"),
        ],
    )
    .await;
    let mut bodies = Vec::new();
    for i in 0..12 {
        let user = format!("budget{i}");
        let (customer, sub_id) = paid_at_stripe(&app, &stripe, &user).await;
        bodies.push(
            stripe
                .event(
                    "checkout.session.completed",
                    &stripe.checkout_completed(&user, &customer, &sub_id),
                )
                .1,
        );
    }
    let before = stripe.received().len();
    let started = std::time::Instant::now();
    for body in &bodies {
        let (status, _) = app.deliver(body, Some(&sign_now(body))).await;
        assert_eq!(status, 200);
    }
    app.settle().await;
    let fetches = stripe.received().len() - before;
    assert_eq!(fetches, 12, "one fetch per checkout");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "12 fetches under a budget of 5/s took only {:?}",
        started.elapsed()
    );
    for i in 0..12 {
        assert_eq!(
            tier_of(&app, &format!("budget{i}")).await,
            i32::from(Tier::Pro)
        );
    }
    app.stop().await;
}


async fn a_permanent_failure_is_a_dead_letter_until_replayed(backend: Backend) {
    let (app, stripe) =
        TestApp::spawn_with_stripe_and(backend, &[("--webhook-max-attempts", "2")]).await;
    let (customer, _) = paid_at_stripe(&app, &stripe, "kim").await;
    // The checkout names a subscription Stripe does not have (yet).
    let (event_id, body) = stripe.event(
        "checkout.session.completed",
        &stripe.checkout_completed("kim", &customer, "sub_kim_late"),
    );
    let (status, _) = app.deliver(&body, Some(&sign_now(&body))).await;
    assert_eq!(status, 200);
    eventually("the event became a dead letter", || async {
        app.count("webhook_inbox", "state = 'failed'").await == 1
    })
    .await;
    assert_eq!(
        stripe
            .requests("GET", "/v1/subscriptions/sub_kim_late")
            .len(),
        2,
        "two attempts, then given up"
    );
    let (ok, listed) = run_cli(&app, &stripe, &["webhooks", "failed"]);
    assert!(ok, "{listed}");
    assert!(listed.contains(&event_id), "{listed}");
    assert!(listed.contains("not found"), "{listed}");

    // The cause is fixed; the replay applies it.
    let (start, end) = period();
    stripe.put_subscription(&SubSpec {
        id: "sub_kim_late",
        customer: &customer,
        price: PRICE_PREMIUM,
        status: "active",
        period_start: start,
        period_end: end,
        cancel_at_period_end: false,
    });
    let (ok, text) = run_cli(&app, &stripe, &["webhooks", "replay", &event_id]);
    assert!(ok, "{text}");
    app.settle().await;
    assert_eq!(tier_of(&app, "kim").await, i32::from(Tier::Premium));
    let (ok, _) = run_cli(&app, &stripe, &["webhooks", "replay", &event_id]);
    assert!(!ok, "only a failed event can be replayed");
    app.stop().await;
}

async fn a_slow_fetch_never_overwrites_a_newer_snapshot(backend: Backend) {
    let (app, stripe) = TestApp::spawn_with_stripe(backend).await;
    let user = "lena";
    let (_, sub_id) = subscribe(&app, &stripe, user, Tier::Pro).await;
    // The stored period ended long ago with no news since: the reconciler re-reads it.
    crate::exec!(
        &app.pool,
        "UPDATE subscriptions SET current_period_end = $1, state_as_of = NULL WHERE user_id = $2",
        Utc::now() - chrono::Duration::days(30),
        user
    );
    // Stripe reads the subscription (still active) when the reconciler asks, and its answer
    // comes only when released.
    let fetch = stripe.server.hold_first(
        1,
        HoldPoint::Answer,
        route("GET", &format!("/v1/subscriptions/{sub_id}")),
    );
    let reconcile = {
        let args = ["reconcile"];
        let (app_url, settings) = (app.database_url().to_string(), stripe.settings());
        tokio::task::spawn_blocking(move || {
            let mut command = Command::new(BIN);
            command
                .env_clear()
                .env("DATABASE_URL", app_url)
                .env("JWT_SECRET", crate::helpers::JWT_SECRET)
                .env("ENCRYPTION_KEY", crate::helpers::ENCRYPTION_KEY)
                .env("LOG_LEVEL", "warn")
                .env("DATA_DIR", std::env::temp_dir());
            for (flag, value) in settings {
                command.arg(format!("{flag}={value}"));
            }
            command
                .args(args)
                .output()
                .unwrap_or_else(|e| panic!("{e}"))
        })
    };
    // The reconciler's fetch has been answered "active" (the answer is on its way) ...
    fetch.arrived(1).await;
    // ... when a newer snapshot (cancelled) arrives and is applied.
    let canceled = stripe.patch_subscription(&sub_id, json!({ "status": "canceled" }));
    let (_, body) = stripe.event_at(
        "customer.subscription.deleted",
        &canceled,
        Utc::now().timestamp() + 1,
    );
    app.deliver_signed(&body).await;
    assert_eq!(
        subscription(&app, user).await.status,
        i32::from(SubscriptionStatus::Canceled)
    );
    // ... and arrives now, after the newer snapshot.
    fetch.release();
    let output = reconcile.await.unwrap_or_else(|e| panic!("{e}"));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        subscription(&app, user).await.status,
        i32::from(SubscriptionStatus::Canceled),
        "the slow fetch (active) did not overwrite the newer cancellation"
    );
    app.stop().await;
}

async fn the_reconciler_brings_in_an_undelivered_event_and_adopts_a_live_subscription(
    backend: Backend,
) {
    let (app, stripe) =
        TestApp::spawn_with_stripe_and(backend, &[("--duplicate-subscription-policy", "flag")])
            .await;
    let user = "milo";
    let (customer, first) = subscribe(&app, &stripe, user, Tier::Pro).await;
    // A second subscription (paid in another tab) is flagged and kept at Stripe.
    let (start, end) = period();
    let second = stripe.put_subscription(&SubSpec {
        id: "sub_milo_second",
        customer: &customer,
        price: PRICE_PREMIUM,
        status: "active",
        period_start: start,
        period_end: end,
        cancel_at_period_end: false,
    });
    let (_, body) = stripe.event("customer.subscription.created", &second);
    app.deliver_signed(&body).await;
    assert_eq!(subscription(&app, user).await.tier, i32::from(Tier::Pro));

    // The first ends, and its event is never delivered (the endpoint was down).
    let canceled = stripe.patch_subscription(&first, json!({ "status": "canceled" }));
    let (lost_id, lost) = stripe.event_at(
        "customer.subscription.deleted",
        &canceled,
        Utc::now().timestamp() + 1,
    );
    stripe.publish(&lost);
    // Older, already delivered events are listed too (and stay single).
    stripe.publish(&body);
    let (ok, first_run) = run_cli(&app, &stripe, &["reconcile"]);
    assert!(ok, "{first_run}");
    assert!(first_run.contains("added 1"), "{first_run}");
    app.settle().await;
    assert_eq!(
        app.count(
            "webhook_inbox",
            &format!("event_id = '{lost_id}' AND state = 'done' AND outcome = 'applied'")
        )
        .await,
        1
    );
    // The stored one has ended: the live second one is adopted, by this run if the server
    // applied the brought-in event before the run looked, or else by the next.
    let (ok, second_run) = run_cli(&app, &stripe, &["reconcile"]);
    assert!(ok, "{second_run}");
    assert!(second_run.contains("added 0"), "{second_run}");
    let adopted = [&first_run, &second_run]
        .iter()
        .filter(|t| t.contains("adopted 1"))
        .count();
    assert_eq!(adopted, 1, "{first_run}\n{second_run}");
    let sub = subscription(&app, user).await;
    assert_eq!(sub.tier, i32::from(Tier::Premium));
    assert_eq!(sub.effective_tier, i32::from(Tier::Premium));
    assert_eq!(sub.status, i32::from(SubscriptionStatus::Active));
    app.stop().await;
}

async fn two_paid_checkouts_end_with_one_live_subscription_and_a_refund(backend: Backend) {
    let (app, stripe) = TestApp::spawn_with_stripe(backend).await;
    let user = "nora";
    let (customer, first) = subscribe(&app, &stripe, user, Tier::Pro).await;
    let (start, end) = period();
    stripe.put_subscription(&SubSpec {
        id: "sub_nora_tab2",
        customer: &customer,
        price: PRICE_PRO,
        status: "active",
        period_start: start,
        period_end: end,
        cancel_at_period_end: false,
    });
    let (_, body) = stripe.event(
        "checkout.session.completed",
        &stripe.checkout_completed(user, &customer, "sub_nora_tab2"),
    );
    app.deliver_signed(&body).await;
    let live: Vec<String> = ["sub_nora_tab2", first.as_str()]
        .iter()
        .filter(|id| {
            stripe
                .subscription(id)
                .is_some_and(|s| s["status"] == "active")
        })
        .map(|id| id.to_string())
        .collect();
    assert_eq!(live, vec![first.clone()], "one live subscription at Stripe");
    let refunds = stripe.refunds();
    assert_eq!(refunds.len(), 1);
    assert_eq!(
        refunds[0].get("payment_intent").map(String::as_str),
        Some("pi_sub_nora_tab2")
    );
    let kinds = app.activity_kinds(user).await;
    assert!(
        kinds.iter().any(|k| k == "subscription.duplicate_refunded"),
        "{kinds:?}"
    );
    assert_eq!(subscription(&app, user).await.tier, i32::from(Tier::Pro));
    app.stop().await;
}

/// While Stripe answers nothing at all, 64 deliveries are each acknowledged and CheckLimit
/// answers: neither waits on Stripe, nor on the event workers that do.
async fn check_limit_and_the_intake_answer_while_stripe_answers_nothing(backend: Backend) {
    let (app, stripe) = TestApp::spawn_with_stripe(backend).await;
    let mut bodies = Vec::new();
    for i in 0..8 {
        let user = format!("slow{i}");
        let (customer, sub_id) = paid_at_stripe(&app, &stripe, &user).await;
        for _ in 0..8 {
            bodies.push(
                stripe
                    .event(
                        "checkout.session.completed",
                        &stripe.checkout_completed(&user, &customer, &sub_id),
                    )
                    .1,
            );
        }
    }
    let stripe_silent = stripe.server.hold(HoldPoint::Arrival, route("*", "/"));
    let url = app.http_url("/billing/webhook");
    let client = reqwest::Client::new();
    let mut deliveries = tokio::task::JoinSet::new();
    for body in bodies {
        let request = client
            .post(&url)
            .header("stripe-signature", sign_now(&body))
            .body(body);
        deliveries.spawn(async move {
            request
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        });
    }
    while let Some(result) = deliveries.join_next().await {
        assert_eq!(result.unwrap_or_else(|e| panic!("{e}")), 200);
    }
    // The workers are waiting on Stripe now.
    stripe_silent.arrived(1).await;
    let mut billing = app.billing().await;
    for _ in 0..20 {
        let answer = tokio::time::timeout(
            PATIENCE,
            billing.check_limit(authed(
                CheckLimitRequest {
                    user_id: "slow0".into(),
                    resource: Resource::Cards.into(),
                    quantity: 1,
                },
                &service_token("card-service"),
            )),
        )
        .await
        .unwrap_or_else(|_| panic!("CheckLimit hung while Stripe answered nothing"));
        answer.unwrap_or_else(|e| panic!("CheckLimit failed while Stripe answered nothing: {e}"));
    }
    assert_eq!(app.count("webhook_inbox", "state = 'done'").await, 0);
    stripe_silent.release();
    app.settle().await;
    assert_eq!(tier_of(&app, "slow7").await, i32::from(Tier::Pro));
    app.stop().await;
}
