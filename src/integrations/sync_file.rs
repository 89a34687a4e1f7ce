//! The file push (Google Drive, Dropbox): every contact in one CSV file, sent only when a contact
//! changed since the last upload (or for a full push, or when there is no file yet).
//!
//! The file is built as a stream, a page of contacts at a time, and cut into chunks of
//! `FILE_UPLOAD_CHUNK` bytes. A file that fits one chunk (and the provider's one-request limit)
//! goes up in one request; a larger one through the provider's resumable upload, one chunk held
//! at a time, so memory does not grow with the file. A chunk that fails is resumed from what the
//! provider holds. The provider replaces the old file only when the upload completes.

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::{
    bookkeeping::in_place,
    sync_attempt::{Outcome, is_transient},
    sync_context::SyncWorker,
    sync_session::{Session, session_outcome},
    tokens::TokenError,
};
use crate::{
    domain::{
        UserId,
        contact_csv::ContactsCsv,
        credentials::keys,
        sync_job::{JobProgress, PushCheckpoint, PushKey, SyncJob},
    },
    providers::{Chunk, ProviderError, single_request_limit},
    store::{Store, StoreError},
};

/// Contacts read per query when building a file.
const FILE_PAGE: u32 = 1000;

/// The contacts file, built a page of contacts at a time and handed out in chunks: only the
/// bytes not handed out yet are held.
struct FileStream<'a> {
    store: &'a dyn Store,
    user: &'a UserId,
    csv: ContactsCsv,
    after: Option<String>,
    read_all: bool,
    /// Where the next chunk starts in the file.
    next_start: u64,
}

impl<'a> FileStream<'a> {
    fn new(store: &'a dyn Store, user: &'a UserId, chunk: usize) -> Self {
        Self {
            store,
            user,
            csv: ContactsCsv::for_chunks(chunk),
            after: None,
            read_all: false,
            next_start: 0,
        }
    }

    /// The next `size` bytes of the file (fewer at its end).
    async fn next_chunk(&mut self, size: usize) -> Result<Chunk, StoreError> {
        while !self.read_all && self.csv.buffered() < size {
            let page = self
                .store
                .contacts_after(self.user, self.after.as_deref(), FILE_PAGE)
                .await?;
            self.csv.add(&page);
            self.after = page.last().map(|c| c.id.clone());
            self.read_all = page.len() < FILE_PAGE as usize;
        }
        let chunk = Chunk {
            start: self.next_start,
            bytes: Bytes::from(self.csv.take(size)),
        };
        self.next_start = chunk.end();
        Ok(chunk)
    }

    /// Every byte has been handed out.
    fn is_done(&self) -> bool {
        self.read_all && self.csv.buffered() == 0
    }

    fn rows(&self) -> u64 {
        self.csv.rows()
    }
}

