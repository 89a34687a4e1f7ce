//! Configuration: every setting is listed once, in [`Settings`], with its environment variable.
//! [`Config::from_settings`] validates them (naming the setting and what is wrong), applies the
//! development fallbacks, and wraps secrets so `Debug` and logs show them redacted.

use std::{
    collections::BTreeMap,
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::{Args, ValueEnum};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretBox, SecretString};
use url::Url;

use crate::domain::catalogue::{ProviderId, RateLimit};

/// Deployment mode. In production no development fallback applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AppEnv {
    Development,
    Production,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// JWT signature algorithm, pinned by configuration (never taken from the token).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum JwtAlgorithm {
    #[value(name = "HS256")]
    Hs256,
    #[value(name = "RS256")]
    Rs256,
    #[value(name = "ES256")]
    Es256,
}

/// Every setting of the service, read from the environment (or a `.env` file) or from flags.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// `development` (fallbacks for a first run) or `production` (every required setting must be set).
    #[arg(
        long,
        env = "APP_ENV",
        value_enum,
        default_value = "development",
        global = true
    )]
    pub app_env: AppEnv,
    /// Directory for the embedded SQLite database and the development encryption key.
    #[arg(long, env = "DATA_DIR", default_value = "data", global = true)]
    pub data_dir: PathBuf,
    /// postgres://user:pass@host/db or sqlite://path. Unset in development: SQLite in DATA_DIR.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, global = true)]
    pub database_url: Option<String>,
    /// Maximum database connections per process.
    #[arg(
        long,
        env = "DATABASE_MAX_CONNECTIONS",
        default_value_t = 10,
        global = true
    )]
    pub database_max_connections: u32,
    /// Address of the gRPC (and grpc-web) server.
    #[arg(
        long,
        env = "GRPC_ADDR",
        default_value = "127.0.0.1:50051",
        global = true
    )]
    pub grpc_addr: SocketAddr,
    /// Address of the HTTP sidecar (webhooks, health, metrics).
    #[arg(
        long,
        env = "HTTP_ADDR",
        default_value = "127.0.0.1:3001",
        global = true
    )]
    pub http_addr: SocketAddr,
    /// Comma-separated browser origins allowed by CORS and as redirect targets.
    /// Unset in development: http://localhost:3000,http://127.0.0.1:3000.
    #[arg(long, env = "ALLOWED_ORIGINS", global = true)]
    pub allowed_origins: Option<String>,
    /// `text` (human-readable) or `json` log lines.
    #[arg(
        long,
        env = "LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,
    /// Log filter, e.g. `info` or `nexus_billing=debug,info`.
    #[arg(long, env = "LOG_LEVEL", default_value = "info", global = true)]
    pub log_level: String,
    /// HS256 signing secret. Unset in development: a random secret for this process only.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true, global = true)]
    pub jwt_secret: Option<String>,
    /// Algorithm tokens must be signed with: HS256, RS256 or ES256.
    #[arg(
        long,
        env = "JWT_ALGORITHM",
        value_enum,
        default_value = "HS256",
        global = true
    )]
    pub jwt_algorithm: JwtAlgorithm,
    /// PEM public key for RS256/ES256 (the key itself).
    #[arg(long, env = "JWT_PUBLIC_KEY", hide_env_values = true, global = true)]
    pub jwt_public_key: Option<String>,
    /// PEM public key file for RS256/ES256 (instead of JWT_PUBLIC_KEY).
    #[arg(long, env = "JWT_PUBLIC_KEY_FILE", global = true)]
    pub jwt_public_key_file: Option<PathBuf>,
    /// Required `iss` claim, when set.
    #[arg(long, env = "JWT_ISSUER", global = true)]
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim, when set.
    #[arg(long, env = "JWT_AUDIENCE", global = true)]
    pub jwt_audience: Option<String>,
    /// Clock skew allowed on `exp`/`nbf`, in seconds.
    #[arg(long, env = "JWT_LEEWAY_SECS", default_value_t = 30, global = true)]
    pub jwt_leeway_secs: u64,
    /// Stripe secret key (sk_... or rk_...). Unset: payments are not configured.
    #[arg(long, env = "STRIPE_SECRET_KEY", hide_env_values = true, global = true)]
    pub stripe_secret_key: Option<String>,
    /// Stripe webhook signing secrets (whsec_...), comma-separated during rotation.
    #[arg(
        long,
        env = "STRIPE_WEBHOOK_SECRET",
        hide_env_values = true,
        global = true
    )]
    pub stripe_webhook_secret: Option<String>,
    /// Stripe price id of the PRO plan.
    #[arg(long, env = "STRIPE_PRICE_ID_PRO", global = true)]
    pub stripe_price_id_pro: Option<String>,
    /// Stripe price id of the PREMIUM plan.
    #[arg(long, env = "STRIPE_PRICE_ID_PREMIUM", global = true)]
    pub stripe_price_id_premium: Option<String>,
    /// How far a webhook signature's timestamp may be from now, in seconds (Stripe uses 300).
    #[arg(
        long,
        env = "STRIPE_WEBHOOK_TOLERANCE_SECS",
        default_value_t = 300,
        global = true
    )]
    pub stripe_webhook_tolerance_secs: u64,
    /// More Stripe price ids of the PRO plan (comma-separated): existing subscriptions on them
    /// are PRO; new checkouts use STRIPE_PRICE_ID_PRO.
    #[arg(long, env = "STRIPE_PRICE_IDS_PRO", global = true)]
    pub stripe_price_ids_pro: Option<String>,
    /// More Stripe price ids of the PREMIUM plan (comma-separated).
    #[arg(long, env = "STRIPE_PRICE_IDS_PREMIUM", global = true)]
    pub stripe_price_ids_premium: Option<String>,
    /// Requests per second this service (each replica) sends to Stripe at most, all calls
    /// together. Stripe allows 25/s in test mode and 100/s in live mode, and 25/s per endpoint.
    #[arg(
        long,
        env = "STRIPE_MAX_REQUESTS_PER_SECOND",
        default_value_t = 20,
        global = true
    )]
    pub stripe_max_requests_per_second: u32,
    /// What to do when a user ends up with a second live subscription (paid in two tabs):
    /// `refund` cancels the newer one at once and refunds it; `flag` keeps it and flags it.
    #[arg(
        long,
        env = "DUPLICATE_SUBSCRIPTION_POLICY",
        value_enum,
        default_value = "refund",
        global = true
    )]
    pub duplicate_subscription_policy: crate::billing::DuplicatePolicy,
    /// Background workers applying stored webhook events (0: this replica only takes them in).
    #[arg(long, env = "WEBHOOK_WORKERS", default_value_t = 2, global = true)]
    pub webhook_workers: usize,
    /// How often an idle webhook worker looks for stored events.
    #[arg(long, env = "WEBHOOK_POLL_INTERVAL", default_value = "200ms", value_parser = humantime::parse_duration, global = true)]
    pub webhook_poll_interval: Duration,
    /// Attempts before an event that fails permanently (object gone, unreadable) is a dead
    /// letter. Temporary failures (Stripe 429/5xx, timeouts) are retried until they pass.
    #[arg(long, env = "WEBHOOK_MAX_ATTEMPTS", default_value_t = 5, global = true)]
    pub webhook_max_attempts: u32,
    /// Longest wait between two attempts of a failing event (the wait doubles from 1 s).
    #[arg(long, env = "WEBHOOK_RETRY_MAX_DELAY", default_value = "5m", value_parser = humantime::parse_duration, global = true)]
    pub webhook_retry_max_delay: Duration,
    /// How often the reconciler brings in missed Stripe events and re-reads overdue
    /// subscriptions (`0s`: never; `nexus-billing reconcile` runs it once).
    #[arg(long, env = "RECONCILE_INTERVAL", default_value = "1h", value_parser = humantime::parse_duration, global = true)]
    pub reconcile_interval: Duration,
    /// How long a PAST_DUE subscription keeps its tier after the first failed payment
    /// (e.g. `7d`, `36h`).
    #[arg(long, env = "PAST_DUE_GRACE", default_value = "7d", value_parser = humantime::parse_duration, global = true)]
    pub past_due_grace: Duration,
    /// Largest webhook body accepted, in bytes; larger ones get 413.
    #[arg(long, env = "WEBHOOK_MAX_BODY_BYTES", default_value_t = 1024 * 1024, global = true)]
    pub webhook_max_body_bytes: usize,
    /// 64 hex characters (32 bytes) for the credential vault. Unset in development: a key
    /// generated once and kept in DATA_DIR/encryption.key.
    #[arg(long, env = "ENCRYPTION_KEY", hide_env_values = true, global = true)]
    pub encryption_key: Option<String>,
    /// Previous vault keys (64 hex characters each, comma-separated), still accepted for
    /// reading credentials until `rotate-keys` has re-sealed everything under ENCRYPTION_KEY.
    #[arg(
        long,
        env = "ENCRYPTION_KEY_PREVIOUS",
        hide_env_values = true,
        global = true
    )]
    pub encryption_key_previous: Option<String>,
    /// Sync jobs each process runs at once (0: this process only serves the API).
    #[arg(long, env = "SYNC_WORKERS", default_value_t = 2, global = true)]
    pub sync_workers: usize,
    /// How often an idle worker looks for due jobs (e.g. `1s`, `250ms`).
    #[arg(long, env = "SYNC_POLL_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration, global = true)]
    pub sync_poll_interval: Duration,
    /// How long a worker holds a job without renewing it; a crashed worker's job is picked up
    /// by another after this.
    #[arg(long, env = "SYNC_LEASE", default_value = "60s", value_parser = humantime::parse_duration, global = true)]
    pub sync_lease: Duration,
    /// Attempts a job gets before it is FAILED (waits for rate limits do not count).
    #[arg(long, env = "SYNC_MAX_ATTEMPTS", default_value_t = 8, global = true)]
    pub sync_max_attempts: u32,
    /// Tries of one provider request within an attempt before the attempt gives up.
    #[arg(long, env = "SYNC_REQUEST_RETRIES", default_value_t = 3, global = true)]
    pub sync_request_retries: u32,
    /// First retry delay (doubling, with jitter, for requests and for attempts).
    #[arg(long, env = "SYNC_RETRY_MIN_DELAY", default_value = "2s", value_parser = humantime::parse_duration, global = true)]
    pub sync_retry_min_delay: Duration,
    /// Longest retry delay between attempts.
    #[arg(long, env = "SYNC_RETRY_MAX_DELAY", default_value = "15m", value_parser = humantime::parse_duration, global = true)]
    pub sync_retry_max_delay: Duration,
    /// Rate-limit parks in a row (no batch saved in between) after which a sync job fails;
    /// each park waits longer (SYNC_RETRY_MIN_DELAY doubling to SYNC_RETRY_MAX_DELAY).
    #[arg(
        long,
        env = "SYNC_MAX_RATE_LIMITED",
        default_value_t = 10,
        global = true
    )]
    pub sync_max_rate_limited: u32,
    /// How often the scheduler queues the integrations whose `syncInterval` has elapsed.
    #[arg(long, env = "SYNC_SCHEDULER_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    pub sync_scheduler_interval: Duration,
    /// Finished sync jobs and activity entries older than this many days are deleted.
    #[arg(long, env = "RETENTION_DAYS", default_value_t = 90, global = true)]
    pub retention_days: u32,
    /// Open WatchSyncJob streams one user may hold at once (more are RESOURCE_EXHAUSTED).
    #[arg(
        long,
        env = "MAX_WATCH_STREAMS_PER_USER",
        default_value_t = 8,
        global = true
    )]
    pub max_watch_streams_per_user: usize,
    /// Request budgets replacing the catalogue's, e.g. `hubspot=190/10s,mailchimp=10/1s`.
    #[arg(long, env = "RATE_LIMITS", global = true)]
    pub rate_limits: Option<String>,
    /// Zoho accounts servers (origins, comma-separated) a Zoho callback's `accounts-server` may
    /// name; the code is exchanged and tokens refreshed there. Zoho's data centres by default.
    #[arg(long, env = "ZOHO_ACCOUNTS_SERVERS", default_value = ZOHO_ACCOUNTS_SERVERS, global = true)]
    pub zoho_accounts_servers: String,
    /// Public URL of the sidecar's OAuth callback (`GET /integrations/oauth/callback`), the
    /// redirect URI registered with every OAuth app.
    #[arg(long, env = "OAUTH_REDIRECT_URL", default_value = "http://localhost:3001/integrations/oauth/callback", value_parser = parse_base_url, global = true)]
    pub oauth_redirect_url: Url,
    /// OAuth app credentials; a provider without both is listed as unavailable.
    #[command(flatten)]
    pub oauth_clients: OAuthClients,
    /// Base URLs of outside APIs (tests and staging point them at fakes).
    #[command(flatten)]
    pub endpoints: Endpoints,
}

