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
    webhook_feeds::{ZOHO_CHANNEL_LIFETIME, random_secret, webhook_url},
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

/// How long a worker holds a connection's events: longer than reading `MAX_IDS` contacts
/// behind a provider's rate limit takes; a crashed worker's connection waits this long.
const LEASE: chrono::Duration = chrono::Duration::minutes(5);
/// Events read at once; those naming more than `MAX_IDS` contacts wait for the next round.
const BATCH: u32 = 500;
/// Most contact ids one round reads back (5 calls of 100 at HubSpot and Zoho).
const MAX_IDS: usize = 500;
/// Contacts stored per import transaction.
const IMPORT_CHUNK: usize = 200;
/// How long a claimed Zoho renewal that failed waits before another try.
const RENEWAL_RETRY: chrono::Duration = chrono::Duration::minutes(10);
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
    /// Worth another try later (an attempt is counted).
    Retry(String),
    /// The provider's rate limit: wait this long, no attempt counted.
    Wait(Duration, String),
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
        let name = format!("webhooks-{}", super::instance_name());
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
        let mut events = self
            .store
            .pending_provider_events(integration_id, Utc::now(), BATCH)
            .await?;
        if events.is_empty() {
            return Ok(());
        }
        // Rounds of at most MAX_IDS contact ids (at least one event): the rest waits.
        let mut named = 0;
        let keep = events
            .iter()
            .position(|e| {
                named += serde_json::from_str::<KeptEvent>(&e.payload).map_or(0, |k| k.ids.len());
                named > MAX_IDS
            })
            .unwrap_or(events.len())
            .max(1);
        events.truncate(keep);
        // The epoch before the integration: contacts read under it are stored only while
        // the connection still points where it did.
        let epoch = self.store.destination_epoch(integration_id).await?;
        let Some(integration) = self.store.integration_by_id(integration_id).await? else {
            return Ok(());
        };
        let provider = integration.provider;
        let ids: Vec<i64> = events.iter().map(|e| e.id).collect();
        let applied = match self.apply(&integration, epoch, &events).await {
            Ok(applied) => applied,
            // The database failed mid-way: the events are tried again later, counted, so a
            // lasting failure is given up instead of claimed again and again.
            Err(e) => Applied::Retry(format!("database: {}", error_chain(&e))),
        };
        let (reason, wait, count) = match applied {
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
                return Ok(());
            }
            Applied::Retry(reason) => {
                let attempts = events.iter().map(|e| e.attempts).max().unwrap_or(0) + 1;
                let wait = Duration::from_secs(2u64.saturating_pow(attempts.min(9)));
                (reason, wait, true)
            }
            Applied::Wait(wait, reason) => (reason, wait, false),
        };
        let at = Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default();
        tracing::warn!(provider = provider.as_str(), %reason, wait_s = wait.as_secs(), "provider webhook events will be applied again later");
        let given_up = self
            .store
            .retry_provider_events(
                integration_id,
                &self.name,
                &ids,
                &reason,
                at,
                count,
                MAX_ATTEMPTS,
            )
            .await?;
        if given_up > 0 {
            tracing::error!(provider = provider.as_str(), given_up, %reason, "provider webhook events given up");
            metrics::counter!("integration_webhook_events_applied_total", "provider" => provider.as_str(), "outcome" => "failed")
                .increment(given_up);
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
        for chunk in contacts.chunks(IMPORT_CHUNK) {
            let counts = self
                .store
                .import_contacts(
                    &integration.user_id,
                    chunk,
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
                Err(ProviderError::RateLimited { retry_after, .. }) => {
                    let wait = retry_after
                        .unwrap_or(Duration::from_secs(10))
                        .min(crate::providers::MAX_PROVIDER_WAIT);
                    return Err(Applied::Wait(wait, "rate limited by the provider".into()));
                }
                Err(e @ ProviderError::Unavailable(_)) => {
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
            .expiring_registrations(ProviderId::ZohoCrm, before, now, 50)
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
    /// longer has it), claimed so one replica renews it. The new token's hash becomes the
    /// secret and the old one stays accepted until the next renewal, so notifications sent
    /// meanwhile still count; a renewal Zoho did not take puts the old one back.
    async fn renew_zoho(&self, registration: crate::store::WebhookRegistration) {
        let now = Utc::now();
        let id = registration.integration_id.clone();
        match self
            .store
            .claim_renewal(&id, now + RENEWAL_RETRY, now)
            .await
        {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(error = %error_chain(&e), "cannot claim a Zoho channel renewal");
                return;
            }
        }
        let Some(channel) = registration.remote_id.clone() else {
            return;
        };
        let Ok(Some(integration)) = self.store.integration_by_id(&id).await else {
            return;
        };
        let feed = match self.tokens.credentials(&integration, None).await {
            Ok(credentials) => self.providers.change_feed(
                integration.provider,
                integration.user_id.as_str(),
                &credentials,
                &integration.settings,
            ),
            Err(e) => {
                tracing::info!(integration_id = %id, error = %e, "no credentials to renew a Zoho channel with; tried again later");
                return;
            }
        };
        let Ok(Some(feed)) = feed else {
            return;
        };
        let token = random_secret();
        let hash = digest(token.as_bytes());
        let expires_at = Utc::now() + ZOHO_CHANNEL_LIFETIME;
        let url = webhook_url(&self.real_time.public_base_url, ProviderId::ZohoCrm, None);
        let request = FeedRequest {
            notify_url: &url,
            token: &token,
            channel_id: &channel,
            expires_at,
        };
        // Gone or replaced (a disconnect or reconnect meanwhile): nothing to renew.
        if !matches!(
            self.store.rotate_webhook_secret(&id, &channel, &hash).await,
            Ok(true)
        ) {
            return;
        }
        let renewed = match feed.renew(&request).await {
            Err(ProviderError::Rejected(_)) => feed.subscribe(&request).await,
            other => other,
        };
        match renewed {
            Ok(subscribed) => {
                let until = subscribed.expires_at.unwrap_or(expires_at);
                match self.store.renewed(&id, &channel, until).await {
                    Ok(true) => tracing::info!(integration_id = %id, "Zoho watch channel renewed"),
                    Ok(false) => {
                        // Disconnected or reconnected while Zoho was asked: the channel it
                        // renewed (or made again) belongs to nothing now.
                        if let Err(e) = feed.unsubscribe(&channel).await {
                            tracing::warn!(integration_id = %id, error = %e, "cannot remove a Zoho channel left by a renewal");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %error_chain(&e), "cannot save a renewed Zoho channel")
                    }
                }
            }
            Err(e) => {
                if let Err(e) = self.store.restore_webhook_secret(&id, &hash).await {
                    tracing::warn!(error = %error_chain(&e), "cannot put a Zoho channel's token back");
                }
                tracing::warn!(integration_id = %id, error = %e, "cannot renew a Zoho watch channel; tried again later");
            }
        }
    }
}
