//! Hearing of contact changes as they happen at a provider (HubSpot, Mailchimp, Zoho CRM):
//! what is set up when a connection is made, renewed while it lives and removed when it goes,
//! and the batch read of the contacts a webhook names. Each provider's part is in its module.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::ProviderError;
use crate::domain::contact::RemoteContact;

/// What the service asks a provider to send, and where.
#[derive(Debug, Clone)]
pub struct FeedRequest<'a> {
    /// The connection's webhook URL (Mailchimp's carries the connection's secret).
    pub notify_url: &'a str,
    /// Echoed back by the provider in each notification (Zoho's channel token).
    pub token: &'a str,
    /// The service's id of the channel (Zoho: a number).
    pub channel_id: &'a str,
    /// When the channel should stop (Zoho channels expire).
    pub expires_at: DateTime<Utc>,
}

/// What to keep about a set-up feed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subscribed {
    /// The provider account events name (HubSpot's portal id).
    pub account: Option<String>,
    /// The provider's id of the registration (Mailchimp's webhook id, Zoho's channel id).
    pub remote_id: Option<String>,
    /// When it stops by itself.
    pub expires_at: Option<DateTime<Utc>>,
}

/// A provider that can tell the service about contact changes.
#[async_trait]
pub trait ChangeFeed: Send + Sync {
    /// Sets the feed up (HubSpot: learns the portal; its webhooks are the app's, set once in
    /// HubSpot's developer settings).
    async fn subscribe(&self, request: &FeedRequest<'_>) -> Result<Subscribed, ProviderError>;

    /// Extends a feed that expires (Zoho); others need nothing.
    async fn renew(&self, request: &FeedRequest<'_>) -> Result<Subscribed, ProviderError> {
        self.subscribe(request).await
    }

    /// Removes the feed at the provider; one already gone is fine.
    async fn unsubscribe(&self, _remote_id: &str) -> Result<(), ProviderError> {
        Ok(())
    }

    /// The contacts with these provider ids, in as few calls as the provider allows; ids the
    /// provider no longer has are left out.
    async fn contacts_by_id(&self, _ids: &[String]) -> Result<Vec<RemoteContact>, ProviderError> {
        Err(ProviderError::Rejected(
            "this provider's webhooks carry the contact itself".into(),
        ))
    }
}
