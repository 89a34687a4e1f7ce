//! IntegrationsService: the provider catalogue and a user's integrations.

use nexus_billing::grpc::proto::integrations::{
    AuthKind, ConnectIntegrationRequest, IntegrationStatus, ListIntegrationsRequest,
    ListProvidersRequest, Provider,
};
use tonic::Code;

use crate::helpers::{Backend, TestApp, authed, seed_integration, token};

crate::on_both_backends!(
    list_providers_serves_the_whole_catalogue,
    list_integrations_shows_only_the_callers_integrations,
    connect_answers_unimplemented_until_its_issue_lands,
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
    let salesforce = &providers[0];
    assert_eq!(salesforce.auth_kind(), AuthKind::Oauth2);
    assert!(salesforce.credential_fields.is_empty());
    // Nothing can be connected in this version yet, and the catalogue says so.
    for p in &providers {
        assert!(
            !p.available && !p.unavailable_reason.is_empty(),
            "{}",
            p.slug
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

async fn connect_answers_unimplemented_until_its_issue_lands(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let status = app
        .integrations()
        .await
        .connect_integration(authed(
            ConnectIntegrationRequest {
                provider: Provider::Hubspot.into(),
                ..Default::default()
            },
            &token("u1"),
        ))
        .await
        .err()
        .unwrap_or_else(|| panic!("ConnectIntegration is not implemented yet"));
    assert_eq!(status.code(), Code::Unimplemented);
    app.stop().await;
}
