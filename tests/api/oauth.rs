//! OAuth connections end to end: StartOAuth, the provider's consent (played by the test
//! against the fake authorization server), the sidecar callback, tokens sealed in the vault,
//! refreshing during syncs, and revocation at disconnect.

use std::{sync::Arc, time::Duration};

use clap::Parser;
use nexus_billing::{
    cli::Cli,
    config::Config,
    domain::{UserId, catalogue::ProviderId, credentials::Credentials},
    grpc::proto::integrations::{
        CompleteOAuthRequest, ConnectIntegrationRequest, DisconnectIntegrationRequest, Integration,
        IntegrationStatus, ListIntegrationsRequest, ListProvidersRequest, Provider,
        StartOAuthRequest, SyncJobState,
    },
    integrations::oauth::OAuth,
    integrations::tokens::TokenKeeper,
    vault::Vault,
};
use serde_json::json;
use tonic::Code;

use crate::{
    exec,
    fake_oauth::{FakeOAuth, OKind},
    helpers::{ALLOWED_ORIGIN, Backend, ENCRYPTION_KEY, TestApp, authed, token},
    integrations::{start_sync, wait_for_job},
};

crate::on_both_backends!(
    every_oauth_provider_connects_through_the_callback,
    a_state_works_once_for_its_own_user_and_expires,
    denied_consent_and_a_failed_exchange_store_nothing,
    start_oauth_checks_its_input_and_unconfigured_providers_are_unavailable,
    tokens_are_refreshed_before_they_expire_and_rotated_tokens_kept,
    a_401_forces_one_refresh_and_invalid_grant_needs_reauth,
    two_workers_needing_a_refresh_make_one_refresh_call,
    dropbox_revocation_refreshes_an_expired_access_token_first,
);

/// The callback URL registered with the fake providers.
pub const REDIRECT_URI: &str = "https://billing.nexus.test/integrations/oauth/callback";

pub fn provider(kind: OKind) -> Provider {
    match kind {
        OKind::Salesforce => Provider::Salesforce,
        OKind::Zoho => Provider::ZohoCrm,
        OKind::GoogleDrive => Provider::GoogleDrive,
        OKind::Dropbox => Provider::Dropbox,
    }
}

pub fn slug(kind: OKind) -> &'static str {
    match kind {
        OKind::Salesforce => "salesforce",
        OKind::Zoho => "zoho_crm",
        OKind::GoogleDrive => "google_drive",
        OKind::Dropbox => "dropbox",
    }
}

/// Starts the service pointed at the fakes (their OAuth apps configured), with more settings.
pub async fn spawn_with_oauth(
    backend: Backend,
    fakes: &[&FakeOAuth],
    extra: &[(&str, &str)],
) -> TestApp {
    let settings = oauth_settings(fakes);
    let mut overrides: Vec<(&str, &str)> = settings
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    overrides.extend_from_slice(extra);
    TestApp::spawn_with(backend, &overrides).await
}

/// The settings pointing the service at the fakes, with the callback URL.
pub fn oauth_settings(fakes: &[&FakeOAuth]) -> Vec<(String, String)> {
    fakes
        .iter()
        .flat_map(|f| f.settings())
        .chain([("--oauth-redirect-url".to_string(), REDIRECT_URI.to_string())])
        .collect()
}

fn redirect_after() -> String {
    format!("{ALLOWED_ORIGIN}/settings/integrations?tab=crm")
}

pub use crate::oauth_browser::{callback, start_oauth};

fn success_location(kind: OKind) -> String {
    format!(
        "{}&integration={}&status=connected",
        redirect_after(),
        slug(kind)
    )
}

/// The whole flow for `user`, expecting success.
pub async fn connect_oauth(
    app: &TestApp,
    user: &str,
    fake: &FakeOAuth,
    settings: &[(&str, &str)],
) -> Integration {
    let url = start_oauth(app, user, fake.kind, settings).await;
    let (code, state) = fake.authorize(&url, REDIRECT_URI);
    let landing = callback(app, &[("code", &code), ("state", &state)]).await;
    assert_eq!(landing.status, 303, "{}", landing.body);
    assert_eq!(landing.location, Some(success_location(fake.kind)));
    integration(app, user, fake.kind)
        .await
        .unwrap_or_else(|| panic!("{:?} not connected", fake.kind))
}

