//! The M-Pesa poller (`MPESA_POLL_INTERVAL`): Daraja's callbacks sometimes never come, so every
//! request still pending after `MPESA_CALLBACK_GRACE` gets a hint in the inbox and the event
//! processor asks Daraja how it ended (the STK query), as it does for a callback. A request
//! whose push never got an answer (no CheckoutRequestID) for ten minutes ends failed. Periods
//! that ran out are ended here too: the subscription becomes canceled (FREE) with an activity
//! entry, and the reconciler does not see them as overdue.

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{Billing, BillingError};
use crate::{
    domain::{SubscriptionStatus, activity::Activity, subscription::PaymentProvider},
    payments::{PaymentError, mpesa::MpesaHint},
    telemetry::error_chain,
};

/// Requests looked at per run.
const BATCH: u32 = 200;
/// How long a push may stay without a CheckoutRequestID (its answer was lost).
const UNSENT: chrono::Duration = chrono::Duration::minutes(10);

/// What one poll did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PollReport {
    pub hints_stored: u32,
    pub unsent_failed: u32,
    pub periods_ended: u32,
}

impl Billing {
    /// One poll: hints for pending requests past `grace`, and ended periods closed.
    pub async fn poll_mpesa(&self, grace: Duration) -> Result<PollReport, BillingError> {
        let gateway = self.gateways.get(PaymentProvider::Mpesa)?;
        let now = Utc::now();
        let grace = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::zero());
        let mut report = PollReport::default();
        for payment in self.store.stale_mobile_payments(now - grace, BATCH).await? {
            match &payment.request_id {
                Some(request_id) => {
                    let hint = MpesaHint {
                        user_id: payment.user_id.as_str().to_string(),
                        checkout_request_id: request_id.clone(),
                        source: "poll".into(),
                        received_at: now,
                        receipt: None,
                        result_code: None,
                    };
                    match self.store_hint(gateway.as_ref(), &hint).await {
                        Ok(super::WebhookOutcome::Stored) => report.hints_stored += 1,
                        Ok(super::WebhookOutcome::Duplicate) => {}
                        Err(e) => {
                            return Err(PaymentError::Malformed(format!("hint: {e}")).into());
                        }
                    }
                }
                None if payment.created_at < now - UNSENT => {
                    self.store
                        .mobile_payment_not_sent(
                            &payment.id,
                            "the payment request could not be confirmed as sent to the phone",
                            now,
                        )
                        .await?;
                    report.unsent_failed += 1;
                }
                None => {}
            }
        }
        for user in self.store.ended_prepaid_periods(now, BATCH).await? {
            let mut tx = self.store.begin().await?;
            let stored = tx.lock_subscription(&user).await?;
            let ended = stored.provider == Some(PaymentProvider::Mpesa)
                && stored.status == SubscriptionStatus::Active
                && stored.current_period_end.is_some_and(|end| end < now);
            if !ended {
                continue;
            }
            let next = crate::domain::Subscription {
                status: SubscriptionStatus::Canceled,
                state_as_of: Some(now),
                ..stored.clone()
            };
            tx.save_subscription(&next).await?;
            tx.log_activity(
                &user,
                &Activity::new(
                    "subscription.expired",
                    format!(
                        "the {} period paid with M-Pesa ended; the account is on FREE",
                        stored.tier
                    ),
                    json!({ "provider": "mpesa", "tier": stored.tier.as_str(),
                            "period_end": stored.current_period_end.map(|t| t.to_rfc3339()) }),
                ),
            )
            .await?;
            tx.commit().await?;
            report.periods_ended += 1;
        }
        if report != PollReport::default() {
            tracing::info!(?report, "M-Pesa poll");
        }
        Ok(report)
    }
}

/// Polls every `interval` until shutdown.
pub async fn run(
    billing: Arc<Billing>,
    interval: Duration,
    grace: Duration,
    shutdown: CancellationToken,
) {
    if billing.gateways.get(PaymentProvider::Mpesa).is_err() {
        return;
    }
    loop {
        if let Err(e) = billing.poll_mpesa(grace).await {
            tracing::warn!(error = %error_chain(&e), "M-Pesa poll failed; the next one retries");
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = shutdown.cancelled() => return,
        }
    }
}