/// The OAuth app of each OAuth provider (client id and secret, from the provider's developer
/// console).
#[derive(Debug, Clone, Args)]
pub struct OAuthClients {
    #[arg(long, env = "SALESFORCE_CLIENT_ID", global = true)]
    pub salesforce_client_id: Option<String>,
    #[arg(
        long,
        env = "SALESFORCE_CLIENT_SECRET",
        hide_env_values = true,
        global = true
    )]
    pub salesforce_client_secret: Option<String>,
    #[arg(long, env = "ZOHO_CLIENT_ID", global = true)]
    pub zoho_client_id: Option<String>,
    #[arg(
        long,
        env = "ZOHO_CLIENT_SECRET",
        hide_env_values = true,
        global = true
    )]
    pub zoho_client_secret: Option<String>,
    #[arg(long, env = "GOOGLE_CLIENT_ID", global = true)]
    pub google_client_id: Option<String>,
    #[arg(
        long,
        env = "GOOGLE_CLIENT_SECRET",
        hide_env_values = true,
        global = true
    )]
    pub google_client_secret: Option<String>,
    #[arg(long, env = "DROPBOX_CLIENT_ID", global = true)]
    pub dropbox_client_id: Option<String>,
    #[arg(
        long,
        env = "DROPBOX_CLIENT_SECRET",
        hide_env_values = true,
        global = true
    )]
    pub dropbox_client_secret: Option<String>,
}

