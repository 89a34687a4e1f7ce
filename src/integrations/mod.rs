//! Integrations use cases: the provider catalogue with availability, connecting (credentials
//! checked with the provider, then sealed in the vault), disconnecting, and queueing and
//! reading sync jobs. Credentials never leave this module except sealed.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use rand::RngCore;
use serde_json::json;
use sha2::{Digest, Sha256};
use url::Url;

pub mod oauth;
pub mod sync_worker;
pub mod tokens;

use oauth::{OAuth, OAuthError, TokenSet};
use sync_worker::sync_interval;

use crate::{
    billing::RedirectGuard,
    domain::{
        UserId,
        activity::Activity,
        catalogue::{AuthKind, CATALOGUE, ProviderId, ProviderSpec, RateLimit},
        credentials::Credentials,
        integration::{Integration, IntegrationStatus},
        sync_job::{Direction, SyncJob},
    },
    providers::{ProviderError, Providers},
    store::{NewSyncJob, OAuthState, Store, StoreError},
    vault::Vault,
};

/// How long a started OAuth flow may take.
pub const OAUTH_STATE_TTL: Duration = Duration::from_secs(10 * 60);
/// How long a disconnect waits for the provider to revoke the grant.
const REVOKE_TIMEOUT: Duration = Duration::from_secs(10);

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
}

/// A finished OAuth flow: where to send the browser, and how it went.
#[derive(Debug)]
pub struct OAuthOutcome {
    /// `None` when the state was unknown (replayed, made up): there is nowhere to go back to.
    pub redirect_after: Option<String>,
    pub provider: Option<ProviderId>,
    pub result: Result<Integration, IntegrationError>,
}

impl OAuthOutcome {
    /// `redirect_after` with `integration=<slug>&status=connected`, or
    /// `status=error&error=<code>`.
    pub fn redirect_url(&self) -> Option<String> {
        let mut url = Url::parse(self.redirect_after.as_deref()?).ok()?;
        {
            let mut query = url.query_pairs_mut();
            if let Some(provider) = self.provider {
                query.append_pair("integration", provider.as_str());
            }
            match &self.result {
                Ok(_) => {
                    query.append_pair("status", "connected");
                }
                Err(e) => {
                    query.append_pair("status", "error");
                    query.append_pair("error", e.code());
                }
            }
        }
        Some(url.into())
    }
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
            IntegrationError::Unavailable(_) | IntegrationError::Store(_) => {
                "temporarily_unavailable"
            }
        }
    }
}

