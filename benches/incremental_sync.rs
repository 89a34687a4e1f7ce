//! Incremental pushes (issue 12): 100,000 contacts pushed to a fake HubSpot on loopback, then a
//! second sync with nothing changed (target: no contact request, under 1 s), then one after
//! 1,000 contacts changed (target: 10 requests of 100).
//!
//! The real binary (release) runs as a child process with HubSpot's rate limit lifted
//! (`RATE_LIMITS=hubspot=100000/1s`), so the figures are the service's own cost.
//!
//! Run: `cargo bench --bench incremental_sync`. SQLite in a temporary directory, or PostgreSQL
//! when BENCH_DATABASE_URL is set (a scratch database is created and dropped). BENCH_CONTACTS
//! (default 100000) sets the size.

#[allow(dead_code)]
#[path = "../tests/api/fake_feeds.rs"]
mod fake_feeds;
#[path = "../tests/api/fake_http.rs"]
mod fake_http;
#[allow(dead_code)]
#[path = "../tests/api/fake_providers.rs"]
mod fake_providers;

#[allow(dead_code)]
mod support;

use std::time::Instant;

use fake_providers::{FakeProvider, HUBSPOT_TOKEN, Kind};
use nexus_billing::grpc::proto::integrations::{
    Provider, SyncIntegrationRequest, SyncJob, SyncJobState,
    integrations_service_client::IntegrationsServiceClient,
};
use support::{Database, authed, base_env, execute, mint_token, seed, serve, stop, wait_for_job};
use tonic::transport::Channel;

async fn sync(
    client: &mut IntegrationsServiceClient<Channel>,
    token: &str,
) -> anyhow::Result<(SyncJob, f64)> {
    let started = Instant::now();
    let job = client
        .sync_integration(authed(
            SyncIntegrationRequest {
                provider: Provider::Hubspot.into(),
                direction: 0,
                full: false,
            },
            token,
        )?)
        .await?
        .into_inner()
        .job
        .ok_or_else(|| anyhow::anyhow!("no job"))?;
    let job = wait_for_job(client, token, &job.id).await?;
    anyhow::ensure!(
        job.state() == SyncJobState::Succeeded,
        "sync failed: {job:?}"
    );
    Ok((job, started.elapsed().as_secs_f64()))
}

/// Seconds from the job's creation to its end, as the service recorded them.
fn job_seconds(job: &SyncJob) -> f64 {
    let at = |t: &Option<prost_types::Timestamp>| {
        t.as_ref()
            .map(|t| t.seconds as f64 + f64::from(t.nanos) / 1e9)
            .unwrap_or_default()
    };
    at(&job.finish_time) - at(&job.create_time)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let contacts: usize = std::env::var("BENCH_CONTACTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let postgres = std::env::var("BENCH_DATABASE_URL").is_ok();
    let db = Database::create().await?;
    seed(&db.url, contacts).await?;
    // The contacts were made long before their first sync (as in production): a sync does not
    // look again at contacts written within seconds of its start.
    let an_hour_ago = if postgres {
        "now() - interval '1 hour'"
    } else {
        "strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-1 hours')"
    };
    execute(
        &db.url,
        &format!("UPDATE contacts SET updated_at = {an_hour_ago}"),
    )
    .await?;
    let hubspot = FakeProvider::start(Kind::Hubspot).await;
    let mut env = base_env(&db.url);
    env.push(("HUBSPOT_API_BASE".into(), hubspot.server.uri()));
    env.push(("RATE_LIMITS".into(), "hubspot=100000/1s".into()));
    let (child, grpc, _) = serve(env)?;
    let token = mint_token(&db.url)?;
    let result = async {
        let mut client = IntegrationsServiceClient::connect(format!("http://{grpc}")).await?;
        support::connect_hubspot(&mut client, &token, HUBSPOT_TOKEN).await?;
        println!(
            "incremental pushes of {contacts} contacts to a fake HubSpot on loopback ({})\n",
            if postgres { "PostgreSQL" } else { "SQLite" }
        );
        println!("| sync | contacts sent | requests | job seconds (service) | seconds (client, 100 ms polling) |");
        println!("|---|---:|---:|---:|---:|");
        let mut requests = 0;
        let mut sent = 0;
        let mut row = |name: &str, job: &SyncJob, seconds: f64| {
            let now_requests = hubspot.push_requests();
            let now_sent = hubspot.pushed_emails().len();
            println!(
                "| {name} | {} | {} | {:.3} | {seconds:.2} |",
                now_sent - sent,
                now_requests - requests,
                job_seconds(job)
            );
            let delta = (now_sent - sent, now_requests - requests);
            requests = now_requests;
            sent = now_sent;
            delta
        };
        let (job, seconds) = sync(&mut client, &token).await?;
        row("first", &job, seconds);
        let (job, seconds) = sync(&mut client, &token).await?;
        let unchanged = row("nothing changed", &job, seconds);
        anyhow::ensure!(unchanged == (0, 0), "an unchanged sync sent {unchanged:?}");
        let touch = if postgres {
            "now()"
        } else {
            "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"
        };
        execute(
            &db.url,
            &format!(
                "UPDATE contacts SET first_name = 'Changed', updated_at = {touch} \
                 WHERE id IN (SELECT id FROM contacts ORDER BY id LIMIT 1000)"
            ),
        )
        .await?;
        let (job, seconds) = sync(&mut client, &token).await?;
        let changed = row("1,000 changed", &job, seconds);
        anyhow::ensure!(changed.0 == 1000, "the changed sync sent {changed:?}");
        Ok::<(), anyhow::Error>(())
    }
    .await;
    stop(child);
    db.drop().await?;
    result
}
