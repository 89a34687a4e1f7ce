//! Sync workers in the field (issue 12): hostile provider headers, spent attempts, 429 storms
//! that end, a list that does not exist, listing and canceling jobs. Each test fails on the
//! code before that issue. (Scheduled and incremental syncs: `sync_schedule.rs`.)


use nexus_billing::grpc::proto::integrations::{
    CancelSyncJobRequest, IntegrationStatus, ListSyncJobsRequest, Provider, SyncJob, SyncJobState,
};
use tonic::Code;

use crate::{
    exec,
    fake_http::{HoldPoint, ResponseTemplate},
    fake_providers::{FakeProvider, Kind},
    helpers::{Backend, TestApp, authed, token, wait_for},
    integrations::{connect, spawn_with_fakes, start_full_sync, start_sync, wait_for_job},
};

crate::on_both_backends!(
    a_hostile_retry_after_parks_the_job_and_the_server_keeps_serving,
    a_job_claimed_with_its_attempts_spent_is_failed,
    a_429_storm_ends_with_a_clear_reason,
    a_list_that_does_not_exist_fails_the_job_and_the_integration,
    jobs_are_listed_newest_first_and_a_running_one_can_be_canceled,
);

async fn finished(app: &TestApp, user: &str, job: &SyncJob) -> SyncJob {
    wait_for_job(app, user, &job.id).await
}

async fn job_now(app: &TestApp, user: &str, id: &str) -> SyncJob {
    crate::integrations::get_job(&mut app.integrations().await, user, id).await
}

/// A 429 whose `Retry-After` is 10^20 seconds used to panic the worker loop (and each replica's
/// loops in turn). Now the wait is clamped to a day, the job is parked, and the workers go on.
async fn a_hostile_retry_after_parks_the_job_and_the_server_keeps_serving(backend: Backend) {
    let hubspot = FakeProvider::start(Kind::Hubspot).await;
    let app = spawn_with_fakes(backend, &[&hubspot], &[("--sync-workers", "1")]).await;
    app.add_contacts("ada", 10).await;
    app.add_contacts("bob", 10).await;
    connect(&app, "ada", &hubspot).await;
    connect(&app, "bob", &hubspot).await;
    hubspot.script(vec![
        ResponseTemplate::new(429)
            .insert_header("retry-after", "99999999999999999999")
            .set_body_json(serde_json::json!({"status": "error", "message": "You have reached your secondly limit.", "policyName": "SECONDLY"})),
    ]);
    let mut client = app.integrations().await;
    let ada = start_sync(&mut client, "ada", Provider::Hubspot).await;
    let parked = wait_for("the job was parked", || async {
        let job = job_now(&app, "ada", &ada.id).await;
        (job.state() == SyncJobState::Queued && !job.last_error.is_empty()).then_some(job)
    })
    .await;
    let resume = parked.next_attempt_time.unwrap_or_default().seconds;
    let now = chrono::Utc::now().timestamp();
    assert!(
        (now + 23 * 3600..=now + 24 * 3600 + 5).contains(&resume),
        "parked for a clamped day, not forever: resumes at {resume}, now {now}"
    );
    assert_eq!(
        parked.attempts, 0,
        "a park gives the attempt back: {parked:?}"
    );
    // The single worker loop is alive: another user's job runs to the end.
    let bob = start_sync(&mut client, "bob", Provider::Hubspot).await;
    let bob = finished(&app, "bob", &bob).await;
    assert_eq!(bob.state(), SyncJobState::Succeeded, "{bob:?}");
    assert_eq!(bob.contacts_done, 10);
    let metrics = reqwest::get(app.metrics_url())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .text()
        .await
        .unwrap_or_default();
    // Exported at zero from start-up: any other value is a panic.
    assert!(
        metrics
            .lines()
            .filter(|l| l.starts_with("sync_worker_panics_total"))
            .all(|l| l.ends_with(" 0")),
        "a worker panicked"
    );
    app.stop().await;
}

