//! OAuth2 with the providers' authorization servers, through the `oauth2` crate: the
//! authorization URL (scopes, offline access, PKCE), the code exchange, refreshing, and
//! revoking at disconnect. What each provider needs is data ([`app_spec`]); the client ids,
//! secrets and URLs come from configuration.

use std::{collections::BTreeMap, future::Future, pin::Pin, time::Duration};

use chrono::{DateTime, Utc};
use oauth2::{
    AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointNotSet,
    EndpointSet, ExtraTokenFields, HttpRequest, HttpResponse, PkceCodeChallenge, PkceCodeVerifier,
    RedirectUrl, RefreshToken, Scope, StandardRevocableToken, StandardTokenResponse, TokenResponse,
    TokenUrl,
    basic::{
        BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse,
        BasicTokenType,
    },
};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use url::Url;

pub use super::oauth_error::OAuthError;
use super::oauth_error::{HttpError, token_error};
use crate::domain::credentials::keys;
use crate::{
    config::{Endpoints, OAuthConfig},
    domain::{catalogue::ProviderId, credentials::Credentials},
};

/// The longest token lifetime believed: a provider's `expires_in` beyond it (or a gigantic
/// one) is read as this, so date arithmetic can never overflow.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(366 * 24 * 3600);

/// What one provider's authorization server needs beyond the standard flow.
#[derive(Debug, Clone, Copy)]
pub struct AppSpec {
    pub scopes: &'static [&'static str],
    /// Extra authorization-URL parameters (offline access, consent prompt).
    pub extra_params: &'static [(&'static str, &'static str)],
    /// Whether the provider takes a PKCE challenge.
    pub pkce: bool,
}

/// The OAuth facts of each OAuth provider (../shared/PROVIDERS.md).
pub fn app_spec(provider: ProviderId) -> Option<AppSpec> {
    match provider {
        ProviderId::Salesforce => Some(AppSpec {
            scopes: &["api", "refresh_token"],
            extra_params: &[],
            pkce: true,
        }),
        ProviderId::ZohoCrm => Some(AppSpec {
            scopes: &["ZohoCRM.modules.contacts.ALL"],
            extra_params: &[("access_type", "offline"), ("prompt", "consent")],
            pkce: false,
        }),
        ProviderId::GoogleDrive => Some(AppSpec {
            scopes: &["https://www.googleapis.com/auth/drive.file"],
            extra_params: &[
                ("access_type", "offline"),
                ("prompt", "consent"),
                ("include_granted_scopes", "true"),
            ],
            pkce: true,
        }),
        ProviderId::Dropbox => Some(AppSpec {
            scopes: &["files.content.write", "files.content.read"],
            extra_params: &[("token_access_type", "offline")],
            pkce: true,
        }),
        _ => None,
    }
}

/// Tokens from a code exchange or a refresh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSet {
    pub access_token: String,
    /// `None` when the provider kept the old one (Google, Dropbox refreshes).
    pub refresh_token: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub instance_url: Option<String>,
    pub api_domain: Option<String>,
}

impl TokenSet {
    /// Writes the tokens into `credentials`, keeping the refresh token (and provider data) a
    /// refresh did not replace.
    pub fn apply_to(&self, credentials: &Credentials) -> Credentials {
        let mut values: BTreeMap<String, String> = credentials
            .expose_all()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        values.insert(keys::ACCESS_TOKEN.into(), self.access_token.clone());
        match self.expires_at {
            Some(at) => values.insert(keys::EXPIRES_AT.into(), at.timestamp().to_string()),
            None => values.remove(keys::EXPIRES_AT),
        };
        for (key, value) in [
            (keys::REFRESH_TOKEN, &self.refresh_token),
            (keys::INSTANCE_URL, &self.instance_url),
            (keys::API_DOMAIN, &self.api_domain),
        ] {
            if let Some(value) = value {
                values.insert(key.into(), value.clone());
            }
        }
        Credentials::new(values)
    }
}

/// When the access token in `credentials` expires, if the provider said.
pub fn expires_at(credentials: &Credentials) -> Option<DateTime<Utc>> {
    credentials
        .get(keys::EXPIRES_AT)
        .and_then(|v| v.parse::<i64>().ok())
        .and_then(|secs| DateTime::from_timestamp(secs, 0))
}