/// Base URLs of every outside API, each defaulting to the real service.
#[derive(Debug, Clone, Args)]
pub struct Endpoints {
    #[arg(long, env = "STRIPE_API_BASE", default_value = "https://api.stripe.com", value_parser = parse_base_url, global = true)]
    pub stripe_api_base: Url,
    #[arg(long, env = "HUBSPOT_API_BASE", default_value = "https://api.hubapi.com", value_parser = parse_base_url, global = true)]
    pub hubspot_api_base: Url,
    #[arg(long, env = "HUBSPOT_AUTHORIZE_URL", default_value = "https://app.hubspot.com/oauth/authorize", value_parser = parse_base_url, global = true)]
    pub hubspot_authorize_url: Url,
    #[arg(long, env = "HUBSPOT_TOKEN_URL", default_value = "https://api.hubapi.com/oauth/v1/token", value_parser = parse_base_url, global = true)]
    pub hubspot_token_url: Url,
    /// `{dc}` is replaced by the data centre from the API key (e.g. us6).
    #[arg(long, env = "MAILCHIMP_API_BASE", default_value = "https://{dc}.api.mailchimp.com", value_parser = parse_templated_base_url, global = true)]
    pub mailchimp_api_base: String,
    #[arg(long, env = "MAILCHIMP_AUTHORIZE_URL", default_value = "https://login.mailchimp.com/oauth2/authorize", value_parser = parse_base_url, global = true)]
    pub mailchimp_authorize_url: Url,
    #[arg(long, env = "MAILCHIMP_TOKEN_URL", default_value = "https://login.mailchimp.com/oauth2/token", value_parser = parse_base_url, global = true)]
    pub mailchimp_token_url: Url,
    #[arg(long, env = "SENDGRID_API_BASE", default_value = "https://api.sendgrid.com", value_parser = parse_base_url, global = true)]
    pub sendgrid_api_base: Url,
    /// Zapier hook URLs given by users must start with this.
    #[arg(long, env = "ZAPIER_HOOK_BASE", default_value = "https://hooks.zapier.com/hooks/catch/", value_parser = parse_base_url, global = true)]
    pub zapier_hook_base: Url,
    #[arg(long, env = "SALESFORCE_AUTHORIZE_URL", default_value = "https://login.salesforce.com/services/oauth2/authorize", value_parser = parse_base_url, global = true)]
    pub salesforce_authorize_url: Url,
    #[arg(long, env = "SALESFORCE_TOKEN_URL", default_value = "https://login.salesforce.com/services/oauth2/token", value_parser = parse_base_url, global = true)]
    pub salesforce_token_url: Url,
    /// Unset: the `instance_url` from the token response.
    #[arg(long, env = "SALESFORCE_API_BASE", value_parser = parse_base_url, global = true)]
    pub salesforce_api_base: Option<Url>,
    #[arg(long, env = "ZOHO_AUTHORIZE_URL", default_value = "https://accounts.zoho.com/oauth/v2/auth", value_parser = parse_base_url, global = true)]
    pub zoho_authorize_url: Url,
    #[arg(long, env = "ZOHO_TOKEN_URL", default_value = "https://accounts.zoho.com/oauth/v2/token", value_parser = parse_base_url, global = true)]
    pub zoho_token_url: Url,
    /// Unset: the `api_domain` from the token response.
    #[arg(long, env = "ZOHO_API_BASE", value_parser = parse_base_url, global = true)]
    pub zoho_api_base: Option<Url>,
    #[arg(long, env = "GOOGLE_AUTHORIZE_URL", default_value = "https://accounts.google.com/o/oauth2/v2/auth", value_parser = parse_base_url, global = true)]
    pub google_authorize_url: Url,
    #[arg(long, env = "GOOGLE_TOKEN_URL", default_value = "https://oauth2.googleapis.com/token", value_parser = parse_base_url, global = true)]
    pub google_token_url: Url,
    #[arg(long, env = "GOOGLE_API_BASE", default_value = "https://www.googleapis.com", value_parser = parse_base_url, global = true)]
    pub google_api_base: Url,
    #[arg(long, env = "GOOGLE_UPLOAD_BASE", default_value = "https://www.googleapis.com", value_parser = parse_base_url, global = true)]
    pub google_upload_base: Url,
    #[arg(long, env = "DROPBOX_AUTHORIZE_URL", default_value = "https://www.dropbox.com/oauth2/authorize", value_parser = parse_base_url, global = true)]
    pub dropbox_authorize_url: Url,
    #[arg(long, env = "DROPBOX_TOKEN_URL", default_value = "https://api.dropboxapi.com/oauth2/token", value_parser = parse_base_url, global = true)]
    pub dropbox_token_url: Url,
    #[arg(long, env = "DROPBOX_API_BASE", default_value = "https://api.dropboxapi.com", value_parser = parse_base_url, global = true)]
    pub dropbox_api_base: Url,
    #[arg(long, env = "DROPBOX_CONTENT_BASE", default_value = "https://content.dropboxapi.com", value_parser = parse_base_url, global = true)]
    pub dropbox_content_base: Url,
    #[arg(long, env = "PAYPAL_API_BASE", default_value = "https://api-m.paypal.com", value_parser = parse_base_url, global = true)]
    pub paypal_api_base: Url,
    #[arg(long, env = "MPESA_API_BASE", default_value = "https://api.safaricom.co.ke", value_parser = parse_base_url, global = true)]
    pub mpesa_api_base: Url,
}

