//! The attack suite's regular tests (the release-time program with floods and slow clients is
//! `benches/attacks.rs`): hostile tokens on every RPC, a valid token used on another user's
//! ids, open redirects on every URL parameter, oversized and malformed messages. Every attack
//! is refused, and the service still serves afterwards.
//!
//! "Every RPC" is read from the service's own descriptor set, so an RPC added later is covered
//! without touching this file.

use std::str::FromStr;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use nexus_billing::grpc::proto::{
    self,
    billing::{
        CheckLimitRequest, CreateCheckoutSessionRequest, CreatePortalSessionRequest,
        GetSubscriptionRequest, ListInvoicesRequest, ListPlansRequest, Resource, Tier,
    },
    integrations::{
        CancelSyncJobRequest, ConnectIntegrationRequest, DisconnectIntegrationRequest,
        GetSyncJobRequest, ListIntegrationsRequest, ListSyncJobsRequest, Provider,
        StartOAuthRequest, SyncJobState, UpdateIntegrationRequest, WatchSyncJobRequest,
    },
};
use prost::Message;
use serde_json::json;
use tonic::{Code, Request, Status, transport::Channel};

use crate::{
    fake_oauth::{FakeOAuth, OKind},
    fake_providers::{FakeProvider, Kind},
    fake_http::HoldPoint,
    helpers::{ALLOWED_ORIGIN, Backend, PATIENCE, TestApp, authed, service_token, token},
    integrations::{connect, get_job, spawn_with_fakes, start_sync},
};

crate::tests!(plain: [
    hostile_tokens_are_refused_on_every_rpc,
    a_valid_token_for_another_user_reaches_nothing_of_theirs,
    open_redirects_are_refused_on_every_url_parameter,
    oversized_and_malformed_messages_are_refused_and_the_service_keeps_serving,
    silent_connections_are_closed_on_both_ports_and_callers_still_get_in,
]);

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
const ISSUER: &str = "https://auth.nexus.test";
const AUDIENCE: &str = "nexus-billing";

/// Every RPC of our services: its path and whether it streams its answer.
fn every_rpc() -> Vec<(String, bool)> {
    let set = prost_types::FileDescriptorSet::decode(proto::FILE_DESCRIPTOR_SET)
        .unwrap_or_else(|e| panic!("descriptor set: {e}"));
    let mut rpcs = Vec::new();
    for file in set
        .file
        .iter()
        .filter(|f| f.package().starts_with("nexus."))
    {
        for service in &file.service {
            for method in &service.method {
                rpcs.push((
                    format!("/{}.{}/{}", file.package(), service.name(), method.name()),
                    method.server_streaming(),
                ));
            }
        }
    }
    assert!(rpcs.len() >= 22, "only {} RPCs found", rpcs.len());
    rpcs
}

/// Calls `path` with an empty request (every field at its default) and `authorization`.
/// The answer is read as an empty message: unknown fields are skipped, so any answer decodes.
async fn raw_call(
    channel: Channel,
    path: &str,
    streaming: bool,
    authorization: Option<&str>,
) -> Result<(), Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let mut request = Request::new(());
    if let Some(value) = authorization {
        let value = value
            .parse()
            .map_err(|_| Status::invalid_argument("unsendable header"))?;
        request.metadata_mut().insert("authorization", value);
    }
    let path = http::uri::PathAndQuery::from_str(path).unwrap_or_else(|e| panic!("{e}"));
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    if streaming {
        let mut stream = grpc
            .server_streaming(request, path, codec)
            .await?
            .into_inner();
        stream.message().await?;
    } else {
        grpc.unary(request, path, codec).await?;
    }
    Ok(())
}