/// The provider-specific fields of a token response.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct ProviderFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    instance_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    api_domain: Option<String>,
}

impl ExtraTokenFields for ProviderFields {}

type Tokens = StandardTokenResponse<ProviderFields, BasicTokenType>;
type Client = oauth2::Client<
    BasicErrorResponse,
    Tokens,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

/// One configured OAuth app.
struct App {
    client: Client,
    spec: AppSpec,
    revoke: Revocation,
}

/// How a provider revokes tokens.
#[derive(Clone)]
enum Revocation {
    /// RFC 7009-like: POST the token as a form field `token` (Google, Salesforce).
    FormPost(Url),
    /// POST with `?token=` in the query (Zoho).
    QueryPost(Url),
    /// POST with the access token as Bearer (Dropbox).
    Bearer(Url),
}

/// The configured OAuth apps and an HTTP client that never follows redirects.
pub struct OAuth {
    apps: BTreeMap<ProviderId, App>,
    http: reqwest::Client,
}

/// The `oauth2` crate's HTTP client, on our reqwest.
struct Http<'a>(&'a reqwest::Client);

impl<'c> oauth2::AsyncHttpClient<'c> for Http<'_> {
    type Error = HttpError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let url = parts.uri.to_string();
            let response = self
                .0
                .request(parts.method, url)
                .headers(parts.headers)
                .body(body)
                .send()
                .await
                .map_err(|e| HttpError(e.without_url().to_string()))?;
            let mut builder = http::Response::builder().status(response.status());
            for (name, value) in response.headers() {
                builder = builder.header(name, value);
            }
            let body = response
                .bytes()
                .await
                .map_err(|e| HttpError(e.without_url().to_string()))?;
            builder
                .body(body.to_vec())
                .map_err(|e| HttpError(e.to_string()))
        })
    }
}

impl OAuth {
    pub fn new(config: &OAuthConfig, endpoints: &Endpoints) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("nexus-billing/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .build()?;
        let redirect = RedirectUrl::new(config.redirect_url.to_string())?;
        let mut apps = BTreeMap::new();
        for (&provider, client) in &config.clients {
            let Some(spec) = app_spec(provider) else {
                continue;
            };
            let (authorize, token, revoke) = match provider {
                ProviderId::Salesforce => (
                    &endpoints.salesforce_authorize_url,
                    &endpoints.salesforce_token_url,
                    Revocation::FormPost(sibling(&endpoints.salesforce_token_url, "revoke")),
                ),
                ProviderId::ZohoCrm => (
                    &endpoints.zoho_authorize_url,
                    &endpoints.zoho_token_url,
                    Revocation::QueryPost(child(&endpoints.zoho_token_url, "revoke")),
                ),
                ProviderId::GoogleDrive => (
                    &endpoints.google_authorize_url,
                    &endpoints.google_token_url,
                    Revocation::FormPost(sibling(&endpoints.google_token_url, "revoke")),
                ),
                _ => (
                    &endpoints.dropbox_authorize_url,
                    &endpoints.dropbox_token_url,
                    Revocation::Bearer(child(&endpoints.dropbox_api_base, "2/auth/token/revoke")),
                ),
            };
            let oauth_client = oauth2::Client::new(ClientId::new(client.client_id.clone()))
                .set_client_secret(ClientSecret::new(
                    client.client_secret.expose_secret().to_string(),
                ))
                .set_auth_uri(AuthUrl::from_url(authorize.clone()))
                .set_token_uri(TokenUrl::from_url(token.clone()))
                .set_redirect_uri(redirect.clone())
                // Every one of these providers takes the client secret in the form body.
                .set_auth_type(AuthType::RequestBody);
            apps.insert(
                provider,
                App {
                    client: oauth_client,
                    spec,
                    revoke,
                },
            );
        }
        Ok(Self { apps, http })
    }

    /// Whether the provider's OAuth app is configured.
    pub fn is_configured(&self, provider: ProviderId) -> bool {
        self.apps.contains_key(&provider)
    }

    fn app(&self, provider: ProviderId) -> Result<&App, OAuthError> {
        self.apps
            .get(&provider)
            .ok_or(OAuthError::NotConfigured(provider))
    }

