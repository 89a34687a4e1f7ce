//! Where real time meets the rest (issue 29): a provider webhook read while the user's data is
//! erased, two replicas applying one burst, and what the logs of a webhook route carry.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

use nexus_billing::grpc::proto::account::{
    DeleteMyDataRequest, account_service_client::AccountServiceClient,
};

use crate::{
    fake_feeds::PORTAL_ID,
    fake_http::HoldPoint,
    fake_providers::{FakeProvider, Kind},
    helpers::{Backend, ENCRYPTION_KEY, JWT_SECRET, authed, token},
    integrations::{connect_request, spawn_with_fakes},
    real_time::{
        deliver_hubspot, emails, hubspot_events, real_time_settings, settled,
    },
};

crate::tests!(
    backends: [a_webhook_read_while_the_user_is_erased_stores_nothing_after_it],
    postgres: [two_replicas_apply_each_event_of_a_burst_once],
    plain: [logs_to_a_pipe_carry_no_colours_and_no_webhook_secret],
);

async fn connect_importing(app: &crate::helpers::TestApp, user: &str, fake: &FakeProvider) {
    let mut request = connect_request(fake);
    request
        .settings
        .insert("syncDirection".into(), "import".into());
    app.integrations()
        .await
        .connect_integration(authed(request, &token(user)))
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
}

async fn a_webhook_read_while_the_user_is_erased_stores_nothing_after_it(backend: Backend) {
    let hubspot = FakeProvider::start(Kind::Hubspot).await;
    hubspot.set_remote(&[("late@x.com", "Late", "Read", "2024-06-01T00:00:00Z")]);
    let app = spawn_with_fakes(backend, &[&hubspot], &real_time_settings()).await;
    connect_importing(&app, "leaving", &hubspot).await;
    // The batch read is answered only after the erasure has finished.
    let read = hubspot.server.hold(HoldPoint::Answer, |r| {
        r.url.path() == "/crm/v3/objects/contacts/batch/read"
    });
    let body = hubspot_events(PORTAL_ID, &[(1, "contact.creation", 0)]);
    assert_eq!(deliver_hubspot(&app, &body).await, (200, "ok".into()));
    read.arrived(1).await;
    let mut account = AccountServiceClient::new(app.channel().await);
    account
        .delete_my_data(authed(DeleteMyDataRequest::default(), &token("leaving")))
        .await
        .unwrap_or_else(|e| panic!("erasure: {e}"));
    read.release();
    // The worker's round ends (its events went with the integration).
    crate::helpers::eventually("the webhook round over", || async {
        app.count("integration_webhook_events", "").await == 0
            && app.count("integration_webhooks", "").await == 0
    })
    .await;
    // Another delivery for the portal, now nobody's, is dropped.
    let again = hubspot_events(PORTAL_ID, &[(2, "contact.creation", 0)]);
    assert_eq!(deliver_hubspot(&app, &again).await, (200, "ignored".into()));
    assert!(emails(&app, "leaving").await.is_empty(), "a contact came back after the erasure");
    assert_eq!(app.count("contacts", "user_id = 'leaving'").await, 0);
}

