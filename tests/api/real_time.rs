//! Integrations in real time (issue 29): provider webhooks in (HubSpot signed v3, Mailchimp's
//! per-connection secret URL, Zoho's watch channel), NotifyContactsChanged out, and each
//! connection's health. Every delivery goes through the real sidecar to a real database, and
//! the fakes check what the service asked them.

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use nexus_billing::grpc::proto::integrations::{
    HealthState, Integration, ListIntegrationsRequest, NotifyContactsChangedRequest,
    NotifyContactsChangedResponse, Provider,
};
use sha2::Sha256;
use tonic::Code;

use crate::{
    fake_feeds::PORTAL_ID,
    fake_oauth::{FakeOAuth, OKind, record},
    fake_providers::{FakeProvider, Kind},
    helpers::{
        Backend, TestApp, authed, eventually, service_token, token, wait_for,
    },
    integrations::{connect_request, spawn_with_fakes},
    oauth::{connect_oauth, spawn_with_oauth},
};

crate::on_both_backends!(
    signed_hubspot_deliveries_import_once_and_nothing_else_changes_anything,
    a_burst_of_a_thousand_hubspot_events_is_accepted_and_applied_once,
    mailchimp_webhooks_are_registered_remembered_and_removed,
    zoho_notifications_are_checked_by_channel_token_and_the_channel_renewed,
    notify_contacts_changed_pushes_and_coalesces,
    a_change_notified_while_a_push_runs_goes_out_after_it,
    health_falls_to_failing_and_comes_back,
    a_feed_that_cannot_be_set_up_leaves_the_connection_working,
);

pub const HUBSPOT_SECRET: &str = "hubspot-app-client-secret-for-tests";
pub const PUBLIC_BASE: &str = "https://hooks.nexus.test";

/// The settings that turn on provider webhooks.
pub fn real_time_settings() -> Vec<(&'static str, &'static str)> {
    vec![
        ("--hubspot-webhook-secret", HUBSPOT_SECRET),
        ("--public-base-url", PUBLIC_BASE),
    ]
}

