//! Durable sync jobs against fake providers: de-duplication, authorization, retries and rate
//! limits, partial success, permanent failures, restarts and crashes mid-job, two servers on one
//! database, and recurring syncs.

use std::{collections::HashSet, time::Duration};

use nexus_billing::grpc::proto::integrations::{
    DisconnectIntegrationRequest, GetSyncJobRequest, IntegrationStatus, ListIntegrationsRequest,
    Provider, SyncDirection, SyncIntegrationRequest, SyncJobState, WatchSyncJobRequest,
};
use serde_json::json;
use tonic::Code;
use crate::fake_http::ResponseTemplate;

use crate::{
    fake_http::HoldPoint,
    fake_providers::{FakeProvider, Kind},
    helpers::{Backend, authed, eventually, token, wait_for},
    integrations::{connect, get_job, spawn_with_fakes, start_sync, wait_for_job},
};

crate::on_both_backends!(
    a_second_sync_request_gets_the_active_job,
    another_users_job_and_integration_are_not_found,
    a_429_with_retry_after_is_waited_out_then_the_batch_succeeds,
    two_outages_then_success_finish_in_one_attempt,
    refused_credentials_stop_the_job_and_mark_the_integration,
    refused_records_make_the_job_partial_without_resending,
    an_outage_that_lasts_fails_after_the_bounded_attempts,
    a_flaky_provider_does_not_exhaust_the_attempts_of_a_job_that_keeps_moving,
    the_rate_limiter_spaces_a_large_sync,
    a_daily_limit_parks_the_job_until_the_reset,
    a_restart_mid_job_resumes_from_the_checkpoint,
    a_crash_mid_job_is_recovered_after_the_lease_expires,
    two_servers_on_one_database_run_each_job_once,
    sync_interval_starts_a_sync_and_sets_the_next_one_an_interval_away,
    contacts_without_email_are_skipped_with_a_reason,
    disconnecting_mid_job_stops_it_and_deletes_its_jobs,
);

fn all_emails(n: usize) -> Vec<String> {
    let mut want: Vec<String> = (0..n).map(|i| format!("contact{i}@example.com")).collect();
    want.sort();
    want
}

fn sorted(mut emails: Vec<String>) -> Vec<String> {
    emails.sort();
    emails
}

async fn a_second_sync_request_gets_the_active_job(backend: Backend) {
    let hubspot = FakeProvider::start(Kind::Hubspot).await;
    // No workers: the job stays queued.
    let app = spawn_with_fakes(backend, &[&hubspot], &[("--sync-workers", "0")]).await;
    connect(&app, "ada", &hubspot).await;
    let mut client = app.integrations().await;
    let first = start_sync(&mut client, "ada", Provider::Hubspot).await;
    assert_eq!(first.state(), SyncJobState::Queued);
    let second = start_sync(&mut client, "ada", Provider::Hubspot).await;
    assert_eq!(first.id, second.id);
    assert_eq!(app.count("sync_jobs", "").await, 1);

    // Asking to import while a push is queued widens that job to both directions.
    let widened = client
        .sync_integration(authed(
            SyncIntegrationRequest {
                full: false,
                provider: Provider::Hubspot.into(),
                direction: SyncDirection::Import.into(),
            },
            &token("ada"),
        ))
        .await
        .unwrap_or_else(|e| panic!("import: {e}"))
        .into_inner()
        .job
        .unwrap_or_default();
    assert_eq!(widened.id, first.id);
    assert_eq!(widened.direction(), SyncDirection::Both);
    assert_eq!(app.count("sync_jobs", "").await, 1);
    // Zapier cannot import.
    let status = client
        .sync_integration(authed(
            SyncIntegrationRequest {
                full: false,
                provider: Provider::Zapier.into(),
                direction: SyncDirection::Import.into(),
            },
            &token("ada"),
        ))
        .await
        .err()
        .unwrap_or_else(|| panic!("Zapier has nothing to import"));
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    app.stop().await;
}

