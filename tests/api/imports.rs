//! Importing contacts from HubSpot, Mailchimp, Salesforce and Zoho CRM: pages followed to the
//! end, contacts matched by email (case-insensitive, one contact per address), a newer local
//! edit kept, the FREE plan's contact limit, resuming after a crash, and push-then-import.


use nexus_billing::grpc::proto::integrations::{
    Provider, SyncDirection, SyncIntegrationRequest, SyncJob, SyncJobState,
};
use sqlx::Row;

use crate::{
    exec,
    fake_oauth::{FakeOAuth, OKind, record},
    fake_providers::{FakeProvider, Kind},
    helpers::{Backend, SeedSubscription, TestApp, TestPool, authed, eventually, token},
    integrations::{connect, spawn_with_fakes, wait_for_job},
    oauth::{connect_oauth, oauth_settings, spawn_with_oauth},
};

crate::on_both_backends!(
    imports_page_through_each_crm_and_keep_newer_local_edits,
    a_free_plan_import_stops_at_the_contact_limit,
    an_import_resumes_from_its_checkpoint_after_a_crash,
    an_expired_salesforce_cursor_starts_the_import_over,
    both_directions_import_then_push_without_echo,
);

/// The remote contacts every provider holds in the first test: 8 entries over 3 pages, one
/// address twice (in another case), one matching an older local contact and one matching a
/// local contact edited after the remote change.
const REMOTE: [(&str, &str, &str, &str); 8] = [
    ("old@x.com", "Remote", "Old", "2024-06-01T00:00:00Z"),
    ("new@x.com", "Remote", "New", "2024-06-01T00:00:00Z"),
    ("r1@x.com", "Ann", "One", "2024-06-01T00:00:00Z"),
    ("r2@x.com", "Bo", "Two", "2024-06-01T00:00:00Z"),
    ("r3@x.com", "Cy", "Three", "2024-06-01T00:00:00Z"),
    ("R1@X.com", "Ann", "Again", "2024-06-02T00:00:00Z"),
    ("r4@x.com", "Di", "Four", "2024-06-01T00:00:00Z"),
    ("r5@x.com", "Ed", "Five", "2024-06-01T00:00:00Z"),
];

pub async fn start_import(
    app: &TestApp,
    user: &str,
    provider: Provider,
    direction: SyncDirection,
) -> SyncJob {
    app.integrations()
        .await
        .sync_integration(authed(
            SyncIntegrationRequest {
                full: false,
                provider: provider.into(),
                direction: direction.into(),
            },
            &token(user),
        ))
        .await
        .unwrap_or_else(|e| panic!("sync {direction:?}: {e}"))
        .into_inner()
        .job
        .unwrap_or_else(|| panic!("no job"))
}

async fn add_local(app: &TestApp, user: &str, id: &str, email: &str, first: &str, updated: &str) {
    let at = chrono::DateTime::parse_from_rfc3339(updated)
        .unwrap_or_else(|e| panic!("{e}"))
        .with_timezone(&chrono::Utc);
    exec!(
        &app.pool,
        "INSERT INTO contacts (id, user_id, email, first_name, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $5)",
        id,
        user,
        email,
        first,
        at
    );
}

/// (lower-cased email, first name, last name) of the user's contacts, sorted.
/// When each of the user's contacts was last written, in email order.
async fn written_at(app: &TestApp, user: &str) -> Vec<String> {
    let sql =
        "SELECT CAST(updated_at AS TEXT) FROM contacts WHERE user_id = $1 ORDER BY lower(email)";
    match &app.pool {
        TestPool::Sqlite(pool) => sqlx::query_scalar(sql).bind(user).fetch_all(pool).await,
        TestPool::Postgres(pool) => sqlx::query_scalar(sql).bind(user).fetch_all(pool).await,
    }
    .unwrap_or_else(|e| panic!("{e}"))
}

