//! Contacts at the seams (issue 26): where two integration features meet. Each test failed on
//! the code before its fix: a changed destination kept the old one's memory (also when a push to
//! the old one ended after the change), a re-authorised Drive lost its file, a trashed file was
//! written into, a contact committed late was skipped for good, a rotated refresh token was
//! thrown away, a refresh refused after a re-authorisation broke the new grant, a canceled job's
//! worker and the next job both made a Drive file, and Sync now spent a parked job's parks.
//! Deliveries sent once are in contact_deliveries.rs.

use nexus_billing::{
    domain::credentials::keys,
    grpc::proto::integrations::{
        CancelSyncJobRequest, IntegrationStatus, Provider, SyncJob, SyncJobState,
        UpdateIntegrationRequest,
    },
    vault::Vault,
};

use crate::{
    exec,
    fake_http::{HoldPoint, ResponseTemplate},
    fake_oauth::{FakeOAuth, OKind},
    fake_providers::{FakeProvider, Kind},
    helpers::{Backend, ENCRYPTION_KEY, TestApp, authed, token, wait_for},
    integrations::{connect, spawn_with_fakes, start_sync, wait_for_job},
    oauth::{connect_oauth, integration, spawn_with_oauth, stored_credentials},
};

crate::tests!(
    backends: [
        a_changed_dropbox_path_gets_every_contact,
        a_reauthorised_drive_keeps_its_file,
        a_trashed_drive_file_is_replaced_not_written_into,
        a_contact_committed_late_with_an_old_timestamp_is_pushed,
        a_refresh_that_loses_its_swap_keeps_the_rotated_tokens,
        a_canceled_drive_sync_and_the_next_make_one_file,
        sync_now_leaves_a_parked_job_parked_and_a_started_one_as_it_is,
        a_push_to_the_old_destination_that_ends_after_the_change_leaves_no_memory,
        a_destination_changed_while_the_attempt_opened_gets_every_contact,
        a_refresh_refused_after_a_reauthorisation_leaves_the_connection_active,
        a_drive_file_trashed_while_nothing_changed_is_made_again,
    ],
    postgres: [
        a_contact_in_a_transaction_open_across_a_push_is_pushed_once_it_commits,
        the_job_listener_takes_no_connection_from_the_pool,
    ],
    plain: [a_contact_whose_timestamp_cannot_be_read_is_pushed],
);

pub async fn sync(app: &TestApp, user: &str, provider: Provider) -> SyncJob {
    let job = start_sync(&mut app.integrations().await, user, provider).await;
    wait_for_job(app, user, &job.id).await
}

pub async fn succeeded(app: &TestApp, user: &str, provider: Provider) -> SyncJob {
    let job = sync(app, user, provider).await;
    assert_eq!(job.state(), SyncJobState::Succeeded, "{job:?}");
    job
}

