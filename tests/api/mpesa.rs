//! M-Pesa STK push end to end against the fake Daraja (which checks the password, the
//! timestamp and the phone of every request): phone normalisation, one pending push per user,
//! success / cancelled / timeout callbacks, forged callbacks, a lost callback found by the
//! poller, extension of an unexpired period, expiry to FREE, and refusal beside a live Stripe
//! subscription.

use chrono::Utc;
use nexus_billing::grpc::proto::billing::{
    CancelSubscriptionRequest, ChangePlanRequest, CheckoutState, CreateCheckoutSessionRequest,
    GetCheckoutStatusRequest, GetCheckoutStatusResponse, ListPlansRequest, PaymentProvider, Tier,
};
use tonic::Code;

use crate::{
    exec,
    fake_mpesa::{FakeMpesa, PRICE_PREMIUM, PRICE_PRO, callback},
    helpers::{Backend, TestApp, authed, eventually, token, wait_for},
    subscription_lifecycle::{subscribe, subscription},
};

crate::on_both_backends!(
    the_push_is_well_formed_and_one_waits_at_a_time,
    a_confirmed_payment_buys_a_period_with_a_kes_invoice_once,
    cancelled_and_timed_out_payments_record_why,
    forged_callbacks_change_nothing,
    a_lost_callback_is_found_by_the_poller,
    paying_again_extends_and_the_end_falls_back_to_free,
    mpesa_is_refused_beside_a_live_stripe_subscription,
);

pub async fn spawn(backend: Backend) -> (TestApp, FakeMpesa) {
    let mpesa = FakeMpesa::start().await;
    let settings = mpesa.settings();
    let overrides: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    (TestApp::spawn_with(backend, &overrides).await, mpesa)
}

pub fn push_request(tier: Tier, phone: &str) -> CreateCheckoutSessionRequest {
    CreateCheckoutSessionRequest {
        tier: tier.into(),
        provider: PaymentProvider::Mpesa.into(),
        phone_number: phone.to_string(),
        ..Default::default()
    }
}

/// Starts a push for `user`; returns the CheckoutRequestID.
pub async fn push(app: &TestApp, user: &str, tier: Tier) -> String {
    let answer = app
        .billing()
        .await
        .create_checkout_session(authed(push_request(tier, "0712 345 678"), &token(user)))
        .await
        .unwrap_or_else(|e| panic!("push: {e}"))
        .into_inner();
    assert!(answer.url.is_empty());
    assert!(
        answer.message.contains("Check your phone"),
        "{}",
        answer.message
    );
    answer.session_id
}

/// GetCheckoutStatus as `user` sees request `id`.
pub async fn checkout_status(
    app: &TestApp,
    user: &str,
    id: &str,
) -> Result<GetCheckoutStatusResponse, Code> {
    app.billing()
        .await
        .get_checkout_status(authed(
            GetCheckoutStatusRequest {
                session_id: id.to_string(),
            },
            &token(user),
        ))
        .await
        .map(|r| r.into_inner())
        .map_err(|s| s.code())
}

