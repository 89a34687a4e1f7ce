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

/// A period one confirmed payment bought, at its tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrepaidPeriod {
    /// The payment's CheckoutRequestID.
    pub request_id: String,
    pub tier: Tier,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// What a confirmed payment bought and what the subscription becomes.
#[derive(Debug, Clone, PartialEq)]
pub struct Paid {
    /// The payment's own period (recorded with it and on its invoice).
    pub period: PrepaidPeriod,
    /// The subscription: the run of periods of one tier that holds `now`.
    pub subscription: Subscription,
    pub activity: Activity,
}

/// The subscription after a confirmed payment of `payment` at `now`, and what to log.
///
/// Periods run one after another, each at the tier it was paid for: a payment made while
/// periods are still paid for starts when the last of them ends (PRO days stay PRO, PREMIUM
/// days stay PREMIUM), otherwise now. `paid` are the periods paid before, ending after `now`;
/// a running period older than that record (the stored subscription's) is kept as it is.
/// A period never renews by itself: `cancel_at_period_end` is set, so access ends at its end
/// unless the next paid period follows (`mpesa_poller` moves the subscription on to it).
pub fn paid_period(
    stored: &Subscription,
    paid: &[PrepaidPeriod],
    payment: &MobilePayment,
    now: DateTime<Utc>,
) -> Paid {
    let running = stored.provider == Some(PaymentProvider::Mpesa)
        && stored.tier.is_paid()
        && stored.status == SubscriptionStatus::Active
        && stored.current_period_end.is_some_and(|end| end > now);
    let mut periods: Vec<PrepaidPeriod> = paid.iter().filter(|p| p.end > now).cloned().collect();
    if running
        && let (Some(start), Some(end)) = (stored.current_period_start, stored.current_period_end)
        && !periods.iter().any(|p| p.start <= start && p.end >= end)
    {
        periods.push(PrepaidPeriod {
            request_id: stored.provider_subscription_id.clone().unwrap_or_default(),
            tier: stored.tier,
            start,
            end,
        });
    }
    let start = periods.iter().map(|p| p.end).max().unwrap_or(now).max(now);
    let period = PrepaidPeriod {
        request_id: payment.request_id.clone().unwrap_or_default(),
        tier: payment.tier,
        start,
        end: start + PERIOD,
    };
    periods.push(period.clone());
    let subscription = current_run(stored, &periods, now).unwrap_or_else(|| stored.clone());
    let amount = format_amount(payment.amount, &payment.currency);
    let (kind, message) = if !running {
        (
            "subscription.started",
            format!(
                "{} paid with M-Pesa ({amount}) until {}",
                payment.tier,
                period.end.date_naive()
            ),
        )
    } else if subscription.current_period_end == Some(period.end) {
        (
            "subscription.extended",
            format!(
                "{} paid with M-Pesa ({amount}) until {}",
                payment.tier,
                period.end.date_naive()
            ),
        )
    } else {
        (
            "subscription.queued",
            format!(
                "{} paid with M-Pesa ({amount}) from {} until {}, after the days already paid",
                payment.tier,
                period.start.date_naive(),
                period.end.date_naive()
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
            "period_start": period.start.to_rfc3339(),
            "period_end": period.end.to_rfc3339(),
        }),
    );
    Paid {
        period,
        subscription,
        activity,
    }
}

