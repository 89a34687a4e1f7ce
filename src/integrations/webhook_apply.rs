//! The webhook worker: applies the provider webhook events in the inbox, one connection at a
//! time under its lease, each event once. HubSpot and Zoho events name contacts: they are read
//! back in one batch call and imported within the plan's contact limit, for connections whose
//! `syncDirection` imports. Mailchimp's carry the member: an unsubscribe (or a cleaned
//! address) is remembered so no later push subscribes it again. Between events it keeps house:
//! Zoho channels renewed before they expire, old events pruned, gauges set.

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use chrono::Utc;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{
    sync_context::sync_direction,
    tokens::{TokenError, TokenKeeper},
    webhook_events::{KeptEvent, digest},
    webhook_feeds::{ZOHO_CHANNEL_LIFETIME, random_channel_id, random_secret, webhook_url},
};
use crate::{
    billing::Billing,
    config::RealTimeConfig,
    domain::{
        Limit,
        catalogue::{AuthKind, ProviderId},
        contact::RemoteContact,
        credentials::keys,
        integration::{Integration, IntegrationStatus},
        sync_job::Direction,
    },
    providers::{FeedRequest, ProviderError, Providers},
    store::{ProviderEvent, Store, StoreError, contact_import::ImportGuard},
    telemetry::error_chain,
};

/// How long a worker holds a connection's events.
const LEASE: chrono::Duration = chrono::Duration::seconds(60);
/// Events applied together (their contacts read in as few calls as the provider allows).
const BATCH: u32 = 500;
/// Attempts before an event is given up (failed).
const MAX_ATTEMPTS: u32 = 10;
/// How often the inbox is looked at when no arrival woke the worker (another replica's).
const POLL: Duration = Duration::from_millis(500);
/// Applied events are kept this long (for support), then pruned.
const KEEP_DONE: chrono::Duration = chrono::Duration::days(7);

pub struct WebhookWorker {
    store: Arc<dyn Store>,
    billing: Arc<Billing>,
    tokens: Arc<TokenKeeper>,
    providers: Arc<Providers>,
    real_time: RealTimeConfig,
    arrivals: Arc<Notify>,
    /// How often house is kept (the scheduler's tick).
    housekeeping: Duration,
    name: String,
}

