//! The browser's part of an OAuth flow, played by the tests: StartOAuth's start URL opened on
//! the sidecar (which sets the flow's cookie and redirects to the provider), and the callback
//! sent with that cookie, as the browser that started the flow would. Tests of the binding
//! itself (a callback without the cookie, a start link opened from elsewhere) and of Zoho's
//! data centres live here too.

use std::{
    collections::HashMap,
    sync::{LazyLock, Mutex},
};

use nexus_billing::grpc::proto::integrations::StartOAuthRequest;

use crate::{
    fake_oauth::{FakeOAuth, OKind},
    helpers::{ALLOWED_ORIGIN, Backend, TestApp, authed, token},
    oauth::{REDIRECT_URI, integration, provider, spawn_with_oauth},
};

crate::on_both_backends!(
    a_callback_from_a_browser_without_the_flow_cookie_connects_nothing,
    a_start_binds_only_the_signed_in_user_who_started_it_once,
    a_zoho_account_in_another_data_centre_connects_through_its_accounts_server,
);

/// The cookie each started flow's browser holds, by state (states are unique per test run).
static COOKIES: LazyLock<Mutex<HashMap<String, String>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn redirect_after() -> String {
    format!("{ALLOWED_ORIGIN}/settings/integrations?tab=crm")
}

/// StartOAuth for `user`: the service's start URL.
pub async fn start_url(
    app: &TestApp,
    user: &str,
    kind: OKind,
    settings: &[(&str, &str)],
) -> String {
    app.integrations()
        .await
        .start_o_auth(authed(
            StartOAuthRequest {
                provider: provider(kind).into(),
                redirect_after: redirect_after(),
                settings: settings
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            },
            &token(user),
        ))
        .await
        .unwrap_or_else(|e| panic!("StartOAuth {kind:?}: {e}"))
        .into_inner()
        .authorization_url
}

/// What the browser gets from the sidecar: status, Location, Set-Cookie, body.
pub struct Landing {
    pub status: u16,
    pub location: Option<String>,
    pub cache_control: Option<String>,
    pub set_cookie: Option<String>,
    pub body: String,
}

async fn get(app: &TestApp, url: &str, headers: &[(&str, &str)]) -> Landing {
    send(app, reqwest::Method::GET, url, headers).await
}

async fn send(
    app: &TestApp,
    method: reqwest::Method,
    url: &str,
    headers: &[(&str, &str)],
) -> Landing {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let parsed = url::Url::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
    // The start URL names the public host; the test server listens on a random port.
    let path = match parsed.query() {
        Some(q) => format!("{}?{q}", parsed.path()),
        None => parsed.path().to_string(),
    };
    let mut request = client.request(method.clone(), app.http_url(&path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    Landing {
        status: response.status().as_u16(),
        location: header("location"),
        cache_control: header("cache-control"),
        set_cookie: header("set-cookie"),
        body: response.text().await.unwrap_or_default(),
    }
}

/// A browser opening a start URL as a page (a link, a navigation): always refused now.
pub async fn open_start(app: &TestApp, start: &str, headers: &[(&str, &str)]) -> Landing {
    assert!(
        start.starts_with("https://billing.nexus.test/integrations/oauth/start?state="),
        "{start}"
    );
    get(app, start, headers).await
}

/// The dashboard starting the flow: a same-origin `POST` of the start URL with the signed-in
/// user's bearer token (`None`: without one).
pub async fn post_start(app: &TestApp, start: &str, bearer: Option<&str>) -> Landing {
    let auth = bearer.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("sec-fetch-site", "same-origin")];
    if let Some(auth) = &auth {
        headers.push(("authorization", auth));
    }
    send(app, reqwest::Method::POST, start, &headers).await
}

fn authorization_url(landing: &Landing) -> Option<String> {
    let json: serde_json::Value = serde_json::from_str(&landing.body).ok()?;
    json["authorizationUrl"].as_str().map(str::to_string)
}

/// StartOAuth for `user`, then the start URL opened by the user's browser: the provider's
/// authorization URL. The browser keeps the flow's cookie for the callback.
pub async fn start_oauth(
    app: &TestApp,
    user: &str,
    kind: OKind,
    settings: &[(&str, &str)],
) -> String {
    let start = start_url(app, user, kind, settings).await;
    let landing = post_start(app, &start, Some(&token(user))).await;
    assert_eq!(landing.status, 200, "{}", landing.body);
    assert_eq!(landing.cache_control.as_deref(), Some("no-store"));
    let cookie = landing.set_cookie.clone().unwrap_or_default();
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Lax"), "{cookie}");
    assert!(cookie.contains("Path=/integrations/oauth"), "{cookie}");
    assert!(cookie.contains("Secure"), "https callback URL: {cookie}");
    let pair = cookie.split(';').next().unwrap_or_default().to_string();
    let state = state_of(&start);
    COOKIES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(state, pair);
    authorization_url(&landing).unwrap_or_default()
}

fn state_of(url: &str) -> String {
    url::Url::parse(url)
        .ok()
        .and_then(|u| {
            u.query_pairs()
                .find(|(k, _)| k == "state")
                .map(|(_, v)| v.into_owned())
        })
        .unwrap_or_default()
}

/// The browser that started the flow arriving at the callback with `query` (with the flow's
/// cookie when the state is one this test's browser started).
pub async fn callback(app: &TestApp, query: &[(&str, &str)]) -> Landing {
    let state = query
        .iter()
        .find(|(k, _)| *k == "state")
        .map(|(_, v)| v.to_string())
        .unwrap_or_default();
    let cookie = COOKIES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&state)
        .cloned();
    callback_with(app, query, cookie.as_deref()).await
}

