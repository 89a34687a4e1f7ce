//! BillingService: plans, subscription, usage and limit checks.

use chrono::{Duration, Utc};
use nexus_billing::grpc::proto::billing::{
    CancelSubscriptionRequest, ChangePlanRequest, CheckLimitRequest, CreateCheckoutSessionRequest,
    CreatePortalSessionRequest, GetSubscriptionRequest, GetUsageRequest, ListInvoicesRequest,
    ListPlansRequest, Resource, ResumeSubscriptionRequest, SubscriptionStatus, Tier,
};
use tonic::Code;

use crate::helpers::{Backend, SeedSubscription, TestApp, authed, token};

crate::on_both_backends!(
    list_plans_returns_free_pro_premium_with_limits_and_prices,
    a_user_with_no_subscription_is_free_and_active,
    a_stored_paid_subscription_is_returned_with_its_dates,
    usage_counts_only_the_callers_cards_and_contacts,
    paid_usage_reports_unlimited_as_minus_one,
    check_limit_allows_the_first_card_and_refuses_the_second_on_free,
    check_limit_reports_overage_after_a_downgrade,
    cancellation_past_period_end_is_free_even_without_the_deletion_event,
    check_limit_rejects_bad_input,
    payment_rpcs_say_payments_are_not_configured_and_reads_still_work,
);

