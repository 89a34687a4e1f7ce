//! Mailchimp: the API key is sent as HTTP Basic (any user name); its suffix names the data
//! centre (`...-us6` -> `https://us6.api.mailchimp.com`). Contacts are batch-subscribed to the
//! audience of the `listId` setting with `POST /3.0/lists/{list_id}` and `update_existing`
//! (500 per call); the answer is 200 even when some members failed, listed in `errors[]`.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    ChangeFeed, ContactSink, ContactSource, FeedRequest, ImportPage, ProviderError, PushReport,
    Subscribed, http::Client, json_fields, remote_contact, required,
};
use crate::domain::{
    contact::{Contact, non_blank},
    credentials::Credentials,
    sync_job::RecordFailure,
};

pub struct Mailchimp {
    client: Client,
    base: String,
    api_key: String,
    list_id: String,
}

/// The data centre named by an API key's suffix, checked to be a plain host label (it goes
/// into a host name).
pub fn data_centre(api_key: &str) -> Result<&str, ProviderError> {
    let invalid = || ProviderError::InvalidInput {
        field: "apiKey",
        reason: "a Mailchimp API key ends with its data centre, e.g. -us6".into(),
    };
    let (_, dc) = api_key.rsplit_once('-').ok_or_else(invalid)?;
    let plain = !dc.is_empty()
        && dc.len() <= 10
        && dc
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if plain { Ok(dc) } else { Err(invalid()) }
}

impl Mailchimp {
    pub(super) fn new(
        client: Client,
        base_template: &str,
        credentials: &Credentials,
        settings: &BTreeMap<String, String>,
    ) -> Result<Self, ProviderError> {
        let api_key = required(credentials, "apiKey")?;
        let dc = data_centre(api_key)?;
        let list_id = non_blank(settings.get("listId").map(String::as_str)).ok_or(
            ProviderError::InvalidInput {
                field: "listId",
                reason: "is required".into(),
            },
        )?;
        if !list_id.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(ProviderError::InvalidInput {
                field: "listId",
                reason: "an audience id has only letters and digits".into(),
            });
        }
        Ok(Self {
            base: base_template
                .replace("{dc}", dc)
                .trim_end_matches('/')
                .to_string(),
            api_key: api_key.to_string(),
            list_id: list_id.to_string(),
            client,
        })
    }

    fn list_url(&self) -> String {
        format!("{}/3.0/lists/{}", self.base, self.list_id)
    }
}

#[derive(Deserialize)]
struct BatchAnswer {
    #[serde(default)]
    errors: Vec<MemberError>,
    #[serde(default)]
    error_count: Option<u64>,
}

#[derive(Deserialize)]
struct MemberError {
    #[serde(default)]
    email_address: String,
    #[serde(default)]
    error: String,
}

/// One member in Mailchimp's shape. `status_if_new` (never `status`): a new address is
/// subscribed, an existing member keeps their status, so someone who unsubscribed is never
/// subscribed again by a sync (`update_existing` only updates their merge fields).
pub fn member(contact: &Contact) -> Option<Value> {
    let merge = json_fields(&[
        ("FNAME", contact.first_name.as_deref()),
        ("LNAME", contact.last_name.as_deref()),
        ("PHONE", contact.phone.as_deref()),
    ]);
    Some(json!({
        "email_address": contact.email()?,
        "status_if_new": "subscribed",
        "merge_fields": merge,
    }))
}

#[async_trait]
impl ContactSink for Mailchimp {
    /// Reading the audience proves both the key and the `listId` setting.
    async fn verify(&self) -> Result<(), ProviderError> {
        let request = self
            .client
            .http
            .get(format!("{}?fields=id,name", self.list_url()))
            .basic_auth("nexus", Some(&self.api_key));
        match self.client.send(request).await {
            Ok(_) => Ok(()),
            Err(ProviderError::Rejected(reason) | ProviderError::BatchRefused(reason)) => {
                Err(ProviderError::InvalidInput {
                    field: "listId",
                    reason,
                })
            }
            Err(e) => Err(e),
        }
    }

    async fn push(&self, contacts: &[&Contact], _key: &str) -> Result<PushReport, ProviderError> {
        let members: Vec<Value> = contacts.iter().filter_map(|c| member(c)).collect();
        let request = self
            .client
            .http
            .post(self.list_url())
            .basic_auth("nexus", Some(&self.api_key))
            .json(&json!({ "members": members, "update_existing": true }));
        let response = self.client.send(request).await?;
        let answer: BatchAnswer = self.client.json(response).await?;
        let failures: Vec<RecordFailure> = answer
            .errors
            .into_iter()
            .map(|e| RecordFailure {
                email: e.email_address,
                message: self.client.scrub(&e.error),
            })
            .collect();
        Ok(PushReport {
            failed: answer
                .error_count
                .unwrap_or(failures.len() as u64)
                .max(failures.len() as u64),
            failures,
            retry_later: Vec::new(),
        })
    }
}

