//! `webhook_store!(Type)` implements `WebhookStore` for a store with a `pool` field. The SQL is
//! the same on both backends; every timestamp compared in SQL is bound from Rust.
//!
//! `webhook_queue` (one narrow row per pending event) is kept in step with the inbox's `state`
//! by triggers (migration 4), so storing, finishing, failing or replaying an event is a single
//! statement and the queue can never disagree with the inbox.

macro_rules! webhook_store {
    ($name:ident) => {
        const _: () = {
            use chrono::{DateTime, Utc};

            use $crate::{
                domain::{UserId, subscription::PaymentProvider},
                store::{
                    FailedEvent, NewInboxEvent, OverdueSubscription, PendingEvent, StoreError,
                    WebhookStore,
                },
            };

            fn provider(name: String) -> Result<PaymentProvider, StoreError> {
                name.parse()
                    .map_err(|e: $crate::domain::subscription::UnknownPaymentProvider| {
                        StoreError::Corrupt(e.to_string())
                    })
            }

            fn overdue(
                (user, p, subscription_id, customer_id): (String, String, String, Option<String>),
            ) -> Result<OverdueSubscription, StoreError> {
                Ok(OverdueSubscription {
                    user: UserId::parse(user).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    provider: provider(p)?,
                    subscription_id,
                    customer_id,
                })
            }

            fn count(n: i64) -> u32 {
                u32::try_from(n).unwrap_or(u32::MAX)
            }

            #[async_trait::async_trait]
            impl WebhookStore for $name {
                async fn store_event(
                    &self,
                    e: &NewInboxEvent<'_>,
                    now: DateTime<Utc>,
                ) -> Result<bool, StoreError> {
                    let done = sqlx::query(
                        "INSERT INTO webhook_inbox (provider, event_id, event_type, received_at, \
                         event_created_at, object_id, order_key, payload, state) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending') \
                         ON CONFLICT (provider, event_id) DO NOTHING",
                    )
                    .bind(e.provider.as_str())
                    .bind(e.event_id)
                    .bind(e.event_type)
                    .bind(now)
                    .bind(e.created)
                    .bind(e.object_id)
                    .bind(e.order_key)
                    .bind(e.payload)
                    .execute(&self.pool)
                    .await?;
                    Ok(done.rows_affected() == 1)
                }

                async fn ready_order_keys(
                    &self,
                    now: DateTime<Utc>,
                ) -> Result<Vec<String>, StoreError> {
                    // Planned at every call (not a cached prepared statement): a plan cached
                    // while the tables were empty scanned webhook_streams once per queued event
                    // (measured: 1 s a claim during a storm on a fresh database).
                    let keys: Vec<String> = sqlx::query_scalar(
                        "SELECT q.order_key FROM webhook_queue q \
                         WHERE NOT EXISTS (SELECT 1 FROM webhook_streams s \
                           WHERE s.order_key = q.order_key AND s.lease_until > $1) \
                         ORDER BY q.received_at LIMIT 16",
                    )
                    .persistent(false)
                    .bind(now)
                    .fetch_all(&self.pool)
                    .await?;
                    let mut unique = Vec::with_capacity(keys.len());
                    for key in keys {
                        if !unique.contains(&key) {
                            unique.push(key);
                        }
                    }
                    Ok(unique)
                }

                async fn claim_order_key(
                    &self,
                    key: &str,
                    owner: &str,
                    until: DateTime<Utc>,
                    now: DateTime<Utc>,
                ) -> Result<bool, StoreError> {
                    let taken: Option<String> = sqlx::query_scalar(
                        "INSERT INTO webhook_streams (order_key, lease_owner, lease_until) \
                         VALUES ($1, $2, $3) ON CONFLICT (order_key) DO UPDATE SET \
                         lease_owner = excluded.lease_owner, lease_until = excluded.lease_until \
                         WHERE webhook_streams.lease_until <= $4 RETURNING order_key",
                    )
                    .bind(key)
                    .bind(owner)
                    .bind(until)
                    .bind(now)
                    .fetch_optional(&self.pool)
                    .await?;
                    Ok(taken.is_some())
                }

                async fn extend_order_key(
                    &self,
                    key: &str,
                    owner: &str,
                    until: DateTime<Utc>,
                ) -> Result<bool, StoreError> {
                    let done = sqlx::query(
                        "UPDATE webhook_streams SET lease_until = $3 \
                         WHERE order_key = $1 AND lease_owner = $2",
                    )
                    .bind(key)
                    .bind(owner)
                    .bind(until)
                    .execute(&self.pool)
                    .await?;
                    Ok(done.rows_affected() == 1)
                }

                async fn release_order_key(
                    &self,
                    key: &str,
                    owner: &str,
                    hold_until: Option<DateTime<Utc>>,
                ) -> Result<(), StoreError> {
                    match hold_until {
                        Some(until) => {
                            sqlx::query(
                                "UPDATE webhook_streams SET lease_owner = NULL, lease_until = $3 \
                                 WHERE order_key = $1 AND lease_owner = $2",
                            )
                            .bind(key)
                            .bind(owner)
                            .bind(until)
                            .execute(&self.pool)
                            .await?;
                        }
                        None => {
                            sqlx::query(
                                "DELETE FROM webhook_streams WHERE order_key = $1 AND lease_owner = $2",
                            )
                            .bind(key)
                            .bind(owner)
                            .execute(&self.pool)
                            .await?;
                        }
                    }
                    Ok(())
                }

                async fn pending_events(
                    &self,
                    key: &str,
                ) -> Result<Vec<PendingEvent>, StoreError> {
                    #[allow(clippy::type_complexity)]
                    let rows: Vec<(String, String, String, Option<DateTime<Utc>>, Option<String>, i32, DateTime<Utc>)> =
                        sqlx::query_as(
                            "SELECT i.provider, i.event_id, i.event_type, i.event_created_at, \
                             i.payload, i.attempts, q.received_at FROM webhook_queue q JOIN webhook_inbox i \
                             ON i.provider = q.provider AND i.event_id = q.event_id \
                             WHERE q.order_key = $1 AND i.state = 'pending' \
                             ORDER BY q.event_created_at, q.event_id LIMIT 50",
                        )
                        .persistent(false)
                        .bind(key)
                        .fetch_all(&self.pool)
                        .await?;
                    rows.into_iter()
                        .map(|(p, event_id, event_type, created, payload, attempts, received_at)| {
                            Ok(PendingEvent {
                                provider: provider(p)?,
                                event_id,
                                event_type,
                                created: created.ok_or_else(|| {
                                    StoreError::Corrupt("pending event without created".into())
                                })?,
                                payload: payload.ok_or_else(|| {
                                    StoreError::Corrupt("pending event without payload".into())
                                })?,
                                attempts: count(i64::from(attempts)),
                                received_at,
                            })
                        })
                        .collect()
                }

                async fn event_attempt_failed(
                    &self,
                    provider: PaymentProvider,
                    event_id: &str,
                    error: &str,
                    dead: bool,
                ) -> Result<(), StoreError> {
                    sqlx::query(
                        "UPDATE webhook_inbox SET attempts = attempts + 1, last_error = $3, \
                         state = CASE WHEN $4 THEN 'failed' ELSE state END \
                         WHERE provider = $1 AND event_id = $2 AND state = 'pending'",
                    )
                    .bind(provider.as_str())
                    .bind(event_id)
                    .bind(error)
                    .bind(dead)
                    .execute(&self.pool)
                    .await?;
                    Ok(())
                }

                async fn failed_events(&self, limit: u32) -> Result<Vec<FailedEvent>, StoreError> {
                    let rows: Vec<(String, String, String, Option<DateTime<Utc>>, i32, Option<String>, DateTime<Utc>)> =
                        sqlx::query_as(
                            "SELECT provider, event_id, event_type, event_created_at, attempts, \
                             last_error, received_at FROM webhook_inbox WHERE state = 'failed' \
                             ORDER BY received_at DESC LIMIT $1",
                        )
                        .bind(i64::from(limit))
                        .fetch_all(&self.pool)
                        .await?;
                    rows.into_iter()
                        .map(|(p, event_id, event_type, created, attempts, last_error, received_at)| {
                            Ok(FailedEvent {
                                provider: provider(p)?,
                                event_id,
                                event_type,
                                created,
                                attempts: count(i64::from(attempts)),
                                last_error,
                                received_at,
                            })
                        })
                        .collect()
                }

                async fn replay_event(
                    &self,
                    provider: PaymentProvider,
                    event_id: &str,
                ) -> Result<bool, StoreError> {
                    let done = sqlx::query(
                        "UPDATE webhook_inbox SET state = 'pending', attempts = 0 \
                         WHERE provider = $1 AND event_id = $2 AND state = 'failed'",
                    )
                    .bind(provider.as_str())
                    .bind(event_id)
                    .execute(&self.pool)
                    .await?;
                    Ok(done.rows_affected() == 1)
                }

                async fn pending_event_count(&self) -> Result<u64, StoreError> {
                    let n: i64 =
                        sqlx::query_scalar("SELECT COUNT(*) FROM webhook_queue")
                            .fetch_one(&self.pool)
                            .await?;
                    Ok(u64::try_from(n).unwrap_or(0))
                }

                async fn event_stored(
                    &self,
                    provider: PaymentProvider,
                    event_id: &str,
                ) -> Result<bool, StoreError> {
                    let found: Option<i32> = sqlx::query_scalar(
                        "SELECT 1 FROM webhook_inbox WHERE provider = $1 AND event_id = $2",
                    )
                    .bind(provider.as_str())
                    .bind(event_id)
                    .fetch_optional(&self.pool)
                    .await?;
                    Ok(found.is_some())
                }

                async fn overdue_subscriptions(
                    &self,
                    ended_before: DateTime<Utc>,
                    limit: u32,
                ) -> Result<Vec<OverdueSubscription>, StoreError> {
                    let rows: Vec<(String, String, String, Option<String>)> = sqlx::query_as(
                        "SELECT user_id, provider, provider_subscription_id, provider_customer_id \
                         FROM subscriptions WHERE provider_subscription_id IS NOT NULL \
                         AND current_period_end < $1 \
                         AND status NOT IN ('canceled', 'incomplete_expired') \
                         AND (state_as_of IS NULL OR state_as_of < current_period_end) \
                         ORDER BY current_period_end LIMIT $2",
                    )
                    .bind(ended_before)
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?;
                    rows.into_iter().map(overdue).collect()
                }

                async fn claim_ended_subscriptions(
                    &self,
                    since: DateTime<Utc>,
                    now: DateTime<Utc>,
                    limit: u32,
                ) -> Result<Vec<OverdueSubscription>, StoreError> {
                    // The conditions are repeated outside the subquery: a row another replica
                    // claimed meanwhile no longer matches when this update reaches it.
                    let rows: Vec<(String, String, String, Option<String>)> = sqlx::query_as(
                        "UPDATE subscriptions SET adoption_checked_at = $2 \
                         WHERE user_id IN (SELECT user_id FROM subscriptions \
                           WHERE provider_subscription_id IS NOT NULL \
                           AND status IN ('canceled', 'incomplete_expired') AND state_as_of > $1 \
                           AND (adoption_checked_at IS NULL OR adoption_checked_at < state_as_of) \
                           ORDER BY state_as_of DESC LIMIT $3) \
                         AND (adoption_checked_at IS NULL OR adoption_checked_at < state_as_of) \
                         RETURNING user_id, provider, provider_subscription_id, provider_customer_id",
                    )
                    .bind(since)
                    .bind(now)
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?;
                    rows.into_iter().map(overdue).collect()
                }

                async fn unclaim_ended_subscription(&self, user: &UserId) -> Result<(), StoreError> {
                    sqlx::query("UPDATE subscriptions SET adoption_checked_at = NULL WHERE user_id = $1")
                        .bind(user.as_str())
                        .execute(&self.pool)
                        .await?;
                    Ok(())
                }

                async fn events_listed_through(
                    &self,
                    provider: PaymentProvider,
                ) -> Result<Option<DateTime<Utc>>, StoreError> {
                    Ok(sqlx::query_scalar("SELECT at FROM reconciler_marks WHERE name = $1")
                        .bind(format!("events:{}", provider.as_str()))
                        .fetch_optional(&self.pool)
                        .await?)
                }

                async fn set_events_listed_through(
                    &self,
                    provider: PaymentProvider,
                    at: DateTime<Utc>,
                ) -> Result<(), StoreError> {
                    sqlx::query(
                        "INSERT INTO reconciler_marks (name, at) VALUES ($1, $2) \
                         ON CONFLICT (name) DO UPDATE SET at = excluded.at \
                         WHERE reconciler_marks.at < excluded.at",
                    )
                    .bind(format!("events:{}", provider.as_str()))
                    .bind(at)
                    .execute(&self.pool)
                    .await?;
                    Ok(())
                }
            }
        };
    };
}