fn b64(value: &serde_json::Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

fn rs256(payload: &serde_json::Value, private_pem: &[u8]) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        payload,
        &jsonwebtoken::EncodingKey::from_rsa_pem(private_pem).unwrap_or_else(|e| panic!("{e}")),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn hs256(payload: &serde_json::Value, key: &[u8]) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        payload,
        &jsonwebtoken::EncodingKey::from_secret(key),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// An RS256 server with issuer and audience: every hostile token, on every RPC, is
/// UNAUTHENTICATED; then a valid token still works.
async fn hostile_tokens_are_refused_on_every_rpc() {
    let public_key = format!("{FIXTURES}/rs256-public.pem");
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        &[
            ("--jwt-secret", ""),
            ("--jwt-algorithm", "RS256"),
            ("--jwt-public-key-file", &public_key),
            ("--jwt-issuer", ISSUER),
            ("--jwt-audience", AUDIENCE),
        ],
    )
    .await;
    let private = std::fs::read(format!("{FIXTURES}/rs256-private.pem")).unwrap_or_default();
    let public = std::fs::read(&public_key).unwrap_or_default();
    let other_private = std::fs::read(format!("{FIXTURES}/es256-private.pem")).unwrap_or_default();
    let now = chrono::Utc::now().timestamp();
    let claims = |extra: serde_json::Value| {
        let mut c = json!({"sub": "victim", "exp": now + 3600, "iss": ISSUER, "aud": AUDIENCE});
        if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                c.insert(k.clone(), v.clone());
            }
        }
        c
    };
    let good = rs256(&claims(json!({})), &private);
    let es256_forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        &claims(json!({})),
        &jsonwebtoken::EncodingKey::from_ec_pem(&other_private).unwrap_or_else(|e| panic!("{e}")),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let (header, payload) = {
        let mut parts = good.split('.');
        (
            parts.next().unwrap_or_default().to_string(),
            parts.next().unwrap_or_default().to_string(),
        )
    };
    let attacks: Vec<(&str, Option<String>)> = vec![
        ("no authorization", None),
        ("empty bearer", Some("Bearer ".into())),
        ("basic auth", Some("Basic dmljdGltOnBhc3N3b3Jk".into())),
        (
            "alg none",
            Some(format!(
                "Bearer {}.{}.",
                b64(&json!({"alg": "none", "typ": "JWT"})),
                b64(&claims(json!({})))
            )),
        ),
        (
            "alg None with the real signature",
            Some(format!(
                "Bearer {}.{payload}.{}",
                b64(&json!({"alg": "None"})),
                good.rsplit('.').next().unwrap_or_default()
            )),
        ),
        (
            "HS256 signed with the RS256 public key",
            Some(format!("Bearer {}", hs256(&claims(json!({})), &public))),
        ),
        (
            "signed by another key",
            Some(format!("Bearer {es256_forged}")),
        ),
        (
            "claims changed after signing",
            Some(format!(
                "Bearer {header}.{}.{}",
                b64(&claims(json!({"sub": "admin", "roles": ["service"]}))),
                good.rsplit('.').next().unwrap_or_default()
            )),
        ),
        (
            "expired",
            Some(format!(
                "Bearer {}",
                rs256(&claims(json!({"exp": now - 120})), &private)
            )),
        ),
        (
            "not yet valid",
            Some(format!(
                "Bearer {}",
                rs256(&claims(json!({"nbf": now + 3600})), &private)
            )),
        ),
        (
            "wrong issuer",
            Some(format!(
                "Bearer {}",
                rs256(&claims(json!({"iss": "https://evil.example"})), &private)
            )),
        ),
        (
            "wrong audience",
            Some(format!(
                "Bearer {}",
                rs256(&claims(json!({"aud": "another-service"})), &private)
            )),
        ),
        (
            "no expiry",
            Some(format!(
                "Bearer {}",
                rs256(
                    &json!({"sub": "victim", "iss": ISSUER, "aud": AUDIENCE}),
                    &private
                )
            )),
        ),
        (
            "a user id that is not one",
            Some(format!(
                "Bearer {}",
                rs256(&claims(json!({"sub": "../../etc/passwd\u{0}"})), &private)
            )),
        ),
        (
            "oversized but well signed (12 KB)",
            Some(format!(
                "Bearer {}",
                rs256(&claims(json!({"pad": "x".repeat(12 * 1024)})), &private)
            )),
        ),
        ("garbage", Some("Bearer ..~~!!%%..".into())),
    ];
    let rpcs = every_rpc();
    let channel = app.channel().await;
    let mut calls = 0;
    for (case, authorization) in &attacks {
        for (path, streaming) in &rpcs {
            let result =
                raw_call(channel.clone(), path, *streaming, authorization.as_deref()).await;
            let status = result
                .err()
                .unwrap_or_else(|| panic!("{case}: {path} accepted the call"));
            calls += 1;
            if case.starts_with("oversized") {
                // Refused before the interceptor: HTTP/2 answers 431 for headers over 8 KiB.
                assert!(
                    status.message().contains("431"),
                    "{case}: {path}: {status:?}"
                );
                continue;
            }
            assert_eq!(
                status.code(),
                Code::Unauthenticated,
                "{case}: {path}: {status:?}"
            );
            assert!(
                ["missing bearer token", "invalid or expired token"].contains(&status.message()),
                "{case}: {path}: the message must stay generic, got {:?}",
                status.message()
            );
        }
    }
    assert_eq!(calls, attacks.len() * rpcs.len());

    // A header far past any token (200 KB) is refused at the HTTP/2 layer; the server lives.
    let huge = format!("Bearer {}", "A".repeat(200 * 1024));
    let refused = raw_call(app.channel().await, &rpcs[0].0, false, Some(&huge)).await;
    assert!(
        refused.is_err(),
        "a 200 KB authorization header was accepted"
    );

    // The valid token works on a fresh connection: the attacks above were about the tokens.
    app.billing()
        .await
        .list_plans(authed(ListPlansRequest::default(), &good))
        .await
        .unwrap_or_else(|e| panic!("a valid RS256 token was refused: {e}"));
    app.stop().await;
}

