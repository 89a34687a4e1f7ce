//! The world of the data-rights tests: fake Stripe, a fake HubSpot (API key) and a fake Google
//! Drive (OAuth) around the service; a user holding everything the service can hold; the
//! AccountService calls; and a search of every row of every table for a user's traces.

use nexus_billing::grpc::proto::{
    account::{DeleteMyDataRequest, DeleteMyDataResponse, ExportMyDataRequest},
    billing::Tier,
    integrations::Provider,
};
use serde_json::{Value, json};

use crate::{
    fake_oauth::{FakeOAuth, OKind},
    fake_providers::{FakeProvider, Kind},
    fake_stripe::{FakeStripe, InvoiceSpec},
    helpers::{Backend, TestApp, TestPool, authed},
    helpers::{ENCRYPTION_KEY, JWT_SECRET},
    integrations::{connect, start_sync, wait_for_job},
    oauth::{connect_oauth, oauth_settings, start_oauth},
    subscription_lifecycle::{period, subscribe},
};

/// User ids no fixture text contains by chance (the search looks for them in every row).
pub const ADA: &str = "ada-2f9c1";
pub const BOB: &str = "bob-7d41e";

/// The fakes of one test.
pub struct World {
    pub app: TestApp,
    pub stripe: FakeStripe,
    pub hubspot: FakeProvider,
    pub drive: FakeOAuth,
}

impl World {
    pub async fn start(backend: Backend) -> Self {
        let stripe = FakeStripe::start().await;
        let hubspot = FakeProvider::start(Kind::Hubspot).await;
        let drive = FakeOAuth::start(OKind::GoogleDrive).await;
        let mut settings: Vec<(String, String)> = stripe
            .settings()
            .into_iter()
            .chain(hubspot.settings())
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        settings.extend(oauth_settings(&[&drive]));
        let overrides: Vec<(&str, &str)> = settings
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let app = TestApp::spawn_with(backend, &overrides).await;
        Self {
            app,
            stripe,
            hubspot,
            drive,
        }
    }

    /// The settings to restart the app with.
    pub fn settings(&self) -> Vec<(String, String)> {
        let mut settings: Vec<(String, String)> = self
            .stripe
            .settings()
            .into_iter()
            .chain(self.hubspot.settings())
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        settings.extend(oauth_settings(&[&self.drive]));
        settings
    }
}

/// A user with everything this service can hold: a PRO Stripe subscription with a failed
/// and a paid invoice (whose payload names the user's email), HubSpot connected and synced,
/// Google Drive connected through OAuth, an unfinished OAuth flow, activity entries.
/// Returns the Stripe subscription id.
pub async fn rich_user(w: &World, user: &str) -> String {
    let app = &w.app;
    let (customer, sub_id) = subscribe(app, &w.stripe, user, Tier::Pro).await;
    let (start, _) = period();
    for (n, status, paid) in [(1, "open", 0), (2, "paid", 900)] {
        let mut invoice = w.stripe.put_invoice(&InvoiceSpec {
            id: &format!("in_{}", uuid::Uuid::new_v4().simple()),
            customer: &customer,
            subscription: &sub_id,
            status,
            amount_due: 900,
            amount_paid: paid,
            created: start + n,
        });
        invoice["customer_email"] = json!(email(user));
        invoice["customer_name"] = json!(format!("Name of {user}"));
        invoice["number"] = json!(format!("NEXUS-{n:04}"));
        let kind = if paid > 0 {
            "invoice.paid"
        } else {
            "invoice.payment_failed"
        };
        let (_, event) = w.stripe.event(kind, &invoice);
        app.deliver_signed(&event).await;
    }
    app.add_contacts_named(user, user, 3).await;
    connect(app, user, &w.hubspot).await;
    let mut client = app.integrations().await;
    let job = start_sync(&mut client, user, Provider::Hubspot).await;
    wait_for_job(app, user, &job.id).await;
    connect_oauth(app, user, &w.drive, &[]).await;
    // Started and never finished.
    start_oauth(app, user, OKind::GoogleDrive, &[]).await;
    sub_id
}

pub fn email(user: &str) -> String {
    format!("{user}@example.com")
}

/// Every JSON line of the user's export, as `caller` asks for it.
pub async fn export(app: &TestApp, caller_token: &str, user_id: &str) -> Vec<Value> {
    let mut stream = app
        .account()
        .await
        .export_my_data(authed(
            ExportMyDataRequest {
                user_id: user_id.to_string(),
            },
            caller_token,
        ))
        .await
        .unwrap_or_else(|e| panic!("ExportMyData: {e}"))
        .into_inner();
    let mut lines = Vec::new();
    while let Some(message) = stream
        .message()
        .await
        .unwrap_or_else(|e| panic!("export stream: {e}"))
    {
        lines.push(
            serde_json::from_str(&message.json_line)
                .unwrap_or_else(|e| panic!("not JSON: {e}: {}", message.json_line)),
        );
    }
    lines
}

