//! Prices from Stripe (monthly and yearly, with `currency_options`), the payer's currency,
//! yearly checkouts and plan changes, trials and promotion codes, against the Stripe fake.

use nexus_billing::grpc::proto::billing::{
    BillingInterval, ChangePlanRequest, CreateCheckoutSessionRequest, CreateCheckoutSessionResponse,
    ListPlansRequest,
    ListPlansResponse, SubscriptionStatus, Tier,
};
use tonic::Code;

use crate::{
    exec,
    fake_stripe::{
        FakeStripe, PRICE_PREMIUM_YEARLY, PRICE_PRO, PRICE_PRO_YEARLY, SECRET_KEY, SubSpec,
        WEBHOOK_SECRET,
    },
    helpers::{ALLOWED_ORIGIN, Backend, TestApp, authed, eventually, token, wait_for},
    subscription_lifecycle::{subscribe, subscription},
};

crate::on_both_backends!(
    plans_show_what_stripe_charges_in_the_asked_currency,
    prices_are_kept_refreshed_and_outlive_a_stripe_outage,
    a_yearly_checkout_in_euros_asks_stripe_for_that_price_and_currency,
    a_customer_keeps_the_currency_of_their_first_subscription,
    a_plan_change_can_switch_to_yearly,
    yearly_is_refused_where_no_yearly_price_is_set,
    trials_go_to_first_subscriptions_only_and_show_their_end,
);

async fn plans(app: &TestApp, currency: &str) -> Result<ListPlansResponse, tonic::Status> {
    app.billing()
        .await
        .list_plans(authed(
            ListPlansRequest {
                currency: currency.into(),
            },
            &token("shopper"),
        ))
        .await
        .map(|r| r.into_inner())
}

/// (interval, amount, currency, months_free, saving) of a tier's prices.
fn prices_of(list: &ListPlansResponse, tier: Tier) -> Vec<(i32, i64, String, i32, String)> {
    let plan = list
        .plans
        .iter()
        .find(|p| p.tier == i32::from(tier))
        .unwrap_or_else(|| panic!("no {tier:?} plan"));
    plan.prices
        .iter()
        .map(|p| {
            let amount = p.amount.clone().unwrap_or_default();
            (
                p.interval,
                amount.amount_minor,
                amount.currency,
                p.months_free,
                p.saving.clone(),
            )
        })
        .collect()
}

fn checkout(tier: Tier, interval: BillingInterval, currency: &str) -> CreateCheckoutSessionRequest {
    CreateCheckoutSessionRequest {
        tier: tier.into(),
        success_url: format!("{ALLOWED_ORIGIN}/billing/done"),
        cancel_url: format!("{ALLOWED_ORIGIN}/billing"),
        interval: interval.into(),
        currency: currency.into(),
        ..Default::default()
    }
}

async fn open_checkout(
    app: &TestApp,
    user: &str,
    request: CreateCheckoutSessionRequest,
) -> Result<CreateCheckoutSessionResponse, tonic::Status> {
    app.billing()
        .await
        .create_checkout_session(authed(request, &token(user)))
        .await
        .map(|r| r.into_inner())
}

const MONTH: i32 = BillingInterval::Month as i32;
const YEAR: i32 = BillingInterval::Year as i32;

async fn plans_show_what_stripe_charges_in_the_asked_currency(backend: Backend) {
    let (app, stripe) = TestApp::spawn_with_stripe(backend).await;
    let usd = plans(&app, "").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(usd.currency, "usd");
    assert_eq!(usd.currencies, ["eur", "usd"]);
    assert_eq!(
        prices_of(&usd, Tier::Pro),
        [
            (MONTH, 900, "usd".into(), 0, String::new()),
            (YEAR, 9000, "usd".into(), 2, "2 months free".into())
        ]
    );
    // The plan's own price is the monthly one.
    let pro = usd.plans.iter().find(|p| p.tier == i32::from(Tier::Pro));
    assert_eq!(
        pro.and_then(|p| p.price.clone()).map(|m| m.amount_minor),
        Some(900)
    );
    let eur = plans(&app, "eur").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(eur.currency, "eur");
    assert_eq!(
        prices_of(&eur, Tier::Premium),
        [
            (MONTH, 2700, "eur".into(), 0, String::new()),
            (YEAR, 27000, "eur".into(), 2, "2 months free".into())
        ]
    );
    assert!(prices_of(&eur, Tier::Free).is_empty());
    // Each price was read once, with its currency options expanded.
    let reads = stripe.requests("GET", "/v1/prices/");
    assert_eq!(reads.len(), 4, "{reads:?}");
    assert!(
        reads
            .iter()
            .all(|r| r.query.get("expand[]").map(String::as_str) == Some("currency_options"))
    );
    for (asked, mentions) in [("gbp", "eur, usd"), ("kes", "M-Pesa"), ("EUR", "lower case")] {
        let refused = plans(&app, asked).await.err();
        assert_eq!(refused.as_ref().map(|s| s.code()), Some(Code::InvalidArgument));
        let message = refused.map(|s| s.message().to_string()).unwrap_or_default();
        assert!(message.contains(mentions), "{asked}: {message}");
    }
    app.stop().await;
}

