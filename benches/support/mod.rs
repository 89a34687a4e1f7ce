//! What the benchmark programs share: a scratch database, seeding, running the real binary
//! and reading its peak memory, tokens and polling a job.

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use nexus_billing::grpc::proto::integrations::{
    ConnectIntegrationRequest, GetSyncJobRequest, Provider, SyncJob, SyncJobState,
    integrations_service_client::IntegrationsServiceClient,
};
use sqlx::{Connection, Executor, PgConnection, PgPool, SqlitePool};
use tonic::transport::Channel;

pub const BIN: &str = env!("CARGO_BIN_EXE_nexus-billing");
pub const JWT_SECRET: &str = "bench-secret-that-is-long-enough-for-hs256-0123456789";
pub const ENCRYPTION_KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
pub const USER: &str = "bench-user";

/// A setting from the environment, or `default` when unset or unreadable.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub struct Database {
    pub url: String,
    cleanup: Option<(String, String)>,
    _dir: tempfile::TempDir,
}

impl Database {
    /// A scratch PostgreSQL database when BENCH_DATABASE_URL is set, else a SQLite file in a
    /// temporary directory.
    pub async fn create() -> anyhow::Result<Self> {
        if std::env::var("BENCH_DATABASE_URL").is_ok() {
            return Self::create_postgres().await;
        }
        let dir = tempfile::tempdir()?;
        Ok(Self {
            url: format!("sqlite://{}/bench.db", dir.path().display()),
            cleanup: None,
            _dir: dir,
        })
    }