pub async fn erase(app: &TestApp, caller_token: &str, user_id: &str) -> DeleteMyDataResponse {
    app.account()
        .await
        .delete_my_data(authed(
            DeleteMyDataRequest {
                user_id: user_id.to_string(),
            },
            caller_token,
        ))
        .await
        .unwrap_or_else(|e| panic!("DeleteMyData: {e}"))
        .into_inner()
}

pub fn of_type<'a>(lines: &'a [Value], kind: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l["type"] == kind).collect()
}

/// Every row of every table this service owns, as text, with its table name. The card
/// application's `cards` and `contacts` are left out: it owns them and erases them itself; so is
/// `usage_counts`, which the database keeps from them (a user's row goes when their rows go).
pub async fn every_row(pool: &TestPool) -> Vec<(String, String)> {
    let skip = [
        "cards",
        "contacts",
        "usage_counts",
        "_sqlx_migrations",
        "sqlite_sequence",
    ];
    let mut rows = Vec::new();
    match pool {
        TestPool::Postgres(pool) => {
            let tables: Vec<String> = sqlx::query_scalar(
                "SELECT table_name::text FROM information_schema.tables \
                 WHERE table_schema = 'public' AND table_type = 'BASE TABLE'",
            )
            .fetch_all(pool)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
            for table in tables.into_iter().filter(|t| !skip.contains(&t.as_str())) {
                let sql = format!(r#"SELECT t::text FROM "{table}" t"#);
                let texts: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                    .fetch_all(pool)
                    .await
                    .unwrap_or_else(|e| panic!("{table}: {e}"));
                rows.extend(texts.into_iter().map(|t| (table.clone(), t)));
            }
        }
        TestPool::Sqlite(pool) => {
            let tables: Vec<String> =
                sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table'")
                    .fetch_all(pool)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
            for table in tables.into_iter().filter(|t| !skip.contains(&t.as_str())) {
                let columns: Vec<String> =
                    sqlx::query_scalar("SELECT name FROM pragma_table_info($1)")
                        .bind(&table)
                        .fetch_all(pool)
                        .await
                        .unwrap_or_else(|e| panic!("{table}: {e}"));
                let row = columns
                    .iter()
                    .map(|c| format!(r#"quote("{c}")"#))
                    .collect::<Vec<_>>()
                    .join(" || ',' || ");
                let sql = format!(r#"SELECT {row} FROM "{table}""#);
                let texts: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                    .fetch_all(pool)
                    .await
                    .unwrap_or_else(|e| panic!("{table}: {e}"));
                rows.extend(texts.into_iter().map(|t| (table.clone(), t)));
            }
        }
    }
    rows
}

/// The rows naming `needle`, as `table: row`.
pub async fn rows_naming(pool: &TestPool, needle: &str) -> Vec<String> {
    every_row(pool)
        .await
        .into_iter()
        .filter(|(_, row)| row.contains(needle))
        .map(|(table, row)| format!("{table}: {row}"))
        .collect()
}

pub const BIN: &str = env!("CARGO_BIN_EXE_nexus-billing");

/// The service binary running as another replica on the world's database and fakes, so it can
/// be killed like a crashed process (SIGKILL: no handler, task or transaction survives it).
/// Killed when dropped.
pub struct Replica {
    child: std::process::Child,
    pub grpc_addr: String,
    _data_dir: tempfile::TempDir,
}

impl Replica {
    pub fn start(w: &World) -> Self {
        use std::io::{BufRead, BufReader};
        let data_dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut command = std::process::Command::new(BIN);
        command
            .env_clear()
            .env("DATABASE_URL", w.app.database_url())
            .env("JWT_SECRET", JWT_SECRET)
            .env("ENCRYPTION_KEY", ENCRYPTION_KEY)
            .env("LOG_FORMAT", "json")
            .env("LOG_LEVEL", "info")
            .env("DATA_DIR", data_dir.path())
            .env("GRPC_ADDR", "127.0.0.1:0")
            .env("HTTP_ADDR", "127.0.0.1:0")
            .env("METRICS_ADDR", "127.0.0.1:0")
            .env("RECONCILE_INTERVAL", "0s")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        for (flag, value) in w.settings() {
            command.arg(format!("{flag}={value}"));
        }
        let mut child = command.spawn().unwrap_or_else(|e| panic!("{e}"));
        let stderr = child.stderr.take().unwrap_or_else(|| panic!("no stderr"));
        let mut lines = BufReader::new(stderr).lines();
        let grpc_addr = loop {
            let line = lines
                .next()
                .unwrap_or_else(|| panic!("the replica exited before serving"))
                .unwrap_or_else(|e| panic!("{e}"));
            let json: Value = serde_json::from_str(&line).unwrap_or_default();
            if json["message"] == "serving" {
                break json["grpc_addr"].as_str().unwrap_or_default().to_string();
            }
        };
        // Keep draining, so the replica never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines.by_ref() {});
        Self {
            child,
            grpc_addr,
            _data_dir: data_dir,
        }
    }

    /// SIGKILL, and wait until the process is gone.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