async fn another_users_job_and_integration_are_not_found(backend: Backend) {
    let hubspot = FakeProvider::start(Kind::Hubspot).await;
    let app = spawn_with_fakes(backend, &[&hubspot], &[("--sync-workers", "0")]).await;
    connect(&app, "ada", &hubspot).await;
    let mut client = app.integrations().await;
    let job = start_sync(&mut client, "ada", Provider::Hubspot).await;

    let mallory = token("mallory");
    for id in [
        job.id.as_str(),
        "not-a-uuid",
        "00000000-0000-0000-0000-000000000000",
    ] {
        let get = client
            .get_sync_job(authed(GetSyncJobRequest { id: id.into() }, &mallory))
            .await
            .err();
        assert_eq!(get.map(|s| s.code()), Some(Code::NotFound), "{id}");
        let watch = client
            .watch_sync_job(authed(WatchSyncJobRequest { id: id.into() }, &mallory))
            .await
            .err();
        assert_eq!(watch.map(|s| s.code()), Some(Code::NotFound), "{id}");
    }
    let sync = client
        .sync_integration(authed(
            SyncIntegrationRequest {
                full: false,
                provider: Provider::Hubspot.into(),
                direction: 0,
            },
            &mallory,
        ))
        .await
        .err();
    assert_eq!(sync.map(|s| s.code()), Some(Code::NotFound));
    let disconnect = client
        .disconnect_integration(authed(
            DisconnectIntegrationRequest {
                provider: Provider::Hubspot.into(),
            },
            &mallory,
        ))
        .await
        .err();
    assert_eq!(disconnect.map(|s| s.code()), Some(Code::NotFound));
    let listed = client
        .list_integrations(authed(ListIntegrationsRequest {}, &mallory))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner()
        .integrations;
    assert!(listed.is_empty());
    // Ada's integration and job are untouched.
    assert_eq!(app.count("integrations", "").await, 1);
    assert_eq!(get_job(&mut client, "ada", &job.id).await.id, job.id);
    app.stop().await;
}

async fn a_429_with_retry_after_is_waited_out_then_the_batch_succeeds(backend: Backend) {
    let hubspot = FakeProvider::start(Kind::Hubspot).await;
    hubspot.script(vec![ResponseTemplate::new(429)
        .insert_header("retry-after", "1")
        .set_body_json(json!({"status": "error", "message": "You have reached your ten_secondly_rolling limit.", "policyName": "TEN_SECONDLY_ROLLING"}))]);
    let app = spawn_with_fakes(backend, &[&hubspot], &[]).await;
    app.add_contacts("ada", 300).await;
    connect(&app, "ada", &hubspot).await;
    let started = std::time::Instant::now();
    let mut client = app.integrations().await;
    let job = start_sync(&mut client, "ada", Provider::Hubspot).await;
    let job = wait_for_job(&app, "ada", &job.id).await;
    assert_eq!(job.state(), SyncJobState::Succeeded, "{job:?}");
    assert_eq!(job.attempts, 1);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After was not honoured"
    );
    assert_eq!(hubspot.push_requests(), 4, "3 batches and one retried");
    assert_eq!(sorted(hubspot.pushed_emails()), all_emails(300));
    app.stop().await;
}

async fn two_outages_then_success_finish_in_one_attempt(backend: Backend) {
    let sendgrid = FakeProvider::start(Kind::Sendgrid).await;
    sendgrid.script(vec![
        ResponseTemplate::new(503).set_body_string("upstream unavailable"),
        ResponseTemplate::new(502),
    ]);
    let app = spawn_with_fakes(backend, &[&sendgrid], &[]).await;
    app.add_contacts("ada", 50).await;
    connect(&app, "ada", &sendgrid).await;
    let mut client = app.integrations().await;
    let job = start_sync(&mut client, "ada", Provider::Sendgrid).await;
    let job = wait_for_job(&app, "ada", &job.id).await;
    assert_eq!(job.state(), SyncJobState::Succeeded, "{job:?}");
    assert_eq!(job.attempts, 1);
    assert_eq!(sendgrid.push_requests(), 3);
    assert_eq!(sorted(sendgrid.pushed_emails()), all_emails(50));
    sendgrid.assert_no_problems();
    app.stop().await;
}

