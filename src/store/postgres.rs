//! PostgreSQL storage: production, and many service replicas sharing one database.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use super::{
    Backend, Store, StoreError,
    rows::{IntegrationRow, SUBSCRIPTION_QUERY, SubscriptionRow, USAGE_QUERY, UsageRow},
};
use crate::domain::{
    Usage, UserId, integration::Integration, invoice::StoredInvoice, subscription::Subscription,
};

use super::{
    BillingTx, InvoiceCursor,
    rows::{InvoiceRow, invoice_columns},
};

pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let options: PgConnectOptions = url.parse()?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options.application_name("nexus-billing"))
            .await?;
        Ok(Self { pool })
    }
}

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("migrations/postgres")
            .run(&self.pool)
            .await?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn subscription(&self, user: &UserId) -> Result<Option<Subscription>, StoreError> {
        let row: Option<SubscriptionRow> = sqlx::query_as(SUBSCRIPTION_QUERY)
            .bind(user.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.map(Subscription::try_from).transpose()
    }

    async fn usage(&self, user: &UserId) -> Result<Usage, StoreError> {
        let row: UsageRow = sqlx::query_as(USAGE_QUERY)
            .bind(user.as_str())
            .fetch_one(&self.pool)
            .await?;
        Ok(row.into())
    }

    async fn integrations(&self, user: &UserId) -> Result<Vec<Integration>, StoreError> {
        let rows: Vec<IntegrationRow> = sqlx::query_as(
            "SELECT id::text AS id, user_id, provider, status, settings, last_sync_at, last_error, \
                    created_at, updated_at \
             FROM integrations WHERE user_id = $1 ORDER BY provider",
        )
        .bind(user.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(Integration::try_from).collect()
    }

    async fn invoices(
        &self,
        user: &UserId,
        cursor: Option<&InvoiceCursor>,
        limit: u32,
    ) -> Result<Vec<StoredInvoice>, StoreError> {
        let rows: Vec<InvoiceRow> = sqlx::query_as(
            concat!(
                "SELECT id::text AS id, ",
                invoice_columns!(),
                " FROM invoices WHERE user_id = $1 AND ($2::timestamptz IS NULL OR (provider_created_at, id) < ($2, $3::uuid)) \
                 ORDER BY provider_created_at DESC, id DESC LIMIT $4"
            ))
            .bind(user.as_str())
            .bind(cursor.map(|c| c.created_at))
            .bind(cursor.map(|c| c.id.clone()))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(StoredInvoice::try_from).collect()
    }

    async fn begin(&self) -> Result<Box<dyn BillingTx>, StoreError> {
        // READ COMMITTED plus row locks (`SELECT ... FOR UPDATE`) serialise writers per user.
        Ok(Box::new(PgTx(self.pool.begin().await?)))
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

billing_tx!(PgTx, sqlx::Postgres, lock: " FOR UPDATE", id_cast: "::uuid");
billing_records!(PgStore);
integration_store!(PgStore, id: "::uuid", text: "::text", skip_locked: " FOR UPDATE SKIP LOCKED",
    begin: "BEGIN", user_lock: "SELECT pg_advisory_xact_lock(hashtext($1))");
webhook_store!(PgStore);
