//! Subscriptions and the one rule that decides which tier a user is entitled to now.

use std::{fmt, str::FromStr};

use chrono::{DateTime, Duration, Utc};

use super::{Tier, UserId};

/// Payment state, as the payment provider reports it (Stripe's vocabulary).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubscriptionStatus {
    Active,
    Trialing,
    PastDue,
    Canceled,
    Incomplete,
    IncompleteExpired,
    Unpaid,
    Paused,
}

impl SubscriptionStatus {
    pub const ALL: [SubscriptionStatus; 8] = [
        Self::Active,
        Self::Trialing,
        Self::PastDue,
        Self::Canceled,
        Self::Incomplete,
        Self::IncompleteExpired,
        Self::Unpaid,
        Self::Paused,
    ];

    /// The name stored in the database (and used by Stripe).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Trialing => "trialing",
            Self::PastDue => "past_due",
            Self::Canceled => "canceled",
            Self::Incomplete => "incomplete",
            Self::IncompleteExpired => "incomplete_expired",
            Self::Unpaid => "unpaid",
            Self::Paused => "paused",
        }
    }
}

impl fmt::Display for SubscriptionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored status name that this version does not know.
#[derive(Debug, thiserror::Error)]
#[error("unknown subscription status {0:?}")]
pub struct UnknownStatus(pub String);

impl FromStr for SubscriptionStatus {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_string()))
    }
}

/// Who takes the money.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PaymentProvider {
    Stripe,
    Paypal,
    Mpesa,
}

impl PaymentProvider {
    pub const ALL: [PaymentProvider; 3] = [Self::Stripe, Self::Paypal, Self::Mpesa];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stripe => "stripe",
            Self::Paypal => "paypal",
            Self::Mpesa => "mpesa",
        }
    }

    /// The provider's name as people write it.
    pub fn display_name(self) -> &'static str {
        match self {
            Self::Stripe => "Stripe",
            Self::Paypal => "PayPal",
            Self::Mpesa => "M-Pesa",
        }
    }
}

/// A stored provider name that this version does not know.
#[derive(Debug, thiserror::Error)]
#[error("unknown payment provider {0:?}")]
pub struct UnknownPaymentProvider(pub String);

impl FromStr for PaymentProvider {
    type Err = UnknownPaymentProvider;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnknownPaymentProvider(s.to_string()))
    }
}

/// How long a PAST_DUE subscription keeps its tier after the first failed payment, unless configured.
pub const DEFAULT_PAST_DUE_GRACE: Duration = Duration::days(7);

/// When access ends for a subscription cancelled at its period end and/or on a fixed date
/// (Stripe's `cancel_at`): the earlier of the two; `None` when neither is scheduled.
pub fn access_ends_at(
    cancel_at_period_end: bool,
    current_period_end: Option<DateTime<Utc>>,
    cancel_at: Option<DateTime<Utc>>,
) -> Option<DateTime<Utc>> {
    let at_period_end = cancel_at_period_end.then_some(current_period_end).flatten();
    match (cancel_at, at_period_end) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A user's subscription as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub user_id: UserId,
    pub tier: Tier,
    pub status: SubscriptionStatus,
    pub provider: Option<PaymentProvider>,
    pub provider_customer_id: Option<String>,
    pub provider_subscription_id: Option<String>,
    pub current_period_start: Option<DateTime<Utc>>,
    pub current_period_end: Option<DateTime<Utc>>,
    pub cancel_at_period_end: bool,
    /// An explicit end date set at the provider (Stripe's `cancel_at`).
    pub cancel_at: Option<DateTime<Utc>>,
    /// When the first payment of the current failure streak failed.
    pub past_due_since: Option<DateTime<Utc>>,
    /// The instant this state is known to have been current at the provider (see
    /// `domain::freshness`); `None` before the provider was ever heard from.
    pub state_as_of: Option<DateTime<Utc>>,
    /// Interval, currency and trial, as the provider reports them (boxed: rarely read, and
    /// the subscription moves through many enums).
    pub terms: Box<super::pricing::Terms>,
    /// The user opted in to extra cards beyond the plan's limit (overage).
    pub overage: bool,
}

impl Subscription {
    /// The subscription of a user who never paid: FREE and ACTIVE.
    pub fn free(user_id: UserId) -> Self {
        Self {
            user_id,
            tier: Tier::Free,
            status: SubscriptionStatus::Active,
            provider: None,
            provider_customer_id: None,
            provider_subscription_id: None,
            current_period_start: None,
            current_period_end: None,
            cancel_at_period_end: false,
            cancel_at: None,
            past_due_since: None,
            state_as_of: None,
            terms: Default::default(),
            overage: false,
        }
    }

