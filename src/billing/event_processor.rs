//! The event processor: background workers that apply the events the intake stored.
//!
//! - One customer at a time per worker: a worker leases an order key (the customer) and applies
//!   its pending events oldest `created` first; other workers take other customers, so a flood
//!   for one customer never holds the others back. Safe with many replicas on one database.
//! - Exactly once: an event is applied in the same transaction that moves its inbox row from
//!   pending to done; a second processor's transaction finds it done and rolls back.
//! - Snapshot first: an event's object is applied as it is in the event when it is provably
//!   newer than the stored state, skipped when provably older, and only when the order cannot be
//!   told (same second, or no object in the event) fetched once, outside any transaction, and
//!   applied without overwriting state known to be newer than the fetch's start.
//! - Failures: a temporary one (the provider rate limited, failed or timed out; the database
//!   busy) holds the customer back with a growing delay and nothing is lost; a permanent one is
//!   tried `WEBHOOK_MAX_ATTEMPTS` times and then left as a dead letter, listed by
//!   `nexus-billing webhooks failed` and run again by `nexus-billing webhooks replay ID`.

use std::{collections::HashMap, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use serde_json::json;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{Applied, Billing, DuplicatePolicy, apply_remote};
use crate::{
    config::WebhookConfig,
    domain::{
        UserId,
        activity::Activity,
        freshness::{Evidence, Freshness, freshness, invoice_may_move},
        invoice::{InvoiceStatus, format_amount},
        reconcile::RemoteSubscription,
        subscription::PaymentProvider,
    },
    payments::{
        EventAction, InvoiceOutcome, PaymentError, PaymentGateway, RemoteInvoice, WebhookEvent,
    },
    store::{PendingEvent, StoreError},
    telemetry::error_chain,
};

/// How long a worker holds a customer's events before it must renew.
const LEASE: chrono::Duration = chrono::Duration::seconds(30);

/// Why an event could not be applied now.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("{0}")]
    Temporary(String),
    #[error("{0}")]
    Permanent(String),
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        let message = format!("database: {}", error_chain(&e));
        if e.is_temporary() {
            Self::Temporary(message)
        } else {
            Self::Permanent(message)
        }
    }
}

impl From<PaymentError> for Failure {
    fn from(e: PaymentError) -> Self {
        if e.is_temporary() {
            Self::Temporary(e.to_string())
        } else {
            Self::Permanent(e.to_string())
        }
    }
}

/// What applying an event did (`webhook_inbox.outcome`).
type Outcome = &'static str;

/// Objects fetched while working through one customer's events: pending events about one
/// object share one fetch.
#[derive(Default)]
struct Fetched {
    subscriptions: HashMap<String, (DateTime<Utc>, RemoteSubscription)>,
    invoices: HashMap<String, (DateTime<Utc>, RemoteInvoice)>,
}

pub struct EventProcessor {
    billing: Arc<Billing>,
    config: WebhookConfig,
    name: String,
}

impl EventProcessor {
    pub fn new(billing: Arc<Billing>, config: WebhookConfig) -> Self {
        Self {
            billing,
            config,
            name: format!("events-{}", uuid::Uuid::new_v4().simple()),
        }
    }

