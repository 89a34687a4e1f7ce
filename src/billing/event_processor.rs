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
//!
//! What applying one event does is in `event_apply.rs`.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{
    Billing,
    event_apply::{Failure, Fetched},
};
use crate::{
    config::WebhookConfig, store::PendingEvent, store::StoreError, telemetry::error_chain,
};

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

    /// How long a worker holds a customer's events (`WEBHOOK_LEASE`).
    fn lease(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.config.lease).unwrap_or(chrono::Duration::seconds(30))
    }

    /// Runs `WEBHOOK_WORKERS` workers and a pending-events gauge until shutdown.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        if self.billing.gateways.configured().is_empty() {
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
            let result = self.run_next(&name, &shutdown).await;
            if result.is_ok() {
                // A heartbeat: alerts tell a stopped processor from an idle one.
                metrics::counter!("event_processor_ticks_total").increment(1);
            }
            match result {
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
        let lease = self.lease();
        for key in store.ready_order_keys(now).await? {
            if store
                .claim_order_key(&key, worker, now + lease, now)
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
            let work = self
                .billing
                .apply_event(&pending, &mut fetched)
                .instrument(span);
            // A slow provider (a confirmation, a cancel-and-refund) must not outlast the lease.
            let lease = self.lease();
            let result = super::lease::renewing(work, self.config.lease / 3, || {
                store.extend_order_key(key, worker, Utc::now() + lease)
            })
            .await;
            match result {
                Ok(outcome) => {
                    let lag = (Utc::now() - pending.created).num_milliseconds().max(0) as f64;
                    metrics::histogram!("webhook_processing_lag_seconds").record(lag / 1000.0);
                    let since_receipt =
                        (Utc::now() - pending.received_at).num_milliseconds().max(0) as f64;
                    metrics::histogram!("webhook_processing_seconds", "provider" => pending.provider.as_str())
                        .record(since_receipt / 1000.0);
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
                .extend_order_key(key, worker, Utc::now() + self.lease())
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
        Some(Utc::now() + chrono::Duration::from_std(delay).unwrap_or(self.lease()))
    }
}

/// 1 s, 2 s, 4 s ... up to `max`.
fn backoff(attempts: u32, max: Duration) -> Duration {
    let exp = attempts.saturating_sub(1).min(20);
    Duration::from_secs(1u64 << exp).min(max)
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
