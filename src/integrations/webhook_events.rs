//! Reading provider webhook deliveries: HubSpot's signature (v3) and event arrays, Mailchimp's
//! forms and Zoho's notifications, each turned into the events the inbox keeps. Pure functions:
//! no I/O here. What is kept never holds a secret (Zoho's token stays out of it).

use std::collections::BTreeMap;

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// HubSpot refuses to be believed about requests older than this.
pub const HUBSPOT_MAX_AGE_MS: i64 = 5 * 60 * 1000;

/// Most events one delivery may carry (HubSpot sends at most 100; this leaves room).
pub const MAX_EVENTS: usize = 1000;

/// Why a delivery is refused (400, nothing stored).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("missing X-HubSpot-Signature-v3 or X-HubSpot-Request-Timestamp")]
    Unsigned,
    #[error("the request timestamp is more than 5 minutes away")]
    Stale,
    #[error("the signature does not match")]
    BadSignature,
    #[error("unreadable delivery: {0}")]
    Unreadable(String),
}

/// SHA-256 of `bytes`, hex: how secrets are looked up and deliveries told apart.
pub fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Checks HubSpot's v3 signature: base64(HMAC-SHA256(secret, method + uri + body +
/// timestamp)), compared in constant time, the timestamp (ms) within 5 minutes of `now_ms`.
/// `uri` is the full URL HubSpot called (the public base URL and the request's path and query).
pub fn verify_hubspot(
    secret: &[u8],
    method: &str,
    uri: &str,
    body: &[u8],
    signature: Option<&str>,
    timestamp: Option<&str>,
    now_ms: i64,
) -> Result<(), Refusal> {
    let (Some(signature), Some(timestamp)) = (signature, timestamp) else {
        return Err(Refusal::Unsigned);
    };
    let stamp: i64 = timestamp.trim().parse().map_err(|_| Refusal::Unsigned)?;
    if (now_ms - stamp).abs() > HUBSPOT_MAX_AGE_MS {
        return Err(Refusal::Stale);
    }
    let expected = base64::engine::general_purpose::STANDARD
        .decode(signature.trim())
        .map_err(|_| Refusal::BadSignature)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| Refusal::BadSignature)?;
    mac.update(method.as_bytes());
    mac.update(uri.as_bytes());
    mac.update(body);
    mac.update(timestamp.trim().as_bytes());
    mac.verify_slice(&expected)
        .map_err(|_| Refusal::BadSignature)
}

/// One HubSpot event of a delivery.
#[derive(Debug, Clone, Deserialize)]
pub struct HubspotEvent {
    #[serde(rename = "eventId")]
    pub event_id: serde_json::Value,
    #[serde(rename = "portalId")]
    pub portal_id: serde_json::Value,
    #[serde(rename = "subscriptionType", default)]
    pub subscription_type: String,
    #[serde(rename = "objectId", default)]
    pub object_id: serde_json::Value,
}

/// What the inbox keeps of an event: its kind and the ids or the member it names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptEvent {
    /// Provider record ids whose current state is to be read (HubSpot, Zoho).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ids: Vec<String>,
    /// The member a Mailchimp event carries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
}

/// A JSON id (HubSpot sends numbers) as text; `None` when it is neither a number nor text.
fn id_text(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::String(s) if !s.trim().is_empty() && s.len() <= 64 => {
            Some(s.trim().to_string())
        }
        _ => None,
    }
}

/// A HubSpot delivery's contact events, as (portal, event id, kind, kept event). Events of
/// other objects are left out.
pub fn hubspot_events(body: &[u8]) -> Result<Vec<(String, String, String, KeptEvent)>, Refusal> {
    let events: Vec<HubspotEvent> =
        serde_json::from_slice(body).map_err(|e| Refusal::Unreadable(e.to_string()))?;
    if events.len() > MAX_EVENTS {
        return Err(Refusal::Unreadable(format!(
            "more than {MAX_EVENTS} events in one delivery"
        )));
    }
    let mut out = Vec::new();
    for event in events {
        if !matches!(
            event.subscription_type.as_str(),
            "contact.creation" | "contact.propertyChange" | "contact.deletion"
        ) {
            continue;
        }
        let (Some(portal), Some(id), Some(object)) = (
            id_text(&event.portal_id),
            id_text(&event.event_id),
            id_text(&event.object_id),
        ) else {
            return Err(Refusal::Unreadable(
                "an event has no portalId, eventId or objectId".into(),
            ));
        };
        out.push((
            portal,
            id,
            event.subscription_type,
            KeptEvent {
                ids: vec![object],
                ..KeptEvent::default()
            },
        ));
    }
    Ok(out)
}

