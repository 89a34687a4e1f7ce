//! Payment RPCs and their bad input: open redirects, unknown tiers, a second checkout, other
//! providers, the billing portal, and invoice pages that never show another user's invoices.

use chrono::{Duration, Utc};
use nexus_billing::grpc::proto::billing::{
    ChangePlanRequest, CreateCheckoutSessionRequest, CreatePortalSessionRequest,
    ListInvoicesRequest, PaymentProvider, Tier,
};
use tonic::Code;

use crate::{
    exec,
    helpers::{ALLOWED_ORIGIN, Backend, TestApp, TestPool, authed, token},
    subscription_lifecycle::subscribe,
};

crate::on_both_backends!(
    checkout_refuses_open_redirects_and_bad_tiers,
    a_second_checkout_with_a_live_subscription_points_to_change_plan,
    a_new_checkout_expires_the_earlier_open_ones,
    other_providers_and_plan_changes_without_a_subscription_are_preconditions,
    the_portal_is_for_the_users_own_customer,
    invoices_are_paged_newest_first_and_private,
);

fn checkout(tier: i32, success: &str, cancel: &str) -> CreateCheckoutSessionRequest {
    CreateCheckoutSessionRequest {
        tier,
        success_url: success.to_string(),
        cancel_url: cancel.to_string(),
        ..Default::default()
    }
}

async fn a_new_checkout_expires_the_earlier_open_ones(backend: Backend) {
    let (app, stripe) = TestApp::spawn_with_stripe(backend).await;
    let billing = app.billing().await;
    let (ok, no) = (
        format!("{ALLOWED_ORIGIN}/done"),
        format!("{ALLOWED_ORIGIN}/no"),
    );
    let open = |tier: Tier| {
        let request = authed(checkout(tier.into(), &ok, &no), &token("tabs"));
        let mut billing = billing.clone();
        async move {
            billing
                .create_checkout_session(request)
                .await
                .unwrap_or_else(|e| panic!("{e}"))
                .into_inner()
                .session_id
        }
    };
    let first = open(Tier::Pro).await;
    // A double click is the same session, and expires nothing.
    assert_eq!(open(Tier::Pro).await, first);
    assert!(stripe.requests("POST", "/v1/checkout/sessions/").is_empty());
    // Another tab asks for PREMIUM: the PRO session can no longer be paid.
    let second = open(Tier::Premium).await;
    assert_ne!(second, first);
    let expired: Vec<String> = stripe
        .requests("POST", "/v1/checkout/sessions/")
        .into_iter()
        .map(|r| r.path)
        .collect();
    assert_eq!(
        expired,
        vec![format!("/v1/checkout/sessions/{first}/expire")]
    );
    // Back to PRO: a new session, never the expired one.
    let third = open(Tier::Pro).await;
    assert!(
        third != first && third != second,
        "{first} {second} {third}"
    );
    assert_eq!(stripe.requests("POST", "/v1/checkout/sessions/").len(), 2);
    app.stop().await;
}

async fn checkout_refuses_open_redirects_and_bad_tiers(backend: Backend) {
    let (app, stripe) = TestApp::spawn_with_stripe(backend).await;
    let mut billing = app.billing().await;
    let ok = format!("{ALLOWED_ORIGIN}/done");
    let bad_urls = [
        "https://evil.test/done",
        "/relative/path",
        "javascript:alert(1)",
        "https://app.nexus.test@evil.test/",
        "http://app.nexus.test/done",
        "https://app.nexus.test.evil.test/",
        "",
    ];
    for bad in bad_urls {
        for (success, cancel) in [(bad, ok.as_str()), (ok.as_str(), bad)] {
            let status = billing
                .create_checkout_session(authed(
                    checkout(Tier::Pro.into(), success, cancel),
                    &token("hana"),
                ))
                .await
                .err()
                .unwrap_or_else(|| panic!("{bad:?} must be refused"));
            assert_eq!(status.code(), Code::InvalidArgument, "{bad:?}");
        }
    }
    for (tier, why) in [
        (0, "unspecified"),
        (99, "unknown"),
        (i32::from(Tier::Free), "FREE"),
    ] {
        let status = billing
            .create_checkout_session(authed(checkout(tier, &ok, &ok), &token("hana")))
            .await
            .err()
            .unwrap_or_else(|| panic!("{why} tier must be refused"));
        assert_eq!(status.code(), Code::InvalidArgument, "{why}");
        assert!(
            status.message().contains("tier") || status.message().contains("PRO"),
            "{why}: {}",
            status.message()
        );
    }
    assert!(stripe.received().is_empty(), "nothing reached Stripe");
    app.stop().await;
}

async fn a_second_checkout_with_a_live_subscription_points_to_change_plan(backend: Backend) {
    let (app, stripe) = TestApp::spawn_with_stripe(backend).await;
    subscribe(&app, &stripe, "ivan", Tier::Pro).await;
    let sessions = stripe.requests("POST", "/v1/checkout/sessions").len();
    let ok = format!("{ALLOWED_ORIGIN}/done");
    let status = app
        .billing()
        .await
        .create_checkout_session(authed(
            checkout(Tier::Premium.into(), &ok, &ok),
            &token("ivan"),
        ))
        .await
        .err()
        .unwrap_or_else(|| panic!("a second checkout must be refused"));
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("ChangePlan"),
        "{}",
        status.message()
    );
    assert_eq!(
        stripe.requests("POST", "/v1/checkout/sessions").len(),
        sessions
    );
    app.stop().await;
}

