//! Connecting an OAuth2 provider, bound to the browser that started it:
//! 1. `StartOAuth` stores a single-use state (hashed) and returns the sidecar's start URL.
//! 2. The browser opens it (`begin_in_browser`): the flow is bound to that browser, once, by an
//!    HttpOnly cookie whose hash is stored with the state, and the browser is sent on to the
//!    provider.
//! 3. The provider sends the browser back to the callback, which finishes the flow only with
//!    that cookie. A link to the provider (or to the start URL, once opened) sent to someone
//!    else is worthless. `CompleteOAuth` finishes a flow for the caller its token proves.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rand::RngCore;
use sha2::{Digest, Sha256};
use url::Url;

use super::{
    IntegrationError, Integrations, OAUTH_STATE_TTL,
    oauth::{OAuthError, TokenSet},
    validate_settings,
};
use crate::domain::credentials::keys;
use crate::store::BindOutcome;
use crate::{
    domain::{
        UserId,
        catalogue::{AuthKind, ProviderId},
        credentials::Credentials,
        integration::Integration,
    },
    store::OAuthState,
};

/// Who finishes a flow.
#[derive(Debug, Clone, Copy)]
pub enum FlowCaller<'a> {
    /// The caller of CompleteOAuth, proven by their token.
    User(&'a UserId),
    /// The browser callback, with the value of the flow's cookie if the browser sent one.
    Browser(Option<&'a str>),
}

/// What the provider sent back.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProviderAnswer<'a> {
    /// When given, the flow must have been started for it.
    pub provider: Option<ProviderId>,
    pub state: &'a str,
    pub code: Option<&'a str>,
    /// The provider's `error` parameter when the user refused.
    pub denied: Option<&'a str>,
    /// Zoho's `accounts-server` parameter.
    pub accounts_server: Option<&'a str>,
}

/// The cookie that binds a flow to a browser.
#[derive(Debug, Clone)]
pub struct BrowserBinding {
    /// Where to send the browser: the provider's authorization URL.
    pub authorize_url: String,
    pub cookie_name: String,
    pub cookie_value: String,
}

/// A finished OAuth flow: where to send the browser, and how it went.
#[derive(Debug)]
pub struct OAuthOutcome {
    /// `None` when the state was unknown (replayed, made up): there is nowhere to go back to.
    pub redirect_after: Option<String>,
    pub provider: Option<ProviderId>,
    pub result: Result<Integration, IntegrationError>,
}

impl OAuthOutcome {
    /// `redirect_after` with `integration=<slug>&status=connected`, or
    /// `status=error&error=<code>`.
    pub fn redirect_url(&self) -> Option<String> {
        let mut url = Url::parse(self.redirect_after.as_deref()?).ok()?;
        {
            let mut query = url.query_pairs_mut();
            if let Some(provider) = self.provider {
                query.append_pair("integration", provider.as_str());
            }
            match &self.result {
                Ok(_) => {
                    query.append_pair("status", "connected");
                }
                Err(e) => {
                    query.append_pair("status", "error");
                    query.append_pair("error", e.code());
                }
            }
        }
        Some(url.into())
    }
}

impl Integrations {
    /// Starts connecting an OAuth provider: a single-use state bound to the user and the
    /// provider (stored hashed, with the PKCE verifier sealed). Returns the sidecar's start URL
    /// for the browser (see `begin_in_browser`), not the provider's.
    pub async fn start_oauth(
        &self,
        user: &UserId,
        provider: ProviderId,
        redirect_after: &str,
        settings: BTreeMap<String, String>,
    ) -> Result<(Url, DateTime<Utc>), IntegrationError> {
        let spec = provider.spec();
        if spec.auth != AuthKind::OAuth2 {
            return Err(IntegrationError::InvalidArgument(format!(
                "provider: {provider} connects with credentials (ConnectIntegration), not OAuth"
            )));
        }
        if !(self.redirect_allowed)(redirect_after) {
            return Err(IntegrationError::InvalidArgument(
                "redirect_after: must be an absolute URL on an allowed origin (ALLOWED_ORIGINS)"
                    .into(),
            ));
        }
        let settings = validate_settings(spec, settings)?;
        if let Some(path) = settings.get("path") {
            crate::providers::dropbox::validate_path(path)
                .map_err(|e| IntegrationError::InvalidArgument(format!("settings.{e}")))?;
        }
        let mut random = [0u8; 32];
        rand::rng().fill_bytes(&mut random);
        let state = hex::encode(random);
        let (url, verifier) = self
            .oauth
            .authorization_url(provider, &state)
            .map_err(oauth_error)?;
        let now = Utc::now();
        let expires_at = now + chrono::Duration::from_std(OAUTH_STATE_TTL).unwrap_or_default();
        self.store
            .save_oauth_state(
                &OAuthState {
                    state_hash: state_hash(&state),
                    user: user.clone(),
                    provider,
                    sealed_verifier: verifier.map(|v| self.vault.seal_bytes(v.as_bytes())),
                    redirect_after: redirect_after.to_string(),
                    settings,
                    expires_at,
                    authorize_url: url.to_string(),
                },
                now,
            )
            .await?;
        tracing::info!(provider = provider.as_str(), "OAuth flow started");
        crate::product_metrics::connection_attempted(provider);
        let mut start = self.oauth_start_url.clone();
        start.query_pairs_mut().append_pair("state", &state);
        Ok((start, expires_at))
    }

