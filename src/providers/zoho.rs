//! Zoho CRM: `Authorization: Zoho-oauthtoken <token>` against the account's `api_domain` (from
//! the token answer; each data centre has its own). Contacts are upserted 100 per call with
//! `duplicate_check_fields: ["Email"]`; the answer has one result per record, in order.
//! Imports read `GET /crm/v2/Contacts?per_page=200`, page by page, until `info.more_records` is
//! false. Page numbers only reach the first 2,000 records in current API versions: past them
//! (and whenever Zoho offers one) the next page is asked for with `page_token` from
//! `info.next_page_token`.

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use url::Url;

use super::{
    ChangeFeed, ContactSink, ContactSource, FeedRequest, ImportPage, ProviderError, PushReport,
    Subscribed, api_base, http::Client, json_fields, remote_contact, required,
};
use crate::domain::credentials::keys;
use crate::domain::{
    contact::{Contact, RemoteContact},
    credentials::Credentials,
    sync_job::RecordFailure,
};

const PER_PAGE: u32 = 200;
/// Records page numbers can reach; past them only `page_token` works.
const PAGE_NUMBER_LIMIT: u64 = 2000;

pub struct Zoho {
    client: Client,
    base: Url,
    token: String,
}

impl Zoho {
    /// `base_override` (ZOHO_API_BASE) replaces the `api_domain` of the token answer.
    pub(super) fn new(
        client: Client,
        base_override: Option<&Url>,
        credentials: &Credentials,
    ) -> Result<Self, ProviderError> {
        Ok(Self {
            base: api_base(base_override, credentials, keys::API_DOMAIN)?,
            token: required(credentials, keys::ACCESS_TOKEN)?.to_string(),
            client,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base.as_str().trim_end_matches('/'))
    }

    fn authorization(&self) -> String {
        format!("Zoho-oauthtoken {}", self.token)
    }
}

/// Our fields under Zoho's Contact field names. `Last_Name` is mandatory in Zoho: the email
/// address stands in when there is none.
pub fn record(contact: &Contact) -> Map<String, Value> {
    let mut fields = json_fields(&[
        ("Email", contact.email.as_deref()),
        ("First_Name", contact.first_name.as_deref()),
        ("Last_Name", contact.last_name.as_deref()),
        ("Phone", contact.phone.as_deref()),
        ("Title", contact.job_title.as_deref()),
        ("Account_Name", contact.company.as_deref()),
    ]);
    if !fields.contains_key("Last_Name")
        && let Some(email) = contact.email()
    {
        fields.insert("Last_Name".into(), Value::String(email.to_string()));
    }
    fields
}

#[derive(Deserialize)]
struct UpsertAnswer {
    #[serde(default)]
    data: Vec<RecordResult>,
}

#[derive(Deserialize)]
struct RecordResult {
    #[serde(default)]
    status: String,
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize, Default)]
struct ContactsPage {
    #[serde(default)]
    data: Vec<ZohoContact>,
    #[serde(default)]
    info: Option<PageInfo>,
}

#[derive(Deserialize)]
struct PageInfo {
    #[serde(default)]
    more_records: bool,
    #[serde(default)]
    next_page_token: Option<String>,
}

#[derive(Deserialize)]
struct ZohoContact {
    #[serde(rename = "Email", default)]
    email: Option<String>,
    #[serde(rename = "First_Name", default)]
    first_name: Option<String>,
    #[serde(rename = "Last_Name", default)]
    last_name: Option<String>,
    #[serde(rename = "Phone", default)]
    phone: Option<String>,
    #[serde(rename = "Title", default)]
    title: Option<String>,
    /// A lookup (`{"name": ..., "id": ...}`) or plain text.
    #[serde(rename = "Account_Name", default)]
    account: Option<Value>,
    #[serde(rename = "Modified_Time", default)]
    modified: Option<String>,
}

