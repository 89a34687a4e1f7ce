//! Exactly once across replicas, under a killed replica and a restarted PostgreSQL.
//!
//! Three `nexus-billing` processes share one scratch PostgreSQL database. Fake Stripe, PayPal
//! and M-Pesa servers answer in 100-150 ms. Users reach their final state through real event
//! sequences:
//! - Stripe (1,200 users): subscription created (PRO), invoice paid, upgraded to PREMIUM,
//!   proration invoice paid, then a third cancel at period end and a third deleted;
//! - PayPal (400 users, checkout through the API): ACTIVATED, sale completed, half CANCELLED;
//! - M-Pesa (400 users, STK push through the API): the payer pays, the callback arrives.
//!
//! That is 7,000 distinct events; 3,000 of them are sent a second time, and the 10,000
//! deliveries are shuffled and spread at random over the live replicas by 24 senders. At 35 %
//! one replica is killed with SIGKILL: whatever it had not answered is sent again elsewhere, as
//! Stripe retries an unanswered delivery. At 65 % PostgreSQL is restarted (fast mode): answers
//! that are not 2xx are retried with backoff. Then the program waits until nothing is pending
//! and checks, for every user, that the database equals the fake provider's state: the
//! subscription, the exact invoice count, one payment entry per invoice, every inbox row done
//! with its effect present, no refund, no M-Pesa request left pending.
//!
//! Afterwards the replicas' logs, every response body, the metrics pages and a `pg_dump` of the
//! database are searched for every secret, key and token the run used.
//!
//! Run: `cargo bench --bench exactly_once` (restarts the local PostgreSQL cluster: needs
//! `pg_ctlcluster`, i.e. run it as root or postgres on the database host). Admin URL from
//! BENCH_DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres). Optional:
//! EXACTLY_ONCE_SCALE (default 1.0: scales the user counts), EXACTLY_ONCE_SEED (default 7).

#[path = "../tests/api/fake_http.rs"]
mod fake_http;
#[path = "../tests/api/fake_mpesa.rs"]
mod fake_mpesa;
#[path = "../tests/api/fake_paypal.rs"]
mod fake_paypal;
#[path = "../tests/api/fake_stripe.rs"]
mod fake_stripe;
#[allow(dead_code)]
mod support;
use support::env_or;

