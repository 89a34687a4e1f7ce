//! `dunning_outbox!(Type)` implements `DunningOutbox` for a store with a `pool` field; the SQL
//! is the same on both backends.

/// The columns `claim_dunning_email` reads: the email, its invoice and the subscription.
pub(crate) const CLAIMED: &str = "SELECT d.id, d.user_id, d.provider, d.invoice_id, d.step, \
     d.recipient, d.grace_ends_at, CAST(d.attempts AS BIGINT), i.status, i.amount_due, i.currency, \
     i.hosted_invoice_url, s.status, s.tier, s.state_as_of, d.created_at \
     FROM dunning_emails d \
     LEFT JOIN invoices i ON i.provider = d.provider AND i.provider_invoice_id = d.invoice_id \
       AND i.user_id = d.user_id \
     LEFT JOIN subscriptions s ON s.user_id = d.user_id \
     WHERE d.id = $1";

/// A row of [`CLAIMED`].
pub(crate) type ClaimedRow = (
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    chrono::DateTime<chrono::Utc>,
    i64,
    Option<String>,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<chrono::DateTime<chrono::Utc>>,
    chrono::DateTime<chrono::Utc>,
);

pub(crate) fn claimed(
    row: ClaimedRow,
    lease: chrono::DateTime<chrono::Utc>,
) -> Result<super::dunning::ClaimedDunningEmail, super::StoreError> {
    let corrupt = |what: &str| super::StoreError::Corrupt(format!("dunning_emails.{what}"));
    let (id, user, provider, invoice_id, step, recipient, grace_ends, attempts, invoice, due) = (
        row.0, row.1, row.2, row.3, row.4, row.5, row.6, row.7, row.8, row.9,
    );
    Ok(super::dunning::ClaimedDunningEmail {
        id,
        user_id: crate::domain::UserId::parse(user).map_err(|_| corrupt("user_id"))?,
        provider: provider.parse().map_err(|_| corrupt("provider"))?,
        invoice_id,
        step: step.parse().map_err(|_| corrupt("step"))?,
        recipient,
        grace_ends,
        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
        invoice_status: invoice
            .map(|s| s.parse())
            .transpose()
            .map_err(|_| corrupt("invoice status"))?,
        amount_due: due,
        currency: row.10,
        hosted_invoice_url: row.11,
        subscription_status: row
            .12
            .map(|s| s.parse())
            .transpose()
            .map_err(|_| corrupt("subscription status"))?,
        tier: row
            .13
            .map(|t| t.parse())
            .transpose()
            .map_err(|_| corrupt("tier"))?,
        subscription_as_of: row.14,
        scheduled_at: row.15,
        lease,
    })
}

macro_rules! dunning_outbox {
    ($name:ident) => {
        const _: () = {
            use chrono::{DateTime, Utc};

            use $crate::store::{
                StoreError,
                dunning::{ClaimedDunningEmail, DunningOutbox},
                dunning_sql::{CLAIMED, ClaimedRow, claimed},
            };

            #[async_trait::async_trait]
            impl DunningOutbox for $name {
                async fn due_dunning_emails(
                    &self,
                    now: DateTime<Utc>,
                    limit: u32,
                ) -> Result<Vec<String>, StoreError> {
                    let rows: Vec<(String,)> = sqlx::query_as(
                        "SELECT id FROM dunning_emails WHERE state = 'pending' \
                         AND next_attempt_at <= $1 \
                         AND (claimed_until IS NULL OR claimed_until < $1) \
                         ORDER BY next_attempt_at LIMIT $2",
                    )
                    .bind(now)
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?;
                    Ok(rows.into_iter().map(|(id,)| id).collect())
                }

                async fn claim_dunning_email(
                    &self,
                    id: &str,
                    now: DateTime<Utc>,
                    until: DateTime<Utc>,
                ) -> Result<Option<ClaimedDunningEmail>, StoreError> {
                    let won = sqlx::query(
                        "UPDATE dunning_emails SET claimed_until = $3, attempts = attempts + 1 \
                         WHERE id = $1 AND state = 'pending' AND next_attempt_at <= $2 \
                         AND (claimed_until IS NULL OR claimed_until < $2)",
                    )
                    .bind(id)
                    .bind(now)
                    .bind(until)
                    .execute(&self.pool)
                    .await?;
                    if won.rows_affected() != 1 {
                        return Ok(None);
                    }
                    let row: Option<ClaimedRow> = sqlx::query_as(CLAIMED)
                        .bind(id)
                        .fetch_optional(&self.pool)
                        .await?;
                    row.map(|r| claimed(r, until)).transpose()
                }

                async fn dunning_email_sent(
                    &self,
                    id: &str,
                    lease: DateTime<Utc>,
                    now: DateTime<Utc>,
                ) -> Result<(), StoreError> {
                    sqlx::query(
                        "UPDATE dunning_emails SET state = 'sent', sent_at = $2, \
                         claimed_until = NULL, last_error = NULL \
                         WHERE id = $1 AND state = 'pending' AND claimed_until = $3",
                    )
                    .bind(id)
                    .bind(now)
                    .bind(lease)
                    .execute(&self.pool)
                    .await?;
                    Ok(())
                }

                async fn dunning_email_failed(
                    &self,
                    id: &str,
                    lease: DateTime<Utc>,
                    next: DateTime<Utc>,
                    error: &str,
                    give_up: bool,
                ) -> Result<(), StoreError> {
                    sqlx::query(
                        "UPDATE dunning_emails SET next_attempt_at = $2, last_error = $3, \
                         claimed_until = NULL, \
                         state = CASE WHEN $4 THEN 'failed' ELSE 'pending' END \
                         WHERE id = $1 AND state = 'pending' AND claimed_until = $5",
                    )
                    .bind(id)
                    .bind(next)
                    .bind(error)
                    .bind(give_up)
                    .bind(lease)
                    .execute(&self.pool)
                    .await?;
                    Ok(())
                }

                async fn dunning_email_postponed(
                    &self,
                    id: &str,
                    lease: DateTime<Utc>,
                    next: DateTime<Utc>,
                ) -> Result<(), StoreError> {
                    sqlx::query(
                        "UPDATE dunning_emails SET next_attempt_at = $2, claimed_until = NULL, \
                         attempts = attempts - 1 \
                         WHERE id = $1 AND state = 'pending' AND claimed_until = $3",
                    )
                    .bind(id)
                    .bind(next)
                    .bind(lease)
                    .execute(&self.pool)
                    .await?;
                    Ok(())
                }

                async fn dunning_email_skipped(
                    &self,
                    id: &str,
                    lease: DateTime<Utc>,
                    reason: &str,
                ) -> Result<(), StoreError> {
                    sqlx::query(
                        "UPDATE dunning_emails SET state = 'skipped', last_error = $2, \
                         claimed_until = NULL \
                         WHERE id = $1 AND state = 'pending' AND claimed_until = $3",
                    )
                    .bind(id)
                    .bind(reason)
                    .bind(lease)
                    .execute(&self.pool)
                    .await?;
                    Ok(())
                }
            }
        };
    };
}
