//! The contacts file streamed in chunks (issue 27, item 4): a file larger than one chunk goes
//! through Google Drive's resumable session or a Dropbox upload session, one chunk held at a
//! time; a chunk that fails resumes from what the provider holds, never from the first byte;
//! the old file stays whole until the upload completes.

use std::collections::HashSet;

use nexus_billing::grpc::proto::integrations::{Provider, SyncJob, SyncJobState};

use crate::{
    fake_http::HoldPoint,
    fake_oauth::{FakeOAuth, OKind},
    helpers::{Backend, TestApp},
    integrations::{start_full_sync, start_sync, wait_for_job},
    oauth::{connect_oauth, spawn_with_oauth},
};

crate::on_both_backends!(
    a_drive_file_streams_in_chunks_and_a_failed_chunk_resumes_where_drive_stopped,
    the_old_drive_file_stays_whole_until_the_last_chunk_lands,
    a_dropbox_chunk_whose_answer_was_lost_is_not_sent_twice,
    a_dropbox_upload_finished_by_a_lost_request_is_uploaded_again_whole,
);

const KIB: usize = 1024;

async fn sync(app: &TestApp, user: &str, provider: Provider) -> SyncJob {
    let job = start_sync(&mut app.integrations().await, user, provider).await;
    wait_for_job(app, user, &job.id).await
}

/// Every contact is in the file exactly once, after the header.
fn assert_whole_file(content: &[u8], contacts: usize) {
    let text = String::from_utf8_lossy(content);
    assert!(
        text.starts_with("Email,First Name,Last Name,Company,Phone,Job Title\r\n"),
        "{}",
        &text[..text.len().min(200)]
    );
    let rows: Vec<&str> = text.split("\r\n").skip(1).filter(|r| !r.is_empty()).collect();
    assert_eq!(rows.len(), contacts, "rows in the file");
    let emails: HashSet<&str> = rows.iter().filter_map(|r| r.split(',').next()).collect();
    assert_eq!(emails.len(), contacts, "each contact once");
}

/// (route, offset, bytes) of the requests that carried bytes.
fn data_requests(log: &[(String, u64, usize)]) -> Vec<(String, u64, usize)> {
    log.iter().filter(|(_, _, n)| *n > 0).cloned().collect()
}

async fn a_drive_file_streams_in_chunks_and_a_failed_chunk_resumes_where_drive_stopped(
    backend: Backend,
) {
    let drive = FakeOAuth::start(OKind::GoogleDrive).await;
    let app = spawn_with_oauth(backend, &[&drive], &[("--file-upload-chunk-kib", "512")]).await;
    // About 60 bytes a row: 20,000 rows is over 1 MiB, three chunks of 512 KiB.
    app.add_contacts("ada", 20_000).await;
    connect_oauth(&app, "ada", &drive, &[]).await;
    // The second chunk fails after Drive kept its first 256 KiB.
    drive.break_chunk(2, Some(256 * KIB));

    let job = sync(&app, "ada", Provider::GoogleDrive).await;
    assert_eq!(job.state(), SyncJobState::Succeeded, "{job:?}");
    assert_eq!(job.contacts_done, 20_000);
    let files = drive.files();
    assert_eq!(files.len(), 1, "one file");
    let content = files.values().next().cloned().unwrap_or_default();
    assert!(content.len() > 1024 * KIB, "{} bytes", content.len());
    assert_whole_file(&content, 20_000);

    let log = drive.chunk_log();
    let sent = data_requests(&log);
    let chunk = 512 * KIB as u64;
    // First chunk, the broken second one, then what Drive asked for after saying what it
    // holds (a status query), then the rest: no byte before Drive's offset is sent again.
    assert_eq!(sent[0], ("put".into(), 0, 512 * KIB), "{log:?}");
    assert_eq!(sent[1], ("put".into(), chunk, 512 * KIB), "{log:?}");
    assert!(
        log.contains(&("query".into(), chunk + 256 * KIB as u64, 0)),
        "Drive was asked what it holds: {log:?}"
    );
    assert_eq!(sent[2], ("put".into(), chunk + 256 * KIB as u64, 256 * KIB), "{log:?}");
    assert_eq!(sent[3].1, 2 * chunk, "{log:?}");
    assert_eq!(sent.len(), 4, "{log:?}");
    // Only the 256 KiB Drive dropped went twice.
    let bytes_sent: usize = sent.iter().map(|(_, _, n)| n).sum();
    assert_eq!(bytes_sent, content.len() + 256 * KIB, "bytes sent");
    assert_eq!(drive.sessions_opened(), 1);
    drive.assert_no_problems();
    app.stop().await;
}

