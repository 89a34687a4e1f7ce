//! Providers that keep the contacts as one file (Google Drive, Dropbox): a small file goes up in
//! one request; a larger one streams through the provider's resumable upload in chunks, so only
//! one chunk is held, and a chunk that fails is resumed from what the provider holds instead of
//! starting the file again. The file replaces the old one only when the upload completes.

use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;

use super::ProviderError;

#[async_trait]
pub trait FileSink: Send + Sync {
    /// Reserves the id of a file not made yet, to be kept before the upload makes it (so an
    /// upload whose answer is lost is sent again to the same file). `None` when the provider
    /// needs none (a path names the file, or an id is already kept).
    async fn reserve(&self) -> Result<Option<String>, ProviderError> {
        Ok(None)
    }

    /// Whether the file this service keeps is still there for the user (not trashed or
    /// deleted): asked when no contact changed, so a file the user threw away is made again
    /// instead of the sync saying all is well. `true` when the provider keeps no such state.
    async fn file_is_there(&self) -> Result<bool, ProviderError> {
        Ok(true)
    }

    /// Uploads a whole small file in one request, replacing the previous one (making it under
    /// the kept id when it does not exist yet). [`ProviderError::FileGone`] when the kept file
    /// cannot be used any more: the caller forgets its id and uploads again.
    async fn upload(&self, csv: &[u8]) -> Result<(), ProviderError>;

    /// Opens a resumable upload of the file (same target and errors as [`FileSink::upload`]).
    async fn start_upload(&self) -> Result<UploadSession, ProviderError>;

    /// Sends `chunk` (the file's bytes from `chunk.start`) into the session; `last` completes
    /// the file. Called again after an error, it first learns what the provider holds and sends
    /// only the rest. [`ProviderError::UploadLost`] when the provider no longer has the session
    /// (expired, or finished by a request whose answer was lost): the caller starts over.
    async fn send_chunk(
        &self,
        session: &UploadSession,
        chunk: &Chunk,
        last: bool,
    ) -> Result<(), ProviderError>;
}

/// A piece of the file and where it starts.
#[derive(Debug, Clone, Default)]
pub struct Chunk {
    pub start: u64,
    pub bytes: Bytes,
}

impl Chunk {
    /// One past the chunk's last byte.
    pub fn end(&self) -> u64 {
        self.start + self.bytes.len() as u64
    }
}

/// A resumable upload at the provider: its id (Google Drive's session URL, Dropbox's session
/// id) and how far it got, shared by the tries of a chunk.
#[derive(Debug)]
pub struct UploadSession {
    id: String,
    progress: Mutex<UploadProgress>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UploadProgress {
    /// Bytes the provider said it holds.
    pub offset: u64,
    /// A request was sent whose answer never came: ask (or find out) before sending again.
    pub unsure: bool,
    /// The provider made the file.
    pub complete: bool,
}

impl UploadSession {
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            progress: Mutex::new(UploadProgress::default()),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn progress(&self) -> UploadProgress {
        self.progress.lock().map(|p| *p).unwrap_or_default()
    }

    pub fn set(&self, progress: UploadProgress) {
        if let Ok(mut p) = self.progress.lock() {
            *p = progress;
        }
    }

    /// The part of `chunk` the provider does not hold yet, or `UploadLost` when the provider
    /// holds less than the chunk's start (bytes this service no longer has) or more than its end.
    pub fn rest_of(&self, chunk: &Chunk, provider: &str) -> Result<Bytes, ProviderError> {
        let offset = self.progress().offset;
        if offset < chunk.start || offset > chunk.end() {
            return Err(ProviderError::UploadLost(format!(
                "{provider} holds {offset} bytes of the upload, outside the chunk at {}..{}",
                chunk.start,
                chunk.end()
            )));
        }
        let from = usize::try_from(offset - chunk.start).unwrap_or(usize::MAX);
        Ok(chunk.bytes.slice(from.min(chunk.bytes.len())..))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rest_of_a_chunk_starts_where_the_provider_stopped() {
        let session = UploadSession::new("s");
        let chunk = Chunk {
            start: 10,
            bytes: Bytes::from_static(b"abcdef"),
        };
        for (offset, rest) in [(10, &b"abcdef"[..]), (13, b"def"), (16, b"")] {
            session.set(UploadProgress {
                offset,
                ..Default::default()
            });
            assert_eq!(session.rest_of(&chunk, "P").ok().as_deref(), Some(rest));
        }
        for offset in [9, 17] {
            session.set(UploadProgress {
                offset,
                ..Default::default()
            });
            assert!(matches!(
                session.rest_of(&chunk, "P"),
                Err(ProviderError::UploadLost(_))
            ));
        }
    }
}
