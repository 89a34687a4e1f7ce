//! PayPal subscriptions end to end against the fake PayPal (slow answers, tokens that can be
//! revoked): checkout to the approve link, verified webhooks (and every way an unverified one
//! is refused), a sale delivered twice, revise, cancel, resume refused, token refresh, and
//! events in shuffled order converging on the provider's state.

use chrono::{Duration, Utc};
use nexus_billing::grpc::proto::billing::{
    CancelSubscriptionRequest, ChangePlanRequest, CreateCheckoutSessionRequest, ListPlansRequest,
    PaymentProvider, ResumeSubscriptionRequest, SubscriptionStatus, Tier,
};
use serde_json::{Value, json};
use tonic::Code;

use crate::{
    fake_paypal::{self, FakePaypal, PLAN_PREMIUM, PLAN_PRO},
    helpers::{ALLOWED_ORIGIN, Backend, TestApp, authed, token},
    subscription_lifecycle::subscription,
};

crate::on_both_backends!(
    checkout_sends_the_payer_to_the_approve_link_and_activation_lands,
    unverified_deliveries_are_refused_and_store_nothing,
    a_sale_delivered_twice_is_one_invoice_and_one_payment,
    revise_needs_approval_cancel_keeps_the_paid_period_and_resume_is_refused,
    the_token_is_reused_and_replaced_once_after_a_401,
    events_in_shuffled_order_converge,
    a_second_subscription_approved_in_another_tab_is_cancelled_and_refunded,
);

pub async fn spawn(backend: Backend) -> (TestApp, FakePaypal) {
    let paypal = FakePaypal::start().await;
    let settings = paypal.settings();
    let overrides: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    (TestApp::spawn_with(backend, &overrides).await, paypal)
}