/// HubSpot's v3 signature of a POST to the webhook route, made at `timestamp_ms`.
pub fn hubspot_signature(body: &str, timestamp_ms: i64) -> String {
    let uri = format!("{PUBLIC_BASE}/integrations/webhook/hubspot");
    let mut mac = Hmac::<Sha256>::new_from_slice(HUBSPOT_SECRET.as_bytes())
        .unwrap_or_else(|e| panic!("{e}"));
    mac.update(format!("POST{uri}{body}{timestamp_ms}").as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// POSTs to a sidecar path; the status and body text.
pub async fn post(
    app: &TestApp,
    path: &str,
    body: &str,
    content_type: &str,
    headers: &[(&str, String)],
) -> (u16, String) {
    let mut request = reqwest::Client::new()
        .post(app.http_url(path))
        .header("content-type", content_type)
        .body(body.to_string());
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let response = request.send().await.unwrap_or_else(|e| panic!("{e}"));
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// A HubSpot delivery signed now (or with the given signature headers).
pub async fn deliver_hubspot(app: &TestApp, body: &str) -> (u16, String) {
    let now = chrono::Utc::now().timestamp_millis();
    post(
        app,
        "/integrations/webhook/hubspot",
        body,
        "application/json",
        &[
            ("x-hubspot-signature-v3", hubspot_signature(body, now)),
            ("x-hubspot-request-timestamp", now.to_string()),
        ],
    )
    .await
}

/// HubSpot events: (event id, type, object id) for `portal`.
pub fn hubspot_events(portal: u64, events: &[(u64, &str, usize)]) -> String {
    let events: Vec<serde_json::Value> = events
        .iter()
        .map(|(id, kind, object)| {
            serde_json::json!({"eventId": id, "subscriptionId": 7, "portalId": portal, "appId": 99,
                "occurredAt": 1_700_000_000_000_i64, "subscriptionType": kind, "attemptNumber": 0,
                "objectId": object, "changeSource": "CRM", "propertyName": "email"})
        })
        .collect();
    serde_json::Value::from(events).to_string()
}

/// The user's contacts' addresses, lower case, sorted.
pub async fn emails(app: &TestApp, user: &str) -> Vec<String> {
    let sql = "SELECT lower(email) FROM contacts WHERE user_id = $1 ORDER BY lower(email)";
    match &app.pool {
        crate::helpers::TestPool::Sqlite(pool) => {
            sqlx::query_scalar(sql).bind(user).fetch_all(pool).await
        }
        crate::helpers::TestPool::Postgres(pool) => {
            sqlx::query_scalar(sql).bind(user).fetch_all(pool).await
        }
    }
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Waits until no provider webhook event is pending.
pub async fn settled(app: &TestApp) {
    eventually("every provider webhook event applied", || async {
        app.count("integration_webhook_events", "state = 'pending'")
            .await
            == 0
    })
    .await;
}

async fn connect_with(app: &TestApp, user: &str, fake: &FakeProvider, settings: &[(&str, &str)]) {
    let mut request = connect_request(fake);
    for (k, v) in settings {
        request.settings.insert(k.to_string(), v.to_string());
    }
    app.integrations()
        .await
        .connect_integration(authed(request, &token(user)))
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
}

async fn integrations(app: &TestApp, user: &str) -> Vec<Integration> {
    app.integrations()
        .await
        .list_integrations(authed(ListIntegrationsRequest {}, &token(user)))
        .await
        .unwrap_or_else(|e| panic!("list: {e}"))
        .into_inner()
        .integrations
}

async fn notify(app: &TestApp, caller: &str, user: &str) -> Result<NotifyContactsChangedResponse, tonic::Status> {
    app.integrations()
        .await
        .notify_contacts_changed(authed(
            NotifyContactsChangedRequest {
                user_id: user.into(),
                contact_ids: vec!["c-1".into()],
            },
            &service_token(caller),
        ))
        .await
        .map(tonic::Response::into_inner)
}

async fn signed_hubspot_deliveries_import_once_and_nothing_else_changes_anything(backend: Backend) {
    let hubspot = FakeProvider::start(Kind::Hubspot).await;
    hubspot.set_remote(&[
        ("ann@x.com", "Ann", "One", "2024-06-01T00:00:00Z"),
        ("bo@x.com", "Bo", "Two", "2024-06-01T00:00:00Z"),
        ("cy@x.com", "Cy", "Three", "2024-06-01T00:00:00Z"),
    ]);
    let app = spawn_with_fakes(backend, &[&hubspot], &real_time_settings()).await;
    // Two users connect the same portal: one imports, one only pushes.
    connect_with(&app, "importer", &hubspot, &[("syncDirection", "import")]).await;
    connect_with(&app, "pusher", &hubspot, &[]).await;
    assert_eq!(hubspot.feeds.account_calls(), 2, "each connection learns its portal");

    let body = hubspot_events(
        PORTAL_ID,
        &[(1, "contact.creation", 0), (2, "contact.propertyChange", 1)],
    );
    let (status, text) = deliver_hubspot(&app, &body).await;
    assert_eq!((status, text.as_str()), (200, "ok"));
    wait_for("the two contacts imported", || async {
        let found = emails(&app, "importer").await;
        (found.len() == 2).then_some(found)
    })
    .await;
    settled(&app).await;
    assert_eq!(emails(&app, "importer").await, ["ann@x.com", "bo@x.com"]);
    assert!(emails(&app, "pusher").await.is_empty(), "a push-only connection imports nothing");
    assert_eq!(hubspot.batch_reads(), 1, "the changed contacts are read in one call");

    // A redelivery is acknowledged and stores nothing new.
    let (status, text) = deliver_hubspot(&app, &body).await;
    assert_eq!((status, text.as_str()), (200, "duplicate"));
    let stored = app.count("integration_webhook_events", "").await;
    assert_eq!(stored, 4, "two events for each of the two connections");

    // Unsigned, wrongly signed, stale and foreign deliveries change nothing.
    let other = hubspot_events(PORTAL_ID, &[(3, "contact.creation", 2)]);
    let now = chrono::Utc::now().timestamp_millis();
    let unsigned = post(&app, "/integrations/webhook/hubspot", &other, "application/json", &[]).await;
    assert_eq!(unsigned.0, 401, "{}", unsigned.1);
    let wrong = post(
        &app,
        "/integrations/webhook/hubspot",
        &other,
        "application/json",
        &[
            ("x-hubspot-signature-v3", hubspot_signature(&body, now)),
            ("x-hubspot-request-timestamp", now.to_string()),
        ],
    )
    .await;
    assert_eq!(wrong.0, 401, "{}", wrong.1);
    let stale_at = now - 6 * 60 * 1000;
    let stale = post(
        &app,
        "/integrations/webhook/hubspot",
        &other,
        "application/json",
        &[
            ("x-hubspot-signature-v3", hubspot_signature(&other, stale_at)),
            ("x-hubspot-request-timestamp", stale_at.to_string()),
        ],
    )
    .await;
    assert_eq!(stale.0, 401, "{}", stale.1);
    let foreign = hubspot_events(999, &[(4, "contact.creation", 2)]);
    assert_eq!(deliver_hubspot(&app, &foreign).await, (200, "ignored".into()));
    assert_eq!(app.count("integration_webhook_events", "").await, stored);
    settled(&app).await;
    assert_eq!(emails(&app, "importer").await, ["ann@x.com", "bo@x.com"]);
    assert_eq!(hubspot.batch_reads(), 1);

    // After a disconnect, the portal's deliveries are acknowledged and dropped.
    app.integrations()
        .await
        .disconnect_integration(authed(
            nexus_billing::grpc::proto::integrations::DisconnectIntegrationRequest {
                provider: Provider::Hubspot.into(),
            },
            &token("importer"),
        ))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let late = hubspot_events(PORTAL_ID, &[(5, "contact.creation", 2)]);
    assert_eq!(deliver_hubspot(&app, &late).await, (200, "ok".into()));
    settled(&app).await;
    assert_eq!(emails(&app, "importer").await, ["ann@x.com", "bo@x.com"]);
    assert_eq!(hubspot.batch_reads(), 1, "the push-only connection reads nothing");
    hubspot.assert_no_problems();
    assert!(hubspot.feeds.take_problems().is_empty());
}

async fn a_burst_of_a_thousand_hubspot_events_is_accepted_and_applied_once(backend: Backend) {
    let hubspot = FakeProvider::start(Kind::Hubspot).await;
    let remote: Vec<(String, String)> = (0..50)
        .map(|i| (format!("p{i}@x.com"), format!("P{i}")))
        .collect();
    let refs: Vec<(&str, &str, &str, &str)> = remote
        .iter()
        .map(|(e, f)| (e.as_str(), f.as_str(), "Burst", "2024-06-01T00:00:00Z"))
        .collect();
    hubspot.set_remote(&refs);
    let app = spawn_with_fakes(backend, &[&hubspot], &real_time_settings()).await;
    connect_with(&app, "burst", &hubspot, &[("syncDirection", "both")]).await;
    // 1,000 events in 10 deliveries of 100 (HubSpot's most), all at once.
    let deliveries = (0..10u64).map(|d| {
        let events: Vec<(u64, &str, usize)> = (0..100u64)
            .map(|i| (d * 100 + i, "contact.propertyChange", ((d * 100 + i) % 50) as usize))
            .collect();
        let body = hubspot_events(PORTAL_ID, &events);
        let app = &app;
        async move { deliver_hubspot(app, &body).await }
    });
    for (status, text) in futures_util::future::join_all(deliveries).await {
        assert_eq!((status, text.as_str()), (200, "ok"));
    }
    settled(&app).await;
    assert_eq!(app.count("integration_webhook_events", "state = 'done'").await, 1000);
    assert_eq!(emails(&app, "burst").await.len(), 50);
    let metrics = reqwest::get(app.metrics_url())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .text()
        .await
        .unwrap_or_default();
    let applied = metrics
        .lines()
        .find(|l| {
            l.starts_with("integration_webhook_events_applied_total")
                && l.contains("provider=\"hubspot\"")
                && l.contains("outcome=\"applied\"")
        })
        .unwrap_or_else(|| panic!("no applied counter in\n{metrics}"));
    assert!(applied.ends_with(" 1000"), "each event applied once: {applied}");
    hubspot.assert_no_problems();
}

async fn mailchimp_webhooks_are_registered_remembered_and_removed(backend: Backend) {
    let mailchimp = FakeProvider::start(Kind::Mailchimp).await;
    let app = spawn_with_fakes(backend, &[&mailchimp], &real_time_settings()).await;
    connect_with(&app, "mc", &mailchimp, &[("syncDirection", "both")]).await;
    let webhooks = mailchimp.feeds.webhooks();
    assert_eq!(webhooks.len(), 1, "one list webhook registered");
    let url = &webhooks[0].1;
    let path = url
        .strip_prefix(PUBLIC_BASE)
        .unwrap_or_else(|| panic!("not under the public base URL: {url}"))
        .to_string();
    assert!(path.starts_with("/integrations/webhook/mailchimp/") && path.len() > 60, "{path}");
    // Mailchimp's validation GET.
    let check = reqwest::get(app.http_url(&path)).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(check.status().as_u16(), 200);

    let form = |kind: &str, email: &str| {
        format!("type={kind}&fired_at=2026-12-05+10%3A00%3A00&data%5Bid%5D=8a25ff1d98&data%5Blist_id%5D=list42&data%5Bemail%5D={}&data%5Bmerges%5D%5BFNAME%5D=Mia", email.replace('@', "%40"))
    };
    let form_type = "application/x-www-form-urlencoded";
    let (status, text) = post(&app, &path, &form("subscribe", "mia@x.com"), form_type, &[]).await;
    assert_eq!((status, text.as_str()), (200, "ok"));
    wait_for("the subscriber imported", || async {
        emails(&app, "mc").await.contains(&"mia@x.com".to_string()).then_some(())
    })
    .await;
    // A wrong secret changes nothing.
    let wrong = post(&app, "/integrations/webhook/mailchimp/abc123", &form("subscribe", "eve@x.com"), form_type, &[]).await;
    assert_eq!(wrong, (200, "ignored".into()));

    // An unsubscribe is remembered: a later push leaves the address alone.
    let (status, _) = post(&app, &path, &form("unsubscribe", "mia@x.com"), form_type, &[]).await;
    assert_eq!(status, 200);
    settled(&app).await;
    assert_eq!(app.count("integration_unsubscribes", "email = 'mia@x.com'").await, 1);
    app.add_contacts_named("mc", "kept", 2).await;
    let mut client = app.integrations().await;
    let job = crate::integrations::start_full_sync(&mut client, "mc", Provider::Mailchimp).await;
    let job = crate::integrations::wait_for_job(&app, "mc", &job.id).await;
    assert_eq!(job.contacts_skipped, 1, "{job:?}");
    let pushed = mailchimp.pushed_emails();
    assert!(pushed.iter().any(|e| e.starts_with("kept")), "{pushed:?}");
    assert!(!pushed.iter().any(|e| e == "mia@x.com"), "an unsubscribed address was pushed: {pushed:?}");

    // Another list: the webhook moves with it (removed from the old list first), and the
    // old list's unsubscribes are forgotten.
    app.integrations()
        .await
        .update_integration(authed(
            nexus_billing::grpc::proto::integrations::UpdateIntegrationRequest {
                provider: Provider::Mailchimp.into(),
                settings: [
                    ("listId".to_string(), "list43".to_string()),
                    ("syncDirection".to_string(), "both".to_string()),
                ]
                .into(),
            },
            &token("mc"),
        ))
        .await
        .unwrap_or_else(|e| panic!("update: {e}"));
    assert_eq!(mailchimp.feeds.deleted_webhooks(), [webhooks[0].0.clone()]);
    assert_eq!(mailchimp.feeds.webhook_lists(), ["list43"]);
    assert_eq!(app.count("integration_unsubscribes", "").await, 0);
    let webhooks = mailchimp.feeds.webhooks();
    let old_path = path;
    let path = webhooks[0].1.strip_prefix(PUBLIC_BASE).unwrap_or_default().to_string();
    assert_eq!(
        post(&app, &old_path, &form("subscribe", "old-list@x.com"), form_type, &[]).await,
        (200, "ignored".into()),
        "the old list's URL is dead"
    );

    // Disconnecting removes the webhook; its URL then changes nothing.
    app.integrations()
        .await
        .disconnect_integration(authed(
            nexus_billing::grpc::proto::integrations::DisconnectIntegrationRequest {
                provider: Provider::Mailchimp.into(),
            },
            &token("mc"),
        ))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(mailchimp.feeds.deleted_webhooks().last(), Some(&webhooks[0].0));
    assert!(mailchimp.feeds.webhooks().is_empty());
    let after = post(&app, &path, &form("subscribe", "late@x.com"), form_type, &[]).await;
    assert_eq!(after, (200, "ignored".into()));
    assert_eq!(app.count("integration_webhook_events", "").await, 0);
    mailchimp.assert_no_problems();
    assert!(mailchimp.feeds.take_problems().is_empty());
}

async fn zoho_notifications_are_checked_by_channel_token_and_the_channel_renewed(backend: Backend) {
    let zoho = FakeOAuth::start(OKind::Zoho).await;
    let mut records = vec![record("zed@x.com", "Zed", "Zoho", "2024-06-01T00:00:00Z")];
    records.push(record("zia@x.com", "Zia", "Zoho", "2024-06-01T00:00:00Z"));
    zoho.add_records(records);
    let mut settings = real_time_settings();
    // Channels last a day: renewing a minute before... and right away.
    settings.push(("--zoho-channel-renew-before", "23h59m58s"));
    let app = spawn_with_oauth(backend, &[&zoho], &settings).await;
    connect_oauth(&app, "zo", &zoho, &[("syncDirection", "import")]).await;
    let channel = wait_for("a watch channel", || async { zoho.feeds.channels().pop() }).await;
    assert_eq!(
        channel.notify_url,
        format!("{PUBLIC_BASE}/integrations/webhook/zoho_crm")
    );
    let ids: Vec<String> = zoho.records().iter().map(|r| r.id.clone()).collect();
    let note = |token: &str, channel: &str| {
        serde_json::json!({"server_time": 1_700_000_000_000_i64, "query_params": {}, "module": "Contacts",
            "resource_uri": "https://www.zohoapis.com/crm/v2/Contacts", "ids": [ids[0]],
            "affected_fields": [], "operation": "update", "channel_id": channel, "token": token})
        .to_string()
    };
    // The renewal comes within two seconds and rotates the token.
    let renewed = wait_for("the channel renewed", || async {
        zoho.feeds
            .channels()
            .pop()
            .filter(|c| c.token != channel.token)
    })
    .await;
    assert!(zoho.feeds.watch_calls().contains(&"PATCH".to_string()));
    let path = "/integrations/webhook/zoho_crm";
    let json = "application/json";
    // A made-up token changes nothing.
    assert_eq!(post(&app, path, &note("forged", &renewed.channel_id), json, &[]).await.1, "ignored");
    assert!(emails(&app, "zo").await.is_empty());
    // A notification sent just before the renewal reached Zoho (the token before) still
    // counts; the new token too.
    let (status, text) = post(&app, path, &note(&channel.token, &channel.channel_id), json, &[]).await;
    assert_eq!((status, text.as_str()), (200, "ok"));
    wait_for("the changed Zoho contact imported", || async {
        (emails(&app, "zo").await == ["zed@x.com"]).then_some(())
    })
    .await;
    // After the next renewal, the first token is retired for good.
    wait_for("the channel renewed again", || async {
        zoho.feeds
            .channels()
            .pop()
            .filter(|c| c.token != renewed.token && c.token != channel.token)
    })
    .await;
    assert_eq!(post(&app, path, &note(&channel.token, &channel.channel_id), json, &[]).await.1, "ignored");
    zoho.assert_no_problems();
    assert!(zoho.feeds.take_problems().is_empty());
}

async fn notify_contacts_changed_pushes_and_coalesces(backend: Backend) {
    let hubspot = FakeProvider::start(Kind::Hubspot).await;
    let app = spawn_with_fakes(
        backend,
        &[&hubspot],
        &[("--notify-coalesce-window", "10s")],
    )
    .await;
    crate::integrations::connect(&app, "card-user", &hubspot).await;
    app.add_contacts_named("card-user", "n", 3).await;
    // A user may not name another user; a service may.
    let denied = app
        .integrations()
        .await
        .notify_contacts_changed(authed(
            NotifyContactsChangedRequest {
                user_id: "card-user".into(),
                contact_ids: vec![],
            },
            &token("someone-else"),
        ))
        .await
        .expect_err("another user's notification");
    assert_eq!(denied.code(), Code::PermissionDenied);
    // 100 notifications at once make one job.
    let calls = (0..100).map(|_| notify(&app, "card-app", "card-user"));
    let answers = futures_util::future::join_all(calls).await;
    let mut ids = std::collections::BTreeSet::new();
    for answer in answers {
        let answer = answer.unwrap_or_else(|e| panic!("notify: {e}"));
        assert_eq!(answer.jobs.len(), 1);
        ids.insert(answer.jobs[0].id.clone());
    }
    assert_eq!(ids.len(), 1, "one job for 100 notifications: {ids:?}");
    let id = ids.into_iter().next().unwrap_or_default();
    let job = crate::integrations::wait_for_job(&app, "card-user", &id).await;
    assert_eq!(job.contacts_done, 3, "{job:?}");
    assert_eq!(hubspot.pushed_emails().len(), 3);
    assert_eq!(app.count("sync_jobs", "").await, 1);
    hubspot.assert_no_problems();
}

async fn a_change_notified_while_a_push_runs_goes_out_after_it(backend: Backend) {
    let hubspot = FakeProvider::start(Kind::Hubspot).await;
    let app = spawn_with_fakes(backend, &[&hubspot], &[("--notify-coalesce-window", "0s")]).await;
    crate::integrations::connect(&app, "busy", &hubspot).await;
    app.add_contacts_named("busy", "first", 1).await;
    let hold = hubspot.hold_pushes(crate::fake_http::HoldPoint::Arrival, 0);
    let first = notify(&app, "card-app", "busy").await.unwrap_or_else(|e| panic!("{e}"));
    hold.arrived(1).await;
    // The push is on its way with what it read; a contact added now is not in it.
    app.add_contacts_named("busy", "second", 1).await;
    let during = notify(&app, "card-app", "busy").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(during.jobs[0].id, first.jobs[0].id, "joined the running job");
    assert_eq!(app.count("integration_owed_pushes", "").await, 1);
    hold.release();
    eventually("the second contact pushed by the owed job", || async {
        hubspot.pushed_emails().iter().any(|e| e.starts_with("second"))
    })
    .await;
    eventually("two jobs, one after the other", || async {
        app.count("sync_jobs", "state = 'succeeded'").await == 2
    })
    .await;
    assert_eq!(app.count("integration_owed_pushes", "").await, 0);
}

async fn health_falls_to_failing_and_comes_back(backend: Backend) {
    let hubspot = FakeProvider::start(Kind::Hubspot).await;
    let app = spawn_with_fakes(backend, &[&hubspot], &[]).await;
    crate::integrations::connect(&app, "ill", &hubspot).await;
    let health = |list: Vec<Integration>| list.into_iter().next().and_then(|i| i.health);
    let fresh = health(integrations(&app, "ill").await).unwrap_or_else(|| panic!("no health"));
    assert_eq!(fresh.state(), HealthState::Healthy);
    app.add_contacts_named("ill", "h", 2).await;
    hubspot.fail_every(1);
    let mut client = app.integrations().await;
    let job = crate::integrations::start_sync(&mut client, "ill", Provider::Hubspot).await;
    let failing = wait_for("FAILING after repeated failures", || async {
        health(integrations(&app, "ill").await).filter(|h| h.state() == HealthState::Failing)
    })
    .await;
    assert!(failing.consecutive_failures >= 3, "{failing:?}");
    assert!(failing.failures_last_day >= 3, "{failing:?}");
    assert!(!failing.last_error.is_empty(), "{failing:?}");
    eventually("the metric counts a failing HubSpot connection", || async {
        let text = reqwest::get(app.metrics_url()).await.ok();
        let text = match text {
            Some(r) => r.text().await.unwrap_or_default(),
            None => String::new(),
        };
        text.lines()
            .any(|l| l == "integration_health{provider=\"hubspot\",state=\"failing\"} 1")
    })
    .await;
    hubspot.recover();
    let job = crate::integrations::wait_for_job(&app, "ill", &job.id).await;
    assert_eq!(job.state(), nexus_billing::grpc::proto::integrations::SyncJobState::Succeeded);
    let healed = wait_for("HEALTHY after a success", || async {
        health(integrations(&app, "ill").await).filter(|h| h.state() == HealthState::Healthy)
    })
    .await;
    assert_eq!(healed.consecutive_failures, 0);
    assert!(healed.last_success_time.is_some());
    assert!(healed.failures_last_day >= 3, "the day's failures stay counted: {healed:?}");
}

async fn a_feed_that_cannot_be_set_up_leaves_the_connection_working(backend: Backend) {
    let mailchimp = FakeProvider::start(Kind::Mailchimp).await;
    mailchimp.feeds.fail_registrations(1);
    let app = spawn_with_fakes(backend, &[&mailchimp], &real_time_settings()).await;
    connect_with(&app, "calm", &mailchimp, &[]).await;
    assert!(mailchimp.feeds.webhooks().is_empty());
    let kinds = app.activity_kinds("calm").await;
    assert!(kinds.iter().any(|k| k == "integration.realtime_unavailable"), "{kinds:?}");
    let listed = integrations(&app, "calm").await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].health.as_ref().map(|h| h.state()), Some(HealthState::Healthy));
    // Connecting again sets it up.
    connect_with(&app, "calm", &mailchimp, &[]).await;
    assert_eq!(mailchimp.feeds.webhooks().len(), 1);
}