pub async fn integration(app: &TestApp, user: &str, kind: OKind) -> Option<Integration> {
    app.integrations()
        .await
        .list_integrations(authed(ListIntegrationsRequest {}, &token(user)))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner()
        .integrations
        .into_iter()
        .find(|i| i.provider() == provider(kind))
}

/// The credentials stored for the only integration, opened with the test key.
pub async fn stored_credentials(app: &TestApp) -> Credentials {
    let mut key = [0u8; 32];
    hex::decode_to_slice(ENCRYPTION_KEY, &mut key).unwrap_or_else(|e| panic!("{e}"));
    let vault = Vault::new(&key, &[]).unwrap_or_else(|e| panic!("{e}"));
    let sealed = app.sealed_credentials().await;
    assert_eq!(sealed.len(), 1);
    vault
        .open(&sealed[0])
        .unwrap_or_else(|e| panic!("open: {e}"))
}

async fn every_oauth_provider_connects_through_the_callback(backend: Backend) {
    let fakes: Vec<FakeOAuth> = futures_all(OKind::ALL.iter().map(|k| FakeOAuth::start(*k))).await;
    let refs: Vec<&FakeOAuth> = fakes.iter().collect();
    let app = spawn_with_oauth(backend, &refs, &[]).await;
    let providers = app
        .integrations()
        .await
        .list_providers(authed(ListProvidersRequest {}, &token("ada")))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner()
        .providers;
    for p in &providers {
        assert!(
            p.available,
            "{} should be available: {}",
            p.slug, p.unavailable_reason
        );
    }

    for fake in &fakes {
        let user = format!("user-{}", slug(fake.kind));
        let url = start_oauth(&app, &user, fake.kind, &[]).await;
        let (code, state) = fake.authorize(&url, REDIRECT_URI);
        let landing = callback(&app, &[("code", &code), ("state", &state)]).await;
        assert_eq!(landing.status, 303, "{:?}: {}", fake.kind, landing.body);
        assert_eq!(landing.location, Some(success_location(fake.kind)));
        assert_eq!(landing.cache_control.as_deref(), Some("no-store"));
        let connected = integration(&app, &user, fake.kind)
            .await
            .unwrap_or_else(|| panic!("{:?} not connected", fake.kind));
        assert_eq!(connected.status(), IntegrationStatus::Active);

        // The exchange sent the code, the registered redirect URI and the PKCE verifier.
        let requests = fake.token_requests();
        assert_eq!(requests.len(), 1, "{:?}", fake.kind);
        let exchange = &requests[0];
        assert_eq!(
            exchange.get("grant_type").map(String::as_str),
            Some("authorization_code")
        );
        assert_eq!(exchange.get("code"), Some(&code));
        assert_eq!(
            exchange.get("redirect_uri").map(String::as_str),
            Some(REDIRECT_URI)
        );
        assert_eq!(exchange.contains_key("code_verifier"), fake.kind.pkce());

        // A replayed callback is refused and changes nothing.
        let replay = callback(&app, &[("code", &code), ("state", &state)]).await;
        assert_eq!(replay.status, 400);
        assert_eq!(replay.location, None);
        assert_eq!(
            fake.token_requests().len(),
            1,
            "a replay reached the token endpoint"
        );
        fake.assert_no_problems();
    }

    // Tokens are stored sealed: not one of them is in the database in the clear.
    let refresh_tokens: Vec<String> = fakes
        .iter()
        .filter_map(|f| f.current_refresh_token())
        .collect();
    assert_eq!(refresh_tokens.len(), 4);
    for sealed in app.sealed_credentials().await {
        for t in &refresh_tokens {
            assert!(
                !sealed.windows(t.len()).any(|w| w == t.as_bytes()),
                "a token is stored in the clear"
            );
        }
    }

    // Disconnecting revokes the grant at the provider.
    for fake in &fakes {
        let user = format!("user-{}", slug(fake.kind));
        let refresh = fake.current_refresh_token().unwrap_or_default();
        app.integrations()
            .await
            .disconnect_integration(authed(
                DisconnectIntegrationRequest {
                    provider: provider(fake.kind).into(),
                },
                &token(&user),
            ))
            .await
            .unwrap_or_else(|e| panic!("disconnect: {e}"));
        let revoked = fake.revoked();
        assert_eq!(revoked.len(), 1, "{:?}", fake.kind);
        if fake.kind == OKind::Dropbox {
            // Dropbox revokes the access token it is called with.
            assert!(revoked[0].starts_with("at-"), "{revoked:?}");
        } else {
            assert_eq!(revoked[0], refresh, "{:?}", fake.kind);
        }
    }
    assert_eq!(app.count("integrations", "").await, 0);
    app.stop().await;
}

