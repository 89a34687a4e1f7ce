//! Code both backends share, generated for each: the SQL is the same, only the pool or
//! transaction type, the row-locking clause and the id type differ.

/// `billing_tx!(Type, Database, lock_clause, id_cast)` implements `BillingTx` for
/// `Type(sqlx::Transaction<'static, Database>)`.
macro_rules! billing_tx {
    ($name:ident, $db:ty, lock: $lock:literal, id_cast: $cast:literal) => {
        /// The transaction, and the product signals it will emit once it commits.
        pub struct $name(
            sqlx::Transaction<'static, $db>,
            $crate::product_metrics::Pending,
        );

        #[async_trait::async_trait]
        impl $crate::store::BillingTx for $name {
            async fn finish_event(
                &mut self,
                provider: $crate::domain::subscription::PaymentProvider,
                event_id: &str,
                outcome: &str,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<bool, $crate::store::StoreError> {
                let done = sqlx::query(
                    // An event about a customer nobody here has (an erased user's, or one
                    // never linked) is kept by id only: its payload is someone's personal data
                    // with no use here.
                    "UPDATE webhook_inbox SET state = 'done', outcome = $3, processed_at = $4, \
                     last_error = NULL, \
                     payload = CASE WHEN $3 IN ('unknown_customer', 'erased', 'erased_refunded') \
                       THEN NULL ELSE payload END, \
                     order_key = CASE WHEN $3 IN ('unknown_customer', 'erased', 'erased_refunded') \
                       THEN NULL ELSE order_key END, \
                     object_id = CASE WHEN $3 IN ('unknown_customer', 'erased', 'erased_refunded') \
                       THEN NULL ELSE object_id END \
                     WHERE provider = $1 AND event_id = $2 AND state = 'pending'",
                )
                .bind(provider.as_str())
                .bind(event_id)
                .bind(outcome)
                .bind(now)
                .execute(&mut *self.0)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn lock_subscription(
                &mut self,
                user: &$crate::domain::UserId,
            ) -> Result<$crate::domain::Subscription, $crate::store::StoreError> {
                sqlx::query($crate::store::rows::ENSURE_SUBSCRIPTION)
                    .bind(user.as_str())
                    .execute(&mut *self.0)
                    .await?;
                let row: $crate::store::rows::SubscriptionRow = sqlx::query_as(concat!(
                    "SELECT user_id, tier, status, provider, provider_customer_id, \
                     provider_subscription_id, current_period_start, current_period_end, \
                     cancel_at_period_end, cancel_at, past_due_since, state_as_of, \
                     billing_interval, currency, trial_end, overage_enabled, extra_item_id \
                     FROM subscriptions WHERE user_id = $1",
                    $lock
                ))
                .bind(user.as_str())
                .fetch_one(&mut *self.0)
                .await?;
                let subscription: $crate::domain::Subscription = row.try_into()?;
                self.1.locked(&subscription);
                Ok(subscription)
            }

            async fn save_subscription(
                &mut self,
                s: &$crate::domain::Subscription,
            ) -> Result<(), $crate::store::StoreError> {
                sqlx::query($crate::store::rows::SAVE_SUBSCRIPTION)
                    .bind(s.user_id.as_str())
                    .bind(s.tier.as_str())
                    .bind(s.status.as_str())
                    .bind(s.provider.map(|p| p.as_str()))
                    .bind(s.provider_customer_id.as_deref())
                    .bind(s.provider_subscription_id.as_deref())
                    .bind(s.current_period_start)
                    .bind(s.current_period_end)
                    .bind(s.cancel_at_period_end)
                    .bind(s.cancel_at)
                    .bind(s.past_due_since)
                    .bind(s.state_as_of)
                    .bind(s.terms.interval.map(|i| i.as_str()))
                    .bind(s.terms.currency.as_deref())
                    .bind(s.terms.trial_end)
                    .bind(s.overage)
                    .bind(s.terms.extra_item.as_deref())
                    .execute(&mut *self.0)
                    .await?;
                self.1.saved(s);
                Ok(())
            }

            async fn invoice_state(
                &mut self,
                provider: $crate::domain::subscription::PaymentProvider,
                invoice_id: &str,
            ) -> Result<Option<$crate::store::InvoiceState>, $crate::store::StoreError> {
                let row: Option<(String, String, Option<chrono::DateTime<chrono::Utc>>)> =
                    sqlx::query_as(concat!("SELECT user_id, status, state_as_of FROM invoices \
                     WHERE provider = $1 AND provider_invoice_id = $2", $lock))
                    .bind(provider.as_str())
                    .bind(invoice_id)
                    .fetch_optional(&mut *self.0)
                    .await?;
                row.map($crate::store::rows::invoice_state).transpose()
            }

            async fn save_invoice(
                &mut self,
                i: &$crate::domain::invoice::Invoice,
                as_of: chrono::DateTime<chrono::Utc>,
            ) -> Result<(), $crate::store::StoreError> {
                // An invoice never moves to another user: the update applies only to the
                // row of the same user.
                sqlx::query(concat!(
                    "INSERT INTO invoices (id, user_id, provider, provider_invoice_id, \
                     provider_subscription_id, amount_due, amount_paid, currency, status, \
                     hosted_invoice_url, invoice_pdf_url, period_start, period_end, \
                     provider_created_at, state_as_of) VALUES ($1",
                    $cast,
                    ", $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
                     ON CONFLICT (provider, provider_invoice_id) DO UPDATE SET \
                     provider_subscription_id = excluded.provider_subscription_id, \
                     amount_due = excluded.amount_due, amount_paid = excluded.amount_paid, \
                     currency = excluded.currency, status = excluded.status, \
                     hosted_invoice_url = excluded.hosted_invoice_url, \
                     invoice_pdf_url = excluded.invoice_pdf_url, \
                     period_start = excluded.period_start, period_end = excluded.period_end, \
                     state_as_of = excluded.state_as_of \
                     WHERE invoices.user_id = excluded.user_id"
                ))
                .bind(uuid::Uuid::new_v4().to_string())
                .bind(i.user_id.as_str())
                .bind(i.provider.as_str())
                .bind(&i.provider_invoice_id)
                .bind(i.provider_subscription_id.as_deref())
                .bind(i.amount_due)
                .bind(i.amount_paid)
                .bind(&i.currency)
                .bind(i.status.as_str())
                .bind(i.hosted_invoice_url.as_deref())
                .bind(i.invoice_pdf_url.as_deref())
                .bind(i.period_start)
                .bind(i.period_end)
                .bind(i.created_at)
                .bind(as_of)
                .execute(&mut *self.0)
                .await?;
                Ok(())
            }

            async fn forget_customer(
                &mut self,
                provider: $crate::domain::subscription::PaymentProvider,
                customer_id: &str,
            ) -> Result<(), $crate::store::StoreError> {
                // Remembered for an erasure: the customer's old events name the user.
                sqlx::query(
                    "INSERT INTO forgotten_customers (provider, customer_id, user_id) \
                     SELECT provider, customer_id, user_id FROM billing_customers \
                     WHERE provider = $1 AND customer_id = $2 ON CONFLICT DO NOTHING",
                )
                .bind(provider.as_str())
                .bind(customer_id)
                .execute(&mut *self.0)
                .await?;
                sqlx::query("DELETE FROM billing_customers WHERE provider = $1 AND customer_id = $2")
                    .bind(provider.as_str())
                    .bind(customer_id)
                    .execute(&mut *self.0)
                    .await?;
                Ok(())
            }

            async fn schedule_dunning(
                &mut self,
                emails: &[$crate::store::NewDunningEmail<'_>],
            ) -> Result<u64, $crate::store::StoreError> {
                let mut new = 0;
                for email in emails {
                    let done = sqlx::query(
                        "INSERT INTO dunning_emails (id, user_id, provider, invoice_id, step, \
                         recipient, due_at, next_attempt_at, grace_ends_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8) \
                         ON CONFLICT (provider, invoice_id, step) DO NOTHING",
                    )
                    .bind(uuid::Uuid::now_v7().to_string())
                    .bind(email.user.as_str())
                    .bind(email.provider.as_str())
                    .bind(email.invoice_id)
                    .bind(email.step.to_string())
                    .bind(email.recipient)
                    .bind(email.due)
                    .bind(email.grace_ends)
                    .execute(&mut *self.0)
                    .await?;
                    new += done.rows_affected();
                }
                Ok(new)
            }

            async fn cancel_dunning(
                &mut self,
                provider: $crate::domain::subscription::PaymentProvider,
                invoice_id: &str,
            ) -> Result<u64, $crate::store::StoreError> {
                let done = sqlx::query(
                    "UPDATE dunning_emails SET state = 'cancelled', last_error = 'invoice settled' \
                     WHERE provider = $1 AND invoice_id = $2 AND state = 'pending'",
                )
                .bind(provider.as_str())
                .bind(invoice_id)
                .execute(&mut *self.0)
                .await?;
                Ok(done.rows_affected())
            }

            async fn log_activity(
                &mut self,
                user: &$crate::domain::UserId,
                activity: &$crate::domain::activity::Activity,
            ) -> Result<(), $crate::store::StoreError> {
                sqlx::query($crate::store::rows::LOG_ACTIVITY)
                    .bind(user.as_str())
                    .bind(activity.kind)
                    .bind(&activity.message)
                    .bind(sqlx::types::Json(&activity.details))
                    .execute(&mut *self.0)
                    .await?;
                self.1.logged(activity);
                Ok(())
            }

            async fn settle_mobile_payment(
                &mut self,
                request_id: &str,
                settled: &$crate::store::Settled<'_>,
            ) -> Result<Option<$crate::domain::prepaid::MobilePayment>, $crate::store::StoreError> {
                let row: Option<$crate::store::mpesa_sql::PaymentRow> =
                    sqlx::query_as($crate::store::mpesa_sql::SETTLE)
                        .bind(request_id)
                        .bind(settled.state.as_str())
                        .bind(settled.reason)
                        .bind(settled.receipt)
                        .bind(settled.now)
                        .fetch_optional(&mut *self.0)
                        .await?;
                row.map($crate::store::mpesa_sql::payment).transpose()
            }

            async fn prepaid_periods(
                &mut self,
                user: &$crate::domain::UserId,
                after: chrono::DateTime<chrono::Utc>,
            ) -> Result<Vec<$crate::domain::prepaid::PrepaidPeriod>, $crate::store::StoreError> {
                let rows: Vec<$crate::store::mpesa_sql::PeriodRow> = sqlx::query_as(
                    "SELECT checkout_request_id, tier, period_start, period_end FROM mpesa_payments \
                     WHERE user_id = $1 AND state = 'paid' AND period_end > $2 \
                     AND checkout_request_id IS NOT NULL ORDER BY period_start",
                )
                .bind(user.as_str())
                .bind(after)
                .fetch_all(&mut *self.0)
                .await?;
                rows.into_iter().map($crate::store::mpesa_sql::period).collect()
            }

            async fn save_prepaid_period(
                &mut self,
                period: &$crate::domain::prepaid::PrepaidPeriod,
            ) -> Result<(), $crate::store::StoreError> {
                sqlx::query(
                    "UPDATE mpesa_payments SET period_start = $2, period_end = $3 \
                     WHERE checkout_request_id = $1",
                )
                .bind(&period.request_id)
                .bind(period.start)
                .bind(period.end)
                .execute(&mut *self.0)
                .await?;
                Ok(())
            }

            async fn commit(self: Box<Self>) -> Result<(), $crate::store::StoreError> {
                let Self(tx, signals) = *self;
                tx.commit().await?;
                signals.emit();
                Ok(())
            }
        }
    };
}

/// `billing_records!(Type)` implements `BillingRecords` for a store with a `pool` field.
macro_rules! billing_records {
    ($name:ident) => {
        #[async_trait::async_trait]
        impl $crate::store::BillingRecords for $name {
            async fn billing_customer(
                &self,
                user: &$crate::domain::UserId,
                provider: $crate::domain::subscription::PaymentProvider,
            ) -> Result<Option<String>, $crate::store::StoreError> {
                Ok(sqlx::query_scalar(
                    "SELECT customer_id FROM billing_customers WHERE user_id = $1 AND provider = $2",
                )
                .bind(user.as_str())
                .bind(provider.as_str())
                .fetch_optional(&self.pool)
                .await?)
            }

            async fn save_billing_customer(
                &self,
                user: &$crate::domain::UserId,
                provider: $crate::domain::subscription::PaymentProvider,
                customer_id: &str,
            ) -> Result<String, $crate::store::StoreError> {
                sqlx::query(
                    "INSERT INTO billing_customers (user_id, provider, customer_id) VALUES ($1, $2, $3) \
                     ON CONFLICT DO NOTHING",
                )
                .bind(user.as_str())
                .bind(provider.as_str())
                .bind(customer_id)
                .execute(&self.pool)
                .await?;
                self.billing_customer(user, provider)
                    .await?
                    .ok_or_else(|| $crate::store::StoreError::Corrupt("customer id taken by another user".into()))
            }

            async fn user_for_customer(
                &self,
                provider: $crate::domain::subscription::PaymentProvider,
                customer_id: &str,
            ) -> Result<Option<$crate::domain::UserId>, $crate::store::StoreError> {
                let user: Option<String> = sqlx::query_scalar(
                    "SELECT user_id FROM billing_customers WHERE provider = $1 AND customer_id = $2",
                )
                .bind(provider.as_str())
                .bind(customer_id)
                .fetch_optional(&self.pool)
                .await?;
                user.map($crate::domain::UserId::parse)
                    .transpose()
                    .map_err(|e| $crate::store::StoreError::Corrupt(e.to_string()))
            }

            async fn lock_subscription_changes(
                &self,
                user: &$crate::domain::UserId,
                owner: &str,
                until: chrono::DateTime<chrono::Utc>,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<bool, $crate::store::StoreError> {
                sqlx::query($crate::store::rows::ENSURE_SUBSCRIPTION)
                    .bind(user.as_str())
                    .execute(&self.pool)
                    .await?;
                let done = sqlx::query(
                    "UPDATE subscriptions SET change_lock_owner = $2, change_lock_until = $3 \
                     WHERE user_id = $1 AND (change_lock_until IS NULL OR change_lock_until <= $4)",
                )
                .bind(user.as_str())
                .bind(owner)
                .bind(until)
                .bind(now)
                .execute(&self.pool)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn extend_subscription_lock(
                &self,
                user: &$crate::domain::UserId,
                owner: &str,
                until: chrono::DateTime<chrono::Utc>,
            ) -> Result<bool, $crate::store::StoreError> {
                let done = sqlx::query(
                    "UPDATE subscriptions SET change_lock_until = $3 \
                     WHERE user_id = $1 AND change_lock_owner = $2",
                )
                .bind(user.as_str())
                .bind(owner)
                .bind(until)
                .execute(&self.pool)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn unlock_subscription_changes(
                &self,
                user: &$crate::domain::UserId,
                owner: &str,
            ) -> Result<(), $crate::store::StoreError> {
                sqlx::query(
                    "UPDATE subscriptions SET change_lock_owner = NULL, change_lock_until = NULL \
                     WHERE user_id = $1 AND change_lock_owner = $2",
                )
                .bind(user.as_str())
                .bind(owner)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn checkouts(
                &self,
                user: &$crate::domain::UserId,
            ) -> Result<Vec<(String, bool)>, $crate::store::StoreError> {
                let rows: Vec<(String, String)> = sqlx::query_as(
                    "SELECT id, state FROM checkout_sessions WHERE user_id = $1 ORDER BY created_at, id",
                )
                .bind(user.as_str())
                .fetch_all(&self.pool)
                .await?;
                Ok(rows.into_iter().map(|(id, state)| (id, state == "open")).collect())
            }

            async fn open_checkouts(
                &self,
                user: &$crate::domain::UserId,
                only_open: bool,
            ) -> Result<
                Vec<($crate::domain::subscription::PaymentProvider, String)>,
                $crate::store::StoreError,
            > {
                let rows: Vec<(String, String)> = sqlx::query_as(
                    "SELECT provider, id FROM checkout_sessions WHERE user_id = $1 \
                     AND (state = 'open' OR NOT $2) ORDER BY created_at, id",
                )
                .bind(user.as_str())
                .bind(only_open)
                .fetch_all(&self.pool)
                .await?;
                rows.into_iter()
                    .map(|(provider, id)| {
                        provider
                            .parse()
                            .map(|p| (p, id))
                            .map_err(|e: $crate::domain::subscription::UnknownPaymentProvider| {
                                $crate::store::StoreError::Corrupt(e.to_string())
                            })
                    })
                    .collect()
            }

            async fn checkouts_since(
                &self,
                user: &$crate::domain::UserId,
                provider: $crate::domain::subscription::PaymentProvider,
                since: chrono::DateTime<chrono::Utc>,
            ) -> Result<Vec<String>, $crate::store::StoreError> {
                let rows: Vec<(String, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
                    "SELECT id, created_at FROM checkout_sessions WHERE user_id = $1 AND provider = $2",
                )
                .bind(user.as_str())
                .bind(provider.as_str())
                .fetch_all(&self.pool)
                .await?;
                Ok(rows
                    .into_iter()
                    .filter(|(_, at)| *at > since)
                    .map(|(id, _)| id)
                    .collect())
            }

            async fn save_checkout(
                &self,
                user: &$crate::domain::UserId,
                provider: $crate::domain::subscription::PaymentProvider,
                id: &str,
                url: &str,
            ) -> Result<(), $crate::store::StoreError> {
                sqlx::query(
                    "INSERT INTO checkout_sessions (id, user_id, provider, url) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (id) DO NOTHING",
                )
                .bind(id)
                .bind(user.as_str())
                .bind(provider.as_str())
                .bind(url)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn checkout_expired(&self, id: &str) -> Result<(), $crate::store::StoreError> {
                sqlx::query("UPDATE checkout_sessions SET state = 'expired' WHERE id = $1")
                    .bind(id)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn activity(
                &self,
                user: &$crate::domain::UserId,
                before: Option<i64>,
                limit: u32,
            ) -> Result<Vec<$crate::store::ActivityRecord>, $crate::store::StoreError> {
                let rows: Vec<$crate::store::rows::ActivityRow> = sqlx::query_as(
                    "SELECT id, kind, message, details, created_at FROM activity_logs \
                     WHERE user_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
                )
                .bind(user.as_str())
                .bind(before.unwrap_or(i64::MAX))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
                Ok(rows.into_iter().map($crate::store::ActivityRecord::from).collect())
            }
        }
    };
}
