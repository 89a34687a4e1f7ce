//! AccountService: the export, erasure and activity history, on both backends. Erasure is
//! checked by searching every row of every table this service owns for the user's id and email
//! (`account_world::rows_naming`).


use nexus_billing::grpc::proto::account::{
    DeleteMyDataRequest, ExportMyDataRequest, ListActivityRequest, RevocationOutcome,
    account_service_client::AccountServiceClient,
};
use serde_json::Value;
use tonic::Code;

use crate::{
    account_world::{
        ADA, BOB, Replica, World, email, erase, export, of_type, rich_user, rows_naming,
    },
    fake_http::{HoldPoint, route},
    fake_providers::HUBSPOT_TOKEN,
    helpers::{Backend, authed, service_token, token},
};

crate::on_both_backends!(
    the_export_holds_everything_of_the_user_in_the_documented_shape,
    erasure_leaves_only_detached_invoices_and_a_second_call_reports_it,
    a_crash_in_the_middle_of_an_erasure_keeps_the_data_and_the_rerun_finishes,
    another_users_data_is_refused_unless_the_caller_is_a_service,
    activity_is_paged_newest_first,
);

async fn the_export_holds_everything_of_the_user_in_the_documented_shape(backend: Backend) {
    let w = World::start(backend).await;
    let sub_id = rich_user(&w, ADA).await;
    let lines = export(&w.app, &token(ADA), "").await;

    assert_eq!(lines[0]["type"], "export");
    assert_eq!(lines[0]["format"], "nexus-billing-export");
    assert_eq!(lines[0]["version"], 1);
    assert_eq!(lines[0]["user_id"], ADA);
    let last = lines.last().unwrap_or_else(|| panic!("empty export"));
    assert_eq!(last["type"], "end");
    assert_eq!(
        last["records"],
        lines.len() - 1,
        "the trailer counts the lines"
    );
    let order: Vec<&str> = lines.iter().filter_map(|l| l["type"].as_str()).collect();
    let position = |t: &str| order.iter().position(|x| *x == t);
    for pair in [
        "subscription",
        "invoice",
        "integration",
        "sync_job",
        "activity",
        "end",
    ]
    .windows(2)
    {
        assert!(
            position(pair[0]) < position(pair[1]),
            "{pair:?} out of order: {order:?}"
        );
    }

    let subscription = of_type(&lines, "subscription");
    assert_eq!(subscription.len(), 1);
    assert_eq!(subscription[0]["tier"], "pro");
    assert_eq!(subscription[0]["effective_tier"], "pro");
    assert_eq!(subscription[0]["provider_subscription_id"], sub_id.as_str());

    let invoices = of_type(&lines, "invoice");
    let ids: Vec<&str> = invoices
        .iter()
        .filter_map(|i| i["provider_invoice_id"].as_str())
        .collect();
    assert_eq!(ids.len(), 2);
    assert_eq!(invoices[0]["status"], "paid", "newest first");
    assert_eq!(invoices[0]["amount_paid"], 900);
    assert_eq!(invoices[1]["amount_paid"], 0);

    let integrations = of_type(&lines, "integration");
    let providers: Vec<&str> = integrations
        .iter()
        .filter_map(|i| i["provider"].as_str())
        .collect();
    assert_eq!(providers, ["google_drive", "hubspot"]);
    assert!(integrations.iter().all(|i| i["status"] == "active"));
    let hubspot = integrations[1];
    assert!(hubspot["last_sync_at"].is_string(), "{hubspot}");

    let jobs = of_type(&lines, "sync_job");
    assert!(
        jobs.iter()
            .any(|j| j["provider"] == "hubspot" && j["state"] == "succeeded"),
        "{jobs:?}"
    );
    let activity: Vec<&str> = of_type(&lines, "activity")
        .iter()
        .filter_map(|a| a["kind"].as_str())
        .collect();
    for kind in [
        "subscription.started",
        "payment.failed",
        "payment.succeeded",
        "integration.connected",
    ] {
        assert!(activity.contains(&kind), "{kind} missing from {activity:?}");
    }

    // Never a credential: the HubSpot key, the OAuth tokens and client secret.
    let text = lines.iter().map(Value::to_string).collect::<String>();
    let mut secrets = w.drive.secrets();
    secrets.push(HUBSPOT_TOKEN.to_string());
    assert!(secrets.len() > 2);
    for secret in &secrets {
        assert!(!text.contains(secret.as_str()), "the export holds a secret");
    }

    // Another user's export holds nothing of Ada's.
    let other = export(&w.app, &token(BOB), "").await;
    let other_text = other.iter().map(Value::to_string).collect::<String>();
    assert!(!other_text.contains(ADA), "{other_text}");
    for id in &ids {
        assert!(!other_text.contains(id), "{other_text}");
    }
    assert_eq!(of_type(&other, "subscription")[0]["tier"], "free");
    assert_eq!(
        other.len(),
        3,
        "header, FREE subscription and trailer: {other:?}"
    );
    w.app.stop().await;
}