/// Runs the futures one after another (tests start a handful of fakes).
async fn futures_all<F: std::future::Future<Output = FakeOAuth>>(
    futures: impl Iterator<Item = F>,
) -> Vec<FakeOAuth> {
    let mut out = Vec::new();
    for f in futures {
        out.push(f.await);
    }
    out
}

async fn complete(
    app: &TestApp,
    user: &str,
    kind: OKind,
    code: &str,
    state: &str,
) -> Result<Integration, tonic::Status> {
    app.integrations()
        .await
        .complete_o_auth(authed(
            CompleteOAuthRequest {
                accounts_server: String::new(),
                provider: provider(kind).into(),
                code: code.into(),
                state: state.into(),
            },
            &token(user),
        ))
        .await
        .map(|r| r.into_inner().integration.unwrap_or_default())
}

async fn a_state_works_once_for_its_own_user_and_expires(backend: Backend) {
    let fake = FakeOAuth::start(OKind::Salesforce).await;
    let app = spawn_with_oauth(backend, &[&fake], &[]).await;

    // Another user cannot finish ada's flow, and trying does not use it up.
    let url = start_oauth(&app, "ada", OKind::Salesforce, &[]).await;
    let (code, state) = fake.authorize(&url, REDIRECT_URI);
    let status = complete(&app, "mallory", OKind::Salesforce, &code, &state)
        .await
        .err()
        .unwrap_or_else(|| panic!("another user's state was accepted"));
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(app.count("integrations", "").await, 0);
    assert!(fake.token_requests().is_empty());

    // Ada finishes it herself (CompleteOAuth, for clients handling the redirect).
    let integration = complete(&app, "ada", OKind::Salesforce, &code, &state)
        .await
        .unwrap_or_else(|e| panic!("complete: {e}"));
    assert_eq!(integration.status(), IntegrationStatus::Active);
    // Once.
    let status = complete(&app, "ada", OKind::Salesforce, &code, &state)
        .await
        .err()
        .unwrap_or_else(|| panic!("a state worked twice"));
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(fake.token_requests().len(), 1);

    // An expired state is refused at the callback, with the error flag, and stores nothing.
    let url = start_oauth(&app, "bob", OKind::Salesforce, &[]).await;
    let (code, state) = fake.authorize(&url, REDIRECT_URI);
    exec!(
        &app.pool,
        "UPDATE oauth_states SET expires_at = $1",
        chrono::Utc::now() - chrono::Duration::seconds(1)
    );
    let landing = callback(&app, &[("code", &code), ("state", &state)]).await;
    assert_eq!(landing.status, 303);
    assert_eq!(
        landing.location,
        Some(format!(
            "{}&integration=salesforce&status=error&error=expired",
            redirect_after()
        ))
    );
    assert!(integration_of(&app, "bob").await.is_empty());
    assert_eq!(
        fake.token_requests().len(),
        1,
        "an expired state reached the token endpoint"
    );

    // A made-up state.
    let landing = callback(&app, &[("code", "x"), ("state", &"f".repeat(64))]).await;
    assert_eq!(landing.status, 400);
    assert!(
        landing.body.contains("Start connecting"),
        "{}",
        landing.body
    );
    assert_eq!(app.count("oauth_states", "").await, 0);
    fake.assert_no_problems();
    app.stop().await;
}

async fn integration_of(app: &TestApp, user: &str) -> Vec<Integration> {
    app.integrations()
        .await
        .list_integrations(authed(ListIntegrationsRequest {}, &token(user)))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner()
        .integrations
}

