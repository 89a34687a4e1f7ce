//! Erasure of a user's data (the right to erasure): who asked, the anonymous key of the erased
//! user, and what an erasure removed.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::UserId;

/// The anonymous key of an erased user: the hex SHA-256 of `"nexus-erasure-v1:" + user id`.
/// The erasure entry keeps only this, so it says "this user was erased" to whoever already
/// knows the id, and nothing to anyone else.
pub fn subject_hash(user: &UserId) -> String {
    let digest = Sha256::digest(format!("nexus-erasure-v1:{}", user.as_str()).as_bytes());
    hex::encode(digest)
}

/// What the kept invoice rows carry instead of the user id.
pub fn invoice_pseudonym(erasure_id: &str) -> String {
    format!("erased:{erasure_id}")
}

/// Who asked for an erasure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requester {
    /// The user, for themselves.
    User,
    /// A `service`-role caller (the card application's account deletion).
    Service,
    /// An operator, with `nexus-billing user delete`.
    Operator,
}

impl Requester {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Service => "service",
            Self::Operator => "operator",
        }
    }
}

impl fmt::Display for Requester {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The stored erasure entry of one subject.
#[derive(Debug, Clone, PartialEq)]
pub struct ErasureEntry {
    pub id: String,
    pub running: bool,
    /// How many times an erasure was started for this subject.
    pub runs: i64,
    pub started_at: DateTime<Utc>,
    /// When the last run finished; `None` while the first one has not (a crash part-way).
    pub finished_at: Option<DateTime<Utc>>,
}

/// The rows one erasure deleted or detached in the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ErasedRows {
    pub subscriptions: u64,
    pub billing_customers: u64,
    pub checkout_sessions: u64,
    pub mobile_payments: u64,
    pub integrations: u64,
    pub sync_jobs: u64,
    pub oauth_states: u64,
    pub activity_entries: u64,
    /// Webhook events about the user's customers whose payload was deleted (the event ids stay,
    /// so a redelivery is still recognised and never applied).
    pub webhook_events_scrubbed: u64,
    /// Invoice rows kept for bookkeeping, now carrying the erasure's pseudonym.
    pub invoices_kept: u64,
}

impl ErasedRows {
    /// Whether this run found anything of the user's.
    pub fn found_anything(&self) -> bool {
        self.subscriptions
            + self.billing_customers
            + self.checkout_sessions
            + self.mobile_payments
            + self.integrations
            + self.sync_jobs
            + self.oauth_states
            + self.activity_entries
            + self.webhook_events_scrubbed
            + self.invoices_kept
            > 0
    }
}

/// How revoking one integration's access at its provider went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Revocation {
    /// The provider confirmed (or the grant was already invalid).
    Revoked,
    /// The provider could not be reached or refused; the credentials are deleted here anyway.
    Failed,
    /// The provider has no revocation for this kind of credential (an API key or webhook URL
    /// the user created there): deleted here, the user removes it at the provider.
    NotSupported,
    /// The stored credentials could not be opened (a key no longer configured).
    Unreadable,
}

impl Revocation {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Revoked => "revoked",
            Self::Failed => "failed",
            Self::NotSupported => "not_supported",
            Self::Unreadable => "unreadable",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_subject_hash_is_stable_and_does_not_contain_the_id() {
        let user = UserId::parse("user-42").unwrap_or_else(|e| panic!("{e}"));
        let hash = subject_hash(&user);
        assert_eq!(hash.len(), 64);
        assert_eq!(hash, subject_hash(&user));
        assert!(!hash.contains("user-42"));
        let other = UserId::parse("user-43").unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(hash, subject_hash(&other));
    }

    #[test]
    fn an_empty_run_found_nothing() {
        assert!(!ErasedRows::default().found_anything());
        let rows = ErasedRows {
            invoices_kept: 1,
            ..ErasedRows::default()
        };
        assert!(rows.found_anything());
    }
}
