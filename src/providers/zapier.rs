//! Zapier: the catch-hook URL is the credential. Contacts are POSTed as `{"contacts": [...]}`
//! in chunks; a hook that exists answers 200. The URL must start with the configured hook base
//! (`https://hooks.zapier.com/hooks/catch/`), so a user cannot make the service call any other
//! host.

use async_trait::async_trait;
use serde_json::{Value, json};
use url::Url;

use super::{ContactSink, ProviderError, PushReport, http::Client, json_fields, required};
use crate::domain::{contact::Contact, credentials::Credentials};

pub struct Zapier {
    client: Client,
    hook: Url,
}

/// Parses a hook URL and checks it is under `base` (same scheme, host and port; path below).
pub fn hook_url(raw: &str, base: &Url) -> Result<Url, ProviderError> {
    let invalid = || ProviderError::InvalidInput {
        field: "webhookUrl",
        reason: format!("must be a Zapier catch hook URL starting with {base}"),
    };
    let url = Url::parse(raw).map_err(|_| invalid())?;
    let same_origin = url.scheme() == base.scheme()
        && url.host_str() == base.host_str()
        && url.port_or_known_default() == base.port_or_known_default();
    let below = url.path().starts_with(base.path()) && url.path().len() > base.path().len();
    if same_origin && below && url.username().is_empty() && url.password().is_none() {
        Ok(url)
    } else {
        Err(invalid())
    }
}

impl Zapier {
    pub(super) fn new(
        client: Client,
        base: &Url,
        credentials: &Credentials,
    ) -> Result<Self, ProviderError> {
        Ok(Self {
            hook: hook_url(required(credentials, "webhookUrl")?, base)?,
            client,
        })
    }
}

/// One contact as sent to the hook (our own field names; the Zap maps them).
pub fn contact_json(contact: &Contact) -> Value {
    let mut map = json_fields(&[
        ("email", contact.email.as_deref()),
        ("first_name", contact.first_name.as_deref()),
        ("last_name", contact.last_name.as_deref()),
        ("company", contact.company.as_deref()),
        ("phone", contact.phone.as_deref()),
        ("job_title", contact.job_title.as_deref()),
    ]);
    map.insert("id".into(), Value::String(contact.id.clone()));
    Value::Object(map)
}

#[async_trait]
impl ContactSink for Zapier {
    /// Zapier has no read endpoint: an empty test delivery proves the hook exists (and lets the
    /// Zap editor see the payload's shape).
    async fn verify(&self) -> Result<(), ProviderError> {
        let request = self
            .client
            .http
            .post(self.hook.clone())
            .json(&json!({ "event": "connection_test", "contacts": [] }));
        match self.client.send(request).await {
            Err(ProviderError::Rejected(_) | ProviderError::BatchRefused(_)) => {
                Err(ProviderError::Unauthorized(
                    "Zapier does not know this catch hook (is the Zap turned on?)".into(),
                ))
            }
            other => other.map(drop),
        }
    }

    /// Each delivery carries `Idempotency-Key`: the same when a batch is sent again (its answer
    /// was lost, or the attempt was retried), another for another batch, so a Zap can drop
    /// repeats.
    async fn push(&self, contacts: &[&Contact], key: &str) -> Result<PushReport, ProviderError> {
        let body: Vec<Value> = contacts.iter().map(|c| contact_json(c)).collect();
        let request = self
            .client
            .http
            .post(self.hook.clone())
            .header("Idempotency-Key", key)
            .json(&json!({ "event": "contacts", "contacts": body }));
        self.client.send(request).await?;
        Ok(PushReport::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hooks_under_the_configured_base_are_accepted() {
        let base =
            Url::parse("https://hooks.zapier.com/hooks/catch/").unwrap_or_else(|e| panic!("{e}"));
        assert!(hook_url("https://hooks.zapier.com/hooks/catch/123/abc/", &base).is_ok());
        for bad in [
            "http://hooks.zapier.com/hooks/catch/123/abc/",
            "https://hooks.zapier.com.evil.test/hooks/catch/1/",
            "https://evil.test/hooks/catch/1/",
            "https://hooks.zapier.com/other/1/",
            "https://hooks.zapier.com/hooks/catch/",
            "https://user:pw@hooks.zapier.com/hooks/catch/1/",
            "https://hooks.zapier.com:8443/hooks/catch/1/",
            "not a url",
        ] {
            assert!(hook_url(bad, &base).is_err(), "{bad}");
        }
    }
}
