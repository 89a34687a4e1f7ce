//! The browser's side of an OAuth flow: the start route binds the flow to the signed-in user's
//! browser with a cookie and says where to send it; the callback finishes the flow only with
//! that cookie.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, header, header::HeaderValue};

use super::{SidecarState, text};
use crate::integrations::{
    FlowCaller, ProviderAnswer,
    oauth_flow::{BrowserBinding, cookie_name},
};

/// Where OAuth providers send the browser back (OAUTH_REDIRECT_URL points here).
pub const OAUTH_CALLBACK: &str = "/integrations/oauth/callback";
/// Where StartOAuth sends the browser first (beside the callback).
pub const OAUTH_START: &str = "/integrations/oauth/start";
/// The flow cookie is sent only to these routes.
const COOKIE_PATH: &str = "/integrations/oauth";
/// The flow cookie lasts as long as a flow may take.
const COOKIE_MAX_AGE_SECS: u64 = crate::integrations::OAUTH_STATE_TTL.as_secs();

/// `POST /integrations/oauth/start?state=..` with `Authorization: Bearer <token>`: the dashboard
/// (same origin) starting the flow StartOAuth gave it. The flow is bound, once, to the user who
/// started it: the token's user must be the flow's. The answer sets an HttpOnly, SameSite=Lax
/// cookie (Secure behind https) for the callback and says where to send the browser
/// (`{"authorizationUrl": ..}`); the dashboard then navigates there.
///
/// Opening the start URL as a page (`GET`: a link in an email, another site's page, a web view)
/// binds nothing, whatever Fetch Metadata it sends or lacks: otherwise an attacker's own start
/// link opened by a victim would bind the victim's browser, and the victim's CRM would connect to
/// the attacker's account. A cross-site `POST` cannot carry the token without CORS, which this
/// route does not answer; `Sec-Fetch-Site: cross-site` is refused all the same.
pub(super) async fn start(
    state: &SidecarState,
    request: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    let flow_state = query_value(request, "state").unwrap_or_default();
    let fetch_site = request
        .headers()
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let caller = state.verifier.verify_header(
        request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
    );
    let mut response = match caller {
        _ if matches!(fetch_site, "cross-site" | "same-site") => {
            metrics::counter!("oauth_starts_total", "outcome" => "foreign").increment(1);
            text(StatusCode::FORBIDDEN, NOT_FROM_HERE)
        }
        Err(_) => {
            metrics::counter!("oauth_starts_total", "outcome" => "unauthenticated").increment(1);
            text(
                StatusCode::UNAUTHORIZED,
                "sign in to Nexus Cards and start connecting the integration from the dashboard",
            )
        }
        Ok(caller) => {
            match state
                .integrations
                .begin_in_browser(&caller.user_id, &flow_state)
                .await
            {
                Ok(binding) => {
                    metrics::counter!("oauth_starts_total", "outcome" => "started").increment(1);
                    bound(state, &binding)
                }
                Err(e) => {
                    metrics::counter!("oauth_starts_total", "outcome" => e.code()).increment(1);
                    let status = match e {
                        crate::integrations::IntegrationError::Store(_) => {
                            StatusCode::SERVICE_UNAVAILABLE
                        }
                        crate::integrations::IntegrationError::PermissionDenied(_) => {
                            StatusCode::FORBIDDEN
                        }
                        _ => StatusCode::BAD_REQUEST,
                    };
                    text(status, &e.to_string())
                }
            }
        }
    };
    private(&mut response);
    response
}

/// `GET` of the start URL: a page opened from a link binds nothing (see [`start`]).
pub(super) fn start_opened_as_a_page() -> Response<Full<Bytes>> {
    metrics::counter!("oauth_starts_total", "outcome" => "foreign").increment(1);
    let mut response = text(StatusCode::BAD_REQUEST, NOT_FROM_HERE);
    private(&mut response);
    response
}

const NOT_FROM_HERE: &str = "This sign-in link only works when started from the Nexus Cards \
     dashboard. Start connecting the integration again from the dashboard.";

/// The answer to a bound start: the flow's cookie, and where the dashboard sends the browser.
fn bound(state: &SidecarState, binding: &BrowserBinding) -> Response<Full<Bytes>> {
    let cookie = format!(
        "{}={}; Path={COOKIE_PATH}; Max-Age={COOKIE_MAX_AGE_SECS}; HttpOnly; SameSite=Lax{}",
        binding.cookie_name,
        binding.cookie_value,
        if state.secure_cookies { "; Secure" } else { "" }
    );
    let body = serde_json::json!({ "authorizationUrl": binding.authorize_url }).to_string();
    match HeaderValue::from_str(&cookie) {
        Ok(cookie) => {
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response.headers_mut().insert(header::SET_COOKIE, cookie);
            response
        }
        Err(_) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot start the sign-in",
        ),
    }
}

