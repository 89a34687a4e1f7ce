//! Credentials a user gave for a provider. The values never leave this type except through
//! [`Credentials::get`]; `Debug` shows only the keys, so a stray `{:?}` cannot leak a secret.

use std::{collections::BTreeMap, fmt};

use secrecy::{ExposeSecret, SecretString};

#[derive(Clone, Default)]
pub struct Credentials(BTreeMap<String, SecretString>);

impl Credentials {
    pub fn new(values: BTreeMap<String, String>) -> Self {
        Self(
            values
                .into_iter()
                .map(|(k, v)| (k, SecretString::from(v)))
                .collect(),
        )
    }

    /// The value of `key`, trimmed, if present and not blank.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .map(|v| v.expose_secret().trim())
            .filter(|v| !v.is_empty())
    }

    /// A copy with `key` set to `value`.
    pub fn with(&self, key: &str, value: &str) -> Self {
        let mut values = self.0.clone();
        values.insert(key.to_string(), SecretString::from(value.to_string()));
        Self(values)
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// Every value, for sealing in the vault and for scrubbing provider messages.
    pub fn expose_all(&self) -> BTreeMap<&str, &str> {
        self.0
            .iter()
            .map(|(k, v)| (k.as_str(), v.expose_secret()))
            .collect()
    }

    /// `text` with every credential value (of 4 characters or more) replaced by `[REDACTED]`:
    /// providers sometimes echo what they were sent in an error message.
    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.to_string();
        for value in self.0.values() {
            let value = value.expose_secret().trim();
            if value.len() >= 4 {
                out = out.replace(value, "[REDACTED]");
            }
        }
        out
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// Keys of the OAuth values kept (sealed) in an integration's credentials.
pub mod keys {
    pub const ACCESS_TOKEN: &str = "accessToken";
    pub const REFRESH_TOKEN: &str = "refreshToken";
    /// Unix seconds; absent when the provider does not say (Salesforce).
    pub const EXPIRES_AT: &str = "expiresAt";
    /// Salesforce: the org's API host.
    pub const INSTANCE_URL: &str = "instanceUrl";
    /// Zoho: the account's API host.
    pub const API_DOMAIN: &str = "apiDomain";
    /// Google Drive: the id of contacts.csv once created.
    pub const FILE_ID: &str = "fileId";
    /// Zoho: the accounts server of the account's data centre (from the callback), where its
    /// tokens are refreshed and revoked.
    pub const ACCOUNTS_SERVER: &str = "accountsServer";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_keys_only_and_scrub_hides_values() {
        let creds = Credentials::new(BTreeMap::from([(
            "apiKey".to_string(),
            "s3cr3t-value".to_string(),
        )]));
        assert_eq!(format!("{creds:?}"), r#"{"apiKey"}"#);
        assert_eq!(
            creds.scrub("key s3cr3t-value is invalid"),
            "key [REDACTED] is invalid"
        );
        assert_eq!(creds.get("apiKey"), Some("s3cr3t-value"));
    }
}
