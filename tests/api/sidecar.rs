//! The HTTP sidecar: health, readiness, metrics and the raw-body webhook route.

use nexus_billing::grpc::proto::billing::GetUsageRequest;

use crate::helpers::{Backend, TestApp, authed, token};

crate::tests!(
    backends: [
        healthz_and_readyz_answer_ok,
        metrics_count_grpc_requests_in_prometheus_text,
        the_webhook_route_caps_the_body_and_refuses_unsigned_deliveries,
        the_webhook_route_says_when_payments_are_not_configured,
        unknown_routes_and_wrong_methods_are_refused,
        request_ids_are_echoed_or_generated,
    ],
    postgres: [readyz_fails_when_postgres_goes_away],
);

async fn healthz_and_readyz_answer_ok(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for (path, body) in [("/healthz", "ok"), ("/readyz", "ready")] {
        let response = reqwest::get(app.http_url(path))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(response.text().await.unwrap_or_default(), body);
    }
    app.stop().await;
}

async fn metrics_count_grpc_requests_in_prometheus_text(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.billing()
        .await
        .get_usage(authed(GetUsageRequest {}, &token("u1")))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let response = reqwest::get(app.metrics_url())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status(), 200);
    assert!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("text/plain"))
    );
    let text = response.text().await.unwrap_or_default();
    // The recorder is process-wide (tests share it), so look for the series, not an exact count.
    assert!(
        text.lines().any(|l| l.starts_with("grpc_requests_total{")
            && l.contains(r#"method="/nexus.billing.v1.BillingService/GetUsage""#)
            && l.contains(r#"code="0""#)),
        "no GetUsage series in:\n{text}"
    );
    assert!(text.contains("# TYPE grpc_requests_total counter"));
    // Issue 26, item 8: the public sidecar (webhooks, OAuth, the dashboard) does not serve them.
    let public = reqwest::get(app.http_url("/metrics"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(public.status(), 200, "/metrics on the public listener");
    assert!(!public.text().await.unwrap_or_default().contains("grpc_requests_total"));
    app.stop().await;
}

async fn the_webhook_route_caps_the_body_and_refuses_unsigned_deliveries(backend: Backend) {
    let app = TestApp::spawn_with(
        backend,
        &[
            ("--stripe-secret-key", "sk_test_123"),
            ("--stripe-webhook-secret", "whsec_test"),
            ("--stripe-price-id-pro", "price_pro"),
            ("--stripe-price-id-premium", "price_premium"),
            ("--webhook-max-body-bytes", "2048"),
        ],
    )
    .await;
    let client = reqwest::Client::new();
    let too_big = client
        .post(app.http_url("/billing/webhook"))
        .body(vec![b'x'; 4096])
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(too_big.status(), 413);

    // A chunked body (no Content-Length) over the cap is refused too.
    let chunks: Vec<Result<hyper::body::Frame<bytes::Bytes>, std::io::Error>> = (0..8)
        .map(|_| {
            Ok(hyper::body::Frame::data(bytes::Bytes::from(vec![
                b'y';
                512
            ])))
        })
        .collect();
    let streamed = client
        .post(app.http_url("/billing/webhook"))
        .body(reqwest::Body::wrap(http_body_util::StreamBody::new(
            tokio_stream::iter(chunks),
        )))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(streamed.status(), 413);

    // A fresh connection: the server closes the one it refused with 413 (its body unread), and
    // a pooled client could reuse it before seeing that.
    let fits = reqwest::Client::new()
        .post(app.http_url("/billing/webhook"))
        .header("stripe-signature", "t=1,v1=00")
        .body(r#"{"id":"evt_1","type":"invoice.paid"}"#)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // It fits, so it reaches the verifier, which refuses the bad signature.
    assert_eq!(fits.status(), 400);
    app.stop().await;
}

async fn the_webhook_route_says_when_payments_are_not_configured(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let response = reqwest::Client::new()
        .post(app.http_url("/billing/webhook"))
        .body("{}")
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status(), 503);
    assert_eq!(
        response.text().await.unwrap_or_default(),
        "payments are not configured"
    );
    app.stop().await;
}

async fn unknown_routes_and_wrong_methods_are_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let client = reqwest::Client::new();
    let missing = client
        .get(app.http_url("/nope"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(missing.status(), 404);
    let wrong = client
        .get(app.http_url("/billing/webhook"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(wrong.status(), 405);
    assert_eq!(
        wrong.headers().get("allow").and_then(|v| v.to_str().ok()),
        Some("POST")
    );
    app.stop().await;
}

async fn request_ids_are_echoed_or_generated(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let client = reqwest::Client::new();
    let echoed = client
        .get(app.http_url("/healthz"))
        .header("x-request-id", "req-123")
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        echoed
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("req-123")
    );
    let generated = client
        .get(app.http_url("/healthz"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let id = generated
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert_eq!(id.len(), 36, "a generated request id: {id:?}");
    app.stop().await;
}

/// PostgreSQL only: readiness follows the database. (A SQLite file cannot be taken away from an
/// open pool the same way.)
async fn readyz_fails_when_postgres_goes_away() {
    let app = TestApp::spawn(Backend::Postgres).await;
    let ready = reqwest::get(app.http_url("/readyz"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ready.status(), 200);
    app.db.drop_database().await;
    let gone = reqwest::get(app.http_url("/readyz"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(gone.status(), 503);
    app.stop().await;
}