/// POSTs a callback; returns the status and the acknowledgement's ResultCode.
pub async fn post_callback(app: &TestApp, body: &str) -> (u16, i64) {
    let response = reqwest::Client::new()
        .post(app.http_url("/billing/webhook/mpesa"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let status = response.status().as_u16();
    let ack: serde_json::Value = response.json().await.unwrap_or_default();
    (status, ack["ResultCode"].as_i64().unwrap_or(-1))
}

pub async fn payment_state(app: &TestApp, request_id: &str) -> (String, Option<String>) {
    let sql = "SELECT state, reason FROM mpesa_payments WHERE checkout_request_id = $1";
    match &app.pool {
        crate::helpers::TestPool::Sqlite(pool) => {
            sqlx::query_as(sql).bind(request_id).fetch_one(pool).await
        }
        crate::helpers::TestPool::Postgres(pool) => {
            sqlx::query_as(sql).bind(request_id).fetch_one(pool).await
        }
    }
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Waits until the request is no longer pending (the processor or poller settled it).
pub async fn settled(app: &TestApp, request_id: &str) -> (String, Option<String>) {
    wait_for(&format!("payment {request_id} settled"), || async {
        let state = payment_state(app, request_id).await;
        (state.0 != "pending").then_some(state)
    })
    .await
}

async fn the_push_is_well_formed_and_one_waits_at_a_time(backend: Backend) {
    let (app, mpesa) = spawn(backend).await;
    let mut billing = app.billing().await;
    // Bad numbers are refused before anything is sent.
    for phone in ["", "0812345678", "+255712345678", "07123", "not a phone"] {
        let status = billing
            .create_checkout_session(authed(push_request(Tier::Pro, phone), &token("mp-ana")))
            .await
            .err()
            .unwrap_or_else(|| panic!("{phone:?} accepted"));
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{phone:?}: {status:?}"
        );
    }
    assert!(mpesa.pushes().is_empty());
    let id = push(&app, "mp-ana", Tier::Pro).await;
    assert!(id.starts_with("ws_CO_"));
    let pushes = mpesa.pushes();
    assert_eq!(pushes.len(), 1);
    assert_eq!(
        mpesa.problems(),
        Vec::<String>::new(),
        "Daraja would refuse the push"
    );
    assert_eq!(pushes[0]["PhoneNumber"], "254712345678");
    assert_eq!(pushes[0]["PartyA"], "254712345678");
    assert_eq!(pushes[0]["Amount"], PRICE_PRO);
    // The callback URL names this service's request, found by it if the answer is lost.
    let callback_url = pushes[0]["CallBackURL"].as_str().unwrap_or_default();
    assert!(
        callback_url.starts_with("https://billing.example.com/billing/webhook/mpesa?ref="),
        "{callback_url}"
    );
    // A second push while the first waits on the phone: refused, nothing sent.
    let status = billing
        .create_checkout_session(authed(
            push_request(Tier::Premium, "+254712345678"),
            &token("mp-ana"),
        ))
        .await
        .err()
        .unwrap_or_else(|| panic!("a second push was sent"));
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("waiting on your phone"),
        "{}",
        status.message()
    );
    assert_eq!(mpesa.pushes().len(), 1);
    // Two pushes at once for another user: one is sent.
    let (mut one, mut two) = (billing.clone(), billing.clone());
    let (a, b) = tokio::join!(
        one.create_checkout_session(authed(
            push_request(Tier::Pro, "0712345678"),
            &token("mp-race")
        )),
        two.create_checkout_session(authed(
            push_request(Tier::Pro, "0712345678"),
            &token("mp-race")
        )),
    );
    assert_eq!(u8::from(a.is_ok()) + u8::from(b.is_ok()), 1, "{a:?} {b:?}");
    assert_eq!(mpesa.pushes().len(), 2);
    // ListPlans names the KES prices.
    let plans = billing
        .list_plans(authed(ListPlansRequest::default(), &token("mp-ana")))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner()
        .plans;
    let premium = plans
        .iter()
        .find(|p| p.tier == i32::from(Tier::Premium))
        .unwrap_or_else(|| panic!("no PREMIUM"));
    let offer = &premium.offers[0];
    assert_eq!(offer.provider, i32::from(PaymentProvider::Mpesa));
    assert!(offer.prepaid);
    let price = offer.local_price.clone().unwrap_or_default();
    assert_eq!(
        (price.amount_minor, price.currency.as_str()),
        (i64::from(PRICE_PREMIUM) * 100, "kes")
    );
    app.stop().await;
}

async fn a_confirmed_payment_buys_a_period_with_a_kes_invoice_once(backend: Backend) {
    let (app, mpesa) = spawn(backend).await;
    let id = push(&app, "mp-bo", Tier::Pro).await;
    mpesa.resolve(&id, 0);
    let body = callback(&id, 0, Some("NLJ7RT61SV"), PRICE_PRO);
    assert_eq!(post_callback(&app, &body).await, (200, 0));
    assert_eq!(settled(&app, &id).await.0, "paid");
    let followed = checkout_status(&app, "mp-bo", &id)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (followed.state, followed.reason.as_str()),
        (i32::from(CheckoutState::Paid), "")
    );
    app.settle().await;
    assert!(
        mpesa.queries(&id) >= 1,
        "the callback was not confirmed with Daraja"
    );
    let sub = subscription(&app, "mp-bo").await;
    assert_eq!(sub.effective_tier, i32::from(Tier::Pro));
    assert_eq!(sub.provider, i32::from(PaymentProvider::Mpesa));
    assert!(
        sub.cancel_at_period_end,
        "an M-Pesa period must not claim to renew"
    );
    let end = sub
        .current_period_end
        .unwrap_or_else(|| panic!("no period end"))
        .seconds;
    let thirty = Utc::now().timestamp() + 30 * 86_400;
    assert!(
        (end - thirty).abs() < 120,
        "period end {end}, expected about {thirty}"
    );
    assert_eq!(
        app.count(
            "invoices",
            "provider = 'mpesa' AND provider_invoice_id = 'NLJ7RT61SV' \
            AND currency = 'kes' AND amount_paid = 150000 AND status = 'paid'"
        )
        .await,
        1
    );
    // Safaricom retries the callback: nothing happens twice.
    assert_eq!(post_callback(&app, &body).await.0, 200);
    app.settle().await;
    assert_eq!(app.count("invoices", "provider = 'mpesa'").await, 1);
    let kinds = app.activity_kinds("mp-bo").await;
    assert_eq!(
        kinds.iter().filter(|k| *k == "payment.succeeded").count(),
        1,
        "{kinds:?}"
    );
    assert_eq!(
        kinds
            .iter()
            .filter(|k| *k == "subscription.started")
            .count(),
        1,
        "{kinds:?}"
    );
    // Nothing to cancel or change at M-Pesa.
    let mut billing = app.billing().await;
    let status = billing
        .cancel_subscription(authed(CancelSubscriptionRequest {}, &token("mp-bo")))
        .await
        .err()
        .unwrap_or_else(|| panic!("cancelled a prepaid period"));
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("prepaid"), "{}", status.message());
    let status = billing
        .change_plan(authed(
            ChangePlanRequest {
                tier: Tier::Premium.into(),
                ..Default::default()
            },
            &token("mp-bo"),
        ))
        .await
        .err()
        .unwrap_or_else(|| panic!("changed a prepaid period"));
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(mpesa.problems(), Vec::<String>::new());
    app.stop().await;
}

