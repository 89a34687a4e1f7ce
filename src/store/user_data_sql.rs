//! `user_data_store!(Type)` implements `UserDataStore` for a store with a `pool` field. Every
//! statement of an erasure names the user (or their customers), so no other user's row can be
//! touched.

/// An erasure entry's columns, in [`EntryRow`]'s order.
pub(crate) const ENTRY_COLUMNS: &str = "id, state, runs, started_at, finished_at";

pub(crate) type EntryRow = (
    String,
    String,
    i64,
    chrono::DateTime<chrono::Utc>,
    Option<chrono::DateTime<chrono::Utc>>,
);

pub(crate) fn entry(row: EntryRow) -> crate::domain::erasure::ErasureEntry {
    let (id, state, runs, started_at, finished_at) = row;
    crate::domain::erasure::ErasureEntry {
        id,
        running: state == "running",
        runs,
        started_at,
        finished_at,
    }
}

/// Adds a statement's row count to the counter it belongs to.
pub(crate) type Count = fn(&mut crate::domain::erasure::ErasedRows, u64);

/// The statements of one erasure after the webhook events (which need the customer ids),
/// each bound to the user id only, with the counter each one adds to.
pub(crate) const DELETES: &[(&str, Count)] = &[
    // The user's integrations first, as a sync's bookkeeping locks them (then their contacts):
    // one lock order, no deadlock; and a new epoch, so a sync's late save remembers nothing.
    (
        "UPDATE integrations SET destination_epoch = destination_epoch + 1 WHERE user_id = $1",
        |_, _| {},
    ),
    (
        "DELETE FROM integration_contacts WHERE integration_id IN \
         (SELECT id FROM integrations WHERE user_id = $1)",
        |_, _| {},
    ),
    ("DELETE FROM sync_jobs WHERE user_id = $1", |r, n| {
        r.sync_jobs += n
    }),
    ("DELETE FROM integrations WHERE user_id = $1", |r, n| {
        r.integrations += n
    }),
    (
        "DELETE FROM forgotten_customers WHERE user_id = $1",
        |_, _| {},
    ),
    ("DELETE FROM oauth_states WHERE user_id = $1", |r, n| {
        r.oauth_states += n
    }),
    ("DELETE FROM dunning_emails WHERE user_id = $1", |_, _| {}),
    ("DELETE FROM overage_reports WHERE user_id = $1", |_, _| {}),
    ("DELETE FROM activity_logs WHERE user_id = $1", |r, n| {
        r.activity_entries += n
    }),
    (
        "DELETE FROM checkout_sessions WHERE user_id = $1",
        |r, n| r.checkout_sessions += n,
    ),
    (
        "DELETE FROM mpesa_payments WHERE user_id = $1 AND state <> 'pending'",
        |r, n| r.mobile_payments += n,
    ),
    ("DELETE FROM subscriptions WHERE user_id = $1", |r, n| {
        r.subscriptions += n
    }),
    (
        "DELETE FROM billing_customers WHERE user_id = $1",
        |r, n| r.billing_customers += n,
    ),
];