/// How applying a connection's events ended.
enum Applied {
    /// Done: the events are marked with this outcome.
    Done(&'static str),
    /// Worth another try later.
    Retry(String),
}

impl WebhookWorker {
    pub fn new(
        store: Arc<dyn Store>,
        billing: Arc<Billing>,
        tokens: Arc<TokenKeeper>,
        providers: Arc<Providers>,
        real_time: RealTimeConfig,
        arrivals: Arc<Notify>,
        housekeeping: Duration,
    ) -> Self {
        let name = format!(
            "webhooks-{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        Self {
            store,
            billing,
            tokens,
            providers,
            real_time,
            arrivals,
            housekeeping,
            name,
        }
    }

    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut last_housekeeping: Option<tokio::time::Instant> = None;
        while !shutdown.is_cancelled() {
            if last_housekeeping.is_none_or(|t| t.elapsed() >= self.housekeeping) {
                self.keep_house().await;
                last_housekeeping = Some(tokio::time::Instant::now());
            }
            match self.apply_next().await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %error_chain(&e), "cannot apply provider webhook events now")
                }
            }
            tokio::select! {
                () = self.arrivals.notified() => {}
                () = tokio::time::sleep(POLL) => {}
                () = shutdown.cancelled() => break,
            }
        }
    }

    /// Applies the due events of one connection; `false` when none was due.
    pub async fn apply_next(&self) -> Result<bool, StoreError> {
        let now = Utc::now();
        let Some(id) = self
            .store
            .claim_webhook_integration(&self.name, now + LEASE, now)
            .await?
        else {
            return Ok(false);
        };
        let result = self.apply_events_of(&id).await;
        self.store
            .release_webhook_integration(&id, &self.name)
            .await?;
        result.map(|()| true)
    }

    async fn apply_events_of(&self, integration_id: &str) -> Result<(), StoreError> {
        let events = self
            .store
            .pending_provider_events(integration_id, Utc::now(), BATCH)
            .await?;
        if events.is_empty() {
            return Ok(());
        }
        // The epoch before the integration: contacts read under it are stored only while
        // the connection still points where it did.
        let epoch = self.store.destination_epoch(integration_id).await?;
        let Some(integration) = self.store.integration_by_id(integration_id).await? else {
            return Ok(());
        };
        let provider = integration.provider;
        let ids: Vec<i64> = events.iter().map(|e| e.id).collect();
        let applied = self.apply(&integration, epoch, &events).await?;
        match applied {
            Applied::Done(outcome) => {
                let now = Utc::now();
                if !self
                    .store
                    .finish_provider_events(integration_id, &self.name, &ids, outcome, now)
                    .await?
                {
                    tracing::warn!(
                        "the webhook lease was lost before the events were marked applied; they are applied again"
                    );
                    return Ok(());
                }
                metrics::counter!("integration_webhook_events_applied_total", "provider" => provider.as_str(), "outcome" => outcome)
                    .increment(ids.len() as u64);
                for event in &events {
                    let waited = (now - event.received_at).to_std().unwrap_or_default();
                    metrics::histogram!("integration_webhook_apply_seconds", "provider" => provider.as_str())
                        .record(waited.as_secs_f64());
                }
                tracing::debug!(
                    provider = provider.as_str(),
                    events = ids.len(),
                    outcome,
                    "provider webhook events applied"
                );
            }
            Applied::Retry(reason) => {
                let attempts = events.iter().map(|e| e.attempts).max().unwrap_or(0) + 1;
                let wait = Duration::from_secs(2u64.saturating_pow(attempts.min(8)));
                let at = Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default();
                tracing::warn!(provider = provider.as_str(), %reason, attempts, "provider webhook events will be applied again later");
                self.store
                    .retry_provider_events(&ids, &reason, at, MAX_ATTEMPTS)
                    .await?;
                if attempts >= MAX_ATTEMPTS {
                    metrics::counter!("integration_webhook_events_applied_total", "provider" => provider.as_str(), "outcome" => "failed")
                        .increment(ids.len() as u64);
                }
            }
        }
        Ok(())
    }

    async fn apply(
        &self,
        integration: &Integration,
        epoch: i64,
        events: &[ProviderEvent],
    ) -> Result<Applied, StoreError> {
        if integration.status != IntegrationStatus::Active {
            return Ok(Applied::Done("dropped"));
        }
        let provider = integration.provider;
        let imports = sync_direction(integration) != Direction::Push;
        let mut to_read: BTreeSet<String> = BTreeSet::new();
        let mut carried: Vec<RemoteContact> = Vec::new();
        let now = Utc::now();
        for event in events {
            let kept: KeptEvent = serde_json::from_str(&event.payload).unwrap_or_default();
            match (provider, event.kind.as_str()) {
                (ProviderId::Hubspot, "contact.deletion") | (ProviderId::ZohoCrm, "delete") => {
                    // A contact deleted at the provider stays in the card app (it is the
                    // user's own); the next push leaves it unsent only if unchanged.
                }
                (ProviderId::Hubspot | ProviderId::ZohoCrm, _) => to_read.extend(kept.ids),
                (ProviderId::Mailchimp, kind) => {
                    let Some(email) = kept.email.clone() else {
                        continue;
                    };
                    match kind {
                        "unsubscribe" | "cleaned" => {
                            self.store
                                .remember_unsubscribe(&integration.id, &email, now)
                                .await?;
                        }
                        _ => {
                            if kind == "subscribe" {
                                self.store
                                    .forget_unsubscribe(&integration.id, &email)
                                    .await?;
                            }
                            if let Some(old) = kept.old_email.as_deref()
                                && !self
                                    .store
                                    .unsubscribed_among(&integration.id, &[old.to_lowercase()])
                                    .await?
                                    .is_empty()
                            {
                                // A changed address keeps its unsubscribe.
                                self.store
                                    .remember_unsubscribe(&integration.id, &email, now)
                                    .await?;
                            }
                            carried.push(RemoteContact {
                                email,
                                first_name: kept.first_name,
                                last_name: kept.last_name,
                                company: None,
                                phone: kept.phone,
                                job_title: None,
                                modified_at: Some(event.received_at),
                            });
                        }
                    }
                }
                _ => {}
            }
        }
        if !imports || (to_read.is_empty() && carried.is_empty()) {
            return Ok(Applied::Done(
                if imports || provider == ProviderId::Mailchimp {
                    "applied"
                } else {
                    "dropped"
                },
            ));
        }
        let mut contacts = carried;
        if !to_read.is_empty() {
            let ids: Vec<String> = to_read.into_iter().collect();
            match self.read_contacts(integration, &ids).await {
                Ok(read) => contacts.extend(read),
                Err(applied) => return Ok(applied),
            }
        }
        let entitlement = self.billing.entitlement(&integration.user_id).await?;
        let limit = match entitlement.effective_tier.plan().limits.contacts {
            Limit::Max(n) => Some(n),
            Limit::Unlimited => None,
        };
        let counts = self
            .store
            .import_contacts(
                &integration.user_id,
                &contacts,
                limit,
                Utc::now(),
                Some(ImportGuard {
                    integration_id: &integration.id,
                    epoch,
                }),
            )
            .await?;
        if counts.stale {
            return Ok(Applied::Done("dropped"));
        }
        self.store
            .save_provider_fingerprints(&integration.id, &counts.synced, epoch)
            .await?;
        if counts.over_limit > 0 {
            tracing::info!(
                over_limit = counts.over_limit,
                "contacts from a provider webhook not imported: the plan's contact limit"
            );
        }
        Ok(Applied::Done("applied"))
    }

    /// The contacts with these ids at the provider, with one forced token refresh after a 401
    /// (OAuth); an answer worth waiting for is `Err(Retry)`, a refusal `Err(Done("failed"))`.
    async fn read_contacts(
        &self,
        integration: &Integration,
        ids: &[String],
    ) -> Result<Vec<RemoteContact>, Applied> {
        let mut rejected: Option<String> = None;
        loop {
            let credentials = match self
                .tokens
                .credentials(integration, rejected.as_deref())
                .await
            {
                Ok(c) => c,
                Err(TokenError::Unavailable(reason)) => return Err(Applied::Retry(reason)),
                Err(TokenError::Store(e)) => return Err(Applied::Retry(error_chain(&e))),
                Err(e) => {
                    tracing::info!(error = %e, "webhook events of a connection without usable credentials are dropped");
                    return Err(Applied::Done("failed"));
                }
            };
            let feed = match self.providers.change_feed(
                integration.provider,
                integration.user_id.as_str(),
                &credentials,
                &integration.settings,
            ) {
                Ok(Some(feed)) => feed,
                _ => return Err(Applied::Done("failed")),
            };
            match feed.contacts_by_id(ids).await {
                Ok(contacts) => return Ok(contacts),
                Err(ProviderError::Unauthorized(_))
                    if rejected.is_none()
                        && integration.provider.spec().auth == AuthKind::OAuth2 =>
                {
                    rejected = Some(
                        credentials
                            .get(keys::ACCESS_TOKEN)
                            .unwrap_or_default()
                            .to_string(),
                    );
                }
                Err(e @ (ProviderError::Unavailable(_) | ProviderError::RateLimited { .. })) => {
                    return Err(Applied::Retry(e.to_string()));
                }
                Err(e) => {
                    tracing::warn!(provider = integration.provider.as_str(), error = %e, "the provider refused to read the contacts a webhook named");
                    return Err(Applied::Done("failed"));
                }
            }
        }
    }

    /// Gauges, pruning and Zoho channel renewals. Failures are logged and tried next time.
    async fn keep_house(&self) {
        let now = Utc::now();
        match self.store.pending_provider_event_count().await {
            Ok(n) => metrics::gauge!("integration_webhook_events_pending").set(n as f64),
            Err(e) => {
                tracing::warn!(error = %error_chain(&e), "cannot count pending provider webhook events")
            }
        }
        if let Err(e) = self.store.prune_provider_events(now - KEEP_DONE).await {
            tracing::warn!(error = %error_chain(&e), "cannot prune applied provider webhook events");
        }
        super::health::export_census(self.store.as_ref()).await;
        let before = now
            + chrono::Duration::from_std(self.real_time.zoho_channel_renew_before)
                .unwrap_or_default();
        match self
            .store
            .expiring_registrations(ProviderId::ZohoCrm, before, 50)
            .await
        {
            Ok(due) => {
                for registration in due {
                    self.renew_zoho(registration).await;
                }
            }
            Err(e) => {
                tracing::warn!(error = %error_chain(&e), "cannot read the Zoho channels to renew")
            }
        }
    }

    /// Extends a Zoho channel another day under a new token (or makes it again if Zoho no
    /// longer has it). The new token's hash is saved first: a notification still carrying
    /// the old one is dropped, and the next scheduled import reads what it named.
    async fn renew_zoho(&self, mut registration: crate::store::WebhookRegistration) {
        let Ok(Some(integration)) = self
            .store
            .integration_by_id(&registration.integration_id)
            .await
        else {
            return;
        };
        if integration.status != IntegrationStatus::Active {
            return;
        }
        let Ok(credentials) = self.tokens.credentials(&integration, None).await else {
            return;
        };
        let Ok(Some(feed)) = self.providers.change_feed(
            integration.provider,
            integration.user_id.as_str(),
            &credentials,
            &integration.settings,
        ) else {
            return;
        };
        let token = random_secret();
        let channel = registration
            .remote_id
            .clone()
            .unwrap_or_else(random_channel_id);
        let expires_at = Utc::now() + ZOHO_CHANNEL_LIFETIME;
        let url = webhook_url(&self.real_time.public_base_url, ProviderId::ZohoCrm, None);
        let request = FeedRequest {
            notify_url: &url,
            token: &token,
            channel_id: &channel,
            expires_at,
        };
        registration.secret_hash = Some(digest(token.as_bytes()));
        registration.remote_id = Some(channel.clone());
        if self
            .store
            .save_webhook_registration(&registration, Utc::now())
            .await
            .is_err()
        {
            return;
        }
        let renewed = match feed.renew(&request).await {
            Err(ProviderError::Rejected(_)) => feed.subscribe(&request).await,
            other => other,
        };
        match renewed {
            Ok(subscribed) => {
                registration.expires_at = subscribed.expires_at.or(Some(expires_at));
                if let Err(e) = self
                    .store
                    .save_webhook_registration(&registration, Utc::now())
                    .await
                {
                    tracing::warn!(error = %error_chain(&e), "cannot save a renewed Zoho channel");
                }
                tracing::info!(integration_id = %integration.id, "Zoho watch channel renewed");
            }
            Err(e) => {
                tracing::warn!(integration_id = %integration.id, error = %e, "cannot renew a Zoho watch channel; tried again at the next tick")
            }
        }
    }
}
