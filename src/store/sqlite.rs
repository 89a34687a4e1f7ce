//! SQLite storage: the embedded default, so the service runs on a fresh machine with no setup.
//! WAL mode, foreign keys on, a busy timeout so concurrent writers wait instead of failing.

use std::{str::FromStr, time::Duration};

use async_trait::async_trait;
use sqlx::{
    SqlitePool,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
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

pub struct SqliteStore {
    pool: SqlitePool,
    /// The limit check's read on the caller's thread (`sqlite_reads.rs`); `None` in memory.
    reads: Option<super::sqlite_reads::FastReads>,
    /// Job ids written by this process (SQLite has one process: the embedded default).
    changes: tokio::sync::broadcast::Sender<String>,
}

impl SqliteStore {
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        // create_if_missing makes the file, not its directory.
        if let Some(dir) = options
            .get_filename()
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir).map_err(sqlx::Error::Io)?;
        }
        let reads = super::sqlite_reads::FastReads::for_file(options.get_filename());
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await?;
        Ok(Self {
            pool,
            reads,
            changes: tokio::sync::broadcast::channel(1024).0,
        })
    }

    fn job_changed(&self, id: &str) {
        // No receiver is fine: nobody is watching.
        let _ = self.changes.send(id.to_string());
    }

    fn subscribe_job_changes(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.changes.subscribe()
    }
}

/// A random version-4 UUID in SQL, one per row.
macro_rules! sqlite_uuid {
    () => {
        "lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || \
         substr(hex(randomblob(2)), 2) || '-' || substr('89ab', 1 + (abs(random()) % 4), 1) || \
         substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6)))"
    };
}

/// One scheduler pass, in one `BEGIN IMMEDIATE` transaction: jobs for the due integrations
/// (none where one is active), then their next time one interval on.
const QUEUE_DUE_SYNCS: &str = concat!(
    "INSERT INTO sync_jobs (id, integration_id, user_id, direction, state, max_attempts, \
     next_attempt_at, created_at) SELECT ",
    sqlite_uuid!(),
    ", id, user_id, sync_direction, 'queued', $3, $1, $1 FROM integrations \
     WHERE next_sync_at IS NOT NULL AND status = 'active' AND next_sync_at <= $1 \
     ORDER BY next_sync_at LIMIT $2 \
     ON CONFLICT (integration_id) WHERE state IN ('queued', 'running') DO NOTHING"
);
const BUMP_DUE_SYNCS: &str = "UPDATE integrations SET next_sync_at = \
     strftime('%Y-%m-%dT%H:%M:%fZ', $1, '+' || sync_interval_seconds || ' seconds') \
     WHERE id IN (SELECT id FROM integrations \
     WHERE next_sync_at IS NOT NULL AND status = 'active' AND next_sync_at <= $1 \
     ORDER BY next_sync_at LIMIT $2) AND $3 = $3";

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        super::migrations::sqlite().run(&self.pool).await?;
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
        if let Some(answer) = self.reads.as_ref().and_then(|reads| reads.standing(user)) {
            return Ok(answer);
        }
        let row: StandingRow = sqlx::query_as(STANDING_QUERY)
            .bind(user.as_str())
            .fetch_one(&self.pool)
            .await?;
        row.into_domain()
    }

    async fn integrations(&self, user: &UserId) -> Result<Vec<Integration>, StoreError> {
        let rows: Vec<IntegrationRow> = sqlx::query_as(
            "SELECT id, user_id, provider, status, settings, last_sync_at, last_error, \
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
                "SELECT id, ",
                invoice_columns!(),
                " FROM invoices WHERE user_id = $1 AND ($2 IS NULL OR provider_created_at < $2 OR (provider_created_at = $2 AND id < $3)) \
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
        // BEGIN IMMEDIATE takes the write lock now, so a read-then-write transaction can
        // never fail half-way on a lock upgrade; writers queue on the busy timeout.
        Ok(Box::new(SqliteTx(
            self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Default::default(),
        )))
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

billing_tx!(SqliteTx, sqlx::Sqlite, lock: "", id_cast: "");
billing_records!(SqliteStore);
integration_store!(SqliteStore, id: "", text: "", skip_locked: "");
contact_import!(SqliteStore, begin: "BEGIN IMMEDIATE", user_lock: "",
    guard: "SELECT 1 FROM integrations WHERE id = $1 AND destination_epoch = $2");
webhook_store!(SqliteStore);
provider_webhook_store!(SqliteStore, id: "", text: "", skip_locked: "");
health_store!(SqliteStore, id: "", text: "");
mobile_payments!(SqliteStore);
dunning_outbox!(SqliteStore);
overage_store!(SqliteStore);
user_data_store!(SqliteStore);
sync_queue!(SqliteStore, id: "", text: "",
    horizon: "SELECT 9223372036854775807", begin: "BEGIN IMMEDIATE", for_update: "",
    schedule: [QUEUE_DUE_SYNCS, BUMP_DUE_SYNCS]);