#[async_trait]
impl ContactSink for Zoho {
    async fn verify(&self) -> Result<(), ProviderError> {
        let request = self
            .client
            .http
            .get(self.url("/crm/v2/Contacts?per_page=1"))
            .header("Authorization", self.authorization());
        self.client.send(request).await.map(drop)
    }

    async fn push(&self, contacts: &[&Contact], _key: &str) -> Result<PushReport, ProviderError> {
        let data: Vec<Map<String, Value>> = contacts.iter().map(|c| record(c)).collect();
        let request = self
            .client
            .http
            .post(self.url("/crm/v2/Contacts/upsert"))
            .header("Authorization", self.authorization())
            .json(&json!({
                "data": data,
                "duplicate_check_fields": ["Email"],
                "trigger": [],
            }));
        let response = self.client.send(request).await?;
        let answer: UpsertAnswer = self.client.json(response).await?;
        let mut report = PushReport::default();
        for (i, result) in answer.data.iter().enumerate() {
            if result.status == "success" {
                continue;
            }
            let email = contacts
                .get(i)
                .and_then(|c| c.email())
                .unwrap_or_default()
                .to_string();
            if super::passing_record_error(&result.code) {
                report.retry_later.push(email.clone());
            }
            report.failed += 1;
            report.failures.push(RecordFailure {
                email,
                message: self
                    .client
                    .scrub(&format!("{}: {}", result.code, result.message)),
            });
        }
        Ok(report)
    }
}

#[async_trait]
impl ContactSource for Zoho {
    async fn page(&self, cursor: Option<&str>) -> Result<ImportPage, ProviderError> {
        // The cursor is a page number, or `token:` and Zoho's page token.
        let (page_number, url) = match cursor.and_then(|c| c.strip_prefix("token:")) {
            Some(token) => {
                let mut url =
                    Url::parse(&self.url(&format!("/crm/v2/Contacts?per_page={PER_PAGE}")))
                        .map_err(|e| ProviderError::Rejected(format!("bad Zoho URL: {e}")))?;
                url.query_pairs_mut().append_pair("page_token", token);
                (None, url.to_string())
            }
            None => {
                let page: u32 = cursor.and_then(|c| c.parse().ok()).unwrap_or(1);
                (
                    Some(page),
                    self.url(&format!("/crm/v2/Contacts?page={page}&per_page={PER_PAGE}")),
                )
            }
        };
        let request = self
            .client
            .http
            .get(url)
            .header("Authorization", self.authorization());
        let response = self.client.send(request).await?;
        // Zoho answers 204 with no body when there are no contacts.
        let page: ContactsPage = if response.status() == reqwest::StatusCode::NO_CONTENT {
            ContactsPage::default()
        } else {
            self.client.json(response).await?
        };
        let more = page.info.as_ref().is_some_and(|i| i.more_records);
        let token = page
            .info
            .as_ref()
            .and_then(|i| i.next_page_token.clone())
            .filter(|t| !t.is_empty());
        let contacts = page.data.into_iter().filter_map(contact_of).collect();
        Ok(ImportPage {
            contacts,
            next: match (more, token, page_number) {
                (false, _, _) => None,
                (true, Some(token), _) => Some(format!("token:{token}")),
                (true, None, Some(n))
                    if (n as u64 + 1) * (PER_PAGE as u64) <= PAGE_NUMBER_LIMIT =>
                {
                    Some((n + 1).to_string())
                }
                (true, None, _) => {
                    return Err(ProviderError::Rejected(
                        "Zoho has more contacts but sent no page token to reach them".into(),
                    ));
                }
            },
        })
    }
}

/// One Zoho contact as read, if it has an address.
fn contact_of(c: ZohoContact) -> Option<RemoteContact> {
    let company = match c.account {
        Some(Value::String(name)) => Some(name),
        Some(Value::Object(lookup)) => lookup
            .get("name")
            .and_then(Value::as_str)
            .map(str::to_string),
        _ => None,
    };
    remote_contact(
        c.email,
        [c.first_name, c.last_name, company, c.phone, c.title],
        c.modified.as_deref(),
    )
}

