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
#[path = "../tests/api/fake_providers.rs"]
mod fake_providers;

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use fake_providers::{FakeProvider, HUBSPOT_TOKEN, Kind};
use nexus_billing::grpc::proto::integrations::{
    ConnectIntegrationRequest, GetSyncJobRequest, Provider, SyncIntegrationRequest, SyncJobState,
    integrations_service_client::IntegrationsServiceClient,
};
use sqlx::{Connection, Executor, PgConnection, PgPool, SqlitePool};

const BIN: &str = env!("CARGO_BIN_EXE_nexus-billing");
const JWT_SECRET: &str = "bench-secret-that-is-long-enough-for-hs256-0123456789";
const ENCRYPTION_KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const USER: &str = "bench-user";

struct Database {
    url: String,
    cleanup: Option<(String, String)>,
    _dir: tempfile::TempDir,
}

impl Database {
    async fn create() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        match std::env::var("BENCH_DATABASE_URL") {
            Ok(admin_url) => {
                let name = format!("nexus_bench_{}", uuid::Uuid::new_v4().simple());
                let mut admin = PgConnection::connect(&admin_url).await?;
                admin
                    .execute(sqlx::AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#)))
                    .await?;
                let mut url = url::Url::parse(&admin_url)?;
                url.set_path(&format!("/{name}"));
                Ok(Self {
                    url: url.to_string(),
                    cleanup: Some((admin_url, name)),
                    _dir: dir,
                })
            }
            Err(_) => Ok(Self {
                url: format!("sqlite://{}/bench.db", dir.path().display()),
                cleanup: None,
                _dir: dir,
            }),
        }
    }

    async fn drop(self) -> anyhow::Result<()> {
        if let Some((admin_url, name)) = self.cleanup {
            let mut admin = PgConnection::connect(&admin_url).await?;
            admin
                .execute(sqlx::AssertSqlSafe(format!(
                    r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#
                )))
                .await?;
        }
        Ok(())
    }
}

fn base_env(db_url: &str) -> Vec<(String, String)> {
    [
        ("DATABASE_URL", db_url),
        ("JWT_SECRET", JWT_SECRET),
        ("ENCRYPTION_KEY", ENCRYPTION_KEY),
        // The "serving" line (info) carries the bound address.
        ("LOG_LEVEL", "warn,nexus_billing=info"),
        ("LOG_FORMAT", "json"),
        ("GRPC_ADDR", "127.0.0.1:0"),
        ("HTTP_ADDR", "127.0.0.1:0"),
        ("SYNC_POLL_INTERVAL", "50ms"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Migrates with the binary, then inserts the contacts 1,000 rows per statement.
async fn seed(db_url: &str, contacts: usize) -> anyhow::Result<()> {
    let migrated = Command::new(BIN)
        .env_clear()
        .envs(base_env(db_url))
        .arg("migrate")
        .status()?;
    anyhow::ensure!(migrated.success(), "migrate failed");
    let (pg, lite) = if db_url.starts_with("postgres") {
        (Some(PgPool::connect(db_url).await?), None)
    } else {
        (None, Some(SqlitePool::connect(db_url).await?))
    };
    for start in (0..contacts).step_by(1000) {
        let rows: Vec<String> = (start..(start + 1000).min(contacts))
            .map(|i| {
                format!(
                    "('c{i:08}', '{USER}', 'contact{i}@example.com', 'Contact', 'Number {i}', 'Acme Ltd', '+1555{i:07}', 'Buyer')"
                )
            })
            .collect();
        let sql = format!(
            "INSERT INTO contacts (id, user_id, email, first_name, last_name, company, phone, job_title) VALUES {}",
            rows.join(", ")
        );
        let sql = sqlx::AssertSqlSafe(sql);
        match (&pg, &lite) {
            (Some(pool), _) => sqlx::query(sql).execute(pool).await.map(drop)?,
            (_, Some(pool)) => sqlx::query(sql).execute(pool).await.map(drop)?,
            _ => {}
        }
    }
    if let Some(pool) = pg {
        pool.close().await;
    }
    if let Some(pool) = lite {
        pool.close().await;
    }
    Ok(())
}

/// Starts `serve` and waits for its "serving" line.
fn serve(env: Vec<(String, String)>) -> anyhow::Result<(Child, String)> {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(BIN)
        .env_clear()
        .envs(env)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child
        .stderr
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stderr"))?;
    let mut lines = BufReader::new(stderr).lines();
    let grpc = loop {
        let line = lines
            .next()
            .ok_or_else(|| anyhow::anyhow!("the service exited before serving"))??;
        let json: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if json["message"] == "serving" {
            break json["grpc_addr"].as_str().unwrap_or_default().to_string();
        }
    };
    // Keep draining stderr so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines.by_ref() {});
    Ok((child, grpc))
}

/// Peak resident memory of a process, in MiB (Linux `VmHWM`).
fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn mint_token(db_url: &str) -> anyhow::Result<String> {
    let out = Command::new(BIN)
        .env_clear()
        .envs(base_env(db_url))
        .args(["token", "--user-id", USER, "--ttl", "2h"])
        .output()?;
    anyhow::ensure!(out.status.success(), "token failed");
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

fn authed<T>(message: T, token: &str) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    Ok(request)
}

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
    let (mut child, grpc) = serve(env)?;
    let token = mint_token(&db.url)?;
    let result = async {
        let mut client = IntegrationsServiceClient::connect(format!("http://{grpc}")).await?;
        client
            .connect_integration(authed(
                ConnectIntegrationRequest {
                    provider: Provider::Hubspot.into(),
                    credentials: [("accessToken".to_string(), HUBSPOT_TOKEN.to_string())].into(),
                    settings: Default::default(),
                },
                &token,
            )?)
            .await?;
        let rss_before_mib = peak_rss_mib(child.id());
        let started = Instant::now();
        let job = client
            .sync_integration(authed(
                SyncIntegrationRequest {
                    provider: Provider::Hubspot.into(),
                    direction: 0,
                },
                &token,
            )?)
            .await?
            .into_inner()
            .job
            .ok_or_else(|| anyhow::anyhow!("no job"))?;
        let job = loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = client
                .get_sync_job(authed(GetSyncJobRequest { id: job.id.clone() }, &token)?)
                .await?
                .into_inner()
                .job
                .ok_or_else(|| anyhow::anyhow!("no job"))?;
            if !matches!(now.state(), SyncJobState::Queued | SyncJobState::Running) {
                break now;
            }
        };
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
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
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
