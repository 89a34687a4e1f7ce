//! What the data-rights use cases (`account`) need of storage: the erasure entries and the one
//! transaction that erases a user (SQL in `user_data_sql.rs`, the same on both backends).

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::StoreError;
use crate::domain::{
    UserId,
    erasure::{ErasedRows, ErasureEntry, Requester},
};

#[async_trait]
pub trait UserDataStore: Send + Sync {
    /// The erasure entry of a subject (see `domain::erasure::subject_hash`), if any.
    async fn erasure(&self, subject_hash: &str) -> Result<Option<ErasureEntry>, StoreError>;

    /// Records that an erasure of the subject starts (or starts again after an earlier run):
    /// the entry is `running` until [`UserDataStore::erase_user`] commits.
    async fn start_erasure(
        &self,
        subject_hash: &str,
        requested_by: Requester,
        now: DateTime<Utc>,
    ) -> Result<ErasureEntry, StoreError>;

    /// In one transaction: deletes the user's subscription, payment customers, checkout
    /// sessions, settled M-Pesa requests, integrations (credentials, jobs, pushed-contact
    /// fingerprints), OAuth states and activity entries; deletes the payload of webhook events
    /// about the user's customers (their ids stay, so a redelivery is still known); moves the
    /// invoice rows to the entry's pseudonym without their hosted links; marks the entry done
    /// with `summary` (anonymous: counts and outcomes only). A crash before the commit leaves
    /// everything as it was.
    async fn erase_user(
        &self,
        user: &UserId,
        erasure_id: &str,
        summary: &serde_json::Value,
        now: DateTime<Utc>,
    ) -> Result<ErasedRows, StoreError>;

    /// Whether a user with this subject hash was erased (a finished erasure exists).
    async fn was_erased(&self, subject_hash: &str) -> Result<bool, StoreError> {
        Ok(self
            .erasure(subject_hash)
            .await?
            .is_some_and(|e| e.finished_at.is_some()))
    }
}
