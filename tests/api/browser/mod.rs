//! The dashboard end to end in real headless Chromium: each test starts the service and the
//! fakes, then runs one scenario of `web/e2e/` with Node and playwright-core (Debian's
//! chromium, no browser download), then checks what the fakes and the database saw.
//!
//! They run when Node, `web/node_modules` (`npm ci` in web/) and Chromium are present and are
//! listed as ignored otherwise; with NEXUS_REQUIRE_BROWSER=1 (as in CI) a missing piece fails
//! them (see `harness.rs`).
//! Screenshots go to `target/e2e-screenshots/`. They run on SQLite (the storage is covered on
//! both backends by the other tests; these cover the pages).

mod billing_choices;
mod billing_flows;
mod error_paths;
mod hosted_checkout;
mod integrations_flows;

use std::{path::PathBuf, process::Stdio, time::Duration};

use crate::helpers::{Backend, TestApp};

/// How long one scenario may take before it is stopped and fails.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(180);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// The scenarios of every file.
pub(crate) fn trials() -> Vec<libtest_mimic::Trial> {
    [
        billing_choices::trials(),
        billing_flows::trials(),
        error_paths::trials(),
        integrations_flows::trials(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Why the browser tests cannot run here, if they cannot.
pub fn missing_piece() -> Option<String> {
    if !repo().join("web/node_modules/playwright-core").exists() {
        return Some("web/node_modules is missing (run `npm ci` in web/)".into());
    }
    if !chromium().exists() {
        return Some(format!(
            "{} is missing (apt-get install chromium, or set CHROMIUM_PATH)",
            chromium().display()
        ));
    }
    let node = std::process::Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .status();
    if !node.is_ok_and(|s| s.success()) {
        return Some("node is not installed".into());
    }
    None
}

/// A free loopback port: the dashboard's origin must be known before the server starts (the
/// OAuth callback URL names it).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    listener
        .local_addr()
        .unwrap_or_else(|e| panic!("{e}"))
        .port()
}

/// The service on SQLite with its sidecar on a known port, plus `extra` settings.
pub async fn spawn_for_browser(extra: &[(String, String)]) -> TestApp {
    let port = free_port();
    let http_addr = format!("127.0.0.1:{port}");
    let callback = format!("http://127.0.0.1:{port}/integrations/oauth/callback");
    let mut settings: Vec<(&str, &str)> = vec![
        ("--http-addr", &http_addr),
        ("--oauth-redirect-url", &callback),
    ];
    settings.extend(extra.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    TestApp::spawn_with(Backend::Sqlite, &settings).await
}

impl TestApp {
    /// The dashboard's base URL, as a browser opens it.
    pub fn dashboard_url(&self) -> String {
        format!("http://127.0.0.1:{}/dashboard/", self.http_addr.port())
    }
}

/// Runs `node web/e2e/run.mjs <scenario>` against `app` with `env`, failing the test (with the
/// scenario's output) if the scenario fails.
pub async fn run_scenario(scenario: &str, app: &TestApp, env: &[(&str, String)]) {
    let screenshots = repo().join("target/e2e-screenshots");
    let mut command = tokio::process::Command::new("node");
    command
        .current_dir(repo().join("web"))
        .arg("e2e/run.mjs")
        .arg(scenario)
        .env("BASE_URL", app.dashboard_url())
        .env(
            "GRPC_URL",
            format!("http://127.0.0.1:{}", app.grpc_addr.port()),
        )
        .env("SCREENSHOT_DIR", &screenshots)
        .env("CHROMIUM_PATH", chromium())
        .kill_on_drop(true);
    for (key, value) in env {
        command.env(key, value);
    }
    let output = tokio::time::timeout(SCENARIO_TIMEOUT, command.output())
        .await
        .unwrap_or_else(|_| panic!("scenario {scenario} did not finish in {SCENARIO_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("cannot run node: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "browser scenario {scenario} failed:\n{stdout}\n{stderr}"
    );
}
