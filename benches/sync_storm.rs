//! Sync jobs under provider storms, with the service killed mid-batch.
//!
//! One user with 20,000 contacts syncs to HubSpot (batch upsert by email: idempotent) and to a
//! Zapier catch hook (every POST triggers the Zap: NOT idempotent) at the same time. Both
//! providers are one hostile fake (hyper, on loopback) that answers each push, by a seeded
//! draw:
//! - 12 % 429 with a hostile `Retry-After` (`1`, `0`, `-5`, `1.5`, `soon`, a date in the
//!   past, a date 2 s ahead, bytes that are not UTF-8, or none);
//! - 8 % the start of a 5xx burst (503, then 500 and 502 for the next two pushes);
//! - 8 % slow (2 to 4 s), then a normal answer;
//! - 5 % the connection reset before reading the batch;
//! - 4 % the batch taken, then the connection reset (the answer is lost);
//! - 3 % 200 with hostile headers (a non-UTF-8 value, an 8 KB header, `text/html`) and a body
//!   that is not JSON;
//! - otherwise a normal 200.
//!
//! When 40 % of HubSpot's contacts have arrived the service is killed (SIGKILL) and started
//! again on the same database; the jobs' leases expire and they resume from their checkpoints.
//!
//! Checked at the fake: every contact delivered to both; no contact delivered to Zapier twice
//! unless its earlier delivery's answer was lost (reset after the batch was taken, or the
//! batch in flight when the service died), and those are counted.
//!
//! Run: `cargo bench --bench sync_storm` (SQLite in a temporary directory, or PostgreSQL with
//! BENCH_DATABASE_URL). Optional: STORM_CONTACTS (default 20000), STORM_SEED (default 11).

#[allow(dead_code)]
mod support;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{
    Request, Response, StatusCode, body::Incoming, server::conn::http1, service::service_fn,
};
use hyper_util::rt::TokioIo;
use nexus_billing::grpc::proto::integrations::{
    ConnectIntegrationRequest, GetSyncJobRequest, Provider, SyncJob, SyncJobState,
    integrations_service_client::IntegrationsServiceClient,
};

const HOOK_PATH: &str = "/hooks/catch/123456/STORMHOOKSECRET/";
const HUBSPOT_TOKEN: &str = "pat-na1-storm-0123456789";

#[derive(Default)]
struct Counts {
    /// Per provider: contact -> times the fake took it.
    taken: HashMap<&'static str, HashMap<String, u32>>,
    /// Per provider: contacts whose (latest) batch answer was lost.
    lost: HashMap<&'static str, HashMap<String, u32>>,
    /// Batches taken per provider, by the moment they were taken.
    batches: HashMap<&'static str, Vec<(Instant, Vec<String>)>>,
    answers: HashMap<String, usize>,
    burst_left: u32,
    rng: u64,
}

impl Counts {
    fn roll(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }
}

type Shared = Arc<Mutex<Counts>>;

enum Answer {
    Normal,
    TooMany(Option<Vec<u8>>),
    ServerError(u16),
    Slow(Duration),
    ResetBefore,
    ResetAfter,
    Hostile,
}

fn draw(counts: &mut Counts) -> Answer {
    if counts.burst_left > 0 {
        counts.burst_left -= 1;
        return Answer::ServerError(if counts.burst_left == 1 { 500 } else { 502 });
    }
    let r = counts.roll() % 100;
    let pick = counts.roll();
    match r {
        0..12 => {
            let future = httpdate(std::time::SystemTime::now() + Duration::from_secs(2));
            let values: [Option<Vec<u8>>; 9] = [
                Some(b"1".to_vec()),
                Some(b"0".to_vec()),
                Some(b"-5".to_vec()),
                Some(b"1.5".to_vec()),
                Some(b"soon".to_vec()),
                Some(b"Wed, 21 Oct 2015 07:28:00 GMT".to_vec()),
                Some(future.into_bytes()),
                Some(vec![0xff, 0xfe, b'7']),
                None,
            ];
            Answer::TooMany(values[usize::try_from(pick % 9).unwrap_or(0)].clone())
        }
        12..20 => {
            counts.burst_left = 2;
            Answer::ServerError(503)
        }
        20..28 => Answer::Slow(Duration::from_millis(2000 + pick % 2000)),
        28..33 => Answer::ResetBefore,
        33..37 => Answer::ResetAfter,
        37..40 => Answer::Hostile,
        _ => Answer::Normal,
    }
}

