//! `DeleteMyData`: erases a user. In order, each step safe to repeat:
//!
//! 1. the anonymous erasure entry is recorded `running` (so a crash part-way is visible, and
//!    a late checkout for the user is never linked again once it is done);
//! 2. every integration's grant is revoked at its provider (best effort, each outcome kept);
//! 3. open checkouts are expired and the live subscription is cancelled now at its provider:
//!    if that fails, the erasure stops here and nothing is deleted, because deleting would
//!    leave a subscription charging someone we no longer know;
//! 4. one database transaction deletes and detaches everything (`UserDataStore::erase_user`)
//!    and marks the entry done.
//!
//! A crash anywhere before step 4 commits leaves the data in place; the rerun repeats the
//! provider calls (revoking or cancelling twice is harmless) and finishes. A call after a
//! finished erasure finds nothing and says so (`already_erased`).

use chrono::{DateTime, Utc};
use serde_json::json;

use super::Account;
use crate::{
    billing::BillingError,
    domain::{
        UserId,
        catalogue::ProviderId,
        erasure::{ErasedRows, ErasureEntry, Requester, Revocation},
        subscription::PaymentProvider,
    },
    store::StoreError,
};

/// What an erasure did.
#[derive(Debug, Clone)]
pub struct Erasure {
    /// The anonymous entry's id (the pseudonym the kept invoices carry).
    pub erasure_id: String,
    /// Nothing was left to erase: an earlier erasure finished at `first_erased_at`.
    pub already_erased: bool,
    /// When an earlier run of this user's erasure finished, if one did.
    pub first_erased_at: Option<DateTime<Utc>>,
    pub rows: ErasedRows,
    pub revocations: Vec<(ProviderId, Revocation)>,
    /// The provider whose subscription was cancelled now, if one was live.
    pub subscription_canceled: Option<PaymentProvider>,
    /// Open checkout sessions the provider could not expire (they link to nobody once done).
    pub checkouts_not_expired: u32,
}

/// Why an erasure did not finish. Nothing was deleted; calling again continues it.
#[derive(Debug, thiserror::Error)]
pub enum ErasureError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Billing(#[from] BillingError),
    /// Something in flight must settle first (an M-Pesa payment awaiting the payer).
    #[error("{0}")]
    Wait(String),
}

impl Account {
    /// The user's erasure entry, under any of the subject keys.
    pub(super) async fn earlier_erasure(
        &self,
        user: &UserId,
    ) -> Result<Option<ErasureEntry>, crate::store::StoreError> {
        for subject in self.billing.subjects().candidates(user) {
            if let Some(entry) = self.store.erasure(&subject).await? {
                return Ok(Some(entry));
            }
        }
        Ok(None)
    }

    /// Erases everything held about `user` except the invoice rows bookkeeping requires, which
    /// are detached from them.
    #[tracing::instrument(skip_all, fields(requested_by = %requested_by))]
    pub async fn erase(
        &self,
        user: &UserId,
        requested_by: Requester,
    ) -> Result<Erasure, ErasureError> {
        let result = self.erase_steps(user, requested_by).await;
        let outcome = match &result {
            Ok(e) if e.already_erased => "already_erased",
            Ok(_) => "erased",
            Err(_) => "failed",
        };
        metrics::counter!("erasures_total", "requested_by" => requested_by.as_str(), "outcome" => outcome)
            .increment(1);
        result
    }

    async fn erase_steps(
        &self,
        user: &UserId,
        requested_by: Requester,
    ) -> Result<Erasure, ErasureError> {
        if self.store.pending_mobile_payment(user).await?.is_some() {
            return Err(ErasureError::Wait(
                "an M-Pesa payment is waiting for the payer's confirmation; erase again once it \
                 settles (at most a few minutes)"
                    .into(),
            ));
        }
        let subject = self.billing.subjects().hash(user);
        let earlier = self.earlier_erasure(user).await?;
        let entry = self
            .store
            .start_erasure(&subject, requested_by, Utc::now())
            .await?;

        let revocations = self.integrations.revoke_all(user).await?;
        let checkouts_not_expired = self.billing.expire_open_checkouts(user).await?;
        let subscription_canceled = self.billing.cancel_for_erasure(user).await?;

        let summary = json!({
            "requested_by": requested_by.as_str(),
            "revocations": revocations
                .iter()
                .map(|(provider, outcome)| json!({ "provider": provider.as_str(), "outcome": outcome.as_str() }))
                .collect::<Vec<_>>(),
            "subscription_canceled": subscription_canceled.map(|p| p.as_str()),
            "checkouts_not_expired": checkouts_not_expired,
        });
        let rows = self
            .store
            .erase_user(user, &entry.id, &summary, Utc::now())
            .await?;
        let first_erased_at = earlier.and_then(|e| e.finished_at);
        let already_erased = first_erased_at.is_some() && !rows.found_anything();
        tracing::info!(
            erasure_id = %entry.id,
            run = entry.runs,
            already_erased,
            integrations = rows.integrations,
            invoices_kept = rows.invoices_kept,
            "user data erased"
        );
        Ok(Erasure {
            erasure_id: entry.id,
            already_erased,
            first_erased_at,
            rows,
            revocations,
            subscription_canceled,
            checkouts_not_expired,
        })
    }
}
