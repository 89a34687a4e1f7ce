//! Building the integrations at start-up: the vault, the provider clients and their rate
//! limits, OAuth, and the use cases the gRPC service, the sidecar and the workers share.

use std::sync::Arc;

use anyhow::Context;

use super::build_vault;
use crate::{
    config::{Config, is_allowed_redirect},
    integrations::{Integrations, IntegrationsSettings, oauth::OAuth},
    providers::{ProviderEndpoints, Providers, RateLimits},
    store::Store,
    vault::Vault,
};

/// The integrations use cases and what the sync worker shares with them.
pub(super) struct Integrated {
    pub(super) integrations: Arc<Integrations>,
    pub(super) vault: Arc<Vault>,
    pub(super) providers: Arc<Providers>,
    pub(super) oauth: Arc<OAuth>,
    /// Shared by the webhook intake (which wakes) and the webhook worker (which waits).
    pub(super) webhook_arrivals: Arc<tokio::sync::Notify>,
}

pub(super) fn build_integrations(
    config: &Config,
    origins: &[String],
    store: Arc<dyn Store>,
) -> anyhow::Result<Integrated> {
    let vault = Arc::new(build_vault(config)?);
    let providers = Arc::new(build_providers(config)?);
    let oauth =
        Arc::new(OAuth::new(&config.oauth, &config.endpoints).context("cannot set up OAuth")?);
    let redirect_origins = origins.to_vec();
    let webhook_arrivals = Arc::new(tokio::sync::Notify::new());
    let integrations = Arc::new(Integrations::new(
        store,
        Arc::clone(&vault),
        Arc::clone(&providers),
        Arc::clone(&oauth),
        IntegrationsSettings {
            redirect_allowed: Box::new(move |url: &str| {
                is_allowed_redirect(&redirect_origins, url)
            }),
            max_attempts: config.sync.max_attempts,
            oauth_start_url: config.oauth.start_url.clone(),
            zoho_accounts_servers: config.oauth.zoho_accounts_servers.clone(),
            max_watch_streams_per_user: config.sync.max_watch_streams_per_user,
            watch_fallback: config.sync.watch_fallback_interval,
            real_time: config.real_time.clone(),
            webhook_arrivals: Arc::clone(&webhook_arrivals),
        },
    ));
    Ok(Integrated {
        integrations,
        vault,
        providers,
        oauth,
        webhook_arrivals,
    })
}

fn build_providers(config: &Config) -> anyhow::Result<Providers> {
    let e = &config.endpoints;
    let endpoints = ProviderEndpoints {
        hubspot_api_base: e.hubspot_api_base.clone(),
        mailchimp_api_base: e.mailchimp_api_base.clone(),
        sendgrid_api_base: e.sendgrid_api_base.clone(),
        zapier_hook_base: e.zapier_hook_base.clone(),
        sendgrid_poll_interval: config.sync.poll_interval,
        salesforce_api_base: e.salesforce_api_base.clone(),
        zoho_api_base: e.zoho_api_base.clone(),
        google_upload_base: e.google_upload_base.clone(),
        dropbox_content_base: e.dropbox_content_base.clone(),
    };
    Providers::new(
        endpoints,
        Arc::new(RateLimits::new(&config.sync.rate_limits)),
    )
    .context("cannot set up the provider HTTP client")
}
