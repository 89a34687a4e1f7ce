//! Verifies `Stripe-Signature` over the exact bytes received.
//!
//! Header: `t=<unix seconds>,v1=<hex>[,v1=<hex>...]`. Expected: hex(HMAC-SHA256(secret,
//! "<t>.<body>")). Accepted when ANY `v1` matches ANY configured secret (Stripe sends several
//! `v1` while a secret is rotated), compared in constant time, with `t` within the tolerance.
//! Verification material comes only from configuration, never from the request.

use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

use super::WebhookRejection;

/// Stripe's own libraries use five minutes.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// A header longer than this is not Stripe's (it sends a few signatures of 64 hex characters).
const MAX_HEADER_LEN: usize = 4096;
/// More `v1` values than this are not Stripe's either.
const MAX_SIGNATURES: usize = 16;

/// The configured signing secrets and tolerance.
pub struct SignatureVerifier {
    secrets: Vec<SecretString>,
    tolerance: Duration,
}

impl SignatureVerifier {
    pub fn new(secrets: Vec<SecretString>, tolerance: Duration) -> Self {
        Self { secrets, tolerance }
    }

    /// Checks `header` against `body` at `now` (unix seconds).
    pub fn verify(
        &self,
        header: Option<&str>,
        body: &[u8],
        now: i64,
    ) -> Result<(), WebhookRejection> {
        let header = header.ok_or(WebhookRejection::MissingSignature)?;
        let parsed = parse_header(header)?;
        let age = now.abs_diff(parsed.timestamp);
        if age > self.tolerance.as_secs() {
            return Err(WebhookRejection::StaleTimestamp);
        }
        for secret in &self.secrets {
            let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.expose_secret().as_bytes())
            else {
                continue;
            };
            mac.update(parsed.timestamp.to_string().as_bytes());
            mac.update(b".");
            mac.update(body);
            // `verify_slice` compares in constant time.
            if parsed
                .signatures
                .iter()
                .any(|sig| mac.clone().verify_slice(sig).is_ok())
            {
                return Ok(());
            }
        }
        Err(WebhookRejection::BadSignature)
    }
}

struct ParsedHeader {
    timestamp: i64,
    signatures: Vec<Vec<u8>>,
}

fn parse_header(header: &str) -> Result<ParsedHeader, WebhookRejection> {
    if header.len() > MAX_HEADER_LEN {
        return Err(WebhookRejection::MalformedSignature);
    }
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        let Some((key, value)) = part.trim().split_once('=') else {
            continue;
        };
        match key {
            "t" => {
                if timestamp.is_some() {
                    return Err(WebhookRejection::MalformedSignature);
                }
                let t = value
                    .parse::<i64>()
                    .map_err(|_| WebhookRejection::MalformedSignature)?;
                timestamp = Some(t);
            }
            // Not hex, or not 32 bytes: cannot match, skip it (others may).
            "v1" => {
                if let Ok(sig) = hex::decode(value)
                    && sig.len() == 32
                {
                    signatures.push(sig);
                }
            }
            _ => {}
        }
    }
    if signatures.len() > MAX_SIGNATURES {
        return Err(WebhookRejection::MalformedSignature);
    }
    let timestamp = timestamp.ok_or(WebhookRejection::MalformedSignature)?;
    if signatures.is_empty() {
        return Err(WebhookRejection::BadSignature);
    }
    Ok(ParsedHeader {
        timestamp,
        signatures,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn sign(secret: &str, t: i64, body: &[u8]) -> String {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        mac.update(format!("{t}.").as_bytes());
        mac.update(body);
        hex::encode(mac.finalize().into_bytes())
    }

    fn verifier(secrets: &[&str]) -> SignatureVerifier {
        SignatureVerifier::new(
            secrets
                .iter()
                .map(|s| SecretString::from(s.to_string()))
                .collect(),
            DEFAULT_TOLERANCE,
        )
    }

    #[test]
    fn accepts_a_valid_signature() {
        let body = br#"{"id":"evt_1"}"#;
        let header = format!("t={NOW},v1={}", sign("whsec_a", NOW, body));
        assert_eq!(
            verifier(&["whsec_a"]).verify(Some(&header), body, NOW),
            Ok(())
        );
    }

    #[test]
    fn any_v1_against_any_secret() {
        let body = b"{}";
        let header = format!(
            "t={NOW},v1={},v1={},v0=abc",
            sign("whsec_old", NOW, body),
            sign("whsec_new", NOW, body)
        );
        assert_eq!(
            verifier(&["whsec_new"]).verify(Some(&header), body, NOW),
            Ok(())
        );
        assert_eq!(
            verifier(&["whsec_x", "whsec_old"]).verify(Some(&header), body, NOW),
            Ok(())
        );
    }

    #[test]
    fn rejects_tampering_wrong_secret_and_stale_timestamps() {
        let body = b"{\"amount\":100}";
        let header = format!("t={NOW},v1={}", sign("whsec_a", NOW, body));
        let v = verifier(&["whsec_a"]);
        assert_eq!(
            v.verify(Some(&header), b"{\"amount\":999}", NOW),
            Err(WebhookRejection::BadSignature)
        );
        assert_eq!(
            verifier(&["whsec_b"]).verify(Some(&header), body, NOW),
            Err(WebhookRejection::BadSignature)
        );
        assert_eq!(
            v.verify(Some(&header), body, NOW + 301),
            Err(WebhookRejection::StaleTimestamp)
        );
        assert_eq!(
            v.verify(Some(&header), body, NOW - 301),
            Err(WebhookRejection::StaleTimestamp)
        );
        assert_eq!(v.verify(Some(&header), body, NOW + 300), Ok(()));
    }

    #[test]
    fn rejects_missing_and_malformed_headers() {
        let v = verifier(&["whsec_a"]);
        assert_eq!(
            v.verify(None, b"{}", NOW),
            Err(WebhookRejection::MissingSignature)
        );
        for header in [
            "",
            "v1=00",
            "t=abc,v1=00",
            &format!("t={NOW},t={NOW},v1=00"),
        ] {
            assert_eq!(
                v.verify(Some(header), b"{}", NOW),
                Err(WebhookRejection::MalformedSignature),
                "{header}"
            );
        }
        assert_eq!(
            v.verify(Some(&format!("t={NOW},v1=zz")), b"{}", NOW),
            Err(WebhookRejection::BadSignature)
        );
    }
}
