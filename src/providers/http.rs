//! What every provider client shares: throttled sending, and reading a failed response into a
//! [`ProviderError`] (rate limits with their wait, bad credentials, permanent refusals, outages).

use std::time::Duration;

use chrono::Utc;
use reqwest::{RequestBuilder, Response, StatusCode, header::HeaderMap};

use super::{ProviderError, Throttle};
use crate::domain::{catalogue::ProviderId, credentials::Credentials};

/// Longest provider message kept (they can be pages of HTML).
const MAX_REASON_CHARS: usize = 300;

/// An HTTP client for one provider account.
pub(super) struct Client {
    pub http: reqwest::Client,
    throttle: Throttle,
    provider: ProviderId,
    credentials: Credentials,
}

impl Client {
    pub fn new(
        http: reqwest::Client,
        throttle: Throttle,
        provider: ProviderId,
        credentials: Credentials,
    ) -> Self {
        Self {
            http,
            throttle,
            provider,
            credentials,
        }
    }

    /// Waits for the rate limiter, sends, and turns any non-2xx answer into an error.
    pub async fn send(&self, request: RequestBuilder) -> Result<Response, ProviderError> {
        let response = self.send_raw(request).await?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(self.failure(response).await)
    }

    /// A non-2xx answer as an error.
    pub async fn failure(&self, response: Response) -> ProviderError {
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.text().await.unwrap_or_default();
        self.classify(status, &headers, &body)
    }

    /// Waits for the rate limiter and sends; every answer comes back, whatever its status (a
    /// resumable upload's 308, Dropbox's 409 naming the offset it holds). Only a request that
    /// got no answer is an error.
    pub async fn send_raw(&self, request: RequestBuilder) -> Result<Response, ProviderError> {
        self.throttle.wait().await;
        let result = request.send().await;
        let provider = self.provider.as_str();
        let response = match result {
            Ok(response) => response,
            Err(e) => {
                metrics::counter!("provider_requests_total", "provider" => provider, "status" => "error")
                    .increment(1);
                // Without the URL: a Zapier hook URL is itself the secret.
                let e = e.without_url();
                let what = if e.is_timeout() {
                    "timed out"
                } else if e.is_connect() {
                    "could not be reached"
                } else {
                    "failed"
                };
                return Err(ProviderError::Unavailable(format!(
                    "the request to {} {what}",
                    self.provider
                )));
            }
        };
        let status = response.status();
        metrics::counter!("provider_requests_total", "provider" => provider, "status" => status.as_u16().to_string())
            .increment(1);
        Ok(response)
    }

    /// Reads a JSON body, calling a malformed one an outage (worth retrying).
    pub async fn json<T: serde::de::DeserializeOwned>(
        &self,
        response: Response,
    ) -> Result<T, ProviderError> {
        let bytes = response.bytes().await.map_err(|_| {
            ProviderError::Unavailable(format!("{} sent an incomplete answer", self.provider))
        })?;
        serde_json::from_slice(&bytes).map_err(|e| {
            ProviderError::Unavailable(format!(
                "{} sent an answer this service cannot read ({e})",
                self.provider
            ))
        })
    }

    fn classify(&self, status: StatusCode, headers: &HeaderMap, body: &str) -> ProviderError {
        let reason = self.reason(status, body);
        let lower = body.to_ascii_lowercase();
        let (says_rate_limited, says_daily) = rate_limit_words(&lower);
        match status.as_u16() {
            429 => ProviderError::RateLimited {
                retry_after: retry_after(headers),
                daily: says_daily,
            },
            // Google Drive's full storage is not a rate limit (parking for the daily reset does
            // not free space) and not a broken connection (ERROR would stop the sync that works
            // once the user frees space): a failure the job's retries and the next sync try again.
            403 if lower.contains("storagequotaexceeded") => ProviderError::Unavailable(format!(
                "{}'s storage is full; free some space, then sync again: {reason}",
                self.provider
            )),
            401 | 403 if says_rate_limited => ProviderError::RateLimited {
                retry_after: retry_after(headers),
                daily: says_daily,
            },
            401 | 403 => ProviderError::Unauthorized(format!(
                "{} refused the credentials: {reason}",
                self.provider
            )),
            408 | 500..=599 => {
                ProviderError::Unavailable(format!("{} is unavailable: {reason}", self.provider))
            }
            400 | 413 | 422 => ProviderError::BatchRefused(format!(
                "{} refused the request: {reason}",
                self.provider
            )),
            _ => {
                ProviderError::Rejected(format!("{} refused the request: {reason}", self.provider))
            }
        }
    }

