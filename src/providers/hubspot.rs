//! HubSpot: `Authorization: Bearer <private app token>`, contacts upserted by email with
//! `POST /crm/v3/objects/contacts/batch/upsert` (100 per call). A 207 answer lists the refused
//! records in `errors[]`.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use url::Url;

use super::{
    ChangeFeed, ContactSink, ContactSource, FeedRequest, ImportPage, ProviderError, PushReport,
    Subscribed, http::Client, json_fields, remote_contact, required,
};
use crate::domain::{
    contact::{Contact, RemoteContact},
    credentials::Credentials,
    sync_job::RecordFailure,
};

pub struct Hubspot {
    client: Client,
    base: Url,
    token: String,
}

impl Hubspot {
    pub(super) fn new(
        client: Client,
        base: &Url,
        credentials: &Credentials,
    ) -> Result<Self, ProviderError> {
        Ok(Self {
            token: required(credentials, "accessToken")?.to_string(),
            client,
            base: base.clone(),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base.as_str().trim_end_matches('/'))
    }
}

#[derive(Serialize)]
struct UpsertInput<'a> {
    #[serde(rename = "idProperty")]
    id_property: &'static str,
    id: &'a str,
    properties: Map<String, Value>,
}

#[derive(Deserialize)]
struct UpsertAnswer {
    #[serde(default)]
    errors: Vec<UpsertError>,
}

#[derive(Deserialize)]
struct UpsertError {
    #[serde(default)]
    message: String,
    #[serde(default)]
    context: Map<String, Value>,
}

/// Our fields under HubSpot's property names (empty fields are left out, so they never blank
/// a value someone set in HubSpot).
pub fn properties(contact: &Contact) -> Map<String, Value> {
    json_fields(&[
        ("email", contact.email.as_deref()),
        ("firstname", contact.first_name.as_deref()),
        ("lastname", contact.last_name.as_deref()),
        ("company", contact.company.as_deref()),
        ("phone", contact.phone.as_deref()),
        ("jobtitle", contact.job_title.as_deref()),
    ])
}

#[async_trait]
impl ContactSink for Hubspot {
    async fn verify(&self) -> Result<(), ProviderError> {
        let request = self
            .client
            .http
            .get(self.url("/crm/v3/objects/contacts?limit=1"))
            .bearer_auth(&self.token);
        self.client.send(request).await.map(drop)
    }

    /// HubSpot's batch upsert by email does not do partial success: one address it refuses
    /// can fail the whole batch (400). A refused batch is split in halves, again and again,
    /// until the refused records stand alone; every other record lands. When a half meets an
    /// outage or a rate limit after others landed, the landed halves are kept (not thrown away
    /// with the error, to be sent and split again by the retry) and the unsent rest is sent at
    /// the next push.
    async fn push(&self, contacts: &[&Contact], _key: &str) -> Result<PushReport, ProviderError> {
        let mut report = PushReport::default();
        let mut pending: Vec<&[&Contact]> = vec![contacts];
        let mut landed = false;
        while let Some(part) = pending.pop() {
            match self.push_batch(part).await {
                Ok(done) => {
                    landed = true;
                    report.failed += done.failed;
                    report.failures.extend(done.failures);
                }
                Err(e @ (ProviderError::Unavailable(_) | ProviderError::RateLimited { .. }))
                    if landed =>
                {
                    let unsent: Vec<String> = std::iter::once(part)
                        .chain(pending.drain(..))
                        .flat_map(|p| p.iter().filter_map(|c| c.email()).map(str::to_string))
                        .collect();
                    tracing::info!(
                        unsent = unsent.len(),
                        error = %e,
                        "HubSpot: part of a split batch is sent at the next push"
                    );
                    report.retry_later.extend(unsent);
                    break;
                }
                Err(ProviderError::BatchRefused(_)) if part.len() > 1 => {
                    let (first, second) = part.split_at(part.len() / 2);
                    // Popped last-in first: the first half goes first.
                    pending.push(second);
                    pending.push(first);
                }
                Err(ProviderError::BatchRefused(reason)) => {
                    report.failed += 1;
                    report.failures.push(RecordFailure {
                        email: part
                            .first()
                            .and_then(|c| c.email())
                            .unwrap_or_default()
                            .to_string(),
                        message: reason,
                    });
                }
                Err(e) => return Err(e),
            }
        }
        Ok(report)
    }
}