/// POSTs a delivery to the PayPal route with `headers`; returns the status and body.
pub async fn deliver(app: &TestApp, body: &str, headers: &[(&str, String)]) -> (u16, String) {
    let mut request = reqwest::Client::new()
        .post(app.http_url("/billing/webhook/paypal"))
        .header("content-type", "application/json")
        .body(body.to_string());
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let response = request.send().await.unwrap_or_else(|e| panic!("{e}"));
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// Delivers `body` signed as PayPal would, expecting 200, and waits until it is applied.
pub async fn deliver_signed(app: &TestApp, paypal: &FakePaypal, body: &str) {
    let (status, text) = deliver(app, body, &paypal.headers(body)).await;
    assert_eq!(status, 200, "delivery refused: {text}");
    app.settle().await;
}

pub async fn checkout(app: &TestApp, user: &str, tier: Tier) -> (String, String) {
    let answer = app
        .billing()
        .await
        .create_checkout_session(authed(
            CreateCheckoutSessionRequest {
                tier: tier.into(),
                success_url: format!("{ALLOWED_ORIGIN}/billing/done"),
                cancel_url: format!("{ALLOWED_ORIGIN}/billing"),
                provider: PaymentProvider::Paypal.into(),
                ..Default::default()
            },
            &token(user),
        ))
        .await
        .unwrap_or_else(|e| panic!("checkout: {e}"))
        .into_inner();
    assert_eq!(answer.provider, i32::from(PaymentProvider::Paypal));
    (answer.session_id, answer.url)
}

/// A user with an active PRO PayPal subscription; returns its id.
pub async fn subscribed(app: &TestApp, paypal: &FakePaypal, user: &str) -> String {
    let (id, _) = checkout(app, user, Tier::Pro).await;
    let active = paypal.activate(&id, Utc::now() - Duration::seconds(30));
    let (_, body) = paypal.event(
        "BILLING.SUBSCRIPTION.ACTIVATED",
        &active,
        Utc::now() - Duration::seconds(20),
    );
    deliver_signed(app, paypal, &body).await;
    id
}

async fn checkout_sends_the_payer_to_the_approve_link_and_activation_lands(backend: Backend) {
    let (app, paypal) = spawn(backend).await;
    let (id, url) = checkout(&app, "pp-ana", Tier::Pro).await;
    assert!(url.starts_with("https://www.sandbox.paypal.com/"), "{url}");
    assert!(url.contains(&id));
    let created = paypal.requests("POST", "/v1/billing/subscriptions");
    assert_eq!(created.len(), 1);
    let body = &created[0].body;
    assert_eq!(body["plan_id"], PLAN_PRO);
    assert_eq!(body["custom_id"], "pp-ana");
    assert_eq!(
        body["application_context"]["return_url"],
        format!("{ALLOWED_ORIGIN}/billing/done")
    );
    assert_eq!(
        body["application_context"]["shipping_preference"],
        "NO_SHIPPING"
    );
    assert!(created[0].request_id.is_some(), "no PayPal-Request-Id");
    // A double click is the same subscription: PayPal replays the request id.
    let (again, _) = checkout(&app, "pp-ana", Tier::Pro).await;
    assert_eq!(again, id);
    // Not yet approved: still FREE.
    assert_eq!(
        subscription(&app, "pp-ana").await.effective_tier,
        i32::from(Tier::Free)
    );

    let active = paypal.activate(&id, Utc::now() - Duration::seconds(5));
    let (_, event) = paypal.event(
        "BILLING.SUBSCRIPTION.ACTIVATED",
        &active,
        Utc::now() - Duration::seconds(3),
    );
    deliver_signed(&app, &paypal, &event).await;
    let sub = subscription(&app, "pp-ana").await;
    assert_eq!(sub.effective_tier, i32::from(Tier::Pro));
    assert_eq!(sub.provider, i32::from(PaymentProvider::Paypal));
    assert_eq!(sub.status, i32::from(SubscriptionStatus::Active));
    assert!(!sub.cancel_at_period_end);
    // A second checkout while it is live is refused.
    let status = app
        .billing()
        .await
        .create_checkout_session(authed(
            CreateCheckoutSessionRequest {
                tier: Tier::Premium.into(),
                success_url: format!("{ALLOWED_ORIGIN}/done"),
                cancel_url: format!("{ALLOWED_ORIGIN}/no"),
                provider: PaymentProvider::Paypal.into(),
                ..Default::default()
            },
            &token("pp-ana"),
        ))
        .await
        .err()
        .unwrap_or_else(|| panic!("second checkout accepted"));
    assert_eq!(status.code(), Code::FailedPrecondition);
    // ListPlans says PayPal sells the paid tiers, and no one sells FREE.
    let plans = app
        .billing()
        .await
        .list_plans(authed(ListPlansRequest::default(), &token("pp-ana")))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner()
        .plans;
    for plan in plans {
        let providers: Vec<i32> = plan.offers.iter().map(|o| o.provider).collect();
        if plan.tier == i32::from(Tier::Free) {
            assert!(providers.is_empty());
        } else {
            assert_eq!(providers, [i32::from(PaymentProvider::Paypal)]);
        }
    }
    app.stop().await;
}

async fn unverified_deliveries_are_refused_and_store_nothing(backend: Backend) {
    let (app, paypal) = spawn(backend).await;
    let (id, _) = checkout(&app, "pp-bo", Tier::Pro).await;
    let active = paypal.activate(&id, Utc::now());
    let (_, body) = paypal.event("BILLING.SUBSCRIPTION.ACTIVATED", &active, Utc::now());
    let good = paypal.headers(&body);
    let with = |name: &str, value: &str| -> Vec<(&'static str, String)> {
        good.iter()
            .map(|(k, v)| {
                (
                    *k,
                    if *k == name {
                        value.to_string()
                    } else {
                        v.clone()
                    },
                )
            })
            .collect()
    };
    let verify_calls = || {
        paypal
            .requests("POST", "/v1/notifications/verify-webhook-signature")
            .len()
    };

    // No headers at all.
    assert_eq!(deliver(&app, &body, &[]).await.0, 400);
    // A signature PayPal's verify call rejects.
    let (status, _) = deliver(&app, &body, &with("paypal-transmission-sig", "AAAA")).await;
    assert_eq!(status, 400);
    // The signed bytes changed on the way (one space added).
    let tampered = body.replacen(',', ", ", 1);
    assert_eq!(deliver(&app, &tampered, &good).await.0, 400);
    // The verify call received the delivery's exact bytes.
    let last = paypal.requests("POST", "/v1/notifications/verify-webhook-signature");
    let sent = last.last().unwrap_or_else(|| panic!("no verify call"));
    assert!(sent.raw.contains(&tampered), "the event was re-serialised");
    let before = verify_calls();
    // Certificate URLs off PayPal's hosts are refused without asking anyone.
    for cert in [
        "https://evil.example/v1/notifications/certs/CERT-1",
        "http://api.sandbox.paypal.com/v1/notifications/certs/CERT-1",
        "https://api.sandbox.paypal.com.evil.example/v1/notifications/certs/CERT-1",
        "https://user@api.paypal.com/v1/notifications/certs/CERT-1",
        "https://api.paypal.com:8443/v1/notifications/certs/CERT-1",
        "https://api.paypal.com/v1/somewhere-else",
    ] {
        let (status, _) = deliver(&app, &body, &fake_paypal::signed_headers(&body, cert)).await;
        assert_eq!(status, 400, "{cert}");
    }
    assert_eq!(
        verify_calls(),
        before,
        "a certificate URL off the allow-list was sent on"
    );
    // PayPal's verify call down: 503, so PayPal delivers again; nothing stored.
    paypal.fail_verify(true);
    assert_eq!(deliver(&app, &body, &good).await.0, 503);
    paypal.fail_verify(false);
    assert_eq!(app.count("webhook_inbox", "").await, 0);
    assert_eq!(
        subscription(&app, "pp-bo").await.effective_tier,
        i32::from(Tier::Free)
    );
    // The genuine delivery is taken.
    let (status, text) = deliver(&app, &body, &good).await;
    assert_eq!(status, 200, "{text}");
    app.settle().await;
    assert_eq!(
        subscription(&app, "pp-bo").await.effective_tier,
        i32::from(Tier::Pro)
    );
    app.stop().await;
}

async fn a_sale_delivered_twice_is_one_invoice_and_one_payment(backend: Backend) {
    let (app, paypal) = spawn(backend).await;
    let id = subscribed(&app, &paypal, "pp-cy").await;
    let sale = paypal.sale(&id, "9.00", Utc::now() - Duration::seconds(10));
    // PayPal sends PAYMENT.SALE.COMPLETED twice, as two events; and one delivery is retried.
    let (_, first) = paypal.event(
        "PAYMENT.SALE.COMPLETED",
        &sale,
        Utc::now() - Duration::seconds(9),
    );
    let (_, second) = paypal.event(
        "PAYMENT.SALE.COMPLETED",
        &sale,
        Utc::now() - Duration::seconds(8),
    );
    deliver_signed(&app, &paypal, &first).await;
    deliver_signed(&app, &paypal, &first).await;
    deliver_signed(&app, &paypal, &second).await;
    assert_eq!(app.count("invoices", "provider = 'paypal'").await, 1);
    assert_eq!(
        app.count(
            "invoices",
            "provider = 'paypal' AND status = 'paid' AND amount_paid = 900 AND currency = 'usd'"
        )
        .await,
        1
    );
    let kinds = app.activity_kinds("pp-cy").await;
    assert_eq!(
        kinds.iter().filter(|k| *k == "payment.succeeded").count(),
        1,
        "{kinds:?}"
    );
    assert_eq!(app.count("webhook_inbox", "provider = 'paypal'").await, 3);
    app.stop().await;
}

async fn revise_needs_approval_cancel_keeps_the_paid_period_and_resume_is_refused(
    backend: Backend,
) {
    let (app, paypal) = spawn(backend).await;
    let id = subscribed(&app, &paypal, "pp-di").await;
    let user = token("pp-di");
    let mut billing = app.billing().await;
    let change = billing
        .change_plan(authed(
            ChangePlanRequest {
                tier: Tier::Premium.into(),
                ..Default::default()
            },
            &user,
        ))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner();
    assert!(
        change
            .approval_url
            .starts_with("https://www.sandbox.paypal.com/"),
        "{}",
        change.approval_url
    );
    let revised = paypal.requests("POST", &format!("/v1/billing/subscriptions/{id}/revise"));
    assert_eq!(revised.len(), 1);
    assert_eq!(revised[0].body["plan_id"], PLAN_PREMIUM);
    // Until the payer approves, the tier is unchanged.
    assert_eq!(subscription(&app, "pp-di").await.tier, i32::from(Tier::Pro));
    // The approval comes after the revise call (whose answer is stored): its event is newer.
    let updated = paypal.approve_revision(&id);
    let (_, event) = paypal.event("BILLING.SUBSCRIPTION.UPDATED", &updated, Utc::now());
    deliver_signed(&app, &paypal, &event).await;
    assert_eq!(
        subscription(&app, "pp-di").await.tier,
        i32::from(Tier::Premium)
    );

    let cancelled = billing
        .cancel_subscription(authed(CancelSubscriptionRequest {}, &user))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner()
        .subscription
        .unwrap_or_else(|| panic!("no subscription"));
    let cancel_calls = paypal.requests("POST", &format!("/v1/billing/subscriptions/{id}/cancel"));
    assert_eq!(cancel_calls.len(), 1);
    assert!(
        cancel_calls[0].body["reason"]
            .as_str()
            .is_some_and(|r| !r.is_empty())
    );
    assert_eq!(paypal.subscription(&id)["status"], "CANCELLED");
    // Billing stopped; the month paid for still runs.
    assert!(cancelled.cancel_at_period_end);
    assert_eq!(cancelled.effective_tier, i32::from(Tier::Premium));
    let ends = cancelled
        .access_ends_at
        .unwrap_or_else(|| panic!("no end date"));
    assert!(ends.seconds > Utc::now().timestamp() + 25 * 86_400);
    // Cancelling again changes nothing and calls PayPal no more.
    billing
        .cancel_subscription(authed(CancelSubscriptionRequest {}, &user))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        paypal
            .requests("POST", &format!("/v1/billing/subscriptions/{id}/cancel"))
            .len(),
        1
    );
    let status = billing
        .resume_subscription(authed(ResumeSubscriptionRequest {}, &user))
        .await
        .err()
        .unwrap_or_else(|| panic!("a cancelled PayPal subscription was resumed"));
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("cannot be resumed"),
        "{}",
        status.message()
    );
    // The portal is Stripe's.
    let status = billing
        .create_portal_session(authed(
            nexus_billing::grpc::proto::billing::CreatePortalSessionRequest {
                return_url: format!("{ALLOWED_ORIGIN}/billing"),
            },
            &user,
        ))
        .await
        .err()
        .unwrap_or_else(|| panic!("portal for a PayPal subscription"));
    assert_eq!(status.code(), Code::FailedPrecondition);
    app.stop().await;
}

