//! `integration_store!(Type, id: "..", text: "..", skip_locked: "..")` implements
//! `IntegrationStore` for a store with a `pool` field. The SQL is the same on both backends;
//! only the id casts (`$1::uuid`, `id::text` on PostgreSQL) and the row-locking clause of the
//! job claim (`FOR UPDATE SKIP LOCKED` on PostgreSQL; SQLite runs one writer at a time) differ.
//! Every timestamp compared in SQL is bound from Rust, so both backends compare like with like.

/// The columns of a `SyncJobRow`, from `sync_jobs j JOIN integrations i`.
macro_rules! job_select {
    ($text:literal) => {
        concat!(
            "SELECT j.id",
            $text,
            " AS id, j.integration_id",
            $text,
            " AS integration_id, \
             j.user_id, i.provider, j.direction, j.state, j.checkpoint, j.contacts_done, \
             j.contacts_total, j.contacts_skipped, j.skipped_reason, j.contacts_failed, \
             j.failures, j.last_error, j.attempts, j.max_attempts, j.next_attempt_at, \
             j.created_at, j.started_at, j.finished_at, j.full_push, j.rate_limited, j.attempts_in_a_row \
             FROM sync_jobs j JOIN integrations i ON i.id = j.integration_id "
        )
    };
}

macro_rules! integration_store {
    ($name:ident, id: $id:literal, text: $text:literal, skip_locked: $lock:literal) => {
        const _: () = {
            use std::collections::BTreeMap;

            use chrono::{DateTime, Utc};
            use sqlx::types::Json;

            use $crate::{
                domain::{
                    UserId,
                    activity::Activity,
                    catalogue::ProviderId,
                    contact::Contact,
                    integration::{Integration, IntegrationStatus},
                    sync_job::{Direction, JobProgress, SyncJob},
                },
                store::{
                    IntegrationStore, JobEnd, NewSyncJob, OAuthState, StoreError,
                    rows::{ContactRow, IntegrationRow, SyncJobRow},
                },
            };

            const INTEGRATION: &str = concat!(
                "SELECT id", $text, " AS id, user_id, provider, status, settings, last_sync_at, \
                 last_error, created_at, updated_at FROM integrations "
            );
            const JOB: &str = job_select!($text);

            impl $name {
                async fn job_where(
                    &self,
                    condition: &'static str,
                    id: &str,
                ) -> Result<Option<SyncJob>, StoreError> {
                    let sql = sqlx::AssertSqlSafe(format!("{JOB}{condition}"));
                    let row: Option<SyncJobRow> = sqlx::query_as(sql)
                        .bind(id)
                        .fetch_optional(&self.pool)
                        .await?;
                    row.map(SyncJob::try_from).transpose()
                }
            }

            #[async_trait::async_trait]
            impl IntegrationStore for $name {
                async fn integration(
                    &self,
                    user: &UserId,
                    provider: ProviderId,
                ) -> Result<Option<Integration>, StoreError> {
                    let sql = sqlx::AssertSqlSafe(format!(
                        "{INTEGRATION}WHERE user_id = $1 AND provider = $2"
                    ));
                    let row: Option<IntegrationRow> = sqlx::query_as(sql)
                        .bind(user.as_str())
                        .bind(provider.as_str())
                        .fetch_optional(&self.pool)
                        .await?;
                    row.map(Integration::try_from).transpose()
                }

                async fn integration_by_id(&self, id: &str) -> Result<Option<Integration>, StoreError> {
                    let sql = sqlx::AssertSqlSafe(format!(
                        "{INTEGRATION}WHERE id = {}",
                        concat!("$1", $id)
                    ));
                    let row: Option<IntegrationRow> = sqlx::query_as(sql)
                        .bind(id)
                        .fetch_optional(&self.pool)
                        .await?;
                    row.map(Integration::try_from).transpose()
                }

                async fn sealed_credentials(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
                    Ok(sqlx::query_scalar(concat!(
                        "SELECT credentials FROM integrations WHERE id = $1", $id
                    ))
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?)
                }

                async fn save_integration(
                    &self,
                    user: &UserId,
                    provider: ProviderId,
                    sealed: &[u8],
                    settings: &BTreeMap<String, String>,
                ) -> Result<Integration, StoreError> {
                    sqlx::query(concat!(
                        "INSERT INTO integrations (id, user_id, provider, status, credentials, settings) \
                         VALUES ($1", $id, ", $2, $3, 'active', $4, $5) \
                         ON CONFLICT (user_id, provider) DO UPDATE SET status = 'active', \
                         credentials = excluded.credentials, settings = excluded.settings, \
                         last_error = NULL"
                    ))
                    .bind(uuid::Uuid::new_v4().to_string())
                    .bind(user.as_str())
                    .bind(provider.as_str())
                    .bind(sealed)
                    .bind(Json(settings))
                    .execute(&self.pool)
                    .await?;
                    self.integration(user, provider)
                        .await?
                        .ok_or_else(|| StoreError::Corrupt("saved integration vanished".into()))
                }

                async fn delete_integration(
                    &self,
                    user: &UserId,
                    provider: ProviderId,
                ) -> Result<bool, StoreError> {
                    // Its jobs go with it (ON DELETE CASCADE); a worker running one loses its
                    // lease at its next checkpoint and stops.
                    let done = sqlx::query("DELETE FROM integrations WHERE user_id = $1 AND provider = $2")
                        .bind(user.as_str())
                        .bind(provider.as_str())
                        .execute(&self.pool)
                        .await?;
                    self.job_changed("*");
                    Ok(done.rows_affected() > 0)
                }

                async fn set_integration_health(
                    &self,
                    id: &str,
                    status: IntegrationStatus,
                    last_error: Option<&str>,
                ) -> Result<(), StoreError> {
                    sqlx::query(concat!(
                        "UPDATE integrations SET status = $2, last_error = $3 WHERE id = $1", $id
                    ))
                    .bind(id)
                    .bind(status.as_str())
                    .bind(last_error)
                    .execute(&self.pool)
                    .await?;
                    Ok(())
                }

                async fn record_sync_time(&self, id: &str, at: DateTime<Utc>) -> Result<(), StoreError> {
                    sqlx::query(concat!(
                        "UPDATE integrations SET last_sync_at = $2, last_error = NULL WHERE id = $1", $id
                    ))
                    .bind(id)
                    .bind(at)
                    .execute(&self.pool)
                    .await?;
                    Ok(())
                }

                async fn append_activity(&self, user: &UserId, activity: &Activity) -> Result<(), StoreError> {
                    sqlx::query($crate::store::rows::LOG_ACTIVITY)
                        .bind(user.as_str())
                        .bind(activity.kind)
                        .bind(&activity.message)
                        .bind(Json(&activity.details))
                        .execute(&self.pool)
                        .await?;
                    Ok(())
                }

                async fn contact_count(&self, user: &UserId) -> Result<u64, StoreError> {
                    // The database keeps the count (usage_counts): one row, whatever the size.
                    let n: i64 = sqlx::query_scalar(
                        "SELECT COALESCE((SELECT contacts FROM usage_counts WHERE user_id = $1), 0)",
                    )
                        .bind(user.as_str())
                        .fetch_one(&self.pool)
                        .await?;
                    Ok(u64::try_from(n).unwrap_or(0))
                }

                async fn contacts_after(
                    &self,
                    user: &UserId,
                    after: Option<&str>,
                    limit: u32,
                ) -> Result<Vec<Contact>, StoreError> {
                    // `id > ''` rather than `($2 IS NULL OR id > $2)`: a plain range the
                    // (user_id, id) index serves, so every page costs the same however deep.
                    let rows: Vec<ContactRow> = sqlx::query_as(
                        "SELECT id, email, first_name, last_name, company, phone, job_title \
                         FROM contacts WHERE user_id = $1 AND id > $2 ORDER BY id LIMIT $3",
                    )
                    .bind(user.as_str())
                    .bind(after.unwrap_or(""))
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?;
                    Ok(rows.into_iter().map(Contact::from).collect())
                }

                async fn enqueue_sync(&self, job: &NewSyncJob<'_>) -> Result<(SyncJob, bool), StoreError> {
                    // The partial unique index allows one queued-or-running job per integration:
                    // a second request finds the first one's job instead of adding another.
                    for _ in 0..3 {
                        let done = sqlx::query(concat!(
                            "INSERT INTO sync_jobs (id, integration_id, user_id, direction, state, \
                             max_attempts, next_attempt_at, created_at, full_push) \
                             VALUES ($1", $id, ", $2", $id, ", $3, $4, 'queued', $5, $6, $7, $8) \
                             ON CONFLICT (integration_id) WHERE state IN ('queued', 'running') DO NOTHING"
                        ))
                        .bind(uuid::Uuid::new_v4().to_string())
                        .bind(job.integration_id)
                        .bind(job.user.as_str())
                        .bind(job.direction.as_str())
                        .bind(i32::try_from(job.max_attempts).unwrap_or(i32::MAX))
                        .bind(job.due)
                        .bind(job.now)
                        .bind(job.full)
                        .execute(&self.pool)
                        .await?;
                        self.job_changed(job.integration_id);
                        let active = self
                            .job_where(
                                concat!(
                                    "WHERE j.integration_id = $1", $id,
                                    " AND j.state IN ('queued', 'running')"
                                ),
                                job.integration_id,
                            )
                            .await?;
                        // None: the active job finished in between; try again.
                        if let Some(active) = active {
                            return Ok((active, done.rows_affected() == 1));
                        }
                    }
                    Err(StoreError::Corrupt("could not queue a sync job".into()))
                }

                async fn sync_job(&self, user: &UserId, id: &str) -> Result<Option<SyncJob>, StoreError> {
                    Ok(self
                        .job_where(concat!("WHERE j.id = $1", $id), id)
                        .await?
                        .filter(|job| &job.user_id == user))
                }

                async fn expedite_sync(
                    &self,
                    id: &str,
                    now: DateTime<Utc>,
                    direction: Direction,
                    full: bool,
                ) -> Result<bool, StoreError> {
                    let done = sqlx::query(concat!(
                        "UPDATE sync_jobs SET direction = $3, full_push = (full_push OR $4), next_attempt_at = \
                         CASE WHEN next_attempt_at > $2 THEN $2 ELSE next_attempt_at END \
                         WHERE id = $1", $id, " AND state = 'queued' AND attempts = 0 AND started_at IS NULL"
                    ))
                    .bind(id)
                    .bind(now)
                    .bind(direction.as_str())
                    .bind(full)
                    .execute(&self.pool)
                    .await?;
                    self.job_changed(id);
                    Ok(done.rows_affected() == 1)
                }

                async fn claim_sync_job(
                    &self,
                    worker: &str,
                    now: DateTime<Utc>,
                    lease_until: DateTime<Utc>,
                ) -> Result<Option<SyncJob>, StoreError> {
                    let id: Option<String> = sqlx::query_scalar(concat!(
                        "UPDATE sync_jobs SET state = 'running', lease_owner = $1, \
                         lease_expires_at = $3, attempts = attempts + 1, \
                         attempts_in_a_row = attempts_in_a_row + 1, \
                         started_at = COALESCE(started_at, $2) \
                         WHERE id = (SELECT j.id FROM sync_jobs j \
                           WHERE ((j.state = 'queued' AND j.next_attempt_at <= $2) \
                              OR (j.state = 'running' AND j.lease_expires_at < $2)) \
                             AND NOT EXISTS (SELECT 1 FROM sync_jobs o \
                               WHERE o.integration_id = j.integration_id AND o.id <> j.id \
                                 AND o.state = 'canceled' AND o.lease_expires_at >= $2) \
                           ORDER BY j.next_attempt_at LIMIT 1", $lock, ") \
                         RETURNING id", $text
                    ))
                    .bind(worker)
                    .bind(now)
                    .bind(lease_until)
                    .fetch_optional(&self.pool)
                    .await?;
                    match id {
                        Some(id) => {
                            self.job_changed(&id);
                            self.job_where(concat!("WHERE j.id = $1", $id), &id).await
                        }
                        None => Ok(None),
                    }
                }

                async fn extend_lease(
                    &self,
                    id: &str,
                    worker: &str,
                    lease_until: DateTime<Utc>,
                ) -> Result<bool, StoreError> {
                    let done = sqlx::query(concat!(
                        "UPDATE sync_jobs SET lease_expires_at = $3 WHERE id = $1", $id,
                        " AND lease_owner = $2 AND state = 'running'"
                    ))
                    .bind(id)
                    .bind(worker)
                    .bind(lease_until)
                    .execute(&self.pool)
                    .await?;
                    Ok(done.rows_affected() == 1)
                }

                async fn release_stopped_job(&self, id: &str, worker: &str) -> Result<(), StoreError> {
                    sqlx::query(concat!(
                        "UPDATE sync_jobs SET lease_owner = NULL, lease_expires_at = NULL \
                         WHERE id = $1", $id, " AND lease_owner = $2 AND state <> 'running'"
                    ))
                    .bind(id)
                    .bind(worker)
                    .execute(&self.pool)
                    .await?;
                    Ok(())
                }

                async fn previous_job_checkpoint(
                    &self,
                    integration_id: &str,
                    job_id: &str,
                ) -> Result<Option<String>, StoreError> {
                    let checkpoint: Option<Option<String>> = sqlx::query_scalar(concat!(
                        "SELECT checkpoint FROM sync_jobs WHERE integration_id = $1", $id,
                        " AND id <> $2", $id, " ORDER BY created_at DESC LIMIT 1"
                    ))
                    .bind(integration_id)
                    .bind(job_id)
                    .fetch_optional(&self.pool)
                    .await?;
                    Ok(checkpoint.flatten())
                }

                async fn save_checkpoint(
                    &self,
                    id: &str,
                    worker: &str,
                    checkpoint: &str,
                ) -> Result<bool, StoreError> {
                    let done = sqlx::query(concat!(
                        "UPDATE sync_jobs SET checkpoint = $3 \
                         WHERE id = $1", $id, " AND lease_owner = $2 AND state = 'running'"
                    ))
                    .bind(id)
                    .bind(worker)
                    .bind(checkpoint)
                    .execute(&self.pool)
                    .await?;
                    Ok(done.rows_affected() == 1)
                }

                async fn save_progress(
                    &self,
                    id: &str,
                    worker: &str,
                    p: &JobProgress,
                ) -> Result<bool, StoreError> {
                    let done = sqlx::query(concat!(
                        "UPDATE sync_jobs SET checkpoint = $3, contacts_done = $4, contacts_total = $5, \
                         contacts_skipped = $6, skipped_reason = $7, contacts_failed = $8, failures = $9, \
                         rate_limited = 0, attempts_in_a_row = 1 \
                         WHERE id = $1", $id, " AND lease_owner = $2 AND state = 'running'"
                    ))
                    .bind(id)
                    .bind(worker)
                    .bind(p.checkpoint.as_deref())
                    .bind(i64::try_from(p.contacts_done).unwrap_or(i64::MAX))
                    .bind(i64::try_from(p.contacts_total).unwrap_or(i64::MAX))
                    .bind(i64::try_from(p.contacts_skipped).unwrap_or(i64::MAX))
                    .bind(p.skipped_reason.as_deref())
                    .bind(i64::try_from(p.contacts_failed).unwrap_or(i64::MAX))
                    .bind(Json(&p.failures))
                    .execute(&self.pool)
                    .await?;
                    self.job_changed(id);
                    Ok(done.rows_affected() == 1)
                }

                async fn end_sync_job(
                    &self,
                    id: &str,
                    worker: &str,
                    end: &JobEnd<'_>,
                ) -> Result<bool, StoreError> {
                    let query = match end {
                        JobEnd::Finished { state, at, error } => sqlx::query(concat!(
                            "UPDATE sync_jobs SET state = $3, last_error = $4, finished_at = $5, \
                             lease_owner = NULL, lease_expires_at = NULL \
                             WHERE id = $1", $id, " AND lease_owner = $2 AND state = 'running'"
                        ))
                        .bind(id)
                        .bind(worker)
                        .bind(state.as_str())
                        .bind(*error)
                        .bind(*at),
                        JobEnd::Retry { at, error, count_attempt, rate_limited } => sqlx::query(concat!(
                            "UPDATE sync_jobs SET state = 'queued', next_attempt_at = $3, last_error = $4, \
                             attempts = attempts - $5, attempts_in_a_row = attempts_in_a_row - $5, \
                             lease_owner = NULL, lease_expires_at = NULL, \
                             rate_limited = CASE WHEN $6 THEN rate_limited + 1 ELSE rate_limited END \
                             WHERE id = $1", $id, " AND lease_owner = $2 AND state = 'running'"
                        ))
                        .bind(id)
                        .bind(worker)
                        .bind(*at)
                        .bind(*error)
                        .bind(if *count_attempt { 0i32 } else { 1i32 })
                        .bind(*rate_limited),
                    };
                    let ended = query.execute(&self.pool).await?.rows_affected() == 1;
                    self.job_changed(id);
                    Ok(ended)
                }

                async fn sealed_credentials_page(
                    &self,
                    after: Option<&str>,
                    limit: u32,
                ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
                    Ok(sqlx::query_as(concat!(
                        "SELECT id", $text, " AS id, credentials FROM integrations \
                         WHERE id > $1", $id, " ORDER BY id LIMIT $2"
                    ))
                    .bind(after.unwrap_or("00000000-0000-0000-0000-000000000000"))
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?)
                }

                async fn replace_sealed_credentials(
                    &self,
                    id: &str,
                    old: &[u8],
                    new: &[u8],
                ) -> Result<bool, StoreError> {
                    let done = sqlx::query(concat!(
                        "UPDATE integrations SET credentials = $3 WHERE id = $1", $id,
                        " AND credentials = $2"
                    ))
                    .bind(id)
                    .bind(old)
                    .bind(new)
                    .execute(&self.pool)
                    .await?;
                    Ok(done.rows_affected() == 1)
                }

                async fn save_oauth_state(&self, state: &OAuthState, now: DateTime<Utc>) -> Result<(), StoreError> {
                    sqlx::query("DELETE FROM oauth_states WHERE expires_at < $1")
                        .bind(now)
                        .execute(&self.pool)
                        .await?;
                    sqlx::query(
                        "INSERT INTO oauth_states (state_hash, user_id, provider, code_verifier, \
                         redirect_after, settings, expires_at, authorize_url) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    )
                    .bind(&state.state_hash)
                    .bind(state.user.as_str())
                    .bind(state.provider.as_str())
                    .bind(state.sealed_verifier.as_deref())
                    .bind(&state.redirect_after)
                    .bind(Json(&state.settings))
                    .bind(state.expires_at)
                    .bind(&state.authorize_url)
                    .execute(&self.pool)
                    .await?;
                    Ok(())
                }

                async fn take_oauth_state(
                    &self,
                    state_hash: &str,
                    user: Option<&UserId>,
                    browser_hash: Option<&str>,
                ) -> Result<Option<OAuthState>, StoreError> {
                    type Row = (String, String, Option<Vec<u8>>, String, Json<BTreeMap<String, String>>, DateTime<Utc>);
                    let row: Option<Row> = sqlx::query_as(
                        "DELETE FROM oauth_states WHERE state_hash = $1 AND ($2 = '' OR user_id = $2) \
                         AND ($3 = '' OR browser_hash = $3) \
                         RETURNING user_id, provider, code_verifier, redirect_after, settings, expires_at",
                    )
                    .bind(state_hash)
                    .bind(user.map(UserId::as_str).unwrap_or(""))
                    .bind(browser_hash.unwrap_or(""))
                    .fetch_optional(&self.pool)
                    .await?;
                    let Some((user_id, provider, sealed_verifier, redirect_after, settings, expires_at)) = row else {
                        return Ok(None);
                    };
                    Ok(Some(OAuthState {
                        state_hash: state_hash.to_string(),
                        user: UserId::parse(&user_id)
                            .map_err(|_| StoreError::Corrupt(format!("bad user id in oauth_states: {user_id:?}")))?,
                        provider: provider
                            .parse::<ProviderId>()
                            .map_err(|_| StoreError::Corrupt(format!("unknown provider {provider:?} in oauth_states")))?,
                        sealed_verifier,
                        redirect_after,
                        settings: settings.0,
                        expires_at,
                        authorize_url: String::new(),
                    }))
                }

                async fn lock_token_refresh(
                    &self,
                    id: &str,
                    owner: &str,
                    until: DateTime<Utc>,
                    now: DateTime<Utc>,
                ) -> Result<bool, StoreError> {
                    let done = sqlx::query(concat!(
                        "UPDATE integrations SET refresh_lock_owner = $2, refresh_lock_until = $3 \
                         WHERE id = $1", $id, " AND (refresh_lock_until IS NULL OR refresh_lock_until < $4)"
                    ))
                    .bind(id)
                    .bind(owner)
                    .bind(until)
                    .bind(now)
                    .execute(&self.pool)
                    .await?;
                    Ok(done.rows_affected() == 1)
                }

                async fn unlock_token_refresh(&self, id: &str, owner: &str) -> Result<(), StoreError> {
                    sqlx::query(concat!(
                        "UPDATE integrations SET refresh_lock_owner = NULL, refresh_lock_until = NULL \
                         WHERE id = $1", $id, " AND refresh_lock_owner = $2"
                    ))
                    .bind(id)
                    .bind(owner)
                    .execute(&self.pool)
                    .await?;
                    Ok(())
                }
            }
        };
    };
}
