//! Sync jobs in the field (issue 12): hostile provider headers, incremental pushes, the
//! scheduler, recurring directions, 429 storms that end, a list that does not exist, retention,
//! streams woken by notifications, listing and canceling jobs. Each test fails on the code
//! before that issue.

use std::time::Duration;

use nexus_billing::grpc::proto::integrations::{
    CancelSyncJobRequest, IntegrationStatus, ListSyncJobsRequest, Provider, SyncDirection, SyncJob,
    SyncJobState, UpdateIntegrationRequest, WatchSyncJobRequest,
};
use tonic::Code;
use wiremock::ResponseTemplate;

use crate::{
    exec,
    fake_providers::{FakeProvider, Kind},
    helpers::{Backend, TestApp, authed, token},
    imports::start_import,
    integrations::{
        connect, connect_request, spawn_with_fakes, start_full_sync, start_sync, wait_for_job,
    },
};

crate::on_both_backends!(
    a_hostile_retry_after_parks_the_job_and_the_server_keeps_serving,
    a_job_claimed_with_its_attempts_spent_is_failed,
    a_push_sends_only_the_contacts_changed_since_the_last_one,
    the_scheduler_queues_due_syncs_and_survives_a_crash_between_jobs,
    a_one_off_import_leaves_the_recurring_direction_alone,
    a_429_storm_ends_with_a_clear_reason,
    a_list_that_does_not_exist_fails_the_job_and_the_integration,
    old_jobs_and_activity_are_pruned,
    a_watch_stream_is_woken_by_the_change_and_streams_are_capped,
    jobs_are_listed_newest_first_and_a_running_one_can_be_canceled,
);