    /// The provider's own words for a failure, scrubbed of credentials and shortened.
    pub fn reason(&self, status: StatusCode, body: &str) -> String {
        let text = serde_json::from_str::<serde_json::Value>(body)
            .ok()
            .and_then(|json| message_of(&json))
            .unwrap_or_else(|| format!("HTTP {}", status.as_u16()));
        let mut text = self.credentials.scrub(&text);
        if text.chars().count() > MAX_REASON_CHARS {
            text = text.chars().take(MAX_REASON_CHARS).collect::<String>() + "...";
        }
        text
    }

    pub fn scrub(&self, text: &str) -> String {
        self.credentials.scrub(text)
    }
}

/// Whether a (lower-cased) error body speaks of a rate limit, and of a daily one. Google
/// answers quota errors with 403 and a reason such as `userRateLimitExceeded`,
/// `rateLimitExceeded`, `quotaExceeded` or `dailyLimitExceeded`; Salesforce with 403
/// `REQUEST_LIMIT_EXCEEDED` (a rolling day).
fn rate_limit_words(lower: &str) -> (bool, bool) {
    let words = [
        "ratelimit",
        "rate_limit",
        "rate limit",
        "request_limit_exceeded",
        "quotaexceeded",
        "dailylimitexceeded",
        "limitexceeded",
    ];
    let limited = words.iter().any(|w| lower.contains(w));
    let daily = lower.contains("daily")
        || lower.contains("request_limit_exceeded")
        || lower.contains("quotaexceeded");
    (limited, daily)
}

/// The human message in the error shapes the providers use.
fn message_of(json: &serde_json::Value) -> Option<String> {
    for key in ["message", "detail", "error_description", "title"] {
        if let Some(text) = json.get(key).and_then(|v| v.as_str()) {
            return Some(text.to_string());
        }
    }
    if let Some(first) = json.get("errors").and_then(|e| e.get(0)) {
        return message_of(first);
    }
    json.get("error").and_then(|v| match v {
        serde_json::Value::String(s) => Some(s.clone()),
        other => message_of(other),
    })
}

/// How long the provider asked us to wait: `Retry-After` (seconds or an HTTP date), else a
/// rate-limit reset header (epoch seconds, or seconds from now when small). Every value is
/// read saturating and clamped to [0, MAX_PROVIDER_WAIT]: a gigantic, negative, fractional
/// or non-numeric value can never panic or overflow (`inf` and `NaN` are ignored).
pub(super) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(value) = header("retry-after") {
        if let Ok(secs) = value.parse::<f64>() {
            return seconds(secs);
        }
        if let Ok(at) = chrono::DateTime::parse_from_rfc2822(value) {
            let secs = at.with_timezone(&Utc).timestamp() as f64 - Utc::now().timestamp() as f64;
            return seconds(secs.max(0.0));
        }
    }
    for name in ["x-ratelimit-reset", "ratelimit-reset"] {
        if let Some(value) = header(name).and_then(|v| v.parse::<f64>().ok()) {
            // Epoch seconds are far larger than any "seconds from now" value.
            let secs = if value > 1_000_000_000.0 {
                value - Utc::now().timestamp() as f64
            } else {
                value
            };
            return seconds(secs.max(0.0));
        }
    }
    None
}

