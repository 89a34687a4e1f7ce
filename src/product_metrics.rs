//! The numbers the business watches, on `/metrics` beside the technical ones. Every label is
//! from a closed set (tiers, providers, outcomes), so no series can grow without bound.
//!
//! Subscription and payment numbers are derived from what a billing transaction saves and are
//! counted only once it commits (see [`Pending`]), so an event retried after a rollback is
//! never counted twice:
//! - `subscription_conversions_total{from,to,provider}`: the plan held went up (FREE -> PRO,
//!   PRO -> PREMIUM, FREE -> PREMIUM);
//! - `subscription_downgrades_total{from,to,provider}`: down to a lower paid plan;
//! - `subscription_cancellations_total{provider}`: a cancellation was scheduled;
//! - `subscription_churn_total{tier,provider}`: a paid plan ended (back to FREE);
//! - `payments_failed_total{provider}`: a payment failed.
//!
//! Elsewhere: `integration_connection_attempts_total{provider}` and
//! `integration_connections_total{provider,outcome}` (connections and OAuth callbacks),
//! `sync_jobs_finished_total{provider,state}` (sync outcomes), and
//! `webhook_processing_seconds{provider}` (a histogram: receipt to applied).

use std::collections::HashMap;

use crate::domain::{
    Subscription, SubscriptionStatus, Tier, UserId, activity::Activity, catalogue::ProviderId,
    subscription::PaymentProvider,
};

/// Buckets of `webhook_processing_seconds`, in seconds.
pub const WEBHOOK_SECONDS_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// A product event worth counting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    Conversion {
        from: Tier,
        to: Tier,
        provider: &'static str,
    },
    Downgrade {
        from: Tier,
        to: Tier,
        provider: &'static str,
    },
    CancellationScheduled {
        provider: &'static str,
    },
    Churn {
        tier: Tier,
        provider: &'static str,
    },
    PaymentFailed {
        provider: &'static str,
    },
}

impl Signal {
    pub fn emit(&self) {
        match self {
            Self::Conversion { from, to, provider } => metrics::counter!(
                "subscription_conversions_total",
                "from" => from.as_str(), "to" => to.as_str(), "provider" => *provider
            )
            .increment(1),
            Self::Downgrade { from, to, provider } => metrics::counter!(
                "subscription_downgrades_total",
                "from" => from.as_str(), "to" => to.as_str(), "provider" => *provider
            )
            .increment(1),
            Self::CancellationScheduled { provider } => {
                metrics::counter!("subscription_cancellations_total", "provider" => *provider)
                    .increment(1)
            }
            Self::Churn { tier, provider } => metrics::counter!(
                "subscription_churn_total", "tier" => tier.as_str(), "provider" => *provider
            )
            .increment(1),
            Self::PaymentFailed { provider } => {
                metrics::counter!("payments_failed_total", "provider" => *provider).increment(1)
            }
        }
    }
}

/// The plan a stored subscription holds: its paid tier while the provider keeps it going
/// (active, trialing, or past due within the retries), FREE otherwise. Time-based ends arrive
/// as a status change, so this needs no clock.
pub fn plan(s: &Subscription) -> Tier {
    match s.status {
        SubscriptionStatus::Active | SubscriptionStatus::Trialing | SubscriptionStatus::PastDue => {
            s.tier
        }
        _ => Tier::Free,
    }
}

fn provider_label(p: Option<PaymentProvider>) -> &'static str {
    p.map_or("none", PaymentProvider::as_str)
}

/// What saving `after` over `before` means for the business.
pub fn transitions(before: &Subscription, after: &Subscription) -> Vec<Signal> {
    let provider = provider_label(after.provider.or(before.provider));
    let (from, to) = (plan(before), plan(after));
    let mut signals = Vec::new();
    if to > from {
        signals.push(Signal::Conversion { from, to, provider });
    } else if to < from {
        if to.is_paid() {
            signals.push(Signal::Downgrade { from, to, provider });
        } else {
            signals.push(Signal::Churn {
                tier: from,
                provider,
            });
        }
    }
    let scheduled = |s: &Subscription| s.cancel_at_period_end || s.cancel_at.is_some();
    if to.is_paid() && scheduled(after) && !scheduled(before) {
        signals.push(Signal::CancellationScheduled { provider });
    }
    signals
}

/// What an activity entry written in a billing transaction means for the business.
pub fn from_activity(activity: &Activity) -> Option<Signal> {
    (activity.kind == "payment.failed").then(|| Signal::PaymentFailed {
        provider: activity
            .details
            .get("provider")
            .and_then(|p| p.as_str())
            .and_then(|p| p.parse::<PaymentProvider>().ok())
            .map_or("unknown", PaymentProvider::as_str),
    })
}

