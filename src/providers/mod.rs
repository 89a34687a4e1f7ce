//! Clients of the contact-sync providers, one module each, behind one trait. Each maps our
//! contact fields to the provider's names and reads the provider's partial-error shape.
//! Every request waits for the per-provider-and-account rate limiter first ([`Throttle`]).

pub mod change_feed;
pub mod dropbox;
pub mod file_sink;
pub mod google_drive;
mod http;
pub mod hubspot;
pub mod mailchimp;
mod rate_limit;
pub mod salesforce;
pub mod sendgrid;
pub mod zapier;
pub mod zoho;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use url::Url;

pub use change_feed::{ChangeFeed, FeedRequest, Subscribed};
pub use file_sink::{Chunk, FileSink, UploadSession};
pub use rate_limit::{RateLimits, Throttle, quota};

use crate::domain::{
    catalogue::ProviderId,
    contact::{Contact, RemoteContact, non_blank},
    credentials::Credentials,
    sync_job::RecordFailure,
};

/// The longest wait a provider's answer is believed to ask for (`Retry-After`, a rate-limit
/// reset): a daily quota resets within a day.
pub const MAX_PROVIDER_WAIT: Duration = Duration::from_secs(24 * 3600);

/// Why a provider call failed, sorted by what the caller should do about it. Messages never
/// carry credentials (provider texts are scrubbed of them).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The credentials or settings are malformed; no request was made.
    #[error("{field}: {reason}")]
    InvalidInput { field: &'static str, reason: String },
    /// The provider refused the credentials (401/403 that is not a rate limit). Do not retry.
    #[error("{0}")]
    Unauthorized(String),
    /// The provider refused this batch's content (400, 413, 422): its contacts count as failed
    /// and the sync goes on with the next batch.
    #[error("{0}")]
    BatchRefused(String),
    /// The provider refused the request for good (another 4xx, e.g. an audience that does
    /// not exist). Do not retry.
    #[error("{0}")]
    Rejected(String),
    /// The provider asked us to slow down; `daily` means the day's quota is spent.
    #[error("rate limited by the provider")]
    RateLimited {
        retry_after: Option<Duration>,
        daily: bool,
    },
    /// Network failure, timeout or 5xx: worth retrying.
    #[error("{0}")]
    Unavailable(String),
    /// The file this service keeps at the provider is gone (trashed or deleted): make a new one.
    #[error("{0}")]
    FileGone(String),
    /// The provider no longer has a resumable upload (expired, or completed by a request whose
    /// answer was lost): upload the file again from its first byte.
    #[error("{0}")]
    UploadLost(String),
}

/// What one pushed batch came back with.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PushReport {
    /// Contacts the provider refused (exact count).
    pub failed: u64,
    /// Details of the refused contacts, as far as the provider names them.
    pub failures: Vec<RecordFailure>,
    /// Addresses of the refused contacts whose refusal will pass (a locked record, a
    /// per-record rate limit): they are sent again at the next push.
    pub retry_later: Vec<String>,
}

/// Per-record error codes that pass by themselves (Salesforce's and Zoho's): the record is
/// sent again at the next push instead of counting as refused for good.
pub fn passing_record_error(code: &str) -> bool {
    matches!(
        code,
        "UNABLE_TO_LOCK_ROW"
            | "REQUEST_RUNNING_TOO_LONG"
            | "SERVER_UNAVAILABLE"
            | "INTERNAL_ERROR"
            | "TOO_MANY_REQUESTS"
            | "LIMIT_EXCEEDED"
    )
}

/// A provider account that contacts can be pushed to.
#[async_trait]
pub trait ContactSink: Send + Sync {
    /// One cheap call proving the credentials (and settings) work.
    async fn verify(&self) -> Result<(), ProviderError>;

    /// Pushes one batch (at most the catalogue's batch size, every contact with an email for
    /// email-keyed providers). Per-record refusals are in the report, not an error.
    /// `key` names the batch: the same when this batch is sent again, another for another
    /// batch (Zapier passes it on as `Idempotency-Key`; upserts by key need none).
    async fn push(&self, contacts: &[&Contact], key: &str) -> Result<PushReport, ProviderError>;
}

