//! A connection's change feed at its provider: set up when the connection is made (HubSpot:
//! learn the portal; Mailchimp: a list webhook to the connection's secret URL; Zoho: a watch
//! channel with a token), removed when it goes. A feed that cannot be set up leaves the
//! connection working on its schedule; the failure is logged and shown in its activity.

use std::time::Duration;

use chrono::Utc;
use rand::RngCore;
use serde_json::json;

use super::{Integrations, webhook_events::digest};
use crate::{
    domain::{
        activity::Activity, catalogue::ProviderId, credentials::Credentials,
        integration::Integration,
    },
    providers::FeedRequest,
    store::WebhookRegistration,
};

/// How long a Zoho channel is asked to last.
pub const ZOHO_CHANNEL_LIFETIME: chrono::Duration = chrono::Duration::hours(24);

/// How long removing a feed at the provider may take.
const TAKE_DOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// The route a provider's webhooks come to, under the public base URL.
pub fn webhook_path(provider: ProviderId) -> String {
    format!("/integrations/webhook/{}", provider.as_str())
}

/// 24 random bytes, hex (48 characters: Zoho takes tokens of at most 50).
pub(super) fn random_secret() -> String {
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// A Zoho channel id: a positive 63-bit number.
fn random_channel_id() -> String {
    (rand::rng().next_u64() >> 1).max(1).to_string()
}

/// The public URL of a provider's webhook route (with the connection's secret for Mailchimp).
pub(super) fn webhook_url(base: &url::Url, provider: ProviderId, secret: Option<&str>) -> String {
    let base = base.as_str().trim_end_matches('/');
    match secret {
        Some(secret) => format!("{base}{}/{secret}", webhook_path(provider)),
        None => format!("{base}{}", webhook_path(provider)),
    }
}

impl Integrations {
    /// Sets up the connection's feed, replacing one it had (removed at the provider under
    /// `previous_settings`: the list it was on). Never fails the connection.
    pub(super) async fn set_up_feed(
        &self,
        integration: &Integration,
        credentials: &Credentials,
        previous_settings: Option<&std::collections::BTreeMap<String, String>>,
    ) {
        let provider = integration.provider;
        if !matches!(
            provider,
            ProviderId::Hubspot | ProviderId::Mailchimp | ProviderId::ZohoCrm
        ) {
            return;
        }
        if let Err(reason) = self
            .try_set_up_feed(integration, credentials, previous_settings)
            .await
        {
            tracing::warn!(provider = provider.as_str(), integration_id = %integration.id, %reason, "cannot set up real-time updates; the connection syncs on its schedule");
            self.activity(
                &integration.user_id,
                Activity::new(
                    "integration.realtime_unavailable",
                    format!("Real-time updates from {provider} could not be set up: {reason}"),
                    json!({ "provider": provider.as_str(), "integration_id": integration.id }),
                ),
            )
            .await;
        }
    }

    async fn try_set_up_feed(
        &self,
        integration: &Integration,
        credentials: &Credentials,
        previous_settings: Option<&std::collections::BTreeMap<String, String>>,
    ) -> Result<(), String> {
        let provider = integration.provider;
        let feed = self
            .providers
            .change_feed(
                provider,
                integration.user_id.as_str(),
                credentials,
                &integration.settings,
            )
            .map_err(|e| e.to_string())?
            .ok_or("no change feed")?;
        // A reconnect or another list: the old feed goes first, from where it was.
        if let Some(old) = self
            .store
            .webhook_registration(&integration.id)
            .await
            .map_err(|e| e.to_string())?
            && let Some(remote) = &old.remote_id
        {
            let removed = match previous_settings {
                Some(settings) => match self.providers.change_feed(
                    provider,
                    integration.user_id.as_str(),
                    credentials,
                    settings,
                ) {
                    Ok(Some(old_feed)) => old_feed.unsubscribe(remote).await,
                    Ok(None) => Ok(()),
                    Err(e) => Err(e),
                },
                None => feed.unsubscribe(remote).await,
            };
            if let Err(e) = removed {
                tracing::info!(provider = provider.as_str(), error = %e, "the old feed could not be removed at the provider");
            }
        }
        let now = Utc::now();
        let secret = random_secret();
        let channel_id = random_channel_id();
        let expires_at = now + ZOHO_CHANNEL_LIFETIME;
        let mut registration = WebhookRegistration {
            integration_id: integration.id.clone(),
            user_id: integration.user_id.clone(),
            provider,
            account: None,
            secret_hash: match provider {
                ProviderId::Hubspot => None,
                _ => Some(digest(secret.as_bytes())),
            },
            remote_id: None,
            expires_at: None,
        };
        // Saved before the provider is asked, so the first delivery finds its connection.
        if provider != ProviderId::Hubspot {
            self.store
                .save_webhook_registration(&registration, now)
                .await
                .map_err(|e| e.to_string())?;
        }
        let url = webhook_url(
            &self.real_time.public_base_url,
            provider,
            (provider == ProviderId::Mailchimp).then_some(secret.as_str()),
        );
        let subscribed = feed
            .subscribe(&FeedRequest {
                notify_url: &url,
                token: &secret,
                channel_id: &channel_id,
                expires_at,
            })
            .await
            // The provider may quote the URL or token back: neither reaches a log or the
            // activity log.
            .map_err(|e| {
                e.to_string()
                    .replace(&url, "<webhook URL>")
                    .replace(&secret, "<secret>")
            })?;
        registration.account = subscribed.account;
        registration.remote_id = subscribed.remote_id;
        registration.expires_at = subscribed.expires_at;
        self.store
            .save_webhook_registration(&registration, Utc::now())
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(provider = provider.as_str(), integration_id = %integration.id, "real-time updates set up");
        Ok(())
    }

    /// Removes the feed at the provider (best effort, after the connection is gone here).
    pub(super) async fn take_down_feed(
        &self,
        provider: ProviderId,
        registration: Option<WebhookRegistration>,
        credentials: Option<&Credentials>,
        settings: &std::collections::BTreeMap<String, String>,
    ) {
        let (Some(registration), Some(credentials)) = (registration, credentials) else {
            return;
        };
        let Some(remote) = registration.remote_id else {
            return;
        };
        let feed = match self.providers.change_feed(
            provider,
            registration.user_id.as_str(),
            credentials,
            settings,
        ) {
            Ok(Some(feed)) => feed,
            _ => return,
        };
        match tokio::time::timeout(TAKE_DOWN_TIMEOUT, feed.unsubscribe(&remote)).await {
            Ok(Ok(())) => tracing::info!(
                provider = provider.as_str(),
                "real-time updates removed at the provider"
            ),
            Ok(Err(e)) => {
                tracing::warn!(provider = provider.as_str(), error = %e, "cannot remove real-time updates at the provider; its deliveries are dropped")
            }
            Err(_) => tracing::warn!(
                provider = provider.as_str(),
                "removing real-time updates at the provider timed out; its deliveries are dropped"
            ),
        }
    }
}

impl Integrations {
    /// The connection's credentials with a live access token (refreshed if it expired, for
    /// OAuth providers), to set up or remove its feed; the stored ones if no refresh works.
    pub(super) async fn feed_credentials(
        &self,
        integration: &Integration,
    ) -> Result<Option<Credentials>, crate::store::StoreError> {
        if integration.provider.spec().auth == crate::domain::catalogue::AuthKind::OAuth2 {
            let keeper = super::tokens::TokenKeeper::new(
                std::sync::Arc::clone(&self.store),
                std::sync::Arc::clone(&self.vault),
                std::sync::Arc::clone(&self.oauth),
            );
            if let Ok(credentials) = keeper.credentials(integration, None).await {
                return Ok(Some(credentials));
            }
        }
        Ok(self
            .store
            .sealed_credentials(&integration.id)
            .await?
            .and_then(|sealed| self.vault.open(&sealed).ok()))
    }
}
