//! Scheduled and incremental syncs (issue 12): pushes send only what changed, the scheduler
//! queues what is due whatever happened to the last job, the recurring direction is a setting,
//! old jobs and activity are pruned, and WatchSyncJob is woken by changes. Each test fails on
//! the code before that issue.


use nexus_billing::grpc::proto::integrations::{
    CancelSyncJobRequest, IntegrationStatus, Provider, SyncDirection, SyncJob, SyncJobState,
    UpdateIntegrationRequest, WatchSyncJobRequest,
};
use tonic::Code;

use crate::{
    exec,
    fake_providers::{FakeProvider, Kind},
    fake_http::HoldPoint,
    helpers::{Backend, PATIENCE, TestApp, authed, eventually, token, wait_for},
    imports::start_import,
    integrations::{
        connect, connect_request, spawn_with_fakes, start_full_sync, start_sync, wait_for_job,
    },
};

crate::on_both_backends!(
    a_push_sends_only_the_contacts_changed_since_the_last_one,
    the_scheduler_queues_due_syncs_and_survives_a_crash_between_jobs,
    a_one_off_import_leaves_the_recurring_direction_alone,
    old_jobs_and_activity_are_pruned,
    a_watch_stream_is_woken_by_the_change_and_streams_are_capped,
);

/// Connects `fake` for `user` with `syncInterval` an hour, and waits for the first sync (which
/// connecting starts at once) to succeed.
async fn connect_hourly(app: &TestApp, user: &str, fake: &FakeProvider) {
    let mut request = connect_request(fake);
    request
        .settings
        .insert("syncInterval".into(), "3600".into());
    app.integrations()
        .await
        .connect_integration(authed(request, &token(user)))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    eventually("the first sync did not run", || async { app.count("sync_jobs", "state = 'succeeded'").await == 1 },
    )
    .await;
}

async fn finished(app: &TestApp, user: &str, job: &SyncJob) -> SyncJob {
    wait_for_job(app, user, &job.id).await
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

/// Recurring syncs used to be a chain (each finished job queued the next): a crash between the
/// two ended them silently. Now the scheduler queues whatever is due, whatever happened to the
/// last job, and never a second job beside an active one.
async fn the_scheduler_queues_due_syncs_and_survives_a_crash_between_jobs(backend: Backend) {
    let zapier = FakeProvider::start(Kind::Zapier).await;
    let app = spawn_with_fakes(backend, &[&zapier], &[]).await;
    app.add_contacts("ada", 20).await;
    let mut client = app.integrations().await;
    // Connecting starts the first sync at once; the next is due in an hour (that the
    // scheduler queues nothing before it is due is a store contract test).
    connect_hourly(&app, "ada", &zapier).await;
    assert_eq!(active_jobs(&app).await, 0);
    assert_eq!(next_sync_an_hour_away(&app).await, 1);
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
    eventually("the scheduler did not queue the due sync", || async { app.count("sync_jobs", "state = 'succeeded'").await == 1 },
    )
    .await;
    assert_eq!(app.count("sync_jobs", "").await, 2);
    assert_eq!(
        next_sync_an_hour_away(&app).await,
        1,
        "the next sync is an interval away again"
    );

    // Due while a job is active (its push held at the provider's door): no second job.
    let push = zapier.hold_pushes(HoldPoint::Arrival, 0);
    exec!(
        &app.pool,
        "UPDATE contacts SET first_name = 'Changed', updated_at = $1",
        chrono::Utc::now()
    );
    let running = start_sync(&mut client, "ada", Provider::Zapier).await;
    push.arrived(1).await;
    exec!(
        &app.pool,
        "UPDATE integrations SET next_sync_at = $1",
        chrono::Utc::now() - chrono::Duration::seconds(1)
    );
    // The scheduler has been over it once it moved the next sync an interval on.
    eventually("the scheduler took the due sync", || async {
        next_sync_an_hour_away(&app).await == 1
    })
    .await;
    assert_eq!(
        active_jobs(&app).await,
        1,
        "a second job beside an active one"
    );
    push.release();
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
    let mut client = app.integrations().await;
    connect_hourly(&app, "ada", &hubspot).await;
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
    eventually("no scheduled sync", || async {
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
    eventually("no scheduled sync after the update", || async {
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

/// Finished jobs and activity entries were kept forever. Now those older than RETENTION_DAYS
/// go, in batches; recent ones and active jobs stay.
async fn old_jobs_and_activity_are_pruned(backend: Backend) {
    let hubspot = FakeProvider::start(Kind::Hubspot).await;
    // Retention also runs when this first server starts, at a moment of its own: with ten
    // years kept it cannot prune the rows being seeded (CI saw 9 of them go, once).
    let app = spawn_with_fakes(
        backend,
        &[&hubspot],
        &[("--sync-workers", "0"), ("--retention-days", "3650")],
    )
    .await;
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
    eventually("old rows were not pruned", || async { app.count("sync_jobs", "").await == 400 + 1 },
    )
    .await;
    assert_eq!(app.count("sync_jobs", "state = 'queued'").await, 1);
    assert_eq!(app.count("sync_jobs", "state = 'failed'").await, 400);
    eventually("old activity was not pruned", || async { app.count("activity_logs", "kind = 'sync.succeeded'").await == 350 },
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
            ("--watch-fallback-interval", "1h"),
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

    // The stream's fallback look is an hour away: only the change can wake it.
    client
        .cancel_sync_job(authed(
            CancelSyncJobRequest { id: job.id.clone() },
            &token("ada"),
        ))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let update = tokio::time::timeout(PATIENCE, first.message())
        .await
        .unwrap_or_else(|_| panic!("the stream was not woken by the change"))
        .ok()
        .flatten()
        .and_then(|m| m.job);
    assert_eq!(update.map(|j| j.state()), Some(SyncJobState::Canceled));
    // The stream ends after a final state, freeing its slot.
    assert!(first.message().await.ok().flatten().is_none());
    drop(first);
    drop(second);
    let job = start_sync(&mut client, "ada", Provider::Hubspot).await;
    // A closed stream's slot is freed as its task ends.
    let mut opened = wait_for("a closed stream's slot was freed", || {
        let open = watch(job.id.clone());
        async move { open.await.ok() }
    })
    .await;
    // Stopping the service ends open streams (it does not wait for their jobs to finish).
    let _ = opened.message().await;
    let stopping = tokio::spawn(app.stop());
    let ended = tokio::time::timeout(PATIENCE, opened.message()).await;
    assert!(ended.is_ok(), "an open stream held the shutdown");
    stopping.await.unwrap_or_else(|e| panic!("{e}"));
}

/// 1 if the integration's next sync is more than 50 minutes away (an hourly interval, just
/// set), else 0.
async fn next_sync_an_hour_away(app: &TestApp) -> i64 {
    let later = (chrono::Utc::now() + chrono::Duration::minutes(50)).format("%Y-%m-%dT%H:%M:%S");
    app.count("integrations", &format!("next_sync_at > '{later}'"))
        .await
}

async fn active_jobs(app: &TestApp) -> i64 {
    app.count("sync_jobs", "state IN ('queued', 'running')")
        .await
}