async fn prices_are_kept_refreshed_and_outlive_a_stripe_outage(backend: Backend) {
    let stripe = FakeStripe::start().await;
    let settings = stripe.settings();
    let mut overrides: Vec<(&str, &str)> =
        settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    overrides.push(("--price-refresh-interval", "1s"));
    // Stripe is down before anything was read: nothing to show.
    stripe.fail_reads(true);
    let app = TestApp::spawn_with(backend, &overrides).await;
    let down = plans(&app, "").await.err().map(|s| s.code());
    assert_eq!(down, Some(Code::Unavailable));
    stripe.fail_reads(false);
    let first = plans(&app, "").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(prices_of(&first, Tier::Pro)[0].1, 900);
    // Stripe's price changes: the new amount shows once the prices are read again.
    stripe.put_price(PRICE_PRO, "month", &[("usd", 1000), ("eur", 950)]);
    eventually("the new PRO price is shown", || async {
        plans(&app, "")
            .await
            .is_ok_and(|p| prices_of(&p, Tier::Pro)[0].1 == 1000)
    })
    .await;
    // Stripe goes down: the prices read last are still shown, after refreshes failed.
    stripe.fail_reads(true);
    let failed_before = stripe.requests("GET", "/v1/prices/").len();
    eventually("a refresh was tried while Stripe is down", || async {
        let shown = plans(&app, "").await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(prices_of(&shown, Tier::Pro)[0].1, 1000);
        stripe.requests("GET", "/v1/prices/").len() > failed_before
    })
    .await;
    app.stop().await;
}

async fn a_yearly_checkout_in_euros_asks_stripe_for_that_price_and_currency(backend: Backend) {
    let (app, stripe) = TestApp::spawn_with_stripe(backend).await;
    let session = open_checkout(&app, "eve", checkout(Tier::Pro, BillingInterval::Year, "eur")).await
        .unwrap_or_else(|e| panic!("{e}"));
    let (_, form) = stripe
        .checkout_session(&session.session_id)
        .unwrap_or_else(|| panic!("no session at Stripe"));
    assert_eq!(
        form.get("line_items[0][price]").map(String::as_str),
        Some(PRICE_PRO_YEARLY)
    );
    assert_eq!(form.get("currency").map(String::as_str), Some("eur"));
    // No trial and no promotion codes unless configured.
    assert_eq!(form.get("subscription_data[trial_period_days]"), None);
    assert_eq!(form.get("allow_promotion_codes"), None);
    // A currency the price does not offer never reaches Stripe.
    let sessions_before = stripe.requests("POST", "/v1/checkout/sessions").len();
    for (currency, code) in [("gbp", Code::InvalidArgument), ("kes", Code::InvalidArgument)] {
        let refused = open_checkout(&app, "eve", checkout(Tier::Pro, BillingInterval::Year, currency)).await
            .err()
            .map(|s| s.code());
        assert_eq!(refused, Some(code), "{currency}");
    }
    assert_eq!(
        stripe.requests("POST", "/v1/checkout/sessions").len(),
        sessions_before
    );
    app.stop().await;
}