fn httpdate(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    chrono::DateTime::from_timestamp(i64::try_from(secs).unwrap_or(0), 0)
        .unwrap_or_default()
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string()
}

fn json(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

/// The fake's answer; `Err` makes hyper drop the connection without answering (a reset).
async fn handle(
    counts: Shared,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_string();
    let provider: &'static str = if path == HOOK_PATH {
        "zapier"
    } else {
        "hubspot"
    };
    if provider == "hubspot" {
        let auth = parts
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if auth != Some(&format!("Bearer {HUBSPOT_TOKEN}")) {
            return Ok(json(
                StatusCode::UNAUTHORIZED,
                serde_json::json!({"message": "bad token"}),
            ));
        }
    }
    // Verification and import reads are answered plainly: the storm is on the pushes.
    if parts.method == hyper::Method::GET {
        return Ok(json(StatusCode::OK, serde_json::json!({"results": []})));
    }
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let items = if provider == "zapier" {
        &body["contacts"]
    } else {
        &body["inputs"]
    };
    let emails: Vec<String> = items
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| {
                    i.get(if provider == "zapier" { "email" } else { "id" })
                        .and_then(|e| e.as_str())
                })
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    if emails.is_empty() {
        // Zapier's connection test.
        return Ok(json(
            StatusCode::OK,
            serde_json::json!({"status": "success"}),
        ));
    }
    let answer = {
        let mut c = counts
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?;
        draw(&mut c)
    };
    let label = match &answer {
        Answer::Normal => "200",
        Answer::TooMany(_) => "429",
        Answer::ServerError(_) => "5xx",
        Answer::Slow(_) => "slow 200",
        Answer::ResetBefore => "reset before taking",
        Answer::ResetAfter => "reset after taking",
        Answer::Hostile => "200 with hostile headers and body",
    };
    let take = |lost: bool| -> Result<(), std::io::Error> {
        let mut c = counts
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?;
        *c.answers.entry(format!("{provider}: {label}")).or_default() += 1;
        for e in &emails {
            *c.taken
                .entry(provider)
                .or_default()
                .entry(e.clone())
                .or_default() += 1;
            if lost {
                *c.lost
                    .entry(provider)
                    .or_default()
                    .entry(e.clone())
                    .or_default() += 1;
            }
        }
        c.batches
            .entry(provider)
            .or_default()
            .push((Instant::now(), emails.clone()));
        Ok(())
    };
    let count_only = || {
        if let Ok(mut c) = counts.lock() {
            *c.answers.entry(format!("{provider}: {label}")).or_default() += 1;
        }
    };
    let ok = || {
        if provider == "zapier" {
            json(
                StatusCode::OK,
                serde_json::json!({"status": "success", "id": "x"}),
            )
        } else {
            let results: Vec<_> = emails
                .iter()
                .map(|e| serde_json::json!({"id": e, "properties": {"email": e}}))
                .collect();
            json(
                StatusCode::OK,
                serde_json::json!({"status": "COMPLETE", "results": results}),
            )
        }
    };
    match answer {
        Answer::Normal => {
            take(false)?;
            Ok(ok())
        }
        Answer::Slow(delay) => {
            tokio::time::sleep(delay).await;
            take(false)?;
            Ok(ok())
        }
        Answer::TooMany(value) => {
            count_only();
            let mut r = json(
                StatusCode::TOO_MANY_REQUESTS,
                serde_json::json!({"status": "error", "category": "RATE_LIMITS", "message": "You have reached your secondly limit."}),
            );
            if let Some(v) = value.and_then(|v| hyper::header::HeaderValue::from_bytes(&v).ok()) {
                r.headers_mut().insert("retry-after", v);
            }
            Ok(r)
        }
        Answer::ServerError(code) => {
            count_only();
            let mut r = Response::new(Full::new(Bytes::from_static(
                b"<html><body>Bad gateway</body></html>",
            )));
            *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY);
            Ok(r)
        }
        Answer::ResetBefore => {
            count_only();
            Err(std::io::Error::other("reset"))
        }
        Answer::ResetAfter => {
            take(true)?;
            Err(std::io::Error::other("reset"))
        }
        Answer::Hostile => {
            // HubSpot's answer is read (and cannot be): as good as lost. Zapier's is not read.
            take(provider == "hubspot")?;
            let mut r = Response::new(Full::new(Bytes::from_static(b"<html>\x00\xff not json")));
            let h = r.headers_mut();
            h.insert(
                "content-type",
                hyper::header::HeaderValue::from_static("text/html"),
            );
            if let Ok(v) = hyper::header::HeaderValue::from_bytes(&[b'a', 0xff, 0xfe, b'z']) {
                h.insert("x-weird", v);
            }
            if let Ok(v) = hyper::header::HeaderValue::from_str(&"b".repeat(8 * 1024)) {
                h.insert("x-huge", v);
            }
            h.insert(
                "retry-after",
                hyper::header::HeaderValue::from_static("99999999999999999999"),
            );
            Ok(r)
        }
    }
}