/// A job whose workers all died (lease expired after its last attempt) is failed when it is
/// claimed again, not run once more than allowed.
async fn a_job_claimed_with_its_attempts_spent_is_failed(backend: Backend) {
    let hubspot = FakeProvider::start(Kind::Hubspot).await;
    let app = spawn_with_fakes(backend, &[&hubspot], &[("--sync-workers", "0")]).await;
    app.add_contacts("ada", 5).await;
    connect(&app, "ada", &hubspot).await;
    let job = start_sync(&mut app.integrations().await, "ada", Provider::Hubspot).await;
    // As a crashed worker leaves it: running, its last attempt used, the lease run out.
    exec!(
        &app.pool,
        "UPDATE sync_jobs SET state = 'running', attempts = max_attempts, lease_owner = 'dead', \
         lease_expires_at = $1",
        chrono::Utc::now() - chrono::Duration::seconds(5)
    );
    let app = app.restart(&[]).await;
    let job = finished(&app, "ada", &job).await;
    assert_eq!(job.state(), SyncJobState::Failed, "{job:?}");
    assert!(
        job.last_error.contains("gave up after"),
        "{}",
        job.last_error
    );
    assert_eq!(hubspot.push_requests(), 0, "it ran once more");
    app.stop().await;
}

/// A 429 storm used to never end (the attempt given back, a flat 2 s wait, `sync.started`
/// logged on every resume). Now each park waits longer and after SYNC_MAX_RATE_LIMITED parks
/// in a row the job fails with the reason; the integration stays usable.
async fn a_429_storm_ends_with_a_clear_reason(backend: Backend) {
    let hubspot = FakeProvider::start(Kind::Hubspot).await;
    let app = spawn_with_fakes(
        backend,
        &[&hubspot],
        &[
            ("--sync-max-rate-limited", "3"),
            ("--sync-retry-max-delay", "400ms"),
        ],
    )
    .await;
    app.add_contacts("ada", 10).await;
    connect(&app, "ada", &hubspot).await;
    hubspot.script(
        (0..200)
            .map(|_| {
                ResponseTemplate::new(429).set_body_json(serde_json::json!({
                    "status": "error", "message": "You have reached your ten_secondly_rolling limit.",
                    "policyName": "TEN_SECONDLY_ROLLING"}))
            })
            .collect(),
    );
    let job = start_sync(&mut app.integrations().await, "ada", Provider::Hubspot).await;
    let job = wait_for_job(&app, "ada", &job.id).await;
    assert_eq!(job.state(), SyncJobState::Failed, "{job:?}");
    assert!(
        job.last_error.contains("kept limiting"),
        "{}",
        job.last_error
    );
    assert!(job.attempts <= 1, "parks do not use attempts: {job:?}");
    // 4 parks x 3 tries each, then it stopped asking.
    let asked = hubspot.push_requests();
    assert_eq!(asked, 4 * 3, "requests in the storm");
    let started = app
        .activity_kinds("ada")
        .await
        .iter()
        .filter(|k| *k == "sync.started")
        .count();
    assert_eq!(started, 1, "sync.started logged on every resume");
    assert_eq!(app.count("integrations", "status = 'active'").await, 1);
    app.stop().await;
}

/// A SendGrid list id that does not exist refuses every batch: the job used to end PARTIAL and
/// the integration stay ACTIVE forever. Now the job is FAILED and the integration ERROR.
async fn a_list_that_does_not_exist_fails_the_job_and_the_integration(backend: Backend) {
    let sendgrid = FakeProvider::start(Kind::Sendgrid).await;
    let app = spawn_with_fakes(backend, &[&sendgrid], &[]).await;
    app.add_contacts("ada", 30).await;
    connect(&app, "ada", &sendgrid).await;
    // Every request names the missing list, the halves of a split batch too.
    sendgrid.script(vec![
        ResponseTemplate::new(400).set_body_json(serde_json::json!({
        "errors": [{"field": "list_ids", "message": "list_ids: l2 does not exist"}]}));
        64
    ]);
    let job = start_sync(&mut app.integrations().await, "ada", Provider::Sendgrid).await;
    let job = finished(&app, "ada", &job).await;
    assert_eq!(job.state(), SyncJobState::Failed, "{job:?}");
    assert_eq!(job.contacts_failed, 30);
    assert!(
        job.last_error.contains("does not exist"),
        "{}",
        job.last_error
    );
    let integration = crate::integrations::list(&app, "ada").await;
    assert_eq!(integration[0].status(), IntegrationStatus::Error);
    assert!(
        integration[0].last_error.contains("does not exist"),
        "{:?}",
        integration[0]
    );
    app.stop().await;
}

