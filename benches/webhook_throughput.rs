//! Webhook intake throughput and latency on PostgreSQL, with the fake Stripe on loopback.
//!
//! Signed `invoice.paid` deliveries (each a new event id, spread over many users) are sent to the
//! running service at 1, 8 and 64 concurrent senders; then 1,000,000 processed events are added
//! to the inbox and the same runs are repeated, to show the cost does not grow with history.
//! Since issue 11 a delivery is verified and stored only; the event processor applies it in the
//! background (its throughput is in `renewal_storm`).
//!
//! Run: `cargo bench --bench webhook_throughput` (PostgreSQL from BENCH_DATABASE_URL, default
//! postgres://postgres@127.0.0.1:5432/postgres; a scratch database is created and dropped).
//! Optional: BENCH_EVENTS (deliveries per run, default 3000), BENCH_HISTORY (default 1000000).

#[path = "../tests/api/fake_http.rs"]
mod fake_http;
#[path = "../tests/api/fake_stripe.rs"]
mod fake_stripe;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use clap::Parser;
use fake_stripe::{FakeStripe, InvoiceSpec, PRICE_PRO, SubSpec, sign_now};
use nexus_billing::{cli::Cli, config::Config, startup::Application};
use sqlx::{Connection, Executor, PgConnection, PgPool};

const USERS: usize = 500;
const INVOICES_PER_USER: usize = 2;
const SENDERS: [usize; 3] = [1, 8, 64];

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let admin_url = std::env::var("BENCH_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string());
    let events: usize = env_or("BENCH_EVENTS", 3000);
    let history: i64 = env_or("BENCH_HISTORY", 1_000_000);

    let name = format!("nexus_bench_{}", uuid::Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&admin_url).await?;
    admin
        .execute(sqlx::AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#)))
        .await?;
    let mut db_url = url::Url::parse(&admin_url)?;
    db_url.set_path(&format!("/{name}"));
    let result = run(db_url.as_str(), events, history).await;
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#
        )))
        .await?;
    result
}