async fn cancelled_and_timed_out_payments_record_why(backend: Backend) {
    let (app, mpesa) = spawn(backend).await;
    for (user, code, words, ended) in [
        ("mp-cy", 1032, "cancelled on the phone", CheckoutState::Cancelled),
        ("mp-di", 1037, "could not be reached", CheckoutState::TimedOut),
        ("mp-ed", 1, "balance is not enough", CheckoutState::Failed),
    ] {
        let id = push(&app, user, Tier::Pro).await;
        // The page follows the request: waiting for the phone, and nobody else's.
        let waiting = checkout_status(&app, user, &id).await;
        assert_eq!(waiting.map(|s| s.state), Ok(i32::from(CheckoutState::Pending)));
        let other = checkout_status(&app, "mp-stranger", &id).await;
        assert_eq!(other.err(), Some(Code::NotFound));
        mpesa.resolve(&id, code);
        assert_eq!(
            post_callback(&app, &callback(&id, code, None, 0)).await,
            (200, 0)
        );
        let (state, reason) = settled(&app, &id).await;
        assert_eq!(state, "failed", "{user}");
        let followed = checkout_status(&app, user, &id)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(followed.state, i32::from(ended), "{user}");
        assert!(followed.reason.contains(words), "{user}: {}", followed.reason);
        assert_eq!(followed.tier, i32::from(Tier::Pro));
        assert!(
            reason.as_deref().unwrap_or("").contains(words),
            "{user}: {reason:?}"
        );
        app.settle().await;
        assert_eq!(
            subscription(&app, user).await.effective_tier,
            i32::from(Tier::Free)
        );
        assert!(
            app.activity_kinds(user)
                .await
                .contains(&"payment.failed".to_string())
        );
    }
    assert_eq!(app.count("invoices", "").await, 0);
    // Each may try again (after the settles above: these requests stay pending).
    for user in ["mp-cy", "mp-di", "mp-ed"] {
        push(&app, user, Tier::Pro).await;
    }
    app.stop().await;
}

