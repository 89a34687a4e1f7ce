//! Connecting and disconnecting integrations, and changing their settings. Credentials are
//! checked with the provider before they are stored, and only ever stored sealed.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::json;

use super::{
    IntegrationError, Integrations, connect_error, not_connected,
    sync_context::{sync_direction, sync_interval},
    validate_credentials, validate_settings,
};
use crate::domain::{
    UserId,
    activity::Activity,
    catalogue::{AuthKind, ProviderId},
    credentials::{Credentials, keys},
    integration::Integration,
};

/// How long a disconnect waits for the provider to revoke the grant.
const REVOKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl Integrations {
    /// Checks the credentials with the provider, then stores them sealed. Connecting again
    /// replaces credentials and settings and makes the integration ACTIVE again.
    pub async fn connect(
        &self,
        user: &UserId,
        provider: ProviderId,
        credentials: BTreeMap<String, String>,
        settings: BTreeMap<String, String>,
    ) -> Result<Integration, IntegrationError> {
        let spec = provider.spec();
        if spec.auth == AuthKind::OAuth2 {
            return Err(IntegrationError::FailedPrecondition(format!(
                "{provider} connects with OAuth: call StartOAuth and send the user to the URL it returns"
            )));
        }
        crate::product_metrics::connection_attempted(provider);
        let result = self
            .connect_checked(user, provider, credentials, settings)
            .await;
        crate::product_metrics::connection_finished(
            provider,
            result.as_ref().map_or_else(|e| e.code(), |_| "connected"),
        );
        result
    }

    async fn connect_checked(
        &self,
        user: &UserId,
        provider: ProviderId,
        credentials: BTreeMap<String, String>,
        settings: BTreeMap<String, String>,
    ) -> Result<Integration, IntegrationError> {
        let spec = provider.spec();
        let credentials = validate_credentials(spec, credentials)?;
        let settings = validate_settings(spec, settings)?;
        let sink = self
            .providers
            .sink(provider, user.as_str(), &credentials, &settings)
            .map_err(connect_error)?;
        sink.verify().await.map_err(connect_error)?;

        self.save(user, provider, &credentials, &settings).await
    }

    /// Stores checked credentials sealed, logs the connection and starts recurring syncs.
    pub(super) async fn save(
        &self,
        user: &UserId,
        provider: ProviderId,
        credentials: &Credentials,
        settings: &BTreeMap<String, String>,
    ) -> Result<Integration, IntegrationError> {
        let before = self.store.integration(user, provider).await?;
        let existed = before.is_some();
        // A re-authorisation keeps the file this service made (Google Drive), so the next sync
        // updates it instead of making a second one.
        let mut credentials = credentials.clone();
        if let Some(before) = &before
            && credentials.get(keys::FILE_ID).is_none()
            && let Some(old) = self
                .store
                .sealed_credentials(&before.id)
                .await?
                .and_then(|sealed| self.vault.open(&sealed).ok())
            && let Some(file_id) = old.get(keys::FILE_ID)
        {
            credentials = credentials.with(keys::FILE_ID, file_id);
        }
        let sealed = self.vault.seal(&credentials);
        let integration = self
            .store
            .save_integration(user, provider, &sealed, settings)
            .await?;
        if existed {
            // Connected again: perhaps to another account, portal, org or audience. What the
            // old destination holds says nothing about the new one, so the next push sends
            // every contact (upserts by key: a contact already there is not duplicated).
            self.store.forget_destination(&integration.id).await?;
        }
        let message = if existed {
            format!("Updated the {provider} connection")
        } else {
            format!("Connected {provider}")
        };
        self.activity(
            user,
            Activity::new(
                "integration.connected",
                message,
                json!({ "provider": provider.as_str(), "integration_id": integration.id, "reconnected": existed }),
            ),
        )
        .await;
        tracing::info!(provider = provider.as_str(), integration_id = %integration.id, reconnected = existed, "integration connected");
        self.set_up_feed(
            &integration,
            &credentials,
            before.as_ref().map(|b| &b.settings),
        )
        .await;
        if self.schedule(&integration, None).await? {
            // Recurring syncs start now; the scheduler queues the next ones.
            self.enqueue(user, &integration, sync_direction(&integration), false)
                .await?;
        }
        Ok(integration)
    }

    /// Deletes the credentials and the integration's jobs, and revokes an OAuth grant at the
    /// provider.
    pub async fn disconnect(
        &self,
        user: &UserId,
        provider: ProviderId,
    ) -> Result<(), IntegrationError> {
        let integration = self
            .store
            .integration(user, provider)
            .await?
            .ok_or_else(|| not_connected(provider))?;
        let feed = self.store.webhook_registration(&integration.id).await?;
        let oauth = provider.spec().auth == AuthKind::OAuth2;
        let credentials = if feed.is_some() {
            // Fresh: removing Zoho's channel needs a live access token.
            self.feed_credentials(&integration).await?
        } else if oauth {
            self.store
                .sealed_credentials(&integration.id)
                .await?
                .and_then(|sealed| self.vault.open(&sealed).ok())
        } else {
            None
        };
        if !self.store.delete_integration(user, provider).await? {
            return Err(not_connected(provider));
        }
        // The feed before the grant: removing Zoho's channel needs the token.
        self.take_down_feed(provider, feed, credentials.as_ref(), &integration.settings)
            .await;
        let revoke = credentials.filter(|_| oauth);
        // After the delete, so a failed revocation never keeps a connection the user removed.
        if let Some(credentials) = revoke {
            match tokio::time::timeout(REVOKE_TIMEOUT, self.oauth.revoke(provider, &credentials))
                .await
            {
                Ok(Ok(())) => tracing::info!(
                    provider = provider.as_str(),
                    "access revoked at the provider"
                ),
                Ok(Err(e)) => {
                    tracing::warn!(provider = provider.as_str(), error = %e, "cannot revoke access at the provider; the credentials are deleted here")
                }
                Err(_) => tracing::warn!(
                    provider = provider.as_str(),
                    "revoking access at the provider timed out; the credentials are deleted here"
                ),
            }
        }
        self.activity(
            user,
            Activity::new(
                "integration.disconnected",
                format!("Disconnected {provider}"),
                json!({ "provider": provider.as_str() }),
            ),
        )
        .await;
        tracing::info!(provider = provider.as_str(), "integration disconnected");
        Ok(())
    }

    /// Changes the settings of a connected integration (interval, recurring direction, list,
    /// folder) without touching its credentials. The new settings replace the old ones whole.
    /// For an API-key provider, settings the provider checks (a list id) are checked with it
    /// first, as when connecting.
    pub async fn update(
        &self,
        user: &UserId,
        provider: ProviderId,
        settings: BTreeMap<String, String>,
    ) -> Result<Integration, IntegrationError> {
        let spec = provider.spec();
        let current = self
            .store
            .integration(user, provider)
            .await?
            .ok_or_else(|| not_connected(provider))?;
        let settings = validate_settings(spec, settings)?;
        if spec.auth == AuthKind::OAuth2 {
            if let Some(path) = settings.get("path") {
                crate::providers::dropbox::validate_path(path)
                    .map_err(|e| IntegrationError::InvalidArgument(format!("settings.{e}")))?;
            }
        } else if provider_checked_settings_changed(&current.settings, &settings) {
            let credentials = self
                .store
                .sealed_credentials(&current.id)
                .await?
                .and_then(|sealed| self.vault.open(&sealed).ok())
                .ok_or_else(|| {
                    IntegrationError::FailedPrecondition(format!(
                        "the stored {provider} credentials cannot be read; connect it again"
                    ))
                })?;
            let sink = self
                .providers
                .sink(provider, user.as_str(), &credentials, &settings)
                .map_err(connect_error)?;
            sink.verify().await.map_err(connect_error)?;
        }
        let integration = self
            .store
            .update_integration_settings(user, provider, &settings)
            .await?
            .ok_or_else(|| not_connected(provider))?;
        if destination_changed(&current.settings, &settings) {
            // Another audience, list or file: the next push sends every contact there.
            self.store.forget_destination(&integration.id).await?;
            // Mailchimp's webhook moves to the new list.
            if self
                .store
                .webhook_registration(&integration.id)
                .await?
                .is_some()
                && let Some(credentials) = self.feed_credentials(&integration).await?
            {
                self.set_up_feed(&integration, &credentials, Some(&current.settings))
                    .await;
            }
            tracing::info!(
                provider = provider.as_str(),
                "the destination changed; its memory is forgotten"
            );
        }
        self.schedule(&integration, integration.last_sync_at)
            .await?;
        self.activity(
            user,
            Activity::new(
                "integration.updated",
                format!("Changed the {provider} settings"),
                json!({ "provider": provider.as_str(), "integration_id": integration.id }),
            ),
        )
        .await;
        tracing::info!(provider = provider.as_str(), integration_id = %integration.id, "integration settings changed");
        Ok(integration)
    }

    /// Stores the recurring schedule the settings describe: the next sync one interval after
    /// `last_sync` (now when there was none). `true` when the integration syncs on its own.
    async fn schedule(
        &self,
        integration: &Integration,
        last_sync: Option<DateTime<Utc>>,
    ) -> Result<bool, IntegrationError> {
        let interval = sync_interval(integration);
        let now = Utc::now();
        let next = interval.map(|interval| match last_sync {
            Some(last) => last.checked_add_signed(interval).unwrap_or(now).max(now),
            None => now.checked_add_signed(interval).unwrap_or(now),
        });
        self.store
            .set_sync_schedule(
                &integration.id,
                interval.map(|i| i.num_seconds()),
                sync_direction(integration),
                next,
            )
            .await?;
        Ok(interval.is_some())
    }
}

/// Whether the settings that name where contacts go (a list, an audience, a file's path)
/// changed.
fn destination_changed(old: &BTreeMap<String, String>, new: &BTreeMap<String, String>) -> bool {
    ["listId", "listIds", "path", "folderId"]
        .iter()
        .any(|key| old.get(*key).map(|v| v.trim()) != new.get(*key).map(|v| v.trim()))
}

/// Whether settings the provider itself checks (its list or audience) changed.
fn provider_checked_settings_changed(
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
) -> bool {
    ["listId", "listIds"]
        .iter()
        .any(|key| old.get(*key) != new.get(*key))
}