impl SyncWorker {
    /// Sends the contacts file when a contact changed since the last upload (see the module).
    pub(super) async fn push_file(
        &self,
        session: &mut Session<'_>,
        worker: &str,
        job: &SyncJob,
        progress: &mut JobProgress,
        shutdown: &CancellationToken,
    ) -> Result<Option<Outcome>, StoreError> {
        let PushCheckpoint {
            horizon,
            last: start,
            epoch,
            ..
        } = self.push_start(job, progress, session.epoch).await?;
        // Read before the file is built: a contact changed while it is written sorts after
        // this key, so the next sync uploads again.
        // (Deleting a contact does not move the newest key: the file catches up at the next
        // change or full push.)
        let newest = self.store.last_push_key(&job.user_id).await?;
        let unchanged = match &newest {
            Some(newest) => *newest <= start,
            None => start != PushKey::start(),
        };
        if unchanged {
            match call_provider!(self, session, job, shutdown, file_sink, |sink| sink
                .file_is_there())
            {
                Ok(true) => {
                    tracing::info!("no contact changed since the last upload; nothing to send");
                    return Ok(None);
                }
                Ok(false) => {
                    // The user trashed or deleted it: a new one, with every contact.
                    tracing::info!("the contacts file is gone; making a new one");
                    if let Some(outcome) = self.keep_file_id(session, worker, job, "").await? {
                        return Ok(Some(outcome));
                    }
                }
                Err(e) if shutdown.is_cancelled() && is_transient(&e) => {
                    return Ok(Some(Outcome::Stopped));
                }
                Err(e) => return Ok(Some(self.outcome_of(e, job))),
            }
        }
        let chunk_size = self.config.upload_chunk;
        let single_limit = single_request_limit(job.provider);
        // Three tries: a file gone from the provider (trashed, or deleted after its id was
        // reserved) is replaced by a new one; an upload session the provider lost is started
        // again from the first byte.
        for _ in 0..3 {
            if let Some(outcome) = self.reserve_file(session, worker, job, shutdown).await? {
                return Ok(Some(outcome));
            }
            let mut file = FileStream::new(&*self.store, &job.user_id, chunk_size);
            let mut chunk = file.next_chunk(chunk_size).await?;
            let sent = if file.is_done() && chunk.bytes.len() <= single_limit {
                call_provider!(self, session, job, shutdown, file_sink, |sink| sink
                    .upload(&chunk.bytes))
            } else {
                match call_provider!(self, session, job, shutdown, file_sink, |sink| sink
                    .start_upload())
                {
                    Err(e) => Err(e),
                    Ok(upload) => loop {
                        let last = file.is_done();
                        let sent =
                            call_provider!(self, session, job, shutdown, file_sink, |sink| {
                                sink.send_chunk(&upload, &chunk, last)
                            });
                        if sent.is_err() || last {
                            break sent;
                        }
                        // Stopping: the old file stays whole (an upload never completed
                        // replaces nothing); the next attempt sends the file again.
                        if shutdown.is_cancelled() {
                            return Ok(Some(Outcome::Stopped));
                        }
                        // The provider holds it: let it go before the next one is built, so
                        // one chunk is held at a time, not two.
                        chunk.bytes = Bytes::new();
                        chunk = file.next_chunk(chunk_size).await?;
                    },
                }
            };
            match sent {
                Ok(()) => {
                    let rows = file.rows();
                    progress.contacts_total = rows;
                    progress.contacts_done = rows;
                    if let Some(newest) = newest {
                        progress.checkpoint = Some(
                            PushCheckpoint {
                                horizon,
                                last: newest,
                                epoch,
                                pending: None,
                            }
                            .encode(),
                        );
                    }
                    if !in_place(|| self.store.save_progress(&job.id, worker, progress)).await? {
                        return Ok(Some(Outcome::LeaseLost));
                    }
                    return Ok(None);
                }
                Err(ProviderError::FileGone(reason)) => {
                    tracing::info!(%reason, "the contacts file is gone; making a new one");
                    if let Some(outcome) = self.keep_file_id(session, worker, job, "").await? {
                        return Ok(Some(outcome));
                    }
                }
                Err(ProviderError::UploadLost(reason)) => {
                    tracing::info!(%reason, "the upload session is lost; uploading the file again");
                }
                Err(e) if shutdown.is_cancelled() && is_transient(&e) => {
                    return Ok(Some(Outcome::Stopped));
                }
                Err(e) => return Ok(Some(self.outcome_of(e, job))),
            }
        }
        Ok(Some(Outcome::Retry {
            reason: format!("{} kept losing the contacts file", job.provider),
        }))
    }

    /// Google Drive: when no file id is kept, the new file's id is reserved and kept before the
    /// file is made, so an upload whose answer is lost is sent again to the same file.
    async fn reserve_file(
        &self,
        session: &mut Session<'_>,
        worker: &str,
        job: &SyncJob,
        shutdown: &CancellationToken,
    ) -> Result<Option<Outcome>, StoreError> {
        if session
            .credentials
            .get(keys::FILE_ID)
            .is_some_and(|id| !id.is_empty())
        {
            return Ok(None);
        }
        let reserved = call_provider!(self, session, job, shutdown, file_sink, |sink| sink
            .reserve());
        match reserved {
            Ok(Some(file_id)) => self.keep_file_id(session, worker, job, &file_id).await,
            Ok(None) => Ok(None),
            Err(e) if shutdown.is_cancelled() && is_transient(&e) => Ok(Some(Outcome::Stopped)),
            Err(e) => Ok(Some(self.outcome_of(e, job))),
        }
    }

    /// Keeps the contacts file's id with the credentials (empty: forget it), only while the job
    /// is this worker's, retried in place on a passing database error.
    async fn keep_file_id(
        &self,
        session: &mut Session<'_>,
        worker: &str,
        job: &SyncJob,
        file_id: &str,
    ) -> Result<Option<Outcome>, StoreError> {
        if !in_place(|| {
            self.store
                .extend_lease(&job.id, worker, chrono::Utc::now() + self.lease())
        })
        .await?
        {
            return Ok(Some(Outcome::LeaseLost));
        }
        let mut tries = 0;
        loop {
            match session.remember(keys::FILE_ID, file_id).await {
                Ok(()) => return Ok(None),
                Err(TokenError::Store(e)) if tries < 4 => {
                    tries += 1;
                    tracing::warn!(error = %crate::telemetry::error_chain(&e), "cannot keep the file id yet; trying again");
                    tokio::time::sleep(super::bookkeeping::pause(tries)).await;
                }
                Err(TokenError::Store(e)) => return Err(e),
                Err(e) => return Ok(Some(session_outcome(e))),
            }
        }
    }
}