async fn contacts_of(app: &TestApp, user: &str) -> Vec<(String, String, String)> {
    let sql = "SELECT email, first_name, last_name FROM contacts WHERE user_id = $1 ORDER BY lower(email)";
    let rows: Vec<(String, Option<String>, Option<String>)> = match &app.pool {
        TestPool::Sqlite(pool) => sqlx::query(sql)
            .bind(user)
            .fetch_all(pool)
            .await
            .map(|rows| {
                rows.iter()
                    .map(|r| (r.get(0), r.get(1), r.get(2)))
                    .collect()
            }),
        TestPool::Postgres(pool) => sqlx::query(sql)
            .bind(user)
            .fetch_all(pool)
            .await
            .map(|rows| {
                rows.iter()
                    .map(|r| (r.get(0), r.get(1), r.get(2)))
                    .collect()
            }),
    }
    .unwrap_or_else(|e| panic!("{e}"));
    rows.into_iter()
        .map(|(e, f, l)| {
            (
                e.to_lowercase(),
                f.unwrap_or_default(),
                l.unwrap_or_default(),
            )
        })
        .collect()
}

fn records() -> Vec<crate::fake_oauth::Record> {
    REMOTE
        .iter()
        .map(|(e, f, l, m)| record(e, f, l, m))
        .collect()
}

async fn imports_page_through_each_crm_and_keep_newer_local_edits(backend: Backend) {
    let hubspot = FakeProvider::start(Kind::Hubspot).await;
    let mailchimp = FakeProvider::start(Kind::Mailchimp).await;
    hubspot.set_remote(&REMOTE);
    mailchimp.set_remote(&REMOTE);
    let salesforce = FakeOAuth::start(OKind::Salesforce).await;
    let zoho = FakeOAuth::start(OKind::Zoho).await;
    salesforce.add_records(records());
    zoho.add_records(records());
    let mut settings: Vec<(String, String)> = hubspot
        .settings()
        .into_iter()
        .chain(mailchimp.settings())
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    settings.push(("--sync-workers".into(), "2".into()));
    let extra: Vec<(&str, &str)> = settings
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let app = spawn_with_oauth(backend, &[&salesforce, &zoho], &extra).await;

    for (user, provider) in [
        ("hs", Provider::Hubspot),
        ("mc", Provider::Mailchimp),
        ("sf", Provider::Salesforce),
        ("zo", Provider::ZohoCrm),
    ] {
        add_local(
            &app,
            user,
            &format!("{user}-1"),
            "Old@X.com",
            "LocalOld",
            "2020-01-01T00:00:00Z",
        )
        .await;
        add_local(
            &app,
            user,
            &format!("{user}-2"),
            "NEW@x.com",
            "LocalNewer",
            "2030-01-01T00:00:00Z",
        )
        .await;
        match provider {
            Provider::Hubspot => drop(connect(&app, user, &hubspot).await),
            Provider::Mailchimp => drop(connect(&app, user, &mailchimp).await),
            Provider::Salesforce => drop(connect_oauth(&app, user, &salesforce, &[]).await),
            _ => drop(connect_oauth(&app, user, &zoho, &[]).await),
        }
        let job = start_import(&app, user, provider, SyncDirection::Import).await;
        assert_eq!(job.direction(), SyncDirection::Import);
        let job = wait_for_job(&app, user, &job.id).await;
        assert_eq!(
            job.state(),
            SyncJobState::Succeeded,
            "{provider:?}: {job:?}"
        );
        assert_eq!(job.contacts_done, 8, "{provider:?}");
        let contacts = contacts_of(&app, user).await;
        let want: Vec<(String, String, String)> = [
            ("new@x.com", "LocalNewer", ""),
            ("old@x.com", "Remote", "Old"),
            ("r1@x.com", "Ann", "One"),
            ("r2@x.com", "Bo", "Two"),
            ("r3@x.com", "Cy", "Three"),
            ("r4@x.com", "Di", "Four"),
            ("r5@x.com", "Ed", "Five"),
        ]
        .iter()
        .map(|(e, f, l)| (e.to_string(), f.to_string(), l.to_string()))
        .collect();
        // r1 appears once: its second entry found the contact the first one made (edited
        // here since, so kept).
        let got = contacts;
        assert_eq!(got, want, "{provider:?}");
    }
    assert_eq!(hubspot.import_requests(), 3, "HubSpot pages");
    assert_eq!(mailchimp.import_requests(), 3, "Mailchimp pages");
    assert_eq!(salesforce.import_requests(), 3, "Salesforce pages");
    assert_eq!(zoho.import_requests(), 3, "Zoho pages");
    hubspot.assert_no_problems();
    mailchimp.assert_no_problems();
    salesforce.assert_no_problems();
    zoho.assert_no_problems();
    app.stop().await;
}