async fn forged_callbacks_change_nothing(backend: Backend) {
    let (app, mpesa) = spawn(backend).await;
    // A "success" for a request this service never made.
    let (status, code) = post_callback(
        &app,
        &callback("ws_CO_forged_1", 0, Some("FAKE000001"), PRICE_PRO),
    )
    .await;
    assert_eq!((status, code), (200, 1));
    assert_eq!(app.count("webhook_inbox", "").await, 0);
    // Not a callback at all.
    assert_eq!(post_callback(&app, "{\"Body\":{}}").await.0, 400);
    assert_eq!(post_callback(&app, "not json").await.0, 400);
    // A "success" for a real request the payer has not answered: Daraja says it is still being
    // processed, so nothing is granted.
    let id = push(&app, "mp-fo", Tier::Premium).await;
    assert_eq!(
        post_callback(&app, &callback(&id, 0, Some("FAKE000002"), PRICE_PREMIUM)).await,
        (200, 0)
    );
    // Daraja answers "still processing" until the payer answers: the service asked, was told
    // so, and asked again later, never settling on the callback's word.
    eventually("Daraja was asked twice", || async { mpesa.queries(&id) >= 2 }).await;
    assert_eq!(payment_state(&app, &id).await.0, "pending");
    assert_eq!(
        subscription(&app, "mp-fo").await.effective_tier,
        i32::from(Tier::Free)
    );
    // The payer then cancels: the forged success never counts.
    mpesa.resolve(&id, 1032);
    assert_eq!(settled(&app, &id).await.0, "failed");
    app.settle().await;
    assert_eq!(
        subscription(&app, "mp-fo").await.effective_tier,
        i32::from(Tier::Free)
    );
    assert_eq!(app.count("invoices", "").await, 0);
    assert_eq!(app.count("subscriptions", "provider = 'mpesa'").await, 0);
    app.stop().await;
}

async fn a_lost_callback_is_found_by_the_poller(backend: Backend) {
    let (app, mpesa) = spawn(backend).await;
    let id = push(&app, "mp-lo", Tier::Pro).await;
    // The payer pays; Safaricom's callback never arrives.
    mpesa.resolve(&id, 0);
    assert_eq!(settled(&app, &id).await.0, "paid");
    app.settle().await;
    assert_eq!(
        subscription(&app, "mp-lo").await.effective_tier,
        i32::from(Tier::Pro)
    );
    // No receipt without the callback: the invoice is numbered by the request.
    assert_eq!(
        app.count("invoices", &format!("provider_invoice_id = '{id}'"))
            .await,
        1
    );
    assert_eq!(
        app.count("webhook_inbox", "event_type = 'mpesa.stk_poll'")
            .await,
        1
    );
    app.stop().await;
}