async fn denied_consent_and_a_failed_exchange_store_nothing(backend: Backend) {
    let fake = FakeOAuth::start(OKind::GoogleDrive).await;
    let app = spawn_with_oauth(backend, &[&fake], &[]).await;

    let url = start_oauth(&app, "ada", OKind::GoogleDrive, &[]).await;
    let (_code, state) = fake.authorize(&url, REDIRECT_URI);
    let landing = callback(&app, &[("error", "access_denied"), ("state", &state)]).await;
    assert_eq!(landing.status, 303);
    assert_eq!(
        landing.location,
        Some(format!(
            "{}&integration=google_drive&status=error&error=access_denied",
            redirect_after()
        ))
    );
    assert!(integration_of(&app, "ada").await.is_empty());
    assert!(fake.token_requests().is_empty());
    // The state is used up by the refusal.
    assert_eq!(app.count("oauth_states", "").await, 0);

    fake.fail_exchange(
        400,
        json!({"error": "invalid_grant", "error_description": "Bad Request"}),
    );
    let url = start_oauth(&app, "ada", OKind::GoogleDrive, &[]).await;
    let (code, state) = fake.authorize(&url, REDIRECT_URI);
    let landing = callback(&app, &[("code", &code), ("state", &state)]).await;
    assert_eq!(landing.status, 303);
    let location = landing.location.unwrap_or_default();
    assert!(location.contains("status=error"), "{location}");
    assert!(integration_of(&app, "ada").await.is_empty());
    assert_eq!(app.count("integrations", "").await, 0);

    // The provider down during the exchange: UNAVAILABLE through CompleteOAuth, nothing stored.
    fake.fail_exchange(503, json!({"error": "temporarily_unavailable"}));
    let url = start_oauth(&app, "ada", OKind::GoogleDrive, &[]).await;
    let (code, state) = fake.authorize(&url, REDIRECT_URI);
    let status = complete(&app, "ada", OKind::GoogleDrive, &code, &state)
        .await
        .err()
        .unwrap_or_else(|| panic!("a failed exchange connected"));
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(app.count("integrations", "").await, 0);
    fake.assert_no_problems();
    app.stop().await;
}

async fn start_oauth_checks_its_input_and_unconfigured_providers_are_unavailable(backend: Backend) {
    let fake = FakeOAuth::start(OKind::Salesforce).await;
    let app = spawn_with_oauth(backend, &[&fake], &[]).await;
    let mut client = app.integrations().await;
    let start = |provider: Provider, redirect: &str| StartOAuthRequest {
        provider: provider.into(),
        redirect_after: redirect.into(),
        settings: Default::default(),
    };
    for (request, code) in [
        (
            start(Provider::Salesforce, "https://evil.test/steal"),
            Code::InvalidArgument,
        ),
        (
            start(Provider::Salesforce, "/relative"),
            Code::InvalidArgument,
        ),
        (
            start(Provider::Hubspot, &redirect_after()),
            Code::InvalidArgument,
        ),
        (
            start(Provider::Dropbox, &redirect_after()),
            Code::FailedPrecondition,
        ),
        (
            start(Provider::Unspecified, &redirect_after()),
            Code::InvalidArgument,
        ),
    ] {
        let status = client
            .start_o_auth(authed(request.clone(), &token("ada")))
            .await
            .err()
            .unwrap_or_else(|| panic!("accepted {request:?}"));
        assert_eq!(status.code(), code, "{request:?}: {status:?}");
    }
    let bad_setting = StartOAuthRequest {
        settings: [("nope".to_string(), "1".to_string())]
            .into_iter()
            .collect(),
        ..start(Provider::Salesforce, &redirect_after())
    };
    let status = client
        .start_o_auth(authed(bad_setting, &token("ada")))
        .await
        .err()
        .unwrap_or_else(|| panic!("unknown setting accepted"));
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("settings.nope"),
        "{}",
        status.message()
    );
    assert_eq!(app.count("oauth_states", "").await, 0);

    let providers = client
        .list_providers(authed(ListProvidersRequest {}, &token("ada")))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner()
        .providers;
    for p in providers {
        match p.slug.as_str() {
            "salesforce" => assert!(p.available),
            "zoho_crm" | "google_drive" | "dropbox" => {
                assert!(!p.available, "{}", p.slug);
                assert!(
                    p.unavailable_reason.contains("not configured"),
                    "{}",
                    p.unavailable_reason
                );
            }
            _ => assert!(p.available, "{}", p.slug),
        }
    }
    // OAuth providers are not connected with typed-in credentials.
    let status = client
        .connect_integration(authed(
            ConnectIntegrationRequest {
                provider: Provider::Salesforce.into(),
                credentials: [("accessToken".to_string(), "x".to_string())]
                    .into_iter()
                    .collect(),
                settings: Default::default(),
            },
            &token("ada"),
        ))
        .await
        .err()
        .unwrap_or_else(|| panic!("typed-in OAuth credentials accepted"));
    assert_eq!(status.code(), Code::FailedPrecondition);
    app.stop().await;
}