/// The largest contacts file sent in one request: Google Drive's multipart limit, Dropbox's
/// `files/upload` limit. A larger file goes through an upload session.
pub fn single_request_limit(provider: ProviderId) -> usize {
    match provider {
        ProviderId::Dropbox => dropbox::UPLOAD_LIMIT,
        _ => google_drive::MULTIPART_LIMIT,
    }
}

/// One page of a provider's contacts.
#[derive(Debug, Clone, Default)]
pub struct ImportPage {
    pub contacts: Vec<RemoteContact>,
    /// Where the next page starts (the provider's cursor, offset or page number); `None` at
    /// the end.
    pub next: Option<String>,
}

/// A provider account contacts can be imported from.
#[async_trait]
pub trait ContactSource: Send + Sync {
    /// The page at `cursor` (`None`: the first).
    async fn page(&self, cursor: Option<&str>) -> Result<ImportPage, ProviderError>;
}

/// Where each provider's API lives (tests point these at fakes).
#[derive(Debug, Clone)]
pub struct ProviderEndpoints {
    pub hubspot_api_base: Url,
    /// May contain `{dc}`, replaced by the data centre of the API key.
    pub mailchimp_api_base: String,
    pub sendgrid_api_base: Url,
    /// A Zapier hook URL must start with this; anything else is refused (no requests to
    /// arbitrary hosts on a user's say-so).
    pub zapier_hook_base: Url,
    /// How often a SendGrid import job's status is polled.
    pub sendgrid_poll_interval: Duration,
    /// Replaces the `instance_url` of Salesforce token answers when set.
    pub salesforce_api_base: Option<Url>,
    /// Replaces the `api_domain` of Zoho token answers when set.
    pub zoho_api_base: Option<Url>,
    pub google_upload_base: Url,
    pub dropbox_content_base: Url,
}

/// Builds provider clients from stored credentials and settings.
pub struct Providers {
    http: reqwest::Client,
    endpoints: ProviderEndpoints,
    limits: Arc<RateLimits>,
}

impl Providers {
    pub fn new(endpoints: ProviderEndpoints, limits: Arc<RateLimits>) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("nexus-billing/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .build()?;
        Ok(Self {
            http,
            endpoints,
            limits,
        })
    }

    pub fn limits(&self) -> &Arc<RateLimits> {
        &self.limits
    }

    fn client(
        &self,
        provider: ProviderId,
        account: &str,
        credentials: &Credentials,
    ) -> http::Client {
        http::Client::new(
            self.http.clone(),
            Throttle::new(
                Arc::clone(&self.limits),
                provider,
                rate_limit::account_key(provider, account, credentials),
            ),
            provider,
            credentials.clone(),
        )
    }

    /// The client of a CRM (pushed to and imported from), or `None` for other providers.
    fn crm(
        &self,
        provider: ProviderId,
        account: &str,
        credentials: &Credentials,
        settings: &BTreeMap<String, String>,
    ) -> Result<Option<Box<dyn Crm>>, ProviderError> {
        let client = self.client(provider, account, credentials);
        let crm: Box<dyn Crm> = match provider {
            ProviderId::Hubspot => Box::new(hubspot::Hubspot::new(
                client,
                &self.endpoints.hubspot_api_base,
                credentials,
            )?),
            ProviderId::Mailchimp => Box::new(mailchimp::Mailchimp::new(
                client,
                &self.endpoints.mailchimp_api_base,
                credentials,
                settings,
            )?),
            ProviderId::Salesforce => Box::new(salesforce::Salesforce::new(
                client,
                self.endpoints.salesforce_api_base.as_ref(),
                credentials,
            )?),
            ProviderId::ZohoCrm => Box::new(zoho::Zoho::new(
                client,
                self.endpoints.zoho_api_base.as_ref(),
                credentials,
            )?),
            _ => return Ok(None),
        };
        Ok(Some(crm))
    }

