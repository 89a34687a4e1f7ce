//! Memory and file descriptors under load that piles up, on PostgreSQL (the production store).
//!
//! 1. 1,000 open `WatchSyncJob` streams: 100 users, each with a HubSpot integration and a
//!    sync job kept busy by a fake that holds pushes, each watching it on 10 streams (spread
//!    over 50 HTTP/2 connections).
//! 2. 10,000 pending webhook events: an intake-only replica (`WEBHOOK_WORKERS=0`) takes them,
//!    then a replica with the default 2 workers drains them.
//! 3. A user with 1,000,000 contacts: `GetUsage`, then a full push to a fake HubSpot with the
//!    rate limit lifted.
//! 4. A user with a long history (500,000 activity entries, 20,000 invoices): `ExportMyData`
//!    read to the end, then the same export read slowly (a reader that falls behind must not
//!    make the service buffer), then `DeleteMyData`.
//!
//! For each: the service's resident memory (now and peak) and open file descriptors before,
//! under load and after, and the database connections it holds.
//!
//! Run: `cargo bench --bench resource_bounds` (admin URL from BENCH_DATABASE_URL, default
//! postgres://postgres@127.0.0.1:5432/postgres; a scratch database per part). Optional:
//! BOUNDS_CONTACTS (default 1000000), BOUNDS_EVENTS (default 10000), BOUNDS_ACTIVITY (default
//! 500000), BOUNDS_INVOICES (default 20000). Parts by name: `watch`, `events`, `contacts`,
//! `history`.

#[allow(dead_code)]
#[path = "../tests/api/fake_feeds.rs"]
mod fake_feeds;
#[path = "../tests/api/fake_http.rs"]
mod fake_http;
#[allow(dead_code)]
#[path = "../tests/api/fake_providers.rs"]
mod fake_providers;
#[path = "../tests/api/fake_stripe.rs"]
mod fake_stripe;
#[allow(dead_code)]
mod support;
use support::env_or;

use std::time::{Duration, Instant};

use fake_providers::{FakeProvider, HUBSPOT_TOKEN, Kind};
use fake_stripe::{FakeStripe, InvoiceSpec};
use nexus_billing::grpc::proto::{
    account::{
        DeleteMyDataRequest, ExportMyDataRequest, account_service_client::AccountServiceClient,
    },
    billing::{GetUsageRequest, billing_service_client::BillingServiceClient},
    integrations::{
        Provider, SyncJobState, WatchSyncJobRequest,
        integrations_service_client::IntegrationsServiceClient,
    },
};
use sqlx::PgPool;
use support::{authed, base_env, open_fds, peak_rss_mib, rss_mib};

struct Sample {
    rss: f64,
    fds: usize,
    db_connections: i64,
}

async fn sample(pid: u32, pool: &PgPool, db: &str) -> anyhow::Result<Sample> {
    let db_connections: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(db)
    .fetch_one(pool)
    .await?;
    Ok(Sample {
        rss: rss_mib(pid),
        fds: open_fds(pid),
        db_connections,
    })
}

fn row(what: &str, s: &Sample) {
    println!(
        "| {what} | {:.0} | {} | {} |",
        s.rss, s.fds, s.db_connections
    );
}

fn db_name(url: &str) -> String {
    url.rsplit('/').next().unwrap_or_default().to_string()
}

