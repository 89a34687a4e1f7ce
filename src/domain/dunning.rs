//! Dunning: the reminder emails after a renewal payment failed. Which emails an invoice gets
//! and when, whether one that is due should still go out, and how a failed delivery is retried.
//! Pure: the emails are written to an outbox in the event's transaction (`store::dunning`) and
//! sent by `billing::dunning_mailer`.

use std::{fmt, str::FromStr};

use chrono::{DateTime, Duration, Utc};

use super::{SubscriptionStatus, invoice::InvoiceStatus};

/// One email of an invoice's dunning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DunningStep {
    /// A reminder `n` days after the first failed payment (day 0: the day it failed).
    Reminder(u32),
    /// The last notice, the day before access ends.
    Final,
}

impl fmt::Display for DunningStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Reminder(day) => write!(f, "day-{day}"),
            Self::Final => f.write_str("final"),
        }
    }
}

/// A stored step name that this version does not know.
#[derive(Debug, thiserror::Error)]
#[error("unknown dunning step {0:?}")]
pub struct UnknownStep(pub String);

impl FromStr for DunningStep {
    type Err = UnknownStep;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "final" {
            return Ok(Self::Final);
        }
        s.strip_prefix("day-")
            .and_then(|d| d.parse().ok())
            .map(Self::Reminder)
            .ok_or_else(|| UnknownStep(s.to_string()))
    }
}

/// An email to send at `due`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedEmail {
    pub step: DunningStep,
    pub due: DateTime<Utc>,
}

/// The emails of an invoice whose payment first failed at `first_failure`, when access ends at
/// `grace_ends`: a reminder on the failure day and on each day of `schedule` before the final
/// notice, and the final notice a day before the grace ends (at once for a grace shorter than a
/// day). Nothing when `schedule` is empty (dunning is off).
pub fn plan(
    first_failure: DateTime<Utc>,
    grace_ends: DateTime<Utc>,
    schedule: &[u32],
) -> Vec<PlannedEmail> {
    if schedule.is_empty() {
        return Vec::new();
    }
    let final_due = (grace_ends - Duration::days(1)).max(first_failure);
    let mut days: Vec<u32> = schedule.to_vec();
    days.push(0);
    days.sort_unstable();
    days.dedup();
    let mut emails: Vec<PlannedEmail> = days
        .into_iter()
        .map(|day| PlannedEmail {
            step: DunningStep::Reminder(day),
            due: first_failure + Duration::days(i64::from(day)),
        })
        .filter(|e| e.due < final_due || e.step == DunningStep::Reminder(0))
        .collect();
    if final_due > first_failure {
        emails.push(PlannedEmail {
            step: DunningStep::Final,
            due: final_due,
        });
    }
    emails
}

/// The emails of an invoice that failed at `failed_at`, in a PAST_DUE streak that began at
/// `streak_start` (the tier ends `grace` after it): reminders from this invoice's failure, the
/// final notice before the streak's grace ends; none when that grace is already over (the
/// user is on FREE: no email may promise otherwise). Returns the grace's end with them.
pub fn invoice_plan(
    streak_start: DateTime<Utc>,
    failed_at: DateTime<Utc>,
    grace: Duration,
    schedule: &[u32],
) -> (DateTime<Utc>, Vec<PlannedEmail>) {
    let grace_ends = streak_start.min(failed_at) + grace;
    if grace_ends <= failed_at {
        return (grace_ends, Vec::new());
    }
    (grace_ends, plan(failed_at, grace_ends, schedule))
}

/// Why a due email is not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// The invoice was paid, voided or written off (or is no longer stored).
    InvoiceSettled,
    /// The subscription is no longer waiting for this payment (active again, or ended).
    NotPastDue,
    /// The provider gave no address to write to.
    NoAddress,
}

impl Skip {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvoiceSettled => "invoice settled",
            Self::NotPastDue => "subscription no longer past due",
            Self::NoAddress => "no email address",
        }
    }
}

/// What to do with a due email.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Send,
    Skip(Skip),
    /// The subscription's news of the failure has not landed yet (its event may come after
    /// the invoice's): ask again shortly, without counting an attempt.
    Wait,
}

/// The subscription as stored when a due email is looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredStanding {
    pub status: SubscriptionStatus,
    /// When that status was known current at the provider.
    pub as_of: Option<DateTime<Utc>>,
}

/// Whether a due email still goes out, given the invoice and subscription as stored now and
/// when the email was scheduled (the failure was known then).
pub fn should_send(
    invoice: Option<InvoiceStatus>,
    subscription: Option<StoredStanding>,
    scheduled_at: DateTime<Utc>,
    has_address: bool,
) -> Verdict {
    if !matches!(invoice, Some(InvoiceStatus::Open | InvoiceStatus::Draft)) {
        return Verdict::Skip(Skip::InvoiceSettled);
    }
    let Some(standing) = subscription else {
        return Verdict::Skip(Skip::NotPastDue);
    };
    match standing.status {
        SubscriptionStatus::PastDue | SubscriptionStatus::Unpaid => {}
        // Active after the failure was known: paid since (the invoice's news may lag).
        SubscriptionStatus::Active | SubscriptionStatus::Trialing
            if standing.as_of.is_some_and(|at| at > scheduled_at) =>
        {
            return Verdict::Skip(Skip::NotPastDue);
        }
        SubscriptionStatus::Active | SubscriptionStatus::Trialing => return Verdict::Wait,
        _ => return Verdict::Skip(Skip::NotPastDue),
    }
    if !has_address {
        return Verdict::Skip(Skip::NoAddress);
    }
    Verdict::Send
}

