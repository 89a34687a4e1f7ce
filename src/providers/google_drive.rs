//! Google Drive: the contacts file `contacts.csv`, made once under an id reserved beforehand
//! (`files.generateIds`, kept with the integration before the file is made) and then updated in
//! place by that id. Files up to 5 MB go in one multipart request; larger ones stream through
//! a resumable upload session in chunks (`Content-Range: bytes a-b/*`, answered `308` with the
//! `Range` Drive holds); after a failure an empty `PUT` with `bytes */*` asks what Drive holds
//! and only the rest is sent. Drive replaces the file's content when the last chunk lands.

use async_trait::async_trait;
use bytes::Bytes;
use reqwest::header::{CONTENT_RANGE, CONTENT_TYPE, LOCATION, RANGE};
use serde::Deserialize;
use url::Url;

use super::{
    FileSink, ProviderError,
    file_sink::{Chunk, UploadProgress, UploadSession},
    http::Client,
    required,
};
use crate::domain::credentials::{Credentials, keys};

/// Largest body sent as one multipart request.
pub const MULTIPART_LIMIT: usize = 5 * 1024 * 1024;
pub const FILE_NAME: &str = "contacts.csv";

pub struct GoogleDrive {
    client: Client,
    upload_base: Url,
    token: String,
    file_id: Option<String>,
}

#[derive(Deserialize)]
struct FileAnswer {
    #[serde(default)]
    trashed: bool,
}

impl GoogleDrive {
    pub(super) fn new(
        client: Client,
        upload_base: &Url,
        credentials: &Credentials,
    ) -> Result<Self, ProviderError> {
        Ok(Self {
            token: required(credentials, keys::ACCESS_TOKEN)?.to_string(),
            file_id: credentials
                .get(keys::FILE_ID)
                .filter(|id| !id.is_empty())
                .map(str::to_string),
            client,
            upload_base: upload_base.clone(),
        })
    }

    /// The upload URL: a new file, or the existing one by id.
    fn files_url(&self, file_id: Option<&str>, upload_type: &str) -> String {
        let base = self.upload_base.as_str().trim_end_matches('/');
        match file_id {
            Some(id) => format!(
                "{base}/upload/drive/v3/files/{}?uploadType={upload_type}&fields=id,trashed",
                urlencode(id)
            ),
            None => {
                format!("{base}/upload/drive/v3/files?uploadType={upload_type}&fields=id,trashed")
            }
        }
    }