async fn refused_credentials_stop_the_job_and_mark_the_integration(backend: Backend) {
    let hubspot = FakeProvider::start(Kind::Hubspot).await;
    let app = spawn_with_fakes(backend, &[&hubspot], &[]).await;
    app.add_contacts("ada", 250).await;
    connect(&app, "ada", &hubspot).await;
    // The token is revoked after connecting: every push now gets 401.
    hubspot.script(vec![
        ResponseTemplate::new(401).set_body_json(json!({"status": "error", "message": "The access token is expired or invalid", "category": "EXPIRED_AUTHENTICATION"}));
        10
    ]);
    let mut client = app.integrations().await;
    let job = start_sync(&mut client, "ada", Provider::Hubspot).await;
    let job = wait_for_job(&app, "ada", &job.id).await;
    assert_eq!(job.state(), SyncJobState::Failed);
    assert!(job.last_error.contains("expired or invalid"), "{job:?}");
    // The job is FAILED, a final state: no attempt of it runs any more, so the count is final.
    assert_eq!(job.attempts, 1);
    assert_eq!(hubspot.push_requests(), 1, "a 401 is not retried");
    let listed = client
        .list_integrations(authed(ListIntegrationsRequest {}, &token("ada")))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner()
        .integrations;
    assert_eq!(listed[0].status(), IntegrationStatus::Error);
    assert!(listed[0].last_error.contains("expired or invalid"));
    let again = client
        .sync_integration(authed(
            SyncIntegrationRequest {
                full: false,
                provider: Provider::Hubspot.into(),
                direction: 0,
            },
            &token("ada"),
        ))
        .await
        .err();
    assert_eq!(again.map(|s| s.code()), Some(Code::FailedPrecondition));
    // The activity entries are written as the job ends, the integration's just after the
    // job's (a flake hunt once read between the two): wait for both.
    wait_for("the job's and the integration's activity", || async {
        let kinds = app.activity_kinds("ada").await;
        (kinds.contains(&"sync.failed".to_string())
            && kinds.contains(&"integration.error".to_string()))
        .then_some(())
    })
    .await;
    app.stop().await;
}

async fn refused_records_make_the_job_partial_without_resending(backend: Backend) {
    for kind in [Kind::Hubspot, Kind::Mailchimp, Kind::Sendgrid] {
        let fake = FakeProvider::start(kind).await;
        fake.refuse(&[
            "contact7@example.com",
            "contact150@example.com",
            "contact999@example.com",
        ]);
        let app = spawn_with_fakes(backend, &[&fake], &[]).await;
        app.add_contacts("ada", 1000).await;
        connect(&app, "ada", &fake).await;
        let mut client = app.integrations().await;
        let job = start_sync(&mut client, "ada", provider(kind)).await;
        let job = wait_for_job(&app, "ada", &job.id).await;
        assert_eq!(job.state(), SyncJobState::Partial, "{kind:?}: {job:?}");
        assert_eq!(job.contacts_failed, 3, "{kind:?}");
        assert_eq!(job.contacts_done, 1000);
        if kind != Kind::Sendgrid {
            // SendGrid only counts refused contacts; the others name them.
            let named: HashSet<&str> = job.failures.iter().map(|f| f.email.as_str()).collect();
            assert_eq!(
                named,
                HashSet::from([
                    "contact7@example.com",
                    "contact150@example.com",
                    "contact999@example.com"
                ]),
                "{kind:?}"
            );
        } else {
            assert!(
                job.failures
                    .iter()
                    .any(|f| f.message.contains("not imported")),
                "{job:?}"
            );
        }
        assert_eq!(
            fake.push_requests(),
            1000usize.div_ceil(kind.max_batch()),
            "{kind:?}: a batch was resent"
        );
        app.stop().await;
    }
}