pub async fn update_settings(app: &TestApp, user: &str, provider: Provider, settings: &[(&str, &str)]) {
    app.integrations()
        .await
        .update_integration(authed(
            UpdateIntegrationRequest {
                provider: provider.into(),
                settings: settings
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            },
            &token(user),
        ))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

/// Dates every contact an hour back, as contacts written before the sync are (the code before
/// issue 26 re-read anything written in the 5 s before a push, which hid these defects).
pub async fn backdate(app: &TestApp) {
    exec!(
        &app.pool,
        pg: "UPDATE contacts SET updated_at = now() - interval '1 hour'",
        sqlite: "UPDATE contacts SET updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-1 hour')"
    );
}

pub fn lines(content: &[u8]) -> usize {
    String::from_utf8_lossy(content).lines().count()
}

/// Item 1: the Dropbox path moved. The new file must hold every contact, though none changed
/// since the upload to the old path (the old memory said "nothing to send").
async fn a_changed_dropbox_path_gets_every_contact(backend: Backend) {
    let dropbox = FakeOAuth::start(OKind::Dropbox).await;
    let app = spawn_with_oauth(backend, &[&dropbox], &[]).await;
    app.add_contacts("ada", 12).await;
    backdate(&app).await;
    connect_oauth(&app, "ada", &dropbox, &[("path", "/Nexus/old.csv")]).await;
    succeeded(&app, "ada", Provider::Dropbox).await;
    update_settings(&app, "ada", Provider::Dropbox, &[("path", "/Nexus/new.csv")]).await;
    succeeded(&app, "ada", Provider::Dropbox).await;
    let files = dropbox.files();
    let new = files
        .get("/Nexus/new.csv")
        .unwrap_or_else(|| panic!("nothing uploaded to the new path: {:?}", files.keys()));
    assert_eq!(lines(new), 13, "a header and every contact");
    dropbox.assert_no_problems();
    app.stop().await;
}

/// Item 1: re-authorising Google Drive used to rebuild the credentials without the file id:
/// the next sync made a second contacts.csv.
async fn a_reauthorised_drive_keeps_its_file(backend: Backend) {
    let drive = FakeOAuth::start(OKind::GoogleDrive).await;
    let app = spawn_with_oauth(backend, &[&drive], &[]).await;
    app.add_contacts("ada", 5).await;
    connect_oauth(&app, "ada", &drive, &[]).await;
    succeeded(&app, "ada", Provider::GoogleDrive).await;
    connect_oauth(&app, "ada", &drive, &[]).await;
    app.add_contacts_named("ada", "later", 1).await;
    succeeded(&app, "ada", Provider::GoogleDrive).await;
    let files = drive.live_files();
    assert_eq!(files.len(), 1, "one contacts file: {:?}", files.keys());
    assert_eq!(lines(files.values().next().map_or(&[][..], |f| f)), 7);
    drive.assert_no_problems();
    app.stop().await;
}


/// Item 8: a file in Drive's trash still takes updates for 30 days; writing into it hides the
/// contacts from the user. A new file is made instead.
async fn a_trashed_drive_file_is_replaced_not_written_into(backend: Backend) {
    let drive = FakeOAuth::start(OKind::GoogleDrive).await;
    let app = spawn_with_oauth(backend, &[&drive], &[]).await;
    app.add_contacts("ada", 5).await;
    connect_oauth(&app, "ada", &drive, &[]).await;
    succeeded(&app, "ada", Provider::GoogleDrive).await;
    let first: Vec<String> = drive.live_files().into_keys().collect();
    assert_eq!(first.len(), 1);
    drive.trash(&first[0]);
    app.add_contacts_named("ada", "later", 1).await;
    succeeded(&app, "ada", Provider::GoogleDrive).await;
    let files = drive.live_files();
    assert_eq!(files.len(), 1, "one file outside the trash: {:?}", files.keys());
    let (id, content) = files.iter().next().map(|(k, v)| (k.clone(), v.clone())).unwrap_or_default();
    assert_ne!(id, first[0], "a new file, not the trashed one");
    assert_eq!(lines(&content), 7);
    app.stop().await;
}


/// Item 3: the watermark was `start - 5 s` of this host's clock against `updated_at` written by
/// the card app: a row committed late (a long transaction, a skewed clock) with an old
/// timestamp was skipped for good.
async fn a_contact_committed_late_with_an_old_timestamp_is_pushed(backend: Backend) {
    let hubspot = FakeProvider::start(Kind::Hubspot).await;
    let app = spawn_with_fakes(backend, &[&hubspot], &[]).await;
    app.add_contacts("ada", 3).await;
    connect(&app, "ada", &hubspot).await;
    succeeded(&app, "ada", Provider::Hubspot).await;
    exec!(
        &app.pool,
        pg: "INSERT INTO contacts (id, user_id, email, first_name, updated_at) \
             VALUES ('late-1', 'ada', 'late@example.com', 'Late', TIMESTAMPTZ '2001-01-01 00:00:00+00')",
        sqlite: "INSERT INTO contacts (id, user_id, email, first_name, updated_at) \
                 VALUES ('late-1', 'ada', 'late@example.com', 'Late', '2001-01-01T00:00:00.000Z')"
    );
    succeeded(&app, "ada", Provider::Hubspot).await;
    let pushed = hubspot.pushed_emails();
    assert_eq!(
        pushed.iter().filter(|e| *e == "late@example.com").count(),
        1,
        "{pushed:?}"
    );
    assert_eq!(pushed.len(), 4, "nothing sent twice: {pushed:?}");
    app.stop().await;
}

/// Item 3: on SQLite an `updated_at` that strftime cannot read gave a NULL push key: the contact
/// was never pushed.
async fn a_contact_whose_timestamp_cannot_be_read_is_pushed() {
    let hubspot = FakeProvider::start(Kind::Hubspot).await;
    let app = spawn_with_fakes(Backend::Sqlite, &[&hubspot], &[]).await;
    connect(&app, "ada", &hubspot).await;
    exec!(
        &app.pool,
        "INSERT INTO contacts (id, user_id, email, updated_at) \
         VALUES ('odd-1', 'ada', 'odd@example.com', 'yesterday')"
    );
    succeeded(&app, "ada", Provider::Hubspot).await;
    assert_eq!(hubspot.pushed_emails(), ["odd@example.com"]);
    app.stop().await;
}


/// Item 4: the row changed while a refresh was at the provider (another worker kept a value,
/// keys were rotated). The refreshed tokens were thrown away; with rotating refresh tokens the
/// next refresh got invalid_grant and the integration fell to NEEDS_REAUTH.
async fn a_refresh_that_loses_its_swap_keeps_the_rotated_tokens(backend: Backend) {
    let drive = FakeOAuth::start(OKind::GoogleDrive).await;
    drive.rotate_refresh_tokens();
    let app = spawn_with_oauth(backend, &[&drive], &[]).await;
    app.add_contacts("ada", 2).await;
    connect_oauth(&app, "ada", &drive, &[]).await;
    // Every token is now about to expire: the sync refreshes first.
    drive.set_expires_in(10);
    drive.expire_access_tokens();
    let refresh = drive.server.hold(HoldPoint::Answer, |request| {
        request.url.path() == "/token"
            && String::from_utf8_lossy(&request.body).contains("grant_type=refresh_token")
    });
    let job = start_sync(&mut app.integrations().await, "ada", Provider::GoogleDrive).await;
    refresh.arrived(1).await;
    // Meanwhile the row is rewritten without the refresh lock (as `remember` does).
    let mut key = [0u8; 32];
    hex::decode_to_slice(ENCRYPTION_KEY, &mut key).unwrap_or_else(|e| panic!("{e}"));
    let vault = Vault::new(&key, &[]).unwrap_or_else(|e| panic!("{e}"));
    let resealed = vault.seal(&stored_credentials(&app).await.with("note", "kept by another worker"));
    exec!(&app.pool, "UPDATE integrations SET credentials = $1", resealed);
    refresh.release();
    let job = wait_for_job(&app, "ada", &job.id).await;
    assert_eq!(job.state(), SyncJobState::Succeeded, "{job:?}");
    let kept = stored_credentials(&app).await;
    assert_eq!(
        kept.get(keys::REFRESH_TOKEN).map(str::to_string),
        drive.current_refresh_token(),
        "the rotated refresh token is the one kept"
    );
    assert_eq!(kept.get("note"), Some("kept by another worker"), "merged, not replaced");
    let now = integration(&app, "ada", OKind::GoogleDrive)
        .await
        .unwrap_or_else(|| panic!("gone"));
    assert_eq!(now.status(), IntegrationStatus::Active, "{now:?}");
    app.stop().await;
}

/// Item 5: CancelSyncJob then Sync now while the first upload was at Drive: the cancel freed
/// the integration's one-job slot before the worker noticed, the next job found no file id and
/// made a second file. Now the file's id is kept before it is made, and the next job is not
/// claimed until the canceled job's worker has stopped.
async fn a_canceled_drive_sync_and_the_next_make_one_file(backend: Backend) {
    let drive = FakeOAuth::start(OKind::GoogleDrive).await;
    let app = spawn_with_oauth(backend, &[&drive], &[("--sync-lease", "3s")]).await;
    app.add_contacts("ada", 5).await;
    connect_oauth(&app, "ada", &drive, &[]).await;
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let first_upload = drive.server.hold(HoldPoint::Answer, move |request| {
        request.url.path().starts_with("/upload/drive/v3/files")
            && seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0
    });
    let mut client = app.integrations().await;
    let first = start_sync(&mut client, "ada", Provider::GoogleDrive).await;
    first_upload.arrived(1).await;
    client
        .cancel_sync_job(authed(
            CancelSyncJobRequest {
                id: first.id.clone(),
            },
            &token("ada"),
        ))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let second = succeeded(&app, "ada", Provider::GoogleDrive).await;
    assert_ne!(second.id, first.id);
    first_upload.release();
    let files = drive.live_files();
    assert_eq!(files.len(), 1, "one contacts file: {:?}", files.keys());
    assert_eq!(lines(files.values().next().map_or(&[][..], |f| f)), 6);
    wait_for("the first job is canceled", || async {
        let job = crate::integrations::get_job(&mut app.integrations().await, "ada", &first.id).await;
        (job.state() == SyncJobState::Canceled).then_some(())
    })
    .await;
    app.stop().await;
}

/// Item 8: Sync now on a job parked for a daily quota brought it forward: each click spent a
/// park (another 429) and enough clicks failed the job. A job that has started (parked mid-push
/// here) was also widened to BOTH, whose import was then skipped, or made full, which resumed
/// from its checkpoint anyway. A parked job now stays parked, and a started one is not changed.
async fn sync_now_leaves_a_parked_job_parked_and_a_started_one_as_it_is(backend: Backend) {
    let hubspot = FakeProvider::start(Kind::Hubspot).await;
    let app = spawn_with_fakes(backend, &[&hubspot], &[]).await;
    app.add_contacts("ada", 150).await;
    connect(&app, "ada", &hubspot).await;
    // The first batch lands, the second meets the daily limit: parked mid-push.
    hubspot.script_after(1, vec![
        ResponseTemplate::new(429)
            .insert_header("retry-after", "3600")
            .set_body_json(serde_json::json!({"status": "error", "message": "You have reached your daily limit.", "policyName": "DAILY"})),
    ]);
    let mut client = app.integrations().await;
    let job = start_sync(&mut client, "ada", Provider::Hubspot).await;
    let parked = wait_for("the job was parked", || {
        let mut client = client.clone();
        let id = job.id.clone();
        async move {
            let now = crate::integrations::get_job(&mut client, "ada", &id).await;
            (now.state() == SyncJobState::Queued && !now.last_error.is_empty()).then_some(now)
        }
    })
    .await;
    let requests = hubspot.push_requests();
    let again = start_sync(&mut client, "ada", Provider::Hubspot).await;
    assert_eq!(again.id, job.id);
    assert_eq!(
        again.next_attempt_time, parked.next_attempt_time,
        "Sync now leaves a job parked for the provider's daily limit where it is"
    );
    for (direction, full) in [(nexus_billing::grpc::proto::integrations::SyncDirection::Both, false), (nexus_billing::grpc::proto::integrations::SyncDirection::Push, true)] {
        let refused = client
            .sync_integration(authed(
                nexus_billing::grpc::proto::integrations::SyncIntegrationRequest {
                    provider: Provider::Hubspot.into(),
                    direction: direction.into(),
                    full,
                },
                &token("ada"),
            ))
            .await
            .expect_err("a started job is not widened or made full");
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
    }
    let still = crate::integrations::get_job(&mut client, "ada", &job.id).await;
    assert_eq!(still.next_attempt_time, parked.next_attempt_time);
    assert_eq!(still.direction, parked.direction, "{still:?}");
    assert_eq!(hubspot.push_requests(), requests, "no push before the reset");
    app.stop().await;
}

pub fn times_pushed(fake: &FakeProvider, email: &str) -> usize {
    fake.pushed_emails().iter().filter(|e| *e == email).count()
}




/// Item 1, the race: a push to the old Dropbox path was still running when the path changed.
/// Its end wrote the old destination's watermark back over the forgotten one, so the new path
/// never got the file (nothing had changed "since"). A push of an earlier destination now
/// leaves no memory behind.
async fn a_push_to_the_old_destination_that_ends_after_the_change_leaves_no_memory(
    backend: Backend,
) {
    let dropbox = FakeOAuth::start(OKind::Dropbox).await;
    let app = spawn_with_oauth(backend, &[&dropbox], &[]).await;
    app.add_contacts("ada", 6).await;
    backdate(&app).await;
    connect_oauth(&app, "ada", &dropbox, &[("path", "/Nexus/old.csv")]).await;
    let upload = dropbox.server.hold(HoldPoint::Arrival, |request| {
        request.url.path() == "/2/files/upload"
    });
    let mut client = app.integrations().await;
    let first = start_sync(&mut client, "ada", Provider::Dropbox).await;
    upload.arrived(1).await;
    update_settings(&app, "ada", Provider::Dropbox, &[("path", "/Nexus/new.csv")]).await;
    upload.release();
    new_path_holds_every_contact(&app, &dropbox, &first.id, 6).await;
    app.stop().await;
}

/// Item 3, a true late commit: the card app's transaction wrote a contact before a push began
/// and committed after it ended, while a later edit committed at once. The push saw only the
/// later one; a watermark set to where it got to would have passed the uncommitted contact for
/// good. The watermark stays below the push's horizon (the oldest transaction still open), so
/// the next push sends it.
async fn a_contact_in_a_transaction_open_across_a_push_is_pushed_once_it_commits() {
    let backend = Backend::Postgres;
    let hubspot = FakeProvider::start(Kind::Hubspot).await;
    let app = spawn_with_fakes(backend, &[&hubspot], &[]).await;
    app.add_contacts("ada", 3).await;
    connect(&app, "ada", &hubspot).await;
    succeeded(&app, "ada", Provider::Hubspot).await;
    let crate::helpers::TestPool::Postgres(pool) = &app.pool else {
        panic!("a PostgreSQL test on another backend")
    };
    let mut open = pool.begin().await.unwrap_or_else(|e| panic!("{e}"));
    sqlx::query(
        "INSERT INTO contacts (id, user_id, email, first_name) \
         VALUES ('open-1', 'ada', 'open@example.com', 'Open')",
    )
    .execute(&mut *open)
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    // A later edit, committed at once (an edit: the open insert holds the user's count row).
    exec!(
        &app.pool,
        "UPDATE contacts SET first_name = 'Edited' WHERE email = 'contact0@example.com'"
    );
    succeeded(&app, "ada", Provider::Hubspot).await;
    assert_eq!(times_pushed(&hubspot, "contact0@example.com"), 2, "the edit was pushed");
    assert!(!hubspot.pushed_emails().contains(&"open@example.com".to_string()));
    open.commit().await.unwrap_or_else(|e| panic!("{e}"));
    succeeded(&app, "ada", Provider::Hubspot).await;
    assert_eq!(
        times_pushed(&hubspot, "open@example.com"),
        1,
        "{:?}",
        hubspot.pushed_emails()
    );
    assert_eq!(times_pushed(&hubspot, "contact0@example.com"), 2);
    app.stop().await;
}

/// Item 4: a sync's refresh was on its way with the old refresh token when the user connected
/// the account again. The provider refused the old token (`invalid_grant`: the new grant
/// replaced it), and that refusal used to mark the just re-authorised connection NEEDS_REAUTH.
/// It now sees the newer grant, keeps the connection ACTIVE and syncs with it.
async fn a_refresh_refused_after_a_reauthorisation_leaves_the_connection_active(
    backend: Backend,
) {
    let drive = FakeOAuth::start(OKind::GoogleDrive).await;
    let app = spawn_with_oauth(backend, &[&drive], &[]).await;
    app.add_contacts("ada", 3).await;
    connect_oauth(&app, "ada", &drive, &[]).await;
    drive.set_expires_in(10);
    drive.expire_access_tokens();
    let refresh = drive.server.hold_first(1, HoldPoint::Arrival, |request| {
        request.url.path() == "/token"
            && String::from_utf8_lossy(&request.body).contains("grant_type=refresh_token")
    });
    let job = start_sync(&mut app.integrations().await, "ada", Provider::GoogleDrive).await;
    refresh.arrived(1).await;
    // The user connects Drive again: a new grant; the old refresh token is dead.
    drive.set_expires_in(3600);
    connect_oauth(&app, "ada", &drive, &[]).await;
    refresh.release();
    let job = wait_for_job(&app, "ada", &job.id).await;
    assert_eq!(job.state(), SyncJobState::Succeeded, "{job:?}");
    let now = integration(&app, "ada", OKind::GoogleDrive)
        .await
        .unwrap_or_else(|| panic!("gone"));
    assert_eq!(now.status(), IntegrationStatus::Active, "{now:?}");
    assert_eq!(drive.live_files().len(), 1);
    assert_eq!(
        drive.take_problems(),
        vec!["refresh with a refresh token that is not the current one".to_string()],
        "only the refresh already on its way used the old token"
    );
    app.stop().await;
}


/// Item 2's likely trigger: the listener for job changes took one of the pool's connections for
/// good, so a bookkeeping write after a provider call could time out waiting for one. With a
/// pool of one connection, nothing but the listener ever ran. It has a connection of its own.
async fn the_job_listener_takes_no_connection_from_the_pool() {
    let hubspot = FakeProvider::start(Kind::Hubspot).await;
    let app = spawn_with_fakes(
        Backend::Postgres,
        &[&hubspot],
        &[("--database-max-connections", "1")],
    )
    .await;
    app.add_contacts("ada", 3).await;
    connect(&app, "ada", &hubspot).await;
    // Watching a job subscribes to the changes (the listener starts).
    let job = start_sync(&mut app.integrations().await, "ada", Provider::Hubspot).await;
    let updates = crate::integrations::watch_job(&app, "ada", &job.id).await;
    assert!(updates.last().is_some_and(|j| j.state() == SyncJobState::Succeeded), "{updates:?}");
    app.add_contacts_named("ada", "later", 2).await;
    let job = succeeded(&app, "ada", Provider::Hubspot).await;
    assert_eq!(job.contacts_done, 2, "{job:?}");
    app.stop().await;
}

/// Found by the contacts model (seed 9919819634504218854): the user moved the contacts file to
/// Drive's trash and no contact changed afterwards. Every later sync said "nothing to send" and
/// succeeded while the user had no file. A sync with nothing to send now checks the file is
/// still there and makes a new one when it is not.
async fn a_drive_file_trashed_while_nothing_changed_is_made_again(backend: Backend) {
    let drive = FakeOAuth::start(OKind::GoogleDrive).await;
    let app = spawn_with_oauth(backend, &[&drive], &[]).await;
    app.add_contacts("ada", 3).await;
    connect_oauth(&app, "ada", &drive, &[]).await;
    succeeded(&app, "ada", Provider::GoogleDrive).await;
    let first: Vec<String> = drive.live_files().keys().cloned().collect();
    assert_eq!(first.len(), 1);
    drive.trash(&first[0]);
    succeeded(&app, "ada", Provider::GoogleDrive).await;
    let files = drive.live_files();
    assert_eq!(files.len(), 1, "a live contacts file: {:?}", files.keys());
    assert!(!files.contains_key(&first[0]), "not the trashed one");
    assert_eq!(lines(files.values().next().map_or(&[][..], |f| f)), 4);
    // And with the file there, nothing is uploaded again.
    let uploads = drive.uploads().len();
    succeeded(&app, "ada", Provider::GoogleDrive).await;
    assert_eq!(drive.uploads().len(), uploads);
    drive.assert_no_problems();
    app.stop().await;
}

/// Item 1, the earlier window (found in review): the attempt read the integration's settings
/// (the old Dropbox path), then refreshed its token; the path changed meanwhile, and the push,
/// reading the new epoch only then, uploaded to the old path and remembered it under the new
/// epoch: the new path never got the file. The epoch is now read before the settings.
async fn a_destination_changed_while_the_attempt_opened_gets_every_contact(backend: Backend) {
    let dropbox = FakeOAuth::start(OKind::Dropbox).await;
    let app = spawn_with_oauth(backend, &[&dropbox], &[]).await;
    app.add_contacts("ada", 4).await;
    backdate(&app).await;
    // A token about to expire: the attempt refreshes it as it opens.
    dropbox.set_expires_in(10);
    connect_oauth(&app, "ada", &dropbox, &[("path", "/Nexus/old.csv")]).await;
    let token_path = OKind::Dropbox.token_path();
    let refresh = dropbox.server.hold_first(1, HoldPoint::Arrival, move |request| {
        request.url.path() == token_path
            && String::from_utf8_lossy(&request.body).contains("grant_type=refresh_token")
    });
    let first = start_sync(&mut app.integrations().await, "ada", Provider::Dropbox).await;
    refresh.arrived(1).await;
    update_settings(&app, "ada", Provider::Dropbox, &[("path", "/Nexus/new.csv")]).await;
    refresh.release();
    new_path_holds_every_contact(&app, &dropbox, &first.id, 4).await;
    app.stop().await;
}

/// After a job `first` begun for the old Dropbox path, and one more sync: the file at the new
/// path holds a header and every one of the `contacts`.
async fn new_path_holds_every_contact(
    app: &TestApp,
    dropbox: &FakeOAuth,
    first: &str,
    contacts: usize,
) {
    let first = wait_for_job(app, "ada", first).await;
    let second = sync(app, "ada", Provider::Dropbox).await;
    let files = dropbox.files();
    let new = files.get("/Nexus/new.csv").unwrap_or_else(|| {
        panic!(
            "nothing uploaded to the new path: {:?}; jobs {first:?} {second:?}",
            files.keys()
        )
    });
    assert_eq!(lines(new), contacts + 1, "a header and every contact");
    dropbox.assert_no_problems();
}
