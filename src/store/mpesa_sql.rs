//! `mobile_payments!(Type)` implements `MobilePayments` for a store with a `pool` field, and
//! [`SETTLE`] is the statement `BillingTx::settle_mobile_payment` runs. Same SQL on both backends.

/// The columns every read returns, in [`PaymentRow`]'s order.
pub(crate) const COLUMNS: &str = "id, user_id, tier, amount, currency, checkout_request_id, \
     state, reason, receipt, created_at";

/// Moves a pending request to paid or failed, once: a second settle finds it settled.
pub(crate) const SETTLE: &str = "UPDATE mpesa_payments SET state = $2, reason = $3, \
     receipt = $4, settled_at = $5 WHERE checkout_request_id = $1 AND state = 'pending' \
     RETURNING id, user_id, tier, amount, currency, checkout_request_id, state, reason, receipt, \
     created_at";

pub(crate) type PaymentRow = (
    String,
    String,
    String,
    i64,
    String,
    Option<String>,
    String,
    Option<String>,
    Option<String>,
    chrono::DateTime<chrono::Utc>,
);

pub(crate) type PeriodRow = (
    String,
    String,
    chrono::DateTime<chrono::Utc>,
    chrono::DateTime<chrono::Utc>,
);

pub(crate) fn period(
    (request_id, tier, start, end): PeriodRow,
) -> Result<crate::domain::prepaid::PrepaidPeriod, crate::store::StoreError> {
    Ok(crate::domain::prepaid::PrepaidPeriod {
        request_id,
        tier: tier
            .parse()
            .map_err(|_| crate::store::StoreError::Corrupt("mpesa_payments.tier".into()))?,
        start,
        end,
    })
}

pub(crate) fn payment(
    row: PaymentRow,
) -> Result<crate::domain::prepaid::MobilePayment, crate::store::StoreError> {
    use crate::{
        domain::{
            Tier, UserId,
            prepaid::{MobilePayment, PaymentState},
        },
        store::StoreError,
    };
    let (id, user, tier, amount, currency, request_id, state, reason, receipt, created_at) = row;
    let corrupt = |what: &str| StoreError::Corrupt(format!("mpesa_payments.{what}"));
    Ok(MobilePayment {
        id,
        user_id: UserId::parse(user).map_err(|_| corrupt("user_id"))?,
        tier: tier.parse::<Tier>().map_err(|_| corrupt("tier"))?,
        amount,
        currency,
        request_id,
        state: match state.as_str() {
            "pending" => PaymentState::Pending,
            "paid" => PaymentState::Paid,
            "failed" => PaymentState::Failed,
            _ => return Err(corrupt("state")),
        },
        reason,
        receipt,
        created_at,
    })
}