async fn watch_streams() -> anyhow::Result<()> {
    let db = support::Database::create_postgres().await?;
    support::seed(&db.url, 0).await?;
    let hubspot = FakeProvider::start(Kind::Hubspot).await;
    hubspot.delay_pushes(Duration::from_secs(600));
    let mut env = base_env(&db.url);
    env.push(("HUBSPOT_API_BASE".into(), hubspot.server.uri()));
    env.push(("MAX_WATCH_STREAMS_PER_USER".into(), "10".into()));
    let work = tempfile::tempdir()?;
    let (child, grpc, _) = support::serve_logged(&env, &[], &work.path().join("log"))?;
    let pid = child.id();
    let pool = PgPool::connect(&db.url).await?;
    let name = db_name(&db.url);
    let before = sample(pid, &pool, &name).await?;
    let mut channels = Vec::new();
    for _ in 0..50 {
        channels.push(
            tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))?
                .connect()
                .await?,
        );
    }
    let mut jobs = Vec::new();
    for u in 0..100 {
        let user = format!("watcher{u}");
        let token = support::token_for(&user)?;
        support::execute(
            &db.url,
            &format!("INSERT INTO contacts (id, user_id, email) VALUES ('w{u}', '{user}', 'w{u}@example.com')"),
        )
        .await?;
        let mut client = IntegrationsServiceClient::new(channels[u % 50].clone());
        support::connect_hubspot(&mut client, &token, HUBSPOT_TOKEN).await?;
        let job = support::start_full_sync(&mut client, &token, Provider::Hubspot).await?;
        jobs.push((token, job.id));
    }
    let idle_jobs = sample(pid, &pool, &name).await?;
    let mut streams = Vec::new();
    for (i, (token, id)) in jobs.iter().enumerate() {
        for k in 0..10 {
            let mut client = IntegrationsServiceClient::new(channels[(i * 10 + k) % 50].clone());
            let stream = client
                .watch_sync_job(authed(WatchSyncJobRequest { id: id.clone() }, token)?)
                .await?
                .into_inner();
            streams.push(stream);
        }
    }
    // An 11th stream for one user is refused: the per-user cap holds.
    let mut client = IntegrationsServiceClient::new(channels[0].clone());
    let eleventh = client
        .watch_sync_job(authed(
            WatchSyncJobRequest {
                id: jobs[0].1.clone(),
            },
            &jobs[0].0,
        )?)
        .await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let open = sample(pid, &pool, &name).await?;
    let count = streams.len();
    drop(streams);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let closed = sample(pid, &pool, &name).await?;
    println!("### {count} open WatchSyncJob streams (100 users x 10, 50 connections)\n");
    println!("| moment | RSS MiB | fds | DB connections |");
    println!("|---|---:|---:|---:|");
    row("started", &before);
    row("100 jobs queued or running", &idle_jobs);
    row(&format!("{count} streams open for 10 s"), &open);
    row("streams closed", &closed);
    println!(
        "\nper stream: {:.1} KiB; the 11th stream of one user: {}; peak RSS {:.0} MiB\n",
        (open.rss - idle_jobs.rss) * 1024.0 / count as f64,
        match eleventh {
            Ok(_) => "accepted (cap NOT enforced)".to_string(),
            Err(s) => format!("{:?}", s.code()),
        },
        peak_rss_mib(pid)
    );
    support::stop(child);
    pool.close().await;
    db.drop().await
}