/// ListSyncJobs pages through an integration's jobs; CancelSyncJob stops a running job at its
/// next batch; another user's job is NOT_FOUND.
async fn jobs_are_listed_newest_first_and_a_running_one_can_be_canceled(backend: Backend) {
    let hubspot = FakeProvider::start(Kind::Hubspot).await;
    // One worker: when it has finished Cy's job below, it has let go of Ada's.
    let app = spawn_with_fakes(backend, &[&hubspot], &[("--sync-workers", "1")]).await;
    app.add_contacts("ada", 1000).await;
    app.add_contacts_named("cy", "cy", 10).await;
    connect(&app, "ada", &hubspot).await;
    connect(&app, "cy", &hubspot).await;
    // The first batch goes through; the second waits at the provider's door.
    let second_batch = hubspot.hold_pushes(HoldPoint::Arrival, 1);
    let mut client = app.integrations().await;
    let job = start_sync(&mut client, "ada", Provider::Hubspot).await;
    second_batch.arrived(1).await;
    let denied = client
        .cancel_sync_job(authed(
            CancelSyncJobRequest { id: job.id.clone() },
            &token("bob"),
        ))
        .await
        .err()
        .map(|s| s.code());
    assert_eq!(denied, Some(Code::NotFound));
    let canceled = client
        .cancel_sync_job(authed(
            CancelSyncJobRequest { id: job.id.clone() },
            &token("ada"),
        ))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner()
        .job
        .unwrap_or_default();
    assert_eq!(canceled.state(), SyncJobState::Canceled);
    let at_cancel = hubspot.push_requests();
    assert_eq!(at_cancel, 1);
    // The batch in flight is answered; the worker then finds the job canceled and stops.
    second_batch.release();
    let cy = finished(&app, "cy", &start_sync(&mut client, "cy", Provider::Hubspot).await).await;
    assert_eq!(cy.state(), SyncJobState::Succeeded, "{cy:?}");
    let ada_pushes = hubspot.pushes_of("contact");
    assert!(
        ada_pushes <= at_cancel + 1,
        "kept pushing after the cancel: {at_cancel} -> {ada_pushes}"
    );
    assert_eq!(
        job_now(&app, "ada", &job.id).await.state(),
        SyncJobState::Canceled
    );
    // Canceling again is fine; a finished job cannot be canceled.
    client
        .cancel_sync_job(authed(
            CancelSyncJobRequest { id: job.id.clone() },
            &token("ada"),
        ))
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let mut ids = vec![job.id.clone()];
    for _ in 0..4 {
        let next = finished(
            &app,
            "ada",
            &start_full_sync(&mut client, "ada", Provider::Hubspot).await,
        )
        .await;
        ids.push(next.id);
    }
    let done = client
        .cancel_sync_job(authed(
            CancelSyncJobRequest { id: ids[4].clone() },
            &token("ada"),
        ))
        .await
        .err()
        .map(|s| s.code());
    assert_eq!(done, Some(Code::FailedPrecondition));
    ids.reverse();
    let mut listed = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_sync_jobs(authed(
                ListSyncJobsRequest {
                    provider: Provider::Hubspot.into(),
                    page_size: 2,
                    page_token: page_token.clone(),
                },
                &token("ada"),
            ))
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .into_inner();
        listed.extend(page.jobs.into_iter().map(|j| j.id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(listed, ids, "newest first, each once");
    let others = client
        .list_sync_jobs(authed(
            ListSyncJobsRequest {
                provider: Provider::Hubspot.into(),
                page_size: 0,
                page_token: String::new(),
            },
            &token("bob"),
        ))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner();
    assert!(others.jobs.is_empty(), "another user's jobs were listed");
    let bad = client
        .list_sync_jobs(authed(
            ListSyncJobsRequest {
                provider: Provider::Hubspot.into(),
                page_size: 0,
                page_token: "not-a-token".into(),
            },
            &token("ada"),
        ))
        .await
        .err()
        .map(|s| s.code());
    assert_eq!(bad, Some(Code::InvalidArgument));
    app.stop().await;
}
