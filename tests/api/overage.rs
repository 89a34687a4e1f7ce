//! Overage: a PRO user opts in to cards beyond the limit; CheckLimit allows them and each extra
//! card-month is reported once to Stripe's meter, with an identifier that makes a resend
//! harmless (a lost answer, another replica).

use nexus_billing::grpc::proto::billing::{
    BillingInterval, ChangePlanRequest, CheckLimitRequest, GetUsageRequest, Overage, Resource,
    SetOverageRequest, Tier,
};
use tonic::Code;

use crate::{
    fake_stripe::{FakeStripe, METER_EVENT, PRICE_EXTRA_CARD},
    helpers::{Backend, TestApp, authed, token, wait_for},
    subscription_lifecycle::{subscribe, subscription},
};

crate::on_both_backends!(
    extra_cards_are_allowed_after_opting_in_and_each_card_month_is_reported_once,
    a_card_month_stripe_refuses_for_good_is_given_up_and_holds_nothing_up,
    overage_is_refused_where_it_is_not_sold_or_the_plan_is_not_pro,
);

async fn spawn(backend: Backend) -> (TestApp, FakeStripe) {
    TestApp::spawn_with_stripe_and(
        backend,
        &[
            ("--stripe-price-id-extra-card", PRICE_EXTRA_CARD),
            ("--overage-report-interval", "50ms"),
        ],
    )
    .await
}

async fn set_overage(app: &TestApp, user: &str, enabled: bool) -> Result<Overage, tonic::Status> {
    app.billing()
        .await
        .set_overage(authed(SetOverageRequest { enabled }, &token(user)))
        .await
        .map(|r| r.into_inner().overage.unwrap_or_default())
}

async fn may_add_cards(app: &TestApp, user: &str, quantity: i64) -> (bool, i64) {
    let answer = app
        .billing()
        .await
        .check_limit(authed(
            CheckLimitRequest {
                resource: Resource::Cards.into(),
                quantity,
                ..Default::default()
            },
            &token(user),
        ))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner();
    (answer.allowed, answer.extra)
}

async fn overage(app: &TestApp, user: &str) -> Overage {
    app.billing()
        .await
        .get_usage(authed(GetUsageRequest {}, &token(user)))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner()
        .overage
        .unwrap_or_default()
}

async fn extra_cards_are_allowed_after_opting_in_and_each_card_month_is_reported_once(
    backend: Backend,
) {
    let (app, stripe) = spawn(backend).await;
    let user = "oli";
    let (customer, sub_id) = subscribe(&app, &stripe, user, Tier::Pro).await;
    wait_for("the subscription is stored", || async {
        (subscription(&app, user).await.tier == i32::from(Tier::Pro)).then_some(())
    })
    .await;
    app.add_cards(user, 5).await;
    assert_eq!(may_add_cards(&app, user, 1).await, (false, 0));
    let before = overage(&app, user).await;
    assert!(before.available && !before.enabled, "{before:?}");

    let on = set_overage(&app, user, true)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(on.enabled);
    assert_eq!(on.unit_price.map(|m| (m.amount_minor, m.currency)), Some((200, "usd".into())));
    let added = stripe.requests("POST", "/v1/subscription_items");
    assert_eq!(added.len(), 1);
    assert_eq!(added[0].form.get("price").map(String::as_str), Some(PRICE_EXTRA_CARD));
    assert_eq!(added[0].form.get("subscription"), Some(&sub_id));
    // Asked again: the item is there, nothing is added.
    set_overage(&app, user, true)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(stripe.requests("POST", "/v1/subscription_items").len(), 1);
    // The plan is still read from its own item (the extra item came first): no price is
    // flagged as unknown.
    assert_eq!(subscription(&app, user).await.tier, i32::from(Tier::Pro));
    assert_eq!(
        app.count("activity_logs", "kind = 'subscription.needs_attention'")
            .await,
        0
    );

    assert_eq!(may_add_cards(&app, user, 2).await, (true, 2));
    app.add_cards(user, 2).await;
    let events = wait_for("two extra card-months reported", || async {
        let events = stripe.meter_events();
        (events.len() == 2).then_some(events)
    })
    .await;
    for event in &events {
        assert_eq!(event.get("event_name").map(String::as_str), Some(METER_EVENT));
        assert_eq!(event.get("payload[stripe_customer_id]"), Some(&customer));
        assert_eq!(event.get("payload[value]").map(String::as_str), Some("1"));
    }
    assert_ne!(events[0].get("identifier"), events[1].get("identifier"));
    let shown = overage(&app, user).await;
    assert_eq!(shown.extra_cards, 2);
    assert_eq!(shown.monthly_cost.map(|m| m.amount_minor), Some(400));

    // The peak of the month counts: a card removed and added again is not a new card-month.
    crate::exec!(
        &app.pool,
        "DELETE FROM cards WHERE id IN (SELECT id FROM cards WHERE user_id = $1 LIMIT 1)",
        user
    );
    app.add_cards(user, 1).await;
    // A third extra card whose answer is lost: sent again with the same identifier, counted once.
    stripe.lose_meter_answers(1);
    app.add_cards(user, 1).await;
    wait_for("the third card-month reported and acknowledged", || async {
        let pending = app.count("overage_reports", "state = 'pending'").await;
        let done = app.count("overage_reports", "state = 'reported'").await;
        (pending == 0 && done == 3).then_some(())
    })
    .await;
    assert_eq!(stripe.meter_events().len(), 3);
    assert!(
        stripe.requests("POST", "/v1/billing/meter_events").len() >= 4,
        "the lost answer was sent again"
    );

    // Stripe cannot mix a yearly plan with the monthly metered item (classic billing mode):
    // the switch is refused here, not half-done at Stripe.
    let updates_before = stripe.requests("POST", "/v1/subscriptions/").len();
    let yearly = app
        .billing()
        .await
        .change_plan(authed(
            ChangePlanRequest {
                tier: Tier::Pro.into(),
                interval: BillingInterval::Year.into(),
            },
            &token(user),
        ))
        .await
        .err();
    assert_eq!(yearly.as_ref().map(|s| s.code()), Some(Code::FailedPrecondition));
    assert!(yearly.is_some_and(|s| s.message().contains("extra-card")));
    assert_eq!(stripe.requests("POST", "/v1/subscriptions/").len(), updates_before);

    // Out again: no cards beyond the limit.
    let off = set_overage(&app, user, false)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(off.available && !off.enabled);
    assert!(!may_add_cards(&app, user, 1).await.0);
    app.stop().await;
}

