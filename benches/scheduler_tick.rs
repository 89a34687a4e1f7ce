//! The scheduler's cost per tick (issue 12): 10,000 ACTIVE integrations on 60-second intervals,
//! one statement per 500 due integrations (the CTE on PostgreSQL).
//!
//! Three ticks are timed against the store directly (no server):
//! - all 10,000 due at once (a cold start after an outage): the worst case;
//! - steady state with a 10 s tick: next syncs spread over the minute, a sixth (~1,667) due;
//! - nothing due: the index probe alone (mean of 50).
//!
//! Run: `BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres cargo bench --bench
//! scheduler_tick` (SQLite in a temporary directory without it).

#[allow(dead_code)]
mod support;

use std::time::{Duration, Instant};

use nexus_billing::integrations::scheduler::{SchedulerConfig, tick};
use support::{Database, execute};

const INTEGRATIONS: usize = 10_000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let db = Database::create().await?;
    let postgres = db.url.starts_with("postgres");
    let store = nexus_billing::store::connect(&db.url, 5).await?;
    store.migrate().await?;
    let result = async {
        for start in (0..INTEGRATIONS).step_by(1000) {
            let rows: Vec<String> = (start..(start + 1000).min(INTEGRATIONS))
                .map(|i| {
                    format!(
                        "('{}', 'user-{i}', 'hubspot', 'active', {}, '{{\"syncInterval\":\"60\"}}', 60)",
                        uuid::Uuid::new_v4(),
                        if postgres { "'\\x00'::bytea" } else { "x'00'" }
                    )
                })
                .collect();
            execute(
                &db.url,
                &format!(
                    "INSERT INTO integrations (id, user_id, provider, status, credentials, settings, \
                     sync_interval_seconds) VALUES {}",
                    rows.join(", ")
                ),
            )
            .await?;
        }
        let config = SchedulerConfig {
            tick: Duration::from_secs(10),
            max_attempts: 8,
            retention: chrono::Duration::days(90),
        };
        let at = |offset: &str| -> String {
            if postgres {
                format!("now() + ({offset})")
            } else {
                format!("strftime('%Y-%m-%dT%H:%M:%fZ', 'now', {offset})")
            }
        };
        let finish_jobs = "UPDATE sync_jobs SET state = 'succeeded', finished_at = created_at \
                           WHERE state = 'queued'";
        println!(
            "scheduler ticks over {INTEGRATIONS} integrations on 60 s intervals ({})\n",
            if postgres { "PostgreSQL" } else { "SQLite" }
        );
        println!("| tick | due | queued jobs | ms |");
        println!("|---|---:|---:|---:|");

        // All due.
        let all_due = if postgres { "interval '-1 second'".to_string() } else { "'-1 seconds'".to_string() };
        execute(&db.url, &format!("UPDATE integrations SET next_sync_at = {}", at(&all_due))).await?;
        let started = Instant::now();
        let due = tick(store.as_ref(), &config).await?;
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        println!("| all due (cold start) | {due} | {INTEGRATIONS} | {ms:.1} |");
        execute(&db.url, finish_jobs).await?;

        // Steady state: next syncs spread over the minute; a 10 s tick finds a sixth due.
        let spread = if postgres {
            "make_interval(secs => (abs(hashtext(id::text)) % 60) - 9.5)".to_string()
        } else {
            "((abs(random()) % 60) - 9) || ' seconds'".to_string()
        };
        execute(&db.url, &format!("UPDATE integrations SET next_sync_at = {}", at(&spread))).await?;
        let started = Instant::now();
        let due = tick(store.as_ref(), &config).await?;
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        println!("| steady (10 s tick) | {due} | {due} | {ms:.1} |");
        execute(&db.url, finish_jobs).await?;

        // Nothing due.
        let runs = 50;
        let started = Instant::now();
        for _ in 0..runs {
            let due = tick(store.as_ref(), &config).await?;
            anyhow::ensure!(due == 0, "{due} due in an idle tick");
        }
        let ms = started.elapsed().as_secs_f64() * 1000.0 / f64::from(runs);
        println!("| nothing due (mean of {runs}) | 0 | 0 | {ms:.2} |");
        Ok::<(), anyhow::Error>(())
    }
    .await;
    store.close().await;
    db.drop().await?;
    result
}