async fn tokens_are_refreshed_before_they_expire_and_rotated_tokens_kept(backend: Backend) {
    let fake = FakeOAuth::start(OKind::GoogleDrive).await;
    // Tokens that live 60 s are inside the refresh margin from the start.
    fake.set_expires_in(60);
    fake.rotate_refresh_tokens();
    let app = spawn_with_oauth(backend, &[&fake], &[]).await;
    app.add_contacts("ada", 5).await;
    connect_oauth(&app, "ada", &fake, &[]).await;
    let first_refresh = fake.current_refresh_token();
    // Refreshed tokens live an hour.
    fake.set_expires_in(3600);

    let mut client = app.integrations().await;
    let job = start_sync(&mut client, "ada", Provider::GoogleDrive).await;
    let job = wait_for_job(&app, "ada", &job.id).await;
    assert_eq!(job.state(), SyncJobState::Succeeded, "{job:?}");
    assert_eq!(fake.refresh_calls(), 1, "refreshed before use, once");
    assert_eq!(fake.unauthorised_calls(), 0, "an expiring token was used");
    // The rotated refresh token was stored (the fake refuses any other).
    let rotated = fake.current_refresh_token();
    assert_ne!(rotated, first_refresh);
    let stored = stored_credentials(&app).await;
    assert_eq!(stored.get("refreshToken"), rotated.as_deref());

    // The next refresh (forced by a 401) uses the rotated token (a full push: nothing changed).
    fake.expire_access_tokens();
    let job = crate::integrations::start_full_sync(&mut client, "ada", Provider::GoogleDrive).await;
    let job = wait_for_job(&app, "ada", &job.id).await;
    assert_eq!(job.state(), SyncJobState::Succeeded, "{job:?}");
    assert_eq!(fake.refresh_calls(), 2);
    let requests = fake.token_requests();
    assert_eq!(requests[2].get("refresh_token"), rotated.as_ref());
    fake.assert_no_problems();
    app.stop().await;
}

async fn a_401_forces_one_refresh_and_invalid_grant_needs_reauth(backend: Backend) {
    let fake = FakeOAuth::start(OKind::Zoho).await;
    let app = spawn_with_oauth(backend, &[&fake], &[]).await;
    app.add_contacts("ada", 5).await;
    connect_oauth(&app, "ada", &fake, &[]).await;

    // The token is revoked early at the provider: one 401, one refresh, the batch goes through.
    fake.expire_access_tokens();
    let mut client = app.integrations().await;
    let job = start_sync(&mut client, "ada", Provider::ZohoCrm).await;
    let job = wait_for_job(&app, "ada", &job.id).await;
    assert_eq!(job.state(), SyncJobState::Succeeded, "{job:?}");
    assert_eq!(job.attempts, 1);
    assert_eq!(fake.unauthorised_calls(), 1);
    assert_eq!(fake.refresh_calls(), 1);
    assert_eq!(fake.records().len(), 5);

    // Now the grant itself is gone: NEEDS_REAUTH, no retries (a full push: nothing changed).
    fake.expire_access_tokens();
    fake.refuse_refresh();
    let job = crate::integrations::start_full_sync(&mut client, "ada", Provider::ZohoCrm).await;
    let job = wait_for_job(&app, "ada", &job.id).await;
    assert_eq!(job.state(), SyncJobState::Failed, "{job:?}");
    assert_eq!(job.attempts, 1, "invalid_grant is not retried");
    assert_eq!(fake.refresh_calls(), 2);
    let integration = integration(&app, "ada", OKind::Zoho)
        .await
        .unwrap_or_else(|| panic!("gone"));
    assert_eq!(integration.status(), IntegrationStatus::NeedsReauth);
    assert!(
        integration.last_error.contains("connect it again"),
        "{}",
        integration.last_error
    );
    let status = client
        .sync_integration(authed(
            nexus_billing::grpc::proto::integrations::SyncIntegrationRequest {
                full: false,
                provider: Provider::ZohoCrm.into(),
                direction: 0,
            },
            &token("ada"),
        ))
        .await
        .err()
        .unwrap_or_else(|| panic!("synced a NEEDS_REAUTH integration"));
    assert_eq!(status.code(), Code::FailedPrecondition);

    // Connecting again makes it ACTIVE.
    let again = connect_oauth(&app, "ada", &fake, &[]).await;
    assert_eq!(again.status(), IntegrationStatus::Active);
    fake.assert_no_problems();
    app.stop().await;
}

