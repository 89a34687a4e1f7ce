//! The browser's side of an OAuth flow: the start route binds the flow to the browser with a
//! cookie and sends it to the provider; the callback finishes the flow only with that cookie.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, header, header::HeaderValue};

use super::{SidecarState, text};
use crate::integrations::{FlowCaller, ProviderAnswer, oauth_flow::cookie_name};

/// Where OAuth providers send the browser back (OAUTH_REDIRECT_URL points here).
pub const OAUTH_CALLBACK: &str = "/integrations/oauth/callback";
/// Where StartOAuth sends the browser first (beside the callback).
pub const OAUTH_START: &str = "/integrations/oauth/start";
/// The flow cookie is sent only to these routes.
const COOKIE_PATH: &str = "/integrations/oauth";
/// The flow cookie lasts as long as a flow may take.
const COOKIE_MAX_AGE_SECS: u64 = crate::integrations::OAUTH_STATE_TTL.as_secs();

/// `GET /integrations/oauth/start?state=..`: binds the flow to this browser (once) with an
/// HttpOnly, SameSite=Lax cookie (Secure behind https), then 303 to the provider. Only a
/// navigation from the product's own pages is taken (`Sec-Fetch-Site: same-origin` or
/// `same-site`: the dashboard, which got the link from StartOAuth with the signed-in user's
/// token). Anything else is refused: another site's page (`cross-site`), a link opened from an
/// email (`none`), and a browser that sends no Fetch Metadata at all (older browsers, web
/// views), since it cannot say where it came from. So an attacker's own start link sent to a
/// victim cannot connect the victim's account to the attacker's.
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
    let mut response = if !matches!(fetch_site, "same-origin" | "same-site") {
        metrics::counter!("oauth_starts_total", "outcome" => "foreign").increment(1);
        text(
            StatusCode::BAD_REQUEST,
            "This sign-in link only works when opened from Nexus Cards. \
             Start connecting the integration again from the dashboard.",
        )
    } else {
        match state.integrations.begin_in_browser(&flow_state).await {
            Ok(binding) => {
                metrics::counter!("oauth_starts_total", "outcome" => "started").increment(1);
                let cookie = format!(
                    "{}={}; Path={COOKIE_PATH}; Max-Age={COOKIE_MAX_AGE_SECS}; HttpOnly; SameSite=Lax{}",
                    binding.cookie_name,
                    binding.cookie_value,
                    if state.secure_cookies { "; Secure" } else { "" }
                );
                match (
                    HeaderValue::from_str(&binding.authorize_url),
                    HeaderValue::from_str(&cookie),
                ) {
                    (Ok(location), Ok(cookie)) => {
                        let mut response = Response::new(Full::new(Bytes::new()));
                        *response.status_mut() = StatusCode::SEE_OTHER;
                        response.headers_mut().insert(header::LOCATION, location);
                        response.headers_mut().insert(header::SET_COOKIE, cookie);
                        response
                    }
                    _ => text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "cannot start the sign-in",
                    ),
                }
            }
            Err(e) => {
                metrics::counter!("oauth_starts_total", "outcome" => e.code()).increment(1);
                let status = match e {
                    crate::integrations::IntegrationError::Store(_) => {
                        StatusCode::SERVICE_UNAVAILABLE
                    }
                    _ => StatusCode::BAD_REQUEST,
                };
                text(status, &e.to_string())
            }
        }
    };
    private(&mut response);
    response
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
