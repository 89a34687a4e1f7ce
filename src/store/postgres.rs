//! PostgreSQL storage: production, and many service replicas sharing one database.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use super::{
    Backend, Store, StoreError,
    rows::{
        IntegrationRow, STANDING_QUERY, SUBSCRIPTION_QUERY, StandingRow, SubscriptionRow,
        USAGE_QUERY, UsageRow,
    },
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
    /// Job ids from `NOTIFY sync_jobs` (every replica's writes), fed by one listener task
    /// started on the first subscription.
    changes: tokio::sync::broadcast::Sender<String>,
    listening: std::sync::Once,
}

impl PgStore {
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let options: PgConnectOptions = url.parse()?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options.application_name("nexus-billing"))
            .await?;
        Ok(Self {
            pool,
            changes: tokio::sync::broadcast::channel(1024).0,
            listening: std::sync::Once::new(),
        })
    }

    /// The trigger on `sync_jobs` sends every write as a notification: nothing to do here.
    fn job_changed(&self, _id: &str) {}

    fn subscribe_job_changes(&self) -> tokio::sync::broadcast::Receiver<String> {
        let receiver = self.changes.subscribe();
        self.listening.call_once(|| {
            let pool = self.pool.clone();
            let changes = self.changes.clone();
            tokio::spawn(listen_for_job_changes(pool, changes));
        });
        receiver
    }
}

/// Forwards `NOTIFY sync_jobs` to the in-process channel. After a lost connection it says
/// `*` (something may have changed) and listens again.
async fn listen_for_job_changes(pool: PgPool, changes: tokio::sync::broadcast::Sender<String>) {
    // Ends with the store: a closed pool means the service is stopping.
    while !pool.is_closed() {
        // A connection of its own, not one of the pool's: a listener keeps its connection for
        // good, and with the pool's few connections that left one fewer for every request (a
        // bookkeeping write after a provider call could time out waiting for one).
        let own = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_lazy_with((*pool.connect_options()).clone());
        let mut listener = match sqlx::postgres::PgListener::connect_with(&own).await {
            Ok(listener) => listener,
            Err(e) => {
                tracing::warn!(error = %crate::telemetry::error_chain(&e), "cannot listen for sync job changes; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Err(e) = listener.listen("sync_jobs").await {
            tracing::warn!(error = %crate::telemetry::error_chain(&e), "cannot listen for sync job changes; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        // Listening from now on: a change notified before (while the connection was being
        // made) was not heard, so anything may have changed.
        let _ = changes.send("*".into());
        loop {
            let received = tokio::select! {
                received = listener.try_recv() => received,
                () = pool.close_event() => {
                    own.close().await;
                    return;
                }
            };
            match received {
                Ok(Some(notification)) => {
                    let _ = changes.send(notification.payload().to_string());
                }
                // The connection was lost; the next call reconnects. Anything may have changed.
                Ok(None) => {
                    let _ = changes.send("*".into());
                }
                Err(_) if pool.is_closed() => return,
                Err(e) => {
                    tracing::warn!(error = %crate::telemetry::error_chain(&e), "listening for sync job changes failed; reconnecting");
                    let _ = changes.send("*".into());
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One scheduler pass: due integrations (locked, skipping those another replica holds) move
/// one interval on and get a job in their recurring direction, unless one is active.
///
/// The lock is `FOR NO KEY UPDATE` (what the UPDATE of `next_sync_at` needs), not `FOR UPDATE`:
/// a SyncIntegration inserting its job at the same moment holds its index entry and waits for a
/// KEY SHARE lock on the integration (the foreign key), which `FOR UPDATE` blocks while this
/// pass waits for that index entry: PostgreSQL found a deadlock and the user got UNAVAILABLE
/// (found by the contacts model, seed 2923308930246574676; timing-dependent).
const SCHEDULE_DUE_SYNCS: &str = "\
    WITH due AS ( \
        SELECT id FROM integrations \
        WHERE next_sync_at IS NOT NULL AND status = 'active' AND next_sync_at <= $1 \
        ORDER BY next_sync_at LIMIT $2 FOR NO KEY UPDATE SKIP LOCKED), \
    bumped AS ( \
        UPDATE integrations i \
        SET next_sync_at = $1 + make_interval(secs => i.sync_interval_seconds) \
        FROM due WHERE i.id = due.id \
        RETURNING i.id, i.user_id, i.sync_direction) \
    INSERT INTO sync_jobs (id, integration_id, user_id, direction, state, max_attempts, \
        next_attempt_at, created_at) \
    SELECT gen_random_uuid(), id, user_id, sync_direction, 'queued', $3, $1, $1 FROM bumped \
    ON CONFLICT (integration_id) WHERE state IN ('queued', 'running') DO NOTHING";

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        super::migrations::postgres().run(&self.pool).await?;
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

    async fn standing(&self, user: &UserId) -> Result<(Option<Subscription>, Usage), StoreError> {
        let row: StandingRow = sqlx::query_as(STANDING_QUERY)
            .bind(user.as_str())
            .fetch_one(&self.pool)
            .await?;
        row.into_domain()
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
        Ok(Box::new(PgTx(self.pool.begin().await?, Default::default())))
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

billing_tx!(PgTx, sqlx::Postgres, lock: " FOR UPDATE", id_cast: "::uuid");
billing_records!(PgStore);
integration_store!(PgStore, id: "::uuid", text: "::text", skip_locked: " FOR UPDATE SKIP LOCKED");
contact_import!(PgStore, begin: "BEGIN", user_lock: "SELECT pg_advisory_xact_lock(hashtext($1))",
    guard: "SELECT 1::bigint FROM integrations WHERE id = $1::uuid AND destination_epoch = $2 FOR NO KEY UPDATE");
webhook_store!(PgStore);
provider_webhook_store!(PgStore, id: "::uuid", text: "::text", skip_locked: " FOR UPDATE SKIP LOCKED");
health_store!(PgStore, id: "::uuid", text: "::text");
mobile_payments!(PgStore);
dunning_outbox!(PgStore);
overage_store!(PgStore);
user_data_store!(PgStore);
sync_queue!(PgStore, id: "::uuid", text: "::text",
    horizon: "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint", begin: "BEGIN",
    for_update: " FOR UPDATE",
    schedule: [SCHEDULE_DUE_SYNCS]);