    /// Metadata and method of a write: `Update` replaces the content of the file `id`;
    /// `Create` makes the file under the reserved `id` (or under a new id when there is none).
    fn write_of<'a>(write: &Write<'a>) -> (reqwest::Method, Option<&'a str>, String) {
        let (method, url_id, metadata) = match *write {
            Write::Update(id) => (
                reqwest::Method::PATCH,
                Some(id),
                serde_json::json!({ "name": FILE_NAME, "mimeType": "text/csv" }),
            ),
            Write::Create(id) => (
                reqwest::Method::POST,
                None,
                match id {
                    Some(id) => {
                        serde_json::json!({ "id": id, "name": FILE_NAME, "mimeType": "text/csv" })
                    }
                    None => serde_json::json!({ "name": FILE_NAME, "mimeType": "text/csv" }),
                },
            ),
        };
        (method, url_id, metadata.to_string())
    }

    /// Sends a small file in one multipart request.
    async fn upload_to(&self, write: Write<'_>, csv: &[u8]) -> Result<FileAnswer, ProviderError> {
        let (method, url_id, metadata) = Self::write_of(&write);
        let boundary = format!("nexus-{}", uuid::Uuid::new_v4().simple());
        let request = self
            .client
            .http
            .request(method, self.files_url(url_id, "multipart"))
            .bearer_auth(&self.token)
            .header(
                CONTENT_TYPE,
                format!("multipart/related; boundary={boundary}"),
            )
            .body(multipart_body(&boundary, &metadata, csv));
        let response = self.client.send(request).await?;
        self.client.json(response).await
    }

    /// Opens a resumable session for the write; its URL.
    async fn open_session(&self, write: Write<'_>) -> Result<Url, ProviderError> {
        let (method, url_id, metadata) = Self::write_of(&write);
        let start = self
            .client
            .http
            .request(method, self.files_url(url_id, "resumable"))
            .bearer_auth(&self.token)
            .header(CONTENT_TYPE, "application/json; charset=UTF-8")
            .header("X-Upload-Content-Type", "text/csv")
            .body(metadata);
        let session = self.client.send(start).await?;
        let location = session
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| Url::parse(v).ok())
            .ok_or_else(|| {
                ProviderError::Unavailable("Google Drive gave no upload session".into())
            })?;
        // The session must be on the upload host we called, never somewhere else.
        if location.origin() != self.upload_base.origin() {
            return Err(ProviderError::Rejected(
                "Google Drive's upload session is on another host".into(),
            ));
        }
        Ok(location)
    }

    /// One `PUT` to the session: `range` is `bytes a-b/total` (or `*`) with the bytes, or
    /// `bytes */total` (or `*`) empty to ask what Drive holds. Reads the answer into `session`.
    async fn put_range(
        &self,
        session: &UploadSession,
        range: String,
        body: Bytes,
    ) -> Result<(), ProviderError> {
        let before = session.progress();
        session.set(UploadProgress {
            unsure: true,
            ..before
        });
        let request = self
            .client
            .http
            .put(session.id())
            .bearer_auth(&self.token)
            .header(CONTENT_TYPE, "text/csv")
            .header(CONTENT_RANGE, range)
            .body(body);
        let response = self.client.send_raw(request).await?;
        match response.status().as_u16() {
            200 | 201 => {
                let answer: FileAnswer = self.client.json(response).await?;
                session.set(UploadProgress {
                    offset: before.offset,
                    unsure: false,
                    complete: true,
                });
                if answer.trashed {
                    return Err(ProviderError::FileGone(
                        "the contacts file is in the Google Drive trash".into(),
                    ));
                }
                Ok(())
            }
            // "Resume Incomplete": Drive holds bytes 0..=N (no Range: none yet).
            308 => {
                let held = response
                    .headers()
                    .get(RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("bytes=0-"))
                    .and_then(|last| last.trim().parse::<u64>().ok())
                    .map_or(0, |last| last + 1);
                session.set(UploadProgress {
                    offset: held,
                    unsure: false,
                    complete: false,
                });
                Ok(())
            }
            404 | 410 => Err(ProviderError::UploadLost(
                "Google Drive no longer knows the upload session".into(),
            )),
            _ => Err(self.client.failure(response).await),
        }
    }
}