/// Bob holds a valid token and Ada's ids. Nothing of Ada's is readable, changeable or
/// cancellable through any RPC that takes an id, and her things are untouched afterwards.
async fn a_valid_token_for_another_user_reaches_nothing_of_theirs() {
    let hubspot = FakeProvider::start(Kind::Hubspot).await;
    let app = spawn_with_fakes(Backend::Sqlite, &[&hubspot], &[]).await;
    let ada = "ada";
    let bob = token("bob");
    connect(&app, ada, &hubspot).await;
    app.add_contacts(ada, 5).await;
    // Ada's job is running, its push held at the provider's door until the end.
    let push = hubspot.hold_pushes(HoldPoint::Arrival, 0);
    let mut integrations = app.integrations().await;
    let job = start_sync(&mut integrations, ada, Provider::Hubspot).await;
    push.arrived(1).await;
    let mut billing = app.billing().await;

    // Naming ada is refused as such; her ids are not found, as if they did not exist.
    let denied = |r: Result<tonic::Response<_>, Status>, code: Code, what: &str| {
        let status = r
            .err()
            .unwrap_or_else(|| panic!("{what}: bob was answered"));
        assert_eq!(status.code(), code, "{what}: {status:?}");
    };
    denied(
        billing
            .check_limit(authed(
                CheckLimitRequest {
                    user_id: ada.into(),
                    resource: Resource::Contacts.into(),
                    quantity: 1,
                },
                &bob,
            ))
            .await
            .map(|r| r.map(drop)),
        Code::PermissionDenied,
        "CheckLimit naming ada",
    );
    denied(
        integrations
            .get_sync_job(authed(GetSyncJobRequest { id: job.id.clone() }, &bob))
            .await
            .map(|r| r.map(drop)),
        Code::NotFound,
        "GetSyncJob of ada's job",
    );
    denied(
        integrations
            .watch_sync_job(authed(WatchSyncJobRequest { id: job.id.clone() }, &bob))
            .await
            .map(|r| r.map(drop)),
        Code::NotFound,
        "WatchSyncJob of ada's job",
    );
    denied(
        integrations
            .cancel_sync_job(authed(CancelSyncJobRequest { id: job.id.clone() }, &bob))
            .await
            .map(|r| r.map(drop)),
        Code::NotFound,
        "CancelSyncJob of ada's job",
    );
    denied(
        integrations
            .disconnect_integration(authed(
                DisconnectIntegrationRequest {
                    provider: Provider::Hubspot.into(),
                },
                &bob,
            ))
            .await
            .map(|r| r.map(drop)),
        Code::NotFound,
        "DisconnectIntegration (bob has none)",
    );
    denied(
        integrations
            .update_integration(authed(
                UpdateIntegrationRequest {
                    provider: Provider::Hubspot.into(),
                    ..Default::default()
                },
                &bob,
            ))
            .await
            .map(|r| r.map(drop)),
        Code::NotFound,
        "UpdateIntegration (bob has none)",
    );
    // Lists answer with bob's own (nothing), never ada's.
    let listed = format!(
        "{:?}{:?}{:?}{:?}",
        integrations
            .list_integrations(authed(ListIntegrationsRequest {}, &bob))
            .await
            .map(|r| r.into_inner()),
        integrations
            .list_sync_jobs(authed(ListSyncJobsRequest::default(), &bob))
            .await
            .map(|r| r.into_inner()),
        billing
            .list_invoices(authed(ListInvoicesRequest::default(), &bob))
            .await
            .map(|r| r.into_inner()),
        billing
            .get_subscription(authed(GetSubscriptionRequest {}, &bob))
            .await
            .map(|r| r.into_inner()),
    );
    assert!(
        !listed.contains(&job.id) && !listed.contains("\"ada\""),
        "{listed}"
    );
    // Bob's own ConnectIntegration cannot touch ada's row either.
    integrations
        .connect_integration(authed(
            ConnectIntegrationRequest {
                provider: Provider::Hubspot.into(),
                ..crate::integrations::connect_request(&hubspot)
            },
            &bob,
        ))
        .await
        .unwrap_or_else(|e| panic!("bob's own connect: {e}"));

    // Ada's job is still hers and still running; her integration is still there.
    let still = get_job(&mut integrations, ada, &job.id).await;
    assert_eq!(still.state(), SyncJobState::Running, "{still:?}");
    let hers = crate::integrations::list(&app, ada).await;
    assert_eq!(hers.len(), 1);
    // A service caller may act for ada: the refusals above were about bob.
    billing
        .check_limit(authed(
            CheckLimitRequest {
                user_id: ada.into(),
                resource: Resource::Contacts.into(),
                quantity: 1,
            },
            &service_token("card-service"),
        ))
        .await
        .unwrap_or_else(|e| panic!("service caller: {e}"));
    push.release();
    app.stop().await;
}