async fn pending_events(events: usize) -> anyhow::Result<()> {
    let db = support::Database::create_postgres().await?;
    support::seed(&db.url, 0).await?;
    let stripe = FakeStripe::start().await;
    let mut args: Vec<String> = stripe
        .settings()
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    args.push("--reconcile-interval=0s".into());
    let pool = PgPool::connect(&db.url).await?;
    sqlx::query(
        "INSERT INTO billing_customers (user_id, provider, customer_id) \
         SELECT 'pe' || g, 'stripe', 'cus_pe' || g FROM generate_series(0, $1 - 1) g",
    )
    .bind(events as i64)
    .execute(&pool)
    .await?;
    let work = tempfile::tempdir()?;
    let mut intake_env = base_env(&db.url);
    intake_env.push(("WEBHOOK_WORKERS".into(), "0".into()));
    let (intake, _, http) =
        support::serve_logged(&intake_env, &args, &work.path().join("intake.log"))?;
    let name = db_name(&db.url);
    let intake_before = sample(intake.id(), &pool, &name).await?;
    let now = chrono::Utc::now().timestamp() - 60;
    let client = reqwest::Client::new();
    let started = Instant::now();
    let bodies: Vec<String> = (0..events)
        .map(|u| {
            let invoice = stripe.put_invoice(&InvoiceSpec {
                id: &format!("in_pe{u}"),
                customer: &format!("cus_pe{u}"),
                subscription: &format!("sub_pe{u}"),
                status: "paid",
                amount_due: 900,
                amount_paid: 900,
                created: now,
            });
            stripe.event_at("invoice.paid", &invoice, now).1
        })
        .collect();
    use futures_util::StreamExt;
    let failed = futures_util::stream::iter(bodies.iter().map(|body| {
        let client = client.clone();
        let url = format!("http://{http}/billing/webhook");
        async move {
            client
                .post(url)
                .header("stripe-signature", fake_stripe::sign_now(body))
                .body(body.clone())
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false)
        }
    }))
    .buffer_unordered(16)
    .filter(|ok| std::future::ready(!ok))
    .count()
    .await;
    let intake_took = started.elapsed();
    let pending: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM webhook_inbox WHERE state = 'pending'")
            .fetch_one(&pool)
            .await?;
    let intake_full = sample(intake.id(), &pool, &name).await?;
    let intake_peak = peak_rss_mib(intake.id());

    let (worker, _, _) =
        support::serve_logged(&base_env(&db.url), &args, &work.path().join("worker.log"))?;
    let worker_pid = worker.id();
    let worker_before = sample(worker_pid, &pool, &name).await?;
    let drain_started = Instant::now();
    let mut worker_during = sample(worker_pid, &pool, &name).await?;
    loop {
        let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM webhook_queue")
            .fetch_one(&pool)
            .await?;
        let s = sample(worker_pid, &pool, &name).await?;
        if s.rss > worker_during.rss {
            worker_during = s;
        }
        if left == 0 {
            break;
        }
        anyhow::ensure!(
            drain_started.elapsed() < Duration::from_secs(900),
            "{left} events left after 15 minutes"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let drained = drain_started.elapsed();
    let worker_after = sample(worker_pid, &pool, &name).await?;
    println!("### {events} pending webhook events\n");
    println!(
        "intake: {events} deliveries in {:.1} s, {failed} not 2xx, {pending} pending afterwards",
        intake_took.as_secs_f64()
    );
    println!("drain: {:.1} s with 2 workers\n", drained.as_secs_f64());
    println!("| moment | RSS MiB | fds | DB connections |");
    println!("|---|---:|---:|---:|");
    row("intake-only replica, empty", &intake_before);
    row(
        &format!("intake-only replica, {pending} pending"),
        &intake_full,
    );
    row("worker replica, started", &worker_before);
    row(
        "worker replica, draining (largest RSS seen)",
        &worker_during,
    );
    row("worker replica, drained", &worker_after);
    println!(
        "\npeak RSS: intake-only {intake_peak:.0} MiB, worker {:.0} MiB\n",
        peak_rss_mib(worker_pid)
    );
    for child in [intake, worker] {
        support::stop(child);
    }
    pool.close().await;
    db.drop().await
}

async fn big_user(contacts: usize) -> anyhow::Result<()> {
    let db = support::Database::create_postgres().await?;
    let seeded = Instant::now();
    support::seed(&db.url, contacts).await?;
    let seeded = seeded.elapsed();
    let hubspot = FakeProvider::start(Kind::Hubspot).await;
    let mut env = base_env(&db.url);
    env.push(("HUBSPOT_API_BASE".into(), hubspot.server.uri()));
    env.push(("RATE_LIMITS".into(), "hubspot=100000/1s".into()));
    let work = tempfile::tempdir()?;
    let (child, grpc, _) = support::serve_logged(&env, &[], &work.path().join("log"))?;
    let pid = child.id();
    let pool = PgPool::connect(&db.url).await?;
    let name = db_name(&db.url);
    let token = support::token_for(support::USER)?;
    let before = sample(pid, &pool, &name).await?;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))?
        .connect()
        .await?;
    let usage_started = Instant::now();
    let usage = BillingServiceClient::new(channel.clone())
        .get_usage(authed(GetUsageRequest {}, &token)?)
        .await?
        .into_inner();
    let usage_took = usage_started.elapsed();
    let mut client = IntegrationsServiceClient::new(channel);
    support::connect_hubspot(&mut client, &token, HUBSPOT_TOKEN).await?;
    let started = Instant::now();
    let job = support::start_full_sync(&mut client, &token, Provider::Hubspot).await?;
    let mut during = sample(pid, &pool, &name).await?;
    let job = loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let s = sample(pid, &pool, &name).await?;
        if s.rss > during.rss {
            during = s;
        }
        let now = client
            .get_sync_job(authed(
                nexus_billing::grpc::proto::integrations::GetSyncJobRequest { id: job.id.clone() },
                &token,
            )?)
            .await?
            .into_inner()
            .job
            .ok_or_else(|| anyhow::anyhow!("no job"))?;
        if !matches!(now.state(), SyncJobState::Queued | SyncJobState::Running) {
            break now;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(1800),
            "the push did not finish in 30 minutes"
        );
    };
    let took = started.elapsed();
    let after = sample(pid, &pool, &name).await?;
    println!("### a user with {contacts} contacts\n");
    println!(
        "seeded in {:.0} s; GetUsage answered in {:.0} ms ({:?}); full push: {:?} with {} contacts done in {:.0} s ({:.0} contacts/s), {} requests at the fake, {} distinct contacts received\n",
        seeded.as_secs_f64(),
        usage_took.as_secs_f64() * 1000.0,
        usage.usage.map(|u| u.contacts_used),
        job.state(),
        job.contacts_done,
        took.as_secs_f64(),
        job.contacts_done as f64 / took.as_secs_f64(),
        hubspot.push_requests(),
        hubspot.pushed_emails().len(),
    );
    println!("| moment | RSS MiB | fds | DB connections |");
    println!("|---|---:|---:|---:|");
    row("started", &before);
    row("pushing (largest RSS seen)", &during);
    row("finished", &after);
    println!("\npeak RSS {:.0} MiB\n", peak_rss_mib(pid));
    support::stop(child);
    pool.close().await;
    db.drop().await
}