fn parse_base_url(raw: &str) -> Result<Url, String> {
    let url = Url::parse(raw).map_err(|e| format!("not an absolute URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err("must be an http:// or https:// URL with a host".into());
    }
    Ok(url)
}

fn parse_templated_base_url(raw: &str) -> Result<String, String> {
    parse_base_url(&raw.replace("{dc}", "us1"))?;
    Ok(raw.to_string())
}

/// One invalid setting: which, and what is wrong (never its value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub setting: &'static str,
    pub problem: String,
}

/// Every invalid setting found, reported together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub Vec<ConfigProblem>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration:")?;
        for p in &self.0 {
            writeln!(f, "  {}: {}", p.setting, p.problem)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// How tokens are verified.
pub enum JwtKey {
    /// HS256 shared secret.
    Hmac(SecretString),
    /// RS256/ES256 PEM public key.
    PublicPem(String),
}

impl fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwtKey::Hmac(_) => f.write_str("Hmac([REDACTED])"),
            JwtKey::PublicPem(_) => f.write_str("PublicPem(..)"),
        }
    }
}

/// Validated JWT settings.
#[derive(Debug)]
pub struct JwtConfig {
    pub algorithm: JwtAlgorithm,
    pub key: JwtKey,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub leeway: Duration,
    /// True when the secret was generated for this process (development only).
    pub generated: bool,
}

/// Validated Stripe settings; present only when `STRIPE_SECRET_KEY` is set.
#[derive(Debug)]
pub struct StripeConfig {
    pub secret_key: SecretString,
    pub webhook_secrets: Vec<SecretString>,
    /// How far a signature's timestamp may be from now.
    pub webhook_tolerance: Duration,
    /// The price new PRO checkouts use, then any others that are PRO too.
    pub prices_pro: Vec<String>,
    /// The price new PREMIUM checkouts use, then any others that are PREMIUM too.
    pub prices_premium: Vec<String>,
    pub max_requests_per_second: u32,
}

/// Validated settings of the webhook event processor and the reconciler.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub workers: usize,
    pub poll_interval: Duration,
    pub max_attempts: u32,
    pub retry_max_delay: Duration,
    /// `None`: the reconciler runs only on demand.
    pub reconcile_interval: Option<Duration>,
}

/// The 32-byte vault key.
pub struct EncryptionKey(SecretBox<[u8; 32]>);

impl EncryptionKey {
    pub fn expose(&self) -> &[u8; 32] {
        self.0.expose_secret()
    }
}

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EncryptionKey([REDACTED])")
    }
}