/// Another browser (or one that lost the cookie) arriving at the callback.
pub async fn callback_with(app: &TestApp, query: &[(&str, &str)], cookie: Option<&str>) -> Landing {
    let query = serde_urlencoded::to_string(query).unwrap_or_default();
    let url = format!("https://billing.nexus.test/integrations/oauth/callback?{query}");
    match cookie {
        Some(cookie) => get(app, &url, &[("cookie", cookie)]).await,
        None => get(app, &url, &[]).await,
    }
}

/// The attack the binding stops: the attacker starts a flow for their own account and opens
/// the start link themselves (their browser holds the cookie), then sends the provider's
/// authorization link to a victim. The victim consents; their browser arrives at the callback
/// without the cookie: refused, nothing connected, and the flow stays usable by its owner's
/// browser only.
async fn a_callback_from_a_browser_without_the_flow_cookie_connects_nothing(backend: Backend) {
    let fake = FakeOAuth::start(OKind::Salesforce).await;
    let app = spawn_with_oauth(backend, &[&fake], &[]).await;
    let provider_url = start_oauth(&app, "attacker", OKind::Salesforce, &[]).await;
    let (code, state) = fake.authorize(&provider_url, REDIRECT_URI);

    let victim = callback_with(&app, &[("code", &code), ("state", &state)], None).await;
    assert_eq!(victim.status, 400, "{}", victim.body);
    assert!(
        victim.body.contains("browser that started it"),
        "{}",
        victim.body
    );
    assert_eq!(victim.location, None);
    assert_eq!(victim.cache_control.as_deref(), Some("no-store"));
    // A made-up cookie is no better.
    let forged = callback_with(
        &app,
        &[("code", &code), ("state", &state)],
        Some(&format!("{}=forged", cookie_name_for(&state))),
    )
    .await;
    assert_eq!(forged.status, 400, "{}", forged.body);
    assert_eq!(app.count("integrations", "").await, 0, "nothing connected");
    assert!(
        fake.token_requests().is_empty(),
        "the code was never exchanged"
    );
    // The owner's browser can still finish its own flow.
    let owner = callback(&app, &[("code", &code), ("state", &state)]).await;
    assert_eq!(owner.status, 303, "{}", owner.body);
    assert!(
        integration(&app, "attacker", OKind::Salesforce)
            .await
            .is_some()
    );
    assert_eq!(integration(&app, "victim", OKind::Salesforce).await, None);
    app.stop().await;
}

fn cookie_name_for(state: &str) -> String {
    nexus_billing::integrations::oauth_flow::cookie_name(state)
}

