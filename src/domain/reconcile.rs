//! Merging the payment provider's current view of a subscription into ours.
//!
//! Webhook events are only triggers: the provider's subscription is fetched again and merged
//! here, under a row lock, so duplicated, late or reordered events can never move the stored
//! state backwards. Pure functions: no I/O, no clock.

use chrono::{DateTime, Utc};
use serde_json::json;

use super::{
    Tier,
    activity::Activity,
    subscription::{PaymentProvider, Subscription, SubscriptionStatus},
};

/// A subscription as the payment provider reports it right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteSubscription {
    pub provider: PaymentProvider,
    pub id: String,
    pub customer_id: String,
    pub status: SubscriptionStatus,
    /// The price of its (single) item.
    pub price_id: Option<String>,
    /// The tier of its price; `None` when the price is not one of ours.
    pub tier: Option<Tier>,
    pub current_period_start: Option<DateTime<Utc>>,
    pub current_period_end: Option<DateTime<Utc>>,
    pub cancel_at_period_end: bool,
    pub cancel_at: Option<DateTime<Utc>>,
    /// Interval, currency and trial.
    pub terms: super::pricing::Terms,
}

impl RemoteSubscription {
    /// When access ends because of a scheduled cancellation, if one is scheduled.
    pub fn access_ends_at(&self) -> Option<DateTime<Utc>> {
        super::subscription::access_ends_at(
            self.cancel_at_period_end,
            self.current_period_end,
            self.cancel_at,
        )
    }
}

/// What merging decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Reconciled {
    /// The stored subscription becomes `next`; `activity` says what changed (may be empty).
    Apply {
        next: Subscription,
        activity: Vec<Activity>,
    },
    /// The remote subscription is not the user's current one (an old subscription's late
    /// event while a newer one is live): nothing changes.
    Ignore { reason: String },
}

/// Statuses in which a subscription still holds (or can regain) a paid tier: the user must not
/// start a second one.
pub fn is_live_status(status: SubscriptionStatus) -> bool {
    matches!(
        status,
        SubscriptionStatus::Active
            | SubscriptionStatus::Trialing
            | SubscriptionStatus::PastDue
            | SubscriptionStatus::Unpaid
            | SubscriptionStatus::Paused
    )
}

/// A subscription that still holds (or can regain) a paid tier at `at`: a live status and no
/// scheduled end before then (a cancelled PayPal subscription reads as active until the end
/// of its paid month).
pub fn is_live_at(remote: &RemoteSubscription, at: DateTime<Utc>) -> bool {
    is_live_status(remote.status) && remote.access_ends_at().is_none_or(|end| end > at)
}

impl Subscription {
    /// A paid subscription at the provider that has not ended: the one a user may change,
    /// cancel or resume, and the reason a second checkout is refused.
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        self.provider_subscription_id.is_some()
            && self.tier.is_paid()
            && is_live_status(self.status)
            && self.access_ends_at().is_none_or(|end| end > now)
    }
}

/// Merges `remote` into `stored`. `seen_at` is the earliest evidence of this state (the event's
/// creation time, or now), used to start the PAST_DUE grace period.
pub fn reconcile(
    stored: &Subscription,
    remote: &RemoteSubscription,
    seen_at: DateTime<Utc>,
) -> Reconciled {
    let same = stored.provider_subscription_id.as_deref() == Some(remote.id.as_str());
    if !same && stored.is_live(seen_at) {
        return Reconciled::Ignore {
            reason: format!(
                "subscription {} is not the user's live subscription",
                remote.id
            ),
        };
    }
    if !same && stored.provider_subscription_id.is_some() && !is_live_at(remote, seen_at) {
        return Reconciled::Ignore {
            reason: format!(
                "subscription {} has ended; it does not replace the stored one",
                remote.id
            ),
        };
    }
    // A price this service does not map to a tier is never silently FREE: the last known tier
    // stays, and the change is flagged below.
    let tier = remote.tier.unwrap_or(stored.tier);
    let past_due_since = match (
        remote.status,
        same && stored.status == SubscriptionStatus::PastDue,
    ) {
        (SubscriptionStatus::PastDue, true) => stored.past_due_since.or(Some(seen_at)),
        (SubscriptionStatus::PastDue, false) => Some(seen_at),
        _ => None,
    };
    let next = Subscription {
        user_id: stored.user_id.clone(),
        tier,
        status: remote.status,
        provider: Some(remote.provider),
        provider_customer_id: Some(remote.customer_id.clone()),
        provider_subscription_id: Some(remote.id.clone()),
        current_period_start: remote.current_period_start,
        current_period_end: remote.current_period_end,
        cancel_at_period_end: remote.cancel_at_period_end,
        cancel_at: remote.cancel_at,
        past_due_since,
        state_as_of: stored.state_as_of,
        // A provider that does not say its currency keeps the one known for this subscription.
        terms: Box::new(super::pricing::Terms {
            currency: remote
                .terms
                .currency
                .clone()
                .or_else(|| same.then(|| stored.terms.currency.clone()).flatten()),
            ..remote.terms.clone()
        }),
        // The opt-in belongs to the subscription it was made for.
        overage: same && stored.overage,
    };
    let mut activity = describe_change(stored, &next, same);
    if remote.tier.is_none() && (!same || stored.status != next.status) {
        activity.push(Activity::new(
            "subscription.needs_attention",
            format!(
                "the subscription's price {} is not one of the plans; it keeps the {} tier",
                remote.price_id.as_deref().unwrap_or("(none)"),
                next.tier
            ),
            json!({ "subscription_id": remote.id, "price_id": remote.price_id }),
        ));
    }
    Reconciled::Apply { next, activity }
}