const HOSTILE_URLS: [&str; 14] = [
    "https://evil.example/billing",
    "//evil.example/billing",
    "https:evil.example",
    "https://app.nexus.test.evil.example/",
    "https://app.nexus.test@evil.example/",
    "https://evil.example@app.nexus.test/",
    "https://app.nexus.test:8443/",
    "http://app.nexus.test/",
    "javascript:alert(document.cookie)",
    "data:text/html,<script>alert(1)</script>",
    "/relative/path",
    "https://app.nexus.test\\@evil.example/",
    "https://%65vil.example/",
    " https://evil.example/",
];

/// Every URL parameter (checkout success and cancel, portal return, OAuth's redirect-after)
/// refuses every URL off the allowed origins, before any provider is called.
async fn open_redirects_are_refused_on_every_url_parameter() {
    let dropbox = FakeOAuth::start(OKind::Dropbox).await;
    let (app, stripe) = {
        let stripe = crate::fake_stripe::FakeStripe::start().await;
        let settings: Vec<(&str, String)> = stripe.settings();
        let mut overrides: Vec<(&str, &str)> =
            settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let oauth = crate::oauth::oauth_settings(&[&dropbox]);
        overrides.extend(oauth.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        (
            TestApp::spawn_with(Backend::Sqlite, &overrides).await,
            stripe,
        )
    };
    let user = token("redirect-victim");
    let good = format!("{ALLOWED_ORIGIN}/billing");
    let mut billing = app.billing().await;
    let mut integrations = app.integrations().await;
    for bad in HOSTILE_URLS {
        for (field, request) in [
            (
                "success_url",
                CreateCheckoutSessionRequest {
                    tier: Tier::Pro.into(),
                    success_url: bad.into(),
                    cancel_url: good.clone(),
                    ..Default::default()
                },
            ),
            (
                "cancel_url",
                CreateCheckoutSessionRequest {
                    tier: Tier::Pro.into(),
                    success_url: good.clone(),
                    cancel_url: bad.into(),
                    ..Default::default()
                },
            ),
        ] {
            let status = billing
                .create_checkout_session(authed(request, &user))
                .await
                .err()
                .unwrap_or_else(|| panic!("checkout accepted {field}={bad:?}"));
            assert_eq!(
                status.code(),
                Code::InvalidArgument,
                "{field}={bad:?}: {status:?}"
            );
        }
        let status = billing
            .create_portal_session(authed(
                CreatePortalSessionRequest {
                    return_url: bad.into(),
                },
                &user,
            ))
            .await
            .err()
            .unwrap_or_else(|| panic!("portal accepted {bad:?}"));
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "return_url={bad:?}: {status:?}"
        );
        let status = integrations
            .start_o_auth(authed(
                StartOAuthRequest {
                    provider: Provider::Dropbox.into(),
                    redirect_after: bad.into(),
                    ..Default::default()
                },
                &user,
            ))
            .await
            .err()
            .unwrap_or_else(|| panic!("StartOAuth accepted {bad:?}"));
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "redirect_after={bad:?}: {status:?}"
        );
    }
    assert!(
        stripe.received().is_empty(),
        "Stripe was called for a refused URL"
    );
    // The allowed origin still works: the refusals were about the URLs.
    integrations
        .start_o_auth(authed(
            StartOAuthRequest {
                provider: Provider::Dropbox.into(),
                redirect_after: good.clone(),
                ..Default::default()
            },
            &user,
        ))
        .await
        .unwrap_or_else(|e| panic!("an allowed redirect was refused: {e}"));
    app.stop().await;
}

