//! `provider_webhook_store!(Type, id: "..", text: "..", skip_locked: "..")` implements
//! `ProviderWebhookStore` for a store with a `pool` field (`HealthStore` is in `health_sql.rs`). The SQL is the
//! same on both backends but for the id casts and the row-locking clause of the lease claim
//! (`FOR UPDATE SKIP LOCKED` on PostgreSQL; SQLite runs one writer at a time).

macro_rules! provider_webhook_store {
    ($name:ident, id: $id:literal, text: $text:literal, skip_locked: $lock:literal) => {
        const _: () = {
            use chrono::{DateTime, Utc};

            use $crate::{
                domain::{
                    UserId,
                    catalogue::ProviderId,
                },
                store::{
                    StoreError,
                    provider_webhooks::{
                        NewProviderEvent, ProviderEvent, ProviderWebhookStore, WebhookRegistration,
                    },
                },
            };

            const REGISTRATION: &str = concat!(
                "SELECT w.integration_id", $text, ", i.user_id, w.provider, w.account, \
                 w.secret_hash, w.remote_id, w.expires_at FROM integration_webhooks w \
                 JOIN integrations i ON i.id = w.integration_id "
            );

            type RegistrationRow = (
                String,
                String,
                String,
                Option<String>,
                Option<String>,
                Option<String>,
                Option<DateTime<Utc>>,
            );

            fn registration(row: RegistrationRow) -> Result<WebhookRegistration, StoreError> {
                let (integration_id, user, provider, account, secret_hash, remote_id, expires_at) =
                    row;
                Ok(WebhookRegistration {
                    integration_id,
                    user_id: UserId::parse(user)
                        .map_err(|_| StoreError::Corrupt("webhook registration user".into()))?,
                    provider: provider
                        .parse()
                        .map_err(|_| StoreError::Corrupt("webhook registration provider".into()))?,
                    account,
                    secret_hash,
                    remote_id,
                    expires_at,
                })
            }

            fn count(n: i64) -> u64 {
                u64::try_from(n).unwrap_or(0)
            }

            impl $name {
                async fn lease_held(
                    &self,
                    integration_id: &str,
                    owner: &str,
                    now: DateTime<Utc>,
                ) -> Result<bool, StoreError> {
                    let held: Option<i32> = sqlx::query_scalar(concat!(
                        "SELECT 1 FROM integration_webhooks WHERE integration_id = $1",
                        $id,
                        " AND lease_owner = $2 AND lease_until > $3"
                    ))
                    .bind(integration_id)
                    .bind(owner)
                    .bind(now)
                    .fetch_optional(&self.pool)
                    .await?;
                    Ok(held.is_some())
                }
            }

            #[async_trait::async_trait]
            impl ProviderWebhookStore for $name {
                async fn save_webhook_registration(
                    &self,
                    r: &WebhookRegistration,
                    now: DateTime<Utc>,
                ) -> Result<bool, StoreError> {
                    let done = sqlx::query(concat!(
                        "INSERT INTO integration_webhooks (integration_id, provider, account, \
                         secret_hash, remote_id, expires_at, created_at) \
                         SELECT id, $2, $3, $4, $5, $6, $7 FROM integrations WHERE id = $1",
                        $id,
                        " ON CONFLICT (integration_id) DO UPDATE SET provider = excluded.provider, \
                         account = excluded.account, secret_hash = excluded.secret_hash, \
                         previous_secret_hash = NULL, renewal_claimed_until = NULL, \
                         remote_id = excluded.remote_id, expires_at = excluded.expires_at"
                    ))
                    .bind(&r.integration_id)
                    .bind(r.provider.as_str())
                    .bind(&r.account)
                    .bind(&r.secret_hash)
                    .bind(&r.remote_id)
                    .bind(r.expires_at)
                    .bind(now)
                    .execute(&self.pool)
                    .await?;
                    Ok(done.rows_affected() > 0)
                }

                async fn webhook_registration(
                    &self,
                    integration_id: &str,
                ) -> Result<Option<WebhookRegistration>, StoreError> {
                    let sql = sqlx::AssertSqlSafe(format!(
                        "{REGISTRATION}WHERE w.integration_id = $1{}",
                        $id
                    ));
                    let row: Option<RegistrationRow> = sqlx::query_as(sql)
                        .bind(integration_id)
                        .fetch_optional(&self.pool)
                        .await?;
                    row.map(registration).transpose()
                }

                async fn registrations_of_account(
                    &self,
                    provider: ProviderId,
                    account: &str,
                ) -> Result<Vec<WebhookRegistration>, StoreError> {
                    let sql = sqlx::AssertSqlSafe(format!(
                        "{REGISTRATION}WHERE w.provider = $1 AND w.account = $2 \
                         ORDER BY w.integration_id LIMIT 1000"
                    ));
                    let rows: Vec<RegistrationRow> = sqlx::query_as(sql)
                        .bind(provider.as_str())
                        .bind(account)
                        .fetch_all(&self.pool)
                        .await?;
                    rows.into_iter().map(registration).collect()
                }

                async fn registration_of_secret(
                    &self,
                    provider: ProviderId,
                    secret_hash: &str,
                ) -> Result<Option<WebhookRegistration>, StoreError> {
                    let sql = sqlx::AssertSqlSafe(format!(
                        "{REGISTRATION}WHERE w.provider = $1 AND (w.secret_hash = $2 \
                         OR w.previous_secret_hash = $2)"
                    ));
                    let row: Option<RegistrationRow> = sqlx::query_as(sql)
                        .bind(provider.as_str())
                        .bind(secret_hash)
                        .fetch_optional(&self.pool)
                        .await?;
                    row.map(registration).transpose()
                }

                async fn expiring_registrations(
                    &self,
                    provider: ProviderId,
                    before: DateTime<Utc>,
                    now: DateTime<Utc>,
                    limit: u32,
                ) -> Result<Vec<WebhookRegistration>, StoreError> {
                    let sql = sqlx::AssertSqlSafe(format!(
                        "{REGISTRATION}WHERE w.provider = $1 AND w.expires_at < $2 \
                         AND i.status = 'active' AND (w.renewal_claimed_until IS NULL \
                         OR w.renewal_claimed_until < $3) ORDER BY w.expires_at LIMIT $4"
                    ));
                    let rows: Vec<RegistrationRow> = sqlx::query_as(sql)
                        .bind(provider.as_str())
                        .bind(before)
                        .bind(now)
                        .bind(i64::from(limit))
                        .fetch_all(&self.pool)
                        .await?;
                    rows.into_iter().map(registration).collect()
                }

                async fn claim_renewal(
                    &self,
                    integration_id: &str,
                    until: DateTime<Utc>,
                    now: DateTime<Utc>,
                ) -> Result<bool, StoreError> {
                    let done = sqlx::query(concat!(
                        "UPDATE integration_webhooks SET renewal_claimed_until = $2 \
                         WHERE integration_id = $1",
                        $id,
                        " AND (renewal_claimed_until IS NULL OR renewal_claimed_until < $3)"
                    ))
                    .bind(integration_id)
                    .bind(until)
                    .bind(now)
                    .execute(&self.pool)
                    .await?;
                    Ok(done.rows_affected() > 0)
                }

                async fn rotate_webhook_secret(
                    &self,
                    integration_id: &str,
                    remote_id: &str,
                    new_hash: &str,
                ) -> Result<bool, StoreError> {
                    let done = sqlx::query(concat!(
                        "UPDATE integration_webhooks SET previous_secret_hash = secret_hash, \
                         secret_hash = $3 WHERE integration_id = $1",
                        $id,
                        " AND remote_id = $2"
                    ))
                    .bind(integration_id)
                    .bind(remote_id)
                    .bind(new_hash)
                    .execute(&self.pool)
                    .await?;
                    Ok(done.rows_affected() > 0)
                }

                async fn restore_webhook_secret(
                    &self,
                    integration_id: &str,
                    failed_hash: &str,
                ) -> Result<(), StoreError> {
                    sqlx::query(concat!(
                        "UPDATE integration_webhooks SET secret_hash = previous_secret_hash \
                         WHERE integration_id = $1",
                        $id,
                        " AND secret_hash = $2"
                    ))
                    .bind(integration_id)
                    .bind(failed_hash)
                    .execute(&self.pool)
                    .await?;
                    Ok(())
                }

                async fn renewed(
                    &self,
                    integration_id: &str,
                    remote_id: &str,
                    expires_at: DateTime<Utc>,
                ) -> Result<bool, StoreError> {
                    let done = sqlx::query(concat!(
                        "UPDATE integration_webhooks SET expires_at = $3, \
                         renewal_claimed_until = NULL WHERE integration_id = $1",
                        $id,
                        " AND remote_id = $2"
                    ))
                    .bind(integration_id)
                    .bind(remote_id)
                    .bind(expires_at)
                    .execute(&self.pool)
                    .await?;
                    Ok(done.rows_affected() > 0)
                }

                async fn store_provider_events(
                    &self,
                    events: &[NewProviderEvent],
                    now: DateTime<Utc>,
                ) -> Result<u64, StoreError> {
                    // One statement per 200 events (a HubSpot delivery holds at most 100):
                    // a delivery is stored whole or not at all, and quickly.
                    let mut tx = self.pool.begin().await?;
                    let mut stored = 0;
                    for chunk in events.chunks(200) {
                        let rows: Vec<String> = (0..chunk.len())
                            .map(|i| {
                                let n = 2 + i * 4;
                                format!("(${}, ${}, ${}, ${})", n, n + 1, n + 2, n + 3)
                            })
                            .collect();
                        let sql = sqlx::AssertSqlSafe(format!(
                            "INSERT INTO integration_webhook_events (integration_id, delivery_key, \
                             kind, payload, received_at, next_attempt_at) \
                             SELECT i.id, v.column2, v.column3, v.column4, $1, $1 \
                             FROM (VALUES {}) AS v JOIN integrations i ON i.id = v.column1{} \
                             WHERE true ON CONFLICT (delivery_key) DO NOTHING",
                            rows.join(", "),
                            $id
                        ));
                        let mut query = sqlx::query(sql).bind(now);
                        for e in chunk {
                            query = query
                                .bind(&e.integration_id)
                                .bind(&e.delivery_key)
                                .bind(&e.kind)
                                .bind(&e.payload);
                        }
                        stored += query.execute(&mut *tx).await?.rows_affected();
                    }
                    tx.commit().await?;
                    Ok(stored)
                }

                async fn claim_webhook_integration(
                    &self,
                    owner: &str,
                    until: DateTime<Utc>,
                    now: DateTime<Utc>,
                ) -> Result<Option<String>, StoreError> {
                    // The outer condition is checked again on the row itself: of two replicas
                    // picking the same connection, one takes it.
                    let id: Option<String> = sqlx::query_scalar(concat!(
                        "UPDATE integration_webhooks SET lease_owner = $1, lease_until = $2 \
                         WHERE integration_id = (SELECT w.integration_id FROM integration_webhooks w \
                         WHERE (w.lease_until IS NULL OR w.lease_until < $3) AND EXISTS \
                         (SELECT 1 FROM integration_webhook_events e WHERE \
                         e.integration_id = w.integration_id AND e.state = 'pending' \
                         AND e.next_attempt_at <= $3) \
                         ORDER BY w.lease_until NULLS FIRST LIMIT 1",
                        $lock,
                        ") AND (lease_until IS NULL OR lease_until < $3) \
                         RETURNING integration_id",
                        $text
                    ))
                    .bind(owner)
                    .bind(until)
                    .bind(now)
                    .fetch_optional(&self.pool)
                    .await?;
                    Ok(id)
                }

                async fn pending_provider_events(
                    &self,
                    integration_id: &str,
                    now: DateTime<Utc>,
                    limit: u32,
                ) -> Result<Vec<ProviderEvent>, StoreError> {
                    let rows: Vec<(i64, String, String, DateTime<Utc>, i32)> =
                        sqlx::query_as(concat!(
                            "SELECT id, kind, payload, received_at, attempts \
                             FROM integration_webhook_events WHERE integration_id = $1",
                            $id,
                            " AND state = 'pending' AND next_attempt_at <= $2 \
                             ORDER BY id LIMIT $3"
                        ))
                        .bind(integration_id)
                        .bind(now)
                        .bind(i64::from(limit))
                        .fetch_all(&self.pool)
                        .await?;
                    Ok(rows
                        .into_iter()
                        .map(|(id, kind, payload, received_at, attempts)| ProviderEvent {
                            id,
                            kind,
                            payload,
                            received_at,
                            attempts: u32::try_from(attempts).unwrap_or(0),
                        })
                        .collect())
                }

                async fn finish_provider_events(
                    &self,
                    integration_id: &str,
                    owner: &str,
                    ids: &[i64],
                    outcome: &str,
                    now: DateTime<Utc>,
                ) -> Result<bool, StoreError> {
                    let mut held = true;
                    for chunk in ids.chunks(500) {
                        let placeholders: Vec<String> =
                            (0..chunk.len()).map(|i| format!("${}", i + 6)).collect();
                        let sql = sqlx::AssertSqlSafe(format!(
                            "UPDATE integration_webhook_events SET state = 'done', outcome = $1, \
                             applied_at = $2 WHERE state = 'pending' AND EXISTS (SELECT 1 FROM \
                             integration_webhooks WHERE integration_id = $3{} AND lease_owner = $4 \
                             AND lease_until > $5) AND id IN ({})",
                            $id,
                            placeholders.join(", ")
                        ));
                        let mut query = sqlx::query(sql)
                            .bind(outcome)
                            .bind(now)
                            .bind(integration_id)
                            .bind(owner)
                            .bind(now);
                        for id in chunk {
                            query = query.bind(*id);
                        }
                        if query.execute(&self.pool).await?.rows_affected() == 0 {
                            held = self.lease_held(integration_id, owner, now).await?;
                        }
                    }
                    Ok(held)
                }

                #[allow(clippy::too_many_arguments)]
                async fn retry_provider_events(
                    &self,
                    integration_id: &str,
                    owner: &str,
                    ids: &[i64],
                    error: &str,
                    retry_at: DateTime<Utc>,
                    count: bool,
                    max_attempts: u32,
                ) -> Result<u64, StoreError> {
                    let mut given_up = 0;
                    let now = Utc::now();
                    for chunk in ids.chunks(500) {
                        let placeholders: Vec<String> =
                            (0..chunk.len()).map(|i| format!("${}", i + 8)).collect();
                        // A given-up event gets its time too, so retention prunes it.
                        let sql = sqlx::AssertSqlSafe(format!(
                            "UPDATE integration_webhook_events SET \
                             attempts = attempts + CASE WHEN $4 THEN 1 ELSE 0 END, \
                             last_error = $1, next_attempt_at = $2, \
                             state = CASE WHEN $4 AND attempts + 1 >= $3 THEN 'failed' ELSE 'pending' END, \
                             applied_at = CASE WHEN $4 AND attempts + 1 >= $3 THEN $7 ELSE NULL END \
                             WHERE state = 'pending' AND EXISTS (SELECT 1 FROM integration_webhooks \
                             WHERE integration_id = $5{} AND lease_owner = $6 AND lease_until > $7) \
                             AND id IN ({}) RETURNING state",
                            $id,
                            placeholders.join(", ")
                        ));
                        let mut query = sqlx::query_scalar(sql)
                            .bind(error)
                            .bind(retry_at)
                            .bind(i64::from(max_attempts))
                            .bind(count)
                            .bind(integration_id)
                            .bind(owner)
                            .bind(now);
                        for id in chunk {
                            query = query.bind(*id);
                        }
                        let states: Vec<String> = query.fetch_all(&self.pool).await?;
                        given_up += states.iter().filter(|s| *s == "failed").count() as u64;
                    }
                    Ok(given_up)
                }

                async fn release_webhook_integration(
                    &self,
                    integration_id: &str,
                    owner: &str,
                ) -> Result<(), StoreError> {
                    sqlx::query(concat!(
                        "UPDATE integration_webhooks SET lease_owner = NULL, lease_until = NULL \
                         WHERE integration_id = $1",
                        $id,
                        " AND lease_owner = $2"
                    ))
                    .bind(integration_id)
                    .bind(owner)
                    .execute(&self.pool)
                    .await?;
                    Ok(())
                }

                async fn pending_provider_event_count(&self) -> Result<u64, StoreError> {
                    let n: i64 = sqlx::query_scalar(
                        "SELECT COUNT(*) FROM integration_webhook_events WHERE state = 'pending'",
                    )
                    .fetch_one(&self.pool)
                    .await?;
                    Ok(count(n))
                }

                async fn prune_provider_events(
                    &self,
                    before: DateTime<Utc>,
                ) -> Result<u64, StoreError> {
                    let done = sqlx::query(
                        "DELETE FROM integration_webhook_events WHERE state <> 'pending' \
                         AND applied_at < $1",
                    )
                    .bind(before)
                    .execute(&self.pool)
                    .await?;
                    Ok(done.rows_affected())
                }

                async fn remember_unsubscribe(
                    &self,
                    integration_id: &str,
                    email: &str,
                    now: DateTime<Utc>,
                ) -> Result<(), StoreError> {
                    sqlx::query(concat!(
                        "INSERT INTO integration_unsubscribes (integration_id, email, at) \
                         SELECT id, $2, $3 FROM integrations WHERE id = $1",
                        $id,
                        " ON CONFLICT (integration_id, email) DO UPDATE SET at = excluded.at"
                    ))
                    .bind(integration_id)
                    .bind(email.to_lowercase())
                    .bind(now)
                    .execute(&self.pool)
                    .await?;
                    Ok(())
                }

                async fn forget_unsubscribe(
                    &self,
                    integration_id: &str,
                    email: &str,
                ) -> Result<(), StoreError> {
                    sqlx::query(concat!(
                        "DELETE FROM integration_unsubscribes WHERE integration_id = $1",
                        $id,
                        " AND email = $2"
                    ))
                    .bind(integration_id)
                    .bind(email.to_lowercase())
                    .execute(&self.pool)
                    .await?;
                    Ok(())
                }

                async fn owe_push(
                    &self,
                    integration_id: &str,
                    now: DateTime<Utc>,
                ) -> Result<(), StoreError> {
                    sqlx::query(concat!(
                        "INSERT INTO integration_owed_pushes (integration_id, owed_since) \
                         SELECT id, $2 FROM integrations WHERE id = $1",
                        $id,
                        " ON CONFLICT (integration_id) DO NOTHING"
                    ))
                    .bind(integration_id)
                    .bind(now)
                    .execute(&self.pool)
                    .await?;
                    Ok(())
                }

                async fn take_owed_push(&self, integration_id: &str) -> Result<bool, StoreError> {
                    let done = sqlx::query(concat!(
                        "DELETE FROM integration_owed_pushes WHERE integration_id = $1",
                        $id
                    ))
                    .bind(integration_id)
                    .execute(&self.pool)
                    .await?;
                    Ok(done.rows_affected() > 0)
                }

                async fn unsubscribed_among(
                    &self,
                    integration_id: &str,
                    emails: &[String],
                ) -> Result<Vec<String>, StoreError> {
                    let mut out = Vec::new();
                    for chunk in emails.chunks(500) {
                        let placeholders: Vec<String> =
                            (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
                        let sql = sqlx::AssertSqlSafe(format!(
                            "SELECT email FROM integration_unsubscribes WHERE integration_id = $1{} \
                             AND email IN ({})",
                            $id,
                            placeholders.join(", ")
                        ));
                        let mut query = sqlx::query_scalar(sql).bind(integration_id);
                        for email in chunk {
                            query = query.bind(email);
                        }
                        let found: Vec<String> = query.fetch_all(&self.pool).await?;
                        out.extend(found);
                    }
                    Ok(out)
                }
            }

        };
    };
}