    /// The authorization URL carrying `state`, and the PKCE verifier to keep for the exchange
    /// (when the provider takes PKCE).
    pub fn authorization_url(
        &self,
        provider: ProviderId,
        state: &str,
    ) -> Result<(Url, Option<String>), OAuthError> {
        let app = self.app(provider)?;
        let mut request = app
            .client
            .authorize_url(|| CsrfToken::new(state.to_string()))
            .add_scopes(app.spec.scopes.iter().map(|s| Scope::new(s.to_string())));
        for (name, value) in app.spec.extra_params {
            request = request.add_extra_param(*name, *value);
        }
        let mut verifier = None;
        if app.spec.pkce {
            let (challenge, pkce_verifier) = PkceCodeChallenge::new_random_sha256();
            request = request.set_pkce_challenge(challenge);
            verifier = Some(pkce_verifier.secret().to_string());
        }
        let (url, _) = request.url();
        Ok((url, verifier))
    }

    /// Exchanges an authorization code for tokens.
    /// `accounts_server` (Zoho) replaces the scheme, host and port of the token URL.
    pub async fn exchange_code(
        &self,
        provider: ProviderId,
        code: &str,
        verifier: Option<String>,
        accounts_server: Option<&Url>,
    ) -> Result<TokenSet, OAuthError> {
        let app = self.app(provider)?;
        let client = app.client_at(accounts_server);
        let mut request = client.exchange_code(AuthorizationCode::new(code.to_string()));
        if let Some(verifier) = verifier {
            request = request.set_pkce_verifier(PkceCodeVerifier::new(verifier));
        }
        let tokens = request
            .request_async(&Http(&self.http))
            .await
            .map_err(|e| token_error(provider, e))?;
        Ok(token_set(&tokens))
    }

    /// Trades a refresh token for a new access token (and maybe a new refresh token).
    /// Refreshes at the accounts server kept in `credentials` (Zoho), else the configured one.
    pub async fn refresh(
        &self,
        provider: ProviderId,
        refresh_token: &str,
        credentials: &Credentials,
    ) -> Result<TokenSet, OAuthError> {
        let app = self.app(provider)?;
        let server = accounts_server(credentials);
        let refresh_token = RefreshToken::new(refresh_token.to_string());
        let tokens = app
            .client_at(server.as_ref())
            .exchange_refresh_token(&refresh_token)
            .request_async(&Http(&self.http))
            .await
            .map_err(|e| token_error(provider, e))?;
        Ok(token_set(&tokens))
    }

    /// Whether an OAuth app is configured for `provider` (so its grants can be revoked).
    pub fn has_app(&self, provider: ProviderId) -> bool {
        self.apps.contains_key(&provider)
    }

    /// Revokes the grant at the provider (the refresh token where there is one, which ends the
    /// whole grant). A provider without revocation, or without an app configured, is a no-op.
    pub async fn revoke(
        &self,
        provider: ProviderId,
        credentials: &Credentials,
    ) -> Result<(), OAuthError> {
        let Some(app) = self.apps.get(&provider) else {
            return Ok(());
        };
        let token = credentials
            .get(keys::REFRESH_TOKEN)
            .or_else(|| credentials.get(keys::ACCESS_TOKEN));
        let Some(token) = token else {
            return Ok(());
        };
        let revoke = match (&app.revoke, accounts_server(credentials)) {
            (Revocation::QueryPost(url), Some(server)) => {
                Revocation::QueryPost(on_server(url, &server))
            }
            (other, _) => other.clone(),
        };
        let request = match &revoke {
            Revocation::FormPost(url) => {
                let form: String = url::form_urlencoded::Serializer::new(String::new())
                    .append_pair("token", token)
                    .finish();
                self.http
                    .post(url.clone())
                    .header(
                        reqwest::header::CONTENT_TYPE,
                        "application/x-www-form-urlencoded",
                    )
                    .body(form)
            }
            Revocation::QueryPost(url) => {
                let mut url = url.clone();
                url.query_pairs_mut().append_pair("token", token);
                self.http.post(url)
            }
            Revocation::Bearer(url) => {
                // Dropbox revokes the grant of the access token it is called with; an expired
                // one would be refused and leave the refresh token alive, so get a fresh one.
                let expired = expires_at(credentials).is_none_or(|at| at <= Utc::now());
                let fresh = match credentials.get(keys::REFRESH_TOKEN) {
                    Some(refresh) if expired => {
                        match self.refresh(provider, refresh, credentials).await {
                            Ok(tokens) => Some(tokens.access_token),
                            // The grant is already gone.
                            Err(OAuthError::InvalidGrant(_)) => return Ok(()),
                            Err(e) => return Err(e),
                        }
                    }
                    _ => None,
                };
                let access = fresh
                    .as_deref()
                    .or_else(|| credentials.get(keys::ACCESS_TOKEN))
                    .unwrap_or(token);
                self.http.post(url.clone()).bearer_auth(access)
            }
        };
        let response = request.send().await.map_err(|e| {
            OAuthError::Unavailable(format!(
                "{provider} could not be reached to revoke access: {}",
                e.without_url()
            ))
        })?;
        let status = response.status();
        // An already invalid token is as good as revoked.
        if status.is_success() || status.as_u16() == 400 || status.as_u16() == 401 {
            Ok(())
        } else {
            Err(OAuthError::Unavailable(format!(
                "{provider} answered HTTP {} to the revocation",
                status.as_u16()
            )))
        }
    }
}