/// The validated configuration the service runs with.
#[derive(Debug)]
pub struct Config {
    pub app_env: AppEnv,
    pub data_dir: PathBuf,
    pub database_url: SecretString,
    pub database_max_connections: u32,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// Normalised origins (`scheme://host[:port]`).
    pub allowed_origins: Vec<String>,
    pub log_format: LogFormat,
    pub log_level: String,
    pub jwt: JwtConfig,
    pub stripe: Option<StripeConfig>,
    pub webhook_max_body_bytes: usize,
    /// How long PAST_DUE keeps the paid tier.
    pub past_due_grace: Duration,
    pub encryption_key: EncryptionKey,
    /// Keys that still open credentials sealed before a rotation.
    pub previous_encryption_keys: Vec<EncryptionKey>,
    /// True when the key was generated in DATA_DIR (development only).
    pub encryption_key_generated: bool,
    pub sync: SyncConfig,
    pub webhooks: WebhookConfig,
    pub duplicate_policy: crate::billing::DuplicatePolicy,
    pub endpoints: Endpoints,
    pub oauth: OAuthConfig,
}

/// Validated OAuth settings: the callback URL and the apps that are configured.
#[derive(Debug, Clone)]
pub struct OAuthConfig {
    pub redirect_url: Url,
    pub clients: BTreeMap<ProviderId, OAuthClient>,
    /// The sidecar's start route, beside the callback (`.../oauth/start`).
    pub start_url: Url,
    pub zoho_accounts_servers: Vec<Url>,
}

/// One provider's OAuth app.
#[derive(Debug, Clone)]
pub struct OAuthClient {
    pub client_id: String,
    pub client_secret: SecretString,
}

/// Validated sync-worker settings.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    pub workers: usize,
    pub poll_interval: Duration,
    pub lease: Duration,
    pub max_attempts: u32,
    pub request_retries: u32,
    pub retry_min_delay: Duration,
    pub retry_max_delay: Duration,
    pub rate_limits: BTreeMap<ProviderId, RateLimit>,
    pub max_rate_limited: u32,
    pub scheduler_interval: Duration,
    pub retention_days: u32,
    pub max_watch_streams_per_user: usize,
}

/// Zoho's accounts servers, one per data centre (US, EU, IN, UK, AU, JP, CA, SA, CN).
const ZOHO_ACCOUNTS_SERVERS: &str = "https://accounts.zoho.com,https://accounts.zoho.eu,\
https://accounts.zoho.in,https://accounts.zoho.uk,https://accounts.zoho.com.au,https://accounts.zoho.jp,\
https://accounts.zohocloud.ca,https://accounts.zoho.sa,https://accounts.zoho.com.cn";

const DEV_ORIGINS: &str = "http://localhost:3000,http://127.0.0.1:3000";

impl Config {
    /// Validates the settings and applies the development fallbacks (which may create DATA_DIR,
    /// the SQLite file's directory and the development encryption key file).
    pub fn from_settings(s: Settings) -> Result<Config, ConfigError> {
        let mut problems = Vec::new();
        let mut problem = |setting: &'static str, problem: String| {
            problems.push(ConfigProblem { setting, problem })
        };
        let production = s.app_env == AppEnv::Production;
        let required_in_production = "is required when APP_ENV=production".to_string();

        let database_url = match non_empty(s.database_url) {
            Some(url) => {
                if !(url.starts_with("postgres://")
                    || url.starts_with("postgresql://")
                    || url.starts_with("sqlite:"))
                {
                    problem(
                        "DATABASE_URL",
                        "must start with postgres://, postgresql:// or sqlite:".into(),
                    );
                }
                url
            }
            None if production => {
                problem("DATABASE_URL", required_in_production.clone());
                String::new()
            }
            None => format!("sqlite://{}", s.data_dir.join("nexus.db").display()),
        };
        if s.database_max_connections == 0 {
            problem("DATABASE_MAX_CONNECTIONS", "must be at least 1".into());
        }