/// A Mailchimp delivery (a form: `type`, `data[email]`, `data[merges][FNAME]`...), as its kind
/// and kept event. Types other than the member ones are `None` (acknowledged, not kept).
pub fn mailchimp_event(body: &[u8]) -> Result<Option<(String, KeptEvent)>, Refusal> {
    let form: BTreeMap<String, String> = url::form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let kind = form
        .get("type")
        .ok_or_else(|| Refusal::Unreadable("no type".into()))?
        .clone();
    let field = |key: &str| {
        form.get(key)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let event = match kind.as_str() {
        "subscribe" | "unsubscribe" | "profile" | "cleaned" => KeptEvent {
            email: field("data[email]"),
            first_name: field("data[merges][FNAME]"),
            last_name: field("data[merges][LNAME]"),
            phone: field("data[merges][PHONE]"),
            ..KeptEvent::default()
        },
        "upemail" => KeptEvent {
            email: field("data[new_email]"),
            old_email: field("data[old_email]"),
            ..KeptEvent::default()
        },
        _ => return Ok(None),
    };
    if event.email.is_none() {
        return Err(Refusal::Unreadable("no member address".into()));
    }
    Ok(Some((kind, event)))
}

/// A Zoho notification: which channel, the token it echoes, and the kept event.
#[derive(Debug, Clone)]
pub struct ZohoNotification {
    pub channel_id: String,
    pub token: String,
    pub operation: String,
    pub event: KeptEvent,
}

#[derive(Deserialize)]
struct ZohoBody {
    #[serde(default)]
    channel_id: serde_json::Value,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    operation: String,
    #[serde(default)]
    module: String,
    #[serde(default)]
    ids: Vec<serde_json::Value>,
}

pub fn zoho_notification(body: &[u8]) -> Result<ZohoNotification, Refusal> {
    let body: ZohoBody =
        serde_json::from_slice(body).map_err(|e| Refusal::Unreadable(e.to_string()))?;
    let channel_id = id_text(&body.channel_id).ok_or(Refusal::Unsigned)?;
    let token = body
        .token
        .filter(|t| !t.is_empty())
        .ok_or(Refusal::Unsigned)?;
    if body.ids.len() > MAX_EVENTS {
        return Err(Refusal::Unreadable("too many ids".into()));
    }
    let ids = if body.module.is_empty() || body.module == "Contacts" {
        body.ids.iter().filter_map(id_text).collect()
    } else {
        Vec::new()
    };
    Ok(ZohoNotification {
        channel_id,
        token,
        operation: body.operation,
        event: KeptEvent {
            ids,
            ..KeptEvent::default()
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &str, method: &str, uri: &str, body: &str, ts: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("key");
        mac.update(format!("{method}{uri}{body}{ts}").as_bytes());
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    }

    #[test]
    fn a_hubspot_signature_is_checked_over_method_uri_body_and_timestamp() {
        let (uri, body, now) = (
            "https://x.test/integrations/webhook/hubspot",
            "[]",
            1_000_000,
        );
        let ts = "999000";
        let good = sign("s3cret", "POST", uri, body, ts);
        let check = |sig: &str, ts: &str, uri: &str, body: &str| {
            verify_hubspot(
                b"s3cret",
                "POST",
                uri,
                body.as_bytes(),
                Some(sig),
                Some(ts),
                now,
            )
        };
        assert_eq!(check(&good, ts, uri, body), Ok(()));
        assert_eq!(check(&good, ts, uri, "[ ]"), Err(Refusal::BadSignature));
        assert_eq!(
            check(
                &good,
                ts,
                "https://y.test/integrations/webhook/hubspot",
                body
            ),
            Err(Refusal::BadSignature)
        );
        assert_eq!(
            check(&good, "999001", uri, body),
            Err(Refusal::BadSignature)
        );
        let old = (now - HUBSPOT_MAX_AGE_MS - 1).to_string();
        assert_eq!(
            check(&sign("s3cret", "POST", uri, body, &old), &old, uri, body),
            Err(Refusal::Stale)
        );
        assert_eq!(
            verify_hubspot(b"s3cret", "POST", uri, body.as_bytes(), None, Some(ts), now),
            Err(Refusal::Unsigned)
        );
    }

    #[test]
    fn hubspot_contact_events_are_kept_and_others_left_out() {
        let body = br#"[{"eventId":1,"portalId":62515,"subscriptionType":"contact.creation","objectId":123},
            {"eventId":2,"portalId":62515,"subscriptionType":"deal.creation","objectId":9}]"#;
        let events = hubspot_events(body).expect("read");
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].0, "62515");
        assert_eq!(events[0].1, "1");
        assert_eq!(events[0].3.ids, vec!["123".to_string()]);
        assert!(hubspot_events(b"{}").is_err());
    }

    #[test]
    fn a_mailchimp_form_is_read_and_needs_an_address() {
        let body = b"type=unsubscribe&fired_at=2009-03-26+21%3A40%3A57&data%5Bemail%5D=Ann%40x.test&data%5Bmerges%5D%5BFNAME%5D=Ann";
        let (kind, event) = mailchimp_event(body).expect("read").expect("kept");
        assert_eq!(kind, "unsubscribe");
        assert_eq!(event.email.as_deref(), Some("Ann@x.test"));
        assert_eq!(event.first_name.as_deref(), Some("Ann"));
        assert!(
            mailchimp_event(b"type=campaign&data%5Bid%5D=1")
                .expect("read")
                .is_none()
        );
        assert!(mailchimp_event(b"type=subscribe").is_err());
    }

    #[test]
    fn a_zoho_notification_needs_its_channel_and_token() {
        let body = br#"{"channel_id":"1000","token":"t","operation":"update","module":"Contacts","ids":["5","6"]}"#;
        let n = zoho_notification(body).expect("read");
        assert_eq!((n.channel_id.as_str(), n.token.as_str()), ("1000", "t"));
        assert_eq!(n.event.ids, vec!["5".to_string(), "6".to_string()]);
        let no_token = br#"{"channel_id":"1000","operation":"update","ids":["5"]}"#;
        assert!(matches!(
            zoho_notification(no_token),
            Err(Refusal::Unsigned)
        ));
    }
}