    /// A client for one account. The rate limiter is keyed by the provider account the
    /// credentials name (see [`rate_limit::account_key`]); `account` is the Nexus user.
    pub fn sink(
        &self,
        provider: ProviderId,
        account: &str,
        credentials: &Credentials,
        settings: &BTreeMap<String, String>,
    ) -> Result<Box<dyn ContactSink>, ProviderError> {
        if let Some(crm) = self.crm(provider, account, credentials, settings)? {
            return Ok(crm);
        }
        let client = self.client(provider, account, credentials);
        match provider {
            ProviderId::Sendgrid => Ok(Box::new(sendgrid::Sendgrid::new(
                client,
                &self.endpoints.sendgrid_api_base,
                self.endpoints.sendgrid_poll_interval,
                credentials,
                settings,
            )?)),
            ProviderId::Zapier => Ok(Box::new(zapier::Zapier::new(
                client,
                &self.endpoints.zapier_hook_base,
                credentials,
            )?)),
            _ => Err(ProviderError::Rejected(format!(
                "{provider} keeps contacts as a file, not record by record"
            ))),
        }
    }

    /// The file destination of Google Drive and Dropbox.
    pub fn file_sink(
        &self,
        provider: ProviderId,
        account: &str,
        credentials: &Credentials,
        settings: &BTreeMap<String, String>,
    ) -> Result<Box<dyn FileSink>, ProviderError> {
        let client = self.client(provider, account, credentials);
        match provider {
            ProviderId::GoogleDrive => Ok(Box::new(google_drive::GoogleDrive::new(
                client,
                &self.endpoints.google_upload_base,
                credentials,
            )?)),
            ProviderId::Dropbox => Ok(Box::new(dropbox::Dropbox::new(
                client,
                &self.endpoints.dropbox_content_base,
                credentials,
                settings,
            )?)),
            _ => Err(ProviderError::Rejected(format!(
                "{provider} takes contacts record by record, not as a file"
            ))),
        }
    }

    /// The change feed of a provider that sends webhooks (HubSpot, Mailchimp, Zoho CRM), or
    /// `None` for the others.
    pub fn change_feed(
        &self,
        provider: ProviderId,
        account: &str,
        credentials: &Credentials,
        settings: &BTreeMap<String, String>,
    ) -> Result<Option<Box<dyn ChangeFeed>>, ProviderError> {
        let client = self.client(provider, account, credentials);
        Ok(match provider {
            ProviderId::Hubspot => Some(Box::new(hubspot::Hubspot::new(
                client,
                &self.endpoints.hubspot_api_base,
                credentials,
            )?)),
            ProviderId::Mailchimp => Some(Box::new(mailchimp::Mailchimp::new(
                client,
                &self.endpoints.mailchimp_api_base,
                credentials,
                settings,
            )?)),
            ProviderId::ZohoCrm => Some(Box::new(zoho::Zoho::new(
                client,
                self.endpoints.zoho_api_base.as_ref(),
                credentials,
            )?)),
            _ => None,
        })
    }

    /// Where an import reads from (HubSpot, Salesforce, Zoho CRM, Mailchimp).
    pub fn source(
        &self,
        provider: ProviderId,
        account: &str,
        credentials: &Credentials,
        settings: &BTreeMap<String, String>,
    ) -> Result<Box<dyn ContactSource>, ProviderError> {
        match self.crm(provider, account, credentials, settings)? {
            Some(crm) => Ok(crm),
            None => Err(ProviderError::Rejected(format!(
                "contacts cannot be imported from {provider}"
            ))),
        }
    }
}

/// A CRM: contacts are pushed to it and imported from it.
trait Crm: ContactSink + ContactSource {}
impl<T: ContactSink + ContactSource> Crm for T {}

