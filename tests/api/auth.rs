//! Authentication: bearer tokens in front of both services, algorithm pinned by configuration,
//! and the rule that only service callers may name another user.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use nexus_billing::grpc::proto::{
    billing::{CheckLimitRequest, GetUsageRequest, Resource},
    integrations::ListIntegrationsRequest,
};
use serde_json::json;
use tonic::{Code, Request};

use crate::helpers::{Backend, JWT_SECRET, TestApp, authed, claims, service_token, sign, token};

crate::on_both_backends!(
    missing_malformed_expired_forged_and_unsigned_tokens_are_unauthenticated,
    issuer_and_audience_are_checked_when_configured,
    a_user_naming_another_user_in_check_limit_is_permission_denied,
    a_service_caller_may_check_another_users_limit,
    es256_configuration_refuses_an_hs256_token_signed_with_the_public_key,
);

fn unsigned_token(payload: serde_json::Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(json!({"alg": "none", "typ": "JWT"}).to_string());
    let payload = URL_SAFE_NO_PAD.encode(payload.to_string());
    format!("{header}.{payload}.")
}

fn hs256_token(payload: serde_json::Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &payload,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

async fn assert_refused(app: &TestApp, token: Option<&str>, case: &str) {
    let mut billing = app.billing().await;
    let mut integrations = app.integrations().await;
    let usage_request = match token {
        Some(t) => authed(GetUsageRequest {}, t),
        None => Request::new(GetUsageRequest {}),
    };
    let list_request = match token {
        Some(t) => authed(ListIntegrationsRequest {}, t),
        None => Request::new(ListIntegrationsRequest {}),
    };
    for status in [
        billing.get_usage(usage_request).await.err(),
        integrations.list_integrations(list_request).await.err(),
    ] {
        let status = status.unwrap_or_else(|| panic!("{case}: the call was accepted"));
        assert_eq!(status.code(), Code::Unauthenticated, "{case}");
        assert!(
            ["missing bearer token", "invalid or expired token"].contains(&status.message()),
            "{case}: the message must stay generic, got {:?}",
            status.message()
        );
    }
}

async fn missing_malformed_expired_forged_and_unsigned_tokens_are_unauthenticated(
    backend: Backend,
) {
    let app = TestApp::spawn(backend).await;
    let now = chrono::Utc::now().timestamp();
    let cases: Vec<(&str, Option<String>)> = vec![
        ("no token", None),
        ("garbage", Some("not-a-jwt".into())),
        (
            "expired an hour ago",
            Some(sign(&claims("u1", &[], -3600), JWT_SECRET)),
        ),
        (
            "wrong secret",
            Some(sign(
                &claims("u1", &[], 3600),
                "another-secret-of-sufficient-length-xx",
            )),
        ),
        (
            "alg none",
            Some(unsigned_token(json!({"sub": "u1", "exp": now + 3600}))),
        ),
        (
            "no exp claim",
            Some(hs256_token(json!({"sub": "u1"}), JWT_SECRET)),
        ),
        (
            "empty subject",
            Some(hs256_token(
                json!({"sub": "", "exp": now + 3600}),
                JWT_SECRET,
            )),
        ),
    ];
    for (case, bad) in &cases {
        assert_refused(&app, bad.as_deref(), case).await;
    }
    // A valid token passes, so the refusals above are about the tokens.
    app.billing()
        .await
        .get_usage(authed(GetUsageRequest {}, &token("u1")))
        .await
        .unwrap_or_else(|e| panic!("a valid token was refused: {e}"));
    app.stop().await;
}

async fn issuer_and_audience_are_checked_when_configured(backend: Backend) {
    let app = TestApp::spawn_with(
        backend,
        &[
            ("--jwt-issuer", "https://auth.nexus.test"),
            ("--jwt-audience", "nexus-billing"),
        ],
    )
    .await;
    let exp = chrono::Utc::now().timestamp() + 3600;
    let with = |iss: Option<&str>, aud: Option<&str>| {
        let mut payload = json!({"sub": "u1", "exp": exp});
        if let Some(iss) = iss {
            payload["iss"] = json!(iss);
        }
        if let Some(aud) = aud {
            payload["aud"] = json!(aud);
        }
        hs256_token(payload, JWT_SECRET)
    };
    let refused = [
        ("no iss, no aud", with(None, None)),
        (
            "wrong issuer",
            with(Some("https://evil.test"), Some("nexus-billing")),
        ),
        (
            "wrong audience",
            with(Some("https://auth.nexus.test"), Some("other-service")),
        ),
        (
            "missing audience",
            with(Some("https://auth.nexus.test"), None),
        ),
    ];
    for (case, bad) in &refused {
        assert_refused(&app, Some(bad), case).await;
    }
    // `aud` may be an array: accepted when it holds the configured audience.
    let many = |aud: serde_json::Value| {
        hs256_token(
            json!({"sub": "u1", "exp": exp, "iss": "https://auth.nexus.test", "aud": aud}),
            JWT_SECRET,
        )
    };
    assert_refused(&app, Some(&many(json!(["a", "b"]))), "array without ours").await;
    app.billing()
        .await
        .get_usage(authed(
            GetUsageRequest {},
            &many(json!(["other-service", "nexus-billing"])),
        ))
        .await
        .unwrap_or_else(|e| panic!("an array audience holding ours was refused: {e}"));
    app.billing()
        .await
        .get_usage(authed(
            GetUsageRequest {},
            &with(Some("https://auth.nexus.test"), Some("nexus-billing")),
        ))
        .await
        .unwrap_or_else(|e| panic!("the right issuer and audience were refused: {e}"));
    app.stop().await;
}

fn check_cards_of(user: &str) -> CheckLimitRequest {
    CheckLimitRequest {
        user_id: user.to_string(),
        resource: Resource::Cards.into(),
        quantity: 1,
    }
}

async fn a_user_naming_another_user_in_check_limit_is_permission_denied(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mut client = app.billing().await;
    let status = client
        .check_limit(authed(check_cards_of("victim"), &token("attacker")))
        .await
        .err()
        .unwrap_or_else(|| panic!("a user read another user's limits"));
    assert_eq!(status.code(), Code::PermissionDenied);
    // Naming oneself is fine.
    client
        .check_limit(authed(check_cards_of("attacker"), &token("attacker")))
        .await
        .unwrap_or_else(|e| panic!("naming oneself was refused: {e}"));
    app.stop().await;
}

async fn a_service_caller_may_check_another_users_limit(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.add_cards("customer", 1).await;
    let check = app
        .billing()
        .await
        .check_limit(authed(
            check_cards_of("customer"),
            &service_token("card-service"),
        ))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner();
    // The answer is about the named user (who has their one FREE card), not the caller.
    assert!(!check.allowed);
    assert_eq!(check.used, 1);
    app.stop().await;
}

async fn es256_configuration_refuses_an_hs256_token_signed_with_the_public_key(backend: Backend) {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let public_key = format!("{fixtures}/es256-public.pem");
    let app = TestApp::spawn_with(
        backend,
        &[
            ("--jwt-secret", ""),
            ("--jwt-algorithm", "ES256"),
            ("--jwt-public-key-file", &public_key),
        ],
    )
    .await;
    let private = std::fs::read(format!("{fixtures}/es256-private.pem")).unwrap_or_default();
    let public = std::fs::read(&public_key).unwrap_or_default();
    let good = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        &claims("u1", &[], 3600),
        &jsonwebtoken::EncodingKey::from_ec_pem(&private).unwrap_or_else(|e| panic!("{e}")),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    app.billing()
        .await
        .get_usage(authed(GetUsageRequest {}, &good))
        .await
        .unwrap_or_else(|e| panic!("a valid ES256 token was refused: {e}"));

    // Key confusion: an HS256 token whose HMAC key is the public key must not pass.
    let confused = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims("u1", &[], 3600),
        &jsonwebtoken::EncodingKey::from_secret(&public),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_refused(
        &app,
        Some(&confused),
        "HS256 signed with the ES256 public key",
    )
    .await;
    assert_refused(&app, Some(&token("u1")), "HS256 token on an ES256 server").await;
    app.stop().await;
}
