//! Slow clients and connection floods against both ports, bounded, while a probe checks that
//! the service keeps answering real callers.
//!
//! Phases (each on the sidecar port and on the gRPC port):
//! 1. idle: 1,000 connections that never send a byte;
//! 2. slow-loris: 500 connections that send a request (HTTP/1 on the sidecar, the HTTP/2
//!    preface on the gRPC port) one byte a second;
//! 3. slow body: 200 webhook deliveries whose body arrives at 10 bytes a second (sidecar only);
//! 4. flood: 6,000 connections opened as fast as possible and held.
//!
//! For each phase: how many of the attacker's connections the service closed and when, the
//! service's open file descriptors and resident memory at their peak, and the probe's calls
//! (a `/healthz` GET and a gRPC `ListPlans` on fresh connections every 200 ms) that failed.
//!
//! Run: `cargo bench --bench attacks` (SQLite in a temporary directory). ATTACK_SCALE (default
//! 1.0) scales the connection counts; ATTACK_GUARDS=off lifts the connection guards (no cap,
//! no hello or idle deadline), to see what they prevent; ATTACK_ONLY=<text> runs only the
//! phases whose name contains it.

#[allow(dead_code)]
mod support;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use nexus_billing::grpc::proto::billing::{
    ListPlansRequest, billing_service_client::BillingServiceClient,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

#[derive(Default)]
struct Probe {
    calls: AtomicUsize,
    failed: AtomicUsize,
    slowest_ms: AtomicUsize,
}

/// Calls the service as a real client every 200 ms until `stop`.
async fn probe(http: String, grpc: String, token: String, stop: Arc<AtomicBool>, out: Arc<Probe>) {
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let health = async {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .pool_max_idle_per_host(0)
                .build()
                .ok()?;
            let r = client
                .get(format!("http://{http}/healthz"))
                .send()
                .await
                .ok()?;
            r.status().is_success().then_some(())
        };
        let plans = async {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
                .ok()?
                .connect_timeout(Duration::from_secs(5))
                .timeout(Duration::from_secs(5))
                .connect()
                .await
                .ok()?;
            let mut client = BillingServiceClient::new(channel);
            client
                .list_plans(support::authed(ListPlansRequest::default(), &token).ok()?)
                .await
                .ok()
                .map(drop)
        };
        let (h, p) = tokio::join!(health, plans);
        let ms = usize::try_from(started.elapsed().as_millis()).unwrap_or(usize::MAX);
        out.slowest_ms.fetch_max(ms, Ordering::Relaxed);
        out.calls.fetch_add(2, Ordering::Relaxed);
        out.failed.fetch_add(
            usize::from(h.is_none()) + usize::from(p.is_none()),
            Ordering::Relaxed,
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One attacking connection: connects, runs `attack` (what it sends), then waits for the
/// server to close it. Returns when it was closed, or why not: it stayed open until `hold`,
/// or the connection was never accepted within 5 s (the listen backlog was full).
async fn attacker<F, Fut>(addr: String, hold: Duration, attack: F) -> Result<Duration, &'static str>
where
    F: FnOnce(TcpStream) -> Fut,
    Fut: std::future::Future<Output = Option<TcpStream>>,
{
    let started = Instant::now();
    let stream = match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(&addr)).await
    {
        Err(_) => return Err("not accepted in 5 s"),
        Ok(Err(_)) => return Ok(started.elapsed()), // refused at once: closed at once
        Ok(Ok(stream)) => stream,
    };
    let remaining = hold.saturating_sub(started.elapsed());
    let outcome = tokio::time::timeout(remaining, async move {
        let mut stream = attack(stream).await?;
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return Some(()),
                Ok(_) => {}
            }
        }
    })
    .await;
    match outcome {
        Ok(_) => Ok(started.elapsed()),
        Err(_) => Err("held open"),
    }
}

/// Sends `bytes` one at a time, `every` apart; None when the server closed the connection.
async fn drip(mut stream: TcpStream, bytes: Vec<u8>, every: Duration) -> Option<TcpStream> {
    for b in bytes {
        if stream.write_all(&[b]).await.is_err() {
            return None;
        }
        tokio::time::sleep(every).await;
    }
    Some(stream)
}

struct Phase {
    name: String,
    connections: usize,
    closed: usize,
    held_open: usize,
    not_accepted: usize,
    median_closed_s: f64,
    fds_peak: usize,
    rss_peak_mib: f64,
    probe_calls: usize,
    probe_failed: usize,
    probe_slowest_ms: usize,
}

