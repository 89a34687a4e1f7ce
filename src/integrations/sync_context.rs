//! What every part of a sync shares: the worker's handles (store, tokens, providers, settings),
//! its lease length, the import checkpoints, and how an integration's settings read as a
//! schedule. The worker loop (`sync_worker.rs`), the phases (`sync_push.rs`, `sync_import.rs`)
//! and the outcome (`sync_outcome.rs`) all build on this and not on each other.

use std::sync::Arc;

use super::tokens::TokenKeeper;
use crate::{
    billing::Billing,
    config::SyncConfig,
    domain::{integration::Integration, sync_job::Direction},
    providers::Providers,
    store::Store,
};

/// Everything a worker needs; shared by the worker loops of one process.
pub struct SyncWorker {
    pub(super) store: Arc<dyn Store>,
    pub(super) billing: Arc<Billing>,
    pub(super) tokens: Arc<TokenKeeper>,
    pub(super) providers: Arc<Providers>,
    pub(super) config: SyncConfig,
    /// Unique per process; each loop appends its slot.
    pub(super) name: String,
}

impl SyncWorker {
    pub fn new(
        store: Arc<dyn Store>,
        billing: Arc<Billing>,
        tokens: Arc<TokenKeeper>,
        providers: Arc<Providers>,
        config: SyncConfig,
    ) -> Self {
        let name = super::instance_name();
        Self {
            store,
            billing,
            tokens,
            providers,
            config,
            name,
        }
    }

    pub(super) fn lease(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.config.lease).unwrap_or(chrono::Duration::seconds(60))
    }
}

/// Checkpoints of the import phase start with this.
pub(super) const IMPORT_CHECKPOINT: &str = "import:";
/// The checkpoint of an import that read its last page.
pub(super) const IMPORT_DONE: &str = "import-done";

/// The recurring interval of an integration, if it has one.
pub fn sync_interval(integration: &Integration) -> Option<chrono::Duration> {
    let secs: i64 = integration
        .settings
        .get("syncInterval")?
        .trim()
        .parse()
        .ok()?;
    (secs > 0).then(|| chrono::Duration::seconds(secs))
}

/// The recurring direction of an integration (`syncDirection`, PUSH when unset).
pub fn sync_direction(integration: &Integration) -> Direction {
    integration
        .settings
        .get("syncDirection")
        .and_then(|d| d.trim().to_ascii_lowercase().parse().ok())
        .unwrap_or(Direction::Push)
}
