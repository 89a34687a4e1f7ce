//! The hot path (issue 27): `CheckLimit` and `GetUsage`, the calls the card app makes before
//! every card or contact, for a user with a million contacts and for a new one.
//!
//! 1. Latency: sequential calls on one connection (after a warm-up) for the large user and for
//!    a new user: p50, p99 and max, in milliseconds, as the client sees them over loopback.
//! 2. Rate: `h2load -c 8 -m 16` (8 connections x 16 streams) against gRPC health `Check`,
//!    `GetUsage` and `CheckLimit` of the large user, one after the other in the same run, and each
//!    call's rate as a share of health `Check`'s. Every answer is checked: the service's own
//!    `grpc_requests_total{code="0"}` must grow by the number of calls h2load made.
//!
//! Run: `cargo bench --bench hot_path` (SQLite in a temporary directory), or with
//! `BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres` (PostgreSQL, a scratch
//! database). Optional: BENCH_HOT_CONTACTS (default 1000000), BENCH_HOT_CALLS (latency calls per
//! case, default 2000), BENCH_HOT_REQUESTS (h2load requests per call, default 200000). Needs
//! `h2load` (Debian: nghttp2-client).

#[allow(dead_code)]
mod support;

use std::{process::Command, time::Instant};

use nexus_billing::grpc::proto::billing::{
    CheckLimitRequest, GetUsageRequest, Resource, billing_service_client::BillingServiceClient,
};
use prost::Message as _;
use support::{Database, USER, authed, base_env, env_or, serve, stop, token_for};

const NEW_USER: &str = "bench-new-user";

/// Inserts `contacts` contacts (and 3 cards) for `USER` in one statement each.
async fn seed_large_user(url: &str, contacts: usize) -> anyhow::Result<()> {
    support::seed(url, 0).await?;
    let generate = if url.starts_with("postgres") {
        format!(
            "INSERT INTO contacts (id, user_id, email, first_name) \
             SELECT 'c' || g, '{USER}', 'contact' || g || '@example.com', 'Contact' \
             FROM generate_series(1, {contacts}) g"
        )
    } else {
        format!(
            "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < {contacts}) \
             INSERT INTO contacts (id, user_id, email, first_name) \
             SELECT 'c' || n, '{USER}', 'contact' || n || '@example.com', 'Contact' FROM g"
        )
    };
    support::execute(url, &generate).await?;
    support::execute(
        url,
        &format!("INSERT INTO cards (id, user_id) VALUES ('k1', '{USER}'), ('k2', '{USER}'), ('k3', '{USER}')"),
    )
    .await?;
    support::execute(url, "ANALYZE").await?;
    Ok(())
}

struct Latency {
    p50: f64,
    p99: f64,
    max: f64,
}

fn latency(mut samples: Vec<f64>) -> Latency {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
        samples[i]
    };
    Latency {
        p50: at(0.50),
        p99: at(0.99),
        max: samples.last().copied().unwrap_or(f64::NAN),
    }
}

async fn measure_latency(
    client: &mut BillingServiceClient<tonic::transport::Channel>,
    user: &str,
    calls: usize,
) -> anyhow::Result<(Latency, Latency)> {
    let token = token_for(user)?;
    let check = || CheckLimitRequest {
        user_id: String::new(),
        resource: Resource::Contacts.into(),
        quantity: 1,
    };
    for _ in 0..200 {
        client.check_limit(authed(check(), &token)?).await?;
        client
            .get_usage(authed(GetUsageRequest {}, &token)?)
            .await?;
    }
    let mut limit = Vec::with_capacity(calls);
    let mut usage = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        client.check_limit(authed(check(), &token)?).await?;
        limit.push(started.elapsed().as_secs_f64() * 1000.0);
        let started = Instant::now();
        client
            .get_usage(authed(GetUsageRequest {}, &token)?)
            .await?;
        usage.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    Ok((latency(limit), latency(usage)))
}

