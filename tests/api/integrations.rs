//! IntegrationsService: the provider catalogue and a user's integrations.

use std::time::Duration;

use nexus_billing::{
    grpc::proto::integrations::{
        AuthKind, ConnectIntegrationRequest, DisconnectIntegrationRequest, GetSyncJobRequest,
        Integration, IntegrationStatus, ListIntegrationsRequest, ListProvidersRequest, Provider,
        SyncIntegrationRequest, SyncJob, SyncJobState, WatchSyncJobRequest,
        integrations_service_client::IntegrationsServiceClient,
    },
    vault::Vault,
};
use tonic::{Code, transport::Channel};

use crate::{
    fake_providers::{FakeProvider, HUBSPOT_TOKEN, Kind},
    helpers::{Backend, ENCRYPTION_KEY, PATIENCE, TestApp, authed, seed_integration, token},
};

pub fn provider_of(kind: Kind) -> Provider {
    match kind {
        Kind::Hubspot => Provider::Hubspot,
        Kind::Mailchimp => Provider::Mailchimp,
        Kind::Sendgrid => Provider::Sendgrid,
        Kind::Zapier => Provider::Zapier,
    }
}

/// Starts the service pointed at the given fakes, with more settings.
pub async fn spawn_with_fakes(
    backend: Backend,
    fakes: &[&FakeProvider],
    extra: &[(&str, &str)],
) -> TestApp {
    let settings: Vec<(&'static str, String)> = fakes.iter().flat_map(|f| f.settings()).collect();
    let mut overrides: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    overrides.extend_from_slice(extra);
    TestApp::spawn_with(backend, &overrides).await
}

pub fn connect_request(fake: &FakeProvider) -> ConnectIntegrationRequest {
    let (credentials, settings) = fake.credentials();
    ConnectIntegrationRequest {
        provider: provider_of(fake.kind).into(),
        credentials: credentials.into_iter().collect(),
        settings: settings.into_iter().collect(),
    }
}

/// Connects `fake`'s provider for `user`, expecting success.
pub async fn connect(app: &TestApp, user: &str, fake: &FakeProvider) -> Integration {
    app.integrations()
        .await
        .connect_integration(authed(connect_request(fake), &token(user)))
        .await
        .unwrap_or_else(|e| panic!("connect {:?}: {e}", fake.kind))
        .into_inner()
        .integration
        .unwrap_or_else(|| panic!("no integration"))
}

pub async fn start_sync(
    client: &mut IntegrationsServiceClient<Channel>,
    user: &str,
    provider: Provider,
) -> SyncJob {
    sync_request(client, user, provider, false).await
}

/// A full push: every contact, not only those changed since the last push.
pub async fn start_full_sync(
    client: &mut IntegrationsServiceClient<Channel>,
    user: &str,
    provider: Provider,
) -> SyncJob {
    sync_request(client, user, provider, true).await
}

async fn sync_request(
    client: &mut IntegrationsServiceClient<Channel>,
    user: &str,
    provider: Provider,
    full: bool,
) -> SyncJob {
    client
        .sync_integration(authed(
            SyncIntegrationRequest {
                full,
                provider: provider.into(),
                direction: 0,
            },
            &token(user),
        ))
        .await
        .unwrap_or_else(|e| panic!("sync: {e}"))
        .into_inner()
        .job
        .unwrap_or_else(|| panic!("no job"))
}

pub async fn get_job(
    client: &mut IntegrationsServiceClient<Channel>,
    user: &str,
    id: &str,
) -> SyncJob {
    client
        .get_sync_job(authed(GetSyncJobRequest { id: id.into() }, &token(user)))
        .await
        .unwrap_or_else(|e| panic!("get job: {e}"))
        .into_inner()
        .job
        .unwrap_or_else(|| panic!("no job"))
}

pub fn is_final(job: &SyncJob) -> bool {
    matches!(
        job.state(),
        SyncJobState::Succeeded | SyncJobState::Partial | SyncJobState::Failed
    )
}

/// Polls the job until it reaches a final state (failing the test after `PATIENCE`).
pub async fn wait_for_job(app: &TestApp, user: &str, id: &str) -> SyncJob {
    let mut client = app.integrations().await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let job = get_job(&mut client, user, id).await;
        if is_final(&job) {
            return job;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job not finished after {PATIENCE:?}: {job:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Watches the job to its end, returning every update.
pub async fn watch_job(app: &TestApp, user: &str, id: &str) -> Vec<SyncJob> {
    let mut stream = app
        .integrations()
        .await
        .watch_sync_job(authed(WatchSyncJobRequest { id: id.into() }, &token(user)))
        .await
        .unwrap_or_else(|e| panic!("watch: {e}"))
        .into_inner();
    let mut updates = Vec::new();
    while let Some(item) = tokio::time::timeout(PATIENCE, stream.message())
        .await
        .unwrap_or_else(|_| panic!("watch stalled after {updates:?}"))
        .unwrap_or_else(|e| panic!("watch stream: {e}"))
    {
        updates.push(item.job.unwrap_or_else(|| panic!("empty update")));
    }
    updates
}

crate::on_both_backends!(
    list_providers_serves_the_whole_catalogue,
    list_integrations_shows_only_the_callers_integrations,
    bad_connect_input_is_refused_before_calling_the_provider,
    refused_credentials_are_invalid_argument_and_an_unreachable_provider_unavailable,
    connect_sync_and_disconnect_each_provider,
    connecting_again_updates_the_one_integration,
    credentials_are_stored_sealed_and_a_tampered_envelope_stops_the_sync,
    rate_limits_setting_overrides_the_catalogue,
);

async fn list_providers_serves_the_whole_catalogue(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let providers = app
        .integrations()
        .await
        .list_providers(authed(ListProvidersRequest {}, &token("u1")))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner()
        .providers;
    let ids: Vec<Provider> = providers.iter().map(|p| p.provider()).collect();
    assert_eq!(
        ids,
        vec![
            Provider::Salesforce,
            Provider::Hubspot,
            Provider::ZohoCrm,
            Provider::Mailchimp,
            Provider::Sendgrid,
            Provider::Zapier,
            Provider::GoogleDrive,
            Provider::Dropbox,
        ]
    );
    let hubspot = &providers[1];
    assert_eq!(hubspot.auth_kind(), AuthKind::ApiKey);
    assert_eq!(hubspot.batch_size, 100);
    let field = &hubspot.credential_fields[0];
    assert!(field.secret && field.required, "{field:?}");
    let mailchimp = &providers[3];
    assert!(
        mailchimp
            .setting_fields
            .iter()
            .any(|f| f.key == "listId" && f.required)
    );
    assert_eq!(mailchimp.batch_size, 500);
    // Issue 26: the connect dialog tells a Zapier user how to drop a resent batch.
    assert!(
        providers[5].credential_fields[0].help.contains("Idempotency-Key"),
        "{:?}",
        providers[5].credential_fields[0]
    );
    let salesforce = &providers[0];
    assert_eq!(salesforce.auth_kind(), AuthKind::Oauth2);
    assert!(salesforce.credential_fields.is_empty());
    // API-key and webhook providers can be connected; OAuth ones arrive with their issue,
    // and the catalogue says so instead of hiding them.
    for p in &providers {
        let oauth = p.auth_kind() == AuthKind::Oauth2;
        assert_eq!(p.available, !oauth, "{}", p.slug);
        assert_eq!(p.unavailable_reason.is_empty(), !oauth, "{}", p.slug);
        assert!(
            p.rate_limit
                .is_some_and(|r| r.requests > 0 && r.per_seconds > 0)
        );
    }
    app.stop().await;
}

async fn list_integrations_shows_only_the_callers_integrations(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    seed_integration(&app.pool, "alice", "mailchimp", r#"{"listId":"abc123"}"#).await;
    let hubspot_id = seed_integration(&app.pool, "alice", "hubspot", "{}").await;
    seed_integration(&app.pool, "bob", "zapier", "{}").await;

    let mut client = app.integrations().await;
    let alice = client
        .list_integrations(authed(ListIntegrationsRequest {}, &token("alice")))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner()
        .integrations;
    let providers: Vec<Provider> = alice.iter().map(|i| i.provider()).collect();
    assert_eq!(providers, vec![Provider::Hubspot, Provider::Mailchimp]);
    assert_eq!(alice[0].id, hubspot_id);
    assert_eq!(alice[0].status(), IntegrationStatus::Active);
    assert!(alice[0].create_time.is_some());
    assert_eq!(
        alice[1].settings.get("listId").map(String::as_str),
        Some("abc123")
    );

    let carol = client
        .list_integrations(authed(ListIntegrationsRequest {}, &token("carol")))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner()
        .integrations;
    assert!(carol.is_empty(), "carol sees {carol:?}");
    app.stop().await;
}

async fn bad_connect_input_is_refused_before_calling_the_provider(backend: Backend) {
    let (hubspot, mailchimp, zapier) = (
        FakeProvider::start(Kind::Hubspot).await,
        FakeProvider::start(Kind::Mailchimp).await,
        FakeProvider::start(Kind::Zapier).await,
    );
    let app = spawn_with_fakes(backend, &[&hubspot, &mailchimp, &zapier], &[]).await;
    let mut client = app.integrations().await;
    let with = |fake: &FakeProvider, edit: &dyn Fn(&mut ConnectIntegrationRequest)| {
        let mut request = connect_request(fake);
        edit(&mut request);
        request
    };
    let cases: Vec<(ConnectIntegrationRequest, Code, &str)> = vec![
        (
            with(&hubspot, &|r| r.provider = 0),
            Code::InvalidArgument,
            "provider is required",
        ),
        (
            with(&hubspot, &|r| r.provider = 99),
            Code::InvalidArgument,
            "provider",
        ),
        (
            with(&hubspot, &|r| r.credentials.clear()),
            Code::InvalidArgument,
            "credentials.accessToken",
        ),
        (
            with(&hubspot, &|r| {
                r.credentials.insert("accessToken".into(), "   ".into());
            }),
            Code::InvalidArgument,
            "credentials.accessToken",
        ),
        (
            with(&hubspot, &|r| {
                r.credentials.insert("password".into(), "x".into());
            }),
            Code::InvalidArgument,
            "credentials.password",
        ),
        (
            with(&hubspot, &|r| {
                r.settings.insert("color".into(), "red".into());
            }),
            Code::InvalidArgument,
            "settings.color",
        ),
        (
            with(&hubspot, &|r| {
                r.settings.insert("syncInterval".into(), "5".into());
            }),
            Code::InvalidArgument,
            "settings.syncInterval",
        ),
        (
            with(&hubspot, &|r| {
                r.settings.insert("syncInterval".into(), "soon".into());
            }),
            Code::InvalidArgument,
            "settings.syncInterval",
        ),
        (
            with(&mailchimp, &|r| r.settings.clear()),
            Code::InvalidArgument,
            "settings.listId",
        ),
        (
            with(&mailchimp, &|r| {
                r.credentials
                    .insert("apiKey".into(), "no-data-centre-".into());
            }),
            Code::InvalidArgument,
            "credentials.apiKey",
        ),
        (
            with(&mailchimp, &|r| {
                r.credentials
                    .insert("apiKey".into(), "abc-us6.evil.test".into());
            }),
            Code::InvalidArgument,
            "credentials.apiKey",
        ),
        (
            with(&zapier, &|r| {
                r.credentials.insert(
                    "webhookUrl".into(),
                    "http://169.254.169.254/hooks/catch/1/".into(),
                );
            }),
            Code::InvalidArgument,
            "credentials.webhookUrl",
        ),
        (
            ConnectIntegrationRequest {
                provider: Provider::Salesforce.into(),
                ..Default::default()
            },
            Code::FailedPrecondition,
            "OAuth",
        ),
    ];
    for (request, code, needle) in cases {
        let status = client
            .connect_integration(authed(request.clone(), &token("u1")))
            .await
            .err()
            .unwrap_or_else(|| panic!("accepted {request:?}"));
        assert_eq!(status.code(), code, "{request:?}: {status:?}");
        assert!(
            status.message().contains(needle),
            "{needle:?} not in {:?}",
            status.message()
        );
    }
    // A Mailchimp audience that does not exist is caught by the check call and named.
    let status = client
        .connect_integration(authed(
            with(&mailchimp, &|r| {
                r.settings.insert("listId".into(), "nosuchlist".into());
            }),
            &token("u1"),
        ))
        .await
        .err()
        .unwrap_or_else(|| panic!("unknown audience accepted"));
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("settings.listId"), "{status:?}");

    for fake in [&hubspot, &zapier] {
        assert_eq!(
            fake.verify_calls(),
            0,
            "{:?} was called for bad input",
            fake.kind
        );
    }
    assert_eq!(app.count("integrations", "").await, 0);
    app.stop().await;
}

async fn refused_credentials_are_invalid_argument_and_an_unreachable_provider_unavailable(
    backend: Backend,
) {
    let hubspot = FakeProvider::start(Kind::Hubspot).await;
    let app = spawn_with_fakes(backend, &[&hubspot], &[]).await;
    let mut client = app.integrations().await;
    let mut request = connect_request(&hubspot);
    request
        .credentials
        .insert("accessToken".into(), "pat-wrong-token-0000".into());
    let status = client
        .connect_integration(authed(request, &token("u1")))
        .await
        .err()
        .unwrap_or_else(|| panic!("a wrong token was accepted"));
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status
            .message()
            .contains("HubSpot refused the credentials: Authentication credentials not found"),
        "{status:?}"
    );
    assert!(
        !status.message().contains("pat-wrong-token"),
        "the token was echoed"
    );
    app.stop().await;

    // Nothing listens on this port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let dead = format!(
        "http://{}",
        closed.local_addr().unwrap_or_else(|e| panic!("{e}"))
    );
    drop(closed);
    let app = TestApp::spawn_with(backend, &[("--hubspot-api-base", &dead)]).await;
    let status = app
        .integrations()
        .await
        .connect_integration(authed(connect_request(&hubspot), &token("u1")))
        .await
        .err()
        .unwrap_or_else(|| panic!("connected to nothing"));
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(app.count("integrations", "").await, 0);
    app.stop().await;
}

async fn connect_sync_and_disconnect_each_provider(backend: Backend) {
    let fakes = [
        FakeProvider::start(Kind::Hubspot).await,
        FakeProvider::start(Kind::Mailchimp).await,
        FakeProvider::start(Kind::Sendgrid).await,
        FakeProvider::start(Kind::Zapier).await,
    ];
    let refs: Vec<&FakeProvider> = fakes.iter().collect();
    let app = spawn_with_fakes(backend, &refs, &[]).await;
    app.add_contacts("ada", 1000).await;
    app.add_contacts("bob", 3).await;
    let mut client = app.integrations().await;
    for fake in &fakes {
        let provider = provider_of(fake.kind);
        let integration = connect(&app, "ada", fake).await;
        assert_eq!(integration.status(), IntegrationStatus::Active);
        assert_eq!(integration.provider(), provider);
        assert_eq!(fake.verify_calls(), 1, "{:?}: one check call", fake.kind);

        let job = start_sync(&mut client, "ada", provider).await;
        let updates = watch_job(&app, "ada", &job.id).await;
        let last = updates.last().unwrap_or_else(|| panic!("no updates"));
        assert_eq!(
            last.state(),
            SyncJobState::Succeeded,
            "{:?}: {last:?}",
            fake.kind
        );
        assert_eq!((last.contacts_done, last.contacts_total), (1000, 1000));
        assert_eq!(last.attempts, 1);
        assert!(last.finish_time.is_some() && last.start_time.is_some());
        let done: Vec<i64> = updates.iter().map(|u| u.contacts_done).collect();
        assert!(
            done.windows(2).all(|w| w[0] <= w[1]),
            "progress went backwards: {done:?}"
        );

        // The right number of batches, each within the provider's size, every contact once
        // and nobody else's.
        let pushes = fake.pushes();
        assert_eq!(
            pushes.len(),
            1000usize.div_ceil(fake.kind.max_batch()),
            "{:?}",
            fake.kind
        );
        let mut emails = fake.pushed_emails();
        emails.sort();
        let mut want: Vec<String> = (0..1000)
            .map(|i| format!("contact{i}@example.com"))
            .collect();
        want.sort();
        assert_eq!(emails, want, "{:?}", fake.kind);
        fake.assert_no_problems();
        // Field mapping, checked on one contact.
        let body = &pushes[0].body;
        let first = match fake.kind {
            Kind::Hubspot => &body["inputs"][0]["properties"],
            Kind::Mailchimp => &body["members"][0],
            Kind::Sendgrid | Kind::Zapier => &body["contacts"][0],
        };
        let (first_name, job_title) = match fake.kind {
            Kind::Hubspot => (&first["firstname"], &first["jobtitle"]),
            Kind::Mailchimp => (&first["merge_fields"]["FNAME"], &serde_json::Value::Null),
            Kind::Sendgrid => (&first["first_name"], &serde_json::Value::Null),
            Kind::Zapier => (&first["first_name"], &first["job_title"]),
        };
        assert_eq!(first_name, "Contact", "{:?}: {first}", fake.kind);
        if !job_title.is_null() {
            assert_eq!(job_title, "Buyer");
        }

        let listed = client
            .list_integrations(authed(ListIntegrationsRequest {}, &token("ada")))
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .into_inner()
            .integrations;
        let mine = listed
            .iter()
            .find(|i| i.provider() == provider)
            .unwrap_or_else(|| panic!("not listed"));
        assert!(mine.last_sync_time.is_some());
        let shown = format!("{listed:?}");
        for (_, secret) in fake.credentials().0 {
            assert!(
                !shown.contains(&secret),
                "ListIntegrations shows a credential"
            );
        }

        client
            .disconnect_integration(authed(
                DisconnectIntegrationRequest {
                    provider: provider.into(),
                },
                &token("ada"),
            ))
            .await
            .unwrap_or_else(|e| panic!("disconnect: {e}"));
        for status in [
            client
                .disconnect_integration(authed(
                    DisconnectIntegrationRequest {
                        provider: provider.into(),
                    },
                    &token("ada"),
                ))
                .await
                .err(),
            client
                .sync_integration(authed(
                    SyncIntegrationRequest {
                        full: false,
                        provider: provider.into(),
                        direction: 0,
                    },
                    &token("ada"),
                ))
                .await
                .err(),
        ] {
            assert_eq!(status.map(|s| s.code()), Some(Code::NotFound));
        }
    }
    assert_eq!(app.count("integrations", "").await, 0);
    assert_eq!(
        app.count("sync_jobs", "").await,
        0,
        "jobs go with their integration"
    );
    let kinds = app.activity_kinds("ada").await;
    for kind in [
        "integration.connected",
        "sync.started",
        "sync.succeeded",
        "integration.disconnected",
    ] {
        assert_eq!(
            kinds.iter().filter(|k| *k == kind).count(),
            4,
            "{kind} in {kinds:?}"
        );
    }
    app.stop().await;
}

async fn connecting_again_updates_the_one_integration(backend: Backend) {
    let mailchimp = FakeProvider::start(Kind::Mailchimp).await;
    let app = spawn_with_fakes(backend, &[&mailchimp], &[]).await;
    let first = connect(&app, "ada", &mailchimp).await;
    let mut again = connect_request(&mailchimp);
    again.settings.insert("syncInterval".into(), "3600".into());
    let second = app
        .integrations()
        .await
        .connect_integration(authed(again, &token("ada")))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner()
        .integration
        .unwrap_or_else(|| panic!("no integration"));
    assert_eq!(first.id, second.id, "one integration per user and provider");
    assert_eq!(
        second.settings.get("syncInterval").map(String::as_str),
        Some("3600")
    );
    assert_eq!(app.count("integrations", "").await, 1);
    app.stop().await;
}

async fn credentials_are_stored_sealed_and_a_tampered_envelope_stops_the_sync(backend: Backend) {
    let hubspot = FakeProvider::start(Kind::Hubspot).await;
    let app = spawn_with_fakes(backend, &[&hubspot], &[]).await;
    app.add_contacts("ada", 5).await;
    connect(&app, "ada", &hubspot).await;
    let sealed = app.sealed_credentials().await;
    assert_eq!(sealed.len(), 1);
    assert!(
        !sealed[0]
            .windows(HUBSPOT_TOKEN.len())
            .any(|w| w == HUBSPOT_TOKEN.as_bytes()),
        "the token is stored in the clear"
    );
    let mut key = [0u8; 32];
    hex::decode_to_slice(ENCRYPTION_KEY, &mut key).unwrap_or_else(|e| panic!("{e}"));
    let opened = Vault::new(&key, &[])
        .unwrap_or_else(|e| panic!("{e}"))
        .open(&sealed[0])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(opened.get("accessToken"), Some(HUBSPOT_TOKEN));

    // Flip one byte of the stored ciphertext: the vault refuses it and the sync stops with a
    // clear error instead of sending garbage.
    let mut tampered = sealed[0].clone();
    tampered[30] ^= 1;
    crate::exec!(
        &app.pool,
        "UPDATE integrations SET credentials = $1",
        tampered
    );
    let mut client = app.integrations().await;
    let job = start_sync(&mut client, "ada", Provider::Hubspot).await;
    let job = wait_for_job(&app, "ada", &job.id).await;
    assert_eq!(job.state(), SyncJobState::Failed);
    assert!(job.last_error.contains("cannot be read"), "{job:?}");
    assert_eq!(hubspot.push_requests(), 0);
    let listed = client
        .list_integrations(authed(ListIntegrationsRequest {}, &token("ada")))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner()
        .integrations;
    assert_eq!(listed[0].status(), IntegrationStatus::Error);
    app.stop().await;
}

async fn rate_limits_setting_overrides_the_catalogue(backend: Backend) {
    let app = TestApp::spawn_with(backend, &[("--rate-limits", "hubspot=190/10s")]).await;
    let providers = app
        .integrations()
        .await
        .list_providers(authed(ListProvidersRequest {}, &token("u1")))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner()
        .providers;
    let hubspot = providers
        .iter()
        .find(|p| p.slug == "hubspot")
        .unwrap_or_else(|| panic!("no hubspot"));
    let limit = hubspot.rate_limit.unwrap_or_default();
    assert_eq!((limit.requests, limit.per_seconds), (190, 10));
    app.stop().await;
}

/// The user's integrations.
pub async fn list(app: &TestApp, user: &str) -> Vec<Integration> {
    app.integrations()
        .await
        .list_integrations(authed(
            nexus_billing::grpc::proto::integrations::ListIntegrationsRequest {},
            &token(user),
        ))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner()
        .integrations
}
