//! Configuration: every setting is listed once, in [`Settings`], with its environment variable.
//! [`Config::from_settings`] validates them (naming the setting and what is wrong), applies the
//! development fallbacks, and wraps secrets so `Debug` and logs show them redacted.

use std::{collections::BTreeMap, fmt, net::SocketAddr, path::PathBuf, time::Duration};

use secrecy::{ExposeSecret, SecretBox, SecretString};
use url::Url;

use crate::{
    connection_limits::ConnectionLimits,
    domain::catalogue::{ProviderId, RateLimit},
};

mod billing_terms;
mod origins;
mod parse;
mod payments;
mod real_time;
mod settings;

pub use billing_terms::{
    BillingTermsSettings, DunningConfig, SandboxMode, SellingConfig, parse_schedule,
};
use origins::DEV_ORIGINS;
pub use origins::{is_allowed_redirect, parse_origins};
pub use parse::parse_rate_limits;
use parse::{dev_encryption_key, non_empty, parse_key, random_hex};
pub use payments::{
    MpesaConfig, PaymentSettings, PaypalConfig, SANDBOX_PRICES, StripeConfig, sandbox_stripe,
};
pub use real_time::{RealTimeConfig, RealTimeSettings};
pub use settings::*;

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

/// Validated settings of the webhook event processor and the reconciler.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub workers: usize,
    pub poll_interval: Duration,
    pub max_attempts: u32,
    pub retry_max_delay: Duration,
    /// How long a worker holds a customer's events (renewed while it works).
    pub lease: Duration,
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
    pub metrics_addr: SocketAddr,
    /// Normalised origins (`scheme://host[:port]`), as configured; see [`Config::browser_origins`].
    pub allowed_origins: Vec<String>,
    /// DASHBOARD_GRPC_URL.
    pub dashboard_grpc_url: Option<Url>,
    pub log_format: LogFormat,
    pub log_level: String,
    pub jwt: JwtConfig,
    pub stripe: Option<StripeConfig>,
    pub paypal: Option<PaypalConfig>,
    pub mpesa: Option<MpesaConfig>,
    pub webhook_max_body_bytes: usize,
    /// Connection bounds of the gRPC port (no idle timeout: HTTP/2 pings find dead peers).
    pub grpc_connections: ConnectionLimits,
    /// Connection bounds of the sidecar's HTTP port.
    pub http_connections: ConnectionLimits,
    /// How long PAST_DUE keeps the paid tier.
    pub past_due_grace: Duration,
    pub encryption_key: EncryptionKey,
    /// Keys that still open credentials sealed before a rotation.
    pub previous_encryption_keys: Vec<EncryptionKey>,
    /// True when the key was generated in DATA_DIR (development only).
    pub encryption_key_generated: bool,
    pub sync: SyncConfig,
    pub webhooks: WebhookConfig,
    pub duplicate_policy: crate::domain::subscription::DuplicatePolicy,
    pub endpoints: Endpoints,
    pub oauth: OAuthConfig,
    /// Trials, promotion codes and the price cache.
    pub selling: SellingConfig,
    /// Payments go to the development sandbox (`payments::sandbox`); `stripe` holds its keys.
    pub sandbox: bool,
    pub dunning: DunningConfig,
    pub real_time: RealTimeConfig,
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
    pub watch_fallback_interval: Duration,
    /// Bytes per chunk of a resumable file upload (Google Drive, Dropbox).
    pub upload_chunk: usize,
}

impl Config {
    /// Validates the settings and applies the development fallbacks (which may create DATA_DIR,
    /// the SQLite file's directory and the development encryption key file).
    pub fn from_settings(s: Settings) -> Result<Config, ConfigError> {
        let mut problems = Vec::new();
        let mut payment_problems = Vec::new();
        let stripe = payments::stripe(&s, &mut payment_problems);
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

        let paypal = payments::paypal(&s.payments, &mut payment_problems);
        let mpesa = payments::mpesa(&s.payments, production, &mut payment_problems);
        if s.max_connections == 0 {
            problem("MAX_CONNECTIONS", "must be at least 1".into());
        }
        if s.connection_hello_timeout.is_zero() || s.http_idle_timeout.is_zero() {
            problem(
                "CONNECTION_HELLO_TIMEOUT",
                "CONNECTION_HELLO_TIMEOUT and HTTP_IDLE_TIMEOUT must be longer than 0s".into(),
            );
        }
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
            watch_fallback_interval: s.watch_fallback_interval,
            upload_chunk: s.file_upload_chunk_kib.saturating_mul(1024),
        };
        if s.file_upload_chunk_kib == 0 || !s.file_upload_chunk_kib.is_multiple_of(256) {
            problem(
                "FILE_UPLOAD_CHUNK_KIB",
                "must be a positive multiple of 256 (Google Drive takes chunks in 256 KiB units)"
                    .into(),
            );
        }
        if s.sync_scheduler_interval.is_zero() {
            problem("SYNC_SCHEDULER_INTERVAL", "must be longer than 0".into());
        }
        if s.retention_days == 0 {
            problem("RETENTION_DAYS", "must be at least 1".into());
        }
        if s.max_watch_streams_per_user == 0 {
            problem("MAX_WATCH_STREAMS_PER_USER", "must be at least 1".into());
        }
        if s.watch_fallback_interval.is_zero() {
            problem("WATCH_FALLBACK_INTERVAL", "must be longer than 0".into());
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
        let real_time = real_time::real_time(&s.real_time, &s.oauth_redirect_url, &mut problems);
        let oauth = OAuthConfig {
            redirect_url: s.oauth_redirect_url,
            clients,
            start_url,
            zoho_accounts_servers,
        };

        // The sandbox: development only, and only while no real provider is configured. `auto`
        // also needs the no-configuration first run (no JWT_SECRET): a deployment that forgot
        // APP_ENV=production still has its JWT secret, and must not sell plans for nothing.
        let wanted = match s.billing_terms.payments_sandbox {
            SandboxMode::Auto => jwt.generated,
            SandboxMode::On => true,
            SandboxMode::Off => false,
        };
        let sandbox =
            wanted && !production && stripe.is_none() && paypal.is_none() && mpesa.is_none();
        let stripe = if sandbox {
            Some(sandbox_stripe())
        } else {
            stripe
        };
        let selling = billing_terms::selling(&s.billing_terms, &mut problems);
        let dunning = billing_terms::dunning(&s.billing_terms, production, &mut problems);
        problems.extend(payment_problems);
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
            metrics_addr: s.metrics_addr,
            allowed_origins,
            dashboard_grpc_url: s.dashboard_grpc_url,
            log_format: s.log_format,
            log_level: s.log_level,
            jwt,
            stripe,
            paypal,
            mpesa,
            webhook_max_body_bytes: s.webhook_max_body_bytes,
            grpc_connections: ConnectionLimits {
                max_connections: s.max_connections,
                hello_timeout: s.connection_hello_timeout,
                idle_timeout: None,
            },
            http_connections: ConnectionLimits {
                max_connections: s.max_connections,
                hello_timeout: s.connection_hello_timeout,
                idle_timeout: Some(s.http_idle_timeout),
            },
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
                lease: s.webhook_lease.max(Duration::from_secs(3)),
                reconcile_interval: (!s.reconcile_interval.is_zero())
                    .then_some(s.reconcile_interval),
            },
            endpoints: s.endpoints,
            oauth,
            selling,
            dunning,
            sandbox,
            real_time,
        })
    }
}

#[cfg(test)]
mod tests;