/// A watch answer: one result per channel, shaped like a record's.
#[derive(Deserialize)]
struct WatchAnswer {
    #[serde(default)]
    watch: Vec<RecordResult>,
}

/// Zoho's notifications: a watch channel on the Contacts module (`POST /crm/v2/actions/watch`)
/// with the service's channel id, a token Zoho echoes in each notification and an expiry
/// (renewed with `PATCH`, removed with `DELETE ?channel_ids=`). A notification names the
/// changed records' ids; they are read back with `GET /crm/v2/Contacts?ids=` (100 a call).
#[async_trait]
impl ChangeFeed for Zoho {
    async fn subscribe(&self, request: &FeedRequest<'_>) -> Result<Subscribed, ProviderError> {
        self.watch(reqwest::Method::POST, request).await
    }

    async fn renew(&self, request: &FeedRequest<'_>) -> Result<Subscribed, ProviderError> {
        self.watch(reqwest::Method::PATCH, request).await
    }

    async fn unsubscribe(&self, remote_id: &str) -> Result<(), ProviderError> {
        let mut url = Url::parse(&self.url("/crm/v2/actions/watch"))
            .map_err(|e| ProviderError::Rejected(format!("bad Zoho URL: {e}")))?;
        url.query_pairs_mut().append_pair("channel_ids", remote_id);
        let request = self
            .client
            .http
            .delete(url)
            .header("Authorization", self.authorization());
        self.client.send(request).await.map(drop)
    }

    async fn contacts_by_id(&self, ids: &[String]) -> Result<Vec<RemoteContact>, ProviderError> {
        let mut contacts = Vec::new();
        for chunk in ids.chunks(100) {
            let mut url = Url::parse(&self.url("/crm/v2/Contacts"))
                .map_err(|e| ProviderError::Rejected(format!("bad Zoho URL: {e}")))?;
            url.query_pairs_mut().append_pair("ids", &chunk.join(","));
            let request = self
                .client
                .http
                .get(url)
                .header("Authorization", self.authorization());
            let response = self.client.send(request).await?;
            if response.status() == reqwest::StatusCode::NO_CONTENT {
                continue;
            }
            let page: ContactsPage = self.client.json(response).await?;
            contacts.extend(page.data.into_iter().filter_map(contact_of));
        }
        Ok(contacts)
    }
}

impl Zoho {
    async fn watch(
        &self,
        method: reqwest::Method,
        request: &FeedRequest<'_>,
    ) -> Result<Subscribed, ProviderError> {
        let channel: u64 = request
            .channel_id
            .parse()
            .map_err(|_| ProviderError::Rejected("a Zoho channel id is a number".into()))?;
        let expiry = request
            .expires_at
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, false);
        let body = json!({ "watch": [{
            "channel_id": channel,
            "events": ["Contacts.all"],
            "channel_expiry": expiry,
            "token": request.token,
            "notify_url": request.notify_url,
        }]});
        let http = self
            .client
            .http
            .request(method, self.url("/crm/v2/actions/watch"))
            .header("Authorization", self.authorization())
            .json(&body);
        let response = self.client.send(http).await?;
        let answer: WatchAnswer = self.client.json(response).await?;
        match answer.watch.first() {
            Some(result) if result.status.eq_ignore_ascii_case("success") => Ok(Subscribed {
                remote_id: Some(request.channel_id.to_string()),
                expires_at: Some(request.expires_at),
                ..Subscribed::default()
            }),
            Some(result) => Err(ProviderError::Rejected(format!(
                "Zoho refused the watch channel: {} {}",
                result.code,
                self.client.scrub(&result.message)
            ))),
            None => Err(ProviderError::Unavailable(
                "Zoho's watch answer named no channel".into(),
            )),
        }
    }
}
