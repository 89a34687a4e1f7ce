//! Test harness: the real server on random ports with a fresh database per test (a temporary
//! SQLite file, or a new PostgreSQL database created from TEST_DATABASE_URL), plus clients.

use std::{net::SocketAddr, time::Duration};

use chrono::{DateTime, Utc};
use clap::Parser;
use nexus_billing::{
    auth::{Claims, SERVICE_ROLE},
    cli::Cli,
    config::Config,
    grpc::proto::{
        account::account_service_client::AccountServiceClient,
        billing::billing_service_client::BillingServiceClient,
        integrations::integrations_service_client::IntegrationsServiceClient,
    },
    startup::Application,
};
use sqlx::{Connection, Executor, PgConnection, PgPool, SqlitePool};
use tokio_util::sync::CancellationToken;
use tonic::{Request, transport::Channel};

use crate::fake_stripe::{FakeStripe, sign_now};

pub const JWT_SECRET: &str = "test-secret-that-is-long-enough-for-hs256-0123456789";
pub const ENCRYPTION_KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
pub const ALLOWED_ORIGIN: &str = "https://app.nexus.test";

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A pool on the test database, for seeding rows the card application would write.
pub enum TestPool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs one statement on either backend with the same binds.
#[macro_export]
macro_rules! exec {
    ($pool:expr, pg: $pg:expr, sqlite: $lite:expr $(, $bind:expr)* $(,)?) => {
        $crate::exec!(@run $pool, $pg, $lite $(, $bind)*)
    };
    (@run $pool:expr, $pg:expr, $lite:expr $(, $bind:expr)*) => {
        match $pool {
            $crate::helpers::TestPool::Sqlite(pool) => {
                sqlx::query($lite)$(.bind($bind))*.execute(pool).await.map(|_| ())
            }
            $crate::helpers::TestPool::Postgres(pool) => {
                sqlx::query($pg)$(.bind($bind))*.execute(pool).await.map(|_| ())
            }
        }
        .unwrap_or_else(|e| panic!("seeding failed: {e}"))
    };
    ($pool:expr, $sql:expr $(, $bind:expr)* $(,)?) => {
        $crate::exec!(@run $pool, $sql, $sql $(, $bind)*)
    };
}

/// A fresh, empty database for one test.
pub struct TestDatabase {
    pub url: String,
    /// False for a second server on another's database: it must not drop it.
    owned: bool,
    backend: Backend,
    name: String,
    admin_url: String,
    _dir: tempfile::TempDir,
}

impl TestDatabase {
    pub async fn create(backend: Backend) -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        match backend {
            Backend::Sqlite => Self {
                url: format!("sqlite://{}", dir.path().join("test.db").display()),
                owned: true,
                backend,
                name: String::new(),
                admin_url: String::new(),
                _dir: dir,
            },
            Backend::Postgres => {
                let admin_url = std::env::var("TEST_DATABASE_URL")
                    .unwrap_or_else(|_| panic!("TEST_DATABASE_URL"));
                let name = format!("nexus_test_{}", uuid::Uuid::new_v4().simple());
                let mut admin = PgConnection::connect(&admin_url)
                    .await
                    .unwrap_or_else(|e| panic!("cannot reach TEST_DATABASE_URL: {e}"));
                admin
                    .execute(sqlx::AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#)))
                    .await
                    .unwrap_or_else(|e| panic!("create database: {e}"));
                let mut url = url::Url::parse(&admin_url).unwrap_or_else(|e| panic!("{e}"));
                url.set_path(&format!("/{name}"));
                Self {
                    url: url.to_string(),
                    owned: true,
                    backend,
                    name,
                    admin_url,
                    _dir: dir,
                }
            }
        }
    }

    pub async fn pool(&self) -> TestPool {
        match self.backend {
            Backend::Sqlite => TestPool::Sqlite(
                SqlitePool::connect(&self.url)
                    .await
                    .unwrap_or_else(|e| panic!("{e}")),
            ),
            Backend::Postgres => TestPool::Postgres(
                PgPool::connect(&self.url)
                    .await
                    .unwrap_or_else(|e| panic!("{e}")),
            ),
        }
    }