impl Integrations {
    pub fn new(
        store: Arc<dyn Store>,
        vault: Arc<Vault>,
        providers: Arc<Providers>,
        oauth: Arc<OAuth>,
        redirect_allowed: RedirectGuard,
        max_attempts: u32,
    ) -> Self {
        Self {
            store,
            vault,
            providers,
            oauth,
            redirect_allowed,
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
                "{provider} connects with OAuth: call StartOAuth and send the user to the URL it returns"
            )));
        }
        let credentials = validate_credentials(spec, credentials)?;
        let settings = validate_settings(spec, settings)?;
        let sink = self
            .providers
            .sink(provider, user.as_str(), &credentials, &settings)
            .map_err(connect_error)?;
        sink.verify().await.map_err(connect_error)?;

        self.save(user, provider, &credentials, &settings).await
    }

    /// Stores checked credentials sealed, logs the connection and starts recurring syncs.
    async fn save(
        &self,
        user: &UserId,
        provider: ProviderId,
        credentials: &Credentials,
        settings: &BTreeMap<String, String>,
    ) -> Result<Integration, IntegrationError> {
        let existed = self.store.integration(user, provider).await?.is_some();
        let sealed = self.vault.seal(credentials);
        let integration = self
            .store
            .save_integration(user, provider, &sealed, settings)
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

    /// Starts connecting an OAuth provider: a single-use state bound to the user and the
    /// provider (stored hashed, with the PKCE verifier sealed), and the authorization URL.
    pub async fn start_oauth(
        &self,
        user: &UserId,
        provider: ProviderId,
        redirect_after: &str,
        settings: BTreeMap<String, String>,
    ) -> Result<(Url, DateTime<Utc>), IntegrationError> {
        let spec = provider.spec();
        if spec.auth != AuthKind::OAuth2 {
            return Err(IntegrationError::InvalidArgument(format!(
                "provider: {provider} connects with credentials (ConnectIntegration), not OAuth"
            )));
        }
        if !(self.redirect_allowed)(redirect_after) {
            return Err(IntegrationError::InvalidArgument(
                "redirect_after: must be an absolute URL on an allowed origin (ALLOWED_ORIGINS)"
                    .into(),
            ));
        }
        let settings = validate_settings(spec, settings)?;
        if let Some(path) = settings.get("path") {
            crate::providers::dropbox::validate_path(path)
                .map_err(|e| IntegrationError::InvalidArgument(format!("settings.{e}")))?;
        }
        let mut random = [0u8; 32];
        rand::rng().fill_bytes(&mut random);
        let state = hex::encode(random);
        let (url, verifier) = self
            .oauth
            .authorization_url(provider, &state)
            .map_err(oauth_error)?;
        let now = Utc::now();
        let expires_at = now + chrono::Duration::from_std(OAUTH_STATE_TTL).unwrap_or_default();
        self.store
            .save_oauth_state(
                &OAuthState {
                    state_hash: state_hash(&state),
                    user: user.clone(),
                    provider,
                    sealed_verifier: verifier.map(|v| self.vault.seal_bytes(v.as_bytes())),
                    redirect_after: redirect_after.to_string(),
                    settings,
                    expires_at,
                },
                now,
            )
            .await?;
        tracing::info!(provider = provider.as_str(), "OAuth flow started");
        Ok((url, expires_at))
    }

    /// Finishes an OAuth flow: takes the state (once), then exchanges the code and stores the
    /// tokens. `user` is the caller of CompleteOAuth (the state must be theirs); the browser
    /// callback has no caller and trusts the state. `provider`, when given, must match.
    /// `denied` is the provider's `error` parameter when the user refused.
    pub async fn complete_oauth(
        &self,
        user: Option<&UserId>,
        provider: Option<ProviderId>,
        state: &str,
        code: Option<&str>,
        denied: Option<&str>,
    ) -> OAuthOutcome {
        let unknown = |provider| {
            OAuthOutcome {
            redirect_after: None,
            provider,
            result: Err(IntegrationError::NotFound(
                "this sign-in was already used, has expired or was started by someone else; start connecting again".into(),
            )),
        }
        };
        if state.is_empty() || state.len() > 128 {
            return unknown(provider);
        }
        let taken = match self.store.take_oauth_state(&state_hash(state), user).await {
            Ok(Some(taken)) => taken,
            Ok(None) => return unknown(provider),
            Err(e) => {
                return OAuthOutcome {
                    redirect_after: None,
                    provider,
                    result: Err(e.into()),
                };
            }
        };
        let result = self.finish_oauth(&taken, provider, code, denied).await;
        if let Err(e) = &result {
            tracing::warn!(provider = taken.provider.as_str(), error = %e, "OAuth flow failed");
        }
        OAuthOutcome {
            redirect_after: Some(taken.redirect_after.clone()),
            provider: Some(taken.provider),
            result,
        }
    }

    async fn finish_oauth(
        &self,
        taken: &OAuthState,
        provider: Option<ProviderId>,
        code: Option<&str>,
        denied: Option<&str>,
    ) -> Result<Integration, IntegrationError> {
        if provider.is_some_and(|p| p != taken.provider) {
            return Err(IntegrationError::InvalidArgument(format!(
                "provider: this sign-in was started for {}",
                taken.provider
            )));
        }
        if taken.expires_at < Utc::now() {
            return Err(IntegrationError::FailedPrecondition(
                "this sign-in has expired (10 minutes); start connecting again".into(),
            ));
        }
        if let Some(denied) = denied {
            return Err(IntegrationError::PermissionDenied(format!(
                "{} did not grant access ({})",
                taken.provider,
                denied.chars().take(64).collect::<String>()
            )));
        }
        let code = code
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .ok_or_else(|| {
                IntegrationError::InvalidArgument(
                    "code: the provider sent no authorization code".into(),
                )
            })?;
        let verifier = match &taken.sealed_verifier {
            Some(sealed) => Some(
                self.vault
                    .open_bytes(sealed)
                    .ok()
                    .and_then(|v| String::from_utf8(v).ok())
                    .ok_or_else(|| {
                        IntegrationError::FailedPrecondition(
                            "this sign-in cannot be finished (its key changed); start connecting again".into(),
                        )
                    })?,
            ),
            None => None,
        };
        let tokens: TokenSet = self
            .oauth
            .exchange_code(taken.provider, code, verifier)
            .await
            .map_err(oauth_error)?;
        let credentials = tokens.apply_to(&Credentials::default());
        self.save(&taken.user, taken.provider, &credentials, &taken.settings)
            .await
    }

    /// Deletes the credentials and the integration's jobs, and revokes an OAuth grant at the
    /// provider.
    pub async fn disconnect(
        &self,
        user: &UserId,
        provider: ProviderId,
    ) -> Result<(), IntegrationError> {
        let integration = self
            .store
            .integration(user, provider)
            .await?
            .ok_or_else(|| not_connected(provider))?;
        let revoke = if provider.spec().auth == AuthKind::OAuth2 {
            self.store
                .sealed_credentials(&integration.id)
                .await?
                .and_then(|sealed| self.vault.open(&sealed).ok())
        } else {
            None
        };
        if !self.store.delete_integration(user, provider).await? {
            return Err(not_connected(provider));
        }
        // After the delete, so a failed revocation never keeps a connection the user removed.
        if let Some(credentials) = revoke {
            match tokio::time::timeout(REVOKE_TIMEOUT, self.oauth.revoke(provider, &credentials))
                .await
            {
                Ok(Ok(())) => tracing::info!(
                    provider = provider.as_str(),
                    "access revoked at the provider"
                ),
                Ok(Err(e)) => {
                    tracing::warn!(provider = provider.as_str(), error = %e, "cannot revoke access at the provider; the credentials are deleted here")
                }
                Err(_) => tracing::warn!(
                    provider = provider.as_str(),
                    "revoking access at the provider timed out; the credentials are deleted here"
                ),
            }
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
        if direction != Direction::Push && !provider.spec().can_import() {
            return Err(IntegrationError::InvalidArgument(format!(
                "direction: contacts cannot be imported from {provider}; use PUSH"
            )));
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
        // The integration's queued job is brought forward (a scheduled one) and widened to
        // cover this direction too, unless it has started.
        let now = Utc::now();
        let wanted = job.direction.and(direction);
        if job.attempts == 0
            && (job.next_attempt_at > now || wanted != job.direction)
            && self.store.expedite_sync(&job.id, now, wanted).await?
        {
            return Ok(self.store.sync_job(user, &job.id).await?.unwrap_or(job));
        }
        if wanted != job.direction {
            return Err(IntegrationError::FailedPrecondition(format!(
                "a {} sync of {provider} is running (job {}); ask again when it has finished",
                job.direction.as_str(),
                job.id
            )));
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

/// The stored form of a state: only its hash, so a database reader cannot finish a flow.
fn state_hash(state: &str) -> String {
    hex::encode(Sha256::digest(state.as_bytes()))
}

fn oauth_error(error: OAuthError) -> IntegrationError {
    match error {
        OAuthError::NotConfigured(provider) => IntegrationError::FailedPrecondition(format!(
            "{provider} is not configured on this server (its OAuth client id and secret are not set)"
        )),
        OAuthError::InvalidGrant(reason) | OAuthError::Refused(reason) => {
            IntegrationError::InvalidArgument(reason)
        }
        OAuthError::Unavailable(reason) => IntegrationError::Unavailable(reason),
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
