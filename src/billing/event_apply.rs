//! Applying one stored event: the snapshot it carries when that is provably newer than what is
//! stored, else one fetch of the object (shared by the customer's pending events about it),
//! never over state known to be newer; invoices only move forward; a second live subscription
//! is cancelled and refunded or flagged; activity entries in the same transaction as the change
//! and the inbox row's move from pending to done (exactly once).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::json;

use super::{Applied, Billing, apply_remote};
use crate::domain::subscription::DuplicatePolicy;
use crate::{
    domain::{
        UserId,
        activity::Activity,
        freshness::{Evidence, Freshness, freshness, invoice_may_move},
        invoice::{InvoiceStatus, format_amount},
        reconcile::RemoteSubscription,
    },
    payments::{
        EventAction, InvoiceOutcome, PaymentError, PaymentGateway, RemoteInvoice, WebhookEvent,
    },
    store::{NewDunningEmail, PendingEvent, StoreError},
    telemetry::error_chain,
};

/// Why an event could not be applied now.
#[derive(Debug, thiserror::Error)]
pub(super) enum Failure {
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
pub(super) type Outcome = &'static str;

/// Objects fetched while working through one customer's events: pending events about one
/// object share one fetch.
#[derive(Default)]
pub(super) struct Fetched {
    subscriptions: HashMap<String, (DateTime<Utc>, RemoteSubscription)>,
    invoices: HashMap<String, (DateTime<Utc>, RemoteInvoice)>,
}

impl Billing {
    /// Applies one stored event; the outcome recorded with it.
    pub(super) async fn apply_event(
        &self,
        pending: &PendingEvent,
        fetched: &mut Fetched,
    ) -> Result<Outcome, Failure> {
        let gateway = self.gateways.get(pending.provider)?;
        let event = gateway
            .read_event(pending.payload.as_bytes())
            .map_err(|e| Failure::Permanent(e.to_string()))?;
        if let EventAction::ConfirmPayment {
            request_id,
            receipt,
        } = &event.action
        {
            return self
                .confirm_payment(gateway.as_ref(), pending, request_id, receipt.as_deref())
                .await;
        }
        if matches!(event.action, EventAction::Ignore) {
            return self.finish(pending, "ignored", None).await;
        }
        let Some(user) = self.event_user(pending.provider, &event).await? else {
            if let Some(subscription_id) = self.erased_users_subscription(&event).await? {
                return self
                    .refund_for_erased(gateway.as_ref(), pending, &subscription_id)
                    .await;
            }
            tracing::warn!(
                customer_id = event.customer_id.as_deref().unwrap_or("none"),
                "webhook event for a customer this service does not know; recorded and ignored"
            );
            return self.finish(pending, "unknown_customer", None).await;
        };
        let work = Work {
            billing: self,
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
            } => {
                // Paid: the session is no longer open (a later checkout need not expire it).
                if let Some(session) = event.object_id.as_deref() {
                    self.store.checkout_expired(session).await?;
                }
                work.subscription(id, None, fetched).await
            }
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
            EventAction::Ignore | EventAction::ConfirmPayment { .. } => {
                self.finish(pending, "ignored", None).await
            }
        }
    }