/// The subscription of the paid period that holds `now`, joined with the periods of the same
/// tier that follow it without a gap; `None` when no paid period holds `now`.
pub fn current_run(
    stored: &Subscription,
    periods: &[PrepaidPeriod],
    now: DateTime<Utc>,
) -> Option<Subscription> {
    let mut ordered: Vec<&PrepaidPeriod> = periods.iter().collect();
    ordered.sort_by_key(|p| p.start);
    let first = ordered.iter().position(|p| p.start <= now && now < p.end)?;
    let mut last = ordered[first];
    for next in &ordered[first + 1..] {
        if next.tier != last.tier || next.start > last.end {
            break;
        }
        last = next;
    }
    let first = ordered[first];
    Some(Subscription {
        user_id: stored.user_id.clone(),
        tier: first.tier,
        status: SubscriptionStatus::Active,
        provider: Some(PaymentProvider::Mpesa),
        provider_customer_id: Some(stored.user_id.as_str().to_string()),
        provider_subscription_id: Some(last.request_id.clone()),
        current_period_start: Some(first.start),
        current_period_end: Some(last.end),
        cancel_at_period_end: true,
        cancel_at: None,
        past_due_since: None,
        state_as_of: Some(now),
        terms: Box::new(super::pricing::Terms {
            currency: Some("kes".into()),
            ..Default::default()
        }),
        overage: false,
    })
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

    fn pay(stored: &Subscription, paid: &mut Vec<PrepaidPeriod>, tier: Tier, day: i64) -> Paid {
        let out = paid_period(stored, paid, &payment(tier), t(day));
        paid.push(out.period.clone());
        out
    }

    #[test]
    fn a_first_payment_starts_a_period_and_the_next_extends_it() {
        let free = Subscription::free(UserId::parse("u1").unwrap_or_else(|e| panic!("{e}")));
        let mut paid = Vec::new();
        let first = pay(&free, &mut paid, Tier::Pro, 0);
        assert_eq!(first.activity.kind, "subscription.started");
        let sub = &first.subscription;
        assert_eq!(sub.current_period_end, Some(t(30)));
        assert!(sub.cancel_at_period_end);
        assert_eq!(sub.effective_tier(t(29), Duration::days(7)), Tier::Pro);
        assert_eq!(sub.effective_tier(t(30), Duration::days(7)), Tier::Free);
        // PRO paid again on day 10: the period runs to day 60, the start is kept.
        let second = pay(sub, &mut paid, Tier::Pro, 10);
        assert_eq!(second.activity.kind, "subscription.extended");
        let sub = &second.subscription;
        assert_eq!(
            (sub.current_period_start, sub.current_period_end, sub.tier),
            (Some(t(0)), Some(t(60)), Tier::Pro)
        );
        // Paid after it ended: a new period from now.
        let third = pay(sub, &mut paid, Tier::Pro, 70);
        assert_eq!(third.activity.kind, "subscription.started");
        assert_eq!(third.subscription.current_period_end, Some(t(100)));
    }

    /// Eleven PRO periods then one PREMIUM: PRO for 330 days, then PREMIUM for 30 (it used to
    /// turn all 360 days into PREMIUM); PRO paid during PREMIUM days waits for them to end.
    #[test]
    fn each_period_keeps_its_tier_in_order() {
        let free = Subscription::free(UserId::parse("u1").unwrap_or_else(|e| panic!("{e}")));
        let mut paid = Vec::new();
        let mut sub = free;
        for _ in 0..11 {
            sub = pay(&sub, &mut paid, Tier::Pro, 0).subscription;
        }
        let premium = pay(&sub, &mut paid, Tier::Premium, 0);
        assert_eq!(premium.activity.kind, "subscription.queued");
        assert_eq!((premium.period.start, premium.period.end), (t(330), t(360)));
        let sub = premium.subscription;
        assert_eq!(
            (sub.tier, sub.current_period_end),
            (Tier::Pro, Some(t(330)))
        );
        let at = |day| current_run(&sub, &paid, t(day)).map(|s| (s.tier, s.current_period_end));
        assert_eq!(at(329), Some((Tier::Pro, Some(t(330)))));
        assert_eq!(at(330), Some((Tier::Premium, Some(t(360)))));
        assert_eq!(at(360), None);
        // On a PREMIUM day, PRO is paid: PREMIUM stays until its end, PRO follows.
        let on_premium = current_run(&sub, &paid, t(340)).unwrap_or_else(|| panic!("none"));
        let pro = pay(&on_premium, &mut paid, Tier::Pro, 340);
        assert_eq!((pro.period.start, pro.period.end), (t(360), t(390)));
        assert_eq!(pro.subscription.tier, Tier::Premium);
        assert_eq!(pro.subscription.current_period_end, Some(t(360)));
    }
}