    /// Runs `WEBHOOK_WORKERS` workers and a pending-events gauge until shutdown.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        if self.billing.gateways.get(PaymentProvider::Stripe).is_err() {
            return;
        }
        let mut loops = JoinSet::new();
        for slot in 0..self.config.workers {
            let processor = Arc::clone(&self);
            let shutdown = shutdown.clone();
            loops.spawn(async move { processor.work(slot, shutdown).await });
        }
        if self.config.workers > 0 {
            let processor = Arc::clone(&self);
            let shutdown = shutdown.clone();
            loops.spawn(async move { processor.gauge(shutdown).await });
        }
        while loops.join_next().await.is_some() {}
    }

    async fn gauge(&self, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            if let Ok(n) = self.billing.store.pending_event_count().await {
                metrics::gauge!("webhook_events_pending").set(n as f64);
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(5)) => {}
                () = shutdown.cancelled() => {}
            }
        }
    }

    async fn work(&self, slot: usize, shutdown: CancellationToken) {
        let name = format!("{}-{slot}", self.name);
        while !shutdown.is_cancelled() {
            // Registered before looking, so an event stored meanwhile still wakes this worker.
            let stored = self.billing.stored_events.notified();
            match self.run_next(&name, &shutdown).await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %error_chain(&e), "event processor cannot reach the database")
                }
            }
            tokio::select! {
                () = stored => {}
                () = tokio::time::sleep(self.config.poll_interval) => {}
                () = shutdown.cancelled() => {}
            }
        }
    }

    /// Takes one customer with pending events and applies a batch of them; `false` when no
    /// customer was ready.
    async fn run_next(
        &self,
        worker: &str,
        shutdown: &CancellationToken,
    ) -> Result<bool, StoreError> {
        let store = &self.billing.store;
        let now = Utc::now();
        for key in store.ready_order_keys(now).await? {
            if store
                .claim_order_key(&key, worker, now + LEASE, now)
                .await?
            {
                let hold = self.run_key(&key, worker, shutdown).await;
                store.release_order_key(&key, worker, hold).await?;
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Applies the key's pending events in order (stopping early at shutdown); returns until
    /// when to hold the key back after a failure.
    async fn run_key(
        &self,
        key: &str,
        worker: &str,
        shutdown: &CancellationToken,
    ) -> Option<DateTime<Utc>> {
        let store = &self.billing.store;
        let events = match store.pending_events(key).await {
            Ok(events) => events,
            Err(e) => {
                tracing::warn!(error = %error_chain(&e), "cannot read pending events");
                return Some(Utc::now() + chrono::Duration::seconds(1));
            }
        };
        let mut fetched = Fetched::default();
        for pending in events {
            if shutdown.is_cancelled() {
                break;
            }
            let span = tracing::info_span!("webhook_event", event_id = %pending.event_id,
                event_type = %pending.event_type, attempt = pending.attempts + 1);
            let result = self.apply(&pending, &mut fetched).instrument(span).await;
            match result {
                Ok(outcome) => {
                    let lag = (Utc::now() - pending.created).num_milliseconds().max(0) as f64;
                    metrics::histogram!("webhook_processing_lag_seconds").record(lag / 1000.0);
                    metrics::counter!("webhook_events_applied_total", "outcome" => outcome)
                        .increment(1);
                    tracing::info!(event_id = %pending.event_id, outcome, "webhook event applied");
                }
                Err(failure) => {
                    if let Some(hold) = self.failed(&pending, &failure).await {
                        return Some(hold);
                    }
                }
            }
            if let Err(e) = store
                .extend_order_key(key, worker, Utc::now() + LEASE)
                .await
            {
                tracing::warn!(error = %error_chain(&e), "cannot renew an event lease");
            }
        }
        None
    }

    /// Records a failed attempt. Returns the hold-back time when the customer's later events must
    /// wait; `None` when the event became a dead letter and the next one may go on.
    async fn failed(&self, pending: &PendingEvent, failure: &Failure) -> Option<DateTime<Utc>> {
        let attempts = pending.attempts + 1;
        let dead = matches!(failure, Failure::Permanent(_)) && attempts >= self.config.max_attempts;
        let message = failure.to_string();
        if let Err(e) = self
            .billing
            .store
            .event_attempt_failed(pending.provider, &pending.event_id, &message, dead)
            .await
        {
            tracing::warn!(error = %error_chain(&e), "cannot record a failed event attempt");
        }
        if dead {
            metrics::counter!("webhook_events_dead_total").increment(1);
            tracing::error!(event_id = %pending.event_id, event_type = %pending.event_type,
                attempts, error = %message,
                "webhook event failed for good; see `nexus-billing webhooks failed`");
            return None;
        }
        let delay = backoff(attempts, self.config.retry_max_delay);
        tracing::warn!(event_id = %pending.event_id, attempts, error = %message,
            retry_in_ms = delay.as_millis() as u64, "webhook event not applied yet; will retry");
        Some(Utc::now() + chrono::Duration::from_std(delay).unwrap_or(LEASE))
    }

    async fn apply(
        &self,
        pending: &PendingEvent,
        fetched: &mut Fetched,
    ) -> Result<Outcome, Failure> {
        let billing = &self.billing;
        let gateway = billing.gateways.get(pending.provider)?;
        let event = gateway
            .read_event(pending.payload.as_bytes())
            .map_err(|e| Failure::Permanent(e.to_string()))?;
        if matches!(event.action, EventAction::Ignore) {
            return self.finish(pending, "ignored", None).await;
        }
        let Some(user) = billing.event_user(pending.provider, &event).await? else {
            tracing::warn!(
                customer_id = event.customer_id.as_deref().unwrap_or("none"),
                "webhook event for a customer this service does not know; recorded and ignored"
            );
            return self.finish(pending, "unknown_customer", None).await;
        };
        let work = Work {
            processor: self,
            gateway: gateway.as_ref(),
            pending,
            event: &event,
            user: &user,
        };
        match &event.action {
            EventAction::SubscriptionChanged {
                subscription_id,
                snapshot,
            } => {
                work.subscription(subscription_id, snapshot.as_deref(), fetched)
                    .await
            }
            EventAction::CheckoutCompleted {
                subscription_id: Some(id),
                ..
            } => work.subscription(id, None, fetched).await,
            EventAction::CheckoutCompleted { .. } => self.finish(pending, "linked", None).await,
            EventAction::InvoiceChanged {
                invoice_id,
                outcome,
                snapshot,
            } => {
                work.invoice(invoice_id, *outcome, snapshot.as_deref(), fetched)
                    .await
            }
            EventAction::TrialWillEnd {
                subscription_id,
                trial_end,
            } => {
                let entry = Activity::new(
                    "subscription.trial_will_end",
                    match trial_end {
                        Some(end) => format!("trial ends on {}", end.date_naive()),
                        None => "trial ends soon".to_string(),
                    },
                    json!({ "subscription_id": subscription_id,
                            "trial_end": trial_end.map(|t| t.to_rfc3339()) }),
                );
                self.finish(pending, "applied", Some((&user, vec![entry])))
                    .await
            }
            EventAction::CustomerDeleted => work.customer_deleted().await,
            EventAction::Ignore => self.finish(pending, "ignored", None).await,
        }
    }

    /// Marks the event done (with activity entries, if any) in one transaction.
    async fn finish(
        &self,
        pending: &PendingEvent,
        outcome: Outcome,
        activity: Option<(&UserId, Vec<Activity>)>,
    ) -> Result<Outcome, Failure> {
        let mut tx = self.billing.store.begin().await?;
        if !tx
            .finish_event(pending.provider, &pending.event_id, outcome, Utc::now())
            .await?
        {
            return Ok("duplicate");
        }
        if let Some((user, entries)) = activity {
            for entry in &entries {
                tx.log_activity(user, entry).await?;
            }
        }
        tx.commit().await?;
        Ok(outcome)
    }
}

/// 1 s, 2 s, 4 s ... up to `max`.
fn backoff(attempts: u32, max: Duration) -> Duration {
    let exp = attempts.saturating_sub(1).min(20);
    Duration::from_secs(1u64 << exp).min(max)
}

/// One event's work.
struct Work<'a> {
    processor: &'a EventProcessor,
    gateway: &'a dyn PaymentGateway,
    pending: &'a PendingEvent,
    event: &'a WebhookEvent,
    user: &'a UserId,
}

impl Work<'_> {
    fn billing(&self) -> &Billing {
        &self.processor.billing
    }

    /// The event's second, as evidence for its snapshot.
    fn snapshot_evidence(&self) -> Evidence {
        Evidence::Snapshot(self.event.created)
    }

    /// Fetches the subscription, or reuses a fetch that started after the event's second.
    async fn fetch_subscription(
        &self,
        id: &str,
        fetched: &mut Fetched,
    ) -> Result<(RemoteSubscription, Evidence), Failure> {
        let after_event = self.event.created + chrono::Duration::seconds(1);
        if let Some((at, remote)) = fetched.subscriptions.get(id)
            && *at >= after_event
        {
            return Ok((remote.clone(), Evidence::Fetched(*at)));
        }
        wait_until(after_event).await;
        let started = Utc::now();
        let remote = self.gateway.fetch_subscription(id).await?;
        fetched
            .subscriptions
            .insert(id.to_string(), (started, remote.clone()));
        Ok((remote, Evidence::Fetched(started)))
    }

    async fn fetch_invoice(
        &self,
        id: &str,
        fetched: &mut Fetched,
    ) -> Result<(RemoteInvoice, Evidence), Failure> {
        let after_event = self.event.created + chrono::Duration::seconds(1);
        if let Some((at, remote)) = fetched.invoices.get(id)
            && *at >= after_event
        {
            return Ok((remote.clone(), Evidence::Fetched(*at)));
        }
        wait_until(after_event).await;
        let started = Utc::now();
        let remote = self.gateway.fetch_invoice(id).await?;
        fetched
            .invoices
            .insert(id.to_string(), (started, remote.clone()));
        Ok((remote, Evidence::Fetched(started)))
    }

    /// Applies a subscription's state: the snapshot when it can be ordered, else a fetch.
    async fn subscription(
        &self,
        id: &str,
        snapshot: Option<&RemoteSubscription>,
        fetched: &mut Fetched,
    ) -> Result<Outcome, Failure> {
        let (mut remote, mut evidence) = match snapshot {
            Some(s) => (s.clone(), self.snapshot_evidence()),
            None => {
                // A completed checkout names its subscription without its state: nothing to
                // fetch when the stored state is already known to be newer than the event.
                let stored = self.billing().store.subscription(self.user).await?;
                if let Some(stored) = stored
                    && stored.provider_subscription_id.as_deref() == Some(id)
                    && freshness(stored.state_as_of, self.snapshot_evidence()) == Freshness::Stale
                {
                    return self.processor.finish(self.pending, "linked", None).await;
                }
                self.fetch_subscription(id, fetched).await?
            }
        };
        loop {
            if self
                .event
                .customer_id
                .as_deref()
                .is_some_and(|c| c != remote.customer_id)
            {
                tracing::warn!(
                    subscription_id = id,
                    "subscription belongs to another customer; ignored"
                );
                return self.processor.finish(self.pending, "ignored", None).await;
            }
            let mut tx = self.billing().store.begin().await?;
            let stored = tx.lock_subscription(self.user).await?;
            let applied = apply_remote(tx.as_mut(), &stored, &remote, evidence).await?;
            let outcome = match (&applied, evidence) {
                (Applied::NeedsFetch, _) => {
                    drop(tx);
                    (remote, evidence) = self.fetch_subscription(id, fetched).await?;
                    continue;
                }
                (Applied::Duplicate, _) => {
                    drop(tx);
                    return self.duplicate(&remote).await;
                }
                (Applied::Stored(_), Evidence::Snapshot(_)) => "applied",
                (Applied::Stored(_), Evidence::Fetched(_)) => "fetched",
                (Applied::Stale, _) => "stale",
                (Applied::Ignored, _) => "ignored",
            };
            if !tx
                .finish_event(
                    self.pending.provider,
                    &self.pending.event_id,
                    outcome,
                    Utc::now(),
                )
                .await?
            {
                return Ok("duplicate");
            }
            tx.commit().await?;
            return Ok(outcome);
        }
    }

    /// A second live subscription (two checkouts paid): cancelled and refunded at once, or
    /// flagged, by `DUPLICATE_SUBSCRIPTION_POLICY`. The provider is called before the event is
    /// marked done, so a failure retries the event (the calls are idempotent).
    async fn duplicate(&self, remote: &RemoteSubscription) -> Result<Outcome, Failure> {
        let stored = self.billing().store.subscription(self.user).await?;
        let kept = stored.and_then(|s| s.provider_subscription_id);
        let tier = remote
            .tier
            .map(|t| t.to_string())
            .unwrap_or_else(|| "paid".into());
        let (outcome, entry) = match self.billing().duplicate_policy {
            DuplicatePolicy::Refund => {
                let refunded = self.gateway.cancel_and_refund(&remote.id).await?;
                tracing::warn!(subscription_id = %remote.id, ?refunded,
                    "second live subscription cancelled and refunded");
                let refund = if refunded.is_some() {
                    " and its payment refunded"
                } else {
                    ""
                };
                (
                    "duplicate_refunded",
                    Activity::new(
                        "subscription.duplicate_refunded",
                        format!("a second {tier} subscription was cancelled{refund}"),
                        json!({ "subscription_id": remote.id, "kept": kept, "refunded": refunded }),
                    ),
                )
            }
            DuplicatePolicy::Flag => {
                tracing::error!(subscription_id = %remote.id,
                    "second live subscription for one user; not applied, needs attention");
                (
                    "duplicate_flagged",
                    Activity::new(
                        "subscription.needs_attention",
                        format!(
                            "a second {tier} subscription is live at the payment provider and was not applied"
                        ),
                        json!({ "subscription_id": remote.id, "kept": kept }),
                    ),
                )
            }
        };
        self.processor
            .finish(self.pending, outcome, Some((self.user, vec![entry])))
            .await
    }

    /// Applies an invoice's state (forward only) and logs what the event says happened.
    async fn invoice(
        &self,
        id: &str,
        outcome: InvoiceOutcome,
        snapshot: Option<&RemoteInvoice>,
        fetched: &mut Fetched,
    ) -> Result<Outcome, Failure> {
        let provider = self.pending.provider;
        let (mut remote, mut evidence) = match snapshot {
            Some(s) => (s.clone(), self.snapshot_evidence()),
            None => self.fetch_invoice(id, fetched).await?,
        };
        loop {
            if self
                .event
                .customer_id
                .as_deref()
                .zip(remote.customer_id.as_deref())
                .is_some_and(|(event, invoice)| event != invoice)
            {
                tracing::warn!(
                    invoice_id = id,
                    "invoice belongs to another customer; ignored"
                );
                return self.processor.finish(self.pending, "ignored", None).await;
            }
            let mut tx = self.billing().store.begin().await?;
            // The user's row serialises this with everything else that changes the user.
            tx.lock_subscription(self.user).await?;
            let before = tx.invoice_state(provider, &remote.id).await?;
            if before.as_ref().is_some_and(|b| &b.user_id != self.user) {
                tracing::warn!(invoice_id = id, "invoice stored for another user; ignored");
                drop(tx);
                return self.processor.finish(self.pending, "ignored", None).await;
            }
            let fresh = freshness(before.as_ref().and_then(|b| b.state_as_of), evidence);
            if fresh == Freshness::Unclear {
                drop(tx);
                (remote, evidence) = self.fetch_invoice(id, fetched).await?;
                continue;
            }
            let before_status = before.as_ref().map(|b| b.status);
            let moves = fresh == Freshness::Newer
                && before_status.is_none_or(|from| invoice_may_move(from, remote.status));
            let invoice = remote.clone().for_user(self.user.clone());
            if moves {
                tx.save_invoice(&invoice, evidence.as_of()).await?;
            }
            let now_status = if moves {
                Some(invoice.status)
            } else {
                before_status
            };
            for entry in invoice_activity(&invoice, outcome, before_status, now_status) {
                tx.log_activity(self.user, &entry).await?;
            }
            let result = match (moves, evidence) {
                (true, Evidence::Snapshot(_)) => "applied",
                (true, Evidence::Fetched(_)) => "fetched",
                (false, _) => "stale",
            };
            if !tx
                .finish_event(provider, &self.pending.event_id, result, Utc::now())
                .await?
            {
                return Ok("duplicate");
            }
            tx.commit().await?;
            return Ok(result);
        }
    }

    /// The provider deleted the customer: forget it (a next checkout creates a new one).
    async fn customer_deleted(&self) -> Result<Outcome, Failure> {
        let provider = self.pending.provider;
        let Some(customer) = self.event.customer_id.as_deref() else {
            return self.processor.finish(self.pending, "ignored", None).await;
        };
        let mut tx = self.billing().store.begin().await?;
        tx.lock_subscription(self.user).await?;
        tx.forget_customer(provider, customer).await?;
        tx.log_activity(
            self.user,
            &Activity::new(
                "billing.customer_deleted",
                "the billing account was deleted at the payment provider".to_string(),
                json!({ "customer_id": customer }),
            ),
        )
        .await?;
        if !tx
            .finish_event(provider, &self.pending.event_id, "applied", Utc::now())
            .await?
        {
            return Ok("duplicate");
        }
        tx.commit().await?;
        Ok("applied")
    }
}