    /// Stands in for a database handed over (it owns nothing and drops nothing).
    fn placeholder() -> Self {
        Self {
            url: String::new(),
            owned: false,
            backend: Backend::Sqlite,
            name: String::new(),
            admin_url: String::new(),
            _dir: tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}")),
        }
    }

    /// The same database, for a second server (which will not drop it).
    pub fn borrow(&self) -> Self {
        Self {
            url: self.url.clone(),
            owned: false,
            backend: self.backend,
            name: self.name.clone(),
            admin_url: self.admin_url.clone(),
            _dir: tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}")),
        }
    }

    /// Drops the PostgreSQL database, closing whatever is still connected to it.
    pub async fn drop_database(&self) {
        if self.owned
            && self.backend == Backend::Postgres
            && let Ok(mut admin) = PgConnection::connect(&self.admin_url).await
        {
            let sql = format!(r#"DROP DATABASE IF EXISTS "{}" WITH (FORCE)"#, self.name);
            let _ = admin.execute(sqlx::AssertSqlSafe(sql)).await;
        }
    }
}

/// A running service. It runs on a tokio runtime of its own, as a replica runs in a process
/// of its own: [`TestApp::crash_and_restart`] ends that runtime, and with it every task of the
/// server (listeners, connections, requests in flight, workers), as a crash would.
pub struct TestApp {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub db: TestDatabase,
    pub pool: TestPool,
    shutdown: CancellationToken,
    server: Option<Server>,
    _data_dir: tempfile::TempDir,
}

/// The server's runtime and its main task.
struct Server {
    runtime: tokio::runtime::Runtime,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Server {
    /// Ends every task of the server at once: nothing more of it runs, nothing is flushed.
    fn kill(self) {
        self.runtime.shutdown_background();
    }
}

impl Drop for TestApp {
    /// A test that fails (panics) leaves no server running behind it.
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.kill();
        }
    }
}

/// How long a server may take to stop gracefully before the test fails.
const STOP_DEADLINE: Duration = Duration::from_secs(60);

/// How long a test waits for a condition before it fails. Generous, because tests run side by
/// side on a busy machine and only a failing test ever waits this long: no test depends on
/// how fast anything happens, only on what happens.
pub const PATIENCE: Duration = Duration::from_secs(120);

