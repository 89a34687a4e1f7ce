//! `health_store!(Type, id: "..", text: "..")` implements `HealthStore` for a store with a
//! `pool` field: each integration's sync health facts. The SQL is the same on both backends but
//! for the id casts.

macro_rules! health_store {
    ($name:ident, id: $id:literal, text: $text:literal) => {
        const _: () = {
            use chrono::{DateTime, Utc};

            use $crate::{
                domain::{
                    UserId,
                    catalogue::ProviderId,
                    health::{HealthFacts, SyncHealthEvent},
                    integration::IntegrationStatus,
                },
                store::{StoreError, provider_webhooks::HealthStore},
            };

            fn count(n: i64) -> u64 {
                u64::try_from(n).unwrap_or(0)
            }

            #[async_trait::async_trait]
            impl HealthStore for $name {
                async fn record_sync_health(
                    &self,
                    integration_id: &str,
                    event: SyncHealthEvent,
                    error: Option<&str>,
                    now: DateTime<Utc>,
                ) -> Result<(), StoreError> {
                    let mut tx = self.pool.begin().await?;
                    let (failures, success) = match event {
                        SyncHealthEvent::Succeeded => (Some(false), true),
                        SyncHealthEvent::Failed => (Some(true), false),
                        SyncHealthEvent::RateLimited => (None, false),
                    };
                    if let Some(failed) = failures {
                        sqlx::query(concat!(
                            "INSERT INTO integration_health (integration_id, failures_in_a_row, \
                             last_success_at, last_failure) SELECT id, CASE WHEN $2 THEN 1 ELSE 0 END, \
                             CASE WHEN $3 THEN $4 ELSE NULL END, $5 FROM integrations WHERE id = $1",
                            $id,
                            " ON CONFLICT (integration_id) DO UPDATE SET failures_in_a_row = \
                             CASE WHEN $2 THEN integration_health.failures_in_a_row + 1 ELSE 0 END, \
                             last_success_at = CASE WHEN $3 THEN $4 \
                             ELSE integration_health.last_success_at END, \
                             last_failure = CASE WHEN $2 THEN $5 ELSE NULL END"
                        ))
                        .bind(integration_id)
                        .bind(failed)
                        .bind(success)
                        .bind(now)
                        .bind(error)
                        .execute(&mut *tx)
                        .await?;
                    }
                    let kind = match event {
                        SyncHealthEvent::Succeeded => None,
                        SyncHealthEvent::Failed => Some("failure"),
                        SyncHealthEvent::RateLimited => Some("rate_limit"),
                    };
                    if let Some(kind) = kind {
                        sqlx::query(concat!(
                            "INSERT INTO integration_incidents (integration_id, kind, at) \
                             SELECT id, $2, $3 FROM integrations WHERE id = $1",
                            $id
                        ))
                        .bind(integration_id)
                        .bind(kind)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                        sqlx::query(concat!(
                            "DELETE FROM integration_incidents WHERE integration_id = $1",
                            $id,
                            " AND at < $2"
                        ))
                        .bind(integration_id)
                        .bind(now - chrono::Duration::hours(25))
                        .execute(&mut *tx)
                        .await?;
                    }
                    tx.commit().await?;
                    Ok(())
                }

                async fn health_facts(
                    &self,
                    user: &UserId,
                    since: DateTime<Utc>,
                ) -> Result<Vec<(String, HealthFacts)>, StoreError> {
                    type Row = (String, Option<i32>, Option<DateTime<Utc>>, Option<String>, i64, i64);
                    let rows: Vec<Row> =
                        sqlx::query_as(concat!(
                            "SELECT i.id", $text, ", h.failures_in_a_row, h.last_success_at, \
                             h.last_failure, \
                             (SELECT COUNT(*) FROM integration_incidents x WHERE \
                             x.integration_id = i.id AND x.kind = 'failure' AND x.at >= $2), \
                             (SELECT COUNT(*) FROM integration_incidents x WHERE \
                             x.integration_id = i.id AND x.kind = 'rate_limit' AND x.at >= $2) \
                             FROM integrations i LEFT JOIN integration_health h \
                             ON h.integration_id = i.id WHERE i.user_id = $1"
                        ))
                        .bind(user.as_str())
                        .bind(since)
                        .fetch_all(&self.pool)
                        .await?;
                    Ok(rows
                        .into_iter()
                        .map(|(id, in_a_row, last_success_at, last_failure, failures, waits)| {
                            (
                                id,
                                HealthFacts {
                                    failures_in_a_row: in_a_row
                                        .and_then(|n| u32::try_from(n).ok())
                                        .unwrap_or(0),
                                    last_success_at,
                                    last_failure,
                                    failures_24h: count(failures),
                                    rate_limit_waits_24h: count(waits),
                                },
                            )
                        })
                        .collect())
                }

                async fn health_census(
                    &self,
                    cap: u32,
                ) -> Result<Vec<(ProviderId, IntegrationStatus, u32, u64)>, StoreError> {
                    let rows: Vec<(String, String, i64, i64)> = sqlx::query_as(
                        "SELECT i.provider, i.status, \
                         CASE WHEN COALESCE(h.failures_in_a_row, 0) > $1 THEN $1 \
                         ELSE COALESCE(h.failures_in_a_row, 0) END AS f, COUNT(*) \
                         FROM integrations i LEFT JOIN integration_health h \
                         ON h.integration_id = i.id GROUP BY i.provider, i.status, f",
                    )
                    .bind(i64::from(cap))
                    .fetch_all(&self.pool)
                    .await?;
                    let mut out = Vec::new();
                    for (provider, status, failures, n) in rows {
                        let (Ok(provider), Ok(status)) = (provider.parse(), status.parse()) else {
                            continue;
                        };
                        out.push((
                            provider,
                            status,
                            u32::try_from(failures).unwrap_or(0),
                            count(n),
                        ));
                    }
                    Ok(out)
                }
            }
        };
    };
}
