//! Rules the real provider APIs enforce (issue 12), each checked at a fake that refuses what
//! the real API refuses: Mailchimp never re-subscribes and imports subscribed members only;
//! HubSpot refuses a batch whole for one bad address; Salesforce request URIs stay under
//! 16,384 bytes; Zoho page numbers stop at 2,000 records; contacts files neutralise formulas.

use std::collections::HashSet;

use nexus_billing::grpc::proto::integrations::{Provider, SyncDirection, SyncJob, SyncJobState};

use crate::{
    exec,
    fake_oauth::{FakeOAuth, OKind, record},
    fake_providers::{FakeProvider, Kind},
    helpers::{Backend, SeedSubscription, TestApp},
    imports::start_import,
    integrations::{connect, spawn_with_fakes, start_sync, wait_for_job},
    oauth::{connect_oauth, spawn_with_oauth},
};

crate::on_both_backends!(
    mailchimp_never_resubscribes_and_imports_subscribed_members_only,
    a_hubspot_batch_with_one_bad_address_lands_the_other_99,
    salesforce_lookups_of_long_addresses_stay_under_the_uri_limit,
    a_zoho_import_of_2500_records_pages_past_2000,
    formula_cells_in_the_contacts_file_are_neutralised,
);

async fn sync(app: &TestApp, user: &str, provider: Provider) -> SyncJob {
    let job = start_sync(&mut app.integrations().await, user, provider).await;
    wait_for_job(app, user, &job.id).await
}

async fn mailchimp_never_resubscribes_and_imports_subscribed_members_only(backend: Backend) {
    let mailchimp = FakeProvider::start(Kind::Mailchimp).await;
    mailchimp.set_remote(&[("sub@x.com", "Sub", "Scriber", "2024-06-01T00:00:00Z")]);
    mailchimp.set_unsubscribed(&[("gone@x.com", "unsubscribed"), ("bounced@x.com", "cleaned")]);
    let app = spawn_with_fakes(backend, &[&mailchimp], &[]).await;
    app.add_contacts("ada", 3).await;
    connect(&app, "ada", &mailchimp).await;

    let job = sync(&app, "ada", Provider::Mailchimp).await;
    assert_eq!(job.state(), SyncJobState::Succeeded, "{job:?}");
    let pushes = mailchimp.pushes();
    assert_eq!(pushes.len(), 1);
    assert_eq!(pushes[0].body["update_existing"], true);
    for member in pushes[0].body["members"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        assert_eq!(member["status_if_new"], "subscribed", "{member}");
        assert!(
            member.get("status").is_none(),
            "`status` re-subscribes members who unsubscribed: {member}"
        );
    }

    let job = start_import(&app, "ada", Provider::Mailchimp, SyncDirection::Import).await;
    let job = wait_for_job(&app, "ada", &job.id).await;
    assert_eq!(job.state(), SyncJobState::Succeeded, "{job:?}");
    assert_eq!(app.count("contacts", "email = 'sub@x.com'").await, 1);
    assert_eq!(
        app.count("contacts", "email IN ('gone@x.com', 'bounced@x.com')")
            .await,
        0,
        "unsubscribed members were imported"
    );
    mailchimp.assert_no_problems();
    app.stop().await;
}

async fn a_hubspot_batch_with_one_bad_address_lands_the_other_99(backend: Backend) {
    let hubspot = FakeProvider::start(Kind::Hubspot).await;
    hubspot.refuse_whole_batches();
    hubspot.refuse(&["contact42@example.com"]);
    let app = spawn_with_fakes(backend, &[&hubspot], &[]).await;
    app.add_contacts("ada", 100).await;
    connect(&app, "ada", &hubspot).await;
    let job = sync(&app, "ada", Provider::Hubspot).await;
    assert_eq!(job.state(), SyncJobState::Partial, "{job:?}");
    assert_eq!(job.contacts_failed, 1, "{job:?}");
    assert_eq!(job.failures[0].email, "contact42@example.com");
    assert!(
        job.failures[0].message.contains("invalid email"),
        "{:?}",
        job.failures
    );
    let landed: HashSet<String> = hubspot.pushed_emails().into_iter().collect();
    assert_eq!(landed.len(), 99, "the other 99 landed");
    assert!(!landed.contains("contact42@example.com"));
    // Halving isolates one bad record in about 2 x log2(100) requests.
    assert!(
        hubspot.push_requests() <= 16,
        "{} requests",
        hubspot.push_requests()
    );
    app.stop().await;
}

