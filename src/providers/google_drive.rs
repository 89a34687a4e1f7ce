//! Google Drive: the contacts file `contacts.csv`, created once and then updated in place by id
//! (the id is kept with the integration). Files up to 5 MB go in one multipart request; larger
//! ones through a resumable upload session.

use async_trait::async_trait;
use reqwest::header::{CONTENT_TYPE, LOCATION};
use serde::Deserialize;
use url::Url;

use super::{FileSink, ProviderError, http::Client, required};
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
    id: String,
}

impl GoogleDrive {
    pub(super) fn new(
        client: Client,
        upload_base: &Url,
        credentials: &Credentials,
    ) -> Result<Self, ProviderError> {
        Ok(Self {
            token: required(credentials, keys::ACCESS_TOKEN)?.to_string(),
            file_id: credentials.get(keys::FILE_ID).map(str::to_string),
            client,
            upload_base: upload_base.clone(),
        })
    }

    /// The upload URL: a new file, or the existing one by id.
    fn files_url(&self, file_id: Option<&str>, upload_type: &str) -> String {
        let base = self.upload_base.as_str().trim_end_matches('/');
        match file_id {
            Some(id) => format!(
                "{base}/upload/drive/v3/files/{}?uploadType={upload_type}&fields=id",
                urlencode(id)
            ),
            None => format!("{base}/upload/drive/v3/files?uploadType={upload_type}&fields=id"),
        }
    }

    async fn upload_to(&self, file_id: Option<&str>, csv: &[u8]) -> Result<String, ProviderError> {
        let method = if file_id.is_some() {
            reqwest::Method::PATCH
        } else {
            reqwest::Method::POST
        };
        let metadata = serde_json::json!({ "name": FILE_NAME, "mimeType": "text/csv" }).to_string();
        let response = if csv.len() <= MULTIPART_LIMIT {
            let boundary = format!("nexus-{}", uuid::Uuid::new_v4().simple());
            let request = self
                .client
                .http
                .request(method, self.files_url(file_id, "multipart"))
                .bearer_auth(&self.token)
                .header(
                    CONTENT_TYPE,
                    format!("multipart/related; boundary={boundary}"),
                )
                .body(multipart_body(&boundary, &metadata, csv));
            self.client.send(request).await?
        } else {
            let start = self
                .client
                .http
                .request(method, self.files_url(file_id, "resumable"))
                .bearer_auth(&self.token)
                .header(CONTENT_TYPE, "application/json; charset=UTF-8")
                .header("X-Upload-Content-Type", "text/csv")
                .header("X-Upload-Content-Length", csv.len().to_string())
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
            let request = self
                .client
                .http
                .put(location)
                .bearer_auth(&self.token)
                .header(CONTENT_TYPE, "text/csv")
                .body(csv.to_vec());
            self.client.send(request).await?
        };
        let answer: FileAnswer = self.client.json(response).await?;
        Ok(answer.id)
    }
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

fn urlencode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

#[async_trait]
impl FileSink for GoogleDrive {
    async fn upload(&self, csv: &[u8]) -> Result<Option<String>, ProviderError> {
        if let Some(id) = &self.file_id {
            match self.upload_to(Some(id), csv).await {
                Ok(_) => return Ok(None),
                // The user deleted the file (or took our access to it): make a new one.
                Err(ProviderError::Rejected(reason))
                    if reason.contains("404")
                        || reason.to_ascii_lowercase().contains("not found") =>
                {
                    tracing::info!("the Drive file is gone; creating a new one");
                }
                Err(e) => return Err(e),
            }
        }
        self.upload_to(None, csv).await.map(Some)
    }
}