        let allowed_origins = match non_empty(s.allowed_origins) {
            Some(list) => parse_origins(&list).unwrap_or_else(|e| {
                problem("ALLOWED_ORIGINS", e);
                Vec::new()
            }),
            None if production => {
                problem("ALLOWED_ORIGINS", required_in_production.clone());
                Vec::new()
            }
            None => parse_origins(DEV_ORIGINS).unwrap_or_default(),
        };

        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&s.log_level) {
            problem("LOG_LEVEL", format!("not a valid log filter: {e}"));
        }

        let jwt = {
            let public_key = match (non_empty(s.jwt_public_key), s.jwt_public_key_file) {
                (Some(_), Some(_)) => {
                    problem(
                        "JWT_PUBLIC_KEY",
                        "set either JWT_PUBLIC_KEY or JWT_PUBLIC_KEY_FILE, not both".into(),
                    );
                    None
                }
                (Some(pem), None) => Some(pem),
                (None, Some(path)) => match std::fs::read_to_string(&path) {
                    Ok(pem) => Some(pem),
                    Err(e) => {
                        problem(
                            "JWT_PUBLIC_KEY_FILE",
                            format!("cannot read {}: {e}", path.display()),
                        );
                        None
                    }
                },
                (None, None) => None,
            };
            let secret = non_empty(s.jwt_secret);
            let (key, generated) = match s.jwt_algorithm {
                JwtAlgorithm::Hs256 => {
                    if public_key.is_some() {
                        problem(
                            "JWT_PUBLIC_KEY",
                            "is for RS256/ES256; set JWT_ALGORITHM or remove it".into(),
                        );
                    }
                    match secret {
                        Some(secret) => {
                            if production && secret.len() < 32 {
                                problem(
                                    "JWT_SECRET",
                                    "must be at least 32 characters in production".into(),
                                );
                            }
                            (JwtKey::Hmac(secret.into()), false)
                        }
                        None if production => {
                            problem("JWT_SECRET", required_in_production.clone());
                            (JwtKey::Hmac(String::new().into()), false)
                        }
                        None => (JwtKey::Hmac(random_hex(32).into()), true),
                    }
                }
                JwtAlgorithm::Rs256 | JwtAlgorithm::Es256 => {
                    if secret.is_some() {
                        problem(
                            "JWT_SECRET",
                            "is for HS256 only; RS256/ES256 verify with JWT_PUBLIC_KEY".into(),
                        );
                    }
                    match public_key {
                        Some(pem) => (JwtKey::PublicPem(pem), false),
                        None => {
                            problem(
                                "JWT_PUBLIC_KEY",
                                "is required when JWT_ALGORITHM is RS256 or ES256".into(),
                            );
                            (JwtKey::PublicPem(String::new()), false)
                        }
                    }
                }
            };
            JwtConfig {
                algorithm: s.jwt_algorithm,
                key,
                issuer: non_empty(s.jwt_issuer),
                audience: non_empty(s.jwt_audience),
                leeway: Duration::from_secs(s.jwt_leeway_secs),
                generated,
            }
        };

        let stripe = match non_empty(s.stripe_secret_key) {
            None => None,
            Some(key) => {
                if !(key.starts_with("sk_") || key.starts_with("rk_")) {
                    problem(
                        "STRIPE_SECRET_KEY",
                        "must be a Stripe secret or restricted key (sk_... or rk_...)".into(),
                    );
                }
                let webhook_secrets: Vec<SecretString> = s
                    .stripe_webhook_secret
                    .as_deref()
                    .unwrap_or_default()
                    .split(',')
                    .map(str::trim)
                    .filter(|v| !v.is_empty())
                    .map(|v| SecretString::from(v.to_string()))
                    .collect();
                if webhook_secrets.is_empty() {
                    problem(
                        "STRIPE_WEBHOOK_SECRET",
                        "is required when STRIPE_SECRET_KEY is set".into(),
                    );
                }
                let mut price = |setting: &'static str, value: Option<String>| {
                    non_empty(value).unwrap_or_else(|| {
                        problem(setting, "is required when STRIPE_SECRET_KEY is set".into());
                        String::new()
                    })
                };
                let price_id_pro = price("STRIPE_PRICE_ID_PRO", s.stripe_price_id_pro);
                let price_id_premium = price("STRIPE_PRICE_ID_PREMIUM", s.stripe_price_id_premium);
                if s.stripe_webhook_tolerance_secs == 0 {
                    problem("STRIPE_WEBHOOK_TOLERANCE_SECS", "must be at least 1".into());
                }
                if s.stripe_max_requests_per_second == 0 {
                    problem(
                        "STRIPE_MAX_REQUESTS_PER_SECOND",
                        "must be at least 1".into(),
                    );
                }
                let list = |first: String, more: &Option<String>| {
                    let mut all = vec![first];
                    for p in more
                        .as_deref()
                        .unwrap_or_default()
                        .split(',')
                        .map(str::trim)
                    {
                        if !p.is_empty() && !all.iter().any(|q| q == p) {
                            all.push(p.to_string());
                        }
                    }
                    all
                };
                let prices_pro = list(price_id_pro, &s.stripe_price_ids_pro);
                let prices_premium = list(price_id_premium, &s.stripe_price_ids_premium);
                if prices_pro
                    .iter()
                    .any(|p| !p.is_empty() && prices_premium.contains(p))
                {
                    problem(
                        "STRIPE_PRICE_IDS_PREMIUM",
                        "a price cannot be both PRO and PREMIUM".into(),
                    );
                }
                Some(StripeConfig {
                    secret_key: key.into(),
                    webhook_secrets,
                    webhook_tolerance: Duration::from_secs(s.stripe_webhook_tolerance_secs),
                    prices_pro,
                    prices_premium,
                    max_requests_per_second: s.stripe_max_requests_per_second,
                })
            }
        };
        if s.webhook_max_body_bytes < 1024 {
            problem("WEBHOOK_MAX_BODY_BYTES", "must be at least 1024".into());
        }

        let (encryption_key, encryption_key_generated) = match non_empty(s.encryption_key) {
            Some(hex_key) => match parse_key(&hex_key) {
                Ok(key) => (key, false),
                Err(e) => {
                    problem("ENCRYPTION_KEY", e);
                    (EncryptionKey(SecretBox::new(Box::new([0; 32]))), false)
                }
            },
            None if production => {
                problem("ENCRYPTION_KEY", required_in_production.clone());
                (EncryptionKey(SecretBox::new(Box::new([0; 32]))), false)
            }
            None => match dev_encryption_key(&s.data_dir) {
                Ok(key) => (key, true),
                Err(e) => {
                    problem("DATA_DIR", e);
                    (EncryptionKey(SecretBox::new(Box::new([0; 32]))), false)
                }
            },
        };

        let mut previous_encryption_keys = Vec::new();
        for hex_key in non_empty(s.encryption_key_previous)
            .iter()
            .flat_map(|list| list.split(','))
            .map(str::trim)
            .filter(|k| !k.is_empty())
        {
            match parse_key(hex_key) {
                Ok(key) => previous_encryption_keys.push(key),
                Err(e) => problem("ENCRYPTION_KEY_PREVIOUS", e),
            }
        }

        let rate_limits = match s.rate_limits.as_deref().map(parse_rate_limits) {
            Some(Ok(limits)) => limits,
            Some(Err(e)) => {
                problem("RATE_LIMITS", e);
                BTreeMap::new()
            }
            None => BTreeMap::new(),
        };
        if s.sync_lease < Duration::from_secs(1) {
            problem("SYNC_LEASE", "must be at least 1s".into());
        }
        if s.sync_max_attempts == 0 {
            problem("SYNC_MAX_ATTEMPTS", "must be at least 1".into());
        }
        if s.sync_request_retries == 0 {
            problem("SYNC_REQUEST_RETRIES", "must be at least 1".into());
        }
        if s.sync_retry_min_delay > s.sync_retry_max_delay {
            problem(
                "SYNC_RETRY_MIN_DELAY",
                "must not be longer than SYNC_RETRY_MAX_DELAY".into(),
            );
        }
        if s.sync_poll_interval.is_zero() {
            problem("SYNC_POLL_INTERVAL", "must be longer than 0".into());
        }
        let sync = SyncConfig {
            workers: s.sync_workers,
            poll_interval: s.sync_poll_interval,
            lease: s.sync_lease,
            max_attempts: s.sync_max_attempts,
            request_retries: s.sync_request_retries,
            retry_min_delay: s.sync_retry_min_delay,
            retry_max_delay: s.sync_retry_max_delay,
            rate_limits,
            max_rate_limited: s.sync_max_rate_limited,
            scheduler_interval: s.sync_scheduler_interval,
            retention_days: s.retention_days,
            max_watch_streams_per_user: s.max_watch_streams_per_user,
        };
        if s.sync_scheduler_interval.is_zero() {
            problem("SYNC_SCHEDULER_INTERVAL", "must be longer than 0".into());
        }
        if s.retention_days == 0 {
            problem("RETENTION_DAYS", "must be at least 1".into());
        }
        if s.max_watch_streams_per_user == 0 {
            problem("MAX_WATCH_STREAMS_PER_USER", "must be at least 1".into());
        }

        let c = s.oauth_clients;
        let mut clients = BTreeMap::new();
        for (provider, id_name, secret_name, id, secret) in [
            (
                ProviderId::Salesforce,
                "SALESFORCE_CLIENT_ID",
                "SALESFORCE_CLIENT_SECRET",
                c.salesforce_client_id,
                c.salesforce_client_secret,
            ),
            (
                ProviderId::ZohoCrm,
                "ZOHO_CLIENT_ID",
                "ZOHO_CLIENT_SECRET",
                c.zoho_client_id,
                c.zoho_client_secret,
            ),
            (
                ProviderId::GoogleDrive,
                "GOOGLE_CLIENT_ID",
                "GOOGLE_CLIENT_SECRET",
                c.google_client_id,
                c.google_client_secret,
            ),
            (
                ProviderId::Dropbox,
                "DROPBOX_CLIENT_ID",
                "DROPBOX_CLIENT_SECRET",
                c.dropbox_client_id,
                c.dropbox_client_secret,
            ),
        ] {
            match (non_empty(id), non_empty(secret)) {
                (Some(client_id), Some(secret)) => {
                    clients.insert(
                        provider,
                        OAuthClient {
                            client_id,
                            client_secret: secret.into(),
                        },
                    );
                }
                (Some(_), None) => {
                    problem(secret_name, format!("is required when {id_name} is set"))
                }
                (None, Some(_)) => {
                    problem(id_name, format!("is required when {secret_name} is set"))
                }
                (None, None) => {}
            }
        }
        if production && !clients.is_empty() && s.oauth_redirect_url.scheme() != "https" {
            problem(
                "OAUTH_REDIRECT_URL",
                "must be https:// when APP_ENV=production".into(),
            );
        }
        let mut zoho_accounts_servers = Vec::new();
        for server in s
            .zoho_accounts_servers
            .split(',')
            .map(str::trim)
            .filter(|v| !v.is_empty())
        {
            match parse_base_url(server) {
                Ok(url) => zoho_accounts_servers.push(url),
                Err(e) => problem("ZOHO_ACCOUNTS_SERVERS", format!("{server:?}: {e}")),
            }
        }
        let start_url = s
            .oauth_redirect_url
            .join("start")
            .unwrap_or_else(|_| s.oauth_redirect_url.clone());
        let oauth = OAuthConfig {
            redirect_url: s.oauth_redirect_url,
            clients,
            start_url,
            zoho_accounts_servers,
        };

        if !problems.is_empty() {
            return Err(ConfigError(problems));
        }
        Ok(Config {
            app_env: s.app_env,
            data_dir: s.data_dir,
            database_url: database_url.into(),
            database_max_connections: s.database_max_connections,
            grpc_addr: s.grpc_addr,
            http_addr: s.http_addr,
            allowed_origins,
            log_format: s.log_format,
            log_level: s.log_level,
            jwt,
            stripe,
            webhook_max_body_bytes: s.webhook_max_body_bytes,
            past_due_grace: s.past_due_grace,
            encryption_key,
            previous_encryption_keys,
            encryption_key_generated,
            sync,
            duplicate_policy: s.duplicate_subscription_policy,
            webhooks: WebhookConfig {
                workers: s.webhook_workers,
                poll_interval: s.webhook_poll_interval,
                max_attempts: s.webhook_max_attempts.max(1),
                retry_max_delay: s.webhook_retry_max_delay.max(Duration::from_secs(1)),
                reconcile_interval: (!s.reconcile_interval.is_zero())
                    .then_some(s.reconcile_interval),
            },
            endpoints: s.endpoints,
            oauth,
        })
    }

    /// Whether `url` is absolute and on one of the allowed origins (the open-redirect guard).
    pub fn is_allowed_redirect(&self, url: &str) -> bool {
        is_allowed_redirect(&self.allowed_origins, url)
    }
}