    /// Finishes an OAuth flow: takes the state (once), then exchanges the code and stores the
    /// tokens. The caller proves whose flow it is: `Caller::User` is the caller of
    /// CompleteOAuth (the state must be theirs); `Caller::Browser` is the browser callback,
    /// which must carry the cookie the start route set for this state.
    pub async fn complete_oauth(
        &self,
        caller: FlowCaller<'_>,
        answer: ProviderAnswer<'_>,
    ) -> OAuthOutcome {
        let ProviderAnswer {
            provider,
            state,
            code,
            denied,
            accounts_server,
        } = answer;
        let unknown = |provider| {
            OAuthOutcome {
            redirect_after: None,
            provider,
            result: Err(IntegrationError::NotFound(
                "this sign-in was already used, has expired or was started by someone else; start connecting again".into(),
            )),
        }
        };
        if state.is_empty() || state.len() > 128 {
            return unknown(provider);
        }
        let (user, browser) = match caller {
            FlowCaller::User(user) => (Some(user), None),
            FlowCaller::Browser(Some(cookie)) => (None, Some(state_hash(cookie))),
            FlowCaller::Browser(None) => {
                return OAuthOutcome {
                    redirect_after: None,
                    provider,
                    result: Err(IntegrationError::NotFound(
                        "this sign-in can only be finished in the browser that started it; start connecting again from the dashboard".into(),
                    )),
                };
            }
        };
        let taken = match self
            .store
            .take_oauth_state(&state_hash(state), user, browser.as_deref())
            .await
        {
            Ok(Some(taken)) => taken,
            Ok(None) => return unknown(provider),
            Err(e) => {
                return OAuthOutcome {
                    redirect_after: None,
                    provider,
                    result: Err(e.into()),
                };
            }
        };
        let result = self
            .finish_oauth(&taken, provider, code, denied, accounts_server)
            .await;
        crate::product_metrics::connection_finished(
            taken.provider,
            result.as_ref().map_or_else(|e| e.code(), |_| "connected"),
        );
        if let Err(e) = &result {
            tracing::warn!(provider = taken.provider.as_str(), error = %e, "OAuth flow failed");
        }
        OAuthOutcome {
            redirect_after: Some(taken.redirect_after.clone()),
            provider: Some(taken.provider),
            result,
        }
    }

