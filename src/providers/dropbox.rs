//! Dropbox: the contacts file uploaded on the content host, `mode: overwrite`, to the
//! integration's `path` setting: a small file with `POST /2/files/upload`, a larger one through
//! an upload session (`upload_session/start`, `append_v2` per chunk, `finish` with the last one
//! and the commit). A chunk sent again after a lost answer is answered `409 incorrect_offset`
//! with the offset Dropbox holds, and only the rest is sent. The arguments travel as JSON in the
//! `Dropbox-API-Arg` header, where every non-ASCII character must be `\uXXXX`-escaped.

use std::collections::BTreeMap;

use async_trait::async_trait;
use bytes::Bytes;
use reqwest::header::CONTENT_TYPE;
use url::Url;

use super::{
    FileSink, ProviderError,
    file_sink::{Chunk, UploadProgress, UploadSession},
    http::Client,
    required,
};
use crate::domain::credentials::{Credentials, keys};

pub const DEFAULT_PATH: &str = "/Nexus Cards/contacts.csv";
/// Largest file `files/upload` takes in one request.
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

impl Dropbox {
    fn content_url(&self, route: &str) -> String {
        format!(
            "{}/2/files/{route}",
            self.content_base.as_str().trim_end_matches('/')
        )
    }

    /// What the commit does: overwrite the file at the path.
    fn commit(&self) -> serde_json::Value {
        serde_json::json!({
            "path": self.path,
            "mode": "overwrite",
            "autorename": false,
            "mute": true,
        })
    }

    /// A content-host call: `arg` in the header, `body` as the bytes.
    async fn call(
        &self,
        route: &str,
        arg: &serde_json::Value,
        body: Bytes,
    ) -> Result<reqwest::Response, ProviderError> {
        let request = self
            .client
            .http
            .post(self.content_url(route))
            .bearer_auth(&self.token)
            .header(CONTENT_TYPE, "application/octet-stream")
            .header("Dropbox-API-Arg", ascii_json(arg))
            .body(body);
        self.client.send_raw(request).await
    }
}

#[derive(serde::Deserialize)]
struct SessionStarted {
    session_id: String,
}

/// The offset Dropbox holds, from a `409 incorrect_offset` (on `append_v2` at `error`, on
/// `finish` under `error.lookup_failed`); `Err` with the error's tag otherwise.
fn held_offset(body: &serde_json::Value) -> Result<u64, String> {
    let error = &body["error"];
    let lookup = if error[".tag"] == "lookup_failed" {
        &error["lookup_failed"]
    } else {
        error
    };
    match (lookup[".tag"].as_str(), lookup["correct_offset"].as_u64()) {
        (Some("incorrect_offset"), Some(offset)) => Ok(offset),
        (tag, _) => Err(tag.unwrap_or("unknown").to_string()),
    }
}

#[async_trait]
impl FileSink for Dropbox {
    async fn start_upload(&self) -> Result<UploadSession, ProviderError> {
        let response = self
            .call(
                "upload_session/start",
                &serde_json::json!({ "close": false }),
                Bytes::new(),
            )
            .await?;
        if !response.status().is_success() {
            return Err(self.client.failure(response).await);
        }
        let started: SessionStarted = self.client.json(response).await?;
        Ok(UploadSession::new(started.session_id))
    }

    async fn send_chunk(
        &self,
        session: &UploadSession,
        chunk: &Chunk,
        last: bool,
    ) -> Result<(), ProviderError> {
        // Dropbox has no status call: a chunk sent again after a lost answer is refused with
        // the offset Dropbox holds, and the rest goes from there.
        loop {
            let progress = session.progress();
            if progress.complete || (!last && progress.offset == chunk.end()) {
                return Ok(());
            }
            let rest = session.rest_of(chunk, "Dropbox")?;
            let sent = rest.len() as u64;
            let cursor =
                serde_json::json!({ "session_id": session.id(), "offset": progress.offset });
            let (route, arg) = if last {
                (
                    "upload_session/finish",
                    serde_json::json!({ "cursor": cursor, "commit": self.commit() }),
                )
            } else {
                (
                    "upload_session/append_v2",
                    serde_json::json!({ "cursor": cursor, "close": false }),
                )
            };
            session.set(UploadProgress {
                unsure: true,
                ..progress
            });
            let response = self.call(route, &arg, rest).await?;
            match response.status().as_u16() {
                200 => {
                    session.set(UploadProgress {
                        offset: progress.offset + sent,
                        unsure: false,
                        complete: last,
                    });
                    return Ok(());
                }
                409 => {
                    let text = response.text().await.unwrap_or_default();
                    let body: serde_json::Value =
                        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
                    match held_offset(&body) {
                        Ok(held) if held != progress.offset => session.set(UploadProgress {
                            offset: held,
                            unsure: false,
                            complete: false,
                        }),
                        Ok(_) => {
                            return Err(ProviderError::Unavailable(format!(
                                "Dropbox refused the chunk at {} without moving",
                                progress.offset
                            )));
                        }
                        // Finished already (by a request whose answer was lost) or expired.
                        Err(tag) if tag == "not_found" || tag == "closed" => {
                            return Err(ProviderError::UploadLost(format!(
                                "Dropbox no longer has the upload session ({tag})"
                            )));
                        }
                        Err(tag) => {
                            return Err(ProviderError::Rejected(format!(
                                "Dropbox refused the upload: {tag}"
                            )));
                        }
                    }
                }
                _ => return Err(self.client.failure(response).await),
            }
        }
    }

    async fn upload(&self, csv: &[u8]) -> Result<(), ProviderError> {
        if csv.len() > UPLOAD_LIMIT {
            return Err(ProviderError::Rejected(format!(
                "the contacts file is larger than Dropbox's {} MB upload limit",
                UPLOAD_LIMIT / 1024 / 1024
            )));
        }
        let response = self
            .call("upload", &self.commit(), Bytes::copy_from_slice(csv))
            .await?;
        if !response.status().is_success() {
            return Err(self.client.failure(response).await);
        }
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
    fn the_held_offset_is_read_from_append_and_finish_refusals() {
        let append = serde_json::json!({"error_summary": "incorrect_offset/...",
            "error": {".tag": "incorrect_offset", "correct_offset": 42}});
        let finish = serde_json::json!({"error_summary": "lookup_failed/incorrect_offset/...",
            "error": {".tag": "lookup_failed", "lookup_failed": {".tag": "incorrect_offset", "correct_offset": 7}}});
        let gone = serde_json::json!({"error": {".tag": "lookup_failed", "lookup_failed": {".tag": "not_found"}}});
        assert_eq!(held_offset(&append), Ok(42));
        assert_eq!(held_offset(&finish), Ok(7));
        assert_eq!(held_offset(&gone), Err("not_found".to_string()));
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