async fn start_fake(counts: Shared) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let counts = Arc::clone(&counts);
            tokio::spawn(async move {
                let service = service_fn(move |r| handle(Arc::clone(&counts), r));
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(format!("http://{addr}"))
}

async fn job(
    client: &mut IntegrationsServiceClient<tonic::transport::Channel>,
    token: &str,
    id: &str,
) -> anyhow::Result<SyncJob> {
    client
        .get_sync_job(support::authed(
            GetSyncJobRequest { id: id.to_string() },
            token,
        )?)
        .await?
        .into_inner()
        .job
        .ok_or_else(|| anyhow::anyhow!("no job"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let contacts: usize = std::env::var("STORM_CONTACTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let seed: u64 = std::env::var("STORM_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(11);
    let counts: Shared = Arc::new(Mutex::new(Counts {
        rng: seed | 1,
        ..Counts::default()
    }));
    let fake = start_fake(Arc::clone(&counts)).await?;
    let db = support::Database::create().await?;
    support::seed(&db.url, contacts).await?;
    let work = tempfile::tempdir()?;
    let mut env = support::base_env(&db.url);
    for (k, v) in [
        ("HUBSPOT_API_BASE", fake.clone()),
        ("ZAPIER_HOOK_BASE", format!("{fake}/hooks/catch/")),
        // Shorter than the defaults so the run takes minutes, not hours; same policy.
        ("SYNC_LEASE", "5s".into()),
        ("SYNC_RETRY_MIN_DELAY", "200ms".into()),
        ("SYNC_RETRY_MAX_DELAY", "5s".into()),
    ] {
        env.push((k.into(), v));
    }
    let (mut child, grpc, _) = support::serve_logged(&env, &[], &work.path().join("first.log"))?;
    let token = support::mint_token(&db.url)?;
    let mut client = IntegrationsServiceClient::connect(format!("http://{grpc}")).await?;
    support::connect_hubspot(&mut client, &token, HUBSPOT_TOKEN).await?;
    client
        .connect_integration(support::authed(
            ConnectIntegrationRequest {
                provider: Provider::Zapier.into(),
                credentials: [("webhookUrl".to_string(), format!("{fake}{HOOK_PATH}"))].into(),
                settings: Default::default(),
            },
            &token,
        )?)
        .await?;
    let started = Instant::now();
    let mut ids = Vec::new();
    for provider in [Provider::Hubspot, Provider::Zapier] {
        let job = support::start_full_sync(&mut client, &token, provider).await?;
        ids.push((provider, job.id));
    }

    // Kill when 40 % of HubSpot's contacts have arrived.
    let killed_at = loop {
        let taken = counts
            .lock()
            .map(|c| c.taken.get("hubspot").map_or(0, HashMap::len))
            .unwrap_or(0);
        if taken >= contacts * 2 / 5 {
            child.kill()?;
            child.wait()?;
            break Instant::now();
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(900),
            "no progress: {taken} contacts at HubSpot"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (child, grpc, _) = support::serve_logged(&env, &[], &work.path().join("second.log"))?;
    let mut client = IntegrationsServiceClient::connect(format!("http://{grpc}")).await?;
    let mut finals = Vec::new();
    for (provider, id) in &ids {
        let done = loop {
            let now = job(&mut client, &token, id).await?;
            if !matches!(now.state(), SyncJobState::Queued | SyncJobState::Running) {
                break now;
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(1800),
                "{provider:?} job unfinished after 30 min: {now:?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        finals.push((*provider, done));
    }
    let took = started.elapsed();
    let metrics = reqwest::get(support::metrics_url(&child))
        .await?
        .text()
        .await?;
    std::fs::write(work.path().join("metrics.txt"), metrics)?;
    support::stop(child);
    // Secrets: both runs' logs, the metrics page, and the database file (SQLite) or a dump.
    let mut searched = vec![work.path().to_path_buf()];
    match db.url.strip_prefix("sqlite://") {
        // The database file with its WAL and shared-memory files.
        Some(file) => searched.extend(std::path::Path::new(file).parent().map(|d| d.to_path_buf())),
        None => {
            let dump = std::process::Command::new("pg_dump")
                .args(["--data-only", &db.url])
                .output()?;
            std::fs::write(work.path().join("database.sql"), dump.stdout)?;
        }
    }
    let secrets = [
        ("HubSpot token", HUBSPOT_TOKEN.to_string()),
        ("Zapier hook secret", "STORMHOOKSECRET".to_string()),
        ("JWT secret", support::JWT_SECRET.to_string()),
        ("encryption key", support::ENCRYPTION_KEY.to_string()),
        (
            "bearer token",
            token.rsplit('.').next().unwrap_or_default().to_string(),
        ),
    ];
    let (secret_hits, files, bytes) = support::find_secrets(&searched, &secrets);
    println!(
        "secrets searched: {} secrets in {files} files ({:.1} MB: 2 service logs at info level, metrics, the database): {} hits {secret_hits:?}",
        secrets.len(),
        bytes as f64 / 1e6,
        secret_hits.len()
    );

    db.drop().await?;

    let c = counts.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    let mut failures = Vec::new();
    let all: Vec<String> = (0..contacts)
        .map(|i| format!("contact{i}@example.com"))
        .collect();
    // The batch in flight when the service died: taken up to 2 s before the kill.
    let around_kill = |provider: &str| -> HashMap<String, ()> {
        c.batches
            .get(provider)
            .map(|b| {
                b.iter()
                    .filter(|(at, _)| {
                        *at <= killed_at && killed_at.duration_since(*at) < Duration::from_secs(2)
                    })
                    .flat_map(|(_, e)| e.iter().map(|e| (e.clone(), ())))
                    .collect()
            })
            .unwrap_or_default()
    };
    println!(
        "{contacts} contacts, to HubSpot and Zapier at once; service killed (SIGKILL) at {:.1} s and restarted; both jobs ended after {:.1} s",
        (killed_at - started).as_secs_f64(),
        took.as_secs_f64()
    );
    for (provider, job) in &finals {
        println!(
            "{provider:?} job: {:?}, {} contacts done, {} failed, attempts {}, last error {:?}",
            job.state(),
            job.contacts_done,
            job.contacts_failed,
            job.attempts,
            job.last_error
        );
        if job.state() != SyncJobState::Succeeded {
            failures.push(format!("{provider:?} job ended {:?}", job.state()));
        }
    }
    for provider in ["hubspot", "zapier"] {
        let taken = c.taken.get(provider).cloned().unwrap_or_default();
        let missing = all.iter().filter(|e| !taken.contains_key(*e)).count();
        let twice: Vec<&String> = taken
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(e, _)| e)
            .collect();
        let lost = c.lost.get(provider).cloned().unwrap_or_default();
        let kill = around_kill(provider);
        let unexplained = twice
            .iter()
            .filter(|e| !lost.contains_key(**e) && !kill.contains_key(**e))
            .count();
        println!(
            "{provider}: {} of {contacts} contacts delivered, {missing} missing; {} delivered more than once ({} after a lost or unreadable answer, {} in the batch in flight at the kill, {unexplained} otherwise)",
            taken.len(),
            twice.len(),
            twice.iter().filter(|e| lost.contains_key(**e)).count(),
            twice
                .iter()
                .filter(|e| kill.contains_key(**e) && !lost.contains_key(**e))
                .count(),
        );
        if missing > 0 {
            failures.push(format!("{provider}: {missing} contacts never delivered"));
        }
        if provider == "zapier" && unexplained > 0 {
            failures.push(format!(
                "zapier: {unexplained} contacts delivered twice without a lost answer"
            ));
        }
    }
    let mut answers: Vec<_> = c.answers.iter().collect();
    answers.sort();
    println!("answers given by the fake: {answers:?}");
    let panics: usize = ["first.log", "second.log"]
        .iter()
        .map(|f| {
            std::fs::read_to_string(work.path().join(f))
                .unwrap_or_default()
                .matches("panicked")
                .count()
        })
        .sum();
    println!("panics in the service logs: {panics}");
    if !secret_hits.is_empty() {
        failures.push(format!("secrets found: {secret_hits:?}"));
    }
    if failures.is_empty() && panics == 0 {
        println!(
            "HELD: every contact delivered to both; no Zapier contact twice except after a lost answer"
        );
        Ok(())
    } else {
        anyhow::bail!("{failures:?}, {panics} panics")
    }
}
