//! Provider webhooks in (HubSpot, Mailchimp, Zoho CRM): verify the delivery, attribute each
//! event to the connections it concerns, store it in the inbox and answer. Nothing else: no
//! provider is called here, so a delivery is answered in milliseconds; the webhook worker
//! (`webhook_apply.rs`) applies the events. A redelivery stores nothing new; a delivery for
//! no connection (unknown, disconnected) is acknowledged and dropped.

use chrono::Utc;
use secrecy::ExposeSecret;

pub use super::webhook_events::Refusal;

use super::{
    Integrations,
    webhook_events::{self, KeptEvent, digest},
};
use crate::{
    domain::catalogue::ProviderId,
    store::{NewProviderEvent, StoreError, WebhookRegistration},
};

/// How a delivery ended, when it was not refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intake {
    /// At least one new event stored.
    Stored,
    /// Every event was stored before.
    Duplicate,
    /// No connection it concerns (or nothing worth keeping): acknowledged, nothing stored.
    Dropped,
}

impl Intake {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stored => "stored",
            Self::Duplicate => "duplicate",
            Self::Dropped => "dropped",
        }
    }
}

/// Why a delivery was not taken.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// HUBSPOT_WEBHOOK_SECRET is not set: 503, nothing stored.
    #[error("HubSpot webhooks are not configured on this server")]
    NotConfigured,
    /// 400 (401 for a signature), nothing stored.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// 503, the provider delivers again.
    #[error("database: {0}")]
    Store(#[from] StoreError),
}

impl Integrations {
    /// A HubSpot delivery. `path_and_query` is the request's; HubSpot signed it under the
    /// public base URL.
    pub async fn hubspot_webhook(
        &self,
        method: &str,
        path_and_query: &str,
        headers: &http::HeaderMap,
        body: &[u8],
    ) -> Result<Intake, IntakeError> {
        let secret = self
            .real_time
            .hubspot_webhook_secret
            .as_ref()
            .ok_or(IntakeError::NotConfigured)?;
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let uri = format!(
            "{}{path_and_query}",
            self.real_time
                .public_base_url
                .as_str()
                .trim_end_matches('/')
        );
        webhook_events::verify_hubspot(
            secret.expose_secret().as_bytes(),
            method,
            &uri,
            body,
            header("x-hubspot-signature-v3"),
            header("x-hubspot-request-timestamp"),
            Utc::now().timestamp_millis(),
        )?;
        let events = webhook_events::hubspot_events(body)?;
        let mut portals: std::collections::BTreeMap<String, Vec<WebhookRegistration>> =
            std::collections::BTreeMap::new();
        let mut kept = Vec::new();
        for (portal, event_id, kind, event) in events {
            // HubSpot does not promise event ids are unique alone: the key also names the
            // change (type and object).
            let object = event.ids.first().cloned().unwrap_or_default();
            if !portals.contains_key(&portal) {
                let found = self
                    .store
                    .registrations_of_account(ProviderId::Hubspot, &portal)
                    .await?;
                portals.insert(portal.clone(), found);
            }
            for registration in portals.get(&portal).into_iter().flatten() {
                kept.push(new_event(
                    registration,
                    format!(
                        "hubspot:{event_id}:{kind}:{object}:{}",
                        registration.integration_id
                    ),
                    &kind,
                    &event,
                ));
            }
        }
        self.keep(kept).await
    }

    /// A Mailchimp delivery to a connection's secret URL.
    pub async fn mailchimp_webhook(
        &self,
        secret: &str,
        body: &[u8],
    ) -> Result<Intake, IntakeError> {
        let Some((kind, event)) = webhook_events::mailchimp_event(body)? else {
            return Ok(Intake::Dropped);
        };
        let Some(registration) = self
            .store
            .registration_of_secret(ProviderId::Mailchimp, &digest(secret.as_bytes()))
            .await?
        else {
            return Ok(Intake::Dropped);
        };
        // Mailchimp's deliveries carry no id: the delivery's bytes tell a redelivery.
        let key = format!("mailchimp:{}:{}", digest(body), registration.integration_id);
        self.keep(vec![new_event(&registration, key, &kind, &event)])
            .await
    }

    /// A Zoho CRM notification: its channel and token name the connection.
    pub async fn zoho_webhook(&self, body: &[u8]) -> Result<Intake, IntakeError> {
        let notification = webhook_events::zoho_notification(body)?;
        let registration = self
            .store
            .registration_of_secret(ProviderId::ZohoCrm, &digest(notification.token.as_bytes()))
            .await?
            .filter(|r| r.remote_id.as_deref() == Some(notification.channel_id.as_str()));
        let Some(registration) = registration else {
            return Ok(Intake::Dropped);
        };
        if notification.event.ids.is_empty() {
            return Ok(Intake::Dropped);
        }
        let key = format!("zoho_crm:{}:{}", digest(body), registration.integration_id);
        self.keep(vec![new_event(
            &registration,
            key,
            &notification.operation,
            &notification.event,
        )])
        .await
    }

    async fn keep(&self, events: Vec<NewProviderEvent>) -> Result<Intake, IntakeError> {
        if events.is_empty() {
            return Ok(Intake::Dropped);
        }
        let stored = self
            .store
            .store_provider_events(&events, Utc::now())
            .await?;
        if stored == 0 {
            return Ok(Intake::Duplicate);
        }
        self.webhook_arrivals.notify_one();
        Ok(Intake::Stored)
    }
}

fn new_event(
    registration: &WebhookRegistration,
    delivery_key: String,
    kind: &str,
    event: &KeptEvent,
) -> NewProviderEvent {
    NewProviderEvent {
        integration_id: registration.integration_id.clone(),
        delivery_key,
        kind: kind.to_string(),
        payload: serde_json::to_string(event).unwrap_or_else(|_| "{}".into()),
    }
}
