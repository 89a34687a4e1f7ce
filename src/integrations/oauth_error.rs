//! What a failed OAuth call means: the error the rest of the service sees ([`OAuthError`]),
//! and how a token endpoint's answer reads as one (an outage is worth retrying; a refused grant
//! needs the user; anything else is a refusal).

use oauth2::{
    RequestTokenError,
    basic::{BasicErrorResponse, BasicErrorResponseType},
};

use crate::domain::catalogue::ProviderId;

/// Why an OAuth call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OAuthError {
    #[error("{0} is not configured (its client id and secret are not set)")]
    NotConfigured(ProviderId),
    /// The grant (code or refresh token) is no good: the user must connect again.
    #[error("{0}")]
    InvalidGrant(String),
    /// The authorization server refused for another reason (client, request).
    #[error("{0}")]
    Refused(String),
    /// Network failure or 5xx: worth retrying.
    #[error("{0}")]
    Unavailable(String),
}

/// A failure of the HTTP client the `oauth2` crate calls (see `oauth::Http`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct HttpError(pub(super) String);

/// What a failed token request means. Some servers (Zoho) answer errors with HTTP 200, which
/// the crate reports as an unreadable token response: their `error` field is read here.
pub(super) fn token_error(
    provider: ProviderId,
    error: RequestTokenError<HttpError, BasicErrorResponse>,
) -> OAuthError {
    match error {
        RequestTokenError::ServerResponse(response) => {
            let description = response
                .error_description()
                .map(|d| format!(": {d}"))
                .unwrap_or_default();
            match response.error() {
                BasicErrorResponseType::InvalidGrant => OAuthError::InvalidGrant(format!(
                    "{provider} no longer accepts this authorization (invalid_grant{description}); connect it again"
                )),
                other if is_outage(other.as_ref()) => OAuthError::Unavailable(format!(
                    "{provider} is unavailable ({}{description}); connect it again in a moment",
                    other.as_ref()
                )),
                other => OAuthError::Refused(format!(
                    "{provider} refused the token request ({}{description})",
                    other.as_ref()
                )),
            }
        }
        RequestTokenError::Request(e) => {
            OAuthError::Unavailable(format!("{provider} could not be reached ({e})"))
        }
        RequestTokenError::Parse(_, body) => {
            let code = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string));
            match code.as_deref() {
                Some("invalid_grant" | "invalid_code") => OAuthError::InvalidGrant(format!(
                    "{provider} no longer accepts this authorization ({}); connect it again",
                    code.unwrap_or_default()
                )),
                Some(code) if is_outage(code) => OAuthError::Unavailable(format!(
                    "{provider} is unavailable ({code}); connect it again in a moment"
                )),
                Some(code) => {
                    OAuthError::Refused(format!("{provider} refused the token request ({code})"))
                }
                None if body.starts_with(b"<") || body.is_empty() => OAuthError::Unavailable(
                    format!("{provider} sent an answer this service cannot read"),
                ),
                None => OAuthError::Refused(format!(
                    "{provider} sent a token answer this service cannot read"
                )),
            }
        }
        RequestTokenError::Other(e) => OAuthError::Unavailable(format!("{provider}: {e}")),
    }
}

/// The error codes with which an authorization server says the trouble is its own (RFC 6749
/// 4.1.2.1): worth trying again, not the caller's fault.
fn is_outage(code: &str) -> bool {
    matches!(code, "temporarily_unavailable" | "server_error")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A token endpoint in trouble (503 `temporarily_unavailable`, or 500 `server_error`) is an
    /// outage, not a refusal: CompleteOAuth used to answer INVALID_ARGUMENT to it.
    #[test]
    fn a_token_endpoint_outage_is_unavailable_not_a_refusal() {
        for code in ["temporarily_unavailable", "server_error"] {
            let response = BasicErrorResponse::new(
                BasicErrorResponseType::Extension(code.to_string()),
                None,
                None,
            );
            let error = token_error(
                ProviderId::GoogleDrive,
                RequestTokenError::ServerResponse(response),
            );
            assert!(
                matches!(error, OAuthError::Unavailable(_)),
                "{code}: {error:?}"
            );
        }
        let refused = BasicErrorResponse::new(BasicErrorResponseType::InvalidClient, None, None);
        let error = token_error(
            ProviderId::GoogleDrive,
            RequestTokenError::ServerResponse(refused),
        );
        assert!(matches!(error, OAuthError::Refused(_)), "{error:?}");
    }
}