/// `grpc_requests_total` with code 0 for `method`, from the service's /metrics.
async fn ok_calls(metrics: &str, method: &str) -> anyhow::Result<u64> {
    let text = reqwest::get(metrics).await?.text().await?;
    Ok(text
        .lines()
        .filter(|l| {
            l.starts_with("grpc_requests_total{")
                && l.contains(&format!("method=\"{method}\""))
                && l.contains("code=\"0\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum())
}

/// One h2load run: calls per second, after checking every call was answered OK.
async fn h2load(
    grpc: &str,
    metrics: &str,
    method: &str,
    body: &[u8],
    token: &str,
    requests: usize,
) -> anyhow::Result<f64> {
    let file = tempfile::NamedTempFile::new()?;
    // A gRPC frame: uncompressed, 4-byte big-endian length, the message.
    let mut frame = vec![0u8];
    frame.extend_from_slice(&u32::try_from(body.len())?.to_be_bytes());
    frame.extend_from_slice(body);
    std::fs::write(file.path(), &frame)?;
    let before = ok_calls(metrics, method).await?;
    let run = |n: usize| {
        Command::new("h2load")
            .args(["-n", &n.to_string(), "-c", "8", "-m", "16"])
            .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
            .args(["-H", &format!("authorization: Bearer {token}")])
            .arg("-d")
            .arg(file.path())
            .arg(format!("http://{grpc}{method}"))
            .output()
    };
    // Warm-up (connections, caches, the CPU's clock), then the measured run.
    let warm = run(requests / 10)?;
    anyhow::ensure!(warm.status.success(), "h2load failed: {warm:?}");
    let output = run(requests)?;
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    anyhow::ensure!(output.status.success(), "h2load failed: {text}");
    let rate = text
        .lines()
        .find(|l| l.starts_with("finished in"))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|l| l.split(' ').next())
        .and_then(|r| r.parse::<f64>().ok())
        .ok_or_else(|| anyhow::anyhow!("no rate in h2load's output: {text}"))?;
    let ok = ok_calls(metrics, method).await? - before;
    let expected = (requests + requests / 10) as u64;
    anyhow::ensure!(
        ok == expected,
        "{method}: {ok} OK answers for {expected} calls; h2load said: {text}"
    );
    Ok(rate)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let contacts = env_or("BENCH_HOT_CONTACTS", 1_000_000);
    let calls = env_or("BENCH_HOT_CALLS", 2_000);
    let requests = env_or("BENCH_HOT_REQUESTS", 200_000);
    let db = Database::create().await?;
    let backend = if db.url.starts_with("postgres") {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    let seeded = Instant::now();
    seed_large_user(&db.url, contacts).await?;
    eprintln!(
        "{backend}: seeded {contacts} contacts in {:.1} s",
        seeded.elapsed().as_secs_f64()
    );
    let (child, grpc, _) = serve(base_env(&db.url))?;
    let metrics = support::metrics_url(&child);
    let result = async {
        let mut client = BillingServiceClient::connect(format!("http://{grpc}")).await?;
        let usage = client
            .get_usage(authed(GetUsageRequest {}, &token_for(USER)?)?)
            .await?
            .into_inner()
            .usage
            .unwrap_or_default();
        anyhow::ensure!(
            usage.contacts_used == i64::try_from(contacts)?,
            "GetUsage says {} contacts, seeded {contacts}",
            usage.contacts_used
        );
        println!("| database | user | call | p50 ms | p99 ms | max ms |");
        println!("|---|---|---|---:|---:|---:|");
        for (name, user) in [
            (format!("{contacts} contacts"), USER),
            ("new".to_string(), NEW_USER),
        ] {
            let (limit, usage) = measure_latency(&mut client, user, calls).await?;
            for (call, l) in [("CheckLimit", limit), ("GetUsage", usage)] {
                println!(
                    "| {backend} | {name} | {call} | {:.3} | {:.3} | {:.3} |",
                    l.p50, l.p99, l.max
                );
            }
        }
        let token = token_for(USER)?;
        let check = CheckLimitRequest {
            user_id: String::new(),
            resource: Resource::Contacts.into(),
            quantity: 1,
        }
        .encode_to_vec();
        let health = h2load(
            &grpc,
            &metrics,
            "/grpc.health.v1.Health/Check",
            &[],
            &token,
            requests,
        )
        .await?;
        let usage = h2load(
            &grpc,
            &metrics,
            "/nexus.billing.v1.BillingService/GetUsage",
            &[],
            &token,
            requests,
        )
        .await?;
        let limit = h2load(
            &grpc,
            &metrics,
            "/nexus.billing.v1.BillingService/CheckLimit",
            &check,
            &token,
            requests,
        )
        .await?;
        println!();
        println!("| database | call | calls/s | share of health Check |");
        println!("|---|---|---:|---:|");
        for (call, rate) in [
            ("health Check", health),
            ("GetUsage", usage),
            ("CheckLimit", limit),
        ] {
            println!("| {backend} | {call} | {rate:.0} | {:.2} |", rate / health);
        }
        Ok(())
    }
    .await;
    stop(child);
    db.drop().await?;
    result
}
