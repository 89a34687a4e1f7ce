//! Salesforce: OAuth Bearer token against the org's `instance_url`. `Email` is not an external
//! id, so a push first looks the batch's addresses up with SOQL (`Email IN (...)`), then
//! updates the matches and creates the rest with composite sObject collections (200 per call,
//! `allOrNone: false`); the answer has one result per record, in order. Imports page through
//! a SOQL query by `nextRecordsUrl`.

use std::collections::HashMap;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use url::Url;

use super::{
    ContactSink, ContactSource, ImportPage, ProviderError, PushReport, api_base, http::Client,
    json_fields, remote_contact, required,
};
use crate::domain::credentials::keys;
use crate::domain::{contact::Contact, credentials::Credentials, sync_job::RecordFailure};

/// The REST API version used.
pub const API_VERSION: &str = "v59.0";

pub struct Salesforce {
    client: Client,
    base: Url,
    token: String,
}

impl Salesforce {
    /// `base_override` (SALESFORCE_API_BASE) replaces the `instance_url` of the token answer.
    pub(super) fn new(
        client: Client,
        base_override: Option<&Url>,
        credentials: &Credentials,
    ) -> Result<Self, ProviderError> {
        Ok(Self {
            base: api_base(base_override, credentials, keys::INSTANCE_URL)?,
            token: required(credentials, keys::ACCESS_TOKEN)?.to_string(),
            client,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base.as_str().trim_end_matches('/'))
    }

    fn data_url(&self, rest: &str) -> String {
        self.url(&format!("/services/data/{API_VERSION}{rest}"))
    }

    async fn query<T: serde::de::DeserializeOwned>(&self, url: String) -> Result<T, ProviderError> {
        let request = self.client.http.get(url).bearer_auth(&self.token);
        let response = self.client.send(request).await?;
        self.client.json(response).await
    }

    fn soql_url(&self, soql: &str) -> Result<String, ProviderError> {
        let mut url = Url::parse(&self.data_url("/query"))
            .map_err(|e| ProviderError::Rejected(format!("bad Salesforce URL: {e}")))?;
        url.query_pairs_mut().append_pair("q", soql);
        Ok(url.into())
    }

    /// Salesforce ids of existing contacts by lower-cased email. The addresses are looked up
    /// in as many queries as it takes to keep every request URI under Salesforce's limit of
    /// 16,384 bytes (long addresses, percent-encoded, fill it well before 200 of them).
    async fn existing(&self, emails: &[&str]) -> Result<HashMap<String, String>, ProviderError> {
        let mut ids = HashMap::new();
        let mut rest = emails;
        while !rest.is_empty() {
            let (url, taken) = self.lookup_url(rest)?;
            rest = &rest[taken..];
            let mut url = url;
            loop {
                let page: QueryPage = self.query(url).await?;
                for record in page.records {
                    if let (Some(id), Some(email)) = (record.id, record.email) {
                        ids.entry(email.to_ascii_lowercase()).or_insert(id);
                    }
                }
                match page.next_records_url {
                    Some(next) if !page.done => url = self.next_url(&next)?,
                    _ => break,
                }
            }
        }
        Ok(ids)
    }

    /// The lookup URL for as many of `emails` (from the first) as fit under
    /// [`MAX_URI_BYTES`], and how many that is (at least one).
    fn lookup_url(&self, emails: &[&str]) -> Result<(String, usize), ProviderError> {
        let soql = |list: &[&str]| {
            let list: Vec<String> = list.iter().map(|e| soql_string(e)).collect();
            format!(
                "SELECT Id, Email FROM Contact WHERE Email IN ({}) ORDER BY CreatedDate",
                list.join(",")
            )
        };
        let mut best = self.soql_url(&soql(&emails[..1]))?;
        let mut taken = 1;
        while taken < emails.len() {
            let candidate = self.soql_url(&soql(&emails[..taken + 1]))?;
            if candidate.len() > MAX_URI_BYTES {
                break;
            }
            best = candidate;
            taken += 1;
        }
        Ok((best, taken))
    }

    /// A `nextRecordsUrl` must be a path of this API (it is joined to our host, never followed
    /// to another).
    fn next_url(&self, next: &str) -> Result<String, ProviderError> {
        if !next.starts_with("/services/data/") || next.contains("..") {
            return Err(ProviderError::Rejected(
                "Salesforce sent a next-page link outside its API".into(),
            ));
        }
        Ok(self.url(next))
    }

    /// Sends one composite collection request and reads its per-record results.
    async fn collection(
        &self,
        method: reqwest::Method,
        records: Vec<Value>,
        emails: &[&str],
        report: &mut PushReport,
    ) -> Result<(), ProviderError> {
        if records.is_empty() {
            return Ok(());
        }
        let request = self
            .client
            .http
            .request(method, self.data_url("/composite/sobjects"))
            .bearer_auth(&self.token)
            .json(&json!({ "allOrNone": false, "records": records }));
        let response = self.client.send(request).await?;
        let results: Vec<RecordResult> = self.client.json(response).await?;
        for (i, result) in results.iter().enumerate() {
            if result.success {
                continue;
            }
            let message = result
                .errors
                .iter()
                .map(|e| format!("{}: {}", e.status_code, e.message))
                .collect::<Vec<_>>()
                .join("; ");
            let email = emails.get(i).map(|e| e.to_string()).unwrap_or_default();
            if result
                .errors
                .iter()
                .any(|e| super::passing_record_error(&e.status_code))
            {
                report.retry_later.push(email.clone());
            }
            report.failed += 1;
            report.failures.push(RecordFailure {
                email,
                message: self.client.scrub(&message),
            });
        }
        Ok(())
    }
}

/// Salesforce refuses request URIs longer than 16,384 bytes; this leaves room for the host.
pub const MAX_URI_BYTES: usize = 15_000;

/// A SOQL string literal: quotes and backslashes escaped.
fn soql_string(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        match c {
            '\'' => out.push_str("\\'"),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// Our fields under Salesforce's Contact field names. `LastName` is required to create a
/// contact: the email address stands in when there is none.
pub fn fields(contact: &Contact, creating: bool) -> Map<String, Value> {
    let mut fields = json_fields(&[
        ("FirstName", contact.first_name.as_deref()),
        ("LastName", contact.last_name.as_deref()),
        ("Email", contact.email.as_deref()),
        ("Phone", contact.phone.as_deref()),
        ("Title", contact.job_title.as_deref()),
    ]);
    if creating
        && !fields.contains_key("LastName")
        && let Some(email) = contact.email()
    {
        fields.insert("LastName".into(), Value::String(email.to_string()));
    }
    fields
}

#[derive(Deserialize)]
struct QueryPage {
    #[serde(default)]
    done: bool,
    #[serde(default, rename = "nextRecordsUrl")]
    next_records_url: Option<String>,
    #[serde(default)]
    records: Vec<SfContact>,
}

#[derive(Deserialize)]
struct SfContact {
    #[serde(rename = "Id")]
    id: Option<String>,
    #[serde(rename = "Email")]
    email: Option<String>,
    #[serde(rename = "FirstName", default)]
    first_name: Option<String>,
    #[serde(rename = "LastName", default)]
    last_name: Option<String>,
    #[serde(rename = "Phone", default)]
    phone: Option<String>,
    #[serde(rename = "Title", default)]
    title: Option<String>,
    #[serde(rename = "LastModifiedDate", default)]
    last_modified: Option<String>,
}

#[derive(Deserialize)]
struct RecordResult {
    #[serde(default)]
    success: bool,
    #[serde(default)]
    errors: Vec<RecordError>,
}

#[derive(Deserialize)]
struct RecordError {
    #[serde(default, rename = "statusCode")]
    status_code: String,
    #[serde(default)]
    message: String,
}

#[async_trait]
impl ContactSink for Salesforce {
    async fn verify(&self) -> Result<(), ProviderError> {
        let request = self
            .client
            .http
            .get(self.data_url("/limits"))
            .bearer_auth(&self.token);
        self.client.send(request).await.map(drop)
    }

    async fn push(&self, contacts: &[&Contact], _key: &str) -> Result<PushReport, ProviderError> {
        let emails: Vec<&str> = contacts.iter().filter_map(|c| c.email()).collect();
        let existing = self.existing(&emails).await?;
        let (mut updates, mut update_emails) = (Vec::new(), Vec::new());
        let (mut creates, mut create_emails) = (Vec::new(), Vec::new());
        for contact in contacts {
            let Some(email) = contact.email() else {
                continue;
            };
            let mut record = Map::new();
            record.insert("attributes".into(), json!({ "type": "Contact" }));
            match existing.get(&email.to_ascii_lowercase()) {
                Some(id) => {
                    record.insert("Id".into(), Value::String(id.clone()));
                    record.extend(fields(contact, false));
                    updates.push(Value::Object(record));
                    update_emails.push(email);
                }
                None => {
                    record.extend(fields(contact, true));
                    creates.push(Value::Object(record));
                    create_emails.push(email);
                }
            }
        }
        let mut report = PushReport::default();
        self.collection(reqwest::Method::PATCH, updates, &update_emails, &mut report)
            .await?;
        self.collection(reqwest::Method::POST, creates, &create_emails, &mut report)
            .await?;
        Ok(report)
    }
}

#[async_trait]
impl ContactSource for Salesforce {
    async fn page(&self, cursor: Option<&str>) -> Result<ImportPage, ProviderError> {
        let url = match cursor {
            Some(next) => self.next_url(next)?,
            None => self.soql_url(
                "SELECT Id, Email, FirstName, LastName, Phone, Title, LastModifiedDate \
                 FROM Contact WHERE Email != null ORDER BY Id",
            )?,
        };
        let page: QueryPage = self.query(url).await?;
        let contacts = page
            .records
            .into_iter()
            .filter_map(|r| {
                remote_contact(
                    r.email,
                    [r.first_name, r.last_name, None, r.phone, r.title],
                    r.last_modified.as_deref(),
                )
            })
            .collect();
        Ok(ImportPage {
            contacts,
            next: page.next_records_url.filter(|_| !page.done),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soql_strings_escape_quotes_and_backslashes() {
        assert_eq!(soql_string("o'neil@x.com"), "'o\\'neil@x.com'");
        assert_eq!(soql_string("a\\b"), "'a\\\\b'");
    }
}