/// gRPC messages over the 4 MiB limit, bytes that are not protobuf, broken grpc-web frames,
/// and a webhook body that is not JSON: each refused, and the service answers afterwards.
async fn oversized_and_malformed_messages_are_refused_and_the_service_keeps_serving() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let user = token("flooder");
    let big = ConnectIntegrationRequest {
        provider: Provider::Hubspot.into(),
        credentials: [("accessToken".to_string(), "x".repeat(5 * 1024 * 1024))].into(),
        settings: Default::default(),
    };
    let status = app
        .integrations()
        .await
        .connect_integration(authed(big, &user))
        .await
        .err()
        .unwrap_or_else(|| panic!("a 5 MiB message was accepted"));
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");

    // Raw HTTP/2 gRPC bodies: not protobuf, a frame claiming 4 GiB, a compressed flag with no
    // compression agreed, a truncated frame.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let path = "/nexus.billing.v1.BillingService/ListPlans";
    for (case, body) in [
        (
            "not protobuf",
            [&[0u8, 0, 0, 0, 4][..], &[0xff, 0xff, 0xff, 0xff]].concat(),
        ),
        (
            "a frame claiming 4 GiB",
            vec![0, 0xff, 0xff, 0xff, 0xff, 1, 2, 3],
        ),
        ("compressed without a codec", vec![1, 0, 0, 0, 1, 0]),
        ("truncated", vec![0, 0, 0]),
    ] {
        let response = h2
            .post(app.grpc_url(path))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("authorization", format!("Bearer {user}"))
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{case}: {e}"));
        let grpc_status = response
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let trailers_status = if grpc_status.is_none() {
            // Trailers-only answers carry the status in the headers; others in the trailers,
            // which reqwest does not expose: an error status must then not be "0" in headers.
            None
        } else {
            grpc_status.clone()
        };
        assert_ne!(trailers_status.as_deref(), Some("0"), "{case}: answered OK");
    }

    // grpc-web over HTTP/1: a body that is not a frame.
    let response = reqwest::Client::new()
        .post(app.grpc_url(path))
        .header("content-type", "application/grpc-web+proto")
        .header("authorization", format!("Bearer {user}"))
        .body(vec![0x80, 0xff, 0xff, 0xff, 0xff])
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(
        response
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok()),
        Some("0"),
        "a broken grpc-web frame was answered OK"
    );

    // A webhook that is not JSON (no provider configured: refused before reading anyway).
    let response = reqwest::Client::new()
        .post(app.http_url("/billing/webhook"))
        .body(vec![0xffu8; 1024])
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(response.status().is_client_error() || response.status().is_server_error());

    app.billing()
        .await
        .list_plans(authed(ListPlansRequest::default(), &user))
        .await
        .unwrap_or_else(|e| panic!("the service stopped serving: {e}"));
    app.stop().await;
}

/// Both ports, as wired in the server: 40 silent connections on each (over a cap of 20) do
/// not lock out a real caller, and every one of them is closed after the hello timeout. The
/// gRPC port used to keep such connections forever (`benches/attacks.rs`).
async fn silent_connections_are_closed_on_both_ports_and_callers_still_get_in() {
    use tokio::io::AsyncReadExt;
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        &[
            ("--max-connections", "20"),
            ("--connection-hello-timeout", "500ms"),
        ],
    )
    .await;
    let mut silent = Vec::new();
    for addr in [app.grpc_addr, app.http_addr] {
        for _ in 0..40 {
            silent.push(
                tokio::net::TcpStream::connect(addr)
                    .await
                    .unwrap_or_else(|e| panic!("{e}")),
            );
        }
    }
    // Real callers get in although both ports are full of silent connections.
    app.billing()
        .await
        .list_plans(authed(ListPlansRequest::default(), &token("caller")))
        .await
        .unwrap_or_else(|e| panic!("gRPC caller locked out: {e}"));
    let health = reqwest::get(app.http_url("/healthz"))
        .await
        .unwrap_or_else(|e| panic!("sidecar caller locked out: {e}"));
    assert!(health.status().is_success());
    // Every silent connection is closed by the service (end of stream or a reset).
    for (i, mut conn) in silent.into_iter().enumerate() {
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(PATIENCE, conn.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "silent connection {i} still open: {read:?}"
        );
    }
    app.stop().await;
}