/// Polls `probe` until it gives something, and returns that; fails the test (naming `what`)
/// after [`PATIENCE`].
pub async fn wait_for<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still not so after {PATIENCE:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `check` holds, polling; fails the test (naming `what`) after [`PATIENCE`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still not so after {PATIENCE:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The settings every test server starts with, as flag/value pairs.
fn base_settings(db_url: &str, data_dir: &std::path::Path) -> Vec<(String, String)> {
    [
        ("--app-env", "development"),
        ("--data-dir", &data_dir.display().to_string()),
        ("--database-url", db_url),
        ("--database-max-connections", "5"),
        ("--grpc-addr", "127.0.0.1:0"),
        ("--http-addr", "127.0.0.1:0"),
        ("--metrics-addr", "127.0.0.1:0"),
        ("--allowed-origins", ALLOWED_ORIGIN),
        ("--jwt-secret", JWT_SECRET),
        ("--encryption-key", ENCRYPTION_KEY),
        ("--log-level", "warn"),
        ("--sync-poll-interval", "50ms"),
        ("--sync-retry-min-delay", "50ms"),
        ("--sync-retry-max-delay", "1s"),
        ("--webhook-poll-interval", "20ms"),
        ("--sync-scheduler-interval", "100ms"),
        ("--webhook-retry-max-delay", "2s"),
        // Tests run the reconciler on demand (`nexus-billing reconcile`).
        ("--reconcile-interval", "0s"),
        // Payments are what each test configures; the sandbox's own tests turn it on.
        ("--payments-sandbox", "off"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> Self {
        Self::spawn_with(backend, &[]).await
    }

    /// Starts the server with settings added to, or replacing, the defaults.
    pub async fn spawn_with(backend: Backend, overrides: &[(&str, &str)]) -> Self {
        let db = TestDatabase::create(backend).await;
        let data_dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        Self::spawn_in(db, data_dir, overrides).await
    }

    /// A second server on this one's database (another replica).
    pub async fn spawn_beside(&self, overrides: &[(&str, &str)]) -> Self {
        let data_dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        Self::spawn_in(self.db.borrow(), data_dir, overrides).await
    }

    /// Kills the server as a crash would (every task of it ends where it stands: requests in
    /// flight, workers mid-batch; no graceful shutdown), then starts a new one on the same
    /// database.
    pub async fn crash_and_restart(mut self, overrides: &[(&str, &str)]) -> Self {
        self.crash();
        let (db, data_dir) = self.into_parts().await;
        Self::spawn_in(db, data_dir, overrides).await
    }

    /// Kills the server (see [`TestApp::crash_and_restart`]); the test pool and the database
    /// stay, for looking at what the crash left.
    pub fn crash(&mut self) {
        if let Some(server) = self.server.take() {
            server.kill();
        }
    }

    /// Closes the test pool and hands over the database and the data folder.
    async fn into_parts(mut self) -> (TestDatabase, tempfile::TempDir) {
        if let Some(server) = self.server.take() {
            server.kill();
        }
        match &self.pool {
            TestPool::Sqlite(pool) => pool.close().await,
            TestPool::Postgres(pool) => pool.close().await,
        }
        let db = std::mem::replace(&mut self.db, TestDatabase::placeholder());
        let data_dir = std::mem::replace(
            &mut self._data_dir,
            tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}")),
        );
        (db, data_dir)
    }

    /// Starts a graceful stop without waiting for it (what SIGTERM does); [`TestApp::restart`]
    /// or [`TestApp::stop`] then waits for it to end.
    pub fn signal_stop(&self) {
        self.shutdown.cancel();
    }

    /// Ends every sync job lease at once, as if the lease time had passed: after a crash, the
    /// next worker takes the job over now instead of a lease later.
    pub async fn expire_sync_leases(&self) {
        exec!(
            &self.pool,
            "UPDATE sync_jobs SET lease_expires_at = $1 WHERE state = 'running'",
            Utc::now() - chrono::Duration::minutes(1)
        );
    }

    /// Stops the server gracefully and starts a new one on the same database.
    pub async fn restart(self, overrides: &[(&str, &str)]) -> Self {
        let (db, data_dir) = self.shut_down().await;
        Self::spawn_in(db, data_dir, overrides).await
    }

    /// Like [`TestApp::restart`], running `check` once the old server has stopped and before
    /// the new one starts (what the old one did, unmixed with what the new one does).
    pub async fn restart_after(self, overrides: &[(&str, &str)], check: impl FnOnce()) -> Self {
        let (db, data_dir) = self.shut_down().await;
        check();
        Self::spawn_in(db, data_dir, overrides).await
    }

    /// Stops the server gracefully, failing the test if it does not stop cleanly, and closes
    /// the test pool; the database is kept.
    async fn shut_down(mut self) -> (TestDatabase, tempfile::TempDir) {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            let Server { runtime, task } = server;
            let result = tokio::time::timeout(STOP_DEADLINE, task)
                .await
                .unwrap_or_else(|_| panic!("server did not stop within {STOP_DEADLINE:?}"))
                .unwrap_or_else(|e| panic!("server task panicked: {e}"));
            runtime.shutdown_background();
            if let Err(e) = result {
                panic!("server stopped with an error: {e:#}");
            }
        }
        self.into_parts().await
    }

    async fn spawn_in(
        db: TestDatabase,
        data_dir: tempfile::TempDir,
        overrides: &[(&str, &str)],
    ) -> Self {
        let mut settings = base_settings(&db.url, data_dir.path());
        for (flag, value) in overrides {
            settings.retain(|(f, _)| f != flag);
            settings.push((flag.to_string(), value.to_string()));
        }
        let args = std::iter::once("nexus-billing".to_string())
            .chain(settings.into_iter().map(|(f, v)| format!("{f}={v}")));
        let cli = Cli::try_parse_from(args).unwrap_or_else(|e| panic!("test settings: {e}"));
        let config = Config::from_settings(cli.settings).unwrap_or_else(|e| panic!("{e}"));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("test-server")
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("server runtime: {e}"));
        let app = runtime
            .spawn(Application::build(config))
            .await
            .unwrap_or_else(|e| panic!("build panicked: {e}"))
            .unwrap_or_else(|e| panic!("build: {e:#}"));
        let (grpc_addr, http_addr, metrics_addr) =
            (app.grpc_addr(), app.http_addr(), app.metrics_addr());
        let shutdown = app.shutdown_token();
        let task = runtime.spawn(app.run_until_stopped());
        let pool = db.pool().await;
        Self {
            grpc_addr,
            http_addr,
            metrics_addr,
            db,
            pool,
            shutdown,
            server: Some(Server { runtime, task }),
            _data_dir: data_dir,
        }
    }

    /// Stops the server gracefully (failing the test if it does not stop cleanly) and drops
    /// the test database.
    pub async fn stop(self) {
        let (db, _data_dir) = self.shut_down().await;
        db.drop_database().await;
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.grpc_addr))
            .unwrap_or_else(|e| panic!("{e}"))
            .connect()
            .await
            .unwrap_or_else(|e| panic!("connect: {e}"))
    }

    pub async fn billing(&self) -> BillingServiceClient<Channel> {
        BillingServiceClient::new(self.channel().await)
    }

    pub async fn integrations(&self) -> IntegrationsServiceClient<Channel> {
        IntegrationsServiceClient::new(self.channel().await)
    }

    pub async fn account(&self) -> AccountServiceClient<Channel> {
        AccountServiceClient::new(self.channel().await)
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http_addr)
    }

    /// `/metrics` on the metrics listener (the public sidecar does not serve it).
    pub fn metrics_url(&self) -> String {
        format!("http://{}/metrics", self.metrics_addr)
    }

    pub fn grpc_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.grpc_addr)
    }

    pub async fn add_cards(&self, user: &str, n: usize) {
        for _ in 0..n {
            let id = uuid::Uuid::new_v4().to_string();
            exec!(
                &self.pool,
                "INSERT INTO cards (id, user_id) VALUES ($1, $2)",
                id,
                user
            );
        }
    }

    /// Adds `n` contacts `contact{i}@example.com` ("Contact {i}"), 100 rows per statement.
    pub async fn add_contacts(&self, user: &str, n: usize) {
        self.add_contacts_named(user, "contact", n).await;
    }

    /// Adds `n` contacts `{prefix}{i}@example.com`.
    pub async fn add_contacts_named(&self, user: &str, prefix: &str, n: usize) {
        for start in (0..n).step_by(100) {
            let end = (start + 100).min(n);
            let rows: Vec<String> = (start..end)
                .map(|i| {
                    format!(
                        "('{}', '{user}', '{prefix}{i}@example.com', 'Contact', '{i}', 'Acme', '+1555{i:04}', 'Buyer')",
                        uuid::Uuid::new_v4()
                    )
                })
                .collect();
            let sql = format!(
                "INSERT INTO contacts (id, user_id, email, first_name, last_name, company, phone, job_title) VALUES {}",
                rows.join(", ")
            );
            let sql = sqlx::AssertSqlSafe(sql);
            match &self.pool {
                TestPool::Sqlite(pool) => sqlx::query(sql).execute(pool).await.map(drop),
                TestPool::Postgres(pool) => sqlx::query(sql).execute(pool).await.map(drop),
            }
            .unwrap_or_else(|e| panic!("seeding contacts: {e}"));
        }
    }

    /// Every stored credential envelope.
    pub async fn sealed_credentials(&self) -> Vec<Vec<u8>> {
        let sql = "SELECT credentials FROM integrations";
        match &self.pool {
            TestPool::Sqlite(pool) => sqlx::query_scalar(sql).fetch_all(pool).await,
            TestPool::Postgres(pool) => sqlx::query_scalar(sql).fetch_all(pool).await,
        }
        .unwrap_or_else(|e| panic!("query: {e}"))
    }

    /// Stores a subscription row as the Stripe webhooks will.
    pub async fn set_subscription(&self, sub: SeedSubscription<'_>) {
        seed_subscription(&self.pool, sub).await;
    }
}

