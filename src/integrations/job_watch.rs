//! Watching a sync job: change notifications instead of polling (PostgreSQL LISTEN/NOTIFY
//! across replicas; an in-process channel on SQLite), and a cap on the streams one user holds.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tokio::sync::broadcast;

use super::{IntegrationError, Integrations};
use crate::domain::UserId;

/// Open watch streams per user, bounded.
#[derive(Debug, Default)]
pub struct WatchLimits {
    max_per_user: usize,
    open: Mutex<HashMap<String, usize>>,
}

impl WatchLimits {
    pub fn new(max_per_user: usize) -> Arc<Self> {
        Arc::new(Self {
            max_per_user,
            open: Mutex::new(HashMap::new()),
        })
    }

    fn acquire(self: &Arc<Self>, user: &UserId) -> Result<WatchPermit, IntegrationError> {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = open.entry(user.as_str().to_string()).or_default();
        if *count >= self.max_per_user {
            return Err(IntegrationError::ResourceExhausted(format!(
                "at most {} sync jobs can be watched at once; close another stream first",
                self.max_per_user
            )));
        }
        *count += 1;
        Ok(WatchPermit {
            limits: Arc::clone(self),
            user: user.as_str().to_string(),
        })
    }
}

/// One open stream; dropping it frees the slot.
#[derive(Debug)]
pub struct WatchPermit {
    limits: Arc<WatchLimits>,
    user: String,
}

impl Drop for WatchPermit {
    fn drop(&mut self) {
        let mut open = self
            .limits
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = open.get_mut(&self.user) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.user);
            }
        }
    }
}

/// What a watch stream listens to: job ids as they change (`*`: maybe any job).
pub struct JobWatch {
    pub changes: broadcast::Receiver<String>,
    pub permit: WatchPermit,
    /// Look at the job this often even without a notice (one may be lost).
    pub fallback: std::time::Duration,
}

impl Integrations {
    /// Starts watching for the user: takes one of their stream slots and subscribes to job
    /// changes (subscribe before reading the job, so no change is missed in between).
    pub fn watch(&self, user: &UserId) -> Result<JobWatch, IntegrationError> {
        let permit = self.watch_limits.acquire(user)?;
        Ok(JobWatch {
            changes: self.store.job_changes(),
            permit,
            fallback: self.watch_fallback,
        })
    }
}