async fn paying_again_extends_and_the_end_falls_back_to_free(backend: Backend) {
    let (app, mpesa) = spawn(backend).await;
    let pay = |tier| {
        let (app, mpesa) = (&app, &mpesa);
        async move {
            let id = push(app, "mp-ex", tier).await;
            mpesa.resolve(&id, 0);
            post_callback(
                app,
                &callback(
                    &id,
                    0,
                    Some(&format!("R{}", &id[id.len() - 6..])),
                    PRICE_PRO,
                ),
            )
            .await;
            assert_eq!(settled(app, &id).await.0, "paid");
            app.settle().await;
        }
    };
    pay(Tier::Pro).await;
    let first = subscription(&app, "mp-ex")
        .await
        .current_period_end
        .unwrap_or_default()
        .seconds;
    pay(Tier::Pro).await;
    let sub = subscription(&app, "mp-ex").await;
    let second = sub.current_period_end.unwrap_or_default().seconds;
    assert_eq!(
        second - first,
        30 * 86_400,
        "the second period did not extend the first"
    );
    assert_eq!(sub.effective_tier, i32::from(Tier::Pro));
    assert!(
        app.activity_kinds("mp-ex")
            .await
            .contains(&"subscription.extended".to_string())
    );
    assert_eq!(app.count("invoices", "provider = 'mpesa'").await, 2);
    // The period runs out: FREE, and the poller records it.
    let past = Utc::now() - chrono::Duration::hours(1);
    exec!(&app.pool,
        pg: "UPDATE subscriptions SET current_period_end = $1 WHERE user_id = 'mp-ex'",
        sqlite: "UPDATE subscriptions SET current_period_end = $1 WHERE user_id = 'mp-ex'",
        past);
    exec!(&app.pool,
        pg: "UPDATE mpesa_payments SET period_end = $1 WHERE user_id = 'mp-ex'",
        sqlite: "UPDATE mpesa_payments SET period_end = $1 WHERE user_id = 'mp-ex'",
        past);
    assert_eq!(
        subscription(&app, "mp-ex").await.effective_tier,
        i32::from(Tier::Free)
    );
    eventually("the ended period was canceled", || async {
        app.count("subscriptions", "user_id = 'mp-ex' AND status = 'canceled'")
            .await
            == 1
    })
    .await;
    assert!(
        app.activity_kinds("mp-ex")
            .await
            .contains(&"subscription.expired".to_string())
    );
    // After it ended, a new payment starts a new period from now.
    pay(Tier::Pro).await;
    let sub = subscription(&app, "mp-ex").await;
    assert_eq!(sub.effective_tier, i32::from(Tier::Pro));
    let end = sub.current_period_end.unwrap_or_default().seconds;
    assert!((end - (Utc::now().timestamp() + 30 * 86_400)).abs() < 120);
    app.stop().await;
}

async fn mpesa_is_refused_beside_a_live_stripe_subscription(backend: Backend) {
    let mpesa = FakeMpesa::start().await;
    let settings = mpesa.settings();
    let extra: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (app, stripe) = TestApp::spawn_with_stripe_and(backend, &extra).await;
    subscribe(&app, &stripe, "mp-st", Tier::Pro).await;
    let status = app
        .billing()
        .await
        .create_checkout_session(authed(
            push_request(Tier::Premium, "0712345678"),
            &token("mp-st"),
        ))
        .await
        .err()
        .unwrap_or_else(|| panic!("M-Pesa push beside a live Stripe subscription"));
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("Stripe"), "{}", status.message());
    assert!(mpesa.pushes().is_empty());
    // And a user paying with M-Pesa cannot start Stripe while the period runs.
    let id = push(&app, "mp-st2", Tier::Pro).await;
    mpesa.resolve(&id, 0);
    assert_eq!(settled(&app, &id).await.0, "paid");
    app.settle().await;
    let status = app
        .billing()
        .await
        .create_checkout_session(authed(
            CreateCheckoutSessionRequest {
                tier: Tier::Premium.into(),
                success_url: format!("{}/done", crate::helpers::ALLOWED_ORIGIN),
                cancel_url: format!("{}/no", crate::helpers::ALLOWED_ORIGIN),
                ..Default::default()
            },
            &token("mp-st2"),
        ))
        .await
        .err()
        .unwrap_or_else(|| panic!("Stripe checkout during an M-Pesa period"));
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("M-Pesa"), "{}", status.message());
    app.stop().await;
}