async fn the_old_drive_file_stays_whole_until_the_last_chunk_lands(backend: Backend) {
    let drive = FakeOAuth::start(OKind::GoogleDrive).await;
    let app = spawn_with_oauth(backend, &[&drive], &[("--file-upload-chunk-kib", "256")]).await;
    app.add_contacts("ada", 3).await;
    connect_oauth(&app, "ada", &drive, &[]).await;
    let job = sync(&app, "ada", Provider::GoogleDrive).await;
    assert_eq!(job.state(), SyncJobState::Succeeded, "{job:?}");
    let old = drive.files();
    assert_eq!(old.len(), 1);
    assert_whole_file(old.values().next().map_or(&[][..], Vec::as_slice), 3);

    // Many more contacts: the next file is three chunks. Its last chunk is held at Drive's door.
    app.add_contacts_named("ada", "more", 10_000).await;
    let last_chunk = drive.server.hold(HoldPoint::Arrival, |r| {
        r.method == "PUT"
            && r.headers
                .get("content-range")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|range| !range.ends_with("/*"))
    });
    let job = start_full_sync(&mut app.integrations().await, "ada", Provider::GoogleDrive).await;
    last_chunk.arrived(1).await;
    assert_eq!(drive.files(), old, "the old file changed before the upload completed");
    assert!(
        data_requests(&drive.chunk_log()).len() >= 2,
        "the earlier chunks went up"
    );
    last_chunk.release();
    let job = wait_for_job(&app, "ada", &job.id).await;
    assert_eq!(job.state(), SyncJobState::Succeeded, "{job:?}");
    let files = drive.files();
    assert_eq!(files.len(), 1, "still one file");
    assert_eq!(files.keys().collect::<Vec<_>>(), old.keys().collect::<Vec<_>>());
    assert_whole_file(files.values().next().map_or(&[][..], Vec::as_slice), 10_003);
    drive.assert_no_problems();
    app.stop().await;
}

async fn a_dropbox_chunk_whose_answer_was_lost_is_not_sent_twice(backend: Backend) {
    let dropbox = FakeOAuth::start(OKind::Dropbox).await;
    let app = spawn_with_oauth(backend, &[&dropbox], &[("--file-upload-chunk-kib", "256")]).await;
    app.add_contacts("ada", 10_000).await;
    connect_oauth(&app, "ada", &dropbox, &[]).await;
    // Dropbox keeps the second chunk, but its answer never arrives.
    dropbox.break_chunk(2, None);

    let job = sync(&app, "ada", Provider::Dropbox).await;
    assert_eq!(job.state(), SyncJobState::Succeeded, "{job:?}");
    let files = dropbox.files();
    assert_eq!(files.len(), 1);
    let content = files.values().next().cloned().unwrap_or_default();
    assert_whole_file(&content, 10_000);

    let log = dropbox.chunk_log();
    let chunk = 256 * KIB as u64;
    // The resend of the second chunk is refused with the offset Dropbox holds (409
    // incorrect_offset, carrying no new byte into the file), and the upload goes on from there.
    let at_second: Vec<_> = log.iter().filter(|(_, at, _)| *at == chunk).collect();
    assert_eq!(at_second.len(), 2, "sent, then resent and refused: {log:?}");
    let finish = log.iter().filter(|(route, ..)| route == "finish").count();
    assert_eq!(finish, 1, "{log:?}");
    assert!(
        log.iter()
            .skip(2)
            .all(|(route, at, _)| route == "finish" || *at >= chunk),
        "nothing before Dropbox's offset was sent again: {log:?}"
    );
    assert_eq!(dropbox.sessions_opened(), 1);
    dropbox.assert_no_problems();
    app.stop().await;
}

async fn a_dropbox_upload_finished_by_a_lost_request_is_uploaded_again_whole(backend: Backend) {
    let dropbox = FakeOAuth::start(OKind::Dropbox).await;
    let app = spawn_with_oauth(backend, &[&dropbox], &[("--file-upload-chunk-kib", "256")]).await;
    app.add_contacts("ada", 6_000).await;
    connect_oauth(&app, "ada", &dropbox, &[]).await;
    // 6,000 rows are two chunks: an append, then the finish, whose answer is lost. Dropbox
    // made the file; the resend finds the session closed and the file goes up again.
    dropbox.break_chunk(2, None);

    let job = sync(&app, "ada", Provider::Dropbox).await;
    assert_eq!(job.state(), SyncJobState::Succeeded, "{job:?}");
    let uploads = dropbox.uploads();
    assert_eq!(uploads.len(), 2, "written by the lost finish, then by the new session");
    assert_eq!(uploads[0].2, uploads[1].2, "the same file both times");
    assert_whole_file(&uploads[1].2, 6_000);
    assert_eq!(dropbox.files().len(), 1);
    assert_eq!(dropbox.sessions_opened(), 2);
    dropbox.assert_no_problems();
    app.stop().await;
}