impl App {
    /// The client, its token URL moved to `server` (Zoho's data centres) when given.
    fn client_at(&self, server: Option<&Url>) -> Client {
        let mut client = self.client.clone();
        if let Some(server) = server {
            let token = on_server(self.client.token_uri().url(), server);
            client = client.set_token_uri(TokenUrl::from_url(token));
        }
        client
    }
}

/// The accounts server kept with the credentials, if any.
fn accounts_server(credentials: &Credentials) -> Option<Url> {
    credentials
        .get(keys::ACCOUNTS_SERVER)
        .and_then(|s| Url::parse(s).ok())
}

/// `url` with the scheme, host and port of `server`.
fn on_server(url: &Url, server: &Url) -> Url {
    let mut moved = server.clone();
    moved.set_path(url.path());
    moved.set_query(url.query());
    moved
}

/// `https://host/a/b/token` -> `https://host/a/b/{name}`.
fn sibling(url: &Url, name: &str) -> Url {
    url.join(name).unwrap_or_else(|_| url.clone())
}

/// `https://host/a/token` -> `https://host/a/token/{path}`.
fn child(url: &Url, path: &str) -> Url {
    let mut base = url.clone();
    if !base.path().ends_with('/') {
        base.set_path(&format!("{}/", base.path()));
    }
    base.join(path).unwrap_or_else(|_| url.clone())
}

fn token_set(tokens: &Tokens) -> TokenSet {
    let extra = tokens.extra_fields();
    TokenSet {
        access_token: tokens.access_token().secret().clone(),
        refresh_token: tokens.refresh_token().map(|t| t.secret().clone()),
        expires_at: tokens
            .expires_in()
            .map(|d| d.min(MAX_TOKEN_LIFETIME))
            .and_then(|d| chrono::Duration::from_std(d).ok())
            .and_then(|d| Utc::now().checked_add_signed(d)),
        instance_url: extra.instance_url.clone(),
        api_domain: extra.api_domain.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revocation_urls_are_derived_from_the_token_urls() {
        let google =
            Url::parse("https://oauth2.googleapis.com/token").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            sibling(&google, "revoke").as_str(),
            "https://oauth2.googleapis.com/revoke"
        );
        let sf = Url::parse("https://login.salesforce.com/services/oauth2/token")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            sibling(&sf, "revoke").as_str(),
            "https://login.salesforce.com/services/oauth2/revoke"
        );
        let zoho = Url::parse("https://accounts.zoho.com/oauth/v2/token")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            child(&zoho, "revoke").as_str(),
            "https://accounts.zoho.com/oauth/v2/token/revoke"
        );
        let dropbox = Url::parse("https://api.dropboxapi.com").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            child(&dropbox, "2/auth/token/revoke").as_str(),
            "https://api.dropboxapi.com/2/auth/token/revoke"
        );
    }
}
