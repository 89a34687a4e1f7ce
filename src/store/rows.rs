//! Row types shared by both backends, and their conversion into domain types. A stored value
//! this version cannot understand is `StoreError::Corrupt`, never a default.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::types::Json;

use super::StoreError;
use crate::domain::{
    UserId,
    integration::Integration,
    invoice::{Invoice, InvoiceStatus, StoredInvoice},
    subscription::{PaymentProvider, Subscription},
};

/// `sqlx::FromRow` for both backends' rows, each field read from the column of its name (and a
/// `flatten` field from the same row). What `#[derive(sqlx::FromRow)]` writes, without sqlx's
/// proc-macro crate, which builds both database drivers a second time for the host.
macro_rules! from_row {
    ($ty:ident { $($field:ident),* $(,)? } $(flatten { $($flat:ident: $flat_ty:ty),* $(,)? })?) => {
        $crate::store::rows::from_row!(@impl sqlx::postgres::PgRow, $ty { $($field),* } $($($flat: $flat_ty),*)?);
        $crate::store::rows::from_row!(@impl sqlx::sqlite::SqliteRow, $ty { $($field),* } $($($flat: $flat_ty),*)?);
    };
    (@impl $row:ty, $ty:ident { $($field:ident),* } $($flat:ident: $flat_ty:ty),*) => {
        impl<'r> sqlx::FromRow<'r, $row> for $ty {
            fn from_row(row: &'r $row) -> Result<Self, sqlx::Error> {
                use sqlx::Row as _;
                Ok(Self {
                    $($field: row.try_get(stringify!($field))?,)*
                    $($flat: <$flat_ty as sqlx::FromRow<'r, $row>>::from_row(row)?,)*
                })
            }
        }
    };
}
pub(super) use from_row;

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

pub(super) struct SubscriptionRow {
    pub(super) user_id: String,
    pub(super) tier: String,
    pub(super) status: String,
    pub(super) provider: Option<String>,
    pub(super) provider_customer_id: Option<String>,
    pub(super) provider_subscription_id: Option<String>,
    pub(super) current_period_start: Option<DateTime<Utc>>,
    pub(super) current_period_end: Option<DateTime<Utc>>,
    pub(super) cancel_at_period_end: bool,
    pub(super) cancel_at: Option<DateTime<Utc>>,
    pub(super) past_due_since: Option<DateTime<Utc>>,
    pub(super) state_as_of: Option<DateTime<Utc>>,
    pub(super) billing_interval: Option<String>,
    pub(super) currency: Option<String>,
    pub(super) trial_end: Option<DateTime<Utc>>,
    pub(super) overage_enabled: bool,
    pub(super) extra_item_id: Option<String>,
}

from_row!(SubscriptionRow {
    user_id,
    tier,
    status,
    provider,
    provider_customer_id,
    provider_subscription_id,
    current_period_start,
    current_period_end,
    cancel_at_period_end,
    cancel_at,
    past_due_since,
    state_as_of,
    billing_interval,
    currency,
    trial_end,
    overage_enabled,
    extra_item_id
});

pub(super) const SUBSCRIPTION_QUERY: &str = "SELECT user_id, tier, status, provider, \
     provider_customer_id, provider_subscription_id, current_period_start, current_period_end, \
     cancel_at_period_end, cancel_at, past_due_since, state_as_of, billing_interval, currency, \
     trial_end, overage_enabled, extra_item_id FROM subscriptions WHERE user_id = $1";

impl TryFrom<SubscriptionRow> for Subscription {
    type Error = StoreError;

    fn try_from(row: SubscriptionRow) -> Result<Self, Self::Error> {
        Ok(Subscription {
            user_id: UserId::parse(row.user_id).map_err(corrupt)?,
            tier: row.tier.parse().map_err(corrupt)?,
            status: row.status.parse().map_err(corrupt)?,
            provider: row
                .provider
                .map(|p| p.parse::<PaymentProvider>())
                .transpose()
                .map_err(corrupt)?,
            provider_customer_id: row.provider_customer_id,
            provider_subscription_id: row.provider_subscription_id,
            current_period_start: row.current_period_start,
            current_period_end: row.current_period_end,
            cancel_at_period_end: row.cancel_at_period_end,
            cancel_at: row.cancel_at,
            past_due_since: row.past_due_since,
            state_as_of: row.state_as_of,
            terms: Box::new(crate::domain::pricing::Terms {
                interval: row
                    .billing_interval
                    .map(|i| i.parse())
                    .transpose()
                    .map_err(corrupt)?,
                currency: row.currency,
                trial_end: row.trial_end,
                extra_item: row.extra_item_id,
            }),
            overage: row.overage_enabled,
        })
    }
}

pub(super) struct IntegrationRow {
    id: String,
    user_id: String,
    provider: String,
    status: String,
    settings: Json<BTreeMap<String, String>>,
    last_sync_at: Option<DateTime<Utc>>,
    last_error: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

from_row!(IntegrationRow {
    id,
    user_id,
    provider,
    status,
    settings,
    last_sync_at,
    last_error,
    created_at,
    updated_at
});

impl TryFrom<IntegrationRow> for Integration {
    type Error = StoreError;

    fn try_from(row: IntegrationRow) -> Result<Self, Self::Error> {
        Ok(Integration {
            id: row.id,
            user_id: UserId::parse(row.user_id).map_err(corrupt)?,
            provider: row.provider.parse().map_err(corrupt)?,
            status: row.status.parse().map_err(corrupt)?,
            settings: row.settings.0,
            last_sync_at: row.last_sync_at,
            last_error: row.last_error,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

pub(super) struct UsageRow {
    pub cards: i64,
    pub contacts: i64,
}

from_row!(UsageRow { cards, contacts });

impl From<UsageRow> for crate::domain::Usage {
    fn from(row: UsageRow) -> Self {
        Self {
            cards: u64::try_from(row.cards).unwrap_or(0),
            contacts: u64::try_from(row.contacts).unwrap_or(0),
        }
    }
}

/// The user's counts, kept by the database's triggers (`usage_counts`): one row, whatever the
/// user's size. A user with no row has nothing.
pub(super) const USAGE_QUERY: &str = "SELECT COALESCE(u.cards, 0) AS cards, \
     COALESCE(u.contacts, 0) AS contacts FROM (SELECT $1 AS id) k \
     LEFT JOIN usage_counts u ON u.user_id = k.id";

/// The hot path's one statement: the user's subscription (if any) and counts together.
pub(super) const STANDING_QUERY: &str = "SELECT s.user_id, s.tier, s.status, s.provider, \
     s.provider_customer_id, s.provider_subscription_id, s.current_period_start, \
     s.current_period_end, s.cancel_at_period_end, s.cancel_at, s.past_due_since, s.state_as_of, \
     s.user_id IS NOT NULL AS subscribed, \
     s.billing_interval, s.currency, s.trial_end, s.overage_enabled, s.extra_item_id, \
     COALESCE(u.cards, 0) AS cards, COALESCE(u.contacts, 0) AS contacts \
     FROM (SELECT $1 AS id) k \
     LEFT JOIN subscriptions s ON s.user_id = k.id \
     LEFT JOIN usage_counts u ON u.user_id = k.id";

/// A row of `STANDING_QUERY`: the subscription columns are read only when there is one.
pub(super) struct StandingRow {
    pub subscription: Option<SubscriptionRow>,
    pub usage: UsageRow,
}

macro_rules! standing_from_row {
    ($row:ty) => {
        impl<'r> sqlx::FromRow<'r, $row> for StandingRow {
            fn from_row(row: &'r $row) -> Result<Self, sqlx::Error> {
                use sqlx::Row as _;
                let subscribed: bool = row.try_get("subscribed")?;
                Ok(Self {
                    subscription: if subscribed {
                        Some(<SubscriptionRow as sqlx::FromRow<'r, $row>>::from_row(row)?)
                    } else {
                        None
                    },
                    usage: <UsageRow as sqlx::FromRow<'r, $row>>::from_row(row)?,
                })
            }
        }
    };
}
standing_from_row!(sqlx::postgres::PgRow);
standing_from_row!(sqlx::sqlite::SqliteRow);

impl StandingRow {
    pub fn into_domain(self) -> Result<(Option<Subscription>, crate::domain::Usage), StoreError> {
        Ok((
            self.subscription.map(Subscription::try_from).transpose()?,
            self.usage.into(),
        ))
    }
}

pub(super) struct InvoiceRow {
    id: String,
    user_id: String,
    provider: String,
    provider_invoice_id: String,
    provider_subscription_id: Option<String>,
    amount_due: i64,
    amount_paid: i64,
    currency: String,
    status: String,
    hosted_invoice_url: Option<String>,
    invoice_pdf_url: Option<String>,
    period_start: Option<DateTime<Utc>>,
    period_end: Option<DateTime<Utc>>,
    provider_created_at: DateTime<Utc>,
}

from_row!(InvoiceRow {
    id,
    user_id,
    provider,
    provider_invoice_id,
    provider_subscription_id,
    amount_due,
    amount_paid,
    currency,
    status,
    hosted_invoice_url,
    invoice_pdf_url,
    period_start,
    period_end,
    provider_created_at
});

impl TryFrom<InvoiceRow> for StoredInvoice {
    type Error = StoreError;

    fn try_from(row: InvoiceRow) -> Result<Self, Self::Error> {
        Ok(StoredInvoice {
            id: row.id,
            invoice: Invoice {
                user_id: UserId::parse(row.user_id).map_err(corrupt)?,
                provider: row.provider.parse().map_err(corrupt)?,
                provider_invoice_id: row.provider_invoice_id,
                provider_subscription_id: row.provider_subscription_id,
                amount_due: row.amount_due,
                amount_paid: row.amount_paid,
                currency: row.currency,
                status: row.status.parse().map_err(corrupt)?,
                hosted_invoice_url: row.hosted_invoice_url,
                invoice_pdf_url: row.invoice_pdf_url,
                period_start: row.period_start,
                period_end: row.period_end,
                created_at: row.provider_created_at,
            },
        })
    }
}

/// Columns of [`InvoiceRow`] after `SELECT <id expression>, ` (a macro so `concat!` can use it).
macro_rules! invoice_columns {
    () => {
        "user_id, provider, provider_invoice_id, provider_subscription_id, amount_due, \
         amount_paid, currency, status, hosted_invoice_url, invoice_pdf_url, period_start, \
         period_end, provider_created_at"
    };
}
pub(super) use invoice_columns;

pub(super) struct ActivityRow {
    id: i64,
    kind: String,
    message: String,
    details: Json<serde_json::Value>,
    created_at: DateTime<Utc>,
}

from_row!(ActivityRow {
    id,
    kind,
    message,
    details,
    created_at
});

impl From<ActivityRow> for super::ActivityRecord {
    fn from(row: ActivityRow) -> Self {
        Self {
            id: row.id,
            kind: row.kind,
            message: row.message,
            details: row.details.0,
            created_at: row.created_at,
        }
    }
}

pub(super) const SAVE_SUBSCRIPTION: &str = "UPDATE subscriptions SET tier = $2, status = $3, \
     provider = $4, provider_customer_id = $5, provider_subscription_id = $6, \
     current_period_start = $7, current_period_end = $8, cancel_at_period_end = $9, \
     cancel_at = $10, past_due_since = $11, state_as_of = $12, billing_interval = $13, \
     currency = $14, trial_end = $15, overage_enabled = $16, extra_item_id = $17 \
     WHERE user_id = $1";

pub(super) const ENSURE_SUBSCRIPTION: &str = "INSERT INTO subscriptions (user_id, tier, status) \
     VALUES ($1, 'free', 'active') ON CONFLICT (user_id) DO NOTHING";

pub(super) const LOG_ACTIVITY: &str =
    "INSERT INTO activity_logs (user_id, kind, message, details) VALUES ($1, $2, $3, $4)";

pub(super) fn invoice_state(
    (user_id, status, as_of): (String, String, Option<DateTime<Utc>>),
) -> Result<super::InvoiceState, StoreError> {
    Ok(super::InvoiceState {
        user_id: UserId::parse(user_id).map_err(corrupt)?,
        status: status.parse::<InvoiceStatus>().map_err(corrupt)?,
        state_as_of: as_of,
    })
}

pub(super) struct ContactRow {
    id: String,
    email: Option<String>,
    first_name: Option<String>,
    last_name: Option<String>,
    company: Option<String>,
    phone: Option<String>,
    job_title: Option<String>,
}

from_row!(ContactRow {
    id,
    email,
    first_name,
    last_name,
    company,
    phone,
    job_title
});

impl From<ContactRow> for crate::domain::contact::Contact {
    fn from(row: ContactRow) -> Self {
        Self {
            id: row.id,
            email: row.email,
            first_name: row.first_name,
            last_name: row.last_name,
            company: row.company,
            phone: row.phone,
            job_title: row.job_title,
        }
    }
}

pub(super) struct SyncJobRow {
    id: String,
    integration_id: String,
    user_id: String,
    provider: String,
    direction: String,
    state: String,
    checkpoint: Option<String>,
    contacts_done: i64,
    contacts_total: i64,
    contacts_skipped: i64,
    skipped_reason: Option<String>,
    contacts_failed: i64,
    failures: Json<Vec<crate::domain::sync_job::RecordFailure>>,
    last_error: Option<String>,
    attempts: i32,
    max_attempts: i32,
    next_attempt_at: DateTime<Utc>,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    full_push: bool,
    rate_limited: i32,
    attempts_in_a_row: i32,
}

from_row!(SyncJobRow {
    id,
    integration_id,
    user_id,
    provider,
    direction,
    state,
    checkpoint,
    contacts_done,
    contacts_total,
    contacts_skipped,
    skipped_reason,
    contacts_failed,
    failures,
    last_error,
    attempts,
    max_attempts,
    next_attempt_at,
    created_at,
    started_at,
    finished_at,
    full_push,
    rate_limited,
    attempts_in_a_row
});

fn count(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

impl TryFrom<SyncJobRow> for crate::domain::sync_job::SyncJob {
    type Error = StoreError;

    fn try_from(row: SyncJobRow) -> Result<Self, Self::Error> {
        Ok(Self {
            id: row.id,
            integration_id: row.integration_id,
            user_id: UserId::parse(row.user_id).map_err(corrupt)?,
            provider: row.provider.parse().map_err(corrupt)?,
            direction: row.direction.parse().map_err(corrupt)?,
            state: row.state.parse().map_err(corrupt)?,
            progress: crate::domain::sync_job::JobProgress {
                checkpoint: row.checkpoint,
                contacts_done: count(row.contacts_done),
                contacts_total: count(row.contacts_total),
                contacts_skipped: count(row.contacts_skipped),
                skipped_reason: row.skipped_reason,
                contacts_failed: count(row.contacts_failed),
                failures: row.failures.0,
            },
            last_error: row.last_error,
            attempts: u32::try_from(row.attempts).unwrap_or(0),
            max_attempts: u32::try_from(row.max_attempts).unwrap_or(0),
            next_attempt_at: row.next_attempt_at,
            created_at: row.created_at,
            started_at: row.started_at,
            finished_at: row.finished_at,
            full: row.full_push,
            rate_limited: u32::try_from(row.rate_limited).unwrap_or(0),
            attempts_in_a_row: u32::try_from(row.attempts_in_a_row).unwrap_or(0),
        })
    }
}