/// A subscription row to seed.
pub struct SeedSubscription<'a> {
    pub user: &'a str,
    pub tier: &'a str,
    pub status: &'a str,
    pub period_end: DateTime<Utc>,
    pub cancel_at_period_end: bool,
}

pub async fn seed_subscription(pool: &TestPool, sub: SeedSubscription<'_>) {
    exec!(
        pool,
        "INSERT INTO subscriptions (user_id, tier, status, provider, provider_customer_id, \
            provider_subscription_id, current_period_start, current_period_end, cancel_at_period_end) \
         VALUES ($1, $2, $3, 'stripe', 'cus_test', $4, $5, $6, $7)",
        sub.user,
        sub.tier,
        sub.status,
        format!("sub_{}", sub.user),
        sub.period_end - chrono::Duration::days(30),
        sub.period_end,
        sub.cancel_at_period_end,
    );
}

/// Stores an integration row (credentials are an opaque blob here).
pub async fn seed_integration(
    pool: &TestPool,
    user: &str,
    provider: &str,
    settings: &str,
) -> String {
    let id = uuid::Uuid::new_v4().to_string();
    exec!(
        pool,
        pg: "INSERT INTO integrations (id, user_id, provider, status, credentials, settings) \
             VALUES ($1::uuid, $2, $3, 'active', $4, $5::jsonb)",
        sqlite: "INSERT INTO integrations (id, user_id, provider, status, credentials, settings) \
             VALUES ($1, $2, $3, 'active', $4, $5)",
        id.clone(),
        user,
        provider,
        vec![1u8, 2, 3],
        settings,
    );
    id
}

