//! A renewal storm on PostgreSQL against a slow, rate-limited fake Stripe.
//!
//! 10,000 users with live PRO subscriptions each get the events of one renewal
//! (`invoice.created`, `invoice.finalized`, `invoice.paid`, `customer.subscription.updated`),
//! shuffled across users and within a user, 10 % sent twice, from 64 concurrent senders, while
//! a probe calls `CheckLimit` 200 times a second. The fake answers after 300 ms and allows 25
//! requests a second per endpoint and 100 overall (429 above that).
//!
//! Reports intake events/s and p50/p99, non-2xx answers, the Stripe requests made and 429s
//! received, the seconds until every subscription and invoice equals the fake's, and the probe's
//! p50/p99 alone and during the storm.
//!
//! Run: `cargo bench --bench renewal_storm` (PostgreSQL from BENCH_DATABASE_URL, default
//! postgres://postgres@127.0.0.1:5432/postgres; a scratch database is created and dropped).
//! Optional: BENCH_USERS (default 10000), BENCH_SENDERS (default 64), BENCH_STRIPE_DELAY_MS
//! (default 300).

#[path = "../tests/api/fake_http.rs"]
mod fake_http;
#[path = "../tests/api/fake_stripe.rs"]
mod fake_stripe;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use clap::Parser;
use fake_stripe::{FakeStripe, InvoiceSpec, PRICE_PRO, SubSpec, sign_now};
use nexus_billing::{
    auth::Claims,
    cli::Cli,
    config::Config,
    grpc::proto::billing::{
        CheckLimitRequest, Resource, billing_service_client::BillingServiceClient,
    },
    startup::Application,
};
use sqlx::{Connection, Executor, PgConnection, PgPool};

const JWT_SECRET: &str = "bench-secret-that-is-long-enough-for-hs256-0123456789";

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
    let name = format!("nexus_bench_{}", uuid::Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&admin_url).await?;
    admin
        .execute(sqlx::AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#)))
        .await?;
    let mut db_url = url::Url::parse(&admin_url)?;
    db_url.set_path(&format!("/{name}"));
    let result = run(db_url.as_str()).await;
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#
        )))
        .await?;
    result
}

/// Deterministic shuffle (xorshift), so runs are comparable.
fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for i in (1..items.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let j = usize::try_from(state % (i as u64 + 1)).unwrap_or(0);
        items.swap(i, j);
    }
}

fn quantile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index].as_secs_f64() * 1000.0
}

