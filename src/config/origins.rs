//! Browser origins: parsing ALLOWED_ORIGINS, the open-redirect guard, and the origins a
//! running service allows (the configured ones plus the dashboard's own).

use url::Url;

use super::{AppEnv, Config};

/// The card app's and the dashboard's development servers (`npm run dev` in web/).
pub(super) const DEV_ORIGINS: &str =
    "http://localhost:3000,http://127.0.0.1:3000,http://localhost:5173,http://127.0.0.1:5173";

/// Whether `url` is an absolute http(s) URL on one of `origins` (normalised origins), with no
/// user info (`https://app.example@evil.test/` is refused).
pub fn is_allowed_redirect(origins: &[String], url: &str) -> bool {
    // Parsers disagree about backslashes, spaces and control characters (a browser, Stripe
    // and this service could each read a different host): none of them belongs in a URL we
    // hand out.
    if url
        .chars()
        .any(|c| c == '\\' || c.is_whitespace() || c.is_control())
    {
        return false;
    }
    Url::parse(url).is_ok_and(|u| {
        matches!(u.scheme(), "http" | "https")
            && u.username().is_empty()
            && u.password().is_none()
            && origins.contains(&u.origin().ascii_serialization())
    })
}

/// Parses a comma-separated list of origins into their normalised `scheme://host[:port]` form.
pub fn parse_origins(list: &str) -> Result<Vec<String>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .map(|o| {
            let url = Url::parse(o).map_err(|e| format!("{o:?} is not an origin: {e}"))?;
            let bare = url.path() == "/" && url.query().is_none() && url.fragment().is_none();
            if !matches!(url.scheme(), "http" | "https") || url.host().is_none() || !bare {
                return Err(format!(
                    "{o:?} is not an origin (expected scheme://host[:port], no path)"
                ));
            }
            Ok(url.origin().ascii_serialization())
        })
        .collect()
}

impl Config {
    /// Whether `url` is absolute and on one of the allowed origins (the open-redirect guard).
    pub fn is_allowed_redirect(&self, url: &str) -> bool {
        is_allowed_redirect(&self.allowed_origins, url)
    }

    /// The origins browsers may call from (CORS) and be sent back to (checkout, OAuth): the
    /// configured ALLOWED_ORIGINS, plus the dashboard's own origin, which is the sidecar's
    /// public origin (OAUTH_REDIRECT_URL's), and in development the sidecar on `localhost`
    /// and `127.0.0.1` at the port it is bound to, so the dashboard works out of the box.
    pub fn browser_origins(&self, http_port: u16) -> Vec<String> {
        let mut origins = self.allowed_origins.clone();
        origins.push(self.oauth.redirect_url.origin().ascii_serialization());
        if self.app_env != AppEnv::Production {
            origins.push(format!("http://localhost:{http_port}"));
            origins.push(format!("http://127.0.0.1:{http_port}"));
        }
        origins.sort();
        origins.dedup();
        origins
    }
}
