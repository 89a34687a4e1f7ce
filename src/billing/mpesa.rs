//! M-Pesa: one STK push buys one 30-day period (`domain::prepaid`).
//!
//! - Checkout: the phone is normalised (`domain::phone`), a pending request is reserved (one
//!   per user, enforced by the database across replicas), then the push is sent and its
//!   CheckoutRequestID recorded. The payer is told to check the phone.
//! - Callbacks are not signed, so a callback is only a hint: one for an unknown
//!   CheckoutRequestID is answered and dropped; one for a known pending request is stored in the
//!   webhook inbox like any event, and the event processor confirms the payment with the STK
//!   query before anything changes (`confirm_payment`). A forged callback can make this
//!   service ask Daraja; it cannot grant a period.
//! - The poller (`mpesa_poller.rs`) stores a hint for requests whose callback never came, and
//!   ends prepaid periods that ran out (back to FREE).
//! - Settling a request and its effects (the period, a KES invoice with the receipt, the
//!   activity entries) happen in one transaction that also marks the event done: exactly once.

use chrono::Utc;
use serde_json::json;

use super::{
    Billing, BillingError, NewCheckout,
    event_apply::{Failure, Outcome},
    webhook_intake::{WebhookError, WebhookOutcome},
};
use crate::{
    domain::{
        SubscriptionStatus, UserId,
        activity::Activity,
        invoice::{Invoice, InvoiceStatus, format_amount},
        phone,
        prepaid::{Paid, PaymentState, paid_period},
        subscription::PaymentProvider,
    },
    payments::{
        CheckoutRequest, CheckoutSession, PaymentError, PaymentGateway, PaymentStatus,
        WebhookRejection,
        mpesa::{MpesaHint, read_callback},
    },
    store::{NewMobilePayment, PendingEvent, Settled},
};

/// How long PayPal keeps an approve link usable.
const PAYPAL_LINK_LIFETIME: chrono::Duration = chrono::Duration::hours(3);

/// How many times a hint asks the STK query again when it contradicts a success callback
/// (the query lags right after completion) before the query's answer is taken, flagged.
const CONTRADICTED_ATTEMPTS: u32 = 5;

/// What an M-Pesa callback delivery did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallbackOutcome {
    /// Stored as a hint (or stored before).
    Accepted(WebhookOutcome),
    /// For a request this service did not make, or one already settled: nothing stored.
    Ignored,
}