/// An HS256 token for `user` signed with the test secret.
pub fn token(user: &str) -> String {
    sign(&claims(user, &[], 3600), JWT_SECRET)
}

/// A token with the `service` role.
pub fn service_token(user: &str) -> String {
    sign(&claims(user, &[SERVICE_ROLE], 3600), JWT_SECRET)
}

pub fn claims(user: &str, roles: &[&str], ttl_secs: i64) -> Claims {
    let now = Utc::now().timestamp();
    Claims {
        sub: user.to_string(),
        email: Some(format!("{user}@example.com")),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        exp: u64::try_from(now + ttl_secs).unwrap_or(0),
        iat: u64::try_from(now).ok(),
        iss: None,
        aud: None,
    }
}

pub fn sign(claims: &Claims, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap_or_else(|e| panic!("sign: {e}"))
}

/// A request carrying `authorization: Bearer <token>`.
pub fn authed<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}")
            .parse()
            .unwrap_or_else(|e| panic!("{e}")),
    );
    request
}

impl TestApp {
    /// Starts the server with Stripe pointed at a fresh fake.
    pub async fn spawn_with_stripe(backend: Backend) -> (Self, FakeStripe) {
        Self::spawn_with_stripe_and(backend, &[]).await
    }

    /// Like [`TestApp::spawn_with_stripe`], with more settings.
    pub async fn spawn_with_stripe_and(
        backend: Backend,
        extra: &[(&str, &str)],
    ) -> (Self, FakeStripe) {
        let stripe = FakeStripe::start().await;
        let settings = stripe.settings();
        let mut overrides: Vec<(&str, &str)> =
            settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
        overrides.extend_from_slice(extra);
        (Self::spawn_with(backend, &overrides).await, stripe)
    }

    /// POSTs a webhook delivery; returns the status and body text.
    pub async fn deliver(&self, body: &str, signature: Option<&str>) -> (u16, String) {
        let mut request = reqwest::Client::new()
            .post(self.http_url("/billing/webhook"))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(signature) = signature {
            request = request.header("stripe-signature", signature);
        }
        let response = request.send().await.unwrap_or_else(|e| panic!("{e}"));
        let status = response.status().as_u16();
        (status, response.text().await.unwrap_or_default())
    }

    /// Delivers `body` signed now with the test secret, expecting 200, and waits until the
    /// event processor has applied every stored event.
    pub async fn deliver_signed(&self, body: &str) {
        let (status, text) = self.deliver(body, Some(&sign_now(body))).await;
        assert_eq!(status, 200, "delivery refused: {text}");
        self.settle().await;
    }

    /// Waits until no stored webhook event is pending.
    pub async fn settle(&self) {
        eventually("every webhook event applied or failed", || async {
            self.count("webhook_inbox", "state = 'pending'").await == 0
        })
        .await;
    }

    /// The database URL (for running the binary against this server's database).
    pub fn database_url(&self) -> &str {
        &self.db.url
    }

    /// `SELECT COUNT(*) FROM <table> [WHERE <condition>]`.
    pub async fn count(&self, table: &str, condition: &str) -> i64 {
        let sql = if condition.is_empty() {
            format!("SELECT COUNT(*) FROM {table}")
        } else {
            format!("SELECT COUNT(*) FROM {table} WHERE {condition}")
        };
        let sql = sqlx::AssertSqlSafe(sql);
        match &self.pool {
            TestPool::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(pool).await,
            TestPool::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await,
        }
        .unwrap_or_else(|e| panic!("count {table}: {e}"))
    }

    /// The kinds in the user's activity log, oldest first.
    pub async fn activity_kinds(&self, user: &str) -> Vec<String> {
        let sql = "SELECT kind FROM activity_logs WHERE user_id = $1 ORDER BY id";
        match &self.pool {
            TestPool::Sqlite(pool) => sqlx::query_scalar(sql).bind(user).fetch_all(pool).await,
            TestPool::Postgres(pool) => sqlx::query_scalar(sql).bind(user).fetch_all(pool).await,
        }
        .unwrap_or_else(|e| panic!("activity: {e}"))
    }
}