/// Issue 26, item 7: a start link bound whichever browser opened it first, so an attacker's own
/// start link sent to a victim (opened from a web view without Fetch Metadata, or from a page on
/// a sibling subdomain, `same-site`) connected the victim's CRM to the attacker's account. A
/// start is now a `POST` with the bearer token of the user who started the flow, once; opening
/// the link as a page binds nothing, whatever the browser says of where it came from.
async fn a_start_binds_only_the_signed_in_user_who_started_it_once(backend: Backend) {
    let fake = FakeOAuth::start(OKind::GoogleDrive).await;
    let app = spawn_with_oauth(backend, &[&fake], &[]).await;
    let start = start_url(&app, "attacker", OKind::GoogleDrive, &[]).await;
    for site in ["cross-site", "none", "", "same-site", "same-origin"] {
        let headers: &[(&str, &str)] = if site.is_empty() {
            &[]
        } else {
            &[("sec-fetch-site", site)]
        };
        let landing = open_start(&app, &start, headers).await;
        assert!(landing.status >= 400, "{site}: {} {}", landing.status, landing.body);
        assert_eq!(landing.set_cookie, None, "{site}");
        assert_eq!(landing.location, None, "{site}");
    }
    // The victim's dashboard (their token) or no token at all binds nothing.
    let victim = post_start(&app, &start, Some(&token("victim"))).await;
    assert_eq!(victim.status, 403, "{}", victim.body);
    assert_eq!(victim.set_cookie, None);
    let anonymous = post_start(&app, &start, None).await;
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);
    assert_eq!(anonymous.set_cookie, None);
    // The user who started it binds it, once.
    let first = post_start(&app, &start, Some(&token("attacker"))).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert!(first.set_cookie.is_some());
    assert_eq!(first.cache_control.as_deref(), Some("no-store"));
    assert!(
        authorization_url(&first).is_some_and(|l| l.starts_with(&fake.server_uri())),
        "{}",
        first.body
    );
    let second = post_start(&app, &start, Some(&token("attacker"))).await;
    assert_eq!(second.status, 400, "a start binds one browser: {}", second.body);
    assert_eq!(second.set_cookie, None);
    let made_up = post_start(
        &app,
        "https://billing.nexus.test/integrations/oauth/start?state=0123456789abcdef",
        Some(&token("attacker")),
    )
    .await;
    assert_eq!(made_up.status, 400);
    app.stop().await;
}

/// Zoho keeps each account in one data centre: the callback names its accounts server, where
/// the code must be exchanged (and tokens refreshed). An allow-listed server is used and kept;
/// one not on the list is refused and nothing is connected.
async fn a_zoho_account_in_another_data_centre_connects_through_its_accounts_server(
    backend: Backend,
) {
    // Two fake accounts servers: the configured one (the US) and the account's own (the EU).
    let us = FakeOAuth::start(OKind::Zoho).await;
    let eu = FakeOAuth::start(OKind::Zoho).await;
    let allowed = format!("{},{}", us.server_uri(), eu.server_uri());
    let app = spawn_with_oauth(backend, &[&us], &[("--zoho-accounts-servers", &allowed)]).await;

    let provider_url = start_oauth(&app, "ada", OKind::Zoho, &[]).await;
    let (_, state) = us.authorize(&provider_url, REDIRECT_URI);
    // The EU accounts server issues the code for this account.
    let eu_url = provider_url.replace(&us.server_uri(), &eu.server_uri());
    let (code, _) = eu.authorize(&eu_url, REDIRECT_URI);
    let landing = callback(
        &app,
        &[
            ("code", &code),
            ("state", &state),
            ("location", "eu"),
            ("accounts-server", &eu.server_uri()),
        ],
    )
    .await;
    assert_eq!(landing.status, 303, "{}", landing.body);
    assert!(
        landing
            .location
            .as_deref()
            .is_some_and(|l| l.contains("status=connected")),
        "{:?}",
        landing.location
    );
    assert_eq!(eu.token_requests().len(), 1, "exchanged at the EU server");
    assert!(
        us.token_requests().is_empty(),
        "never at the configured one"
    );
    let stored = crate::oauth::stored_credentials(&app).await;
    assert_eq!(stored.get("accountsServer"), Some(eu.server_uri().as_str()));

    // A host off the list: refused before any exchange, nothing stored.
    let provider_url = start_oauth(&app, "bob", OKind::Zoho, &[]).await;
    let (code, state) = us.authorize(&provider_url, REDIRECT_URI);
    let landing = callback(
        &app,
        &[
            ("code", &code),
            ("state", &state),
            ("accounts-server", "https://accounts.zoho.evil.example"),
        ],
    )
    .await;
    assert_eq!(landing.status, 303, "{}", landing.body);
    assert!(
        landing
            .location
            .as_deref()
            .is_some_and(|l| l.contains("status=error&error=invalid_request")),
        "{:?}",
        landing.location
    );
    assert_eq!(integration(&app, "bob", OKind::Zoho).await, None);
    assert!(us.token_requests().is_empty());
    app.stop().await;
}
