//! Integrations use cases: the provider catalogue with availability, connecting (credentials
//! checked with the provider, then sealed in the vault), disconnecting, and queueing and
//! reading sync jobs. Credentials never leave this module except sealed.

use std::{collections::BTreeMap, sync::Arc};

use chrono::Utc;
use serde_json::json;

use crate::{
    domain::{
        UserId,
        activity::Activity,
        catalogue::{AuthKind, CATALOGUE, ProviderId, ProviderSpec, RateLimit},
        credentials::Credentials,
        integration::{Integration, IntegrationStatus},
        sync_job::{Direction, SyncJob},
    },
    providers::{ProviderError, Providers},
    store::{NewSyncJob, Store, StoreError},
    sync_worker::sync_interval,
    vault::Vault,
};

/// Shortest and longest `syncInterval` accepted, in seconds.
const MIN_SYNC_INTERVAL: i64 = 60;
const MAX_SYNC_INTERVAL: i64 = 31 * 24 * 3600;

pub struct Integrations {
    store: Arc<dyn Store>,
    vault: Arc<Vault>,
    providers: Arc<Providers>,
    max_attempts: u32,
}

/// A catalogue entry and whether the service can offer it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogueEntry {
    pub spec: &'static ProviderSpec,
    /// The budget the service keeps under (the catalogue's, or RATE_LIMITS).
    pub rate_limit: RateLimit,
    /// `None` when available; otherwise why not.
    pub unavailable_reason: Option<&'static str>,
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
    Unimplemented(String),
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Integrations {
    pub fn new(
        store: Arc<dyn Store>,
        vault: Arc<Vault>,
        providers: Arc<Providers>,
        max_attempts: u32,
    ) -> Self {
        Self {
            store,
            vault,
            providers,
            max_attempts,
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
                    AuthKind::OAuth2 => {
                        Some("OAuth connections are not available in this version yet")
                    }
                },
            })
            .collect()
    }

    /// The user's integrations, never with credentials.
    pub async fn list(&self, user: &UserId) -> Result<Vec<Integration>, StoreError> {
        self.store.integrations(user).await
    }

    /// Checks the credentials with the provider, then stores them sealed. Connecting again
    /// replaces credentials and settings and makes the integration ACTIVE again.
    pub async fn connect(
        &self,
        user: &UserId,
        provider: ProviderId,
        credentials: BTreeMap<String, String>,
        settings: BTreeMap<String, String>,
    ) -> Result<Integration, IntegrationError> {
        let spec = provider.spec();
        if spec.auth == AuthKind::OAuth2 {
            return Err(IntegrationError::FailedPrecondition(format!(
                "{provider} connects with OAuth (StartOAuth), which is not available in this version yet"
            )));
        }
        let credentials = validate_credentials(spec, credentials)?;
        let settings = validate_settings(spec, settings)?;
        let sink = self
            .providers
            .sink(provider, user.as_str(), &credentials, &settings)
            .map_err(connect_error)?;
        sink.verify().await.map_err(connect_error)?;

        let existed = self.store.integration(user, provider).await?.is_some();
        let sealed = self.vault.seal(&credentials);
        let integration = self
            .store
            .save_integration(user, provider, &sealed, &settings)
            .await?;
        let message = if existed {
            format!("Updated the {provider} connection")
        } else {
            format!("Connected {provider}")
        };
        self.activity(
            user,
            Activity::new(
                "integration.connected",
                message,
                json!({ "provider": provider.as_str(), "integration_id": integration.id, "reconnected": existed }),
            ),
        )
        .await;
        tracing::info!(provider = provider.as_str(), integration_id = %integration.id, reconnected = existed, "integration connected");
        if sync_interval(&integration).is_some() {
            // Recurring syncs start now; each finished sync queues the next.
            self.enqueue(user, &integration, Direction::Push).await?;
        }
        Ok(integration)
    }

    /// Deletes the credentials and the integration's jobs.
    pub async fn disconnect(
        &self,
        user: &UserId,
        provider: ProviderId,
    ) -> Result<(), IntegrationError> {
        if !self.store.delete_integration(user, provider).await? {
            return Err(not_connected(provider));
        }
        self.activity(
            user,
            Activity::new(
                "integration.disconnected",
                format!("Disconnected {provider}"),
                json!({ "provider": provider.as_str() }),
            ),
        )
        .await;
        tracing::info!(provider = provider.as_str(), "integration disconnected");
        Ok(())
    }

    /// Queues a sync, or returns the one already queued or running (a scheduled one is
    /// brought forward to now).
    pub async fn sync(
        &self,
        user: &UserId,
        provider: ProviderId,
        direction: Direction,
    ) -> Result<SyncJob, IntegrationError> {
        if direction != Direction::Push {
            return Err(IntegrationError::Unimplemented(
                "importing contacts is not available in this version yet; use PUSH".into(),
            ));
        }
        let integration = self
            .store
            .integration(user, provider)
            .await?
            .ok_or_else(|| not_connected(provider))?;
        match integration.status {
            IntegrationStatus::Active => {}
            IntegrationStatus::Error | IntegrationStatus::NeedsReauth => {
                return Err(IntegrationError::FailedPrecondition(format!(
                    "the {provider} connection needs attention ({}); connect it again first",
                    integration.last_error.as_deref().unwrap_or("no details")
                )));
            }
        }
        let (job, created) = self.enqueue(user, &integration, direction).await?;
        if created {
            return Ok(job);
        }
        let now = Utc::now();
        if job.attempts == 0 && job.next_attempt_at > now {
            self.store.expedite_sync(&job.id, now).await?;
            return Ok(self.store.sync_job(user, &job.id).await?.unwrap_or(job));
        }
        Ok(job)
    }

    async fn enqueue(
        &self,
        user: &UserId,
        integration: &Integration,
        direction: Direction,
    ) -> Result<(SyncJob, bool), StoreError> {
        let now = Utc::now();
        let (job, created) = self
            .store
            .enqueue_sync(&NewSyncJob {
                integration_id: &integration.id,
                user,
                direction,
                max_attempts: self.max_attempts,
                due: now,
                now,
            })
            .await?;
        if created {
            tracing::info!(job_id = %job.id, provider = integration.provider.as_str(), "sync queued");
        }
        Ok((job, created))
    }

    /// Activity entries are best effort: the change they describe is already stored, so a
    /// failure to write one is logged, never turned into an error for a request that worked.
    async fn activity(&self, user: &UserId, activity: Activity) {
        if let Err(e) = self.store.append_activity(user, &activity).await {
            tracing::warn!(error = %crate::telemetry::error_chain(&e), kind = activity.kind, "cannot write an activity entry");
        }
    }

    /// One of the user's jobs; another user's (or a made-up) id is NOT_FOUND.
    pub async fn job(&self, user: &UserId, id: &str) -> Result<SyncJob, IntegrationError> {
        let not_found = || IntegrationError::NotFound(format!("sync job {id:?} not found"));
        if uuid::Uuid::parse_str(id).is_err() {
            return Err(not_found());
        }
        self.store.sync_job(user, id).await?.ok_or_else(not_found)
    }
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
        | ProviderError::BatchRefused(reason) => IntegrationError::InvalidArgument(reason),
        ProviderError::RateLimited { .. } => IntegrationError::Unavailable(
            "the provider is rate limiting this account; try again shortly".into(),
        ),
        ProviderError::Unavailable(reason) => IntegrationError::Unavailable(reason),
    }
}
