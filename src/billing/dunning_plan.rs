//! Which dunning emails a failed invoice gets (`domain::dunning::plan`), decided in the
//! transaction of the event that reported the failure: only a renewal of the user's current
//! paid subscription is dunned, from the first failure of its PAST_DUE streak.

use chrono::{DateTime, Utc};

use super::Billing;
use crate::{
    domain::{
        Subscription, SubscriptionStatus,
        dunning::{DunningStep, plan},
        subscription::PaymentProvider,
    },
    payments::RemoteInvoice,
};

impl Billing {
    /// Sets the days after a failed renewal on which reminders go out (empty: no emails).
    pub fn with_dunning(mut self, schedule: Vec<u32>) -> Self {
        self.dunning_schedule = schedule;
        self
    }

    /// The emails (step, due, end of grace) of a failed payment of `invoice`, given the user's
    /// stored subscription; none when it is not a renewal of that subscription.
    pub(super) fn dunning_plan(
        &self,
        stored: &Subscription,
        invoice: &RemoteInvoice,
        failed_at: DateTime<Utc>,
    ) -> Vec<(DunningStep, DateTime<Utc>, DateTime<Utc>)> {
        let renewal = stored.tier.is_paid()
            && stored.provider == Some(invoice.provider)
            && invoice.provider != PaymentProvider::Mpesa
            && invoice.subscription_id.is_some()
            && stored.provider_subscription_id == invoice.subscription_id
            && matches!(
                stored.status,
                SubscriptionStatus::Active
                    | SubscriptionStatus::Trialing
                    | SubscriptionStatus::PastDue
                    | SubscriptionStatus::Unpaid
            );
        if !renewal {
            return Vec::new();
        }
        let first_failure = match stored.status {
            SubscriptionStatus::PastDue => stored.past_due_since.unwrap_or(failed_at),
            _ => failed_at,
        };
        let grace_ends = first_failure + self.past_due_grace;
        plan(first_failure, grace_ends, &self.dunning_schedule)
            .into_iter()
            .map(|email| (email.step, email.due, grace_ends))
            .collect()
    }
}
