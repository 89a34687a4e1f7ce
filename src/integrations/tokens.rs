//! Access tokens for syncs: read from the vault, refreshed a margin before they expire (or when
//! the provider answers 401), one refresh at a time per integration across every replica (a
//! short lock in the database), and the new tokens stored before anything uses them, so a
//! rotated refresh token is never lost. A refused refresh (`invalid_grant`) marks the
//! integration NEEDS_REAUTH.

use std::{sync::Arc, time::Duration};

use chrono::Utc;

use crate::domain::credentials::keys;
use crate::{
    domain::{
        credentials::Credentials,
        integration::{Integration, IntegrationStatus},
    },
    integrations::oauth::{OAuth, OAuthError, expires_at},
    store::{Store, StoreError},
    telemetry::error_chain,
    vault::Vault,
};

/// Tokens are refreshed when they have less than this left.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);
/// How long one refresh may hold the lock (a crashed holder's lock runs out after this): well
/// past the OAuth client's whole timeout, so a slow refresh still holds it when it ends.
const LOCK_FOR: Duration = Duration::from_secs(90);
/// How often a waiter looks whether the holder has finished.
const LOCK_POLL: Duration = Duration::from_millis(50);

/// Why no usable credentials could be had.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The user must connect again; the integration is already marked NEEDS_REAUTH.
    #[error("{0}")]
    NeedsReauth(String),
    /// The stored credentials cannot be opened.
    #[error("the stored credentials cannot be read; connect the integration again")]
    Unreadable,
    /// The integration is gone (disconnected meanwhile).
    #[error("the integration was disconnected")]
    Gone,
    /// Worth retrying later.
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct TokenKeeper {
    store: Arc<dyn Store>,
    vault: Arc<Vault>,
    oauth: Arc<OAuth>,
    /// Names this process in the lock column.
    owner: String,
}

impl TokenKeeper {
    pub fn new(store: Arc<dyn Store>, vault: Arc<Vault>, oauth: Arc<OAuth>) -> Self {
        let owner = super::instance_name();
        Self {
            store,
            vault,
            oauth,
            owner,
        }
    }

    /// The integration's credentials, with an access token good for at least the margin.
    /// `rejected` is an access token the provider just refused (a 401): a new one is fetched
    /// unless another worker already replaced it.
    pub async fn credentials(
        &self,
        integration: &Integration,
        rejected: Option<&str>,
    ) -> Result<Credentials, TokenError> {
        let waiting_since = tokio::time::Instant::now();
        loop {
            let (sealed, credentials) = self.read(&integration.id).await?;
            if !needs_refresh(&credentials, rejected) {
                return Ok(credentials);
            }
            let now = Utc::now();
            let until = now + chrono::Duration::from_std(LOCK_FOR).unwrap_or_default();
            if self
                .store
                .lock_token_refresh(&integration.id, &self.owner, until, now)
                .await?
            {
                let result = self.refresh(integration, sealed, credentials).await;
                if let Err(e) = self
                    .store
                    .unlock_token_refresh(&integration.id, &self.owner)
                    .await
                {
                    tracing::warn!(error = %error_chain(&e), "cannot release a token-refresh lock; it runs out by itself");
                }
                match result {
                    Ok(Some(credentials)) => return Ok(credentials),
                    // The credentials changed under us (a reconnect): look again.
                    Ok(None) => continue,
                    Err(e) => return Err(e),
                }
            }
            if waiting_since.elapsed() > LOCK_FOR * 2 {
                return Err(TokenError::Unavailable(format!(
                    "another worker has been refreshing the {} token for too long",
                    integration.provider
                )));
            }
            tokio::time::sleep(LOCK_POLL).await;
        }
    }

    /// Replaces one stored credential value (e.g. Google Drive's file id) without touching the
    /// tokens a concurrent refresh may have just written.
    pub async fn remember(
        &self,
        integration: &Integration,
        key: &str,
        value: &str,
    ) -> Result<(), TokenError> {
        loop {
            let (sealed, credentials) = self.read(&integration.id).await?;
            let updated = self.vault.seal(&credentials.with(key, value));
            if self
                .store
                .replace_sealed_credentials(&integration.id, &sealed, &updated)
                .await?
            {
                return Ok(());
            }
        }
    }