/// A user started connecting `provider` (ConnectIntegration, or StartOAuth for OAuth).
pub fn connection_attempted(provider: ProviderId) {
    metrics::counter!("integration_connection_attempts_total", "provider" => provider.as_str())
        .increment(1);
}

/// A connection finished: `outcome` is `connected` or a short error code.
pub fn connection_finished(provider: ProviderId, outcome: &'static str) {
    metrics::counter!("integration_connections_total", "provider" => provider.as_str(), "outcome" => outcome)
        .increment(1);
}

/// Signals of one billing transaction, emitted when it commits and dropped with a rollback.
#[derive(Debug, Default)]
pub struct Pending {
    /// Each user's subscription as the transaction last saw it.
    seen: HashMap<UserId, Subscription>,
    signals: Vec<Signal>,
}

impl Pending {
    /// The transaction locked (read) this subscription.
    pub fn locked(&mut self, s: &Subscription) {
        self.seen
            .entry(s.user_id.clone())
            .or_insert_with(|| s.clone());
    }

    /// The transaction saves this subscription.
    pub fn saved(&mut self, s: &Subscription) {
        if let Some(before) = self.seen.get(&s.user_id) {
            self.signals.extend(transitions(before, s));
        }
        self.seen.insert(s.user_id.clone(), s.clone());
    }

    /// The transaction writes this activity entry.
    pub fn logged(&mut self, activity: &Activity) {
        self.signals.extend(from_activity(activity));
    }

    /// The transaction committed.
    pub fn emit(self) {
        for signal in &self.signals {
            signal.emit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sub(tier: Tier, status: SubscriptionStatus) -> Subscription {
        Subscription {
            tier,
            status,
            provider: Some(PaymentProvider::Stripe),
            ..Subscription::free(UserId::parse("u1").unwrap_or_else(|e| panic!("{e}")))
        }
    }

    #[test]
    fn upgrades_are_conversions_and_an_end_is_churn() {
        let free = Subscription::free(UserId::parse("u1").unwrap_or_else(|e| panic!("{e}")));
        let pro = sub(Tier::Pro, SubscriptionStatus::Active);
        let premium = sub(Tier::Premium, SubscriptionStatus::Active);
        let ended = sub(Tier::Premium, SubscriptionStatus::Canceled);
        assert_eq!(
            transitions(&free, &pro),
            [Signal::Conversion {
                from: Tier::Free,
                to: Tier::Pro,
                provider: "stripe"
            }]
        );
        assert_eq!(
            transitions(&pro, &premium),
            [Signal::Conversion {
                from: Tier::Pro,
                to: Tier::Premium,
                provider: "stripe"
            }]
        );
        assert_eq!(
            transitions(&premium, &pro),
            [Signal::Downgrade {
                from: Tier::Premium,
                to: Tier::Pro,
                provider: "stripe"
            }]
        );
        assert_eq!(
            transitions(&premium, &ended),
            [Signal::Churn {
                tier: Tier::Premium,
                provider: "stripe"
            }]
        );
        assert!(transitions(&pro, &pro).is_empty());
        // Incomplete is not yet a plan; past due still is.
        let incomplete = sub(Tier::Pro, SubscriptionStatus::Incomplete);
        assert!(transitions(&free, &incomplete).is_empty());
        assert!(transitions(&pro, &sub(Tier::Pro, SubscriptionStatus::PastDue)).is_empty());
    }

    #[test]
    fn a_scheduled_cancellation_counts_once_and_only_on_a_paid_plan() {
        let pro = sub(Tier::Pro, SubscriptionStatus::Active);
        let cancelling = Subscription {
            cancel_at_period_end: true,
            ..pro.clone()
        };
        assert_eq!(
            transitions(&pro, &cancelling),
            [Signal::CancellationScheduled { provider: "stripe" }]
        );
        assert!(transitions(&cancelling, &cancelling).is_empty());
    }

    #[test]
    fn the_transaction_counts_from_the_first_state_it_saw() {
        let mut pending = Pending::default();
        let free = Subscription::free(UserId::parse("u1").unwrap_or_else(|e| panic!("{e}")));
        let pro = sub(Tier::Pro, SubscriptionStatus::Active);
        pending.locked(&free);
        pending.locked(&pro); // a second lock in one transaction does not move the start
        pending.saved(&pro);
        pending.saved(&pro);
        assert_eq!(pending.signals.len(), 1);
        pending.logged(&Activity::new(
            "payment.failed",
            "x",
            json!({ "provider": "evil\"label" }),
        ));
        assert_eq!(
            pending.signals.last(),
            Some(&Signal::PaymentFailed {
                provider: "unknown"
            })
        );
    }
}