    async fn finish_oauth(
        &self,
        taken: &OAuthState,
        provider: Option<ProviderId>,
        code: Option<&str>,
        denied: Option<&str>,
        accounts_server: Option<&str>,
    ) -> Result<Integration, IntegrationError> {
        if provider.is_some_and(|p| p != taken.provider) {
            return Err(IntegrationError::InvalidArgument(format!(
                "provider: this sign-in was started for {}",
                taken.provider
            )));
        }
        if taken.expires_at < Utc::now() {
            return Err(IntegrationError::FailedPrecondition(
                "this sign-in has expired (10 minutes); start connecting again".into(),
            ));
        }
        if let Some(denied) = denied {
            return Err(IntegrationError::PermissionDenied(format!(
                "{} did not grant access ({})",
                taken.provider,
                denied.chars().take(64).collect::<String>()
            )));
        }
        let code = code
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .ok_or_else(|| {
                IntegrationError::InvalidArgument(
                    "code: the provider sent no authorization code".into(),
                )
            })?;
        let verifier = match &taken.sealed_verifier {
            Some(sealed) => Some(
                self.vault
                    .open_bytes(sealed)
                    .ok()
                    .and_then(|v| String::from_utf8(v).ok())
                    .ok_or_else(|| {
                        IntegrationError::FailedPrecondition(
                            "this sign-in cannot be finished (its key changed); start connecting again".into(),
                        )
                    })?,
            ),
            None => None,
        };
        // Zoho keeps each account in one data centre and names its accounts server in the
        // callback: the code is exchanged there, and refreshes go there too.
        let accounts_server = match (taken.provider, accounts_server) {
            (ProviderId::ZohoCrm, Some(server)) => Some(self.zoho_accounts_server(server)?),
            _ => None,
        };
        let tokens: TokenSet = self
            .oauth
            .exchange_code(taken.provider, code, verifier, accounts_server.as_ref())
            .await
            .map_err(oauth_error)?;
        let mut credentials = tokens.apply_to(&Credentials::default());
        if let Some(server) = &accounts_server {
            credentials = credentials.with(
                keys::ACCOUNTS_SERVER,
                &server.origin().ascii_serialization(),
            );
        }
        self.save(&taken.user, taken.provider, &credentials, &taken.settings)
            .await
    }

    /// Binds the flow named by `state` to the browser of `user`, the signed-in user who started
    /// it, once, and says where to send it. A state that is unknown, expired or already opened
    /// is NOT_FOUND; another user's is PERMISSION_DENIED (and stays usable by its own user).
    pub async fn begin_in_browser(
        &self,
        user: &UserId,
        state: &str,
    ) -> Result<BrowserBinding, IntegrationError> {
        let unknown = || {
            IntegrationError::NotFound(
                "this sign-in link was already opened, has expired or is not valid; start connecting again from the dashboard".into(),
            )
        };
        if state.is_empty() || state.len() > 128 {
            return Err(unknown());
        }
        let mut random = [0u8; 32];
        rand::rng().fill_bytes(&mut random);
        let cookie_value = hex::encode(random);
        let hash = state_hash(state);
        let authorize_url = match self
            .store
            .bind_oauth_browser(&hash, user, &state_hash(&cookie_value), Utc::now())
            .await?
        {
            BindOutcome::Bound(url) => url,
            BindOutcome::NotYours => {
                return Err(IntegrationError::PermissionDenied(
                    "this sign-in was started by another user".into(),
                ));
            }
            BindOutcome::Unknown => return Err(unknown()),
        };
        Ok(BrowserBinding {
            authorize_url,
            cookie_name: cookie_name(state),
            cookie_value,
        })
    }

    /// The Zoho accounts server named in a callback, if it is on ZOHO_ACCOUNTS_SERVERS.
    fn zoho_accounts_server(&self, server: &str) -> Result<Url, IntegrationError> {
        let refused = || {
            IntegrationError::InvalidArgument(format!(
                "accounts-server: {} is not one of Zoho's accounts servers",
                server.chars().take(100).collect::<String>()
            ))
        };
        let url = Url::parse(server.trim()).map_err(|_| refused())?;
        self.zoho_accounts_servers
            .iter()
            .find(|allowed| allowed.origin() == url.origin())
            .cloned()
            .ok_or_else(refused)
    }
}

/// The stored form of a state or cookie: only its hash, so a database reader cannot finish a
/// flow.
fn state_hash(state: &str) -> String {
    hex::encode(Sha256::digest(state.as_bytes()))
}

/// One cookie per flow, so two flows started side by side do not clash.
pub fn cookie_name(state: &str) -> String {
    format!("nexus_oauth_{}", &state_hash(state)[..16])
}

fn oauth_error(error: OAuthError) -> IntegrationError {
    match error {
        OAuthError::NotConfigured(provider) => IntegrationError::FailedPrecondition(format!(
            "{provider} is not configured on this server (its OAuth client id and secret are not set)"
        )),
        OAuthError::InvalidGrant(reason) | OAuthError::Refused(reason) => {
            IntegrationError::InvalidArgument(reason)
        }
        OAuthError::Unavailable(reason) => IntegrationError::Unavailable(reason),
    }
}
