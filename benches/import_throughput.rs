//! Import throughput and the contacts file, with fakes on loopback; the real binary (release)
//! runs as a child process so its peak resident memory (`VmHWM`) is its own.
//!
//! Seconds are the job's own (its start to its finish, from GetSyncJob).
//!
//! 1. Import: a fake HubSpot holding N contacts, read 100 per page, into a PREMIUM user (no
//!    contact limit) who already has BENCH_EXISTING contacts (default 100,000): requests,
//!    seconds, contacts/s, peak memory. The contacts table also holds 10,000 contacts of 100
//!    other users and has planner statistics (ANALYZE), as a production table has.
//! 2. File: N contacts written as contacts.csv to a fake Google Drive (OAuth connected through
//!    the real callback; a file larger than one chunk streams through a resumable session):
//!    seconds, file size, memory before and at its peak.
//!
//! Run: `cargo bench --bench import_throughput`. SQLite in a temporary directory, or PostgreSQL
//! when BENCH_DATABASE_URL is set. BENCH_CONTACTS (default 100000) sets N for imports (N/10 and
//! N are run), BENCH_FILE_CONTACTS (default 1000000) for the file (N/10 and N).

#[allow(dead_code)]
#[path = "../tests/api/fake_feeds.rs"]
mod fake_feeds;
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

/// The job's own run time (its worker's start to its finish), without the wait for a worker
/// and this program's polling, which would be a fifth of a short run.
fn job_seconds(job: &nexus_billing::grpc::proto::integrations::SyncJob) -> Option<f64> {
    let (start, finish) = (job.start_time.as_ref()?, job.finish_time.as_ref()?);
    let nanos =
        (finish.seconds - start.seconds) as f64 * 1e9 + f64::from(finish.nanos - start.nanos);
    Some(nanos / 1e9)
}

/// `n` contacts of `user` with every field, in one statement.
async fn seed_bulk(url: &str, user: &str, prefix: &str, n: usize) -> anyhow::Result<()> {
    let rows = "'{prefix}' || g, '{user}', '{prefix}' || g || '@example.com', 'Contact', \
         'Number ' || g, 'Acme Ltd', '+1555' || g, 'Buyer'"
        .replace("{prefix}", prefix)
        .replace("{user}", user);
    let sql = if url.starts_with("postgres") {
        format!(
            "INSERT INTO contacts (id, user_id, email, first_name, last_name, company, phone, \
             job_title) SELECT {rows} FROM generate_series(1, {n}) g"
        )
    } else {
        format!(
            "WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < {n}) \
             INSERT INTO contacts (id, user_id, email, first_name, last_name, company, phone, \
             job_title) SELECT {rows} FROM s"
        )
    };
    execute(url, &sql).await
}

async fn import(contacts: usize, existing: usize) -> anyhow::Result<Measured> {
    let db = Database::create().await?;
    seed(&db.url, 0).await?;
    if existing > 0 {
        seed_bulk(&db.url, USER, "existing", existing).await?;
    }
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
        let seconds = job_seconds(&job).unwrap_or_else(|| started.elapsed().as_secs_f64());
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
    seed(&db.url, 0).await?;
    seed_bulk(&db.url, USER, "c", contacts).await?;
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
    // The upload chunk (the service's default unless set here).
    if let Ok(chunk) = std::env::var("FILE_UPLOAD_CHUNK_KIB") {
        env.push(("FILE_UPLOAD_CHUNK_KIB".into(), chunk));
    }
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
        // The browser opens the start link from the product's page (which sets the flow's
        // cookie and sends it on to the provider), consents, and comes back with the cookie.
        let browser = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let start = url::Url::parse(&url)?;
        let started = browser
            .get(format!(
                "http://{http}{}?{}",
                start.path(),
                start.query().unwrap_or_default()
            ))
            .header("sec-fetch-site", "same-origin")
            .send()
            .await?;
        anyhow::ensure!(
            started.status().as_u16() == 303,
            "start: {}",
            started.status()
        );
        let header = |name: &str| {
            started
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        let cookie = header("set-cookie")
            .split(';')
            .next()
            .unwrap_or_default()
            .to_string();
        let (code, state) = drive.authorize(&header("location"), REDIRECT_URI);
        let landing = browser
            .get(format!(
                "http://{http}/integrations/oauth/callback?code={code}&state={state}"
            ))
            .header("cookie", cookie)
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
        let seconds = job_seconds(&job).unwrap_or_else(|| started.elapsed().as_secs_f64());
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
    let contacts: usize = support::env_or("BENCH_CONTACTS", 100_000);
    let existing: usize = support::env_or("BENCH_EXISTING", 100_000);
    let file_contacts: usize = support::env_or("BENCH_FILE_CONTACTS", 1_000_000);
    let backend = if std::env::var("BENCH_DATABASE_URL").is_ok() {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    println!("imports and the contacts file, fakes on loopback ({backend})\n");
    println!(
        "| database | run | contacts | user had | requests | seconds | contacts/s | file MiB | RSS before MiB | peak RSS MiB | growth MiB |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for n in [contacts / 10, contacts] {
        let m = import(n, existing).await?;
        print_row(backend, "HubSpot import", n, existing, &m);
    }
    for n in [file_contacts / 10, file_contacts] {
        let m = drive_file(n).await?;
        print_row(backend, "Google Drive file", n, n, &m);
    }
    Ok(())
}

fn print_row(backend: &str, name: &str, contacts: usize, had: usize, m: &Measured) {
    println!(
        "| {backend} | {name} | {contacts} | {had} | {} | {:.1} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} |",
        m.requests,
        m.seconds,
        contacts as f64 / m.seconds,
        m.bytes as f64 / 1024.0 / 1024.0,
        m.rss_before_mib,
        m.rss_peak_mib,
        m.rss_peak_mib - m.rss_before_mib
    );
}