async fn two_replicas_apply_each_event_of_a_burst_once() {
    let backend = Backend::Postgres;
    let hubspot = FakeProvider::start(Kind::Hubspot).await;
    let remote: Vec<(String, String)> = (0..20)
        .map(|i| (format!("twin{i}@x.com"), format!("T{i}")))
        .collect();
    let refs: Vec<(&str, &str, &str, &str)> = remote
        .iter()
        .map(|(e, f)| (e.as_str(), f.as_str(), "Twin", "2024-06-01T00:00:00Z"))
        .collect();
    hubspot.set_remote(&refs);
    let settings: Vec<(&str, String)> = hubspot.settings();
    let mut overrides: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    overrides.extend(real_time_settings());
    let first = crate::helpers::TestApp::spawn_with(backend, &overrides).await;
    let second = first.spawn_beside(&overrides).await;
    // Two users on one portal: every event is applied for each.
    connect_importing(&first, "twin-a", &hubspot).await;
    connect_importing(&second, "twin-b", &hubspot).await;
    let deliveries = (0..10u64).map(|d| {
        let events: Vec<(u64, &str, usize)> = (0..50u64)
            .map(|i| (d * 50 + i, "contact.propertyChange", ((d * 50 + i) % 20) as usize))
            .collect();
        let body = hubspot_events(PORTAL_ID, &events);
        let app = if d % 2 == 0 { &first } else { &second };
        async move { deliver_hubspot(app, &body).await }
    });
    for answer in futures_util::future::join_all(deliveries).await {
        assert_eq!(answer, (200, "ok".into()));
    }
    settled(&first).await;
    assert_eq!(first.count("integration_webhook_events", "state = 'done'").await, 1000);
    assert_eq!(emails(&first, "twin-a").await.len(), 20);
    assert_eq!(emails(&first, "twin-b").await.len(), 20);
    // Both replicas run in this process and share its metrics recorder: the sum of their
    // applications is the counter.
    let text = reqwest::get(first.metrics_url())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .text()
        .await
        .unwrap_or_default();
    let applied = text
        .lines()
        .find(|l| {
            l.starts_with("integration_webhook_events_applied_total")
                && l.contains("provider=\"hubspot\"")
                && l.contains("outcome=\"applied\"")
        })
        .unwrap_or_else(|| panic!("no applied counter"));
    assert!(applied.ends_with(" 1000"), "each event applied once across replicas: {applied}");
    hubspot.assert_no_problems();
}

async fn logs_to_a_pipe_carry_no_colours_and_no_webhook_secret() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let db_url = format!("sqlite://{}/logs.db", dir.path().display());
    let mut child = Command::new(env!("CARGO_BIN_EXE_nexus-billing"))
        .env_clear()
        .current_dir(dir.path())
        .envs([
            ("GRPC_ADDR", "127.0.0.1:0"),
            ("HTTP_ADDR", "127.0.0.1:0"),
            ("METRICS_ADDR", "127.0.0.1:0"),
            ("LOG_LEVEL", "debug"),
            ("LOG_FORMAT", "text"),
            ("JWT_SECRET", JWT_SECRET),
            ("ENCRYPTION_KEY", ENCRYPTION_KEY),
            ("DATABASE_URL", db_url.as_str()),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let stderr = child.stderr.take().unwrap_or_else(|| panic!("no stderr"));
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut log = Vec::new();
    let deadline = std::time::Instant::now() + crate::helpers::PATIENCE;
    let http = loop {
        assert!(std::time::Instant::now() < deadline, "no serving line:\n{}", log.join("\n"));
        let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        let found = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("http_addr="))
            .map(str::to_string);
        log.push(line);
        if let Some(addr) = found.filter(|_| log.last().is_some_and(|l| l.contains("serving"))) {
            break addr;
        }
    };
    let secret = "MAILCHIMPURLSECRETCANARY0123456789";
    let url = format!("http://{http}/integrations/webhook/mailchimp/{secret}");
    let client = reqwest::Client::new();
    let check = client.get(&url).send().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(check.status().as_u16(), 200);
    let posted = client
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("type=subscribe&data%5Bemail%5D=a%40x.com")
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(posted.status().as_u16(), 200);
    // Both requests are logged ("request done") before the process stops.
    let mut done = 0;
    while done < 2 {
        assert!(std::time::Instant::now() < deadline, "requests not logged:\n{}", log.join("\n"));
        let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        if line.contains("request done") {
            done += 1;
        }
        log.push(line);
    }
    let _ = child.kill();
    let _ = child.wait();
    while let Ok(line) = rx.try_recv() {
        log.push(line);
    }
    let text = log.join("\n");
    assert!(!text.contains('\u{1b}'), "colour codes written to a pipe:\n{text}");
    assert!(!text.contains(secret), "a webhook secret reached the logs:\n{text}");
    assert!(text.contains("/integrations/webhook/mailchimp/{secret}"), "{text}");
}