fn provider(kind: Kind) -> Provider {
    crate::integrations::provider_of(kind)
}

/// Every other push fails and each failure ends its attempt, for a job of 10 batches with 2
/// attempts allowed: attempts count in a row without a saved batch, so the job finishes (it
/// used to give up after its second failure, with most contacts unsent).
async fn a_flaky_provider_does_not_exhaust_the_attempts_of_a_job_that_keeps_moving(
    backend: Backend,
) {
    let zapier = FakeProvider::start(Kind::Zapier).await;
    let app = spawn_with_fakes(
        backend,
        &[&zapier],
        &[
            ("--sync-max-attempts", "2"),
            ("--sync-request-retries", "1"),
            ("--sync-retry-min-delay", "10ms"),
            ("--sync-retry-max-delay", "50ms"),
        ],
    )
    .await;
    app.add_contacts("ada", 1000).await;
    connect(&app, "ada", &zapier).await;
    zapier.fail_every(2);
    let mut client = app.integrations().await;
    let job = start_sync(&mut client, "ada", Provider::Zapier).await;
    let job = wait_for_job(&app, "ada", &job.id).await;
    assert_eq!(job.state(), SyncJobState::Succeeded, "{job:?}");
    assert_eq!(job.contacts_done, 1000);
    // Zapier is not idempotent: every contact once, none twice.
    let mut pushed = sorted(zapier.pushed_emails());
    let total = pushed.len();
    pushed.dedup();
    assert_eq!((total, pushed.len()), (1000, 1000));
    app.stop().await;
}

async fn an_outage_that_lasts_fails_after_the_bounded_attempts(backend: Backend) {
    let zapier = FakeProvider::start(Kind::Zapier).await;
    let app = spawn_with_fakes(
        backend,
        &[&zapier],
        &[
            ("--sync-max-attempts", "2"),
            ("--sync-request-retries", "3"),
        ],
    )
    .await;
    app.add_contacts("ada", 10).await;
    connect(&app, "ada", &zapier).await;
    zapier.script(vec![ResponseTemplate::new(500); 100]);
    let mut client = app.integrations().await;
    let job = start_sync(&mut client, "ada", Provider::Zapier).await;
    let job = wait_for_job(&app, "ada", &job.id).await;
    assert_eq!(job.state(), SyncJobState::Failed);
    assert_eq!(job.attempts, 2);
    assert!(
        job.last_error.contains("gave up after 2 attempts"),
        "{job:?}"
    );
    // FAILED is final: no attempt of the job runs any more, so the count is final.
    assert_eq!(
        zapier.push_requests(),
        6,
        "2 attempts of 3 tries each, then nothing"
    );
    app.stop().await;
}

/// The provider's rate limiter is applied to a sync: 16 requests (the credential check and 15
/// batches) spaced for 5 a second take at least 15 spacings of 250 ms (3.75 s); without the
/// limiter, the fake's 429s (Retry-After: 1) would let them through in about 2 s. The provider
/// enforces its limit too, so a request over it would be answered 429 and sent again: every
/// contact still arrives exactly once. (That the limiter keeps under the limit in every window, whatever the timing,
/// is proven on a fake clock in `providers`' unit tests; a wall clock on a busy machine cannot
/// prove it.)
async fn the_rate_limiter_spaces_a_large_sync(backend: Backend) {
    let hubspot = FakeProvider::start(Kind::Hubspot).await;
    hubspot.enforce_limit(5, Duration::from_secs(1));
    let app = spawn_with_fakes(backend, &[&hubspot], &[("--rate-limits", "hubspot=5/1s")]).await;
    app.add_contacts("ada", 1500).await;
    connect(&app, "ada", &hubspot).await;
    let started = std::time::Instant::now();
    let mut client = app.integrations().await;
    let job = start_sync(&mut client, "ada", Provider::Hubspot).await;
    let job = wait_for_job(&app, "ada", &job.id).await;
    assert_eq!(job.state(), SyncJobState::Succeeded);
    assert_eq!(hubspot.push_requests(), 15 + hubspot.rejected_429());
    assert_eq!(sorted(hubspot.pushed_emails()), all_emails(1500));
    assert!(
        started.elapsed() >= Duration::from_millis(3500),
        "16 requests at 5/s took only {:?}",
        started.elapsed()
    );
    app.stop().await;
}


