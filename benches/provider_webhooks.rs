//! Integrations in real time (issue 29): provider webhooks in, and card-app changes out.
//!
//! 1. Webhook-in throughput: 1,000 HubSpot contact events, signed (v3), in 10 deliveries of
//!    100 (HubSpot's most per delivery) sent at once, then 1,000 deliveries of one event from
//!    16 senders. Each delivery's answer time (p50/p99, target p99 < 50 ms), events per second,
//!    and the time until every event is applied (read back from the fake HubSpot and imported).
//! 2. Notification-to-provider latency: 20 times, a contact is written and NotifyContactsChanged
//!    called; the time until the fake HubSpot receives the contact (p50/p99, target 5 s). The
//!    coalescing window (NOTIFY_COALESCE_WINDOW, 2 s by default) is most of it.
//!
//! The real binary (release) runs as a child process; the fake HubSpot answers on loopback.
//! Run: `cargo bench --bench provider_webhooks`. SQLite in a temporary directory, or PostgreSQL
//! when BENCH_DATABASE_URL is set. BENCH_WINDOW sets the coalescing window (default 2s).

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

use base64::Engine;
use fake_providers::{FakeProvider, HUBSPOT_TOKEN, Kind};
use hmac::{Hmac, KeyInit, Mac};
use nexus_billing::grpc::proto::integrations::{
    ConnectIntegrationRequest, NotifyContactsChangedRequest, Provider,
    integrations_service_client::IntegrationsServiceClient,
};
use sha2::Sha256;
use support::{Database, authed, base_env, execute, mint_token, serve, stop};

const SECRET: &str = "bench-hubspot-app-secret";
const PUBLIC: &str = "https://hooks.bench.test";

