//! `overage_store!(Type)` implements `OverageStore` for a store with a `pool` field; the SQL is
//! the same on both backends.

macro_rules! overage_store {
    ($name:ident) => {
        const _: () = {
            use chrono::{DateTime, Utc};

            use $crate::{
                domain::UserId,
                store::{
                    StoreError,
                    overage::{ExtraCardMonth, OverageStore, OverageSubscriber},
                },
            };

            fn user(id: String) -> Result<UserId, StoreError> {
                UserId::parse(id).map_err(|_| StoreError::Corrupt("overage user_id".into()))
            }

            #[async_trait::async_trait]
            impl OverageStore for $name {
                async fn overage_subscribers(
                    &self,
                    after: Option<&UserId>,
                    limit: u32,
                ) -> Result<Vec<OverageSubscriber>, StoreError> {
                    let rows: Vec<(String, String, i64)> = sqlx::query_as(
                        "SELECT s.user_id, s.provider_customer_id, COALESCE(u.cards, 0) \
                         FROM subscriptions s LEFT JOIN usage_counts u ON u.user_id = s.user_id \
                         WHERE s.overage_enabled AND s.tier = 'pro' AND s.provider = 'stripe' \
                         AND s.extra_item_id IS NOT NULL AND s.provider_customer_id IS NOT NULL \
                         AND s.user_id > $1 ORDER BY s.user_id LIMIT $2",
                    )
                    .bind(after.map(|u| u.as_str()).unwrap_or(""))
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?;
                    rows.into_iter()
                        .map(|(id, customer_id, cards)| {
                            Ok(OverageSubscriber {
                                user_id: user(id)?,
                                customer_id,
                                cards: u64::try_from(cards).unwrap_or(0),
                            })
                        })
                        .collect()
                }

                async fn extra_cards_written(
                    &self,
                    user: &UserId,
                    month: &str,
                ) -> Result<u64, StoreError> {
                    let (n,): (i64,) = sqlx::query_as(
                        "SELECT COUNT(*) FROM overage_reports WHERE user_id = $1 AND month = $2",
                    )
                    .bind(user.as_str())
                    .bind(month)
                    .fetch_one(&self.pool)
                    .await?;
                    Ok(u64::try_from(n).unwrap_or(0))
                }

                async fn write_extra_cards(
                    &self,
                    months: &[ExtraCardMonth],
                ) -> Result<(), StoreError> {
                    for m in months {
                        sqlx::query(
                            "INSERT INTO overage_reports (user_id, month, n, customer_id, \
                             identifier) SELECT $1, $2, $3, $4, $5 WHERE EXISTS \
                             (SELECT 1 FROM subscriptions WHERE user_id = $1 AND overage_enabled) \
                             ON CONFLICT DO NOTHING",
                        )
                        .bind(m.user_id.as_str())
                        .bind(&m.month)
                        .bind(i64::try_from(m.n).unwrap_or(i64::MAX))
                        .bind(&m.customer_id)
                        .bind(&m.identifier)
                        .execute(&self.pool)
                        .await?;
                    }
                    Ok(())
                }

                async fn unreported_extra_cards(
                    &self,
                    limit: u32,
                ) -> Result<Vec<ExtraCardMonth>, StoreError> {
                    let rows: Vec<(String, String, i64, String, String)> = sqlx::query_as(
                        "SELECT user_id, month, CAST(n AS BIGINT), customer_id, identifier \
                         FROM overage_reports WHERE state = 'pending' \
                         ORDER BY created_at, identifier LIMIT $1",
                    )
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?;
                    rows.into_iter()
                        .map(|(id, month, n, customer_id, identifier)| {
                            Ok(ExtraCardMonth {
                                user_id: user(id)?,
                                month,
                                n: u64::try_from(n).unwrap_or(0),
                                customer_id,
                                identifier,
                            })
                        })
                        .collect()
                }

                async fn extra_card_reported(
                    &self,
                    identifier: &str,
                    now: DateTime<Utc>,
                ) -> Result<(), StoreError> {
                    sqlx::query(
                        "UPDATE overage_reports SET state = 'reported', reported_at = $2, \
                         last_error = NULL WHERE identifier = $1",
                    )
                    .bind(identifier)
                    .bind(now)
                    .execute(&self.pool)
                    .await?;
                    Ok(())
                }

                async fn extra_card_not_reported(
                    &self,
                    identifier: &str,
                    error: &str,
                    give_up: bool,
                ) -> Result<(), StoreError> {
                    sqlx::query(
                        "UPDATE overage_reports SET attempts = attempts + 1, last_error = $2, \
                         state = CASE WHEN $3 THEN 'failed' ELSE state END \
                         WHERE identifier = $1 AND state = 'pending'",
                    )
                    .bind(identifier)
                    .bind(error)
                    .bind(give_up)
                    .execute(&self.pool)
                    .await?;
                    Ok(())
                }
            }
        };
    };
}