impl Billing {
    /// Whose event this is: the owner of the customer it names (customers are created by this
    /// service, one per user). A completed checkout for a customer not yet linked is linked to
    /// the user the checkout was made for.
    pub(crate) async fn event_user(
        &self,
        provider: PaymentProvider,
        event: &WebhookEvent,
    ) -> Result<Option<UserId>, StoreError> {
        let Some(customer) = event.customer_id.as_deref() else {
            return Ok(None);
        };
        let known = self.store.user_for_customer(provider, customer).await?;
        if let EventAction::CheckoutCompleted {
            user_ref: Some(user_ref),
            ..
        } = &event.action
        {
            match (&known, UserId::parse(user_ref.as_str())) {
                (Some(owner), Ok(user)) if owner != &user => {
                    tracing::warn!(
                        "checkout completed for a user other than the customer's owner; using the owner"
                    );
                }
                (None, Ok(user)) => {
                    let stored = self
                        .store
                        .save_billing_customer(&user, provider, customer)
                        .await?;
                    if stored == customer {
                        return Ok(Some(user));
                    }
                    tracing::warn!("checkout customer differs from the user's stored customer");
                    return Ok(None);
                }
                _ => {}
            }
        }
        Ok(known)
    }
}

/// Sleeps until `at` (a fetch must start after the event's second to order against it).
async fn wait_until(at: DateTime<Utc>) {
    if let Ok(wait) = (at - Utc::now()).to_std() {
        tokio::time::sleep(wait).await;
    }
}

