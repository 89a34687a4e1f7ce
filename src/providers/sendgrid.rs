//! SendGrid Marketing Campaigns: `Authorization: Bearer <API key>`. `PUT /v3/marketing/contacts`
//! answers 202 with an import `job_id`; the import is followed with
//! `GET /v3/marketing/contacts/imports/{job_id}` until it is no longer pending. Its
//! `errored_count` is the number of contacts refused (SendGrid names them only in a CSV file).

use std::{collections::BTreeMap, time::Duration};

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};
use url::Url;

use super::{ContactSink, ProviderError, PushReport, http::Client, json_fields, required};
use crate::domain::{contact::Contact, credentials::Credentials, sync_job::RecordFailure};

/// How long an import may stay pending before the batch counts as failed (and is retried).
const MAX_IMPORT_WAIT: Duration = Duration::from_secs(600);
/// Longest wait between two status polls, whatever a rate limit asks (the attempt's worker
/// notices a shutdown between polls).
const MAX_POLL_WAIT: Duration = Duration::from_secs(30);

pub struct Sendgrid {
    client: Client,
    base: String,
    poll_interval: Duration,
    api_key: String,
    list_ids: Vec<String>,
}

impl Sendgrid {
    pub(super) fn new(
        client: Client,
        base: &Url,
        poll_interval: Duration,
        credentials: &Credentials,
        settings: &BTreeMap<String, String>,
    ) -> Result<Self, ProviderError> {
        let list_ids = settings
            .get("listIds")
            .map(|ids| {
                ids.split(',')
                    .map(str::trim)
                    .filter(|id| !id.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self {
            api_key: required(credentials, "apiKey")?.to_string(),
            client,
            base: base.as_str().trim_end_matches('/').to_string(),
            poll_interval,
            list_ids,
        })
    }
}

#[derive(Deserialize)]
struct Accepted {
    job_id: String,
}

#[derive(Deserialize)]
struct ImportStatus {
    status: String,
    #[serde(default)]
    results: ImportResults,
}

#[derive(Deserialize, Default)]
struct ImportResults {
    #[serde(default)]
    errored_count: u64,
}

/// One contact in SendGrid's shape.
pub fn contact_json(contact: &Contact) -> Option<Value> {
    let mut map = json_fields(&[
        ("first_name", contact.first_name.as_deref()),
        ("last_name", contact.last_name.as_deref()),
        ("phone_number", contact.phone.as_deref()),
    ]);
    map.insert("email".into(), Value::String(contact.email()?.into()));
    Some(Value::Object(map))
}

#[async_trait]
impl ContactSink for Sendgrid {
    async fn verify(&self) -> Result<(), ProviderError> {
        let request = self
            .client
            .http
            .get(format!("{}/v3/scopes", self.base))
            .bearer_auth(&self.api_key);
        self.client.send(request).await.map(drop)
    }

    async fn push(&self, contacts: &[&Contact], _key: &str) -> Result<PushReport, ProviderError> {
        let body: Vec<Value> = contacts.iter().filter_map(|c| contact_json(c)).collect();
        let sent = body.len() as u64;
        let mut payload = json!({ "contacts": body });
        if !self.list_ids.is_empty() {
            payload["list_ids"] = json!(self.list_ids);
        }
        let request = self
            .client
            .http
            .put(format!("{}/v3/marketing/contacts", self.base))
            .bearer_auth(&self.api_key)
            .json(&payload);
        let accepted: Accepted = self.client.json(self.client.send(request).await?).await?;

        // SendGrid has the batch now: from here on a failure is never an error that sends the
        // batch again. A poll that fails (an outage, a rate limit, an unreadable answer) is asked
        // again; an import whose end cannot be learnt in time is sent at the next push.
        let started = tokio::time::Instant::now();
        loop {
            let request = self
                .client
                .http
                .get(format!(
                    "{}/v3/marketing/contacts/imports/{}",
                    self.base,
                    urlencode(&accepted.job_id)
                ))
                .bearer_auth(&self.api_key);
            let polled: Result<ImportStatus, ProviderError> = match self.client.send(request).await
            {
                Ok(response) => self.client.json(response).await,
                Err(e) => Err(e),
            };
            let status = match polled {
                Ok(status) => status,
                Err(e @ (ProviderError::Unavailable(_) | ProviderError::RateLimited { .. }))
                    if started.elapsed() < MAX_IMPORT_WAIT =>
                {
                    let wait = match &e {
                        ProviderError::RateLimited {
                            retry_after: Some(after),
                            ..
                        } => (*after).min(MAX_POLL_WAIT),
                        _ => self.poll_interval,
                    };
                    tracing::info!(error = %e, "SendGrid import status not read; asking again");
                    tokio::time::sleep(wait).await;
                    continue;
                }
                Err(ProviderError::Unavailable(_) | ProviderError::RateLimited { .. }) => {
                    return Ok(unknown_end(&accepted.job_id, contacts));
                }
                Err(e) => return Err(e),
            };
            match status.status.as_str() {
                "pending" if started.elapsed() < MAX_IMPORT_WAIT => {
                    tokio::time::sleep(self.poll_interval).await;
                }
                "pending" => return Ok(unknown_end(&accepted.job_id, contacts)),
                "completed" if status.results.errored_count == 0 => {
                    return Ok(PushReport::default());
                }
                other => {
                    let failed = match (other, status.results.errored_count) {
                        ("completed", n) | ("errored", n) if n > 0 => n.min(sent),
                        _ => sent,
                    };
                    return Ok(PushReport {
                        failed,
                        failures: vec![RecordFailure {
                            email: String::new(),
                            message: format!(
                                "SendGrid import {} ended {other}: {failed} of {sent} contacts were not imported",
                                accepted.job_id
                            ),
                        }],
                        retry_later: Vec::new(),
                    });
                }
            }
        }
    }
}

/// An import SendGrid took whose end could not be learnt within [`MAX_IMPORT_WAIT`]: its
/// contacts are sent again at the next push (an upsert by email: harmless if it did land), not
/// by a retry of this attempt.
fn unknown_end(job_id: &str, contacts: &[&Contact]) -> PushReport {
    let emails: Vec<String> = contacts
        .iter()
        .filter_map(|c| c.email())
        .map(str::to_string)
        .collect();
    tracing::warn!(
        job_id,
        contacts = emails.len(),
        "SendGrid import did not finish within {} s; its contacts are sent again at the next sync",
        MAX_IMPORT_WAIT.as_secs()
    );
    PushReport {
        failed: 0,
        failures: Vec::new(),
        retry_later: emails,
    }
}

/// Percent-encodes a path segment.
fn urlencode(segment: &str) -> String {
    url::form_urlencoded::byte_serialize(segment.as_bytes()).collect()
}