    /// Marks the event done (with activity entries, if any) in one transaction.
    pub(super) async fn finish(
        &self,
        pending: &PendingEvent,
        outcome: Outcome,
        activity: Option<(&UserId, Vec<Activity>)>,
    ) -> Result<Outcome, Failure> {
        let mut tx = self.store.begin().await?;
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

/// One event's work.
struct Work<'a> {
    billing: &'a Billing,
    gateway: &'a dyn PaymentGateway,
    pending: &'a PendingEvent,
    event: &'a WebhookEvent,
    user: &'a UserId,
}

impl Work<'_> {
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
        wait_until(self.gateway, after_event).await;
        let started = self.gateway.now();
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
        wait_until(self.gateway, after_event).await;
        let started = self.gateway.now();
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
                let stored = self.billing.store.subscription(self.user).await?;
                if let Some(stored) = stored
                    && stored.provider_subscription_id.as_deref() == Some(id)
                    && freshness(stored.state_as_of, self.snapshot_evidence()) == Freshness::Stale
                {
                    return self.billing.finish(self.pending, "linked", None).await;
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
                return self.billing.finish(self.pending, "ignored", None).await;
            }
            let mut tx = self.billing.store.begin().await?;
            let stored = tx.lock_subscription(self.user).await?;
            let applied = apply_remote(tx.as_mut(), &stored, &remote, evidence).await?;
            let outcome = match (&applied, evidence) {
                (Applied::NeedsFetch, _) => {
                    drop(tx);
                    if let Evidence::Fetched(started) = evidence {
                        // Fetched in the second of the stored snapshot: again, after it.
                        fetched.subscriptions.remove(id);
                        wait_until(self.gateway, next_second(started)).await;
                    }
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
        let stored = self.billing.store.subscription(self.user).await?;
        let kept = stored.and_then(|s| s.provider_subscription_id);
        let tier = remote
            .tier
            .map(|t| t.to_string())
            .unwrap_or_else(|| "paid".into());
        let (outcome, entry) = match self.billing.duplicate_policy {
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
        self.billing
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
                return self.billing.finish(self.pending, "ignored", None).await;
            }
            let mut tx = self.billing.store.begin().await?;
            // The user's row serialises this with everything else that changes the user.
            let stored = tx.lock_subscription(self.user).await?;
            let before = tx.invoice_state(provider, &remote.id).await?;
            if before.as_ref().is_some_and(|b| &b.user_id != self.user) {
                tracing::warn!(invoice_id = id, "invoice stored for another user; ignored");
                drop(tx);
                return self.billing.finish(self.pending, "ignored", None).await;
            }
            let fresh = freshness(before.as_ref().and_then(|b| b.state_as_of), evidence);
            if fresh == Freshness::Unclear {
                drop(tx);
                if let Evidence::Fetched(started) = evidence {
                    fetched.invoices.remove(id);
                    wait_until(self.gateway, next_second(started)).await;
                }
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
            // Dunning: written with the event, so a redelivery or another replica finds it.
            if outcome == InvoiceOutcome::PaymentFailed && now_status == Some(InvoiceStatus::Open) {
                let emails = self
                    .billing
                    .dunning_plan(&stored, &remote, self.event.created);
                let planned = emails
                    .iter()
                    .map(|(step, due, grace_ends)| NewDunningEmail {
                        user: self.user,
                        provider,
                        invoice_id: &remote.id,
                        step: *step,
                        recipient: remote.customer_email.as_deref(),
                        due: *due,
                        grace_ends: *grace_ends,
                    })
                    .collect::<Vec<_>>();
                if !planned.is_empty() {
                    tx.schedule_dunning(&planned).await?;
                }
            }
            if matches!(
                now_status,
                Some(InvoiceStatus::Paid | InvoiceStatus::Void | InvoiceStatus::Uncollectible)
            ) {
                tx.cancel_dunning(provider, &remote.id).await?;
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
            return self.billing.finish(self.pending, "ignored", None).await;
        };
        let mut tx = self.billing.store.begin().await?;
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

/// The start of the second after `t`'s.
pub(super) fn next_second(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(t.timestamp() + 1, 0).unwrap_or(t)
}

/// Sleeps until `at` on the provider's clock (a fetch must start after the event's second to
/// order against it, and the event's second is the provider's). At most two seconds: a longer
/// wait means the provider's clock is not known yet (no answer seen since the start); the fetch
/// teaches it, and its evidence is then compared on the provider's clock.
pub(super) async fn wait_until(gateway: &dyn PaymentGateway, at: DateTime<Utc>) {
    if let Ok(wait) = (at - gateway.now()).to_std() {
        tokio::time::sleep(wait.min(std::time::Duration::from_secs(2))).await;
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
        "provider": invoice.provider.as_str(),
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
