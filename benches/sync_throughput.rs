//! Contact sync throughput and the service's peak memory, with a fake HubSpot on loopback.
//!
//! The real binary (release) runs as a child process, so its peak resident memory (`VmHWM`) is
//! its own. Each run uses a fresh database seeded with N contacts, connects HubSpot, asks for a
//! sync and polls the job until it finishes. Runs:
//! 1. 10,000 and 100,000 contacts with the rate limit lifted (`RATE_LIMITS=hubspot=100000/1s`):
//!    requests, contacts/s, and peak memory (flat if contacts are read in pages).
//! 2. 100,000 contacts with the fake enforcing HubSpot's 100 requests per 10 s (sliding window)
//!    and the service on its default budget: 429s seen (must be 0) and total time against the
//!    window's minimum.
//!
//! Run: `cargo bench --bench sync_throughput`. The database is SQLite in a temporary directory,
//! or PostgreSQL when BENCH_DATABASE_URL is set (a scratch database is created and dropped).
//! BENCH_CONTACTS (default 100000) sets the large size; BENCH_SKIP_LIMITED=1 skips run 2.

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

use std::time::{Duration, Instant};

use fake_providers::{FakeProvider, HUBSPOT_TOKEN, Kind};
use nexus_billing::grpc::proto::integrations::{
    Provider, SyncIntegrationRequest, SyncJobState,
    integrations_service_client::IntegrationsServiceClient,
};
use support::{
    Database, authed, base_env, mint_token, peak_rss_mib, seed, serve, stop, wait_for_job,
};

struct RunResult {
    requests: usize,
    rejected_429: usize,
    seconds: f64,
    rss_before_mib: f64,
    rss_peak_mib: f64,
}

async fn run(contacts: usize, limited: bool) -> anyhow::Result<RunResult> {
    let db = Database::create().await?;
    seed(&db.url, contacts).await?;
    let hubspot = FakeProvider::start(Kind::Hubspot).await;
    let mut env = base_env(&db.url);
    env.push(("HUBSPOT_API_BASE".into(), hubspot.server.uri()));
    if limited {
        hubspot.enforce_limit(100, Duration::from_secs(10));
    } else {
        env.push(("RATE_LIMITS".into(), "hubspot=100000/1s".into()));
    }
    let (child, grpc, _) = serve(env)?;
    let token = mint_token(&db.url)?;
    let result = async {
        let mut client = IntegrationsServiceClient::connect(format!("http://{grpc}")).await?;
        support::connect_hubspot(&mut client, &token, HUBSPOT_TOKEN).await?;
        let rss_before_mib = peak_rss_mib(child.id());
        let started = Instant::now();
        let job = client
            .sync_integration(authed(
                SyncIntegrationRequest {
                    full: false,
                    provider: Provider::Hubspot.into(),
                    direction: 0,
                },
                &token,
            )?)
            .await?
            .into_inner()
            .job
            .ok_or_else(|| anyhow::anyhow!("no job"))?;
        let job = wait_for_job(&mut client, &token, &job.id).await?;
        let seconds = started.elapsed().as_secs_f64();
        anyhow::ensure!(
            job.state() == SyncJobState::Succeeded && job.contacts_done == contacts as i64,
            "sync did not complete: {job:?}"
        );
        anyhow::ensure!(
            hubspot.pushed_emails().len() == contacts,
            "the fake received {} contacts",
            hubspot.pushed_emails().len()
        );
        Ok(RunResult {
            requests: hubspot.push_requests(),
            rejected_429: hubspot.rejected_429(),
            seconds,
            rss_before_mib,
            rss_peak_mib: peak_rss_mib(child.id()),
        })
    }
    .await;
    stop(child);
    db.drop().await?;
    result
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let large: usize = std::env::var("BENCH_CONTACTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let backend = if std::env::var("BENCH_DATABASE_URL").is_ok() {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    println!("sync throughput to a fake HubSpot on loopback ({backend})\n");
    println!(
        "| contacts | fake's limit | requests | 429s | seconds | contacts/s | service RSS before sync MiB | service peak RSS MiB |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|");
    let mut runs = vec![(large / 10, false), (large, false)];
    if std::env::var("BENCH_SKIP_LIMITED").as_deref() != Ok("1") {
        runs.push((large, true));
    }
    for (contacts, limited) in runs {
        let r = run(contacts, limited).await?;
        println!(
            "| {contacts} | {} | {} | {} | {:.1} | {:.0} | {:.1} | {:.1} |",
            if limited { "100 per 10 s" } else { "none" },
            r.requests,
            r.rejected_429,
            r.seconds,
            contacts as f64 / r.seconds,
            r.rss_before_mib,
            r.rss_peak_mib
        );
        if limited {
            let batches = contacts.div_ceil(100);
            // Sliding window of 100 per 10 s: 100 at once, then 100 every 10 s.
            let minimum = (batches.saturating_sub(1) / 100) as f64 * 10.0;
            println!(
                "\n  limited run: {} requests in {:.1} s; the window allows them in no less than {minimum:.0} s ({:.0} % of it); 429s: {}",
                r.requests,
                r.seconds,
                r.seconds / minimum * 100.0,
                r.rejected_429
            );
        }
    }
    Ok(())
}