async fn erasure_leaves_only_detached_invoices_and_a_second_call_reports_it(backend: Backend) {
    let w = World::start(backend).await;
    let sub_id = rich_user(&w, ADA).await;
    rich_user(&w, BOB).await;
    let pool = &w.app.pool;
    assert!(
        !rows_naming(pool, &email(ADA)).await.is_empty(),
        "the search finds the email before"
    );
    assert!(!rows_naming(pool, ADA).await.is_empty());
    let bob_rows_before = rows_naming(pool, BOB).await.len();

    // The card application's account deletion calls it with a service token.
    let erased = erase(&w.app, &service_token("card-app"), ADA).await;
    assert!(!erased.already_erased);
    assert_eq!(erased.integrations_deleted, 2);
    assert!(erased.sync_jobs_deleted >= 1);
    assert!(erased.activity_entries_deleted >= 4);
    assert_eq!(erased.oauth_states_deleted, 1);
    assert_eq!(erased.subscriptions_deleted, 1);
    assert_eq!(erased.payment_customers_deleted, 1);
    assert_eq!(erased.invoices_kept, 2);
    assert!(erased.webhook_events_scrubbed >= 4);
    assert_eq!(erased.subscription_canceled_provider, "stripe");
    let mut revocations: Vec<(String, RevocationOutcome)> = erased
        .revocations
        .iter()
        .map(|r| (r.provider.clone(), r.outcome()))
        .collect();
    revocations.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        revocations,
        [
            ("google_drive".to_string(), RevocationOutcome::Revoked),
            ("hubspot".to_string(), RevocationOutcome::NotSupported),
        ]
    );
    // The providers were told: the grant revoked, the subscription cancelled now.
    assert_eq!(w.drive.revoked().len(), 1, "one revocation at Google");
    let deleted = w.stripe.requests("DELETE", "/v1/subscriptions/");
    assert_eq!(deleted.len(), 1);
    assert!(deleted[0].path.ends_with(&sub_id));

    // Nothing names Ada any more; her invoices stay, detached, with their amounts.
    assert_eq!(rows_naming(pool, ADA).await, Vec::<String>::new());
    assert_eq!(rows_naming(pool, &email(ADA)).await, Vec::<String>::new());
    let pseudonym = format!("erased:{}", erased.erasure_id);
    let kept = w
        .app
        .count(
            "invoices",
            &format!("user_id = '{pseudonym}' AND amount_due = 900 AND hosted_invoice_url IS NULL"),
        )
        .await;
    assert_eq!(kept, 2);
    assert_eq!(
        w.app.count("erasures", "state = 'done' AND runs = 1").await,
        1
    );
    // Bob is untouched.
    assert_eq!(rows_naming(pool, BOB).await.len(), bob_rows_before);

    // A second call finds nothing and says so.
    let again = erase(&w.app, &token(ADA), "").await;
    assert!(again.already_erased);
    assert_eq!(again.erasure_id, erased.erasure_id);
    assert!(again.first_erased_at.is_some());
    assert_eq!(
        again.integrations_deleted + again.invoices_kept + again.activity_entries_deleted,
        0
    );
    assert!(again.revocations.is_empty());
    assert_eq!(w.stripe.requests("DELETE", "/v1/subscriptions/").len(), 1);

    // Stripe's late news about the cancelled subscription, and a replayed checkout, bring
    // nothing back.
    let cancelled = w
        .stripe
        .subscription(&sub_id)
        .unwrap_or_else(|| panic!("sub"));
    let (_, deleted_event) = w.stripe.event("customer.subscription.deleted", &cancelled);
    w.app.deliver_signed(&deleted_event).await;
    let customer = cancelled["customer"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let (_, replayed) = w.stripe.event(
        "checkout.session.completed",
        &w.stripe.checkout_completed(ADA, &customer, &sub_id),
    );
    w.app.deliver_signed(&replayed).await;
    let export = export(&w.app, &token(ADA), "").await;
    assert_eq!(export.len(), 3, "{export:?}");
    assert_eq!(of_type(&export, "subscription")[0]["tier"], "free");
    // Both events are kept by id (so they are never applied again), without their payload.
    let naming = rows_naming(pool, ADA).await;
    assert_eq!(naming, Vec::<String>::new());
    w.app.stop().await;
}