async fn the_token_is_reused_and_replaced_once_after_a_401(backend: Backend) {
    let (app, paypal) = spawn(backend).await;
    for user in ["pp-t1", "pp-t2", "pp-t3"] {
        checkout(&app, user, Tier::Pro).await;
    }
    let tokens = || paypal.requests("POST", "/v1/oauth2/token");
    assert_eq!(tokens().len(), 1, "the token was not reused");
    let auth = tokens()[0].authorization.clone().unwrap_or_default();
    assert!(
        auth.starts_with("Basic "),
        "client credentials go in Basic auth"
    );
    // PayPal forgets the token (expired early): the next call is refused once, a new token is
    // fetched and the call is sent again.
    paypal.revoke_tokens();
    let (id, _) = checkout(&app, "pp-t4", Tier::Pro).await;
    assert!(id.starts_with("I-FAKE"));
    assert_eq!(tokens().len(), 2);
    let creates = paypal.requests("POST", "/v1/billing/subscriptions");
    let unauthorised_then_ok: Vec<&Option<String>> = creates
        .iter()
        .rev()
        .take(2)
        .map(|r| &r.authorization)
        .collect();
    assert_ne!(
        unauthorised_then_ok[0], unauthorised_then_ok[1],
        "the retry used the refused token"
    );
    // The secret never leaves in a bearer header, and never in a response.
    assert!(
        paypal
            .received()
            .iter()
            .all(|r| !r.raw.contains(fake_paypal::CLIENT_SECRET))
    );
    app.stop().await;
}