/// The API host of a provider whose host comes with the tokens (Salesforce `instanceUrl`, Zoho
/// `apiDomain`), unless a setting replaces it; it must be an http(s) URL.
fn api_base(
    base_override: Option<&Url>,
    credentials: &Credentials,
    key: &'static str,
) -> Result<Url, ProviderError> {
    if let Some(base) = base_override {
        return Ok(base.clone());
    }
    let raw = required(credentials, key)?;
    Url::parse(raw)
        .ok()
        .filter(|u| matches!(u.scheme(), "https" | "http") && u.host().is_some())
        .ok_or(ProviderError::InvalidInput {
            field: key,
            reason: "is not an http(s) URL".into(),
        })
}

/// A provider's contact in our shape: fields trimmed, blanks dropped; `None` without an email
/// address (contacts are matched by it).
fn remote_contact(
    email: Option<String>,
    [first_name, last_name, company, phone, job_title]: [Option<String>; 5],
    modified_at: Option<&str>,
) -> Option<RemoteContact> {
    let clean = |v: Option<String>| non_blank(v.as_deref()).map(str::to_string);
    Some(RemoteContact {
        email: clean(email)?,
        first_name: clean(first_name),
        last_name: clean(last_name),
        company: clean(company),
        phone: clean(phone),
        job_title: clean(job_title),
        modified_at: modified_at.and_then(parse_time),
    })
}

