//! A user's data rights, across billing and integrations: the activity history (here), the
//! export of everything held about a user (`export`) and erasure (`erasure`). Used by the
//! gRPC `AccountService` and by the operator commands `nexus-billing user ...`.

pub mod erasure;
pub mod export;
mod support;

use std::sync::Arc;

pub use erasure::{Erasure, ErasureError};

use crate::{
    billing::Billing,
    domain::UserId,
    integrations::Integrations,
    store::{ActivityRecord, Store, StoreError},
};

/// Activity entries per page when the caller does not say, and at most.
pub const DEFAULT_ACTIVITY_PAGE: u32 = 50;
pub const MAX_ACTIVITY_PAGE: u32 = 200;

/// The data-rights use cases.
pub struct Account {
    store: Arc<dyn Store>,
    billing: Arc<Billing>,
    integrations: Arc<Integrations>,
}

impl Account {
    pub fn new(
        store: Arc<dyn Store>,
        billing: Arc<Billing>,
        integrations: Arc<Integrations>,
    ) -> Self {
        Self {
            store,
            billing,
            integrations,
        }
    }

    /// One page of the user's activity, newest first, after the entry id `before` (the cursor
    /// of the previous page); the cursor of the next page when there is one.
    pub async fn activity(
        &self,
        user: &UserId,
        before: Option<i64>,
        page_size: u32,
    ) -> Result<(Vec<ActivityRecord>, Option<i64>), StoreError> {
        let size = match page_size {
            0 => DEFAULT_ACTIVITY_PAGE,
            n => n.min(MAX_ACTIVITY_PAGE),
        };
        let mut page = self.store.activity(user, before, size + 1).await?;
        let next = if page.len() > size as usize {
            page.truncate(size as usize);
            page.last().map(|last| last.id)
        } else {
            None
        };
        Ok((page, next))
    }
}