async fn phase<F, Fut>(
    name: &str,
    pid: u32,
    urls: (&str, &str, &str),
    token: &str,
    connections: usize,
    hold: Duration,
    make: F,
) -> Phase
where
    F: Fn(String, Duration) -> Fut,
    Fut: std::future::Future<Output = Result<Duration, &'static str>> + Send + 'static,
{
    let (target, http, grpc) = urls;
    let only = std::env::var("ATTACK_ONLY").unwrap_or_default();
    let connections = if name.contains(only.as_str()) {
        connections
    } else {
        0
    };
    let stop = Arc::new(AtomicBool::new(false));
    let probe_out = Arc::new(Probe::default());
    let prober = tokio::spawn(probe(
        http.to_string(),
        grpc.to_string(),
        token.to_string(),
        Arc::clone(&stop),
        Arc::clone(&probe_out),
    ));
    let peaks = Arc::new(Mutex::new((0usize, 0f64)));
    let sampler = {
        let (peaks, stop) = (Arc::clone(&peaks), Arc::clone(&stop));
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(mut p) = peaks.lock() {
                    p.0 = p.0.max(support::open_fds(pid));
                    p.1 = p.1.max(support::rss_mib(pid));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let mut attackers = tokio::task::JoinSet::new();
    for _ in 0..connections {
        attackers.spawn(make(target.to_string(), hold));
    }
    let mut closed: Vec<f64> = Vec::new();
    let (mut held_open, mut not_accepted) = (0, 0);
    while let Some(result) = attackers.join_next().await {
        match result {
            Ok(Ok(at)) => closed.push(at.as_secs_f64()),
            Ok(Err("held open")) => held_open += 1,
            _ => not_accepted += 1,
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = prober.await;
    let _ = sampler.await;
    closed.sort_by(f64::total_cmp);
    let (fds_peak, rss_peak_mib) = peaks.lock().map(|p| *p).unwrap_or_default();
    Phase {
        name: name.to_string(),
        connections,
        closed: closed.len(),
        held_open,
        not_accepted,
        median_closed_s: closed.get(closed.len() / 2).copied().unwrap_or(f64::NAN),
        fds_peak,
        rss_peak_mib,
        probe_calls: probe_out.calls.load(Ordering::Relaxed),
        probe_failed: probe_out.failed.load(Ordering::Relaxed),
        probe_slowest_ms: probe_out.slowest_ms.load(Ordering::Relaxed),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let scale: f64 = std::env::var("ATTACK_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    let n = |count: f64| ((count * scale).round() as usize).max(1);
    let db = support::Database::create().await?;
    let work = tempfile::tempdir()?;
    let mut env = support::base_env(&db.url);
    env.push(("LOG_LEVEL".into(), "warn,nexus_billing=info".into()));
    let guards_off = std::env::var("ATTACK_GUARDS").is_ok_and(|v| v == "off");
    if guards_off {
        // As before the connection guards existed: no cap, no hello or idle deadline.
        env.push(("MAX_CONNECTIONS".into(), "1000000".into()));
        env.push(("CONNECTION_HELLO_TIMEOUT".into(), "1h".into()));
        env.push(("HTTP_IDLE_TIMEOUT".into(), "1h".into()));
    }
    let (mut child, grpc, http) =
        support::serve_logged(&env, &[], &work.path().join("service.log"))?;
    let pid = child.id();
    let fds_idle = support::open_fds(pid);
    let token = support::mint_token(&db.url)?;
    let mut phases = Vec::new();
    for (port_name, target) in [("sidecar", http.clone()), ("gRPC", grpc.clone())] {
        let addrs = (target.as_str(), http.as_str(), grpc.as_str());
        phases.push(
            phase(
                &format!("{port_name}: idle connections"),
                pid,
                addrs,
                &token,
                n(1000.0),
                Duration::from_secs(40),
                |addr, hold| async move { attacker(addr, hold, |s| async move { Some(s) }).await },
            )
            .await,
        );
        let slow: Vec<u8> = if port_name == "sidecar" {
            b"POST /billing/webhook HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n".to_vec()
        } else {
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00".to_vec()
        };
        phases.push(
            phase(
                &format!("{port_name}: slow-loris, 1 byte/s"),
                pid,
                addrs,
                &token,
                n(500.0),
                Duration::from_secs(45),
                move |addr, hold| {
                    let slow = slow.clone();
                    async move {
                        attacker(addr, hold, move |s| drip(s, slow, Duration::from_secs(1))).await
                    }
                },
            )
            .await,
        );
        if port_name == "sidecar" {
            phases.push(
                phase("sidecar: slow webhook body, 10 bytes/s", pid, addrs, &token, n(200.0), Duration::from_secs(45), |addr, hold| async move {
                    attacker(addr, hold, |mut s| async move {
                        s.write_all(b"POST /billing/webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n").await.ok()?;
                        drip(s, vec![b' '; 1000], Duration::from_millis(100)).await
                    })
                    .await
                })
                .await,
            );
        }
        phases.push(
            phase(
                &format!("{port_name}: flood of 6,000 connections"),
                pid,
                addrs,
                &token,
                n(6000.0),
                Duration::from_secs(20),
                |addr, hold| async move { attacker(addr, hold, |s| async move { Some(s) }).await },
            )
            .await,
        );
    }
    let fds_after = {
        tokio::time::sleep(Duration::from_secs(2)).await;
        support::open_fds(pid)
    };
    let alive = child.try_wait()?.is_none();

    println!(
        "connection guards: {}",
        if guards_off {
            "off (ATTACK_GUARDS=off)"
        } else {
            "on (defaults)"
        }
    );
    println!(
        "service: {fds_idle} file descriptors idle, {fds_after} after the attacks; still running: {alive}"
    );
    println!();
    println!(
        "| phase | connections | closed by the service | median close s | still open at the end | not accepted in 5 s | peak fds | peak RSS MiB | probe calls | probe failed | slowest probe ms |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for p in phases.iter().filter(|p| p.connections > 0) {
        println!(
            "| {} | {} | {} | {:.1} | {} | {} | {} | {:.0} | {} | {} | {} |",
            p.name,
            p.connections,
            p.closed,
            p.median_closed_s,
            p.held_open,
            p.not_accepted,
            p.fds_peak,
            p.rss_peak_mib,
            p.probe_calls,
            p.probe_failed,
            p.probe_slowest_ms
        );
    }
    let log = std::fs::read_to_string(work.path().join("service.log")).unwrap_or_default();
    let panics = log.lines().filter(|l| l.contains("panicked")).count();
    println!(
        "service log: {} lines, {panics} panics",
        log.lines().count()
    );
    support::stop(child);
    db.drop().await?;
    anyhow::ensure!(alive && panics == 0, "the service died or panicked");
    Ok(())
}