/// Deliveries tried before an email is given up.
pub const MAX_ATTEMPTS: u32 = 8;

/// How long to wait after the `attempts`-th failed delivery: 1 minute, doubling, at most 2 hours.
pub fn retry_delay(attempts: u32) -> Duration {
    let minutes = 1_i64 << attempts.saturating_sub(1).min(7);
    Duration::minutes(minutes.min(120))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default()
    }

    fn days(plan: &[PlannedEmail]) -> Vec<(String, i64)> {
        plan.iter()
            .map(|e| (e.step.to_string(), (e.due - t0()).num_hours()))
            .collect()
    }

    #[test]
    fn the_default_schedule_with_a_week_of_grace_writes_on_days_0_3_and_a_final_notice_on_day_6() {
        let planned = plan(t0(), t0() + Duration::days(7), &[0, 3, 7]);
        assert_eq!(
            days(&planned),
            [
                ("day-0".to_string(), 0),
                ("day-3".to_string(), 72),
                ("final".to_string(), 144)
            ]
        );
    }

    #[test]
    fn the_first_failure_always_gets_an_email_and_short_graces_get_the_final_at_once() {
        assert_eq!(
            days(&plan(t0(), t0() + Duration::days(14), &[5, 10])),
            [
                ("day-0".to_string(), 0),
                ("day-5".to_string(), 120),
                ("day-10".to_string(), 240),
                ("final".to_string(), 312)
            ]
        );
        assert_eq!(
            days(&plan(t0(), t0() + Duration::hours(12), &[0, 3])),
            [("day-0".to_string(), 0)]
        );
        assert!(plan(t0(), t0() + Duration::days(7), &[]).is_empty());
    }

    #[test]
    fn a_later_invoice_of_the_streak_counts_from_its_own_failure_up_to_the_streaks_grace() {
        let week = Duration::days(7);
        // The streak began 4 days ago: this invoice's day 0 now, its final on day 6 of the
        // streak; its day 3 would fall on the final's day, so it is left out.
        let (ends, planned) = invoice_plan(t0(), t0() + Duration::days(4), week, &[0, 3, 7]);
        assert_eq!(ends, t0() + week);
        assert_eq!(
            days(&planned),
            [("day-0".to_string(), 96), ("final".to_string(), 144)]
        );
        // The grace is over: nothing promises access that has ended.
        let (_, none) = invoice_plan(t0(), t0() + Duration::days(10), week, &[0, 3, 7]);
        assert!(none.is_empty());
    }

    #[test]
    fn steps_read_back_as_written() {
        for step in [
            DunningStep::Reminder(0),
            DunningStep::Reminder(30),
            DunningStep::Final,
        ] {
            assert_eq!(step.to_string().parse::<DunningStep>().ok(), Some(step));
        }
        assert!("day-x".parse::<DunningStep>().is_err());
    }

    #[test]
    fn only_an_open_invoice_of_a_past_due_subscription_with_an_address_is_dunned() {
        use InvoiceStatus as I;
        use SubscriptionStatus as S;
        let at = |status, secs| {
            Some(StoredStanding {
                status,
                as_of: Some(t0() + Duration::seconds(secs)),
            })
        };
        let check = |invoice, sub, address| should_send(Some(invoice), sub, t0(), address);
        assert_eq!(check(I::Open, at(S::PastDue, -5), true), Verdict::Send);
        assert_eq!(check(I::Open, at(S::Unpaid, 5), true), Verdict::Send);
        assert_eq!(
            check(I::Paid, at(S::PastDue, 5), true),
            Verdict::Skip(Skip::InvoiceSettled)
        );
        assert_eq!(
            check(I::Void, at(S::PastDue, 5), true),
            Verdict::Skip(Skip::InvoiceSettled)
        );
        assert_eq!(
            should_send(None, at(S::PastDue, 5), t0(), true),
            Verdict::Skip(Skip::InvoiceSettled)
        );
        // Active since the failure: recovered. Active before it: its news has not landed.
        assert_eq!(
            check(I::Open, at(S::Active, 5), true),
            Verdict::Skip(Skip::NotPastDue)
        );
        assert_eq!(check(I::Open, at(S::Active, -5), true), Verdict::Wait);
        assert_eq!(
            check(I::Open, at(S::Canceled, 5), true),
            Verdict::Skip(Skip::NotPastDue)
        );
        assert_eq!(
            check(I::Open, at(S::PastDue, 5), false),
            Verdict::Skip(Skip::NoAddress)
        );
    }

    #[test]
    fn retries_back_off_to_two_hours() {
        assert_eq!(retry_delay(1), Duration::minutes(1));
        assert_eq!(retry_delay(2), Duration::minutes(2));
        assert_eq!(retry_delay(4), Duration::minutes(8));
        assert_eq!(retry_delay(30), Duration::minutes(120));
    }
}
