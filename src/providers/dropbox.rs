//! Dropbox: the contacts file uploaded with `POST /2/files/upload` on the content host,
//! `mode: overwrite`, to the integration's `path` setting. The arguments travel as JSON in the
//! `Dropbox-API-Arg` header, where every non-ASCII character must be `\uXXXX`-escaped.

use std::collections::BTreeMap;

use async_trait::async_trait;
use reqwest::header::CONTENT_TYPE;
use url::Url;

use super::{FileSink, ProviderError, http::Client, required};
use crate::domain::credentials::{Credentials, keys};

pub const DEFAULT_PATH: &str = "/Nexus Cards/contacts.csv";
/// Largest file `files/upload` takes (upload sessions beyond are not built).
pub const UPLOAD_LIMIT: usize = 150 * 1024 * 1024;

pub struct Dropbox {
    client: Client,
    content_base: Url,
    token: String,
    path: String,
}

impl Dropbox {
    pub(super) fn new(
        client: Client,
        content_base: &Url,
        credentials: &Credentials,
        settings: &BTreeMap<String, String>,
    ) -> Result<Self, ProviderError> {
        let path = settings
            .get("path")
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| DEFAULT_PATH.to_string());
        validate_path(&path)?;
        Ok(Self {
            token: required(credentials, keys::ACCESS_TOKEN)?.to_string(),
            client,
            content_base: content_base.clone(),
            path,
        })
    }
}

/// A Dropbox file path: absolute, not a folder, no empty or dot segments.
pub fn validate_path(path: &str) -> Result<(), ProviderError> {
    let bad = |reason: &str| ProviderError::InvalidInput {
        field: "path",
        reason: reason.into(),
    };
    if !path.starts_with('/') || path.ends_with('/') {
        return Err(bad(
            "must start with / and name a file, e.g. /Nexus Cards/contacts.csv",
        ));
    }
    if path[1..]
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err(bad("must not have empty, . or .. parts"));
    }
    if path.chars().any(char::is_control) || path.len() > 1000 {
        return Err(bad(
            "must be at most 1000 characters without control characters",
        ));
    }
    Ok(())
}

/// JSON with every non-ASCII character written as `\uXXXX` (UTF-16, surrogate pairs above
/// the Basic Multilingual Plane), as HTTP headers must be ASCII.
pub fn ascii_json(value: &serde_json::Value) -> String {
    let json = value.to_string();
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

#[async_trait]
impl FileSink for Dropbox {
    async fn upload(&self, csv: &[u8]) -> Result<(), ProviderError> {
        if csv.len() > UPLOAD_LIMIT {
            return Err(ProviderError::Rejected(format!(
                "the contacts file is larger than Dropbox's {} MB upload limit",
                UPLOAD_LIMIT / 1024 / 1024
            )));
        }
        let arg = ascii_json(&serde_json::json!({
            "path": self.path,
            "mode": "overwrite",
            "autorename": false,
            "mute": true,
        }));
        let url = format!(
            "{}/2/files/upload",
            self.content_base.as_str().trim_end_matches('/')
        );
        let request = self
            .client
            .http
            .post(url)
            .bearer_auth(&self.token)
            .header(CONTENT_TYPE, "application/octet-stream")
            .header("Dropbox-API-Arg", arg)
            .body(csv.to_vec());
        self.client.send(request).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_json_escapes_non_ascii() {
        let v = serde_json::json!({ "path": "/Zoë/😀.csv" });
        assert_eq!(ascii_json(&v), r#"{"path":"/Zo\u00eb/\ud83d\ude00.csv"}"#);
    }

    #[test]
    fn paths_must_name_a_file() {
        assert!(validate_path("/Nexus Cards/contacts.csv").is_ok());
        for bad in [
            "contacts.csv",
            "/folder/",
            "/a//b.csv",
            "/../x.csv",
            "/a\n.csv",
        ] {
            assert!(validate_path(bad).is_err(), "{bad}");
        }
    }
}
