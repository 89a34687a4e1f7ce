//! Integrations use cases: the provider catalogue with availability (here), connecting and
//! changing settings (`connections`), browser-bound OAuth (`oauth_flow`, with the OAuth client
//! in `oauth` and token refreshes in `tokens`), sync jobs as the user sees them (`jobs`), and
//! the background work: the sync worker (`sync_worker` with `sync_push`, `sync_import`,
//! `sync_session`, `sync_attempt`, `sync_outcome`), the scheduler and retention (`scheduler`), and revoking
//! every grant of a user whose data is erased (`account_closure`). Credentials
//! never leave this module except sealed.

#[macro_use]
mod provider_call;
mod account_closure;
mod bookkeeping;
mod connections;
mod health;
pub mod job_watch;
pub mod jobs;
mod notify;
pub mod oauth;
mod oauth_error;
pub mod oauth_flow;
pub mod scheduler;
mod sync_attempt;
mod sync_context;
mod sync_file;
mod sync_import;
mod sync_outcome;
mod sync_push;
mod sync_session;
pub mod sync_worker;
pub mod tokens;
pub mod webhook_apply;
mod webhook_events;
mod webhook_feeds;
pub mod webhook_intake;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use oauth::OAuth;
pub use oauth_flow::{BrowserBinding, FlowCaller, OAuthOutcome, ProviderAnswer};
use url::Url;

use crate::{
    billing::RedirectGuard,
    domain::{
        UserId,
        activity::Activity,
        catalogue::{AuthKind, CATALOGUE, ProviderId, ProviderSpec, RateLimit},
        credentials::Credentials,
        integration::Integration,
        sync_job::Direction,
    },
    providers::{ProviderError, Providers},
    store::{Store, StoreError},
    vault::Vault,
};

/// How long a started OAuth flow may take.
pub const OAUTH_STATE_TTL: Duration = Duration::from_secs(10 * 60);

/// Shortest and longest `syncInterval` accepted, in seconds.
const MIN_SYNC_INTERVAL: i64 = 60;
const MAX_SYNC_INTERVAL: i64 = 31 * 24 * 3600;

pub struct Integrations {
    store: Arc<dyn Store>,
    vault: Arc<Vault>,
    providers: Arc<Providers>,
    oauth: Arc<OAuth>,
    redirect_allowed: RedirectGuard,
    max_attempts: u32,
    /// The sidecar's route that binds an OAuth flow to the browser (next to the callback).
    oauth_start_url: Url,
    /// Zoho accounts servers a callback's `accounts-server` may name (ZOHO_ACCOUNTS_SERVERS).
    zoho_accounts_servers: Vec<Url>,
    watch_limits: Arc<job_watch::WatchLimits>,
    watch_fallback: std::time::Duration,
    real_time: crate::config::RealTimeConfig,
    /// Woken when a provider webhook is stored, so the webhook worker applies it at once.
    webhook_arrivals: Arc<tokio::sync::Notify>,
}

/// What `Integrations` is set up with, beside its collaborators.
pub struct IntegrationsSettings {
    pub redirect_allowed: RedirectGuard,
    pub max_attempts: u32,
    pub oauth_start_url: Url,
    pub zoho_accounts_servers: Vec<Url>,
    pub max_watch_streams_per_user: usize,
    /// How often a watch stream looks at its job without a change notice.
    pub watch_fallback: std::time::Duration,
    pub real_time: crate::config::RealTimeConfig,
    pub webhook_arrivals: Arc<tokio::sync::Notify>,
}

/// A catalogue entry and whether the service can offer it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogueEntry {
    pub spec: &'static ProviderSpec,
    /// The budget the service keeps under (the catalogue's, or RATE_LIMITS).
    pub rate_limit: RateLimit,
    /// `None` when available; otherwise why not.
    pub unavailable_reason: Option<String>,
}

/// Why an integrations request failed; each variant is one gRPC status.
#[derive(Debug, thiserror::Error)]
pub enum IntegrationError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl IntegrationError {
    /// A short code for the browser redirect of an OAuth flow.
    pub fn code(&self) -> &'static str {
        match self {
            IntegrationError::InvalidArgument(_) => "invalid_request",
            IntegrationError::NotFound(_) => "invalid_state",
            IntegrationError::PermissionDenied(_) => "access_denied",
            IntegrationError::FailedPrecondition(_) => "expired",
            IntegrationError::Unavailable(_)
            | IntegrationError::ResourceExhausted(_)
            | IntegrationError::Store(_) => "temporarily_unavailable",
        }
    }
}

impl Integrations {
    pub fn new(
        store: Arc<dyn Store>,
        vault: Arc<Vault>,
        providers: Arc<Providers>,
        oauth: Arc<OAuth>,
        settings: IntegrationsSettings,
    ) -> Self {
        Self {
            store,
            vault,
            providers,
            oauth,
            redirect_allowed: settings.redirect_allowed,
            max_attempts: settings.max_attempts,
            oauth_start_url: settings.oauth_start_url,
            zoho_accounts_servers: settings.zoho_accounts_servers,
            watch_limits: job_watch::WatchLimits::new(settings.max_watch_streams_per_user),
            watch_fallback: settings.watch_fallback,
            real_time: settings.real_time,
            webhook_arrivals: settings.webhook_arrivals,
        }
    }

