//! Entries of a user's activity log: what happened to their billing, in words and as data.

use serde_json::Value;

/// One activity-log entry. `kind` is a stable dotted name (`subscription.canceled`), `message`
/// is for people, `details` for machines. Never holds a secret.
#[derive(Debug, Clone, PartialEq)]
pub struct Activity {
    pub kind: &'static str,
    pub message: String,
    pub details: Value,
}

impl Activity {
    pub fn new(kind: &'static str, message: impl Into<String>, details: Value) -> Self {
        Self {
            kind,
            message: message.into(),
            details,
        }
    }
}