/// The subscription's successive states, as PayPal reports them in its events.
fn timeline(paypal: &FakePaypal, id: &str) -> Vec<(String, Value, chrono::DateTime<Utc>)> {
    let t0 = Utc::now() - Duration::seconds(120);
    let active = paypal.activate(id, t0);
    let sale = paypal.sale(id, "9.00", t0 + Duration::seconds(1));
    let mut premium = active.clone();
    premium["plan_id"] = json!(PLAN_PREMIUM);
    let mut cancelled = premium.clone();
    cancelled["status"] = json!("CANCELLED");
    if let Some(info) = cancelled["billing_info"].as_object_mut() {
        info.remove("next_billing_time");
    }
    paypal.patch(id, |s| *s = cancelled.clone());
    vec![
        (
            "BILLING.SUBSCRIPTION.ACTIVATED".into(),
            active,
            t0 + Duration::seconds(2),
        ),
        (
            "PAYMENT.SALE.COMPLETED".into(),
            sale,
            t0 + Duration::seconds(3),
        ),
        (
            "BILLING.SUBSCRIPTION.UPDATED".into(),
            premium,
            t0 + Duration::seconds(10),
        ),
        (
            "BILLING.SUBSCRIPTION.CANCELLED".into(),
            cancelled,
            t0 + Duration::seconds(20),
        ),
    ]
}