async fn run(db_url: &str) -> anyhow::Result<()> {
    let users: usize = env_or("BENCH_USERS", 10_000);
    let senders: usize = env_or("BENCH_SENDERS", 64);
    let delay_ms: u64 = env_or("BENCH_STRIPE_DELAY_MS", 300);
    let stripe = FakeStripe::start().await;
    let data_dir = tempfile::tempdir()?;
    let mut args = vec![
        "nexus-billing".to_string(),
        "--app-env=development".into(),
        format!("--data-dir={}", data_dir.path().display()),
        format!("--database-url={db_url}"),
        "--database-max-connections=20".into(),
        "--grpc-addr=127.0.0.1:0".into(),
        "--http-addr=127.0.0.1:0".into(),
        "--metrics-addr=127.0.0.1:0".into(),
        format!("--jwt-secret={JWT_SECRET}"),
        "--encryption-key=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f".into(),
        "--log-level=error".into(),
        "--reconcile-interval=0s".into(),
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
    let grpc = format!("http://{}", app.grpc_addr());
    let shutdown = app.shutdown_token();
    let server = tokio::spawn(app.run_until_stopped());
    let pool = PgPool::connect(db_url).await?;

    // Users with a live PRO subscription, here (known as of an hour ago) and at Stripe.
    let now = chrono::Utc::now().timestamp();
    let (old_end, new_end) = (now - 60, now - 60 + 30 * 86_400);
    sqlx::query(
        "INSERT INTO billing_customers (user_id, provider, customer_id) \
         SELECT 'user' || g, 'stripe', 'cus_r' || g FROM generate_series(0, $1 - 1) g",
    )
    .bind(users as i64)
    .execute(&pool)
    .await?;
    sqlx::query(
        "INSERT INTO subscriptions (user_id, tier, status, provider, provider_customer_id, \
         provider_subscription_id, current_period_start, current_period_end, state_as_of) \
         SELECT 'user' || g, 'pro', 'active', 'stripe', 'cus_r' || g, 'sub_r' || g, \
         to_timestamp($2), to_timestamp($3), to_timestamp($2) FROM generate_series(0, $1 - 1) g",
    )
    .bind(users as i64)
    .bind((old_end - 30 * 86_400) as f64)
    .bind(old_end as f64)
    .execute(&pool)
    .await?;
    sqlx::query("ANALYZE").execute(&pool).await?;

    // One renewal per user, in Stripe's order one second apart; the fake ends in the final state.
    let created = now - 30;
    let mut deliveries: Vec<(usize, String)> = Vec::with_capacity(users * 5);
    for u in 0..users {
        let (customer, sub, invoice) =
            (format!("cus_r{u}"), format!("sub_r{u}"), format!("in_r{u}"));
        let spec = InvoiceSpec {
            id: &invoice,
            customer: &customer,
            subscription: &sub,
            status: "draft",
            amount_due: 900,
            amount_paid: 0,
            created,
        };
        let draft = stripe.put_invoice(&spec);
        let open = stripe.put_invoice(&InvoiceSpec {
            status: "open",
            ..spec.clone()
        });
        let paid = stripe.put_invoice(&InvoiceSpec {
            status: "paid",
            amount_paid: 900,
            ..spec
        });
        let renewed = stripe.put_subscription(&SubSpec {
            id: &sub,
            customer: &customer,
            price: PRICE_PRO,
            status: "active",
            period_start: old_end,
            period_end: new_end,
            cancel_at_period_end: false,
        });
        let events = [
            stripe.event_at("invoice.created", &draft, created),
            stripe.event_at("invoice.finalized", &open, created + 1),
            stripe.event_at("invoice.paid", &paid, created + 2),
            stripe.event_at("customer.subscription.updated", &renewed, created + 3),
        ];
        for (i, (_, body)) in events.into_iter().enumerate() {
            if (u * 4 + i) % 10 == 0 {
                deliveries.push((u, body.clone()));
            }
            deliveries.push((u, body));
        }
    }
    shuffle(&mut deliveries, 42);
    let total = deliveries.len();
    let bodies: Arc<Vec<(String, String)>> = Arc::new(
        deliveries
            .into_iter()
            .map(|(_, body)| {
                let signature = sign_now(&body);
                (body, signature)
            })
            .collect(),
    );

    // The probe: CheckLimit at 200/s, alone first.
    let claims = Claims {
        sub: "card-service".into(),
        email: None,
        roles: vec!["service".into()],
        exp: u64::try_from(now + 7200).unwrap_or(0),
        iat: None,
        iss: None,
        aud: None,
    };
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )?;
    let client = BillingServiceClient::connect(grpc).await?;
    let alone = probe(
        client.clone(),
        token.clone(),
        Arc::new(AtomicBool::new(false)),
        Some(1000),
    )
    .await?;

    stripe.set_delay(Duration::from_millis(delay_ms));
    stripe.limit(25);
    let requests_before = stripe.received().len();
    let stop_probe = Arc::new(AtomicBool::new(false));
    let storm_probe = tokio::spawn(probe(client, token, Arc::clone(&stop_probe), None));

    let http = reqwest::Client::new();
    let next = Arc::new(AtomicUsize::new(0));
    let non_2xx = Arc::new(AtomicUsize::new(0));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(total)));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..senders {
        let (http, url, bodies, next, non_2xx, latencies) = (
            http.clone(),
            url.clone(),
            Arc::clone(&bodies),
            Arc::clone(&next),
            Arc::clone(&non_2xx),
            Arc::clone(&latencies),
        );
        tasks.spawn(async move {
            let mut mine = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((body, signature)) = bodies.get(i) else {
                    break;
                };
                let sent = Instant::now();
                let ok = match http
                    .post(&url)
                    .header("stripe-signature", signature)
                    .body(body.clone())
                    .send()
                    .await
                {
                    Ok(r) => r.status().is_success(),
                    Err(_) => false,
                };
                mine.push(sent.elapsed());
                if !ok {
                    non_2xx.fetch_add(1, Ordering::Relaxed);
                }
            }
            if let Ok(mut all) = latencies.lock() {
                all.extend(mine);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let intake = started.elapsed();

    // Converged: every invoice paid and every subscription renewed, as at the fake.
    let converged = loop {
        let (paid, renewed): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM invoices WHERE status = 'paid' AND amount_paid = 900), \
                    (SELECT COUNT(*) FROM subscriptions WHERE current_period_end = to_timestamp($1))",
        )
        .bind(new_end as f64)
        .fetch_one(&pool)
        .await?;
        let pending: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM webhook_inbox WHERE state = 'pending'")
                .fetch_one(&pool)
                .await?;
        if paid == users as i64 && renewed == users as i64 && pending == 0 {
            break started.elapsed();
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(1800),
            "not converged after 30 min: {paid} paid, {renewed} renewed, {pending} pending"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    stop_probe.store(true, Ordering::Relaxed);
    let during = storm_probe.await??;
    let intake_end = started + intake;
    let (in_intake, in_drain): (Calls, Calls) =
        during.iter().partition(|(sent, _, _)| *sent < intake_end);
    let stripe_requests = stripe.received().len() - requests_before;
    let outcomes: Vec<(String, i64)> = sqlx::query_as(
        "SELECT COALESCE(outcome, state), COUNT(*) FROM webhook_inbox GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&pool)
    .await?;

    let mut latencies = latencies.lock().map(|l| l.clone()).unwrap_or_default();
    latencies.sort();
    println!(
        "| users | deliveries | senders | Stripe delay | intake events/s | intake p50 ms | intake p99 ms | non-2xx | Stripe requests | 429s | converged s |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {users} | {total} | {senders} | {delay_ms} ms | {:.0} | {:.2} | {:.2} | {} | {stripe_requests} | {} | {:.1} |",
        total as f64 / intake.as_secs_f64(),
        quantile(&latencies, 0.50),
        quantile(&latencies, 0.99),
        non_2xx.load(Ordering::Relaxed),
        stripe.throttled(),
        converged.as_secs_f64(),
    );
    println!();
    println!("| CheckLimit probe (200/s) | calls | p50 ms | p99 ms | failed |");
    println!("|---|---:|---:|---:|---:|");
    for (label, run) in [
        ("alone", summary(&alone)),
        ("during the storm", summary(&during)),
        ("  while deliveries arrive", summary(&in_intake)),
        ("  while the processor drains", summary(&in_drain)),
    ] {
        println!(
            "| {label} | {} | {:.2} | {:.2} | {} |",
            run.calls, run.p50_ms, run.p99_ms, run.failed
        );
    }
    println!();
    println!(
        "event outcomes: {outcomes:?}; intake took {:.1} s",
        intake.as_secs_f64()
    );
    pool.close().await;
    shutdown.cancel();
    server.await??;
    Ok(())
}

struct Probe {
    calls: usize,
    failed: usize,
    p50_ms: f64,
    p99_ms: f64,
}

/// Each probe call: when it was sent, whether it succeeded, how long it took.
type Calls = Vec<(Instant, bool, Duration)>;

fn summary(calls: &[(Instant, bool, Duration)]) -> Probe {
    let mut latencies: Vec<Duration> = calls.iter().map(|c| c.2).collect();
    latencies.sort();
    Probe {
        calls: calls.len(),
        failed: calls.iter().filter(|c| !c.1).count(),
        p50_ms: quantile(&latencies, 0.5),
        p99_ms: quantile(&latencies, 0.99),
    }
}

/// Calls CheckLimit every 5 ms (200/s) until `stop` (or `count` calls); each call's latency.
async fn probe(
    client: BillingServiceClient<tonic::transport::Channel>,
    token: String,
    stop: Arc<AtomicBool>,
    count: Option<usize>,
) -> anyhow::Result<Calls> {
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut calls = tokio::task::JoinSet::new();
    let mut sent = 0;
    while !stop.load(Ordering::Relaxed) && count.is_none_or(|c| sent < c) {
        tick.tick().await;
        let mut client = client.clone();
        let mut request = tonic::Request::new(CheckLimitRequest {
            user_id: format!("user{}", sent % 1000),
            resource: Resource::Cards.into(),
            quantity: 1,
        });
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
        calls.spawn(async move {
            let started = Instant::now();
            let ok = client.check_limit(request).await.is_ok();
            (started, ok, started.elapsed())
        });
        sent += 1;
    }
    let mut done = Vec::with_capacity(sent);
    while let Some(call) = calls.join_next().await {
        done.push(call?);
    }
    Ok(done)
}
