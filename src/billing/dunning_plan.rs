//! Which dunning emails a failed invoice gets (`domain::dunning::plan`), decided in the
//! transaction of the event that reported the failure: only a renewal of the user's current
//! paid subscription is dunned, from the first failure of its PAST_DUE streak.

use chrono::{DateTime, Utc};

use super::Billing;
use crate::{
    domain::{
        Subscription, SubscriptionStatus,
        dunning::{DunningStep, invoice_plan},
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
            // UNPAID (Stripe gave up retrying) keeps no tier: no email may promise one.
            && matches!(
                stored.status,
                SubscriptionStatus::Active
                    | SubscriptionStatus::Trialing
                    | SubscriptionStatus::PastDue
            );
        if !renewal {
            return Vec::new();
        }
        // The tier's grace runs from the first failure of the PAST_DUE streak, as
        // `Subscription::effective_tier` counts it; this invoice's reminders from its own failure.
        let streak_start = match stored.status {
            SubscriptionStatus::PastDue => stored.past_due_since.unwrap_or(failed_at),
            _ => failed_at,
        };
        let (grace_ends, planned) = invoice_plan(
            streak_start,
            failed_at,
            self.past_due_grace,
            &self.dunning_schedule,
        );
        planned
            .into_iter()
            .map(|email| (email.step, email.due, grace_ends))
            .collect()
    }
}