/// Whether `url` is an absolute http(s) URL on one of `origins` (normalised origins), with no
/// user info (`https://app.example@evil.test/` is refused).
pub fn is_allowed_redirect(origins: &[String], url: &str) -> bool {
    Url::parse(url).is_ok_and(|u| {
        matches!(u.scheme(), "http" | "https")
            && u.username().is_empty()
            && u.password().is_none()
            && origins.contains(&u.origin().ascii_serialization())
    })
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.trim().is_empty())
}

/// Parses a comma-separated list of origins into their normalised `scheme://host[:port]` form.
pub fn parse_origins(list: &str) -> Result<Vec<String>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .map(|o| {
            let url = Url::parse(o).map_err(|e| format!("{o:?} is not an origin: {e}"))?;
            let bare = url.path() == "/" && url.query().is_none() && url.fragment().is_none();
            if !matches!(url.scheme(), "http" | "https") || url.host().is_none() || !bare {
                return Err(format!(
                    "{o:?} is not an origin (expected scheme://host[:port], no path)"
                ));
            }
            Ok(url.origin().ascii_serialization())
        })
        .collect()
}

/// `slug=N/Ds` pairs, comma-separated, e.g. `hubspot=190/10s,zapier=20/1s`.
pub fn parse_rate_limits(list: &str) -> Result<BTreeMap<ProviderId, RateLimit>, String> {
    let mut limits = BTreeMap::new();
    for item in list.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let bad = || format!("{item:?} is not like hubspot=190/10s");
        let (slug, budget) = item.split_once('=').ok_or_else(bad)?;
        let provider: ProviderId = slug.trim().parse().map_err(|e| format!("{e}"))?;
        let (requests, window) = budget.split_once('/').ok_or_else(bad)?;
        let requests: u32 = requests.trim().parse().map_err(|_| bad())?;
        let window = humantime::parse_duration(window.trim()).map_err(|_| bad())?;
        let per_seconds = u32::try_from(window.as_secs()).map_err(|_| bad())?;
        if requests == 0 || per_seconds == 0 || window.subsec_nanos() != 0 {
            return Err(format!(
                "{item:?}: needs at least 1 request per whole number of seconds"
            ));
        }
        limits.insert(
            provider,
            RateLimit {
                requests,
                per_seconds,
            },
        );
    }
    Ok(limits)
}