macro_rules! user_data_store {
    ($name:ident) => {
        const _: () = {
            use chrono::{DateTime, Utc};

            use $crate::{
                domain::{
                    UserId,
                    erasure::{ErasedRows, ErasureEntry, Requester, invoice_pseudonym},
                },
                store::{
                    StoreError, UserDataStore,
                    user_data_sql::{DELETES, ENTRY_COLUMNS, EntryRow, entry},
                },
            };

            #[async_trait::async_trait]
            impl UserDataStore for $name {
                async fn erasure(
                    &self,
                    subject_hash: &str,
                ) -> Result<Option<ErasureEntry>, StoreError> {
                    let sql = format!(
                        "SELECT {ENTRY_COLUMNS} FROM erasures WHERE subject_hash = $1"
                    );
                    let row: Option<EntryRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                        .bind(subject_hash)
                        .fetch_optional(&self.pool)
                        .await?;
                    Ok(row.map(entry))
                }

                async fn start_erasure(
                    &self,
                    subject_hash: &str,
                    requested_by: Requester,
                    now: DateTime<Utc>,
                ) -> Result<ErasureEntry, StoreError> {
                    let sql = format!(
                        "INSERT INTO erasures (id, subject_hash, requested_by, state, runs, \
                         started_at) VALUES ($1, $2, $3, 'running', 1, $4) \
                         ON CONFLICT (subject_hash) DO UPDATE SET state = 'running', \
                         runs = erasures.runs + 1, requested_by = excluded.requested_by, \
                         started_at = excluded.started_at RETURNING {ENTRY_COLUMNS}"
                    );
                    let row: EntryRow = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                        .bind(uuid::Uuid::new_v4().simple().to_string())
                        .bind(subject_hash)
                        .bind(requested_by.as_str())
                        .bind(now)
                        .fetch_one(&self.pool)
                        .await?;
                    Ok(entry(row))
                }

                async fn erase_user(
                    &self,
                    user: &UserId,
                    erasure_id: &str,
                    summary: &serde_json::Value,
                    now: DateTime<Utc>,
                ) -> Result<ErasedRows, StoreError> {
                    let mut tx = self.pool.begin().await?;
                    let pseudonym = invoice_pseudonym(erasure_id);
                    let mut rows = ErasedRows::default();
                    // First a write, so SQLite takes its write lock before any read.
                    sqlx::query("UPDATE erasures SET state = 'running' WHERE id = $1")
                        .bind(erasure_id)
                        .execute(&mut *tx)
                        .await?;
                    rows.invoices_kept = sqlx::query(
                        "UPDATE invoices SET user_id = $2, hosted_invoice_url = NULL, \
                         invoice_pdf_url = NULL WHERE user_id = $1",
                    )
                    .bind(user.as_str())
                    .bind(&pseudonym)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    // Webhook events are ordered by customer: PayPal's and M-Pesa's customer id
                    // is the user id, Stripe's is its cus_ id.
                    let mut keys: Vec<String> =
                        sqlx::query_scalar(
                            "SELECT customer_id FROM billing_customers WHERE user_id = $1 \
                             UNION SELECT customer_id FROM forgotten_customers WHERE user_id = $1",
                        )
                            .bind(user.as_str())
                            .fetch_all(&mut *tx)
                            .await?;
                    keys.push(user.as_str().to_string());
                    keys.sort();
                    keys.dedup();
                    for key in &keys {
                        // A pending event is finished as `erased`: its customer is gone, and
                        // a redelivery of it is recognised by its id and never applied.
                        rows.webhook_events_scrubbed += sqlx::query(
                            "UPDATE webhook_inbox SET payload = NULL, object_id = NULL, \
                             last_error = NULL, order_key = $2, \
                             outcome = CASE WHEN state = 'done' THEN outcome ELSE 'erased' END, \
                             state = 'done', processed_at = COALESCE(processed_at, $3) \
                             WHERE order_key = $1",
                        )
                        .bind(key)
                        .bind(&pseudonym)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                        sqlx::query("DELETE FROM webhook_streams WHERE order_key = $1")
                            .bind(key)
                            .execute(&mut *tx)
                            .await?;
                    }
                    for (sql, count) in DELETES {
                        let n = sqlx::query(*sql)
                            .bind(user.as_str())
                            .execute(&mut *tx)
                            .await?
                            .rows_affected();
                        count(&mut rows, n);
                    }
                    let mut summary = summary.clone();
                    if let Some(map) = summary.as_object_mut() {
                        map.insert(
                            "rows".into(),
                            serde_json::to_value(rows).unwrap_or_default(),
                        );
                    }
                    sqlx::query(
                        // A rerun that found nothing keeps the summary of the run that did.
                        "UPDATE erasures SET state = 'done', finished_at = $2, \
                         summary = CASE WHEN $4 OR finished_at IS NULL THEN $3 ELSE summary END \
                         WHERE id = $1",
                    )
                    .bind(erasure_id)
                    .bind(now)
                    .bind(sqlx::types::Json(&summary))
                    .bind(rows.found_anything())
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    Ok(rows)
                }
            }
        };
    };
}
