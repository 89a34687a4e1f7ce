//! grpc-web over HTTP/1.1, and CORS limited to ALLOWED_ORIGINS.

use nexus_billing::grpc::proto::billing::{ListPlansRequest, ListPlansResponse, Tier};
use prost::Message;

use crate::helpers::{ALLOWED_ORIGIN, Backend, TestApp, token};

crate::on_both_backends!(
    a_grpc_web_call_over_http1_from_an_allowed_origin_works,
    a_grpc_web_call_without_a_token_is_unauthenticated,
    cors_preflight_is_answered_for_an_allowed_origin_only,
);

const LIST_PLANS: &str = "/nexus.billing.v1.BillingService/ListPlans";

fn http1() -> reqwest::Client {
    reqwest::Client::builder()
        .http1_only()
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A grpc-web data frame: flag 0, big-endian length, message.
fn frame(message: &impl Message) -> Vec<u8> {
    let body = message.encode_to_vec();
    let mut out = vec![0u8];
    out.extend_from_slice(&u32::try_from(body.len()).unwrap_or(0).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Splits a grpc-web response body into its data frame payload and its trailers text.
fn unframe(mut body: &[u8]) -> (Vec<u8>, String) {
    let (mut data, mut trailers) = (Vec::new(), String::new());
    while body.len() >= 5 {
        let flag = body[0];
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        let payload = &body[5..5 + len];
        if flag & 0x80 == 0 {
            data.extend_from_slice(payload);
        } else {
            trailers.push_str(&String::from_utf8_lossy(payload));
        }
        body = &body[5 + len..];
    }
    (data, trailers)
}

/// ListPlans as a browser sends it over grpc-web, with or without a bearer token.
async fn list_plans_from_browser(app: &TestApp, bearer: Option<&str>) -> reqwest::Response {
    let mut request = http1()
        .post(app.grpc_url(LIST_PLANS))
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .header("origin", ALLOWED_ORIGIN);
    if let Some(bearer) = bearer {
        request = request.header("authorization", format!("Bearer {bearer}"));
    }
    request
        .body(frame(&ListPlansRequest::default()))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn a_grpc_web_call_over_http1_from_an_allowed_origin_works(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let response = list_plans_from_browser(&app, Some(&token("browser-user"))).await;
    assert_eq!(response.version(), reqwest::Version::HTTP_11);
    assert_eq!(response.status(), 200);
    assert_eq!(
        response
            .headers()
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok()),
        Some(ALLOWED_ORIGIN)
    );
    assert!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/grpc-web")),
        "content-type: {:?}",
        response.headers().get("content-type")
    );
    let body = response.bytes().await.unwrap_or_default();
    let (data, trailers) = unframe(&body);
    assert!(trailers.contains("grpc-status:0"), "trailers: {trailers:?}");
    let plans = ListPlansResponse::decode(data.as_slice()).unwrap_or_else(|e| panic!("{e}"));
    let tiers: Vec<Tier> = plans.plans.iter().map(|p| p.tier()).collect();
    assert_eq!(tiers, vec![Tier::Free, Tier::Pro, Tier::Premium]);
    app.stop().await;
}

async fn a_grpc_web_call_without_a_token_is_unauthenticated(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let response = list_plans_from_browser(&app, None).await;
    let status = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    assert_eq!(status.as_deref(), Some("16"), "UNAUTHENTICATED expected");
    app.stop().await;
}

async fn preflight(app: &TestApp, origin: &str) -> reqwest::Response {
    http1()
        .request(reqwest::Method::OPTIONS, app.grpc_url(LIST_PLANS))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type,x-grpc-web,x-user-agent",
        )
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn cors_preflight_is_answered_for_an_allowed_origin_only(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let allowed = preflight(&app, ALLOWED_ORIGIN).await;
    assert!(allowed.status().is_success(), "{}", allowed.status());
    let header = |r: &reqwest::Response, name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_lowercase)
    };
    assert_eq!(
        header(&allowed, "access-control-allow-origin").as_deref(),
        Some(ALLOWED_ORIGIN)
    );
    let allow_headers = header(&allowed, "access-control-allow-headers").unwrap_or_default();
    for needed in ["authorization", "content-type", "x-grpc-web"] {
        assert!(
            allow_headers.contains(needed),
            "{needed} missing from {allow_headers}"
        );
    }

    let refused = preflight(&app, "https://evil.example").await;
    assert_eq!(header(&refused, "access-control-allow-origin"), None);
    app.stop().await;
}