fn parse_key(hex_key: &str) -> Result<EncryptionKey, String> {
    let trimmed = hex_key.trim();
    if trimmed.len() != 64 {
        return Err(format!(
            "must be 64 hex characters (32 bytes); got {} characters",
            trimmed.len()
        ));
    }
    let mut key = Box::new([0u8; 32]);
    hex::decode_to_slice(trimmed, key.as_mut_slice())
        .map_err(|_| "must be 64 hex characters (0-9, a-f)".to_string())?;
    Ok(EncryptionKey(SecretBox::new(key)))
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

/// The development key: read from DATA_DIR/encryption.key, or generated there once (mode 0600).
fn dev_encryption_key(data_dir: &Path) -> Result<EncryptionKey, String> {
    let path = data_dir.join("encryption.key");
    match std::fs::read_to_string(&path) {
        Ok(existing) => {
            parse_key(&existing).map_err(|e| format!("{} is invalid: {e}", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(data_dir)
                .map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
            let hex_key = random_hex(32);
            write_private(&path, &hex_key)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            parse_key(&hex_key)
        }
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(contents.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_normalised_and_paths_refused() {
        assert_eq!(
            parse_origins("https://app.example.com, http://localhost:3000/"),
            Ok(vec![
                "https://app.example.com".into(),
                "http://localhost:3000".into()
            ])
        );
        assert!(parse_origins("https://app.example.com/path").is_err());
        assert!(parse_origins("app.example.com").is_err());
        assert!(parse_origins("ftp://example.com").is_err());
    }

    #[test]
    fn redirects_must_be_absolute_and_on_an_allowed_origin() {
        let settings = <crate::cli::Cli as clap::Parser>::try_parse_from([
            "nexus-billing",
            "--allowed-origins=https://app.example.com,http://localhost:3000",
            &format!("--encryption-key={}", "ab".repeat(32)),
            "--jwt-secret=test",
        ])
        .unwrap_or_else(|e| panic!("{e}"))
        .settings;
        let config = Config::from_settings(settings).unwrap_or_else(|e| panic!("{e}"));
        for ok in [
            "https://app.example.com/billing/done?x=1",
            "http://localhost:3000/",
        ] {
            assert!(config.is_allowed_redirect(ok), "{ok}");
        }
        for bad in [
            "https://evil.example.com/",
            "https://app.example.com.evil.example/",
            "http://app.example.com/",
            "https://app.example.com:8443/",
            "/relative/path",
            "//evil.example.com/",
            "javascript:alert(1)",
        ] {
            assert!(!config.is_allowed_redirect(bad), "{bad}");
        }
    }

    #[test]
    fn rate_limits_parse_per_provider_and_refuse_nonsense() {
        let limits = parse_rate_limits(" hubspot=190/10s, zapier=20/1s ").unwrap_or_default();
        assert_eq!(
            limits.get(&ProviderId::Hubspot),
            Some(&RateLimit {
                requests: 190,
                per_seconds: 10
            })
        );
        assert_eq!(limits.len(), 2);
        for bad in [
            "hubspot",
            "hubspot=0/1s",
            "hubspot=10/0s",
            "nosuch=1/1s",
            "hubspot=1/500ms",
            "hubspot=x/1s",
        ] {
            assert!(parse_rate_limits(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn encryption_key_errors_never_echo_the_value() {
        let Err(e) = parse_key("zz-secret-material") else {
            panic!("a short key must be refused");
        };
        assert!(!e.contains("secret-material"), "{e}");
        assert!(parse_key(&"ab".repeat(32)).is_ok());
        assert!(parse_key(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let key = parse_key(&"ab".repeat(32)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(format!("{key:?}"), "EncryptionKey([REDACTED])");
        let jwt = JwtKey::Hmac("super-secret-value".to_string().into());
        assert!(!format!("{jwt:?}").contains("super-secret-value"));
    }
}