/// What an upload does to the file.
enum Write<'a> {
    Update(&'a str),
    Create(Option<&'a str>),
}

#[derive(Deserialize)]
struct GeneratedIds {
    ids: Vec<String>,
}

/// `multipart/related`: the JSON metadata, then the file.
fn multipart_body(boundary: &str, metadata: &str, csv: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(csv.len() + metadata.len() + 200);
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{metadata}\r\n\
             --{boundary}\r\nContent-Type: text/csv\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(csv);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    body
}

/// No file id is kept: the caller reserves one, keeps it, and uploads again.
fn no_kept_id() -> ProviderError {
    ProviderError::FileGone("no contacts file id is kept yet".into())
}

fn urlencode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

#[async_trait]
impl FileSink for GoogleDrive {
    /// `files.generateIds`: an id for the file before it exists.
    async fn reserve(&self) -> Result<Option<String>, ProviderError> {
        if self.file_id.is_some() {
            return Ok(None);
        }
        let url = format!(
            "{}/drive/v3/files/generateIds?count=1&space=drive&type=files",
            self.upload_base.as_str().trim_end_matches('/')
        );
        let request = self.client.http.get(url).bearer_auth(&self.token);
        let answer: GeneratedIds = self.client.json(self.client.send(request).await?).await?;
        answer
            .ids
            .into_iter()
            .next()
            .map(Some)
            .ok_or_else(|| ProviderError::Unavailable("Google Drive reserved no file id".into()))
    }

    /// `files.get` of the kept file: gone when Drive does not know it (404: deleted, or an id
    /// reserved but never made) or it lies in the trash. No kept id: nothing to look for.
    async fn file_is_there(&self) -> Result<bool, ProviderError> {
        let Some(id) = &self.file_id else {
            return Ok(true);
        };
        let url = format!(
            "{}/drive/v3/files/{}?fields=id,trashed",
            self.upload_base.as_str().trim_end_matches('/'),
            urlencode(id)
        );
        let request = self.client.http.get(url).bearer_auth(&self.token);
        let response = self.client.send_raw(request).await?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(false);
        }
        if !response.status().is_success() {
            return Err(self.client.failure(response).await);
        }
        let answer: FileAnswer = self.client.json(response).await?;
        Ok(!answer.trashed)
    }

    /// Updates the kept file; makes it under its reserved id when it does not exist yet (a
    /// resend after a lost answer finds it and updates it). A file in the trash (Drive still
    /// takes updates to it for 30 days) or deleted is gone: the caller reserves a new one.
    async fn upload(&self, csv: &[u8]) -> Result<(), ProviderError> {
        let Some(id) = &self.file_id else {
            // Never a file without a kept id (a second contacts.csv nobody would update): the
            // caller reserves one and keeps it first. (Found by the contacts model: a
            // re-authorisation saved at the wrong moment lost the kept id under a running sync.)
            return Err(no_kept_id());
        };
        match self.upload_to(Write::Update(id), csv).await {
            Ok(answer) if answer.trashed => Err(ProviderError::FileGone(
                "the contacts file is in the Google Drive trash".into(),
            )),
            Ok(_) => Ok(()),
            Err(ProviderError::Rejected(reason)) if not_found(&reason) => self
                .upload_to(Write::Create(Some(id)), csv)
                .await
                .map(drop)
                .map_err(create_refused),
            Err(e) => Err(e),
        }
    }

    /// A session updating the kept file, or making it under its reserved id when it does not
    /// exist yet (as [`FileSink::upload`]).
    async fn start_upload(&self) -> Result<UploadSession, ProviderError> {
        let url = match &self.file_id {
            None => return Err(no_kept_id()),
            Some(id) => match self.open_session(Write::Update(id)).await {
                Err(ProviderError::Rejected(reason)) if not_found(&reason) => self
                    .open_session(Write::Create(Some(id)))
                    .await
                    .map_err(create_refused)?,
                other => other?,
            },
        };
        Ok(UploadSession::new(url.as_str()))
    }

    async fn send_chunk(
        &self,
        session: &UploadSession,
        chunk: &Chunk,
        last: bool,
    ) -> Result<(), ProviderError> {
        let total = if last {
            chunk.end().to_string()
        } else {
            "*".to_string()
        };
        // The last try's answer was lost: ask what Drive holds first.
        if session.progress().unsure {
            self.put_range(session, format!("bytes */{total}"), Bytes::new())
                .await?;
        }
        loop {
            let progress = session.progress();
            if progress.complete || (!last && progress.offset == chunk.end()) {
                return Ok(());
            }
            let rest = session.rest_of(chunk, "Google Drive")?;
            let range = if rest.is_empty() {
                format!("bytes */{total}")
            } else {
                format!(
                    "bytes {}-{}/{total}",
                    progress.offset,
                    progress.offset + rest.len() as u64 - 1
                )
            };
            self.put_range(session, range, rest).await?;
            let after = session.progress();
            if !after.complete && after.offset <= progress.offset {
                return Err(ProviderError::Unavailable(format!(
                    "Google Drive took none of the chunk at {}",
                    progress.offset
                )));
            }
        }
    }
}

/// What a kept file's id is worth when Drive refuses to make a file under it.
fn create_refused(error: ProviderError) -> ProviderError {
    match error {
        // The reserved id is taken by a file we cannot update: it was deleted.
        ProviderError::Rejected(reason) | ProviderError::BatchRefused(reason)
            if reason.contains("409") || reason.to_ascii_lowercase().contains("already exists") =>
        {
            ProviderError::FileGone(format!(
                "the contacts file was deleted from Google Drive ({reason})"
            ))
        }
        e => e,
    }
}

fn not_found(reason: &str) -> bool {
    reason.contains("404") || reason.to_ascii_lowercase().contains("not found")
}