impl Hubspot {
    async fn push_batch(&self, contacts: &[&Contact]) -> Result<PushReport, ProviderError> {
        let inputs: Vec<UpsertInput<'_>> = contacts
            .iter()
            .filter_map(|c| {
                Some(UpsertInput {
                    id_property: "email",
                    id: c.email()?,
                    properties: properties(c),
                })
            })
            .collect();
        let request = self
            .client
            .http
            .post(self.url("/crm/v3/objects/contacts/batch/upsert"))
            .bearer_auth(&self.token)
            .json(&serde_json::json!({ "inputs": inputs }));
        let response = self.client.send(request).await?;
        let answer: UpsertAnswer = self.client.json(response).await?;
        let mut report = PushReport::default();
        for error in answer.errors {
            let message = self.client.scrub(&error.message);
            // `context` names the refused ids (here, emails), e.g. {"ids": ["a@b.com"]}.
            let emails: Vec<String> = error
                .context
                .values()
                .filter_map(Value::as_array)
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect();
            if emails.is_empty() {
                report.failed += 1;
                report.failures.push(RecordFailure {
                    email: String::new(),
                    message,
                });
            } else {
                report.failed += emails.len() as u64;
                report
                    .failures
                    .extend(emails.into_iter().map(|email| RecordFailure {
                        email,
                        message: message.clone(),
                    }));
            }
        }
        Ok(report)
    }
}

#[derive(Deserialize)]
struct ContactsPage {
    #[serde(default)]
    results: Vec<HubspotContact>,
    #[serde(default)]
    paging: Option<Paging>,
}

#[derive(Deserialize)]
struct HubspotContact {
    #[serde(default)]
    properties: BTreeMap<String, Option<String>>,
    #[serde(default, rename = "updatedAt")]
    updated_at: Option<String>,
}

#[derive(Deserialize)]
struct Paging {
    next: Option<NextPage>,
}

#[derive(Deserialize)]
struct NextPage {
    after: String,
}

/// One HubSpot contact as read, if it has an address.
fn contact_of(c: HubspotContact) -> Option<RemoteContact> {
    let p = |key: &str| c.properties.get(key).cloned().flatten();
    remote_contact(
        p("email"),
        [
            p("firstname"),
            p("lastname"),
            p("company"),
            p("phone"),
            p("jobtitle"),
        ],
        c.updated_at.as_deref().or(p("lastmodifieddate").as_deref()),
    )
}

const PROPERTIES: [&str; 7] = [
    "email",
    "firstname",
    "lastname",
    "company",
    "phone",
    "jobtitle",
    "lastmodifieddate",
];

#[derive(Deserialize)]
struct AccountDetails {
    #[serde(rename = "portalId")]
    portal_id: u64,
}

#[derive(Deserialize)]
struct BatchRead {
    #[serde(default)]
    results: Vec<HubspotContact>,
}

/// HubSpot's webhooks belong to the app (set in its developer settings) and name the portal:
/// a connection learns its portal from `GET /account-info/v3/details`. Changed contacts are
/// read back with `POST /crm/v3/objects/contacts/batch/read`, 100 ids per call; an id HubSpot
/// no longer has is left out of the answer (207 with `errors[]`).
#[async_trait]
impl ChangeFeed for Hubspot {
    async fn subscribe(&self, _request: &FeedRequest<'_>) -> Result<Subscribed, ProviderError> {
        let request = self
            .client
            .http
            .get(self.url("/account-info/v3/details"))
            .bearer_auth(&self.token);
        let response = self.client.send(request).await?;
        let details: AccountDetails = self.client.json(response).await?;
        Ok(Subscribed {
            account: Some(details.portal_id.to_string()),
            ..Subscribed::default()
        })
    }

    async fn contacts_by_id(&self, ids: &[String]) -> Result<Vec<RemoteContact>, ProviderError> {
        let mut contacts = Vec::new();
        for chunk in ids.chunks(100) {
            let inputs: Vec<Value> = chunk.iter().map(|id| json!({ "id": id })).collect();
            let request = self
                .client
                .http
                .post(self.url("/crm/v3/objects/contacts/batch/read"))
                .bearer_auth(&self.token)
                .json(&json!({ "properties": PROPERTIES, "inputs": inputs }));
            let response = self.client.send(request).await?;
            let read: BatchRead = self.client.json(response).await?;
            contacts.extend(read.results.into_iter().filter_map(contact_of));
        }
        Ok(contacts)
    }
}

/// Reads contacts 100 at a time, following `paging.next.after`.
#[async_trait]
impl ContactSource for Hubspot {
    async fn page(&self, cursor: Option<&str>) -> Result<ImportPage, ProviderError> {
        let mut url = Url::parse(&self.url("/crm/v3/objects/contacts"))
            .map_err(|e| ProviderError::Rejected(format!("bad HubSpot URL: {e}")))?;
        url.query_pairs_mut()
            .append_pair("limit", "100")
            .append_pair(
                "properties",
                "email,firstname,lastname,company,phone,jobtitle,lastmodifieddate",
            );
        if let Some(after) = cursor {
            url.query_pairs_mut().append_pair("after", after);
        }
        let request = self.client.http.get(url).bearer_auth(&self.token);
        let response = self.client.send(request).await?;
        let page: ContactsPage = self.client.json(response).await?;
        let contacts = page.results.into_iter().filter_map(contact_of).collect();
        Ok(ImportPage {
            contacts,
            next: page.paging.and_then(|p| p.next).map(|n| n.after),
        })
    }
}