async fn a_daily_limit_parks_the_job_until_the_reset(backend: Backend) {
    let hubspot = FakeProvider::start(Kind::Hubspot).await;
    let app = spawn_with_fakes(backend, &[&hubspot], &[]).await;
    app.add_contacts("ada", 150).await;
    connect(&app, "ada", &hubspot).await;
    hubspot.script(vec![ResponseTemplate::new(429)
        .insert_header("retry-after", "3600")
        .set_body_json(json!({"status": "error", "message": "You have reached your daily limit.", "policyName": "DAILY"}))]);
    let mut client = app.integrations().await;
    let job = start_sync(&mut client, "ada", Provider::Hubspot).await;
    // Parked: queued again with its next attempt at the reset (an hour away), the attempt
    // given back.
    let parked = wait_for("the job was parked", || {
        let mut client = client.clone();
        let id = job.id.clone();
        async move {
            let now = get_job(&mut client, "ada", &id).await;
            (now.state() == SyncJobState::Queued && !now.last_error.is_empty()).then_some(now)
        }
    })
    .await;
    assert!(parked.last_error.contains("daily"), "{parked:?}");
    assert_eq!(parked.attempts, 0);
    let next = parked.next_attempt_time.unwrap_or_default().seconds;
    assert!(
        next >= chrono::Utc::now().timestamp() + 3000,
        "the next attempt waits for the reset: {parked:?}"
    );
    // The reset comes (an hour passes, in the database).
    crate::exec!(
        &app.pool,
        "UPDATE sync_jobs SET next_attempt_at = $1",
        chrono::Utc::now() - chrono::Duration::seconds(1)
    );
    let done = wait_for_job(&app, "ada", &job.id).await;
    assert_eq!(done.state(), SyncJobState::Succeeded);
    assert_eq!(
        done.attempts, 1,
        "waiting for a limit is not a failed attempt"
    );
    assert_eq!(sorted(hubspot.pushed_emails()), all_emails(150));
    app.stop().await;
}


async fn a_restart_mid_job_resumes_from_the_checkpoint(backend: Backend) {
    let hubspot = FakeProvider::start(Kind::Hubspot).await;
    let app = spawn_with_fakes(backend, &[&hubspot], &[]).await;
    app.add_contacts("ada", 1000).await;
    connect(&app, "ada", &hubspot).await;
    // Three batches go through; the fourth waits at the provider's door.
    let fourth = hubspot.hold_pushes(HoldPoint::Arrival, 3);
    let mut client = app.integrations().await;
    let job = start_sync(&mut client, "ada", Provider::Hubspot).await;
    fourth.arrived(1).await;
    // SIGTERM with the fourth batch in flight: it is answered, then the worker stops.
    app.signal_stop();
    fourth.release();
    let settings: Vec<(&str, String)> = hubspot.settings();
    let overrides: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // Counted before the new server starts: it resumes the job at once (found flaky, 5 != 4).
    let app = app
        .restart_after(&overrides, || {
            assert_eq!(hubspot.pushes().len(), 4, "the worker stopped after its batch in flight");
        })
        .await;
    let job = wait_for_job(&app, "ada", &job.id).await;
    assert_eq!(job.state(), SyncJobState::Succeeded);
    assert_eq!(job.attempts, 1, "a graceful stop gives its attempt back");
    let emails = hubspot.pushed_emails();
    assert_eq!(emails.len(), 1000, "a contact was sent twice or lost");
    assert_eq!(sorted(emails), all_emails(1000));
    app.stop().await;
}