async fn events_in_shuffled_order_converge(backend: Backend) {
    let (app, paypal) = spawn(backend).await;
    let orders: [[usize; 4]; 4] = [[0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1], [1, 3, 0, 2]];
    for (n, order) in orders.iter().enumerate() {
        let user = format!("pp-shuffle-{n}");
        let (id, _) = checkout(&app, &user, Tier::Pro).await;
        let events = timeline(&paypal, &id);
        let bodies: Vec<String> = events
            .iter()
            .map(|(kind, resource, at)| paypal.event(kind, resource, *at).1)
            .collect();
        for i in order {
            let (status, text) = deliver(&app, &bodies[*i], &paypal.headers(&bodies[*i])).await;
            assert_eq!(status, 200, "{text}");
        }
        app.settle().await;
        let sub = subscription(&app, &user).await;
        assert_eq!(
            (sub.tier, sub.status, sub.cancel_at_period_end),
            (
                i32::from(Tier::Premium),
                i32::from(SubscriptionStatus::Active),
                true
            ),
            "order {order:?}"
        );
        assert_eq!(
            app.count("invoices", &format!("user_id = '{user}'")).await,
            1,
            "order {order:?}"
        );
    }
    app.stop().await;
}

async fn a_second_subscription_approved_in_another_tab_is_cancelled_and_refunded(backend: Backend) {
    let (app, paypal) = spawn(backend).await;
    // Two tabs: both checkouts are made before either is approved, and both get approved.
    let (first, _) = checkout(&app, "pp-tabs", Tier::Pro).await;
    let (second, _) = checkout(&app, "pp-tabs", Tier::Premium).await;
    assert_ne!(first, second);
    let at = Utc::now() - Duration::seconds(30);
    let one = paypal.activate(&first, at);
    let two = paypal.activate(&second, at + Duration::seconds(2));
    let sale = paypal.sale(&second, "19.00", at + Duration::seconds(2));
    let (_, e1) = paypal.event(
        "BILLING.SUBSCRIPTION.ACTIVATED",
        &one,
        at + Duration::seconds(1),
    );
    let (_, e2) = paypal.event(
        "BILLING.SUBSCRIPTION.ACTIVATED",
        &two,
        at + Duration::seconds(3),
    );
    deliver_signed(&app, &paypal, &e1).await;
    deliver_signed(&app, &paypal, &e2).await;
    // The first stays; the second is cancelled at PayPal and its payment refunded, once.
    let sub = subscription(&app, "pp-tabs").await;
    assert_eq!(sub.tier, i32::from(Tier::Pro));
    assert_eq!(paypal.subscription(&second)["status"], "CANCELLED");
    assert_eq!(paypal.subscription(&first)["status"], "ACTIVE");
    assert_eq!(
        paypal.refunds(),
        [sale["id"].as_str().unwrap_or_default().to_string()]
    );
    let refund = paypal.requests("POST", "/v1/payments/sale/");
    assert_eq!(refund.len(), 1);
    assert!(
        refund[0].request_id.is_some(),
        "a refund without PayPal-Request-Id could be sent twice"
    );
    assert!(
        app.activity_kinds("pp-tabs")
            .await
            .contains(&"subscription.duplicate_refunded".to_string())
    );
    // The same event again changes nothing more.
    deliver_signed(&app, &paypal, &e2).await;
    assert_eq!(paypal.refunds().len(), 1);
    app.stop().await;
}
