//! Erasure of a user's data (the right to erasure): who asked, the anonymous key of the erased
//! user, and what an erasure removed.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::UserId;

/// The anonymous key of an erased user, which the erasure entry keeps instead of the id: an
/// HMAC-SHA256 of the id under a key derived from `ENCRYPTION_KEY`. It says "this user was
/// erased" to this service, which holds the key, and nothing to anyone reading the table (a
/// plain hash of a guessable id could be reversed by trying ids).
#[derive(Clone)]
pub struct SubjectKeys {
    /// The current key first, then the previous ones (`PREVIOUS_ENCRYPTION_KEYS`).
    keys: Vec<[u8; 32]>,
}

impl fmt::Debug for SubjectKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubjectKeys")
            .field("keys", &self.keys.len())
            .finish()
    }
}

type HmacSha256 = hmac::Hmac<Sha256>;

fn keyed(key: &[u8], data: &[u8]) -> [u8; 32] {
    use hmac::{KeyInit, Mac};
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| <HmacSha256 as KeyInit>::new(&Default::default()));
    mac.update(data);
    mac.finalize().into_bytes().into()
}

impl SubjectKeys {
    /// Derived from the encryption keys (current first).
    pub fn new(current: &[u8; 32], previous: &[&[u8; 32]]) -> Self {
        let keys = std::iter::once(current)
            .chain(previous.iter().copied())
            .map(|k| keyed(k, b"nexus-erasure/v2/subject"))
            .collect();
        Self { keys }
    }

    /// The key an erasure entry is stored under.
    pub fn hash(&self, user: &UserId) -> String {
        hex::encode(keyed(&self.keys[0], user.as_str().as_bytes()))
    }

    /// Every key an earlier entry of the user may be stored under: under each configured key,
    /// then the unkeyed hash entries made before keys were used.
    pub fn candidates(&self, user: &UserId) -> Vec<String> {
        let mut all: Vec<String> = self
            .keys
            .iter()
            .map(|k| hex::encode(keyed(k, user.as_str().as_bytes())))
            .collect();
        all.push(legacy_subject_hash(user));
        all
    }
}

/// The unkeyed hash entries were stored under before issue 25 (read, never written).
fn legacy_subject_hash(user: &UserId) -> String {
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
    fn the_subject_key_is_keyed_and_old_entries_are_still_found() {
        let user = UserId::parse("ada").unwrap_or_else(|e| panic!("{e}"));
        let keys = SubjectKeys::new(&[7; 32], &[&[9; 32]]);
        let other = SubjectKeys::new(&[8; 32], &[]);
        assert_ne!(keys.hash(&user), legacy_subject_hash(&user), "guessable");
        assert_ne!(keys.hash(&user), other.hash(&user));
        let candidates = keys.candidates(&user);
        assert_eq!(candidates[0], keys.hash(&user));
        assert_eq!(candidates[1], SubjectKeys::new(&[9; 32], &[]).hash(&user));
        assert_eq!(candidates[2], legacy_subject_hash(&user));
    }

    #[test]
    fn the_subject_hash_is_stable_and_does_not_contain_the_id() {
        let user = UserId::parse("user-42").unwrap_or_else(|e| panic!("{e}"));
        let keys = SubjectKeys::new(&[1; 32], &[]);
        let hash = keys.hash(&user);
        assert_eq!(hash.len(), 64);
        assert_eq!(hash, keys.hash(&user));
        assert!(!hash.contains("user-42"));
        let other = UserId::parse("user-43").unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(hash, keys.hash(&other));
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