async fn a_crash_mid_job_is_recovered_after_the_lease_expires(backend: Backend) {
    let hubspot = FakeProvider::start(Kind::Hubspot).await;
    // The 4th batch never gets an answer: the process dies while it is in flight.
    hubspot.hang_after(3);
    let settings: Vec<(&str, String)> = hubspot.settings();
    let overrides: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let app = spawn_with_fakes(backend, &[&hubspot], &[]).await;
    app.add_contacts("ada", 1000).await;
    connect(&app, "ada", &hubspot).await;
    let mut client = app.integrations().await;
    let job = start_sync(&mut client, "ada", Provider::Hubspot).await;
    eventually("the fourth batch was sent", || async {
        hubspot.push_requests() >= 4
    })
    .await;
    hubspot.hang_after(usize::MAX);
    let app = app.crash_and_restart(&overrides).await;
    // The crashed worker's lease runs out (it would, a lease later).
    app.expire_sync_leases().await;
    let job = wait_for_job(&app, "ada", &job.id).await;
    assert_eq!(job.state(), SyncJobState::Succeeded);
    assert_eq!(job.attempts, 2, "the crashed attempt counts");
    // Batches 1-3 were checkpointed and not sent again; the unanswered 4th was resent.
    assert_eq!(hubspot.push_requests(), 11);
    let emails = hubspot.pushed_emails();
    assert_eq!(emails.len(), 1000);
    assert_eq!(sorted(emails), all_emails(1000));
    app.stop().await;
}


async fn two_servers_on_one_database_run_each_job_once(backend: Backend) {
    let hubspot = FakeProvider::start(Kind::Hubspot).await;
    hubspot.delay_pushes(Duration::from_millis(30));
    let settings: Vec<(&str, String)> = hubspot.settings();
    let mut overrides: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    overrides.push(("--sync-workers", "3"));
    let first = spawn_with_fakes(backend, &[&hubspot], &[("--sync-workers", "3")]).await;
    let second = first.spawn_beside(&overrides).await;
    let users: Vec<String> = (0..8).map(|i| format!("user{i}")).collect();
    let mut jobs = Vec::new();
    for user in &users {
        first
            .add_contacts_named(user, &format!("{user}-c"), 250)
            .await;
        connect(&first, user, &hubspot).await;
    }
    for (i, user) in users.iter().enumerate() {
        let app = if i % 2 == 0 { &first } else { &second };
        let mut client = app.integrations().await;
        jobs.push(start_sync(&mut client, user, Provider::Hubspot).await);
    }
    for (user, job) in users.iter().zip(&jobs) {
        let job = wait_for_job(&first, user, &job.id).await;
        assert_eq!(job.state(), SyncJobState::Succeeded);
        assert_eq!(job.attempts, 1, "{user}: a job was taken twice");
    }
    let emails = hubspot.pushed_emails();
    let unique: HashSet<&String> = emails.iter().collect();
    assert_eq!(emails.len(), 8 * 250, "a contact was sent twice");
    assert_eq!(unique.len(), 8 * 250);
    assert_eq!(hubspot.push_requests(), 8 * 3);
    second.stop().await;
    first.stop().await;
}

async fn sync_interval_starts_a_sync_and_sets_the_next_one_an_interval_away(backend: Backend) {
    let zapier = FakeProvider::start(Kind::Zapier).await;
    let app = spawn_with_fakes(backend, &[&zapier], &[]).await;
    app.add_contacts("ada", 20).await;
    let mut request = crate::integrations::connect_request(&zapier);
    request
        .settings
        .insert("syncInterval".into(), "3600".into());
    let mut client = app.integrations().await;
    client
        .connect_integration(authed(request, &token("ada")))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // Connecting with an interval starts the first sync at once...
    eventually("the first sync ran", || async {
        app.count("sync_jobs", "state = 'succeeded'").await == 1
    })
    .await;
    // ...and the next is due an interval after it ended, for the scheduler (not the job) to
    // queue. (That the scheduler queues nothing before it is due is a store contract test.)
    assert_eq!(app.count("sync_jobs", "state = 'queued'").await, 0);
    let later = (chrono::Utc::now() + chrono::Duration::minutes(55)).format("%Y-%m-%dT%H:%M:%S");
    assert_eq!(
        app.count("integrations", &format!("next_sync_at > '{later}'"))
            .await,
        1
    );
    // A sync asked for in between is due at once; nothing changed, so nothing is sent.
    let next = start_sync(&mut client, "ada", Provider::Zapier).await;
    let answered_at = chrono::Utc::now().timestamp();
    let due = next.next_attempt_time.unwrap_or_default().seconds;
    assert!(due <= answered_at, "due at once, not later: {next:?}");
    let done = wait_for_job(&app, "ada", &next.id).await;
    assert_eq!(done.state(), SyncJobState::Succeeded);
    assert_eq!(
        zapier.pushed_emails().len(),
        20,
        "unchanged contacts were sent again"
    );
    app.stop().await;
}


