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
    domain::prepaid::{MobilePayment, PaymentState},
    domain::{
        SubscriptionStatus, activity::Activity, prepaid::current_run, subscription::PaymentProvider,
    },
    payments::{PaymentError, mpesa::MpesaHint},
    store::Settled,
    telemetry::error_chain,
};

/// Requests looked at per run.
const BATCH: u32 = 200;
/// How long a push may stay without a CheckoutRequestID (its answer was lost).
pub(super) const UNSENT: chrono::Duration = chrono::Duration::minutes(10);

/// How long a sent request may stay unconfirmed before it is failed and flagged for support
/// (the user can pay again, and an erasure can go ahead).
pub(super) const GIVE_UP: chrono::Duration = chrono::Duration::hours(24);

/// What one poll did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PollReport {
    pub hints_stored: u32,
    pub unsent_failed: u32,
    pub periods_ended: u32,
    /// Requests M-Pesa never confirmed either way within `GIVE_UP`: failed and flagged.
    pub given_up: u32,
    /// Subscriptions moved on to the next period paid for.
    pub periods_started: u32,
}

impl Billing {
    /// One poll: hints for pending requests past `grace`, and ended periods closed.
    pub async fn poll_mpesa(&self, grace: Duration) -> Result<PollReport, BillingError> {
        let gateway = self.gateways.get(PaymentProvider::Mpesa)?;
        let now = Utc::now();
        let grace = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::zero());
        let mut report = PollReport::default();
        for payment in self
            .store
            .stale_mobile_payments(now - grace, now, BATCH)
            .await?
        {
            match &payment.request_id {
                Some(request_id) if payment.created_at < now - GIVE_UP => {
                    self.give_up(&payment, request_id, now).await?;
                    report.given_up += 1;
                }
                Some(request_id) => {
                    // Asked again and again, further apart as the request ages: a new round
                    // is a new event, so dead-lettered hints do not end the asking.
                    let age = now - payment.created_at;
                    let next = now + (age / 4).clamp(grace, chrono::Duration::hours(1));
                    let round = self.store.mobile_payment_polled(&payment.id, next).await?;
                    let hint = MpesaHint {
                        user_id: payment.user_id.as_str().to_string(),
                        checkout_request_id: request_id.clone(),
                        source: "poll".into(),
                        received_at: now,
                        receipt: None,
                        result_code: None,
                        round: round.saturating_sub(1),
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
                    // Daraja may have sent it and its callback been lost: support checks.
                    let mut tx = self.store.begin().await?;
                    tx.log_activity(
                        &payment.user_id,
                        &Activity::new(
                            "subscription.needs_attention",
                            "an M-Pesa payment request got no answer from M-Pesa; if you were charged, support will apply or refund it".to_string(),
                            json!({ "provider": "mpesa", "payment_id": payment.id }),
                        ),
                    )
                    .await?;
                    tx.commit().await?;
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
            // The next period paid for (at its own tier) follows; without one, FREE.
            let paid = tx.prepaid_periods(&user, now).await?;
            if let Some(next) = current_run(&stored, &paid, now) {
                tx.save_subscription(&next).await?;
                tx.log_activity(
                    &user,
                    &Activity::new(
                        "subscription.period_started",
                        format!(
                            "the next period paid with M-Pesa started: {} until {}",
                            next.tier,
                            next.current_period_end
                                .map(|t| t.date_naive().to_string())
                                .unwrap_or_default()
                        ),
                        json!({ "provider": "mpesa", "tier": next.tier.as_str(),
                                "period_end": next.current_period_end.map(|t| t.to_rfc3339()) }),
                    ),
                )
                .await?;
                tx.commit().await?;
                report.periods_started += 1;
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

impl Billing {
    /// Ends a request M-Pesa never confirmed: failed, with an entry that asks for a look.
    async fn give_up(
        &self,
        payment: &MobilePayment,
        request_id: &str,
        now: chrono::DateTime<Utc>,
    ) -> Result<(), BillingError> {
        let mut tx = self.store.begin().await?;
        tx.lock_subscription(&payment.user_id).await?;
        let settled = Settled {
            state: PaymentState::Failed,
            reason: Some("M-Pesa did not confirm the payment within a day; support will check it"),
            receipt: None,
            now,
        };
        if tx
            .settle_mobile_payment(request_id, &settled)
            .await?
            .is_none()
        {
            return Ok(());
        }
        tracing::error!(user_id = %payment.user_id, checkout_request_id = %request_id,
            "M-Pesa request never confirmed; failed and flagged");
        tx.log_activity(
            &payment.user_id,
            &Activity::new(
                "subscription.needs_attention",
                "an M-Pesa payment request could not be confirmed with M-Pesa; if you were charged, support will apply or refund it".to_string(),
                json!({ "provider": "mpesa", "checkout_request_id": request_id }),
            ),
        )
        .await?;
        tx.commit().await?;
        Ok(())
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
