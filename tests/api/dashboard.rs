//! The dashboard as the sidecar serves it: the embedded app on every page path, hashed assets,
//! config.json, icons, a strict Content-Security-Policy, and CORS for the dashboard's own
//! origin (the browser flows themselves are in `browser/`).

use nexus_billing::grpc::proto::integrations::ListProvidersRequest;

use crate::{
    helpers::{Backend, TestApp, authed, token},
    on_both_backends,
};

on_both_backends!(
    every_dashboard_path_answers_the_app_with_a_strict_policy_and_its_files,
    only_the_dashboards_own_origin_and_the_allowed_ones_may_call_grpc_web,
);

async fn get(url: &str) -> reqwest::Response {
    reqwest::get(url)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

fn header(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

async fn every_dashboard_path_answers_the_app_with_a_strict_policy_and_its_files(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mut script = String::new();
    for path in [
        "/dashboard",
        "/dashboard/",
        "/dashboard/settings/billing",
        "/dashboard/integrations",
    ] {
        let response = get(&app.http_url(path)).await;
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(
            header(&response, "content-type"),
            "text/html; charset=utf-8"
        );
        assert_eq!(header(&response, "x-frame-options"), "DENY");
        let csp = header(&response, "content-security-policy");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(csp.contains("script-src 'self';"), "{csp}");
        assert!(
            csp.contains(&format!("http://127.0.0.1:{}", app.grpc_addr.port())),
            "connect-src names the grpc-web endpoint: {csp}"
        );
        let html = response.text().await.unwrap_or_default();
        script = html
            .split("src=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_else(|| panic!("no script in {html}"))
            .to_string();
    }
    assert!(script.starts_with("/dashboard/assets/"), "{script}");
    let js = get(&app.http_url(&script)).await;
    assert_eq!(js.status(), 200);
    assert_eq!(
        header(&js, "content-type"),
        "text/javascript; charset=utf-8"
    );
    assert!(header(&js, "cache-control").contains("immutable"));
    assert_eq!(
        get(&app.http_url("/dashboard/assets/missing.js"))
            .await
            .status(),
        404
    );

    let config: serde_json::Value = get(&app.http_url("/dashboard/config.json"))
        .await
        .json()
        .await
        .unwrap_or_else(|e| panic!("config.json: {e}"));
    assert_eq!(config["grpcPort"], app.grpc_addr.port());

    // Every icon the catalogue names is served.
    let providers = app
        .integrations()
        .await
        .list_providers(authed(ListProvidersRequest {}, &token("ada")))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner()
        .providers;
    assert_eq!(providers.len(), 8);
    for provider in providers {
        let icon = get(&app.http_url(&provider.icon_url)).await;
        assert_eq!(icon.status(), 200, "{}", provider.icon_url);
        assert_eq!(header(&icon, "content-type"), "image/svg+xml");
    }

    let post = reqwest::Client::new()
        .post(app.http_url("/dashboard/"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(post.status(), 405);
    app.stop().await;
}

async fn preflight(app: &TestApp, origin: &str) -> Option<String> {
    let response = reqwest::Client::new()
        .request(
            reqwest::Method::OPTIONS,
            app.grpc_url("/nexus.billing.v1.BillingService/ListPlans"),
        )
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type,x-grpc-web",
        )
        .send()
        .await
        .unwrap_or_else(|e| panic!("preflight: {e}"));
    response
        .headers()
        .get("access-control-allow-origin")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

async fn only_the_dashboards_own_origin_and_the_allowed_ones_may_call_grpc_web(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let own = format!("http://127.0.0.1:{}", app.http_addr.port());
    for origin in [
        own.as_str(),
        &format!("http://localhost:{}", app.http_addr.port()),
        crate::helpers::ALLOWED_ORIGIN,
    ] {
        assert_eq!(preflight(&app, origin).await.as_deref(), Some(origin));
    }
    for origin in [
        "https://evil.example",
        "http://127.0.0.1:1",
        &format!("http://127.0.0.1.evil.example:{}", app.http_addr.port()),
    ] {
        assert_eq!(preflight(&app, origin).await, None, "{origin}");
    }
    app.stop().await;
}