#[derive(Deserialize)]
struct WebhookCreated {
    id: String,
}

/// A list webhook per connection: `POST /3.0/lists/{list_id}/webhooks` with the connection's
/// secret URL, for changes made by the subscriber or in Mailchimp's app (not by the API, so
/// this service's own pushes do not come back), removed with `DELETE .../webhooks/{id}`.
/// Mailchimp's deliveries carry the member itself: nothing is read back.
#[async_trait]
impl ChangeFeed for Mailchimp {
    async fn subscribe(&self, request: &FeedRequest<'_>) -> Result<Subscribed, ProviderError> {
        let body = json!({
            "url": request.notify_url,
            "events": {
                "subscribe": true, "unsubscribe": true, "profile": true,
                "cleaned": true, "upemail": true, "campaign": false
            },
            "sources": { "user": true, "admin": true, "api": false },
        });
        let request = self
            .client
            .http
            .post(format!("{}/webhooks", self.list_url()))
            .basic_auth("nexus", Some(&self.api_key))
            .json(&body);
        let response = self.client.send(request).await?;
        let created: WebhookCreated = self.client.json(response).await?;
        Ok(Subscribed {
            remote_id: Some(created.id),
            ..Subscribed::default()
        })
    }

    async fn unsubscribe(&self, remote_id: &str) -> Result<(), ProviderError> {
        if !remote_id.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(ProviderError::Rejected("not a Mailchimp webhook id".into()));
        }
        let request = self
            .client
            .http
            .delete(format!("{}/webhooks/{remote_id}", self.list_url()))
            .basic_auth("nexus", Some(&self.api_key));
        let response = self.client.send_raw(request).await?;
        if response.status().is_success() || response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(());
        }
        Err(self.client.failure(response).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_centre_comes_from_the_key_and_must_be_a_plain_label() {
        assert_eq!(data_centre("0123abcd-us6").ok(), Some("us6"));
        for bad in [
            "0123abcd",
            "0123abcd-",
            "abc-us6.evil.test",
            "abc-US6",
            "abc-us6/x",
        ] {
            assert!(data_centre(bad).is_err(), "{bad}");
        }
    }
}

/// Members read per request (Mailchimp's maximum).
const MEMBERS_PER_PAGE: u64 = 1000;

#[derive(Deserialize)]
struct MembersPage {
    #[serde(default)]
    members: Vec<ListMember>,
    #[serde(default)]
    total_items: u64,
}

#[derive(Deserialize)]
struct ListMember {
    #[serde(default)]
    email_address: Option<String>,
    #[serde(default)]
    merge_fields: BTreeMap<String, Value>,
    #[serde(default)]
    last_changed: Option<String>,
}

/// Reads the audience's subscribed members by offset, 1,000 at a time (unsubscribed, cleaned
/// and pending members are not the user's contacts to import).
#[async_trait]
impl ContactSource for Mailchimp {
    async fn page(&self, cursor: Option<&str>) -> Result<ImportPage, ProviderError> {
        let offset: u64 = cursor.and_then(|c| c.parse().ok()).unwrap_or(0);
        let url = format!(
            "{}/members?status=subscribed&count={MEMBERS_PER_PAGE}&offset={offset}",
            self.list_url()
        );
        let request = self
            .client
            .http
            .get(url)
            .basic_auth("nexus", Some(&self.api_key));
        let response = self.client.send(request).await?;
        let page: MembersPage = self.client.json(response).await?;
        let read = page.members.len() as u64;
        let contacts = page
            .members
            .into_iter()
            .filter_map(|m| {
                let field = |key: &str| {
                    m.merge_fields
                        .get(key)
                        .and_then(Value::as_str)
                        .map(str::to_string)
                };
                remote_contact(
                    m.email_address.clone(),
                    [field("FNAME"), field("LNAME"), None, field("PHONE"), None],
                    m.last_changed.as_deref(),
                )
            })
            .collect();
        let next = offset + read;
        Ok(ImportPage {
            contacts,
            next: (read > 0 && next < page.total_items).then(|| next.to_string()),
        })
    }
}