/// The activity entries an invoice event leaves. `before` and `after` are the stored statuses.
fn invoice_activity(
    invoice: &crate::domain::invoice::Invoice,
    outcome: InvoiceOutcome,
    before: Option<InvoiceStatus>,
    after: Option<InvoiceStatus>,
) -> Vec<Activity> {
    let amount = format_amount(
        invoice.amount_paid.max(invoice.amount_due),
        &invoice.currency,
    );
    let details = json!({
        "invoice_id": invoice.provider_invoice_id,
        "amount_due": invoice.amount_due,
        "amount_paid": invoice.amount_paid,
        "currency": invoice.currency,
        "status": invoice.status.as_str(),
    });
    let became = |status| after == Some(status) && before != Some(status);
    let entry = match outcome {
        // invoice.paid and invoice.payment_succeeded both arrive for one payment: log it once,
        // when the stored invoice becomes paid.
        InvoiceOutcome::Paid if became(InvoiceStatus::Paid) => {
            Some(("payment.succeeded", format!("payment of {amount} received")))
        }
        InvoiceOutcome::PaymentFailed => {
            Some(("payment.failed", format!("payment of {amount} failed")))
        }
        InvoiceOutcome::ActionRequired => Some((
            "payment.action_required",
            format!("payment of {amount} needs the customer to confirm it"),
        )),
        InvoiceOutcome::Voided if became(InvoiceStatus::Void) => {
            Some(("invoice.voided", format!("invoice of {amount} was voided")))
        }
        InvoiceOutcome::MarkedUncollectible if became(InvoiceStatus::Uncollectible) => Some((
            "invoice.uncollectible",
            format!("invoice of {amount} was marked uncollectible"),
        )),
        _ => None,
    };
    entry
        .map(|(kind, message)| Activity::new(kind, message, details))
        .into_iter()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let max = Duration::from_secs(60);
        let delays: Vec<u64> = (1..=8).map(|a| backoff(a, max).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60]);
    }
}