    /// When access to the paid tier ends because of a pending or past cancellation.
    pub fn access_ends_at(&self) -> Option<DateTime<Utc>> {
        access_ends_at(
            self.cancel_at_period_end,
            self.current_period_end,
            self.cancel_at,
        )
    }

    /// When a PAST_DUE subscription loses its paid tier unless the failed invoice is paid.
    pub fn grace_ends_at(&self, past_due_grace: Duration) -> Option<DateTime<Utc>> {
        match self.status {
            SubscriptionStatus::PastDue if self.tier.is_paid() => {
                self.past_due_since.map(|since| since + past_due_grace)
            }
            _ => None,
        }
    }

    /// The tier the user is entitled to at `now`. The single place this rule lives.
    pub fn effective_tier(&self, now: DateTime<Utc>, past_due_grace: Duration) -> Tier {
        if !self.tier.is_paid() {
            return Tier::Free;
        }
        if self.access_ends_at().is_some_and(|end| end <= now) {
            return Tier::Free;
        }
        match self.status {
            SubscriptionStatus::Active | SubscriptionStatus::Trialing => self.tier,
            SubscriptionStatus::PastDue => match self.past_due_since {
                Some(since) if since + past_due_grace <= now => Tier::Free,
                _ => self.tier,
            },
            SubscriptionStatus::Canceled
            | SubscriptionStatus::Incomplete
            | SubscriptionStatus::IncompleteExpired
            | SubscriptionStatus::Unpaid
            | SubscriptionStatus::Paused => Tier::Free,
        }
    }
}

/// What happens when a user ends up with a second live subscription (paid in two tabs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DuplicatePolicy {
    /// Cancel the newer one at once and refund its payment.
    Refund,
    /// Keep both at the provider and flag it for support.
    Flag,
}

impl std::str::FromStr for DuplicatePolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "refund" => Ok(Self::Refund),
            "flag" => Ok(Self::Flag),
            other => Err(format!("`{other}` is neither `refund` nor `flag`")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default()
    }

    fn paid(status: SubscriptionStatus) -> Subscription {
        Subscription {
            tier: Tier::Pro,
            status,
            provider: Some(PaymentProvider::Stripe),
            current_period_start: Some(now() - Duration::days(10)),
            current_period_end: Some(now() + Duration::days(20)),
            ..Subscription::free(UserId::parse("u1").unwrap_or_else(|e| panic!("{e}")))
        }
    }

    #[test]
    fn active_and_trialing_keep_their_tier() {
        for status in [SubscriptionStatus::Active, SubscriptionStatus::Trialing] {
            assert_eq!(
                paid(status).effective_tier(now(), DEFAULT_PAST_DUE_GRACE),
                Tier::Pro
            );
        }
    }

    #[test]
    fn past_due_keeps_the_tier_only_within_grace() {
        let mut sub = paid(SubscriptionStatus::PastDue);
        sub.past_due_since = Some(now() - Duration::days(6));
        assert_eq!(sub.effective_tier(now(), DEFAULT_PAST_DUE_GRACE), Tier::Pro);
        sub.past_due_since = Some(now() - Duration::days(7));
        assert_eq!(
            sub.effective_tier(now(), DEFAULT_PAST_DUE_GRACE),
            Tier::Free
        );
    }

    #[test]
    fn ended_or_unpaid_states_are_free() {
        for status in [
            SubscriptionStatus::Canceled,
            SubscriptionStatus::Incomplete,
            SubscriptionStatus::IncompleteExpired,
            SubscriptionStatus::Unpaid,
            SubscriptionStatus::Paused,
        ] {
            assert_eq!(
                paid(status).effective_tier(now(), DEFAULT_PAST_DUE_GRACE),
                Tier::Free
            );
        }
    }

    #[test]
    fn cancel_at_period_end_is_free_once_the_period_is_over() {
        let mut sub = paid(SubscriptionStatus::Active);
        sub.cancel_at_period_end = true;
        assert_eq!(sub.effective_tier(now(), DEFAULT_PAST_DUE_GRACE), Tier::Pro);
        assert_eq!(sub.access_ends_at(), sub.current_period_end);
        let after = now() + Duration::days(21);
        assert_eq!(
            sub.effective_tier(after, DEFAULT_PAST_DUE_GRACE),
            Tier::Free
        );
    }

    #[test]
    fn cancel_at_timestamp_ends_access_too() {
        let mut sub = paid(SubscriptionStatus::Active);
        sub.cancel_at = Some(now() - Duration::seconds(1));
        assert_eq!(
            sub.effective_tier(now(), DEFAULT_PAST_DUE_GRACE),
            Tier::Free
        );
    }

    #[test]
    fn status_names_round_trip() {
        for s in SubscriptionStatus::ALL {
            assert_eq!(s.as_str().parse::<SubscriptionStatus>().ok(), Some(s));
        }
    }
}