    async fn read(&self, id: &str) -> Result<(Vec<u8>, Credentials), TokenError> {
        let sealed = self
            .store
            .sealed_credentials(id)
            .await?
            .ok_or(TokenError::Gone)?;
        let credentials = self.vault.open(&sealed).map_err(|e| {
            tracing::error!(error = %e, "stored credentials cannot be opened");
            TokenError::Unreadable
        })?;
        Ok((sealed, credentials))
    }

    /// Refreshes while holding the lock. `Ok(None)`: the stored credentials changed meanwhile.
    async fn refresh(
        &self,
        integration: &Integration,
        sealed: Vec<u8>,
        credentials: Credentials,
    ) -> Result<Option<Credentials>, TokenError> {
        // Another holder may have refreshed between our read and our lock.
        let (sealed_now, _) = self.read(&integration.id).await?;
        if sealed_now != sealed {
            return Ok(None);
        }
        let provider = integration.provider;
        let Some(refresh_token) = credentials.get(keys::REFRESH_TOKEN) else {
            return Err(self
                .needs_reauth(
                    integration,
                    format!("{provider} gave no refresh token; connect it again"),
                )
                .await);
        };
        let refresh_token = refresh_token.to_string();
        match self
            .oauth
            .refresh(provider, &refresh_token, &credentials)
            .await
        {
            Ok(tokens) => {
                let rotated = tokens.refresh_token.is_some();
                // Stored before it is used: a rotated refresh token must survive a crash. When
                // the row changed meanwhile (keys rotated, a file id kept) the tokens are merged
                // into what is there now, never dropped: the provider may have retired the old
                // refresh token already.
                let mut base = (sealed, credentials);
                let refreshed = loop {
                    let refreshed = tokens.apply_to(&base.1);
                    let updated = self.vault.seal(&refreshed);
                    if self
                        .store
                        .replace_sealed_credentials(&integration.id, &base.0, &updated)
                        .await?
                    {
                        break refreshed;
                    }
                    let (sealed_now, now) = self.read(&integration.id).await?;
                    if now.get(keys::REFRESH_TOKEN) != Some(refresh_token.as_str()) {
                        // Connected again meanwhile: the new grant's tokens stay.
                        return Ok(None);
                    }
                    base = (sealed_now, now);
                };
                metrics::counter!("oauth_refreshes_total", "provider" => provider.as_str(), "result" => "ok")
                    .increment(1);
                tracing::info!(
                    provider = provider.as_str(),
                    rotated,
                    "access token refreshed"
                );
                Ok(Some(refreshed))
            }
            Err(OAuthError::InvalidGrant(reason)) => {
                metrics::counter!("oauth_refreshes_total", "provider" => provider.as_str(), "result" => "invalid_grant")
                    .increment(1);
                // Refused for the grant we read: if the user re-authorised meanwhile, the new
                // grant is not this refusal's to break.
                let (_, now) = self.read(&integration.id).await?;
                if now.get(keys::REFRESH_TOKEN) != Some(refresh_token.as_str()) {
                    return Ok(None);
                }
                Err(self.needs_reauth(integration, reason).await)
            }
            Err(OAuthError::NotConfigured(_)) => Err(TokenError::Unavailable(format!(
                "{provider} is not configured on this server (its client id and secret are not set)"
            ))),
            Err(OAuthError::Refused(reason) | OAuthError::Unavailable(reason)) => {
                metrics::counter!("oauth_refreshes_total", "provider" => provider.as_str(), "result" => "error")
                    .increment(1);
                Err(TokenError::Unavailable(reason))
            }
        }
    }

    async fn needs_reauth(&self, integration: &Integration, reason: String) -> TokenError {
        if let Err(e) = self
            .store
            .set_integration_health(
                &integration.id,
                IntegrationStatus::NeedsReauth,
                Some(&reason),
            )
            .await
        {
            return e.into();
        }
        tracing::warn!(provider = integration.provider.as_str(), %reason, "integration needs re-authorisation");
        TokenError::NeedsReauth(reason)
    }
}

/// Whether the token must be refreshed: refused by the provider, or expiring within the margin.
fn needs_refresh(credentials: &Credentials, rejected: Option<&str>) -> bool {
    if let Some(rejected) = rejected {
        return credentials.get(keys::ACCESS_TOKEN) == Some(rejected);
    }
    let margin = chrono::Duration::from_std(REFRESH_MARGIN).unwrap_or_default();
    expires_at(credentials).is_some_and(|at| at - margin <= Utc::now())
}
