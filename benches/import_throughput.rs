//! Import throughput and the contacts file, with fakes on loopback; the real binary (release)
//! runs as a child process so its peak resident memory (`VmHWM`) is its own.
//!
//! 1. Import: a fake HubSpot holding N contacts, read 100 per page, into an empty PREMIUM user
//!    (no contact limit): requests, seconds, contacts/s, peak memory. The contacts table holds
//!    10,000 contacts of 100 other users and has planner statistics (ANALYZE), as a production
//!    table has (autovacuum): on a never-analysed table PostgreSQL looks addresses up through
//!    the user-id index and each page costs time in proportion to the user's contacts.
//! 2. File: N contacts written as contacts.csv to a fake Google Drive (OAuth connected through
//!    the real callback; above 5 MB the upload is resumable): seconds, file size, peak memory.
//!
//! Run: `cargo bench --bench import_throughput`. SQLite in a temporary directory, or PostgreSQL
//! when BENCH_DATABASE_URL is set. BENCH_CONTACTS (default 100000) sets N.

#[path = "../tests/api/fake_http.rs"]
mod fake_http;
#[allow(dead_code)]
#[path = "../tests/api/fake_oauth.rs"]
mod fake_oauth;
#[allow(dead_code)]
#[path = "../tests/api/fake_providers.rs"]
mod fake_providers;
#[allow(dead_code)]
mod support;

use std::time::Instant;

use fake_oauth::{FakeOAuth, OKind};
use fake_providers::{FakeProvider, HUBSPOT_TOKEN, Kind};
use nexus_billing::grpc::proto::integrations::{
    Provider, StartOAuthRequest, SyncDirection, SyncIntegrationRequest, SyncJobState,
    integrations_service_client::IntegrationsServiceClient,
};
use support::{
    Database, USER, authed, base_env, execute, mint_token, peak_rss_mib, seed, serve, stop,
    wait_for_job,
};

const ORIGIN: &str = "https://app.nexus.bench";
const REDIRECT_URI: &str = "https://billing.nexus.bench/integrations/oauth/callback";

struct Measured {
    requests: usize,
    seconds: f64,
    rss_before_mib: f64,
    rss_peak_mib: f64,
    bytes: usize,
}

async fn import(contacts: usize) -> anyhow::Result<Measured> {
    let db = Database::create().await?;
    seed(&db.url, 0).await?;
    execute(
        &db.url,
        "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 10000) \
         INSERT INTO contacts (id, user_id, email) \
         SELECT 'other' || n, 'other-' || (n % 100), 'other' || n || '@example.com' FROM g",
    )
    .await?;
    execute(&db.url, "ANALYZE").await?;
    execute(
        &db.url,
        &format!(
            "INSERT INTO subscriptions (user_id, tier, status, current_period_end) \
             VALUES ('{USER}', 'premium', 'active', '2099-01-01T00:00:00Z')"
        ),
    )
    .await?;
    let hubspot = FakeProvider::start(Kind::Hubspot).await;
    let remote: Vec<(String, String)> = (0..contacts)
        .map(|i| (format!("remote{i}@example.com"), format!("Number {i}")))
        .collect();
    let refs: Vec<(&str, &str, &str, &str)> = remote
        .iter()
        .map(|(e, l)| (e.as_str(), "Remote", l.as_str(), "2024-06-01T00:00:00Z"))
        .collect();
    hubspot.set_remote(&refs);
    hubspot.set_import_page(100);
    let mut env = base_env(&db.url);
    env.push(("HUBSPOT_API_BASE".into(), hubspot.server.uri()));
    env.push(("RATE_LIMITS".into(), "hubspot=100000/1s".into()));
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
                    direction: SyncDirection::Import.into(),
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
            job.state() == SyncJobState::Succeeded
                && job.contacts_done == contacts as i64
                && job.contacts_skipped == 0,
            "import did not complete: {job:?}"
        );
        Ok(Measured {
            requests: hubspot.import_requests(),
            seconds,
            rss_before_mib,
            rss_peak_mib: peak_rss_mib(child.id()),
            bytes: 0,
        })
    }
    .await;
    stop(child);
    db.drop().await?;
    result
}

async fn drive_file(contacts: usize) -> anyhow::Result<Measured> {
    let db = Database::create().await?;
    seed(&db.url, contacts).await?;
    let drive = FakeOAuth::start(OKind::GoogleDrive).await;
    let mut env = base_env(&db.url);
    for (flag, value) in drive.settings() {
        env.push((
            flag.trim_start_matches("--")
                .replace('-', "_")
                .to_uppercase(),
            value,
        ));
    }
    env.push(("OAUTH_REDIRECT_URL".into(), REDIRECT_URI.into()));
    env.push(("ALLOWED_ORIGINS".into(), ORIGIN.into()));
    let (child, grpc, http) = serve(env)?;
    let token = mint_token(&db.url)?;
    let result = async {
        let mut client = IntegrationsServiceClient::connect(format!("http://{grpc}")).await?;
        let url = client
            .start_o_auth(authed(
                StartOAuthRequest {
                    provider: Provider::GoogleDrive.into(),
                    redirect_after: format!("{ORIGIN}/integrations"),
                    settings: Default::default(),
                },
                &token,
            )?)
            .await?
            .into_inner()
            .authorization_url;
        let (code, state) = drive.authorize(&url, REDIRECT_URI);
        let landing = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()?
            .get(format!(
                "http://{http}/integrations/oauth/callback?code={code}&state={state}"
            ))
            .send()
            .await?;
        anyhow::ensure!(
            landing.status().as_u16() == 303,
            "callback: {}",
            landing.status()
        );
        let rss_before_mib = peak_rss_mib(child.id());
        let started = Instant::now();
        let job = client
            .sync_integration(authed(
                SyncIntegrationRequest {
                    full: false,
                    provider: Provider::GoogleDrive.into(),
                    direction: SyncDirection::Push.into(),
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
            "file push did not complete: {job:?}"
        );
        let uploads = drive.uploads();
        let bytes = uploads.last().map_or(0, |u| u.2.len());
        Ok(Measured {
            requests: uploads.len(),
            seconds,
            rss_before_mib,
            rss_peak_mib: peak_rss_mib(child.id()),
            bytes,
        })
    }
    .await;
    stop(child);
    db.drop().await?;
    result
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let contacts: usize = std::env::var("BENCH_CONTACTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let backend = if std::env::var("BENCH_DATABASE_URL").is_ok() {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    println!("imports and the contacts file, fakes on loopback ({backend})\n");
    println!(
        "| run | contacts | requests | seconds | contacts/s | file MiB | service RSS before MiB | service peak RSS MiB |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (name, n) in [
        ("HubSpot import", contacts / 10),
        ("HubSpot import", contacts),
    ] {
        let m = import(n).await?;
        print_row(name, n, &m);
    }
    for n in [contacts / 10, contacts] {
        let m = drive_file(n).await?;
        print_row("Google Drive file", n, &m);
    }
    Ok(())
}

fn print_row(name: &str, contacts: usize, m: &Measured) {
    println!(
        "| {name} | {contacts} | {} | {:.1} | {:.0} | {:.1} | {:.1} | {:.1} |",
        m.requests,
        m.seconds,
        contacts as f64 / m.seconds,
        m.bytes as f64 / 1024.0 / 1024.0,
        m.rss_before_mib,
        m.rss_peak_mib
    );
}
