//! Clients of the contact-sync providers, one module each, behind one trait. Each maps our
//! contact fields to the provider's names and reads the provider's partial-error shape.
//! Every request waits for the per-provider-and-account rate limiter first ([`Throttle`]).

mod http;
pub mod hubspot;
pub mod mailchimp;
pub mod sendgrid;
pub mod zapier;

use std::{collections::BTreeMap, num::NonZeroU32, sync::Arc, time::Duration};

use async_trait::async_trait;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use url::Url;

use crate::domain::{
    catalogue::{CATALOGUE, ProviderId, RateLimit},
    contact::Contact,
    credentials::Credentials,
    sync_job::RecordFailure,
};

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
}

/// What one pushed batch came back with.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PushReport {
    /// Contacts the provider refused (exact count).
    pub failed: u64,
    /// Details of the refused contacts, as far as the provider names them.
    pub failures: Vec<RecordFailure>,
}

/// A provider account that contacts can be pushed to.
#[async_trait]
pub trait ContactSink: Send + Sync {
    /// One cheap call proving the credentials (and settings) work.
    async fn verify(&self) -> Result<(), ProviderError>;

    /// Pushes one batch (at most the catalogue's batch size, every contact with an email for
    /// email-keyed providers). Per-record refusals are in the report, not an error.
    async fn push(&self, contacts: &[&Contact]) -> Result<PushReport, ProviderError>;
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
}

/// Request budgets, one limiter per provider keyed by account.
pub struct RateLimits {
    limits: BTreeMap<ProviderId, (RateLimit, DefaultKeyedRateLimiter<String>)>,
}

impl RateLimits {
    /// The catalogue's limits, with `overrides` replacing some.
    pub fn new(overrides: &BTreeMap<ProviderId, RateLimit>) -> Self {
        let limits = CATALOGUE
            .iter()
            .map(|spec| {
                let limit = overrides.get(&spec.id).copied().unwrap_or(spec.rate_limit);
                (spec.id, (limit, RateLimiter::keyed(quota(limit))))
            })
            .collect();
        Self { limits }
    }

    /// The budget the service keeps under for `provider`.
    pub fn limit(&self, provider: ProviderId) -> RateLimit {
        self.limits
            .get(&provider)
            .map(|(limit, _)| *limit)
            .unwrap_or(provider.spec().rate_limit)
    }
}

/// A quota that keeps under `limit` in ANY window of its length even when network jitter
/// bunches two requests together: requests are spaced evenly (no burst) so that a window holds
/// at least one request fewer than the budget (5 % fewer for large budgets), and a budget of one
/// request is spaced 5 % wider than its window.
pub fn quota(limit: RateLimit) -> Quota {
    let requests = limit.requests.max(1);
    let window_ns = u64::from(limit.per_seconds.max(1)) * 1_000_000_000;
    let usable = u64::from((requests - requests.div_ceil(20)).max(1));
    // Rounded up, so that rounding can never fit one more request into a window.
    let period_ns = window_ns
        .div_ceil(usable)
        .max((window_ns * 21).div_ceil(20 * u64::from(requests)));
    Quota::with_period(Duration::from_nanos(period_ns.max(1_000)))
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
}

/// Waits for the rate limiter of one provider account before each request.
#[derive(Clone)]
pub struct Throttle {
    limits: Arc<RateLimits>,
    provider: ProviderId,
    account: String,
}

impl Throttle {
    pub fn new(limits: Arc<RateLimits>, provider: ProviderId, account: String) -> Self {
        Self {
            limits,
            provider,
            account,
        }
    }

    pub async fn wait(&self) {
        if let Some((_, limiter)) = self.limits.limits.get(&self.provider) {
            limiter.until_key_ready(&self.account).await;
        }
    }
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

    /// A client for one account. `account` keys the rate limiter (one per user and provider).
    pub fn sink(
        &self,
        provider: ProviderId,
        account: &str,
        credentials: &Credentials,
        settings: &BTreeMap<String, String>,
    ) -> Result<Box<dyn ContactSink>, ProviderError> {
        let client = http::Client::new(
            self.http.clone(),
            Throttle::new(Arc::clone(&self.limits), provider, account.to_string()),
            provider,
            credentials.clone(),
        );
        match provider {
            ProviderId::Hubspot => Ok(Box::new(hubspot::Hubspot::new(
                client,
                &self.endpoints.hubspot_api_base,
                credentials,
            )?)),
            ProviderId::Mailchimp => Ok(Box::new(mailchimp::Mailchimp::new(
                client,
                &self.endpoints.mailchimp_api_base,
                credentials,
                settings,
            )?)),
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
            ProviderId::Salesforce
            | ProviderId::ZohoCrm
            | ProviderId::GoogleDrive
            | ProviderId::Dropbox => Err(ProviderError::Rejected(format!(
                "{provider} connections are not available in this version yet"
            ))),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_keep_a_request_of_margin_in_any_window() {
        for (requests, per_seconds) in [(100, 10), (10, 1), (1, 1), (5, 1), (20, 1), (190, 10)] {
            let limit = RateLimit {
                requests,
                per_seconds,
            };
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
}
