//! A contact as the card application stores it, and the fields every provider maps from.

/// One of a user's contacts. Empty strings are treated like missing values.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Contact {
    pub id: String,
    pub email: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub company: Option<String>,
    pub phone: Option<String>,
    pub job_title: Option<String>,
}

impl Contact {
    /// The email address, trimmed, when there is one.
    pub fn email(&self) -> Option<&str> {
        non_blank(self.email.as_deref())
    }
}

/// A contact as a provider holds it, read by an import.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RemoteContact {
    pub email: String,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub company: Option<String>,
    pub phone: Option<String>,
    pub job_title: Option<String>,
    /// When the provider last changed it; a local contact edited later is left alone.
    pub modified_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// What storing one page of imported contacts did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImportCounts {
    pub inserted: u64,
    pub updated: u64,
    /// Matched a contact edited here after the provider's change: left as it is.
    pub kept_newer: u64,
    /// New contacts not stored because the plan's contact limit was reached.
    pub over_limit: u64,
    /// Matched a contact holding the same values already: not written (so it is not pushed
    /// back either).
    pub unchanged: u64,
    /// The contacts (id, fingerprint of the provider's values) the provider is now known to
    /// hold as read: inserted, updated or unchanged ones.
    pub synced: Vec<(String, String)>,
    /// Nothing was stored: the integration was disconnected, erased or pointed elsewhere
    /// since the contacts were read.
    pub stale: bool,
}

/// A short digest of the values a provider gets for a contact (email, names, company, phone,
/// title; trimmed, blank as missing, the email in lower case). Equal digests: the provider
/// already holds exactly these values, so pushing the contact would change nothing.
pub fn fingerprint(email: Option<&str>, fields: [Option<&str>; 5]) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(non_blank(email).unwrap_or("").to_lowercase().as_bytes());
    for field in fields {
        hasher.update([0x1f]);
        hasher.update(non_blank(field).unwrap_or("").as_bytes());
    }
    hex::encode(&hasher.finalize()[..16])
}

impl Contact {
    /// The fingerprint of the values a push sends.
    pub fn fingerprint(&self) -> String {
        fingerprint(
            self.email.as_deref(),
            [
                self.first_name.as_deref(),
                self.last_name.as_deref(),
                self.company.as_deref(),
                self.phone.as_deref(),
                self.job_title.as_deref(),
            ],
        )
    }
}

impl RemoteContact {
    /// The fingerprint of the values the provider holds.
    pub fn fingerprint(&self) -> String {
        fingerprint(
            Some(&self.email),
            [
                self.first_name.as_deref(),
                self.last_name.as_deref(),
                self.company.as_deref(),
                self.phone.as_deref(),
                self.job_title.as_deref(),
            ],
        )
    }
}

/// Whether importing `remote` would change nothing in a contact whose stored first name, last
/// name, company, phone and job title are `stored` (a blank remote field keeps the local
/// value, as the import does).
pub fn same_fields(remote: &RemoteContact, stored: &[Option<String>; 5]) -> bool {
    let remote_fields = [
        &remote.first_name,
        &remote.last_name,
        &remote.company,
        &remote.phone,
        &remote.job_title,
    ];
    remote_fields
        .iter()
        .zip(stored)
        .all(|(remote, local)| match non_blank(remote.as_deref()) {
            None => true,
            Some(value) => non_blank(local.as_deref()) == Some(value),
        })
}

#[cfg(test)]
mod same_fields_tests {
    use super::*;

    #[test]
    fn a_contact_is_unchanged_when_every_remote_value_is_already_here() {
        let remote = RemoteContact {
            email: "a@x.test".into(),
            first_name: Some("Ada".into()),
            company: Some(" ".into()),
            ..RemoteContact::default()
        };
        let stored = [
            Some("Ada".into()),
            Some("Lovelace".into()),
            None,
            None,
            None,
        ];
        assert!(
            same_fields(&remote, &stored),
            "blank remote fields keep the local ones"
        );
        let renamed = RemoteContact {
            first_name: Some("Augusta".into()),
            ..remote.clone()
        };
        assert!(!same_fields(&renamed, &stored));
        let new_phone = RemoteContact {
            phone: Some("+1 555".into()),
            ..remote
        };
        assert!(!same_fields(&new_phone, &stored));
    }

    #[test]
    fn a_contact_and_the_same_values_at_a_provider_share_a_fingerprint() {
        let local = Contact {
            id: "c1".into(),
            email: Some(" Ada@X.test ".into()),
            first_name: Some("Ada".into()),
            company: Some("".into()),
            ..Contact::default()
        };
        let remote = RemoteContact {
            email: "ada@x.test".into(),
            first_name: Some("Ada ".into()),
            ..RemoteContact::default()
        };
        assert_eq!(local.fingerprint(), remote.fingerprint());
        let renamed = RemoteContact {
            last_name: Some("Lovelace".into()),
            ..remote
        };
        assert_ne!(local.fingerprint(), renamed.fingerprint());
    }
}

/// `Some(trimmed)` unless the value is missing or blank.
pub fn non_blank(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|v| !v.is_empty())
}

/// Splits a page of contacts (in push order, oldest change first) into those a provider keyed by
/// email can take (the most recently changed contact of each address, compared
/// case-insensitively) and how many were left out for having none or for repeating one.
/// Duplicates within one page are dropped: the providers reject a batch naming an address twice.
pub fn sendable_by_email(page: &[Contact]) -> (Vec<&Contact>, u64, u64) {
    let mut seen = std::collections::HashSet::new();
    let (mut sendable, mut without_email, mut duplicates) = (Vec::new(), 0, 0);
    for contact in page.iter().rev() {
        match contact.email() {
            None => without_email += 1,
            Some(email) if !seen.insert(email.to_ascii_lowercase()) => duplicates += 1,
            Some(_) => sendable.push(contact),
        }
    }
    sendable.reverse();
    (sendable, without_email, duplicates)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contact(id: &str, email: Option<&str>) -> Contact {
        Contact {
            id: id.into(),
            email: email.map(str::to_string),
            ..Contact::default()
        }
    }

    #[test]
    fn contacts_without_email_or_repeating_one_are_left_out() {
        let page = [
            contact("1", Some("a@x.test")),
            contact("2", None),
            contact("3", Some("  ")),
            contact("4", Some("A@X.test")),
            contact("5", Some("b@x.test")),
        ];
        let (sendable, without_email, duplicates) = sendable_by_email(&page);
        let ids: Vec<&str> = sendable.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(
            ids,
            ["4", "5"],
            "the later change of a repeated address wins"
        );
        assert_eq!((without_email, duplicates), (2, 1));
    }
}