async fn a_free_plan_import_stops_at_the_contact_limit(backend: Backend) {
    let fake = FakeOAuth::start(OKind::Salesforce).await;
    fake.add_records(
        (0..12)
            .map(|i| {
                record(
                    &format!("remote{i}@x.com"),
                    "R",
                    &i.to_string(),
                    "2024-06-01T00:00:00Z",
                )
            })
            .collect(),
    );
    let app = spawn_with_oauth(backend, &[&fake], &[]).await;
    app.add_contacts("ada", 45).await;
    connect_oauth(&app, "ada", &fake, &[]).await;
    let job = start_import(&app, "ada", Provider::Salesforce, SyncDirection::Import).await;
    let job = wait_for_job(&app, "ada", &job.id).await;
    assert_eq!(job.state(), SyncJobState::Succeeded, "{job:?}");
    assert_eq!(job.contacts_done, 12);
    assert_eq!(job.contacts_skipped, 7);
    assert!(
        job.skipped_reason.contains("Free plan allows 50 contacts"),
        "{}",
        job.skipped_reason
    );
    assert_eq!(contacts_of(&app, "ada").await.len(), 50);

    // A PREMIUM user has no limit.
    app.set_subscription(SeedSubscription {
        user: "bea",
        tier: "premium",
        status: "active",
        period_end: chrono::Utc::now() + chrono::Duration::days(20),
        cancel_at_period_end: false,
    })
    .await;
    app.add_contacts("bea", 45).await;
    connect_oauth(&app, "bea", &fake, &[]).await;
    let job = start_import(&app, "bea", Provider::Salesforce, SyncDirection::Import).await;
    let job = wait_for_job(&app, "bea", &job.id).await;
    assert_eq!(job.contacts_skipped, 0, "{job:?}");
    assert_eq!(contacts_of(&app, "bea").await.len(), 57);
    fake.assert_no_problems();
    app.stop().await;
}

/// Imports 9 contacts (3 pages) from `kind` for "ada": the first `answered` pages are answered,
/// the next never is, and the process dies while waiting. `before_restart` changes the fake
/// before a new server takes the job over (its lease ended); returns when the job is over.
async fn crash_during_import(
    backend: Backend,
    kind: OKind,
    provider: Provider,
    answered: usize,
    before_restart: impl FnOnce(&FakeOAuth),
) -> (TestApp, FakeOAuth, SyncJob) {
    let fake = FakeOAuth::start(kind).await;
    fake.add_records(
        (0..9)
            .map(|i| {
                record(
                    &format!("c{i}@x.com"),
                    "C",
                    &i.to_string(),
                    "2024-06-01T00:00:00Z",
                )
            })
            .collect(),
    );
    fake.hang_import_after(answered);
    let app = spawn_with_oauth(backend, &[&fake], &[]).await;
    connect_oauth(&app, "ada", &fake, &[]).await;
    let job = start_import(&app, "ada", provider, SyncDirection::Import).await;
    eventually("the unanswered page was asked for", || async {
        fake.import_requests() > answered
    })
    .await;
    fake.hang_import_after(usize::MAX);
    before_restart(&fake);
    let settings = oauth_settings(&[&fake]);
    let overrides: Vec<(&str, &str)> = settings
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let app = app.crash_and_restart(&overrides).await;
    // The crashed worker's lease runs out (it would, a lease later).
    app.expire_sync_leases().await;
    let job = wait_for_job(&app, "ada", &job.id).await;
    (app, fake, job)
}

