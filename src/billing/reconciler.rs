//! The reconciler heals what webhooks missed (`RECONCILE_INTERVAL`, and `nexus-billing
//! reconcile` on demand):
//! - events: lists Stripe's events since the last complete listing (with an overlap; the
//!   last 30 days the first time) and stores those the inbox lacks, so events lost while the
//!   endpoint was down past the provider's retries, or disabled, are still applied by the
//!   event processor;
//! - overdue subscriptions: a paid subscription whose period ended longer ago than the grace
//!   period with no news since is fetched and stored;
//! - adoption: when the stored subscription has ended, the customer's subscriptions are listed
//!   once per ending (newest endings first, each taken by one replica) and one still live is
//!   adopted (a second subscription is not ignored forever; Stripe only: PayPal cannot list a
//!   customer's subscriptions).

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::{Billing, BillingError};
use crate::{
    domain::{freshness::Evidence, reconcile::is_live_status, subscription::PaymentProvider},
    payments::{NOT_CONFIGURED, PaymentError, PaymentGateway},
    store::OverdueSubscription,
    telemetry::error_chain,
};

/// Events are listed from this long before the last complete listing reached.
const EVENT_OVERLAP: chrono::Duration = chrono::Duration::hours(1);
/// How far back the provider keeps events.
const EVENT_RETENTION: chrono::Duration = chrono::Duration::days(30);
/// Subscriptions handled per run and kind.
const BATCH: u32 = 500;

/// What one run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReconcileReport {
    pub events_listed: u64,
    pub events_added: u64,
    pub subscriptions_refreshed: u64,
    pub subscriptions_adopted: u64,
    /// Subscriptions that could not be read or stored this run (each logged; the others went on).
    pub subscriptions_failed: u64,
}

impl Billing {
    /// One reconciliation run: Stripe's missed events, then every overdue subscription read
    /// again at its provider (M-Pesa periods are prepaid and end on their own, see `mpesa.rs`).
    #[tracing::instrument(skip_all)]
    pub async fn reconcile(&self) -> Result<ReconcileReport, BillingError> {
        if self.gateways.with_events().next().is_none() {
            return Err(PaymentError::NotAvailable(NOT_CONFIGURED.into()).into());
        }
        let stripe = self.gateways.get(PaymentProvider::Stripe).ok();
        let mut report = ReconcileReport::default();
        if let Some(stripe) = stripe {
            self.missed_events(stripe.as_ref(), &mut report).await?;
        }
        let now = Utc::now();
        for overdue in self
            .store
            .overdue_subscriptions(now - self.past_due_grace, BATCH)
            .await?
        {
            let Ok(gateway) = self.gateways.get(overdue.provider) else {
                continue;
            };
            if overdue.provider == PaymentProvider::Mpesa {
                continue;
            }
            // One subscription that cannot be read (a test-mode id after switching to live
            // keys, a deleted customer) must not stop the others, run after run.
            if let Err(e) = self
                .refresh_overdue(gateway.as_ref(), &overdue, &mut report)
                .await
            {
                report.subscriptions_failed += 1;
                tracing::warn!(user_id = %overdue.user, subscription_id = %overdue.subscription_id,
                    error = %error_chain(&e), "overdue subscription not refreshed; the others go on");
            }
        }
        let Some(stripe) = stripe else {
            tracing::info!(?report, "reconciliation finished");
            return Ok(report);
        };
        for ended in self
            .store
            .claim_ended_subscriptions(now - EVENT_RETENTION, now, BATCH)
            .await?
            .into_iter()
            .filter(|e| e.provider == PaymentProvider::Stripe)
        {
            match self.adopt(stripe.as_ref(), &ended).await {
                Ok(true) => report.subscriptions_adopted += 1,
                Ok(false) => {}
                Err(e) => {
                    report.subscriptions_failed += 1;
                    tracing::warn!(user_id = %ended.user, error = %error_chain(&e),
                        "ended subscription's customer not listed; the others go on");
                    // Checked again by a later run.
                    self.store.unclaim_ended_subscription(&ended.user).await?;
                }
            }
        }
        tracing::info!(?report, "reconciliation finished");
        Ok(report)
    }