use std::{
    collections::{HashMap, VecDeque},
    process::{Child, Command},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::{TimeZone, Utc};
use fake_mpesa::FakeMpesa;
use fake_paypal::FakePaypal;
use fake_stripe::{FakeStripe, InvoiceSpec, PRICE_PREMIUM, PRICE_PRO, SubSpec};
use nexus_billing::grpc::proto::billing::{
    CreateCheckoutSessionRequest, PaymentProvider, Tier,
    billing_service_client::BillingServiceClient,
};
use sqlx::{PgPool, Row};

const ALLOWED_ORIGIN: &str = "https://app.nexus.test";

/// One webhook delivery: the route, the body, and how to sign it at each attempt.
struct Delivery {
    route: &'static str,
    body: String,
    signer: Signer,
}

enum Signer {
    Stripe,
    Paypal,
    None,
}

impl Delivery {
    fn headers(&self) -> Vec<(&'static str, String)> {
        match self.signer {
            Signer::Stripe => vec![("stripe-signature", fake_stripe::sign_now(&self.body))],
            Signer::Paypal => fake_paypal::signed_headers(&self.body, fake_paypal::CERT_URL),
            Signer::None => vec![],
        }
    }
}

/// What the database must hold for a Stripe user at the end (the fake's final subscription).
struct StripeExpect {
    status: String,
    tier: &'static str,
    period_end: i64,
    cancel_at_period_end: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let db = support::Database::create_postgres().await?;
    let result = run(&db.url).await;
    // PostgreSQL was restarted meanwhile: dropping connects afresh.
    db.drop().await?;
    result
}

async fn checkout(
    client: &BillingServiceClient<tonic::transport::Channel>,
    user: &str,
    provider: PaymentProvider,
) -> anyhow::Result<String> {
    let mut client = client.clone();
    let request = CreateCheckoutSessionRequest {
        tier: Tier::Pro.into(),
        provider: provider.into(),
        success_url: format!("{ALLOWED_ORIGIN}/billing/done"),
        cancel_url: format!("{ALLOWED_ORIGIN}/billing"),
        phone_number: if provider == PaymentProvider::Mpesa {
            "0712 345 678".into()
        } else {
            String::new()
        },
        ..Default::default()
    };
    let answer = client
        .create_checkout_session(support::authed(request, &support::token_for(user)?)?)
        .await?
        .into_inner();
    Ok(answer.session_id)
}

async fn run(db_url: &str) -> anyhow::Result<()> {
    let scale: f64 = env_or("EXACTLY_ONCE_SCALE", 1.0);
    let seed: u64 = env_or("EXACTLY_ONCE_SEED", 7);
    let scaled = |n: f64| ((n * scale).round() as usize).max(1);
    let (stripe_users, paypal_users, mpesa_users) = (scaled(1200.0), scaled(400.0), scaled(400.0));
    let work = tempfile::tempdir()?;
    let logs = work.path().join("logs");
    std::fs::create_dir_all(&logs)?;

    let stripe = FakeStripe::start().await;
    stripe.set_delay(Duration::from_millis(120));
    let paypal = FakePaypal::start().await;
    let mpesa = FakeMpesa::start().await;

    let env = support::base_env(db_url);
    let mut args: Vec<String> = vec![
        "--webhook-workers=2".into(),
        "--database-max-connections=8".into(),
        "--reconcile-interval=0s".into(),
        format!("--allowed-origins={ALLOWED_ORIGIN}"),
    ];
    for (k, v) in stripe
        .settings()
        .into_iter()
        .chain(paypal.settings())
        .chain(mpesa.settings())
    {
        // The poller waits a minute for callbacks, so most payments settle by their callback.
        let v = if k == "--mpesa-callback-grace" {
            "60s".to_string()
        } else {
            v
        };
        args.push(format!("{k}={v}"));
    }
    let migrated = Command::new(support::BIN)
        .env_clear()
        .envs(env.iter().cloned())
        .arg("migrate")
        .status()?;
    anyhow::ensure!(migrated.success(), "migrate failed");
    let mut replicas: Vec<(Child, String, String)> = Vec::new();
    for i in 0..3 {
        replicas.push(support::serve_logged(
            &env,
            &args,
            &logs.join(format!("replica-{i}.log")),
        )?);
    }
    let pool = PgPool::connect(db_url).await?;
    let grpc = BillingServiceClient::connect(format!("http://{}", replicas[0].1)).await?;

    // ---- Stripe: customers known here (checkout done), five events per user at most.
    let t0 = Utc::now().timestamp() - 600;
    let period = 30 * 86_400;
    sqlx::query(
        "INSERT INTO billing_customers (user_id, provider, customer_id) \
         SELECT 'st' || g, 'stripe', 'cus_x' || g FROM generate_series(0, $1 - 1) g",
    )
    .bind(stripe_users as i64)
    .execute(&pool)
    .await?;
    let mut events: Vec<Delivery> = Vec::new();
    let mut stripe_expect: HashMap<String, StripeExpect> = HashMap::new();
    for u in 0..stripe_users {
        let (customer, sub) = (format!("cus_x{u}"), format!("sub_x{u}"));
        let at = |k: i64| t0 + k;
        let spec = |price: &'static str, status: &'static str, cancel: bool| SubSpec {
            id: &sub,
            customer: &customer,
            price,
            status,
            period_start: t0,
            period_end: t0 + period,
            cancel_at_period_end: cancel,
        };
        let mut push = |kind: &str, object: &serde_json::Value, k: i64| {
            let (_, body) = stripe.event_at(kind, object, at(k));
            events.push(Delivery {
                route: "/billing/webhook",
                body,
                signer: Signer::Stripe,
            });
        };
        let created = stripe.put_subscription(&spec(PRICE_PRO, "active", false));
        push("customer.subscription.created", &created, 0);
        for (k, (invoice, amount)) in [(format!("in_a{u}"), 900), (format!("in_b{u}"), 1000)]
            .into_iter()
            .enumerate()
        {
            let paid = stripe.put_invoice(&InvoiceSpec {
                id: &invoice,
                customer: &customer,
                subscription: &sub,
                status: "paid",
                amount_due: amount,
                amount_paid: amount,
                created: at(1 + 2 * k as i64),
            });
            push("invoice.paid", &paid, 1 + 2 * k as i64);
        }
        let upgraded = stripe.put_subscription(&spec(PRICE_PREMIUM, "active", false));
        push("customer.subscription.updated", &upgraded, 2);
        let (status, cancel) = match u % 3 {
            0 => {
                let o = stripe.put_subscription(&spec(PRICE_PREMIUM, "active", true));
                push("customer.subscription.updated", &o, 4);
                ("active", true)
            }
            1 => {
                let o = stripe.put_subscription(&spec(PRICE_PREMIUM, "canceled", false));
                push("customer.subscription.deleted", &o, 4);
                ("canceled", false)
            }
            _ => ("active", false),
        };
        stripe_expect.insert(
            format!("st{u}"),
            StripeExpect {
                status: status.into(),
                tier: "premium",
                period_end: t0 + period,
                cancel_at_period_end: cancel,
            },
        );
    }

    // ---- PayPal: checkouts through the API, then ACTIVATED, the sale, and half CANCELLED.
    let setup = Instant::now();
    let paypal_subs = in_parallel(paypal_users, 16, |u| {
        let grpc = grpc.clone();
        async move { checkout(&grpc, &format!("pp{u}"), PaymentProvider::Paypal).await }
    })
    .await?;
    let mut paypal_cancelled = HashMap::new();
    for (u, id) in paypal_subs.iter().enumerate() {
        let at = |k: i64| Utc.timestamp_opt(t0 + k, 0).single().unwrap_or_default();
        let active = paypal.activate(id, at(0));
        let sale = paypal.sale(id, "9.00", at(0));
        for (kind, resource, k) in [
            ("BILLING.SUBSCRIPTION.ACTIVATED", &active, 1),
            ("PAYMENT.SALE.COMPLETED", &sale, 2),
        ] {
            let (_, body) = paypal.event(kind, resource, at(k));
            events.push(Delivery {
                route: "/billing/webhook/paypal",
                body,
                signer: Signer::Paypal,
            });
        }
        if u % 2 == 0 {
            let cancelled = paypal.patch(id, |s| s["status"] = serde_json::json!("CANCELLED"));
            let (_, body) = paypal.event("BILLING.SUBSCRIPTION.CANCELLED", &cancelled, at(3));
            events.push(Delivery {
                route: "/billing/webhook/paypal",
                body,
                signer: Signer::Paypal,
            });
        }
        paypal_cancelled.insert(format!("pp{u}"), u % 2 == 0);
    }

    // ---- M-Pesa: pushes through the API; every payer pays; one callback each.
    let requests = in_parallel(mpesa_users, 16, |u| {
        let grpc = grpc.clone();
        async move { checkout(&grpc, &format!("mp{u}"), PaymentProvider::Mpesa).await }
    })
    .await?;
    for (u, request) in requests.iter().enumerate() {
        mpesa.resolve(request, 0);
        events.push(Delivery {
            route: "/billing/webhook/mpesa",
            body: fake_mpesa::callback(
                request,
                0,
                Some(&format!("RCP{u:07}")),
                fake_mpesa::PRICE_PRO,
            ),
            signer: Signer::None,
        });
    }
    let setup = setup.elapsed();

    // ---- 30 % duplicates, shuffled.
    let distinct = events.len();
    let duplicates = (distinct as f64 * 3.0 / 7.0).round() as usize;
    let mut order: Vec<usize> = (0..distinct).collect();
    let mut state = seed | 1;
    for _ in 0..duplicates {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        order.push(usize::try_from(state % distinct as u64).unwrap_or(0));
    }
    support::shuffle(&mut order, seed);
    let total = order.len();
    println!(
        "{distinct} distinct events ({stripe_users} Stripe, {paypal_users} PayPal, {mpesa_users} M-Pesa users), \
         {duplicates} duplicates: {total} deliveries; setup (API checkouts and pushes) {:.1} s",
        setup.as_secs_f64()
    );

    // ---- Deliver.
    let events = Arc::new(events);
    let http_addrs: Arc<Vec<String>> = Arc::new(replicas.iter().map(|r| r.2.clone()).collect());
    let alive: Arc<Vec<AtomicBool>> = Arc::new((0..3).map(|_| AtomicBool::new(true)).collect());
    let queue = Arc::new(Mutex::new(
        order
            .into_iter()
            .map(|i| (i, 0u32))
            .collect::<VecDeque<_>>(),
    ));
    let answered = Arc::new(AtomicUsize::new(0));
    let outcomes: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let responses = Arc::new(Mutex::new(Vec::<u8>::new()));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(8)
        .build()?;
    let started = Instant::now();
    let mut senders = tokio::task::JoinSet::new();
    for s in 0..24u64 {
        let (events, http_addrs, alive, queue, answered, outcomes, responses, http) = (
            Arc::clone(&events),
            Arc::clone(&http_addrs),
            Arc::clone(&alive),
            Arc::clone(&queue),
            Arc::clone(&answered),
            Arc::clone(&outcomes),
            Arc::clone(&responses),
            http.clone(),
        );
        senders.spawn(async move {
            let mut pick = seed.wrapping_add(s).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            loop {
                let next = queue.lock().ok().and_then(|mut q| q.pop_front());
                let Some((i, attempt)) = next else {
                    if answered.load(Ordering::Relaxed) >= total {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                pick ^= pick << 13;
                pick ^= pick >> 7;
                pick ^= pick << 17;
                let live: Vec<usize> = (0..3)
                    .filter(|r| alive[*r].load(Ordering::Relaxed))
                    .collect();
                let replica = live[usize::try_from(pick % live.len() as u64).unwrap_or(0)];
                let delivery = &events[i];
                let mut request = http
                    .post(format!("http://{}{}", http_addrs[replica], delivery.route))
                    .header("content-type", "application/json")
                    .body(delivery.body.clone());
                for (name, value) in delivery.headers() {
                    request = request.header(name, value);
                }
                let outcome = match request.send().await {
                    Ok(response) => {
                        let status = response.status();
                        let body = response.bytes().await.unwrap_or_default();
                        if let Ok(mut all) = responses.lock() {
                            all.extend_from_slice(&body);
                            all.push(b'\n');
                        }
                        if status.is_success() {
                            None
                        } else {
                            Some(status.as_u16().to_string())
                        }
                    }
                    Err(e) if e.is_timeout() => Some("timeout".to_string()),
                    Err(_) => Some("connection error".to_string()),
                };
                if let Ok(mut counts) = outcomes.lock() {
                    *counts
                        .entry(outcome.clone().unwrap_or_else(|| "2xx".into()))
                        .or_default() += 1;
                }
                match outcome {
                    None => {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(_) => {
                        // As Stripe does: later, with backoff (compressed: 100 ms, 200 ms, ... 2 s).
                        let wait = Duration::from_millis(100 * u64::from(1 + attempt.min(19)));
                        let queue = Arc::clone(&queue);
                        tokio::spawn(async move {
                            tokio::time::sleep(wait).await;
                            if let Ok(mut q) = queue.lock() {
                                q.push_back((i, attempt + 1));
                            }
                        });
                    }
                }
            }
        });
    }

    // ---- Faults: SIGKILL one replica at 35 %, restart PostgreSQL at 65 %.
    let mut killed_at = None;
    let mut restart = None;
    while answered.load(Ordering::Relaxed) < total {
        let done = answered.load(Ordering::Relaxed);
        if killed_at.is_none() && done >= total * 35 / 100 {
            alive[1].store(false, Ordering::Relaxed);
            replicas[1].0.kill()?; // SIGKILL
            replicas[1].0.wait()?;
            killed_at = Some((done, started.elapsed()));
        }
        if restart.is_none() && done >= total * 65 / 100 {
            let began = Instant::now();
            let cluster = std::fs::read_dir("/etc/postgresql")?
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .next()
                .ok_or_else(|| anyhow::anyhow!("no PostgreSQL cluster in /etc/postgresql"))?;
            let status = tokio::task::spawn_blocking(move || {
                Command::new("pg_ctlcluster")
                    .args([
                        "--skip-systemctl-redirect",
                        &cluster,
                        "main",
                        "restart",
                        "-m",
                        "fast",
                    ])
                    .status()
            })
            .await??;
            anyhow::ensure!(status.success(), "PostgreSQL restart failed");
            restart = Some((done, started.elapsed(), began.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    while senders.join_next().await.is_some() {}
    let delivered = started.elapsed();

    // ---- Converge: nothing pending anywhere.
    let pool = reconnect(db_url, pool).await?;
    let converged = loop {
        let pending: i64 = sqlx::query_scalar(
            "SELECT (SELECT COUNT(*) FROM webhook_inbox WHERE state <> 'done') \
                  + (SELECT COUNT(*) FROM webhook_queue) \
                  + (SELECT COUNT(*) FROM mpesa_payments WHERE state = 'pending')",
        )
        .fetch_one(&pool)
        .await?;
        if pending == 0 {
            break started.elapsed();
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(900),
            "{pending} still pending after 15 minutes"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };

    // ---- Check every user against the fakes.
    let mut failures: Vec<String> = Vec::new();
    let rows = sqlx::query(
        "SELECT user_id, tier, status, cancel_at_period_end, \
         CAST(EXTRACT(EPOCH FROM current_period_end) AS BIGINT) AS period_end, provider \
         FROM subscriptions",
    )
    .fetch_all(&pool)
    .await?;
    let mut seen = HashMap::new();
    for row in &rows {
        let user: String = row.get("user_id");
        seen.insert(user.clone(), ());
        let (tier, status, cancel): (String, String, bool) = (
            row.get("tier"),
            row.get("status"),
            row.get("cancel_at_period_end"),
        );
        let period_end: Option<i64> = row.get("period_end");
        if let Some(want) = stripe_expect.get(&user) {
            if status != want.status
                || (want.status == "active" && tier != want.tier)
                || cancel != want.cancel_at_period_end
                || period_end != Some(want.period_end)
            {
                failures.push(format!(
                    "{user}: {tier}/{status}/cancel={cancel}/end={period_end:?}, Stripe says {}/{}/cancel={}/end={}",
                    want.tier, want.status, want.cancel_at_period_end, want.period_end
                ));
            }
        } else if let Some(cancelled) = paypal_cancelled.get(&user) {
            // CANCELLED keeps the paid month: active until then, cancelling at its end.
            if status != "active" || tier != "pro" || cancel != *cancelled {
                failures.push(format!("{user}: {tier}/{status}/cancel={cancel}, PayPal says pro/active/cancel={cancelled}"));
            }
        } else if user.starts_with("mp") && (status != "active" || tier != "pro") {
            failures.push(format!(
                "{user}: {tier}/{status} after a paid M-Pesa request"
            ));
        }
    }
    let expected_users = stripe_users + paypal_users + mpesa_users;
    if seen.len() != expected_users {
        failures.push(format!(
            "{} subscription rows, {expected_users} users",
            seen.len()
        ));
    }
    let invoices: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT provider, COUNT(*), COUNT(DISTINCT provider_invoice_id) FROM invoices \
         WHERE status = 'paid' GROUP BY provider ORDER BY provider",
    )
    .fetch_all(&pool)
    .await?;
    let want_invoices = [
        ("mpesa", mpesa_users as i64),
        ("paypal", paypal_users as i64),
        ("stripe", 2 * stripe_users as i64),
    ];
    for (provider, want) in want_invoices {
        let got = invoices.iter().find(|i| i.0 == provider);
        if got.map(|g| (g.1, g.2)) != Some((want, want)) {
            failures.push(format!(
                "{provider} invoices: {got:?}, want {want} distinct"
            ));
        }
    }
    let all_invoices: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM invoices")
        .fetch_one(&pool)
        .await?;
    let payments: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM activity_logs WHERE kind = 'payment.succeeded'")
            .fetch_one(&pool)
            .await?;
    let want_payments = want_invoices.iter().map(|w| w.1).sum::<i64>();
    if payments != want_payments || all_invoices != want_payments {
        failures.push(format!(
            "{payments} payment entries and {all_invoices} invoices, want {want_payments} of each"
        ));
    }
    // Every inbox row has its effect: invoice events their invoice, subscription events a
    // subscription at least as new as the event, M-Pesa hints a settled request.
    let without_effect: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM webhook_inbox w WHERE w.state <> 'done' \
         OR (w.event_type LIKE 'invoice.%' AND NOT EXISTS \
             (SELECT 1 FROM invoices i WHERE i.provider = w.provider AND i.provider_invoice_id = w.object_id)) \
         OR (w.event_type = 'PAYMENT.SALE.COMPLETED' AND NOT EXISTS \
             (SELECT 1 FROM invoices i WHERE i.provider = 'paypal' AND i.provider_invoice_id = w.object_id)) \
         OR ((w.event_type LIKE 'customer.subscription.%' OR w.event_type LIKE 'BILLING.SUBSCRIPTION.%') \
             AND NOT EXISTS (SELECT 1 FROM subscriptions s WHERE s.provider = w.provider \
                 AND s.provider_subscription_id = w.object_id AND s.state_as_of >= w.event_created_at)) \
         OR (w.provider = 'mpesa' AND NOT EXISTS (SELECT 1 FROM mpesa_payments m \
             WHERE w.event_id LIKE '%' || m.checkout_request_id AND m.state = 'paid'))",
    )
    .fetch_one(&pool)
    .await?;
    if without_effect != 0 {
        failures.push(format!("{without_effect} inbox rows without their effect"));
    }
    let inbox: Vec<(String, i64)> = sqlx::query_as(
        "SELECT provider, COUNT(*) FROM webhook_inbox GROUP BY provider ORDER BY provider",
    )
    .fetch_all(&pool)
    .await?;
    let stripe_events = events
        .iter()
        .filter(|e| matches!(e.signer, Signer::Stripe))
        .count() as i64;
    let paypal_events = events
        .iter()
        .filter(|e| matches!(e.signer, Signer::Paypal))
        .count() as i64;
    for (provider, want) in [("paypal", paypal_events), ("stripe", stripe_events)] {
        let got = inbox.iter().find(|r| r.0 == provider).map(|r| r.1);
        if got != Some(want) {
            failures.push(format!(
                "{provider} inbox rows: {got:?}, want {want} (one per distinct event)"
            ));
        }
    }
    if !paypal.refunds().is_empty() {
        failures.push(format!("{} PayPal refunds made", paypal.refunds().len()));
    }
    if !mpesa.problems().is_empty() {
        failures.push(format!(
            "M-Pesa requests the fake refused: {:?}",
            mpesa.problems()
        ));
    }

    // ---- Secrets: logs, responses, metrics, the database.
    let mut metrics = String::new();
    for (r, replica) in replicas.iter().enumerate() {
        if alive[r].load(Ordering::Relaxed) {
            metrics.push_str(
                &http
                    .get(support::metrics_url(&replica.0))
                    .send()
                    .await?
                    .text()
                    .await?,
            );
        }
    }
    std::fs::write(work.path().join("metrics.txt"), &metrics)?;
    std::fs::write(
        work.path().join("responses.txt"),
        responses.lock().map(|r| r.clone()).unwrap_or_default(),
    )?;
    let dump = Command::new("pg_dump")
        .args(["--data-only", db_url])
        .output()?;
    anyhow::ensure!(dump.status.success(), "pg_dump failed");
    std::fs::write(work.path().join("database.sql"), &dump.stdout)?;
    let secrets = [
        ("STRIPE_SECRET_KEY", fake_stripe::SECRET_KEY.to_string()),
        (
            "STRIPE_WEBHOOK_SECRET",
            fake_stripe::WEBHOOK_SECRET.to_string(),
        ),
        (
            "PAYPAL_CLIENT_SECRET",
            fake_paypal::CLIENT_SECRET.to_string(),
        ),
        (
            "MPESA_CONSUMER_SECRET",
            fake_mpesa::CONSUMER_SECRET.to_string(),
        ),
        ("MPESA_PASSKEY", fake_mpesa::PASSKEY.to_string()),
        ("JWT_SECRET", support::JWT_SECRET.to_string()),
        ("ENCRYPTION_KEY", support::ENCRYPTION_KEY.to_string()),
        (
            "a user's bearer token",
            support::token_for("pp0")?
                .split('.')
                .nth(2)
                .unwrap_or_default()
                .to_string(),
        ),
    ];
    let (hits, files, bytes) = support::find_secrets(&[work.path().to_path_buf()], &secrets);
    for (secret, file) in &hits {
        failures.push(format!("secret {secret} found in {file}"));
    }

    // ---- Report.
    let outcomes = outcomes.lock().map(|o| o.clone()).unwrap_or_default();
    let mut outcomes: Vec<_> = outcomes.into_iter().collect();
    outcomes.sort();
    println!("delivery attempts by answer: {outcomes:?}");
    if let Some((done, at)) = killed_at {
        println!(
            "replica 1 killed (SIGKILL) after {done} answered deliveries, at {:.1} s",
            at.as_secs_f64()
        );
    }
    if let Some((done, at, took)) = restart {
        println!(
            "PostgreSQL restarted after {done} answered deliveries, at {:.1} s (restart took {:.1} s)",
            at.as_secs_f64(),
            took.as_secs_f64()
        );
    }
    println!(
        "all {total} deliveries answered 2xx after {:.1} s; nothing pending after {:.1} s",
        delivered.as_secs_f64(),
        converged.as_secs_f64()
    );
    println!(
        "inbox rows by provider: {inbox:?}; paid invoices by provider: {invoices:?}; payment entries: {payments}"
    );
    println!(
        "secrets searched: {} secrets in {files} files ({:.1} MB: 3 replica logs, responses, metrics, pg_dump): {} hits",
        secrets.len(),
        bytes as f64 / 1e6,
        hits.len()
    );
    for (r, replica) in replicas.iter_mut().enumerate() {
        if alive[r].load(Ordering::Relaxed) {
            let _ = Command::new("kill")
                .args(["-TERM", &replica.0.id().to_string()])
                .status();
            let _ = replica.0.wait();
        }
    }
    if failures.is_empty() {
        println!(
            "HELD: every subscription equals the provider's, invoice counts exact, every inbox row has its effect, nothing pending, no secret found"
        );
        Ok(())
    } else {
        for f in failures.iter().take(30) {
            println!("FAILED: {f}");
        }
        anyhow::bail!("{} checks failed", failures.len())
    }
}

/// The pool from before the restart may hold dead connections: a fresh one.
async fn reconnect(db_url: &str, old: PgPool) -> anyhow::Result<PgPool> {
    old.close().await;
    Ok(PgPool::connect(db_url).await?)
}

/// Runs `f(0..n)` with at most `width` at a time; the results in order.
async fn in_parallel<F, Fut>(n: usize, width: usize, f: F) -> anyhow::Result<Vec<String>>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<String>> + Send + 'static,
{
    use futures_util::StreamExt;
    let results: Vec<anyhow::Result<String>> = futures_util::stream::iter((0..n).map(f))
        .buffered(width)
        .collect()
        .await;
    results.into_iter().collect()
}
