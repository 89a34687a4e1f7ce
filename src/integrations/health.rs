//! Each integration's health (see `domain::health`): assembled for ListIntegrations, and the
//! `integration_health{provider,state}` gauge counting connections per state.

use std::collections::BTreeMap;

use chrono::Utc;

use super::Integrations;
use crate::{
    domain::{
        UserId,
        catalogue::{AuthKind, CATALOGUE},
        credentials::keys,
        health::{FAILING_AFTER, HealthState, IntegrationHealth},
        integration::Integration,
    },
    store::{Store, StoreError},
    telemetry::error_chain,
};

impl Integrations {
    /// The user's integrations with their health.
    pub async fn list_with_health(
        &self,
        user: &UserId,
    ) -> Result<Vec<(Integration, IntegrationHealth)>, StoreError> {
        let integrations = self.store.integrations(user).await?;
        let since = Utc::now() - chrono::Duration::hours(24);
        let mut facts: BTreeMap<String, _> = self
            .store
            .health_facts(user, since)
            .await?
            .into_iter()
            .collect();
        let mut out = Vec::with_capacity(integrations.len());
        for integration in integrations {
            let facts = facts.remove(&integration.id).unwrap_or_default();
            let token_expires_at = if integration.provider.spec().auth == AuthKind::OAuth2 {
                self.store
                    .sealed_credentials(&integration.id)
                    .await?
                    .and_then(|sealed| self.vault.open(&sealed).ok())
                    .and_then(|c| c.get(keys::EXPIRES_AT).and_then(|t| t.parse::<i64>().ok()))
                    .and_then(|secs| chrono::DateTime::from_timestamp(secs, 0))
            } else {
                None
            };
            let state = HealthState::of(integration.status, facts.failures_in_a_row);
            let last_error = match state {
                HealthState::Healthy => None,
                HealthState::NeedsAttention => integration.last_error.clone(),
                HealthState::Degraded | HealthState::Failing => facts
                    .last_failure
                    .clone()
                    .or_else(|| integration.last_error.clone()),
            };
            out.push((
                integration,
                IntegrationHealth {
                    state,
                    facts,
                    last_error,
                    token_expires_at,
                },
            ));
        }
        Ok(out)
    }
}

/// Sets `integration_health{provider,state}` from the store's census: every provider and
/// state, zero where none. Every replica exports the same numbers (aggregate with `max`).
pub async fn export_census(store: &dyn Store) {
    let census = match store.health_census(FAILING_AFTER).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %error_chain(&e), "cannot count integrations by health");
            return;
        }
    };
    let mut counts: BTreeMap<(&'static str, HealthState), u64> = BTreeMap::new();
    for spec in CATALOGUE.iter() {
        for state in HealthState::ALL {
            counts.insert((spec.slug, state), 0);
        }
    }
    for (provider, status, failures, n) in census {
        *counts
            .entry((provider.as_str(), HealthState::of(status, failures)))
            .or_default() += n;
    }
    for ((provider, state), n) in counts {
        metrics::gauge!("integration_health", "provider" => provider, "state" => state.as_str())
            .set(n as f64);
    }
}