    async fn refresh_overdue(
        &self,
        gateway: &dyn PaymentGateway,
        overdue: &OverdueSubscription,
        report: &mut ReconcileReport,
    ) -> Result<(), BillingError> {
        let fetched_at = gateway.now();
        let remote = gateway.fetch_subscription(&overdue.subscription_id).await?;
        let ended = !is_live_status(remote.status);
        self.store_remote(&overdue.user, &remote, Evidence::Fetched(fetched_at))
            .await?;
        report.subscriptions_refreshed += 1;
        // Only Stripe can list a customer's other subscriptions.
        if ended
            && overdue.provider == PaymentProvider::Stripe
            && self.adopt(gateway, overdue).await?
        {
            report.subscriptions_adopted += 1;
        }
        Ok(())
    }

    async fn missed_events(
        &self,
        gateway: &dyn PaymentGateway,
        report: &mut ReconcileReport,
    ) -> Result<(), BillingError> {
        // From where the last complete listing reached (with an overlap for events created
        // late in Stripe's clock), not from the newest stored event: one delivery after an
        // outage would hide everything before it.
        let started = gateway.now();
        let since = match self.store.events_listed_through(gateway.provider()).await? {
            Some(through) => (through - EVENT_OVERLAP).max(started - EVENT_RETENTION),
            None => started - EVENT_RETENTION,
        };
        let mut after: Option<String> = None;
        loop {
            let page = gateway.list_events(since, after.as_deref()).await?;
            for (id, payload) in &page.events {
                report.events_listed += 1;
                if self.store.event_stored(gateway.provider(), id).await? {
                    continue;
                }
                match self.take_in(gateway, payload).await {
                    Ok(super::WebhookOutcome::Stored) => {
                        report.events_added += 1;
                        tracing::info!(event_id = %id, "missed event brought in");
                    }
                    Ok(super::WebhookOutcome::Duplicate) => {}
                    Err(super::WebhookError::Store(e)) => return Err(e.into()),
                    Err(e) => {
                        tracing::warn!(event_id = %id, error = %e, "listed event not readable")
                    }
                }
            }
            match (page.has_more, page.events.last()) {
                (true, Some((last, _))) => after = Some(last.clone()),
                _ => {
                    self.store
                        .set_events_listed_through(gateway.provider(), started)
                        .await?;
                    return Ok(());
                }
            }
        }
    }

    /// Adopts a live subscription of the customer when the stored one has ended; `true` if one
    /// was adopted.
    async fn adopt(
        &self,
        gateway: &dyn PaymentGateway,
        ended: &OverdueSubscription,
    ) -> Result<bool, BillingError> {
        let Some(customer) = ended.customer_id.as_deref() else {
            return Ok(false);
        };
        let listed_at = gateway.now();
        let live = gateway
            .customer_subscriptions(customer)
            .await?
            .into_iter()
            .find(|s| s.id != ended.subscription_id && is_live_status(s.status));
        let Some(live) = live else {
            return Ok(false);
        };
        let stored = self
            .store_remote(&ended.user, &live, Evidence::Fetched(listed_at))
            .await?;
        let adopted = stored.provider_subscription_id.as_deref() == Some(live.id.as_str());
        if adopted {
            tracing::info!(user_id = %ended.user, subscription_id = %live.id,
                "live subscription adopted after the stored one ended");
        }
        Ok(adopted)
    }
}

/// Runs the reconciler every `interval` until shutdown (the first run after one interval).
pub async fn run(billing: Arc<Billing>, interval: Duration, shutdown: CancellationToken) {
    if billing.gateways.with_events().next().is_none() {
        return;
    }
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = shutdown.cancelled() => return,
        }
        if let Err(e) = billing.reconcile().await {
            tracing::warn!(error = %error_chain(&e), "reconciliation failed; next run will retry");
        }
    }
}
