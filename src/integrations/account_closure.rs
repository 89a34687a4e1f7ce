//! What integrations do when a user's data is erased: every grant is revoked at its provider
//! (best effort, each outcome recorded). The rows themselves are deleted by the erasure's
//! transaction afterwards, so a crash here leaves the credentials in place for the rerun.

use std::time::Duration;

use super::Integrations;
use crate::domain::{
    UserId,
    catalogue::{AuthKind, ProviderId},
    erasure::Revocation,
};

/// How long one revocation may take before it is recorded as failed.
const REVOKE_TIMEOUT: Duration = Duration::from_secs(10);

impl Integrations {
    /// Revokes the access of each of the user's integrations at its provider, in provider
    /// order. API keys and webhook URLs cannot be revoked from here (the user created them at
    /// the provider): `NotSupported`.
    pub async fn revoke_all(
        &self,
        user: &UserId,
    ) -> Result<Vec<(ProviderId, Revocation)>, crate::store::StoreError> {
        let mut outcomes = Vec::new();
        for integration in self.store.integrations(user).await? {
            let provider = integration.provider;
            // Real-time updates stop first (removing Zoho's channel needs the grant). The
            // erasure deletes the registration with the integration.
            if let Some(feed) = self.store.webhook_registration(&integration.id).await? {
                let credentials = self.feed_credentials(&integration).await?;
                self.take_down_feed(
                    provider,
                    Some(feed),
                    credentials.as_ref(),
                    &integration.settings,
                )
                .await;
            }
            let outcome = if provider.spec().auth != AuthKind::OAuth2 {
                Revocation::NotSupported
            } else if !self.oauth.has_app(provider) {
                tracing::warn!(
                    provider = provider.as_str(),
                    "no OAuth app is configured to revoke a grant of a user being erased"
                );
                Revocation::Failed
            } else {
                let credentials = self
                    .store
                    .sealed_credentials(&integration.id)
                    .await?
                    .and_then(|sealed| self.vault.open(&sealed).ok());
                match credentials {
                    None => Revocation::Unreadable,
                    Some(credentials) => match tokio::time::timeout(
                        REVOKE_TIMEOUT,
                        self.oauth.revoke(provider, &credentials),
                    )
                    .await
                    {
                        Ok(Ok(())) => Revocation::Revoked,
                        Ok(Err(e)) => {
                            tracing::warn!(provider = provider.as_str(), error = %e, "cannot revoke a grant of a user being erased");
                            Revocation::Failed
                        }
                        Err(_) => {
                            tracing::warn!(
                                provider = provider.as_str(),
                                "revoking a grant of a user being erased timed out"
                            );
                            Revocation::Failed
                        }
                    },
                }
            };
            metrics::counter!("erasure_revocations_total", "provider" => provider.as_str(), "outcome" => outcome.as_str())
                .increment(1);
            outcomes.push((provider, outcome));
        }
        Ok(outcomes)
    }
}