async fn run(db_url: &str, events: usize, history: i64) -> anyhow::Result<()> {
    let stripe = FakeStripe::start().await;
    let data_dir = tempfile::tempdir()?;
    let mut args = vec![
        "nexus-billing".to_string(),
        "--app-env=development".into(),
        format!("--data-dir={}", data_dir.path().display()),
        format!("--database-url={db_url}"),
        "--database-max-connections=32".into(),
        "--grpc-addr=127.0.0.1:0".into(),
        "--http-addr=127.0.0.1:0".into(),
        "--metrics-addr=127.0.0.1:0".into(),
        "--jwt-secret=bench-secret-that-is-long-enough-for-hs256-0123456789".into(),
        "--encryption-key=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f".into(),
        "--log-level=error".into(),
    ];
    args.extend(
        stripe
            .settings()
            .into_iter()
            .map(|(k, v)| format!("{k}={v}")),
    );
    let cli = Cli::try_parse_from(args)?;
    let config = Config::from_settings(cli.settings).map_err(|e| anyhow::anyhow!("{e}"))?;
    let app = Application::build(config).await?;
    let url = format!("http://{}/billing/webhook", app.http_addr());
    let shutdown = app.shutdown_token();
    let server = tokio::spawn(app.run_until_stopped());
    let pool = PgPool::connect(db_url).await?;

    // Users with a live PRO subscription and paid invoices, at Stripe and here.
    let now = chrono::Utc::now().timestamp();
    let mut invoices = Vec::new();
    for u in 0..USERS {
        let (user, customer, sub) = (format!("user{u}"), format!("cus_b{u}"), format!("sub_b{u}"));
        stripe.put_subscription(&SubSpec {
            id: &sub,
            customer: &customer,
            price: PRICE_PRO,
            status: "active",
            period_start: now - 86_400,
            period_end: now + 29 * 86_400,
            cancel_at_period_end: false,
        });
        for i in 0..INVOICES_PER_USER {
            let id = format!("in_b{u}_{i}");
            let invoice = stripe.put_invoice(&InvoiceSpec {
                id: &id,
                customer: &customer,
                subscription: &sub,
                status: "paid",
                amount_due: 900,
                amount_paid: 900,
                created: now - i64::try_from(i).unwrap_or(0) * 86_400,
            });
            invoices.push(invoice);
        }
        sqlx::query("INSERT INTO billing_customers (user_id, provider, customer_id) VALUES ($1, 'stripe', $2)")
            .bind(&user)
            .bind(&customer)
            .execute(&pool)
            .await?;
    }
    let invoices = Arc::new(invoices);
    let client = reqwest::Client::new();
    // Warm-up: every user's subscription row and invoices exist before measuring.
    measure(&client, &url, &stripe, &invoices, 16, invoices.len()).await?;

    println!("| inbox rows before | senders | events | events/s | p50 ms | p99 ms |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for phase in 0..2 {
        if phase == 1 {
            let started = Instant::now();
            sqlx::query(
                "INSERT INTO webhook_inbox (provider, event_id, event_type, received_at) \
                 SELECT 'stripe', 'evt_history_' || g, 'invoice.paid', now() - (g || ' seconds')::interval \
                 FROM generate_series(1, $1) AS g",
            )
            .bind(history)
            .execute(&pool)
            .await?;
            sqlx::query("ANALYZE webhook_inbox").execute(&pool).await?;
            eprintln!(
                "added {history} processed events to the inbox in {:?}",
                started.elapsed()
            );
        }
        for senders in SENDERS {
            let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM webhook_inbox")
                .fetch_one(&pool)
                .await?;
            let run = measure(&client, &url, &stripe, &invoices, senders, events).await?;
            println!(
                "| {rows} | {senders} | {events} | {:.0} | {:.2} | {:.2} |",
                run.per_second, run.p50_ms, run.p99_ms
            );
        }
    }
    let processed: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM webhook_inbox WHERE event_id LIKE 'evt_test_%'")
            .fetch_one(&pool)
            .await?;
    eprintln!("events processed and recorded by the service: {processed}");
    pool.close().await;
    shutdown.cancel();
    server.await??;
    Ok(())
}

struct Run {
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// Sends `events` signed deliveries from `senders` concurrent senders; every one must be 200.
async fn measure(
    client: &reqwest::Client,
    url: &str,
    stripe: &FakeStripe,
    invoices: &Arc<Vec<serde_json::Value>>,
    senders: usize,
    events: usize,
) -> anyhow::Result<Run> {
    // Bodies are built and signed up front so the clock measures the service.
    let bodies: Arc<Vec<(String, String)>> = Arc::new(
        (0..events)
            .map(|i| {
                let (_, body) = stripe.event("invoice.paid", &invoices[i % invoices.len()]);
                let signature = sign_now(&body);
                (body, signature)
            })
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..senders {
        let (client, url, bodies, next) = (
            client.clone(),
            url.to_string(),
            Arc::clone(&bodies),
            Arc::clone(&next),
        );
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((body, signature)) = bodies.get(i) else {
                    break;
                };
                let sent = Instant::now();
                let response = client
                    .post(&url)
                    .header("stripe-signature", signature)
                    .body(body.clone())
                    .send()
                    .await?;
                let status = response.status();
                let text = response.text().await?;
                anyhow::ensure!(
                    status == 200 && text == "ok",
                    "delivery answered {status}: {text}"
                );
                latencies.push(sent.elapsed());
            }
            Ok::<_, anyhow::Error>(latencies)
        });
    }
    let mut latencies: Vec<Duration> = Vec::with_capacity(events);
    while let Some(done) = tasks.join_next().await {
        latencies.extend(done??);
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let pick = |q: f64| {
        let index = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[index].as_secs_f64() * 1000.0
    };
    Ok(Run {
        per_second: events as f64 / elapsed.as_secs_f64(),
        p50_ms: pick(0.50),
        p99_ms: pick(0.99),
    })
}