async fn salesforce_lookups_of_long_addresses_stay_under_the_uri_limit(backend: Backend) {
    let fake = FakeOAuth::start(OKind::Salesforce).await;
    let app = spawn_with_oauth(backend, &[&fake], &[]).await;
    // 200 addresses of about 150 characters: some 30 KB of SOQL in one URL.
    let prefix = format!("{}-", "a-rather-long-mailbox-name".repeat(5));
    app.add_contacts_named("ada", &prefix, 200).await;
    connect_oauth(&app, "ada", &fake, &[]).await;
    let job = sync(&app, "ada", Provider::Salesforce).await;
    assert_eq!(job.state(), SyncJobState::Succeeded, "{job:?}");
    assert_eq!(fake.records().len(), 200);
    assert!(
        fake.lookup_requests() >= 2,
        "{} lookups",
        fake.lookup_requests()
    );
    fake.assert_no_problems();
    app.stop().await;
}

async fn a_zoho_import_of_2500_records_pages_past_2000(backend: Backend) {
    let fake = FakeOAuth::start(OKind::Zoho).await;
    fake.set_import_page_size(200);
    fake.add_records(
        (0..2500)
            .map(|i| {
                record(
                    &format!("z{i}@x.com"),
                    "Zed",
                    &i.to_string(),
                    "2024-06-01T00:00:00Z",
                )
            })
            .collect(),
    );
    let app = spawn_with_oauth(backend, &[&fake], &[]).await;
    app.set_subscription(SeedSubscription {
        user: "ada",
        tier: "premium",
        status: "active",
        period_end: chrono::Utc::now() + chrono::Duration::days(20),
        cancel_at_period_end: false,
    })
    .await;
    connect_oauth(&app, "ada", &fake, &[]).await;
    let job = start_import(&app, "ada", Provider::ZohoCrm, SyncDirection::Import).await;
    let job = wait_for_job(&app, "ada", &job.id).await;
    assert_eq!(job.state(), SyncJobState::Succeeded, "{job:?}");
    assert_eq!(job.contacts_done, 2500, "{job:?}");
    assert_eq!(app.count("contacts", "user_id = 'ada'").await, 2500);
    fake.assert_no_problems();
    app.stop().await;
}

async fn formula_cells_in_the_contacts_file_are_neutralised(backend: Backend) {
    let fake = FakeOAuth::start(OKind::GoogleDrive).await;
    let app = spawn_with_oauth(backend, &[&fake], &[]).await;
    exec!(
        &app.pool,
        "INSERT INTO contacts (id, user_id, email, first_name, last_name, company, phone, job_title) \
         VALUES ('f1', 'ada', 'f@x.com', $1, $2, $3, $4, $5)",
        "=HYPERLINK(\"http://evil.example\",\"Click\")",
        "+1+cmd|' /C calc'!A0",
        "-2+3",
        "+254 700 000000",
        "@SUM(A1:A9)"
    );
    exec!(
        &app.pool,
        "INSERT INTO contacts (id, user_id, email, first_name, last_name, company) \
         VALUES ('f2', 'ada', 'g@x.com', 'Plain', 'Name', 'A=B')"
    );
    connect_oauth(&app, "ada", &fake, &[]).await;
    let job = sync(&app, "ada", Provider::GoogleDrive).await;
    assert_eq!(job.state(), SyncJobState::Succeeded, "{job:?}");
    let uploads = fake.uploads();
    let file = &uploads.last().unwrap_or_else(|| panic!("no upload")).2;
    // Open the file as a spreadsheet would read it.
    let mut reader = csv::Reader::from_reader(file.as_slice());
    let rows: Vec<Vec<String>> = reader
        .records()
        .map(|r| {
            r.unwrap_or_else(|e| panic!("{e}"))
                .iter()
                .map(str::to_string)
                .collect()
        })
        .collect();
    assert_eq!(rows.len(), 2);
    for cell in rows.iter().flatten() {
        assert!(
            !cell.starts_with(['=', '+', '-', '@', '\t', '\r']),
            "a formula cell: {cell:?}"
        );
    }
    let first = rows
        .iter()
        .find(|r| r[0] == "f@x.com")
        .cloned()
        .unwrap_or_default();
    assert_eq!(first[1], "'=HYPERLINK(\"http://evil.example\",\"Click\")");
    assert_eq!(first[2], "'+1+cmd|' /C calc'!A0");
    assert_eq!(first[3], "'-2+3");
    assert_eq!(first[4], "'+254 700 000000");
    assert_eq!(first[5], "'@SUM(A1:A9)");
    let plain = rows
        .iter()
        .find(|r| r[0] == "g@x.com")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        plain[1..4],
        ["Plain", "Name", "A=B"],
        "ordinary text untouched"
    );
    app.stop().await;
}
