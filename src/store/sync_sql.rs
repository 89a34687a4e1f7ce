//! `sync_queue!(Type, ...)` implements `SyncQueue` for a store with a `pool` field. The SQL is
//! shared; the parameters carry what differs between the backends:
//! - `horizon`: the statement reading the push horizon (see `SyncQueue::push_horizon`).
//! - `schedule`: the statements of one scheduler pass (one CTE on PostgreSQL; an INSERT and an
//!   UPDATE in one `BEGIN IMMEDIATE` transaction on SQLite).

macro_rules! sync_queue {
    ($name:ident, id: $id:literal, text: $text:literal, horizon: $horizon:literal, begin: $begin:literal,
     for_update: $for_update:literal, schedule: [$($schedule:expr),+]) => {
        const _: () = {
            use std::collections::BTreeMap;

            use chrono::{DateTime, Utc};
            use sqlx::types::Json;

            use $crate::{
                domain::{
                    UserId,
                    catalogue::ProviderId,
                    contact::Contact,
                    integration::Integration,
                    sync_job::{Direction, PushKey, SyncJob},
                },
                store::{
                    IntegrationStore, StoreError,
                    rows::{ContactRow, SyncJobRow},
                    sync_queue::{BindOutcome, JobCursor, Pruned, SyncQueue},
                },
            };

            const CONTACT_COLUMNS: &str =
                "id, email, first_name, last_name, company, phone, job_title";
            /// Push order: the change number the database gave the contact's last write, then id.
            const AFTER_KEY: &str = "(change_seq, id) > ($2, $3)";

            #[async_trait::async_trait]
            impl SyncQueue for $name {
                async fn contacts_changed(
                    &self,
                    user: &UserId,
                    after: &PushKey,
                    limit: u32,
                ) -> Result<Vec<(PushKey, Contact)>, StoreError> {
                    let sql = sqlx::AssertSqlSafe(format!(
                        "SELECT change_seq AS push_seq, {CONTACT_COLUMNS} FROM contacts \
                         WHERE user_id = $1 AND {AFTER_KEY} ORDER BY change_seq, id LIMIT $4"
                    ));
                    let rows: Vec<KeyedContact> = sqlx::query_as(sql)
                        .bind(user.as_str())
                        .bind(after.seq)
                        .bind(&after.id)
                        .bind(i64::from(limit))
                        .fetch_all(&self.pool)
                        .await?;
                    Ok(rows
                        .into_iter()
                        .map(|row| {
                            let contact = Contact::from(row.contact);
                            (PushKey { seq: row.push_seq, id: contact.id.clone() }, contact)
                        })
                        .collect())
                }

                async fn push_horizon(&self) -> Result<i64, StoreError> {
                    Ok(sqlx::query_scalar($horizon).fetch_one(&self.pool).await?)
                }

                async fn hold_for_retry(
                    &self,
                    integration_id: &str,
                    contacts: &[(String, String)],
                ) -> Result<(), StoreError> {
                    // One transaction (a held SendGrid batch is up to 10,000 contacts).
                    let mut tx = self.pool.begin_with($begin).await?;
                    for (sql, chunk) in contact_upserts("integration_retries", "reason", contacts) {
                        let mut query = sqlx::query(sql).bind(integration_id);
                        for (contact, reason) in chunk {
                            query = query.bind(contact).bind(reason);
                        }
                        query.execute(&mut *tx).await?;
                    }
                    tx.commit().await?;
                    Ok(())
                }

                async fn requeue_retries(&self, integration_id: &str, user: &UserId) -> Result<u64, StoreError> {
                    let mut tx = self.pool.begin_with($begin).await?;
                    // A no-op write: the contacts' change numbers are renewed by the trigger.
                    let touched = sqlx::query(concat!(
                        "UPDATE contacts SET updated_at = updated_at WHERE user_id = $2 AND id IN \
                         (SELECT contact_id FROM integration_retries WHERE integration_id = $1", $id, ")"
                    ))
                    .bind(integration_id)
                    .bind(user.as_str())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    sqlx::query(concat!(
                        "DELETE FROM integration_retries WHERE integration_id = $1", $id
                    ))
                    .bind(integration_id)
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    Ok(touched)
                }

                async fn forget_destination(&self, integration_id: &str) -> Result<(), StoreError> {
                    let mut tx = self.pool.begin_with($begin).await?;
                    sqlx::query(concat!(
                        "UPDATE integrations SET push_watermark = NULL, \
                         destination_epoch = destination_epoch + 1 WHERE id = $1", $id
                    ))
                    .bind(integration_id)
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query(concat!(
                        "DELETE FROM integration_contacts WHERE integration_id = $1", $id
                    ))
                    .bind(integration_id)
                    .execute(&mut *tx)
                    .await?;
                    // Unsubscribes were the old list's members'.
                    sqlx::query(concat!(
                        "DELETE FROM integration_unsubscribes WHERE integration_id = $1", $id
                    ))
                    .bind(integration_id)
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    Ok(())
                }

                async fn destination_epoch(&self, integration_id: &str) -> Result<i64, StoreError> {
                    let epoch: Option<i64> = sqlx::query_scalar(concat!(
                        "SELECT destination_epoch FROM integrations WHERE id = $1", $id
                    ))
                    .bind(integration_id)
                    .fetch_optional(&self.pool)
                    .await?;
                    Ok(epoch.unwrap_or(0))
                }

                async fn contacts_changed_count(
                    &self,
                    user: &UserId,
                    after: &PushKey,
                ) -> Result<u64, StoreError> {
                    let sql = sqlx::AssertSqlSafe(format!(
                        "SELECT COUNT(*) FROM contacts WHERE user_id = $1 AND {AFTER_KEY}"
                    ));
                    let n: i64 = sqlx::query_scalar(sql)
                        .bind(user.as_str())
                        .bind(after.seq)
                        .bind(&after.id)
                        .fetch_one(&self.pool)
                        .await?;
                    Ok(u64::try_from(n).unwrap_or(0))
                }

                async fn last_push_key(&self, user: &UserId) -> Result<Option<PushKey>, StoreError> {
                    let row: Option<(i64, String)> = sqlx::query_as(
                        "SELECT change_seq, id FROM contacts WHERE user_id = $1 \
                         ORDER BY change_seq DESC, id DESC LIMIT 1",
                    )
                    .bind(user.as_str())
                    .fetch_optional(&self.pool)
                    .await?;
                    Ok(row.map(|(seq, id)| PushKey { seq, id }))
                }

                async fn push_watermark(&self, integration_id: &str) -> Result<Option<PushKey>, StoreError> {
                    let mark: Option<Option<String>> = sqlx::query_scalar(concat!(
                        "SELECT push_watermark FROM integrations WHERE id = $1", $id
                    ))
                    .bind(integration_id)
                    .fetch_optional(&self.pool)
                    .await?;
                    Ok(mark.flatten().as_deref().and_then(PushKey::decode))
                }

                async fn advance_push_watermark(
                    &self,
                    integration_id: &str,
                    key: &PushKey,
                    epoch: i64,
                ) -> Result<(), StoreError> {
                    // Read, compare and write under a compare-and-swap, so two finishing jobs
                    // can never move the watermark back.
                    for _ in 0..5 {
                        let current = self.push_watermark(integration_id).await?;
                        if current.as_ref().is_some_and(|c| c >= key) {
                            return Ok(());
                        }
                        let old = current.map(|c| c.encode()).unwrap_or_default();
                        let done = sqlx::query(concat!(
                            "UPDATE integrations SET push_watermark = $2 WHERE id = $1", $id,
                            " AND COALESCE(push_watermark, '') = $3 AND destination_epoch = $4"
                        ))
                        .bind(integration_id)
                        .bind(key.encode())
                        .bind(old)
                        .bind(epoch)
                        .execute(&self.pool)
                        .await?;
                        if done.rows_affected() == 1 {
                            return Ok(());
                        }
                        if self.destination_epoch(integration_id).await? != epoch {
                            // Another destination now: its memory starts empty.
                            return Ok(());
                        }
                    }
                    Err(StoreError::Corrupt("the push watermark kept changing".into()))
                }

                async fn set_sync_schedule(
                    &self,
                    integration_id: &str,
                    interval_seconds: Option<i64>,
                    direction: Direction,
                    next: Option<DateTime<Utc>>,
                ) -> Result<(), StoreError> {
                    sqlx::query(concat!(
                        "UPDATE integrations SET sync_interval_seconds = $2, sync_direction = $3, \
                         next_sync_at = $4 WHERE id = $1", $id
                    ))
                    .bind(integration_id)
                    .bind(interval_seconds.and_then(|s| i32::try_from(s).ok()))
                    .bind(direction.as_str())
                    .bind(next)
                    .execute(&self.pool)
                    .await?;
                    Ok(())
                }

                async fn set_next_sync(&self, integration_id: &str, next: DateTime<Utc>) -> Result<(), StoreError> {
                    sqlx::query(concat!(
                        "UPDATE integrations SET next_sync_at = $2 WHERE id = $1", $id,
                        " AND sync_interval_seconds IS NOT NULL"
                    ))
                    .bind(integration_id)
                    .bind(next)
                    .execute(&self.pool)
                    .await?;
                    Ok(())
                }

                async fn update_integration_settings(
                    &self,
                    user: &UserId,
                    provider: ProviderId,
                    settings: &BTreeMap<String, String>,
                ) -> Result<Option<Integration>, StoreError> {
                    sqlx::query("UPDATE integrations SET settings = $3 WHERE user_id = $1 AND provider = $2")
                        .bind(user.as_str())
                        .bind(provider.as_str())
                        .bind(Json(settings))
                        .execute(&self.pool)
                        .await?;
                    self.integration(user, provider).await
                }

                async fn schedule_due_syncs(
                    &self,
                    now: DateTime<Utc>,
                    limit: u32,
                    max_attempts: u32,
                ) -> Result<u64, StoreError> {
                    let mut tx = self.pool.begin_with($begin).await?;
                    // The last statement's count is the pass's (SQLite: the due integrations
                    // moved on; PostgreSQL: the jobs queued).
                    let mut counts = Vec::new();
                    $(
                        let done = sqlx::query($schedule)
                            .bind(now)
                            .bind(i64::from(limit))
                            .bind(i32::try_from(max_attempts).unwrap_or(i32::MAX))
                            .execute(&mut *tx)
                            .await?;
                        counts.push(done.rows_affected());
                    )+
                    let due = counts.last().copied().unwrap_or(0);
                    tx.commit().await?;
                    if due > 0 {
                        self.job_changed("*");
                    }
                    Ok(due)
                }

                async fn sync_jobs_page(
                    &self,
                    user: &UserId,
                    provider: ProviderId,
                    before: Option<&JobCursor>,
                    limit: u32,
                ) -> Result<Vec<SyncJob>, StoreError> {
                    let sql = sqlx::AssertSqlSafe(format!(
                        "{}WHERE j.user_id = $1 AND i.provider = $2 AND (j.created_at < $3 OR \
                         (j.created_at = $3 AND j.id{} < $4)) ORDER BY j.created_at DESC, j.id DESC LIMIT $5",
                        job_select!($text),
                        $text
                    ));
                    // After every job (a four-digit year: SQLite compares the text).
                    let far = DateTime::<Utc>::from_timestamp(253_402_300_799, 0).unwrap_or_default();
                    let rows: Vec<SyncJobRow> = sqlx::query_as(sql)
                        .bind(user.as_str())
                        .bind(provider.as_str())
                        .bind(before.map(|c| c.created_at).unwrap_or(far))
                        .bind(before.map(|c| c.id.as_str()).unwrap_or("~"))
                        .bind(i64::from(limit))
                        .fetch_all(&self.pool)
                        .await?;
                    rows.into_iter().map(SyncJob::try_from).collect()
                }

                async fn cancel_sync_job(
                    &self,
                    user: &UserId,
                    id: &str,
                    now: DateTime<Utc>,
                ) -> Result<bool, StoreError> {
                    let done = sqlx::query(concat!(
                        "UPDATE sync_jobs SET state = 'canceled', finished_at = $3, \
                         last_error = 'canceled by its user' \
                         WHERE id = $1", $id, " AND user_id = $2 AND state IN ('queued', 'running')"
                    ))
                    .bind(id)
                    .bind(user.as_str())
                    .bind(now)
                    .execute(&self.pool)
                    .await?;
                    self.job_changed(id);
                    Ok(done.rows_affected() == 1)
                }

                async fn prune(&self, before: DateTime<Utc>, batch: u32) -> Result<Pruned, StoreError> {
                    let jobs = sqlx::query(
                        "DELETE FROM sync_jobs WHERE id IN (SELECT id FROM sync_jobs \
                         WHERE finished_at IS NOT NULL AND finished_at < $1 ORDER BY finished_at LIMIT $2)",
                    )
                    .bind(before)
                    .bind(i64::from(batch))
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
                    let activity = sqlx::query(
                        "DELETE FROM activity_logs WHERE id IN (SELECT id FROM activity_logs \
                         WHERE created_at < $1 ORDER BY created_at LIMIT $2)",
                    )
                    .bind(before)
                    .bind(i64::from(batch))
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
                    Ok(Pruned { jobs, activity })
                }

                async fn bind_oauth_browser(
                    &self,
                    state_hash: &str,
                    user: &UserId,
                    browser_hash: &str,
                    now: DateTime<Utc>,
                ) -> Result<BindOutcome, StoreError> {
                    let url: Option<Option<String>> = sqlx::query_scalar(
                        "UPDATE oauth_states SET browser_hash = $2 WHERE state_hash = $1 \
                         AND user_id = $4 AND browser_hash IS NULL AND expires_at > $3 \
                         RETURNING authorize_url",
                    )
                    .bind(state_hash)
                    .bind(browser_hash)
                    .bind(now)
                    .bind(user.as_str())
                    .fetch_optional(&self.pool)
                    .await?;
                    if let Some(url) = url.flatten() {
                        return Ok(BindOutcome::Bound(url));
                    }
                    let open: i64 = sqlx::query_scalar(
                        "SELECT COUNT(*) FROM oauth_states WHERE state_hash = $1 \
                         AND browser_hash IS NULL AND expires_at > $2",
                    )
                    .bind(state_hash)
                    .bind(now)
                    .fetch_one(&self.pool)
                    .await?;
                    Ok(if open > 0 {
                        BindOutcome::NotYours
                    } else {
                        BindOutcome::Unknown
                    })
                }

                async fn provider_fingerprints(
                    &self,
                    integration_id: &str,
                    contact_ids: &[&str],
                ) -> Result<std::collections::HashMap<String, String>, StoreError> {
                    let mut found = std::collections::HashMap::new();
                    for chunk in contact_ids.chunks(500) {
                        let placeholders: Vec<String> =
                            (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
                        let sql = sqlx::AssertSqlSafe(format!(
                            "SELECT contact_id, fingerprint FROM integration_contacts \
                             WHERE integration_id = {} AND contact_id IN ({})",
                            concat!("$1", $id),
                            placeholders.join(", ")
                        ));
                        // Not prepared once and cached: a plan made while the table was
                        // small (a sequential scan) would be kept as it grows, and every page
                        // of a large push would read the whole table.
                        let mut query = sqlx::query_as::<_, (String, String)>(sql)
                            .persistent(false)
                            .bind(integration_id);
                        for id in chunk {
                            query = query.bind(*id);
                        }
                        found.extend(query.fetch_all(&self.pool).await?);
                    }
                    Ok(found)
                }

                async fn save_provider_fingerprints(
                    &self,
                    integration_id: &str,
                    entries: &[(String, String)],
                    epoch: i64,
                ) -> Result<bool, StoreError> {
                    let mut tx = self.pool.begin_with($begin).await?;
                    // The integration's row, locked for the transaction (SQLite: the write lock
                    // taken at BEGIN), still in `epoch`: a destination change waits for this
                    // save or makes it save nothing.
                    let now: Option<i64> = sqlx::query_scalar(concat!(
                        "SELECT destination_epoch FROM integrations WHERE id = $1", $id, $for_update
                    ))
                    .bind(integration_id)
                    .fetch_optional(&mut *tx)
                    .await?;
                    if now != Some(epoch) {
                        return Ok(false);
                    }
                    for (sql, chunk) in contact_upserts("integration_contacts", "fingerprint", entries) {
                        let mut query = sqlx::query(sql).bind(integration_id);
                        for (contact, fingerprint) in chunk {
                            query = query.bind(contact).bind(fingerprint);
                        }
                        query.execute(&mut *tx).await?;
                    }
                    tx.commit().await?;
                    Ok(true)
                }

                fn job_changes(&self) -> tokio::sync::broadcast::Receiver<String> {
                    self.subscribe_job_changes()
                }
            }

            /// The statements upserting `(integration, contact, value)` rows into `table`, 500
            /// rows each (`$1` the integration, then contact and value per row), with the rows
            /// they bind: one row per contact, the last wins (a statement may not touch a row
            /// twice).
            fn contact_upserts<'a>(
                table: &str,
                column: &str,
                entries: &'a [(String, String)],
            ) -> Vec<(sqlx::AssertSqlSafe<String>, Vec<(&'a String, &'a String)>)> {
                let entries: Vec<(&String, &String)> = entries
                    .iter()
                    .map(|(c, v)| (c, v))
                    .collect::<BTreeMap<_, _>>()
                    .into_iter()
                    .collect();
                entries
                    .chunks(500)
                    .map(|chunk| {
                        let rows: Vec<String> = (0..chunk.len())
                            .map(|i| format!("({}, ${}, ${})", concat!("$1", $id), 2 + 2 * i, 3 + 2 * i))
                            .collect();
                        let sql = sqlx::AssertSqlSafe(format!(
                            "INSERT INTO {table} (integration_id, contact_id, {column}) \
                             VALUES {} ON CONFLICT (integration_id, contact_id) \
                             DO UPDATE SET {column} = excluded.{column}",
                            rows.join(", ")
                        ));
                        (sql, chunk.to_vec())
                    })
                    .collect()
            }

            /// A contact row with its change number.
            struct KeyedContact {
                push_seq: i64,
                contact: ContactRow,
            }

            $crate::store::rows::from_row!(KeyedContact { push_seq } flatten { contact: ContactRow });
        };
    };
}