async fn list_plans_returns_free_pro_premium_with_limits_and_prices(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let plans = app
        .billing()
        .await
        .list_plans(authed(ListPlansRequest::default(), &token("u1")))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner()
        .plans;
    let summary: Vec<_> = plans
        .iter()
        .map(|p| {
            let limits = p.limits.unwrap_or_default();
            let price = p.price.clone().unwrap_or_default();
            (
                p.tier(),
                limits.cards,
                limits.contacts,
                limits.analytics_retention_days,
                price.amount_minor,
                price.currency,
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (Tier::Free, 1, 50, 7, 0, "usd".to_string()),
            (Tier::Pro, 5, -1, 90, 900, "usd".to_string()),
            (Tier::Premium, -1, -1, -1, 2900, "usd".to_string()),
        ]
    );
    app.stop().await;
}

async fn a_user_with_no_subscription_is_free_and_active(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let sub = app
        .billing()
        .await
        .get_subscription(authed(GetSubscriptionRequest {}, &token("newcomer")))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner()
        .subscription
        .unwrap_or_else(|| panic!("no subscription in the answer"));
    assert_eq!(sub.user_id, "newcomer");
    assert_eq!(sub.tier(), Tier::Free);
    assert_eq!(sub.effective_tier(), Tier::Free);
    assert_eq!(sub.status(), SubscriptionStatus::Active);
    assert!(sub.current_period_end.is_none());
    app.stop().await;
}

async fn a_stored_paid_subscription_is_returned_with_its_dates(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let period_end = Utc::now() + Duration::days(20);
    app.set_subscription(SeedSubscription {
        user: "payer",
        tier: "pro",
        status: "active",
        period_end,
        cancel_at_period_end: true,
    })
    .await;
    let sub = app
        .billing()
        .await
        .get_subscription(authed(GetSubscriptionRequest {}, &token("payer")))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner()
        .subscription
        .unwrap_or_else(|| panic!("no subscription in the answer"));
    assert_eq!(sub.tier(), Tier::Pro);
    assert_eq!(sub.effective_tier(), Tier::Pro);
    assert!(sub.cancel_at_period_end);
    let end = sub.current_period_end.unwrap_or_default();
    assert_eq!(end.seconds, period_end.timestamp());
    assert_eq!(
        sub.access_ends_at.unwrap_or_default().seconds,
        period_end.timestamp()
    );

    // Another user still sees FREE: the row is not shared.
    let other = app
        .billing()
        .await
        .get_subscription(authed(GetSubscriptionRequest {}, &token("someone-else")))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner()
        .subscription
        .unwrap_or_default();
    assert_eq!(other.tier(), Tier::Free);
    app.stop().await;
}

async fn usage_counts_only_the_callers_cards_and_contacts(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.add_cards("alice", 1).await;
    app.add_contacts("alice", 3).await;
    app.add_cards("bob", 4).await;
    app.add_contacts("bob", 9).await;

    let usage = app
        .billing()
        .await
        .get_usage(authed(GetUsageRequest {}, &token("alice")))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner();
    assert_eq!(usage.effective_tier(), Tier::Free);
    let u = usage.usage.unwrap_or_default();
    assert_eq!((u.cards_used, u.cards_limit), (1, 1));
    assert_eq!((u.contacts_used, u.contacts_limit), (3, 50));
    assert_eq!(u.analytics_retention_days, 7);
    app.stop().await;
}

async fn paid_usage_reports_unlimited_as_minus_one(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.set_subscription(SeedSubscription {
        user: "pro-user",
        tier: "pro",
        status: "active",
        period_end: Utc::now() + Duration::days(10),
        cancel_at_period_end: false,
    })
    .await;
    app.add_contacts("pro-user", 60).await;
    let usage = app
        .billing()
        .await
        .get_usage(authed(GetUsageRequest {}, &token("pro-user")))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner();
    assert_eq!(usage.effective_tier(), Tier::Pro);
    let u = usage.usage.unwrap_or_default();
    assert_eq!(
        (u.cards_limit, u.contacts_used, u.contacts_limit),
        (5, 60, -1)
    );
    assert_eq!(u.analytics_retention_days, 90);
    app.stop().await;
}

async fn check_limit_allows_the_first_card_and_refuses_the_second_on_free(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mut client = app.billing().await;
    let ask = || CheckLimitRequest {
        user_id: String::new(),
        resource: Resource::Cards.into(),
        quantity: 1,
    };
    let first = client
        .check_limit(authed(ask(), &token("carol")))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner();
    assert!(first.allowed);
    assert_eq!((first.used, first.limit, first.remaining), (0, 1, 1));

    app.add_cards("carol", 1).await;
    let second = client
        .check_limit(authed(ask(), &token("carol")))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner();
    assert!(!second.allowed);
    assert_eq!((second.used, second.limit, second.remaining), (1, 1, 0));
    assert_eq!(second.over_limit_by, 0);
    assert!(second.reason.contains("upgrade"), "{}", second.reason);
    app.stop().await;
}

async fn check_limit_reports_overage_after_a_downgrade(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    // Was PRO with 4 cards; the subscription ended, so FREE limits apply again.
    app.set_subscription(SeedSubscription {
        user: "dave",
        tier: "pro",
        status: "canceled",
        period_end: Utc::now() - Duration::days(1),
        cancel_at_period_end: false,
    })
    .await;
    app.add_cards("dave", 4).await;
    let check = app
        .billing()
        .await
        .check_limit(authed(
            CheckLimitRequest {
                user_id: String::new(),
                resource: Resource::Cards.into(),
                quantity: 0,
            },
            &token("dave"),
        ))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner();
    assert!(!check.allowed);
    assert_eq!(check.effective_tier(), Tier::Free);
    assert_eq!((check.used, check.limit, check.over_limit_by), (4, 1, 3));
    assert!(
        check.reason.contains("3 over the limit"),
        "{}",
        check.reason
    );
    app.stop().await;
}

async fn cancellation_past_period_end_is_free_even_without_the_deletion_event(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.set_subscription(SeedSubscription {
        user: "erin",
        tier: "premium",
        status: "active",
        period_end: Utc::now() - Duration::minutes(1),
        cancel_at_period_end: true,
    })
    .await;
    let usage = app
        .billing()
        .await
        .get_usage(authed(GetUsageRequest {}, &token("erin")))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner();
    assert_eq!(usage.effective_tier(), Tier::Free);
    assert_eq!(usage.usage.unwrap_or_default().cards_limit, 1);
    app.stop().await;
}

async fn check_limit_rejects_bad_input(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mut client = app.billing().await;
    let unspecified = client
        .check_limit(authed(
            CheckLimitRequest {
                user_id: String::new(),
                resource: Resource::Unspecified.into(),
                quantity: 1,
            },
            &token("frank"),
        ))
        .await
        .err()
        .unwrap_or_else(|| panic!("RESOURCE_UNSPECIFIED must be refused"));
    assert_eq!(unspecified.code(), Code::InvalidArgument);
    assert!(unspecified.message().contains("resource"));

    let negative = client
        .check_limit(authed(
            CheckLimitRequest {
                user_id: String::new(),
                resource: Resource::Contacts.into(),
                quantity: -5,
            },
            &token("frank"),
        ))
        .await
        .err()
        .unwrap_or_else(|| panic!("a negative quantity must be refused"));
    assert_eq!(negative.code(), Code::InvalidArgument);
    assert!(negative.message().contains("quantity"));
    app.stop().await;
}

async fn payment_rpcs_say_payments_are_not_configured_and_reads_still_work(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mut billing = app.billing().await;
    let t = token("gina");
    let checkout = billing
        .create_checkout_session(authed(
            CreateCheckoutSessionRequest {
                tier: Tier::Pro.into(),
                success_url: format!("{}/ok", crate::helpers::ALLOWED_ORIGIN),
                cancel_url: format!("{}/cancel", crate::helpers::ALLOWED_ORIGIN),
                ..Default::default()
            },
            &t,
        ))
        .await
        .err();
    let change = billing
        .change_plan(authed(
            ChangePlanRequest {
                tier: Tier::Premium.into(),
                ..Default::default()
            },
            &t,
        ))
        .await
        .err();
    let cancel = billing
        .cancel_subscription(authed(CancelSubscriptionRequest {}, &t))
        .await
        .err();
    let resume = billing
        .resume_subscription(authed(ResumeSubscriptionRequest {}, &t))
        .await
        .err();
    let portal = billing
        .create_portal_session(authed(
            CreatePortalSessionRequest {
                return_url: format!("{}/account", crate::helpers::ALLOWED_ORIGIN),
            },
            &t,
        ))
        .await
        .err();
    for (rpc, status) in [
        ("CreateCheckoutSession", checkout),
        ("ChangePlan", change),
        ("CancelSubscription", cancel),
        ("ResumeSubscription", resume),
        ("CreatePortalSession", portal),
    ] {
        let status = status.unwrap_or_else(|| panic!("{rpc} must fail without Stripe"));
        assert_eq!(status.code(), Code::FailedPrecondition, "{rpc}");
        assert!(
            status.message().starts_with("payments are not configured: set STRIPE_SECRET_KEY"),
            "{rpc}: {}",
            status.message()
        );
    }
    // Reading still works.
    let sub = billing
        .get_subscription(authed(GetSubscriptionRequest {}, &t))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner();
    assert_eq!(
        sub.subscription.map(|s| s.effective_tier),
        Some(Tier::Free.into())
    );
    let invoices = billing
        .list_invoices(authed(ListInvoicesRequest::default(), &t))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner();
    assert!(invoices.invoices.is_empty());
    app.stop().await;
}