/// `GET /integrations/oauth/callback?code=..&state=..` (or `?error=access_denied&state=..`;
/// Zoho adds `accounts-server` and `location`): finishes the flow the state names, only for
/// the browser holding its cookie, then sends the browser to its `redirect_after` with the
/// outcome. A state that is unknown, used, malformed or not this browser's gets a plain 400
/// page and nothing is stored: there is no trusted place to send the browser.
pub(super) async fn callback(
    state: &SidecarState,
    request: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    let CallbackQuery {
        code,
        state: flow_state,
        error: denied,
        accounts_server,
    } = CallbackQuery::parse(request.uri().query());
    let flow_state = flow_state.unwrap_or_default();
    let cookie = cookie_value(request, &cookie_name(&flow_state));
    let outcome = state
        .integrations
        .complete_oauth(
            FlowCaller::Browser(cookie.as_deref()),
            ProviderAnswer {
                provider: None,
                state: &flow_state,
                code: code.as_deref(),
                denied: denied.as_deref(),
                accounts_server: accounts_server.as_deref(),
            },
        )
        .await;
    let label = match &outcome.result {
        Ok(_) => "connected",
        Err(_) if cookie.is_none() => "no_cookie",
        Err(e) => e.code(),
    };
    metrics::counter!("oauth_callbacks_total", "outcome" => label).increment(1);
    let mut response = match outcome.redirect_url() {
        Some(location) => {
            let mut response = Response::new(Full::new(Bytes::new()));
            *response.status_mut() = StatusCode::SEE_OTHER;
            match HeaderValue::from_str(&location) {
                Ok(location) => {
                    response.headers_mut().insert(header::LOCATION, location);
                    // The flow is over: the browser forgets its cookie.
                    if let Ok(expired) = HeaderValue::from_str(&format!(
                        "{}=; Path={COOKIE_PATH}; Max-Age=0; HttpOnly; SameSite=Lax",
                        cookie_name(&flow_state)
                    )) {
                        response.headers_mut().insert(header::SET_COOKIE, expired);
                    }
                    response
                }
                Err(_) => text(StatusCode::BAD_REQUEST, "cannot return to the application"),
            }
        }
        None if cookie.is_none() => text(
            StatusCode::BAD_REQUEST,
            "This sign-in can only be finished in the browser that started it. \
             Start connecting the integration again from Nexus Cards.",
        ),
        None => text(
            StatusCode::BAD_REQUEST,
            "This sign-in link was already used, has expired or is not valid. \
             Start connecting the integration again from Nexus Cards.",
        ),
    };
    private(&mut response);
    response
}

/// What a provider's redirect carries back in the callback's query string.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CallbackQuery {
    pub code: Option<String>,
    pub state: Option<String>,
    /// `error=access_denied` when the user said no.
    pub error: Option<String>,
    /// Zoho's `accounts-server` (checked against the configured list before any use).
    pub accounts_server: Option<String>,
}

impl CallbackQuery {
    /// Reads the query; the last value of a repeated key wins, unknown keys are ignored.
    pub fn parse(query: Option<&str>) -> Self {
        let mut parsed = Self::default();
        for (key, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            let slot = match key.as_ref() {
                "code" => &mut parsed.code,
                "state" => &mut parsed.state,
                "error" => &mut parsed.error,
                "accounts-server" => &mut parsed.accounts_server,
                _ => continue,
            };
            *slot = Some(value.into_owned());
        }
        parsed
    }
}

/// The URL carried a one-time code or state: keep it out of caches and Referer headers.
fn private(response: &mut Response<Full<Bytes>>) {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

fn query_value(request: &Request<Incoming>, name: &str) -> Option<String> {
    query_param(request.uri().query(), name)
}

/// The first value of `name` in a URL query string (form-urlencoded, as browsers send it).
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

/// The value of the cookie `name` in the request's Cookie headers.
fn cookie_value(request: &Request<Incoming>, name: &str) -> Option<String> {
    request
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim().to_string())
        .filter(|value| !value.is_empty() && value.len() <= 128)
}
