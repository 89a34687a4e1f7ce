//! Every setting, once, with its environment variable and default: the clap arguments that
//! `Config::from_settings` (in `mod.rs`) validates.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, ValueEnum, builder::TypedValueParser};
use url::Url;

/// Zoho's accounts servers, one per data centre (US, EU, IN, UK, AU, JP, CA, SA, CN).
const ZOHO_ACCOUNTS_SERVERS: &str = "https://accounts.zoho.com,https://accounts.zoho.eu,\
https://accounts.zoho.in,https://accounts.zoho.uk,https://accounts.zoho.com.au,https://accounts.zoho.jp,\
https://accounts.zohocloud.ca,https://accounts.zoho.sa,https://accounts.zoho.com.cn";

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
    /// Address of the HTTP sidecar (webhooks, OAuth, health, the dashboard).
    #[arg(
        long,
        env = "HTTP_ADDR",
        default_value = "127.0.0.1:3001",
        global = true
    )]
    pub http_addr: SocketAddr,
    /// Address of the metrics listener (`/metrics`, Prometheus text). Keep it inside: the
    /// public sidecar does not serve metrics.
    #[arg(
        long,
        env = "METRICS_ADDR",
        default_value = "127.0.0.1:9464",
        global = true
    )]
    pub metrics_addr: SocketAddr,
    /// Comma-separated browser origins allowed by CORS and as redirect targets.
    /// Unset in development: http://localhost:3000 and :5173 (and their 127.0.0.1 forms). The
    /// dashboard's own origin is always allowed (see README, "The dashboard").
    #[arg(long, env = "ALLOWED_ORIGINS", global = true)]
    pub allowed_origins: Option<String>,
    /// The grpc-web URL the dashboard calls, when it is not the dashboard's own host on
    /// GRPC_ADDR's port (e.g. gRPC behind a proxy on another name).
    #[arg(long, env = "DASHBOARD_GRPC_URL", value_parser = parse_base_url, global = true)]
    pub dashboard_grpc_url: Option<Url>,
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
    /// Stripe price id of the yearly PRO plan (unset: PRO is sold monthly only).
    #[arg(long, env = "STRIPE_PRICE_ID_PRO_YEARLY", global = true)]
    pub stripe_price_id_pro_yearly: Option<String>,
    /// Stripe price id of the yearly PREMIUM plan (unset: PREMIUM is sold monthly only).
    #[arg(long, env = "STRIPE_PRICE_ID_PREMIUM_YEARLY", global = true)]
    pub stripe_price_id_premium_yearly: Option<String>,
    /// Metered Stripe price of one extra card for one month, beyond the PRO limit (unset: no
    /// overage). Its meter must take events named STRIPE_METER_EVENT_EXTRA_CARD.
    #[arg(long, env = "STRIPE_PRICE_ID_EXTRA_CARD", global = true)]
    pub stripe_price_id_extra_card: Option<String>,
    /// The `event_name` of the Stripe meter behind STRIPE_PRICE_ID_EXTRA_CARD.
    #[arg(
        long,
        env = "STRIPE_METER_EVENT_EXTRA_CARD",
        default_value = "nexus_extra_card_months",
        global = true
    )]
    pub stripe_meter_event_extra_card: String,
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
        default_value = "refund",
        value_parser = clap::builder::PossibleValuesParser::new(["refund", "flag"])
            .try_map(|s| s.parse::<crate::domain::subscription::DuplicatePolicy>()),
        global = true
    )]
    pub duplicate_subscription_policy: crate::domain::subscription::DuplicatePolicy,
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
    /// How long a worker holds a customer's events; renewed every third of it while a slow
    /// provider call runs, and taken over by another worker if its holder died.
    #[arg(long, env = "WEBHOOK_LEASE", default_value = "30s", value_parser = humantime::parse_duration, global = true)]
    pub webhook_lease: Duration,
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
    /// Most connections each port (gRPC and HTTP, counted apart) holds at once; one more is
    /// closed as it arrives.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 4096, global = true)]
    pub max_connections: usize,
    /// How long a new connection may take to send its first 24 bytes before it is closed.
    #[arg(long, env = "CONNECTION_HELLO_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    pub connection_hello_timeout: Duration,
    /// How long an HTTP (sidecar) connection may stay silent between requests.
    #[arg(long, env = "HTTP_IDLE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration, global = true)]
    pub http_idle_timeout: Duration,
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
    /// Chunk size, in KiB, of the resumable uploads that send a contacts file larger than one
    /// chunk to Google Drive or Dropbox: the most of the file held in memory at once. A multiple
    /// of 256.
    #[arg(
        long,
        env = "FILE_UPLOAD_CHUNK_KIB",
        default_value_t = 4096,
        global = true
    )]
    pub file_upload_chunk_kib: usize,
    /// How often a WatchSyncJob stream looks at its job when no change notice came (a notice
    /// lost with a dropped database connection); changes themselves wake it at once.
    #[arg(long, env = "WATCH_FALLBACK_INTERVAL", default_value = "15s", value_parser = humantime::parse_duration, global = true)]
    pub watch_fallback_interval: Duration,
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
    /// PayPal and M-Pesa (each off until its first credential is set).
    #[command(flatten)]
    pub payments: super::PaymentSettings,
    /// Trials, promotion codes, the price cache and dunning emails.
    #[command(flatten)]
    pub billing_terms: super::BillingTermsSettings,
    /// Provider webhooks in and card-app changes out.
    #[command(flatten)]
    pub real_time: super::RealTimeSettings,
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

pub(super) fn parse_base_url(raw: &str) -> Result<Url, String> {
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