    /// A scratch PostgreSQL database, from BENCH_DATABASE_URL or the local default.
    pub async fn create_postgres() -> anyhow::Result<Self> {
        let admin_url = std::env::var("BENCH_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string());
        let dir = tempfile::tempdir()?;
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

    pub async fn drop(self) -> anyhow::Result<()> {
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

pub fn base_env(db_url: &str) -> Vec<(String, String)> {
    [
        ("DATABASE_URL", db_url),
        ("JWT_SECRET", JWT_SECRET),
        ("ENCRYPTION_KEY", ENCRYPTION_KEY),
        // The "serving" line (info) carries the bound address.
        ("LOG_LEVEL", "warn,nexus_billing=info"),
        ("LOG_FORMAT", "json"),
        ("GRPC_ADDR", "127.0.0.1:0"),
        ("HTTP_ADDR", "127.0.0.1:0"),
        ("METRICS_ADDR", "127.0.0.1:0"),
        ("SYNC_POLL_INTERVAL", "50ms"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Migrates with the binary, then inserts the contacts 1,000 rows per statement.
pub async fn seed(db_url: &str, contacts: usize) -> anyhow::Result<()> {
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

/// Starts `serve` and waits for its "serving" line; the child, gRPC and HTTP addresses.
pub fn serve(env: Vec<(String, String)>) -> anyhow::Result<(Child, String, String)> {
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
    let (grpc, http) = loop {
        let line = lines
            .next()
            .ok_or_else(|| anyhow::anyhow!("the service exited before serving"))??;
        let json: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if json["message"] == "serving" {
            remember_metrics_addr(child.id(), &json);
            break (
                json["grpc_addr"].as_str().unwrap_or_default().to_string(),
                json["http_addr"].as_str().unwrap_or_default().to_string(),
            );
        }
    };
    // Keep draining stderr so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines.by_ref() {});
    Ok((child, grpc, http))
}

/// The metrics listener of each served child, by process id (from its "serving" line).
static METRICS_ADDRS: std::sync::Mutex<Vec<(u32, String)>> = std::sync::Mutex::new(Vec::new());

fn remember_metrics_addr(pid: u32, serving: &serde_json::Value) {
    let addr = serving["metrics_addr"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    METRICS_ADDRS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((pid, addr));
}

/// `/metrics` of a child started by [`serve`] or [`serve_logged`] (the metrics listener, not
/// the public sidecar).
pub fn metrics_url(child: &Child) -> String {
    let addrs = METRICS_ADDRS.lock().unwrap_or_else(|e| e.into_inner());
    let addr = addrs
        .iter()
        .rev()
        .find(|(pid, _)| *pid == child.id())
        .map(|(_, a)| a.clone())
        .unwrap_or_default();
    format!("http://{addr}/metrics")
}

/// Peak resident memory of a process, in MiB (Linux `VmHWM`).
pub fn peak_rss_mib(pid: u32) -> f64 {
    status_mib(pid, "VmHWM:")
}

/// A memory line of `/proc/<pid>/status`, in MiB (NaN when unreadable).
fn status_mib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// A user's HS256 token for two hours, signed here (no process started).
pub fn token_for(user: &str) -> anyhow::Result<String> {
    let claims = nexus_billing::auth::Claims {
        sub: user.into(),
        email: None,
        roles: vec![],
        exp: u64::try_from(chrono::Utc::now().timestamp() + 7200).unwrap_or(0),
        iat: None,
        iss: None,
        aud: None,
    };
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )?)
}

/// Asks for a full push of `provider` for the token's user; the job.
pub async fn start_full_sync(
    client: &mut IntegrationsServiceClient<Channel>,
    token: &str,
    provider: nexus_billing::grpc::proto::integrations::Provider,
) -> anyhow::Result<SyncJob> {
    client
        .sync_integration(authed(
            nexus_billing::grpc::proto::integrations::SyncIntegrationRequest {
                full: true,
                provider: provider.into(),
                direction: 0,
            },
            token,
        )?)
        .await?
        .into_inner()
        .job
        .ok_or_else(|| anyhow::anyhow!("no job"))
}

pub fn mint_token(db_url: &str) -> anyhow::Result<String> {
    let out = Command::new(BIN)
        .env_clear()
        .envs(base_env(db_url))
        .args(["token", "--user-id", USER, "--ttl", "2h"])
        .output()?;
    anyhow::ensure!(out.status.success(), "token failed");
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

pub fn authed<T>(message: T, token: &str) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    Ok(request)
}

/// Connects HubSpot for the bench user with the private-app `access_token`.
pub async fn connect_hubspot(
    client: &mut IntegrationsServiceClient<Channel>,
    token: &str,
    access_token: &str,
) -> anyhow::Result<()> {
    client
        .connect_integration(authed(
            ConnectIntegrationRequest {
                provider: Provider::Hubspot.into(),
                credentials: [("accessToken".to_string(), access_token.to_string())].into(),
                settings: Default::default(),
            },
            token,
        )?)
        .await?;
    Ok(())
}

/// Runs one statement on the database.
pub async fn execute(db_url: &str, sql: &str) -> anyhow::Result<()> {
    let sql = sqlx::AssertSqlSafe(sql.to_string());
    if db_url.starts_with("postgres") {
        let pool = PgPool::connect(db_url).await?;
        sqlx::query(sql).execute(&pool).await?;
        pool.close().await;
    } else {
        let pool = SqlitePool::connect(db_url).await?;
        sqlx::query(sql).execute(&pool).await?;
        pool.close().await;
    }
    Ok(())
}

/// Polls the job every 100 ms until it has finished.
pub async fn wait_for_job(
    client: &mut IntegrationsServiceClient<Channel>,
    token: &str,
    id: &str,
) -> anyhow::Result<SyncJob> {
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = client
            .get_sync_job(authed(GetSyncJobRequest { id: id.to_string() }, token)?)
            .await?
            .into_inner()
            .job
            .ok_or_else(|| anyhow::anyhow!("no job"))?;
        if !matches!(now.state(), SyncJobState::Queued | SyncJobState::Running) {
            return Ok(now);
        }
    }
}

/// Stops the service gracefully.
pub fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

/// Starts the binary with `env` and `args`, every stderr line appended to `log`; waits for the
/// "serving" line. The child, gRPC and HTTP addresses.
pub fn serve_logged(
    env: &[(String, String)],
    args: &[String],
    log: &std::path::Path,
) -> anyhow::Result<(Child, String, String)> {
    use std::io::{BufRead, BufReader, Write};
    let mut child = Command::new(BIN)
        .env_clear()
        .envs(env.iter().cloned())
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child
        .stderr
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stderr"))?;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let mut lines = BufReader::new(stderr).lines();
    let (grpc, http) = loop {
        let line = lines
            .next()
            .ok_or_else(|| anyhow::anyhow!("the service exited before serving"))??;
        writeln!(file, "{line}")?;
        let json: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if json["message"] == "serving" {
            remember_metrics_addr(child.id(), &json);
            break (
                json["grpc_addr"].as_str().unwrap_or_default().to_string(),
                json["http_addr"].as_str().unwrap_or_default().to_string(),
            );
        }
    };
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            let _ = writeln!(file, "{line}");
        }
    });
    Ok((child, grpc, http))
}

/// Open file descriptors of a process (Linux `/proc/<pid>/fd`).
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// Resident memory of a process now, in MiB (Linux `VmRSS`).
pub fn rss_mib(pid: u32) -> f64 {
    status_mib(pid, "VmRSS:")
}

/// Searches every file under `paths` (recursively) for every secret, as bytes. Returns the
/// hits as (secret name, file); also how many files and bytes were searched.
pub fn find_secrets(
    paths: &[std::path::PathBuf],
    secrets: &[(&str, String)],
) -> (Vec<(String, String)>, usize, u64) {
    let mut hits = Vec::new();
    let (mut files, mut bytes) = (0, 0u64);
    let mut queue: Vec<std::path::PathBuf> = paths.to_vec();
    while let Some(path) = queue.pop() {
        if path.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&path) {
                queue.extend(entries.filter_map(Result::ok).map(|e| e.path()));
            }
            continue;
        }
        let Ok(content) = std::fs::read(&path) else {
            continue;
        };
        files += 1;
        bytes += content.len() as u64;
        for (name, secret) in secrets {
            if secret.len() >= 8
                && content
                    .windows(secret.len())
                    .any(|w| w == secret.as_bytes())
            {
                hits.push((name.to_string(), path.display().to_string()));
            }
        }
    }
    (hits, files, bytes)
}

/// Deterministic shuffle (xorshift), so runs are comparable.
pub fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for i in (1..items.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let j = usize::try_from(state % (i as u64 + 1)).unwrap_or(0);
        items.swap(i, j);
    }
}