async fn a_customer_keeps_the_currency_of_their_first_subscription(backend: Backend) {
    let (app, stripe) = TestApp::spawn_with_stripe(backend).await;
    let (_, sub_id) = subscribe(&app, &stripe, "flo", Tier::Pro).await;
    wait_for("the subscription is stored", || async {
        (subscription(&app, "flo").await.tier == i32::from(Tier::Pro)).then_some(())
    })
    .await;
    let shown = subscription(&app, "flo").await;
    assert_eq!(shown.currency, "usd");
    assert_eq!(shown.interval, MONTH);
    // The subscription ends; a new checkout in euros is refused (Stripe keeps a customer in
    // one currency), and one without a currency gets dollars.
    exec!(
        &app.pool,
        "UPDATE subscriptions SET status = 'canceled' WHERE user_id = $1",
        "flo"
    );
    stripe.patch_subscription(&sub_id, serde_json::json!({ "status": "canceled" }));
    let refused = open_checkout(&app, "flo", checkout(Tier::Pro, BillingInterval::Month, "eur")).await
        .err();
    assert_eq!(
        refused.as_ref().map(|s| s.code()),
        Some(Code::FailedPrecondition)
    );
    assert!(
        refused.is_some_and(|s| s.message().contains("usd")),
        "the refusal names the account's currency"
    );
    let again = open_checkout(&app, "flo", checkout(Tier::Premium, BillingInterval::Month, "")).await
        .unwrap_or_else(|e| panic!("{e}"));
    let (_, form) = stripe
        .checkout_session(&again.session_id)
        .unwrap_or_else(|| panic!("no session at Stripe"));
    // Dollars are the price's own currency: nothing to ask for.
    assert_eq!(form.get("currency"), None);
    app.stop().await;
}

async fn a_plan_change_can_switch_to_yearly(backend: Backend) {
    let (app, stripe) = TestApp::spawn_with_stripe(backend).await;
    let (_, sub_id) = subscribe(&app, &stripe, "gus", Tier::Pro).await;
    wait_for("the subscription is stored", || async {
        (subscription(&app, "gus").await.tier == i32::from(Tier::Pro)).then_some(())
    })
    .await;
    let change = |tier: Tier, interval: BillingInterval| {
        let app = &app;
        async move {
            app.billing()
                .await
                .change_plan(authed(
                    ChangePlanRequest {
                        tier: tier.into(),
                        interval: interval.into(),
                    },
                    &token("gus"),
                ))
                .await
                .unwrap_or_else(|e| panic!("{e}"))
                .into_inner()
        }
    };
    let yearly = change(Tier::Pro, BillingInterval::Year).await;
    assert_eq!(yearly.subscription.map(|s| s.interval), Some(YEAR));
    let updates = stripe.requests("POST", &format!("/v1/subscriptions/{sub_id}"));
    let last = updates.last().unwrap_or_else(|| panic!("no update"));
    assert_eq!(
        last.form.get("items[0][price]").map(String::as_str),
        Some(PRICE_PRO_YEARLY)
    );
    assert_eq!(
        last.form.get("proration_behavior").map(String::as_str),
        Some("create_prorations")
    );
    // Unspecified keeps the interval: PREMIUM stays yearly.
    let premium = change(Tier::Premium, BillingInterval::Unspecified).await;
    assert_eq!(premium.subscription.map(|s| s.interval), Some(YEAR));
    let updates = stripe.requests("POST", &format!("/v1/subscriptions/{sub_id}"));
    assert_eq!(
        updates
            .last()
            .and_then(|r| r.form.get("items[0][price]").cloned())
            .as_deref(),
        Some(PRICE_PREMIUM_YEARLY)
    );
    // The same tier and interval again asks nothing of Stripe.
    change(Tier::Premium, BillingInterval::Year).await;
    assert_eq!(
        stripe
            .requests("POST", &format!("/v1/subscriptions/{sub_id}"))
            .len(),
        updates.len()
    );
    app.stop().await;
}