/// Reads the whole export; the number of lines and the largest RSS seen meanwhile.
async fn read_export(
    channel: tonic::transport::Channel,
    token: &str,
    pid: u32,
    pause_every: Option<(usize, Duration)>,
) -> anyhow::Result<(usize, f64)> {
    let mut stream = AccountServiceClient::new(channel)
        .export_my_data(authed(ExportMyDataRequest::default(), token)?)
        .await?
        .into_inner();
    let (mut lines, mut largest) = (0usize, 0f64);
    let mut last: Option<String> = None;
    while let Some(message) = stream.message().await? {
        lines += 1;
        if lines % 10_000 == 0 {
            largest = largest.max(rss_mib(pid));
        }
        if let Some((every, pause)) = pause_every
            && lines % every == 0
        {
            tokio::time::sleep(pause).await;
        }
        last = Some(message.json_line);
    }
    anyhow::ensure!(
        last.is_some_and(|l| l.contains(r#""type":"end""#)),
        "the export did not end with its trailer"
    );
    Ok((lines, largest))
}

async fn long_history(activity: usize, invoices: usize) -> anyhow::Result<()> {
    let db = support::Database::create_postgres().await?;
    support::seed(&db.url, 0).await?;
    let user = support::USER;
    let seeded = Instant::now();
    support::execute(
        &db.url,
        &format!(
            "INSERT INTO activity_logs (user_id, kind, message, details, created_at) \
             SELECT '{user}', 'sync.succeeded', 'Synced contacts with HubSpot', \
             '{{\"provider\": \"hubspot\", \"contacts\": 120}}'::jsonb, \
             now() - make_interval(secs => g) FROM generate_series(1, {activity}) g"
        ),
    )
    .await?;
    support::execute(
        &db.url,
        &format!(
            "INSERT INTO invoices (id, user_id, provider, provider_invoice_id, amount_due, \
             amount_paid, currency, status, hosted_invoice_url, provider_created_at) \
             SELECT gen_random_uuid(), '{user}', 'stripe', 'in_bench_' || g, 900, 900, 'usd', \
             'paid', 'https://invoice.stripe.test/' || g, now() - make_interval(hours => g) \
             FROM generate_series(1, {invoices}) g"
        ),
    )
    .await?;
    let seeded = seeded.elapsed();
    let work = tempfile::tempdir()?;
    let (child, grpc, _) =
        support::serve_logged(&base_env(&db.url), &[], &work.path().join("log"))?;
    let pid = child.id();
    let pool = PgPool::connect(&db.url).await?;
    let name = db_name(&db.url);
    let token = support::token_for(user)?;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))?
        .connect()
        .await?;
    let before = sample(pid, &pool, &name).await?;

    let started = Instant::now();
    let (lines, fast_rss) = read_export(channel.clone(), &token, pid, None).await?;
    let fast = started.elapsed();
    let after_fast = sample(pid, &pool, &name).await?;
    // 1 ms every 100 lines: the reader falls far behind the database.
    let started = Instant::now();
    let (_, slow_rss) = read_export(
        channel.clone(),
        &token,
        pid,
        Some((100, Duration::from_millis(1))),
    )
    .await?;
    let slow = started.elapsed();

    let started = Instant::now();
    let erased = AccountServiceClient::new(channel)
        .delete_my_data(authed(DeleteMyDataRequest::default(), &token)?)
        .await?
        .into_inner();
    let erase_took = started.elapsed();
    let after = sample(pid, &pool, &name).await?;
    println!(
        "### a user with {activity} activity entries and {invoices} invoices
"
    );
    println!(
        "seeded in {:.0} s; export: {lines} lines in {:.1} s ({:.0} lines/s); slow reader: {:.1} s; \
         DeleteMyData: {:.1} s ({} activity entries deleted, {} invoices kept)\n",
        seeded.as_secs_f64(),
        fast.as_secs_f64(),
        lines as f64 / fast.as_secs_f64(),
        slow.as_secs_f64(),
        erase_took.as_secs_f64(),
        erased.activity_entries_deleted,
        erased.invoices_kept,
    );
    println!("| moment | RSS MiB | fds | DB connections |");
    println!("|---|---:|---:|---:|");
    row("started", &before);
    println!("| exporting, fast reader (largest RSS seen) | {fast_rss:.0} | | |");
    row("after the fast export", &after_fast);
    println!("| exporting, slow reader (largest RSS seen) | {slow_rss:.0} | | |");
    row("after the erasure", &after);
    println!("\npeak RSS {:.0} MiB\n", peak_rss_mib(pid));
    support::stop(child);
    pool.close().await;
    db.drop().await
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let parts: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let want = |p: &str| parts.is_empty() || parts.iter().any(|a| a == p);
    if want("watch") {
        watch_streams().await?;
    }
    if want("events") {
        pending_events(env_or("BOUNDS_EVENTS", 10_000)).await?;
    }
    if want("contacts") {
        big_user(env_or("BOUNDS_CONTACTS", 1_000_000)).await?;
    }
    if want("history") {
        long_history(
            env_or("BOUNDS_ACTIVITY", 500_000),
            env_or("BOUNDS_INVOICES", 20_000),
        )
        .await?;
    }
    Ok(())
}