async fn an_import_resumes_from_its_checkpoint_after_a_crash(backend: Backend) {
    let (app, fake, job) =
        crash_during_import(backend, OKind::Zoho, Provider::ZohoCrm, 2, |_| {}).await;
    assert_eq!(job.state(), SyncJobState::Succeeded, "{job:?}");
    assert_eq!(job.attempts, 2);
    assert_eq!(job.contacts_done, 9);
    // Pages 1-2 were checkpointed and not read again; page 3 was asked for twice.
    assert_eq!(fake.import_requests(), 4);
    assert_eq!(contacts_of(&app, "ada").await.len(), 9);
    fake.assert_no_problems();
    app.stop().await;
}

async fn an_expired_salesforce_cursor_starts_the_import_over(backend: Backend) {
    // Page 1 is answered, page 2 never is; by the time the job resumes, the saved
    // nextRecordsUrl has expired.
    let (app, fake, job) = crash_during_import(
        backend,
        OKind::Salesforce,
        Provider::Salesforce,
        1,
        FakeOAuth::expire_cursors,
    )
    .await;
    assert_eq!(job.state(), SyncJobState::Succeeded, "{job:?}");
    assert_eq!(job.attempts, 2);
    // Page 1, the unanswered page 2, the refused saved link, then pages 1-3 afresh.
    assert_eq!(fake.import_requests(), 6);
    assert_eq!(
        contacts_of(&app, "ada").await.len(),
        9,
        "nothing stored twice"
    );
    fake.assert_no_problems();
    app.stop().await;
}

async fn both_directions_import_then_push_without_echo(backend: Backend) {
    let hubspot = FakeProvider::start(Kind::Hubspot).await;
    hubspot.set_remote(&[
        ("h1@x.com", "H", "One", "2024-06-01T00:00:00Z"),
        ("h2@x.com", "H", "Two", "2024-06-01T00:00:00Z"),
        ("h3@x.com", "H", "Three", "2024-06-01T00:00:00Z"),
        ("h4@x.com", "H", "Four", "2024-06-01T00:00:00Z"),
    ]);
    hubspot.set_import_page(2);
    let app = spawn_with_fakes(backend, &[&hubspot], &[]).await;
    app.add_contacts("ada", 2).await;
    connect(&app, "ada", &hubspot).await;
    let job = start_import(&app, "ada", Provider::Hubspot, SyncDirection::Both).await;
    let job = wait_for_job(&app, "ada", &job.id).await;
    assert_eq!(job.state(), SyncJobState::Succeeded, "{job:?}");
    assert_eq!(job.direction(), SyncDirection::Both);
    // Imported first (4), then the push: the 2 local contacts are sent, the 4 just read from
    // HubSpot are not sent back.
    assert_eq!(job.contacts_done, 4 + 2, "{job:?}");
    assert_eq!(job.contacts_skipped, 0, "{job:?}");
    let mut pushed = hubspot.pushed_emails();
    pushed.sort();
    assert_eq!(pushed, vec!["contact0@example.com", "contact1@example.com"]);
    assert_eq!(hubspot.import_requests(), 2);
    assert_eq!(contacts_of(&app, "ada").await.len(), 6);

    // Again with nothing changed on either side: everything read, nothing written or sent.
    let before = written_at(&app, "ada").await;
    let job = start_import(&app, "ada", Provider::Hubspot, SyncDirection::Both).await;
    let job = wait_for_job(&app, "ada", &job.id).await;
    assert_eq!(job.state(), SyncJobState::Succeeded, "{job:?}");
    assert_eq!(hubspot.import_requests(), 4);
    assert_eq!(
        hubspot.pushed_emails().len(),
        2,
        "an unchanged contact was pushed"
    );
    assert_eq!(
        written_at(&app, "ada").await,
        before,
        "an unchanged contact was rewritten"
    );
    hubspot.assert_no_problems();
    app.stop().await;
}
