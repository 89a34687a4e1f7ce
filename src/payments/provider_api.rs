//! The JSON-over-HTTPS client PayPal and Daraja share: a bearer token from
//! [`AccessToken`], one forced refresh and one retry on 401, a timeout per request, every call
//! counted in `payment_requests_total{provider,endpoint,outcome}`, and answers sorted into
//! [`PaymentError`]s (429 and 5xx temporary, other 4xx refused, 404 not found). Error messages
//! carry the provider's error name and message, never a credential.

use std::{future::Future, time::Duration};

use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use url::Url;

use super::{
    PaymentError,
    access_token::{AccessToken, Issued},
};

/// Per-request timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) struct ProviderApi {
    pub http: reqwest::Client,
    pub base: Url,
    pub provider: &'static str,
    pub token: AccessToken,
    /// The provider's clock, from its answers' `Date`.
    pub clock: super::provider_clock::ProviderClock,
}

/// One answer, whatever its status.
pub(super) struct Answer {
    pub status: StatusCode,
    pub body: Value,
}

impl Answer {
    /// The body of a 2xx answer, else the error it stands for.
    pub fn ok(self) -> Result<Value, PaymentError> {
        if self.status.is_success() {
            return Ok(self.body);
        }
        let name = ["name", "error", "errorCode"]
            .iter()
            .find_map(|k| self.body.get(k).and_then(Value::as_str))
            .unwrap_or("");
        let message = ["message", "error_description", "errorMessage"]
            .iter()
            .find_map(|k| self.body.get(k).and_then(Value::as_str))
            .unwrap_or("");
        let detail = self
            .body
            .pointer("/details/0/issue")
            .and_then(Value::as_str)
            .map(|d| format!(" ({d})"))
            .unwrap_or_default();
        let text = format!("{} {name}: {message}{detail}", self.status.as_u16());
        Err(match self.status {
            StatusCode::NOT_FOUND => PaymentError::NotFound(text),
            StatusCode::TOO_MANY_REQUESTS => PaymentError::Unavailable(text),
            s if s.is_server_error() => PaymentError::Unavailable(text),
            _ => PaymentError::Rejected(text),
        })
    }
}

/// A request: method, path under the base, JSON body, extra headers.
pub(super) struct Call<'a> {
    pub method: Method,
    pub path: &'a str,
    pub endpoint: &'static str,
    pub body: Option<String>,
    pub headers: Vec<(&'static str, String)>,
}

impl ProviderApi {
    pub fn new(base: &Url, provider: &'static str) -> Result<Self, PaymentError> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| {
                PaymentError::NotAvailable(format!("cannot build the HTTP client: {e}"))
            })?;
        Ok(Self {
            http,
            base: base.clone(),
            provider,
            token: AccessToken::default(),
            clock: Default::default(),
        })
    }

    pub fn url(&self, path: &str) -> Result<Url, PaymentError> {
        self.base
            .join(path.trim_start_matches('/'))
            .map_err(|e| PaymentError::Malformed(format!("bad request path: {e}")))
    }

    /// Sends `call` with the current token; on 401 fetches a new token and sends it once more.
    pub async fn send<F, Fut>(&self, call: Call<'_>, fetch_token: F) -> Result<Answer, PaymentError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Issued, PaymentError>>,
    {
        let token = self.token.get(&fetch_token).await?;
        let answer = self.send_once(&call, &token).await?;
        if answer.status != StatusCode::UNAUTHORIZED {
            return Ok(answer);
        }
        tracing::info!(
            provider = self.provider,
            "access token refused; fetching a new one"
        );
        self.token.reject(&token).await;
        let token = self.token.get(&fetch_token).await?;
        self.send_once(&call, &token).await
    }

    async fn send_once(
        &self,
        call: &Call<'_>,
        token: &SecretString,
    ) -> Result<Answer, PaymentError> {
        let mut request = self
            .http
            .request(call.method.clone(), self.url(call.path)?)
            .bearer_auth(token.expose_secret())
            .header("accept", "application/json");
        for (name, value) in &call.headers {
            request = request.header(*name, value);
        }
        if let Some(body) = &call.body {
            request = request
                .header("content-type", "application/json")
                .body(body.clone());
        }
        self.finish(call.endpoint, request.send().await).await
    }

    /// Reads an answer (or a transport failure) and counts it.
    pub async fn finish(
        &self,
        endpoint: &'static str,
        sent: Result<reqwest::Response, reqwest::Error>,
    ) -> Result<Answer, PaymentError> {
        let outcome = |label: &'static str| {
            metrics::counter!("payment_requests_total", "provider" => self.provider,
                "endpoint" => endpoint, "outcome" => label)
            .increment(1);
        };
        let response = match sent {
            Ok(response) => response,
            Err(e) => {
                outcome(if e.is_timeout() { "timeout" } else { "error" });
                let what = if e.is_timeout() {
                    "timed out"
                } else {
                    "could not be reached"
                };
                return Err(PaymentError::Unavailable(format!(
                    "{} {what}",
                    self.provider
                )));
            }
        };
        self.clock.observe(
            response.headers().get(http::header::DATE),
            chrono::Utc::now(),
        );
        let status = response.status();
        outcome(match status.as_u16() {
            200..=299 => "ok",
            429 => "429",
            500..=599 => "5xx",
            _ => "4xx",
        });
        let bytes = response.bytes().await.map_err(|_| {
            PaymentError::Unavailable(format!("{} answer was cut off", self.provider))
        })?;
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            match serde_json::from_slice(&bytes) {
                Ok(body) => body,
                Err(_) if !status.is_success() => Value::Null,
                Err(_) => {
                    return Err(PaymentError::Malformed(format!(
                        "{} answered {} with a body that is not JSON",
                        self.provider,
                        status.as_u16()
                    )));
                }
            }
        };
        Ok(Answer { status, body })
    }
}