impl Billing {
    /// Sends an STK push for one period of `new.tier`.
    pub(super) async fn mpesa_checkout(
        &self,
        gateway: &dyn PaymentGateway,
        new: NewCheckout<'_>,
    ) -> Result<CheckoutSession, BillingError> {
        let raw_phone = new
            .phone_number
            .ok_or_else(|| BillingError::Invalid("phone_number is required for M-Pesa".into()))?;
        let phone = phone::kenyan_msisdn(raw_phone).map_err(BillingError::Invalid)?;
        let (amount, currency) = gateway
            .local_price(new.tier)
            .ok_or_else(|| BillingError::Invalid("M-Pesa sells PRO and PREMIUM only".into()))?;
        let now = Utc::now();
        let current = self.entitlement(new.user).await?.subscription;
        if current.is_live(now) && current.provider != Some(PaymentProvider::Mpesa) {
            return Err(BillingError::Precondition(format!(
                "you have a live {} subscription with {}; M-Pesa periods cannot run beside it: change it with ChangePlan or let it end with CancelSubscription first",
                current.tier,
                current
                    .provider
                    .map(|p| p.display_name())
                    .unwrap_or("another provider"),
            )));
        }
        if let Some(waiting) = self.store.pending_mobile_payment(new.user).await? {
            return Err(pending_precondition(&waiting));
        }
        // An open Stripe or PayPal checkout could be paid beside the push: close it first.
        self.refuse_beside_paypal_links(new.user).await?;
        for (provider, subscription_id) in self.close_checkouts(new.user, None).await? {
            let adopted = self
                .adopt_paid(new.user, provider, &subscription_id)
                .await?;
            if adopted.is_live(Utc::now()) {
                return Err(BillingError::Precondition(format!(
                    "an earlier checkout was paid: you have a {} subscription now",
                    adopted.tier
                )));
            }
        }
        let customer = self.customer(gateway, new.user, new.email).await?;
        let id = uuid::Uuid::new_v4().to_string();
        let reserved = self
            .store
            .reserve_mobile_payment(&NewMobilePayment {
                id: &id,
                user: new.user,
                tier: new.tier,
                amount,
                currency: &currency,
                phone: &phone,
                now,
            })
            .await?;
        if !reserved {
            // Another request of the same user won the race.
            return match self.store.pending_mobile_payment(new.user).await? {
                Some(waiting) => Err(pending_precondition(&waiting)),
                None => Err(BillingError::Busy(
                    "another M-Pesa payment was just started; try again".into(),
                )),
            };
        }
        let sent = gateway
            .create_checkout(&CheckoutRequest {
                user: new.user,
                customer_id: &customer,
                tier: new.tier,
                success_url: new.success_url,
                cancel_url: new.cancel_url,
                phone_number: Some(&phone),
                previous_subscription_id: None,
                expired_before: 0,
                reference: Some(&id),
                interval: crate::domain::pricing::BillingInterval::Month,
                currency: None,
                trial_days: None,
                allow_promotion_codes: false,
            })
            .await;
        match sent {
            Ok(session) => {
                // Should this write fail, the callback still finds the request by its `ref`.
                self.store.mobile_payment_sent(&id, &session.id).await?;
                tracing::info!(checkout_request_id = %session.id, phone = %phone::masked(&phone),
                    "M-Pesa payment request sent");
                Ok(session)
            }
            // Refused: nothing reached the phone.
            Err(e @ (PaymentError::Rejected(_) | PaymentError::NotAvailable(_))) => {
                let reason = format!("the payment request was not sent: {e}");
                self.store
                    .mobile_payment_not_sent(&id, &reason, Utc::now())
                    .await?;
                Err(e.into())
            }
            // Timed out, dropped, a 5xx or an unreadable answer: Daraja may have sent the
            // prompt. The request stays pending (no second push) until its callback names it
            // or the poller gives up on it (`mpesa_poller::UNSENT`).
            Err(e) => {
                tracing::warn!(payment_id = %id, error = %e,
                    "M-Pesa push answer lost; the request waits for its callback");
                Err(BillingError::Unconfirmed(format!(
                    "M-Pesa did not confirm the payment request; if your phone shows the prompt, answer it and it will be applied; otherwise try again in {} minutes",
                    super::mpesa_poller::UNSENT.num_minutes()
                )))
            }
        }
    }

    /// PayPal cannot withdraw an approve link: while one opened in the last three hours (how
    /// long PayPal keeps it) can still be approved, a push could be paid beside it, and an M-Pesa
    /// payment cannot be refunded by this service. The push waits until the link is used or
    /// expires.
    async fn refuse_beside_paypal_links(&self, user: &UserId) -> Result<(), BillingError> {
        let Ok(paypal) = self.gateways.get(PaymentProvider::Paypal) else {
            return Ok(());
        };
        let since = Utc::now() - PAYPAL_LINK_LIFETIME;
        for id in self
            .store
            .checkouts_since(user, PaymentProvider::Paypal, since)
            .await?
        {
            let remote = match paypal.fetch_subscription(&id).await {
                Ok(remote) => remote,
                Err(PaymentError::NotFound(_)) => continue,
                Err(e) => return Err(e.into()),
            };
            if remote.status == SubscriptionStatus::Incomplete {
                return Err(BillingError::Precondition(
                    "a PayPal checkout you opened can still be approved; approve it, or pay with M-Pesa once its link expires (three hours after it was opened)".into(),
                ));
            }
            // Approved, its webhook still on the way: that is the user's subscription now.
            let adopted = self.adopt_paid(user, PaymentProvider::Paypal, &id).await?;
            if adopted.is_live(Utc::now()) {
                return Err(BillingError::Precondition(format!(
                    "you have a live {} subscription with PayPal; M-Pesa periods cannot run beside it",
                    adopted.tier
                )));
            }
        }
        Ok(())
    }