fn sign(body: &str, ts: i64) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("any key length");
    mac.update(format!("POST{PUBLIC}/integrations/webhook/hubspot{body}{ts}").as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

fn events(first: u64, n: u64, contacts: u64) -> String {
    let events: Vec<serde_json::Value> = (first..first + n)
        .map(|id| {
            serde_json::json!({"eventId": id, "subscriptionId": 1, "portalId": fake_feeds::PORTAL_ID,
                "appId": 1, "occurredAt": 1_700_000_000_000_i64, "subscriptionType": "contact.propertyChange",
                "attemptNumber": 0, "objectId": id % contacts, "propertyName": "firstname"})
        })
        .collect();
    serde_json::Value::from(events).to_string()
}

async fn deliver(client: &reqwest::Client, url: &str, body: String) -> anyhow::Result<f64> {
    let ts = chrono::Utc::now().timestamp_millis();
    let started = Instant::now();
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .header("x-hubspot-signature-v3", sign(&body, ts))
        .header("x-hubspot-request-timestamp", ts.to_string())
        .body(body)
        .send()
        .await?;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    anyhow::ensure!(
        response.status() == 200,
        "delivery answered {}",
        response.status()
    );
    Ok(ms)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn pending(db_url: &str) -> anyhow::Result<i64> {
    let sql = "SELECT COUNT(*) FROM integration_webhook_events WHERE state = 'pending'";
    Ok(if db_url.starts_with("postgres") {
        let pool = sqlx::PgPool::connect(db_url).await?;
        let n = sqlx::query_scalar(sql).fetch_one(&pool).await?;
        pool.close().await;
        n
    } else {
        let pool = sqlx::SqlitePool::connect(db_url).await?;
        let n = sqlx::query_scalar(sql).fetch_one(&pool).await?;
        pool.close().await;
        n
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let postgres = std::env::var("BENCH_DATABASE_URL").is_ok();
    let window = std::env::var("BENCH_WINDOW").unwrap_or_else(|_| "2s".into());
    let db = Database::create().await?;
    let hubspot = FakeProvider::start(Kind::Hubspot).await;
    let remote: Vec<(String, String)> = (0..100)
        .map(|i| (format!("remote{i}@bench.test"), format!("R{i}")))
        .collect();
    let refs: Vec<(&str, &str, &str, &str)> = remote
        .iter()
        .map(|(e, f)| (e.as_str(), f.as_str(), "Remote", "2024-06-01T00:00:00Z"))
        .collect();
    hubspot.set_remote(&refs);
    let mut env = base_env(&db.url);
    env.extend(
        [
            ("HUBSPOT_API_BASE", hubspot.server.uri()),
            ("HUBSPOT_WEBHOOK_SECRET", SECRET.to_string()),
            ("PUBLIC_BASE_URL", PUBLIC.to_string()),
            ("NOTIFY_COALESCE_WINDOW", window.clone()),
            ("RATE_LIMITS", "hubspot=100000/1s".to_string()),
        ]
        .map(|(k, v)| (k.to_string(), v)),
    );
    // Migrations run when the service starts; the token command needs the tables.
    let (child, grpc, http) = serve(env)?;
    let token = mint_token(&db.url)?;
    let result = async {
        let mut client = IntegrationsServiceClient::connect(format!("http://{grpc}")).await?;
        client
            .connect_integration(authed(
                ConnectIntegrationRequest {
                    provider: Provider::Hubspot.into(),
                    credentials: [("accessToken".to_string(), HUBSPOT_TOKEN.to_string())].into(),
                    settings: [("syncDirection".to_string(), "both".to_string())].into(),
                },
                &token,
            )?)
            .await?;
        let url = format!("http://{http}/integrations/webhook/hubspot");
        let http_client = reqwest::Client::new();
        println!(
            "provider webhooks in and card-app changes out ({})\n",
            if postgres { "PostgreSQL" } else { "SQLite" }
        );
        println!(
            "| run | deliveries | events | events/s | p50 ms | p99 ms | all applied after (s) |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|");
        // Warm-up (not measured): the service's database connections are opened as the
        // first requests need them.
        let warm: Vec<_> = (0..32u64)
            .map(|i| deliver(&http_client, &url, events(1_000_000 + i, 1, 100)))
            .collect();
        for answer in futures_util::future::join_all(warm).await {
            answer?;
        }
        while pending(&db.url).await? > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let reads_before = hubspot.batch_reads();
        let mut next_id = 0u64;
        for (name, deliveries, per, senders) in [
            ("burst: 10 x 100 events at once", 10u64, 100u64, 10usize),
            ("1,000 single-event deliveries, 16 senders", 1000, 1, 16),
        ] {
            let bodies: Vec<String> = (0..deliveries)
                .map(|d| events(next_id + d * per, per, 100))
                .collect();
            next_id += deliveries * per;
            let started = Instant::now();
            let queue = std::sync::Arc::new(std::sync::Mutex::new(bodies));
            let mut tasks = Vec::new();
            for _ in 0..senders {
                let queue = std::sync::Arc::clone(&queue);
                let (client, url) = (http_client.clone(), url.clone());
                tasks.push(tokio::spawn(async move {
                    let mut times = Vec::new();
                    loop {
                        let body = queue.lock().unwrap_or_else(|e| e.into_inner()).pop();
                        let Some(body) = body else { break };
                        times.push(deliver(&client, &url, body).await?);
                    }
                    Ok::<_, anyhow::Error>(times)
                }));
            }
            let mut times = Vec::new();
            for task in tasks {
                times.extend(task.await??);
            }
            let sent = started.elapsed().as_secs_f64();
            while pending(&db.url).await? > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let applied = started.elapsed().as_secs_f64();
            times.sort_by(f64::total_cmp);
            println!(
                "| {name} | {deliveries} | {} | {:.0} | {:.1} | {:.1} | {applied:.2} |",
                deliveries * per,
                (deliveries * per) as f64 / sent,
                percentile(&times, 0.5),
                percentile(&times, 0.99),
            );
        }
        println!(
            "\nHubSpot batch reads for the 2,000 events: {}",
            hubspot.batch_reads() - reads_before
        );

        println!("\nnotification to provider (NOTIFY_COALESCE_WINDOW={window}), 20 rounds:\n");
        let now_sql = if postgres {
            "now()"
        } else {
            "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"
        };
        let mut latencies = Vec::new();
        for round in 0..20 {
            let email = format!("card{round}@bench.test");
            execute(
                &db.url,
                &format!(
                    "INSERT INTO contacts (id, user_id, email, first_name, created_at, updated_at) \
                     VALUES ('{}', '{}', '{email}', 'Card', {now_sql}, {now_sql})",
                    uuid::Uuid::new_v4(),
                    support::USER
                ),
            )
            .await?;
            let started = Instant::now();
            client
                .notify_contacts_changed(authed(
                    NotifyContactsChangedRequest {
                        user_id: String::new(),
                        contact_ids: vec![email.clone()],
                    },
                    &token,
                )?)
                .await?;
            while !hubspot.pushed_emails().contains(&email) {
                tokio::time::sleep(Duration::from_millis(5)).await;
                anyhow::ensure!(
                    started.elapsed() < Duration::from_secs(120),
                    "{email} never pushed"
                );
            }
            latencies.push(started.elapsed().as_secs_f64());
        }
        latencies.sort_by(f64::total_cmp);
        println!("| p50 s | p99 s | max s |");
        println!("|---:|---:|---:|");
        println!(
            "| {:.2} | {:.2} | {:.2} |",
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
            latencies.last().copied().unwrap_or_default()
        );
        hubspot.assert_no_problems();
        Ok::<_, anyhow::Error>(())
    }
    .await;
    stop(child);
    db.drop().await?;
    result
}
