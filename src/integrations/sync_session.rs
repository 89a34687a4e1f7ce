//! The credentials one sync attempt works with: refreshed before they expire, and once after a
//! 401.

use super::{
    sync_attempt::{Outcome, broken},
    tokens::{TokenError, TokenKeeper},
};
use crate::domain::credentials::keys;
use crate::{
    domain::{
        catalogue::AuthKind,
        credentials::Credentials,
        integration::{Integration, IntegrationStatus},
    },
    providers::ProviderError,
    telemetry::error_chain,
};

pub(super) struct Session<'a> {
    tokens: &'a TokenKeeper,
    pub integration: Integration,
    pub credentials: Credentials,
    /// The destination epoch read before the integration's settings: this attempt remembers
    /// what it sends only under it (a destination changed meanwhile gets no memory from it).
    pub epoch: i64,
    oauth: bool,
    forced_refresh: bool,
}

impl<'a> Session<'a> {
    pub async fn open(
        tokens: &'a TokenKeeper,
        integration: Integration,
        epoch: i64,
    ) -> Result<Self, Outcome> {
        let oauth = integration.provider.spec().auth == AuthKind::OAuth2;
        let credentials = tokens
            .credentials(&integration, None)
            .await
            .map_err(session_outcome)?;
        Ok(Self {
            tokens,
            integration,
            credentials,
            epoch,
            oauth,
            forced_refresh: false,
        })
    }

    /// Refreshes the access token when it is about to expire (OAuth providers only).
    pub async fn keep_fresh(&mut self) -> Result<(), Outcome> {
        if self.oauth {
            self.credentials = self
                .tokens
                .credentials(&self.integration, None)
                .await
                .map_err(session_outcome)?;
        }
        Ok(())
    }

    /// A 401: one forced refresh per attempt for OAuth providers; otherwise the credentials
    /// are refused for good.
    pub async fn after_unauthorized(&mut self, reason: String) -> Result<(), Outcome> {
        if !self.oauth || self.forced_refresh {
            return Err(broken(ProviderError::Unauthorized(reason)));
        }
        self.forced_refresh = true;
        tracing::info!("the provider refused the access token; refreshing it once");
        let rejected = self.credentials.get(keys::ACCESS_TOKEN).map(str::to_string);
        self.credentials = self
            .tokens
            .credentials(&self.integration, rejected.as_deref())
            .await
            .map_err(session_outcome)?;
        Ok(())
    }

    /// Keeps a value (a file id; empty to forget it) with the sealed credentials, and uses it
    /// from now on.
    pub async fn remember(&mut self, key: &str, value: &str) -> Result<(), TokenError> {
        self.tokens.remember(&self.integration, key, value).await?;
        self.credentials = self.credentials.with(key, value);
        Ok(())
    }
}

/// What a failure to get credentials means for the attempt.
pub(super) fn session_outcome(error: TokenError) -> Outcome {
    match error {
        TokenError::NeedsReauth(reason) => Outcome::Broken {
            reason,
            integration: IntegrationStatus::NeedsReauth,
        },
        TokenError::Unreadable => Outcome::Broken {
            reason: error.to_string(),
            integration: IntegrationStatus::Error,
        },
        TokenError::Gone => Outcome::LeaseLost,
        TokenError::Unavailable(reason) => Outcome::Retry { reason },
        TokenError::Store(e) => {
            tracing::warn!(error = %error_chain(&e), "cannot read credentials");
            Outcome::Retry {
                reason: "the service's database was unavailable".into(),
            }
        }
    }
}