    /// Handles one delivery to `POST /billing/webhook/mpesa`.
    #[tracing::instrument(skip_all, fields(checkout_request_id))]
    pub async fn mpesa_callback(
        &self,
        body: &[u8],
        reference: Option<&str>,
    ) -> Result<CallbackOutcome, WebhookError> {
        let gateway = self
            .gateways
            .get(PaymentProvider::Mpesa)
            .map_err(|_| WebhookError::NotConfigured)?;
        let callback = read_callback(body)?;
        tracing::Span::current()
            .record("checkout_request_id", callback.checkout_request_id.as_str());
        let mut known = self
            .store
            .mobile_payment(&callback.checkout_request_id)
            .await?;
        if known.is_none()
            && let Some(reference) = reference
            && self
                .exists_at_daraja(gateway.as_ref(), &callback.checkout_request_id)
                .await
            && self
                .store
                .mobile_payment_found(reference, &callback.checkout_request_id)
                .await?
        {
            // The push's answer was lost (or not recorded): its callback names it. Being
            // unsigned, it is still only a hint: the STK query decides.
            tracing::warn!(payment_id = %reference, "M-Pesa request found by its callback");
            known = self
                .store
                .mobile_payment(&callback.checkout_request_id)
                .await?;
        }
        let Some(payment) = known else {
            if callback.result_code == 0 {
                // Paid, but not through a request this service recorded (or forged): support
                // must look at it; nothing is granted.
                tracing::error!(
                    receipt = callback.receipt.as_deref().unwrap_or("none"),
                    "M-Pesa callback reports a payment for an unknown CheckoutRequestID; not applied"
                );
            } else {
                tracing::warn!("M-Pesa callback for an unknown CheckoutRequestID; ignored");
            }
            return Ok(CallbackOutcome::Ignored);
        };
        if payment.state != PaymentState::Pending {
            return Ok(CallbackOutcome::Ignored);
        }
        if let (0, Some(receipt)) = (callback.result_code, callback.receipt.as_deref()) {
            self.store
                .mobile_payment_reported_paid(&callback.checkout_request_id, receipt)
                .await?;
        }
        let hint = MpesaHint {
            user_id: payment.user_id.as_str().to_string(),
            checkout_request_id: callback.checkout_request_id.clone(),
            source: "callback".into(),
            received_at: Utc::now(),
            receipt: callback.receipt.clone(),
            result_code: Some(callback.result_code),
            round: 0,
        };
        Ok(CallbackOutcome::Accepted(
            self.store_hint(gateway.as_ref(), &hint).await?,
        ))
    }

    /// Whether Daraja knows the CheckoutRequestID a callback names (an unsigned callback could
    /// name a made-up one for a request whose answer was lost). When Daraja cannot be asked,
    /// the callback is believed: the STK query decides the payment anyway.
    async fn exists_at_daraja(&self, gateway: &dyn PaymentGateway, request_id: &str) -> bool {
        !matches!(
            gateway.payment_status(request_id).await,
            Err(PaymentError::Rejected(_) | PaymentError::NotFound(_))
        )
    }

    /// Stores a hint in the inbox for the event processor.
    pub(super) async fn store_hint(
        &self,
        gateway: &dyn PaymentGateway,
        hint: &MpesaHint,
    ) -> Result<WebhookOutcome, WebhookError> {
        let payload =
            serde_json::to_string(hint).map_err(|e| WebhookRejection::BadPayload(e.to_string()))?;
        let event = gateway.read_event(payload.as_bytes())?;
        Ok(self.store_event(gateway, &event, &payload).await?)
    }