async fn contacts_without_email_are_skipped_with_a_reason(backend: Backend) {
    let mailchimp = FakeProvider::start(Kind::Mailchimp).await;
    let app = spawn_with_fakes(backend, &[&mailchimp], &[]).await;
    app.add_contacts("ada", 10).await;
    for i in 0..4 {
        crate::exec!(
            &app.pool,
            "INSERT INTO contacts (id, user_id, email, first_name) VALUES ($1, 'ada', NULL, $2)",
            format!("no-email-{i}"),
            format!("Nobody {i}"),
        );
    }
    connect(&app, "ada", &mailchimp).await;
    let mut client = app.integrations().await;
    let job = start_sync(&mut client, "ada", Provider::Mailchimp).await;
    let job = wait_for_job(&app, "ada", &job.id).await;
    assert_eq!(job.state(), SyncJobState::Succeeded);
    assert_eq!((job.contacts_done, job.contacts_skipped), (14, 4));
    assert_eq!(job.skipped_reason, "no email address");
    assert_eq!(sorted(mailchimp.pushed_emails()), all_emails(10));
    app.stop().await;
}

async fn disconnecting_mid_job_stops_it_and_deletes_its_jobs(backend: Backend) {
    let hubspot = FakeProvider::start(Kind::Hubspot).await;
    // One worker: when it has finished Bob's job below, it has let go of Ada's.
    let app = spawn_with_fakes(backend, &[&hubspot], &[("--sync-workers", "1")]).await;
    app.add_contacts("ada", 1000).await;
    app.add_contacts_named("bob", "bob", 10).await;
    connect(&app, "ada", &hubspot).await;
    connect(&app, "bob", &hubspot).await;
    // Two batches go through; the third waits at the provider's door.
    let third = hubspot.hold_pushes(HoldPoint::Arrival, 2);
    let mut client = app.integrations().await;
    let job = start_sync(&mut client, "ada", Provider::Hubspot).await;
    third.arrived(1).await;
    client
        .disconnect_integration(authed(
            DisconnectIntegrationRequest {
                provider: Provider::Hubspot.into(),
            },
            &token("ada"),
        ))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let at_disconnect = hubspot.push_requests();
    assert_eq!(at_disconnect, 2);
    // The batch in flight is answered; the worker then finds the job gone and stops.
    third.release();
    let bob = start_sync(&mut client, "bob", Provider::Hubspot).await;
    let bob = wait_for_job(&app, "bob", &bob.id).await;
    assert_eq!(bob.state(), SyncJobState::Succeeded, "{bob:?}");
    let ada_pushes = hubspot.pushes_of("contact");
    assert!(
        ada_pushes <= at_disconnect + 1,
        "the worker kept pushing after the disconnect: {at_disconnect} -> {ada_pushes}"
    );
    let gone = client
        .get_sync_job(authed(
            GetSyncJobRequest { id: job.id.clone() },
            &token("ada"),
        ))
        .await
        .err();
    assert_eq!(gone.map(|s| s.code()), Some(Code::NotFound));
    assert_eq!(app.count("sync_jobs", "user_id = 'ada'").await, 0);
    assert_eq!(app.count("integrations", "user_id = 'ada'").await, 0);
    app.stop().await;
}
