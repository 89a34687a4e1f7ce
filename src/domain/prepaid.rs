//! Prepaid periods (M-Pesa): one confirmed payment buys one 30-day period at its tier. Pure
//! rules: no I/O, no clock.

use chrono::{DateTime, Duration, Utc};
use serde_json::json;

use super::{
    Subscription, SubscriptionStatus, Tier, activity::Activity, invoice::format_amount,
    subscription::PaymentProvider,
};

/// The length of one paid period.
pub const PERIOD: Duration = Duration::days(30);

/// A payment request's state as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentState {
    Pending,
    Paid,
    Failed,
}

impl PaymentState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Paid => "paid",
            Self::Failed => "failed",
        }
    }
}

/// A stored M-Pesa payment request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MobilePayment {
    pub id: String,
    pub user_id: super::UserId,
    pub tier: Tier,
    /// Minor units (cents of a shilling).
    pub amount: i64,
    pub currency: String,
    /// Daraja's CheckoutRequestID; `None` until the push was accepted.
    pub request_id: Option<String>,
    pub state: PaymentState,
    pub reason: Option<String>,
    pub receipt: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// The subscription after a confirmed payment of `payment` at `now`, and what to log.
///
/// An unexpired prepaid period is extended from its end; otherwise the period starts now. The
/// tier paid for applies at once (an upgrade is not made to wait for the end of the period).
/// The period never renews by itself: `cancel_at_period_end` is set, so access ends at its end.
pub fn paid_period(
    stored: &Subscription,
    payment: &MobilePayment,
    now: DateTime<Utc>,
) -> (Subscription, Activity) {
    let running = stored.provider == Some(PaymentProvider::Mpesa)
        && stored.tier.is_paid()
        && stored.status == SubscriptionStatus::Active
        && stored.current_period_end.is_some_and(|end| end > now);
    let (start, from) = match (running, stored.current_period_end) {
        (true, Some(end)) => (stored.current_period_start.unwrap_or(now), end),
        _ => (now, now),
    };
    let end = from + PERIOD;
    let next = Subscription {
        user_id: stored.user_id.clone(),
        tier: payment.tier,
        status: SubscriptionStatus::Active,
        provider: Some(PaymentProvider::Mpesa),
        provider_customer_id: Some(stored.user_id.as_str().to_string()),
        provider_subscription_id: payment.request_id.clone(),
        current_period_start: Some(start),
        current_period_end: Some(end),
        cancel_at_period_end: true,
        cancel_at: None,
        past_due_since: None,
        state_as_of: Some(now),
    };
    let amount = format_amount(payment.amount, &payment.currency);
    let (kind, message) = if running {
        (
            "subscription.extended",
            format!(
                "{} paid with M-Pesa ({amount}) until {}",
                payment.tier,
                end.date_naive()
            ),
        )
    } else {
        (
            "subscription.started",
            format!(
                "{} paid with M-Pesa ({amount}) until {}",
                payment.tier,
                end.date_naive()
            ),
        )
    };
    let activity = Activity::new(
        kind,
        message,
        json!({
            "provider": "mpesa",
            "checkout_request_id": payment.request_id,
            "receipt": payment.receipt,
            "tier": payment.tier.as_str(),
            "period_end": end.to_rfc3339(),
        }),
    );
    (next, activity)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::UserId;

    fn t(days: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default() + Duration::days(days)
    }

    fn payment(tier: Tier) -> MobilePayment {
        MobilePayment {
            id: "p".into(),
            user_id: UserId::parse("u1").unwrap_or_else(|e| panic!("{e}")),
            tier,
            amount: 150_000,
            currency: "kes".into(),
            request_id: Some("ws_CO_1".into()),
            state: PaymentState::Pending,
            reason: None,
            receipt: Some("R1".into()),
            created_at: t(0),
        }
    }

    #[test]
    fn a_first_payment_starts_a_period_and_the_next_extends_it() {
        let free = Subscription::free(UserId::parse("u1").unwrap_or_else(|e| panic!("{e}")));
        let (first, entry) = paid_period(&free, &payment(Tier::Pro), t(0));
        assert_eq!(entry.kind, "subscription.started");
        assert_eq!(first.current_period_end, Some(t(30)));
        assert!(first.cancel_at_period_end);
        assert_eq!(first.effective_tier(t(29), Duration::days(7)), Tier::Pro);
        assert_eq!(first.effective_tier(t(30), Duration::days(7)), Tier::Free);
        // Paid again on day 10: the period runs to day 60, the start is kept.
        let (second, entry) = paid_period(&first, &payment(Tier::Premium), t(10));
        assert_eq!(entry.kind, "subscription.extended");
        assert_eq!(
            (
                second.current_period_start,
                second.current_period_end,
                second.tier
            ),
            (Some(t(0)), Some(t(60)), Tier::Premium)
        );
        // Paid after it ended: a new period from now.
        let (third, entry) = paid_period(&second, &payment(Tier::Pro), t(70));
        assert_eq!(entry.kind, "subscription.started");
        assert_eq!(third.current_period_end, Some(t(100)));
    }
}