async fn overage_is_refused_where_it_is_not_sold_or_the_plan_is_not_pro(backend: Backend) {
    // Not sold: the setting is named.
    let (plain, stripe) = TestApp::spawn_with_stripe(backend).await;
    subscribe(&plain, &stripe, "pia", Tier::Pro).await;
    let refused = set_overage(&plain, "pia", true).await.err();
    assert_eq!(refused.as_ref().map(|s| s.code()), Some(Code::FailedPrecondition));
    assert!(
        refused.is_some_and(|s| s.message().contains("STRIPE_PRICE_ID_EXTRA_CARD")),
        "the refusal names the setting"
    );
    assert!(!overage(&plain, "pia").await.available);
    plain.stop().await;

    // Sold, but FREE and PREMIUM cannot buy extra cards.
    let (app, stripe) = spawn(backend).await;
    subscribe(&app, &stripe, "quinn", Tier::Premium).await;
    wait_for("the subscription is stored", || async {
        (subscription(&app, "quinn").await.tier == i32::from(Tier::Premium)).then_some(())
    })
    .await;
    for user in ["nobody", "quinn"] {
        let refused = set_overage(&app, user, true).await.err().map(|s| s.code());
        assert_eq!(refused, Some(Code::FailedPrecondition), "{user}");
        assert!(!overage(&app, user).await.available, "{user}");
    }
    assert!(stripe.requests("POST", "/v1/subscription_items").is_empty());
    app.stop().await;
}

async fn a_card_month_stripe_refuses_for_good_is_given_up_and_holds_nothing_up(backend: Backend) {
    let (app, stripe) = spawn(backend).await;
    let mut customers = Vec::new();
    for user in ["gone", "kept"] {
        let (customer, _) = subscribe(&app, &stripe, user, Tier::Pro).await;
        wait_for("the subscription is stored", || async {
            (subscription(&app, user).await.tier == i32::from(Tier::Pro)).then_some(())
        })
        .await;
        set_overage(&app, user, true)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        customers.push(customer);
    }
    // The first customer is deleted at Stripe: its meter events are refused for good.
    stripe.forget_customer(&customers[0]);
    app.add_cards("gone", 6).await;
    wait_for("the refused card-month is given up", || async {
        (app.count("overage_reports", "user_id = 'gone' AND state = 'failed'").await == 1)
            .then_some(())
    })
    .await;
    // The other user's card-months still go out.
    app.add_cards("kept", 7).await;
    wait_for("the other user's card-months reported", || async {
        (app.count("overage_reports", "user_id = 'kept' AND state = 'reported'").await == 2)
            .then_some(())
    })
    .await;
    assert_eq!(stripe.meter_events().len(), 2);
    assert_eq!(app.count("overage_reports", "state = 'pending'").await, 0);
    app.stop().await;
}