/// A wait of `secs` seconds, clamped to [0, MAX_PROVIDER_WAIT]; `None` for NaN, infinities
/// and negative values.
fn seconds(secs: f64) -> Option<Duration> {
    (secs.is_finite() && secs >= 0.0)
        .then(|| Duration::from_secs_f64(secs.min(super::MAX_PROVIDER_WAIT.as_secs_f64())))
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    #[test]
    fn retry_after_reads_seconds_dates_and_reset_epochs() {
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));

        let mut headers = HeaderMap::new();
        let reset = (Utc::now().timestamp() + 30).to_string();
        headers.insert(
            "x-ratelimit-reset",
            HeaderValue::from_str(&reset).unwrap_or_else(|_| HeaderValue::from_static("0")),
        );
        let wait = retry_after(&headers).unwrap_or_default();
        assert!(
            (Duration::from_secs(28)..=Duration::from_secs(30)).contains(&wait),
            "{wait:?}"
        );

        let mut headers = HeaderMap::new();
        let date = (Utc::now() + chrono::Duration::seconds(60)).to_rfc2822();
        headers.insert(
            "retry-after",
            HeaderValue::from_str(&date).unwrap_or_else(|_| HeaderValue::from_static("0")),
        );
        let wait = retry_after(&headers).unwrap_or_default();
        assert!(
            (Duration::from_secs(58)..=Duration::from_secs(60)).contains(&wait),
            "{wait:?}"
        );

        assert_eq!(retry_after(&HeaderMap::new()), None);
    }

    #[test]
    fn google_quota_403s_are_rate_limits_not_bad_credentials() {
        let body = |reason: &str| {
            format!(
                r#"{{"error":{{"code":403,"message":"Quota exceeded","errors":[{{"domain":"usageLimits","reason":"{reason}"}}]}}}}"#
            )
            .to_ascii_lowercase()
        };
        assert_eq!(
            rate_limit_words(&body("userRateLimitExceeded")),
            (true, false)
        );
        assert_eq!(rate_limit_words(&body("rateLimitExceeded")), (true, false));
        assert_eq!(rate_limit_words(&body("dailyLimitExceeded")), (true, true));
        assert_eq!(rate_limit_words(&body("quotaExceeded")), (true, true));
        // Issue 26, item 8: a full Drive was read as a daily limit and parked the job ~10 days.
        let client = Client::new(
            reqwest::Client::new(),
            super::super::Throttle::new(
                std::sync::Arc::new(super::super::rate_limit::RateLimits::new(
                    &Default::default(),
                )),
                ProviderId::GoogleDrive,
                "ada".into(),
            ),
            ProviderId::GoogleDrive,
            crate::domain::credentials::Credentials::new(Default::default()),
        );
        let full = r#"{"error":{"code":403,"message":"The user's Drive storage quota has been exceeded.","errors":[{"domain":"usageLimits","reason":"storageQuotaExceeded"}]}}"#;
        assert!(
            matches!(
                client.classify(StatusCode::FORBIDDEN, &HeaderMap::new(), full),
                ProviderError::Unavailable(_)
            ),
            "a full Drive fails the attempt: not parked for days, not a broken connection"
        );
        let denied = r#"{"error":{"code":403,"message":"The user does not have sufficient permissions","errors":[{"reason":"insufficientPermissions"}]}}"#;
        assert_eq!(
            rate_limit_words(&denied.to_ascii_lowercase()),
            (false, false)
        );
    }

    #[test]
    fn hostile_waits_are_clamped_never_panicking() {
        let max = super::super::MAX_PROVIDER_WAIT;
        for (name, value, want) in [
            ("retry-after", "99999999999999999999", Some(max)),
            ("retry-after", "1e308", Some(max)),
            ("retry-after", "inf", None),
            ("retry-after", "NaN", None),
            ("retry-after", "-5", None),
            ("retry-after", "0.5", Some(Duration::from_millis(500))),
            ("retry-after", "soon", None),
            ("retry-after", "Fri, 31 Dec 9999 23:59:59 GMT", Some(max)),
            (
                "retry-after",
                "Thu, 01 Jan 1970 00:00:00 GMT",
                Some(Duration::ZERO),
            ),
            ("x-ratelimit-reset", "99999999999999999999999", Some(max)),
            ("x-ratelimit-reset", "-1", Some(Duration::ZERO)),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(name, HeaderValue::from_static(value));
            assert_eq!(retry_after(&headers), want, "{name}: {value}");
        }
    }

    #[test]
    fn messages_are_found_in_each_providers_error_shape() {
        let cases = [
            (
                r#"{"status":"error","message":"Authentication credentials not found"}"#,
                "Authentication credentials not found",
            ),
            (
                r#"{"type":"x","title":"API Key Invalid","status":401,"detail":"Your API key may be invalid"}"#,
                "Your API key may be invalid",
            ),
            (
                r#"{"errors":[{"field":null,"message":"authorization required"}]}"#,
                "authorization required",
            ),
        ];
        for (body, want) in cases {
            let json: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
            assert_eq!(message_of(&json).as_deref(), Some(want));
        }
    }
}