async fn yearly_is_refused_where_no_yearly_price_is_set(backend: Backend) {
    let stripe = FakeStripe::start().await;
    let uri = stripe.uri();
    let app = TestApp::spawn_with(
        backend,
        &[
            ("--stripe-secret-key", SECRET_KEY),
            ("--stripe-webhook-secret", WEBHOOK_SECRET),
            ("--stripe-price-id-pro", PRICE_PRO),
            ("--stripe-price-id-premium", crate::fake_stripe::PRICE_PREMIUM),
            ("--stripe-api-base", &uri),
        ],
    )
    .await;
    let refused = open_checkout(&app, "hal", checkout(Tier::Pro, BillingInterval::Year, "")).await
        .err();
    assert_eq!(
        refused.as_ref().map(|s| s.code()),
        Some(Code::FailedPrecondition)
    );
    assert!(
        refused.is_some_and(|s| s.message().contains("STRIPE_PRICE_ID_PRO_YEARLY")),
        "the refusal names the setting"
    );
    assert!(stripe.requests("POST", "/v1/checkout/sessions").is_empty());
    // The plans show the monthly prices only.
    let list = plans(&app, "").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        prices_of(&list, Tier::Pro)
            .iter()
            .map(|p| p.0)
            .collect::<Vec<_>>(),
        [MONTH]
    );
    app.stop().await;
}

async fn trials_go_to_first_subscriptions_only_and_show_their_end(backend: Backend) {
    let (app, stripe) = TestApp::spawn_with_stripe_and(
        backend,
        &[
            ("--trial-days", "14"),
            ("--allow-promotion-codes", "true"),
        ],
    )
    .await;
    let first = open_checkout(&app, "ivy", checkout(Tier::Pro, BillingInterval::Month, "")).await
        .unwrap_or_else(|e| panic!("{e}"));
    let (_, form) = stripe
        .checkout_session(&first.session_id)
        .unwrap_or_else(|| panic!("no session"));
    assert_eq!(
        form.get("subscription_data[trial_period_days]")
            .map(String::as_str),
        Some("14")
    );
    assert_eq!(
        form.get("allow_promotion_codes").map(String::as_str),
        Some("true")
    );
    // The trial starts: the subscription shows TRIALING with its end.
    let customer = stripe
        .customer_of("ivy")
        .unwrap_or_else(|| panic!("no customer"));
    let trial_end = chrono::Utc::now().timestamp() + 14 * 86_400;
    let sub_id = "sub_trial_ivy";
    stripe.put_subscription(&SubSpec {
        id: sub_id,
        customer: &customer,
        price: PRICE_PRO,
        status: "trialing",
        period_start: chrono::Utc::now().timestamp(),
        period_end: trial_end,
        cancel_at_period_end: false,
    });
    let sub = stripe.patch_subscription(sub_id, serde_json::json!({ "trial_end": trial_end }));
    let (_, completed) = stripe.event(
        "checkout.session.completed",
        &stripe.checkout_completed("ivy", &customer, sub_id),
    );
    app.deliver_signed(&completed).await;
    let (_, created) = stripe.event("customer.subscription.created", &sub);
    app.deliver_signed(&created).await;
    let shown = wait_for("the trial is stored", || async {
        let s = subscription(&app, "ivy").await;
        (s.status == i32::from(SubscriptionStatus::Trialing)).then_some(s)
    })
    .await;
    assert_eq!(shown.effective_tier, i32::from(Tier::Pro));
    assert_eq!(shown.trial_end.map(|t| t.seconds), Some(trial_end));
    // The trial is cancelled; the next checkout gets no second trial (promotion codes stay).
    stripe.patch_subscription(sub_id, serde_json::json!({ "status": "canceled" }));
    let (_, deleted) = stripe.event(
        "customer.subscription.deleted",
        &stripe
            .subscription(sub_id)
            .unwrap_or_else(|| panic!("no subscription")),
    );
    app.deliver_signed(&deleted).await;
    wait_for("the trial ended", || async {
        let s = subscription(&app, "ivy").await;
        (s.status == i32::from(SubscriptionStatus::Canceled)).then_some(())
    })
    .await;
    let second = open_checkout(&app, "ivy", checkout(Tier::Pro, BillingInterval::Month, "")).await
        .unwrap_or_else(|e| panic!("{e}"));
    let (_, form) = stripe
        .checkout_session(&second.session_id)
        .unwrap_or_else(|| panic!("no session"));
    assert_eq!(form.get("subscription_data[trial_period_days]"), None);
    assert_eq!(
        form.get("allow_promotion_codes").map(String::as_str),
        Some("true")
    );
    app.stop().await;
}