/// The activity entries for a change from `old` to `new`.
fn describe_change(old: &Subscription, new: &Subscription, same: bool) -> Vec<Activity> {
    let mut out = Vec::new();
    let details = || {
        json!({
            "subscription_id": new.provider_subscription_id,
            "tier": new.tier.as_str(),
            "status": new.status.as_str(),
        })
    };
    let status_changed = !same || old.status != new.status;
    if status_changed {
        let (kind, message) = match new.status {
            SubscriptionStatus::Active | SubscriptionStatus::Trialing if !same => (
                "subscription.started",
                format!("{} subscription started", new.tier),
            ),
            SubscriptionStatus::Active | SubscriptionStatus::Trialing => (
                "subscription.reactivated",
                format!("{} subscription is active again", new.tier),
            ),
            SubscriptionStatus::PastDue => (
                "subscription.past_due",
                format!("{} subscription is past due: a payment failed", new.tier),
            ),
            SubscriptionStatus::Canceled => (
                "subscription.canceled",
                format!("{} subscription ended", new.tier),
            ),
            other => (
                "subscription.status_changed",
                format!("{} subscription is now {other}", new.tier),
            ),
        };
        out.push(Activity::new(kind, message, details()));
    }
    if same && old.tier != new.tier {
        out.push(Activity::new(
            "subscription.plan_changed",
            format!("plan changed from {} to {}", old.tier, new.tier),
            json!({
                "subscription_id": new.provider_subscription_id,
                "from": old.tier.as_str(),
                "to": new.tier.as_str(),
            }),
        ));
    }
    if same && new.status != SubscriptionStatus::Canceled {
        let was = old.access_ends_at();
        let now_ends = new.access_ends_at();
        match (was, now_ends) {
            (None, Some(end)) => out.push(Activity::new(
                "subscription.cancellation_scheduled",
                format!("{} subscription cancels on {}", new.tier, end.date_naive()),
                json!({ "subscription_id": new.provider_subscription_id, "access_ends_at": end.to_rfc3339() }),
            )),
            (Some(_), None) => out.push(Activity::new(
                "subscription.resumed",
                format!("{} subscription will renew", new.tier),
                details(),
            )),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use chrono::Duration;

    use super::*;
    use crate::domain::UserId;

    fn t(days: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default() + Duration::days(days)
    }

    fn user() -> Subscription {
        Subscription::free(UserId::parse("u1").unwrap_or_else(|e| panic!("{e}")))
    }

    fn remote(id: &str, status: SubscriptionStatus, tier: Tier) -> RemoteSubscription {
        RemoteSubscription {
            provider: PaymentProvider::Stripe,
            id: id.into(),
            customer_id: "cus_1".into(),
            price_id: None,
            status,
            tier: Some(tier),
            current_period_start: Some(t(-10)),
            current_period_end: Some(t(20)),
            cancel_at_period_end: false,
            cancel_at: None,
            terms: Default::default(),
        }
    }

    fn apply(
        stored: &Subscription,
        r: &RemoteSubscription,
        at: DateTime<Utc>,
    ) -> (Subscription, Vec<&'static str>) {
        match reconcile(stored, r, at) {
            Reconciled::Apply { next, activity } => {
                (next, activity.iter().map(|a| a.kind).collect())
            }
            Reconciled::Ignore { reason } => panic!("ignored: {reason}"),
        }
    }

    #[test]
    fn a_first_subscription_starts() {
        let (next, kinds) = apply(
            &user(),
            &remote("sub_1", SubscriptionStatus::Active, Tier::Pro),
            t(0),
        );
        assert_eq!(next.tier, Tier::Pro);
        assert_eq!(next.provider_subscription_id.as_deref(), Some("sub_1"));
        assert_eq!(kinds, ["subscription.started"]);
    }

    #[test]
    fn applying_the_same_state_twice_changes_nothing() {
        let r = remote("sub_1", SubscriptionStatus::Active, Tier::Pro);
        let (once, _) = apply(&user(), &r, t(0));
        let (twice, kinds) = apply(&once, &r, t(1));
        assert_eq!(once, twice);
        assert!(kinds.is_empty());
    }

    #[test]
    fn grace_starts_at_the_first_failure_and_is_kept() {
        let (active, _) = apply(
            &user(),
            &remote("sub_1", SubscriptionStatus::Active, Tier::Pro),
            t(0),
        );
        let past_due = remote("sub_1", SubscriptionStatus::PastDue, Tier::Pro);
        let (first, kinds) = apply(&active, &past_due, t(1));
        assert_eq!(first.past_due_since, Some(t(1)));
        assert_eq!(kinds, ["subscription.past_due"]);
        let (again, _) = apply(&first, &past_due, t(3));
        assert_eq!(again.past_due_since, Some(t(1)));
        let (paid, kinds) = apply(
            &again,
            &remote("sub_1", SubscriptionStatus::Active, Tier::Pro),
            t(4),
        );
        assert_eq!(paid.past_due_since, None);
        assert_eq!(kinds, ["subscription.reactivated"]);
    }

    #[test]
    fn an_old_subscription_cannot_replace_a_live_one() {
        let (live, _) = apply(
            &user(),
            &remote("sub_new", SubscriptionStatus::Active, Tier::Premium),
            t(0),
        );
        let old = remote("sub_old", SubscriptionStatus::Canceled, Tier::Pro);
        assert!(matches!(
            reconcile(&live, &old, t(1)),
            Reconciled::Ignore { .. }
        ));
    }

    #[test]
    fn a_new_subscription_replaces_an_ended_one() {
        let (ended, _) = apply(
            &user(),
            &remote("sub_old", SubscriptionStatus::Canceled, Tier::Pro),
            t(0),
        );
        let (next, kinds) = apply(
            &ended,
            &remote("sub_new", SubscriptionStatus::Active, Tier::Premium),
            t(1),
        );
        assert_eq!(next.tier, Tier::Premium);
        assert_eq!(kinds, ["subscription.started"]);
    }

    #[test]
    fn plan_changes_and_cancellation_are_described() {
        let (pro, _) = apply(
            &user(),
            &remote("sub_1", SubscriptionStatus::Active, Tier::Pro),
            t(0),
        );
        let (premium, kinds) = apply(
            &pro,
            &remote("sub_1", SubscriptionStatus::Active, Tier::Premium),
            t(1),
        );
        assert_eq!(kinds, ["subscription.plan_changed"]);
        let mut canceling = remote("sub_1", SubscriptionStatus::Active, Tier::Premium);
        canceling.cancel_at_period_end = true;
        let (scheduled, kinds) = apply(&premium, &canceling, t(2));
        assert_eq!(kinds, ["subscription.cancellation_scheduled"]);
        let (_, kinds) = apply(
            &scheduled,
            &remote("sub_1", SubscriptionStatus::Active, Tier::Premium),
            t(3),
        );
        assert_eq!(kinds, ["subscription.resumed"]);
    }

    #[test]
    fn an_unknown_price_keeps_the_tier_of_the_same_subscription() {
        let (pro, _) = apply(
            &user(),
            &remote("sub_1", SubscriptionStatus::Active, Tier::Pro),
            t(0),
        );
        let mut unknown = remote("sub_1", SubscriptionStatus::Active, Tier::Pro);
        unknown.tier = None;
        let (next, _) = apply(&pro, &unknown, t(1));
        assert_eq!(next.tier, Tier::Pro);
    }
}