async fn a_crash_in_the_middle_of_an_erasure_keeps_the_data_and_the_rerun_finishes(
    backend: Backend,
) {
    let w = World::start(backend).await;
    rich_user(&w, ADA).await;
    // A second replica takes the call. The erasure revokes Google's grant, then waits on
    // Stripe (whose first request is held: Stripe has not seen it), and the replica is killed
    // there (SIGKILL). That request is never let through.
    let replica = Replica::start(&w);
    let stripe_waits = w.stripe.server.hold_first(1, HoldPoint::Arrival, route("*", "/"));
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", replica.grpc_addr))
        .unwrap_or_else(|e| panic!("{e}"))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let call = tokio::spawn(async move {
        AccountServiceClient::new(channel)
            .delete_my_data(authed(DeleteMyDataRequest::default(), &token(ADA)))
            .await
    });
    stripe_waits.arrived(1).await;
    assert!(!w.drive.revoked().is_empty(), "Google's grant is revoked first");
    replica.kill();
    let failed = call.await.unwrap_or_else(|e| panic!("{e}"));
    assert!(failed.is_err(), "the call cannot have finished: {failed:?}");

    // Nothing was deleted: the entry says the erasure is running.
    let app = &w.app;
    let ada = format!("user_id = '{ADA}'");
    assert_eq!(app.count("integrations", &ada).await, 2);
    assert_eq!(app.count("subscriptions", &ada).await, 1);
    assert_eq!(app.count("erasures", "state = 'running'").await, 1);
    assert!(w.stripe.requests("DELETE", "/v1/subscriptions/").is_empty());

    // The rerun, on the surviving replica, finishes.
    let erased = erase(app, &token(ADA), "").await;
    assert!(!erased.already_erased);
    assert_eq!(erased.integrations_deleted, 2);
    assert_eq!(erased.invoices_kept, 2);
    assert_eq!(erased.subscription_canceled_provider, "stripe");
    assert!(w.drive.revoked().len() >= 2, "revoked again by the rerun");
    assert_eq!(rows_naming(&app.pool, ADA).await, Vec::<String>::new());
    assert_eq!(
        app.count("erasures", "state = 'done' AND runs = 2").await,
        1
    );
    w.app.stop().await;
}

async fn another_users_data_is_refused_unless_the_caller_is_a_service(backend: Backend) {
    let w = World::start(backend).await;
    rich_user(&w, ADA).await;
    let mut client = w.app.account().await;
    let bob = token(BOB);
    let refused = [
        client
            .list_activity(authed(
                ListActivityRequest {
                    user_id: ADA.into(),
                    ..Default::default()
                },
                &bob,
            ))
            .await
            .err(),
        client
            .export_my_data(authed(
                ExportMyDataRequest {
                    user_id: ADA.into(),
                },
                &bob,
            ))
            .await
            .err(),
        client
            .delete_my_data(authed(
                DeleteMyDataRequest {
                    user_id: ADA.into(),
                },
                &bob,
            ))
            .await
            .err(),
    ];
    for status in refused {
        let status = status.unwrap_or_else(|| panic!("another user's data was served"));
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    }
    // Without a token, nothing at all.
    let anonymous = client
        .list_activity(ListActivityRequest::default())
        .await
        .err()
        .map(|s| s.code());
    assert_eq!(anonymous, Some(Code::Unauthenticated));
    assert_eq!(
        w.app
            .count("integrations", &format!("user_id = '{ADA}'"))
            .await,
        2
    );

    // Support (a service caller) may read Ada's export.
    let support = export(&w.app, &service_token("support-tool"), ADA).await;
    assert_eq!(support[0]["user_id"], ADA);
    assert_eq!(of_type(&support, "integration").len(), 2);
    w.app.stop().await;
}

async fn activity_is_paged_newest_first(backend: Backend) {
    let w = World::start(backend).await;
    rich_user(&w, ADA).await;
    let mut client = w.app.account().await;
    let mut seen = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_activity(authed(
                ListActivityRequest {
                    page_size: 2,
                    page_token: page_token.clone(),
                    ..Default::default()
                },
                &token(ADA),
            ))
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .into_inner();
        assert!(page.entries.len() <= 2);
        seen.extend(page.entries);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let stored = w.app.activity_kinds(ADA).await;
    assert!(stored.len() >= 4);
    let mut kinds: Vec<String> = seen.iter().map(|e| e.kind.clone()).collect();
    kinds.reverse();
    assert_eq!(kinds, stored, "every entry once, newest first");
    let times: Vec<i64> = seen
        .iter()
        .filter_map(|e| e.created_at.as_ref().map(|t| t.seconds))
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");
    assert!(
        seen.iter()
            .all(|e| serde_json::from_str::<Value>(&e.details_json).is_ok())
    );
    let bad = client
        .list_activity(authed(
            ListActivityRequest {
                page_token: "not-a-token".into(),
                ..Default::default()
            },
            &token(ADA),
        ))
        .await
        .err()
        .map(|s| s.code());
    assert_eq!(bad, Some(Code::InvalidArgument));
    w.app.stop().await;
}