    /// Applies a hint: asks Daraja how the request ended and settles it (once).
    pub(super) async fn confirm_payment(
        &self,
        gateway: &dyn PaymentGateway,
        pending: &PendingEvent,
        request_id: &str,
        receipt: Option<&str>,
    ) -> Result<Outcome, Failure> {
        let Some(payment) = self.store.mobile_payment(request_id).await? else {
            return self.finish(pending, "unknown_payment", None).await;
        };
        if payment.state != PaymentState::Pending {
            return self.finish(pending, "already_settled", None).await;
        }
        // A success callback's receipt, from this hint or an earlier one.
        let receipt = receipt.or(payment.receipt.as_deref());
        let status = gateway.payment_status(request_id).await?;
        let now = Utc::now();
        let user = &payment.user_id;
        let mut tx = self.store.begin().await?;
        let stored = tx.lock_subscription(user).await?;
        let (state, reason, outcome) = match &status {
            PaymentStatus::Pending => {
                return Err(Failure::Temporary(
                    "the payer has not answered the M-Pesa prompt yet".into(),
                ));
            }
            PaymentStatus::Paid => (PaymentState::Paid, None, "paid"),
            // The callback said paid (with a receipt) and the query, which can lag right after
            // completion, says otherwise: ask again later rather than fail a paid request (the
            // poller flags it for support if it never agrees).
            PaymentStatus::Failed { reason, .. }
                if receipt.is_some() && pending.attempts + 1 < CONTRADICTED_ATTEMPTS =>
            {
                return Err(Failure::Temporary(format!(
                    "the STK query says \"{reason}\" but the callback reported a payment; asking again"
                )));
            }
            PaymentStatus::Failed { reason, .. } => (
                PaymentState::Failed,
                Some(reason.as_str()),
                "payment_failed",
            ),
        };
        let settled = Settled {
            state,
            reason,
            receipt: if state == PaymentState::Paid {
                receipt
            } else {
                None
            },
            now,
        };
        let Some(payment) = tx.settle_mobile_payment(request_id, &settled).await? else {
            drop(tx);
            return self.finish(pending, "already_settled", None).await;
        };
        let amount = format_amount(payment.amount, &payment.currency);
        let details = json!({ "provider": "mpesa", "checkout_request_id": request_id,
            "tier": payment.tier.as_str(), "amount": payment.amount, "currency": payment.currency });
        if let PaymentStatus::Failed { code, reason } = &status {
            tracing::info!(code = %code, "M-Pesa payment failed");
            if receipt.is_some() {
                // A success callback the query never agreed with: forged, or M-Pesa's own
                // mistake. Failed on the query's word, and flagged.
                tracing::error!(user_id = %user, "M-Pesa success callback contradicted by the STK query; flagged");
                tx.log_activity(
                    user,
                    &Activity::new(
                        "subscription.needs_attention",
                        format!("M-Pesa reported a payment of {amount} that its status query does not confirm; support will check it"),
                        details.clone(),
                    ),
                )
                .await?;
            }
            tx.log_activity(
                user,
                &Activity::new(
                    "payment.failed",
                    format!("M-Pesa payment of {amount} failed: {reason}"),
                    details,
                ),
            )
            .await?;
        } else if stored.is_live(now) && stored.provider != Some(PaymentProvider::Mpesa) {
            // A Stripe or PayPal subscription started after the push was sent: it is not
            // replaced. The payment is recorded and flagged for a refund by support.
            tracing::error!(user_id = %user, "M-Pesa payment confirmed while another subscription is live; flagged");
            tx.save_invoice(&mpesa_invoice(&payment, request_id, receipt, None), now)
                .await?;
            tx.log_activity(
                user,
                &Activity::new(
                    "subscription.needs_attention",
                    format!("an M-Pesa payment of {amount} arrived while another subscription is live; it was not applied and needs a refund"),
                    details,
                ),
            )
            .await?;
        } else {
            let paid = tx.prepaid_periods(user, now).await?;
            let Paid {
                period,
                subscription: next,
                activity: entry,
            } = paid_period(&stored, &paid, &payment, now);
            tx.save_prepaid_period(&period).await?;
            if next != stored {
                tx.save_subscription(&next).await?;
            }
            tx.save_invoice(
                &mpesa_invoice(
                    &payment,
                    request_id,
                    receipt,
                    Some((Some(period.start), Some(period.end))),
                ),
                now,
            )
            .await?;
            let receipt_text = receipt
                .map(|r| format!(", receipt {r}"))
                .unwrap_or_default();
            tx.log_activity(
                user,
                &Activity::new(
                    "payment.succeeded",
                    format!("payment of {amount} received with M-Pesa{receipt_text}"),
                    details,
                ),
            )
            .await?;
            tx.log_activity(user, &entry).await?;
        }
        if !tx
            .finish_event(pending.provider, &pending.event_id, outcome, now)
            .await?
        {
            return Ok("duplicate");
        }
        tx.commit().await?;
        Ok(outcome)
    }
}