async fn other_providers_and_plan_changes_without_a_subscription_are_preconditions(
    backend: Backend,
) {
    let (app, _stripe) = TestApp::spawn_with_stripe(backend).await;
    let mut billing = app.billing().await;
    let ok = format!("{ALLOWED_ORIGIN}/done");
    for (provider, name) in [
        (PaymentProvider::Paypal, "PayPal"),
        (PaymentProvider::Mpesa, "M-Pesa"),
    ] {
        let mut request = checkout(Tier::Pro.into(), &ok, &ok);
        request.provider = provider.into();
        request.phone_number = "+254700000000".into();
        let status = billing
            .create_checkout_session(authed(request, &token("jo")))
            .await
            .err()
            .unwrap_or_else(|| panic!("{name} is not configured in this test"));
        assert_eq!(status.code(), Code::FailedPrecondition, "{name}");
        assert!(status.message().contains(name), "{}", status.message());
    }
    let status = billing
        .change_plan(authed(
            ChangePlanRequest {
                tier: Tier::Premium.into(),
                ..Default::default()
            },
            &token("jo"),
        ))
        .await
        .err()
        .unwrap_or_else(|| panic!("no subscription to change"));
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("CreateCheckoutSession"));
    let status = billing
        .change_plan(authed(ChangePlanRequest { tier: 0, ..Default::default() }, &token("jo")))
        .await
        .err()
        .unwrap_or_else(|| panic!("unspecified tier"));
    assert_eq!(status.code(), Code::InvalidArgument);
    app.stop().await;
}

async fn the_portal_is_for_the_users_own_customer(backend: Backend) {
    let (app, stripe) = TestApp::spawn_with_stripe(backend).await;
    let mut billing = app.billing().await;
    let return_url = format!("{ALLOWED_ORIGIN}/account");
    let status = billing
        .create_portal_session(authed(
            CreatePortalSessionRequest {
                return_url: return_url.clone(),
            },
            &token("kim"),
        ))
        .await
        .err()
        .unwrap_or_else(|| panic!("no billing account yet"));
    assert_eq!(status.code(), Code::FailedPrecondition);

    let (customer, _) = subscribe(&app, &stripe, "kim", Tier::Pro).await;
    let status = billing
        .create_portal_session(authed(
            CreatePortalSessionRequest {
                return_url: "https://evil.test/".into(),
            },
            &token("kim"),
        ))
        .await
        .err()
        .unwrap_or_else(|| panic!("open redirect"));
    assert_eq!(status.code(), Code::InvalidArgument);

    let portal = billing
        .create_portal_session(authed(
            CreatePortalSessionRequest {
                return_url: return_url.clone(),
            },
            &token("kim"),
        ))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner();
    assert!(portal.url.starts_with("https://billing.stripe.test/"));
    let sent = stripe.requests("POST", "/v1/billing_portal/sessions");
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].form.get("customer"), Some(&customer));
    assert_eq!(sent[0].form.get("return_url"), Some(&return_url));
    assert!(sent[0].idempotency_key.is_some());
    app.stop().await;
}

async fn seed_invoice(pool: &TestPool, user: &str, n: i64) {
    let created = Utc::now() - Duration::days(30 - n);
    exec!(
        pool,
        pg: "INSERT INTO invoices (id, user_id, provider, provider_invoice_id, amount_due, \
             amount_paid, currency, status, provider_created_at) \
             VALUES ($1::uuid, $2, 'stripe', $3, $4, $4, 'usd', 'paid', $5)",
        sqlite: "INSERT INTO invoices (id, user_id, provider, provider_invoice_id, amount_due, \
             amount_paid, currency, status, provider_created_at) \
             VALUES ($1, $2, 'stripe', $3, $4, $4, 'usd', 'paid', $5)",
        uuid::Uuid::new_v4().to_string(),
        user,
        format!("in_{user}_{n}"),
        100 * n,
        created,
    );
}

async fn invoices_are_paged_newest_first_and_private(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for n in 1..=5 {
        seed_invoice(&app.pool, "lena", n).await;
    }
    seed_invoice(&app.pool, "mark", 9).await;
    let mut billing = app.billing().await;
    let mut seen = Vec::new();
    let mut page_token = String::new();
    for _ in 0..10 {
        let page = billing
            .list_invoices(authed(
                ListInvoicesRequest {
                    page_size: 2,
                    page_token: page_token.clone(),
                },
                &token("lena"),
            ))
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .into_inner();
        assert!(page.invoices.len() <= 2);
        seen.extend(page.invoices.into_iter().map(|i| i.provider_invoice_id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(
        seen,
        [
            "in_lena_5",
            "in_lena_4",
            "in_lena_3",
            "in_lena_2",
            "in_lena_1"
        ]
    );

    let status = billing
        .list_invoices(authed(
            ListInvoicesRequest {
                page_size: 2,
                page_token: "not-a-token".into(),
            },
            &token("lena"),
        ))
        .await
        .err()
        .unwrap_or_else(|| panic!("a made-up token must be refused"));
    assert_eq!(status.code(), Code::InvalidArgument);
    // Well-formed but naming no invoice id this service issues (PostgreSQL would fail the cast).
    let forged = hex::encode(format!("{}:abc", Utc::now().timestamp_micros()));
    let status = billing
        .list_invoices(authed(
            ListInvoicesRequest {
                page_size: 2,
                page_token: forged,
            },
            &token("lena"),
        ))
        .await
        .err()
        .unwrap_or_else(|| panic!("a forged token must be refused"));
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = billing
        .list_invoices(authed(
            ListInvoicesRequest {
                page_size: -1,
                page_token: String::new(),
            },
            &token("lena"),
        ))
        .await
        .err()
        .unwrap_or_else(|| panic!("a negative page size must be refused"));
    assert_eq!(status.code(), Code::InvalidArgument);
    app.stop().await;
}