    /// Every provider, in display order, with its availability.
    pub fn catalogue(&self) -> Vec<CatalogueEntry> {
        CATALOGUE
            .iter()
            .map(|spec| CatalogueEntry {
                spec,
                rate_limit: self.providers.limits().limit(spec.id),
                unavailable_reason: match spec.auth {
                    AuthKind::ApiKey | AuthKind::WebhookUrl => None,
                    AuthKind::OAuth2 if self.oauth.is_configured(spec.id) => None,
                    AuthKind::OAuth2 => Some(format!(
                        "{} is not configured on this server (its OAuth client id and secret are not set)",
                        spec.name
                    )),
                },
            })
            .collect()
    }

    /// The user's integrations, never with credentials.
    pub async fn list(&self, user: &UserId) -> Result<Vec<Integration>, StoreError> {
        self.store.integrations(user).await
    }

    /// Activity entries are best effort: the change they describe is already stored, so a
    /// failure to write one is logged, never turned into an error for a request that worked.
    async fn activity(&self, user: &UserId, activity: Activity) {
        if let Err(e) = self.store.append_activity(user, &activity).await {
            tracing::warn!(error = %crate::telemetry::error_chain(&e), kind = activity.kind, "cannot write an activity entry");
        }
    }
}

/// A name for this process's lease and lock holders: its pid and a random part (two
/// processes, or two starts of one, never share it).
fn instance_name() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

fn not_connected(provider: ProviderId) -> IntegrationError {
    IntegrationError::NotFound(format!("{provider} is not connected"))
}

/// Every required field present and not blank, no unknown field.
fn validate_credentials(
    spec: &ProviderSpec,
    credentials: BTreeMap<String, String>,
) -> Result<Credentials, IntegrationError> {
    for key in credentials.keys() {
        if !spec.credential_fields.iter().any(|f| f.key == key) {
            return Err(IntegrationError::InvalidArgument(format!(
                "credentials.{key}: {} has no such credential field (expected {})",
                spec.name,
                field_list(spec.credential_fields.iter().map(|f| f.key))
            )));
        }
    }
    let credentials = Credentials::new(credentials);
    for field in spec.credential_fields.iter().filter(|f| f.required) {
        if credentials.get(field.key).is_none() {
            return Err(IntegrationError::InvalidArgument(format!(
                "credentials.{}: {} is required",
                field.key, field.label
            )));
        }
    }
    Ok(credentials)
}

fn validate_settings(
    spec: &ProviderSpec,
    settings: BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, IntegrationError> {
    let mut clean = BTreeMap::new();
    for (key, value) in settings {
        if !spec.setting_fields.iter().any(|f| f.key == key) {
            return Err(IntegrationError::InvalidArgument(format!(
                "settings.{key}: {} has no such setting (expected {})",
                spec.name,
                field_list(spec.setting_fields.iter().map(|f| f.key))
            )));
        }
        let value = value.trim().to_string();
        if !value.is_empty() {
            clean.insert(key, value);
        }
    }
    for field in spec.setting_fields.iter().filter(|f| f.required) {
        if !clean.contains_key(field.key) {
            return Err(IntegrationError::InvalidArgument(format!(
                "settings.{}: {} is required",
                field.key, field.label
            )));
        }
    }
    if let Some(direction) = clean.get("syncDirection") {
        match direction.to_ascii_lowercase().parse::<Direction>() {
            Ok(Direction::Push) => {}
            Ok(_) if spec.can_import() => {}
            _ => {
                return Err(IntegrationError::InvalidArgument(format!(
                    "settings.syncDirection: must be {}",
                    if spec.can_import() {
                        "push, import or both"
                    } else {
                        "push (contacts cannot be imported from this provider)"
                    }
                )));
            }
        }
    }
    if let Some(interval) = clean.get("syncInterval") {
        match interval.parse::<i64>() {
            Ok(secs) if (MIN_SYNC_INTERVAL..=MAX_SYNC_INTERVAL).contains(&secs) => {}
            _ => {
                return Err(IntegrationError::InvalidArgument(format!(
                    "settings.syncInterval: must be a whole number of seconds from {MIN_SYNC_INTERVAL} to {MAX_SYNC_INTERVAL}"
                )));
            }
        }
    }
    Ok(clean)
}

fn field_list<'a>(keys: impl Iterator<Item = &'a str>) -> String {
    let keys: Vec<&str> = keys.collect();
    if keys.is_empty() {
        "none".into()
    } else {
        keys.join(", ")
    }
}

/// What a failed credential check means for the caller of ConnectIntegration.
fn connect_error(error: ProviderError) -> IntegrationError {
    match error {
        ProviderError::InvalidInput { field, reason } => {
            let prefix = if field == "listId" || field == "listIds" {
                "settings"
            } else {
                "credentials"
            };
            IntegrationError::InvalidArgument(format!("{prefix}.{field}: {reason}"))
        }
        ProviderError::Unauthorized(reason)
        | ProviderError::Rejected(reason)
        | ProviderError::FileGone(reason)
        | ProviderError::BatchRefused(reason) => IntegrationError::InvalidArgument(reason),
        ProviderError::UploadLost(reason) => IntegrationError::Unavailable(reason),
        ProviderError::RateLimited { .. } => IntegrationError::Unavailable(
            "the provider is rate limiting this account; try again shortly".into(),
        ),
        ProviderError::Unavailable(reason) => IntegrationError::Unavailable(reason),
    }
}