macro_rules! mobile_payments {
    ($name:ident) => {
        const _: () = {
            use chrono::{DateTime, Utc};

            use $crate::{
                domain::{UserId, prepaid::MobilePayment},
                store::{
                    MobilePayments, NewMobilePayment, StoreError,
                    mpesa_sql::{COLUMNS, PaymentRow, payment},
                },
            };

            #[async_trait::async_trait]
            impl MobilePayments for $name {
                async fn reserve_mobile_payment(
                    &self,
                    p: &NewMobilePayment<'_>,
                ) -> Result<bool, StoreError> {
                    let done = sqlx::query(
                        "INSERT INTO mpesa_payments (id, user_id, tier, amount, currency, phone, \
                         state, created_at) VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7) \
                         ON CONFLICT DO NOTHING",
                    )
                    .bind(p.id)
                    .bind(p.user.as_str())
                    .bind(p.tier.as_str())
                    .bind(p.amount)
                    .bind(p.currency)
                    .bind(p.phone)
                    .bind(p.now)
                    .execute(&self.pool)
                    .await?;
                    Ok(done.rows_affected() == 1)
                }

                async fn mobile_payment_sent(
                    &self,
                    id: &str,
                    request_id: &str,
                ) -> Result<(), StoreError> {
                    sqlx::query("UPDATE mpesa_payments SET checkout_request_id = $2 WHERE id = $1")
                        .bind(id)
                        .bind(request_id)
                        .execute(&self.pool)
                        .await?;
                    Ok(())
                }

                async fn mobile_payment_found(
                    &self,
                    id: &str,
                    request_id: &str,
                ) -> Result<bool, StoreError> {
                    let done = sqlx::query(
                        "UPDATE mpesa_payments SET checkout_request_id = $2 WHERE id = $1 \
                         AND checkout_request_id IS NULL AND state = 'pending' \
                         AND NOT EXISTS (SELECT 1 FROM mpesa_payments WHERE checkout_request_id = $2)",
                    )
                    .bind(id)
                    .bind(request_id)
                    .execute(&self.pool)
                    .await?;
                    Ok(done.rows_affected() == 1)
                }

                async fn mobile_payment_polled(
                    &self,
                    id: &str,
                    next: DateTime<Utc>,
                ) -> Result<u32, StoreError> {
                    let polls: i32 = sqlx::query_scalar(
                        "UPDATE mpesa_payments SET polls = polls + 1, next_poll_at = $2 \
                         WHERE id = $1 RETURNING polls",
                    )
                    .bind(id)
                    .bind(next)
                    .fetch_one(&self.pool)
                    .await?;
                    Ok(u32::try_from(polls).unwrap_or(0))
                }

                async fn mobile_payment_reported_paid(
                    &self,
                    request_id: &str,
                    receipt: &str,
                ) -> Result<(), StoreError> {
                    sqlx::query(
                        "UPDATE mpesa_payments SET receipt = $2 \
                         WHERE checkout_request_id = $1 AND state = 'pending'",
                    )
                    .bind(request_id)
                    .bind(receipt)
                    .execute(&self.pool)
                    .await?;
                    Ok(())
                }

                async fn mobile_payment_by_id(
                    &self,
                    id: &str,
                ) -> Result<Option<MobilePayment>, StoreError> {
                    let sql = format!("SELECT {COLUMNS} FROM mpesa_payments WHERE id = $1");
                    let row: Option<PaymentRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                        .bind(id)
                        .fetch_optional(&self.pool)
                        .await?;
                    row.map(payment).transpose()
                }

                async fn mobile_payment_not_sent(
                    &self,
                    id: &str,
                    reason: &str,
                    now: DateTime<Utc>,
                ) -> Result<(), StoreError> {
                    sqlx::query(
                        "UPDATE mpesa_payments SET state = 'failed', reason = $2, settled_at = $3 \
                         WHERE id = $1 AND state = 'pending'",
                    )
                    .bind(id)
                    .bind(reason)
                    .bind(now)
                    .execute(&self.pool)
                    .await?;
                    Ok(())
                }

                async fn mobile_payment(
                    &self,
                    request_id: &str,
                ) -> Result<Option<MobilePayment>, StoreError> {
                    let sql = format!(
                        "SELECT {COLUMNS} FROM mpesa_payments WHERE checkout_request_id = $1"
                    );
                    let row: Option<PaymentRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                        .bind(request_id)
                        .fetch_optional(&self.pool)
                        .await?;
                    row.map(payment).transpose()
                }

                async fn pending_mobile_payment(
                    &self,
                    user: &UserId,
                ) -> Result<Option<MobilePayment>, StoreError> {
                    let sql = format!(
                        "SELECT {COLUMNS} FROM mpesa_payments WHERE user_id = $1 AND state = 'pending'"
                    );
                    let row: Option<PaymentRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                        .bind(user.as_str())
                        .fetch_optional(&self.pool)
                        .await?;
                    row.map(payment).transpose()
                }

                async fn ended_prepaid_periods(
                    &self,
                    now: DateTime<Utc>,
                    limit: u32,
                ) -> Result<Vec<UserId>, StoreError> {
                    let users: Vec<String> = sqlx::query_scalar(
                        "SELECT user_id FROM subscriptions WHERE provider = 'mpesa' \
                         AND status = 'active' AND current_period_end < $1 LIMIT $2",
                    )
                    .bind(now)
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?;
                    users
                        .into_iter()
                        .map(|u| UserId::parse(u).map_err(|e| StoreError::Corrupt(e.to_string())))
                        .collect()
                }

                async fn stale_mobile_payments(
                    &self,
                    created_before: DateTime<Utc>,
                    now: DateTime<Utc>,
                    limit: u32,
                ) -> Result<Vec<MobilePayment>, StoreError> {
                    // Least recently asked about first: stuck requests cannot starve the rest.
                    let sql = format!(
                        "SELECT {COLUMNS} FROM mpesa_payments WHERE state = 'pending' \
                         AND created_at < $1 AND (next_poll_at IS NULL OR next_poll_at <= $2) \
                         ORDER BY COALESCE(next_poll_at, created_at) LIMIT $3"
                    );
                    let rows: Vec<PaymentRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                        .bind(created_before)
                        .bind(now)
                        .bind(i64::from(limit))
                        .fetch_all(&self.pool)
                        .await?;
                    rows.into_iter().map(payment).collect()
                }
            }
        };
    };
}