async fn two_workers_needing_a_refresh_make_one_refresh_call(backend: Backend) {
    let fake = FakeOAuth::start(OKind::Dropbox).await;
    fake.set_expires_in(60);
    let app = spawn_with_oauth(backend, &[&fake], &[("--sync-workers", "0")]).await;
    connect_oauth(&app, "ada", &fake, &[]).await;
    fake.set_expires_in(3600);
    fake.delay_refresh(Duration::from_millis(300));

    // Two token keepers (as in two replicas) on the same database.
    let settings: Vec<(String, String)> = fake.settings();
    let args = [
        "nexus-billing".to_string(),
        format!("--database-url={}", app.db.url),
    ]
    .into_iter()
    .chain(settings.iter().map(|(k, v)| format!("{k}={v}")))
    .chain([
        format!("--oauth-redirect-url={REDIRECT_URI}"),
        format!("--encryption-key={ENCRYPTION_KEY}"),
    ]);
    let cli = Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{e}"));
    let config = Config::from_settings(cli.settings).unwrap_or_else(|e| panic!("{e}"));
    let oauth =
        Arc::new(OAuth::new(&config.oauth, &config.endpoints).unwrap_or_else(|e| panic!("{e}")));
    let vault =
        Arc::new(nexus_billing::startup::build_vault(&config).unwrap_or_else(|e| panic!("{e}")));
    let keeper = |_: usize| async {
        let store = nexus_billing::store::connect(&app.db.url, 2)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        TokenKeeper::new(store, Arc::clone(&vault), Arc::clone(&oauth))
    };
    let (a, b) = (keeper(0).await, keeper(1).await);
    let store = nexus_billing::store::connect(&app.db.url, 2)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let user = UserId::parse("ada").unwrap_or_else(|e| panic!("{e:?}"));
    let integration = store
        .integration(&user, ProviderId::Dropbox)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("not connected"));
    let (first, second) = tokio::join!(
        a.credentials(&integration, None),
        b.credentials(&integration, None)
    );
    let first = first.unwrap_or_else(|e| panic!("{e}"));
    let second = second.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(fake.refresh_calls(), 1, "both refreshed");
    assert_eq!(first.get("accessToken"), second.get("accessToken"));
    let stored = stored_credentials(&app).await;
    assert_eq!(stored.get("accessToken"), first.get("accessToken"));
    fake.assert_no_problems();
    app.stop().await;
}

async fn dropbox_revocation_refreshes_an_expired_access_token_first(backend: Backend) {
    let fake = FakeOAuth::start(OKind::Dropbox).await;
    // The access token is expired by the time the user disconnects.
    fake.set_expires_in(0);
    let app = spawn_with_oauth(backend, &[&fake], &[("--sync-workers", "0")]).await;
    connect_oauth(&app, "ada", &fake, &[]).await;
    let first_access = stored_credentials(&app)
        .await
        .get("accessToken")
        .map(str::to_string);
    app.integrations()
        .await
        .disconnect_integration(authed(
            DisconnectIntegrationRequest {
                provider: Provider::Dropbox.into(),
            },
            &token("ada"),
        ))
        .await
        .unwrap_or_else(|e| panic!("disconnect: {e}"));
    assert_eq!(fake.refresh_calls(), 1, "no fresh token for the revocation");
    let revoked = fake.revoked();
    assert_eq!(revoked.len(), 1);
    assert_ne!(Some(&revoked[0]), first_access.as_ref());
    assert_eq!(
        fake.unauthorised_calls(),
        0,
        "revoked with an expired token"
    );
    assert_eq!(app.count("integrations", "").await, 0);
    fake.assert_no_problems();
    app.stop().await;
}