type Period = (Option<chrono::DateTime<Utc>>, Option<chrono::DateTime<Utc>>);

/// The invoice of a confirmed payment: numbered by its M-Pesa receipt when the callback gave
/// one, else by the request.
fn mpesa_invoice(
    payment: &crate::domain::prepaid::MobilePayment,
    request_id: &str,
    receipt: Option<&str>,
    period: Option<Period>,
) -> Invoice {
    let (period_start, period_end) = period.unwrap_or((None, None));
    Invoice {
        user_id: payment.user_id.clone(),
        provider: PaymentProvider::Mpesa,
        provider_invoice_id: receipt.unwrap_or(request_id).to_string(),
        provider_subscription_id: Some(request_id.to_string()),
        amount_due: payment.amount,
        amount_paid: payment.amount,
        currency: payment.currency.clone(),
        status: InvoiceStatus::Paid,
        hosted_invoice_url: None,
        invoice_pdf_url: None,
        period_start,
        period_end,
        created_at: Utc::now(),
    }
}

pub(super) fn pending_precondition(
    waiting: &crate::domain::prepaid::MobilePayment,
) -> BillingError {
    let minutes = (Utc::now() - waiting.created_at).num_minutes().max(0);
    BillingError::Precondition(format!(
        "an M-Pesa payment request sent {minutes} min ago is still waiting on your phone; answer it (or let it expire) before asking again"
    ))
}

/// Where a checkout the payer finishes on the phone stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckoutStatus {
    pub state: CheckoutState,
    pub reason: Option<String>,
    pub tier: crate::domain::Tier,
    pub provider: PaymentProvider,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckoutState {
    Pending,
    Paid,
    Cancelled,
    TimedOut,
    Failed,
}

impl Billing {
    /// The caller's M-Pesa request `session_id` (its CheckoutRequestID), as stored now; another
    /// user's is answered as unknown.
    pub async fn checkout_status(
        &self,
        user: &UserId,
        session_id: &str,
    ) -> Result<CheckoutStatus, BillingError> {
        let unknown = || {
            BillingError::NotFound(
                "no such checkout of yours (card and PayPal checkouts come back to success_url)"
                    .into(),
            )
        };
        let payment = self
            .store
            .mobile_payment(session_id)
            .await?
            .filter(|p| &p.user_id == user)
            .ok_or_else(unknown)?;
        use crate::payments::mpesa::{FailureKind, failure_kind};
        let state = match payment.state {
            PaymentState::Pending => CheckoutState::Pending,
            PaymentState::Paid => CheckoutState::Paid,
            PaymentState::Failed => match failure_kind(payment.reason.as_deref().unwrap_or("")) {
                FailureKind::Cancelled => CheckoutState::Cancelled,
                FailureKind::TimedOut => CheckoutState::TimedOut,
                FailureKind::Other => CheckoutState::Failed,
            },
        };
        Ok(CheckoutStatus {
            state,
            reason: payment.reason.filter(|_| state != CheckoutState::Paid),
            tier: payment.tier,
            provider: PaymentProvider::Mpesa,
        })
    }
}
