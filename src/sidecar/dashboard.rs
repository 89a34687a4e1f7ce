//! The dashboard (web/, built into web/dist and embedded at compile time by build.rs):
//! `/dashboard/...` answers the single-page app, `/dashboard/assets/*` its hashed files,
//! `/dashboard/config.json` where the page finds the grpc-web endpoint, `/icons/*` the
//! provider icons the catalogue names.

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use serde::Serialize;

use super::text;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/dashboard_assets.rs"));
}

/// Where the dashboard is served.
pub const DASHBOARD_PATH: &str = "/dashboard/";

/// What the sidecar tells the page about the service.
#[derive(Debug, Clone)]
pub struct DashboardSettings {
    /// DASHBOARD_GRPC_URL; unset: the page's own host on `grpc_port`.
    pub grpc_web_url: Option<String>,
    pub grpc_port: u16,
    pub development: bool,
    /// Payments go to the development sandbox.
    pub sandbox: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PageConfig<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    grpc_web_url: Option<&'a str>,
    grpc_port: u16,
    development: bool,
    sandbox: bool,
}

/// Whether `path` is the dashboard's to answer.
pub fn owns(path: &str) -> bool {
    path == "/dashboard" || path.starts_with(DASHBOARD_PATH) || path.starts_with("/icons/")
}

/// Answers a GET or HEAD under the dashboard's paths.
pub fn serve(settings: &DashboardSettings, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    if path == "/dashboard/config.json" {
        let config = PageConfig {
            grpc_web_url: settings.grpc_web_url.as_deref(),
            grpc_port: settings.grpc_port,
            development: settings.development,
            sandbox: settings.sandbox,
        };
        let body = serde_json::to_vec(&config).unwrap_or_default();
        return with_headers(
            StatusCode::OK,
            "application/json",
            Bytes::from(body),
            "no-store",
        );
    }
    let file = path
        .strip_prefix(DASHBOARD_PATH)
        .filter(|p| p.starts_with("assets/"))
        .or_else(|| path.strip_prefix('/').filter(|p| p.starts_with("icons/")));
    if let Some(file) = file {
        return match asset(file) {
            Some((content_type, bytes)) => {
                // Names under assets/ carry a content hash: they never change.
                let cache = if file.starts_with("assets/") {
                    "public, max-age=31536000, immutable"
                } else {
                    "public, max-age=3600"
                };
                with_headers(
                    StatusCode::OK,
                    content_type,
                    Bytes::from_static(bytes),
                    cache,
                )
            }
            None => text(StatusCode::NOT_FOUND, "not found"),
        };
    }
    // Every other path under /dashboard is a page of the app: it routes in the browser.
    match asset("index.html") {
        Some((content_type, bytes)) => {
            let mut response = with_headers(
                StatusCode::OK,
                content_type,
                Bytes::from_static(bytes),
                "no-cache",
            );
            let csp = content_security_policy(settings, request);
            if let Ok(value) = HeaderValue::from_str(&csp) {
                response
                    .headers_mut()
                    .insert(header::CONTENT_SECURITY_POLICY, value);
            }
            response
        }
        None => text(
            StatusCode::NOT_FOUND,
            "the dashboard was not built into this binary (web/dist is missing)",
        ),
    }
}

fn asset(file: &str) -> Option<(&'static str, &'static [u8])> {
    embedded::ASSETS
        .iter()
        .find(|(name, _, _)| *name == file)
        .map(|(_, content_type, bytes)| (*content_type, *bytes))
}

/// Only this origin's scripts and styles; calls only to it and the grpc-web endpoint; never
/// framed. The page needs nothing from anywhere else (fonts and icons are local).
fn content_security_policy(settings: &DashboardSettings, request: &Request<Incoming>) -> String {
    let grpc = match &settings.grpc_web_url {
        Some(url) => url.trim_end_matches('/').to_string(),
        None => {
            let host = request
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .and_then(host_name)
                .unwrap_or("localhost");
            format!("http://{host}:{0} https://{host}:{0}", settings.grpc_port)
        }
    };
    format!(
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self' {grpc}; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    )
}

/// The host of a Host header without its port; None for anything that is not a plain name,
/// IPv4 or bracketed IPv6 address (the value ends up in a header).
fn host_name(host: &str) -> Option<&str> {
    let name = if host.starts_with('[') {
        host.split_inclusive(']').next()?
    } else {
        host.split(':').next()?
    };
    let plain = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '[' | ']' | ':'));
    (plain && !name.is_empty()).then_some(name)
}

fn with_headers(
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
    cache: &'static str,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("strict-origin-when-cross-origin"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_taken_without_port_and_odd_values_refused() {
        assert_eq!(host_name("localhost:3001"), Some("localhost"));
        assert_eq!(host_name("127.0.0.1"), Some("127.0.0.1"));
        assert_eq!(host_name("[::1]:3001"), Some("[::1]"));
        assert_eq!(host_name("evil.test; script-src *"), None);
        assert_eq!(host_name(""), None);
    }

    #[test]
    fn the_built_dashboard_is_embedded() {
        assert!(asset("index.html").is_some(), "web/dist/index.html");
        assert!(asset("icons/hubspot.svg").is_some());
        assert!(
            embedded::ASSETS
                .iter()
                .any(|(name, _, _)| name.starts_with("assets/") && name.ends_with(".js"))
        );
    }
}