/// A provider timestamp: RFC 3339, or Salesforce's `2024-01-31T10:00:00.000+0000`.
fn parse_time(value: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(value)
        .or_else(|_| DateTime::parse_from_str(value, "%Y-%m-%dT%H:%M:%S%.f%z"))
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The non-blank values among `fields`, as a JSON object under the provider's names. Blank
/// fields are left out, so a sync never erases a value someone set at the provider.
fn json_fields(fields: &[(&str, Option<&str>)]) -> serde_json::Map<String, serde_json::Value> {
    fields
        .iter()
        .filter_map(|(name, value)| {
            crate::domain::contact::non_blank(*value)
                .map(|v| (name.to_string(), serde_json::Value::String(v.to_string())))
        })
        .collect()
}

/// The credential `key`, or an error naming it.
fn required<'a>(credentials: &'a Credentials, key: &'static str) -> Result<&'a str, ProviderError> {
    credentials.get(key).ok_or(ProviderError::InvalidInput {
        field: key,
        reason: "is required".into(),
    })
}

/// The most instants of `times` (sorted) that fall in any one window of length `window`
/// (half-open, as a provider counts requests in a rolling window).
#[cfg(test)]
pub(crate) fn most_in_any_window(times: &[Duration], window: Duration) -> usize {
    let mut most = 0;
    let mut start = 0;
    for (end, t) in times.iter().enumerate() {
        while *t >= times[start] + window {
            start += 1;
        }
        most = most.max(end + 1 - start);
    }
    most
}

/// A small deterministic generator of jitter for the fake-clock tests (no seed to manage).
#[cfg(test)]
pub(crate) struct Jitter(u64);

#[cfg(test)]
impl Jitter {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    /// A duration in `[0, max)`.
    pub(crate) fn below(&mut self, max: Duration) -> Duration {
        // xorshift64
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX).max(1);
        Duration::from_nanos(self.0 % nanos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::catalogue::RateLimit;
    use governor::RateLimiter;

    #[test]
    fn provider_timestamps_are_read_in_each_format() {
        let want = DateTime::parse_from_rfc3339("2024-01-31T10:00:00Z")
            .map(|t| t.with_timezone(&Utc))
            .ok();
        for value in [
            "2024-01-31T10:00:00Z",
            "2024-01-31T10:00:00.000Z",
            "2024-01-31T10:00:00.000+0000",
            "2024-01-31T11:00:00+01:00",
        ] {
            assert_eq!(parse_time(value), want, "{value}");
        }
        assert_eq!(parse_time("yesterday"), None);
    }

    /// Budgets of every shape the catalogue and RATE_LIMITS use.
    const LIMITS: [RateLimit; 6] = [
        RateLimit {
            requests: 100,
            per_seconds: 10,
        },
        RateLimit {
            requests: 10,
            per_seconds: 1,
        },
        RateLimit {
            requests: 1,
            per_seconds: 1,
        },
        RateLimit {
            requests: 5,
            per_seconds: 1,
        },
        RateLimit {
            requests: 20,
            per_seconds: 1,
        },
        RateLimit {
            requests: 190,
            per_seconds: 10,
        },
    ];

    #[test]
    fn quotas_keep_a_request_of_margin_in_any_window() {
        for limit in LIMITS {
            let RateLimit {
                requests,
                per_seconds,
            } = limit;
            let q = quota(limit);
            assert_eq!(q.burst_size().get(), 1, "no bursts");
            let window = Duration::from_secs(u64::from(per_seconds)).as_nanos();
            // Requests spaced `period` apart: a window (t - W, t] holds at most ceil(W / period).
            let most = window.div_ceil(q.replenish_interval().as_nanos());
            let requests = u128::from(requests);
            assert!(
                most < requests || requests == 1,
                "{requests}/{per_seconds}s allows {most}"
            );
            assert!(
                most * 10 + 10 >= requests * 9,
                "{requests}/{per_seconds}s only {most}"
            );
        }
    }

    /// The limiter itself (governor's GCRA with our quota) on a fake clock: callers as eager
    /// as can be, each request then delayed on its way by network and scheduling jitter, which
    /// can bunch requests together. The quota's margin absorbs jitter up to
    /// `requests * spacing - window` (at least one spacing, or 5 % of the window for a budget
    /// of one): with any jitter below it, the provider never sees more than its limit in any
    /// window. No wall clock is involved, so this holds on any machine.
    #[test]
    fn the_limiter_keeps_under_the_limit_in_every_window_whatever_the_jitter() {
        use governor::clock::{Clock, FakeRelativeClock, Reference};
        for limit in LIMITS {
            let RateLimit {
                requests,
                per_seconds,
            } = limit;
            let window = Duration::from_secs(u64::from(per_seconds));
            let q = quota(limit);
            let clock = FakeRelativeClock::default();
            let limiter = RateLimiter::direct_with_clock(q, clock.clone());
            let spacing = q.replenish_interval();
            let tolerance = spacing * requests - window;
            assert!(
                tolerance >= spacing.min(window / 20),
                "{requests}/{per_seconds}s: margin {tolerance:?}"
            );
            let mut jitter = Jitter::new(u64::from(requests) * 7919);
            let start = clock.now();
            let mut arrivals = Vec::new();
            while arrivals.len() < 20 * requests as usize {
                match limiter.check() {
                    Ok(()) => {
                        let sent: Duration = clock.now().duration_since(start).into();
                        arrivals.push(sent + jitter.below(tolerance));
                    }
                    // The caller wakes when told, or a little later.
                    Err(not_until) => clock
                        .advance(not_until.wait_time_from(clock.now()) + jitter.below(spacing / 4)),
                }
            }
            arrivals.sort();
            let most = most_in_any_window(&arrivals, window);
            assert!(
                most <= requests as usize,
                "{requests}/{per_seconds}s: {most} in one window"
            );
            // And the budget is used, not wasted: the quota's own share of it (one request, or
            // 5 %, kept as margin), less what the callers' late wake-ups cost here.
            let usable = requests - requests.div_ceil(20).min(requests - 1);
            let sent_in = arrivals.last().copied().unwrap_or_default();
            let per_window = arrivals.len() as f64 / (sent_in.as_secs_f64() / window.as_secs_f64());
            assert!(
                per_window >= 0.8 * f64::from(usable),
                "{requests}/{per_seconds}s: only {per_window:.1} per window"
            );
        }
    }

    #[test]
    fn most_in_any_window_counts_a_rolling_window() {
        let ms = Duration::from_millis;
        let times = [ms(0), ms(100), ms(999), ms(1000), ms(1001), ms(2500)];
        assert_eq!(most_in_any_window(&times, ms(1000)), 4);
        assert_eq!(most_in_any_window(&times, ms(1)), 1);
        assert_eq!(most_in_any_window(&[], ms(1000)), 0);
    }
}