async fn finished(app: &TestApp, user: &str, job: &SyncJob) -> SyncJob {
    wait_for_job(app, user, &job.id, Duration::from_secs(30)).await
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
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let parked = loop {
        let job = job_now(&app, "ada", &ada.id).await;
        if job.state() == SyncJobState::Queued && !job.last_error.is_empty() {
            break job;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never parked: {job:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
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
    let metrics = reqwest::get(app.http_url("/metrics"))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .text()
        .await
        .unwrap_or_default();
    assert!(
        !metrics.contains("sync_worker_panics_total"),
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

/// Every sync used to push every contact again. Now a push sends the contacts changed since
/// the last successful one; `full` sends all.
async fn a_push_sends_only_the_contacts_changed_since_the_last_one(backend: Backend) {
    let hubspot = FakeProvider::start(Kind::Hubspot).await;
    let app = spawn_with_fakes(backend, &[&hubspot], &[]).await;
    app.add_contacts("ada", 250).await;
    connect(&app, "ada", &hubspot).await;
    let mut client = app.integrations().await;
    let first = finished(
        &app,
        "ada",
        &start_sync(&mut client, "ada", Provider::Hubspot).await,
    )
    .await;
    assert_eq!(first.state(), SyncJobState::Succeeded, "{first:?}");
    assert_eq!(hubspot.pushed_emails().len(), 250);
    assert_eq!(hubspot.push_requests(), 3);

    let second = finished(
        &app,
        "ada",
        &start_sync(&mut client, "ada", Provider::Hubspot).await,
    )
    .await;
    assert_eq!(second.state(), SyncJobState::Succeeded, "{second:?}");
    assert_eq!((second.contacts_done, second.contacts_total), (0, 0));
    assert_eq!(
        hubspot.push_requests(),
        3,
        "a sync with nothing changed sent requests"
    );

    // Three contacts change (the card application moves updated_at).
    for email in [
        "contact7@example.com",
        "contact123@example.com",
        "contact249@example.com",
    ] {
        exec!(
            &app.pool,
            "UPDATE contacts SET first_name = 'Changed', updated_at = $2 WHERE email = $1",
            email,
            chrono::Utc::now()
        );
    }
    let third = finished(
        &app,
        "ada",
        &start_sync(&mut client, "ada", Provider::Hubspot).await,
    )
    .await;
    assert_eq!(third.state(), SyncJobState::Succeeded, "{third:?}");
    assert_eq!(third.contacts_done, 3, "{third:?}");
    let pushes = hubspot.pushes();
    assert_eq!(pushes.len(), 4, "one request for the three");
    let mut sent = pushes[3].emails.clone();
    sent.sort();
    assert_eq!(
        sent,
        vec![
            "contact123@example.com",
            "contact249@example.com",
            "contact7@example.com"
        ]
    );

    let full = finished(
        &app,
        "ada",
        &start_full_sync(&mut client, "ada", Provider::Hubspot).await,
    )
    .await;
    assert_eq!(full.state(), SyncJobState::Succeeded, "{full:?}");
    assert_eq!(hubspot.pushed_emails().len(), 250 + 3 + 250);
    hubspot.assert_no_problems();
    app.stop().await;
}

async fn active_jobs(app: &TestApp) -> i64 {
    app.count("sync_jobs", "state IN ('queued', 'running')")
        .await
}

async fn wait_until<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Recurring syncs used to be a chain (each finished job queued the next): a crash between the
/// two ended them silently. Now the scheduler queues whatever is due, whatever happened to the
/// last job, and never a second job beside an active one.
async fn the_scheduler_queues_due_syncs_and_survives_a_crash_between_jobs(backend: Backend) {
    let zapier = FakeProvider::start(Kind::Zapier).await;
    let app = spawn_with_fakes(backend, &[&zapier], &[]).await;
    app.add_contacts("ada", 20).await;
    let mut request = connect_request(&zapier);
    request
        .settings
        .insert("syncInterval".into(), "3600".into());
    let mut client = app.integrations().await;
    client
        .connect_integration(authed(request, &token("ada")))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // Connecting starts the first sync at once; the next is due in an hour.
    wait_until(
        "the first sync did not run",
        Duration::from_secs(20),
        || async { app.count("sync_jobs", "state = 'succeeded'").await == 1 },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(active_jobs(&app).await, 0, "nothing is due for an hour");
    assert_eq!(zapier.pushed_emails().len(), 20);

    // The last job broke in a way that never reached its end (a crash), and the hour passed.
    exec!(
        &app.pool,
        "UPDATE sync_jobs SET state = 'failed', last_error = 'worker died'"
    );
    exec!(
        &app.pool,
        "UPDATE integrations SET next_sync_at = $1",
        chrono::Utc::now() - chrono::Duration::seconds(1)
    );
    wait_until(
        "the scheduler did not queue the due sync",
        Duration::from_secs(20),
        || async { app.count("sync_jobs", "state = 'succeeded'").await == 1 },
    )
    .await;
    assert_eq!(app.count("sync_jobs", "").await, 2);
    let next: i64 = app
        .count(
            "integrations",
            &format!(
                "next_sync_at > '{}'",
                (chrono::Utc::now() + chrono::Duration::minutes(50)).format("%Y-%m-%dT%H:%M:%S")
            ),
        )
        .await;
    assert_eq!(next, 1, "the next sync is an interval away again");

    // Due while a job is active: no second job.
    zapier.delay_pushes(Duration::from_millis(1500));
    exec!(
        &app.pool,
        "UPDATE contacts SET first_name = 'Changed', updated_at = $1",
        chrono::Utc::now()
    );
    let running = start_sync(&mut client, "ada", Provider::Zapier).await;
    exec!(
        &app.pool,
        "UPDATE integrations SET next_sync_at = $1",
        chrono::Utc::now() - chrono::Duration::seconds(1)
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        active_jobs(&app).await,
        1,
        "a second job beside an active one"
    );
    let running = finished(&app, "ada", &running).await;
    assert_eq!(running.state(), SyncJobState::Succeeded, "{running:?}");
    app.stop().await;
}

/// A one-off IMPORT used to turn the recurring push into BOTH forever. The recurring direction
/// is the `syncDirection` setting, changed only by UpdateIntegration (no reconnecting).
async fn a_one_off_import_leaves_the_recurring_direction_alone(backend: Backend) {
    let hubspot = FakeProvider::start(Kind::Hubspot).await;
    hubspot.set_remote(&[("h1@x.com", "H", "One", "2024-06-01T00:00:00Z")]);
    let app = spawn_with_fakes(backend, &[&hubspot], &[]).await;
    app.add_contacts("ada", 3).await;
    let mut request = connect_request(&hubspot);
    request
        .settings
        .insert("syncInterval".into(), "3600".into());
    let mut client = app.integrations().await;
    client
        .connect_integration(authed(request, &token("ada")))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    wait_until(
        "the first sync did not run",
        Duration::from_secs(20),
        || async { app.count("sync_jobs", "state = 'succeeded'").await == 1 },
    )
    .await;
    let import = start_import(&app, "ada", Provider::Hubspot, SyncDirection::Import).await;
    let import = finished(&app, "ada", &import).await;
    assert_eq!(import.state(), SyncJobState::Succeeded, "{import:?}");
    assert_eq!(
        app.count("integrations", "sync_direction = 'push'").await,
        1
    );

    let due = || async {
        exec!(
            &app.pool,
            "UPDATE integrations SET next_sync_at = $1",
            chrono::Utc::now() - chrono::Duration::seconds(1)
        );
    };
    due().await;
    wait_until("no scheduled sync", Duration::from_secs(20), || async {
        app.count("sync_jobs", "state = 'succeeded'").await == 3
    })
    .await;
    assert_eq!(
        app.count("sync_jobs", "direction = 'push'").await,
        2,
        "the scheduled sync after the import is a push"
    );

    // UpdateIntegration changes the recurring direction, without checking credentials again.
    let verify_calls = hubspot.verify_calls();
    let updated = client
        .update_integration(authed(
            UpdateIntegrationRequest {
                provider: Provider::Hubspot.into(),
                settings: [
                    ("syncInterval".to_string(), "7200".to_string()),
                    ("syncDirection".to_string(), "both".to_string()),
                ]
                .into(),
            },
            &token("ada"),
        ))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner()
        .integration
        .unwrap_or_default();
    assert_eq!(
        updated.settings.get("syncDirection").map(String::as_str),
        Some("both")
    );
    assert_eq!(updated.status(), IntegrationStatus::Active);
    assert_eq!(hubspot.verify_calls(), verify_calls);
    due().await;
    wait_until(
        "no scheduled sync after the update",
        Duration::from_secs(20),
        || async {
            app.count("sync_jobs", "state = 'succeeded' AND direction = 'both'")
                .await
                == 1
        },
    )
    .await;
    // A bad direction is refused, for a provider that cannot import too.
    let refused = client
        .update_integration(authed(
            UpdateIntegrationRequest {
                provider: Provider::Hubspot.into(),
                settings: [("syncDirection".to_string(), "sideways".to_string())].into(),
            },
            &token("ada"),
        ))
        .await
        .err()
        .map(|s| s.code());
    assert_eq!(refused, Some(Code::InvalidArgument));
    let missing = client
        .update_integration(authed(
            UpdateIntegrationRequest {
                provider: Provider::Mailchimp.into(),
                settings: Default::default(),
            },
            &token("ada"),
        ))
        .await
        .err()
        .map(|s| s.code());
    assert_eq!(missing, Some(Code::NotFound));
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
    let job = wait_for_job(&app, "ada", &job.id, Duration::from_secs(60)).await;
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
    sendgrid.script(vec![
        ResponseTemplate::new(400).set_body_json(serde_json::json!({
        "errors": [{"field": "list_ids", "message": "list_ids: l2 does not exist"}]})),
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

/// Finished jobs and activity entries were kept forever. Now those older than RETENTION_DAYS
/// go, in batches; recent ones and active jobs stay.
async fn old_jobs_and_activity_are_pruned(backend: Backend) {
    let hubspot = FakeProvider::start(Kind::Hubspot).await;
    let app = spawn_with_fakes(backend, &[&hubspot], &[("--sync-workers", "0")]).await;
    connect(&app, "ada", &hubspot).await;
    let integration = crate::integrations::list(&app, "ada").await[0].id.clone();
    let old = chrono::Utc::now() - chrono::Duration::days(100);
    let recent = chrono::Utc::now() - chrono::Duration::days(10);
    for i in 0..1200 {
        let (state, finished_at) = match i % 3 {
            0 => ("succeeded", Some(old)),
            1 => ("failed", Some(recent)),
            _ => ("canceled", Some(old)),
        };
        exec!(
            &app.pool,
            pg: "INSERT INTO sync_jobs (id, integration_id, user_id, direction, state, finished_at, created_at) \
                 VALUES ($1::uuid, $2::uuid, 'ada', 'push', $3, $4, $5)",
            sqlite: "INSERT INTO sync_jobs (id, integration_id, user_id, direction, state, finished_at, created_at) \
                 VALUES ($1, $2, 'ada', 'push', $3, $4, $5)",
            uuid::Uuid::new_v4().to_string(),
            integration.clone(),
            state,
            finished_at,
            old
        );
    }
    // An old job still queued is not finished: it stays.
    exec!(
        &app.pool,
        pg: "INSERT INTO sync_jobs (id, integration_id, user_id, direction, state, created_at) \
             VALUES ($1::uuid, $2::uuid, 'ada', 'push', 'queued', $3)",
        sqlite: "INSERT INTO sync_jobs (id, integration_id, user_id, direction, state, created_at) \
             VALUES ($1, $2, 'ada', 'push', 'queued', $3)",
        uuid::Uuid::new_v4().to_string(),
        integration.clone(),
        old
    );
    for i in 0..700 {
        exec!(
            &app.pool,
            "INSERT INTO activity_logs (user_id, kind, message, created_at) VALUES ('ada', 'sync.succeeded', 'x', $1)",
            if i % 2 == 0 { old } else { recent }
        );
    }
    assert_eq!(app.count("sync_jobs", "").await, 1201);
    // Retention runs when the service starts, then hourly.
    let app = app.restart(&[("--sync-workers", "0")]).await;
    wait_until(
        "old rows were not pruned",
        Duration::from_secs(20),
        || async { app.count("sync_jobs", "").await == 400 + 1 },
    )
    .await;
    assert_eq!(app.count("sync_jobs", "state = 'queued'").await, 1);
    assert_eq!(app.count("sync_jobs", "state = 'failed'").await, 400);
    wait_until(
        "old activity was not pruned",
        Duration::from_secs(20),
        || async { app.count("activity_logs", "kind = 'sync.succeeded'").await == 350 },
    )
    .await;
    app.stop().await;
}

/// WatchSyncJob used to poll the database 4 times a second per stream, with no cap. Now a
/// change wakes it (its fallback look is 15 s away), and one user holds a bounded number.
async fn a_watch_stream_is_woken_by_the_change_and_streams_are_capped(backend: Backend) {
    let hubspot = FakeProvider::start(Kind::Hubspot).await;
    let app = spawn_with_fakes(
        backend,
        &[&hubspot],
        &[
            ("--sync-workers", "0"),
            ("--max-watch-streams-per-user", "2"),
        ],
    )
    .await;
    connect(&app, "ada", &hubspot).await;
    let mut client = app.integrations().await;
    let job = start_sync(&mut client, "ada", Provider::Hubspot).await;
    let watcher = client.clone();
    let watch = |id: String| {
        let mut client = watcher.clone();
        async move {
            client
                .watch_sync_job(authed(WatchSyncJobRequest { id }, &token("ada")))
                .await
                .map(tonic::Response::into_inner)
        }
    };
    let mut first = watch(job.id.clone())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let second = watch(job.id.clone())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let third = watch(job.id.clone()).await.err().map(|s| s.code());
    assert_eq!(
        third,
        Some(Code::ResourceExhausted),
        "a third stream for one user"
    );
    // Another user is not limited by ada's streams.
    let other = client
        .watch_sync_job(authed(
            WatchSyncJobRequest { id: job.id.clone() },
            &token("bob"),
        ))
        .await
        .err()
        .map(|s| s.code());
    assert_eq!(other, Some(Code::NotFound));
    let now = first.message().await.ok().flatten().and_then(|m| m.job);
    assert_eq!(now.map(|j| j.state()), Some(SyncJobState::Queued));

    let canceled_at = tokio::time::Instant::now();
    client
        .cancel_sync_job(authed(
            CancelSyncJobRequest { id: job.id.clone() },
            &token("ada"),
        ))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let update = tokio::time::timeout(Duration::from_secs(5), first.message())
        .await
        .unwrap_or_else(|_| panic!("the stream was not woken"))
        .ok()
        .flatten()
        .and_then(|m| m.job);
    assert_eq!(update.map(|j| j.state()), Some(SyncJobState::Canceled));
    assert!(
        canceled_at.elapsed() < Duration::from_secs(2),
        "woken by polling, not by the change: {:?}",
        canceled_at.elapsed()
    );
    // The stream ends after a final state, freeing its slot.
    assert!(first.message().await.ok().flatten().is_none());
    drop(first);
    drop(second);
    let job = start_sync(&mut client, "ada", Provider::Hubspot).await;
    let mut opened = None;
    for _ in 0..40 {
        if let Ok(stream) = watch(job.id.clone()).await {
            opened = Some(stream);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(opened.is_some(), "closed streams kept their slots");
    // Stopping the service ends open streams (it does not wait for their jobs to finish).
    let mut opened = opened.unwrap_or_else(|| unreachable!());
    let _ = opened.message().await;
    let stopping = tokio::spawn(app.stop());
    let ended = tokio::time::timeout(Duration::from_secs(5), opened.message()).await;
    assert!(ended.is_ok(), "an open stream held the shutdown");
    stopping.await.unwrap_or_else(|e| panic!("{e}"));
}

/// ListSyncJobs pages through an integration's jobs; CancelSyncJob stops a running job at its
/// next batch; another user's job is NOT_FOUND.
async fn jobs_are_listed_newest_first_and_a_running_one_can_be_canceled(backend: Backend) {
    let hubspot = FakeProvider::start(Kind::Hubspot).await;
    hubspot.delay_pushes(Duration::from_millis(300));
    let app = spawn_with_fakes(backend, &[&hubspot], &[]).await;
    app.add_contacts("ada", 1000).await;
    connect(&app, "ada", &hubspot).await;
    let mut client = app.integrations().await;
    let job = start_sync(&mut client, "ada", Provider::Hubspot).await;
    wait_until(
        "the job did not start pushing",
        Duration::from_secs(20),
        || async { hubspot.push_requests() >= 1 },
    )
    .await;
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
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        hubspot.push_requests() <= at_cancel + 1,
        "kept pushing after the cancel: {at_cancel} -> {}",
        hubspot.push_requests()
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

    hubspot.delay_pushes(Duration::ZERO);
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
